/*
 * test_conf.c - the configuration module: defaults, each layer over the one
 * before (file < .env < environment < flags), .env syntax, JSON file errors
 * with their paths, VLLM_NODES pools, --help/--version/--check-config, the
 * masked dump, and that a failed load leaves the caller's struct untouched.
 *
 * Every test passes an explicit envp and .env path, so neither the real
 * environment nor a .env in the working directory can change the outcome.
 * Temporary files are made with mkstemps under /tmp and removed in teardown.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/conf/conf.h"
#include "../../src/conf/conf_internal.h"
#include "../../src/core/lx.h"

#define NO_DOTENV "/nonexistent-llmux-test-dir/.env"

static char errbuf[1024];
static char *tmp_paths[64];
static size_t n_tmp;

static int setup(void **state)
{
    errbuf[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    for (size_t i = 0; i < n_tmp; i++) {
        unlink(tmp_paths[i]);
        free(tmp_paths[i]);
    }
    n_tmp = 0;
    return 0;
}

/* A temporary file holding <text>; removed in teardown. Returns its path. */
static const char *tmp_file(const char *suffix, const char *text)
{
    char path[64];
    int fd;

    snprintf(path, sizeof(path), "/tmp/llmux-test-conf-XXXXXX%s", suffix);
    fd = mkstemps(path, (int)strlen(suffix));
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_true(n_tmp < sizeof(tmp_paths) / sizeof(tmp_paths[0]));
    tmp_paths[n_tmp] = strdup(path);
    return tmp_paths[n_tmp++];
}

/* Loads with argv = {"llmux", args...}; <args> and <envp> are NULL-terminated. */
static enum lx_conf_result load(struct lx_conf *c, const char **args, const char **envp,
                                const char *dotenv)
{
    char *argv[32] = {"llmux"};
    const char *no_env[] = {NULL};
    int argc = 1;

    for (; args && *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    return lx_conf_load(c, argc, argv, (char **)(envp ? envp : no_env), dotenv ? dotenv : NO_DOTENV,
                        errbuf, sizeof(errbuf));
}

/* Expects a failed load whose message contains <want>. */
static void expect_error(const char **args, const char **envp, const char *dotenv, const char *want)
{
    struct lx_conf c;
    enum lx_conf_result r = load(&c, args, envp, dotenv);

    if (r != LX_CONF_ERROR || !strstr(errbuf, want))
        fail_msg("want error containing [%s], got result %d, err [%s]", want, r, errbuf);
}

static void expect_ok(struct lx_conf *c, const char **args, const char **envp, const char *dotenv)
{
    enum lx_conf_result r = load(c, args, envp, dotenv);

    if (r != LX_CONF_OK)
        fail_msg("want OK, got %d: %s", r, errbuf);
}

/* The JSON file error with its path prefix: "<file>: <rest>". */
static void expect_file_error(const char *json, const char *rest)
{
    const char *path = tmp_file(".json", json);
    const char *args[] = {"--config", path, NULL};
    char want[512];

    snprintf(want, sizeof(want), "%s%s", path, rest);
    expect_error(args, NULL, NULL, want);
}

static void test_defaults(void **state)
{
    const char *env[] = {"VLLM_NODES=http://a:8000", NULL};
    const struct lx_conf_server *s;
    struct lx_conf c;

    expect_ok(&c, NULL, env, NULL);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 8000);
    assert_true(c.workers >= 1 && c.workers <= 256);
    {
        cpu_set_t set;

        assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
        assert_int_equal(c.workers, LX_MIN(256, CPU_COUNT(&set)));
    }
    assert_string_equal(c.strategy, "round_robin");
    assert_null(c.model_name);
    assert_true(c.connect_timeout_s == 10);
    assert_true(c.node_timeout_s == 120);
    assert_true(c.stream_idle_timeout_s == 120);
    assert_true(c.send_timeout_s == 60);
    assert_int_equal(c.max_connections, 16384);
    assert_true(c.queue_timeout_s == 30);
    assert_true(c.request_timeout_s == 30);
    assert_true(c.keepalive_timeout_s == 75);
    assert_true(c.shutdown_timeout_s == 30);
    assert_int_equal(c.max_retries, 2);
    assert_true(c.stream_resume);
    assert_true(c.hedge_after_s == 0);
    assert_true(c.retry_budget_percent == 20);
    assert_true(c.retry_budget_min_per_s == 1);
    assert_true(c.health_check_interval_s == 15);
    assert_int_equal(c.health_failure_threshold, 3);
    assert_int_equal(c.health_recovery_threshold, 1);
    assert_string_equal(c.health_check_path, "/health");
    assert_true(c.metrics_update_interval_s == 10);
    assert_int_equal(c.max_concurrent_requests, 256);
    assert_int_equal(c.max_queue_size, 1024);
    assert_true(c.max_body_bytes == 32u << 20);
    assert_true(c.max_header_bytes == 64u << 10);
    assert_null(c.auth_token);
    assert_null(c.admin_token);
    assert_string_equal(c.log_level, "info");
    assert_null(c.access_log);
    assert_null(c.config_path);

    assert_int_equal(c.n_pools, 1);
    assert_string_equal(c.pools[0].model, "*");
    assert_string_equal(c.pools[0].strategy, "round_robin");
    assert_null(c.pools[0].upstream_model);
    assert_true(c.pools[0].metrics_update_interval_s == 0);
    assert_false(c.pools[0].has_hedge_after);
    assert_int_equal(c.pools[0].n_servers, 1);
    s = &c.pools[0].servers[0];
    assert_string_equal(s->url, "http://a:8000");
    assert_string_equal(s->name, "http://a:8000");
    assert_string_equal(s->host, "a");
    assert_int_equal(s->port, 8000);
    assert_string_equal(s->base_path, "");
    assert_int_equal(s->weight, 1);
    assert_int_equal(s->max_concurrency, 0);
    assert_null(s->api_key);
    lx_conf_free(&c);
}

/* Every default in the settings table parses, and parsing it alone gives the
 * value a load with nothing set has; printed back it is the same text, so
 * --help shows what is stored. Rows without one leave their field unset. */
static void test_defaults_roundtrip(void **state)
{
    const char *env[] = {"VLLM_NODES=http://a:8000", NULL};
    struct lx_conf fresh;
    size_t n_checked = 0;

    expect_ok(&fresh, NULL, env, NULL);
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];
        const char *name = s->env ? s->env : s->flag;
        const char *want = (const char *)&fresh + s->off;
        struct lx_conf_build b;
        const char *got;
        char text[64];

        if (s->off == LX_CONF_NOFIELD) {
            assert_null(s->def);
            continue;
        }
        if (!s->def) {
            if (s->kind != LX_CONF_K_INT && *(char *const *)(const void *)want)
                fail_msg("%s: no default, but a fresh config has a value", name);
            continue;
        }
        memset(&b, 0, sizeof(b));
        if (lx_conf_set_text(&b, s, s->def, "default", errbuf, sizeof(errbuf)) < 0)
            fail_msg("%s: the default \"%s\" does not parse: %s", name, s->def, errbuf);
        got = (const char *)&b.conf + s->off;
        switch (s->kind) {
        case LX_CONF_K_INT:
            assert_int_equal(*(const int *)(const void *)got, *(const int *)(const void *)want);
            snprintf(text, sizeof(text), "%d", *(const int *)(const void *)got);
            break;
        case LX_CONF_K_U64:
            assert_true(*(const uint64_t *)(const void *)got ==
                        *(const uint64_t *)(const void *)want);
            snprintf(text, sizeof(text), "%" PRIu64, *(const uint64_t *)(const void *)got);
            break;
        case LX_CONF_K_SECS:
        case LX_CONF_K_SECS_OFF:
        case LX_CONF_K_FLOAT:
        case LX_CONF_K_NUM:
            assert_true(*(const double *)(const void *)got == *(const double *)(const void *)want);
            snprintf(text, sizeof(text), "%g", *(const double *)(const void *)got);
            break;
        case LX_CONF_K_BOOL:
            assert_true(*(const bool *)(const void *)got == *(const bool *)(const void *)want);
            snprintf(text, sizeof(text), "%s", *(const bool *)(const void *)got ? "on" : "off");
            break;
        default:
            assert_non_null(*(char *const *)(const void *)got);
            assert_string_equal(*(char *const *)(const void *)got,
                                *(char *const *)(const void *)want);
            snprintf(text, sizeof(text), "%s", *(char *const *)(const void *)got);
            break;
        }
        if (strcmp(text, s->def) != 0)
            fail_msg("%s: the default \"%s\" is stored as \"%s\"", name, s->def, text);
        lx_conf_free(&b.conf);
        n_checked++;
    }
    assert_true(n_checked >= 25); /* the loop did run */
    lx_conf_free(&fresh);
}

