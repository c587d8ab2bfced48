/*
 * budget.c - a pool's retry budget over a sliding window; see budget.h.
 *
 * Each bucket is one 64-bit word, (second << 32 | count), so that reading a
 * bucket's second and count, and resetting a stale bucket while counting
 * into it, are single atomic operations: no thread ever sees a count of one
 * second under the stamp of another. A bucket's index is its second modulo
 * the window, so the bucket a second writes to holds either that second,
 * an older one (at least a window ago: stale, replaced) or a newer one (the
 * caller's clock is behind another thread's: counted into, kept).
 */
#include "budget.h"

#include <stddef.h>

#define W LX_BUDGET_WINDOW_S
#define COUNT_MAX UINT32_MAX

static uint32_t second_of(uint64_t now_ms)
{
    return (uint32_t)(now_ms / 1000);
}

static uint64_t word(uint32_t second, uint32_t count)
{
    return (uint64_t)second << 32 | count;
}

static uint32_t word_count(uint64_t w)
{
    return (uint32_t)w;
}

/* Seconds from the bucket's second to <second>: 0 for the current bucket,
 * negative for one newer than the caller's clock. */
static int32_t word_age(uint64_t w, uint32_t second)
{
    return (int32_t)(second - (uint32_t)(w >> 32));
}

/* What the bucket counts for a window ending at <second>: its count unless
 * it is a window old or more. */
static uint64_t live_count(uint64_t w, uint32_t second)
{
    return word_age(w, second) < W ? word_count(w) : 0;
}

/* <w> with one more count at <second>: a stale bucket starts again at 1, a
 * current or newer one grows (saturating). */
static uint64_t bumped(uint64_t w, uint32_t second)
{
    if (word_age(w, second) > 0)
        return word(second, 1);
    return w + (word_count(w) < COUNT_MAX);
}

static uint64_t allowed(const struct lx_budget *b, uint64_t requests)
{
    /* The epsilon keeps 20% of 5 requests at 1, not 0.9999... */
    return (uint64_t)(b->percent * (double)requests / 100.0 + b->min_per_s * W + 1e-9);
}

void lx_budget_init(struct lx_budget *b, double percent, double min_per_s)
{
    b->percent = percent > 0 ? percent : 0;
    b->min_per_s = min_per_s > 0 ? min_per_s : 0;
    for (size_t i = 0; i < W; i++) {
        atomic_init(&b->requests[i], 0);
        atomic_init(&b->extra[i], 0);
    }
}

void lx_budget_carry(struct lx_budget *to, const struct lx_budget *from)
{
    for (size_t i = 0; i < W; i++) {
        atomic_store_explicit(&to->requests[i],
                              atomic_load_explicit(&from->requests[i], memory_order_relaxed),
                              memory_order_relaxed);
        atomic_store_explicit(&to->extra[i],
                              atomic_load_explicit(&from->extra[i], memory_order_relaxed),
                              memory_order_relaxed);
    }
}

void lx_budget_note_request(struct lx_budget *b, uint64_t now_ms)
{
    uint32_t second = second_of(now_ms);
    atomic_uint_fast64_t *slot = &b->requests[second % W];
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(slot, &old, bumped(old, second),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* The window's requests, and its extra attempts outside bucket <skip>. */
static void window_sums(const struct lx_budget *b, uint32_t second, size_t skip, uint64_t *requests,
                        uint64_t *extra)
{
    *requests = 0;
    *extra = 0;
    for (size_t i = 0; i < W; i++) {
        *requests +=
            live_count(atomic_load_explicit(&b->requests[i], memory_order_relaxed), second);
        if (i != skip)
            *extra += live_count(atomic_load_explicit(&b->extra[i], memory_order_relaxed), second);
    }
}

bool lx_budget_try_spend(struct lx_budget *b, uint64_t now_ms)
{
    uint32_t second = second_of(now_ms);
    size_t at = second % W;
    atomic_uint_fast64_t *slot = &b->extra[at];
    uint64_t old = atomic_load_explicit(slot, memory_order_relaxed);
    uint64_t requests, extra;

    /* The compare-and-swap only succeeds on the bucket value the sum was
     * made with: spenders of the same second are serialised by it, so
     * together they never pass the budget. */
    do {
        window_sums(b, second, at, &requests, &extra);
        extra += live_count(old, second);
        if (extra >= allowed(b, requests) || bumped(old, second) == old)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(slot, &old, bumped(old, second),
                                                    memory_order_relaxed, memory_order_relaxed));
    return true;
}

void lx_budget_usage(const struct lx_budget *b, uint64_t now_ms, uint64_t *requests,
                     uint64_t *extra, uint64_t *allowed_out)
{
    window_sums(b, second_of(now_ms), W, requests, extra);
    *allowed_out = allowed(b, *requests);
}
