/*
 * http: llhttp glue, header classification, hop-by-hop rules, serialising.
 *
 * Owns nothing on the heap: a struct http_head lives inside its connection
 * and the spans it records point into bytes the caller owns. The parser
 * settings are one static, read-only table shared by every thread.
 * llhttp runs in strict mode with no lenient flag; what it lets through
 * that could still smuggle a request (obs-fold, a missing or repeated Host,
 * control bytes in a value, a bare LF ending the request line or the head)
 * is refused here, and an absolute-form target overrides Host.
 */
#include "http.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#define VIA_TOKEN       "clonegate"
#define SERIALIZE_EXTRA 768 /* room for the headers we add, beyond the head itself */
#define MAX_CONN_TOKENS 16  /* Connection: tokens we honour */
#define KNOWN_SLOTS     128 /* hash slots for the known header names (a power of two) */

/* ------------------------------------------------------------ header names */

struct known_header {
    const char *name;
    size_t len;
    enum http_header_id id;
    uint8_t hop;
};

#define KH(s, id, hop)                                                                             \
    {                                                                                              \
        s, sizeof(s) - 1, id, hop                                                                  \
    }
static const struct known_header known_headers[] = {
    KH("connection", HTTP_H_CONNECTION, 1),
    KH("keep-alive", HTTP_H_KEEP_ALIVE, 1),
    KH("proxy-connection", HTTP_H_PROXY_CONNECTION, 1),
    KH("proxy-authenticate", HTTP_H_PROXY_AUTHENTICATE, 1),
    KH("proxy-authorization", HTTP_H_PROXY_AUTHORIZATION, 1),
    KH("te", HTTP_H_TE, 1),
    KH("trailer", HTTP_H_TRAILER, 1),
    /* The body is forwarded with its framing unchanged, so the framing
     * header goes with it (except to HTTP/1.0 clients, see serialize). */
    KH("transfer-encoding", HTTP_H_TRANSFER_ENCODING, 0),
    KH("upgrade", HTTP_H_UPGRADE, 1),
    KH("host", HTTP_H_HOST, 0),
    KH("content-length", HTTP_H_CONTENT_LENGTH, 0),
    KH("expect", HTTP_H_EXPECT, 0),
    KH("x-forwarded-for", HTTP_H_X_FORWARDED_FOR, 1),
    KH("x-forwarded-proto", HTTP_H_X_FORWARDED_PROTO, 1),
    KH("forwarded", HTTP_H_FORWARDED, 1),
    KH("via", HTTP_H_VIA, 1),
    KH("referer", HTTP_H_REFERER, 0),
    KH("user-agent", HTTP_H_USER_AGENT, 0),
    KH("date", HTTP_H_DATE, 0),
    KH("server", HTTP_H_SERVER, 0),
    KH("cache-control", HTTP_H_CACHE_CONTROL, 0),
    KH("pragma", HTTP_H_PRAGMA, 0),
    KH("expires", HTTP_H_EXPIRES, 0),
    KH("age", HTTP_H_AGE, 0),
    KH("last-modified", HTTP_H_LAST_MODIFIED, 0),
    KH("etag", HTTP_H_ETAG, 0),
    KH("vary", HTTP_H_VARY, 0),
    KH("set-cookie", HTTP_H_SET_COOKIE, 0),
    KH("authorization", HTTP_H_AUTHORIZATION, 0),
    KH("if-none-match", HTTP_H_IF_NONE_MATCH, 0),
    KH("if-modified-since", HTTP_H_IF_MODIFIED_SINCE, 0),
    KH("if-match", HTTP_H_IF_MATCH, 0),
    KH("if-unmodified-since", HTTP_H_IF_UNMODIFIED_SINCE, 0),
    KH("if-range", HTTP_H_IF_RANGE, 0),
    KH("range", HTTP_H_RANGE, 0),
    KH("location", HTTP_H_LOCATION, 0),
    KH("content-location", HTTP_H_CONTENT_LOCATION, 0),
    KH("cache-status", HTTP_H_CACHE_STATUS, 0),
};
#undef KH
_Static_assert(sizeof(known_headers) / sizeof(known_headers[0]) < KNOWN_SLOTS / 2,
               "known header slots too full");

/* Whether <name> (a token) equals the lower-case literal <lit> of the same
 * length, ignoring ASCII case: token bytes are letters, digits and marks,
 * and OR-ing 0x20 folds only letters' case among those a literal holds. */
