/*
 * fuzz_util.h - what the socket-driving fuzz targets (fuzz_http_request.c,
 * fuzz_upstream_response.c) share: the harness's random sequence, the
 * invariant failure, the exact-size input copy, and how byte 1 of an input
 * cuts a stream into writes. Header-only (static inline).
 *
 * A target defines FUZZ_NAME (its name, for messages) before including it.
 */
#ifndef LX_FUZZ_UTIL_H
#define LX_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/lx.h"

#ifndef FUZZ_NAME
#error "define FUZZ_NAME before including fuzz_util.h"
#endif

#define FUZZ_MAX_PIECES 64 /* writes an input is cut into, at most */

static inline uint32_t next_rand(uint32_t *s)
{
    /* xorshift32: a fixed sequence per seed, so an input replays exactly. */
    uint32_t x = *s ? *s : 0x9e3779b9u;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

static inline void fail(const char *what)
{
    fprintf(stderr, FUZZ_NAME ": invariant broken: %s\n", what);
    abort();
}

/* An exact-size copy of <len> bytes (ASan sees a read one byte past it);
 * the caller frees it. */
static inline char *fuzz_copy(const uint8_t *data, size_t len)
{
    char *p = malloc(len ? len : 1);

    if (!p)
        abort();
    memcpy(p, data, len);
    return p;
}

/*
 * Bytes of the next write, <left> to go. The low 3 bits of <cut> cap a
 * piece: 0 = all at once, 1..7 = 1, 2, 7, 16, 64, 300, 1500 bytes; its size
 * is drawn from <cut_rng>. <pieces> counts the writes: past FUZZ_MAX_PIECES
 * the rest goes at once, as each piece costs loop turns.
 */
static inline size_t fuzz_piece_len(uint8_t cut, uint32_t *cut_rng, int *pieces, size_t left)
{
    static const size_t max_piece[8] = {SIZE_MAX, 1, 2, 7, 16, 64, 300, 1500};

    size_t piece;

    if (!(cut & 7) || ++*pieces >= FUZZ_MAX_PIECES)
        return left;
    piece = 1 + next_rand(cut_rng) % max_piece[cut & 7];
    return LX_MIN(left, piece);
}

#endif /* LX_FUZZ_UTIL_H */
