/*
 * parse.c - strict number parsing; see parse.h.
 */
#include "parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

const char *lx_parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return "not a number";
    if (v < min || v > max)
        return "out of range";
    *out = v;
    return NULL;
}

const char *lx_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    unsigned long long v;
    char *end;

    /* strtoull accepts a sign and leading blanks; a count has neither. */
    if (*s < '0' || *s > '9')
        return "not a whole number";
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end || errno)
        return "not a whole number";
    if (v < min || v > max)
        return "out of range";
    *out = v;
    return NULL;
}
