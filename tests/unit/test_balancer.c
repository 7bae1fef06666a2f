/*
 * test_balancer: balancer.c through balancer.h.
 *
 * Each test builds a struct config by hand (only server_count, the weights
 * and the policy matter to the balancer), makes a balancer over it, and
 * checks whole pick sequences: smooth weighted round robin (strict
 * alternation, exact shares, the classic 5,1,1 cycle, no burst beyond a
 * server's share in any prefix), the skip mask, and least_conn (lowest
 * active/weight, ties rotating). The config lives on the heap for the test
 * that made it; the balancer copies what it needs.
 */
#include "balancer.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "config.h"

#define LONG_RUN 10000 /* picks in the long-run share tests */

/* A config with <count> servers of <weights> (NULL: all 1) and <policy>;
 * the caller frees it. */
static struct config *make_config(unsigned count, const unsigned *weights,
                                  enum config_balance policy)
{
    struct config *cfg = calloc(1, sizeof(*cfg));

    assert_non_null(cfg);
    assert_true(count <= CONFIG_MAX_SERVERS);
    cfg->server_count = count;
    cfg->balance = policy;
    for (unsigned i = 0; i < count; i++)
        cfg->servers[i].weight = weights ? weights[i] : 1;
    return cfg;
}

static struct balancer *make_balancer(unsigned count, const unsigned *weights,
                                      enum config_balance policy)
{
    struct config *cfg = make_config(count, weights, policy);
    struct balancer *b = balancer_new(cfg);

    assert_non_null(b);
    /* the balancer keeps copies, not the config */
    free(cfg);
    return b;
}

/* Checks <n> round robin picks against <expected>. */
static void expect_picks(struct balancer *b, uint64_t skip, const int *expected, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int got = balancer_pick(b, skip, NULL);
        if (got != expected[i])
            print_error("pick %zu: got %d, expected %d\n", i, got, expected[i]);
        assert_int_equal(got, expected[i]);
    }
}

/* ------------------------------------------------------------------------
 * Smooth weighted round robin
 */

static void test_equal_weights_alternate(void **state)
{
    struct balancer *b = make_balancer(2, NULL, CONFIG_BALANCE_ROUND_ROBIN);

    (void)state;
    for (int i = 0; i < 100; i++)
        assert_int_equal(balancer_pick(b, 0, NULL), i % 2);
    balancer_free(b);

    b = make_balancer(3, NULL, CONFIG_BALANCE_ROUND_ROBIN);
    for (int i = 0; i < 99; i++)
        assert_int_equal(balancer_pick(b, 0, NULL), i % 3);
    balancer_free(b);
}

static void test_equal_weights_exact_halves(void **state)
{
    static const unsigned weights[] = {3, 3};
    struct balancer *b = make_balancer(2, weights, CONFIG_BALANCE_ROUND_ROBIN);
    unsigned count[2] = {0, 0};

    (void)state;
    for (int i = 0; i < LONG_RUN; i++) {
        int s = balancer_pick(b, 0, NULL);
        assert_in_range(s, 0, 1);
        count[s]++;
    }
    assert_int_equal(count[0], LONG_RUN / 2);
    assert_int_equal(count[1], LONG_RUN / 2);
    balancer_free(b);
}

static void test_smooth_5_1_1(void **state)
{
    static const unsigned weights[] = {5, 1, 1};
    static const int cycle[] = {0, 0, 1, 0, 2, 0, 0}; /* a a b a c a a */
    struct balancer *b = make_balancer(3, weights, CONFIG_BALANCE_ROUND_ROBIN);

    (void)state;
    /* the cycle repeats exactly: running weights are back at zero after it */
    for (int round = 0; round < 100; round++)
        expect_picks(b, 0, cycle, sizeof(cycle) / sizeof(cycle[0]));
    balancer_free(b);
}

/* In every prefix of the sequence, a server is less than two picks ahead of
 * its weighted share (count * total < n * weight + 2 * total). */
static void check_no_burst(const unsigned *weights, unsigned count, unsigned picks)
{
    struct balancer *b = make_balancer(count, weights, CONFIG_BALANCE_ROUND_ROBIN);
    unsigned got[CONFIG_MAX_SERVERS] = {0};
    uint64_t total = 0;

    for (unsigned i = 0; i < count; i++)
        total += weights[i];
    for (unsigned n = 1; n <= picks; n++) {
        int s = balancer_pick(b, 0, NULL);
        assert_in_range(s, 0, count - 1);
        got[s]++;
        for (unsigned i = 0; i < count; i++) {
            if ((uint64_t)got[i] * total >= (uint64_t)n * weights[i] + 2 * total)
                print_error("after %u picks server %u has %u (weight %u of %llu)\n", n, i, got[i],
                            weights[i], (unsigned long long)total);
            assert_true((uint64_t)got[i] * total < (uint64_t)n * weights[i] + 2 * total);
        }
    }
    /* whole cycles give exact shares */
    if (picks % total == 0)
        for (unsigned i = 0; i < count; i++)
            assert_int_equal((uint64_t)got[i] * total, (uint64_t)picks * weights[i]);
    balancer_free(b);
}

