/*
 * power_of_two.c - two distinct random candidates (weighted), the less loaded
 * wins ("the power of two choices": nearly least-loaded balance without
 * herding every gateway worker onto the same emptiest node).
 */
#include "router.h"

static int p2_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), ia = 0, ib;
    int a, b;
    uint64_t r2 = ctx->rand * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;

    if (n == 0)
        return -1;
    if (n == 1)
        return c[0].idx;
    a = lx_router_weighted(c, n, ctx->rand);
    for (size_t i = 0; i < n; i++)
        if (c[i].idx == a)
            ia = i;
    /* Draw the second among the others. */
    c[ia] = c[n - 1];
    b = lx_router_weighted(c, n - 1, r2);
    for (ib = 0; ib < n - 1 && c[ib].idx != b; ib++)
        ;
    {
        struct lx_cand ca = {a, lx_node_effective_weight(pool->nodes[a], ctx->now_ms)};
        double la = lx_router_load(pool, &ca), lb = lx_router_load(pool, &c[ib]);

        if (lb < la)
            return b;
        if (la < lb)
            return a;
        return (ctx->rand >> 7) & 1 ? a : b;
    }
}

const struct lx_strategy_ops lx_strategy_power_of_two = {
    .pick = p2_pick,
};
