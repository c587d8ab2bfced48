/*
 * test_body_scan.c - lx_body_scan: the fields it reports and the inputs it
 * must refuse. Every body is copied into an exact-size allocation first, so
 * under ASan a one-byte over-read past the end fails the test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/body_scan.h"

/* The exact-size copy the last scan ran on; slices point into it, so it
 * lives until the next scan or the test's teardown. */
static char *copy;

static int free_copy(void **state)
{
    free(copy);
    copy = NULL;
    return 0;
}

static int scan_n(const char *body, size_t len, struct lx_body_scan *out)
{
    free(copy);
    copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, body, len);
    return lx_body_scan(copy, len, out);
}

static int scan(const char *body, struct lx_body_scan *out)
{
    return scan_n(body, strlen(body), out);
}

static void assert_slice(struct lx_slice s, const char *want)
{
    assert_non_null(s.p);
    assert_true(s.p >= copy);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

static void assert_scan(const char *body, int want)
{
    struct lx_body_scan r;

    assert_int_equal(scan(body, &r), want);
}

/* A body that is <n> nested arrays inside the top-level object, so <n> + 1
 * containers deep in all. */
static char *nested_arrays(size_t n, size_t *len)
{
    size_t i, k = 0;
    char *b = malloc(n * 2 + 8);

    assert_non_null(b);
    memcpy(b, "{\"a\":", 5);
    k = 5;
    for (i = 0; i < n; i++)
        b[k++] = '[';
    for (i = 0; i < n; i++)
        b[k++] = ']';
    b[k++] = '}';
    *len = k;
    return b;
}

static const char chat_body[] =
    "{\"model\":\"llama-3-8b\",\"messages\":[{\"role\":\"system\",\"content\":\"You are "
    "helpful.\"},{\"role\":\"user\",\"content\":\"Hi \\\"there\\\" \\u00e9\\ud83d\\ude00\"}],"
    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u-42\","
    "\"max_tokens\":256,\"temperature\":0.7,\"top_p\":1e-1,\"stop\":null,\"n\":1,"
    "\"logprobs\":false}";

static void test_chat_body(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan(chat_body, &r), LX_SCAN_OK);
    assert_int_equal(r.end, strlen(chat_body));
    assert_true(r.model_present);
    assert_true(r.model_is_string);
    assert_false(r.model_has_escape);
    assert_slice(r.model, "llama-3-8b");
    assert_slice(r.model_value, "\"llama-3-8b\"");
    assert_true(r.stream);
    assert_true(r.stream_present);
    assert_slice(r.stream_options, "{\"include_usage\":true}");
    assert_true(r.include_usage);
    assert_slice(r.messages,
                 "[{\"role\":\"system\",\"content\":\"You are helpful.\"},{\"role\":\"user\","
                 "\"content\":\"Hi \\\"there\\\" \\u00e9\\ud83d\\ude00\"}]");
    assert_null(r.prompt.p);
    assert_slice(r.user, "u-42");
    assert_slice(r.max_tokens, "256");
}

static void test_completions_body(void **state)
{
    struct lx_body_scan r;
    const char *b = "{ \"model\" : \"gpt2\" , \"prompt\" : [ \"Say\" , \"this\" ] ,\n"
                    "\t\"max_tokens\" : 7 , \"stream\" : false }";

    assert_int_equal(scan(b, &r), LX_SCAN_OK);
    assert_int_equal(r.end, strlen(b));
    assert_slice(r.model, "gpt2");
    assert_slice(r.prompt, "[ \"Say\" , \"this\" ]");
    assert_null(r.messages.p);
    assert_slice(r.max_tokens, "7");
    assert_false(r.stream);
    assert_true(r.stream_present);
    assert_null(r.stream_options.p);
    assert_false(r.include_usage);
    assert_null(r.user.p);

    assert_int_equal(scan("{\"model\":\"m\",\"prompt\":\"Once upon\"}", &r), LX_SCAN_OK);
    assert_slice(r.prompt, "\"Once upon\"");
}

static void test_pretty_printed(void **state)
{
    struct lx_body_scan r;
    const char *b = "\r\n\t {\r\n  \"model\": \"m\",\r\n  \"messages\": [\r\n    {\r\n"
                    "      \"role\": \"user\",\r\n      \"content\": \"x\"\r\n    }\r\n  ]\r\n"
                    "}\r\n \t";

    assert_int_equal(scan(b, &r), LX_SCAN_OK);
    assert_int_equal(r.end, strlen(b) - 4);
    assert_slice(r.model, "m");
    assert_non_null(r.messages.p);
    assert_int_equal(r.messages.p[0], '[');
    assert_int_equal(r.messages.p[r.messages.len - 1], ']');
}

