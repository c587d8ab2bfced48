/*
 * least_loaded.c - fewest requests in flight (from this gateway, all workers)
 * per unit of weight.
 *
 * Ties are broken by rotation among the tied nodes (a shared ticket), so
 * sequential traffic (every node at 0 in flight) spreads evenly over all of
 * them instead of always landing on the first one.
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

struct ll_state {
    atomic_uint_fast64_t ticket;        /* first attempts */
    atomic_uint_fast64_t retry_ticket;  /* retries: they must not shift the rotation */
};

static void *ll_init(struct lx_pool *pool)
{
    return lx_calloc(1, sizeof(struct ll_state));
}

static int ll_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct ll_state *st = state;
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), n_tied = 0;
    double best_load = 0;

    if (n == 0)
        return -1;
    /* Keep the candidates tied at the lowest load, then rotate among them. */
    for (size_t k = 0; k < n; k++) {
        double load = lx_router_load(pool, &c[k]);

        if (n_tied == 0 || load < best_load) {
            best_load = load;
            n_tied = 0;
        }
        if (load == best_load)
            c[n_tied++] = c[k];
    }
    return c[atomic_fetch_add_explicit(ctx->n_tried ? &st->retry_ticket : &st->ticket, 1,
                                       memory_order_relaxed) %
             n_tied]
        .idx;
}

static void ll_destroy(void *state)
{
    free(state);
}

const struct lx_strategy_ops lx_strategy_least_loaded = {
    .init = ll_init,
    .pick = ll_pick,
    .destroy = ll_destroy,
};
