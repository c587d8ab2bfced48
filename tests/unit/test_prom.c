/*
 * test_prom.c - lx_prom_scan_vllm on vLLM /metrics text: a realistic
 * multi-engine exposition (HELP/TYPE lines, histograms, process metrics),
 * sums and averages over engines, the newer KV-cache name preferred, quoted
 * label values holding '}' and '"', timestamps, CRLF, values that must be
 * ignored (NaN, Inf, negative, malformed), garbage and empty input.
 *
 * Every text is copied into an exact-size allocation first (no NUL after
 * it), so under ASan a one-byte over-read past the end fails the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/nodes/prom.h"

static char *copy;

static int free_copy(void **state)
{
    free(copy);
    copy = NULL;
    return 0;
}

static int scan_n(const char *text, size_t len, struct lx_vllm_load *out)
{
    free(copy);
    copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    return lx_prom_scan_vllm(copy, len, out);
}

static int scan(const char *text, struct lx_vllm_load *out)
{
    return scan_n(text, strlen(text), out);
}

static void assert_double(double got, double want)
{
    if (fabs(got - want) > 1e-9)
        fail_msg("got %.12g, want %.12g", got, want);
}

/* What a vLLM V1 server with two data-parallel engines serves (trimmed). */
static const char vllm_two_engines[] =
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    "python_gc_objects_collected_total{generation=\"0\"} 12345.0\n"
    "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
    "# TYPE process_resident_memory_bytes gauge\n"
    "process_resident_memory_bytes 1.2345678e+09\n"
    "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 7.0\n"
    "vllm:num_requests_running{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 5.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n"
    "vllm:num_requests_waiting{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.25\n"
    "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.75\n"
    "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried "
    "tokens.\n"
    "# TYPE vllm:prefix_cache_queries_total counter\n"
    "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "98765.0\n"
    "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n"
    "# TYPE vllm:prefix_cache_hits_total counter\n"
    "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} "
    "54321.0\n"
    "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
    "# TYPE vllm:num_preemptions_total counter\n"
    "vllm:num_preemptions_total{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n"
    "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"0.001\",model_name=\"m\"} 0.0\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 42.0\n"
    "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 42.0\n"
    "vllm:time_to_first_token_seconds_sum{engine=\"0\",model_name=\"m\"} 3.14\n"
    "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
    "# TYPE vllm:cache_config_info gauge\n"
    "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",enable_prefix_caching=\"True\","
    "gpu_memory_utilization=\"0.9\"} 1.0\n";

static void test_realistic_two_engines(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan(vllm_two_engines, &l), 0);
    assert_true(l.has_running);
    assert_true(l.has_waiting);
    assert_true(l.has_kv);
    assert_double(l.running, 12);
    assert_double(l.waiting, 4);
    assert_double(l.kv_usage, 0.5);
}

/* An older vLLM (V0): one engine, gpu_cache_usage_perc, integer values
 * without ".0", no trailing newline at the end of the body. */
static void test_old_kv_name_single_engine(void **state)
{
    struct lx_vllm_load l;
    const char *text =
        "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.125\n"
        "vllm:num_requests_swapped{model_name=\"m\"} 9\n"
        "vllm:num_requests_waiting{model_name=\"m\"} 2";

    assert_int_equal(scan(text, &l), 0);
    assert_true(l.has_kv);
    assert_double(l.kv_usage, 0.125);
    assert_true(l.has_waiting);
    assert_double(l.waiting, 2);
    assert_false(l.has_running);
    assert_double(l.running, 0);
}

/* Both KV names: the newer one wins whatever the order. */
static void test_new_kv_name_preferred(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan("vllm:gpu_cache_usage_perc{engine=\"0\"} 0.9\n"
                          "vllm:gpu_cache_usage_perc{engine=\"1\"} 0.7\n"
                          "vllm:kv_cache_usage_perc{engine=\"0\"} 0.1\n"
                          "vllm:kv_cache_usage_perc{engine=\"1\"} 0.3\n",
                          &l),
                     0);
    assert_double(l.kv_usage, 0.2);
    assert_int_equal(scan("vllm:kv_cache_usage_perc 0.4\n"
                          "vllm:gpu_cache_usage_perc 0.9\n",
                          &l),
                     0);
    assert_double(l.kv_usage, 0.4);
    /* A newer name with only bad values does not hide a good older one. */
    assert_int_equal(scan("vllm:kv_cache_usage_perc NaN\n"
                          "vllm:gpu_cache_usage_perc 0.9\n",
                          &l),
                     0);
    assert_true(l.has_kv);
    assert_double(l.kv_usage, 0.9);
}

