/*
 * test_cache_policy: cache_policy.c through cache_policy.h.
 *
 * Every rule is a table row: Cache-Control parsing, what a request asks,
 * storability verdicts (with the order of their checks), freshness
 * lifetimes, ages, the use of a stored response, stale-if-error, 304
 * decisions, cache keys, Vary names and variants, HTTP-dates. Heads are
 * parsed by http.c from raw text, as the proxy would. Everything lives on
 * the stack or in static test tables; no thread, no I/O.
 */
#include "cache_policy.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"

#define T0    784111777000LL /* ms: Sun, 06 Nov 1994 08:49:37 GMT */
#define DATE0 "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
#define S     1000LL       /* ms per second */
#define BIG   4200         /* bytes: more than CACHE_POLICY_VARY_MAX */
#define NONE  (-1)         /* an absent numeric directive */
#define CLAMP 2147483648LL /* s: the delta-seconds clamp */

#define ROWS(t) (sizeof(t) / sizeof((t)[0]))

/* Request and response heads around extra header lines. */
#define REQ(extra)       "GET / HTTP/1.1\r\nHost: example.com\r\n" extra "\r\n"
#define REQM(m, extra)   m " / HTTP/1.1\r\nHost: example.com\r\n" extra "\r\n"
#define RESP(extra)      "HTTP/1.1 200 OK\r\n" extra "\r\n"
#define RESPS(st, extra) "HTTP/1.1 " st "\r\n" extra "\r\n"

/* ------------------------------------------------------------------------
 * Helpers
 */

/* The table row being checked, named when a check fails. */
static const char *row_table;
static size_t row_index;

static void at(const char *table, size_t i)
{
    row_table = table;
    row_index = i;
}

/* assert_int_equal that names the failing row first. */
#define CHECK(got, want)                                                                           \
    do {                                                                                           \
        long long got_ = (long long)(got), want_ = (long long)(want);                              \
        if (got_ != want_)                                                                         \
            print_error("%s row %zu: %s is %lld, expected %lld\n", row_table, row_index, #got,     \
                        got_, want_);                                                              \
        assert_int_equal(got_, want_);                                                             \
    } while (0)

static void parse(struct http_head *h, bool is_response, const char *raw)
{
    http_head_init(h, is_response, 0, 0, 0);
    assert_int_equal(http_head_parse(h, raw, strlen(raw)), HTTP_PARSE_DONE);
}

/* Parses the request <raw> into <h> and <rq>. */
static void request(struct http_head *h, const char *raw, struct cache_policy_request *rq)
{
    parse(h, false, raw);
    cache_policy_request(h, raw, rq);
}

/* Judges <resp_raw> to <req_raw> with <opts>. */
static void judge(const char *req_raw, const char *resp_raw, const struct cache_policy_opts *opts,
                  int64_t request_ms, int64_t response_ms, struct cache_policy_response *out)
{
    struct http_head req, resp;
    struct cache_policy_request rq;

    request(&req, req_raw, &rq);
    parse(&resp, true, resp_raw);
    cache_policy_response(&req, req_raw, &rq, &resp, resp_raw, request_ms, response_ms, opts, out);
}

enum opts_kind {
    OPTS_RFC = 0, /* everything 0: RFC 9111 only */
    OPTS_COOKIE,  /* store_set_cookie */
    OPTS_TTL,     /* default_ttl 60 s */
    OPTS_WINDOWS, /* swr 5 s, sie 60 s */
    OPTS_REFRESH, /* a stored GET response refreshed by a 304 */
};

static const struct cache_policy_opts opts_table[] = {
    [OPTS_RFC] = {0, 0, 0, false},           [OPTS_COOKIE] = {0, 0, 0, true},
    [OPTS_TTL] = {60 * S, 0, 0, false},      [OPTS_WINDOWS] = {0, 5 * S, 60 * S, false},
    [OPTS_REFRESH] = {0, 0, 0, false, true},
};

/* ------------------------------------------------------------------------
 * Cache-Control
 */

