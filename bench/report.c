/*
 * report.c - what llmux-bench shows: a table on stdout, the run JSON, and a
 * sweep's JSON, CSV and SVG chart.
 *
 * JSON keeps the first seed's shape and key names (runs.naive,
 * runs.concurrent, runs.*_node_counts, throughput_multiplier; a sweep is a
 * list of rows with concurrency, tokens_per_second, latency_p95_ms,
 * error_rate) so that its users' scripts keep reading it, and adds every other
 * figure next to them. Figures that do not apply (TTFT without --stream) are
 * null in JSON and empty in CSV. The SVG is written by hand: no dependency,
 * readable in any browser.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../src/core/lx.h"
#include "bench.h"

#define JSON_FLAGS (JSON_INDENT(2) | JSON_REAL_PRECISION(10))

/* ---- shared ------------------------------------------------------------- */

static json_t *jreal(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static double error_rate(const struct bench_result *r)
{
    uint64_t n = r->ok + r->errors;

    return n ? 100.0 * (double)r->errors / (double)n : 0;
}

static double cpu_per_100k(const struct bench_result *r)
{
    uint64_t n = r->ok + r->errors;

    return n ? (r->cpu_user_s + r->cpu_sys_s) * 1e5 / (double)n : 0;
}

static void summaries(const struct bench_result *r, struct bench_summary *lat,
                      struct bench_summary *ttft, struct bench_summary *itl,
                      struct bench_summary *tps)
{
    /* The samples are sorted by bench_result_finish; summary only reads. */
    bench_samples_summary((struct bench_samples *)&r->latency_ms, lat);
    bench_samples_summary((struct bench_samples *)&r->ttft_ms, ttft);
    bench_samples_summary((struct bench_samples *)&r->req_tps, tps);
    bench_hist_summary(&r->itl, 1e-6, itl);
}

static void timestamp(char *out, size_t n)
{
    struct timespec ts;
    struct tm tm;
    size_t k;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + k, n - k, ".%06ld+00:00", ts.tv_nsec / 1000);
}

static int write_json(const char *path, json_t *j)
{
    FILE *f = fopen(path, "w");
    int rc = 0;

    if (!f)
        return -errno;
    if (json_dumpf(j, f, JSON_FLAGS) || fputc('\n', f) == EOF)
        rc = -EIO;
    if (fclose(f) && !rc)
        rc = -errno;
    return rc;
}

/* ---- JSON --------------------------------------------------------------- */

static void set_summary(json_t *o, const char *prefix, const struct bench_summary *s, bool apply)
{
    static const char *const names[] = {"min", "mean", "p50", "p90", "p95", "p99", "max"};
    double v[] = {s->min, s->mean, s->p50, s->p90, s->p95, s->p99, s->max};
    char key[64];

    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        snprintf(key, sizeof(key), "%s_%s_ms", prefix, names[i]);
        json_object_set_new(o, key, apply && s->n ? jreal(v[i]) : json_null());
    }
}

static json_t *node_counts_json(const struct bench_result *r, bool errors)
{
    json_t *o = json_object();

    for (unsigned i = 0; i < r->n_nodes; i++) {
        uint64_t n = errors ? r->nodes[i].errors : r->nodes[i].ok;

        if (n)
            json_object_set_new(o, r->nodes[i].name, json_integer((json_int_t)n));
    }
    return o;
}

