/*
 * metrics.c - /metrics for llmux-sim in vLLM's shape.
 *
 * What a gateway scrapes from a real vLLM (v0.6 to v0.10): the V1 engine's
 * names, each labelled {model_name="...",engine="0"}, with HELP and TYPE
 * lines, counters suffixed _total, and histograms with vLLM's buckets.
 * Numbers are printed as prometheus_client prints them (floats: "3.0"), so a
 * scraper tested against the sim also reads real vLLM output.
 *
 * Both vllm:gpu_cache_usage_perc (v0) and vllm:kv_cache_usage_perc (v1) are
 * exported, and both vllm:prefix_cache_* (v1) and vllm:gpu_prefix_cache_*
 * (v0), since gateways in the field read either.
 */
#include "metrics.h"

#include <math.h>
#include <string.h>

#include "../src/core/lx.h"
#include "engine.h"

static const double ttft_buckets[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                      0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                      20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double e2e_buckets[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                     5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                     60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
static const double itl_buckets[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                     0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};

void sim_hist_init(struct sim_hist *h, enum sim_hist_kind kind)
{
    memset(h, 0, sizeof(*h));
    switch (kind) {
    case SIM_HIST_TTFT:
        h->bounds = ttft_buckets;
        h->n_bounds = ARRAY_SIZE(ttft_buckets);
        break;
    case SIM_HIST_E2E:
        h->bounds = e2e_buckets;
        h->n_bounds = ARRAY_SIZE(e2e_buckets);
        break;
    case SIM_HIST_ITL:
        h->bounds = itl_buckets;
        h->n_bounds = ARRAY_SIZE(itl_buckets);
        break;
    }
    LX_ASSERT(h->n_bounds <= SIM_HIST_MAX_BUCKETS);
}

void sim_hist_observe(struct sim_hist *h, double seconds)
{
    size_t i;

    if (seconds < 0 || isnan(seconds))
        seconds = 0;
    for (i = 0; i < h->n_bounds; i++)
        if (seconds <= h->bounds[i])
            break;
    h->counts[i]++;
    h->sum += seconds;
    h->count++;
}

/* A number the way Python's prometheus_client writes it: floats always. */
static void fmt_num(char *out, size_t len, double v)
{
    if (isinf(v)) {
        snprintf(out, len, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, len, "%.1f", v);
        return;
    }
    snprintf(out, len, "%.17g", v);
    /* Shortest form that reads back the same, as Python's repr does. */
    for (int prec = 1; prec < 17; prec++) {
        char tmp[64];

        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) {
            snprintf(out, len, "%s", tmp);
            return;
        }
    }
}

struct render {
    struct lx_buf *out;
    struct lx_buf labels; /* model_name="...",engine="0" */
    int rc;
};

static void head(struct render *r, const char *name, const char *type, const char *help)
{
    r->rc |= lx_buf_appendf(r->out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample(struct render *r, const char *name, const char *extra, double v)
{
    char num[64];

    fmt_num(num, sizeof(num), v);
    r->rc |= lx_buf_appendf(r->out, "%s{%.*s%s} %s\n", name, (int)r->labels.len, r->labels.data,
                            extra ? extra : "", num);
}

static void gauge(struct render *r, const char *name, const char *help, double v)
{
    head(r, name, "gauge", help);
    sample(r, name, NULL, v);
}

static void counter(struct render *r, const char *name, const char *help, double v)
{
    head(r, name, "counter", help);
    sample(r, name, NULL, v);
}

static void histogram(struct render *r, const char *name, const char *help,
                      const struct sim_hist *h)
{
    char sname[128], extra[96], le[64];
    uint64_t cum = 0;

    head(r, name, "histogram", help);
    snprintf(sname, sizeof(sname), "%s_bucket", name);
    for (size_t i = 0; i <= h->n_bounds; i++) {
        cum += h->counts[i];
        fmt_num(le, sizeof(le), i < h->n_bounds ? h->bounds[i] : INFINITY);
        snprintf(extra, sizeof(extra), ",le=\"%s\"", le);
        sample(r, sname, extra, (double)cum);
    }
    snprintf(sname, sizeof(sname), "%s_count", name);
    sample(r, sname, NULL, (double)h->count);
    snprintf(sname, sizeof(sname), "%s_sum", name);
    sample(r, sname, NULL, h->sum);
}

/* Label values escape backslash, double quote and newline. */
static int label_escape(struct lx_buf *b, const char *s)
{
    int rc = 0;

    for (; *s; s++) {
        if (*s == '\\')
            rc |= lx_buf_append(b, "\\\\", 2);
        else if (*s == '"')
            rc |= lx_buf_append(b, "\\\"", 2);
        else if (*s == '\n')
            rc |= lx_buf_append(b, "\\n", 2);
        else
            rc |= lx_buf_append(b, s, 1);
    }
    return rc;
}

int sim_metrics_render(struct lx_buf *out, const struct sim_engine_stats *st, const char *model)
{
    struct render r = {.out = out};
    double kv = st->kv_blocks_total ? (double)st->kv_blocks_used / (double)st->kv_blocks_total : 0;

    lx_buf_init(&r.labels, 0);
    r.rc |= lx_buf_append(&r.labels, "model_name=\"", 12);
    r.rc |= label_escape(&r.labels, model);
    r.rc |= lx_buf_append(&r.labels, "\",engine=\"0\"", 12);

    gauge(&r, "vllm:num_requests_running", "Number of requests in model execution batches.",
          st->running);
    gauge(&r, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
          st->waiting);
    gauge(&r, "vllm:num_requests_swapped", "Number of requests swapped to CPU.", 0);
    gauge(&r, "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", kv);
    gauge(&r, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv);
    {
        /* vLLM's info metric: the cache's geometry in labels, value 1. */
        char extra[96];

        snprintf(extra, sizeof(extra), ",block_size=\"%u\",num_gpu_blocks=\"%llu\"",
                 st->block_size, (unsigned long long)st->kv_blocks_total);
        head(&r, "vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
        sample(&r, "vllm:cache_config_info", extra, 1);
    }
    counter(&r, "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            (double)st->prefix_queries);
    counter(&r, "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.", (double)st->prefix_hits);
    counter(&r, "vllm:gpu_prefix_cache_queries_total",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            (double)st->prefix_queries);
    counter(&r, "vllm:gpu_prefix_cache_hits_total",
            "GPU prefix cache hits, in terms of number of cached tokens.", (double)st->prefix_hits);
    counter(&r, "vllm:num_preemptions_total", "Cumulative number of preemption from the engine.",
            (double)st->preempted);
    counter(&r, "vllm:prompt_tokens_total", "Number of prefill tokens processed.",
            (double)st->prompt_tokens);
    counter(&r, "vllm:generation_tokens_total", "Number of generation tokens processed.",
            (double)st->generation_tokens);

    head(&r, "vllm:request_success_total", "counter", "Count of successfully processed requests.");
    sample(&r, "vllm:request_success_total", ",finished_reason=\"stop\"", (double)st->success_stop);
    sample(&r, "vllm:request_success_total", ",finished_reason=\"length\"",
           (double)st->success_length);
    sample(&r, "vllm:request_success_total", ",finished_reason=\"abort\"", (double)st->aborted);

    histogram(&r, "vllm:time_to_first_token_seconds",
              "Histogram of time to first token in seconds.", &st->ttft);
    histogram(&r, "vllm:time_per_output_token_seconds",
              "Histogram of time per output token in seconds.", &st->itl);
    histogram(&r, "vllm:e2e_request_latency_seconds",
              "Histogram of e2e request latency in seconds.", &st->e2e);

    lx_buf_deinit(&r.labels);
    return r.rc ? LX_ENOMEM : 0;
}
