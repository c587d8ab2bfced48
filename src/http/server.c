/*
 * server.c - HTTP/1.1 server connections over libuv and http-parser.
 *
 * Connection states:
 *   IDLE  keep-alive, waiting for the first byte of a request (idle timer)
 *   HEAD  receiving the request line and headers (request timer -> 408)
 *   BODY  receiving the body (the same deadline, from the request's first
 *         byte: a body trickled in byte by byte does not extend it)
 *   BUSY  the handler owns the request until resp_end / resp_abort; bytes of
 *         pipelined requests wait in c->in, unparsed
 * A connection closes after a response when either side did not ask for
 * keep-alive, when the server is closing, or on any error.
 *
 * The one timer per connection means, by state: HEAD/BODY the request
 * deadline; BUSY and IDLE with output queued the send timeout (re-armed on
 * every completed write); IDLE otherwise the keep-alive limit, or 0 ms to
 * parse pipelined input on the next loop turn; dead / lingering the close.
 *
 * Bounds on one client: pipelined input is kept up to IN_HIGH_WATER (then
 * reading stops), and no pipelined request is parsed while OUT_HIGH_WATER
 * bytes of answers wait for the client, so a client that sends without
 * reading stalls itself, not the gateway's memory.
 *
 * Input: every read lands in the server's one read buffer (the loop is
 * single-threaded, and libuv pairs each alloc_cb with its read_cb), is parsed
 * there, and only bytes left unparsed (pipelining) are copied to c->in, so an
 * idle connection holds no buffer.
 *
 * Output: uv_try_write first; only what the socket does not take is copied
 * into a write request. c->write_pending counts those bytes for backpressure.
 *
 * Handler callbacks never run inside a call the handler made: a write error
 * inside lx_http_resp_write() defers the close (and on_abort) to a 0 ms timer.
 */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netdb.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/list.h"
#include "../core/log.h"

#define READ_BUF_SIZE (64 * 1024)
#define IN_HIGH_WATER (256 * 1024)     /* pipelined input held before we stop reading */
#define IN_MAX (IN_HIGH_WATER + READ_BUF_SIZE) /* one more read always fits */
#define OUT_HIGH_WATER (256 * 1024)    /* queued answers that hold back the next request */
#define DRAIN_LOW_WATER (64 * 1024)     /* on_drain fires once pending falls below this */
#define LOG_EVERY_MS 10000              /* one warning per this for accept trouble */
#define ACCEPT_PAUSE_MS 100             /* accepting pauses this long at a limit */
#define ACCEPT_BATCH 64                 /* connections accepted per listener wake-up */
#define LINGER_MS 2000                  /* read-and-discard after a rejected request */
#define MAX_HEADERS 256
#define KEEP_BUF_MAX (16 * 1024)       /* larger per-request buffers are freed after use */

enum conn_state { C_IDLE, C_HEAD, C_BODY, C_BUSY, C_CLOSING };

struct lx_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct lx_http_server *srv;
    struct lx_list link;               /* in srv->conns */
    http_parser parser;
    enum conn_state state;
    int handles_open;                  /* tcp + timer, freed when 0 */

    struct lx_buf in;                  /* unparsed input (pipelining) */
    struct lx_buf url;                 /* request target, NUL-terminated when complete */
    struct lx_headers hd;              /* the current request's header fields */
    size_t head_bytes;                 /* bytes seen in the current head */

    struct lx_http_req req;
    int reject;                        /* status to answer and close with, 0 = none */
    bool message_done;                 /* parser finished a request; handler not yet called */
    int in_parse;                      /* > 0 while parsing: resp_end must not re-enter */
    bool read_stopped;                 /* input over high water, or output backed up */
    bool eof;                          /* client closed its side */
    bool in_trailers;                  /* the chunked body ended: fields are trailers */
    bool counted;                      /* counted in the connection limit */

    /* Response state. */
    bool resp_started;
    bool resp_chunked;
    bool resp_no_body;                 /* HEAD request, or a 1xx/204/304 status */
    bool head_pending;                 /* hbuf holds a head not yet written (lazy start) */
    bool corked;                       /* body writes gathered in `cork` until flush/end */
    struct lx_buf cork;                /* framed body bytes waiting for one write */
    bool close_after;                  /* close once the response is flushed */
    bool dead;                         /* write failed; close from the timer */
    bool lingering;                    /* shut down, discarding input until EOF */
    size_t write_pending;              /* bytes in uv_write requests */
    size_t send_mark;                  /* libuv's write queue size when the send
                                          timeout was armed */
    struct lx_buf hbuf;                /* response head being built */
};

struct lx_http_server {
    uv_loop_t *loop;
    int listen_fd;                     /* ours: closed after accept_poll */
    uv_poll_t accept_poll;             /* readable listener -> on_acceptable */
    uv_timer_t accept_timer;           /* resumes accepting after a pause */
    int listener_handles_closed;
    struct lx_http_limits limits;
    lx_http_handler_cb handler;
    void *ctx;
    void (*reject_cb)(void *ctx, int status);
    lx_http_head_cb head_cb;
    _Atomic size_t own_count;          /* conn_count when limits.conn_count is NULL */
    uint64_t last_limit_log_ms, last_accept_log_ms;
    int port;
    size_t n_conns, n_busy, accepted;
    struct lx_list conns;              /* struct lx_http_conn.link, for close */
    bool closing;
    bool listener_closed;
    void (*close_cb)(void *arg);
    void *close_arg;
    char rbuf[READ_BUF_SIZE];
};

struct write_req {
    uv_write_t w;
    struct lx_http_conn *conn;
    size_t len;
    char data[];
};

