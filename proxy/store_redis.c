/*
 * store_redis: one worker's link to the shared cache in Redis.
 *
 * Owns the hiredis async context (freed by hiredis itself when the link
 * drops, or by store_redis_free()), the state timer (reconnect back-off,
 * connect timeout, end of the slow pause: one at a time, as the state
 * says), the get timer and every operation in flight. Borrows the worker's
 * event_base, which outlives it. Never blocks: connects are non-blocking
 * (a host name is resolved by hiredis with getaddrinfo, so configurations
 * that care give a numeric address or a unix socket), replies arrive
 * through the libevent adapter.
 *
 * A get is an op in hiredis's callback list (freed when its reply, or the
 * NULL reply of a dropped link, comes) and, while its answer is still owed,
 * in the FIFO of gets waiting for a reply. Every get has the same timeout
 * and the link answers in order, so the FIFO is sorted by deadline and one
 * timer, armed for its head, times them all out. A timed-out or cancelled op
 * stays allocated until hiredis hands back its (ignored) reply. Freed ops
 * are kept on a short spare list for the next gets.
 *
 * A get's handle is valid until its callback runs (or, once cancelled,
 * must not be used again). A del that was sent always calls back exactly
 * once, with -1 when the link drops or the store is freed first, so a caller
 * that may go away first passes a NULL callback or outlives the store.
 * Gets refused (NULL) and writes refused (-1) never call back.
 *
 * Only the owning worker thread touches a store; the counters are written
 * with relaxed atomic stores for the admin thread to read. Callbacks may
 * call store_redis_get/set/del/cancel, never store_redis_free(): it must
 * not run inside any hiredis callback or any callback of this store
 * (hiredis would free the context under its own caller).
 */
#include "store_redis.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"

#define STORE_REDIS_SPARE_OPS 256         /* freed ops kept for reuse */
#define STORE_REDIS_OP_MAGIC  0x5245444fu /* "REDO": a live op */
#define STORE_REDIS_NUM_MAX   24          /* decimal digits of a u64, and some */
#define STORE_REDIS_UNIX      "unix:"
#define STORE_REDIS_UNIX_LEN  (sizeof(STORE_REDIS_UNIX) - 1)

/* Lua run by a del with a set: the key, every member of the set, the set. */
static const char del_script[] = "local n = redis.call('DEL', KEYS[1])\n"
                                 "for _, k in ipairs(redis.call('SMEMBERS', KEYS[2])) do\n"
                                 "  n = n + redis.call('DEL', k)\n"
                                 "end\n"
                                 "redis.call('DEL', KEYS[2])\n"
                                 "return n\n";

/* Counter bumps by the only writer, for relaxed readers elsewhere. */
#define SR_INC(field)    __atomic_store_n(&(field), (field) + 1, __ATOMIC_RELAXED)
#define SR_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define SR_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

enum op_kind {
    OP_GET = 1, /* answers through cb.get */
    OP_DEL = 2, /* answers through cb.count (may be NULL) */
};

struct store_redis_op {
    unsigned magic;                    /* STORE_REDIS_OP_MAGIC while live */
    TAILQ_ENTRY(store_redis_op) entry; /* in s->waiting (in_fifo) or s->spare */
    struct store_redis *s;             /* borrowed: the store outlives its ops */
    enum op_kind kind;                 /* which callback */
    union {
        store_redis_get_fn get;
        store_redis_count_fn count;
    } cb;                 /* the caller's */
    void *arg;            /* the caller's, passed back */
    uint64_t sent_us;     /* monotonic, when the command was queued */
    uint64_t deadline_us; /* monotonic, when a get times out */
    bool answered;        /* the callback ran (timeout): drop the reply */
    bool cancelled;       /* the caller gave up: never call back */
    bool in_fifo;         /* on s->waiting */
};

TAILQ_HEAD(op_list, store_redis_op);

