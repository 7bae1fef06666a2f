/*
 * fuzz_response: libFuzzer target for response heads and response bodies.
 *
 * The input is what a clone sends back: http_head_parse() on a response
 * parser gets it whole, and again in two calls split at a point derived
 * from the input (exact-size copies, so a read past <len> is caught); both
 * must agree. Two low bits of the input choose the HEAD-request case
 * (skip_body) and how the head is forwarded (keep-alive, HTTP/1.0 client,
 * dropped framing). A completed head must have every span inside it, must
 * serialise with no hop-by-hop field left, and must parse back as a
 * response with the same status and, unless the framing was dropped, the
 * same framing. The bytes after the head are framed in two pieces; when
 * they run out, http_body_eof() must accept exactly the close-delimited
 * bodies. Interim responses and keep-alive responses are followed to the
 * next head. Every check failure aborts. Owns only what it allocates per
 * input, freed before returning; no globals, one thread.
 */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "fuzz_common.h"

#define FUZZ_MAX_HEAD     2048 /* bytes: small, so the too-large paths are reached */
#define FUZZ_MAX_MESSAGES 8    /* responses followed per input */
#define FUZZ_ADDED_FIELDS 3    /* most fields serialising adds (Via, Connection, Upgrade) */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* How a response is forwarded: chosen by the input. */
struct forward_mode {
    uint8_t skip_body;     /* the request was HEAD */
    uint8_t keep_alive;    /* http_response_serialize() <keep_alive> */
    uint8_t http10_client; /* <http10_client> */
    uint8_t drop_framing;  /* <drop_framing> */
    uint8_t decode;        /* frame the body into an evbuffer too */
};

/* Invariants of a completed response head over <len> bytes. */
static void check_head(const struct http_head *h, size_t len)
{
    CHECK(h->head_done && h->is_response);
    CHECK(h->head_len > 0 && h->head_len <= len);
    CHECK(h->head_len <= FUZZ_MAX_HEAD);
    CHECK(h->error == HTTP_ERR_NONE);
    CHECK(h->status >= 100 && h->status <= 999);
    check_span(h, h->reason);
    CHECK(h->header_count <= HTTP_MAX_HEADERS);
    CHECK(h->version_minor <= 1);
    for (unsigned i = 0; i < h->header_count; i++) {
        check_span(h, h->headers[i].name);
        check_span(h, h->headers[i].value);
        CHECK(h->headers[i].id < HTTP_H_COUNT_);
    }
    for (int i = 0; i < HTTP_H_COUNT_; i++)
        CHECK(h->index[i] >= -1 && h->index[i] < (int)h->header_count);
    /* never a body: HEAD, 1xx, 204, 304 */
    if (h->skip_body || h->status < 200 || h->status == 204 || h->status == 304)
        CHECK(!h->has_body && !http_body_until_close(h));
    if (h->status == 101)
        CHECK(h->upgrade);
}

static void check_same(const struct http_head *a, const struct http_head *b)
{
    if (a->error != b->error) {
        CHECK(a->error != HTTP_ERR_NONE && b->error != HTTP_ERR_NONE);
        CHECK(is_limit(a->error) || is_limit(b->error));
        CHECK(is_limit(a->error) || a->error == HTTP_ERR_BAD_RESPONSE);
        CHECK(is_limit(b->error) || b->error == HTTP_ERR_BAD_RESPONSE);
    }
    if (a->error != HTTP_ERR_NONE)
        return;
    CHECK(a->head_done == b->head_done);
    if (!a->head_done)
        return;
    CHECK(a->head_len == b->head_len);
    CHECK(a->status == b->status);
    CHECK(a->reason.off == b->reason.off && a->reason.len == b->reason.len);
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

/* The proxy writes these fields itself, whatever the clone sent. */
static int added_by_proxy(const struct http_head *h, uint8_t id)
{
    switch (id) {
    case HTTP_H_VIA:
    case HTTP_H_CONNECTION:
        return 1;
    case HTTP_H_UPGRADE:
        return h->status == 101;
    default:
        return 0;
    }
}

/* Serialises the completed head <h> over <buf> and checks what goes out. */
static void check_forward(const struct http_head *h, const char *buf,
                          const struct forward_mode *mode)
{
    struct evbuffer *out = evbuffer_new();

    CHECK(out != NULL);
    CHECK(http_response_serialize(h, buf, NULL, mode->keep_alive, mode->http10_client, mode->drop_framing,
                                  out) == 0);
    size_t len = evbuffer_get_length(out);
    const char *text = (const char *)evbuffer_pullup(out, -1);
    CHECK(text != NULL);
    CHECK(len > 13 && memcmp(text, "HTTP/1.1 ", 9) == 0);
    CHECK(memcmp(text + len - 4, "\r\n\r\n", 4) == 0);

    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        if (!hd->hop || added_by_proxy(h, hd->id) || hd->name.len == 0)
            continue;
        CHECK(!has_field(text, len, buf + hd->name.off, hd->name.len));
    }
    if (mode->drop_framing)
        CHECK(!has_field(text, len, "Transfer-Encoding", 17));

    /* what the client gets must parse back to the same response */
    struct http_head *back = malloc(sizeof(*back));
    CHECK(back != NULL);
    http_head_init(back, true, 0, 0, 0);
    back->skip_body = h->skip_body;
    char *copy = exact_copy(text, len);
    enum http_parse r = http_head_parse(back, copy, len);
    /* a response with too many fields is refused as a bad response */
    if (!(r == HTTP_PARSE_ERROR && back->error == HTTP_ERR_BAD_RESPONSE &&
          h->header_count + FUZZ_ADDED_FIELDS > HTTP_MAX_HEADERS)) {
        CHECK(r == HTTP_PARSE_DONE);
        CHECK(back->head_len == len);
        CHECK(back->status == h->status);
        CHECK(back->version_minor == 1);
        /* a 1xx or 204 loses its framing fields (it has no body) */
        bool framed = h->status >= 200 && h->status != 204;
        if (!mode->drop_framing) {
            if (framed) {
                CHECK(back->chunked == h->chunked);
                CHECK(back->content_length == h->content_length);
            } else {
                CHECK(!has_field(text, len, "Content-Length", 14));
                CHECK(!has_field(text, len, "Transfer-Encoding", 17));
            }
            CHECK(back->has_body == h->has_body);
            CHECK(http_body_until_close(back) == http_body_until_close(h));
        }
        if (h->status == 101)
            CHECK(back->upgrade);
    }
    free(copy);
    free(back);
    evbuffer_free(out);
}