static void test_quoted_labels(void **state)
{
    struct lx_vllm_load l;
    const char *text =
        "vllm:num_requests_waiting{engine=\"0\",note=\"a}b {c} \\\"quoted\\\" }\"} 4\n"
        "vllm:num_requests_waiting{path=\"C:\\\\dir\\\\\",x=\"}\"} 2\n"
        "vllm:num_requests_running{empty=\"\",nl=\"line\\nbreak\"} 1\n"
        /* A '}' in a quoted value and the real value after the real brace:
         * stopping at the first '}' would read `b" } 99` as the value. */
        "vllm:num_requests_running{a=\"}\",b=\" } 99\"} 3\n";

    assert_int_equal(scan(text, &l), 0);
    assert_double(l.waiting, 6);
    assert_double(l.running, 4);
}

static void test_timestamps_and_crlf(void **state)
{
    struct lx_vllm_load l;
    const char *text = "# HELP vllm:num_requests_running Number of requests.\r\n"
                       "# TYPE vllm:num_requests_running gauge\r\n"
                       "vllm:num_requests_running{engine=\"0\"} 3 1712345678901\r\n"
                       "vllm:num_requests_running{engine=\"1\"} 2\r\n"
                       "vllm:num_requests_waiting 5 1712345678901\r\n"
                       "vllm:kv_cache_usage_perc{engine=\"0\"}\t0.5\r\n"
                       "vllm:kv_cache_usage_perc 0.25\r\n";

    assert_int_equal(scan(text, &l), 0);
    assert_double(l.running, 5);
    assert_double(l.waiting, 5);
    assert_double(l.kv_usage, 0.375);
}

static void test_bad_values_ignored(void **state)
{
    struct lx_vllm_load l;
    const char *text = "vllm:num_requests_waiting{engine=\"0\"} NaN\n"
                       "vllm:num_requests_waiting{engine=\"1\"} +Inf\n"
                       "vllm:num_requests_waiting{engine=\"2\"} -Inf\n"
                       "vllm:num_requests_waiting{engine=\"3\"} -1\n"
                       "vllm:num_requests_waiting{engine=\"4\"} 2\n"
                       "vllm:num_requests_waiting{engine=\"5\"} 1e999\n"
                       "vllm:num_requests_waiting{engine=\"6\"} 3abc\n"
                       "vllm:num_requests_waiting{engine=\"7\"}\n"
                       "vllm:num_requests_waiting{engine=\"8\"} \n"
                       "vllm:num_requests_waiting{engine=\"9\" 7\n"
                       "vllm:num_requests_waiting{engine=\"10} 7\n"
                       "vllm:kv_cache_usage_perc{engine=\"0\"} nan\n"
                       "vllm:kv_cache_usage_perc{engine=\"1\"} 0.6\n"
                       "vllm:kv_cache_usage_perc{engine=\"2\"} -0.5\n"
                       "vllm:num_requests_running inf\n";

    assert_int_equal(scan(text, &l), 0);
    assert_true(l.has_waiting);
    assert_double(l.waiting, 2);
    /* The average is over the good values only. */
    assert_true(l.has_kv);
    assert_double(l.kv_usage, 0.6);
    assert_false(l.has_running);
    assert_double(l.running, 0);
}

/* Only bad values: nothing found. */
static void test_only_bad_values(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan("vllm:num_requests_waiting NaN\n"
                          "vllm:num_requests_running -3\n"
                          "vllm:kv_cache_usage_perc +Inf\n",
                          &l),
                     -1);
    assert_false(l.has_waiting || l.has_running || l.has_kv);
}

