/*
 * body_scan.c - one validating pass over a JSON request body; see body_scan.h.
 *
 * Shape: scan_object() walks the top-level object, classifies each key and
 * records the fields the proxy needs. Every other value goes to skip_value(),
 * an iterative parser whose whole state is a fixed stack of open container
 * kinds (LX_SCAN_MAX_DEPTH bytes), so hostile nesting costs no C stack.
 * scan_object() calls itself exactly once, for the "stream_options" object, so
 * recursion is bounded at two frames whatever the input.
 *
 * Depth counts containers: the top-level object is depth 1, so 64 nested
 * containers in all are accepted and the 65th is LX_SCAN_DEPTH.
 *
 * Invariants: body <= p <= end throughout; no byte at or past end is read (the
 * body need not be NUL-terminated); every slice reported lies inside the body.
 * Helpers take a cursor (const char **pp) and, on error, leave it on the
 * offending byte, which becomes ->end.
 *
 * Strictness: RFC 8259 grammar, with escapes checked (\uXXXX must be four hex
 * digits; a high surrogate must be followed by an escaped low one; a lone low
 * surrogate is rejected) and raw bytes below 0x20 refused inside strings.
 * UTF-8 is not validated: bytes >= 0x80 pass inside strings (outside strings
 * they are a syntax error anyway). The gateway relays the body unchanged and
 * the node's own JSON parser refuses bad UTF-8, so checking here would cost
 * every non-ASCII prompt a slow path for no routing benefit.
 *
 * Keys are compared after decoding escapes ("mod\u0065l" is "model"); only
 * keys containing a backslash take the decoding path.
 *
 * Reporting, where the header leaves room: a later duplicate key replaces all
 * an earlier one set. model_value, stream_options, messages and prompt are the
 * raw value whatever its type; model and user only when the value is a string;
 * include_usage only from an object; max_tokens only a number, and
 * max_completion_tokens wins over max_tokens in either order, as in vLLM. On
 * any error the result is zeroed except ->end, the offset of the fault.
 *
 * Threading: a pure function of its arguments; the tables below are const.
 */
#include "body_scan.h"

#include "../core/lx.h"

#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The longest key we look for is "max_completion_tokens" (21 bytes). */
#define KEY_MAX 32

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

enum field {
    F_NONE,
    F_MODEL,
    F_STREAM,
    F_STREAM_OPTIONS,
    F_MESSAGES,
    F_PROMPT,
    F_USER,
    F_MAX_TOKENS,
    F_MAX_COMPLETION_TOKENS,
    F_INCLUDE_USAGE,
    F_ROLE,
    F_CONTENT,
};

struct key_name {
    const char *name;
    size_t len; /* bytes, without a terminator */
    enum field field;
};

static const struct key_name top_keys[] = {
    {"model", 5, F_MODEL},
    {"stream", 6, F_STREAM},
    {"stream_options", 14, F_STREAM_OPTIONS},
    {"messages", 8, F_MESSAGES},
    {"prompt", 6, F_PROMPT},
    {"user", 4, F_USER},
    {"max_tokens", 10, F_MAX_TOKENS},
    {"max_completion_tokens", 21, F_MAX_COMPLETION_TOKENS},
};

static const struct key_name stream_options_keys[] = {
    {"include_usage", 13, F_INCLUDE_USAGE},
};

static const struct key_name message_keys[] = {
    {"role", 4, F_ROLE},
    {"content", 7, F_CONTENT},
};

/* Where scan_object() puts what it finds. The two token-limit keys are kept
 * apart until the end because they do not simply overwrite each other. */
struct record {
    struct lx_body_scan *out;
    struct lx_slice max_tokens;            /* last "max_tokens" if a number */
    struct lx_slice max_completion_tokens; /* last "max_completion_tokens" if a number */
    struct lx_slice role, content;         /* of a message (lx_body_scan_messages) */
};

/* Bytes that end a run of plain string contents: the quote, the backslash and
 * the control characters JSON forbids raw. */
static const unsigned char str_stop[256] = {
    [0x00 ... 0x1f] = 1,
    ['"'] = 1,
    ['\\'] = 1,
};

