/*
 * gateway.c - worker threads, registry installation, and the per-request
 * dispatch: path, method, client auth, body scan, model lookup, then the
 * proxy or one of the gateway's own endpoints.
 */
#include "gateway.h"

#include <http_parser.h>
#include <jansson.h>
#include <string.h>
#include <time.h>

#include "../core/log.h"
#include "../http/api.h"
#include "../http/body_scan.h"
#include "../http/multipart.h"
#include "../nodes/health.h"
#include "../obs/endpoints.h"
#include "../obs/metrics.h"
#include "../obs/status_page.h"
#include "admin.h"

#define UPSTREAM_KEEPALIVE_MS 4000 /* below uvicorn's (vLLM's) 5 s keep-alive timeout */

/* ---- registry installation ---------------------------------------------- */

/* One lx_gateway_install(): how many workers have yet to switch. */
struct install {
    atomic_int left;
    struct lx_registry *prev;        /* the snapshot replaced (reference) */
    void (*done)(void *arg);
    void *arg;
};

/* A snapshot on its way to one worker, through its mailbox. */
struct adopt_mail {
    struct lx_mail mail;
    struct lx_worker *w;
    struct lx_registry *reg;
    struct install *in;
};

static void install_step(struct install *in)
{
    if (atomic_fetch_sub(&in->left, 1) != 1)
        return;
    /* Every worker has switched: requests parked in the old pools would
     * wait there for capacity nobody announces any more. Woken, they find
     * the new pools (adopt_newest) and park there if they must. */
    for (size_t i = 0; i < in->prev->n_pools; i++)
        lx_waitq_wake_all(&in->prev->pools[i].parked);
    lx_registry_unref(in->prev);
    if (in->done)
        in->done(in->arg);
    free(in);
}

static void on_adopt(struct lx_mail *m)
{
    struct adopt_mail *am = container_of(m, struct adopt_mail, mail);
    struct lx_proxy_env *env = &am->w->env;

    lx_registry_unref(env->reg);
    env->reg = am->reg;
    install_step(am->in);
    free(am);
}

void lx_gateway_install(struct lx_gateway *gw, struct lx_registry *reg, void (*done)(void *arg),
                        void *arg)
{
    struct install *in = lx_calloc(1, sizeof(*in));

    atomic_init(&in->left, gw->n_workers + 1);
    in->done = done;
    in->arg = arg;
    in->prev = gw->reg; /* the gateway's reference moves to <in> */
    gw->reg = lx_registry_ref(reg);
    if (gw->health)
        lx_health_set_registry(gw->health, reg);
    for (int i = 0; i < gw->n_workers; i++) {
        struct adopt_mail *am = lx_calloc(1, sizeof(*am));

        am->mail.deliver = on_adopt;
        am->w = &gw->workers[i];
        am->reg = lx_registry_ref(reg);
        am->in = in;
        lx_mailbox_post(&gw->workers[i].mailbox, &am->mail);
    }
    install_step(in); /* the caller's share: <done> never runs before every post */
}

void lx_gateway_set_health(struct lx_gateway *gw, struct lx_health *health)
{
    gw->health = health;
    /* lx_health_start() was given the first registry; an install before
     * this call may have put a newer one in place. */
    if (health)
        lx_health_set_registry(health, gw->reg);
}

void lx_gateway_account(struct lx_worker *w, struct lx_http_req *req, const char *rid,
                        int status)
{
    lx_obs_account(w->env.metrics, req, rid, status);
}

static struct lx_obs_view worker_view(const struct lx_worker *w)
{
    const struct lx_gateway *gw = w->gw;

    return (struct lx_obs_view){gw->conf,        w->env.reg,       w->env.admit, w->env.metrics,
                                gw->start_unix,  gw->start_hr_ns, gw->n_workers};
}

/* ---- dispatch -------------------------------------------------------------- */

