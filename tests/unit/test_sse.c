/*
 * test_sse.c - the SSE relay scanner: event boundaries, coalesced output,
 * split events held back, usage figures, usage-only events dropped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http/sse.h"

struct out {
    char buf[1 << 17];
    size_t len;
    int calls;
};

static void collect(void *ctx, const char *p, size_t len)
{
    struct out *o = ctx;

    assert_true(o->len + len < sizeof(o->buf));
    memcpy(o->buf + o->len, p, len);
    o->len += len;
    o->calls++;
}

/* Feeds <text> cut into pieces of <step> bytes, each an exact-size copy. */
static void feed(struct lx_sse *s, const char *text, size_t step, struct out *o)
{
    size_t len = strlen(text);

    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        char *chunk = malloc(n);

        memcpy(chunk, text + off, n);
        lx_sse_feed(s, chunk, n, collect, o);
        free(chunk);
    }
}

static const char STREAM[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"total_tokens\":9,"
    "\"completion_tokens\":2}}\n\n"
    "data: [DONE]\n\n";

static void test_whole_chunk_one_output(void **state)
{
    struct lx_sse s;
    static struct out o;

    memset(&o, 0, sizeof(o));
    lx_sse_init(&s, false);
    feed(&s, STREAM, sizeof(STREAM), &o);
    assert_int_equal(o.calls, 1); /* four events, one range */
    assert_int_equal(o.len, strlen(STREAM));
    assert_memory_equal(o.buf, STREAM, o.len);
    assert_int_equal(s.events, 4);
    assert_int_equal(s.data_events, 2);
    assert_true(s.done);
    assert_int_equal(s.usage.prompt_tokens, 7);
    assert_int_equal(s.usage.completion_tokens, 2);
    assert_false(lx_sse_mid_event(&s));
    lx_sse_deinit(&s);
}

static void test_every_split_gives_the_same_bytes(void **state)
{
    for (size_t step = 1; step < sizeof(STREAM); step++) {
        struct lx_sse s;
        static struct out o;

        memset(&o, 0, sizeof(o));
        lx_sse_init(&s, false);
        feed(&s, STREAM, step, &o);
        assert_int_equal(o.len, strlen(STREAM));
        assert_memory_equal(o.buf, STREAM, o.len);
        assert_int_equal(s.events, 4);
        assert_int_equal(s.usage.completion_tokens, 2);
        lx_sse_deinit(&s);
    }
}

static void test_partial_event_held_back(void **state)
{
    struct lx_sse s;
    static struct out o;
    const char *first = "data: {\"n\":1}\n\ndata: {\"parti";

    memset(&o, 0, sizeof(o));
    lx_sse_init(&s, false);
    feed(&s, first, strlen(first), &o);
    /* Only the complete event went out; the rest waits for its end. */
    assert_int_equal(o.len, strlen("data: {\"n\":1}\n\n"));
    assert_true(lx_sse_mid_event(&s));
    feed(&s, "al\":2}\n\n", 100, &o);
    assert_int_equal(o.len, strlen("data: {\"n\":1}\n\ndata: {\"partial\":2}\n\n"));
    assert_false(lx_sse_mid_event(&s));
    assert_int_equal(s.events, 2);
    lx_sse_deinit(&s);
}

static void test_drop_usage_event(void **state)
{
    for (size_t step = 1; step < sizeof(STREAM); step += 7) {
        struct lx_sse s;
        static struct out o;
        static char want[sizeof(STREAM)];
        const char *u = strstr(STREAM, "data: {\"choices\":[],");
        const char *after = strstr(u, "\n\n") + 2;

        memset(&o, 0, sizeof(o));
        snprintf(want, sizeof(want), "%.*s%s", (int)(u - STREAM), STREAM, after);
        lx_sse_init(&s, true);
        feed(&s, STREAM, step, &o);
        assert_int_equal(o.len, strlen(want));
        assert_memory_equal(o.buf, want, o.len);
        /* Counted all the same. */
        assert_int_equal(s.usage.prompt_tokens, 7);
        assert_int_equal(s.events, 4);
        lx_sse_deinit(&s);
    }
}

static void test_crlf_and_null_usage(void **state)
{
    struct lx_sse s;
    static struct out o;
    const char *text = "data: {\"choices\":[{}],\"usage\":null}\r\n\r\ndata: [DONE]\r\n\r\n";

    memset(&o, 0, sizeof(o));
    lx_sse_init(&s, true);
    feed(&s, text, 5, &o);
    assert_int_equal(o.len, strlen(text));
    assert_int_equal(s.events, 2);
    assert_int_equal(s.usage.prompt_tokens, -1);
    assert_true(s.done);
    lx_sse_deinit(&s);
}

static void test_overlong_event_passes_through(void **state)
{
    struct lx_sse s;
    static struct out o;
    size_t big = LX_SSE_EVENT_MAX + 100;
    char *text = malloc(big + 16);

    memset(&o, 0, sizeof(o));
    memcpy(text, "data: ", 6);
    memset(text + 6, 'x', big - 6);
    memcpy(text + big, "\n\ndata: y\n\n", 12);
    lx_sse_init(&s, false);
    feed(&s, text, 4096, &o);
    /* Nothing lost, nothing added, and the next event is seen. */
    assert_int_equal(o.len, strlen(text));
    assert_memory_equal(o.buf, text, o.len);
    assert_int_equal(s.events, 2);
    assert_false(lx_sse_mid_event(&s));
    lx_sse_deinit(&s);
    free(text);
}

static void test_flush_sends_unterminated_tail(void **state)
{
    struct lx_sse s;
    static struct out o;

    memset(&o, 0, sizeof(o));
    lx_sse_init(&s, false);
    feed(&s, "data: a\n\ndata: b", 100, &o);
    assert_int_equal(o.len, 9);
    lx_sse_flush(&s, collect, &o);
    assert_int_equal(o.len, 16);
    lx_sse_deinit(&s);
}

static void test_usage_scan(void **state)
{
    struct lx_usage u = {-1, -1};
    const char *body = "{\"id\":\"x\",\"choices\":[],\"usage\": {\"prompt_tokens\": 12, "
                       "\"completion_tokens\": 34, \"total_tokens\": 46}}";

    lx_usage_scan(body, strlen(body), &u);
    assert_int_equal(u.prompt_tokens, 12);
    assert_int_equal(u.completion_tokens, 34);
    u.prompt_tokens = u.completion_tokens = -1;
    lx_usage_scan("{\"usage\":null}", 14, &u);
    assert_int_equal(u.prompt_tokens, -1);
    lx_usage_scan("no usage here", 13, &u);
    assert_int_equal(u.completion_tokens, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_chunk_one_output),
        cmocka_unit_test(test_every_split_gives_the_same_bytes),
        cmocka_unit_test(test_partial_event_held_back),
        cmocka_unit_test(test_drop_usage_event),
        cmocka_unit_test(test_crlf_and_null_usage),
        cmocka_unit_test(test_overlong_event_passes_through),
        cmocka_unit_test(test_flush_sends_unterminated_tail),
        cmocka_unit_test(test_usage_scan),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
