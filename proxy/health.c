/*
 * health: active checks on the health thread, passive marks from workers,
 * and the shared per-server state both feed.
 *
 * Owns the health thread and its event_base, one struct health_check per
 * configured server (health thread only) and every struct health_server
 * ever configured (kept until health_free(), so a pointer a worker holds
 * stays valid across reloads). The thread owns the checks; the servers'
 * fields are atomics (or, for last_error, under the server's mutex) because
 * workers read them per request and write them on failures. The server
 * list itself only grows, under hl->lock. A server a reload leaves out
 * keeps its struct (old pools may still point at it) but not its state:
 * named again later, it starts as a new one (forget_locked()).
 */
#include "health.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "stream.h"
#include "tls.h"

#define HEALTH_MAX_SERVERS        256   /* states kept: configured now plus removed by reloads */
#define HEALTH_STATUS_MAX         1024  /* the status line must come within this many bytes */
#define HEALTH_SCALE              16    /* weight units while slow start ramps a server up */
#define HEALTH_LOCAL_ERROR_LOG_MS 10000 /* a skipped check is logged at most this often */

struct health_check;

struct health_server {
    int id;                     /* index in hl->servers, stable */
    struct config_addr addr;    /* copy of the configured address */
    int up;                     /* atomic: 1 takes requests (unless draining) */
    int draining;               /* atomic: 1 while an operator drains it */
    int in_config;              /* atomic: 1 while the configuration names it */
    unsigned fall;              /* atomic: copy of health.fall */
    unsigned slow_start_ms;     /* atomic: copy of health.slow_start */
    unsigned consecutive;       /* atomic: check passes while down / failures while up */
    unsigned traffic_fails_row; /* atomic: request failures in a row */
    uint64_t checks_passed;     /* atomic */
    uint64_t checks_failed;     /* atomic */
    uint64_t traffic_failures;  /* atomic */
    int64_t last_change;        /* atomic: unix seconds */
    int64_t up_since_ms;        /* atomic: health_now_ms() when it last came up */
    unsigned generation;        /* atomic: bumped when a reload names it again (a fresh start) */
    pthread_mutex_t lock;       /* guards last_error */
    char last_error[96];        /* last failure's reason */
    struct health_check *check; /* health thread only; NULL when not checked */
};

struct health_check {
    struct health *hl;        /* borrowed: the owner */
    struct health_server *hs; /* borrowed: what is checked */
    struct event *timer;      /* owned: every interval */
    struct event *deadline;   /* owned: timeout of the attempt under way */
    struct event *kick;       /* owned: the first attempt, at once */
    struct stream s;          /* the attempt's connection, open while busy */
    bool busy;                /* an attempt is under way */
    unsigned generation;      /* hs->generation when made: results for an older one are dropped */
};

struct health {
    struct event_base *base;      /* owned; thread-safe (others event_active on it) */
    pthread_t thread;             /* the health thread */
    bool started;                 /* thread running */
    struct event *reload_ev;      /* owned: applies pending */
    struct event *stop_ev;        /* owned: ends the loop (made active by health_stop) */
    struct config *cfg;           /* referenced: what the thread checks by */
    struct tls_client *tls;       /* referenced: checks over TLS ([upstream] tls); NULL plain */
    const struct config *tls_cfg; /* the cfg <tls> was made for */
    pthread_mutex_t lock;         /* guards servers/count and pending */
    struct config *pending;       /* referenced: handed over by health_reload() */
    struct health_server *servers[HEALTH_MAX_SERVERS]; /* owned, only appended */
    size_t count;
    int64_t local_error_logged_ms; /* health thread: last "check skipped" warning */
    health_fresh_fn on_fresh;      /* told of each server a reload starts afresh; NULL none */
    void *on_fresh_arg;            /* borrowed: its argument */
};

int64_t health_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_seconds(void)
{
    return (int64_t)time(NULL);
}

static void set_error(struct health_server *hs, const char *why)
{
    pthread_mutex_lock(&hs->lock);
    snprintf(hs->last_error, sizeof(hs->last_error), "%s", why);
    pthread_mutex_unlock(&hs->lock);
}

/* ------------------------------------------------------------ state */

int health_server_id(const struct health_server *hs)
{
    return hs->id;
}