static const struct cc_row {
    const char *lines;
    uint32_t flags;
    int64_t max_age, s_maxage, max_stale, min_fresh, swr, sie;
} cc_rows[] = {
    {"", 0, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=60\r\n", 0, 60, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: MAX-AGE=60\r\n", 0, 60, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=\"60\"\r\n", 0, 60, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age = 60\r\n", 0, 60, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: No-Cache, max-age=5\r\n", CACHE_CC_NO_CACHE, 5, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: no-store\r\nCache-Control: max-age=7\r\n", CACHE_CC_NO_STORE, 7, NONE, NONE,
     NONE, NONE, NONE},
    {"Cache-Control:  public ,\t s-maxage=10 \r\n", CACHE_CC_PUBLIC, NONE, 10, NONE, NONE, NONE,
     NONE},
    {"Cache-Control: ,,max-age=4,,\r\n", 0, 4, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: foo, bar=baz, x=\"a,max-age=1\", max-age=3\r\n", 0, 3, NONE, NONE, NONE, NONE,
     NONE},
    {"Cache-Control: no-storex, nocache\r\n", 0, NONE, NONE, NONE, NONE, NONE, NONE},
    /* invalid or repeated max-age / s-maxage: stale */
    {"Cache-Control: max-age=abc\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=-1\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=1.5\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=10, max-age=20\r\n", 0, 0, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=10\r\nCache-Control: max-age=10\r\n", 0, 0, NONE, NONE, NONE, NONE,
     NONE},
    {"Cache-Control: s-maxage=x\r\n", 0, NONE, 0, NONE, NONE, NONE, NONE},
    {"Cache-Control: s-maxage=1, s-maxage=2\r\n", 0, NONE, 0, NONE, NONE, NONE, NONE},
    /* overflow clamps to 2^31 */
    {"Cache-Control: max-age=99999999999999999999999999\r\n", 0, CLAMP, NONE, NONE, NONE, NONE,
     NONE},
    {"Cache-Control: max-age=2147483649\r\n", 0, CLAMP, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-age=2147483647\r\n", 0, 2147483647LL, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: s-maxage=\"99999999999999999999\"\r\n", 0, NONE, CLAMP, NONE, NONE, NONE,
     NONE},
    /* qualified forms, commas inside the quotes */
    {"Cache-Control: no-cache=\"Set-Cookie, X-Foo\", max-age=9\r\n", CACHE_CC_NO_CACHE, 9, NONE,
     NONE, NONE, NONE, NONE},
    {"Cache-Control: private=\"x\"\r\n", CACHE_CC_PRIVATE, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: private=\"a\\\"b,c\", max-age=2\r\n", CACHE_CC_PRIVATE, 2, NONE, NONE, NONE,
     NONE, NONE},
    /* max-stale with and without a value */
    {"Cache-Control: max-stale\r\n", CACHE_CC_MAX_STALE_ANY, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: max-stale=30\r\n", 0, NONE, NONE, 30, NONE, NONE, NONE},
    {"Cache-Control: max-stale=abc\r\n", 0, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: min-fresh=20\r\n", 0, NONE, NONE, NONE, 20, NONE, NONE},
    {"Cache-Control: min-fresh=5, min-fresh=9\r\n", 0, NONE, NONE, NONE, 5, NONE, NONE},
    {"Cache-Control: stale-while-revalidate=30, stale-if-error=600\r\n", 0, NONE, NONE, NONE, NONE,
     30, 600},
    {"Cache-Control: stale-while-revalidate=\"7\", stale-if-error=x\r\n", 0, NONE, NONE, NONE, NONE,
     7, NONE},
    {"Cache-Control: must-revalidate, proxy-revalidate, only-if-cached, no-transform, "
     "IMMUTABLE\r\n",
     CACHE_CC_MUST_REVALIDATE | CACHE_CC_PROXY_REVALIDATE | CACHE_CC_ONLY_IF_CACHED |
         CACHE_CC_NO_TRANSFORM | CACHE_CC_IMMUTABLE,
     NONE, NONE, NONE, NONE, NONE, NONE},
    /* Pragma only without Cache-Control */
    {"Pragma: no-cache\r\n", CACHE_CC_PRAGMA_NO_CACHE, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Pragma: foo, No-Cache\r\n", CACHE_CC_PRAGMA_NO_CACHE, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Pragma: nocache\r\n", 0, NONE, NONE, NONE, NONE, NONE, NONE},
    {"Pragma: no-cache\r\nCache-Control: max-age=5\r\n", 0, 5, NONE, NONE, NONE, NONE, NONE},
    {"Cache-Control: foo\r\nPragma: no-cache\r\n", 0, NONE, NONE, NONE, NONE, NONE, NONE},
};

static void test_parse_cc(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(cc_rows); i++) {
        const struct cc_row *r = &cc_rows[i];
        char raw[512];
        struct http_head h;
        struct cache_policy_cc cc;

        snprintf(raw, sizeof(raw), "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n", r->lines);
        parse(&h, false, raw);
        cache_policy_parse_cc(&h, raw, &cc);
        at("cc", i);
        CHECK(cc.flags, r->flags);
        CHECK(cc.max_age, r->max_age);
        CHECK(cc.s_maxage, r->s_maxage);
        CHECK(cc.max_stale, r->max_stale);
        CHECK(cc.min_fresh, r->min_fresh);
        CHECK(cc.stale_while_revalidate, r->swr);
        CHECK(cc.stale_if_error, r->sie);
    }
}

/* ------------------------------------------------------------------------
 * Requests
 */

static const struct request_row {
    const char *raw;
    bool lookup, is_head, unsafe, authorization, conditional, no_cache;
} request_rows[] = {
    {REQ(""), true, false, false, false, false, false},
    {REQM("HEAD", ""), true, true, false, false, false, false},
    {REQ("Range: bytes=0-1\r\n"), false, false, false, false, false, false},
    {REQM("HEAD", "Range: bytes=0-1\r\n"), false, true, false, false, false, false},
    {REQM("POST", "Content-Length: 0\r\n"), false, false, true, false, false, false},
    {REQM("PUT", "Content-Length: 0\r\n"), false, false, true, false, false, false},
    {REQM("DELETE", ""), false, false, true, false, false, false},
    {REQM("PATCH", "Content-Length: 0\r\n"), false, false, true, false, false, false},
    {REQM("OPTIONS", ""), false, false, false, false, false, false},
    {REQM("TRACE", ""), false, false, false, false, false, false},
    {REQ("Authorization: Basic eA==\r\n"), true, false, false, true, false, false},
    {REQ("If-None-Match: \"a\"\r\n"), true, false, false, false, true, false},
    {REQ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"), true, false, false, false, true,
     false},
    {REQ("Cache-Control: no-cache\r\n"), true, false, false, false, false, true},
    {REQ("Pragma: no-cache\r\n"), true, false, false, false, false, true},
    {REQ("Cache-Control: max-age=0\r\n"), true, false, false, false, false, true},
    {REQ("Cache-Control: max-age=x\r\n"), true, false, false, false, false, true},
    {REQ("Cache-Control: max-age=1\r\n"), true, false, false, false, false, false},
    {REQ("Pragma: no-cache\r\nCache-Control: max-age=5\r\n"), true, false, false, false, false,
     false},
};

static void test_request(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(request_rows); i++) {
        const struct request_row *r = &request_rows[i];
        struct http_head h;
        struct cache_policy_request rq;

        at("request", i);
        request(&h, r->raw, &rq);
        CHECK(rq.lookup, r->lookup);
        CHECK(rq.is_head, r->is_head);
        CHECK(rq.unsafe, r->unsafe);
        CHECK(rq.authorization, r->authorization);
        CHECK(rq.conditional, r->conditional);
        CHECK(rq.no_cache, r->no_cache);
    }
}

/* ------------------------------------------------------------------------
 * Storability
 */

#define LM5   "Last-Modified: Tue, 01 Nov 1994 08:49:37 GMT\r\n" /* 5 days before DATE0 */
#define LM100 "Last-Modified: Fri, 29 Jul 1994 08:49:37 GMT\r\n" /* 100 days before */
#define EXP1H "Expires: Sun, 06 Nov 1994 09:49:37 GMT\r\n"       /* DATE0 + 1 h */
#define MA60  "Cache-Control: max-age=60\r\n"
#define AUTH  "Authorization: Bearer t\r\n"
#define ETAG  "ETag: \"v1\"\r\n"