struct store_redis {
    struct event_base *base;        /* borrowed from the worker */
    char *host;                     /* owned, freed in store_redis_free(); NULL for unix */
    int port;                       /* TCP port */
    char *unix_path;                /* owned, freed in store_redis_free(); NULL for TCP */
    char *addr;                     /* owned copy of the configured address, for logs */
    unsigned timeout_ms;            /* longest a get waits */
    redisAsyncContext *ac;          /* owned; NULL when DOWN; hiredis frees it on a drop */
    enum store_redis_state state;   /* see enum store_redis_state */
    struct event *state_ev;         /* owned: reconnect, connect timeout or slow-pause end */
    struct event *timeout_ev;       /* owned: the FIFO head's deadline */
    unsigned backoff_ms;            /* next reconnect delay */
    unsigned timeouts_in_row;       /* gets timed out since the last in-time reply */
    bool reported_down;             /* the loss was logged; retries log at debug */
    bool freeing;                   /* store_redis_free() is running */
    unsigned inflight;              /* commands awaiting a reply (gets, sets, dels) */
    struct op_list waiting;         /* gets owed an answer, oldest (earliest deadline) first */
    struct op_list spare;           /* owned free ops, freed in store_redis_free() */
    unsigned spare_count;           /* length of spare */
    struct store_redis_stats stats; /* written here only */
};

static void store_redis_on_state_timer(evutil_socket_t fd, short what, void *arg);
static void store_redis_on_timeout(evutil_socket_t fd, short what, void *arg);

/* ------------------------------------------------------------ helpers */

static uint64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct timeval ms_tv(unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

const char *store_redis_state_name(enum store_redis_state st)
{
    switch (st) {
    case STORE_REDIS_DOWN:
        return "down";
    case STORE_REDIS_CONNECTING:
        return "connecting";
    case STORE_REDIS_UP:
        return "up";
    case STORE_REDIS_SLOW:
        return "slow";
    }
    return "?";
}

/* The one place the state changes. */
static void set_state(struct store_redis *s, enum store_redis_state st)
{
    assert(st >= STORE_REDIS_DOWN && st <= STORE_REDIS_SLOW);
    if (s->state == st)
        return;
    log_debug("%s: redis %s: %s -> %s", __func__, s->addr, store_redis_state_name(s->state),
              store_redis_state_name(st));
    s->state = st;
    SR_SET(s->stats.state, (uint64_t)st);
}

static void arm_state_timer(struct store_redis *s, unsigned ms)
{
    struct timeval tv = ms_tv(ms);

    event_add(s->state_ev, &tv);
}

/* An op for a command about to be sent; from the spare list when it can.
 * Freed (or kept as spare) by op_release(). */
static struct store_redis_op *op_acquire(struct store_redis *s, enum op_kind kind, void *arg)
{
    struct store_redis_op *op = TAILQ_FIRST(&s->spare);

    if (op != NULL) {
        TAILQ_REMOVE(&s->spare, op, entry);
        s->spare_count--;
    } else {
        op = malloc(sizeof(*op)); /* freed in op_release() or store_redis_free() */
        if (op == NULL)
            return NULL;
    }
    memset(op, 0, sizeof(*op));
    op->magic = STORE_REDIS_OP_MAGIC;
    op->s = s;
    op->kind = kind;
    op->arg = arg;
    return op;
}

static void fifo_remove(struct store_redis *s, struct store_redis_op *op)
{
    if (op->in_fifo) {
        TAILQ_REMOVE(&s->waiting, op, entry);
        op->in_fifo = false;
    }
}

static void op_release(struct store_redis *s, struct store_redis_op *op)
{
    assert(op->magic == STORE_REDIS_OP_MAGIC);
    fifo_remove(s, op);
    op->magic = 0;
    if (s->spare_count < STORE_REDIS_SPARE_OPS && !s->freeing) {
        TAILQ_INSERT_HEAD(&s->spare, op, entry);
        s->spare_count++;
    } else {
        free(op);
    }
}

/* Answers a get once; the op stays allocated for its reply. */
static void answer_get(struct store_redis *s, struct store_redis_op *op, enum store_redis_result r,
                       const char *data, size_t len)
{
    fifo_remove(s, op);
    if (op->answered || op->cancelled)
        return;
    op->answered = true;
    SR_INC(s->stats.gets);
    switch (r) {
    case STORE_REDIS_FOUND:
        SR_INC(s->stats.found);
        break;
    case STORE_REDIS_NOT_FOUND:
        SR_INC(s->stats.not_found);
        break;
    case STORE_REDIS_FAILED:
        SR_INC(s->stats.failed);
        break;
    }
    op->cb.get(op->arg, r, data, len);
}

/* ------------------------------------------------------------ the link */

static void link_start(struct store_redis *s);

/* The link failed or dropped: DOWN, and a reconnect after the back-off. */
static void link_down(struct store_redis *s, const char *why)
{
    s->ac = NULL;
    s->timeouts_in_row = 0;
    set_state(s, STORE_REDIS_DOWN);
    if (s->freeing)
        return;
    if (!s->reported_down) {
        log_warnx("redis %s: unavailable: %s; cache reads and writes skipped until it is back",
                  s->addr, why);
        s->reported_down = true;
    } else {
        log_debug("%s: redis %s: %s; retry in %u ms", __func__, s->addr, why, s->backoff_ms);
    }
    arm_state_timer(s, s->backoff_ms);
    s->backoff_ms = s->backoff_ms >= STORE_REDIS_BACKOFF_MAX_MS / 2 ? STORE_REDIS_BACKOFF_MAX_MS
                                                                    : s->backoff_ms * 2;
}

static void store_redis_on_connect(const redisAsyncContext *ac, int status)
{
    struct store_redis *s = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns (ac->errstr may
         * still be NULL here; the context's own buffer is always set) */
        link_down(s, ac->c.errstr[0] ? ac->c.errstr : "connect failed");
        return;
    }
    event_del(s->state_ev); /* the connect timeout */
    s->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    s->timeouts_in_row = 0;
    SR_INC(s->stats.connects);
    set_state(s, STORE_REDIS_UP);
    if (s->reported_down)
        log_info("redis %s: connected again", s->addr);
    else
        log_info("redis %s: connected", s->addr);
    s->reported_down = false;
}

static void store_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    struct store_redis *s = ac->data;

    (void)status;
    if (s->freeing) {
        /* store_redis_free() asked for it: not a loss to count or retry */
        s->ac = NULL;
        set_state(s, STORE_REDIS_DOWN);
        return;
    }
    SR_INC(s->stats.disconnects);
    event_del(s->state_ev); /* a slow pause ends with the link */
    /* a link that was up retries quickly first */
    s->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    link_down(s, ac->c.errstr[0] ? ac->c.errstr : "connection closed");
}