bool health_server_usable(const struct health_server *hs)
{
    return __atomic_load_n(&hs->up, __ATOMIC_RELAXED) &&
           !__atomic_load_n(&hs->draining, __ATOMIC_RELAXED);
}

unsigned health_server_weight(const struct health_server *hs, unsigned weight, int64_t now_ms)
{
    unsigned ramp = __atomic_load_n(&hs->slow_start_ms, __ATOMIC_RELAXED);
    if (ramp == 0)
        return weight * HEALTH_SCALE;
    int64_t since = now_ms - __atomic_load_n(&hs->up_since_ms, __ATOMIC_RELAXED);
    if (since >= (int64_t)ramp)
        return weight * HEALTH_SCALE;
    uint64_t w = (uint64_t)weight * HEALTH_SCALE * (uint64_t)(since > 0 ? since : 0) / ramp;
    return w > 0 ? (unsigned)w : 1;
}

static void mark_up(struct health_server *hs, const char *how)
{
    int expected = 0;
    if (!__atomic_compare_exchange_n(&hs->up, &expected, 1, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&hs->up_since_ms, health_now_ms(), __ATOMIC_RELAXED);
    __atomic_store_n(&hs->traffic_fails_row, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->consecutive, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->last_change, wall_seconds(), __ATOMIC_RELAXED);
    log_info("server %s up: %s", hs->addr.text, how);
}

/* Returns whether this call took the server down. */
static bool mark_down(struct health_server *hs, const char *how, const char *why)
{
    int expected = 1;
    if (!__atomic_compare_exchange_n(&hs->up, &expected, 0, false, __ATOMIC_ACQ_REL,
                                     __ATOMIC_RELAXED))
        return false;
    /* the way back starts from zero passes */
    __atomic_store_n(&hs->consecutive, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->last_change, wall_seconds(), __ATOMIC_RELAXED);
    log_warnx("server %s down: %s (%s)", hs->addr.text, how, why);
    return true;
}

void health_report_failure(struct health_server *hs, const char *why)
{
    unsigned row = __atomic_add_fetch(&hs->traffic_fails_row, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&hs->traffic_failures, 1, __ATOMIC_RELAXED);
    set_error(hs, why);
    unsigned fall = __atomic_load_n(&hs->fall, __ATOMIC_RELAXED);
    if (row >= fall) {
        char how[64];
        snprintf(how, sizeof(how), "%u failures in a row on traffic", row);
        mark_down(hs, how, why);
    }
}

void health_report_success(struct health_server *hs)
{
    /* read first: the common case writes nothing to the shared line */
    if (__atomic_load_n(&hs->traffic_fails_row, __ATOMIC_RELAXED) != 0)
        __atomic_store_n(&hs->traffic_fails_row, 0, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ servers */

static struct health_server *find_locked(struct health *hl, const struct config_addr *addr)
{
    for (size_t i = 0; i < hl->count; i++)
        if (strcmp(hl->servers[i]->addr.text, addr->text) == 0)
            return hl->servers[i];
    return NULL;
}

struct health_server *health_server_find(struct health *hl, const struct config_addr *addr)
{
    pthread_mutex_lock(&hl->lock);
    struct health_server *hs = find_locked(hl, addr);
    pthread_mutex_unlock(&hl->lock);
    return hs;
}

/* Finds or adds the state for <addr>; new ones start <up>. Under hl->lock. */
/* up_since_ms of a server up from the start: so long ago that slow start
 * is over even when the machine (and so the monotonic clock) just began */
#define HEALTH_LONG_AGO_MS (-((int64_t)1 << 40))

static struct health_server *obtain_locked(struct health *hl, const struct config_addr *addr,
                                           bool up)
{
    struct health_server *hs = find_locked(hl, addr);
    if (hs || hl->count == HEALTH_MAX_SERVERS)
        return hs;
    hs = calloc(1, sizeof(*hs)); /* freed in health_free() */
    if (!hs)
        return NULL;
    hs->addr = *addr;
    hs->id = (int)hl->count;
    hs->up = up;
    hs->up_since_ms = up ? HEALTH_LONG_AGO_MS : 0; /* up at start: its whole share at once */
    pthread_mutex_init(&hs->lock, NULL);
    hl->servers[hl->count++] = hs;
    return hs;
}

/*
 * Forgets what the server's earlier time in the configuration left: it is
 * as new, <up> or down with zero counters, not drained, no error. For a
 * server a reload names again after an earlier reload left it out, so
 * nothing of its old self (counters, up, drained) outlives its removal.
 * Under hl->lock; workers may read it meanwhile, so up goes first.
 */
static void forget_locked(struct health_server *hs, bool up)
{
    __atomic_store_n(&hs->up, up ? 1 : 0, __ATOMIC_RELEASE);
    /* a check of the old configuration still under way must not count */
    __atomic_add_fetch(&hs->generation, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&hs->draining, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->consecutive, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->traffic_fails_row, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->checks_passed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->checks_failed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->traffic_failures, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->last_change, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&hs->up_since_ms, up ? HEALTH_LONG_AGO_MS : 0, __ATOMIC_RELAXED);
    set_error(hs, "");
    log_debug("%s: server %s named again: starts %s", __func__, hs->addr.text, up ? "up" : "down");
}

/* Points every state at <cfg>: copies of its limits, in_config flags.
 * State carries over only for servers named by both the configuration in
 * force and <cfg>; one named again after a reload dropped it starts anew
 * (<new_servers_up> or down), like one never seen, and its id is added to
 * <fresh> (room for cfg->server_count) and counted in *<fresh_count>. */
static int adopt_config_locked(struct health *hl, const struct config *cfg, bool new_servers_up,
                               int *fresh, unsigned *fresh_count)
{
    for (unsigned i = 0; i < cfg->server_count; i++) {
        struct health_server *hs = find_locked(hl, &cfg->servers[i].addr);
        if (hs && !__atomic_load_n(&hs->in_config, __ATOMIC_RELAXED)) {
            forget_locked(hs, new_servers_up);
            fresh[(*fresh_count)++] = hs->id;
        }
    }
    for (size_t i = 0; i < hl->count; i++)
        __atomic_store_n(&hl->servers[i]->in_config, 0, __ATOMIC_RELAXED);
    int rc = 0;
    for (unsigned i = 0; i < cfg->server_count; i++) {
        struct health_server *hs = obtain_locked(hl, &cfg->servers[i].addr, new_servers_up);
        if (!hs) {
            rc = -1; /* that one goes unchecked; the others are still adopted */
            continue;
        }
        __atomic_store_n(&hs->in_config, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&hs->fall, cfg->health_fall, __ATOMIC_RELAXED);
        __atomic_store_n(&hs->slow_start_ms, cfg->health_slow_start_ms, __ATOMIC_RELAXED);
    }
    return rc;
}

int health_set_draining(struct health *hl, const char *addr, bool drain)
{
    struct health_server *hs = NULL;
    pthread_mutex_lock(&hl->lock);
    for (size_t i = 0; i < hl->count; i++)
        if (strcmp(hl->servers[i]->addr.text, addr) == 0)
            hs = hl->servers[i];
    pthread_mutex_unlock(&hl->lock);
    if (!hs)
        return -1;
    if (__atomic_exchange_n(&hs->draining, drain ? 1 : 0, __ATOMIC_ACQ_REL) != (drain ? 1 : 0)) {
        __atomic_store_n(&hs->last_change, wall_seconds(), __ATOMIC_RELAXED);
        if (!drain)
            __atomic_store_n(&hs->up_since_ms, health_now_ms(), __ATOMIC_RELAXED);
        log_info("server %s %s by the admin listener", hs->addr.text, drain ? "draining" : "ready");
    }
    return 0;
}

size_t health_snapshot(struct health *hl, struct health_server_view *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&hl->lock);
    /* configured servers first, in file order */
    const struct config *cfg = hl->cfg;
    for (unsigned i = 0; cfg && i < cfg->server_count && n < max; i++) {
        struct health_server *hs = find_locked(hl, &cfg->servers[i].addr);
        if (!hs)
            continue;
        struct health_server_view *v = &out[n++];
        v->id = hs->id;
        snprintf(v->addr, sizeof(v->addr), "%s", hs->addr.text);
        v->up = __atomic_load_n(&hs->up, __ATOMIC_RELAXED);
        v->draining = __atomic_load_n(&hs->draining, __ATOMIC_RELAXED);
        v->in_config = __atomic_load_n(&hs->in_config, __ATOMIC_RELAXED);
        v->checks_passed = __atomic_load_n(&hs->checks_passed, __ATOMIC_RELAXED);
        v->checks_failed = __atomic_load_n(&hs->checks_failed, __ATOMIC_RELAXED);
        v->traffic_failures = __atomic_load_n(&hs->traffic_failures, __ATOMIC_RELAXED);
        v->consecutive = __atomic_load_n(&hs->consecutive, __ATOMIC_RELAXED);
        v->last_change = __atomic_load_n(&hs->last_change, __ATOMIC_RELAXED);
        pthread_mutex_lock(&hs->lock);
        snprintf(v->last_error, sizeof(v->last_error), "%s", hs->last_error);
        pthread_mutex_unlock(&hs->lock);
    }
    pthread_mutex_unlock(&hl->lock);
    return n;
}

/* ------------------------------------------------------------ checks */

static void check_start(evutil_socket_t fd, short what, void *arg);

/* Ends the attempt under way with a pass or a failure (<why>). */
static void check_done(struct health_check *chk, bool pass, const char *why)
{
    struct health_server *hs = chk->hs;
    const struct config *cfg = chk->hl->cfg;

    stream_close(&chk->s);
    event_del(chk->deadline);
    chk->busy = false;

    if (__atomic_load_n(&hs->generation, __ATOMIC_ACQUIRE) != chk->generation)
        return; /* the server was removed and named again since: this check is void */
    bool up = __atomic_load_n(&hs->up, __ATOMIC_RELAXED);
    if (pass) {
        __atomic_add_fetch(&hs->checks_passed, 1, __ATOMIC_RELAXED);
        if (up) {
            __atomic_store_n(&hs->consecutive, 0, __ATOMIC_RELAXED);
            return;
        }
        unsigned n = __atomic_add_fetch(&hs->consecutive, 1, __ATOMIC_RELAXED);
        if (n >= cfg->health_rise) {
            char how[48];
            snprintf(how, sizeof(how), "%u passed checks", n);
            mark_up(hs, how);
        }
        return;
    }
    __atomic_add_fetch(&hs->checks_failed, 1, __ATOMIC_RELAXED);
    set_error(hs, why);
    if (!up) {
        __atomic_store_n(&hs->consecutive, 0, __ATOMIC_RELAXED);
        return;
    }
    unsigned n = __atomic_add_fetch(&hs->consecutive, 1, __ATOMIC_RELAXED);
    if (n >= cfg->health_fall) {
        char how[48];
        snprintf(how, sizeof(how), "%u failed checks", n);
        mark_down(hs, how, why);
    }
}

/* Whether <status> passes health.expect_status ("200-399" or "200"). */
static bool status_passes(const struct config *cfg, unsigned status)
{
    unsigned lo = 200, hi = 399;
    if (sscanf(cfg->health_expect_status, "%u-%u", &lo, &hi) == 1)
        hi = lo;
    return status >= lo && status <= hi;
}

static void health_on_check_read(struct stream *s, void *arg)
{
    struct health_check *chk = arg;
    struct evbuffer_ptr eol = evbuffer_search_eol(s->in, NULL, NULL, EVBUFFER_EOL_CRLF);
    if (eol.pos == -1) {
        if (evbuffer_get_length(s->in) > HEALTH_STATUS_MAX)
            check_done(chk, false, "status line too long");
        return;
    }
    char line[64] = "";
    size_t n = evbuffer_copyout(s->in, line, sizeof(line) - 1);
    line[n] = '\0';
    unsigned minor, status;
    char why[48];
    if (sscanf(line, "HTTP/1.%1u %3u", &minor, &status) != 2) {
        check_done(chk, false, "invalid response");
        return;
    }
    if (!status_passes(chk->hl->cfg, status)) {
        snprintf(why, sizeof(why), "status %u", status);
        check_done(chk, false, why);
        return;
    }
    check_done(chk, true, NULL);
}

static void health_on_check_event(struct stream *s, enum stream_event what, void *arg)
{
    struct health_check *chk = arg;
    switch (what) {
    case STREAM_EV_CONNECTED:
        stream_flush(s);
        return;
    case STREAM_EV_EOF:
        check_done(chk, false, "closed without answering");
        return;
    case STREAM_EV_ERROR:
        check_done(chk, false, stream_error_text(s));
        return;
    case STREAM_EV_READ_TIMEOUT:
    case STREAM_EV_WRITE_TIMEOUT:
        check_done(chk, false, "timeout");
        return;
    }
}

static void health_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    check_done(arg, false, "timeout");
}

static void check_start(evutil_socket_t fd, short what, void *arg)
{
    struct health_check *chk = arg;
    const struct config *cfg = chk->hl->cfg;
    const struct config_addr *addr = &chk->hs->addr;
    (void)fd;
    (void)what;

    if (chk->busy)
        return; /* the last attempt is still within its timeout */
    if (stream_connect(&chk->s, chk->hl->base, (const struct sockaddr *)&addr->sa, addr->salen) ==
        -1) {
        if (stream_error_is_local(errno)) {
            /* out of descriptors or ports here: no verdict on the clone */
            int64_t now_ms = health_now_ms();
            if (now_ms - chk->hl->local_error_logged_ms >= HEALTH_LOCAL_ERROR_LOG_MS) {
                log_warn("health check of %s skipped", addr->text);
                chk->hl->local_error_logged_ms = now_ms;
            }
            return;
        }
        chk->busy = true;
        check_done(chk, false, strerror(errno));
        return;
    }
    chk->busy = true;
    if (cfg->upstream_tls) {
        /* the clones speak TLS: so do their checks */
        if (chk->hl->tls_cfg != cfg) {
            tls_client_unref(chk->hl->tls);
            chk->hl->tls = tls_client_new(cfg, stderr);
            chk->hl->tls_cfg = cfg;
        }
        SSL *ssl = chk->hl->tls ? tls_client_ssl(chk->hl->tls, addr->text) : NULL;
        if (!ssl || stream_start_tls(&chk->s, ssl, false) == -1) {
            stream_close(&chk->s);
            check_done(chk, false, "cannot set up TLS");
            return;
        }
    }
    stream_set_callbacks(&chk->s, health_on_check_read, NULL, health_on_check_event, chk);
    evbuffer_add_printf(chk->s.out,
                        "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: clonegate-health\r\n"
                        "Connection: close\r\n\r\n",
                        cfg->health_path, cfg->health_host[0] ? cfg->health_host : addr->text);
    stream_read_enable(&chk->s, true);
    struct timeval tv = {cfg->health_timeout_ms / 1000, (cfg->health_timeout_ms % 1000) * 1000};
    event_add(chk->deadline, &tv);
}

static void check_free(struct health_check *chk)
{
    if (!chk)
        return;
    stream_close(&chk->s);
    if (chk->timer)
        event_free(chk->timer);
    if (chk->deadline)
        event_free(chk->deadline);
    if (chk->kick)
        event_free(chk->kick);
    chk->hs->check = NULL;
    free(chk);
}

/* (Re)creates the checks for hl->cfg: one per configured server, the first
 * attempt at once. Health thread (or main before the thread starts). */
static void rebuild_checks(struct health *hl)
{
    const struct config *cfg = hl->cfg;
    pthread_mutex_lock(&hl->lock);
    for (size_t i = 0; i < hl->count; i++)
        check_free(hl->servers[i]->check);
    for (unsigned i = 0; i < cfg->server_count; i++) {
        struct health_server *hs = find_locked(hl, &cfg->servers[i].addr);
        struct health_check *chk = hs ? calloc(1, sizeof(*chk)) : NULL; /* check_free() */
        if (!chk) {
            log_warnx("health: cannot check %s: out of memory", cfg->servers[i].addr.text);
            continue;
        }
        chk->hl = hl;
        chk->hs = hs;
        chk->generation = __atomic_load_n(&hs->generation, __ATOMIC_ACQUIRE);
        chk->s.fd = -1;
        chk->timer = event_new(hl->base, -1, EV_PERSIST, check_start, chk);
        chk->deadline = event_new(hl->base, -1, 0, health_on_deadline, chk);
        chk->kick = event_new(hl->base, -1, 0, check_start, chk);
        hs->check = chk;
        if (!chk->timer || !chk->deadline || !chk->kick) {
            check_free(chk);
            continue;
        }
        struct timeval tv = {cfg->health_interval_ms / 1000,
                             (cfg->health_interval_ms % 1000) * 1000};
        /* the periodic timer keeps its own schedule; the first attempt
         * goes through a separate event so it does not shift that */
        event_add(chk->timer, &tv);
        event_active(chk->kick, EV_TIMEOUT, 1);
    }
    pthread_mutex_unlock(&hl->lock);
}

/* ------------------------------------------------------------ life cycle */

static void health_on_reload(evutil_socket_t fd, short what, void *arg)
{
    struct health *hl = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&hl->lock);
    struct config *cfg = hl->pending;
    hl->pending = NULL;
    struct config *old = cfg ? hl->cfg : NULL;
    if (cfg)
        hl->cfg = cfg;
    pthread_mutex_unlock(&hl->lock);
    if (!cfg)
        return;
    config_unref(old);
    rebuild_checks(hl);
}

