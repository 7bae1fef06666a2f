/*
 * conn: a client connection and the exchange it drives with a clone.
 *
 * Owns its client stream, its timer and, during an exchange, the exchange's
 * state (both parsed heads, the log fields, the cache's part: taken from a
 * per-thread list at a request's first byte, given back once idle) and the
 * upstream connection it acquired (given back with upstream_release() when
 * the exchange ends).
 * Borrows its worker, the worker's config and pool (read afresh per use,
 * since a reload swaps them between callbacks). Lives in one worker thread;
 * freed only by conn_close(), after which no callback can reach it.
 *
 * Bytes move, they are not copied: body bytes go from one stream's
 * input to the other's output with evbuffer_remove_buffer(); only heads are
 * rewritten. Memory is bounded by watermarks: a side that is not reading
 * stops the other side from reading.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "cache.h"
#include "clock.h"
#include "cache_entry.h"
#include "cache_policy.h"
#include "http.h"
#include "log.h"
#include "purge.h"
#include "stats.h"
#include "store_redis.h"
#include "stream.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#define CONN_BUF_HIGH         (256 * 1024) /* stop reading a side past this many buffered bytes */
#define CONN_BUF_LOW          (64 * 1024)  /* resume when the other side drained below this */
#define CONN_RESP_HEAD_MAX    (64 * 1024)  /* a clone's response head larger than this: 502 */
#define CONN_PEEK_VECS        16           /* evbuffer chains framed per parser pass */
#define CONN_LOG_TARGET       512          /* request target bytes kept for the access log */
#define CONN_TRIED_ID_WORDS   4            /* 256 stable clone ids, as many as health keeps */
#define CONN_LOG_FIELD        128          /* referer / user agent bytes kept for the log */
#define CONN_CACHE_KEEP_MS    (10 * 60 * 1000) /* a validatable entry outlives its windows by this */
#define CONN_CACHE_PASS_MS    (60 * 1000)   /* a URL found not storable is not waited on for this */
#define CONN_CACHE_STATUS_MAX 256           /* bytes of our Cache-Status line */
#define CONN_SPARE_MAX        64            /* closed connections (and exchanges) kept per thread */
#define CONN_TLS_RELEASE_US   (1000 * 1000) /* idle this long, TLS gives back its record buffers */
#define CONN_LINGER_MS        5000          /* a closing client still sending is read this long */
#define CONN_TAG_LINE_MAX     (64 + 1024 + 8) /* an exposed tag header line: name, tags kept */

enum conn_state {
    CONN_IDLE = 0,         /* between requests: waiting for a first byte (idle timer) */
    CONN_READING_HEAD = 1, /* part of a request head is here (header timer) */
    CONN_FORWARDING = 2,   /* an exchange with a clone is under way */
    CONN_TUNNEL = 3,       /* upgraded: bytes relayed both ways until one side closes */
    CONN_CLOSING = 4,      /* the last bytes are being flushed, then close */
    CONN_CACHE_LOOKUP = 5, /* the cache looks for a stored response (Redis may be asked) */
    CONN_CACHE_WAIT = 6,   /* another request fills the same key: wait (lock timeout) */
};

static const char *const state_names[] = {"idle",    "reading-head", "forwarding", "tunnel",
                                          "closing", "cache-lookup", "cache-wait"};

/* The access log's copy of the request, taken when the head is parsed. */
struct conn_log_fields {
    char method[16];
    size_t method_len;
    char target[CONN_LOG_TARGET];
    size_t target_len;
    char referer[CONN_LOG_FIELD];
    size_t referer_len; /* 0 with has_referer false: absent */
    char user_agent[CONN_LOG_FIELD];
    size_t user_agent_len;
    bool has_referer;
    bool has_user_agent;
    uint8_t version_minor;
};

/*
 * The cache's part of a request. Made the first time an exchange carries a
 * request the cache handles and kept with the exchange (freed in
 * exchange_free()), so requests allocate nothing; reset per request by
 * cache_request_end().
 */
struct conn_cache {
    struct cache_policy_request rq; /* what the request asks of the cache */
    char *key;                      /* owned: URL key, then "\n" + variant for a Vary entry */
    size_t key_cap;                 /* bytes allocated at key */
    size_t key_len;                 /* current key (URL or variant) */
    size_t url_len;                 /* the URL key's length: key[0..url_len) */
    uint64_t url_hash;              /* cache_hash() of the URL key */
    char redis_key[CACHE_REDIS_KEY_LEN + 1]; /* Redis key of the lookup in flight */
    struct store_redis_op *op;               /* Redis lookup in flight; cancelled at request end */
    uint64_t purge_gen;                      /* cache_purge_generation() when that lookup began */
    struct cache_entry *stale;               /* referenced: stored entry being validated, or NULL */
    struct cache_fill *fill;                 /* this request fills its key; ended at request end */
    struct cache_waiter waiter;              /* while waiting on another request's fill */
    struct conn_store *store;                /* owned: the response being stored, or NULL */
    struct conn_purge *purge;                /* a PURGE waiting on Redis (freed when it answers) */
    char cond[512];                          /* validators sent when revalidating ("" none) */
    int64_t request_ms;                      /* wall clock when the request went to the clone */
    uint8_t verdict;                         /* enum cache_policy_verdict of the response */
    bool active;                             /* this request goes through the cache */
    bool vary_checked;                       /* the key is the variant key */
    bool redis_url_tried;                    /* Redis asked for the URL key */
    bool redis_variant_tried;                /* Redis asked for the variant key */
    bool no_coalesce;                        /* forward on its own (woken without an entry, pass) */
    bool collapsed;                          /* waited on another request's fill */
    bool stored;                             /* the response is in L1, or went to Redis */
    bool invalidate;                         /* unsafe method: invalidate the URL on success */
    bool had_pass; /* a pass marker sent it here: no need to set another */
};

/* A response being stored while it streams to the client. */
struct conn_store {
    struct cache_policy_response pr;  /* the policy's verdict and times */
    struct evbuffer *head;            /* owned: the header lines to store */
    struct evbuffer *body;            /* owned: the payload so far */
    char vary[CACHE_POLICY_VARY_MAX]; /* Vary names ("" none) */
    size_t vary_len;
    char etag[256]; /* ETag value ("" none; a longer one is not kept) */
    size_t etag_len;
    char tags[1024]; /* purge tags, space-separated ("" none) */
    size_t tags_len;
};

/*
 * What a connection needs only while a request is under way: both heads,
 * the access log's copy of the request, the clone's name and the cache's
 * part. A connection takes one when the first byte of a request arrives
 * and gives it back when it goes idle with nothing buffered, or closes
 * (exchange_take(), exchange_give()), so an idle keep-alive connection
 * holds none of it. Given-back exchanges are kept per thread for reuse.
 */
struct conn_exchange {
    struct http_head req;                 /* current request head; reset per request */
    struct http_head resp;                /* current response head; reset per response */
    struct conn_log_fields log;           /* filled only while the access log is on */
    char upstream_name[CONFIG_ADDR_TEXT]; /* clone of this exchange, "" when none */
    struct conn_cache *cx; /* owned (freed in exchange_free()): the cache's part, or NULL */
    /* clones tried for this request, by stable id (health's, < 256): a
     * reload between two attempts renumbers the pool's positions */
    uint64_t tried_ids[CONN_TRIED_ID_WORDS];
};

struct conn {
    struct worker *w;                 /* borrowed; outlives the conn */
    struct stream cs;                 /* client socket and buffers; closed in conn_close() */
    struct event timer;               /* header / idle timer; deleted in conn_close() */
    enum conn_state state;            /* see conn_set_state() */
    char client_ip[INET6_ADDRSTRLEN]; /* peer address text */
    TAILQ_ENTRY(conn) link;           /* in w->conns */

    /* the exchange in progress */
    struct upstream_conn *up;    /* owned while set; upstream_release() gives it back */
    int server;                  /* index of the clone in the worker's pool, -1 none */
    uint64_t tried;              /* bit i: clone i was tried for this request */
    unsigned attempts;           /* connections tried for this request */
    unsigned free_tries;         /* of those, pooled connections found stale (not counted) */
    bool req_done;               /* the request, body included, went to the clone */
    bool head_kept;              /* request head (and body) still at the front of the input */
    bool resp_started;           /* the response head went to the client */
    bool resp_bytes;             /* the clone sent at least one byte */
    bool keep_alive;             /* the connection goes on after this response */
    bool decode_body;            /* chunked response de-chunked for an HTTP/1.0 client */
    bool output_wait;            /* a pipelined request waits for the output to drain */
    bool client_eof;             /* the client closed its side */
    bool lingering;              /* answer sent, output ended: dropping input until the end */
    bool handshake_deadline;     /* the deadline in force is the TLS handshake's */
    bool client_read_paused;     /* client reading stopped for backpressure */
    bool up_read_paused;         /* clone reading stopped for backpressure */
    unsigned status;             /* status sent to the client, for the log */
    uint64_t bytes_sent;         /* response body bytes sent, for the log */
    int64_t t_start;             /* us, monotonic: first byte of the request */
    int64_t t_upstream;          /* us, monotonic: request sent to the clone */
    double upstream_time;        /* seconds, -1 when no clone answered */
    int server_id;               /* stable id of the clone (stats), -1 none */
    int64_t deadline_us;         /* idle or header deadline, monotonic us; 0 none */
    int64_t timer_expiry_us;     /* when the armed timer fires */
    bool timer_armed;            /* <timer> is pending */
    bool resume_input;           /* process_input() on the next loop turn */
    bool tunnel_half_closed;     /* the client closed its side of a tunnel */
    int64_t tunnel_seen_us;      /* a tunnel's last bytes read, either side */
    uint64_t bytes_read_mark;    /* cs.bytes_read already counted */
    uint64_t bytes_written_mark; /* cs.bytes_written already counted */
    int stale_server;            /* stable id of the clone whose pooled connection went
                                    stale, -1 none */
    int64_t release_at_us;       /* monotonic us: an idle TLS connection gives back
                                    its record buffers then; 0 none */
    struct conn_exchange *ex;    /* owned while a request is under way, NULL while idle */
    struct tls_server *tls;      /* referenced while set (HTTPS); dropped in conn_close() */
    bool https;                  /* requests came over TLS (scheme, X-Forwarded-Proto) */
    uint8_t cache_outcome;       /* enum stats_cache_outcome of the request */
};

/* What every idle keep-alive connection costs (with its stream's buffers):
 * request state belongs in struct conn_exchange. */
_Static_assert(sizeof(struct conn) <= 1024, "struct conn is held by every idle connection");

static void conn_close(struct conn *c, const char *why);
static void process_input(struct conn *c);
static void dispatch(struct conn *c);
static void pump_response_body(struct conn *c);
static void conn_on_read(struct stream *st, void *arg);
static bool cache_begin(struct conn *c, const char *buf);
static void cache_request_end(struct conn *c);
static bool cache_stale_if_error(struct conn *c, unsigned status);
static void cache_status_line(const struct conn *c, char *out, size_t room, bool stored,
                              int64_t ttl_s, unsigned fwd_status);
static bool cache_response_head(struct conn *c, const char *p, char *line, size_t room);
static void cache_store_check(struct conn *c);
static void cache_store_finish(struct conn *c);
static bool cache_refresh(struct conn *c, const char *p);
static void cache_refresh_behind(struct conn *c, struct cache_entry *e);
static int64_t wall_ms(void);
static void conn_start(struct worker *w, int fd, const struct sockaddr *sa, struct tls_server *tls,
                       bool https);

/* ------------------------------------------------------------ small helpers */

static void conn_set_state(struct conn *c, enum conn_state next)
{
    assert(next >= CONN_IDLE && next <= CONN_CACHE_WAIT);
    log_debug("%s: %s %s -> %s", __func__, c->client_ip, state_names[c->state], state_names[next]);
    c->state = next;
}

static const struct config *cfg_of(const struct conn *c)
{
    return c->w->cfg;
}

static double seconds_since(int64_t since_us)
{
    return (double)(clock_mono_us() - since_us) / 1e6;
}

static void copy_field(char *dst, size_t room, size_t *dst_len, const char *src, size_t len)
{
    if (len > room)
        len = room;
    memcpy(dst, src, len);
    *dst_len = len;
}

/* Keeps what the access log needs of the request before its head goes. */
static void keep_log_fields(struct conn *c, const char *buf)
{
    struct conn_log_fields *l = &c->ex->log;
    const struct http_head *h = &c->ex->req;
    size_t len;
    const char *v;

    copy_field(l->method, sizeof(l->method), &l->method_len, buf + h->method.off, h->method.len);
    copy_field(l->target, sizeof(l->target), &l->target_len, buf + h->target.off, h->target.len);
    v = http_header_value(h, buf, HTTP_H_REFERER, &len);
    l->has_referer = v != NULL;
    if (v)
        copy_field(l->referer, sizeof(l->referer), &l->referer_len, v, len);
    v = http_header_value(h, buf, HTTP_H_USER_AGENT, &len);
    l->has_user_agent = v != NULL;
    if (v)
        copy_field(l->user_agent, sizeof(l->user_agent), &l->user_agent_len, v, len);
    l->version_minor = h->version_minor;
}

/* Books the bytes the client stream moved since the last call. */
static void count_bytes(struct conn *c, uint64_t *in, uint64_t *out)
{
    *in = c->cs.bytes_read - c->bytes_read_mark;
    *out = c->cs.bytes_written - c->bytes_written_mark;
    c->bytes_read_mark = c->cs.bytes_read;
    c->bytes_written_mark = c->cs.bytes_written;
}

/* A request ended (answered, refused or switched to a tunnel): count it and
 * write its access log line. */
static void request_done(struct conn *c)
{
    struct stats_worker *sw = c->w->stats;
    uint64_t in, out;
    int64_t total_us = clock_mono_us() - c->t_start;
    count_bytes(c, &in, &out);
    if (c->status)
        STATS_INC(sw->cache.outcome[c->cache_outcome < STATS_CS_COUNT ? c->cache_outcome
                                                                      : STATS_CS_BYPASS]);
    cache_request_end(c);
    stats_record_request(sw, c->status, in, out, total_us > 0 ? (uint64_t)total_us : 0,
                         c->upstream_time >= 0 ? c->server_id : -1,
                         c->upstream_time >= 0 ? (uint64_t)(c->upstream_time * 1e6) : 0,
                         (int64_t)time(NULL));
    if (!log_access_enabled() || c->status == 0)
        return;
    const struct conn_log_fields *l = &c->ex->log;
    struct log_access_entry e = {
        .client = c->client_ip,
        .method = l->method_len ? l->method : "-",
        .method_len = l->method_len ? l->method_len : 1,
        .target = l->target_len ? l->target : "-",
        .target_len = l->target_len ? l->target_len : 1,
        .protocol = l->version_minor ? "HTTP/1.1" : "HTTP/1.0",
        .status = c->status,
        .bytes_sent = c->bytes_sent,
        .referer = l->has_referer ? l->referer : NULL,
        .referer_len = l->referer_len,
        .user_agent = l->has_user_agent ? l->user_agent : NULL,
        .user_agent_len = l->user_agent_len,
        .upstream = c->ex->upstream_name[0] ? c->ex->upstream_name : NULL,
        .upstream_time = c->upstream_time,
        .total_time = (double)total_us / 1e6,
    };
    log_access(&c->w->access, &e);
}

/*
 * The connection's one timer is lazy: a deadline is a time stamp, and the
 * timer event is armed only when none is pending or the new deadline comes
 * before the pending expiry. A timer that fires before the deadline arms
 * itself again for what is left; one that fires with no deadline does
 * nothing. Keep-alive requests so cost no timer operation at all. The
 * moment an idle TLS connection gives back its record buffers
 * (release_at_us) rides on the same timer.
 */
