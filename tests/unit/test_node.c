/*
 * test_node.c - the node registry and node state: building pools from the
 * config, carrying nodes over to a new snapshot only when unchanged,
 * refcounts, the EWMA of time to first byte, passive ejection with a
 * cooldown that doubles and resets, active health transitions, eligibility,
 * the slow-start ramp of the effective weight, each pool's hedge delay
 * and retry budget, and lx_node_state / lx_pool_state: every state, every
 * transition between them, and the precedence when several apply.
 *
 * Times: functions that read the clock themselves are checked against
 * lx_now_ms() taken just before and just after the call (a bracket, never
 * a duration). Cooldown expiry is simulated by writing ejected_until_ms.
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
#include "../../src/nodes/node.h"
#include "../../src/route/router.h"

#define MAX_SERVERS 4

/* A config built by hand: one or two pools of servers. */
struct test_conf {
    struct lx_conf conf;
    struct lx_conf_pool pools[2];
    struct lx_conf_server servers[2][MAX_SERVERS];
};

static struct lx_registry *regs[4];

static struct lx_registry *track(struct lx_registry *reg)
{
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++)
        if (!regs[i]) {
            regs[i] = reg;
            return reg;
        }
    fail_msg("too many registries");
    return NULL;
}

static void drop(struct lx_registry *reg)
{
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++)
        if (regs[i] == reg)
            regs[i] = NULL;
    lx_registry_unref(reg);
}

static int setup(void **state)
{
    lx_node_set_policy(10000, 1000, 8000, 3);
    return 0;
}

/* Drops what a failed test left behind. */
static int teardown(void **state)
{
    for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++)
        if (regs[i])
            drop(regs[i]);
    return 0;
}

static void server(struct lx_conf_server *s, const char *url, const char *host, int port)
{
    memset(s, 0, sizeof(*s));
    s->url = (char *)url;
    s->host = (char *)host;
    s->port = port;
    s->base_path = "";
    s->weight = 1;
}

/* Pool "m" with three servers; pool "*" with one (when <two_pools>). */
static void conf_init(struct test_conf *c, bool two_pools)
{
    memset(c, 0, sizeof(*c));
    server(&c->servers[0][0], "http://10.0.0.1:8000", "10.0.0.1", 8000);
    server(&c->servers[0][1], "http://10.0.0.2:8000", "10.0.0.2", 8000);
    server(&c->servers[0][2], "http://10.0.0.3:8000", "10.0.0.3", 8000);
    c->servers[0][1].name = "two";
    c->servers[0][2].api_key = "sk-3";
    c->pools[0].model = "m";
    c->pools[0].servers = c->servers[0];
    c->pools[0].n_servers = 3;
    server(&c->servers[1][0], "http://10.0.0.9:9000", "10.0.0.9", 9000);
    c->pools[1].model = "*";
    c->pools[1].strategy = "least_loaded";
    c->pools[1].metrics_update_interval_s = 2;
    c->pools[1].servers = c->servers[1];
    c->pools[1].n_servers = 1;
    c->conf.pools = c->pools;
    c->conf.n_pools = two_pools ? 2 : 1;
    c->conf.strategy = "round_robin";
    c->conf.metrics_update_interval_s = 10;
}

static struct lx_registry *build(struct test_conf *c, struct lx_registry *prev)
{
    char err[256] = "";
    struct lx_registry *reg = lx_router_registry_new(&c->conf, prev, err, sizeof(err));

    if (!reg)
        fail_msg("lx_router_registry_new: %s", err);
    return track(reg);
}

static struct lx_node *make_node(void)
{
    struct test_conf c;
    struct lx_registry *reg;
    struct lx_node *n;

    conf_init(&c, false);
    reg = build(&c, NULL);
    n = lx_node_ref(reg->pools[0].nodes[0]);
    drop(reg);
    return n;
}

/* ---- registry --------------------------------------------------------- */

