/*
 * budget.h - a pool's retry budget: how many extra attempts (retries, hedges,
 * stream resumes) its requests may make together, so that a failing pool is
 * not sent 1 + MAX_RETRIES times its traffic.
 *
 * Over a sliding window of LX_BUDGET_WINDOW_S seconds the pool may make
 *
 *     percent / 100 * (client requests in the window) + min_per_s * LX_BUDGET_WINDOW_S
 *
 * extra attempts (RETRY_BUDGET_PERCENT, RETRY_BUDGET_MIN_PER_SECOND; the
 * reasoning behind the defaults is in docs/CONFIG.md, "Retry budget"). The
 * window is a ring of one-second buckets, each an atomic word holding its
 * second and its count, one ring for requests and one for extra attempts: a
 * bucket whose second has left the window counts as empty and is reset by
 * the next write. The floor makes the budget usable at low traffic and right
 * after start, when the window holds few requests.
 *
 * Threading: every function may be called from any thread, concurrently;
 * nothing locks. lx_budget_note_request() is one compare-and-swap in the
 * common case; lx_budget_try_spend() reads the two rings (20 words) and
 * compare-and-swaps one, so concurrent spenders of one second never exceed
 * the budget together. Callers pass their own clock (lx_now_ms()); clocks of
 * different threads may disagree a little, and a time earlier than what the
 * ring already holds is counted in the newer bucket rather than erasing it.
 */
#ifndef LX_BUDGET_H
#define LX_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define LX_BUDGET_WINDOW_S 10 /* seconds of history the budget looks at */

struct lx_budget {
    double percent;   /* extra attempts per 100 requests of the window, 0..1000 */
    double min_per_s; /* extra attempts allowed per second whatever the traffic, >= 0 */
    /* Bucket words: the second (lx_now_ms() / 1000, low 32 bits) in the high
     * half, the count in the low half; index second % LX_BUDGET_WINDOW_S. */
    atomic_uint_fast64_t requests[LX_BUDGET_WINDOW_S]; /* client requests that reached the pool */
    atomic_uint_fast64_t extra[LX_BUDGET_WINDOW_S];    /* extra attempts granted */
};

/* Sets <b> (caller's storage, no _deinit needed) to an empty window with
 * these limits; negative values count as 0. Not concurrent with other calls
 * on <b>. */
void lx_budget_init(struct lx_budget *b, double percent, double min_per_s);
/* Copies the window of <from> (another snapshot's pool) into <to>, keeping
 * <to>'s limits, so that a new registry does not start with an empty
 * window. <to> must not be in use yet; <from> may be. */
void lx_budget_carry(struct lx_budget *to, const struct lx_budget *from);
/* A client request arrived at the pool (once per request, not per attempt). */
void lx_budget_note_request(struct lx_budget *b, uint64_t now_ms);
/* Asks for one extra attempt (a retry, a hedge or a stream resume): true,
 * and counted, when the window's extra attempts stay within the budget;
 * false, and nothing counted, otherwise. */
bool lx_budget_try_spend(struct lx_budget *b, uint64_t now_ms);
/* The window as seen at <now_ms>: its requests and extra attempts so far,
 * and the extra attempts it allows in all (for /stats and tests). */
void lx_budget_usage(const struct lx_budget *b, uint64_t now_ms, uint64_t *requests,
                     uint64_t *extra, uint64_t *allowed);

#endif /* LX_BUDGET_H */
