/*
 * proxy.c - the proxy state machine; see proxy.h.
 *
 * Retry rule (SPEC): a connect error, a timeout before the first response
 * byte, or a 429/500/502/503/504 answer is retried on another node, up to
 * max_retries times, and only while nothing has been sent to the client. The
 * last attempt relays a node's error answer as it is; when no node answered
 * at all the client gets 502 (unreachable) or 504 (timed out).
 *
 * Admission: every request takes a slot of the global limit first
 * (MAX_CONCURRENT_REQUESTS), or waits in the global FIFO (MAX_QUEUE_SIZE; full:
 * 429). It is bound to a node only when it has a slot. When every node that is
 * up is at its max_concurrency, it parks in its pool's queue until a node of
 * the pool frees capacity. Waiting in either queue is bounded by
 * QUEUE_TIMEOUT_SECONDS (then 503). The slot is held until the response ends
 * and released on every path (proxy_free).
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
#include "../http/sse.h"
#include "../obs/access_log.h"
#include "../obs/metrics.h"
#include "../route/router.h"

#define RELAY_HIGH_WATER (256 * 1024)
#define USAGE_TAIL 4096 /* bytes of a non-streamed body kept to find "usage" at its end */

enum proxy_fail { FAIL_NONE, FAIL_CONNECT, FAIL_TIMEOUT, FAIL_STATUS, FAIL_PROTOCOL };
enum proxy_wait { WAIT_NONE, WAIT_ADMIT, WAIT_PARK, WAIT_BACKOFF };

#define RETRY_BACKOFF_MS 10      /* before the 2nd attempt; doubles per retry */
#define RETRY_BACKOFF_MAX_MS 200

struct lx_proxy {
    struct lx_worker *w;
    struct lx_waiter waiter;        /* in the admission queue or the pool's parked queue */
    enum proxy_wait waiting;        /* which queue, if any */
    bool zombie;                    /* client gone while a wake is on its way */
    bool has_slot;                  /* holds an admission slot */
    uint64_t wait_deadline_ms;      /* queue timeout, lx_now_ms() based; 0 = none yet */
    uint64_t total_deadline_ms;     /* TOTAL_TIMEOUT_SECONDS deadline, 0 = none */
    uint64_t retry_at_ms;           /* end of a retry backoff (WAIT_BACKOFF) */
    struct lx_proxy *wprev, *wnext; /* the worker's list of waiting requests */
    struct lx_proxy *mb_next;       /* the worker's mailbox */
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
    bool is_sse;                    /* relaying text/event-stream */
    bool in_flight;                 /* counted in node->in_flight */
    bool stream;                    /* the client asked for a stream */
    bool usage_injected;            /* llmux asked the node for stream usage */
    struct lx_sse sse;              /* SSE scanner of a relayed stream */
    struct lx_buf tail;             /* end of a non-streamed body (usage) */
    struct lx_usage usage;
    int status;                     /* status sent to the client, 0 = none yet */
    uint64_t t_start_ns;            /* arrival */
    uint64_t t_admit_ns;            /* admission slot taken, 0 = not yet */
    uint64_t t_send_ns;             /* this attempt sent */
    uint64_t t_send_ms;             /* the same, lx_now_ms() based */
    uint64_t t_first_ns;            /* first body byte relayed, 0 = none */
    uint64_t bytes_in, bytes_out;
    char request_id[80];
    char model[128];                /* metrics label: the pool's model, or the one asked for */
    char asked_model[128];          /* for the access log */
    char client_addr[64];
    char path_copy[128];
    int method;
    char last_node[128];            /* name of the last node tried */
};

static const struct lx_upstream_cbs up_cbs;

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

/* Ends the current attempt's hold on its node; a request parked for
 * capacity in the pool may now go. */
static void node_release(struct lx_proxy *p)
{
    if (!p->node)
        return;
    if (p->in_flight) {
        atomic_fetch_sub_explicit(&p->node->in_flight, 1, memory_order_relaxed);
        p->in_flight = false;
        if (lx_waitq_len(&p->pool->parked) > 0)
            lx_waitq_wake_one(&p->pool->parked);
        /* After a reload, requests park in the newer snapshot's pool (see
         * adopt_newest) while this one still belongs to the older. */
        if (p->reg != p->w->reg) {
            struct lx_pool *now = lx_registry_find(p->w->reg, p->pool->model,
                                                   strlen(p->pool->model));

            if (now && now != p->pool && lx_waitq_len(&now->parked) > 0)
                lx_waitq_wake_one(&now->parked);
        }
    }
    lx_node_unref(p->node);
    p->node = NULL;
}

