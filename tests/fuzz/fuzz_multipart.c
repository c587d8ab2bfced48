/*
 * fuzz_multipart.c - libFuzzer target for the multipart/form-data parser
 * (the gateway reads an audio request's `model` field with it, from any
 * client).
 *
 * The first input byte splits the rest into a Content-Type value and a
 * body, each copied into an allocation of its exact size (a one-byte
 * over-read is caught). Invariants: every part's name, filename and data lie
 * inside the body; parts come in order and do not overlap; a lookup by the
 * first part's name finds a part.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const char *p, size_t len, const char *base, size_t blen)
{
    return p >= base && len <= blen && (size_t)(p - base) <= blen - len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lx_mp_part parts[LX_MP_MAX_PARTS];
    const char *boundary, *why;
    size_t cut, blen, blen_b;
    char *ctype, *body;
    int n;

    if (size < 1)
        return 0;
    /* ctype: data[1 .. cut], body: the rest. */
    cut = data[0] % size;
    blen_b = size - 1 - cut;
    ctype = malloc(cut ? cut : 1);
    body = malloc(blen_b ? blen_b : 1);
    memcpy(ctype, data + 1, cut);
    memcpy(body, data + 1 + cut, blen_b);
    if (lx_mp_boundary(ctype, cut, &boundary, &blen, &why) == 0) {
        if (!inside(boundary, blen, ctype, cut))
            abort();
        n = lx_mp_parse(body, blen_b, boundary, blen, parts, LX_MP_MAX_PARTS, &why);
        if (n > LX_MP_MAX_PARTS)
            abort();
        for (int i = 0; i < n; i++) {
            if (!inside(parts[i].data, parts[i].len, body, blen_b) ||
                (parts[i].name && !inside(parts[i].name, parts[i].name_len, body, blen_b)) ||
                (parts[i].filename &&
                 !inside(parts[i].filename, parts[i].filename_len, body, blen_b)))
                abort();
            if (i > 0 && parts[i].data < parts[i - 1].data + parts[i - 1].len)
                abort();
        }
        if (n > 0 && parts[0].name && !memchr(parts[0].name, 0, parts[0].name_len)) {
            char name[LX_MP_MAX_HEAD + 1];

            if (parts[0].name_len <= LX_MP_MAX_HEAD) {
                memcpy(name, parts[0].name, parts[0].name_len);
                name[parts[0].name_len] = '\0';
                if (!lx_mp_find(parts, (size_t)n, name))
                    abort();
            }
        }
    }
    free(ctype);
    free(body);
    return 0;
}
