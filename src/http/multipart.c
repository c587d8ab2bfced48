/*
 * multipart.c - multipart/form-data, bounded and zero-copy; see multipart.h.
 *
 * A cursor walks the body from delimiter to delimiter. Every read is preceded
 * by a check of what is left, so a truncated or garbage body ends in a
 * refusal, never a read past its end. Each iteration moves the cursor past a
 * whole delimiter, so the walk ends.
 */
#include "multipart.h"

#include <string.h>
#include <strings.h>

#include "../core/lx.h"

#define DELIM_MAX (4 + LX_MP_MAX_BOUNDARY) /* "\r\n--" BOUNDARY */

/* A slice of bytes. */
struct span {
    const char *p;
    size_t len;
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static struct span trim(const char *p, size_t len)
{
    while (len && is_space(*p)) {
        p++;
        len--;
    }
    while (len && is_space(p[len - 1]))
        len--;
    return (struct span){p, len};
}

static bool span_is(struct span s, const char *lit)
{
    size_t n = strlen(lit);

    return s.len == n && strncasecmp(s.p, lit, n) == 0;
}

/*
 * The next ";"-separated parameter of a header value at <*p> (up to <end>):
 * its key and value, the value without the quotes of a quoted string (a
 * backslash keeps the next byte inside the string). Moves <*p> past it.
 * Returns false when nothing is left.
 */
static bool next_param(const char **p, const char *end, struct span *key, struct span *val)
{
    const char *s = *p, *eq = NULL, *v, *stop;

    while (s < end && (is_space(*s) || *s == ';'))
        s++;
    if (s >= end)
        return false;
    for (stop = s; stop < end && *stop != ';' && *stop != '='; stop++)
        ;
    if (stop < end && *stop == '=')
        eq = stop;
    *key = trim(s, (size_t)((eq ? eq : stop) - s));
    *val = (struct span){NULL, 0};
    if (!eq) {
        *p = stop;
        return true;
    }
    v = eq + 1;
    while (v < end && is_space(*v))
        v++;
    if (v < end && *v == '"') {
        const char *q = ++v;

        while (q < end && *q != '"')
            q += (*q == '\\' && q + 1 < end) ? 2 : 1;
        *val = (struct span){v, (size_t)(LX_MIN(q, end) - v)};
        stop = q < end ? q + 1 : end;
        while (stop < end && *stop != ';')
            stop++;
    } else {
        for (stop = v; stop < end && *stop != ';'; stop++)
            ;
        *val = trim(v, (size_t)(stop - v));
    }
    *p = stop;
    return true;
}

int lx_mp_boundary(const char *ctype, size_t len, const char **boundary, size_t *blen,
                    const char **why)
{
    const char *end = ctype + len, *semi = memchr(ctype, ';', len), *p;
    struct span key, val;

    if (!span_is(trim(ctype, (size_t)((semi ? semi : end) - ctype)), "multipart/form-data")) {
        *why = "Content-Type must be multipart/form-data";
        return LX_EPROTO;
    }
    p = semi ? semi : end;
    while (next_param(&p, end, &key, &val)) {
        if (!span_is(key, "boundary"))
            continue;
        if (val.len == 0 || val.len > LX_MP_MAX_BOUNDARY) {
            *why = "the multipart boundary must be 1 to 70 bytes";
            return LX_EPROTO;
        }
        for (size_t i = 0; i < val.len; i++)
            if ((unsigned char)val.p[i] < 0x20 || val.p[i] == 0x7f) {
                *why = "the multipart boundary has a control character";
                return LX_EPROTO;
            }
        *boundary = val.p;
        *blen = val.len;
        return 0;
    }
    *why = "Content-Type has no multipart boundary";
    return LX_EPROTO;
}

/* Reads a Content-Disposition value into <part>'s name and filename. */
static int parse_disposition(struct lx_mp_part *part, const char *p, const char *end)
{
    struct span key, val;

    if (!next_param(&p, end, &key, &val) || !span_is(key, "form-data"))
        return LX_EPROTO;
    while (next_param(&p, end, &key, &val)) {
        /* A parameter without "=" has an empty value (still in the body). */
        if (!val.p)
            val.p = key.p + key.len;
        if (span_is(key, "name")) {
            part->name = val.p;
            part->name_len = val.len;
        } else if (span_is(key, "filename")) {
            part->filename = val.p;
            part->filename_len = val.len;
        }
    }
    return 0;
}

/* The header lines in [<p>, <end>), each ending with CRLF (the last one's
 * CRLF is the block's terminator, excluded from the range). */
static int parse_headers(struct lx_mp_part *part, const char *p, const char *end, const char **why)
{
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *line_end = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));

        if (!colon || colon == p) {
            *why = "a multipart part header is not a \"Name: value\" line";
            return LX_EPROTO;
        }
        if (span_is(trim(p, (size_t)(colon - p)), "Content-Disposition") &&
            parse_disposition(part, colon + 1, line_end)) {
            *why = "a multipart Content-Disposition is not form-data";
            return LX_EPROTO;
        }
        p = eol ? eol + 2 : end;
    }
    return 0;
}

