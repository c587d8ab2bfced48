/*
 * router.c - the strategy registry and the pick entry point; see router.h.
 */
#include "router.h"

#include "../core/lx.h"

#include <string.h>

static const struct lx_strategy *const strategies[] = {
    &lx_strategy_round_robin,
};

const struct lx_strategy *lx_strategy_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(strategies); i++)
        if (strcmp(strategies[i]->name, name) == 0)
            return strategies[i];
    return NULL;
}

void *lx_strategy_init(const struct lx_strategy *s, struct lx_pool *pool)
{
    return s->init ? s->init(pool) : NULL;
}

void lx_strategy_destroy(const struct lx_strategy *s, void *state)
{
    if (s->destroy)
        s->destroy(state);
}

bool lx_router_is_candidate(const struct lx_pick *ctx, const struct lx_node *node)
{
    for (size_t i = 0; i < ctx->n_tried; i++)
        if (ctx->tried[i] == node)
            return false;
    return lx_node_is_eligible(node);
}

struct lx_node *lx_router_pick(struct lx_pool *pool, const struct lx_pick *ctx)
{
    int i;

    if (pool->n_nodes == 0)
        return NULL;
    i = pool->strategy->pick(pool, pool->strategy_state, ctx);
    if (i < 0 || (size_t)i >= pool->n_nodes)
        return NULL;
    return lx_node_ref(pool->nodes[i]);
}

void lx_router_done(struct lx_pool *pool, struct lx_node *node, const struct lx_pick_result *res)
{
    if (pool->strategy->on_done)
        pool->strategy->on_done(pool, pool->strategy_state, node, res);
}