/* Usage above 1 is clamped (a node that over-reports stays comparable). */
static void test_kv_clamped(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan("vllm:gpu_cache_usage_perc 1.5\n", &l), 0);
    assert_double(l.kv_usage, 1);
    assert_int_equal(scan("vllm:kv_cache_usage_perc 0\n", &l), 0);
    assert_true(l.has_kv);
    assert_double(l.kv_usage, 0);
}

/* Summing finite values must not give an infinite count: the header
 * promises finite figures, and the health thread converts them to int. */
static void test_huge_values_stay_finite(void **state)
{
    struct lx_vllm_load l;
    int rc = scan("vllm:num_requests_waiting{engine=\"0\"} 1e308\n"
                  "vllm:num_requests_waiting{engine=\"1\"} 1e308\n"
                  "vllm:num_requests_running{engine=\"0\"} 1.7e308\n"
                  "vllm:num_requests_running{engine=\"1\"} 1.7e308\n",
                  &l);

    if (rc == 0) {
        assert_true(isfinite(l.waiting));
        assert_true(isfinite(l.running));
    }
}

/* Names match exactly: longer or shorter names, other prefixes and names
 * inside label values do not count. */
static void test_exact_names(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan("vllm:num_requests_waiting_total 5\n"
                          "vllm:num_requests_waitin 5\n"
                          "xvllm:num_requests_waiting 5\n"
                          "vllm:num_requests_waiting_by_reason{reason=\"capacity\"} 5\n"
                          "other{name=\"vllm:num_requests_waiting\"} 5\n"
                          " vllm:num_requests_waiting 5\n"
                          "#vllm:num_requests_waiting 5\n"
                          "# vllm:num_requests_running 5\n",
                          &l),
                     -1);
    assert_false(l.has_waiting || l.has_running || l.has_kv);
    assert_int_equal(scan("vllm:num_requests_waiting_total 5\n"
                          "vllm:num_requests_waiting 1\n",
                          &l),
                     0);
    assert_double(l.waiting, 1);
}

static void test_garbage_and_empty(void **state)
{
    struct lx_vllm_load l;
    const char *const bad[] = {
        "",
        "\n",
        "\r\n\r\n",
        "# HELP only comments\n# TYPE x gauge\n",
        "<html><body>502 Bad Gateway</body></html>",
        "{\"object\":\"error\",\"message\":\"not found\"}",
        "process_cpu_seconds_total 12.5\nhttp_requests_total{code=\"200\"} 1027\n",
        "vllm:num_requests_waiting",
        "vllm:num_requests_waiting{",
        "vllm:num_requests_waiting{engine=\"0",
        "vllm:num_requests_waiting{engine=\"\\",
        "vllm:num_requests_waiting{engine=\"0\"",
        "vllm:num_requests_waiting{engine=\"0\"}",
        "vllm:num_requests_waiting ",
        "\x00\x01\x02\xff\xfe",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = i == sizeof(bad) / sizeof(bad[0]) - 1 ? 5 : strlen(bad[i]);

        l.has_waiting = l.has_running = l.has_kv = true;
        if (scan_n(bad[i], len, &l) != -1)
            fail_msg("input %zu: want -1", i);
        assert_false(l.has_waiting || l.has_running || l.has_kv);
        assert_double(l.waiting + l.running + l.kv_usage, 0);
    }
    /* A zero-length scan of a NULL pointer is fine too. */
    assert_int_equal(lx_prom_scan_vllm(NULL, 0, &l), -1);
}

/* Every prefix of a real exposition (a body cut anywhere): no read past the
 * end, a clean answer, and finite non-negative figures. */
static void test_every_prefix(void **state)
{
    size_t n = strlen(vllm_two_engines);

    for (size_t len = 0; len <= n; len++) {
        struct lx_vllm_load l;
        int rc = scan_n(vllm_two_engines, len, &l);

        assert_true(rc == 0 || rc == -1);
        assert_int_equal(rc == 0, l.has_waiting || l.has_running || l.has_kv);
        assert_true(l.waiting >= 0 && l.waiting <= 4);
        assert_true(l.running >= 0 && l.running <= 12);
        assert_true(l.kv_usage >= 0 && l.kv_usage <= 1);
    }
    /* Cut after the first running line: only that engine. */
    {
        struct lx_vllm_load l;
        const char *cut = strstr(vllm_two_engines, "vllm:num_requests_running{engine=\"1\"");

        assert_non_null(cut);
        assert_int_equal(scan_n(vllm_two_engines, (size_t)(cut - vllm_two_engines), &l), 0);
        assert_double(l.running, 7);
        assert_false(l.has_waiting);
    }
}

