/*
 * client.c - load generation: one phase of llmux-bench on its own libuv loop.
 *
 * A phase owns `concurrency` connections (struct conn), each carrying at most
 * one request at a time over HTTP/1.1 keep-alive. The request bytes are built
 * once (proto.c) and every request sends them unchanged, with uv_try_write:
 * no allocation and, on a keep-alive connection, one write and one read per
 * answer. Reads land in the phase's one 64 KiB buffer.
 *
 * Closed loop (rate 0): every connection starts its next request as soon as
 * the previous one ends, until the count is reached or the duration is over.
 * Open loop (rate R): request i is due at t0 + i/R whatever happened to the
 * others; it starts on an idle connection, or, when all `concurrency` are
 * busy, as soon as one frees up. Its latency is measured from when it was
 * due, so an overloaded server shows as latency, not as a lower send rate
 * (no coordinated omission).
 *
 * Connection states:
 *   CLOSED -> CONNECTING -> OPEN (request, answer, request, ...) -> CLOSING -> CLOSED
 * A connection closes after an error or when the server does not keep it
 * alive; its next request then connects again. A request that finds its
 * reused connection closed before any answer byte (the server's keep-alive
 * timeout won the race) is sent once more on a fresh connection, uncounted.
 * When a connection has no more work it is retired (closed for good); the
 * phase ends when all are retired, and the loop then has no handle left.
 *
 * Timeouts (request, connect) are checked by one 100 ms tick for all
 * connections, which also draws the progress bar.
 */
#include <http_parser.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "../src/core/lx.h"
#include "bench.h"

#define READ_BUF (64 * 1024)
#define BODY_MAX (8u << 20) /* non-streaming answer kept for its usage */
#define ERR_BODY_KEEP 200   /* bytes of an error answer kept as a sample */
#define TICK_MS 100
#define LATE_NS 1000000  /* open loop: a start later than this is late */
#define EARLY_NS 1000000 /* open loop: what is due this soon starts now */

enum conn_state { CONN_CLOSED, CONN_CONNECTING, CONN_OPEN, CONN_CLOSING };

struct phase;

struct conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    http_parser parser;
    struct phase *ph;
    struct conn *next_idle; /* open loop: idle stack link */
    enum conn_state state;
    bool in_idle;          /* on the idle stack */
    bool active;           /* a request is under way */
    bool retired;          /* no more work: closed for good */
    bool writing;          /* write_req in flight */
    bool reused;           /* the request went out on a connection that served before */
    bool fresh_retry_done; /* the keep-alive race retry was used */
    bool got_bytes;        /* any answer byte for this request */
    bool complete;         /* the parser saw the end of the answer */
    bool is_sse;           /* 2xx answer to a streaming request */
    bool done_seen;        /* data: [DONE] */
    bool stream_error;     /* an error event in the stream */
    bool body_over;        /* answer body over what is kept */
    bool hdr_in_value;     /* header callbacks: last one was a value */
    bool hdr_is_node;      /* the value being read is X-Routed-Node's */
    int status;
    uint64_t served;          /* answers on this TCP connection */
    uint64_t t_due;           /* ns (uv_hrtime): when the request was due */
    uint64_t t_deadline;      /* ns: --timeout */
    uint64_t t_connect;       /* ns: connect started */
    uint64_t t_first, t_last; /* ns: first and latest content event */
    uint32_t events;          /* content events */
    int64_t usage_prompt;     /* -1 = no usage seen */
    int64_t usage_completion;
    size_t hname_len;
    char hname[16];
    size_t node_len;
    char node[256];
    struct lx_buf body;
    struct bench_sse sse;
};

struct phase {
    uv_loop_t loop;
    uv_timer_t tick;  /* timeouts and progress */
    uv_timer_t sched; /* open loop: the next due start */
    uv_signal_t sigint;
    const struct bench_conf *conf;
    const struct bench_target *t;
    struct bench_result *res;
    struct conn *conns;
    unsigned n_conns;
    unsigned retired;     /* connections retired and closed */
    struct conn *idle;    /* open loop: connections free for a request */
    uint64_t limit;       /* requests to start; UINT64_MAX in duration mode */
    uint64_t t0, t_end;   /* ns; t_end = UINT64_MAX in count mode */
    uint64_t t_last_done; /* ns: the latest request end */
    uint64_t now;         /* ns: time of the read being parsed */
    uint64_t timeout_ns, connect_timeout_ns;
    double interval_ns;  /* open loop */
    uint64_t sched_next; /* open loop: index of the next due start */
    bool open_loop;
    bool stopping; /* no more starts (limit, duration, or SIGINT) */
    bool ended;
    bool progress;
    bool progress_drawn;
    unsigned ticks;
    unsigned last_node; /* index of the last node matched */
    char rbuf[READ_BUF];
};

