/*
 * metrics.h - Prometheus metrics: per-worker shards written without locks on
 * the request path, summed when /metrics is scraped.
 *
 * A shard belongs to one worker thread, which alone records into it. Series
 * are created on first use (one per label set actually seen) in the shard's
 * table; creating one takes the shard's lock, which the scrape also takes
 * while it reads, so recording into an existing series never locks. Values
 * are relaxed atomics (durations kept in microseconds), so a scrape reads
 * each one whole.
 *
 * Series known before any event are shown at 0 from the first scrape, so
 * rate() and the shipped dashboard have data on a fresh gateway: the fixed
 * label sets (rejection reasons, hedge and resume outcomes, endpoints by
 * status class, the unlabelled counters and queue wait), and, from the
 * registry the scrape is given, every node (requests, failures, errors by
 * kind, latency streamed and not, TTFT, inter-token latency) and every
 * configured model (requests by a fixed set of statuses, tokens, latency,
 * TTFT, tokens/s). They follow the registry: a node added by a reload
 * appears at 0, a removed one's zero series go (series with counts stay:
 * counters never reset while the process lives).
 *
 * Label values are bounded: node and model names come from the config,
 * endpoints from a fixed table (src/http/api.h), and a model name a client
 * chose (a catch-all pool) goes through lx_metrics_model_label. Every value
 * is cut to 127 bytes at a character boundary, and escaped on output.
 */
#ifndef LX_METRICS_H
#define LX_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/buf.h"
#include "../http/api.h"
#include "../nodes/failure.h"

enum lx_reject {
    LX_REJECT_AUTH,
    LX_REJECT_QUEUE_FULL,
    LX_REJECT_QUEUE_TIMEOUT,
    LX_REJECT_NO_HEALTHY_NODE,
    LX_REJECT_BAD_REQUEST,
    LX_REJECT_TOO_LARGE,
    LX_REJECT__N
};

/* How a hedge went (llmux_hedges_total{outcome}). */
enum lx_hedge_outcome {
    LX_HEDGE_STARTED, /* a second node was sent the request */
    LX_HEDGE_WON,     /* the hedge's node sent a byte first; the original was cancelled */
    LX_HEDGE_LOST,    /* the original node sent a byte first; the hedge was cancelled */
    LX_HEDGE__N
};

struct lx_metrics;  /* one per worker */
struct lx_registry;

/* What one finished request adds. Durations in seconds, < 0 = not measured. */
struct lx_request_record {
    const char *model;          /* label value: the pool's model, or the request's */
    int status;                 /* HTTP status sent to the client */
    double latency_s;           /* arrival to end, queue included */
    double ttft_s;              /* arrival to first token (streams), < 0 = none */
    double tokens_per_s;        /* completion tokens / generation time, < 0 = none */
    int64_t prompt_tokens;      /* from usage, < 0 = unknown */
    int64_t completion_tokens;
    enum lx_api endpoint;       /* the request's path (lx_api_lookup); 0 = LX_API_OTHER */
};

/*
 * Writes into <out> the label value for a model name a client chose (a
 * catch-all pool): the name itself for the first LX_METRICS_MAX_CLIENT_MODELS
 * distinct names of the process, "other" for any later one or for a name
 * that is not printable UTF-8 (no control characters) or longer than
 * <outlen> - 1, so clients can neither grow the series count nor break a
 * scrape. The first names seen keep their slots for the process's life.
 * Thread-safe.
 */
#define LX_METRICS_MAX_CLIENT_MODELS 64
void lx_metrics_model_label(char *out, size_t outlen, const char *name, size_t len);
/* Creates a shard and adds it to the process-wide list the scrape sums. */
struct lx_metrics *lx_metrics_new(void);
/* Removes it from the list and frees it (after its worker stopped). */
void lx_metrics_free(struct lx_metrics *m);

/* A request answered: llmux_requests_total, the latency, TTFT, tokens/s
 * histograms and token counters of its model, and lx_metrics_endpoint. */
void lx_metrics_request(struct lx_metrics *m, const struct lx_request_record *r);
/* A request answered on <endpoint> with <status>, counted in
 * llmux_endpoint_requests_total{endpoint,status_class}; lx_metrics_request
 * does it, call it alone only for answers that are not counted as requests
 * (the gateway's own GET /v1/models). */
void lx_metrics_endpoint(struct lx_metrics *m, enum lx_api endpoint, int status);
void lx_metrics_reject(struct lx_metrics *m, enum lx_reject reason);
void lx_metrics_retry(struct lx_metrics *m);
/* A retry, hedge or stream resume the pool's retry budget refused. */
void lx_metrics_retry_refused(struct lx_metrics *m);
/* A hedge started, or the race it started ended (won or lost); a hedge whose
 * race ends without a first byte from either node counts as started only. */
void lx_metrics_hedge(struct lx_metrics *m, enum lx_hedge_outcome outcome);
/* A stream resume ended: <ok> when the continuation completed the stream,
 * false when the stream ended with the SSE error event after all. */
void lx_metrics_resume(struct lx_metrics *m, bool ok);
void lx_metrics_queue_wait(struct lx_metrics *m, double seconds);
void lx_metrics_node_request(struct lx_metrics *m, const char *node);
/* A node's response head came <seconds> after the request was sent to it;
 * <stream>: the client asked for a stream (llmux_node_latency_seconds{node,stream}). */
void lx_metrics_node_latency(struct lx_metrics *m, const char *node, bool stream, double seconds);
/* A streamed request's first SSE event from <node>, <seconds> after sending. */
void lx_metrics_node_ttft(struct lx_metrics *m, const char *node, double seconds);
/* <n_events> SSE events of a stream came from <node> in one read, <seconds>
 * after the previous read that brought events: <n_events> gaps of
 * <seconds> / <n_events> each (the histogram's sum stays exact, one clock
 * read per node read). */
void lx_metrics_node_itl(struct lx_metrics *m, const char *node, double seconds,
                         uint64_t n_events);
void lx_metrics_node_failure(struct lx_metrics *m, const char *node);
void lx_metrics_upstream_error(struct lx_metrics *m, const char *node, enum lx_fail kind);

/* Appends the counters and histograms of every shard, summed, in the text
 * exposition format (HELP and TYPE lines included), with the series known
 * from <reg> (borrowed; NULL = none) at 0 where nothing was recorded.
 * Thread-safe. */
void lx_metrics_render(struct lx_buf *out, const struct lx_registry *reg);
/* Appends one gauge family (HELP, TYPE, and the caller's samples follow). */
void lx_metrics_gauge_head(struct lx_buf *out, const char *name, const char *help);
/* As lx_metrics_gauge_head, for a counter the caller keeps (a node's own,
 * mirrored). */
void lx_metrics_counter_head(struct lx_buf *out, const char *name, const char *help);
/* Appends `name{label="value"} v` with the value escaped. */
void lx_metrics_sample(struct lx_buf *out, const char *name, const char *label,
                       const char *value, double v);
/* Appends `name{l1="v1",l2="v2",l3="v3"} v`, values escaped; a NULL label
 * name ends the list (l1 NULL = no labels). */
void lx_metrics_sample_labels(struct lx_buf *out, const char *name, const char *l1,
                              const char *v1, const char *l2, const char *v2, const char *l3,
                              const char *v3, double v);
/* Appends <s> escaped as a label value (backslash, quote, newline). */
void lx_metrics_escape(struct lx_buf *out, const char *s);

#endif /* LX_METRICS_H */
