/*
 * responses.c - POST /v1/responses, OpenAI's Responses API as vLLM serves it
 * (without tools or stored responses), on the same engine and model as chat.
 *
 * The request's "instructions" become a system message and its "input" (a
 * string: one user message; or message items {"role", "content"}, content
 * parts {"type": "input_text", "text"} included) the messages after it,
 * rendered as a chat with the generation prompt: the same tokens, text and
 * prefix-cache blocks as the equivalent chat request. "max_output_tokens" is
 * the limit, as a chat's max_tokens.
 *
 * A stream is typed SSE events, "event: TYPE" then "data: {"type": TYPE,
 * "sequence_number": N, ...}", with no [DONE] at the end:
 *   response.created, response.in_progress          right after the head
 *   response.output_item.added, response.content_part.added, then
 *   response.output_text.delta                      with the first token
 *   response.output_text.delta                      one per further token
 *   response.output_text.done, response.content_part.done,
 *   response.output_item.done, response.completed   after the last one
 * The status is "completed" however the answer ended, as vLLM's (without
 * harmony) is; usage counts the prompt tokens found in the prefix cache as
 * input_tokens_details.cached_tokens.
 */
#include <string.h>

#include "call.h"

#define ID_HEX(call) ((call)->id + 5) /* the 32 hex digits after "resp_" */

/* Appends the JSON of <v>, or <def> when it is absent or null. */
static void append_value(struct lx_buf *b, const json_t *v, const char *def)
{
    char *s = v && !json_is_null(v) ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;

    lx_buf_append_str(b, s ? s : def);
    free(s);
}

/* The request's settings the response repeats, as JSON members. */
static char *make_echo(const json_t *root)
{
    const json_t *t = json_object_get(root, "temperature"), *p = json_object_get(root, "top_p");
    struct lx_buf b;

    lx_buf_init(&b, 0);
    SIM_APPEND_LIT(&b, "\"instructions\":");
    append_value(&b, json_object_get(root, "instructions"), "null");
    SIM_APPEND_LIT(&b, ",\"max_output_tokens\":");
    append_value(&b, json_object_get(root, "max_output_tokens"), "null");
    SIM_APPEND_LIT(&b, ",\"temperature\":");
    append_value(&b, json_is_number(t) ? t : NULL, "1.0");
    SIM_APPEND_LIT(&b, ",\"top_p\":");
    append_value(&b, json_is_number(p) ? p : NULL, "1.0");
    lx_buf_append(&b, "", 1);
    return b.data;
}

/* Renders <msgs> after what <p> holds; a message's complaint names input[i]. */
static int push_input(struct sim_prompt *p, const json_t *msgs, enum sim_chat_end end, char *err,
                      size_t errlen)
{
    char why[256];

    if (!sim_prompt_chat(p, msgs, end, why, sizeof(why)))
        return 0;
    if (strncmp(why, "messages", 8) == 0)
        snprintf(err, errlen, "input%s", why + 8);
    else
        snprintf(err, errlen, "%s", why);
    return LX_EINVAL;
}

static int responses_parse(struct sim_call *call, const json_t *root, char *err, size_t errlen)
{
    const json_t *input = json_object_get(root, "input");
    const json_t *instr = json_object_get(root, "instructions");
    const json_t *mt = json_object_get(root, "max_output_tokens");
    json_t *msgs = NULL;
    int rc = LX_EINVAL;

    if (instr && !json_is_null(instr) && !json_is_string(instr)) {
        snprintf(err, errlen, "instructions must be a string");
        return LX_EINVAL;
    }
    if (mt && json_is_null(mt))
        mt = NULL;
    if (mt && (!json_is_integer(mt) || json_integer_value(mt) < 1)) {
        snprintf(err, errlen, "max_output_tokens must be an integer of at least 1");
        return LX_EINVAL;
    }
    if (json_is_string(input)) {
        msgs = json_pack("[{s:s,s:O}]", "role", "user", "content", input);
    } else if (!json_is_array(input) || json_array_size(input) == 0) {
        snprintf(err, errlen, "input must be a string or a non-empty array of input items");
        return LX_EINVAL;
    }
    if (json_is_string(instr)) {
        json_t *sys = json_pack("[{s:s,s:O}]", "role", "system", "content", instr);

        rc = push_input(&call->prompt, sys, SIM_CHAT_NO_GENERATION_PROMPT, err, errlen);
        json_decref(sys);
        if (rc)
            goto out;
    }
    rc = push_input(&call->prompt, msgs ? msgs : input, SIM_CHAT_GENERATION_PROMPT, err, errlen);
    if (rc)
        goto out;
    call->echo = make_echo(root);
    rc = sim_call_plan(call, mt, err, errlen);
out:
    json_decref(msgs);
    return rc;
}

/* event: TYPE, then data: {"type":TYPE,"sequence_number":N, (left open) */
static void event_begin(struct lx_buf *b, struct sim_call *call, const char *type)
{
    lx_buf_appendf(b, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%u,", type, type,
                   call->sse_seq++);
}