static const struct verdict_row {
    const char *req, *resp;
    enum opts_kind opts;
    enum cache_policy_verdict verdict;
    bool no_cache;
} verdict_rows[] = {
    {REQ(""), RESP(MA60), OPTS_RFC, CACHE_STORE, false},
    {REQM("HEAD", ""), RESP(MA60), OPTS_RFC, CACHE_NOT_METHOD, false},
    /* a HEAD's 304 refreshes the stored GET response; other methods never */
    {REQM("HEAD", ""), RESP(MA60), OPTS_REFRESH, CACHE_STORE, false},
    {REQM("POST", "Content-Length: 0\r\n"), RESP(MA60), OPTS_REFRESH, CACHE_NOT_METHOD, false},
    /* Vary on a field the proxy rewrites: the clone saw other values */
    {REQ("X-Forwarded-For: 10.0.0.1\r\n"), RESP(MA60 "Vary: X-Forwarded-For\r\n"), OPTS_RFC,
     CACHE_NOT_VARY_FORWARDED, false},
    {REQ(""), RESP(MA60 "Vary: Accept-Encoding, forwarded\r\n"), OPTS_RFC, CACHE_NOT_VARY_FORWARDED,
     false},
    {REQ(""), RESP(MA60 "Vary: Via\r\n"), OPTS_RFC, CACHE_NOT_VARY_FORWARDED, false},
    {REQ(""), RESP(MA60 "Vary: X-Forwarded-Proto\r\n"), OPTS_RFC, CACHE_NOT_VARY_FORWARDED, false},
    {REQ(""), RESP(MA60 "Vary: X-Forwarded-Host, Accept\r\n"), OPTS_RFC, CACHE_STORE, false},
    {REQM("POST", "Content-Length: 0\r\n"), RESP(MA60), OPTS_RFC, CACHE_NOT_METHOD, false},
    {REQM("OPTIONS", ""), RESP(MA60), OPTS_RFC, CACHE_NOT_METHOD, false},
    {REQ(""), RESPS("103 Early Hints", MA60), OPTS_RFC, CACHE_NOT_STATUS, false},
    {REQ(""), RESPS("206 Partial Content", MA60 "Content-Range: bytes 0-0/9\r\n"), OPTS_RFC,
     CACHE_NOT_STATUS, false},
    {REQ(""), RESPS("304 Not Modified", MA60 ETAG), OPTS_RFC, CACHE_NOT_STATUS, false},
    {REQ(""), RESP("Cache-Control: no-store, max-age=60\r\n"), OPTS_RFC, CACHE_NOT_NO_STORE, false},
    {REQ("Cache-Control: no-store\r\n"), RESP(MA60), OPTS_RFC, CACHE_NOT_NO_STORE, false},
    {REQ(""), RESP("Cache-Control: private, max-age=60\r\n"), OPTS_RFC, CACHE_NOT_PRIVATE, false},
    {REQ(""), RESP("Cache-Control: private=\"Set-Cookie\", max-age=60\r\n"), OPTS_RFC,
     CACHE_NOT_PRIVATE, false},
    {REQ(AUTH), RESP(MA60), OPTS_RFC, CACHE_NOT_AUTHORIZATION, false},
    {REQ(AUTH), RESP("Cache-Control: public, max-age=60\r\n"), OPTS_RFC, CACHE_STORE, false},
    {REQ(AUTH), RESP("Cache-Control: s-maxage=60\r\n"), OPTS_RFC, CACHE_STORE, false},
    {REQ(AUTH), RESP("Cache-Control: must-revalidate, max-age=60\r\n"), OPTS_RFC, CACHE_STORE,
     false},
    {REQ(AUTH), RESP("Cache-Control: proxy-revalidate, max-age=60\r\n"), OPTS_RFC,
     CACHE_NOT_AUTHORIZATION, false},
    {REQ(""), RESP(MA60 "Set-Cookie: a=b\r\n"), OPTS_RFC, CACHE_NOT_SET_COOKIE, false},
    {REQ(""), RESP(MA60 "Set-Cookie: a=b\r\n"), OPTS_COOKIE, CACHE_STORE, false},
    {REQ(""), RESP(MA60 "Vary: *\r\n"), OPTS_RFC, CACHE_NOT_VARY_STAR, false},
    {REQ(""), RESP(MA60 "Vary: Accept-Encoding, *\r\n"), OPTS_RFC, CACHE_NOT_VARY_STAR, false},
    {REQ(""), RESP(MA60 "Vary: Accept\r\nVary: *\r\n"), OPTS_RFC, CACHE_NOT_VARY_STAR, false},
    {REQ(""), RESP(MA60 "Vary: Accept-Encoding\r\n"), OPTS_RFC, CACHE_STORE, false},
    /* statuses outside the default list need explicit freshness or public */
    {REQ(""), RESPS("302 Found", ETAG LM5), OPTS_RFC, CACHE_NOT_STATUS, false},
    {REQ(""), RESPS("302 Found", ETAG), OPTS_TTL, CACHE_NOT_STATUS, false},
    {REQ(""), RESPS("302 Found", MA60), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESPS("302 Found", DATE0 EXP1H), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESPS("302 Found", "Cache-Control: public\r\n" ETAG), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESPS("500 Internal Server Error", "Cache-Control: s-maxage=5\r\n"), OPTS_RFC,
     CACHE_STORE, false},
    {REQ(""), RESPS("404 Not Found", ETAG), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESPS("410 Gone", DATE0 LM5), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESPS("404 Not Found", ""), OPTS_TTL, CACHE_STORE, false},
    {REQ(""), RESPS("501 Not Implemented", ""), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    /* no lifetime and no validator: useless */
    {REQ(""), RESP(""), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    {REQ(""), RESP("Cache-Control: max-age=0\r\n"), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    {REQ(""), RESP(DATE0 "Expires: 0\r\n"), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    {REQ(""), RESP("Last-Modified: yesterday\r\n"), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    {REQ(""), RESP(ETAG), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESP(DATE0 LM5), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESP("Cache-Control: max-age=0\r\n" ETAG), OPTS_RFC, CACHE_STORE, false},
    /* older on arrival than its lifetime and stale windows: useless too */
    {REQ(""), RESP("Age: 100\r\n" MA60), OPTS_RFC, CACHE_NOT_NO_LIFETIME, false},
    {REQ(""), RESP("Age: 100\r\n" MA60 ETAG), OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESP("Age: 100\r\nCache-Control: max-age=60, stale-while-revalidate=60\r\n"),
     OPTS_RFC, CACHE_STORE, false},
    {REQ(""), RESP("Age: 59\r\n" MA60), OPTS_RFC, CACHE_STORE, false},
    /* no-cache with a validator: stored, validated before each use */
    {REQ(""), RESP("Cache-Control: no-cache\r\n" ETAG), OPTS_RFC, CACHE_STORE, true},
    {REQ(""), RESP("Cache-Control: no-cache=\"x\"\r\n" DATE0 LM5), OPTS_RFC, CACHE_STORE, true},
    {REQ(""), RESP("Cache-Control: no-cache\r\n"), OPTS_RFC, CACHE_NOT_NO_LIFETIME, true},
    {REQ(""), RESP("Pragma: no-cache\r\n" MA60), OPTS_RFC, CACHE_STORE, false},
    /* the order of the checks */
    {REQM("HEAD", ""), RESPS("206 Partial Content", "Cache-Control: no-store\r\n"), OPTS_RFC,
     CACHE_NOT_METHOD, false},
    {REQ(""), RESPS("304 Not Modified", "Cache-Control: no-store\r\n"), OPTS_RFC, CACHE_NOT_STATUS,
     false},
    {REQ(""), RESP("Cache-Control: private, no-store\r\n"), OPTS_RFC, CACHE_NOT_NO_STORE, false},
    {REQ(AUTH), RESP("Cache-Control: private, max-age=9\r\n"), OPTS_RFC, CACHE_NOT_PRIVATE, false},
    {REQ(AUTH), RESP(MA60 "Set-Cookie: a=b\r\n"), OPTS_RFC, CACHE_NOT_AUTHORIZATION, false},
    {REQ(""), RESP(MA60 "Set-Cookie: a=b\r\nVary: *\r\n"), OPTS_RFC, CACHE_NOT_SET_COOKIE, false},
    {REQ(""), RESPS("302 Found", "Vary: *\r\n"), OPTS_RFC, CACHE_NOT_VARY_STAR, false},
};

static void test_verdict(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(verdict_rows); i++) {
        const struct verdict_row *r = &verdict_rows[i];
        struct cache_policy_response out;

        at("verdict", i);
        judge(r->req, r->resp, &opts_table[r->opts], T0, T0, &out);
        CHECK(out.verdict, r->verdict);
        CHECK(out.no_cache, r->no_cache);
    }
}

/* Vary names or this request's values past CACHE_POLICY_VARY_MAX. */
static void test_verdict_vary_too_long(void **state)
{
    static char req_raw[BIG + 128], resp_raw[BIG + 128];
    char big[BIG + 1];
    struct cache_policy_response out;

    (void)state;
    memset(big, 'a', BIG);
    big[BIG] = '\0';
    snprintf(req_raw, sizeof(req_raw), REQ("X-Big: %s\r\n"), big);
    judge(req_raw, RESP(MA60 "Vary: X-Big\r\n"), &opts_table[OPTS_RFC], T0, T0, &out);
    CHECK(out.verdict, CACHE_NOT_VARY_TOO_LONG);
    judge(REQ("X-Big: 1\r\n"), RESP(MA60 "Vary: X-Big\r\n"), &opts_table[OPTS_RFC], T0, T0, &out);
    CHECK(out.verdict, CACHE_STORE);
    snprintf(resp_raw, sizeof(resp_raw), RESP(MA60 "Vary: %s\r\n"), big);
    judge(REQ(""), resp_raw, &opts_table[OPTS_RFC], T0, T0, &out);
    CHECK(out.verdict, CACHE_NOT_VARY_TOO_LONG);
}

/* ------------------------------------------------------------------------
 * Freshness lifetime and windows
 */

static const struct freshness_row {
    const char *resp;
    enum opts_kind opts;
    int64_t freshness_ms;
    bool heuristic, must_revalidate;
    int64_t swr_ms, sie_ms;
} freshness_rows[] = {
    {RESP(DATE0 MA60), OPTS_RFC, 60 * S, false, false, 0, 0},
    {RESP(DATE0 "Cache-Control: s-maxage=30, max-age=60\r\n"), OPTS_RFC, 30 * S, false, true, 0, 0},
    {RESP(DATE0 "Cache-Control: max-age=60, s-maxage=90\r\n"), OPTS_RFC, 90 * S, false, true, 0, 0},
    {RESP(DATE0 MA60 EXP1H), OPTS_RFC, 60 * S, false, false, 0, 0},
    {RESP(DATE0 EXP1H), OPTS_RFC, 3600 * S, false, false, 0, 0},
    {RESP(EXP1H), OPTS_RFC, 3600 * S, false, false, 0, 0},
    {RESP(DATE0 "Expires: 0\r\n"), OPTS_RFC, 0, false, false, 0, 0},
    {RESP(DATE0 "Expires: 0\r\n"), OPTS_TTL, 0, false, false, 0, 0},
    {RESP(DATE0 "Expires: Sun, 06 Nov 1994 08:00:00 GMT\r\n"), OPTS_RFC, 0, false, false, 0, 0},
    {RESP(DATE0 EXP1H LM100), OPTS_TTL, 3600 * S, false, false, 0, 0},
    {RESP(DATE0), OPTS_TTL, 60 * S, true, false, 0, 0},
    {RESP(DATE0 LM100), OPTS_TTL, 60 * S, true, false, 0, 0},
    {RESP(DATE0 LM5), OPTS_RFC, 43200 * S, true, false, 0, 0},
    {RESP(DATE0 LM100), OPTS_RFC, CACHE_POLICY_HEURISTIC_MAX_MS, true, false, 0, 0},
    {RESPS("404 Not Found", DATE0 LM5), OPTS_RFC, 43200 * S, true, false, 0, 0},
    {RESPS("302 Found", DATE0 LM5), OPTS_RFC, 0, false, false, 0, 0},
    {RESPS("302 Found", DATE0 LM5 "Cache-Control: public\r\n"), OPTS_RFC, 43200 * S, true, false, 0,
     0},
    {RESP("Date: Tue, 01 Nov 1994 08:49:37 GMT\r\n"
          "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
     OPTS_RFC, 0, false, false, 0, 0},
    {RESP(DATE0 "Last-Modified: 1994-11-01\r\n"), OPTS_RFC, 0, false, false, 0, 0},
    {RESP(DATE0 LM5 "Cache-Control: max-age=0\r\n"), OPTS_RFC, 0, false, false, 0, 0},
    {RESP(DATE0 LM5 "Cache-Control: max-age=oops\r\n"), OPTS_RFC, 0, false, false, 0, 0},
    {RESP("Cache-Control: max-age=99999999999\r\n"), OPTS_RFC, CLAMP *S, false, false, 0, 0},
    /* revalidation and the stale windows */
    {RESP("Cache-Control: max-age=1, must-revalidate\r\n"), OPTS_RFC, S, false, true, 0, 0},
    {RESP("Cache-Control: max-age=1, proxy-revalidate\r\n"), OPTS_RFC, S, false, true, 0, 0},
    {RESP(MA60), OPTS_WINDOWS, 60 * S, false, false, 5 * S, 60 * S},
    {RESP("Cache-Control: max-age=1, stale-while-revalidate=30, stale-if-error=600\r\n"),
     OPTS_WINDOWS, S, false, false, 30 * S, 600 * S},
    {RESP("Cache-Control: max-age=1, stale-while-revalidate=0\r\n"), OPTS_WINDOWS, S, false, false,
     0, 60 * S},
};

static void test_freshness(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(freshness_rows); i++) {
        const struct freshness_row *r = &freshness_rows[i];
        struct cache_policy_response out;

        at("freshness", i);
        judge(REQ(""), r->resp, &opts_table[r->opts], T0, T0, &out);
        CHECK(out.freshness_ms, r->freshness_ms);
        CHECK(out.heuristic, r->heuristic);
        CHECK(out.must_revalidate, r->must_revalidate);
        CHECK(out.swr_ms, r->swr_ms);
        CHECK(out.sie_ms, r->sie_ms);
    }
}

/* ------------------------------------------------------------------------
 * Age (RFC 9111 4.2.3)
 */

static const struct age_row {
    const char *resp;
    int64_t request_ms, response_ms;
    int64_t initial_age_ms, date_ms, last_modified_ms;
} age_rows[] = {
    {RESP(DATE0), T0, T0, 0, T0, -1},
    {RESP(DATE0), T0 + 8 * S, T0 + 10 * S, 10 * S, T0, -1},
    {RESP(DATE0 "Age: 30\r\n"), T0 - 2 * S, T0, 32 * S, T0, -1},
    {RESP(DATE0 "Age: 30\r\n"), T0 + 99 * S, T0 + 100 * S, 100 * S, T0, -1},
    {RESP("Age: 5\r\n"), T0 - 1 * S, T0, 6 * S, T0, -1},
    {RESP("Date: never\r\nAge: 5\r\n"), T0, T0, 5 * S, T0, -1},
    {RESP(DATE0), T0 - 20 * S, T0 - 10 * S, 10 * S, T0, -1},
    {RESP(DATE0 "Age: abc\r\n"), T0 - 3 * S, T0, 3 * S, T0, -1},
    {RESP(DATE0 "Age: 99999999999999\r\n"), T0, T0, CLAMP *S, T0, -1},
    {RESP(DATE0 LM5), T0, T0, 0, T0, 783679777 * S},
};

static void test_age(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(age_rows); i++) {
        const struct age_row *r = &age_rows[i];
        struct cache_policy_response out;

        at("age", i);
        judge(REQ(""), r->resp, &opts_table[OPTS_RFC], r->request_ms, r->response_ms, &out);
        CHECK(out.initial_age_ms, r->initial_age_ms);
        CHECK(out.date_ms, r->date_ms);
        CHECK(out.last_modified_ms, r->last_modified_ms);
    }
}

static const struct age_ms_row {
    int64_t initial_age_ms, response_ms, now_ms, age_ms;
} age_ms_rows[] = {
    {0, T0, T0 + 5 * S, 5 * S},           {7 * S, T0, T0 + 5 * S, 12 * S},
    {7 * S, T0, T0 - 5 * S, 7 * S},       {-9 * S, T0, T0 + 5 * S, 0},
    {INT64_MAX, 0, INT64_MAX, INT64_MAX}, {0, INT64_MIN, INT64_MAX, INT64_MAX},
};

static void test_age_ms(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(age_ms_rows); i++) {
        const struct age_ms_row *r = &age_ms_rows[i];
        at("age_ms", i);
        CHECK(cache_policy_age_ms(r->initial_age_ms, r->response_ms, r->now_ms), r->age_ms);
    }
}

/* ------------------------------------------------------------------------
 * Use of a stored response
 */

/* Stored facts: initial age, freshness, swr, sie (all ms), flags; the
 * response arrived at T0. */
#define STORED(ia, fr, swr, sie, mr, nc)                                                           \
    {                                                                                              \
        (ia), T0, (fr), (swr), (sie), (mr), (nc)                                                   \
    }

static const struct use_row {
    struct cache_policy_stored st;
    const char *req;
    int64_t now_ms;
    enum cache_policy_use use;
    int64_t age_ms;
} use_rows[] = {
    {STORED(0, 60 * S, 0, 0, false, false), REQ(""), T0 + 10 * S, CACHE_USE_FRESH, 10 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ(""), T0 + 60 * S, CACHE_USE_VALIDATE, 60 * S},
    {STORED(50 * S, 60 * S, 0, 0, false, false), REQ(""), T0 + 5 * S, CACHE_USE_FRESH, 55 * S},
    {STORED(50 * S, 60 * S, 0, 0, false, false), REQ(""), T0 + 15 * S, CACHE_USE_VALIDATE, 65 * S},
    {STORED(3 * S, 60 * S, 0, 0, false, false), REQ(""), T0 - 5 * S, CACHE_USE_FRESH, 3 * S},
    {STORED(0, 60 * S, 0, 0, false, true), REQ(""), T0 + 1 * S, CACHE_USE_VALIDATE, 1 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, true), REQ("Cache-Control: max-stale\r\n"), T0 + 61 * S,
     CACHE_USE_VALIDATE, 61 * S},
    /* the request refuses a fresh response */
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: no-cache\r\n"), T0 + 1 * S,
     CACHE_USE_REQUEST, 1 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Pragma: no-cache\r\n"), T0 + 1 * S,
     CACHE_USE_REQUEST, 1 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-age=0\r\n"), T0,
     CACHE_USE_REQUEST, 0},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-age=5\r\n"), T0 + 10 * S,
     CACHE_USE_REQUEST, 10 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-age=10\r\n"), T0 + 10 * S,
     CACHE_USE_FRESH, 10 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: min-fresh=55\r\n"), T0 + 10 * S,
     CACHE_USE_REQUEST, 10 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: min-fresh=50\r\n"), T0 + 10 * S,
     CACHE_USE_FRESH, 10 * S},
    /* stale */
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-stale\r\n"), T0 + 1000 * S,
     CACHE_USE_STALE, 1000 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-stale=30\r\n"), T0 + 80 * S,
     CACHE_USE_STALE, 80 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-stale=30\r\n"), T0 + 90 * S,
     CACHE_USE_STALE, 90 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-stale=30\r\n"), T0 + 91 * S,
     CACHE_USE_VALIDATE, 91 * S},
    {STORED(0, 60 * S, 0, 0, true, false), REQ("Cache-Control: max-stale\r\n"), T0 + 61 * S,
     CACHE_USE_VALIDATE, 61 * S},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: max-stale, no-cache\r\n"),
     T0 + 61 * S, CACHE_USE_VALIDATE, 61 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, false), REQ(""), T0 + 70 * S, CACHE_USE_SWR, 70 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, false), REQ(""), T0 + 90 * S, CACHE_USE_VALIDATE, 90 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, false), REQ("Cache-Control: no-cache\r\n"), T0 + 70 * S,
     CACHE_USE_VALIDATE, 70 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, false), REQ("Cache-Control: max-age=0\r\n"), T0 + 70 * S,
     CACHE_USE_VALIDATE, 70 * S},
    {STORED(0, 60 * S, 30 * S, 0, true, false), REQ(""), T0 + 70 * S, CACHE_USE_VALIDATE, 70 * S},
    {STORED(0, 60 * S, 30 * S, 0, false, false), REQ("Cache-Control: max-stale=5\r\n"), T0 + 70 * S,
     CACHE_USE_SWR, 70 * S},
    {STORED(0, 0, 0, 0, false, false), REQ(""), T0, CACHE_USE_VALIDATE, 0},
};

