/*
 * stats: the admin HTTP listener, on the health thread.
 *
 * Owns the evhttp server and its listeners (freed by stats_admin_free()).
 * Borrows the health state (read through health_snapshot(), which copies
 * under the health lock), the process's draining flag, the L1 cache (its
 * figures are atomics and cache_waiting() locks) and the workers' Redis
 * counters (relaxed loads, under redis_lock so main can take them away
 * before the workers free them), and the process's TLS handshake
 * counters (tls_stats(), relaxed loads). Owns each clone's baseline, the
 * figures it had when health last started it afresh (under base_lock),
 * which /stats and /metrics subtract. Runs only on the health thread, but
 * for stats_admin_set_*() and stats_admin_on_server_fresh() on the main
 * thread; answers are small and built in one evbuffer per request.
 */
#include "stats.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "cache.h"
#include "health.h"
#include "log.h"
#include "purge.h"
#include "store_redis.h"
#include "tls.h"

#define STATS_MAX_VIEWS 256 /* servers shown at most */
/* Methods evhttp lets through to stats_on_request(): every bit, so that the
 * ones it does not know (libevent 2.1 gives them bit 15, outside the public
 * enum) get our 405 too rather than its HTML 501 page. */
#define STATS_ADMIN_METHODS 0xffff
#define STATS_ADMIN_TIMEOUT_S                                                                      \
    10 /* an admin request must arrive, and its answer go, within this                             \
        */
#define STATS_ADMIN_ACCEPT_WAIT_MS                                                                 \
    250                             /* accepting pauses this long after accept() fails (EMFILE) */
#define STATS_ADMIN_WARN_EVERY_S 10 /* one warning per this many seconds of such failures */

/* Names of the Cache-Status outcomes, as in the header and the labels. */
static const char *const cache_status_names[STATS_CS_COUNT] = {
    "hit", "uri-miss", "vary-miss", "miss", "stale", "request", "bypass",
};

/* The workers' Redis counters added up. */
struct redis_totals {
    uint64_t gets, found, not_found, failed, timeouts, skipped; /* gets, by result */
    uint64_t sets, errors;                                      /* writes; error replies */
    uint64_t sets_skipped, sets_too_large;                      /* writes refused */
    uint64_t purges, published, messages;       /* purges sent; invalidations published, received */
    uint64_t connects, disconnects, reconnects; /* reconnects: connects beyond each first */
    uint64_t rtt_us_sum, rtt_count;             /* round trips of answered gets */
    unsigned links;                             /* workers with a Redis link */
    unsigned by_state[4];                       /* links per enum store_redis_state */
    uint8_t state[CONFIG_MAX_WORKERS];          /* each link's enum store_redis_state */
};

/* A clone's figures when health last started it afresh (a reload named
 * it again after another left it out): what it shows is what came since. */
struct server_base {
    uint64_t requests, failures, retries; /* sums over the workers then */
    struct stats_latency latency;         /* upstream time since start, then */
    int64_t epoch;                        /* the window slot then: it and older are not shown */
};

struct stats_admin {
    struct evhttp *http;                  /* owned; NULL when no admin listener is configured */
    struct health *hl;                    /* borrowed */
    const int *draining;                  /* borrowed: atomic */
    time_t started;                       /* for uptime */
    unsigned workers;                     /* as configured at start */
    struct stats_worker *const *counters; /* borrowed: one per worker */
    struct config_cidr allow[CONFIG_MAX_CIDRS]; /* copy of stats.allow */
    unsigned allow_count;                       /* 0: any client */
    char token[256];                            /* stats.auth's token, "" none */
    unsigned counter_count;
    const struct cache *cache;        /* borrowed from main; NULL: cache off */
    struct purge *purge;              /* borrowed from main; NULL: cache off */
    char redis_addr[CONFIG_PATH_MAX]; /* cache.redis at start, "" none */
    pthread_mutex_t redis_lock;       /* guards the four fields below */
    const struct store_redis_stats *redis[CONFIG_MAX_WORKERS]; /* borrowed from each worker */
    unsigned redis_count;                                      /* entries of redis[] */
    bool redis_frozen;                          /* the links are gone: show redis_last */
    struct redis_totals redis_last;             /* the figures when they went */
    pthread_mutex_t base_lock;                  /* guards base[] */
    struct server_base base[STATS_MAX_SERVERS]; /* by health id; zero: never started afresh */
    struct evconnlistener *listeners[CONFIG_MAX_LISTEN]; /* borrowed: owned by http */
    unsigned listener_count;
    struct event *accept_retry; /* owned: re-enables accepting after a failed accept() */
    time_t accept_warned;       /* when a failed accept() was last logged */
};

const uint32_t stats_latency_bounds_us[STATS_LAT_BUCKETS - 1] = {
    100,     200,     300,      500,      750,      1000,     1500,     2000,      3000,
    5000,    7500,    10000,    15000,    20000,    30000,    50000,    75000,     100000,
    150000,  200000,  300000,   500000,   750000,   1000000,  1500000,  2000000,   3000000,
    5000000, 7500000, 10000000, 15000000, 20000000, 30000000, 60000000, 120000000,
};

/* ------------------------------------------------------------ counting */

