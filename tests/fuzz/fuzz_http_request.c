/*
 * fuzz_http_request.c - libFuzzer target for the HTTP/1.1 server
 * (src/http/server.c) as a client drives it: the real connection code, fed
 * through a socket.
 *
 * Input: byte 0 steers the harness, byte 1 where the stream is cut into
 * writes, the rest is what the client sends (pipelined requests, chunked
 * bodies, trailers, garbage).
 *   byte 0  bit 3: the small-limits server (head 512, body 1024) instead of
 *                  the normal one (head 4096, body 65536)
 *           bit 4: the client closes its side right after its last byte,
 *                  even while a response is pending (abort path), or
 *                  closes the socket altogether (write error path)
 *           bit 5: a slow client: the server's send buffer is small and the
 *                  client reads at most 4 KiB per loop turn (write queue,
 *                  backpressure, on_drain)
 *           all:   seeds the handler's choices
 *           (printable: 'A'-'G' plain, 'H'-'O' small limits, 'P'-'W' early
 *           close, 'a'-'g' slow client)
 *   byte 1  low 3 bits: the largest write, 0 = all at once, 1..7 = 1, 2, 7,
 *           16, 64, 300, 1500 bytes; the whole byte seeds the write sizes
 *           (so '@' is one write, 'A' byte by byte, 'E' up to 64 bytes);
 *           at most 64 writes, the 64th takes the rest
 *
 * Per input: socketpair(AF_UNIX), one end handed to the server with
 * lx_http_server_adopt() (the accept path, minus the TCP handshake), the
 * input written to the other end in pieces, each piece read by the server
 * before the next is written (so the cuts are the server's reads), then
 * shutdown(SHUT_WR), and the loop run until the server has closed the
 * connection. The server's output is read and discarded.
 *
 * The handler answers each request in one of several ways (Content-Length or
 * chunked, lazy head, corked, lx_http_resp_error, lx_http_resp_send, abort,
 * a 96 KiB body ended from on_drain), half of the time later, after one to
 * three loop turns (given between uv_run calls, as a 0 ms timer would, but
 * counted in turns so that the next piece of input arrives while the
 * connection is BUSY).
 *
 * Invariants: no sanitizer report; the handler's request is well formed
 * (NUL-terminated path, body within the limit, headers readable); no
 * request reaches the handler after a response that closes the connection
 * (or after a request the server rejected); on_abort and on_drain only for a
 * request the handler holds; the output starts with a status line; once the
 * client has closed, the connection closes within a bounded number of loop
 * turns, no request is left with the handler, lx_http_server_conns() and
 * lx_http_server_busy() are 0.
 *
 * The bugs this target found are fixed; their inputs are in the corpus, and
 * each check that caught one stays an invariant. No timer fires during a run: the
 * server's timeouts are seconds, an input takes microseconds.
 *
 *   make fuzz && build/fuzz/fuzz_http_request -max_total_time=60 corpus-copy/
 */
#include <errno.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define FUZZ_NAME "fuzz_http_request"
#include "core/log.h"
#include "fuzz_util.h"
#include "http/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TURNS 2000              /* loop turns an input may take before it is a hang */
#define DRAIN_LOW_WATER (64 * 1024) /* server.c's: on_drain fires below it */
#define SLOW_READ 4096              /* bytes a slow client reads per turn */

/* A request the handler holds: answered after <turns> more loop turns, or
 * (draining) ended from on_drain. */
struct pending {
    struct pending *next;
    struct lx_http_req *req;
    uint32_t choice;
    int turns;
    bool draining;
};

struct server {
    struct lx_http_server *srv;
    struct lx_http_limits limits;
};

static uv_loop_t loop;
static struct server servers[2]; /* normal limits, small limits */
static struct pending *pending;  /* responses not yet given */
static size_t n_pending;
static uint32_t rng;           /* the handler's choices, seeded per input */
static volatile unsigned sink; /* keeps reads of request bytes */
static bool closing_sent;      /* a response that closes the connection ended */
static char big[16 * 1024];    /* body pieces of the big response */

