/*
 * router.h - routing strategies as const ops tables, picked per pool.
 *
 * A strategy is one .c file exporting `const struct lx_strategy_ops
 * lx_strategy_<name>` and one line in the list of src/conf/strategies.h.
 * pick() runs on worker threads concurrently for the same pool: strategy
 * state must be atomics or otherwise thread-safe.
 *
 * The node registry (src/nodes) knows a pool's strategy by name only;
 * lx_router_attach() gives each pool its strategy and per-pool state, and
 * leaves the pool a function to free that state with, so a registry is freed
 * without nodes/ calling route/.
 */
#ifndef LX_ROUTER_H
#define LX_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include "../conf/strategies.h"
#include "../http/body_scan.h"
#include "../nodes/node.h"

#define LX_PICK_MAX_TRIED 16

/* What a pick may look at. */
struct lx_pick {
    struct lx_node *tried[LX_PICK_MAX_TRIED]; /* nodes already tried for this request */
    size_t n_tried;
    const struct lx_body_scan *scan;          /* the request body's fields, may be NULL */
    const char *affinity;                     /* X-Session-Id, NULL = none (cache_aware
                                                 falls back on the body's "user") */
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

struct lx_strategy_ops {
    /* Per-pool state; may return NULL when the strategy keeps none. */
    void *(*init)(struct lx_pool *pool);
    /* An index into pool->nodes of an eligible candidate, or -1 if none. */
    int (*pick)(struct lx_pool *pool, void *state, const struct lx_pick *ctx);
    void (*destroy)(void *state);
};

/* A built-in strategy: its canonical name, from the list, and its ops. */
struct lx_strategy {
    const char *name;
    const struct lx_strategy_ops *ops;
};

/* The strategy named <name> (canonical name), NULL if none is built in. */
const struct lx_strategy *lx_strategy_find(const char *name);
void *lx_strategy_init(const struct lx_strategy *s, struct lx_pool *pool);
void lx_strategy_destroy(const struct lx_strategy *s, void *state);

/*
 * Gives every pool of <reg> the strategy its strategy_name names, with that
 * strategy's per-pool state (freed with the registry). Call once, before the
 * registry is shared. Returns 0, or LX_EINVAL with <err> naming the pool when
 * a strategy is unknown; <reg> must then be unreffed (what was attached is
 * freed with it).
 */
int lx_router_attach(struct lx_registry *reg, char *err, size_t errlen);
/* lx_registry_build() then lx_router_attach(): a registry ready to route, as
 * a new reference, or NULL with <err> filled (unknown strategy). */
struct lx_registry *lx_router_registry_new(const struct lx_conf *conf, struct lx_registry *prev,
                                           char *err, size_t errlen);

/* Fills <out> (up to LX_ROUTE_MAX_CANDIDATES) with the pool's candidates;
 * returns how many. */
size_t lx_router_candidates(struct lx_pool *pool, const struct lx_pick *ctx, struct lx_cand *out);
/* A weighted random choice among <n> candidates; returns a pool index. */
int lx_router_weighted(const struct lx_cand *c, size_t n, uint64_t rand);
/* The power of two choices over the pool's candidates: two drawn by weight,
 * the lower <cost> wins, a tie by the pick's random bits; -1 when none. */
int lx_router_two_choices(struct lx_pool *pool, const struct lx_pick *ctx,
                          double (*cost)(const struct lx_pool *, const struct lx_cand *,
                                         uint64_t now_ms));
/* Load of a node for comparisons: in-flight requests per unit of effective weight. */
double lx_router_load(const struct lx_pool *pool, const struct lx_cand *c);
/* cache_aware tuning (process-wide, set once at start): the load bound
 * (in-flight requests <= factor x the pool's average + 1), the weight of
 * load against missing prompt blocks, and how many bytes of a prompt are
 * indexed (cache_aware.c). */
void lx_route_set_cache_policy(double load_factor, double load_weight, size_t prefix_bytes);
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

#define LX_STRATEGY_DECLARE(name) extern const struct lx_strategy_ops lx_strategy_##name;
LX_STRATEGIES(LX_STRATEGY_DECLARE)
#undef LX_STRATEGY_DECLARE

#endif /* LX_ROUTER_H */