static http_parser_settings parser_settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static void conn_close(struct lx_http_conn *c);
static void conn_drain_input(struct lx_http_conn *c);
static void read_update(struct lx_http_conn *c);
static bool send_progressed(struct lx_http_conn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_send_reject(struct lx_http_conn *c, int status);
static void server_maybe_done(struct lx_http_server *srv);

/* ---- timers ---------------------------------------------------------- */

static _Atomic size_t *conn_count(struct lx_http_server *srv)
{
    return srv->limits.conn_count ? srv->limits.conn_count : &srv->own_count;
}

/* Whether input may be parsed now: not on a connection that closes after
 * its answer or whose write failed, and no new request (IDLE) while the
 * client leaves OUT_HIGH_WATER of its answers unread. A request already
 * begun is read on (a `100 Continue` may be what tipped the mark). */
static bool conn_can_parse(const struct lx_http_conn *c)
{
    return !c->close_after && !c->lingering && !c->dead &&
           (c->state != C_IDLE || c->write_pending < OUT_HIGH_WATER);
}

static void on_timer(uv_timer_t *t)
{
    struct lx_http_conn *c = container_of(t, struct lx_http_conn, timer);

    if (c->dead || c->lingering) {
        conn_close(c);
        return;
    }
    switch (c->state) {
    case C_HEAD:
    case C_BODY:
        conn_send_reject(c, 408);
        break;
    case C_IDLE:
        /* Pipelined input to parse (a 0 ms timer), unless the client is
         * not reading its answers; otherwise the keep-alive limit or the
         * send timeout has passed. */
        if (c->in.len > 0 && conn_can_parse(c))
            conn_drain_input(c);
        else if (!c->write_pending || !send_progressed(c))
            conn_close(c);
        break;
    case C_BUSY:
        /* Send timeout: the client stopped reading. Closing aborts the
         * request, which frees its slot and cancels the node's work. */
        if (send_progressed(c))
            break;
        lx_debug("client read nothing for %llu ms; closing",
                 (unsigned long long)c->srv->limits.send_timeout_ms);
        conn_close(c);
        break;
    default:
        break;
    }
}

/* The send timeout measures bytes the client takes, not whole writes: a
 * client reading slowly but steadily through one large queued write is
 * not "stopped". True (and the timer re-armed) when the kernel took some
 * of the queue since the timer was set. */
static bool send_progressed(struct lx_http_conn *c)
{
    size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);

    if (q >= c->send_mark)
        return false;
    c->send_mark = q;
    uv_timer_start(&c->timer, on_timer, c->srv->limits.send_timeout_ms, 0);
    return true;
}

static void timer_set(struct lx_http_conn *c, uint64_t ms)
{
    if (ms)
        uv_timer_start(&c->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

/* Sets the timer for a connection that is BUSY or IDLE (see the top). */
static void timer_update(struct lx_http_conn *c)
{
    const struct lx_http_limits *l = &c->srv->limits;

    if (c->dead || c->lingering || (c->state != C_BUSY && c->state != C_IDLE))
        return;
    if (c->state == C_IDLE && c->in.len > 0 && conn_can_parse(c))
        uv_timer_start(&c->timer, on_timer, 0, 0);
    else if (c->write_pending > 0) {
        c->send_mark = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
        timer_set(c, l->send_timeout_ms);
    }
    else
        timer_set(c, c->state == C_IDLE ? l->idle_timeout_ms : 0);
}

/* ---- close ----------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct lx_http_conn *c = h->data;
    struct lx_http_server *srv = c->srv;

    if (--c->handles_open > 0)
        return;
    lx_list_remove(&c->link);
    lx_buf_deinit(&c->in);
    lx_buf_deinit(&c->url);
    lx_headers_deinit(&c->hd);
    lx_buf_deinit(&c->hbuf);
    lx_buf_deinit(&c->cork);
    lx_buf_deinit(&c->req.body);
    if (c->counted)
        atomic_fetch_sub_explicit(conn_count(srv), 1, memory_order_relaxed);
    free(c);
    srv->n_conns--;
    server_maybe_done(srv);
}

/* Closes at once. A request the handler still owns is aborted first. */
static void conn_close(struct lx_http_conn *c)
{
    if (c->state == C_CLOSING)
        return;
    if (c->state == C_BUSY) {
        c->srv->n_busy--;
        c->state = C_CLOSING;
        if (c->req.on_abort)
            c->req.on_abort(&c->req);
    }
    c->state = C_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    struct lx_http_conn *c = sr->data;

    free(sr);
    if (c->state == C_CLOSING)
        return;
    if (status < 0 || c->eof) {
        conn_close(c);
        return;
    }
    /* Keep reading and discarding until the client closes, so that unread
     * input does not make the kernel reset the connection and destroy the
     * response before the client has read it. */
    c->lingering = true;
    timer_set(c, LINGER_MS);
    read_update(c);
}

/* Closes after the response is flushed: FIN first, then a short linger. */
static void conn_finish(struct lx_http_conn *c)
{
    uv_shutdown_t *sr;

    if (c->state == C_CLOSING || c->lingering)
        return;
    if (c->write_pending > 0) {
        /* Bounded by the send timeout (timer_update). */
        c->close_after = true;
        timer_update(c);
        return;
    }
    sr = lx_malloc(sizeof(*sr));
    sr->data = c;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        free(sr);
        conn_close(c);
        return;
    }
    c->state = C_IDLE;
    c->close_after = false;
    /* A shut-down connection is only drained; mark it lingering right away
     * so no further request is parsed from it. */
    c->lingering = true;
    timer_set(c, LINGER_MS);
    read_update(c);
}

/* ---- output ---------------------------------------------------------- */

static void on_write(uv_write_t *w, int status)
{
    struct write_req *wr = container_of(w, struct write_req, w);
    struct lx_http_conn *c = wr->conn;
    size_t before = c->write_pending;

    c->write_pending -= wr->len;
    free(wr);
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->write_pending == 0 && c->close_after) {
        conn_finish(c);
        return;
    }
    if (c->state == C_BUSY && c->req.on_drain && before >= DRAIN_LOW_WATER &&
        c->write_pending < DRAIN_LOW_WATER)
        c->req.on_drain(&c->req);
    /* Progress: the send timeout starts again; an IDLE connection whose
     * output fell below the high watermark parses its pipelined input. */
    timer_update(c);
}

