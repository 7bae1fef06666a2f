/*
 * fuzz_cache: libFuzzer target for the cache's readers of untrusted bytes:
 * entries read back from Redis, and the cache policy's reading of heads.
 *
 * The first byte of the input picks the options (scheme, [cache] defaults,
 * the room given to the key and Vary writers, a body offset). The rest is
 * given whole to cache_entry_decode(), as bytes another instance, another
 * version or a corrupted value left in Redis: it must decode exactly when
 * the bytes are a well-formed version-1 entry that the proxy can use (and
 * again with body_len set to fit, so mutated lengths still decode), and a
 * decoded entry must match the bytes field by field, hand its body to an
 * evbuffer by reference with the right byte counts, build back into the
 * same bytes and refuse any truncation or trailing byte. The rest is also
 * parsed as a request head, then a response head; what follows them is
 * tried as an entry again (so an entry meets a request: its Vary names make
 * a variant, its validators answer the request's conditionals) and as an
 * HTTP-date. Every Cache-Control, key, Vary, variant, date and conditional
 * result is checked for bounds (lengths within the room given, NUL where
 * documented) and for agreement with the rules it implements, and a
 * response judged storable is built into an entry as conn.c builds one,
 * which must decode. Every check failure aborts. Owns only what it
 * allocates per input (exact-size copies, so a read past the end is
 * caught), freed before returning; no globals, one thread.
 */
#include "cache_entry.h"
#include "cache_policy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "fuzz_common.h"

#define FUZZ_MAX_HEAD    8192              /* bytes: per head */
#define FUZZ_NOW_MS      1767225600000LL   /* 2026-01-01T00:00:00Z: the clock of this run */
#define FUZZ_DATE_MAX    64                /* bytes: longer tails are not tried as a date */
#define FUZZ_DATE_MAX_MS 253402300799000LL /* 9999-12-31 23:59:59, the last HTTP-date */
#define FUZZ_DELTA_MAX   2147483648LL      /* s: Cache-Control values are clamped to this */
#define FUZZ_CC_ALL      (((uint32_t)CACHE_CC_PRAGMA_NO_CACHE << 1) - 1) /* every cc flag bit */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What the first byte of the input chooses. */
struct fuzz_mode {
    const char *scheme;            /* "http" or "https" for the key */
    struct cache_policy_opts opts; /* [cache] defaults */
    size_t room;                   /* a small room for the key, Vary and variant writers */
    uint8_t bits;                  /* the byte itself, for offsets */
};

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A block of exactly <room> bytes for a writer, so a write past the room
 * is caught (NULL is possible for 0, which must then not be written);
 * caller frees. */
static char *room_block(size_t room)
{
    char *p = malloc(room);
    CHECK(p != NULL || room == 0);
    return p;
}

/* ------------------------------------------------------------ dates */

/* Any instant formats to a date that parses back to it, whole seconds,
 * clamped to the years an HTTP-date can hold. */
static void check_format(int64_t ms)
{
    char text[30];
    int64_t want = ms < 0 ? 0 : ms > FUZZ_DATE_MAX_MS ? FUZZ_DATE_MAX_MS : ms / 1000 * 1000;

    memset(text, 'x', sizeof(text)); /* the NUL must come from the writer */
    cache_policy_format_date(ms, text);
    CHECK(text[29] == '\0' && strlen(text) == 29);
    char *copy = exact_copy(text, 29);
    CHECK(cache_policy_parse_date(copy, 29) == want);
    free(copy);
}

/* An HTTP-date parse of <s>[0..<len>), and the format/parse round trip. */
static void check_date(const char *s, size_t len)
{
    char *copy = exact_copy(s, len);
    int64_t ms = cache_policy_parse_date(copy, len);

    CHECK(ms >= -1);
    /* the same bytes again, the kept last Date of this thread or not */
    CHECK(cache_policy_parse_date(copy, len) == ms);
    free(copy);
    if (ms < 0)
        return;
    CHECK(ms % 1000 == 0);
    /* a leap second (:60) counts as the next second; at the very end of
     * 9999 that is a second the formatter clamps away */
    CHECK(ms <= FUZZ_DATE_MAX_MS + 1000);
    if (ms <= FUZZ_DATE_MAX_MS)
        check_format(ms); /* whole seconds: formats to a date that parses back to <ms> */
}

/* ------------------------------------------------------------ Cache-Control */

