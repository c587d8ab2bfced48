/*
 * proto.c - the wire side of llmux-bench: the target URL, the synthetic
 * prompt and the request bytes (built once, sent unchanged by every request),
 * and the few facts read back from answers: SSE data lines, whether a chunk
 * carries text, the usage object, error events.
 *
 * The answer scanners read JSON text without building a tree: the benchmark
 * must stay cheaper than the server it measures, and all it needs from a
 * chunk is one key. They never read past the given length and never
 * allocate; a string value cannot fake a key because inside JSON strings
 * quotes are escaped (`\"usage\"` never matches `"usage"` followed by ':').
 */
#include <ctype.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../src/core/lx.h"
#include "bench.h"

#define SSE_LINE_MAX (4u << 20)

/* ---- target URL --------------------------------------------------------- */

/* Splits http://host[:port][/path] into <t>; returns the path part in <path>.
 * Messages go to stderr. */
static int url_split(const char *url, struct bench_target *t, const char **path)
{
    const char *p = url, *auth, *auth_end, *host, *host_end, *port = NULL;
    char *end;
    long v;

    if (strncasecmp(p, "https://", 8) == 0) {
        fprintf(stderr,
                "llmux-bench: %s: https is not supported (no TLS in llmux-bench); "
                "use the plain-HTTP address or a TLS-terminating proxy\n",
                url);
        return LX_EINVAL;
    }
    if (strncasecmp(p, "http://", 7) == 0)
        p += 7;
    else if (strstr(p, "://")) {
        fprintf(stderr, "llmux-bench: %s: only http:// URLs are supported\n", url);
        return LX_EINVAL;
    }
    auth = p;
    auth_end = auth + strcspn(auth, "/?#");
    if (*auth_end == '?' || *auth_end == '#' || strchr(auth_end, '?') || strchr(auth_end, '#')) {
        fprintf(stderr, "llmux-bench: %s: a base URL takes no query or fragment\n", url);
        return LX_EINVAL;
    }
    if (memchr(auth, '@', (size_t)(auth_end - auth))) {
        fprintf(stderr, "llmux-bench: %s: user:password@ is not supported; use --auth-token\n",
                url);
        return LX_EINVAL;
    }
    if (*auth == '[') {
        host = auth + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (!host_end)
            goto bad;
        if (host_end + 1 < auth_end) {
            if (host_end[1] != ':')
                goto bad;
            port = host_end + 2;
        }
    } else {
        host = auth;
        host_end = memchr(auth, ':', (size_t)(auth_end - auth));
        if (host_end)
            port = host_end + 1;
        else
            host_end = auth_end;
    }
    if (host_end == host || (size_t)(host_end - host) >= sizeof(t->host) ||
        (size_t)(auth_end - auth) >= sizeof(t->host_header))
        goto bad;
    memcpy(t->host, host, (size_t)(host_end - host));
    t->host[host_end - host] = '\0';
    memcpy(t->host_header, auth, (size_t)(auth_end - auth));
    t->host_header[auth_end - auth] = '\0';
    t->port = 80;
    if (port) {
        if (port == auth_end || !isdigit((unsigned char)*port))
            goto bad;
        v = strtol(port, &end, 10);
        if (end != auth_end || v < 1 || v > 65535)
            goto bad;
        t->port = (int)v;
    }
    *path = auth_end;
    return 0;
bad:
    fprintf(stderr, "llmux-bench: %s: not a valid http://host[:port][/path] URL\n", url);
    return LX_EINVAL;
}

/* The request path: the URL's path without trailing slashes and without a
 * final /v1 (both spellings of a base URL are common), then the endpoint. */
static int build_path(struct bench_target *t, const char *path, enum bench_endpoint ep)
{
    size_t n = strlen(path);
    const char *suffix = ep == BENCH_CHAT ? "/v1/chat/completions" : "/v1/completions";

    while (n > 0 && path[n - 1] == '/')
        n--;
    if (n >= 3 && strncmp(path + n - 3, "/v1", 3) == 0)
        n -= 3;
    while (n > 0 && path[n - 1] == '/')
        n--;
    if (n + strlen(suffix) >= sizeof(t->path))
        return LX_E2BIG;
    memcpy(t->path, path, n);
    strcpy(t->path + n, suffix);
    return 0;
}

/* A blocking connect to <ai> within <timeout_ms>: whether something listens. */
static bool addr_answers(const struct addrinfo *ai, int timeout_ms)
{
    struct pollfd pfd;
    int fd, err = 0, rc;
    socklen_t len = sizeof(err);
    bool ok = false;

    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return false;
    rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc == 0) {
        ok = true;
    } else if (errno == EINPROGRESS) {
        pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, timeout_ms) == 1 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            ok = true;
    }
    close(fd);
    return ok;
}

