/*
 * test_cache_entry: cache_entry.c through cache_entry.h.
 *
 * Builds entries from hand-made parts (binary bodies with NUL bytes, empty
 * fields, a body taken from an evbuffer), checks every field of the view
 * and of a decoded copy of the blob, then feeds decode broken blobs: wrong
 * magic or version, a bad kind, every truncation of a valid blob, a trailing
 * byte, lengths that do not add up or overflow, Vary names longer than any
 * the proxy writes. Last, the reference an
 * evbuffer holds on a body it was given by reference. Every entry a test
 * makes is unreferenced by that test; the blobs it corrupts are its own
 * heap copies, freed there.
 */
#include "cache_entry.h"

#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "cache_policy.h"

static const char body_bytes[] = "\0bin\0ary\r\n\xff\x00tail";
#define BODY_LEN (sizeof(body_bytes) - 1)

static const char head_text[] = "Content-Type: text/plain\r\nX-A: b\r\n";

static struct cache_entry_parts sample_parts(void)
{
    struct cache_entry_parts p;

    memset(&p, 0, sizeof(p));
    p.kind = CACHE_ENTRY_RESPONSE;
    p.status = 203;
    p.flags = CACHE_ENTRY_MUST_REVALIDATE | CACHE_ENTRY_HEURISTIC;
    p.response_ms = 1700000000123LL;
    p.initial_age_ms = 42;
    p.freshness_ms = 60000;
    p.swr_ms = -1;                   /* negative values survive the trip */
    p.sie_ms = CACHE_ENTRY_TIME_MAX; /* the bounds survive it too */
    p.last_modified_ms = -CACHE_ENTRY_TIME_MAX;
    p.key = "GET|http|example.org|/a?b";
    p.key_len = strlen(p.key);
    p.head = head_text;
    p.head_len = strlen(head_text);
    p.etag = "\"v1\"";
    p.etag_len = 4;
    p.vary = "accept-encoding";
    p.vary_len = strlen(p.vary);
    p.tags = "t1 t2";
    p.tags_len = 5;
    p.body = body_bytes;
    p.body_len = BODY_LEN;
    return p;
}

static void expect_field(const char *got, size_t got_len, const char *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    assert_non_null(got);
    if (want_len > 0)
        assert_memory_equal(got, want, want_len);
}

static void expect_parts(const struct cache_entry *e, const struct cache_entry_parts *p)
{
    assert_int_equal(e->kind, p->kind);
    assert_int_equal(e->status, p->status);
    assert_int_equal(e->flags, p->flags);
    assert_true(e->response_ms == p->response_ms);
    assert_true(e->initial_age_ms == p->initial_age_ms);
    assert_true(e->freshness_ms == p->freshness_ms);
    assert_true(e->swr_ms == p->swr_ms);
    assert_true(e->sie_ms == p->sie_ms);
    assert_true(e->last_modified_ms == p->last_modified_ms);
    expect_field(e->key, e->key_len, p->key, p->key_len);
    expect_field(e->head, e->head_len, p->head, p->head_len);
    expect_field(e->etag, e->etag_len, p->etag, p->etag_len);
    expect_field(e->vary, e->vary_len, p->vary, p->vary_len);
    expect_field(e->tags, e->tags_len, p->tags, p->tags_len);
    expect_field(e->body, (size_t)e->body_len, p->body, p->body_len);
    assert_null(e->l1_next);
    assert_null(e->lru_prev);
    assert_null(e->lru_next);
    assert_true(e->l1_hash == 0);
    assert_true(e->l1_expires_ms == 0);
    assert_int_equal(e->refs, 1);
    /* every view pointer lies in the blob */
    assert_true(e->key >= e->blob && e->body + e->body_len == e->blob + e->blob_len);
}