static void timer_arm(struct conn *c, int64_t at_us)
{
    if (c->timer_armed && c->timer_expiry_us <= at_us)
        return;
    int64_t left = at_us - clock_mono_us();
    if (left < 0)
        left = 0;
    struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
    event_add(&c->timer, &tv);
    c->timer_armed = true;
    c->timer_expiry_us = at_us;
}

static void deadline_set(struct conn *c, int64_t deadline_us)
{
    c->deadline_us = deadline_us;
    timer_arm(c, deadline_us);
}

/* Arms the timer, which has just run, for the earliest moment still wanted. */
static void timer_rearm(struct conn *c)
{
    int64_t at = c->deadline_us;
    if (c->release_at_us && (at == 0 || c->release_at_us < at))
        at = c->release_at_us;
    if (at)
        timer_arm(c, at);
}

static void deadline_after_ms(struct conn *c, int64_t from_us, unsigned ms)
{
    deadline_set(c, from_us + (int64_t)ms * 1000);
}

static void deadline_clear(struct conn *c)
{
    c->deadline_us = 0;
}

/* ------------------------------------------------------------ teardown */

/* Gives the clone connection back; <reusable> when its exchange ended cleanly. */
static void drop_upstream(struct conn *c, bool reusable)
{
    if (!c->up)
        return;
    if (c->server_id >= 0)
        STATS_DEC(c->w->stats->server[c->server_id].active);
    upstream_release(c->up, reusable);
    c->up = NULL;
}

/*
 * Closed connections kept for this thread's next accepts, and given-back
 * exchanges kept for its next requests (their cache part included), so
 * that neither a connection nor a request allocates. Freed by
 * conn_close_all() when the worker ends. Sanitizer builds free at once, so
 * that a use after close or after give-back is caught.
 */
static _Thread_local struct conn *spare[CONN_SPARE_MAX];
static _Thread_local unsigned spare_count;
static _Thread_local struct conn_exchange *spare_ex[CONN_SPARE_MAX];
static _Thread_local unsigned spare_ex_count;

/* Whether <c>, closed, goes to the spares (else it is freed). */
static bool keep_spare(struct conn *c)
{
#if defined(__SANITIZE_ADDRESS__)
    (void)c;
    return false;
#else
    if (spare_count == CONN_SPARE_MAX)
        return false;
    spare[spare_count++] = c;
    return true;
#endif
}

static void exchange_free(struct conn_exchange *ex)
{
    if (!ex)
        return;
    if (ex->cx)
        free(ex->cx->key);
    free(ex->cx);
    free(ex);
}

static void conn_free(struct conn *c)
{
    exchange_free(c->ex);
    free(c);
}

/* A connection's memory for conn_start(): a spare one or a new one (the
 * caller sets it up). NULL when out of memory. */
static struct conn *conn_alloc(void)
{
    struct conn *c;
    if (spare_count > 0) {
        c = spare[--spare_count];
    } else {
        c = malloc(sizeof(*c)); /* freed by conn_free() */
        if (!c)
            return NULL;
    }
    memset(c, 0, sizeof(*c));
    return c;
}

/*
 * Gives <c> an exchange for the request whose first byte came: a spare one
 * (its request head reset, see exchange_give()) or a new one. Returns 0, or
 * -1 when out of memory.
 */
static int exchange_take(struct conn *c)
{
    struct conn_exchange *ex;
    assert(!c->ex);
    if (spare_ex_count > 0) {
        ex = spare_ex[--spare_ex_count];
    } else {
        /* the heads' header arrays are left unset: only entries below
         * header_count are ever read */
        ex = malloc(sizeof(*ex)); /* given back by exchange_give(), freed by exchange_free() */
        if (!ex)
            return -1;
        http_head_init(&ex->req, false, 0, 0, 0); /* limits: set per request */
        http_head_init(&ex->resp, true, CONN_RESP_HEAD_MAX, 0, 0);
        ex->cx = NULL;
    }
    ex->upstream_name[0] = '\0';
    c->w->exchanges_open++;
    if (ex->cx)
        ex->cx->collapsed = false; /* read by cache_status_line() before cache_begin() */
    c->ex = ex;
    return 0;
}

/*
 * Takes <c>'s exchange back, if any: the cache's part of the request ends
 * first (its Redis lookup, wait and fill refer to the exchange). The
 * exchange goes to the spares, its request head reset, or is freed.
 */
static void exchange_give(struct conn *c)
{
    struct conn_exchange *ex = c->ex;
    if (!ex)
        return;
    cache_request_end(c);
    c->ex = NULL;
    c->w->exchanges_open--;
#if defined(__SANITIZE_ADDRESS__)
    exchange_free(ex);
#else
    if (spare_ex_count == CONN_SPARE_MAX) {
        exchange_free(ex);
        return;
    }
    if (ex->req.parsed || ex->req.error != HTTP_ERR_NONE)
        http_head_reset(&ex->req); /* a request cut short */
    spare_ex[spare_ex_count++] = ex;
#endif
}

static void conn_close(struct conn *c, const char *why)
{
    log_debug("%s: %s closed: %s", __func__, c->client_ip, why);
    exchange_give(c);
    drop_upstream(c, false);
    tls_server_unref(c->tls);
    c->tls = NULL;
    if (event_initialized(&c->timer))
        event_del(&c->timer);
    uint64_t in, out;
    count_bytes(c, &in, &out);
    STATS_ADD(c->w->stats->bytes_in, in);
    STATS_ADD(c->w->stats->bytes_out, out);
    STATS_DEC(c->w->stats->connections_open);
    stream_close(&c->cs);
    TAILQ_REMOVE(&c->w->conns, c, link);
    worker_conn_closed(c->w, c);
    if (!keep_spare(c))
        conn_free(c);
}

/* The response already began and cannot be finished: log the request as it
 * went (status sent, bytes so far) and close, which the client sees as a
 * truncated answer. */
static void abort_response(struct conn *c, const char *why)
{
    c->upstream_time = seconds_since(c->t_upstream);
    request_done(c);
    stream_abort(&c->cs); /* TLS: no close_notify, the answer is not whole */
    conn_close(c, why);
}

/*
 * The last answer is all with the kernel and the connection ends. Bytes the
 * client sent that were never read (a request pipelined behind the last
 * one, the rest of an upload refused, a stray CRLF) would make close()
 * reset the connection, and a reset throws away what of the answer the
 * kernel still holds. With such bytes waiting, or the rest of a request
 * still to come, the output is ended instead (the client reads the answer,
 * then the end) and what comes in is read and dropped until the client
 * closes, for CONN_LINGER_MS at most. Bytes that come only after the socket
 * closed can still reset it, as with any server.
 */
static void close_when_flushed(struct conn *c, const char *why)
{
    /* more of the request may come: not read whole, or refused half-read */
    const struct http_head *req = c->ex ? &c->ex->req : NULL;
    bool body_coming =
        req && !c->req_done && !(req->head_done && !req->has_body && req->error == HTTP_ERR_NONE);
    if (c->client_eof || c->lingering || (!body_coming && !stream_unread_waiting(&c->cs))) {
        conn_close(c, why);
        return;
    }
    c->lingering = true;
    stream_shutdown_write(&c->cs);
    deadline_after_ms(c, clock_mono_us(), CONN_LINGER_MS);
    stream_read_enable(&c->cs, true);
}

/* Stops reading and closes once the output is flushed. */
static void close_after_flush(struct conn *c, const char *why)
{
    conn_set_state(c, CONN_CLOSING);
    deadline_clear(c);
    drop_upstream(c, false);
    if (evbuffer_get_length(c->cs.out) == 0) {
        close_when_flushed(c, why);
        return;
    }
    stream_read_enable(&c->cs, false);
    stream_flush(&c->cs);
    /* a client that never reads its last bytes is bounded by the write timeout */
    stream_notify_drained(&c->cs, 0);
}

/* Sends a short error response of our own. The connection closes after it
 * unless <keep> and the request was read whole. */
static void send_error(struct conn *c, unsigned status, bool keep, const char *why)
{
    struct evbuffer *out = c->cs.out;
    if (status >= 500 && cache_stale_if_error(c, status))
        return;
    keep = keep && c->keep_alive && !c->w->draining;
    /* 503 says when to come back; 405 must say what is allowed (RFC 9110) */
    const char *extra = status == 503   ? "Retry-After: 1\r\n"
                        : status == 405 ? "Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, "
                                          "TRACE\r\n"
                                        : "";
    char lines[CONN_CACHE_STATUS_MAX + 128];
    size_t n = strlen(extra);
    memcpy(lines, extra, n);
    cache_status_line(c, lines + n, sizeof(lines) - n, false, 0, 0);
    if (http_error_response(status, keep, lines, out) == -1) {
        conn_close(c, "out of memory");
        return;
    }
    stream_flush(&c->cs);
    c->status = status;
    c->bytes_sent = strlen(http_reason(status)) + 5;
    if (status >= 500 || status == 408)
        log_debug("%s: %s: %u %s", __func__, c->client_ip, status, why);
    request_done(c);
    drop_upstream(c, false);
    if (!keep) {
        close_after_flush(c, why);
        return;
    }
    if (c->head_kept) {
        evbuffer_drain(c->cs.in, c->ex->req.head_len);
        c->head_kept = false;
    }
    http_head_reset(&c->ex->req);
    conn_set_state(c, CONN_IDLE);
    /* The next pipelined request waits for the next loop turn: answering
     * it at once could answer the one after it at once too, and so on,
     * one stack frame deeper each time. */
    c->resume_input = true;
    event_active(&c->timer, EV_TIMEOUT, 1);
}

/* ------------------------------------------------------------ moving bytes */

/*
 * Frames the body bytes at the front of <from> with <h>'s parser and moves
 * those that belong to the message to <to> (or, with <decode>, appends
 * only the payload to <to> and drops the framing). Without <decode>, a
 * <tee> gets a copy of the payload (a response being stored). Sets *<moved> to the
 * bytes taken from <from>. Returns the parser's verdict.
 */
static enum http_parse frame_and_move(struct http_head *h, struct evbuffer *from,
                                      struct evbuffer *to, bool decode, struct evbuffer *tee,
                                      size_t *moved)
{
    struct evbuffer_iovec vec[CONN_PEEK_VECS];
    enum http_parse r = HTTP_PARSE_AGAIN;
    size_t total = 0;

    *moved = 0;
    for (;;) {
        struct evbuffer_ptr pos;
        if (evbuffer_ptr_set(from, &pos, total, EVBUFFER_PTR_SET) == -1)
            break;
        int n = evbuffer_peek(from, -1, &pos, vec, CONN_PEEK_VECS);
        if (n <= 0) {
            /* no bytes: still let the parser end a message without a body */
            size_t used;
            r = http_body_parse(h, "", 0, &used, decode ? to : tee);
            break;
        }
        if (n > CONN_PEEK_VECS)
            n = CONN_PEEK_VECS;
        for (int i = 0; i < n; i++) {
            size_t used;
            r = http_body_parse(h, vec[i].iov_base, vec[i].iov_len, &used, decode ? to : tee);
            total += used;
            if (r != HTTP_PARSE_AGAIN)
                goto out;
        }
        if (total >= evbuffer_get_length(from))
            break;
    }
out:
    if (total > 0) {
        if (decode)
            evbuffer_drain(from, total);
        else if (evbuffer_remove_buffer(from, to, total) != (int)total)
            return HTTP_PARSE_ERROR;
    }
    *moved = total;
    return r;
}

/* The clone's output is full: stop reading the client until it drains. */
static void pause_client_read(struct conn *c)
{
    c->client_read_paused = true;
    stream_read_enable(&c->cs, false);
    stream_notify_drained(&c->up->s, CONN_BUF_LOW);
    /* the clone holds the upload up now: it answers for the wait (its
     * write deadline alone misses a TLS write that waits on a read) */
    if (!c->req_done)
        stream_set_timeouts(&c->up->s, c->w->response_tv, c->w->response_tv);
}

static void pause_up_read(struct conn *c)
{
    c->up_read_paused = true;
    stream_read_enable(&c->up->s, false);
    stream_notify_drained(&c->cs, CONN_BUF_LOW);
}

/* ------------------------------------------------------------ request side */

static void pump_request_body(struct conn *c)
{
    struct evbuffer *in = c->cs.in;
    struct evbuffer *out = c->up->s.out;
    size_t moved;

    enum http_parse r = frame_and_move(&c->ex->req, in, out, false, NULL, &moved);
    if (moved) {
        stream_flush(&c->up->s);
        /* the body flows (after a 100 Continue, say): the client sets the pace */
        if (c->up->s.read_tv && r == HTTP_PARSE_AGAIN)
            stream_set_timeouts(&c->up->s, NULL, c->w->response_tv);
    }
    if (r == HTTP_PARSE_ERROR) {
        unsigned status = http_error_status(c->ex->req.error);
        log_info("%s: request body refused: %s", c->client_ip, c->ex->req.error_text);
        drop_upstream(c, false);
        if (c->resp_started) {
            abort_response(c, "bad request body after the response began");
            return;
        }
        c->keep_alive = false;
        send_error(c, status, false, c->ex->req.error_text);
        return;
    }
    if (r != HTTP_PARSE_AGAIN) {
        c->req_done = true;
        stream_set_timeouts(&c->cs, NULL, c->w->idle_tv);
        stream_set_timeouts(&c->up->s, c->w->response_tv, c->w->response_tv);
        return;
    }
    /* a client gone before its body ended: nothing more will come, and
     * the clone is not to blame */
    if (c->client_eof && evbuffer_get_length(in) == 0) {
        conn_close(c, "client closed mid-body");
        return;
    }
    if (evbuffer_get_length(out) >= CONN_BUF_HIGH)
        pause_client_read(c);
    else
        stream_read_resume(&c->cs);
}

/* Moves tunnel bytes from <from> to <to>; pauses <from> when <to> is full. */
static void tunnel_move(struct stream *from, struct stream *to)
{
    evbuffer_add_buffer(to->out, from->in);
    stream_flush(to);
    if (evbuffer_get_length(to->out) >= CONN_BUF_HIGH) {
        stream_read_enable(from, false);
        stream_notify_drained(to, CONN_BUF_LOW);
    } else {
        stream_read_resume(from);
    }
}

static void conn_on_read(struct stream *st, void *arg)
{
    struct conn *c = arg;
    (void)st;
    switch (c->state) {
    case CONN_IDLE:
    case CONN_READING_HEAD:
        process_input(c);
        break;
    case CONN_FORWARDING:
        if (!c->req_done && !c->head_kept && c->up)
            pump_request_body(c);
        /* else: a pipelined request waits in the input (bounded by the watermark) */
        break;
    case CONN_TUNNEL:
        c->tunnel_seen_us = clock_mono_us();
        tunnel_move(&c->cs, &c->up->s);
        break;
    case CONN_CLOSING:
        evbuffer_drain(c->cs.in, evbuffer_get_length(c->cs.in));
        stream_read_resume(&c->cs);
        break;
    case CONN_CACHE_LOOKUP:
    case CONN_CACHE_WAIT:
        /* a pipelined request waits in the input (bounded by the watermark) */
        break;
    }
}

/*
 * Parses the head at the front of <in>, looking at no more than <limit>
 * bytes. What the first evbuffer chain holds is parsed before anything is
 * made contiguous, so a body that came along with the head is not copied.
 * Sets *<head> to the head's first byte (NULL when out of memory) and *<n>
 * to the bytes parsed.
 */
static enum http_parse parse_head_in(struct http_head *h, struct evbuffer *in, size_t limit,
                                     const char **head, size_t *n)
{
    size_t len = evbuffer_get_length(in);
    size_t want = len < limit ? len : limit;
    size_t first = evbuffer_get_contiguous_space(in);
    enum http_parse r = HTTP_PARSE_AGAIN;

    if (first < want) {
        *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)first);
        *n = first;
        r = http_head_parse(h, *head, first);
        if (r != HTTP_PARSE_AGAIN)
            return r;
    }
    *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
    *n = want;
    if (!*head)
        return HTTP_PARSE_ERROR;
    return http_head_parse(h, *head, want);
}