/* Resolves the host once. When it has several addresses (localhost: ::1 and
 * 127.0.0.1), the first that accepts a connection is used, as an HTTP client
 * library would; if none does, the first, and the requests count connect
 * errors. */
static int resolve(struct bench_target *t, double connect_timeout_s)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res, *ai, *pick;
    char port[8];
    int rc, timeout_ms = (int)LX_MIN(connect_timeout_s * 1000, 2000);

    snprintf(port, sizeof(port), "%d", t->port);
    rc = getaddrinfo(t->host, port, &hints, &res);
    if (rc) {
        fprintf(stderr, "llmux-bench: cannot resolve %s: %s\n", t->host, gai_strerror(rc));
        return LX_ENOENT;
    }
    pick = res;
    if (res->ai_next) {
        for (ai = res; ai; ai = ai->ai_next) {
            if (addr_answers(ai, timeout_ms)) {
                pick = ai;
                break;
            }
        }
    }
    memcpy(&t->addr, pick->ai_addr, LX_MIN(pick->ai_addrlen, sizeof(t->addr)));
    freeaddrinfo(res);
    return 0;
}

/* ---- request bytes ------------------------------------------------------ */

char *bench_prompt_new(size_t chars)
{
    static const char seed[] = "Explain dynamic batching tradeoffs in GPU inference systems. "
                               "Compare continuous batching, paged attention and prefix "
                               "caching, and say when each one helps throughput or latency. ";
    char *s = lx_malloc(chars + 1);

    for (size_t i = 0; i < chars; i++)
        s[i] = seed[i % (sizeof(seed) - 1)];
    /* Never end on a space: some servers strip it, which changes the count. */
    if (chars > 0 && s[chars - 1] == ' ')
        s[chars - 1] = '.';
    s[chars] = '\0';
    return s;
}

static char *build_body(const struct bench_conf *c, const char *prompt)
{
    json_t *o = json_object(), *msgs, *msg;
    char *text;

    json_object_set_new(o, "model", json_string(c->model));
    if (c->endpoint == BENCH_CHAT) {
        msgs = json_array();
        msg = json_object();
        json_object_set_new(msg, "role", json_string("user"));
        json_object_set_new(msg, "content", json_string(prompt));
        json_array_append_new(msgs, msg);
        json_object_set_new(o, "messages", msgs);
    } else {
        json_object_set_new(o, "prompt", json_string(prompt));
    }
    json_object_set_new(o, "max_tokens", json_integer(c->max_tokens));
    json_object_set_new(o, "stream", json_boolean(c->stream));
    if (c->stream) {
        /* Token counts from the server's own usage chunk (vLLM, OpenAI). */
        json_t *so = json_object();

        json_object_set_new(so, "include_usage", json_true());
        json_object_set_new(o, "stream_options", so);
    }
    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

int bench_target_init(struct bench_target *t, const struct bench_conf *c)
{
    struct lx_buf b;
    const char *path;
    char *prompt, *body;
    size_t body_len;
    int rc;

    memset(t, 0, sizeof(*t));
    rc = url_split(c->base_url, t, &path);
    if (rc)
        return rc;
    if (build_path(t, path, c->endpoint)) {
        fprintf(stderr, "llmux-bench: %s: path too long\n", c->base_url);
        return LX_EINVAL;
    }
    snprintf(t->url, sizeof(t->url), "http://%s%s", t->host_header, t->path);
    rc = resolve(t, c->connect_timeout_s);
    if (rc)
        return rc;

    t->prompt_chars = c->prompt_tokens * 4;
    prompt = bench_prompt_new(t->prompt_chars);
    body = build_body(c, prompt);
    free(prompt);
    if (!body)
        return LX_ENOMEM;
    body_len = strlen(body);

    lx_buf_init(&b, 0);
    rc = lx_buf_appendf(&b,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: llmux-bench/" BENCH_VERSION
                        "\r\nAccept: %s\r\nContent-Type: application/json\r\n",
                        t->path, t->host_header,
                        c->stream ? "text/event-stream" : "application/json");
    if (!rc && c->auth_token)
        rc = lx_buf_appendf(&b, "Authorization: Bearer %s\r\n", c->auth_token);
    for (unsigned i = 0; !rc && i < c->n_headers; i++)
        rc = lx_buf_appendf(&b, "%s\r\n", c->headers[i]);
    if (!rc)
        rc = lx_buf_appendf(&b, "Content-Length: %zu\r\n\r\n", body_len);
    if (!rc)
        rc = lx_buf_append(&b, body, body_len);
    free(body);
    if (rc) {
        lx_buf_deinit(&b);
        return rc;
    }
    t->request = b.data;
    t->request_len = b.len;
    t->body_len = body_len;
    return 0;
}

void bench_target_deinit(struct bench_target *t)
{
    free(t->request);
    t->request = NULL;
}

/* ---- SSE ---------------------------------------------------------------- */

void bench_sse_init(struct bench_sse *s)
{
    lx_buf_init(&s->line, SSE_LINE_MAX);
}

void bench_sse_deinit(struct bench_sse *s)
{
    lx_buf_deinit(&s->line);
}

static void sse_line(const char *p, size_t n, bench_sse_data_cb cb, void *ctx)
{
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (n < 5 || memcmp(p, "data:", 5) != 0)
        return;
    p += 5;
    n -= 5;
    if (n > 0 && *p == ' ') {
        p++;
        n--;
    }
    cb(ctx, p, n);
}

int bench_sse_feed(struct bench_sse *s, const char *p, size_t n, bench_sse_data_cb cb, void *ctx)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t len;

        if (!nl)
            return lx_buf_append(&s->line, p, n) ? LX_E2BIG : 0;
        len = (size_t)(nl - p);
        if (s->line.len > 0) {
            /* The line began in an earlier read: join it, then use the copy. */
            if (lx_buf_append(&s->line, p, len))
                return LX_E2BIG;
            sse_line(s->line.data, s->line.len, cb, ctx);
            lx_buf_reset(&s->line);
        } else {
            sse_line(p, len, cb, ctx);
        }
        p = nl + 1;
        n -= len + 1;
    }
    return 0;
}

