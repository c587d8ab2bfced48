/*
 * body_scan.h - one pass over a request body, without building a JSON tree.
 *
 * Validates that the body is exactly one JSON object (RFC 8259: strings with
 * escapes and \u surrogates checked, numbers, nesting bounded by
 * LX_SCAN_MAX_DEPTH, whitespace around) and reports the few top-level fields
 * the proxy needs. Slices point into the body (zero-copy): they are the raw
 * JSON text, still escaped.
 *
 * Pure function, no allocation, thread-safe. Fuzzed (tests/fuzz).
 */
#ifndef LX_BODY_SCAN_H
#define LX_BODY_SCAN_H

#include <stdbool.h>
#include <stddef.h>

#define LX_SCAN_MAX_DEPTH 64

struct lx_slice {
    const char *p; /* NULL when absent */
    size_t len;
};

struct lx_body_scan {
    /* "model": the string's contents between the quotes, raw (escapes kept). */
    struct lx_slice model;
    bool model_present;          /* key present (any type) */
    bool model_is_string;        /* and its value is a string */
    bool model_has_escape;       /* the string contains a backslash escape */
    /* The whole value token of "model" including quotes, for rewriting. */
    struct lx_slice model_value;
    /* Set by the gateway for a multipart form (audio): model and
     * model_value are the "model" field's raw bytes, without quotes. */
    bool model_is_form_field;

    bool stream;                 /* "stream": true */
    bool stream_present;

    /* "stream_options": the object value, raw, or absent */
    struct lx_slice stream_options;
    bool include_usage;          /* stream_options.include_usage is true */

    struct lx_slice messages;    /* raw value of "messages" (chat) */
    struct lx_slice prompt;      /* raw value of "prompt" (completions) */
    struct lx_slice user;        /* contents of the "user" string */
    struct lx_slice max_tokens;  /* raw number of "max_tokens" or "max_completion_tokens" */

    size_t end;                  /* offset just past the object's closing brace */
};

enum lx_body_scan_err {
    LX_SCAN_OK = 0,
    LX_SCAN_EMPTY = -1,      /* no bytes, or only whitespace */
    LX_SCAN_NOT_OBJECT = -2, /* valid JSON start, but not an object */
    LX_SCAN_SYNTAX = -3,     /* malformed JSON (at ->end) */
    LX_SCAN_DEPTH = -4,      /* nested deeper than LX_SCAN_MAX_DEPTH */
    LX_SCAN_TRAILING = -5,   /* bytes after the object */
};

/* Scans <body> (<len> bytes, need not be NUL-terminated). Fills <out> and
 * returns LX_SCAN_OK, or a negative lx_body_scan_err. Duplicate top-level
 * keys: the last one wins, as in most JSON parsers (Python's json included). */
int lx_body_scan(const char *body, size_t len, struct lx_body_scan *out);
/*
 * Walks a chat "messages" array (the raw slice lx_body_scan returned, so
 * already validated) and calls <fn> with each message's "role" and
 * "content": a string's contents (escapes kept), another value's raw text,
 * or {NULL, 0} when absent. Elements with neither are skipped; <fn>
 * returning false stops the walk (a caller that has seen enough does not
 * pay for the rest of a huge body). Returns how many messages <fn> saw.
 */
typedef bool (*lx_message_cb)(void *arg, struct lx_slice role, struct lx_slice content);
size_t lx_body_scan_messages(struct lx_slice messages, lx_message_cb fn, void *arg);
/* A short human-readable reason for an error code. */
const char *lx_body_scan_strerror(int err);

#endif /* LX_BODY_SCAN_H */