static unsigned latency_bucket(uint64_t us)
{
    unsigned lo = 0, hi = STATS_LAT_BUCKETS - 1;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (us <= stats_latency_bounds_us[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static void latency_add(struct stats_latency *l, unsigned bucket, uint64_t us)
{
    STATS_INC(l->bucket[bucket]);
    STATS_INC(l->count);
    STATS_ADD(l->sum_us, us);
}

static void window_add(struct stats_window *w, unsigned bucket, uint64_t us, int64_t now_s)
{
    int64_t epoch = now_s / STATS_SLOT_SECONDS;
    unsigned slot = (unsigned)(epoch % STATS_WINDOW_SLOTS);
    if (w->epoch[slot] != epoch) {
        /* a slot from a minute ago: start it afresh */
        memset(&w->slot[slot], 0, sizeof(w->slot[slot]));
        __atomic_store_n(&w->epoch[slot], epoch, __ATOMIC_RELEASE);
    }
    latency_add(&w->slot[slot], bucket, us);
}

void stats_record_request(struct stats_worker *sw, unsigned status, uint64_t bytes_in,
                          uint64_t bytes_out, uint64_t total_us, int server, uint64_t upstream_us,
                          int64_t now_s)
{
    unsigned cls = status >= 100 && status < 600 ? status / 100 : 0;
    unsigned bucket = latency_bucket(total_us);
    STATS_INC(sw->requests);
    STATS_INC(sw->status_class[cls]);
    STATS_ADD(sw->bytes_in, bytes_in);
    STATS_ADD(sw->bytes_out, bytes_out);
    latency_add(&sw->latency, bucket, total_us);
    window_add(&sw->window, bucket, total_us, now_s);
    if (server >= 0 && server < STATS_MAX_SERVERS) {
        struct stats_server *ss = &sw->server[server];
        unsigned ub = latency_bucket(upstream_us);
        STATS_INC(ss->requests);
        latency_add(&ss->latency, ub, upstream_us);
        window_add(&ss->window, ub, upstream_us, now_s);
    }
}

void stats_admin_set_workers(struct stats_admin *a, struct stats_worker *const *workers,
                             unsigned count)
{
    a->counters = workers;
    a->counter_count = count;
}

/* ------------------------------------------------------------ summing */

static uint64_t load(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void latency_sum(struct stats_latency *to, const struct stats_latency *from)
{
    for (unsigned i = 0; i < STATS_LAT_BUCKETS; i++)
        to->bucket[i] += load(&from->bucket[i]);
    to->count += load(&from->count);
    to->sum_us += load(&from->sum_us);
}

/* Adds the slots of <w> that fall in the minute before <now_s> and come
 * after slot <after> (an epoch; 0: no bound). */
static void window_sum(struct stats_latency *to, const struct stats_window *w, int64_t now_s,
                       int64_t after)
{
    int64_t epoch = now_s / STATS_SLOT_SECONDS;
    for (unsigned i = 0; i < STATS_WINDOW_SLOTS; i++) {
        int64_t e = __atomic_load_n(&w->epoch[i], __ATOMIC_ACQUIRE);
        /* six slots: the seventh is the one a worker may be clearing */
        if (e > epoch - (STATS_WINDOW_SLOTS - 1) && e <= epoch && e > after)
            latency_sum(to, &w->slot[i]);
    }
}

/* <a> - <b>, never below 0 (a baseline is never above what follows it). */
static uint64_t since(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

static void latency_since(struct stats_latency *l, const struct stats_latency *base)
{
    for (unsigned i = 0; i < STATS_LAT_BUCKETS; i++)
        l->bucket[i] = since(l->bucket[i], base->bucket[i]);
    l->count = since(l->count, base->count);
    l->sum_us = since(l->sum_us, base->sum_us);
}

/* The <q> quantile (0..1) of <l>, in ms, interpolated within its bucket. */
static double quantile_ms(const struct stats_latency *l, double q)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < STATS_LAT_BUCKETS; i++)
        total += l->bucket[i];
    if (total == 0)
        return 0;
    double target = q * (double)total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < STATS_LAT_BUCKETS; i++) {
        if (l->bucket[i] == 0 || (double)(seen + l->bucket[i]) < target) {
            seen += l->bucket[i];
            continue;
        }
        double lo = i == 0 ? 0 : stats_latency_bounds_us[i - 1];
        double hi = i < STATS_LAT_BUCKETS - 1 ? stats_latency_bounds_us[i] : lo;
        double frac = (target - (double)seen) / (double)l->bucket[i];
        return (lo + (hi - lo) * frac) / 1000.0;
    }
    return stats_latency_bounds_us[STATS_LAT_BUCKETS - 2] / 1000.0;
}

static void render_quantiles(struct evbuffer *out, const struct stats_latency *l)
{
    evbuffer_add_printf(out,
                        "{\"window_seconds\":%d,\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,"
                        "\"p99\":%.3f,\"p999\":%.3f}",
                        (STATS_WINDOW_SLOTS - 1) * STATS_SLOT_SECONDS, (unsigned long long)l->count,
                        quantile_ms(l, 0.5), quantile_ms(l, 0.9), quantile_ms(l, 0.99),
                        quantile_ms(l, 0.999));
}

/* The workers' counters added up. */
struct totals {
    uint64_t connections_total, connections_open, accept_pauses, refused;
    uint64_t requests, status_class[6], bytes_in, bytes_out, upstream_failures, retries;
    struct stats_latency latency; /* since start */
    struct stats_latency window;  /* last minute */
};

static void sum_workers(const struct stats_admin *a, struct totals *t, int64_t now_s)
{
    memset(t, 0, sizeof(*t));
    for (unsigned w = 0; w < a->counter_count; w++) {
        const struct stats_worker *sw = a->counters[w];
        t->connections_total += load(&sw->connections_total);
        t->connections_open += load(&sw->connections_open);
        t->accept_pauses += load(&sw->accept_pauses);
        t->refused += load(&sw->refused);
        t->requests += load(&sw->requests);
        for (unsigned i = 0; i < 6; i++)
            t->status_class[i] += load(&sw->status_class[i]);
        t->bytes_in += load(&sw->bytes_in);
        t->bytes_out += load(&sw->bytes_out);
        t->upstream_failures += load(&sw->upstream_failures);
        t->retries += load(&sw->retries);
        latency_sum(&t->latency, &sw->latency);
        window_sum(&t->window, &sw->window, now_s, 0);
    }
}

struct server_totals {
    uint64_t requests, failures, retries, active;
    struct stats_latency latency, window;
};

/* The workers' figures for server <id> since start; the window's slots
 * after <after> only. */
static void sum_server_raw(const struct stats_admin *a, int id, struct server_totals *t,
                           int64_t now_s, int64_t after)
{
    memset(t, 0, sizeof(*t));
    for (unsigned w = 0; w < a->counter_count; w++) {
        const struct stats_server *ss = &a->counters[w]->server[id];
        t->requests += load(&ss->requests);
        t->failures += load(&ss->failures);
        t->retries += load(&ss->retries);
        t->active += load(&ss->active);
        latency_sum(&t->latency, &ss->latency);
        window_sum(&t->window, &ss->window, now_s, after);
    }
}

/* The figures of server <id> since it last started afresh (or since
 * start); active is the gauge as it is. */
static void sum_server(struct stats_admin *a, int id, struct server_totals *t, int64_t now_s)
{
    if (id < 0 || id >= STATS_MAX_SERVERS) {
        memset(t, 0, sizeof(*t));
        return;
    }
    pthread_mutex_lock(&a->base_lock);
    const struct server_base *b = &a->base[id];
    sum_server_raw(a, id, t, now_s, b->epoch);
    t->requests = since(t->requests, b->requests);
    t->failures = since(t->failures, b->failures);
    t->retries = since(t->retries, b->retries);
    latency_since(&t->latency, &b->latency);
    pthread_mutex_unlock(&a->base_lock);
}

void stats_admin_on_server_fresh(void *arg, int id)
{
    struct stats_admin *a = arg;
    if (!a || id < 0 || id >= STATS_MAX_SERVERS)
        return;
    int64_t now = (int64_t)time(NULL);
    struct server_totals t;
    pthread_mutex_lock(&a->base_lock);
    sum_server_raw(a, id, &t, now, 0);
    struct server_base *b = &a->base[id];
    b->requests = t.requests;
    b->failures = t.failures;
    b->retries = t.retries;
    b->latency = t.latency;
    b->epoch = now / STATS_SLOT_SECONDS;
    pthread_mutex_unlock(&a->base_lock);
}

/* The workers' cache counters added up, with the L1's figures. */
struct cache_totals {
    uint64_t outcome[STATS_CS_COUNT];
    uint64_t l2_hits, stale_served, revalidated, stores, store_bytes, not_stored;
    uint64_t stores_aborted, coalesced, lock_timeouts, invalidations, background_refreshes;
    uint64_t waiting;         /* gauge: requests waiting on a fill */
    struct cache_l1_stats l1; /* zero when the cache is off */
    struct purge_stats purge; /* zero when the cache is off */
    struct redis_totals redis;
};

/* Adds the live Redis counters of the workers; redis_lock held. */
static void sum_redis_locked(const struct stats_admin *a, struct redis_totals *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned w = 0; w < a->redis_count; w++) {
        const struct store_redis_stats *r = a->redis[w];
        if (!r)
            continue;
        uint64_t connects = load(&r->connects);
        uint64_t state = load(&r->state);
        t->gets += load(&r->gets);
        t->found += load(&r->found);
        t->not_found += load(&r->not_found);
        t->failed += load(&r->failed);
        t->timeouts += load(&r->timeouts);
        t->skipped += load(&r->skipped);
        t->sets += load(&r->sets);
        t->sets_skipped += load(&r->sets_skipped);
        t->sets_too_large += load(&r->sets_too_large);
        t->purges += load(&r->purges);
        t->published += load(&r->published);
        t->messages += load(&r->messages);
        t->errors += load(&r->errors);
        t->connects += connects;
        t->disconnects += load(&r->disconnects);
        t->reconnects += connects > 1 ? connects - 1 : 0;
        t->rtt_us_sum += load(&r->rtt_us_sum);
        t->rtt_count += load(&r->rtt_count);
        if (state > STORE_REDIS_SLOW)
            state = STORE_REDIS_DOWN;
        t->state[t->links++] = (uint8_t)state;
        t->by_state[state]++;
    }
    /* the admin thread's own links (admin purges, the invalidation
     * subscription) count in the sums, not in the workers' link states */
    for (unsigned i = 0; a->purge && i < 2; i++) {
        const struct store_redis_stats *r = purge_link_stats(a->purge, i);
        if (!r)
            continue;
        t->purges += load(&r->purges);
        t->published += load(&r->published);
        t->messages += load(&r->messages);
        t->errors += load(&r->errors);
    }
}

static void sum_cache(struct stats_admin *a, struct cache_totals *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned w = 0; w < a->counter_count; w++) {
        const struct stats_cache *sc = &a->counters[w]->cache;
        for (unsigned i = 0; i < STATS_CS_COUNT; i++)
            t->outcome[i] += load(&sc->outcome[i]);
        t->l2_hits += load(&sc->l2_hits);
        t->stale_served += load(&sc->stale_served);
        t->revalidated += load(&sc->revalidated);
        t->stores += load(&sc->stores);
        t->store_bytes += load(&sc->store_bytes);
        t->not_stored += load(&sc->not_stored);
        t->stores_aborted += load(&sc->stores_aborted);
        t->coalesced += load(&sc->coalesced);
        t->lock_timeouts += load(&sc->lock_timeouts);
        t->invalidations += load(&sc->invalidations);
        t->background_refreshes += load(&sc->background_refreshes);
    }
    if (a->cache) {
        cache_l1_stats(a->cache, &t->l1);
        t->waiting = cache_waiting(a->cache);
    }
    if (a->purge) {
        /* atomics other threads bump: read each one once */
        const struct purge_stats *ps = purge_stats(a->purge);
        t->purge.requests = load(&ps->requests);
        for (unsigned i = 0; i < 4; i++)
            t->purge.by_kind[i] = load(&ps->by_kind[i]);
        t->purge.soft = load(&ps->soft);
        t->purge.entries = load(&ps->entries);
        t->purge.refused = load(&ps->refused);
        t->purge.messages = load(&ps->messages);
        t->purge.l1_drops = load(&ps->l1_drops);
        t->purge.queued = load(&ps->queued);
        t->purge.replayed = load(&ps->replayed);
        t->purge.overflows = load(&ps->overflows);
    }
    pthread_mutex_lock(&a->redis_lock);
    if (a->redis_frozen)
        t->redis = a->redis_last;
    else
        sum_redis_locked(a, &t->redis);
    pthread_mutex_unlock(&a->redis_lock);
}

