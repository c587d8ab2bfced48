/*
 * server.h - the HTTP/1.1 server side, shared by llmux and llmux-sim.
 *
 * One lx_http_server per event loop (per worker thread). It accepts on its own
 * SO_REUSEPORT listener, parses requests with http-parser, and calls the
 * handler once a request's head and whole body have arrived (chunked bodies are
 * decoded, `Expect: 100-continue` is answered). Requests on a keep-alive
 * connection are handled one at a time: pipelined requests wait in the
 * connection's input buffer and are answered in order.
 *
 * Limits answered by the server itself: head (or trailers) over head_max ->
 * 431, body over body_max -> 413 (a declared length or chunk size over it is
 * refused before the data arrives), head and body not received within
 * request_timeout_ms of the request's first byte -> 408, malformed request or
 * a request target with control characters, a missing or repeated Host ->
 * 400, HTTP version other than 1.x -> 505, CONNECT -> 405; each is answered
 * in OpenAI's error JSON and the connection closed.
 *
 * What one client can cost is bounded: pipelined input is held up to a high
 * watermark, then reading stops; a new pipelined request is not parsed while
 * the answers already queued for the client exceed an output high watermark
 * (a client that sends and never reads gets no more work done); queued output
 * that makes no progress for send_timeout_ms closes the connection (aborting
 * the request it belongs to); at max_conns open connections, or when
 * descriptors run out, accepting pauses (new connections wait in the
 * kernel's backlog) and a warning is logged at most every 10 s.
 *
 * Lifetimes: a struct lx_http_req belongs to its connection. The handler
 * borrows it from the handler call until it calls lx_http_resp_end(), or until
 * the server calls req->on_abort (client gone), whichever is first; after
 * either the handler must not touch it again. Threading: everything here runs
 * on the server's loop thread only.
 */
#ifndef LX_HTTP_SERVER_H
#define LX_HTTP_SERVER_H

#include <stdatomic.h>
#include <sys/socket.h>
#include <uv.h>

#include "../core/buf.h"
#include "headers.h"

struct lx_http_limits {
    size_t head_max;             /* bytes of request line + headers (+ trailers); over -> 431 */
    size_t body_max;             /* bytes of (decoded) body; over -> 413 */
    uint64_t request_timeout_ms; /* head and body must arrive within this of the
                                  * request's first byte -> else 408; 0 = off */
    uint64_t idle_timeout_ms;    /* keep-alive idle time before close; 0 = off */
    uint64_t send_timeout_ms;    /* queued output making no progress this long
                                  * -> close; 0 = off */
    size_t max_conns;            /* open connections at most, 0 = no limit */
    _Atomic size_t *conn_count;  /* shared count for max_conns (several servers,
                                  * one limit); NULL = this server's own */
};

struct lx_http_conn; /* opaque */
struct lx_http_req;

typedef void (*lx_http_handler_cb)(struct lx_http_req *req, void *ctx);
typedef void (*lx_http_req_cb)(struct lx_http_req *req);
/* Told of a request's head before its body is read: returns true to read
 * the body, false when the handler will refuse the request whatever its
 * body says (no token, unknown path): the handler is then called at once
 * with req->body_skipped set, no `100 Continue` is sent, and the connection
 * closes after the answer (the unread body is discarded, never buffered). */
typedef bool (*lx_http_head_cb)(const struct lx_http_req *req, void *ctx);

struct lx_http_req {
    /* Parsed request: valid until resp_end or on_abort. Strings are not
     * NUL-terminated unless said. */
    int method;                       /* enum http_method */
    const char *path;                 /* request target, NUL-terminated */
    size_t path_len;
    size_t path_only_len;             /* the path without its "?query" */
    struct lx_http_header *headers;   /* n_headers entries */
    size_t n_headers;
    struct lx_buf body;               /* decoded body */
    unsigned short http_major, http_minor;
    bool keep_alive;                  /* client wants keep-alive; handler may clear */
    bool body_skipped;                /* the head callback refused the body: empty */
    struct sockaddr_storage peer;     /* client address */
    uv_loop_t *loop;

    /* Set by the handler. */
    void *data;                       /* handler state */
    lx_http_req_cb on_abort;          /* client gone before resp_end; req dies after */
    lx_http_req_cb on_drain;          /* output queue fell below the low watermark */

    struct lx_http_conn *conn;        /* private */
};

struct lx_http_server;

/*
 * Whether <host>:<port> is free for a new listener: binds a socket there
 * without SO_REUSEPORT and closes it again. Returns 0 when free,
 * -EADDRINUSE when another socket listens there (also one that set
 * SO_REUSEPORT, which lx_http_server_new() would otherwise share the port
 * with), or another -errno. <port> must not be 0.
 */
int lx_http_listen_probe(const char *host, int port);

/*
 * Creates a server on <loop> listening on <host>:<port> with SO_REUSEPORT (so
 * each worker can bind the same port). <port> 0 binds an ephemeral port;
 * lx_http_server_port() tells which. Returns 0 or -errno; on success *out is
 * owned by the caller and released with lx_http_server_close().
 */
int lx_http_server_new(uv_loop_t *loop, const char *host, int port,
                       const struct lx_http_limits *limits, lx_http_handler_cb handler,
                       void *ctx, struct lx_http_server **out);
