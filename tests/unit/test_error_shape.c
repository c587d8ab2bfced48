/*
 * test_error_shape.c - a node's error answer in OpenAI's shape: vLLM's
 * top-level fields, FastAPI's detail, text and HTML pages, bodies already in
 * OpenAI's shape, and hostile text (invalid UTF-8, control characters, a
 * page longer than the message bound).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>

#include "../../src/proxy/error_shape.h"

/* The reshaped error object of <body> answered with <status>. */
static json_t *shaped(int status, const char *body)
{
    struct lx_buf out;
    json_t *j, *err;

    lx_buf_init(&out, 0);
    assert_true(lx_error_shape(status, body, strlen(body), &out));
    j = json_loadb(out.data, out.len, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_object_size(j), 1);
    err = json_incref(json_object_get(j, "error"));
    assert_true(json_is_object(err));
    assert_true(json_is_string(json_object_get(err, "message")));
    json_decref(j);
    lx_buf_deinit(&out);
    return err;
}

static const char *msg(json_t *e)
{
    return json_string_value(json_object_get(e, "message"));
}

static void test_vllm_fields_move_under_error(void **state)
{
    json_t *e = shaped(400, "{\"object\":\"error\",\"message\":\"This model's maximum context "
                            "length is 64 tokens.\",\"type\":\"BadRequestError\",\"param\":null,"
                            "\"code\":400}");

    assert_string_equal(msg(e), "This model's maximum context length is 64 tokens.");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "BadRequestError");
    assert_true(json_is_null(json_object_get(e, "param")));
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 400);
    json_decref(e);
    /* FastAPI's detail, a string or a list; {"error": "text"}. */
    e = shaped(404, "{\"detail\":\"Not Found\"}");
    assert_string_equal(msg(e), "Not Found");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "not_found_error");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 404);
    json_decref(e);
    e = shaped(422, "{\"detail\":[{\"msg\":\"field required\"}]}");
    assert_string_equal(msg(e), "[{\"msg\":\"field required\"}]");
    json_decref(e);
    e = shaped(429, "{\"error\":\"slow down\"}");
    assert_string_equal(msg(e), "slow down");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "rate_limit_error");
    json_decref(e);
}

static void test_pages_become_their_text(void **state)
{
    json_t *e = shaped(502, "<html>\r\n<head><title>502 Bad Gateway</title>"
                            "<style>body { color: red }</style><script>x<y</script></head>\r\n"
                            "<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr>"
                            "<center>nginx &amp; friends</center>\r\n</body>\r\n</html>\r\n");

    assert_string_equal(msg(e), "502 Bad Gateway 502 Bad Gateway nginx & friends");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "server_error");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), 502);
    json_decref(e);
    e = shaped(503, "503 Service Unavailable\n");
    assert_string_equal(msg(e), "503 Service Unavailable");
    json_decref(e);
    /* Nothing to say: the status says it. */
    e = shaped(500, "");
    assert_string_equal(msg(e), "the node answered 500 without a message");
    json_decref(e);
    e = shaped(401, "{}");
    assert_string_equal(msg(e), "the node answered 401 without a message");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "authentication_error");
    json_decref(e);
}

static void test_hostile_text_is_bounded_and_valid(void **state)
{
    static char big[LX_ERROR_MESSAGE_MAX * 4];
    json_t *e;

    e = shaped(500, "bad \xff\xfe bytes\x01\x7f and \xc3\xa9 \xed\xa0\x80.");
    assert_string_equal(msg(e), "bad ?? bytes?? and \xc3\xa9 ???.");
    json_decref(e);
    memset(big, 'a', sizeof(big) - 1);
    e = shaped(500, big);
    assert_int_equal(strlen(msg(e)), LX_ERROR_MESSAGE_MAX);
    json_decref(e);
    /* An unterminated tag ends the text. */
    e = shaped(500, "before <b unterminated");
    assert_string_equal(msg(e), "before");
    json_decref(e);
}

static void test_openai_shape_passes_unchanged(void **state)
{
    struct lx_buf out;
    const char *body = "{\"error\":{\"message\":\"as is\",\"type\":\"x\"}}";

    lx_buf_init(&out, 0);
    assert_false(lx_error_shape(400, body, strlen(body), &out));
    assert_int_equal(out.len, 0);
    lx_buf_deinit(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vllm_fields_move_under_error),
        cmocka_unit_test(test_pages_become_their_text),
        cmocka_unit_test(test_hostile_text_is_bounded_and_valid),
        cmocka_unit_test(test_openai_shape_passes_unchanged),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
