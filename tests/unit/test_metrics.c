/*
 * test_metrics.c - label values that clients choose: bounded in number,
 * printable UTF-8 only, escaped, cut at a character boundary; the series
 * known at start (fixed label sets, and every node and configured model of
 * the registry the scrape is given) at zero from the first scrape and
 * following the registry; the retry budget, hedge and resume counters; the
 * endpoint table and the requests counted by endpoint.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "../../src/core/buf.h"
#include "../../src/http/api.h"
#include "../../src/nodes/node.h"
#include "../../src/obs/metrics.h"

/* The scrape with the series known from <reg> (may be NULL), as a
 * NUL-terminated string; caller frees with lx_buf_deinit. */
static const char *scrape_reg(struct lx_buf *out, const struct lx_registry *reg)
{
    lx_buf_init(out, 0);
    lx_metrics_render(out, reg);
    lx_buf_append(out, "", 1);
    return out->data;
}

static const char *scrape(struct lx_buf *out)
{
    return scrape_reg(out, NULL);
}

static void expect_line(const char *text, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\n%s\n", line);
    if (!strstr(text, want))
        fail_msg("no line [%s] in:\n%s", line, text);
}

static void expect_no_line(const char *text, const char *line)
{
    char want[512];

    snprintf(want, sizeof(want), "\n%s\n", line);
    if (strstr(text, want))
        fail_msg("unexpected line [%s]", line);
}

/* Sample lines (not # lines) that start with <prefix>. */
static int count_samples(const char *text, const char *prefix)
{
    int n = 0;
    size_t plen = strlen(prefix);

    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, plen) == 0)
            n++;
    return n;
}

/* A request answered with <status>, <latency_s> (< 0: none) and <prompt>
 * tokens (< 0: unknown), on <endpoint>; nothing else measured. */
static void request(struct lx_metrics *m, const char *model, int status, double latency_s,
                    int64_t prompt, enum lx_api endpoint)
{
    lx_metrics_request(m, &(struct lx_request_record){.model = model,
                                                      .status = status,
                                                      .latency_s = latency_s,
                                                      .ttft_s = -1,
                                                      .tokens_per_s = -1,
                                                      .prompt_tokens = prompt,
                                                      .completion_tokens = -1,
                                                      .endpoint = endpoint});
}

static const char *label(const char *name)
{
    static char out[128];

    lx_metrics_model_label(out, sizeof(out), name, strlen(name));
    return out;
}

/* Invalid or unprintable names never become a label. Runs first, so it
 * takes none of the process's slots. */
static void test_unprintable_names_are_other(void **state)
{
    static const char *const bad[] = {
        "a\nb",         "tab\there",        "\x7f", "\xc3",       "\xc0\xaf", "\xe0\x80\xaf",
        "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff", "ok\xe2\x82",
    };
    char longname[200];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_string_equal(label(bad[i]), "other");
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_string_equal(label(longname), "other");
    assert_string_equal(label(""), "other");
}

static void test_first_names_kept_then_other(void **state)
{
    char name[32];

    assert_string_equal(label("caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80"),
                        "caf\xc3\xa9-\xe2\x82\xac-\xf0\x9f\x98\x80");
    for (int i = 1; i < LX_METRICS_MAX_CLIENT_MODELS; i++) {
        snprintf(name, sizeof(name), "model-%d", i);
        assert_string_equal(label(name), name);
    }
    /* Seen before: still itself; new: other. */
    assert_string_equal(label("model-1"), "model-1");
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "late-%d", i);
        assert_string_equal(label(name), "other");
    }
    assert_string_equal(label("model-63"), "model-63");
}

/* 10,000 distinct names through the label and into requests: the series
 * count stays at the bound. Runs after the slots are taken. */
static void test_many_client_names_bounded(void **state)
{
    struct lx_metrics *m = lx_metrics_new();
    struct lx_buf out;
    const char *text;
    char name[32], lab[128];

    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "flood-%d", i);
        lx_metrics_model_label(lab, sizeof(lab), name, strlen(name));
        request(m, lab, 200, 0.01, 1, LX_API_CHAT_COMPLETIONS);
    }
    text = scrape(&out);
    assert_int_equal(count_samples(text, "llmux_requests_total{"), 1);
    expect_line(text, "llmux_requests_total{model=\"other\",status=\"200\"} 10000");
    expect_line(text, "llmux_tokens_total{model=\"other\",kind=\"prompt\"} 10000");
    expect_line(text, "llmux_request_latency_seconds_count{model=\"other\"} 10000");
    assert_null(strstr(text, "flood-"));
    lx_buf_deinit(&out);
    lx_metrics_free(m);
}