int lx_http_server_port(const struct lx_http_server *srv);
/* Sets a function told of every request the server answers itself (400,
 * 408, 413, 431, 503) without calling the handler; <ctx> is the handler's. */
void lx_http_server_set_reject_cb(struct lx_http_server *srv, void (*cb)(void *ctx, int status));
/*
 * Serves <fd>, an already connected stream socket (TCP, or e.g. one end of
 * socketpair(AF_UNIX, SOCK_STREAM)), as a client connection, exactly as an
 * accepted one (the same code path). Takes <fd> in every case: 0, or a
 * negative error (UV_ECANCELED once the server is closing) after closing it.
 * Used by the fuzz target to skip the TCP handshake.
 */
int lx_http_server_adopt(struct lx_http_server *srv, int fd);
/* Sets the head callback (see lx_http_head_cb); <ctx> is the handler's. */
void lx_http_server_set_head_cb(struct lx_http_server *srv, lx_http_head_cb cb);
/* Number of open client connections and of requests being handled. */
size_t lx_http_server_conns(const struct lx_http_server *srv);
size_t lx_http_server_busy(const struct lx_http_server *srv);
/* Connections accepted since the server started. */
size_t lx_http_server_accepted(const struct lx_http_server *srv);
/*
 * Stops accepting and closes idle connections; busy ones close after their
 * current response. <cb> runs on the loop once every connection is closed;
 * then the server is freed. <force> closes busy connections too (aborting
 * their requests); calling again with <force> after a graceful close
 * closes what is left (the first call's <cb> still runs).
 */
void lx_http_server_close(struct lx_http_server *srv, bool force,
                          void (*cb)(void *arg), void *arg);

/* Case-insensitive header lookup; returns NULL when absent. */
const struct lx_http_header *lx_http_req_header(const struct lx_http_req *req, const char *name);
/* True when <req> carries "Authorization: Bearer <token>" (compared in
 * constant time). */
bool lx_http_req_bearer_is(const struct lx_http_req *req, const char *token);
/* Client address as text, e.g. "127.0.0.1"; writes into <out>. */
void lx_http_req_peer_str(const struct lx_http_req *req, char *out, size_t len);

/*
 * Starts the response. <content_length> >= 0 sends Content-Length; -1 streams
 * the body chunked (HTTP/1.1) or close-delimited (HTTP/1.0). A 1xx, 204 or
 * 304 status has no body and no framing header whatever <content_length>
 * says, and a HEAD request's body is never sent (RFC 9112 6.3): body writes
 * are then dropped. The server adds Content-Length / Transfer-Encoding and
 * Connection; <hdrs> must not.
 * Returns 0, or a negative error when the connection is gone.
 */
int lx_http_resp_start(struct lx_http_req *req, int status, const struct lx_http_header *hdrs,
                       size_t n_hdrs, int64_t content_length);
/*
 * Like lx_http_resp_start, but the head is held back and leaves with the
 * first body bytes (one write instead of two), at lx_http_resp_end, or at
 * lx_http_resp_flush, whichever comes first.
 */
int lx_http_resp_start_lazy(struct lx_http_req *req, int status,
                            const struct lx_http_header *hdrs, size_t n_hdrs,
                            int64_t content_length);
/*
 * Takes back a started response of which nothing has reached the socket yet
 * (a lazy head and corked body bytes still held): the request may then be
 * answered afresh. Returns false, changing nothing, when bytes were written.
 */
bool lx_http_resp_retract(struct lx_http_req *req);
/* Sends a held-back head now, if there is one. */
int lx_http_resp_flush(struct lx_http_req *req);
/*
 * Gathers the following body writes (framed, copied) until
 * lx_http_resp_flush or lx_http_resp_end, which send them, the held-back head
 * and the chunked terminator in one write. The proxy corks for the span of
 * one node read, so a read that brings many chunks costs one writev, not one
 * per chunk.
 */
void lx_http_resp_cork(struct lx_http_req *req);
/* Sends body bytes (framed as one chunk when chunked). Copies what the
 * socket does not take at once. */
int lx_http_resp_write(struct lx_http_req *req, const void *data, size_t len);
/* Bytes queued for the client and not yet written (for backpressure). */
size_t lx_http_resp_pending(const struct lx_http_req *req);
/* Ends the response (the terminating chunk when chunked). Gives up <req>. */
void lx_http_resp_end(struct lx_http_req *req);
/* Ends the response abnormally: closes the connection without a clean end,
 * so the client sees a truncated body. Gives up <req>. */
void lx_http_resp_abort(struct lx_http_req *req);
/* A whole response in one call, then end. */
void lx_http_resp_send(struct lx_http_req *req, int status, const char *content_type,
                       const struct lx_http_header *hdrs, size_t n_hdrs, const void *body,
                       size_t len);
/*
 * An error in OpenAI's shape {"error":{"message","type","code"}}; <code> may be
 * NULL (sent as null). Ends the response.
 */
void lx_http_resp_error(struct lx_http_req *req, int status, const char *type, const char *code,
                        const struct lx_http_header *hdrs, size_t n_hdrs, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* Reason phrase for a status code ("OK", "Not Found", ...). */
const char *lx_http_reason(int status);
/* Appends <s> JSON-escaped (without quotes) to <b>. */
int lx_json_escape(struct lx_buf *b, const char *s, size_t len);

#endif /* LX_HTTP_SERVER_H */