/* A heap copy of <e>'s blob; the caller frees it. */
static unsigned char *blob_copy(const struct cache_entry *e)
{
    unsigned char *b = malloc(e->blob_len + 1);

    assert_non_null(b);
    memcpy(b, e->blob, e->blob_len);
    return b;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------ round trips */

static void test_round_trip(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);

    (void)state;
    assert_non_null(e);
    expect_parts(e, &p);
    assert_int_equal(e->blob_len, CACHE_ENTRY_FIXED_SIZE + p.key_len + p.head_len + p.etag_len +
                                      p.vary_len + p.tags_len + BODY_LEN);
    assert_memory_equal(e->blob, CACHE_ENTRY_MAGIC, 4);

    struct cache_entry *d = cache_entry_decode(e->blob, e->blob_len);
    assert_non_null(d);
    expect_parts(d, &p);
    assert_memory_equal(d->blob, e->blob, e->blob_len);
    assert_true(d->blob != e->blob);
    cache_entry_unref(e);
    cache_entry_unref(d);
}

/* The documented layout, byte by byte, for one field of each width. */
static void test_layout_little_endian(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e;
    const unsigned char *b;

    (void)state;
    p.status = 0x0102;
    p.flags = 0x0a0b0c0d;
    p.response_ms = 0x1122334455667788LL;
    e = cache_entry_build(&p);
    assert_non_null(e);
    b = (const unsigned char *)e->blob;
    assert_int_equal(b[4], CACHE_ENTRY_RESPONSE);
    assert_int_equal(b[5], 0);
    assert_int_equal(b[6], 0x02);
    assert_int_equal(b[7], 0x01);
    assert_int_equal(b[8], 0x0d);
    assert_int_equal(b[11], 0x0a);
    assert_int_equal(b[12], 0x88);
    assert_int_equal(b[19], 0x11);
    assert_int_equal(b[60], p.key_len);
    assert_int_equal(b[80], BODY_LEN);
    assert_memory_equal(b + CACHE_ENTRY_FIXED_SIZE, p.key, p.key_len);
    cache_entry_unref(e);
}

static void test_empty_fields(void **state)
{
    struct cache_entry_parts p;

    (void)state;
    memset(&p, 0, sizeof(p));
    p.kind = CACHE_ENTRY_VARY;
    p.etag = "";
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    expect_parts(e, &p);
    assert_int_equal(e->blob_len, CACHE_ENTRY_FIXED_SIZE);

    struct cache_entry *d = cache_entry_decode(e->blob, e->blob_len);
    assert_non_null(d);
    expect_parts(d, &p);
    assert_true(cache_entry_key_equals(d, "", 0));
    cache_entry_unref(e);
    cache_entry_unref(d);
}

static void test_body_from_evbuffer(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct evbuffer *buf = evbuffer_new();

    (void)state;
    assert_non_null(buf);
    /* two chains, so the copy has to cross a boundary */
    assert_int_equal(evbuffer_add(buf, body_bytes, 5), 0);
    assert_int_equal(evbuffer_add_reference(buf, body_bytes + 5, BODY_LEN - 5, NULL, NULL), 0);
    p.body = "ignored";
    p.body_len = 7;
    p.body_buf = buf;
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    /* copied, not drained */
    assert_int_equal(evbuffer_get_length(buf), BODY_LEN);
    p.body = body_bytes;
    p.body_len = BODY_LEN;
    expect_parts(e, &p);
    cache_entry_unref(e);
    evbuffer_free(buf);
}

static void test_too_long_field(void **state)
{
    struct cache_entry_parts p = sample_parts();

    (void)state;
    p.head_len = (size_t)UINT32_MAX + 1;
    assert_null(cache_entry_build(&p));
}

/* ------------------------------------------------------------ rejects */

/* Whether decoding <len> bytes of <b> fails; frees what it wrongly made. */
static bool rejects(const unsigned char *b, size_t len)
{
    struct cache_entry *d = cache_entry_decode(b, len);

    cache_entry_unref(d);
    return d == NULL;
}