static void test_registry_build(void **state)
{
    struct test_conf c;
    struct lx_registry *reg;
    struct lx_pool *p, *any;
    struct lx_node **n;

    conf_init(&c, true);
    c.servers[0][0].weight = 3;
    c.servers[0][0].max_concurrency = 7;
    c.servers[0][1].base_path = "/v2";
    reg = build(&c, NULL);
    assert_int_equal(reg->n_pools, 2);
    p = &reg->pools[0];
    any = &reg->pools[1];
    assert_string_equal(p->model, "m");
    assert_null(p->upstream_model);
    assert_string_equal(p->strategy_name, "round_robin");
    assert_string_equal(p->strategy->name, "round_robin");
    assert_ptr_equal(p->strategy->ops, &lx_strategy_round_robin);
    assert_non_null(p->strategy_state);
    assert_non_null(p->strategy_free);
    assert_true(p->metrics_update_interval_s == 10);
    assert_string_equal(any->strategy_name, "least_loaded");
    assert_ptr_equal(any->strategy->ops, &lx_strategy_least_loaded);
    assert_true(any->metrics_update_interval_s == 2);
    assert_int_equal(p->n_nodes, 3);
    n = p->nodes;
    /* The name defaults to the URL. */
    assert_string_equal(n[0]->name, "http://10.0.0.1:8000");
    assert_string_equal(n[1]->name, "two");
    assert_string_equal(n[0]->host_header, "10.0.0.1:8000");
    assert_int_equal(n[0]->port, 8000);
    assert_int_equal(n[0]->weight, 3);
    assert_int_equal(n[0]->max_concurrency, 7);
    assert_string_equal(n[0]->base_path, "");
    assert_string_equal(n[1]->base_path, "/v2");
    assert_null(n[0]->auth_header);
    assert_string_equal(n[2]->auth_header, "Bearer sk-3");
    /* Fresh nodes: healthy, full weight, nothing in flight. */
    for (size_t i = 0; i < 3; i++) {
        assert_true(atomic_load(&n[i]->healthy));
        assert_false(atomic_load(&n[i]->drained));
        assert_int_equal(atomic_load(&n[i]->in_flight), 0);
        assert_int_equal(atomic_load(&n[i]->ewma_ttfb_us), 0);
        assert_int_equal(atomic_load(&n[i]->refs), 1);
        assert_true(lx_node_is_eligible(n[i]));
        assert_true(n[i]->id < lx_node_id_limit());
    }
    assert_int_not_equal(n[0]->id, n[1]->id);
    assert_int_not_equal(n[1]->id, n[2]->id);
    assert_int_not_equal(n[0]->id, any->nodes[0]->id);
    /* Lookup: exact first, then "*". */
    assert_ptr_equal(lx_registry_find(reg, "m", 1), p);
    assert_ptr_equal(lx_registry_find(reg, "mm", 2), any);
    assert_ptr_equal(lx_registry_find(reg, "m!", 1), p);
    assert_ptr_equal(lx_registry_find(reg, "", 0), any);
    drop(reg);
    /* Without a "*" pool an unknown model has no pool. */
    conf_init(&c, false);
    reg = build(&c, NULL);
    assert_null(lx_registry_find(reg, "other", 5));
    assert_non_null(lx_registry_find(reg, "m", 1));
    drop(reg);
}

/* A pool's hedge delay is its own or the global one; its retry budget takes
 * the global limits, and its window carries over to the next snapshot's pool
 * of the same model only. */
static void test_registry_hedge_and_budget(void **state)
{
    struct test_conf c;
    struct lx_registry *reg, *next;
    uint64_t now = 1000000, requests, extra, allowed;

    conf_init(&c, true);
    c.conf.hedge_after_s = 0.5;
    c.conf.retry_budget_percent = 20;
    c.conf.retry_budget_min_per_s = 1;
    c.pools[1].has_hedge_after = true;
    c.pools[1].hedge_after_s = 0; /* this pool: no hedging, whatever the global */
    reg = build(&c, NULL);
    assert_true(reg->pools[0].hedge_after_s == 0.5);
    assert_true(reg->pools[1].hedge_after_s == 0);
    assert_true(reg->pools[0].retry_budget.percent == 20);
    assert_true(reg->pools[0].retry_budget.min_per_s == 1);
    for (int i = 0; i < 50; i++)
        lx_budget_note_request(&reg->pools[0].retry_budget, now);
    assert_true(lx_budget_try_spend(&reg->pools[0].retry_budget, now));
    lx_budget_usage(&reg->pools[0].retry_budget, now, &requests, &extra, &allowed);
    assert_int_equal(requests, 50);
    assert_int_equal(extra, 1);
    assert_int_equal(allowed, 20);

    /* Next snapshot: new limits, the same window; pool "*" was empty. */
    c.conf.retry_budget_percent = 100;
    c.pools[1].hedge_after_s = 3;
    next = build(&c, reg);
    lx_budget_usage(&next->pools[0].retry_budget, now, &requests, &extra, &allowed);
    assert_int_equal(requests, 50);
    assert_int_equal(extra, 1);
    assert_int_equal(allowed, 60);
    lx_budget_usage(&next->pools[1].retry_budget, now, &requests, &extra, &allowed);
    assert_int_equal(requests, 0);
    assert_true(next->pools[1].hedge_after_s == 3);
    /* Carried, not shared: the old snapshot's window no longer moves it. */
    lx_budget_note_request(&reg->pools[0].retry_budget, now);
    lx_budget_usage(&next->pools[0].retry_budget, now, &requests, &extra, &allowed);
    assert_int_equal(requests, 50);
    drop(reg);
    drop(next);
}

static void test_registry_ipv6_host_header(void **state)
{
    struct test_conf c;
    struct lx_registry *reg;

    conf_init(&c, false);
    server(&c.servers[0][0], "http://[::1]:8001", "::1", 8001);
    reg = build(&c, NULL);
    assert_string_equal(reg->pools[0].nodes[0]->host_header, "[::1]:8001");
    assert_string_equal(reg->pools[0].nodes[0]->host, "::1");
    drop(reg);
}