/* Writes <bufs>; what the socket does not take now is copied and queued. */
static int conn_write(struct lx_http_conn *c, uv_buf_t *bufs, unsigned int nbufs)
{
    struct write_req *wr;
    size_t total = 0, off = 0;
    unsigned int i = 0;
    ssize_t n = 0;

    if (c->state == C_CLOSING || c->dead || c->lingering)
        return -EPIPE;
    for (unsigned int k = 0; k < nbufs; k++)
        total += bufs[k].len;
    if (total == 0)
        return 0;
    if (c->write_pending == 0) {
        n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
        if (n == UV_EAGAIN || n == UV_ENOSYS)
            n = 0;
        if (n < 0) {
            /* Close from the timer: never call back into the handler from
             * inside one of its own calls. */
            c->dead = true;
            uv_timer_start(&c->timer, on_timer, 0, 0);
            return (int)n;
        }
        if ((size_t)n == total)
            return 0;
    }
    wr = lx_malloc(sizeof(*wr) + total - (size_t)n);
    wr->conn = c;
    wr->len = total - (size_t)n;
    /* Skip what uv_try_write took, copy the rest. */
    for (size_t skip = (size_t)n; i < nbufs; i++) {
        size_t len = bufs[i].len;
        const char *p = bufs[i].base;

        if (skip >= len) {
            skip -= len;
            continue;
        }
        p += skip;
        len -= skip;
        skip = 0;
        memcpy(wr->data + off, p, len);
        off += len;
    }
    uv_buf_t b = uv_buf_init(wr->data, (unsigned int)wr->len);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(wr);
        c->dead = true;
        uv_timer_start(&c->timer, on_timer, 0, 0);
        return -EPIPE;
    }
    c->write_pending += wr->len;
    if (c->write_pending == wr->len)
        timer_update(c); /* output now queued: the send timeout runs */
    return 0;
}

/* ---- request parsing ---------------------------------------------------- */

static struct lx_http_conn *parser_conn(http_parser *p)
{
    return container_of(p, struct lx_http_conn, parser);
}

static int head_grow(struct lx_http_conn *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > c->srv->limits.head_max) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct lx_http_conn *c = parser_conn(p);

    c->state = C_HEAD;
    c->head_bytes = 0;
    c->in_trailers = false;
    c->req.body_skipped = false;
    lx_headers_reset(&c->hd, KEEP_BUF_MAX);
    lx_buf_reset(&c->url);
    lx_buf_reset(&c->req.body);
    /* One deadline for head and body, from the request's first byte. */
    timer_set(c, c->srv->limits.request_timeout_ms);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct lx_http_conn *c = parser_conn(p);

    /* http-parser lets a TAB or a form feed through in the target; a node
     * could read such a target differently from us. */
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)at[i] <= ' ' || at[i] == 0x7f) {
            c->reject = 400;
            return -1;
        }
    }
    if (head_grow(c, len) || lx_buf_append(&c->url, at, len)) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

/* RFC 9110 5.1: a field name is a token. http-parser lets "Name :" through,
 * and a proxy and a node that read such a header differently is how
 * requests get smuggled, so anything but token characters is refused. */
