/*
 * api.c - llmux-sim's endpoints and response shapes (vLLM's), and faults.
 *
 * A call (struct sim_call) is one inference request that is not answered at
 * once. Its states:
 *   HUNG     never answered (--hang, x-sim hang=1, or the node is dying);
 *            it waits for the client to go away or the server to close
 *   DELAYED  x-sim delay_ms: sleeping in the api's delay list (sorted by due
 *            time, one timer for all)
 *   ENGINE   its sequence is in the engine; a streaming call has sent its
 *            head and writes one SSE event per token as the engine makes it
 * A call ends when its response ends (resp_end/resp_abort) or when the server
 * calls on_abort; either way it is unlinked from everything and freed at
 * once. The server never calls on_abort from inside one of our calls (write
 * errors are reported later from its timer), so no deferred frees are needed.
 *
 * Byte-determinism: for the same body on the same process a response is the
 * same bytes: the id is a hash of the body, "created" is the process start,
 * the text is a function of the rendered context (prompt.h), so a request
 * that resends the first k words of an answer as a continuation gets the
 * rest of that answer.
 */
#include "api.h"

#include <http_parser.h>
#include <jansson.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../src/core/log.h"
#include "prompt.h"

#define BODY_MAX_BYTES (64u << 20)
#define NO_LIMIT UINT64_MAX
#define DIE_DELAY_MS 20 /* lets the last answer's bytes leave before exit(1) */
#define APPEND_LIT(b, lit) lx_buf_append((b), (lit), sizeof(lit) - 1)

enum call_state { CALL_NEW, CALL_HUNG, CALL_DELAYED, CALL_ENGINE };
enum call_kind { KIND_OTHER, KIND_CHAT, KIND_COMPLETION };

/* The x-sim header: -1 means "not given". */
struct sim_fault {
    int status;         /* answer this status at once; 0 = no */
    int64_t ttft_ms;    /* extra delay before the first token */
    int64_t tokens;     /* natural completion length */
    int64_t drop_after; /* abort after this many tokens */
    int64_t delay_ms;   /* delay before the response head */
    bool hang;          /* never answer */
};

struct sim_call {
    struct sim_seq seq; /* the engine's view */
    struct sim_api *api;
    struct lx_http_req *req;   /* borrowed until the response ends or on_abort */
    struct lx_list link;       /* api->calls */
    struct lx_list delay_link; /* api->delayed while DELAYED */
    enum call_state state;
    enum call_kind kind;
    struct sim_fault fault;
    double due_ms; /* DELAYED: when to go on */
    bool stream;
    bool include_usage;       /* stream_options.include_usage */
    bool broken;              /* a write failed; on_abort follows */
    unsigned events;          /* token events written (streaming) */
    char id[48];              /* "chatcmpl-<32 hex>" or "cmpl-<32 hex>" */
    char *model;              /* the request's model, JSON-escaped, owned */
    struct sim_prompt prompt; /* the prompt's tokens, then the completion's */
    struct sim_ctx ctx;       /* the model's context before the next word it says */
    bool eos;                 /* the answer was already whole: its one token is the
                                 end of sequence, without text */
};

struct sim_api {
    uv_loop_t *loop;
    const struct sim_conf *conf;
    struct sim_engine *eng;
    struct lx_http_server *srv; /* borrowed, for connection counts */
    uv_timer_t delay_timer;     /* the earliest DELAYED call */
    uv_timer_t die_timer;       /* --die-after: exit(1) when it fires */
    int handles_open;
    struct lx_list calls;   /* every live call */
    struct lx_list delayed; /* DELAYED calls, due time ascending */
    struct lx_buf scratch;  /* response being built */
    char *model_esc;        /* --model, JSON-escaped */
    long long created;      /* process start, unix seconds */
    double start_ms;        /* process start, engine clock */
    uint64_t prng;          /* xorshift64* state for --error-rate */
    bool dying;             /* --die-after reached: answer nothing more */

