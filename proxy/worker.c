/*
 * worker: an event-loop thread with its own listeners, pool and connections.
 *
 * Owns its event_base, its listeners (one socket per address, each bound
 * with SO_REUSEPORT so every worker accepts on the same ports), its upstream
 * pool, its timers and its client connections (through conn.c). Holds a
 * reference on the config it serves. main.c talks to a worker only through
 * worker_reload() and worker_stop(), which hand data over under next_lock
 * (or an atomic flag) and wake the loop through the worker's eventfd. The
 * base itself takes no locks (EVENT_BASE_FLAG_NOLOCK): only its own thread
 * ever touches it, so the request path pays for no mutex.
 */
#include "worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "cache.h"
#include "clock.h"
#include "conn.h"
#include "health.h"
#include "stats.h"
#include "stream.h"
#include "store_redis.h"
#include "tls.h"
#include "upstream.h"

#define WORKER_TICK_MS        100   /* access log flush and accept-resume check */
#define WORKER_BACKLOG        4096  /* listen(2) backlog */
#define WORKER_DEFER_ACCEPT_S 1     /* TCP_DEFER_ACCEPT: wait this long for a first byte */
#define WORKER_PAUSE_LOG_MS   10000 /* at most one "accepting paused" line this often */

static void worker_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg);

static int shared_connections(const struct worker *w)
{
    return __atomic_load_n(&w->shared->connections, __ATOMIC_RELAXED);
}

static void set_accepting(struct worker *w, bool on)
{
    for (unsigned i = 0; i < w->listener_count; i++) {
        if (on)
            evconnlistener_enable(w->listeners[i]);
        else
            evconnlistener_disable(w->listeners[i]);
    }
    w->accept_paused = !on;
}

/* The answer to a connection refused at max_connections: sent before the
 * request is read, like any error answer that ends a connection. */
static const char refused_answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                     "Content-Type: text/plain\r\n"
                                     "Content-Length: 46\r\n"
                                     "Retry-After: 1\r\n"
                                     "Cache-Status: clonegate; fwd=bypass; detail=refused\r\n"
                                     "Connection: close\r\n"
                                     "\r\n"
                                     "503 Service Unavailable: too many connections\n";

/* Turns <fd> away: max_connections has held past queue_timeout. A plain
 * client gets the 503 above; a TLS one (it speaks no plaintext) just the
 * close. The request already sent is read first so that the close is a FIN,
 * not a reset that could destroy the answer. Best effort: the socket buffer
 * takes the few bytes at once or the client is gone anyway. */
static void refuse_connection(struct worker *w, evutil_socket_t fd, bool tls)
{
    char sink[4096];
    for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        ;
    if (!tls &&
        send(fd, refused_answer, sizeof(refused_answer) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) == -1 &&
        errno != EAGAIN && errno != EPIPE && errno != ECONNRESET)
        log_debug("refusing a connection: %s", strerror(errno));
    shutdown(fd, SHUT_WR);
    close(fd);
    STATS_INC(w->stats->refused);
}

/* Counts a new connection in; false (and <fd> refused) when the worker is
 * refusing and the limit still holds. */
static bool admit(struct worker *w, evutil_socket_t fd, bool tls)
{
    int now = __atomic_add_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
    if (w->refusing && (unsigned)now > w->cfg->max_connections) {
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
        refuse_connection(w, fd, tls);
        return false;
    }
    return true;
}

/* After a connection came in: at the limit, accepting pauses; clients wait
 * in the listen queue for queue_timeout (see worker_on_tick). */
static void pause_if_full(struct worker *w)
{
    if ((unsigned)shared_connections(w) >= w->cfg->max_connections && !w->accept_paused) {
        int64_t now_ms = health_now_ms();
        if (now_ms - w->pause_logged_ms >= WORKER_PAUSE_LOG_MS) { /* not once per client */
            log_warnx("max_connections (%u) reached: accepting paused", w->cfg->max_connections);
            w->pause_logged_ms = now_ms;
        }
        STATS_INC(w->stats->accept_pauses);
        set_accepting(w, false);
        w->refusing = false;
        w->paused_at_ms = now_ms;
    }
}

static void worker_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    struct worker *w = arg;
    (void)l;
    (void)salen;
    if (!admit(w, fd, false))
        return;
    conn_accept(w, fd, sa, NULL);
    pause_if_full(w);
}