static void start_exchange(struct conn *c, const char *buf)
{
    deadline_clear(c);
    conn_set_state(c, CONN_FORWARDING);
    c->server = -1;
    c->tried = 0;
    memset(c->ex->tried_ids, 0, sizeof(c->ex->tried_ids));
    c->attempts = 0;
    c->free_tries = 0;
    c->req_done = false;
    c->resp_started = false;
    c->resp_bytes = false;
    c->decode_body = false;
    c->up_read_paused = false;
    c->output_wait = false;
    c->status = 0;
    c->bytes_sent = 0;
    c->upstream_time = -1;
    c->ex->upstream_name[0] = '\0';
    c->stale_server = -1;
    c->keep_alive = c->ex->req.keep_alive && !c->w->draining && !c->client_eof;
    /* the body may come in writes of its own, each waiting for our ACK */
    if (c->ex->req.has_body)
        stream_ack_now(&c->cs);
    if (log_access_enabled())
        keep_log_fields(c, buf);
    /* The head stays in the input until it cannot be needed again: without
     * a body until the clone answers, with one until a connection to a clone
     * is up (the body then streams and cannot be replayed). A failed attempt
     * before that goes whole to another clone. */
    c->head_kept = true;
    if (c->ex->req.has_body)
        stream_set_timeouts(&c->cs, c->w->idle_tv, c->w->idle_tv);
    if (cache_begin(c, buf))
        return;
    dispatch(c);
}

static void process_input(struct conn *c)
{
    struct evbuffer *in = c->cs.in;
    size_t len = evbuffer_get_length(in);
    const struct config *cfg = cfg_of(c);

    /* A pipelined request waits while earlier answers the client has not
     * read fill its output: each answer may be far larger than its request,
     * and only this keeps the memory per connection bounded. */
    if (c->state == CONN_IDLE && len > 0 && evbuffer_get_length(c->cs.out) >= CONN_BUF_HIGH) {
        c->output_wait = true;
        c->client_read_paused = true; /* enabled again below when resumed */
        stream_read_enable(&c->cs, false);
        stream_notify_drained(&c->cs, CONN_BUF_LOW);
        return;
    }
    /* A new head's bytes: whether to read on is known once it is parsed (a
     * whole request that ends the connection needs no more reads). */
    bool resume_after_head = false;
    if (c->client_read_paused) {
        c->client_read_paused = false;
        stream_read_enable(&c->cs, true);
    } else if (c->state == CONN_IDLE && len > 0) {
        resume_after_head = true;
    } else {
        stream_read_resume(&c->cs);
    }
    if (len == 0) {
        if (c->client_eof) {
            if (evbuffer_get_length(c->cs.out) > 0)
                close_after_flush(c, "client closed");
            else
                conn_close(c, "client closed");
            return;
        }
        if (c->state != CONN_IDLE)
            conn_set_state(c, CONN_IDLE);
        /* nothing pending: the request state goes until the next first byte */
        exchange_give(c);
        if (c->w->draining) {
            if (evbuffer_get_length(c->cs.out) > 0)
                close_after_flush(c, "draining");
            else
                conn_close(c, "draining");
            return;
        }
        int64_t now = clock_mono_us();
        /* TLS record buffers go after a second of quiet (see conn_on_timer);
         * armed first, so that the later idle deadline needs no timer call */
        if (c->cs.ssl && c->cs.tls_done && c->release_at_us == 0) {
            c->release_at_us = now + CONN_TLS_RELEASE_US;
            timer_arm(c, c->release_at_us);
        }
        deadline_after_ms(c, now, cfg->idle_timeout_ms);
        return;
    }
    if (c->state == CONN_IDLE) {
        if (!c->ex && exchange_take(c) == -1) {
            conn_close(c, "out of memory");
            return;
        }
        conn_set_state(c, CONN_READING_HEAD);
        c->handshake_deadline = false;
        c->t_start = clock_mono_us();
        c->cache_outcome = STATS_CS_BYPASS;
        c->release_at_us = 0; /* busy again: the record buffers are in use */
        memset(&c->ex->log, 0, sizeof(c->ex->log));
        c->ex->log.version_minor = 1; /* until the request line says otherwise */
        deadline_clear(c);            /* a header deadline only if the head is incomplete */
    }
    size_t limit = cfg->max_header_size + 1;
    c->ex->req.max_head = cfg->max_header_size;
    c->ex->req.max_target = cfg->max_uri_size;
    c->ex->req.max_body = cfg->max_body_size;
    const char *p;
    size_t n;
    enum http_parse r = parse_head_in(&c->ex->req, in, limit, &p, &n);
    if (!p) {
        conn_close(c, "out of memory");
        return;
    }
    /* Reads go on unless the request is whole and the last: then a client
     * that hangs up is noticed when the answer is written (the poller never
     * hears of this socket, see stream_read_start). */
    if (resume_after_head &&
        !(r == HTTP_PARSE_DONE && !c->ex->req.keep_alive && !c->ex->req.has_body))
        stream_read_resume(&c->cs);
    switch (r) {
    case HTTP_PARSE_AGAIN:
        /* a client sending its head in pieces may wait for our ACK (Nagle) */
        stream_ack_now(&c->cs);
        /* counted from the head's first byte, not from this read */
        if (c->deadline_us == 0)
            deadline_after_ms(c, c->t_start, cfg->header_timeout_ms);
        if (n > cfg->max_header_size) {
            c->keep_alive = false;
            send_error(c, 431, false, "request head too large");
        } else if (c->client_eof) {
            conn_close(c, "client closed mid-head");
        }
        return;
    case HTTP_PARSE_ERROR:
        log_info("%s: request refused: %s", c->client_ip,
                 c->ex->req.error_text ? c->ex->req.error_text : "malformed");
        c->keep_alive = false;
        /* the access log names what was refused, as far as it was read */
        if (p && log_access_enabled()) {
            struct conn_log_fields *l = &c->ex->log;
            const struct http_head *h = &c->ex->req;
            if (h->method.len && (size_t)h->method.off + h->method.len <= n)
                copy_field(l->method, sizeof(l->method), &l->method_len, p + h->method.off,
                           h->method.len);
            if (h->target.len && (size_t)h->target.off + h->target.len <= n)
                copy_field(l->target, sizeof(l->target), &l->target_len, p + h->target.off,
                           h->target.len);
        }
        send_error(c, http_error_status(c->ex->req.error), false,
                   c->ex->req.error_text ? c->ex->req.error_text : "malformed request");
        return;
    case HTTP_PARSE_DONE:
    case HTTP_PARSE_UPGRADE:
        start_exchange(c, p);
        return;
    }
}

/* ------------------------------------------------------------ upstream side */

/* Counts a failed attempt on the clone of this exchange. */
static void count_failure(struct conn *c)
{
    STATS_INC(c->w->stats->upstream_failures);
    if (c->server_id >= 0)
        STATS_INC(c->w->stats->server[c->server_id].failures);
}

/* Whether an error answer may leave the connection open: the request was
 * read whole, or had no body to read. */
static bool request_consumed(const struct conn *c)
{
    return c->req_done || !c->ex->req.has_body;
}

/* Whether a failed attempt may go to another clone: nothing of the request
 * is lost (still whole in our input), no answer byte came, and either the
 * method is idempotent or the request never left (<sent> false: the
 * connection to the clone never came up). */
static bool may_retry(const struct conn *c, bool sent)
{
    return c->head_kept && !c->resp_bytes && (!sent || http_method_idempotent(&c->ex->req));
}

/* The connection to the clone is up: a request body starts to stream. */
static void send_body(struct conn *c)
{
    evbuffer_drain(c->cs.in, c->ex->req.head_len);
    c->head_kept = false;
    pump_request_body(c);
}

/* The clone failed before the response began: try another clone or answer
 * with <status>. */
static void upstream_failed(struct conn *c, unsigned status, const char *why, bool retryable)
{
    bool reused = c->up && c->up->requests > 0;
    bool sent = c->up && c->up->connected;
    count_failure(c);
    log_warnx("upstream %s failed: %s, client %s", c->ex->upstream_name, why, c->client_ip);
    /* a pooled connection found closed says nothing about the clone */
    if (c->up && !(reused && retryable && !c->resp_bytes))
        upstream_report(c->up->pool, c->up->server, why);
    drop_upstream(c, false);

    if (c->resp_started) {
        abort_response(c, "clone failed mid-response");
        return;
    }
    /* A reused keep-alive connection that failed may only have gone stale:
     * that try is free, and when no other clone is left the same clone may
     * be tried again on a fresh connection (see dispatch). */
    if (reused)
        c->free_tries++; /* every stale pooled connection, not only the last */
    unsigned budget = cfg_of(c)->retries + c->free_tries;
    if ((retryable || !sent) && may_retry(c, sent) && c->attempts <= budget) {
        if (reused)
            c->stale_server = c->server_id;
        dispatch(c);
        return;
    }
    c->upstream_time = seconds_since(c->t_upstream);
    send_error(c, status, request_consumed(c), why);
}

static void finish_exchange(struct conn *c)
{
    bool reusable = c->ex->resp.keep_alive && c->req_done && !c->decode_body &&
                    !http_body_until_close(&c->ex->resp);
    c->upstream_time = seconds_since(c->t_upstream);
    drop_upstream(c, reusable);
    request_done(c);
    c->up_read_paused = false;
    if (!c->keep_alive || !c->req_done) {
        close_after_flush(c, "response sent, connection not kept");
        return;
    }
    http_head_reset(&c->ex->req);
    conn_set_state(c, CONN_IDLE);
    process_input(c);
}

static void start_tunnel(struct conn *c)
{
    conn_set_state(c, CONN_TUNNEL);
    request_done(c);
    exchange_give(c); /* a tunnel relays bytes: no heads, no cache */
    c->status = 0;    /* logged once, at the switch */
    /* no per-side timeouts (one side may stay silent for long): the tunnel
     * closes when no byte has come from either side for tunnel_timeout */
    stream_set_timeouts(&c->cs, NULL, NULL);
    stream_set_timeouts(&c->up->s, NULL, NULL);
    c->tunnel_seen_us = clock_mono_us();
    deadline_after_ms(c, c->tunnel_seen_us, cfg_of(c)->tunnel_timeout_ms);
    stream_read_enable(&c->cs, true);
    stream_read_enable(&c->up->s, true);
    stream_flush(&c->cs);
    if (evbuffer_get_length(c->up->s.in))
        tunnel_move(&c->up->s, &c->cs);
    if (evbuffer_get_length(c->cs.in))
        tunnel_move(&c->cs, &c->up->s);
}

/* Parses response heads in the clone's input; returns false when the
 * connection was closed or the exchange ended. */
static bool read_response_head(struct conn *c)
{
    struct evbuffer *in = c->up->s.in;
    struct evbuffer *client_out = c->cs.out;

    while (!c->ex->resp.head_done) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return false;
        const char *p;
        size_t n;
        enum http_parse r = parse_head_in(&c->ex->resp, in, CONN_RESP_HEAD_MAX, &p, &n);
        if (!p) {
            conn_close(c, "out of memory");
            return false;
        }
        if (r == HTTP_PARSE_AGAIN) {
            if (n >= CONN_RESP_HEAD_MAX) {
                upstream_failed(c, 502, "response head too large", false);
                return false;
            }
            return false;
        }
        if (r == HTTP_PARSE_ERROR) {
            upstream_failed(c, 502,
                            c->ex->resp.error_text ? c->ex->resp.error_text : "invalid response",
                            false);
            return false;
        }
        unsigned status = c->ex->resp.status;
        if (status == 101 && !c->ex->req.upgrade) {
            upstream_failed(c, 502, "101 to a request that did not ask to upgrade", false);
            return false;
        }
        if (status < 200 && status != 101) {
            /* interim response: pass it on (HTTP/1.1 clients only) and read the next */
            if (c->ex->req.version_minor >= 1 &&
                http_response_serialize(&c->ex->resp, p, NULL, true, false, false, client_out) ==
                    -1) {
                conn_close(c, "out of memory");
                return false;
            }
            evbuffer_drain(in, c->ex->resp.head_len);
            stream_flush(&c->cs);
            uint8_t skip = c->ex->resp.skip_body;
            http_head_reset(&c->ex->resp);
            c->ex->resp.skip_body = skip;
            /* a clone sending interim responses to a client that does not
             * read them is read no further until the client catches up */
            if (evbuffer_get_length(client_out) >= CONN_BUF_HIGH) {
                pause_up_read(c);
                return false;
            }
            continue;
        }
        /* the final response: the request can no longer be retried */
        upstream_report(c->up->pool, c->up->server, NULL);
        /* an HTTP/1.0 client gets a chunked body decoded; set before the
         * cache looks, since a decoded body is never stored */
        c->decode_body = c->ex->req.version_minor == 0 && c->ex->resp.chunked;
        char cache_status[CONN_CACHE_STATUS_MAX];
        if (cache_response_head(c, p, cache_status, sizeof(cache_status)))
            return false; /* answered from the cache */
        if (c->head_kept) {
            evbuffer_drain(c->cs.in, c->ex->req.head_len);
            c->head_kept = false;
        }
        if (!c->req_done || c->w->draining || http_body_until_close(&c->ex->resp))
            c->keep_alive = false;
        if (c->decode_body)
            c->keep_alive = false;
        c->status = status;
        if (http_response_serialize(&c->ex->resp, p, cache_status, c->keep_alive,
                                    c->ex->req.version_minor == 0, c->decode_body,
                                    client_out) == -1) {
            conn_close(c, "out of memory");
            return false;
        }
        evbuffer_drain(in, c->ex->resp.head_len);
        c->resp_started = true;
        if (status == 101) {
            start_tunnel(c);
            return false;
        }
    }
    return true;
}

static void pump_response_body(struct conn *c)
{
    struct evbuffer *in = c->up->s.in;
    struct evbuffer *out = c->cs.out;
    size_t before = evbuffer_get_length(out), moved;

    struct evbuffer *tee = c->ex->cx && c->ex->cx->store ? c->ex->cx->store->body : NULL;
    enum http_parse r = frame_and_move(&c->ex->resp, in, out, c->decode_body, tee, &moved);
    c->bytes_sent += evbuffer_get_length(out) - before;
    stream_flush(&c->cs);
    if (r == HTTP_PARSE_ERROR) {
        log_warnx("upstream %s sent a broken body: %s, client %s", c->ex->upstream_name,
                  c->ex->resp.error_text ? c->ex->resp.error_text : "invalid", c->client_ip);
        abort_response(c, "broken response body");
        return;
    }
    if (tee)
        cache_store_check(c);
    if (r != HTTP_PARSE_AGAIN) {
        cache_store_finish(c);
        finish_exchange(c);
        return;
    }
    if (evbuffer_get_length(out) >= CONN_BUF_HIGH)
        pause_up_read(c);
    else
        stream_read_resume(&c->up->s);
}

/* The clone closed after the response head: frame what came with the close,
 * then end the message (a close-delimited body) or give up (truncated). */
static void finish_on_eof(struct conn *c)
{
    struct evbuffer *out = c->cs.out;
    size_t before = evbuffer_get_length(out), moved;
    struct evbuffer *tee = c->ex->cx && c->ex->cx->store ? c->ex->cx->store->body : NULL;
    enum http_parse r = frame_and_move(&c->ex->resp, c->up->s.in, out, c->decode_body, tee, &moved);
    c->bytes_sent += evbuffer_get_length(out) - before;
    stream_flush(&c->cs);
    if (r == HTTP_PARSE_AGAIN)
        r = http_body_eof(&c->ex->resp);
    if (r == HTTP_PARSE_DONE) {
        if (tee)
            cache_store_check(c);
        cache_store_finish(c);
        finish_exchange(c);
        return;
    }
    log_warnx("upstream %s closed mid-response, client %s", c->ex->upstream_name, c->client_ip);
    upstream_report(c->up->pool, c->up->server, "closed mid-response");
    abort_response(c, "clone closed mid-response");
}