/* Reads every byte the handler may read, so ASan sees a stale view. */
static void check_req(struct lx_http_req *req, const struct server *s)
{
    unsigned acc = 0;
    char peer[64];

    if (req->loop != &loop || !req->path || req->path[req->path_len] != '\0' ||
        req->path_only_len > req->path_len)
        fail("malformed request path");
    for (size_t i = 0; i < req->path_len; i++)
        acc += (unsigned char)req->path[i];
    if (req->body.len > s->limits.body_max || (req->body.len && !req->body.data))
        fail("body over the limit");
    for (size_t i = 0; i < req->body.len; i++)
        acc += (unsigned char)req->body.data[i];
    lx_http_req_peer_str(req, peer, sizeof(peer));
    if (strcmp(peer, "-") != 0)
        fail("peer of a socketpair is not \"-\"");
    /* Trailers once moved the header store under these views (found here). */
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct lx_http_header *h = &req->headers[i];

        for (size_t k = 0; k < h->name_len; k++)
            acc += (unsigned char)h->name[k];
        for (size_t k = 0; k < h->value_len; k++)
            acc += (unsigned char)h->value[k];
    }
    if (lx_http_req_header(req, "host"))
        acc++;
    sink = acc;
}

static void on_abort(struct lx_http_req *req);

/* Ends <req>; notes whether that response closes the connection. */
static void end(struct lx_http_req *req)
{
    closing_sent |= !req->keep_alive;
    lx_http_resp_end(req);
}

/* Keeps <req> for later: counted down by run_pending, or ended by on_drain. */
static struct pending *hold(struct lx_http_req *req, uint32_t choice, int turns)
{
    struct pending *p = calloc(1, sizeof(*p));

    p->req = req;
    p->choice = choice;
    p->turns = turns;
    p->next = pending;
    pending = p;
    n_pending++;
    req->data = p;
    req->on_abort = on_abort;
    return p;
}

static void unlink_pending(struct pending *p)
{
    struct pending **pp = &pending;

    while (*pp != p)
        pp = &(*pp)->next;
    *pp = p->next;
    n_pending--;
    free(p);
}

static void on_abort(struct lx_http_req *req)
{
    struct pending *p = req->data;

    if (!p || p->req != req)
        fail("on_abort for a request the handler does not hold");
    unlink_pending(p);
}

static void on_drain(struct lx_http_req *req)
{
    struct pending *p = req->data;

    if (!p || p->req != req || !p->draining)
        fail("on_drain for a request that does not wait for it");
    unlink_pending(p);
    req->data = NULL;
    end(req);
}

