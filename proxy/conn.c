/*
 * conn: a client connection and the exchange it drives with a clone.
 *
 * Owns its client stream, its timer, both parsed heads (request and the
 * current response) and, during an exchange, the upstream connection it
 * acquired (given back with upstream_release() when the exchange ends).
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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include "http.h"
#include "log.h"
#include "stats.h"
#include "stream.h"
#include "upstream.h"
#include "worker.h"

#define CONN_BUF_HIGH      (256 * 1024) /* stop reading a side past this many buffered bytes */
#define CONN_BUF_LOW       (64 * 1024)  /* resume when the other side drained below this */
#define CONN_RESP_HEAD_MAX (64 * 1024)  /* a clone's response head larger than this: 502 */
#define CONN_PEEK_VECS     16           /* evbuffer chains framed per parser pass */
#define CONN_LOG_TARGET    512          /* request target bytes kept for the access log */
#define CONN_LOG_FIELD     128          /* referer / user agent bytes kept for the log */

enum conn_state {
    CONN_IDLE = 0,         /* between requests: waiting for a first byte (idle timer) */
    CONN_READING_HEAD = 1, /* part of a request head is here (header timer) */
    CONN_FORWARDING = 2,   /* an exchange with a clone is under way */
    CONN_TUNNEL = 3,       /* upgraded: bytes relayed both ways until one side closes */
    CONN_CLOSING = 4,      /* the last bytes are being flushed, then close */
};

static const char *const state_names[] = {"idle", "reading-head", "forwarding", "tunnel",
                                          "closing"};

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

struct conn {
    struct worker *w;                 /* borrowed; outlives the conn */
    struct stream cs;                 /* client socket and buffers; closed in conn_close() */
    struct event timer;               /* header / idle timer; deleted in conn_close() */
    enum conn_state state;            /* see conn_set_state() */
    char client_ip[INET6_ADDRSTRLEN]; /* peer address text */
    TAILQ_ENTRY(conn) link;           /* in w->conns */

    /* the exchange in progress */
    struct upstream_conn *up; /* owned while set; upstream_release() gives it back */
    int server;               /* index of the clone in the worker's pool, -1 none */
    uint64_t tried;           /* bit i: clone i was tried for this request */
    unsigned attempts;        /* connections tried for this request */
    bool req_done;            /* the request, body included, went to the clone */
    bool head_kept;           /* request head (and body) still at the front of the input */
    bool resp_started;        /* the response head went to the client */
    bool resp_bytes;          /* the clone sent at least one byte */
    bool keep_alive;          /* the connection goes on after this response */
    bool decode_body;         /* chunked response de-chunked for an HTTP/1.0 client */
    bool client_eof;          /* the client closed its side */
    bool client_read_paused;  /* client reading stopped for backpressure */
    bool up_read_paused;      /* clone reading stopped for backpressure */
    unsigned status;          /* status sent to the client, for the log */
    uint64_t bytes_sent;      /* response body bytes sent, for the log */
    int64_t t_start;          /* us, monotonic: first byte of the request */
    int64_t t_upstream;       /* us, monotonic: request sent to the clone */
    double upstream_time;     /* seconds, -1 when no clone answered */
    char upstream_name[CONFIG_ADDR_TEXT]; /* clone of this exchange, "" when none */
    int server_id;                        /* stable id of that clone (stats), -1 none */
    int64_t deadline_us;                  /* idle or header deadline, monotonic us; 0 none */
    int64_t timer_expiry_us;              /* when the armed timer fires */
    bool timer_armed;                     /* <timer> is pending */
    bool resume_input;                    /* process_input() on the next loop turn */
    bool tunnel_half_closed;              /* the client closed its side of a tunnel */
    uint64_t bytes_read_mark;             /* cs.bytes_read already counted */
    uint64_t bytes_written_mark;          /* cs.bytes_written already counted */
    int stale_server;                     /* clone whose pooled connection went stale, -1 none */
    struct conn_log_fields log;           /* filled only while the access log is on */
    struct http_head req;                 /* current request head; reset per request */
    struct http_head resp;                /* current response head; reset per response */
};