static void test_no_burst(void **state)
{
    static const unsigned w511[] = {5, 1, 1};
    static const unsigned w_mixed[] = {1, 2, 3, 4, 10, 256};
    static const unsigned w_big[] = {256, 1};
    unsigned w_many[CONFIG_MAX_SERVERS];

    (void)state;
    for (unsigned i = 0; i < CONFIG_MAX_SERVERS; i++)
        w_many[i] = 1 + (i * 37) % 11;
    check_no_burst(w511, 3, 7 * 100);
    check_no_burst(w_mixed, 6, 276 * 10);
    check_no_burst(w_big, 2, 257 * 4);
    check_no_burst(w_many, CONFIG_MAX_SERVERS, 5000);
}

static void test_single_server(void **state)
{
    static const unsigned weights[] = {7};
    struct balancer *b = make_balancer(1, weights, CONFIG_BALANCE_ROUND_ROBIN);

    (void)state;
    for (int i = 0; i < 10; i++)
        assert_int_equal(balancer_pick(b, 0, NULL), 0);
    assert_int_equal(balancer_pick(b, 1, NULL), -1);
    balancer_free(b);
}

static void test_skip_mask(void **state)
{
    struct balancer *b = make_balancer(3, NULL, CONFIG_BALANCE_ROUND_ROBIN);

    (void)state;
    /* server 1 skipped: the other two alternate */
    for (int i = 0; i < 20; i++) {
        int s = balancer_pick(b, UINT64_C(1) << 1, NULL);
        assert_int_not_equal(s, 1);
        assert_int_equal(s, i % 2 ? 2 : 0);
    }
    for (int i = 0; i < 5; i++)
        assert_int_equal(balancer_pick(b, UINT64_C(0x5), NULL), 1);
    assert_int_equal(balancer_pick(b, UINT64_C(0x7), NULL), -1);
    /* bits beyond server_count mean nothing */
    assert_int_equal(balancer_pick(b, UINT64_C(0x7), NULL), -1);
    assert_int_not_equal(balancer_pick(b, ~UINT64_C(0x7), NULL), -1);
    balancer_free(b);
}

/* With weights, a skipped server's share goes to the others in proportion. */
static void test_skip_mask_weighted(void **state)
{
    static const unsigned weights[] = {1, 5, 2};
    struct balancer *b = make_balancer(3, weights, CONFIG_BALANCE_ROUND_ROBIN);
    unsigned got[3] = {0, 0, 0};

    (void)state;
    for (int i = 0; i < 3 * 100; i++) {
        int s = balancer_pick(b, UINT64_C(1) << 1, NULL);
        assert_in_range(s, 0, 2);
        got[s]++;
    }
    assert_int_equal(got[0], 100);
    assert_int_equal(got[1], 0);
    assert_int_equal(got[2], 200);
    balancer_free(b);
}

static void test_all_64_servers(void **state)
{
    struct balancer *b = make_balancer(CONFIG_MAX_SERVERS, NULL, CONFIG_BALANCE_ROUND_ROBIN);

    (void)state;
    for (int i = 0; i < 3 * CONFIG_MAX_SERVERS; i++)
        assert_int_equal(balancer_pick(b, 0, NULL), i % CONFIG_MAX_SERVERS);
    /* only the last one left */
    assert_int_equal(balancer_pick(b, ~(UINT64_C(1) << 63), NULL), 63);
    assert_int_equal(balancer_pick(b, UINT64_MAX, NULL), -1);
    balancer_free(b);
}

/* ------------------------------------------------------------------------
 * least_conn
 */

static void test_least_conn_lowest(void **state)
{
    struct balancer *b = make_balancer(3, NULL, CONFIG_BALANCE_LEAST_CONN);
    unsigned active[3] = {4, 1, 3};

    (void)state;
    for (int i = 0; i < 10; i++)
        assert_int_equal(balancer_pick(b, 0, active), 1);
    active[2] = 0;
    assert_int_equal(balancer_pick(b, 0, active), 2);
    /* the least loaded is skipped: the next least */
    assert_int_equal(balancer_pick(b, UINT64_C(1) << 2, active), 1);
    assert_int_equal(balancer_pick(b, UINT64_C(0x7), active), -1);
    balancer_free(b);
}

