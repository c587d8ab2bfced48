/*
 * test_sse.c - the SSE relay scanner: event boundaries, coalesced output,
 * split events held back, usage figures (chat, the Responses API, the
 * pooling endpoints), usage-only events dropped, typed events relayed as
 * they are.
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

/* Feeds <text> (complete events, none dropped) in pieces of 1, 1 + <stride>,
 * ... bytes: every way gives back the same bytes, <events> events and the
 * usage figures. */
static void check_splits(const char *text, bool drop_usage, size_t stride, uint64_t events,
                         int64_t prompt, int64_t completion)
{
    for (size_t step = 1; step <= strlen(text); step += stride) {
        struct lx_sse s;
        static struct out o;

        memset(&o, 0, sizeof(o));
        lx_sse_init(&s, drop_usage);
        feed(&s, text, step, &o);
        assert_int_equal(o.len, strlen(text));
        assert_memory_equal(o.buf, text, o.len);
        assert_int_equal(s.events, events);
        assert_int_equal(s.usage.prompt_tokens, prompt);
        assert_int_equal(s.usage.completion_tokens, completion);
        assert_false(lx_sse_mid_event(&s));
        lx_sse_deinit(&s);
    }
}

static void test_every_split_gives_the_same_bytes(void **state)
{
    check_splits(STREAM, false, 1, 4, 7, 2);
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

/* The Responses API's usage: input_tokens and output_tokens, not their
 * _details objects, whichever comes first. */
static void test_usage_scan_responses_api(void **state)
{
    struct lx_usage u = {-1, -1};
    const char *body =
        "{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\","
        "\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\","
        "\"text\":\"Hi\"}]}],\"usage\":{\"input_tokens_details\":{\"cached_tokens\":3},"
        "\"input_tokens\":36,\"output_tokens_details\":{\"reasoning_tokens\":1},"
        "\"output_tokens\":87,\"total_tokens\":123},\"user\":null,\"metadata\":{}}";

    lx_usage_scan(body, strlen(body), &u);
    assert_int_equal(u.prompt_tokens, 36);
    assert_int_equal(u.completion_tokens, 87);
    /* Chat's names win over the Responses API's when a body has both. */
    u.prompt_tokens = u.completion_tokens = -1;
    body = "{\"usage\":{\"input_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":4},"
           "\"prompt_tokens\":10,\"output_tokens\":2,\"completion_tokens\":20}}";
    lx_usage_scan(body, strlen(body), &u);
    assert_int_equal(u.prompt_tokens, 10);
    assert_int_equal(u.completion_tokens, 20);
}

/* Embeddings, score, classify, pooling, rerank: prompt tokens only (a
 * reranker of older vLLM reports total_tokens alone). */
static void test_usage_scan_pooling_endpoints(void **state)
{
    static const struct {
        const char *body;
        int64_t prompt, completion;
    } cases[] = {
        {"{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"embedding\":[0.1,-0.2],"
         "\"index\":0}],\"model\":\"e\",\"usage\":{\"prompt_tokens\":7,\"total_tokens\":7,"
         "\"completion_tokens\":0,\"prompt_tokens_details\":null}}",
         7, 0},
        {"{\"id\":\"score-1\",\"object\":\"list\",\"data\":[{\"index\":0,\"object\":\"score\","
         "\"score\":0.85}],\"usage\":{\"prompt_tokens\":100,\"total_tokens\":100}}",
         100, -1},
        {"{\"id\":\"rerank-1\",\"model\":\"r\",\"usage\":{\"prompt_tokens\":22,"
         "\"total_tokens\":22},\"results\":[{\"index\":1,\"relevance_score\":0.9}]}",
         22, -1},
        {"{\"id\":\"rerank-1\",\"model\":\"r\",\"usage\":{\"total_tokens\":31},"
         "\"results\":[{\"index\":0,\"relevance_score\":0.2}]}",
         31, -1},
        {"{\"id\":\"classify-1\",\"data\":[{\"index\":0,\"label\":\"pos\",\"probs\":[0.9,0.1],"
         "\"num_classes\":2}],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5,"
         "\"completion_tokens\":0}}",
         5, 0},
        /* A transcription's usage counts seconds, not tokens. */
        {"{\"text\":\"hello\",\"usage\":{\"type\":\"duration\",\"seconds\":3}}", -1, -1},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lx_usage u = {-1, -1};

        lx_usage_scan(cases[i].body, strlen(cases[i].body), &u);
        assert_int_equal(u.prompt_tokens, cases[i].prompt);
        assert_int_equal(u.completion_tokens, cases[i].completion);
    }
}

/* A Responses API stream: typed events, none with "choices". Relayed byte
 * for byte (even with drop_usage, which only drops chat's usage-only
 * chunks), split anywhere; the usage comes from response.completed, not
 * from response.created's null. */
static void test_responses_stream(void **state)
{
    static const char text[] =
        "event: response.created\n"
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\","
        "\"status\":\"in_progress\",\"usage\":null}}\n\n"
        "event: response.output_text.delta\n"
        "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\","
        "\"delta\":\"Hel\"}\n\n"
        "event: response.output_text.delta\n"
        "data: {\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\","
        "\"delta\":\"lo\"}\n\n"
        "event: response.completed\n"
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\","
        "\"status\":\"completed\",\"usage\":{\"input_tokens\":5,"
        "\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":2,"
        "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":7}}}\n\n";

    check_splits(text, false, 7, 4, 5, 2);
    check_splits(text, true, 7, 4, 5, 2);
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
        cmocka_unit_test(test_usage_scan_responses_api),
        cmocka_unit_test(test_usage_scan_pooling_endpoints),
        cmocka_unit_test(test_responses_stream),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
