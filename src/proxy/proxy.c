/*
 * proxy.c - one proxied request as a state machine; see proxy.h.
 *
 * States (enum px_state) and what moves a request between them:
 *
 *   NEW       arrived: admission decides -> PICK, QUEUED, or DONE (429).
 *   QUEUED    waits for an admission slot (MAX_CONCURRENT_REQUESTS) in the
 *             process-wide FIFO (MAX_QUEUE_SIZE; full: 429). Granted -> PICK.
 *   PICK      chooses a node of the pool (passing through, never rests):
 *             found -> EXCHANGE; every candidate at its max_concurrency ->
 *             PARKED; no candidate -> DONE with the last failure's answer.
 *   PARKED    waits in the pool's queue for a node with capacity. -> PICK.
 *   EXCHANGE  the request is with a node; nothing has reached the client.
 *             Response head -> RELAY; a failure that may be retried on
 *             another node (connect, timeout, 429/5xx, protocol) -> BACKOFF;
 *             otherwise -> DONE with 502/504, or the node's error relayed.
 *   RELAY     the client has the response head (or it waits in the client's
 *             output, see lx_http_resp_start_lazy); the body streams through.
 *             End -> DONE. A break whose head could still be taken back ->
 *             handled as in EXCHANGE; else the body ends as cleanly as its
 *             framing allows (an SSE error event, or a cut) -> DONE.
 *   BACKOFF   a short pause before the next attempt (10 ms doubling, 200 ms
 *             at most) -> PICK.
 *   DONE      answered or abandoned: counted, logged, every resource
 *             released, and freed (once its timer handle, if it ever had
 *             one, has closed).
 *
 * px_enter() makes every move and does the work of leaving the old state
 * (the node exchange ends) and entering the new one. Other threads never
 * touch a request: a slot or a node freed elsewhere wakes it through its
 * worker's mailbox (px_on_mail), while it still sits in QUEUED or PARKED.
 *
 * Deadlines: QUEUED and PARKED share QUEUE_TIMEOUT_SECONDS (503); every state
 * has TOTAL_TIMEOUT_SECONDS (504, or a broken stream once relaying). One
 * timer per request, armed on entry to a state for that state's deadline;
 * a request that never has one (admitted at once, no total timeout, no
 * retry) never initialises it.
 * A client that goes away cancels the node exchange (closing its connection,
 * so vLLM stops generating) and ends the request; if a wake is already on
 * its way to it, the request waits for it, without a client, then ends.
 *
 * Retries (SPEC): at most MAX_RETRIES more attempts, each on a node not yet
 * tried, and only while nothing has reached the client. The slot is held
 * from admission to DONE.
 *
 * An exchange (struct px_exchange) is one attempt's node, connection and
 * request head. A request has one at a time; they are separate so that a
 * hedge or a resumed stream can own a second.
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
#include "error_shape.h"
#include "resume.h"

#define RELAY_HIGH_WATER (256 * 1024)
#define USAGE_TAIL 4096 /* bytes of a non-streamed body kept to find "usage" at its end */
#define RETRY_BACKOFF_MS 10      /* before the 2nd attempt; doubles per retry */
#define RETRY_BACKOFF_MAX_MS 200
#define RELAY_MAX_HEADERS 130 /* response header fields relayed, at most */

enum px_state {
    PX_NEW, PX_QUEUED, PX_PICK, PX_PARKED, PX_EXCHANGE, PX_RELAY, PX_BACKOFF, PX_DONE
};

static const char *const state_names[] = {"NEW",   "QUEUED",  "PICK", "PARKED", "EXCHANGE",
                                          "RELAY", "BACKOFF", "DONE"};

/* The answers the gateway makes itself, when no node's answer is relayed. */
enum px_answer {
    ANS_QUEUE_FULL, ANS_QUEUE_TIMEOUT, ANS_CLIENT_DEADLINE, ANS_NO_NODE, ANS_TOTAL_TIMEOUT,
    ANS_OVERLOADED
};

static const struct {
    int status;
    const char *type, *code, *message;
    int reject; /* enum lx_reject counted, -1 = none */
} answers[] = {
    [ANS_QUEUE_FULL] = {429, "rate_limit_error", "queue_full",
                        "too many requests are waiting; try again later", LX_REJECT_QUEUE_FULL},
    [ANS_QUEUE_TIMEOUT] = {503, "server_error", "queue_timeout",
                           "the request waited longer than the queue timeout",
                           LX_REJECT_QUEUE_TIMEOUT},
    [ANS_CLIENT_DEADLINE] = {503, "server_error", "client_deadline",
                             "the client's deadline (X-Stainless-Timeout or X-Request-Timeout) "
                             "passed while the request waited",
                             LX_REJECT_QUEUE_TIMEOUT},
    [ANS_NO_NODE] = {503, "server_error", "no_healthy_node",
                     "no healthy node is available for this model", LX_REJECT_NO_HEALTHY_NODE},
    [ANS_TOTAL_TIMEOUT] = {504, "server_error", "total_timeout",
                           "the request took longer than the total timeout", -1},
    [ANS_OVERLOADED] = {503, "server_error", "gateway_overloaded",
                        "llmux is out of connections; try again later", -1},
};

struct lx_proxy;

/* A response head kept until its exchange wins a hedge race. */
struct px_held_head {
    int status;
    int64_t content_length;
    size_t n;
    struct lx_http_header h[RELAY_MAX_HEADERS + 2]; /* + X-Routed-Node, X-Request-Id */
    struct lx_buf text;             /* the names and values h[] points into */
};

struct px_exchange {
    struct lx_proxy *p;
    struct lx_node *node;           /* reference, counted in node->in_flight; NULL = none */
    struct lx_upstream_req up;
    struct lx_buf head;             /* the request head for this node */
    struct px_held_head *held;      /* a hedge's head while it races, else NULL */
    uint64_t t_send_ns;
    uint64_t t_send_ms;             /* the same, lx_now_ms() based */
    uint64_t t_event_ns;            /* a stream: the last read from the node that
                                       completed SSE events, 0 = none yet */
};