/* A text whose last line ends inside a quoted label value right after a
 * backslash: the scanner must stop at the end of the buffer. */
static void test_truncated_escape_at_end(void **state)
{
    struct lx_vllm_load l;
    const char *texts[] = {
        "vllm:num_requests_running 1\nvllm:num_requests_waiting{a=\"\\",
        "vllm:num_requests_running 1\nvllm:num_requests_waiting{a=\"x\\\"",
        "vllm:num_requests_running 1\nvllm:num_requests_waiting{a=\"x\"}",
        "vllm:num_requests_running 1\nvllm:num_requests_waiting{a=\"x\"} ",
    };

    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        assert_int_equal(scan(texts[i], &l), 0);
        assert_double(l.running, 1);
        assert_false(l.has_waiting);
    }
}

/* vllm:cache_config_info: the KV cache's size in tokens, num_gpu_blocks x
 * block_size from its labels, in any order, summed over engines; a series
 * without both numbers, or with one that is not a positive number, counts
 * for nothing (vLLM writes "None" for unset ones). */
static void test_cache_config_info(void **state)
{
    struct lx_vllm_load l;

    /* As vLLM writes it (labels sorted), with the lookalike label
     * num_gpu_blocks_override first in the other order. */
    assert_int_equal(
        scan("vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",engine=\"0\","
             "gpu_memory_utilization=\"0.9\",num_cpu_blocks=\"None\",num_gpu_blocks=\"2048\","
             "num_gpu_blocks_override=\"None\",sliding_window=\"None\"} 1.0\n"
             "vllm:cache_config_info{num_gpu_blocks_override=\"None\",engine=\"1\","
             "num_gpu_blocks=\"1000\",block_size=\"32\"} 1.0\n",
             &l),
        0);
    assert_true(l.has_cache_tokens);
    assert_double(l.cache_tokens, 2048 * 16 + 1000 * 32);
    /* Block size first or last, one label or many between. */
    assert_int_equal(scan("vllm:num_requests_waiting 0\n"
                          "vllm:cache_config_info{num_gpu_blocks=\"10\",block_size=\"16\"} 1\n"
                          "vllm:cache_config_info{block_size=\"16\",a=\"1\",b=\"2\","
                          "num_gpu_blocks=\"5\"} 1\n",
                          &l),
                     0);
    assert_double(l.cache_tokens, 15 * 16);
    /* Missing or unusable numbers: the series is left out. */
    assert_int_equal(
        scan("vllm:num_requests_waiting 0\n"
             "vllm:cache_config_info{block_size=\"16\"} 1\n"
             "vllm:cache_config_info{num_gpu_blocks=\"2048\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"None\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"0\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"-5\"} 1\n"
             "vllm:cache_config_info{block_size=\"x16\",num_gpu_blocks=\"12\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"1e12\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"inf\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",xnum_gpu_blocks=\"12\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks_total=\"12\"} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"12\"\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"12} 1\n"
             "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"12\"} NaN\n"
             "vllm:cache_config_info 1\n"
             "vllm:cache_config_info_total{block_size=\"16\",num_gpu_blocks=\"12\"} 1\n",
             &l),
        0);
    assert_false(l.has_cache_tokens);
    assert_double(l.cache_tokens, 0);
    /* A name inside another label's quoted value is not that label. */
    assert_int_equal(scan("vllm:num_requests_waiting 0\n"
                          "vllm:cache_config_info{note=\"a,num_gpu_blocks=\\\"9\\\"\","
                          "num_gpu_blocks=\"100\",block_size=\"16\"} 1\n",
                          &l),
                     0);
    assert_double(l.cache_tokens, 1600);
    /* On its own it is no load figure: not a vLLM answer. */
    assert_int_equal(
        scan("vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"2048\"} 1\n", &l), -1);
}

