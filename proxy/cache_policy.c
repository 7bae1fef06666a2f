/*
 * cache_policy: RFC 9111 (shared cache) and RFC 5861 rules as pure
 * functions. Owns nothing: it reads parsed heads and their buffers, which
 * the caller lends for the call, and writes only into the caller's structs
 * and buffers. No I/O, no clock, no allocation, no globals but constant
 * tables, so any thread may call any function at any time.
 */
#include "cache_policy.h"

#include <string.h>
#include <strings.h>

#define DELTA_MAX          2147483648LL /* s: delta-seconds clamp (RFC 9111 1.2.2) */
#define MS_PER_S           1000LL
#define S_PER_DAY          86400LL
#define RFC850_BASE_YEAR   2026 /* two-digit years: more than 50 years past this is the past */
#define RFC850_WINDOW      50   /* years */
#define DATE_MIN_YEAR      1970 /* earlier dates are refused: -1 means invalid */
#define DATE_MAX_YEAR      9999
#define IMF_FIXDATE_LEN    29   /* "Sun, 06 Nov 1994 08:49:37 GMT" */
#define ASCTIME_LEN        24   /* "Sun Nov  6 08:49:37 1994" */
#define DELTA_INVALID      (-2) /* parse_delta(): not a delta-seconds */
#define HTTP_DEFAULT_PORT  ":80"
#define HTTPS_DEFAULT_PORT ":443"