static bool eq_lower(const char *name, const char *lit, size_t len)
{
    /* whole words, the last one overlapping: OR-ing 0x20 into each byte
     * folds them alike */
    if (len >= 8) {
        uint64_t a, b;
        for (size_t i = 0; i + 8 < len; i += 8) {
            memcpy(&a, name + i, 8);
            memcpy(&b, lit + i, 8);
            if ((a | UINT64_C(0x2020202020202020)) != b)
                return false;
        }
        memcpy(&a, name + len - 8, 8);
        memcpy(&b, lit + len - 8, 8);
        return (a | UINT64_C(0x2020202020202020)) == b;
    }
    if (len >= 4) {
        uint32_t a, b, c, d;
        memcpy(&a, name, 4);
        memcpy(&b, lit, 4);
        memcpy(&c, name + len - 4, 4);
        memcpy(&d, lit + len - 4, 4);
        return (a | UINT32_C(0x20202020)) == b && (c | UINT32_C(0x20202020)) == d;
    }
    for (size_t i = 0; i < len; i++)
        if ((char)(name[i] | 0x20) != lit[i])
            return false;
    return true;
}

/* Known names by a hash of length, first and last byte (case folded):
 * slot i holds known_headers index + 1, 0 empty; collisions probe on. The
 * factors make every known name land in its own slot. */
static uint8_t known_slot[KNOWN_SLOTS];
static pthread_once_t known_once = PTHREAD_ONCE_INIT;

static unsigned known_hash(const char *name, size_t len)
{
    return ((unsigned)len * 11 + (unsigned)(unsigned char)(name[0] | 0x20) * 51 +
            (unsigned)(unsigned char)(name[len - 1] | 0x20)) &
           (KNOWN_SLOTS - 1);
}

static void known_build(void)
{
    for (size_t i = 0; i < sizeof(known_headers) / sizeof(known_headers[0]); i++) {
        unsigned h = known_hash(known_headers[i].name, known_headers[i].len);
        while (known_slot[h])
            h = (h + 1) & (KNOWN_SLOTS - 1);
        known_slot[h] = (uint8_t)(i + 1);
    }
}

static void classify(struct http_header *hd, const char *name, size_t len)
{
    hd->id = HTTP_H_OTHER;
    hd->hop = 0;
    if (len == 0)
        return;
    for (unsigned h = known_hash(name, len); known_slot[h]; h = (h + 1) & (KNOWN_SLOTS - 1)) {
        const struct known_header *k = &known_headers[known_slot[h] - 1];
        if (k->len == len && eq_lower(name, k->name, len)) {
            hd->id = (uint8_t)k->id;
            hd->hop = k->hop;
            return;
        }
    }
    if (len > 6 && eq_lower(name, "proxy-", 6))
        hd->hop = 1;
}

/* ------------------------------------------------------------ llhttp glue */

static struct http_head *head_of(llhttp_t *p)
{
    return (struct http_head *)p->data;
}