static bool is_token(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];

        if (ch <= 32 || ch >= 127 || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct lx_http_conn *c = parser_conn(p);

    if (head_grow(c, len))
        return -1;
    /* Trailer fields (after a chunked body) count against the head limit
     * and are dropped: nothing uses them, and the request's header views
     * must not move once the handler may see them. */
    if (c->in_trailers)
        return 0;
    if (!is_token(at, len)) {
        c->reject = 400;
        return -1;
    }
    if (lx_headers_field(&c->hd, at, len) < 0) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct lx_http_conn *c = parser_conn(p);

    if (head_grow(c, len))
        return -1;
    if (c->in_trailers)
        return 0;
    if (lx_headers_value(&c->hd, at, len) < 0) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

static bool header_is(const struct lx_http_header *h, const char *name)
{
    return strlen(name) == h->name_len && strncasecmp(h->name, name, h->name_len) == 0;
}

/* The request's Host fields: exactly one in HTTP/1.1, at most one in 1.0
 * (RFC 9112 3.2); two that disagree are a classic smuggling vector. */
static bool host_ok(const struct lx_http_req *req)
{
    int n = 0;

    for (size_t i = 0; i < req->n_headers; i++)
        n += header_is(&req->headers[i], "host");
    return n == 1 || (n == 0 && req->http_minor == 0);
}

static int on_headers_complete(http_parser *p)
{
    struct lx_http_conn *c = parser_conn(p);
    struct lx_http_req *req = &c->req;
    const struct lx_http_header *expect;
    bool has_body;

    c->in_trailers = true; /* any field from here on is a trailer */
    if (lx_buf_append(&c->url, "", 1)) {
        c->reject = 431;
        return -1;
    }
    if (p->http_major != 1) {
        c->reject = 505;
        return -1;
    }
    req->path = c->url.data;
    req->path_len = c->url.len - 1;
    /* Absolute form (RFC 9112 3.2.2), "http://host/path": a server must
     * accept it; the path is what routes. The authority ends at the first
     * '/', '?' or '#'; a path must follow it. Not http_parser_parse_url: it
     * refuses authorities RFC 3986 allows ("host:" with an empty port,
     * %-encoded or sub-delim names), which would turn those into 400s. */
    if (req->path_len > 7 && (strncasecmp(req->path, "http://", 7) == 0 ||
                              strncasecmp(req->path, "https://", 8) == 0)) {
        const char *auth = strstr(req->path, "://") + 3;
        const char *slash = auth + strcspn(auth, "/?#");

        if (*slash != '/') {
            c->reject = 400;
            return -1;
        }
        req->path_len -= (size_t)(slash - req->path);
        req->path = slash;
    }
    {
        const char *q = memchr(req->path, '?', req->path_len);

        req->path_only_len = q ? (size_t)(q - req->path) : req->path_len;
    }
    req->method = p->method;
    req->http_major = p->http_major;
    req->http_minor = p->http_minor;
    req->keep_alive = http_should_keep_alive(p) != 0;
    req->headers = lx_headers_resolve(&c->hd);
    req->n_headers = c->hd.n;
    if (p->method == HTTP_CONNECT) {
        c->reject = 405;
        return -1;
    }
    if (!host_ok(req)) {
        c->reject = 400;
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->limits.body_max) {
        c->reject = 413;
        return -1;
    }
    has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENTLENGTH) && p->content_length > 0);
    if (has_body && c->srv->head_cb && !c->srv->head_cb(req, c->srv->ctx)) {
        /* Refused whatever the body says: answer now, never buffer it. */
        req->body_skipped = true;
        req->keep_alive = false;
        c->message_done = true;
        http_parser_pause(p, 1);
        return 0;
    }
    expect = lx_http_req_header(req, "expect");
    if (expect && expect->value_len == 12 &&
        strncasecmp(expect->value, "100-continue", 12) == 0 && p->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);

        conn_write(c, &b, 1);
    }
    c->state = C_BODY;
    return 0;
}

/* A chunk's size is known before its data: refuse it at once when it
 * cannot fit the body limit, instead of waiting for the bytes. */
