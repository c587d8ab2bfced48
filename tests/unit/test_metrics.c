/*
 * test_metrics.c - label values that clients choose: bounded in number,
 * printable UTF-8 only.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "../../src/obs/metrics.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unprintable_names_are_other),
        cmocka_unit_test(test_first_names_kept_then_other),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