struct lx_proxy **lx_proxy_next(struct lx_proxy *p)
{
    return &p->mb_next;
}

/* ---- the worker's list of waiting requests (queue timeouts) ----------- */

static void wait_list_add(struct lx_proxy *p)
{
    struct lx_worker *w = p->w;

    if (p->wprev || w->waiting == p)
        return;
    p->wnext = w->waiting;
    if (w->waiting)
        w->waiting->wprev = p;
    w->waiting = p;
    if (!uv_is_active((uv_handle_t *)&w->wait_timer))
        uv_timer_start(&w->wait_timer, lx_proxy_sweep, 50, 50);
}

static void wait_list_remove(struct lx_proxy *p)
{
    struct lx_worker *w = p->w;

    if (!p->wprev && w->waiting != p)
        return;
    if (p->wprev)
        p->wprev->wnext = p->wnext;
    else
        w->waiting = p->wnext;
    if (p->wnext)
        p->wnext->wprev = p->wprev;
    p->wprev = p->wnext = NULL;
    if (!w->waiting)
        uv_timer_stop(&w->wait_timer);
}

/* Metrics and the access log line of a request that is over. */
static void proxy_account(struct lx_proxy *p)
{
    uint64_t end = now_ns();
    double total = (double)(end - p->t_start_ns) / 1e9;
    double ttft = p->stream && p->t_first_ns ? (double)(p->t_first_ns - p->t_start_ns) / 1e9 : -1;
    double tps = -1;
    int status = p->status ? p->status : 499;
    struct lx_request_record r;

    if (p->usage.completion_tokens > 0 && p->t_first_ns && end > p->t_first_ns) {
        double gen = (double)(end - (p->stream ? p->t_first_ns : p->t_send_ns)) / 1e9;

        if (gen > 0.001)
            tps = (double)p->usage.completion_tokens / gen;
    }
    r = (struct lx_request_record){p->model, status, total, ttft, tps, p->usage.prompt_tokens,
                                   p->usage.completion_tokens};
    lx_metrics_request(p->w->metrics, &r);
    atomic_fetch_add_explicit(&p->pool->requests_total, 1, memory_order_relaxed);
    if (status >= 500)
        atomic_fetch_add_explicit(&p->pool->errors_total, 1, memory_order_relaxed);
    if (p->usage.prompt_tokens > 0)
        atomic_fetch_add_explicit(&p->pool->prompt_tokens, (uint64_t)p->usage.prompt_tokens,
                                  memory_order_relaxed);
    if (p->usage.completion_tokens > 0)
        atomic_fetch_add_explicit(&p->pool->completion_tokens,
                                  (uint64_t)p->usage.completion_tokens, memory_order_relaxed);
    if (!lx_access_log_enabled())
        return;
    lx_access_log_write(&(struct lx_access_entry){
        .request_id = p->request_id,
        .client = p->client_addr,
        .method = http_method_str(p->method),
        .path = p->path_copy,
        .model = p->asked_model,
        .node = p->last_node[0] ? p->last_node : NULL,
        .status = status,
        .retries = p->attempts > 1 ? p->attempts - 1 : 0,
        .queue_wait_s = p->t_admit_ns > p->t_start_ns + 1000000
                            ? (double)(p->t_admit_ns - p->t_start_ns) / 1e9
                            : (p->t_admit_ns ? 0 : -1),
        .ttft_s = ttft,
        .total_s = total,
        .bytes_in = p->bytes_in,
        .bytes_out = p->bytes_out,
        .prompt_tokens = p->usage.prompt_tokens,
        .completion_tokens = p->usage.completion_tokens,
        .stream = p->stream,
    });
}

static void proxy_free(struct lx_proxy *p)
{
    proxy_account(p);
    node_release(p);
    wait_list_remove(p);
    if (p->has_slot) {
        p->has_slot = false;
        lx_admit_release(&p->w->gw->admit);
    }
    for (size_t i = 0; i < p->pick.n_tried; i++)
        lx_node_unref(p->pick.tried[i]);
    lx_registry_unref(p->reg);
    lx_buf_deinit(&p->head);
    lx_buf_deinit(&p->body);
    lx_buf_deinit(&p->tail);
    lx_sse_deinit(&p->sse);
    free(p);
}

/* Takes the request out of the queue it waits in; false if it was already
 * woken (the wake is on its way to this worker). */
static bool dequeue(struct lx_proxy *p)
{
    bool removed = p->waiting == WAIT_BACKOFF ? true
                   : p->waiting == WAIT_ADMIT ? lx_admit_cancel(&p->w->gw->admit, &p->waiter)
                                              : lx_waitq_remove(&p->pool->parked, &p->waiter);

    if (removed) {
        p->waiting = WAIT_NONE;
        if (!p->total_deadline_ms)
            wait_list_remove(p);
    }
    return removed;
}