static void test_empty_object(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{}", &r), LX_SCAN_OK);
    assert_int_equal(r.end, 2);
    assert_false(r.model_present);
    assert_false(r.stream_present);
    assert_int_equal(scan(" { \n } ", &r), LX_SCAN_OK);
    assert_int_equal(r.end, 6);
}

static void test_model_absent(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"messages\":[]}", &r), LX_SCAN_OK);
    assert_false(r.model_present);
    assert_false(r.model_is_string);
    assert_null(r.model.p);
    assert_null(r.model_value.p);
    assert_slice(r.messages, "[]");
}

static void test_model_not_string(void **state)
{
    static const char *const values[] = {"42", "null", "true", "{\"name\":\"m\"}", "[\"m\"]"};
    char body[64];
    struct lx_body_scan r;
    size_t i;

    for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        snprintf(body, sizeof(body), "{\"model\":%s}", values[i]);
        assert_int_equal(scan(body, &r), LX_SCAN_OK);
        assert_true(r.model_present);
        assert_false(r.model_is_string);
        assert_false(r.model_has_escape);
        assert_null(r.model.p);
        assert_slice(r.model_value, values[i]);
    }
}

static void test_model_escaped(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"model\":\"org\\/m\\u0031\"}", &r), LX_SCAN_OK);
    assert_true(r.model_is_string);
    assert_true(r.model_has_escape);
    assert_slice(r.model, "org\\/m\\u0031");
    assert_slice(r.model_value, "\"org\\/m\\u0031\"");

    assert_int_equal(scan("{\"model\":\"\"}", &r), LX_SCAN_OK);
    assert_true(r.model_is_string);
    assert_false(r.model_has_escape);
    assert_non_null(r.model.p);
    assert_int_equal(r.model.len, 0);
}

static void test_escaped_keys(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"mod\\u0065l\":\"m\"}", &r), LX_SCAN_OK);
    assert_true(r.model_present);
    assert_slice(r.model, "m");

    assert_int_equal(scan("{\"\\u006D\\u006f\\u0064\\u0065\\u006c\":\"m\"}", &r), LX_SCAN_OK);
    assert_slice(r.model, "m");

    assert_int_equal(scan("{\"stre\\u0061m\":true,\"max_\\u0074okens\":9,"
                          "\"stream\\u005foptions\":{\"include\\u005Fusage\":true}}",
                          &r),
                     LX_SCAN_OK);
    assert_true(r.stream);
    assert_slice(r.max_tokens, "9");
    assert_true(r.include_usage);

    /* Near misses are other keys. */
    assert_int_equal(
        scan("{\"model\\u0000\":\"a\",\"modeL\":\"b\",\"mode\":\"c\",\"models\":\"d\","
             "\"mod\\u00e9l\":\"e\",\"\\ud83d\\ude00model\":\"f\",\"mo\\\"del\":\"g\"}",
             &r),
        LX_SCAN_OK);
    assert_false(r.model_present);

    /* Escaped keys longer than any we look for are skipped, not overflowed. */
    assert_int_equal(scan("{\"\\u0061aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":1,"
                          "\"\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n"
                          "\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\\n\":2,\"model\":\"m\"}",
                          &r),
                     LX_SCAN_OK);
    assert_slice(r.model, "m");
}

static void test_stream_values(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"stream\":true}", &r), LX_SCAN_OK);
    assert_true(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"stream\":false}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"stream\":\"true\"}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"stream\":1}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"stream\":null}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"stream\":[true]}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_true(r.stream_present);

    assert_int_equal(scan("{\"model\":\"m\"}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_false(r.stream_present);
}

static void test_stream_options(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"stream_options\":{\"include_usage\":false}}", &r), LX_SCAN_OK);
    assert_slice(r.stream_options, "{\"include_usage\":false}");
    assert_false(r.include_usage);

    assert_int_equal(scan("{\"stream_options\":{\"include_usage\":\"true\"}}", &r), LX_SCAN_OK);
    assert_false(r.include_usage);

    assert_int_equal(scan("{\"stream_options\":{}}", &r), LX_SCAN_OK);
    assert_slice(r.stream_options, "{}");
    assert_false(r.include_usage);

    assert_int_equal(scan("{\"stream_options\":{\"x\":[1,{\"y\":2}], \"include_usage\" : true ,"
                          "\"z\":null}}",
                          &r),
                     LX_SCAN_OK);
    assert_true(r.include_usage);

    /* Only directly inside stream_options. */
    assert_int_equal(scan("{\"stream_options\":{\"x\":{\"include_usage\":true}}}", &r), LX_SCAN_OK);
    assert_false(r.include_usage);
    assert_int_equal(scan("{\"include_usage\":true,\"meta\":{\"include_usage\":true}}", &r),
                     LX_SCAN_OK);
    assert_false(r.include_usage);
    assert_null(r.stream_options.p);

    /* Any type is reported raw; include_usage only comes from an object. */
    assert_int_equal(scan("{\"stream_options\":null}", &r), LX_SCAN_OK);
    assert_slice(r.stream_options, "null");
    assert_false(r.include_usage);

    /* The last stream_options wins, include_usage with it. */
    assert_int_equal(
        scan("{\"stream_options\":{\"include_usage\":true},\"stream_options\":null}", &r),
        LX_SCAN_OK);
    assert_slice(r.stream_options, "null");
    assert_false(r.include_usage);
    assert_int_equal(scan("{\"stream_options\":{\"include_usage\":true},"
                          "\"stream_options\":{\"x\":1}}",
                          &r),
                     LX_SCAN_OK);
    assert_false(r.include_usage);
    assert_int_equal(
        scan("{\"stream_options\":{\"include_usage\":true,\"include_usage\":false}}", &r),
        LX_SCAN_OK);
    assert_false(r.include_usage);
    assert_int_equal(
        scan("{\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}", &r),
        LX_SCAN_OK);
    assert_true(r.include_usage);

    /* Malformed JSON inside stream_options is still malformed. */
    assert_scan("{\"stream_options\":{\"include_usage\":tru}}", LX_SCAN_SYNTAX);
    assert_scan("{\"stream_options\":{\"include_usage\":true,}}", LX_SCAN_SYNTAX);
    assert_scan("{\"stream_options\":{\"include_usage\" true}}", LX_SCAN_SYNTAX);
}

