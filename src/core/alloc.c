/*
 * alloc.c - allocation helpers that abort on OOM, for small fixed-size
 * objects, interned strings, and a constant-time comparison for secrets.
 */
#include "lx.h"

#include <pthread.h>
#include <string.h>

#define INTERN_MAX 1024 /* distinct strings; a bound, not a working size */

static void oom(size_t n)
{
    fprintf(stderr, "llmux: out of memory allocating %zu bytes\n", n);
    abort();
}

void *lx_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p)
        oom(n);
    return p;
}

void *lx_calloc(size_t nmemb, size_t n)
{
    void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);

    if (!p)
        oom(nmemb * n);
    return p;
}

void *lx_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q)
        oom(n);
    return q;
}

char *lx_strndup(const char *s, size_t n)
{
    char *p = lx_malloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *lx_strdup(const char *s)
{
    return lx_strndup(s, strlen(s));
}

const char *lx_intern(const char *s)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static const char *strings[INTERN_MAX];
    static size_t n;
    const char *found = NULL;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n && !found; i++)
        if (strcmp(strings[i], s) == 0)
            found = strings[i];
    if (!found && n < INTERN_MAX)
        found = strings[n++] = lx_strdup(s);
    pthread_mutex_unlock(&lock);
    return found;
}

bool lx_secure_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Walk the expected secret's full length whatever the input, so timing
     * tells nothing about how many leading bytes matched. */
    unsigned char diff = (unsigned char)(alen != blen);

    for (size_t i = 0; i < blen; i++) {
        unsigned char ca = i < alen ? (unsigned char)a[i] : 0;

        diff |= ca ^ (unsigned char)b[i];
    }
    return diff == 0;
}