static void check_delta(int64_t v)
{
    CHECK(v == -1 || (v >= 0 && v <= FUZZ_DELTA_MAX));
}

static void check_cc(const struct cache_policy_cc *cc)
{
    CHECK((cc->flags & ~FUZZ_CC_ALL) == 0);
    check_delta(cc->max_age);
    check_delta(cc->s_maxage);
    check_delta(cc->max_stale);
    check_delta(cc->min_fresh);
    check_delta(cc->stale_while_revalidate);
    check_delta(cc->stale_if_error);
}

static void check_request(const struct http_head *req, const char *buf,
                          struct cache_policy_request *rq)
{
    struct cache_policy_cc cc;

    cache_policy_request(req, buf, rq);
    check_cc(&rq->cc);
    cache_policy_parse_cc(req, buf, &cc);
    CHECK(memcmp(&cc, &rq->cc, sizeof(cc)) == 0);
    if (rq->lookup || rq->is_head)
        CHECK(!rq->unsafe);
    if (rq->lookup)
        CHECK(req->index[HTTP_H_RANGE] < 0);
    CHECK(rq->authorization == (req->index[HTTP_H_AUTHORIZATION] >= 0));
    CHECK(rq->conditional ==
          (req->index[HTTP_H_IF_NONE_MATCH] >= 0 || req->index[HTTP_H_IF_MODIFIED_SINCE] >= 0));
    CHECK(rq->no_cache == ((rq->cc.flags & (CACHE_CC_NO_CACHE | CACHE_CC_PRAGMA_NO_CACHE)) != 0 ||
                           rq->cc.max_age == 0));
    if (req->index[HTTP_H_CACHE_CONTROL] >= 0)
        CHECK(!(rq->cc.flags & CACHE_CC_PRAGMA_NO_CACHE));
}

/* ------------------------------------------------------------ keys, Vary */

/* The key in the full room, and in the mode's small one; returns the key
 * (caller frees) and its length in *<len>, or NULL when there is none. */
static char *check_key(const struct http_head *req, const char *buf, const struct fuzz_mode *m,
                       size_t *len)
{
    char *full = room_block(CACHE_POLICY_KEY_MAX + 1);
    size_t n = cache_policy_key(req, buf, m->scheme, full, CACHE_POLICY_KEY_MAX + 1);
    size_t slen = strlen(m->scheme);

    CHECK(n <= CACHE_POLICY_KEY_MAX);
    if (n > 0) {
        CHECK(full[n] == '\0' && strlen(full) == n);
        CHECK(n > slen + 3 && memcmp(full, m->scheme, slen) == 0 &&
              memcmp(full + slen, "://", 3) == 0);
    }
    char *small = room_block(m->room);
    size_t s = cache_policy_key(req, buf, m->scheme, small, m->room);
    CHECK(s == (n > 0 && n < m->room ? n : 0));
    if (s > 0)
        CHECK(memcmp(small, full, n + 1) == 0);
    free(small);
    /* a huge room is capped at the longest key */
    char *big = room_block(CACHE_POLICY_KEY_MAX + 100);
    CHECK(cache_policy_key(req, buf, m->scheme, big, CACHE_POLICY_KEY_MAX + 100) == n);
    free(big);
    if (n == 0) {
        free(full);
        return NULL;
    }
    *len = n;
    return full;
}

/* Vary names as documented: lower-case, non-empty, trimmed, strictly
 * increasing (no duplicates), joined by single commas. Returns how many. */
static unsigned check_vary_format(const char *names, size_t len)
{
    const char *prev = NULL;
    size_t prev_len = 0, at = 0;
    unsigned count = 0;

    if (len == 0)
        return 0;
    while (at <= len) {
        const char *comma = memchr(names + at, ',', len - at);
        size_t tlen = comma ? (size_t)(comma - names - at) : len - at;
        const char *tok = names + at;
        CHECK(tlen > 0);
        CHECK(tok[0] != ' ' && tok[0] != '\t' && tok[tlen - 1] != ' ' && tok[tlen - 1] != '\t');
        for (size_t i = 0; i < tlen; i++)
            CHECK(!(tok[i] >= 'A' && tok[i] <= 'Z'));
        if (prev) {
            size_t min = prev_len < tlen ? prev_len : tlen;
            int c = memcmp(prev, tok, min);
            CHECK(c < 0 || (c == 0 && prev_len < tlen));
        }
        prev = tok;
        prev_len = tlen;
        count++;
        at += tlen + 1;
    }
    return count;
}

