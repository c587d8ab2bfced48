/*
 * admit.c - admission control and wait queues; see admit.h.
 *
 * The lost-wakeup race between a request that queues because the limit is
 * reached and a release that sees an empty queue is closed by ordering (all
 * sequentially consistent): a queuing request first publishes itself (len++)
 * and then re-checks for a free slot; a release first frees its slot and then
 * looks for waiters. One of the two always sees the other.
 */
#include "admit.h"

#include "../core/lx.h"

void lx_waitq_init(struct lx_waitq *q)
{
    uv_mutex_init(&q->lock);
    lx_list_init(&q->waiters);
    atomic_init(&q->len, 0);
}

void lx_waitq_deinit(struct lx_waitq *q)
{
    uv_mutex_destroy(&q->lock);
}

static void push_locked(struct lx_waitq *q, struct lx_waiter *w, bool front)
{
    w->state = LX_WAIT_QUEUED;
    if (front)
        lx_list_push_front(&q->waiters, &w->link);
    else
        lx_list_push_back(&q->waiters, &w->link);
    atomic_fetch_add(&q->len, 1);
}

void lx_waitq_push(struct lx_waitq *q, struct lx_waiter *w, bool front)
{
    uv_mutex_lock(&q->lock);
    push_locked(q, w, front);
    uv_mutex_unlock(&q->lock);
}

bool lx_waitq_remove(struct lx_waitq *q, struct lx_waiter *w)
{
    bool removed = false;

    uv_mutex_lock(&q->lock);
    if (w->state == LX_WAIT_QUEUED) {
        lx_list_remove(&w->link);
        atomic_fetch_sub(&q->len, 1);
        w->state = LX_WAIT_IDLE;
        removed = true;
    }
    uv_mutex_unlock(&q->lock);
    return removed;
}

/* Takes <w> out of the queue, marking it woken. */
static void pop_locked(struct lx_waitq *q, struct lx_waiter *w)
{
    lx_list_remove(&w->link);
    atomic_fetch_sub(&q->len, 1);
    w->state = LX_WAIT_WOKEN;
}

bool lx_waitq_wake_first(struct lx_waitq *q, lx_waiter_want want, void *arg)
{
    struct lx_waiter *w = NULL;
    struct lx_list *n;

    if (atomic_load(&q->len) == 0)
        return false;
    uv_mutex_lock(&q->lock);
    lx_list_for_each(n, &q->waiters) {
        struct lx_waiter *c = container_of(n, struct lx_waiter, link);

        if (!want || want(c, arg)) {
            w = c;
            pop_locked(q, w);
            break;
        }
    }
    uv_mutex_unlock(&q->lock);
    if (w)
        w->wake(w);
    return w != NULL;
}

bool lx_waitq_wake_one(struct lx_waitq *q)
{
    return lx_waitq_wake_first(q, NULL, NULL);
}

void lx_waitq_wake_all(struct lx_waitq *q)
{
    while (lx_waitq_wake_one(q))
        ;
}

void lx_admit_init(struct lx_admit *a, int max_in_flight, int max_queue)
{
    atomic_init(&a->in_flight, 0);
    a->max_in_flight = max_in_flight;
    a->max_queue = max_queue;
    lx_waitq_init(&a->q);
    atomic_init(&a->ewma_release_gap_us, 0);
    atomic_init(&a->last_release_us, 0);
    atomic_init(&a->queued_total, 0);
    atomic_init(&a->rejected_total, 0);
    atomic_init(&a->timeouts_total, 0);
}

void lx_admit_deinit(struct lx_admit *a)
{
    lx_waitq_deinit(&a->q);
}

/* Takes a slot if one is free. */
static bool try_take(struct lx_admit *a)
{
    int cur = atomic_load(&a->in_flight);

    while (cur < a->max_in_flight)
        if (atomic_compare_exchange_weak(&a->in_flight, &cur, cur + 1))
            return true;
    return false;
}

/* Hands free slots to waiters at the head of the queue. */
static void grant_waiters(struct lx_admit *a)
{
    while (atomic_load(&a->q.len) > 0) {
        struct lx_waiter *w = NULL;

        uv_mutex_lock(&a->q.lock);
        if (!lx_list_empty(&a->q.waiters) && try_take(a)) {
            w = container_of(lx_list_first(&a->q.waiters), struct lx_waiter, link);
            pop_locked(&a->q, w);
        }
        uv_mutex_unlock(&a->q.lock);
        if (!w)
            return;
        w->wake(w);
    }
}

enum lx_admit_result lx_admit_enter(struct lx_admit *a, struct lx_waiter *w)
{
    /* Nobody waiting: take a free slot without the lock. */
    if (atomic_load(&a->q.len) == 0 && try_take(a))
        return LX_ADMIT_GRANTED;
    uv_mutex_lock(&a->q.lock);
    if (atomic_load(&a->q.len) >= a->max_queue) {
        uv_mutex_unlock(&a->q.lock);
        atomic_fetch_add(&a->rejected_total, 1);
        return LX_ADMIT_FULL;
    }
    w->since_ms = uv_hrtime() / 1000000;
    push_locked(&a->q, w, false);
    uv_mutex_unlock(&a->q.lock);
    atomic_fetch_add(&a->queued_total, 1);
    /* A slot may have been freed before we were visible to its releaser. */
    grant_waiters(a);
    return LX_ADMIT_QUEUED;
}

void lx_admit_release(struct lx_admit *a)
{
    uint64_t now = uv_hrtime() / 1000, last, gap, old, next;

    last = atomic_exchange(&a->last_release_us, now);
    if (last && now > last) {
        gap = now - last;
        old = atomic_load(&a->ewma_release_gap_us);
        do {
            next = old ? (old * 15 + gap) / 16 : gap;
        } while (!atomic_compare_exchange_weak(&a->ewma_release_gap_us, &old, next));
    }
    atomic_fetch_sub(&a->in_flight, 1);
    grant_waiters(a);
}

bool lx_admit_cancel(struct lx_admit *a, struct lx_waiter *w)
{
    return lx_waitq_remove(&a->q, w);
}

int lx_admit_retry_after(struct lx_admit *a)
{
    uint64_t gap = atomic_load(&a->ewma_release_gap_us);
    uint64_t ahead = (uint64_t)atomic_load(&a->q.len) + 1;
    uint64_t s;

    if (gap == 0)
        return 1;
    s = (ahead * gap + 999999) / 1000000;
    return (int)LX_MAX(1, LX_MIN(60, s));
}