/* Backslash, quote and newline in a label value are escaped; any other
 * byte is written as it is. */
static void test_label_values_escaped(void **state)
{
    struct lx_metrics *m = lx_metrics_new();
    struct lx_buf out;
    const char *text;

    lx_metrics_node_request(m, "a\"b\\c\nd\xc3\xa9");
    text = scrape(&out);
    expect_line(text, "llmux_requests_per_node_total{node=\"a\\\"b\\\\c\\nd\xc3\xa9\"} 1");
    lx_buf_deinit(&out);
    lx_metrics_free(m);
}

/* A label value longer than 127 bytes is cut there, never inside a UTF-8
 * character, the same way for a node known from the registry and for one
 * recorded into: one series. */
static void test_long_labels_cut_at_a_character(void **state)
{
    struct lx_metrics *m = lx_metrics_new();
    char longname[300], want[400];
    struct lx_node node = {.name = longname};
    struct lx_node *nodes[] = {&node};
    struct lx_pool pool = {.model = "*", .nodes = nodes, .n_nodes = 1};
    struct lx_registry reg = {.pools = &pool, .n_pools = 1};
    struct lx_buf out;
    const char *text;
    size_t len = 0;

    /* "xy" then two-byte characters: byte 127 is the second of one, so the
     * cut is at 126. */
    longname[len++] = 'x';
    longname[len++] = 'y';
    while (len + 2 < sizeof(longname)) {
        longname[len++] = '\xc3';
        longname[len++] = '\xa9';
    }
    longname[len] = '\0';
    lx_metrics_node_failure(m, longname);
    text = scrape_reg(&out, &reg);
    snprintf(want, sizeof(want), "llmux_node_failures_total{node=\"%.126s\"} 1", longname);
    expect_line(text, want);
    assert_int_equal(count_samples(text, "llmux_node_failures_total{"), 1);
    lx_buf_deinit(&out);
    lx_metrics_free(m);
}

static void test_retry_counters(void **state)
{
    struct lx_metrics *a = lx_metrics_new(), *b = lx_metrics_new();
    struct lx_buf out;
    const char *text;

    /* Every series exists, at 0, before anything happened. */
    text = scrape(&out);
    expect_line(text, "# HELP llmux_retries_refused_total Retries, hedges and stream resumes "
                      "refused by the pool's retry budget.");
    expect_line(text, "# TYPE llmux_retries_refused_total counter");
    expect_line(text, "llmux_retries_refused_total 0");
    expect_line(text, "# TYPE llmux_hedges_total counter");
    expect_line(text, "llmux_hedges_total{outcome=\"started\"} 0");
    expect_line(text, "llmux_hedges_total{outcome=\"won\"} 0");
    expect_line(text, "llmux_hedges_total{outcome=\"lost\"} 0");
    expect_line(text, "# TYPE llmux_stream_resumes_total counter");
    expect_line(text, "llmux_stream_resumes_total{outcome=\"resumed\"} 0");
    expect_line(text, "llmux_stream_resumes_total{outcome=\"failed\"} 0");
    assert_non_null(strstr(text, "# HELP llmux_hedges_total "));
    assert_non_null(strstr(text, "# HELP llmux_stream_resumes_total "));
    lx_buf_deinit(&out);

    /* Counts of two workers' shards add up. */
    lx_metrics_retry_refused(a);
    lx_metrics_retry_refused(b);
    lx_metrics_retry_refused(b);
    lx_metrics_hedge(a, LX_HEDGE_STARTED);
    lx_metrics_hedge(b, LX_HEDGE_STARTED);
    lx_metrics_hedge(a, LX_HEDGE_WON);
    lx_metrics_hedge(b, LX_HEDGE_LOST);
    lx_metrics_resume(a, true);
    lx_metrics_resume(b, true);
    lx_metrics_resume(b, false);
    text = scrape(&out);
    expect_line(text, "llmux_retries_refused_total 3");
    expect_line(text, "llmux_hedges_total{outcome=\"started\"} 2");
    expect_line(text, "llmux_hedges_total{outcome=\"won\"} 1");
    expect_line(text, "llmux_hedges_total{outcome=\"lost\"} 1");
    expect_line(text, "llmux_stream_resumes_total{outcome=\"resumed\"} 2");
    expect_line(text, "llmux_stream_resumes_total{outcome=\"failed\"} 1");
    expect_line(text, "llmux_retries_total 0");
    lx_buf_deinit(&out);
    lx_metrics_free(a);
    lx_metrics_free(b);
}

