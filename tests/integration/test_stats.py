"""The admin listener's figures (issue 7): /stats JSON, /metrics in
Prometheus text, the HTML dashboard in a real browser, and who may see them
(stats.allow, stats.auth).

Every test starts its own origins and one clonegate with the cache off (so
each request reaches an origin and the counts are exact) and one worker
unless it says otherwise; the cache's figures (section 5) are tested with
the cache on and a real redis-server. Counters are read before and after the traffic a
test makes, and the difference is asserted exactly; the proxy books a
request when it ends, so a read waits (bounded) for the booking to land.

Needs, beyond the suite's usual tools: promtool (Debian package
`prometheus`) and chromium (Debian package `chromium`); the tests that use
them are skipped, saying so, when they are missing.
"""

import json
import re
import shutil
import subprocess
import time

import pytest

import browser_check
import helpers

BASE = {"server.workers": 1, "cache.enabled": "no"}
# No active check may take a clone out, nor traffic mark one down, while a
# test counts failures on purpose.
QUIET_HEALTH = {"health.interval": "60s", "health.timeout": "1s", "health.fall": 100}
# Log lines the proxy may write about clones a test kills or never starts.
UPSTREAM_ERRORS = r"(?i)upstream|clone|connect|refused|reset|timed? ?out|health|check|down|50[234]"
SETTLE_S = 5.0  # s a counter may take to reflect traffic that has ended

LATENCY_KEYS = ("window_seconds", "count", "p50", "p90", "p99", "p999")
SERVER_KEYS = {
    "address": str, "state": str, "up": bool, "draining": bool, "checks_passed": int,
    "checks_failed": int, "traffic_failures": int, "consecutive": int, "last_change": int,
    "last_error": str, "active": int, "requests": int, "failures": int, "retries": int,
    "latency_ms": dict,
}
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
CACHE_STATUSES = ("hit", "uri-miss", "vary-miss", "miss", "stale", "request", "bypass")
CACHE_COUNTERS = ("hits", "misses", "stale", "l2_hits", "stale_served", "revalidated", "stores",
                  "store_bytes", "not_stored", "stores_aborted", "coalesced_waits",
                  "lock_timeouts", "invalidations", "background_refreshes", "waiting")
L1_KEYS = ("entries", "bytes", "capacity", "evictions", "expired")
REDIS_COUNTERS = ("links_up", "gets", "found", "not_found", "failed", "timeouts", "skipped",
                  "sets", "sets_skipped", "sets_too_large", "errors", "purges", "published",
                  "messages", "connects", "disconnects", "reconnects")
PURGE_KEYS = ("requests", "url", "prefix", "tag", "soft", "entries", "refused",
              "messages_received", "l1_drops", "queued", "replayed", "overflows")
REDIS_STATES = ("off", "down", "connecting", "up", "slow")
TLS_KEYS = ("handshakes", "resumed", "failures", "plaintext", "timeouts")


def start(clonegate, servers=None, **overrides):
    ini = dict(BASE)
    ini.update(overrides)
    return clonegate(ini, servers=servers)


def dead_addr():
    """"127.0.0.1:port" where nothing listens."""
    port = helpers.free_port()
    assert not helpers.port_open(port)
    return f"127.0.0.1:{port}"


def by_addr(stats):
    return {s["address"]: s for s in stats["servers"]}


