/*
 * test_resume.c - stream resume: what is noted from relayed events, the
 * continuation request built from the body, and the continuation's events
 * rewritten to follow the first part.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/proxy/resume.h"

#define CHAT_EV(content)                                                                       \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":100,"       \
    "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" content "\"},"       \
    "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
#define ROLE_EV                                                                                \
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":100,"       \
    "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","             \
    "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"

static void note(struct lx_resume *r, const char *ev)
{
    lx_resume_note(r, ev, strlen(ev));
}

static json_t *plan_json(struct lx_resume *r, const char *body, enum lx_resume_plan want)
{
    struct lx_buf out;
    const char *why = NULL;
    json_t *j = NULL;

    lx_buf_init(&out, 0);
    assert_int_equal(lx_resume_plan(r, body, strlen(body), &out, &why), want);
    if (want == LX_RESUME_GO) {
        j = json_loadb(out.data, out.len, 0, NULL);
        assert_non_null(j);
    } else if (want == LX_RESUME_NO) {
        assert_non_null(why);
    }
    lx_buf_deinit(&out);
    return j;
}

static void test_chat_note_and_plan(void **state)
{
    struct lx_resume r;
    json_t *b, *last;

    lx_resume_init(&r, true);
    note(&r, ROLE_EV);
    note(&r, CHAT_EV("abc "));
    note(&r, CHAT_EV("d\\\"e "));
    note(&r, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n");
    assert_int_equal(r.tokens, 2);
    assert_false(r.finished);
    assert_false(r.inexact);
    b = plan_json(&r,
                  "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                  "\"max_tokens\":10,\"max_completion_tokens\":8,\"min_tokens\":1,\"stream\":true}",
                  LX_RESUME_GO);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 8);
    assert_int_equal(json_integer_value(json_object_get(b, "max_completion_tokens")), 6);
    assert_int_equal(json_integer_value(json_object_get(b, "min_tokens")), 0);
    assert_true(json_is_false(json_object_get(b, "add_generation_prompt")));
    assert_true(json_is_true(json_object_get(b, "continue_final_message")));
    assert_int_equal(json_array_size(json_object_get(b, "messages")), 2);
    last = json_array_get(json_object_get(b, "messages"), 1);
    assert_string_equal(json_string_value(json_object_get(last, "role")), "assistant");
    /* Decoded from the escaped fragments, joined. */
    assert_string_equal(json_string_value(json_object_get(last, "content")), "abc d\"e ");
    json_decref(b);
    lx_resume_deinit(&r);
}

static void test_completion_prompt_grows(void **state)
{
    struct lx_resume r;
    json_t *b;

    lx_resume_init(&r, false);
    note(&r, "data: {\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"text\":\"one \","
             "\"finish_reason\":null}]}\n\n");
    note(&r, "data: {\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"text\":\"\\u00e9t \","
             "\"finish_reason\":null}]}\n\n");
    b = plan_json(&r, "{\"prompt\":\"Once\",\"max_tokens\":5}", LX_RESUME_GO);
    assert_string_equal(json_string_value(json_object_get(b, "prompt")), "Onceone \xc3\xa9t ");
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 3);
    assert_null(json_object_get(b, "continue_final_message"));
    json_decref(b);
    /* A prompt given as token ids has no text to append to. */
    assert_null(plan_json(&r, "{\"prompt\":[1,2,3],\"max_tokens\":5}", LX_RESUME_NO));
    lx_resume_deinit(&r);
}

static void test_nothing_relayed_resends_the_body(void **state)
{
    struct lx_resume r;
    json_t *b;

    lx_resume_init(&r, true);
    note(&r, ROLE_EV);
    b = plan_json(&r, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}",
                  LX_RESUME_GO);
    assert_int_equal(json_array_size(json_object_get(b, "messages")), 1);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 4);
    assert_null(json_object_get(b, "continue_final_message"));
    json_decref(b);
    lx_resume_deinit(&r);
}