static int fail(llhttp_t *p, enum http_error err, const char *why)
{
    struct http_head *h = head_of(p);
    h->error = err;
    h->error_text = why;
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

/* Grows <s> to end at at+len: llhttp may hand one element over in pieces. */
static void extend(struct http_head *h, struct http_span *s, const char *at, size_t len)
{
    uint32_t off = (uint32_t)(at - h->base);
    if (s->len == 0)
        s->off = off;
    s->len = (uint32_t)(off + len - s->off);
}

static int on_method(llhttp_t *p, const char *at, size_t len)
{
    extend(head_of(p), &head_of(p)->method, at, len);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_head *h = head_of(p);
    extend(h, &h->target, at, len);
    if (h->max_target && h->target.len > h->max_target)
        return fail(p, HTTP_ERR_URI_TOO_LONG, "request target too long");
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    extend(head_of(p), &head_of(p)->reason, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_head *h = head_of(p);
    if (h->head_done)
        return 0; /* trailer fields travel as body bytes; the head stays as it was */
    if (!h->in_field) {
        if (h->header_count == HTTP_MAX_HEADERS)
            return fail(p, h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_HEAD_TOO_LARGE,
                        "too many header fields");
        struct http_header *hd = &h->headers[h->header_count++];
        memset(hd, 0, sizeof(*hd));
        h->in_field = 1;
    }
    extend(h, &h->headers[h->header_count - 1].name, at, len);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_head *h = head_of(p);
    if (h->head_done)
        return 0;
    if (!h->in_field || h->headers[h->header_count - 1].name.len == 0)
        return fail(p, h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_BAD_REQUEST,
                    "empty header field name");
    h->in_field = 0;
    /* an empty value is never reported: it sits right after the name */
    struct http_header *hd = &h->headers[h->header_count - 1];
    hd->value.off = hd->name.off + hd->name.len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_head *h = head_of(p);
    if (h->head_done)
        return 0;
    /* obs-fold and stray CR/LF reach us inside the value: refuse them */
    if (memchr(at, '\r', len) || memchr(at, '\n', len))
        return fail(p, h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_BAD_REQUEST,
                    "line folding or bare CR/LF in a header value");
    struct http_header *hd = &h->headers[h->header_count - 1];
    uint32_t off = (uint32_t)(at - h->base);
    if (hd->value.len == 0) {
        hd->value.off = off;
    } else if (off != hd->value.off + hd->value.len) {
        /* a value resumed after a gap: the gap was a folded line break */
        return fail(p, h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_BAD_REQUEST,
                    "line folding in a header value");
    }
    hd->value.len = (uint32_t)(off + len - hd->value.off);
    return 0;
}

static bool token_eq(const char *a, size_t alen, const char *lit)
{
    return strlen(lit) == alen && strncasecmp(a, lit, alen) == 0;
}

/* Marks the headers that a Connection header names as hop-by-hop. The
 * framing headers and Host are never dropped that way: the body goes out
 * framed as it came in. */
static void apply_connection_tokens(struct http_head *h)
{
    if (h->index[HTTP_H_CONNECTION] < 0)
        return;
    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *c = &h->headers[i];
        if (c->id != HTTP_H_CONNECTION)
            continue;
        const char *v = h->base + c->value.off;
        size_t vlen = c->value.len, pos = 0;
        for (unsigned n = 0; pos < vlen && n < MAX_CONN_TOKENS; n++) {
            while (pos < vlen && (v[pos] == ' ' || v[pos] == '\t' || v[pos] == ','))
                pos++;
            size_t start = pos;
            while (pos < vlen && v[pos] != ',' && v[pos] != ' ' && v[pos] != '\t')
                pos++;
            size_t tlen = pos - start;
            if (tlen == 0)
                break;
            if (token_eq(v + start, tlen, "close"))
                h->conn_close = 1;
            /* a known name matches by id, any other by its bytes */
            struct http_header tok;
            classify(&tok, v + start, tlen);
            if (tok.id == HTTP_H_CONTENT_LENGTH || tok.id == HTTP_H_TRANSFER_ENCODING ||
                tok.id == HTTP_H_HOST)
                continue;
            for (unsigned j = 0; j < h->header_count; j++) {
                struct http_header *o = &h->headers[j];
                if (o->id != tok.id)
                    continue;
                if (tok.id != HTTP_H_OTHER ||
                    (o->name.len == tlen &&
                     strncasecmp(h->base + o->name.off, v + start, tlen) == 0))
                    o->hop = 1;
            }
        }
    }
}

/* Whether the last Transfer-Encoding value, as forwarded, ends in chunked. */
static bool last_coding_chunked(const struct http_head *h)
{
    for (unsigned i = h->header_count; i-- > 0;) {
        const struct http_header *hd = &h->headers[i];
        if (hd->id != HTTP_H_TRANSFER_ENCODING)
            continue;
        const char *v = h->base + hd->value.off;
        size_t len = hd->value.len;
        return len >= 7 && strncasecmp(v + len - 7, "chunked", 7) == 0;
    }
    return false;
}

/* Whether <ch> may stand in a reg-name or IPv4address (RFC 3986 3.2.2):
 * unreserved, pct-encoded, sub-delims. */
static bool host_char(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != '\0' && strchr("-._~%!$&'()*+,;=", ch) != NULL;
}

/* Whether <v> is a valid Host value: uri-host [ ":" port ] (RFC 9112 3.2),
 * where uri-host is an IP-literal in brackets or a reg-name, and port is
 * digits up to 65535; empty allowed. */
static bool host_valid(const char *v, size_t len)
{
    size_t i = 0;
    if (len > 0 && v[0] == '[') {
        for (i = 1; i < len && v[i] != ']'; i++) {
            unsigned char ch = (unsigned char)v[i];
            if (!(isxdigit(ch) || ch == ':' || ch == '.'))
                return false;
        }
        if (i == len || i == 1)
            return false; /* no closing bracket, or nothing inside */
        i++;
    } else {
        while (i < len && host_char((unsigned char)v[i]))
            i++;
    }
    if (i == len)
        return true;
    if (v[i] != ':')
        return false;
    unsigned long port = 0;
    for (i++; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        port = port * 10 + (unsigned long)(v[i] - '0');
        if (port > 65535)
            return false;
    }
    return true;
}

/* For a request target in absolute-form (RFC 9112 3.2.2), records the
 * spans of its authority and of its path and query, and marks the Host
 * received hop-by-hop: a server must ignore it and use the authority. The
 * cache keys such a request by the same authority, so what is stored and
 * what the clone was asked for agree. Returns 0, or fail()'s code. */
static int absolute_form(llhttp_t *p, struct http_head *h)
{
    const char *t = h->base + h->target.off;
    size_t len = h->target.len, i = 0;

    while (i < len && t[i] != ':')
        i++;
    if (!(i == 4 && strncasecmp(t, "http", 4) == 0) && !(i == 5 && strncasecmp(t, "https", 5) == 0))
        return fail(p, HTTP_ERR_BAD_REQUEST, "request target scheme is not http or https");
    if (len - i < 3 || t[i + 1] != '/' || t[i + 2] != '/')
        return fail(p, HTTP_ERR_BAD_REQUEST, "request target without an authority");
    size_t start = i + 3, end = start;
    while (end < len && t[end] != '/' && t[end] != '?')
        end++;
    if (end == start)
        return fail(p, HTTP_ERR_BAD_REQUEST, "request target without an authority");
    /* RFC 9110 4.2.4: userinfo is not allowed in an http(s) URI */
    if (memchr(t + start, '@', end - start))
        return fail(p, HTTP_ERR_BAD_REQUEST, "userinfo in the request target");
    if (!host_valid(t + start, end - start))
        return fail(p, HTTP_ERR_BAD_REQUEST, "invalid authority in the request target");
    h->authority.off = h->target.off + (uint32_t)start;
    h->authority.len = (uint32_t)(end - start);
    h->origin_form.off = h->target.off + (uint32_t)end;
    h->origin_form.len = (uint32_t)(len - end);
    if (h->index[HTTP_H_HOST] >= 0)
        h->headers[h->index[HTTP_H_HOST]].hop = 1;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_head *h = head_of(p);
    unsigned hosts = 0;

    pthread_once(&known_once, known_build);
    memset(h->index, 0xff, sizeof(h->index)); /* every entry -1 */
    for (unsigned i = 0; i < h->header_count; i++) {
        struct http_header *hd = &h->headers[i];
        const char *v = h->base + hd->value.off;
        classify(hd, h->base + hd->name.off, hd->name.len);
        if (h->index[hd->id] == -1)
            h->index[hd->id] = (int16_t)i;
        /* trailing whitespace is not part of a value (RFC 9110 5.5) */
        while (hd->value.len > 0 && (v[hd->value.len - 1] == ' ' || v[hd->value.len - 1] == '\t'))
            hd->value.len--;
        if (hd->id == HTTP_H_HOST)
            hosts++;
        if (hd->id == HTTP_H_EXPECT && token_eq(v, hd->value.len, "100-continue"))
            h->expect_continue = 1;
    }
    apply_connection_tokens(h);

    h->version_minor = llhttp_get_http_minor(p);
    if (llhttp_get_http_major(p) != 1)
        return fail(p, h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_BAD_REQUEST,
                    "unsupported HTTP version");
    h->keep_alive = (uint8_t)llhttp_should_keep_alive(p);
    h->upgrade = p->upgrade;
    h->chunked = (p->flags & F_CHUNKED) != 0;
    h->content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0;

    if (h->is_response) {
        h->status = (unsigned)llhttp_get_status_code(p);
        if (h->status < 100 || h->status > 999)
            return fail(p, HTTP_ERR_BAD_RESPONSE, "invalid status code");
        /* responses that never have a body, whatever their headers say */
        if (h->skip_body || h->status < 200 || h->status == 204 || h->status == 304)
            p->flags |= F_SKIPBODY;
        /* framing fields a 1xx or 204 must not carry (RFC 9110 8.6, 9112
         * 6.1): not passed on, so no client can read a body into one */
        if (h->status < 200 || h->status == 204)
            for (unsigned i = 0; i < h->header_count; i++)
                if (h->headers[i].id == HTTP_H_CONTENT_LENGTH ||
                    h->headers[i].id == HTTP_H_TRANSFER_ENCODING)
                    h->headers[i].hop = 1;
        if (h->status == 101)
            h->upgrade = 1;
        /* a coding list we read as ending in chunked while the parser did
         * not ("chunked<TAB>"): refuse rather than tell the client one
         * framing and forward another */
        if ((p->flags & F_TRANSFER_ENCODING) && !h->chunked && last_coding_chunked(h))
            return fail(p, HTTP_ERR_BAD_RESPONSE, "ambiguous response Transfer-Encoding");
    } else {
        if (llhttp_get_method(p) == HTTP_CONNECT)
            return fail(p, HTTP_ERR_METHOD, "CONNECT is not served");
        if (hosts > 1 || (hosts == 0 && h->version_minor >= 1))
            return fail(p, HTTP_ERR_BAD_REQUEST, hosts ? "more than one Host" : "missing Host");
        if (hosts == 1) {
            const struct http_header *hd = &h->headers[h->index[HTTP_H_HOST]];
            if (!host_valid(h->base + hd->value.off, hd->value.len))
                return fail(p, HTTP_ERR_BAD_REQUEST, "invalid Host");
        }
        const char *t = h->base + h->target.off;
        /* a fragment is never part of a request target (RFC 9112 3.2) */
        if (memchr(t, '#', h->target.len))
            return fail(p, HTTP_ERR_BAD_REQUEST, "fragment in the request target");
        bool asterisk = h->target.len == 1 && t[0] == '*';
        /* asterisk-form is for a server-wide OPTIONS only (RFC 9112 3.2.4) */
        if (asterisk && llhttp_get_method(p) != HTTP_OPTIONS)
            return fail(p, HTTP_ERR_BAD_REQUEST,
                        "asterisk-form target with a method other than OPTIONS");
        if (h->target.len > 0 && t[0] != '/' && !asterisk) {
            int rc = absolute_form(p, h);
            if (rc != 0)
                return rc;
        }
        /* RFC 9112 6.1 and 6.3: a request body whose length cannot be known
         * is refused, as is Transfer-Encoding in an HTTP/1.0 request */
        if ((p->flags & F_TRANSFER_ENCODING) && h->version_minor == 0)
            return fail(p, HTTP_ERR_BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request");
        if ((p->flags & F_TRANSFER_ENCODING) && !h->chunked)
            return fail(p, HTTP_ERR_BAD_REQUEST, "Transfer-Encoding without a final chunked");
        if (h->max_body && h->content_length > h->max_body)
            return fail(p, HTTP_ERR_BODY_TOO_LARGE, "request body over max_body_size");
    }
    if (p->flags & F_SKIPBODY)
        h->has_body = 0;
    else
        h->has_body = h->chunked || h->content_length > 0 || http_body_until_close(h);
    h->head_done = 1;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_head *h = head_of(p);
    h->body_seen += len;
    if (!h->is_response && h->max_body && h->body_seen > h->max_body)
        return fail(p, HTTP_ERR_BODY_TOO_LARGE, "request body over max_body_size");
    if (h->decoded && evbuffer_add(h->decoded, at, len) == -1)
        return fail(p, HTTP_ERR_BAD_RESPONSE, "out of memory");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    head_of(p)->message_done = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_method = on_method,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_head_init(struct http_head *h, bool is_response, size_t max_head, size_t max_target,
                    uint64_t max_body)
{
    memset(h, 0, offsetof(struct http_head, headers));
    llhttp_init(&h->parser, is_response ? HTTP_RESPONSE : HTTP_REQUEST, &parser_settings);
    h->parser.data = h;
    h->is_response = is_response;
    h->max_head = max_head;
    h->max_target = max_target;
    h->max_body = max_body;
}

void http_head_reset(struct http_head *h)
{
    llhttp_t parser = h->parser;
    bool is_response = h->is_response;
    size_t max_head = h->max_head, max_target = h->max_target;
    uint64_t max_body = h->max_body;

    memset(h, 0, offsetof(struct http_head, headers));
    h->parser = parser;
    h->parser.data = h;
    h->is_response = is_response;
    h->max_head = max_head;
    h->max_target = max_target;
    h->max_body = max_body;
    /* a message ended with a pause: clear it, then start afresh */
    llhttp_reset(&h->parser);
}

static enum http_error parser_error(const struct http_head *h)
{
    if (h->error != HTTP_ERR_NONE)
        return h->error;
    return h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_BAD_REQUEST;
}

/* Whether the head's <len> bytes at <buf> hold a line feed without its
 * carriage return: llhttp takes one as the end of the request line, of the
 * head, or of an empty line before the request line. */
static bool has_bare_lf(const char *buf, size_t len)
{
    const char *p = buf, *end = buf + len;

    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        if (p == buf || p[-1] != '\r')
            return true;
        p++;
    }
    return false;
}

enum http_parse http_head_parse(struct http_head *h, const char *buf, size_t len)
{
    h->base = buf;
    if (len <= h->parsed)
        return HTTP_PARSE_AGAIN;
    const char *from = buf + h->parsed;
    llhttp_errno_t err = llhttp_execute(&h->parser, from, len - h->parsed);

    if (err == HPE_PAUSED && h->head_done) {
        h->head_len = (size_t)(llhttp_get_error_pos(&h->parser) - buf);
        h->parsed = h->head_len;
        llhttp_resume(&h->parser);
        if (h->max_head && h->head_len > h->max_head) {
            h->error = h->is_response ? HTTP_ERR_BAD_RESPONSE : HTTP_ERR_HEAD_TOO_LARGE;
            h->error_text = h->is_response ? "response head too large" : "request head too large";
            return HTTP_PARSE_ERROR;
        }
        /* RFC 9112 2.2 lets a server take a bare LF as a line end; a proxy
         * that does, before a server that does not, invites smuggling */
        if (!h->is_response && has_bare_lf(buf, h->head_len)) {
            h->error = HTTP_ERR_BAD_REQUEST;
            h->error_text = "bare LF in the request head";
            return HTTP_PARSE_ERROR;
        }
        return HTTP_PARSE_DONE;
    }
    if (err != HPE_OK) {
        h->error = parser_error(h);
        if (!h->error_text)
            h->error_text = llhttp_get_error_reason(&h->parser);
        return HTTP_PARSE_ERROR;
    }
    h->parsed = len;
    if (h->max_head && len > h->max_head) {
        h->error = HTTP_ERR_HEAD_TOO_LARGE;
        h->error_text = h->is_response ? "response head too large" : "request head too large";
        if (h->is_response)
            h->error = HTTP_ERR_BAD_RESPONSE;
        return HTTP_PARSE_ERROR;
    }
    return HTTP_PARSE_AGAIN;
}

enum http_parse http_body_parse(struct http_head *h, const char *buf, size_t len, size_t *used,
                                struct evbuffer *decoded)
{
    h->decoded = decoded;
    *used = 0;
    if (h->message_done)
        return HTTP_PARSE_DONE;
    llhttp_errno_t err = llhttp_execute(&h->parser, buf, len);
    h->decoded = NULL;
    if (err == HPE_OK) {
        *used = len;
        return HTTP_PARSE_AGAIN;
    }
    if (err == HPE_PAUSED && h->message_done) {
        *used = (size_t)(llhttp_get_error_pos(&h->parser) - buf);
        return h->upgrade ? HTTP_PARSE_UPGRADE : HTTP_PARSE_DONE;
    }
    h->error = parser_error(h);
    if (!h->error_text)
        h->error_text = llhttp_get_error_reason(&h->parser);
    return HTTP_PARSE_ERROR;
}

enum http_parse http_body_eof(struct http_head *h)
{
    if (h->message_done)
        return HTTP_PARSE_DONE;
    /* a message without a body ends without any byte: let the parser see it */
    size_t used;
    if (h->head_done && http_body_parse(h, "", 0, &used, NULL) == HTTP_PARSE_DONE)
        return HTTP_PARSE_DONE;
    llhttp_errno_t err = llhttp_finish(&h->parser);
    if ((err == HPE_OK || err == HPE_PAUSED) && h->message_done)
        return HTTP_PARSE_DONE;
    h->error = parser_error(h);
    h->error_text = "connection closed before the message ended";
    return HTTP_PARSE_ERROR;
}

bool http_body_until_close(const struct http_head *h)
{
    return h->is_response && !h->chunked && !(h->parser.flags & F_CONTENT_LENGTH) &&
           !(h->parser.flags & F_SKIPBODY) && h->status != 101;
}

/* ------------------------------------------------------------ small helpers */

unsigned http_error_status(enum http_error err)
{
    switch (err) {
    case HTTP_ERR_HEAD_TOO_LARGE:
        return 431;
    case HTTP_ERR_URI_TOO_LONG:
        return 414;
    case HTTP_ERR_BODY_TOO_LARGE:
        return 413;
    case HTTP_ERR_METHOD:
        return 405;
    case HTTP_ERR_BAD_RESPONSE:
        return 502;
    case HTTP_ERR_NONE:
    case HTTP_ERR_BAD_REQUEST:
        break;
    }
    return 400;
}

const char *http_reason(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

const char *http_header_value(const struct http_head *h, const char *buf, enum http_header_id id,
                              size_t *len)
{
    int i = h->index[id];
    if (i < 0)
        return NULL;
    *len = h->headers[i].value.len;
    return buf + h->headers[i].value.off;
}

const char *http_header_next(const struct http_head *h, const char *buf, enum http_header_id id,
                             unsigned *pos, size_t *len)
{
    if (*pos == 0) {
        int first = h->index[id];
        if (first < 0)
            return NULL;
        *pos = (unsigned)first;
    }
    for (unsigned i = *pos; i < h->header_count; i++) {
        if (h->headers[i].id == id) {
            *pos = i + 1;
            *len = h->headers[i].value.len;
            return buf + h->headers[i].value.off;
        }
    }
    *pos = h->header_count;
    return NULL;
}

int http_header_find(const struct http_head *h, const char *buf, const char *name, size_t name_len)
{
    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->name.len == name_len && strncasecmp(buf + hd->name.off, name, name_len) == 0)
            return (int)i;
    }
    return -1;
}

bool http_method_idempotent(const struct http_head *h)
{
    switch (llhttp_get_method((llhttp_t *)(uintptr_t)&h->parser)) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_TRACE:
        return true;
    default:
        return false;
    }
}

