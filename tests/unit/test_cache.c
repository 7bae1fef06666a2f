/*
 * test_cache: cache.c through cache.h, the parts that are pure bookkeeping.
 *
 * Background refresh claims: one refresh per key while its claim holds,
 * another once it has run out or was ended, keys apart from each other,
 * and two keys sharing a table slot each still getting theirs. L1 off
 * (memory 0) still keeps the markers of URLs not worth storing, and only
 * those, and a refused answer still takes away the marker of its URL.
 * cache_put_longer() never moves a key's expiry earlier.
 * Each test makes its own cache (L1 off: memory 0, unless it stores) and
 * frees it.
 */
#include "cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cache_entry.h"

#define HOLD_MS 5000

static uint64_t hash_of(const char *key)
{
    return cache_hash(key, strlen(key));
}

static void test_claim_once_while_held(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    uint64_t h = hash_of("http://a/x");
    assert_true(cache_refresh_claim(c, h, 1000, 1000 + HOLD_MS));
    /* every later stale hit within the hold starts nothing */
    for (int64_t t = 1000; t < 1000 + HOLD_MS; t += 250)
        assert_false(cache_refresh_claim(c, h, t, t + HOLD_MS));
    /* the claim ran out: the next one may go */
    assert_true(cache_refresh_claim(c, h, 1000 + HOLD_MS, 1000 + 2 * HOLD_MS));
    cache_free(c);
}

static void test_done_ends_the_claim(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    uint64_t h = hash_of("http://a/y");
    assert_true(cache_refresh_claim(c, h, 0, HOLD_MS));
    cache_refresh_done(c, h);
    assert_true(cache_refresh_claim(c, h, 1, 1 + HOLD_MS));
    assert_false(cache_refresh_claim(c, h, 2, 2 + HOLD_MS));
    cache_free(c);
}

static void test_keys_apart(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    uint64_t a = hash_of("http://a/1"), b = hash_of("http://a/2");
    assert_true(cache_refresh_claim(c, a, 0, HOLD_MS));
    assert_true(cache_refresh_claim(c, b, 0, HOLD_MS));
    /* ending one leaves the other held */
    cache_refresh_done(c, b);
    assert_false(cache_refresh_claim(c, a, 1, 1 + HOLD_MS));
    cache_free(c);
}

static void test_shared_slot_never_blocks(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    /* two hashes with the same low bits land in the same slot */
    uint64_t a = 0x1234000000000007ULL, b = 0x9876000000000007ULL;
    assert_true(cache_refresh_claim(c, a, 0, HOLD_MS));
    assert_true(cache_refresh_claim(c, b, 1, 1 + HOLD_MS)); /* b is not kept waiting on a */
    /* a lost its slot: it may get an extra refresh, never none */
    assert_true(cache_refresh_claim(c, a, 2, 2 + HOLD_MS));
    /* ending b does not end a's claim */
    cache_refresh_done(c, b);
    assert_false(cache_refresh_claim(c, a, 3, 3 + HOLD_MS));
    cache_free(c);
}

static struct cache_entry *entry_of(uint8_t kind, const char *key)
{
    static const char body[] = "stored body";
    struct cache_entry_parts p = {
        .kind = kind,
        .status = 200,
        .response_ms = 1000,
        .freshness_ms = 60000,
        .last_modified_ms = -1,
        .key = key,
        .key_len = strlen(key),
    };
    if (kind == CACHE_ENTRY_RESPONSE) {
        p.body = body;
        p.body_len = sizeof(body) - 1;
    }
    return cache_entry_build(&p);
}

