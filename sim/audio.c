/*
 * audio.c - POST /v1/audio/transcriptions and /v1/audio/translations: a
 * multipart/form-data request (multipart.h) with the audio in its "file"
 * part, answered as vLLM answers a Whisper model, streamed or not, on the
 * same engine as chat.
 *
 * The made-up model hears the file as 16 kHz 16-bit mono PCM: it lasts
 * ceil(bytes / 32000) s (at least 1), its prompt is one token per started
 * 4 KiB of audio plus the text of the form's "prompt" and of a Whisper
 * decoder prompt, and it says one word per started 1000 bytes (at most
 * 448, Whisper's longest answer; x-sim tokens= overrides), each a function
 * of the audio's bytes, the language and the task. Form fields: file
 * (required), model, language, prompt, response_format (json or text, both
 * answered in JSON as vLLM does), stream, stream_include_usage,
 * max_completion_tokens; others are ignored.
 *
 * Answers: {"text": ...} (a transcription adds "usage": {"type":
 * "duration", "seconds": S}); streamed, vLLM's chunks
 * {"id", "object": "transcription.chunk" (or "translation.chunk"),
 * "created", "model", "choices": [{"delta": {"content": WORD}}]}, the last
 * with "finish_reason" and "stop_reason", a usage chunk with
 * stream_include_usage, then data: [DONE].
 */
#include <string.h>

#include "call.h"
#include "../src/http/multipart.h"

#define AUDIO_BYTES_PER_SECOND 32000
#define AUDIO_BYTES_PER_TOKEN 4096
#define AUDIO_BYTES_PER_WORD 1000
#define AUDIO_MAX_WORDS 448

static bool is_transcription(const struct sim_call *call)
{
    return call->kind == &sim_kind_transcription;
}

static bool part_is(const struct lx_mp_part *part, const char *s)
{
    return part->len == strlen(s) && memcmp(part->data, s, part->len) == 0;
}

/* A form field that is a boolean ("true", "false", "1", "0"); false when absent. */
static int form_bool(const struct lx_mp_part *parts, size_t n, const char *name, bool *out,
                     char *err, size_t errlen)
{
    const struct lx_mp_part *f = lx_mp_find(parts, n, name);

    *out = false;
    if (!f)
        return 0;
    if (part_is(f, "true") || part_is(f, "True") || part_is(f, "1"))
        *out = true;
    else if (!part_is(f, "false") && !part_is(f, "False") && !part_is(f, "0")) {
        snprintf(err, errlen, "%s must be a boolean", name);
        return LX_EINVAL;
    }
    return 0;
}

/* The form's max_completion_tokens as a JSON integer (the caller's), NULL
 * when absent; LX_EINVAL when not a number. */
static int form_max_tokens(const struct lx_mp_part *parts, size_t n, json_t **out, char *err,
                           size_t errlen)
{
    const struct lx_mp_part *f = lx_mp_find(parts, n, "max_completion_tokens");
    char digits[21];
    long long v = 0;

    *out = NULL;
    if (!f)
        return 0;
    if (f->len == 0 || f->len >= sizeof(digits))
        goto bad;
    for (size_t i = 0; i < f->len; i++) {
        if (f->data[i] < '0' || f->data[i] > '9')
            goto bad;
        digits[i] = f->data[i];
    }
    digits[f->len] = '\0';
    v = strtoll(digits, NULL, 10);
    *out = json_integer(v);
    return 0;
bad:
    snprintf(err, errlen, "max_completion_tokens must be an integer");
    return LX_EINVAL;
}

/* The prompt: the audio (one token per started 4 KiB, each a hash of its
 * bytes, which the context takes in too), the form's prompt text, then the
 * decoder prompt with the language and the task. */
static void push_audio(struct sim_call *call, const struct lx_mp_part *file,
                       const struct lx_mp_part *lang, const struct lx_mp_part *text)
{
    struct sim_prompt *p = &call->prompt;
    static const char start[] = "<|startoftranscript|><|";
    const char *task = is_transcription(call) ? "|><|transcribe|><|notimestamps|>"
                                              : "|><|translate|><|notimestamps|>";

    for (size_t at = 0; at < file->len; at += AUDIO_BYTES_PER_TOKEN) {
        uint64_t h =
            sim_hash(file->data + at, LX_MIN(file->len - at, AUDIO_BYTES_PER_TOKEN), 0xa0d10);
        unsigned char le[8];

        for (unsigned i = 0; i < 8; i++)
            le[i] = (unsigned char)(h >> (8 * i));
        sim_prompt_push_token(p, h);
        sim_ctx_feed(&p->ctx, le, sizeof(le));
    }
    if (text)
        sim_prompt_push_text(p, text->data, text->len);
    sim_prompt_push_text(p, start, sizeof(start) - 1);
    if (lang)
        sim_prompt_push_text(p, lang->data, lang->len);
    else
        sim_prompt_push_text(p, "en", 2);
    sim_prompt_push_text(p, task, strlen(task));
}

