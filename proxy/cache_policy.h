/*
 * cache_policy: the rules of a shared HTTP cache (RFC 9111), as pure
 * functions over parsed heads: what a request asks of the cache, whether a
 * response may be stored and for how long, how old a stored response is,
 * whether it may be served, the cache key and the Vary variant of a
 * request, and HTTP-dates. No I/O, no clock (times come in as arguments, in
 * milliseconds since the Unix epoch), no allocation; any thread.
 */
#ifndef CLONEGATE_CACHE_POLICY_H
#define CLONEGATE_CACHE_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

#define CACHE_POLICY_KEY_MAX            8192 /* longest key text; longer requests bypass the cache */
#define CACHE_POLICY_VARY_MAX           4096     /* longest Vary name list or variant text */
#define CACHE_POLICY_HEURISTIC_FRACTION 10       /* 10% of the time since Last-Modified ... */
#define CACHE_POLICY_HEURISTIC_MAX_MS   86400000 /* ... capped at one day */

/* Cache-Control directives (RFC 9111 5.2), request or response. */
enum cache_policy_cc_flag {
    CACHE_CC_NO_STORE = 1 << 0,
    CACHE_CC_NO_CACHE = 1 << 1, /* qualified no-cache="f" is treated as unqualified */
    CACHE_CC_PRIVATE = 1 << 2,  /* qualified private="f" likewise */
    CACHE_CC_PUBLIC = 1 << 3,
    CACHE_CC_MUST_REVALIDATE = 1 << 4,
    CACHE_CC_PROXY_REVALIDATE = 1 << 5,
    CACHE_CC_ONLY_IF_CACHED = 1 << 6,
    CACHE_CC_NO_TRANSFORM = 1 << 7,
    CACHE_CC_IMMUTABLE = 1 << 8,
    CACHE_CC_MAX_STALE_ANY = 1 << 9,    /* max-stale without a value */
    CACHE_CC_PRAGMA_NO_CACHE = 1 << 10, /* request: Pragma: no-cache and no Cache-Control */
};

struct cache_policy_cc {
    uint32_t flags;                 /* enum cache_policy_cc_flag bits */
    int64_t max_age;                /* seconds; -1 absent (an invalid or repeated value: 0) */
    int64_t s_maxage;               /* seconds; -1 absent (likewise) */
    int64_t max_stale;              /* seconds; -1 absent (see CACHE_CC_MAX_STALE_ANY) */
    int64_t min_fresh;              /* seconds; -1 absent */
    int64_t stale_while_revalidate; /* seconds; -1 absent (RFC 5861) */
    int64_t stale_if_error;         /* seconds; -1 absent (RFC 5861) */
};

/* Reads every Cache-Control field of <h> (bytes in <buf>) into <cc>, and
 * Pragma: no-cache when there is no Cache-Control. Unknown directives are
 * ignored; names are case-insensitive; values may be quoted. */
void cache_policy_parse_cc(const struct http_head *h, const char *buf, struct cache_policy_cc *cc);

/* What a request asks of the cache. */
struct cache_policy_request {
    struct cache_policy_cc cc;
    bool lookup;        /* GET or HEAD without Range: may be answered from the cache */
    bool is_head;       /* HEAD */
    bool unsafe;        /* a method that invalidates on success (not GET/HEAD/OPTIONS/TRACE) */
    bool authorization; /* carries Authorization */
    bool conditional;   /* If-None-Match or If-Modified-Since */
    bool no_cache;      /* no-cache, Pragma: no-cache or max-age=0: must not use a stored
                           response without validating it */
};

void cache_policy_request(const struct http_head *req, const char *buf,
                          struct cache_policy_request *out);

/* Why a response is or is not stored (also the Cache-Status detail). */
enum cache_policy_verdict {
    CACHE_STORE = 0,
    CACHE_NOT_METHOD = 1,        /* the request was not a GET (HEAD responses are not stored) */
    CACHE_NOT_STATUS = 2,        /* not final, 206, 304, or not cacheable without freshness */
    CACHE_NOT_NO_STORE = 3,      /* no-store in the request or the response */
    CACHE_NOT_PRIVATE = 4,       /* private */
    CACHE_NOT_AUTHORIZATION = 5, /* request had Authorization; no public/s-maxage/must-revalidate */
    CACHE_NOT_SET_COOKIE = 6,    /* Set-Cookie and the user did not allow storing those */
    CACHE_NOT_VARY_STAR = 7,     /* Vary: * */
    CACHE_NOT_NO_LIFETIME = 8,   /* no freshness at all and no validator to revalidate with */
    CACHE_NOT_VARY_TOO_LONG = 9, /* Vary names or values longer than CACHE_POLICY_VARY_MAX */
    CACHE_NOT_VARY_FORWARDED = 10, /* Vary names a field the proxy rewrites (X-Forwarded-For...) */
    /* storable by the rules, but not by this proxy; set by the caller */
    CACHE_NOT_TOO_LARGE = 11,       /* Content-Length over what the cache takes */
    CACHE_NOT_CLOSE_DELIMITED = 12, /* the body ends with the connection: no known end */
    CACHE_NOT_DECODED = 13,         /* de-chunked for an HTTP/1.0 client on its way */
};

/* Short text of a verdict for Cache-Status detail= ("no-store", "private"...). */
const char *cache_policy_verdict_text(enum cache_policy_verdict v);

