/*
 * pooling.c - the endpoints answered at once, without the engine, in vLLM's
 * shapes: POST /v1/embeddings, /pooling, /classify, /v1/rerank (also
 * /rerank, /v2/rerank), /v1/score (also /score), /tokenize, /detokenize.
 *
 * The made-up pooling model: an input (a text, an array of token ids, or a
 * chat's messages) is tokenized and rendered as for completions or chat
 * (prompt.h), and its vector is SIM_EMBED_DIM floats drawn from the digest of
 * the rendered context, scaled to length 1 (vLLM normalizes embeddings):
 * equal inputs, equal vectors. A pair's score, a document's relevance, is
 * (1 + cos) / 2 of their vectors, in [0, 1] (1 for equal texts); a
 * classification is two classes, LABEL_0 and LABEL_1 (a Hugging Face model's
 * default labels), with probabilities drawn from the digest. Costs: one pass
 * over the input, O(1) per vector.
 *
 * Tokens are the sim's (4 bytes a token); /tokenize shows their ids (a text
 * piece's id is its bytes read as a little-endian number, so /detokenize
 * gives the text back exactly, NUL bytes aside).
 */
#include <math.h>
#include <string.h>

#include "call.h"

#define SIM_EMBED_DIM 8
#define MAX_INPUTS 65536 /* inputs, documents or pairs in one request */

/* One pooled input: its digest (what its vector is made from) and tokens. */
struct pooled {
    uint64_t digest;
    uint64_t tokens;
};

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Appends <len> bytes as standard base64, padded. */
static void append_base64(struct lx_buf *b, const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        char out[4];

        if (i + 1 < len)
            v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < len)
            v |= s[i + 2];
        out[0] = b64[v >> 18];
        out[1] = b64[(v >> 12) & 63];
        out[2] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        out[3] = i + 2 < len ? b64[v & 63] : '=';
        lx_buf_append(b, out, 4);
    }
}

/* The unit vector of <digest>. */
static void make_vector(uint64_t digest, float v[SIM_EMBED_DIM])
{
    double x[SIM_EMBED_DIM], norm = 0;

    for (unsigned i = 0; i < SIM_EMBED_DIM; i++) {
        x[i] = (double)(sim_mix64(digest + 0x9e3779b97f4a7c15ULL * (i + 1)) >> 11) * 0x1.0p-53;
        x[i] = 2 * x[i] - 1;
        norm += x[i] * x[i];
    }
    norm = norm > 0 ? sqrt(norm) : 1;
    for (unsigned i = 0; i < SIM_EMBED_DIM; i++)
        v[i] = (float)(x[i] / norm);
}

/* The vector as a JSON array of floats, or a base64 string of its
 * little-endian float32s (vLLM's encoding_format "base64"). */
static void append_vector(struct lx_buf *b, uint64_t digest, bool base64)
{
    float v[SIM_EMBED_DIM];

    make_vector(digest, v);
    if (base64) {
        unsigned char raw[4 * SIM_EMBED_DIM];

        for (unsigned i = 0; i < SIM_EMBED_DIM; i++) {
            uint32_t u;

            memcpy(&u, &v[i], 4);
            for (unsigned k = 0; k < 4; k++)
                raw[4 * i + k] = (unsigned char)(u >> (8 * k));
        }
        SIM_APPEND_LIT(b, "\"");
        append_base64(b, raw, sizeof(raw));
        SIM_APPEND_LIT(b, "\"");
        return;
    }
    for (unsigned i = 0; i < SIM_EMBED_DIM; i++)
        lx_buf_appendf(b, "%c%.9g", i ? ',' : '[', (double)v[i]);
    SIM_APPEND_LIT(b, "]");
}

/* (1 + cos) / 2 of two inputs' vectors. */
static double score_of(uint64_t a, uint64_t b)
{
    float va[SIM_EMBED_DIM], vb[SIM_EMBED_DIM];
    double dot = 0;

    make_vector(a, va);
    make_vector(b, vb);
    for (unsigned i = 0; i < SIM_EMBED_DIM; i++)
        dot += (double)va[i] * vb[i];
    return LX_MIN(LX_MAX((1 + dot) / 2, 0.0), 1.0);
}