static void on_client_abort(struct lx_http_req *req)
{
    struct lx_proxy *p = req->data;

    lx_debug("[%s] client went away; cancelling node request", p->request_id);
    p->client = NULL;
    if (p->waiting != WAIT_NONE && !dequeue(p)) {
        /* A wake is already on its way to this request: free it then. */
        p->zombie = true;
        return;
    }
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
    char retry_after[16];

    h[n++] = (struct lx_http_header){"X-Request-Id", 12, p->request_id, strlen(p->request_id)};
    if (p->pick.n_tried) {
        /* Name the last node tried, so that a client can tell who failed. */
        const struct lx_node *last = p->pick.tried[p->pick.n_tried - 1];

        h[n++] = (struct lx_http_header){"X-Routed-Node", 13, last->name, strlen(last->name)};
    }
    if (status == 503 || status == 429) {
        int ra = lx_admit_retry_after(&p->w->gw->admit);

        h[n++] = (struct lx_http_header){"Retry-After", 11, retry_after,
                                         (size_t)snprintf(retry_after, sizeof(retry_after),
                                                          "%d", ra)};
    }
    if (status == 429)
        lx_metrics_reject(p->w->metrics, LX_REJECT_QUEUE_FULL);
    else if (strcmp(code, "queue_timeout") == 0)
        lx_metrics_reject(p->w->metrics, LX_REJECT_QUEUE_TIMEOUT);
    else if (strcmp(code, "no_healthy_node") == 0)
        lx_metrics_reject(p->w->metrics, LX_REJECT_NO_HEALTHY_NODE);
    if (p->client) {
        p->status = status;
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
/* <h>'s name is one of the comma-separated tokens of <list> (a Connection
 * field's value: the hop-by-hop fields a sender names, RFC 9110 7.6.1). */
static bool header_named_in(const struct lx_http_header *h, const struct lx_http_header *list)
{
    const char *p = list->value, *end = list->value + list->value_len;

    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *tok_end = comma ? comma : end;

        while (p < tok_end && (*p == ' ' || *p == '\t'))
            p++;
        while (tok_end > p && (tok_end[-1] == ' ' || tok_end[-1] == '\t'))
            tok_end--;
        if (header_is(h, p, (size_t)(tok_end - p)))
            return true;
        p = comma ? comma + 1 : end;
    }
    return false;
}

/*
 * Hop-by-hop and framing headers, the ones llmux sets itself, and the
 * client's own forwarding headers: X-Forwarded-For is rebuilt (the client's
 * value, then the peer's address); Forwarded and X-Real-IP would let a
 * client pose as any address to the node, so they are dropped.
 */
static bool is_request_header_dropped(const struct lx_http_header *h,
                                      const struct lx_http_header *conn)
{
    static const char *const drop[] = {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate", "host", "content-length",
        "authorization", "expect", "x-request-id", "x-forwarded-for", "forwarded", "x-real-ip",
    };

    for (size_t i = 0; i < ARRAY_SIZE(drop); i++)
        if (header_is(h, drop[i], strlen(drop[i])))
            return true;
    return conn && header_named_in(h, conn);
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
    const struct lx_http_header *conn = lx_http_req_header(req, "connection");
    const struct lx_http_header *xff = lx_http_req_header(req, "x-forwarded-for");
    struct lx_buf *b = &p->head;
    const char *body = p->body.len ? p->body.data : req->body.data;
    size_t body_len = p->body.len ? p->body.len : req->body.len;

    lx_buf_reset(b);
    /* Appends, no printf: this runs for every request. */
    lx_buf_append_str(b, http_method_str(req->method));
    lx_buf_append(b, " ", 1);
    lx_buf_append_str(b, p->node->base_path);
    lx_buf_append_str(b, p->path);
    lx_buf_append(b, " HTTP/1.1\r\nHost: ", 17);
    lx_buf_append_str(b, p->node->host_header);
    lx_buf_append(b, "\r\n", 2);
    if (req->method != HTTP_GET || body_len) {
        lx_buf_append(b, "Content-Length: ", 16);
        lx_buf_append_u64(b, body_len);
        lx_buf_append(b, "\r\n", 2);
    }
    if (p->node->auth_header) {
        lx_buf_append(b, "Authorization: ", 15);
        lx_buf_append_str(b, p->node->auth_header);
        lx_buf_append(b, "\r\n", 2);
    }
    lx_buf_append(b, "X-Request-Id: ", 14);
    lx_buf_append_str(b, p->request_id);
    lx_buf_append(b, "\r\n", 2);
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct lx_http_header *h = &req->headers[i];

        if (is_request_header_dropped(h, conn))
            continue;
        lx_buf_append(b, h->name, h->name_len);
        lx_buf_append(b, ": ", 2);
        lx_buf_append(b, h->value, h->value_len);
        lx_buf_append(b, "\r\n", 2);
    }
    lx_buf_append(b, "X-Forwarded-For: ", 17);
    if (xff && xff->value_len) {
        lx_buf_append(b, xff->value, xff->value_len);
        lx_buf_append(b, ", ", 2);
    }
    lx_buf_append_str(b, p->client_addr);
    lx_buf_append(b, "\r\n\r\n", 4);
    p->up.nbufs = 0;
    p->up.bufs[p->up.nbufs++] = uv_buf_init(b->data, (unsigned int)b->len);
    if (body_len)
        p->up.bufs[p->up.nbufs++] = uv_buf_init((char *)body, (unsigned int)body_len);
}