/* Starts a connect; on immediate failure, schedules the next one. */
static void link_start(struct store_redis *s)
{
    redisAsyncContext *ac;
    char why[128];

    set_state(s, STORE_REDIS_CONNECTING);
    if (s->unix_path != NULL)
        ac = redisAsyncConnectUnix(s->unix_path);
    else
        ac = redisAsyncConnect(s->host, s->port);
    if (ac == NULL) {
        link_down(s, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof(why), "%s", ac->c.errstr);
        redisAsyncFree(ac);
        link_down(s, why);
        return;
    }
    ac->data = s;
    if (redisLibeventAttach(ac, s->base) != REDIS_OK) {
        redisAsyncFree(ac);
        link_down(s, "cannot attach to the event loop");
        return;
    }
    /* the connect callback is armed last: it waits for the first write event */
    redisAsyncSetDisconnectCallback(ac, store_redis_on_disconnect);
    redisAsyncSetConnectCallback(ac, store_redis_on_connect);
    s->ac = ac;
    arm_state_timer(s, STORE_REDIS_CONNECT_TIMEOUT_MS);
}

static void store_redis_on_state_timer(evutil_socket_t fd, short what, void *arg)
{
    struct store_redis *s = arg;

    (void)fd;
    (void)what;
    switch (s->state) {
    case STORE_REDIS_DOWN:
        link_start(s);
        break;
    case STORE_REDIS_CONNECTING:
        /* not connected, so nothing was sent and no callback runs */
        if (s->ac != NULL)
            redisAsyncFree(s->ac);
        link_down(s, "connect timed out");
        break;
    case STORE_REDIS_SLOW:
        log_debug("%s: redis %s: slow pause over", __func__, s->addr);
        s->timeouts_in_row = 0;
        set_state(s, STORE_REDIS_UP);
        break;
    case STORE_REDIS_UP:
        break;
    }
}

