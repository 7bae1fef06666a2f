/*
 * cache: the in-process (L1) store and the coalescing of misses.
 *
 * One struct cache per process (owned by main, shared by every worker):
 * CACHE_SHARDS shards, each a mutex, a hash table and an LRU list within
 * its share of cache.memory. Entries are cache_entry objects, shared by
 * reference: a lookup returns a reference, so an entry evicted or replaced
 * while a response is being sent from it stays alive until that is done.
 * A URL's variants (Vary) hash with their URL, so removing a URL removes
 * them too without a scan.
 *
 * Coalescing: the first request to miss a key becomes its filler; later
 * ones for the same key wait (struct cache_waiter, embedded in the
 * waiting connection) until the filler stores or gives up, or until their
 * own lock timeout. Waiters may live on any worker: the filler moves them
 * to their worker's mailbox and signals that worker (its eventfd), never
 * holding a lock across I/O. One mutex guards every fill and mailbox; it
 * is taken only on misses.
 *
 * The RFC 9111 rules live in cache_policy, the entry encoding in
 * cache_entry, Redis in store_redis. Any thread unless said otherwise.
 */
#ifndef CLONEGATE_CACHE_H
#define CLONEGATE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

struct cache_entry;

#define CACHE_SHARDS        16    /* L1 shards (a power of two) */
#define CACHE_REDIS_PREFIX  "cg:" /* Redis keys: prefix + SHA-256 hex */
#define CACHE_REDIS_KEY_LEN (sizeof(CACHE_REDIS_PREFIX) - 1 + 64 + 3)

struct cache;
struct cache_fill;
struct cache_mailbox;

/* Called in the waiter's worker thread when its fill ended: <filled> when
 * the filler stored an entry, in L1 or in Redis (look again), false when it
 * did not (forward on your own). */
typedef void (*cache_wake_fn)(void *arg, bool filled);

/* A request waiting on another's fill; embedded in the waiting connection. */
struct cache_waiter {
    TAILQ_ENTRY(cache_waiter) link; /* in a fill's waiters, or in a mailbox */
    struct cache_mailbox *box;      /* borrowed: the waiter's worker's mailbox */
    struct cache_fill *fill;        /* the fill waited on; NULL once woken */
    uint8_t where;                  /* 0 nowhere, 1 in a fill, 2 in the mailbox */
    bool filled;                    /* the result passed to <wake> */
    cache_wake_fn wake;             /* called once, in the waiter's worker */
    void *arg;
};

/* L1 figures (read with relaxed loads). */
struct cache_l1_stats {
    uint64_t entries;   /* gauge */
    uint64_t bytes;     /* gauge: charged memory */
    uint64_t evictions; /* LRU evictions to stay within budget */
    uint64_t expired;   /* entries dropped past their Redis-equivalent TTL */
    uint64_t capacity;  /* the budget, bytes */
};

/* Creates the L1 store with a budget of <memory> bytes (0: no L1, every
 * put is refused but for the markers of URLs found not storable, kept in
 * 64 KiB a shard). NULL when out of memory. Main thread. */
struct cache *cache_new(size_t memory) __attribute__((warn_unused_result));

/* Frees the store and every entry it references. Main thread, after every
 * worker stopped. NULL ignored. */
void cache_free(struct cache *c);

/* A 64-bit hash of key text (the L1's, exposed for the URL of a variant). */
uint64_t cache_hash(const char *key, size_t len);

/*
 * Looks up the entry stored under exactly <key>, in the bucket of <url_hash>
 * (cache_hash of the entry's URL key; for a plain entry, of <key> itself).
 * Returns a new reference, or NULL. An entry past <now_ms> expiry is
 * dropped and not returned.
 */
struct cache_entry *cache_get(struct cache *c, uint64_t url_hash, const char *key, size_t len,
                              int64_t now_ms);

/*
 * Stores <e> (takes a reference of its own) under its key text in the
 * bucket of <url_hash>, replacing an entry with the same key, until
 * <expires_ms>. Evicts least-recently-used entries of the shard to stay
 * within budget. Returns false when <e> is too large for L1 (it is not
 * stored).
 */
bool cache_put(struct cache *c, uint64_t url_hash, struct cache_entry *e, int64_t expires_ms);

/* As cache_put(), except that an entry of the same kind it replaces which
 * expires after <expires_ms> hands its expiry on: the key's expiry never
 * moves earlier (a URL's Vary record, which lives as long as its
 * longest-lived variant). */
bool cache_put_longer(struct cache *c, uint64_t url_hash, struct cache_entry *e,
                      int64_t expires_ms);

