/*
 * bench.h - llmux-bench: the benchmark client's configuration, target, results
 * and the entry points of its modules.
 *
 *   main.c     command line, run and sweep orchestration
 *   proto.c    the wire: base URL, synthetic prompt, the request bytes (built
 *              once); SSE line splitting and the few JSON facts read from answers
 *   client.c   load generation: one libuv loop, keep-alive connections,
 *              closed loop (N at once) or open loop (a fixed start rate)
 *   stats.c    exact percentiles of per-request samples, a log-linear
 *              histogram, a phase's results
 *   report.c   the stdout table, JSON (jansson), CSV and the SVG chart
 *
 * Threading: one thread, one loop per phase. Nothing here is shared.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../src/core/buf.h"
#include "stats.h"

#define BENCH_VERSION "1.0"
#define BENCH_MAX_STATUS 600 /* HTTP statuses counted: 0..599 */
#define BENCH_MAX_NODES 256  /* distinct X-Routed-Node values kept; more go to "other" */
#define BENCH_MAX_SAMPLES 16 /* error statuses with a sample body kept */

enum bench_mode { BENCH_NAIVE = 1, BENCH_CONCURRENT = 2, BENCH_BOTH = 3 };
enum bench_endpoint { BENCH_CHAT, BENCH_COMPLETIONS };

/* Why a request failed. */
enum bench_err {
    BENCH_ERR_HTTP,     /* a status other than 2xx (also counted by status) */
    BENCH_ERR_CONNECT,  /* connect refused, unreachable, or not done within connect timeout */
    BENCH_ERR_TIMEOUT,  /* no complete answer within --timeout */
    BENCH_ERR_CLOSED,   /* the server closed or reset the connection before the answer ended */
    BENCH_ERR_PROTOCOL, /* malformed HTTP, or an answer over the size limits */
    BENCH_ERR_STREAM,   /* a 200 stream that carried an error event */
    BENCH_ERR_MAX
};

/* Everything the command line sets. Strings are borrowed from argv. */
struct bench_conf {
    enum bench_mode mode;
    uint64_t num_requests;  /* per phase (per level in a sweep) when duration_s is 0 */
    double duration_s;      /* per phase; 0 = count mode */
    unsigned concurrency;   /* requests in flight at most */
    double rate;            /* open loop: requests started per second; 0 = closed loop */
    unsigned prompt_tokens; /* synthetic prompt, 4 characters a token */
    unsigned max_tokens;
    const char *base_url;
    const char *auth_token; /* NULL = no Authorization header */
    const char *model;
    const char *output;     /* run: JSON file; NULL = none */
    const char *output_csv; /* sweep */
    const char *plot;       /* sweep: SVG file */
    const char **headers;   /* extra "Name: value" request headers */
    unsigned n_headers;
    unsigned *levels; /* sweep concurrencies */
    unsigned n_levels;
    enum bench_endpoint endpoint;
    double timeout_s; /* whole request */
    double connect_timeout_s;
    bool stream;
    bool log_node;
    bool progress; /* progress bar on stderr (only if it is a terminal) */
    bool sweep;
};

/* Where requests go and the bytes they carry, the same for every request. */
struct bench_target {
    char host[256]; /* as in the URL, without brackets */
    char host_header[300];
    int port;
    char path[1024]; /* full request path, e.g. /v1/chat/completions */
    char url[1400];  /* the request URL, for reports */
    struct sockaddr_storage addr;
    char *request; /* head + body, owned */
    size_t request_len;
    size_t body_len;
    unsigned prompt_chars;
};

/* One X-Routed-Node value and its counts. */
struct bench_node_count {
    char *name; /* owned */
    uint64_t ok;
    uint64_t errors;
};

struct bench_err_sample {
    int status;
    char *body; /* owned, at most 200 bytes of the first such answer */
};

/* One phase's outcome: everything the reports show. */
struct bench_result {
    const char *label; /* "naive", "concurrent", "c=4"; borrowed */
    const char *loop;  /* "closed" or "open" */
    unsigned concurrency;
    double rate;
    uint64_t started; /* requests sent (= ok + errors at the end) */
    uint64_t ok;
    uint64_t errors;
    uint64_t prompt_tokens;     /* sums from usage */
    uint64_t completion_tokens; /* from usage, else stream content events */
    uint64_t usage_missing;     /* successes whose answer had no usage */
    uint64_t stream_events;     /* SSE data events with content */
    uint64_t connects;          /* TCP connections opened */
    uint64_t late_starts;       /* open loop: started more than 1 ms after schedule */
    double start_lag_max_ms;
    double wall_s;     /* phase start to the last request's end */
    bool interrupted;  /* SIGINT stopped the phase early */
    double cpu_user_s; /* this process, during the phase */
    double cpu_sys_s;
    struct bench_samples latency_ms; /* successes, from the (scheduled) start */
    struct bench_samples ttft_ms;    /* streaming successes with a token */
    struct bench_samples req_tps;    /* per request: completion tokens / latency */
    struct bench_hist itl;           /* gaps between content events, ns */
    uint64_t err_kind[BENCH_ERR_MAX];
    uint64_t status[BENCH_MAX_STATUS];
    struct bench_err_sample samples[BENCH_MAX_SAMPLES];
    unsigned n_samples;
    struct bench_node_count *nodes;
    unsigned n_nodes;
};

