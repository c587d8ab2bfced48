/*
 * test_admit.c - admission control and its wait queue: slots up to the
 * limit, a FIFO queue beyond it, FULL when the queue is full, release handing
 * the slot straight to the head waiter (woken exactly once, in order, the
 * in-flight count unchanged), cancel before and after the grant, the
 * Retry-After estimate, and a multi-threaded stress run that must end with
 * nothing in flight, nothing queued and every wake-up delivered.
 *
 * Single-threaded tests run wake() inside lx_admit_release(), so they can
 * check the order of wake-ups directly. The stress test's threads never call
 * cmocka (it is not thread-safe): they count problems in atomics that the
 * main thread asserts on, and every wait has a deadline so a lost wake-up
 * fails the test instead of hanging it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "../../src/admit/admit.h"
#include "../../src/core/lx.h"

/* A waiter that records its wake-ups. */
struct test_waiter {
    struct lx_waiter w;
    int id;
    atomic_int wakes;
};

static int wake_order[64];
static int n_woken;

static void on_wake(struct lx_waiter *w)
{
    struct test_waiter *t = container_of(w, struct test_waiter, w);

    atomic_fetch_add(&t->wakes, 1);
    if (n_woken < (int)ARRAY_SIZE(wake_order))
        wake_order[n_woken] = t->id;
    n_woken++;
}

static void waiters_init(struct test_waiter *t, size_t n)
{
    memset(t, 0, n * sizeof(*t));
    for (size_t i = 0; i < n; i++) {
        t[i].id = (int)i;
        t[i].w.wake = on_wake;
        atomic_init(&t[i].wakes, 0);
    }
    n_woken = 0;
}

static struct lx_admit adm;
static bool adm_live;

static void admit_init(int max_in_flight, int max_queue)
{
    lx_admit_init(&adm, max_in_flight, max_queue);
    adm_live = true;
}

static int teardown(void **state)
{
    if (adm_live)
        lx_admit_deinit(&adm);
    adm_live = false;
    return 0;
}

static int in_flight(void)
{
    return atomic_load(&adm.in_flight);
}

static void test_grant_up_to_limit_then_queue_then_full(void **state)
{
    struct test_waiter t[6];

    waiters_init(t, 6);
    admit_init(2, 3);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_GRANTED);
    assert_int_equal(in_flight(), 2);
    assert_int_equal(lx_waitq_len(&adm.q), 0);
    assert_int_equal(lx_admit_enter(&adm, &t[2].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_admit_enter(&adm, &t[3].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_admit_enter(&adm, &t[4].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_waitq_len(&adm.q), 3);
    assert_int_equal(lx_admit_enter(&adm, &t[5].w), LX_ADMIT_FULL);
    assert_int_equal(lx_waitq_len(&adm.q), 3);
    assert_int_equal(in_flight(), 2);
    assert_int_equal(atomic_load(&adm.queued_total), 3);
    assert_int_equal(atomic_load(&adm.rejected_total), 1);
    assert_int_equal(n_woken, 0);

    /* Drain: each release hands its slot to the next waiter in order. */
    for (int i = 2; i <= 4; i++) {
        lx_admit_release(&adm);
        assert_int_equal(in_flight(), 2);
        assert_int_equal(n_woken, i - 1);
        assert_int_equal(wake_order[i - 2], i);
        assert_int_equal(atomic_load(&t[i].wakes), 1);
        assert_int_equal(lx_waitq_len(&adm.q), 4 - i);
    }
    lx_admit_release(&adm);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(n_woken, 3);
    for (int i = 0; i < 6; i++)
        assert_int_equal(atomic_load(&t[i].wakes), i >= 2 && i <= 4 ? 1 : 0);
    /* Empty again: the fast path grants. */
    assert_int_equal(lx_admit_enter(&adm, &t[5].w), LX_ADMIT_GRANTED);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
}

static void test_max_queue_zero_refuses_at_once(void **state)
{
    struct test_waiter t[3];

    waiters_init(t, 3);
    admit_init(1, 0);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_FULL);
    assert_int_equal(lx_admit_enter(&adm, &t[2].w), LX_ADMIT_FULL);
    assert_int_equal(lx_waitq_len(&adm.q), 0);
    assert_int_equal(atomic_load(&adm.rejected_total), 2);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(n_woken, 0);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_GRANTED);
    lx_admit_release(&adm);
}

