/*
 * api.h - llmux-sim's HTTP side: vLLM's OpenAI endpoints, /health, /metrics,
 * /sim/stats, and fault injection (flags and the per-request x-sim header).
 *
 * One struct sim_api per process, on the process's one loop. It owns the
 * engine and every in-flight call; a call lives from the request's arrival to
 * its response's end or the client's going away (on_abort).
 */
#ifndef SIM_API_H
#define SIM_API_H

#include <uv.h>

#include "../src/http/server.h"
#include "engine.h"

struct sim_api;

/* Creates the API (and its engine) on <loop>; <conf> is borrowed for life. */
struct sim_api *sim_api_new(uv_loop_t *loop, const struct sim_conf *conf);
/* Tells the API its server (borrowed), for the connection counts of
 * /sim/stats; NULL once the server is gone. */
void sim_api_set_server(struct sim_api *api, struct lx_http_server *srv);
/* The lx_http_handler_cb to give lx_http_server_new(); <ctx> is the api. */
void sim_api_handle(struct lx_http_req *req, void *ctx);
/*
 * Frees the API once the server is closed (no request can arrive or be
 * aborted any more). Calls still held are dropped. Asynchronous: the loop
 * must run until the API's handles are closed.
 */
void sim_api_close(struct sim_api *api);

#endif /* SIM_API_H */
