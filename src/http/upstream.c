/*
 * upstream.c - node connections: connect, send, parse the response, pool.
 *
 * Connection states:
 *   RESOLVE -> CONNECT -> ACTIVE (request written, response parsed) -> IDLE
 *   (in the pool, read for EOF) -> ACTIVE ... -> CLOSING
 * One timer per connection covers connect, the response head (from send to
 * its end), body gaps and the idle keep-alive limit, according to the state.
 *
 * A connection goes back to the pool only when its response was complete,
 * nothing followed it, the node allows keep-alive, and the request was
 * written whole: a node that answers before reading the request (an early
 * 401) leaves a write in flight, and that connection is closed instead.
 *
 * Reads land in the pool's one read buffer (single-threaded loop), and body
 * bytes are handed to the caller straight from it: nothing is copied here.
 * Parser callbacks may call back into the caller, which may cancel the
 * exchange; c->req is cleared then, and parsing stops at the next check.
 */
#include "upstream.h"

#include <http_parser.h>
#include <string.h>

#include "../core/log.h"

#define UP_READ_BUF (64 * 1024)
#define UP_HEAD_MAX (64 * 1024)
#define UP_MAX_HEADERS 128
#define UP_MAX_IDLE_PER_NODE 256

enum up_state { UP_RESOLVE, UP_CONNECT, UP_ACTIVE, UP_IDLE, UP_CLOSING };

struct up_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_getaddrinfo_t gai;
    uv_write_t write_req;
    struct lx_upstream_pool *pool;
    uint32_t id;                   /* the target's id: its idle list */
    char *name;                    /* the target's name and host, for log lines */
    struct up_conn *next_idle;     /* idle list of this node */
    enum up_state state;
    int handles_open;
    bool writing;                  /* write_req in flight */
    bool reading;                  /* uv_read_start done once, after connect */
    bool reading_paused;           /* read stopped for client backpressure */
    bool reused;                   /* served an exchange before */
    bool got_byte;                 /* any response byte for this exchange */
    bool got_head;
    bool done;                     /* message complete */
    bool in_parse;
    enum lx_upstream_err pending_err; /* reported from the timer, 0 = none */
    int uv_err;                    /* libuv error behind the failure, 0 = none */
    struct lx_upstream_req *req;   /* current exchange, NULL when idle/cancelled */
    http_parser parser;
    struct lx_headers hd;          /* the response's header fields */
};

struct lx_upstream_pool {
    uv_loop_t *loop;
    uint64_t idle_keepalive_ms;
    struct up_conn **idle;         /* per node id */
    uint32_t *n_idle;
    uint32_t n_slots;
    size_t n_conns;                /* open connections */
    bool closing;
    char rbuf[UP_READ_BUF];
};

static http_parser_settings settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static void conn_close(struct up_conn *c);
static void conn_start(struct lx_upstream_pool *pool, struct lx_upstream_req *ur, bool allow_idle);

const char *lx_upstream_strerror(enum lx_upstream_err kind)
{
    switch (kind) {
    case LX_UP_CONNECT:
        return "connect error";
    case LX_UP_TIMEOUT:
        return "timeout before the response head";
    case LX_UP_IDLE:
        return "stream idle timeout";
    case LX_UP_PROTOCOL:
        return "malformed response";
    case LX_UP_CLOSED:
        return "connection closed";
    case LX_UP_LOCAL:
        return "out of local resources";
    }
    return "error";
}

const char *lx_upstream_cause(enum lx_upstream_err kind, int uv_err)
{
    switch (uv_err) {
    case UV_ECONNREFUSED:
        return "connection refused";
    case UV_ETIMEDOUT:
        return kind == LX_UP_CONNECT ? "connect timed out" : "connection timed out";
    case UV_ECONNRESET:
    case UV_EPIPE:
        return "connection reset";
    case UV_EHOSTUNREACH:
        return "host unreachable";
    case UV_ENETUNREACH:
        return "network unreachable";
    case UV_EAI_NONAME:
    case UV_EAI_NODATA:
        return "DNS lookup failed (unknown host)";
    case UV_EAI_AGAIN:
        return "DNS lookup failed (temporary failure)";
    default:
        if (uv_err <= UV_EAI_ADDRFAMILY && uv_err >= UV_EAI_PROTOCOL)
            return "DNS lookup failed";
        return lx_upstream_strerror(kind);
    }
}