static void test_no_nodes(void **state)
{
    expect_error(NULL, NULL, NULL,
                 "no nodes configured: set VLLM_NODES, --nodes or a config file with models");
    /* An empty models map configures nothing either. */
    {
        const char *file = tmp_file(".json", "{\"models\": {}}");

        expect_error((const char *[]){"--config", file, NULL}, NULL, NULL, "no nodes configured");
    }
}

/* The admin token must not be the clients' token. */
static void test_admin_token_differs(void **state)
{
    expect_error((const char *[]){"--nodes", "http://a:1", "--auth-token", "same",
                                  "--admin-token", "same", NULL},
                 NULL, NULL, "ADMIN_TOKEN must differ from AUTH_TOKEN");
}

/* Each layer overrides the one before: file < .env < environment < flags. */
static void test_layers(void **state)
{
    const char *file = tmp_file(".json", "{\"max_retries\": 3, \"node_timeout_seconds\": 11,"
                                         " \"workers\": 3, \"log_level\": \"debug\","
                                         " \"vllm_nodes\": \"http://file:1\"}");
    const char *dotenv = tmp_file(".env", "MAX_RETRIES=4\nNODE_TIMEOUT_SECONDS=12\n"
                                          "VLLM_NODES=http://dotenv:1\n");
    const char *env[] = {"MAX_RETRIES=5", "VLLM_NODES=http://env:1", NULL};
    const char *file_args[] = {"--config", file, NULL};
    const char *flag_args[] = {"--config", file, "--max-retries", "6", "--nodes=http://flag:1",
                               NULL};
    struct lx_conf c;

    expect_ok(&c, file_args, NULL, NULL);
    assert_int_equal(c.max_retries, 3);
    assert_true(c.node_timeout_s == 11);
    assert_string_equal(c.pools[0].servers[0].host, "file");
    assert_string_equal(c.config_path, file);
    lx_conf_free(&c);

    expect_ok(&c, file_args, NULL, dotenv);
    assert_int_equal(c.max_retries, 4);
    assert_true(c.node_timeout_s == 12);
    assert_string_equal(c.pools[0].servers[0].host, "dotenv");
    lx_conf_free(&c);

    expect_ok(&c, file_args, env, dotenv);
    assert_int_equal(c.max_retries, 5);
    assert_true(c.node_timeout_s == 12);
    assert_string_equal(c.pools[0].servers[0].host, "env");
    lx_conf_free(&c);

    expect_ok(&c, flag_args, env, dotenv);
    assert_int_equal(c.max_retries, 6);
    assert_true(c.node_timeout_s == 12);
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.log_level, "debug");
    assert_int_equal(c.n_pools, 1);
    assert_string_equal(c.pools[0].servers[0].host, "flag");
    lx_conf_free(&c);
}

static void test_empty_env_is_unset(void **state)
{
    const char *file =
        tmp_file(".json", "{\"auth_token\": \"from-file\", \"vllm_nodes\": [\"http://a:1\"]}");
    const char *dotenv = tmp_file(".env", "AUTH_TOKEN=from-dotenv\nMAX_RETRIES=7\n");
    const char *args[] = {"--config", file, NULL};
    const char *env[] = {"AUTH_TOKEN=", "MAX_RETRIES=", NULL};
    struct lx_conf c;

    /* A real variable wins over .env even when empty, and empty means unset. */
    expect_ok(&c, args, env, dotenv);
    assert_string_equal(c.auth_token, "from-file");
    assert_int_equal(c.max_retries, 2);
    lx_conf_free(&c);
}

static void test_dotenv_syntax(void **state)
{
    const char *dotenv = tmp_file(".env", "\xef\xbb\xbf# a comment\n"
                                          "\n"
                                          "   # indented comment\n"
                                          "export VLLM_NODES=http://a:1,http://b:2\r\n"
                                          "MODEL_NAME = my-model   # trailing comment\n"
                                          "AUTH_TOKEN='lit # $x \\n'  # comment\n"
                                          "ADMIN_TOKEN=\"q\\\"d\\\\x\\y\"\n"
                                          "ACCESS_LOG=/tmp/a#b\n"
                                          "HEALTH_CHECK_PATH=\"/h\\$x\"\n"
                                          "MAX_RETRIES=1\n"
                                          "MAX_RETRIES=3\n"
                                          "LOG_LEVEL=\n"
                                          "GATEWAY_HOST='[::1]'\n"
                                          "UNRELATED_KEY=whatever\n"
                                          "\texport\tWORKERS=2");
    struct lx_conf c;

    expect_ok(&c, NULL, NULL, dotenv);
    assert_int_equal(c.pools[0].n_servers, 2);
    assert_string_equal(c.pools[0].servers[1].url, "http://b:2");
    assert_string_equal(c.model_name, "my-model");
    assert_string_equal(c.pools[0].model, "my-model");
    assert_string_equal(c.auth_token, "lit # $x \\n");
    assert_string_equal(c.admin_token, "q\"d\\x\\y");
    assert_string_equal(c.access_log, "/tmp/a#b");
    assert_string_equal(c.health_check_path, "/h$x");
    assert_int_equal(c.max_retries, 3);
    assert_string_equal(c.log_level, "info");
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.workers, 2);
    lx_conf_free(&c);

    /* A multi-line value is read whole (and then no setting takes a newline). */
    dotenv = tmp_file(".env", "VLLM_NODES=http://a:1\nHEALTH_CHECK_PATH=\"/h\nx\"\nA='1\n2'\n");
    expect_error(NULL, NULL, dotenv, ":2: HEALTH_CHECK_PATH: contains control characters");
}