static http_parser_settings settings;
static volatile sig_atomic_t interrupted;

static void conn_connect(struct conn *c);
static void conn_close(struct conn *c);
static void conn_next(struct conn *c);
static void dispatch(struct phase *ph);

/* ---- recording ---------------------------------------------------------- */

static void node_count(struct phase *ph, const char *name, size_t len, bool ok)
{
    struct bench_result *r = ph->res;
    struct bench_node_count *n = NULL;
    unsigned i;

    while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t'))
        len--;
    while (len > 0 && (*name == ' ' || *name == '\t')) {
        name++;
        len--;
    }
    if (len == 0) {
        name = "unknown";
        len = 7;
    }
    if (!r->nodes)
        r->nodes = lx_calloc(BENCH_MAX_NODES + 1, sizeof(*r->nodes));
    i = ph->last_node;
    if (i < r->n_nodes && strlen(r->nodes[i].name) == len && !memcmp(r->nodes[i].name, name, len)) {
        n = &r->nodes[i];
    } else {
        for (i = 0; i < r->n_nodes; i++) {
            if (strlen(r->nodes[i].name) == len && !memcmp(r->nodes[i].name, name, len)) {
                n = &r->nodes[i];
                break;
            }
        }
    }
    if (!n) {
        if (r->n_nodes == BENCH_MAX_NODES) {
            name = "other";
            len = 5;
            for (i = 0; i < r->n_nodes && strcmp(r->nodes[i].name, "other"); i++)
                ;
        }
        if (i == r->n_nodes) {
            r->nodes[i].name = lx_strndup(name, len);
            r->n_nodes++;
        }
        n = &r->nodes[i];
    }
    ph->last_node = (unsigned)(n - r->nodes);
    if (ok)
        n->ok++;
    else
        n->errors++;
}

static void keep_sample(struct bench_result *r, int status, const struct lx_buf *body)
{
    struct bench_err_sample *s;
    size_t len = LX_MIN(body->len, (size_t)ERR_BODY_KEEP);

    for (unsigned i = 0; i < r->n_samples; i++)
        if (r->samples[i].status == status)
            return;
    if (r->n_samples == BENCH_MAX_SAMPLES)
        return;
    s = &r->samples[r->n_samples++];
    s->status = status;
    s->body = lx_strndup(len ? body->data : "", len);
}

/* Ends the current request: <kind> < 0 for a success. */
static void req_record(struct conn *c, int kind)
{
    struct phase *ph = c->ph;
    struct bench_result *r = ph->res;
    uint64_t now = uv_hrtime();
    double lat_ms = (double)(now - c->t_due) / 1e6;
    int64_t tokens;

    c->active = false;
    ph->t_last_done = now;
    if (kind < 0) {
        r->ok++;
        bench_samples_push(&r->latency_ms, lat_ms);
        if (c->usage_prompt > 0)
            r->prompt_tokens += (uint64_t)c->usage_prompt;
        tokens = c->usage_completion;
        if (tokens < 0) {
            r->usage_missing++;
            tokens = c->events;
        }
        r->completion_tokens += (uint64_t)tokens;
        r->stream_events += c->events;
        if (c->events > 0)
            bench_samples_push(&r->ttft_ms, (double)(c->t_first - c->t_due) / 1e6);
        if (tokens > 0 && lat_ms > 0)
            bench_samples_push(&r->req_tps, (double)tokens * 1000.0 / lat_ms);
        node_count(ph, c->node, c->node_len, true);
        return;
    }
    r->errors++;
    r->err_kind[kind]++;
    if (kind == BENCH_ERR_HTTP && c->status > 0 && c->status < BENCH_MAX_STATUS) {
        r->status[c->status]++;
        keep_sample(r, c->status, &c->body);
    }
    /* Errors with an answer are the node's; connect errors have no node. */
    if (c->status > 0)
        node_count(ph, c->node, c->node_len, false);
}

