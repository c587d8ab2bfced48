/*
 * proxy.c - the proxy state machine; see proxy.h.
 *
 * Retry rule (SPEC): a connect error, a timeout before the first response
 * byte, or a 429/500/502/503/504 answer is retried on another node, up to
 * max_retries times, and only while nothing has been sent to the client. The
 * last attempt relays a node's error answer as it is; when no node answered
 * at all the client gets 502 (unreachable) or 504 (timed out).
 *
 * Relay: response bytes go to the client in the pieces they arrive in. When
 * the client's socket backs up past a high watermark the node connection is
 * paused, and resumed when it drains. A stream (text/event-stream) that
 * breaks after it started ends with an SSE error event and a clean end of the
 * chunked body.
 */
#include "proxy.h"

#include <http_parser.h>
#include <string.h>
#include <strings.h>

#include "../core/log.h"
#include "../route/router.h"

#define RELAY_HIGH_WATER (256 * 1024)

enum proxy_fail { FAIL_NONE, FAIL_CONNECT, FAIL_TIMEOUT, FAIL_STATUS, FAIL_PROTOCOL };

struct lx_proxy {
    struct lx_worker *w;
    struct lx_http_req *client;     /* NULL once the client is gone */
    struct lx_registry *reg;        /* reference: keeps pool alive */
    struct lx_pool *pool;
    struct lx_node *node;           /* reference to the node of this attempt */
    struct lx_pick pick;
    struct lx_body_scan scan;
    struct lx_upstream_req up;
    struct lx_buf head;             /* request head for the node */
    struct lx_buf body;             /* rewritten body (upstream_model), else empty */
    const char *path;               /* upstream path, borrowed from client req */
    int attempts;                   /* attempts started */
    enum proxy_fail last_fail;
    bool relaying;                  /* response head sent to the client */
    bool sse;                       /* relaying text/event-stream */
    bool in_flight;                 /* counted in node->in_flight */
    uint64_t t_start_ns;
    uint64_t t_send_ns;
    char request_id[80];
};

static const struct lx_upstream_cbs up_cbs;

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static void node_release(struct lx_proxy *p, bool ok)
{
    if (!p->node)
        return;
    if (p->in_flight) {
        atomic_fetch_sub_explicit(&p->node->in_flight, 1, memory_order_relaxed);
        p->in_flight = false;
    }
    if (!ok)
        atomic_fetch_add_explicit(&p->node->failures_total, 1, memory_order_relaxed);
    lx_node_unref(p->node);
    p->node = NULL;
}

static void proxy_free(struct lx_proxy *p)
{
    node_release(p, true);
    for (size_t i = 0; i < p->pick.n_tried; i++)
        lx_node_unref(p->pick.tried[i]);
    lx_registry_unref(p->reg);
    lx_buf_deinit(&p->head);
    lx_buf_deinit(&p->body);
    free(p);
}

static void on_client_abort(struct lx_http_req *req)
{
    struct lx_proxy *p = req->data;

    lx_debug("[%s] client went away; cancelling node request", p->request_id);
    p->client = NULL;
    lx_upstream_cancel(&p->up);
    proxy_free(p);
}

static void on_client_drain(struct lx_http_req *req)
{
    struct lx_proxy *p = req->data;

    lx_upstream_resume(&p->up);
}

/* Answers the client with a gateway error and frees the request. */
static void proxy_fail(struct lx_proxy *p, int status, const char *type, const char *code,
                       const char *msg)
{
    struct lx_http_header h[3];
    size_t n = 0;

    h[n++] = (struct lx_http_header){"X-Request-Id", 12, p->request_id, strlen(p->request_id)};
    if (p->pick.n_tried) {
        /* Name the last node tried, so that a client can tell who failed. */
        const struct lx_node *last = p->pick.tried[p->pick.n_tried - 1];

        h[n++] = (struct lx_http_header){"X-Routed-Node", 13, last->name, strlen(last->name)};
    }
    if (status == 503 || status == 429)
        h[n++] = (struct lx_http_header){"Retry-After", 11, "1", 1};
    if (p->client) {
        p->client->on_abort = NULL;
        lx_http_resp_error(p->client, status, type, code, h, n, "%s", msg);
        p->client = NULL;
    }
    proxy_free(p);
}

static bool header_is(const struct lx_http_header *h, const char *name, size_t len)
{
    return h->name_len == len && strncasecmp(h->name, name, len) == 0;
}

/* Hop-by-hop and framing headers that a proxy must not pass on (RFC 9110 7.6.1),
 * and the ones llmux sets itself. */
static bool is_request_header_dropped(const struct lx_http_header *h)
{
    static const char *const drop[] = {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate", "host", "content-length",
        "authorization", "expect", "x-request-id",
    };

    for (size_t i = 0; i < ARRAY_SIZE(drop); i++)
        if (header_is(h, drop[i], strlen(drop[i])))
            return true;
    return false;
}