    /* /sim/stats counters. */
    uint64_t http_requests; /* every request, any path */
    uint64_t requests;      /* inference requests (POST /v1/...completions) */
    uint64_t answered;      /* inference requests answered (any status) */
    uint64_t completed;     /* inference requests answered 200 */
    uint64_t errors;        /* inference requests answered >= 400 */
    uint64_t aborted;       /* client went away before the answer */
    uint64_t dropped;       /* aborted on purpose (x-sim drop_after) */
    uint64_t hung;          /* HUNG calls now */
};

/* ---- helpers ------------------------------------------------------------- */

static char *escape_dup(const char *s, size_t len)
{
    struct lx_buf b;

    lx_buf_init(&b, 0);
    if (lx_json_escape(&b, s, len) || lx_buf_append(&b, "", 1)) {
        lx_buf_deinit(&b);
        return lx_strdup("");
    }
    return b.data;
}

/* Uniform in [0, 1) from xorshift64*. */
static double prng_next(struct sim_api *api)
{
    uint64_t x = api->prng;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    api->prng = x;
    return (double)((x * 0x2545f4914f6cdd1dULL) >> 11) * 0x1.0p-53;
}

static bool path_is(const struct lx_http_req *req, const char *path)
{
    size_t n = strcspn(req->path, "?");

    return n == strlen(path) && memcmp(req->path, path, n) == 0;
}

static bool in_slow_start(const struct sim_api *api)
{
    return api->conf->slow_start_ms &&
           sim_now_ms() - api->start_ms < (double)api->conf->slow_start_ms;
}

/* OpenAI SDK's exception names, which vLLM's error "type" follows. */
static const char *error_type(int status)
{
    static const struct {
        int status;
        const char *type;
    } types[] = {
        {400, "BadRequestError"},
        {401, "AuthenticationError"},
        {403, "PermissionDeniedError"},
        {404, "NotFoundError"},
        {405, "MethodNotAllowedError"},
        {409, "ConflictError"},
        {413, "RequestEntityTooLargeError"},
        {422, "UnprocessableEntityError"},
        {429, "RateLimitError"},
        {500, "InternalServerError"},
        {501, "NotImplementedError"},
        {503, "ServiceUnavailableError"},
    };

    for (size_t i = 0; i < ARRAY_SIZE(types); i++)
        if (types[i].status == status)
            return types[i].type;
    return status < 500 ? "BadRequestError" : "InternalServerError";
}

/* vLLM's error body: {"object":"error","message","type","param","code"}. */
static void send_error(struct sim_api *api, struct lx_http_req *req, int status, const char *msg)
{
    struct lx_buf *b = &api->scratch;

    lx_buf_reset(b);
    APPEND_LIT(b, "{\"object\":\"error\",\"message\":\"");
    lx_json_escape(b, msg, strlen(msg));
    lx_buf_appendf(b, "\",\"type\":\"%s\",\"param\":null,\"code\":%d}", error_type(status), status);
    lx_http_resp_send(req, status, "application/json", NULL, 0, b->data, b->len);
}

static void send_json(struct sim_api *api, struct lx_http_req *req)
{
    lx_http_resp_send(req, 200, "application/json", NULL, 0, api->scratch.data, api->scratch.len);
}

/* Parses "k=v, k=v" into <f>; unknown keys and bad values are ignored. */
static void fault_parse(struct sim_fault *f, const struct lx_http_header *h)
{
    const char *p = h ? h->value : NULL, *end = h ? h->value + h->value_len : NULL;

    f->status = 0;
    f->ttft_ms = f->tokens = f->drop_after = f->delay_ms = -1;
    f->hang = false;
    while (p && p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        char key[32], val[32];
        size_t klen, vlen;
        long long v;
        char *vend;

        if (eq) {
            while (p < eq && (*p == ' ' || *p == '\t'))
                p++;
            klen = (size_t)(eq - p);
            while (klen && (p[klen - 1] == ' ' || p[klen - 1] == '\t'))
                klen--;
            vlen = (size_t)(item_end - eq - 1);
            if (klen < sizeof(key) && vlen < sizeof(val)) {
                memcpy(key, p, klen);
                key[klen] = 0;
                memcpy(val, eq + 1, vlen);
                val[vlen] = 0;
                v = strtoll(val, &vend, 10);
                while (*vend == ' ' || *vend == '\t')
                    vend++;
                if (vend != val && *vend == 0 && v >= 0) {
                    if (!strcmp(key, "status"))
                        f->status = (int)LX_MIN(v, 999);
                    else if (!strcmp(key, "ttft_ms"))
                        f->ttft_ms = v;
                    else if (!strcmp(key, "tokens"))
                        f->tokens = v;
                    else if (!strcmp(key, "drop_after"))
                        f->drop_after = v;
                    else if (!strcmp(key, "delay_ms"))
                        f->delay_ms = v;
                    else if (!strcmp(key, "hang"))
                        f->hang = v != 0;
                }
            }
        }
        p = comma ? comma + 1 : end;
    }
}

