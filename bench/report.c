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
#include <stdlib.h>
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

/* ---- SVG ----------------------------------------------------------------
 *
 * Two panels over one concurrency axis: throughput (left axis) with p95
 * latency and, with --stream, p95 TTFT (right axis, ms) on top; the error
 * rate (%) in a strip below, so that errors are a line, not a footnote.
 * Values are not written next to the points, where they collide with each
 * other and with the lines, but in a table under the x axis, one row per
 * series and one column per level; when levels are closer than a cell is
 * wide, every k-th column is shown (the JSON and CSV have them all).
 */

#define SVG_W 860
#define PAD_L 110
#define PAD_R 96
#define PAD_T 92
#define MAIN_H 250
#define ERR_GAP 22 /* between the panels */
#define ERR_H 70
#define ROW_H 16      /* a row of the value table */
#define CHAR_W_11 6.4 /* px per character at font-size 11, a little over Helvetica's digits */
#define CHAR_W_12 7.0 /* the same at 12 */
#define MAX_LEVELS 256

#define C_TP "#1f5fa8"
#define C_LAT "#c2410c"
#define C_TTFT "#7c3aed"
#define C_ERR "#b91c1c"

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

static struct axis make_axis(double vmax, int ticks)
{
    struct axis a;

    a.step = nice_step(vmax > 0 ? vmax : 1, ticks);
    a.max = ceil((vmax > 0 ? vmax : 1) / a.step) * a.step;
    if (a.max <= 0)
        a.max = a.step;
    return a;
}

/* One series of the chart: its values per level (NAN = none) and looks. */
struct series {
    const char *id;     /* class="series-<id>", for tests and styling */
    const char *legend; /* legend text */
    const char *row;    /* value table row title */
    const char *color;
    const char *dash; /* stroke-dasharray, NULL = solid */
    int marker;       /* 0 circle, 1 square, 2 diamond */
    double v[MAX_LEVELS];
};

/* Everything the drawing needs, computed once. */
struct sweep_plot {
    unsigned n;
    double xs[MAX_LEVELS];
    bool logx;
    unsigned stride; /* label every stride-th level */
    bool show[MAX_LEVELS];
    struct axis left, right, err;
    struct series tp, lat, ttft, err_rate;
    bool has_ttft;
    double main_b, err_t, err_b; /* y of the main panel's bottom, the strip's top and bottom */
    double height;               /* of the whole image */
};

static double y_of(double v, double max, double top, double h)
{
    return top + h - (isfinite(v) ? v : 0) / max * h;
}

static void marker(FILE *f, int kind, double x, double y, const char *color)
{
    if (kind == 1)
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"8\" height=\"8\" fill=\"%s\"/>\n", x - 4,
                y - 4, color);
    else if (kind == 2)
        fprintf(f, "<path d=\"M%.1f %.1fl5 5l-5 5l-5 -5z\" fill=\"%s\"/>\n", x, y - 5, color);
    else
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%s\"/>\n", x, y, color);
}

static void draw_series(FILE *f, const struct sweep_plot *sp, const struct series *s, double max,
                        double top, double h)
{
    fprintf(f,
            "<polyline class=\"series-%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2.5\"%s%s%s "
            "points=\"",
            s->id, s->color, s->dash ? " stroke-dasharray=\"" : "", s->dash ? s->dash : "",
            s->dash ? "\"" : "");
    for (unsigned i = 0; i < sp->n; i++)
        if (isfinite(s->v[i]))
            fprintf(f, "%.1f,%.1f ", sp->xs[i], y_of(s->v[i], max, top, h));
    fprintf(f, "\"/>\n");
    for (unsigned i = 0; i < sp->n; i++)
        if (isfinite(s->v[i]))
            marker(f, s->marker, sp->xs[i], y_of(s->v[i], max, top, h), s->color);
}