static void test_dotenv_errors(void **state)
{
    static const struct {
        const char *text;
        const char *want; /* after "<path>:" */
    } cases[] = {
        {"VLLM_NODES=http://a:1\n\nAUTH_TOKEN=\"abc\n", "3: unterminated double-quoted value"},
        {"AUTH_TOKEN='abc", "1: unterminated single-quoted value"},
        {"# c\nJUSTAKEY\n", "2: expected '=' after the key"},
        {"A=1\n=value\n", "2: expected KEY=VALUE"},
        {"1KEY=value\n", "1: expected KEY=VALUE"},
        {"A='x\ny'\nB=\"1\n\n2\"\nC\n", "6: expected '=' after the key"},
        {"AUTH_TOKEN=\"abc\" junk\n", "1: unexpected text after the closing quote"},
        {"VLLM_NODES=http://a:1\nMAX_RETRIES=x\n", "2: MAX_RETRIES: \"x\" is not an integer"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *path = tmp_file(".env", cases[i].text);
        char want[256];

        snprintf(want, sizeof(want), "%s:%s", path, cases[i].want);
        expect_error(NULL, NULL, path, want);
        teardown(state);
    }
}

static void test_dotenv_names_config(void **state)
{
    const char *file = tmp_file(".json", "{\"models\": {\"m\": {\"servers\": [\"http://x:9\"]}}}");
    char line[256];
    const char *dotenv;
    struct lx_conf c;

    snprintf(line, sizeof(line), "LLMUX_CONFIG=%s\n", file);
    dotenv = tmp_file(".env", line);
    expect_ok(&c, NULL, NULL, dotenv);
    assert_string_equal(c.config_path, file);
    assert_int_equal(c.n_pools, 1);
    assert_string_equal(c.pools[0].model, "m");
    lx_conf_free(&c);

    /* --config wins over LLMUX_CONFIG. */
    {
        const char *other = tmp_file(".json", "{\"vllm_nodes\": \"http://y:9\"}");
        const char *args[] = {"--config", other, NULL};

        expect_ok(&c, args, NULL, dotenv);
        assert_string_equal(c.pools[0].model, "*");
        lx_conf_free(&c);
    }
}

static void test_json_full(void **state)
{
    const char *file = tmp_file(
        ".json",
        "{\n"
        "  \"models\": {\n"
        "    \"gpt-4\": {\n"
        "      \"servers\": [\"http://node3:8000/\", {\"url\": \"http://node4:8000/v1/\","
        "        \"name\": \"n4\", \"weight\": 2, \"max_concurrency\": 64, \"api_key\": \"k4\"},"
        "        \"http://[fe80::1]\", \"http://10.0.0.1:81/a/b\"],\n"
        "      \"strategy\": \"least_connection\",\n"
        "      \"upstream_model\": \"mistralai/Mistral-7B-Instruct-v0.3\",\n"
        "      \"metrics_update_interval\": 5\n"
        "    },\n"
        "    \"gpt-3.5-turbo\": {\"servers\": [\"http://node1:8000\"]}\n"
        "  },\n"
        "  \"metrics_update_interval\": 10.5,\n"
        "  \"listen\": \"[::1]:0\",\n"
        "  \"workers\": 4,\n"
        "  \"strategy\": \"power_of_two\",\n"
        "  \"connect_timeout_seconds\": 1.5,\n"
        "  \"stream_idle_timeout_seconds\": 0,\n"
        "  \"max_queue_size\": 0,\n"
        "  \"max_body_bytes\": 1048576,\n"
        "  \"auth_token\": \"a\", \"admin_token\": null, \"access_log\": \"-\",\n"
        "  \"log_level\": \"warning\", \"health_check_path\": \"/v1/models\"\n"
        "}\n");
    const char *args[] = {"--config", file, NULL};
    const struct lx_conf_pool *p;
    const struct lx_conf_server *s;
    struct lx_conf c;

    expect_ok(&c, args, NULL, NULL);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 0);
    assert_int_equal(c.workers, 4);
    assert_string_equal(c.strategy, "power_of_two");
    assert_true(c.metrics_update_interval_s == 10.5);
    assert_true(c.connect_timeout_s == 1.5);
    assert_int_equal(c.max_queue_size, 0);
    assert_true(c.max_body_bytes == 1048576);
    assert_string_equal(c.auth_token, "a");
    assert_null(c.admin_token);
    assert_string_equal(c.access_log, "-");
    assert_string_equal(c.log_level, "warn");
    assert_string_equal(c.health_check_path, "/v1/models");

    assert_int_equal(c.n_pools, 2);
    p = lx_conf_pool_find(&c, "gpt-4", 5);
    assert_ptr_equal(p, &c.pools[0]);
    assert_string_equal(p->strategy, "least_loaded");
    assert_string_equal(p->upstream_model, "mistralai/Mistral-7B-Instruct-v0.3");
    assert_true(p->metrics_update_interval_s == 5);
    assert_int_equal(p->n_servers, 4);
    s = &p->servers[0];
    assert_string_equal(s->url, "http://node3:8000");
    assert_string_equal(s->name, "http://node3:8000");
    assert_string_equal(s->base_path, "");
    s = &p->servers[1];
    assert_string_equal(s->url, "http://node4:8000/v1");
    assert_string_equal(s->name, "n4");
    assert_string_equal(s->host, "node4");
    assert_int_equal(s->port, 8000);
    assert_string_equal(s->base_path, ""); /* vLLM's base URL: llmux adds /v1 itself */
    assert_int_equal(s->weight, 2);
    assert_int_equal(s->max_concurrency, 64);
    assert_string_equal(s->api_key, "k4");
    s = &p->servers[2];
    assert_string_equal(s->host, "fe80::1");
    assert_int_equal(s->port, 80);
    s = &p->servers[3];
    assert_string_equal(s->host, "10.0.0.1");
    assert_int_equal(s->port, 81);
    assert_string_equal(s->base_path, "/a/b");
    /* A pool without a strategy takes the global one. */
    assert_string_equal(c.pools[1].strategy, "power_of_two");
    assert_null(lx_conf_pool_find(&c, "gpt-4o", 6));
    /* The model is a slice, not a C string. */
    assert_ptr_equal(lx_conf_pool_find(&c, "gpt-4xyz", 5), &c.pools[0]);
    lx_conf_free(&c);
}

static void test_json_syntax_error(void **state)
{
    expect_file_error("{\n  \"workers\": 2,\n  \"models\": {,\n}\n", ":3:");
    expect_file_error("", ":1:");
    expect_file_error("[1, 2]", ": expected a JSON object at the top level, got an array");
    expect_file_error("{\"workers\": 2, \"workers\": 3}", ":1:");
    assert_non_null(strstr(errbuf, "duplicate object key"));
    expect_error((const char *[]){"--config", "/nonexistent-llmux-test.json", NULL}, NULL, NULL,
                 "/nonexistent-llmux-test.json: No such file or directory");
}

static void test_json_unknown_key(void **state)
{
    expect_file_error("{\"max_retry\": 1}",
                      ": max_retry: unknown key (did you mean \"max_retries\"?)");
    expect_file_error("{\"model\": {}}", ": model: unknown key (did you mean \"models\"?)");
    expect_file_error("{\"zzz\": 1}", ": zzz: unknown key");
    expect_file_error("{\"models\": {\"gpt-4\": {\"servers\": [\"http://a\"], \"strat\": 1}}}",
                      ": models.gpt-4.strat: unknown key");
    expect_file_error("{\"models\": {\"gpt-4\": {\"servers\": [\"http://a\", "
                      "{\"url\": \"http://b\", \"wieght\": 2}]}}}",
                      ": models.gpt-4.servers[1].wieght: unknown key");
    /* LLMUX_CONFIG is not a file setting. */
    expect_file_error("{\"llmux_config\": \"x\"}", ": llmux_config: unknown key");
}

static void test_json_wrong_type(void **state)
{
    expect_file_error(
        "{\"models\": {\"gpt-4\": {\"servers\": [\"http://a\", "
        "{\"url\": \"http://b\", \"weight\": \"2\"}]}}}",
        ": models.gpt-4.servers[1].weight: expected a positive integer, got a string");
    expect_file_error("{\"models\": {\"gpt-4\": {\"servers\": [\"http://a\", "
                      "{\"url\": \"http://b\", \"weight\": 0}]}}}",
                      ": models.gpt-4.servers[1].weight: expected a positive integer");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [{\"url\": \"http://b\", "
                      "\"max_concurrency\": -1}]}}}",
                      ": models.m.servers[0].max_concurrency: expected a non-negative integer");
    expect_file_error("{\"max_retries\": \"3\"}",
                      ": max_retries: expected an integer in 0..100, got a string");
    expect_file_error("{\"workers\": 2.5}",
                      ": workers: expected an integer in 1..256, got a number");
    expect_file_error("{\"node_timeout_seconds\": true}",
                      ": node_timeout_seconds: expected a number of seconds, got true");
    expect_file_error("{\"auth_token\": 5}", ": auth_token: expected a string or null");
    expect_file_error("{\"models\": []}", ": models: expected an object");
    expect_file_error("{\"models\": {\"m\": {\"servers\": \"http://a\"}}}",
                      ": models.m.servers: expected a non-empty array of servers, got a string");
    expect_file_error("{\"models\": {\"m\": {\"servers\": []}}}",
                      ": models.m.servers: expected a non-empty array of servers");
    expect_file_error("{\"models\": {\"m\": {\"strategy\": \"random\"}}}",
                      ": models.m: missing \"servers\"");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [{\"name\": \"x\"}]}}}",
                      ": models.m.servers[0]: missing \"url\"");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [42]}}}",
                      ": models.m.servers[0]: expected a URL string or an object, got an integer");
    expect_file_error("{\"gateway_port\": 65536}",
                      ": gateway_port: 65536 is out of range (0..65535)");
    expect_file_error("{\"strategy\": \"random\", \"routing_strategy\": \"random\"}",
                      ": routing_strategy: the same setting as \"strategy\", given twice");
}

