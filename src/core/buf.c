/*
 * buf.c - capped growable buffer; see buf.h.
 */
#include "buf.h"

#include <stdarg.h>
#include <string.h>

void lx_buf_init(struct lx_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void lx_buf_deinit(struct lx_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int lx_buf_reserve(struct lx_buf *b, size_t n)
{
    size_t need = b->len + n;
    size_t cap;
    char *p;

    if (need < b->len || (b->max && need > b->max))
        return LX_E2BIG;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (b->max && cap > b->max)
        cap = b->max;
    p = realloc(b->data, cap);
    if (!p)
        return LX_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int lx_buf_append(struct lx_buf *b, const void *p, size_t n)
{
    int rc = lx_buf_reserve(b, n);

    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int lx_buf_appendf(struct lx_buf *b, const char *fmt, ...)
{
    /* One vsnprintf into the spare room; a second only when it did not fit. */
    va_list ap;
    int n, rc;

    rc = lx_buf_reserve(b, 128);
    if (rc)
        return rc;
    va_start(ap, fmt);
    n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return LX_EINVAL;
    if ((size_t)n >= b->cap - b->len) {
        rc = lx_buf_reserve(b, (size_t)n + 1);
        if (rc)
            return rc;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

int lx_buf_append_u64(struct lx_buf *b, uint64_t v)
{
    char t[24];
    size_t i = sizeof(t);

    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return lx_buf_append(b, t + i, sizeof(t) - i);
}

int lx_buf_append_str(struct lx_buf *b, const char *s)
{
    return lx_buf_append(b, s, strlen(s));
}

void lx_buf_consume(struct lx_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

size_t lx_fmt_hex(char out[16], uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char t[16];
    size_t i = sizeof(t), n;

    do {
        t[--i] = hex[v & 15];
        v >>= 4;
    } while (v);
    n = sizeof(t) - i;
    memcpy(out, t + i, n);
    return n;
}
