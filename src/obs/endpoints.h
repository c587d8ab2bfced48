/*
 * endpoints.h - the gateway's own JSON endpoints: GET /health, /stats,
 * /metrics, /v1/models. They read the gateway through a view and answer;
 * they never change it.
 */
#ifndef LX_ENDPOINTS_H
#define LX_ENDPOINTS_H

#include <stdint.h>

#include "../admit/admit.h"
#include "../conf/conf.h"
#include "../http/server.h"
#include "../nodes/node.h"

struct lx_metrics;

/* What an endpoint may read of the gateway; the gateway fills one for each
 * request it hands over (a few pointers, on the answering worker). */
struct lx_obs_view {
    const struct lx_conf *conf;
    struct lx_registry *reg;        /* the answering worker's snapshot */
    struct lx_admit *admit;         /* read only */
    struct lx_metrics *metrics;     /* the answering worker's shard */
    uint64_t start_unix;            /* seconds since epoch at start */
    uint64_t start_hr_ns;           /* uv_hrtime() at start */
    int n_workers;
};

/* Counts (metrics, rejections by status) and access-logs a request the
 * gateway answered itself, into <m>; <req> may be NULL when its client is
 * gone. */
void lx_obs_account(struct lx_metrics *m, struct lx_http_req *req, const char *rid, int status);

/* GET /health: gateway status, version, uptime, strategy, pools and nodes,
 * every state from lx_node_state / lx_pool_state. 200 when every pool has
 * an eligible node (healthy or slow_start), else 503, as that pool's
 * requests get (load balancers use it). */
void lx_obs_health(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid);
/* GET /stats: a JSON snapshot per node (in flight, totals, errors by kind,
 * EWMA latency and TTFT, scraped vLLM load, health), the admission queue, and
 * per-model counts. */
void lx_obs_stats(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid);
/* GET /metrics: Prometheus text, the summed worker shards plus gauges read
 * from the admission state and the nodes. */
void lx_obs_metrics(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid);
/* GET /v1/models: the configured model names in OpenAI's list shape. (With
 * a catch-all pool the gateway asks one of its nodes instead.) */
void lx_obs_models(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid);
/* GET /v1/models/{id}: the model (a configured pool's, or any valid name
 * when a catch-all pool routes every name), or 404. <id> is the path's raw,
 * percent-encoded last part. */
void lx_obs_model(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid,
                  const char *id, size_t id_len);

#endif /* LX_ENDPOINTS_H */