/* A variant of <req> for <names>: lengths within the room, one line per
 * name when the names are ours; the small room agrees with the full one. */
static void check_variant(const struct http_head *req, const char *buf, const char *names,
                          size_t names_len, unsigned lines, const struct fuzz_mode *m)
{
    char *full = room_block(CACHE_POLICY_VARY_MAX);
    int n = cache_policy_variant(req, buf, names, names_len, full, CACHE_POLICY_VARY_MAX);

    CHECK(n >= -1 && n <= CACHE_POLICY_VARY_MAX);
    if (n >= 0 && n < CACHE_POLICY_VARY_MAX)
        CHECK(full[n] == '\0');
    if (n >= 0 && lines > 0) {
        /* header values hold no LF: the variant keys on one line per name */
        unsigned seen = 0;
        for (int i = 0; i < n; i++)
            seen += full[i] == '\n';
        CHECK(seen == lines && full[n - 1] == '\n');
    }
    if (n >= 0 && names_len == 0)
        CHECK(n == 0);
    char *small = room_block(m->room);
    int s = cache_policy_variant(req, buf, names, names_len, small, m->room);
    if (n >= 0) {
        CHECK(s == ((size_t)n <= m->room ? n : -1));
        if (s > 0)
            CHECK(memcmp(small, full, (size_t)n) == 0);
        if (s >= 0 && (size_t)s < m->room)
            CHECK(small[s] == '\0');
    } else if (m->room <= CACHE_POLICY_VARY_MAX) {
        CHECK(s == -1);
    }
    free(small);
    free(full);
}

/* The Vary names of <resp> (full room, then the small one) and this
 * request's variant for them. Returns the names (caller frees) and their
 * length in *<len>, or NULL for Vary: * or names too long. */
static char *check_vary(const struct http_head *resp, const char *resp_buf,
                        const struct http_head *req, const char *req_buf, const struct fuzz_mode *m,
                        size_t *len)
{
    char *full = room_block(CACHE_POLICY_VARY_MAX);
    int n = cache_policy_vary_names(resp, resp_buf, full, CACHE_POLICY_VARY_MAX);

    CHECK(n >= -1 && n <= CACHE_POLICY_VARY_MAX);
    if (resp->index[HTTP_H_VARY] < 0)
        CHECK(n == 0);
    char *small = room_block(m->room);
    int s = cache_policy_vary_names(resp, resp_buf, small, m->room);
    if (n >= 0) {
        CHECK(s == ((size_t)n <= m->room ? n : -1));
        if (s > 0)
            CHECK(memcmp(small, full, (size_t)n) == 0);
    } else if (m->room <= CACHE_POLICY_VARY_MAX) {
        CHECK(s == -1);
    }
    free(small);
    if (n < 0) {
        free(full);
        return NULL;
    }
    if (n < CACHE_POLICY_VARY_MAX)
        CHECK(full[n] == '\0');
    unsigned count = check_vary_format(full, (size_t)n);
    char *names = exact_copy(full, (size_t)n);
    free(full);
    check_variant(req, req_buf, names, (size_t)n, count, m);
    *len = (size_t)n;
    return names;
}

/* ------------------------------------------------------------ conditionals */

/* If-None-Match / If-Modified-Since against a stored <etag> and
 * <last_modified_ms>: the rules that must hold whatever the values. */
static void check_not_modified(const struct http_head *req, const char *buf, const char *etag,
                               size_t etag_len, int64_t last_modified_ms)
{
    bool inm = req->index[HTTP_H_IF_NONE_MATCH] >= 0;
    bool ims = req->index[HTTP_H_IF_MODIFIED_SINCE] >= 0;
    bool nm = cache_policy_not_modified(req, buf, etag, etag_len, last_modified_ms);

    if (!inm && !ims)
        CHECK(!nm);
    if (inm) {
        /* If-Modified-Since is ignored beside If-None-Match */
        CHECK(cache_policy_not_modified(req, buf, etag, etag_len, -1) == nm);
        CHECK(!cache_policy_not_modified(req, buf, NULL, 0, last_modified_ms));
        CHECK(!cache_policy_not_modified(req, buf, "", 0, last_modified_ms));
        /* weak comparison: a W/ prefix on the stored tag changes nothing */
        if (etag && etag_len > 0 && etag[0] == '"') {
            char *weak = malloc(etag_len + 2);
            CHECK(weak != NULL);
            memcpy(weak, "W/", 2);
            memcpy(weak + 2, etag, etag_len);
            CHECK(cache_policy_not_modified(req, buf, weak, etag_len + 2, last_modified_ms) == nm);
            free(weak);
        }
    } else {
        CHECK(!cache_policy_not_modified(req, buf, etag, etag_len, -1));
        if (last_modified_ms < 0)
            CHECK(!nm);
        /* modified no later than the date asked about: older is too */
        if (nm)
            CHECK(cache_policy_not_modified(req, buf, etag, etag_len, last_modified_ms / 2));
    }
}

