/*
 * purge: invalidation that reaches every Clonegate instance.
 *
 * A purge (by URL, URL prefix, or tag; hard or soft) is applied to this
 * process's L1, to Redis (the shared store: the entries, a URL's variant
 * index, a tag's index), and announced on the Redis channel PURGE_CHANNEL,
 * from which every other instance applies it to its own L1. A store is
 * announced the same way, so no instance keeps serving an older copy of a
 * URL from its L1. Why pub/sub rather than CLIENT TRACKING: tracking
 * reports keys a client has read, but L1 entries are read from Redis by
 * hashed key while purges by tag and prefix select by content; a message
 * that carries the purge itself lets each instance select in its own L1
 * with the same rules, costs one PUBLISH per purge or store, and needs no
 * per-key bookkeeping in Redis.
 *
 * An instance whose subscription drops, or comes back, empties its L1: it
 * may have missed purges meanwhile.
 *
 * A purge or invalidation that cannot reach Redis (the link is down or
 * refuses it, or it fails in flight) is still applied to L1, and is kept in
 * one queue per process (PURGE_QUEUE_MAX purges; each a copy of its
 * argument). While anything is queued or being replayed, purge_redis_blocked()
 * is true and the workers do not read Redis: it may still hold what those
 * purges removed. When the admin's link is (again) connected, every queued
 * purge is sent on it, and once Redis has answered them all, each is
 * announced again (other instances drop what they may have read from Redis
 * meanwhile) and lookups use Redis again. A replay that fails is kept and
 * tried again after PURGE_REPLAY_RETRY_MS. A purge that finds the queue
 * full (or no memory to keep it) is not kept: a purge of everything takes
 * its place in the next replay, hard when one of those lost was hard, else
 * soft; it is logged as an error and counted (overflows). The PURGE method
 * and POST /purge answer 503 when Redis was not purged, 504 when it did not
 * answer within PURGE_WAIT_MS (the purge goes on there; should it fail, it
 * is queued). Other instances read Redis as usual meanwhile: they may serve
 * what was purged here until the replay's announcement reaches them.
 *
 * One struct purge per process, living on the admin (health) thread's
 * event_base: its own Redis link for the admin's purges and its own
 * subscriber link. Workers purge (the PURGE method) with their own links,
 * through purge_run(). Counters are atomics any thread may bump.
 */
#ifndef CLONEGATE_PURGE_H
#define CLONEGATE_PURGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct event_base;
struct evhttp_request;
struct store_redis;
struct store_redis_stats;
struct config;

#define PURGE_CHANNEL         "cg:invalidate" /* Redis pub/sub channel of every instance */
#define PURGE_TAG_PREFIX      "cg:tag:"       /* Redis key of a tag's index: prefix + tag */
#define PURGE_TAG_KEY_MAX     300             /* bytes of a tag index key */
#define PURGE_MAX_TAGS        16              /* tag= arguments in one admin purge */
#define PURGE_WAIT_MS         2000            /* longest a purge's answer waits on Redis */
#define PURGE_QUEUE_MAX       1024            /* purges kept while Redis cannot take them */
#define PURGE_REPLAY_RETRY_MS 1000            /* a failed replay is tried again after this */
#define PURGE_ANSWER_MAX      192             /* bytes of a purge's JSON answer */

/* Counters of the purges this process made or received (atomics). */
struct purge_stats {
    uint64_t requests;   /* purges asked here (PURGE method and admin) */
    uint64_t by_kind[4]; /* of those, by enum cache_purge_kind */
    uint64_t soft;       /* of those, soft */
    uint64_t entries;    /* entries reported purged (Redis count, else L1) */
    uint64_t refused;    /* PURGE from outside cache.purge_allow */
    uint64_t messages;   /* purges and stores announced by other instances */
    uint64_t l1_drops;   /* times L1 was emptied because the subscription dropped */
    uint64_t queued;     /* gauge: purges and invalidations waiting for Redis */
    uint64_t replayed;   /* purges and invalidations applied to Redis from the queue */
    uint64_t overflows;  /* purges not kept (queue full): replaced by a purge of everything */
};