static void conn_on_up_read(struct stream *st, void *arg)
{
    struct conn *c = arg;
    (void)st;
    if (c->state == CONN_TUNNEL) {
        c->tunnel_seen_us = clock_mono_us();
        tunnel_move(&c->up->s, &c->cs);
        return;
    }
    c->resp_bytes = true;
    if (!c->ex->resp.head_done && !read_response_head(c))
        return;
    pump_response_body(c);
}

/* The clone's output drained below the low watermark. */
static void conn_on_up_drained(struct stream *st, void *arg)
{
    struct conn *c = arg;
    if (c->state == CONN_TUNNEL) {
        if (c->tunnel_half_closed) {
            if (evbuffer_get_length(st->out) == 0)
                shutdown(st->fd, SHUT_WR);
            else
                stream_notify_drained(st, 0);
            return;
        }
        stream_read_enable(&c->cs, true);
        return;
    }
    if (c->client_read_paused && !c->req_done) {
        c->client_read_paused = false;
        stream_read_enable(&c->cs, true);
        stream_set_timeouts(&c->up->s, NULL, c->w->response_tv); /* the client's pace again */
        pump_request_body(c);
    }
}

static void conn_on_up_event(struct stream *st, enum stream_event what, void *arg)
{
    struct conn *c = arg;

    if (what == STREAM_EV_CONNECTED) {
        c->up->connected = true;
        /* response_timeout counts once the request is sent (or while a
         * client waits for 100 Continue): an upload's pace is the client's,
         * watched by idle_timeout on its side */
        bool waiting = c->req_done || c->ex->req.expect_continue;
        stream_set_timeouts(st, waiting ? c->w->response_tv : NULL, c->w->response_tv);
        if (c->head_kept && c->ex->req.has_body && !c->req_done)
            send_body(c);
        return;
    }
    if (c->state == CONN_TUNNEL) {
        /* one side closed: pass on what it said, then close both */
        if (evbuffer_get_length(st->in))
            evbuffer_add_buffer(c->cs.out, st->in);
        close_after_flush(c, "tunnel closed by the clone");
        return;
    }
    if (what == STREAM_EV_READ_TIMEOUT || what == STREAM_EV_WRITE_TIMEOUT) {
        if (!c->up->connected)
            upstream_failed(c, 504, "connect timeout", true);
        else
            upstream_failed(c, 504, "response timeout", false);
        return;
    }
    if (what == STREAM_EV_EOF) {
        if (c->ex->resp.head_done) {
            finish_on_eof(c);
            return;
        }
        if (c->resp_bytes) {
            upstream_failed(c, 502, "clone closed mid-head", false);
            return;
        }
        upstream_failed(c, 502, "clone closed without answering", true);
        return;
    }
    char why[200];
    snprintf(why, sizeof(why), "%s: %s", c->up->connected ? "connection error" : "connect failed",
             stream_error_text(&c->up->s));
    upstream_failed(c, 502, why, true);
}

/* Notes (or forgets) that the clone with stable <id> was tried. */
static void tried_id_mark(struct conn *c, int id, bool tried)
{
    if (id < 0 || id >= CONN_TRIED_ID_WORDS * 64)
        return; /* no stable id: tracked by position in its pool alone */
    uint64_t bit = UINT64_C(1) << (id % 64);
    if (tried)
        c->ex->tried_ids[id / 64] |= bit;
    else
        c->ex->tried_ids[id / 64] &= ~bit;
}

/* The positions in <pool> of the clones already tried (the pool may be a
 * reload's newer one than the first attempt's). */
static uint64_t tried_in_pool(const struct conn *c, const struct upstream_pool *pool)
{
    uint64_t mask = 0;
    for (unsigned i = 0; i < upstream_server_count(pool); i++) {
        int id = upstream_server_id(pool, i);
        if (id >= 0 && id < CONN_TRIED_ID_WORDS * 64 &&
            (c->ex->tried_ids[id / 64] & (UINT64_C(1) << (id % 64))))
            mask |= UINT64_C(1) << i;
        else if (id < 0 && (c->tried & (UINT64_C(1) << i)))
            mask |= UINT64_C(1) << i;
    }
    return mask;
}

static void dispatch(struct conn *c)
{
    struct worker *w = c->w;
    const struct config *cfg = cfg_of(c);
    struct evbuffer *in = c->cs.in;

    for (;;) {
        if (c->attempts > 0)
            c->tried = tried_in_pool(c, w->pool);
        int server = upstream_pick(w->pool, c->tried);
        if (server < 0 && c->stale_server >= 0) {
            tried_id_mark(c, c->stale_server, false);
            c->stale_server = -1;
            c->tried = tried_in_pool(c, w->pool);
            server = upstream_pick(w->pool, c->tried);
        }
        if (server < 0) {
            if (c->attempts == 0)
                send_error(c, 503, request_consumed(c), "no server available");
            else
                send_error(c, 502, request_consumed(c), "every attempt failed");
            return;
        }
        c->server = server;
        c->server_id = upstream_server_id(w->pool, (unsigned)server);
        c->tried |= UINT64_C(1) << server;
        tried_id_mark(c, c->server_id, true);
        c->attempts++;
        if (c->attempts > 1) {
            STATS_INC(w->stats->retries);
            if (c->server_id >= 0)
                STATS_INC(w->stats->server[c->server_id].retries);
        }
        c->up = upstream_acquire(w->pool, (unsigned)server);
        if (c->up) {
            if (c->server_id >= 0)
                STATS_INC(w->stats->server[c->server_id].active);
            break;
        }
        bool local = stream_error_is_local(errno);
        log_warn("upstream %s: cannot connect", upstream_server_name(w->pool, (unsigned)server));
        if (local) {
            /* our shortage, not the clone's fault, and no other clone would do better */
            send_error(c, 503, request_consumed(c), "the proxy is out of resources");
            return;
        }
        count_failure(c);
        if (c->attempts > cfg->retries + c->free_tries || !may_retry(c, false)) {
            send_error(c, 502, request_consumed(c), "cannot connect to a clone");
            return;
        }
    }
    /* the name outlives the pool (access log): keep a copy */
    const char *name = upstream_server_name(w->pool, (unsigned)c->server);
    size_t name_len = strnlen(name, sizeof(c->ex->upstream_name) - 1);
    memcpy(c->ex->upstream_name, name, name_len);
    c->ex->upstream_name[name_len] = '\0';
    struct stream *us = &c->up->s;
    stream_set_callbacks(us, conn_on_up_read, conn_on_up_drained, conn_on_up_event, c);
    us->read_high = CONN_BUF_HIGH;
    if (c->up->connected)
        stream_set_timeouts(
            us, c->ex->req.has_body && !c->ex->req.expect_continue ? NULL : w->response_tv,
            w->response_tv);
    else
        stream_set_timeouts(us, w->connect_tv, w->connect_tv);

    const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)c->ex->req.head_len);
    struct http_forward_info info = {
        .client_ip = c->client_ip,
        .proto = c->https ? "https" : "http",
        .default_host = c->ex->upstream_name,
        .extra = c->ex->cx && c->ex->cx->active && c->ex->cx->cond[0] ? c->ex->cx->cond : NULL,
    };
    if (c->ex->cx && c->ex->cx->active)
        c->ex->cx->request_ms = wall_ms();
    if (!head || http_request_serialize(&c->ex->req, head, &info, us->out) == -1) {
        conn_close(c, "out of memory");
        return;
    }
    http_head_reset(&c->ex->resp);
    c->ex->resp.skip_body =
        c->ex->req.method.len == 4 && memcmp(head + c->ex->req.method.off, "HEAD", 4) == 0;
    c->resp_bytes = false;
    c->t_upstream = clock_mono_us();
    stream_read_enable(us, true);
    stream_flush(us);

    if (!c->ex->req.has_body) {
        c->req_done = true;
        return;
    }
    if (c->up->connected)
        send_body(c);
    /* else the body waits for STREAM_EV_CONNECTED */
}

/* ------------------------------------------------------------ cache side */

/* A PURGE request waiting for its count: made per PURGE, freed by
 * conn_on_purged(); <c> is cleared if the connection goes first. */
struct conn_purge {
    struct conn *c;
};

static const char *const cache_fwd_names[STATS_CS_COUNT] = {
    NULL, "uri-miss", "vary-miss", "miss", "stale", "request", "bypass",
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct cache *cache_of(const struct conn *c)
{
    return c->w->shared->cache;
}

/* How much longer <e> is worth keeping: fresh time left, then its stale
 * windows, then (when it can be validated) CONN_CACHE_KEEP_MS. */
static int64_t entry_keep_ms(const struct cache_entry *e, int64_t now)
{
    int64_t age = cache_policy_age_ms(e->initial_age_ms, e->response_ms, now);
    int64_t stale = e->swr_ms > e->sie_ms ? e->swr_ms : e->sie_ms;
    bool validatable = e->etag_len > 0 || e->last_modified_ms >= 0;
    return e->freshness_ms - age + stale + (validatable ? CONN_CACHE_KEEP_MS : 0);
}

static void stored_facts(const struct cache_entry *e, struct cache_policy_stored *st)
{
    st->initial_age_ms = e->initial_age_ms;
    st->response_ms = e->response_ms;
    st->freshness_ms = e->freshness_ms;
    st->swr_ms = e->swr_ms;
    st->sie_ms = e->sie_ms;
    st->must_revalidate = (e->flags & CACHE_ENTRY_MUST_REVALIDATE) != 0;
    st->no_cache = (e->flags & CACHE_ENTRY_NO_CACHE) != 0;
}

static void store_free(struct conn_store *st)
{
    if (!st)
        return;
    if (st->head)
        evbuffer_free(st->head);
    if (st->body)
        evbuffer_free(st->body);
    free(st);
}

/* Everything the cache held for the request goes: the Redis lookup, the
 * wait, the fill (waiters then forward on their own), the stale entry. */
static void cache_request_end(struct conn *c)
{
    struct conn_cache *cx = c->ex ? c->ex->cx : NULL;
    if (!cx || !cx->active)
        return;
    cx->active = false;
    if (cx->op) {
        store_redis_cancel(cx->op);
        cx->op = NULL;
    }
    cache_waiter_cancel(cache_of(c), &cx->waiter);
    if (cx->fill) {
        cache_fill_end(cache_of(c), cx->fill, cx->stored);
        cx->fill = NULL;
    }
    if (cx->store) {
        STATS_INC(c->w->stats->cache.stores_aborted);
        store_free(cx->store);
        cx->store = NULL;
    }
    cache_entry_unref(cx->stale);
    cx->stale = NULL;
    if (cx->purge) {
        cx->purge->c = NULL; /* conn_on_purged() frees it */
        cx->purge = NULL;
    }
}

static bool key_room(struct conn_cache *cx, size_t need)
{
    if (need <= cx->key_cap)
        return true;
    size_t cap = cx->key_cap ? cx->key_cap : 256;
    while (cap < need)
        cap *= 2;
    char *k = realloc(cx->key, cap); /* owned by cx, freed by exchange_free() */
    if (!k)
        return false;
    cx->key = k;
    cx->key_cap = cap;
    return true;
}

/* The request's URL key into cx->key, sized to it: keys are made in a
 * per-thread scratch buffer so a connection keeps only what it uses.
 * Returns the length, 0 when there is none (or no memory). */
static size_t request_key(struct conn *c, const char *buf)
{
    static _Thread_local char scratch[CACHE_POLICY_KEY_MAX];
    size_t len =
        cache_policy_key(&c->ex->req, buf, c->https ? "https" : "http", scratch, sizeof(scratch));
    if (len == 0 || !key_room(c->ex->cx, len + 1))
        return 0;
    memcpy(c->ex->cx->key, scratch, len);
    return len;
}

/* The "Cache-Status: ..." line for a forwarded response. */
/* Appends <len> bytes to the line being built at out[*n] (room <room>,
 * keeping 3 bytes for the end); drops what does not fit. */
static void line_put(char *out, size_t room, size_t *n, const char *s, size_t len)
{
    if (*n + len + 3 > room)
        return;
    memcpy(out + *n, s, len);
    *n += len;
}

static void line_put_int(char *out, size_t room, size_t *n, long long v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    bool neg = v < 0;
    unsigned long long u = neg ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i > 1);
    if (neg)
        tmp[--i] = '-';
    line_put(out, room, n, tmp + i, sizeof(tmp) - i);
}

#define LINE_LIT(out, room, n, lit) line_put(out, room, n, lit, sizeof(lit) - 1)

/* The "Cache-Status: ..." line (CRLF and NUL ended) for a forwarded
 * response: built with copies, no formatting, as it goes on every one. */
static void cache_status_line(const struct conn *c, char *out, size_t room, bool stored,
                              int64_t ttl_s, unsigned fwd_status)
{
    size_t n = 0;
    const char *fwd = cache_fwd_names[c->cache_outcome ? c->cache_outcome : STATS_CS_MISS];
    LINE_LIT(out, room, &n, "Cache-Status: clonegate; fwd=");
    line_put(out, room, &n, fwd, strlen(fwd));
    if (fwd_status) {
        LINE_LIT(out, room, &n, "; fwd-status=");
        line_put_int(out, room, &n, fwd_status);
    }
    if (c->ex->cx && c->ex->cx->collapsed)
        LINE_LIT(out, room, &n, "; collapsed");
    if (stored) {
        LINE_LIT(out, room, &n, "; stored; ttl=");
        line_put_int(out, room, &n, ttl_s);
    } else if (c->ex->cx && c->ex->cx->active && c->ex->cx->verdict != CACHE_STORE) {
        const char *d = cache_policy_verdict_text(c->ex->cx->verdict);
        LINE_LIT(out, room, &n, "; detail=");
        line_put(out, room, &n, d, strlen(d));
    }
    memcpy(out + n, "\r\n", 3);
}

/* Whether header line <name> (of <len> bytes) is one a 304 carries. */
static bool not_modified_field(const char *name, size_t len)
{
    static const char *const keep[] = {"cache-control", "content-location", "date", "etag",
                                       "expires",       "last-modified",    "vary"};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        if (strlen(keep[i]) == len && strncasecmp(keep[i], name, len) == 0)
            return true;
    return false;
}

/* Appends <e>'s stored header lines to <out>; only the 304 ones when <nm>. */
static int add_stored_head(const struct cache_entry *e, bool nm, struct evbuffer *out)
{
    if (!nm)
        return evbuffer_add(out, e->head, e->head_len);
    const char *p = e->head, *end = e->head + e->head_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(end - p));
        size_t line = eol ? (size_t)(eol - p + 1) : (size_t)(end - p);
        if (colon && colon < p + line && not_modified_field(p, (size_t)(colon - p)) &&
            evbuffer_add(out, p, line) == -1)
            return -1;
        p += line;
    }
    return 0;
}

/* The tag header line of <e> into <out> (<room> bytes) when <cfg> exposes
 * tags: "<tag_header>: <tags>\r\n". Returns its length; 0 when tags are
 * not exposed, <e> has none, or they do not fit or hold a line break. */
static size_t tag_line(const struct config *cfg, const struct cache_entry *e, char *out,
                       size_t room)
{
    size_t name_len = strlen(cfg->cache_tag_header);
    /* line_put() keeps 3 bytes spare after each piece */
    if (!cfg->cache_expose_tags || e->tags_len == 0 || name_len + e->tags_len + 4 + 3 > room ||
        memchr(e->tags, '\r', e->tags_len) || memchr(e->tags, '\n', e->tags_len))
        return 0;
    size_t n = 0;
    line_put(out, room, &n, cfg->cache_tag_header, name_len);
    LINE_LIT(out, room, &n, ": ");
    line_put(out, room, &n, e->tags, e->tags_len);
    LINE_LIT(out, room, &n, "\r\n");
    return n;
}

