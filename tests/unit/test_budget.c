/*
 * test_budget.c - a pool's retry budget (src/nodes/budget.c): the floor, the
 * percentage, the window sliding second by second, a clock that goes back
 * or jumps far ahead, the window carried to another budget, and several
 * threads noting and spending at once without passing the budget or losing
 * a count.
 *
 * Every call takes its time as an argument, so the tests use made-up clocks
 * (seconds * 1000) and never sleep.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>

#include "../../src/nodes/budget.h"

#define S(x) ((uint64_t)(x) * 1000) /* seconds of a made-up clock, in ms */

static void note(struct lx_budget *b, uint64_t now_ms, int n)
{
    for (int i = 0; i < n; i++)
        lx_budget_note_request(b, now_ms);
}

/* How many extra attempts are granted at <now_ms> before the first refusal
 * (at most <limit>). */
static int spend_all(struct lx_budget *b, uint64_t now_ms, int limit)
{
    int n = 0;

    while (n < limit && lx_budget_try_spend(b, now_ms))
        n++;
    return n;
}

static void expect_usage(const struct lx_budget *b, uint64_t now_ms, uint64_t requests,
                         uint64_t extra, uint64_t allowed)
{
    uint64_t r, e, a;

    lx_budget_usage(b, now_ms, &r, &e, &a);
    if (r != requests || e != extra || a != allowed)
        fail_msg("at %llu ms: requests %llu extra %llu allowed %llu, want %llu %llu %llu",
                 (unsigned long long)now_ms, (unsigned long long)r, (unsigned long long)e,
                 (unsigned long long)a, (unsigned long long)requests, (unsigned long long)extra,
                 (unsigned long long)allowed);
}

/* With no traffic, the floor alone: min_per_s for each second of the window. */
static void test_floor(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 1);
    expect_usage(&b, S(500), 0, 0, 10);
    assert_int_equal(spend_all(&b, S(500), 100), 10);
    expect_usage(&b, S(500), 0, 10, 10);
    /* A refusal counts nothing. */
    assert_false(lx_budget_try_spend(&b, S(500)));
    expect_usage(&b, S(500), 0, 10, 10);

    lx_budget_init(&b, 20, 0.25);
    assert_int_equal(spend_all(&b, S(500), 100), 2);
    lx_budget_init(&b, 0, 0);
    assert_int_equal(spend_all(&b, S(500), 100), 0);
    /* Negative limits count as 0. */
    lx_budget_init(&b, -5, -1);
    assert_true(b.percent == 0 && b.min_per_s == 0);
    note(&b, S(500), 100);
    assert_int_equal(spend_all(&b, S(500), 100), 0);
}

/* percent / 100 of the window's requests, rounded down, on top of the floor. */
static void test_percent(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 0);
    note(&b, S(500), 4);
    assert_false(lx_budget_try_spend(&b, S(500))); /* 0.8 rounds down */
    note(&b, S(500), 1);
    assert_true(lx_budget_try_spend(&b, S(500))); /* 20% of 5 is exactly 1 */
    assert_false(lx_budget_try_spend(&b, S(500)));
    note(&b, S(500), 95);
    assert_int_equal(spend_all(&b, S(500), 1000), 19);
    expect_usage(&b, S(500), 100, 20, 20);

    /* Both together; fractions of a percent. */
    lx_budget_init(&b, 12.5, 1);
    note(&b, S(500), 100);
    expect_usage(&b, S(500), 100, 0, 22);
    assert_int_equal(spend_all(&b, S(500), 1000), 22);
    /* Up to ten extra attempts per request. */
    lx_budget_init(&b, 1000, 0);
    note(&b, S(500), 3);
    assert_int_equal(spend_all(&b, S(500), 1000), 30);
}

/* A second's requests and extra attempts count for ten seconds, then leave
 * the window whole. */
static void test_window_slides(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 0);
    note(&b, S(100), 100);
    assert_int_equal(spend_all(&b, S(100), 1000), 20);
    /* Still in the window at 109.999 s. */
    assert_false(lx_budget_try_spend(&b, S(109) + 999));
    expect_usage(&b, S(109) + 999, 100, 20, 20);
    /* At 110 s second 100 has left: neither its requests nor its spending count. */
    expect_usage(&b, S(110), 0, 0, 0);
    note(&b, S(110), 10);
    assert_int_equal(spend_all(&b, S(110), 1000), 2);

    /* Ten requests in each of seconds 200..209; the window drops one second
     * of them at a time. */
    lx_budget_init(&b, 20, 0);
    for (int s = 200; s < 210; s++)
        note(&b, S(s) + 500, 10);
    expect_usage(&b, S(209), 100, 0, 20);
    expect_usage(&b, S(212), 70, 0, 14);
    assert_int_equal(spend_all(&b, S(212), 1000), 14);
    /* Spent at 212 s: still counted at 219 s, gone at 222 s. */
    expect_usage(&b, S(219), 0, 14, 0);
    expect_usage(&b, S(222), 0, 0, 0);
    /* A bucket reused by a later second starts from zero. */
    note(&b, S(222), 5);
    expect_usage(&b, S(222), 5, 0, 1);
}

/* A clock behind what the ring holds (another thread's clock ahead, or a
 * caller's stale now_ms) counts into the newer buckets and never erases them. */