/* vllm:prefix_cache_queries_total (a counter that falls when the engine
 * restarts), summed over engines; its _created sample, the hits counter
 * and other lookalikes are not it. */
static void test_prefix_cache_queries(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan(vllm_two_engines, &l), 0);
    assert_true(l.has_prefix_queries);
    assert_double(l.prefix_queries, 98765);
    assert_false(l.has_cache_tokens); /* block_size without num_gpu_blocks */
    assert_int_equal(
        scan("vllm:num_requests_running 0\n"
             "# TYPE vllm:prefix_cache_queries counter\n"
             "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 1234.0\n"
             "vllm:prefix_cache_queries_created{engine=\"0\",model_name=\"m\"} 1.7e+09\n"
             "vllm:prefix_cache_queries_total{engine=\"1\",model_name=\"m\"} 766\n"
             "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 1000.0\n"
             "vllm:prefix_cache_queries{engine=\"0\"} 5\n"
             "vllm:prefix_cache_queries_total{engine=\"2\"} -3\n"
             "vllm:prefix_cache_queries_total{engine=\"2\"} NaN\n"
             "vllm:prefix_cache_queries_total{engine=\"2\"} 12abc\n",
             &l),
        0);
    assert_true(l.has_prefix_queries);
    assert_double(l.prefix_queries, 2000);
    /* Absent: not known, rather than zero queries. */
    assert_int_equal(scan("vllm:num_requests_running 0\n"
                          "vllm:prefix_cache_hits_total 5\n",
                          &l),
                     0);
    assert_false(l.has_prefix_queries);
    assert_double(l.prefix_queries, 0);
    /* A fresh engine reports 0: present. */
    assert_int_equal(scan("vllm:num_requests_running 0\nvllm:prefix_cache_queries_total 0\n", &l),
                     0);
    assert_true(l.has_prefix_queries);
    assert_double(l.prefix_queries, 0);
}

/* vllm:prefix_cache_hits_total, as the queries: summed over engines, its
 * _created sample and lookalikes left out, absent = not known. */
static void test_prefix_cache_hits(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan(vllm_two_engines, &l), 0);
    assert_true(l.has_prefix_hits);
    assert_double(l.prefix_hits, 54321);
    assert_int_equal(
        scan("vllm:num_requests_running 0\n"
             "# TYPE vllm:prefix_cache_hits counter\n"
             "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} 700.0\n"
             "vllm:prefix_cache_hits_created{engine=\"0\",model_name=\"m\"} 1.7e+09\n"
             "vllm:prefix_cache_hits_total{engine=\"1\",model_name=\"m\"} 300\n"
             "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 4000\n"
             "vllm:prefix_cache_hits{engine=\"0\"} 5\n"
             "vllm:prefix_cache_hits_total_x 5\n"
             "xvllm:prefix_cache_hits_total 5\n"
             "vllm:prefix_cache_hits_total{engine=\"2\"} -3\n"
             "vllm:prefix_cache_hits_total{engine=\"2\"} NaN\n"
             "vllm:prefix_cache_hits_total{engine=\"2\"} +Inf\n"
             "vllm:prefix_cache_hits_total{engine=\"2\"} 12abc\n",
             &l),
        0);
    assert_true(l.has_prefix_hits && l.has_prefix_queries);
    assert_double(l.prefix_hits, 1000);
    assert_double(l.prefix_queries, 4000);
    /* Absent: not known, rather than zero hits. */
    assert_int_equal(scan("vllm:num_requests_running 0\n"
                          "vllm:prefix_cache_queries_total 5\n",
                          &l),
                     0);
    assert_false(l.has_prefix_hits);
    assert_double(l.prefix_hits, 0);
    /* A fresh engine reports 0: present. */
    assert_int_equal(scan("vllm:num_requests_running 0\nvllm:prefix_cache_hits_total 0\n", &l),
                     0);
    assert_true(l.has_prefix_hits);
    assert_double(l.prefix_hits, 0);
    /* Only the counters: no load figure, not a vLLM answer, but read. */
    assert_int_equal(scan("vllm:prefix_cache_hits_total 2\n", &l), -1);
    assert_true(l.has_prefix_hits);
    assert_double(l.prefix_hits, 2);
}