static void test_nested_keys_ignored(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"messages\":[{\"model\":\"inner\",\"stream\":true,\"user\":\"x\","
                          "\"max_tokens\":5,\"role\":\"user\",\"content\":\"hi\"}],"
                          "\"metadata\":{\"model\":\"meta\",\"stream\":true,"
                          "\"stream_options\":{\"include_usage\":true}},"
                          "\"tools\":[[{\"prompt\":\"p\"}]]}",
                          &r),
                     LX_SCAN_OK);
    assert_false(r.model_present);
    assert_null(r.model.p);
    assert_false(r.stream_present);
    assert_false(r.stream);
    assert_null(r.stream_options.p);
    assert_false(r.include_usage);
    assert_null(r.user.p);
    assert_null(r.max_tokens.p);
    assert_null(r.prompt.p);
    assert_non_null(r.messages.p);

    /* A key's name inside a string value is not a key. */
    assert_int_equal(scan("{\"content\":\"\\\"model\\\":\\\"x\\\"\",\"model\":\"real\"}", &r),
                     LX_SCAN_OK);
    assert_slice(r.model, "real");
}

static void test_duplicate_keys(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"model\":\"a\",\"model\":\"b\"}", &r), LX_SCAN_OK);
    assert_slice(r.model, "b");
    assert_slice(r.model_value, "\"b\"");

    assert_int_equal(scan("{\"model\":\"a\\n\",\"model\":7}", &r), LX_SCAN_OK);
    assert_true(r.model_present);
    assert_false(r.model_is_string);
    assert_false(r.model_has_escape);
    assert_null(r.model.p);
    assert_slice(r.model_value, "7");

    assert_int_equal(scan("{\"model\":null,\"model\":\"c\"}", &r), LX_SCAN_OK);
    assert_true(r.model_is_string);
    assert_slice(r.model, "c");

    assert_int_equal(scan("{\"stream\":true,\"stream\":false}", &r), LX_SCAN_OK);
    assert_false(r.stream);
    assert_int_equal(scan("{\"stream\":false,\"stream\":true}", &r), LX_SCAN_OK);
    assert_true(r.stream);

    assert_int_equal(scan("{\"user\":\"a\",\"user\":1}", &r), LX_SCAN_OK);
    assert_null(r.user.p);
    assert_int_equal(scan("{\"messages\":[1],\"messages\":[2]}", &r), LX_SCAN_OK);
    assert_slice(r.messages, "[2]");
    assert_int_equal(scan("{\"mod\\u0065l\":\"a\",\"model\":\"b\",\"m\\u006fdel\":\"c\"}", &r),
                     LX_SCAN_OK);
    assert_slice(r.model, "c");
}