static void cache_after_answer(struct conn *c);

/*
 * Answers the request from <e> (the caller keeps its reference): 304 when
 * the request's own validators match, else the stored response with Age
 * and a Cache-Status for <outcome> (a hit, or a forward whose clone said
 * <fwd_status>), the body referenced, not copied. <extra> (<extra_len>
 * bytes of header lines, or NULL) goes to this client alone: the clone's
 * Set-Cookie on a 304 that refreshed the entry. <c> may be gone after.
 */
static void serve_entry(struct conn *c, struct cache_entry *e, int64_t age_ms,
                        enum stats_cache_outcome outcome, unsigned fwd_status, const char *extra,
                        size_t extra_len)
{
    struct evbuffer *out = c->cs.out;
    const char *req = (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->ex->req.head_len);
    /* a client's validators count only for a stored 2xx (RFC 9110 13.2.1) */
    bool nm =
        req && c->ex->cx->rq.conditional && e->status >= 200 && e->status < 300 &&
        cache_policy_not_modified(&c->ex->req, req, e->etag, e->etag_len, e->last_modified_ms);
    unsigned status = nm ? 304 : e->status;
    bool body = !nm && !c->ex->cx->rq.is_head && status != 204 && status != 304 && status >= 200;
    long long ttl_s = (long long)((e->freshness_ms - age_ms) / 1000);
    /* built with copies, not printf: this runs for every hit */
    char top[CONN_CACHE_STATUS_MAX + 64];
    size_t n = 0;
    const char *reason = http_reason(status);
    LINE_LIT(top, sizeof(top), &n, "HTTP/1.1 ");
    line_put_int(top, sizeof(top), &n, status);
    LINE_LIT(top, sizeof(top), &n, " ");
    line_put(top, sizeof(top), &n, reason, strlen(reason));
    if (outcome == STATS_CS_HIT) {
        LINE_LIT(top, sizeof(top), &n, "\r\nCache-Status: clonegate; hit; ttl=");
    } else {
        const char *fwd = cache_fwd_names[outcome];
        LINE_LIT(top, sizeof(top), &n, "\r\nCache-Status: clonegate; fwd=");
        line_put(top, sizeof(top), &n, fwd, strlen(fwd));
        LINE_LIT(top, sizeof(top), &n, "; fwd-status=");
        line_put_int(top, sizeof(top), &n, fwd_status);
        if (fwd_status >= 500)
            LINE_LIT(top, sizeof(top), &n, "; detail=stale-if-error");
        LINE_LIT(top, sizeof(top), &n, "; ttl=");
    }
    line_put_int(top, sizeof(top), &n, ttl_s);
    LINE_LIT(top, sizeof(top), &n, "\r\n");
    size_t top_len = n;
    char tail[160];
    n = 0;
    LINE_LIT(tail, sizeof(tail), &n, "Age: ");
    line_put_int(tail, sizeof(tail), &n, age_ms / 1000);
    LINE_LIT(tail, sizeof(tail), &n, "\r\nVia: 1.1 clonegate\r\n");
    if (!nm && status != 204 && status != 304) {
        LINE_LIT(tail, sizeof(tail), &n, "Content-Length: ");
        line_put_int(tail, sizeof(tail), &n, (long long)e->body_len);
        LINE_LIT(tail, sizeof(tail), &n, "\r\n");
    }
    if (!c->keep_alive)
        LINE_LIT(tail, sizeof(tail), &n, "Connection: close\r\n");
    else if (c->ex->req.version_minor == 0)
        LINE_LIT(tail, sizeof(tail), &n, "Connection: keep-alive\r\n");
    LINE_LIT(tail, sizeof(tail), &n, "\r\n");
    size_t tail_len = n;
    char tags[CONN_TAG_LINE_MAX];
    size_t tags_len = nm ? 0 : tag_line(cfg_of(c), e, tags, sizeof(tags));
    int r = 0;
    if (!nm) {
        /* straight to the socket, no copy into the output buffer; what the
         * socket does not take is queued (the body as a reference) */
        size_t body_len = body ? (size_t)e->body_len : 0;
        struct iovec iov[6] = {
            {.iov_base = top, .iov_len = top_len},
            {.iov_base = (void *)(uintptr_t)e->head, .iov_len = e->head_len},
            {.iov_base = (void *)(uintptr_t)extra, .iov_len = extra ? extra_len : 0},
            {.iov_base = tags, .iov_len = tags_len},
            {.iov_base = tail, .iov_len = tail_len},
            {.iov_base = (void *)(uintptr_t)e->body, .iov_len = body_len},
        };
        size_t done = stream_write_now(&c->cs, iov, body_len ? 6 : 5);
        for (int i = 0; i < 5; i++) {
            if (done >= iov[i].iov_len) {
                done -= iov[i].iov_len;
                continue;
            }
            r |= evbuffer_add(out, (const char *)iov[i].iov_base + done, iov[i].iov_len - done);
            done = 0;
        }
        if (body_len)
            r |= cache_entry_add_body_from(e, done, out);
    } else {
        r = evbuffer_add(out, top, top_len);
        r |= add_stored_head(e, true, out);
        if (extra)
            r |= evbuffer_add(out, extra, extra_len);
        r |= evbuffer_add(out, tail, tail_len);
    }
    if (r < 0) {
        conn_close(c, "out of memory");
        return;
    }
    c->status = status;
    c->bytes_sent = body ? e->body_len : 0;
    c->cache_outcome = (uint8_t)outcome;
    stream_flush(&c->cs);
    cache_after_answer(c);
}

/* The request was answered without a clone: on to the next one. */
static void cache_after_answer(struct conn *c)
{
    request_done(c);
    drop_upstream(c, false);
    if (c->head_kept) {
        evbuffer_drain(c->cs.in, c->ex->req.head_len);
        c->head_kept = false;
    }
    if (!c->keep_alive) {
        close_after_flush(c, "answered from the cache, connection not kept");
        return;
    }
    http_head_reset(&c->ex->req);
    conn_set_state(c, CONN_IDLE);
    if (evbuffer_get_length(c->cs.in) == 0) {
        process_input(c); /* arms the idle deadline */
        return;
    }
    /* a pipelined request: on the next loop turn, as send_error() does */
    c->resume_input = true;
    event_active(&c->timer, EV_TIMEOUT, 1);
}

static void cache_lookup(struct conn *c);
static void cache_found(struct conn *c, struct cache_entry *e);

/* Whether the stored header line at <line> (<len> bytes) is named <name>. */
static bool line_named(const char *line, size_t len, const char *name, size_t name_len)
{
    return len > name_len && line[name_len] == ':' && strncasecmp(line, name, name_len) == 0;
}

/*
 * <e> (a reference, consumed) read from Redis, without the lines of the
 * tag header <tag_header> in its head: entries written by older versions
 * kept them there, and a hit replays the head as it is. Returns <e> itself
 * when it holds none, else a new entry (one reference); NULL when out of
 * memory.
 */
static struct cache_entry *without_tag_lines(struct cache_entry *e, const char *tag_header)
{
    size_t name_len = strlen(tag_header);
    const char *q = e->head, *end = e->head + e->head_len;
    const char *first = NULL;
    while (q < end && !first) {
        const char *eol = memchr(q, '\n', (size_t)(end - q));
        size_t line = eol ? (size_t)(eol - q + 1) : (size_t)(end - q);
        if (line_named(q, line, tag_header, name_len))
            first = q;
        q += line;
    }
    if (!first)
        return e;
    char *head = malloc(e->head_len); /* freed below, once copied into the new entry */
    struct cache_entry *out = NULL;
    if (head) {
        size_t n = (size_t)(first - e->head);
        memcpy(head, e->head, n);
        for (q = first; q < end;) {
            const char *eol = memchr(q, '\n', (size_t)(end - q));
            size_t line = eol ? (size_t)(eol - q + 1) : (size_t)(end - q);
            if (!line_named(q, line, tag_header, name_len)) {
                memcpy(head + n, q, line);
                n += line;
            }
            q += line;
        }
        struct cache_entry_parts parts = cache_entry_parts_of(e);
        parts.head = head;
        parts.head_len = n;
        out = cache_entry_build(&parts);
        free(head);
    }
    cache_entry_unref(e);
    return out;
}

/* A Redis lookup answered: keep what it found in L1 and look again. */
static void conn_on_redis(void *arg, enum store_redis_result r, const char *data, size_t len)
{
    struct conn *c = arg;
    struct conn_cache *cx = c->ex->cx;
    cx->op = NULL;
    /* a purge ran while Redis answered: what came may be what it purged */
    if (r == STORE_REDIS_FOUND &&
        cx->purge_gen != cache_purge_generation(cache_of(c), cx->url_hash))
        r = STORE_REDIS_NOT_FOUND;
    if (r == STORE_REDIS_FOUND) {
        struct cache_entry *e = cache_entry_decode(data, len);
        bool decoded = e != NULL;
        if (e)
            e = without_tag_lines(e, cfg_of(c)->cache_tag_header);
        /* the full key is compared: a hash collision never serves a wrong body */
        if (e && cache_entry_key_equals(e, cx->key, cx->key_len)) {
            int64_t now = wall_ms();
            int64_t keep = entry_keep_ms(e, now);
            if (keep > 0) {
                STATS_INC(c->w->stats->cache.l2_hits);
                /* may refuse: no L1; a Vary record never shortens one there */
                if (e->kind == CACHE_ENTRY_VARY)
                    cache_put_longer(cache_of(c), cx->url_hash, e, now + keep);
                else
                    cache_put(cache_of(c), cx->url_hash, e, now + keep);
                cache_found(c, e);
                return;
            }
        } else if (!decoded) {
            log_warnx("cache: undecodable entry in Redis for %.*s", (int)cx->key_len, cx->key);
        }
        cache_entry_unref(e);
    }
    cache_lookup(c);
}

static void cache_forward(struct conn *c, enum stats_cache_outcome why);
static void cache_use_entry(struct conn *c, struct cache_entry *e);

/*
 * Finds the stored response for the request: L1 first, then Redis (the
 * request then waits, at most cache.redis_timeout, in conn_on_redis()). A
 * URL with a Vary record is looked up again under the request's variant.
 */
static void cache_lookup(struct conn *c)
{
    struct conn_cache *cx = c->ex->cx;
    struct cache *cache = cache_of(c);
    int64_t now = wall_ms();

    struct cache_entry *e = cache_get(cache, cx->url_hash, cx->key, cx->key_len, now);
    /* not while purges wait for Redis: it may still hold what they removed */
    if (!e && c->w->redis && !purge_redis_blocked(c->w->shared->purge)) {
        bool *tried = cx->vary_checked ? &cx->redis_variant_tried : &cx->redis_url_tried;
        if (!*tried) {
            *tried = true;
            cache_redis_key("", cx->key, cx->key_len, cx->redis_key);
            cx->purge_gen = cache_purge_generation(cache, cx->url_hash);
            cx->op = store_redis_get(c->w->redis, cx->redis_key, strlen(cx->redis_key),
                                     conn_on_redis, c);
            if (cx->op)
                return;
        }
    }
    if (!e) {
        cache_forward(c, cx->vary_checked ? STATS_CS_VARY_MISS : STATS_CS_URI_MISS);
        return;
    }
    cache_found(c, e);
}

/* What to do with the entry <e> (a reference, consumed) found under the
 * current key: a response is judged, a Vary record leads to the variant. */
static void cache_found(struct conn *c, struct cache_entry *e)
{
    struct conn_cache *cx = c->ex->cx;
    if (e->kind == CACHE_ENTRY_PASS) {
        /* known not storable lately: forward alone, no wait, judge again */
        cache_entry_unref(e);
        cx->no_coalesce = true;
        cx->had_pass = true;
        cache_forward(c, STATS_CS_URI_MISS);
        return;
    }
    if (e->kind == CACHE_ENTRY_VARY && !cx->vary_checked) {
        const char *req = (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->ex->req.head_len);
        char variant[CACHE_POLICY_VARY_MAX];
        int vlen = req ? cache_policy_variant(&c->ex->req, req, e->vary, e->vary_len, variant,
                                              sizeof(variant))
                       : -1;
        cache_entry_unref(e);
        if (vlen < 0 || !key_room(cx, cx->url_len + 1 + (size_t)vlen)) {
            cache_forward(c, STATS_CS_BYPASS);
            return;
        }
        cx->key[cx->url_len] = '\n';
        memcpy(cx->key + cx->url_len + 1, variant, (size_t)vlen);
        cx->key_len = cx->url_len + 1 + (size_t)vlen;
        cx->vary_checked = true;
        cache_lookup(c);
        return;
    }
    if (e->kind != CACHE_ENTRY_RESPONSE) {
        cache_entry_unref(e);
        cache_forward(c, STATS_CS_MISS);
        return;
    }
    cache_use_entry(c, e);
}

/* Decides what a found entry <e> (a reference, consumed) is good for. */
static void cache_use_entry(struct conn *c, struct cache_entry *e)
{
    struct conn_cache *cx = c->ex->cx;
    struct cache_policy_stored st;
    int64_t age;
    stored_facts(e, &st);
    enum cache_policy_use use = cache_policy_use(&st, &cx->rq, wall_ms(), &age);

    switch (use) {
    case CACHE_USE_FRESH:
        serve_entry(c, e, age, STATS_CS_HIT, 0, NULL, 0);
        cache_entry_unref(e);
        return;
    case CACHE_USE_STALE:
    case CACHE_USE_SWR:
        STATS_INC(c->w->stats->cache.stale_served);
        if (use == CACHE_USE_SWR)
            cache_refresh_behind(c, e);
        serve_entry(c, e, age, STATS_CS_HIT, 0, NULL, 0);
        cache_entry_unref(e);
        return;
    case CACHE_USE_VALIDATE:
    case CACHE_USE_REQUEST:
        break;
    }
    /* validate: forward with the stored validators; a 304 refreshes <e> */
    cx->stale = e;
    cx->cond[0] = '\0';
    size_t n = 0;
    if (e->etag_len && e->etag_len < sizeof(cx->cond) - 40)
        n = (size_t)snprintf(cx->cond, sizeof(cx->cond), "If-None-Match: %.*s\r\n",
                             (int)e->etag_len, e->etag);
    if (e->last_modified_ms >= 0) {
        char date[32];
        cache_policy_format_date(e->last_modified_ms, date);
        snprintf(cx->cond + n, sizeof(cx->cond) - n, "If-Modified-Since: %s\r\n", date);
    }
    if (cx->cond[0]) {
        /* the client's own validators are answered here, from the result */
        for (unsigned i = 0; i < c->ex->req.header_count; i++) {
            uint8_t id = c->ex->req.headers[i].id;
            if (id == HTTP_H_IF_NONE_MATCH || id == HTTP_H_IF_MODIFIED_SINCE)
                c->ex->req.headers[i].hop = 1;
        }
    }
    cx->no_coalesce = true; /* a validation is quick and may not store */
    cache_forward(c, use == CACHE_USE_REQUEST ? STATS_CS_REQUEST : STATS_CS_STALE);
}

/* Woken from a fill this request waited on (its own worker thread). */
static void conn_on_fill_done(void *arg, bool filled)
{
    struct conn *c = arg;
    struct conn_cache *cx = c->ex->cx;
    deadline_clear(c);
    cx->no_coalesce = true; /* woken once: it never waits again */
    if (!filled) {
        cache_forward(c, STATS_CS_MISS);
        return;
    }
    /* the entry is in L1, else in Redis (a reply said so): look again,
     * asking Redis at most once more for each key */
    cx->redis_url_tried = cx->redis_variant_tried = false;
    c->cache_outcome = STATS_CS_MISS;
    cache_lookup(c);
}

/* Forwards the request to a clone: as the filler of its key when it may be
 * stored and nobody fills it yet, else waiting for whoever does. */