static void conn_close(struct conn *c, const char *why);
static void process_input(struct conn *c);
static void dispatch(struct conn *c);
static void pump_response_body(struct conn *c);
static void conn_on_read(struct stream *st, void *arg);

/* ------------------------------------------------------------ small helpers */

static void conn_set_state(struct conn *c, enum conn_state next)
{
    assert(next >= CONN_IDLE && next <= CONN_CLOSING);
    log_debug("%s: %s %s -> %s", __func__, c->client_ip, state_names[c->state], state_names[next]);
    c->state = next;
}

static const struct config *cfg_of(const struct conn *c)
{
    return c->w->cfg;
}

/* Monotonic microseconds (vDSO, no system call). */
static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double seconds_since(int64_t since_us)
{
    return (double)(now_us() - since_us) / 1e6;
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
    struct conn_log_fields *l = &c->log;
    const struct http_head *h = &c->req;
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
    int64_t total_us = now_us() - c->t_start;
    count_bytes(c, &in, &out);
    stats_record_request(sw, c->status, in, out, total_us > 0 ? (uint64_t)total_us : 0,
                         c->upstream_time >= 0 ? c->server_id : -1,
                         c->upstream_time >= 0 ? (uint64_t)(c->upstream_time * 1e6) : 0,
                         (int64_t)time(NULL));
    if (!log_access_enabled() || c->status == 0)
        return;
    const struct conn_log_fields *l = &c->log;
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
        .upstream = c->upstream_name[0] ? c->upstream_name : NULL,
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
 * nothing. Keep-alive requests so cost no timer operation at all.
 */
static void deadline_set(struct conn *c, int64_t deadline_us)
{
    c->deadline_us = deadline_us;
    if (c->timer_armed && c->timer_expiry_us <= deadline_us)
        return;
    int64_t left = deadline_us - now_us();
    if (left < 0)
        left = 0;
    struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
    event_add(&c->timer, &tv);
    c->timer_armed = true;
    c->timer_expiry_us = deadline_us;
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

static void conn_close(struct conn *c, const char *why)
{
    log_debug("%s: %s closed: %s", __func__, c->client_ip, why);
    drop_upstream(c, false);
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
    free(c);
}

/* The response already began and cannot be finished: log the request as it
 * went (status sent, bytes so far) and close, which the client sees as a
 * truncated answer. */
static void abort_response(struct conn *c, const char *why)
{
    c->upstream_time = seconds_since(c->t_upstream);
    request_done(c);
    conn_close(c, why);
}

/* Stops reading and closes once the output is flushed. */
static void close_after_flush(struct conn *c, const char *why)
{
    conn_set_state(c, CONN_CLOSING);
    deadline_clear(c);
    drop_upstream(c, false);
    if (evbuffer_get_length(c->cs.out) == 0) {
        conn_close(c, why);
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
    keep = keep && c->keep_alive && !c->w->draining;
    /* 503 says when to come back; 405 must say what is allowed (RFC 9110) */
    const char *extra = status == 503   ? "Retry-After: 1\r\n"
                        : status == 405 ? "Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, "
                                          "TRACE\r\n"
                                        : NULL;
    if (http_error_response(status, keep, extra, out) == -1) {
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
        evbuffer_drain(c->cs.in, c->req.head_len);
        c->head_kept = false;
    }
    http_head_reset(&c->req);
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
 * only the payload to <to> and drops the framing). Sets *<moved> to the
 * bytes taken from <from>. Returns the parser's verdict.
 */
static enum http_parse frame_and_move(struct http_head *h, struct evbuffer *from,
                                      struct evbuffer *to, bool decode, size_t *moved)
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
            r = http_body_parse(h, "", 0, &used, decode ? to : NULL);
            break;
        }
        if (n > CONN_PEEK_VECS)
            n = CONN_PEEK_VECS;
        for (int i = 0; i < n; i++) {
            size_t used;
            r = http_body_parse(h, vec[i].iov_base, vec[i].iov_len, &used, decode ? to : NULL);
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

    enum http_parse r = frame_and_move(&c->req, in, out, false, &moved);
    if (moved)
        stream_flush(&c->up->s);
    if (r == HTTP_PARSE_ERROR) {
        unsigned status = http_error_status(c->req.error);
        log_info("%s: request body refused: %s", c->client_ip, c->req.error_text);
        drop_upstream(c, false);
        if (c->resp_started) {
            abort_response(c, "bad request body after the response began");
            return;
        }
        c->keep_alive = false;
        send_error(c, status, false, c->req.error_text);
        return;
    }
    if (r != HTTP_PARSE_AGAIN) {
        c->req_done = true;
        stream_set_timeouts(&c->cs, NULL, c->w->idle_tv);
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
        tunnel_move(&c->cs, &c->up->s);
        break;
    case CONN_CLOSING:
        evbuffer_drain(c->cs.in, evbuffer_get_length(c->cs.in));
        stream_read_resume(&c->cs);
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
    c->attempts = 0;
    c->req_done = false;
    c->resp_started = false;
    c->resp_bytes = false;
    c->decode_body = false;
    c->status = 0;
    c->bytes_sent = 0;
    c->upstream_time = -1;
    c->upstream_name[0] = '\0';
    c->stale_server = -1;
    c->keep_alive = c->req.keep_alive && !c->w->draining && !c->client_eof;
    if (log_access_enabled())
        keep_log_fields(c, buf);
    /* The head stays in the input until it cannot be needed again: without
     * a body until the clone answers, with one until a connection to a clone
     * is up (the body then streams and cannot be replayed). A failed attempt
     * before that goes whole to another clone. */
    c->head_kept = true;
    if (c->req.has_body)
        stream_set_timeouts(&c->cs, c->w->idle_tv, c->w->idle_tv);
    dispatch(c);
}

static void process_input(struct conn *c)
{
    struct evbuffer *in = c->cs.in;
    size_t len = evbuffer_get_length(in);
    const struct config *cfg = cfg_of(c);

    if (c->client_read_paused) {
        c->client_read_paused = false;
        stream_read_enable(&c->cs, true);
    } else {
        stream_read_resume(&c->cs);
    }
    if (len == 0) {
        if (c->client_eof) {
            conn_close(c, "client closed");
            return;
        }
        if (c->state != CONN_IDLE)
            conn_set_state(c, CONN_IDLE);
        if (c->w->draining) {
            conn_close(c, "draining");
            return;
        }
        deadline_after_ms(c, now_us(), cfg->idle_timeout_ms);
        return;
    }
    if (c->state == CONN_IDLE) {
        conn_set_state(c, CONN_READING_HEAD);
        c->t_start = now_us();
        memset(&c->log, 0, sizeof(c->log));
        c->log.version_minor = 1; /* until the request line says otherwise */
        deadline_clear(c);        /* a header deadline only if the head is incomplete */
    }
    size_t limit = cfg->max_header_size + 1;
    c->req.max_head = cfg->max_header_size;
    c->req.max_target = cfg->max_uri_size;
    c->req.max_body = cfg->max_body_size;
    const char *p;
    size_t n;
    enum http_parse r = parse_head_in(&c->req, in, limit, &p, &n);
    if (!p) {
        conn_close(c, "out of memory");
        return;
    }
    switch (r) {
    case HTTP_PARSE_AGAIN:
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
                 c->req.error_text ? c->req.error_text : "malformed");
        c->keep_alive = false;
        /* the access log names what was refused, as far as it was read */
        if (p && log_access_enabled()) {
            struct conn_log_fields *l = &c->log;
            const struct http_head *h = &c->req;
            if (h->method.len && (size_t)h->method.off + h->method.len <= n)
                copy_field(l->method, sizeof(l->method), &l->method_len, p + h->method.off,
                           h->method.len);
            if (h->target.len && (size_t)h->target.off + h->target.len <= n)
                copy_field(l->target, sizeof(l->target), &l->target_len, p + h->target.off,
                           h->target.len);
        }
        send_error(c, http_error_status(c->req.error), false,
                   c->req.error_text ? c->req.error_text : "malformed request");
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
    return c->req_done || !c->req.has_body;
}

/* Whether a failed attempt may go to another clone: nothing of the request
 * is lost (still whole in our input), no answer byte came, and either the
 * method is idempotent or the request never left (<sent> false: the
 * connection to the clone never came up). */
static bool may_retry(const struct conn *c, bool sent)
{
    return c->head_kept && !c->resp_bytes && (!sent || http_method_idempotent(&c->req));
}

/* The connection to the clone is up: a request body starts to stream. */
static void send_body(struct conn *c)
{
    evbuffer_drain(c->cs.in, c->req.head_len);
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
    log_warnx("upstream %s failed: %s, client %s", c->upstream_name, why, c->client_ip);
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
    unsigned budget = cfg_of(c)->retries + (reused ? 1 : 0);
    if ((retryable || !sent) && may_retry(c, sent) && c->attempts <= budget) {
        if (reused)
            c->stale_server = c->server;
        dispatch(c);
        return;
    }
    c->upstream_time = seconds_since(c->t_upstream);
    send_error(c, status, request_consumed(c), why);
}

static void finish_exchange(struct conn *c)
{
    bool reusable =
        c->resp.keep_alive && c->req_done && !c->decode_body && !http_body_until_close(&c->resp);
    c->upstream_time = seconds_since(c->t_upstream);
    drop_upstream(c, reusable);
    request_done(c);
    c->up_read_paused = false;
    if (!c->keep_alive || !c->req_done) {
        close_after_flush(c, "response sent, connection not kept");
        return;
    }
    http_head_reset(&c->req);
    conn_set_state(c, CONN_IDLE);
    process_input(c);
}

static void start_tunnel(struct conn *c)
{
    conn_set_state(c, CONN_TUNNEL);
    request_done(c);
    c->status = 0; /* logged once, at the switch */
    stream_set_timeouts(&c->cs, NULL, NULL);
    stream_set_timeouts(&c->up->s, NULL, NULL);
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

    while (!c->resp.head_done) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return false;
        const char *p;
        size_t n;
        enum http_parse r = parse_head_in(&c->resp, in, CONN_RESP_HEAD_MAX, &p, &n);
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
            upstream_failed(c, 502, c->resp.error_text ? c->resp.error_text : "invalid response",
                            false);
            return false;
        }
        unsigned status = c->resp.status;
        if (status == 101 && !c->req.upgrade) {
            upstream_failed(c, 502, "101 to a request that did not ask to upgrade", false);
            return false;
        }
        if (status < 200 && status != 101) {
            /* interim response: pass it on (HTTP/1.1 clients only) and read the next */
            if (c->req.version_minor >= 1 &&
                http_response_serialize(&c->resp, p, NULL, true, false, false, client_out) == -1) {
                conn_close(c, "out of memory");
                return false;
            }
            evbuffer_drain(in, c->resp.head_len);
            stream_flush(&c->cs);
            uint8_t skip = c->resp.skip_body;
            http_head_reset(&c->resp);
            c->resp.skip_body = skip;
            continue;
        }
        /* the final response: the request can no longer be retried */
        upstream_report(c->up->pool, c->up->server, NULL);
        if (c->head_kept) {
            evbuffer_drain(c->cs.in, c->req.head_len);
            c->head_kept = false;
        }
        if (!c->req_done || c->w->draining || http_body_until_close(&c->resp))
            c->keep_alive = false;
        c->decode_body = c->req.version_minor == 0 && c->resp.chunked;
        if (c->decode_body)
            c->keep_alive = false;
        c->status = status;
        if (http_response_serialize(&c->resp, p, NULL, c->keep_alive, c->req.version_minor == 0,
                                    c->decode_body, client_out) == -1) {
            conn_close(c, "out of memory");
            return false;
        }
        evbuffer_drain(in, c->resp.head_len);
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

    enum http_parse r = frame_and_move(&c->resp, in, out, c->decode_body, &moved);
    c->bytes_sent += evbuffer_get_length(out) - before;
    stream_flush(&c->cs);
    if (r == HTTP_PARSE_ERROR) {
        log_warnx("upstream %s sent a broken body: %s, client %s", c->upstream_name,
                  c->resp.error_text ? c->resp.error_text : "invalid", c->client_ip);
        abort_response(c, "broken response body");
        return;
    }
    if (r != HTTP_PARSE_AGAIN) {
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
    enum http_parse r = frame_and_move(&c->resp, c->up->s.in, out, c->decode_body, &moved);
    c->bytes_sent += evbuffer_get_length(out) - before;
    stream_flush(&c->cs);
    if (r == HTTP_PARSE_AGAIN)
        r = http_body_eof(&c->resp);
    if (r == HTTP_PARSE_DONE) {
        finish_exchange(c);
        return;
    }
    log_warnx("upstream %s closed mid-response, client %s", c->upstream_name, c->client_ip);
    upstream_report(c->up->pool, c->up->server, "closed mid-response");
    abort_response(c, "clone closed mid-response");
}

static void conn_on_up_read(struct stream *st, void *arg)
{
    struct conn *c = arg;
    (void)st;
    if (c->state == CONN_TUNNEL) {
        tunnel_move(&c->up->s, &c->cs);
        return;
    }
    c->resp_bytes = true;
    if (!c->resp.head_done && !read_response_head(c))
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
        pump_request_body(c);
    }
}

static void conn_on_up_event(struct stream *st, enum stream_event what, void *arg)
{
    struct conn *c = arg;

    if (what == STREAM_EV_CONNECTED) {
        c->up->connected = true;
        stream_set_timeouts(st, c->w->response_tv, c->w->response_tv);
        if (c->head_kept && c->req.has_body && !c->req_done)
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
        if (c->resp.head_done) {
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
    upstream_failed(c, 502, c->up->connected ? "connection error" : "connect failed", true);
}

static void dispatch(struct conn *c)
{
    struct worker *w = c->w;
    const struct config *cfg = cfg_of(c);
    struct evbuffer *in = c->cs.in;

    for (;;) {
        int server = upstream_pick(w->pool, c->tried);
        if (server < 0 && c->stale_server >= 0) {
            c->tried &= ~(UINT64_C(1) << c->stale_server);
            c->stale_server = -1;
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
        count_failure(c);
        log_warn("upstream %s: cannot connect", upstream_server_name(w->pool, (unsigned)server));
        if (c->attempts > cfg->retries || !may_retry(c, false)) {
            send_error(c, 502, request_consumed(c), "cannot connect to a clone");
            return;
        }
    }
    /* the name outlives the pool (access log): keep a copy */
    const char *name = upstream_server_name(w->pool, (unsigned)c->server);
    size_t name_len = strnlen(name, sizeof(c->upstream_name) - 1);
    memcpy(c->upstream_name, name, name_len);
    c->upstream_name[name_len] = '\0';
    struct stream *us = &c->up->s;
    stream_set_callbacks(us, conn_on_up_read, conn_on_up_drained, conn_on_up_event, c);
    us->read_high = CONN_BUF_HIGH;
    if (c->up->connected)
        stream_set_timeouts(us, w->response_tv, w->response_tv);
    else
        stream_set_timeouts(us, w->connect_tv, w->connect_tv);

    const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)c->req.head_len);
    struct http_forward_info info = {
        .client_ip = c->client_ip,
        .proto = "http",
        .default_host = c->upstream_name,
    };
    if (!head || http_request_serialize(&c->req, head, &info, us->out) == -1) {
        conn_close(c, "out of memory");
        return;
    }
    http_head_reset(&c->resp);
    c->resp.skip_body = c->req.method.len == 4 && memcmp(head + c->req.method.off, "HEAD", 4) == 0;
    c->resp_bytes = false;
    c->t_upstream = now_us();
    stream_read_enable(us, true);
    stream_flush(us);

    if (!c->req.has_body) {
        c->req_done = true;
        return;
    }
    if (c->up->connected)
        send_body(c);
    /* else the body waits for STREAM_EV_CONNECTED */
}

/* ------------------------------------------------------------ client events */

/* The client's output fell to the low mark (or empty, when closing). */
static void conn_on_drained(struct stream *st, void *arg)
{
    struct conn *c = arg;

    if (c->state == CONN_CLOSING) {
        if (evbuffer_get_length(st->out) == 0)
            conn_close(c, "flushed");
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
        pump_response_body(c);
    }
}

static void conn_on_event(struct stream *st, enum stream_event what, void *arg)
{
    struct conn *c = arg;
    (void)st;

    if (what == STREAM_EV_READ_TIMEOUT || what == STREAM_EV_WRITE_TIMEOUT) {
        if (what == STREAM_EV_READ_TIMEOUT && c->state == CONN_FORWARDING && !c->req_done) {
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
        case CONN_CLOSING:
            conn_close(c, "client closed");
            return;
        case CONN_READING_HEAD:
            /* the rest of a pipelined batch may already be here */
            process_input(c);
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
        /* not the timer running out: send_error() asked for the next request */
        c->resume_input = false;
        process_input(c);
        return;
    }
    c->timer_armed = false;
    if (c->deadline_us == 0)
        return;
    if (now_us() + 1000 < c->deadline_us) {
        deadline_set(c, c->deadline_us);
        return;
    }
    c->deadline_us = 0;
    if (c->state == CONN_READING_HEAD) {
        c->keep_alive = false;
        send_error(c, 408, false, "request head not received in time");
        return;
    }
    if (c->state == CONN_IDLE)
        conn_close(c, "idle timeout");
}

/* ------------------------------------------------------------ public */

void conn_accept(struct worker *w, int fd, const struct sockaddr *sa)
{
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1 && errno != EOPNOTSUPP)
        log_debug("%s: TCP_NODELAY: %s", __func__, strerror(errno));

    struct conn *c = calloc(1, sizeof(*c)); /* freed in conn_close() */
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
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->client_ip,
                  sizeof(c->client_ip));
    }
    if (stream_init(&c->cs, w->base, fd) == -1) {
        log_warnx("accept: cannot allocate buffers");
        close(fd);
        free(c);
        /* counted by the listener and above, never opened after all */
        __atomic_sub_fetch(&w->shared->connections, 1, __ATOMIC_RELAXED);
        STATS_DEC(w->stats->connections_open);
        return;
    }
    const struct config *cfg = w->cfg;
    http_head_init(&c->req, false, cfg->max_header_size, cfg->max_uri_size, cfg->max_body_size);
    http_head_init(&c->resp, true, CONN_RESP_HEAD_MAX, 0, 0);
    event_assign(&c->timer, w->base, -1, 0, conn_on_timer, c);
    TAILQ_INSERT_TAIL(&w->conns, c, link);
    w->conn_count++;

    stream_set_callbacks(&c->cs, conn_on_read, conn_on_drained, conn_on_event, c);
    c->cs.read_high = CONN_BUF_HIGH;
    stream_set_timeouts(&c->cs, NULL, w->idle_tv);
    stream_read_enable(&c->cs, true);
    conn_set_state(c, CONN_IDLE);
    deadline_after_ms(c, now_us(), cfg->idle_timeout_ms);
    /* the listener defers accepting until the request arrives: read it now */
    stream_read_now(&c->cs);
}

void conn_drain_all(struct worker *w)
{
    struct conn *c, *next;
    for (c = TAILQ_FIRST(&w->conns); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state == CONN_IDLE)
            conn_close(c, "draining");
        else
            c->keep_alive = false;
    }
}

void conn_close_all(struct worker *w)
{
    struct conn *c;
    while ((c = TAILQ_FIRST(&w->conns)) != NULL)
        conn_close(c, "shutting down");
}