void stats_admin_set_purge(struct stats_admin *a, struct purge *p)
{
    a->purge = p;
}

void stats_admin_set_cache(struct stats_admin *a, const struct cache *c,
                           const struct store_redis_stats *const *redis, unsigned count)
{
    if (count > CONFIG_MAX_WORKERS)
        count = CONFIG_MAX_WORKERS;
    pthread_mutex_lock(&a->redis_lock);
    if (count == 0 && a->redis_count > 0) {
        /* the links are about to go: keep their last figures */
        sum_redis_locked(a, &a->redis_last);
        a->redis_frozen = true;
    } else if (count > 0) {
        a->redis_frozen = false;
    }
    a->cache = c;
    memset(a->redis, 0, sizeof(a->redis));
    for (unsigned i = 0; i < count; i++)
        a->redis[i] = redis[i];
    a->redis_count = count;
    pthread_mutex_unlock(&a->redis_lock);
}

/* The state shown for Redis as a whole: the worst of the workers' links
 * (down, then connecting, then slow, then up); "off" without Redis. */
static const char *redis_state(const struct stats_admin *a, const struct redis_totals *r)
{
    static const enum store_redis_state worst_first[] = {STORE_REDIS_DOWN, STORE_REDIS_CONNECTING,
                                                         STORE_REDIS_SLOW, STORE_REDIS_UP};
    if (!a->cache || a->redis_addr[0] == '\0')
        return "off";
    for (unsigned i = 0; i < sizeof(worst_first) / sizeof(worst_first[0]); i++)
        if (r->by_state[worst_first[i]] > 0)
            return store_redis_state_name(worst_first[i]);
    return store_redis_state_name(STORE_REDIS_DOWN);
}

/* Requests that found no usable entry (fwd=uri-miss, vary-miss, miss). */
static uint64_t cache_misses(const struct cache_totals *t)
{
    return t->outcome[STATS_CS_URI_MISS] + t->outcome[STATS_CS_VARY_MISS] +
           t->outcome[STATS_CS_MISS];
}

/* Hits over the requests the cache looked up (every outcome but bypass). */
static double cache_hit_ratio(const struct cache_totals *t)
{
    uint64_t looked = 0;
    for (unsigned i = 0; i < STATS_CS_COUNT; i++)
        if (i != STATS_CS_BYPASS)
            looked += t->outcome[i];
    return looked ? (double)t->outcome[STATS_CS_HIT] / (double)looked : 0;
}

/* Appends <s> as a JSON string (quotes included). */
static void json_string(struct evbuffer *out, const char *s)
{
    evbuffer_add(out, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            evbuffer_add_printf(out, "\\%c", c);
        else if (c < 0x20)
            evbuffer_add_printf(out, "\\u%04x", c);
        else
            evbuffer_add(out, s, 1);
    }
    evbuffer_add(out, "\"", 1);
}

static const char *state_name(const struct health_server_view *v)
{
    if (!v->in_config)
        return "removed";
    if (v->draining)
        return "draining";
    return v->up ? "up" : "down";
}

static void render_outcomes(struct evbuffer *out, const struct cache_totals *ct)
{
    evbuffer_add(out, "{", 1);
    for (unsigned i = 0; i < STATS_CS_COUNT; i++)
        evbuffer_add_printf(out, "%s\"%s\":%llu", i ? "," : "", cache_status_names[i],
                            (unsigned long long)ct->outcome[i]);
    evbuffer_add(out, "}", 1);
}

static void render_redis(const struct stats_admin *a, struct evbuffer *out,
                         const struct redis_totals *r)
{
    bool configured = a->cache && a->redis_addr[0] != '\0';
    evbuffer_add_printf(out, "{\"configured\":%s,\"address\":", configured ? "true" : "false");
    json_string(out, configured ? a->redis_addr : "");
    evbuffer_add_printf(out, ",\"state\":\"%s\",\"links_up\":%u,\"link_states\":[",
                        redis_state(a, r), r->by_state[STORE_REDIS_UP]);
    for (unsigned i = 0; i < r->links; i++)
        evbuffer_add_printf(out, "%s\"%s\"", i ? "," : "",
                            store_redis_state_name((enum store_redis_state)r->state[i]));
    evbuffer_add_printf(
        out,
        "],\"gets\":%llu,\"found\":%llu,\"not_found\":%llu,\"failed\":%llu,"
        "\"timeouts\":%llu,\"skipped\":%llu,\"sets\":%llu,\"sets_skipped\":%llu,"
        "\"sets_too_large\":%llu,\"errors\":%llu,"
        "\"purges\":%llu,\"published\":%llu,\"messages\":%llu,"
        "\"connects\":%llu,\"disconnects\":%llu,\"reconnects\":%llu,\"rtt_ms\":%.3f}",
        (unsigned long long)r->gets, (unsigned long long)r->found, (unsigned long long)r->not_found,
        (unsigned long long)r->failed, (unsigned long long)r->timeouts,
        (unsigned long long)r->skipped, (unsigned long long)r->sets,
        (unsigned long long)r->sets_skipped, (unsigned long long)r->sets_too_large,
        (unsigned long long)r->errors, (unsigned long long)r->purges,
        (unsigned long long)r->published, (unsigned long long)r->messages,
        (unsigned long long)r->connects, (unsigned long long)r->disconnects,
        (unsigned long long)r->reconnects,
        r->rtt_count ? (double)r->rtt_us_sum / (double)r->rtt_count / 1000.0 : 0.0);
}

static void render_purge(struct evbuffer *out, const struct purge_stats *p)
{
    evbuffer_add_printf(
        out,
        "{\"requests\":%llu,\"url\":%llu,\"prefix\":%llu,\"tag\":%llu,\"soft\":%llu,"
        "\"entries\":%llu,\"refused\":%llu,\"messages_received\":%llu,\"l1_drops\":%llu,"
        "\"queued\":%llu,\"replayed\":%llu,\"overflows\":%llu}",
        (unsigned long long)p->requests, (unsigned long long)p->by_kind[CACHE_PURGE_URL],
        (unsigned long long)p->by_kind[CACHE_PURGE_PREFIX],
        (unsigned long long)p->by_kind[CACHE_PURGE_TAG], (unsigned long long)p->soft,
        (unsigned long long)p->entries, (unsigned long long)p->refused,
        (unsigned long long)p->messages, (unsigned long long)p->l1_drops,
        (unsigned long long)p->queued, (unsigned long long)p->replayed,
        (unsigned long long)p->overflows);
}