static json_t *result_json(const struct bench_conf *c, const struct bench_result *r)
{
    struct bench_summary lat, ttft, itl, tps;
    json_t *o = json_object(), *by_status = json_object(), *by_kind = json_object();
    json_t *samples = json_object();
    char key[16];

    summaries(r, &lat, &ttft, &itl, &tps);
    json_object_set_new(o, "label", json_string(r->label));
    json_object_set_new(o, "loop", json_string(r->loop));
    json_object_set_new(o, "concurrency", json_integer(r->concurrency));
    json_object_set_new(o, "rate", r->rate > 0 ? jreal(r->rate) : json_null());
    json_object_set_new(o, "num_requests", json_integer((json_int_t)(r->ok + r->errors)));
    json_object_set_new(o, "successes", json_integer((json_int_t)r->ok));
    json_object_set_new(o, "errors", json_integer((json_int_t)r->errors));
    json_object_set_new(o, "error_rate", jreal(error_rate(r)));
    json_object_set_new(o, "total_time_seconds", jreal(r->wall_s));
    json_object_set_new(o, "requests_per_second", jreal(bench_result_rps(r)));
    json_object_set_new(o, "tokens_per_second", jreal(bench_result_tps(r)));
    json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)r->prompt_tokens));
    json_object_set_new(o, "completion_tokens", json_integer((json_int_t)r->completion_tokens));
    json_object_set_new(o, "usage_missing", json_integer((json_int_t)r->usage_missing));
    set_summary(o, "latency", &lat, true);
    /* The seed's key: 0 when not streaming, as it reported. */
    json_object_set_new(o, "time_to_first_token_p50_ms", jreal(ttft.n ? ttft.p50 : 0));
    set_summary(o, "ttft", &ttft, c->stream);
    set_summary(o, "itl", &itl, c->stream);
    json_object_set_new(o, "stream_events", json_integer((json_int_t)r->stream_events));
    json_object_set_new(o, "per_request_tokens_per_second_p50",
                        tps.n ? jreal(tps.p50) : json_null());
    for (int s = 0; s < BENCH_MAX_STATUS; s++) {
        if (r->status[s]) {
            snprintf(key, sizeof(key), "%d", s);
            json_object_set_new(by_status, key, json_integer((json_int_t)r->status[s]));
        }
    }
    for (int k = 0; k < BENCH_ERR_MAX; k++)
        json_object_set_new(by_kind, bench_err_name(k), json_integer((json_int_t)r->err_kind[k]));
    for (unsigned i = 0; i < r->n_samples; i++) {
        snprintf(key, sizeof(key), "%d", r->samples[i].status);
        json_object_set_new(samples, key, json_string_nocheck(r->samples[i].body));
    }
    json_object_set_new(o, "errors_by_status", by_status);
    json_object_set_new(o, "errors_by_kind", by_kind);
    json_object_set_new(o, "error_samples", samples);
    json_object_set_new(o, "node_counts", node_counts_json(r, false));
    json_object_set_new(o, "node_error_counts", node_counts_json(r, true));
    json_object_set_new(o, "late_starts", json_integer((json_int_t)r->late_starts));
    json_object_set_new(o, "start_lag_max_ms", jreal(r->start_lag_max_ms));
    json_object_set_new(o, "connections_opened", json_integer((json_int_t)r->connects));
    json_object_set_new(o, "client_cpu_user_s", jreal(r->cpu_user_s));
    json_object_set_new(o, "client_cpu_sys_s", jreal(r->cpu_sys_s));
    json_object_set_new(o, "client_cpu_s_per_100k_requests", jreal(cpu_per_100k(r)));
    json_object_set_new(o, "interrupted", json_boolean(r->interrupted));
    return o;
}

static const char *mode_name(enum bench_mode m)
{
    return m == BENCH_NAIVE ? "naive" : m == BENCH_CONCURRENT ? "concurrent" : "both";
}