int lx_mp_parse(const char *body, size_t len, const char *boundary, size_t blen,
                 struct lx_mp_part *parts, size_t max, const char **why)
{
    char delim[DELIM_MAX];
    size_t dlen = 4 + blen, n = 0;
    const char *p, *end = body + len, *found;

    if (blen == 0 || blen > LX_MP_MAX_BOUNDARY) {
        *why = "the multipart boundary must be 1 to 70 bytes";
        return LX_EPROTO;
    }
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, blen);
    /* The first delimiter opens the body or follows a preamble's CRLF. */
    if (len >= dlen - 2 && memcmp(body, delim + 2, dlen - 2) == 0) {
        p = body + dlen - 2;
    } else {
        found = len ? memmem(body, len, delim, dlen) : NULL;
        if (!found) {
            *why = "the multipart body has no boundary line";
            return LX_EPROTO;
        }
        p = found + dlen;
    }
    for (;;) {
        struct lx_mp_part part = {0};
        const char *head_end, *data;
        size_t window;

        /* After a delimiter: "--" closes the body, else padding and CRLF. */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return (int)n;
        while (p < end && is_space(*p))
            p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            *why = "a multipart boundary line does not end with CRLF";
            return LX_EPROTO;
        }
        p += 2;
        /* The header block ends with an empty line (at once: no headers). */
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            head_end = p;
            data = p + 2;
        } else {
            window = LX_MIN((size_t)(end - p), (size_t)LX_MP_MAX_HEAD + 4);
            head_end = memmem(p, window, "\r\n\r\n", 4);
            if (!head_end) {
                *why = (size_t)(end - p) > LX_MP_MAX_HEAD + 4
                           ? "a multipart part's headers are over 8 KiB"
                           : "a multipart part's headers do not end";
                return LX_EPROTO;
            }
            data = head_end + 4;
        }
        if (parse_headers(&part, p, head_end, why))
            return LX_EPROTO;
        found = memmem(data, (size_t)(end - data), delim, dlen);
        if (!found) {
            *why = "the multipart body ends inside a part (no closing boundary)";
            return LX_EPROTO;
        }
        if (n == max) {
            *why = "too many multipart parts";
            return LX_E2BIG;
        }
        part.data = data;
        part.len = (size_t)(found - data);
        parts[n++] = part;
        p = found + dlen;
    }
}

const struct lx_mp_part *lx_mp_find(const struct lx_mp_part *parts, size_t n, const char *name)
{
    size_t len = strlen(name);

    for (size_t i = 0; i < n; i++)
        if (parts[i].name && parts[i].name_len == len && memcmp(parts[i].name, name, len) == 0)
            return &parts[i];
    return NULL;
}
