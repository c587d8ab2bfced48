/*
 * node.c - registry snapshots and refcounted nodes; see node.h.
 */
#include "node.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "../core/log.h"
#include "../core/lx.h"

static atomic_uint next_node_id;

static uint64_t wall_ms(void);

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
        n->auth_header = lx_malloc(strlen(s->api_key) + 8);
        sprintf(n->auth_header, "Bearer %s", s->api_key);
    }
    n->weight = s->weight > 0 ? s->weight : 1;
    n->max_concurrency = s->max_concurrency;
    atomic_init(&n->healthy, true);
    atomic_init(&n->drained, false);
    atomic_init(&n->state_since_ms, wall_ms());
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
    if (node->prefix_cache)
        node->prefix_cache->free(node->prefix_cache);
    free(node->name);
    free(node->url);
    free(node->host);
    free(node->host_header);
    free(node->base_path);
    free(node->auth_header);
    free(node);
}

/* Process-wide health policy, set once before workers start. */
static uint64_t slow_start_ms = 10000;
static uint64_t eject_base_ms = 5000;
static uint64_t eject_max_ms = 60000;
static int eject_threshold = 3;

void lx_node_set_policy(uint64_t slow_start, uint64_t eject_base, uint64_t eject_max,
                        int threshold)
{
    slow_start_ms = slow_start;
    eject_base_ms = eject_base;
    eject_max_ms = eject_max;
    eject_threshold = threshold > 0 ? threshold : 1;
}

uint64_t lx_now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *const node_state_names[LX_NODE__N] = {
    [LX_NODE_HEALTHY] = "healthy",     [LX_NODE_SLOW_START] = "slow_start",
    [LX_NODE_EJECTED] = "ejected",     [LX_NODE_UNHEALTHY] = "unhealthy",
    [LX_NODE_DRAINED] = "drained",
};

enum lx_node_state lx_node_state(const struct lx_node *node, uint64_t now_ms)
{
    uint64_t until = atomic_load_explicit(&node->ejected_until_ms, memory_order_relaxed);

    if (!atomic_load_explicit(&node->healthy, memory_order_relaxed))
        return LX_NODE_UNHEALTHY;
    if (until > now_ms)
        return LX_NODE_EJECTED;
    /* Past its cooldown an ejected node (ejections is reset by its next
     * success) stays out while the active probe says it is still down:
     * the cooldown is a guess, a failed probe is evidence. */
    if (until && atomic_load_explicit(&node->ejections, memory_order_relaxed) > 0 &&
        atomic_load_explicit(&node->probe_failures, memory_order_relaxed) > 0)
        return LX_NODE_EJECTED;
    if (atomic_load_explicit(&node->drained, memory_order_relaxed))
        return LX_NODE_DRAINED;
    if (atomic_load_explicit(&node->up_since_ms, memory_order_relaxed) &&
        lx_node_effective_weight(node, now_ms) < node->weight)
        return LX_NODE_SLOW_START;
    return LX_NODE_HEALTHY;
}

const char *lx_node_state_name(enum lx_node_state state)
{
    return (unsigned)state < LX_NODE__N ? node_state_names[state] : "unknown";
}

bool lx_node_state_is_eligible(enum lx_node_state state)
{
    return state == LX_NODE_HEALTHY || state == LX_NODE_SLOW_START;
}

bool lx_node_is_up(const struct lx_node *node, uint64_t now_ms)
{
    return lx_node_state_is_eligible(lx_node_state(node, now_ms));
}

enum lx_pool_state lx_pool_state(const struct lx_pool *pool, uint64_t now_ms,
                                 enum lx_node_state *states, size_t *n_up)
{
    size_t up = 0;

    for (size_t i = 0; i < pool->n_nodes; i++) {
        enum lx_node_state st = lx_node_state(pool->nodes[i], now_ms);

        if (states)
            states[i] = st;
        up += lx_node_state_is_eligible(st);
    }
    if (n_up)
        *n_up = up;
    if (up == 0)
        return LX_POOL_DOWN;
    return up == pool->n_nodes ? LX_POOL_OK : LX_POOL_DEGRADED;
}

const char *lx_pool_state_name(enum lx_pool_state state)
{
    return state == LX_POOL_OK ? "ok" : state == LX_POOL_DEGRADED ? "degraded" : "down";
}

double lx_node_effective_weight(const struct lx_node *node, uint64_t now_ms)
{
    uint64_t since = atomic_load_explicit(&node->up_since_ms, memory_order_relaxed);
    double ramp = 1.0;

    if (slow_start_ms && since && now_ms < since + slow_start_ms)
        ramp = now_ms <= since ? 0.0 : (double)(now_ms - since) / (double)slow_start_ms;
    if (ramp < 0.05)
        ramp = 0.05;
    return node->weight * ramp;
}