/* health_stop() asked: an active event rather than a loop break, which a
 * loop that has not started yet would forget when it starts. */
static void health_on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct health *hl = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(hl->base);
}

struct health *health_new(struct config *cfg)
{
    struct health *hl = calloc(1, sizeof(*hl)); /* freed in health_free() */
    if (!hl)
        return NULL;
    pthread_mutex_init(&hl->lock, NULL);
    hl->base = event_base_new();
    if (!hl->base)
        goto fail;
    hl->reload_ev = event_new(hl->base, -1, 0, health_on_reload, hl);
    hl->stop_ev = event_new(hl->base, -1, 0, health_on_stop, hl);
    if (!hl->reload_ev || !hl->stop_ev)
        goto fail;
    hl->cfg = config_ref(cfg);
    int fresh[CONFIG_MAX_SERVERS];
    unsigned fresh_count = 0; /* none: no state exists yet */
    pthread_mutex_lock(&hl->lock);
    int rc = adopt_config_locked(hl, cfg, true, fresh, &fresh_count);
    pthread_mutex_unlock(&hl->lock);
    if (rc == -1)
        goto fail;
    rebuild_checks(hl);
    return hl;
fail:
    health_free(hl);
    return NULL;
}

struct event_base *health_base(struct health *hl)
{
    return hl->base;
}