static void test_registry_unknown_strategy(void **state)
{
    struct test_conf c;
    char err[256] = "";

    conf_init(&c, true);
    c.pools[1].strategy = "fastest";
    assert_null(lx_router_registry_new(&c.conf, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "unknown strategy"));
    assert_non_null(strstr(err, "fastest"));
    /* The global default is checked too. */
    conf_init(&c, false);
    c.conf.strategy = "nope";
    err[0] = '\0';
    assert_null(lx_router_registry_new(&c.conf, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "nope"));
}

/* Built without route/, a registry names its strategies and frees cleanly;
 * attaching gives every pool its strategy, and fails on an unknown name. */
static void test_registry_build_then_attach(void **state)
{
    struct test_conf c;
    struct lx_registry *reg;
    char err[256] = "";

    conf_init(&c, true);
    reg = lx_registry_build(&c.conf, NULL);
    assert_string_equal(reg->pools[0].strategy_name, "round_robin");
    assert_string_equal(reg->pools[1].strategy_name, "least_loaded");
    for (size_t i = 0; i < reg->n_pools; i++) {
        assert_null(reg->pools[i].strategy);
        assert_null(reg->pools[i].strategy_state);
        assert_null(reg->pools[i].strategy_free);
    }
    lx_registry_unref(reg);

    reg = lx_registry_build(&c.conf, NULL);
    assert_int_equal(lx_router_attach(reg, err, sizeof(err)), 0);
    assert_string_equal(reg->pools[1].strategy->name, "least_loaded");
    lx_registry_unref(reg);

    /* The first pool is attached before the second fails: freed all the same. */
    c.pools[1].strategy = "fastest";
    reg = lx_registry_build(&c.conf, NULL);
    assert_int_equal(lx_router_attach(reg, err, sizeof(err)), LX_EINVAL);
    assert_string_equal(err, "models.*.strategy: unknown strategy \"fastest\"");
    assert_non_null(reg->pools[0].strategy_state);
    lx_registry_unref(reg);
}

/* A reload carries over unchanged nodes with their state. */
static void test_registry_reuse_unchanged(void **state)
{
    struct test_conf c;
    struct lx_registry *a, *b;
    struct lx_node *n0, *n2;

    conf_init(&c, true);
    a = build(&c, NULL);
    n0 = a->pools[0].nodes[0];
    n2 = a->pools[0].nodes[2];
    atomic_store(&n0->in_flight, 4);
    atomic_store(&n0->ewma_ttfb_us, 1234);
    atomic_store(&n2->healthy, false);
    b = build(&c, a);
    assert_ptr_equal(b->pools[0].nodes[0], n0);
    assert_ptr_equal(b->pools[0].nodes[1], a->pools[0].nodes[1]);
    assert_ptr_equal(b->pools[0].nodes[2], n2);
    assert_ptr_equal(b->pools[1].nodes[0], a->pools[1].nodes[0]);
    assert_int_equal(atomic_load(&n0->refs), 2);
    assert_int_equal(atomic_load(&b->pools[0].nodes[0]->in_flight), 4);
    assert_int_equal(atomic_load(&b->pools[0].nodes[0]->ewma_ttfb_us), 1234);
    assert_false(atomic_load(&b->pools[0].nodes[2]->healthy));
    /* The old snapshot goes; the nodes stay with the new one. */
    drop(a);
    assert_int_equal(atomic_load(&n0->refs), 1);
    assert_string_equal(b->pools[0].nodes[0]->url, "http://10.0.0.1:8000");
    drop(b);
}

/* Any change to how a node is reached or weighted makes a new node. */
static void test_registry_no_reuse_when_changed(void **state)
{
    enum { WEIGHT, URL, KEY_CHANGED, KEY_ADDED, KEY_REMOVED, NAME, MAXC, POOL, N_CASES };

    for (int k = 0; k < N_CASES; k++) {
        struct test_conf c;
        struct lx_registry *a, *b;
        size_t changed = k == KEY_CHANGED || k == KEY_REMOVED ? 2 : 0;

        conf_init(&c, false);
        a = build(&c, NULL);
        switch (k) {
        case WEIGHT:
            c.servers[0][0].weight = 2;
            break;
        case URL:
            server(&c.servers[0][0], "http://10.0.0.1:8001", "10.0.0.1", 8001);
            break;
        case KEY_CHANGED:
            c.servers[0][2].api_key = "sk-4";
            break;
        case KEY_ADDED:
            c.servers[0][0].api_key = "sk-new";
            break;
        case KEY_REMOVED:
            c.servers[0][2].api_key = NULL;
            break;
        case NAME:
            c.servers[0][0].name = "renamed";
            break;
        case MAXC:
            c.servers[0][0].max_concurrency = 5;
            break;
        case POOL:
            c.pools[0].model = "other";
            break;
        }
        b = build(&c, a);
        for (size_t i = 0; i < 3; i++) {
            bool reused = b->pools[0].nodes[i] == a->pools[0].nodes[i];

            if (k == POOL || i == changed) {
                if (reused)
                    fail_msg("case %d: node %zu reused", k, i);
            } else if (!reused) {
                fail_msg("case %d: node %zu not reused", k, i);
            }
        }
        if (k == KEY_CHANGED)
            assert_string_equal(b->pools[0].nodes[2]->auth_header, "Bearer sk-4");
        if (k == KEY_REMOVED)
            assert_null(b->pools[0].nodes[2]->auth_header);
        drop(a);
        drop(b);
    }
}

