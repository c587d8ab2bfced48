/*
 * multipart.h - a bounded multipart/form-data parser (RFC 7578 over RFC 2046):
 * the gateway reads the `model` field of an audio request with it, llmux-sim
 * its whole form.
 *
 * The body is parsed in place: every slice points into it (zero-copy), so it
 * must outlive the parts. Every byte is treated as hostile: lengths are
 * checked before each read, the number of parts and the size of one part's
 * header block are bounded, and a malformed body is refused with a reason,
 * never read past. The work is linear in the body (one memmem per part).
 *
 * What is accepted: an optional preamble, then "--BOUNDARY" (at the start or
 * after a CRLF), optional spaces or tabs and a CRLF, each part as header
 * lines, an empty line and its data, parts separated by "CRLF--BOUNDARY", and
 * the close delimiter "--BOUNDARY--" (an epilogue after it is ignored). Lines
 * end with CRLF. Of the part headers only Content-Disposition is read (its
 * `name` and `filename` parameters, token or quoted string); others are
 * skipped but must be "Name: value" lines.
 *
 * Pure functions; no allocation, no globals.
 */
#ifndef LX_MULTIPART_H
#define LX_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#define LX_MP_MAX_BOUNDARY 70 /* bytes, RFC 2046 */
#define LX_MP_MAX_HEAD 8192   /* bytes of one part's header block */
#define LX_MP_MAX_PARTS 32    /* parts of a form, for callers that keep them on the stack */

struct lx_mp_part {
    const char *name; /* Content-Disposition name= (quotes removed), or NULL */
    size_t name_len;
    const char *filename; /* filename=, or NULL when the part has none */
    size_t filename_len;
    const char *data; /* the part's content (borrowed from the body) */
    size_t len;
};

/*
 * Finds the boundary in a Content-Type value (<ctype>, <len> bytes, not
 * NUL-terminated): the media type must be multipart/form-data and carry a
 * boundary parameter of 1 to LX_MP_MAX_BOUNDARY bytes (token or quoted).
 * Sets <*boundary> (a slice of <ctype>) and <*blen>. Returns 0 or LX_EPROTO
 * with a static reason in <*why>.
 */
int lx_mp_boundary(const char *ctype, size_t len, const char **boundary, size_t *blen,
                    const char **why);

/*
 * Splits <body> (<len> bytes, borrowed) into at most <max> parts. Returns
 * the number of parts, LX_EPROTO for a malformed body or LX_E2BIG for more
 * than <max> parts, with a static reason in <*why>.
 */
int lx_mp_parse(const char *body, size_t len, const char *boundary, size_t blen,
                 struct lx_mp_part *parts, size_t max, const char **why);

/* The first of <n> <parts> named <name> (NUL-terminated), or NULL. */
const struct lx_mp_part *lx_mp_find(const struct lx_mp_part *parts, size_t n, const char *name);

#endif /* LX_MULTIPART_H */
