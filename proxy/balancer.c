/*
 * balancer: smooth weighted round robin and least_conn.
 *
 * Owns its small array of per-server running weights, allocated once in
 * balancer_new() and freed in balancer_free(). Touched by one worker thread.
 */
#include "balancer.h"

#include <stdlib.h>

struct balancer {
    enum config_balance policy;      /* copied from the config */
    unsigned count;                  /* servers */
    int weight[CONFIG_MAX_SERVERS];  /* configured weight */
    int current[CONFIG_MAX_SERVERS]; /* smooth round robin running weight */
};

struct balancer *balancer_new(const struct config *cfg)
{
    struct balancer *b = calloc(1, sizeof(*b)); /* freed by balancer_free() */
    if (!b)
        return NULL;
    b->policy = cfg->balance;
    b->count = cfg->server_count;
    for (unsigned i = 0; i < b->count; i++)
        b->weight[i] = (int)cfg->servers[i].weight;
    return b;
}

void balancer_free(struct balancer *b)
{
    free(b);
}

static int pick_round_robin(struct balancer *b, uint64_t skip)
{
    int best = -1, total = 0;
    for (unsigned i = 0; i < b->count; i++) {
        if (skip & (UINT64_C(1) << i))
            continue;
        b->current[i] += b->weight[i];
        total += b->weight[i];
        if (best == -1 || b->current[i] > b->current[best])
            best = (int)i;
    }
    if (best != -1)
        b->current[best] -= total;
    return best;
}

/* Whether server <i> carries less (-1), as much (0) or more (1) load per
 * weight than server <j>: active/weight compared without division. */
static int load_cmp(const struct balancer *b, const unsigned *active, unsigned i, unsigned j)
{
    uint64_t li = (uint64_t)active[i] * (uint64_t)b->weight[j];
    uint64_t lj = (uint64_t)active[j] * (uint64_t)b->weight[i];
    return li < lj ? -1 : li > lj;
}

/* The least loaded per weight; among servers tied for it (every one, when
 * nothing is in flight), smooth weighted round robin decides, so weights
 * and slow start hold under light load too. */
static int pick_least_conn(struct balancer *b, uint64_t skip, const unsigned *active)
{
    int best = -1;
    for (unsigned i = 0; i < b->count; i++) {
        if (skip & (UINT64_C(1) << i))
            continue;
        if (best == -1 || load_cmp(b, active, i, (unsigned)best) < 0)
            best = (int)i;
    }
    if (best == -1)
        return -1;
    uint64_t not_least = skip;
    for (unsigned i = 0; i < b->count; i++)
        if (!(skip & (UINT64_C(1) << i)) && load_cmp(b, active, i, (unsigned)best) != 0)
            not_least |= UINT64_C(1) << i;
    return pick_round_robin(b, not_least);
}

void balancer_set_weight(struct balancer *b, unsigned i, unsigned weight)
{
    if (i < b->count)
        b->weight[i] = (int)(weight > 0 ? weight : 1);
}

int balancer_pick(struct balancer *b, uint64_t skip, const unsigned *active)
{
    if (b->policy == CONFIG_BALANCE_LEAST_CONN && active)
        return pick_least_conn(b, skip, active);
    return pick_round_robin(b, skip);
}
