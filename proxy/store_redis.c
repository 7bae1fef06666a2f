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
 * A get is not sent at once: it waits, with a copy of its key, in the
 * store's batch until the batch event runs at the end of the loop turn
 * (or the batch is full), which sends every waiting get as one MGET (one
 * alone as GET) and hands the ops, chained in key order, to the reply.
 * A batch that cannot be sent (the link went) answers each get FAILED.
 *
 * A write given a callback is an op too (OP_SET), in the same FIFO with the
 * same timeout, answered once: by its reply, or "not stored" at its deadline.
 *
 * A get's handle is valid until its callback runs (or, once cancelled,
 * must not be used again). A purge that was sent always calls back exactly
 * once, with -1 when the link drops or the store is freed first, so a caller
 * that may go away first passes a NULL callback or outlives the store. A
 * prefix purge is one op through all its batches: each reply sends the next
 * batch, with the op (and its copy of the prefix) as the callback's data.
 * Gets refused (NULL) and writes refused (-1) never call back.
 *
 * Writes with indexes run a script loaded on every (re)connect, before any
 * other command, and called by its SHA-1; should Redis lose it (SCRIPT
 * FLUSH), the NOSCRIPT reply loads it again, and those writes are lost
 * (a cache write may be). Purges send their script text (EVAL): they are
 * rare and must not fail that way.
 *
 * A subscriber store sends SUBSCRIBE first thing on every link, and nothing
 * else once subscribed; hiredis calls the subscription's callback for the
 * confirmation, for every message and (NULL) when the link goes.
 *
 * A Redis that stops answering without closing the link (stopped, or cut
 * off without a reset) is found by the stall timer: while replies are owed,
 * it drops the link once nothing was heard for stall_ms, a reply or
 * hiredis's unsent output shrinking being what counts as heard. It runs
 * from the event loop, never inside a hiredis callback, so it may free the
 * context. Until then, what waits for such a Redis is bounded: writes carry
 * their size in queued_bytes until answered and a write that would take it
 * past STORE_REDIS_QUEUE_VALUES largest values is refused. Each link that
 * loads the write script then asks the server's proto-max-bulk-len (CONFIG
 * GET) and refuses values over it, which Redis would answer by closing the
 * link; until the answer, values over STORE_REDIS_BULK_MIN wait for no one
 * and are refused too.
 *
 * Only the owning worker thread touches a store; the counters are written
 * with relaxed atomic stores for the admin thread to read. Callbacks may
 * call any store_redis function but store_redis_free(): it must
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

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/sds.h>
#include <openssl/evp.h>

#include "clock.h"
#include "log.h"
#include "redis_events.h"

#define STORE_REDIS_SPARE_OPS     256         /* freed ops kept for reuse */
#define STORE_REDIS_OP_MAGIC      0x5245444fu /* "REDO": a live op */
#define STORE_REDIS_NUM_MAX       24          /* decimal digits of a u64, and some */
#define STORE_REDIS_BATCH_MAX     64          /* gets of one loop turn sent as one MGET */
#define STORE_REDIS_BATCH_KEY_MAX 128         /* longer keys are sent alone */
#define STORE_REDIS_GET_CMD_MAX   1024        /* a GET formatted on the stack; longer: hiredis */
#define STORE_REDIS_UNIX          "unix:"
#define STORE_REDIS_UNIX_LEN      (sizeof(STORE_REDIS_UNIX) - 1)

#define STORE_REDIS_STACK_INDEXES 16 /* indexes of a set passed without a heap array */
#define STORE_REDIS_SHA1_HEX      40
#define STORE_REDIS_ENTRY_PATTERN                                                                  \
    "cg:????????????????????????????????????????????????????????????????"
#define STORE_REDIS_NOSCRIPT   "NOSCRIPT"
#define STORE_REDIS_BULK_PARAM "proto-max-bulk-len"

/*
 * The value header the purges read (cache_entry.h, version 1): magic and
 * kind at 0, freshness_ms (i64) at 28, key_len (u32) at 60, key text at 88.
 * Lua counts from 1.
 */
#define LUA_ENTRY_CHECKS                                                                           \
    "local HDR = 88\n"                                                                             \
    "local RESPONSE = 'CGE1' .. string.char(1)\n"                                                  \
    "local ZERO = string.rep(string.char(0), 8)\n"                                                 \
    "local function soften(k, h)\n"                                                                \
    "  if h:sub(1, 5) ~= RESPONSE then return 0 end\n"                                             \
    "  redis.call('SETRANGE', k, 28, ZERO)\n"                                                      \
    "  return 1\n"                                                                                 \
    "end\n"                                                                                        \
    "local function header(k, extra)\n"                                                            \
    "  local h = redis.pcall('GETRANGE', k, 0, HDR - 1 + extra)\n"                                 \
    "  if type(h) ~= 'string' or #h < HDR or h:sub(1, 4) ~= 'CGE1' then return nil end\n"          \
    "  return h\n"                                                                                 \
    "end\n"

/*
 * A write with indexes, or one that must not shorten its key's life. KEYS:
 * the entry, then its indexes. ARGV: value, ttl ms, "1" when the key's
 * expiry may not move earlier: a key that outlives the ttl keeps its expiry,
 * and the value (a cache_entry.h one) its freshness_ms (i64 at 28) grown by
 * the difference, so that it still states how long it lives. Times are
 * Redis's clock (epoch ms), so the entry's expiry and its score in every
 * index are the same number, whatever the clocks of the instances sharing
 * an index. Numbers stay below 2^53, exact in Lua.
 */
static const char put_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl, v = tonumber(ARGV[2]), ARGV[1]\n"
    "if ARGV[3] == '1' and #v >= 36 then\n"
    "  local left = redis.call('PTTL', KEYS[1])\n"
    "  if left > ttl then\n"
    "    local fresh = struct.unpack('<i8', v, 29) + left - ttl\n"
    "    v = v:sub(1, 28) .. struct.pack('<i8', fresh) .. v:sub(37)\n"
    "    ttl = left\n"
    "  end\n"
    "end\n"
    "local at = string.format('%.0f', now + ttl)\n"
    "redis.call('SET', KEYS[1], v, 'PXAT', at)\n"
    "for i = 2, #KEYS do\n"
    "  redis.call('ZADD', KEYS[i], at, KEYS[1])\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now))\n"
    "  redis.call('PEXPIREAT', KEYS[i], at, 'NX')\n"
    "  redis.call('PEXPIREAT', KEYS[i], at, 'GT')\n"
    "end\n"
    "return 0\n";