static void test_bad_urls(void **state)
{
    static const struct {
        const char *url, *why;
    } cases[] = {
        {"https://a:443", "https upstreams are not supported yet"},
        {"ftp://a", "unsupported scheme"},
        {"node1:8000", "expected http://HOST[:PORT][/PATH]"},
        {"http://", "missing host"},
        {"http://a:70000", "port 70000 is out of range"},
        {"http://a:0", "port 0 is out of range"},
        {"http://a:", "invalid port"},
        {"http://a:8x", "invalid port"},
        {"http://u:p@a", "user info"},
        {"http://a/x?y=1", "query strings"},
        {"http://[::1", "unbalanced '['"},
        {"http://[zz]:80", "not a valid IPv6 address"},
        {"http://300.1.1.1", "not a valid IPv4 address"},
        {"http://a b", "contains spaces"},
        {"http://a_b!c", "not a valid host name"},
        {"http://host:0", "port 0 is out of range (1..65535)"},
        {"http://host:65536", "port 65536 is out of range (1..65535)"},
        {"http://host:000080", "invalid port"},
        {"http://user@host", "user info"},
        {"http://@host", "user info"},
        {"http://a@b@c", "user info"},
        {"http://host/path?q", "query strings and fragments are not allowed"},
        {"http://host#f", "query strings and fragments are not allowed"},
        {"http://[::1]8000", "expected ':' after the IPv6 address"},
        {"http://[fe80::1%25eth0]", "not a valid IPv6 address"},
        {"http://:80", "empty host"},
        {"http:///v1", "empty host"},
        {"http://-a", "not a valid host name"},
        {"http://::1", "invalid port"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[256], want[256];

        snprintf(json, sizeof(json), "{\"models\": {\"m\": {\"servers\": [\"%s\"]}}}",
                 cases[i].url);
        snprintf(want, sizeof(want), ": models.m.servers[0]: \"%s\": %s", cases[i].url,
                 cases[i].why);
        expect_file_error(json, want);
        teardown(state);
    }
    expect_error(NULL, (const char *[]){"VLLM_NODES=http://a:1,https://b", NULL}, NULL,
                 "VLLM_NODES: \"https://b\": https upstreams are not supported yet");
    expect_error((const char *[]){"--nodes", " , ", NULL}, NULL, NULL,
                 "--nodes: expected at least one URL");
}

static void server_deinit(struct lx_conf_server *s)
{
    free(s->url);
    free(s->host);
    free(s->base_path);
    memset(s, 0, sizeof(*s));
}

/* URLs that parse, with what they parse into. */
static void test_good_urls(void **state)
{
    static const struct {
        const char *in, *url, *host;
        int port;
        const char *base_path;
    } cases[] = {
        {"http://[::1]:8000/v1", "http://[::1]:8000/v1", "::1", 8000, ""},
        /* A trailing /v1 is vLLM's base URL, not a prefix; other paths are. */
        {"http://h/v1/", "http://h/v1", "h", 80, ""},
        {"http://h/vllm-a/v1", "http://h/vllm-a/v1", "h", 80, "/vllm-a"},
        {"http://h/vllm-a", "http://h/vllm-a", "h", 80, "/vllm-a"},
        {"http://h/v10", "http://h/v10", "h", 80, "/v10"},
        {"http://h/v1/x", "http://h/v1/x", "h", 80, "/v1/x"},
        {"http://host", "http://host", "host", 80, ""},
        {"http://HOST:65535//x//", "http://HOST:65535//x", "HOST", 65535, "//x"},
        {"HTTP://a_b.c-d:00080/p@q:r", "HTTP://a_b.c-d:00080/p@q:r", "a_b.c-d", 80, "/p@q:r"},
        {"http://1.2.3.4:1/", "http://1.2.3.4:1", "1.2.3.4", 1, ""},
        {"http://[::ffff:1.2.3.4]", "http://[::ffff:1.2.3.4]", "::ffff:1.2.3.4", 80, ""},
    };
    struct lx_conf_server s = {0};
    const size_t n = 70000;
    char why[160], *big;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (lx_conf_url_parse(&s, cases[i].in, why, sizeof(why)) < 0)
            fail_msg("%s: %s", cases[i].in, why);
        assert_string_equal(s.url, cases[i].url);
        assert_string_equal(s.host, cases[i].host);
        assert_int_equal(s.port, cases[i].port);
        assert_string_equal(s.base_path, cases[i].base_path);
        server_deinit(&s);
    }
    /* Past http-parser's 16-bit offsets: a long path is kept whole; a long
     * authority gets the message it always had. */
    big = malloc(n + 1);
    assert_non_null(big);
    memcpy(big, "http://h:81/", 12);
    memset(big + 12, 'p', n - 12);
    big[n] = '\0';
    assert_int_equal(lx_conf_url_parse(&s, big, why, sizeof(why)), 0);
    assert_int_equal(s.port, 81);
    assert_int_equal(strlen(s.base_path), n - 11);
    server_deinit(&s);
    memset(big + 7, 'h', n - 7);
    assert_int_equal(lx_conf_url_parse(&s, big, why, sizeof(why)), LX_EINVAL);
    assert_string_equal(why, "host name too long");
    big[n - 100] = '@';
    assert_int_equal(lx_conf_url_parse(&s, big, why, sizeof(why)), LX_EINVAL);
    assert_string_equal(why, "user info in URLs is not supported (use \"api_key\")");
    free(big);
}