/* vLLM's "usage" of a pooling answer. */
static void append_usage(struct lx_buf *b, uint64_t tokens)
{
    lx_buf_appendf(b,
                   "\"usage\":{\"prompt_tokens\":%llu,\"total_tokens\":%llu,"
                   "\"completion_tokens\":0,\"prompt_tokens_details\":null}",
                   (unsigned long long)tokens, (unsigned long long)tokens);
}

static bool is_token_array(const json_t *v)
{
    size_t i;
    const json_t *e;

    if (!json_is_array(v) || json_array_size(v) == 0)
        return false;
    json_array_foreach(v, i, e)
    {
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return false;
    }
    return true;
}

/*
 * Reads one input, a text or an array of token ids (or, with <chat>, a
 * chat's messages), into <out>. <what> names it in errors ("input[2]").
 */
static int read_one(const struct sim_call *call, const json_t *v, const json_t *chat,
                    const char *what, struct pooled *out, char *err, size_t errlen)
{
    struct sim_prompt p;
    enum sim_chat_end end;
    int rc = 0;

    sim_prompt_init(&p, call->conf->block_size, 0);
    if (chat) {
        rc = sim_chat_end(chat, false, &end, err, errlen);
        if (!rc)
            rc = sim_prompt_chat(&p, json_object_get(chat, "messages"), end, err, errlen);
    } else if (json_is_string(v) || is_token_array(v)) {
        rc = sim_prompt_completion(&p, v, false, err, errlen);
        if (rc)
            snprintf(err, errlen, "%s must not be empty", what);
    } else {
        snprintf(err, errlen, "%s must be a string or an array of token ids", what);
        rc = LX_EINVAL;
    }
    if (!rc && p.tokens > call->conf->max_model_len) {
        snprintf(err, errlen,
                 "This model's maximum context length is %u tokens. However, you requested "
                 "%llu tokens in the input for embedding generation. Please reduce the length "
                 "of the input.",
                 call->conf->max_model_len, (unsigned long long)p.tokens);
        rc = LX_EINVAL;
    }
    out->digest = sim_ctx_digest(&p.ctx);
    out->tokens = p.tokens;
    sim_prompt_deinit(&p);
    return rc;
}

/* The number of inputs in <v>: a list of texts or token arrays, or one. */
static size_t count_inputs(const json_t *v)
{
    return json_is_array(v) && !is_token_array(v) ? json_array_size(v) : 1;
}

/*
 * Reads the inputs of <field> (a string, an array of token ids, or an
 * array of those), or with <chat_ok> a chat's "messages" when <field> is
 * absent. Returns 0 with *out (the caller frees it) and *n, or LX_EINVAL.
 */
static int read_inputs(const struct sim_call *call, const json_t *root, const char *field,
                       bool chat_ok, struct pooled **out, size_t *n, char *err, size_t errlen)
{
    const json_t *v = json_object_get(root, field);
    const json_t *chat = chat_ok && !v && json_object_get(root, "messages") ? root : NULL;
    char what[48];

    *out = NULL;
    *n = chat ? 1 : count_inputs(v);
    if (!chat && (!v || (json_is_array(v) && json_array_size(v) == 0))) {
        snprintf(err, errlen, "%s must be a string, an array of strings or token ids, %s", field,
                 chat_ok ? "or the request must have messages" : "not empty");
        return LX_EINVAL;
    }
    if (*n > MAX_INPUTS) {
        snprintf(err, errlen, "%s has %zu items; llmux-sim takes %d at most", field, *n,
                 MAX_INPUTS);
        return LX_EINVAL;
    }
    *out = lx_malloc(*n * sizeof(**out));
    for (size_t i = 0; i < *n; i++) {
        const json_t *e = json_is_array(v) && !is_token_array(v) ? json_array_get(v, i) : v;

        if (e == v)
            snprintf(what, sizeof(what), "%s", field);
        else
            snprintf(what, sizeof(what), "%s[%zu]", field, i);
        if (read_one(call, e, chat, what, &(*out)[i], err, errlen)) {
            free(*out);
            *out = NULL;
            return LX_EINVAL;
        }
    }
    return 0;
}

