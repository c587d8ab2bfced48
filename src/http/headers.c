/*
 * headers.c - header fields from http-parser's pieces; see headers.h.
 */
#include "headers.h"

#include <string.h>

#define HEADERS_INITIAL 24 /* slots first allocated; doubles up to max_n */

void lx_headers_init(struct lx_headers *h, size_t max_bytes, size_t max_n)
{
    memset(h, 0, sizeof(*h));
    lx_buf_init(&h->text, max_bytes);
    h->max_n = max_n;
}

void lx_headers_deinit(struct lx_headers *h)
{
    lx_buf_deinit(&h->text);
    free(h->off);
    free(h->views);
    h->off = NULL;
    h->views = NULL;
    h->n = h->cap = 0;
}

void lx_headers_reset(struct lx_headers *h, size_t keep_bytes)
{
    if (h->text.cap > keep_bytes)
        lx_buf_deinit(&h->text);
    lx_buf_reset(&h->text);
    h->n = 0;
    h->in_value = false;
}

int lx_headers_field(struct lx_headers *h, const char *at, size_t len)
{
    struct lx_hdr_off *o;

    if (h->n == 0 || h->in_value) {
        if (h->n == h->cap) {
            size_t cap = h->cap ? h->cap * 2 : HEADERS_INITIAL;

            if (h->n >= h->max_n)
                return LX_E2BIG;
            if (cap > h->max_n)
                cap = h->max_n;
            h->off = lx_realloc(h->off, cap * sizeof(*h->off));
            h->views = lx_realloc(h->views, cap * sizeof(*h->views));
            h->cap = cap;
        }
        o = &h->off[h->n++];
        o->name_off = o->value_off = (uint32_t)h->text.len;
        o->name_len = o->value_len = 0;
        h->in_value = false;
    }
    if (lx_buf_append(&h->text, at, len))
        return LX_E2BIG;
    h->off[h->n - 1].name_len += (uint32_t)len;
    return 0;
}

int lx_headers_value(struct lx_headers *h, const char *at, size_t len)
{
    struct lx_hdr_off *o;

    if (h->n == 0)
        return LX_EPROTO;
    o = &h->off[h->n - 1];
    if (!h->in_value) {
        o->value_off = (uint32_t)h->text.len;
        h->in_value = true;
    }
    if (lx_buf_append(&h->text, at, len))
        return LX_E2BIG;
    o->value_len += (uint32_t)len;
    return 0;
}

struct lx_http_header *lx_headers_resolve(struct lx_headers *h)
{
    for (size_t i = 0; i < h->n; i++) {
        h->views[i].name = h->text.data + h->off[i].name_off;
        h->views[i].name_len = h->off[i].name_len;
        h->views[i].value = h->text.data + h->off[i].value_off;
        h->views[i].value_len = h->off[i].value_len;
    }
    return h->views;
}