static void *health_main(void *arg)
{
    struct health *hl = arg;
    event_base_loop(hl->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int health_start(struct health *hl)
{
    int err = pthread_create(&hl->thread, NULL, health_main, hl);
    if (err != 0) {
        errno = err;
        return -1;
    }
    hl->started = true;
    return 0;
}

void health_set_on_fresh(struct health *hl, health_fresh_fn fn, void *arg)
{
    hl->on_fresh = fn;
    hl->on_fresh_arg = arg;
}

void health_reload(struct health *hl, struct config *cfg)
{
    int fresh[CONFIG_MAX_SERVERS];
    unsigned fresh_count = 0;
    pthread_mutex_lock(&hl->lock);
    /* states for new servers exist (down) before any worker's new pool
     * looks them up: the caller reloads the workers right after this */
    if (adopt_config_locked(hl, cfg, false, fresh, &fresh_count) == -1)
        log_warnx("health: more than %d clone addresses since start; the newest are not "
                  "checked and not taken out on failures (a restart clears the list)",
                  HEALTH_MAX_SERVERS);
    config_unref(hl->pending);
    hl->pending = config_ref(cfg);
    pthread_mutex_unlock(&hl->lock);
    /* outside the lock: the hook reads other modules' figures */
    for (unsigned i = 0; hl->on_fresh && i < fresh_count; i++)
        hl->on_fresh(hl->on_fresh_arg, fresh[i]);
    event_active(hl->reload_ev, EV_READ, 1);
}

void health_stop(struct health *hl)
{
    if (!hl || !hl->started)
        return;
    event_active(hl->stop_ev, EV_READ, 1);
    pthread_join(hl->thread, NULL);
    hl->started = false;
}

void health_free(struct health *hl)
{
    if (!hl)
        return;
    health_stop(hl);
    for (size_t i = 0; i < hl->count; i++) {
        check_free(hl->servers[i]->check);
        pthread_mutex_destroy(&hl->servers[i]->lock);
        free(hl->servers[i]);
    }
    tls_client_unref(hl->tls);
    hl->tls = NULL;
    if (hl->reload_ev)
        event_free(hl->reload_ev);
    if (hl->stop_ev)
        event_free(hl->stop_ev);
    if (hl->base)
        event_base_free(hl->base);
    config_unref(hl->pending);
    config_unref(hl->cfg);
    pthread_mutex_destroy(&hl->lock);
    free(hl);
}