static void test_use(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(use_rows); i++) {
        const struct use_row *r = &use_rows[i];
        struct http_head h;
        struct cache_policy_request rq;
        int64_t age = -1;

        at("use", i);
        request(&h, r->req, &rq);
        CHECK(cache_policy_use(&r->st, &rq, r->now_ms, &age), r->use);
        CHECK(age, r->age_ms);
    }
}

static const struct sie_row {
    struct cache_policy_stored st;
    const char *req;
    int64_t now_ms;
    bool ok;
} sie_rows[] = {
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ(""), T0 + 10 * S, false},
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ(""), T0 + 70 * S, true},
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ(""), T0 + 120 * S, true},
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ(""), T0 + 121 * S, false},
    {STORED(0, 60 * S, 0, 60 * S, true, false), REQ(""), T0 + 70 * S, false},
    {STORED(0, 60 * S, 0, 60 * S, false, true), REQ(""), T0 + 70 * S, false},
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ("Cache-Control: stale-if-error=120\r\n"),
     T0 + 150 * S, true},
    {STORED(0, 60 * S, 0, 60 * S, false, false), REQ("Cache-Control: stale-if-error=10\r\n"),
     T0 + 100 * S, true},
    {STORED(0, 60 * S, 0, 0, false, false), REQ(""), T0 + 61 * S, false},
    {STORED(0, 60 * S, 0, 0, false, false), REQ("Cache-Control: stale-if-error=5\r\n"), T0 + 64 * S,
     true},
    {STORED(10 * S, 60 * S, 0, 5 * S, false, false), REQ(""), T0 + 56 * S, false},
};