/*
 * Rewrites the body for the node: "model" replaced by the pool's
 * upstream_model, and, for a stream whose client did not ask for usage,
 * "stream_options":{"include_usage":true} added so that token counts reach
 * the metrics (the extra usage event is then filtered out of the relay).
 */
static void rewrite_body(struct lx_proxy *p)
{
    const struct lx_buf *in = &p->client->body;
    const char *um = p->pool->upstream_model;
    const char *v = p->scan.model_value.p;
    size_t pos = 0, brace;

    lx_buf_init(&p->body, 0);
    for (brace = 0; brace < in->len && in->data[brace] != '{'; brace++)
        ;
    if (p->stream && !p->scan.stream_options.p) {
        size_t k = brace + 1;

        while (k < in->len && (in->data[k] == ' ' || in->data[k] == '\n' ||
                               in->data[k] == '\r' || in->data[k] == '\t'))
            k++;
        lx_buf_append(&p->body, in->data, brace + 1);
        lx_buf_append(&p->body, "\"stream_options\":{\"include_usage\":true}", 39);
        if (k < in->len && in->data[k] != '}')
            lx_buf_append(&p->body, ",", 1);
        pos = brace + 1;
        p->usage_injected = true;
    }
    if (um && v) {
        size_t at = (size_t)(v - in->data);

        lx_buf_append(&p->body, in->data + pos, at - pos);
        lx_buf_append(&p->body, "\"", 1);
        lx_json_escape(&p->body, um, strlen(um));
        lx_buf_append(&p->body, "\"", 1);
        pos = at + p->scan.model_value.len;
    }
    lx_buf_append(&p->body, in->data + pos, in->len - pos);
}

static bool pool_is_full(struct lx_proxy *p);

/* A retry is allowed and some other node could take it (or will have
 * capacity for it soon). */
static bool can_retry(struct lx_proxy *p)
{
    if (p->attempts > p->w->gw->conf->max_retries)
        return false;
    return lx_router_is_any_candidate(p->pool, &p->pick) || pool_is_full(p);
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
    case FAIL_PROTOCOL:
        proxy_fail(p, 502, "server_error", "upstream_protocol_error",
                   "the node's answer broke the HTTP protocol");
        break;
    default:
        proxy_fail(p, 502, "server_error", "upstream_unreachable",
                   "the node could not be reached");
        break;
    }
}

/* Some node that is up, not drained and not yet tried is at its
 * max_concurrency: worth waiting for. */
static bool pool_is_full(struct lx_proxy *p)
{
    uint64_t now = lx_now_ms();

    for (size_t i = 0; i < p->pool->n_nodes; i++) {
        struct lx_node *n = p->pool->nodes[i];
        bool tried = false;

        for (size_t k = 0; k < p->pick.n_tried; k++)
            tried |= p->pick.tried[k] == n;
        if (!tried && n->max_concurrency > 0 && lx_node_is_up(n, now) &&
            !atomic_load_explicit(&n->drained, memory_order_relaxed) &&
            atomic_load_explicit(&n->in_flight, memory_order_relaxed) >= n->max_concurrency)
            return true;
    }
    return false;
}

static void wait_start(struct lx_proxy *p, enum proxy_wait kind)
{
    p->waiting = kind;
    if (!p->wait_deadline_ms)
        p->wait_deadline_ms =
            lx_now_ms() + (uint64_t)(p->w->gw->conf->queue_timeout_s * 1000);
    wait_list_add(p);
}

/*
 * A request not yet answered by any node follows the newest configuration:
 * one that waited through a reload (or an admin change) is bound with the
 * pools as they are now. Its pool must still exist with the same
 * upstream_model (the body was written for it); otherwise it keeps its own.
 */