/* An API key of <len> 'k's, ending in <last>. */
static void long_key(char *key, size_t len, char last)
{
    memset(key, 'k', len);
    key[len - 1] = last;
    key[len] = '\0';
}

/* The Authorization header carries the whole key, however long (JWTs and
 * some gateways' keys run past 500 characters). */
static void test_long_api_key_not_truncated(void **state)
{
    struct test_conf c;
    struct lx_registry *a;
    char key[801], want[820];

    long_key(key, 800, 'k');
    conf_init(&c, false);
    c.servers[0][0].api_key = key;
    a = build(&c, NULL);
    snprintf(want, sizeof(want), "Bearer %s", key);
    /* Lengths first: a failure prints two numbers, not 1,600 characters. */
    assert_int_equal(strlen(a->pools[0].nodes[0]->auth_header), strlen(want));
    assert_string_equal(a->pools[0].nodes[0]->auth_header, want);
    drop(a);
}

/* A reload that changes a long key only near its end makes a new node (the
 * old one would keep sending the old key). */
static void test_long_api_key_change_not_reused(void **state)
{
    struct test_conf c;
    struct lx_registry *a, *b;
    char key[801], key2[801];

    long_key(key, 800, 'k');
    long_key(key2, 800, 'X');
    conf_init(&c, false);
    c.servers[0][0].api_key = key;
    a = build(&c, NULL);
    c.servers[0][0].api_key = key2;
    b = build(&c, a);
    assert_ptr_not_equal(b->pools[0].nodes[0], a->pools[0].nodes[0]);
    /* The unchanged nodes are still carried over. */
    assert_ptr_equal(b->pools[0].nodes[1], a->pools[0].nodes[1]);
    drop(a);
    drop(b);
}

static void test_node_refcount(void **state)
{
    struct lx_node *n = make_node();

    assert_int_equal(atomic_load(&n->refs), 1);
    assert_ptr_equal(lx_node_ref(n), n);
    assert_int_equal(atomic_load(&n->refs), 2);
    lx_node_unref(n);
    assert_int_equal(atomic_load(&n->refs), 1);
    lx_node_unref(n);
    lx_node_unref(NULL);
}

/* ---- EWMA ------------------------------------------------------------- */

static void test_ewma_success(void **state)
{
    struct lx_node *n = make_node();
    uint64_t before, after;

    atomic_store(&n->consecutive_failures, 2);
    before = lx_now_ms();
    lx_node_report_success(n, 1000);
    after = lx_now_ms();
    /* The first sample is the average. */
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1000);
    assert_true(atomic_load(&n->ttfb_sample_ms) >= before);
    assert_true(atomic_load(&n->ttfb_sample_ms) <= after);
    assert_int_equal(atomic_load(&n->consecutive_failures), 0);
    /* Then 0.7 old + 0.3 new, in integers. */
    lx_node_report_success(n, 2000);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1300);
    lx_node_report_success(n, 2000);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1510);
    lx_node_report_success(n, 0);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1057);
    /* Converges to a steady value. */
    for (int i = 0; i < 100; i++)
        lx_node_report_success(n, 50000);
    assert_true(atomic_load(&n->ewma_ttfb_us) >= 49990);
    assert_true(atomic_load(&n->ewma_ttfb_us) <= 50000);
    /* No overflow with a huge sample on a huge average. */
    atomic_store(&n->ewma_ttfb_us, 600000000);
    lx_node_report_success(n, 600000000);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 600000000);
    lx_node_unref(n);
}

/* The shared EWMA helper (also used for time to first streamed byte). */
static void test_ewma_update(void **state)
{
    atomic_uint_fast64_t v;

    atomic_init(&v, 0);
    lx_ewma_update(&v, 400);
    assert_int_equal(atomic_load(&v), 400);
    lx_ewma_update(&v, 100);
    assert_int_equal(atomic_load(&v), 310);
    lx_ewma_update(&v, 1000);
    assert_int_equal(atomic_load(&v), 517);
    atomic_store(&v, 0);
    lx_ewma_update(&v, 0);
    assert_int_equal(atomic_load(&v), 1);
}

/* A zero first sample still counts as a sample (0 means "none"). */
static void test_ewma_zero_sample(void **state)
{
    struct lx_node *n = make_node();

    lx_node_report_success(n, 0);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1);
    lx_node_report_success(n, 0);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 1);
    lx_node_unref(n);
}

