/*
 * test_cache: cache.c through cache.h, the parts that are pure bookkeeping.
 *
 * Background refresh claims: one refresh per key while its claim holds,
 * another once it has run out or was ended, keys apart from each other,
 * and two keys sharing a table slot each still getting theirs. Each test
 * makes its own cache (L1 off: memory 0) and frees it.
 */
#include "cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_claim_once_while_held),
        cmocka_unit_test(test_done_ends_the_claim),
        cmocka_unit_test(test_keys_apart),
        cmocka_unit_test(test_shared_slot_never_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