/* The prefix-cache counters count tokens: past a billion (a busy engine's
 * day) they are still read, as vLLM writes them, up to 1e15 a line; a gauge
 * that large is garbage and skipped. */
static void test_token_counters_past_a_billion(void **state)
{
    struct lx_vllm_load l;

    assert_int_equal(scan("vllm:num_requests_running{engine=\"0\"} 1\n"
                          "vllm:num_requests_running{engine=\"1\"} 2e9\n"
                          "vllm:prefix_cache_queries_total{engine=\"0\"} 3.456789012e+10\n"
                          "vllm:prefix_cache_queries_total{engine=\"1\"} 1000000001\n"
                          "vllm:prefix_cache_hits_total{engine=\"0\"} 2.5e+10\n"
                          "vllm:prefix_cache_hits_total{engine=\"1\"} 1e15\n"
                          "vllm:prefix_cache_hits_total{engine=\"2\"} 1.5e15\n",
                          &l),
                     0);
    assert_double(l.running, 1);
    assert_double(l.prefix_queries, 34567890120.0 + 1000000001.0);
    /* 2.5e10 + 1e15 reaches the cap; the 1.5e15 line alone is refused. */
    assert_double(l.prefix_hits, 1e15);
    assert_int_equal(scan("vllm:num_requests_running 0\n"
                          "vllm:prefix_cache_hits_total 1.5e15\n",
                          &l),
                     0);
    assert_false(l.has_prefix_hits);
}

/* A node that sends thousands of the largest series it may: the cache size
 * (1e18 a line) stops at 1e15, exact and convertible to uint64_t (the scrape
 * stores it so); the prefix queries, far below, are summed exactly. */
static void test_sums_are_capped(void **state)
{
    static const char big_info[] =
        "vllm:cache_config_info{block_size=\"1000000000\",num_gpu_blocks=\"1000000000\"} 1\n";
    static const char big_queries[] = "vllm:prefix_cache_queries_total 1000000000\n";
    size_t n = 20000, li = sizeof(big_info) - 1, lq = sizeof(big_queries) - 1;
    char *text = malloc(n * (li + lq));
    struct lx_vllm_load l;

    assert_non_null(text);
    for (size_t i = 0; i < n; i++) {
        memcpy(text + i * (li + lq), big_info, li);
        memcpy(text + i * (li + lq) + li, big_queries, lq);
    }
    assert_int_equal(scan_n(text, n * (li + lq), &l), -1); /* no load figure */
    free(text);
    assert_true(l.has_cache_tokens && l.has_prefix_queries);
    assert_double(l.cache_tokens, 1e15);
    assert_double(l.prefix_queries, 2e13); /* below the cap: summed exactly */
    assert_true((uint64_t)l.cache_tokens == 1000000000000000ULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_realistic_two_engines, free_copy),
        cmocka_unit_test_teardown(test_sums_are_capped, free_copy),
        cmocka_unit_test_teardown(test_old_kv_name_single_engine, free_copy),
        cmocka_unit_test_teardown(test_new_kv_name_preferred, free_copy),
        cmocka_unit_test_teardown(test_quoted_labels, free_copy),
        cmocka_unit_test_teardown(test_timestamps_and_crlf, free_copy),
        cmocka_unit_test_teardown(test_bad_values_ignored, free_copy),
        cmocka_unit_test_teardown(test_only_bad_values, free_copy),
        cmocka_unit_test_teardown(test_kv_clamped, free_copy),
        cmocka_unit_test_teardown(test_huge_values_stay_finite, free_copy),
        cmocka_unit_test_teardown(test_exact_names, free_copy),
        cmocka_unit_test_teardown(test_garbage_and_empty, free_copy),
        cmocka_unit_test_teardown(test_every_prefix, free_copy),
        cmocka_unit_test_teardown(test_truncated_escape_at_end, free_copy),
        cmocka_unit_test_teardown(test_cache_config_info, free_copy),
        cmocka_unit_test_teardown(test_prefix_cache_queries, free_copy),
        cmocka_unit_test_teardown(test_prefix_cache_hits, free_copy),
        cmocka_unit_test_teardown(test_token_counters_past_a_billion, free_copy),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