/* Parses <addr> into s->host/port or s->unix_path; -1 when malformed or
 * out of memory. */
static int parse_addr(struct store_redis *s, const char *addr)
{
    if (strncmp(addr, STORE_REDIS_UNIX, STORE_REDIS_UNIX_LEN) == 0) {
        s->unix_path = strdup(addr + STORE_REDIS_UNIX_LEN);
        return s->unix_path != NULL ? 0 : -1;
    }
    const char *host = addr, *host_end, *port;
    if (addr[0] == '[') {
        host = addr + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL || host_end[1] != ':')
            return -1;
        port = host_end + 2;
    } else {
        host_end = strrchr(addr, ':');
        if (host_end == NULL)
            return -1;
        port = host_end + 1;
    }
    char *end;
    errno = 0;
    long p = strtol(port, &end, 10);
    if (errno != 0 || end == port || *end != '\0' || p < 1 || p > 65535 || host_end == host)
        return -1;
    s->port = (int)p;
    s->host = strndup(host, (size_t)(host_end - host));
    return s->host != NULL ? 0 : -1;
}

struct store_redis *store_redis_new(struct event_base *base, const char *addr, unsigned timeout_ms)
{
    struct store_redis *s = calloc(1, sizeof(*s)); /* freed in store_redis_free() */

    if (s == NULL)
        return NULL;
    s->base = base;
    s->timeout_ms = timeout_ms;
    s->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    s->state = STORE_REDIS_DOWN;
    TAILQ_INIT(&s->waiting);
    TAILQ_INIT(&s->spare);
    s->addr = strdup(addr);
    if (s->addr == NULL)
        goto fail;
    if (parse_addr(s, addr) == -1) {
        log_warnx("redis %s: not host:port, [v6]:port or unix:/path", addr);
        goto fail;
    }
    s->state_ev = event_new(base, -1, 0, store_redis_on_state_timer, s);
    s->timeout_ev = event_new(base, -1, 0, store_redis_on_timeout, s);
    if (s->state_ev == NULL || s->timeout_ev == NULL)
        goto fail;
    link_start(s);
    return s;
fail:
    store_redis_free(s);
    return NULL;
}

void store_redis_free(struct store_redis *s)
{
    if (s == NULL)
        return;
    s->freeing = true;
    /* hiredis answers every pending command with a NULL reply first: gets
     * are answered FAILED and dels -1, each op freed there */
    if (s->ac != NULL) {
        redisAsyncContext *ac = s->ac;
        s->ac = NULL;
        redisAsyncFree(ac);
    }
    assert(TAILQ_EMPTY(&s->waiting));
    if (s->state_ev != NULL)
        event_free(s->state_ev);
    s->state_ev = NULL;
    if (s->timeout_ev != NULL)
        event_free(s->timeout_ev);
    s->timeout_ev = NULL;
    while (!TAILQ_EMPTY(&s->spare)) {
        struct store_redis_op *op = TAILQ_FIRST(&s->spare);
        TAILQ_REMOVE(&s->spare, op, entry);
        free(op);
    }
    free(s->host);
    free(s->unix_path);
    free(s->addr);
    free(s);
}

enum store_redis_state store_redis_state(const struct store_redis *s)
{
    return s->state;
}

const struct store_redis_stats *store_redis_stats(const struct store_redis *s)
{
    return &s->stats;
}

/* ------------------------------------------------------------ gets */

static void arm_timeout(struct store_redis *s, uint64_t now)
{
    const struct store_redis_op *head = TAILQ_FIRST(&s->waiting);

    if (head == NULL)
        return;
    uint64_t left = head->deadline_us > now ? head->deadline_us - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(left / 1000000u),
                         .tv_usec = (suseconds_t)(left % 1000000u)};
    event_add(s->timeout_ev, &tv);
}