/* A gateway error, with the request id echoed. Ends the response. */
static void gw_error(struct lx_worker *w, struct lx_http_req *req, const char *rid, int status,
                     const char *type, const char *code, const char *msg)
{
    struct lx_http_header h[2] = {{"X-Request-Id", 12, rid, strlen(rid)}};
    size_t n = 1;

    lx_gateway_account(w, req, rid, status);

    if (status == 401)
        h[n++] = (struct lx_http_header){"WWW-Authenticate", 16, "Bearer", 6};
    lx_http_resp_error(req, status, type, code, h, n, "%s", msg);
}

static bool client_authorized(const struct lx_gateway *gw, const struct lx_http_req *req)
{
    const char *token = gw->conf->auth_token;

    return !token || !*token || lx_http_req_bearer_is(req, token);
}

static bool path_is(const char *path, size_t len, const char *want)
{
    return strlen(want) == len && memcmp(path, want, len) == 0;
}

/* A POST routed to a pool by its model (src/http/api.h). */
static bool is_inference_path(const struct lx_http_req *req)
{
    return lx_api_has(lx_api_lookup(req->path, req->path_only_len), LX_API_MODEL);
}

/*
 * The server asks before reading a body: only a request that the dispatch
 * below would read it for gets it buffered (an authorized POST to an
 * inference endpoint, an authorized admin call). Anything else is refused
 * or answered whatever its body says, so an unauthenticated client cannot
 * make llmux hold MAX_BODY_BYTES per connection. Keep in step with
 * gateway_handle.
 */
static bool gateway_wants_body(const struct lx_http_req *req, void *arg)
{
    struct lx_worker *w = arg;
    const char *admin = w->gw->conf->admin_token;

    if (req->path_only_len >= 7 && memcmp(req->path, "/admin/", 7) == 0)
        return admin && *admin && lx_http_req_bearer_is(req, admin);
    return is_inference_path(req) && req->method == HTTP_POST && client_authorized(w->gw, req);
}

/* The model name, decoded when written with JSON escapes; NULL if invalid. */
static char *model_decode(const struct lx_body_scan *scan)
{
    char *raw = lx_malloc(scan->model.len + 3);
    json_t *j;
    char *out = NULL;

    raw[0] = '"';
    memcpy(raw + 1, scan->model.p, scan->model.len);
    raw[scan->model.len + 1] = '"';
    raw[scan->model.len + 2] = '\0';
    j = json_loads(raw, JSON_DECODE_ANY, NULL);
    if (j && json_is_string(j))
        out = lx_strdup(json_string_value(j));
    json_decref(j);
    free(raw);
    return out;
}

/*
 * The "model" of a multipart/form-data request (audio): the form field, in
 * <scan> as a JSON body's would be. False, the client answered 400, when the
 * body is not such a form.
 */
static bool scan_form(struct lx_worker *w, struct lx_http_req *req, const char *rid,
                      struct lx_body_scan *scan)
{
    const struct lx_http_header *ct = lx_http_req_header(req, "content-type");
    struct lx_mp_part parts[LX_MP_MAX_PARTS];
    const struct lx_mp_part *model, *stream;
    const char *boundary, *why = "no Content-Type";
    size_t blen;
    int n;
    char msg[200];

    memset(scan, 0, sizeof(*scan));
    if (!ct || lx_mp_boundary(ct->value, ct->value_len, &boundary, &blen, &why) != 0 ||
        (n = lx_mp_parse(req->body.data ? req->body.data : "", req->body.len, boundary, blen,
                         parts, ARRAY_SIZE(parts), &why)) < 0) {
        snprintf(msg, sizeof(msg), "this endpoint expects a multipart/form-data body: %s", why);
        gw_error(w, req, rid, 400, "invalid_request_error", "invalid_form", msg);
        return false;
    }
    model = lx_mp_find(parts, (size_t)n, "model");
    if (model) {
        scan->model = (struct lx_slice){model->data, model->len};
        scan->model_value = scan->model;
        scan->model_present = scan->model_is_string = scan->model_is_form_field = true;
    }
    stream = lx_mp_find(parts, (size_t)n, "stream");
    scan->stream = stream && stream->len == 4 && memcmp(stream->data, "true", 4) == 0;
    return true;
}

/* The pool of a request that names no model: the catch-all, or the only
 * pool for the endpoints where vLLM's "model" is optional. */