static int on_chunk_header(http_parser *p)
{
    struct lx_http_conn *c = parser_conn(p);

    if (p->content_length > c->srv->limits.body_max - c->req.body.len) {
        c->reject = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct lx_http_conn *c = parser_conn(p);

    if (c->req.body.len + len > c->srv->limits.body_max) {
        c->reject = 413;
        return -1;
    }
    if (lx_buf_append(&c->req.body, at, len)) {
        c->reject = 503;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct lx_http_conn *c = parser_conn(p);

    c->message_done = true;
    http_parser_pause(p, 1);
    return 0;
}

static void settings_init(void)
{
    http_parser_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_chunk_header = on_chunk_header;
    parser_settings.on_message_complete = on_message_complete;
}

static void conn_send_reject(struct lx_http_conn *c, int status)
{
    static const struct {
        int status;
        const char *type, *code, *msg;
    } rejects[] = {
        {400, "invalid_request_error", "bad_request", "malformed HTTP request"},
        {405, "invalid_request_error", "method_not_allowed", "CONNECT is not supported"},
        {408, "invalid_request_error", "request_timeout", "request not received in time"},
        {413, "invalid_request_error", "request_too_large", "request body too large"},
        {431, "invalid_request_error", "header_too_large", "request header fields too large"},
        {505, "invalid_request_error", "http_version_not_supported",
         "only HTTP/1.0 and HTTP/1.1 are supported"},
        {503, "server_error", "overloaded", "out of memory reading the request"},
    };
    struct lx_http_req *req = &c->req;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(rejects) - 1; i++)
        if (rejects[i].status == status)
            break;
    if (c->srv->reject_cb)
        c->srv->reject_cb(c->srv->ctx, status);
    /* The request is not handed to the handler: answer and close. */
    c->state = C_BUSY;
    c->resp_started = false;
    c->resp_no_body = false;
    c->srv->n_busy++;
    req->keep_alive = false;
    req->on_abort = NULL;
    req->on_drain = NULL;
    req->http_minor = 1;
    if (!c->url.len)
        req->method = HTTP_POST;
    lx_http_resp_error(req, status, rejects[i].type, rejects[i].code, NULL, 0, "%s",
                       rejects[i].msg);
}

/*
 * Parses <len> bytes of input. Returns the bytes consumed; fewer than <len>
 * when a request is complete (the rest belongs to the next request) or the
 * connection is done.
 */
static size_t conn_parse(struct lx_http_conn *c, const char *data, size_t len)
{
    size_t n;
    enum http_errno err;

    c->in_parse++;
    n = http_parser_execute(&c->parser, &parser_settings, data, len);
    err = HTTP_PARSER_ERRNO(&c->parser);
    if (err == HPE_PAUSED) {
        http_parser_pause(&c->parser, 0);
    } else if (err != HPE_OK || c->reject) {
        int status = c->reject ? c->reject : 400;

        if (err == HPE_HEADER_OVERFLOW)
            status = 431;
        if (c->state != C_CLOSING)
            conn_send_reject(c, status);
        c->in_parse--;
        return len;
    }
    if (c->message_done && c->state != C_CLOSING) {
        c->message_done = false;
        c->state = C_BUSY;
        c->srv->n_busy++;
        timer_update(c);
        c->req.data = NULL;
        c->req.on_abort = NULL;
        c->req.on_drain = NULL;
        c->resp_started = false;
        c->head_pending = false;
        c->corked = false;
        lx_buf_reset(&c->cork);
        c->resp_no_body = c->req.method == HTTP_HEAD;
        c->srv->handler(&c->req, c->srv->ctx);
    }
    c->in_parse--;
    return n;
}

/* Parses what waits in c->in while the connection can take a new request. */
static void conn_drain_input(struct lx_http_conn *c)
{
    c->in_parse++;
    while (c->in.len > 0 && (c->state == C_IDLE || c->state == C_HEAD || c->state == C_BODY) &&
           conn_can_parse(c)) {
        size_t n = conn_parse(c, c->in.data, c->in.len);

        lx_buf_consume(&c->in, n);
        if (n == 0)
            break;
    }
    c->in_parse--;
    if (c->eof && c->state != C_BUSY && c->state != C_CLOSING) {
        conn_close(c);
        return;
    }
    /* A burst of pipelined input grew the buffer: an idle connection
     * should not keep it. */
    if (c->in.len == 0 && c->in.cap > KEEP_BUF_MAX)
        lx_buf_deinit(&c->in);
    timer_update(c);
    read_update(c);
}

/* Reading stops while the input held reaches its high watermark (pipelined
 * requests behind a busy one, or behind answers the client does not read),
 * and goes on otherwise; a lingering connection reads to discard. */
static void read_update(struct lx_http_conn *c)
{
    bool want = c->lingering || c->in.len < IN_HIGH_WATER;

    if (c->state == C_CLOSING || c->eof)
        return;
    if (want && c->read_stopped) {
        c->read_stopped = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    } else if (!want && !c->read_stopped) {
        c->read_stopped = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct lx_http_conn *c = h->data;

    buf->base = c->srv->rbuf;
    buf->len = sizeof(c->srv->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct lx_http_conn *c = s->data;
    size_t n;

    if (nread == 0 || c->state == C_CLOSING)
        return;
    if (nread < 0) {
        c->eof = true;
        uv_read_stop(s);
        /* A client that closes while its request is handled aborts it (the
         * proxy then cancels the node's work, as nginx does by default). */
        conn_close(c);
        return;
    }
    if (c->lingering || c->close_after || c->dead)
        return; /* nothing more is parsed from this connection */
    if (c->in.len > 0 || c->state == C_BUSY || !conn_can_parse(c)) {
        /* Pipelined input, or a request is in progress, or the client is
         * not reading its answers: keep it for later. Reading stops at the
         * high watermark, so the buffer (IN_MAX) always has room for one
         * more read; a failure here would be a gap in the input. */
        if (lx_buf_append(&c->in, buf->base, (size_t)nread) < 0) {
            conn_close(c);
            return;
        }
        if (c->state != C_BUSY)
            conn_drain_input(c);
        else
            read_update(c);
        return;
    }
    c->in_parse++;
    n = conn_parse(c, buf->base, (size_t)nread);
    if (n < (size_t)nread && c->state != C_CLOSING && !c->lingering && !c->close_after &&
        lx_buf_append(&c->in, buf->base + n, (size_t)nread - n) < 0) {
        c->in_parse--;
        conn_close(c);
        return;
    }
    c->in_parse--;
    if (c->state == C_CLOSING)
        return;
    if (c->state != C_BUSY && c->in.len > 0) {
        conn_drain_input(c);
        return;
    }
    timer_update(c);
    read_update(c);
}

/* ---- accept and listen ------------------------------------------------ */

/* True at most once per LOG_EVERY_MS for <last>: trouble at accept can
 * repeat thousands of times a second, and the log must not. */
static bool log_due(struct lx_http_server *srv, uint64_t *last)
{
    uint64_t now = uv_now(srv->loop);

    if (*last && now - *last < LOG_EVERY_MS)
        return false;
    *last = now;
    return true;
}

/* Takes the connected socket <fd> as a new client connection. 0 or -errno
 * (then <fd> is closed). */
static int conn_open(struct lx_http_server *srv, int fd)
{
    struct lx_http_conn *c = lx_calloc(1, sizeof(*c));
    int len, rc;

    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    srv->n_conns++;
    lx_list_push_front(&srv->conns, &c->link);
    c->counted = srv->limits.max_conns > 0;
    if (c->counted)
        atomic_fetch_add_explicit(conn_count(srv), 1, memory_order_relaxed);
    rc = uv_tcp_open(&c->tcp, fd);
    if (rc < 0) {
        close(fd);
        c->state = C_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
        return rc;
    }
    srv->accepted++;
    uv_tcp_nodelay(&c->tcp, 1); /* fails harmlessly on a non-TCP socket */
    len = sizeof(c->req.peer);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->req.peer, &len) < 0)
        c->req.peer.ss_family = AF_UNSPEC;
    http_parser_init(&c->parser, HTTP_REQUEST);
    lx_buf_init(&c->in, IN_MAX);
    lx_buf_init(&c->url, srv->limits.head_max + 1);
    lx_headers_init(&c->hd, srv->limits.head_max, MAX_HEADERS);
    lx_buf_init(&c->hbuf, 0);
    lx_buf_init(&c->cork, 0);
    lx_buf_init(&c->req.body, srv->limits.body_max);
    c->req.loop = srv->loop;
    c->req.conn = c;
    c->state = C_IDLE;
    timer_set(c, srv->limits.idle_timeout_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    return 0;
}

static void on_acceptable(uv_poll_t *h, int status, int events);

static void on_accept_resume(uv_timer_t *t)
{
    struct lx_http_server *srv = container_of(t, struct lx_http_server, accept_timer);

    if (!srv->closing)
        uv_poll_start(&srv->accept_poll, UV_READABLE, on_acceptable);
}

/* Stops accepting for ACCEPT_PAUSE_MS: new connections wait in the
 * kernel's backlog instead of costing a spin or a descriptor now. */
static void accept_pause(struct lx_http_server *srv)
{
    uv_poll_stop(&srv->accept_poll);
    uv_timer_start(&srv->accept_timer, on_accept_resume, ACCEPT_PAUSE_MS, 0);
}

/*
 * The listener is polled and accepted here rather than by uv_listen, so
 * that accepting can pause: at MAX_CONNECTIONS, or when descriptors run out
 * (libuv's own loop would call back with EMFILE again and again). At most
 * ACCEPT_BATCH connections per wake-up keep one busy listener from starving
 * the connections already open.
 */
static void on_acceptable(uv_poll_t *h, int status, int events)
{
    struct lx_http_server *srv = container_of(h, struct lx_http_server, accept_poll);

    for (int i = 0; i < ACCEPT_BATCH && !srv->closing; i++) {
        int fd;

        if (srv->limits.max_conns &&
            atomic_load_explicit(conn_count(srv), memory_order_relaxed) >= srv->limits.max_conns) {
            if (log_due(srv, &srv->last_limit_log_ms))
                lx_warn("connection limit reached (MAX_CONNECTIONS=%zu): new connections "
                        "wait until others close",
                        srv->limits.max_conns);
            accept_pause(srv);
            return;
        }
        fd = accept4(srv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;

            if (err == EAGAIN || err == EWOULDBLOCK)
                return;
            if (err == EINTR || err == ECONNABORTED || err == EPROTO)
                continue;
            if (log_due(srv, &srv->last_accept_log_ms)) {
                if (err == EMFILE || err == ENFILE)
                    lx_warn("accept failed: out of file descriptors (%s); accepting pauses "
                            "until some close: raise the descriptor limit (ulimit -n, "
                            "LimitNOFILE) or lower MAX_CONNECTIONS",
                            strerror(err));
                else
                    lx_warn("accept failed: %s", strerror(err));
            }
            accept_pause(srv);
            return;
        }
        conn_open(srv, fd);
    }
}

/* Binds a new socket to <host>:<port>, with SO_REUSEPORT when <reuseport>
 * (SO_REUSEADDR always: a port in TIME_WAIT is free). 0 or -errno. */
static int bind_addr(const char *host, int port, bool reuseport, struct sockaddr_storage *ss,
                     int *fd_out)
{
    struct addrinfo hints = {0}, *res = NULL;
    char portstr[16];
    int fd, one = 1, rc;

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    snprintf(portstr, sizeof(portstr), "%d", port);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0 || !res)
        return -EADDRNOTAVAIL;
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        goto out_free;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
        rc = -errno;
        close(fd);
        goto out_free;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *fd_out = fd;
    rc = 0;
out_free:
    freeaddrinfo(res);
    return rc;
}

int lx_http_listen_probe(const char *host, int port)
{
    struct sockaddr_storage ss;
    int fd = -1, rc;

    /* Without SO_REUSEPORT the bind conflicts with any listener on the
     * address, whether or not that one set SO_REUSEPORT. */
    rc = bind_addr(host, port, false, &ss, &fd);
    if (rc == 0)
        close(fd);
    return rc;
}

int lx_http_server_new(uv_loop_t *loop, const char *host, int port,
                       const struct lx_http_limits *limits, lx_http_handler_cb handler,
                       void *ctx, struct lx_http_server **out)
{
    struct lx_http_server *srv;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = -1, rc;

    uv_once(&settings_once, settings_init);
    rc = bind_addr(host, port, true, &ss, &fd);
    if (rc < 0)
        return rc;
    srv = lx_calloc(1, sizeof(*srv));
    srv->loop = loop;
    srv->limits = *limits;
    srv->handler = handler;
    srv->ctx = ctx;
    srv->listen_fd = fd;
    lx_list_init(&srv->conns);
    if (listen(fd, 4096) < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        rc = -errno;
        close(fd);
        free(srv);
        return rc;
    }
    rc = uv_poll_init_socket(loop, &srv->accept_poll, fd);
    if (rc < 0) {
        close(fd);
        free(srv);
        return rc;
    }
    uv_timer_init(loop, &srv->accept_timer);
    uv_poll_start(&srv->accept_poll, UV_READABLE, on_acceptable);
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    *out = srv;
    return 0;
}

void lx_http_server_set_reject_cb(struct lx_http_server *srv, void (*cb)(void *ctx, int status))
{
    srv->reject_cb = cb;
}

int lx_http_server_adopt(struct lx_http_server *srv, int fd)
{
    if (srv->closing) {
        close(fd);
        return UV_ECANCELED;
    }
    return conn_open(srv, fd);
}

void lx_http_server_set_head_cb(struct lx_http_server *srv, lx_http_head_cb cb)
{
    srv->head_cb = cb;
}

int lx_http_server_port(const struct lx_http_server *srv)
{
    return srv->port;
}

size_t lx_http_server_conns(const struct lx_http_server *srv)
{
    return srv->n_conns;
}

size_t lx_http_server_busy(const struct lx_http_server *srv)
{
    return srv->n_busy;
}

size_t lx_http_server_accepted(const struct lx_http_server *srv)
{
    return srv->accepted;
}

static void server_maybe_done(struct lx_http_server *srv)
{
    if (!srv->closing || !srv->listener_closed || srv->n_conns > 0)
        return;
    if (srv->close_cb) {
        void (*cb)(void *) = srv->close_cb;
        void *arg = srv->close_arg;

        free(srv);
        cb(arg);
        return;
    }
    free(srv);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct lx_http_server *srv = h->data;

    if (++srv->listener_handles_closed < 2)
        return;
    close(srv->listen_fd);
    srv->listener_closed = true;
    server_maybe_done(srv);
}

void lx_http_server_close(struct lx_http_server *srv, bool force, void (*cb)(void *arg),
                          void *arg)
{
    struct lx_list *n, *next;

    if (!srv->closing) {
        srv->closing = true;
        srv->close_cb = cb;
        srv->close_arg = arg;
        srv->accept_poll.data = srv;
        srv->accept_timer.data = srv;
        uv_close((uv_handle_t *)&srv->accept_poll, on_listener_closed);
        uv_close((uv_handle_t *)&srv->accept_timer, on_listener_closed);
    }
    lx_list_for_each_safe(n, next, &srv->conns) {
        struct lx_http_conn *c = container_of(n, struct lx_http_conn, link);

        if (c->state == C_BUSY && !force)
            c->req.keep_alive = false;
        else if (c->state == C_IDLE && c->write_pending > 0 && !force)
            conn_finish(c); /* the answer it has queued still leaves */
        else
            conn_close(c);
    }
}

/* ---- requests and responses ------------------------------------------- */

const struct lx_http_header *lx_http_req_header(const struct lx_http_req *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (header_is(&req->headers[i], name))
            return &req->headers[i];
    return NULL;
}

bool lx_http_req_bearer_is(const struct lx_http_req *req, const char *token)
{
    const struct lx_http_header *h = lx_http_req_header(req, "authorization");

    if (!h || h->value_len < 7 || strncasecmp(h->value, "Bearer ", 7) != 0)
        return false;
    return lx_secure_equal(h->value + 7, h->value_len - 7, token, strlen(token));
}

void lx_http_req_peer_str(const struct lx_http_req *req, char *out, size_t len)
{
    const struct sockaddr_storage *ss = &req->peer;

    if (ss->ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ss, out, len);
    else if (ss->ss_family == AF_INET && len >= 16) {
        /* A dotted quad by hand: uv_ip4_name costs thousands of
         * instructions, and this runs for every request (X-Forwarded-For). */
        const unsigned char *a = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
        size_t k = 0;

        for (int i = 0; i < 4; i++) {
            unsigned v = a[i];

            if (v >= 100)
                out[k++] = (char)('0' + v / 100);
            if (v >= 10)
                out[k++] = (char)('0' + v / 10 % 10);
            out[k++] = (char)('0' + v % 10);
            out[k++] = i < 3 ? '.' : '\0';
        }
    } else if (ss->ss_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)ss, out, len);
    else
        snprintf(out, len, "-");
}