static void cache_forward(struct conn *c, enum stats_cache_outcome why)
{
    struct conn_cache *cx = c->ex->cx;
    if (!c->cache_outcome || c->cache_outcome == STATS_CS_URI_MISS)
        c->cache_outcome = (uint8_t)why;
    if (cx->rq.cc.flags & CACHE_CC_ONLY_IF_CACHED) {
        /* RFC 9111 5.2.1.7: nothing stored may answer it */
        conn_set_state(c, CONN_FORWARDING);
        send_error(c, 504, true, "only-if-cached: nothing stored");
        return;
    }
    if (cx->collapsed)
        c->cache_outcome = STATS_CS_MISS;
    if (why != STATS_CS_BYPASS && !cx->no_coalesce && !cx->rq.is_head) {
        cx->waiter.box = c->w->mailbox;
        cx->waiter.wake = conn_on_fill_done;
        cx->waiter.arg = c;
        struct cache_fill *fill;
        enum cache_fill_role role =
            cache_fill_join(cache_of(c), cx->url_hash, cx->key, cx->url_len, &cx->waiter, &fill);
        if (role == CACHE_FILL_WAITING) {
            STATS_INC(c->w->stats->cache.coalesced);
            cx->collapsed = true;
            conn_set_state(c, CONN_CACHE_WAIT);
            deadline_after_ms(c, clock_mono_us(), cfg_of(c)->cache_lock_timeout_ms);
            return;
        }
        cx->fill = fill; /* NULL when out of memory: forward uncoalesced */
    }
    conn_set_state(c, CONN_FORWARDING);
    dispatch(c);
}

/* A PURGE's count came (its connection may be gone): 200, 404 when
 * nothing was stored, 503 or 504 when Redis was not purged (purge_answer()). */
static void conn_on_purged(void *arg, long long count, enum purge_outcome outcome)
{
    struct conn_purge *op = arg;
    struct conn *c = op->c;
    free(op);
    if (!c)
        return;
    c->ex->cx->purge = NULL;
    char body[PURGE_ANSWER_MAX];
    unsigned status = (unsigned)purge_answer(count, outcome, body, sizeof(body));
    if (status == 200 && count <= 0)
        status = 404;
    int blen = (int)strlen(body);
    if (evbuffer_add_printf(c->cs.out,
                            "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\n"
                            "Content-Length: %d\r\nCache-Status: clonegate; fwd=bypass\r\n%s\r\n%s",
                            status, http_reason(status), blen,
                            c->keep_alive ? "" : "Connection: close\r\n", body) < 0) {
        conn_close(c, "out of memory");
        return;
    }
    c->status = status;
    c->bytes_sent = (uint64_t)blen;
    stream_flush(&c->cs);
    cache_after_answer(c);
}

/* PURGE <url>: from cache.purge_allow only; every variant of the URL goes,
 * here, in Redis and in every other instance's L1. */
static void cache_purge_request(struct conn *c, const char *buf)
{
    /* a PURGE's body is never read: the connection ends with the answer,
     * so the body cannot pass for the next request */
    if (c->ex->req.has_body)
        c->keep_alive = false;
    const struct config *cfg = cfg_of(c);
    struct cache *cache = cache_of(c);
    struct conn_cache *cx = c->ex->cx;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer = {.in4 = {.sin_family = AF_INET}};
    if (strchr(c->client_ip, ':')) {
        peer.in6.sin6_family = AF_INET6;
        inet_pton(AF_INET6, c->client_ip, &peer.in6.sin6_addr);
    } else {
        inet_pton(AF_INET, c->client_ip, &peer.in4.sin_addr);
    }
    if (!cache || !cfg->cache_enabled || !c->w->shared->purge) {
        send_error(c, 405, request_consumed(c), "PURGE without a cache");
        return;
    }
    if (!config_cidr_match(cfg->purge_allow, cfg->purge_allow_count, &peer.sa)) {
        __atomic_add_fetch(&purge_stats(c->w->shared->purge)->refused, 1, __ATOMIC_RELAXED);
        log_info("%s: PURGE refused: not in cache.purge_allow", c->client_ip);
        send_error(c, 403, request_consumed(c), "PURGE from outside cache.purge_allow");
        return;
    }
    size_t len = request_key(c, buf);
    if (len == 0) {
        send_error(c, 400, request_consumed(c), "PURGE of no URL");
        return;
    }
    struct conn_purge *op = calloc(1, sizeof(*op)); /* freed by conn_on_purged() */
    if (!op) {
        send_error(c, 500, request_consumed(c), "out of memory");
        return;
    }
    op->c = c;
    cx->purge = op;
    cx->active = true;
    conn_set_state(c, CONN_CACHE_LOOKUP);
    purge_run(c->w->shared->purge, c->w->base, cache, c->w->redis, CACHE_PURGE_URL, cx->key, len,
              false, conn_on_purged, op);
}

/*
 * Starts the cache's part of a request whose head is parsed (bytes at
 * <buf>). Returns true when the cache took the request over (answered it,
 * or it waits on Redis or on another request's fill); false to forward it.
 */
static bool cache_begin(struct conn *c, const char *buf)
{
    const struct config *cfg = cfg_of(c);
    struct cache *cache = cache_of(c);

    c->cache_outcome = STATS_CS_BYPASS;
    if ((!cache || !cfg->cache_enabled) && llhttp_get_method(&c->ex->req.parser) == HTTP_PURGE) {
        send_error(c, 405, request_consumed(c), "PURGE without a cache");
        return true;
    }
    if (!cache || !cfg->cache_enabled || c->ex->req.upgrade)
        return false;
    if (!c->ex->cx) {
        c->ex->cx = calloc(1, sizeof(*c->ex->cx)); /* freed by exchange_free() */
        if (!c->ex->cx)
            return false;
    }
    struct conn_cache *cx = c->ex->cx;
    if (llhttp_get_method(&c->ex->req.parser) == HTTP_PURGE) {
        cache_purge_request(c, buf);
        return true;
    }
    cache_policy_request(&c->ex->req, buf, &cx->rq);
    if (!(cx->rq.lookup && !c->ex->req.has_body) && !cx->rq.unsafe)
        return false;
    size_t len = request_key(c, buf);
    if (len == 0)
        return false;
    cx->active = true;
    cx->key_len = cx->url_len = len;
    cx->url_hash = cache_hash(cx->key, len);
    cx->vary_checked = cx->redis_url_tried = cx->redis_variant_tried = false;
    cx->no_coalesce = cx->collapsed = cx->stored = cx->had_pass = false;
    cx->verdict = CACHE_STORE;
    cx->cond[0] = '\0';
    cx->invalidate = cx->rq.unsafe;
    if (cx->rq.unsafe)
        return false; /* forwarded; the URL is invalidated if it succeeds */
    if (cx->rq.cc.flags & CACHE_CC_NO_STORE) {
        cx->no_coalesce = true; /* nothing will be stored for it */
    }
    c->cache_outcome = 0;
    conn_set_state(c, CONN_CACHE_LOOKUP);
    cache_lookup(c);
    return true;
}

/* ------------------------------------------------------------ cache: responses */

/* The user's [cache] defaults, as the policy takes them. */
static struct cache_policy_opts policy_opts(const struct config *cfg)
{
    struct cache_policy_opts o = {
        .default_ttl_ms = cfg->cache_default_ttl_ms,
        .swr_ms = cfg->cache_stale_while_revalidate_ms,
        .sie_ms = cfg->cache_stale_if_error_ms,
        .store_set_cookie = cfg->cache_store_set_cookie,
    };
    return o;
}

/* A stored entry's flags from the policy's verdict on its response. */
static uint32_t entry_flags(const struct cache_policy_response *pr)
{
    return (pr->must_revalidate ? CACHE_ENTRY_MUST_REVALIDATE : 0) |
           (pr->no_cache ? CACHE_ENTRY_NO_CACHE : 0) | (pr->heuristic ? CACHE_ENTRY_HEURISTIC : 0);
}

/* Appends the header lines of <h> (bytes in <buf>) that a stored response
 * replays: end-to-end ones but framing, Age, Set-Cookie and the tag header
 * named <tag_header>, whatever cache.expose_tags says: it is kept as the
 * entry's tags, and serve_entry() sends it from them only to the instances
 * that expose it. */
static int add_store_lines(struct evbuffer *out, const struct http_head *h, const char *buf,
                           const char *tag_header)
{
    size_t tag_len = strlen(tag_header);
    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->hop || hd->id == HTTP_H_CONTENT_LENGTH || hd->id == HTTP_H_TRANSFER_ENCODING ||
            hd->id == HTTP_H_AGE || hd->id == HTTP_H_SET_COOKIE)
            continue;
        if (hd->name.len == tag_len && strncasecmp(buf + hd->name.off, tag_header, tag_len) == 0)
            continue;
        if (evbuffer_add(out, buf + hd->name.off, hd->name.len) == -1 ||
            evbuffer_add(out, ": ", 2) == -1 ||
            evbuffer_add(out, buf + hd->value.off, hd->value.len) == -1 ||
            evbuffer_add(out, "\r\n", 2) == -1)
            return -1;
    }
    return 0;
}

/* Copies the tag header's values (space-separated tokens) into <st>. */
static void keep_tags(struct conn_store *st, const struct http_head *h, const char *buf, int first)
{
    st->tags_len = 0;
    for (unsigned i = (unsigned)first; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->name.len != h->headers[first].name.len ||
            strncasecmp(buf + hd->name.off, buf + h->headers[first].name.off, hd->name.len) != 0)
            continue;
        if (st->tags_len + hd->value.len + 1 >= sizeof(st->tags))
            break; /* more tags than kept: the first ones still purge */
        if (st->tags_len)
            st->tags[st->tags_len++] = ' ';
        memcpy(st->tags + st->tags_len, buf + hd->value.off, hd->value.len);
        st->tags_len += hd->value.len;
    }
}

/* The URL was changed by an unsafe request: its entries go, here and in
 * Redis, with those of Location / Content-Location on the same origin. */
static void cache_invalidate_url(struct conn *c, const char *url, size_t len)
{
    cache_purge(cache_of(c), CACHE_PURGE_URL, url, len, false);
    if (c->w->redis) /* kept for a replay when Redis cannot take it now */
        purge_invalidate(c->w->shared->purge, c->w->redis, url, len);
    STATS_INC(c->w->stats->cache.invalidations);
}

static void cache_invalidate(struct conn *c, const char *buf)
{
    struct conn_cache *cx = c->ex->cx;
    cache_invalidate_url(c, cx->key, cx->url_len);
    /* the origin: "scheme://host" ends at the third slash of the key */
    const char *slash = memchr(cx->key + 7, '/', cx->url_len > 7 ? cx->url_len - 7 : 0);
    size_t origin_len = slash ? (size_t)(slash - cx->key) : cx->url_len;
    const enum http_header_id ids[] = {HTTP_H_LOCATION, HTTP_H_CONTENT_LOCATION};
    for (size_t i = 0; i < 2; i++) {
        size_t vlen;
        const char *v = http_header_value(&c->ex->resp, buf, ids[i], &vlen);
        if (!v || vlen == 0)
            continue;
        char url[CACHE_POLICY_KEY_MAX];
        size_t n = 0;
        if (v[0] == '/' && !(vlen > 1 && v[1] == '/') && origin_len + vlen < sizeof(url)) {
            memcpy(url, cx->key, origin_len);
            memcpy(url + origin_len, v, vlen);
            n = origin_len + vlen;
        } else if (vlen > origin_len && strncasecmp(v, cx->key, origin_len) == 0 &&
                   v[origin_len] == '/' && vlen < sizeof(url)) {
            memcpy(url, cx->key, origin_len); /* the origin as keyed (lower case) */
            memcpy(url + origin_len, v + origin_len, vlen - origin_len);
            n = vlen;
        }
        if (n && !(n == cx->url_len && memcmp(url, cx->key, n) == 0))
            cache_invalidate_url(c, url, n);
    }
}

/* Remembers for a while that the URL's responses are not storable, so the
 * next requests neither wait on each other nor ask Redis. */
static void cache_mark_pass(struct conn *c)
{
    struct conn_cache *cx = c->ex->cx;
    int64_t now = wall_ms();
    struct cache_entry_parts p = {
        .kind = CACHE_ENTRY_PASS,
        .response_ms = now,
        .last_modified_ms = -1,
        .key = cx->key,
        .key_len = cx->url_len,
    };
    struct cache_entry *e = cache_entry_build(&p);
    if (!e)
        return;
    cache_put(cache_of(c), cx->url_hash, e, now + CONN_CACHE_PASS_MS);
    cache_entry_unref(e);
}

/* Sets up storing the response whose head is <p>, judged storable. */
static void cache_store_begin(struct conn *c, const char *req, const char *p,
                              const struct cache_policy_response *pr, int tag_index)
{
    struct conn_cache *cx = c->ex->cx;
    struct conn_store *st = calloc(1, sizeof(*st)); /* freed by store_free() at its end */
    if (!st)
        return;
    st->pr = *pr;
    st->head = evbuffer_new();
    st->body = evbuffer_new();
    int vlen = cache_policy_vary_names(&c->ex->resp, p, st->vary, sizeof(st->vary));
    if (!st->head || !st->body || vlen < 0 ||
        add_store_lines(st->head, &c->ex->resp, p, cfg_of(c)->cache_tag_header) == -1)
        goto fail;
    st->vary_len = (size_t)vlen;
    if (tag_index >= 0)
        keep_tags(st, &c->ex->resp, p, tag_index);
    size_t elen;
    const char *etag = http_header_value(&c->ex->resp, p, HTTP_H_ETAG, &elen);
    if (etag && elen < sizeof(st->etag)) {
        memcpy(st->etag, etag, elen);
        st->etag_len = elen;
    }
    /* a Vary response is keyed by the request's variant */
    if (st->vary_len) {
        char variant[CACHE_POLICY_VARY_MAX];
        int n = cache_policy_variant(&c->ex->req, req, st->vary, st->vary_len, variant,
                                     sizeof(variant));
        if (n < 0 || !key_room(cx, cx->url_len + 1 + (size_t)n))
            goto fail;
        cx->key[cx->url_len] = '\n';
        memcpy(cx->key + cx->url_len + 1, variant, (size_t)n);
        cx->key_len = cx->url_len + 1 + (size_t)n;
    } else {
        cx->key_len = cx->url_len;
    }
    cx->store = st;
    return;
fail:
    store_free(st);
}

/*
 * Everything the cache does when a clone's final response head <p> came:
 * invalidation after an unsafe method, a 304 that refreshes the entry
 * being validated, stale-if-error, and the storing decision. Writes the
 * Cache-Status line into <line>. Returns true when the cache answered the
 * client itself (the clone's response is then dropped).
 */