/* ---- pool --------------------------------------------------------------- */

struct lx_upstream_pool *lx_upstream_pool_new(uv_loop_t *loop, uint64_t idle_keepalive_ms)
{
    struct lx_upstream_pool *pool = lx_calloc(1, sizeof(*pool));

    pool->loop = loop;
    pool->idle_keepalive_ms = idle_keepalive_ms;
    return pool;
}

static void pool_maybe_free(struct lx_upstream_pool *pool)
{
    if (pool->closing && pool->n_conns == 0) {
        free(pool->idle);
        free(pool->n_idle);
        free(pool);
    }
}

void lx_upstream_pool_close(struct lx_upstream_pool *pool)
{
    pool->closing = true;
    for (uint32_t i = 0; i < pool->n_slots; i++) {
        while (pool->idle[i]) {
            struct up_conn *c = pool->idle[i];

            pool->idle[i] = c->next_idle;
            c->next_idle = NULL;
            conn_close(c);
        }
        pool->n_idle[i] = 0;
    }
    pool_maybe_free(pool);
}

static void pool_grow(struct lx_upstream_pool *pool, uint32_t id)
{
    uint32_t n = pool->n_slots ? pool->n_slots : 16;

    while (n <= id)
        n *= 2;
    pool->idle = lx_realloc(pool->idle, n * sizeof(*pool->idle));
    pool->n_idle = lx_realloc(pool->n_idle, n * sizeof(*pool->n_idle));
    memset(pool->idle + pool->n_slots, 0, (n - pool->n_slots) * sizeof(*pool->idle));
    memset(pool->n_idle + pool->n_slots, 0, (n - pool->n_slots) * sizeof(*pool->n_idle));
    pool->n_slots = n;
}

static void idle_unlink(struct up_conn *c)
{
    struct lx_upstream_pool *pool = c->pool;
    struct up_conn **pp = &pool->idle[c->id];

    while (*pp && *pp != c)
        pp = &(*pp)->next_idle;
    if (*pp) {
        *pp = c->next_idle;
        pool->n_idle[c->id]--;
    }
    c->next_idle = NULL;
}

/* ---- close ---------------------------------------------------------- */

static void on_closed(uv_handle_t *h)
{
    struct up_conn *c = h->data;
    struct lx_upstream_pool *pool = c->pool;

    if (--c->handles_open > 0)
        return;
    free(c->name);
    lx_headers_deinit(&c->hd);
    free(c);
    pool->n_conns--;
    pool_maybe_free(pool);
}

static void conn_close(struct up_conn *c)
{
    if (c->state == UP_CLOSING)
        return;
    if (c->state == UP_IDLE)
        idle_unlink(c);
    if (c->state == UP_RESOLVE) {
        /* The resolver callback sees UP_CLOSING and closes the handles. */
        c->state = UP_CLOSING;
        uv_cancel((uv_req_t *)&c->gai);
        return;
    }
    c->state = UP_CLOSING;
    c->req = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    uv_close((uv_handle_t *)&c->timer, on_closed);
}

/* Detaches the exchange and reports an error to it (after closing). */
static void conn_fail(struct up_conn *c, enum lx_upstream_err kind)
{
    struct lx_upstream_req *ur = c->req;
    bool got_head = c->got_head;

    /* A reused connection that the node had already closed: retry once on a
     * fresh connection before calling it a node failure. */
    if (ur && c->reused && !c->got_byte && kind == LX_UP_CLOSED && !ur->fresh_retry_done) {
        ur->fresh_retry_done = true;
        c->req = NULL;
        conn_close(c);
        conn_start(c->pool, ur, false);
        return;
    }
    c->req = NULL;
    conn_close(c);
    if (ur) {
        ur->conn = NULL;
        ur->uv_err = c->uv_err;
        ur->cbs->on_error(ur->ctx, kind, got_head);
    }
}

/* ---- timer ---------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct up_conn *c = t->data;

    if (c->pending_err) {
        conn_fail(c, c->pending_err);
        return;
    }
    switch (c->state) {
    case UP_CONNECT:
        c->uv_err = UV_ETIMEDOUT;
        conn_fail(c, LX_UP_CONNECT);
        break;
    case UP_ACTIVE:
        conn_fail(c, c->got_head ? LX_UP_IDLE : LX_UP_TIMEOUT);
        break;
    case UP_IDLE:
        conn_close(c);
        break;
    default:
        break;
    }
}

static void timer_set(struct up_conn *c, uint64_t ms)
{
    if (ms)
        uv_timer_start(&c->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

/* ---- response parsing ------------------------------------------------- */

