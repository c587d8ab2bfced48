/*
 * lx.h - the few definitions every llmux module shares: error codes,
 * container_of, ARRAY_SIZE, LX_ASSERT and allocation helpers that abort on OOM.
 *
 * Error convention: actions return 0 or a negative LX_E* (a -errno value);
 * predicates return bool. Small fixed-size allocations abort on OOM (as Redis's
 * zmalloc does); anything a peer controls goes through a capped lx_buf.
 */
#ifndef LX_H
#define LX_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define LX_OK 0
#define LX_EAGAIN (-EAGAIN)     /* need more input */
#define LX_EPROTO (-EPROTO)     /* malformed input */
#define LX_ENOMEM (-ENOMEM)     /* allocation failed */
#define LX_E2BIG (-E2BIG)       /* over a configured limit */
#define LX_EINVAL (-EINVAL)     /* bad argument or value */
#define LX_ENOENT (-ENOENT)     /* no such thing */
#define LX_ETIMEDOUT (-ETIMEDOUT)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
#endif

#define LX_UNUSED(x) ((void)(x))
#define LX_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LX_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Invariants only: never for client, node or config input. */
#define LX_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "llmux: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);  \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Allocation of small, fixed-size things: aborts on OOM. */
void *lx_malloc(size_t n);
void *lx_calloc(size_t nmemb, size_t n);
void *lx_realloc(void *p, size_t n);
char *lx_strdup(const char *s);
char *lx_strndup(const char *s, size_t n);
/* A copy of <s> that lives as long as the process, the same pointer for
 * equal strings: for messages kept where readers on other threads expect a
 * static string (a node's last error). NULL once 1024 distinct strings are
 * held. Any thread. */
const char *lx_intern(const char *s);

/* xorshift64*: fast, good enough for ids and random picks; <state> != 0. */
static inline uint64_t lx_rand_next(uint64_t *state)
{
    uint64_t x = *state;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Constant-time comparison of two byte strings (length leaks, contents do not). */
bool lx_secure_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif /* LX_H */
