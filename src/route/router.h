/*
 * router.h - routing strategies as const ops tables, picked per pool.
 *
 * A strategy is one .c file exporting a `const struct lx_strategy` and one
 * line in router.c's registry. pick() runs on worker threads concurrently for
 * the same pool: strategy state must be atomics or otherwise thread-safe.
 */
#ifndef LX_ROUTER_H
#define LX_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "../http/body_scan.h"
#include "../nodes/node.h"

#define LX_PICK_MAX_TRIED 16

/* What a pick may look at. */
struct lx_pick {
    struct lx_node *tried[LX_PICK_MAX_TRIED]; /* nodes already tried for this request */
    size_t n_tried;
    const struct lx_body_scan *scan;          /* the request body's fields, may be NULL */
    const char *affinity;                     /* X-Session-Id or "user", NULL = none */
    size_t affinity_len;
    uint64_t rand;                            /* a fresh random number for this pick */
    uint64_t now_ms;                          /* lx_now_ms() at the pick */
};

/* A candidate node and its effective (slow-start scaled) weight. */
struct lx_cand {
    int idx;        /* index into pool->nodes */
    double weight;  /* > 0 */
};

#define LX_ROUTE_MAX_CANDIDATES 1024

struct lx_strategy {
    const char *name;
    /* Per-pool state; may return NULL when the strategy keeps none. */
    void *(*init)(struct lx_pool *pool);
    /* An index into pool->nodes of an eligible candidate, or -1 if none. */
    int (*pick)(struct lx_pool *pool, void *state, const struct lx_pick *ctx);
    void (*destroy)(void *state);
};

/* The strategy named <name> (canonical name), NULL if none is built in. */
const struct lx_strategy *lx_strategy_find(const char *name);
void *lx_strategy_init(const struct lx_strategy *s, struct lx_pool *pool);
void lx_strategy_destroy(const struct lx_strategy *s, void *state);

/* Fills <out> (up to LX_ROUTE_MAX_CANDIDATES) with the pool's candidates;
 * returns how many. */
size_t lx_router_candidates(struct lx_pool *pool, const struct lx_pick *ctx, struct lx_cand *out);
/* A weighted random choice among <n> candidates; returns a pool index. */
int lx_router_weighted(const struct lx_cand *c, size_t n, uint64_t rand);
/* Load of a node for comparisons: in-flight requests per unit of effective weight. */
double lx_router_load(const struct lx_pool *pool, const struct lx_cand *c);
/* cache_aware tuning (process-wide, set once at start): a node takes its keys
 * while its in-flight count <= factor * pool average + 1; keys are made of the
 * first <prefix_bytes> of the prompt. */
void lx_route_set_cache_policy(double load_factor, size_t prefix_bytes);
/* A 64-bit hash that is the same on every machine and every run (FNV-1a
 * followed by a final mix), for rendezvous hashing. */
uint64_t lx_route_hash(const void *data, size_t len, uint64_t seed);

/* A candidate: eligible (healthy, not drained, below max_concurrency) and not
 * yet tried for this request. */
bool lx_router_is_candidate(const struct lx_pick *ctx, const struct lx_node *node);
/* Whether <pool> has any candidate for <ctx>. */
bool lx_router_is_any_candidate(struct lx_pool *pool, const struct lx_pick *ctx);
/* Picks a node of <pool>; returns a new reference, or NULL when no node is a
 * candidate. */
struct lx_node *lx_router_pick(struct lx_pool *pool, const struct lx_pick *ctx);

extern const struct lx_strategy lx_strategy_round_robin;
extern const struct lx_strategy lx_strategy_least_loaded;
extern const struct lx_strategy lx_strategy_latency_based;
extern const struct lx_strategy lx_strategy_random;
extern const struct lx_strategy lx_strategy_power_of_two;
extern const struct lx_strategy lx_strategy_real_time_metrics;
extern const struct lx_strategy lx_strategy_cache_aware;

#endif /* LX_ROUTER_H */