/* The output_text content part, its text being what was said so far. */
static void append_part(struct lx_buf *b, const struct sim_call *call, bool empty)
{
    SIM_APPEND_LIT(b, "{\"type\":\"output_text\",\"text\":\"");
    if (!empty)
        sim_call_append_said(b, call);
    SIM_APPEND_LIT(b, "\",\"annotations\":[],\"logprobs\":[]}");
}

/* The output message item: in progress and empty, or whole. */
static void append_item(struct lx_buf *b, const struct sim_call *call, bool done)
{
    lx_buf_appendf(b,
                   "{\"id\":\"msg_%s\",\"type\":\"message\",\"status\":\"%s\","
                   "\"role\":\"assistant\",\"content\":[",
                   ID_HEX(call), done ? "completed" : "in_progress");
    if (done)
        append_part(b, call, false);
    SIM_APPEND_LIT(b, "]}");
}

/* The response object: in progress (no output, no usage yet) or done. */
static void append_response(struct lx_buf *b, const struct sim_call *call, bool done)
{
    unsigned p = call->seq.prompt_tokens, c = call->seq.generated;

    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"object\":\"response\",\"created_at\":%lld,\"status\":\"%s\","
                   "\"background\":false,\"error\":null,\"incomplete_details\":null,"
                   "\"model\":\"%s\",%s,\"output\":[",
                   call->id, call->created, done ? "completed" : "in_progress", call->model,
                   call->echo);
    if (done)
        append_item(b, call, true);
    SIM_APPEND_LIT(b, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
                      "\"reasoning\":null,\"service_tier\":\"auto\",\"store\":false,"
                      "\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\","
                      "\"tools\":[],\"top_logprobs\":0,\"truncation\":\"disabled\",\"usage\":");
    if (done)
        lx_buf_appendf(b,
                       "{\"input_tokens\":%u,\"input_tokens_details\":{\"cached_tokens\":%u},"
                       "\"output_tokens\":%u,\"output_tokens_details\":{\"reasoning_tokens\":0},"
                       "\"total_tokens\":%u}",
                       p, call->seq.hit_tokens, c, p + c);
    else
        SIM_APPEND_LIT(b, "null");
    SIM_APPEND_LIT(b, ",\"user\":null,\"metadata\":{}}");
}

/* The members an event about the message's text has. */
static void append_text_ref(struct lx_buf *b, const struct sim_call *call)
{
    lx_buf_appendf(b, "\"item_id\":\"msg_%s\",\"output_index\":0,\"content_index\":0,",
                   ID_HEX(call));
}

/* An event carrying the whole response (created, in_progress, completed). */
static void response_event(struct lx_buf *b, struct sim_call *call, const char *type, bool done)
{
    event_begin(b, call, type);
    SIM_APPEND_LIT(b, "\"response\":");
    append_response(b, call, done);
    SIM_APPEND_LIT(b, "}\n\n");
}

/* An event carrying the output item (added, done). */
static void item_event(struct lx_buf *b, struct sim_call *call, const char *type, bool done)
{
    event_begin(b, call, type);
    SIM_APPEND_LIT(b, "\"output_index\":0,\"item\":");
    append_item(b, call, done);
    SIM_APPEND_LIT(b, "}\n\n");
}

/* An event carrying the content part (added: empty, done: the text). */
static void part_event(struct lx_buf *b, struct sim_call *call, const char *type, bool done)
{
    event_begin(b, call, type);
    append_text_ref(b, call);
    SIM_APPEND_LIT(b, "\"part\":");
    append_part(b, call, !done);
    SIM_APPEND_LIT(b, "}\n\n");
}

static void stream_open(struct lx_buf *b, struct sim_call *call)
{
    response_event(b, call, "response.created", false);
    response_event(b, call, "response.in_progress", false);
}

/* The text events: a delta (the next word) or done (all of it). */
static void text_event(struct lx_buf *b, struct sim_call *call, bool done)
{
    event_begin(b, call, done ? "response.output_text.done" : "response.output_text.delta");
    append_text_ref(b, call);
    if (done) {
        SIM_APPEND_LIT(b, "\"text\":\"");
        sim_call_append_said(b, call);
    } else {
        SIM_APPEND_LIT(b, "\"delta\":\"");
        sim_call_append_word(b, call);
    }
    SIM_APPEND_LIT(b, "\",\"logprobs\":[]}\n\n");
}

static void token_event(struct lx_buf *b, struct sim_call *call, bool last)
{
    if (call->events == 0) {
        item_event(b, call, "response.output_item.added", false);
        part_event(b, call, "response.content_part.added", false);
    }
    text_event(b, call, false);
}

static void stream_close(struct lx_buf *b, struct sim_call *call)
{
    text_event(b, call, true);
    part_event(b, call, "response.content_part.done", true);
    item_event(b, call, "response.output_item.done", true);
    response_event(b, call, "response.completed", true);
}

static void whole_body(struct lx_buf *b, struct sim_call *call)
{
    append_response(b, call, true);
}

const struct sim_kind sim_kind_responses = {
    .id_prefix = "resp_",
    .parse = responses_parse,
    .open = stream_open,
    .token = token_event,
    .close = stream_close,
    .whole = whole_body,
};
