/*
 * fuzz_request: libFuzzer target for request heads and request bodies.
 *
 * The input is what a client sends: http_head_parse() gets it whole, and
 * again in two calls split at a point derived from the input (each call
 * from an exact-size copy, so a read past <len> is caught); both must agree
 * on everything they report. A completed head must have every span inside
 * it and no bare LF, must serialise (it is under max_head) with no
 * hop-by-hop field left, and what is written must parse back as a request
 * with the same method, target (in origin-form, with its authority as
 * Host, when it came in absolute-form) and framing. The bytes after the
 * head go to http_body_parse() in two pieces, message after message while
 * requests are pipelined. Every check failure aborts. Owns only what it
 * allocates per input, freed before returning; no globals, one thread.
 */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "fuzz_common.h"

#define FUZZ_MAX_HEAD     2048 /* bytes: small, so the 431 paths are reached */
#define FUZZ_MAX_TARGET   256  /* bytes: 414 */
#define FUZZ_MAX_BODY     1024 /* bytes: 413 */
#define FUZZ_MAX_MESSAGES 8    /* pipelined requests followed per input */
#define FUZZ_ADDED_FIELDS 7    /* most fields serialising adds (X-F-F, X-F-P, ...) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Invariants of a completed head over <len> bytes. */
static void check_head(const struct http_head *h, size_t len)
{
    CHECK(h->head_done);
    CHECK(h->head_len > 0 && h->head_len <= len);
    CHECK(h->head_len <= FUZZ_MAX_HEAD);
    CHECK(h->error == HTTP_ERR_NONE);
    CHECK(h->method.len > 0 && h->target.len > 0);
    check_span(h, h->method);
    check_span(h, h->target);
    CHECK(h->target.len <= FUZZ_MAX_TARGET);
    if (h->authority.len) {
        /* both inside the target, the origin-form part at its end */
        CHECK(h->authority.off > h->target.off);
        CHECK(h->authority.off + h->authority.len <= h->origin_form.off);
        CHECK(h->origin_form.off + h->origin_form.len == h->target.off + h->target.len);
        CHECK(h->index[HTTP_H_HOST] < 0 || h->headers[h->index[HTTP_H_HOST]].hop);
    } else {
        CHECK(h->origin_form.len == 0);
    }
    for (size_t i = 0; i < h->head_len; i++)
        if (h->base[i] == '\n')
            CHECK(i > 0 && h->base[i - 1] == '\r');
    CHECK(h->header_count <= HTTP_MAX_HEADERS);
    CHECK(h->version_minor <= 1);
    for (unsigned i = 0; i < h->header_count; i++) {
        check_span(h, h->headers[i].name);
        check_span(h, h->headers[i].value);
        CHECK(h->headers[i].id < HTTP_H_COUNT_);
    }
    for (int i = 0; i < HTTP_H_COUNT_; i++)
        CHECK(h->index[i] >= -1 && h->index[i] < (int)h->header_count);
    if (h->max_body && !h->chunked)
        CHECK(h->content_length <= h->max_body);
}

static void check_same(const struct http_head *a, const struct http_head *b)
{
    if (a->error != b->error) {
        CHECK(a->error != HTTP_ERR_NONE && b->error != HTTP_ERR_NONE);
        CHECK(is_limit(a->error) || is_limit(b->error));
        CHECK(is_limit(a->error) || a->error == HTTP_ERR_BAD_REQUEST);
        CHECK(is_limit(b->error) || b->error == HTTP_ERR_BAD_REQUEST);
    }
    if (a->error != HTTP_ERR_NONE)
        return;
    CHECK(a->head_done == b->head_done);
    if (!a->head_done)
        return;
    CHECK(a->head_len == b->head_len);
    CHECK(a->method.off == b->method.off && a->method.len == b->method.len);
    CHECK(a->target.off == b->target.off && a->target.len == b->target.len);
    CHECK(a->authority.off == b->authority.off && a->authority.len == b->authority.len);
    CHECK(a->origin_form.off == b->origin_form.off && a->origin_form.len == b->origin_form.len);
    CHECK(a->version_minor == b->version_minor);
    CHECK(a->keep_alive == b->keep_alive && a->upgrade == b->upgrade);
    CHECK(a->chunked == b->chunked && a->has_body == b->has_body);
    CHECK(a->content_length == b->content_length);
    CHECK(a->header_count == b->header_count);
    for (unsigned i = 0; i < a->header_count; i++) {
        const struct http_header *x = &a->headers[i], *y = &b->headers[i];
        CHECK(x->name.off == y->name.off && x->name.len == y->name.len);
        CHECK(x->value.off == y->value.off && x->value.len == y->value.len);
        CHECK(x->id == y->id && x->hop == y->hop);
    }
}

