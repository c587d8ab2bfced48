/*
 * stats.c - percentiles of exact samples, a log-linear histogram, and the life
 * cycle of a phase's results; see stats.h and bench.h.
 *
 * Histogram layout (values in ns for inter-token gaps): values below
 * 2 * BENCH_HIST_SUB each have their own bucket; above, every power of two
 * [2^e, 2^(e+1)) is cut into BENCH_HIST_SUB equal buckets, so a bucket is at
 * most 1/128 of its values wide and its midpoint is within 0.4 % of any of
 * them (HdrHistogram's scheme with 2 significant digits).
 */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../src/core/lx.h"
#include "bench.h"

/* ---- exact samples ------------------------------------------------------ */

void bench_samples_init(struct bench_samples *s, double unit)
{
    memset(s, 0, sizeof(*s));
    s->unit = unit;
    bench_hist_init(&s->hist);
}

void bench_samples_deinit(struct bench_samples *s)
{
    free(s->v);
    bench_hist_deinit(&s->hist);
    memset(s, 0, sizeof(*s));
}

void bench_samples_push(struct bench_samples *s, double v)
{
    if (s->n < BENCH_SAMPLES_EXACT) {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 1024;
            s->v = lx_realloc(s->v, s->cap * sizeof(*s->v));
        }
        s->v[s->n] = v;
        s->sorted = 0;
    }
    s->n++;
    s->sum += v;
    bench_hist_add(&s->hist, v > 0 ? (uint64_t)llround(v / s->unit) : 0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

void bench_samples_sort(struct bench_samples *s)
{
    size_t kept = LX_MIN(s->n, (size_t)BENCH_SAMPLES_EXACT);

    if (!s->sorted && kept > 1)
        qsort(s->v, kept, sizeof(*s->v), cmp_double);
    s->sorted = 1;
}

double bench_samples_pct(const struct bench_samples *s, double p)
{
    double k, frac;
    size_t lo;

    if (s->n == 0)
        return 0;
    if (s->n > BENCH_SAMPLES_EXACT)
        return bench_hist_pct(&s->hist, p) * s->unit;
    LX_ASSERT(s->sorted);
    /* Rank (n - 1) * p between the two nearest samples, as numpy's default. */
    k = (double)(s->n - 1) * (p / 100.0);
    lo = (size_t)k;
    if (lo >= s->n - 1)
        return s->v[s->n - 1];
    frac = k - (double)lo;
    return s->v[lo] + (s->v[lo + 1] - s->v[lo]) * frac;
}

void bench_samples_summary(struct bench_samples *s, struct bench_summary *out)
{
    memset(out, 0, sizeof(*out));
    if (s->n == 0)
        return;
    if (s->n > BENCH_SAMPLES_EXACT) {
        bench_hist_summary(&s->hist, s->unit, out);
        out->mean = s->sum / (double)s->n;
        return;
    }
    bench_samples_sort(s);
    out->n = s->n;
    out->min = s->v[0];
    out->max = s->v[s->n - 1];
    out->mean = s->sum / (double)s->n;
    out->p50 = bench_samples_pct(s, 50);
    out->p90 = bench_samples_pct(s, 90);
    out->p95 = bench_samples_pct(s, 95);
    out->p99 = bench_samples_pct(s, 99);
}

/* ---- histogram ---------------------------------------------------------- */

#define LINEAR_MAX (2 * BENCH_HIST_SUB) /* values below have exact buckets */
#define SUB_BITS 7                      /* log2(BENCH_HIST_SUB) */

static size_t hist_index(uint64_t v)
{
    unsigned msb, shift;

    if (v < LINEAR_MAX)
        return (size_t)v;
    msb = 63u - (unsigned)__builtin_clzll(v);
    if (msb >= SUB_BITS + 1 + BENCH_HIST_EXP)
        return BENCH_HIST_BUCKETS - 1;
    shift = msb - SUB_BITS;
    return LINEAR_MAX + (size_t)(msb - SUB_BITS - 1) * BENCH_HIST_SUB +
           (size_t)((v >> shift) - BENCH_HIST_SUB);
}

/* Midpoint of bucket <i>, the inverse of hist_index. */
static double hist_value(size_t i)
{
    size_t e, sub;
    unsigned shift;
    double lo;

    if (i < LINEAR_MAX)
        return (double)i;
    e = (i - LINEAR_MAX) / BENCH_HIST_SUB;
    sub = (i - LINEAR_MAX) % BENCH_HIST_SUB;
    shift = (unsigned)e + 1;
    lo = ldexp((double)(BENCH_HIST_SUB + sub), (int)shift);
    return lo + ldexp(1.0, (int)shift) / 2;
}

void bench_hist_init(struct bench_hist *h)
{
    memset(h, 0, sizeof(*h));
}

void bench_hist_deinit(struct bench_hist *h)
{
    free(h->counts);
    memset(h, 0, sizeof(*h));
}

void bench_hist_add(struct bench_hist *h, uint64_t v)
{
    if (!h->counts)
        h->counts = lx_calloc(BENCH_HIST_BUCKETS, sizeof(*h->counts));
    h->counts[hist_index(v)]++;
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

double bench_hist_pct(const struct bench_hist *h, double p)
{
    uint64_t rank, seen = 0;
    double v;

    if (h->n == 0)
        return 0;
    /* The smallest value with at least p % of the values at or below it. */
    rank = (uint64_t)ceil((double)h->n * p / 100.0);
    if (rank < 1)
        rank = 1;
    for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            v = hist_value(i);
            if (v < (double)h->min)
                v = (double)h->min;
            if (v > (double)h->max)
                v = (double)h->max;
            return v;
        }
    }
    return (double)h->max;
}

