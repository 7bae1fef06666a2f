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

#define PURGE_CHANNEL     "cg:invalidate" /* Redis pub/sub channel of every instance */
#define PURGE_TAG_PREFIX  "cg:tag:"       /* Redis key of a tag's index: prefix + tag */
#define PURGE_TAG_KEY_MAX 300             /* bytes of a tag index key */
#define PURGE_MAX_TAGS    16              /* tag= arguments in one admin purge */
#define PURGE_WAIT_MS     2000            /* longest a purge's answer waits on Redis */

/* Counters of the purges this process made or received (atomics). */
struct purge_stats {
    uint64_t requests;   /* purges asked here (PURGE method and admin) */
    uint64_t by_kind[4]; /* of those, by enum cache_purge_kind */
    uint64_t soft;       /* of those, soft */
    uint64_t entries;    /* entries reported purged (Redis count, else L1) */
    uint64_t refused;    /* PURGE from outside cache.purge_allow */
    uint64_t messages;   /* purges and stores announced by other instances */
    uint64_t l1_drops;   /* times L1 was emptied because the subscription dropped */
};

struct purge;

/* Called once with the number of entries a purge removed (or softened). */
typedef void (*purge_done_fn)(void *arg, long long count);

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
 * failed, or when it did not answer within PURGE_WAIT_MS: the purge goes
 * on in Redis, nobody waits on it); it may run before this returns.
 * <rs>'s thread, whose loop is <base>.
 */
void purge_run(struct purge *p, struct event_base *base, struct cache *cache,
               struct store_redis *rs, enum cache_purge_kind kind, const char *arg, size_t len,
               bool soft, purge_done_fn done, void *done_arg);

/* Announces that <url> was stored (other instances drop their L1 copy). */
void purge_announce_store(struct store_redis *rs, const char *url, size_t len);

/* The Redis index key of tag <tag> into <out> (PURGE_TAG_KEY_MAX bytes);
 * returns its length, 0 when the tag is too long. */
size_t purge_tag_key(const char *tag, size_t len, char *out);

/* The admin's POST /purge?url=URL | tag=TAG (repeatable) | prefix=PATH
 * [&soft=1]; answers JSON {"purged": N}. Admin thread. */
void purge_admin_request(struct purge *p, struct evhttp_request *req);

/* The cache key of an absolute URL ("http://Host:80/p" -> "http://host/p")
 * into <out>; returns its length, 0 when it is not an absolute http(s)
 * URL or does not fit. */
size_t purge_url_key(const char *url, char *out, size_t room);

#endif /* CLONEGATE_PURGE_H */
