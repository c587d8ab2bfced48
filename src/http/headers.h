/*
 * headers.h - header fields gathered from http-parser's callbacks.
 *
 * http-parser hands a field's name and value over in as many pieces as the
 * reads cut them into. lx_headers appends the pieces back to back in one
 * buffer and records offsets (the buffer may move as it grows), then resolves
 * them into struct lx_http_header views once the head is complete. Used by
 * the server (requests) and the upstream client (responses). One connection
 * owns one; not thread-safe.
 */
#ifndef LX_HEADERS_H
#define LX_HEADERS_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/buf.h"

struct lx_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct lx_hdr_off {
    uint32_t name_off, name_len, value_off, value_len;
};

struct lx_headers {
    struct lx_buf text;             /* names and values, back to back (capped) */
    struct lx_hdr_off *off;         /* cap entries, NULL until the first field */
    struct lx_http_header *views;   /* cap entries, filled by lx_headers_resolve */
    size_t n;                       /* fields so far */
    size_t cap;
    size_t max_n;                   /* most fields accepted */
    bool in_value;                  /* the last piece was a value */
};

void lx_headers_init(struct lx_headers *h, size_t max_bytes, size_t max_n);
void lx_headers_deinit(struct lx_headers *h);
/* Forgets the fields (keeps the memory unless it grew past <keep_bytes>). */
void lx_headers_reset(struct lx_headers *h, size_t keep_bytes);
/* Adds a piece of a field name / value. 0, or LX_E2BIG over the byte or
 * field limits. */
int lx_headers_field(struct lx_headers *h, const char *at, size_t len);
int lx_headers_value(struct lx_headers *h, const char *at, size_t len);
/* The fields as views into the buffer; valid until the next change. */
struct lx_http_header *lx_headers_resolve(struct lx_headers *h);

#endif /* LX_HEADERS_H */