/* ------------------------------------------------------------ serialising */

struct writer {
    char *p;   /* next byte */
    char *end; /* one past the reserved space */
};

static void put(struct writer *w, const char *s, size_t len)
{
    if ((size_t)(w->end - w->p) < len) {
        w->p = w->end + 1; /* overflow: detected by the caller */
        return;
    }
    memcpy(w->p, s, len);
    w->p += len;
}

static void put_str(struct writer *w, const char *s)
{
    put(w, s, strlen(s));
}

/* <s> a string literal: its length is known at compile time */
#define PUT_LIT(w, s) put(w, s, sizeof(s) - 1)

static void put_span(struct writer *w, const char *buf, struct http_span s)
{
    put(w, buf + s.off, s.len);
}

static void put_uint(struct writer *w, unsigned v)
{
    char tmp[16];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 && n > 0);
    put(w, tmp + n, sizeof(tmp) - n);
}

/* Opens the line "Name: v1, v2, " from every header with <id> (or just
 * "Name: " when there is none); the caller appends its own element. */
static void put_joined(struct writer *w, const struct http_head *h, const char *buf,
                       enum http_header_id id, const char *name, size_t name_len)
{
    put(w, name, name_len);
    put(w, ": ", 2);
    if (h->index[id] < 0)
        return;
    for (unsigned i = (unsigned)h->index[id]; i < h->header_count; i++) {
        if (h->headers[i].id != id || h->headers[i].value.len == 0)
            continue;
        put_span(w, buf, h->headers[i].value);
        put(w, ", ", 2);
    }
}