static void test_stale_if_error(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(sie_rows); i++) {
        const struct sie_row *r = &sie_rows[i];
        struct http_head h;
        struct cache_policy_request rq;

        at("stale-if-error", i);
        request(&h, r->req, &rq);
        CHECK(cache_policy_stale_if_error(&r->st, &rq, r->now_ms), r->ok);
    }
}

/* ------------------------------------------------------------------------
 * Conditional requests
 */

#define LM0_MS 784111777000LL /* Last-Modified of the stored response */

static const struct nm_row {
    const char *req;
    const char *etag; /* NULL: none stored */
    int64_t last_modified_ms;
    bool not_modified;
} nm_rows[] = {
    {REQ(""), "\"abc\"", LM0_MS, false},
    {REQ("If-None-Match: \"abc\"\r\n"), "\"abc\"", -1, true},
    {REQ("If-None-Match: W/\"abc\"\r\n"), "\"abc\"", -1, true},
    {REQ("If-None-Match: \"abc\"\r\n"), "W/\"abc\"", -1, true},
    {REQ("If-None-Match: W/\"abc\"\r\n"), "W/\"abc\"", -1, true},
    {REQ("If-None-Match: \"xyz\"\r\n"), "\"abc\"", -1, false},
    {REQ("If-None-Match: \"ABC\"\r\n"), "\"abc\"", -1, false},
    {REQ("If-None-Match: \"a\", \"b\" ,\"abc\"\r\n"), "\"abc\"", -1, true},
    {REQ("If-None-Match: \"a\"\r\nIf-None-Match: W/\"abc\"\r\n"), "\"abc\"", -1, true},
    {REQ("If-None-Match: \"a,b\"\r\n"), "\"a,b\"", -1, true},
    {REQ("If-None-Match: \"a,b\"\r\n"), "\"a\"", -1, false},
    {REQ("If-None-Match: *\r\n"), "\"abc\"", -1, true},
    {REQ("If-None-Match: *\r\n"), NULL, LM0_MS, false},
    {REQ("If-None-Match: \"abc\"\r\n"), NULL, LM0_MS, false},
    /* If-None-Match present: If-Modified-Since is not looked at */
    {REQ("If-None-Match: \"xyz\"\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
     "\"abc\"", LM0_MS, false},
    {REQ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"), "\"abc\"", LM0_MS, true},
    {REQ("If-Modified-Since: Sun, 06 Nov 1994 09:49:37 GMT\r\n"), NULL, LM0_MS, true},
    {REQ("If-Modified-Since: Sun, 06 Nov 1994 08:49:36 GMT\r\n"), NULL, LM0_MS, false},
    {REQ("If-Modified-Since: yesterday\r\n"), NULL, LM0_MS, false},
    {REQ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"), NULL, -1, false},
    {REQ("If-Modified-Since: Sunday, 06-Nov-94 08:49:37 GMT\r\n"), NULL, LM0_MS, true},
};

static void test_not_modified(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(nm_rows); i++) {
        const struct nm_row *r = &nm_rows[i];
        struct http_head h;

        at("not-modified", i);
        parse(&h, false, r->req);
        CHECK(cache_policy_not_modified(&h, r->req, r->etag, r->etag ? strlen(r->etag) : 0,
                                        r->last_modified_ms),
              r->not_modified);
    }
}

/* ------------------------------------------------------------------------
 * Keys
 */

static const struct key_row {
    const char *req, *scheme;
    size_t room;
    const char *key; /* NULL: 0 expected */
} key_rows[] = {
    {"GET /p?q=1 HTTP/1.1\r\nHost: Example.COM\r\n\r\n", "http", 256, "http://example.com/p?q=1"},
    {"HEAD /p?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", "http", 256, "http://example.com/p?q=1"},
    {"GET /A/b HTTP/1.1\r\nHost: example.com:80\r\n\r\n", "http", 256, "http://example.com/A/b"},
    {"GET / HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "https", 256, "https://example.com/"},
    {"GET / HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "http", 256, "http://example.com:443/"},
    {"GET / HTTP/1.1\r\nHost: example.com:80\r\n\r\n", "https", 256, "https://example.com:80/"},
    {"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "http", 256, "http://example.com:8080/"},
    {"GET / HTTP/1.1\r\nHost: example.com:\r\n\r\n", "http", 256, "http://example.com/"},
    {"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "http", 256, "http://[::1]/"},
    {"GET http://Other.Host:80/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n", "http", 256,
     "http://other.host/x?y"},
    {"GET http://other.host HTTP/1.1\r\nHost: example.com\r\n\r\n", "http", 256,
     "http://other.host/"},
    {"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", "http", 256, NULL},
    {"GET / HTTP/1.0\r\n\r\n", "http", 256, NULL},
    {"GET / HTTP/1.1\r\nHost:\r\n\r\n", "http", 256, NULL},
    {"GET /abc HTTP/1.1\r\nHost: a.b\r\n\r\n", "http", 15, "http://a.b/abc"},
    {"GET /abc HTTP/1.1\r\nHost: a.b\r\n\r\n", "http", 14, NULL},
    {"GET /abc HTTP/1.1\r\nHost: a.b\r\n\r\n", "http", 0, NULL},
};

static void test_key(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(key_rows); i++) {
        const struct key_row *r = &key_rows[i];
        struct http_head h;
        char out[256];

        at("key", i);
        memset(out, '#', sizeof(out));
        parse(&h, false, r->req);
        size_t n = cache_policy_key(&h, r->req, r->scheme, out, r->room);
        if (r->key == NULL) {
            CHECK(n, 0);
            continue;
        }
        CHECK(n, strlen(r->key));
        assert_memory_equal(out, r->key, n);
        CHECK(out[n], '\0');
    }
}

/* A target past CACHE_POLICY_KEY_MAX gives no key, whatever the room. */
static void test_key_too_long(void **state)
{
    static char raw[CACHE_POLICY_KEY_MAX + 128], out[CACHE_POLICY_KEY_MAX * 2];
    size_t prefix = strlen("http://a.b");
    int n;

    (void)state;
    for (size_t path = CACHE_POLICY_KEY_MAX - prefix; path <= CACHE_POLICY_KEY_MAX - prefix + 1;
         path++) {
        struct http_head h;
        n = snprintf(raw, sizeof(raw), "GET /%0*d HTTP/1.1\r\nHost: a.b\r\n\r\n", (int)path - 1, 0);
        assert_true(n > 0 && (size_t)n < sizeof(raw));
        parse(&h, false, raw);
        size_t len = cache_policy_key(&h, raw, "http", out, sizeof(out));
        CHECK(len, path == CACHE_POLICY_KEY_MAX - prefix ? CACHE_POLICY_KEY_MAX : 0);
    }
}

/* ------------------------------------------------------------------------
 * Vary
 */

static const struct vary_row {
    const char *resp;
    size_t room;
    int ret;
    const char *names;
} vary_rows[] = {
    {RESP(""), 64, 0, ""},
    {RESP("Vary: Accept-Encoding\r\n"), 64, 15, "accept-encoding"},
    {RESP("Vary: User-Agent, Accept-Encoding\r\n"), 64, 26, "accept-encoding,user-agent"},
    {RESP("Vary: b\r\nVary: A, c\r\n"), 64, 5, "a,b,c"},
    {RESP("Vary: Accept, accept\r\nVary: ACCEPT\r\n"), 64, 6, "accept"},
    {RESP("Vary: ,x , ,B,\r\n"), 64, 3, "b,x"},
    {RESP("Vary:\r\n"), 64, 0, ""},
    {RESP("Vary: *\r\n"), 64, -1, NULL},
    {RESP("Vary: !x, Accept, *\r\n"), 64, -1, NULL},
    {RESP("Vary: accept\r\nVary: *\r\n"), 64, -1, NULL},
    {RESP("Vary: a, b\r\n"), 3, 3, "a,b"},
    {RESP("Vary: a, b\r\n"), 2, -1, NULL},
};

static void test_vary_names(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(vary_rows); i++) {
        const struct vary_row *r = &vary_rows[i];
        struct http_head h;
        char out[64];

        at("vary", i);
        parse(&h, true, r->resp);
        int n = cache_policy_vary_names(&h, r->resp, out, r->room);
        CHECK(n, r->ret);
        if (n >= 0)
            assert_memory_equal(out, r->names, (size_t)n);
    }
}

static const struct variant_row {
    const char *req, *names;
    size_t room;
    int ret;
    const char *variant;
} variant_rows[] = {
    {REQ("Accept-Encoding: gzip\r\n"), "accept-encoding", 64, 21, "accept-encoding:gzip\n"},
    {REQ(""), "accept-encoding", 64, 17, "accept-encoding:\n"},
    {REQ("Accept: a\r\nX-A: \t1 \r\naccept: b\r\n"), "accept,x-a", 64, 17, "accept:a,b\nx-a:1\n"},
    {REQ("Accept: text/html, */*\r\n"), "accept", 64, 22, "accept:text/html, */*\n"},
    {REQ("X-A: 1\r\nX-A:\r\n"), "x-a", 64, 7, "x-a:1,\n"},
    {REQ("Accept: a\r\n"), "", 64, 0, ""},
    {REQ("Host2: x\r\n"), "host", 64, 17, "host:example.com\n"},
    /* absolute-form: the clone saw Host = the target's authority */
    {"GET http://a.test:81/x HTTP/1.1\r\nHost: example.com\r\n\r\n", "host", 64, 15,
     "host:a.test:81\n"},
    {REQ("Accept: abc\r\n"), "accept", 11, 11, "accept:abc\n"},
    {REQ("Accept: abc\r\n"), "accept", 10, -1, NULL},
};

static void test_variant(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(variant_rows); i++) {
        const struct variant_row *r = &variant_rows[i];
        struct http_head h;
        char out[64];

        at("variant", i);
        parse(&h, false, r->req);
        int n = cache_policy_variant(&h, r->req, r->names, strlen(r->names), out, r->room);
        CHECK(n, r->ret);
        if (n >= 0)
            assert_memory_equal(out, r->variant, (size_t)n);
    }
}

/* ------------------------------------------------------------------------
 * HTTP-dates
 */

static const struct date_row {
    const char *text;
    int64_t ms;
} date_rows[] = {
    {"Sun, 06 Nov 1994 08:49:37 GMT", 784111777 * S},
    {"Sunday, 06-Nov-94 08:49:37 GMT", 784111777 * S},
    {"Sun Nov  6 08:49:37 1994", 784111777 * S},
    {"Sun Nov 06 08:49:37 1994", 784111777 * S},
    {"Thu, 01 Jan 1970 00:00:00 GMT", 0},
    {"Thu, 29 Feb 2024 12:00:00 GMT", 1709208000 * S},
    {"Tue, 29 Feb 2000 00:00:00 GMT", 951782400 * S},
    {"Tue, 19 Jan 2038 03:14:08 GMT", 2147483648LL * S},
    {"Fri, 31 Dec 9999 23:59:59 GMT", 253402300799LL * S},
    /* two-digit years: more than 50 years ahead is the past */
    {"Wednesday, 01-Jan-76 00:00:00 GMT", 3345062400LL * S},
    {"Saturday, 01-Jan-77 00:00:00 GMT", 220924800 * S},
    {"Tuesday, 29-Feb-00 00:00:00 GMT", 951782400 * S},
    /* invalid */
    {"", -1},
    {"0", -1},
    {"-1", -1},
    {"Wed, 29 Feb 2023 00:00:00 GMT", -1},
    {"Mon, 29 Feb 1900 00:00:00 GMT", -1},
    {"Sun, 31 Apr 1994 00:00:00 GMT", -1},
    {"Sun, 00 Nov 1994 08:49:37 GMT", -1},
    {"Sun, 06 Foo 1994 08:49:37 GMT", -1},
    {"Xyz, 06 Nov 1994 08:49:37 GMT", -1},
    {"sun, 06 nov 1994 08:49:37 GMT", -1},
    {"Sun, 06 Nov 1994 08:49:37 UTC", -1},
    {"Sun, 06 Nov 1994 24:00:00 GMT", -1},
    {"Sun, 06 Nov 1994 08:60:00 GMT", -1},
    {"Sun, 06 Nov 1994 08:49:61 GMT", -1},
    {"Sun, 06 Nov 1994 08-49-37 GMT", -1},
    {"Sun, 6 Nov 1994 08:49:37 GMT", -1},
    {"Sun, 06 Nov 1994 08:49:37 GMT ", -1},
    {" Sun, 06 Nov 1994 08:49:37 GMT", -1},
    {"Sun, 06 Nov 94 08:49:37 GMT", -1},
    {"Sun, 06 Nov +994 08:49:37 GMT", -1},
    {"Wed, 31 Dec 1969 23:59:59 GMT", -1},
    {"Sunday, 06-Nov-94 08:49:37 UTC", -1},
    {"Sunday, 06-Nov-1994 08:49:37 GMT", -1},
    {"Sundae, 06-Nov-94 08:49:37 GMT", -1},
    {"Sun Nov  6 08:49:37 94", -1},
    {"Sun Nov 6 08:49:37 1994", -1},
    {"1994-11-06T08:49:37Z", -1},
};

static void test_parse_date(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(date_rows); i++) {
        at("date", i);
        CHECK(cache_policy_parse_date(date_rows[i].text, strlen(date_rows[i].text)),
              date_rows[i].ms);
    }
    CHECK(cache_policy_parse_date(NULL, 0), -1);
    /* the length is honoured: no read past it */
    CHECK(cache_policy_parse_date("Sun, 06 Nov 1994 08:49:37 GMTxx", 29), 784111777 * S);
}

static const struct format_row {
    int64_t ms;
    const char *text;
} format_rows[] = {
    {784111777 * S, "Sun, 06 Nov 1994 08:49:37 GMT"},
    {784111777 * S + 999, "Sun, 06 Nov 1994 08:49:37 GMT"},
    {0, "Thu, 01 Jan 1970 00:00:00 GMT"},
    {-5, "Thu, 01 Jan 1970 00:00:00 GMT"},
    {951782400 * S, "Tue, 29 Feb 2000 00:00:00 GMT"},
    {1709208000 * S, "Thu, 29 Feb 2024 12:00:00 GMT"},
    {3345062400LL * S, "Wed, 01 Jan 2076 00:00:00 GMT"},
    {INT64_MAX, "Fri, 31 Dec 9999 23:59:59 GMT"},
};

static void test_format_date(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(format_rows); i++) {
        char out[30];
        at("format", i);
        cache_policy_format_date(format_rows[i].ms, out);
        assert_string_equal(out, format_rows[i].text);
    }
    /* round trip, one day and a bit apart, over a few centuries */
    for (int64_t ms = 0; ms < 13000000000LL * S; ms += 86461 * S * 97) {
        char out[30];
        cache_policy_format_date(ms, out);
        CHECK(cache_policy_parse_date(out, strlen(out)), ms);
    }
}

