/*
 * real_time_metrics.c - the power of two choices on each node's scraped vLLM
 * /metrics (the second seed's weighted choice, made robust and sharp).
 *
 * Two distinct candidates are drawn by weight; the higher score wins. With a
 * fresh scrape (newer than METRICS_STALE_FACTOR scrape intervals):
 *     score = max(0.02, 1 - kv_cache_usage) / (1 + waiting) / (1 + in_flight / weight)
 * The in-flight term is this gateway's own count, which moves between
 * scrapes, so a node that looked empty at the last scrape does not take
 * everything until the next one. Without a usable scrape (never, failed,
 * garbage, stale) the node scores 1 / (1 + in_flight / weight).
 *
 * Why two choices and not a draw weighted by the score: a weighted draw
 * spreads requests by the score's ratio, so a node three times slower,
 * with in-flight counts near the others', still got 14 % of the requests
 * instead of least-connections' 10 % (bench/routing (a), 0.94x HAProxy's
 * requests/s); the better of two follows the score as closely as
 * least-connections follows load, and two gateways reading the same scrape
 * still do not herd onto one node.
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

/* A scrape counts as fresh for this many of its pool's scrape intervals. */
#define METRICS_STALE_FACTOR 3

static double rtm_score(const struct lx_pool *pool, const struct lx_cand *c, uint64_t now_ms)
{
    const struct lx_node *node = pool->nodes[c->idx];
    uint64_t stale_after_ms = (uint64_t)(pool->metrics_update_interval_s * 1000 *
                                         METRICS_STALE_FACTOR);
    uint64_t at = atomic_load_explicit(&node->scraped_at_ms, memory_order_relaxed);
    double score = 1.0 / (1.0 + lx_router_load(pool, c));

    if (at && at + stale_after_ms >= now_ms) {
        double kv = atomic_load_explicit(&node->scraped_kv_milli, memory_order_relaxed) / 1000.0;
        double waiting = atomic_load_explicit(&node->scraped_waiting, memory_order_relaxed);

        score *= LX_MAX(0.02, 1.0 - kv) / (1.0 + waiting);
    }
    return score;
}

/* The higher the score, the lower the cost. */
static double rtm_cost(const struct lx_pool *pool, const struct lx_cand *c, uint64_t now_ms)
{
    return -rtm_score(pool, c, now_ms);
}

static int rtm_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    return lx_router_two_choices(pool, ctx, rtm_cost);
}

const struct lx_strategy_ops lx_strategy_real_time_metrics = {
    .pick = rtm_pick,
};