static void test_max_tokens(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"max_tokens\":-1.5e3}", &r), LX_SCAN_OK);
    assert_slice(r.max_tokens, "-1.5e3");
    assert_int_equal(scan("{\"max_completion_tokens\":100}", &r), LX_SCAN_OK);
    assert_slice(r.max_tokens, "100");

    /* The newer key wins whatever the order, as in vLLM. */
    assert_int_equal(scan("{\"max_tokens\":1,\"max_completion_tokens\":2}", &r), LX_SCAN_OK);
    assert_slice(r.max_tokens, "2");
    assert_int_equal(scan("{\"max_completion_tokens\":2,\"max_tokens\":1}", &r), LX_SCAN_OK);
    assert_slice(r.max_tokens, "2");
    assert_int_equal(scan("{\"max_completion_tokens\":null,\"max_tokens\":1}", &r), LX_SCAN_OK);
    assert_slice(r.max_tokens, "1");

    /* Only numbers count. */
    assert_int_equal(scan("{\"max_tokens\":\"5\"}", &r), LX_SCAN_OK);
    assert_null(r.max_tokens.p);
    assert_int_equal(scan("{\"max_tokens\":5,\"max_tokens\":null}", &r), LX_SCAN_OK);
    assert_null(r.max_tokens.p);
}

static void test_user(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"user\":\"a\\\"b\"}", &r), LX_SCAN_OK);
    assert_slice(r.user, "a\\\"b");
    assert_int_equal(scan("{\"user\":{\"id\":1}}", &r), LX_SCAN_OK);
    assert_null(r.user.p);
}

static void test_empty(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(lx_body_scan(NULL, 0, &r), LX_SCAN_EMPTY);
    assert_int_equal(r.end, 0);
    assert_int_equal(scan_n("", 0, &r), LX_SCAN_EMPTY);
    assert_int_equal(scan(" ", &r), LX_SCAN_EMPTY);
    assert_int_equal(scan(" \t\r\n  \n", &r), LX_SCAN_EMPTY);
    assert_int_equal(r.end, 7);
    /* Form feed and vertical tab are not JSON whitespace. */
    assert_scan("\f{}", LX_SCAN_SYNTAX);
    assert_scan("\v", LX_SCAN_SYNTAX);
}

static void test_not_object(void **state)
{
    static const char *const bodies[] = {
        "[]",        "[{\"model\":\"m\"}]",
        "\"model\"", "42",
        "-1",        "0",
        "true",      "false",
        "null",      "  [1,2]",
        "[",         "nul",
    };
    size_t i;

    for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        assert_scan(bodies[i], LX_SCAN_NOT_OBJECT);

    assert_scan("x", LX_SCAN_SYNTAX);
    assert_scan("}", LX_SCAN_SYNTAX);
    assert_scan("'a'", LX_SCAN_SYNTAX);
    assert_scan("\xef\xbb\xbf{}", LX_SCAN_SYNTAX); /* a BOM */
}

static void test_truncated(void **state)
{
    struct lx_body_scan r;
    size_t n = strlen(chat_body), k;

    for (k = 0; k < n; k++) {
        int rc = scan_n(chat_body, k, &r);

        assert_int_not_equal(rc, LX_SCAN_OK);
        assert_true(rc == LX_SCAN_SYNTAX || (k == 0 && rc == LX_SCAN_EMPTY));
        assert_true(r.end <= k);
        assert_null(r.model.p);
    }
    assert_int_equal(scan_n(chat_body, n, &r), LX_SCAN_OK);
}

static void test_trailing(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{} x", &r), LX_SCAN_TRAILING);
    assert_int_equal(r.end, 3);
    assert_scan("{}{}", LX_SCAN_TRAILING);
    assert_scan("{}}", LX_SCAN_TRAILING);
    assert_scan("{},", LX_SCAN_TRAILING);
    assert_scan("{\"model\":\"m\"}\n[]", LX_SCAN_TRAILING);
    assert_int_equal(scan_n("{}\0", 3, &r), LX_SCAN_TRAILING);

    assert_int_equal(scan("{\"model\":\"m\"} \r\n\t ", &r), LX_SCAN_OK);
    assert_int_equal(r.end, 13);
    assert_slice(r.model, "m");
}