struct purge;

/* What became of a purge in Redis. */
enum purge_outcome {
    PURGE_DONE = 0,         /* Redis purged (or there is no Redis) */
    PURGE_NOT_IN_REDIS = 1, /* Redis unreachable or failed: L1 purged, the purge is queued */
    PURGE_REDIS_LATE = 2,   /* no answer within PURGE_WAIT_MS: the purge goes on in Redis */
};

/* Called once with the number of entries a purge removed (or softened):
 * Redis's count when <outcome> is PURGE_DONE and Redis answered, else this
 * L1's. */
typedef void (*purge_done_fn)(void *arg, long long count, enum purge_outcome outcome);

/*
 * Sets up purging for <cache> on <base> (the admin thread's) with the
 * Redis of <cfg> (none: L1 only). Returns NULL when out of memory. Main
 * thread, before the admin thread runs.
 */
struct purge *purge_new(struct event_base *base, struct cache *cache, const struct config *cfg);

/* Closes its Redis links. Main thread, with the admin thread stopped. */
void purge_free(struct purge *p);

/* This process's instance id (16 hex digits), which its messages carry. */
const char *purge_instance(void);

/* Live counters. */
struct purge_stats *purge_stats(struct purge *p);

/* The counters of its Redis links: 0 the admin's purges, 1 the
 * subscription; NULL without one. */
const struct store_redis_stats *purge_link_stats(struct purge *p, unsigned i);

/*
 * Purges <kind>/<arg> in L1 and, with <rs>, in Redis, and announces it.
 * <done> gets the Redis count (or the L1 count without Redis, when Redis
 * failed: the purge is then queued for Redis, or when it did not answer
 * within PURGE_WAIT_MS: the purge goes on in Redis, nobody waits on it);
 * it may run before this returns. <rs>'s thread, whose loop is <base>.
 */
void purge_run(struct purge *p, struct event_base *base, struct cache *cache,
               struct store_redis *rs, enum cache_purge_kind kind, const char *arg, size_t len,
               bool soft, purge_done_fn done, void *done_arg);

/* Announces that <url> was stored (other instances drop their L1 copy). */
void purge_announce_store(struct store_redis *rs, const char *url, size_t len);

/*
 * An unsafe method changed <url>: its entries and variants go from Redis
 * (through <rs>, not NULL) and from the other instances' L1; when Redis
 * cannot take it, it is queued as a purge. The caller purges its own L1
 * first. <rs>'s thread.
 */
void purge_invalidate(struct purge *p, struct store_redis *rs, const char *url, size_t len);

/*
 * Whether purges wait to be replayed to Redis: lookups must not read Redis
 * meanwhile (it may still hold what they purged). False for NULL. Any
 * thread.
 */
bool purge_redis_blocked(const struct purge *p);

/* The Redis index key of tag <tag> into <out> (PURGE_TAG_KEY_MAX bytes);
 * returns its length, 0 when the tag is too long. */
size_t purge_tag_key(const char *tag, size_t len, char *out);

/*
 * The answer to a purge that removed <count> entries with <outcome>: the
 * JSON body into <body> (<room> bytes, PURGE_ANSWER_MAX will do) and the
 * status returned: 200 {"purged":N}; 503 when Redis was not purged, 504
 * when it did not answer in time, each {"purged":N,"error":"..."}, N this
 * L1's count. Any thread.
 */
int purge_answer(long long count, enum purge_outcome outcome, char *body, size_t room);

/* The admin's POST /purge?url=URL | tag=TAG (repeatable) | prefix=PATH
 * [&soft=1]; answers JSON {"purged": N} (purge_answer()). Admin thread. */
void purge_admin_request(struct purge *p, struct evhttp_request *req);

/* The cache key of an absolute URL ("http://Host:80/p" -> "http://host/p")
 * into <out>; returns its length, 0 when it is not an absolute http(s)
 * URL or does not fit. */
size_t purge_url_key(const char *url, char *out, size_t room);

#endif /* CLONEGATE_PURGE_H */
