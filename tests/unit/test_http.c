/*
 * test_http: http.c through http.h.
 *
 * Framing decisions come from one table of raw requests, each with the
 * verdict it must get (DONE, or ERROR and the status http_error_status()
 * maps it to) and where that verdict falls: in http_head_parse() or in
 * http_body_parse() on the bytes after the head. The same table is parsed
 * again one byte at a time, from a fresh copy of the growing buffer each
 * call, and must give the very same head. Body framing (Content-Length,
 * chunked, pipelining, bodiless responses, close-delimited ends, decoding)
 * has fixed tests; forwarded request and response heads are compared byte
 * for byte from two more tables; absolute-form targets and bare line
 * feeds have a table each of heads refused, with the reason logged.
 * Regressions are test_issue_<n>_<what>.
 * Everything here lives on the stack or is freed by the test that made it;
 * no thread, no I/O besides evbuffers.
 */
#include "http.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#define TEST_MAX_HEAD   1024 /* bytes: max_head of the framing table */
#define TEST_MAX_TARGET 64   /* bytes: max_target of the framing table */
#define TEST_MAX_BODY   100  /* bytes: max_body of the framing table */
#define PAD_MARK        '@'  /* in a row's raw bytes: where <pad> 'a's go */

/* A string literal and its length, NULs included. */
#define RAW(s) s, sizeof(s) - 1

/* Filler, and header lines to build heads with many fields. */
#define X10 "aaaaaaaaaa"
#define X50 X10 X10 X10 X10 X10
#define H1  "X: 1\r\n"
#define H7  H1 H1 H1 H1 H1 H1 H1
#define H8  H7 H1
#define H63 H8 H8 H8 H8 H8 H8 H8 H7
#define H64 H63 H1

/* The lines http_request_serialize() adds for client 10.0.0.1 over http. */
#define ADDED_V4                                                                                   \
    "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"                                     \
    "Forwarded: for=10.0.0.1;proto=http\r\n"
#define VIA11 "Via: 1.1 clonegate\r\n"
#define VIA10 "Via: 1.0 clonegate\r\n"

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Copies <raw> (<len> bytes) with its first PAD_MARK replaced by <pad> 'a's
 * when <pad> is not 0. *<out_len> gets the new length; the caller frees. */
static char *expand(const char *raw, size_t len, size_t pad, size_t *out_len)
{
    const char *mark = pad ? memchr(raw, PAD_MARK, len) : NULL;
    size_t n = mark ? len - 1 + pad : len;
    char *buf = malloc(n ? n : 1);

    assert_non_null(buf);
    if (!mark) {
        memcpy(buf, raw, len);
    } else {
        size_t before = (size_t)(mark - raw);
        memcpy(buf, raw, before);
        memset(buf + before, 'a', pad);
        memcpy(buf + before + pad, mark + 1, len - before - 1);
    }
    *out_len = n;
    return buf;
}

/* Parses the whole of <raw> as one head, which must complete. */
static void head_ok(struct http_head *h, bool is_response, const char *raw, size_t len)
{
    http_head_init(h, is_response, 0, 0, 0);
    assert_int_equal(http_head_parse(h, raw, len), HTTP_PARSE_DONE);
}

/* The bytes of <s> in <buf> as a NUL-terminated string (static storage). */
static const char *span_text(const char *buf, struct http_span s)
{
    static char text[256];

    assert_true(s.len < sizeof(text));
    memcpy(text, buf + s.off, s.len);
    text[s.len] = '\0';
    return text;
}

/* The contents of <b> as a NUL-terminated string; the caller frees. */
static char *buffer_text(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);

    assert_non_null(s);
    assert_int_equal(evbuffer_copyout(b, s, n), (ev_ssize_t)n);
    s[n] = '\0';
    return s;
}

/* Every span of a completed head lies in its bytes; names are not empty
 * and no value carries a CR or LF (line folding, smuggled lines). */
static void assert_spans_sane(const struct http_head *h, const char *buf)
{
    assert_true(h->method.off + h->method.len <= h->head_len);
    assert_true(h->target.off + h->target.len <= h->head_len);
    assert_true(h->authority.off + h->authority.len <= h->head_len);
    assert_true(h->origin_form.off + h->origin_form.len <= h->head_len);
    assert_true(h->reason.off + h->reason.len <= h->head_len);
    assert_true(h->header_count <= HTTP_MAX_HEADERS);
    for (unsigned i = 0; i < h->header_count; i++) {
        const struct http_header *hd = &h->headers[i];
        assert_true(hd->name.off + hd->name.len <= h->head_len);
        assert_true(hd->value.off + hd->value.len <= h->head_len);
        assert_true(hd->name.len > 0);
        assert_null(memchr(buf + hd->value.off, '\r', hd->value.len));
        assert_null(memchr(buf + hd->value.off, '\n', hd->value.len));
    }
}

static void assert_same_span(struct http_span a, struct http_span b)
{
    assert_int_equal(a.off, b.off);
    assert_int_equal(a.len, b.len);
}

/* Two parses of the same bytes gave the same head. */
static void assert_same_head(const struct http_head *a, const struct http_head *b)
{
    assert_int_equal(a->error, b->error);
    assert_int_equal(a->head_done, b->head_done);
    if (!a->head_done)
        return;
    assert_int_equal(a->head_len, b->head_len);
    assert_same_span(a->method, b->method);
    assert_same_span(a->target, b->target);
    assert_same_span(a->authority, b->authority);
    assert_same_span(a->origin_form, b->origin_form);
    assert_same_span(a->reason, b->reason);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->version_minor, b->version_minor);
    assert_int_equal(a->keep_alive, b->keep_alive);
    assert_int_equal(a->upgrade, b->upgrade);
    assert_int_equal(a->chunked, b->chunked);
    assert_int_equal(a->has_body, b->has_body);
    assert_int_equal(a->expect_continue, b->expect_continue);
    assert_int_equal(a->conn_close, b->conn_close);
    assert_int_equal(a->content_length, b->content_length);
    assert_int_equal(a->header_count, b->header_count);
    for (unsigned i = 0; i < a->header_count; i++) {
        assert_same_span(a->headers[i].name, b->headers[i].name);
        assert_same_span(a->headers[i].value, b->headers[i].value);
        assert_int_equal(a->headers[i].id, b->headers[i].id);
        assert_int_equal(a->headers[i].hop, b->headers[i].hop);
    }
    for (int i = 0; i < HTTP_H_COUNT_; i++)
        assert_int_equal(a->index[i], b->index[i]);
}

/* ------------------------------------------------------------------------
 * Framing decisions
 */

enum stage {
    AT_HEAD = 0, /* the verdict comes from http_head_parse() */
    AT_BODY = 1, /* the head completes; http_body_parse() gives the verdict */
};

struct framing_case {
    const char *name;
    const char *raw; /* a whole message: DONE rows end exactly at its end */
    size_t len;
    size_t pad;             /* 'a's that replace the first PAD_MARK, or 0 */
    enum http_parse result; /* of the whole message: DONE, UPGRADE or ERROR */
    unsigned status;        /* http_error_status() when ERROR */
    enum stage stage;       /* where the verdict falls */
};

