/*
 * test_router.c - the routing strategies: for each one, the property it
 * promises (rotation, weight shares, least load, latency preference with
 * exploration, power of two choices, scraped-metrics shares; for cache_aware
 * index hits across repeats and conversation turns weighed against load,
 * bounded load, forgetting a lost cache, the rendezvous tie-break and
 * replicas that agree), that every strategy returns no node when no node is
 * a candidate, and the stable route hash.
 *
 * Pools are built with lx_router_registry_new() from a hand-made struct lx_conf;
 * situations are set up by writing the node atomics directly. Random numbers
 * come from a seeded splitmix64 sequence, so every run makes the same picks:
 * share bounds are wide enough for any reasonable sequence but a test that
 * passes once passes always.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/core/log.h"
#include "../../src/http/body_scan.h"
#include "../../src/nodes/node.h"
#include "../../src/route/prefix.h"
#include "../../src/route/router.h"
#include "unit_util.h"

#define MAX_NODES 8

static const char *const all_strategies[] = {
#define NAME(name) #name,
    LX_STRATEGIES(NAME)
#undef NAME
};

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng;

/* splitmix64: a deterministic stand-in for the gateway's per-pick random. */
static uint64_t next_rand(void)
{
    uint64_t z = ut_mix64(rng);

    rng += 0x9E3779B97F4A7C15ULL;
    return z;
}

/* Registries and memory a test made, released in teardown if a failed
 * assertion jumped over the test's own cleanup (unit_util.h). */
static void reg_free(void *reg)
{
    lx_registry_unref(reg);
}

static struct lx_registry *track_reg(struct lx_registry *reg)
{
    return ut_track(reg, reg_free);
}

static void drop_reg(struct lx_registry *reg)
{
    ut_release(reg);
}

static void *track_mem(void *p)
{
    return ut_track(p, free);
}

static void drop_mem(void *p)
{
    ut_release(p);
}

/* Per-test defaults for the process-wide policies, so tests do not depend
 * on each other's settings. */
static int setup(void **state)
{
    rng = 0x5eed;
    lx_node_set_policy(10000, 5000, 60000, 3);
    lx_route_set_cache_policy(1.5, 4, 1 << 21);
    return 0;
}

static int teardown(void **state)
{
    ut_release_all();
    return 0;
}

/* A registry with one pool "m" of <n> nodes http://10.0.0.<i+1>:8000 named
 * n<i>, with <weights> (NULL = all 1). <urls> may override the URLs. */
static struct lx_registry *make_reg_urls(const char *strategy, size_t n, const int *weights,
                                         const char *const *urls)
{
    struct lx_conf conf;
    struct lx_conf_pool pool;
    struct lx_conf_server servers[MAX_NODES];
    char url[MAX_NODES][64], host[MAX_NODES][32], name[MAX_NODES][32];
    char err[256] = "";
    struct lx_registry *reg;

    assert_true(n <= MAX_NODES);
    memset(&conf, 0, sizeof(conf));
    memset(&pool, 0, sizeof(pool));
    memset(servers, 0, sizeof(servers));
    for (size_t i = 0; i < n; i++) {
        if (urls)
            snprintf(url[i], sizeof(url[i]), "%s", urls[i]);
        else
            snprintf(url[i], sizeof(url[i]), "http://10.0.0.%zu:8000", i + 1);
        snprintf(host[i], sizeof(host[i]), "10.0.0.%zu", i + 1);
        snprintf(name[i], sizeof(name[i]), "n%zu", i);
        servers[i].url = url[i];
        servers[i].name = urls ? NULL : name[i];
        servers[i].host = host[i];
        servers[i].port = 8000;
        servers[i].base_path = "";
        servers[i].weight = weights ? weights[i] : 1;
    }
    pool.model = "m";
    pool.strategy = (char *)strategy;
    pool.servers = servers;
    pool.n_servers = n;
    conf.pools = &pool;
    conf.n_pools = 1;
    conf.strategy = "round_robin";
    conf.metrics_update_interval_s = 10;
    reg = lx_router_registry_new(&conf, NULL, err, sizeof(err));
    assert_non_null(reg);
    track_reg(reg);
    assert_string_equal(err, "");
    assert_int_equal(reg->n_pools, 1);
    assert_int_equal(reg->pools[0].n_nodes, n);
    return reg;
}

static struct lx_registry *make_reg(const char *strategy, size_t n, const int *weights)
{
    return make_reg_urls(strategy, n, weights, NULL);
}

static struct lx_pick pick_ctx(void)
{
    struct lx_pick ctx;

    memset(&ctx, 0, sizeof(ctx));
    ctx.now_ms = lx_now_ms();
    return ctx;
}

/* One pick with a fresh random number; returns the pool index or -1. The
 * reference the router returns is dropped here. */
static int pick(struct lx_pool *pool, struct lx_pick *ctx)
{
    struct lx_node *node;
    int idx = -1;

    ctx->rand = next_rand();
    node = lx_router_pick(pool, ctx);
    if (!node)
        return -1;
    for (size_t i = 0; i < pool->n_nodes; i++)
        if (pool->nodes[i] == node)
            idx = (int)i;
    assert_true(idx >= 0);
    /* The pick returned a new reference: the pool's one plus ours. */
    assert_true(atomic_load(&node->refs) >= 2);
    lx_node_unref(node);
    return idx;
}

/* <picks> picks into counts[pool->n_nodes]. */
static void pick_many(struct lx_pool *pool, struct lx_pick *ctx, int picks, int *counts)
{
    memset(counts, 0, sizeof(int) * pool->n_nodes);
    for (int i = 0; i < picks; i++) {
        int idx = pick(pool, ctx);

        assert_true(idx >= 0);
        counts[idx]++;
    }
}

/* |got - want| <= tol */
static void assert_near(double got, double want, double tol)
{
    if (got < want - tol || got > want + tol)
        fail_msg("got %f, want %f +- %f", got, want, tol);
}

static void set_sample(struct lx_node *n, uint64_t ewma_us, uint64_t at_ms)
{
    atomic_store(&n->ewma_ttfb_us, ewma_us);
    atomic_store(&n->ttfb_sample_ms, at_ms);
}

static void set_scrape(struct lx_node *n, int kv_milli, int waiting, uint64_t at_ms)
{
    atomic_store(&n->scraped_kv_milli, kv_milli);
    atomic_store(&n->scraped_waiting, waiting);
    atomic_store(&n->scraped_at_ms, at_ms);
}

