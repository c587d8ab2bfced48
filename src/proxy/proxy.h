/*
 * proxy.h - one proxied request: pick a node, send, relay, retry, fail over.
 *
 * States of a struct lx_proxy (one allocation per request, owned by itself):
 *   PICK -> SEND (exchange with a node) -> RELAY (response head sent to the
 *   client, body streaming) -> done (freed)
 *   SEND fails before any byte reached the client and a retry is allowed:
 *   back to PICK with that node excluded.
 * The client going away at any point cancels the node exchange (closing its
 * connection, so vLLM stops generating) and frees the request.
 */
#ifndef LX_PROXY_H
#define LX_PROXY_H

#include "../http/body_scan.h"
#include "../http/server.h"
#include "gateway.h"

/*
 * Proxies <req> (borrowed from the server until the response ends) to a node
 * of <pool>. <scan> describes req->body (copied). <upstream_path> is the path
 * to request on the node (before the node's base path). Always answers the
 * client, one way or another.
 */
void lx_proxy_start(struct lx_worker *w, struct lx_http_req *req, struct lx_pool *pool,
                    const struct lx_body_scan *scan, const char *upstream_path,
                    const char *request_id);

/* On the owner's loop: a request woken from a queue continues. */
void lx_proxy_resume(struct lx_proxy *p);
/* The worker's queue-timeout sweep (a repeating timer while requests wait). */
void lx_proxy_sweep(uv_timer_t *t);
/* Links for the worker mailbox. */
struct lx_proxy **lx_proxy_next(struct lx_proxy *p);

/* Writes a sanitised client X-Request-Id, or a new one, into <out> (>= 33 bytes). */
void lx_request_id(struct lx_worker *w, const struct lx_http_req *req, char *out, size_t len);

#endif /* LX_PROXY_H */
