/*
 * call.h - inside llmux-sim's API: one request (struct sim_call) and the
 * kinds of endpoint that answer it (struct sim_kind).
 *
 * api.c owns calls: it receives a request, applies the faults (x-sim,
 * --error-rate, --hang, ...), reads the JSON body and its "model", and then
 * hands the call to its endpoint's kind, one ops table per kind:
 *   serve   an answer made at once (embeddings, rerank, score, classify,
 *           pooling, tokenize, detokenize): the whole JSON body;
 *   parse   a generating request (chat, completions, responses, audio): the
 *           prompt, the completion's length (sim_call_plan), stream or not;
 *           the engine then makes the tokens, and api.c writes, for a stream,
 *           open() after the head, token() at each token and close() after
 *           the last, or whole() once, when the last token is out.
 * The kinds only build bytes into the buffer they are given; api.c sends
 * them, counts them, drops and aborts. Files: generate.c (chat,
 * completions, the shared generation helpers), responses.c, audio.c,
 * pooling.c.
 *
 * Threading: the sim's one loop.
 */
#ifndef SIM_CALL_H
#define SIM_CALL_H

#include <jansson.h>

#include "../src/http/server.h"
#include "engine.h"
#include "prompt.h"

#define SIM_APPEND_LIT(b, lit) lx_buf_append((b), (lit), sizeof(lit) - 1)

/* The x-sim header: -1 means "not given". */
struct sim_fault {
    int status;         /* answer this status at once with vLLM's error JSON; 0 = no */
    int html_status;    /* ... with a reverse proxy's HTML page; 0 = no */
    int plain_status;   /* ... with a reverse proxy's plain text; 0 = no */
    int64_t ttft_ms;    /* extra delay before the first token */
    int64_t tokens;     /* natural completion length */
    int64_t drop_after; /* abort after this many tokens */
    int64_t delay_ms;   /* delay before the response head */
    bool hang;          /* never answer */
};

enum sim_call_state { SIM_CALL_NEW, SIM_CALL_HUNG, SIM_CALL_DELAYED, SIM_CALL_ENGINE };

struct sim_kind;
struct sim_api;

struct sim_call {
    struct sim_seq seq; /* the engine's view */
    struct sim_api *api;
    const struct sim_conf *conf; /* the api's, borrowed */
    const struct sim_kind *kind; /* NULL for a GET held by --hang */
    struct lx_http_req *req;     /* borrowed until the response ends or on_abort */
    struct lx_list link;         /* api->calls */
    struct lx_list delay_link;   /* api->delayed while DELAYED */
    enum sim_call_state state;
    struct sim_fault fault;
    double due_ms;            /* DELAYED: when to go on */
    long long created;        /* the api's start time: every response's "created" */
    bool stream;              /* answered as SSE */
    bool include_usage;       /* stream_options.include_usage (or the audio form's) */
    bool broken;              /* a write failed; on_abort follows */
    bool eos;                 /* the answer was already whole: its one token is the
                                 end of sequence, without text */
    unsigned events;          /* token events written (streaming) */
    unsigned sse_seq;         /* Responses: sequence_number of the next event */
    uint64_t natural;         /* the answer's length the request implies (audio: its
                                 duration); 0 = none (see sim_call_plan) */
    char id[48];              /* "<kind's prefix><32 hex>" from a hash of the body */
    char *model;              /* the request's model, JSON-escaped, owned */
    char *echo;               /* a kind's own JSON to repeat in its answers, owned */
    struct sim_prompt prompt; /* the prompt's tokens, then the completion's */
    struct sim_ctx ctx;       /* the model's context before the next word it says */
    struct sim_ctx start;     /* the context before the first word (to say it again) */
};

/* An endpoint's behaviour; one const instance per kind, see the top. */
struct sim_kind {
    const char *id_prefix; /* e.g. "chatcmpl-"; NULL: no id */
    bool form;             /* the body is multipart/form-data, not JSON (<root> is NULL) */
    bool pooled;           /* counted in vLLM's metrics as a finished request */
    /* Answers at once: the 200 body into <out>; 0, or LX_EINVAL with a
     * message for the client in <err>. Sets call->seq.prompt_tokens. */
    int (*serve)(struct sim_call *call, const json_t *root, struct lx_buf *out, char *err,
                 size_t errlen);
    /* Reads a generating request (<root> borrowed): 0, or LX_EINVAL with
     * <err>. On success the call is planned (sim_call_plan). */
    int (*parse)(struct sim_call *call, const json_t *root, char *err, size_t errlen);
    void (*open)(struct lx_buf *b, struct sim_call *call); /* after the head; may be NULL */
    /* One token's event; <last> is the final token (the finish reason). */
    void (*token)(struct lx_buf *b, struct sim_call *call, bool last);
    void (*close)(struct lx_buf *b, struct sim_call *call); /* after the last token's event */
    void (*whole)(struct lx_buf *b, struct sim_call *call); /* the non-streamed answer */
};

extern const struct sim_kind sim_kind_chat, sim_kind_completion, sim_kind_responses;
extern const struct sim_kind sim_kind_transcription, sim_kind_translation;
extern const struct sim_kind sim_kind_embeddings, sim_kind_pooling, sim_kind_classify;
extern const struct sim_kind sim_kind_rerank, sim_kind_score;
extern const struct sim_kind sim_kind_tokenize, sim_kind_detokenize;

/* ---- api.c --------------------------------------------------------------- */

/* Sets call->model to <s> (<len> bytes, any bytes: invalid UTF-8 is
 * replaced), JSON-escaped. */
void sim_call_set_model(struct sim_call *call, const char *s, size_t len);
/* Appends <s> JSON-escaped (without quotes), every invalid UTF-8 sequence
 * replaced by U+FFFD, so that the JSON is valid whatever the bytes. */
int sim_json_escape_utf8(struct lx_buf *b, const char *s, size_t len);

/* ---- generate.c ---------------------------------------------------------- */

/*
 * The completion's length and finish reason (docs/SIM.md, "Completion
 * length") from <max_tokens> (borrowed; NULL when the request gives none),
 * x-sim tokens= and call->natural; then the prompt's blocks are extended with the whole
 * completion for the engine. Call after the prompt is in call->prompt.
 * Returns 0, or LX_EINVAL with vLLM's message (a context-length error) in
 * <err>.
 */
int sim_call_plan(struct sim_call *call, const json_t *max_tokens, char *err, size_t errlen);
/* Appends the next word <call> says (nothing for the end-of-sequence token)
 * and moves its context on: words come out in order, one per token. */
void sim_call_append_word(struct lx_buf *b, struct sim_call *call);
/* The text of the tokens generated so far, again (call->ctx unchanged). */
void sim_call_append_said(struct lx_buf *b, const struct sim_call *call);
/* "stop" or "length". */
const char *sim_call_finish_reason(const struct sim_call *call);
/* A boolean request field: <def> when absent or null; LX_EINVAL with <err>
 * when not a boolean. */
int sim_json_bool(const json_t *root, const char *name, bool def, bool *out, char *err,
                  size_t errlen);
/* How a chat's rendering ends, from add_generation_prompt (<add_default>
 * when absent: true for generation and /tokenize, false for embeddings, as
 * vLLM's) and continue_final_message (vLLM's refusal of both in <err>). */
int sim_chat_end(const json_t *root, bool add_default, enum sim_chat_end *end, char *err,
                 size_t errlen);

#endif /* SIM_CALL_H */