static void test_depth(void **state)
{
    struct lx_body_scan r;
    size_t len, i, k;
    char *b;

    /* 63 arrays inside the object: 64 deep, the limit. */
    b = nested_arrays(LX_SCAN_MAX_DEPTH - 1, &len);
    assert_int_equal(scan_n(b, len, &r), LX_SCAN_OK);
    assert_int_equal(r.end, len);
    free(b);

    b = nested_arrays(LX_SCAN_MAX_DEPTH, &len);
    assert_int_equal(scan_n(b, len, &r), LX_SCAN_DEPTH);
    assert_int_equal(r.end, 5 + LX_SCAN_MAX_DEPTH - 1);
    free(b);

    b = nested_arrays(1000, &len);
    assert_int_equal(scan_n(b, len, &r), LX_SCAN_DEPTH);
    free(b);

    /* Objects count the same way: {"a":{"a":...{}...}} 64 and 65 deep. */
    for (k = LX_SCAN_MAX_DEPTH; k <= LX_SCAN_MAX_DEPTH + 1; k++) {
        b = malloc(k * 6 + 2);
        assert_non_null(b);
        len = 0;
        for (i = 0; i + 1 < k; i++) {
            memcpy(b + len, "{\"a\":", 5);
            len += 5;
        }
        b[len++] = '{';
        for (i = 0; i < k; i++)
            b[len++] = '}';
        assert_int_equal(scan_n(b, len, &r), k == LX_SCAN_MAX_DEPTH ? LX_SCAN_OK : LX_SCAN_DEPTH);
        free(b);
    }

    /* Inside stream_options, which is walked by its own frame. */
    assert_int_equal(scan("{\"stream_options\":{\"x\":[[[]]],\"include_usage\":true}}", &r),
                     LX_SCAN_OK);
    assert_true(r.include_usage);
    /* {"stream_options":{"x": and 62 arrays is 64 deep; one more is too deep. */
    for (k = LX_SCAN_MAX_DEPTH - 2; k <= LX_SCAN_MAX_DEPTH - 1; k++) {
        char so[256];

        len = (size_t)snprintf(so, sizeof(so), "{\"stream_options\":{\"x\":");
        for (i = 0; i < k; i++)
            so[len++] = '[';
        for (i = 0; i < k; i++)
            so[len++] = ']';
        so[len++] = '}';
        so[len++] = '}';
        assert_int_equal(scan_n(so, len, &r),
                         k == LX_SCAN_MAX_DEPTH - 2 ? LX_SCAN_OK : LX_SCAN_DEPTH);
    }

    /* 100000 brackets: refused without touching the C stack. */
    b = malloc(100000);
    assert_non_null(b);
    memset(b, '[', 100000);
    assert_int_equal(scan_n(b, 100000, &r), LX_SCAN_NOT_OBJECT);
    memcpy(b, "{\"a\":", 5);
    assert_int_equal(scan_n(b, 100000, &r), LX_SCAN_DEPTH);
    memset(b, '{', 100000);
    assert_int_equal(scan_n(b, 100000, &r), LX_SCAN_SYNTAX);
    for (i = 0; i + 5 <= 100000; i += 5)
        memcpy(b + i, "{\"a\":", 5);
    assert_int_equal(scan_n(b, 100000, &r), LX_SCAN_DEPTH);
    free(b);
}

static void test_bad_escapes(void **state)
{
    static const char *const bad[] = {
        "\\x",    "\\'",     "\\a",     "\\0",     "\\U0041", "\\u",    "\\u1",       "\\u12",
        "\\u123", "\\u12G4", "\\u-123", "\\u 123", "\\",      "\\\\\\", "\\\xc3\xa9",
    };
    static const char *const good[] = {
        "\\\"", "\\\\",    "\\/",     "\\b",     "\\f",     "\\n",   "\\r",
        "\\t",  "\\u0000", "\\uFFFF", "\\uabcd", "\\u00E9", "x\\\\", "\\\\\\\\",
    };
    char body[64];
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":\"%s\"}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"%s\":1}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"model\":\"%s\"}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
    }
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":\"%s\"}", good[i]);
        assert_scan(body, LX_SCAN_OK);
        snprintf(body, sizeof(body), "{\"%s\":1}", good[i]);
        assert_scan(body, LX_SCAN_OK);
    }
}

static void test_surrogates(void **state)
{
    static const char *const bad[] = {
        "\\ud83d",    "\\ud83dx",       "\\ud83d\\u0041", "\\ud83d\\ud83d",
        "\\ude00",    "\\ude00\\ud83d", "\\udbff\\ue000", "\\ud800\\n",
        "\\ud800\\u", "\\ud800\\udc",   "a\\udfff",       "\\uD800\\uDBFF",
    };
    static const char *const good[] = {
        "\\ud83d\\ude00", "\\uD83D\\uDE00", "\\ud800\\udc00",   "\\udbff\\udfff",
        "\\ud7ff",        "\\ue000",        "x\\ud83d\\ude00y",
    };
    char body[64];
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":\"%s\"}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"%s\":1}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
    }
    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":\"%s\"}", good[i]);
        assert_scan(body, LX_SCAN_OK);
        snprintf(body, sizeof(body), "{\"messages\":[{\"%s\":[\"%s\"]}]}", good[i], good[i]);
        assert_scan(body, LX_SCAN_OK);
    }
}