/* ------------------------------------------------------------ use */

/* What a stored response with <st> is good for at a few instants around
 * its lifetime (times may be anything, as decoded from Redis). */
static void check_use(const struct cache_policy_stored *st, const struct cache_policy_request *rq)
{
    const int64_t later = st->response_ms > INT64_MAX - 1000 ? INT64_MAX : st->response_ms + 1000;
    const int64_t when[] = {0,        FUZZ_NOW_MS, st->response_ms, later, FUZZ_NOW_MS + 86400000LL,
                            INT64_MAX};

    for (size_t i = 0; i < sizeof(when) / sizeof(when[0]); i++) {
        int64_t age = -1;
        enum cache_policy_use u = cache_policy_use(st, rq, when[i], &age);
        CHECK(age >= 0);
        CHECK(age == cache_policy_age_ms(st->initial_age_ms, st->response_ms, when[i]));
        CHECK(u >= CACHE_USE_FRESH && u <= CACHE_USE_REQUEST);
        if (u == CACHE_USE_FRESH)
            CHECK(age < st->freshness_ms && !st->no_cache && !rq->no_cache);
        if (u == CACHE_USE_STALE || u == CACHE_USE_SWR)
            CHECK(age >= st->freshness_ms && !st->must_revalidate && !st->no_cache &&
                  !rq->no_cache);
        if (st->no_cache)
            CHECK(u == CACHE_USE_VALIDATE);
        if (cache_policy_stale_if_error(st, rq, when[i]))
            CHECK(age >= st->freshness_ms && !st->must_revalidate && !st->no_cache);
    }
}

/* ------------------------------------------------------------ entries */

/* Whether <len> bytes at <p> are an entry the proxy may use: the encoding
 * of cache_entry.h, read here independently of the decoder. */
static bool decodable(const unsigned char *p, size_t len)
{
    if (len < CACHE_ENTRY_FIXED_SIZE || memcmp(p, CACHE_ENTRY_MAGIC, 4) != 0)
        return false;
    if ((p[4] != CACHE_ENTRY_RESPONSE && p[4] != CACHE_ENTRY_VARY) || p[5] != 0)
        return false;
    uint64_t var = 0;
    for (int i = 0; i < 5; i++)
        var += le32(p + 60 + 4 * i);
    /* times within CACHE_ENTRY_TIME_MAX of 0 */
    for (int i = 0; i < 6; i++) {
        int64_t t = (int64_t)le64(p + 12 + 8 * i);
        if (t > CACHE_ENTRY_TIME_MAX || t < -CACHE_ENTRY_TIME_MAX)
            return false;
    }
    /* Vary names no longer than the proxy writes: see check_entry() */
    return var <= len - CACHE_ENTRY_FIXED_SIZE &&
           le64(p + 80) == len - CACHE_ENTRY_FIXED_SIZE - var &&
           le32(p + 72) <= CACHE_POLICY_VARY_MAX;
}

/* The parts that build <e> again, its body as bytes or from <body_buf>. */
static struct cache_entry_parts parts_of(const struct cache_entry *e, struct evbuffer *body_buf)
{
    struct cache_entry_parts p = cache_entry_parts_of(e);
    p.body_buf = body_buf;
    return p;
}

/* Builds <p> and checks the result is the entry <want> bytes for bytes. */
static void check_rebuild(const struct cache_entry_parts *p, const char *want, size_t want_len)
{
    struct cache_entry *b = cache_entry_build(p);

    CHECK(b != NULL);
    CHECK(b->refs == 1 && b->blob_len == want_len);
    CHECK(memcmp(b->blob, want, want_len) == 0);
    cache_entry_unref(b);
}

