"""The shared HTTP cache (RFC 9111): what is stored and for how long, what a
request may ask of it, invalidation, validation, Vary, the Redis level and
its failures, coalescing, stale-while-revalidate and stale-if-error.

Each test starts one origin.py (its /c/ route shapes responses from query
parameters and counts requests per path), one clonegate with one worker
unless said otherwise, and a redis-server where the test is about Redis.
The origin's count of a path says how many requests the cache let through;
the Cache-Status field (RFC 9211) says what the cache did.
"""

import hashlib
import re
import selectors
import socket
import threading
import time
import urllib.parse

import pytest

import helpers
from helpers import build_request, parse_response

# A GET answered from L1 or Redis takes well under this (s); a request that
# waited on something it should not have (Redis, another fill) takes more.
QUICK = 0.5
# What a request may take at worst while Redis misbehaves (s).
RESPONSE_TIMEOUT = 2.0
# Sleep that makes an entry with max-age=1 stale (s).
PAST_ONE_SECOND = 1.3


def url(path, *pairs, **params):
    """/c/<path>?<params>; <pairs> are extra (name, value) pairs for
    repeatable parameters such as hdr."""
    query = list(params.items()) + list(pairs)
    return f"/c/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")


def path_of(target):
    return urllib.parse.urlsplit(target).path


def cache_status(r):
    """Our Cache-Status member as {param: value or True}; asserts there is
    exactly one field and that it is ours."""
    values = r.header_all("Cache-Status")
    assert len(values) == 1, f"want one Cache-Status, got {values!r}"
    parts = [p.strip() for p in values[0].split(";")]
    assert parts[0] == "clonegate", values[0]
    out = {}
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        out[k] = v if sep else True
    return out


def is_hit(r):
    return cache_status(r).get("hit") is True


def body_of(origin, target, n, extra=""):
    """The /c/ body of the <n>th request of <target>'s path at <origin>."""
    return f"{origin.name} {path_of(target)} #{n}{extra}\n".encode()


def redis_key(target, host="test"):
    """The Redis key of a plain entry for <target> on Host <host>."""
    return "cg:" + hashlib.sha256(f"http://{host}{target}".encode()).hexdigest()


def redis_keys(redis):
    return {k.decode() for k in redis.command("KEYS", "cg:*")}


def control(origin, path, **params):
    """Overrides /c/ parameters of <path> at <origin> (clear=1 drops them)."""
    r = origin.get("/control?" + urllib.parse.urlencode(dict(path=path, **params)))
    assert r.status == 200, r


def last_headers(origin, path):
    """{lower-case name: value} of the last request of <path> at <origin>."""
    r = origin.get("/last?path=" + urllib.parse.quote(path))
    return {k.lower(): v for k, v in r.json()["headers"] or []}


def start(clonegate, origins, redis=None, **overrides):
    """One origin and one clonegate (one worker, cache on) in front of it."""
    (o,) = origins(1)
    ini = {"server.workers": 1}
    ini.update(overrides)
    return clonegate(ini, servers=[o], redis=redis), o


def timed_get(cg, target, headers=None, timeout=RESPONSE_TIMEOUT):
    t0 = time.monotonic()
    r = cg.get(target, headers=headers, timeout=timeout)
    return r, time.monotonic() - t0


def assert_ttl(cs, lo, hi):
    assert "ttl" in cs, cs
    assert lo <= int(cs["ttl"]) <= hi, f"ttl {cs['ttl']} not in {lo}..{hi}: {cs}"


# ------------------------------------------------------------ storing