/*
 * A purge. KEYS: ARGV[2] entries, then indexes. ARGV[1]: "1" soft. Returns
 * the entries deleted or softened, each once.
 */
static const char purge_script[] =
    LUA_ENTRY_CHECKS "local soft = ARGV[1] == '1'\n"
                     "local plain = tonumber(ARGV[2])\n"
                     "local n, seen = 0, {}\n"
                     "local function purge(k)\n"
                     "  if seen[k] then return end\n"
                     "  seen[k] = true\n"
                     "  if not soft then n = n + redis.call('DEL', k) return end\n"
                     "  local h = header(k, 0)\n"
                     "  if h then n = n + soften(k, h) end\n"
                     "end\n"
                     "for i = 1, plain do purge(KEYS[i]) end\n"
                     "for i = plain + 1, #KEYS do\n"
                     "  for _, k in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do purge(k) end\n"
                     "  if not soft then redis.call('DEL', KEYS[i]) end\n"
                     "end\n"
                     "return n\n";

/*
 * One batch of a prefix purge. ARGV: cursor, entry key pattern, batch size,
 * prefix, "1" soft. Returns {next cursor, entries purged}.
 */
static const char prefix_script[] =
    LUA_ENTRY_CHECKS "local prefix, soft = ARGV[4], ARGV[5] == '1'\n"
                     "local path = prefix:sub(1, 1) == '/'\n"
                     "local r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])\n"
                     "local n = 0\n"
                     "for _, k in ipairs(r[2]) do\n"
                     "  local h = header(k, path and 0 or #prefix)\n"
                     "  local hit = false\n"
                     "  if h then\n"
                     "    local kl = struct.unpack('<I4', h, 61)\n"
                     "    if path then\n"
                     "      local key = redis.call('GETRANGE', k, HDR, HDR + kl - 1)\n"
                     "      local at = key:find('://', 1, true)\n"
                     "      local p = at and key:find('/', at + 3, true)\n"
                     "      hit = p ~= nil and key:sub(p, p + #prefix - 1) == prefix\n"
                     "    else\n"
                     "      hit = kl >= #prefix and h:sub(HDR + 1, HDR + #prefix) == prefix\n"
                     "    end\n"
                     "  end\n"
                     "  if hit then\n"
                     "    if soft then n = n + soften(k, h) else n = n + redis.call('DEL', k) end\n"
                     "  end\n"
                     "end\n"
                     "return {r[1], n}\n";

/* Counter bumps by the only writer, for relaxed readers elsewhere. */
#define SR_INC(field)    __atomic_store_n(&(field), (field) + 1, __ATOMIC_RELAXED)
#define SR_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define SR_SET(field, v) __atomic_store_n(&(field), (v), __ATOMIC_RELAXED)

enum op_kind {
    OP_GET = 1,    /* answers through cb.get */
    OP_PURGE = 2,  /* one script; answers through cb.count (may be NULL) */
    OP_PREFIX = 3, /* a chain of batches; answers through cb.count (may be NULL) */
    OP_SET = 4,    /* a write whose outcome is wanted; answers through cb.set */
    OP_WRITE = 5,  /* a SET or PUBLISH: answers no one, its bytes are owed a reply */
};

struct store_redis_op {
    unsigned magic;                    /* STORE_REDIS_OP_MAGIC while live */
    TAILQ_ENTRY(store_redis_op) entry; /* in s->waiting (in_fifo) or s->spare */
    struct store_redis *s;             /* borrowed: the store outlives its ops */
    enum op_kind kind;                 /* which callback */
    union {
        store_redis_get_fn get;
        store_redis_count_fn count;
        store_redis_set_fn set;
    } cb;                                /* the caller's */
    void *arg;                           /* the caller's, passed back */
    uint64_t sent_us;                    /* monotonic, when the command was queued */
    uint64_t deadline_us;                /* monotonic, when a get (or OP_SET) times out */
    bool answered;                       /* the callback ran (timeout): drop the reply */
    bool cancelled;                      /* the caller gave up: never call back */
    bool in_fifo;                        /* on s->waiting */
    char *prefix;                        /* OP_PREFIX: owned copy, freed in op_release() */
    size_t prefix_len;                   /* OP_PREFIX */
    bool soft;                           /* OP_PREFIX: soften rather than delete */
    long long total;                     /* OP_PREFIX: entries purged by the batches so far */
    size_t bytes;                        /* OP_WRITE: its share of s->queued_bytes */
    struct store_redis_op *batch_next;   /* OP_GET: the next get of its MGET */
    size_t key_len;                      /* OP_GET waiting in s->batch */
    char key[STORE_REDIS_BATCH_KEY_MAX]; /* OP_GET waiting in s->batch */
};

TAILQ_HEAD(op_list, store_redis_op);