void bench_hist_summary(const struct bench_hist *h, double scale, struct bench_summary *out)
{
    memset(out, 0, sizeof(*out));
    if (h->n == 0)
        return;
    out->n = h->n;
    out->min = (double)h->min * scale;
    out->max = (double)h->max * scale;
    out->mean = h->sum / (double)h->n * scale;
    out->p50 = bench_hist_pct(h, 50) * scale;
    out->p90 = bench_hist_pct(h, 90) * scale;
    out->p95 = bench_hist_pct(h, 95) * scale;
    out->p99 = bench_hist_pct(h, 99) * scale;
}

/* ---- a phase's results -------------------------------------------------- */

static const char *const err_names[BENCH_ERR_MAX] = {
    [BENCH_ERR_HTTP] = "http",         [BENCH_ERR_CONNECT] = "connect",
    [BENCH_ERR_TIMEOUT] = "timeout",   [BENCH_ERR_CLOSED] = "closed",
    [BENCH_ERR_PROTOCOL] = "protocol", [BENCH_ERR_STREAM] = "stream",
};

const char *bench_err_name(enum bench_err e)
{
    return e < BENCH_ERR_MAX ? err_names[e] : "?";
}

void bench_result_init(struct bench_result *r, const char *label)
{
    memset(r, 0, sizeof(*r));
    r->label = label;
    r->loop = "closed";
    bench_samples_init(&r->latency_ms, 1e-6); /* ns steps */
    bench_samples_init(&r->ttft_ms, 1e-6);
    bench_samples_init(&r->req_tps, 1e-3);
    bench_hist_init(&r->itl);
}

void bench_result_deinit(struct bench_result *r)
{
    bench_samples_deinit(&r->latency_ms);
    bench_samples_deinit(&r->ttft_ms);
    bench_samples_deinit(&r->req_tps);
    bench_hist_deinit(&r->itl);
    for (unsigned i = 0; i < r->n_nodes; i++)
        free(r->nodes[i].name);
    free(r->nodes);
    for (unsigned i = 0; i < r->n_samples; i++)
        free(r->samples[i].body);
    memset(r, 0, sizeof(*r));
}

void bench_result_finish(struct bench_result *r)
{
    bench_samples_sort(&r->latency_ms);
    bench_samples_sort(&r->ttft_ms);
    bench_samples_sort(&r->req_tps);
}

double bench_result_tps(const struct bench_result *r)
{
    return r->wall_s > 0 ? (double)r->completion_tokens / r->wall_s : 0;
}

double bench_result_rps(const struct bench_result *r)
{
    return r->wall_s > 0 ? (double)r->ok / r->wall_s : 0;
}

double bench_multiplier(const struct bench_result *a, const struct bench_result *b, bool *by_tokens)
{
    double ta = bench_result_tps(a), tb = bench_result_tps(b);

    *by_tokens = ta > 0 && tb > 0;
    if (*by_tokens)
        return tb / ta;
    ta = bench_result_rps(a);
    return ta > 0 ? bench_result_rps(b) / ta : 0;
}
