/*
 * test_upstream.c - the node client (src/http/upstream.c) against a fake node
 * on 127.0.0.1: response framings (Content-Length, chunked, until close, 1xx,
 * 204/304) delivered at once, byte by byte and in small pieces; keep-alive
 * reuse and when a connection must not be reused; the keep-alive race; connect
 * failures, timeouts, closes and malformed answers with their error kinds;
 * cancel, pause/resume, and closing the pool.
 *
 * The node is a nonblocking listening socket driven by the test itself in the
 * loop's thread: between loop turns it accepts, reads the request and writes
 * what the test tells it to. When it writes in pieces, each piece is first
 * seen on the client's socket (loopback delivers it within send()), then the
 * loop runs until the client has read it, so every piece is a read of its
 * own. Every wait is bounded (WAIT_MS); only the timeouts under test are short.
 *
 * Every callback checks that it does not run inside a call the test made into
 * upstream.c, nor after its exchange ended (on_done, on_error, cancel).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../src/core/log.h"
#include "../../src/http/upstream.h"
#include "../loop_probe.h"

#define WAIT_MS 5000         /* longest wait for something that must happen */
#define QUIET_MS 300         /* how long "nothing happens" is watched */
#define SHORT_MS 100         /* the timeouts under test */
#define BODY_MAX (64 * 1024) /* body bytes an exchange keeps */
#define MAX_EX 4             /* exchanges per test */
#define KEEP_MS 60000        /* the pool's idle keep-alive, unless under test */

#define REQ_LINE "GET /v1/models HTTP/1.1\r\n"
#define REQ_REST "Host: node\r\nUser-Agent: test_upstream\r\n\r\n"
#define REQ REQ_LINE REQ_REST
#define OK_2 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

/* One exchange as its callbacks saw it. */
struct exchange {
    struct lx_upstream_req ur;
    int heads, bodies, dones, errors, read_ends;
    int late;                 /* callbacks inside a call into upstream.c or after the end */
    bool cancelled;           /* the test called lx_upstream_cancel */
    int status;
    int64_t clen;
    size_t n_hdrs;
    char x_test[32];          /* the X-Test header's value, "" when absent */
    bool saw_link;            /* a Link header (only the 103 in the tests has one) */
    enum lx_upstream_err err;
    bool err_got_head;
    bool cancel_in_head;      /* steering: cancel from on_head */
    bool pause_in_body;       /* steering: pause from every on_body */
    size_t body_len;
    char body[BODY_MAX];
};

/* The fake node: a listening socket and the connection it serves. */
struct node {
    int lfd;                  /* listening socket, -1 = none */
    int port;
    int fd;                   /* the newest accepted connection, -1 = none */
    int accepted;             /* connections accepted so far */
    bool eof;                 /* the client closed fd (EOF or reset) */
    bool hold_reads;          /* leave what the client sends unread */
    size_t req_len;           /* bytes in req, since the last answer began */
    char req[4096];
};

struct fixture {
    uv_loop_t loop;
    struct lx_upstream_pool *pool;
    struct node n, n2;        /* n2 is opened by the tests that need two nodes */
    struct lx_upstream_target target, target2;
    struct exchange ex[MAX_EX];
};

static int in_call; /* > 0 while the test is inside a call into upstream.c */

static uint64_t deadline(uint64_t ms)
{
    return uv_hrtime() + ms * 1000000;
}

static void check_deadline(uint64_t end, const char *what)
{
    if (uv_hrtime() > end)
        fail_msg("timed out after %d ms waiting for: %s", WAIT_MS, what);
}

/* ---- calls into upstream.c ------------------------------------------ */

/* Runs <call> with in_call raised: no callback may run meanwhile. */
#define CALL(call)                                                                                 \
    do {                                                                                           \
        in_call++;                                                                                 \
        call;                                                                                      \
        in_call--;                                                                                 \
    } while (0)

static void ex_send_to(struct fixture *f, struct exchange *ex, const struct lx_upstream_target *t)
{
    int rc;

    CALL(rc = lx_upstream_send(f->pool, t, &ex->ur));
    assert_int_equal(rc, 0);
}

static void ex_send(struct fixture *f, struct exchange *ex)
{
    ex_send_to(f, ex, &f->target);
}

static void ex_cancel(struct exchange *ex)
{
    CALL(lx_upstream_cancel(&ex->ur));
    ex->cancelled = true;
}

static void ex_pause(struct exchange *ex)
{
    CALL(lx_upstream_pause(&ex->ur));
}

static void ex_resume(struct exchange *ex)
{
    CALL(lx_upstream_resume(&ex->ur));
}

/* ---- callbacks ------------------------------------------------------- */

static struct exchange *cb_enter(void *ctx)
{
    struct exchange *ex = ctx;

    if (in_call || ex->dones || ex->errors || ex->cancelled)
        ex->late++;
    return ex;
}