static void test_failure_doubles_ewma(void **state)
{
    struct lx_node *n = make_node();
    const char *why = "connect refused";

    lx_node_set_policy(10000, 1000, 8000, 100); /* no ejection here */
    lx_node_report_failure(n, why);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 100000); /* no sample: 100 ms */
    assert_int_equal(atomic_load(&n->failures_total), 1);
    assert_ptr_equal(atomic_load(&n->last_error), why);
    atomic_store(&n->ewma_ttfb_us, 30000);
    lx_node_report_failure(n, why);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 100000); /* at least 100 ms */
    atomic_store(&n->ewma_ttfb_us, 200000);
    lx_node_report_failure(n, why);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 400000);
    atomic_store(&n->ewma_ttfb_us, 50000000);
    lx_node_report_failure(n, why);
    assert_int_equal(atomic_load(&n->ewma_ttfb_us), 60000000); /* at most 60 s */
    assert_int_equal(atomic_load(&n->failures_total), 4);
    assert_int_equal(atomic_load(&n->consecutive_failures), 4);
    assert_int_equal(atomic_load(&n->ejected_until_ms), 0);
    lx_node_unref(n);
}

/* ---- ejection --------------------------------------------------------- */

/* Fails <n> <times> times; checks that the node was (re-)ejected by one of
 * those calls for <cool_ms>. */
static void fail_until_ejected(struct lx_node *n, int times, uint64_t cool_ms)
{
    uint64_t before = lx_now_ms(), after, until;

    for (int i = 0; i < times; i++)
        lx_node_report_failure(n, "5xx");
    after = lx_now_ms();
    until = atomic_load(&n->ejected_until_ms);
    if (until < before + cool_ms || until > after + cool_ms)
        fail_msg("ejected until %llu, want %llu + [0, %llu]", (unsigned long long)until,
                 (unsigned long long)(before + cool_ms), (unsigned long long)(after - before));
    assert_false(lx_node_is_eligible(n));
    assert_false(lx_node_is_up(n, after));
    assert_true(lx_node_is_up(n, until));
    /* Slow start begins when the cooldown ends. */
    assert_int_equal(atomic_load(&n->up_since_ms), until);
}

/* The cooldown is over (as if its time had passed). */
static void expire(struct lx_node *n)
{
    atomic_store(&n->ejected_until_ms, 1);
    assert_true(lx_node_is_eligible(n));
}

static void test_ejection_threshold_and_doubling(void **state)
{
    struct lx_node *n = make_node();
    uint64_t until;

    lx_node_set_policy(10000, 1000, 8000, 3);
    lx_node_report_failure(n, "5xx");
    lx_node_report_failure(n, "5xx");
    assert_int_equal(atomic_load(&n->ejected_until_ms), 0);
    assert_true(lx_node_is_eligible(n));
    fail_until_ejected(n, 1, 1000);
    assert_int_equal(atomic_load(&n->ejections), 1);
    /* Failures while ejected (requests already in flight) do not extend it. */
    until = atomic_load(&n->ejected_until_ms);
    lx_node_report_failure(n, "5xx");
    assert_int_equal(atomic_load(&n->ejected_until_ms), until);
    assert_int_equal(atomic_load(&n->ejections), 1);
    /* Still failing after each cooldown: 2 s, 4 s, 8 s, then capped at 8 s. */
    expire(n);
    fail_until_ejected(n, 3, 2000);
    expire(n);
    fail_until_ejected(n, 3, 4000);
    expire(n);
    fail_until_ejected(n, 3, 8000);
    expire(n);
    fail_until_ejected(n, 3, 8000);
    lx_node_unref(n);
}

static void test_ejection_resets_on_success(void **state)
{
    struct lx_node *n = make_node();

    lx_node_set_policy(10000, 1000, 60000, 3);
    fail_until_ejected(n, 3, 1000);
    expire(n);
    fail_until_ejected(n, 3, 2000);
    expire(n);
    lx_node_report_success(n, 5000);
    assert_int_equal(atomic_load(&n->ejections), 0);
    assert_int_equal(atomic_load(&n->consecutive_failures), 0);
    assert_null(atomic_load(&n->last_error));
    /* A success breaks the run: two more failures are not enough. */
    lx_node_report_failure(n, "5xx");
    lx_node_report_failure(n, "5xx");
    assert_true(lx_node_is_eligible(n));
    /* And the next ejection starts from the base cooldown again. */
    fail_until_ejected(n, 1, 1000);
    lx_node_unref(n);
}

/* eject_base 0 turns passive ejection off. */
static void test_ejection_off(void **state)
{
    struct lx_node *n = make_node();

    lx_node_set_policy(10000, 0, 60000, 1);
    for (int i = 0; i < 10; i++)
        lx_node_report_failure(n, "5xx");
    assert_int_equal(atomic_load(&n->ejected_until_ms), 0);
    assert_true(lx_node_is_eligible(n));
    assert_int_equal(atomic_load(&n->failures_total), 10);
    lx_node_unref(n);
}

/* ---- health ----------------------------------------------------------- */