static void render_cache(const struct stats_admin *a, struct evbuffer *out,
                         const struct cache_totals *ct)
{
    evbuffer_add_printf(out,
                        "{\"enabled\":%s,\"l1\":{\"entries\":%llu,\"bytes\":%llu,"
                        "\"capacity\":%llu,\"evictions\":%llu,\"expired\":%llu},"
                        "\"requests_by_cache_status\":",
                        a->cache ? "true" : "false", (unsigned long long)ct->l1.entries,
                        (unsigned long long)ct->l1.bytes, (unsigned long long)ct->l1.capacity,
                        (unsigned long long)ct->l1.evictions, (unsigned long long)ct->l1.expired);
    render_outcomes(out, ct);
    evbuffer_add_printf(
        out,
        ",\"hits\":%llu,\"misses\":%llu,\"stale\":%llu,\"l2_hits\":%llu,"
        "\"stale_served\":%llu,\"revalidated\":%llu,\"stores\":%llu,\"store_bytes\":%llu,"
        "\"not_stored\":%llu,\"stores_aborted\":%llu,\"coalesced_waits\":%llu,"
        "\"lock_timeouts\":%llu,\"invalidations\":%llu,\"background_refreshes\":%llu,"
        "\"waiting\":%llu,\"hit_ratio\":%.4f,\"purge\":",
        (unsigned long long)ct->outcome[STATS_CS_HIT], (unsigned long long)cache_misses(ct),
        (unsigned long long)ct->outcome[STATS_CS_STALE], (unsigned long long)ct->l2_hits,
        (unsigned long long)ct->stale_served, (unsigned long long)ct->revalidated,
        (unsigned long long)ct->stores, (unsigned long long)ct->store_bytes,
        (unsigned long long)ct->not_stored, (unsigned long long)ct->stores_aborted,
        (unsigned long long)ct->coalesced, (unsigned long long)ct->lock_timeouts,
        (unsigned long long)ct->invalidations, (unsigned long long)ct->background_refreshes,
        (unsigned long long)ct->waiting, cache_hit_ratio(ct));
    render_purge(out, &ct->purge);
    evbuffer_add_printf(out, ",\"redis\":");
    render_redis(a, out, &ct->redis);
    evbuffer_add(out, "}", 1);
}

static void render_server(struct stats_admin *a, struct evbuffer *out,
                          const struct health_server_view *v, int64_t now_s)
{
    struct server_totals t;
    sum_server(a, v->id, &t, now_s);
    evbuffer_add_printf(out, "{\"address\":");
    json_string(out, v->addr);
    evbuffer_add_printf(out,
                        ",\"state\":\"%s\",\"up\":%s,\"draining\":%s,\"checks_passed\":%llu,"
                        "\"checks_failed\":%llu,\"traffic_failures\":%llu,\"consecutive\":%u,"
                        "\"last_change\":%lld,\"last_error\":",
                        state_name(v), v->up ? "true" : "false", v->draining ? "true" : "false",
                        (unsigned long long)v->checks_passed, (unsigned long long)v->checks_failed,
                        (unsigned long long)v->traffic_failures, v->consecutive,
                        (long long)v->last_change);
    json_string(out, v->last_error);
    evbuffer_add_printf(out,
                        ",\"active\":%llu,\"requests\":%llu,\"failures\":%llu,"
                        "\"retries\":%llu,\"latency_ms\":",
                        (unsigned long long)t.active, (unsigned long long)t.requests,
                        (unsigned long long)t.failures, (unsigned long long)t.retries);
    render_quantiles(out, &t.window);
    evbuffer_add(out, "}", 1);
}

/* The TLS handshake figures, read from tls_stats(): zeros without [tls]. */
struct tls_totals {
    uint64_t handshakes; /* completed with clients, since start */
    uint64_t resumed;    /* of those, resumed sessions */
    uint64_t failures;   /* failed handshakes, plain HTTP included */
    uint64_t plaintext;  /* of those, plain HTTP on a TLS port */
    uint64_t timeouts;   /* handshakes not finished within header_timeout */
};

static void sum_tls(struct tls_totals *t)
{
    const struct tls_stats *ts = tls_stats();
    t->handshakes = load(&ts->handshakes);
    t->resumed = load(&ts->resumed);
    t->failures = load(&ts->failures);
    t->plaintext = load(&ts->plaintext);
    t->timeouts = load(&ts->timeouts);
}

static void render_tls(struct evbuffer *out)
{
    struct tls_totals t;
    sum_tls(&t);
    evbuffer_add_printf(out,
                        "{\"handshakes\":%llu,\"resumed\":%llu,\"failures\":%llu,"
                        "\"plaintext\":%llu,\"timeouts\":%llu}",
                        (unsigned long long)t.handshakes, (unsigned long long)t.resumed,
                        (unsigned long long)t.failures, (unsigned long long)t.plaintext,
                        (unsigned long long)t.timeouts);
}

static void reply(struct evhttp_request *req, int code, const char *reason, struct evbuffer *body,
                  const char *type)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    evhttp_send_reply(req, code, reason, body);
}

/* An error answer: "<code> <reason>" in plain text, never evhttp's HTML
 * page (evhttp_send_error()), so it carries no-store like every other. It
 * closes the connection, as that page did: evhttp reads no body for most
 * methods, and one left unread must not be taken for the next request. */
static void reply_error(struct evhttp_request *req, int code, const char *reason)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    struct evbuffer *body = evbuffer_new(); /* freed below; evhttp copies it out */
    if (body)
        evbuffer_add_printf(body, "%d %s\n", code, reason);
    /* out of memory: the status line and headers still go */
    reply(req, code, reason, body, "text/plain; charset=utf-8");
    if (body)
        evbuffer_free(body);
}

static void serve_stats(struct stats_admin *a, struct evhttp_request *req, struct evbuffer *out)
{
    struct health_server_view *views = calloc(STATS_MAX_VIEWS, sizeof(*views)); /* freed below */
    struct totals *t = malloc(sizeof(*t));                                      /* freed below */
    struct cache_totals *ct = malloc(sizeof(*ct));                              /* freed below */
    if (!views || !t || !ct) {
        free(views);
        free(t);
        free(ct);
        reply_error(req, 500, "Internal Server Error");
        return;
    }
    int64_t now = (int64_t)time(NULL);
    size_t n = health_snapshot(a->hl, views, STATS_MAX_VIEWS);
    sum_workers(a, t, now);
    sum_cache(a, ct);
    evbuffer_add_printf(
        out,
        "{\"version\":\"%s\",\"uptime\":%lld,\"workers\":%u,\"draining\":%s,"
        "\"connections\":{\"open\":%llu,\"total\":%llu,\"refused\":%llu,\"accept_pauses\":%llu},"
        "\"requests\":{\"total\":%llu,\"by_class\":{\"1xx\":%llu,\"2xx\":%llu,\"3xx\":%llu,"
        "\"4xx\":%llu,\"5xx\":%llu,\"none\":%llu},\"by_cache_status\":",
        CLONEGATE_VERSION, (long long)(now - a->started), a->workers,
        __atomic_load_n(a->draining, __ATOMIC_RELAXED) ? "true" : "false",
        (unsigned long long)t->connections_open, (unsigned long long)t->connections_total,
        (unsigned long long)t->refused, (unsigned long long)t->accept_pauses,
        (unsigned long long)t->requests, (unsigned long long)t->status_class[1],
        (unsigned long long)t->status_class[2], (unsigned long long)t->status_class[3],
        (unsigned long long)t->status_class[4], (unsigned long long)t->status_class[5],
        (unsigned long long)t->status_class[0]);
    render_outcomes(out, ct);
    evbuffer_add_printf(out,
                        "},\"bytes\":{\"in\":%llu,\"out\":%llu},"
                        "\"upstream\":{\"failures\":%llu,\"retries\":%llu},\"latency_ms\":",
                        (unsigned long long)t->bytes_in, (unsigned long long)t->bytes_out,
                        (unsigned long long)t->upstream_failures, (unsigned long long)t->retries);
    render_quantiles(out, &t->window);
    evbuffer_add_printf(out, ",\"cache\":");
    render_cache(a, out, ct);
    evbuffer_add_printf(out, ",\"tls\":");
    render_tls(out);
    evbuffer_add_printf(out, ",\"servers\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            evbuffer_add(out, ",", 1);
        render_server(a, out, &views[i], now);
    }
    evbuffer_add_printf(out, "]}\n");
    free(views);
    free(t);
    free(ct);
    reply(req, 200, "OK", out, "application/json");
}

/* ------------------------------------------------------------ Prometheus */

static void metric_head(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_value(struct evbuffer *out, const char *name, const char *labels, uint64_t v)
{
    evbuffer_add_printf(out, "%s%s%s%s %llu\n", name, labels[0] ? "{" : "", labels,
                        labels[0] ? "}" : "", (unsigned long long)v);
}

/* Writes the _bucket/_sum/_count lines of <l> under <name>, with <labels>
 * ("" or `server="..."`) in each. */
static void metric_histogram(struct evbuffer *out, const char *name, const char *labels,
                             const struct stats_latency *l)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (unsigned i = 0; i < STATS_LAT_BUCKETS - 1; i++) {
        cum += l->bucket[i];
        evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
                            stats_latency_bounds_us[i] / 1e6, (unsigned long long)cum);
    }
    cum += l->bucket[STATS_LAT_BUCKETS - 1];
    evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                        (unsigned long long)cum);
    evbuffer_add_printf(out, "%s_sum%s%s%s %.6f\n", name, labels[0] ? "{" : "", labels,
                        labels[0] ? "}" : "", (double)l->sum_us / 1e6);
    evbuffer_add_printf(out, "%s_count%s%s%s %llu\n", name, labels[0] ? "{" : "", labels,
                        labels[0] ? "}" : "", (unsigned long long)cum);
}

