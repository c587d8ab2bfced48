/*
 * node.h - the node registry: pools of upstream nodes built from the config.
 *
 * A registry is an immutable snapshot of pools and nodes, shared by every
 * worker: its shape never changes once built and given its strategies
 * (src/route's lx_router_registry_new() does both). Per-node load and
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

#include "../admit/admit.h"
#include "../conf/conf.h"
#include "../http/upstream.h"
#include "budget.h"
#include "failure.h"

struct lx_strategy;

/* Per-node state another layer hangs on a node; freed with it. */
struct lx_node_cache {
    void (*free)(struct lx_node_cache *c);
};

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

    /* Load, updated by workers (relaxed atomics). */
    atomic_int in_flight;                 /* requests being served now */
    atomic_uint_fast64_t requests_total;  /* requests sent to this node */
    atomic_uint_fast64_t failures_total;  /* connect errors, timeouts, 5xx */
    atomic_uint_fast64_t ewma_ttfb_us;    /* EWMA of time to first byte, 0 = no sample */
    atomic_uint_fast64_t ttfb_sample_ms;  /* lx_now_ms() of the last sample */
    atomic_uint_fast64_t last_success_ms; /* lx_now_ms() of the last good answer, 0 = none */
    atomic_uint_fast64_t ewma_ttft_us;    /* EWMA of time to first streamed byte, 0 = none */
    atomic_uint_fast64_t errors[LX_FAIL__N]; /* by kind (failure.h) */

    /* What the node's prefix cache likely holds (src/route/prefix.c): set
     * once by route/, freed with the node. cache_gen changes when that
     * cache is lost (the node went down, or restarted). */
    _Atomic(struct lx_node_cache *) prefix_cache;
    atomic_uint cache_gen;

    /* Health. Active probes set `healthy`; proxied failures eject the node
     * for a cooldown that doubles while it keeps failing. */
    atomic_bool healthy;                  /* last probe verdict */
    atomic_bool drained;                  /* admin drain: no new requests */
    atomic_int consecutive_failures;      /* proxied failures in a row */
    atomic_int probe_failures;            /* failed active probes in a row (below the
                                             threshold that marks it unhealthy) */
    atomic_int ejections;                 /* ejections in a row (cooldown exponent) */
    atomic_uint_fast64_t ejected_until_ms;/* lx_now_ms() before which it gets no traffic */
    atomic_uint_fast64_t up_since_ms;     /* back in service since (slow start) */
    atomic_uint_fast64_t state_since_ms;  /* wall-clock ms of the last health change */
    _Atomic(const char *) last_error;     /* static string: why it is down, or NULL */

    /* Scraped from the node's vLLM /metrics (real_time_metrics). */
    atomic_int scraped_waiting;           /* vllm:num_requests_waiting, summed over engines */
    atomic_int scraped_running;           /* vllm:num_requests_running, summed */
    atomic_int scraped_kv_milli;          /* KV-cache usage 0..1000, averaged over engines */
    atomic_uint_fast64_t scraped_at_ms;   /* lx_now_ms() of the last good scrape, 0 = never */
    atomic_uint_fast64_t scraped_cache_tokens; /* vllm:cache_config_info num_gpu_blocks x
                                                  block_size, 0 = unknown */
    atomic_uint_fast64_t scraped_prefix_queries; /* vllm:prefix_cache_queries_total (restarts) */
    atomic_uint_fast64_t scraped_prefix_hits;    /* vllm:prefix_cache_hits_total (restarts) */
    atomic_bool scraped_has_prefix_queries;      /* scraped_prefix_queries read at least once */
    atomic_bool scraped_has_prefix_hits;         /* scraped_prefix_hits read at least once */
};

struct lx_pool {
    char *model;                 /* client-facing model name, "*" = any */
    char *upstream_model;        /* NULL = forward the client's model */
    char *strategy_name;         /* canonical strategy name (src/conf/strategies.h) */
    /* Set by src/route's lx_router_attach(); nodes/ only frees the state. */
    const struct lx_strategy *strategy;  /* route's entry for strategy_name, NULL until then */
    void *strategy_state;                /* per-pool state, may be NULL */
    void (*strategy_free)(void *state);  /* frees strategy_state; NULL = nothing to free */
    struct lx_node **nodes;      /* n_nodes references */
    size_t n_nodes;
    struct lx_waitq parked;      /* requests waiting for a node below max_concurrency */
    double metrics_update_interval_s; /* scrape period of this pool's nodes */
    double hedge_after_s;        /* seconds without a first byte before a hedge, 0 = off:
                                    the pool's "hedge_after_seconds", else HEDGE_AFTER_SECONDS */
    /* Retries, hedges and resumes of this pool's requests (budget.h):
     * RETRY_BUDGET_PERCENT and RETRY_BUDGET_MIN_PER_SECOND, shared by every
     * worker; the window carries over to the next snapshot's pool of the
     * same model. */
    struct lx_budget retry_budget;
    atomic_uint_fast64_t requests_total;  /* answered, any status */
    atomic_uint_fast64_t errors_total;    /* answered with a status >= 500 */
    atomic_uint_fast64_t prompt_tokens, completion_tokens;
};

struct lx_registry {
    atomic_int refs;
    struct lx_pool *pools;
    size_t n_pools;
};