/* Which levels get a label: the widest cell decides the stride. */
static void choose_labels(struct sweep_plot *sp)
{
    const struct series *all[] = {&sp->tp, &sp->lat, &sp->ttft, &sp->err_rate};
    double width = 0, gap = 1e18;
    char num[32];
    unsigned last = 0;

    for (unsigned i = 0; i < sp->n; i++) {
        for (size_t k = 0; k < ARRAY_SIZE(all); k++) {
            if (!isfinite(all[k]->v[i]))
                continue;
            fmt_num(num, sizeof(num), all[k]->v[i]);
            width = LX_MAX(width, (double)strlen(num) * CHAR_W_11 + 10);
        }
        if (i)
            gap = LX_MIN(gap, sp->xs[i] - sp->xs[i - 1]);
    }
    sp->stride = sp->n > 1 && gap < width ? (unsigned)ceil(width / LX_MAX(gap, 0.1)) : 1;
    for (unsigned i = 0; i < sp->n; i++) {
        sp->show[i] = i % sp->stride == 0;
        if (sp->show[i])
            last = i;
    }
    /* The last level is the one people look for: shown too, or in place of
     * the one before it when they would touch (but the first stays). Shown
     * levels before <last> are at least stride gaps, so a cell's width, away. */
    if (sp->n > 1 && last != sp->n - 1) {
        if (sp->xs[sp->n - 1] - sp->xs[last] >= width) {
            sp->show[sp->n - 1] = true;
        } else if (last) {
            sp->show[last] = false;
            sp->show[sp->n - 1] = true;
        }
    }
    sp->height = sp->err_b + 64 + (sp->has_ttft ? 3 : 2) * ROW_H + 14;
}

static void plan(struct sweep_plot *sp, const struct bench_conf *c, const struct bench_result *rows,
                 unsigned n)
{
    const double pw = SVG_W - PAD_L - PAD_R;
    double tmax = 0, rmax = 0, emax = 0, cmin = 1e18, cmax = 0;
    bool by_tokens = false;

    sp->n = n;
    for (unsigned i = 0; i < n; i++)
        if (rows[i].completion_tokens > 0)
            by_tokens = true;
    sp->tp = (struct series){"throughput",
                             by_tokens ? "tokens/s (left axis)" : "requests/s (left axis)",
                             by_tokens ? "tokens/s" : "requests/s",
                             C_TP,
                             NULL,
                             0,
                             {0}};
    sp->lat = (struct series){
        "latency", "p95 latency ms (right)", "p95 latency ms", C_LAT, "7 4", 1, {0}};
    sp->ttft = (struct series){"ttft", "p95 TTFT ms (right)", "p95 TTFT ms", C_TTFT, "2 3", 2, {0}};
    sp->err_rate =
        (struct series){"errors", "errors % (lower panel)", "errors %", C_ERR, NULL, 0, {0}};
    sp->has_ttft = false;
    for (unsigned i = 0; i < n; i++) {
        struct bench_summary lat, ttft, itl, tps;

        summaries(&rows[i], &lat, &ttft, &itl, &tps);
        sp->tp.v[i] = by_tokens ? bench_result_tps(&rows[i]) : bench_result_rps(&rows[i]);
        sp->lat.v[i] = lat.n ? lat.p95 : NAN;
        sp->ttft.v[i] = c->stream && ttft.n ? ttft.p95 : NAN;
        sp->has_ttft |= isfinite(sp->ttft.v[i]);
        sp->err_rate.v[i] = error_rate(&rows[i]);
        tmax = LX_MAX(tmax, sp->tp.v[i]);
        rmax = LX_MAX(rmax, isfinite(sp->lat.v[i]) ? sp->lat.v[i] : 0);
        rmax = LX_MAX(rmax, isfinite(sp->ttft.v[i]) ? sp->ttft.v[i] : 0);
        emax = LX_MAX(emax, sp->err_rate.v[i]);
        cmin = LX_MIN(cmin, (double)rows[i].concurrency);
        cmax = LX_MAX(cmax, (double)rows[i].concurrency);
    }
    sp->left = make_axis(tmax * 1.05, 5);
    sp->right = make_axis(rmax * 1.05, 5);
    /* 0..1 % at least: a run without errors shows a flat line on the floor. */
    sp->err = make_axis(LX_MAX(emax * 1.05, 1), 2);
    /* Concurrency levels usually double: a log scale spaces them evenly. */
    sp->logx = n > 2 && cmin >= 1 && cmax / cmin >= 8;
    for (unsigned i = 0; i < n; i++) {
        double cval = rows[i].concurrency, frac;

        if (cmax == cmin)
            frac = 0.5;
        else if (sp->logx)
            frac = (log(cval) - log(cmin)) / (log(cmax) - log(cmin));
        else
            frac = (cval - cmin) / (cmax - cmin);
        sp->xs[i] = PAD_L + 30 + frac * (pw - 60);
    }
    sp->main_b = PAD_T + MAIN_H;
    sp->err_t = sp->main_b + ERR_GAP;
    sp->err_b = sp->err_t + ERR_H;
    choose_labels(sp);
}

