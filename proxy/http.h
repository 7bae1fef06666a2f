/*
 * http: the HTTP/1.1 message model and the llhttp glue.
 *
 * A struct http_head is one parsed request or response head: llhttp's state
 * plus (offset, length) spans into the head's bytes, which the caller keeps
 * contiguous (evbuffer_pullup) while the head is parsed and serialised. The
 * same parser then frames the body: the caller feeds it body bytes and it
 * says where the message ends, so the bytes can be moved on unchanged.
 * Hop-by-hop rules and the serialising of forwarded heads live here too.
 * No I/O: buffers come in, spans and evbuffer appends go out. One head is
 * used by one thread at a time (the owner's worker).
 */
#ifndef CLONEGATE_HTTP_H
#define CLONEGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

struct evbuffer;

#define HTTP_MAX_HEADERS 64 /* more header fields in one head: 431 */

struct http_span {
    uint32_t off; /* bytes from the start of the head */
    uint32_t len;
};

/* Header names the proxy acts on; everything else is HTTP_H_OTHER. */
enum http_header_id {
    HTTP_H_OTHER = 0,
    HTTP_H_CONNECTION,
    HTTP_H_KEEP_ALIVE,
    HTTP_H_PROXY_CONNECTION,
    HTTP_H_PROXY_AUTHENTICATE,
    HTTP_H_PROXY_AUTHORIZATION,
    HTTP_H_TE,
    HTTP_H_TRAILER,
    HTTP_H_TRANSFER_ENCODING,
    HTTP_H_UPGRADE,
    HTTP_H_HOST,
    HTTP_H_CONTENT_LENGTH,
    HTTP_H_EXPECT,
    HTTP_H_X_FORWARDED_FOR,
    HTTP_H_X_FORWARDED_PROTO,
    HTTP_H_FORWARDED,
    HTTP_H_VIA,
    HTTP_H_REFERER,
    HTTP_H_USER_AGENT,
    HTTP_H_DATE,
    HTTP_H_SERVER,
    /* caching (RFC 9111) */
    HTTP_H_CACHE_CONTROL,
    HTTP_H_PRAGMA,
    HTTP_H_EXPIRES,
    HTTP_H_AGE,
    HTTP_H_LAST_MODIFIED,
    HTTP_H_ETAG,
    HTTP_H_VARY,
    HTTP_H_SET_COOKIE,
    HTTP_H_AUTHORIZATION,
    HTTP_H_IF_NONE_MATCH,
    HTTP_H_IF_MODIFIED_SINCE,
    HTTP_H_IF_MATCH,
    HTTP_H_IF_UNMODIFIED_SINCE,
    HTTP_H_IF_RANGE,
    HTTP_H_RANGE,
    HTTP_H_LOCATION,
    HTTP_H_CONTENT_LOCATION,
    HTTP_H_CACHE_STATUS,
    HTTP_H_COUNT_,
};

struct http_header {
    struct http_span name;
    struct http_span value;
    uint8_t id;  /* enum http_header_id */
    uint8_t hop; /* 1: hop-by-hop, not forwarded */
};

/* Why a head was refused; each maps to a status via http_error_status(). */
enum http_error {
    HTTP_ERR_NONE = 0,
    HTTP_ERR_BAD_REQUEST = 1,    /* malformed or ambiguous framing: 400 */
    HTTP_ERR_HEAD_TOO_LARGE = 2, /* 431 */
    HTTP_ERR_URI_TOO_LONG = 3,   /* 414 */
    HTTP_ERR_BODY_TOO_LARGE = 4, /* 413 */
    HTTP_ERR_METHOD = 5,         /* CONNECT and the like: 405 */
    HTTP_ERR_BAD_RESPONSE = 6,   /* invalid upstream response: 502 */
};

/* Result of feeding bytes to a head or body. */
enum http_parse {
    HTTP_PARSE_AGAIN = 0,   /* everything used; more bytes needed */
    HTTP_PARSE_DONE = 1,    /* the head (or the message) ended; *used says where */
    HTTP_PARSE_ERROR = 2,   /* refused; head->error says why */
    HTTP_PARSE_UPGRADE = 3, /* message ended and what follows is another protocol */
};

struct http_head {
    llhttp_t parser;              /* owned; reset per message */
    const char *base;             /* borrowed: the head's first byte while parsing */
    struct evbuffer *decoded;     /* borrowed: where on_body appends payload, or NULL */
    size_t parsed;                /* bytes of the head fed to the parser so far */
    size_t head_len;              /* bytes of the head, once complete */
    size_t max_head;              /* limit for head_len (431) */
    size_t max_target;            /* limit for the request target (414) */
    uint64_t max_body;            /* limit on Content-Length or chunked bytes; 0 = none */
    uint64_t body_seen;           /* body bytes the parser has passed over */
    struct http_span method;      /* requests */
    struct http_span target;      /* requests, as received (logged, keyed) */
    struct http_span authority;   /* absolute-form target's host[:port], else len 0 */
    struct http_span origin_form; /* absolute-form target's path and query, may be empty */
    struct http_span reason;      /* responses */
    unsigned status;              /* responses */
    uint8_t version_minor;        /* 0 or 1 (major is always 1) */
    uint8_t is_response;          /* parser type */
    uint8_t head_done;            /* on_headers_complete seen */
    uint8_t message_done;         /* on_message_complete seen */
    uint8_t keep_alive;           /* the sender allows another message */
    uint8_t upgrade;              /* Connection: upgrade with Upgrade (or a 101) */
    uint8_t chunked;              /* Transfer-Encoding: chunked */
    uint8_t has_body;             /* a body follows (length > 0, chunked, or until close) */
    uint8_t expect_continue;      /* Expect: 100-continue */
    uint8_t skip_body;            /* response to HEAD: set by the caller before parsing */
    uint8_t conn_close;           /* Connection: close */
    uint8_t in_field;             /* parser is inside a header field name */
    enum http_error error;        /* why parsing stopped */
    const char *error_text;       /* static text for the log */
    uint64_t content_length;      /* when has_body and not chunked */
    unsigned header_count;
    int16_t index[HTTP_H_COUNT_]; /* first header with that id, or -1 */
    struct http_header headers[HTTP_MAX_HEADERS];
};