struct lx_proxy {
    enum px_state state;
    struct lx_proxy_env *env;
    struct lx_mail mail;            /* a wake from another thread */
    struct lx_waiter waiter;        /* in the admission queue (QUEUED) or the pool's (PARKED) */
    struct lx_node *woken_for;      /* PARKED: the node whose capacity woke it (parked_wants) */
    uv_timer_t timer;               /* the current state's deadline */
    bool timer_open;                /* initialised at first use (most requests never
                                       wait): then closed before the request is freed */
    uint64_t queue_deadline_ms;     /* set when it first waits; 0 = has not waited */
    uint64_t total_deadline_ms;     /* 0 = none */
    uint64_t retry_at_ms;           /* end of BACKOFF */
    struct lx_http_req *client;     /* NULL once the client is gone or answered */
    struct lx_registry *reg;        /* reference: keeps pool alive */
    struct lx_pool *pool;
    struct px_exchange slots[2];    /* the attempt and, while a hedge races, the hedge */
    struct px_exchange *ex;         /* the attempt in charge: the one relayed */
    struct px_exchange *hedge;      /* the other, racing it for the first byte; NULL = none */
    uint64_t hedge_at_ms;           /* EXCHANGE: when a hedge may start, 0 = not armed */
    bool hedged;                    /* a hedge was tried (at most one a request) */
    const char *hedge_result;       /* access log: "started", "won", "lost"; NULL = none */
    uint64_t client_deadline_ms;    /* X-Stainless-Timeout / X-Request-Timeout, 0 = none */
    struct lx_pick pick;
    struct lx_body_scan scan;
    struct lx_buf body;             /* rewritten body (upstream_model), else empty */
    struct lx_resume *resume;       /* a stream that may be resumed, else NULL */
    struct lx_buf cont;             /* the continuation's body, once resuming */
    struct lx_buf evbuf;            /* a continuation's event, rewritten */
    struct px_held_head *err_head;  /* a node's error answer, held until its body is whole */
    struct lx_buf err_body;         /* ... and its body (LX_ERROR_BODY_MAX) */
    bool budget_refused;            /* a retry was refused by the retry budget */
    bool budget_noted;              /* counted among the pool's requests (retry budget) */
    bool resume_ok;                 /* a resumed stream reached its end */
    const char *path;               /* upstream path, borrowed from client req */
    enum lx_api endpoint;           /* the client's path, for metrics */
    int attempts;                   /* attempts started */
    int last_fail;                  /* enum lx_fail of the last failed attempt, -1 = none */
    bool stream;                    /* the client asked for a stream */
    bool usage_injected;            /* llmux asked the node for stream usage */
    bool is_sse;                    /* the response relayed is text/event-stream */
    struct lx_sse sse;              /* SSE scanner of a relayed stream */
    struct lx_buf tail;             /* end of a non-streamed body (usage) */
    struct lx_usage usage;
    int status;                     /* status sent to the client, 0 = none yet */
    const char *error;              /* error code llmux answered or broke a stream with */
    uint64_t t_start_ns;            /* arrival */
    uint64_t t_admit_ns;            /* admission slot taken (held until DONE), 0 = not yet */
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

static void px_enter(struct lx_proxy *p, enum px_state next);
static bool is_continuing(const struct lx_proxy *p);
static void hedge_drop(struct lx_proxy *p, bool lost);
static void hedge_arm(struct lx_proxy *p);
static void hedge_start(struct lx_proxy *p);
static void held_free(struct px_exchange *x);
static void head_free(struct px_held_head *hh);
static void relay_retract(struct lx_proxy *p);
static void relay_out(void *ctx, const char *data, size_t len);
static void relay_break(struct lx_proxy *p, bool node_broke, const char *code, const char *msg);
static const struct lx_upstream_cbs up_cbs;

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

/* ---- exchanges -------------------------------------------------------- */

/* A parked request that has not tried <arg> (the node whose capacity was
 * freed) can use it; the first such one is woken. Under the queue's lock:
 * tried[] was written before the request parked. */
static bool parked_wants(const struct lx_waiter *w, void *arg)
{
    struct lx_proxy *p = container_of(w, struct lx_proxy, waiter);

    for (size_t i = 0; i < p->pick.n_tried; i++)
        if (p->pick.tried[i] == arg)
            return false;
    p->woken_for = arg;
    return true;
}

/* Hands the capacity of <node> to a request parked in <pool> that can use it. */
static void wake_parked(struct lx_pool *pool, struct lx_node *node)
{
    if (lx_waitq_len(&pool->parked) > 0)
        lx_waitq_wake_first(&pool->parked, parked_wants, node);
}

/* Ends <x>: its connection is closed unless it finished, and its node's
 * capacity is returned (a request parked for it may go). */
static void exchange_end(struct lx_proxy *p, struct px_exchange *x)
{
    struct lx_registry *newest = p->env->reg;

    if (!x->node)
        return;
    lx_upstream_cancel(&x->up);
    /* Sequentially consistent, as the queue length read next: against a
     * request parking at once (proxy_pick, its fence), one of the two sees
     * the other on any CPU. */
    atomic_fetch_sub(&x->node->in_flight, 1);
    wake_parked(p->pool, x->node);
    /* After a reload, requests park in the newer snapshot's pool (see
     * adopt_newest) while this one still belongs to the older. */
    if (p->reg != newest) {
        struct lx_pool *now = lx_registry_find(newest, p->pool->model, strlen(p->pool->model));

        if (now && now != p->pool)
            wake_parked(now, x->node);
    }
    lx_node_unref(x->node);
    x->node = NULL;
}

/* Counts a failure of <x>'s node under <kind> (metrics, /stats). */
static void exchange_count_error(struct lx_proxy *p, struct px_exchange *x, enum lx_fail kind)
{
    lx_metrics_upstream_error(p->env->metrics, x->node->name, kind);
    atomic_fetch_add_explicit(&x->node->errors[kind], 1, memory_order_relaxed);
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

/* Builds <x>'s request head for its node; the body is p->body or the client's. */
static void build_request(struct lx_proxy *p, struct px_exchange *x)
{
    const struct lx_http_req *req = p->client;
    const struct lx_http_header *conn = lx_http_req_header(req, "connection");
    const struct lx_http_header *xff = lx_http_req_header(req, "x-forwarded-for");
    struct lx_buf *b = &x->head;
    const struct lx_buf *sent = p->cont.len ? &p->cont : p->body.len ? &p->body : &req->body;
    const char *body = sent->data;
    size_t body_len = sent->len;

    lx_buf_reset(b);
    /* Appends, no printf: this runs for every request. */
    lx_buf_append_str(b, http_method_str(req->method));
    lx_buf_append(b, " ", 1);
    lx_buf_append_str(b, x->node->base_path);
    lx_buf_append_str(b, p->path);
    lx_buf_append(b, " HTTP/1.1\r\nHost: ", 17);
    lx_buf_append_str(b, x->node->host_header);
    lx_buf_append(b, "\r\n", 2);
    if (req->method != HTTP_GET || body_len) {
        lx_buf_append(b, "Content-Length: ", 16);
        lx_buf_append_u64(b, body_len);
        lx_buf_append(b, "\r\n", 2);
    }
    if (x->node->auth_header) {
        lx_buf_append(b, "Authorization: ", 15);
        lx_buf_append_str(b, x->node->auth_header);
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
    x->up.nbufs = 0;
    x->up.bufs[x->up.nbufs++] = uv_buf_init(b->data, (unsigned int)b->len);
    if (body_len)
        x->up.bufs[x->up.nbufs++] = uv_buf_init((char *)body, (unsigned int)body_len);
}

/*
 * Rewrites the body for the node: "model" replaced by the pool's
 * upstream_model, and, for a stream whose client did not ask for usage,
 * "stream_options":{"include_usage":true} added so that token counts reach
 * the metrics (the extra usage event is then filtered out of the relay).
 */
/* Chat and completions: the endpoints whose streams carry OpenAI's chunks
 * (usage on request, continued by stream resume). */
static bool is_chat_like(const struct lx_proxy *p)
{
    return p->endpoint == LX_API_CHAT_COMPLETIONS || p->endpoint == LX_API_COMPLETIONS;
}

static bool wants_usage(const struct lx_proxy *p)
{
    return p->stream && is_chat_like(p) && !p->scan.stream_options.p;
}

static void rewrite_body(struct lx_proxy *p)
{
    const struct lx_buf *in = &p->client->body;
    const char *um = p->pool->upstream_model;
    const char *v = p->scan.model_value.p;
    size_t pos = 0, brace;

    lx_buf_init(&p->body, 0);
    for (brace = 0; brace < in->len && in->data[brace] != '{'; brace++)
        ;
    if (wants_usage(p)) {
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
        if (p->scan.model_is_form_field) {
            lx_buf_append_str(&p->body, um); /* the form field's bytes, from the config */
        } else {
            lx_buf_append(&p->body, "\"", 1);
            lx_json_escape(&p->body, um, strlen(um));
            lx_buf_append(&p->body, "\"", 1);
        }
        pos = at + p->scan.model_value.len;
    }
    lx_buf_append(&p->body, in->data + pos, in->len - pos);
}

/* ---- accounting and answers -------------------------------------------- */

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
        double gen = (double)(end - (p->stream ? p->t_first_ns : p->ex->t_send_ns)) / 1e9;

        if (gen > 0.001)
            tps = (double)p->usage.completion_tokens / gen;
    }
    r = (struct lx_request_record){p->model, status, total, ttft, tps, p->usage.prompt_tokens,
                                   p->usage.completion_tokens, p->endpoint};
    lx_metrics_request(p->env->metrics, &r);
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
        .error = p->error,
        .retries = p->attempts > 1 ? p->attempts - 1 : 0,
        .attempts = p->attempts,
        .hedge = p->hedge_result,
        .resumed = p->resume ? p->resume->continuations : 0,
        .budget_refused = p->budget_refused,
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

/* Answers the client with an error of the gateway's and ends the request. */
static void proxy_reply(struct lx_proxy *p, int status, const char *type, const char *code,
                        const char *msg, int reject)
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
        int ra = lx_admit_retry_after(p->env->admit);

        h[n++] = (struct lx_http_header){"Retry-After", 11, retry_after,
                                         (size_t)snprintf(retry_after, sizeof(retry_after),
                                                          "%d", ra)};
    }
    if (reject >= 0)
        lx_metrics_reject(p->env->metrics, (enum lx_reject)reject);
    if (p->client && is_continuing(p)) {
        /* The client has the stream's first part: it ends as a broken one. */
        relay_break(p, false, code, msg);
        return;
    }
    p->error = code;
    if (p->client) {
        p->status = status;
        p->client->on_abort = NULL;
        lx_http_resp_error(p->client, status, type, code, h, n, "%s", msg);
        p->client = NULL;
    }
    px_enter(p, PX_DONE);
}