enum server_metric {
    SM_UP = 0,
    SM_DRAINING = 1,
    SM_CHECKS = 2,
    SM_TRAFFIC_FAILURES = 3,
    SM_ACTIVE = 4,
    SM_REQUESTS = 5,
    SM_RETRIES = 6,
    SM_DURATION = 7,
};

static const struct {
    const char *name, *type, *help;
} server_metrics[] = {
    {"clonegate_server_up", "gauge", "1 while the clone passes its checks."},
    {"clonegate_server_draining", "gauge", "1 while an operator drains the clone."},
    {"clonegate_server_checks_total", "counter", "Active health checks of the clone, by result."},
    {"clonegate_server_traffic_failures_total", "counter",
     "Failures seen on requests sent to the clone."},
    {"clonegate_server_active_requests", "gauge", "Requests in flight to the clone."},
    {"clonegate_server_requests_total", "counter",
     "Requests that ended on the clone: answered by it, or with 502/504 after it failed."},
    {"clonegate_server_retries_total", "counter", "Attempts on the clone that were a retry."},
    {"clonegate_server_response_duration_seconds", "histogram",
     "Time from sending a request to the clone to the answer's last byte."},
};

/* One counter or gauge without labels: its HELP, TYPE and value. */
static void metric_one(struct evbuffer *out, const char *name, const char *type, const char *help,
                       uint64_t v)
{
    metric_head(out, name, type, help);
    metric_value(out, name, "", v);
}

static void cache_metrics(const struct stats_admin *a, struct evbuffer *out,
                          const struct cache_totals *ct)
{
    const struct redis_totals *r = &ct->redis;
    char label[64];

    metric_one(out, "clonegate_cache_enabled", "gauge", "1 when the cache was on at start.",
               a->cache != NULL);
    metric_head(out, "clonegate_cache_requests_total", "counter",
                "Requests answered, by Cache-Status outcome (hit, or the fwd= reason).");
    for (unsigned i = 0; i < STATS_CS_COUNT; i++) {
        snprintf(label, sizeof(label), "cache_status=\"%s\"", cache_status_names[i]);
        metric_value(out, "clonegate_cache_requests_total", label, ct->outcome[i]);
    }
    metric_one(out, "clonegate_cache_l2_hits_total", "counter",
               "Entries found in Redis after the in-process cache missed.", ct->l2_hits);
    metric_one(out, "clonegate_cache_stale_served_total", "counter",
               "Stale answers sent (max-stale, stale-while-revalidate, stale-if-error).",
               ct->stale_served);
    metric_one(out, "clonegate_cache_revalidated_total", "counter",
               "Stored entries refreshed by a 304 from a clone.", ct->revalidated);
    metric_one(out, "clonegate_cache_stores_total", "counter", "Responses stored.", ct->stores);
    metric_one(out, "clonegate_cache_stored_bytes_total", "counter",
               "Body bytes of the responses stored.", ct->store_bytes);
    metric_one(out, "clonegate_cache_not_stored_total", "counter", "Responses judged not storable.",
               ct->not_stored);
    metric_one(out, "clonegate_cache_stores_aborted_total", "counter",
               "Stores abandoned: the response ended early or outgrew max_object_size.",
               ct->stores_aborted);
    metric_one(out, "clonegate_cache_coalesced_waits_total", "counter",
               "Requests that waited on another request's fill of the same entry.", ct->coalesced);
    metric_one(out, "clonegate_cache_lock_timeouts_total", "counter",
               "Waits on a fill that gave up after cache.lock_timeout.", ct->lock_timeouts);
    metric_one(out, "clonegate_cache_invalidations_total", "counter",
               "URLs invalidated by unsafe methods.", ct->invalidations);
    metric_one(out, "clonegate_cache_background_refreshes_total", "counter",
               "Stale-while-revalidate refreshes started.", ct->background_refreshes);
    metric_one(out, "clonegate_cache_waiting_requests", "gauge", "Requests waiting on a fill now.",
               ct->waiting);
    metric_one(out, "clonegate_cache_l1_entries", "gauge", "Entries in the in-process cache.",
               ct->l1.entries);
    metric_one(out, "clonegate_cache_l1_bytes", "gauge",
               "Memory charged to the in-process cache's entries.", ct->l1.bytes);
    metric_one(out, "clonegate_cache_l1_capacity_bytes", "gauge",
               "The in-process cache's budget (cache.memory).", ct->l1.capacity);
    metric_one(out, "clonegate_cache_l1_evictions_total", "counter",
               "Entries evicted from the in-process cache to stay within budget.",
               ct->l1.evictions);
    metric_one(out, "clonegate_cache_l1_expired_total", "counter",
               "Entries dropped from the in-process cache once past keeping.", ct->l1.expired);

    const struct purge_stats *p = &ct->purge;
    metric_head(out, "clonegate_cache_purge_requests_total", "counter",
                "Purges asked of this instance (PURGE method and admin /purge), by kind.");
    static const struct {
        enum cache_purge_kind kind;
        const char *name;
    } kinds[] = {
        {CACHE_PURGE_URL, "url"}, {CACHE_PURGE_PREFIX, "prefix"}, {CACHE_PURGE_TAG, "tag"}};
    for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        snprintf(label, sizeof(label), "kind=\"%s\"", kinds[i].name);
        metric_value(out, "clonegate_cache_purge_requests_total", label, p->by_kind[kinds[i].kind]);
    }
    metric_one(out, "clonegate_cache_purge_soft_total", "counter",
               "Purges asked here that marked entries stale instead of removing them.", p->soft);
    metric_one(out, "clonegate_cache_purge_entries_total", "counter",
               "Entries purged (as Redis counted them, else this L1).", p->entries);
    metric_one(out, "clonegate_cache_purge_refused_total", "counter",
               "PURGE requests refused: client outside cache.purge_allow.", p->refused);
    metric_one(out, "clonegate_cache_purge_messages_received_total", "counter",
               "Purges and stores announced by other instances, applied to this L1.", p->messages);
    metric_one(out, "clonegate_cache_purge_l1_drops_total", "counter",
               "Times this L1 was emptied because the invalidation channel dropped or came back.",
               p->l1_drops);
    metric_one(out, "clonegate_cache_purge_queued", "gauge",
               "Purges and invalidations Redis could not take, waiting to be replayed there.",
               p->queued);
    metric_one(out, "clonegate_cache_purge_replayed_total", "counter",
               "Purges and invalidations applied to Redis once it was back.", p->replayed);
    metric_one(out, "clonegate_cache_purge_overflows_total", "counter",
               "Purges not kept for Redis (queue full): a purge of everything replaced them.",
               p->overflows);

    metric_one(out, "clonegate_redis_configured", "gauge", "1 when cache.redis names a Redis.",
               a->cache && a->redis_addr[0] != '\0');
    metric_head(out, "clonegate_redis_links", "gauge",
                "Workers' Redis links, by state (down, connecting, up, slow).");
    static const enum store_redis_state states[] = {STORE_REDIS_DOWN, STORE_REDIS_CONNECTING,
                                                    STORE_REDIS_UP, STORE_REDIS_SLOW};
    for (unsigned i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        snprintf(label, sizeof(label), "state=\"%s\"", store_redis_state_name(states[i]));
        metric_value(out, "clonegate_redis_links", label, r->by_state[states[i]]);
    }
    metric_head(out, "clonegate_redis_gets_total", "counter",
                "Redis lookups answered, by result (found, not_found, failed).");
    metric_value(out, "clonegate_redis_gets_total", "result=\"found\"", r->found);
    metric_value(out, "clonegate_redis_gets_total", "result=\"not_found\"", r->not_found);
    metric_value(out, "clonegate_redis_gets_total", "result=\"failed\"", r->failed);
    metric_one(out, "clonegate_redis_get_timeouts_total", "counter",
               "Redis lookups with no reply within cache.redis_timeout.", r->timeouts);
    metric_one(out, "clonegate_redis_gets_skipped_total", "counter",
               "Redis lookups not tried: Redis down, slow or overloaded.", r->skipped);
    metric_one(out, "clonegate_redis_sets_total", "counter", "Entries written to Redis.", r->sets);
    metric_one(out, "clonegate_redis_sets_skipped_total", "counter",
               "Entries not written to Redis: down, slow, or too many bytes awaiting its replies.",
               r->sets_skipped);
    metric_one(out, "clonegate_redis_sets_too_large_total", "counter",
               "Entries not written to Redis: larger than its proto-max-bulk-len.",
               r->sets_too_large);
    metric_one(out, "clonegate_redis_purges_total", "counter",
               "Purges sent to Redis by the workers (PURGE requests, unsafe methods).", r->purges);
    metric_one(out, "clonegate_redis_published_total", "counter",
               "Invalidations the workers published on the cg:invalidate channel.", r->published);
    metric_one(out, "clonegate_redis_messages_total", "counter",
               "Invalidation messages received on the workers' links.", r->messages);
    metric_one(out, "clonegate_redis_errors_total", "counter", "Error replies from Redis.",
               r->errors);
    metric_one(out, "clonegate_redis_connects_total", "counter", "Redis links made.", r->connects);
    metric_one(out, "clonegate_redis_reconnects_total", "counter",
               "Redis links made beyond each worker's first.", r->reconnects);
    metric_one(out, "clonegate_redis_disconnects_total", "counter", "Redis links lost.",
               r->disconnects);
    metric_head(out, "clonegate_redis_get_duration_seconds", "summary",
                "Round trip of the Redis lookups that were answered.");
    evbuffer_add_printf(out, "clonegate_redis_get_duration_seconds_sum %.6f\n",
                        (double)r->rtt_us_sum / 1e6);
    metric_value(out, "clonegate_redis_get_duration_seconds_count", "", r->rtt_count);
}

