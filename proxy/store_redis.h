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
 * A link that owes replies but hears nothing from Redis (no reply, none of
 * its pending output taken) for STORE_REDIS_STALL_TIMEOUTS get timeouts (at
 * least STORE_REDIS_STALL_MIN_MS) is dropped and made again, as for a Redis
 * stopped or cut off without a reset. Memory is bounded while Redis does
 * not answer: writes owed a reply hold at most STORE_REDIS_QUEUE_VALUES
 * largest values, and a value over the server's proto-max-bulk-len (asked
 * on every link) is never sent, as Redis would drop the link for it.
 * Decides nothing about caching: keys and values are opaque bytes, except
 * that purges read the fixed header of cache_entry.h values (magic, kind,
 * freshness_ms, key text) to soften entries and match key prefixes, and
 * store_redis_set_longest() grows a value's freshness_ms with its TTL.
 * Index keys (a URL's variants, a tag's entries) are sorted sets scored by
 * each member's expiry, epoch ms, trimmed on every write and expiring with
 * their last member. A store may instead be made a subscriber link for
 * cross-instance invalidations (store_redis_subscribe()).
 * One worker thread only (its counters are read by the admin thread with
 * relaxed loads).
 */
#ifndef CLONEGATE_STORE_REDIS_H
#define CLONEGATE_STORE_REDIS_H

#include <stdbool.h>
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
#define STORE_REDIS_SCAN_COUNT         500   /* keys a prefix purge looks at per round trip */
#define STORE_REDIS_STALL_TIMEOUTS     4     /* timeouts of silence before the link is dropped, */
#define STORE_REDIS_STALL_MIN_MS       2000  /* ... but never less than this (ms) */
#define STORE_REDIS_QUEUE_VALUES       2     /* bytes of writes owed a reply: this many values */
#define STORE_REDIS_BULK_DEFAULT       (512u * 1024 * 1024) /* proto-max-bulk-len, Redis's default */
#define STORE_REDIS_BULK_MIN           (1024u * 1024)       /* the least any Redis takes */

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
    uint64_t sets, dels, errors;     /* writes sent; dels: always 0 (purges replaced them);
                                        error replies to anything */
    uint64_t sets_skipped;           /* writes refused: down, slow, too many bytes owed */
    uint64_t sets_too_large;         /* writes refused: value over proto-max-bulk-len */
    uint64_t purges;                 /* store_redis_purge_* sent (batches not counted) */
    uint64_t published, messages;    /* invalidations published; received by a subscriber */
    uint64_t connects, disconnects;  /* links made and lost (silent ones dropped included) */
    uint64_t rtt_us_sum, rtt_count;  /* round trips of answered gets */
    uint64_t state;                  /* enum store_redis_state, as a gauge */
};

/* Called once per get (not after cancel). <data> is valid during the call only. */
typedef void (*store_redis_get_fn)(void *arg, enum store_redis_result r, const char *data,
                                   size_t len);

/* Called once per write given one: <stored> when Redis answered that it
 * stored the value; false when it erred, did not answer within the timeout
 * (a late answer is then dropped), the link dropped or the store was freed. */
typedef void (*store_redis_set_fn)(void *arg, bool stored);

/* Called once per purge with the number of entries it affected,
 * -1 when it failed (error reply, link lost, store freed). */
typedef void (*store_redis_count_fn)(void *arg, long long count);

/* A message from the subscribed channel; <msg> is valid during the call only. */
typedef void (*store_redis_message_fn)(void *arg, const char *msg, size_t len);

/* The subscription is live (<up>) or lost: messages may have been missed. */
typedef void (*store_redis_link_fn)(void *arg, bool up);

/* The link of a store (not a subscriber) is connected again. */
typedef void (*store_redis_up_fn)(void *arg);

/*
 * Starts a store on <base> for <addr> ("host:port" or "unix:/path"), with
 * <timeout_ms> the longest a get may wait and <max_value> the largest value
 * the caller means to store, in bytes (writes owed a reply may hold
 * STORE_REDIS_QUEUE_VALUES times it). Connecting starts at once, in the
 * background. Returns NULL when out of memory. Owning worker thread.
 */
struct store_redis *store_redis_new(struct event_base *base, const char *addr, unsigned timeout_ms,
                                    size_t max_value) __attribute__((warn_unused_result));

/* A new <max_value> for <s> (a reload changed it), for the writes that follow. */
void store_redis_max_value(struct store_redis *s, size_t max_value);

/* Closes the link; pending gets are answered FAILED first. NULL ignored. */
void store_redis_free(struct store_redis *s);

/* GET <key>. Returns a handle for store_redis_cancel(), or NULL when Redis
 * is not usable now (then <cb> is never called: treat as a miss). */
struct store_redis_op *store_redis_get(struct store_redis *s, const char *key, size_t key_len,
                                       store_redis_get_fn cb, void *arg);

/* The caller no longer wants the answer: <op>'s callback will not run. */
void store_redis_cancel(struct store_redis_op *op);