static int resp_start(struct lx_http_req *req, int status, const struct lx_http_header *hdrs,
                      size_t n_hdrs, int64_t content_length, bool lazy)
{
    struct lx_http_conn *c = req->conn;
    struct lx_buf *b = &c->hbuf;
    bool bodiless;
    uv_buf_t ub;

    LX_ASSERT(c->state == C_BUSY && !c->resp_started);
    c->resp_started = true;
    if (c->srv->closing)
        req->keep_alive = false;
    c->resp_chunked = false;
    /* No body and no framing for these statuses (RFC 9112 6.3): a
     * chunked terminator after a 204 would be read as the next response. */
    bodiless = status < 200 || status == 204 || status == 304;
    c->resp_no_body = bodiless || req->method == HTTP_HEAD;
    if (bodiless) {
        content_length = -1;
    } else if (content_length < 0) {
        if (req->http_major == 1 && req->http_minor >= 1)
            c->resp_chunked = true;
        else
            req->keep_alive = false; /* HTTP/1.0: the close ends the body */
    }
    lx_buf_reset(b);
    /* Appends, no printf: this runs for every response. */
    lx_buf_append(b, "HTTP/1.1 ", 9);
    lx_buf_append_u64(b, (uint64_t)status);
    lx_buf_append(b, " ", 1);
    lx_buf_append_str(b, lx_http_reason(status));
    lx_buf_append(b, "\r\n", 2);
    for (size_t i = 0; i < n_hdrs; i++) {
        lx_buf_append(b, hdrs[i].name, hdrs[i].name_len);
        lx_buf_append(b, ": ", 2);
        lx_buf_append(b, hdrs[i].value, hdrs[i].value_len);
        lx_buf_append(b, "\r\n", 2);
    }
    if (bodiless)
        ;
    else if (content_length >= 0)
    {
        lx_buf_append(b, "Content-Length: ", 16);
        lx_buf_append_u64(b, (uint64_t)content_length);
        lx_buf_append(b, "\r\n", 2);
    }
    else if (c->resp_chunked)
        lx_buf_append(b, "Transfer-Encoding: chunked\r\n", 28);
    if (!req->keep_alive)
        lx_buf_append(b, "Connection: close\r\n", 19);
    else if (req->http_minor == 0)
        lx_buf_append(b, "Connection: keep-alive\r\n", 24);
    lx_buf_append(b, "\r\n", 2);
    if (lazy) {
        c->head_pending = true;
        return 0;
    }
    ub = uv_buf_init(b->data, (unsigned int)b->len);
    return conn_write(c, &ub, 1);
}