/* Limits given as reals, or at the edges of int64, never overflow. */
static void test_odd_limits(void **state)
{
    struct lx_resume r;
    json_t *b;
    struct lx_usage u = {5, INT64_MAX};

    lx_resume_init(&r, true);
    note(&r, CHAT_EV("a "));
    b = plan_json(&r, "{\"messages\":[],\"max_tokens\":5.0}", LX_RESUME_GO);
    assert_int_equal(json_integer_value(json_object_get(b, "max_tokens")), 4);
    json_decref(b);
    plan_json(&r, "{\"messages\":[],\"max_tokens\":-9223372036854775808}", LX_RESUME_WHOLE);
    b = plan_json(&r, "{\"messages\":[],\"max_tokens\":9223372036854775807,"
                      "\"min_tokens\":-9223372036854775808}",
                  LX_RESUME_GO);
    assert_true(json_integer_value(json_object_get(b, "max_tokens")) > 0);
    assert_int_equal(json_integer_value(json_object_get(b, "min_tokens")), 0);
    json_decref(b);
    lx_resume_start(&r);
    lx_resume_usage(&r, &u); /* a node's absurd count is left as it is */
    assert_int_equal(u.completion_tokens, INT64_MAX);
    /* A reset forgets everything noted. */
    lx_resume_reset(&r);
    assert_int_equal(r.tokens, 0);
    assert_int_equal(r.text.len, 0);
    assert_int_equal(r.first.len, 0);
    assert_int_equal(r.continuations, 0);
    assert_true(r.chat);
    lx_resume_deinit(&r);
}

static void test_whole_answers_need_no_node(void **state)
{
    struct lx_resume r;

    lx_resume_init(&r, true);
    note(&r, CHAT_EV("a "));
    note(&r, CHAT_EV("b "));
    /* The limit is reached: nothing is left to generate. */
    plan_json(&r, "{\"messages\":[],\"max_tokens\":2}", LX_RESUME_WHOLE);
    plan_json(&r, "{\"messages\":[],\"max_completion_tokens\":1}", LX_RESUME_WHOLE);
    /* A finish_reason was relayed. */
    note(&r, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    assert_true(r.finished);
    plan_json(&r, "{\"messages\":[],\"max_tokens\":200}", LX_RESUME_WHOLE);
    lx_resume_deinit(&r);
}

static void test_inexact_requests_and_streams(void **state)
{
    static const char *const refused[] = {
        "{\"messages\":[],\"n\":2}",
        "{\"messages\":[],\"best_of\":3}",
        "{\"messages\":[],\"logprobs\":true}",
        "{\"messages\":[],\"top_logprobs\":2}",
        "{\"messages\":[],\"echo\":true}",
        "{\"messages\":[],\"continue_final_message\":true}",
        "{\"messages\":{}}",
        "{\"messages\":[],\"response_format\":{\"type\":\"json_object\"}}",
        "{\"messages\":[],\"guided_regex\":\"a+\"}",
        "{\"messages\":[],\"structured_outputs\":{\"choice\":[\"a\"]}}",
        "[1]",
        "{\"messages\":[]",
    };
    struct lx_resume r;

    lx_resume_init(&r, true);
    note(&r, CHAT_EV("a "));
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        assert_null(plan_json(&r, refused[i], LX_RESUME_NO));
    /* Accepted: the same fields at their neutral values. */
    json_decref(plan_json(&r, "{\"messages\":[],\"n\":1,\"logprobs\":false,\"echo\":null,"
                              "\"response_format\":{\"type\":\"text\"}}",
                          LX_RESUME_GO));
    /* A tool-call delta or reasoning cannot be carried by a continuation. */
    note(&r, "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n");
    assert_true(r.inexact);
    assert_null(plan_json(&r, "{\"messages\":[]}", LX_RESUME_NO));
    lx_resume_deinit(&r);
    lx_resume_init(&r, true);
    note(&r, "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[],\"content\":\"x\"}}]}\n\n");
    assert_false(r.inexact);
    note(&r, "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n");
    assert_true(r.inexact);
    lx_resume_deinit(&r);
}

static json_t *event(const struct lx_resume *r, const char *ev, bool want_kept)
{
    struct lx_buf out;
    json_t *j = NULL;

    lx_buf_init(&out, 0);
    assert_int_equal(lx_resume_event(r, ev, strlen(ev), &out), want_kept);
    if (want_kept) {
        assert_true(out.len > 8);
        assert_memory_equal(out.data, "data: ", 6);
        assert_memory_equal(out.data + out.len - 2, "\n\n", 2);
        j = json_loadb(out.data + 6, out.len - 8, 0, NULL);
    }
    lx_buf_deinit(&out);
    return j;
}

static void test_continuation_events_follow_on(void **state)
{
    struct lx_resume r;
    json_t *e, *delta;
    struct lx_usage u = {103, 5};

    lx_resume_init(&r, true);
    note(&r, ROLE_EV);
    note(&r, CHAT_EV("a "));
    note(&r, CHAT_EV("b "));
    json_decref(plan_json(&r, "{\"messages\":[],\"max_tokens\":9}", LX_RESUME_GO));
    lx_resume_start(&r);
    /* The continuation's role chunk is left out. */
    assert_null(event(&r, "data: {\"id\":\"chatcmpl-2\",\"created\":200,\"choices\":[{\"index\":0,"
                          "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                          "\"finish_reason\":null}]}\n\n",
                      false));
    /* Its tokens carry the first part's id and created; a role that comes
     * with content is dropped, the content kept. */
    e = event(&r, "data: {\"id\":\"chatcmpl-2\",\"created\":200,\"choices\":[{\"index\":0,"
                  "\"delta\":{\"role\":\"assistant\",\"content\":\"c \"},"
                  "\"finish_reason\":null}]}\n\n",
              true);
    assert_string_equal(json_string_value(json_object_get(e, "id")), "chatcmpl-1");
    assert_int_equal(json_integer_value(json_object_get(e, "created")), 100);
    delta = json_object_get(json_array_get(json_object_get(e, "choices"), 0), "delta");
    assert_null(json_object_get(delta, "role"));
    assert_string_equal(json_string_value(json_object_get(delta, "content")), "c ");
    json_decref(e);
    /* Usage counted as the unbroken answer: the 2 relayed tokens were the
     * continuation's prompt, not the first part's. */
    e = event(&r, "data: {\"id\":\"chatcmpl-2\",\"created\":200,\"choices\":[],\"usage\":"
                  "{\"prompt_tokens\":103,\"completion_tokens\":5,\"total_tokens\":108}}\n\n",
              true);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "usage"),
                                                        "prompt_tokens")), 101);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "usage"),
                                                        "completion_tokens")), 7);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "usage"),
                                                        "total_tokens")), 108);
    json_decref(e);
    lx_resume_usage(&r, &u);
    assert_int_equal(u.prompt_tokens, 101);
    assert_int_equal(u.completion_tokens, 7);
    /* [DONE], comments and what is not one JSON data line pass unchanged. */
    {
        static const char *const raw[] = {"data: [DONE]\n\n", ": keep-alive\n\n",
                                          "data: {\"a\":\n\n", "data: {\"a\":1}\ndata: 2\n\n"};
        struct lx_buf out;

        lx_buf_init(&out, 0);
        for (size_t i = 0; i < 4; i++) {
            lx_buf_reset(&out);
            assert_true(lx_resume_event(&r, raw[i], strlen(raw[i]), &out));
            assert_int_equal(out.len, strlen(raw[i]));
            assert_memory_equal(out.data, raw[i], out.len);
        }
        lx_buf_deinit(&out);
    }
    lx_resume_deinit(&r);
}