/* Body bytes by reference: counts, contents and the reference held. */
static void check_body(struct cache_entry *e, size_t from)
{
    struct evbuffer *out = evbuffer_new();

    CHECK(out != NULL);
    CHECK(cache_entry_add_body(e, out) == 0);
    CHECK(evbuffer_get_length(out) == e->body_len);
    CHECK(e->refs == (e->body_len > 0 ? 2 : 1));
    CHECK(cache_entry_add_body_from(e, from, out) == 0);
    size_t tail = from < e->body_len ? (size_t)e->body_len - from : 0;
    CHECK(evbuffer_get_length(out) == e->body_len + tail);
    CHECK(e->refs == 1 + (e->body_len > 0) + (tail > 0));
    CHECK(cache_entry_add_body_from(e, (size_t)e->body_len, out) == 0);
    CHECK(cache_entry_add_body_from(e, SIZE_MAX, out) == 0);
    CHECK(evbuffer_get_length(out) == e->body_len + tail);
    if (e->body_len > 0) {
        const char *got = (const char *)evbuffer_pullup(out, -1);
        CHECK(got != NULL);
        CHECK(memcmp(got, e->body, (size_t)e->body_len) == 0);
        CHECK(tail == 0 || memcmp(got + e->body_len, e->body + from, tail) == 0);
    }
    evbuffer_free(out); /* drops the references the buffer held */
    CHECK(e->refs == 1);
}

/* A decoded entry against the <len> bytes at <data> it came from, then
 * with the request <req> (may be NULL) and its <rq>. */
static void check_entry(struct cache_entry *e, const char *data, size_t len,
                        const struct http_head *req, const char *req_buf,
                        const struct cache_policy_request *rq, const struct fuzz_mode *m)
{
    const unsigned char *p = (const unsigned char *)data;

    CHECK(e->refs == 1);
    CHECK(e->kind == CACHE_ENTRY_RESPONSE || e->kind == CACHE_ENTRY_VARY);
    CHECK(e->blob_len == len && memcmp(e->blob, data, len) == 0);
    CHECK(cache_entry_size(e) == sizeof(*e) + len);
    /* the view is the fixed part, read at its documented offsets */
    CHECK(e->status == (uint16_t)(p[6] | p[7] << 8) && e->flags == le32(p + 8));
    CHECK(e->response_ms == (int64_t)le64(p + 12) && e->initial_age_ms == (int64_t)le64(p + 20));
    CHECK(e->freshness_ms == (int64_t)le64(p + 28) && e->swr_ms == (int64_t)le64(p + 36));
    CHECK(e->sie_ms == (int64_t)le64(p + 44) && e->last_modified_ms == (int64_t)le64(p + 52));
    /* ... and the fields, back to back inside the blob, the body last */
    CHECK(e->key == e->blob + CACHE_ENTRY_FIXED_SIZE);
    CHECK(e->head == e->key + e->key_len);
    CHECK(e->etag == e->head + e->head_len);
    CHECK(e->vary == e->etag + e->etag_len);
    CHECK(e->tags == e->vary + e->vary_len);
    CHECK(e->body == e->tags + e->tags_len);
    CHECK(e->body_len <= len && e->body + e->body_len == e->blob + len);
    /* conn.c copies a stored entry's Vary names into a
     * char[CACHE_POLICY_VARY_MAX] when a 304 refreshes it */
    CHECK(e->vary_len <= CACHE_POLICY_VARY_MAX);
    CHECK(!e->l1_next && !e->lru_prev && !e->lru_next && e->l1_hash == 0 && e->l1_expires_ms == 0);

    CHECK(cache_entry_key_equals(e, e->key, e->key_len));
    char *key = exact_copy(e->key, e->key_len);
    CHECK(cache_entry_key_equals(e, key, e->key_len));
    if (e->key_len > 0) {
        CHECK(!cache_entry_key_equals(e, key, e->key_len - 1));
        key[e->key_len - 1] ^= 1;
        CHECK(!cache_entry_key_equals(e, key, e->key_len));
    }
    free(key);

    check_body(e, e->body_len ? (size_t)(m->bits * 7919u % (e->body_len + 1)) : 0);

    /* the same parts build the same bytes, the body given either way */
    struct cache_entry_parts parts = parts_of(e, NULL);
    check_rebuild(&parts, data, len);
    struct evbuffer *body_buf = evbuffer_new();
    CHECK(body_buf != NULL);
    CHECK(evbuffer_add(body_buf, e->body, (size_t)e->body_len) == 0);
    parts = parts_of(e, body_buf);
    check_rebuild(&parts, data, len);
    CHECK(evbuffer_get_length(body_buf) == e->body_len); /* copied, not drained */
    evbuffer_free(body_buf);

    /* the encoding delimits itself: no prefix or extension decodes */
    char *shorter = exact_copy(data, len - 1);
    CHECK(cache_entry_decode(shorter, len - 1) == NULL);
    free(shorter);
    char *longer = malloc(len + 1);
    CHECK(longer != NULL);
    memcpy(longer, data, len);
    longer[len] = 0;
    CHECK(cache_entry_decode(longer, len + 1) == NULL);
    free(longer);

    /* its times, whatever they are, go through the policy's arithmetic */
    struct cache_policy_request none;
    memset(&none, 0, sizeof(none));
    none.cc.max_age = none.cc.s_maxage = none.cc.max_stale = none.cc.min_fresh = -1;
    none.cc.stale_while_revalidate = none.cc.stale_if_error = -1;
    const struct cache_policy_stored st = {
        .initial_age_ms = e->initial_age_ms,
        .response_ms = e->response_ms,
        .freshness_ms = e->freshness_ms,
        .swr_ms = e->swr_ms,
        .sie_ms = e->sie_ms,
        .must_revalidate = (e->flags & CACHE_ENTRY_MUST_REVALIDATE) != 0,
        .no_cache = (e->flags & CACHE_ENTRY_NO_CACHE) != 0,
    };
    check_use(&st, rq ? rq : &none);
    check_format(e->last_modified_ms);
    check_format(e->response_ms);

    if (req == NULL)
        return;
    if (e->kind == CACHE_ENTRY_VARY)
        check_variant(req, req_buf, e->vary, e->vary_len, 0, m);
    check_not_modified(req, req_buf, e->etag, e->etag_len, e->last_modified_ms);
}