void lx_ewma_update(atomic_uint_fast64_t *v, uint64_t sample)
{
    uint64_t old = atomic_load_explicit(v, memory_order_relaxed), next;

    /* Alpha 0.3: reacts within a few requests, smooths single outliers. */
    do {
        next = old ? (old * 7 + sample * 3) / 10 : sample;
        if (next == 0)
            next = 1;
    } while (!atomic_compare_exchange_weak_explicit(v, &old, next, memory_order_relaxed,
                                                    memory_order_relaxed));
}

void lx_node_report_success(struct lx_node *node, uint64_t ttfb_us)
{
    uint64_t now = lx_now_ms();

    lx_ewma_update(&node->ewma_ttfb_us, ttfb_us);
    atomic_store_explicit(&node->ttfb_sample_ms, now, memory_order_relaxed);
    atomic_store_explicit(&node->last_success_ms, now, memory_order_relaxed);
    atomic_store_explicit(&node->consecutive_failures, 0, memory_order_relaxed);
    if (atomic_exchange_explicit(&node->ejections, 0, memory_order_relaxed) > 0)
        atomic_store_explicit(&node->last_error, NULL, memory_order_relaxed);
}

void lx_node_report_failure(struct lx_node *node, const char *why)
{
    uint64_t old = atomic_load_explicit(&node->ewma_ttfb_us, memory_order_relaxed), next;
    uint64_t now = lx_now_ms();
    int fails;

    /* A failing node loses its good average: double it, at least 100 ms. */
    do {
        next = old ? old * 2 : 100000;
        if (next < 100000)
            next = 100000;
        if (next > 60000000)
            next = 60000000;
    } while (!atomic_compare_exchange_weak_explicit(&node->ewma_ttfb_us, &old, next,
                                                    memory_order_relaxed, memory_order_relaxed));
    atomic_store_explicit(&node->ttfb_sample_ms, now, memory_order_relaxed);
    atomic_fetch_add_explicit(&node->failures_total, 1, memory_order_relaxed);
    atomic_store_explicit(&node->last_error, why, memory_order_relaxed);
    fails = atomic_fetch_add_explicit(&node->consecutive_failures, 1, memory_order_relaxed) + 1;
    if (eject_base_ms && fails >= eject_threshold && atomic_load(&node->ejected_until_ms) <= now) {
        int n = atomic_fetch_add_explicit(&node->ejections, 1, memory_order_relaxed);
        uint64_t cool = eject_base_ms << (n < 16 ? n : 16);

        if (cool > eject_max_ms)
            cool = eject_max_ms;
        atomic_store_explicit(&node->ejected_until_ms, now + cool, memory_order_relaxed);
        atomic_store_explicit(&node->up_since_ms, now + cool, memory_order_relaxed);
        atomic_store_explicit(&node->state_since_ms, wall_ms(), memory_order_relaxed);
        lx_warn("node %s ejected for %llu ms after %d failures in a row (%s)", node->name,
                (unsigned long long)cool, fails, why);
    }
}

void lx_node_set_healthy(struct lx_node *node, bool healthy, const char *why)
{
    bool was = atomic_exchange_explicit(&node->healthy, healthy, memory_order_relaxed);

    if (was == healthy) {
        if (!healthy)
            atomic_store_explicit(&node->last_error, why, memory_order_relaxed);
        return;
    }
    atomic_store_explicit(&node->state_since_ms, wall_ms(), memory_order_relaxed);
    if (healthy) {
        atomic_store_explicit(&node->up_since_ms, lx_now_ms(), memory_order_relaxed);
        atomic_store_explicit(&node->ejected_until_ms, 0, memory_order_relaxed);
        atomic_store_explicit(&node->consecutive_failures, 0, memory_order_relaxed);
        atomic_store_explicit(&node->ejections, 0, memory_order_relaxed);
        atomic_store_explicit(&node->probe_failures, 0, memory_order_relaxed);
        atomic_store_explicit(&node->last_error, NULL, memory_order_relaxed);
        lx_info("node %s is healthy again", node->name);
    } else {
        atomic_store_explicit(&node->last_error, why, memory_order_relaxed);
        /* Down long enough for a probe to fail: whatever comes back may
         * be a restarted engine with an empty prefix cache. */
        atomic_fetch_add_explicit(&node->cache_gen, 1, memory_order_relaxed);
        lx_warn("node %s marked unhealthy: %s", node->name, why);
    }
}