static json_t *config_json(const struct bench_conf *c, const struct bench_target *t)
{
    json_t *o = json_object();

    if (!c->sweep)
        json_object_set_new(o, "mode", json_string(mode_name(c->mode)));
    json_object_set_new(o, "num_requests",
                        c->duration_s > 0 ? json_null()
                                          : json_integer((json_int_t)c->num_requests));
    json_object_set_new(o, "duration_seconds",
                        c->duration_s > 0 ? jreal(c->duration_s) : json_null());
    if (!c->sweep)
        json_object_set_new(o, "concurrency", json_integer(c->concurrency));
    json_object_set_new(o, "rate", c->rate > 0 ? jreal(c->rate) : json_null());
    json_object_set_new(o, "prompt_tokens", json_integer(c->prompt_tokens));
    json_object_set_new(o, "max_tokens", json_integer(c->max_tokens));
    json_object_set_new(o, "base_url", json_string_nocheck(c->base_url));
    json_object_set_new(o, "url", json_string_nocheck(t->url));
    json_object_set_new(o, "model", json_string_nocheck(c->model));
    json_object_set_new(o, "endpoint",
                        json_string(c->endpoint == BENCH_CHAT ? "chat" : "completions"));
    json_object_set_new(o, "stream", json_boolean(c->stream));
    json_object_set_new(o, "timeout_seconds", jreal(c->timeout_s));
    json_object_set_new(o, "connect_timeout_seconds", jreal(c->connect_timeout_s));
    json_object_set_new(o, "auth", json_boolean(c->auth_token != NULL)); /* never the token */
    json_object_set_new(o, "extra_headers", json_integer(c->n_headers));
    json_object_set_new(o, "log_node", json_boolean(c->log_node));
    json_object_set_new(o, "prompt_chars", json_integer(t->prompt_chars));
    json_object_set_new(o, "request_bytes", json_integer((json_int_t)t->request_len));
    return o;
}

int bench_report_run_json(const char *path, const struct bench_conf *c,
                          const struct bench_target *t, const struct bench_result *naive,
                          const struct bench_result *conc)
{
    json_t *root = json_object(), *runs = json_object();
    char ts[64];
    int rc;

    timestamp(ts, sizeof(ts));
    json_object_set_new(root, "tool", json_string("llmux-bench"));
    json_object_set_new(root, "version", json_string(BENCH_VERSION));
    json_object_set_new(root, "timestamp", json_string(ts));
    json_object_set_new(root, "config", config_json(c, t));
    if (naive)
        json_object_set_new(runs, "naive", result_json(c, naive));
    if (conc)
        json_object_set_new(runs, "concurrent", result_json(c, conc));
    if (naive)
        json_object_set_new(runs, "naive_node_counts", node_counts_json(naive, false));
    if (conc)
        json_object_set_new(runs, "concurrent_node_counts", node_counts_json(conc, false));
    json_object_set_new(root, "runs", runs);
    if (naive && conc) {
        bool by_tokens;
        double m = bench_multiplier(naive, conc, &by_tokens);

        json_object_set_new(root, "throughput_multiplier", m > 0 ? jreal(m) : json_null());
        json_object_set_new(root, "multiplier_basis",
                            json_string(by_tokens ? "tokens_per_second" : "requests_per_second"));
        m = bench_result_rps(naive);
        json_object_set_new(root, "requests_per_second_multiplier",
                            m > 0 ? jreal(bench_result_rps(conc) / m) : json_null());
    } else {
        json_object_set_new(root, "throughput_multiplier", json_null());
    }
    json_object_set_new(root, "interrupted",
                        json_boolean((naive && naive->interrupted) || (conc && conc->interrupted)));
    rc = write_json(path, root);
    json_decref(root);
    return rc;
}

int bench_report_sweep_json(const char *path, const struct bench_conf *c,
                            const struct bench_target *t, const struct bench_result *rows,
                            unsigned n)
{
    json_t *list = json_array();
    char ts[64];
    int rc;

    timestamp(ts, sizeof(ts));
    for (unsigned i = 0; i < n; i++) {
        json_t *row = result_json(c, &rows[i]);

        json_object_set_new(row, "timestamp", json_string(ts));
        json_object_set_new(row, "config", config_json(c, t));
        json_array_append_new(list, row);
    }
    rc = write_json(path, list);
    json_decref(list);
    return rc;
}

/* ---- CSV ---------------------------------------------------------------- */

static void csv_opt(FILE *f, bool apply, double v)
{
    if (apply)
        fprintf(f, ",%.6g", v);
    else
        fputs(",", f);
}

