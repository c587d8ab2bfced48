/*
 * cache_aware.c - each request goes to the node where it costs least: the
 * prompt blocks the node would have to compute because it likely does not
 * hold them in its prefix cache (prefix.h), plus the requests already on it.
 *
 *   cost(node) = missing blocks + LOAD_WEIGHT x requests in flight / weight
 *
 * in blocks of LX_PREFIX_BLOCK_BYTES; LOAD_WEIGHT (CACHE_AWARE_LOAD_WEIGHT)
 * is what one request in flight is worth in blocks of prefill. Missing
 * blocks are counted in full, except a prefix that two candidates hold: it
 * is popular (a shared system prompt), will be cached wherever traffic goes,
 * and counts POPULAR_SHARE per block, so the first node to get a shared
 * prompt does not keep every request that starts with it.
 *
 * The lowest cost wins; equal costs go to the highest rendezvous score of
 * the affinity hint (X-Session-Id, else the body's "user") or else the
 * prompt's first block, and the node's URL: a prompt that no node holds, on
 * idle nodes, lands on the same node from every llmux replica, and a node
 * joining or leaving moves only its share. The node that last served a
 * session counts as holding the whole prompt and SESSION_BLOCKS more: a
 * session stays on its node, even with short prompts, until the node is
 * loaded by SESSION_BLOCKS / LOAD_WEIGHT more requests than another, or
 * crosses the load bound. Without a hint, a node that alone holds more of
 * the prompt than any other counts as the session's node: it has the
 * conversation's earlier turns.
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

#define SESSION_SEED 0x5e5510cULL /* the index entry of a session, apart from blocks */
#define SESSION_BLOCKS 64         /* what a session's node is worth beyond its prompt */
#define POPULAR_SHARE 0.25 /* what a node pays for a prefix two others hold */

static double load_factor = 2;
static double load_weight = 4;
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
    size_t held[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), nb, full, first = 0, second = 0;
    bool in_session = false;
    double total = 0, total_w = 0, best_cost = INFINITY, best_score = 0;
    const char *hint = ctx->affinity;
    size_t hint_len = hint ? ctx->affinity_len : 0;
    bool best_over = true;
    uint64_t anchor, session = 0;
    int best = -1;

    if (n == 0)
        return -1;
    if (!hint_len && ctx->scan && ctx->scan->user.len) {
        hint = ctx->scan->user.p;
        hint_len = ctx->scan->user.len;
    }
    nb = lx_prefix_blocks(ctx->scan, blocks, max_blocks);
    if (hint_len)
        session = lx_route_hash(hint, hint_len, SESSION_SEED);
    anchor = hint_len ? lx_route_hash(hint, hint_len, 0) : nb ? blocks[0] : ctx->rand;
    /* What each candidate holds, and the second longest hold: a prefix two
     * nodes hold is popular (a shared system prompt) and will be cached
     * wherever traffic goes, so a node that lacks it pays only a part of
     * it. Without this, the first node to get a shared prompt would keep
     * every request that starts with it. */
    for (size_t i = 0; i < n; i++) {
        struct lx_node *node = pool->nodes[c[i].idx];

        total += atomic_load_explicit(&node->in_flight, memory_order_relaxed);
        total_w += c[i].weight;
        /* The node that served the session holds its history, whatever
         * the index kept of it, and SESSION_BLOCKS more. */
        if (session && lx_prefix_match(node, &session, 1)) {
            held[i] = nb + SESSION_BLOCKS;
            in_session = true;
        } else {
            held[i] = lx_prefix_match(node, blocks, nb);
        }
        if (held[i] > first) {
            second = first;
            first = held[i];
        } else if (held[i] > second) {
            second = held[i];
        }
    }
    /* No hint, but one node alone holds more of the prompt than any
     * other: the conversation's earlier turns went there, and it is the
     * conversation's node as if a session had said so. */
    if (!in_session && first > second) {
        for (size_t i = 0; i < n; i++)
            if (held[i] == first)
                held[i] = nb + SESSION_BLOCKS;
        in_session = true;
    }
    full = nb + (in_session ? SESSION_BLOCKS : 0);
    for (size_t i = 0; i < n; i++) {
        struct lx_node *node = pool->nodes[c[i].idx];
        double in_flight = atomic_load_explicit(&node->in_flight, memory_order_relaxed);
        double missing = (double)(full - LX_MAX(held[i], second)) +
                         POPULAR_SHARE * (double)(second > held[i] ? second - held[i] : 0);
        double cost = missing + load_weight * in_flight / c[i].weight;
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
    if (session)
        lx_prefix_insert(pool->nodes[best], &session, 1);
    return best;
}

const struct lx_strategy_ops lx_strategy_cache_aware = {
    .pick = ca_pick,
};