/* A connection on a [tls] listener: it gets the contexts now in force. */
static void worker_on_accept_tls(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                                 int salen, void *arg)
{
    struct worker *w = arg;
    (void)l;
    (void)salen;
    if (!admit(w, fd, true))
        return;
    pthread_mutex_lock(&w->shared->tls_lock);
    struct tls_server *tls = w->shared->tls ? tls_server_ref(w->shared->tls) : NULL;
    pthread_mutex_unlock(&w->shared->tls_lock);
    if (tls) {
        conn_accept(w, fd, sa, tls);
        tls_server_unref(tls); /* the connection took its own reference */
    } else {
        close(fd);
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
    }
    pause_if_full(w);
}

static void worker_on_accept_error(struct evconnlistener *l, void *arg)
{
    struct worker *w = arg;
    (void)l;
    /* EMFILE and the like: pause, the tick resumes accepting */
    log_warn("accept");
    set_accepting(w, false);
}

void worker_conn_closed(struct worker *w, struct conn *c)
{
    (void)c;
    w->conn_count--;
    int now = __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
    if ((unsigned)now < w->cfg->max_connections) {
        w->refusing = false;
        if (w->accept_paused && !w->draining)
            set_accepting(w, true);
    }
    if (w->draining && w->conn_count == 0)
        event_base_loopbreak(w->base);
}

static int listen_on(struct worker *w, const struct config_addr *addr, bool tls)
{
    /* SO_REUSEPORT lets each worker own a socket on the same port; the
     * kernel spreads new connections across them. */
    unsigned flags =
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT;
    struct evconnlistener *l = evconnlistener_new_bind(
        w->base, tls ? worker_on_accept_tls : worker_on_accept, w, flags, WORKER_BACKLOG,
        (const struct sockaddr *)&addr->sa, (int)addr->salen);
    if (!l) {
        log_write(LOG_LEVEL_ERROR, 1, "cannot listen on %s", addr->text);
        return -1;
    }
    evconnlistener_set_error_cb(l, worker_on_accept_error);
    /* accept only once the client has sent something: the request can be
     * read at once, without a loop turn to learn it is there */
    int defer = WORKER_DEFER_ACCEPT_S;
    if (setsockopt(evconnlistener_get_fd(l), IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer,
                   sizeof(defer)) == -1)
        log_warn("TCP_DEFER_ACCEPT on %s", addr->text);
    /* accepted sockets inherit it: no setsockopt per connection */
    int one = 1;
    if (setsockopt(evconnlistener_get_fd(l), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
        log_warn("TCP_NODELAY on %s", addr->text);
    /* a request is answered at once: its ACK rides on the answer instead of
     * going out alone when the request is read (inherited as well) */
    int zero = 0;
    if (setsockopt(evconnlistener_get_fd(l), IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero)) == -1)
        log_warn("TCP_QUICKACK on %s", addr->text);
    w->listeners[w->listener_count++] = l;
    return 0;
}

static void close_listeners(struct worker *w)
{
    for (unsigned i = 0; i < w->listener_count; i++) {
        evconnlistener_free(w->listeners[i]);
        w->listeners[i] = NULL;
    }
    w->listener_count = 0;
}

/* Re-registers the common timeouts for <cfg>'s header and idle limits. */
static void set_timeouts(struct worker *w, const struct config *cfg)
{
    struct timeval header = {cfg->header_timeout_ms / 1000, (cfg->header_timeout_ms % 1000) * 1000};
    struct timeval idle = {cfg->idle_timeout_ms / 1000, (cfg->idle_timeout_ms % 1000) * 1000};
    struct timeval connect = {cfg->connect_timeout_ms / 1000,
                              (cfg->connect_timeout_ms % 1000) * 1000};
    struct timeval response = {cfg->response_timeout_ms / 1000,
                               (cfg->response_timeout_ms % 1000) * 1000};
    w->header_tv = event_base_init_common_timeout(w->base, &header);
    w->idle_tv = event_base_init_common_timeout(w->base, &idle);
    w->connect_tv = event_base_init_common_timeout(w->base, &connect);
    w->response_tv = event_base_init_common_timeout(w->base, &response);
}

/* ------------------------------------------------------------ loop events */

static void apply_reload(struct worker *w)
{
    pthread_mutex_lock(&w->next_lock);
    struct config *cfg = w->next_cfg;
    w->next_cfg = NULL;
    pthread_mutex_unlock(&w->next_lock);
    if (!cfg)
        return;
    struct upstream_pool *pool = upstream_pool_new(w->base, cfg, w->health);
    if (!pool) {
        log_warnx("worker %u: reload failed: out of memory; old configuration kept", w->id);
        config_unref(cfg);
        return;
    }
    /* in-flight exchanges keep the old pool until they end */
    upstream_pool_retire(w->pool);
    w->pool = pool;
    set_timeouts(w, cfg);
    if (w->redis)
        store_redis_max_value(w->redis, cfg->cache_max_object_size); /* its write budget */
    config_unref(w->cfg);
    w->cfg = cfg;
    log_debug("%s: worker %u now serves %s", __func__, w->id, cfg->path);
}

static void worker_on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    log_warnx("worker %u: drain_timeout reached with %u connection(s) open", w->id, w->conn_count);
    event_base_loopbreak(w->base);
}

