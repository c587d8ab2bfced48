/*
 * endpoints.c - GET /health, /stats, /metrics, /v1/models; see endpoints.h.
 * Not on the hot path: JSON is built with jansson.
 */
#include "endpoints.h"

#include <http_parser.h>
#include <jansson.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "../route/prefix.h"
#include "access_log.h"
#include "metrics.h"

void lx_obs_account(struct lx_metrics *m, struct lx_http_req *req, const char *rid, int status)
{
    struct lx_request_record r = {
        .model = "", .status = status, .ttft_s = -1, .tokens_per_s = -1, .prompt_tokens = -1,
        .completion_tokens = -1,
        .endpoint = req ? lx_api_lookup(req->path, req->path_only_len) : LX_API_OTHER};
    char client[64], path[128];

    lx_metrics_request(m, &r);
    if (status == 401 || status == 403)
        lx_metrics_reject(m, LX_REJECT_AUTH);
    else if (status == 400 || status == 404 || status == 405)
        lx_metrics_reject(m, LX_REJECT_BAD_REQUEST);
    if (!req || !lx_access_log_enabled())
        return;
    lx_http_req_peer_str(req, client, sizeof(client));
    snprintf(path, sizeof(path), "%.*s", (int)req->path_only_len, req->path);
    lx_access_log_write(&(struct lx_access_entry){
        .request_id = rid, .client = client, .method = http_method_str(req->method),
        .path = path, .model = "", .status = status, .queue_wait_s = -1, .ttft_s = -1,
        .bytes_in = req->body.len, .prompt_tokens = -1, .completion_tokens = -1});
}

static json_t *iso_time(uint64_t wall_ms)
{
    char buf[40];
    time_t s = (time_t)(wall_ms / 1000);
    struct tm tm;

    gmtime_r(&s, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(buf);
}

static void send_json(struct lx_http_req *req, int status, json_t *j, const char *rid)
{
    struct lx_http_header h[] = {{"X-Request-Id", 12, rid, strlen(rid)},
                                 {"Cache-Control", 13, "no-store", 8}};
    char *text = json_dumps(j, JSON_COMPACT);
    size_t len = strlen(text);

    /* One trailing newline, as curl users expect. */
    text = lx_realloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0';
    lx_http_resp_send(req, status, "application/json", h, ARRAY_SIZE(h), text, len);
    free(text);
    json_decref(j);
}

void lx_obs_health(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid)
{
    struct lx_registry *reg = v->reg;
    json_t *root = json_object(), *pools = json_array(), *nodes = json_array();
    size_t n_nodes = 0, n_up_total = 0;
    enum lx_pool_state worst = LX_POOL_OK;
    uint64_t now = lx_now_ms();

    for (size_t i = 0; i < reg->n_pools; i++) {
        const struct lx_pool *p = &reg->pools[i];
        json_t *jp = json_object(), *jn = json_array();
        enum lx_node_state *states = lx_calloc(p->n_nodes ? p->n_nodes : 1, sizeof(*states));
        size_t up;
        enum lx_pool_state ps = lx_pool_state(p, now, states, &up);

        for (size_t k = 0; k < p->n_nodes; k++) {
            struct lx_node *n = p->nodes[k];
            const char *why = atomic_load(&n->last_error);
            json_t *o = json_object();

            json_object_set_new(o, "name", json_string(n->name));
            json_object_set_new(o, "url", json_string(n->url));
            json_object_set_new(o, "model", json_string(p->model));
            json_object_set_new(o, "healthy", json_boolean(lx_node_state_is_eligible(states[k])));
            json_object_set_new(o, "state", json_string(lx_node_state_name(states[k])));
            json_object_set_new(o, "since", iso_time(atomic_load(&n->state_since_ms)));
            json_object_set_new(o, "last_error", why ? json_string(why) : json_null());
            json_object_set_new(o, "drained", json_boolean(atomic_load(&n->drained)));
            json_object_set_new(o, "in_flight", json_integer(atomic_load(&n->in_flight)));
            json_object_set_new(o, "requests_total",
                                json_integer((json_int_t)atomic_load(&n->requests_total)));
            json_object_set_new(o, "failures_total",
                                json_integer((json_int_t)atomic_load(&n->failures_total)));
            json_array_append(jn, o);
            json_array_append_new(nodes, o);
            n_nodes++;
        }
        free(states);
        json_object_set_new(jp, "model", json_string(p->model));
        json_object_set_new(jp, "strategy", json_string(p->strategy_name));
        if (p->upstream_model)
            json_object_set_new(jp, "upstream_model", json_string(p->upstream_model));
        json_object_set_new(jp, "status", json_string(lx_pool_state_name(ps)));
        json_object_set_new(jp, "healthy_nodes", json_integer((json_int_t)up));
        json_object_set_new(jp, "nodes", jn);
        json_array_append_new(pools, jp);
        n_up_total += up;
        if (ps > worst)
            worst = ps;
    }
    /* The worst pool decides: down (503) when some pool cannot serve a
     * request, as its requests would get 503 (no_healthy_node). */
    json_object_set_new(root, "status", json_string(lx_pool_state_name(worst)));
    json_object_set_new(root, "version", json_string(LX_VERSION));
    json_object_set_new(root, "uptime_seconds",
                        json_real((double)(uv_hrtime() - v->start_hr_ns) / 1e9));
    json_object_set_new(root, "strategy", json_string(v->conf->strategy));
    json_object_set_new(root, "workers", json_integer(v->n_workers));
    json_object_set_new(root, "pools", pools);
    json_object_set_new(root, "nodes", nodes);
    json_object_set_new(root, "total_nodes", json_integer((json_int_t)n_nodes));
    json_object_set_new(root, "healthy_nodes", json_integer((json_int_t)n_up_total));
    send_json(req, worst == LX_POOL_DOWN ? 503 : 200, root, rid);
}

static json_t *model_object(const struct lx_obs_view *v, const char *id, size_t len)
{
    json_t *m = json_object();

    json_object_set_new(m, "id", json_stringn(id, len));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer((json_int_t)v->start_unix));
    json_object_set_new(m, "owned_by", json_string("llmux"));
    return m;
}