/* The user's defaults from [cache]. */
struct cache_policy_opts {
    int64_t default_ttl_ms; /* freshness for responses that state none; 0: RFC 9111 only */
    int64_t swr_ms;         /* stale-while-revalidate when the response names none */
    int64_t sie_ms;         /* stale-if-error when the response names none */
    bool store_set_cookie;  /* store responses carrying Set-Cookie (without the cookie) */
    bool refresh;           /* judging a stored GET response a 304 refreshed: the method of
                               the validating request (GET or HEAD) does not matter */
};

/* What a response means for the cache. */
struct cache_policy_response {
    struct cache_policy_cc cc;
    enum cache_policy_verdict verdict;
    int64_t date_ms;          /* Date, or the response time when absent or invalid */
    int64_t last_modified_ms; /* Last-Modified; -1 absent or invalid */
    int64_t initial_age_ms;   /* corrected_initial_age (RFC 9111 4.2.3) */
    int64_t freshness_ms;     /* freshness lifetime (4.2.1): s-maxage > max-age > Expires -
                                 Date > default_ttl > heuristic (4.2.2), else 0 */
    int64_t swr_ms;           /* stale-while-revalidate window (response, else opts) */
    int64_t sie_ms;           /* stale-if-error window (response, else opts) */
    bool must_revalidate;     /* must-revalidate, proxy-revalidate or s-maxage: never stale */
    bool no_cache;            /* stored, but validated before every use */
    bool heuristic;           /* freshness_ms is heuristic or default_ttl */
};

/*
 * Judges the response <resp> (bytes in <resp_buf>) to the request <req>
 * (<req_buf>, summarised in <rq>), sent at <request_ms> and received at
 * <response_ms>. Storable status codes: 200 203 204 300 301 308 404 405
 * 410 414 501 by default, any other final status but 206 and 304 only with
 * explicit freshness (max-age, s-maxage, Expires) or public.
 */
void cache_policy_response(const struct http_head *req, const char *req_buf,
                           const struct cache_policy_request *rq, const struct http_head *resp,
                           const char *resp_buf, int64_t request_ms, int64_t response_ms,
                           const struct cache_policy_opts *opts, struct cache_policy_response *out);

/* A stored response's age at <now_ms>: initial age plus time resident. */
int64_t cache_policy_age_ms(int64_t initial_age_ms, int64_t response_ms, int64_t now_ms);

/* What to do with a stored response for a request. */
enum cache_policy_use {
    CACHE_USE_FRESH = 0,    /* serve it */
    CACHE_USE_STALE = 1,    /* stale, but the request's max-stale allows it: serve it */
    CACHE_USE_SWR = 2,      /* stale within stale-while-revalidate: serve, refresh behind */
    CACHE_USE_VALIDATE = 3, /* stale (or no-cache): validate with the clone first */
    CACHE_USE_REQUEST = 4,  /* fresh, but the request (no-cache, max-age, min-fresh) refuses
                               it: validate first (Cache-Status fwd=request) */
};

/* The stored response's freshness facts (from cache_policy_response). */
struct cache_policy_stored {
    int64_t initial_age_ms;
    int64_t response_ms;
    int64_t freshness_ms;
    int64_t swr_ms;
    int64_t sie_ms;
    bool must_revalidate;
    bool no_cache;
};

/* Decides the use of <st> for request <rq> at <now_ms>; sets *<age_ms>. */
enum cache_policy_use cache_policy_use(const struct cache_policy_stored *st,
                                       const struct cache_policy_request *rq, int64_t now_ms,
                                       int64_t *age_ms);

/* Whether a stale <st> may answer in place of an error (5xx, no clone):
 * within stale-if-error (the response's, or the request's own) and not
 * must-revalidate. */
bool cache_policy_stale_if_error(const struct cache_policy_stored *st,
                                 const struct cache_policy_request *rq, int64_t now_ms);

/* Whether the request's If-None-Match (weak comparison, "*" matches) or,
 * without it, If-Modified-Since is satisfied by a stored response with
 * <etag> (may be NULL/0) and <last_modified_ms> (-1 none; Date otherwise):
 * the answer is then 304. */
bool cache_policy_not_modified(const struct http_head *req, const char *buf, const char *etag,
                               size_t etag_len, int64_t last_modified_ms);

/*
 * The cache key text of <req>: "<scheme>://<host><path-and-query>", the
 * host lower-cased and without the scheme's default port, taken from an
 * absolute-form target or from Host. Written to <out> (room <room>);
 * returns its length, or 0 when it does not fit or there is no host.
 * GET and HEAD share keys.
 */
size_t cache_policy_key(const struct http_head *req, const char *buf, const char *scheme, char *out,
                        size_t room);

/* The Vary field names of <resp>, lower-case, sorted, joined with ",",
 * into <out>. Returns the length (0: no Vary), or -1 for Vary: * or when
 * longer than <room>. */
int cache_policy_vary_names(const struct http_head *resp, const char *buf, char *out, size_t room);

/* The variant of <req> for the names <names> (as made above): for each
 * name, "name:" then the request's values of that field (every line,
 * joined with ",", spaces around values trimmed), each followed by "\n".
 * Returns the length, or -1 when longer than <room>. */
int cache_policy_variant(const struct http_head *req, const char *buf, const char *names,
                         size_t names_len, char *out, size_t room);

/* Parses an HTTP-date (IMF-fixdate, RFC 850 or asctime; RFC 9110 5.6.7).
 * Returns milliseconds since the epoch, or -1 when invalid. */
int64_t cache_policy_parse_date(const char *s, size_t len);

/* Formats <ms> as an IMF-fixdate into <out> (at least 30 bytes, NUL-ended). */
void cache_policy_format_date(int64_t ms, char *out);

#endif /* CLONEGATE_CACHE_POLICY_H */
