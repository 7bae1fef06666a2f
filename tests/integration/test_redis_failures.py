"""A Redis that fails without closing the link: README "When Redis is down
or slow".

A Redis that is connected but answers nothing (stopped with SIGSTOP, as a
network partition without a reset looks) must not make clonegate pile writes
up in memory, and its link must be dropped and made again.

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
