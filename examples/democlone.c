/*
 * democlone: the small HTTP/1.1 server that plays one "identical clone"
 * behind clonegate in `make run` and in the integration tests. It is an
 * example, not part of the proxy: libevent's evhttp does all the HTTP.
 *
 *   democlone -l 127.0.0.1:9001 -n clone1
 *
 * Every response names the clone (X-Clone), the accepted TCP connection it
 * went out on (X-Connection, counted from 1 per process, so a test can see
 * keep-alive reuse) and the requests served so far (X-Request-Count).
 *
 *   GET /health          200 "ok"
 *   GET /                200, a small page naming the clone
 *   GET /cacheable       200, Cache-Control: public, max-age=60, a strong ETag
 *                        (the same on every clone: the body is the same)
 *                        and Last-Modified; If-None-Match on it gives 304
 *   GET /nostore         200, Cache-Control: no-store
 *   GET /slow?ms=N       200 after N ms, from a timer (the loop never blocks)
 *   ANY /echo            200, text: the request line, every header as
 *                        received, the body length
 *   GET /bytes?n=N       N bytes, byte i being 'a' + i % 26, sent chunked
 *                        (&cl=1: with Content-Length instead), produced one
 *                        piece at a time as the connection drains, so even
 *                        a 1 GiB answer never sits in memory
 *
 * One thread, one event_base. The process owns a table of its live
 * connections (keyed by the bufferevent we create for each in
 * on_new_bufferevent) with their number and the /bytes stream running on
 * them; evhttp owns the connections and requests themselves. SIGTERM and
 * SIGINT leave the loop; everything is freed before exit.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#define DEMO_CONN_BUCKETS   1024                /* connection table buckets, a power of two */
#define DEMO_SLOW_MAX_MS    600000              /* upper bound of /slow?ms= */
#define DEMO_BYTES_MAX      (UINT64_C(1) << 40) /* upper bound of /bytes?n= (1 TiB) */
#define DEMO_PIECE          (256 * 1024)        /* bytes handed to evhttp per drained write */
#define DEMO_PATTERN_LEN    26                  /* /bytes body byte i is 'a' + i % 26 */
#define DEMO_TIMEOUT_S      120                 /* evhttp read/write and keep-alive idle timeout */
#define DEMO_HOST_TEXT      64                  /* numeric host of -l, plus NUL */
#define DEMO_NUM_TEXT       24                  /* digits of a 64-bit counter plus NUL */
#define DEMO_CACHEABLE_ETAG "\"democlone-cacheable-v1\""
#define DEMO_CACHEABLE_LM   "Mon, 01 Jan 2024 00:00:00 GMT"

/* One accepted connection, from on_new_bufferevent() until evhttp closes it. */
struct demo_conn {
    const struct bufferevent *bev; /* key; created by us, owned and freed by evhttp */
    unsigned long id;              /* accept order, from 1: X-Connection */
    int closecb_set;               /* on_conn_close registered on the evhttp connection */
    struct demo_stream *stream;    /* the /bytes answer being sent on it, or NULL */
    struct demo_conn *next;        /* bucket chain */
};

/* A /bytes answer in progress; freed when it ends or its connection closes. */
struct demo_stream {
    struct evhttp_request *req; /* borrowed: evhttp frees it after reply_end */
    struct demo_conn *conn;     /* the connection it is sent on */
    uint64_t sent;              /* bytes handed to evhttp so far */
    uint64_t total;             /* bytes asked for */
    struct evbuffer *piece;     /* owned: the next piece, references demo.pattern */
};

/* A /slow answer waiting for its timer. */
struct demo_slow {
    struct evhttp_request *req;    /* borrowed; detached by evhttp if the client left */
    struct event *timer;           /* owned, freed with this struct */
    struct demo_slow *prev, *next; /* demo.slow list, so shutdown can free it */
};

static struct {
    struct event_base *base;                     /* owned */
    struct evhttp *http;                         /* owned */
    const char *name;                            /* borrowed from argv: X-Clone */
    unsigned long connections;                   /* accepted so far */
    unsigned long requests;                      /* served so far */
    struct demo_conn *conns[DEMO_CONN_BUCKETS];  /* live connections */
    struct demo_slow *slow;                      /* pending /slow answers */
    char pattern[DEMO_PIECE + DEMO_PATTERN_LEN]; /* 'a'..'z' repeated */
} demo;