/* Newcomers do not overtake the queue: while waiters exist, a new request
 * queues behind them even right after a release. */
static void test_fifo_no_overtaking(void **state)
{
    struct test_waiter t[8];

    waiters_init(t, 8);
    admit_init(1, 8);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(lx_admit_enter(&adm, &t[i].w), LX_ADMIT_QUEUED);
    lx_admit_release(&adm); /* to 1 */
    assert_int_equal(lx_admit_enter(&adm, &t[4].w), LX_ADMIT_QUEUED);
    lx_admit_release(&adm); /* to 2 */
    lx_admit_release(&adm); /* to 3 */
    assert_int_equal(lx_admit_enter(&adm, &t[5].w), LX_ADMIT_QUEUED);
    lx_admit_release(&adm); /* to 4 */
    lx_admit_release(&adm); /* to 5 */
    assert_int_equal(n_woken, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(wake_order[i], i + 1);
    assert_int_equal(in_flight(), 1);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(lx_waitq_len(&adm.q), 0);
}

static void test_cancel_queued_never_woken(void **state)
{
    struct test_waiter t[5];

    waiters_init(t, 5);
    admit_init(1, 4);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_admit_enter(&adm, &t[2].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_admit_enter(&adm, &t[3].w), LX_ADMIT_QUEUED);
    /* Cancel the middle one and the head. */
    assert_true(lx_admit_cancel(&adm, &t[2].w));
    assert_int_equal(lx_waitq_len(&adm.q), 2);
    assert_false(lx_admit_cancel(&adm, &t[2].w)); /* not queued any more */
    assert_true(lx_admit_cancel(&adm, &t[1].w));
    assert_int_equal(lx_waitq_len(&adm.q), 1);
    lx_admit_release(&adm);
    assert_int_equal(n_woken, 1);
    assert_int_equal(wake_order[0], 3);
    assert_int_equal(atomic_load(&t[1].wakes), 0);
    assert_int_equal(atomic_load(&t[2].wakes), 0);
    assert_int_equal(in_flight(), 1);
    /* Cancel after the grant: false, the owner holds the slot. */
    assert_false(lx_admit_cancel(&adm, &t[3].w));
    assert_int_equal(in_flight(), 1);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(n_woken, 1);
    /* Cancelling the only waiter leaves an empty queue: the next request
     * gets the fast path. */
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    assert_int_equal(lx_admit_enter(&adm, &t[4].w), LX_ADMIT_QUEUED);
    assert_true(lx_admit_cancel(&adm, &t[4].w));
    assert_int_equal(lx_waitq_len(&adm.q), 0);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(atomic_load(&t[4].wakes), 0);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_GRANTED);
    lx_admit_release(&adm);
}

/* A cancelled waiter can queue again and then be woken normally. */
static void test_cancel_then_requeue(void **state)
{
    struct test_waiter t[3];

    waiters_init(t, 3);
    admit_init(1, 2);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_QUEUED);
    assert_int_equal(lx_admit_enter(&adm, &t[2].w), LX_ADMIT_QUEUED);
    assert_true(lx_admit_cancel(&adm, &t[1].w));
    assert_int_equal(lx_admit_enter(&adm, &t[1].w), LX_ADMIT_QUEUED);
    lx_admit_release(&adm);
    lx_admit_release(&adm);
    assert_int_equal(n_woken, 2);
    assert_int_equal(wake_order[0], 2);
    assert_int_equal(wake_order[1], 1);
    assert_int_equal(atomic_load(&t[1].wakes), 1);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
}