static void store_redis_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct store_redis *s = arg;
    struct store_redis_op *op;
    uint64_t now = now_us();

    (void)fd;
    (void)what;
    /* deadlines only grow along the FIFO: stop at the first still in time */
    while ((op = TAILQ_FIRST(&s->waiting)) != NULL && op->deadline_us <= now) {
        fifo_remove(s, op);
        SR_INC(s->stats.timeouts);
        s->timeouts_in_row++;
        if (s->timeouts_in_row == STORE_REDIS_SLOW_AFTER && s->state == STORE_REDIS_UP) {
            /* before the callback, so a retry from it is refused */
            log_debug("%s: redis %s: %u gets in a row timed out; skipping gets for %d ms", __func__,
                      s->addr, s->timeouts_in_row, STORE_REDIS_SLOW_PAUSE_MS);
            set_state(s, STORE_REDIS_SLOW);
            arm_state_timer(s, STORE_REDIS_SLOW_PAUSE_MS);
        }
        answer_get(s, op, STORE_REDIS_FAILED, NULL, 0);
    }
    arm_timeout(s, now);
}

static void store_redis_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;
    const redisReply *reply = r;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_GET);
    s->inflight--;
    if (reply == NULL) {
        /* the link dropped or the store is being freed */
        answer_get(s, op, STORE_REDIS_FAILED, NULL, 0);
    } else if (!op->answered && !op->cancelled) {
        uint64_t now = now_us();
        SR_ADD(s->stats.rtt_us_sum, now - op->sent_us);
        SR_INC(s->stats.rtt_count);
        s->timeouts_in_row = 0;
        switch (reply->type) {
        case REDIS_REPLY_STRING:
            answer_get(s, op, STORE_REDIS_FOUND, reply->str, reply->len);
            break;
        case REDIS_REPLY_NIL:
            answer_get(s, op, STORE_REDIS_NOT_FOUND, NULL, 0);
            break;
        case REDIS_REPLY_ERROR:
            SR_INC(s->stats.errors);
            log_debug("%s: redis %s: GET: %s", __func__, s->addr, reply->str);
            answer_get(s, op, STORE_REDIS_FAILED, NULL, 0);
            break;
        default:
            log_debug("%s: redis %s: GET: unexpected reply type %d", __func__, s->addr,
                      reply->type);
            answer_get(s, op, STORE_REDIS_FAILED, NULL, 0);
            break;
        }
    }
    /* else: timed out (answered then) or cancelled: the reply is dropped */
    op_release(s, op);
}

/* Whether a command may be sent now. Gets and sets are optional work that
 * a slow Redis is spared (<even_slow> false); purges are not. */
static bool usable(const struct store_redis *s, bool even_slow)
{
    if (s->freeing || s->ac == NULL || s->inflight >= STORE_REDIS_MAX_PENDING)
        return false;
    return s->state == STORE_REDIS_UP || (even_slow && s->state == STORE_REDIS_SLOW);
}

struct store_redis_op *store_redis_get(struct store_redis *s, const char *key, size_t key_len,
                                       store_redis_get_fn cb, void *arg)
{
    if (!usable(s, false)) {
        SR_INC(s->stats.skipped);
        return NULL;
    }
    struct store_redis_op *op = op_acquire(s, OP_GET, arg);
    if (op == NULL) {
        SR_INC(s->stats.skipped);
        return NULL;
    }
    op->cb.get = cb;
    const char *argv[2] = {"GET", key};
    const size_t argvlen[2] = {3, key_len};
    if (redisAsyncCommandArgv(s->ac, store_redis_on_reply, op, 2, argv, argvlen) != REDIS_OK) {
        /* the link is going away (hiredis refuses new commands then) */
        op_release(s, op);
        SR_INC(s->stats.skipped);
        return NULL;
    }
    s->inflight++;
    op->sent_us = now_us();
    op->deadline_us = op->sent_us + (uint64_t)s->timeout_ms * 1000u;
    bool idle = TAILQ_EMPTY(&s->waiting);
    TAILQ_INSERT_TAIL(&s->waiting, op, entry);
    op->in_fifo = true;
    /* a pending timer fires no later than this op's deadline and re-arms */
    if (idle && !event_pending(s->timeout_ev, EV_TIMEOUT, NULL))
        arm_timeout(s, op->sent_us);
    return op;
}