/* Frames the body bytes <buf>[0..<len>) in two pieces cut at <cut>, then
 * ends the connection if the message has not ended. Returns the bytes of
 * the message when another may follow, or (size_t)-1. */
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
        if (decoded && r != HTTP_PARSE_ERROR)
            CHECK(evbuffer_get_length(decoded) - before <= used);
        switch (r) {
        case HTTP_PARSE_AGAIN:
            CHECK(used == piece[i]);
            break;
        case HTTP_PARSE_DONE:
            CHECK(h->message_done);
            CHECK(!http_body_until_close(h));
            return total;
        case HTTP_PARSE_UPGRADE:
            CHECK(h->message_done && h->upgrade);
            return (size_t)-1;
        case HTTP_PARSE_ERROR:
            CHECK(h->error != HTTP_ERR_NONE);
            return (size_t)-1;
        }
    }
    /* the clone closes here: only a close-delimited body ends well */
    enum http_parse end = http_body_eof(h);
    CHECK((end == HTTP_PARSE_DONE) == http_body_until_close(h));
    return (size_t)-1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *all = (const char *)data;
    struct http_head *whole = malloc(sizeof(*whole));
    struct http_head *split = malloc(sizeof(*split));
    struct evbuffer *decoded = evbuffer_new();
    const uint8_t bits = size ? data[size - 1] : 0;
    const struct forward_mode mode = {
        .skip_body = (bits >> 4) & 1,
        .keep_alive = (bits >> 5) & 1,
        .http10_client = (bits >> 6) & 1,
        .drop_framing = (bits >> 7) & 1,
        .decode = (bits >> 3) & 1,
    };
    size_t at = 0;

    CHECK(whole != NULL && split != NULL && decoded != NULL);
    http_head_init(whole, true, FUZZ_MAX_HEAD, 0, 0);
    http_head_init(split, true, FUZZ_MAX_HEAD, 0, 0);
    for (int m = 0; m < FUZZ_MAX_MESSAGES && at < size; m++) {
        const char *buf = all + at;
        size_t len = size - at;
        size_t cut = len ? ((size_t)(uint8_t)buf[len - 1] * 7919u + len) % (len + 1) : 0;

        whole->skip_body = mode.skip_body;
        split->skip_body = mode.skip_body;
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
            CHECK(whole->error != HTTP_ERR_NONE && whole->error_text != NULL);
            break;
        }
        CHECK(r == HTTP_PARSE_DONE);
        check_head(whole, len);
        check_forward(whole, buf, &mode);

        size_t body_len = len - whole->head_len;
        size_t body_cut = body_len ? cut % (body_len + 1) : 0;
        size_t used = frame_body(whole, buf + whole->head_len, body_len, body_cut,
                                 mode.decode ? decoded : NULL);
        if (used == (size_t)-1)
            break;
        if (!whole->chunked && whole->has_body)
            CHECK(used == whole->content_length);
        if (!whole->has_body)
            CHECK(used == 0);
        at += whole->head_len + used;
        http_head_reset(whole);
        http_head_reset(split);
    }
    evbuffer_free(decoded);
    free(split);
    free(whole);
    return 0;
}
