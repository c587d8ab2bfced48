/*
 * test_server.c - the HTTP server over a socketpair (lx_http_server_adopt):
 * pipelining in order, trailers dropped, a refused head answered without its
 * body, the output watermark holding back pipelined requests, strict request
 * parsing, and the send timeout. One loop; the test plays the client on the
 * other end of the pair and runs the loop until what it waits for happens
 * (bounded in turns and wall time).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../src/core/log.h"
#include "../../src/http/server.h"

#define WAIT_MS 3000

struct fixture {
    uv_loop_t loop;
    struct lx_http_server *srv;
    int client;                 /* our end of the socketpair */
    char out[1 << 20];          /* what the server sent us */
    size_t out_len;
    bool eof;                   /* the server closed its end */
    int handled;                /* handler calls */
    int aborted;                /* on_abort calls */
    size_t body_bytes;          /* answer size (0: the path is the body) */
    bool hold;                  /* keep the request after writing the answer */
    bool refuse_bodies;         /* head callback answer */
    bool saw_skipped;           /* a request arrived with body_skipped */
    size_t last_n_headers;
    size_t last_body_len;
};

static void on_abort(struct lx_http_req *req)
{
    struct fixture *f = req->data;

    f->aborted++;
}

static void handler(struct lx_http_req *req, void *ctx)
{
    struct fixture *f = ctx;

    f->handled++;
    f->saw_skipped |= req->body_skipped;
    f->last_n_headers = req->n_headers;
    f->last_body_len = req->body.len;
    req->data = f;
    req->on_abort = on_abort;
    if (f->body_bytes) {
        char *big = malloc(f->body_bytes);

        memset(big, 'x', f->body_bytes);
        lx_http_resp_start(req, 200, NULL, 0, (int64_t)f->body_bytes);
        lx_http_resp_write(req, big, f->body_bytes);
        free(big);
        if (!f->hold)
            lx_http_resp_end(req);
        return;
    }
    lx_http_resp_send(req, 200, "text/plain", NULL, 0, req->path, req->path_len);
}

static bool wants_body(const struct lx_http_req *req, void *ctx)
{
    struct fixture *f = ctx;

    return !f->refuse_bodies;
}

static struct fixture *fixture_new(const struct lx_http_limits *limits, int server_sndbuf)
{
    struct fixture *f = calloc(1, sizeof(*f));
    int sv[2];

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(lx_http_server_new(&f->loop, "127.0.0.1", 0, limits, handler, f, &f->srv), 0);
    lx_http_server_set_head_cb(f->srv, wants_body);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    if (server_sndbuf)
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &server_sndbuf, sizeof(server_sndbuf));
    f->client = sv[0];
    assert_int_equal(lx_http_server_adopt(f->srv, sv[1]), 0);
    return f;
}

static void on_server_closed(void *arg)
{
    *(bool *)arg = true;
}

