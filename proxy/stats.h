/*
 * stats: the admin listener ([stats] listen) and what it shows.
 *
 * Serves, on the health thread's event_base so no worker is ever blocked:
 *   GET  /                              an HTML dashboard polling /stats
 *   GET  /stats                         JSON: connections, requests, latency, servers,
 *                                       the cache (L1 and Redis), TLS handshakes
 *   GET  /metrics                       the same in Prometheus text format
 *   GET  /health                        200 while serving, 503 while draining
 *   POST /purge?url=|tag=|prefix=[&soft=1]  purges the shared cache (purge.h)
 *   POST /servers/<host:port>/drain     no new requests for that server
 *   POST /servers/<host:port>/ready     takes requests again
 * It never serves proxy traffic, and the proxy listeners never serve these
 * paths. stats.allow (address blocks) and stats.auth (a bearer token in a
 * file) restrict it; other clients get 403. Every answer carries
 * Cache-Control: no-store; errors are a short text/plain line: 403, 404
 * for an unknown path, 405 with Allow for a known one and a wrong method.
 *
 * Counting: each worker owns one struct stats_worker and is its only
 * writer; it bumps plain fields with relaxed atomic stores (no locked
 * read-modify-write, nothing shared between workers per request). The
 * admin listener sums the workers' structs with relaxed loads when asked.
 * Latencies go into a fixed-size histogram (STATS_LAT_BUCKETS bounds), kept
 * both since start and for the last minute in six 10-second slots. A clone
 * a reload puts back after another removed it shows only what came since
 * (stats_admin_on_server_fresh()).
 */
#ifndef CLONEGATE_STATS_H
#define CLONEGATE_STATS_H

#include <stdint.h>

#include "config.h"

struct cache;
struct event_base;
struct health;
struct purge;
struct stats_admin;
struct store_redis_stats;

#define STATS_MAX_SERVERS  256 /* per-clone counters, by health's stable server id */
#define STATS_LAT_BUCKETS  36  /* latency buckets, the last one unbounded */
#define STATS_WINDOW_SLOTS 7   /* the last minute (6 read, 1 being reset) ... */
#define STATS_SLOT_SECONDS 10  /* ... in slots of this many seconds */

/* Upper bounds of the latency buckets, in microseconds (the last bucket
 * has none). */
extern const uint32_t stats_latency_bounds_us[STATS_LAT_BUCKETS - 1];

struct stats_latency {
    uint64_t bucket[STATS_LAT_BUCKETS]; /* requests per bucket */
    uint64_t count;                     /* requests */
    uint64_t sum_us;                    /* their total time */
};

struct stats_window {
    int64_t epoch[STATS_WINDOW_SLOTS]; /* which 10-s period each slot holds */
    struct stats_latency slot[STATS_WINDOW_SLOTS];
};

/* One clone, as one worker saw it. */
struct stats_server {
    uint64_t requests;            /* answered (any status) */
    uint64_t failures;            /* attempts that failed */
    uint64_t retries;             /* attempts that were a retry */
    uint64_t active;              /* gauge: requests in flight */
    struct stats_latency latency; /* upstream time, since start */
    struct stats_window window;   /* upstream time, last minute */
};

/* Requests by their Cache-Status outcome (RFC 9211). */
enum stats_cache_outcome {
    STATS_CS_HIT = 0,       /* answered from the cache */
    STATS_CS_URI_MISS = 1,  /* fwd=uri-miss: nothing stored for the URL */
    STATS_CS_VARY_MISS = 2, /* fwd=vary-miss: the URL, not this variant */
    STATS_CS_MISS = 3,      /* fwd=miss: stored entry unusable (or a collapsed wait) */
    STATS_CS_STALE = 4,     /* fwd=stale: stale entry validated with the clone */
    STATS_CS_REQUEST = 5,   /* fwd=request: the request refused a fresh entry */
    STATS_CS_BYPASS = 6,    /* fwd=bypass: not a request the cache handles */
    STATS_CS_COUNT = 7,
};

