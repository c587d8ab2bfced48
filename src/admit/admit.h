/*
 * admit.h - admission control: a global in-flight limit and one FIFO of
 * waiting requests across all workers; and the wait queue it is built on,
 * also used by pools to park requests while every node is at its
 * max_concurrency.
 *
 * Fast path: below the limit with nobody waiting, entering and releasing are
 * one atomic operation each, no lock. The queue's lock is taken only when
 * requests wait. A release with waiters hands its slot straight to the head
 * waiter (the in-flight count does not move), so newcomers cannot overtake
 * the queue.
 *
 * Waking: a granted waiter's wake() is called exactly once, from whichever
 * thread released the slot, with no lock held; it must only hand the waiter
 * to its owner's loop (uv_async). Threading: all functions are thread-safe.
 */
#ifndef LX_ADMIT_H
#define LX_ADMIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "../core/list.h"

struct lx_waiter;
typedef void (*lx_waiter_cb)(struct lx_waiter *w);

enum lx_waiter_state { LX_WAIT_IDLE, LX_WAIT_QUEUED, LX_WAIT_WOKEN };

struct lx_waiter {
    struct lx_list link;            /* in lx_waitq.waiters, under the queue's lock */
    enum lx_waiter_state state;     /* under the queue's lock */
    lx_waiter_cb wake;              /* set by the owner */
    uint64_t since_ms;              /* lx_now_ms() when queued */
};

struct lx_waitq {
    uv_mutex_t lock;
    struct lx_list waiters;         /* struct lx_waiter.link, head first */
    atomic_int len;                 /* waiters, readable without the lock */
};

void lx_waitq_init(struct lx_waitq *q);
void lx_waitq_deinit(struct lx_waitq *q);
/* Appends <w> (at the front when <front>). */
void lx_waitq_push(struct lx_waitq *q, struct lx_waiter *w, bool front);
/* Removes <w> if still queued; true if it was (then no wake will come). */
bool lx_waitq_remove(struct lx_waitq *q, struct lx_waiter *w);
/* Wakes the head waiter, if any; true if one was woken. */
bool lx_waitq_wake_one(struct lx_waitq *q);
/* Wakes the first waiter from the head for which <want>(w, arg) is true (any
 * when <want> is NULL); true if one was woken. <want> runs under the queue's
 * lock and may read what the waiter's owner wrote before it queued. */
typedef bool (*lx_waiter_want)(const struct lx_waiter *w, void *arg);
bool lx_waitq_wake_first(struct lx_waitq *q, lx_waiter_want want, void *arg);
/* Wakes every waiter (they find the queue they belong to changed). */
void lx_waitq_wake_all(struct lx_waitq *q);
static inline int lx_waitq_len(struct lx_waitq *q)
{
    return atomic_load(&q->len);
}

enum lx_admit_result { LX_ADMIT_GRANTED, LX_ADMIT_QUEUED, LX_ADMIT_FULL };

struct lx_admit {
    atomic_int in_flight;           /* slots held */
    int max_in_flight;              /* MAX_CONCURRENT_REQUESTS */
    int max_queue;                  /* MAX_QUEUE_SIZE, 0 = refuse at once */
    struct lx_waitq q;
    atomic_uint_fast64_t ewma_release_gap_us; /* time between releases, 0 = unknown */
    atomic_uint_fast64_t last_release_us;
    atomic_uint_fast64_t queued_total, rejected_total, timeouts_total;
};

void lx_admit_init(struct lx_admit *a, int max_in_flight, int max_queue);
void lx_admit_deinit(struct lx_admit *a);
/*
 * Asks for a slot. GRANTED: the caller holds one. QUEUED: <w> waits; its
 * wake() runs once a slot is handed to it. FULL: the queue is full (429).
 */
enum lx_admit_result lx_admit_enter(struct lx_admit *a, struct lx_waiter *w);
/* Gives a slot back (to the head waiter when there is one). */
void lx_admit_release(struct lx_admit *a);
/* Takes <w> out of the queue (client gone, queue timeout): true if it was
 * still waiting. False means a slot was already handed to it: its wake()
 * has run or will run, and the owner must release that slot. */
bool lx_admit_cancel(struct lx_admit *a, struct lx_waiter *w);
/* Seconds a refused client should wait: the queue ahead of it divided by how
 * fast slots are being released, between 1 and 60. */
int lx_admit_retry_after(struct lx_admit *a);

#endif /* LX_ADMIT_H */