/* ------------------------------------------------------------------------
 * Connection table
 */

static struct demo_conn **conn_bucket(const struct bufferevent *bev)
{
    uint64_t h = (uintptr_t)bev;

    h ^= h >> 17;
    h *= UINT64_C(0x9e3779b97f4a7c15);
    return &demo.conns[(h >> 32) & (DEMO_CONN_BUCKETS - 1)];
}

static struct demo_conn *conn_find(const struct bufferevent *bev)
{
    struct demo_conn *dc;

    for (dc = *conn_bucket(bev); dc != NULL; dc = dc->next) {
        if (dc->bev == bev)
            return dc;
    }
    return NULL;
}

static void conn_remove(struct demo_conn *dc)
{
    struct demo_conn **pp = conn_bucket(dc->bev);

    while (*pp != NULL && *pp != dc)
        pp = &(*pp)->next;
    if (*pp == dc)
        *pp = dc->next;
    free(dc);
}

/*
 * evhttp calls this once per accepted connection, just before it builds the
 * connection around the bufferevent, so this is where connections are
 * counted. A connection that never sent a request has no close callback
 * yet; its entry stays until the allocator hands out the same bufferevent
 * address again, which this then overwrites.
 */
static struct bufferevent *on_new_bufferevent(struct event_base *base, void *arg)
{
    struct bufferevent *bev;
    struct demo_conn *dc;
    struct demo_conn **bucket;

    (void)arg;
    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    dc = conn_find(bev);
    if (dc == NULL) {
        dc = calloc(1, sizeof(*dc)); /* freed in on_conn_close() or at exit */
        if (dc == NULL)
            return bev; /* served without a number: X-Connection 0 */
        dc->bev = bev;
        bucket = conn_bucket(bev);
        dc->next = *bucket;
        *bucket = dc;
    }
    dc->id = ++demo.connections;
    dc->closecb_set = 0;
    dc->stream = NULL;
    return bev;
}

static void stream_free(struct demo_stream *s)
{
    if (s->conn != NULL)
        s->conn->stream = NULL;
    evbuffer_free(s->piece);
    free(s);
}

/*
 * The connection is going away. A /bytes answer still running on it has
 * either been detached from it by evhttp (the client left mid-body: ending
 * it frees the request) or is about to be freed with it (evhttp_free).
 */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct demo_conn *dc = arg;
    struct demo_stream *s = dc->stream;

    (void)evcon;
    if (s != NULL) {
        struct evhttp_request *req = s->req;

        s->conn = NULL;
        stream_free(s);
        if (evhttp_request_get_connection(req) == NULL)
            evhttp_send_reply_end(req);
    }
    conn_remove(dc);
}

/* The table entry of the connection <req> arrived on, or NULL. */
static struct demo_conn *conn_of(struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct demo_conn *dc;

    if (evcon == NULL)
        return NULL;
    dc = conn_find(evhttp_connection_get_bufferevent(evcon));
    if (dc != NULL && !dc->closecb_set) {
        evhttp_connection_set_closecb(evcon, on_conn_close, dc);
        dc->closecb_set = 1;
    }
    return dc;
}

/* ------------------------------------------------------------------------
 * Helpers
 */

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

static void add_number_header(struct evkeyvalq *h, const char *name, uint64_t value)
{
    char text[DEMO_NUM_TEXT];

    snprintf(text, sizeof(text), "%" PRIu64, value);
    evhttp_add_header(h, name, text);
}

/*
 * Reads the unsigned query parameter <key> of <req> into *<value>, bounded
 * by <max>. Returns 0, 1 when absent (*value untouched) or -1 when bad.
 */