#define PUT_JOINED(w, h, buf, id, lit) put_joined(w, h, buf, id, lit, sizeof(lit) - 1)

/* Whether header <hd> stands in <buf> exactly as put_headers() writes it,
 * "Name: value\r\n", so its line can be copied whole. */
static bool line_as_is(const struct http_header *hd, const char *buf)
{
    uint32_t colon = hd->name.off + hd->name.len, end = hd->value.off + hd->value.len;
    return hd->value.off == colon + 2 && buf[colon] == ':' && buf[colon + 1] == ' ' &&
           buf[end] == '\r' && buf[end + 1] == '\n';
}

static void put_headers(struct writer *w, const struct http_head *h, const char *buf,
                        bool drop_framing)
{
    /* adjacent lines kept as they came go out in one copy */
    uint32_t run_off = 0, run_end = 0;
    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->hop || (drop_framing && hd->id == HTTP_H_TRANSFER_ENCODING))
            continue;
        if (line_as_is(hd, buf)) {
            if (run_end != hd->name.off) {
                put(w, buf + run_off, run_end - run_off);
                run_off = hd->name.off;
            }
            run_end = hd->value.off + hd->value.len + 2;
            continue;
        }
        put(w, buf + run_off, run_end - run_off);
        run_off = run_end = 0;
        put_span(w, buf, hd->name);
        put(w, ": ", 2);
        put_span(w, buf, hd->value);
        put(w, "\r\n", 2);
    }
    put(w, buf + run_off, run_end - run_off);
}

