/*
 * buf.h - a growable byte buffer with a hard cap.
 *
 * Used for everything whose size a peer controls (request heads and bodies,
 * upstream heads): a write past `max` fails with LX_E2BIG and leaves the buffer
 * unchanged, so the caller can answer 413/431 instead of growing without bound.
 * Not thread-safe; owned by one connection.
 */
#ifndef LX_BUF_H
#define LX_BUF_H

#include "lx.h"

struct lx_buf {
    char *data;   /* NULL until the first append */
    size_t len;   /* bytes used */
    size_t cap;   /* bytes allocated */
    size_t max;   /* hard cap on len, 0 = unlimited */
};

void lx_buf_init(struct lx_buf *b, size_t max);
void lx_buf_deinit(struct lx_buf *b);
/* Appends <n> bytes; 0, LX_E2BIG (over max) or LX_ENOMEM. */
int lx_buf_append(struct lx_buf *b, const void *p, size_t n);
/* Appends <v> in decimal / the NUL-terminated <s>; without printf. */
int lx_buf_append_u64(struct lx_buf *b, uint64_t v);
int lx_buf_append_str(struct lx_buf *b, const char *s);
/* Writes <v> in lowercase hex, no padding, into <out>; returns the length. */
size_t lx_fmt_hex(char out[16], uint64_t v);
int lx_buf_appendf(struct lx_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ensures room for <n> more bytes without changing len. */
int lx_buf_reserve(struct lx_buf *b, size_t n);
/* Drops the first <n> bytes. */
void lx_buf_consume(struct lx_buf *b, size_t n);
static inline void lx_buf_reset(struct lx_buf *b) { b->len = 0; }

#endif /* LX_BUF_H */