static void on_head(void *ctx, int status, const struct lx_http_header *hdrs, size_t n_hdrs,
                    int64_t content_length)
{
    struct exchange *ex = cb_enter(ctx);

    ex->heads++;
    ex->status = status;
    ex->clen = content_length;
    ex->n_hdrs = n_hdrs;
    for (size_t i = 0; i < n_hdrs; i++) {
        const struct lx_http_header *h = &hdrs[i];

        if (h->name_len == 6 && strncasecmp(h->name, "X-Test", 6) == 0)
            snprintf(ex->x_test, sizeof(ex->x_test), "%.*s", (int)h->value_len, h->value);
        if (h->name_len == 4 && strncasecmp(h->name, "Link", 4) == 0)
            ex->saw_link = true;
    }
    if (ex->cancel_in_head)
        ex_cancel(ex);
}

static void on_body(void *ctx, const char *data, size_t len)
{
    struct exchange *ex = cb_enter(ctx);

    if (!ex->heads || len > sizeof(ex->body) - ex->body_len)
        ex->late++;
    else
        memcpy(ex->body + ex->body_len, data, len);
    ex->body_len += len;
    ex->bodies++;
    if (ex->pause_in_body)
        ex_pause(ex);
}

static void on_done(void *ctx)
{
    struct exchange *ex = cb_enter(ctx);

    ex->dones++;
}

static void on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct exchange *ex = cb_enter(ctx);

    ex->errors++;
    ex->err = kind;
    ex->err_got_head = got_head;
}

static void on_read_end(void *ctx)
{
    struct exchange *ex = cb_enter(ctx);

    if (!ex->heads)
        ex->late++;
    ex->read_ends++;
}

static const struct lx_upstream_cbs cbs = {on_head, on_body, on_done, on_error, on_read_end};

/* Exchange <i> of <f>, ready to send REQ (in two buffers) with roomy timeouts. */
static struct exchange *ex_prep(struct fixture *f, int i)
{
    struct exchange *ex = &f->ex[i];

    memset(ex, 0, sizeof(*ex));
    ex->clen = -2;
    ex->ur.cbs = &cbs;
    ex->ur.ctx = ex;
    ex->ur.bufs[0] = uv_buf_init(REQ_LINE, sizeof(REQ_LINE) - 1);
    ex->ur.bufs[1] = uv_buf_init(REQ_REST, sizeof(REQ_REST) - 1);
    ex->ur.nbufs = 2;
    ex->ur.timeouts.connect_ms = WAIT_MS;
    ex->ur.timeouts.first_byte_ms = WAIT_MS;
    ex->ur.timeouts.idle_ms = WAIT_MS;
    return ex;
}

static bool ex_ended(const struct exchange *ex)
{
    return ex->dones + ex->errors > 0;
}

/* The client's sockets, seen from outside. */
static struct loop_probe probe(struct fixture *f)
{
    return loop_probe(&f->loop);
}

/* ---- the node ---------------------------------------------------------- */

static void node_open(struct node *n)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int rcvbuf = 16 * 1024;

    memset(n, 0, sizeof(*n));
    n->fd = -1;
    n->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(n->lfd >= 0);
    /* A small receive window (accepted sockets inherit it): a big request
     * stays in flight while the node does not read. */
    setsockopt(n->lfd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(n->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(n->lfd, 16), 0);
    assert_int_equal(getsockname(n->lfd, (struct sockaddr *)&sa, &len), 0);
    n->port = ntohs(sa.sin_port);
}