static int query_number(struct evhttp_request *req, const char *key, uint64_t max, uint64_t *value)
{
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    struct evkeyvalq params;
    const char *text;
    char *end;
    unsigned long long v;
    int rc = 1;

    if (query == NULL)
        return 1;
    TAILQ_INIT(&params);
    if (evhttp_parse_query_str(query, &params) == -1)
        return -1;
    text = evhttp_find_header(&params, key);
    if (text != NULL) {
        errno = 0;
        v = strtoull(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0' || text[0] == '-' || v > max) {
            rc = -1;
        } else {
            *value = v;
            rc = 0;
        }
    }
    evhttp_clear_headers(&params);
    return rc;
}

/* evhttp_send_reply(), except that a HEAD gets the headers alone, with the
 * Content-Length the GET would have (libevent 2.1 would send the body). */
static void send_reply(struct evhttp_request *req, int code, const char *reason,
                       struct evbuffer *body)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        char len[32];
        snprintf(len, sizeof(len), "%zu", body ? evbuffer_get_length(body) : (size_t)0);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", len);
        evhttp_send_reply(req, code, reason, NULL);
        return;
    }
    evhttp_send_reply(req, code, reason, body);
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
    struct evbuffer *body = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    if (body != NULL)
        evbuffer_add(body, text, strlen(text));
    send_reply(req, code, reason, body);
    if (body != NULL)
        evbuffer_free(body);
}

/* ------------------------------------------------------------------------
 * Routes
 */

static void route_index(struct evhttp_request *req)
{
    struct evbuffer *body = evbuffer_new();

    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evbuffer_add_printf(body,
                        "democlone %s\n"
                        "routes: /health /cacheable /nostore /slow?ms=N /echo /bytes?n=N\n",
                        demo.name);
    send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

static void route_cacheable(struct evhttp_request *req)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    const char *inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");

    evhttp_add_header(out, "Cache-Control", "public, max-age=60");
    evhttp_add_header(out, "ETag", DEMO_CACHEABLE_ETAG);
    evhttp_add_header(out, "Last-Modified", DEMO_CACHEABLE_LM);
    if (inm != NULL && (strstr(inm, DEMO_CACHEABLE_ETAG) != NULL || strcmp(inm, "*") == 0)) {
        evhttp_send_reply(req, HTTP_NOTMODIFIED, "Not Modified", NULL);
        return;
    }
    reply_text(req, HTTP_OK, "OK", "cacheable page, the same on every clone\n");
}