static bool is_response_header_dropped(const struct lx_http_header *h)
{
    static const char *const drop[] = {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "content-length", "x-routed-node", "x-request-id",
    };

    for (size_t i = 0; i < ARRAY_SIZE(drop); i++)
        if (header_is(h, drop[i], strlen(drop[i])))
            return true;
    return false;
}

/* Builds the request head for p->node; the body is p->body or the client's. */
static void build_request(struct lx_proxy *p)
{
    const struct lx_http_req *req = p->client;
    struct lx_buf *b = &p->head;
    const char *body = p->body.len ? p->body.data : req->body.data;
    size_t body_len = p->body.len ? p->body.len : req->body.len;
    char peer[64];

    lx_buf_reset(b);
    lx_buf_appendf(b, "%s %s%s HTTP/1.1\r\nHost: %s\r\n", http_method_str(req->method),
                   p->node->base_path, p->path, p->node->host_header);
    if (req->method != HTTP_GET || body_len)
        lx_buf_appendf(b, "Content-Length: %zu\r\n", body_len);
    if (p->node->auth_header)
        lx_buf_appendf(b, "Authorization: %s\r\n", p->node->auth_header);
    lx_buf_appendf(b, "X-Request-Id: %s\r\n", p->request_id);
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct lx_http_header *h = &req->headers[i];

        if (is_request_header_dropped(h))
            continue;
        lx_buf_append(b, h->name, h->name_len);
        lx_buf_append(b, ": ", 2);
        lx_buf_append(b, h->value, h->value_len);
        lx_buf_append(b, "\r\n", 2);
    }
    lx_http_req_peer_str(req, peer, sizeof(peer));
    lx_buf_appendf(b, "X-Forwarded-For: %s\r\n\r\n", peer);
    p->up.nbufs = 0;
    p->up.bufs[p->up.nbufs++] = uv_buf_init(b->data, (unsigned int)b->len);
    if (body_len)
        p->up.bufs[p->up.nbufs++] = uv_buf_init((char *)body, (unsigned int)body_len);
}

/* Replaces the body's "model" value with the pool's upstream_model. */
static void rewrite_model(struct lx_proxy *p)
{
    const struct lx_buf *in = &p->client->body;
    const char *v = p->scan.model_value.p;
    size_t pre = (size_t)(v - in->data);
    const char *um = p->pool->upstream_model;

    lx_buf_init(&p->body, 0);
    lx_buf_append(&p->body, in->data, pre);
    lx_buf_append(&p->body, "\"", 1);
    lx_json_escape(&p->body, um, strlen(um));
    lx_buf_append(&p->body, "\"", 1);
    pre += p->scan.model_value.len;
    lx_buf_append(&p->body, in->data + pre, in->len - pre);
}

static bool can_retry(struct lx_proxy *p)
{
    const struct lx_conf *conf = p->w->gw->conf;

    if (p->attempts > conf->max_retries)
        return false;
    for (size_t i = 0; i < p->pool->n_nodes; i++)
        if (lx_router_is_candidate(&p->pick, p->pool->nodes[i]))
            return true;
    return false;
}

/* No node (left) to try: the final answer follows the last failure. */
static void proxy_give_up(struct lx_proxy *p)
{
    switch (p->last_fail) {
    case FAIL_NONE:
        proxy_fail(p, 503, "server_error", "no_healthy_node",
                   "no healthy node is available for this model");
        break;
    case FAIL_TIMEOUT:
        proxy_fail(p, 504, "server_error", "upstream_timeout", "the node did not answer in time");
        break;
    default:
        proxy_fail(p, 502, "server_error", "upstream_unreachable",
                   "the node could not be reached");
        break;
    }
}

static void proxy_attempt(struct lx_proxy *p)
{
    const struct lx_conf *conf = p->w->gw->conf;
    struct lx_node *node;

    p->pick.rand = lx_worker_rand(p->w);
    node = lx_router_pick(p->pool, &p->pick);
    if (!node) {
        proxy_give_up(p);
        return;
    }
    p->node = node;
    p->attempts++;
    if (p->pick.n_tried < LX_PICK_MAX_TRIED)
        p->pick.tried[p->pick.n_tried++] = lx_node_ref(node);
    atomic_fetch_add_explicit(&node->in_flight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&node->requests_total, 1, memory_order_relaxed);
    p->in_flight = true;
    build_request(p);
    p->up.cbs = &up_cbs;
    p->up.ctx = p;
    p->up.timeouts.connect_ms = (uint64_t)(conf->connect_timeout_s * 1000);
    p->up.timeouts.first_byte_ms = (uint64_t)(conf->node_timeout_s * 1000);
    p->up.timeouts.idle_ms = (uint64_t)(conf->stream_idle_timeout_s * 1000);
    p->t_send_ns = now_ns();
    lx_upstream_send(p->w->pool, node, &p->up);
}

