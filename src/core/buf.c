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
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return LX_EINVAL;
    rc = lx_buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
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