static void test_control_chars(void **state)
{
    char body[16];
    struct lx_body_scan r;
    int c;

    for (c = 0; c < 0x20; c++) {
        memcpy(body, "{\"a\":\"x?y\"}", 11);
        body[7] = (char)c;
        assert_int_equal(scan_n(body, 11, &r), LX_SCAN_SYNTAX);
        assert_int_equal(r.end, 7);
        memcpy(body, "{\"a?\":1}", 8);
        body[3] = (char)c;
        assert_int_equal(scan_n(body, 8, &r), LX_SCAN_SYNTAX);
    }
    /* DEL and every byte >= 0x80 are allowed: UTF-8 is not validated. */
    for (c = 0x7f; c < 0x100; c++) {
        memcpy(body, "{\"a\":\"x?y\"}", 11);
        body[7] = (char)c;
        assert_int_equal(scan_n(body, 11, &r), LX_SCAN_OK);
    }
    assert_scan("{\"model\":\"\xff\xfe\xc0\x80\"}", LX_SCAN_OK);
    /* Outside strings such bytes are syntax errors. */
    assert_scan("{\"a\":\xc3\xa9}", LX_SCAN_SYNTAX);
    assert_scan("{\xc2\xa0\"a\":1}", LX_SCAN_SYNTAX);
}

/* Long strings go through the word-at-a-time path: put every interesting byte
 * at every offset of strings long enough to cross several words. */
static void test_string_word_boundaries(void **state)
{
    static const unsigned char probes[] = {'"',         '\\', 0x00, 0x1f, 0x20, 0x21, 0x22 ^ 0x80,
                                           0x5c ^ 0x80, 0x7f, 0x80, 0xa0, 0xff, 0x01};
    struct lx_body_scan r;
    char body[64];
    size_t n, pos, i, len;
    int rc;

    for (n = 1; n <= 40; n++) {
        for (pos = 0; pos < n; pos++) {
            for (i = 0; i < sizeof(probes); i++) {
                unsigned char c = probes[i];

                memcpy(body, "{\"a\":\"", 6);
                memset(body + 6, 'x', n);
                body[6 + pos] = (char)c;
                len = 6 + n;
                body[len++] = '"';
                body[len++] = '}';
                rc = scan_n(body, len, &r);
                if (c < 0x20 || c == '\\')
                    assert_int_equal(rc, LX_SCAN_SYNTAX);
                else if (c == '"')
                    /* The string ends early and the rest is not JSON. */
                    assert_int_equal(rc, LX_SCAN_SYNTAX);
                else
                    assert_int_equal(rc, LX_SCAN_OK);
            }
            /* An escaped quote at every offset keeps the string going. */
            memcpy(body, "{\"model\":\"", 10);
            memset(body + 10, 'x', n + 1);
            memcpy(body + 10 + pos, "\\\"", 2);
            len = 10 + n + 1;
            body[len++] = '"';
            body[len++] = '}';
            assert_int_equal(scan_n(body, len, &r), LX_SCAN_OK);
            assert_true(r.model_has_escape);
            assert_int_equal(r.model.len, n + 1);
        }
    }
}

static void test_numbers(void **state)
{
    static const char *const good[] = {
        "0",     "-0",     "1",    "-1",   "10",     "1.5",  "-0.0", "0.25",
        "1e5",   "1E5",    "1e+5", "1e-5", "1.5E-3", "-1e0", "0e0",  "12345678901234567890123",
        "1e999", "-0.0e-0"};
    static const char *const bad[] = {
        "01",    "-01",   "00",   "1.",  ".5",  "-",     "1e",       "1e+",       "1E-",
        "+1",    "0x1",   "1.e5", "-.5", "--1", "NaN",   "Infinity", "-Infinity", "1ee5",
        "1e5.0", "1.2.3", "0-",   "1 2", "- 1", "1_000", "١",
    };
    char body[64];
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":%s}", good[i]);
        assert_scan(body, LX_SCAN_OK);
        snprintf(body, sizeof(body), "{\"a\":[%s,%s]}", good[i], good[i]);
        assert_scan(body, LX_SCAN_OK);
        snprintf(body, sizeof(body), "{\"max_tokens\":%s}", good[i]);
        assert_scan(body, LX_SCAN_OK);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":%s}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"a\":[%s]}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"max_tokens\":%s}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
    }
}

static void test_literals(void **state)
{
    static const char *const bad[] = {"tru",  "t",         "truee",    "True",  "TRUE",
                                      "fals", "falsey",    "nul",      "nulll", "None",
                                      "nil",  "undefined", "truefalse"};
    char body[64];
    size_t i;

    assert_scan("{\"a\":true,\"b\":false,\"c\":null,\"d\":[true,false,null]}", LX_SCAN_OK);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(body, sizeof(body), "{\"a\":%s}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
        snprintf(body, sizeof(body), "{\"stream\":%s}", bad[i]);
        assert_scan(body, LX_SCAN_SYNTAX);
    }
}