static struct up_conn *pconn(http_parser *p)
{
    return container_of(p, struct up_conn, parser);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    return lx_headers_field(&pconn(p)->hd, at, len) < 0 ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    return lx_headers_value(&pconn(p)->hd, at, len) < 0 ? -1 : 0;
}

static int on_headers_complete(http_parser *p)
{
    struct up_conn *c = pconn(p);
    struct lx_upstream_req *ur = c->req;
    int64_t clen = -1;
    bool bodiless;

    /* 1xx interim responses (100 Continue) carry no body whatever their
     * head says (RFC 9110 15.2): skip it (1), so that bytes after the head
     * are parsed as the next response. 101 would switch protocols, which
     * llmux never asks for. */
    if (p->status_code < 100)
        return -1; /* http-parser takes "HTTP/1.1 2 OK"; HTTP does not */
    if (p->status_code < 200) {
        if (p->status_code == 101)
            return -1;
        lx_headers_reset(&c->hd, UP_HEAD_MAX);
        return 1;
    }
    /* 204 and 304 end at their head whatever framing it announces (RFC
     * 9112 6.3): reading a body for them would eat the next response, or
     * wait for bytes that never come. */
    bodiless = p->status_code == 204 || p->status_code == 304;
    if (!bodiless && !(p->flags & F_CHUNKED) && (p->flags & F_CONTENTLENGTH))
        clen = (int64_t)p->content_length;
    c->got_head = true;
    timer_set(c, ur->timeouts.idle_ms);
    ur->cbs->on_head(ur->ctx, p->status_code, lx_headers_resolve(&c->hd), c->hd.n, clen);
    if (!c->req)
        return -1;
    return bodiless ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct up_conn *c = pconn(p);
    struct lx_upstream_req *ur = c->req;

    if (!ur || !c->got_head)
        return -1;
    ur->cbs->on_body(ur->ctx, at, len);
    return c->req ? 0 : -1;
}