static bool cache_response_head(struct conn *c, const char *p, char *line, size_t room)
{
    struct conn_cache *cx = c->ex->cx;
    const struct config *cfg = cfg_of(c);
    int tag_index = -1;

    if (cache_of(c) && cfg->cache_enabled) {
        tag_index =
            http_header_find(&c->ex->resp, p, cfg->cache_tag_header, strlen(cfg->cache_tag_header));
        if (tag_index >= 0 && !cfg->cache_expose_tags)
            for (unsigned i = (unsigned)tag_index; i < c->ex->resp.header_count; i++)
                if (c->ex->resp.headers[i].name.len == c->ex->resp.headers[tag_index].name.len &&
                    strncasecmp(p + c->ex->resp.headers[i].name.off, cfg->cache_tag_header,
                                c->ex->resp.headers[i].name.len) == 0)
                    c->ex->resp.headers[i].hop = 1;
    }
    if (!cx || !cx->active) {
        cache_status_line(c, line, room, false, 0, 0);
        return false;
    }
    unsigned status = c->ex->resp.status;
    if (cx->invalidate) {
        if (status >= 200 && status < 400)
            cache_invalidate(c, p);
        cache_status_line(c, line, room, false, 0, 0);
        return false;
    }
    if (cx->stale && status == 304 && cx->cond[0])
        return cache_refresh(c, p);
    if (cx->stale && status >= 500 && cache_stale_if_error(c, status))
        return true;

    const char *req = (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->ex->req.head_len);
    struct cache_policy_opts opts = policy_opts(cfg);
    struct cache_policy_response pr;
    int64_t now = wall_ms();
    if (!req || !c->head_kept) {
        cx->verdict = CACHE_NOT_METHOD;
        cache_status_line(c, line, room, false, 0, 0);
        return false;
    }
    cache_policy_response(&c->ex->req, req, &cx->rq, &c->ex->resp, p, cx->request_ms, now, &opts,
                          &pr);
    cx->verdict = (uint8_t)pr.verdict;
    /* without Redis, L1 alone must be able to take it */
    uint64_t limit = cfg->cache_max_object_size;
    if (!c->w->redis && cache_l1_max_entry(cache_of(c)) < limit)
        limit = cache_l1_max_entry(cache_of(c));
    bool too_large =
        !c->ex->resp.chunked && c->ex->resp.has_body && c->ex->resp.content_length > limit;
    if (pr.verdict == CACHE_STORE && too_large)
        cx->verdict = CACHE_NOT_TOO_LARGE;
    else if (pr.verdict == CACHE_STORE && http_body_until_close(&c->ex->resp))
        cx->verdict = CACHE_NOT_CLOSE_DELIMITED;
    else if (pr.verdict == CACHE_STORE && c->decode_body)
        cx->verdict = CACHE_NOT_DECODED;
    else if (pr.verdict == CACHE_STORE)
        cache_store_begin(c, req, p, &pr, tag_index);
    if (!cx->store) {
        if (cx->verdict != CACHE_STORE)
            STATS_INC(c->w->stats->cache.not_stored);
        switch (pr.verdict) {
        case CACHE_NOT_NO_STORE:
        case CACHE_NOT_PRIVATE:
        case CACHE_NOT_SET_COOKIE:
        case CACHE_NOT_VARY_STAR:
        case CACHE_NOT_VARY_FORWARDED:
        case CACHE_NOT_STATUS:
        case CACHE_NOT_NO_LIFETIME:
            /* a 304 or 206 answers this request's own conditions, not the URL */
            if (!(cx->rq.cc.flags & CACHE_CC_NO_STORE) && status != 304 && status != 206 &&
                !cx->had_pass)
                cache_mark_pass(c);
            break;
        default:
            break;
        }
        /* nothing will be stored: whoever waits forwards on their own */
        cache_fill_end(cache_of(c), cx->fill, false);
        cx->fill = NULL;
    }
    int64_t ttl = (pr.freshness_ms - pr.initial_age_ms) / 1000;
    cache_status_line(c, line, room, cx->store != NULL, ttl, 0);
    return false;
}

/* The body of a response being stored grew by what the parser appended;
 * past max_object_size storing stops (the response goes on streaming). */
static void cache_store_check(struct conn *c)
{
    struct conn_cache *cx = c->ex->cx;
    if (!cx || !cx->store)
        return;
    size_t limit = cfg_of(c)->cache_max_object_size;
    if (!c->w->redis && cache_l1_max_entry(cache_of(c)) < limit)
        limit = cache_l1_max_entry(cache_of(c)); /* L1 alone must take it */
    if (evbuffer_get_length(cx->store->body) <= limit)
        return;
    STATS_INC(c->w->stats->cache.stores_aborted);
    store_free(cx->store);
    cx->store = NULL;
    cache_fill_end(cache_of(c), cx->fill, false);
    cx->fill = NULL;
}

/* A fill whose entry went to Redis only. It ends when Redis answers the
 * write, so that the waiters it wakes, on any worker, find the entry there. */
struct conn_fill_ack {
    struct cache *cache;     /* borrowed: outlives every worker */
    struct cache_fill *fill; /* owned: ended by conn_on_redis_stored() */
};

/* Redis answered the write of a fill's entry, or failed to in time. */
static void conn_on_redis_stored(void *arg, bool stored)
{
    struct conn_fill_ack *ack = arg;
    cache_fill_end(ack->cache, ack->fill, stored);
    free(ack);
}

/*
 * Puts <e> into L1 and Redis; for a Vary variant, the URL's Vary record too,
 * which lives as long as the longest-lived variant it leads to. Sets
 * cx->stored when <e> is in L1 or its Redis write went out. When it is in
 * Redis only, the fill (cx->fill) is handed to that write's answer.
 */
static void cache_put_entry(struct conn *c, struct cache_entry *e, const struct conn_store *st,
                            int64_t keep, int64_t now)
{
    struct conn_cache *cx = c->ex->cx;
    struct cache *cache = cache_of(c);
    char rkey[CACHE_REDIS_KEY_LEN + 1], skey[CACHE_REDIS_KEY_LEN + 4];
    size_t sl = 0;
    bool record_sent = true; /* a plain entry needs no record */

    if (st && st->vary_len) {
        /* its times state its own lifetime (what Redis readers go by), not
         * the variant's: a later expiry in L1 or Redis is kept */
        struct cache_entry_parts vp = {
            .kind = CACHE_ENTRY_VARY,
            .status = e->status,
            .response_ms = now,
            .freshness_ms = keep,
            .last_modified_ms = -1,
            .key = cx->key,
            .key_len = cx->url_len,
            .vary = st->vary,
            .vary_len = st->vary_len,
        };
        struct cache_entry *ve = cache_entry_build(&vp);
        record_sent = false;
        if (ve) {
            cache_put_longer(cache, cx->url_hash, ve, now + keep);
            if (c->w->redis) {
                size_t rl = cache_redis_key("", cx->key, cx->url_len, rkey);
                record_sent = store_redis_set_longest(c->w->redis, rkey, rl, ve->blob, ve->blob_len,
                                                      (uint64_t)keep) == 0;
            }
            cache_entry_unref(ve);
        }
        sl = cache_redis_key("vs:", cx->key, cx->url_len, skey);
    }
    bool in_l1 = cache_put(cache, cx->url_hash, e, now + keep);
    bool in_redis = false;
    cache_refresh_done(cache, cache_hash(e->key, e->key_len)); /* a refresh of it may go again */
    if (c->w->redis) {
        /* the indexes that find it again: the URL's variants, its tags */
        char tag_keys[PURGE_MAX_TAGS][PURGE_TAG_KEY_MAX];
        const char *index_keys[PURGE_MAX_TAGS + 1];
        size_t index_lens[PURGE_MAX_TAGS + 1];
        unsigned n = 0, tags = 0;
        if (sl) {
            index_keys[n] = skey;
            index_lens[n++] = sl;
        }
        const char *t = e->tags, *end = e->tags + e->tags_len;
        while (t < end && tags < PURGE_MAX_TAGS) {
            while (t < end && (*t == ' ' || *t == ','))
                t++;
            const char *start = t;
            while (t < end && *t != ' ' && *t != ',')
                t++;
            size_t tl = purge_tag_key(start, (size_t)(t - start), tag_keys[tags]);
            if (tl) {
                index_keys[n] = tag_keys[tags++];
                index_lens[n++] = tl;
            }
        }
        /* waiters that L1 cannot serve are woken once Redis has the entry */
        struct conn_fill_ack *ack = NULL;
        if (!in_l1 && cx->fill && record_sent) {
            ack = malloc(sizeof(*ack)); /* freed by conn_on_redis_stored() */
            if (ack) {
                ack->cache = cache;
                ack->fill = cx->fill;
            }
        }
        size_t rl = cache_redis_key("", e->key, e->key_len, rkey);
        if (store_redis_set(c->w->redis, rkey, rl, e->blob, e->blob_len, (uint64_t)keep, index_keys,
                            index_lens, n, ack ? conn_on_redis_stored : NULL, ack) == 0) {
            in_redis = record_sent;
            if (ack)
                cx->fill = NULL; /* ended when Redis answers */
        } else {
            free(ack);
        }
        purge_announce_store(c->w->redis, cx->key, cx->url_len);
    }
    cx->stored = in_l1 || in_redis;
}

/* The response being stored ended whole: store it, wake the waiters. */
static void cache_store_finish(struct conn *c)
{
    struct conn_cache *cx = c->ex->cx;
    if (!cx || !cx->store)
        return;
    struct conn_store *st = cx->store;
    cx->store = NULL;
    int64_t now = wall_ms();
    const struct cache_policy_response *pr = &st->pr;
    struct cache_entry_parts parts = {
        .kind = CACHE_ENTRY_RESPONSE,
        .status = (uint16_t)c->ex->resp.status,
        .flags = entry_flags(pr),
        .response_ms = now,
        .initial_age_ms = pr->initial_age_ms,
        .freshness_ms = pr->freshness_ms,
        .swr_ms = pr->swr_ms,
        .sie_ms = pr->sie_ms,
        .last_modified_ms = pr->last_modified_ms,
        .key = cx->key,
        .key_len = cx->key_len,
        .head = (const char *)evbuffer_pullup(st->head, -1),
        .head_len = evbuffer_get_length(st->head),
        .etag = st->etag,
        .etag_len = st->etag_len,
        .vary = st->vary,
        .vary_len = st->vary_len,
        .tags = st->tags,
        .tags_len = st->tags_len,
        .body_buf = st->body,
    };
    struct cache_entry *e = parts.head || !parts.head_len ? cache_entry_build(&parts) : NULL;
    int64_t keep = e ? entry_keep_ms(e, now) : 0;
    if (e && keep > 0) {
        cache_put_entry(c, e, st, keep, now);
        STATS_INC(c->w->stats->cache.stores);
        STATS_ADD(c->w->stats->cache.store_bytes, e->body_len);
    }
    cache_entry_unref(e);
    store_free(st);
    cache_fill_end(cache_of(c), cx->fill, cx->stored);
    cx->fill = NULL;
}

/* The clone's response is not wanted (the cache answers instead): give the
 * connection back when the response had no body to read, else close it. */
static void drop_clone_response(struct conn *c)
{
    bool bodiless = c->ex->resp.status == 304 || c->ex->resp.skip_body;
    bool reusable = bodiless && c->ex->resp.keep_alive && c->req_done;
    evbuffer_drain(c->up->s.in, c->ex->resp.head_len);
    c->upstream_time = seconds_since(c->t_upstream);
    drop_upstream(c, reusable && evbuffer_get_length(c->up->s.in) == 0);
}

/*
 * A 304 answered the validation of cx->stale: the stored head is updated
 * with the 304's fields (RFC 9111 4.3.4), the entry stored again with new
 * times, and the client answered from it. Returns true (answered).
 */
/* The Set-Cookie lines of <h> (bytes in <buf>) in a new buffer the caller
 * frees, or NULL when it has none (or memory ran out: the cookies are then
 * lost, the answer is not). */
static struct evbuffer *set_cookie_lines(const struct http_head *h, const char *buf)
{
    if (h->index[HTTP_H_SET_COOKIE] < 0)
        return NULL;
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return NULL;
    for (unsigned i = (unsigned)h->index[HTTP_H_SET_COOKIE]; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->id != HTTP_H_SET_COOKIE)
            continue;
        if (evbuffer_add(out, "Set-Cookie: ", 12) == -1 ||
            evbuffer_add(out, buf + hd->value.off, hd->value.len) == -1 ||
            evbuffer_add(out, "\r\n", 2) == -1) {
            evbuffer_free(out);
            return NULL;
        }
    }
    return out;
}

static const char *cookies_of(struct evbuffer *cookies)
{
    return cookies ? (const char *)evbuffer_pullup(cookies, -1) : NULL;
}

static bool cache_refresh(struct conn *c, const char *p)
{
    struct conn_cache *cx = c->ex->cx;
    const struct config *cfg = cfg_of(c);
    struct cache_entry *old = cx->stale;
    struct evbuffer *merged = evbuffer_new();
    struct http_head *h = malloc(sizeof(*h)); /* freed below */
    struct cache_entry *e = NULL;
    int64_t now = wall_ms();
    /* the 304's Set-Cookie lines: for this client, never for the entry */
    struct evbuffer *cookies = set_cookie_lines(&c->ex->resp, p); /* freed below */
    size_t cookies_len = cookies ? evbuffer_get_length(cookies) : 0;

    bool dropped = false;
    STATS_INC(c->w->stats->cache.revalidated);
    if (!merged || !h)
        goto serve_old;
    /* the old lines the 304 does not replace, then the 304's own */
    evbuffer_add_printf(merged, "HTTP/1.1 %u OK\r\n", old->status);
    const char *q = old->head, *end = old->head + old->head_len;
    while (q < end) {
        const char *eol = memchr(q, '\n', (size_t)(end - q));
        size_t line = eol ? (size_t)(eol - q + 1) : (size_t)(end - q);
        const char *colon = memchr(q, ':', line);
        if (!colon || http_header_find(&c->ex->resp, p, q, (size_t)(colon - q)) < 0)
            evbuffer_add(merged, q, line);
        q += line;
    }
    size_t head_start = 0;
    {
        /* the stored lines start after the status line */
        struct evbuffer_ptr ptr = evbuffer_search(merged, "\r\n", 2, NULL);
        head_start = ptr.pos >= 0 ? (size_t)ptr.pos + 2 : 0;
    }
    if (add_store_lines(merged, &c->ex->resp, p, cfg->cache_tag_header) == -1)
        goto serve_old;
    size_t head_end = evbuffer_get_length(merged);
    size_t alen;
    const char *age = http_header_value(&c->ex->resp, p, HTTP_H_AGE, &alen);
    if (age)
        evbuffer_add_printf(merged, "Age: %.*s\r\n", (int)alen, age);
    evbuffer_add(merged, "\r\n", 2);
    /* the 304's head (at <p>) is not read after this */
    drop_clone_response(c);
    dropped = true;
    size_t total = evbuffer_get_length(merged);
    const char *m = (const char *)evbuffer_pullup(merged, -1);
    http_head_init(h, true, total + 1, 0, 0);
    if (!m || http_head_parse(h, m, total) != HTTP_PARSE_DONE)
        goto serve_old;
    const char *req = (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->ex->req.head_len);
    struct cache_policy_opts opts = policy_opts(cfg);
    opts.refresh = true; /* a HEAD's 304 refreshes the GET entry as well */
    struct cache_policy_response pr;
    if (!req)
        goto serve_old;
    cache_policy_response(&c->ex->req, req, &cx->rq, h, m, cx->request_ms, now, &opts, &pr);
    size_t etag_len;
    const char *etag = http_header_value(h, m, HTTP_H_ETAG, &etag_len);
    struct cache_entry_parts parts = {
        .kind = CACHE_ENTRY_RESPONSE,
        .status = old->status,
        .flags = entry_flags(&pr),
        .response_ms = now,
        .initial_age_ms = pr.initial_age_ms,
        .freshness_ms = pr.freshness_ms,
        .swr_ms = pr.swr_ms,
        .sie_ms = pr.sie_ms,
        .last_modified_ms = pr.last_modified_ms >= 0 ? pr.last_modified_ms : old->last_modified_ms,
        .key = old->key,
        .key_len = old->key_len,
        .head = m + head_start,
        .head_len = head_end - head_start,
        .etag = etag ? etag : old->etag,
        .etag_len = etag ? etag_len : old->etag_len,
        .vary = old->vary,
        .vary_len = old->vary_len,
        .tags = old->tags,
        .tags_len = old->tags_len,
        .body = old->body,
        .body_len = old->body_len,
    };
    e = cache_entry_build(&parts);
    if (!e)
        goto serve_old;
    int64_t keep = entry_keep_ms(e, now);
    if (pr.verdict == CACHE_STORE && keep > 0 && cx->key_len == e->key_len) {
        struct conn_store vs = {.vary_len = 0};
        if (e->vary_len) {
            memcpy(vs.vary, e->vary, e->vary_len);
            vs.vary_len = e->vary_len;
        }
        cache_put_entry(c, e, &vs, keep, now);
    }
    int64_t age_ms = cache_policy_age_ms(e->initial_age_ms, e->response_ms, now);
    evbuffer_free(merged);
    free(h);
    serve_entry(c, e, age_ms, c->cache_outcome, 304, cookies_of(cookies), cookies_len);
    cache_entry_unref(e);
    if (cookies)
        evbuffer_free(cookies);
    return true;
serve_old:
    if (!dropped)
        drop_clone_response(c);
    if (merged)
        evbuffer_free(merged);
    free(h);
    cache_entry_ref(old); /* serve_entry() ends the request, which drops cx->stale */
    serve_entry(c, old, cache_policy_age_ms(old->initial_age_ms, old->response_ms, now),
                c->cache_outcome, 304, cookies_of(cookies), cookies_len);
    cache_entry_unref(old);
    if (cookies)
        evbuffer_free(cookies);
    return true;
}