/* Connection: upgrade and every non-empty Upgrade value, joined: the lines
 * they came in were skipped as hop-by-hop, so they fit in their room. */
static void put_upgrade(struct writer *w, const struct http_head *h, const char *buf)
{
    PUT_LIT(w, "Connection: upgrade\r\n");
    if (h->index[HTTP_H_UPGRADE] < 0)
        return;
    bool first = true;
    for (unsigned i = (unsigned)h->index[HTTP_H_UPGRADE]; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (hd->id != HTTP_H_UPGRADE || hd->value.len == 0)
            continue;
        if (first)
            PUT_LIT(w, "Upgrade: ");
        else
            put(w, ", ", 2);
        put_span(w, buf, hd->value);
        first = false;
    }
    if (!first)
        put(w, "\r\n", 2);
}

static size_t extra_room(const struct http_head *h)
{
    /* "Host: <authority>\r\n" for an absolute-form target; the shorter
     * target pays for most of it, this keeps the sum obvious */
    size_t room = SERIALIZE_EXTRA + (h->authority.len ? h->authority.len + 8 : 0);
    /* joined headers repeat their values once more at most */
    for (unsigned i = 0; i < h->header_count; i++) {
        enum http_header_id id = h->headers[i].id;
        if (id == HTTP_H_X_FORWARDED_FOR || id == HTTP_H_FORWARDED || id == HTTP_H_VIA)
            room += h->headers[i].value.len + 4;
    }
    return room;
}