static void proxy_answer(struct lx_proxy *p, enum px_answer a)
{
    proxy_reply(p, answers[a].status, answers[a].type, answers[a].code, answers[a].message,
                answers[a].reject);
}

/* No node (left) to try: the answer follows the last failure. */
static void proxy_give_up(struct lx_proxy *p)
{
    const struct lx_fail_kind *k;

    if (p->last_fail < 0) {
        proxy_answer(p, ANS_NO_NODE);
        return;
    }
    k = &lx_fail_kinds[p->last_fail];
    proxy_reply(p, k->status, "server_error", k->code, k->message, -1);
}

/* ---- picking a node ------------------------------------------------------ */

/* Some node that is up (healthy or slow start) and not yet tried is at its
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
            atomic_load_explicit(&n->in_flight, memory_order_relaxed) >= n->max_concurrency)
            return true;
    }
    return false;
}

/* The client's deadline leaves time for a new attempt's first token: the
 * best first-token time any node of the pool has shown. */
static bool deadline_allows(struct lx_proxy *p)
{
    uint64_t best_us = 0, now = lx_now_ms();

    if (!p->client_deadline_ms)
        return true;
    for (size_t i = 0; i < p->pool->n_nodes; i++) {
        uint64_t t = atomic_load_explicit(&p->pool->nodes[i]->ewma_ttft_us, memory_order_relaxed);

        if (t && (!best_us || t < best_us))
            best_us = t;
    }
    return now + best_us / 1000 < p->client_deadline_ms;
}

/* A retry is allowed, some other node could take it (or will have
 * capacity for it soon), and the pool's retry budget has room for it (a
 * refusal is counted). */
static bool can_retry(struct lx_proxy *p)
{
    if (p->attempts > p->env->conf->max_retries)
        return false;
    if (!lx_router_is_any_candidate(p->pool, &p->pick) && !pool_is_full(p))
        return false;
    if (!deadline_allows(p)) {
        lx_info("[%s] no retry: the client's deadline is too near", p->request_id);
        return false;
    }
    if (!lx_budget_try_spend(&p->pool->retry_budget, lx_now_ms())) {
        lx_info("[%s] retry refused by the retry budget", p->request_id);
        lx_metrics_retry_refused(p->env->metrics);
        p->budget_refused = true;
        return false;
    }
    return true;
}

/*
 * A request not yet answered by any node follows the newest configuration:
 * one that waited through a reload (or an admin change) is bound with the
 * pools as they are now. Its pool must still exist with the same
 * upstream_model (the body was written for it); otherwise it keeps its own.
 */