/* Two pools sharing a node, and a catch-all pool: what a fresh gateway's
 * first scrape shows, at 0. */
static struct lx_node n1 = {.name = "http://n1:8000"}, n2 = {.name = "n2"},
                      n3 = {.name = "http://n3:8000"}, n4 = {.name = "n4"};

static void test_known_series_at_zero(void **state)
{
    struct lx_node *chat_nodes[] = {&n1, &n2}, *emb_nodes[] = {&n2, &n3}, *any_nodes[] = {&n1};
    struct lx_pool pools[] = {{.model = "chat", .nodes = chat_nodes, .n_nodes = 2},
                              {.model = "emb", .nodes = emb_nodes, .n_nodes = 2},
                              {.model = "*", .nodes = any_nodes, .n_nodes = 1}};
    struct lx_registry reg = {.pools = pools, .n_pools = 3};
    static const char *const kinds[] = {"connect", "timeout", "status_5xx", "protocol",
                                        "stream_broken"};
    struct lx_buf out;
    const char *text;
    char line[256];

    text = scrape_reg(&out, &reg);
    for (const char *const *node =
             (const char *const[]){"http://n1:8000", "n2", "http://n3:8000", NULL};
         *node; node++) {
        snprintf(line, sizeof(line), "llmux_requests_per_node_total{node=\"%s\"} 0", *node);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_node_failures_total{node=\"%s\"} 0", *node);
        expect_line(text, line);
        for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
            snprintf(line, sizeof(line), "llmux_upstream_errors_total{node=\"%s\",kind=\"%s\"} 0",
                     *node, kinds[k]);
            expect_line(text, line);
        }
        for (const char *const *sv = (const char *const[]){"false", "true", NULL}; *sv; sv++) {
            snprintf(line, sizeof(line),
                     "llmux_node_latency_seconds_bucket{node=\"%s\",stream=\"%s\",le=\"+Inf\"} 0",
                     *node, *sv);
            expect_line(text, line);
        }
        snprintf(line, sizeof(line), "llmux_node_time_to_first_token_seconds_count{node=\"%s\"} 0",
                 *node);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_node_inter_token_latency_seconds_count{node=\"%s\"} 0",
                 *node);
        expect_line(text, line);
    }
    /* n2 is in two pools, n1 in two: one series each. */
    assert_int_equal(count_samples(text, "llmux_requests_per_node_total{"), 3);
    assert_int_equal(count_samples(text, "llmux_upstream_errors_total{"), 3 * 5);
    for (const char *const *model = (const char *const[]){"chat", "emb", NULL}; *model; model++) {
        for (const char *const *st =
                 (const char *const[]){"200", "400", "429", "500", "502", "503", "504", NULL};
             *st; st++) {
            snprintf(line, sizeof(line), "llmux_requests_total{model=\"%s\",status=\"%s\"} 0",
                     *model, *st);
            expect_line(text, line);
        }
        snprintf(line, sizeof(line), "llmux_tokens_total{model=\"%s\",kind=\"prompt\"} 0", *model);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_tokens_total{model=\"%s\",kind=\"completion\"} 0",
                 *model);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_request_latency_seconds_count{model=\"%s\"} 0", *model);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_time_to_first_token_seconds_count{model=\"%s\"} 0",
                 *model);
        expect_line(text, line);
        snprintf(line, sizeof(line), "llmux_tokens_per_second_bucket{model=\"%s\",le=\"+Inf\"} 0",
                 *model);
        expect_line(text, line);
    }
    /* The catch-all pool's labels come from clients: none in advance. */
    assert_null(strstr(text, "model=\"*\""));
    /* Without labels: always. */
    expect_line(text, "llmux_queue_wait_seconds_bucket{le=\"0.005\"} 0");
    expect_line(text, "llmux_queue_wait_seconds_count 0");
    expect_line(text, "llmux_retries_total 0");
    for (const char *const *r =
             (const char *const[]){"auth", "queue_full", "queue_timeout", "no_healthy_node",
                                   "bad_request", "too_large", NULL};
         *r; r++) {
        snprintf(line, sizeof(line), "llmux_requests_rejected_total{reason=\"%s\"} 0", *r);
        expect_line(text, line);
    }
    lx_buf_deinit(&out);
}

/* The known series follow the registry each scrape is given; recorded
 * counts merge with them (one line) and outlive the node's removal. */