static void test_no_l1_keeps_only_pass_markers(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    assert_int_equal(cache_l1_max_entry(c), 0); /* nothing stored by size */
    const char *stored = "http://a/stored", *pass = "http://a/no-store";
    struct cache_entry *r = entry_of(CACHE_ENTRY_RESPONSE, stored);
    struct cache_entry *m = entry_of(CACHE_ENTRY_PASS, pass);
    assert_non_null(r);
    assert_non_null(m);
    /* a response is refused: with memory 0 every hit comes from Redis */
    assert_false(cache_put(c, hash_of(stored), r, 61000));
    assert_null(cache_get(c, hash_of(stored), stored, strlen(stored), 1000));
    /* the marker stays, so that the URL's next requests skip Redis and
     * do not wait on each other, until it runs out */
    assert_true(cache_put(c, hash_of(pass), m, 61000));
    struct cache_entry *got = cache_get(c, hash_of(pass), pass, strlen(pass), 2000);
    assert_ptr_equal(got, m);
    cache_entry_unref(got);
    assert_null(cache_get(c, hash_of(pass), pass, strlen(pass), 61000));
    cache_entry_unref(r);
    cache_entry_unref(m);
    cache_free(c);
}

static void test_refused_answer_drops_the_marker(void **state)
{
    (void)state;
    struct cache *c = cache_new(0);
    assert_non_null(c);
    /* the URL was not storable (a marker), then it was: the answer goes
     * to Redis only, and the marker must not keep sending its requests
     * past Redis to the clone */
    const char *url = "http://a/now-storable";
    struct cache_entry *m = entry_of(CACHE_ENTRY_PASS, url);
    struct cache_entry *r = entry_of(CACHE_ENTRY_RESPONSE, url);
    assert_non_null(m);
    assert_non_null(r);
    assert_true(cache_put(c, hash_of(url), m, 61000));
    assert_false(cache_put(c, hash_of(url), r, 61000));
    assert_null(cache_get(c, hash_of(url), url, strlen(url), 2000));
    cache_entry_unref(r);
    cache_entry_unref(m);
    cache_free(c);
}

static void test_put_longer_never_moves_the_expiry_earlier(void **state)
{
    (void)state;
    struct cache *c = cache_new(1 << 20);
    assert_non_null(c);
    /* a Vary record written for a long-lived variant, then for a short one */
    const char *url = "http://a/varies";
    struct cache_entry *long_lived = entry_of(CACHE_ENTRY_VARY, url);
    struct cache_entry *short_lived = entry_of(CACHE_ENTRY_VARY, url);
    assert_non_null(long_lived);
    assert_non_null(short_lived);
    assert_true(cache_put_longer(c, hash_of(url), long_lived, 600000));
    assert_true(cache_put_longer(c, hash_of(url), short_lived, 2000));
    /* the newer record is the one kept, with the older one's expiry */
    struct cache_entry *got = cache_get(c, hash_of(url), url, strlen(url), 300000);
    assert_ptr_equal(got, short_lived);
    cache_entry_unref(got);
    assert_null(cache_get(c, hash_of(url), url, strlen(url), 600000));
    /* a later expiry still wins, and cache_put() itself still replaces it */
    assert_true(cache_put_longer(c, hash_of(url), long_lived, 900000));
    got = cache_get(c, hash_of(url), url, strlen(url), 800000);
    assert_ptr_equal(got, long_lived);
    cache_entry_unref(got);
    assert_true(cache_put(c, hash_of(url), short_lived, 801000));
    assert_null(cache_get(c, hash_of(url), url, strlen(url), 801000));
    /* a marker of the URL (not storable lately) lends a record nothing */
    struct cache_entry *m = entry_of(CACHE_ENTRY_PASS, url);
    assert_non_null(m);
    assert_true(cache_put(c, hash_of(url), m, 2000000));
    assert_true(cache_put_longer(c, hash_of(url), short_lived, 1000000));
    assert_null(cache_get(c, hash_of(url), url, strlen(url), 1000000));
    cache_entry_unref(m);
    cache_entry_unref(long_lived);
    cache_entry_unref(short_lived);
    cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_claim_once_while_held),
        cmocka_unit_test(test_done_ends_the_claim),
        cmocka_unit_test(test_keys_apart),
        cmocka_unit_test(test_shared_slot_never_blocks),
        cmocka_unit_test(test_no_l1_keeps_only_pass_markers),
        cmocka_unit_test(test_refused_answer_drops_the_marker),
        cmocka_unit_test(test_put_longer_never_moves_the_expiry_earlier),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