/* A cache_aware pick for the JSON <body> (scanned), with optional affinity. */
static int pick_body(struct lx_pool *pool, const char *body, const char *affinity)
{
    struct lx_body_scan scan;
    struct lx_pick ctx = pick_ctx();
    size_t len = strlen(body);
    char *copy = track_mem(malloc(len));
    int idx;

    memcpy(copy, body, len);
    assert_int_equal(lx_body_scan(copy, len, &scan), LX_SCAN_OK);
    ctx.scan = &scan;
    if (affinity) {
        ctx.affinity = affinity;
        ctx.affinity_len = strlen(affinity);
    }
    idx = pick(pool, &ctx);
    drop_mem(copy);
    return idx;
}

/* A chat body whose messages hold <content>. */
static char *chat_body(const char *content, const char *extra)
{
    size_t n = strlen(content) + (extra ? strlen(extra) : 0) + 128;
    char *b = track_mem(malloc(n));

    snprintf(b, n, "{\"model\":\"m\",%s\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
             extra ? extra : "", content);
    return b;
}

static int pick_chat(struct lx_pool *pool, const char *content, const char *extra,
                     const char *affinity)
{
    char *b = chat_body(content, extra);
    int idx = pick_body(pool, b, affinity);

    drop_mem(b);
    return idx;
}

/* ---- registry of strategies, hash ------------------------------------- */

static void test_strategy_find(void **state)
{
    for (size_t i = 0; i < sizeof(all_strategies) / sizeof(all_strategies[0]); i++) {
        const struct lx_strategy *s = lx_strategy_find(all_strategies[i]);

        assert_non_null(s);
        assert_string_equal(s->name, all_strategies[i]);
        assert_non_null(s->ops->pick);
        /* conf accepts the same names, as they are. */
        assert_string_equal(lx_conf_strategy_canonical(all_strategies[i]), all_strategies[i]);
    }
    assert_ptr_equal(lx_strategy_find("round_robin")->ops, &lx_strategy_round_robin);
    assert_ptr_equal(lx_strategy_find("cache_aware")->ops, &lx_strategy_cache_aware);
    /* Aliases are conf's business: route sees canonical names only. */
    assert_string_equal(lx_conf_strategy_canonical("least_connection"), "least_loaded");
    assert_null(lx_strategy_find("least_connection"));
    assert_null(lx_strategy_find("nope"));
    assert_null(lx_strategy_find(""));
    assert_null(lx_strategy_find("Round_Robin"));
}

/* Values computed once by an independent implementation of the documented
 * algorithm (FNV-1a 64 from offset basis ^ seed, then the splitmix64
 * finaliser): replicas on other machines must agree with these forever. */
static void test_route_hash_pinned(void **state)
{
    const char *url = "http://10.0.0.1:8000";
    const char *msgs = "[{\"role\":\"user\",\"content\":\"hi\"}]";

    assert_int_equal(lx_route_hash("", 0, 0), 0xf52a15e9a9b5e89bULL);
    assert_int_equal(lx_route_hash("hello", 5, 0), 0x16fe05a1c75bcd0fULL);
    assert_int_equal(lx_route_hash(url, strlen(url), 0), 0x3fef1883c5126a18ULL);
    assert_int_equal(lx_route_hash(url, strlen(url), 0x123456789abcdef0ULL), 0xfc153de43959eb37ULL);
    assert_int_equal(lx_route_hash(msgs, strlen(msgs), 7), 0x9d32e060515a0807ULL);
    /* Only <len> bytes count, and the seed changes the result. */
    assert_int_equal(lx_route_hash("hello world", 5, 0), 0x16fe05a1c75bcd0fULL);
    assert_int_not_equal(lx_route_hash("hello", 5, 1), lx_route_hash("hello", 5, 0));
}

/* ---- no candidate ----------------------------------------------------- */

/* Five nodes, each out for a different reason: unhealthy, drained, at its
 * max_concurrency, ejected, already tried. */
static void make_all_ineligible(struct lx_pool *pool, struct lx_pick *ctx)
{
    struct lx_node **n = pool->nodes;

    atomic_store(&n[0]->healthy, false);
    atomic_store(&n[1]->drained, true);
    n[2]->max_concurrency = 2;
    atomic_store(&n[2]->in_flight, 2);
    atomic_store(&n[3]->ejected_until_ms, lx_now_ms() + 600000);
    ctx->tried[ctx->n_tried++] = n[4];
}

static void test_no_candidate_every_strategy(void **state)
{
    for (size_t s = 0; s < sizeof(all_strategies) / sizeof(all_strategies[0]); s++) {
        struct lx_registry *reg = make_reg(all_strategies[s], 5, NULL);
        struct lx_pool *pool = &reg->pools[0];
        struct lx_pick ctx = pick_ctx();
        struct lx_body_scan scan;
        const char *body = "{\"messages\":[],\"user\":\"u\"}";
        struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];

        make_all_ineligible(pool, &ctx);
        assert_false(lx_router_is_any_candidate(pool, &ctx));
        assert_int_equal(lx_router_candidates(pool, &ctx, c), 0);
        for (int i = 0; i < 50; i++) {
            ctx.rand = next_rand();
            ctx.scan = i & 1 ? &scan : NULL;
            if (i & 1)
                assert_int_equal(lx_body_scan(body, strlen(body), &scan), LX_SCAN_OK);
            assert_int_equal(pool->strategy->ops->pick(pool, pool->strategy_state, &ctx), -1);
            assert_null(lx_router_pick(pool, &ctx));
        }
        /* One below its limit again: every strategy finds it and only it. */
        atomic_store(&pool->nodes[2]->in_flight, 1);
        assert_true(lx_router_is_any_candidate(pool, &ctx));
        for (int i = 0; i < 50; i++) {
            ctx.scan = NULL;
            assert_int_equal(pick(pool, &ctx), 2);
        }
        drop_reg(reg);
    }
}

static void test_empty_pool(void **state)
{
    for (size_t s = 0; s < sizeof(all_strategies) / sizeof(all_strategies[0]); s++) {
        struct lx_pool pool;
        struct lx_pick ctx = pick_ctx();

        memset(&pool, 0, sizeof(pool));
        pool.strategy = lx_strategy_find(all_strategies[s]);
        pool.strategy_state = lx_strategy_init(pool.strategy, &pool);
        ctx.rand = next_rand();
        assert_null(lx_router_pick(&pool, &ctx));
        assert_int_equal(pool.strategy->ops->pick(&pool, pool.strategy_state, &ctx), -1);
        assert_false(lx_router_is_any_candidate(&pool, &ctx));
        lx_strategy_destroy(pool.strategy, pool.strategy_state);
    }
}

/* A picked node outlives the registry that held it. */
static void test_pick_returns_reference(void **state)
{
    struct lx_registry *reg = make_reg("round_robin", 2, NULL);
    struct lx_pick ctx = pick_ctx();
    struct lx_node *node = lx_router_pick(&reg->pools[0], &ctx);

    assert_non_null(node);
    assert_int_equal(atomic_load(&node->refs), 2);
    drop_reg(reg);
    assert_int_equal(atomic_load(&node->refs), 1);
    assert_string_equal(node->url, "http://10.0.0.1:8000");
    lx_node_unref(node);
}