/* The cache's figures, as one worker saw them. */
struct stats_cache {
    uint64_t outcome[STATS_CS_COUNT]; /* requests by Cache-Status outcome */
    uint64_t l2_hits;                 /* entries read from Redis (L1 missed) */
    uint64_t stale_served;            /* stale answers: max-stale, while-revalidate, if-error */
    uint64_t revalidated;             /* 304 from a clone refreshed a stored entry */
    uint64_t stores;                  /* responses stored */
    uint64_t store_bytes;             /* their body bytes */
    uint64_t not_stored;              /* responses judged not storable */
    uint64_t stores_aborted;          /* fills that ended early or grew too large */
    uint64_t coalesced;               /* requests that waited on another's fill */
    uint64_t lock_timeouts;           /* of those, gave up waiting */
    uint64_t invalidations;           /* URLs invalidated by unsafe methods */
    uint64_t background_refreshes;    /* stale-while-revalidate refreshes started */
};

/* Everything one worker counts. */
struct stats_worker {
    uint64_t connections_total;   /* accepted */
    uint64_t connections_open;    /* gauge */
    uint64_t accept_pauses;       /* times max_connections paused accepting */
    uint64_t refused;             /* turned away: max_connections held past queue_timeout */
    uint64_t requests;            /* answered, all statuses */
    uint64_t status_class[6];     /* [n] = nxx; [0] = closed without a status */
    uint64_t bytes_in;            /* from clients */
    uint64_t bytes_out;           /* to clients */
    uint64_t upstream_failures;   /* failed attempts, all clones */
    uint64_t retries;             /* attempts that were a retry */
    struct stats_latency latency; /* total time, since start */
    struct stats_window window;   /* total time, last minute */
    struct stats_cache cache;
    struct stats_server server[STATS_MAX_SERVERS];
};

/* Adds one to a counter its worker alone writes (a plain store, visible to
 * the admin thread's relaxed loads). */
#define STATS_INC(field)    __atomic_store_n(&(field), (field) + 1, __ATOMIC_RELAXED)
#define STATS_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define STATS_DEC(field)    __atomic_store_n(&(field), (field)-1, __ATOMIC_RELAXED)

/*
 * Records a finished request in <sw>: <status> sent (0 if none), bytes from
 * and to the client, total time, and when a clone answered (<server> >= 0,
 * its stable id) the upstream time. <now_s> is the wall clock in seconds.
 * The owning worker thread only.
 */
void stats_record_request(struct stats_worker *sw, unsigned status, uint64_t bytes_in,
                          uint64_t bytes_out, uint64_t total_us, int server, uint64_t upstream_us,
                          int64_t now_s);

/* Hands the admin listener the workers' counters (borrowed; they outlive
 * it). Main thread, before the workers start. */
void stats_admin_set_workers(struct stats_admin *a, struct stats_worker *const *workers,
                             unsigned count);

/*
 * Hands the admin listener the cache's figures: <c> the process's L1 store
 * (NULL when the cache is off), <redis> the <count> workers' Redis counters
 * (store_redis_stats(); the array is copied, the structs borrowed; NULL
 * entries, or count 0, when there is no Redis). A worker frees its Redis
 * link when its thread ends, so main calls this again with <redis> NULL and
 * <count> 0 before it stops the workers: the Redis figures are copied at
 * that moment and shown as they were from then on. Main thread; safe while
 * the admin listener serves.
 */
/* Hands the admin listener the purge object (borrowed; NULL: no cache):
 * it serves POST /purge and shows the purge figures. Main thread, before
 * the admin serves. */
void stats_admin_set_purge(struct stats_admin *a, struct purge *p);

void stats_admin_set_cache(struct stats_admin *a, const struct cache *c,
                           const struct store_redis_stats *const *redis, unsigned count);

/*
 * Opens the admin listener(s) of <cfg> on <base> (the health thread's).
 * <hl> gives the servers' state; <draining> points at the process's atomic
 * draining flag. Returns NULL with the reason logged; when <cfg> names no
 * admin listener, returns a harmless object that listens nowhere. Main
 * thread, before the health thread starts.
 */
struct stats_admin *stats_admin_start(struct event_base *base, const struct config *cfg,
                                      struct health *hl, const int *draining);

/* Starts the per-clone figures of the server with health's stable id <id>
 * again from zero: requests, failures, retries and latency (the last
 * minute's from its next 10-second slot); the active gauge goes on. A
 * health_fresh_fn: <arg> is the struct stats_admin. Main thread, after
 * stats_admin_set_workers(); safe while the admin listener serves. */
void stats_admin_on_server_fresh(void *arg, int id);

/* Closes the listener(s). Main thread, with the health thread stopped. */
void stats_admin_free(struct stats_admin *a);

#endif /* CLONEGATE_STATS_H */
