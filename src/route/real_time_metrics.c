/*
 * real_time_metrics.c - weighted random choice from each node's scraped vLLM
 * /metrics (the second seed's strategy, made robust).
 *
 * With a fresh scrape (newer than METRICS_STALE_FACTOR scrape intervals):
 *     w = weight * max(0.02, 1 - kv_cache_usage) / (1 + waiting) / (1 + in_flight / 4)
 * The in-flight term is this gateway's own count, which moves between scrapes,
 * so a node that looked empty at the last scrape does not take everything
 * until the next one. Without a usable scrape (never, failed, garbage, stale)
 * the node falls back to gateway-side counts: w = weight / (1 + in_flight).
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

/* A scrape counts as fresh for this many of its pool's scrape intervals. */
#define METRICS_STALE_FACTOR 3

static int rtm_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c);
    uint64_t stale_after_ms = (uint64_t)(pool->metrics_update_interval_s * 1000 *
                                         METRICS_STALE_FACTOR);

    for (size_t i = 0; i < n; i++) {
        const struct lx_node *node = pool->nodes[c[i].idx];
        uint64_t at = atomic_load_explicit(&node->scraped_at_ms, memory_order_relaxed);
        double inflight = atomic_load_explicit(&node->in_flight, memory_order_relaxed);

        if (at && at + stale_after_ms >= ctx->now_ms) {
            double kv = atomic_load_explicit(&node->scraped_kv_milli, memory_order_relaxed) / 1000.0;
            double waiting = atomic_load_explicit(&node->scraped_waiting, memory_order_relaxed);

            c[i].weight *= LX_MAX(0.02, 1.0 - kv) / (1.0 + waiting) / (1.0 + inflight / 4.0);
        } else {
            c[i].weight /= 1.0 + inflight;
        }
    }
    return n ? lx_router_weighted(c, n, ctx->rand) : -1;
}

const struct lx_strategy_ops lx_strategy_real_time_metrics = {
    .pick = rtm_pick,
};