static void test_duplicate_server_names(void **state)
{
    expect_file_error("{\"models\": {\"m\": {\"servers\": [\"http://a:1\", \"http://a:1/\"]}}}",
                      ": models.m.servers[1]: duplicate server name \"http://a:1\"");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [{\"url\": \"http://a:1\", \"name\": "
                      "\"x\"}, {\"url\": \"http://b:1\", \"name\": \"x\"}]}}}",
                      ": models.m.servers[1]: duplicate server name \"x\"");
    expect_error(NULL, (const char *[]){"VLLM_NODES=http://a:1,http://a:1", NULL}, NULL,
                 "VLLM_NODES[1]: duplicate server name");
    /* The same name in two pools is fine. */
    {
        const char *file = tmp_file(".json", "{\"models\": {\"a\": {\"servers\": [\"http://x\"]}, "
                                             "\"b\": {\"servers\": [\"http://x\"]}}}");
        struct lx_conf c;

        expect_ok(&c, (const char *[]){"--config", file, NULL}, NULL, NULL);
        assert_int_equal(c.n_pools, 2);
        lx_conf_free(&c);
    }
}

static void test_bad_strategy(void **state)
{
    expect_file_error(
        "{\"models\": {\"m\": {\"servers\": [\"http://a\"], \"strategy\": \"fast\"}}}",
        ": models.m.strategy: unknown strategy \"fast\" (expected one of "
        "round_robin");
    expect_error(NULL, (const char *[]){"VLLM_NODES=http://a", "ROUTING_STRATEGY=best", NULL}, NULL,
                 "ROUTING_STRATEGY: unknown strategy \"best\"");
    expect_error((const char *[]){"--nodes", "http://a", "--strategy", "Round_Robin", NULL}, NULL,
                 NULL, "--strategy: unknown strategy \"Round_Robin\"");
}

static void test_vllm_nodes_pool(void **state)
{
    const char *env[] = {"VLLM_NODES= http://a:1 , http://b:2/v1/ ,", "MODEL_NAME=m",
                         "ROUTING_STRATEGY=latency_based", NULL};
    const char *env_any[] = {"VLLM_NODES=http://a:1", "MODEL_NAME=*", NULL};
    struct lx_conf c;

    expect_ok(&c, NULL, env, NULL);
    assert_string_equal(c.model_name, "m");
    assert_int_equal(c.n_pools, 1);
    assert_string_equal(c.pools[0].model, "m");
    assert_string_equal(c.pools[0].strategy, "latency_based");
    assert_int_equal(c.pools[0].n_servers, 2);
    assert_string_equal(c.pools[0].servers[1].url, "http://b:2/v1");
    assert_string_equal(c.pools[0].servers[1].base_path, "");
    assert_non_null(lx_conf_pool_find(&c, "m", 1));
    assert_null(lx_conf_pool_find(&c, "other", 5));
    lx_conf_free(&c);

    expect_ok(&c, NULL, env_any, NULL);
    assert_null(c.model_name);
    assert_string_equal(c.pools[0].model, "*");
    assert_ptr_equal(lx_conf_pool_find(&c, "anything", 8), &c.pools[0]);
    lx_conf_free(&c);
}

static void test_vllm_nodes_with_models(void **state)
{
    const char *file = tmp_file(".json", "{\"models\": {"
                                         "\"gpt-4\": {\"servers\": [\"http://n4:1\"], "
                                         "\"upstream_model\": \"up\"},"
                                         "\"small\": {\"servers\": [\"http://s:1\"], "
                                         "\"strategy\": \"random\"}}}");
    const char *args[] = {"--config", file, NULL};
    const char *replace[] = {"VLLM_NODES=http://x:1,http://y:1", "MODEL_NAME=gpt-4", NULL};
    const char *add[] = {"VLLM_NODES=http://any:1", NULL};
    struct lx_conf c;

    /* VLLM_NODES replaces the pool named MODEL_NAME, in its place. */
    expect_ok(&c, args, replace, NULL);
    assert_int_equal(c.n_pools, 2);
    assert_string_equal(c.pools[0].model, "gpt-4");
    assert_int_equal(c.pools[0].n_servers, 2);
    assert_string_equal(c.pools[0].servers[0].host, "x");
    assert_null(c.pools[0].upstream_model);
    assert_string_equal(c.pools[0].strategy, "round_robin");
    assert_string_equal(c.pools[1].strategy, "random");
    lx_conf_free(&c);

    /* Without MODEL_NAME it adds a catch-all pool: exact names first. */
    expect_ok(&c, args, add, NULL);
    assert_int_equal(c.n_pools, 3);
    assert_string_equal(c.pools[2].model, "*");
    assert_ptr_equal(lx_conf_pool_find(&c, "small", 5), &c.pools[1]);
    assert_ptr_equal(lx_conf_pool_find(&c, "gpt-4", 5), &c.pools[0]);
    assert_ptr_equal(lx_conf_pool_find(&c, "llama", 5), &c.pools[2]);
    lx_conf_free(&c);
}

static void test_numeric_validation(void **state)
{
    static const struct {
        const char *var, *want;
    } cases[] = {
        {"MAX_RETRIES=abc", "MAX_RETRIES: \"abc\" is not an integer"},
        {"MAX_RETRIES=1.5", "MAX_RETRIES: \"1.5\" is not an integer"},
        {"MAX_RETRIES=0x10", "MAX_RETRIES: \"0x10\" is not an integer"},
        {"MAX_RETRIES=101", "MAX_RETRIES: 101 is out of range (0..100)"},
        {"MAX_RETRIES=99999999999999999999", "MAX_RETRIES: \"99999999999999999999\" is out of"},
        {"WORKERS=0", "WORKERS: expected a positive integer, got 0"},
        {"WORKERS=257", "WORKERS: 257 is out of range (1..256)"},
        {"GATEWAY_PORT=-1", "GATEWAY_PORT: expected a non-negative integer, got -1"},
        {"GATEWAY_PORT=65536", "GATEWAY_PORT: 65536 is out of range (0..65535)"},
        {"NODE_TIMEOUT_SECONDS=0", "NODE_TIMEOUT_SECONDS: expected seconds > 0, got 0"},
        {"NODE_TIMEOUT_SECONDS=ten", "NODE_TIMEOUT_SECONDS: \"ten\" is not a number of seconds"},
        {"NODE_TIMEOUT_SECONDS=inf", "is not a number of seconds"},
        {"NODE_TIMEOUT_SECONDS=1e400", "is not a number of seconds"},
        {"CONNECT_TIMEOUT_SECONDS=100000", "CONNECT_TIMEOUT_SECONDS: 100000 is out of range"},
        {"STREAM_IDLE_TIMEOUT_SECONDS=-1", "STREAM_IDLE_TIMEOUT_SECONDS: expected seconds >= 0"},
        {"MAX_BODY_BYTES=0", "MAX_BODY_BYTES: expected a positive integer, got 0"},
        {"MAX_HEADER_BYTES=10", "MAX_HEADER_BYTES: 10 is out of range"},
        {"MAX_CONCURRENT_REQUESTS=0", "MAX_CONCURRENT_REQUESTS: expected a positive integer"},
        {"MAX_QUEUE_SIZE=-5", "MAX_QUEUE_SIZE: expected a non-negative integer, got -5"},
        {"HEALTH_FAILURE_THRESHOLD=0", "HEALTH_FAILURE_THRESHOLD: expected a positive integer"},
        {"HEALTH_CHECK_PATH=health", "HEALTH_CHECK_PATH: \"health\" is not an absolute URL path"},
        {"LOG_LEVEL=loud", "LOG_LEVEL: unknown log level \"loud\""},
        {"GATEWAY_HOST=1.2.3.999", "GATEWAY_HOST: \"1.2.3.999\": not a valid IPv4 address"},
        {"GATEWAY_HOST=[::1", "GATEWAY_HOST: \"[::1\": unbalanced '['"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {"VLLM_NODES=http://a:1", cases[i].var, NULL};

        expect_error(NULL, env, NULL, cases[i].want);
    }
    /* Fractions of seconds and the 0 = off values are fine. */
    {
        const char *env[] = {"VLLM_NODES=http://a:1",
                             "CONNECT_TIMEOUT_SECONDS=0.25",
                             "STREAM_IDLE_TIMEOUT_SECONDS=0",
                             "MAX_QUEUE_SIZE=0",
                             "GATEWAY_PORT=0",
                             "MAX_BODY_BYTES=1099511627776",
                             NULL};
        struct lx_conf c;

        expect_ok(&c, NULL, env, NULL);
        assert_true(c.connect_timeout_s == 0.25);
        assert_int_equal(c.listen_port, 0);
        assert_true(c.max_body_bytes == 1ULL << 40);
        lx_conf_free(&c);
    }
}

static void test_flags(void **state)
{
    const char *args[] = {"--nodes",
                          "http://a:1",
                          "--listen=127.0.0.1:9000",
                          "--workers",
                          "3",
                          "--model=gpt",
                          "--strategy",
                          "cache_aware",
                          "--auth-token",
                          "t",
                          "--admin-token=adm",
                          "--max-retries=0",
                          "--connect-timeout",
                          "2.5",
                          "--node-timeout=60",
                          "--max-concurrent",
                          "8",
                          "--max-queue",
                          "16",
                          "--queue-timeout",
                          "4",
                          "--max-body-bytes",
                          "1000",
                          "--log-level",
                          "error",
                          "--access-log",
                          "/tmp/x.log",
                          "--stream-idle-timeout=9",
                          NULL};
    struct lx_conf c;

    expect_ok(&c, args, NULL, NULL);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 9000);
    assert_int_equal(c.workers, 3);
    assert_string_equal(c.model_name, "gpt");
    assert_string_equal(c.pools[0].model, "gpt");
    assert_string_equal(c.strategy, "cache_aware");
    assert_string_equal(c.pools[0].strategy, "cache_aware");
    assert_string_equal(c.auth_token, "t");
    assert_string_equal(c.admin_token, "adm");
    assert_int_equal(c.max_retries, 0);
    assert_true(c.connect_timeout_s == 2.5);
    assert_true(c.node_timeout_s == 60);
    assert_int_equal(c.max_concurrent_requests, 8);
    assert_int_equal(c.max_queue_size, 16);
    assert_true(c.queue_timeout_s == 4);
    assert_true(c.max_body_bytes == 1000);
    assert_string_equal(c.log_level, "error");
    assert_string_equal(c.access_log, "/tmp/x.log");
    assert_true(c.stream_idle_timeout_s == 9);
    lx_conf_free(&c);
}

static void test_listen_forms(void **state)
{
    const char *env[] = {"VLLM_NODES=http://a:1", "GATEWAY_HOST=10.1.2.3", "GATEWAY_PORT=1", NULL};
    struct lx_conf c;

    expect_ok(&c, (const char *[]){"--listen", "[::1]:0", NULL}, env, NULL);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 0);
    lx_conf_free(&c);

    expect_ok(&c, (const char *[]){"--listen", ":7000", NULL}, env, NULL);
    assert_string_equal(c.listen_host, "10.1.2.3");
    assert_int_equal(c.listen_port, 7000);
    lx_conf_free(&c);

    expect_ok(&c, (const char *[]){"--listen=7001", NULL}, env, NULL);
    assert_string_equal(c.listen_host, "10.1.2.3");
    assert_int_equal(c.listen_port, 7001);
    lx_conf_free(&c);

    expect_ok(&c, (const char *[]){"--listen", "localhost:8080", NULL}, env, NULL);
    assert_string_equal(c.listen_host, "localhost");
    lx_conf_free(&c);

    expect_error((const char *[]){"--listen", "::1:80", NULL}, env, NULL,
                 "--listen: \"::1:80\": IPv6 addresses need brackets");
    expect_error((const char *[]){"--listen", "localhost", NULL}, env, NULL,
                 "--listen: \"localhost\": expected HOST:PORT");
    expect_error((const char *[]){"--listen", "a:65536", NULL}, env, NULL,
                 "expected HOST:PORT with a port in 0..65535");
    expect_error((const char *[]){"--listen", "[::1]8000", NULL}, env, NULL,
                 "expected [IPV6]:PORT");
    expect_error((const char *[]){"--listen", "", NULL}, env, NULL, "--listen: empty value");
}