int lx_http_resp_start(struct lx_http_req *req, int status, const struct lx_http_header *hdrs,
                       size_t n_hdrs, int64_t content_length)
{
    return resp_start(req, status, hdrs, n_hdrs, content_length, false);
}

int lx_http_resp_start_lazy(struct lx_http_req *req, int status,
                            const struct lx_http_header *hdrs, size_t n_hdrs,
                            int64_t content_length)
{
    return resp_start(req, status, hdrs, n_hdrs, content_length, true);
}

void lx_http_resp_cork(struct lx_http_req *req)
{
    req->conn->corked = true;
}

static int cork_flush(struct lx_http_conn *c, const char *extra, size_t extra_len)
{
    uv_buf_t b[3];
    unsigned int n = 0;
    int rc;

    if (c->head_pending) {
        c->head_pending = false;
        b[n++] = uv_buf_init(c->hbuf.data, (unsigned int)c->hbuf.len);
    }
    if (c->cork.len)
        b[n++] = uv_buf_init(c->cork.data, (unsigned int)c->cork.len);
    if (extra_len)
        b[n++] = uv_buf_init((char *)extra, (unsigned int)extra_len);
    c->corked = false;
    rc = n ? conn_write(c, b, n) : 0;
    lx_buf_reset(&c->cork);
    return rc;
}