static void test_structure_errors(void **state)
{
    static const char *const bad[] = {
        "{",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"a\":1,}",
        "{\"a\":1 \"b\":2}",
        "{,}",
        "{,\"a\":1}",
        "{\"a\"::1}",
        "{a:1}",
        "{'a':1}",
        "{1:1}",
        "{null:1}",
        "{\"a\":[1,]}",
        "{\"a\":[,1]}",
        "{\"a\":[1 2]}",
        "{\"a\":[}",
        "{\"a\":{]}",
        "{\"a\":[1}",
        "{\"a\":{\"b\":1]}",
        "{\"a\":{\"b\"}}",
        "{\"a\":{\"b\":}}",
        "{\"a\":{1:2}}",
        "{\"a\":'x'}",
        "{\"a\":\"x}",
        "{\"a\":\"x\\\"}",
        "{/*c*/}",
        "{\"a\":1}//",
        "{\"a\":1]",
        "{\"a\":1;}",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct lx_body_scan r;
        int rc = scan(bad[i], &r);

        assert_true(rc == LX_SCAN_SYNTAX || rc == LX_SCAN_TRAILING);
        assert_true(r.end <= strlen(bad[i]));
    }
    assert_scan("{\"a\":1]", LX_SCAN_SYNTAX);
    assert_scan("{\"a\":1}//", LX_SCAN_TRAILING);
    assert_scan("{\"a\":[1,]}", LX_SCAN_SYNTAX);
    assert_scan("{\"\":\"\",\"a\":[[],{},[{}],{\"\":[]}]}", LX_SCAN_OK);
}

static void test_nul_bytes(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan_n("{\"model\":\"a\0b\"}", 15, &r), LX_SCAN_SYNTAX);
    assert_int_equal(r.end, 11);
    assert_int_equal(scan_n("{\"a\0\":1}", 8, &r), LX_SCAN_SYNTAX);
    assert_int_equal(scan_n("{\0\"a\":1}", 8, &r), LX_SCAN_SYNTAX);
    assert_int_equal(scan_n("{\"a\":\0}", 7, &r), LX_SCAN_SYNTAX);
    assert_int_equal(scan_n("{\"a\":1\0}", 8, &r), LX_SCAN_SYNTAX);
    assert_int_equal(scan_n("\0{}", 3, &r), LX_SCAN_SYNTAX);
    assert_int_equal(scan_n("{}\0\0", 4, &r), LX_SCAN_TRAILING);
    /* An escaped NUL is fine. */
    assert_int_equal(scan("{\"model\":\"a\\u0000b\"}", &r), LX_SCAN_OK);
    assert_true(r.model_has_escape);
}

/* Bodies that end in the middle of a token, right at the allocation's end:
 * ASan reports any read of the byte after. */
static void test_not_nul_terminated(void **state)
{
    static const char *const cut[] = {
        "{\"a\":t",
        "{\"a\":tru",
        "{\"a\":fals",
        "{\"a\":nul",
        "{\"a\":1",
        "{\"a\":-",
        "{\"a\":1.",
        "{\"a\":1e",
        "{\"a\":1e+",
        "{\"a\":\"x",
        "{\"a\":\"\\",
        "{\"a\":\"\\u",
        "{\"a\":\"\\u12",
        "{\"a\":\"\\ud83d",
        "{\"a\":\"\\ud83d\\",
        "{\"a\":\"\\ud83d\\ude0",
        "{\"a",
        "{\"mod\\u0065l",
        "{\"a\" ",
        "{\"a\":[",
        "{\"a\":[1,",
        "{\"a\":{",
        "{\"a\":{\"b\"",
        "{\"stream_options\":{",
        "{\"stream_options\":{\"include_usage\":tr",
        "{\"a\":1,",
        "{\"a\":\"xxxxxxxxxxxxxxxxxxxx",
    };
    size_t i;

    for (i = 0; i < sizeof(cut) / sizeof(cut[0]); i++)
        assert_scan(cut[i], LX_SCAN_SYNTAX);
}

static void test_error_resets_output(void **state)
{
    struct lx_body_scan r;

    assert_int_equal(scan("{\"model\":\"m\",\"stream\":true,\"a\":01}", &r), LX_SCAN_SYNTAX);
    assert_int_equal(r.end, 32);
    assert_false(r.model_present);
    assert_null(r.model.p);
    assert_false(r.stream);
    assert_false(r.stream_present);

    assert_int_equal(scan("{\"model\":\"m\"} x", &r), LX_SCAN_TRAILING);
    assert_false(r.model_present);
    assert_int_equal(r.end, 14);
}

static void test_strerror(void **state)
{
    static const int codes[] = {LX_SCAN_OK,     LX_SCAN_EMPTY, LX_SCAN_NOT_OBJECT,
                                LX_SCAN_SYNTAX, LX_SCAN_DEPTH, LX_SCAN_TRAILING};
    size_t i, j;

    for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        assert_non_null(lx_body_scan_strerror(codes[i]));
        for (j = 0; j < i; j++)
            assert_string_not_equal(lx_body_scan_strerror(codes[i]),
                                    lx_body_scan_strerror(codes[j]));
    }
    assert_non_null(lx_body_scan_strerror(-99));
    assert_non_null(lx_body_scan_strerror(7));
}