static void test_text_bound(void **state)
{
    struct lx_resume r;
    char *ev = malloc(LX_RESUME_TEXT_MAX / 2 + 256);
    size_t n;

    lx_resume_init(&r, false);
    n = (size_t)sprintf(ev, "data: {\"choices\":[{\"index\":0,\"text\":\"");
    memset(ev + n, 'x', LX_RESUME_TEXT_MAX / 2);
    n += LX_RESUME_TEXT_MAX / 2;
    n += (size_t)sprintf(ev + n, "\"}]}\n\n");
    /* A first event too long to keep (its id and created): no resume. */
    lx_resume_note(&r, ev, n);
    assert_true(r.inexact);
    lx_resume_deinit(&r);
    /* Text beyond LX_RESUME_TEXT_MAX: no resume. */
    lx_resume_init(&r, false);
    note(&r, "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n");
    lx_resume_note(&r, ev, n);
    assert_false(r.inexact);
    lx_resume_note(&r, ev, n); /* 1 + 2 x LX_RESUME_TEXT_MAX / 2 bytes */
    assert_true(r.inexact);
    free(ev);
    lx_resume_deinit(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_note_and_plan),
        cmocka_unit_test(test_completion_prompt_grows),
        cmocka_unit_test(test_nothing_relayed_resends_the_body),
        cmocka_unit_test(test_whole_answers_need_no_node),
        cmocka_unit_test(test_odd_limits),
        cmocka_unit_test(test_inexact_requests_and_streams),
        cmocka_unit_test(test_continuation_events_follow_on),
        cmocka_unit_test(test_text_bound),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