static void test_flag_errors(void **state)
{
    expect_error((const char *[]){"--bogus", NULL}, NULL, NULL,
                 "unknown flag \"--bogus\" (see --help)");
    expect_error((const char *[]){"-x", NULL}, NULL, NULL, "unknown flag \"-x\"");
    expect_error((const char *[]){"--max-retry=3", NULL}, NULL, NULL,
                 "unknown flag \"--max-retry=3\" (did you mean --max-retries?)");
    expect_error((const char *[]){"serve", NULL}, NULL, NULL, "unexpected argument \"serve\"");
    expect_error((const char *[]){"-", NULL}, NULL, NULL, "unknown flag \"-\"");
    expect_error((const char *[]){"--workers", NULL}, NULL, NULL,
                 "--workers: missing value (--workers N)");
    expect_error((const char *[]){"--check-config=yes", NULL}, NULL, NULL,
                 "--check-config takes no value");
    expect_error((const char *[]){"--nodes", "http://a", "--workers", "many", NULL}, NULL, NULL,
                 "--workers: \"many\" is not an integer");
    expect_error((const char *[]){"--config=", NULL}, NULL, NULL, "--config: empty value");
}

static void test_check_config(void **state)
{
    const char *args[] = {"--nodes", "http://a:1", "--check-config", NULL};
    struct lx_conf c;

    assert_int_equal(load(&c, args, NULL, NULL), LX_CONF_CHECK);
    assert_int_equal(c.n_pools, 1);
    lx_conf_free(&c);
    /* An invalid config is still an error. */
    expect_error((const char *[]){"--check-config", NULL}, NULL, NULL, "no nodes configured");
}

/* Runs a load with stdout sent to /dev/null; the help text is long. */
static enum lx_conf_result load_quiet(struct lx_conf *c, const char **args, const char **envp)
{
    enum lx_conf_result r;
    int saved, devnull;

    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, STDOUT_FILENO);
    r = load(c, args, envp, NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    close(devnull);
    return r;
}

static void test_help_version(void **state)
{
    const char *bad_env[] = {"MAX_RETRIES=abc", NULL};
    struct lx_conf c, before;

    memset(&c, 0xab, sizeof(c));
    before = c;
    assert_int_equal(load_quiet(&c, (const char *[]){"--help", NULL}, NULL), LX_CONF_EXIT);
    assert_int_equal(load_quiet(&c, (const char *[]){"-h", NULL}, NULL), LX_CONF_EXIT);
    assert_int_equal(load_quiet(&c, (const char *[]){"--version", NULL}, NULL), LX_CONF_EXIT);
    assert_int_equal(load_quiet(&c, (const char *[]){"-V", NULL}, NULL), LX_CONF_EXIT);
    /* Help wins over anything else wrong, and reads no config. */
    assert_int_equal(load_quiet(&c, (const char *[]){"--bogus", "--help", NULL}, bad_env),
                     LX_CONF_EXIT);
    assert_int_equal(load_quiet(&c, (const char *[]){"--config", "/nonexistent", "-V", NULL}, NULL),
                     LX_CONF_EXIT);
    assert_memory_equal(&c, &before, sizeof(c));
    /* A value that looks like a flag is a value. */
    expect_error((const char *[]){"--nodes", "http://a", "--auth-token", "--help", NULL}, bad_env,
                 NULL, "MAX_RETRIES: \"abc\" is not an integer");
}

static void test_usage(void **state)
{
    static const char *const names[] = {
        "--config FILE",
        "--listen HOST:PORT",
        "--nodes URL,URL",
        "--strategy NAME",
        "--workers N",
        "--model NAME",
        "--auth-token",
        "--admin-token",
        "--max-retries",
        "--connect-timeout",
        "--node-timeout",
        "--max-concurrent",
        "--max-queue",
        "--queue-timeout",
        "--max-body-bytes",
        "--log-level",
        "--access-log",
        "--check-config",
        "-h, --help",
        "-V, --version",
        "VLLM_NODES",
        "ROUTING_STRATEGY",
        "NODE_TIMEOUT_SECONDS",
        "CONNECT_TIMEOUT_SECONDS",
        "MAX_RETRIES",
        "HEALTH_CHECK_INTERVAL_SECONDS",
        "HEALTH_FAILURE_THRESHOLD",
        "GATEWAY_HOST",
        "GATEWAY_PORT",
        "AUTH_TOKEN",
        "MODEL_NAME",
        "MAX_CONCURRENT_REQUESTS",
        "MAX_QUEUE_SIZE",
        "LLMUX_CONFIG",
        "QUEUE_TIMEOUT_SECONDS",
        "WORKERS",
        "METRICS_UPDATE_INTERVAL_SECONDS",
        "ADMIN_TOKEN",
        "MAX_BODY_BYTES",
        "HEALTH_CHECK_PATH",
        "HEALTH_RECOVERY_THRESHOLD",
        "STREAM_IDLE_TIMEOUT_SECONDS",
        "LOG_LEVEL",
        "ACCESS_LOG",
        "REQUEST_TIMEOUT_SECONDS",
        "KEEPALIVE_TIMEOUT_SECONDS",
        "SHUTDOWN_TIMEOUT_SECONDS",
        "MAX_HEADER_BYTES",
        "--stream-resume on|off",
        "--hedge-after S",
        "--retry-budget-percent X",
        "--retry-budget-min-per-second X",
        "env STREAM_RESUME, default: on",
        "env HEDGE_AFTER_SECONDS, default: 0",
        "env RETRY_BUDGET_PERCENT, default: 20",
        "env RETRY_BUDGET_MIN_PER_SECOND, default: 1",
        "default: 8000",
        "default: round_robin",
    };
    const char *u = lx_conf_usage();

    assert_ptr_equal(u, lx_conf_usage());
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strstr(u, names[i]))
            fail_msg("--help does not mention %s", names[i]);
}

static void test_dump_masks_secrets(void **state)
{
    const char *file = tmp_file(
        ".json", "{\"auth_token\": \"sekrit-client\", \"models\": {\"m\": {\"servers\": "
                 "[{\"url\": \"http://a:1\", \"api_key\": \"sekrit-node\"}, \"http://b:1\"]}}}");
    const char *args[] = {"--config", file, NULL};
    json_t *root, *srv;
    json_error_t je;
    struct lx_conf c;
    char *text;

    expect_ok(&c, args, NULL, NULL);
    text = lx_conf_dump(&c);
    assert_non_null(text);
    assert_null(strstr(text, "sekrit"));
    root = json_loads(text, 0, &je);
    assert_non_null(root);
    assert_string_equal(json_string_value(json_object_get(root, "auth_token")), "***");
    assert_true(json_is_null(json_object_get(root, "admin_token")));
    srv = json_object_get(
        json_object_get(json_object_get(json_object_get(root, "models"), "m"), "servers"), "url");
    assert_null(srv); /* servers is an array */
    srv = json_object_get(json_object_get(root, "models"), "m");
    srv = json_object_get(srv, "servers");
    assert_string_equal(json_string_value(json_object_get(json_array_get(srv, 0), "api_key")),
                        "***");
    assert_true(json_is_null(json_object_get(json_array_get(srv, 1), "api_key")));
    assert_int_equal(json_integer_value(json_object_get(root, "gateway_port")), 8000);
    assert_string_equal(json_string_value(json_object_get(root, "routing_strategy")),
                        "round_robin");
    json_decref(root);
    free(text);
    lx_conf_free(&c);
}