static void test_time_goes_back(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 0);
    note(&b, S(100), 100);
    assert_int_equal(spend_all(&b, S(100), 1000), 20);
    /* 5 s back: the same window, the same refusal. */
    assert_false(lx_budget_try_spend(&b, S(95)));
    expect_usage(&b, S(95), 100, 20, 20);
    /* 50 s back lands in second 100's bucket: added to it, not a reset. */
    note(&b, S(50), 5);
    expect_usage(&b, S(100), 105, 20, 21);
    assert_true(lx_budget_try_spend(&b, S(50)));
    assert_false(lx_budget_try_spend(&b, S(50)));
    expect_usage(&b, S(100), 105, 21, 21);
    /* 7 s back lands in an empty bucket, which then counts for the window
     * around 100 s too. */
    note(&b, S(93), 10);
    expect_usage(&b, S(100), 115, 21, 23);
    /* Back to 0 ms: everything the ring holds is newer, and counts. */
    expect_usage(&b, 0, 115, 21, 23);
}

/* A clock far ahead finds every bucket stale: only the floor is left, and
 * the old counts never come back. */
static void test_time_jumps_ahead(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 1);
    note(&b, S(100), 1000);
    assert_int_equal(spend_all(&b, S(100), 1000), 210);
    expect_usage(&b, S(100) + S(3600) * 24 * 365, 0, 0, 10);
    assert_int_equal(spend_all(&b, S(100) + S(3600) * 24 * 365, 1000), 10);
    expect_usage(&b, S(100) + S(3600) * 24 * 365, 0, 10, 10);
    /* Exactly one window later, the same. */
    lx_budget_init(&b, 20, 1);
    note(&b, S(100), 1000);
    assert_int_equal(spend_all(&b, S(100), 1000), 210);
    expect_usage(&b, S(110), 0, 0, 10);
}

/* The window moves to another budget (a new registry snapshot), which keeps
 * its own limits; the two count separately afterwards. */
static void test_carry(void **state)
{
    struct lx_budget from, to;

    lx_budget_init(&from, 20, 1);
    note(&from, S(100), 100);
    assert_int_equal(spend_all(&from, S(100), 5), 5);
    lx_budget_init(&to, 50, 0);
    lx_budget_carry(&to, &from);
    assert_true(to.percent == 50 && to.min_per_s == 0);
    expect_usage(&to, S(100), 100, 5, 50);
    note(&from, S(100), 10);
    expect_usage(&to, S(100), 100, 5, 50);
    expect_usage(&from, S(100), 110, 5, 32);
}

#define THREADS 8
#define PER_THREAD 5000

struct worker {
    pthread_t thread;
    struct lx_budget *b;
    pthread_barrier_t *start;
    uint64_t now_ms;
    int notes, spends; /* what to do */
    int granted;       /* what try_spend granted */
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;

    pthread_barrier_wait(w->start);
    for (int i = 0; i < w->notes || i < w->spends; i++) {
        if (i < w->notes)
            lx_budget_note_request(w->b, w->now_ms);
        if (i < w->spends && lx_budget_try_spend(w->b, w->now_ms))
            w->granted++;
    }
    return NULL;
}

/* Runs THREADS workers at once; returns what they were granted together. */
static int run_workers(struct lx_budget *b, uint64_t now_ms, int notes, int spends)
{
    struct worker w[THREADS];
    pthread_barrier_t start;
    int granted = 0;

    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.b = b, .start = &start, .now_ms = now_ms, .notes = notes,
                               .spends = spends};
        assert_int_equal(pthread_create(&w[i].thread, NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(w[i].thread, NULL);
        granted += w[i].granted;
    }
    pthread_barrier_destroy(&start);
    return granted;
}

/* Concurrent notes lose no request; concurrent spenders of one second get
 * exactly the budget between them, never more. */
static void test_concurrent_exact(void **state)
{
    struct lx_budget b;

    lx_budget_init(&b, 20, 1);
    assert_int_equal(run_workers(&b, S(100), PER_THREAD, 0), 0);
    expect_usage(&b, S(100), THREADS * PER_THREAD, 0, THREADS * PER_THREAD / 5 + 10);
    assert_int_equal(run_workers(&b, S(100), 0, PER_THREAD), THREADS * PER_THREAD / 5 + 10);
    expect_usage(&b, S(100), THREADS * PER_THREAD, THREADS * PER_THREAD / 5 + 10,
                 THREADS * PER_THREAD / 5 + 10);
}

/* Requests and spending interleaved: what was granted is what is counted,
 * and within what the final window allows. */
static void test_concurrent_mixed(void **state)
{
    struct lx_budget b;
    uint64_t requests, extra, allowed;
    int granted;

    lx_budget_init(&b, 20, 1);
    granted = run_workers(&b, S(100) + 250, PER_THREAD, PER_THREAD);
    lx_budget_usage(&b, S(100) + 250, &requests, &extra, &allowed);
    assert_int_equal(requests, THREADS * PER_THREAD);
    assert_int_equal(extra, granted);
    assert_true(extra <= allowed);
    /* Spending keeps pace with the requests: it ends close to the budget. */
    assert_true(extra + THREADS * 2 >= allowed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_floor),
        cmocka_unit_test(test_percent),
        cmocka_unit_test(test_window_slides),
        cmocka_unit_test(test_time_goes_back),
        cmocka_unit_test(test_time_jumps_ahead),
        cmocka_unit_test(test_carry),
        cmocka_unit_test(test_concurrent_exact),
        cmocka_unit_test(test_concurrent_mixed),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