static const char *const day_names[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_names_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                              "Thursday", "Friday", "Saturday"};
static const char *const month_names[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* ------------------------------------------------------------------------
 * Small text helpers
 */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static bool text_eq(const char *a, size_t alen, const char *lit)
{
    return strlen(lit) == alen && strncasecmp(a, lit, alen) == 0;
}

/* Case-insensitive order of two byte strings. */
static int text_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    for (size_t i = 0; i < n; i++) {
        unsigned char ca = (unsigned char)lower(a[i]), cb = (unsigned char)lower(b[i]);
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
    return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_ows(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_ows((*s)[*len - 1]))
        (*len)--;
}

/* The next element of a comma list (no quoted strings), trimmed; empty
 * elements are skipped. Returns false at the end. */
static bool list_next(const char *v, size_t len, size_t *pos, const char **tok, size_t *tlen)
{
    while (*pos < len) {
        size_t start = *pos;
        while (*pos < len && v[*pos] != ',')
            (*pos)++;
        *tok = v + start;
        *tlen = *pos - start;
        if (*pos < len)
            (*pos)++;
        trim(tok, tlen);
        if (*tlen > 0)
            return true;
    }
    return false;
}

/* delta-seconds (RFC 9111 1.2.2): seconds, clamped to 2^31, or
 * DELTA_INVALID. */
static int64_t parse_delta(const char *s, size_t len)
{
    int64_t v = 0;

    if (len == 0)
        return DELTA_INVALID;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return DELTA_INVALID;
        if (v < DELTA_MAX)
            v = v * 10 + (s[i] - '0');
    }
    return v > DELTA_MAX ? DELTA_MAX : v;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

static int64_t sat_sub(int64_t a, int64_t b)
{
    if (b == INT64_MIN)
        return a >= 0 ? INT64_MAX : a - b;
    return sat_add(a, -b);
}

/* ------------------------------------------------------------------------
 * Cache-Control
 */

/* One directive of a Cache-Control value: its name, and its value with any
 * quotes removed (escapes left as they are: no directive we read has one). */
struct cc_directive {
    const char *name;
    size_t name_len;
    const char *value; /* NULL: no "=" */
    size_t value_len;
};

/* Reads the next directive at *<pos> of <v>; false at the end. Commas in a
 * quoted value do not end the directive. */
static bool cc_next(const char *v, size_t len, size_t *pos, struct cc_directive *d)
{
    size_t i = *pos;

    while (i < len && (is_ows(v[i]) || v[i] == ','))
        i++;
    if (i >= len)
        return false;
    d->name = v + i;
    while (i < len && v[i] != '=' && v[i] != ',' && !is_ows(v[i]))
        i++;
    d->name_len = (size_t)(v + i - d->name);
    d->value = NULL;
    d->value_len = 0;
    while (i < len && is_ows(v[i]))
        i++;
    if (i < len && v[i] == '=') {
        i++;
        while (i < len && is_ows(v[i]))
            i++;
        if (i < len && v[i] == '"') {
            size_t start = ++i;
            while (i < len && v[i] != '"')
                i += (v[i] == '\\' && i + 1 < len) ? 2 : 1;
            d->value = v + start;
            d->value_len = (i < len ? i : len) - start;
            if (i < len)
                i++;
        } else {
            d->value = v + i;
            while (i < len && v[i] != ',' && !is_ows(v[i]))
                i++;
            d->value_len = (size_t)(v + i - d->value);
        }
    }
    /* anything else up to the comma is noise */
    while (i < len && v[i] != ',')
        i++;
    *pos = i;
    return true;
}

/* max-age and s-maxage: an invalid or repeated value makes the response
 * stale (RFC 9111 4.2.1 "consider ... invalid ... stale"). */
static void cc_set_strict(int64_t *field, const struct cc_directive *d)
{
    int64_t v = d->value ? parse_delta(d->value, d->value_len) : DELTA_INVALID;
    *field = (*field != -1 || v == DELTA_INVALID) ? 0 : v;
}

/* Other numeric directives: an invalid value is ignored, the first one
 * counts. */
static void cc_set_loose(int64_t *field, const struct cc_directive *d)
{
    int64_t v = d->value ? parse_delta(d->value, d->value_len) : DELTA_INVALID;
    if (*field == -1 && v != DELTA_INVALID)
        *field = v;
}

static const struct {
    const char *name;
    uint32_t flag;
} cc_flags[] = {
    {"no-store", CACHE_CC_NO_STORE},
    {"no-cache", CACHE_CC_NO_CACHE},
    {"private", CACHE_CC_PRIVATE},
    {"public", CACHE_CC_PUBLIC},
    {"must-revalidate", CACHE_CC_MUST_REVALIDATE},
    {"proxy-revalidate", CACHE_CC_PROXY_REVALIDATE},
    {"only-if-cached", CACHE_CC_ONLY_IF_CACHED},
    {"no-transform", CACHE_CC_NO_TRANSFORM},
    {"immutable", CACHE_CC_IMMUTABLE},
};

static void cc_apply(struct cache_policy_cc *cc, const struct cc_directive *d)
{
    for (size_t i = 0; i < sizeof(cc_flags) / sizeof(cc_flags[0]); i++) {
        if (text_eq(d->name, d->name_len, cc_flags[i].name)) {
            cc->flags |= cc_flags[i].flag;
            return;
        }
    }
    if (text_eq(d->name, d->name_len, "max-age")) {
        cc_set_strict(&cc->max_age, d);
    } else if (text_eq(d->name, d->name_len, "s-maxage")) {
        cc_set_strict(&cc->s_maxage, d);
    } else if (text_eq(d->name, d->name_len, "max-stale")) {
        if (d->value)
            cc_set_loose(&cc->max_stale, d);
        else
            cc->flags |= CACHE_CC_MAX_STALE_ANY;
    } else if (text_eq(d->name, d->name_len, "min-fresh")) {
        cc_set_loose(&cc->min_fresh, d);
    } else if (text_eq(d->name, d->name_len, "stale-while-revalidate")) {
        cc_set_loose(&cc->stale_while_revalidate, d);
    } else if (text_eq(d->name, d->name_len, "stale-if-error")) {
        cc_set_loose(&cc->stale_if_error, d);
    }
}

void cache_policy_parse_cc(const struct http_head *h, const char *buf, struct cache_policy_cc *cc)
{
    unsigned pos = 0;
    const char *v;
    size_t len;

    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->max_stale = cc->min_fresh = -1;
    cc->stale_while_revalidate = cc->stale_if_error = -1;
    while ((v = http_header_next(h, buf, HTTP_H_CACHE_CONTROL, &pos, &len)) != NULL) {
        struct cc_directive d;
        size_t at = 0;
        while (cc_next(v, len, &at, &d))
            cc_apply(cc, &d);
    }
    if (h->index[HTTP_H_CACHE_CONTROL] >= 0)
        return;
    /* RFC 9111 5.4: Pragma counts only without Cache-Control */
    pos = 0;
    while ((v = http_header_next(h, buf, HTTP_H_PRAGMA, &pos, &len)) != NULL) {
        const char *tok;
        size_t tlen, at = 0;
        while (list_next(v, len, &at, &tok, &tlen))
            if (text_eq(tok, tlen, "no-cache"))
                cc->flags |= CACHE_CC_PRAGMA_NO_CACHE;
    }
}

/* ------------------------------------------------------------------------
 * Requests and responses
 */

static llhttp_method_t head_method(const struct http_head *h)
{
    /* llhttp's getter takes a non-const parser but only reads it */
    return (llhttp_method_t)llhttp_get_method((llhttp_t *)(uintptr_t)&h->parser);
}

void cache_policy_request(const struct http_head *req, const char *buf,
                          struct cache_policy_request *out)
{
    llhttp_method_t m = head_method(req);

    memset(out, 0, sizeof(*out));
    cache_policy_parse_cc(req, buf, &out->cc);
    out->is_head = m == HTTP_HEAD;
    out->lookup = (m == HTTP_GET || m == HTTP_HEAD) && req->index[HTTP_H_RANGE] < 0;
    out->unsafe = !(m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_TRACE);
    out->authorization = req->index[HTTP_H_AUTHORIZATION] >= 0;
    out->conditional =
        req->index[HTTP_H_IF_NONE_MATCH] >= 0 || req->index[HTTP_H_IF_MODIFIED_SINCE] >= 0;
    out->no_cache = (out->cc.flags & (CACHE_CC_NO_CACHE | CACHE_CC_PRAGMA_NO_CACHE)) != 0 ||
                    out->cc.max_age == 0;
}

const char *cache_policy_verdict_text(enum cache_policy_verdict v)
{
    switch (v) {
    case CACHE_STORE:
        return "stored";
    case CACHE_NOT_METHOD:
        return "method";
    case CACHE_NOT_STATUS:
        return "status";
    case CACHE_NOT_NO_STORE:
        return "no-store";
    case CACHE_NOT_PRIVATE:
        return "private";
    case CACHE_NOT_AUTHORIZATION:
        return "authorization";
    case CACHE_NOT_SET_COOKIE:
        return "set-cookie";
    case CACHE_NOT_VARY_STAR:
        return "vary-star";
    case CACHE_NOT_NO_LIFETIME:
        return "no-lifetime";
    case CACHE_NOT_VARY_TOO_LONG:
        return "vary-too-long";
    case CACHE_NOT_VARY_FORWARDED:
        return "vary-forwarded";
    case CACHE_NOT_TOO_LARGE:
        return "too-large";
    case CACHE_NOT_CLOSE_DELIMITED:
        return "close-delimited";
    case CACHE_NOT_DECODED:
        return "dechunked";
    }
    return "unknown";
}

/* Statuses cacheable without explicit freshness (RFC 9110 15.1). */
static bool status_default_cacheable(unsigned status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 308:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501:
        return true;
    default:
        return false;
    }
}

