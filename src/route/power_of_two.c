/*
 * power_of_two.c - two distinct random candidates (weighted), the less loaded
 * wins ("the power of two choices": nearly least-loaded balance without
 * herding every gateway worker onto the same emptiest node).
 */
#include "router.h"

static int p2_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), a, b;
    double la, lb;

    if (n == 0)
        return -1;
    if (n == 1)
        return c[0].idx;
    lx_router_two(c, n, ctx->rand, &a, &b);
    la = lx_router_load(pool, &c[a]);
    lb = lx_router_load(pool, &c[b]);
    if (la == lb)
        return (ctx->rand >> 7) & 1 ? c[a].idx : c[b].idx;
    return la < lb ? c[a].idx : c[b].idx;
}

const struct lx_strategy_ops lx_strategy_power_of_two = {
    .pick = p2_pick,
};