/* Decodes <len> bytes at <data> and checks the outcome. */
static void decode_one(const char *data, size_t len, const struct http_head *req,
                       const char *req_buf, const struct cache_policy_request *rq,
                       const struct fuzz_mode *m)
{
    char *copy = exact_copy(data, len);
    struct cache_entry *e = cache_entry_decode(copy, len);

    CHECK((e != NULL) == decodable((const unsigned char *)copy, len));
    if (e) {
        check_entry(e, copy, len, req, req_buf, rq, m);
        CHECK(e->refs == 1);
        cache_entry_unref(e);
    }
    free(copy);
}

/* Decodes the bytes as they are, then, when only body_len is off, with it
 * set to what the other lengths leave: mutations rarely keep six lengths
 * adding up, so this is what lets them reach the decoded fields. */
static void try_entry(const char *data, size_t len, const struct http_head *req,
                      const char *req_buf, const struct cache_policy_request *rq,
                      const struct fuzz_mode *m)
{
    const unsigned char *p = (const unsigned char *)data;

    decode_one(data, len, req, req_buf, rq, m);
    if (len < CACHE_ENTRY_FIXED_SIZE || memcmp(p, CACHE_ENTRY_MAGIC, 4) != 0)
        return;
    uint64_t var = 0;
    for (int i = 0; i < 5; i++)
        var += le32(p + 60 + 4 * i);
    uint64_t body_len = len - CACHE_ENTRY_FIXED_SIZE - var;
    if (var > len - CACHE_ENTRY_FIXED_SIZE || le64(p + 80) == body_len)
        return;
    unsigned char *fixed = (unsigned char *)exact_copy(data, len);
    for (int i = 0; i < 8; i++)
        fixed[80 + i] = (unsigned char)(body_len >> (8 * i));
    decode_one((const char *)fixed, len, req, req_buf, rq, m);
    free(fixed);
}

/* ------------------------------------------------------------ responses */

/* Judges <resp> for <req>, checks the verdict and times, and stores a
 * storable one as conn.c does: the entry must decode to the same. */
