/*
 * fuzz_upstream_response.c - libFuzzer target for the node client
 * (src/http/upstream.c) as a node drives it: the real pool, connections and
 * response parser, over loopback TCP.
 *
 * Input: byte 0 steers the harness, byte 1 where the node's bytes are cut
 * into writes, the rest is what the node answers: up to MAX_EXCHANGES
 * answers separated by "\n##\n", one per exchange, all on one pool (so a
 * kept-alive connection may serve the next exchange).
 *   byte 0  bits 0-1: 1 = cancel in on_head, 2 = cancel in the Nth on_body,
 *                     3 = cancel from outside before the Nth write
 *           bit 2:    pause in callbacks (resumed after the next loop turn)
 *           bit 3:    a 256 KiB request body, which the node does not read
 *                     before it answers (the write is still in flight: the
 *                     client's send buffer and the node's receive window
 *                     are made small)
 *           bit 4:    the node keeps a connection open after a complete
 *                     answer, so the pool may reuse it
 *           bits 5-7: N above; also seeds the harness's other choices
 *           (printable: '@'-'C' plain and cancels, 'D'-'G' with pauses,
 *           'H'-'K' big request, 'P'-'S' keep-alive reuse)
 *   byte 1  low 3 bits: the largest write, 0 = all at once, 1..7 = 1, 2, 7,
 *           16, 64, 300, 1500 bytes; the whole byte seeds the write sizes;
 *           at most 64 writes per answer, the 64th takes the rest
 *
 * The node is a plain listening socket on 127.0.0.1 (created once), named
 * by a struct lx_upstream_target. Per input: a new pool; per exchange, lx_upstream_send() of a small POST, then the node side takes the
 * connection (accepted, or the kept one if the pool reused it), writes its
 * answer piece by piece (each piece read by the client before the next is
 * written), and closes if the exchange has not ended once the client has
 * read everything. Extra bytes after a complete answer are written too.
 * At the end the pool is closed and the loop run until no handle is left.
 *
 * Invariants: no sanitizer report; exactly one of on_done / on_error per
 * exchange (or none after the harness's cancel), nothing after it, no
 * callback inside a call the harness made; on_head at most once, with a
 * final status (200-999), body bytes only after on_head, never more than the
 * Content-Length, exactly the Content-Length at on_done; on_error's got_head
 * says whether on_head ran; no pooled connection still writing; a pooled
 * connection whose node closed is dropped; no handle is left after
 * lx_upstream_pool_close.
 *
 * The bugs this target found are fixed; their inputs are in the corpus, and
 * each check that caught one stays an invariant. No timer fires during a run: the
 * timeouts are seconds, an input takes well under a millisecond.
 *
 *   make fuzz && build/fuzz/fuzz_upstream_response -max_total_time=60 corpus-copy/
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define FUZZ_NAME "fuzz_upstream_response"
#include "../loop_probe.h"
#include "core/log.h"
#include "fuzz_util.h"
#include "http/upstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_EXCHANGES 4
#define MAX_TURNS 2000        /* loop turns an input may take before it is a hang */
#define BIG_BODY (256 * 1024) /* a request body the socket does not take at once */
#define SEP "\n##\n"

enum outcome { OUT_NONE, OUT_DONE, OUT_ERROR, OUT_CANCEL };

struct exchange {
    struct lx_upstream_req ur;
    enum outcome outcome;
    bool got_head;
    bool paused;         /* the harness paused it; resumed after a turn */
    bool pooled_writing; /* at on_done, a pooled connection still had a write queued */
    int status;          /* on_head's status */
    int64_t clen;        /* on_head's content_length */
    uint64_t body_len;   /* bytes of on_body so far */
    unsigned body_calls;
    uint8_t flags;
};

/* The node's side of the current connection. */
struct node_side {
    int fd;     /* -1 = none */
    bool ready; /* the request reached fd (a kept fd is only ready then) */
    size_t off; /* bytes of the answer written */
    int pieces;
    bool write_failed;
};

static uv_loop_t loop;
static int listen_fd = -1;
static struct lx_upstream_target node;
static int in_call;              /* > 0 inside a call the harness made */
static struct exchange *current; /* the exchange being driven */
static uint32_t rng;             /* the harness's choices, seeded per input */
static volatile unsigned sink;   /* keeps reads of response bytes */
static char big_body[BIG_BODY];

/* ---- calls into upstream.c (never re-entered by a callback) ---------- */

static void up_cancel(struct exchange *ex)
{
    in_call++;
    lx_upstream_cancel(&ex->ur);
    in_call--;
    ex->outcome = OUT_CANCEL;
    ex->paused = false;
}

