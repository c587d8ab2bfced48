/*
 * unit_util.h - helpers that cmocka suites share: what a test allocated,
 * kept so that teardown releases it when a failed assertion jumped over the
 * test's own cleanup (a failure then does not also report leaks); plain
 * text of a given length; a deterministic mix for random sequences.
 * Header-only (static inline), included after <cmocka.h>: each test binary
 * has its own list.
 */
#ifndef LX_TESTS_UNIT_UTIL_H
#define LX_TESTS_UNIT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define UT_TRACKED_MAX 64

typedef void (*ut_free_cb)(void *p);

static struct {
    void *p;
    ut_free_cb free_fn;
} ut_tracked[UT_TRACKED_MAX];

/* Keeps <p> (must not be NULL) until ut_release(p) or ut_release_all(),
 * which free it with <free_fn>; returns <p>. */
static inline void *ut_track(void *p, ut_free_cb free_fn)
{
    assert_non_null(p);
    for (size_t i = 0; i < UT_TRACKED_MAX; i++)
        if (!ut_tracked[i].p) {
            ut_tracked[i].p = p;
            ut_tracked[i].free_fn = free_fn;
            return p;
        }
    fail_msg("more than %d allocations tracked", UT_TRACKED_MAX);
    return NULL;
}

/* Frees the tracked <p> now. */
static inline void ut_release(void *p)
{
    for (size_t i = 0; i < UT_TRACKED_MAX; i++)
        if (ut_tracked[i].p == p) {
            ut_tracked[i].p = NULL;
            ut_tracked[i].free_fn(p);
            return;
        }
    fail_msg("%p is not tracked", p);
}

/* Frees whatever is still tracked (teardown). */
static inline void ut_release_all(void)
{
    for (size_t i = 0; i < UT_TRACKED_MAX; i++)
        if (ut_tracked[i].p)
            ut_release(ut_tracked[i].p);
}

/* <len> bytes of plain text (no JSON escapes) into <buf> (len + 1 bytes),
 * starting with <tag>: texts with distinct tags differ in their first
 * bytes. */
static inline void ut_fill_text(char *buf, size_t len, const char *tag)
{
    static const char filler[] = " the quick brown fox jumps over the lazy dog";
    size_t n = strlen(tag) < len ? strlen(tag) : len;

    memcpy(buf, tag, n);
    for (size_t i = n; i < len; i++)
        buf[i] = filler[(i - n) % (sizeof(filler) - 1)];
    buf[len] = '\0';
}

/* splitmix64's step: the value after <x> in its sequence, as a pure
 * function (also a good 64-bit mix). */
static inline uint64_t ut_mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

#endif /* LX_TESTS_UNIT_UTIL_H */