/* A header's date in ms, or -1 when absent or invalid. */
static int64_t header_date(const struct http_head *h, const char *buf, enum http_header_id id)
{
    size_t len;
    const char *v = http_header_value(h, buf, id, &len);
    return v ? cache_policy_parse_date(v, len) : -1;
}

/* Freshness lifetime (RFC 9111 4.2.1, 4.2.2); sets out->heuristic. */
static int64_t compute_freshness(const struct http_head *resp, const char *buf,
                                 const struct cache_policy_opts *opts,
                                 struct cache_policy_response *out)
{
    const struct cache_policy_cc *cc = &out->cc;

    if (cc->s_maxage >= 0)
        return cc->s_maxage * MS_PER_S;
    if (cc->max_age >= 0)
        return cc->max_age * MS_PER_S;
    if (resp->index[HTTP_H_EXPIRES] >= 0) {
        /* an invalid Expires ("0") means already expired (5.3) */
        int64_t expires = header_date(resp, buf, HTTP_H_EXPIRES);
        return expires < 0 || expires <= out->date_ms ? 0 : expires - out->date_ms;
    }
    if (opts->default_ttl_ms > 0) {
        out->heuristic = true;
        return opts->default_ttl_ms;
    }
    /* 4.2.2: heuristics for heuristically cacheable statuses and public */
    if ((status_default_cacheable(resp->status) || (cc->flags & CACHE_CC_PUBLIC)) &&
        out->last_modified_ms >= 0 && out->date_ms > out->last_modified_ms) {
        int64_t f = (out->date_ms - out->last_modified_ms) / CACHE_POLICY_HEURISTIC_FRACTION;
        if (f > CACHE_POLICY_HEURISTIC_MAX_MS)
            f = CACHE_POLICY_HEURISTIC_MAX_MS;
        out->heuristic = f > 0;
        return f;
    }
    return 0;
}

/* corrected_initial_age (RFC 9111 4.2.3). */
static int64_t compute_initial_age(const struct http_head *resp, const char *buf, int64_t date_ms,
                                   int64_t request_ms, int64_t response_ms)
{
    size_t len;
    const char *v = http_header_value(resp, buf, HTTP_H_AGE, &len);
    int64_t age = v ? parse_delta(v, len) : 0;
    int64_t apparent = sat_sub(response_ms, date_ms);
    int64_t delay = sat_sub(response_ms, request_ms);

    if (age < 0)
        age = 0;
    if (apparent < 0)
        apparent = 0;
    if (delay < 0)
        delay = 0;
    int64_t corrected = sat_add(age * MS_PER_S, delay);
    return apparent > corrected ? apparent : corrected;
}

