/*
 * metrics.h - llmux-sim's Prometheus exposition: vLLM's metric names, labels
 * and histogram buckets, rendered from the engine's counters.
 *
 * Single-threaded: everything runs on the sim's one loop.
 */
#ifndef SIM_METRICS_H
#define SIM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/core/buf.h"

#define SIM_HIST_MAX_BUCKETS 32

/* A Prometheus histogram with fixed upper bounds (+Inf implied). */
struct sim_hist {
    const double *bounds; /* borrowed, ascending, n_bounds entries */
    size_t n_bounds;
    uint64_t counts[SIM_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
    double sum;                                /* seconds */
    uint64_t count;
};

/* vLLM's buckets, in seconds. */
enum sim_hist_kind { SIM_HIST_TTFT, SIM_HIST_E2E, SIM_HIST_ITL };

void sim_hist_init(struct sim_hist *h, enum sim_hist_kind kind);
void sim_hist_observe(struct sim_hist *h, double seconds);

struct sim_engine_stats;

/*
 * Appends the whole /metrics text for <st> to <out>, labelled with
 * model_name=<model> and engine="0". Returns 0 or LX_ENOMEM.
 */
int sim_metrics_render(struct lx_buf *out, const struct sim_engine_stats *st, const char *model);

#endif /* SIM_METRICS_H */