static void tls_metrics(struct evbuffer *out)
{
    struct tls_totals t;
    sum_tls(&t);
    metric_one(out, "clonegate_tls_handshakes_total", "counter",
               "TLS handshakes completed with clients.", t.handshakes);
    metric_one(out, "clonegate_tls_resumed_total", "counter",
               "Of those, handshakes that resumed a session.", t.resumed);
    metric_one(out, "clonegate_tls_failures_total", "counter",
               "TLS handshakes with clients that failed (plain HTTP included).", t.failures);
    metric_one(out, "clonegate_tls_plaintext_total", "counter",
               "Of those, plain HTTP sent to a TLS port (answered 400).", t.plaintext);
    metric_one(out, "clonegate_tls_timeouts_total", "counter",
               "TLS handshakes not finished within header_timeout.", t.timeouts);
}

static void serve_metrics(struct stats_admin *a, struct evhttp_request *req, struct evbuffer *out)
{
    struct health_server_view *views = calloc(STATS_MAX_VIEWS, sizeof(*views)); /* freed below */
    struct totals *t = malloc(sizeof(*t));                                      /* freed below */
    struct server_totals *st = malloc(sizeof(*st));                             /* freed below */
    struct cache_totals *ct = malloc(sizeof(*ct));                              /* freed below */
    if (!views || !t || !st || !ct) {
        free(views);
        free(t);
        free(st);
        free(ct);
        reply_error(req, 500, "Internal Server Error");
        return;
    }
    int64_t now = (int64_t)time(NULL);
    size_t n = health_snapshot(a->hl, views, STATS_MAX_VIEWS);
    sum_workers(a, t, now);

    metric_head(out, "clonegate_uptime_seconds", "gauge", "Seconds since the proxy started.");
    metric_value(out, "clonegate_uptime_seconds", "", (uint64_t)(now - a->started));
    metric_head(out, "clonegate_connections_open", "gauge", "Client connections open now.");
    metric_value(out, "clonegate_connections_open", "", t->connections_open);
    metric_head(out, "clonegate_connections_total", "counter", "Client connections accepted.");
    metric_value(out, "clonegate_connections_total", "", t->connections_total);
    metric_head(out, "clonegate_accept_pauses_total", "counter",
                "Times accepting paused at max_connections.");
    metric_value(out, "clonegate_accept_pauses_total", "", t->accept_pauses);
    metric_head(out, "clonegate_connections_refused_total", "counter",
                "Client connections refused because max_connections held past queue_timeout.");
    metric_value(out, "clonegate_connections_refused_total", "", t->refused);
    metric_head(out, "clonegate_requests_total", "counter",
                "Requests answered, by status class (none: closed without a status).");
    static const char *const classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (unsigned i = 0; i < 6; i++) {
        char label[24];
        snprintf(label, sizeof(label), "class=\"%s\"", classes[i]);
        metric_value(out, "clonegate_requests_total", label, t->status_class[i]);
    }
    metric_head(out, "clonegate_received_bytes_total", "counter", "Bytes read from clients.");
    metric_value(out, "clonegate_received_bytes_total", "", t->bytes_in);
    metric_head(out, "clonegate_sent_bytes_total", "counter", "Bytes written to clients.");
    metric_value(out, "clonegate_sent_bytes_total", "", t->bytes_out);
    metric_head(out, "clonegate_upstream_failures_total", "counter",
                "Attempts to clones that failed.");
    metric_value(out, "clonegate_upstream_failures_total", "", t->upstream_failures);
    metric_head(out, "clonegate_upstream_retries_total", "counter",
                "Attempts that were a retry on another clone.");
    metric_value(out, "clonegate_upstream_retries_total", "", t->retries);
    metric_head(out, "clonegate_request_duration_seconds", "histogram",
                "Time from a request's first byte to its answer's last byte.");
    metric_histogram(out, "clonegate_request_duration_seconds", "", &t->latency);
    sum_cache(a, ct);
    cache_metrics(a, out, ct);
    tls_metrics(out);

    for (unsigned m = 0; m < sizeof(server_metrics) / sizeof(server_metrics[0]); m++) {
        const char *name = server_metrics[m].name;
        metric_head(out, name, server_metrics[m].type, server_metrics[m].help);
        for (size_t i = 0; i < n; i++) {
            const struct health_server_view *v = &views[i];
            char label[CONFIG_ADDR_TEXT + 32];
            snprintf(label, sizeof(label), "server=\"%s\"", v->addr);
            sum_server(a, v->id, st, now);
            switch ((enum server_metric)m) {
            case SM_UP:
                metric_value(out, name, label, v->up);
                break;
            case SM_DRAINING:
                metric_value(out, name, label, v->draining);
                break;
            case SM_CHECKS: {
                char with[CONFIG_ADDR_TEXT + 64];
                snprintf(with, sizeof(with), "%s,result=\"passed\"", label);
                metric_value(out, name, with, v->checks_passed);
                snprintf(with, sizeof(with), "%s,result=\"failed\"", label);
                metric_value(out, name, with, v->checks_failed);
                break;
            }
            case SM_TRAFFIC_FAILURES:
                metric_value(out, name, label, v->traffic_failures);
                break;
            case SM_ACTIVE:
                metric_value(out, name, label, st->active);
                break;
            case SM_REQUESTS:
                metric_value(out, name, label, st->requests);
                break;
            case SM_RETRIES:
                metric_value(out, name, label, st->retries);
                break;
            case SM_DURATION:
                metric_histogram(out, name, label, &st->latency);
                break;
            }
        }
    }
    free(views);
    free(t);
    free(st);
    free(ct);
    reply(req, 200, "OK", out, "text/plain; version=0.0.4; charset=utf-8");
}

/* ------------------------------------------------------------ dashboard */

