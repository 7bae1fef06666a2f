"""A Redis that fails without closing the link, or that refuses what it is
sent: README "When Redis is down or slow".

A Redis that is connected but answers nothing (stopped with SIGSTOP, as a
network partition without a reset looks) must not make clonegate pile writes
up in memory, and its link must be dropped and made again; a value larger
than the server's proto-max-bulk-len must not be sent at all, since Redis
answers it by closing the link under every lookup in flight.

Each test starts one origin.py, one clonegate with one worker and its own
redis-server, and stops them by PID (conftest.py).
"""

import time

import pytest

import helpers
from test_cache import is_hit, redis_key, redis_keys, start, url

MIB = 1024 * 1024


def redis_stats(cg):
    return cg.stats()["cache"]["redis"]


def store_until_in_redis(cg, r, prefix, timeout=12):
    """Misses fresh small URLs until one lands in Redis <r>: the link is up
    and Redis has answered everything sent on it before (replies come in
    order). Returns that URL."""
    tried = []

    def stored():
        t = url(f"{prefix}-{len(tried)}", cc="max-age=60")
        tried.append(t)
        assert cg.get(t).status == 200
        return redis_key(t) in redis_keys(r)

    helpers.wait_for(stored, timeout=timeout, interval=0.2, what=f"{prefix}: a Redis write")
    return tried[-1]


@pytest.mark.hard_timeout(60)
def test_a_silent_redis_is_dropped_and_memory_stays_bounded(origins, clonegate, redis):
    # 6 MiB bodies, each over L1's largest entry (64m / 32): kept in Redis
    # only, so what stays in memory is what waits for Redis
    size = 6 * MIB
    cg, o = start(clonegate, origins, redis=redis, **{"cache.max_object_size": "8m"})
    store_until_in_redis(cg, redis, "silent-warm")
    assert cg.get(url("silent-warm-big", cc="max-age=60", size=str(size)), timeout=10).status == 200
    before = redis_stats(cg)
    rss0 = rss_max = cg.rss_kb()
    n = 0
    redis.proc.freeze()  # SIGSTOP: still connected, and silent
    try:
        # a fixed stretch of misses, each a 6 MiB write for Redis: unbounded,
        # two of them would join the queue each time Redis comes out of its
        # slow pause, about 10 MiB a second for as long as it is silent
        t0 = time.monotonic()
        while time.monotonic() - t0 < 12 and n < 400:  # bounded in time and count
            t = url(f"silent-{n}", cc="max-age=60", size=str(size))
            r = cg.get(t, timeout=10)
            assert r.status == 200 and len(r.body) == size, (t, r)
            n += 1
            rss_max = max(rss_max, cg.rss_kb())
        during = redis_stats(cg)
    finally:
        redis.proc.thaw()

    growth = (rss_max - rss0) / 1024
    # at most twice max_object_size (16 MiB) of writes wait for a reply
    assert growth < 32, f"RSS grew {growth:.0f} MiB over {n} misses with Redis silent: {during}"
    assert during["disconnects"] > before["disconnects"], f"the silent link stayed: {during}"
    assert during["reconnects"] > before["reconnects"], during
    assert during.get("sets_skipped", 0) > before.get("sets_skipped", 0), during

    # Redis answers again: entries are stored there and served from it
    t = store_until_in_redis(cg, redis, "silent-after", timeout=15)
    helpers.wait_for(lambda: is_hit(cg.get(t)), timeout=5, what="a hit after Redis came back")
    assert redis_stats(cg)["state"] == "up"


@pytest.mark.hard_timeout(60)
def test_a_value_over_redis_bulk_limit_is_not_sent_and_the_link_stays(
        origins, clonegate, tmp_path, world):
    r = world.add(helpers.start_redis(tmp_path / "r", args=("--proto-max-bulk-len", "1mb")))
    # no L1: every hit comes from Redis; a lookup of a large entry may take
    # a while on a busy machine
    cg, o = start(clonegate, origins, redis=r, **{"cache.max_object_size": "4m",
                                                  "cache.memory": "0", "cache.redis_timeout": "1s"})
    small = store_until_in_redis(cg, r, "bulk-warm")
    before = redis_stats(cg)
    big = [url(f"bulk-{i}", cc="max-age=60", size=str(1500 * 1000)) for i in range(3)]
    for t in big:
        x = cg.get(t)
        assert x.status == 200 and len(x.body) == 1500 * 1000, (t, x)
        # a lookup right behind the write: on a link Redis dropped it fails
        assert is_hit(cg.get(small)), "a Redis lookup failed after a large write"
    after = redis_stats(cg)
    assert after.get("sets_too_large", 0) - before.get("sets_too_large", 0) == 3, after
    assert after["disconnects"] == before["disconnects"], after
    assert after["failed"] == before["failed"], after
    assert after["state"] == "up", after
    assert not {redis_key(t) for t in big} & redis_keys(r)
    # entries that fit are still written, and served from Redis
    fits = url("bulk-fits", cc="max-age=60", size=str(900 * 1000))
    cg.get(fits)
    helpers.wait_for(lambda: redis_key(fits) in redis_keys(r), timeout=5, what="a write that fits")
    x = cg.get(fits)
    assert is_hit(x) and helpers.sha256(x.body) == helpers.pattern_sha256(900 * 1000), x


@pytest.mark.hard_timeout(60)
def test_a_redis_that_refuses_config_get_takes_values_up_to_its_default(
        origins, clonegate, tmp_path, world):
    r = world.add(helpers.start_redis(tmp_path / "r", args=("--rename-command", "CONFIG", "")))
    # no L1: every hit comes from Redis; a lookup of a large entry may take
    # a while on a busy machine
    cg, o = start(clonegate, origins, redis=r, **{"cache.max_object_size": "4m",
                                                  "cache.memory": "0", "cache.redis_timeout": "1s"})
    store_until_in_redis(cg, r, "noconfig-warm")
    t = url("noconfig-big", cc="max-age=60", size=str(3 * MIB))
    assert cg.get(t).status == 200
    helpers.wait_for(lambda: redis_key(t) in redis_keys(r), timeout=5, what="a 3 MiB write")
    x = cg.get(t)
    assert is_hit(x) and helpers.sha256(x.body) == helpers.pattern_sha256(3 * MIB), x
    st = redis_stats(cg)
    assert st.get("sets_too_large", 0) == 0 and st["disconnects"] == 0, st


def test_max_object_size_is_at_most_a_redis_bulk(tmp_path):
    base = "[upstream]\nservers = 127.0.0.1:9001\n[cache]\n"
    code, out = helpers.clonegate_check(base + "max_object_size = 1g\n", tmp_path)
    assert code == 1 and "[cache] max_object_size: '1g' out of range (1k..512m)" in out, out
    code, out = helpers.clonegate_check(base + "max_object_size = 512m\n", tmp_path)
    assert code == 0 and "configuration ok" in out, out