/* Whether any Vary line of <resp> lists "*". */
static bool vary_has_star(const struct http_head *resp, const char *buf)
{
    unsigned pos = 0;
    const char *v;
    size_t len;

    while ((v = http_header_next(resp, buf, HTTP_H_VARY, &pos, &len)) != NULL) {
        const char *tok;
        size_t tlen, at = 0;
        while (list_next(v, len, &at, &tok, &tlen))
            if (tlen == 1 && tok[0] == '*')
                return true;
    }
    return false;
}

/* The Vary checks: star, then names and this request's values that do not
 * fit the entry. */
static enum cache_policy_verdict vary_verdict(const struct http_head *req, const char *req_buf,
                                              const struct http_head *resp, const char *resp_buf)
{
    char names[CACHE_POLICY_VARY_MAX];
    char variant[CACHE_POLICY_VARY_MAX];
    if (vary_has_star(resp, resp_buf))
        return CACHE_NOT_VARY_STAR;
    int n = cache_policy_vary_names(resp, resp_buf, names, sizeof(names));
    if (n < 0 || cache_policy_variant(req, req_buf, names, (size_t)n, variant, sizeof(variant)) < 0)
        return CACHE_NOT_VARY_TOO_LONG;
    /* the clone saw these as the proxy rewrote them, not as the client sent
     * them: a variant keyed by the client's values would mix clients */
    static const char *const rewritten[] = {"x-forwarded-for", "x-forwarded-proto", "forwarded",
                                            "via"};
    for (const char *q = names, *end = names + n; q < end;) {
        const char *comma = memchr(q, ',', (size_t)(end - q));
        size_t len = comma ? (size_t)(comma - q) : (size_t)(end - q);
        for (size_t i = 0; i < sizeof(rewritten) / sizeof(rewritten[0]); i++)
            if (strlen(rewritten[i]) == len && memcmp(q, rewritten[i], len) == 0)
                return CACHE_NOT_VARY_FORWARDED;
        q += len + 1;
    }
    return CACHE_STORE;
}

/* Whether the response may be stored (RFC 9111 3), checks in a fixed order
 * so the Cache-Status detail is predictable. */
static enum cache_policy_verdict verdict(const struct http_head *req, const char *req_buf,
                                         const struct cache_policy_request *rq,
                                         const struct http_head *resp, const char *resp_buf,
                                         const struct cache_policy_opts *opts,
                                         const struct cache_policy_response *out)
{
    const struct cache_policy_cc *cc = &out->cc;
    unsigned status = resp->status;
    enum cache_policy_verdict v;

    if (head_method(req) != HTTP_GET && !(opts->refresh && head_method(req) == HTTP_HEAD))
        return CACHE_NOT_METHOD;
    if (status < 200 || status == 206 || status == 304)
        return CACHE_NOT_STATUS;
    if ((cc->flags | rq->cc.flags) & CACHE_CC_NO_STORE)
        return CACHE_NOT_NO_STORE;
    if (cc->flags & CACHE_CC_PRIVATE)
        return CACHE_NOT_PRIVATE;
    if (rq->authorization && !(cc->flags & (CACHE_CC_PUBLIC | CACHE_CC_MUST_REVALIDATE)) &&
        cc->s_maxage < 0)
        return CACHE_NOT_AUTHORIZATION;
    if (resp->index[HTTP_H_SET_COOKIE] >= 0 && !opts->store_set_cookie)
        return CACHE_NOT_SET_COOKIE;
    if ((v = vary_verdict(req, req_buf, resp, resp_buf)) != CACHE_STORE)
        return v;
    if (!status_default_cacheable(status) && cc->max_age < 0 && cc->s_maxage < 0 &&
        resp->index[HTTP_H_EXPIRES] < 0 && !(cc->flags & CACHE_CC_PUBLIC))
        return CACHE_NOT_STATUS;
    /* stale at once with nothing to revalidate with: useless; so is one
     * whose Age already passed its lifetime and every stale window */
    bool validators = resp->index[HTTP_H_ETAG] >= 0 || out->last_modified_ms >= 0;
    if (out->freshness_ms == 0 && !validators)
        return CACHE_NOT_NO_LIFETIME;
    int64_t window = out->swr_ms > out->sie_ms ? out->swr_ms : out->sie_ms;
    if (!validators && out->initial_age_ms >= sat_add(out->freshness_ms, window > 0 ? window : 0))
        return CACHE_NOT_NO_LIFETIME;
    return CACHE_STORE;
}