/* Without secrets, the dump is itself a config file that loads to the same. */
static void test_dump_roundtrip(void **state)
{
    const char *env[] = {"VLLM_NODES=http://a:1,http://[::1]:2/p", "MODEL_NAME=m",    "WORKERS=5",
                         "STREAM_IDLE_TIMEOUT_SECONDS=0.5",        "GATEWAY_HOST=::", NULL};
    struct lx_conf c, d;
    char *text, *text2;
    const char *file;

    expect_ok(&c, NULL, env, NULL);
    text = lx_conf_dump(&c);
    file = tmp_file(".json", text);
    expect_ok(&d, (const char *[]){"--config", file, NULL}, NULL, NULL);
    text2 = lx_conf_dump(&d);
    assert_string_equal(text, text2);
    assert_int_equal(d.workers, 5);
    assert_string_equal(d.listen_host, "::");
    assert_string_equal(d.pools[0].servers[1].host, "::1");
    free(text);
    free(text2);
    lx_conf_free(&c);
    lx_conf_free(&d);
}

/* A failed load never writes the caller's struct, however late it fails. */
static void test_no_half_apply(void **state)
{
    const char *file = tmp_file(".json", "{\"models\": {\"m\": {\"servers\": [\"http://a:1\"]}},"
                                         " \"workers\": 2, \"auth_token\": \"x\"}");
    const char *late[] = {"--config", file, "--max-retries", "1", "--workers", "0", NULL};
    struct lx_conf c, before;

    memset(&c, 0x5a, sizeof(c));
    before = c;
    assert_int_equal(load(&c, late, (const char *[]){"LOG_LEVEL=debug", NULL}, NULL),
                     LX_CONF_ERROR);
    assert_string_equal(errbuf, "--workers: expected a positive integer, got 0");
    assert_memory_equal(&c, &before, sizeof(c));

    /* Failing in finalisation (no pools) leaves it untouched too. */
    assert_int_equal(load(&c, (const char *[]){"--workers", "4", NULL}, NULL, NULL), LX_CONF_ERROR);
    assert_memory_equal(&c, &before, sizeof(c));
}

static void test_conf_free(void **state)
{
    const char *file = tmp_file(".json", "{\"models\": {\"m\": {\"servers\": [{\"url\": "
                                         "\"http://a:1/x\", \"api_key\": \"k\", \"name\": \"n\"}],"
                                         " \"upstream_model\": \"u\"}}, \"access_log\": \"-\","
                                         " \"admin_token\": \"a\"}");
    const char *env[] = {"VLLM_NODES=http://b:1", "MODEL_NAME=z", "AUTH_TOKEN=t", NULL};
    struct lx_conf c, zero;

    memset(&zero, 0, sizeof(zero));
    for (int i = 0; i < 3; i++) {
        expect_ok(&c, (const char *[]){"--config", file, NULL}, env, NULL);
        lx_conf_free(&c);
        assert_memory_equal(&c, &zero, sizeof(c));
    }
    lx_conf_free(&c); /* twice is harmless */
    lx_conf_free(NULL);
}

static void test_strategy_canonical(void **state)
{
    static const char *const names[] = {"round_robin",      "least_loaded", "latency_based",
                                        "random",           "power_of_two", "cache_aware",
                                        "real_time_metrics"};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        assert_string_equal(lx_conf_strategy_canonical(names[i]), names[i]);
    assert_string_equal(lx_conf_strategy_canonical("least_connection"), "least_loaded");
    assert_null(lx_conf_strategy_canonical("least"));
    assert_null(lx_conf_strategy_canonical(""));
    assert_null(lx_conf_strategy_canonical(NULL));
}

static void test_pool_from_json(void **state)
{
    struct lx_conf_pool p, before;
    json_t *obj;
    json_error_t je;

    obj = json_loads("{\"servers\": [\"http://a:1\", {\"url\": \"http://b:2\", \"weight\": 3}]}", 0,
                     &je);
    assert_int_equal(
        lx_conf_pool_from_json(&p, "gpt", obj, "random", "body", errbuf, sizeof(errbuf)), 0);
    assert_string_equal(p.model, "gpt");
    assert_string_equal(p.strategy, "random");
    assert_int_equal(p.n_servers, 2);
    assert_int_equal(p.servers[1].weight, 3);
    lx_conf_pool_free(&p);
    json_decref(obj);

    memset(&p, 0x11, sizeof(p));
    before = p;
    obj = json_loads("{\"servers\": [\"http://a:1\"], \"model_name\": \"x\"}", 0, &je);
    assert_int_equal(
        lx_conf_pool_from_json(&p, "gpt", obj, "random", "body", errbuf, sizeof(errbuf)),
        LX_EINVAL);
    assert_string_equal(errbuf, "body.model_name: unknown key (expected servers, strategy, "
                                "upstream_model, metrics_update_interval, hedge_after_seconds)");
    assert_memory_equal(&p, &before, sizeof(p));
    json_decref(obj);
}

/* STREAM_RESUME, HEDGE_AFTER_SECONDS and the retry budget through every
 * layer, their validation, and a pool's own hedge_after_seconds. */
static void test_retry_settings(void **state)
{
    static const struct {
        const char *var, *want;
    } bad[] = {
        {"STREAM_RESUME=maybe", "STREAM_RESUME: \"maybe\" is not a boolean (expected on or off"},
        {"STREAM_RESUME=2", "STREAM_RESUME: \"2\" is not a boolean"},
        {"HEDGE_AFTER_SECONDS=-0.5", "HEDGE_AFTER_SECONDS: expected seconds >= 0 (0 = off)"},
        {"HEDGE_AFTER_SECONDS=soon", "HEDGE_AFTER_SECONDS: \"soon\" is not a number of seconds"},
        {"HEDGE_AFTER_SECONDS=86401", "HEDGE_AFTER_SECONDS: 86401 is out of range"},
        {"RETRY_BUDGET_PERCENT=-1", "RETRY_BUDGET_PERCENT: expected a number in 0..1000, got -1"},
        {"RETRY_BUDGET_PERCENT=1000.5", "RETRY_BUDGET_PERCENT: expected a number in 0..1000"},
        {"RETRY_BUDGET_PERCENT=20%", "RETRY_BUDGET_PERCENT: \"20%\" is not a number"},
        {"RETRY_BUDGET_MIN_PER_SECOND=-2",
         "RETRY_BUDGET_MIN_PER_SECOND: expected a number in 0..1000000, got -2"},
        {"RETRY_BUDGET_MIN_PER_SECOND=x", "RETRY_BUDGET_MIN_PER_SECOND: \"x\" is not a number"},
    };
    const char *file = tmp_file(".json", "{\"stream_resume\": false, \"hedge_after_seconds\": 2,"
                                         " \"retry_budget_percent\": 0,"
                                         " \"retry_budget_min_per_second\": 0.5,"
                                         " \"models\": {"
                                         "\"own\": {\"servers\": [\"http://a:1\"],"
                                         " \"hedge_after_seconds\": 0.25},"
                                         "\"off\": {\"servers\": [\"http://b:1\"],"
                                         " \"hedge_after_seconds\": 0},"
                                         "\"global\": {\"servers\": [\"http://c:1\"],"
                                         " \"hedge_after_seconds\": null}}}");
    const char *env[] = {"STREAM_RESUME=On", "RETRY_BUDGET_PERCENT=12.5", NULL};
    struct lx_conf c;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *e[] = {"VLLM_NODES=http://a:1", bad[i].var, NULL};

        expect_error(NULL, e, NULL, bad[i].want);
    }

    expect_ok(&c, (const char *[]){"--config", file, NULL}, NULL, NULL);
    assert_false(c.stream_resume);
    assert_true(c.hedge_after_s == 2);
    assert_true(c.retry_budget_percent == 0);
    assert_true(c.retry_budget_min_per_s == 0.5);
    assert_int_equal(c.n_pools, 3);
    assert_true(c.pools[0].has_hedge_after && c.pools[0].hedge_after_s == 0.25);
    assert_true(c.pools[1].has_hedge_after && c.pools[1].hedge_after_s == 0);
    assert_false(c.pools[2].has_hedge_after);
    lx_conf_free(&c);

    /* The environment over the file, flags over both. */
    expect_ok(&c, (const char *[]){"--config", file, NULL}, env, NULL);
    assert_true(c.stream_resume);
    assert_true(c.retry_budget_percent == 12.5);
    lx_conf_free(&c);
    expect_ok(&c,
              (const char *[]){"--config", file, "--stream-resume", "off", "--hedge-after=0.3",
                               "--retry-budget-percent", "1000",
                               "--retry-budget-min-per-second=0", NULL},
              env, NULL);
    assert_false(c.stream_resume);
    assert_true(c.hedge_after_s == 0.3);
    assert_true(c.retry_budget_percent == 1000);
    assert_true(c.retry_budget_min_per_s == 0);
    lx_conf_free(&c);
    for (size_t i = 0; i < 8; i++) {
        static const char *const forms[] = {"1", "0", "YES", "no", "true", "False", "on", "OFF"};
        const char *e[] = {"VLLM_NODES=http://a:1", NULL, NULL};
        char var[32];

        snprintf(var, sizeof(var), "STREAM_RESUME=%s", forms[i]);
        e[1] = var;
        expect_ok(&c, NULL, e, NULL);
        assert_int_equal(c.stream_resume, i % 2 == 0);
        lx_conf_free(&c);
    }

    /* JSON types and the pool key's range. */
    expect_file_error("{\"stream_resume\": \"on\"}",
                      ": stream_resume: expected true or false, got a string");
    expect_file_error("{\"stream_resume\": 1}", ": stream_resume: expected true or false");
    expect_file_error("{\"retry_budget_percent\": \"20\"}",
                      ": retry_budget_percent: expected a number, got a string");
    expect_file_error("{\"hedge_after_seconds\": null}",
                      ": hedge_after_seconds: expected a number of seconds, got null");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [\"http://a\"], "
                      "\"hedge_after_seconds\": -1}}}",
                      ": models.m.hedge_after_seconds: -1 is out of range (0..86400 seconds");
    expect_file_error("{\"models\": {\"m\": {\"servers\": [\"http://a\"], "
                      "\"hedge_after_seconds\": \"1\"}}}",
                      ": models.m.hedge_after_seconds: expected a number of seconds or null, "
                      "got a string");
    expect_error((const char *[]){"--nodes", "http://a", "--stream-resume", NULL}, NULL, NULL,
                 "--stream-resume: missing value (--stream-resume on|off)");
}