static struct lx_pool *pool_without_model(struct lx_worker *w, enum lx_api ep)
{
    struct lx_pool *pool = lx_registry_find(w->env.reg, "", 0);

    if (pool && strcmp(pool->model, "*") == 0)
        return pool;
    if ((ep == LX_API_TOKENIZE || ep == LX_API_DETOKENIZE) && w->env.reg->n_pools == 1)
        return &w->env.reg->pools[0];
    return NULL;
}

static void handle_inference(struct lx_worker *w, struct lx_http_req *req, const char *rid)
{
    struct lx_body_scan scan;
    struct lx_pool *pool;
    enum lx_api ep = lx_api_lookup(req->path, req->path_only_len);
    int rc;

    if (req->method != HTTP_POST) {
        gw_error(w, req, rid, 405, "invalid_request_error", "method_not_allowed",
                 "this endpoint accepts POST only");
        return;
    }
    if (req->body_skipped) {
        /* gateway_wants_body said no: it and this dispatch disagree. */
        gw_error(w, req, rid, 400, "invalid_request_error", "invalid_request",
                 "the request body was not read");
        return;
    }
    if (lx_api_has(ep, LX_API_MULTIPART)) {
        if (!scan_form(w, req, rid, &scan))
            return;
        rc = LX_SCAN_OK;
    } else {
        rc = lx_body_scan(req->body.data ? req->body.data : "", req->body.len, &scan);
    }
    if (rc != LX_SCAN_OK) {
        char msg[160];

        snprintf(msg, sizeof(msg), "the request body must be a JSON object: %s",
                 lx_body_scan_strerror(rc));
        gw_error(w, req, rid, 400, "invalid_request_error", "invalid_json", msg);
        return;
    }
    if (scan.model_present && !scan.model_is_string) {
        gw_error(w, req, rid, 400, "invalid_request_error", "invalid_model",
                 "\"model\" must be a string");
        return;
    }
    if (!scan.model_present) {
        pool = pool_without_model(w, ep);
        if (!pool) {
            gw_error(w, req, rid, 400, "invalid_request_error", "missing_model",
                     lx_api_has(ep, LX_API_MULTIPART)
                         ? "the form needs a \"model\" field"
                         : "the request body needs a string \"model\"");
            return;
        }
    } else if (scan.model_has_escape) {
        char *name = model_decode(&scan);

        pool = name ? lx_registry_find(w->env.reg, name, strlen(name)) : NULL;
        free(name);
    } else {
        pool = lx_registry_find(w->env.reg, scan.model.p, scan.model.len);
    }
    if (!pool) {
        char msg[300];

        snprintf(msg, sizeof(msg), "The model `%.*s` does not exist.",
                 (int)LX_MIN(scan.model.len, 200), scan.model.p);
        gw_error(w, req, rid, 404, "invalid_request_error", "model_not_found", msg);
        return;
    }
    lx_proxy_start(&w->env, req, pool, &scan, req->path, rid);
}

/* GET /v1/models: with a catch-all pool, its nodes know what they serve.
 * GET /v1/models/{id}: llmux's own answer (vLLM has none). */
static void handle_models(struct lx_worker *w, struct lx_http_req *req, const char *rid)
{
    struct lx_registry *reg = w->env.reg;
    struct lx_obs_view v = worker_view(w);
    size_t base = strlen("/v1/models");

    if (req->path_only_len > base) {
        lx_obs_model(&v, req, rid, req->path + base + 1, req->path_only_len - base - 1);
        return;
    }
    for (size_t i = 0; i < reg->n_pools; i++) {
        if (strcmp(reg->pools[i].model, "*") == 0) {
            lx_proxy_start(&w->env, req, &reg->pools[i], NULL, req->path, rid);
            return;
        }
    }
    lx_obs_models(&v, req, rid);
}