struct store_redis {
    struct event_base *base;      /* borrowed from the worker */
    char *host;                   /* owned, freed in store_redis_free(); NULL for unix */
    int port;                     /* TCP port */
    char *unix_path;              /* owned, freed in store_redis_free(); NULL for TCP */
    char *addr;                   /* owned copy of the configured address, for logs */
    unsigned timeout_ms;          /* longest a get waits */
    redisAsyncContext *ac;        /* owned; NULL when DOWN; hiredis frees it on a drop */
    enum store_redis_state state; /* see enum store_redis_state */
    struct event *state_ev;       /* owned: reconnect, connect timeout or slow-pause end */
    struct event *timeout_ev;     /* owned: the FIFO head's deadline */
    unsigned backoff_ms;          /* next reconnect delay */
    unsigned timeouts_in_row;     /* gets timed out since the last in-time reply */
    bool reported_down;           /* the loss was logged; retries log at debug */
    bool freeing;                 /* store_redis_free() is running */
    unsigned inflight;            /* commands awaiting a reply (all kinds) */
    size_t max_value;             /* bytes: the largest value the caller stores */
    size_t queued_bytes;          /* bytes of the writes (OP_WRITE) awaiting a reply */
    size_t bulk_max;              /* bytes: the largest value this link's Redis takes */
    bool bulk_known;              /* Redis told bulk_max on this link (or refused to) */
    bool bulk_refusal_logged;     /* a refused CONFIG GET was logged at info */
    bool link_answered;           /* Redis answered something on this link */
    uint64_t heard_us;            /* monotonic: last reply, output taken, or first owed */
    size_t unsent_seen;           /* bytes hiredis had not written at the last stall check */
    struct event *stall_ev;       /* owned: the stall check, armed while replies are owed */
    const char *drop_why;         /* borrowed: why link_drop() is freeing the link */
    char put_sha[STORE_REDIS_SHA1_HEX + 1]; /* SHA-1 hex of put_script, for EVALSHA */
    bool loading_script;                    /* a SCRIPT LOAD is in flight */
    bool subscriber;                        /* store_redis_subscribe() made this a subscriber */
    bool sub_up;                            /* the subscription is confirmed on this link */
    char *sub_channel;                      /* owned, freed in store_redis_free() */
    store_redis_message_fn on_message;      /* the subscriber's */
    store_redis_link_fn on_link;            /* the subscriber's */
    void *sub_arg;                          /* the subscriber's, passed back */
    store_redis_up_fn on_up;                /* store_redis_set_on_up()'s; NULL none */
    void *up_arg;                           /* passed back to on_up */
    struct op_list waiting;         /* gets, OP_SETs owed an answer, earliest deadline first */
    struct op_list spare;           /* owned free ops, freed in store_redis_free() */
    unsigned spare_count;           /* length of spare */
    struct store_redis_stats stats; /* written here only */
    struct store_redis_op *batch[STORE_REDIS_BATCH_MAX]; /* gets not yet sent, in order */
    unsigned batch_count;                                /* length of batch */
    struct event *batch_ev;                              /* owned: sends the batch */
};

static void store_redis_on_state_timer(evutil_socket_t fd, short what, void *arg);
static void store_redis_on_stall_check(evutil_socket_t fd, short what, void *arg);
static void store_redis_on_timeout(evutil_socket_t fd, short what, void *arg);
static void store_redis_on_batch(evutil_socket_t fd, short what, void *arg);
static void batch_fail(struct store_redis *s);
static void send_script_load(struct store_redis *s);
static void send_bulk_query(struct store_redis *s);
static void send_subscribe(struct store_redis *s);
static void sub_lost(struct store_redis *s);

/* ------------------------------------------------------------ helpers */

static uint64_t now_us(void)
{
    return (uint64_t)clock_mono_us();
}