/* ---- parser callbacks --------------------------------------------------- */

static void on_sse_data(void *ctx, const char *data, size_t len)
{
    struct conn *c = ctx;
    int64_t p, n;

    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->done_seen = true;
        return;
    }
    if (bench_scan_is_error(data, len)) {
        c->stream_error = true;
        return;
    }
    if (bench_scan_has_content(data, len, c->ph->conf->endpoint)) {
        if (c->events == 0)
            c->t_first = c->ph->now;
        else
            bench_hist_add(&c->ph->res->itl, c->ph->now - c->t_last);
        c->t_last = c->ph->now;
        c->events++;
    }
    if (bench_scan_usage(data, len, &p, &n) == 0) {
        if (p >= 0)
            c->usage_prompt = p;
        if (n >= 0)
            c->usage_completion = n;
    }
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    size_t room;

    if (c->hdr_in_value) {
        c->hdr_in_value = false;
        c->hname_len = 0;
    }
    /* Only X-Routed-Node is wanted: longer names just stop matching. */
    room = sizeof(c->hname) - c->hname_len;
    if (len > room) {
        c->hname_len = sizeof(c->hname);
        return 0;
    }
    memcpy(c->hname + c->hname_len, at, len);
    c->hname_len += len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;

    if (!c->hdr_in_value) {
        c->hdr_in_value = true;
        c->hdr_is_node = c->hname_len == 13 && strncasecmp(c->hname, "x-routed-node", 13) == 0;
        if (c->hdr_is_node)
            c->node_len = 0;
    }
    if (c->hdr_is_node) {
        len = LX_MIN(len, sizeof(c->node) - 1 - c->node_len);
        memcpy(c->node + c->node_len, at, len);
        c->node_len += len;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct conn *c = p->data;

    c->status = p->status_code;
    c->is_sse = c->ph->conf->stream && c->status >= 200 && c->status < 300;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    size_t keep;

    if (c->is_sse)
        return bench_sse_feed(&c->sse, at, len, on_sse_data, c) ? -1 : 0;
    if (c->body_over)
        return 0;
    keep = c->status >= 200 && c->status < 300 ? BODY_MAX : ERR_BODY_KEEP;
    if (c->body.len + len > keep) {
        len = keep - c->body.len;
        c->body_over = true;
    }
    if (lx_buf_append(&c->body, at, len))
        c->body_over = true;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = p->data;

    c->complete = true;
    /* Stop here: the connection carries one request at a time, and the
     * next one may start from the read callback. */
    http_parser_pause(p, 1);
    return 0;
}

/* ---- requests ----------------------------------------------------------- */

static void req_reset(struct conn *c)
{
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    c->got_bytes = c->complete = c->is_sse = false;
    c->done_seen = c->stream_error = c->body_over = false;
    c->hdr_in_value = true;
    c->hdr_is_node = false;
    c->status = 0;
    c->events = 0;
    c->usage_prompt = c->usage_completion = -1;
    c->hname_len = c->node_len = 0;
    lx_buf_reset(&c->body);
    bench_sse_reset(&c->sse);
}

/* The connection ended or failed: ends the active request with <kind>, then
 * closes; the next request starts from the close callback. */
static void conn_fail(struct conn *c, enum bench_err kind)
{
    if (c->active)
        req_record(c, (int)kind);
    conn_close(c);
}

/* The server closed a connection that carried an unfinished request. */
static void conn_lost(struct conn *c)
{
    if (c->reused && !c->got_bytes && !c->fresh_retry_done) {
        /* The keep-alive race: resend on a new connection (on_close). */
        c->fresh_retry_done = true;
        conn_close(c);
        return;
    }
    conn_fail(c, BENCH_ERR_CLOSED);
}

static void on_write(uv_write_t *w, int status)
{
    struct conn *c = container_of(w, struct conn, write_req);

    c->writing = false;
    if (status < 0 && c->state == CONN_OPEN && c->active)
        conn_lost(c);
}

static void conn_send(struct conn *c)
{
    const struct bench_target *t = c->ph->t;
    uv_buf_t b = uv_buf_init(t->request, (unsigned)t->request_len);
    int n;

    req_reset(c);
    c->reused = c->served > 0;
    n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)b.len)
        return;
    if (n < 0 && n != UV_EAGAIN) {
        conn_lost(c);
        return;
    }
    if (n > 0) {
        b.base += n;
        b.len -= (size_t)n;
    }
    c->writing = true;
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_write)) {
        c->writing = false;
        conn_lost(c);
    }
}