/* The bare wait queue (pools park requests on it). */
static void test_waitq(void **state)
{
    struct lx_waitq q;
    struct test_waiter t[4];

    waiters_init(t, 4);
    lx_waitq_init(&q);
    assert_false(lx_waitq_wake_one(&q));
    lx_waitq_push(&q, &t[0].w, false);
    lx_waitq_push(&q, &t[1].w, false);
    lx_waitq_push(&q, &t[2].w, true); /* to the front */
    lx_waitq_push(&q, &t[3].w, false);
    assert_int_equal(lx_waitq_len(&q), 4);
    assert_true(lx_waitq_remove(&q, &t[1].w));
    assert_false(lx_waitq_remove(&q, &t[1].w));
    assert_int_equal(lx_waitq_len(&q), 3);
    assert_true(lx_waitq_wake_one(&q));
    assert_true(lx_waitq_wake_one(&q));
    /* A woken waiter is no longer queued. */
    assert_false(lx_waitq_remove(&q, &t[0].w));
    /* Removing the tail keeps the links right. */
    lx_waitq_push(&q, &t[1].w, false);
    assert_true(lx_waitq_remove(&q, &t[1].w));
    assert_true(lx_waitq_wake_one(&q));
    assert_false(lx_waitq_wake_one(&q));
    assert_int_equal(lx_waitq_len(&q), 0);
    assert_true(lx_list_empty(&q.waiters));
    assert_int_equal(n_woken, 3);
    assert_int_equal(wake_order[0], 2);
    assert_int_equal(wake_order[1], 0);
    assert_int_equal(wake_order[2], 3);
    for (int i = 0; i < 4; i++)
        assert_int_equal(atomic_load(&t[i].wakes), i == 1 ? 0 : 1);
    lx_waitq_deinit(&q);
}

static void test_retry_after(void **state)
{
    struct test_waiter t[6];

    waiters_init(t, 6);
    admit_init(1, 8);
    /* Nothing known about the release rate yet. */
    assert_int_equal(lx_admit_retry_after(&adm), 1);
    assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
    for (int i = 1; i <= 4; i++)
        assert_int_equal(lx_admit_enter(&adm, &t[i].w), LX_ADMIT_QUEUED);
    /* 4 waiting + the newcomer, one slot released every 2 s: 10 s. */
    atomic_store(&adm.ewma_release_gap_us, 2000000);
    assert_int_equal(lx_admit_retry_after(&adm), 10);
    /* Rounded up: 5 * 0.3 s = 1.5 s -> 2. */
    atomic_store(&adm.ewma_release_gap_us, 300000);
    assert_int_equal(lx_admit_retry_after(&adm), 2);
    /* Bounded to [1, 60]. */
    atomic_store(&adm.ewma_release_gap_us, 100);
    assert_int_equal(lx_admit_retry_after(&adm), 1);
    atomic_store(&adm.ewma_release_gap_us, 100000000);
    assert_int_equal(lx_admit_retry_after(&adm), 60);
    /* The estimate follows the queue length: one left waiting -> 2 ahead. */
    atomic_store(&adm.ewma_release_gap_us, 2000000);
    for (int i = 0; i < 3; i++)
        lx_admit_release(&adm);
    assert_int_equal(lx_waitq_len(&adm.q), 1);
    atomic_store(&adm.ewma_release_gap_us, 2000000);
    assert_int_equal(lx_admit_retry_after(&adm), 4);
    lx_admit_release(&adm);
    lx_admit_release(&adm);
    assert_int_equal(in_flight(), 0);
}