/* The per-request handler behind every worker's server. */
static void gateway_handle(struct lx_http_req *req, void *arg)
{
    struct lx_worker *w = arg;
    struct lx_obs_view v = worker_view(w);
    size_t plen = req->path_only_len;
    enum lx_api ep;
    char rid[80], msg[300];

    lx_request_id(&w->env, req, rid, sizeof(rid));
    if (path_is(req->path, plen, "/health")) {
        lx_obs_health(&v, req, rid);
        return;
    }
    if (path_is(req->path, plen, "/metrics")) {
        lx_obs_metrics(&v, req, rid);
        return;
    }
    if (path_is(req->path, plen, "/status")) {
        lx_obs_status_page(&v, req, rid);
        return;
    }
    if (plen >= 7 && memcmp(req->path, "/admin/", 7) == 0) {
        lx_admin_handle(w, req, rid);
        return;
    }
    if (path_is(req->path, plen, "/stats")) {
        if (!client_authorized(w->gw, req)) {
            gw_error(w, req, rid, 401, "invalid_request_error", "invalid_api_key",
                     "missing or invalid bearer token");
            return;
        }
        lx_obs_stats(&v, req, rid);
        return;
    }
    ep = lx_api_lookup(req->path, plen);
    if (ep != LX_API_OTHER || (plen >= 4 && memcmp(req->path, "/v1/", 4) == 0)) {
        if (!client_authorized(w->gw, req)) {
            gw_error(w, req, rid, 401, "invalid_request_error", "invalid_api_key",
                     "missing or invalid bearer token");
            return;
        }
        if (lx_api_has(ep, LX_API_MODEL)) {
            handle_inference(w, req, rid);
            return;
        }
        if (ep == LX_API_MODELS) {
            if (req->method != HTTP_GET) {
                gw_error(w, req, rid, 405, "invalid_request_error", "method_not_allowed",
                         "this endpoint accepts GET only");
                return;
            }
            handle_models(w, req, rid);
            return;
        }
    }
    /* The path is named (bounded, control characters cannot be in it: the
     * parser refuses them). */
    snprintf(msg, sizeof(msg), "no such endpoint: %s %.*s", http_method_str(req->method),
             (int)LX_MIN(plen, 200), req->path);
    gw_error(w, req, rid, 404, "invalid_request_error", "not_found", msg);
}

/* ---- workers -------------------------------------------------------- */

static void on_worker_handle_closed(uv_handle_t *h)
{
    LX_UNUSED(h);
}

static void on_server_closed(void *arg)
{
    struct lx_worker *w = arg;

    w->srv = NULL;
    /* Wakes that arrived for requests whose clients are gone end them. */
    lx_mailbox_close(&w->mailbox);
    uv_close((uv_handle_t *)&w->grace_timer, on_worker_handle_closed);
    uv_close((uv_handle_t *)&w->stop_async, on_worker_handle_closed);
    lx_upstream_pool_close(w->env.up);
    w->env.up = NULL;
}

static void on_grace_expired(uv_timer_t *t)
{
    struct lx_worker *w = container_of(t, struct lx_worker, grace_timer);

    if (w->srv) {
        lx_warn("worker %d: shutdown timeout, closing %zu busy connection(s)", w->index,
                lx_http_server_busy(w->srv));
        lx_http_server_close(w->srv, true, on_server_closed, w);
    }
}

static void on_stop(uv_async_t *a)
{
    struct lx_worker *w = container_of(a, struct lx_worker, stop_async);

    if (w->stopping)
        return;
    w->stopping = true;
    uv_timer_start(&w->grace_timer, on_grace_expired,
                   (uint64_t)(w->gw->conf->shutdown_timeout_s * 1000) + 1, 0);
    lx_http_server_close(w->srv, false, on_server_closed, w);
}

static void on_server_reject(void *ctx, int status)
{
    struct lx_worker *w = ctx;

    lx_metrics_reject(w->env.metrics, status == 413 || status == 431 ? LX_REJECT_TOO_LARGE
                                                                  : LX_REJECT_BAD_REQUEST);
}

static void worker_main(void *arg)
{
    struct lx_worker *w = arg;

    uv_run(&w->loop, UV_RUN_DEFAULT);
}