static void req_start(struct conn *c, uint64_t due)
{
    struct phase *ph = c->ph;

    ph->res->started++;
    c->active = true;
    c->fresh_retry_done = false;
    c->t_due = due;
    c->t_deadline = uv_hrtime() + ph->timeout_ns;
    if (c->state == CONN_OPEN)
        conn_send(c);
    else if (c->state == CONN_CLOSED)
        conn_connect(c);
    /* CLOSING: on_close connects. */
}

/* The answer is complete: record it, then reuse or close the connection. */
static void req_complete(struct conn *c)
{
    bool ok = c->status >= 200 && c->status < 300 && !c->stream_error;
    bool keep = http_should_keep_alive(&c->parser) && !c->writing;
    enum bench_err kind = BENCH_ERR_HTTP;

    if (c->status >= 200 && c->status < 300)
        kind = BENCH_ERR_STREAM;
    if (ok && !c->is_sse && c->body.len)
        bench_scan_usage(c->body.data, c->body.len, &c->usage_prompt, &c->usage_completion);
    c->served++;
    req_record(c, ok ? -1 : (int)kind);
    if (!keep) {
        conn_close(c);
        return;
    }
    conn_next(c);
}

/* ---- connections -------------------------------------------------------- */

static void check_end(struct phase *ph)
{
    if (ph->ended || ph->retired < ph->n_conns)
        return;
    ph->ended = true;
    uv_close((uv_handle_t *)&ph->tick, NULL);
    uv_close((uv_handle_t *)&ph->sched, NULL);
    uv_close((uv_handle_t *)&ph->sigint, NULL);
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = container_of((uv_tcp_t *)h, struct conn, tcp);

    c->state = CONN_CLOSED;
    if (c->retired) {
        c->ph->retired++;
        check_end(c->ph);
        return;
    }
    if (c->active) {
        /* A keep-alive race retry, or a request started while closing. */
        conn_connect(c);
        return;
    }
    conn_next(c);
}

static void conn_close(struct conn *c)
{
    if (c->state != CONN_CONNECTING && c->state != CONN_OPEN)
        return;
    c->state = CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void conn_retire(struct conn *c)
{
    c->retired = true;
    if (c->state == CONN_CLOSED) {
        c->ph->retired++;
        check_end(c->ph);
        return;
    }
    conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = container_of((uv_tcp_t *)h, struct conn, tcp);

    *buf = uv_buf_init(c->ph->rbuf, sizeof(c->ph->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = container_of((uv_tcp_t *)s, struct conn, tcp);

    if (nread > 0) {
        if (!c->active) {
            /* Bytes nobody asked for: this connection is not reusable. */
            conn_close(c);
            return;
        }
        c->ph->now = uv_hrtime();
        c->got_bytes = true;
        http_parser_execute(&c->parser, &settings, buf->base, (size_t)nread);
        if (c->complete) {
            http_parser_pause(&c->parser, 0);
            req_complete(c);
        } else if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
            conn_fail(c, BENCH_ERR_PROTOCOL);
        }
        return;
    }
    if (nread == 0)
        return;
    if (!c->active) {
        conn_close(c); /* idle and closed by the server: reconnect when needed */
        return;
    }
    if (nread == UV_EOF && c->got_bytes) {
        /* A body delimited by the end of the connection ends here. */
        c->ph->now = uv_hrtime();
        http_parser_execute(&c->parser, &settings, NULL, 0);
        if (c->complete) {
            http_parser_pause(&c->parser, 0);
            req_complete(c);
            conn_close(c);
            return;
        }
    }
    conn_lost(c);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = container_of(req, struct conn, connect_req);

    if (c->state != CONN_CONNECTING)
        return; /* closed meanwhile (timeout); on_close follows */
    if (status < 0) {
        conn_fail(c, BENCH_ERR_CONNECT);
        return;
    }
    c->state = CONN_OPEN;
    c->served = 0;
    c->ph->res->connects++;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
        conn_fail(c, BENCH_ERR_CONNECT);
        return;
    }
    conn_send(c);
}

static void conn_connect(struct conn *c)
{
    struct phase *ph = c->ph;
    int rc;

    uv_tcp_init(&ph->loop, &c->tcp);
    c->state = CONN_CONNECTING;
    c->t_connect = uv_hrtime();
    uv_tcp_nodelay(&c->tcp, 1);
    rc =
        uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&ph->t->addr, on_connect);
    if (rc)
        conn_fail(c, BENCH_ERR_CONNECT); /* e.g. no local port left; async via on_close */
}

