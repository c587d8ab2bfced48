/*
 * random.c - a weighted random candidate.
 */
#include "router.h"

static int random_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c);

    return n ? lx_router_weighted(c, n, ctx->rand) : -1;
}

const struct lx_strategy_ops lx_strategy_random = {
    .pick = random_pick,
};