/* Answers <req> the way <choice> says; gives <req> up. */
static void respond(struct lx_http_req *req, uint32_t choice)
{
    static const struct lx_http_header hdr = {"Content-Type", 12, "text/plain", 10};
    static const char text[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    size_t len = (choice >> 8) % sizeof(text);

    if ((choice >> 12) % 8 == 0)
        req->keep_alive = false;
    switch (choice % 9) {
    case 0: /* Content-Length, head and body in two writes */
        lx_http_resp_start(req, 200, &hdr, 1, (int64_t)len);
        lx_http_resp_write(req, text, len);
        end(req);
        break;
    case 1: /* chunked (close-delimited on HTTP/1.0), two chunks */
        lx_http_resp_start(req, 200, NULL, 0, -1);
        lx_http_resp_write(req, text, len);
        lx_http_resp_write(req, text, sizeof(text) - 1 - len);
        end(req);
        break;
    case 2: /* lazy head, Content-Length */
        lx_http_resp_start_lazy(req, 201, &hdr, 1, (int64_t)len);
        lx_http_resp_write(req, text, len);
        end(req);
        break;
    case 3: /* lazy head, chunked, corked */
        lx_http_resp_start_lazy(req, 200, &hdr, 1, -1);
        lx_http_resp_cork(req);
        lx_http_resp_write(req, text, len);
        lx_http_resp_write(req, text, 3);
        if (choice & 0x10000)
            lx_http_resp_flush(req);
        lx_http_resp_write(req, "", 0);
        end(req);
        break;
    case 4: /* an error in OpenAI's shape */
        closing_sent |= !req->keep_alive;
        lx_http_resp_error(req, 404, "invalid_request_error", (choice & 0x10000) ? NULL : "nf",
                           NULL, 0, "no route for %.*s", (int)req->path_len, req->path);
        break;
    case 5: /* echo the body */
        closing_sent |= !req->keep_alive;
        lx_http_resp_send(req, 200, "application/octet-stream", NULL, 0, req->body.data,
                          req->body.len);
        break;
    case 6: /* lazy head, nothing but the end */
        lx_http_resp_start_lazy(req, 200, NULL, 0, (choice & 0x10000) ? 0 : -1);
        end(req);
        break;
    case 8: /* a big chunked body, ended once the output has drained */
        lx_http_resp_start(req, 200, &hdr, 1, -1);
        for (int i = 0; i < 6; i++)
            lx_http_resp_write(req, big, sizeof(big));
        if (lx_http_resp_pending(req) < DRAIN_LOW_WATER) {
            end(req);
            break;
        }
        hold(req, choice, 0)->draining = true;
        req->on_drain = on_drain;
        break;
    default: /* give up on the connection, now and then */
        if ((choice >> 16) % 4 == 0) {
            closing_sent = true;
            lx_http_resp_abort(req);
        } else {
            lx_http_resp_start(req, 503, NULL, 0, -1);
            lx_http_resp_flush(req);
            end(req);
        }
        break;
    }
}

static void handler(struct lx_http_req *req, void *ctx)
{
    uint32_t choice = next_rand(&rng);

    if (ctx != &servers[0] && ctx != &servers[1])
        fail("handler ctx");
    check_req(req, ctx);
    /*
     * Found by this target: a response that closes the connection (client
     * sent "Connection: close", HTTP/1.0, or the handler said so) while
     * its bytes still wait in the write queue leaves the connection IDLE,
     * not lingering; further pipelined requests are parsed and handed to
     * the handler, and when the queue drains conn_finish() sets the state
     * to IDLE under the request the handler holds: its next lx_http_resp_*
     * call fails LX_ASSERT(c->state == C_BUSY) (server.c resp_start).
     */
    if (closing_sent) {
        fail("handler called after a response that closes the connection");
        lx_http_resp_abort(req);
        return;
    }
    if (choice & 0x80000)
        hold(req, choice, 1 + (int)((choice >> 20) % 3));
    else
        respond(req, choice);
}

/* Gives the responses whose turn has come (outside any server callback). */
static void run_pending(void)
{
    struct pending *p;

    for (p = pending; p; p = p->next)
        if (!p->draining)
            p->turns--;
    for (;;) {
        struct lx_http_req *req;
        uint32_t choice;

        /* Search again each time: a response may close a connection. */
        for (p = pending; p && (p->draining || p->turns > 0); p = p->next)
            ;
        if (!p)
            break;
        req = p->req;
        choice = p->choice;
        unlink_pending(p);
        req->data = NULL;
        req->on_abort = NULL;
        respond(req, choice);
    }
}

/* The client side: whatever the server wrote is read and discarded, but its
 * first bytes must be a status line. */
struct client {
    int fd;    /* -1 once closed */
    bool slow; /* reads at most SLOW_READ bytes per turn */
    size_t got;
    char head[9];
};

static void client_read(struct client *cl)
{
    static char buf[64 * 1024];
    ssize_t n;

    while (cl->fd >= 0 && (n = read(cl->fd, buf, cl->slow ? SLOW_READ : sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n && cl->got < sizeof(cl->head); i++)
            cl->head[cl->got++] = buf[i];
        if (cl->got == sizeof(cl->head) && memcmp(cl->head, "HTTP/1.1 ", 9) != 0)
            fail("output does not start with a status line");
        if (cl->slow)
            break;
    }
}

/* One loop turn, then the client reads and late responses are given. */
static void turn(struct client *cl)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    client_read(cl);
    run_pending();
}

/* Bytes the client wrote that the server has not read yet. */
static int unread(int fd)
{
    int n = 0;

    if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) < 0)
        return 0;
    return n;
}