/* ---- proto.c: requests ---- */

/* Parses <url> (http://host[:port][/prefix][/v1][/]) and builds the request
 * bytes for <c> into <t>. Resolves the host (blocking, once). Returns 0, or
 * LX_EINVAL / LX_ENOENT with a message printed to stderr. */
int bench_target_init(struct bench_target *t, const struct bench_conf *c);
void bench_target_deinit(struct bench_target *t);
/* A deterministic text of exactly <chars> characters (words and spaces);
 * returns a new string. */
char *bench_prompt_new(size_t chars);

/* ---- proto.c: answers ---- */

/* Splits an SSE body into lines across reads and hands over each `data:`
 * payload; other lines (event:, id:, comments, blank) are skipped. */
struct bench_sse {
    struct lx_buf line; /* a line cut by a read boundary, capped */
};

/* <data> (the payload after "data:" and one optional space) is valid during
 * the call only. */
typedef void (*bench_sse_data_cb)(void *ctx, const char *data, size_t len);

void bench_sse_init(struct bench_sse *s);
void bench_sse_deinit(struct bench_sse *s);
static inline void bench_sse_reset(struct bench_sse *s)
{
    lx_buf_reset(&s->line);
}
/* Feeds <n> body bytes; calls <cb> for each complete data line. Returns 0, or
 * LX_E2BIG when one line exceeds 4 MiB. */
int bench_sse_feed(struct bench_sse *s, const char *p, size_t n, bench_sse_data_cb cb, void *ctx);
/* Finds a `"usage": {...}` object in the JSON text <s> and reads its
 * prompt_tokens and completion_tokens (-1 when absent). Returns 0, or
 * LX_ENOENT when there is no usage object. No allocation; never reads past n. */
int bench_scan_usage(const char *s, size_t n, int64_t *prompt, int64_t *completion);
/* True when a stream chunk carries generated text: a non-empty "content"
 * string (chat) or "text" string (completions). */
bool bench_scan_has_content(const char *s, size_t n, enum bench_endpoint ep);
/* True when a stream payload is an error event ({"error": ...} or vLLM's
 * {"object": "error", ...}). */
bool bench_scan_is_error(const char *s, size_t n);

/* ---- client.c ---- */

/* Runs one phase on its own loop: <concurrency> requests in flight at most,
 * closed loop when <rate> is 0, else started at <rate> per second. Fills
 * <res> (initialised by the caller with bench_result_init). Blocks until the
 * phase's requests have all ended. Returns 0 or LX_ENOMEM. */
int bench_client_run(const struct bench_conf *c, const struct bench_target *t, unsigned concurrency,
                     double rate, struct bench_result *res);

/* ---- stats.c: a phase's results ---- */

void bench_result_init(struct bench_result *r, const char *label);
void bench_result_deinit(struct bench_result *r);
/* Sorts the samples; call once after the phase, before any report. */
void bench_result_finish(struct bench_result *r);
const char *bench_err_name(enum bench_err e);
/* Completion tokens per second, successes per second (0 when no time passed). */
double bench_result_tps(const struct bench_result *r);
double bench_result_rps(const struct bench_result *r);
/* Throughput multiplier of <b> over <a>: completion tokens/s when both have
 * tokens, else requests/s; 0 when <a> has none. */
double bench_multiplier(const struct bench_result *a, const struct bench_result *b,
                        bool *by_tokens);

/* ---- report.c ---- */

/* Prints a table of one or two phases (<b> may be NULL) to stdout. */
void bench_report_table(const struct bench_conf *c, const struct bench_target *t,
                        const struct bench_result *a, const struct bench_result *b);
void bench_report_nodes(const struct bench_result *r, const char *title);
/* Writes the run JSON. <naive>/<conc> may be NULL. Returns 0 or -errno. */
int bench_report_run_json(const char *path, const struct bench_conf *c,
                          const struct bench_target *t, const struct bench_result *naive,
                          const struct bench_result *conc);
/* The sweep's outputs: one row per level. Return 0 or -errno. */
int bench_report_sweep_json(const char *path, const struct bench_conf *c,
                            const struct bench_target *t, const struct bench_result *rows,
                            unsigned n);
int bench_report_sweep_csv(const char *path, const struct bench_result *rows, unsigned n);
int bench_report_sweep_svg(const char *path, const struct bench_conf *c,
                           const struct bench_result *rows, unsigned n);
void bench_report_sweep_table(const struct bench_result *rows, unsigned n);

#endif /* BENCH_H */
