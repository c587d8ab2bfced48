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
    uint64_t rand;                            /* a fresh random number for this pick */
};

/* What a finished request tells its strategy. */
struct lx_pick_result {
    bool ok;              /* the node answered (any status it did not fail with) */
    uint64_t ttfb_us;     /* time to the first response byte */
};

struct lx_strategy {
    const char *name;
    /* Per-pool state; may return NULL when the strategy keeps none. */
    void *(*init)(struct lx_pool *pool);
    /* An index into pool->nodes of an eligible candidate, or -1 if none. */
    int (*pick)(struct lx_pool *pool, void *state, const struct lx_pick *ctx);
    /* Optional: a request sent to <node> has finished. */
    void (*on_done)(struct lx_pool *pool, void *state, struct lx_node *node,
                    const struct lx_pick_result *res);
    void (*destroy)(void *state);
};

/* The strategy named <name> (canonical name), NULL if none is built in. */
const struct lx_strategy *lx_strategy_find(const char *name);
void *lx_strategy_init(const struct lx_strategy *s, struct lx_pool *pool);
void lx_strategy_destroy(const struct lx_strategy *s, void *state);

/* A candidate: eligible (healthy, not drained, below max_concurrency) and not
 * yet tried for this request. */
bool lx_router_is_candidate(const struct lx_pick *ctx, const struct lx_node *node);
/* Picks a node of <pool>; returns a new reference, or NULL when no node is a
 * candidate. */
struct lx_node *lx_router_pick(struct lx_pool *pool, const struct lx_pick *ctx);
void lx_router_done(struct lx_pool *pool, struct lx_node *node, const struct lx_pick_result *res);

extern const struct lx_strategy lx_strategy_round_robin;

#endif /* LX_ROUTER_H */