void lx_obs_models(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid)
{
    struct lx_registry *reg = v->reg;
    json_t *root, *data;

    root = json_object();
    data = json_array();
    for (size_t i = 0; i < reg->n_pools; i++)
        json_array_append_new(data, model_object(v, reg->pools[i].model,
                                                 strlen(reg->pools[i].model)));
    json_object_set_new(root, "object", json_string("list"));
    json_object_set_new(root, "data", data);
    lx_metrics_endpoint(v->metrics, LX_API_MODELS, 200);
    send_json(req, 200, root, rid);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

void lx_obs_model(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid,
                  const char *raw, size_t raw_len)
{
    char id[512];
    size_t len = 0;
    json_t *m = NULL, *valid;

    /* The id is percent-decoded ("org%2Fname" for a model named with a
     * slash); a malformed escape or an id too long matches nothing. */
    for (size_t i = 0; i < raw_len && len < sizeof(id); i++) {
        int hi, lo;

        if (raw[i] != '%') {
            id[len++] = raw[i];
        } else if (i + 2 < raw_len && (hi = hex_digit(raw[i + 1])) >= 0 &&
                   (lo = hex_digit(raw[i + 2])) >= 0) {
            id[len++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            len = sizeof(id);
        }
    }
    /* A configured model by its name; with a catch-all pool, every model
     * name is routed, so every valid name is a model. */
    valid = len < sizeof(id) ? json_stringn(id, len) : NULL;
    if (valid && (lx_registry_find(v->reg, id, len) != NULL))
        m = model_object(v, id, len);
    json_decref(valid);
    if (!m) {
        struct lx_http_header h = {"X-Request-Id", 12, rid, strlen(rid)};

        lx_metrics_endpoint(v->metrics, LX_API_MODELS, 404);
        lx_http_resp_error(req, 404, "invalid_request_error", "model_not_found", &h, 1,
                           "The model `%.*s` does not exist.", (int)LX_MIN(raw_len, 200), raw);
        return;
    }
    lx_metrics_endpoint(v->metrics, LX_API_MODELS, 200);
    send_json(req, 200, m, rid);
}

/* One sample per (pool, node): a node listed in two pools is two series
 * (labels pool and node), each with its own in-flight count and state;
 * <get> reads the figure, NaN = nothing known (no sample). */
static void node_samples(struct lx_buf *b, struct lx_registry *reg, const char *name,
                         double (*get)(const struct lx_node *, uint64_t), uint64_t now)
{
    for (size_t i = 0; i < reg->n_pools; i++) {
        for (size_t k = 0; k < reg->pools[i].n_nodes; k++) {
            const struct lx_node *n = reg->pools[i].nodes[k];
            double v = get(n, now);

            /* NaN: never scraped; no sample beats a false 0. */
            if (v == v)
                lx_metrics_sample_labels(b, name, "pool", reg->pools[i].model, "node", n->name,
                                         NULL, NULL, v);
        }
    }
}

static void node_gauge(struct lx_buf *b, struct lx_registry *reg, const char *name,
                       const char *help, double (*get)(const struct lx_node *, uint64_t),
                       uint64_t now)
{
    lx_metrics_gauge_head(b, name, help);
    node_samples(b, reg, name, get, now);
}

/* A counter the node keeps (scraped), mirrored: it falls when the node's
 * engine restarts, which Prometheus's rate() takes as a reset. */
static void node_counter(struct lx_buf *b, struct lx_registry *reg, const char *name,
                         const char *help, double (*get)(const struct lx_node *, uint64_t),
                         uint64_t now)
{
    lx_metrics_counter_head(b, name, help);
    node_samples(b, reg, name, get, now);
}

static double get_active(const struct lx_node *n, uint64_t now)
{
    return atomic_load(&n->in_flight);
}

static double get_healthy(const struct lx_node *n, uint64_t now)
{
    return lx_node_is_up(n, now) ? 1 : 0;
}

/* llmux_node_state{pool,node,state}: 1 for the node's state, 0 for the
 * others, every state listed so that a query by state always has data. */
static void node_state_gauge(struct lx_buf *b, struct lx_registry *reg, uint64_t now)
{
    lx_metrics_gauge_head(b, "llmux_node_state",
                          "1 for the node's state (healthy, slow_start, ejected, unhealthy, "
                          "drained) in the pool, 0 for the others.");
    for (size_t i = 0; i < reg->n_pools; i++) {
        for (size_t k = 0; k < reg->pools[i].n_nodes; k++) {
            const struct lx_node *n = reg->pools[i].nodes[k];
            enum lx_node_state st = lx_node_state(n, now);

            for (int s = 0; s < LX_NODE__N; s++)
                lx_metrics_sample_labels(b, "llmux_node_state", "pool", reg->pools[i].model,
                                         "node", n->name, "state",
                                         lx_node_state_name((enum lx_node_state)s), s == (int)st);
        }
    }
}

static double get_kv(const struct lx_node *n, uint64_t now)
{
    return atomic_load(&n->scraped_at_ms) ? atomic_load(&n->scraped_kv_milli) / 1000.0 : NAN;
}

static double get_waiting(const struct lx_node *n, uint64_t now)
{
    return atomic_load(&n->scraped_at_ms) ? atomic_load(&n->scraped_waiting) : NAN;
}

static double get_prefix_queries(const struct lx_node *n, uint64_t now)
{
    return atomic_load(&n->scraped_has_prefix_queries)
               ? (double)atomic_load(&n->scraped_prefix_queries)
               : NAN;
}

static double get_prefix_hits(const struct lx_node *n, uint64_t now)
{
    return atomic_load(&n->scraped_has_prefix_hits) ? (double)atomic_load(&n->scraped_prefix_hits)
                                                     : NAN;
}

void lx_obs_metrics(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid)
{
    struct lx_admit *a = v->admit;
    struct lx_http_header h[] = {{"X-Request-Id", 12, rid, strlen(rid)}};
    struct lx_buf b;
    uint64_t now = lx_now_ms();

    lx_buf_init(&b, 0);
    lx_metrics_render(&b, v->reg);
    lx_metrics_gauge_head(&b, "llmux_active_requests", "Requests holding an admission slot.");
    lx_metrics_sample(&b, "llmux_active_requests", NULL, NULL, atomic_load(&a->in_flight));
    lx_metrics_gauge_head(&b, "llmux_queue_depth", "Requests waiting for an admission slot.");
    lx_metrics_sample(&b, "llmux_queue_depth", NULL, NULL, lx_waitq_len(&a->q));
    lx_metrics_gauge_head(&b, "llmux_queue_capacity", "MAX_QUEUE_SIZE.");
    lx_metrics_sample(&b, "llmux_queue_capacity", NULL, NULL, a->max_queue);
    lx_metrics_gauge_head(&b, "llmux_max_concurrent_requests", "MAX_CONCURRENT_REQUESTS.");
    lx_metrics_sample(&b, "llmux_max_concurrent_requests", NULL, NULL, a->max_in_flight);
    node_gauge(&b, v->reg, "llmux_node_active_requests",
               "Requests in flight to each node of each pool.", get_active, now);
    node_gauge(&b, v->reg, "llmux_node_healthy",
               "1 when the node takes new requests of the pool (healthy or slow_start), else 0.",
               get_healthy, now);
    node_state_gauge(&b, v->reg, now);
    node_gauge(&b, v->reg, "llmux_node_kv_cache_usage",
               "KV-cache usage scraped from the node's vLLM /metrics, 0..1.", get_kv, now);
    node_gauge(&b, v->reg, "llmux_node_requests_waiting",
               "Requests waiting inside the node, scraped from its vLLM /metrics.", get_waiting,
               now);
    node_counter(&b, v->reg, "llmux_node_prefix_cache_queries_total",
                 "Prompt tokens the node looked up in its prefix cache: its vLLM "
                 "vllm:prefix_cache_queries_total, as last scraped.",
                 get_prefix_queries, now);
    node_counter(&b, v->reg, "llmux_node_prefix_cache_hits_total",
                 "Prompt tokens the node found in its prefix cache: its vLLM "
                 "vllm:prefix_cache_hits_total, as last scraped.",
                 get_prefix_hits, now);
    lx_metrics_gauge_head(&b, "llmux_uptime_seconds", "Seconds since llmux started.");
    lx_metrics_sample(&b, "llmux_uptime_seconds", NULL, NULL,
                      (double)(uv_hrtime() - v->start_hr_ns) / 1e9);
    lx_metrics_gauge_head(&b, "llmux_build_info", "Always 1; the version is a label.");
    lx_metrics_sample(&b, "llmux_build_info", "version", LX_VERSION, 1);
    lx_http_resp_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", h, ARRAY_SIZE(h),
                      b.data, b.len);
    lx_buf_deinit(&b);
}

static json_t *ms_or_null(uint64_t us)
{
    return us ? json_real((double)us / 1000.0) : json_null();
}

static json_t *node_stats(const struct lx_pool *p, const struct lx_node *n, uint64_t now)
{
    json_t *o = json_object(), *errs = json_object();
    const char *why = atomic_load(&n->last_error);
    uint64_t at = atomic_load(&n->scraped_at_ms);
    enum lx_node_state st = lx_node_state(n, now);

    json_object_set_new(o, "name", json_string(n->name));
    json_object_set_new(o, "url", json_string(n->url));
    json_object_set_new(o, "model", json_string(p->model));
    json_object_set_new(o, "state", json_string(lx_node_state_name(st)));
    json_object_set_new(o, "healthy", json_boolean(lx_node_state_is_eligible(st)));
    json_object_set_new(o, "drained", json_boolean(atomic_load(&n->drained)));
    json_object_set_new(o, "last_error", why ? json_string(why) : json_null());
    json_object_set_new(o, "since", iso_time(atomic_load(&n->state_since_ms)));
    json_object_set_new(o, "in_flight", json_integer(atomic_load(&n->in_flight)));
    json_object_set_new(o, "max_concurrency", json_integer(n->max_concurrency));
    json_object_set_new(o, "weight", json_integer(n->weight));
    json_object_set_new(o, "effective_weight", json_real(lx_node_effective_weight(n, now)));
    json_object_set_new(o, "requests_total",
                        json_integer((json_int_t)atomic_load(&n->requests_total)));
    json_object_set_new(o, "failures_total",
                        json_integer((json_int_t)atomic_load(&n->failures_total)));
    for (int k = 0; k < LX_FAIL__N; k++)
        json_object_set_new(errs, lx_fail_kinds[k].label,
                            json_integer((json_int_t)atomic_load(&n->errors[k])));
    json_object_set_new(o, "errors", errs);
    json_object_set_new(o, "latency_ms", ms_or_null(atomic_load(&n->ewma_ttfb_us)));
    json_object_set_new(o, "ttft_ms", ms_or_null(atomic_load(&n->ewma_ttft_us)));
    json_object_set_new(o, "prefix_blocks",
                        json_integer((json_int_t)lx_prefix_count(n)));
    if (at) {
        json_t *v = json_object();

        json_object_set_new(v, "age_seconds", json_real((double)(now - at) / 1000.0));
        json_object_set_new(v, "requests_waiting", json_integer(atomic_load(&n->scraped_waiting)));
        json_object_set_new(v, "requests_running", json_integer(atomic_load(&n->scraped_running)));
        json_object_set_new(v, "kv_cache_usage",
                            json_real(atomic_load(&n->scraped_kv_milli) / 1000.0));
        json_object_set_new(o, "vllm", v);
    } else {
        json_object_set_new(o, "vllm", json_null());
    }
    return o;
}

void lx_obs_stats(const struct lx_obs_view *v, struct lx_http_req *req, const char *rid)
{
    struct lx_registry *reg = v->reg;
    struct lx_admit *a = v->admit;
    json_t *root = json_object(), *gw = json_object(), *models = json_array(),
           *nodes = json_array();
    enum lx_pool_state worst = LX_POOL_OK;
    uint64_t now = lx_now_ms();

    json_object_set_new(root, "version", json_string(LX_VERSION));
    json_object_set_new(root, "uptime_seconds",
                        json_real((double)(uv_hrtime() - v->start_hr_ns) / 1e9));
    json_object_set_new(gw, "active_requests", json_integer(atomic_load(&a->in_flight)));
    json_object_set_new(gw, "max_concurrent_requests", json_integer(a->max_in_flight));
    json_object_set_new(gw, "queue_depth", json_integer(lx_waitq_len(&a->q)));
    json_object_set_new(gw, "queue_capacity", json_integer(a->max_queue));
    json_object_set_new(gw, "queued_total", json_integer((json_int_t)atomic_load(&a->queued_total)));
    json_object_set_new(gw, "queue_full_total",
                        json_integer((json_int_t)atomic_load(&a->rejected_total)));
    json_object_set_new(gw, "queue_timeouts_total",
                        json_integer((json_int_t)atomic_load(&a->timeouts_total)));
    json_object_set_new(gw, "retry_after_seconds", json_integer(lx_admit_retry_after(a)));
    json_object_set_new(root, "gateway", gw);
    for (size_t i = 0; i < reg->n_pools; i++) {
        struct lx_pool *p = &reg->pools[i];
        json_t *m = json_object();
        size_t up;
        enum lx_pool_state ps = lx_pool_state(p, now, NULL, &up);

        if (ps > worst)
            worst = ps;
        json_object_set_new(m, "model", json_string(p->model));
        json_object_set_new(m, "strategy", json_string(p->strategy_name));
        json_object_set_new(m, "status", json_string(lx_pool_state_name(ps)));
        json_object_set_new(m, "healthy_nodes", json_integer((json_int_t)up));
        json_object_set_new(m, "requests_total",
                            json_integer((json_int_t)atomic_load(&p->requests_total)));
        json_object_set_new(m, "errors_total",
                            json_integer((json_int_t)atomic_load(&p->errors_total)));
        json_object_set_new(m, "prompt_tokens",
                            json_integer((json_int_t)atomic_load(&p->prompt_tokens)));
        json_object_set_new(m, "completion_tokens",
                            json_integer((json_int_t)atomic_load(&p->completion_tokens)));
        json_object_set_new(m, "parked", json_integer(lx_waitq_len(&p->parked)));
        json_array_append_new(models, m);
        for (size_t k = 0; k < p->n_nodes; k++)
            json_array_append_new(nodes, node_stats(p, p->nodes[k], now));
    }
    /* As /health's, but /stats answers 200 whatever the state. */
    json_object_set_new(root, "status", json_string(lx_pool_state_name(worst)));
    json_object_set_new(root, "models", models);
    json_object_set_new(root, "nodes", nodes);
    send_json(req, 200, root, rid);
}