void cache_policy_response(const struct http_head *req, const char *req_buf,
                           const struct cache_policy_request *rq, const struct http_head *resp,
                           const char *resp_buf, int64_t request_ms, int64_t response_ms,
                           const struct cache_policy_opts *opts, struct cache_policy_response *out)
{
    memset(out, 0, sizeof(*out));
    cache_policy_parse_cc(resp, resp_buf, &out->cc);
    out->date_ms = header_date(resp, resp_buf, HTTP_H_DATE);
    if (out->date_ms < 0)
        out->date_ms = response_ms;
    out->last_modified_ms = header_date(resp, resp_buf, HTTP_H_LAST_MODIFIED);
    out->initial_age_ms =
        compute_initial_age(resp, resp_buf, out->date_ms, request_ms, response_ms);
    out->freshness_ms = compute_freshness(resp, resp_buf, opts, out);
    out->swr_ms = out->cc.stale_while_revalidate >= 0 ? out->cc.stale_while_revalidate * MS_PER_S
                                                      : opts->swr_ms;
    out->sie_ms = out->cc.stale_if_error >= 0 ? out->cc.stale_if_error * MS_PER_S : opts->sie_ms;
    out->must_revalidate =
        (out->cc.flags & (CACHE_CC_MUST_REVALIDATE | CACHE_CC_PROXY_REVALIDATE)) != 0 ||
        out->cc.s_maxage >= 0;
    out->no_cache = (out->cc.flags & CACHE_CC_NO_CACHE) != 0;
    out->verdict = verdict(req, req_buf, rq, resp, resp_buf, opts, out);
}

/* ------------------------------------------------------------------------
 * Age and use
 */

int64_t cache_policy_age_ms(int64_t initial_age_ms, int64_t response_ms, int64_t now_ms)
{
    int64_t resident = sat_sub(now_ms, response_ms);
    int64_t age = sat_add(initial_age_ms, resident < 0 ? 0 : resident);
    return age < 0 ? 0 : age;
}

enum cache_policy_use cache_policy_use(const struct cache_policy_stored *st,
                                       const struct cache_policy_request *rq, int64_t now_ms,
                                       int64_t *age_ms)
{
    const struct cache_policy_cc *cc = &rq->cc;
    int64_t age = cache_policy_age_ms(st->initial_age_ms, st->response_ms, now_ms);

    *age_ms = age;
    if (st->no_cache)
        return CACHE_USE_VALIDATE;
    if (age < st->freshness_ms) {
        if (rq->no_cache || (cc->max_age >= 0 && age > cc->max_age * MS_PER_S) ||
            (cc->min_fresh >= 0 && st->freshness_ms - age < cc->min_fresh * MS_PER_S))
            return CACHE_USE_REQUEST;
        return CACHE_USE_FRESH;
    }
    int64_t staleness = sat_sub(age, st->freshness_ms);
    if (st->must_revalidate || rq->no_cache)
        return CACHE_USE_VALIDATE;
    if ((cc->flags & CACHE_CC_MAX_STALE_ANY) ||
        (cc->max_stale >= 0 && staleness <= cc->max_stale * MS_PER_S))
        return CACHE_USE_STALE;
    if (staleness < st->swr_ms)
        return CACHE_USE_SWR;
    return CACHE_USE_VALIDATE;
}

bool cache_policy_stale_if_error(const struct cache_policy_stored *st,
                                 const struct cache_policy_request *rq, int64_t now_ms)
{
    int64_t age = cache_policy_age_ms(st->initial_age_ms, st->response_ms, now_ms);
    int64_t window = st->sie_ms;

    /* a fresh response needs no excuse; no-cache forbids serving unvalidated
     * (RFC 9111 4.2.4, 5.2.2.4) */
    if (age < st->freshness_ms || st->must_revalidate || st->no_cache)
        return false;
    if (rq->cc.stale_if_error >= 0 && rq->cc.stale_if_error * MS_PER_S > window)
        window = rq->cc.stale_if_error * MS_PER_S;
    return sat_sub(age, st->freshness_ms) <= window;
}

/* ------------------------------------------------------------------------
 * Conditional requests
 */

/* The opaque-tag of an entity-tag, without "W/" (weak comparison). */
static void etag_opaque(const char **s, size_t *len)
{
    trim(s, len);
    if (*len >= 2 && (*s)[0] == 'W' && (*s)[1] == '/') {
        *s += 2;
        *len -= 2;
    }
}

/* The next entity-tag of an If-None-Match list, whose opaque tags may hold
 * commas inside their quotes. */