static void test_set_healthy_transitions(void **state)
{
    struct lx_node *n = make_node();
    uint64_t before, after, since;

    lx_node_set_policy(10000, 1000, 8000, 3);
    fail_until_ejected(n, 3, 1000);
    lx_node_set_healthy(n, false, "probe: connection refused");
    assert_false(atomic_load(&n->healthy));
    assert_string_equal(atomic_load(&n->last_error), "probe: connection refused");
    assert_false(lx_node_is_eligible(n));
    assert_false(lx_node_is_up(n, UINT64_MAX));
    /* Still down, another reason: the reason follows. */
    since = atomic_load(&n->state_since_ms);
    lx_node_set_healthy(n, false, "probe: timeout");
    assert_string_equal(atomic_load(&n->last_error), "probe: timeout");
    assert_int_equal(atomic_load(&n->state_since_ms), since);
    /* Back: slow start from now, ejection and failure counts cleared. */
    before = lx_now_ms();
    lx_node_set_healthy(n, true, NULL);
    after = lx_now_ms();
    assert_true(atomic_load(&n->healthy));
    assert_true(atomic_load(&n->up_since_ms) >= before);
    assert_true(atomic_load(&n->up_since_ms) <= after);
    assert_int_equal(atomic_load(&n->ejected_until_ms), 0);
    assert_int_equal(atomic_load(&n->consecutive_failures), 0);
    assert_int_equal(atomic_load(&n->ejections), 0);
    assert_null(atomic_load(&n->last_error));
    assert_true(lx_node_is_eligible(n));
    assert_true(atomic_load(&n->state_since_ms) >= since);
    /* Healthy again while healthy: no new slow start. */
    since = atomic_load(&n->up_since_ms);
    atomic_store(&n->up_since_ms, since - 5);
    lx_node_set_healthy(n, true, NULL);
    assert_int_equal(atomic_load(&n->up_since_ms), since - 5);
    lx_node_unref(n);
}

static void test_is_eligible(void **state)
{
    struct lx_node *n = make_node();

    assert_true(lx_node_is_eligible(n));
    atomic_store(&n->drained, true);
    assert_false(lx_node_is_eligible(n));
    /* Drained is not up: the same verdict in /health, /stats and routing. */
    assert_false(lx_node_is_up(n, lx_now_ms()));
    assert_int_equal(lx_node_state(n, lx_now_ms()), LX_NODE_DRAINED);
    atomic_store(&n->drained, false);
    n->max_concurrency = 2;
    atomic_store(&n->in_flight, 1);
    assert_true(lx_node_is_eligible(n));
    atomic_store(&n->in_flight, 2);
    assert_false(lx_node_is_eligible(n));
    atomic_store(&n->in_flight, 3);
    assert_false(lx_node_is_eligible(n));
    n->max_concurrency = 0; /* unlimited */
    atomic_store(&n->in_flight, 100000);
    assert_true(lx_node_is_eligible(n));
    atomic_store(&n->in_flight, 0);
    atomic_store(&n->ejected_until_ms, lx_now_ms() + 60000);
    assert_false(lx_node_is_eligible(n));
    atomic_store(&n->ejected_until_ms, 0);
    atomic_store(&n->healthy, false);
    assert_false(lx_node_is_eligible(n));
    lx_node_unref(n);
}

/* ---- slow start ------------------------------------------------------- */

static void test_effective_weight_ramp(void **state)
{
    struct lx_node *n = make_node();
    const uint64_t t = 1000000;

    n->weight = 4;
    lx_node_set_policy(10000, 1000, 8000, 3);
    /* Never recovered: full weight. */
    assert_true(lx_node_effective_weight(n, t) == 4.0);
    atomic_store(&n->up_since_ms, t);
    assert_true(lx_node_effective_weight(n, t) == 4.0 * 0.05); /* floor 5% */
    assert_true(lx_node_effective_weight(n, t + 100) == 4.0 * 0.05);
    assert_true(lx_node_effective_weight(n, t + 1000) == 4.0 * 0.1);
    assert_true(lx_node_effective_weight(n, t + 2500) == 1.0);
    assert_true(lx_node_effective_weight(n, t + 5000) == 2.0);
    assert_true(lx_node_effective_weight(n, t + 9999) < 4.0);
    assert_true(lx_node_effective_weight(n, t + 10000) == 4.0);
    assert_true(lx_node_effective_weight(n, t + 99999) == 4.0);
    /* Before the start (an ejection's cooldown sets it in the future). */
    assert_true(lx_node_effective_weight(n, t - 500) == 4.0 * 0.05);
    /* Monotonic over the ramp. */
    for (uint64_t d = 0; d < 10000; d += 250)
        assert_true(lx_node_effective_weight(n, t + d) <= lx_node_effective_weight(n, t + d + 250));
    /* Slow start off. */
    lx_node_set_policy(0, 1000, 8000, 3);
    assert_true(lx_node_effective_weight(n, t) == 4.0);
    lx_node_unref(n);
}

/* A recovered node ramps from the moment set_healthy saw it back. */
static void test_recovery_starts_slow_start(void **state)
{
    struct lx_node *n = make_node();
    uint64_t since;

    lx_node_set_policy(10000, 1000, 8000, 3);
    lx_node_set_healthy(n, false, "down");
    lx_node_set_healthy(n, true, NULL);
    since = atomic_load(&n->up_since_ms);
    assert_true(since > 0);
    assert_true(lx_node_effective_weight(n, since) == 0.05);
    assert_true(lx_node_effective_weight(n, since + 5000) == 0.5);
    assert_true(lx_node_effective_weight(n, since + 10000) == 1.0);
    lx_node_unref(n);
}