/* ---- scheduling --------------------------------------------------------- */

static bool may_start(struct phase *ph)
{
    if (!ph->stopping && ph->res->started >= ph->limit)
        ph->stopping = true;
    if (!ph->stopping && ph->t_end != UINT64_MAX && uv_hrtime() >= ph->t_end)
        ph->stopping = true;
    return !ph->stopping;
}

/* What a connection does once free (idle, open or closed). */
static void conn_next(struct conn *c)
{
    struct phase *ph = c->ph;

    if (ph->open_loop) {
        if (ph->stopping) {
            conn_retire(c);
            return;
        }
        if (!c->in_idle) {
            c->in_idle = true;
            c->next_idle = ph->idle;
            ph->idle = c;
        }
        dispatch(ph);
        return;
    }
    if (!may_start(ph)) {
        conn_retire(c);
        return;
    }
    req_start(c, uv_hrtime());
}

static void on_sched(uv_timer_t *t)
{
    dispatch(container_of(t, struct phase, sched));
}

static void retire_idle(struct phase *ph)
{
    while (ph->idle) {
        struct conn *c = ph->idle;

        ph->idle = c->next_idle;
        c->in_idle = false;
        conn_retire(c);
    }
}

/* Open loop: starts every request that is due, as far as connections allow. */
static void dispatch(struct phase *ph)
{
    uint64_t now = uv_hrtime(), due;

    while (!ph->stopping) {
        due = ph->t0 + (uint64_t)((double)ph->sched_next * ph->interval_ns);
        if (ph->sched_next >= ph->limit || due >= ph->t_end) {
            ph->stopping = true;
            break;
        }
        if (due > now + EARLY_NS) {
            /* Timers have 1 ms steps and may fire up to 1 ms late: aim low,
             * and start what is due within EARLY_NS from now. */
            uv_update_time(&ph->loop);
            uv_timer_start(&ph->sched, on_sched, (due - now) / 1000000, 0);
            return;
        }
        if (!ph->idle)
            return; /* all busy: it starts late, and its latency counts from `due` */
        struct conn *c = ph->idle;

        ph->idle = c->next_idle;
        c->in_idle = false;
        if (now > due + LATE_NS) {
            ph->res->late_starts++;
            ph->res->start_lag_max_ms =
                LX_MAX(ph->res->start_lag_max_ms, (double)(now - due) / 1e6);
        }
        ph->sched_next++;
        /* Latency counts from when it was due, or from its start if earlier. */
        req_start(c, LX_MIN(due, now));
    }
    retire_idle(ph);
}

/* ---- tick: timeouts and progress ---------------------------------------- */

static void draw_progress(struct phase *ph, uint64_t now)
{
    const struct bench_result *r = ph->res;
    uint64_t done = r->ok + r->errors;
    double elapsed = (double)(now - ph->t0) / 1e9, frac;
    char bar[31];
    int fill;

    if (ph->t_end != UINT64_MAX)
        frac = (double)(now - ph->t0) / (double)(ph->t_end - ph->t0);
    else
        frac = (double)done / (double)ph->limit;
    frac = frac < 0 ? 0 : frac > 1 ? 1 : frac;
    fill = (int)(frac * 30);
    memset(bar, '#', (size_t)fill);
    memset(bar + fill, '-', (size_t)(30 - fill));
    bar[30] = '\0';
    fprintf(stderr, "\r%-10s [%s] %3d%%  %llu done  %.0f req/s  %llu err  %llu in flight ",
            r->label, bar, (int)(frac * 100), (unsigned long long)done,
            elapsed > 0 ? (double)done / elapsed : 0, (unsigned long long)r->errors,
            (unsigned long long)(r->started - done));
    ph->progress_drawn = true;
}