static void draw_axes(FILE *f, const struct sweep_plot *sp, const struct bench_result *rows)
{
    const double pw = SVG_W - PAD_L - PAD_R;
    char num[32];

    for (double v = 0; v <= sp->left.max + sp->left.step / 2; v += sp->left.step) {
        double y = y_of(v, sp->left.max, PAD_T, MAIN_H);

        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
                PAD_L, y, PAD_L + pw, y);
        fmt_num(num, sizeof(num), v);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%s</text>\n",
                PAD_L - 8, y + 4, C_TP, num);
    }
    for (double v = 0; v <= sp->right.max + sp->right.step / 2; v += sp->right.step) {
        fmt_num(num, sizeof(num), v);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", PAD_L + pw + 8,
                y_of(v, sp->right.max, PAD_T, MAIN_H) + 4, sp->has_ttft ? "#555555" : C_LAT, num);
    }
    for (double v = 0; v <= sp->err.max + sp->err.step / 2; v += sp->err.step) {
        double y = y_of(v, sp->err.max, sp->err_t, ERR_H);

        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#f0e0e0\"/>\n",
                PAD_L, y, PAD_L + pw, y);
        fmt_num(num, sizeof(num), v);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"%s\">%s</text>\n",
                PAD_L - 8, y + 4, C_ERR, num);
    }
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\"/>\n", PAD_L, PAD_T,
            PAD_L, sp->main_b, C_TP);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", PAD_L + pw,
            PAD_T, PAD_L + pw, sp->main_b, sp->has_ttft ? "#555555" : C_LAT);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"%s\"/>\n", PAD_L,
            sp->err_t, PAD_L, sp->err_b, C_ERR);
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n", PAD_L,
            sp->err_b, PAD_L + pw, sp->err_b);
    for (unsigned i = 0; i < sp->n; i++) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333333\"/>\n",
                sp->xs[i], sp->err_b, sp->xs[i], sp->err_b + 5);
        if (sp->show[i])
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%u</text>\n", sp->xs[i],
                    sp->err_b + 19, rows[i].concurrency);
    }
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">"
            "client concurrency (requests in flight)%s</text>\n",
            PAD_L + pw / 2, sp->err_b + 38, sp->logx ? ", log scale" : "");
    fprintf(f,
            "<text transform=\"translate(24 %.1f) rotate(-90)\" text-anchor=\"middle\" "
            "font-size=\"13\" fill=\"%s\">throughput (%s)</text>\n",
            PAD_T + MAIN_H / 2.0, C_TP,
            strcmp(sp->tp.row, "tokens/s") ? "requests/s" : "completion tokens/s");
    fprintf(f,
            "<text transform=\"translate(%d %.1f) rotate(90)\" text-anchor=\"middle\" "
            "font-size=\"13\" fill=\"%s\">%s</text>\n",
            SVG_W - 24, PAD_T + MAIN_H / 2.0, sp->has_ttft ? "#555555" : C_LAT,
            sp->has_ttft ? "p95 latency, p95 TTFT (ms)" : "p95 latency (ms)");
    fprintf(f,
            "<text transform=\"translate(24 %.1f) rotate(-90)\" text-anchor=\"middle\" "
            "font-size=\"13\" fill=\"%s\">errors %%</text>\n",
            sp->err_t + ERR_H / 2.0, C_ERR);
}