/* What lx_body_scan_messages hands on, message by message. */
struct msg_seen {
    int n, stop_after;
    char text[512];
};

static bool on_msg(void *arg, struct lx_slice role, struct lx_slice content)
{
    struct msg_seen *m = arg;
    size_t used = strlen(m->text);

    snprintf(m->text + used, sizeof(m->text) - used, "[%.*s|%.*s]", role.p ? (int)role.len : 1,
             role.p ? role.p : "-", content.p ? (int)content.len : 1,
             content.p ? content.p : "-");
    return ++m->n != m->stop_after;
}

static const char *messages_of(const char *body, int stop_after)
{
    static struct msg_seen m;
    struct lx_body_scan r;
    size_t n;

    assert_int_equal(scan(body, &r), LX_SCAN_OK);
    memset(&m, 0, sizeof(m));
    m.stop_after = stop_after;
    n = lx_body_scan_messages(r.messages, on_msg, &m);
    assert_int_equal(n, m.n);
    return m.text;
}

/* Each message's role and content, raw (escapes kept, non-strings as their
 * JSON text), in order; keys in any order, duplicates: the last; elements
 * that are not objects, or have neither key, skipped; the walk stops when
 * the callback says so; no messages, or not an array: nothing. */
static void test_messages_walk(void **state)
{
    assert_string_equal(
        messages_of("{\"messages\":[{\"role\":\"system\",\"content\":\"be \\\"brief\\\"\"},"
                    " 7, {\"content\":[{\"type\":\"text\",\"text\":\"hi\"}] ,\"role\":\"user\"},"
                    "{\"name\":\"x\"}, {\"role\":\"tool\",\"role\":\"assistant\","
                    "\"content\":null}, [\"role\"], {\"content\":\"\"}]}",
                    0),
        "[system|be \\\"brief\\\"][user|[{\"type\":\"text\",\"text\":\"hi\"}]]"
        "[assistant|null][-|]");
    assert_string_equal(messages_of("{\"messages\":[{\"role\":\"a\"},{\"role\":\"b\"},"
                                    "{\"role\":\"c\"}]}",
                                    2),
                        "[a|-][b|-]");
    assert_string_equal(messages_of("{\"messages\":[]}", 0), "");
    assert_string_equal(messages_of("{\"messages\":{\"role\":\"a\"}}", 0), "");
    assert_string_equal(messages_of("{\"prompt\":\"p\"}", 0), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_chat_body, free_copy),
        cmocka_unit_test_teardown(test_completions_body, free_copy),
        cmocka_unit_test_teardown(test_pretty_printed, free_copy),
        cmocka_unit_test_teardown(test_empty_object, free_copy),
        cmocka_unit_test_teardown(test_model_absent, free_copy),
        cmocka_unit_test_teardown(test_model_not_string, free_copy),
        cmocka_unit_test_teardown(test_model_escaped, free_copy),
        cmocka_unit_test_teardown(test_escaped_keys, free_copy),
        cmocka_unit_test_teardown(test_stream_values, free_copy),
        cmocka_unit_test_teardown(test_stream_options, free_copy),
        cmocka_unit_test_teardown(test_nested_keys_ignored, free_copy),
        cmocka_unit_test_teardown(test_duplicate_keys, free_copy),
        cmocka_unit_test_teardown(test_max_tokens, free_copy),
        cmocka_unit_test_teardown(test_user, free_copy),
        cmocka_unit_test_teardown(test_empty, free_copy),
        cmocka_unit_test_teardown(test_not_object, free_copy),
        cmocka_unit_test_teardown(test_truncated, free_copy),
        cmocka_unit_test_teardown(test_trailing, free_copy),
        cmocka_unit_test_teardown(test_depth, free_copy),
        cmocka_unit_test_teardown(test_bad_escapes, free_copy),
        cmocka_unit_test_teardown(test_surrogates, free_copy),
        cmocka_unit_test_teardown(test_control_chars, free_copy),
        cmocka_unit_test_teardown(test_string_word_boundaries, free_copy),
        cmocka_unit_test_teardown(test_numbers, free_copy),
        cmocka_unit_test_teardown(test_literals, free_copy),
        cmocka_unit_test_teardown(test_structure_errors, free_copy),
        cmocka_unit_test_teardown(test_nul_bytes, free_copy),
        cmocka_unit_test_teardown(test_not_nul_terminated, free_copy),
        cmocka_unit_test_teardown(test_error_resets_output, free_copy),
        cmocka_unit_test_teardown(test_strerror, free_copy),
        cmocka_unit_test_teardown(test_messages_walk, free_copy),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