static void route_nostore(struct evhttp_request *req)
{
    struct evbuffer *body = evbuffer_new();

    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evbuffer_add_printf(body, "not to be stored, from %s\n", demo.name);
    send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

static void slow_unlink(struct demo_slow *sl)
{
    if (sl->prev != NULL)
        sl->prev->next = sl->next;
    else
        demo.slow = sl->next;
    if (sl->next != NULL)
        sl->next->prev = sl->prev;
    event_free(sl->timer);
    free(sl);
}

/* evhttp frees a request whose client has left when it is answered. */
static void on_slow_timer(evutil_socket_t fd, short what, void *arg)
{
    struct demo_slow *sl = arg;
    struct evhttp_request *req = sl->req;

    (void)fd;
    (void)what;
    slow_unlink(sl);
    reply_text(req, HTTP_OK, "OK", "slow answer\n");
}

static void route_slow(struct evhttp_request *req)
{
    uint64_t ms = 0;
    struct demo_slow *sl;
    struct timeval tv;

    if (query_number(req, "ms", DEMO_SLOW_MAX_MS, &ms) == -1) {
        reply_text(req, HTTP_BADREQUEST, "Bad Request", "ms must be 0..600000\n");
        return;
    }
    sl = calloc(1, sizeof(*sl)); /* freed by slow_unlink(): timer or exit */
    if (sl == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    sl->req = req;
    sl->timer = evtimer_new(demo.base, on_slow_timer, sl);
    if (sl->timer == NULL) {
        free(sl);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    sl->next = demo.slow;
    if (demo.slow != NULL)
        demo.slow->prev = sl;
    demo.slow = sl;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    evtimer_add(sl->timer, &tv);
}

static void route_echo(struct evhttp_request *req)
{
    struct evbuffer *body = evbuffer_new();
    const struct evkeyval *h;

    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    evbuffer_add_printf(body, "%s %s HTTP/%d.%d\n", method_name(evhttp_request_get_command(req)),
                        evhttp_request_get_uri(req), req->major, req->minor);
    TAILQ_FOREACH(h, evhttp_request_get_input_headers(req), next) {
        evbuffer_add_printf(body, "%s: %s\n", h->key, h->value);
    }
    evbuffer_add_printf(body, "\nbody-length: %zu\n",
                        evbuffer_get_length(evhttp_request_get_input_buffer(req)));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

/*
 * Hands the next piece of a /bytes answer to evhttp, or ends the answer.
 * Called once to start, then by evhttp each time the connection's output
 * has drained, so at most one piece is buffered per answer.
 */
static void on_bytes_drained(struct evhttp_connection *evcon, void *arg)
{
    struct demo_stream *s = arg;
    uint64_t left = s->total - s->sent;
    size_t n = left < DEMO_PIECE ? (size_t)left : DEMO_PIECE;
    struct evhttp_request *req = s->req;

    (void)evcon;
    if (n == 0) {
        /* Ending may close the connection (on_conn_close): let go first. */
        stream_free(s);
        evhttp_send_reply_end(req);
        return;
    }
    evbuffer_add_reference(s->piece, demo.pattern + s->sent % DEMO_PATTERN_LEN, n, NULL, NULL);
    s->sent += n;
    evhttp_send_reply_chunk_with_cb(req, s->piece, on_bytes_drained, s);
}

static void route_bytes(struct evhttp_request *req, struct demo_conn *dc)
{
    uint64_t n = 0;
    uint64_t cl = 0;
    struct demo_stream *s;

    if (query_number(req, "n", DEMO_BYTES_MAX, &n) == -1 || query_number(req, "cl", 1, &cl) == -1) {
        reply_text(req, HTTP_BADREQUEST, "Bad Request", "n must be 0..2^40, cl 0 or 1\n");
        return;
    }
    if (cl)
        add_number_header(evhttp_request_get_output_headers(req), "Content-Length", n);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/octet-stream");
    /* evhttp sends no body for HEAD and would never call us back. */
    if (n == 0 || dc == NULL || evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        evhttp_send_reply_start(req, HTTP_OK, "OK");
        evhttp_send_reply_end(req);
        return;
    }
    s = calloc(1, sizeof(*s)); /* freed by stream_free(): at the end or on close */
    if (s == NULL || (s->piece = evbuffer_new()) == NULL) {
        free(s);
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    s->req = req;
    s->conn = dc;
    s->total = n;
    dc->stream = s;
    evhttp_send_reply_start(req, HTTP_OK, "OK");
    on_bytes_drained(NULL, s);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct demo_conn *dc = conn_of(req);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

    (void)arg;
    demo.requests++;
    evhttp_add_header(out, "X-Clone", demo.name);
    add_number_header(out, "X-Connection", dc != NULL ? dc->id : 0);
    add_number_header(out, "X-Request-Count", demo.requests);
    if (path == NULL || strcmp(path, "") == 0)
        path = "/";

    if (strcmp(path, "/health") == 0)
        reply_text(req, HTTP_OK, "OK", "ok\n");
    else if (strcmp(path, "/") == 0)
        route_index(req);
    else if (strcmp(path, "/cacheable") == 0)
        route_cacheable(req);
    else if (strcmp(path, "/nostore") == 0)
        route_nostore(req);
    else if (strcmp(path, "/slow") == 0)
        route_slow(req);
    else if (strcmp(path, "/echo") == 0)
        route_echo(req);
    else if (strcmp(path, "/bytes") == 0)
        route_bytes(req, dc);
    else
        reply_text(req, HTTP_NOTFOUND, "Not Found", "not found\n");
}

/* ------------------------------------------------------------------------
 * Start and stop
 */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    fprintf(stderr, "democlone %s: signal %d, exiting\n", demo.name, (int)sig);
    event_base_loopbreak(demo.base);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: democlone -l HOST:PORT -n NAME\n"
               "  -l  address to listen on: 127.0.0.1:9001 or [::1]:9001\n"
               "  -n  the clone's name, sent in X-Clone\n");
}

/* Splits "host:port" or "[v6]:port" into <host> (of <size> bytes) and
 * *<port>. Returns 0 or -1. */
static int split_addr(const char *text, char *host, size_t size, unsigned short *port)
{
    const char *start = text;
    const char *colon;
    char *end;
    unsigned long p;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (close == NULL || close[1] != ':')
            return -1;
        start = text + 1;
        colon = close + 1;
        if ((size_t)(close - start) >= size)
            return -1;
        memcpy(host, start, (size_t)(close - start));
        host[close - start] = '\0';
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL || (size_t)(colon - start) >= size)
            return -1;
        memcpy(host, start, (size_t)(colon - start));
        host[colon - start] = '\0';
    }
    errno = 0;
    p = strtoul(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || p > 65535)
        return -1;
    *port = (unsigned short)p;
    return 0;
}

/* Frees what is left at exit: pending timers, connections, the server. */
static void shutdown_all(void)
{
    size_t i;

    while (demo.slow != NULL) {
        struct evhttp_request *req = demo.slow->req;

        /* A request still on its connection goes with evhttp_free(). */
        if (evhttp_request_get_connection(req) == NULL)
            evhttp_request_free(req);
        slow_unlink(demo.slow);
    }
    if (demo.http != NULL)
        evhttp_free(demo.http); /* closes connections: on_conn_close for each */
    demo.http = NULL;
    for (i = 0; i < DEMO_CONN_BUCKETS; i++) {
        while (demo.conns[i] != NULL)
            conn_remove(demo.conns[i]);
    }
}

int main(int argc, char **argv)
{
    const char *listen_text = NULL;
    char host[DEMO_HOST_TEXT];
    unsigned short port;
    struct evhttp_bound_socket *bound;
    struct event *sigterm = NULL;
    struct event *sigint = NULL;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    size_t i;
    int opt;
    int rc = 1;

    while ((opt = getopt(argc, argv, "l:n:h")) != -1) {
        switch (opt) {
        case 'l':
            listen_text = optarg;
            break;
        case 'n':
            demo.name = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (listen_text == NULL || demo.name == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (split_addr(listen_text, host, sizeof(host), &port) == -1) {
        fprintf(stderr, "democlone: bad listen address (want HOST:PORT or [V6]:PORT)\n");
        return 2;
    }
    for (i = 0; i < sizeof(demo.pattern); i++)
        demo.pattern[i] = (char)('a' + i % DEMO_PATTERN_LEN);

    /* A client that leaves mid-answer must not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    demo.base = event_base_new();
    if (demo.base == NULL)
        goto fail;
    demo.http = evhttp_new(demo.base);
    if (demo.http == NULL)
        goto fail;
    evhttp_set_allowed_methods(demo.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                              EVHTTP_REQ_PATCH);
    evhttp_set_timeout(demo.http, DEMO_TIMEOUT_S);
    evhttp_set_bevcb(demo.http, on_new_bufferevent, NULL);
    evhttp_set_gencb(demo.http, on_request, NULL);
    bound = evhttp_bind_socket_with_handle(demo.http, host, port);
    if (bound == NULL) {
        fprintf(stderr, "democlone %s: cannot listen on %s port %u: %s\n", demo.name, host,
                (unsigned)port, strerror(errno));
        goto fail;
    }
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sslen) == 0)
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    sigterm = evsignal_new(demo.base, SIGTERM, on_signal, NULL);
    sigint = evsignal_new(demo.base, SIGINT, on_signal, NULL);
    if (sigterm == NULL || sigint == NULL || evsignal_add(sigterm, NULL) == -1 ||
        evsignal_add(sigint, NULL) == -1)
        goto fail;

    fprintf(stderr, "democlone %s: listening on %s port %u\n", demo.name, host, (unsigned)port);
    if (event_base_dispatch(demo.base) == -1)
        goto fail;
    rc = 0;

fail:
    if (rc != 0)
        fprintf(stderr, "democlone %s: start-up failed\n", demo.name ? demo.name : "");
    if (sigterm != NULL)
        event_free(sigterm);
    if (sigint != NULL)
        event_free(sigint);
    shutdown_all();
    if (demo.base != NULL)
        event_base_free(demo.base);
    return rc;
}