/* The whole page: no external asset, it polls /stats every 2 s. */
static const char dashboard_html[] =
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>Clonegate</title>\n<style>\n"
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\n"
    "header{background:#1d2330;color:#fff;padding:10px 16px}header b{font-size:18px}\n"
    "main{padding:12px 16px;max-width:1100px}\n"
    ".cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px}\n"
    ".card{background:#fff;border-radius:6px;padding:10px 14px;min-width:120px;"
    "box-shadow:0 1px 2px #0002}\n"
    ".card .v{font-size:22px;font-weight:600}.card .k{color:#667;font-size:12px}\n"
    "table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}\n"
    "th,td{padding:6px 8px;text-align:left;border-bottom:1px solid #eee;white-space:nowrap}\n"
    ".wrap{overflow-x:auto}.up{color:#0a7d28;font-weight:600}.down{color:#c0162c;"
    "font-weight:600}.draining,.slow,.connecting{color:#b26a00;font-weight:600}"
    ".removed,.off{color:#889}\n"
    "#err{color:#c0162c}\n</style></head><body>\n"
    "<header><b>Clonegate</b> <span id=\"ver\"></span> <span id=\"err\"></span></header>\n"
    "<main><div class=\"cards\">\n"
    "<div class=\"card\"><div class=\"v\" id=\"rate\">-</div><div class=\"k\">requests/s</div>"
    "</div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"p50\">-</div><div class=\"k\">p50 ms (1 min)</div>"
    "</div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"p99\">-</div><div class=\"k\">p99 ms (1 min)</div>"
    "</div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"err5\">-</div><div class=\"k\">5xx</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"hit\">n/a</div><div class=\"k\">cache hit ratio"
    "</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"conns\">-</div><div class=\"k\">connections open"
    "</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"l1n\">-</div><div class=\"k\">cached entries (L1)"
    "</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"l1b\">-</div><div class=\"k\">L1 memory MiB"
    "</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"stores\">-</div><div class=\"k\">stored / "
    "coalesced</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"purges\">-</div><div class=\"k\">purges / "
    "entries purged</div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"redis\">-</div><div class=\"k\">Redis"
    " <span id=\"rtt\"></span></div></div>\n"
    "<div class=\"card\"><div class=\"v\" id=\"tls\">-</div><div class=\"k\">TLS handshakes"
    " / resumed</div></div>\n"
    "</div><div class=\"wrap\"><table><thead><tr><th>clone</th><th>state</th><th>req/s</th>"
    "<th>p50 ms</th><th>p99 ms</th><th>active</th><th>failures</th><th>checks ok/failed</th>"
    "<th>last error</th></tr></thead><tbody id=\"servers\"></tbody></table></div>\n"
    "<p id=\"up\"></p></main>\n<script>\n"
    "let last=null;\n"
    "function esc(s){return String(s).replace(/[&<>\"]/g,c=>({'&':'&amp;','<':'&lt;',"
    "'>':'&gt;','\"':'&quot;'}[c]));}\n"
    "function rate(now,prev,dt){return prev===undefined||dt<=0?'-':((now-prev)/dt).toFixed(1);}\n"
    "async function tick(){\n"
    " try{const r=await fetch('stats'+location.search,{cache:'no-store'});const s=await r.json();\n"
    "  const t=Date.now()/1000;const dt=last?t-last.t:0;\n"
    "  document.getElementById('ver').textContent='v'+s.version+' \\u00b7 '+s.workers+"
    "' worker(s)'+(s.draining?' \\u00b7 draining':'');\n"
    "  document.getElementById('err').textContent='';\n"
    "  document.getElementById('rate').textContent=rate(s.requests.total,"
    "last&&last.s.requests.total,dt);\n"
    "  document.getElementById('p50').textContent=s.latency_ms.p50.toFixed(2);\n"
    "  document.getElementById('p99').textContent=s.latency_ms.p99.toFixed(2);\n"
    "  document.getElementById('err5').textContent=s.requests.by_class['5xx'];\n"
    "  document.getElementById('conns').textContent=s.connections.open;\n"
    "  const c=s.cache,rd=c.redis,looked=Object.keys(c.requests_by_cache_status).reduce("
    "(n,k)=>k==='bypass'?n:n+c.requests_by_cache_status[k],0);\n"
    "  document.getElementById('hit').textContent=!c.enabled?'off':looked?"
    "(100*c.hit_ratio).toFixed(1)+'%':'-';\n"
    "  document.getElementById('l1n').textContent=c.enabled?c.l1.entries:'-';\n"
    "  document.getElementById('l1b').textContent=c.enabled?(c.l1.bytes/1048576).toFixed(1)+"
    "' / '+(c.l1.capacity/1048576).toFixed(0):'-';\n"
    "  document.getElementById('stores').textContent=c.stores+' / '+c.coalesced_waits;\n"
    "  document.getElementById('purges').textContent=c.enabled?c.purge.requests+' / '+"
    "c.purge.entries:'-';\n"
    "  const re=document.getElementById('redis');re.textContent=rd.state;"
    "re.className='v '+rd.state;\n"
    "  document.getElementById('rtt').textContent=rd.configured&&rd.gets?"
    "rd.rtt_ms.toFixed(2)+' ms':'';\n"
    "  document.getElementById('tls').textContent=s.tls.handshakes+' / '+s.tls.resumed;\n"
    "  const prev={};if(last)for(const x of last.s.servers)prev[x.address]=x.requests;\n"
    "  document.getElementById('servers').innerHTML=s.servers.map(x=>'<tr data-server=\"'+"
    "esc(x.address)+'\"><td>'+esc(x.address)+'</td><td class=\"state '+x.state+'\">'+x.state+"
    "'</td><td>'+rate(x.requests,prev[x.address],dt)+'</td><td>'+x.latency_ms.p50.toFixed(2)+"
    "'</td><td>'+x.latency_ms.p99.toFixed(2)+'</td><td>'+x.active+'</td><td>'+"
    "x.traffic_failures+'</td><td>'+x.checks_passed+' / '+x.checks_failed+'</td><td>'+"
    "esc(x.last_error)+'</td></tr>').join('');\n"
    "  document.getElementById('up').textContent='up '+s.uptime+' s, updated '+"
    "new Date().toLocaleTimeString();\n"
    "  last={s:s,t:t};\n"
    " }catch(e){document.getElementById('err').textContent='\\u2014 no answer from /stats';}\n"
    "}\n"
    "tick();setInterval(tick,2000);\n"
    "</script></body></html>\n";

/* Reads "<addr>/drain" or "<addr>/ready" (<rest>, the path after
 * "/servers/") into <addr> and *<drain>. 0, or -1 when it is neither. */
static int parse_server_action(const char *rest, char *addr, size_t addr_size, bool *drain)
{
    const char *slash = strrchr(rest, '/');
    if (!slash || slash == rest || (size_t)(slash - rest) >= addr_size)
        return -1;
    if (strcmp(slash + 1, "drain") == 0)
        *drain = true;
    else if (strcmp(slash + 1, "ready") == 0)
        *drain = false;
    else
        return -1;
    memcpy(addr, rest, (size_t)(slash - rest));
    addr[slash - rest] = '\0';
    return 0;
}

/* POST /servers/<addr>/drain|ready, <addr> and <drain> from
 * parse_server_action() */
static void serve_server_action(struct stats_admin *a, struct evhttp_request *req,
                                struct evbuffer *out, const char *addr, bool drain)
{
    if (health_set_draining(a->hl, addr, drain) == -1) {
        evbuffer_add_printf(out, "{\"error\":\"no such server\",\"address\":");
        json_string(out, addr);
        evbuffer_add_printf(out, "}\n");
        reply(req, 404, "Not Found", out, "application/json");
        return;
    }
    evbuffer_add_printf(out, "{\"address\":");
    json_string(out, addr);
    evbuffer_add_printf(out, ",\"draining\":%s}\n", drain ? "true" : "false");
    reply(req, 200, "OK", out, "application/json");
}

/* Whether the client may use the admin listener: its address in
 * stats.allow (when set) and the bearer token of stats.auth (when set). */
static bool allowed(const struct stats_admin *a, struct evhttp_request *req)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (a->allow_count > 0) {
        char *host = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(evhttp_request_get_connection(req), &host, &port);
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (host && inet_pton(AF_INET, host, &s4->sin_addr) == 1)
            s4->sin_family = AF_INET;
        else if (host && inet_pton(AF_INET6, host, &s6->sin6_addr) == 1)
            s6->sin6_family = AF_INET6;
        else
            return false;
        if (!config_cidr_match(a->allow, a->allow_count, (const struct sockaddr *)&ss))
            return false;
    }
    if (a->token[0] != '\0') {
        const char *auth =
            evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
        char query_token[sizeof(a->token)] = "";
        const char *given = NULL;
        if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
            given = auth + 7;
        } else if (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD) {
            /* a browser opening the dashboard passes it as ?token= (never a
             * POST: a link must not carry an action) */
            const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
            struct evkeyvalq args;
            if (q && evhttp_parse_query_str(q, &args) == 0) {
                const char *t = evhttp_find_header(&args, "token");
                if (t)
                    snprintf(query_token, sizeof(query_token), "%s", t);
                evhttp_clear_headers(&args);
                given = query_token;
            }
        }
        if (!given)
            return false;
        /* compare in constant time: the token is a secret */
        size_t want = strlen(a->token), got = strlen(given);
        unsigned char diff = (unsigned char)(want != got);
        for (size_t i = 0; i < want; i++)
            diff |= (unsigned char)(a->token[i] ^ (i < got ? given[i] : 0));
        if (diff)
            return false;
    }
    return true;
}

