/*
 * endpoints.h - the gateway's own JSON endpoints: GET /health, GET /v1/models.
 */
#ifndef LX_ENDPOINTS_H
#define LX_ENDPOINTS_H

#include "../http/server.h"
#include "../proxy/gateway.h"

/* GET /health: gateway status, version, uptime, strategy, pools and nodes.
 * 200 when every pool has a healthy node, else 503 (load balancers use it). */
void lx_obs_health(struct lx_worker *w, struct lx_http_req *req, const char *rid);
/* GET /stats: a JSON snapshot per node (in flight, totals, errors by kind,
 * EWMA latency and TTFT, scraped vLLM load, health), the admission queue, and
 * per-model counts. */
void lx_obs_stats(struct lx_worker *w, struct lx_http_req *req, const char *rid);
/* GET /metrics: Prometheus text, the summed worker shards plus gauges read
 * from the admission state and the nodes. */
void lx_obs_metrics(struct lx_worker *w, struct lx_http_req *req, const char *rid);
/* GET /v1/models: the configured model names in OpenAI's list shape; with a
 * catch-all pool ("*", no MODEL_NAME), the question goes to one of its nodes. */
void lx_obs_models(struct lx_worker *w, struct lx_http_req *req, const char *rid);

#endif /* LX_ENDPOINTS_H */