/* What a purge selects. */
enum cache_purge_kind {
    CACHE_PURGE_URL = 0,    /* one URL key and its variants */
    CACHE_PURGE_PREFIX = 1, /* URL keys starting with the argument: a URL prefix
                               ("http://host/a/"), or a path prefix ("/a/") on any host */
    CACHE_PURGE_TAG = 2,    /* every entry whose tags include the argument */
    CACHE_PURGE_ALL = 3,    /* everything */
};

/*
 * Purges the L1 entries <kind> and <arg>[0..<len>) select. Hard: they are
 * removed. Soft: stored responses are replaced by copies whose freshness
 * is zero (stale: stale-while-revalidate may still serve them while one
 * request refreshes). Returns the number of stored responses affected
 * (markers and Vary records are dropped but not counted). URL purges look
 * at one bucket; the others walk every shard.
 */
unsigned cache_purge(struct cache *c, enum cache_purge_kind kind, const char *arg, size_t len,
                     bool soft);

/* How many purges this L1 has seen that could touch the URL hashed
 * <url_hash> (URL purges are counted by hash slot, the others for all): a
 * Redis read begun under an older count may bring back what a purge
 * removed, and is not kept. */
uint64_t cache_purge_generation(const struct cache *c, uint64_t url_hash);

/*
 * Background refreshes (stale-while-revalidate), one per key at a time,
 * whether or not L1 holds the entry. Whether a refresh of the key hashed
 * <hash> may start at <now_ms>: true, and the key claimed until <until_ms>,
 * unless a claim on it still holds. cache_refresh_done() ends a claim (the
 * refresh stored its answer, or could not start). Keys are remembered in a
 * fixed table by hash: two keys sharing a slot may each get an extra
 * refresh, never none. Any thread.
 */
bool cache_refresh_claim(struct cache *c, uint64_t hash, int64_t now_ms, int64_t until_ms);
void cache_refresh_done(struct cache *c, uint64_t hash);

/* The largest entry L1 takes (half a shard's share of cache.memory). */
size_t cache_l1_max_entry(const struct cache *c);

/* Snapshot of the L1 figures. */
void cache_l1_stats(const struct cache *c, struct cache_l1_stats *out);

/* The Redis key of <key>: CACHE_REDIS_PREFIX + lowercase hex SHA-256, into
 * <out> (CACHE_REDIS_KEY_LEN bytes at least, NUL-terminated). <kind> is
 * "" for entries, "vs:" for a URL's variant set. Returns the length. */
size_t cache_redis_key(const char *kind, const char *key, size_t len, char *out);

/* ------------------------------------------------------------ coalescing */

/* Wakes a mailbox's worker (any thread; called with the coalescing lock held,
 * so it must only signal, say write an eventfd). Called when a waiter lands
 * in an empty mailbox: one signal covers every waiter that follows it
 * before the delivery. */
typedef void (*cache_notify_fn)(void *arg);

/* A worker's mailbox: woken waiters of that worker, delivered on its loop
 * by cache_mailbox_deliver() once <notify> woke it. Created and freed by
 * the worker. NULL when out of memory. */
struct cache_mailbox *cache_mailbox_new(struct cache *c, cache_notify_fn notify, void *arg);
void cache_mailbox_free(struct cache_mailbox *box);

/* Runs the wake callback of every waiter delivered to <box>. Its worker's
 * thread. */
void cache_mailbox_deliver(struct cache_mailbox *box);

enum cache_fill_role {
    CACHE_FILL_LEADER = 0,  /* no fill was under way: the caller fills, then calls cache_fill_end */
    CACHE_FILL_WAITING = 1, /* another request fills: <w> waits (see cache_waiter) */
    CACHE_FILL_FAILED = 2,  /* out of memory: forward without coalescing */
};

/*
 * Joins the fill of <key>, hashed <h>. As leader, *<fill> is the fill to
 * end; waiting, <w> (with box, wake and arg set) is queued and the
 * caller must cache_waiter_cancel() it if it gives up first.
 */
enum cache_fill_role cache_fill_join(struct cache *c, uint64_t h, const char *key, size_t len,
                                     struct cache_waiter *w, struct cache_fill **fill);

/* The leader is done: <stored> says whether an entry is now in L1, or in
 * Redis (Redis said so). Every waiter is woken (in its own worker). Frees
 * <fill>. Any thread. */
void cache_fill_end(struct cache *c, struct cache_fill *fill, bool stored);

/* Takes <w> out of whatever it waits in (its wake will not run). Safe
 * when not waiting. Waiter's worker thread. */
void cache_waiter_cancel(struct cache *c, struct cache_waiter *w);

/* Waiters currently queued, all keys (a gauge for /stats). */
uint64_t cache_waiting(const struct cache *c);

#endif /* CLONEGATE_CACHE_H */
