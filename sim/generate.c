/*
 * generate.c - llmux-sim's chat and text completions (vLLM's shapes, streamed
 * or not), and what every generating endpoint shares: the completion's
 * length (sim_call_plan), the words, the chat's end.
 *
 * Byte-determinism: the text is a function of the rendered context
 * (prompt.h), so a request that resends the first k words of an answer as a
 * continuation gets the rest of that answer; see docs/SIM.md.
 */
#include <string.h>

#include "call.h"

#define NO_LIMIT UINT64_MAX

/* ---- shared by the generating kinds ------------------------------------ */

void sim_call_append_word(struct lx_buf *b, struct sim_call *call)
{
    if (!call->eos)
        lx_buf_append(b, sim_ctx_generate(&call->ctx), SIM_WORD_BYTES);
}

void sim_call_append_said(struct lx_buf *b, const struct sim_call *call)
{
    struct sim_ctx c = call->start;

    if (call->eos)
        return;
    for (unsigned i = 0; i < call->seq.generated; i++)
        lx_buf_append(b, sim_ctx_generate(&c), SIM_WORD_BYTES);
}

const char *sim_call_finish_reason(const struct sim_call *call)
{
    return call->seq.finish_stop ? "stop" : "length";
}

int sim_json_bool(const json_t *root, const char *name, bool def, bool *out, char *err,
                  size_t errlen)
{
    const json_t *v = json_object_get(root, name);

    *out = def;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, errlen, "%s must be a boolean", name);
        return LX_EINVAL;
    }
    *out = json_is_true(v);
    return 0;
}

/*
 * vLLM's add_generation_prompt (default true) and continue_final_message
 * (default false) exclude each other. vLLM refuses both set explicitly in its
 * request validation, and both in effect (add_generation_prompt left to its
 * default) when it applies the chat template, in other words; the sim
 * answers both with the first message.
 */
int sim_chat_end(const json_t *root, bool add_default, enum sim_chat_end *end, char *err,
                 size_t errlen)
{
    bool add, cont;

    if (sim_json_bool(root, "add_generation_prompt", add_default, &add, err, errlen) ||
        sim_json_bool(root, "continue_final_message", false, &cont, err, errlen))
        return LX_EINVAL;
    if (add && cont) {
        snprintf(err, errlen,
                 "Cannot set both `continue_final_message` and `add_generation_prompt` to True.");
        return LX_EINVAL;
    }
    if (cont)
        *end = SIM_CHAT_CONTINUE_FINAL;
    else
        *end = add ? SIM_CHAT_GENERATION_PROMPT : SIM_CHAT_NO_GENERATION_PROMPT;
    return 0;
}

/*
 * The natural length is the whole answer's: a prompt that already holds the
 * answer's first tokens (prompt.partial_tokens) has that many fewer to go,
 * and once it holds them all only the end-of-sequence token is left.
 */
int sim_call_plan(struct sim_call *call, const json_t *mt, char *err, size_t errlen)
{
    const struct sim_conf *conf = call->conf;
    uint64_t prompt = call->prompt.tokens, partial = call->prompt.partial_tokens, natural, limit;
    bool explicit_limit = false;

    if (mt) {
        if (!json_is_integer(mt)) {
            snprintf(err, errlen, "max_tokens must be an integer");
            return LX_EINVAL;
        }
        if (json_integer_value(mt) < 1) {
            snprintf(err, errlen, "max_tokens must be at least 1, got %lld.",
                     (long long)json_integer_value(mt));
            return LX_EINVAL;
        }
        explicit_limit = true;
    }
    if (prompt >= conf->max_model_len) {
        snprintf(err, errlen,
                 "This model's maximum context length is %u tokens. However, your request has "
                 "%llu input tokens. Please reduce the length of the input messages.",
                 conf->max_model_len, (unsigned long long)prompt);
        return LX_EINVAL;
    }
    if (explicit_limit) {
        limit = (uint64_t)json_integer_value(mt);
        if (prompt + limit > conf->max_model_len) {
            snprintf(err, errlen,
                     "This model's maximum context length is %u tokens. However, you requested "
                     "%llu tokens (%llu in the messages, %llu in the completion). Please reduce "
                     "the length of the messages or completion.",
                     conf->max_model_len, (unsigned long long)(prompt + limit),
                     (unsigned long long)prompt, (unsigned long long)limit);
            return LX_EINVAL;
        }
    } else {
        limit = conf->max_model_len - prompt;
    }
    if (call->fault.tokens >= 0)
        natural = (uint64_t)LX_MAX(call->fault.tokens, 1);
    else if (call->natural)
        natural = call->natural;
    else
        natural = explicit_limit ? NO_LIMIT : conf->max_tokens;
    if (natural != NO_LIMIT && partial >= natural) {
        call->eos = true;
        natural = 1;
    } else if (natural != NO_LIMIT) {
        natural -= partial;
    }
    call->seq.prompt_tokens = (unsigned)prompt;
    call->seq.max_tokens = (unsigned)LX_MIN(natural, limit);
    call->seq.finish_stop = natural <= limit;
    /* The blocks of the prompt followed by the whole completion: the engine
     * caches those the sequence has computed when it ends. */
    call->ctx = call->start = call->prompt.ctx;
    if (call->eos)
        sim_prompt_push_eos(&call->prompt);
    else
        sim_prompt_push_output(&call->prompt, call->seq.max_tokens);
    call->seq.blocks = call->prompt.blocks;
    call->seq.n_blocks = call->prompt.n_blocks;
    return 0;
}

