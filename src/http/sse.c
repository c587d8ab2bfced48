/*
 * sse.c - SSE event boundaries, counting and usage; see sse.h.
 *
 * An event ends at a blank line: two newlines in a row, where "\r\n" counts
 * as one newline (the spec allows \n, \r\n and \r; vLLM and OpenAI send \n).
 */
#include "sse.h"

#include <string.h>

void lx_sse_init(struct lx_sse *s, bool drop_usage)
{
    memset(s, 0, sizeof(*s));
    s->drop_usage = drop_usage;
    lx_buf_init(&s->partial, LX_SSE_EVENT_MAX);
    s->usage.prompt_tokens = -1;
    s->usage.completion_tokens = -1;
}

void lx_sse_deinit(struct lx_sse *s)
{
    lx_buf_deinit(&s->partial);
}

static const char *find(const char *p, size_t len, const char *needle)
{
    return memmem(p, len, needle, strlen(needle));
}

/* Parses a JSON integer after `"key":` at or after <p>; -1 if none. */
static int64_t number_after(const char *p, const char *end)
{
    int64_t v = 0;
    bool any = false;

    while (p < end && (*p == ' ' || *p == ':' || *p == '\t'))
        p++;
    while (p < end && *p >= '0' && *p <= '9' && v < (INT64_MAX / 10 - 10)) {
        v = v * 10 + (*p++ - '0');
        any = true;
    }
    return any ? v : -1;
}

/* The number after the first <key> (quoted) in [at, end), else after the
 * first <alt> (may be NULL); -1 when neither has one. */
static int64_t figure(const char *at, const char *end, const char *key, const char *alt)
{
    const char *names[2] = {key, alt};

    for (int i = 0; i < 2 && names[i]; i++) {
        const char *q = find(at, (size_t)(end - at), names[i]);
        int64_t v = q ? number_after(q + strlen(names[i]), end) : -1;

        if (v >= 0)
            return v;
    }
    return -1;
}

void lx_usage_scan(const char *p, size_t len, struct lx_usage *u)
{
    const char *end = p + len, *at = NULL, *q = p;
    int64_t prompt, completion;

    /* The last "usage" object with figures wins (the final event). */
    while ((q = find(q, (size_t)(end - q), "\"usage\"")) != NULL) {
        at = q;
        q += 7;
    }
    if (!at)
        return;
    /* Chat, completions, embeddings, score, rerank, pooling, classify:
     * prompt_tokens (and completion_tokens); the Responses API:
     * input_tokens and output_tokens; older vLLM's /v1/rerank only
     * total_tokens, all of them read. The quotes keep "input_tokens_details"
     * and "prompt_tokens_details" from matching. */
    prompt = figure(at, end, "\"prompt_tokens\"", "\"input_tokens\"");
    completion = figure(at, end, "\"completion_tokens\"", "\"output_tokens\"");
    if (prompt < 0 && completion < 0)
        prompt = figure(at, end, "\"total_tokens\"", NULL);
    if (prompt >= 0)
        u->prompt_tokens = prompt;
    if (completion >= 0)
        u->completion_tokens = completion;
}

/* Looks at one complete event; true if it should be relayed. Cheap on the
 * common token event: one search for "choices"; [DONE] only looked for in
 * short events; usage only in events without choices or with empty ones
 * (where vLLM puts it). */
static bool on_event(struct lx_sse *s, const char *p, size_t len)
{
    bool usage_only = false;
    const char *ch;

    s->events++;
    if (len <= 32 && find(p, len, "data: [DONE]")) {
        s->done = true;
        return true;
    }
    ch = find(p, len, "\"choices\"");
    if (ch) {
        const char *end = p + len, *q = ch + 9;

        while (q < end && (*q == ' ' || *q == ':'))
            q++;
        usage_only = q + 1 < end && q[0] == '[' && q[1] == ']';
        if (!usage_only) {
            s->data_events++;
            if (s->on_choices)
                s->on_choices(s->choices_ctx, p, len);
        }
    }
    if ((usage_only || !ch) && find(p, len, "\"usage\"") && !find(p, len, "\"usage\":null"))
        lx_usage_scan(p, len, &s->usage);
    return !(s->drop_usage && usage_only);
}

void lx_sse_feed(struct lx_sse *s, const char *p, size_t len, lx_sse_out_cb out, void *ctx)
{
    size_t start = 0; /* start of the current event within p */
    size_t run = 0;   /* start of the kept events not yet handed to out */

    for (size_t i = 0; i < len; i++) {
        /* Jump to the next newline with memchr; any character but \r
         * before it resets the newline count. */
        const char *q = memchr(p + i, '\n', len - i);
        size_t j = q ? (size_t)(q - p) : len;

        for (size_t k = i; k < j; k++)
            if (p[k] != '\r') {
                s->nl = 0;
                break;
            }
        if (!q)
            break;
        i = j;
        if (++s->nl < 2)
            continue;
        /* An event ends at p[i]. */
        s->nl = 0;
        if (s->partial.len || s->partial_overflow) {
            /* It began in an earlier chunk: held (or passed, if too long). */
            bool keep = true;

            if (!s->partial_overflow &&
                lx_buf_append(&s->partial, p + start, i + 1 - start) == 0) {
                keep = on_event(s, s->partial.data, s->partial.len);
                if (keep)
                    out(ctx, s->partial.data, s->partial.len);
            } else {
                s->events++;
                s->overflows++;
                if (s->partial.len)
                    out(ctx, s->partial.data, s->partial.len);
                out(ctx, p + start, i + 1 - start);
            }
            lx_buf_reset(&s->partial);
            s->partial_overflow = false;
            run = i + 1;
        } else if (!on_event(s, p + start, i + 1 - start)) {
            /* Dropped: hand over the kept events before it. */
            if (start > run)
                out(ctx, p + run, start - run);
            run = i + 1;
        } else if (s->per_event) {
            out(ctx, p + start, i + 1 - start);
            run = i + 1;
        }
        start = i + 1;
    }
    /* Complete events leave in one piece, coalesced. */
    if (start > run)
        out(ctx, p + run, start - run);
    if (start < len) {
        /* The beginning of an event that ends in a later chunk: held back,
         * so that a stream cut here never leaves half an event behind. */
        if (s->partial_overflow) {
            out(ctx, p + start, len - start);
        } else if (lx_buf_append(&s->partial, p + start, len - start) < 0) {
            /* Longer than LX_SSE_EVENT_MAX: pass it on unexamined. */
            out(ctx, s->partial.data, s->partial.len);
            out(ctx, p + start, len - start);
            lx_buf_reset(&s->partial);
            s->partial_overflow = true;
        }
    }
}

void lx_sse_flush(struct lx_sse *s, lx_sse_out_cb out, void *ctx)
{
    if (s->partial.len)
        out(ctx, s->partial.data, s->partial.len);
    lx_buf_reset(&s->partial);
}

bool lx_sse_mid_event(const struct lx_sse *s)
{
    return s->partial.len > 0 || s->partial_overflow;
}