static struct framing_case framing_cases[] = {
    /* accepted */
    {"GET", RAW("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_DONE, 0, AT_HEAD},
    {"POST with Content-Length",
     RAW("POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), 0, HTTP_PARSE_DONE, 0,
     AT_BODY},
    {"POST chunked",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
     0, HTTP_PARSE_DONE, 0, AT_BODY},
    {"POST gzip, chunked",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 0,
     HTTP_PARSE_DONE, 0, AT_BODY},
    {"HTTP/1.0 without Host", RAW("GET / HTTP/1.0\r\n\r\n"), 0, HTTP_PARSE_DONE, 0, AT_HEAD},
    {"HTTP/1.0 POST without Host", RAW("POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nok"), 0,
     HTTP_PARSE_DONE, 0, AT_BODY},
    {"empty Host", RAW("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 0, HTTP_PARSE_DONE, 0, AT_HEAD},
    {"IPv6 Host with port", RAW("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0, HTTP_PARSE_DONE,
     0, AT_HEAD},
    {"empty value", RAW("GET / HTTP/1.1\r\nHost: a\r\nX:\r\nY: 1\r\n\r\n"), 0, HTTP_PARSE_DONE, 0,
     AT_HEAD},
    {"upgrade request",
     RAW("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
         "Upgrade: websocket\r\n\r\n"),
     0, HTTP_PARSE_UPGRADE, 0, AT_HEAD},
    {"64 header fields", RAW("GET / HTTP/1.1\r\nHost: a\r\n" H63 "\r\n"), 0, HTTP_PARSE_DONE, 0,
     AT_HEAD},
    {"target at max_target", RAW("GET /@ HTTP/1.1\r\nHost: a\r\n\r\n"), TEST_MAX_TARGET - 1,
     HTTP_PARSE_DONE, 0, AT_HEAD},
    /* 28 bytes before the pad, 4 after it */
    {"head at max_head", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: @\r\n\r\n"), TEST_MAX_HEAD - 32,
     HTTP_PARSE_DONE, 0, AT_HEAD},
    {"Content-Length at max_body",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n@"), TEST_MAX_BODY,
     HTTP_PARSE_DONE, 0, AT_BODY},
    {"chunked at max_body",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n@\r\n0\r\n\r\n"),
     TEST_MAX_BODY, HTTP_PARSE_DONE, 0, AT_BODY},
    {"absolute-form", RAW("GET http://b:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_DONE,
     0, AT_HEAD},
    {"absolute-form HTTP/1.0 without Host", RAW("GET https://b/ HTTP/1.0\r\n\r\n"), 0,
     HTTP_PARSE_DONE, 0, AT_HEAD},
    {"OPTIONS *", RAW("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_DONE, 0, AT_HEAD},
    {"empty line before the request line", RAW("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_DONE, 0, AT_HEAD},

    /* ambiguous length */
    {"Content-Length and Transfer-Encoding",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Transfer-Encoding and Content-Length",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
         "0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"duplicate Content-Length",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"conflicting Content-Length",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Content-Length list", RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
     0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"negative Content-Length", RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"signed Content-Length", RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Transfer-Encoding gzip",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nhello"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"Transfer-Encoding identity",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nhello"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Transfer-Encoding chunked, gzip",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Transfer-Encoding chunked, chunked",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Transfer-Encoding twice",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_HEAD},

    {"Transfer-Encoding in HTTP/1.0",
     RAW("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"Transfer-Encoding chunked<TAB>",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},

    /* chunk framing */
    {"bad chunk size",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
         "0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_BODY},
    {"chunk size with a space",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n"
         "0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_BODY},
    {"chunk size overflow",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         "10000000000000000\r\nhello\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_BODY},
    {"chunk lines ended by LF",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_BODY},
    {"chunk data without CRLF",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
     0, HTTP_PARSE_ERROR, 400, AT_BODY},

    /* a fragment is no part of a request target */
    {"fragment in an origin-form target", RAW("GET /p#frag HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"fragment in an absolute-form target", RAW("GET http://a/p#f HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"fragment right after the authority", RAW("GET http://a#f HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},

    /* line syntax */
    {"bare LF line endings", RAW("GET / HTTP/1.1\nHost: a\n\n"), 0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"bare LF ending the request line", RAW("GET / HTTP/1.1\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"bare LF ending the head", RAW("GET / HTTP/1.1\r\nHost: a\r\n\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"bare LF before the request line", RAW("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"bare LF after a field", RAW("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"bare CR after a field", RAW("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"CR without LF ending the head", RAW("GET / HTTP/1.1\r\nHost: a\r\n\rX"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"obs-fold", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"obs-fold with a tab", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"obs-fold of Host", RAW("GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"space starting the first field", RAW("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"space before the colon", RAW("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"tab before the colon", RAW("GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"empty field name", RAW("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"NUL in a value", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"0x01 in a value", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: a\001b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"DEL in a value", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: a\177b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"NUL in a name", RAW("GET / HTTP/1.1\r\nHost: a\r\nX\0Y: b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"0x01 in a name", RAW("GET / HTTP/1.1\r\nHost: a\r\nX\001Y: b\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"space in the target", RAW("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"0x01 in the target", RAW("GET /a\001b HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"HTTP/2.0", RAW("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400, AT_HEAD},

    /* Host */
    {"missing Host", RAW("GET / HTTP/1.1\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"two Host", RAW("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"two Host, same value, other case", RAW("GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Host with a slash", RAW("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"Host with a space", RAW("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"Host port with a letter", RAW("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"Host port over 65535", RAW("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), 0, HTTP_PARSE_ERROR,
     400, AT_HEAD},
    {"Host with two ports", RAW("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"Host IPv6 without its bracket", RAW("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"Host bracket in a name", RAW("GET / HTTP/1.1\r\nHost: a]b\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"Host port 65535", RAW("GET / HTTP/1.1\r\nHost: a.example:65535\r\n\r\n"), 0, HTTP_PARSE_DONE,
     0, AT_HEAD},
    {"Host IPv6 and port", RAW("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0, HTTP_PARSE_DONE, 0,
     AT_HEAD},
    {"Host with an empty port", RAW("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"), 0, HTTP_PARSE_DONE, 0,
     AT_HEAD},
    {"GET *", RAW("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"two Host in HTTP/1.0", RAW("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"absolute-form without Host", RAW("GET http://a/ HTTP/1.1\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},
    {"absolute-form with userinfo", RAW("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 0,
     HTTP_PARSE_ERROR, 400, AT_HEAD},
    {"absolute-form ftp", RAW("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 0, HTTP_PARSE_ERROR, 400,
     AT_HEAD},

    /* method and limits */
    {"CONNECT", RAW("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 0, HTTP_PARSE_ERROR, 405,
     AT_HEAD},
    {"target over max_target", RAW("GET /@ HTTP/1.1\r\nHost: a\r\n\r\n"), TEST_MAX_TARGET,
     HTTP_PARSE_ERROR, 414, AT_HEAD},
    {"head over max_head", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: @\r\n\r\n"), TEST_MAX_HEAD - 31,
     HTTP_PARSE_ERROR, 431, AT_HEAD},
    {"unfinished head over max_head", RAW("GET / HTTP/1.1\r\nHost: a\r\nX: @"), TEST_MAX_HEAD,
     HTTP_PARSE_ERROR, 431, AT_HEAD},
    {"65 header fields", RAW("GET / HTTP/1.1\r\nHost: a\r\n" H64 "\r\n"), 0, HTTP_PARSE_ERROR, 431,
     AT_HEAD},
    {"Content-Length over max_body",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n@"), TEST_MAX_BODY + 1,
     HTTP_PARSE_ERROR, 413, AT_HEAD},
    {"chunked over max_body",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n@\r\n0\r\n\r\n"),
     TEST_MAX_BODY + 1, HTTP_PARSE_ERROR, 413, AT_BODY},
    {"chunks adding up over max_body",
     RAW("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         "32\r\n@\r\n32\r\n" X50 "\r\n"
         "1\r\na\r\n0\r\n\r\n"),
     50, HTTP_PARSE_ERROR, 413, AT_BODY},
};

static void test_framing(void **state)
{
    const struct framing_case *c = *state;
    struct http_head h;
    size_t len, used = 0;
    char *buf = expand(c->raw, c->len, c->pad, &len);

    http_head_init(&h, false, TEST_MAX_HEAD, TEST_MAX_TARGET, TEST_MAX_BODY);
    enum http_parse r = http_head_parse(&h, buf, len);
    if (c->stage == AT_HEAD && c->result == HTTP_PARSE_ERROR) {
        assert_int_equal(r, HTTP_PARSE_ERROR);
        assert_int_equal(http_error_status(h.error), c->status);
        assert_non_null(h.error_text);
        free(buf);
        return;
    }
    assert_int_equal(r, HTTP_PARSE_DONE);
    assert_true(h.head_len <= len);
    assert_spans_sane(&h, buf);
    r = http_body_parse(&h, buf + h.head_len, len - h.head_len, &used, NULL);
    assert_int_equal(r, c->result);
    if (c->result != HTTP_PARSE_ERROR) {
        assert_int_equal(used, len - h.head_len);
    } else {
        assert_int_equal(http_error_status(h.error), c->status);
        assert_non_null(h.error_text);
    }
    free(buf);
}

/* The same bytes, one more each call, in a new buffer each time: the head
 * must come out exactly as from one call. */
static void test_incremental(void **state)
{
    const struct framing_case *c = *state;
    struct http_head once, step;
    size_t len;
    char *buf = expand(c->raw, c->len, c->pad, &len);
    char *copy = NULL;
    enum http_parse r1, r2 = HTTP_PARSE_AGAIN;

    http_head_init(&once, false, TEST_MAX_HEAD, TEST_MAX_TARGET, TEST_MAX_BODY);
    r1 = http_head_parse(&once, buf, len);
    http_head_init(&step, false, TEST_MAX_HEAD, TEST_MAX_TARGET, TEST_MAX_BODY);
    for (size_t n = 1; n <= len && r2 == HTTP_PARSE_AGAIN; n++) {
        free(copy);
        copy = malloc(n);
        assert_non_null(copy);
        memcpy(copy, buf, n);
        r2 = http_head_parse(&step, copy, n);
    }
    assert_int_equal(r2, r1);
    assert_same_head(&once, &step);
    free(copy);
    free(buf);
}

/* Responses, parsed whole and split at every point. */
struct response_case {
    const char *name;
    const char *raw;
    size_t len;
    enum http_parse result; /* of the head */
    unsigned status;        /* parsed status when DONE, http_error_status() when ERROR */
};

static struct response_case response_cases[] = {
    {"200 with Content-Length", RAW("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
     HTTP_PARSE_DONE, 200},
    {"no reason phrase", RAW("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"), HTTP_PARSE_DONE, 404},
    {"chunked", RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), HTTP_PARSE_DONE, 200},
    {"HTTP/1.0", RAW("HTTP/1.0 200 OK\r\n\r\n"), HTTP_PARSE_DONE, 200},
    {"Content-Length and Transfer-Encoding",
     RAW("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
     HTTP_PARSE_ERROR, 502},
    {"duplicate Content-Length",
     RAW("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n"), HTTP_PARSE_ERROR,
     502},
    {"NUL in a value", RAW("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n"), HTTP_PARSE_ERROR, 502},
    {"obs-fold", RAW("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
     HTTP_PARSE_ERROR, 502},
    {"status 099", RAW("HTTP/1.1 099 Odd\r\n\r\n"), HTTP_PARSE_ERROR, 502},
    {"status 1000", RAW("HTTP/1.1 1000 Odd\r\n\r\n"), HTTP_PARSE_ERROR, 502},
    {"HTTP/2.0", RAW("HTTP/2.0 200 OK\r\n\r\n"), HTTP_PARSE_ERROR, 502},
    {"65 header fields", RAW("HTTP/1.1 200 OK\r\n" H64 "Content-Length: 0\r\n\r\n"),
     HTTP_PARSE_ERROR, 502},
};

static void test_response_head(void **state)
{
    const struct response_case *c = *state;
    struct http_head once, split;

    http_head_init(&once, true, 0, 0, 0);
    enum http_parse r = http_head_parse(&once, c->raw, c->len);
    assert_int_equal(r, c->result);
    if (r == HTTP_PARSE_DONE) {
        assert_int_equal(once.status, c->status);
        assert_int_equal(once.head_len, c->len);
        assert_spans_sane(&once, c->raw);
    } else {
        assert_int_equal(http_error_status(once.error), c->status);
    }
    for (size_t cut = 1; cut < c->len; cut++) {
        http_head_init(&split, true, 0, 0, 0);
        enum http_parse r1 = http_head_parse(&split, c->raw, cut);
        if (r1 == HTTP_PARSE_AGAIN)
            r1 = http_head_parse(&split, c->raw, c->len);
        assert_int_equal(r1, r);
        assert_same_head(&once, &split);
    }
}

/* ------------------------------------------------------------------------
 * Body framing
 */

static void test_body_content_length_split(void **state)
{
    static const char head[] = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
    static const char next[] = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    char tail[64];
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, false, RAW(head));
    assert_int_equal(h.head_len, sizeof(head) - 1);
    assert_true(h.has_body);
    assert_false(h.chunked);
    assert_int_equal(h.content_length, 10);
    assert_int_equal(http_body_parse(&h, "0123", 4, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 4);
    assert_int_equal(http_body_parse(&h, "4", 1, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 1);
    snprintf(tail, sizeof(tail), "56789%s", next);
    assert_int_equal(http_body_parse(&h, tail, strlen(tail), &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(used, 5);
    assert_int_equal(h.body_seen, 10);
    /* the message is over: nothing more belongs to it */
    assert_int_equal(http_body_parse(&h, tail + 5, strlen(tail + 5), &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(used, 0);
}

static void test_body_chunked_extensions_trailers(void **state)
{
    static const char head[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char body[] = "5;name=value\r\nhello\r\n"
                               "6;ext;q=\"v;w\"\r\n world\r\n"
                               "0;last\r\nX-Trailer: 1\r\nOther: two\r\n\r\n";
    struct http_head h;
    size_t used, total = 0;
    struct evbuffer *decoded = evbuffer_new();

    (void)state;
    assert_non_null(decoded);
    head_ok(&h, false, RAW(head));
    assert_true(h.chunked);
    assert_true(h.has_body);
    /* a byte at a time: every split point of the framing */
    enum http_parse r = HTTP_PARSE_AGAIN;
    while (r == HTTP_PARSE_AGAIN && total < sizeof(body) - 1) {
        r = http_body_parse(&h, body + total, 1, &used, decoded);
        assert_true(used <= 1);
        total += used;
    }
    assert_int_equal(r, HTTP_PARSE_DONE);
    assert_int_equal(total, sizeof(body) - 1);
    char *text = buffer_text(decoded);
    assert_string_equal(text, "hello world");
    free(text);
    evbuffer_free(decoded);
}

/* A CR, LF or blank where the chunk line has no room for one is refused,
 * not skipped over: the body goes to the clone as it came. */
static void test_body_chunked_bad_line(void **state)
{
    static const char head[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char *const bodies[] = {
        "5;a\rb\r\nhello\r\n0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "5;a=\"x\r\ny\"\r\nhello\r\n0\r\n\r\n",
        "5 ;a\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\r\n",
        "5\r\nhello\n0\r\n\r\n",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct http_head h;
        size_t used;
        head_ok(&h, false, RAW(head));
        assert_int_equal(http_body_parse(&h, bodies[i], strlen(bodies[i]), &used, NULL),
                         HTTP_PARSE_ERROR);
        assert_int_equal(http_error_status(h.error), 400);
    }
}

static void test_body_pipelined(void **state)
{
    static const char first[] = "POST /1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "3\r\nabc\r\n0\r\n\r\n";
    static const char second[] = "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz";
    static const char third[] = "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
    char all[sizeof(first) + sizeof(second) + sizeof(third)];
    struct http_head h;
    size_t used, at = 0, len;

    (void)state;
    len = (size_t)snprintf(all, sizeof(all), "%s%s%s", first, second, third);
    http_head_init(&h, false, TEST_MAX_HEAD, TEST_MAX_TARGET, TEST_MAX_BODY);
    for (int i = 1; i <= 3; i++) {
        char target[4];
        assert_int_equal(http_head_parse(&h, all + at, len - at), HTTP_PARSE_DONE);
        snprintf(target, sizeof(target), "/%d", i);
        assert_string_equal(span_text(all + at, h.target), target);
        at += h.head_len;
        assert_int_equal(http_body_parse(&h, all + at, len - at, &used, NULL), HTTP_PARSE_DONE);
        at += used;
        assert_int_equal(at, i == 1   ? sizeof(first) - 1
                             : i == 2 ? sizeof(first) + sizeof(second) - 2
                                      : len);
        http_head_reset(&h);
    }
}

/* Without a body the message ends with the head, even with no byte after. */
static void test_body_none(void **state)
{
    struct http_head h;
    size_t used = 99;

    (void)state;
    head_ok(&h, false, RAW("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert_false(h.has_body);
    assert_int_equal(http_body_parse(&h, "", 0, &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(used, 0);
}

static void test_body_head_response(void **state)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    static const char next[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    struct http_head h;
    size_t used = 99;

    (void)state;
    http_head_init(&h, true, 0, 0, 0);
    h.skip_body = 1;
    assert_int_equal(http_head_parse(&h, RAW(resp)), HTTP_PARSE_DONE);
    assert_int_equal(h.content_length, 100);
    assert_false(h.has_body);
    assert_false(http_body_until_close(&h));
    assert_int_equal(http_body_parse(&h, RAW(next), &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(used, 0);
}

struct bodiless_case {
    const char *name;
    const char *raw; /* a head, then the next message */
    size_t len;
    unsigned status;
};

static struct bodiless_case bodiless_cases[] = {
    {"204 with Content-Length",
     RAW("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n"), 204},
    {"304 with Content-Length",
     RAW("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n"), 304},
    {"304 chunked", RAW("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"),
     304},
    {"100", RAW("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), 100},
    {"103 with Content-Length",
     RAW("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n"
         "Content-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\n"),
     103},
};

static void test_body_bodiless(void **state)
{
    const struct bodiless_case *c = *state;
    struct http_head h;
    size_t used = 99;

    head_ok(&h, true, c->raw, c->len);
    assert_int_equal(h.status, c->status);
    assert_false(h.has_body);
    assert_false(http_body_until_close(&h));
    assert_int_equal(http_body_parse(&h, c->raw + h.head_len, c->len - h.head_len, &used, NULL),
                     HTTP_PARSE_DONE);
    assert_int_equal(used, 0);
}

/* An interim response, then the final one on the same parser. */
static void test_body_interim_then_final(void **state)
{
    static const char bytes[] = "HTTP/1.1 100 Continue\r\n\r\n"
                                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1";
    struct http_head h;
    size_t used, at;

    (void)state;
    head_ok(&h, true, RAW(bytes));
    assert_int_equal(h.status, 100);
    at = h.head_len;
    assert_int_equal(http_body_parse(&h, bytes + at, sizeof(bytes) - 1 - at, &used, NULL),
                     HTTP_PARSE_DONE);
    assert_int_equal(used, 0);
    http_head_reset(&h);
    assert_int_equal(http_head_parse(&h, bytes + at, sizeof(bytes) - 1 - at), HTTP_PARSE_DONE);
    assert_int_equal(h.status, 200);
    at += h.head_len;
    assert_int_equal(http_body_parse(&h, bytes + at, sizeof(bytes) - 1 - at, &used, NULL),
                     HTTP_PARSE_DONE);
    assert_int_equal(used, 2);
}

static void test_body_switching_protocols(void **state)
{
    static const char bytes[] = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                                "Upgrade: websocket\r\n\r\n\x81\x05hello";
    struct http_head h;
    size_t used = 99;

    (void)state;
    head_ok(&h, true, RAW(bytes));
    assert_true(h.upgrade);
    assert_false(http_body_until_close(&h));
    assert_int_equal(
        http_body_parse(&h, bytes + h.head_len, sizeof(bytes) - 1 - h.head_len, &used, NULL),
        HTTP_PARSE_UPGRADE);
    assert_int_equal(used, 0);
}

static void test_body_upgrade_request(void **state)
{
    static const char bytes[] = "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                                "Upgrade: websocket\r\nContent-Length: 2\r\n\r\nhiRAW";
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, false, RAW(bytes));
    assert_true(h.upgrade);
    assert_int_equal(
        http_body_parse(&h, bytes + h.head_len, sizeof(bytes) - 1 - h.head_len, &used, NULL),
        HTTP_PARSE_UPGRADE);
    assert_int_equal(used, 2);
}

static void test_body_close_delimited(void **state)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, true, RAW(head));
    assert_true(h.has_body);
    assert_false(h.keep_alive);
    assert_true(http_body_until_close(&h));
    assert_int_equal(http_body_parse(&h, "abc", 3, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 3);
    assert_int_equal(http_body_parse(&h, "HTTP/1.1 200 OK\r\n", 17, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 17);
    assert_int_equal(http_body_eof(&h), HTTP_PARSE_DONE);
    assert_int_equal(h.body_seen, 20);
}

/* A response whose final coding is not chunked is read until close. */
static void test_body_close_delimited_gzip(void **state)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, true, RAW(head));
    assert_false(h.chunked);
    assert_true(http_body_until_close(&h));
    assert_int_equal(http_body_parse(&h, "0\r\n\r\n", 5, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 5);
    assert_int_equal(http_body_eof(&h), HTTP_PARSE_DONE);
}

static void test_body_truncated(void **state)
{
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, true, RAW("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"));
    assert_false(http_body_until_close(&h));
    assert_int_equal(http_body_parse(&h, "ab", 2, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 2);
    assert_int_equal(http_body_eof(&h), HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(h.error), 502);
    assert_non_null(h.error_text);

    head_ok(&h, true, RAW("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"));
    assert_int_equal(http_body_parse(&h, "5\r\nhel", 6, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(http_body_eof(&h), HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(h.error), 502);

    head_ok(&h, false, RAW("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"));
    assert_int_equal(http_body_parse(&h, "ab", 2, &used, NULL), HTTP_PARSE_AGAIN);
    assert_int_equal(http_body_eof(&h), HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(h.error), 400);
}

static void test_body_decoded(void **state)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char body[] = "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\nNEXT";
    struct http_head h;
    size_t used;
    struct evbuffer *decoded = evbuffer_new();

    (void)state;
    assert_non_null(decoded);
    head_ok(&h, true, RAW(head));
    assert_int_equal(http_body_parse(&h, body, 10, &used, decoded), HTTP_PARSE_AGAIN);
    assert_int_equal(used, 10);
    assert_int_equal(http_body_parse(&h, body + 10, sizeof(body) - 1 - 10, &used, decoded),
                     HTTP_PARSE_DONE);
    assert_int_equal(10 + used, sizeof(body) - 1 - 4);
    char *text = buffer_text(decoded);
    assert_string_equal(text, "abc0123456789abcdef");
    free(text);

    /* without <decoded> nothing is appended */
    evbuffer_drain(decoded, evbuffer_get_length(decoded));
    head_ok(&h, true, RAW(head));
    assert_int_equal(http_body_parse(&h, RAW(body), &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(evbuffer_get_length(decoded), 0);
    evbuffer_free(decoded);
}

/* ------------------------------------------------------------------------
 * Forwarded request heads
 */

struct request_out_case {
    const char *name;
    const char *raw;
    const char *client_ip;
    const char *proto;
    const char *default_host;
    const char *expected; /* the whole head written to the clone */
};

static struct request_out_case request_out_cases[] = {
    {"plain GET", "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", "10.0.0.1",
     "http", NULL,
     "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n" ADDED_V4 VIA11 "\r\n"},
    {"hop-by-hop fields dropped",
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
     "TE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\n"
     "Proxy-Authorization: Basic eDp5\r\nProxy-Anything: 1\r\nAccept: */*\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n" ADDED_V4 VIA11 "\r\n"},
    {"names in Connection dropped",
     "POST / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Drop,Content-Length , host\r\n"
     "X-Drop: 1\r\nx-drop: 2\r\nX-Keep: 3\r\nContent-Length: 0\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "POST / HTTP/1.1\r\nHost: a\r\nX-Keep: 3\r\nContent-Length: 0\r\n" ADDED_V4 VIA11 "\r\n"},
    {"Transfer-Encoding named in Connection kept",
     "POST / HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\n"
     "Transfer-Encoding: chunked\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n" ADDED_V4 VIA11 "\r\n"},
    {"X-Forwarded-For appended",
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8 \r\n\r\n",
     "10.0.0.1", "http", NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 10.0.0.1\r\n"
     "X-Forwarded-Proto: http\r\nForwarded: for=10.0.0.1;proto=http\r\n" VIA11 "\r\n"},
    {"X-Forwarded-Proto replaced", "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n",
     "10.0.0.1", "http", NULL, "GET / HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"Forwarded appended, IPv6 quoted",
     "GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.60;proto=http;by=203.0.113.43\r\n\r\n",
     "::1", "https", NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: https\r\n"
     "Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[::1]\";proto=https\r\n" VIA11
     "\r\n"},
    {"Via appended", "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 fred, 1.1 p.example\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "GET / HTTP/1.1\r\nHost: a\r\n" ADDED_V4
     "Via: 1.0 fred, 1.1 p.example, 1.1 clonegate\r\n\r\n"},
    {"HTTP/1.0 with Host", "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
     "10.0.0.1", "http", "default.example", "GET / HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA10 "\r\n"},
    {"HTTP/1.0 gets default Host", "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", "10.0.0.1", "http",
     "default.example",
     "GET / HTTP/1.1\r\nAccept: */*\r\n" ADDED_V4 VIA10 "Host: default.example\r\n\r\n"},
    {"HTTP/1.0 without default Host", "GET / HTTP/1.0\r\n\r\n", "10.0.0.1", "http", NULL,
     "GET / HTTP/1.1\r\n" ADDED_V4 VIA10 "\r\n"},
    {"upgrade kept",
     "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
     "Sec-WebSocket-Key: k\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "GET /chat HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n" ADDED_V4 VIA11
     "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"},
    {"Upgrade without Connection: upgrade dropped",
     "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", "10.0.0.1", "http", NULL,
     "GET / HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form: origin-form target, Host from the authority",
     "GET http://localhost:8080/page?x=1 HTTP/1.1\r\nAccept: */*\r\nHost: evil.example\r\n"
     "X-A: 1\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "GET /page?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nAccept: */*\r\nX-A: 1\r\n" ADDED_V4 VIA11
     "\r\n"},
    {"absolute-form https, scheme in capitals",
     "GET HTTPS://Example.COM/a HTTP/1.1\r\nHost: example.com\r\n\r\n", "10.0.0.1", "http", NULL,
     "GET /a HTTP/1.1\r\nHost: Example.COM\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form empty path", "GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", "10.0.0.1", "http",
     NULL, "GET / HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form empty path, query", "GET http://a?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", "10.0.0.1",
     "http", NULL, "GET /?q=1 HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form OPTIONS empty path", "OPTIONS http://a:81 HTTP/1.1\r\nHost: b\r\n\r\n",
     "10.0.0.1", "http", NULL, "OPTIONS * HTTP/1.1\r\nHost: a:81\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form OPTIONS with a path", "OPTIONS http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
     "10.0.0.1", "http", NULL, "OPTIONS / HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form OPTIONS with a query", "OPTIONS http://a?x HTTP/1.1\r\nHost: a\r\n\r\n",
     "10.0.0.1", "http", NULL, "OPTIONS /?x HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"absolute-form HTTP/1.0 without Host, no default Host",
     "GET http://[::1]:8080/x HTTP/1.0\r\n\r\n", "10.0.0.1", "http", "default.example",
     "GET /x HTTP/1.1\r\nHost: [::1]:8080\r\n" ADDED_V4 VIA10 "\r\n"},
    {"OPTIONS * unchanged", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "10.0.0.1", "http", NULL,
     "OPTIONS * HTTP/1.1\r\nHost: a\r\n" ADDED_V4 VIA11 "\r\n"},
    {"end-to-end fields kept in order, trailing blanks trimmed",
     "PUT /x HTTP/1.1\r\nUser-Agent: t\r\nHost: a\r\nExpect: 100-continue\r\nCookie: c=1 \t\r\n"
     "Content-Length: 0\r\n\r\n",
     "10.0.0.1", "http", NULL,
     "PUT /x HTTP/1.1\r\nUser-Agent: t\r\nHost: a\r\nExpect: 100-continue\r\nCookie: c=1\r\n"
     "Content-Length: 0\r\n" ADDED_V4 VIA11 "\r\n"},
};

static void test_request_out(void **state)
{
    const struct request_out_case *c = *state;
    const struct http_forward_info info = {c->client_ip, c->proto, c->default_host, NULL};
    struct http_head h;
    struct evbuffer *out = evbuffer_new();

    assert_non_null(out);
    head_ok(&h, false, c->raw, strlen(c->raw));
    assert_int_equal(http_request_serialize(&h, c->raw, &info, out), 0);
    char *text = buffer_text(out);
    assert_string_equal(text, c->expected);
    free(text);
    evbuffer_free(out);
}

/* ------------------------------------------------------------------------
 * Forwarded response heads
 */

struct response_out_case {
    const char *name;
    const char *raw;
    bool keep_alive;
    bool http10_client;
    bool drop_framing;
    const char *expected;
};

static struct response_out_case response_out_cases[] = {
    {"kept alive", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true, false, false,
     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" VIA11 "\r\n"},
    {"closing", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n", false,
     false, false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" VIA11 "Connection: close\r\n\r\n"},
    {"kept HTTP/1.0 client", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true, true, false,
     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" VIA11 "Connection: keep-alive\r\n\r\n"},
    {"closing HTTP/1.0 client", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false, true, false,
     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" VIA11 "Connection: close\r\n\r\n"},
    {"framing dropped", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n",
     false, true, true, "HTTP/1.1 200 OK\r\nETag: \"e\"\r\n" VIA11 "Connection: close\r\n\r\n"},
    {"framing kept", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, false, false,
     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" VIA11 "\r\n"},
    {"hop-by-hop fields dropped",
     "HTTP/1.1 407 Auth\r\nConnection: close, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n"
     "Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nTE: trailers\r\n"
     "Content-Length: 0\r\n\r\n",
     true, false, false, "HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n" VIA11 "\r\n"},
    {"Via appended", "HTTP/1.1 200 OK\r\nVia: 1.1 cdn\r\nContent-Length: 0\r\n\r\n", true, false,
     false, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 cdn, 1.1 clonegate\r\n\r\n"},
    {"204 without its Content-Length", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", true,
     false, false, "HTTP/1.1 204 No Content\r\n" VIA11 "\r\n"},
    {"304 keeps its Content-Length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", true,
     false, false, "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n" VIA11 "\r\n"},
    {"HTTP/1.0 clone", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true, false, false,
     "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" VIA10 "\r\n"},
    {"missing reason", "HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", true, false, false,
     "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n" VIA11 "\r\n"},
    {"switching protocols",
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: s\r\n\r\n",
     true, false, false,
     "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s\r\n" VIA11
     "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"},
};

static void test_response_out(void **state)
{
    const struct response_out_case *c = *state;
    struct http_head h;
    struct evbuffer *out = evbuffer_new();

    assert_non_null(out);
    head_ok(&h, true, c->raw, strlen(c->raw));
    assert_int_equal(http_response_serialize(&h, c->raw, NULL, c->keep_alive, c->http10_client,
                                             c->drop_framing, out),
                     0);
    char *text = buffer_text(out);
    assert_string_equal(text, c->expected);
    free(text);
    evbuffer_free(out);
}

/* ------------------------------------------------------------------------
 * Small helpers of the API
 */

static void test_error_response(void **state)
{
    struct evbuffer *out = evbuffer_new();

    (void)state;
    assert_non_null(out);
    assert_int_equal(http_error_response(400, false, NULL, out), 0);
    assert_int_equal(http_error_response(503, true, "Retry-After: 1\r\n", out), 0);
    assert_int_equal(http_error_response(599, false, NULL, out), 0);
    char *text = buffer_text(out);
    assert_string_equal(text, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 16\r\nConnection: close\r\n\r\n400 Bad Request\n"
                              "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 24\r\nRetry-After: 1\r\n\r\n"
                              "503 Service Unavailable\n"
                              "HTTP/1.1 599 Unknown\r\nContent-Type: text/plain\r\n"
                              "Content-Length: 12\r\nConnection: close\r\n\r\n599 Unknown\n");
    free(text);
    evbuffer_free(out);
}

static void test_error_status(void **state)
{
    (void)state;
    assert_int_equal(http_error_status(HTTP_ERR_NONE), 400);
    assert_int_equal(http_error_status(HTTP_ERR_BAD_REQUEST), 400);
    assert_int_equal(http_error_status(HTTP_ERR_HEAD_TOO_LARGE), 431);
    assert_int_equal(http_error_status(HTTP_ERR_URI_TOO_LONG), 414);
    assert_int_equal(http_error_status(HTTP_ERR_BODY_TOO_LARGE), 413);
    assert_int_equal(http_error_status(HTTP_ERR_METHOD), 405);
    assert_int_equal(http_error_status(HTTP_ERR_BAD_RESPONSE), 502);
    assert_string_equal(http_reason(413), "Content Too Large");
    assert_string_equal(http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_reason(299), "Unknown");
}

static void test_header_value(void **state)
{
    static const char raw[] =
        "GET / HTTP/1.1\r\nHost: example.com:8080\r\nX-Forwarded-For: a\r\n"
        "X-Forwarded-For: b\r\nUser-Agent: ua 1.0  \r\nExpect: 100-Continue\r\n"
        "\r\n";
    struct http_head h;
    const char *v;
    size_t len = 0;

    (void)state;
    head_ok(&h, false, RAW(raw));
    v = http_header_value(&h, raw, HTTP_H_HOST, &len);
    assert_non_null(v);
    assert_int_equal(len, 16);
    assert_memory_equal(v, "example.com:8080", 16);
    v = http_header_value(&h, raw, HTTP_H_X_FORWARDED_FOR, &len);
    assert_non_null(v);
    assert_int_equal(len, 1);
    assert_memory_equal(v, "a", 1);
    v = http_header_value(&h, raw, HTTP_H_USER_AGENT, &len);
    assert_non_null(v);
    assert_int_equal(len, 6);
    assert_memory_equal(v, "ua 1.0", 6);
    assert_null(http_header_value(&h, raw, HTTP_H_CONTENT_LENGTH, &len));
    assert_null(http_header_value(&h, raw, HTTP_H_TRANSFER_ENCODING, &len));
    assert_true(h.expect_continue);
    assert_int_equal(h.header_count, 5);
    assert_int_equal(h.headers[0].id, HTTP_H_HOST);
    assert_int_equal(h.headers[4].id, HTTP_H_EXPECT);
}

struct method_case {
    const char *name;
    bool idempotent;
};

static struct method_case method_cases[] = {
    {"GET", true},    {"HEAD", true},  {"OPTIONS", true}, {"PUT", true},
    {"DELETE", true}, {"TRACE", true}, {"POST", false},   {"PATCH", false},
    {"PURGE", false}, {"LOCK", false}, {"MKCOL", false},
};

static void test_method_idempotent(void **state)
{
    const struct method_case *c = *state;
    char raw[64];
    struct http_head h;
    int n = snprintf(raw, sizeof(raw), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", c->name);

    head_ok(&h, false, raw, (size_t)n);
    assert_string_equal(span_text(raw, h.method), c->name);
    assert_int_equal(http_method_idempotent(&h), c->idempotent);
}

/* ------------------------------------------------------------------------
 * Regressions (issue 3: HTTP parser and serialiser review)
 */

/* A folded line must not reach a clone: the serialised head would carry
 * "\r\n b" inside a field value. */
static void test_issue_3_obs_fold_not_forwarded(void **state)
{
    static const char raw[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n";
    struct http_head h;

    (void)state;
    http_head_init(&h, false, 0, 0, 0);
    assert_int_equal(http_head_parse(&h, RAW(raw)), HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(h.error), 400);
}

/* A request whose final transfer coding is not chunked has no knowable
 * length (RFC 9112 6.3): refused with the head, because a head without a
 * body is forwarded before http_body_parse() ever sees the bytes after it. */
static void test_issue_3_transfer_coding_not_chunked(void **state)
{
    static const char *const raws[] = {
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n gzip\r\n\r\n",
    };

    unsigned wrong = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(raws) / sizeof(raws[0]); i++) {
        struct http_head h;
        http_head_init(&h, false, 0, 0, 0);
        if (http_head_parse(&h, raws[i], strlen(raws[i])) != HTTP_PARSE_ERROR ||
            http_error_status(h.error) != 400) {
            print_error("head accepted: %s", raws[i]);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

/* A field with an empty name is not a field (RFC 9110 5.1); it must not be
 * forwarded as ": b". */
static void test_issue_3_empty_field_name(void **state)
{
    static const char raw[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                              ": x\r\n\r\n0\r\n\r\n";
    struct http_head h;

    (void)state;
    http_head_init(&h, false, 0, 0, 0);
    assert_int_equal(http_head_parse(&h, RAW(raw)), HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(h.error), 400);
}

/* A response head over max_head is an invalid response (502) whether or not
 * its end is in the buffer, and is not reported as a request's. */
static void test_issue_3_response_head_too_large(void **state)
{
    static const char raw[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: 0123456789\r\n\r\n";
    const size_t max = sizeof(raw) - 2; /* one byte short */
    struct http_head once, step;
    enum http_parse r = HTTP_PARSE_AGAIN;

    (void)state;
    http_head_init(&once, true, max, 0, 0);
    assert_int_equal(http_head_parse(&once, RAW(raw)), HTTP_PARSE_ERROR);
    http_head_init(&step, true, max, 0, 0);
    for (size_t n = 1; n < sizeof(raw) && r == HTTP_PARSE_AGAIN; n++)
        r = http_head_parse(&step, raw, n);
    assert_int_equal(r, HTTP_PARSE_ERROR);
    assert_int_equal(http_error_status(step.error), 502);
    assert_int_equal(http_error_status(once.error), 502);
    assert_string_equal(once.error_text, step.error_text);
}

/* The connection closes right after a complete head: a Content-Length: 0
 * or an empty close-delimited body is a proper end, not a truncation. */
static void test_issue_3_eof_right_after_head(void **state)
{
    static const char *const raws[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.0 200 OK\r\n\r\n",
        "HTTP/1.1 204 No Content\r\n\r\n",
    };

    unsigned wrong = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(raws) / sizeof(raws[0]); i++) {
        struct http_head h;
        head_ok(&h, true, raws[i], strlen(raws[i]));
        if (http_body_eof(&h) != HTTP_PARSE_DONE) {
            print_error("end refused: %s", raws[i]);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

/* Trailer fields belong to the body, which is forwarded as it came: they
 * must not be added to the head's field list (their spans would point
 * outside the head, and they would count against HTTP_MAX_HEADERS). */
static void test_issue_3_trailers_leave_head_alone(void **state)
{
    static const char head[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char body[] = "0\r\nX-Trailer: 1\r\nOther: two\r\n\r\n";
    struct http_head h;
    size_t used;

    (void)state;
    head_ok(&h, false, RAW(head));
    assert_int_equal(h.header_count, 2);
    assert_int_equal(http_body_parse(&h, RAW(body), &used, NULL), HTTP_PARSE_DONE);
    assert_int_equal(used, sizeof(body) - 1);
    assert_int_equal(h.header_count, 2);
    assert_spans_sane(&h, head);
}

/* llhttp reads "chunked<TAB>" as another coding, so the body is taken to
 * run until close; the value trimmed on the way out must not then tell the
 * client "chunked". Refusing the response is as good as keeping the
 * framing the proxy used. */
static void test_issue_3_response_coding_trailing_tab(void **state)
{
    static const char raw[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n";
    struct http_head h, back;
    struct evbuffer *out = evbuffer_new();

    (void)state;
    assert_non_null(out);
    http_head_init(&h, true, 0, 0, 0);
    if (http_head_parse(&h, RAW(raw)) == HTTP_PARSE_ERROR) {
        assert_int_equal(http_error_status(h.error), 502);
        evbuffer_free(out);
        return;
    }
    assert_int_equal(http_response_serialize(&h, raw, NULL, false, false, false, out), 0);
    char *text = buffer_text(out);
    http_head_init(&back, true, 0, 0, 0);
    assert_int_equal(http_head_parse(&back, text, strlen(text)), HTTP_PARSE_DONE);
    if (back.chunked != h.chunked)
        print_error("proxy frames %s, client is told:\n%s", h.chunked ? "chunked" : "until close",
                    text);
    assert_int_equal(back.chunked, h.chunked);
    assert_int_equal(http_body_until_close(&back), http_body_until_close(&h));
    free(text);
    evbuffer_free(out);
}

/* ------------------------------------------------------------------------
 * Absolute-form targets (RFC 9112 3.2.2) and bare line feeds
 */

/* The target stays as received (the access log and the cache key read it);
 * the authority and the origin-form part are spans into it, and the Host
 * received is hop-by-hop: the key's host and the forwarded Host agree. */
static void test_absolute_form_spans(void **state)
{
    static const char raw[] = "GET http://localhost:8080/page?x HTTP/1.1\r\nHost: evil.example\r\n"
                              "Accept: */*\r\n\r\n";
    static const char plain[] = "GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n";
    struct http_head h;

    (void)state;
    head_ok(&h, false, RAW(raw));
    assert_string_equal(span_text(raw, h.target), "http://localhost:8080/page?x");
    assert_string_equal(span_text(raw, h.authority), "localhost:8080");
    assert_string_equal(span_text(raw, h.origin_form), "/page?x");
    assert_int_equal(h.headers[0].id, HTTP_H_HOST);
    assert_true(h.headers[0].hop);
    assert_false(h.headers[1].hop);

    /* origin-form: nothing recorded, Host forwarded; reset forgets both */
    http_head_reset(&h);
    assert_int_equal(http_head_parse(&h, RAW(plain)), HTTP_PARSE_DONE);
    assert_int_equal(h.authority.len, 0);
    assert_int_equal(h.origin_form.len, 0);
    assert_false(h.headers[0].hop);
}

struct refusal_case {
    const char *raw;
    const char *why; /* error_text */
};

static const struct refusal_case absolute_form_refused[] = {
    {"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "request target scheme is not http or https"},
    {"GET httpx://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "request target scheme is not http or https"},
    {"GET htt://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "request target scheme is not http or https"},
    {"GET *x HTTP/1.1\r\nHost: a\r\n\r\n", "request target scheme is not http or https"},
    {"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", "request target without an authority"},
    {"GET http://?x HTTP/1.1\r\nHost: a\r\n\r\n", "request target without an authority"},
    {"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo in the request target"},
    {"GET http://u:p@a/ HTTP/1.1\r\nHost: a\r\n\r\n", "userinfo in the request target"},
    {"GET https://@a HTTP/1.0\r\n\r\n", "userinfo in the request target"},
};

static const struct refusal_case bare_lf_refused[] = {
    {"GET /echo HTTP/1.1\nHost: a\r\n\r\n", "bare LF in the request head"},
    {"GET /echo HTTP/1.1\r\nHost: a\r\n\n", "bare LF in the request head"},
    {"\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n", "bare LF in the request head"},
    {"GET /echo HTTP/1.0\n\r\n", "bare LF in the request head"},
    {"GET /echo HTTP/1.0\r\n\n", "bare LF in the request head"},
    {"POST /echo HTTP/1.1\nHost: a\r\nContent-Length: 1\r\n\r\nx", "bare LF in the request head"},
    /* llhttp's own refusals, kept here so every position is covered */
    {"GET /echo HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", NULL},
    {"GET /echo HTTP/1.1\nHost: a\n\n", NULL},
};

/* Each head in <cases> is refused with 400, whole and a byte at a time,
 * and says why (<why>, when not NULL). */
static void assert_refused(const struct refusal_case *cases, size_t n)
{
    unsigned wrong = 0;

    for (size_t i = 0; i < n; i++) {
        const char *raw = cases[i].raw;
        size_t len = strlen(raw);
        struct http_head h;
        enum http_parse r = HTTP_PARSE_AGAIN;

        http_head_init(&h, false, 0, 0, 0);
        for (size_t k = 1; k <= len && r == HTTP_PARSE_AGAIN; k++)
            r = http_head_parse(&h, raw, k);
        if (r != HTTP_PARSE_ERROR || http_error_status(h.error) != 400 ||
            (cases[i].why && strcmp(h.error_text, cases[i].why) != 0)) {
            print_error("not refused as expected (%d, %s): %s", r,
                        h.error_text ? h.error_text : "-", raw);
            wrong++;
        }
        http_head_init(&h, false, 0, 0, 0);
        if (http_head_parse(&h, raw, len) != HTTP_PARSE_ERROR ||
            (cases[i].why && strcmp(h.error_text, cases[i].why) != 0)) {
            print_error("whole head not refused as expected: %s", raw);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

static void test_absolute_form_refused(void **state)
{
    (void)state;
    assert_refused(absolute_form_refused,
                   sizeof(absolute_form_refused) / sizeof(absolute_form_refused[0]));
}

static void test_bare_lf_refused(void **state)
{
    (void)state;
    assert_refused(bare_lf_refused, sizeof(bare_lf_refused) / sizeof(bare_lf_refused[0]));
}

/* CR LF everywhere, an empty line before the request line (RFC 9112 2.2)
 * and LFs in the body pass the scan. */
static void test_crlf_only_accepted(void **state)
{
    static const char *const raws[] = {
        "GET /echo HTTP/1.1\r\nHost: a\r\n\r\n",
        "\r\nGET /echo HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n",
        "GET /echo HTTP/1.0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\n\n",
    };
    unsigned wrong = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(raws) / sizeof(raws[0]); i++) {
        struct http_head h;
        http_head_init(&h, false, 0, 0, 0);
        if (http_head_parse(&h, raws[i], strlen(raws[i])) != HTTP_PARSE_DONE) {
            print_error("refused (%s): %s", h.error_text ? h.error_text : "-", raws[i]);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
}

/* The Host line written for an absolute-form target fits the room
 * reserved, whatever the authority's length, with no Host received to
 * make up for it. */
static void test_absolute_form_long_authority(void **state)
{
    enum { AUTH = 4000 };
    static const char pre[] = "GET http://", post[] = " HTTP/1.0\r\n\r\n";
    char *raw = malloc(sizeof(pre) - 1 + AUTH + sizeof(post));
    char *want = malloc(AUTH + 256);
    struct http_forward_info info = {"10.0.0.1", "http", "default.example", NULL};
    struct http_head h;
    struct evbuffer *out = evbuffer_new();

    (void)state;
    assert_non_null(raw);
    assert_non_null(want);
    assert_non_null(out);
    memcpy(raw, pre, sizeof(pre) - 1);
    memset(raw + sizeof(pre) - 1, 'h', AUTH);
    memcpy(raw + sizeof(pre) - 1 + AUTH, post, sizeof(post));
    head_ok(&h, false, raw, strlen(raw));
    assert_int_equal(h.authority.len, AUTH);
    assert_int_equal(http_request_serialize(&h, raw, &info, out), 0);
    int n = snprintf(want, AUTH + 256, "GET / HTTP/1.1\r\nHost: %.*s\r\n" ADDED_V4 VIA10 "\r\n",
                     AUTH, raw + sizeof(pre) - 1);
    assert_true(n > 0 && n < AUTH + 256);
    char *text = buffer_text(out);
    assert_string_equal(text, want);
    free(text);
    evbuffer_free(out);
    free(want);
    free(raw);
}

/* ------------------------------------------------------------------------
 * Main: fixed tests, then one test per table row
 */

/* Appends one test per row of <table>, named "<kind> '<row's field>'"; the
 * names are freed by main(). */
#define ADD_ROWS(kind, table, fn, field)                                                           \
    do {                                                                                           \
        for (size_t i_ = 0; i_ < sizeof(table) / sizeof((table)[0]); i_++) {                       \
            char *name_;                                                                           \
            if (asprintf(&name_, "%s '%s'", kind, (table)[i_].field) == -1)                        \
                return 1;                                                                          \
            tests[n++] = (struct CMUnitTest){name_, fn, NULL, NULL, &(table)[i_]};                 \
        }                                                                                          \
    } while (0)

#define ROWS(table) (sizeof(table) / sizeof((table)[0]))

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_body_content_length_split),
        cmocka_unit_test(test_body_chunked_extensions_trailers),
        cmocka_unit_test(test_body_chunked_bad_line),
        cmocka_unit_test(test_body_pipelined),
        cmocka_unit_test(test_body_none),
        cmocka_unit_test(test_body_head_response),
        cmocka_unit_test(test_body_interim_then_final),
        cmocka_unit_test(test_body_switching_protocols),
        cmocka_unit_test(test_body_upgrade_request),
        cmocka_unit_test(test_body_close_delimited),
        cmocka_unit_test(test_body_close_delimited_gzip),
        cmocka_unit_test(test_body_truncated),
        cmocka_unit_test(test_body_decoded),
        cmocka_unit_test(test_error_response),
        cmocka_unit_test(test_error_status),
        cmocka_unit_test(test_header_value),
        cmocka_unit_test(test_issue_3_obs_fold_not_forwarded),
        cmocka_unit_test(test_issue_3_transfer_coding_not_chunked),
        cmocka_unit_test(test_issue_3_empty_field_name),
        cmocka_unit_test(test_issue_3_response_head_too_large),
        cmocka_unit_test(test_issue_3_eof_right_after_head),
        cmocka_unit_test(test_issue_3_trailers_leave_head_alone),
        cmocka_unit_test(test_issue_3_response_coding_trailing_tab),
        cmocka_unit_test(test_absolute_form_spans),
        cmocka_unit_test(test_absolute_form_refused),
        cmocka_unit_test(test_absolute_form_long_authority),
        cmocka_unit_test(test_bare_lf_refused),
        cmocka_unit_test(test_crlf_only_accepted),
    };
    const size_t max = ROWS(fixed) + 2 * ROWS(framing_cases) + ROWS(response_cases) +
                       ROWS(bodiless_cases) + ROWS(request_out_cases) + ROWS(response_out_cases) +
                       ROWS(method_cases);
    struct CMUnitTest *tests = calloc(max, sizeof(*tests));
    size_t n = 0;
    int failed;

    if (tests == NULL)
        return 1;
    for (size_t i = 0; i < ROWS(fixed); i++)
        tests[n++] = fixed[i];
    ADD_ROWS("framing", framing_cases, test_framing, name);
    ADD_ROWS("incremental", framing_cases, test_incremental, name);
    ADD_ROWS("response head", response_cases, test_response_head, name);
    ADD_ROWS("bodiless", bodiless_cases, test_body_bodiless, name);
    ADD_ROWS("request out", request_out_cases, test_request_out, name);
    ADD_ROWS("response out", response_out_cases, test_response_out, name);
    ADD_ROWS("method", method_cases, test_method_idempotent, name);
    failed = _cmocka_run_group_tests("http", tests, n, NULL, NULL);
    for (size_t i = ROWS(fixed); i < n; i++)
        free((void *)(uintptr_t)tests[i].name);
    free(tests);
    return failed;
}