static struct timeval ms_tv(unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* The lowercase hex SHA-1 of <len> bytes at <text> (a script's, for
 * EVALSHA) into <out> (41 bytes). 0 or -1. */
static int script_sha(const char *text, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;

    if (EVP_Digest(text, len, md, &mdlen, EVP_sha1(), NULL) != 1 ||
        mdlen * 2 != STORE_REDIS_SHA1_HEX)
        return -1;
    for (unsigned i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[STORE_REDIS_SHA1_HEX] = '\0';
    return 0;
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

/* How long a link that owes replies may hear nothing from Redis, in us. */
static uint64_t stall_us(const struct store_redis *s)
{
    uint64_t ms = (uint64_t)s->timeout_ms * STORE_REDIS_STALL_TIMEOUTS;

    if (ms < STORE_REDIS_STALL_MIN_MS)
        ms = STORE_REDIS_STALL_MIN_MS;
    return ms * 1000u;
}

/* Bytes of commands hiredis holds and has not written to the socket yet. */
static size_t unsent(const struct store_redis *s)
{
    if (s->ac == NULL || s->ac->c.obuf == NULL)
        return 0;
    return sdslen(s->ac->c.obuf);
}

/* Writes owed a reply may hold this many bytes. */
static size_t queue_budget(const struct store_redis *s)
{
    return s->max_value * STORE_REDIS_QUEUE_VALUES;
}

static void arm_stall(struct store_redis *s, uint64_t us)
{
    struct timeval tv = {.tv_sec = (time_t)(us / 1000000u),
                         .tv_usec = (suseconds_t)(us % 1000000u)};

    event_add(s->stall_ev, &tv);
}

/* A command was queued: one more reply owed. The first one owed starts the
 * stall check, silence counting from now. */
static void owe_reply(struct store_redis *s)
{
    if (s->inflight++ > 0)
        return;
    s->heard_us = now_us();
    s->unsent_seen = unsent(s);
    if (!event_pending(s->stall_ev, EV_TIMEOUT, NULL))
        arm_stall(s, stall_us(s));
}

/* A command's reply came (<reply> not NULL, at <now>), or the link went
 * (NULL). The first reply on a link ends the reconnect back-off. */
static void got_reply(struct store_redis *s, const void *reply, uint64_t now)
{
    s->inflight--;
    if (reply == NULL)
        return;
    s->heard_us = now;
    if (!s->link_answered) {
        s->link_answered = true;
        s->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    }
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
    free(op->prefix);
    op->prefix = NULL;
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

/* Answers an OP_SET once; the op stays allocated for its reply. */
static void answer_set(struct store_redis *s, struct store_redis_op *op, bool stored)
{
    fifo_remove(s, op);
    if (op->answered)
        return;
    op->answered = true;
    op->cb.set(op->arg, stored);
}

/* ------------------------------------------------------------ the link */

static void link_start(struct store_redis *s);

/* The link failed or dropped: DOWN, and a reconnect after the back-off. */
static void link_down(struct store_redis *s, const char *why)
{
    s->ac = NULL;
    s->timeouts_in_row = 0;
    s->loading_script = false;
    event_del(s->stall_ev); /* nothing is owed on a link that is gone */
    set_state(s, STORE_REDIS_DOWN);
    sub_lost(s);
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
    /* the back-off ends with the first reply: a Redis that is stopped still
     * has its connections accepted by the kernel */
    s->timeouts_in_row = 0;
    s->heard_us = now_us(); /* silence on this link counts from now */
    s->unsent_seen = unsent(s);
    SR_INC(s->stats.connects);
    set_state(s, STORE_REDIS_UP);
    /* probes find a peer that went away while nothing is owed (the stall
     * check only runs while replies are owed); unix sockets have none */
    if (s->unix_path == NULL && redisEnableKeepAlive(&s->ac->c) != REDIS_OK)
        log_warnx("redis %s: cannot enable TCP keepalive: %s", s->addr, s->ac->c.errstr);
    if (s->reported_down)
        log_info("redis %s: connected again", s->addr);
    else
        log_info("redis %s: connected", s->addr);
    s->reported_down = false;
    if (s->on_up != NULL && !s->subscriber)
        s->on_up(s->up_arg);
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
    /* a link Redis answered on retries quickly first (got_reply() reset the
     * back-off); one it stayed silent on waits longer each time */
    if (s->drop_why != NULL)
        link_down(s, s->drop_why);
    else
        link_down(s, ac->c.errstr[0] ? ac->c.errstr : "connection closed");
}

/* Frees the link Redis stopped answering on, from the event loop (never
 * inside a hiredis callback): every command owed a reply gets NULL, then
 * store_redis_on_disconnect() counts the loss and schedules the reconnect. */
static void link_drop(struct store_redis *s, const char *why)
{
    redisAsyncContext *ac = s->ac;

    assert(ac != NULL && !s->freeing);
    s->ac = NULL; /* callbacks run from here send nothing on it */
    s->drop_why = why;
    redisAsyncFree(ac);
    s->drop_why = NULL;
}

/* While replies are owed: drops the link when nothing was heard from Redis
 * for stall_us(), else checks again when that would be. */
static void store_redis_on_stall_check(evutil_socket_t fd, short what, void *arg)
{
    struct store_redis *s = arg;
    uint64_t now = now_us(), limit = stall_us(s);
    char why[96];

    (void)fd;
    (void)what;
    if (s->ac == NULL || s->inflight == 0)
        return; /* armed again by the next command owed a reply */
    size_t left = unsent(s);
    /* Redis taking our output is alive, only busy reading (a large value);
     * a link still connecting has its own timeout */
    if (left < s->unsent_seen || s->state == STORE_REDIS_CONNECTING)
        s->heard_us = now;
    s->unsent_seen = left;
    uint64_t quiet = now - s->heard_us;
    if (quiet >= limit) {
        snprintf(why, sizeof(why), "no reply for %llu ms with %u commands and %zu bytes owed",
                 (unsigned long long)(quiet / 1000u), s->inflight, s->queued_bytes);
        link_drop(s, why);
        return;
    }
    arm_stall(s, limit - quiet);
}

/* Starts a connect; on immediate failure, schedules the next one. */
static void link_start(struct store_redis *s)
{
    redisAsyncContext *ac;
    char why[128];

    set_state(s, STORE_REDIS_CONNECTING);
    s->link_answered = false;
    s->bulk_known = false;
    s->bulk_max = STORE_REDIS_BULK_MIN; /* until this link's Redis says */
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
    if (redis_events_attach(ac, s->base) != REDIS_OK) {
        redisAsyncFree(ac);
        link_down(s, "cannot attach to the event loop");
        return;
    }
    /* the connect callback is armed last: it waits for the first write event */
    redisAsyncSetDisconnectCallback(ac, store_redis_on_disconnect);
    redisAsyncSetConnectCallback(ac, store_redis_on_connect);
    s->ac = ac;
    arm_state_timer(s, STORE_REDIS_CONNECT_TIMEOUT_MS);
    /* queued now, so it goes before anything else on this link */
    if (s->subscriber) {
        send_subscribe(s);
    } else {
        send_script_load(s);
        send_bulk_query(s);
    }
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

struct store_redis *store_redis_new(struct event_base *base, const char *addr, unsigned timeout_ms,
                                    size_t max_value)
{
    struct store_redis *s = calloc(1, sizeof(*s)); /* freed in store_redis_free() */

    if (s == NULL)
        return NULL;
    s->base = base;
    s->timeout_ms = timeout_ms;
    s->max_value = max_value;
    s->backoff_ms = STORE_REDIS_BACKOFF_MIN_MS;
    s->state = STORE_REDIS_DOWN;
    TAILQ_INIT(&s->waiting);
    TAILQ_INIT(&s->spare);
    s->addr = strdup(addr);
    if (s->addr == NULL)
        goto fail;
    if (script_sha(put_script, sizeof(put_script) - 1, s->put_sha) == -1)
        goto fail;
    if (parse_addr(s, addr) == -1) {
        log_warnx("redis %s: not host:port, [v6]:port or unix:/path", addr);
        goto fail;
    }
    s->state_ev = event_new(base, -1, 0, store_redis_on_state_timer, s);
    s->timeout_ev = event_new(base, -1, 0, store_redis_on_timeout, s);
    s->batch_ev = event_new(base, -1, 0, store_redis_on_batch, s);
    s->stall_ev = event_new(base, -1, 0, store_redis_on_stall_check, s);
    if (s->state_ev == NULL || s->timeout_ev == NULL || s->batch_ev == NULL || s->stall_ev == NULL)
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
    batch_fail(s); /* gets not sent yet: FAILED, each op freed there */
    if (s->batch_ev != NULL)
        event_free(s->batch_ev);
    s->batch_ev = NULL;
    /* hiredis answers every pending command with a NULL reply first: gets
     * are answered FAILED and purges -1, each op freed there */
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
    if (s->stall_ev != NULL)
        event_free(s->stall_ev);
    s->stall_ev = NULL;
    while (!TAILQ_EMPTY(&s->spare)) {
        struct store_redis_op *op = TAILQ_FIRST(&s->spare);
        TAILQ_REMOVE(&s->spare, op, entry);
        free(op);
    }
    free(s->host);
    free(s->unix_path);
    free(s->addr);
    free(s->sub_channel);
    free(s);
}

void store_redis_set_on_up(struct store_redis *s, store_redis_up_fn on_up, void *arg)
{
    s->on_up = on_up;
    s->up_arg = arg;
}

void store_redis_max_value(struct store_redis *s, size_t max_value)
{
    s->max_value = max_value;
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

/* Queues <op>, just sent, for its answer within the timeout: every op
 * there has the same, so the FIFO stays sorted by deadline. */
static void fifo_add(struct store_redis *s, struct store_redis_op *op)
{
    op->sent_us = now_us();
    op->deadline_us = op->sent_us + (uint64_t)s->timeout_ms * 1000u;
    bool idle = TAILQ_EMPTY(&s->waiting);
    TAILQ_INSERT_TAIL(&s->waiting, op, entry);
    op->in_fifo = true;
    /* a pending timer fires no later than this op's deadline and re-arms */
    if (idle && !event_pending(s->timeout_ev, EV_TIMEOUT, NULL))
        arm_timeout(s, op->sent_us);
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
        if (op->kind == OP_SET) {
            /* a large value may take a while: only gets tell Redis is slow */
            answer_set(s, op, false);
            continue;
        }
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

/* Answers the get <op> from <reply> (NULL: the link dropped or the store
 * is being freed) unless it was answered (timed out) or cancelled, then
 * releases it. */
static void get_replied(struct store_redis *s, struct store_redis_op *op, const redisReply *reply,
                        uint64_t now)
{
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_GET);
    got_reply(s, reply, now);
    if (reply == NULL) {
        answer_get(s, op, STORE_REDIS_FAILED, NULL, 0);
    } else if (!op->answered && !op->cancelled) {
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

static void store_redis_on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    (void)ac;
    get_replied(op->s, op, r, r ? now_us() : 0);
}

/* The reply to an MGET: <privdata> is its first get, the others follow
 * through batch_next, in the order of the keys. */
static void store_redis_on_mget_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;
    const redisReply *reply = r;
    (void)ac;
    size_t count = 0;
    for (const struct store_redis_op *o = op; o; o = o->batch_next)
        count++;
    /* an error (or anything but one value per key) fails every get */
    bool whole = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == count;
    uint64_t now = reply ? now_us() : 0;
    for (size_t i = 0; op; i++) {
        struct store_redis_op *next = op->batch_next;
        get_replied(s, op, whole ? reply->element[i] : reply, now);
        op = next;
    }
}

/* Answers FAILED, and releases, every get of the batch not yet sent. */
static void batch_fail(struct store_redis *s)
{
    /* taken out first: a callback may start a new batch */
    struct store_redis_op *ops[STORE_REDIS_BATCH_MAX];
    unsigned n = s->batch_count;
    memcpy(ops, s->batch, n * sizeof(ops[0]));
    s->batch_count = 0;
    for (unsigned i = 0; i < n; i++)
        get_replied(s, ops[i], NULL, 0);
}

/* Appends the decimal <v> and CRLF at out[*n]. */
static void put_count(char *out, size_t *n, size_t v)
{
    char tmp[STORE_REDIS_NUM_MAX];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out + *n, tmp + i, sizeof(tmp) - i);
    *n += sizeof(tmp) - i;
    memcpy(out + *n, "\r\n", 2);
    *n += 2;
}

/* Appends the protocol's bulk string "$<len>\r\n<key>\r\n" at out[*n]. */
static void put_bulk(char *out, size_t *n, const char *key, size_t len)
{
    out[(*n)++] = '$';
    put_count(out, n, len);
    memcpy(out + *n, key, len);
    *n += len;
    memcpy(out + *n, "\r\n", 2);
    *n += 2;
}

/* Sends a get alone; -1 when hiredis refused it (the link is going away). */
static int send_get(struct store_redis *s, struct store_redis_op *op, const char *key,
                    size_t key_len)
{
    int rc;
    if (key_len + 64 <= STORE_REDIS_GET_CMD_MAX) {
        /* the protocol's form of GET <key>, written here: every cache
         * lookup sends one, and hiredis's own formatting cost more */
        char cmd[STORE_REDIS_GET_CMD_MAX];
        size_t n = 0;
        memcpy(cmd, "*2\r\n$3\r\nGET\r\n", 13);
        n = 13;
        put_bulk(cmd, &n, key, key_len);
        rc = redisAsyncFormattedCommand(s->ac, store_redis_on_reply, op, cmd, n);
    } else {
        const char *argv[2] = {"GET", key};
        const size_t argvlen[2] = {3, key_len};
        rc = redisAsyncCommandArgv(s->ac, store_redis_on_reply, op, 2, argv, argvlen);
    }
    return rc == REDIS_OK ? 0 : -1;
}

/*
 * Sends the gets queued in this loop turn: one alone as GET, several as one
 * MGET, whose single reply the reader takes in one piece (replies of a GET
 * each make hiredis move the rest of its buffer) and Redis serves for less.
 */
static void batch_send(struct store_redis *s)
{
    unsigned n = s->batch_count;
    if (n == 0)
        return;
    if (s->ac == NULL) {
        batch_fail(s);
        return;
    }
    if (n == 1) {
        struct store_redis_op *op = s->batch[0];
        s->batch_count = 0;
        if (send_get(s, op, op->key, op->key_len) == -1)
            get_replied(s, op, NULL, 0);
        return;
    }
    char cmd[32 + STORE_REDIS_BATCH_MAX * (STORE_REDIS_BATCH_KEY_MAX + 32)];
    size_t len = 0;
    cmd[len++] = '*';
    put_count(cmd, &len, n + 1);
    memcpy(cmd + len, "$4\r\nMGET\r\n", 10);
    len += 10;
    for (unsigned i = 0; i < n; i++) {
        struct store_redis_op *op = s->batch[i];
        op->batch_next = i + 1 < n ? s->batch[i + 1] : NULL;
        put_bulk(cmd, &len, op->key, op->key_len);
    }
    if (redisAsyncFormattedCommand(s->ac, store_redis_on_mget_reply, s->batch[0], cmd, len) !=
        REDIS_OK) {
        batch_fail(s);
        return;
    }
    s->batch_count = 0;
}

static void store_redis_on_batch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    batch_send(arg);
}

/* Whether a command may be sent now. Gets and sets are optional work that
 * a slow Redis is spared (<even_slow> false); purges and publishes are not.
 * A subscriber link sends nothing else. */
static bool usable(const struct store_redis *s, bool even_slow)
{
    if (s->freeing || s->ac == NULL || s->inflight >= STORE_REDIS_MAX_PENDING || s->subscriber)
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
    if (key_len <= STORE_REDIS_BATCH_KEY_MAX) {
        /* sent at the end of this loop turn, with the turn's other gets */
        if (s->batch_count == STORE_REDIS_BATCH_MAX)
            batch_send(s);
        memcpy(op->key, key, key_len);
        op->key_len = key_len;
        s->batch[s->batch_count++] = op;
        if (s->batch_count == 1)
            event_active(s->batch_ev, EV_TIMEOUT, 1);
    } else if (send_get(s, op, key, key_len) == -1) {
        /* the link is going away (hiredis refuses new commands then) */
        op_release(s, op);
        SR_INC(s->stats.skipped);
        return NULL;
    }
    owe_reply(s);
    fifo_add(s, op);
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

/* The write script is (again) loaded; its reply matters for logs only. */
static void store_redis_on_load_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis *s = privdata;
    const redisReply *reply = r;

    (void)ac;
    got_reply(s, reply, reply != NULL ? now_us() : 0);
    s->loading_script = false;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_warnx("redis %s: cannot load the write script: %s", s->addr, reply->str);
    }
}

static void send_script_load(struct store_redis *s)
{
    const char *argv[3] = {"SCRIPT", "LOAD", put_script};
    const size_t argvlen[3] = {6, 4, sizeof(put_script) - 1};

    if (s->loading_script || s->ac == NULL)
        return;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_load_reply, s, 3, argv, argvlen) == REDIS_OK) {
        owe_reply(s);
        s->loading_script = true;
    }
}

/* The server's proto-max-bulk-len: what a value may be on this link. */
static void store_redis_on_bulk_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis *s = privdata;
    const redisReply *reply = r;

    (void)ac;
    got_reply(s, reply, reply != NULL ? now_us() : 0);
    if (reply == NULL)
        return; /* the link went; the next one asks again */
    unsigned long long v = 0;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        char *end;
        errno = 0;
        v = strtoull(reply->element[1]->str, &end, 10);
        if (errno != 0 || end == reply->element[1]->str || *end != '\0')
            v = 0;
    }
    if (v == 0) {
        /* refused (ACL, a renamed CONFIG) or not understood: Redis's
         * default; said once, as every link of the store is told the same */
        const char *why = reply->type == REDIS_REPLY_ERROR ? reply->str : "no value";
        if (!s->bulk_refusal_logged)
            log_info("redis %s: %s unknown (%s); taking %u bytes", s->addr, STORE_REDIS_BULK_PARAM,
                     why, STORE_REDIS_BULK_DEFAULT);
        else
            log_debug("%s: redis %s: %s unknown (%s)", __func__, s->addr, STORE_REDIS_BULK_PARAM,
                      why);
        s->bulk_refusal_logged = true;
        v = STORE_REDIS_BULK_DEFAULT;
    }
    s->bulk_max = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
    s->bulk_known = true;
    log_debug("%s: redis %s: values up to %zu bytes", __func__, s->addr, s->bulk_max);
}