/* The dump shows the new settings and a pool's own hedge delay, and loads back. */
static void test_dump_retry_settings(void **state)
{
    const char *file = tmp_file(".json", "{\"stream_resume\": false, \"retry_budget_percent\": 5,"
                                         " \"models\": {"
                                         "\"a\": {\"servers\": [\"http://a:1\"],"
                                         " \"hedge_after_seconds\": 1.5},"
                                         "\"b\": {\"servers\": [\"http://b:1\"]}}}");
    struct lx_conf c, d;
    char *text, *text2;
    json_t *root, *models;
    json_error_t je;
    const char *again;

    expect_ok(&c, (const char *[]){"--config", file, NULL}, NULL, NULL);
    text = lx_conf_dump(&c);
    root = json_loads(text, 0, &je);
    assert_non_null(root);
    assert_true(json_is_false(json_object_get(root, "stream_resume")));
    assert_true(json_real_value(json_object_get(root, "retry_budget_percent")) == 5);
    assert_true(json_real_value(json_object_get(root, "retry_budget_min_per_second")) == 1);
    assert_true(json_real_value(json_object_get(root, "hedge_after_seconds")) == 0);
    models = json_object_get(root, "models");
    assert_true(
        json_real_value(json_object_get(json_object_get(models, "a"), "hedge_after_seconds")) ==
        1.5);
    assert_true(json_is_null(json_object_get(json_object_get(models, "b"), "hedge_after_seconds")));
    json_decref(root);
    again = tmp_file(".json", text);
    expect_ok(&d, (const char *[]){"--config", again, NULL}, NULL, NULL);
    text2 = lx_conf_dump(&d);
    assert_string_equal(text, text2);
    free(text);
    free(text2);
    lx_conf_free(&c);
    lx_conf_free(&d);
}

/* Variables that look meant for llmux, and the name each likely meant. */
static void test_env_suspects(void **state)
{
    static const struct {
        const char *name, *hint; /* hint "-": not suspect; NULL: suspect, no hint */
    } cases[] = {
        {"ROUTING_STRATEGY", "-"},
        {"LLMUX_CONFIG", "-"},
        {"ROUTING_STRATEGEY", "ROUTING_STRATEGY"},
        {"ROUTNIG_STRATEGY", "ROUTING_STRATEGY"}, /* a swap is one edit */
        {"MAX_RETRYS", "MAX_RETRIES"},
        {"VLLM_NODE", "VLLM_NODES"},
        {"routing_strategy", "ROUTING_STRATEGY"},
        {"LLMUX_WORKERS", "WORKERS"},
        {"LLMUX_ROUTING_STRATEGY", "ROUTING_STRATEGY"},
        {"LLMUX_CONFG", "LLMUX_CONFIG"},
        {"LLMUX_FOO", NULL},
        {"llmux_foo", NULL},
        /* Other programs' variables, and short names, are left alone. */
        {"HOME", "-"},
        {"PATH", "-"},
        {"WORKER", "WORKERS"},
        {"PWD", "-"},
        {"OLDPWD", "-"},
        {"HF_TOKEN", "-"},
        {"VLLM_PORT", "-"},
        {"VLLM_HOST", "-"},
        {"LOG_LEVELS", "LOG_LEVEL"},
        {"SHLVL", "-"},
        {"COLUMNS", "-"},
    };

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        const char *hint = "x";
        bool suspect = lx_conf_env_is_suspect(cases[i].name, &hint);

        if (cases[i].hint && strcmp(cases[i].hint, "-") == 0) {
            if (suspect)
                fail_msg("%s: suspect (hint %s)", cases[i].name, hint ? hint : "none");
            continue;
        }
        if (!suspect)
            fail_msg("%s: not suspect", cases[i].name);
        if (!cases[i].hint)
            assert_null(hint);
        else if (!hint || strcmp(hint, cases[i].hint) != 0)
            fail_msg("%s: hint %s, expected %s", cases[i].name, hint ? hint : "none",
                     cases[i].hint);
    }
    /* "did you mean" in the JSON file takes swaps as one edit too. */
    assert_string_equal(lx_conf_suggest("max_rertries", false), "max_retries");
}

static void test_pools_describe(void **state)
{
    const char *file = tmp_file(".json", "{\"models\": {\"chat-m\": {\"servers\": [\"http://a\", "
                                         "\"http://b\"]}, \"embed-m\": {\"servers\": "
                                         "[\"http://c\"], \"strategy\": \"least_loaded\"}}}");
    struct lx_conf c;
    char buf[1536], small[80];

    expect_ok(&c, (const char *[]){"--config", file, "--nodes", "http://d", NULL}, NULL, NULL);
    lx_conf_pools_describe(&c, buf, sizeof(buf));
    assert_string_equal(buf, "pools chat-m (round_robin, 2 nodes), embed-m (least_loaded, "
                             "1 node), * (any model, round_robin, 1 node)");
    lx_conf_pools_describe(&c, small, sizeof(small));
    assert_string_equal(small, "pools chat-m (round_robin, 2 nodes), and 2 more");
    lx_conf_free(&c);
    expect_ok(&c, (const char *[]){"--nodes", "http://d", "--model", "m", NULL}, NULL, NULL);
    lx_conf_pools_describe(&c, buf, sizeof(buf));
    assert_string_equal(buf, "pool m (round_robin, 1 node)");
    lx_conf_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_suspects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pools_describe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_token_differs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_env_is_unset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_syntax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dotenv_names_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_syntax_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_unknown_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_wrong_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_urls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_good_urls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_server_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_strategy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vllm_nodes_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vllm_nodes_with_models, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numeric_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_forms, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_masks_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_half_apply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conf_free, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strategy_canonical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_from_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dump_retry_settings, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