def test_get_is_stored_then_answered_from_the_cache_with_age(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("basic", cc="max-age=60")
    r1 = cg.get(t)
    assert r1.status == 200 and r1.body == body_of(o, t, 1)
    cs1 = cache_status(r1)
    assert cs1.get("fwd") == "uri-miss" and cs1.get("stored") is True, cs1
    assert_ttl(cs1, 59, 60)
    assert r1.header("Age") is None

    r2 = cg.get(t)
    assert r2.status == 200 and r2.body == r1.body
    cs2 = cache_status(r2)
    assert cs2.get("hit") is True and "fwd" not in cs2, cs2
    assert_ttl(cs2, 58, 60)
    assert r2.header("Age") is not None and 0 <= int(r2.header("Age")) <= 1
    assert r2.header("Cache-Control") == "max-age=60"
    assert r2.header("X-Origin") == o.name
    assert int(r2.header("Content-Length")) == len(r1.body)
    assert o.count(path_of(t)) == 1

    # another query string is another resource
    r3 = cg.get(url("basic", cc="max-age=60", other="1"))
    assert cache_status(r3).get("fwd") == "uri-miss" and o.count(path_of(t)) == 2


def test_head_is_answered_from_the_get_entry_and_a_head_miss_stores_nothing(origins, clonegate):
    cg, o = start(clonegate, origins)
    cold = url("head-cold", cc="max-age=60")
    r = cg.request("HEAD", cold)
    assert r.status == 200 and r.body == b""
    cs = cache_status(r)
    assert cs.get("fwd") == "uri-miss" and cs.get("detail") == "method" and "stored" not in cs, cs
    r = cg.get(cold)
    assert r.status == 200 and not is_hit(r), "a HEAD response was stored for GET"
    assert o.count(path_of(cold)) == 2

    t = url("head-warm", cc="max-age=60")
    full = cg.get(t)
    assert cache_status(full).get("stored") is True
    r = cg.request("HEAD", t)
    assert r.status == 200 and r.body == b"" and is_hit(r), r
    assert int(r.header("Content-Length")) == len(full.body)
    assert o.count(path_of(t)) == 1


NOT_STORABLE = [
    # id, /c/ parameters, request headers, the detail Cache-Status gives
    ("no-store", dict(cc="no-store, max-age=60"), {}, "no-store"),
    ("private", dict(cc="private, max-age=60"), {}, "private"),
    ("set-cookie", dict(cc="max-age=60", cookie="session=abc"), {}, "set-cookie"),
    ("vary-star", dict(cc="max-age=60", vary="*"), {}, "vary-star"),
    ("no-lifetime", dict(), {}, "no-lifetime"),
    ("status-500", dict(status="500"), {}, "status"),
    ("request-no-store", dict(cc="max-age=60"), {"Cache-Control": "no-store"}, "no-store"),
    ("vary-too-long", dict(cc="max-age=60", vary="X-Long"), {"X-Long": "a" * 5000},
     "vary-too-long"),
]


def test_responses_the_proxy_cannot_store_say_why(origins, clonegate):
    """Storable by the rules but not here: the Cache-Status detail names
    the reason (too large by Content-Length, de-chunked for an HTTP/1.0
    client), and each request reaches the origin."""
    cg, o = start(clonegate, origins, **{"cache.max_object_size": "2k"})
    big = url("too-large", cc="max-age=60", size=5000)
    for i in (1, 2):
        r = cg.get(big)
        assert r.status == 200 and len(r.body) == 5000, r
        assert cache_status(r).get("detail") == "too-large", r.header("Cache-Status")
    assert o.count(path_of(big)) == 2
    chunked = url("dechunked", cc="max-age=60", size=100, chunked=1)
    raw = f"GET {chunked} HTTP/1.0\r\nHost: test\r\n\r\n".encode()
    (r,) = helpers.parse_responses(helpers.http_request(cg.port, raw))
    assert r.status == 200 and len(r.body) == 100, r
    assert cache_status(r).get("detail") == "dechunked", r.header("Cache-Status")


@pytest.mark.parametrize("params,headers,detail", [c[1:] for c in NOT_STORABLE],
                         ids=[c[0] for c in NOT_STORABLE])
def test_responses_that_may_not_be_stored_reach_the_origin_every_time(
        origins, clonegate, params, headers, detail):
    cg, o = start(clonegate, origins)
    t = url("nostore", **params)
    vary = params.get("vary", "*")
    extra = "" if vary == "*" else f" {vary.lower()}={headers.get(vary, '')}"
    for i in (1, 2, 3):
        r = cg.get(t, headers=headers)
        assert r.body == body_of(o, t, i, extra), r
        cs = cache_status(r)
        assert "hit" not in cs and "stored" not in cs, cs
        assert cs.get("detail") == detail, cs
    assert o.count(path_of(t)) == 3


def test_set_cookie_is_never_replayed_even_when_storing_it_is_allowed(origins, clonegate):
    cg, o = start(clonegate, origins, **{"cache.store_set_cookie": "yes"})
    t = url("cookie", cc="max-age=60", cookie="session=secret")
    r1 = cg.get(t)
    assert cache_status(r1).get("stored") is True
    assert r1.header("Set-Cookie") == "session=secret"  # the one who asked gets it
    r2 = cg.get(t)
    assert is_hit(r2) and r2.body == r1.body
    assert r2.header("Set-Cookie") is None, "a stored Set-Cookie was replayed to another client"
    assert o.count(path_of(t)) == 1


AUTHORIZATION = [
    ("max-age", "max-age=60", False),
    ("public", "public, max-age=60", True),
    ("s-maxage", "s-maxage=60", True),
    ("must-revalidate", "must-revalidate, max-age=60", True),
]


@pytest.mark.parametrize("cc,stored", [c[1:] for c in AUTHORIZATION],
                         ids=[c[0] for c in AUTHORIZATION])
def test_answers_to_authorized_requests_are_stored_only_when_the_origin_allows(
        origins, clonegate, cc, stored):
    cg, o = start(clonegate, origins)
    t = url("auth", cc=cc)
    auth = {"Authorization": "Basic dXNlcjpwYXNz"}
    r1 = cg.get(t, headers=auth)
    cs = cache_status(r1)
    if stored:
        assert cs.get("stored") is True, cs
    else:
        assert "stored" not in cs and cs.get("detail") == "authorization", cs
    r2 = cg.get(t, headers=auth)
    assert is_hit(r2) == stored, r2
    assert o.count(path_of(t)) == (1 if stored else 2)


FRESHNESS = [
    # id, /c/ parameters, [cache] overrides, ttl range in Cache-Status
    ("s-maxage-over-max-age", dict(cc="max-age=5, s-maxage=100"), {}, (99, 100)),
    ("max-age-over-expires", dict(cc="max-age=100", expires="10", date="0"), {}, (98, 100)),
    ("expires-minus-date", dict(expires="200", date="0"), {}, (197, 200)),
    ("default-ttl", dict(), {"cache.default_ttl": "30s"}, (29, 30)),
    ("default-ttl-over-heuristic", dict(lm="100000"), {"cache.default_ttl": "30s"}, (29, 30)),
    ("heuristic-10-percent", dict(lm="1000"), {}, (99, 101)),
]


@pytest.mark.parametrize("params,ini,ttl", [c[1:] for c in FRESHNESS],
                         ids=[c[0] for c in FRESHNESS])
def test_freshness_lifetime_follows_rfc9111_precedence(origins, clonegate, params, ini, ttl):
    cg, o = start(clonegate, origins, **ini)
    t = url("fresh", **params)
    cs = cache_status(cg.get(t))
    assert cs.get("stored") is True, cs
    assert_ttl(cs, *ttl)
    r = cg.get(t)
    assert is_hit(r)
    assert_ttl(cache_status(r), ttl[0] - 1, ttl[1])
    assert o.count(path_of(t)) == 1


def test_an_expired_entry_is_fetched_again(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("expire", cc="max-age=1")
    assert cg.get(t).body == body_of(o, t, 1)
    assert is_hit(cg.get(t))
    time.sleep(PAST_ONE_SECOND)
    r = cg.get(t)
    assert r.body == body_of(o, t, 2), "an expired entry was served"
    cs = cache_status(r)
    # an entry with nothing to validate and no stale window may be dropped
    # at its expiry (uri-miss) or still be held (stale)
    assert cs.get("fwd") in ("uri-miss", "stale") and cs.get("stored") is True, cs
    r = cg.get(t)
    assert is_hit(r) and r.body == body_of(o, t, 2)
    assert o.count(path_of(t)) == 2


# ------------------------------------------------------------ what a request asks


def test_request_cache_control_is_honoured_on_a_fresh_entry(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("reqcc", cc="max-age=60")
    p = path_of(t)
    cg.get(t)
    n = 1
    cases = [
        ({"Cache-Control": "no-cache"}, False),
        ({"Pragma": "no-cache"}, False),
        ({"Cache-Control": "max-age=0"}, False),
        ({"Cache-Control": "min-fresh=120"}, False),
        ({"Cache-Control": "max-age=3600"}, True),
        ({"Cache-Control": "min-fresh=10"}, True),
        ({}, True),
    ]
    for headers, hit in cases:
        r = cg.get(t, headers=headers)
        if hit:
            assert is_hit(r), (headers, r)
            assert r.body == body_of(o, t, n)
        else:
            n += 1
            cs = cache_status(r)
            assert cs.get("fwd") == "request", (headers, cs)
            assert r.body == body_of(o, t, n), (headers, r)
        assert o.count(p) == n, headers


def test_max_stale_lets_a_request_take_an_expired_entry(origins, clonegate):
    cg, o = start(clonegate, origins)
    # with a validator, so that the cache keeps the entry past its expiry
    t = url("maxstale", cc="max-age=1", etag='"ms"', nm="0")
    first = cg.get(t)
    time.sleep(PAST_ONE_SECOND)
    for cc in ("max-stale=60", "max-stale"):
        r = cg.get(t, headers={"Cache-Control": cc})
        assert is_hit(r) and r.body == first.body, (cc, r)
        assert int(r.header("Age")) >= 1
    assert o.count(path_of(t)) == 1
    r = cg.get(t, headers={"Cache-Control": "max-stale=0"})
    assert r.body == body_of(o, t, 2), "max-stale=0 was given an expired entry"
    assert o.count(path_of(t)) == 2


def test_only_if_cached_answers_504_when_nothing_is_stored(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("oic", cc="max-age=60")
    r = cg.get(t, headers={"Cache-Control": "only-if-cached"})
    assert r.status == 504, r
    assert o.count(path_of(t)) == 0, "only-if-cached reached the origin"
    cg.get(t)
    r = cg.get(t, headers={"Cache-Control": "only-if-cached"})
    assert r.status == 200 and is_hit(r) and r.body == body_of(o, t, 1)
    assert o.count(path_of(t)) == 1


# ------------------------------------------------------------ invalidation


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_successful_unsafe_method_invalidates_every_variant_of_the_url(
        origins, clonegate, method):
    cg, o = start(clonegate, origins)
    t = url("inv", cc="max-age=60", vary="Accept-Language")
    p = path_of(t)
    for lang in ("en", "fr"):
        assert cache_status(cg.get(t, headers={"Accept-Language": lang})).get("stored") is True
        assert is_hit(cg.get(t, headers={"Accept-Language": lang}))
    assert o.count(p) == 2
    r = cg.request(method, t, body=b"change")
    assert r.status == 200 and not is_hit(r)
    assert o.count(p) == 3
    for n, lang in ((4, "en"), (5, "fr")):
        r = cg.get(t, headers={"Accept-Language": lang})
        assert not is_hit(r), f"{lang} variant survived a {method}"
        assert r.body == body_of(o, t, n, f" accept-language={lang}")
    assert o.count(p) == 5


def test_a_failed_unsafe_method_leaves_the_entry(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("inv-fail", cc="max-age=60")
    p = path_of(t)
    cg.get(t)
    control(o, p, status="500")
    assert cg.request("POST", t, body=b"x").status == 500
    control(o, p, clear="1")
    r = cg.get(t)
    assert is_hit(r) and r.body == body_of(o, t, 1)
    assert o.count(p) == 2


def test_location_and_content_location_on_the_same_host_are_invalidated(origins, clonegate):
    cg, o = start(clonegate, origins)
    loc = url("target-loc", cc="max-age=60")
    cloc = url("target-cloc", cc="max-age=60")
    other = url("target-other", cc="max-age=60")
    for t in (loc, cloc, other):
        assert cache_status(cg.get(t)).get("stored") is True
    w = url("writer", ("hdr", f"Location: {loc}"), ("hdr", f"Content-Location: http://test{cloc}"),
            status="201")
    assert cg.request("POST", w, body=b"new").status == 201
    w2 = url("writer2", ("hdr", f"Location: http://elsewhere.example{other}"))
    assert cg.request("POST", w2, body=b"new").status == 200
    assert not is_hit(cg.get(loc)), "the Location URL was not invalidated"
    assert not is_hit(cg.get(cloc)), "the Content-Location URL was not invalidated"
    assert is_hit(cg.get(other)), "a URL on another host invalidated ours"
    assert [o.count(path_of(t)) for t in (loc, cloc, other)] == [2, 2, 1]


# ------------------------------------------------------------ validation


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_stale_entry_is_revalidated_and_a_304_refreshes_it(origins, clonegate, validator):
    cg, o = start(clonegate, origins)
    params = dict(etag='"v1"') if validator == "etag" else dict(lm="3600")
    t = url("reval-" + validator, cc="max-age=1", **params)
    p = path_of(t)
    first = cg.get(t)
    assert cache_status(first).get("stored") is True
    time.sleep(PAST_ONE_SECOND)
    control(o, p, cc="max-age=60")  # the 304 carries a new lifetime
    r = cg.get(t)
    assert r.status == 200 and r.body == first.body, r
    cs = cache_status(r)
    assert cs.get("fwd") == "stale" and cs.get("fwd-status") == "304", cs
    assert o.count(p) == 2
    sent = last_headers(o, p)
    if validator == "etag":
        assert sent.get("if-none-match") == '"v1"', sent
    else:
        assert sent.get("if-modified-since") == first.header("Last-Modified"), sent
    assert r.header("Cache-Control") == "max-age=60", "the 304's fields did not update the entry"
    time.sleep(PAST_ONE_SECOND)
    r = cg.get(t)
    assert is_hit(r) and r.body == first.body, "the refreshed lifetime was not used"
    assert o.count(p) == 2


def test_a_changed_resource_replaces_the_stale_entry(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("changed", cc="max-age=1", etag='"v1"')
    p = path_of(t)
    cg.get(t)
    time.sleep(PAST_ONE_SECOND)
    control(o, p, etag='"v2"', cc="max-age=60")
    r = cg.get(t)
    assert r.status == 200 and r.body == body_of(o, t, 2) and r.header("ETag") == '"v2"'
    cs = cache_status(r)
    assert cs.get("fwd") == "stale" and cs.get("stored") is True and "fwd-status" not in cs, cs
    r = cg.get(t)
    assert is_hit(r) and r.body == body_of(o, t, 2)
    assert o.count(p) == 2


def test_a_clients_matching_if_none_match_gets_304_from_a_fresh_entry(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("inm", cc="max-age=60", etag='"abc"')
    full = cg.get(t)
    r = cg.get(t, headers={"If-None-Match": '"abc"'})
    assert r.status == 304 and r.body == b"", r
    assert is_hit(r) and r.header("ETag") == '"abc"'
    r = cg.get(t, headers={"If-None-Match": '"other"'})
    assert r.status == 200 and is_hit(r) and r.body == full.body
    assert o.count(path_of(t)) == 1


# ------------------------------------------------------------ Vary


def test_vary_keeps_one_variant_per_request_header_value(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("vary", cc="max-age=60", vary="Accept-Language")
    en, fr = {"Accept-Language": "en"}, {"Accept-Language": "fr"}
    r = cg.get(t, headers=en)
    assert cache_status(r).get("stored") is True
    r = cg.get(t, headers=fr)
    cs = cache_status(r)
    assert cs.get("fwd") == "vary-miss" and cs.get("stored") is True, cs
    for _ in range(2):
        r = cg.get(t, headers=en)
        assert is_hit(r) and r.body == body_of(o, t, 1, " accept-language=en")
        r = cg.get(t, headers=fr)
        assert is_hit(r) and r.body == body_of(o, t, 2, " accept-language=fr")
    r = cg.get(t)
    assert not is_hit(r) and r.body == body_of(o, t, 3, " accept-language=")
    assert o.count(path_of(t)) == 3


@pytest.mark.parametrize("memory", ["64m", "0"])
def test_a_short_lived_variant_does_not_cut_the_vary_record_of_a_fresh_one(
        origins, clonegate, redis, memory):
    # The Vary record leads every request of the URL to its variant: it must
    # live as long as its longest-lived variant, in L1 and in Redis (with
    # memory = 0 both the record and the variant come from Redis).
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": memory})
    t = url("vary-life", cc="max-age=600", vary="Accept-Language")
    p = path_of(t)
    en, fr = {"Accept-Language": "en"}, {"Accept-Language": "fr"}
    assert cache_status(cg.get(t, headers=en)).get("stored") is True
    helpers.wait_for(lambda: redis_key(t) in redis_keys(redis), timeout=5, what="the Vary record")
    assert is_hit(cg.get(t, headers=en))
    control(o, p, cc="max-age=1")
    cs = cache_status(cg.get(t, headers=fr))
    assert cs.get("fwd") == "vary-miss" and cs.get("stored") is True, cs
    time.sleep(PAST_ONE_SECOND + 0.2)  # fr is past its lifetime, en is not
    r = cg.get(t, headers=en)
    assert is_hit(r) and r.body == body_of(o, t, 1, " accept-language=en"), r
    assert o.count(p) == 2
    pttl = redis.command("PTTL", redis_key(t))
    assert pttl > 590_000, f"the Vary record's TTL in Redis is {pttl} ms"


# ------------------------------------------------------------ L1 and L2


def test_the_in_process_cache_is_shared_by_workers(origins, clonegate):
    cg, o = start(clonegate, origins, **{"server.workers": 4})
    t = url("workers", cc="max-age=60")
    cg.get(t)
    results = []

    def client():
        for _ in range(10):  # a new connection each, spread over the workers
            r = cg.get(t)
            results.append((r.status, is_hit(r), r.body))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
    assert len(results) == 40
    assert all(x == (200, True, body_of(o, t, 1)) for x in results), results[:5]
    assert o.count(path_of(t)) == 1


def test_entries_survive_a_restart_in_redis_with_their_lifetime_as_ttl(
        origins, clonegate, redis):
    (o,) = origins(1)
    ini = {"server.workers": 1, "cache.stale_while_revalidate": "0s"}
    cg1 = clonegate(ini, servers=[o], redis=redis)
    plain = url("l2-plain", cc="max-age=60")
    validated = url("l2-etag", cc="max-age=60", etag='"e"')
    windowed = url("l2-swr", cc="max-age=60, stale-while-revalidate=30")
    for t in (plain, validated, windowed):
        assert cache_status(cg1.get(t)).get("stored") is True
    expect = {plain: 60_000, validated: 60_000 + 600_000, windowed: 90_000}
    for t, px in expect.items():
        key = redis_key(t)
        pttl = helpers.wait_for(lambda k=key: (lambda v: v if v > 0 else None)(
            redis.command("PTTL", k)), timeout=5, what=f"{t} in Redis")
        assert px - 5_000 < pttl <= px, f"{t}: PTTL {pttl}, want about {px}"
    cg1.stop()

    cg2 = clonegate(cg1.ini_text)
    # its Redis link connects after the listener opens: a request before that
    # is a plain miss, which is not what this test is about
    helpers.wait_for(lambda: cg2.stats()["cache"]["redis"]["state"] == "up", timeout=5,
                     what="the new instance's Redis link up")
    for t in (plain, validated, windowed):
        r = cg2.get(t)
        assert is_hit(r) and r.body == body_of(o, t, 1), r
        assert o.count(path_of(t)) == 1, "the origin was asked after the restart"


def test_with_no_memory_every_hit_comes_from_redis(origins, clonegate, redis):
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
    t = url("l2-only", cc="max-age=60")
    assert cache_status(cg.get(t)).get("stored") is True
    helpers.wait_for(lambda: redis_key(t) in redis_keys(redis), timeout=5, what="the Redis write")
    for _ in range(3):
        r = cg.get(t)
        assert is_hit(r) and r.body == body_of(o, t, 1)
    assert redis.command("FLUSHALL") == "OK"
    r = cg.get(t)
    assert not is_hit(r) and r.body == body_of(o, t, 2), "a hit came from somewhere but Redis"
    assert o.count(path_of(t)) == 2


def test_with_no_memory_a_url_not_storable_is_still_remembered(origins, clonegate, redis):
    # memory = 0 stores nothing in the process, but the marker of a URL whose
    # response was not storable stays: its next requests neither ask Redis
    # nor wait on each other's answers.
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
    t = url("l2-no-store", cc="no-store")
    r = cg.get(t)
    assert "detail=no-store" in r.header("Cache-Status", ""), r
    before = cg.stats()["cache"]
    for n in range(2, 6):
        r = cg.get(t)
        assert r.status == 200 and r.body == body_of(o, t, n), r
        assert not is_hit(r) and "fwd=uri-miss" in r.header("Cache-Status", ""), r
    after = cg.stats()["cache"]
    assert after["redis"]["gets"] == before["redis"]["gets"], "Redis asked for a known no-store URL"
    assert after["coalesced_waits"] == before["coalesced_waits"]
    assert o.count(path_of(t)) == 5


def test_with_no_memory_a_url_that_becomes_storable_is_served_from_redis(
        origins, clonegate, redis):
    # The marker of a URL once not storable must go when its answer is
    # stored (in Redis only, memory = 0): else, until the marker ran out,
    # every request would skip Redis and reach the clone again.
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
    t = url("l2-becomes-storable", cc="no-store")
    p = path_of(t)
    assert "detail=no-store" in cg.get(t).header("Cache-Status", "")
    control(o, p, cc="max-age=600")
    r = cg.get(t)
    assert cache_status(r).get("stored") is True, r
    helpers.wait_for(lambda: redis_key(t) in redis_keys(redis), timeout=5, what="the Redis write")
    for _ in range(3):
        r = cg.get(t)
        assert is_hit(r) and r.body == body_of(o, t, 2), r
    assert o.count(p) == 2


def mget_calls(redis):
    """How many MGET commands Redis has run (INFO commandstats)."""
    info = redis.command("INFO", "commandstats")
    info = info.decode() if isinstance(info, bytes) else info
    m = re.search(r"cmdstat_mget:calls=(\d+)", info)
    return int(m.group(1)) if m else 0


def test_lookups_of_one_moment_go_to_redis_together_and_each_gets_its_own_entry(
        origins, clonegate, redis):
    # Lookups that arrive together are sent as one MGET; its answers must
    # go back to the right requests, found and not found mixed.
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
    stored = [url(f"batch-s{i}", cc="max-age=60") for i in range(8)]
    fresh = [url(f"batch-m{i}", cc="max-age=60") for i in range(8)]
    for t in stored:
        assert cache_status(cg.get(t)).get("stored") is True
    helpers.wait_for(lambda: {redis_key(t) for t in stored} <= redis_keys(redis), timeout=5,
                     what="the Redis writes")
    before = mget_calls(redis)
    targets = [t for pair in zip(stored, fresh) for t in pair]  # interleaved
    socks = [socket.create_connection(("127.0.0.1", cg.port), timeout=5) for _ in targets]
    try:
        # stopped, the worker finds every request readable at once when it
        # goes on: one turn of its loop, one MGET
        cg.proc.freeze()
        try:
            for s, t in zip(socks, targets):
                s.sendall(build_request("GET", t, headers={"Connection": "close"}))
            time.sleep(0.2)
        finally:
            cg.proc.thaw()
        for s, t in zip(socks, targets):
            s.settimeout(5)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            r = parse_response(data, 0, "GET", eof=True)[0]
            assert r.status == 200, (t, r)
            if t in stored:
                assert is_hit(r) and r.body == body_of(o, t, 1), (t, r.body)
            else:
                assert not is_hit(r) and r.body == body_of(o, t, 1), (t, r.body)
    finally:
        for s in socks:
            s.close()
    assert mget_calls(redis) > before, "the lookups went one GET each"
    for t in stored:
        assert o.count(path_of(t)) == 1, f"{t} went to the origin again"


def test_a_colliding_redis_key_cannot_serve_another_urls_body(origins, clonegate, redis):
    cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
    a, b = url("coll-a", cc="max-age=60"), url("coll-b", cc="max-age=60")
    cg.get(a)
    cg.get(b)
    ka, kb = redis_key(a), redis_key(b)
    helpers.wait_for(lambda: {ka, kb} <= redis_keys(redis), timeout=5, what="both entries")
    # B's key now holds A's entry, as a SHA-256 collision would
    assert redis.command("SET", kb, redis.command("GET", ka), "PX", "60000") == "OK"
    r = cg.get(b)
    assert r.status == 200 and r.body == body_of(o, b, 2), "B's request was given A's entry"
    assert not is_hit(r)
    r = cg.get(a)
    assert is_hit(r) and r.body == body_of(o, a, 1)


# ------------------------------------------------------------ Redis trouble


def test_requests_are_answered_while_redis_is_down_and_storing_resumes(
        origins, clonegate, redis):
    cg, o = start(clonegate, origins, redis=redis)
    warm = url("down-warm", cc="max-age=60")
    cg.get(warm)
    helpers.wait_for(lambda: redis_key(warm) in redis_keys(redis), timeout=5, what="a Redis write")
    redis.kill9()
    time.sleep(0.3)  # the proxy has seen the link drop
    targets = [url(f"down-{i}", cc="max-age=60") for i in range(10)] + [warm]
    deadline = time.monotonic() + 20
    for round_ in range(3):
        for t in targets:
            assert time.monotonic() < deadline
            r, took = timed_get(cg, t)
            assert r.status == 200, (t, r)
            assert r.body in (body_of(o, t, 1), body_of(o, t, 2)), (t, r.body)
            assert took < RESPONSE_TIMEOUT, f"{t} took {took:.2f} s with Redis down"
            if round_ == 2:
                assert is_hit(r), f"{t}: the in-process cache stopped storing without Redis"

    redis.restart()
    fresh = []

    def stored_again():
        t = url(f"back-{len(fresh)}", cc="max-age=60")
        fresh.append(t)
        assert cg.get(t).status == 200
        return redis_key(t) in redis_keys(redis)

    helpers.wait_for(stored_again, timeout=12, interval=0.2, what="entries stored in Redis again")


@pytest.mark.hard_timeout(60)
def test_an_invalidation_redis_cannot_take_is_applied_there_once_it_is_back(
        origins, clonegate, tmp_path, world):
    # a Redis that keeps its data across a stop and a start, as a production one does
    kept = world.add(helpers.start_redis(tmp_path / "redis-aof", args=(
        "--appendonly", "yes", "--appendfsync", "always")))
    cg, o = start(clonegate, origins, redis=kept)
    t = url("inv-down", cc="max-age=600")
    helpers.wait_for(lambda: cg.stats()["cache"]["purge"]["l1_drops"] >= 1, timeout=5,
                     what="the invalidation channel subscribed")
    assert cache_status(cg.get(t)).get("stored") is True
    helpers.wait_for(lambda: redis_key(t) in redis_keys(kept), timeout=5, what="the Redis write")
    s0 = cg.stats()["cache"]
    kept.proc.stop()  # by PID; it keeps the entry on disk
    helpers.wait_for(lambda: cg.stats()["cache"]["redis"]["state"] != "up", timeout=5,
                     what="Redis seen down")
    r = cg.request("POST", t, body=b"change")
    assert r.status == 200 and r.body == body_of(o, t, 2), r
    s = cg.stats()["cache"]
    assert s["invalidations"] - s0["invalidations"] == 1, s
    waiting = s["purge"].get("queued")

    kept.restart()  # the same port and data: the entry is back in Redis
    helpers.wait_for(lambda: (lambda c: c["redis"]["state"] == "up"
                              and c["purge"].get("queued", 0) == 0
                              and c["purge"]["l1_drops"] >= s0["purge"]["l1_drops"] + 2)(
                                  cg.stats()["cache"]),
                     timeout=15, what="Redis back, L1 emptied, nothing left to replay")
    # the entry the POST changed is not served again, from Redis or elsewhere
    r = cg.get(t)
    assert not is_hit(r) and r.body == body_of(o, t, 3), r
    assert o.count(path_of(t)) == 3
    s = cg.stats()["cache"]["purge"]
    assert waiting == 1 and s["replayed"] - s0["purge"]["replayed"] == 1, (waiting, s)


def test_a_slow_redis_is_waited_for_at_most_redis_timeout(origins, clonegate, tmp_path, world):
    slow = world.add(helpers.start_redis(tmp_path / "redis-debug",
                                         args=("--enable-debug-command", "local")))
    cg, o = start(clonegate, origins, redis=slow, **{"cache.redis_timeout": "50ms"})
    cg.get(url("slow-warm", cc="max-age=60"))  # the link is up
    blocked = {}

    def sleeper():
        t0 = time.monotonic()
        blocked["reply"] = slow.command("DEBUG", "SLEEP", "0.5")
        blocked["took"] = time.monotonic() - t0

    def asleep():
        try:
            slow.command("PING", timeout=0.05)
            return False
        except OSError:  # socket.timeout included: Redis is sleeping
            return True

    th = threading.Thread(target=sleeper)
    t_sleep = time.monotonic()
    th.start()
    helpers.wait_for(asleep, timeout=0.3, interval=0.01, what="Redis asleep")
    times = []
    for i in range(4):  # misses: each looks in Redis first
        t = url(f"slow-{i}", cc="max-age=60")
        r, took = timed_get(cg, t)
        assert r.status == 200 and r.body == body_of(o, t, 1)
        times.append(took)
    done = time.monotonic() - t_sleep
    th.join(timeout=5)
    assert blocked.get("reply") == "OK" and blocked["took"] >= 0.45, blocked
    assert max(times) < 0.25, f"a request waited on the sleeping Redis: {times}"
    assert done < 0.5, f"the requests ended {done:.2f} s in, after Redis woke up"


def load_until(cg, targets, stop, results, deadline, most=3000):
    """GETs <targets> round and round until <stop> is set, <deadline> or
    <most> requests, appending (target, status, body, elapsed, error, end
    time) to <results>."""
    for i in range(most):
        if stop.is_set() or time.monotonic() > deadline:
            return
        t = targets[i % len(targets)]
        try:
            r, took = timed_get(cg, t)
            results.append((t, r.status, r.body, took, None, time.monotonic()))
        except Exception as e:  # a failed request is a result too
            results.append((t, None, None, None, repr(e), time.monotonic()))


@pytest.mark.hard_timeout(60)
def test_a_redis_restart_under_load_fails_no_request(origins, clonegate, redis):
    # no L1: every request asks Redis, so the restart is on every request's path
    cg, o = start(clonegate, origins, redis=redis, **{"server.workers": 2, "cache.memory": "0"})
    targets = [url(f"rl-{i}", cc="max-age=60") for i in range(20)]
    results = []
    stop = threading.Event()
    threads = [threading.Thread(target=load_until,
                                args=(cg, targets, stop, results, time.monotonic() + 20))
               for _ in range(3)]
    for th in threads:
        th.start()
    try:
        helpers.wait_for(lambda: len(results) >= 100, timeout=10, what="load before the restart")
        t_down = time.monotonic()
        redis.restart()
        t_up = time.monotonic()
        helpers.wait_for(lambda: sum(1 for x in results if x[5] > t_up) >= 100, timeout=10,
                         what="load after the restart")
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    assert sum(1 for x in results if t_down <= x[5] <= t_up + 0.5) > 0, "no request met the restart"
    # while Redis is away a URL is fetched again, but every answer is a
    # whole one from the origin
    for t, status, body, took, err, _ in results:
        assert err is None, f"{t}: {err}"
        assert status == 200 and re.fullmatch(
            re.escape(f"{o.name} {path_of(t)} #") + r"\d+\n", body.decode()), (t, body)
        assert took < RESPONSE_TIMEOUT, f"{t} took {took:.2f} s"
    assert sum(o.count(path_of(t)) for t in targets) < len(results), "Redis never answered"
    after = url("rl-after", cc="max-age=60")
    helpers.wait_for(lambda: cg.get(after).status == 200 and redis_key(after) in redis_keys(redis),
                     timeout=12, interval=0.2, what="entries stored in Redis again")
    helpers.wait_for(lambda: is_hit(cg.get(after)), timeout=5, what="hits from Redis again")


# ------------------------------------------------------------ coalescing


def concurrent_gets(port, target, n, timeout=20.0):
    """Opens <n> connections, sends one GET on each, then reads every answer
    (non-blocking, one thread). Returns [Response or None]."""
    sel = selectors.DefaultSelector()
    socks = []
    raw = build_request("GET", target, headers={"Connection": "close"})
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(raw)
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        bufs = [b""] * n
        open_ = n
        deadline = time.monotonic() + timeout
        while open_ and time.monotonic() < deadline:  # bounded by the deadline
            for key, _ in sel.select(timeout=0.5):
                i = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    bufs[i] += chunk
                else:
                    sel.unregister(key.fileobj)
                    open_ -= 1
        out = []
        for b in bufs:
            try:
                out.append(parse_response(b, 0, "GET", eof=True)[0])
            except Exception:
                out.append(None)
        return out
    finally:
        sel.close()
        for s in socks:
            s.close()


@pytest.mark.hard_timeout(60)
def test_concurrent_misses_send_one_request_to_the_origin(origins, clonegate):
    cg, o = start(clonegate, origins, **{"server.workers": 2})
    t = url("herd", cc="max-age=60", ms="1500")
    t0 = time.monotonic()
    answers = concurrent_gets(cg.port, t, 1000)
    took = time.monotonic() - t0
    assert all(r is not None and r.status == 200 for r in answers), \
        [r for r in answers if r is None or r.status != 200][:3]
    assert all(r.body == body_of(o, t, 1) for r in answers)
    statuses = [cache_status(r) for r in answers]
    assert sum(1 for cs in statuses if cs.get("stored") is True) == 1
    assert o.count(path_of(t)) == 1, "concurrent misses each went to the origin"
    assert took < 10, f"1000 coalesced requests took {took:.1f} s"


def test_waiters_on_a_response_that_cannot_be_stored_go_on_at_once(origins, clonegate):
    cg, o = start(clonegate, origins, **{"server.workers": 2, "cache.lock_timeout": "5s"})
    t = url("herd-private", cc="private", ms="400")
    t0 = time.monotonic()
    answers = concurrent_gets(cg.port, t, 20)
    took = time.monotonic() - t0
    assert all(r is not None and r.status == 200 for r in answers), answers
    assert sorted(r.body for r in answers) == sorted(body_of(o, t, n) for n in range(1, 21))
    assert o.count(path_of(t)) == 20
    # the filler's private answer wakes the waiters: no one waits lock_timeout
    assert took < 2.5, f"20 requests for a private URL took {took:.1f} s"


def test_a_waiter_forwards_on_its_own_after_lock_timeout(origins, clonegate):
    cg, o = start(clonegate, origins, **{"cache.lock_timeout": "300ms"})
    t = url("lock", cc="max-age=60", ms="3000")
    p = path_of(t)
    answers = {}

    def get(name):
        answers[name] = cg.get(t, timeout=10)

    first = threading.Thread(target=get, args=("first",))
    first.start()
    helpers.wait_for(lambda: o.count(p) == 1, timeout=5, what="the first request at the origin")
    t0 = time.monotonic()
    second = threading.Thread(target=get, args=("second",))
    second.start()
    helpers.wait_for(lambda: o.count(p) == 2, timeout=2.5, what="the waiter giving up")
    waited = time.monotonic() - t0
    first.join(timeout=10)
    second.join(timeout=10)
    assert 0.25 <= waited < 1.5, f"the waiter went to the origin after {waited:.2f} s"
    assert answers["first"].status == 200 and answers["second"].status == 200
    assert answers["second"].body == body_of(o, t, 2)
    assert cache_status(answers["second"]).get("collapsed") is True


@pytest.mark.hard_timeout(60)
@pytest.mark.parametrize("where", ["no-memory", "too-large-for-l1"])
def test_concurrent_misses_of_an_entry_kept_in_redis_only_send_one_request(
        origins, clonegate, redis, where):
    # The filler stores in Redis only (no L1, or a body over memory / 32):
    # its waiters find the entry there, once each, and go nowhere else.
    if where == "no-memory":
        ini, size = {"cache.memory": "0"}, None
    else:
        ini, size = {"cache.memory": "1m"}, 100_000  # L1 takes 32 KiB at most
    ini["server.workers"] = 2
    cg, o = start(clonegate, origins, redis=redis, **ini)
    params = dict(cc="max-age=60", ms="800")
    if size:
        params["size"] = str(size)
    t = url(f"herd-redis-{where}", **params)
    # each worker's Redis link connects after the listener opens
    helpers.wait_for(lambda: cg.stats()["cache"]["redis"]["state"] == "up", timeout=5,
                     what="the Redis links up")
    before = cg.stats()["cache"]
    answers = concurrent_gets(cg.port, t, 5)
    assert all(r is not None and r.status == 200 for r in answers), answers
    if size:
        assert all(helpers.sha256(r.body) == helpers.pattern_sha256(size) for r in answers)
    else:
        assert all(r.body == body_of(o, t, 1) for r in answers)
    statuses = [cache_status(r) for r in answers]
    assert sum(1 for cs in statuses if cs.get("stored") is True) == 1, statuses
    assert sum(1 for cs in statuses if cs.get("hit") is True) == 4, statuses
    assert o.count(path_of(t)) == 1, (statuses, cg.stats()["cache"])
    after = cg.stats()["cache"]
    assert after["stores"] - before["stores"] == 1, "a waiter stored the entry again"
    assert after["coalesced_waits"] - before["coalesced_waits"] == 4
    assert after["redis"]["sets"] - before["redis"]["sets"] == 1


def test_waiters_go_to_the_clone_at_once_when_the_filler_could_store_nothing(
        origins, clonegate, redis):
    # No L1 and Redis down: nothing is stored, so no waiter may wait for
    # lock_timeout nor be answered from the cache.
    cg, o = start(clonegate, origins, redis=redis,
                  **{"cache.memory": "0", "cache.lock_timeout": "5s", "server.workers": 2})
    helpers.wait_for(lambda: cg.stats()["cache"]["redis"]["state"] == "up", timeout=5,
                     what="the Redis link up")
    redis.kill9()
    helpers.wait_for(lambda: cg.stats()["cache"]["redis"]["state"] != "up", timeout=5,
                     what="the Redis link down")
    t = url("herd-nowhere", cc="max-age=60", ms="400")
    t0 = time.monotonic()
    answers = concurrent_gets(cg.port, t, 5)
    took = time.monotonic() - t0
    assert all(r is not None and r.status == 200 for r in answers), answers
    assert not any(is_hit(r) for r in answers)
    assert sorted(r.body for r in answers) == sorted(body_of(o, t, n) for n in range(1, 6))
    assert o.count(path_of(t)) == 5
    assert took < 2.5, f"the waiters took {took:.1f} s"


# ------------------------------------------------------------ stale answers


@pytest.mark.parametrize("where", ["response", "config", "redis-only"])
def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
        origins, clonegate, redis, where):
    if where == "response":
        cg, o = start(clonegate, origins)
        t = url("swr", cc="max-age=1, stale-while-revalidate=30")
    elif where == "redis-only":
        # no L1: each stale hit is a new entry read from Redis, and still
        # only one of them starts the refresh
        cg, o = start(clonegate, origins, redis=redis, **{"cache.memory": "0"})
        t = url("swr", cc="max-age=1, stale-while-revalidate=30")
    else:
        cg, o = start(clonegate, origins, **{"cache.stale_while_revalidate": "30s"})
        t = url("swr", cc="max-age=1")
    p = path_of(t)
    first = cg.get(t)
    assert cache_status(first).get("stored") is True
    time.sleep(PAST_ONE_SECOND)
    control(o, p, ms="800")  # the refresh takes a while
    for _ in range(5):
        r, took = timed_get(cg, t)
        assert is_hit(r) and r.body == first.body, r
        assert took < QUICK, f"a stale-while-revalidate answer took {took:.2f} s"
    helpers.wait_for(lambda: o.count(p) == 2, timeout=5, what="the background refresh")
    helpers.wait_for(lambda: cg.get(t).body == body_of(o, t, 2), timeout=3,
                     what="the refreshed entry")
    r = cg.get(t)
    assert is_hit(r) and r.body == body_of(o, t, 2)
    assert_ttl(cache_status(r), 0, 1)
    assert o.count(p) == 2, "more than one refresh, or a refreshed entry not used"


@pytest.mark.parametrize("failure", ["5xx", "down"])
def test_stale_if_error_answers_with_the_stale_entry_when_the_origin_fails(
        origins, clonegate, failure):
    cg, o = start(clonegate, origins)
    with_sie = url("sie", cc="max-age=1, stale-if-error=60")
    without = url("nosie", cc="max-age=1")
    first = cg.get(with_sie)
    cg.get(without)
    time.sleep(PAST_ONE_SECOND)
    if failure == "5xx":
        control(o, path_of(with_sie), status="503")
        control(o, path_of(without), status="503")
    else:
        o.kill9()
    r = cg.get(with_sie)
    assert r.status == 200 and r.body == first.body, r
    cs = cache_status(r)
    assert cs.get("fwd") == "stale" and cs.get("detail") == "stale-if-error", cs
    assert re.fullmatch(r"5\d\d", cs.get("fwd-status", "")), cs
    if failure == "5xx":
        assert cs["fwd-status"] == "503", cs
    r = cg.get(without)
    assert r.status in (502, 503), f"a stale entry without stale-if-error was served: {r}"


def test_stale_if_error_default_comes_from_the_config(origins, clonegate):
    cg, o = start(clonegate, origins, **{"cache.stale_if_error": "60s"})
    t = url("sie-default", cc="max-age=1")
    first = cg.get(t)
    time.sleep(PAST_ONE_SECOND)
    control(o, path_of(t), status="500")
    r = cg.get(t)
    assert r.status == 200 and r.body == first.body, r
    cs = cache_status(r)
    assert cs.get("fwd-status") == "500" and cs.get("detail") == "stale-if-error", cs


# ------------------------------------------------------------ size and breakage


@pytest.mark.parametrize("chunked", ["0", "1"])
def test_a_response_over_max_object_size_passes_through_unstored(origins, clonegate, chunked):
    cg, o = start(clonegate, origins, **{"cache.max_object_size": "4k"})
    big = url("big", cc="max-age=60", size="10000", chunked=chunked)
    small = url("small", cc="max-age=60", size="3000", chunked=chunked)
    for n in (1, 2):
        r = cg.get(big)
        assert r.status == 200 and r.body == helpers.pattern_bytes(10000)
        cs = cache_status(r)
        assert "hit" not in cs, cs
        if chunked == "0":  # a chunked body's size is not known when the head goes
            assert "stored" not in cs, cs
        assert o.count(path_of(big)) == n
    cg.get(small)
    r = cg.get(small)
    assert is_hit(r) and r.body == helpers.pattern_bytes(3000)
    assert o.count(path_of(small)) == 1


def test_a_fill_cut_off_half_way_stores_nothing(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("cut", cc="max-age=60", size="20000")
    p = path_of(t)
    control(o, p, cut="1")
    raw = helpers.http_request(cg.port, build_request("GET", t), timeout=5)
    with pytest.raises(helpers.ProtocolError):
        parse_response(raw, 0, "GET", eof=True)  # the client saw the cut too
    control(o, p, clear="1")
    r = cg.get(t)
    assert r.status == 200 and r.body == helpers.pattern_bytes(20000)
    assert not is_hit(r), "a cut-off body was stored"
    assert cache_status(r).get("stored") is True
    r = cg.get(t)
    assert is_hit(r) and r.body == helpers.pattern_bytes(20000)
    assert o.count(p) == 2


def test_the_tag_header_is_kept_from_clients_unless_exposed(origins, clonegate):
    for expose, seen in (("no", None), ("yes", "red blue")):
        cg, o = start(clonegate, origins, **{"cache.expose_tags": expose})
        t = url("tags", ("hdr", "Surrogate-Key: red blue"), cc="max-age=60")
        r1, r2 = cg.get(t), cg.get(t)
        assert is_hit(r2)
        assert r1.header("Surrogate-Key") == seen and r2.header("Surrogate-Key") == seen, \
            (expose, r1.headers, r2.headers)
        cg.stop()


# ------------------------------------------------------------ connection upkeep around cache answers


def test_idle_timeout_still_closes_after_cache_hits(origins, clonegate):
    # a hit answered on a keep-alive connection, and two pipelined hits,
    # must leave the idle timer working: a silent client is closed
    cg, o = start(clonegate, origins, **{"server.idle_timeout": "500ms"})
    t = url("idle-after-hit", cc="max-age=60")
    assert cg.get(t).status == 200  # stored
    with helpers.HttpConn(cg.port, timeout=5) as c:
        c.send(build_request("GET", t) + build_request("GET", t))
        for _ in range(2):
            r = c.read_response()
            assert r.status == 200 and is_hit(r), r
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=3.0), "idle connection still open after 3 s"
        took = time.monotonic() - t0
    assert took < 1.5, f"idle close after {took:.2f} s, idle_timeout is 0.5 s"


def test_a_client_that_half_closes_gets_the_whole_hit(origins, clonegate):
    # a large stored body, asked for by a client that shuts its side right
    # after the request: the answer must still arrive whole
    size = 1536 * 1024  # below what L1 takes in one entry by default (2 MiB)
    cg, o = start(clonegate, origins)
    t = url("half-close", cc="max-age=60", size=size)
    first = cg.get(t)
    assert first.status == 200 and len(first.body) == size, first
    s = socket.create_connection(("127.0.0.1", cg.port), timeout=10)
    try:
        s.sendall(build_request("GET", t))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    r, _ = parse_response(data, eof=True)
    assert r.status == 200 and is_hit(r), r
    assert r.body == first.body, (len(r.body), size)


def test_hits_to_a_slow_reader_arrive_whole_and_in_order(origins, clonegate):
    # Hits go straight to the socket; what a full socket does not take waits
    # in the output buffer. Pipelined hits of a large body and a small one,
    # read slowly through a small receive buffer, must arrive byte for byte.
    size = 300 * 1024
    cg, o = start(clonegate, origins)
    big = url("slow-big", cc="max-age=60", size=size)
    small = url("slow-small", cc="max-age=60")
    want = {big: cg.get(big).body, small: cg.get(small).body}
    assert len(want[big]) == size
    order = [big, small, big, small, small, big]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", cg.port))
        s.sendall(b"".join(build_request("GET", t) for t in order[:-1]) +
                  build_request("GET", order[-1], headers={"Connection": "close"}))
        data = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            chunk = s.recv(8192)
            if not chunk:
                break
            data += chunk
            if len(data) < 64 * 1024:
                time.sleep(0.002)  # slow at first: the proxy's socket fills
    finally:
        s.close()
    got = helpers.parse_responses(data)
    assert len(got) == len(order), len(got)
    for r, t in zip(got, order):
        assert r.status == 200 and is_hit(r), (t, r)
        assert r.body == want[t], (t, len(r.body))


def test_a_chunked_answer_to_an_http10_client_is_stored_whole_or_not_at_all(origins, clonegate):
    # the HTTP/1.0 client gets the body de-chunked; what is stored (if
    # anything) must still be the whole body, here and for later clients
    cg, o = start(clonegate, origins)
    t = url("h10", cc="max-age=60", size="5000", chunked="1")
    raw = helpers.http_request(cg.port, build_request("GET", t, version="HTTP/1.0"), timeout=5)
    r, _ = parse_response(raw, 0, "GET", eof=True)
    assert r.status == 200 and r.body == helpers.pattern_bytes(5000)
    for _ in range(2):
        r = cg.get(t)
        assert r.status == 200 and r.body == helpers.pattern_bytes(5000), cache_status(r)


def test_a_set_cookie_on_a_refreshing_304_reaches_that_client_only(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("rotate", cc="max-age=1", etag='"v1"')
    p = path_of(t)
    assert "stored" in cache_status(cg.get(t))
    time.sleep(PAST_ONE_SECOND)
    control(o, p, cookie="session=new2")
    r = cg.get(t)
    cs = cache_status(r)
    assert cs.get("fwd") == "stale" and cs.get("fwd-status") == "304", cs
    assert r.header_all("Set-Cookie") == ["session=new2"], r.headers
    assert r.body == body_of(o, t, 1)
    control(o, p, clear="1")
    r = cg.get(t)  # the refreshed entry itself never carries the cookie
    assert is_hit(r) and r.header_all("Set-Cookie") == [], r.headers


def test_a_stored_404_is_never_answered_with_304(origins, clonegate):
    # a client's validators count only for a 2xx (RFC 9110 13.2.1)
    cg, o = start(clonegate, origins)
    t = url("gone", status="404", cc="max-age=60", etag='"abc"')
    assert cg.get(t).status == 404
    r = cg.get(t, headers={"If-None-Match": '"abc"'})
    assert r.status == 404 and is_hit(r), r


@pytest.mark.parametrize("name", ["X-Forwarded-For", "Forwarded", "Via"])
def test_a_response_varying_on_a_field_the_proxy_rewrites_is_not_stored(origins, clonegate, name):
    # the clone saw the field as the proxy rewrote it: a variant keyed by
    # the client's value would serve one client's answer to another
    cg, o = start(clonegate, origins)
    t = url("xff-" + name.lower(), cc="max-age=60", vary=name)
    for n in (1, 2):
        r = cg.get(t, headers={name: "198.51.100.7"} if n == 1 else None)
        assert r.status == 200 and cache_status(r).get("detail") == "vary-forwarded", r
    assert o.count(path_of(t)) == 2


def test_a_head_validating_a_stale_entry_refreshes_it(origins, clonegate):
    cg, o = start(clonegate, origins)
    t = url("headfresh", cc="max-age=1", etag='"h1"')
    assert "stored" in cache_status(cg.get(t))
    time.sleep(PAST_ONE_SECOND)
    r = cg.request("HEAD", t)
    cs = cache_status(r)
    assert r.status == 200 and cs.get("fwd") == "stale" and cs.get("fwd-status") == "304", cs
    r = cg.get(t)  # fresh again: a hit, without asking the clone
    assert is_hit(r) and r.body == body_of(o, t, 1), cache_status(r)
    assert o.count(path_of(t)) == 2