int lx_gateway_init(struct lx_gateway *gw, const struct lx_conf *conf, struct lx_registry *reg,
                    char *err, size_t errlen)
{
    struct lx_http_limits limits = {
        .head_max = conf->max_header_bytes,
        .body_max = conf->max_body_bytes,
        .request_timeout_ms = (uint64_t)(conf->request_timeout_s * 1000),
        .idle_timeout_ms = (uint64_t)(conf->keepalive_timeout_s * 1000),
        .send_timeout_ms = (uint64_t)(conf->send_timeout_s * 1000),
        .max_conns = (size_t)conf->max_connections,
        .conn_count = &gw->n_conns,
    };
    int port = conf->listen_port;

    /* The workers share the port with SO_REUSEPORT, and so would a process
     * that set it too (another llmux): the kernel would split the traffic
     * between two configurations. Only our own workers may share it. */
    if (port != 0 && lx_http_listen_probe(conf->listen_host, port) == -EADDRINUSE) {
        snprintf(err, errlen,
                 "cannot listen on %s:%d: another process already listens on it (another "
                 "llmux?); stop it or choose another port",
                 conf->listen_host, port);
        return -EADDRINUSE;
    }
    memset(gw, 0, sizeof(*gw));
    gw->conf = conf;
    gw->reg = lx_registry_ref(reg);
    gw->start_unix = (uint64_t)time(NULL);
    gw->start_hr_ns = uv_hrtime();
    gw->n_workers = conf->workers;
    lx_admit_init(&gw->admit, conf->max_concurrent_requests, conf->max_queue_size);
    gw->workers = lx_calloc((size_t)conf->workers, sizeof(*gw->workers));
    for (int i = 0; i < conf->workers; i++) {
        struct lx_worker *w = &gw->workers[i];
        int rc;

        w->gw = gw;
        w->index = i;
        uv_loop_init(&w->loop);
        w->env.loop = &w->loop;
        w->env.conf = conf;
        w->env.admit = &gw->admit;
        w->env.reg = lx_registry_ref(reg);
        w->env.mailbox = &w->mailbox;
        w->env.rng = (uv_hrtime() ^ ((uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL)) | 1;
        /* Worker 0 binds first; with port 0 the others then share its port. */
        rc = lx_http_server_new(&w->loop, conf->listen_host, port, &limits, gateway_handle, w,
                                &w->srv);
        if (rc < 0) {
            snprintf(err, errlen, "cannot listen on %s:%d: %s", conf->listen_host, port,
                     strerror(-rc));
            return rc;
        }
        port = lx_http_server_port(w->srv);
        lx_http_server_set_reject_cb(w->srv, on_server_reject);
        lx_http_server_set_head_cb(w->srv, gateway_wants_body);
        w->env.metrics = lx_metrics_new();
        w->env.up = lx_upstream_pool_new(&w->loop, UPSTREAM_KEEPALIVE_MS);
        uv_async_init(&w->loop, &w->stop_async, on_stop);
        lx_mailbox_init(&w->mailbox, &w->loop);
        uv_timer_init(&w->loop, &w->grace_timer);
    }
    gw->port = port;
    return 0;
}

int lx_gateway_start(struct lx_gateway *gw)
{
    for (int i = 0; i < gw->n_workers; i++) {
        int rc = uv_thread_create(&gw->workers[i].thread, worker_main, &gw->workers[i]);

        if (rc < 0)
            return rc;
    }
    return 0;
}

void lx_gateway_stop(struct lx_gateway *gw)
{
    for (int i = 0; i < gw->n_workers; i++)
        uv_async_send(&gw->workers[i].stop_async);
}

void lx_gateway_join(struct lx_gateway *gw)
{
    for (int i = 0; i < gw->n_workers; i++) {
        struct lx_worker *w = &gw->workers[i];

        uv_thread_join(&w->thread);
        uv_loop_close(&w->loop);
        lx_mailbox_deinit(&w->mailbox);
        lx_registry_unref(w->env.reg);
        lx_metrics_free(w->env.metrics);
    }
    free(gw->workers);
    gw->workers = NULL;
    lx_registry_unref(gw->reg);
    gw->reg = NULL;
    lx_admit_deinit(&gw->admit);
}
