/*
 * proxy.h - one proxied request: admission, pick a node, send, relay,
 * retry, fail over. The states are described at the top of proxy.c.
 */
#ifndef LX_PROXY_H
#define LX_PROXY_H

#include <uv.h>

#include "../admit/admit.h"
#include "../core/mailbox.h"
#include "../http/body_scan.h"
#include "../http/server.h"
#include "../http/upstream.h"
#include "../nodes/node.h"

struct lx_metrics;

/*
 * What a proxied request uses of the worker thread it runs on. The gateway
 * owns one per worker and fills it before the worker's loop runs; only that
 * thread reads or writes it (other threads reach the worker through
 * `mailbox` only).
 */
struct lx_proxy_env {
    uv_loop_t *loop;
    const struct lx_conf *conf;
    struct lx_admit *admit;          /* process-wide in-flight limit and queue */
    struct lx_upstream_pool *up;     /* this worker's node connections */
    struct lx_metrics *metrics;      /* this worker's shard */
    struct lx_registry *reg;         /* this worker's newest snapshot (the gateway's reference) */
    struct lx_mailbox *mailbox;      /* wakes from other threads land here */
    uint64_t rng;                    /* lx_rand_next() state */
    /* Optional (tests): called on every state change of a request, with the
     * states' names ("NEW", "QUEUED", "PICK", "PARKED", "EXCHANGE",
     * "RELAY", "BACKOFF", "DONE"). */
    void (*trace)(struct lx_proxy_env *env, const char *request_id, const char *from,
                  const char *to);
    void *trace_arg;
};

/*
 * Proxies <req> (borrowed from the server until the response ends) to a node
 * of <pool>. <scan> describes req->body (copied), NULL for a bodiless
 * request. <upstream_path> is the path to request on the node (before the
 * node's base path). Always answers the client, one way or another.
 */
void lx_proxy_start(struct lx_proxy_env *env, struct lx_http_req *req, struct lx_pool *pool,
                    const struct lx_body_scan *scan, const char *upstream_path,
                    const char *request_id);

/* Writes a sanitised client X-Request-Id, or a new one, into <out> (>= 33 bytes). */
void lx_request_id(struct lx_proxy_env *env, const struct lx_http_req *req, char *out,
                   size_t len);

#endif /* LX_PROXY_H */