int bench_report_sweep_csv(const char *path, const struct bench_result *rows, unsigned n)
{
    FILE *f = fopen(path, "w");
    int rc = 0;

    if (!f)
        return -errno;
    /* The seed's four columns first, in its order. */
    fputs("concurrency,tokens_per_second,latency_p95_ms,error_rate,requests_per_second,"
          "num_requests,successes,errors,total_time_seconds,prompt_tokens,completion_tokens,"
          "latency_p50_ms,latency_p90_ms,latency_p99_ms,latency_max_ms,ttft_p50_ms,ttft_p95_ms,"
          "itl_p50_ms,itl_p95_ms,client_cpu_s\n",
          f);
    for (unsigned i = 0; i < n; i++) {
        const struct bench_result *r = &rows[i];
        struct bench_summary lat, ttft, itl, tps;

        summaries(r, &lat, &ttft, &itl, &tps);
        fprintf(f, "%u,%.6f,%.3f,%.4f,%.6f,%llu,%llu,%llu,%.6f,%llu,%llu,%.3f,%.3f,%.3f,%.3f",
                r->concurrency, bench_result_tps(r), lat.p95, error_rate(r), bench_result_rps(r),
                (unsigned long long)(r->ok + r->errors), (unsigned long long)r->ok,
                (unsigned long long)r->errors, r->wall_s, (unsigned long long)r->prompt_tokens,
                (unsigned long long)r->completion_tokens, lat.p50, lat.p90, lat.p99, lat.max);
        csv_opt(f, ttft.n > 0, ttft.p50);
        csv_opt(f, ttft.n > 0, ttft.p95);
        csv_opt(f, itl.n > 0, itl.p50);
        csv_opt(f, itl.n > 0, itl.p95);
        fprintf(f, ",%.4f\n", r->cpu_user_s + r->cpu_sys_s);
    }
    if (ferror(f))
        rc = -EIO;
    if (fclose(f) && !rc)
        rc = -errno;
    return rc;
}

/* ---- tables ------------------------------------------------------------- */

static void row(const char *name, const char *a, const char *b)
{
    if (b)
        printf("  %-26s %16s %16s\n", name, a, b);
    else
        printf("  %-26s %16s\n", name, a);
}

/* One table row from a formatter applied to each phase. */
typedef void (*cell_fn)(char *out, size_t n, const struct bench_result *r);

static void row_fn(const char *name, cell_fn fn, const struct bench_result *a,
                   const struct bench_result *b)
{
    char x[64], y[64];

    fn(x, sizeof(x), a);
    if (b)
        fn(y, sizeof(y), b);
    row(name, x, b ? y : NULL);
}

#define CELL(name, fmt, ...)                                                                       \
    static void name(char *out, size_t n, const struct bench_result *r)                            \
    {                                                                                              \
        struct bench_summary lat, ttft, itl, tps;                                                  \
        summaries(r, &lat, &ttft, &itl, &tps);                                                     \
        (void)lat, (void)ttft, (void)itl, (void)tps;                                               \
        snprintf(out, n, fmt, __VA_ARGS__);                                                        \
    }

CELL(c_conc, "%u", r->concurrency)
CELL(c_req, "%llu", (unsigned long long)(r->ok + r->errors))
CELL(c_ok, "%llu / %llu", (unsigned long long)r->ok, (unsigned long long)r->errors)
CELL(c_erate, "%.2f", error_rate(r))
CELL(c_wall, "%.3f", r->wall_s)
CELL(c_rps, "%.2f", bench_result_rps(r))
CELL(c_tps, "%.2f", bench_result_tps(r))
CELL(c_tokens, "%llu", (unsigned long long)r->completion_tokens)
CELL(c_p50, "%.2f", lat.p50)
CELL(c_p90, "%.2f", lat.p90)
CELL(c_p95, "%.2f", lat.p95)
CELL(c_p99, "%.2f", lat.p99)
CELL(c_max, "%.2f", lat.max)
CELL(c_ttft50, "%.2f", ttft.p50)
CELL(c_ttft95, "%.2f", ttft.p95)
CELL(c_ttft99, "%.2f", ttft.p99)
CELL(c_itl50, "%.3f", itl.p50)
CELL(c_itl95, "%.3f", itl.p95)
CELL(c_itl99, "%.3f", itl.p99)
CELL(c_reqtps, "%.1f", tps.p50)
CELL(c_late, "%llu", (unsigned long long)r->late_starts)
CELL(c_conns, "%llu", (unsigned long long)r->connects)
CELL(c_cpu, "%.3f", r->cpu_user_s + r->cpu_sys_s)
CELL(c_cpu100k, "%.2f", cpu_per_100k(r))