/* Closes the node's connection: with a FIN, or with a RST (<reset>). */
static void node_close(struct node *n, bool reset)
{
    static const struct linger rst = {1, 0};

    if (n->fd < 0)
        return;
    if (reset)
        setsockopt(n->fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
    close(n->fd);
    n->fd = -1;
}

static void node_shut(struct node *n)
{
    node_close(n, false);
    if (n->lfd >= 0)
        close(n->lfd);
    n->lfd = -1;
}

/* Accepts what connects (a newer connection replaces the current one) and
 * reads what the client sent, unless told to hold reads. */
static void node_poll(struct node *n)
{
    int fd;

    if (n->lfd < 0)
        return;
    while ((fd = accept4(n->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        node_close(n, false);
        n->fd = fd;
        n->accepted++;
        n->eof = false;
        n->req_len = 0;
    }
    while (n->fd >= 0 && !n->eof && !n->hold_reads) {
        char buf[4096];
        ssize_t r = recv(n->fd, buf, sizeof(buf), 0);

        if (r < 0 && errno == EAGAIN)
            break;
        if (r <= 0) {
            n->eof = true; /* EOF, or a reset */
            break;
        }
        r = LX_MIN(r, (ssize_t)(sizeof(n->req) - n->req_len));
        memcpy(n->req + n->req_len, buf, (size_t)r);
        n->req_len += (size_t)r;
    }
}

static bool node_has_request(const struct node *n)
{
    return n->req_len >= sizeof(REQ) - 1;
}

/* One loop turn, then the nodes do their part. */
static void turn(struct fixture *f)
{
    uv_run(&f->loop, UV_RUN_NOWAIT);
    node_poll(&f->n);
    node_poll(&f->n2);
}

/* Runs the loop until <cond> holds; fails after WAIT_MS. */
#define RUN_UNTIL(f, cond)                                                                         \
    do {                                                                                           \
        uint64_t end_ = deadline(WAIT_MS);                                                         \
        while (!(cond)) {                                                                          \
            check_deadline(end_, #cond);                                                           \
            turn(f);                                                                               \
            usleep(100);                                                                           \
        }                                                                                          \
    } while (0)

static void run_for(struct fixture *f, uint64_t ms)
{
    uint64_t end = deadline(ms);

    while (uv_hrtime() < end) {
        turn(f);
        usleep(100);
    }
}

/* After a piece was written: waits (without running the loop, so nothing
 * reads it yet) until it shows on the client's socket, then runs the loop
 * until the client has read it: each piece is one read. */
static void wait_consumed(struct fixture *f)
{
    uint64_t end = deadline(WAIT_MS);

    while (probe(f).unread == 0 && probe(f).open_tcp > 0) {
        check_deadline(end, "a written piece to reach the client");
        usleep(50);
    }
    while (probe(f).unread > 0) {
        check_deadline(end, "the client to read a piece");
        turn(f);
    }
}

/* Writes <len> bytes to the node's connection, in pieces of <piece> bytes
 * each read by the client before the next (0: all at once, unsynchronised).
 * False when the client has closed the connection. */
static bool node_write(struct fixture *f, struct node *n, const char *data, size_t len,
                       size_t piece)
{
    uint64_t end = deadline(WAIT_MS);
    size_t off = 0;

    while (off < len) {
        size_t want = piece ? LX_MIN(piece, len - off) : len - off;
        ssize_t w = send(n->fd, data + off, want, MSG_NOSIGNAL);

        if (w < 0 && errno != EAGAIN)
            return false;
        if (w < 0) {
            check_deadline(end, "room to write to the client");
            turn(f);
            continue;
        }
        off += (size_t)w;
        if (piece)
            wait_consumed(f);
    }
    return true;
}

static bool node_write_str(struct fixture *f, struct node *n, const char *s)
{
    return node_write(f, n, s, strlen(s), 0);
}

/* Waits for the request on the node's connection, checks it, and answers.
 * False when the client closed before it had all of the answer. */
static bool node_answer(struct fixture *f, struct node *n, const char *resp, size_t piece)
{
    RUN_UNTIL(f, node_has_request(n));
    assert_int_equal(n->req_len, sizeof(REQ) - 1);
    assert_memory_equal(n->req, REQ, sizeof(REQ) - 1);
    n->req_len = 0;
    return node_write(f, n, resp, strlen(resp), piece);
}

/* ---- fixture ------------------------------------------------------------ */

static struct fixture *fixture_new(uint64_t keepalive_ms)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->pool = lx_upstream_pool_new(&f->loop, keepalive_ms);
    node_open(&f->n);
    f->n2.lfd = f->n2.fd = -1;
    f->target = (struct lx_upstream_target){1, "node", "127.0.0.1", f->n.port};
    return f;
}

/* Opens the second node, reached as target2 (pool slot <id>). */
static void fixture_add_node(struct fixture *f, uint32_t id)
{
    node_open(&f->n2);
    f->target2 = (struct lx_upstream_target){id, "node2", "127.0.0.1", f->n2.port};
}

/* Closes the pool (every exchange has ended); the loop must end up empty. */
static void fixture_free(struct fixture *f)
{
    if (f->pool)
        CALL(lx_upstream_pool_close(f->pool));
    RUN_UNTIL(f, probe(f).handles == 0);
    for (int i = 0; i < MAX_EX; i++)
        assert_int_equal(f->ex[i].late, 0);
    node_shut(&f->n);
    node_shut(&f->n2);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

/* ---- checks -------------------------------------------------------------- */

static void assert_done(const struct exchange *ex, int status, const char *body)
{
    assert_int_equal(ex->late, 0);
    assert_int_equal(ex->errors, 0);
    assert_int_equal(ex->dones, 1);
    assert_int_equal(ex->heads, 1);
    assert_int_equal(ex->status, status);
    assert_int_equal(ex->body_len, strlen(body));
    assert_memory_equal(ex->body, body, strlen(body));
}

static void assert_failed(const struct exchange *ex, enum lx_upstream_err kind, bool got_head)
{
    assert_int_equal(ex->late, 0);
    assert_int_equal(ex->dones, 0);
    assert_int_equal(ex->errors, 1);
    assert_int_equal(ex->err, kind);
    assert_int_equal(ex->err_got_head, got_head);
    assert_int_equal(ex->heads, got_head ? 1 : 0);
}

/* Sends exchange <ex> and has the node answer <resp>, all written. */
static void ex_start(struct fixture *f, struct exchange *ex, const char *resp)
{
    ex_send(f, ex);
    assert_true(node_answer(f, &f->n, resp, 0));
}

/* Sends exchange <ex>, has the node answer <resp> (then close, with
 * <node_closes>), and waits for the end. The outcome is the caller's to
 * check: a client that gives up early may leave part of <resp> unwritten. */
static void exchange(struct fixture *f, struct exchange *ex, const char *resp, size_t piece,
                     bool node_closes)
{
    ex_send(f, ex);
    (void)node_answer(f, &f->n, resp, piece);
    if (node_closes)
        node_close(&f->n, false);
    RUN_UNTIL(f, ex_ended(ex));
}

/* A plain exchange on <f> that must succeed with OK_2. */
static void exchange_ok(struct fixture *f, int i)
{
    struct exchange *ex = ex_prep(f, i);

    exchange(f, ex, OK_2, 0, false);
    assert_done(ex, 200, "ok");
}

/* Offset of the end of the last response head in <resp>. */
static size_t last_head_end(const char *resp)
{
    const char *p = resp, *last = resp;

    while ((p = strstr(p, "HTTP/1.")))
        last = p++;
    return (size_t)(strstr(last, "\r\n\r\n") + 4 - resp);
}

/* ---- responses that succeed ------------------------------------------ */

struct answer_case {
    const char *name;
    const char *resp;
    bool node_closes;  /* the node closes after it (the body ends with the connection) */
    bool reusable;     /* the connection may serve the next exchange */
    int status;
    int64_t clen;      /* on_head's content_length */
    const char *body;
    const char *x_test;
    int bodies_at_once; /* on_body calls when it arrives in one read */
};

static const struct answer_case answers[] = {
    {"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Test: cl\r\n\r\nhello world",
     false, true, 200, 11, "hello world", "cl", 1},
    {"chunked",
     "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Test: ch\r\n\r\n"
     "5\r\nhello\r\n1\r\n \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
     false, true, 201, -1, "hello world", "ch", 3},
    {"until close", "HTTP/1.1 200 OK\r\nX-Test: eof\r\n\r\nhello world", true, false, 200, -1,
     "hello world", "eof", 1},
    {"1xx first",
     "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Test: 1xx\r\n\r\nok",
     false, true, 200, 2, "ok", "1xx", 1},
    {"204 with a length", "HTTP/1.1 204 No Content\r\nX-Test: 204\r\nContent-Length: 10\r\n\r\n",
     false, true, 204, -1, "", "204", 0},
    {"304 chunked", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nX-Test: 304\r\n\r\n",
     false, true, 304, -1, "", "304", 0},
    {"empty length", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Test: 0\r\n\r\n", false, true, 200,
     0, "", "0", 0},
    {"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
     false, false, 200, 2, "ok", "", 1},
    {"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nX-Test: 10\r\n\r\nok", false, false, 200,
     2, "ok", "10", 1},
};

/*
 * Each framing, delivered at once, byte by byte and 7 bytes at a time: the
 * same head, body and end. Byte by byte, every body byte is an on_body of its
 * own and every read after the head that does not end the response an
 * on_read_end. A second exchange then shows whether the connection was kept:
 * the node accepts it again only when it was not.
 */
static void test_answers(void **state)
{
    static const size_t pieces[] = {0, 1, 7};

    for (size_t i = 0; i < ARRAY_SIZE(answers); i++) {
        for (size_t k = 0; k < ARRAY_SIZE(pieces); k++) {
            const struct answer_case *c = &answers[i];
            struct fixture *f = fixture_new(KEEP_MS);
            struct exchange *ex = ex_prep(f, 0);
            size_t after_head = strlen(c->resp) - last_head_end(c->resp);

            print_message("  %s, pieces of %zu\n", c->name, pieces[k]);
            exchange(f, ex, c->resp, pieces[k], c->node_closes);
            assert_done(ex, c->status, c->body);
            assert_int_equal(ex->clen, c->clen);
            assert_string_equal(ex->x_test, c->x_test);
            assert_false(ex->saw_link);
            if (pieces[k] == 0)
                assert_int_equal(ex->bodies, c->bodies_at_once);
            if (pieces[k] == 1) {
                assert_int_equal(ex->bodies, strlen(c->body));
                assert_int_equal(ex->read_ends, after_head + c->node_closes);
            }
            exchange_ok(f, 1);
            assert_int_equal(f->n.accepted, c->reusable ? 1 : 2);
            fixture_free(f);
        }
    }
}

/* A body that ends with the connection ends only then. */
static void test_until_close_ends_at_close(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex_start(f, ex, "HTTP/1.1 200 OK\r\n\r\nhello");
    RUN_UNTIL(f, ex->body_len == 5);
    run_for(f, 50);
    assert_int_equal(ex->dones, 0);
    assert_true(node_write_str(f, &f->n, " world"));
    node_close(&f->n, false);
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "hello world");
    fixture_free(f);
}

/* The head cut in two at every offset, all on one kept-alive connection. */
static void test_head_split_at_every_offset(void **state)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nX-Test: split\r\nContent-Length: 3\r\n\r\nabc";
    struct fixture *f = fixture_new(KEEP_MS);

    for (size_t cut = 1; cut < sizeof(resp) - 1; cut++) {
        struct exchange *ex = ex_prep(f, 0);

        ex_start(f, ex, "");
        assert_true(node_write(f, &f->n, resp, cut, cut));
        assert_true(node_write(f, &f->n, resp + cut, sizeof(resp) - 1 - cut, 0));
        RUN_UNTIL(f, ex_ended(ex));
        assert_done(ex, 200, "abc");
        assert_string_equal(ex->x_test, "split");
        assert_int_equal(ex->n_hdrs, 2);
    }
    assert_int_equal(f->n.accepted, 1);
    fixture_free(f);
}

/* ---- keep-alive -------------------------------------------------------- */

/* Two exchanges, one connection; another target id gets its own. */
static void test_keepalive_reuse(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex;

    exchange_ok(f, 0);
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 1);
    assert_int_equal(probe(f).open_tcp, 1);
    /* Same node, other pool slot: a connection of its own. */
    f->target.id = 37;
    ex = ex_prep(f, 2);
    exchange(f, ex, OK_2, 0, false);
    assert_done(ex, 200, "ok");
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/* "Connection: close", or bytes after the response: the client closes. */
static void test_not_reused(void **state)
{
    static const char *const resps[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        OK_2 "HTTP/1.1 200 OK\r\n",
    };

    for (size_t i = 0; i < ARRAY_SIZE(resps); i++) {
        struct fixture *f = fixture_new(KEEP_MS);
        struct exchange *ex = ex_prep(f, 0);

        exchange(f, ex, resps[i], 0, false);
        assert_done(ex, 200, "ok");
        RUN_UNTIL(f, f->n.eof);
        assert_int_equal(probe(f).open_tcp, 0);
        exchange_ok(f, 1);
        assert_int_equal(f->n.accepted, 2);
        fixture_free(f);
    }
}

/* The node closes a pooled connection and the loop notices: the pool drops
 * it, the next exchange connects again. */
static void test_idle_close_dropped(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);

    exchange_ok(f, 0);
    node_close(&f->n, false);
    RUN_UNTIL(f, probe(f).open_tcp == 0);
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/*
 * The keep-alive race: the node has closed a pooled connection (FIN or RST)
 * but the loop has not seen it when the next exchange takes it. The request
 * goes again, whole, on a fresh connection; no error.
 */
static void test_keepalive_race_retries_fresh(void **state)
{
    for (int reset = 0; reset <= 1; reset++) {
        struct fixture *f = fixture_new(KEEP_MS);

        exchange_ok(f, 0);
        node_close(&f->n, reset);
        exchange_ok(f, 1);
        assert_int_equal(f->n.accepted, 2);
        fixture_free(f);
    }
}

/* The retry is once: a fresh connection closed before any byte is an error. */
static void test_keepalive_race_retries_once(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex;

    exchange_ok(f, 0);
    node_close(&f->n, false);
    ex = ex_prep(f, 1);
    ex_send(f, ex);
    RUN_UNTIL(f, f->n.accepted == 2 && node_has_request(&f->n));
    node_close(&f->n, false);
    RUN_UNTIL(f, ex_ended(ex));
    assert_failed(ex, LX_UP_CLOSED, false);
    run_for(f, 50);
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/* An idle connection is closed after idle_keepalive_ms. */
static void test_idle_keepalive_expires(void **state)
{
    struct fixture *f = fixture_new(SHORT_MS);

    exchange_ok(f, 0);
    RUN_UNTIL(f, f->n.eof);
    assert_int_equal(probe(f).open_tcp, 0);
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/* A node that answers before reading the whole request: the request's write
 * is still in flight, so the connection is not pooled. */
static void test_early_answer_not_pooled(void **state)
{
    static char big[256 * 1024];
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    memset(big, 'x', sizeof(big));
    ex->ur.bufs[2] = uv_buf_init(big, sizeof(big));
    ex->ur.nbufs = 3;
    f->n.hold_reads = true;
    ex_send(f, ex);
    loop_probe_set_sndbuf(&f->loop, 4096);
    RUN_UNTIL(f, f->n.fd >= 0);
    assert_true(node_write_str(f, &f->n, OK_2));
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "ok");
    RUN_UNTIL(f, probe(f).open_tcp == 0);
    node_close(&f->n, false);
    f->n.hold_reads = false;
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/* ---- failures ------------------------------------------------------------ */

struct fail_case {
    const char *name;
    const char *resp;      /* what the node writes */
    bool node_closes;      /* then it closes */
    uint64_t first_byte_ms, idle_ms;
    enum lx_upstream_err kind;
    bool got_head;
    const char *body;      /* delivered before the error */
};

static const struct fail_case failures[] = {
    /* Timeouts. */
    {"silent node", "", false, SHORT_MS, WAIT_MS, LX_UP_TIMEOUT, false, ""},
    {"stalled in the head", "HTTP/1.1 200 OK\r\nContent-Len", false, SHORT_MS, WAIT_MS,
     LX_UP_TIMEOUT, false, ""},
    {"stalled in the body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false, WAIT_MS,
     SHORT_MS, LX_UP_IDLE, true, "abc"},
    {"stalled in a chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", false,
     WAIT_MS, SHORT_MS, LX_UP_IDLE, true, "ab"},
    /* The node closes too early. */
    {"closed before a byte", "", true, WAIT_MS, WAIT_MS, LX_UP_CLOSED, false, ""},
    {"closed in the head", "HTTP/1.1 200 OK\r\nX-", true, WAIT_MS, WAIT_MS, LX_UP_CLOSED, false,
     ""},
    {"closed mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true, WAIT_MS, WAIT_MS,
     LX_UP_CLOSED, true, "abc"},
    {"closed mid-chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", true,
     WAIT_MS, WAIT_MS, LX_UP_CLOSED, true, "ab"},
    {"closed before the last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
     true, WAIT_MS, WAIT_MS, LX_UP_CLOSED, true, "ab"},
    {"lying length, then close", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true,
     WAIT_MS, WAIT_MS, LX_UP_CLOSED, true, "short"},
    /* Malformed. */
    {"garbage", "garbage\r\n\r\n", false, WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
    {"status of one digit", "HTTP/1.1 2 OK\r\nContent-Length: 0\r\n\r\n", false, WAIT_MS, WAIT_MS,
     LX_UP_PROTOCOL, false, ""},
    {"status in letters", "HTTP/1.1 abc OK\r\n\r\n", false, WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false,
     ""},
    {"bad version", "HTTP/x.1 200 OK\r\n\r\n", false, WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
    {"101", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", false,
     WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
    {"two lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", false,
     WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
    {"length and chunked",
     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     false, WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
    {"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false,
     WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, true, ""},
    {"bytes after a 1xx head's body", "HTTP/1.1 100 Continue\r\nContent-Length: 1\r\n\r\nX", false,
     WAIT_MS, WAIT_MS, LX_UP_PROTOCOL, false, ""},
};

/* Runs <c> on a fresh connection and checks its error. */
static void run_failure(const struct fail_case *c)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);
    uint64_t t0 = uv_hrtime();
    uint64_t limit_ms = LX_MIN(c->first_byte_ms, c->idle_ms);

    print_message("  %s\n", c->name);
    ex->ur.timeouts.first_byte_ms = c->first_byte_ms;
    ex->ur.timeouts.idle_ms = c->idle_ms;
    exchange(f, ex, c->resp, 0, c->node_closes);
    assert_failed(ex, c->kind, c->got_head);
    assert_int_equal(ex->body_len, strlen(c->body));
    assert_memory_equal(ex->body, c->body, strlen(c->body));
    /* A timeout does not fire early (uv_now may lag the clock by a tick). */
    if (c->kind == LX_UP_TIMEOUT || c->kind == LX_UP_IDLE)
        assert_true(uv_hrtime() - t0 >= (limit_ms - 5) * 1000000);
    /* The connection is gone: the node sees it close. */
    RUN_UNTIL(f, f->n.eof || f->n.fd < 0);
    fixture_free(f);
}

static void test_failures(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(failures); i++)
        run_failure(&failures[i]);
}

/* A head past the client's limits: one huge field, or too many fields. */
static void test_head_over_limits(void **state)
{
    for (int many = 0; many <= 1; many++) {
        struct fixture *f = fixture_new(KEEP_MS);
        struct exchange *ex = ex_prep(f, 0);
        size_t cap = 100 * 1024, len;
        char *resp = malloc(cap);

        assert_non_null(resp);
        len = (size_t)snprintf(resp, cap, "HTTP/1.1 200 OK\r\n");
        if (many) {
            for (int i = 0; i < 200; i++)
                len += (size_t)snprintf(resp + len, cap - len, "X-%d: v\r\n", i);
        } else {
            len += (size_t)snprintf(resp + len, cap - len, "X-Big: ");
            memset(resp + len, 'v', 70 * 1024);
            len += 70 * 1024;
            len += (size_t)snprintf(resp + len, cap - len, "\r\n");
        }
        snprintf(resp + len, cap - len, "Content-Length: 0\r\n\r\n");
        exchange(f, ex, resp, 0, false);
        assert_failed(ex, LX_UP_PROTOCOL, false);
        free(resp);
        fixture_free(f);
    }
}

/* Port of a socket that was bound and closed: nothing listens there. */
static int closed_port(void)
{
    struct node n;
    int port;

    node_open(&n);
    port = n.port;
    node_shut(&n);
    return port;
}

/* Connection refused (reported later), and a connect that fails at once
 * (a multicast address): LX_UP_CONNECT, never inside lx_upstream_send. */
static void test_connect_fails(void **state)
{
    const struct lx_upstream_target targets[] = {
        {5, "refused", "127.0.0.1", closed_port()},
        {6, "multicast", "224.0.0.1", 80},
    };

    for (size_t i = 0; i < ARRAY_SIZE(targets); i++) {
        struct fixture *f = fixture_new(KEEP_MS);
        struct exchange *ex = ex_prep(f, 0);

        ex_send_to(f, ex, &targets[i]);
        assert_int_equal(ex->errors, 0);
        RUN_UNTIL(f, ex_ended(ex));
        assert_failed(ex, LX_UP_CONNECT, false);
        if (i == 0)
            assert_string_equal(lx_upstream_cause(ex->err, ex->ur.uv_err), "connection refused");
        fixture_free(f);
    }
}

/* A node whose accept queue is full drops the SYN: connect_ms ends it. */
static void test_connect_timeout(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int filler = socket(AF_INET, SOCK_STREAM, 0), lfd = f->n.lfd;
    uint64_t t0;

    /* Backlog 0 takes one connection, which nobody accepts. */
    assert_int_equal(listen(lfd, 0), 0);
    sa.sin_port = htons((uint16_t)f->n.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(filler, (struct sockaddr *)&sa, sizeof(sa)), 0);
    f->n.lfd = -1; /* the node stops accepting: its queue stays full */
    ex->ur.timeouts.connect_ms = SHORT_MS;
    t0 = uv_hrtime();
    ex_send(f, ex);
    RUN_UNTIL(f, ex_ended(ex));
    assert_failed(ex, LX_UP_CONNECT, false);
    assert_string_equal(lx_upstream_cause(ex->err, ex->ur.uv_err), "connect timed out");
    assert_true(uv_hrtime() - t0 >= (SHORT_MS - 5) * 1000000);
    close(filler);
    f->n.lfd = lfd;
    fixture_free(f);
}

/* A name (not a numeric address uv_ip4_addr takes) goes through the
 * resolver; "127.1" resolves without DNS. */
static void test_resolved_host(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);

    f->target.host = "127.1";
    exchange_ok(f, 0);
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 1);
    fixture_free(f);
}

/* ---- cancel ---------------------------------------------------------------- */

/* Cancel from on_head: the body in the same read is not delivered, nothing
 * else is, and the node sees the connection close. */
static void test_cancel_in_head(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex->cancel_in_head = true;
    ex_start(f, ex, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    RUN_UNTIL(f, f->n.eof);
    assert_int_equal(ex->heads, 1);
    assert_int_equal(ex->bodies + ex->dones + ex->errors, 0);
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 2);
    fixture_free(f);
}

/* Cancel between reads after the head: what the node sends then is not
 * delivered, no callback runs, the node sees the close. */
static void test_cancel_after_head(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex->ur.timeouts.idle_ms = SHORT_MS;
    ex_start(f, ex, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    RUN_UNTIL(f, ex->body_len == 3);
    ex_cancel(ex);
    (void)node_write_str(f, &f->n, "defghij");
    RUN_UNTIL(f, f->n.eof);
    run_for(f, QUIET_MS); /* past idle_ms: no timer either */
    assert_int_equal(ex->heads, 1);
    assert_int_equal(ex->body_len, 3);
    assert_int_equal(ex->dones + ex->errors, 0);
    fixture_free(f);
}

/* Cancel right after send, while connecting (and while resolving): nothing
 * is called back, nothing leaks. */
static void test_cancel_before_connected(void **state)
{
    for (int resolve = 0; resolve <= 1; resolve++) {
        struct fixture *f = fixture_new(KEEP_MS);
        struct exchange *ex = ex_prep(f, 0);

        if (resolve)
            f->target.host = "127.1";
        ex_send(f, ex);
        ex_cancel(ex);
        run_for(f, 50);
        RUN_UNTIL(f, probe(f).open_tcp == 0);
        assert_int_equal(ex->heads + ex->dones + ex->errors, 0);
        fixture_free(f);
    }
}

/* ---- pause / resume --------------------------------------------------- */

/* Paused between reads: body bytes wait in the socket, undelivered, and no
 * idle timeout fires; resumed, they arrive once. */
static void test_pause_resume(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex->ur.timeouts.idle_ms = SHORT_MS;
    ex_start(f, ex, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello");
    RUN_UNTIL(f, ex->body_len == 5);
    ex_pause(ex);
    assert_true(node_write_str(f, &f->n, " world"));
    run_for(f, QUIET_MS);
    assert_int_equal(ex->body_len, 5);
    assert_int_equal(ex->dones + ex->errors, 0);
    assert_int_equal(probe(f).unread, 6);
    ex_resume(ex);
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "hello world");
    assert_int_equal(ex->bodies, 2);
    fixture_free(f);
}

/* Paused from on_body (as the proxy does): no read until resumed; the
 * connection ends paused, goes back to the pool and serves the next one. */
static void test_pause_in_body(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex->pause_in_body = true;
    ex_start(f, ex, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    RUN_UNTIL(f, ex->bodies == 1);
    assert_true(node_write_str(f, &f->n, "6\r\n world\r\n0\r\n\r\n"));
    run_for(f, QUIET_MS);
    assert_int_equal(ex->bodies, 1);
    ex_resume(ex);
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "hello world");
    exchange_ok(f, 1);
    assert_int_equal(f->n.accepted, 1);
    fixture_free(f);
}

/*
 * Paused before the connection is up: the first-byte clock must not run while
 * reading is stopped, or a node that answered at once is reported as
 * LX_UP_TIMEOUT (blamed on the node) while the client holds it back. (A bug
 * this test found: conn_send() armed first_byte_ms regardless.)
 */
static void test_pause_before_connected_no_timeout(void **state)
{
    struct fixture *f;
    struct exchange *ex;

    f = fixture_new(KEEP_MS);
    ex = ex_prep(f, 0);
    ex->ur.timeouts.first_byte_ms = SHORT_MS;
    ex_send(f, ex);
    ex_pause(ex);
    assert_true(node_answer(f, &f->n, OK_2, 0));
    run_for(f, QUIET_MS);
    assert_int_equal(ex->heads + ex->dones + ex->errors, 0);
    ex_resume(ex);
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "ok");
    fixture_free(f);
}

/*
 * Paused and resumed inside the head: the head's deadline (first_byte_ms)
 * still holds, so with idle_ms 0 a node that stalls in its head is timed out.
 * (A bug this test found: resume re-armed idle_ms once any byte had come.)
 */
static void test_resume_in_head_keeps_first_byte_timeout(void **state)
{
    static const char part[] = "HTTP/1.1 200 OK\r\nContent-";
    struct fixture *f;
    struct exchange *ex;

    f = fixture_new(KEEP_MS);
    ex = ex_prep(f, 0);
    ex->ur.timeouts.first_byte_ms = QUIET_MS;
    ex->ur.timeouts.idle_ms = 0;
    ex_start(f, ex, "");
    assert_true(node_write(f, &f->n, part, sizeof(part) - 1, sizeof(part)));
    ex_pause(ex);
    ex_resume(ex);
    RUN_UNTIL(f, ex_ended(ex));
    assert_failed(ex, LX_UP_TIMEOUT, false);
    fixture_free(f);
}

/* ---- the pool --------------------------------------------------------------- */

/* Closing the pool closes the idle connections of every node (the nodes see
 * them close) and frees everything (ASan: no leak). */
static void test_pool_close_with_idle(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex;

    fixture_add_node(f, 300); /* past the pool's first slot array */
    exchange_ok(f, 0);
    ex = ex_prep(f, 1);
    ex_send_to(f, ex, &f->target2);
    assert_true(node_answer(f, &f->n2, OK_2, 0));
    RUN_UNTIL(f, ex_ended(ex));
    assert_done(ex, 200, "ok");
    assert_int_equal(probe(f).open_tcp, 2);
    CALL(lx_upstream_pool_close(f->pool));
    RUN_UNTIL(f, f->n.eof && f->n2.eof && probe(f).handles == 0);
    f->pool = NULL;
    fixture_free(f);
}

/* A pool closed while a cancelled connection is still closing is freed
 * once it has closed. */
static void test_pool_close_while_closing(void **state)
{
    struct fixture *f = fixture_new(KEEP_MS);
    struct exchange *ex = ex_prep(f, 0);

    ex_send(f, ex);
    RUN_UNTIL(f, node_has_request(&f->n));
    ex_cancel(ex);
    fixture_free(f);
}

/* Each cause in words; without one, the kind's own words. */
static void test_cause_words(void **state)
{
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_ECONNREFUSED), "connection refused");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_ETIMEDOUT), "connect timed out");
    assert_string_equal(lx_upstream_cause(LX_UP_CLOSED, UV_ECONNRESET), "connection reset");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_EAI_NONAME),
                        "DNS lookup failed (unknown host)");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_EAI_AGAIN),
                        "DNS lookup failed (temporary failure)");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_EAI_FAIL), "DNS lookup failed");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, UV_EHOSTUNREACH), "host unreachable");
    assert_string_equal(lx_upstream_cause(LX_UP_CONNECT, 0), "connect error");
    assert_string_equal(lx_upstream_cause(LX_UP_CLOSED, 0), "connection closed");
    assert_string_equal(lx_upstream_cause(LX_UP_TIMEOUT, 0), "timeout before the response head");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_until_close_ends_at_close),
        cmocka_unit_test(test_head_split_at_every_offset),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_not_reused),
        cmocka_unit_test(test_idle_close_dropped),
        cmocka_unit_test(test_keepalive_race_retries_fresh),
        cmocka_unit_test(test_keepalive_race_retries_once),
        cmocka_unit_test(test_idle_keepalive_expires),
        cmocka_unit_test(test_early_answer_not_pooled),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_head_over_limits),
        cmocka_unit_test(test_connect_fails),
        cmocka_unit_test(test_cause_words),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_resolved_host),
        cmocka_unit_test(test_cancel_in_head),
        cmocka_unit_test(test_cancel_after_head),
        cmocka_unit_test(test_cancel_before_connected),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_pause_in_body),
        cmocka_unit_test(test_pause_before_connected_no_timeout),
        cmocka_unit_test(test_resume_in_head_keeps_first_byte_timeout),
        cmocka_unit_test(test_pool_close_with_idle),
        cmocka_unit_test(test_pool_close_while_closing),
    };

    signal(SIGPIPE, SIG_IGN);
    lx_log_set_level(LX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
