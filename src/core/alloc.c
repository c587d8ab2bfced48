/*
 * alloc.c - allocation helpers that abort on OOM, for small fixed-size
 * objects, and a constant-time comparison for secrets.
 */
#include "lx.h"

#include <string.h>

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