static void test_known_series_follow_the_registry(void **state)
{
    struct lx_metrics *m = lx_metrics_new();
    struct lx_node *before[] = {&n1, &n2}, *after[] = {&n1, &n4};
    struct lx_pool pool_before = {.model = "chat", .nodes = before, .n_nodes = 2};
    struct lx_pool pool_after = {.model = "chat2", .nodes = after, .n_nodes = 2};
    struct lx_registry reg_before = {.pools = &pool_before, .n_pools = 1};
    struct lx_registry reg_after = {.pools = &pool_after, .n_pools = 1};
    struct lx_buf out;
    const char *text;

    lx_metrics_node_request(m, "http://n1:8000");
    lx_metrics_node_request(m, "http://n1:8000");
    lx_metrics_node_request(m, "n2");
    lx_metrics_upstream_error(m, "n2", LX_FAIL_TIMEOUT);
    request(m, "chat", 200, 0.2, -1, LX_API_CHAT_COMPLETIONS);
    text = scrape_reg(&out, &reg_before);
    expect_line(text, "llmux_requests_per_node_total{node=\"http://n1:8000\"} 2");
    expect_line(text, "llmux_requests_per_node_total{node=\"n2\"} 1");
    assert_int_equal(count_samples(text, "llmux_requests_per_node_total{"), 2);
    expect_line(text, "llmux_upstream_errors_total{node=\"n2\",kind=\"timeout\"} 1");
    expect_line(text, "llmux_upstream_errors_total{node=\"n2\",kind=\"connect\"} 0");
    expect_line(text, "llmux_requests_total{model=\"chat\",status=\"200\"} 1");
    expect_line(text, "llmux_requests_total{model=\"chat\",status=\"502\"} 0");
    expect_line(text, "llmux_request_latency_seconds_bucket{model=\"chat\",le=\"0.25\"} 1");
    /* Every series once: no two equal keys. */
    assert_int_equal(count_samples(text, "llmux_requests_total{model=\"chat\",status=\"200\"}"), 1);
    lx_buf_deinit(&out);

    /* n2 removed (its counted series stay, its zero ones go), n4 added,
     * chat renamed chat2. */
    text = scrape_reg(&out, &reg_after);
    expect_line(text, "llmux_requests_per_node_total{node=\"n4\"} 0");
    expect_line(text, "llmux_upstream_errors_total{node=\"n4\",kind=\"stream_broken\"} 0");
    expect_line(text, "llmux_requests_per_node_total{node=\"n2\"} 1");
    expect_line(text, "llmux_upstream_errors_total{node=\"n2\",kind=\"timeout\"} 1");
    expect_no_line(text, "llmux_upstream_errors_total{node=\"n2\",kind=\"connect\"} 0");
    expect_no_line(text, "llmux_node_failures_total{node=\"n2\"} 0");
    expect_line(text, "llmux_requests_total{model=\"chat\",status=\"200\"} 1");
    expect_no_line(text, "llmux_requests_total{model=\"chat\",status=\"502\"} 0");
    expect_line(text, "llmux_requests_total{model=\"chat2\",status=\"502\"} 0");
    lx_buf_deinit(&out);
    lx_metrics_free(m);
}

/* Every path of the table maps to its endpoint, with or without a query;
 * anything else is "other". */
static void test_endpoint_table(void **state)
{
    static const char *const others[] = {
        "",           "/",           "/v1",           "/v1/chat/completions/", "/v1/chat",
        "/V1/models", "/v1/models/", "/v1/modelsx",   "/v1/chat/completionsx", "/tokenizer",
        "/health",    "/metrics",    "/admin/models", "?/v1/models",           "/v1/embeddings/x",
    };
    char buf[128];

    assert_int_equal(LX_API_OTHER, 0);
    assert_string_equal(lx_api_endpoints[LX_API_OTHER].path, "other");
    for (int i = LX_API_OTHER + 1; i < LX_API__N; i++) {
        const struct lx_api_endpoint *e = &lx_api_endpoints[i];

        assert_int_equal(strlen(e->path), e->path_len);
        assert_int_equal(lx_api_lookup(e->path, e->path_len), i);
        snprintf(buf, sizeof(buf), "%s?x=1&y=/v1/models", e->path);
        assert_int_equal(lx_api_lookup(buf, strlen(buf)), i);
        /* Not NUL-terminated: only <len> bytes are read. */
        snprintf(buf, sizeof(buf), "%sZZZ", e->path);
        assert_int_equal(lx_api_lookup(buf, e->path_len), i);
        for (int j = LX_API_OTHER + 1; j < i; j++)
            assert_string_not_equal(e->path, lx_api_endpoints[j].path);
    }
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        assert_int_equal(lx_api_lookup(others[i], strlen(others[i])), LX_API_OTHER);
    assert_int_equal(lx_api_lookup("/v1/models/m", 12), LX_API_MODELS);
    assert_int_equal(lx_api_lookup("/v1/models/org/m?x", 18), LX_API_MODELS);
    assert_int_equal(LX_API__N, 14); /* the 13 endpoints and other */
    assert_true(lx_api_has(LX_API_AUDIO_TRANSCRIPTIONS, LX_API_MULTIPART));
    assert_true(lx_api_has(LX_API_AUDIO_TRANSLATIONS, LX_API_MULTIPART));
    assert_false(lx_api_has(LX_API_EMBEDDINGS, LX_API_MULTIPART | LX_API_STREAM | LX_API_GET));
    assert_true(lx_api_has(LX_API_RESPONSES, LX_API_STREAM));
    assert_true(lx_api_has(LX_API_MODELS, LX_API_GET));
    assert_false(lx_api_has(LX_API_MODELS, LX_API_MODEL));
    for (int i = LX_API_OTHER + 1; i < LX_API__N; i++)
        if (i != LX_API_MODELS)
            assert_true(lx_api_has((enum lx_api)i, LX_API_MODEL));
}