static uint64_t sum_tokens(const struct pooled *in, size_t n)
{
    uint64_t t = 0;

    for (size_t i = 0; i < n; i++)
        t += in[i].tokens;
    return t;
}

/* {"id","object":"list","created","model","data":[ (left open) */
static void list_begin(struct lx_buf *b, const struct sim_call *call)
{
    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"object\":\"list\",\"created\":%lld,\"model\":\"%s\","
                   "\"data\":[",
                   call->id, call->created, call->model);
}

/* ], usage } */
static void list_end(struct lx_buf *b, struct sim_call *call, uint64_t tokens)
{
    SIM_APPEND_LIT(b, "],");
    append_usage(b, tokens);
    SIM_APPEND_LIT(b, "}");
    call->seq.prompt_tokens = (unsigned)LX_MIN(tokens, UINT32_MAX);
}

/* Embeddings, pooling and classification: one item per input. */
static int serve_inputs(struct sim_call *call, const json_t *root, struct lx_buf *b, char *err,
                        size_t errlen)
{
    const json_t *fmt = json_object_get(root, "encoding_format");
    bool base64 = false;
    struct pooled *in;
    size_t n;

    if (fmt && !json_is_null(fmt)) {
        base64 = json_is_string(fmt) && strcmp(json_string_value(fmt), "base64") == 0;
        if (!base64 && !(json_is_string(fmt) && strcmp(json_string_value(fmt), "float") == 0)) {
            snprintf(err, errlen, "encoding_format must be \"float\" or \"base64\"");
            return LX_EINVAL;
        }
    }
    if (read_inputs(call, root, "input", true, &in, &n, err, errlen))
        return LX_EINVAL;
    list_begin(b, call);
    for (size_t i = 0; i < n; i++) {
        lx_buf_appendf(b, "%s{\"index\":%zu,", i ? "," : "", i);
        if (call->kind == &sim_kind_classify) {
            double p1 = (double)(sim_mix64(in[i].digest ^ 0xc1a55) >> 11) * 0x1.0p-53;

            lx_buf_appendf(b, "\"label\":\"LABEL_%d\",\"probs\":[%.9g,%.9g],\"num_classes\":2}",
                           p1 > 0.5, 1 - p1, p1);
            continue;
        }
        if (call->kind == &sim_kind_embeddings)
            SIM_APPEND_LIT(b, "\"object\":\"embedding\",\"embedding\":");
        else
            SIM_APPEND_LIT(b, "\"object\":\"pooling\",\"data\":");
        append_vector(b, in[i].digest, base64);
        SIM_APPEND_LIT(b, "}");
    }
    list_end(b, call, sum_tokens(in, n));
    free(in);
    return 0;
}

/* A document or text to score: a string, or an object with a string
 * "text" (the Cohere and Jina shape); NULL otherwise. */
static const json_t *text_of(const json_t *v)
{
    return json_is_object(v) ? json_object_get(v, "text") : v;
}

/* One string of a pair; <what> names it in errors. */
static int read_text(const struct sim_call *call, const json_t *v, const char *what,
                     struct pooled *out, char *err, size_t errlen)
{
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s must be a string", what);
        return LX_EINVAL;
    }
    return read_one(call, v, NULL, what, out, err, errlen);
}

/* A relevance, as sorted for rerank. */
struct ranked {
    size_t index;
    double score;
};