static void print_errors(const struct bench_result *r)
{
    if (!r->errors)
        return;
    printf("  errors (%s):", r->label);
    for (int k = 0; k < BENCH_ERR_MAX; k++)
        if (r->err_kind[k])
            printf(" %s=%llu", bench_err_name(k), (unsigned long long)r->err_kind[k]);
    for (int s = 0; s < BENCH_MAX_STATUS; s++)
        if (r->status[s])
            printf(" status_%d=%llu", s, (unsigned long long)r->status[s]);
    printf("\n");
    for (unsigned i = 0; i < r->n_samples; i++)
        printf("    %d: %.120s\n", r->samples[i].status, r->samples[i].body);
}

void bench_report_table(const struct bench_conf *c, const struct bench_target *t,
                        const struct bench_result *a, const struct bench_result *b)
{
    bool rate = a->rate > 0 || (b && b->rate > 0);

    printf("\nllmux-bench: POST %s  model %s\n", t->url, c->model);
    printf("  prompt ~%u tokens (%u chars), max_tokens %u, %s\n\n", c->prompt_tokens,
           t->prompt_chars, c->max_tokens, c->stream ? "streaming" : "non-streaming");
    row("", a->label, b ? b->label : NULL);
    row_fn("concurrency", c_conc, a, b);
    if (rate) {
        char x[32], y[32];

        snprintf(x, sizeof(x), a->rate > 0 ? "%.2f/s open" : "closed", a->rate);
        snprintf(y, sizeof(y), b && b->rate > 0 ? "%.2f/s open" : "closed", b ? b->rate : 0);
        row("loop", x, b ? y : NULL);
    }
    row_fn("requests", c_req, a, b);
    row_fn("ok / errors", c_ok, a, b);
    row_fn("error rate (%)", c_erate, a, b);
    row_fn("wall time (s)", c_wall, a, b);
    row_fn("requests/s", c_rps, a, b);
    row_fn("completion tokens/s", c_tps, a, b);
    row_fn("completion tokens", c_tokens, a, b);
    row_fn("latency p50 (ms)", c_p50, a, b);
    row_fn("latency p90 (ms)", c_p90, a, b);
    row_fn("latency p95 (ms)", c_p95, a, b);
    row_fn("latency p99 (ms)", c_p99, a, b);
    row_fn("latency max (ms)", c_max, a, b);
    if (c->stream) {
        row_fn("ttft p50 (ms)", c_ttft50, a, b);
        row_fn("ttft p95 (ms)", c_ttft95, a, b);
        row_fn("ttft p99 (ms)", c_ttft99, a, b);
        row_fn("itl p50 (ms)", c_itl50, a, b);
        row_fn("itl p95 (ms)", c_itl95, a, b);
        row_fn("itl p99 (ms)", c_itl99, a, b);
    }
    row_fn("tokens/s per request p50", c_reqtps, a, b);
    if (rate)
        row_fn("late starts (> 1 ms)", c_late, a, b);
    row_fn("connections opened", c_conns, a, b);
    row_fn("client CPU (s)", c_cpu, a, b);
    row_fn("client CPU s / 100k req", c_cpu100k, a, b);
    print_errors(a);
    if (b)
        print_errors(b);
    if (a->interrupted || (b && b->interrupted))
        printf("  (interrupted: cut short by SIGINT; the figures cover what ran)\n");
}