static bool etag_next(const char *v, size_t len, size_t *pos, const char **tag, size_t *tlen)
{
    size_t i = *pos;

    while (i < len && (is_ows(v[i]) || v[i] == ','))
        i++;
    if (i >= len)
        return false;
    size_t start = i;
    if (len - i >= 2 && v[i] == 'W' && v[i + 1] == '/')
        i += 2;
    if (i < len && v[i] == '"') {
        i++;
        while (i < len && v[i] != '"')
            i++;
        if (i < len)
            i++;
    }
    while (i < len && v[i] != ',')
        i++;
    *tag = v + start;
    *tlen = i - start;
    trim(tag, tlen);
    *pos = i;
    return true;
}

static bool none_match(const struct http_head *req, const char *buf, const char *etag,
                       size_t etag_len)
{
    unsigned pos = 0;
    const char *v;
    size_t len;

    if (etag)
        etag_opaque(&etag, &etag_len);
    else
        etag_len = 0;
    while ((v = http_header_next(req, buf, HTTP_H_IF_NONE_MATCH, &pos, &len)) != NULL) {
        const char *tag;
        size_t tlen, at = 0;
        while (etag_next(v, len, &at, &tag, &tlen)) {
            if (tlen == 1 && tag[0] == '*') {
                if (etag_len > 0)
                    return true;
                continue;
            }
            etag_opaque(&tag, &tlen);
            if (etag_len > 0 && tlen == etag_len && memcmp(tag, etag, tlen) == 0)
                return true;
        }
    }
    return false;
}

bool cache_policy_not_modified(const struct http_head *req, const char *buf, const char *etag,
                               size_t etag_len, int64_t last_modified_ms)
{
    /* RFC 9110 13.1.3: If-Modified-Since is ignored with If-None-Match */
    if (req->index[HTTP_H_IF_NONE_MATCH] >= 0)
        return none_match(req, buf, etag, etag_len);
    int64_t ims = header_date(req, buf, HTTP_H_IF_MODIFIED_SINCE);
    return ims >= 0 && last_modified_ms >= 0 && last_modified_ms <= ims;
}

/* ------------------------------------------------------------------------
 * Keys and variants
 */

/* Where the host and the path-and-query of <req>'s target are. False for
 * "*", authority-form or a request without a host. */
static bool key_parts(const struct http_head *req, const char *buf, const char **host,
                      size_t *host_len, const char **path, size_t *path_len)
{
    const char *t = buf + req->target.off;
    size_t tlen = req->target.len;

    if (tlen > 0 && t[0] == '/') {
        *host = http_header_value(req, buf, HTTP_H_HOST, host_len);
        *path = t;
        *path_len = tlen;
        return *host != NULL && *host_len > 0;
    }
    const char *sep = tlen > 3 ? memmem(t, tlen, "://", 3) : NULL;
    if (sep == NULL)
        return false;
    const char *a = sep + 3, *end = t + tlen, *p = a;
    while (p < end && *p != '/' && *p != '?')
        p++;
    /* userinfo is not part of the key */
    for (const char *q = a; q < p; q++)
        if (*q == '@')
            a = q + 1;
    *host = a;
    *host_len = (size_t)(p - a);
    *path = p;
    *path_len = (size_t)(end - p);
    return *host_len > 0;
}

/* Appends <len> bytes of <s> at *<n> in <out> when they fit. */
static bool put(char *out, size_t room, size_t *n, const char *s, size_t len)
{
    if (len > room || *n > room - len)
        return false;
    memcpy(out + *n, s, len);
    *n += len;
    return true;
}

size_t cache_policy_key(const struct http_head *req, const char *buf, const char *scheme, char *out,
                        size_t room)
{
    const char *host, *path;
    size_t host_len, path_len, n = 0;

    if (!key_parts(req, buf, &host, &host_len, &path, &path_len))
        return 0;
    const char *port = strcasecmp(scheme, "https") == 0 ? HTTPS_DEFAULT_PORT : HTTP_DEFAULT_PORT;
    size_t port_len = strlen(port);
    if (host_len > port_len && memcmp(host + host_len - port_len, port, port_len) == 0)
        host_len -= port_len;
    else if (host_len > 1 && host[host_len - 1] == ':')
        host_len--; /* an empty port is the default one (RFC 3986 6.2.3) */
    size_t lim = room > CACHE_POLICY_KEY_MAX + 1 ? CACHE_POLICY_KEY_MAX + 1 : room;
    if (lim == 0 || !put(out, lim - 1, &n, scheme, strlen(scheme)) ||
        !put(out, lim - 1, &n, "://", 3))
        return 0;
    size_t hstart = n;
    if (!put(out, lim - 1, &n, host, host_len))
        return 0;
    for (size_t i = hstart; i < n; i++)
        out[i] = lower(out[i]);
    if ((path_len == 0 || path[0] == '?') && !put(out, lim - 1, &n, "/", 1))
        return 0;
    if (!put(out, lim - 1, &n, path, path_len))
        return 0;
    out[n] = '\0';
    return n;
}

