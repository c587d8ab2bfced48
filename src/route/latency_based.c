/*
 * latency_based.c - lowest recent time to first byte (EWMA per node).
 *
 * Exploration, so that no node is starved of the samples that would redeem
 * it: a candidate with no sample, or whose last sample is older than
 * LATENCY_STALE_MS, is picked first when it has nothing in flight (one probe
 * at a time, so a new node is not flooded); otherwise one pick in
 * LATENCY_EXPLORE goes to a random candidate. The score multiplies the EWMA by
 * (1 + in-flight / weight), so the fastest node is preferred without being
 * sent everything when it is already busy. A node that fails has its EWMA
 * doubled (lx_node_report_failure), so it loses its good average at once.
 */
#include <stdatomic.h>

#include "../core/lx.h"
#include "router.h"

#define LATENCY_STALE_MS 30000
#define LATENCY_EXPLORE 20 /* one pick in 20 explores */

static int latency_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), start;
    int best = -1;
    double best_score = 0, mean;

    if (n == 0)
        return -1;
    start = (size_t)(ctx->rand % n);
    for (size_t k = 0; k < n; k++) {
        const struct lx_node *node = pool->nodes[c[(start + k) % n].idx];
        uint64_t ewma = atomic_load_explicit(&node->ewma_ttfb_us, memory_order_relaxed);
        uint64_t at = atomic_load_explicit(&node->ttfb_sample_ms, memory_order_relaxed);

        /* One probe at a time: a new node is not flooded before its first
         * answer says how fast it is. */
        if ((ewma == 0 || at + LATENCY_STALE_MS < ctx->now_ms) &&
            atomic_load_explicit(&node->in_flight, memory_order_relaxed) == 0)
            return c[(start + k) % n].idx;
    }
    if ((ctx->rand >> 32) % LATENCY_EXPLORE == 0)
        return c[start].idx;
    /* A node still waiting for its first sample counts as the pool's mean,
     * not as 0: otherwise it would take every request until it answers. */
    {
        double sum = 0;
        size_t n_sampled = 0;

        for (size_t i = 0; i < n; i++) {
            uint64_t e = atomic_load_explicit(&pool->nodes[c[i].idx]->ewma_ttfb_us,
                                              memory_order_relaxed);

            if (e) {
                sum += (double)e;
                n_sampled++;
            }
        }
        mean = n_sampled ? sum / (double)n_sampled : 1.0;
    }
    for (size_t i = 0; i < n; i++) {
        const struct lx_node *node = pool->nodes[c[i].idx];
        double ewma = (double)atomic_load_explicit(&node->ewma_ttfb_us, memory_order_relaxed);
        double score = (ewma ? ewma : mean) * (1.0 + lx_router_load(pool, &c[i]));

        if (best < 0 || score < best_score) {
            best = c[i].idx;
            best_score = score;
        }
    }
    return best;
}

const struct lx_strategy_ops lx_strategy_latency_based = {
    .pick = latency_pick,
};
