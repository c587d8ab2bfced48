/*
 * sse.h - a Server-Sent Events scanner for relayed streams: finds event
 * boundaries (a blank line) in the byte stream as it arrives, counts events,
 * and reads the OpenAI `usage` figures out of the events that carry them.
 *
 * The relay sends on only complete events: the scanner hands them to an
 * output callback, coalesced into one range per chunk, so a stream that
 * breaks never leaves half an event at the client. Events that lie whole
 * inside one chunk are looked at in place; only an event split across chunks
 * is copied (up to LX_SSE_EVENT_MAX bytes; a longer one is passed on
 * unexamined), so a stream is counted, not copied. With drop_usage the
 * scanner also leaves out usage-only events (`"choices":[]`) that llmux asked
 * the node for on the client's behalf.
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
    bool drop_usage;            /* leave usage-only events out of the output */
    bool per_event;             /* hand each kept event to the output on its own */
    /* Called with each complete event that carries choices, before it is
     * relayed; NULL = none. */
    void (*on_choices)(void *ctx, const char *ev, size_t len);
    void *choices_ctx;
    int nl;                     /* newlines in a row at the end of input so far (\r ignored) */
    struct lx_buf partial;      /* the current event's bytes when split (or in filter mode) */
    bool partial_overflow;      /* current event longer than LX_SSE_EVENT_MAX */
    uint64_t events;            /* complete events seen */
    uint64_t overflows;         /* events passed on unexamined (longer than LX_SSE_EVENT_MAX) */
    uint64_t data_events;       /* events carrying choices with content (tokens) */
    bool done;                  /* saw `data: [DONE]` */
    struct lx_usage usage;      /* last usage seen */
};

void lx_sse_init(struct lx_sse *s, bool drop_usage);
void lx_sse_deinit(struct lx_sse *s);

/* Called with the byte ranges to relay. */
typedef void (*lx_sse_out_cb)(void *ctx, const char *p, size_t len);

/*
 * Feeds <len> bytes. <out> receives every complete event (but dropped
 * usage-only ones), in order; an incomplete event is held until its end
 * arrives. Several complete events of one chunk come as one range.
 */
void lx_sse_feed(struct lx_sse *s, const char *p, size_t len, lx_sse_out_cb out, void *ctx);
/* Sends on an incomplete final event, for a stream that ended cleanly
 * without a blank line. */
void lx_sse_flush(struct lx_sse *s, lx_sse_out_cb out, void *ctx);
/* Whether bytes of an unfinished event are held (or were passed on). */
bool lx_sse_mid_event(const struct lx_sse *s);

/* Reads the figures of the last "usage" object of <p>: "prompt_tokens"
 * (else the Responses API's "input_tokens") and "completion_tokens" (else
 * "output_tokens"); with neither, "total_tokens" as prompt tokens (a
 * reranker's usage). Fields not found stay as they were. */
void lx_usage_scan(const char *p, size_t len, struct lx_usage *u);

#endif /* LX_SSE_H */