static void test_candidates_and_weighted(void **state)
{
    int w[] = {1, 3};
    struct lx_registry *reg = make_reg("random", 2, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    struct lx_cand c[LX_ROUTE_MAX_CANDIDATES];

    assert_int_equal(lx_router_candidates(pool, &ctx, c), 2);
    assert_int_equal(c[0].idx, 0);
    assert_int_equal(c[1].idx, 1);
    assert_true(c[0].weight == 1.0);
    assert_true(c[1].weight == 3.0);
    /* The top 53 bits are a point in [0, 1) scaled to the total weight 4:
     * [0, 1) is node 0, [1, 4) node 1. */
    assert_int_equal(lx_router_weighted(c, 2, 0), 0);
    assert_int_equal(lx_router_weighted(c, 2, (1ULL << 62) - (1ULL << 11)), 0);
    assert_int_equal(lx_router_weighted(c, 2, 1ULL << 62), 1);
    assert_int_equal(lx_router_weighted(c, 2, UINT64_MAX), 1);
    assert_int_equal(lx_router_weighted(c, 0, 0), -1);
    /* Load is in-flight per unit of effective weight. */
    atomic_store(&pool->nodes[1]->in_flight, 6);
    assert_true(lx_router_load(pool, &c[1]) == 2.0);
    assert_true(lx_router_load(pool, &c[0]) == 0.0);
    /* A tried node is not a candidate. */
    ctx.tried[ctx.n_tried++] = pool->nodes[0];
    assert_false(lx_router_is_candidate(&ctx, pool->nodes[0]));
    assert_true(lx_router_is_candidate(&ctx, pool->nodes[1]));
    assert_int_equal(lx_router_candidates(pool, &ctx, c), 1);
    assert_int_equal(c[0].idx, 1);
    drop_reg(reg);
}

/* ---- round_robin ------------------------------------------------------ */

static void test_rr_equal_rotation(void **state)
{
    struct lx_registry *reg = make_reg("round_robin", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int seq[30], counts[3] = {0};

    for (int i = 0; i < 30; i++) {
        seq[i] = pick(pool, &ctx);
        assert_true(seq[i] >= 0);
        counts[seq[i]]++;
    }
    assert_int_equal(counts[0], 10);
    assert_int_equal(counts[1], 10);
    assert_int_equal(counts[2], 10);
    /* In rotation order: 0, 1, 2, 0, 1, 2, ... from wherever it started. */
    for (int i = 1; i < 30; i++)
        assert_int_equal(seq[i], (seq[i - 1] + 1) % 3);
    drop_reg(reg);
}

static void test_rr_weights(void **state)
{
    int w[] = {1, 3};
    struct lx_registry *reg = make_reg("round_robin", 2, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2] = {0}, prev = -1, run = 0, max_run = 0;

    for (int i = 0; i < 4000; i++) {
        int idx = pick(pool, &ctx);

        counts[idx]++;
        /* Interleaved: the light node never twice in a row, the heavy one
         * in short runs. */
        run = idx == prev ? run + 1 : 1;
        prev = idx;
        if (idx == 0)
            assert_int_equal(run, 1);
        else if (run > max_run)
            max_run = run;
    }
    assert_near(counts[0], 1000, 40);
    assert_near(counts[1], 3000, 40);
    assert_true(max_run <= 6);
    drop_reg(reg);
}

/* A node leaving splits its share over the others, not onto one neighbour. */
static void test_rr_ineligible_split_evenly(void **state)
{
    struct lx_registry *reg = make_reg("round_robin", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[1], 10);
    atomic_store(&pool->nodes[1]->healthy, false);
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[0], 15);
    assert_int_equal(counts[1], 0);
    assert_int_equal(counts[2], 15);
    atomic_store(&pool->nodes[1]->healthy, true);
    atomic_store(&pool->nodes[0]->drained, true);
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[0], 0);
    assert_int_equal(counts[1], 15);
    assert_int_equal(counts[2], 15);
    drop_reg(reg);
}