/* The values, one row per series under the x axis, right of their titles. */
static void draw_table(FILE *f, const struct sweep_plot *sp)
{
    const struct series *all[] = {&sp->tp, &sp->lat, &sp->ttft, &sp->err_rate};
    double y = sp->err_b + 64;
    char num[32];

    for (size_t k = 0; k < ARRAY_SIZE(all); k++) {
        if (all[k] == &sp->ttft && !sp->has_ttft)
            continue;
        fprintf(f,
                "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\" "
                "fill=\"%s\">%s</text>\n",
                PAD_L - 8, y, all[k]->color, all[k]->row);
        for (unsigned i = 0; i < sp->n; i++) {
            if (!sp->show[i] || !isfinite(all[k]->v[i]))
                continue;
            fmt_num(num, sizeof(num), all[k]->v[i]);
            fprintf(f,
                    "<text class=\"value-%s\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                    "font-size=\"11\" fill=\"%s\">%s</text>\n",
                    all[k]->id, sp->xs[i], y, all[k]->color, num);
        }
        y += ROW_H;
    }
}

/* One legend row between the subtitle and the plot, items laid end to end. */
static void draw_legend(FILE *f, const struct sweep_plot *sp)
{
    const struct series *all[] = {&sp->tp, &sp->lat, &sp->ttft, &sp->err_rate};
    double total = 0, x;

    for (size_t k = 0; k < ARRAY_SIZE(all); k++)
        if (all[k] != &sp->ttft || sp->has_ttft)
            total += 38 + strlen(all[k]->legend) * CHAR_W_12 + 18;
    x = (SVG_W - total) / 2;
    for (size_t k = 0; k < ARRAY_SIZE(all); k++) {
        const struct series *s = all[k];

        if (s == &sp->ttft && !sp->has_ttft)
            continue;
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"66\" x2=\"%.1f\" y2=\"66\" stroke=\"%s\" "
                "stroke-width=\"2.5\"%s%s%s/>\n",
                x, x + 30, s->color, s->dash ? " stroke-dasharray=\"" : "", s->dash ? s->dash : "",
                s->dash ? "\"" : "");
        marker(f, s->marker, x + 15, 66, s->color);
        fprintf(f, "<text x=\"%.1f\" y=\"70\">%s</text>\n", x + 38, s->legend);
        x += 38 + strlen(s->legend) * CHAR_W_12 + 18;
    }
}

int bench_report_sweep_svg(const char *path, const struct bench_conf *c,
                           const struct bench_result *rows, unsigned n)
{
    struct sweep_plot *sp = calloc(1, sizeof(*sp));
    FILE *f;
    int rc = 0;

    if (!sp)
        return -ENOMEM;
    plan(sp, c, rows, LX_MIN(n, (unsigned)MAX_LEVELS));
    f = fopen(path, "w");
    if (!f) {
        rc = -errno;
        goto out_free;
    }
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" "
            "viewBox=\"0 0 %d %.0f\" font-family=\"Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n",
            SVG_W, sp->height, SVG_W, sp->height);
    fprintf(f, "<title>llmux-bench sweep: throughput, latency and errors vs concurrency</title>\n");
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    fprintf(f,
            "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"17\" "
            "font-weight=\"bold\">Throughput, latency and errors vs concurrency</text>\n",
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
    draw_axes(f, sp, rows);
    draw_series(f, sp, &sp->tp, sp->left.max, PAD_T, MAIN_H);
    draw_series(f, sp, &sp->lat, sp->right.max, PAD_T, MAIN_H);
    if (sp->has_ttft)
        draw_series(f, sp, &sp->ttft, sp->right.max, PAD_T, MAIN_H);
    draw_series(f, sp, &sp->err_rate, sp->err.max, sp->err_t, ERR_H);
    draw_table(f, sp);
    draw_legend(f, sp);
    fprintf(f, "</svg>\n");
    if (ferror(f))
        rc = -EIO;
    if (fclose(f) && !rc)
        rc = -errno;
out_free:
    free(sp);
    return rc;
}