int lx_http_resp_flush(struct lx_http_req *req)
{
    struct lx_http_conn *c = req->conn;
    uv_buf_t ub;

    if (c->corked)
        return cork_flush(c, NULL, 0);
    if (!c->head_pending)
        return 0;
    c->head_pending = false;
    ub = uv_buf_init(c->hbuf.data, (unsigned int)c->hbuf.len);
    return conn_write(c, &ub, 1);
}

int lx_http_resp_write(struct lx_http_req *req, const void *data, size_t len)
{
    struct lx_http_conn *c = req->conn;
    char size_line[24];
    uv_buf_t bufs[4];
    unsigned int n = 0;

    LX_ASSERT(c->resp_started);
    if (len == 0 || c->resp_no_body)
        return lx_http_resp_flush(req);
    if (c->corked) {
        if (c->resp_chunked) {
            char hx[16];

            lx_buf_append(&c->cork, hx, lx_fmt_hex(hx, len));
            lx_buf_append(&c->cork, "\r\n", 2);
            lx_buf_append(&c->cork, data, len);
            lx_buf_append(&c->cork, "\r\n", 2);
        } else {
            lx_buf_append(&c->cork, data, len);
        }
        return 0;
    }
    if (c->head_pending) {
        c->head_pending = false;
        bufs[n++] = uv_buf_init(c->hbuf.data, (unsigned int)c->hbuf.len);
    }
    if (!c->resp_chunked) {
        bufs[n++] = uv_buf_init((char *)data, (unsigned int)len);
        return conn_write(c, bufs, n);
    }
    {
        size_t k = lx_fmt_hex(size_line, len);

        size_line[k++] = '\r';
        size_line[k++] = '\n';
        bufs[n++] = uv_buf_init(size_line, (unsigned int)k);
    }
    bufs[n++] = uv_buf_init((char *)data, (unsigned int)len);
    bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    return conn_write(c, bufs, n);
}

size_t lx_http_resp_pending(const struct lx_http_req *req)
{
    return req->conn->write_pending;
}

void lx_http_resp_end(struct lx_http_req *req)
{
    struct lx_http_conn *c = req->conn;

    LX_ASSERT(c->state == C_BUSY && c->resp_started);
    if (c->corked) {
        if (c->resp_chunked && !c->resp_no_body)
            cork_flush(c, "0\r\n\r\n", 5);
        else
            cork_flush(c, NULL, 0);
    } else
    {
        uv_buf_t b[2];
        unsigned int n = 0;

        if (c->head_pending) {
            c->head_pending = false;
            b[n++] = uv_buf_init(c->hbuf.data, (unsigned int)c->hbuf.len);
        }
        if (c->resp_chunked && !c->resp_no_body)
            b[n++] = uv_buf_init((char *)"0\r\n\r\n", 5);
        if (n)
            conn_write(c, b, n);
    }
    c->srv->n_busy--;
    c->state = C_IDLE;
    req->on_abort = NULL;
    req->on_drain = NULL;
    req->data = NULL;
    /* An idle keep-alive connection should cost little memory: give back
     * what a large request grew. */
    if (req->body.cap > KEEP_BUF_MAX)
        lx_buf_deinit(&req->body);
    if (c->cork.cap > KEEP_BUF_MAX)
        lx_buf_deinit(&c->cork);
    if (c->in.len == 0 && c->in.cap > KEEP_BUF_MAX)
        lx_buf_deinit(&c->in);
    lx_headers_reset(&c->hd, KEEP_BUF_MAX);
    if (c->dead)
        return; /* the timer closes it */
    if (!req->keep_alive || c->srv->closing) {
        conn_finish(c);
        return;
    }
    /* Inside a parse, the parsing caller goes on and sets the timer.
     * Otherwise pipelined input is parsed on the next loop turn (a 0 ms
     * timer), so the handler is never re-entered from its own call. */
    if (c->in_parse)
        return;
    if (c->eof && c->in.len == 0) {
        conn_close(c);
        return;
    }
    timer_update(c);
    read_update(c);
}

bool lx_http_resp_retract(struct lx_http_req *req)
{
    struct lx_http_conn *c = req->conn;

    if (!c->resp_started)
        return true;
    if (!c->head_pending)
        return false;
    c->head_pending = false;
    c->corked = false;
    lx_buf_reset(&c->cork);
    c->resp_started = false;
    return true;
}

void lx_http_resp_abort(struct lx_http_req *req)
{
    struct lx_http_conn *c = req->conn;

    LX_ASSERT(c->state == C_BUSY);
    c->head_pending = false;
    c->corked = false;
    lx_buf_reset(&c->cork);
    c->srv->n_busy--;
    c->state = C_IDLE; /* not BUSY: conn_close must not call on_abort */
    req->on_abort = NULL;
    req->on_drain = NULL;
    conn_close(c);
}
