/*
 * sse.h - a Server-Sent Events scanner for relayed streams: finds event
 * boundaries (a blank line) in the byte stream as it arrives, counts events,
 * and reads the OpenAI `usage` figures out of the events that carry them.
 *
 * Events that lie whole inside one chunk are looked at in place; only an
 * event split across chunks is copied (up to LX_SSE_EVENT_MAX bytes), so a
 * stream is counted, not copied. In filter mode the scanner also tells the
 * relay which byte ranges to send on, leaving out usage-only events
 * (`"choices":[]`) that llmux asked the node for on the client's behalf.
 *
 * Pure, single-threaded, no allocation beyond the split-event buffer.
 */
#ifndef LX_SSE_H
#define LX_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/buf.h"

#define LX_SSE_EVENT_MAX (64 * 1024)

struct lx_usage {
    int64_t prompt_tokens;      /* -1 = not seen */
    int64_t completion_tokens;  /* -1 = not seen */
};

struct lx_sse {
    bool filter;                /* drop usage-only events from the output */
    int nl;                     /* newlines in a row at the end of input so far (\r ignored) */
    struct lx_buf partial;      /* the current event's bytes when split (or in filter mode) */
    bool partial_overflow;      /* current event longer than LX_SSE_EVENT_MAX */
    uint64_t events;            /* complete events seen */
    uint64_t data_events;       /* events carrying choices with content (tokens) */
    bool done;                  /* saw `data: [DONE]` */
    struct lx_usage usage;      /* last usage seen */
};

void lx_sse_init(struct lx_sse *s, bool filter);
void lx_sse_deinit(struct lx_sse *s);

/* Called with the byte ranges to relay (filter mode only). */
typedef void (*lx_sse_out_cb)(void *ctx, const char *p, size_t len);

/*
 * Feeds <len> bytes. In pass mode <out> is not called: relay the chunk as it
 * is. In filter mode <out> receives every complete event except usage-only
 * ones, in order; an incomplete event is held until its end arrives.
 */
void lx_sse_feed(struct lx_sse *s, const char *p, size_t len, lx_sse_out_cb out, void *ctx);
/* Bytes held back in filter mode (an incomplete final event), for flushing
 * when the stream ends without a blank line. */
void lx_sse_flush(struct lx_sse *s, lx_sse_out_cb out, void *ctx);

/* Reads the last "prompt_tokens" and "completion_tokens" numbers inside a
 * "usage" object of <p>; fields not found stay as they were. */
void lx_usage_scan(const char *p, size_t len, struct lx_usage *u);

#endif /* LX_SSE_H */