/* ---- calls -------------------------------------------------------------- */

static struct sim_call *call_new(struct sim_api *api, struct lx_http_req *req, enum call_kind kind)
{
    struct sim_call *call = lx_calloc(1, sizeof(*call));

    call->api = api;
    call->req = req;
    call->kind = kind;
    call->state = CALL_NEW;
    lx_list_init(&call->delay_link);
    lx_list_push_back(&api->calls, &call->link);
    sim_prompt_init(&call->prompt, api->conf->block_size,
                    api->conf->max_model_len / api->conf->block_size + 1);
    req->data = call;
    return call;
}

static void call_free(struct sim_call *call)
{
    if (call->state == CALL_HUNG)
        call->api->hung--;
    lx_list_remove(&call->link);
    lx_list_remove(&call->delay_link);
    sim_prompt_deinit(&call->prompt);
    free(call->model);
    free(call);
}

static void on_die(uv_timer_t *t)
{
    struct sim_api *api = t->data;

    lx_error("llmux-sim %s: --die-after %llu reached: exiting with status 1", api->conf->name,
             (unsigned long long)api->conf->die_after);
    exit(1);
}

/*
 * Counts an inference answer; call right before the response ends. When it
 * is the --die-after'th, the node stops: nothing else is answered, the
 * engine freezes, and the process exits shortly after.
 */
static void count_answer(struct sim_api *api, int status)
{
    api->answered++;
    if (status >= 400)
        api->errors++;
    else
        api->completed++;
    if (api->conf->die_after && api->answered >= api->conf->die_after && !api->dying) {
        api->dying = true;
        sim_engine_freeze(api->eng);
        uv_timer_start(&api->die_timer, on_die, DIE_DELAY_MS, 0);
    }
}

/* Answers an inference error and frees <call>. */
static void call_error(struct sim_call *call, int status, const char *msg)
{
    struct sim_api *api = call->api;
    struct lx_http_req *req = call->req;

    call_free(call);
    count_answer(api, status);
    send_error(api, req, status, msg);
}

/* Closes the connection on purpose (x-sim drop_after or --drop-after) and
 * frees <call>. */
static void call_drop(struct sim_call *call)
{
    struct lx_http_req *req = call->req;

    lx_info("llmux-sim %s: %s: dropping the connection after %u tokens (drop_after %lld)",
            call->api->conf->name, call->id, call->seq.generated,
            (long long)call->fault.drop_after);
    call->api->dropped++;
    if (call->state == CALL_ENGINE)
        sim_engine_cancel(call->api->eng, &call->seq);
    call_free(call);
    lx_http_resp_abort(req);
}

static void call_hang(struct sim_call *call)
{
    call->state = CALL_HUNG;
    call->api->hung++;
}

static void on_abort(struct lx_http_req *req)
{
    struct sim_call *call = req->data;
    struct sim_api *api = call->api;

    api->aborted++;
    if (call->state == CALL_ENGINE)
        sim_engine_cancel(api->eng, &call->seq);
    lx_debug("llmux-sim %s: %s: client went away", api->conf->name,
             call->id[0] ? call->id : "request");
    call_free(call);
}

/* Writes <b> to a streaming call; false once the connection is broken. */
static bool call_write(struct sim_call *call, const struct lx_buf *b)
{
    if (call->broken)
        return false;
    if (lx_http_resp_write(call->req, b->data, b->len) < 0) {
        /* The server closes the connection and calls on_abort from its
         * timer; until then nothing more is written. */
        call->broken = true;
        return false;
    }
    return true;
}

/* ---- response shapes ----------------------------------------------------- */

