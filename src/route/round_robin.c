/*
 * round_robin.c - rotation over the current candidates, weighted.
 *
 * Each pick takes the next ticket of a shared atomic counter. With equal
 * weights, ticket mod (number of candidates) picks the node: a strict
 * rotation. The rotation is over the candidates of this pick, so when a node
 * leaves or joins, or a retry excludes the node already tried, the others
 * keep equal shares instead of the next node in line taking the missing
 * node's share. Retries rotate on a separate ticket, so they do not shift the
 * rotation of first attempts.
 *
 * With unequal weights (or nodes in slow start), the ticket is turned into a
 * point of a low-discrepancy sequence (the golden-ratio sequence) and the
 * point selects a node by cumulative weight: shares follow the weights closely
 * after a few picks and the nodes interleave, with no lock and no per-node
 * counters.
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

struct rr_state {
    atomic_uint_fast64_t ticket;        /* first attempts */
    atomic_uint_fast64_t retry_ticket;  /* retries */
};

static void *rr_init(struct lx_pool *pool)
{
    return lx_calloc(1, sizeof(struct rr_state));
}

static int rr_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct rr_state *st = state;
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c);
    uint64_t t;
    bool equal = true;
    double total = 0, x;

    if (n == 0)
        return -1;
    /* Retries rotate on a ticket of their own: taking a first-attempt ticket
     * would shift that rotation by one per retry (with one node answering
     * 429, every first attempt would land on it). */
    t = atomic_fetch_add_explicit(ctx->n_tried > 0 ? &st->retry_ticket : &st->ticket, 1,
                                  memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        total += c[i].weight;
        if (c[i].weight != c[0].weight)
            equal = false;
    }
    if (equal)
        return c[t % n].idx;
    /* frac(t * phi): evenly spread points in [0, 1). */
    x = (double)(t * 0x9E3779B97F4A7C15ULL >> 11) * (1.0 / 9007199254740992.0) * total;
    for (size_t i = 0; i < n; i++) {
        if (x < c[i].weight)
            return c[i].idx;
        x -= c[i].weight;
    }
    return c[n - 1].idx;
}

static void rr_destroy(void *state)
{
    free(state);
}

const struct lx_strategy_ops lx_strategy_round_robin = {
    .init = rr_init,
    .pick = rr_pick,
    .destroy = rr_destroy,
};