void store_redis_cancel(struct store_redis_op *op)
{
    if (op == NULL)
        return;
    assert(op->magic == STORE_REDIS_OP_MAGIC);
    op->cancelled = true;
    /* no answer is owed any more, so no timeout either */
    fifo_remove(op->s, op);
}

/* ------------------------------------------------------------ writes */

/* Replies to sets: only errors matter. */
static void store_redis_on_write_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis *s = privdata;
    const redisReply *reply = r;

    (void)ac;
    s->inflight--;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_debug("%s: redis %s: write: %s", __func__, s->addr, reply->str);
    }
}

int store_redis_set(struct store_redis *s, const char *key, size_t key_len, const void *value,
                    size_t value_len, uint64_t ttl_ms, const char *set_key, size_t set_key_len)
{
    char ttl[STORE_REDIS_NUM_MAX];

    /* PX 0 is an error to Redis: an entry that expires now is not stored */
    if (!usable(s, false) || ttl_ms == 0)
        return -1;
    int ttl_len = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ttl_ms);

    const char *set_argv[5] = {"SET", key, value, "PX", ttl};
    const size_t set_len[5] = {3, key_len, value_len, 2, (size_t)ttl_len};
    if (redisAsyncCommandArgv(s->ac, store_redis_on_write_reply, s, 5, set_argv, set_len) !=
        REDIS_OK)
        return -1;
    s->inflight++;
    SR_INC(s->stats.sets);
    if (set_key == NULL)
        return 0;

    const char *sadd_argv[3] = {"SADD", set_key, key};
    const size_t sadd_len[3] = {4, set_key_len, key_len};
    const char *nx_argv[4] = {"PEXPIRE", set_key, ttl, "NX"};
    const char *gt_argv[4] = {"PEXPIRE", set_key, ttl, "GT"};
    const size_t exp_len[4] = {7, set_key_len, (size_t)ttl_len, 2};
    /* the SET went out, so this counts as sent; a refusal here means the
     * link is dropping and the set's entry goes with it */
    if (redisAsyncCommandArgv(s->ac, store_redis_on_write_reply, s, 3, sadd_argv, sadd_len) ==
        REDIS_OK)
        s->inflight++;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_write_reply, s, 4, nx_argv, exp_len) ==
        REDIS_OK)
        s->inflight++;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_write_reply, s, 4, gt_argv, exp_len) ==
        REDIS_OK)
        s->inflight++;
    return 0;
}

static void store_redis_on_del_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;
    const redisReply *reply = r;
    long long n = -1;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_DEL);
    s->inflight--;
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER) {
        n = reply->integer;
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_debug("%s: redis %s: del: %s", __func__, s->addr, reply->str);
    }
    if (op->cb.count != NULL)
        op->cb.count(op->arg, n);
    op_release(s, op);
}

int store_redis_del(struct store_redis *s, const char *key, size_t key_len, const char *set_key,
                    size_t set_key_len, store_redis_count_fn cb, void *arg)
{
    int rc;

    /* purges go to a slow Redis too: a stale entry must not outlive them */
    if (!usable(s, true))
        return -1;
    struct store_redis_op *op = op_acquire(s, OP_DEL, arg);
    if (op == NULL)
        return -1;
    op->cb.count = cb;
    if (set_key == NULL) {
        const char *argv[2] = {"DEL", key};
        const size_t argvlen[2] = {3, key_len};
        rc = redisAsyncCommandArgv(s->ac, store_redis_on_del_reply, op, 2, argv, argvlen);
    } else {
        const char *argv[5] = {"EVAL", del_script, "2", key, set_key};
        const size_t argvlen[5] = {4, sizeof(del_script) - 1, 1, key_len, set_key_len};
        rc = redisAsyncCommandArgv(s->ac, store_redis_on_del_reply, op, 5, argv, argvlen);
    }
    if (rc != REDIS_OK) {
        op_release(s, op);
        return -1;
    }
    s->inflight++;
    op->sent_us = now_us();
    SR_INC(s->stats.dels);
    return 0;
}