/* Releases feed the gap estimate: after some releases it is non-zero. */
static void test_release_measures_gap(void **state)
{
    struct test_waiter t[1];

    waiters_init(t, 1);
    admit_init(4, 4);
    assert_int_equal(atomic_load(&adm.ewma_release_gap_us), 0);
    for (int i = 0; i < 3; i++) {
        uint64_t start = uv_hrtime();

        assert_int_equal(lx_admit_enter(&adm, &t[0].w), LX_ADMIT_GRANTED);
        /* At least a microsecond between releases, so the gap is measurable. */
        while (uv_hrtime() - start < 20000)
            ;
        lx_admit_release(&adm);
    }
    assert_true(atomic_load(&adm.ewma_release_gap_us) > 0);
    assert_true(atomic_load(&adm.last_release_us) > 0);
    assert_int_equal(in_flight(), 0);
}

/* ---- stress ----------------------------------------------------------- */

#define STRESS_THREADS 4
#define STRESS_ITERS 20000
/* One wait longer than this is a lost wake-up. Per wait, not per test: on a
 * loaded machine the whole test may take long, but no single wake does. */
#define STRESS_DEADLINE_NS (10ULL * 1000 * 1000 * 1000)

struct stress_waiter {
    struct lx_waiter w;
    atomic_int woken; /* wakes not yet consumed by the owner */
    atomic_int wakes; /* all wakes */
};

struct stress_thread {
    uv_thread_t tid;
    int seed;
    struct stress_waiter sw;
    long granted, queued, cancelled, woken;
};

static atomic_int holders;       /* slots held, by our own count */
static atomic_int over_limit;    /* times holders exceeded the limit */
static atomic_int lost_wakeups;  /* a wait ran past the deadline */
static atomic_int extra_wakeups; /* a waiter woken more than once per queuing */
static atomic_int unexpected;    /* FULL or other impossible results */
static atomic_bool stress_abort;
static int stress_limit;

static void stress_on_wake(struct lx_waiter *w)
{
    struct stress_waiter *sw = container_of(w, struct stress_waiter, w);

    atomic_fetch_add(&sw->wakes, 1);
    if (atomic_fetch_add(&sw->woken, 1) != 0)
        atomic_fetch_add(&extra_wakeups, 1);
}

/* Waits for the wake of <sw>; false after the deadline. */
static bool stress_wait(struct stress_waiter *sw)
{
    uint64_t deadline = uv_hrtime() + STRESS_DEADLINE_NS;
    unsigned spins = 0;

    while (atomic_load(&sw->woken) == 0) {
        if (atomic_load(&stress_abort))
            return false;
        if (++spins % 64 == 0) {
            if (uv_hrtime() > deadline) {
                atomic_fetch_add(&lost_wakeups, 1);
                atomic_store(&stress_abort, true);
                return false;
            }
            sched_yield();
        }
    }
    atomic_store(&sw->woken, 0);
    return true;
}

static void stress_hold(void)
{
    if (atomic_fetch_add(&holders, 1) + 1 > stress_limit)
        atomic_fetch_add(&over_limit, 1);
    if (atomic_load(&adm.in_flight) > stress_limit)
        atomic_fetch_add(&over_limit, 1);
    atomic_fetch_sub(&holders, 1);
}

static void stress_main(void *arg)
{
    struct stress_thread *th = arg;
    uint32_t r = (uint32_t)th->seed * 2654435761u + 1;

    for (int i = 0; i < STRESS_ITERS && !atomic_load(&stress_abort); i++) {
        enum lx_admit_result res = lx_admit_enter(&adm, &th->sw.w);

        r = r * 1103515245u + 12345u;
        if (res == LX_ADMIT_GRANTED) {
            th->granted++;
        } else if (res == LX_ADMIT_QUEUED) {
            th->queued++;
            /* Some waiters give up (client gone); the rest wait. */
            if ((r >> 16) % 5 == 0 && lx_admit_cancel(&adm, &th->sw.w)) {
                th->cancelled++;
                continue;
            }
            if (!stress_wait(&th->sw))
                return;
            th->woken++;
        } else {
            atomic_fetch_add(&unexpected, 1);
            continue;
        }
        stress_hold();
        if ((r >> 20) % 4 == 0)
            sched_yield();
        lx_admit_release(&adm);
    }
}