static void send_bulk_query(struct store_redis *s)
{
    const char *argv[3] = {"CONFIG", "GET", STORE_REDIS_BULK_PARAM};
    const size_t argvlen[3] = {6, 3, sizeof(STORE_REDIS_BULK_PARAM) - 1};

    if (s->ac == NULL)
        return;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_bulk_reply, s, 3, argv, argvlen) == REDIS_OK)
        owe_reply(s);
}

/* The reply to a put or publish <op> came (<reply> NULL: the link went): its
 * bytes are no longer owed, and errors matter. <op> stays the caller's. */
static void write_replied(struct store_redis *s, const struct store_redis_op *op,
                          const redisReply *reply)
{
    assert(s->queued_bytes >= op->bytes);
    s->queued_bytes -= op->bytes;
    got_reply(s, reply, reply != NULL ? now_us() : 0);
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_debug("%s: redis %s: write: %s", __func__, s->addr, reply->str);
        /* Redis lost the script (SCRIPT FLUSH): this write is gone, the next are not */
        if (strncmp(reply->str, STORE_REDIS_NOSCRIPT, sizeof(STORE_REDIS_NOSCRIPT) - 1) == 0 &&
            !s->freeing)
            send_script_load(s);
    }
}

/* The reply to a write no one waits on. */
static void store_redis_on_write_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_WRITE);
    write_replied(s, op, r);
    op_release(s, op);
}