void lx_node_note_probe(struct lx_node *node, int fail_run)
{
    int was = atomic_exchange_explicit(&node->probe_failures, fail_run, memory_order_relaxed);
    uint64_t now, until;

    if (was == 0 || fail_run > 0 ||
        atomic_load_explicit(&node->ejections, memory_order_relaxed) == 0)
        return;
    /* The first good probe ends an ejection that failed probes held past
     * its cooldown: the node slow-starts from now, not from the cooldown's
     * end (its ramp would be over already). */
    now = lx_now_ms();
    until = atomic_load_explicit(&node->ejected_until_ms, memory_order_relaxed);
    if (until && until <= now) {
        atomic_store_explicit(&node->up_since_ms, now, memory_order_relaxed);
        atomic_store_explicit(&node->state_since_ms, wall_ms(), memory_order_relaxed);
        lx_info("node %s answers its health check again after its ejection", node->name);
    }
}

bool lx_node_is_eligible(const struct lx_node *node)
{
    if (!lx_node_is_up(node, lx_now_ms()))
        return false;
    return node->max_concurrency == 0 ||
           atomic_load_explicit(&node->in_flight, memory_order_relaxed) < node->max_concurrency;
}

static void pool_deinit(struct lx_pool *p)
{
    if (p->strategy_free && p->strategy_state)
        p->strategy_free(p->strategy_state);
    free(p->strategy_name);
    for (size_t i = 0; i < p->n_nodes; i++)
        lx_node_unref(p->nodes[i]);
    free(p->nodes);
    lx_waitq_deinit(&p->parked);
    free(p->model);
    free(p->upstream_model);
}

/* <prev>'s pool named exactly <model>, or NULL. */
static struct lx_pool *prev_pool(struct lx_registry *prev, const char *model)
{
    for (size_t i = 0; prev && i < prev->n_pools; i++)
        if (strcmp(prev->pools[i].model, model) == 0)
            return &prev->pools[i];
    return NULL;
}

/* The node of <prev>'s pool <model> configured exactly as <s>, or NULL. */
static struct lx_node *node_reuse(struct lx_registry *prev, const char *model,
                                  const struct lx_conf_server *s)
{
    struct lx_pool *p = prev_pool(prev, model);

    if (!p)
        return NULL;
    for (size_t k = 0; k < p->n_nodes; k++) {
        struct lx_node *n = p->nodes[k];

        if (strcmp(n->url, s->url) == 0 && strcmp(n->name, s->name ? s->name : s->url) == 0 &&
            n->weight == (s->weight > 0 ? s->weight : 1) &&
            n->max_concurrency == s->max_concurrency &&
            (!n->auth_header == !s->api_key) &&
            (!s->api_key || strcmp(n->auth_header + 7, s->api_key) == 0))
            return lx_node_ref(n);
    }
    return NULL;
}

struct lx_registry *lx_registry_build(const struct lx_conf *conf, struct lx_registry *prev)
{
    struct lx_registry *reg = lx_calloc(1, sizeof(*reg));

    atomic_init(&reg->refs, 1);
    reg->pools = lx_calloc(conf->n_pools, sizeof(*reg->pools));
    for (size_t i = 0; i < conf->n_pools; i++) {
        const struct lx_conf_pool *cp = &conf->pools[i];
        struct lx_pool *p = &reg->pools[i];
        struct lx_pool *old = prev_pool(prev, cp->model);

        reg->n_pools++;
        p->model = lx_strdup(cp->model);
        lx_waitq_init(&p->parked);
        p->upstream_model = cp->upstream_model ? lx_strdup(cp->upstream_model) : NULL;
        p->nodes = lx_calloc(cp->n_servers, sizeof(*p->nodes));
        p->metrics_update_interval_s = cp->metrics_update_interval_s > 0
                                           ? cp->metrics_update_interval_s
                                           : conf->metrics_update_interval_s;
        p->hedge_after_s = cp->has_hedge_after ? cp->hedge_after_s : conf->hedge_after_s;
        lx_budget_init(&p->retry_budget, conf->retry_budget_percent, conf->retry_budget_min_per_s);
        if (old)
            lx_budget_carry(&p->retry_budget, &old->retry_budget);
        for (size_t k = 0; k < cp->n_servers; k++) {
            struct lx_node *n = node_reuse(prev, cp->model, &cp->servers[k]);

            p->nodes[p->n_nodes++] = n ? n : node_new(&cp->servers[k]);
        }
        if (cp->strategy || conf->strategy)
            p->strategy_name = lx_strdup(cp->strategy ? cp->strategy : conf->strategy);
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