static inline bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline bool is_digit(unsigned char c)
{
    return (unsigned char)(c - '0') < 10;
}

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws((unsigned char)*p))
        p++;
    return p;
}

/* Returns the first byte in [p, end) that str_stop marks, or end. This is
 * where a body spends its time, so whole blocks are tested at once: sixteen
 * bytes with SSE2 (a byte is below 0x20 where min(v, 0x1f) == v), then eight
 * in a word, then single bytes for the tail. In the word, t has a byte's high
 * bit set where that byte is '"', '\\' or below 0x20; borrows can add false
 * bits, but only above a true one, so the lowest set bit is exact. */
static inline const char *skip_plain(const char *p, const char *end)
{
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i bslash = _mm_set1_epi8('\\');
    const __m128i ctl = _mm_set1_epi8(0x1f);

    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash));
        unsigned m;

        hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
        m = (unsigned)_mm_movemask_epi8(hit);
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (end - p >= 8) {
        uint64_t v, q, b, t;

        memcpy(&v, p, 8);
        q = v ^ (ONES * '"');
        b = v ^ (ONES * '\\');
        t = (((q - ONES) & ~q) | ((b - ONES) & ~b) | ((v - ONES * 0x20) & ~v)) & HIGHS;
        if (t) {
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + (__builtin_ctzll(t) >> 3);
#else
            break; /* the byte loop below finds it */
#endif
        }
        p += 8;
    }
    while (p < end && !str_stop[(unsigned char)*p])
        p++;
    return p;
}

