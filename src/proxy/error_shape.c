/*
 * error_shape.c - a node's error answer in OpenAI's shape; see error_shape.h.
 */
#include "error_shape.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* OpenAI's error types by status, for answers that do not name one. */
static const char *type_of(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* Length of the valid UTF-8 sequence at <p>, 0 if it is not one. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    size_t n;
    unsigned min;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0) {
        n = 2, min = 0x80, cp = p[0] & 0x1f;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3, min = 0x800, cp = p[0] & 0x0f;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4, min = 0x10000, cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/*
 * The readable text of a plain or HTML body: tags (and script/style
 * contents) left out, entities for the usual five decoded, runs of
 * whitespace made one space, invalid UTF-8 and control characters replaced,
 * at most LX_ERROR_MESSAGE_MAX bytes.
 */
static void body_text(const char *body, size_t len, struct lx_buf *out)
{
    static const struct {
        const char *name;
        char ch;
    } ents[] = {{"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&#39;", '\''}};
    const unsigned char *p = (const unsigned char *)body, *end = p + len;
    bool space = true;

    while (p < end && out->len < LX_ERROR_MESSAGE_MAX) {
        size_t n;

        if (*p == '<') {
            const unsigned char *gt = memchr(p, '>', (size_t)(end - p));
            bool skip_body = (size_t)(end - p) > 7 && (strncasecmp((const char *)p, "<script", 7) == 0 ||
                                                       strncasecmp((const char *)p, "<style", 6) == 0);

            if (!gt)
                break;
            if (skip_body) {
                const char *close = memmem(gt, (size_t)(end - gt), "</", 2);

                gt = close ? memchr(close, '>', (size_t)((const char *)end - close)) : NULL;
                if (!gt)
                    break;
            }
            p = gt + 1;
            if (!space) {
                lx_buf_append(out, " ", 1);
                space = true;
            }
            continue;
        }
        if (*p == '&') {
            size_t i;

            for (i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
                size_t el = strlen(ents[i].name);

                if ((size_t)(end - p) >= el && memcmp(p, ents[i].name, el) == 0) {
                    lx_buf_append(out, &ents[i].ch, 1);
                    p += el;
                    space = false;
                    break;
                }
            }
            if (i < sizeof(ents) / sizeof(ents[0]))
                continue;
        }
        if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            if (!space)
                lx_buf_append(out, " ", 1);
            space = true;
            p++;
            continue;
        }
        n = utf8_len(p, (size_t)(end - p));
        if (n == 0 || *p < 0x20 || *p == 0x7f) {
            lx_buf_append(out, "?", 1);
            p++;
        } else {
            lx_buf_append(out, p, n);
            p += n;
        }
        space = false;
    }
    while (out->len && out->data[out->len - 1] == ' ')
        out->len--;
}

/* {"error": {...}} from its four parts; the references are taken. */
static void dump_error(json_t *message, json_t *type, json_t *param, json_t *code,
                       struct lx_buf *out)
{
    json_t *err = json_object(), *root = json_object();
    char *s;

    json_object_set_new(err, "message", message);
    json_object_set_new(err, "type", type);
    json_object_set_new(err, "param", param ? param : json_null());
    json_object_set_new(err, "code", code ? code : json_null());
    json_object_set_new(root, "error", err);
    s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    lx_buf_reset(out);
    if (s) {
        lx_buf_append_str(out, s);
        free(s);
    }
}

/* A field of the node's own error, or a default. */
static json_t *field(json_t *o, const char *key, json_t *dflt)
{
    json_t *v = json_object_get(o, key);

    if (!v || json_is_null(v)) {
        return dflt;
    }
    json_decref(dflt);
    return json_incref(v);
}

bool lx_error_shape(int status, const char *body, size_t len, struct lx_buf *out)
{
    json_t *root = json_loadb(body, len, 0, NULL), *msg = NULL, *v;
    struct lx_buf text;

    if (json_is_object(root)) {
        v = json_object_get(root, "error");
        if (json_is_object(v)) {
            json_decref(root);
            return false; /* OpenAI's shape already */
        }
        if (json_is_string(v)) {
            msg = json_incref(v);
        } else if (json_is_string(json_object_get(root, "message"))) {
            msg = json_incref(json_object_get(root, "message"));
        } else if ((v = json_object_get(root, "detail")) != NULL) {
            /* FastAPI: a string, or a list of validation errors. */
            if (json_is_string(v)) {
                msg = json_incref(v);
            } else {
                char *d = json_dumps(v, JSON_COMPACT);

                msg = json_string(d ? d : "");
                free(d);
            }
        }
    }
    if (!msg) {
        lx_buf_init(&text, 0);
        if (!json_is_object(root) || json_object_size(root) > 0)
            body_text(body, len, &text);
        if (!text.len)
            lx_buf_appendf(&text, "the node answered %d without a message", status);
        msg = json_stringn(text.data, text.len);
        lx_buf_deinit(&text);
    }
    if (!msg)
        msg = json_string("the node's error message is not valid text");
    if (json_is_object(root))
        dump_error(msg, field(root, "type", json_string(type_of(status))),
                   field(root, "param", json_null()), field(root, "code", json_integer(status)),
                   out);
    else
        dump_error(msg, json_string(type_of(status)), NULL, json_integer(status), out);
    json_decref(root);
    return true;
}
