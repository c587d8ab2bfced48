/*
 * parse.h - strict number parsing for command lines (llmux-sim, llmux-bench):
 * the whole string must be the number, within a range.
 */
#ifndef LX_PARSE_H
#define LX_PARSE_H

#include <stdint.h>

/* Parses a finite decimal number in [min, max] into *out. Returns NULL, or
 * a short reason ("not a number", "out of range"). */
const char *lx_parse_double(const char *s, double min, double max, double *out);
/* Parses a whole non-negative number in [min, max] into *out. Returns NULL,
 * or a short reason ("not a whole number", "out of range"). */
const char *lx_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

#endif /* LX_PARSE_H */
