/*
 * balancer: which clone gets the next request.
 *
 * Smooth weighted round robin (equal weights alternate strictly) and
 * least_conn (fewest active requests per unit of weight, round robin among
 * ties). One struct balancer per worker, used only by that worker's thread,
 * so picking takes no lock. Servers to avoid (down, draining, already tried
 * for this request) come in as a bit mask. No I/O.
 */
#ifndef CLONEGATE_BALANCER_H
#define CLONEGATE_BALANCER_H

#include <stdint.h>

#include "config.h"

struct balancer;

/* Builds a balancer over <cfg>'s servers (order, weights and policy are
 * copied). Returns NULL when out of memory; the caller frees it with
 * balancer_free(). */
struct balancer *balancer_new(const struct config *cfg);

void balancer_free(struct balancer *b);

/*
 * Picks a server index in 0..server_count-1, never one whose bit is set in
 * <skip> (bit i = server i). <active> holds each server's requests in
 * flight (read for least_conn only; may be NULL for round robin). Returns
 * -1 when every server is skipped.
 */
int balancer_pick(struct balancer *b, uint64_t skip, const unsigned *active);

/* Sets server <i>'s weight (slow start ramps it); <weight> >= 1. */
void balancer_set_weight(struct balancer *b, unsigned i, unsigned weight);

#endif /* CLONEGATE_BALANCER_H */