static const char *finish_reason(const struct sim_call *call)
{
    return call->seq.finish_stop ? "stop" : "length";
}

static void append_usage(struct lx_buf *b, const struct sim_call *call, bool details)
{
    unsigned p = call->seq.prompt_tokens, c = call->seq.generated;

    lx_buf_appendf(
        b, "\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u,\"completion_tokens\":%u%s}", p,
        p + c, c, details ? ",\"prompt_tokens_details\":null" : "");
}

/* Appends the next word <call> says (nothing for the end-of-sequence token)
 * and moves its context on: words come out in order, one per token. */
static void append_next_word(struct lx_buf *b, struct sim_call *call)
{
    if (!call->eos)
        lx_buf_append(b, sim_ctx_generate(&call->ctx), SIM_WORD_BYTES);
}

/* data: {"id":...,"object":...,"created":...,"model":...,"choices": */
static void chunk_begin(struct lx_buf *b, const struct sim_call *call)
{
    lx_buf_appendf(
        b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":\"%s\",\"choices\":",
        call->id, call->kind == KIND_CHAT ? "chat.completion.chunk" : "text_completion",
        call->api->created, call->model);
}

/* A chat stream opens with the assistant's role, before the first token. */
static void append_role_event(struct lx_buf *b, const struct sim_call *call)
{
    if (call->events > 0 || call->kind != KIND_CHAT)
        return;
    chunk_begin(b, call);
    APPEND_LIT(b, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                  "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

/* One SSE event for the next output token; <last> carries the finish reason. */
static void append_token_event(struct lx_buf *b, struct sim_call *call, bool last)
{
    chunk_begin(b, call);
    if (call->kind == KIND_CHAT)
        APPEND_LIT(b, "[{\"index\":0,\"delta\":{\"content\":\"");
    else
        APPEND_LIT(b, "[{\"index\":0,\"text\":\"");
    append_next_word(b, call);
    if (call->kind == KIND_CHAT)
        APPEND_LIT(b, "\"}");
    else
        APPEND_LIT(b, "\"");
    if (last)
        lx_buf_appendf(b, ",\"logprobs\":null,\"finish_reason\":\"%s\",\"stop_reason\":null}]}\n\n",
                       finish_reason(call));
    else if (call->kind == KIND_CHAT)
        APPEND_LIT(b, ",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    else
        APPEND_LIT(b, ",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}]}\n\n");
}

/* The whole completion's text (nothing of it was said before). */
static void append_text(struct lx_buf *b, struct sim_call *call)
{
    for (unsigned i = 0; i < call->seq.generated; i++)
        append_next_word(b, call);
}

static void append_full_body(struct lx_buf *b, struct sim_call *call)
{
    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":\"%s\",\"choices\":"
                   "[{\"index\":0,",
                   call->id, call->kind == KIND_CHAT ? "chat.completion" : "text_completion",
                   call->api->created, call->model);
    if (call->kind == KIND_CHAT) {
        APPEND_LIT(b, "\"message\":{\"role\":\"assistant\",\"content\":\"");
        append_text(b, call);
        APPEND_LIT(b, "\",\"tool_calls\":[]},");
    } else {
        APPEND_LIT(b, "\"text\":\"");
        append_text(b, call);
        APPEND_LIT(b, "\",");
    }
    lx_buf_appendf(b, "\"logprobs\":null,\"finish_reason\":\"%s\",\"stop_reason\":null%s}],",
                   finish_reason(call), call->kind == KIND_CHAT ? "" : ",\"prompt_logprobs\":null");
    append_usage(b, call, true);
    if (call->kind == KIND_CHAT)
        APPEND_LIT(b, ",\"prompt_logprobs\":null}");
    else
        APPEND_LIT(b, "}");
}

/* ---- engine callbacks ---------------------------------------------------- */

static bool drop_due(const struct sim_call *call, unsigned n)
{
    return call->fault.drop_after >= 0 && (uint64_t)call->fault.drop_after <= n;
}

static void on_token(struct sim_seq *seq, void *ctx)
{
    struct sim_call *call = container_of(seq, struct sim_call, seq);
    struct lx_buf *b = &call->api->scratch;

    if (call->stream) {
        lx_buf_reset(b);
        append_role_event(b, call);
        append_token_event(b, call, false);
        call->events++;
        call_write(call, b);
        if (drop_due(call, call->events))
            call_drop(call);
        return;
    }
    if (drop_due(call, seq->generated))
        call_drop(call);
}

static void on_done(struct sim_seq *seq, void *ctx)
{
    struct sim_call *call = container_of(seq, struct sim_call, seq);
    struct sim_api *api = call->api;
    struct lx_http_req *req = call->req;
    struct lx_buf *b = &api->scratch;

    lx_buf_reset(b);
    if (!call->stream) {
        if (drop_due(call, seq->generated)) {
            call_drop(call);
            return;
        }
        append_full_body(b, call);
        call_free(call);
        count_answer(api, 200);
        send_json(api, req);
        return;
    }
    append_role_event(b, call);
    append_token_event(b, call, true);
    call->events++;
    if (drop_due(call, call->events)) {
        call_write(call, b);
        call_drop(call);
        return;
    }
    if (call->include_usage) {
        chunk_begin(b, call);
        APPEND_LIT(b, "[],");
        append_usage(b, call, false);
        APPEND_LIT(b, "}\n\n");
    }
    APPEND_LIT(b, "data: [DONE]\n\n");
    call_write(call, b);
    call_free(call);
    count_answer(api, 200);
    lx_http_resp_end(req);
}

/* ---- inference requests -------------------------------------------------- */

/* The request's max_completion_tokens (chat) or max_tokens; NULL if none. */
static const json_t *max_tokens_field(const struct sim_call *call, const json_t *root)
{
    const json_t *mt = NULL;

    if (call->kind == KIND_CHAT)
        mt = json_object_get(root, "max_completion_tokens");
    if (!mt || json_is_null(mt))
        mt = json_object_get(root, "max_tokens");
    return mt && !json_is_null(mt) ? mt : NULL;
}

/* Whether the answer has a natural length (x-sim tokens=, or --max-tokens
 * for a request without max_tokens), which the part of it a continuation
 * resends counts in. */
static bool natural_is_bounded(const struct sim_call *call, const json_t *root)
{
    return call->fault.tokens >= 0 || !max_tokens_field(call, root);
}

/*
 * The request's completion length and finish reason; see docs/SIM.md. The
 * natural length is the whole answer's: a prompt that already holds the
 * answer's first tokens (prompt.partial_tokens) has that many fewer to go,
 * and once it holds them all only the end-of-sequence token is left.
 */
static int plan_tokens(struct sim_call *call, const json_t *root, char *err, size_t errlen)
{
    const struct sim_conf *conf = call->api->conf;
    const json_t *mt = max_tokens_field(call, root);
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
    return 0;
}

/* A boolean request field: <def> when absent or null. */
static int bool_field(const json_t *root, const char *name, bool def, bool *out, char *err,
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
 * How a chat's rendering ends: vLLM's add_generation_prompt (default true)
 * and continue_final_message (default false), which exclude each other. vLLM
 * refuses both set explicitly in its request validation, and both in effect
 * (add_generation_prompt left to its default) when it applies the chat
 * template, in other words; the sim answers both with the first message.
 */
static int chat_end(const json_t *root, enum sim_chat_end *end, char *err, size_t errlen)
{
    bool add, cont;

    if (bool_field(root, "add_generation_prompt", true, &add, err, errlen) ||
        bool_field(root, "continue_final_message", false, &cont, err, errlen))
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

/* Parses and checks the body; 0, or LX_EINVAL with the message in <err>. */
static int call_parse(struct sim_call *call, char *err, size_t errlen)
{
    const struct lx_buf *body = &call->req->body;
    json_error_t jerr;
    json_t *root, *v, *opts;
    enum sim_chat_end end;
    uint64_t h1, h2;
    int rc = LX_EINVAL;

    root = json_loadb(body->data ? body->data : "", body->len, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "JSON decode error: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return LX_EINVAL;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        goto out;
    }
    v = json_object_get(root, "model");
    if (v && !json_is_null(v) && !json_is_string(v)) {
        snprintf(err, errlen, "model must be a string");
        goto out;
    }
    if (json_is_string(v))
        call->model = escape_dup(json_string_value(v), json_string_length(v));
    else
        call->model = lx_strdup(call->api->model_esc);
    call->stream = json_is_true(json_object_get(root, "stream"));
    opts = json_object_get(root, "stream_options");
    call->include_usage = json_is_true(json_object_get(opts, "include_usage"));

    if (call->kind == KIND_CHAT) {
        rc = chat_end(root, &end, err, errlen);
        if (rc)
            goto out;
        v = json_object_get(root, "messages");
        rc = sim_prompt_chat(&call->prompt, v, end, err, errlen);
    } else {
        v = json_object_get(root, "prompt");
        rc = sim_prompt_completion(&call->prompt, v, natural_is_bounded(call, root), err, errlen);
    }
    if (rc)
        goto out;
    rc = plan_tokens(call, root, err, errlen);
    if (rc)
        goto out;
    /* The blocks of the prompt followed by the whole completion: the engine
     * caches those the sequence has computed when it ends. */
    call->ctx = call->prompt.ctx;
    if (call->eos)
        sim_prompt_push_eos(&call->prompt);
    else
        sim_prompt_push_output(&call->prompt, call->seq.max_tokens);
    call->seq.blocks = call->prompt.blocks;
    call->seq.n_blocks = call->prompt.n_blocks;
    h1 = sim_hash(body->data, body->len, 0x5eed);
    h2 = sim_hash(body->data, body->len, 0xc0ffee);
    snprintf(call->id, sizeof(call->id), "%s%016llx%016llx",
             call->kind == KIND_CHAT ? "chatcmpl-" : "cmpl-", (unsigned long long)h1,
             (unsigned long long)h2);
out:
    json_decref(root);
    return rc;
}

/* The part after any x-sim delay: faults, parsing, then the engine. */
static void call_proceed(struct sim_call *call)
{
    static const struct lx_http_header sse = {"Content-Type", 12,
                                              "text/event-stream; charset=utf-8", 32};
    struct sim_api *api = call->api;
    const struct sim_conf *conf = api->conf;
    char err[512];

    if (call->fault.status >= 400 && call->fault.status <= 599) {
        snprintf(err, sizeof(err), "simulated error (x-sim status=%d)", call->fault.status);
        call_error(call, call->fault.status, err);
        return;
    }
    if (conf->error_rate > 0 && prng_next(api) < conf->error_rate) {
        call_error(call, 500, "simulated error (--error-rate)");
        return;
    }
    if (call_parse(call, err, sizeof(err))) {
        call_error(call, 400, err);
        return;
    }
    call->seq.ttft_extra_ms = call->fault.ttft_ms > 0 ? (double)call->fault.ttft_ms : 0;
    if (call->stream) {
        if (lx_http_resp_start(call->req, 200, &sse, 1, -1) < 0)
            call->broken = true;
        if (call->fault.drop_after == 0) {
            call_drop(call);
            return;
        }
    } else if (call->fault.drop_after == 0) {
        call_drop(call);
        return;
    }
    call->state = CALL_ENGINE;
    sim_engine_submit(api->eng, &call->seq);
}

static void delay_arm(struct sim_api *api);

static void on_delay_timer(uv_timer_t *t)
{
    struct sim_api *api = container_of(t, struct sim_api, delay_timer);
    double now = sim_now_ms();

    while (!lx_list_empty(&api->delayed) && !api->dying) {
        struct sim_call *call =
            container_of(lx_list_first(&api->delayed), struct sim_call, delay_link);

        if (call->due_ms > now + 1.0)
            break;
        lx_list_remove(&call->delay_link);
        call->state = CALL_NEW;
        call_proceed(call);
    }
    delay_arm(api);
}

static void delay_arm(struct sim_api *api)
{
    struct sim_call *head;
    double delay;

    if (lx_list_empty(&api->delayed) || api->dying) {
        uv_timer_stop(&api->delay_timer);
        return;
    }
    head = container_of(lx_list_first(&api->delayed), struct sim_call, delay_link);
    uv_update_time(api->loop);
    delay = head->due_ms - sim_now_ms();
    uv_timer_start(&api->delay_timer, on_delay_timer, delay > 0 ? (uint64_t)ceil(delay) : 0, 0);
}

static void call_delay(struct sim_call *call, uint64_t ms)
{
    struct sim_api *api = call->api;
    struct lx_list *pos;

    call->state = CALL_DELAYED;
    call->due_ms = sim_now_ms() + (double)ms;
    /* Keep the list sorted: walk back from the tail (usually short). */
    for (pos = api->delayed.prev; pos != &api->delayed; pos = pos->prev)
        if (container_of(pos, struct sim_call, delay_link)->due_ms <= call->due_ms)
            break;
    lx_list_insert_after(pos, &call->delay_link);
    delay_arm(api);
}

static void handle_inference(struct sim_api *api, struct lx_http_req *req, enum call_kind kind)
{
    struct sim_call *call = call_new(api, req, kind);

    api->requests++;
    req->on_abort = on_abort;
    fault_parse(&call->fault, lx_http_req_header(req, "x-sim"));
    if (call->fault.drop_after < 0)
        call->fault.drop_after = api->conf->drop_after;
    if (api->dying || api->conf->hang || call->fault.hang) {
        call_hang(call);
        return;
    }
    if (in_slow_start(api)) {
        call_error(call, 503, "the model is still loading (--slow-start-ms)");
        return;
    }
    if (call->fault.delay_ms > 0) {
        call_delay(call, (uint64_t)call->fault.delay_ms);
        return;
    }
    call_proceed(call);
}

/* ---- other endpoints ----------------------------------------------------- */

static void handle_models(struct sim_api *api, struct lx_http_req *req)
{
    struct lx_buf *b = &api->scratch;
    const char *m = api->model_esc;

    lx_buf_reset(b);
    lx_buf_appendf(
        b,
        "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,"
        "\"owned_by\":\"vllm\",\"root\":\"%s\",\"parent\":null,\"max_model_len\":%u,"
        "\"permission\":[{\"id\":\"modelperm-%016llx\",\"object\":\"model_permission\","
        "\"created\":%lld,\"allow_create_engine\":false,\"allow_sampling\":true,"
        "\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,"
        "\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,"
        "\"is_blocking\":false}]}]}",
        m, api->created, m, api->conf->max_model_len, (unsigned long long)sim_hash(m, strlen(m), 1),
        api->created);
    send_json(api, req);
}

static void handle_metrics(struct sim_api *api, struct lx_http_req *req)
{
    struct lx_buf *b = &api->scratch;

    lx_buf_reset(b);
    sim_metrics_render(b, sim_engine_stats(api->eng), api->conf->model);
    lx_http_resp_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0, b->data,
                      b->len);
}

static void handle_stats(struct sim_api *api, struct lx_http_req *req)
{
    const struct sim_engine_stats *st = sim_engine_stats(api->eng);
    struct lx_buf *b = &api->scratch;
    size_t accepted = api->srv ? lx_http_server_accepted(api->srv) : 0;
    size_t open = api->srv ? lx_http_server_conns(api->srv) : 0;

    lx_buf_reset(b);
    lx_buf_appendf(b,
                   "{\"connections_total\":%zu,\"connections_open\":%zu,\"requests_total\":%llu,"
                   "\"running\":%u,\"waiting\":%u,\"aborted_total\":%llu,"
                   "\"prefix_cache_hit_tokens\":%llu,\"kv_cache_used_tokens\":%llu,"
                   "\"http_requests_total\":%llu,\"answered_total\":%llu,"
                   "\"completed_total\":%llu,\"errors_total\":%llu,\"dropped_total\":%llu,"
                   "\"hung\":%llu,\"prefix_cache_query_tokens\":%llu,"
                   "\"kv_cache_capacity_tokens\":%llu,\"prompt_tokens_total\":%llu,"
                   "\"generation_tokens_total\":%llu}",
                   accepted, open, (unsigned long long)api->requests, st->running, st->waiting,
                   (unsigned long long)api->aborted, (unsigned long long)st->prefix_hits,
                   (unsigned long long)(st->kv_blocks_used * api->conf->block_size),
                   (unsigned long long)api->http_requests, (unsigned long long)api->answered,
                   (unsigned long long)api->completed, (unsigned long long)api->errors,
                   (unsigned long long)api->dropped, (unsigned long long)api->hung,
                   (unsigned long long)st->prefix_queries,
                   (unsigned long long)(st->kv_blocks_total * api->conf->block_size),
                   (unsigned long long)st->prompt_tokens,
                   (unsigned long long)st->generation_tokens);
    send_json(api, req);
}

/* A GET endpoint under --hang or while dying: held until the client leaves. */
static void hang_other(struct sim_api *api, struct lx_http_req *req)
{
    struct sim_call *call = call_new(api, req, KIND_OTHER);

    req->on_abort = on_abort;
    call_hang(call);
}

void sim_api_handle(struct lx_http_req *req, void *ctx)
{
    struct sim_api *api = ctx;
    bool get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    bool post = req->method == HTTP_POST;
    bool stall = api->dying || api->conf->hang;

    api->http_requests++;
    if (path_is(req, "/v1/chat/completions") || path_is(req, "/v1/completions")) {
        if (post) {
            handle_inference(api, req,
                             path_is(req, "/v1/completions") ? KIND_COMPLETION : KIND_CHAT);
            return;
        }
    } else if (path_is(req, "/sim/stats")) {
        if (get) {
            handle_stats(api, req);
            return;
        }
    } else if (path_is(req, "/health") || path_is(req, "/v1/models") || path_is(req, "/metrics")) {
        if (get && stall) {
            hang_other(api, req);
        } else if (get && path_is(req, "/health")) {
            if (in_slow_start(api))
                send_error(api, req, 503, "the model is still loading (--slow-start-ms)");
            else
                lx_http_resp_send(req, 200, NULL, NULL, 0, "", 0);
        } else if (get && path_is(req, "/v1/models")) {
            handle_models(api, req);
        } else if (get) {
            handle_metrics(api, req);
        }
        if (get)
            return;
    } else {
        if (stall) {
            hang_other(api, req);
            return;
        }
        send_error(api, req, 404, "Not Found");
        return;
    }
    send_error(api, req, 405, "Method Not Allowed");
}

/* ---- life ---------------------------------------------------------------- */

struct sim_api *sim_api_new(uv_loop_t *loop, const struct sim_conf *conf)
{
    static const struct sim_engine_ops ops = {on_token, on_done};
    struct sim_api *api = lx_calloc(1, sizeof(*api));

    api->loop = loop;
    api->conf = conf;
    api->eng = sim_engine_new(loop, conf, &ops, api);
    lx_list_init(&api->calls);
    lx_list_init(&api->delayed);
    lx_buf_init(&api->scratch, 0);
    api->model_esc = escape_dup(conf->model, strlen(conf->model));
    api->created = (long long)time(NULL);
    api->start_ms = sim_now_ms();
    api->prng = conf->seed ? conf->seed : 0x9e3779b97f4a7c15ULL;
    uv_timer_init(loop, &api->delay_timer);
    uv_timer_init(loop, &api->die_timer);
    api->delay_timer.data = api;
    api->die_timer.data = api;
    api->handles_open = 2;
    return api;
}

void sim_api_set_server(struct sim_api *api, struct lx_http_server *srv)
{
    api->srv = srv;
}

static void on_api_handle_closed(uv_handle_t *h)
{
    struct sim_api *api = h->data;

    if (--api->handles_open > 0)
        return;
    lx_buf_deinit(&api->scratch);
    free(api->model_esc);
    free(api);
}

void sim_api_close(struct sim_api *api)
{
    /* The server is closed, so every call has had on_abort; any left is a
     * server bug, but must not leak. */
    while (!lx_list_empty(&api->calls)) {
        struct sim_call *call = container_of(lx_list_first(&api->calls), struct sim_call, link);

        lx_warn("llmux-sim %s: a call outlived the server; dropping it", api->conf->name);
        if (call->state == CALL_ENGINE)
            sim_engine_cancel(api->eng, &call->seq);
        call_free(call);
    }
    sim_engine_close(api->eng);
    api->eng = NULL;
    api->srv = NULL;
    uv_close((uv_handle_t *)&api->delay_timer, on_api_handle_closed);
    uv_close((uv_handle_t *)&api->die_timer, on_api_handle_closed);
}