/* The proxy writes these fields itself, whatever the client sent. */
static int added_by_proxy(const struct http_head *h, uint8_t id)
{
    switch (id) {
    case HTTP_H_X_FORWARDED_FOR:
    case HTTP_H_X_FORWARDED_PROTO:
    case HTTP_H_FORWARDED:
    case HTTP_H_VIA:
        return 1;
    case HTTP_H_CONNECTION:
    case HTTP_H_UPGRADE:
        return h->upgrade;
    case HTTP_H_HOST:
        return h->authority.len > 0;
    default:
        return 0;
    }
}

/* The target <h> (over <buf>) goes out with, in <out> (<room> bytes, one
 * more than any target): as received, or the origin-form of an
 * absolute-form one. Returns its length. */
static size_t forwarded_target(const struct http_head *h, const char *buf, char *out, size_t room)
{
    const char *from = buf + h->target.off;
    size_t len = h->target.len, n = 0;

    if (h->authority.len) {
        from = buf + h->origin_form.off;
        len = h->origin_form.len;
        if (len == 0 && h->method.len == 7 && memcmp(buf + h->method.off, "OPTIONS", 7) == 0) {
            from = "*";
            len = 1;
        } else if (len == 0 || *from != '/') {
            out[n++] = '/';
        }
    }
    CHECK(n + len < room);
    memcpy(out + n, from, len);
    return n + len;
}

/* Serialises the completed head <h> over <buf> and checks what goes out. */
static void check_forward(const struct http_head *h, const char *buf, int v6)
{
    const struct http_forward_info info = {
        .client_ip = v6 ? "2001:db8::1" : "192.0.2.1",
        .proto = v6 ? "https" : "http",
        .default_host = "fuzz.example",
    };
    struct evbuffer *out = evbuffer_new();

    CHECK(out != NULL);
    CHECK(http_request_serialize(h, buf, &info, out) == 0);
    size_t len = evbuffer_get_length(out);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    CHECK(text != NULL);
    CHECK(len >= 4 && memcmp(text + len - 4, "\r\n\r\n", 4) == 0);
    char target[FUZZ_MAX_TARGET + 2];
    size_t target_len = forwarded_target(h, buf, target, sizeof(target));
    CHECK(len > h->method.len + 1 + target_len + 11);
    CHECK(memcmp(text + h->method.len + 1, target, target_len) == 0);
    CHECK(memcmp(text + h->method.len + 1 + target_len, " HTTP/1.1\r\n", 11) == 0);

    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (!hd->hop || added_by_proxy(h, hd->id) || hd->name.len == 0)
            continue;
        CHECK(!has_field(text, len, buf + hd->name.off, hd->name.len));
    }

    /* what the clone gets must parse back to the same request */
    struct http_head *back = malloc(sizeof(*back));
    CHECK(back != NULL);
    http_head_init(back, false, 0, 0, 0);
    char *copy = exact_copy(text, len);
    enum http_parse r = http_head_parse(back, copy, len);
    /* the fields the proxy adds may push a full head over HTTP_MAX_HEADERS */
    if (!(r == HTTP_PARSE_ERROR && back->error == HTTP_ERR_HEAD_TOO_LARGE &&
          h->header_count + FUZZ_ADDED_FIELDS > HTTP_MAX_HEADERS)) {
        CHECK(r == HTTP_PARSE_DONE);
        CHECK(back->head_len == len);
        CHECK(back->method.len == h->method.len &&
              memcmp(copy + back->method.off, buf + h->method.off, h->method.len) == 0);
        CHECK(back->target.len == target_len &&
              memcmp(copy + back->target.off, target, target_len) == 0);
        CHECK(back->authority.len == 0);
        if (h->authority.len) {
            size_t host_len;
            const char *host = http_header_value(back, copy, HTTP_H_HOST, &host_len);
            CHECK(host != NULL && host_len == h->authority.len &&
                  memcmp(host, buf + h->authority.off, host_len) == 0);
        }
        CHECK(back->chunked == h->chunked);
        CHECK(back->content_length == h->content_length);
        CHECK(back->has_body == h->has_body);
        CHECK(back->upgrade == h->upgrade);
        CHECK(back->version_minor == 1);
    }
    free(copy);
    free(back);
    evbuffer_free(out);
}