/* The smallest Vary name of <resp> (case-insensitive) after <prev> (NULL:
 * the smallest of all). False when there is none. */
static bool vary_min_after(const struct http_head *resp, const char *buf, const char *prev,
                           size_t prev_len, const char **best, size_t *best_len)
{
    unsigned pos = 0;
    const char *v;
    size_t len;

    *best = NULL;
    *best_len = 0;
    while ((v = http_header_next(resp, buf, HTTP_H_VARY, &pos, &len)) != NULL) {
        const char *tok;
        size_t tlen, at = 0;
        while (list_next(v, len, &at, &tok, &tlen)) {
            if (prev && text_cmp(tok, tlen, prev, prev_len) <= 0)
                continue;
            if (!*best || text_cmp(tok, tlen, *best, *best_len) < 0) {
                *best = tok;
                *best_len = tlen;
            }
        }
    }
    return *best != NULL;
}

int cache_policy_vary_names(const struct http_head *resp, const char *buf, char *out, size_t room)
{
    const char *prev = NULL, *name;
    size_t prev_len = 0, name_len = 0, n = 0;

    if (vary_has_star(resp, buf))
        return -1;
    /* selection instead of a sort: no array to bound, and duplicates drop
     * out because each round takes the next strictly greater name */
    while (vary_min_after(resp, buf, prev, prev_len, &name, &name_len)) {
        if ((n > 0 && !put(out, room, &n, ",", 1)) || !put(out, room, &n, name, name_len))
            return -1;
        for (size_t i = n - name_len; i < n; i++)
            out[i] = lower(out[i]);
        prev = name;
        prev_len = name_len;
    }
    if (n > (size_t)INT32_MAX)
        return -1;
    if (n < room)
        out[n] = '\0';
    return (int)n;
}

/* Appends every value of the request field <name>, trimmed, joined by ",".
 * For an absolute-form target, Host is the target's authority: the Host the
 * clone saw (http_serialize_request() puts it there). */
static bool variant_values(const struct http_head *req, const char *buf, const char *name,
                           size_t name_len, char *out, size_t room, size_t *n)
{
    bool first = true;

    if (req->authority.len && name_len == 4 && strncasecmp(name, "host", 4) == 0)
        return put(out, room, n, buf + req->authority.off, req->authority.len);
    for (unsigned i = 0; i < req->header_count; i++) {
        const struct http_header *hd = &req->headers[i];
        if (hd->name.len != name_len || strncasecmp(buf + hd->name.off, name, name_len) != 0)
            continue;
        const char *v = buf + hd->value.off;
        size_t len = hd->value.len;
        trim(&v, &len);
        if ((!first && !put(out, room, n, ",", 1)) || !put(out, room, n, v, len))
            return false;
        first = false;
    }
    return true;
}

int cache_policy_variant(const struct http_head *req, const char *buf, const char *names,
                         size_t names_len, char *out, size_t room)
{
    const char *name;
    size_t name_len, at = 0, n = 0;

    while (list_next(names, names_len, &at, &name, &name_len)) {
        if (!put(out, room, &n, name, name_len) || !put(out, room, &n, ":", 1) ||
            !variant_values(req, buf, name, name_len, out, room, &n) ||
            !put(out, room, &n, "\n", 1))
            return -1;
    }
    if (n > (size_t)INT32_MAX)
        return -1;
    if (n < room)
        out[n] = '\0';
    return (int)n;
}

/* ------------------------------------------------------------------------
 * HTTP-dates
 */