void bench_report_nodes(const struct bench_result *r, const char *title)
{
    uint64_t total = 0;

    for (unsigned i = 0; i < r->n_nodes; i++)
        total += r->nodes[i].ok;
    printf("%s node counts (X-Routed-Node, successes):\n", title);
    if (!r->n_nodes)
        printf("  (none)\n");
    for (unsigned i = 0; i < r->n_nodes; i++)
        printf("  %-40s %10llu  %5.1f%%%s\n", r->nodes[i].name, (unsigned long long)r->nodes[i].ok,
               total ? 100.0 * (double)r->nodes[i].ok / (double)total : 0.0,
               r->nodes[i].errors ? "  (+ errors)" : "");
}

void bench_report_sweep_table(const struct bench_result *rows, unsigned n)
{
    printf("\n  %11s %10s %12s %10s %10s %10s %10s %8s\n", "concurrency", "req/s", "tok/s",
           "p50 ms", "p95 ms", "p99 ms", "ttft p50", "err %");
    for (unsigned i = 0; i < n; i++) {
        const struct bench_result *r = &rows[i];
        struct bench_summary lat, ttft, itl, tps;

        char t50[32] = "-";

        summaries(r, &lat, &ttft, &itl, &tps);
        if (ttft.n)
            snprintf(t50, sizeof(t50), "%.2f", ttft.p50);
        printf("  %11u %10.2f %12.2f %10.2f %10.2f %10.2f %10s %8.2f\n", r->concurrency,
               bench_result_rps(r), bench_result_tps(r), lat.p50, lat.p95, lat.p99, t50,
               error_rate(r));
    }
}

/* ---- SVG ---------------------------------------------------------------- */

#define SVG_W 860
#define SVG_H 520
#define PAD_L 96
#define PAD_R 96
#define PAD_T 92
#define PAD_B 78

/* A 1-2-2.5-5 step giving about <ticks> intervals up to <max>. */
static double nice_step(double max, int ticks)
{
    static const double steps[] = {1, 2, 2.5, 5, 10};
    double raw, mag;

    if (!(max > 0))
        return 1;
    raw = max / ticks;
    mag = pow(10, floor(log10(raw)));
    for (size_t i = 0; i < ARRAY_SIZE(steps); i++)
        if (steps[i] * mag >= raw)
            return steps[i] * mag;
    return 10 * mag;
}

static void fmt_num(char *out, size_t n, double v)
{
    if (fabs(v) >= 100 || v == floor(v))
        snprintf(out, n, "%.0f", v);
    else if (fabs(v) >= 1)
        snprintf(out, n, "%.1f", v);
    else
        snprintf(out, n, "%.3g", v);
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            if ((unsigned char)*s >= 0x20 || *s == '\t')
                fputc(*s, f);
        }
    }
}

struct axis {
    double max, step;
};

static struct axis make_axis(double vmax)
{
    struct axis a;

    a.step = nice_step(vmax > 0 ? vmax : 1, 5);
    a.max = ceil((vmax > 0 ? vmax : 1) / a.step) * a.step;
    if (a.max <= 0)
        a.max = a.step;
    return a;
}