/* Frames the body bytes <buf>[0..<len>) in two pieces cut at <cut>.
 * Returns the bytes of the message, or (size_t)-1 when it did not end
 * there (error, more needed, upgrade). */
static size_t frame_body(struct http_head *h, const char *buf, size_t len, size_t cut,
                         struct evbuffer *decoded)
{
    size_t total = 0;
    const size_t piece[2] = {cut, len - cut};

    for (int i = 0; i < 2; i++) {
        size_t used = (size_t)-1;
        char *copy = exact_copy(buf + total, piece[i]);
        size_t before = decoded ? evbuffer_get_length(decoded) : 0;
        enum http_parse r = http_body_parse(h, copy, piece[i], &used, decoded);
        free(copy);
        CHECK(used <= piece[i]);
        total += used;
        /* payload is the framed bytes less the framing */
        if (decoded && r != HTTP_PARSE_ERROR)
            CHECK(evbuffer_get_length(decoded) - before <= used);
        switch (r) {
        case HTTP_PARSE_AGAIN:
            CHECK(used == piece[i]);
            break;
        case HTTP_PARSE_DONE:
            CHECK(h->message_done);
            return total;
        case HTTP_PARSE_UPGRADE:
            CHECK(h->message_done && h->upgrade);
            return (size_t)-1;
        case HTTP_PARSE_ERROR:
            CHECK(h->error != HTTP_ERR_NONE);
            return (size_t)-1;
        }
    }
    /* the connection ends here: a request body cut short is an error */
    CHECK(http_body_eof(h) == HTTP_PARSE_ERROR);
    return (size_t)-1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *all = (const char *)data;
    struct http_head *whole = malloc(sizeof(*whole));
    struct http_head *split = malloc(sizeof(*split));
    struct evbuffer *decoded = evbuffer_new();
    size_t at = 0;

    CHECK(whole != NULL && split != NULL && decoded != NULL);
    http_head_init(whole, false, FUZZ_MAX_HEAD, FUZZ_MAX_TARGET, FUZZ_MAX_BODY);
    http_head_init(split, false, FUZZ_MAX_HEAD, FUZZ_MAX_TARGET, FUZZ_MAX_BODY);
    for (int m = 0; m < FUZZ_MAX_MESSAGES && at < size; m++) {
        const char *buf = all + at;
        size_t len = size - at;
        /* a split point that depends on the input, not only its length */
        size_t cut = len ? ((size_t)(uint8_t)buf[len - 1] * 7919u + len) % (len + 1) : 0;

        enum http_parse r = http_head_parse(whole, buf, len);
        char *first = exact_copy(buf, cut);
        enum http_parse r2 = http_head_parse(split, first, cut);
        free(first);
        if (r2 == HTTP_PARSE_AGAIN) {
            char *second = exact_copy(buf, len);
            r2 = http_head_parse(split, second, len);
            free(second);
        }
        CHECK(r2 == r);
        check_same(whole, split);
        if (r == HTTP_PARSE_AGAIN) {
            CHECK(len <= FUZZ_MAX_HEAD);
            break;
        }
        if (r == HTTP_PARSE_ERROR) {
            CHECK(whole->error != HTTP_ERR_NONE && whole->error != HTTP_ERR_BAD_RESPONSE);
            CHECK(whole->error_text != NULL);
            break;
        }
        CHECK(r == HTTP_PARSE_DONE);
        check_head(whole, len);
        check_forward(whole, buf, (int)(cut & 1));

        size_t body_len = len - whole->head_len;
        size_t body_cut = body_len ? cut % (body_len + 1) : 0;
        size_t used = frame_body(whole, buf + whole->head_len, body_len, body_cut,
                                 (cut & 2) ? decoded : NULL);
        if (used == (size_t)-1)
            break;
        if (whole->max_body)
            CHECK(whole->body_seen <= whole->max_body);
        if (!whole->chunked)
            CHECK(used == whole->content_length);
        at += whole->head_len + used;
        http_head_reset(whole);
        http_head_reset(split);
    }
    evbuffer_free(decoded);
    free(split);
    free(whole);
    return 0;
}