/* ---- chat and completions ------------------------------------------------ */

static bool is_chat(const struct sim_call *call)
{
    return call->kind == &sim_kind_chat;
}

/* The request's max_completion_tokens (chat) or max_tokens; NULL if none. */
static const json_t *max_tokens_field(const json_t *root, bool chat)
{
    const json_t *mt = NULL;

    if (chat)
        mt = json_object_get(root, "max_completion_tokens");
    if (!mt || json_is_null(mt))
        mt = json_object_get(root, "max_tokens");
    return mt && !json_is_null(mt) ? mt : NULL;
}

static int chat_parse(struct sim_call *call, const json_t *root, char *err, size_t errlen)
{
    enum sim_chat_end end;

    if (sim_chat_end(root, true, &end, err, errlen) ||
        sim_prompt_chat(&call->prompt, json_object_get(root, "messages"), end, err, errlen))
        return LX_EINVAL;
    return sim_call_plan(call, max_tokens_field(root, true), err, errlen);
}

static int completion_parse(struct sim_call *call, const json_t *root, char *err, size_t errlen)
{
    const json_t *mt = max_tokens_field(root, false);
    /* The part of an answer a continuation resends counts in the answer's
     * natural length, when it has one (x-sim tokens=, or --max-tokens for a
     * request without max_tokens). */
    bool bounded = call->fault.tokens >= 0 || !mt;

    if (sim_prompt_completion(&call->prompt, json_object_get(root, "prompt"), bounded, err, errlen))
        return LX_EINVAL;
    return sim_call_plan(call, mt, err, errlen);
}

static void append_usage(struct lx_buf *b, const struct sim_call *call, bool details)
{
    unsigned p = call->seq.prompt_tokens, c = call->seq.generated;

    lx_buf_appendf(
        b, "\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u,\"completion_tokens\":%u%s}", p,
        p + c, c, details ? ",\"prompt_tokens_details\":null" : "");
}

/* data: {"id":...,"object":...,"created":...,"model":...,"choices": */
static void chunk_begin(struct lx_buf *b, const struct sim_call *call)
{
    lx_buf_appendf(
        b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":\"%s\",\"choices\":",
        call->id, is_chat(call) ? "chat.completion.chunk" : "text_completion", call->created,
        call->model);
}

/* One SSE event for the next output token, after the assistant's role (a
 * chat stream opens with it, before the first token); <last> carries the
 * finish reason. */
static void token_event(struct lx_buf *b, struct sim_call *call, bool last)
{
    bool chat = is_chat(call);

    if (chat && call->events == 0) {
        chunk_begin(b, call);
        SIM_APPEND_LIT(b, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                          "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }
    chunk_begin(b, call);
    if (chat)
        SIM_APPEND_LIT(b, "[{\"index\":0,\"delta\":{\"content\":\"");
    else
        SIM_APPEND_LIT(b, "[{\"index\":0,\"text\":\"");
    sim_call_append_word(b, call);
    if (chat)
        SIM_APPEND_LIT(b, "\"}");
    else
        SIM_APPEND_LIT(b, "\"");
    if (last)
        lx_buf_appendf(b, ",\"logprobs\":null,\"finish_reason\":\"%s\",\"stop_reason\":null}]}\n\n",
                       sim_call_finish_reason(call));
    else if (chat)
        SIM_APPEND_LIT(b, ",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    else
        SIM_APPEND_LIT(b, ",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n");
}

/* The usage chunk (stream_options.include_usage), then [DONE]. */
static void stream_close(struct lx_buf *b, struct sim_call *call)
{
    if (call->include_usage) {
        chunk_begin(b, call);
        SIM_APPEND_LIT(b, "[],");
        append_usage(b, call, false);
        SIM_APPEND_LIT(b, "}\n\n");
    }
    SIM_APPEND_LIT(b, "data: [DONE]\n\n");
}

static void whole_body(struct lx_buf *b, struct sim_call *call)
{
    bool chat = is_chat(call);

    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":\"%s\",\"choices\":"
                   "[{\"index\":0,",
                   call->id, chat ? "chat.completion" : "text_completion", call->created,
                   call->model);
    if (chat) {
        SIM_APPEND_LIT(b, "\"message\":{\"role\":\"assistant\",\"content\":\"");
        sim_call_append_said(b, call);
        SIM_APPEND_LIT(b, "\",\"tool_calls\":[]},");
    } else {
        SIM_APPEND_LIT(b, "\"text\":\"");
        sim_call_append_said(b, call);
        SIM_APPEND_LIT(b, "\",");
    }
    lx_buf_appendf(b, "\"logprobs\":null,\"finish_reason\":\"%s\",\"stop_reason\":null%s}],",
                   sim_call_finish_reason(call), chat ? "" : ",\"prompt_logprobs\":null");
    append_usage(b, call, true);
    if (chat)
        SIM_APPEND_LIT(b, ",\"prompt_logprobs\":null}");
    else
        SIM_APPEND_LIT(b, "}");
}

/* The two differ in their id and parsing and, through is_chat(), in the
 * shapes' few chat-only members. */
#define OPENAI_KIND(prefix, parse_fn)                                                              \
    {                                                                                              \
        .id_prefix = (prefix), .parse = (parse_fn), .token = token_event, .close = stream_close,   \
        .whole = whole_body,                                                                       \
    }

const struct sim_kind sim_kind_chat = OPENAI_KIND("chatcmpl-", chat_parse);
const struct sim_kind sim_kind_completion = OPENAI_KIND("cmpl-", completion_parse);