/* The reply to a write whose outcome is wanted. */
static void store_redis_on_set_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;
    const redisReply *reply = r;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_SET);
    write_replied(s, op, reply);
    answer_set(s, op, reply != NULL && reply->type != REDIS_REPLY_ERROR);
    op_release(s, op);
}

/* store_redis_set() and store_redis_set_longest(): <longest> keeps the
 * key's expiry from moving earlier (put_script's third argument). */
static int put(struct store_redis *s, const char *key, size_t key_len, const void *value,
               size_t value_len, uint64_t ttl_ms, const char *const *index_keys,
               const size_t *index_lens, unsigned index_count, bool longest, store_redis_set_fn cb,
               void *arg)
{
    char ttl[STORE_REDIS_NUM_MAX], nkeys[STORE_REDIS_NUM_MAX];
    const char *stack_argv[STORE_REDIS_STACK_INDEXES + 8];
    size_t stack_lens[STORE_REDIS_STACK_INDEXES + 8];
    size_t bytes = key_len + value_len;
    int rc;

    /* PX 0 is an error to Redis: an entry that expires now is not stored */
    if (ttl_ms == 0)
        return -1;
    if (!usable(s, false)) {
        SR_INC(s->stats.sets_skipped);
        return -1;
    }
    if (value_len > s->bulk_max) {
        /* Redis would close the link on it, and every command on the link
         * would fail; before it said its limit, the value waits for no one */
        if (s->bulk_known)
            SR_INC(s->stats.sets_too_large);
        else
            SR_INC(s->stats.sets_skipped);
        log_debug("%s: redis %s: a value of %zu bytes is over %zu%s", __func__, s->addr, value_len,
                  s->bulk_max, s->bulk_known ? "" : " (not known yet)");
        return -1;
    }
    /* one write may always go; more only while Redis takes what it was sent */
    if (s->queued_bytes > 0 && s->queued_bytes + bytes > queue_budget(s)) {
        SR_INC(s->stats.sets_skipped);
        return -1;
    }
    /* released by store_redis_on_write_reply() or store_redis_on_set_reply() */
    struct store_redis_op *op =
        op_acquire(s, cb != NULL ? OP_SET : OP_WRITE, cb != NULL ? arg : NULL);
    if (op == NULL) {
        SR_INC(s->stats.sets_skipped);
        return -1;
    }
    op->bytes = bytes;
    redisCallbackFn *on_reply = store_redis_on_write_reply;
    if (cb != NULL) {
        op->cb.set = cb;
        on_reply = store_redis_on_set_reply;
    }
    int ttl_len = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ttl_ms);
    if (index_count == 0 && !longest) {
        const char *argv[5] = {"SET", key, value, "PX", ttl};
        const size_t argvlen[5] = {3, key_len, value_len, 2, (size_t)ttl_len};
        rc = redisAsyncCommandArgv(s->ac, on_reply, op, 5, argv, argvlen);
    } else {
        /* EVALSHA sha numkeys key index... value ttl longest */
        unsigned argc = 4 + index_count + 3;
        const char **argv = stack_argv;
        size_t *argvlen = stack_lens;
        if (index_count > STORE_REDIS_STACK_INDEXES) {
            argv = malloc(argc * sizeof(*argv));       /* freed below */
            argvlen = malloc(argc * sizeof(*argvlen)); /* freed below */
            if (argv == NULL || argvlen == NULL) {
                free(argv);
                free(argvlen);
                op_release(s, op);
                return -1;
            }
        }
        unsigned n = 0;
        argv[n] = "EVALSHA";
        argvlen[n++] = 7;
        argv[n] = s->put_sha;
        argvlen[n++] = STORE_REDIS_SHA1_HEX;
        argv[n] = nkeys;
        argvlen[n++] = (size_t)snprintf(nkeys, sizeof(nkeys), "%u", 1 + index_count);
        argv[n] = key;
        argvlen[n++] = key_len;
        for (unsigned i = 0; i < index_count; i++) {
            argv[n] = index_keys[i];
            argvlen[n++] = index_lens[i];
        }
        argv[n] = value;
        argvlen[n++] = value_len;
        argv[n] = ttl;
        argvlen[n++] = (size_t)ttl_len;
        argv[n] = longest ? "1" : "0";
        argvlen[n++] = 1;
        assert(n == argc);
        rc = redisAsyncCommandArgv(s->ac, on_reply, op, (int)argc, argv, argvlen);
        if (argv != stack_argv) {
            free(argv);
            free(argvlen);
        }
    }
    if (rc != REDIS_OK) {
        op_release(s, op);
        return -1;
    }
    s->queued_bytes += bytes;
    owe_reply(s);
    SR_INC(s->stats.sets);
    if (op->kind == OP_SET)
        fifo_add(s, op);
    return 0;
}