static void test_decode_rejects_magic_version_kind(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    unsigned char *b;

    (void)state;
    assert_non_null(e);
    b = blob_copy(e);
    assert_false(rejects(b, e->blob_len));

    b[0] = 'X'; /* wrong magic */
    assert_true(rejects(b, e->blob_len));
    b[0] = 'C';
    b[3] = '2'; /* another version */
    assert_true(rejects(b, e->blob_len));
    b[3] = '1';
    for (unsigned k = 0; k < 256; k++) {
        b[4] = (unsigned char)k;
        assert_int_equal(rejects(b, e->blob_len),
                         !(k == CACHE_ENTRY_RESPONSE || k == CACHE_ENTRY_VARY));
    }
    b[4] = CACHE_ENTRY_RESPONSE;
    b[5] = 1; /* the pad byte is zero */
    assert_true(rejects(b, e->blob_len));
    b[5] = 0;
    assert_false(rejects(b, e->blob_len));
    assert_null(cache_entry_decode(NULL, 0));
    free(b);
    cache_entry_unref(e);
}

static void test_decode_rejects_every_truncation(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);

    (void)state;
    assert_non_null(e);
    for (size_t len = 0; len < e->blob_len; len++) {
        /* a heap copy of exactly <len> bytes, so a read past it is caught */
        unsigned char *b = malloc(len ? len : 1);
        assert_non_null(b);
        memcpy(b, e->blob, len);
        if (!rejects(b, len))
            fail_msg("truncation to %zu of %zu bytes accepted", len, e->blob_len);
        free(b);
    }
    cache_entry_unref(e);
}

static void test_decode_rejects_trailing_byte(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    unsigned char *b;

    (void)state;
    assert_non_null(e);
    b = blob_copy(e); /* one spare byte at the end */
    b[e->blob_len] = 'x';
    assert_true(rejects(b, e->blob_len + 1));
    free(b);
    cache_entry_unref(e);
}

static void test_decode_rejects_bad_lengths(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    unsigned char *b;
    size_t n;

    (void)state;
    assert_non_null(e);
    b = blob_copy(e);
    n = e->blob_len;

    /* body_len that would wrap the sum back to the blob's length */
    put64(b + 80, UINT64_MAX - p.key_len - p.head_len - p.etag_len - p.vary_len - p.tags_len + 1 +
                      BODY_LEN);
    assert_true(rejects(b, n));
    put64(b + 80, UINT64_MAX);
    assert_true(rejects(b, n));
    put64(b + 80, BODY_LEN + 1);
    assert_true(rejects(b, n));
    put64(b + 80, BODY_LEN - 1);
    assert_true(rejects(b, n));
    put64(b + 80, BODY_LEN);
    assert_false(rejects(b, n));

    /* each u32 length at its maximum, and one byte moved between fields */
    for (int i = 0; i < 5; i++) {
        unsigned char save[4];
        memcpy(save, b + 60 + 4 * i, 4);
        put32(b + 60 + 4 * i, UINT32_MAX);
        assert_true(rejects(b, n));
        memcpy(b + 60 + 4 * i, save, 4);
    }
    put32(b + 60, (uint32_t)p.key_len + 1);
    assert_true(rejects(b, n));
    put64(b + 80, BODY_LEN - 1);
    assert_false(rejects(b, n)); /* consistent again: key one byte longer, body one shorter */
    free(b);
    cache_entry_unref(e);
}

/* Vary names longer than CACHE_POLICY_VARY_MAX are nothing this code
 * writes, and conn.c copies a stored entry's names into an array of that
 * size when a 304 refreshes it: bytes from Redis with longer ones (found
 * by the fuzz_cache target's invariants) are refused. */