static void on_reject(void *ctx, int status)
{
    if (ctx != &servers[0] && ctx != &servers[1])
        fail("reject ctx");
    if (status != 400 && status != 405 && status != 408 && status != 413 && status != 431 &&
        status != 503 && status != 505)
        fail("reject with an unexpected status");
    closing_sent = true; /* the server answers and closes */
}

static void init(void)
{
    static const struct lx_http_limits lim[2] = {
        {.head_max = 4096, .body_max = 65536, .request_timeout_ms = 10000,
         .idle_timeout_ms = 10000, .send_timeout_ms = 10000},
        {.head_max = 512, .body_max = 1024, .request_timeout_ms = 10000,
         .idle_timeout_ms = 10000, .send_timeout_ms = 10000},
    };
    signal(SIGPIPE, SIG_IGN);
    lx_log_set_level(LX_LOG_ERROR);
    memset(big, 'b', sizeof(big));
    uv_loop_init(&loop);
    for (size_t i = 0; i < ARRAY_SIZE(servers); i++) {
        servers[i].limits = lim[i];
        if (lx_http_server_new(&loop, "127.0.0.1", 0, &lim[i], handler, &servers[i],
                               &servers[i].srv) < 0)
            fail("lx_http_server_new");
        lx_http_server_set_reject_cb(servers[i].srv, on_reject);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    struct server *s;
    struct client cl = {-1, false, 0, {0}};
    uint8_t flags, cut;
    uint32_t cut_rng;
    char *in;
    size_t len, off = 0;
    int sv[2], turns = 0, pieces = 0;

    if (!ready) {
        init();
        ready = true;
    }
    if (size < 2)
        return 0;
    flags = data[0];
    cut = data[1];
    len = size - 2;
    in = fuzz_copy(data + 2, len);
    s = &servers[(flags >> 3) & 1];
    rng = flags * 0x01000193u + 1;
    closing_sent = false;
    cut_rng = cut;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        fail("socketpair");
    cl.fd = sv[0];
    cl.slow = flags & 0x20;
    if (cl.slow) {
        int sndbuf = 4096;

        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    }
    if (lx_http_server_adopt(s->srv, sv[1]) < 0)
        fail("lx_http_server_adopt");

    while (off < len && lx_http_server_conns(s->srv) > 0) {
        size_t n = fuzz_piece_len(cut, &cut_rng, &pieces, len - off);
        ssize_t w;

        w = send(cl.fd, in + off, n, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN)
            break; /* the server closed: the rest has nowhere to go */
        if (w > 0)
            off += (size_t)w;
        /* Let the server read this piece before the next is written. */
        do {
            turn(&cl);
        } while (unread(cl.fd) > 0 && lx_http_server_conns(s->srv) > 0 && ++turns < MAX_TURNS);
        if (turns >= MAX_TURNS)
            break;
    }
    /* Unless told to close at once, let the late responses go out first. */
    if (!(flags & 0x10)) {
        while ((n_pending > 0 || unread(cl.fd) > 0) && lx_http_server_conns(s->srv) > 0 &&
               ++turns < MAX_TURNS)
            turn(&cl);
    }
    if ((flags & 0x10) && (next_rand(&rng) & 1)) {
        /* Gone altogether: a late response meets a write error. */
        close(cl.fd);
        cl.fd = -1;
        run_pending();
    } else {
        shutdown(cl.fd, SHUT_WR);
    }
    for (turns = 0; lx_http_server_conns(s->srv) > 0 && turns < MAX_TURNS; turns++)
        turn(&cl);
    /* The close callbacks of the last close. */
    turn(&cl);

    if (lx_http_server_conns(s->srv) != 0)
        fail("connection still open after the client closed");
    if (lx_http_server_busy(s->srv) != 0)
        fail("a request is still busy after its connection closed");
    if (n_pending != 0)
        fail("the handler still holds a request of a closed connection");
    if (cl.fd >= 0)
        close(cl.fd);
    free(in);
    return 0;
}