int store_redis_set(struct store_redis *s, const char *key, size_t key_len, const void *value,
                    size_t value_len, uint64_t ttl_ms, const char *const *index_keys,
                    const size_t *index_lens, unsigned index_count, store_redis_set_fn cb,
                    void *arg)
{
    return put(s, key, key_len, value, value_len, ttl_ms, index_keys, index_lens, index_count,
               false, cb, arg);
}

int store_redis_set_longest(struct store_redis *s, const char *key, size_t key_len,
                            const void *value, size_t value_len, uint64_t ttl_ms)
{
    return put(s, key, key_len, value, value_len, ttl_ms, NULL, NULL, 0, true, NULL, NULL);
}

/* ------------------------------------------------------------ purges */

/* The count a purge script answers with, or -1. */
static long long reply_count(struct store_redis *s, const redisReply *reply)
{
    if (reply == NULL)
        return -1; /* the link dropped or the store is being freed */
    if (reply->type == REDIS_REPLY_INTEGER)
        return reply->integer;
    if (reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_warnx("redis %s: purge failed: %s", s->addr, reply->str);
    } else {
        log_debug("%s: redis %s: purge: unexpected reply type %d", __func__, s->addr, reply->type);
    }
    return -1;
}

static void store_redis_on_purge_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_PURGE);
    got_reply(s, r, r != NULL ? now_us() : 0);
    long long n = reply_count(s, r);
    if (op->cb.count != NULL)
        op->cb.count(op->arg, n);
    op_release(s, op);
}

/* One purge script over <nkeys> keys, the first <plain> entries, the rest
 * indexes. */
static int send_purge(struct store_redis *s, const char *const *keys, const size_t *lens,
                      unsigned nkeys, unsigned plain, bool soft, store_redis_count_fn cb, void *arg)
{
    char numkeys[STORE_REDIS_NUM_MAX], nplain[STORE_REDIS_NUM_MAX];
    const char *argv[3 + 2 + 2];
    size_t argvlen[3 + 2 + 2];
    unsigned n = 0;

    assert(nkeys <= 2 && plain <= nkeys);
    /* purges go to a slow Redis too: a stale entry must not outlive them */
    if (!usable(s, true))
        return -1;
    struct store_redis_op *op = op_acquire(s, OP_PURGE, arg);
    if (op == NULL)
        return -1;
    op->cb.count = cb;
    argv[n] = "EVAL";
    argvlen[n++] = 4;
    argv[n] = purge_script;
    argvlen[n++] = sizeof(purge_script) - 1;
    argv[n] = numkeys;
    argvlen[n++] = (size_t)snprintf(numkeys, sizeof(numkeys), "%u", nkeys);
    for (unsigned i = 0; i < nkeys; i++) {
        argv[n] = keys[i];
        argvlen[n++] = lens[i];
    }
    argv[n] = soft ? "1" : "0";
    argvlen[n++] = 1;
    argv[n] = nplain;
    argvlen[n++] = (size_t)snprintf(nplain, sizeof(nplain), "%u", plain);
    if (redisAsyncCommandArgv(s->ac, store_redis_on_purge_reply, op, (int)n, argv, argvlen) !=
        REDIS_OK) {
        op_release(s, op);
        return -1;
    }
    owe_reply(s);
    op->sent_us = now_us();
    return 0;
}

int store_redis_purge_key(struct store_redis *s, const char *key, size_t key_len,
                          const char *index_key, size_t index_len, bool soft,
                          store_redis_count_fn cb, void *arg)
{
    const char *const keys[2] = {key, index_key};
    const size_t lens[2] = {key_len, index_len};

    if (send_purge(s, keys, lens, index_key != NULL ? 2 : 1, 1, soft, cb, arg) == -1)
        return -1;
    SR_INC(s->stats.purges);
    return 0;
}

int store_redis_purge_index(struct store_redis *s, const char *index_key, size_t index_len,
                            bool soft, store_redis_count_fn cb, void *arg)
{
    if (send_purge(s, &index_key, &index_len, 1, 0, soft, cb, arg) == -1)
        return -1;
    SR_INC(s->stats.purges);
    return 0;
}