static void test_decode_rejects_long_vary(void **state)
{
    static char names[CACHE_POLICY_VARY_MAX + 1];
    struct cache_entry_parts p = sample_parts();

    (void)state;
    memset(names, 'v', sizeof(names));
    p.vary = names;
    p.vary_len = CACHE_POLICY_VARY_MAX; /* the longest cache_policy_vary_names() writes */
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    assert_false(rejects((const unsigned char *)e->blob, e->blob_len));
    cache_entry_unref(e);

    p.vary_len = CACHE_POLICY_VARY_MAX + 1;
    e = cache_entry_build(&p);
    assert_non_null(e);
    assert_true(rejects((const unsigned char *)e->blob, e->blob_len));
    cache_entry_unref(e);

    /* a VARY record likewise: its names make the variant key */
    p.kind = CACHE_ENTRY_VARY;
    e = cache_entry_build(&p);
    assert_non_null(e);
    assert_true(rejects((const unsigned char *)e->blob, e->blob_len));
    cache_entry_unref(e);
}

/* The parts of an entry build the same bytes again (soft purge copies
 * entries that way). */
static void test_parts_of_rebuilds_the_entry(void **state)
{
    struct cache_entry_parts p = sample_parts();

    (void)state;
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    struct cache_entry_parts again = cache_entry_parts_of(e);
    struct cache_entry *f = cache_entry_build(&again);
    assert_non_null(f);
    assert_int_equal(f->blob_len, e->blob_len);
    assert_memory_equal(f->blob, e->blob, e->blob_len);
    cache_entry_unref(f);
    cache_entry_unref(e);
}

/* Times beyond CACHE_ENTRY_TIME_MAX (a corrupt or foreign value) are
 * refused: the proxy adds and subtracts them. */
static void test_decode_rejects_extreme_times(void **state)
{
    (void)state;
    for (int field = 0; field < 6; field++) {
        for (int sign = 0; sign < 2; sign++) {
            struct cache_entry_parts p = sample_parts();
            int64_t *t[6] = {&p.response_ms, &p.initial_age_ms, &p.freshness_ms,
                             &p.swr_ms,      &p.sie_ms,         &p.last_modified_ms};
            *t[field] = sign ? INT64_MIN : CACHE_ENTRY_TIME_MAX + 1;
            struct cache_entry *e = cache_entry_build(&p);
            assert_non_null(e);
            assert_true(rejects((const unsigned char *)e->blob, e->blob_len));
            cache_entry_unref(e);
        }
    }
}

/* A pass marker lives in L1 only: it builds, but Redis bytes of that kind
 * are refused. */
static void test_pass_kind_is_l1_only(void **state)
{
    struct cache_entry_parts p = sample_parts();

    (void)state;
    p.kind = CACHE_ENTRY_PASS;
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    assert_int_equal(e->kind, CACHE_ENTRY_PASS);
    assert_true(rejects((const unsigned char *)e->blob, e->blob_len));
    cache_entry_unref(e);
}

/* ------------------------------------------------------------ sharing */

static void test_key_equals(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);

    (void)state;
    assert_non_null(e);
    assert_true(cache_entry_key_equals(e, p.key, p.key_len));
    assert_false(cache_entry_key_equals(e, p.key, p.key_len - 1));
    assert_false(cache_entry_key_equals(e, "GET|http|example.org|/a?c", p.key_len));
    assert_false(cache_entry_key_equals(e, "", 0));
    cache_entry_unref(e);
}

static void test_add_body_holds_reference(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    struct evbuffer *out = evbuffer_new();
    char copy[BODY_LEN];

    (void)state;
    assert_non_null(e);
    assert_non_null(out);
    assert_int_equal(cache_entry_add_body(e, out), 0);
    assert_int_equal(e->refs, 2);
    assert_int_equal(evbuffer_get_length(out), BODY_LEN);
    assert_int_equal(evbuffer_copyout(out, copy, BODY_LEN), BODY_LEN);
    assert_memory_equal(copy, body_bytes, BODY_LEN);

    /* the caller lets go; the buffer keeps the entry (and its body) alive */
    cache_entry_unref(e);
    assert_int_equal(e->refs, 1);
    assert_int_equal(evbuffer_remove(out, copy, BODY_LEN), BODY_LEN);
    assert_memory_equal(copy, body_bytes, BODY_LEN);
    /* draining the buffer released the reference and freed the entry: a
     * leak or double free here is what the sanitizer build reports */
    evbuffer_free(out);
}

