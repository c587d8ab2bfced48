/*
 * api.c - llmux-sim's HTTP side: the endpoint table, the life of a call, and
 * the faults (x-sim, --error-rate, --hang, --die-after, --slow-start-ms).
 *
 * Every model endpoint of vLLM's OpenAI server is one row of the endpoint
 * table, naming its kind (call.h): the kind reads the request and builds the
 * answers, this file does everything else, the same way for every endpoint.
 *
 * A call (struct sim_call) is one request to a model endpoint that is not
 * answered at once. Its states:
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
 * and the text, vectors and scores are functions of the request (prompt.h).
 */
#include "api.h"

#include <http_parser.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../src/core/log.h"
#include "call.h"

#define DIE_DELAY_MS 20 /* lets the last answer's bytes leave before exit(1) */
#define MODELS_PREFIX "/v1/models/"

/* The model endpoints: one row per path (aliases share a kind). */
static const struct sim_endpoint {
    const char *path;
    const struct sim_kind *kind;
} endpoints[] = {
    {"/v1/chat/completions", &sim_kind_chat},
    {"/v1/completions", &sim_kind_completion},
    {"/v1/responses", &sim_kind_responses},
    {"/v1/embeddings", &sim_kind_embeddings},
    {"/pooling", &sim_kind_pooling},
    {"/classify", &sim_kind_classify},
    {"/v1/rerank", &sim_kind_rerank},
    {"/rerank", &sim_kind_rerank},
    {"/v2/rerank", &sim_kind_rerank},
    {"/v1/score", &sim_kind_score},
    {"/score", &sim_kind_score},
    {"/tokenize", &sim_kind_tokenize},
    {"/detokenize", &sim_kind_detokenize},
    {"/v1/audio/transcriptions", &sim_kind_transcription},
    {"/v1/audio/translations", &sim_kind_translation},
};

/* endpoint_requests in /sim/stats: the table's rows, then the GETs of models. */
enum { STAT_MODELS = ARRAY_SIZE(endpoints), STAT_MODEL, N_ENDPOINT_STATS };

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
    uint64_t requests;      /* requests to model endpoints (the endpoint table) */
    uint64_t answered;      /* of them, answered (any status) */
    uint64_t completed;     /* answered 200 */
    uint64_t errors;        /* answered >= 400 */
    uint64_t aborted;       /* client went away before the answer */
    uint64_t dropped;       /* aborted on purpose (x-sim drop_after) */
    uint64_t hung;          /* HUNG calls now */
    uint64_t endpoint_requests[N_ENDPOINT_STATS]; /* per path, any method, any answer */
};

/* ---- helpers ------------------------------------------------------------- */

static char *escape_dup(const char *s, size_t len)
{
    struct lx_buf b;

    lx_buf_init(&b, 0);
    if (sim_json_escape_utf8(&b, s, len) || lx_buf_append(&b, "", 1)) {
        lx_buf_deinit(&b);
        return lx_strdup("");
    }
    return b.data;
}

/* Length of the valid UTF-8 sequence at <s> (<n> bytes left), or 0 when
 * it is not one (overlong forms, surrogates and values past U+10FFFF are
 * not). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned min_second = 0x80, max_second = 0xbf;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        min_second = 0xa0;
    else if (s[0] == 0xed)
        max_second = 0x9f;
    else if (s[0] == 0xf0)
        min_second = 0x90;
    else if (s[0] == 0xf4)
        max_second = 0x8f;
    if (n < len || s[1] < min_second || s[1] > max_second)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

int sim_json_escape_utf8(struct lx_buf *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0, i = 0;
    int rc = 0;

    while (i < len) {
        size_t n = utf8_len(u + i, len - i);

        if (n) {
            i += n;
            continue;
        }
        rc |= lx_json_escape(b, s + run, i - run);
        rc |= SIM_APPEND_LIT(b, "\xef\xbf\xbd");
        run = ++i;
    }
    rc |= lx_json_escape(b, s + run, len - run);
    return rc ? LX_ENOMEM : 0;
}

void sim_call_set_model(struct sim_call *call, const char *s, size_t len)
{
    free(call->model);
    call->model = escape_dup(s, len);
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
    SIM_APPEND_LIT(b, "{\"object\":\"error\",\"message\":\"");
    sim_json_escape_utf8(b, msg, strlen(msg));
    lx_buf_appendf(b, "\",\"type\":\"%s\",\"param\":null,\"code\":%d}", error_type(status), status);
    lx_http_resp_send(req, status, "application/json", NULL, 0, b->data, b->len);
}

/*
 * The error a reverse proxy in front of a node answers: nginx's HTML page,
 * or a line of plain text, not JSON (a gateway must turn either into
 * OpenAI's shape).
 */