static void up_pause(struct exchange *ex)
{
    in_call++;
    lx_upstream_pause(&ex->ur);
    in_call--;
    ex->paused = true;
}

static void up_resume(struct exchange *ex)
{
    ex->paused = false;
    in_call++;
    lx_upstream_resume(&ex->ur);
    in_call--;
}

/* ---- callbacks ------------------------------------------------------- */

static size_t write_queued(void);

static struct exchange *cb_enter(void *ctx, const char *who)
{
    struct exchange *ex = ctx;

    if (in_call) {
        fprintf(stderr, FUZZ_NAME ": %s\n", who);
        fail("callback inside a call the harness made");
    }
    if (ex->outcome != OUT_NONE) {
        fprintf(stderr, FUZZ_NAME ": %s\n", who);
        fail("callback after the exchange ended");
    }
    return ex;
}

/* Cancels or pauses from inside a callback, as the input says. */
static void cb_steer(struct exchange *ex, bool head)
{
    unsigned n = ex->flags >> 5;

    if (((ex->flags & 3) == 1 && head) || ((ex->flags & 3) == 2 && !head && ex->body_calls > n)) {
        up_cancel(ex);
        return;
    }
    if ((ex->flags & 4) && (next_rand(&rng) & 1))
        up_pause(ex);
}

static void on_head(void *ctx, int status, const struct lx_http_header *hdrs, size_t n_hdrs,
                    int64_t content_length)
{
    struct exchange *ex = cb_enter(ctx, "on_head");
    unsigned acc = 0;

    if (ex->got_head)
        fail("on_head twice");
    if ((status >= 100 && status < 200) || status > 999)
        fail("on_head with an interim or impossible status");
    /*
     * Found by this target: http-parser takes a status code of one or two
     * digits ("HTTP/1.1 2 OK"), and upstream.c hands it on as a final
     * response; RFC 9110 15 wants three digits (100-599 in use).
     */
    if (status < 100)
        fail("on_head with a status code below 100");
    if (content_length < -1)
        fail("negative Content-Length");
    for (size_t i = 0; i < n_hdrs; i++) {
        for (size_t k = 0; k < hdrs[i].name_len; k++)
            acc += (unsigned char)hdrs[i].name[k];
        for (size_t k = 0; k < hdrs[i].value_len; k++)
            acc += (unsigned char)hdrs[i].value[k];
    }
    sink = acc;
    ex->got_head = true;
    ex->status = status;
    ex->clen = content_length;
    /* Body bytes of an interim response (known bug) do not count. */
    ex->body_len = 0;
    cb_steer(ex, true);
}

static void on_body(void *ctx, const char *data, size_t len)
{
    struct exchange *ex = cb_enter(ctx, "on_body");
    unsigned acc = 0;

    /*
     * Known bug: the body of a 1xx response (e.g. "HTTP/1.1 100
     * Continue\r\nContent-Length: 1\r\n\r\nX") reaches on_body before the
     * final response's on_head.
     */
    if (!ex->got_head)
        fail("on_body before on_head (body of a 1xx response)");
    /*
     * Found by this target: a 204 or 304 response ends at the blank line
     * after its head whatever its headers say (RFC 9112 6.3), but upstream.c
     * reads a body when it has Content-Length or chunked framing (and waits
     * for it: a 304 with "Content-Length: 100" hangs until the node closes).
     */
    if (ex->got_head && (ex->status == 204 || ex->status == 304))
        fail("a 204 or 304 response read as having a body");
    for (size_t i = 0; i < len; i++)
        acc += (unsigned char)data[i];
    sink = acc;
    ex->body_len += len;
    ex->body_calls++;
    if (ex->got_head && ex->clen >= 0 && ex->body_len > (uint64_t)ex->clen)
        fail("more body than the Content-Length");
    cb_steer(ex, false);
}

static void on_done(void *ctx)
{
    struct exchange *ex = cb_enter(ctx, "on_done");

    if (!ex->got_head)
        fail("on_done without on_head");
    if (ex->clen >= 0 && ex->body_len != (uint64_t)ex->clen)
        fail("on_done with a body shorter than the Content-Length");
    /*
     * Known bug: when the node answers before it has read the whole request,
     * the connection goes back to the pool with the request's write still
     * queued; the next exchange on it calls uv_write() with the same
     * uv_write_t, which corrupts libuv's write queue (the loop then spins).
     * Every open connection is in the pool here: none may be writing.
     */
    if (write_queued() > 0) {
        fail("connection back in the pool with a write in flight");
        ex->pooled_writing = true;
    }
    ex->outcome = OUT_DONE;
    ex->paused = false;
}