static void test_add_body_released_on_free(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    struct evbuffer *out = evbuffer_new();

    (void)state;
    assert_non_null(e);
    assert_int_equal(cache_entry_add_body(e, out), 0);
    assert_int_equal(cache_entry_add_body(e, out), 0);
    assert_int_equal(e->refs, 3);
    assert_int_equal(evbuffer_get_length(out), 2 * BODY_LEN);
    evbuffer_free(out);
    assert_int_equal(e->refs, 1);
    cache_entry_unref(e);
}

static void test_add_body_from_an_offset(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);
    struct evbuffer *out = evbuffer_new();
    char copy[BODY_LEN];
    const size_t from = BODY_LEN / 3;

    (void)state;
    assert_non_null(e);
    assert_non_null(out);
    /* the rest of a body the socket took part of: from <from> on, no copy */
    assert_int_equal(cache_entry_add_body_from(e, from, out), 0);
    assert_int_equal(e->refs, 2);
    assert_int_equal(evbuffer_get_length(out), BODY_LEN - from);
    assert_int_equal(evbuffer_copyout(out, copy, BODY_LEN - from), BODY_LEN - from);
    assert_memory_equal(copy, body_bytes + from, BODY_LEN - from);
    /* all of it taken already: nothing queued, no reference kept */
    assert_int_equal(cache_entry_add_body_from(e, BODY_LEN, out), 0);
    assert_int_equal(e->refs, 2);
    assert_int_equal(evbuffer_get_length(out), BODY_LEN - from);
    evbuffer_free(out);
    assert_int_equal(e->refs, 1);
    cache_entry_unref(e);
}

static void test_add_empty_body(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct evbuffer *out = evbuffer_new();

    (void)state;
    p.body_len = 0;
    struct cache_entry *e = cache_entry_build(&p);
    assert_non_null(e);
    assert_int_equal(cache_entry_add_body(e, out), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(e->refs, 1);
    evbuffer_free(out);
    cache_entry_unref(e);
}

static void test_ref_and_size(void **state)
{
    struct cache_entry_parts p = sample_parts();
    struct cache_entry *e = cache_entry_build(&p);

    (void)state;
    assert_non_null(e);
    assert_ptr_equal(cache_entry_ref(e), e);
    assert_int_equal(e->refs, 2);
    cache_entry_unref(e);
    assert_int_equal(e->refs, 1);
    assert_int_equal(cache_entry_size(e), sizeof(struct cache_entry) + e->blob_len);
    assert_true(cache_entry_size(e) > BODY_LEN + p.key_len);
    cache_entry_unref(NULL);
    cache_entry_unref(e);
}

int main(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_layout_little_endian),
        cmocka_unit_test(test_empty_fields),
        cmocka_unit_test(test_body_from_evbuffer),
        cmocka_unit_test(test_too_long_field),
        cmocka_unit_test(test_decode_rejects_magic_version_kind),
        cmocka_unit_test(test_decode_rejects_every_truncation),
        cmocka_unit_test(test_decode_rejects_trailing_byte),
        cmocka_unit_test(test_decode_rejects_bad_lengths),
        cmocka_unit_test(test_decode_rejects_long_vary),
        cmocka_unit_test(test_decode_rejects_extreme_times),
        cmocka_unit_test(test_parts_of_rebuilds_the_entry),
        cmocka_unit_test(test_pass_kind_is_l1_only),
        cmocka_unit_test(test_key_equals),
        cmocka_unit_test(test_add_body_holds_reference),
        cmocka_unit_test(test_add_body_released_on_free),
        cmocka_unit_test(test_add_body_from_an_offset),
        cmocka_unit_test(test_add_empty_body),
        cmocka_unit_test(test_ref_and_size),
    };

    return cmocka_run_group_tests_name("cache_entry", tests, NULL, NULL);
}
