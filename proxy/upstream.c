/*
 * upstream: per-worker keep-alive pools and connects to the clones.
 *
 * Owns the pool (freed when retired and idle of requests), every idle
 * connection in it, and the connections it hands out until they come back
 * through upstream_release(). Borrows the config through a reference taken
 * at creation. One worker thread touches a pool.
 */
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "balancer.h"
#include "health.h"
#include "log.h"
#include "tls.h"

#define UPSTREAM_IDLE_TIMEOUT_S 30 /* an idle pooled connection is closed after this */

TAILQ_HEAD(upstream_idle_list, upstream_conn);

struct upstream_server_state {
    struct upstream_idle_list idle; /* idle connections, most recent first */
    unsigned idle_count;
};

struct upstream_pool {
    struct event_base *base;             /* borrowed from the worker */
    struct config *cfg;                  /* referenced; dropped in pool_free() */
    struct balancer *balancer;           /* owned */
    struct tls_client *tls;              /* referenced: [upstream] tls = yes; NULL plain */
    unsigned count;                      /* servers */
    unsigned live;                       /* connections handed out and not released */
    const struct timeval *idle_tv;       /* common timeout for idle pooled connections */
    bool retired;                        /* no new requests; free when live hits 0 */
    unsigned active[CONFIG_MAX_SERVERS]; /* requests in flight per server */
    struct health_server *health[CONFIG_MAX_SERVERS]; /* borrowed; NULL: always usable */
    struct upstream_server_state servers[CONFIG_MAX_SERVERS];
};

static void conn_free(struct upstream_conn *u)
{
    stream_close(&u->s);
    free(u);
}

/* Closes every idle connection of <pool>. */
static void close_idle(struct upstream_pool *pool)
{
    for (unsigned i = 0; i < pool->count; i++) {
        struct upstream_server_state *s = &pool->servers[i];
        struct upstream_conn *u;
        while ((u = TAILQ_FIRST(&s->idle)) != NULL) {
            TAILQ_REMOVE(&s->idle, u, idle_link);
            conn_free(u);
        }
        s->idle_count = 0;
    }
}

static void pool_free(struct upstream_pool *pool)
{
    tls_client_unref(pool->tls);
    close_idle(pool);
    balancer_free(pool->balancer);
    config_unref(pool->cfg);
    free(pool);
}

struct upstream_pool *upstream_pool_new(struct event_base *base, struct config *cfg,
                                        struct health *hl)
{
    struct upstream_pool *pool = calloc(1, sizeof(*pool)); /* freed by pool_free() */
    if (!pool)
        return NULL;
    pool->balancer = balancer_new(cfg);
    if (!pool->balancer) {
        free(pool);
        return NULL;
    }
    if (cfg->upstream_tls) {
        pool->tls = tls_client_new(cfg, stderr); /* dropped in pool_free() */
        if (!pool->tls) {
            balancer_free(pool->balancer);
            free(pool);
            return NULL;
        }
    }
    pool->base = base;
    pool->cfg = config_ref(cfg);
    pool->count = cfg->server_count;
    for (unsigned i = 0; i < pool->count; i++) {
        TAILQ_INIT(&pool->servers[i].idle);
        pool->health[i] = hl ? health_server_find(hl, &cfg->servers[i].addr) : NULL;
    }
    struct timeval idle = {UPSTREAM_IDLE_TIMEOUT_S, 0};
    pool->idle_tv = event_base_init_common_timeout(base, &idle);
    return pool;
}

void upstream_pool_retire(struct upstream_pool *pool)
{
    if (!pool)
        return;
    pool->retired = true;
    if (pool->live == 0)
        pool_free(pool);
    else
        close_idle(pool);
}

int upstream_pick(struct upstream_pool *pool, uint64_t skip)
{
    bool ramp = pool->cfg->health_slow_start_ms > 0;
    int64_t now = ramp ? health_now_ms() : 0;
    for (unsigned i = 0; i < pool->count; i++) {
        const struct health_server *hs = pool->health[i];
        if (!hs)
            continue;
        if (!health_server_usable(hs))
            skip |= UINT64_C(1) << i;
        else if (ramp)
            balancer_set_weight(pool->balancer, i,
                                health_server_weight(hs, pool->cfg->servers[i].weight, now));
    }
    return balancer_pick(pool->balancer, skip, pool->active);
}

unsigned upstream_server_count(const struct upstream_pool *pool)
{
    return pool->count;
}