static void test_least_conn_weighted(void **state)
{
    static const unsigned weights[] = {3, 1};
    struct balancer *b = make_balancer(2, weights, CONFIG_BALANCE_LEAST_CONN);
    unsigned active[2] = {2, 1}; /* 2/3 < 1/1 */

    (void)state;
    assert_int_equal(balancer_pick(b, 0, active), 0);
    active[0] = 4; /* 4/3 > 1/1 */
    assert_int_equal(balancer_pick(b, 0, active), 1);
    active[0] = 3; /* 3/3 == 1/1: a tie, which the weights break 3:1 */
    unsigned got[2] = {0, 0};
    for (int i = 0; i < 40; i++)
        got[balancer_pick(b, 0, active)]++;
    assert_int_equal(got[0], 30);
    assert_int_equal(got[1], 10);
    balancer_free(b);
}

/* Nothing in flight: the weights decide (3:1 here), as in round robin, and
 * a weight lowered by slow start is honoured. */
static void test_least_conn_ties_follow_weights(void **state)
{
    static const unsigned weights[2] = {3, 1};
    struct balancer *b = make_balancer(2, weights, CONFIG_BALANCE_LEAST_CONN);
    unsigned active[2] = {0, 0};
    unsigned got[2] = {0, 0};

    (void)state;
    for (int i = 0; i < 400; i++)
        got[balancer_pick(b, 0, active)]++;
    assert_int_equal(got[0], 300);
    assert_int_equal(got[1], 100);
    balancer_set_weight(b, 0, 1); /* ramping up from almost nothing */
    balancer_set_weight(b, 1, 19);
    got[0] = got[1] = 0;
    for (int i = 0; i < 200; i++)
        got[balancer_pick(b, 0, active)]++;
    assert_int_equal(got[0], 10);
    assert_int_equal(got[1], 190);
    balancer_free(b);
}

static void test_least_conn_ties_rotate(void **state)
{
    struct balancer *b = make_balancer(4, NULL, CONFIG_BALANCE_LEAST_CONN);
    unsigned active[4] = {0, 0, 0, 0};
    unsigned got[4] = {0, 0, 0, 0};

    (void)state;
    for (int i = 0; i < 40; i++)
        assert_int_equal(balancer_pick(b, 0, active), i % 4);
    /* ties among some servers only rotate among those */
    active[1] = 5;
    for (int i = 0; i < 30; i++) {
        int s = balancer_pick(b, 0, active);
        assert_int_not_equal(s, 1);
        got[s]++;
    }
    assert_int_equal(got[0], 10);
    assert_int_equal(got[1], 0);
    assert_int_equal(got[2], 10);
    assert_int_equal(got[3], 10);
    balancer_free(b);
}

/* As a proxy uses it: each pick adds one active request. */
static void test_least_conn_fills_evenly(void **state)
{
    static const unsigned weights[] = {1, 2, 1};
    struct balancer *b = make_balancer(3, weights, CONFIG_BALANCE_LEAST_CONN);
    unsigned active[3] = {0, 0, 0};

    (void)state;
    for (int i = 0; i < 400; i++) {
        int s = balancer_pick(b, 0, active);
        assert_in_range(s, 0, 2);
        active[s]++;
    }
    assert_int_equal(active[0], 100);
    assert_int_equal(active[1], 200);
    assert_int_equal(active[2], 100);
    balancer_free(b);
}

/* Without an active count least_conn falls back to round robin. */
static void test_least_conn_without_counts(void **state)
{
    struct balancer *b = make_balancer(2, NULL, CONFIG_BALANCE_LEAST_CONN);

    (void)state;
    for (int i = 0; i < 10; i++)
        assert_int_equal(balancer_pick(b, 0, NULL), i % 2);
    balancer_free(b);
}

int main(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_equal_weights_alternate),
        cmocka_unit_test(test_equal_weights_exact_halves),
        cmocka_unit_test(test_smooth_5_1_1),
        cmocka_unit_test(test_no_burst),
        cmocka_unit_test(test_single_server),
        cmocka_unit_test(test_skip_mask),
        cmocka_unit_test(test_skip_mask_weighted),
        cmocka_unit_test(test_all_64_servers),
        cmocka_unit_test(test_least_conn_lowest),
        cmocka_unit_test(test_least_conn_weighted),
        cmocka_unit_test(test_least_conn_ties_rotate),
        cmocka_unit_test(test_least_conn_ties_follow_weights),
        cmocka_unit_test(test_least_conn_fills_evenly),
        cmocka_unit_test(test_least_conn_without_counts),
    };

    return cmocka_run_group_tests_name("balancer", tests, NULL, NULL);
}