static void on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct exchange *ex = cb_enter(ctx, "on_error");

    if (got_head != ex->got_head)
        fail("on_error's got_head differs from what on_head said");
    if (kind < LX_UP_CONNECT || kind > LX_UP_CLOSED)
        fail("on_error with an unknown kind");
    /* The head of a 204 or 304 is the whole response (see on_body). */
    if (got_head && (ex->status == 204 || ex->status == 304))
        fail("a 204 or 304 response read as having a body");
    ex->outcome = OUT_ERROR;
    ex->paused = false;
}

static void on_read_end(void *ctx)
{
    struct exchange *ex = cb_enter(ctx, "on_read_end");

    if (!ex->got_head)
        fail("on_read_end before on_head");
}

static const struct lx_upstream_cbs cbs = {on_head, on_body, on_done, on_error, on_read_end};

/* ---- the loop, the client's sockets and the node's ------------------- */

static struct loop_probe walk_loop(void)
{
    return loop_probe(&loop);
}

static size_t write_queued(void)
{
    return walk_loop().queued;
}

/* One loop turn; then a paused exchange is resumed. */
static void turn(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    if (current && current->paused && current->outcome == OUT_NONE)
        up_resume(current);
}

/*
 * The node closes: with a FIN, so the client reads EOF; but when the client
 * has closed first, with a RST, which also ends the client's FIN_WAIT2, so
 * the harness leaves no client socket in TIME_WAIT: thousands per second
 * would use up the ephemeral ports.
 */