static int commit(struct evbuffer *out, struct evbuffer_iovec *vec, struct writer *w)
{
    if (w->p > w->end)
        return -1;
    vec->iov_len = (size_t)(w->p - (char *)vec->iov_base);
    return evbuffer_commit_space(out, vec, 1);
}

int http_request_serialize(const struct http_head *h, const char *buf,
                           const struct http_forward_info *info, struct evbuffer *out)
{
    struct evbuffer_iovec vec;
    size_t room = h->head_len + extra_room(h) + (info->extra ? strlen(info->extra) : 0);
    if (evbuffer_reserve_space(out, (ev_ssize_t)room, &vec, 1) < 1)
        return -1;
    struct writer w = {vec.iov_base, (char *)vec.iov_base + room};
    bool v6 = strchr(info->client_ip, ':') != NULL;

    put_span(&w, buf, h->method);
    put(&w, " ", 1);
    if (h->authority.len == 0) {
        put_span(&w, buf, h->target);
    } else if (h->origin_form.len == 0 && h->parser.method == HTTP_OPTIONS) {
        put(&w, "*", 1); /* RFC 9112 3.2.4 */
    } else {
        if (h->origin_form.len == 0 || buf[h->origin_form.off] != '/')
            put(&w, "/", 1); /* an empty path is "/" (RFC 9110 4.2.3) */
        put_span(&w, buf, h->origin_form);
    }
    put(&w, " HTTP/1.1\r\n", 11);
    if (h->authority.len) {
        PUT_LIT(&w, "Host: ");
        put_span(&w, buf, h->authority);
        put(&w, "\r\n", 2);
    }
    put_headers(&w, h, buf, false);
    PUT_JOINED(&w, h, buf, HTTP_H_X_FORWARDED_FOR, "X-Forwarded-For");
    put_str(&w, info->client_ip);
    PUT_LIT(&w, "\r\nX-Forwarded-Proto: ");
    put_str(&w, info->proto);
    put(&w, "\r\n", 2);
    PUT_JOINED(&w, h, buf, HTTP_H_FORWARDED, "Forwarded");
    if (v6)
        PUT_LIT(&w, "for=\"[");
    else
        PUT_LIT(&w, "for=");
    put_str(&w, info->client_ip);
    if (v6)
        PUT_LIT(&w, "]\";proto=");
    else
        PUT_LIT(&w, ";proto=");
    put_str(&w, info->proto);
    put(&w, "\r\n", 2);
    PUT_JOINED(&w, h, buf, HTTP_H_VIA, "Via");
    if (h->version_minor)
        PUT_LIT(&w, "1.1 " VIA_TOKEN "\r\n");
    else
        PUT_LIT(&w, "1.0 " VIA_TOKEN "\r\n");
    if (info->extra)
        put_str(&w, info->extra);
    if (h->index[HTTP_H_HOST] < 0 && h->authority.len == 0 && info->default_host) {
        PUT_LIT(&w, "Host: ");
        put_str(&w, info->default_host);
        put(&w, "\r\n", 2);
    }
    if (h->upgrade)
        put_upgrade(&w, h, buf);
    put(&w, "\r\n", 2);
    return commit(out, &vec, &w);
}