static void store_redis_on_prefix_reply(redisAsyncContext *ac, void *r, void *privdata);

/* Sends <op>'s batch from <cursor>. -1 when the link refuses it. */
static int send_prefix_batch(struct store_redis *s, struct store_redis_op *op, const char *cursor,
                             size_t cursor_len)
{
    char count[STORE_REDIS_NUM_MAX];
    const char *argv[8] = {
        "EVAL",     prefix_script,       "0", cursor, STORE_REDIS_ENTRY_PATTERN, count,
        op->prefix, op->soft ? "1" : "0"};
    const size_t argvlen[8] = {4,
                               sizeof(prefix_script) - 1,
                               1,
                               cursor_len,
                               sizeof(STORE_REDIS_ENTRY_PATTERN) - 1,
                               (size_t)snprintf(count, sizeof(count), "%d", STORE_REDIS_SCAN_COUNT),
                               op->prefix_len,
                               1};

    if (s->freeing || s->ac == NULL)
        return -1;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_prefix_reply, op, 8, argv, argvlen) != REDIS_OK)
        return -1;
    owe_reply(s);
    return 0;
}

static void store_redis_on_prefix_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis_op *op = privdata;
    struct store_redis *s = op->s;
    const redisReply *reply = r;
    long long n = -1;

    (void)ac;
    assert(op->magic == STORE_REDIS_OP_MAGIC && op->kind == OP_PREFIX);
    got_reply(s, reply, reply != NULL ? now_us() : 0);
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_INTEGER) {
        const redisReply *cursor = reply->element[0];
        op->total += reply->element[1]->integer;
        if (cursor->len != 1 || cursor->str[0] != '0') {
            /* more keys to walk: the same op waits for the next batch */
            if (send_prefix_batch(s, op, cursor->str, cursor->len) == 0)
                return;
            log_warnx("redis %s: prefix purge cut short: the link is going", s->addr);
        } else {
            n = op->total;
        }
    } else if (reply != NULL) {
        reply_count(s, reply); /* logs and counts the error */
    }
    if (op->cb.count != NULL)
        op->cb.count(op->arg, n);
    op_release(s, op);
}

int store_redis_purge_prefix(struct store_redis *s, const char *prefix, size_t prefix_len,
                             bool soft, store_redis_count_fn cb, void *arg)
{
    if (!usable(s, true))
        return -1;
    struct store_redis_op *op = op_acquire(s, OP_PREFIX, arg);
    if (op == NULL)
        return -1;
    op->cb.count = cb;
    op->soft = soft;
    /* freed in op_release(); one byte more so an empty prefix is not NULL */
    op->prefix = malloc(prefix_len + 1);
    if (op->prefix == NULL) {
        op_release(s, op);
        return -1;
    }
    memcpy(op->prefix, prefix, prefix_len);
    op->prefix_len = prefix_len;
    if (send_prefix_batch(s, op, "0", 1) == -1) {
        op_release(s, op);
        return -1;
    }
    op->sent_us = now_us();
    SR_INC(s->stats.purges);
    return 0;
}

/* ------------------------------------------------------------ pub/sub */

int store_redis_publish(struct store_redis *s, const char *channel, const void *msg, size_t len)
{
    const char *argv[3] = {"PUBLISH", channel, msg};
    const size_t argvlen[3] = {7, strlen(channel), len};

    /* an invalidation, like a purge: a slow Redis gets it too, but not one
     * that has left more than the budget of writes unanswered */
    if (!usable(s, true) || s->queued_bytes > queue_budget(s))
        return -1;
    struct store_redis_op *op = op_acquire(s, OP_WRITE, NULL);
    if (op == NULL)
        return -1;
    op->bytes = argvlen[1] + len;
    if (redisAsyncCommandArgv(s->ac, store_redis_on_write_reply, op, 3, argv, argvlen) !=
        REDIS_OK) {
        op_release(s, op);
        return -1;
    }
    s->queued_bytes += op->bytes;
    owe_reply(s);
    SR_INC(s->stats.published);
    return 0;
}

/* A confirmed subscription is gone with its link: tell the subscriber once. */
static void sub_lost(struct store_redis *s)
{
    if (!s->sub_up)
        return;
    s->sub_up = false;
    if (!s->freeing)
        s->on_link(s->sub_arg, false);
}

/* The subscription's confirmation, each message, or NULL when the link goes. */
static void store_redis_on_message(redisAsyncContext *ac, void *r, void *privdata)
{
    struct store_redis *s = privdata;
    const redisReply *reply = r;

    (void)ac;
    if (reply == NULL) {
        sub_lost(s);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        SR_INC(s->stats.errors);
        log_warnx("redis %s: SUBSCRIBE %s: %s", s->addr, s->sub_channel, reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *what = reply->element[0];
    if (strcmp(what->str, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
        SR_INC(s->stats.messages);
        s->on_message(s->sub_arg, reply->element[2]->str, reply->element[2]->len);
    } else if (strcmp(what->str, "subscribe") == 0 && !s->sub_up) {
        log_debug("%s: redis %s: subscribed to %s", __func__, s->addr, s->sub_channel);
        s->sub_up = true;
        s->on_link(s->sub_arg, true);
    }
}

static void send_subscribe(struct store_redis *s)
{
    const char *argv[2] = {"SUBSCRIBE", s->sub_channel};
    const size_t argvlen[2] = {9, strlen(s->sub_channel)};

    if (s->ac == NULL || s->freeing)
        return;
    /* hiredis keeps the callback for the channel's messages, not in the
     * reply queue: not counted in flight */
    if (redisAsyncCommandArgv(s->ac, store_redis_on_message, s, 2, argv, argvlen) != REDIS_OK)
        log_warnx("redis %s: cannot send SUBSCRIBE %s", s->addr, s->sub_channel);
}

int store_redis_subscribe(struct store_redis *s, const char *channel,
                          store_redis_message_fn on_message, store_redis_link_fn on_link, void *arg)
{
    if (s->subscriber || s->freeing)
        return -1;
    s->sub_channel = strdup(channel); /* freed in store_redis_free() */
    if (s->sub_channel == NULL)
        return -1;
    s->on_message = on_message;
    s->on_link = on_link;
    s->sub_arg = arg;
    s->subscriber = true;
    /* a link that is up or connecting subscribes now; a later one when it starts */
    send_subscribe(s);
    return 0;
}