/* The clone failed (5xx from it, or our own 502/503/504) while a stale
 * entry was at hand: serve it when its stale-if-error window allows. */
static bool cache_stale_if_error(struct conn *c, unsigned status)
{
    struct conn_cache *cx = c->ex->cx;
    if (!cx || !cx->active || !cx->stale)
        return false;
    struct cache_policy_stored st;
    stored_facts(cx->stale, &st);
    int64_t now = wall_ms();
    if (!cache_policy_stale_if_error(&st, &cx->rq, now))
        return false;
    if (c->up && c->ex->resp.head_done)
        drop_clone_response(c);
    STATS_INC(c->w->stats->cache.stale_served);
    struct cache_entry *e = cache_entry_ref(cx->stale); /* serve_entry() ends the request */
    serve_entry(c, e, cache_policy_age_ms(st.initial_age_ms, st.response_ms, now), STATS_CS_STALE,
                status, NULL, 0);
    cache_entry_unref(e);
    return true;
}

/* ------------------------------------------------------------ cache: refresh behind */

/* Reads and drops what a background refresh answers; closes at its end. */
static void refresh_sink_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct event *ev = arg;
    char buf[16384];
    (void)what;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        break; /* end of the answer, or an error */
    }
    event_free(ev);
    close(fd);
}

/* Whether a request header goes into a background refresh. */
static bool refresh_keeps(const struct http_header *hd)
{
    switch (hd->id) {
    case HTTP_H_CACHE_CONTROL:
    case HTTP_H_PRAGMA:
    case HTTP_H_IF_NONE_MATCH:
    case HTTP_H_IF_MODIFIED_SINCE:
    case HTTP_H_IF_MATCH:
    case HTTP_H_IF_UNMODIFIED_SINCE:
    case HTTP_H_IF_RANGE:
    case HTTP_H_RANGE:
    case HTTP_H_EXPECT:
    case HTTP_H_CONTENT_LENGTH:
    case HTTP_H_TRANSFER_ENCODING:
        return false;
    case HTTP_H_HOST:
        return true; /* hop only beside an absolute-form target, which the replay keeps */
    default:
        return !hd->hop;
    }
}

/*
 * stale-while-revalidate: <e> was served stale; once per entry, the same
 * request is replayed in the background, through a socket pair into this
 * worker as if a client sent it, with "Cache-Control: no-cache" so it
 * validates (or refetches) and stores the result. Its answer is dropped.
 */
static void cache_refresh_behind(struct conn *c, struct cache_entry *e)
{
    struct worker *w = c->w;
    /* one refresh per key at a time, however many stale hits (and copies
     * of the entry read from Redis) ask: the claim ends when the answer is
     * stored, or after the longest a refresh can take */
    uint64_t key_hash = cache_hash(e->key, e->key_len);
    int64_t now = wall_ms();
    const struct config *cfg = cfg_of(c);
    if (!cache_refresh_claim(cache_of(c), key_hash, now,
                             now + cfg->connect_timeout_ms + cfg->response_timeout_ms))
        return;
    const char *req = (const char *)evbuffer_pullup(c->cs.in, (ev_ssize_t)c->ex->req.head_len);
    struct evbuffer *head = evbuffer_new();
    int sv[2] = {-1, -1};
    if (!req || !head)
        goto fail;
    evbuffer_add_printf(head, "GET %.*s HTTP/1.1\r\n", (int)c->ex->req.target.len,
                        req + c->ex->req.target.off);
    for (unsigned i = 0; i < c->ex->req.header_count; i++) {
        const struct http_header *hd = &c->ex->req.headers[i];
        if (!refresh_keeps(hd))
            continue;
        evbuffer_add_printf(head, "%.*s: %.*s\r\n", (int)hd->name.len, req + hd->name.off,
                            (int)hd->value.len, req + hd->value.off);
    }
    evbuffer_add_printf(head, "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == -1)
        goto fail;
    size_t len = evbuffer_get_length(head);
    if (write(sv[1], evbuffer_pullup(head, -1), len) != (ssize_t)len)
        goto fail; /* a fresh socket pair takes a request head whole */
    struct event *sink = event_new(w->base, sv[1], EV_READ | EV_PERSIST, refresh_sink_on_read,
                                   event_self_cbarg()); /* freed by refresh_sink_on_read() */
    if (!sink || event_add(sink, NULL) == -1) {
        if (sink)
            event_free(sink);
        goto fail;
    }
    evbuffer_free(head);
    STATS_INC(w->stats->cache.background_refreshes);
    struct sockaddr_in self = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    __atomic_add_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED); /* as the listener does */
    conn_start(w, sv[0], (const struct sockaddr *)&self, NULL, c->https);
    return;
fail:
    log_warn("cache: cannot start a background refresh");
    if (head)
        evbuffer_free(head);
    if (sv[0] != -1)
        close(sv[0]);
    if (sv[1] != -1)
        close(sv[1]);
    cache_refresh_done(cache_of(c), key_hash);
}

/* Waited cache.lock_timeout on another request's fill: forward alone. */
static void cache_wait_timeout(struct conn *c)
{
    cache_waiter_cancel(cache_of(c), &c->ex->cx->waiter);
    STATS_INC(c->w->stats->cache.lock_timeouts);
    c->ex->cx->no_coalesce = true;
    cache_forward(c, STATS_CS_MISS);
}

/* ------------------------------------------------------------ client events */

/* The client's output fell to the low mark (or empty, when closing). */
static void conn_on_drained(struct stream *st, void *arg)
{
    struct conn *c = arg;

    if (c->state == CONN_CLOSING) {
        if (c->lingering)
            return; /* everything went; the end comes from the client or the timer */
        if (evbuffer_get_length(st->out) == 0)
            close_when_flushed(c, "flushed");
        else
            stream_notify_drained(st, 0);
        return;
    }
    if (c->state == CONN_TUNNEL && c->up) {
        stream_read_enable(&c->up->s, true);
        return;
    }
    if (c->up_read_paused && c->up) {
        c->up_read_paused = false;
        stream_read_enable(&c->up->s, true);
        conn_on_up_read(&c->up->s, c); /* what waits may be a head or a body */
        return;
    }
    if (c->output_wait && c->state == CONN_IDLE) {
        c->output_wait = false;
        process_input(c);
    }
}

static void conn_on_event(struct stream *st, enum stream_event what, void *arg)
{
    struct conn *c = arg;
    (void)st;

    if (what == STREAM_EV_READ_TIMEOUT || what == STREAM_EV_WRITE_TIMEOUT) {
        if (what == STREAM_EV_READ_TIMEOUT && c->state == CONN_FORWARDING && !c->req_done) {
            /* no answer begun yet: the client hears why, and the log has it */
            if (!c->resp_started) {
                send_error(c, 408, false, "request body stalled");
                return;
            }
            conn_close(c, "request body stalled");
            return;
        }
        conn_close(c, "client not reading");
        return;
    }
    if (what == STREAM_EV_EOF) {
        c->client_eof = true;
        switch (c->state) {
        case CONN_IDLE:
            /* a half-close after the last request: its answer goes first */
            if (evbuffer_get_length(c->cs.out) > 0) {
                close_after_flush(c, "client closed");
                return;
            }
            conn_close(c, "client closed");
            return;
        case CONN_CLOSING:
            conn_close(c, "client closed");
            return;
        case CONN_READING_HEAD:
            /* the rest of a pipelined batch may already be here */
            process_input(c);
            return;
        case CONN_CACHE_LOOKUP:
        case CONN_CACHE_WAIT:
            c->keep_alive = false; /* answer it, then close */
            return;
        case CONN_FORWARDING:
            if (!c->req_done && !c->head_kept) {
                conn_close(c, "client closed mid-body");
                return;
            }
            /* a half-close after the request: answer it, then close */
            c->keep_alive = false;
            return;
        case CONN_TUNNEL:
            /* a half-close: pass it on once the clone has every byte, and
             * keep relaying what the clone still says until it closes */
            if (!c->up) {
                conn_close(c, "tunnel closed by the client");
                return;
            }
            if (evbuffer_get_length(c->cs.in))
                evbuffer_add_buffer(c->up->s.out, c->cs.in);
            stream_flush(&c->up->s);
            c->tunnel_half_closed = true;
            if (evbuffer_get_length(c->up->s.out) == 0)
                shutdown(c->up->s.fd, SHUT_WR);
            else
                stream_notify_drained(&c->up->s, 0);
            return;
        }
        return;
    }
    conn_close(c, "client connection error");
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    (void)fd;
    (void)what;
    if (c->resume_input) {
        /* not the timer running out: send_error() asked for the next
         * request. Running made the timer non-pending: arm it again for
         * the deadline in force, if any. */
        c->resume_input = false;
        c->timer_armed = false;
        timer_rearm(c);
        process_input(c);
        return;
    }
    c->timer_armed = false;
    int64_t now = clock_mono_us();
    if (c->release_at_us && now + 1000 >= c->release_at_us) {
        /* idle for CONN_TLS_RELEASE_US: the record buffers (some 34 KiB)
         * are made again by the next request */
        c->release_at_us = 0;
        if (c->state == CONN_IDLE && !c->ex && evbuffer_get_length(c->cs.in) == 0 &&
            evbuffer_get_length(c->cs.out) == 0)
            stream_release_buffers(&c->cs);
    }
    if (c->deadline_us == 0 || now + 1000 < c->deadline_us) {
        timer_rearm(c);
        return;
    }
    c->deadline_us = 0;
    if (c->state == CONN_READING_HEAD) {
        c->keep_alive = false;
        send_error(c, 408, false, "request head not received in time");
        return;
    }
    if (c->state == CONN_IDLE && c->tls && !c->cs.tls_done) {
        /* a handshake that stalled: header_timeout applies to it */
        tls_count_timeout();
        conn_close(c, "TLS handshake not finished in time");
    } else if (c->state == CONN_IDLE && c->handshake_deadline) {
        /* the handshake ended in time and no request came yet: the
         * connection is idle, counted from its start */
        c->handshake_deadline = false;
        deadline_after_ms(c, c->t_start, cfg_of(c)->idle_timeout_ms);
    } else if (c->state == CONN_IDLE) {
        conn_close(c, "idle timeout");
    } else if (c->state == CONN_CACHE_WAIT)
        cache_wait_timeout(c);
    else if (c->state == CONN_CLOSING && c->lingering)
        conn_close(c, "client still sending after its last answer");
    else if (c->state == CONN_TUNNEL) {
        int64_t until = c->tunnel_seen_us + (int64_t)cfg_of(c)->tunnel_timeout_ms * 1000;
        if (now + 1000 < until)
            deadline_set(c, until); /* bytes came since it was armed */
        else
            conn_close(c, "tunnel idle for tunnel_timeout");
    }
}

/* ------------------------------------------------------------ public */

/* Plain HTTP on a TLS port: a short answer in plain HTTP, then close.
 * Returns true when that was the case (the socket is closed). */
static bool refuse_plaintext(int fd)
{
    unsigned char peek[8];
    ssize_t n = recv(fd, peek, sizeof(peek), MSG_PEEK | MSG_DONTWAIT);
    if (n <= 0 || !tls_looks_like_plaintext(peek, (size_t)n))
        return false;
    static const char answer[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                 "Content-Length: 33\r\nConnection: close\r\n\r\n"
                                 "This port speaks HTTPS, not HTTP\n";
    if (send(fd, answer, sizeof(answer) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) == -1)
        log_debug("%s: %s", __func__, strerror(errno));
    tls_count_failure(true);
    return true;
}

/* Writes <a> as dotted decimal into <out> (room for INET_ADDRSTRLEN): what
 * inet_ntop() writes, without its printf. */
static void ipv4_text(const struct in_addr *a, char *out)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr;
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : '\0';
    }
}

void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, struct tls_server *tls)
{
    conn_start(w, fd, sa, tls, tls != NULL);
}

/* Sets up a connection on <fd>; <https> without <tls> is a background
 * refresh of an HTTPS request (same keys as the request it refreshes). */
static void conn_start(struct worker *w, int fd, const struct sockaddr *sa, struct tls_server *tls,
                       bool https)
{
    if (tls && refuse_plaintext(fd)) {
        close(fd);
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
        return;
    }
    /* TCP_NODELAY comes from the listening socket (worker.c); a background
     * refresh's socket pair has no Nagle to turn off */

    struct conn *c = conn_alloc(); /* given back by conn_close() */
    if (!c) {
        log_warn("accept: cannot allocate a connection");
        close(fd);
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
        return;
    }
    c->w = w;
    c->server = -1;
    c->server_id = -1;
    STATS_INC(w->stats->connections_total);
    STATS_INC(w->stats->connections_open);
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], c->client_ip, sizeof(c->client_ip));
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, c->client_ip, sizeof(c->client_ip));
    } else {
        ipv4_text(&((const struct sockaddr_in *)sa)->sin_addr, c->client_ip);
    }
    if (stream_init(&c->cs, w->base, fd) == -1) {
        log_warnx("accept: cannot allocate buffers");
        close(fd);
        conn_free(c);
        /* counted by the listener and above, never opened after all */
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
        STATS_DEC(w->stats->connections_open);
        return;
    }
    c->https = https;
    if (tls) {
        SSL *ssl = tls_server_ssl(tls);
        if (!ssl || stream_start_tls(&c->cs, ssl, true) == -1) {
            log_warnx("accept: cannot set up TLS");
            stream_close(&c->cs);
            conn_free(c);
            __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
            STATS_DEC(w->stats->connections_open);
            return;
        }
        c->tls = tls_server_ref(tls);
    }
    const struct config *cfg = w->cfg;
    event_assign(&c->timer, w->base, -1, 0, conn_on_timer, c);
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->conn_count++;

    stream_set_callbacks(&c->cs, conn_on_read, conn_on_drained, conn_on_event, c);
    c->cs.read_high = CONN_BUF_HIGH;
    stream_set_timeouts(&c->cs, NULL, w->idle_tv);
    conn_set_state(c, CONN_IDLE);
    /* a TLS handshake has header_timeout to finish, like a request head */
    c->t_start = clock_mono_us();
    c->handshake_deadline = tls != NULL;
    deadline_after_ms(c, c->t_start, tls ? cfg->header_timeout_ms : cfg->idle_timeout_ms);
    /* the listener defers accepting until the request arrives: read it now */
    stream_read_start(&c->cs);
}

void conn_drain_all(struct worker *w)
{
    struct conn *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state != CONN_IDLE) {
            c->keep_alive = false;
        } else if (evbuffer_get_length(c->cs.out) > 0) {
            /* answers still leaving (a pipelined request may wait behind
             * them, unanswered: the close tells the client to ask again) */
            close_after_flush(c, "draining");
        } else {
            conn_close(c, "draining");
        }
    }
}

void conn_close_all(struct worker *w)
{
    struct conn *c;
    while ((c = TAILQ_FIRST(&w->conns)) != NULL)
        conn_close(c, "shutting down");
    while (spare_count > 0)
        conn_free(spare[--spare_count]);
    while (spare_ex_count > 0)
        exchange_free(spare_ex[--spare_ex_count]);
}
