/*
 * round_robin.c - weighted round robin over a shared atomic ticket.
 *
 * Each pick takes the next ticket; the ticket modulo the pool's total weight
 * lands on a node in proportion to its weight. When that node is not a
 * candidate (unhealthy, drained, full, already tried) the pick walks forward
 * to the next candidate, so the rotation continues where it was instead of
 * restarting.
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

struct rr_state {
    atomic_uint_fast64_t ticket;
    uint64_t total_weight;
};

static void *rr_init(struct lx_pool *pool)
{
    struct rr_state *st = lx_calloc(1, sizeof(*st));

    for (size_t i = 0; i < pool->n_nodes; i++)
        st->total_weight += (uint64_t)pool->nodes[i]->weight;
    return st;
}

static int rr_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct rr_state *st = state;
    uint64_t t = atomic_fetch_add_explicit(&st->ticket, 1, memory_order_relaxed);
    uint64_t slot = st->total_weight ? t % st->total_weight : 0;
    size_t start = 0;

    for (size_t i = 0; i < pool->n_nodes; i++) {
        uint64_t w = (uint64_t)pool->nodes[i]->weight;

        if (slot < w) {
            start = i;
            break;
        }
        slot -= w;
    }
    for (size_t k = 0; k < pool->n_nodes; k++) {
        size_t i = (start + k) % pool->n_nodes;

        if (lx_router_is_candidate(ctx, pool->nodes[i]))
            return (int)i;
    }
    return -1;
}

static void rr_destroy(void *state)
{
    free(state);
}

const struct lx_strategy lx_strategy_round_robin = {
    .name = "round_robin",
    .init = rr_init,
    .pick = rr_pick,
    .destroy = rr_destroy,
};