static void send_proxy_error(struct sim_api *api, struct lx_http_req *req, int status, bool html)
{
    struct lx_buf *b = &api->scratch;
    const char *reason = lx_http_reason(status);

    lx_buf_reset(b);
    if (html) {
        lx_buf_appendf(b,
                       "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n"
                       "<center><h1>%d %s</h1></center>\r\n<hr><center>nginx</center>\r\n"
                       "</body>\r\n</html>\r\n",
                       status, reason, status, reason);
        lx_http_resp_send(req, status, "text/html", NULL, 0, b->data, b->len);
    } else {
        lx_buf_appendf(b, "%d %s\n", status, reason);
        lx_http_resp_send(req, status, "text/plain; charset=utf-8", NULL, 0, b->data, b->len);
    }
}

static void send_json(struct sim_api *api, struct lx_http_req *req)
{
    lx_http_resp_send(req, 200, "application/json", NULL, 0, api->scratch.data, api->scratch.len);
}

/* An x-sim status: 400..599, else 0 (ignored). */
static int fault_status(long long v)
{
    return v >= 400 && v <= 599 ? (int)v : 0;
}

/* Parses "k=v, k=v" into <f>; unknown keys and bad values are ignored. */
static void fault_parse(struct sim_fault *f, const struct lx_http_header *h)
{
    const char *p = h ? h->value : NULL, *end = h ? h->value + h->value_len : NULL;

    f->status = f->html_status = f->plain_status = 0;
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
                        f->status = fault_status(v);
                    else if (!strcmp(key, "html_error"))
                        f->html_status = fault_status(v);
                    else if (!strcmp(key, "plain_error"))
                        f->plain_status = fault_status(v);
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

static struct sim_call *call_new(struct sim_api *api, struct lx_http_req *req,
                                 const struct sim_kind *kind)
{
    struct sim_call *call = lx_calloc(1, sizeof(*call));

    call->api = api;
    call->conf = api->conf;
    call->req = req;
    call->kind = kind;
    call->created = api->created;
    call->state = SIM_CALL_NEW;
    lx_list_init(&call->delay_link);
    lx_list_push_back(&api->calls, &call->link);
    sim_prompt_init(&call->prompt, api->conf->block_size,
                    api->conf->max_model_len / api->conf->block_size + 1);
    req->data = call;
    return call;
}

static void call_free(struct sim_call *call)
{
    if (call->state == SIM_CALL_HUNG)
        call->api->hung--;
    lx_list_remove(&call->link);
    lx_list_remove(&call->delay_link);
    sim_prompt_deinit(&call->prompt);
    free(call->model);
    free(call->echo);
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
 * Counts an answer to a model endpoint; call right before the response
 * ends. When it is the --die-after'th, the node stops: nothing else is
 * answered, the engine freezes, and the process exits shortly after.
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

/* Answers an error in vLLM's shape and frees <call>. */
static void call_error(struct sim_call *call, int status, const char *msg)
{
    struct sim_api *api = call->api;
    struct lx_http_req *req = call->req;

    call_free(call);
    count_answer(api, status);
    send_error(api, req, status, msg);
}

/* Answers the JSON in the scratch buffer with 200 and frees <call>. */
static void call_answer(struct sim_call *call)
{
    struct sim_api *api = call->api;
    struct lx_http_req *req = call->req;

    call_free(call);
    count_answer(api, 200);
    send_json(api, req);
}

/* Closes the connection on purpose (x-sim drop_after or --drop-after) and
 * frees <call>. */
static void call_drop(struct sim_call *call)
{
    struct lx_http_req *req = call->req;

    lx_info("llmux-sim %s: %s: dropping the connection after %u tokens (drop_after %lld)",
            call->api->conf->name, call->id[0] ? call->id : req->path, call->seq.generated,
            (long long)call->fault.drop_after);
    call->api->dropped++;
    if (call->state == SIM_CALL_ENGINE)
        sim_engine_cancel(call->api->eng, &call->seq);
    call_free(call);
    lx_http_resp_abort(req);
}

static void call_hang(struct sim_call *call)
{
    call->state = SIM_CALL_HUNG;
    call->api->hung++;
}

static void on_abort(struct lx_http_req *req)
{
    struct sim_call *call = req->data;
    struct sim_api *api = call->api;

    api->aborted++;
    if (call->state == SIM_CALL_ENGINE)
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
        call->kind->token(b, call, false);
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
        call->kind->whole(b, call);
        call_answer(call);
        return;
    }
    call->kind->token(b, call, true);
    call->events++;
    if (drop_due(call, call->events)) {
        call_write(call, b);
        call_drop(call);
        return;
    }
    call->kind->close(b, call);
    call_write(call, b);
    call_free(call);
    count_answer(api, 200);
    lx_http_resp_end(req);
}

/* ---- model endpoints ----------------------------------------------------- */

/*
 * The id (a hash of the body, so the same body gets the same id), then for
 * a JSON endpoint the body: an object whose "model" is a string or absent,
 * and its "stream" and "stream_options". Sets *root (the caller's to free).
 */
static int call_load(struct sim_call *call, json_t **root, char *err, size_t errlen)
{
    const struct lx_buf *body = &call->req->body;
    const char *data = body->data ? body->data : "";
    json_error_t jerr;
    const json_t *v;

    if (call->kind->id_prefix)
        snprintf(call->id, sizeof(call->id), "%s%016llx%016llx", call->kind->id_prefix,
                 (unsigned long long)sim_hash(data, body->len, 0x5eed),
                 (unsigned long long)sim_hash(data, body->len, 0xc0ffee));
    call->model = lx_strdup(call->api->model_esc);
    if (call->kind->form)
        return 0;
    *root = json_loadb(data, body->len, 0, &jerr);
    if (!*root) {
        snprintf(err, errlen, "JSON decode error: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return LX_EINVAL;
    }
    if (!json_is_object(*root)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        return LX_EINVAL;
    }
    v = json_object_get(*root, "model");
    if (v && !json_is_null(v) && !json_is_string(v)) {
        snprintf(err, errlen, "model must be a string");
        return LX_EINVAL;
    }
    if (json_is_string(v))
        sim_call_set_model(call, json_string_value(v), json_string_length(v));
    call->stream = json_is_true(json_object_get(*root, "stream"));
    v = json_object_get(*root, "stream_options");
    call->include_usage = json_is_true(json_object_get(v, "include_usage"));
    return 0;
}

/* Answers an x-sim status, html_error or plain_error, if the request has
 * one; true when it did (and freed <call>). */
static bool call_fault_answered(struct sim_call *call)
{
    struct sim_api *api = call->api;
    struct lx_http_req *req = call->req;
    const struct sim_fault *f = &call->fault;
    char msg[64];

    if (f->status) {
        snprintf(msg, sizeof(msg), "simulated error (x-sim status=%d)", f->status);
        call_error(call, f->status, msg);
        return true;
    }
    if (f->html_status || f->plain_status) {
        bool html = f->html_status != 0;
        int status = html ? f->html_status : f->plain_status;

        call_free(call);
        count_answer(api, status);
        send_proxy_error(api, req, status, html);
        return true;
    }
    return false;
}

/* Starts a generating call's stream (its head, then the kind's opening
 * events) or not, and hands it to the engine. */
static void call_submit(struct sim_call *call)
{
    static const struct lx_http_header sse = {"Content-Type", 12,
                                              "text/event-stream; charset=utf-8", 32};
    struct lx_buf *b = &call->api->scratch;

    call->seq.ttft_extra_ms = call->fault.ttft_ms > 0 ? (double)call->fault.ttft_ms : 0;
    if (call->stream && lx_http_resp_start(call->req, 200, &sse, 1, -1) < 0)
        call->broken = true;
    if (call->fault.drop_after == 0) {
        call_drop(call);
        return;
    }
    if (call->stream && call->kind->open) {
        lx_buf_reset(b);
        call->kind->open(b, call);
        call_write(call, b);
    }
    call->state = SIM_CALL_ENGINE;
    sim_engine_submit(call->api->eng, &call->seq);
}

/* The part after any x-sim delay: faults, parsing, then the answer or the
 * engine. */
static void call_proceed(struct sim_call *call)
{
    struct sim_api *api = call->api;
    const struct sim_kind *kind = call->kind;
    json_t *root = NULL;
    char err[512];
    int rc;

    if (call_fault_answered(call))
        return;
    if (api->conf->error_rate > 0 && prng_next(api) < api->conf->error_rate) {
        call_error(call, 500, "simulated error (--error-rate)");
        return;
    }
    lx_buf_reset(&api->scratch);
    rc = call_load(call, &root, err, sizeof(err));
    if (!rc)
        rc = kind->serve ? kind->serve(call, root, &api->scratch, err, sizeof(err))
                         : kind->parse(call, root, err, sizeof(err));
    json_decref(root);
    if (rc) {
        call_error(call, 400, err);
        return;
    }
    if (!kind->serve) {
        call_submit(call);
        return;
    }
    if (call->fault.drop_after == 0) {
        call_drop(call);
        return;
    }
    if (kind->pooled)
        sim_engine_count_pooling(api->eng, call->seq.prompt_tokens);
    call_answer(call);
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
        call->state = SIM_CALL_NEW;
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

    call->state = SIM_CALL_DELAYED;
    call->due_ms = sim_now_ms() + (double)ms;
    /* Keep the list sorted: walk back from the tail (usually short). */
    for (pos = api->delayed.prev; pos != &api->delayed; pos = pos->prev)
        if (container_of(pos, struct sim_call, delay_link)->due_ms <= call->due_ms)
            break;
    lx_list_insert_after(pos, &call->delay_link);
    delay_arm(api);
}

/* A request to a model endpoint: held, refused, delayed or on its way. */
static void handle_call(struct sim_api *api, struct lx_http_req *req, const struct sim_kind *kind)
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

/* vLLM's model card for --model. */
static void append_model(struct sim_api *api, struct lx_buf *b)
{
    const char *m = api->model_esc;

    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,"
                   "\"owned_by\":\"vllm\",\"root\":\"%s\",\"parent\":null,\"max_model_len\":%u,"
                   "\"permission\":[{\"id\":\"modelperm-%016llx\",\"object\":\"model_permission\","
                   "\"created\":%lld,\"allow_create_engine\":false,\"allow_sampling\":true,"
                   "\"allow_logprobs\":true,\"allow_search_indices\":false,\"allow_view\":true,"
                   "\"allow_fine_tuning\":false,\"organization\":\"*\",\"group\":null,"
                   "\"is_blocking\":false}]}",
                   m, api->created, m, api->conf->max_model_len,
                   (unsigned long long)sim_hash(m, strlen(m), 1), api->created);
}

static void handle_models(struct sim_api *api, struct lx_http_req *req)
{
    struct lx_buf *b = &api->scratch;

    lx_buf_reset(b);
    SIM_APPEND_LIT(b, "{\"object\":\"list\",\"data\":[");
    append_model(api, b);
    SIM_APPEND_LIT(b, "]}");
    send_json(api, req);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* GET /v1/models/{id}: the model card when the (percent-decoded) id is
 * --model, else vLLM's 404. */
static void handle_model(struct sim_api *api, struct lx_http_req *req)
{
    const char *p = req->path + strlen(MODELS_PREFIX);
    size_t len = strcspn(p, "?"), n = 0;
    char *id = lx_malloc(len + 1), msg[160];

    for (size_t i = 0; i < len; i++) {
        int hi = p[i] == '%' && i + 2 < len ? hex_value(p[i + 1]) : -1;
        int lo = hi >= 0 ? hex_value(p[i + 2]) : -1;

        if (lo >= 0) {
            id[n++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            id[n++] = p[i];
        }
    }
    id[n] = '\0';
    if (n == strlen(api->conf->model) && memcmp(id, api->conf->model, n) == 0) {
        lx_buf_reset(&api->scratch);
        append_model(api, &api->scratch);
        send_json(api, req);
    } else {
        snprintf(msg, sizeof(msg), "The model `%.*s` does not exist.", (int)LX_MIN(n, 100), id);
        send_error(api, req, 404, msg);
    }
    free(id);
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
                   "\"generation_tokens_total\":%llu,\"endpoint_requests\":{",
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
    for (size_t i = 0; i < N_ENDPOINT_STATS; i++) {
        const char *path = i < ARRAY_SIZE(endpoints) ? endpoints[i].path
                           : i == STAT_MODELS        ? "/v1/models"
                                                     : "/v1/models/{id}";

        lx_buf_appendf(b, "%s\"%s\":%llu", i ? "," : "", path,
                       (unsigned long long)api->endpoint_requests[i]);
    }
    SIM_APPEND_LIT(b, "}}");
    send_json(api, req);
}

/* A GET endpoint under --hang or while dying: held until the client leaves. */
static void hang_other(struct sim_api *api, struct lx_http_req *req)
{
    struct sim_call *call = call_new(api, req, NULL);

    req->on_abort = on_abort;
    call_hang(call);
}

/* The row of the endpoint table for <req>'s path, or -1. */
static int endpoint_find(const struct lx_http_req *req)
{
    for (size_t i = 0; i < ARRAY_SIZE(endpoints); i++)
        if (path_is(req, endpoints[i].path))
            return (int)i;
    return -1;
}

static bool is_model_path(const struct lx_http_req *req)
{
    size_t n = strlen(MODELS_PREFIX);

    return strncmp(req->path, MODELS_PREFIX, n) == 0 && req->path[n] && req->path[n] != '?';
}

void sim_api_handle(struct lx_http_req *req, void *ctx)
{
    struct sim_api *api = ctx;
    bool get = req->method == HTTP_GET || req->method == HTTP_HEAD;
    bool post = req->method == HTTP_POST;
    bool stall = api->dying || api->conf->hang;
    int ep = endpoint_find(req);

    api->http_requests++;
    if (ep >= 0) {
        api->endpoint_requests[ep]++;
        if (post) {
            handle_call(api, req, endpoints[ep].kind);
            return;
        }
    } else if (path_is(req, "/sim/stats")) {
        if (get) {
            handle_stats(api, req);
            return;
        }
    } else if (path_is(req, "/health") || path_is(req, "/v1/models") || path_is(req, "/metrics") ||
               is_model_path(req)) {
        if (path_is(req, "/v1/models") || is_model_path(req))
            api->endpoint_requests[is_model_path(req) ? STAT_MODEL : STAT_MODELS]++;
        if (get && stall) {
            hang_other(api, req);
        } else if (get && path_is(req, "/health")) {
            if (in_slow_start(api))
                send_error(api, req, 503, "the model is still loading (--slow-start-ms)");
            else
                lx_http_resp_send(req, 200, NULL, NULL, 0, "", 0);
        } else if (get && path_is(req, "/v1/models")) {
            handle_models(api, req);
        } else if (get && is_model_path(req)) {
            handle_model(api, req);
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
        if (call->state == SIM_CALL_ENGINE)
            sim_engine_cancel(api->eng, &call->seq);
        call_free(call);
    }
    sim_engine_close(api->eng);
    api->eng = NULL;
    api->srv = NULL;
    uv_close((uv_handle_t *)&api->delay_timer, on_api_handle_closed);
    uv_close((uv_handle_t *)&api->die_timer, on_api_handle_closed);
}