/* Prepares <h> for its first message. <is_response> picks the parser type.
 * Limits come from the config; 0 means no limit. */
void http_head_init(struct http_head *h, bool is_response, size_t max_head, size_t max_target,
                    uint64_t max_body);

/* Forgets the last message and gets ready for the next one on the same
 * connection (keep-alive). */
void http_head_reset(struct http_head *h);

/*
 * Feeds the head bytes <buf>[0..<len>), which always start at the head's
 * first byte (the bytes given in earlier calls come again, unchanged, plus
 * new ones). Returns HTTP_PARSE_DONE once the head is complete (head_len set;
 * the body, if any, starts at buf + head_len), HTTP_PARSE_AGAIN when more is
 * needed, HTTP_PARSE_ERROR with h->error set otherwise.
 */
enum http_parse http_head_parse(struct http_head *h, const char *buf, size_t len);

/*
 * Frames body bytes <buf>[0..<len>) of the current message. Sets *<used> to
 * the bytes that belong to this message (all of them unless it ended).
 * Returns HTTP_PARSE_DONE when the message ended within them,
 * HTTP_PARSE_UPGRADE when it ended and the connection switches protocol,
 * HTTP_PARSE_AGAIN when more body is expected, HTTP_PARSE_ERROR on bad
 * framing (h->error set). When <decoded> is not NULL the body's payload
 * (without chunk framing) is appended to it as well.
 */
enum http_parse http_body_parse(struct http_head *h, const char *buf, size_t len, size_t *used,
                                struct evbuffer *decoded);

/* A close-delimited body ended with the connection. Returns HTTP_PARSE_DONE
 * when that was a proper end of the message, HTTP_PARSE_ERROR if truncated. */
enum http_parse http_body_eof(struct http_head *h);

/* Whether the message's body length is given by the connection closing. */
bool http_body_until_close(const struct http_head *h);

/* The HTTP status that answers <err> (400, 413, 414, 431, 405, 502). */
unsigned http_error_status(enum http_error err);

/* The standard reason phrase of <status> ("Bad Request"); "Unknown" if none. */
const char *http_reason(unsigned status);

/* A header's value as (pointer, length) into <buf>; NULL when absent. */
const char *http_header_value(const struct http_head *h, const char *buf, enum http_header_id id,
                              size_t *len);

/* Whether the method of the request in <h> is idempotent (RFC 9110 9.2.2). */
bool http_method_idempotent(const struct http_head *h);

/* What the forwarded request head needs from the client connection. */
struct http_forward_info {
    const char *client_ip;    /* text, for X-Forwarded-For / Forwarded */
    const char *proto;        /* "http" or "https" */
    const char *default_host; /* Host to send when an HTTP/1.0 request has none; may be NULL */
    const char *extra;        /* complete header lines ("Name: v\r\n...") to add; may be NULL */
};

/*
 * Appends the request head <h> (bytes in <buf>) to <out> as it goes to a
 * clone: request line in HTTP/1.1, every end-to-end header, the hop-by-hop
 * ones left out, X-Forwarded-For / -Proto, Forwarded and Via set, and
 * "Connection: upgrade" plus Upgrade kept when the client asks to upgrade.
 * A target in absolute-form goes out in origin-form ("*" for an OPTIONS
 * without path or query) with "Host: <authority>" in place of the Host
 * received, which RFC 9112 3.2.2 says to ignore.
 * Returns 0, or -1 when <out> could not grow.
 */
int http_request_serialize(const struct http_head *h, const char *buf,
                           const struct http_forward_info *info, struct evbuffer *out);

/*
 * Appends the response head <h> (bytes in <buf>) to <out> as it goes to the
 * client: status line, <extra_first> (complete header lines, or NULL: the
 * proxy's own Cache-Status goes before any the clone sent), end-to-end
 * headers, Via, and Connection as given by <keep_alive> / <http10_client>;
 * for an upgrade (101) Connection: upgrade and Upgrade. <drop_framing>
 * leaves Transfer-Encoding out (the body is sent decoded, close-delimited,
 * to an HTTP/1.0 client). A header the caller marked hop (say the cache's
 * tag header) is left out as hop-by-hop ones are. 0 or -1.
 */
int http_response_serialize(const struct http_head *h, const char *buf, const char *extra_first,
                            bool keep_alive, bool http10_client, bool drop_framing,
                            struct evbuffer *out);

/* Every header of <h> with <id>, in order: call with *<pos> = 0 first;
 * returns the next one's value (length in *<len>) or NULL after the last. */
const char *http_header_next(const struct http_head *h, const char *buf, enum http_header_id id,
                             unsigned *pos, size_t *len);

/* The header of <h> named <name> (any case; for names without an id), or -1. */
int http_header_find(const struct http_head *h, const char *buf, const char *name, size_t name_len);

/* Appends a complete short error response (status line, Content-Type,
 * Content-Length, Connection: close unless <keep_alive>, a one-line body). */
int http_error_response(unsigned status, bool keep_alive, const char *extra_headers,
                        struct evbuffer *out);

#endif /* CLONEGATE_HTTP_H */