/*
 * Stores <value> at <key> for <ttl_ms>, and adds <key> to each of the
 * <index_count> sorted sets <index_keys>[i] (lengths <index_lens>[i]; both
 * may be NULL when the count is 0) scored by its expiry (epoch ms, Redis's
 * clock), drops members already expired, and extends each set's expiry to
 * at least the entry's. Without indexes a plain SET PX, else one command (a
 * script, loaded on every link). 0 when sent, -1 when nothing was sent:
 * <ttl_ms> is 0, Redis is not usable (down, slow), memory ran out, the
 * writes owed a reply would pass STORE_REDIS_QUEUE_VALUES times max_value
 * bytes, or <value_len> is over the server's proto-max-bulk-len (counted in
 * sets_skipped or sets_too_large). Everything is copied.
 * <cb> NULL: fire and forget. Else <cb> is called exactly once when 0 is
 * returned, never from within this call, at the latest at the get timeout,
 * with the outcome: once it said stored, a get sent on any link finds the
 * value. Its timeouts do not count towards marking Redis slow.
 */
int store_redis_set(struct store_redis *s, const char *key, size_t key_len, const void *value,
                    size_t value_len, uint64_t ttl_ms, const char *const *index_keys,
                    const size_t *index_lens, unsigned index_count, store_redis_set_fn cb,
                    void *arg);

/*
 * As store_redis_set() without indexes or callback, for a cache_entry.h
 * value whose freshness_ms is its whole lifetime (a URL's Vary record),
 * with the script: <key>'s expiry never moves earlier. When the key already
 * outlives <ttl_ms>, <value> replaces it but takes its expiry, and its
 * freshness_ms grows by the difference, so that it still states how long
 * it lives. 0 when sent, -1 when not (as store_redis_set()).
 */
int store_redis_set_longest(struct store_redis *s, const char *key, size_t key_len,
                            const void *value, size_t value_len, uint64_t ttl_ms);

/* Purges, all sent even while Redis is slow. <soft> keeps each entry but
 * makes it stale: the freshness_ms of a response entry (cache_entry.h kind
 * 1, right magic) is set to 0 in place, its TTL kept; other values are left
 * alone. Hard deletes. <cb> (may be NULL) is called exactly once when 0 is
 * returned: with the count of entries deleted (hard: responses and Vary
 * records alike, never the index key itself) or made stale (soft: response
 * entries only), or -1 on failure (error, link lost, store freed). -1 when
 * Redis is not usable (nothing sent, <cb> never called). */

/* The entry at <key> and every member of the index <index_key> (may be
 * NULL), then, when hard, the index itself. One atomic script. */
int store_redis_purge_key(struct store_redis *s, const char *key, size_t key_len,
                          const char *index_key, size_t index_len, bool soft,
                          store_redis_count_fn cb, void *arg);

/* Every member of the index <index_key> (a tag's), then, when hard, the
 * index itself. One atomic script. */
int store_redis_purge_index(struct store_redis *s, const char *index_key, size_t index_len,
                            bool soft, store_redis_count_fn cb, void *arg);

/* Every entry whose key text (cache_entry.h) starts with <prefix>, or, for a prefix starting
 * with "/", whose path (from the first "/" after "://") does (<prefix_len>
 * 0: all entries). Walks the keyspace in batches of STORE_REDIS_SCAN_COUNT
 * keys, one short script per round trip, so Redis is never blocked long; not
 * atomic: entries written during the walk may be missed. <prefix> is copied. */
int store_redis_purge_prefix(struct store_redis *s, const char *prefix, size_t prefix_len,
                             bool soft, store_redis_count_fn cb, void *arg);

/* PUBLISH <channel> <msg>: fire and forget, 0 when sent, -1 when Redis is not
 * usable or the writes owed a reply already pass STORE_REDIS_QUEUE_VALUES
 * times max_value bytes (nothing sent). Sent even while Redis is slow. Not on
 * a subscriber. */
int store_redis_publish(struct store_redis *s, const char *channel, const void *msg, size_t len);

/*
 * Makes <s> a subscriber link: SUBSCRIBE <channel> now (or once connected)
 * and after every reconnect. <on_link>(<arg>, true) once each subscription is
 * confirmed, (<arg>, false) when a confirmed one is lost (not when the store
 * is freed): calls alternate, starting with true; until then messages may be
 * missed. <on_message> gets every message. Both must not be NULL. Afterwards
 * every other command on <s> is refused (a store made for this only). 0, or
 * -1 when already subscribed or out of memory. <channel> is copied.
 */
int store_redis_subscribe(struct store_redis *s, const char *channel,
                          store_redis_message_fn on_message, store_redis_link_fn on_link,
                          void *arg);

/*
 * <on_up>(<arg>) is called each time the link of <s> (not a subscriber) is
 * connected, before any command but the script load is sent on it; NULL
 * stops the calls. It may send commands on <s>. Owning thread.
 */
void store_redis_set_on_up(struct store_redis *s, store_redis_up_fn on_up, void *arg);

enum store_redis_state store_redis_state(const struct store_redis *s);

/* The store's counters (live; read with relaxed loads from other threads). */
const struct store_redis_stats *store_redis_stats(const struct store_redis *s);

#endif /* CLONEGATE_STORE_REDIS_H */
