/*
 * sse.c - SSE event boundaries, counting and usage; see sse.h.
 *
 * An event ends at a blank line: two newlines in a row, where "\r\n" counts
 * as one newline (the spec allows \n, \r\n and \r; vLLM and OpenAI send \n).
 */
#include "sse.h"

#include <string.h>

void lx_sse_init(struct lx_sse *s, bool filter)
{
    memset(s, 0, sizeof(*s));
    s->filter = filter;
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

void lx_usage_scan(const char *p, size_t len, struct lx_usage *u)
{
    const char *end = p + len, *at = NULL, *q = p;

    /* The last "usage" object with figures wins (the final event). */
    while ((q = find(q, (size_t)(end - q), "\"usage\"")) != NULL) {
        at = q;
        q += 7;
    }
    if (!at)
        return;
    q = find(at, (size_t)(end - at), "\"prompt_tokens\"");
    if (q) {
        int64_t v = number_after(q + 15, end);

        if (v >= 0)
            u->prompt_tokens = v;
    }
    q = find(at, (size_t)(end - at), "\"completion_tokens\"");
    if (q) {
        int64_t v = number_after(q + 19, end);

        if (v >= 0)
            u->completion_tokens = v;
    }
}

/* Looks at one complete event; true if it should be relayed. */
static bool on_event(struct lx_sse *s, const char *p, size_t len)
{
    bool usage_only;

    s->events++;
    if (len >= 12 && find(p, len, "data: [DONE]")) {
        s->done = true;
        return true;
    }
    if (find(p, len, "\"usage\"") && !find(p, len, "\"usage\":null"))
        lx_usage_scan(p, len, &s->usage);
    usage_only = find(p, len, "\"choices\":[]") != NULL;
    if (!usage_only && find(p, len, "\"choices\""))
        s->data_events++;
    return !(s->filter && usage_only);
}

void lx_sse_feed(struct lx_sse *s, const char *p, size_t len, lx_sse_out_cb out, void *ctx)
{
    size_t start = 0; /* start of the current event within p */

    for (size_t i = 0; i < len; i++) {
        char c = p[i];

        if (c == '\r')
            continue;
        if (c != '\n') {
            s->nl = 0;
            continue;
        }
        if (++s->nl < 2)
            continue;
        /* An event ends at p[i]. */
        s->nl = 0;
        if (s->partial.len || s->partial_overflow) {
            bool keep;

            if (!s->partial_overflow && lx_buf_append(&s->partial, p + start, i + 1 - start) == 0) {
                keep = on_event(s, s->partial.data, s->partial.len);
            } else {
                /* Too long to look at whole: count it and let it through. */
                s->events++;
                keep = true;
            }
            if (s->filter && keep && !s->partial_overflow)
                out(ctx, s->partial.data, s->partial.len);
            else if (s->filter && s->partial_overflow)
                out(ctx, p + start, i + 1 - start);
            lx_buf_reset(&s->partial);
            s->partial_overflow = false;
        } else if (on_event(s, p + start, i + 1 - start) && s->filter) {
            out(ctx, p + start, i + 1 - start);
        }
        start = i + 1;
    }
    if (start < len) {
        /* The rest is the beginning of an event that ends in a later chunk. */
        if (!s->partial_overflow && lx_buf_append(&s->partial, p + start, len - start) < 0) {
            /* Over the cap: in filter mode send what was held and the rest
             * through unexamined. */
            if (s->filter) {
                out(ctx, s->partial.data, s->partial.len);
                out(ctx, p + start, len - start);
            }
            lx_buf_reset(&s->partial);
            s->partial_overflow = true;
        } else if (s->partial_overflow && s->filter) {
            out(ctx, p + start, len - start);
        }
    }
}

void lx_sse_flush(struct lx_sse *s, lx_sse_out_cb out, void *ctx)
{
    if (s->partial.len && s->filter)
        out(ctx, s->partial.data, s->partial.len);
    lx_buf_reset(&s->partial);
}