/* Every endpoint and "other", by 2xx/4xx/5xx, at 0 from the start; a
 * request counts under its endpoint and status class. */
static void test_requests_by_endpoint(void **state)
{
    struct lx_metrics *m = lx_metrics_new();
    struct lx_buf out;
    const char *text;
    char line[256];

    text = scrape(&out);
    assert_int_equal(count_samples(text, "llmux_endpoint_requests_total{"), LX_API__N * 3);
    for (int i = 0; i < LX_API__N; i++) {
        snprintf(line, sizeof(line),
                 "llmux_endpoint_requests_total{endpoint=\"%s\",status_class=\"5xx\"} 0",
                 lx_api_endpoints[i].path);
        expect_line(text, line);
    }
    lx_buf_deinit(&out);

    request(m, "m", 200, 0.1, 3, LX_API_EMBEDDINGS);
    request(m, "m", 503, 0.1, -1, LX_API_EMBEDDINGS);
    request(m, "", 404, 0, -1, LX_API_OTHER);
    lx_metrics_endpoint(m, LX_API_MODELS, 200);
    lx_metrics_endpoint(m, LX_API_RESPONSES, 499);
    lx_metrics_endpoint(m, LX_API_RESPONSES, 302);
    lx_metrics_endpoint(m, LX_API_RESPONSES, 700);
    lx_metrics_endpoint(m, (enum lx_api)1000, 200);
    text = scrape(&out);
    expect_line(
        text, "llmux_endpoint_requests_total{endpoint=\"/v1/embeddings\",status_class=\"2xx\"} 1");
    expect_line(
        text, "llmux_endpoint_requests_total{endpoint=\"/v1/embeddings\",status_class=\"5xx\"} 1");
    expect_line(text, "llmux_endpoint_requests_total{endpoint=\"other\",status_class=\"4xx\"} 1");
    expect_line(text, "llmux_endpoint_requests_total{endpoint=\"other\",status_class=\"2xx\"} 1");
    expect_line(text,
                "llmux_endpoint_requests_total{endpoint=\"/v1/models\",status_class=\"2xx\"} 1");
    expect_line(text,
                "llmux_endpoint_requests_total{endpoint=\"/v1/responses\",status_class=\"4xx\"} 1");
    expect_line(text,
                "llmux_endpoint_requests_total{endpoint=\"/v1/responses\",status_class=\"3xx\"} 1");
    expect_line(
        text, "llmux_endpoint_requests_total{endpoint=\"/v1/responses\",status_class=\"other\"} 1");
    expect_line(text, "llmux_tokens_total{model=\"m\",kind=\"prompt\"} 3");
    lx_buf_deinit(&out);
    lx_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unprintable_names_are_other),
        cmocka_unit_test(test_first_names_kept_then_other),
        cmocka_unit_test(test_many_client_names_bounded),
        cmocka_unit_test(test_label_values_escaped),
        cmocka_unit_test(test_long_labels_cut_at_a_character),
        cmocka_unit_test(test_retry_counters),
        cmocka_unit_test(test_known_series_at_zero),
        cmocka_unit_test(test_known_series_follow_the_registry),
        cmocka_unit_test(test_endpoint_table),
        cmocka_unit_test(test_requests_by_endpoint),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