static void adopt_newest(struct lx_proxy *p)
{
    struct lx_registry *now = p->w->reg;
    struct lx_pool *pool;

    if (p->reg == now)
        return;
    pool = lx_registry_find(now, p->pool->model, strlen(p->pool->model));
    if (!pool || strcmp(pool->model, p->pool->model) != 0 ||
        !pool->upstream_model != !p->pool->upstream_model ||
        (pool->upstream_model && strcmp(pool->upstream_model, p->pool->upstream_model) != 0))
        return;
    lx_registry_unref(p->reg);
    p->reg = lx_registry_ref(now);
    p->pool = pool;
}

static void proxy_attempt(struct lx_proxy *p)
{
    const struct lx_conf *conf = p->w->gw->conf;
    struct lx_upstream_target target;
    struct lx_node *node;

    adopt_newest(p);
    for (;;) {
        p->pick.rand = lx_worker_rand(p->w);
        p->pick.now_ms = lx_now_ms();
        node = lx_router_pick(p->pool, &p->pick);
        if (node)
            break;
        if (!pool_is_full(p)) {
            proxy_give_up(p);
            return;
        }
        /* Wait in llmux, not in an overloaded node's queue. Once visible in
         * the parked queue, look again: capacity freed just before is not
         * announced twice. */
        wait_start(p, WAIT_PARK);
        lx_waitq_push(&p->pool->parked, &p->waiter, p->attempts > 0 || p->pick.n_tried > 0);
        p->pick.rand = lx_worker_rand(p->w);
        if (!lx_router_is_any_candidate(p->pool, &p->pick))
            return;
        if (!dequeue(p))
            return; /* woken meanwhile: resume comes through the mailbox */
    }
    p->node = node;
    if (p->attempts > 0)
        lx_metrics_retry(p->w->metrics);
    p->attempts++;
    snprintf(p->last_node, sizeof(p->last_node), "%s", node->name);
    lx_metrics_node_request(p->w->metrics, node->name);
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
    p->t_send_ms = lx_now_ms();
    target = lx_node_target(node);
    lx_upstream_send(p->w->pool, &target, &p->up);
}

/*
 * Retries after a short backoff (10 ms, doubling, at most 200 ms): enough to
 * let a burst of 429/503 from overloaded nodes spread out, too short to
 * matter for a plain failover. Only called when another node is available
 * (can_retry), so a request with nowhere to go fails at once.
 */
static void proxy_retry(struct lx_proxy *p)
{
    uint64_t ms = RETRY_BACKOFF_MS << (p->attempts > 1 ? LX_MIN(p->attempts - 1, 8) : 0);

    p->retry_at_ms = lx_now_ms() + LX_MIN(ms, RETRY_BACKOFF_MAX_MS);
    p->waiting = WAIT_BACKOFF;
    wait_list_add(p);
    /* The sweep normally ticks every 50 ms; wake it for this deadline. */
    uv_timer_start(&p->w->wait_timer, lx_proxy_sweep, LX_MIN(ms, RETRY_BACKOFF_MAX_MS), 50);
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
    uint64_t ttfb_us = (now_ns() - p->t_send_ns) / 1000;

    /* 429 is the node protecting itself, not a fault; 5xx is a fault. */
    lx_metrics_node_latency(p->w->metrics, p->node->name, (double)ttfb_us / 1e6);
    if (status >= 500) {
        lx_node_report_failure(p->node, "answered 5xx");
        lx_metrics_node_failure(p->w->metrics, p->node->name);
        lx_metrics_upstream_error(p->w->metrics, p->node->name, LX_UPERR_STATUS_5XX);
        atomic_fetch_add_explicit(&p->node->errors[LX_UPERR_STATUS_5XX], 1, memory_order_relaxed);
    } else if (status != 429) {
        lx_node_report_success(p->node, ttfb_us);
    }
    if (is_retryable_status(status) && can_retry(p)) {
        lx_info("[%s] node %s answered %d; retrying on another node", p->request_id,
                p->node->name, status);
        lx_upstream_cancel(&p->up);
        node_release(p);
        p->last_fail = FAIL_STATUS;
        proxy_retry(p);
        return;
    }
    p->relaying = true;
    p->status = status;
    for (size_t i = 0; i < n_hdrs && n < ARRAY_SIZE(out) - 2; i++) {
        if (is_response_header_dropped(&hdrs[i]))
            continue;
        if (header_is(&hdrs[i], "content-type", 12) && hdrs[i].value_len >= 17 &&
            strncasecmp(hdrs[i].value, "text/event-stream", 17) == 0)
            p->is_sse = true;
        out[n++] = hdrs[i];
    }
    out[n++] = (struct lx_http_header){"X-Routed-Node", 13, p->node->name, strlen(p->node->name)};
    out[n++] = (struct lx_http_header){"X-Request-Id", 12, p->request_id, strlen(p->request_id)};
    p->sse.drop_usage = p->is_sse && p->usage_injected;
    /* The relay may change an event stream's length (usage filtered, an
     * error event on a break): never promise the node's length for it. */
    if (p->is_sse)
        content_length = -1;
    /* The head leaves with the first body bytes (or at the end of this
     * read): one write per response instead of two. */
    lx_http_resp_start_lazy(p->client, status, out, n, content_length);
}