def settled(cg, cond, what, timeout=SETTLE_S):
    """Polls /stats until cond(stats) holds; returns that /stats."""
    box = {}

    def check():
        box["s"] = cg.stats()
        return cond(box["s"])

    try:
        helpers.wait_for(check, timeout=timeout, interval=0.02, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last /stats: {json.dumps(box.get('s'))}") from None
    return box["s"]


def requests_settled(cg, before, n):
    """/stats once requests.total has grown by at least <n> since <before>
    and every client connection is closed (the test closed its own: once the
    proxy has too, nothing of them is left to book)."""
    want = before["requests"]["total"] + n
    return settled(cg, lambda s: s["requests"]["total"] >= want
                   and s["connections"]["open"] == 0,
                   f"requests.total to reach {want} and no connection open")


def is_int(v):
    return type(v) is int


def is_number(v):
    return type(v) in (int, float)


def check_latency(lat, where):
    assert isinstance(lat, dict), (where, lat)
    assert set(LATENCY_KEYS) <= set(lat), (where, sorted(lat))
    assert is_int(lat["window_seconds"]) and lat["window_seconds"] == 60, (where, lat)
    assert is_int(lat["count"]) and lat["count"] >= 0, (where, lat)
    for q in ("p50", "p90", "p99", "p999"):
        assert is_number(lat[q]) and lat[q] >= 0, (where, q, lat)
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"], (where, lat)


def check_cache_schema(s):
    """The "cache" object and requests.by_cache_status, with their types."""
    by_cs = s["requests"]["by_cache_status"]
    assert set(by_cs) == set(CACHE_STATUSES), by_cs
    assert all(is_int(v) and v >= 0 for v in by_cs.values()), by_cs
    c = s["cache"]
    assert type(c["enabled"]) is bool, c
    assert c["requests_by_cache_status"] == by_cs, (c, by_cs)
    assert set(c["l1"]) == set(L1_KEYS), c["l1"]
    assert all(is_int(v) and v >= 0 for v in c["l1"].values()), c["l1"]
    for k in CACHE_COUNTERS:
        assert is_int(c[k]) and c[k] >= 0, (k, c)
    assert c["hits"] == by_cs["hit"], c
    assert c["misses"] == by_cs["uri-miss"] + by_cs["vary-miss"] + by_cs["miss"], c
    assert c["stale"] == by_cs["stale"], c
    assert is_number(c["hit_ratio"]) and 0 <= c["hit_ratio"] <= 1, c
    looked = sum(v for k, v in by_cs.items() if k != "bypass")
    if looked:
        assert abs(c["hit_ratio"] - by_cs["hit"] / looked) < 1e-3, (c["hit_ratio"], by_cs)
    p = c["purge"]
    assert set(p) == set(PURGE_KEYS), p
    assert all(is_int(v) and v >= 0 for v in p.values()), p
    assert p["url"] + p["prefix"] + p["tag"] <= p["requests"], p
    assert p["soft"] <= p["requests"], p
    if not c["enabled"]:
        assert all(v == 0 for v in p.values()), p
    r = c["redis"]
    assert "dels" not in r, r
    assert type(r["configured"]) is bool and isinstance(r["address"], str), r
    assert r["state"] in REDIS_STATES, r
    assert isinstance(r["link_states"], list), r
    assert all(x in REDIS_STATES[1:] for x in r["link_states"]), r
    for k in REDIS_COUNTERS:
        assert is_int(r[k]) and r[k] >= 0, (k, r)
    assert is_number(r["rtt_ms"]) and r["rtt_ms"] >= 0, r
    assert r["found"] + r["not_found"] + r["failed"] == r["gets"], r
    assert r["links_up"] == r["link_states"].count("up"), r
    if not r["configured"]:
        assert r["state"] == "off" and r["address"] == "" and r["link_states"] == [], r


def check_schema(s):
    """Every documented key of /stats with the right JSON type."""
    assert isinstance(s["version"], str) and s["version"], s
    assert is_int(s["uptime"]) and s["uptime"] >= 0, s
    assert is_int(s["workers"]) and s["workers"] >= 1, s
    assert type(s["draining"]) is bool, s
    conns = s["connections"]
    for k in ("open", "total", "refused", "accept_pauses"):
        assert is_int(conns[k]) and conns[k] >= 0, (k, conns)
    req = s["requests"]
    assert is_int(req["total"]) and req["total"] >= 0, req
    assert set(req["by_class"]) == set(CLASSES), req
    for c in CLASSES:
        assert is_int(req["by_class"][c]) and req["by_class"][c] >= 0, (c, req)
    assert sum(req["by_class"].values()) == req["total"], req
    for k in ("in", "out"):
        assert is_int(s["bytes"][k]) and s["bytes"][k] >= 0, s["bytes"]
    for k in ("failures", "retries"):
        assert is_int(s["upstream"][k]) and s["upstream"][k] >= 0, s["upstream"]
    check_latency(s["latency_ms"], "latency_ms")
    check_cache_schema(s)
    t = s["tls"]
    assert set(t) == set(TLS_KEYS), t
    assert all(is_int(t[k]) and t[k] >= 0 for k in TLS_KEYS), t
    assert t["resumed"] <= t["handshakes"] and t["plaintext"] <= t["failures"], t
    assert isinstance(s["servers"], list), s
    for srv in s["servers"]:
        for k, t in SERVER_KEYS.items():
            assert k in srv, (k, srv)
            if t is int:
                assert is_int(srv[k]) and srv[k] >= 0, (k, srv)
            else:
                assert type(srv[k]) is t, (k, srv)
        assert srv["state"] in ("up", "down", "draining", "removed"), srv
        check_latency(srv["latency_ms"], srv["address"])


# ---------------------------------------------------------------------------
# 1. /stats


def test_issue_7_stats_json_has_every_documented_key_with_its_type(origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate)
    r = cg.admin("/stats")
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("application/json"), r
    assert r.header("Cache-Control") == "no-store", r
    s = json.loads(r.body)
    check_schema(s)
    assert s["workers"] == 1 and s["draining"] is False, s
    assert s["cache"]["enabled"] is False and s["cache"]["redis"]["state"] == "off", s["cache"]
    assert [x["address"] for x in s["servers"]] == [o1.addr, o2.addr], s["servers"]
    assert s["requests"]["total"] == 0 and s["bytes"] == {"in": 0, "out": 0}, s
    # present without [tls], all zeros
    assert s["tls"] == dict.fromkeys(TLS_KEYS, 0), s["tls"]
    # and once traffic has gone through
    assert cg.get("/x").status == 200
    s = requests_settled(cg, s, 1)
    check_schema(s)
    assert cg.admin("/health").status == 200


def test_issue_7_counters_move_exactly_with_2xx_and_4xx_traffic(origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate)
    n = 20
    before = cg.stats()
    with cg.conn() as c:
        seen = [c.get(f"/count-me?i={i}").header("X-Origin") for i in range(n)]
        r404 = c.get("/status?code=404")
    assert r404.status == 404 and r404.header("X-Origin"), r404
    after = requests_settled(cg, before, n + 1)
    again = cg.stats()

    delta = {c: after["requests"]["by_class"][c] - before["requests"]["by_class"][c]
             for c in CLASSES}
    assert after["requests"]["total"] - before["requests"]["total"] == n + 1, (before, after)
    assert delta == {"1xx": 0, "2xx": n, "3xx": 0, "4xx": 1, "5xx": 0, "none": 0}, delta
    assert again["requests"] == after["requests"], (after["requests"], again["requests"])

    # round robin, one worker, one connection: strictly alternating, so n / 2
    # each, plus the 404 on whichever came next
    assert seen.count("origin1") == seen.count("origin2") == n // 2, seen
    b, a = by_addr(before), by_addr(after)
    got = {o.name: a[o.addr]["requests"] - b[o.addr]["requests"] for o in (o1, o2)}
    want = {"origin1": n // 2, "origin2": n // 2}
    want[r404.header("X-Origin")] += 1
    assert got == want, (got, want)
    # the origins agree
    for o in (o1, o2):
        assert o.count("/count-me") == n // 2, o.counts()
    assert after["upstream"] == before["upstream"] == {"failures": 0, "retries": 0}, after
    for o in (o1, o2):
        assert a[o.addr]["failures"] == a[o.addr]["retries"] == 0, a[o.addr]
        assert a[o.addr]["active"] == 0, a[o.addr]


def test_issue_7_counters_add_up_across_two_workers(origins, clonegate):
    origins(2)
    cg = start(clonegate, **{"server.workers": 2})
    n = 40
    before = cg.stats()
    assert before["workers"] == 2, before
    for i in range(n):  # a fresh connection each: the kernel spreads them
        assert cg.get(f"/w?i={i}").status == 200
    after = requests_settled(cg, before, n)
    assert after["requests"]["total"] - before["requests"]["total"] == n, after
    assert after["requests"]["by_class"]["2xx"] - before["requests"]["by_class"]["2xx"] == n
    per_server = sum(s["requests"] for s in after["servers"]) - sum(
        s["requests"] for s in before["servers"])
    assert per_server == n, after["servers"]
    assert after["connections"]["total"] - before["connections"]["total"] >= n, after


def test_issue_7_dead_clone_counts_upstream_failures_and_retries(origins, clonegate):
    (o,) = origins(1)
    dead = dead_addr()
    cg = start(clonegate, servers=[dead, o], **QUIET_HEALTH, **{"upstream.retries": 1})
    cg.allowed_errors.append(UPSTREAM_ERRORS)
    before = cg.stats()
    n = 6
    for i in range(n):  # round robin sends some first tries to the dead clone
        r = cg.get(f"/retry-me?i={i}")
        assert r.status == 200 and r.header("X-Origin") == "origin1", (i, r)
    after = requests_settled(cg, before, n)
    failures = after["upstream"]["failures"] - before["upstream"]["failures"]
    retries = after["upstream"]["retries"] - before["upstream"]["retries"]
    assert failures >= 1, (before["upstream"], after["upstream"])
    # every failure was a refused connect, retried once on the live clone
    assert retries == failures, (failures, retries)
    a, b = by_addr(after), by_addr(before)
    assert a[dead]["failures"] - b[dead]["failures"] == failures, a[dead]
    assert a[dead]["requests"] == b[dead]["requests"] == 0, a[dead]
    assert a[o.addr]["retries"] - b[o.addr]["retries"] == retries, a[o.addr]
    assert a[o.addr]["failures"] == 0, a[o.addr]
    assert a[o.addr]["requests"] - b[o.addr]["requests"] == n, a[o.addr]
    assert a[dead]["traffic_failures"] >= failures, a[dead]
    # the clients saw only 200s
    assert after["requests"]["total"] - before["requests"]["total"] == n
    assert after["requests"]["by_class"]["2xx"] - before["requests"]["by_class"]["2xx"] == n
    assert after["requests"]["by_class"]["5xx"] == before["requests"]["by_class"]["5xx"]


def test_issue_7_bytes_in_and_out_grow_by_what_went_through(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    before = cg.stats()
    upload = helpers.pattern_bytes(100_000)
    raw_post = helpers.build_request("POST", "/sink", body=upload)
    raw_get = helpers.build_request("GET", "/bytes?n=300000")
    r1 = helpers.parse_response(helpers.http_request(cg.port, raw_post), 0, "POST", eof=True)[0]
    r2 = helpers.parse_response(helpers.http_request(cg.port, raw_get), 0, "GET", eof=True)[0]
    assert r1.status == 200 and json.loads(r1.body)["length"] == len(upload), r1
    assert r2.status == 200 and len(r2.body) == 300_000, r2
    sent = len(raw_post) + len(raw_get)
    received = len(r1.raw) + len(r2.raw)
    # both connections are closed: wait until every byte of them is booked
    after = settled(cg, lambda s: s["bytes"]["in"] - before["bytes"]["in"] >= sent
                    and s["bytes"]["out"] - before["bytes"]["out"] >= received
                    and s["connections"]["open"] == 0,
                    f"bytes in +{sent}, out +{received}")
    din = after["bytes"]["in"] - before["bytes"]["in"]
    dout = after["bytes"]["out"] - before["bytes"]["out"]
    print(f"\n[issue 7] bytes: sent={sent} in+={din} received={received} out+={dout}")
    # every byte booked once: at the request's end or at the connection's close
    assert (din, dout) == (sent, received)


def test_issue_7_latency_percentiles_are_ordered_and_plausible_for_a_50ms_origin(
        origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate)
    n = 12
    t0 = time.monotonic()
    with cg.conn() as c:
        for i in range(n):
            r = c.get(f"/slow?ms=50&i={i}")
            assert r.status == 200, r
    wall_ms = (time.monotonic() - t0) * 1000 / n
    s = settled(cg, lambda s: s["latency_ms"]["count"] >= n, f"latency count {n}")
    lat = s["latency_ms"]
    print(f"\n[issue 7] latency over {n} x /slow?ms=50: {lat}, client mean {wall_ms:.1f} ms")
    assert lat["count"] == n, lat
    assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"], lat
    assert lat["p50"] >= 50, lat
    assert lat["p999"] < 2000, lat  # 50 ms answers on loopback
    for o in (o1, o2):
        sl = by_addr(s)[o.addr]["latency_ms"]
        assert sl["count"] == n // 2, sl
        assert 50 <= sl["p50"] <= sl["p90"] <= sl["p99"] <= sl["p999"] < 2000, sl


def test_issue_7_connections_open_follows_keep_alive_sockets(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    # wait_ready's probe (one connect per listener) is counted in first
    probes = len(cg.listen) + len(cg.tls_listen)
    base = settled(cg, lambda s: s["connections"]["open"] == 0
                   and s["connections"]["total"] >= probes, "the ready probes counted")
    conns = [cg.conn() for _ in range(3)]
    try:
        for c in conns:  # a request on each: accepted and kept alive
            assert c.get("/ka").status == 200
        s = settled(cg, lambda s: s["connections"]["open"] >= 3, "3 open connections")
        assert s["connections"]["open"] == 3, s["connections"]
        assert s["connections"]["total"] - base["connections"]["total"] == 3, s["connections"]
    finally:
        for c in conns:
            c.close()
    s = settled(cg, lambda s: s["connections"]["open"] == 0, "open back to 0 after close")
    assert s["connections"]["total"] - base["connections"]["total"] == 3, s["connections"]


# ---------------------------------------------------------------------------
# 2. /metrics

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, ((label, value), ...)): float} of a Prometheus text page."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"unparsable metrics line {line!r}"
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        key = (m.group(1), labels)
        assert key not in out, f"duplicate series {line!r}"
        out[key] = float(m.group(3))
    return out


def metric(series, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    assert key in series, f"no series {name}{labels}"
    return series[key]


def promtool():
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not installed (Debian package prometheus; make deps)")
    return path


def test_issue_7_metrics_pass_promtool_and_equal_stats(origins, clonegate):
    tool = promtool()
    o = origins(1)[0]
    dead = dead_addr()
    cg = start(clonegate, servers=[o, dead], **QUIET_HEALTH, **{"upstream.retries": 1})
    cg.allowed_errors.append(UPSTREAM_ERRORS)
    n = 10
    for i in range(n):
        assert cg.get(f"/m?i={i}").status == 200
    # a different count in each class, so no two classes can be mixed up
    want = {"1xx": 0, "2xx": n, "3xx": 1, "4xx": 2, "5xx": 3, "none": 0}
    for code, cls in ((302, "3xx"), (404, "4xx"), (503, "5xx")):
        for _ in range(want[cls]):
            assert cg.get(f"/status?code={code}").status == code
    total = sum(want.values())
    settled(cg, lambda s: s["requests"]["total"] >= total
            and s["connections"]["open"] == 0, f"{total} requests booked")

    s1 = cg.stats()
    r = cg.admin("/metrics")
    s2 = cg.stats()
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("text/plain"), r
    assert "version=0.0.4" in r.header("Content-Type", ""), r
    text = r.text()

    check = subprocess.run([tool, "check", "metrics"], input=r.body, capture_output=True,
                           timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.returncode, check.stdout.decode(), check.stderr.decode())

    # nothing moved while we read: /stats before and after /metrics agree
    for k in ("requests", "bytes", "upstream"):
        assert s1[k] == s2[k], (k, s1[k], s2[k])
    assert s1["connections"]["total"] == s2["connections"]["total"]
    s = s2
    m = parse_metrics(text)

    classes = {c: metric(m, "clonegate_requests_total", **{"class": c}) for c in CLASSES}
    assert sum(classes.values()) == s["requests"]["total"] == total, (classes, s["requests"])
    assert classes == {c: float(v) for c, v in s["requests"]["by_class"].items()}, classes
    assert classes == want, classes
    assert metric(m, "clonegate_connections_total") == s["connections"]["total"]
    assert metric(m, "clonegate_connections_open") == s["connections"]["open"] == 0
    assert metric(m, "clonegate_accept_pauses_total") == s["connections"]["accept_pauses"]
    assert metric(m, "clonegate_connections_refused_total") == s["connections"]["refused"] == 0
    assert metric(m, "clonegate_received_bytes_total") == s["bytes"]["in"] > 0
    assert metric(m, "clonegate_sent_bytes_total") == s["bytes"]["out"] > 0
    assert metric(m, "clonegate_upstream_failures_total") == s["upstream"]["failures"] >= 1
    assert metric(m, "clonegate_upstream_retries_total") == s["upstream"]["retries"] >= 1
    assert abs(metric(m, "clonegate_uptime_seconds") - s["uptime"]) <= 1
    # the TLS handshake counters, there (and 0) without [tls]
    for k in TLS_KEYS:
        assert metric(m, f"clonegate_tls_{k}_total") == s["tls"][k] == 0, k
        assert f"# TYPE clonegate_tls_{k}_total counter\n" in text, k

    # the request histogram: cumulative buckets, +Inf == _count == requests
    hist = "clonegate_request_duration_seconds"
    buckets = sorted(((float(dict(lbl)["le"]), v) for (name, lbl), v in m.items()
                      if name == hist + "_bucket"), key=lambda x: x[0])
    assert buckets and buckets[-1][0] == float("inf"), buckets
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), buckets
    assert buckets[-1][1] == metric(m, hist + "_count") == total
    assert metric(m, hist + "_sum") > 0

    srv = by_addr(s)
    for addr in (o.addr, dead):
        v = srv[addr]
        lbl = {"server": addr}
        assert metric(m, "clonegate_server_up", **lbl) == (1 if v["up"] else 0), v
        assert metric(m, "clonegate_server_draining", **lbl) == (1 if v["draining"] else 0)
        assert metric(m, "clonegate_server_requests_total", **lbl) == v["requests"], v
        assert metric(m, "clonegate_server_retries_total", **lbl) == v["retries"], v
        assert metric(m, "clonegate_server_active_requests", **lbl) == v["active"] == 0, v
        assert metric(m, "clonegate_server_traffic_failures_total", **lbl) == \
            v["traffic_failures"], v
        assert metric(m, "clonegate_server_checks_total", result="passed", **lbl) == \
            v["checks_passed"], v
        assert metric(m, "clonegate_server_checks_total", result="failed", **lbl) == \
            v["checks_failed"], v
        assert metric(m, "clonegate_server_response_duration_seconds_count", **lbl) == \
            v["requests"], v
    assert srv[o.addr]["requests"] == total and srv[dead]["requests"] == 0, srv


# ---------------------------------------------------------------------------
# 3. The dashboard, in a real browser

ROWS_JS = ("JSON.stringify(Array.from(document.querySelectorAll('tr[data-server]')).map(r=>"
           "{const c=r.querySelector('td.state');return [r.dataset.server,"
           "c?c.textContent:null,c?c.className:null];}))")


def chromium():
    if not browser_check.chromium_binary():
        pytest.skip("chromium not installed (Debian package chromium; make deps)")


def page_rows(b):
    return {a: (state, cls) for a, state, cls in json.loads(b.evaluate(ROWS_JS))}


def wait_page(b, cond, what, timeout=8.0):
    """Polls the live page's rows until cond(rows) holds (the dashboard
    refreshes every 2 s); returns the rows."""
    box = {}

    def check():
        box["rows"] = page_rows(b)
        return cond(box["rows"])

    try:
        helpers.wait_for(check, timeout=timeout, interval=0.1, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; page rows: {box.get('rows')}") from None
    return box["rows"]


def test_issue_7_dashboard_is_self_contained_and_polls_stats(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    r = cg.admin("/")
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("text/html"), r
    page = r.text()
    # no external asset: no src/href/url() to anything, no import
    assert not re.search(r"""(?i)\b(src|href)\s*=|url\(|@import|//[a-z0-9.-]+\.[a-z]""", page), \
        re.findall(r"""(?i).{0,40}(?:src|href|url\(|@import|//[a-z]).{0,40}""", page)
    assert "setInterval(tick,2000)" in page.replace(" ", ""), page
    assert "fetch('stats'+location.search" in page.replace(" ", ""), page


@pytest.mark.hard_timeout(110)
def test_issue_7_dashboard_in_chromium_shows_clones_and_follows_a_kill(origins, clonegate,
                                                                       tmp_path):
    chromium()
    o1, o2 = origins(2)
    cg = start(clonegate, **{"health.interval": "500ms", "health.timeout": "250ms",
                             "health.fall": 2})
    cg.allowed_errors.append(UPSTREAM_ERRORS)
    for i in range(4):
        assert cg.get(f"/d?i={i}").status == 200
    url = f"http://{cg.stats_host}:{cg.stats_port}/"
    shots = tmp_path / "browser"

    # one page kept open at phone width for the whole test
    with browser_check.Browser(url, shots, window="390,844") as live:
        rows = wait_page(live, lambda r: {o1.addr, o2.addr} <= set(r)
                         and all(r[o.addr][0] == "up" for o in (o1, o2)),
                         "both clones up in the open page")
        assert rows[o1.addr][1].split() == ["state", "up"], rows
        # a mark only this page load has: a reload would lose it
        live.evaluate("window.__issue7 = 'same page'; "
                      "document.getElementById('up').textContent")
        first_update = live.evaluate("document.getElementById('up').textContent")
        assert first_update.startswith("up "), first_update
        # it fits a phone: the page does not scroll sideways
        widths = live.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths

        # a fresh load: each clone's row says up
        dom = browser_check.dump_dom(url, shots)
        rows = browser_check.server_rows(dom)
        assert {o1.addr, o2.addr} <= set(rows), (rows, dom[-3000:])
        for o in (o1, o2):
            assert rows[o.addr]["state"] == "up", rows
            assert "up" in rows[o.addr]["classes"], rows

        png = browser_check.screenshot(url, shots / "dashboard-390.png", shots, 390, 844)
        assert png.exists() and png.stat().st_size > 0, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

        o2.kill9()
        settled(cg, lambda s: by_addr(s)[o2.addr]["state"] == "down", "/stats: origin2 down",
                timeout=10)

        dom = browser_check.dump_dom(url, shots)
        rows = browser_check.server_rows(dom)
        assert rows[o2.addr]["state"] == "down", rows
        assert "down" in rows[o2.addr]["classes"], rows
        assert rows[o1.addr]["state"] == "up", rows

        # the page opened before the kill shows it too, by itself
        rows = wait_page(live, lambda r: r.get(o2.addr, ("",))[0] == "down",
                         "origin2 down in the page opened before the kill")
        assert rows[o1.addr][0] == "up", rows
        assert live.evaluate("window.__issue7") == "same page", "the page was reloaded"
        assert live.evaluate("document.getElementById('up').textContent") != first_update
        assert live.evaluate("document.getElementById('err').textContent") == ""


@pytest.mark.hard_timeout(90)
def test_issue_7_dashboard_with_token_in_the_query_works_in_chromium(origins, clonegate,
                                                                     tmp_path):
    chromium()
    o1, o2 = origins(2)
    token = "s3cret-Token_7"
    tok = tmp_path / "token"
    tok.write_text(token + "\n")
    cg = start(clonegate, **{"stats.auth": str(tok)})
    base = f"http://{cg.stats_host}:{cg.stats_port}/"
    dom = browser_check.dump_dom(base + "?token=" + token, tmp_path / "browser")
    rows = browser_check.server_rows(dom)
    assert {o1.addr: "up", o2.addr: "up"} == {a: v["state"] for a, v in rows.items()}, (
        rows, dom[-2000:])


# ---------------------------------------------------------------------------
# 4. Who may see it


def test_issue_7_allow_outside_loopback_refuses_with_403(origins, clonegate):
    o1, _ = origins(2)
    cg = start(clonegate, **{"stats.allow": "10.0.0.0/8"})
    for path in ("/stats", "/", "/metrics", "/health", "/stats?token=x"):
        r = cg.admin(path)
        assert r.status == 403, (path, r)
        assert b"<script" not in r.body and b'"servers"' not in r.body, (path, r)
    r = cg.admin(f"/servers/{o1.addr}/drain", "POST")
    assert r.status == 403, r
    # the refused drain did nothing, and the proxy itself still serves
    assert cg.get("/x").status == 200
    assert cg.get("/x").status == 200
    assert o1.count("/x") == 1


def test_issue_7_allow_loopback_serves(origins, clonegate):
    origins(2)
    cg = start(clonegate, **{"stats.allow": "10.0.0.0/8, 127.0.0.0/8"})
    for path in ("/stats", "/", "/metrics", "/health"):
        assert cg.admin(path).status == 200, path
    check_schema(cg.stats())


def test_issue_7_auth_token_by_header_or_query_else_403(origins, clonegate, tmp_path):
    origins(2)
    token = "tok-" + "a1B2c3D4e5F6" * 3
    tok = tmp_path / "stats.token"
    tok.write_text(token + "\n")
    cg = start(clonegate, **{"stats.auth": str(tok)})
    for path in ("/stats", "/", "/metrics"):
        assert cg.admin(path).status == 403, path
        bad = [{"Authorization": "Bearer wrong"},
               {"Authorization": "Bearer " + token[:-1]},  # a prefix
               {"Authorization": "Bearer " + token + "x"},  # longer
               {"Authorization": "Bearer "},
               {"Authorization": "Basic " + token},
               {"Authorization": token}]
        for h in bad:
            assert cg.admin(path, headers=h).status == 403, (path, h)
        for q in ("?token=wrong", "?token=", "?token=" + token[:-1], "?tok=" + token):
            assert cg.admin(path + q).status == 403, (path, q)
        r = cg.admin(path, headers={"Authorization": "Bearer " + token})
        assert r.status == 200, (path, r)
        r = cg.admin(path + "?token=" + token)
        assert r.status == 200, (path, r)
    s = json.loads(cg.admin("/stats?token=" + token).body)
    check_schema(s)


def test_a_post_from_a_page_of_another_site_is_refused(origins, clonegate):
    """A web page open in the operator's browser can send a form POST to a
    loopback admin listener: with an Origin of another host, or
    Sec-Fetch-Site cross-site, it is refused and does nothing."""
    o1, _ = origins(2)
    cg = start(clonegate, **{"cache.enabled": "yes"})  # for /purge
    here = f"{cg.stats_host}:{cg.stats_port}"
    drain = f"/servers/{o1.addr}/drain"
    for h in ({"Host": here, "Origin": "http://evil.example"},
              {"Origin": "null"},
              {"Origin": f"http://{here}", "Sec-Fetch-Site": "cross-site"},
              {"Sec-Fetch-Site": "same-site"}):
        r = cg.admin(drain, "POST", headers=dict(h, **{
            "Content-Type": "application/x-www-form-urlencoded"}))
        assert r.status == 403, (h, r)
        r = cg.admin("/purge?url=http://test/x", "POST", headers=h)
        assert r.status == 403, (h, r)
    assert not any(s["draining"] for s in cg.stats()["servers"])
    # the dashboard's own page, or a tool without Origin, may
    r = cg.admin(drain, "POST", headers={"Host": here, "Origin": f"http://{here}",
                                         "Sec-Fetch-Site": "same-origin"})
    assert r.status == 200, r
    assert [s["draining"] for s in cg.stats()["servers"] if s["address"] == o1.addr] == [True]
    assert cg.admin(f"/servers/{o1.addr}/ready", "POST").status == 200


def test_the_query_token_opens_pages_but_does_not_authorize_a_post(origins, clonegate,
                                                                   tmp_path):
    o1, _ = origins(2)
    token = "tok-post-" + "x9" * 8
    tok = tmp_path / "stats.token"
    tok.write_text(token + "\n")
    cg = start(clonegate, **{"stats.auth": str(tok)})
    assert cg.admin("/stats?token=" + token).status == 200
    drain = f"/servers/{o1.addr}/drain"
    assert cg.admin(drain + "?token=" + token, "POST").status == 403
    r = cg.admin(drain, "POST", headers={"Authorization": "Bearer " + token})
    assert r.status == 200, r


def test_issue_7_allow_and_auth_both_apply(origins, clonegate, tmp_path):
    origins(2)
    tok = tmp_path / "stats.token"
    tok.write_text("both-apply\n")
    cg = start(clonegate, **{"stats.auth": str(tok), "stats.allow": "10.0.0.0/8"})
    # the right token from an address outside stats.allow is still refused
    assert cg.admin("/stats", headers={"Authorization": "Bearer both-apply"}).status == 403
    assert cg.admin("/stats?token=both-apply").status == 403


def test_issue_7_proxy_port_forwards_admin_paths_and_admin_port_does_not_proxy(
        origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate)
    before = cg.stats()
    for path in ("/stats", "/metrics", "/"):
        r = cg.get(path)
        assert r.status == 200, (path, r)
        assert r.header("X-Origin") in ("origin1", "origin2"), (path, r)
    assert o1.count("/stats") + o2.count("/stats") == 1
    assert o1.count("/metrics") + o2.count("/metrics") == 1
    requests_settled(cg, before, 3)

    for path in ("/anything", "/echo", "/stats/extra", "/x/stats"):
        r = cg.admin(path)
        assert r.status == 404, (path, r)
        assert r.header("X-Origin") is None, (path, r)
    r = cg.admin("/echo", "POST", body=b"hello")
    assert r.status in (404, 405), r
    assert r.header("X-Origin") is None, r
    # none of it reached an origin
    for path in ("/anything", "/echo", "/stats/extra", "/x/stats"):
        assert o1.count(path) + o2.count(path) == 0, path
    assert o1.count("/echo") + o2.count("/echo") == 0
    after = cg.stats()
    assert after["requests"]["total"] == before["requests"]["total"] + 3, after["requests"]


def check_admin_error(r, status, allow=None, head=False):
    """An admin error answer: <status>, no-store, a short plain-text body
    (none for a HEAD; never evhttp's HTML page) and, for 405, the Allow
    header."""
    assert r.status == status, r
    assert r.header("Cache-Control") == "no-store", r
    assert (r.header("Content-Type") or "").startswith("text/plain"), r
    assert r.header("Allow") == allow, r
    if head:
        assert r.body == b"", r
    else:
        assert r.body.startswith(f"{status} ".encode()) and len(r.body) < 64, r
        assert b"<" not in r.body, r


# (method, path, status, Allow): every way to miss on the admin listener
ADMIN_MISSES = [
    ("DELETE", "/stats", 405, "GET, HEAD"),
    ("POST", "/stats", 405, "GET, HEAD"),
    ("PUT", "/metrics", 405, "GET, HEAD"),
    ("OPTIONS", "/", 405, "GET, HEAD"),
    ("PATCH", "/health", 405, "GET, HEAD"),
    ("TRACE", "/stats", 405, "GET, HEAD"),
    ("FROB", "/stats", 405, "GET, HEAD"),  # a method evhttp does not know
    ("GET", "/servers/{o1}/drain", 405, "POST"),
    ("DELETE", "/servers/{o1}/ready", 405, "POST"),
    ("GET", "/purge?url=http://test/x", 405, "POST"),
    ("DELETE", "/purge?url=http://test/x", 405, "POST"),
    ("GET", "/nope", 404, None),
    ("HEAD", "/nope", 404, None),
    ("POST", "/nope", 404, None),
    ("DELETE", "/nope", 404, None),
    ("POST", "/servers/{o1}/reboot", 404, None),
    ("POST", "/stats/extra", 404, None),
]


@pytest.mark.parametrize("method,path,status,allow", ADMIN_MISSES,
                         ids=[f"{m} {p}" for m, p, _, _ in ADMIN_MISSES])
def test_admin_errors_are_plain_text_and_not_stored(origins, clonegate, method, path, status,
                                                    allow):
    o1, _ = origins(2)
    # the cache on (no Redis), so that /purge exists
    cg = start(clonegate, **{"cache.enabled": "yes"})
    r = cg.admin(path.format(o1=o1.addr), method)
    check_admin_error(r, status, allow, head=method == "HEAD")
    # nothing was drained or purged by a refused request
    assert by_addr(cg.stats())[o1.addr]["draining"] is False
    assert cg.stats()["cache"]["purge"]["requests"] == 0


def test_admin_purge_with_the_cache_off_is_a_plain_404(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    for method in ("POST", "DELETE"):
        check_admin_error(cg.admin("/purge?url=http://test/x", method), 404)


def test_admin_403_is_plain_text_and_not_stored(origins, clonegate):
    o1, _ = origins(2)
    cg = start(clonegate, **{"stats.allow": "10.0.0.0/8"})
    for method, path in (("GET", "/stats"), ("DELETE", "/stats"), ("GET", "/nope"),
                         ("POST", f"/servers/{o1.addr}/drain")):
        # refused before anything else: not even a 404 or 405 says what exists
        check_admin_error(cg.admin(path, method), 403)


@pytest.mark.parametrize("content", [None, "", "\n"], ids=["missing", "empty", "blank-line"])
def test_issue_7_unusable_auth_file_stops_the_start(origins, clonegate, tmp_path, content):
    origins(2)
    tok = tmp_path / "stats.token"
    if content is not None:
        tok.write_text(content)
    cg = clonegate(dict(BASE, **{"stats.auth": str(tok)}), wait=False)
    cg.expected_exit = None  # any failure status; asserted below
    cg.allowed_errors.append(r"stats\.auth|token")
    code = cg.proc.wait(helpers.READY_TIMEOUT)
    # fails closed: no admin listener open to anyone, and the reason logged
    assert code is not None and code != 0, cg.stderr_text()
    assert not helpers.port_open(cg.stats_port)
    assert str(tok) in cg.stderr_text(), cg.stderr_text()


# ---------------------------------------------------------------------------
# 5. The cache's figures (issue 7's "cache (hits, misses, stale, stores,
#    bytes, redis state)"), with the cache on and a real redis-server

# Fresh for a minute: stored on the first request, a hit after.
CACHEABLE = "/cacheable?hdr=Cache-Control:max-age%3D60"
REDIS_ERRORS = r"(?i)redis"


def start_cached(clonegate, redis, **overrides):
    ini = dict(BASE, **{"cache.enabled": "yes"})
    ini.update(overrides)
    cg = clonegate(ini, redis=redis)
    cg.allowed_errors.append(REDIS_ERRORS)
    return cg


def redis_up(cg):
    return settled(cg, lambda s: s["cache"]["redis"]["state"] == "up", "redis state up")


def cache_status(r):
    return r.header("Cache-Status", "")


def test_issue_7_cache_figures_move_with_a_miss_then_hits(origins, clonegate, redis):
    (o,) = origins(1)
    cg = start_cached(clonegate, redis)
    before = redis_up(cg)
    check_schema(before)
    c0 = before["cache"]
    assert c0["enabled"] is True, c0
    r0 = c0["redis"]
    assert r0["configured"] is True and r0["address"] == redis.addr, r0
    assert r0["link_states"] == ["up"] and r0["links_up"] == 1, r0
    assert r0["connects"] >= 1 and r0["reconnects"] == 0, r0
    assert c0["l1"]["capacity"] > 0 and c0["l1"]["entries"] == 0, c0["l1"]

    first = cg.get(CACHEABLE)
    assert first.status == 200 and "fwd=" in cache_status(first), first
    assert "stored" in cache_status(first), first
    hits = 4
    for i in range(hits):
        r = cg.get(CACHEABLE)
        assert r.status == 200 and r.body == first.body, (i, r)
        assert "hit" in cache_status(r) and "fwd=" not in cache_status(r), (i, r)
    assert o.count("/cacheable") == 1, o.counts()
    s = settled(cg, lambda s: s["requests"]["total"] - before["requests"]["total"] >= hits + 1
                and s["connections"]["open"] == 0, f"{hits + 1} requests booked")
    check_schema(s)
    c = s["cache"]
    print(f"\n[issue 7] cache after 1 miss + {hits} hits: {json.dumps(c)}")
    d = {k: c["requests_by_cache_status"][k] - c0["requests_by_cache_status"][k]
         for k in CACHE_STATUSES}
    assert d["hit"] == hits, d
    assert sum(d.values()) == hits + 1, d
    assert d["uri-miss"] + d["miss"] == 1, d
    assert s["requests"]["by_cache_status"]["hit"] - before["requests"]["by_cache_status"]["hit"] \
        == hits
    assert c["hits"] - c0["hits"] == hits, c
    assert c["misses"] - c0["misses"] == 1, c
    assert c["stores"] - c0["stores"] == 1, c
    assert c["store_bytes"] - c0["store_bytes"] == len(first.body), c
    assert c["l1"]["entries"] >= 1 and c["l1"]["bytes"] >= len(first.body), c["l1"]
    assert c["l1"]["bytes"] <= c["l1"]["capacity"], c["l1"]
    assert c["hit_ratio"] > 0, c
    assert c["waiting"] == 0, c
    assert c["redis"]["state"] == "up", c["redis"]
    # the miss asked Redis first, and the store went there too
    assert c["redis"]["gets"] - r0["gets"] >= 1, c["redis"]
    assert c["redis"]["not_found"] - r0["not_found"] >= 1, c["redis"]
    settled(cg, lambda s: s["cache"]["redis"]["sets"] - r0["sets"] >= 1, "a Redis SET sent")
    keys = redis.command("KEYS", "cg:*")
    assert keys, keys


def test_issue_7_redis_hits_count_as_l2_hits_with_a_round_trip(origins, clonegate, redis):
    origins(1)
    # no L1: every hit comes from Redis
    cg = start_cached(clonegate, redis, **{"cache.memory": 0})
    before = redis_up(cg)
    assert before["cache"]["l1"]["capacity"] == 0, before["cache"]["l1"]
    assert "fwd=" in cache_status(cg.get(CACHEABLE))
    settled(cg, lambda s: s["cache"]["redis"]["sets"] > before["cache"]["redis"]["sets"],
            "the entry written to Redis")
    hits = 3
    for i in range(hits):
        r = cg.get(CACHEABLE)
        assert r.status == 200 and "hit" in cache_status(r) and "fwd=" not in cache_status(r), \
            (i, r)
    s = requests_settled(cg, before, hits + 1)
    c, c0 = s["cache"], before["cache"]
    assert c["l2_hits"] - c0["l2_hits"] == hits, c
    assert c["hits"] - c0["hits"] == hits, c
    assert c["l1"]["entries"] == 0, c["l1"]
    r, r0 = c["redis"], c0["redis"]
    assert r["found"] - r0["found"] == hits, r
    assert r["rtt_ms"] > 0, r


def test_issue_7_metrics_carry_the_cache_series_and_pass_promtool(origins, clonegate, redis):
    tool = promtool()
    origins(1)
    cg = start_cached(clonegate, redis)
    before = redis_up(cg)
    for _ in range(3):
        assert cg.get(CACHEABLE).status == 200
    assert cg.get("/not-cached").status == 200
    settled(cg, lambda s: s["requests"]["total"] - before["requests"]["total"] >= 4
            and s["connections"]["open"] == 0 and s["cache"]["redis"]["sets"] >= 1,
            "4 requests booked and the entry sent to Redis")
    # one purge of each way in, so the purge series have something to show
    r = cg.request("PURGE", CACHEABLE)
    assert r.status == 200 and json.loads(r.body) == {"purged": 1}, r
    r = cg.admin("/purge?tag=nothing-tagged&soft=1", method="POST")
    assert r.status == 200 and json.loads(r.body) == {"purged": 0}, r
    settled(cg, lambda s: s["connections"]["open"] == 0, "the PURGE connection closed")
    s1 = cg.stats()
    r = cg.admin("/metrics")
    s2 = cg.stats()
    assert r.status == 200, r
    check = subprocess.run([tool, "check", "metrics"], input=r.body, capture_output=True,
                           timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.returncode, check.stdout.decode(), check.stderr.decode())
    assert s1["cache"]["requests_by_cache_status"] == s2["cache"]["requests_by_cache_status"]
    m = parse_metrics(r.text())
    c = s2["cache"]
    for k in CACHE_STATUSES:
        assert metric(m, "clonegate_cache_requests_total", cache_status=k) == \
            c["requests_by_cache_status"][k], k
    assert metric(m, "clonegate_cache_requests_total", cache_status="hit") == 2
    assert metric(m, "clonegate_cache_enabled") == 1
    for name, key in (("clonegate_cache_stores_total", "stores"),
                      ("clonegate_cache_stored_bytes_total", "store_bytes"),
                      ("clonegate_cache_l2_hits_total", "l2_hits"),
                      ("clonegate_cache_stale_served_total", "stale_served"),
                      ("clonegate_cache_revalidated_total", "revalidated"),
                      ("clonegate_cache_not_stored_total", "not_stored"),
                      ("clonegate_cache_stores_aborted_total", "stores_aborted"),
                      ("clonegate_cache_coalesced_waits_total", "coalesced_waits"),
                      ("clonegate_cache_lock_timeouts_total", "lock_timeouts"),
                      ("clonegate_cache_invalidations_total", "invalidations"),
                      ("clonegate_cache_background_refreshes_total", "background_refreshes"),
                      ("clonegate_cache_waiting_requests", "waiting")):
        assert metric(m, name) == c[key], (name, c)
    for name, key in (("clonegate_cache_l1_entries", "entries"),
                      ("clonegate_cache_l1_bytes", "bytes"),
                      ("clonegate_cache_l1_capacity_bytes", "capacity"),
                      ("clonegate_cache_l1_evictions_total", "evictions"),
                      ("clonegate_cache_l1_expired_total", "expired")):
        assert metric(m, name) == c["l1"][key], (name, c["l1"])
    assert c["stores"] >= 1 and c["l1"]["entries"] >= 1, c
    rd = c["redis"]
    assert metric(m, "clonegate_redis_configured") == 1
    assert metric(m, "clonegate_redis_links", state="up") == 1
    for st in ("down", "connecting", "slow"):
        assert metric(m, "clonegate_redis_links", state=st) == 0, st
    for res in ("found", "not_found", "failed"):
        assert metric(m, "clonegate_redis_gets_total", result=res) == rd[res], res
    for name, key in (("clonegate_redis_get_timeouts_total", "timeouts"),
                      ("clonegate_redis_gets_skipped_total", "skipped"),
                      ("clonegate_redis_sets_total", "sets"),
                      ("clonegate_redis_sets_skipped_total", "sets_skipped"),
                      ("clonegate_redis_sets_too_large_total", "sets_too_large"),
                      ("clonegate_redis_purges_total", "purges"),
                      ("clonegate_redis_published_total", "published"),
                      ("clonegate_redis_messages_total", "messages"),
                      ("clonegate_redis_errors_total", "errors"),
                      ("clonegate_redis_connects_total", "connects"),
                      ("clonegate_redis_reconnects_total", "reconnects"),
                      ("clonegate_redis_disconnects_total", "disconnects")):
        assert metric(m, name) == rd[key], (name, rd)
    assert not any(name == "clonegate_redis_dels_total" for name, _ in m), "dels is gone"
    # stores are announced to the other instances
    assert rd["published"] >= 1, rd
    p = c["purge"]
    assert (p["requests"], p["url"], p["tag"], p["prefix"], p["soft"], p["entries"]) == \
        (2, 1, 1, 0, 1, 1), p
    for kind in ("url", "prefix", "tag"):
        assert metric(m, "clonegate_cache_purge_requests_total", kind=kind) == p[kind], kind
    for name, key in (("clonegate_cache_purge_soft_total", "soft"),
                      ("clonegate_cache_purge_entries_total", "entries"),
                      ("clonegate_cache_purge_refused_total", "refused"),
                      ("clonegate_cache_purge_messages_received_total", "messages_received"),
                      ("clonegate_cache_purge_l1_drops_total", "l1_drops"),
                      ("clonegate_cache_purge_queued", "queued"),
                      ("clonegate_cache_purge_replayed_total", "replayed"),
                      ("clonegate_cache_purge_overflows_total", "overflows")):
        assert metric(m, name) == p[key], (name, p)
    n = metric(m, "clonegate_redis_get_duration_seconds_count")
    assert n >= 1, n
    mean_ms = metric(m, "clonegate_redis_get_duration_seconds_sum") / n * 1000
    assert abs(mean_ms - rd["rtt_ms"]) < 0.01, (mean_ms, rd)


def test_issue_7_metrics_with_the_cache_off_still_pass_promtool(origins, clonegate):
    tool = promtool()
    origins(1)
    cg = start(clonegate)
    r = cg.admin("/metrics")
    check = subprocess.run([tool, "check", "metrics"], input=r.body, capture_output=True,
                           timeout=30)
    assert check.returncode == 0, (check.stdout.decode(), check.stderr.decode())
    m = parse_metrics(r.text())
    assert metric(m, "clonegate_cache_enabled") == 0
    assert metric(m, "clonegate_redis_configured") == 0
    assert metric(m, "clonegate_cache_l1_capacity_bytes") == 0


@pytest.mark.hard_timeout(60)
def test_issue_7_redis_killed_shows_down_and_requests_still_answered(origins, clonegate,
                                                                     redis):
    (o,) = origins(1)
    cg = start_cached(clonegate, redis, **{"server.workers": 2})
    up = settled(cg, lambda s: s["cache"]["redis"]["link_states"] == ["up", "up"],
                 "both workers' Redis links up")
    assert up["cache"]["redis"]["links_up"] == 2, up["cache"]["redis"]
    assert cg.get(CACHEABLE).status == 200

    redis.kill9()  # by PID
    down = settled(cg, lambda s: s["cache"]["redis"]["state"] == "down", "redis state down",
                   timeout=10)
    rd = down["cache"]["redis"]
    assert rd["links_up"] < 2 and rd["disconnects"] >= 1, rd
    # the proxy keeps answering: from L1, and from the clone for the rest
    n = 6
    for i in range(n):
        r = cg.get(CACHEABLE)
        assert r.status == 200, (i, r)
        r = cg.get(f"/uncached?i={i}")
        assert r.status == 200 and r.header("X-Origin") == o.name, (i, r)
    s = settled(cg, lambda s: s["requests"]["total"] - down["requests"]["total"] >= 2 * n
                and s["connections"]["open"] == 0, f"{2 * n} requests booked")
    check_schema(s)
    assert s["requests"]["by_class"]["2xx"] - down["requests"]["by_class"]["2xx"] == 2 * n
    assert s["cache"]["redis"]["state"] in ("down", "connecting"), s["cache"]["redis"]
    m = parse_metrics(cg.admin("/metrics").text())
    assert metric(m, "clonegate_redis_links", state="up") < 2

    # back on the same port: the links come back by themselves
    redis.restart()
    back = settled(cg, lambda s: s["cache"]["redis"]["state"] == "up", "redis state up again",
                   timeout=15)
    assert back["cache"]["redis"]["reconnects"] >= 1, back["cache"]["redis"]


# before the page has loaded, an absent card reads as null
CARDS_JS = ("JSON.stringify(['hit','l1n','l1b','stores','purges','redis','err'].map(i=>"
            "{const e=document.getElementById(i);return [i,e&&e.textContent,e&&e.className];}))")


@pytest.mark.hard_timeout(90)
def test_issue_7_dashboard_in_chromium_shows_the_cache(origins, clonegate, redis, tmp_path):
    chromium()
    origins(1)
    cg = start_cached(clonegate, redis)
    redis_up(cg)
    for _ in range(4):  # 1 miss, 3 hits: 75 %
        assert cg.get(CACHEABLE).status == 200
    s = settled(cg, lambda s: s["cache"]["hits"] == 3 and s["connections"]["open"] == 0,
                "3 hits booked")
    url = f"http://{cg.stats_host}:{cg.stats_port}/"
    with browser_check.Browser(url, tmp_path / "browser") as live:
        box = {}

        def shown():
            box["cards"] = {i: (t, c) for i, t, c in json.loads(live.evaluate(CARDS_JS))}
            return box["cards"]["hit"][0] not in (None, "n/a") \
                and box["cards"]["redis"][0] not in (None, "-")

        helpers.wait_for(shown, timeout=8, interval=0.1, what="the cache cards filled")
        cards = box["cards"]
    assert cards["hit"][0] == "75.0%", cards
    assert cards["l1n"][0] == str(s["cache"]["l1"]["entries"]) != "0", cards
    assert cards["l1b"][0].endswith("/ 64"), cards
    assert cards["stores"][0] == "1 / 0", cards
    assert cards["purges"][0] == "0 / 0", cards
    assert cards["redis"] == ("up", "v up"), cards
    assert cards["err"][0] == "", cards