static void check_response(const struct http_head *req, const char *req_buf,
                           const struct cache_policy_request *rq, const struct http_head *resp,
                           const char *resp_buf, const char *body, size_t body_len,
                           const struct fuzz_mode *m)
{
    const int64_t response_ms = FUZZ_NOW_MS, request_ms = FUZZ_NOW_MS - (m->bits & 7) * 250;
    struct cache_policy_response pr;
    struct cache_policy_cc cc;

    cache_policy_response(req, req_buf, rq, resp, resp_buf, request_ms, response_ms, &m->opts, &pr);
    check_cc(&pr.cc);
    cache_policy_parse_cc(resp, resp_buf, &cc);
    CHECK(memcmp(&cc, &pr.cc, sizeof(cc)) == 0);
    CHECK(pr.verdict >= CACHE_STORE && pr.verdict <= CACHE_NOT_VARY_TOO_LONG);
    CHECK(strcmp(cache_policy_verdict_text(pr.verdict), "unknown") != 0);
    CHECK(pr.date_ms >= 0 && pr.date_ms <= FUZZ_DATE_MAX_MS + 1000);
    CHECK(pr.last_modified_ms >= -1 && pr.last_modified_ms <= FUZZ_DATE_MAX_MS + 1000);
    CHECK(pr.initial_age_ms >= 0 && pr.freshness_ms >= 0);
    CHECK(pr.swr_ms >= 0 && pr.sie_ms >= 0);
    CHECK(pr.must_revalidate ==
          ((pr.cc.flags & (CACHE_CC_MUST_REVALIDATE | CACHE_CC_PROXY_REVALIDATE)) != 0 ||
           pr.cc.s_maxage >= 0));
    CHECK(pr.no_cache == ((pr.cc.flags & CACHE_CC_NO_CACHE) != 0));
    if (pr.heuristic)
        CHECK(pr.freshness_ms > 0 && (pr.freshness_ms <= CACHE_POLICY_HEURISTIC_MAX_MS ||
                                      pr.freshness_ms == m->opts.default_ttl_ms));

    size_t names_len = 0;
    char *names = check_vary(resp, resp_buf, req, req_buf, m, &names_len);
    size_t etag_len = 0;
    const char *etag = http_header_value(resp, resp_buf, HTTP_H_ETAG, &etag_len);
    check_not_modified(req, req_buf, etag, etag_len, pr.last_modified_ms);

    const struct cache_policy_stored st = {
        .initial_age_ms = pr.initial_age_ms,
        .response_ms = response_ms,
        .freshness_ms = pr.freshness_ms,
        .swr_ms = pr.swr_ms,
        .sie_ms = pr.sie_ms,
        .must_revalidate = pr.must_revalidate,
        .no_cache = pr.no_cache,
    };
    check_use(&st, rq);

    if (pr.verdict != CACHE_STORE) {
        free(names);
        return;
    }
    CHECK(req->method.len == 3 && memcmp(req_buf + req->method.off, "GET", 3) == 0);
    CHECK(resp->status >= 200 && resp->status != 206 && resp->status != 304);
    CHECK(!((pr.cc.flags | rq->cc.flags) & CACHE_CC_NO_STORE));
    CHECK(!(pr.cc.flags & CACHE_CC_PRIVATE));
    CHECK(names != NULL);

    size_t key_len = 0;
    char *key = check_key(req, req_buf, m, &key_len);
    if (key == NULL) {
        free(names);
        return;
    }
    /* the header lines after the status line, as conn.c keeps them */
    const char *eol = memchr(resp_buf, '\n', resp->head_len);
    CHECK(eol != NULL);
    size_t head_off = (size_t)(eol + 1 - resp_buf);
    size_t head_len = resp->head_len - head_off >= 2 ? resp->head_len - head_off - 2 : 0;
    const struct cache_entry_parts parts = {
        .kind = CACHE_ENTRY_RESPONSE,
        .status = (uint16_t)resp->status,
        .flags = (pr.must_revalidate ? CACHE_ENTRY_MUST_REVALIDATE : 0) |
                 (pr.no_cache ? CACHE_ENTRY_NO_CACHE : 0) |
                 (pr.heuristic ? CACHE_ENTRY_HEURISTIC : 0),
        .response_ms = response_ms,
        .initial_age_ms = pr.initial_age_ms,
        .freshness_ms = pr.freshness_ms,
        .swr_ms = pr.swr_ms,
        .sie_ms = pr.sie_ms,
        .last_modified_ms = pr.last_modified_ms,
        .key = key,
        .key_len = key_len,
        .head = resp_buf + head_off,
        .head_len = head_len,
        .etag = etag ? etag : "",
        .etag_len = etag ? etag_len : 0,
        .vary = names,
        .vary_len = names_len,
        .body = body,
        .body_len = body_len,
    };
    struct cache_entry *e = cache_entry_build(&parts);
    CHECK(e != NULL);
    try_entry(e->blob, e->blob_len, req, req_buf, rq, m);
    struct cache_entry *d = cache_entry_decode(e->blob, e->blob_len);
    CHECK(d != NULL);
    CHECK(cache_entry_key_equals(d, key, key_len));
    CHECK(d->vary_len == names_len && memcmp(d->vary, names, names_len) == 0);
    CHECK(d->freshness_ms == pr.freshness_ms && d->status == resp->status);
    cache_entry_unref(d);
    cache_entry_unref(e);
    free(key);
    free(names);
}