static void up_on_read_end(void *ctx)
{
    struct lx_proxy *p = ctx;

    if (p->client)
        lx_http_resp_flush(p->client);
}

static void relay_out(void *ctx, const char *data, size_t len)
{
    struct lx_proxy *p = ctx;

    p->bytes_out += len;
    lx_http_resp_write(p->client, data, len);
}

/* Keeps the last USAGE_TAIL bytes of a non-streamed body. */
static void tail_keep(struct lx_buf *t, const char *data, size_t len)
{
    if (len >= USAGE_TAIL) {
        lx_buf_reset(t);
        lx_buf_append(t, data + len - USAGE_TAIL, USAGE_TAIL);
        return;
    }
    if (t->len + len > USAGE_TAIL)
        lx_buf_consume(t, t->len + len - USAGE_TAIL);
    lx_buf_append(t, data, len);
}

static void up_on_body(void *ctx, const char *data, size_t len)
{
    struct lx_proxy *p = ctx;

    if (!p->t_first_ns) {
        p->t_first_ns = now_ns();
        if (p->stream && p->node)
            lx_ewma_update(&p->node->ewma_ttft_us, (p->t_first_ns - p->t_start_ns) / 1000);
    }
    /* One write per node read: up_on_read_end or the end flushes. */
    lx_http_resp_cork(p->client);
    if (p->is_sse) {
        /* Whole events only, counted as they pass (see sse.h). */
        lx_sse_feed(&p->sse, data, len, relay_out, p);
    } else {
        tail_keep(&p->tail, data, len);
        relay_out(p, data, len);
    }
    if (lx_http_resp_pending(p->client) > RELAY_HIGH_WATER)
        lx_upstream_pause(&p->up);
}

static void up_on_done(void *ctx)
{
    struct lx_proxy *p = ctx;
    struct lx_http_req *req = p->client;

    if (p->is_sse) {
        lx_sse_flush(&p->sse, relay_out, p);
        p->usage = p->sse.usage;
    } else if (p->tail.len) {
        lx_usage_scan(p->tail.data, p->tail.len, &p->usage);
    }
    /* Release the node before the client connection moves on to a
     * pipelined request. */
    p->client = NULL;
    proxy_free(p);
    lx_http_resp_end(req);
}

/*
 * The client already has the response head and the exchange cannot go on:
 * end the body as cleanly as the framing allows. An SSE stream gets a last
 * `data: {"error": ...}` event and a proper end; other bodies are cut, so the
 * client sees a truncated response rather than a silently short one.
 * <node_broke>: the node failed (counted as its stream_broken error), rather
 * than a limit of llmux's ending the request.
 */
static void relay_break(struct lx_proxy *p, bool node_broke, const char *code, const char *msg)
{
    struct lx_http_req *req = p->client;

    if (p->node && node_broke) {
        lx_metrics_upstream_error(p->w->metrics, p->node->name, LX_UPERR_STREAM_BROKEN);
        atomic_fetch_add_explicit(&p->node->errors[LX_UPERR_STREAM_BROKEN], 1,
                                  memory_order_relaxed);
    }
    lx_upstream_cancel(&p->up);
    node_release(p);
    p->client = NULL;
    if (p->is_sse) {
        struct lx_buf ev;

        lx_buf_init(&ev, 0);
        /* An event cut in the middle by an overlong pass-through gets ended
         * so the error event stands on its own. */
        if (p->sse.partial_overflow)
            lx_buf_append(&ev, "\n\n", 2);
        lx_buf_appendf(&ev, "data: {\"error\":{\"message\":\"%s\",\"type\":\"server_error\","
                            "\"param\":null,\"code\":\"%s\"}}\n\n",
                       msg, code);
        lx_http_resp_write(req, ev.data, ev.len);
        lx_buf_deinit(&ev);
        lx_http_resp_end(req);
    } else {
        lx_http_resp_abort(req);
    }
    proxy_free(p);
}

/* Forgets a response that was started and then taken back (nothing of it
 * reached the client), so the request can be answered afresh. */
