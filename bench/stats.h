/*
 * stats.h - the figures of a benchmark phase.
 *
 * Per-request values (latency, time to first token) are kept exactly, one
 * double each, and their percentiles interpolate linearly between the two
 * nearest ranks (numpy's and the first seed's method), so that a run of 60
 * requests reports what a spreadsheet would. Past BENCH_SAMPLES_EXACT values
 * (a long --duration run) the exact array stops growing and percentiles come
 * from the histogram every series also feeds. Values that come many per
 * request (inter-token gaps) only go into a log-linear histogram: constant
 * memory (46 KiB), at most 0.4 % relative error, exact min, max and mean.
 *
 * Not thread-safe; one phase owns its stats.
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

/* Summary of a distribution; every field 0 when n is 0. */
struct bench_summary {
    uint64_t n;
    double min, mean, p50, p90, p95, p99, max;
};

#define BENCH_HIST_SUB 128 /* sub-buckets per power of two: 1/128 resolution */
#define BENCH_HIST_EXP 44  /* powers of two above the linear range: up to 2^51 ns */
#define BENCH_HIST_BUCKETS (2 * BENCH_HIST_SUB + BENCH_HIST_EXP * BENCH_HIST_SUB)

struct bench_hist {
    uint64_t *counts; /* BENCH_HIST_BUCKETS, NULL until the first add */
    uint64_t n;
    uint64_t min, max; /* exact, in the unit added (ns here) */
    double sum;
};

#define BENCH_SAMPLES_EXACT (1u << 20) /* values kept exactly: 8 MiB */

struct bench_samples {
    double *v; /* the first BENCH_SAMPLES_EXACT values; NULL until a push */
    size_t n;  /* values pushed, kept or not */
    size_t cap;
    double sum;
    int sorted;             /* 1 after bench_samples_sort, until the next push */
    double unit;            /* value of one histogram step (1e-6 for ms kept as ns) */
    struct bench_hist hist; /* every value, in units */
};

/* <unit>: the resolution of the histogram behind the exact values. */
void bench_samples_init(struct bench_samples *s, double unit);
void bench_samples_deinit(struct bench_samples *s);
/* Appends one value; aborts on OOM (bounded by the number of requests). */
void bench_samples_push(struct bench_samples *s, double v);
void bench_samples_sort(struct bench_samples *s);
/* The <p>-th percentile (0..100) of sorted samples, interpolated; 0 if empty. */
double bench_samples_pct(const struct bench_samples *s, double p);
/* Sorts if needed and summarises: exact while every value was kept, else
 * percentiles from the histogram (min, max and mean stay exact). */
void bench_samples_summary(struct bench_samples *s, struct bench_summary *out);

void bench_hist_init(struct bench_hist *h);
void bench_hist_deinit(struct bench_hist *h);
void bench_hist_add(struct bench_hist *h, uint64_t v);
/* The <p>-th percentile (0..100): the midpoint of the bucket holding that
 * rank, clamped to [min, max]; 0 if empty. */
double bench_hist_pct(const struct bench_hist *h, double p);
/* Summary with every value multiplied by <scale> (1e-6 turns ns into ms). */
void bench_hist_summary(const struct bench_hist *h, double scale, struct bench_summary *out);

#endif /* BENCH_STATS_H */