static bool is_retryable_status(int status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

static void up_on_head(void *ctx, int status, const struct lx_http_header *hdrs, size_t n_hdrs,
                       int64_t content_length)
{
    struct lx_proxy *p = ctx;
    struct lx_http_header out[132];
    size_t n = 0;

    if (is_retryable_status(status) && can_retry(p)) {
        lx_info("[%s] node %s answered %d; retrying on another node", p->request_id,
                p->node->name, status);
        lx_upstream_cancel(&p->up);
        node_release(p, status == 429);
        p->last_fail = FAIL_STATUS;
        proxy_attempt(p);
        return;
    }
    p->relaying = true;
    for (size_t i = 0; i < n_hdrs && n < ARRAY_SIZE(out) - 2; i++) {
        if (is_response_header_dropped(&hdrs[i]))
            continue;
        if (header_is(&hdrs[i], "content-type", 12) && hdrs[i].value_len >= 17 &&
            strncasecmp(hdrs[i].value, "text/event-stream", 17) == 0)
            p->sse = true;
        out[n++] = hdrs[i];
    }
    out[n++] = (struct lx_http_header){"X-Routed-Node", 13, p->node->name, strlen(p->node->name)};
    out[n++] = (struct lx_http_header){"X-Request-Id", 12, p->request_id, strlen(p->request_id)};
    lx_http_resp_start(p->client, status, out, n, content_length);
    if (status >= 500)
        atomic_fetch_add_explicit(&p->node->failures_total, 1, memory_order_relaxed);
}

static void up_on_body(void *ctx, const char *data, size_t len)
{
    struct lx_proxy *p = ctx;

    lx_http_resp_write(p->client, data, len);
    if (lx_http_resp_pending(p->client) > RELAY_HIGH_WATER)
        lx_upstream_pause(&p->up);
}

static void up_on_done(void *ctx)
{
    struct lx_proxy *p = ctx;
    struct lx_http_req *req = p->client;

    /* Release the node before the client connection moves on to a
     * pipelined request. */
    p->client = NULL;
    proxy_free(p);
    lx_http_resp_end(req);
}

static void up_on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct lx_proxy *p = ctx;
    static const char *const kinds[] = {"", "connect", "timeout", "idle timeout", "protocol",
                                        "closed"};

    lx_warn("[%s] node %s: %s error%s", p->request_id, p->node ? p->node->name : "-",
            kinds[kind], got_head ? " mid-response" : "");
    if (!p->relaying) {
        node_release(p, false);
        p->last_fail = kind == LX_UP_TIMEOUT ? FAIL_TIMEOUT
                       : kind == LX_UP_CONNECT ? FAIL_CONNECT
                                               : FAIL_PROTOCOL;
        if (can_retry(p))
            proxy_attempt(p);
        else
            proxy_give_up(p);
        return;
    }
    /* The client already has the head: end the body as cleanly as we can. */
    node_release(p, false);
    if (p->sse) {
        static const char ev[] =
            "data: {\"error\":{\"message\":\"the node's stream broke before it finished\","
            "\"type\":\"server_error\",\"param\":null,\"code\":\"stream_broken\"}}\n\n";
        struct lx_http_req *req = p->client;

        lx_http_resp_write(req, ev, sizeof(ev) - 1);
        p->client = NULL;
        lx_http_resp_end(req);
    } else {
        struct lx_http_req *req = p->client;

        p->client = NULL;
        lx_http_resp_abort(req);
    }
    proxy_free(p);
}

static const struct lx_upstream_cbs up_cbs = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_done = up_on_done,
    .on_error = up_on_error,
};

void lx_request_id(struct lx_worker *w, const struct lx_http_req *req, char *out, size_t len)
{
    const struct lx_http_header *h = lx_http_req_header(req, "x-request-id");
    size_t n = 0;

    if (h && h->value_len > 0 && h->value_len < len && h->value_len <= 64) {
        bool ok = true;

        /* Only ids made of safe characters are kept: they go into logs and
         * headers unchanged. */
        for (size_t i = 0; i < h->value_len && ok; i++) {
            char ch = h->value[i];

            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == ':';
        }
        if (ok) {
            memcpy(out, h->value, h->value_len);
            out[h->value_len] = '\0';
            return;
        }
    }
    n = (size_t)snprintf(out, len, "%016llx%016llx", (unsigned long long)lx_worker_rand(w),
                         (unsigned long long)lx_worker_rand(w));
    LX_UNUSED(n);
}

void lx_proxy_start(struct lx_worker *w, struct lx_http_req *req, struct lx_pool *pool,
                    const struct lx_body_scan *scan, const char *upstream_path,
                    const char *request_id)
{
    struct lx_proxy *p = lx_calloc(1, sizeof(*p));

    p->w = w;
    p->client = req;
    p->reg = lx_registry_ref(w->gw->reg);
    p->pool = pool;
    p->path = upstream_path;
    p->t_start_ns = now_ns();
    if (scan)
        p->scan = *scan;
    p->pick.scan = &p->scan;
    snprintf(p->request_id, sizeof(p->request_id), "%s", request_id);
    lx_buf_init(&p->head, 0);
    lx_buf_init(&p->body, 0);
    if (pool->upstream_model && scan && scan->model_value.p)
        rewrite_model(p);
    req->data = p;
    req->on_abort = on_client_abort;
    req->on_drain = on_client_drain;
    proxy_attempt(p);
}
