/*
 * response.c - whole responses and OpenAI-shaped errors on top of the
 * streaming response calls in server.c; reason phrases; JSON string escaping.
 */
#include <stdarg.h>
#include <string.h>

#include "server.h"

const char *lx_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: break;
    }
    if (status >= 200 && status < 300)
        return "OK";
    if (status >= 400 && status < 500)
        return "Client Error";
    return "Server Error";
}

int lx_json_escape(struct lx_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    int rc = 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[6];
        size_t n = 0;

        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        if (i > run)
            rc |= lx_buf_append(b, s + run, i - run);
        run = i + 1;
        esc[n++] = '\\';
        switch (ch) {
        case '"': esc[n++] = '"'; break;
        case '\\': esc[n++] = '\\'; break;
        case '\n': esc[n++] = 'n'; break;
        case '\r': esc[n++] = 'r'; break;
        case '\t': esc[n++] = 't'; break;
        default:
            esc[n++] = 'u';
            esc[n++] = '0';
            esc[n++] = '0';
            esc[n++] = hex[ch >> 4];
            esc[n++] = hex[ch & 15];
            break;
        }
        rc |= lx_buf_append(b, esc, n);
    }
    if (len > run)
        rc |= lx_buf_append(b, s + run, len - run);
    return rc ? LX_ENOMEM : 0;
}

void lx_http_resp_send(struct lx_http_req *req, int status, const char *content_type,
                       const struct lx_http_header *hdrs, size_t n_hdrs, const void *body,
                       size_t len)
{
    struct lx_http_header all[16];
    size_t n = 0;

    if (content_type) {
        all[n].name = "Content-Type";
        all[n].name_len = 12;
        all[n].value = content_type;
        all[n].value_len = strlen(content_type);
        n++;
    }
    for (size_t i = 0; i < n_hdrs && n < ARRAY_SIZE(all); i++)
        all[n++] = hdrs[i];
    lx_http_resp_start(req, status, all, n, (int64_t)len);
    lx_http_resp_write(req, body, len);
    lx_http_resp_end(req);
}

void lx_http_resp_error(struct lx_http_req *req, int status, const char *type, const char *code,
                        const struct lx_http_header *hdrs, size_t n_hdrs, const char *fmt, ...)
{
    char msg[512];
    struct lx_buf b;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    lx_buf_init(&b, 0);
    lx_buf_append(&b, "{\"error\":{\"message\":\"", 21);
    lx_json_escape(&b, msg, (size_t)n);
    lx_buf_append(&b, "\",\"type\":\"", 10);
    lx_json_escape(&b, type, strlen(type));
    if (code) {
        lx_buf_append(&b, "\",\"param\":null,\"code\":\"", 23);
        lx_json_escape(&b, code, strlen(code));
        lx_buf_append(&b, "\"}}\n", 4);
    } else {
        lx_buf_append(&b, "\",\"param\":null,\"code\":null}}\n", 29);
    }
    lx_http_resp_send(req, status, "application/json", hdrs, n_hdrs, b.data, b.len);
    lx_buf_deinit(&b);
}
