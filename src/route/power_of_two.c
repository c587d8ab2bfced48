/*
 * power_of_two.c - two distinct random candidates (weighted), the less loaded
 * wins ("the power of two choices": nearly least-loaded balance without
 * herding every gateway worker onto the same emptiest node).
 */
#include "router.h"

static double p2_cost(const struct lx_pool *pool, const struct lx_cand *c, uint64_t now_ms)
{
    return lx_router_load(pool, c);
}

static int p2_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    return lx_router_two_choices(pool, ctx, p2_cost);
}

const struct lx_strategy_ops lx_strategy_power_of_two = {
    .pick = p2_pick,
};
