/*
 * upstream.h - HTTP/1.1 exchanges with nodes over per-worker keep-alive pools.
 *
 * Each worker owns one lx_upstream_pool: idle connections per node, reused
 * before any new connect. An exchange (struct lx_upstream_req) is embedded in
 * its caller's request; it sends the caller's bytes, parses the response and
 * reports it through callbacks. A pooled connection that turns out to be
 * closed by the node before any response byte (a keep-alive race) is replaced
 * by a fresh connection once, transparently.
 *
 * Callbacks never run inside the call that started the operation. After
 * on_done or on_error, or after lx_upstream_cancel(), no callback runs again
 * and the exchange may be reused or freed. Threading: one loop only.
 */
#ifndef LX_UPSTREAM_H
#define LX_UPSTREAM_H

#include <uv.h>

#include "server.h"

enum lx_upstream_err {
    LX_UP_CONNECT = 1,  /* connect failed, or connect timed out */
    LX_UP_TIMEOUT,      /* no response byte within first_byte_ms */
    LX_UP_IDLE,         /* gap between body chunks over idle_ms */
    LX_UP_PROTOCOL,     /* malformed response */
    LX_UP_CLOSED,       /* the node closed or reset the connection mid-response */
    LX_UP_LOCAL,        /* llmux itself is out of resources (descriptors, ports,
                           memory): not the node's fault */
};

/* What went wrong, in a few words for logs and a node's last error:
 * "connect error", "timeout before the response head", ... */
const char *lx_upstream_strerror(enum lx_upstream_err kind);
/* The same, naming the cause when the libuv error <uv_err> (an exchange's
 * uv_err) tells it: "connection refused", "connect timed out", "connection
 * reset", "host unreachable", "DNS lookup failed (unknown host)"... A static
 * string. */
const char *lx_upstream_cause(enum lx_upstream_err kind, int uv_err);

struct lx_upstream_cbs {
    /* The response head; <hdrs> valid during the call only. <content_length>
     * is -1 when the body is chunked or ends with the connection. */
    void (*on_head)(void *ctx, int status, const struct lx_http_header *hdrs, size_t n_hdrs,
                    int64_t content_length);
    /* Decoded body bytes, valid during the call only. */
    void (*on_body)(void *ctx, const char *data, size_t len);
    void (*on_done)(void *ctx);
    /* <got_head>: on_head already ran for this exchange. */
    void (*on_error)(void *ctx, enum lx_upstream_err kind, bool got_head);
    /* Optional: everything one read brought has been delivered (after
     * on_head/on_body, when the response goes on); a place to flush. */
    void (*on_read_end)(void *ctx);
};

struct lx_upstream_timeouts {
    uint64_t connect_ms;     /* 0 = no limit */
    uint64_t first_byte_ms;  /* from send to the end of the response head (a node
                                that sends part of a head and stalls is timed out
                                too); 0 = no limit */
    uint64_t idle_ms;        /* after the head, longest gap between reads; 0 = no limit */
};

/*
 * Where an exchange goes. The strings are borrowed for the exchange's
 * duration; connections are pooled per id.
 */
struct lx_upstream_target {
    uint32_t id;             /* small and process-unique (a node id): indexes the pool */
    const char *name;        /* for log lines */
    const char *host;        /* numeric address or a name to resolve */
    int port;
};

struct up_conn;

struct lx_upstream_req {
    /* Set by the caller before lx_upstream_send(); borrowed until the end. */
    const struct lx_upstream_cbs *cbs;
    void *ctx;
    uv_buf_t bufs[4];        /* request bytes: head, body... */
    unsigned int nbufs;
    struct lx_upstream_timeouts timeouts;

    /* Set before on_error runs: the libuv error behind it (UV_ECONNREFUSED,
     * UV_ECONNRESET, UV_EAI_NONAME...; UV_ETIMEDOUT for a connect that timed
     * out), 0 when there is none (a response timeout, a malformed response). */
    int uv_err;

    /* Private. */
    struct up_conn *conn;
    struct lx_upstream_target target;
    bool fresh_retry_done;
    bool paused;
};

struct lx_upstream_pool;

struct lx_upstream_pool *lx_upstream_pool_new(uv_loop_t *loop, uint64_t idle_keepalive_ms);
/* Closes idle connections and frees the pool once no exchange uses it; the
 * caller must have cancelled or finished every exchange first. */
void lx_upstream_pool_close(struct lx_upstream_pool *pool);
/* Starts an exchange with <t> (copied; its strings borrowed for the
 * exchange's duration). Returns 0; the outcome arrives through the callbacks. */
int lx_upstream_send(struct lx_upstream_pool *pool, const struct lx_upstream_target *t,
                     struct lx_upstream_req *ur);
/* Ends an exchange early: its connection is closed (a node such as vLLM then
 * stops generating). No callback runs afterwards. */
void lx_upstream_cancel(struct lx_upstream_req *ur);
/* Stops / resumes reading the response (client backpressure). */
void lx_upstream_pause(struct lx_upstream_req *ur);
void lx_upstream_resume(struct lx_upstream_req *ur);

#endif /* LX_UPSTREAM_H */