static void fixture_free(struct fixture *f)
{
    bool closed = false;

    close(f->client);
    lx_http_server_close(f->srv, true, on_server_closed, &closed);
    for (int i = 0; i < 1000 && !closed; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(closed);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static void send_all(struct fixture *f, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(f->client, data, len);

        if (n < 0 && errno == EAGAIN) {
            uv_run(&f->loop, UV_RUN_NOWAIT);
            continue;
        }
        assert_true(n > 0);
        data += n;
        len -= (size_t)n;
    }
}

static void send_str(struct fixture *f, const char *s)
{
    send_all(f, s, strlen(s));
}

/* Reads what the server has written so far, without blocking. */
static void drain_client(struct fixture *f)
{
    for (;;) {
        ssize_t n = read(f->client, f->out + f->out_len, sizeof(f->out) - f->out_len);

        if (n > 0) {
            f->out_len += (size_t)n;
            if (f->out_len == sizeof(f->out))
                f->out_len = 0; /* big bodies: keep only the tail */
            continue;
        }
        if (n == 0)
            f->eof = true;
        return;
    }
}

/* Runs the loop until <done>(f) holds; fails after WAIT_MS. With <read>,
 * the client reads what arrives meanwhile. */
static void run_until(struct fixture *f, bool (*done)(struct fixture *f), bool read)
{
    uint64_t end = uv_hrtime() + (uint64_t)WAIT_MS * 1000000;

    while (!done(f)) {
        assert_true(uv_hrtime() < end);
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (read)
            drain_client(f);
        usleep(200);
    }
}

static bool got_eof(struct fixture *f)
{
    return f->eof;
}

static bool got_abort(struct fixture *f)
{
    return f->aborted > 0;
}

static const struct lx_http_limits default_limits = {
    .head_max = 8192,
    .body_max = 65536,
    .request_timeout_ms = 10000,
    .idle_timeout_ms = 10000,
    .send_timeout_ms = 10000,
};

/* Three requests in one write come back in order. */
static void test_pipelined_answers_in_order(void **state)
{
    struct fixture *f = fixture_new(&default_limits, 0);
    const char *a, *b, *c;

    send_str(f, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    run_until(f, got_eof, true);
    f->out[f->out_len] = '\0';
    assert_int_equal(f->handled, 3);
    a = strstr(f->out, "\r\n\r\n/a");
    b = strstr(f->out, "\r\n\r\n/b");
    c = strstr(f->out, "\r\n\r\n/c");
    assert_true(a && b && c && a < b && b < c);
    fixture_free(f);
}

static bool handled_one(struct fixture *f)
{
    return f->handled >= 1 && f->out_len > 0;
}

/* Trailer fields never reach the request (they once moved its headers). */
static void test_trailers_keep_the_head_intact(void **state)
{
    struct fixture *f = fixture_new(&default_limits, 0);

    send_str(f, "POST /t HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n");
    run_until(f, handled_one, true);
    assert_int_equal(f->last_n_headers, 3); /* Host, X-A, Transfer-Encoding */
    assert_int_equal(f->last_body_len, 5);
    fixture_free(f);
}

/* A head the callback refuses is answered at once, without its body, and the
 * connection closes after the answer. */
static void test_refused_head_answered_without_body(void **state)
{
    struct fixture *f = fixture_new(&default_limits, 0);

    f->refuse_bodies = true;
    send_str(f, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
                "Expect: 100-continue\r\n\r\n");
    run_until(f, got_eof, true);
    f->out[f->out_len] = '\0';
    assert_int_equal(f->handled, 1);
    assert_true(f->saw_skipped);
    assert_int_equal(f->last_body_len, 0);
    assert_null(strstr(f->out, "100 Continue"));
    assert_true(strncmp(f->out, "HTTP/1.1 200", 12) == 0);
    fixture_free(f);
}

static bool three_handled(struct fixture *f)
{
    return f->handled >= 3;
}

/* While a large answer waits unread, the next pipelined request is not
 * handed to the handler; once the client reads, it is. */
static void test_output_watermark_holds_pipelined_requests(void **state)
{
    struct fixture *f = fixture_new(&default_limits, 4096);
    int rcvbuf = 4096;

    setsockopt(f->client, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    f->body_bytes = 600 * 1024;
    send_str(f, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 200; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(f->handled, 1);
    run_until(f, three_handled, true);
    fixture_free(f);
}

/* Requests refused by the parser itself, each with its status. */
static void test_strict_request_line(void **state)
{
    static const struct {
        const char *req, *status;
    } cases[] = {
        {"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"},
        {"GET /a\fb HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"},
        {"GET / HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP/1.1 505"},
        {"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "HTTP/1.1 400"},
        {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"},
        {"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"},
        {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7fffffffffffffff\r\n",
         "HTTP/1.1 413"},
        {"GET http://h?x=/y HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fixture *f = fixture_new(&default_limits, 0);

        send_str(f, cases[i].req);
        run_until(f, got_eof, true);
        assert_int_equal(f->handled, 0);
        if (strncmp(f->out, cases[i].status, strlen(cases[i].status)) != 0)
            fail_msg("case %zu: got %.40s", i, f->out);
        fixture_free(f);
    }
}

/* A client that reads nothing of a large answer is closed after the send
 * timeout, and the handler is told (on_abort). */
static void test_send_timeout_aborts_an_unread_answer(void **state)
{
    struct lx_http_limits l = default_limits;
    struct fixture *f;
    int rcvbuf = 4096;

    l.send_timeout_ms = 50;
    f = fixture_new(&l, 4096);
    setsockopt(f->client, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    f->body_bytes = 512 * 1024;
    f->hold = true;
    send_str(f, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    run_until(f, got_abort, false);
    assert_int_equal(f->handled, 1);
    assert_int_equal(f->aborted, 1);
    fixture_free(f);
}

/* The probe finds the port of a listener, even one that shares it with
 * SO_REUSEPORT, and a free port free (and leaves it so). */
static void test_listen_probe(void **state)
{
    struct lx_http_limits limits = {.head_max = 8192, .body_max = 1 << 20};
    struct fixture *f = fixture_new(&limits, 0);
    int port = lx_http_server_port(f->srv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd;

    assert_int_equal(lx_http_listen_probe("127.0.0.1", port), -EADDRINUSE);
    fixture_free(f);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    assert_int_equal(lx_http_listen_probe("127.0.0.1", ntohs(sa.sin_port)), 0);
    assert_int_equal(lx_http_listen_probe("127.0.0.1", ntohs(sa.sin_port)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelined_answers_in_order),
        cmocka_unit_test(test_trailers_keep_the_head_intact),
        cmocka_unit_test(test_refused_head_answered_without_body),
        cmocka_unit_test(test_output_watermark_holds_pipelined_requests),
        cmocka_unit_test(test_strict_request_line),
        cmocka_unit_test(test_listen_probe),
        cmocka_unit_test(test_send_timeout_aborts_an_unread_answer),
    };

    lx_log_set_level(LX_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