/* Days from 1970-01-01 to the proleptic Gregorian <y>-<m>-<d>. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The inverse of days_from_civil(). */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* <n> digits at <s>, or -1. */
static int digits(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Index of the <n>-byte name at <s> in <names>, or -1 (case-sensitive,
 * as RFC 9110 5.6.7 has it). */
static int name_index(const char *s, size_t n, const char *const *names, int count)
{
    if (n == 0)
        return -1;
    for (int i = 0; i < count; i++)
        if (names[i][0] == s[0] && strlen(names[i]) == n && memcmp(s, names[i], n) == 0)
            return i;
    return -1;
}

/* "HH:MM:SS" at <s> into seconds of the day, or -1. */
static int64_t time_of_day(const char *s)
{
    if (s[2] != ':' || s[5] != ':')
        return -1;
    int hh = digits(s, 2), mm = digits(s + 3, 2), ss = digits(s + 6, 2);
    if (hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 60)
        return -1;
    return hh * 3600LL + mm * 60LL + ss;
}

/* Milliseconds of a checked date, or -1. <month> is 0-based. */
static int64_t civil_ms(int64_t year, int month, int day, int64_t tod)
{
    static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    if (year < DATE_MIN_YEAR || year > DATE_MAX_YEAR || month < 0 || tod < 0 || day < 1)
        return -1;
    unsigned last = mdays[month] + (month == 1 && is_leap(year));
    if ((unsigned)day > last)
        return -1;
    int64_t days = days_from_civil(year, (unsigned)month + 1, (unsigned)day);
    return (days * S_PER_DAY + tod) * MS_PER_S;
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static int64_t parse_imf_fixdate(const char *s)
{
    if (name_index(s, 3, day_names, 7) < 0 || memcmp(s + 3, ", ", 2) != 0 || s[7] != ' ' ||
        s[11] != ' ' || s[16] != ' ' || memcmp(s + 25, " GMT", 4) != 0)
        return -1;
    return civil_ms(digits(s + 12, 4), name_index(s + 8, 3, month_names, 12), digits(s + 5, 2),
                    time_of_day(s + 17));
}

/* "Sun Nov  6 08:49:37 1994" */
static int64_t parse_asctime(const char *s)
{
    if (name_index(s, 3, day_names, 7) < 0 || s[3] != ' ' || s[7] != ' ' || s[10] != ' ' ||
        s[19] != ' ')
        return -1;
    int day = s[8] == ' ' ? digits(s + 9, 1) : digits(s + 8, 2);
    return civil_ms(digits(s + 20, 4), name_index(s + 4, 3, month_names, 12), day,
                    time_of_day(s + 11));
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static int64_t parse_rfc850(const char *s, size_t len)
{
    const char *comma = memchr(s, ',', len);
    if (comma == NULL || name_index(s, (size_t)(comma - s), day_names_long, 7) < 0)
        return -1;
    const char *r = comma + 1;
    if ((size_t)(s + len - r) != 23 || r[0] != ' ' || r[3] != '-' || r[7] != '-' || r[10] != ' ' ||
        memcmp(r + 19, " GMT", 4) != 0)
        return -1;
    int yy = digits(r + 8, 2);
    if (yy < 0)
        return -1;
    /* RFC 9110 5.6.7: more than 50 years ahead means the past century */
    int64_t year = RFC850_BASE_YEAR / 100 * 100 + yy;
    if (year > RFC850_BASE_YEAR + RFC850_WINDOW)
        year -= 100;
    return civil_ms(year, name_index(r + 4, 3, month_names, 12), digits(r + 1, 2),
                    time_of_day(r + 11));
}

int64_t cache_policy_parse_date(const char *s, size_t len)
{
    if (s == NULL)
        return -1;
    if (len == IMF_FIXDATE_LEN && s[3] == ',') {
        /* a clone's Date changes once a second: the last one is kept */
        static _Thread_local char last[IMF_FIXDATE_LEN];
        static _Thread_local int64_t last_ms = -2; /* -2: nothing kept */
        if (last_ms != -2 && memcmp(s, last, IMF_FIXDATE_LEN) == 0)
            return last_ms;
        last_ms = parse_imf_fixdate(s);
        memcpy(last, s, IMF_FIXDATE_LEN);
        return last_ms;
    }
    if (len == ASCTIME_LEN && s[3] == ' ')
        return parse_asctime(s);
    if (len > IMF_FIXDATE_LEN - 6)
        return parse_rfc850(s, len);
    return -1;
}

/* Writes <v> as <n> digits, zero-padded. */
static void put_digits(char *out, int64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        out[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

void cache_policy_format_date(int64_t ms, char *out)
{
    static const int64_t max_ms = 253402300799999LL; /* 9999-12-31 23:59:59.999 */
    int64_t y;
    unsigned m, d;

    if (ms < 0)
        ms = 0;
    if (ms > max_ms)
        ms = max_ms;
    int64_t secs = ms / MS_PER_S, days = secs / S_PER_DAY, tod = secs % S_PER_DAY;
    civil_from_days(days, &y, &m, &d);
    /* 1970-01-01 was a Thursday */
    memcpy(out, day_names[(days + 4) % 7], 3);
    memcpy(out + 3, ", ", 2);
    put_digits(out + 5, d, 2);
    out[7] = ' ';
    memcpy(out + 8, month_names[m - 1], 3);
    out[11] = ' ';
    put_digits(out + 12, y, 4);
    out[16] = ' ';
    put_digits(out + 17, tod / 3600, 2);
    out[19] = ':';
    put_digits(out + 20, tod / 60 % 60, 2);
    out[22] = ':';
    put_digits(out + 23, tod % 60, 2);
    memcpy(out + 25, " GMT", 5);
}
