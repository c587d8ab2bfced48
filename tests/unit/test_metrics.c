/*
 * test_metrics.c - label values that clients choose: bounded in number,
 * printable UTF-8 only; the retry budget, hedge and resume counters, at zero
 * from the start and summed over shards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "../../src/core/buf.h"
#include "../../src/obs/metrics.h"

/* The scrape as a NUL-terminated string; caller frees with lx_buf_deinit. */
static const char *scrape(struct lx_buf *out)
{
    lx_buf_init(out, 0);
    lx_metrics_render(out);
    lx_buf_append(out, "", 1);
    return out->data;
}

static void expect_line(const char *text, const char *line)
{
    char want[256];

    snprintf(want, sizeof(want), "\n%s\n", line);
    if (!strstr(text, want))
        fail_msg("no line [%s] in:\n%s", line, text);
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
        "a\nb", "tab\there", "\x7f", "\xc3", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80",
        "\xf4\x90\x80\x80", "\xff", "ok\xe2\x82",
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unprintable_names_are_other),
        cmocka_unit_test(test_first_names_kept_then_other),
        cmocka_unit_test(test_retry_counters),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