/* ---- JSON facts --------------------------------------------------------- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* The value after key <q> (pointing just past the key's closing quote):
 * skips `ws : ws`; NULL if no colon follows. */
static const char *key_value(const char *q, const char *end)
{
    q = skip_ws(q, end);
    if (q >= end || *q != ':')
        return NULL;
    return skip_ws(q + 1, end);
}

/* End (one past the closing brace) of the object starting at <p>; <end> if it
 * is cut off. Skips strings, escapes included. */
static const char *object_end(const char *p, const char *end)
{
    int depth = 0;

    for (; p < end; p++) {
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\')
                    p++;
            if (p >= end)
                return end;
        } else if (*p == '{') {
            depth++;
        } else if (*p == '}') {
            if (--depth == 0)
                return p + 1;
        }
    }
    return end;
}

/* An integer value of key <key> (with its quotes) in [p, end), or -1. */
static int64_t int_key(const char *p, const char *end, const char *key)
{
    size_t klen = strlen(key);
    const char *q, *v;
    int64_t n = 0;

    while (p < end && (q = memmem(p, (size_t)(end - p), key, klen))) {
        v = key_value(q + klen, end);
        if (v && v < end && *v >= '0' && *v <= '9') {
            for (; v < end && *v >= '0' && *v <= '9' && n < INT64_MAX / 10; v++)
                n = n * 10 + (*v - '0');
            return n;
        }
        p = q + klen;
    }
    return -1;
}

int bench_scan_usage(const char *s, size_t n, int64_t *prompt, int64_t *completion)
{
    const char *p = s, *end = s + n, *q, *v, *oend;

    *prompt = *completion = -1;
    while (p < end && (q = memmem(p, (size_t)(end - p), "\"usage\"", 7))) {
        v = key_value(q + 7, end);
        if (v && v < end && *v == '{') {
            oend = object_end(v, end);
            *prompt = int_key(v, oend, "\"prompt_tokens\"");
            *completion = int_key(v, oend, "\"completion_tokens\"");
            return 0;
        }
        p = q + 7; /* "usage": null in a chunk without usage */
    }
    return LX_ENOENT;
}

bool bench_scan_has_content(const char *s, size_t n, enum bench_endpoint ep)
{
    const char *key = ep == BENCH_CHAT ? "\"content\"" : "\"text\"";
    size_t klen = ep == BENCH_CHAT ? 9 : 6;
    const char *p = s, *end = s + n, *q, *v;

    while (p < end && (q = memmem(p, (size_t)(end - p), key, klen))) {
        v = key_value(q + klen, end);
        /* A string with at least one character: "" and null carry no token. */
        if (v && v + 1 < end && v[0] == '"' && v[1] != '"')
            return true;
        p = q + klen;
    }
    return false;
}

bool bench_scan_is_error(const char *s, size_t n)
{
    const char *p = s, *end = s + n, *v;

    p = skip_ws(p, end);
    if (p < end && *p == '{') {
        p = skip_ws(p + 1, end);
        if ((size_t)(end - p) >= 7 && memcmp(p, "\"error\"", 7) == 0)
            return true;
    }
    p = memmem(s, n, "\"object\"", 8);
    if (p) {
        v = key_value(p + 8, end);
        if (v && (size_t)(end - v) >= 7 && memcmp(v, "\"error\"", 7) == 0)
            return true;
    }
    return false;
}