int http_response_serialize(const struct http_head *h, const char *buf, const char *extra_first,
                            bool keep_alive, bool http10_client, bool drop_framing,
                            struct evbuffer *out)
{
    struct evbuffer_iovec vec;
    size_t room = h->head_len + extra_room(h) + (extra_first ? strlen(extra_first) : 0);
    if (evbuffer_reserve_space(out, (ev_ssize_t)room, &vec, 1) < 1)
        return -1;
    struct writer w = {vec.iov_base, (char *)vec.iov_base + room};

    put(&w, "HTTP/1.1 ", 9);
    put_uint(&w, h->status);
    put(&w, " ", 1);
    if (h->reason.len)
        put_span(&w, buf, h->reason);
    else
        put_str(&w, http_reason(h->status));
    put(&w, "\r\n", 2);
    if (extra_first)
        put_str(&w, extra_first);
    put_headers(&w, h, buf, drop_framing);
    PUT_JOINED(&w, h, buf, HTTP_H_VIA, "Via");
    if (h->version_minor)
        PUT_LIT(&w, "1.1 " VIA_TOKEN "\r\n");
    else
        PUT_LIT(&w, "1.0 " VIA_TOKEN "\r\n");
    if (h->status == 101)
        put_upgrade(&w, h, buf);
    else if (!keep_alive)
        PUT_LIT(&w, "Connection: close\r\n");
    else if (http10_client)
        PUT_LIT(&w, "Connection: keep-alive\r\n");
    put(&w, "\r\n", 2);
    return commit(out, &vec, &w);
}

int http_error_response(unsigned status, bool keep_alive, const char *extra_headers,
                        struct evbuffer *out)
{
    const char *reason = http_reason(status);
    return evbuffer_add_printf(out,
                               "HTTP/1.1 %u %s\r\nContent-Type: text/plain\r\n"
                               "Content-Length: %zu\r\n%s%s\r\n%u %s\n",
                               status, reason, strlen(reason) + 5,
                               keep_alive ? "" : "Connection: close\r\n",
                               extra_headers ? extra_headers : "", status, reason) < 0
               ? -1
               : 0;
}