static const struct verdict_text_row {
    enum cache_policy_verdict v;
    const char *text;
} verdict_text_rows[] = {
    {CACHE_STORE, "stored"},
    {CACHE_NOT_METHOD, "method"},
    {CACHE_NOT_STATUS, "status"},
    {CACHE_NOT_NO_STORE, "no-store"},
    {CACHE_NOT_PRIVATE, "private"},
    {CACHE_NOT_AUTHORIZATION, "authorization"},
    {CACHE_NOT_SET_COOKIE, "set-cookie"},
    {CACHE_NOT_VARY_STAR, "vary-star"},
    {CACHE_NOT_NO_LIFETIME, "no-lifetime"},
    {CACHE_NOT_VARY_TOO_LONG, "vary-too-long"},
    {CACHE_NOT_VARY_FORWARDED, "vary-forwarded"},
};

static void test_verdict_text(void **state)
{
    (void)state;
    for (size_t i = 0; i < ROWS(verdict_text_rows); i++)
        assert_string_equal(cache_policy_verdict_text(verdict_text_rows[i].v),
                            verdict_text_rows[i].text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_cc),
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_verdict),
        cmocka_unit_test(test_verdict_vary_too_long),
        cmocka_unit_test(test_freshness),
        cmocka_unit_test(test_age),
        cmocka_unit_test(test_age_ms),
        cmocka_unit_test(test_use),
        cmocka_unit_test(test_stale_if_error),
        cmocka_unit_test(test_not_modified),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_key_too_long),
        cmocka_unit_test(test_vary_names),
        cmocka_unit_test(test_variant),
        cmocka_unit_test(test_parse_date),
        cmocka_unit_test(test_format_date),
        cmocka_unit_test(test_verdict_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