/* Weighted, one node out: the rest keep their weight ratio. */
static void test_rr_weighted_ineligible(void **state)
{
    int w[] = {1, 2, 2};
    struct lx_registry *reg = make_reg("round_robin", 3, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    atomic_store(&pool->nodes[1]->healthy, false);
    pick_many(pool, &ctx, 3000, counts);
    assert_int_equal(counts[1], 0);
    assert_near(counts[0], 1000, 30);
    assert_near(counts[2], 2000, 30);
    drop_reg(reg);
}

static void test_rr_tried_excluded(void **state)
{
    struct lx_registry *reg = make_reg("round_robin", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    ctx.tried[ctx.n_tried++] = pool->nodes[0];
    pick_many(pool, &ctx, 40, counts);
    assert_int_equal(counts[0], 0);
    assert_int_equal(counts[1], 20);
    assert_int_equal(counts[2], 20);
    ctx.tried[ctx.n_tried++] = pool->nodes[2];
    pick_many(pool, &ctx, 10, counts);
    assert_int_equal(counts[1], 10);
    drop_reg(reg);
}

/* A node half-way through its slow start gets half its weight's share. */
static void test_rr_slow_start(void **state)
{
    struct lx_registry *reg = make_reg("round_robin", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    lx_node_set_policy(10000, 5000, 60000, 3);
    atomic_store(&pool->nodes[0]->up_since_ms, ctx.now_ms - 5000);
    pick_many(pool, &ctx, 5000, counts);
    assert_near(counts[0], 1000, 50);
    assert_near(counts[1], 2000, 50);
    assert_near(counts[2], 2000, 50);
    /* Once the ramp is over: equal again, strict rotation. */
    ctx.now_ms += 5000;
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[0], 10);
    assert_int_equal(counts[1], 10);
    assert_int_equal(counts[2], 10);
    drop_reg(reg);
}

/* ---- least_loaded ----------------------------------------------------- */

static void test_ll_fewest_in_flight(void **state)
{
    struct lx_registry *reg = make_reg("least_loaded", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    atomic_store(&pool->nodes[0]->in_flight, 3);
    atomic_store(&pool->nodes[1]->in_flight, 1);
    atomic_store(&pool->nodes[2]->in_flight, 2);
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[1], 30);
    /* The least loaded tried already: the next one. */
    ctx.tried[ctx.n_tried++] = pool->nodes[1];
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[2], 30);
    drop_reg(reg);
}

static void test_ll_ties_rotate(void **state)
{
    struct lx_registry *reg = make_reg("least_loaded", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[0], 10);
    assert_int_equal(counts[1], 10);
    assert_int_equal(counts[2], 10);
    drop_reg(reg);
}

/* A tie between some of the nodes: the tied ones share evenly, the loaded
 * one gets nothing. (Sequential short requests while node 0 serves long
 * streams.) The node that follows the loaded one in the scan must not
 * inherit its turn. */
static void test_ll_ties_among_some_split_evenly(void **state)
{
    struct lx_registry *reg = make_reg("least_loaded", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    atomic_store(&pool->nodes[0]->in_flight, 5);
    pick_many(pool, &ctx, 30, counts);
    assert_int_equal(counts[0], 0);
    assert_int_equal(counts[1], 15);
    assert_int_equal(counts[2], 15);
    drop_reg(reg);
}

static void test_ll_weights_scale_load(void **state)
{
    int w[] = {1, 4};
    struct lx_registry *reg = make_reg("least_loaded", 2, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();

    /* 2 / 1 = 2 against 4 / 4 = 1. */
    atomic_store(&pool->nodes[0]->in_flight, 2);
    atomic_store(&pool->nodes[1]->in_flight, 4);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pick(pool, &ctx), 1);
    /* 2 / 1 = 2 against 12 / 4 = 3. */
    atomic_store(&pool->nodes[1]->in_flight, 12);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pick(pool, &ctx), 0);
    drop_reg(reg);
}

/* Requests that never finish pile up in proportion to the weights. */
static void test_ll_fills_by_weight(void **state)
{
    int w[] = {1, 2, 1};
    struct lx_registry *reg = make_reg("least_loaded", 3, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();

    for (int i = 0; i < 400; i++) {
        int idx = pick(pool, &ctx);

        atomic_fetch_add(&pool->nodes[idx]->in_flight, 1);
    }
    assert_near(atomic_load(&pool->nodes[0]->in_flight), 100, 1);
    assert_near(atomic_load(&pool->nodes[1]->in_flight), 200, 2);
    assert_near(atomic_load(&pool->nodes[2]->in_flight), 100, 1);
    drop_reg(reg);
}

/* max_concurrency: a full node is skipped even when it is the least loaded
 * per unit of weight. */
static void test_ll_max_concurrency(void **state)
{
    int w[] = {10, 1};
    struct lx_registry *reg = make_reg("least_loaded", 2, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();

    pool->nodes[0]->max_concurrency = 3;
    atomic_store(&pool->nodes[0]->in_flight, 3);
    atomic_store(&pool->nodes[1]->in_flight, 5);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pick(pool, &ctx), 1);
    atomic_store(&pool->nodes[0]->in_flight, 2);
    for (int i = 0; i < 10; i++)
        assert_int_equal(pick(pool, &ctx), 0);
    drop_reg(reg);
}

/* ---- latency_based ---------------------------------------------------- */

static void test_lat_unsampled_first(void **state)
{
    struct lx_registry *reg = make_reg("latency_based", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    set_sample(pool->nodes[0], 1000, ctx.now_ms);
    pick_many(pool, &ctx, 200, counts);
    assert_int_equal(counts[0], 0);
    /* The unsampled ones take turns. */
    assert_true(counts[1] >= 60);
    assert_true(counts[2] >= 60);
    drop_reg(reg);
}

static void test_lat_lowest_wins_with_exploration(void **state)
{
    struct lx_registry *reg = make_reg("latency_based", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    set_sample(pool->nodes[0], 50000, ctx.now_ms);
    set_sample(pool->nodes[1], 5000, ctx.now_ms);
    set_sample(pool->nodes[2], 20000, ctx.now_ms);
    pick_many(pool, &ctx, 4000, counts);
    /* Most picks to the fastest... */
    assert_true(counts[1] > 3600);
    /* ...but the others are explored sometimes (about 1 in 20 explores). */
    assert_true(counts[0] > 0);
    assert_true(counts[2] > 0);
    assert_true(counts[0] + counts[2] < 400);
    drop_reg(reg);
}

/* The score weighs the EWMA by load: a busy fast node loses to an idle
 * slower one. */
static void test_lat_load_penalty(void **state)
{
    struct lx_registry *reg = make_reg("latency_based", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    set_sample(pool->nodes[0], 5000, ctx.now_ms);
    set_sample(pool->nodes[1], 20000, ctx.now_ms);
    atomic_store(&pool->nodes[0]->in_flight, 10); /* 5000 * 11 > 20000 */
    pick_many(pool, &ctx, 1000, counts);
    assert_true(counts[1] > 900);
    drop_reg(reg);
}

static void test_lat_stale_reprobed(void **state)
{
    struct lx_registry *reg = make_reg("latency_based", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    uint64_t t0 = ctx.now_ms;
    int counts[3];

    /* The slow node's sample is 40 s old at the pick: it is re-probed. */
    ctx.now_ms = t0 + 40000;
    set_sample(pool->nodes[0], 1000, ctx.now_ms);
    set_sample(pool->nodes[1], 90000, t0);
    set_sample(pool->nodes[2], 2000, ctx.now_ms);
    pick_many(pool, &ctx, 50, counts);
    assert_int_equal(counts[1], 50);
    /* A fresh sample: the fast node is preferred again. */
    set_sample(pool->nodes[1], 90000, ctx.now_ms);
    pick_many(pool, &ctx, 1000, counts);
    assert_true(counts[0] > 900);
    assert_true(counts[1] < 50);
    drop_reg(reg);
}

static void test_lat_failure_loses_preference(void **state)
{
    struct lx_registry *reg = make_reg("latency_based", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    lx_node_set_policy(10000, 5000, 60000, 3);
    lx_node_report_success(pool->nodes[0], 5000);
    lx_node_report_success(pool->nodes[1], 20000);
    ctx.now_ms = lx_now_ms();
    pick_many(pool, &ctx, 1000, counts);
    assert_true(counts[0] > 900);
    /* One failure (below the ejection threshold): still eligible, but its
     * average is no longer the best. */
    lx_node_report_failure(pool->nodes[0], "test");
    assert_true(lx_node_is_eligible(pool->nodes[0]));
    ctx.now_ms = lx_now_ms();
    pick_many(pool, &ctx, 1000, counts);
    assert_true(counts[1] > 900);
    assert_true(counts[0] > 0); /* explored */
    drop_reg(reg);
}

/* ---- random ----------------------------------------------------------- */

static void test_random_weights(void **state)
{
    int w[] = {1, 2, 5};
    struct lx_registry *reg = make_reg("random", 3, w);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    pick_many(pool, &ctx, 8000, counts);
    assert_near(counts[0], 1000, 150);
    assert_near(counts[1], 2000, 200);
    assert_near(counts[2], 5000, 250);
    /* Down node: the others keep their ratio. */
    atomic_store(&pool->nodes[2]->healthy, false);
    pick_many(pool, &ctx, 6000, counts);
    assert_int_equal(counts[2], 0);
    assert_near(counts[0], 2000, 200);
    assert_near(counts[1], 4000, 200);
    drop_reg(reg);
}

/* ---- power_of_two ----------------------------------------------------- */

static void test_p2_less_loaded_of_two(void **state)
{
    struct lx_registry *reg = make_reg("power_of_two", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    atomic_store(&pool->nodes[0]->in_flight, 5);
    pick_many(pool, &ctx, 200, counts);
    assert_int_equal(counts[1], 200);
    drop_reg(reg);
}

static void test_p2_never_most_loaded(void **state)
{
    struct lx_registry *reg = make_reg("power_of_two", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    atomic_store(&pool->nodes[0]->in_flight, 10);
    atomic_store(&pool->nodes[1]->in_flight, 0);
    atomic_store(&pool->nodes[2]->in_flight, 5);
    pick_many(pool, &ctx, 3000, counts);
    assert_int_equal(counts[0], 0);
    /* The idle node wins every pair it is in (2 of 3), the middle one the
     * pair it shares with the busiest. */
    assert_near(counts[1], 2000, 120);
    assert_near(counts[2], 1000, 120);
    drop_reg(reg);
}

static void test_p2_never_most_loaded_of_four(void **state)
{
    struct lx_registry *reg = make_reg("power_of_two", 4, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[4];

    for (int i = 0; i < 4; i++)
        atomic_store(&pool->nodes[i]->in_flight, 3 - i);
    pick_many(pool, &ctx, 3000, counts);
    assert_int_equal(counts[0], 0);
    assert_true(counts[3] > counts[2]);
    assert_true(counts[2] > counts[1]);
    assert_true(counts[1] > 0);
    drop_reg(reg);
}

static void test_p2_ties_spread(void **state)
{
    struct lx_registry *reg = make_reg("power_of_two", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    pick_many(pool, &ctx, 3000, counts);
    for (int i = 0; i < 3; i++)
        assert_near(counts[i], 1000, 120);
    drop_reg(reg);
}

/* ---- real_time_metrics ------------------------------------------------ */

static void test_rtm_fresh_scrape_shifts_share(void **state)
{
    struct lx_registry *reg = make_reg("real_time_metrics", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    set_scrape(pool->nodes[0], 900, 20, ctx.now_ms - 1000);
    set_scrape(pool->nodes[1], 0, 0, ctx.now_ms - 1000);
    pick_many(pool, &ctx, 4000, counts);
    /* 0.1 / 21 against 1: about 0.5%. */
    assert_true(counts[0] < 80);
    assert_true(counts[1] > 3920);
    drop_reg(reg);
}

/* The better of two drawn nodes wins: over three equal nodes, the best wins
 * 2/3 of the picks, the middle one 1/3, the worst none. */
static void test_rtm_fresh_scrape_kv_and_inflight(void **state)
{
    struct lx_registry *reg = make_reg("real_time_metrics", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    set_scrape(pool->nodes[0], 500, 0, ctx.now_ms);
    set_scrape(pool->nodes[1], 200, 0, ctx.now_ms);
    set_scrape(pool->nodes[2], 0, 0, ctx.now_ms);
    pick_many(pool, &ctx, 6000, counts);
    assert_int_equal(counts[0], 0);
    assert_near(counts[1], 2000, 200);
    assert_near(counts[2], 4000, 200);
    /* Waiting requests weigh as much. */
    set_scrape(pool->nodes[0], 0, 0, ctx.now_ms);
    set_scrape(pool->nodes[2], 0, 2, ctx.now_ms);
    pick_many(pool, &ctx, 6000, counts);
    assert_near(counts[0], 4000, 200);
    assert_near(counts[1], 2000, 200);
    assert_int_equal(counts[2], 0);
    /* Same scrape, equal: the gateway's own in-flight count moves the
     * choice between scrapes. */
    set_scrape(pool->nodes[2], 0, 0, ctx.now_ms);
    set_scrape(pool->nodes[1], 0, 0, ctx.now_ms);
    atomic_store(&pool->nodes[0]->in_flight, 4);
    pick_many(pool, &ctx, 6000, counts);
    assert_int_equal(counts[0], 0);
    assert_near(counts[1], 3000, 250);
    assert_near(counts[2], 3000, 250);
    drop_reg(reg);
}

static void test_rtm_stale_scrape_falls_back(void **state)
{
    struct lx_registry *reg = make_reg("real_time_metrics", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    ctx.now_ms += 100000;
    /* Old figures of a saturated node: ignored, both at 0 in flight. */
    set_scrape(pool->nodes[0], 900, 20, ctx.now_ms - 30001);
    set_scrape(pool->nodes[1], 0, 0, ctx.now_ms - 30001);
    pick_many(pool, &ctx, 4000, counts);
    assert_near(counts[0], 2000, 200);
    /* Just within the staleness: used. */
    set_scrape(pool->nodes[0], 900, 20, ctx.now_ms - 30000);
    set_scrape(pool->nodes[1], 0, 0, ctx.now_ms - 30000);
    pick_many(pool, &ctx, 4000, counts);
    assert_true(counts[0] < 80);
    drop_reg(reg);
}

static void test_rtm_no_scrape_uses_in_flight(void **state)
{
    struct lx_registry *reg = make_reg("real_time_metrics", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    /* Never scraped (scraped_at 0): the in-flight counts alone. */
    atomic_store(&pool->nodes[0]->in_flight, 3);
    atomic_store(&pool->nodes[1]->in_flight, 1);
    pick_many(pool, &ctx, 6000, counts);
    assert_int_equal(counts[0], 0);
    assert_near(counts[1], 2000, 200);
    assert_near(counts[2], 4000, 200);
    /* Idle: even. */
    atomic_store(&pool->nodes[0]->in_flight, 0);
    atomic_store(&pool->nodes[1]->in_flight, 0);
    pick_many(pool, &ctx, 6000, counts);
    for (int i = 0; i < 3; i++)
        assert_near(counts[i], 2000, 200);
    drop_reg(reg);
}

/* Each pool's nodes are scraped every metrics_update_interval of that pool
 * (health.c), and main.c sets the staleness from the global interval (three
 * times 10 s). A pool scraped every 60 s must still use its latest scrape,
 * 45 s old: it is the freshest such a pool can have. */
static void test_rtm_staleness_follows_pool_interval(void **state)
{
    struct lx_registry *reg = make_reg("real_time_metrics", 2, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[2];

    /* The global interval is 10 s (30 s of freshness); this pool scrapes every 60 s. */
    pool->metrics_update_interval_s = 60;
    ctx.now_ms += 100000;
    set_scrape(pool->nodes[0], 900, 20, ctx.now_ms - 45000);
    set_scrape(pool->nodes[1], 0, 0, ctx.now_ms - 45000);
    pick_many(pool, &ctx, 4000, counts);
    assert_true(counts[0] < 80);
    drop_reg(reg);
}

/* ---- cache_aware ------------------------------------------------------ */

/* Sizes of the conversation texts below, in bytes (blocks are 128). */
#define SYSTEM_BYTES 700
#define ASK_BYTES 200
#define ANSWER_BYTES 300

/* A cache_aware pick for one user message of <len> bytes starting with
 * <tag>, <extra> fields and <affinity> as in pick_chat. */
static int pick_text(struct lx_pool *pool, const char *tag, size_t len, const char *extra,
                     const char *affinity)
{
    char *content = track_mem(malloc(len + 1));
    int idx;

    ut_fill_text(content, len, tag);
    idx = pick_chat(pool, content, extra, affinity);
    drop_mem(content);
    return idx;
}

/* Turn <k> (from 1) of conversation <c>: a system prompt that every
 * conversation shares, then the user's k questions with the k - 1 answers
 * between them, the history a client resends each turn. */
static char *conv_body(int c, int k)
{
    size_t cap = 64 + SYSTEM_BYTES + (size_t)k * (ASK_BYTES + ANSWER_BYTES + 96), n;
    char *b = track_mem(malloc(cap)), text[SYSTEM_BYTES + 1], tag[48];

    ut_fill_text(text, SYSTEM_BYTES, "You are a helpful assistant.");
    n = (size_t)snprintf(b, cap,
                         "{\"model\":\"m\",\"messages\":"
                         "[{\"role\":\"system\",\"content\":\"%s\"}",
                         text);
    for (int t = 1; t <= k; t++) {
        snprintf(tag, sizeof(tag), "conversation %d question %d:", c, t);
        ut_fill_text(text, ASK_BYTES, tag);
        n += (size_t)snprintf(b + n, cap - n, ",{\"role\":\"user\",\"content\":\"%s\"}", text);
        if (t == k)
            break;
        snprintf(tag, sizeof(tag), "conversation %d answer %d:", c, t);
        ut_fill_text(text, ANSWER_BYTES, tag);
        n += (size_t)snprintf(b + n, cap - n, ",{\"role\":\"assistant\",\"content\":\"%s\"}", text);
    }
    assert_true(n + 3 <= cap);
    snprintf(b + n, cap - n, "]}");
    return b;
}

static int pick_turn(struct lx_pool *pool, int c, int k, const char *affinity)
{
    char *b = conv_body(c, k);
    int idx = pick_body(pool, b, affinity);

    drop_mem(b);
    return idx;
}

/* Drains every node of <pool> but <keep>; keep = -1 undrains them all. */
static void drain_all_but(struct lx_pool *pool, int keep)
{
    for (size_t i = 0; i < pool->n_nodes; i++)
        atomic_store(&pool->nodes[i]->drained, keep >= 0 && (int)i != keep);
}

/* Sends the prompt <tag> (300 bytes) to a node of <pool> other than the one
 * rendezvous hashing prefers for it, found on <probe>, a registry over the
 * same nodes; returns that node and sets *fav to the preferred one. Only
 * the index can then bring the prompt back to the returned node. */
static int steer_away(struct lx_pool *pool, struct lx_pool *probe, const char *tag, int *fav)
{
    int idx;

    *fav = pick_text(probe, tag, 300, NULL, NULL);
    atomic_store(&pool->nodes[*fav]->drained, true);
    idx = pick_text(pool, tag, 300, NULL, NULL);
    atomic_store(&pool->nodes[*fav]->drained, false);
    assert_true(idx >= 0);
    assert_int_not_equal(idx, *fav);
    return idx;
}

/* A prompt's second request goes to the node that got the first (an index
 * hit), though another node is as idle and rendezvous hashing prefers it;
 * other fields and random numbers do not matter. */
static void test_ca_repeat_hits_first_node(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_registry *probe = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    char tag[32];

    for (int k = 0; k < 20; k++) {
        int fav, first;

        snprintf(tag, sizeof(tag), "prompt %d:", k);
        first = steer_away(pool, &probe->pools[0], tag, &fav);
        for (int i = 0; i < 5; i++) {
            assert_int_equal(pick_text(pool, tag, 300, NULL, NULL), first);
            assert_int_equal(pick_text(pool, tag, 300, "\"stream\":true,\"max_tokens\":5,", NULL),
                             first);
        }
        /* Where nobody was steered, the preferred node keeps it. */
        assert_int_equal(pick_text(&probe->pools[0], tag, 300, NULL, NULL), fav);
    }
    drop_reg(probe);
    drop_reg(reg);
}

/* Multi-turn chat: every turn resends the history, so turn k + 1 hits the
 * node that served turn k. Eight conversations share one system prompt
 * (soon held by every node, and the same first block for all, so
 * rendezvous hashing alone would put them together) and start on node
 * c % 4, the others drained for their first turn; with loads equal each
 * keeps to its node, turns interleaved. A turn served elsewhere moves the
 * conversation: the next turn follows the longest history. */
static void test_ca_multi_turn(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 4, NULL);
    struct lx_pool *pool = &reg->pools[0];
    int home[8], moved;

    for (int c = 0; c < 8; c++) {
        drain_all_but(pool, c % 4);
        home[c] = pick_turn(pool, c, 1, NULL);
        assert_int_equal(home[c], c % 4);
    }
    drain_all_but(pool, -1);
    for (int k = 2; k <= 6; k++)
        for (int c = 0; c < 8; c++)
            assert_int_equal(pick_turn(pool, c, k, NULL), home[c]);
    atomic_store(&pool->nodes[home[0]]->drained, true);
    moved = pick_turn(pool, 0, 7, NULL);
    atomic_store(&pool->nodes[home[0]]->drained, false);
    assert_int_not_equal(moved, home[0]);
    assert_int_equal(pick_turn(pool, 0, 8, NULL), moved);
    assert_int_equal(pick_turn(pool, 1, 7, NULL), home[1]);
    drop_reg(reg);
}

/* Cache against load. The node holding a 20-block prompt ("user", 0x1e,
 * 2554 bytes, 0x1f) keeps it while its requests in flight cost less than
 * recomputing the prompt elsewhere: load_weight x in flight < 20. With a load
 * weight of 0 the hit always wins. */
static void test_ca_load_gives_up_hit(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    const char *tag = "a shared document:";
    int home = pick_text(pool, tag, 2554, NULL, NULL), other;
    struct lx_node *h = pool->nodes[home];

    assert_int_equal(pick_text(pool, tag, 2554, NULL, NULL), home);
    /* The node alone holds the prompt's 20 blocks: it counts as the
     * conversation's node, worth the prompt and 64 blocks more. One request
     * in flight weighing 80 blocks: 80 < 84. The load bound is not reached
     * (1 <= 1.5 x 1/3 + 1). */
    atomic_store(&h->in_flight, 1);
    lx_route_set_cache_policy(1.5, 80, 1 << 21);
    assert_int_equal(pick_text(pool, tag, 2554, NULL, NULL), home);
    /* Weighing 90 blocks: 90 > 84, unless load weighs nothing. */
    lx_route_set_cache_policy(1.5, 0, 1 << 21);
    assert_int_equal(pick_text(pool, tag, 2554, NULL, NULL), home);
    lx_route_set_cache_policy(1.5, 90, 1 << 21);
    other = pick_text(pool, tag, 2554, NULL, NULL);
    assert_int_not_equal(other, home);
    /* Both hold it now: the busier one loses, then the tie-break decides. */
    assert_int_equal(pick_text(pool, tag, 2554, NULL, NULL), other);
    atomic_store(&h->in_flight, 0);
    assert_int_equal(pick_text(pool, tag, 2554, NULL, NULL), home);
    lx_route_set_cache_policy(1.5, 4, 1 << 21);
    drop_reg(reg);
}

/* Bounded load, apart from the cost (load weight 0): a node far above the
 * pool's average in-flight requests gets nothing while others are within
 * the bound, whatever it holds. Prompts whose first node is each node in
 * turn, so the node's place in the pool does not matter. */
static void test_ca_bounded_load(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    int homes[3] = {0};
    char tag[48];

    lx_route_set_cache_policy(1.5, 0, 1 << 21);
    for (int k = 0; k < 12; k++) {
        int home, other;

        snprintf(tag, sizeof(tag), "a popular system prompt %d:", k);
        home = pick_text(pool, tag, 600, NULL, NULL);
        homes[home]++;
        /* A little busier than the rest: it keeps its prompt (1 <= 1.5 x 1/3 + 1). */
        atomic_store(&pool->nodes[home]->in_flight, 1);
        assert_int_equal(pick_text(pool, tag, 600, NULL, NULL), home);
        /* Far above the average (10 > 1.5 x 12/3 + 1). */
        atomic_store(&pool->nodes[home]->in_flight, 10);
        other = (home + 1) % 3;
        atomic_store(&pool->nodes[other]->in_flight, 2);
        for (int i = 0; i < 5; i++)
            assert_int_not_equal(pick_text(pool, tag, 600, NULL, NULL), home);
        /* Load gone: back home (a tie with the node that took it, which
         * rendezvous hashing breaks for home, as at the first request). */
        atomic_store(&pool->nodes[home]->in_flight, 0);
        atomic_store(&pool->nodes[other]->in_flight, 0);
        assert_int_equal(pick_text(pool, tag, 600, NULL, NULL), home);
    }
    assert_true(homes[0] > 0 && homes[1] > 0 && homes[2] > 0);
    drop_reg(reg);
}

/* Fresh prompts spread over the nodes, chat and completions alike, and a
 * completions prompt comes back to its node. */
static void test_ca_fresh_prompts_spread(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    int chat[3] = {0}, completions[3] = {0};
    char tag[32], text[301], body[400];

    for (int k = 0; k < 300; k++) {
        int first;

        snprintf(tag, sizeof(tag), "conversation %d:", k);
        chat[pick_text(pool, tag, 300, NULL, NULL)]++;
        snprintf(tag, sizeof(tag), "Once upon a time %d", k);
        ut_fill_text(text, 300, tag);
        snprintf(body, sizeof(body), "{\"model\":\"m\",\"prompt\":\"%s\"}", text);
        first = pick_body(pool, body, NULL);
        assert_int_equal(pick_body(pool, body, NULL), first);
        completions[first]++;
    }
    for (int i = 0; i < 3; i++) {
        assert_true(chat[i] >= 60);
        assert_true(completions[i] >= 60);
    }
    drop_reg(reg);
}

/* Rendezvous weights for fresh prompts: a weight-2 node takes about 2/4. */
static void test_ca_weights(void **state)
{
    int w[] = {1, 2, 1};
    struct lx_registry *reg = make_reg("cache_aware", 3, w);
    struct lx_pool *pool = &reg->pools[0];
    int counts[3] = {0};
    char tag[32];

    for (int k = 0; k < 2000; k++) {
        snprintf(tag, sizeof(tag), "key %d:", k);
        counts[pick_text(pool, tag, 200, NULL, NULL)]++;
    }
    assert_near(counts[0], 500, 80);
    assert_near(counts[1], 1000, 100);
    assert_near(counts[2], 500, 80);
    drop_reg(reg);
}

/* Two affinity keys that land on different nodes (searched, deterministic). */
static void two_keys_apart(struct lx_pool *pool, char *a, char *b, size_t size)
{
    struct lx_pick ctx = pick_ctx();
    int ia;

    snprintf(a, size, "session-0");
    ctx.affinity = a;
    ctx.affinity_len = strlen(a);
    ia = pick(pool, &ctx);
    for (int k = 1; k < 100; k++) {
        snprintf(b, size, "session-%d", k);
        ctx.affinity = b;
        ctx.affinity_len = strlen(b);
        if (pick(pool, &ctx) != ia)
            return;
    }
    fail_msg("100 keys on one node");
}

/* X-Session-Id is hashed ahead of the prompt: two sessions sending the same
 * text do not share its blocks, and a session's prompts that no node holds
 * go to the session's node (the tie-break is the session), so its turns
 * and its unrelated prompts stay together. */
static void test_ca_session_keeps_together(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    char a[32], b[32], tag[32];
    int na, nb;

    two_keys_apart(pool, a, b, sizeof(a));
    na = pick_text(pool, "the same prompt:", 300, NULL, a);
    nb = pick_text(pool, "the same prompt:", 300, NULL, b);
    assert_int_not_equal(na, nb);
    for (int k = 0; k < 30; k++) {
        snprintf(tag, sizeof(tag), "prompt %d:", k);
        assert_int_equal(pick_text(pool, tag, 300, NULL, a), na);
        assert_int_equal(pick_text(pool, tag, 300, NULL, b), nb);
        /* Short prompts too (no full block). */
        assert_int_equal(pick_text(pool, tag, 20, NULL, a), na);
    }
    for (int k = 1; k <= 4; k++) {
        assert_int_equal(pick_turn(pool, 0, k, a), na);
        assert_int_equal(pick_turn(pool, 0, k, b), nb);
    }
    drop_reg(reg);
}

/* The body's "user" is the same hint as an X-Session-Id of the same value;
 * the header wins over it. */
static void test_ca_user_is_a_session(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    char a[32], b[32], user[64], tag[32];
    int na, nb;

    two_keys_apart(pool, a, b, sizeof(a));
    na = pick_text(pool, "first prompt:", 300, NULL, a);
    nb = pick_text(pool, "first prompt:", 300, NULL, b);
    snprintf(user, sizeof(user), "\"user\":\"%s\",", a);
    /* The same blocks as with the header: a hit where the header sent it. */
    assert_int_equal(pick_text(pool, "first prompt:", 300, user, NULL), na);
    for (int k = 0; k < 30; k++) {
        snprintf(tag, sizeof(tag), "user prompt %d:", k);
        assert_int_equal(pick_text(pool, tag, 300, user, NULL), na);
        assert_int_equal(pick_text(pool, tag, 300, user, b), nb);
    }
    drop_reg(reg);
}

/* A node that went unhealthy, or restarted (cache_gen bumped by the
 * scrape), has lost its blocks: a prompt it held goes where it would go
 * fresh. */
static void test_ca_lost_cache_forgotten(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_registry *probe = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_node *s;
    int fav, held;

    lx_node_set_policy(0, 5000, 60000, 3); /* no slow start once back */
    held = steer_away(pool, &probe->pools[0], "down prompt:", &fav);
    s = pool->nodes[held];
    assert_int_equal(pick_text(pool, "down prompt:", 300, NULL, NULL), held);
    assert_true(lx_prefix_count(s) > 0);
    lx_node_set_healthy(s, false, "probe: connection refused");
    lx_node_set_healthy(s, true, NULL);
    assert_int_equal(lx_prefix_count(s), 0);
    assert_int_equal(pick_text(pool, "down prompt:", 300, NULL, NULL), fav);

    held = steer_away(pool, &probe->pools[0], "restart prompt:", &fav);
    s = pool->nodes[held];
    assert_int_equal(pick_text(pool, "restart prompt:", 300, NULL, NULL), held);
    atomic_fetch_add(&s->cache_gen, 1);
    assert_int_equal(pick_text(pool, "restart prompt:", 300, NULL, NULL), fav);
    drop_reg(probe);
    drop_reg(reg);
}

/* Rendezvous: a node leaving moves only its own prompts; back, it gets them
 * back (it still holds them, as does the node that stood in: a tie). */
static void test_ca_rendezvous_removal(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 4, NULL);
    struct lx_pool *pool = &reg->pools[0];
    int before[300], moved = 0, to[4] = {0};
    char tag[32];

    for (int k = 0; k < 300; k++) {
        snprintf(tag, sizeof(tag), "chat %d:", k);
        before[k] = pick_text(pool, tag, 300, NULL, NULL);
    }
    atomic_store(&pool->nodes[2]->drained, true);
    for (int k = 0; k < 300; k++) {
        int now;

        snprintf(tag, sizeof(tag), "chat %d:", k);
        now = pick_text(pool, tag, 300, NULL, NULL);
        assert_int_not_equal(now, 2);
        if (before[k] != 2) {
            assert_int_equal(now, before[k]);
        } else {
            moved++;
            to[now]++;
        }
    }
    assert_true(moved >= 40);
    /* The orphans spread over the others rather than all onto one. */
    assert_true(to[0] > 0 && to[1] > 0 && to[3] > 0);
    atomic_store(&pool->nodes[2]->drained, false);
    for (int k = 0; k < 300; k++) {
        snprintf(tag, sizeof(tag), "chat %d:", k);
        assert_int_equal(pick_text(pool, tag, 300, NULL, NULL), before[k]);
    }
    drop_reg(reg);
}

/* Two llmux replicas in front of the same nodes (listed in another order)
 * have seen different traffic, so their indexes differ; a prompt new to
 * both goes to the same node from each (equal loads: rendezvous on its
 * first block and the node URL, not its position), and so do its turns. */
static void test_ca_replicas_agree(void **state)
{
    const char *u1[] = {"http://a:1", "http://b:2", "http://c:3"};
    const char *u2[] = {"http://c:3", "http://a:1", "http://b:2"};
    struct lx_registry *r1 = make_reg_urls("cache_aware", 3, NULL, u1);
    struct lx_registry *r2 = make_reg_urls("cache_aware", 3, NULL, u2);
    struct lx_pool *p1 = &r1->pools[0], *p2 = &r2->pools[0];
    char tag[32];

    for (int k = 0; k < 100; k++) {
        snprintf(tag, sizeof(tag), "only one %d:", k);
        pick_text(p1, tag, 300, NULL, NULL);
        snprintf(tag, sizeof(tag), "only two %d:", k);
        pick_text(p2, tag, 300, NULL, NULL);
    }
    for (int k = 0; k < 200; k++) {
        int i1, i2;

        snprintf(tag, sizeof(tag), "replica key %d:", k);
        i1 = pick_text(p1, tag, 300, NULL, NULL);
        i2 = pick_text(p2, tag, 300, NULL, NULL);
        assert_string_equal(p1->nodes[i1]->url, p2->nodes[i2]->url);
    }
    for (int c = 0; c < 4; c++)
        for (int k = 1; k <= 3; k++)
            assert_string_equal(p1->nodes[pick_turn(p1, c, k, NULL)]->url,
                                p2->nodes[pick_turn(p2, c, k, NULL)]->url);
    drop_reg(r1);
    drop_reg(r2);
}

/* No prompt and no hint: a random tie-break, so traffic still spreads. */
static void test_ca_no_key_spreads(void **state)
{
    struct lx_registry *reg = make_reg("cache_aware", 3, NULL);
    struct lx_pool *pool = &reg->pools[0];
    struct lx_pick ctx = pick_ctx();
    int counts[3];

    pick_many(pool, &ctx, 3000, counts);
    for (int i = 0; i < 3; i++)
        assert_near(counts[i], 1000, 150);
    drop_reg(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_strategy_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_hash_pinned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_candidate_every_strategy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pick_returns_reference, setup, teardown),
        cmocka_unit_test_setup_teardown(test_candidates_and_weighted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_equal_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_ineligible_split_evenly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_weighted_ineligible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_tried_excluded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rr_slow_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_fewest_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_ties_rotate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_ties_among_some_split_evenly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_weights_scale_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_fills_by_weight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ll_max_concurrency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lat_unsampled_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lat_lowest_wins_with_exploration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lat_load_penalty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lat_stale_reprobed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lat_failure_loses_preference, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p2_less_loaded_of_two, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p2_never_most_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p2_never_most_loaded_of_four, setup, teardown),
        cmocka_unit_test_setup_teardown(test_p2_ties_spread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rtm_fresh_scrape_shifts_share, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rtm_fresh_scrape_kv_and_inflight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rtm_stale_scrape_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rtm_no_scrape_uses_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rtm_staleness_follows_pool_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_repeat_hits_first_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_multi_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_load_gives_up_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_bounded_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_fresh_prompts_spread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_weights, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_session_keeps_together, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_user_is_a_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_lost_cache_forgotten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_rendezvous_removal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_replicas_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_no_key_spreads, setup, teardown),
    };

    lx_log_set_level(LX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
