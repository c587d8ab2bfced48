/*
 * cache_aware.c - requests that share a prompt prefix go to the same node, so
 * that vLLM's prefix cache hits, within a bound on load.
 *
 * Key: the X-Session-Id header or the body's "user" when present; otherwise
 * the first prefix_bytes of the prompt's raw JSON text ("messages" for chat,
 * "prompt" for completions). Requests with the same system prompt and
 * leading turns share a key.
 *
 * Node: rendezvous (highest random weight) hashing of key and node URL with
 * a hash that is the same on every machine and run, so several llmux replicas
 * in front of the same nodes agree without talking, and a node joining or
 * leaving moves only its own share of keys. Weights follow the logarithmic
 * method (score = -w / ln(u)), with the slow-start ramped weight, so a node
 * coming back takes its keys back gradually.
 *
 * Bounded load: when the chosen node's in-flight requests per unit of weight
 * exceed load_factor times the pool's average (+1 request), the request goes
 * to the least loaded candidate instead.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "../core/lx.h"
#include "router.h"

static double load_factor = 1.5;
static size_t prefix_bytes = 1024;

void lx_route_set_cache_policy(double factor, size_t bytes)
{
    load_factor = factor;
    prefix_bytes = bytes;
}

static bool request_key(const struct lx_pick *ctx, const char **key, size_t *len)
{
    const struct lx_body_scan *s = ctx->scan;

    if (ctx->affinity && ctx->affinity_len) {
        *key = ctx->affinity;
        *len = ctx->affinity_len;
        return true;
    }
    if (!s)
        return false;
    if (s->user.p && s->user.len) {
        *key = s->user.p;
        *len = s->user.len;
        return true;
    }
    if (s->messages.p) {
        *key = s->messages.p;
        *len = LX_MIN(s->messages.len, prefix_bytes);
        return true;
    }
    if (s->prompt.p) {
        *key = s->prompt.p;
        *len = LX_MIN(s->prompt.len, prefix_bytes);
        return true;
    }
    return false;
}

static int ca_pick(struct lx_pool *pool, void *state, const struct lx_pick *ctx)
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c);
    const char *key;
    size_t key_len;
    uint64_t kh;
    int best = -1, least = -1;
    double best_score = -1, least_load = 0, total = 0, total_w = 0, best_load = 0;

    if (n == 0)
        return -1;
    if (!request_key(ctx, &key, &key_len))
        return lx_router_weighted(c, n, ctx->rand);
    kh = lx_route_hash(key, key_len, 0);
    for (size_t i = 0; i < n; i++) {
        const struct lx_node *node = pool->nodes[c[i].idx];
        uint64_t h = lx_route_hash(node->url, strlen(node->url), kh);
        /* u in (0, 1): never 0 or 1, so the log is finite and negative. */
        double u = ((double)(h >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        double score = -c[i].weight / log(u);
        double load = lx_router_load(pool, &c[i]);

        total += atomic_load_explicit(&node->in_flight, memory_order_relaxed);
        total_w += c[i].weight;
        if (score > best_score) {
            best_score = score;
            best = c[i].idx;
            best_load = load;
        }
        if (least < 0 || load < least_load) {
            least = c[i].idx;
            least_load = load;
        }
    }
    /* Loads are per unit of weight, so a heavy node carrying its fair share
     * is not taken for overloaded. */
    if (best_load > load_factor * (total / total_w) + 1.0 / pool->nodes[best]->weight)
        return least;
    return best;
}

const struct lx_strategy_ops lx_strategy_cache_aware = {
    .pick = ca_pick,
};