static int hex_val(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The code unit of the four hex digits at <p>, or -1. */
static long hex4(const char *p, const char *end)
{
    long v = 0;
    int i, d;

    if (end - p < 4)
        return -1;
    for (i = 0; i < 4; i++) {
        d = hex_val((unsigned char)p[i]);
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Checks the escape whose backslash is at *pp and moves past it (and past
 * the low half when it opens a surrogate pair). */
static int scan_escape(const char **pp, const char *end)
{
    const char *p = *pp;
    long cu, lo;

    if (end - p < 2)
        goto bad;
    switch (p[1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        *pp = p + 2;
        return LX_SCAN_OK;
    case 'u':
        break;
    default:
        goto bad;
    }
    cu = hex4(p + 2, end);
    if (cu < 0 || (cu >= 0xdc00 && cu <= 0xdfff))
        goto bad;
    if (cu >= 0xd800 && cu <= 0xdbff) {
        if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
            goto bad;
        lo = hex4(p + 8, end);
        if (lo < 0xdc00 || lo > 0xdfff)
            goto bad;
        *pp = p + 12;
        return LX_SCAN_OK;
    }
    *pp = p + 6;
    return LX_SCAN_OK;
bad:
    return LX_SCAN_SYNTAX;
}

/* Walks the string whose opening quote is at *pp and leaves *pp just past the
 * closing quote. Sets *has_escape when the string holds a backslash. */
static int scan_string(const char **pp, const char *end, bool *has_escape)
{
    const char *p = *pp + 1;
    int rc;

    for (;;) {
        p = skip_plain(p, end);
        if (p == end) {
            rc = LX_SCAN_SYNTAX;
            break;
        }
        if (*p == '"') {
            p++;
            rc = LX_SCAN_OK;
            break;
        }
        if (*p != '\\') {
            rc = LX_SCAN_SYNTAX; /* a raw control character */
            break;
        }
        *has_escape = true;
        rc = scan_escape(&p, end);
        if (rc)
            break;
    }
    *pp = p;
    return rc;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? starting at *pp. What may
 * follow (a comma, a bracket) is the caller's business, which is how "01" and
 * "1true" fail. */
static int scan_number(const char **pp, const char *end)
{
    const char *p = *pp;
    int rc = LX_SCAN_SYNTAX;

    if (*p == '-')
        p++;
    if (p == end)
        goto out;
    if (*p == '0') {
        p++;
    } else if (is_digit((unsigned char)*p)) {
        while (p < end && is_digit((unsigned char)*p))
            p++;
    } else {
        goto out;
    }
    if (p < end && *p == '.') {
        p++;
        if (p == end || !is_digit((unsigned char)*p))
            goto out;
        while (p < end && is_digit((unsigned char)*p))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p == end || !is_digit((unsigned char)*p))
            goto out;
        while (p < end && is_digit((unsigned char)*p))
            p++;
    }
    rc = LX_SCAN_OK;
out:
    *pp = p;
    return rc;
}

static int scan_literal(const char **pp, const char *end, const char *word, size_t n)
{
    if ((size_t)(end - *pp) < n || memcmp(*pp, word, n) != 0)
        return LX_SCAN_SYNTAX;
    *pp += n;
    return LX_SCAN_OK;
}

/* A scalar at *pp: string, number or literal. */
static int scan_scalar(const char **pp, const char *end)
{
    bool esc = false;

    switch (**pp) {
    case '"':
        return scan_string(pp, end, &esc);
    case 't':
        return scan_literal(pp, end, "true", 4);
    case 'f':
        return scan_literal(pp, end, "false", 5);
    case 'n':
        return scan_literal(pp, end, "null", 4);
    default:
        return scan_number(pp, end);
    }
}

/* Skips blanks; when the next byte closes the innermost open container,
 * consumes it, pops the container and returns 1; returns 0 at another byte
 * (*pp on it) and -1 at the end of input. */
static int close_container(const char **pp, const char *end, const char *stack, unsigned *top)
{
    const char *p = skip_ws(*pp, end);

    *pp = p;
    if (p == end)
        return -1;
    if (*p != stack[*top - 1])
        return 0;
    *pp = p + 1;
    (*top)--;
    return 1;
}

/* Walks any value at *pp (whitespace first allowed), <depth> containers deep
 * already. No recursion: stack[] holds the closing byte of each container
 * opened here, and the labels are the three places a parser can stand: before
 * a value, after a value, before a key. */
static int skip_value(const char **pp, const char *end, unsigned depth)
{
    char stack[LX_SCAN_MAX_DEPTH];
    unsigned top = 0;
    const char *p = *pp;
    bool esc = false;
    int rc = LX_SCAN_SYNTAX;

value:
    p = skip_ws(p, end);
    if (p == end)
        goto out;
    if (*p == '{' || *p == '[') {
        if (depth + top >= LX_SCAN_MAX_DEPTH) {
            rc = LX_SCAN_DEPTH;
            goto out;
        }
        stack[top++] = *p == '{' ? '}' : ']';
        p++;
        switch (close_container(&p, end, stack, &top)) {
        case -1:
            goto out;
        case 1:
            goto next; /* empty */
        }
        if (stack[top - 1] == '}')
            goto key;
        goto value;
    }
    rc = scan_scalar(&p, end);
    if (rc)
        goto out;
next:
    if (top == 0) {
        rc = LX_SCAN_OK;
        goto out;
    }
    rc = LX_SCAN_SYNTAX;
    switch (close_container(&p, end, stack, &top)) {
    case -1:
        goto out;
    case 1:
        goto next;
    }
    if (*p != ',')
        goto out;
    p = skip_ws(p + 1, end);
    if (stack[top - 1] == ']')
        goto value;
key:
    if (p == end || *p != '"')
        goto out;
    rc = scan_string(&p, end, &esc);
    if (rc)
        goto out;
    rc = LX_SCAN_SYNTAX;
    p = skip_ws(p, end);
    if (p == end || *p != ':')
        goto out;
    p++;
    goto value;
out:
    *pp = p;
    return rc;
}

/* Decodes the escaped key <k> (<n> raw bytes, already validated) into <buf>
 * and returns its length, or KEY_MAX + 1 when it would not fit. Code points
 * above ASCII become a 0x80 byte: no key we look for contains one. */
static size_t decode_key(const char *k, size_t n, char *buf)
{
    static const char named[] = "bfnrt", meaning[] = "\b\f\n\r\t";
    const char *end = k + n;
    size_t len = 0;
    long cu;

    while (k < end) {
        if (len == KEY_MAX)
            return KEY_MAX + 1;
        if (*k != '\\') {
            buf[len++] = *k++;
            continue;
        }
        if (k[1] == 'u') {
            cu = hex4(k + 2, end);
            buf[len++] = cu >= 0 && cu < 0x80 ? (char)cu : (char)0x80;
            k += 4;
        } else {
            /* b f n r t name control characters; '"', '\\', '/' stand for themselves. */
            const char *e = memchr(named, k[1], sizeof(named) - 1);

            buf[len++] = e ? meaning[e - named] : k[1];
        }
        k += 2;
    }
    return len;
}

static enum field classify(const char *k, size_t n, bool esc, const struct key_name *keys,
                           size_t nkeys)
{
    char buf[KEY_MAX];
    size_t i;

    if (esc) {
        n = decode_key(k, n, buf);
        if (n > KEY_MAX)
            return F_NONE;
        k = buf;
    }
    for (i = 0; i < nkeys; i++) {
        if (keys[i].len == n && memcmp(keys[i].name, k, n) == 0)
            return keys[i].field;
    }
    return F_NONE;
}

static struct lx_slice slice(const char *p, size_t len)
{
    struct lx_slice s = {p, len};

    return s;
}

/* Stores the value [v, vend) of a recognised key; a later duplicate replaces
 * everything an earlier one set. <esc>: a string value held a backslash. */
static void record(struct record *r, enum field f, const char *v, const char *vend, bool esc)
{
    struct lx_body_scan *out = r->out;
    struct lx_slice none = {NULL, 0};
    size_t n = (size_t)(vend - v);
    bool is_string = *v == '"';
    bool is_number = *v == '-' || is_digit((unsigned char)*v);

    switch (f) {
    case F_MODEL:
        out->model_present = true;
        out->model_is_string = is_string;
        out->model_has_escape = is_string && esc;
        out->model = is_string ? slice(v + 1, n - 2) : none;
        out->model_value = slice(v, n);
        break;
    case F_STREAM:
        out->stream_present = true;
        out->stream = *v == 't';
        break;
    case F_STREAM_OPTIONS:
        out->stream_options = slice(v, n);
        break;
    case F_MESSAGES:
        out->messages = slice(v, n);
        break;
    case F_PROMPT:
        out->prompt = slice(v, n);
        break;
    case F_USER:
        out->user = is_string ? slice(v + 1, n - 2) : none;
        break;
    case F_MAX_TOKENS:
        r->max_tokens = is_number ? slice(v, n) : none;
        break;
    case F_MAX_COMPLETION_TOKENS:
        r->max_completion_tokens = is_number ? slice(v, n) : none;
        break;
    case F_INCLUDE_USAGE:
        out->include_usage = *v == 't';
        break;
    case F_ROLE:
        r->role = is_string ? slice(v + 1, n - 2) : slice(v, n);
        break;
    case F_CONTENT:
        r->content = is_string ? slice(v + 1, n - 2) : slice(v, n);
        break;
    case F_NONE:
        break;
    }
}

/* Walks the object whose '{' is at *pp, <depth> containers deep counting
 * itself, recording values of the keys in <keys>. Leaves *pp past the '}'. */
static int scan_object(const char **pp, const char *end, unsigned depth,
                       const struct key_name *keys, size_t nkeys, struct record *r)
{
    const char *p = *pp + 1;
    const char *key, *v;
    enum field f;
    bool esc;
    int rc = LX_SCAN_SYNTAX;

    if (depth > LX_SCAN_MAX_DEPTH) {
        rc = LX_SCAN_DEPTH;
        goto out;
    }
    p = skip_ws(p, end);
    if (p < end && *p == '}') {
        p++;
        rc = LX_SCAN_OK;
        goto out;
    }
    for (;;) {
        if (p == end || *p != '"')
            goto out;
        key = p;
        esc = false;
        rc = scan_string(&p, end, &esc);
        if (rc)
            goto out;
        f = classify(key + 1, (size_t)(p - key) - 2, esc, keys, nkeys);
        rc = LX_SCAN_SYNTAX;
        p = skip_ws(p, end);
        if (p == end || *p != ':')
            goto out;
        p = skip_ws(p + 1, end);
        if (p == end)
            goto out;
        v = p;
        esc = false;
        /* A new "stream_options" forgets what an earlier one said. */
        if (f == F_STREAM_OPTIONS)
            r->out->include_usage = false;
        if (*p == '"')
            rc = scan_string(&p, end, &esc);
        else if (f == F_STREAM_OPTIONS && *p == '{')
            rc = scan_object(&p, end, depth + 1, stream_options_keys,
                             ARRAY_SIZE(stream_options_keys), r);
        else
            rc = skip_value(&p, end, depth);
        if (rc)
            goto out;
        if (f != F_NONE)
            record(r, f, v, p, esc);
        rc = LX_SCAN_SYNTAX;
        p = skip_ws(p, end);
        if (p == end)
            goto out;
        if (*p == '}') {
            p++;
            rc = LX_SCAN_OK;
            goto out;
        }
        if (*p != ',')
            goto out;
        p = skip_ws(p + 1, end);
    }
out:
    *pp = p;
    return rc;
}

int lx_body_scan(const char *body, size_t len, struct lx_body_scan *out)
{
    struct record r = {NULL, {NULL, 0}, {NULL, 0}, {NULL, 0}, {NULL, 0}};
    const char *p, *end, *obj_end;
    int rc;

    memset(out, 0, sizeof(*out));
    r.out = out;
    /* Checked before any pointer arithmetic: body may be NULL when len is 0. */
    if (len == 0)
        return LX_SCAN_EMPTY;
    p = body;
    end = body + len;
    p = skip_ws(p, end);
    if (p == end) {
        rc = LX_SCAN_EMPTY;
        goto fail;
    }
    if (*p != '{') {
        rc = LX_SCAN_SYNTAX;
        if (*p == '[' || *p == '"' || *p == '-' || is_digit((unsigned char)*p) || *p == 't' ||
            *p == 'f' || *p == 'n')
            rc = LX_SCAN_NOT_OBJECT;
        goto fail;
    }
    rc = scan_object(&p, end, 1, top_keys, ARRAY_SIZE(top_keys), &r);
    if (rc)
        goto fail;
    obj_end = p;
    p = skip_ws(p, end);
    if (p != end) {
        rc = LX_SCAN_TRAILING;
        goto fail;
    }
    /* As vLLM does (max_completion_tokens or max_tokens): the newer key wins
     * whatever the order, the older one is the fallback. */
    out->max_tokens = r.max_completion_tokens.p ? r.max_completion_tokens : r.max_tokens;
    out->end = (size_t)(obj_end - body);
    return LX_SCAN_OK;
fail:
    memset(out, 0, sizeof(*out));
    out->end = (size_t)(p - body);
    return rc;
}

size_t lx_body_scan_messages(struct lx_slice messages, lx_message_cb fn, void *arg)
{
    const char *p = messages.p, *end = p + messages.len;
    struct lx_body_scan unused;
    size_t n = 0;

    if (!p || messages.len == 0 || *p != '[')
        return 0;
    p = skip_ws(p + 1, end);
    while (p < end && *p != ']') {
        struct record r = {&unused, {NULL, 0}, {NULL, 0}, {NULL, 0}, {NULL, 0}};
        int rc = *p == '{' ? scan_object(&p, end, 2, message_keys, ARRAY_SIZE(message_keys), &r)
                           : skip_value(&p, end, 1);

        if (rc)
            break;
        if (r.role.p || r.content.p) {
            n++;
            if (!fn(arg, r.role, r.content))
                break;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p = skip_ws(p + 1, end);
    }
    return n;
}

const char *lx_body_scan_strerror(int err)
{
    switch (err) {
    case LX_SCAN_OK:
        return "ok";
    case LX_SCAN_EMPTY:
        return "empty body";
    case LX_SCAN_NOT_OBJECT:
        return "body is not a JSON object";
    case LX_SCAN_SYNTAX:
        return "malformed JSON";
    case LX_SCAN_DEPTH:
        return "JSON nested too deeply";
    case LX_SCAN_TRAILING:
        return "data after the JSON object";
    default:
        return "unknown body scan error";
    }
}