static int audio_parse(struct sim_call *call, const json_t *root, char *err, size_t errlen)
{
    const struct lx_http_header *ct = lx_http_req_header(call->req, "Content-Type");
    const struct lx_buf *body = &call->req->body;
    struct lx_mp_part parts[LX_MP_MAX_PARTS];
    const struct lx_mp_part *file, *f;
    const char *boundary = NULL, *why = "Content-Type must be multipart/form-data";
    size_t blen = 0, n;
    json_t *mt = NULL;
    int rc;

    if (!ct || lx_mp_boundary(ct->value, ct->value_len, &boundary, &blen, &why)) {
        snprintf(err, errlen, "%s", why);
        return LX_EINVAL;
    }
    rc = lx_mp_parse(body->data ? body->data : "", body->len, boundary, blen, parts, LX_MP_MAX_PARTS,
                      &why);
    if (rc < 0) {
        snprintf(err, errlen, "%s", why);
        return LX_EINVAL;
    }
    n = (size_t)rc;
    file = lx_mp_find(parts, n, "file");
    if (!file) {
        snprintf(err, errlen, "file: Field required (the audio file, a form part named file)");
        return LX_EINVAL;
    }
    f = lx_mp_find(parts, n, "model");
    if (f)
        sim_call_set_model(call, f->data, f->len);
    f = lx_mp_find(parts, n, "response_format");
    if (f && !part_is(f, "json") && !part_is(f, "text")) {
        snprintf(err, errlen, "Currently only support response_format `text` or `json`");
        return LX_EINVAL;
    }
    if (form_bool(parts, n, "stream", &call->stream, err, errlen) ||
        form_bool(parts, n, "stream_include_usage", &call->include_usage, err, errlen))
        return LX_EINVAL;
    if (call->include_usage && !call->stream) {
        snprintf(err, errlen, "Stream options can only be defined when `stream=True`.");
        return LX_EINVAL;
    }
    if (form_max_tokens(parts, n, &mt, err, errlen))
        return LX_EINVAL;
    push_audio(call, file, lx_mp_find(parts, n, "language"), lx_mp_find(parts, n, "prompt"));
    call->natural = (file->len + AUDIO_BYTES_PER_WORD - 1) / AUDIO_BYTES_PER_WORD;
    call->natural = LX_MIN(LX_MAX(call->natural, 1), AUDIO_MAX_WORDS);
    if (is_transcription(call)) {
        char usage[80];

        snprintf(
            usage, sizeof(usage), ",\"usage\":{\"type\":\"duration\",\"seconds\":%zu}",
            LX_MAX((file->len + AUDIO_BYTES_PER_SECOND - 1) / AUDIO_BYTES_PER_SECOND, (size_t)1));
        call->echo = lx_strdup(usage);
    }
    rc = sim_call_plan(call, mt, err, errlen);
    json_decref(mt);
    return rc;
}

/* data: {"id":...,"object":"transcription.chunk","created":...,"model":...,"choices": */
static void chunk_begin(struct lx_buf *b, const struct sim_call *call)
{
    lx_buf_appendf(
        b, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":\"%s\",\"choices\":",
        call->id, is_transcription(call) ? "transcription.chunk" : "translation.chunk",
        call->created, call->model);
}

static void token_event(struct lx_buf *b, struct sim_call *call, bool last)
{
    chunk_begin(b, call);
    SIM_APPEND_LIT(b, "[{\"delta\":{\"content\":\"");
    sim_call_append_word(b, call);
    if (last)
        lx_buf_appendf(b, "\"},\"finish_reason\":\"%s\",\"stop_reason\":null}]}\n\n",
                       sim_call_finish_reason(call));
    else
        SIM_APPEND_LIT(b, "\"}}]}\n\n");
}

static void stream_close(struct lx_buf *b, struct sim_call *call)
{
    unsigned p = call->seq.prompt_tokens, c = call->seq.generated;

    if (call->include_usage) {
        chunk_begin(b, call);
        lx_buf_appendf(b,
                       "[],\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u,"
                       "\"completion_tokens\":%u}}\n\n",
                       p, p + c, c);
    }
    SIM_APPEND_LIT(b, "data: [DONE]\n\n");
}

/* {"text": ...} and, for a transcription, its usage (call->echo). */
static void whole_body(struct lx_buf *b, struct sim_call *call)
{
    SIM_APPEND_LIT(b, "{\"text\":\"");
    sim_call_append_said(b, call);
    SIM_APPEND_LIT(b, "\"");
    if (call->echo)
        lx_buf_append_str(b, call->echo);
    SIM_APPEND_LIT(b, "}");
}

/* The two differ in their id and, through is_transcription(), in the task
 * the model hears and in the usage of a whole answer. */
#define AUDIO_KIND(prefix)                                                                         \
    {                                                                                              \
        .id_prefix = (prefix), .form = true, .parse = audio_parse, .token = token_event,           \
        .close = stream_close, .whole = whole_body,                                                \
    }

const struct sim_kind sim_kind_transcription = AUDIO_KIND("trsc-");
const struct sim_kind sim_kind_translation = AUDIO_KIND("trsl-");
