/*
 * node.c - registry snapshots and refcounted nodes; see node.h.
 */
#include "node.h"

#include <stdio.h>
#include <string.h>

#include "../core/lx.h"
#include "../route/router.h"

static atomic_uint next_node_id;

uint32_t lx_node_id_limit(void)
{
    return atomic_load(&next_node_id);
}

static struct lx_node *node_new(const struct lx_conf_server *s)
{
    struct lx_node *n = lx_calloc(1, sizeof(*n));
    char buf[512];

    atomic_init(&n->refs, 1);
    n->id = atomic_fetch_add(&next_node_id, 1);
    n->name = lx_strdup(s->name ? s->name : s->url);
    n->url = lx_strdup(s->url);
    n->host = lx_strdup(s->host);
    n->port = s->port;
    if (strchr(s->host, ':'))
        snprintf(buf, sizeof(buf), "[%s]:%d", s->host, s->port);
    else
        snprintf(buf, sizeof(buf), "%s:%d", s->host, s->port);
    n->host_header = lx_strdup(buf);
    n->base_path = lx_strdup(s->base_path ? s->base_path : "");
    if (s->api_key) {
        snprintf(buf, sizeof(buf), "Bearer %s", s->api_key);
        n->auth_header = lx_strdup(buf);
    }
    n->weight = s->weight > 0 ? s->weight : 1;
    n->max_concurrency = s->max_concurrency;
    atomic_init(&n->healthy, true);
    atomic_init(&n->drained, false);
    return n;
}

struct lx_node *lx_node_ref(struct lx_node *node)
{
    atomic_fetch_add_explicit(&node->refs, 1, memory_order_relaxed);
    return node;
}

void lx_node_unref(struct lx_node *node)
{
    if (!node || atomic_fetch_sub_explicit(&node->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(node->name);
    free(node->url);
    free(node->host);
    free(node->host_header);
    free(node->base_path);
    free(node->auth_header);
    free(node);
}

bool lx_node_is_eligible(const struct lx_node *node)
{
    if (!atomic_load_explicit(&node->healthy, memory_order_relaxed) ||
        atomic_load_explicit(&node->drained, memory_order_relaxed))
        return false;
    return node->max_concurrency == 0 ||
           atomic_load_explicit(&node->in_flight, memory_order_relaxed) < node->max_concurrency;
}

static void pool_deinit(struct lx_pool *p)
{
    if (p->strategy && p->strategy_state)
        lx_strategy_destroy(p->strategy, p->strategy_state);
    for (size_t i = 0; i < p->n_nodes; i++)
        lx_node_unref(p->nodes[i]);
    free(p->nodes);
    free(p->model);
    free(p->upstream_model);
}

struct lx_registry *lx_registry_new(const struct lx_conf *conf, char *err, size_t errlen)
{
    struct lx_registry *reg = lx_calloc(1, sizeof(*reg));

    atomic_init(&reg->refs, 1);
    reg->pools = lx_calloc(conf->n_pools, sizeof(*reg->pools));
    for (size_t i = 0; i < conf->n_pools; i++) {
        const struct lx_conf_pool *cp = &conf->pools[i];
        struct lx_pool *p = &reg->pools[i];

        reg->n_pools++;
        p->model = lx_strdup(cp->model);
        p->upstream_model = cp->upstream_model ? lx_strdup(cp->upstream_model) : NULL;
        p->nodes = lx_calloc(cp->n_servers, sizeof(*p->nodes));
        for (size_t k = 0; k < cp->n_servers; k++)
            p->nodes[p->n_nodes++] = node_new(&cp->servers[k]);
        p->strategy = lx_strategy_find(cp->strategy ? cp->strategy : conf->strategy);
        if (!p->strategy) {
            snprintf(err, errlen, "models.%s.strategy: unknown strategy \"%s\"", cp->model,
                     cp->strategy ? cp->strategy : conf->strategy);
            lx_registry_unref(reg);
            return NULL;
        }
        p->strategy_state = lx_strategy_init(p->strategy, p);
    }
    return reg;
}

struct lx_registry *lx_registry_ref(struct lx_registry *reg)
{
    atomic_fetch_add_explicit(&reg->refs, 1, memory_order_relaxed);
    return reg;
}

void lx_registry_unref(struct lx_registry *reg)
{
    if (!reg || atomic_fetch_sub_explicit(&reg->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < reg->n_pools; i++)
        pool_deinit(&reg->pools[i]);
    free(reg->pools);
    free(reg);
}

struct lx_pool *lx_registry_find(struct lx_registry *reg, const char *model, size_t len)
{
    struct lx_pool *any = NULL;

    for (size_t i = 0; i < reg->n_pools; i++) {
        struct lx_pool *p = &reg->pools[i];

        if (strlen(p->model) == len && memcmp(p->model, model, len) == 0)
            return p;
        if (!any && strcmp(p->model, "*") == 0)
            any = p;
    }
    return any;
}