/* <threads> x STRESS_ITERS enter/release cycles through <limit> slots. */
static void stress_run(int threads, int limit)
{
    struct stress_thread th[STRESS_THREADS];
    long queued = 0, cancelled = 0, woken = 0, wakes = 0, granted = 0;

    stress_limit = limit;
    admit_init(limit, 64);
    memset(th, 0, sizeof(th));
    atomic_store(&holders, 0);
    atomic_store(&over_limit, 0);
    atomic_store(&lost_wakeups, 0);
    atomic_store(&extra_wakeups, 0);
    atomic_store(&unexpected, 0);
    atomic_store(&stress_abort, false);
    assert_true(threads <= STRESS_THREADS);
    for (int i = 0; i < threads; i++) {
        th[i].seed = i + 1;
        th[i].sw.w.wake = stress_on_wake;
        atomic_init(&th[i].sw.woken, 0);
        atomic_init(&th[i].sw.wakes, 0);
        assert_int_equal(uv_thread_create(&th[i].tid, stress_main, &th[i]), 0);
    }
    for (int i = 0; i < threads; i++) {
        assert_int_equal(uv_thread_join(&th[i].tid), 0);
        queued += th[i].queued;
        cancelled += th[i].cancelled;
        woken += th[i].woken;
        granted += th[i].granted;
        wakes += atomic_load(&th[i].sw.wakes);
    }
    assert_int_equal(atomic_load(&lost_wakeups), 0);
    assert_int_equal(atomic_load(&extra_wakeups), 0);
    assert_int_equal(atomic_load(&over_limit), 0);
    assert_int_equal(atomic_load(&unexpected), 0);
    assert_int_equal(granted + queued, (long)threads * STRESS_ITERS);
    /* Every queued request was either cancelled in time or woken once. */
    assert_int_equal(queued, cancelled + woken);
    assert_int_equal(wakes, woken);
    print_message("granted %ld queued %ld cancelled %ld woken %ld\n", granted, queued, cancelled,
                  woken);
    /* The limit was actually contended. */
    assert_true(queued > 0);
    assert_int_equal(in_flight(), 0);
    assert_int_equal(lx_waitq_len(&adm.q), 0);
    assert_true(lx_list_empty(&adm.q.waiters));
    assert_int_equal(atomic_load(&adm.queued_total), queued);
}

static void test_stress_4_threads_limit_2(void **state)
{
    stress_run(4, 2);
}

/* One slot: a release that misses a waiter queuing at the same moment
 * leaves nothing in flight to wake it later, so every thread ends up
 * waiting and the deadline catches it. With two threads the queue is often
 * empty when the holder releases, which is when that race can happen. */
static void test_stress_2_threads_limit_1(void **state)
{
    stress_run(2, 1);
}

static void test_stress_4_threads_limit_1(void **state)
{
    stress_run(4, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_grant_up_to_limit_then_queue_then_full, teardown),
        cmocka_unit_test_teardown(test_max_queue_zero_refuses_at_once, teardown),
        cmocka_unit_test_teardown(test_fifo_no_overtaking, teardown),
        cmocka_unit_test_teardown(test_cancel_queued_never_woken, teardown),
        cmocka_unit_test_teardown(test_cancel_then_requeue, teardown),
        cmocka_unit_test_teardown(test_waitq, teardown),
        cmocka_unit_test_teardown(test_retry_after, teardown),
        cmocka_unit_test_teardown(test_release_measures_gap, teardown),
        cmocka_unit_test_teardown(test_stress_4_threads_limit_2, teardown),
        cmocka_unit_test_teardown(test_stress_2_threads_limit_1, teardown),
        cmocka_unit_test_teardown(test_stress_4_threads_limit_1, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