static int by_score(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;

    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Rerank (vLLM's, Jina's and Cohere's shape): the documents by relevance
 * to the query, the top_n first (0: all). */
static int serve_rerank(struct sim_call *call, const json_t *root, struct lx_buf *b, char *err,
                        size_t errlen)
{
    const json_t *docs = json_object_get(root, "documents");
    const json_t *top = json_object_get(root, "top_n");
    struct pooled q, d;
    struct ranked *r;
    size_t n = json_array_size(docs), keep;
    uint64_t tokens = 0;
    char what[40];

    if (read_text(call, json_object_get(root, "query"), "query", &q, err, errlen))
        return LX_EINVAL;
    if (!json_is_array(docs) || n == 0 || n > MAX_INPUTS) {
        snprintf(err, errlen, "documents must be a non-empty array of at most %d strings",
                 MAX_INPUTS);
        return LX_EINVAL;
    }
    if (top && !json_is_null(top) && (!json_is_integer(top) || json_integer_value(top) < 0)) {
        snprintf(err, errlen, "top_n must be a non-negative integer");
        return LX_EINVAL;
    }
    keep = json_is_integer(top) && json_integer_value(top) > 0
               ? (size_t)LX_MIN((uint64_t)json_integer_value(top), (uint64_t)n)
               : n;
    r = lx_malloc(n * sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        snprintf(what, sizeof(what), "documents[%zu]", i);
        if (read_text(call, text_of(json_array_get(docs, i)), what, &d, err, errlen)) {
            free(r);
            return LX_EINVAL;
        }
        r[i] = (struct ranked){i, score_of(q.digest, d.digest)};
        tokens += q.tokens + d.tokens;
    }
    qsort(r, n, sizeof(*r), by_score);
    lx_buf_appendf(b,
                   "{\"id\":\"%s\",\"model\":\"%s\",\"usage\":{\"prompt_tokens\":%llu,"
                   "\"total_tokens\":%llu},\"results\":[",
                   call->id, call->model, (unsigned long long)tokens, (unsigned long long)tokens);
    for (size_t i = 0; i < keep; i++) {
        const json_t *t = text_of(json_array_get(docs, r[i].index));

        lx_buf_appendf(b, "%s{\"index\":%zu,\"document\":{\"text\":\"", i ? "," : "", r[i].index);
        lx_json_escape(b, json_string_value(t), json_string_length(t));
        lx_buf_appendf(b, "\"},\"relevance_score\":%.9g}", r[i].score);
    }
    SIM_APPEND_LIT(b, "]}");
    call->seq.prompt_tokens = (unsigned)LX_MIN(tokens, UINT32_MAX);
    free(r);
    return 0;
}

/* Score: text_1 against each text_2 (1:1, 1:N or N:N). */
static int serve_score(struct sim_call *call, const json_t *root, struct lx_buf *b, char *err,
                       size_t errlen)
{
    const json_t *t1 = json_object_get(root, "text_1"), *t2 = json_object_get(root, "text_2");
    size_t n1 = json_is_array(t1) ? json_array_size(t1) : 1;
    size_t n2 = json_is_array(t2) ? json_array_size(t2) : 1;
    uint64_t tokens = 0;
    char what[40];

    if (!t1 || !t2 || n1 == 0 || n2 == 0) {
        snprintf(err, errlen, "text_1 and text_2 must be strings or non-empty lists of strings");
        return LX_EINVAL;
    }
    if ((n1 != 1 && n1 != n2) || n2 > MAX_INPUTS) {
        snprintf(err, errlen, "Input lengths must be either 1:1, 1:N or N:N");
        return LX_EINVAL;
    }
    list_begin(b, call);
    for (size_t i = 0; i < n2; i++) {
        const json_t *a = json_is_array(t1) ? json_array_get(t1, n1 == 1 ? 0 : i) : t1;
        const json_t *c = json_is_array(t2) ? json_array_get(t2, i) : t2;
        struct pooled pa, pc;

        snprintf(what, sizeof(what), "text_1[%zu]", n1 == 1 ? 0 : i);
        if (read_text(call, a, json_is_array(t1) ? what : "text_1", &pa, err, errlen))
            return LX_EINVAL;
        snprintf(what, sizeof(what), "text_2[%zu]", i);
        if (read_text(call, c, json_is_array(t2) ? what : "text_2", &pc, err, errlen))
            return LX_EINVAL;
        tokens += pa.tokens + pc.tokens;
        lx_buf_appendf(b, "%s{\"index\":%zu,\"object\":\"score\",\"score\":%.9g}", i ? "," : "", i,
                       score_of(pa.digest, pc.digest));
    }
    list_end(b, call, tokens);
    return 0;
}

/* {"count","max_model_len","tokens","token_strs":null} of a prompt or a
 * chat (its template tokens have special ids). */
static int serve_tokenize(struct sim_call *call, const json_t *root, struct lx_buf *b, char *err,
                          size_t errlen)
{
    const json_t *prompt = json_object_get(root, "prompt");
    const json_t *msgs = json_object_get(root, "messages");
    struct sim_prompt p;
    struct lx_buf ids;
    enum sim_chat_end end;
    int rc;

    if (!msgs && !json_is_string(prompt)) {
        snprintf(err, errlen, "the request needs a string prompt or messages");
        return LX_EINVAL;
    }
    lx_buf_init(&ids, 0);
    sim_prompt_init(&p, call->conf->block_size, 0);
    p.ids = &ids;
    if (msgs) {
        rc = sim_chat_end(root, true, &end, err, errlen);
        if (!rc)
            rc = sim_prompt_chat(&p, msgs, end, err, errlen);
    } else {
        sim_prompt_push_text(&p, json_string_value(prompt), json_string_length(prompt));
        rc = 0;
    }
    if (!rc) {
        lx_buf_appendf(b, "{\"count\":%llu,\"max_model_len\":%u,\"tokens\":[",
                       (unsigned long long)p.tokens, call->conf->max_model_len);
        /* Each id is followed by a comma: all but the last one's. */
        if (ids.len)
            lx_buf_append(b, ids.data, ids.len - 1);
        SIM_APPEND_LIT(b, "],\"token_strs\":null}");
    }
    sim_prompt_deinit(&p);
    lx_buf_deinit(&ids);
    return rc;
}

/* {"prompt"}: the text of the ids, the inverse of /tokenize. */
static int serve_detokenize(struct sim_call *call, const json_t *root, struct lx_buf *b, char *err,
                            size_t errlen)
{
    const json_t *tokens = json_object_get(root, "tokens"), *t;
    struct lx_buf text;
    size_t i;

    if (!json_is_array(tokens)) {
        snprintf(err, errlen, "tokens must be an array of token ids");
        return LX_EINVAL;
    }
    lx_buf_init(&text, 0);
    json_array_foreach(tokens, i, t)
    {
        char piece[4];

        if (!json_is_integer(t) || json_integer_value(t) < 0) {
            snprintf(err, errlen, "tokens[%zu] must be a non-negative integer", i);
            lx_buf_deinit(&text);
            return LX_EINVAL;
        }
        lx_buf_append(&text, piece, sim_token_bytes((uint64_t)json_integer_value(t), piece));
    }
    SIM_APPEND_LIT(b, "{\"prompt\":\"");
    sim_json_escape_utf8(b, text.data ? text.data : "", text.len);
    SIM_APPEND_LIT(b, "\"}");
    lx_buf_deinit(&text);
    return 0;
}

const struct sim_kind sim_kind_embeddings = {
    .id_prefix = "embd-", .pooled = true, .serve = serve_inputs};
const struct sim_kind sim_kind_pooling = {
    .id_prefix = "pool-", .pooled = true, .serve = serve_inputs};
const struct sim_kind sim_kind_classify = {
    .id_prefix = "classify-", .pooled = true, .serve = serve_inputs};
const struct sim_kind sim_kind_rerank = {
    .id_prefix = "rerank-", .pooled = true, .serve = serve_rerank};
const struct sim_kind sim_kind_score = {
    .id_prefix = "score-", .pooled = true, .serve = serve_score};
const struct sim_kind sim_kind_tokenize = {.serve = serve_tokenize};
const struct sim_kind sim_kind_detokenize = {.serve = serve_detokenize};