static void on_tick(uv_timer_t *t)
{
    struct phase *ph = container_of(t, struct phase, tick);
    uint64_t now = uv_hrtime();

    for (unsigned i = 0; i < ph->n_conns; i++) {
        struct conn *c = &ph->conns[i];

        if (!c->active)
            continue;
        if (c->state == CONN_CONNECTING && now - c->t_connect > ph->connect_timeout_ns)
            conn_fail(c, BENCH_ERR_CONNECT);
        else if (now > c->t_deadline)
            conn_fail(c, BENCH_ERR_TIMEOUT);
    }
    if (!ph->open_loop && !ph->stopping && ph->t_end != UINT64_MAX && now >= ph->t_end)
        ph->stopping = true;
    if (ph->progress && ++ph->ticks % 2 == 0)
        draw_progress(ph, now);
}

static void on_sigint(uv_signal_t *s, int signum)
{
    struct phase *ph = container_of(s, struct phase, sigint);

    if (interrupted) {
        fprintf(stderr, "\nllmux-bench: interrupted twice, exiting\n");
        _exit(130);
    }
    interrupted = 1;
    fprintf(stderr, "\nllmux-bench: interrupted: waiting for requests in flight "
                    "(Ctrl-C again to quit)\n");
    ph->stopping = true;
    retire_idle(ph);
}

/* ---- phase -------------------------------------------------------------- */

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int bench_client_run(const struct bench_conf *conf, const struct bench_target *t,
                     unsigned concurrency, double rate, struct bench_result *res)
{
    struct phase *ph = calloc(1, sizeof(*ph));
    struct rusage ru0, ru1;

    if (!ph)
        return LX_ENOMEM;
    settings = (http_parser_settings){
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
    };
    ph->conf = conf;
    ph->t = t;
    ph->res = res;
    res->concurrency = concurrency;
    res->rate = rate;
    res->loop = rate > 0 ? "open" : "closed";
    ph->n_conns = concurrency;
    ph->conns = lx_calloc(concurrency, sizeof(*ph->conns));
    ph->open_loop = rate > 0;
    ph->interval_ns = rate > 0 ? 1e9 / rate : 0;
    ph->timeout_ns = (uint64_t)(conf->timeout_s * 1e9);
    ph->connect_timeout_ns = (uint64_t)(LX_MIN(conf->connect_timeout_s, conf->timeout_s) * 1e9);
    ph->progress = conf->progress && isatty(STDERR_FILENO);
    ph->stopping = interrupted;
    uv_loop_init(&ph->loop);
    uv_timer_init(&ph->loop, &ph->tick);
    uv_timer_init(&ph->loop, &ph->sched);
    uv_signal_init(&ph->loop, &ph->sigint);
    uv_signal_start(&ph->sigint, on_sigint, SIGINT);
    uv_timer_start(&ph->tick, on_tick, TICK_MS, TICK_MS);
    for (unsigned i = 0; i < concurrency; i++) {
        ph->conns[i].ph = ph;
        lx_buf_init(&ph->conns[i].body, 0);
        bench_sse_init(&ph->conns[i].sse);
    }

    getrusage(RUSAGE_SELF, &ru0);
    ph->t0 = uv_hrtime();
    ph->t_last_done = ph->t0;
    ph->limit = conf->duration_s > 0 ? UINT64_MAX : conf->num_requests;
    ph->t_end = conf->duration_s > 0 ? ph->t0 + (uint64_t)(conf->duration_s * 1e9) : UINT64_MAX;
    if (ph->open_loop) {
        /* Most recently used on top: keep-alive connections are reused
         * before new ones are opened. */
        for (unsigned i = concurrency; i-- > 0;) {
            ph->conns[i].in_idle = true;
            ph->conns[i].next_idle = ph->idle;
            ph->idle = &ph->conns[i];
        }
        dispatch(ph);
    } else {
        for (unsigned i = 0; i < concurrency; i++)
            conn_next(&ph->conns[i]);
    }
    uv_run(&ph->loop, UV_RUN_DEFAULT);
    getrusage(RUSAGE_SELF, &ru1);

    if (ph->progress_drawn)
        fprintf(stderr, "\r\033[K");
    res->wall_s = (double)(ph->t_last_done - ph->t0) / 1e9;
    res->cpu_user_s = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
    res->cpu_sys_s = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
    res->interrupted = interrupted;
    for (unsigned i = 0; i < concurrency; i++) {
        lx_buf_deinit(&ph->conns[i].body);
        bench_sse_deinit(&ph->conns[i].sse);
    }
    uv_loop_close(&ph->loop);
    free(ph->conns);
    free(ph);
    bench_result_finish(res);
    return 0;
}