int upstream_server_id(const struct upstream_pool *pool, unsigned server)
{
    const struct health_server *hs = server < pool->count ? pool->health[server] : NULL;
    return hs ? health_server_id(hs) : -1;
}

void upstream_report(struct upstream_pool *pool, unsigned server, const char *why)
{
    struct health_server *hs = server < pool->count ? pool->health[server] : NULL;
    if (!hs)
        return;
    if (why)
        health_report_failure(hs, why);
    else
        health_report_success(hs);
}

const char *upstream_server_name(const struct upstream_pool *pool, unsigned server)
{
    return pool->cfg->servers[server].addr.text;
}

/* ------------------------------------------------------------ idle pooled */

static void idle_drop(struct upstream_conn *u, const char *why)
{
    struct upstream_server_state *s = &u->pool->servers[u->server];
    log_debug("%s: pooled connection to %s closed: %s", __func__,
              upstream_server_name(u->pool, u->server), why);
    TAILQ_REMOVE(&s->idle, u, idle_link);
    s->idle_count--;
    conn_free(u);
}

static void upstream_on_idle_read(struct stream *st, void *arg)
{
    (void)st;
    /* a clone must not speak unasked; the connection can no longer be trusted */
    idle_drop(arg, "unexpected bytes");
}

static void upstream_on_idle_event(struct stream *st, enum stream_event what, void *arg)
{
    (void)st;
    idle_drop(arg, what == STREAM_EV_READ_TIMEOUT ? "idle timeout" : "closed by the clone");
}

/* ------------------------------------------------------------ hand out/back */

static struct upstream_conn *connect_new(struct upstream_pool *pool, unsigned server)
{
    const struct config_addr *addr = &pool->cfg->servers[server].addr;
    struct upstream_conn *u = calloc(1, sizeof(*u)); /* freed in conn_free() */
    if (!u)
        return NULL;
    u->pool = pool;
    u->server = server;
    if (stream_connect(&u->s, pool->base, (const struct sockaddr *)&addr->sa, addr->salen) == -1) {
        int saved = errno;
        free(u);
        errno = saved;
        return NULL;
    }
    if (pool->tls) {
        /* TLS to the clone: the handshake runs inside the first writes */
        SSL *ssl = tls_client_ssl(pool->tls, addr->text);
        if (!ssl || stream_start_tls(&u->s, ssl, false) == -1) {
            stream_close(&u->s);
            free(u);
            errno = EPROTO;
            return NULL;
        }
    }
    return u;
}

struct upstream_conn *upstream_acquire(struct upstream_pool *pool, unsigned server)
{
    struct upstream_server_state *s = &pool->servers[server];
    struct upstream_conn *u = TAILQ_FIRST(&s->idle);
    if (u) {
        TAILQ_REMOVE(&s->idle, u, idle_link);
        s->idle_count--;
        /* reading stays on: the caller swaps the callbacks before the loop
         * runs again, and an epoll_ctl pair per request is saved */
        stream_set_callbacks(&u->s, NULL, NULL, NULL, NULL);
        u->requests++;
    } else {
        u = connect_new(pool, server);
        if (!u)
            return NULL;
    }
    pool->active[server]++;
    pool->live++;
    return u;
}

void upstream_release(struct upstream_conn *u, bool reusable)
{
    if (!u)
        return;
    struct upstream_pool *pool = u->pool;
    struct upstream_server_state *s = &pool->servers[u->server];
    pool->active[u->server]--;
    pool->live--;

    if (reusable && !pool->retired && s->idle_count < pool->cfg->keepalive &&
        stream_is_open(&u->s) && !u->s.eof && evbuffer_get_length(u->s.in) == 0 &&
        evbuffer_get_length(u->s.out) == 0) {
        stream_set_callbacks(&u->s, upstream_on_idle_read, NULL, upstream_on_idle_event, u);
        /* The read that ended the response re-armed the persistent read
         * event with its timeout just now: when that is already the idle
         * one (same duration, same common timeout), re-adding it would
         * change nothing but cost a timer operation per request. */
        if (u->s.read_tv == pool->idle_tv && !u->s.write_pending)
            u->s.write_tv = NULL;
        else
            stream_set_timeouts(&u->s, pool->idle_tv, NULL);
        u->s.read_high = 0;
        stream_read_enable(&u->s, true);
        TAILQ_INSERT_HEAD(&s->idle, u, idle_link);
        s->idle_count++;
    } else {
        conn_free(u);
    }
    if (pool->retired && pool->live == 0)
        pool_free(pool);
}