/* ---- state ------------------------------------------------------------ */

#define ASSERT_STATE(n, now, want)                                                             \
    do {                                                                                       \
        enum lx_node_state got_ = lx_node_state((n), (now));                                   \
        if (got_ != (want))                                                                    \
            fail_msg("state %s, want %s", lx_node_state_name(got_), lx_node_state_name(want)); \
        assert_int_equal(lx_node_is_up((n), (now)), lx_node_state_is_eligible(want));          \
    } while (0)

static void test_state_names(void **state)
{
    assert_string_equal(lx_node_state_name(LX_NODE_HEALTHY), "healthy");
    assert_string_equal(lx_node_state_name(LX_NODE_SLOW_START), "slow_start");
    assert_string_equal(lx_node_state_name(LX_NODE_EJECTED), "ejected");
    assert_string_equal(lx_node_state_name(LX_NODE_UNHEALTHY), "unhealthy");
    assert_string_equal(lx_node_state_name(LX_NODE_DRAINED), "drained");
    assert_string_equal(lx_node_state_name(LX_NODE__N), "unknown");
    assert_true(lx_node_state_is_eligible(LX_NODE_HEALTHY));
    assert_true(lx_node_state_is_eligible(LX_NODE_SLOW_START));
    assert_false(lx_node_state_is_eligible(LX_NODE_EJECTED));
    assert_false(lx_node_state_is_eligible(LX_NODE_UNHEALTHY));
    assert_false(lx_node_state_is_eligible(LX_NODE_DRAINED));
    assert_string_equal(lx_pool_state_name(LX_POOL_OK), "ok");
    assert_string_equal(lx_pool_state_name(LX_POOL_DEGRADED), "degraded");
    assert_string_equal(lx_pool_state_name(LX_POOL_DOWN), "down");
}

/* Every transition of the state table, driven by the functions the rest of
 * llmux calls (failures, probes, drain), with <now> chosen per check. */
static void test_state_transitions(void **state)
{
    struct lx_node *n = make_node();
    uint64_t now = lx_now_ms(), until, up;

    lx_node_set_policy(10000, 1000, 8000, 3);
    ASSERT_STATE(n, now, LX_NODE_HEALTHY);
    /* healthy -> drained -> healthy */
    atomic_store(&n->drained, true);
    ASSERT_STATE(n, now, LX_NODE_DRAINED);
    atomic_store(&n->drained, false);
    ASSERT_STATE(n, now, LX_NODE_HEALTHY);
    /* healthy -> ejected (passive) -> slow_start (cooldown over, probes fine)
     * -> healthy (ramp done) */
    fail_until_ejected(n, 3, 1000);
    until = atomic_load(&n->ejected_until_ms);
    ASSERT_STATE(n, until - 1, LX_NODE_EJECTED);
    ASSERT_STATE(n, until, LX_NODE_SLOW_START);
    ASSERT_STATE(n, until + 9999, LX_NODE_SLOW_START);
    ASSERT_STATE(n, until + 10000, LX_NODE_HEALTHY);
    /* ejected and drained: ejected (it would not take traffic undrained) */
    atomic_store(&n->drained, true);
    ASSERT_STATE(n, until - 1, LX_NODE_EJECTED);
    /* drained in slow start: drained */
    ASSERT_STATE(n, until, LX_NODE_DRAINED);
    atomic_store(&n->drained, false);
    /* ejected, then a probe fails below the threshold: still ejected past
     * the cooldown, until a probe succeeds */
    lx_node_note_probe(n, 1);
    ASSERT_STATE(n, until, LX_NODE_EJECTED);
    ASSERT_STATE(n, until + 60000, LX_NODE_EJECTED);
    lx_node_note_probe(n, 2);
    ASSERT_STATE(n, until + 60000, LX_NODE_EJECTED);
    lx_node_note_probe(n, 0);
    ASSERT_STATE(n, until, LX_NODE_SLOW_START);
    /* a probe failure without an ejection behind it changes nothing (the
     * threshold decides) */
    lx_node_report_success(n, 1000);
    lx_node_note_probe(n, 1);
    ASSERT_STATE(n, until + 10000, LX_NODE_HEALTHY);
    /* ejected -> unhealthy (probes reached the threshold): unhealthy wins */
    fail_until_ejected(n, 3, 1000);
    until = atomic_load(&n->ejected_until_ms);
    lx_node_set_healthy(n, false, "probe: refused");
    ASSERT_STATE(n, until - 1, LX_NODE_UNHEALTHY);
    ASSERT_STATE(n, UINT64_MAX, LX_NODE_UNHEALTHY);
    /* unhealthy and drained: unhealthy */
    atomic_store(&n->drained, true);
    ASSERT_STATE(n, now, LX_NODE_UNHEALTHY);
    atomic_store(&n->drained, false);
    /* unhealthy -> slow_start (probe back; the ejection is forgotten) ->
     * healthy */
    lx_node_set_healthy(n, true, NULL);
    up = atomic_load(&n->up_since_ms);
    assert_int_equal(atomic_load(&n->probe_failures), 0);
    ASSERT_STATE(n, up, LX_NODE_SLOW_START);
    ASSERT_STATE(n, up + 10000, LX_NODE_HEALTHY);
    /* healthy -> unhealthy directly */
    lx_node_set_healthy(n, false, "probe: timeout");
    ASSERT_STATE(n, up + 10000, LX_NODE_UNHEALTHY);
    /* Slow start off: back means healthy at once. */
    lx_node_set_policy(0, 1000, 8000, 3);
    lx_node_set_healthy(n, true, NULL);
    ASSERT_STATE(n, atomic_load(&n->up_since_ms), LX_NODE_HEALTHY);
    lx_node_unref(n);
}

