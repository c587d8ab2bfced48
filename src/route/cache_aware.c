/*
 * cache_aware.c - each request goes to the node where it costs least: the
 * prompt blocks the node would have to compute (those it likely does not
 * hold in its prefix cache, see prefix.h) plus the work already on it.
 *
 *   cost(node) = missing blocks + LOAD_WEIGHT x (blocks in flight on the
 *                node + DECODE_BLOCKS per request in flight) / weight
 *
 * in blocks of LX_PREFIX_BLOCK_BYTES; "blocks in flight" is the prompt size
 * of the requests the node is serving (their KV footprint and decode work),
 * as NVIDIA Dynamo's KV router weighs new prefill against active decode
 * blocks. The lowest cost wins; equal costs go to the highest rendezvous
 * score of the prompt's first block (or the affinity hint) and the node's
 * URL, so a prompt that no node holds, on idle nodes, lands on the same node
 * from every llmux replica, and a node joining or leaving moves only its
 * share. The affinity hint, X-Session-Id or else the body's "user", is
 * hashed ahead of the prompt, so sessions do not share blocks, and it is
 * the tie-break instead of the first block (which holds the start of the
 * prompt too): a session's prompts that no node holds go together.
 *
 * Bounded load: a node whose in-flight requests per unit of weight exceed
 * CACHE_AWARE_LOAD_FACTOR x the pool's average (+1) is chosen only when
 * every candidate is.
 *
 * The chosen node is recorded as holding the prompt's blocks (a node holds
 * what it was sent).
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "../core/lx.h"
#include "prefix.h"
#include "router.h"

#define DECODE_BLOCKS 8.0 /* a request's decode work, in blocks of prefill */

static double load_factor = 1.5;
static double load_weight = 0.25;
static size_t max_blocks = LX_PREFIX_MAX_BLOCKS;

void lx_route_set_cache_policy(double factor, double weight, size_t prefix_bytes)
{
    load_factor = factor;
    load_weight = weight;
    max_blocks = LX_MAX(LX_MIN(prefix_bytes / LX_PREFIX_BLOCK_BYTES, LX_PREFIX_MAX_BLOCKS), 1);
}

/* Rendezvous score of <anchor> for <node> (logarithmic method, weighted). */
static double rendezvous(uint64_t anchor, const struct lx_node *node, double weight)
{
    uint64_t h = lx_route_hash(node->url, strlen(node->url), anchor);
    /* u in (0, 1): never 0 or 1, so the log is finite and negative. */
    double u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);

    return -weight / log(u);
}

static int ca_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    static _Thread_local uint64_t blocks[LX_PREFIX_MAX_BLOCKS];
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), nb;
    double total = 0, total_w = 0, best_cost = INFINITY, best_score = 0;
    bool best_over = true;
    const char *hint = ctx->affinity;
    size_t hint_len = hint ? ctx->affinity_len : 0;
    uint64_t anchor;
    int best = -1;

    if (n == 0)
        return -1;
    if (!hint_len && ctx->scan && ctx->scan->user.len) {
        hint = ctx->scan->user.p;
        hint_len = ctx->scan->user.len;
    }
    nb = lx_prefix_blocks(ctx->scan, hint, hint_len, blocks, max_blocks);
    anchor = hint_len ? lx_route_hash(hint, hint_len, 0) : nb ? blocks[0] : ctx->rand;
    for (size_t i = 0; i < n; i++) {
        total += atomic_load_explicit(&pool->nodes[c[i].idx]->in_flight, memory_order_relaxed);
        total_w += c[i].weight;
    }
    for (size_t i = 0; i < n; i++) {
        struct lx_node *node = pool->nodes[c[i].idx];
        double in_flight = atomic_load_explicit(&node->in_flight, memory_order_relaxed);
        double bytes = (double)atomic_load_explicit(&node->in_flight_bytes, memory_order_relaxed);
        double busy = (bytes / LX_PREFIX_BLOCK_BYTES + DECODE_BLOCKS * in_flight) / c[i].weight;
        double cost = (double)(nb - lx_prefix_match(node, blocks, nb)) + load_weight * busy;
        bool over = in_flight / c[i].weight > load_factor * (total / total_w) + 1.0 / c[i].weight;
        double score = 0;

        /* Within the load bound beats over it; then the lower cost; then the
         * rendezvous score. */
        if (over > best_over || (over == best_over && cost > best_cost))
            continue;
        score = rendezvous(anchor, node, c[i].weight);
        if (over == best_over && cost == best_cost && score <= best_score)
            continue;
        best = c[i].idx;
        best_cost = cost;
        best_score = score;
        best_over = over;
    }
    lx_prefix_insert(pool->nodes[best], blocks, nb);
    return best;
}

const struct lx_strategy_ops lx_strategy_cache_aware = {
    .pick = ca_pick,
};