static void relay_reset(struct lx_proxy *p)
{
    p->relaying = false;
    p->is_sse = false;
    p->status = 0;
    p->t_first_ns = 0;
    p->bytes_out = 0;
    lx_buf_reset(&p->tail);
    lx_sse_deinit(&p->sse);
    lx_sse_init(&p->sse, false);
}

static void up_on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct lx_proxy *p = ctx;
    static const char *const kinds[] = {"", "connect", "timeout", "idle timeout", "protocol",
                                        "closed", "local"};
    /* A node that answered other requests after this one was sent is slow
     * for this request (a long generation), not down: no ejection for it. */
    bool node_alive = kind == LX_UP_TIMEOUT &&
                      atomic_load_explicit(&p->node->last_success_ms, memory_order_relaxed) >=
                          p->t_send_ms;

    if (kind == LX_UP_LOCAL) {
        lx_warn("[%s] cannot connect to node %s: llmux is out of file descriptors or local "
                "ports (raise the descriptor limit or lower MAX_CONNECTIONS)",
                p->request_id, p->node->name);
        node_release(p);
        proxy_fail(p, 503, "server_error", "gateway_overloaded",
                   "llmux is out of connections; try again later");
        return;
    }
    lx_warn("[%s] node %s: %s error%s", p->request_id, p->node ? p->node->name : "-",
            kinds[kind], got_head ? " mid-response" : "");
    if (!node_alive) {
        lx_node_report_failure(p->node, kind == LX_UP_CONNECT   ? "connect error"
                                        : kind == LX_UP_TIMEOUT ? "timeout before the response head"
                                        : kind == LX_UP_IDLE    ? "stream idle timeout"
                                        : kind == LX_UP_PROTOCOL ? "malformed response"
                                                                 : "connection closed mid-response");
        lx_metrics_node_failure(p->w->metrics, p->node->name);
    }
    /* A response whose head was still held back has not reached the
     * client: it can be answered (502/504) or retried instead of cut. */
    if (p->relaying && p->client && lx_http_resp_retract(p->client))
        relay_reset(p);
    if (!p->relaying) {
        enum lx_upstream_error_kind k = kind == LX_UP_CONNECT   ? LX_UPERR_CONNECT
                                        : kind == LX_UP_TIMEOUT ? LX_UPERR_TIMEOUT
                                                                : LX_UPERR_PROTOCOL;

        lx_metrics_upstream_error(p->w->metrics, p->node->name, k);
        atomic_fetch_add_explicit(&p->node->errors[k], 1, memory_order_relaxed);
    }
    if (!p->relaying) {
        node_release(p);
        p->last_fail = kind == LX_UP_TIMEOUT    ? FAIL_TIMEOUT
                       : kind == LX_UP_PROTOCOL ? FAIL_PROTOCOL
                                                : FAIL_CONNECT;
        if (can_retry(p))
            proxy_retry(p);
        else
            proxy_give_up(p);
        return;
    }
    relay_break(p, true, lx_metrics_uperr_name(LX_UPERR_STREAM_BROKEN),
                "the node's stream broke before it finished");
}

static const struct lx_upstream_cbs up_cbs = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_done = up_on_done,
    .on_error = up_on_error,
    .on_read_end = up_on_read_end,
};

void lx_request_id(struct lx_worker *w, const struct lx_http_req *req, char *out, size_t len)
{
    const struct lx_http_header *h = lx_http_req_header(req, "x-request-id");
    static const char hex[] = "0123456789abcdef";

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
    /* 32 hex digits by hand (snprintf was most of the cost of an id). */
    LX_ASSERT(len >= 33);
    for (int k = 0; k < 2; k++) {
        uint64_t r = lx_worker_rand(w);

        for (int d = 15; d >= 0; d--, r >>= 4)
            out[k * 16 + d] = hex[r & 15];
    }
    out[32] = '\0';
}

static void on_waiter_wake(struct lx_waiter *wt)
{
    struct lx_proxy *p = container_of(wt, struct lx_proxy, waiter);

    lx_worker_wake(p->w, p);
}

void lx_proxy_resume(struct lx_proxy *p)
{
    enum proxy_wait was = p->waiting;

    p->waiting = WAIT_NONE;
    if (!p->total_deadline_ms)
        wait_list_remove(p);
    if (was == WAIT_ADMIT) {
        p->has_slot = true;
        p->t_admit_ns = now_ns();
        lx_metrics_queue_wait(p->w->metrics, (double)(p->t_admit_ns - p->t_start_ns) / 1e9);
    }
    if (p->zombie) {
        proxy_free(p);
        return;
    }
    proxy_attempt(p);
}