/* An ejection held past its cooldown by a failed probe: the good probe
 * that ends it starts the slow start then, not at the cooldown's end. */
static void test_held_ejection_slow_starts_at_the_good_probe(void **state)
{
    struct lx_node *n = make_node();
    uint64_t before, after, up;

    lx_node_set_policy(10000, 1000, 8000, 3);
    fail_until_ejected(n, 3, 1000);
    lx_node_note_probe(n, 1);
    atomic_store(&n->ejected_until_ms, 1); /* the cooldown is over */
    atomic_store(&n->up_since_ms, 1);      /* so would the ramp be, from its end */
    ASSERT_STATE(n, lx_now_ms(), LX_NODE_EJECTED);
    assert_false(lx_node_is_eligible(n));
    lx_node_note_probe(n, 2);
    assert_int_equal(atomic_load(&n->up_since_ms), 1);
    before = lx_now_ms();
    lx_node_note_probe(n, 0);
    after = lx_now_ms();
    up = atomic_load(&n->up_since_ms);
    assert_true(up >= before && up <= after);
    ASSERT_STATE(n, up, LX_NODE_SLOW_START);
    ASSERT_STATE(n, up + 10000, LX_NODE_HEALTHY);
    assert_true(lx_node_is_eligible(n));
    /* Good probes go on: nothing restarts the ramp. */
    lx_node_note_probe(n, 0);
    assert_int_equal(atomic_load(&n->up_since_ms), up);
    lx_node_unref(n);
}

static void test_pool_state(void **state)
{
    struct test_conf c;
    struct lx_registry *reg;
    struct lx_pool *p;
    enum lx_node_state st[3];
    size_t up = 99;
    uint64_t now = lx_now_ms();

    lx_node_set_policy(0, 1000, 8000, 3);
    conf_init(&c, false);
    reg = build(&c, NULL);
    p = &reg->pools[0];
    assert_true(p->n_nodes >= 2 && p->n_nodes <= 3);
    assert_int_equal(lx_pool_state(p, now, st, &up), LX_POOL_OK);
    assert_int_equal(up, p->n_nodes);
    assert_int_equal(st[0], LX_NODE_HEALTHY);
    atomic_store(&p->nodes[0]->drained, true);
    assert_int_equal(lx_pool_state(p, now, st, &up), LX_POOL_DEGRADED);
    assert_int_equal(up, p->n_nodes - 1);
    assert_int_equal(st[0], LX_NODE_DRAINED);
    /* Every node drained, ejected or unhealthy: down. */
    for (size_t i = 1; i < p->n_nodes; i++)
        atomic_store(&p->nodes[i]->healthy, false);
    assert_int_equal(lx_pool_state(p, now, NULL, NULL), LX_POOL_DOWN);
    atomic_store(&p->nodes[1]->healthy, true);
    atomic_store(&p->nodes[1]->ejected_until_ms, now + 1000);
    assert_int_equal(lx_pool_state(p, now, st, &up), LX_POOL_DOWN);
    assert_int_equal(up, 0);
    assert_int_equal(st[1], LX_NODE_EJECTED);
    /* ... and the router agrees: no candidate. */
    assert_false(lx_node_is_eligible(p->nodes[0]));
    assert_false(lx_node_is_eligible(p->nodes[1]));
    /* Slow start counts as up. */
    atomic_store(&p->nodes[1]->ejected_until_ms, 0);
    lx_node_set_policy(10000, 1000, 8000, 3);
    atomic_store(&p->nodes[1]->up_since_ms, now);
    assert_int_equal(lx_pool_state(p, now, st, &up), LX_POOL_DEGRADED);
    assert_int_equal(st[1], LX_NODE_SLOW_START);
    assert_int_equal(up, 1);
    drop(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_registry_build, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_transitions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_ejection_slow_starts_at_the_good_probe, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pool_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_hedge_and_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_ipv6_host_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_unknown_strategy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_build_then_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_reuse_unchanged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_no_reuse_when_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_api_key_not_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_api_key_change_not_reused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_refcount, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ewma_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ewma_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ewma_zero_sample, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure_doubles_ewma, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ejection_threshold_and_doubling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ejection_resets_on_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ejection_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_healthy_transitions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_is_eligible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_effective_weight_ramp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recovery_starts_slow_start, setup, teardown),
    };

    lx_log_set_level(LX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