static void start_drain(struct worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    close_listeners(w);
    conn_drain_all(w);
    if (w->conn_count == 0) {
        event_base_loopbreak(w->base);
        return;
    }
    struct timeval tv = {w->cfg->drain_timeout_ms / 1000, (w->cfg->drain_timeout_ms % 1000) * 1000};
    event_add(w->drain_deadline_ev, &tv);
}

static void wake(struct worker *w);

static void worker_on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    (void)what;
    if (read(fd, &n, sizeof(n)) == -1 && errno != EAGAIN)
        log_warn("worker %u: eventfd read", w->id);
    apply_reload(w);
    if (w->mailbox)
        cache_mailbox_deliver(w->mailbox);
    if (__atomic_load_n(&w->stop_requested, __ATOMIC_ACQUIRE))
        start_drain(w);
}

/* A fill this worker's requests waited on ended (any thread). */
static void worker_on_mailbox(void *arg)
{
    wake(arg);
}

static void worker_on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    log_access_flush(&w->access);
    if (!w->accept_paused || w->draining)
        return;
    if ((unsigned)shared_connections(w) < w->cfg->max_connections) {
        w->refusing = false;
        set_accepting(w, true);
    } else if (w->cfg->queue_timeout_ms &&
               health_now_ms() - w->paused_at_ms >= (int64_t)w->cfg->queue_timeout_ms) {
        /* the limit held past queue_timeout: stop making clients wait */
        int64_t now_ms = health_now_ms();
        if (now_ms - w->refuse_logged_ms >= WORKER_PAUSE_LOG_MS) {
            log_warnx("max_connections (%u) held for %ums: refusing new connections with 503",
                      w->cfg->max_connections, w->cfg->queue_timeout_ms);
            w->refuse_logged_ms = now_ms;
        }
        set_accepting(w, true);
        w->refusing = true;
    }
}

/* ------------------------------------------------------------ life cycle */

struct worker *worker_new(unsigned id, struct config *cfg, struct worker_shared *shared,
                          struct health *hl, struct stats_worker *stats)
{
    struct worker *w = calloc(1, sizeof(*w)); /* freed by worker_join_free() */
    if (!w)
        return NULL;
    w->id = id;
    w->wake_fd = -1;
    w->stats = stats;
    w->shared = shared;
    w->health = hl;
    w->cfg = config_ref(cfg);
    TAILQ_INIT(&w->conns);
    pthread_mutex_init(&w->next_lock, NULL);

    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wake_fd == -1)
        goto fail;
    struct event_config *ec = event_config_new();
    if (!ec)
        goto fail;
    /* only this thread touches the base */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    if (!w->base)
        goto fail;
    w->pool = upstream_pool_new(w->base, cfg, hl);
    if (!w->pool)
        goto fail;
    set_timeouts(w, cfg);
    w->wake_ev = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, worker_on_wake, w);
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, worker_on_tick, w);
    w->drain_deadline_ev = event_new(w->base, -1, 0, worker_on_drain_deadline, w);
    if (!w->wake_ev || !w->tick_ev || !w->drain_deadline_ev)
        goto fail;
    event_add(w->wake_ev, NULL);
    struct timeval tick = {0, WORKER_TICK_MS * 1000};
    event_add(w->tick_ev, &tick);
    if (shared->cache) {
        w->mailbox = cache_mailbox_new(shared->cache, worker_on_mailbox, w);
        if (!w->mailbox)
            goto fail;
        /* the Redis link stays as started: a reload that changes it warns */
        if (cfg->cache_redis[0]) {
            w->redis = store_redis_new(w->base, cfg->cache_redis, cfg->cache_redis_timeout_ms,
                                       cfg->cache_max_object_size);
            if (!w->redis)
                goto fail;
        }
    }
    for (unsigned i = 0; i < cfg->listen_count; i++)
        if (listen_on(w, &cfg->listen[i], false) == -1)
            goto fail;
    for (unsigned i = 0; i < cfg->tls_listen_count; i++)
        if (listen_on(w, &cfg->tls_listen[i], true) == -1)
            goto fail;
    return w;