/* Whether a POST comes from a page of another site in a browser (a form or
 * script aimed at the operator's loopback listener): its Origin names
 * another host than the request's Host, or Sec-Fetch-Site says so. Tools
 * such as curl send neither. */
static bool cross_site(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *site = evhttp_find_header(h, "Sec-Fetch-Site");
    if (site && strcmp(site, "same-origin") != 0 && strcmp(site, "none") != 0)
        return true;
    const char *origin = evhttp_find_header(h, "Origin");
    if (!origin)
        return false;
    const char *host = evhttp_find_header(h, "Host");
    const char *sep = strstr(origin, "://");
    if (!host || !sep)
        return true; /* "null" (a sandboxed page) or no Host to compare with */
    return strcasecmp(sep + 3, host) != 0;
}

/* Reads the bearer token from <path> into a->token (first line, trimmed).
 * 0, or -1 with the reason logged. */
static int load_token(struct stats_admin *a, const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        log_warn("stats.auth: cannot read %s", path);
        return -1;
    }
    if (!fgets(a->token, sizeof(a->token), f))
        a->token[0] = '\0';
    fclose(f);
    a->token[strcspn(a->token, "\r\n")] = '\0';
    if (a->token[0] == '\0') {
        log_warnx("stats.auth: %s holds no token", path);
        return -1;
    }
    return 0;
}

static void stats_on_request(struct evhttp_request *req, void *arg)
{
    struct stats_admin *a = arg;
    const char *uri = evhttp_request_get_uri(req);
    char path[256];
    size_t len = strcspn(uri, "?");
    if (len >= sizeof(path))
        len = sizeof(path) - 1;
    memcpy(path, uri, len);
    path[len] = '\0';
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    char addr[CONFIG_ADDR_TEXT];
    bool drain = false;

    /* a refused client learns nothing, not even which paths exist */
    if (!allowed(a, req)) {
        reply_error(req, 403, "Forbidden");
        return;
    }
    bool server_action = strncmp(path, "/servers/", 9) == 0 &&
                         parse_server_action(path + 9, addr, sizeof(addr), &drain) == 0;
    bool get_path = strcmp(path, "/") == 0 || strcmp(path, "/stats") == 0 ||
                    strcmp(path, "/metrics") == 0 || strcmp(path, "/health") == 0;
    bool post_path = (strcmp(path, "/purge") == 0 && a->purge) || server_action;
    if (!get_path && !post_path) {
        reply_error(req, 404, "Not Found");
        return;
    }
    bool method_ok =
        get_path ? cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD : cmd == EVHTTP_REQ_POST;
    if (!method_ok) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
                          get_path ? "GET, HEAD" : "POST");
        reply_error(req, 405, "Method Not Allowed");
        return;
    }
    if (cmd == EVHTTP_REQ_POST && cross_site(req)) {
        log_warnx("admin listener: POST %s refused: sent by a page of another site", path);
        reply_error(req, 403, "Forbidden");
        return;
    }
    if (strcmp(path, "/purge") == 0) {
        purge_admin_request(a->purge, req);
        return;
    }

    struct evbuffer *out = evbuffer_new(); /* freed below; evhttp copies it out */
    if (!out) {
        reply_error(req, 500, "Internal Server Error");
        return;
    }
    if (server_action) {
        serve_server_action(a, req, out, addr, drain);
    } else if (strcmp(path, "/") == 0) {
        evbuffer_add(out, dashboard_html, sizeof(dashboard_html) - 1);
        reply(req, 200, "OK", out, "text/html; charset=utf-8");
    } else if (strcmp(path, "/stats") == 0) {
        serve_stats(a, req, out);
    } else if (strcmp(path, "/metrics") == 0) {
        serve_metrics(a, req, out);
    } else {
        bool draining = __atomic_load_n(a->draining, __ATOMIC_RELAXED);
        evbuffer_add_printf(out, draining ? "draining\n" : "ok\n");
        reply(req, draining ? 503 : 200, draining ? "Service Unavailable" : "OK", out,
              "text/plain");
    }
    evbuffer_free(out);
}

/* accept() failed (out of file descriptors, most likely): libevent would
 * try again at once, for ever, and log each time. Accepting pauses a moment
 * instead, with a warning now and then. */
static struct stats_admin *accepting_admin; /* the one admin listener set; its thread only */

static void stats_on_accept_error(struct evconnlistener *l, void *arg)
{
    /* <arg> is the evhttp, whose callbacks own the listener's argument */
    struct stats_admin *a = accepting_admin;
    int err = EVUTIL_SOCKET_ERROR();
    (void)l;
    if (!a || a->http != arg)
        return;
    time_t now = time(NULL);
    if (now - a->accept_warned >= STATS_ADMIN_WARN_EVERY_S) {
        log_warnx("admin listener: accept: %s; pausing %d ms", evutil_socket_error_to_string(err),
                  STATS_ADMIN_ACCEPT_WAIT_MS);
        a->accept_warned = now;
    }
    for (unsigned i = 0; i < a->listener_count; i++)
        evconnlistener_disable(a->listeners[i]);
    struct timeval wait = {0, STATS_ADMIN_ACCEPT_WAIT_MS * 1000};
    evtimer_add(a->accept_retry, &wait);
}

static void stats_on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    struct stats_admin *a = arg;
    (void)fd;
    (void)what;
    for (unsigned i = 0; i < a->listener_count; i++)
        evconnlistener_enable(a->listeners[i]);
}

struct stats_admin *stats_admin_start(struct event_base *base, const struct config *cfg,
                                      struct health *hl, const int *draining)
{
    struct stats_admin *a = calloc(1, sizeof(*a)); /* freed by stats_admin_free() */
    if (!a)
        return NULL;
    pthread_mutex_init(&a->redis_lock, NULL);
    pthread_mutex_init(&a->base_lock, NULL);
    a->hl = hl;
    a->draining = draining;
    if (cfg->cache_enabled)
        snprintf(a->redis_addr, sizeof(a->redis_addr), "%s", cfg->cache_redis);
    a->started = time(NULL);
    a->workers = cfg->workers;
    memcpy(a->allow, cfg->stats_allow, sizeof(a->allow));
    a->allow_count = cfg->stats_allow_count;
    if (cfg->stats_listen_count == 0)
        return a;
    if (cfg->stats_auth[0] != '\0' && load_token(a, cfg->stats_auth) == -1)
        goto fail;
    a->http = evhttp_new(base);
    if (!a->http)
        goto fail;
    evhttp_set_gencb(a->http, stats_on_request, a);
    /* every method reaches stats_on_request(), which answers a wrong one
     * with 405 and Allow (evhttp's own 501 page would carry no no-store) */
    evhttp_set_allowed_methods(a->http, STATS_ADMIN_METHODS);
    /* a client that sends half a request, or stops reading, lets go of its
     * connection after this */
    evhttp_set_timeout(a->http, STATS_ADMIN_TIMEOUT_S);
    a->accept_retry = evtimer_new(base, stats_on_accept_retry, a);
    if (!a->accept_retry)
        goto fail;
    for (unsigned i = 0; i < cfg->stats_listen_count; i++) {
        const struct config_addr *addr = &cfg->stats_listen[i];
        struct evconnlistener *l = evconnlistener_new_bind(
            base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, -1,
            (const struct sockaddr *)&addr->sa, (int)addr->salen);
        if (!l) {
            log_warn("cannot listen on %s for the admin listener", addr->text);
            goto fail;
        }
        if (!evhttp_bind_listener(a->http, l)) {
            evconnlistener_free(l);
            goto fail;
        }
        evconnlistener_set_error_cb(l, stats_on_accept_error);
        a->listeners[a->listener_count++] = l;
        accepting_admin = a;
        log_info("admin listener on %s", addr->text);
    }
    return a;
fail:
    stats_admin_free(a);
    return NULL;
}

void stats_admin_free(struct stats_admin *a)
{
    if (!a)
        return;
    if (accepting_admin == a)
        accepting_admin = NULL;
    if (a->accept_retry)
        event_free(a->accept_retry);
    if (a->http)
        evhttp_free(a->http);
    pthread_mutex_destroy(&a->redis_lock);
    pthread_mutex_destroy(&a->base_lock);
    free(a);
}
