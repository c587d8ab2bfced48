/*
 * node.h - the node registry: pools of upstream nodes built from the config.
 *
 * A registry is an immutable snapshot of pools and nodes, shared by every
 * worker: its shape never changes after lx_registry_new(). Per-node load and
 * health live in atomics inside struct lx_node, so workers update them without
 * locks. Nodes are refcounted so that a later snapshot (admin API, reload) can
 * replace the registry while requests still hold the nodes they picked.
 *
 * Threading: every function here may be called from any thread.
 */
#ifndef LX_NODE_H
#define LX_NODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../conf/conf.h"

struct lx_strategy;

struct lx_node {
    atomic_int refs;
    uint32_t id;               /* process-unique, indexes per-worker tables */
    char *name;                /* X-Routed-Node value */
    char *url;
    char *host;                /* connect address */
    int port;
    char *host_header;         /* "host:port" as sent in Host */
    char *base_path;           /* prefix for forwarded paths, "" = none */
    char *auth_header;         /* "Bearer <api_key>", NULL = none */
    int weight;                /* >= 1 */
    int max_concurrency;       /* 0 = unlimited */

    /* Load and health, updated by workers (relaxed atomics). */
    atomic_int in_flight;                 /* requests being served now */
    atomic_uint_fast64_t requests_total;  /* requests sent to this node */
    atomic_uint_fast64_t failures_total;  /* connect errors, timeouts, 5xx */
    atomic_bool healthy;                  /* eligible for traffic */
    atomic_bool drained;                  /* admin drain: no new requests */
};

struct lx_pool {
    char *model;                 /* client-facing model name, "*" = any */
    char *upstream_model;        /* NULL = forward the client's model */
    const struct lx_strategy *strategy;
    void *strategy_state;        /* owned by the strategy */
    struct lx_node **nodes;      /* n_nodes references */
    size_t n_nodes;
};

struct lx_registry {
    atomic_int refs;
    struct lx_pool *pools;
    size_t n_pools;
};

/* Builds a registry from <conf>; returns a new reference, or NULL with <err>
 * filled (unknown strategy). */
struct lx_registry *lx_registry_new(const struct lx_conf *conf, char *err, size_t errlen);
struct lx_registry *lx_registry_ref(struct lx_registry *reg);
void lx_registry_unref(struct lx_registry *reg);
/* The pool for <model> (exact match first, then "*"); NULL if none. */
struct lx_pool *lx_registry_find(struct lx_registry *reg, const char *model, size_t len);
/* The highest node id handed out so far, plus one (sizes per-worker tables). */
uint32_t lx_node_id_limit(void);

struct lx_node *lx_node_ref(struct lx_node *node);
void lx_node_unref(struct lx_node *node);
/* Healthy, not drained and below max_concurrency. */
bool lx_node_is_eligible(const struct lx_node *node);

#endif /* LX_NODE_H */