static void adopt_newest(struct lx_proxy *p)
{
    struct lx_registry *now = p->env->reg;
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

/* Takes the request out of the queue of its state (QUEUED, PARKED); false
 * if another thread woke it first (the wake is on its way: px_on_mail). */
static bool dequeue(struct lx_proxy *p)
{
    if (p->state == PX_QUEUED)
        return lx_admit_cancel(p->env->admit, &p->waiter);
    return lx_waitq_remove(&p->pool->parked, &p->waiter);
}

/* PICK: the next state follows from what the router finds. */
static void proxy_pick(struct lx_proxy *p)
{
    struct lx_node *node;

    adopt_newest(p);
    p->pick.rand = lx_rand_next(&p->env->rng);
    p->pick.now_ms = lx_now_ms();
    /* Admitted requests count toward the retry budget, not the ones turned
     * away: a flood of rejected requests must not buy retries. */
    if (!p->budget_noted) {
        lx_budget_note_request(&p->pool->retry_budget, p->pick.now_ms);
        p->budget_noted = true;
    }
    node = lx_router_pick(p->pool, &p->pick);
    if (!node) {
        if (!pool_is_full(p)) {
            proxy_give_up(p);
            return;
        }
        /* Wait in llmux, not in an overloaded node's queue. Once visible in
         * the parked queue, look again: capacity freed just before is not
         * announced twice. */
        px_enter(p, PX_PARKED);
        atomic_thread_fence(memory_order_seq_cst); /* see exchange_end */
        if (lx_router_is_any_candidate(p->pool, &p->pick) && dequeue(p))
            px_enter(p, PX_PICK);
        return;
    }
    p->ex->node = node;
    atomic_fetch_add_explicit(&node->in_flight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&node->requests_total, 1, memory_order_relaxed);
    px_enter(p, PX_EXCHANGE);
}

/* EXCHANGE: sends the request to the node just picked. */
static void exchange_start(struct lx_proxy *p, struct px_exchange *x)
{
    const struct lx_conf *conf = p->env->conf;
    struct lx_upstream_target target = lx_node_target(x->node);

    if (p->attempts > 0 && x != p->hedge)
        lx_metrics_retry(p->env->metrics);
    p->attempts++;
    if (x != p->hedge)
        snprintf(p->last_node, sizeof(p->last_node), "%s", x->node->name);
    lx_metrics_node_request(p->env->metrics, x->node->name);
    if (p->pick.n_tried < LX_PICK_MAX_TRIED)
        p->pick.tried[p->pick.n_tried++] = lx_node_ref(x->node);
    build_request(p, x);
    x->up.cbs = &up_cbs;
    x->up.ctx = x;
    x->up.timeouts.connect_ms = (uint64_t)(conf->connect_timeout_s * 1000);
    x->up.timeouts.first_byte_ms = (uint64_t)(conf->node_timeout_s * 1000);
    x->up.timeouts.idle_ms = (uint64_t)(conf->stream_idle_timeout_s * 1000);
    x->t_send_ns = now_ns();
    x->t_send_ms = lx_now_ms();
    x->t_event_ns = 0;
    lx_upstream_send(p->env->up, &target, &x->up);
}

/* ---- the transition function and the request's timer ------------------ */

static void on_timer(uv_timer_t *t);

/* Arms the timer for <deadline_ms> (0 = none) or the total deadline,
 * whichever comes first. */
static void timer_arm(struct lx_proxy *p, uint64_t deadline_ms)
{
    uint64_t d = p->total_deadline_ms, now;

    if (deadline_ms && (!d || deadline_ms < d))
        d = deadline_ms;
    if (!d) {
        if (p->timer_open)
            uv_timer_stop(&p->timer);
        return;
    }
    if (!p->timer_open) {
        uv_timer_init(p->env->loop, &p->timer);
        p->timer_open = true;
    }
    now = lx_now_ms();
    uv_timer_start(&p->timer, on_timer, d > now ? d - now : 0, 0);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(container_of((uv_timer_t *)h, struct lx_proxy, timer));
}

/* DONE: everything the request holds is given back. */
static void proxy_done(struct lx_proxy *p)
{
    struct lx_http_req *req = p->client;

    proxy_account(p);
    if (is_continuing(p))
        lx_metrics_resume(p->env->metrics, p->resume_ok);
    exchange_end(p, p->ex);
    if (p->hedge)
        exchange_end(p, p->hedge);
    if (p->t_admit_ns)
        lx_admit_release(p->env->admit);
    if (req) {
        req->data = NULL;
        req->on_abort = NULL;
        req->on_drain = NULL;
        p->client = NULL;
    }
    for (size_t i = 0; i < p->pick.n_tried; i++)
        lx_node_unref(p->pick.tried[i]);
    lx_registry_unref(p->reg);
    for (int i = 0; i < 2; i++) {
        lx_buf_deinit(&p->slots[i].head);
        held_free(&p->slots[i]);
    }
    lx_buf_deinit(&p->body);
    lx_buf_deinit(&p->cont);
    lx_buf_deinit(&p->evbuf);
    head_free(p->err_head);
    lx_buf_deinit(&p->err_body);
    if (p->resume) {
        lx_resume_deinit(p->resume);
        free(p->resume);
    }
    lx_buf_deinit(&p->tail);
    lx_sse_deinit(&p->sse);
    if (p->timer_open)
        uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    else
        free(p);
}

static void px_trace(struct lx_proxy *p, enum px_state next)
{
    if (p->env->trace)
        p->env->trace(p->env, p->request_id, state_names[p->state], state_names[next]);
}

static void px_enter(struct lx_proxy *p, enum px_state next)
{
    enum px_state prev = p->state;
    uint64_t ms;

    LX_ASSERT(prev != PX_DONE);
    px_trace(p, next);
    /* Leaving an exchange for anything but its relay ends it. */
    if ((prev == PX_EXCHANGE || prev == PX_RELAY) && next != PX_RELAY) {
        p->hedge_at_ms = 0;
        exchange_end(p, p->ex);
        if (p->hedge) /* neither sent a byte: the race is off */
            hedge_drop(p, false);
    }
    p->state = next;
    switch (next) {
    case PX_QUEUED:
    case PX_PARKED:
        if (!p->queue_deadline_ms)
            p->queue_deadline_ms =
                lx_now_ms() + (uint64_t)(p->env->conf->queue_timeout_s * 1000);
        if (p->client_deadline_ms && p->client_deadline_ms < p->queue_deadline_ms)
            p->queue_deadline_ms = p->client_deadline_ms;
        if (next == PX_PARKED)
            lx_waitq_push(&p->pool->parked, &p->waiter, p->attempts > 0 || p->pick.n_tried > 0);
        timer_arm(p, p->queue_deadline_ms);
        break;
    case PX_PICK:
        timer_arm(p, 0);
        proxy_pick(p);
        break;
    case PX_EXCHANGE:
        exchange_start(p, p->ex);
        hedge_arm(p);
        break;
    case PX_NEW: /* never entered */
    case PX_RELAY:
        break;
    case PX_BACKOFF:
        /* Enough to let a burst of 429/503 from overloaded nodes spread
         * out, too short to matter for a plain failover. */
        ms = RETRY_BACKOFF_MS << (p->attempts > 1 ? LX_MIN(p->attempts - 1, 8) : 0);
        p->retry_at_ms = lx_now_ms() + LX_MIN(ms, RETRY_BACKOFF_MAX_MS);
        timer_arm(p, p->retry_at_ms);
        break;
    case PX_DONE:
        proxy_done(p);
        break;
    }
}

static void on_timer(uv_timer_t *t)
{
    struct lx_proxy *p = container_of(t, struct lx_proxy, timer);
    uint64_t total = p->total_deadline_ms;

    /* The timer was armed for the earliest deadline of the state; which one
     * it was is not told by lx_now_ms(): libuv counts the delay from its
     * loop time, cached when the turn began, so the timer may fire a little
     * before that deadline by lx_now_ms(). */
    switch (p->state) {
    case PX_QUEUED:
    case PX_PARKED:
        if (!dequeue(p))
            return; /* woken meanwhile: the mailbox has it */
        if (!total || p->queue_deadline_ms <= total) {
            atomic_fetch_add(&p->env->admit->timeouts_total, 1);
            proxy_answer(p, p->queue_deadline_ms == p->client_deadline_ms ? ANS_CLIENT_DEADLINE
                                                                          : ANS_QUEUE_TIMEOUT);
        } else {
            lx_warn("[%s] total timeout reached", p->request_id);
            proxy_answer(p, ANS_TOTAL_TIMEOUT);
        }
        return;
    case PX_BACKOFF:
        if (!total || p->retry_at_ms < total) {
            px_enter(p, PX_PICK);
            return;
        }
        break;
    case PX_EXCHANGE:
    case PX_RELAY:
        if (p->hedge_at_ms && (!total || p->hedge_at_ms < total)) {
            p->hedge_at_ms = 0;
            hedge_start(p);
            timer_arm(p, 0);
            return;
        }
        break;
    case PX_NEW:
    case PX_PICK:
    case PX_DONE:
        return;
    }
    lx_warn("[%s] total timeout reached", p->request_id);
    /* A head still held back can be answered 504 instead. */
    if (p->state == PX_RELAY && !is_continuing(p) &&
        (p->err_head || lx_http_resp_retract(p->client)))
        relay_retract(p);
    if (p->state == PX_RELAY)
        relay_break(p, false, "total_timeout", answers[ANS_TOTAL_TIMEOUT].message);
    else
        proxy_answer(p, ANS_TOTAL_TIMEOUT);
}

/* A wake from another thread: a slot (QUEUED) or a node's capacity (PARKED). */
static void px_on_mail(struct lx_mail *m)
{
    struct lx_proxy *p = container_of(m, struct lx_proxy, mail);

    if (p->state == PX_QUEUED) {
        p->t_admit_ns = now_ns();
        lx_metrics_queue_wait(p->env->metrics, (double)(p->t_admit_ns - p->t_start_ns) / 1e9);
    } else if (!p->client && p->woken_for) {
        /* The capacity this wake announced goes unused: pass it on. */
        wake_parked(p->pool, p->woken_for);
    }
    p->woken_for = NULL;
    px_enter(p, p->client ? PX_PICK : PX_DONE);
}

static void on_waiter_wake(struct lx_waiter *wt)
{
    struct lx_proxy *p = container_of(wt, struct lx_proxy, waiter);

    lx_mailbox_post(p->env->mailbox, &p->mail);
}

/* ---- the client ---------------------------------------------------------- */

static void on_client_abort(struct lx_http_req *req)
{
    struct lx_proxy *p = req->data;

    lx_debug("[%s] client went away; cancelling node request", p->request_id);
    p->client = NULL;
    if ((p->state == PX_QUEUED || p->state == PX_PARKED) && !dequeue(p))
        return; /* a wake is on its way: px_on_mail ends the request */
    px_enter(p, PX_DONE);
}

static void on_client_drain(struct lx_http_req *req)
{
    struct lx_proxy *p = req->data;

    lx_upstream_resume(&p->ex->up);
}

/* ---- the node's answer ---------------------------------------------------- */

static bool is_retryable_status(int status)
{
    return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

/* A failed attempt that nothing of reached the client: another node, or the
 * last failure's answer. */
static void attempt_failed(struct lx_proxy *p, enum lx_fail kind)
{
    p->last_fail = (int)kind;
    if (can_retry(p))
        px_enter(p, PX_BACKOFF);
    else
        proxy_give_up(p);
}

/* ---- stream resume (resume.h) ------------------------------------------- */

static bool is_continuing(const struct lx_proxy *p)
{
    return p->resume && p->resume->continuations > 0;
}

static void resume_note(void *ctx, const char *ev, size_t len)
{
    lx_resume_note(ctx, ev, len);
}

static bool is_event_stream(const struct lx_http_header *hdrs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (header_is(&hdrs[i], "content-type", 12) && hdrs[i].value_len >= 17 &&
            strncasecmp(hdrs[i].value, "text/event-stream", 17) == 0)
            return true;
    return false;
}

/* The head of a continuation: the client has one already, so a stream
 * goes on in the one it has; anything else ends it as broken. */
static void continuation_head(struct lx_proxy *p, struct px_exchange *x, int status,
                              const struct lx_http_header *hdrs, size_t n_hdrs)
{
    if (status != 200 || !is_event_stream(hdrs, n_hdrs)) {
        lx_warn("[%s] node %s answered the continuation %d%s", p->request_id, x->node->name,
                status, status == 200 ? " without an event stream" : "");
        relay_break(p, false, lx_fail_kinds[LX_FAIL_STREAM_BROKEN].code,
                    lx_fail_kinds[LX_FAIL_STREAM_BROKEN].message);
        return;
    }
    /* A fresh stream from the node: whatever the broken one left half
     * way is gone, and usage is the continuation's. */
    lx_buf_reset(&p->sse.partial);
    p->sse.partial_overflow = false;
    p->sse.nl = 0;
    p->sse.per_event = true;
    p->sse.usage.prompt_tokens = p->sse.usage.completion_tokens = -1;
    px_enter(p, PX_RELAY);
}

/* A continuation's events, rewritten to follow the first part. */
static void relay_cont(void *ctx, const char *data, size_t len)
{
    struct lx_proxy *p = ctx;

    lx_buf_reset(&p->evbuf);
    if (lx_resume_event(p->resume, data, len, &p->evbuf))
        relay_out(p, p->evbuf.data, p->evbuf.len);
}

/* The stream's text is whole (its finish_reason was relayed, or its token
 * limit reached): it ends without a node. */
static void resume_whole(struct lx_proxy *p)
{
    struct lx_http_req *req = p->client;
    bool done = p->sse.done;

    px_enter(p, PX_DONE); /* frees p */
    if (!done)
        lx_http_resp_write(req, "data: [DONE]\n\n", 14);
    lx_http_resp_end(req);
}

/*
 * The node of a stream failed after the response started: another node
 * continues it (STREAM_RESUME) if the stream can be continued exactly, a
 * retry is left and the retry budget allows. True if the request went on
 * (to BACKOFF, for another node, or DONE, whole).
 */
static bool try_resume(struct lx_proxy *p, struct px_exchange *x)
{
    const struct lx_buf *sent = p->body.len ? &p->body : &p->client->body;
    const char *why = NULL;
    enum lx_resume_plan plan;

    if (!p->resume || !p->is_sse || p->status != 200)
        return false;
    if (p->sse.done) {
        exchange_count_error(p, x, LX_FAIL_STREAM_BROKEN);
        resume_whole(p); /* [DONE] was relayed: the end was all that was left */
        return true;
    }
    /* An event longer than LX_SSE_EVENT_MAX went to the client unexamined:
     * the text so far is not known. */
    if (p->sse.overflows || p->sse.partial_overflow)
        return false;
    plan = lx_resume_plan(p->resume, sent->data, sent->len, &p->cont, &why);
    if (plan == LX_RESUME_NO) {
        lx_info("[%s] the stream cannot be resumed: %s", p->request_id, why);
        return false;
    }
    if (plan == LX_RESUME_GO && !can_retry(p)) {
        lx_buf_reset(&p->cont);
        return false;
    }
    exchange_count_error(p, x, LX_FAIL_STREAM_BROKEN);
    if (plan == LX_RESUME_WHOLE) {
        p->resume_ok = true;
        resume_whole(p);
        return true;
    }
    lx_info("[%s] node %s broke the stream after %lld tokens; resuming it on another node",
            p->request_id, x->node->name, (long long)p->resume->tokens);
    lx_resume_start(p->resume);
    p->last_fail = LX_FAIL_STREAM_BROKEN;
    p->queue_deadline_ms = 0; /* a wait for a node starts afresh */
    px_enter(p, PX_BACKOFF);
    return true;
}

/* ---- response heads ------------------------------------------------------ */

static void head_free(struct px_held_head *hh)
{
    if (hh) {
        lx_buf_deinit(&hh->text);
        free(hh);
    }
}

/* A copy of a response head, kept past the callback that brought it. */
static struct px_held_head *head_copy(int status, const struct lx_http_header *hdrs,
                                      size_t n_hdrs, int64_t content_length)
{
    struct px_held_head *hh = lx_calloc(1, sizeof(*hh));
    size_t off = 0;

    hh->status = status;
    hh->content_length = content_length;
    lx_buf_init(&hh->text, 0);
    for (size_t i = 0; i < n_hdrs && hh->n < ARRAY_SIZE(hh->h); i++) {
        lx_buf_append(&hh->text, hdrs[i].name, hdrs[i].name_len);
        lx_buf_append(&hh->text, hdrs[i].value, hdrs[i].value_len);
        hh->h[hh->n++] = (struct lx_http_header){NULL, hdrs[i].name_len, NULL,
                                                 hdrs[i].value_len};
    }
    /* Pointed into once the text stopped moving. */
    for (size_t i = 0; i < hh->n; i++) {
        hh->h[i].name = hh->text.data + off;
        off += hh->h[i].name_len;
        hh->h[i].value = hh->text.data + off;
        off += hh->h[i].value_len;
    }
    return hh;
}

static void held_free(struct px_exchange *x)
{
    head_free(x->held);
    x->held = NULL;
}

/* The response head of <x>, the exchange in charge, goes to the client
 * (lazily: with the first body bytes). */
static void relay_head(struct lx_proxy *p, struct px_exchange *x, int status,
                       const struct lx_http_header *hdrs, size_t n_hdrs, int64_t content_length)
{
    struct lx_http_header out[RELAY_MAX_HEADERS + 2];
    size_t n = 0;

    p->status = status;
    p->is_sse = false;
    for (size_t i = 0; i < n_hdrs && n < RELAY_MAX_HEADERS; i++) {
        if (is_response_header_dropped(&hdrs[i]))
            continue;
        if (header_is(&hdrs[i], "content-type", 12) && hdrs[i].value_len >= 17 &&
            strncasecmp(hdrs[i].value, "text/event-stream", 17) == 0)
            p->is_sse = true;
        out[n++] = hdrs[i];
    }
    out[n++] = (struct lx_http_header){"X-Routed-Node", 13, x->node->name, strlen(x->node->name)};
    out[n++] = (struct lx_http_header){"X-Request-Id", 12, p->request_id, strlen(p->request_id)};
    if (status >= 400 && !p->is_sse) {
        /* Held whole, to reach the client in OpenAI's shape (error_shape.h). */
        p->err_head = head_copy(status, out, n, content_length);
        px_enter(p, PX_RELAY);
        return;
    }
    p->sse.drop_usage = p->is_sse && p->usage_injected;
    if (p->is_sse && p->resume && status == 200) {
        p->sse.on_choices = resume_note;
        p->sse.choices_ctx = p->resume;
    }
    /* The relay may change an event stream's length (usage filtered, an
     * error event on a break): never promise the node's length for it. */
    if (p->is_sse)
        content_length = -1;
    px_enter(p, PX_RELAY);
    /* The head leaves with the first body bytes (or at the end of this
     * read): one write per response instead of two. */
    lx_http_resp_start_lazy(p->client, status, out, n, content_length);
}

/* ---- hedging (HEDGE_AFTER_SECONDS) --------------------------------------- */

static void relay_retract(struct lx_proxy *p);

/* Ends the racing hedge; <lost>: it lost the race (counted), rather than
 * the race being called off. */
static void hedge_drop(struct lx_proxy *p, bool lost)
{
    struct px_exchange *h = p->hedge;

    p->hedge = NULL;
    exchange_end(p, h);
    held_free(h);
    if (lost) {
        lx_metrics_hedge(p->env->metrics, LX_HEDGE_LOST);
        p->hedge_result = "lost";
    }
}

/*
 * The hedge takes over: its first byte came first, or the attempt in charge
 * failed before any of its bytes reached the client. The loser's head, held
 * back while the race was on (up_on_read_end), is taken back; the winner's,
 * if it came, goes to the client instead. False (the hedge dropped) if the
 * loser's head could not be taken back.
 */
static bool hedge_win(struct lx_proxy *p)
{
    struct px_exchange *h = p->hedge;

    if (p->state == PX_RELAY) {
        if (!lx_http_resp_retract(p->client)) {
            hedge_drop(p, true);
            return false;
        }
        relay_retract(p);
    }
    exchange_end(p, p->ex);
    p->ex = h;
    p->hedge = NULL;
    lx_metrics_hedge(p->env->metrics, LX_HEDGE_WON);
    p->hedge_result = "won";
    snprintf(p->last_node, sizeof(p->last_node), "%s", h->node->name);
    if (h->held) {
        struct px_held_head *hh = h->held;

        relay_head(p, h, hh->status, hh->h, hh->n, hh->content_length);
        held_free(h);
    }
    return true;
}

/* The racing hedge's head: a stream or an answer is kept until its first
 * byte (up_on_body); a failure loses the race. */
static void hedge_head(struct lx_proxy *p, struct px_exchange *x, int status,
                       const struct lx_http_header *hdrs, size_t n_hdrs, int64_t content_length)
{
    if (status != 200) {
        lx_info("[%s] hedge on %s answered %d; dropped", p->request_id, x->node->name, status);
        hedge_drop(p, true);
        return;
    }
    held_free(x);
    x->held = head_copy(status, hdrs, n_hdrs, content_length);
}

/* EXCHANGE entered: a hedge may follow if no first byte comes in time. */
static void hedge_arm(struct lx_proxy *p)
{
    double after = p->pool->hedge_after_s;

    if (after <= 0 || p->hedged || is_continuing(p))
        return;
    p->hedge_at_ms = lx_now_ms() + (uint64_t)(after * 1000);
    timer_arm(p, p->hedge_at_ms);
}

/* No first byte in time: the same request to a second node with room,
 * once; the original is never delayed for it. */
static void hedge_start(struct lx_proxy *p)
{
    struct px_exchange *h = p->ex == &p->slots[0] ? &p->slots[1] : &p->slots[0];
    struct lx_node *node;

    p->hedged = true;
    if (!p->client || p->t_first_ns || is_continuing(p) || !deadline_allows(p))
        return;
    p->pick.rand = lx_rand_next(&p->env->rng);
    p->pick.now_ms = lx_now_ms();
    node = lx_router_pick(p->pool, &p->pick);
    if (!node)
        return;
    if (!lx_budget_try_spend(&p->pool->retry_budget, p->pick.now_ms)) {
        lx_info("[%s] hedge refused by the retry budget", p->request_id);
        lx_metrics_retry_refused(p->env->metrics);
        p->budget_refused = true;
        lx_node_unref(node);
        return;
    }
    lx_info("[%s] no first byte from %s after %.3g s; hedging on %s", p->request_id,
            p->ex->node->name, p->pool->hedge_after_s, node->name);
    h->node = node;
    atomic_fetch_add_explicit(&node->in_flight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&node->requests_total, 1, memory_order_relaxed);
    p->hedge = h;
    lx_metrics_hedge(p->env->metrics, LX_HEDGE_STARTED);
    p->hedge_result = "started";
    exchange_start(p, h);
}

static void up_on_head(void *ctx, int status, const struct lx_http_header *hdrs, size_t n_hdrs,
                       int64_t content_length)
{
    struct px_exchange *x = ctx;
    struct lx_proxy *p = x->p;
    uint64_t ttfb_us = (now_ns() - x->t_send_ns) / 1000;

    /* 429 is the node protecting itself, not a fault; 5xx is a fault. */
    lx_metrics_node_latency(p->env->metrics, x->node->name, p->stream, (double)ttfb_us / 1e6);
    if (status >= 500) {
        lx_node_report_failure(x->node, "answered 5xx");
        lx_metrics_node_failure(p->env->metrics, x->node->name);
        exchange_count_error(p, x, LX_FAIL_STATUS_5XX);
    } else if (status != 429) {
        lx_node_report_success(x->node, ttfb_us);
    }
    if (x == p->hedge) {
        hedge_head(p, x, status, hdrs, n_hdrs, content_length);
        return;
    }
    if (is_retryable_status(status) && p->hedge) {
        lx_info("[%s] node %s answered %d; its hedge goes on", p->request_id, x->node->name,
                status);
        if (hedge_win(p))
            return;
    }
    if (is_retryable_status(status) && can_retry(p)) {
        lx_info("[%s] node %s answered %d; retrying on another node", p->request_id,
                x->node->name, status);
        p->last_fail = LX_FAIL_STATUS_5XX;
        px_enter(p, PX_BACKOFF);
        return;
    }
    if (is_continuing(p)) {
        continuation_head(p, x, status, hdrs, n_hdrs);
        return;
    }
    relay_head(p, x, status, hdrs, n_hdrs, content_length);
}

static void up_on_read_end(void *ctx)
{
    struct px_exchange *x = ctx;
    struct lx_proxy *p = x->p;

    /* While a hedge may still race (or races), the head waits for the
     * first body byte: the loser's can then be taken back. */
    if (x != p->ex || ((p->hedge_at_ms || p->hedge) && !p->t_first_ns))
        return;
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

/* The held error answer, as the node sent it. */
static void err_pass(struct lx_proxy *p, int64_t content_length)
{
    struct px_held_head *hh = p->err_head;

    p->err_head = NULL;
    lx_http_resp_start(p->client, hh->status, hh->h, hh->n, content_length);
    relay_out(p, p->err_body.data, p->err_body.len);
    lx_buf_reset(&p->err_body);
    head_free(hh);
}

/* Holds a piece of an error answer; false when it is too long to hold:
 * what was held is sent as it came, and <data> is for the caller to relay. */
static bool err_keep(struct lx_proxy *p, const char *data, size_t len)
{
    if (lx_buf_append(&p->err_body, data, len) == 0)
        return true;
    err_pass(p, p->err_head->content_length);
    return false;
}

/* The whole error answer: in OpenAI's shape if it is not. */
static void err_send(struct lx_proxy *p)
{
    struct px_held_head *hh = p->err_head;
    struct lx_http_header h[ARRAY_SIZE(hh->h)];
    struct lx_buf shaped;
    size_t n = 0;

    lx_buf_init(&shaped, 0);
    if (!lx_error_shape(hh->status, p->err_body.data, p->err_body.len, &shaped)) {
        err_pass(p, (int64_t)p->err_body.len);
        lx_buf_deinit(&shaped);
        return;
    }
    for (size_t i = 0; i < hh->n; i++)
        if (!header_is(&hh->h[i], "content-type", 12))
            h[n++] = hh->h[i];
    h[n++] = (struct lx_http_header){"Content-Type", 12, "application/json", 16};
    lx_http_resp_start(p->client, hh->status, h, n, (int64_t)shaped.len);
    relay_out(p, shaped.data, shaped.len);
    lx_buf_deinit(&shaped);
    lx_buf_reset(&p->err_body);
    p->err_head = NULL;
    head_free(hh);
}

/*
 * A read from <x>'s node completed <n> SSE events of a stream: the node's
 * TTFT (its first event) or inter-token latency. One clock read per node
 * read, not per event: k events in one read count as k gaps of 1/k of the
 * time since the previous read that brought events (the sum stays exact;
 * events the node sent together arrived together anyway). The events of the
 * read that brought the first one are not gaps.
 */
static void note_events(struct lx_proxy *p, struct px_exchange *x, uint64_t n)
{
    uint64_t t = now_ns();

    if (!x->t_event_ns)
        lx_metrics_node_ttft(p->env->metrics, x->node->name, (double)(t - x->t_send_ns) / 1e9);
    else
        lx_metrics_node_itl(p->env->metrics, x->node->name, (double)(t - x->t_event_ns) / 1e9,
                            n);
    x->t_event_ns = t;
}

static void up_on_body(void *ctx, const char *data, size_t len)
{
    struct px_exchange *x = ctx;
    struct lx_proxy *p = x->p;

    /* The first body byte decides a hedge race. */
    if (x == p->hedge && !hedge_win(p))
        return;
    if (p->hedge)
        hedge_drop(p, true);
    if (p->hedge_at_ms) {
        p->hedge_at_ms = 0;
        timer_arm(p, 0);
    }
    if (p->err_head && err_keep(p, data, len))
        return;

    if (!p->t_first_ns) {
        p->t_first_ns = now_ns();
        if (p->stream)
            lx_ewma_update(&x->node->ewma_ttft_us, (p->t_first_ns - p->t_start_ns) / 1000);
    }
    /* One write per node read: up_on_read_end or the end flushes. */
    lx_http_resp_cork(p->client);
    if (p->is_sse) {
        uint64_t events = p->sse.events;

        /* Whole events only, counted as they pass (see sse.h). */
        lx_sse_feed(&p->sse, data, len, is_continuing(p) ? relay_cont : relay_out, p);
        if (p->stream && x->node && p->sse.events > events)
            note_events(p, x, p->sse.events - events);
    } else {
        tail_keep(&p->tail, data, len);
        relay_out(p, data, len);
    }
    if (lx_http_resp_pending(p->client) > RELAY_HIGH_WATER)
        lx_upstream_pause(&x->up);
}

static void up_on_done(void *ctx)
{
    struct px_exchange *x = ctx;
    struct lx_proxy *p = x->p;
    struct lx_http_req *req = p->client;

    if (x == p->hedge && !hedge_win(p))
        return;
    if (p->hedge)
        hedge_drop(p, true);
    if (p->err_head)
        err_send(p);
    if (p->is_sse) {
        lx_sse_flush(&p->sse, is_continuing(p) ? relay_cont : relay_out, p);
        p->usage = p->sse.usage;
        if (is_continuing(p)) {
            lx_resume_usage(p->resume, &p->usage);
            p->resume_ok = true;
        }
    } else if (p->tail.len) {
        lx_usage_scan(p->tail.data, p->tail.len, &p->usage);
    }
    /* Release the node before the client connection moves on to a
     * pipelined request (DONE detaches the client, not its response). */
    px_enter(p, PX_DONE);
    lx_http_resp_end(req);
}

/*
 * RELAY cannot go on: the body ends as cleanly as its framing allows. An SSE
 * stream gets a last `data: {"error": ...}` event and a proper end; other
 * bodies are cut, so the client sees a truncated response rather than a
 * silently short one. <node_broke>: the node failed (counted as its
 * stream_broken error), rather than a limit of llmux's ending the request.
 */
static void relay_break(struct lx_proxy *p, bool node_broke, const char *code, const char *msg)
{
    struct lx_http_req *req = p->client;
    bool sse = p->is_sse, cut_event = p->sse.partial_overflow;

    if (node_broke)
        exchange_count_error(p, p->ex, LX_FAIL_STREAM_BROKEN);

    p->error = code;
    px_enter(p, PX_DONE); /* the node first, as in up_on_done */
    if (sse) {
        struct lx_buf ev;

        lx_buf_init(&ev, 0);
        /* An event cut in the middle by an overlong pass-through gets ended
         * so the error event stands on its own. */
        if (cut_event)
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
}

/* RELAY whose head was taken back before any of it left (see
 * lx_http_resp_retract): back to EXCHANGE, to be answered afresh. */
static void relay_retract(struct lx_proxy *p)
{
    px_trace(p, PX_EXCHANGE);
    p->state = PX_EXCHANGE;
    p->is_sse = false;
    p->status = 0;
    p->t_first_ns = 0;
    p->bytes_out = 0;
    head_free(p->err_head);
    p->err_head = NULL;
    lx_buf_reset(&p->err_body);
    lx_buf_reset(&p->tail);
    lx_sse_deinit(&p->sse);
    lx_sse_init(&p->sse, false);
    if (p->resume)
        lx_resume_reset(p->resume);
}

/* Counted as the node's fault it was; a node that closed before its head
 * (it crashed or restarted) is answered as unreachable. */
static enum lx_fail up_fail_kind(enum lx_upstream_err kind)
{
    return kind == LX_UP_CONNECT ? LX_FAIL_CONNECT
           : kind == LX_UP_TIMEOUT ? LX_FAIL_TIMEOUT
                                   : LX_FAIL_PROTOCOL;
}

static void up_on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct px_exchange *x = ctx;
    struct lx_proxy *p = x->p;
    /* A node that answered other requests after this one was sent is slow
     * for this request (a long generation), not down: no ejection for it. */
    bool node_alive = kind == LX_UP_TIMEOUT &&
                      atomic_load_explicit(&x->node->last_success_ms, memory_order_relaxed) >=
                          x->t_send_ms;
    if (kind == LX_UP_LOCAL) {
        lx_warn("[%s] cannot connect to node %s: llmux is out of file descriptors or local "
                "ports (raise the descriptor limit or lower MAX_CONNECTIONS)",
                p->request_id, x->node->name);
        if (x == p->hedge)
            hedge_drop(p, true);
        else if (!p->hedge || !hedge_win(p))
            proxy_answer(p, ANS_OVERLOADED); /* only at connect: nothing was relayed */
        return;
    }
    lx_warn("[%s] node %s: %s%s", p->request_id, x->node->name,
            lx_upstream_cause(kind, x->up.uv_err), got_head ? " mid-response" : "");
    if (!node_alive) {
        lx_node_report_failure(x->node, lx_upstream_cause(kind, x->up.uv_err));
        lx_metrics_node_failure(p->env->metrics, x->node->name);
    }
    if (x == p->hedge) {
        exchange_count_error(p, x, up_fail_kind(kind));
        hedge_drop(p, true);
        return;
    }
    /* A response whose head was still held back has not reached the
     * client: it can be answered (502/504) or retried instead of cut. */
    if (p->state == PX_RELAY && (p->err_head || lx_http_resp_retract(p->client)))
        relay_retract(p);
    if (p->state == PX_RELAY) {
        if (try_resume(p, x))
            return;
        relay_break(p, true, lx_fail_kinds[LX_FAIL_STREAM_BROKEN].code,
                    lx_fail_kinds[LX_FAIL_STREAM_BROKEN].message);
        return;
    }
    exchange_count_error(p, x, up_fail_kind(kind));
    /* A racing hedge goes on in its place. */
    if (p->hedge && hedge_win(p))
        return;
    attempt_failed(p, kind == LX_UP_TIMEOUT    ? LX_FAIL_TIMEOUT
                      : kind == LX_UP_PROTOCOL ? LX_FAIL_PROTOCOL
                                               : LX_FAIL_CONNECT);
}

static const struct lx_upstream_cbs up_cbs = {
    .on_head = up_on_head,
    .on_body = up_on_body,
    .on_done = up_on_done,
    .on_error = up_on_error,
    .on_read_end = up_on_read_end,
};

void lx_request_id(struct lx_proxy_env *env, const struct lx_http_req *req, char *out,
                   size_t len)
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
        uint64_t r = lx_rand_next(&env->rng);

        for (int d = 15; d >= 0; d--, r >>= 4)
            out[k * 16 + d] = hex[r & 15];
    }
    out[32] = '\0';
}


/*
 * The client's own deadline: the OpenAI SDKs send X-Stainless-Timeout, the
 * seconds they will wait (their read timeout); X-Request-Timeout is the same
 * for other clients. Capped by TOTAL_TIMEOUT_SECONDS; 0 = none (absent, not
 * a positive number of seconds).
 */
static uint64_t client_deadline(const struct lx_http_req *req, const struct lx_conf *conf)
{
    const struct lx_http_header *h = lx_http_req_header(req, "x-stainless-timeout");
    char num[32], *end;
    double secs;

    if (!h)
        h = lx_http_req_header(req, "x-request-timeout");
    if (!h || h->value_len == 0 || h->value_len >= sizeof(num))
        return 0;
    memcpy(num, h->value, h->value_len);
    num[h->value_len] = '\0';
    secs = strtod(num, &end);
    if (end == num || *end != '\0' || !(secs > 0) || secs > 1e7)
        return 0;
    if (conf->total_timeout_s > 0 && secs > conf->total_timeout_s)
        secs = conf->total_timeout_s;
    return lx_now_ms() + (uint64_t)(secs * 1000);
}

void lx_proxy_start(struct lx_proxy_env *env, struct lx_http_req *req, struct lx_pool *pool,
                    const struct lx_body_scan *scan, const char *upstream_path,
                    const char *request_id)
{
    struct lx_proxy *p = lx_calloc(1, sizeof(*p));
    const struct lx_http_header *session = lx_http_req_header(req, "x-session-id");

    p->state = PX_NEW;
    p->env = env;
    p->client = req;
    p->reg = lx_registry_ref(env->reg);
    p->pool = pool;
    p->path = upstream_path;
    p->endpoint = lx_api_lookup(req->path, req->path_only_len);
    p->last_fail = -1;
    p->slots[0].p = p->slots[1].p = p;
    p->ex = &p->slots[0];
    p->t_start_ns = now_ns();
    p->method = req->method;
    p->bytes_in = req->body.len;
    p->usage.prompt_tokens = p->usage.completion_tokens = -1;
    p->mail.deliver = px_on_mail;
    p->waiter.wake = on_waiter_wake;
    lx_sse_init(&p->sse, false);
    lx_buf_init(&p->tail, 0);
    lx_buf_init(&p->slots[0].head, 0);
    lx_buf_init(&p->slots[1].head, 0);
    lx_buf_init(&p->body, 0);
    lx_buf_init(&p->cont, 0);
    lx_buf_init(&p->err_body, LX_ERROR_BODY_MAX);
    lx_buf_init(&p->evbuf, 0);
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
    if (scan)
        p->scan = *scan;
    p->pick.scan = &p->scan;
    if (session && session->value_len) {
        p->pick.affinity = session->value;
        p->pick.affinity_len = session->value_len;
    }
    snprintf(p->request_id, sizeof(p->request_id), "%s", request_id);
    /* A stream that another node could continue keeps what it relays. */
    if (p->stream && is_chat_like(p) && env->conf->stream_resume && env->conf->max_retries > 0) {
        p->resume = lx_malloc(sizeof(*p->resume));
        lx_resume_init(p->resume, p->endpoint == LX_API_CHAT_COMPLETIONS);
    }
    if ((pool->upstream_model && scan && scan->model_value.p) || wants_usage(p))
        rewrite_body(p);
    req->data = p;
    req->on_abort = on_client_abort;
    req->on_drain = on_client_drain;
    if (env->conf->total_timeout_s > 0)
        p->total_deadline_ms = lx_now_ms() + (uint64_t)(env->conf->total_timeout_s * 1000);
    p->client_deadline_ms = client_deadline(req, env->conf);
    switch (lx_admit_enter(env->admit, &p->waiter)) {
    case LX_ADMIT_GRANTED:
        p->t_admit_ns = now_ns();
        px_enter(p, PX_PICK);
        break;
    case LX_ADMIT_QUEUED:
        px_enter(p, PX_QUEUED);
        break;
    case LX_ADMIT_FULL:
        proxy_answer(p, ANS_QUEUE_FULL);
        break;
    }
}