static int on_message_complete(http_parser *p)
{
    struct up_conn *c = pconn(p);

    if (!c->got_head)
        return 0; /* end of an interim 1xx response */
    c->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static void settings_init(void)
{
    http_parser_settings_init(&settings);
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct up_conn *c = h->data;

    buf->base = c->pool->rbuf;
    buf->len = sizeof(c->pool->rbuf);
}

/* The response is complete: the connection goes back to the pool. */
static void conn_release(struct up_conn *c, bool reusable)
{
    struct lx_upstream_pool *pool = c->pool;
    struct lx_upstream_req *ur = c->req;
    uint32_t id = c->id;

    c->req = NULL;
    ur->conn = NULL;
    if (!reusable || pool->closing || (pool->n_slots > id && pool->n_idle[id] >= UP_MAX_IDLE_PER_NODE)) {
        conn_close(c);
    } else {
        if (id >= pool->n_slots)
            pool_grow(pool, id);
        c->state = UP_IDLE;
        c->next_idle = pool->idle[id];
        pool->idle[id] = c;
        pool->n_idle[id]++;
        timer_set(c, pool->idle_keepalive_ms);
        /* Reading goes on while pooled (on_read closes on EOF); toggling it
         * would cost epoll_ctl calls on every request. */
        if (c->reading_paused) {
            c->reading_paused = false;
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        }
    }
    ur->cbs->on_done(ur->ctx);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct up_conn *c = s->data;
    enum http_errno err;
    size_t n;

    if (nread == 0)
        return;
    if (c->state == UP_IDLE) {
        /* While pooled, any read means the node closed (or misbehaved). */
        conn_close(c);
        return;
    }
    if (c->state != UP_ACTIVE || !c->req)
        return;
    if (nread < 0) {
        /* EOF ends a body that is delimited by the connection's end. */
        if (nread == UV_EOF && c->got_head) {
            c->in_parse = true;
            http_parser_execute(&c->parser, &settings, NULL, 0);
            c->in_parse = false;
            if (c->done && c->req) {
                conn_release(c, false);
                return;
            }
        }
        c->uv_err = nread == UV_EOF ? 0 : (int)nread;
        conn_fail(c, LX_UP_CLOSED);
        return;
    }
    /* Until the head is complete, first_byte_ms (set at send) runs on. */
    c->got_byte = true;
    if (c->got_head && c->req->timeouts.idle_ms)
        timer_set(c, c->req->timeouts.idle_ms);
    c->in_parse = true;
    n = http_parser_execute(&c->parser, &settings, buf->base, (size_t)nread);
    c->in_parse = false;
    if (!c->req) {
        /* Cancelled from a callback: conn_close already ran. */
        return;
    }
    err = HTTP_PARSER_ERRNO(&c->parser);
    if (c->done) {
        bool reusable = http_should_keep_alive(&c->parser) && n == (size_t)nread && !c->writing;

        http_parser_pause(&c->parser, 0);
        conn_release(c, reusable);
        return;
    }
    if (err != HPE_OK) {
        conn_fail(c, LX_UP_PROTOCOL);
        return;
    }
    if (c->got_head && c->req->cbs->on_read_end)
        c->req->cbs->on_read_end(c->req->ctx);
}

static void on_written(uv_write_t *w, int status)
{
    struct up_conn *c = w->data;

    c->writing = false;
    if (c->state != UP_ACTIVE || !c->req)
        return;
    if (status < 0) {
        c->uv_err = status;
        conn_fail(c, c->got_byte ? LX_UP_CLOSED : (c->reused ? LX_UP_CLOSED : LX_UP_CONNECT));
    }
}

/* Sends the exchange's bytes on a connected <c>. */
static void conn_send(struct up_conn *c)
{
    struct lx_upstream_req *ur = c->req;
    int rc;

    c->state = UP_ACTIVE;
    c->pending_err = 0;
    c->uv_err = 0;
    c->got_byte = c->got_head = c->done = false;
    lx_headers_reset(&c->hd, UP_HEAD_MAX);
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    /* A pause before the connection was up holds the clock too. */
    timer_set(c, ur->paused ? 0 : ur->timeouts.first_byte_ms);
    if (!c->reading) {
        /* Never started yet counts as paused. */
        c->reading = true;
        c->reading_paused = true;
    }
    if (ur->paused && !c->reading_paused) {
        c->reading_paused = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (!ur->paused && c->reading_paused) {
        c->reading_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    /* Most requests fit the socket buffer: uv_try_write sends them without
     * the POLLOUT registration (and its epoll_ctl) that uv_write costs. */
    {
        uv_buf_t rest[ARRAY_SIZE(ur->bufs)];
        unsigned int n = 0;
        ssize_t done = uv_try_write((uv_stream_t *)&c->tcp, ur->bufs, ur->nbufs);

        if (done < 0 && done != UV_EAGAIN) {
            rc = (int)done;
            goto out_fail;
        }
        for (unsigned int i = 0; i < ur->nbufs; i++) {
            size_t skip = done > 0 ? LX_MIN((size_t)done, ur->bufs[i].len) : 0;

            if (done > 0)
                done -= (ssize_t)skip;
            if (skip < ur->bufs[i].len)
                rest[n++] = uv_buf_init(ur->bufs[i].base + skip,
                                        (unsigned int)(ur->bufs[i].len - skip));
        }
        if (n == 0)
            return;
        c->write_req.data = c;
        c->writing = true;
        rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, rest, n, on_written);
    }
out_fail:
    if (rc < 0) {
        c->writing = false;
        /* Report from the timer, never from inside lx_upstream_send(). */
        c->pending_err = LX_UP_CLOSED;
        c->uv_err = rc;
        timer_set(c, 1);
    }
}

/* Errors that say llmux ran out of something, not that the node failed. */
static bool is_local_error(int err)
{
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM;
}

static void on_connected(uv_connect_t *cr, int status)
{
    struct up_conn *c = cr->data;

    if (c->state != UP_CONNECT)
        return;
    if (status < 0) {
        lx_debug("connect to %s failed: %s", c->name, uv_strerror(status));
        c->uv_err = status;
        conn_fail(c, is_local_error(status) ? LX_UP_LOCAL : LX_UP_CONNECT);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (!c->req) {
        conn_close(c);
        return;
    }
    conn_send(c);
}

static void conn_connect(struct up_conn *c, const struct sockaddr *sa)
{
    int rc;

    c->state = UP_CONNECT;
    c->connect_req.data = c;
    rc = uv_tcp_connect(&c->connect_req, &c->tcp, sa, on_connected);
    if (rc < 0) {
        lx_debug("connect to %s failed: %s", c->name, uv_strerror(rc));
        /* Fail from the timer so the callback does not run inside send. */
        c->pending_err = is_local_error(rc) ? LX_UP_LOCAL : LX_UP_CONNECT;
        c->uv_err = rc;
        timer_set(c, 1);
        return;
    }
    timer_set(c, c->req ? c->req->timeouts.connect_ms : 0);
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    struct up_conn *c = gai->data;

    if (c->state == UP_CLOSING) {
        uv_freeaddrinfo(res);
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        uv_close((uv_handle_t *)&c->timer, on_closed);
        return;
    }
    if (status < 0 || !res) {
        lx_debug("cannot resolve node %s: %s", c->name, uv_strerror(status));
        uv_freeaddrinfo(res);
        c->state = UP_CONNECT;
        c->uv_err = status < 0 ? status : UV_EAI_NONAME;
        conn_fail(c, LX_UP_CONNECT);
        return;
    }
    conn_connect(c, res->ai_addr);
    uv_freeaddrinfo(res);
}

static void conn_start(struct lx_upstream_pool *pool, struct lx_upstream_req *ur, bool allow_idle)
{
    const struct lx_upstream_target *t = &ur->target;
    struct up_conn *c = NULL;
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } sa;

    if (allow_idle && t->id < pool->n_slots && pool->idle[t->id]) {
        c = pool->idle[t->id];
        pool->idle[t->id] = c->next_idle;
        pool->n_idle[t->id]--;
        c->next_idle = NULL;
        c->reused = true;
        c->req = ur;
        ur->conn = c;
        conn_send(c);
        return;
    }
    c = lx_calloc(1, sizeof(*c));
    c->pool = pool;
    c->id = t->id;
    {
        size_t len = strlen(t->name) + strlen(t->host) + 4;

        c->name = lx_malloc(len);
        snprintf(c->name, len, "%s (%s)", t->name, t->host);
    }
    c->req = ur;
    ur->conn = c;
    lx_headers_init(&c->hd, UP_HEAD_MAX, UP_MAX_HEADERS);
    uv_tcp_init(pool->loop, &c->tcp);
    uv_timer_init(pool->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    pool->n_conns++;
    if (uv_ip4_addr(t->host, t->port, &sa.v4) == 0 ||
        uv_ip6_addr(t->host, t->port, &sa.v6) == 0) {
        conn_connect(c, (const struct sockaddr *)&sa);
        return;
    }
    {
        struct addrinfo hints = {0};
        char port[16];
        int rc;

        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(port, sizeof(port), "%d", t->port);
        c->state = UP_RESOLVE;
        c->gai.data = c;
        rc = uv_getaddrinfo(pool->loop, &c->gai, on_resolved, t->host, port, &hints);

        if (rc < 0) {
            c->state = UP_CONNECT;
            c->pending_err = LX_UP_CONNECT;
            c->uv_err = rc;
            timer_set(c, 1);
        }
    }
}

int lx_upstream_send(struct lx_upstream_pool *pool, const struct lx_upstream_target *t,
                     struct lx_upstream_req *ur)
{
    uv_once(&settings_once, settings_init);
    ur->target = *t;
    ur->conn = NULL;
    ur->fresh_retry_done = false;
    ur->paused = false;
    ur->uv_err = 0;
    conn_start(pool, ur, true);
    return 0;
}

void lx_upstream_cancel(struct lx_upstream_req *ur)
{
    struct up_conn *c = ur->conn;

    ur->conn = NULL;
    if (!c)
        return;
    c->req = NULL;
    conn_close(c);
}

void lx_upstream_pause(struct lx_upstream_req *ur)
{
    struct up_conn *c = ur->conn;

    ur->paused = true;
    if (c && c->state == UP_ACTIVE && !c->reading_paused) {
        c->reading_paused = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
        timer_set(c, 0);
    }
}

void lx_upstream_resume(struct lx_upstream_req *ur)
{
    struct up_conn *c = ur->conn;

    if (!ur->paused)
        return;
    ur->paused = false;
    if (c && c->state == UP_ACTIVE && c->reading_paused) {
        c->reading_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        timer_set(c, c->got_head ? ur->timeouts.idle_ms : ur->timeouts.first_byte_ms);
    }
}