int bench_report_sweep_svg(const char *path, const struct bench_conf *c,
                           const struct bench_result *rows, unsigned n)
{
    const double pw = SVG_W - PAD_L - PAD_R, plot_h = SVG_H - PAD_T - PAD_B;
    double xs[256], ty[256], ly[256], tmax = 0, lmax = 0, cmin = 1e18, cmax = 0;
    bool by_tokens = false, logx;
    struct axis ta, la;
    const char *tp_label;
    char num[32];
    FILE *f;
    int rc = 0;

    n = LX_MIN(n, 256u);
    for (unsigned i = 0; i < n; i++)
        if (rows[i].completion_tokens > 0)
            by_tokens = true;
    for (unsigned i = 0; i < n; i++) {
        struct bench_summary lat, ttft, itl, tps;

        summaries(&rows[i], &lat, &ttft, &itl, &tps);
        ty[i] = by_tokens ? bench_result_tps(&rows[i]) : bench_result_rps(&rows[i]);
        ly[i] = lat.p95;
        tmax = LX_MAX(tmax, ty[i]);
        lmax = LX_MAX(lmax, ly[i]);
        cmin = LX_MIN(cmin, (double)rows[i].concurrency);
        cmax = LX_MAX(cmax, (double)rows[i].concurrency);
    }
    ta = make_axis(tmax * 1.05);
    la = make_axis(lmax * 1.05);
    /* Concurrency levels usually double: a log scale spaces them evenly. */
    logx = n > 2 && cmin >= 1 && cmax / cmin >= 8;
    for (unsigned i = 0; i < n; i++) {
        double cval = rows[i].concurrency, frac;

        if (cmax == cmin)
            frac = 0.5;
        else if (logx)
            frac = (log(cval) - log(cmin)) / (log(cmax) - log(cmin));
        else
            frac = (cval - cmin) / (cmax - cmin);
        xs[i] = PAD_L + 30 + frac * (pw - 60);
    }
    tp_label = by_tokens ? "throughput (completion tokens/s)" : "throughput (requests/s)";

    f = fopen(path, "w");
    if (!f)
        return -errno;
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n",
            SVG_W, SVG_H, SVG_W, SVG_H);
    fprintf(f, "<title>llmux-bench sweep: throughput and p95 latency vs concurrency</title>\n");
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    fprintf(f,
            "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"17\" "
            "font-weight=\"bold\">Throughput and p95 latency vs concurrency</text>\n",
            SVG_W / 2);
    fprintf(f, "<text x=\"%d\" y=\"48\" text-anchor=\"middle\" fill=\"#555555\">", SVG_W / 2);
    xml_text(f, c->model);
    fprintf(f, " at ");
    xml_text(f, c->base_url);
    fprintf(f, " - prompt %u, max_tokens %u, %s, ", c->prompt_tokens, c->max_tokens,
            c->stream ? "streaming" : "non-streaming");
    if (c->duration_s > 0)
        fprintf(f, "%g s per level</text>\n", c->duration_s);
    else
        fprintf(f, "%llu requests per level</text>\n", (unsigned long long)c->num_requests);

    /* Grid and left axis (throughput). */
    for (double v = 0; v <= ta.max + ta.step / 2; v += ta.step) {
        double y = PAD_T + plot_h - v / ta.max * plot_h;

        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                PAD_L, y, PAD_L + pw, y);
        fmt_num(num, sizeof(num), v);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#1f5fa8\">%s</text>\n",
                PAD_L - 8, y + 4, num);
    }
    /* Right axis (latency). */
    for (double v = 0; v <= la.max + la.step / 2; v += la.step) {
        double y = PAD_T + plot_h - v / la.max * plot_h;

        fmt_num(num, sizeof(num), v);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#c2410c\">%s</text>\n", PAD_L + pw + 8,
                y + 4, num);
    }
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%.1f\" stroke=\"#1f5fa8\"/>\n", PAD_L,
            PAD_T, PAD_L, PAD_T + plot_h);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#c2410c\"/>\n",
            PAD_L + pw, PAD_T, PAD_L + pw, PAD_T + plot_h);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n", PAD_L,
            PAD_T + plot_h, PAD_L + pw, PAD_T + plot_h);
    /* X ticks: one per level. */
    for (unsigned i = 0; i < n; i++) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n",
                xs[i], PAD_T + plot_h, xs[i], PAD_T + plot_h + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%u</text>\n", xs[i],
                PAD_T + plot_h + 20, rows[i].concurrency);
    }
    /* Axis titles. */
    fprintf(f,
            "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\">"
            "client concurrency (requests in flight)%s</text>\n",
            PAD_L + pw / 2, SVG_H - 22, logx ? ", log scale" : "");
    fprintf(f,
            "<text transform=\"translate(24 %.1f) rotate(-90)\" text-anchor=\"middle\" "
            "font-size=\"13\" fill=\"#1f5fa8\">%s</text>\n",
            PAD_T + plot_h / 2, tp_label);
    fprintf(f,
            "<text transform=\"translate(%d %.1f) rotate(90)\" text-anchor=\"middle\" "
            "font-size=\"13\" fill=\"#c2410c\">p95 latency (ms)</text>\n",
            SVG_W - 24, PAD_T + plot_h / 2);

    /* Series: throughput (solid, circles), p95 latency (dashed, squares). */
    fprintf(f, "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"2.5\" points=\"");
    for (unsigned i = 0; i < n; i++)
        fprintf(f, "%.1f,%.1f ", xs[i], PAD_T + plot_h - ty[i] / ta.max * plot_h);
    fprintf(f, "\"/>\n<polyline fill=\"none\" stroke=\"#c2410c\" stroke-width=\"2.5\" "
               "stroke-dasharray=\"7 4\" points=\"");
    for (unsigned i = 0; i < n; i++)
        fprintf(f, "%.1f,%.1f ", xs[i], PAD_T + plot_h - ly[i] / la.max * plot_h);
    fprintf(f, "\"/>\n");
    for (unsigned i = 0; i < n; i++) {
        double y1 = PAD_T + plot_h - ty[i] / ta.max * plot_h;
        double y2 = PAD_T + plot_h - ly[i] / la.max * plot_h;

        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"#1f5fa8\"/>\n", xs[i], y1);
        fmt_num(num, sizeof(num), ty[i]);
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\" "
                "fill=\"#1f5fa8\">%s</text>\n",
                xs[i] - 5, y1 - 8, num);
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"8\" height=\"8\" fill=\"#c2410c\"/>\n",
                xs[i] - 4, y2 - 4);
        fmt_num(num, sizeof(num), ly[i]);
        fprintf(f,
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"start\" font-size=\"11\" "
                "fill=\"#c2410c\">%s</text>\n",
                xs[i] + 6, y2 + 16, num);
        if (rows[i].errors)
            fprintf(f,
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" "
                    "fill=\"#b91c1c\">%.1f%% errors</text>\n",
                    xs[i], PAD_T + plot_h - 8, error_rate(&rows[i]));
    }
    /* Legend: one row between the subtitle and the plot, never over a line. */
    fprintf(f,
            "<line x1=\"%d\" y1=\"66\" x2=\"%d\" y2=\"66\" stroke=\"#1f5fa8\" "
            "stroke-width=\"2.5\"/><circle cx=\"%d\" cy=\"66\" r=\"4.5\" fill=\"#1f5fa8\"/>\n",
            SVG_W / 2 - 250, SVG_W / 2 - 220, SVG_W / 2 - 235);
    fprintf(f, "<text x=\"%d\" y=\"70\">%s (left axis)</text>\n", SVG_W / 2 - 212,
            by_tokens ? "completion tokens/s" : "requests/s");
    fprintf(f,
            "<line x1=\"%d\" y1=\"66\" x2=\"%d\" y2=\"66\" stroke=\"#c2410c\" "
            "stroke-width=\"2.5\" stroke-dasharray=\"7 4\"/>"
            "<rect x=\"%d\" y=\"62\" width=\"8\" height=\"8\" fill=\"#c2410c\"/>\n",
            SVG_W / 2 + 40, SVG_W / 2 + 70, SVG_W / 2 + 51);
    fprintf(f, "<text x=\"%d\" y=\"70\">p95 latency, ms (right axis)</text>\n", SVG_W / 2 + 78);
    fprintf(f, "</svg>\n");
    if (ferror(f))
        rc = -EIO;
    if (fclose(f) && !rc)
        rc = -errno;
    return rc;
}