/* Builds a registry from <conf>, each pool knowing its strategy by name
 * only (src/route's lx_router_attach() does the rest); returns a new
 * reference. Nodes of <prev> (may be NULL) whose pool, URL, name, weight,
 * max_concurrency and api_key are unchanged are carried over with their
 * health and load state; a pool of the same model in <prev> hands on its
 * retry budget's window. */
struct lx_registry *lx_registry_build(const struct lx_conf *conf, struct lx_registry *prev);
struct lx_registry *lx_registry_ref(struct lx_registry *reg);
void lx_registry_unref(struct lx_registry *reg);
/* The pool for <model> (exact match first, then "*"); NULL if none. */
struct lx_pool *lx_registry_find(struct lx_registry *reg, const char *model, size_t len);
/* The highest node id handed out so far, plus one (sizes per-worker tables). */
uint32_t lx_node_id_limit(void);

struct lx_node *lx_node_ref(struct lx_node *node);
void lx_node_unref(struct lx_node *node);
/*
 * A node's state: the one verdict /health, /stats (and the status page built
 * on it), the admin API, the metrics and routing all read. The first that
 * applies, in this order:
 *
 *   unhealthy   active probes failed HEALTH_FAILURE_THRESHOLD times in a row
 *   ejected     cooling down after proxied failures (passive ejection); also
 *               after the cooldown while the last active probe failed, until
 *               a probe succeeds (or enough fail to make it unhealthy)
 *   drained     the admin API drained it
 *   slow_start  back from unhealthy or ejected, its weight still ramping up
 *   healthy     none of the above
 *
 * Only healthy and slow_start nodes are eligible (candidates for new
 * requests, counted as up everywhere); max_concurrency is load, not state.
 */
enum lx_node_state {
    LX_NODE_HEALTHY,
    LX_NODE_SLOW_START,
    LX_NODE_EJECTED,
    LX_NODE_UNHEALTHY,
    LX_NODE_DRAINED,
    LX_NODE__N
};

/* A pool's state by its eligible nodes: every node eligible (ok), some
 * (degraded), none (down: its requests fail with 503, and so does GET
 * /health). */
enum lx_pool_state {
    LX_POOL_OK,
    LX_POOL_DEGRADED,
    LX_POOL_DOWN,
};

/* <node>'s state at <now_ms> (lx_now_ms()); reads its atomics, any thread. */
enum lx_node_state lx_node_state(const struct lx_node *node, uint64_t now_ms);
/* "healthy", "slow_start", "ejected", "unhealthy", "drained" (static). */
const char *lx_node_state_name(enum lx_node_state state);
/* Healthy or slow_start: the node takes new requests. */
bool lx_node_state_is_eligible(enum lx_node_state state);
/* lx_node_state_is_eligible(lx_node_state(node, now_ms)): capacity aside. */
bool lx_node_is_up(const struct lx_node *node, uint64_t now_ms);
/* Up (above) and below max_concurrency: a candidate for a request now. */
bool lx_node_is_eligible(const struct lx_node *node);
/* <pool>'s state at <now_ms>. <states> (may be NULL; pool->n_nodes
 * entries) gets each node's state, the ones the verdict was made of;
 * <n_up> (may be NULL) the number of eligible nodes. */
enum lx_pool_state lx_pool_state(const struct lx_pool *pool, uint64_t now_ms,
                                 enum lx_node_state *states, size_t *n_up);
/* "ok", "degraded", "down" (static). */
const char *lx_pool_state_name(enum lx_pool_state state);

/* Where the upstream client connects for <node> (strings borrowed from it). */
static inline struct lx_upstream_target lx_node_target(const struct lx_node *node)
{
    return (struct lx_upstream_target){node->id, node->name, node->host, node->port};
}

/* Monotonic milliseconds (for all *_ms timestamps above). */
uint64_t lx_now_ms(void);
/* Slow-start settings (process-wide, set once at start). */
void lx_node_set_policy(uint64_t slow_start_ms, uint64_t eject_base_ms, uint64_t eject_max_ms,
                        int eject_threshold);
/* The node's weight scaled by its slow-start ramp: weight * min(1, up_for/slow_start),
 * never below 5% of the weight. */
double lx_node_effective_weight(const struct lx_node *node, uint64_t now_ms);
/* Folds <sample> into the EWMA at <v> (alpha 0.3; 0 = no sample yet). */
void lx_ewma_update(atomic_uint_fast64_t *v, uint64_t sample);
/* A proxied request to <node> succeeded with this time to first byte. */
void lx_node_report_success(struct lx_node *node, uint64_t ttfb_us);
/* A proxied request failed (connect, timeout, 5xx): <why> is a static string.
 * After eject_threshold failures in a row the node is ejected for a cooldown. */
void lx_node_report_failure(struct lx_node *node, const char *why);
/* Active probe verdicts: the node is marked (un)healthy by the thresholds. */
void lx_node_set_healthy(struct lx_node *node, bool healthy, const char *why);
/* Every active probe's result, below the thresholds: <fail_run> failed
 * probes in a row (0 after a success). Holds an ejected node out past its
 * cooldown while its last probe failed (see enum lx_node_state); the first
 * good probe after such a hold starts its slow start. */
void lx_node_note_probe(struct lx_node *node, int fail_run);

#endif /* LX_NODE_H */
