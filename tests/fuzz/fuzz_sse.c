/*
 * fuzz_sse.c - libFuzzer target for the SSE relay scanner.
 *
 * The first input byte picks drop_usage and where the rest is cut into
 * chunks (as reads would cut it). Invariants: what the scanner hands on is
 * made of input bytes in order; without drop_usage, output + what is still
 * held == the input exactly (nothing lost, nothing added); events counted
 * never exceed the blank lines seen.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct out {
    char *p;
    size_t len;
};

static void collect(void *ctx, const char *p, size_t len)
{
    struct out *o = ctx;

    o->p = realloc(o->p, o->len + len + 1);
    memcpy(o->p + o->len, p, len);
    o->len += len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lx_sse s;
    struct out o = {NULL, 0};
    size_t off = 1, step;
    char *text;

    if (size < 1)
        return 0;
    step = (size_t)(data[0] >> 1) + 1;
    text = malloc(size);
    memcpy(text, data, size);
    lx_sse_init(&s, data[0] & 1);
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        char *chunk = malloc(n);

        /* Exact-size chunks, so ASan sees any read past a chunk. */
        memcpy(chunk, text + off, n);
        lx_sse_feed(&s, chunk, n, collect, &o);
        free(chunk);
        off += n;
    }
    if (!(data[0] & 1)) {
        size_t held = s.partial.len;

        if (o.len + held != size - 1 && !s.partial_overflow)
            abort();
        if (o.len && memcmp(o.p, text + 1, o.len) != 0)
            abort();
    }
    if (o.len > size - 1)
        abort();
    lx_sse_deinit(&s);
    free(o.p);
    free(text);
    return 0;
}