fail:
    log_error("worker %u: cannot start", id);
    worker_join_free(w);
    return NULL;
}

/* A worker counts as busy with this many requests in progress, or when its
 * last turn of the loop found this many socket events (requests answered
 * at once, from the cache, are never in progress for long); and naps only
 * within WORKER_NAP_WINDOW_US of its last socket event. */
#define WORKER_NAP_MIN_OPEN   8
#define WORKER_NAP_MIN_EVENTS 4
#define WORKER_NAP_WINDOW_US  1000

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    /* naps of tens of microseconds: without it the kernel may add 50 */
    if (prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0) == -1)
        log_warnx("worker %u: timer slack not set: %s", w->id, strerror(errno));
    unsigned io_seen = stream_activity();
    int64_t io_at_us = 0;
    /*
     * After each wake-up the loop keeps polling without blocking for
     * busy_poll_us: a client or clone answering within that time finds the
     * worker awake, and neither side pays for waking a sleeping thread (on
     * a loaded machine that costs the peers more than the polls cost us).
     *
     * Then, while the worker is busy (several requests in progress, or
     * several socket events in its last turn, and socket events within the
     * last millisecond), it naps busy_nap_us instead of sleeping in
     * epoll_wait: a peer writing to a worker that waits in epoll_wait pays
     * to wake it, one writing to a napping worker only queues the event,
     * and the nap collects several of them for one turn of the loop. An
     * idle or lightly loaded worker sleeps as before, so a lone request is
     * never delayed by a nap.
     */
    while (!event_base_got_break(w->base)) {
        unsigned spin_us = w->cfg->busy_poll_us;
        if (spin_us) {
            int64_t until = clock_mono_us() + spin_us;
            do {
                /* 1: nothing left to wait for; -1: an error */
                if (event_base_loop(w->base, EVLOOP_NONBLOCK) != 0 || event_base_got_break(w->base))
                    goto out;
            } while (clock_mono_us() < until);
        }
        unsigned nap_us = w->cfg->busy_nap_us;
        if (nap_us) {
            int64_t now = clock_mono_us();
            unsigned turn_events = stream_activity() - io_seen;
            if (turn_events) {
                io_seen += turn_events;
                io_at_us = now;
            }
            bool busy =
                w->exchanges_open >= WORKER_NAP_MIN_OPEN || turn_events >= WORKER_NAP_MIN_EVENTS;
            if (busy && now - io_at_us < WORKER_NAP_WINDOW_US) {
                struct timespec nap = {0, (long)nap_us * 1000};
                nanosleep(&nap, NULL); /* EINTR: a signal cut it short, which is fine */
                if (event_base_loop(w->base, EVLOOP_NONBLOCK) != 0)
                    break;
                continue;
            }
        }
        if (event_base_loop(w->base, EVLOOP_ONCE) != 0)
            break;
    }
out:
    conn_close_all(w);

    log_access_flush(&w->access);
    return NULL;
}

int worker_start(struct worker *w)
{
    int err = pthread_create(&w->thread, NULL, worker_main, w);
    if (err != 0) {
        errno = err;
        return -1;
    }
    return 0;
}

static void wake(struct worker *w)
{
    uint64_t one = 1;
    if (write(w->wake_fd, &one, sizeof(one)) == -1)
        log_warn("worker %u: eventfd write", w->id);
}

void worker_reload(struct worker *w, struct config *cfg)
{
    pthread_mutex_lock(&w->next_lock);
    config_unref(w->next_cfg);
    w->next_cfg = config_ref(cfg);
    pthread_mutex_unlock(&w->next_lock);
    wake(w);
}

void worker_stop(struct worker *w)
{
    __atomic_store_n(&w->stop_requested, 1, __ATOMIC_RELEASE);
    wake(w);
}

void worker_join_free(struct worker *w)
{
    if (!w)
        return;
    if (w->thread)
        pthread_join(w->thread, NULL);
    close_listeners(w);
    upstream_pool_retire(w->pool);
    w->pool = NULL;
    store_redis_free(w->redis);
    w->redis = NULL;
    cache_mailbox_free(w->mailbox);
    w->mailbox = NULL;
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->tick_ev)
        event_free(w->tick_ev);
    if (w->drain_deadline_ev)
        event_free(w->drain_deadline_ev);
    if (w->base)
        event_base_free(w->base);
    if (w->wake_fd != -1)
        close(w->wake_fd);
    config_unref(w->next_cfg);
    config_unref(w->cfg);
    pthread_mutex_destroy(&w->next_lock);
    free(w);
}