static void node_close(struct node_side *ns)
{
    static const struct linger rst = {1, 0};
    char c;

    if (ns->fd >= 0) {
        if (recv(ns->fd, &c, 1, MSG_PEEK) == 0)
            setsockopt(ns->fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
        close(ns->fd);
    }
    ns->fd = -1;
    ns->ready = false;
}

/* Reads and discards what the client sent. */
static void node_read(struct node_side *ns)
{
    static char buf[64 * 1024];

    while (ns->fd >= 0 && recv(ns->fd, buf, sizeof(buf), 0) > 0)
        ;
}

/*
 * Finds this exchange's connection: a new one from the listener (it replaces
 * a kept one: the pool did not reuse it, or this is the pool's one retry), or
 * the kept one once the request arrives on it.
 */
static void node_poll(struct node_side *ns)
{
    int fd, one = 1;
    char c;

    while ((fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        node_close(ns);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        ns->fd = fd;
        ns->ready = true;
        ns->off = 0;
        ns->pieces = 0;
        ns->write_failed = false;
    }
    if (ns->fd >= 0 && !ns->ready) {
        ssize_t n = recv(ns->fd, &c, 1, MSG_PEEK);

        if (n > 0)
            ns->ready = true;
        else if (n == 0 || errno != EAGAIN)
            node_close(ns);
    }
}

/* Drops connections nobody is waiting for (cancelled before they were seen). */
static void drain_listener(void)
{
    struct node_side stray = {-1, false, 0, 0, false};

    while ((stray.fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
        node_close(&stray);
}

static void init(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int rcvbuf = 16 * 1024;
    signal(SIGPIPE, SIG_IGN);
    lx_log_set_level(LX_LOG_ERROR);
    uv_loop_init(&loop);
    memset(big_body, 'x', sizeof(big_body));

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    /* A small receive window (accepted sockets inherit it), so that a big
     * request body stays in flight while the node does not read. */
    setsockopt(listen_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(listen_fd, 64) < 0 || getsockname(listen_fd, (struct sockaddr *)&sa, &len) < 0)
        fail("node listener");

    node = (struct lx_upstream_target){1, "node", "127.0.0.1", ntohs(sa.sin_port)};
}

/* ---- one exchange ------------------------------------------------------ */

/* Writes the next piece of <ans>; then lets the client read it. */
static void node_write_piece(struct node_side *ns, const char *ans, size_t len, uint8_t cut,
                             uint32_t *cut_rng, int *turns)
{
    size_t n = fuzz_piece_len(cut, cut_rng, &ns->pieces, len - ns->off);
    ssize_t w;

    w = send(ns->fd, ans + ns->off, n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) {
        /* The client closed (cancel, error, or it is done with us). */
        ns->write_failed = true;
        return;
    }
    if (w > 0)
        ns->off += (size_t)w;
    do {
        turn();
    } while (walk_loop().unread > 0 && ++*turns < MAX_TURNS);
}

/* Runs one exchange against the answer <ans>; the node's connection stays in
 * <ns> when it is kept for the next exchange. */
static void run_exchange(struct exchange *ex, struct lx_upstream_pool *pool, struct node_side *ns,
                         const char *ans, size_t len, uint8_t flags, uint8_t cut)
{
    static const char head[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\n"
                               "Content-Type: application/json\r\nContent-Length: ";
    char clen[32];
    bool big = flags & 8;
    const char *body = big ? big_body : "{\"model\":\"m\",\"stream\":true}";
    size_t body_len = big ? sizeof(big_body) : strlen(body);
    uint32_t cut_rng = cut;
    int turns = 0, idle = 0, writes = 0, cancel_at = (flags & 3) == 3 ? flags >> 5 : -1;

    memset(ex, 0, sizeof(*ex));
    ex->flags = flags;
    ex->clen = -1;
    ex->ur.cbs = &cbs;
    ex->ur.ctx = ex;
    ex->ur.bufs[0] = uv_buf_init((char *)head, sizeof(head) - 1);
    ex->ur.bufs[1] =
        uv_buf_init(clen, (unsigned int)snprintf(clen, sizeof(clen), "%zu\r\n\r\n", body_len));
    ex->ur.bufs[2] = uv_buf_init((char *)body, (unsigned int)body_len);
    ex->ur.nbufs = 3;
    ex->ur.timeouts.connect_ms = 10000;
    ex->ur.timeouts.first_byte_ms = 10000;
    ex->ur.timeouts.idle_ms = (next_rand(&rng) & 1) ? 10000 : 0;
    current = ex;
    ns->ready = false;
    ns->off = 0;
    ns->pieces = 0;
    ns->write_failed = false;

    in_call++;
    lx_upstream_send(pool, &node, &ex->ur);
    in_call--;
    if (big)
        loop_probe_set_sndbuf(&loop, 4096); /* the request does not fit at once */
    /* Paused before the connection is even up, now and then. */
    if ((flags & 4) && (next_rand(&rng) & 1))
        up_pause(ex);
    if (cancel_at == 0)
        up_cancel(ex);

    for (;;) {
        node_poll(ns);
        if (!big)
            node_read(ns);
        if (ns->ready && ns->off < len && !ns->write_failed) {
            if (cancel_at > 0 && ++writes == cancel_at && ex->outcome == OUT_NONE)
                up_cancel(ex);
            node_write_piece(ns, ans, len, cut, &cut_rng, &turns);
            continue;
        }
        if (ex->outcome != OUT_NONE)
            break;
        turn();
        /* Everything written and read, and no end: the node closes. */
        if (ns->fd >= 0 && ns->ready && walk_loop().unread == 0 && ++idle >= 2)
            node_close(ns);
        if (++turns >= MAX_TURNS)
            fail("the exchange never ended");
    }
    if (ex->paused)
        fail("paused after the end");
    node_read(ns);
    /*
     * The node keeps a connection that served a complete answer when asked
     * to (after the last exchange too: lx_upstream_pool_close then closes
     * it); otherwise it closes, and the pool must drop the connection. A
     * pooled connection with a write in flight (known bug, see on_done) is
     * not kept, so that the next exchange does not reuse it.
     */
    if ((flags & 0x10) && ex->outcome == OUT_DONE && !ex->pooled_writing && ns->fd >= 0 &&
        !ns->write_failed)
        return;
    node_close(ns);
    for (turns = 0; walk_loop().open_tcp > 0; turns++) {
        if (turns >= MAX_TURNS)
            fail("a pooled connection was kept after its node closed");
        turn();
    }
    drain_listener();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    static struct exchange ex[MAX_EXCHANGES];
    struct node_side ns = {-1, false, 0, 0, false};
    struct lx_upstream_pool *pool;
    const char *p, *end;
    char *in;
    size_t len;
    int turns;

    if (!ready) {
        init();
        ready = true;
    }
    if (size < 2)
        return 0;
    len = size - 2;
    in = fuzz_copy(data + 2, len);
    rng = data[0] * 0x01000193u + data[1] + 1;
    pool = lx_upstream_pool_new(&loop, 60000);

    p = in;
    end = in + len;
    for (int i = 0; i < MAX_EXCHANGES; i++) {
        const char *sep = memmem(p, (size_t)(end - p), SEP, sizeof(SEP) - 1);
        bool last = !sep || i == MAX_EXCHANGES - 1;
        size_t n = last ? (size_t)(end - p) : (size_t)(sep - p);

        run_exchange(&ex[i], pool, &ns, p, n, data[0], data[1]);
        if (last)
            break;
        p = sep + sizeof(SEP) - 1;
    }
    current = NULL;
    lx_upstream_pool_close(pool);
    for (turns = 0; walk_loop().handles > 0; turns++) {
        if (turns >= MAX_TURNS)
            fail("handles left after lx_upstream_pool_close");
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    node_close(&ns);
    drain_listener();
    free(in);
    return 0;
}