/* ------------------------------------------------------------ heads */

/* Parses a head from <buf>[0..<len>) into <h>; returns an exact copy of
 * its bytes (caller frees), or NULL when there is no complete head. */
static char *parse_head(struct http_head *h, bool is_response, const char *buf, size_t len)
{
    char *copy = exact_copy(buf, len);

    http_head_init(h, is_response, FUZZ_MAX_HEAD, FUZZ_MAX_HEAD, 0);
    enum http_parse r = http_head_parse(h, copy, len);
    free(copy);
    if (r != HTTP_PARSE_DONE)
        return NULL;
    CHECK(h->head_len > 0 && h->head_len <= len);
    return exact_copy(buf, h->head_len);
}

/* Every header value of <h> as an HTTP-date. */
static void check_header_dates(const struct http_head *h, const char *buf)
{
    for (unsigned i = 0; i < h->header_count; i++) {
        check_span(h, h->headers[i].value);
        check_date(buf + h->headers[i].value.off, h->headers[i].value.len);
    }
}

/* The request head in <buf>[0..<len>), the response head after it, and
 * what follows them; <req> and <resp> are the caller's scratch. */
static void check_exchange(const char *buf, size_t len, const struct fuzz_mode *m,
                           struct http_head *req, struct http_head *resp)
{
    char *req_buf = parse_head(req, false, buf, len);
    if (req_buf == NULL)
        return;
    struct cache_policy_request rq;
    check_request(req, req_buf, &rq);
    check_header_dates(req, req_buf);
    size_t key_len;
    free(check_key(req, req_buf, m, &key_len));

    const char *after = buf + req->head_len;
    size_t after_len = len - req->head_len;
    char *resp_buf = parse_head(resp, true, after, after_len);
    if (resp_buf == NULL) {
        /* no response: the bytes after the request may be an entry */
        try_entry(after, after_len, req, req_buf, &rq, m);
        free(req_buf);
        return;
    }
    check_header_dates(resp, resp_buf);
    const char *tail = after + resp->head_len;
    size_t tail_len = after_len - resp->head_len;
    check_response(req, req_buf, &rq, resp, resp_buf, tail, tail_len, m);
    try_entry(tail, tail_len, req, req_buf, &rq, m);
    if (tail_len <= FUZZ_DATE_MAX)
        check_date(tail, tail_len);
    free(resp_buf);
    free(req_buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const uint8_t bits = data[0];
    const char *rest = (const char *)data + 1;
    const size_t len = size - 1;
    const struct fuzz_mode m = {
        .scheme = (bits & 0x80) ? "https" : "http",
        .opts =
            {
                .default_ttl_ms = (bits & 0x10) ? 60000 : 0,
                .swr_ms = (bits & 0x20) ? 30000 : 0,
                .sie_ms = (bits & 0x20) ? 600000 : 0,
                .store_set_cookie = (bits & 0x40) != 0,
            },
        .room = (size_t)(bits & 0x0f) * 11, /* 0..165 bytes */
        .bits = bits,
    };

    try_entry(rest, len, NULL, NULL, NULL, &m);
    if (len <= FUZZ_DATE_MAX)
        check_date(rest, len);
    if (len >= 8)
        check_format((int64_t)le64((const unsigned char *)rest));

    struct http_head *req = malloc(sizeof(*req));
    struct http_head *resp = malloc(sizeof(*resp));
    CHECK(req != NULL && resp != NULL);
    check_exchange(rest, len, &m, req, resp);
    free(resp);
    free(req);
    return 0;
}
