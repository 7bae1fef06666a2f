/*
 * store_redis: the shared (L2) cache store in Redis, one hiredis async
 * connection per worker, attached to that worker's event_base with the
 * libevent adapter. Never a blocking call.
 *
 * Owns its connection, its reconnect timer and every operation in flight.
 * Each get is answered exactly once: with the value, "not found", or
 * "failed" when Redis errs, the link drops, or no reply came within the
 * timeout (the late reply is then dropped); or not at all once cancelled.
 * While Redis is down, slow (several timeouts in a row) or reconnecting,
 * gets return NULL at once, so a request never waits on a Redis that is
 * not answering. Reconnects with back-off (100 ms doubling to 5 s).
 * Decides nothing about caching: keys and values are opaque bytes.
 * One worker thread only (its counters are read by the admin thread with
 * relaxed loads).
 */
#ifndef CLONEGATE_STORE_REDIS_H
#define CLONEGATE_STORE_REDIS_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct store_redis;
struct store_redis_op;

#define STORE_REDIS_BACKOFF_MIN_MS     100
#define STORE_REDIS_BACKOFF_MAX_MS     5000
#define STORE_REDIS_CONNECT_TIMEOUT_MS 1000
#define STORE_REDIS_SLOW_AFTER         3     /* timeouts in a row before Redis counts as slow ... */
#define STORE_REDIS_SLOW_PAUSE_MS      1000  /* ... and gets are skipped for this long */
#define STORE_REDIS_MAX_PENDING        10000 /* operations in flight; more fail at once */

enum store_redis_state {
    STORE_REDIS_DOWN = 0,       /* not connected; a reconnect is scheduled */
    STORE_REDIS_CONNECTING = 1, /* connect in progress */
    STORE_REDIS_UP = 2,         /* connected and answering */
    STORE_REDIS_SLOW = 3,       /* connected, but recent gets timed out: skipped for a while */
};

/* Short name of a state ("down", "connecting", "up", "slow"). */
const char *store_redis_state_name(enum store_redis_state s);

enum store_redis_result {
    STORE_REDIS_FOUND = 0,     /* value given */
    STORE_REDIS_NOT_FOUND = 1, /* no such key */
    STORE_REDIS_FAILED = 2,    /* error, timeout or link lost: treat as a miss */
};

/* Counters; the owning worker is the only writer (relaxed atomic stores). */
struct store_redis_stats {
    uint64_t gets, found, not_found; /* gets answered, by result */
    uint64_t failed;                 /* gets answered FAILED (errors, timeouts, drops) */
    uint64_t timeouts;               /* of those, no reply within the timeout */
    uint64_t skipped;                /* gets refused at once (down, slow, too many pending) */
    uint64_t sets, dels, errors;     /* writes sent; error replies to anything */
    uint64_t connects, disconnects;  /* links made and lost */
    uint64_t rtt_us_sum, rtt_count;  /* round trips of answered gets */
    uint64_t state;                  /* enum store_redis_state, as a gauge */
};

/* Called once per get (not after cancel). <data> is valid during the call only. */
typedef void (*store_redis_get_fn)(void *arg, enum store_redis_result r, const char *data,
                                   size_t len);

/* Called once per del with the number of keys removed (-1 on failure). */
typedef void (*store_redis_count_fn)(void *arg, long long count);

/*
 * Starts a store on <base> for <addr> ("host:port" or "unix:/path"), with
 * <timeout_ms> the longest a get may wait. Connecting starts at once, in
 * the background. Returns NULL when out of memory. Owning worker thread.
 */
struct store_redis *store_redis_new(struct event_base *base, const char *addr, unsigned timeout_ms)
    __attribute__((warn_unused_result));

/* Closes the link; pending gets are answered FAILED first. NULL ignored. */
void store_redis_free(struct store_redis *s);

/* GET <key>. Returns a handle for store_redis_cancel(), or NULL when Redis
 * is not usable now (then <cb> is never called: treat as a miss). */
struct store_redis_op *store_redis_get(struct store_redis *s, const char *key, size_t key_len,
                                       store_redis_get_fn cb, void *arg);

/* The caller no longer wants the answer: <op>'s callback will not run. */
void store_redis_cancel(struct store_redis_op *op);

/*
 * SET <key> <value> PX <ttl_ms>; when <set_key> is not NULL, also adds
 * <key> to the set <set_key> and extends that set's expiry to at least
 * <ttl_ms> (PEXPIRE NX, then GT). Fire and forget: 0 when sent, -1 when
 * Redis is not usable (nothing sent). The value is copied.
 */
int store_redis_set(struct store_redis *s, const char *key, size_t key_len, const void *value,
                    size_t value_len, uint64_t ttl_ms, const char *set_key, size_t set_key_len);

/*
 * Deletes <key> and, when <set_key> is not NULL, every key that set lists
 * and the set itself (one server-side script, so it is atomic). <cb> (may be
 * NULL) gets the number of keys removed, not counting the set. 0 when sent,
 * -1 when Redis is not usable (cb is not called).
 */
int store_redis_del(struct store_redis *s, const char *key, size_t key_len, const char *set_key,
                    size_t set_key_len, store_redis_count_fn cb, void *arg);

enum store_redis_state store_redis_state(const struct store_redis *s);

/* The store's counters (live; read with relaxed loads from other threads). */
const struct store_redis_stats *store_redis_stats(const struct store_redis *s);

#endif /* CLONEGATE_STORE_REDIS_H */