void lx_proxy_sweep(uv_timer_t *t)
{
    struct lx_worker *w = container_of(t, struct lx_worker, wait_timer);
    uint64_t now = lx_now_ms();
    struct lx_proxy *p = w->waiting, *next;

    for (; p; p = next) {
        next = p->wnext;
        if (p->zombie)
            continue;
        if (p->waiting == WAIT_BACKOFF) {
            if (now >= p->retry_at_ms) {
                dequeue(p);
                proxy_attempt(p);
            }
            continue;
        }
        if (p->waiting != WAIT_NONE && now >= p->wait_deadline_ms) {
            if (!dequeue(p))
                continue; /* woken meanwhile: the mailbox has it */
            atomic_fetch_add(&w->gw->admit.timeouts_total, 1);
            proxy_fail(p, 503, "server_error", "queue_timeout",
                       "the request waited longer than the queue timeout");
        } else if (p->total_deadline_ms && now >= p->total_deadline_ms) {
            if (p->waiting != WAIT_NONE && !dequeue(p))
                continue;
            lx_warn("[%s] total timeout reached", p->request_id);
            if (p->relaying) {
                relay_break(p, false, "total_timeout",
                            "the request took longer than the total timeout");
                continue;
            }
            lx_upstream_cancel(&p->up);
            node_release(p);
            proxy_fail(p, 504, "server_error", "total_timeout",
                       "the request took longer than the total timeout");
        }
    }
}

void lx_proxy_start(struct lx_worker *w, struct lx_http_req *req, struct lx_pool *pool,
                    const struct lx_body_scan *scan, const char *upstream_path,
                    const char *request_id)
{
    struct lx_proxy *p = lx_calloc(1, sizeof(*p));
    const struct lx_http_header *session = lx_http_req_header(req, "x-session-id");

    p->w = w;
    p->client = req;
    p->reg = lx_registry_ref(w->reg);
    p->pool = pool;
    p->path = upstream_path;
    p->t_start_ns = now_ns();
    p->method = req->method;
    p->bytes_in = req->body.len;
    p->usage.prompt_tokens = p->usage.completion_tokens = -1;
    lx_sse_init(&p->sse, false);
    lx_buf_init(&p->tail, 0);
    /* Formatted once: X-Forwarded-For of every attempt, and the access log. */
    lx_http_req_peer_str(req, p->client_addr, sizeof(p->client_addr));
    if (lx_access_log_enabled())
        snprintf(p->path_copy, sizeof(p->path_copy), "%.*s", (int)req->path_only_len, req->path);
    if (scan && scan->model_is_string)
        snprintf(p->asked_model, sizeof(p->asked_model), "%.*s",
                 (int)LX_MIN(scan->model.len, sizeof(p->asked_model) - 1), scan->model.p);
    /* A named pool labels metrics with its own name; a catch-all pool with
     * the model asked for, bounded (lx_metrics_model_label). */
    if (strcmp(pool->model, "*") == 0 && p->asked_model[0])
        lx_metrics_model_label(p->model, sizeof(p->model), p->asked_model,
                               strlen(p->asked_model));
    else
        snprintf(p->model, sizeof(p->model), "%s", pool->model);
    p->stream = scan && scan->stream;
    p->waiter.wake = on_waiter_wake;
    if (scan)
        p->scan = *scan;
    p->pick.scan = &p->scan;
    if (session && session->value_len) {
        p->pick.affinity = session->value;
        p->pick.affinity_len = session->value_len;
    }
    snprintf(p->request_id, sizeof(p->request_id), "%s", request_id);
    lx_buf_init(&p->head, 0);
    lx_buf_init(&p->body, 0);
    if ((pool->upstream_model && scan && scan->model_value.p) ||
        (p->stream && !scan->stream_options.p))
        rewrite_body(p);
    req->data = p;
    req->on_abort = on_client_abort;
    req->on_drain = on_client_drain;
    if (w->gw->conf->total_timeout_s > 0) {
        p->total_deadline_ms = lx_now_ms() + (uint64_t)(w->gw->conf->total_timeout_s * 1000);
        wait_list_add(p);
    }
    switch (lx_admit_enter(&w->gw->admit, &p->waiter)) {
    case LX_ADMIT_GRANTED:
        p->has_slot = true;
        p->t_admit_ns = now_ns();
        proxy_attempt(p);
        break;
    case LX_ADMIT_QUEUED:
        wait_start(p, WAIT_ADMIT);
        break;
    case LX_ADMIT_FULL:
        proxy_fail(p, 429, "rate_limit_error", "queue_full",
                   "too many requests are waiting; try again later");
        break;
    }
}
