/*
 * router.c - the strategy table, attaching strategies to a registry's pools,
 * and the pick entry point; see router.h.
 */
#include "router.h"

#include <stdio.h>
#include <string.h>

#include "../core/lx.h"

static const struct lx_strategy strategies[] = {
#define ENTRY(name) {#name, &lx_strategy_##name},
    LX_STRATEGIES(ENTRY)
#undef ENTRY
};

const struct lx_strategy *lx_strategy_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(strategies); i++)
        if (strcmp(strategies[i].name, name) == 0)
            return &strategies[i];
    return NULL;
}

void *lx_strategy_init(const struct lx_strategy *s, struct lx_pool *pool)
{
    return s->ops->init ? s->ops->init(pool) : NULL;
}

void lx_strategy_destroy(const struct lx_strategy *s, void *state)
{
    if (s->ops->destroy)
        s->ops->destroy(state);
}

int lx_router_attach(struct lx_registry *reg, char *err, size_t errlen)
{
    for (size_t i = 0; i < reg->n_pools; i++) {
        struct lx_pool *p = &reg->pools[i];
        const struct lx_strategy *s = p->strategy_name ? lx_strategy_find(p->strategy_name) : NULL;

        LX_ASSERT(!p->strategy);
        if (!s) {
            snprintf(err, errlen, "models.%s.strategy: unknown strategy \"%s\"", p->model,
                     p->strategy_name ? p->strategy_name : "");
            return LX_EINVAL;
        }
        p->strategy = s;
        p->strategy_state = lx_strategy_init(s, p);
        p->strategy_free = s->ops->destroy;
    }
    return 0;
}

struct lx_registry *lx_router_registry_new(const struct lx_conf *conf, struct lx_registry *prev,
                                           char *err, size_t errlen)
{
    struct lx_registry *reg = lx_registry_build(conf, prev);

    if (lx_router_attach(reg, err, errlen) < 0) {
        lx_registry_unref(reg);
        return NULL;
    }
    return reg;
}

bool lx_router_is_candidate(const struct lx_pick *ctx, const struct lx_node *node)
{
    for (size_t i = 0; i < ctx->n_tried; i++)
        if (ctx->tried[i] == node)
            return false;
    return lx_node_is_eligible(node);
}

bool lx_router_is_any_candidate(struct lx_pool *pool, const struct lx_pick *ctx)
{
    for (size_t i = 0; i < pool->n_nodes; i++)
        if (lx_router_is_candidate(ctx, pool->nodes[i]))
            return true;
    return false;
}

struct lx_node *lx_router_pick(struct lx_pool *pool, const struct lx_pick *ctx)
{
    int i;

    if (pool->n_nodes == 0)
        return NULL;
    i = pool->strategy->ops->pick(pool, pool->strategy_state, ctx);
    if (i < 0 || (size_t)i >= pool->n_nodes)
        return NULL;
    return lx_node_ref(pool->nodes[i]);
}

size_t lx_router_candidates(struct lx_pool *pool, const struct lx_pick *ctx, struct lx_cand *out)
{
    size_t n = 0;

    for (size_t i = 0; i < pool->n_nodes && n < LX_ROUTE_MAX_CANDIDATES; i++) {
        if (!lx_router_is_candidate(ctx, pool->nodes[i]))
            continue;
        out[n].idx = (int)i;
        out[n].weight = lx_node_effective_weight(pool->nodes[i], ctx->now_ms);
        n++;
    }
    return n;
}

int lx_router_weighted(const struct lx_cand *c, size_t n, uint64_t rand)
{
    double total = 0, x;

    for (size_t i = 0; i < n; i++)
        total += c[i].weight;
    /* 53 random bits make a uniform double in [0, 1). */
    x = (double)(rand >> 11) * (1.0 / 9007199254740992.0) * total;
    for (size_t i = 0; i < n; i++) {
        if (x < c[i].weight)
            return c[i].idx;
        x -= c[i].weight;
    }
    return n ? c[n - 1].idx : -1;
}

/* Two distinct candidates drawn by weight: their positions in <c>
 * (reordered), n >= 2. */
static void router_two(struct lx_cand *c, size_t n, uint64_t rand, size_t *a, size_t *b)
{
    uint64_t r2 = rand * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    int first = lx_router_weighted(c, n, rand), second;
    struct lx_cand t;

    for (size_t i = 0; i < n; i++) {
        if (c[i].idx == first) {
            t = c[i];
            c[i] = c[n - 1];
            c[n - 1] = t;
            break;
        }
    }
    /* The second is drawn among the others. */
    second = lx_router_weighted(c, n - 1, r2);
    *a = n - 1;
    for (*b = 0; *b < n - 2 && c[*b].idx != second; (*b)++)
        ;
}

int lx_router_two_choices(struct lx_pool *pool, const struct lx_pick *ctx,
                          double (*cost)(const struct lx_pool *, const struct lx_cand *,
                                         uint64_t now_ms))
{
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];
    size_t n = lx_router_candidates(pool, ctx, c), a, b;
    double ca, cb;

    if (n == 0)
        return -1;
    if (n == 1)
        return c[0].idx;
    router_two(c, n, ctx->rand, &a, &b);
    ca = cost(pool, &c[a], ctx->now_ms);
    cb = cost(pool, &c[b], ctx->now_ms);
    if (ca == cb)
        return (ctx->rand >> 7) & 1 ? c[a].idx : c[b].idx;
    return ca < cb ? c[a].idx : c[b].idx;
}


double lx_router_load(const struct lx_pool *pool, const struct lx_cand *c)
{
    int inflight = atomic_load_explicit(&pool->nodes[c->idx]->in_flight, memory_order_relaxed);

    return (double)inflight / c->weight;
}

uint64_t lx_route_hash(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    /* splitmix64 finaliser: FNV alone mixes the last bytes poorly. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}
