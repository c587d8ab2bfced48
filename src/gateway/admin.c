/*
 * admin.c - the admin API; see admin.h, and docs/ADMIN.md for the user's view.
 *
 * A request is authenticated, routed and its JSON body parsed on its worker's
 * loop (lx_admin_handle). The operation then runs on the libuv threadpool
 * (on_work) under the admin lock, and the answer leaves from the worker's
 * loop again (on_after_work). So a worker never blocks on the lock or on the
 * config file's fsyncs, and admin calls arriving on different workers are
 * applied one at a time. A client that goes away meanwhile does not cancel
 * its operation: a change is applied whole or not at all, whoever waits.
 *
 * State, under the lock: the current pool list (`st.pools`, config pools) and,
 * for each pool, its entry as the config file holds it (`st.src`: real api
 * keys, and the user's own keys when the pool came from the file unchanged).
 * It is a copy of gw->conf->pools made on first use, or of the pools of the
 * last SIGHUP reload (lx_admin_reloaded).
 *
 * A pool change, all or nothing:
 *   1. the new pool is parsed by lx_conf_pool_from_json(), the config file's
 *      own validation, into a new pool list;
 *   2. a new registry is built from that list with lx_router_registry_new(conf,
 *      gw->reg): unchanged nodes are carried over with their load, health and
 *      drain state (and a new node whose name is drained stays drained);
 *   3. with a config file, the file is rewritten atomically
 *      (lx_conf_file_set_model: its "models" entry for that pool set or
 *      removed, every other key kept);
 *      if that fails, 1 and 2 are dropped and the answer is 500;
 *   4. the registry is installed on every worker and on the health thread
 *      (lx_gateway_install), and the new list becomes the state; the answer
 *      waits until every worker has switched (its completion callback).
 * Requests in flight hold a reference to the snapshot they started with and
 * are never disturbed. Drain and enable only flip the `drained` atomic of the
 * newest snapshot's nodes: run-time state, not configuration, not written.
 */
#include "admin.h"

#include <fcntl.h>
#include <http_parser.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../core/log.h"
#include "../obs/metrics.h"
#include "../route/router.h"

#define MSG_MAX 480 /* lx_http_resp_error keeps 511 bytes of a message */

enum admin_op { OP_LIST, OP_GET, OP_CREATE, OP_UPDATE, OP_DELETE, OP_DRAIN, OP_ENABLE };

struct admin_job {
    uv_work_t work;
    struct lx_worker *w;
    struct lx_http_req *req; /* borrowed; NULL once the client has gone */
    enum admin_op op;
    char *name;   /* decoded model or node name, NULL for /admin/models */
    json_t *body; /* the request's JSON object (create, update); on_work frees it */
    char rid[80];

    /* The answer, filled by on_work. */
    int status;
    json_t *result;   /* a success body, or NULL for an error */
    const char *type; /* error type and code (static strings) */
    const char *code;
    char msg[MSG_MAX];
};

/* The admin lock, and the state it guards. */
static uv_once_t lock_once = UV_ONCE_INIT;
static uv_mutex_t lock;
static struct {
    bool loaded;   /* pools/src hold the current list */
    bool shutdown; /* lx_admin_shutdown() was called: no more pool changes */
    struct lx_conf_pool *pools;
    json_t **src; /* per pool: its config file entry (owned) */
    size_t n;
    char *default_strategy; /* for pools created without one (ROUTING_STRATEGY) */
} st;

static void lock_init(void)
{
    if (uv_mutex_init(&lock) < 0)
        abort();
}

void lx_admin_lock(void)
{
    uv_once(&lock_once, lock_init);
    uv_mutex_lock(&lock);
}

void lx_admin_unlock(void)
{
    uv_mutex_unlock(&lock);
}

/* ---- pool lists ------------------------------------------------------- */

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void pool_copy(struct lx_conf_pool *d, const struct lx_conf_pool *s)
{
    memset(d, 0, sizeof(*d));
    d->model = lx_strdup(s->model);
    d->strategy = s->strategy ? lx_strdup(s->strategy) : NULL;
    d->upstream_model = s->upstream_model ? lx_strdup(s->upstream_model) : NULL;
    d->metrics_update_interval_s = s->metrics_update_interval_s;
    d->has_hedge_after = s->has_hedge_after;
    d->hedge_after_s = s->hedge_after_s;
    d->servers = lx_calloc(s->n_servers ? s->n_servers : 1, sizeof(*d->servers));
    d->n_servers = s->n_servers;
    for (size_t i = 0; i < s->n_servers; i++) {
        const struct lx_conf_server *a = &s->servers[i];
        struct lx_conf_server *b = &d->servers[i];

        b->url = lx_strdup(a->url);
        b->name = lx_strdup(a->name ? a->name : a->url);
        b->host = a->host ? lx_strdup(a->host) : NULL;
        b->port = a->port;
        b->base_path = a->base_path ? lx_strdup(a->base_path) : NULL;
        b->weight = a->weight;
        b->max_concurrency = a->max_concurrency;
        b->api_key = a->api_key ? lx_strdup(a->api_key) : NULL;
    }
}

/* Same configuration (what the registry and the file care about). */
static bool pool_equal(const struct lx_conf_pool *a, const struct lx_conf_pool *b)
{
    if (!str_eq(a->model, b->model) || !str_eq(a->strategy, b->strategy) ||
        !str_eq(a->upstream_model, b->upstream_model) ||
        a->metrics_update_interval_s != b->metrics_update_interval_s ||
        a->has_hedge_after != b->has_hedge_after ||
        (a->has_hedge_after && a->hedge_after_s != b->hedge_after_s) ||
        a->n_servers != b->n_servers)
        return false;
    for (size_t i = 0; i < a->n_servers; i++) {
        const struct lx_conf_server *x = &a->servers[i], *y = &b->servers[i];

        if (!str_eq(x->url, y->url) || !str_eq(x->name, y->name) || x->weight != y->weight ||
            x->max_concurrency != y->max_concurrency || !str_eq(x->api_key, y->api_key))
            return false;
    }
    return true;
}

/* A number as JSON: an integer when it is one (10, not 10.0). */
static json_t *json_num(double v)
{
    if (v >= 0 && v < 1e15 && v == (double)(json_int_t)v)
        return json_integer((json_int_t)v);
    return json_real(v);
}

/* <p> as a config file entry, in its shortest form (a server with only a
 * URL is the URL string). Real secrets: for the file, never for a client. */
static json_t *pool_to_src(const struct lx_conf_pool *p)
{
    json_t *o = json_object(), *servers = json_array();

    for (size_t i = 0; i < p->n_servers; i++) {
        const struct lx_conf_server *s = &p->servers[i];
        bool named = s->name && strcmp(s->name, s->url) != 0;
        json_t *so;

        if (!named && s->weight == 1 && s->max_concurrency == 0 && !s->api_key) {
            json_array_append_new(servers, json_string(s->url));
            continue;
        }
        so = json_object();
        json_object_set_new(so, "url", json_string(s->url));
        if (named)
            json_object_set_new(so, "name", json_string(s->name));
        if (s->weight != 1)
            json_object_set_new(so, "weight", json_integer(s->weight));
        if (s->max_concurrency)
            json_object_set_new(so, "max_concurrency", json_integer(s->max_concurrency));
        if (s->api_key)
            json_object_set_new(so, "api_key", json_string(s->api_key));
        json_array_append_new(servers, so);
    }
    json_object_set_new(o, "servers", servers);
    if (p->strategy)
        json_object_set_new(o, "strategy", json_string(p->strategy));
    if (p->upstream_model)
        json_object_set_new(o, "upstream_model", json_string(p->upstream_model));
    if (p->metrics_update_interval_s > 0)
        json_object_set_new(o, "metrics_update_interval", json_num(p->metrics_update_interval_s));
    if (p->has_hedge_after)
        json_object_set_new(o, "hedge_after_seconds", json_num(p->hedge_after_s));
    return o;
}

static void state_free(void)
{
    for (size_t i = 0; i < st.n; i++) {
        lx_conf_pool_free(&st.pools[i]);
        json_decref(st.src[i]);
    }
    free(st.pools);
    free(st.src);
    free(st.default_strategy);
    st.pools = NULL;
    st.src = NULL;
    st.default_strategy = NULL;
    st.n = 0;
    st.loaded = false;
}

/* The state becomes a copy of <conf>'s pools. A pool whose config file
 * entry still describes it keeps that entry as its source, so a later change
 * writes back what the user wrote plus the change. */
static void state_load(const struct lx_conf *conf)
{
    json_t *models = lx_conf_file_models(conf->config_path);

    state_free();
    st.pools = lx_calloc(conf->n_pools + 1, sizeof(*st.pools));
    st.src = lx_calloc(conf->n_pools + 1, sizeof(*st.src));
    for (size_t i = 0; i < conf->n_pools; i++) {
        const struct lx_conf_pool *p = &conf->pools[i];
        json_t *entry = models ? json_object_get(models, p->model) : NULL;
        struct lx_conf_pool fp;

        pool_copy(&st.pools[i], p);
        if (entry &&
            lx_conf_pool_from_json(&fp, p->model, entry, conf->strategy, "models", NULL, 0) == 0) {
            if (pool_equal(&fp, p))
                st.src[i] = json_deep_copy(entry);
            lx_conf_pool_free(&fp);
        }
        if (!st.src[i])
            st.src[i] = pool_to_src(p);
    }
    st.n = conf->n_pools;
    st.default_strategy = lx_strdup(conf->strategy);
    st.loaded = true;
    json_decref(models);
}

void lx_admin_reloaded(const struct lx_conf *conf)
{
    state_load(conf);
}

void lx_admin_set_health(struct lx_gateway *gw, struct lx_health *health)
{
    lx_admin_lock();
    lx_gateway_set_health(gw, health);
    lx_admin_unlock();
}

void lx_admin_shutdown(void)
{
    lx_admin_lock();
    st.shutdown = true;
    lx_admin_unlock();
}

/* Index of the pool named exactly <model>, or st.n. */
static size_t state_find(const char *model)
{
    size_t i;

    for (i = 0; i < st.n; i++)
        if (strcmp(st.pools[i].model, model) == 0)
            break;
    return i;
}

/* ---- answers ---------------------------------------------------------- */

static void job_error(struct admin_job *job, int status, const char *type, const char *code,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void job_error(struct admin_job *job, int status, const char *type, const char *code,
                      const char *fmt, ...)
{
    va_list ap;

    job->status = status;
    job->type = type;
    job->code = code;
    va_start(ap, fmt);
    vsnprintf(job->msg, sizeof(job->msg), fmt, ap);
    va_end(ap);
}

static struct lx_pool *reg_pool(struct lx_registry *reg, const char *model)
{
    for (size_t i = 0; reg && i < reg->n_pools; i++)
        if (strcmp(reg->pools[i].model, model) == 0)
            return &reg->pools[i];
    return NULL;
}

/* <p>'s configuration (api keys masked) with its nodes' live state from the
 * newest snapshot. */
static json_t *pool_json(struct lx_gateway *gw, const struct lx_conf_pool *p)
{
    struct lx_pool *rp = reg_pool(gw->reg, p->model);
    json_t *o = json_object(), *servers = json_array();
    uint64_t now = lx_now_ms();

    json_object_set_new(o, "model", json_string(p->model));
    json_object_set_new(o, "strategy", json_string(p->strategy ? p->strategy : gw->conf->strategy));
    json_object_set_new(o, "upstream_model",
                        p->upstream_model ? json_string(p->upstream_model) : json_null());
    json_object_set_new(o, "metrics_update_interval", json_num(p->metrics_update_interval_s));
    json_object_set_new(o, "hedge_after_seconds",
                        p->has_hedge_after ? json_num(p->hedge_after_s) : json_null());
    for (size_t i = 0; i < p->n_servers; i++) {
        const struct lx_conf_server *s = &p->servers[i];
        const struct lx_node *n = NULL;
        json_t *so = json_object();

        for (size_t k = 0; rp && k < rp->n_nodes && !n; k++)
            if (strcmp(rp->nodes[k]->name, s->name) == 0)
                n = rp->nodes[k];
        json_object_set_new(so, "url", json_string(s->url));
        json_object_set_new(so, "name", json_string(s->name));
        json_object_set_new(so, "weight", json_integer(s->weight));
        json_object_set_new(so, "max_concurrency", json_integer(s->max_concurrency));
        json_object_set_new(so, "api_key", s->api_key ? json_string("***") : json_null());
        if (n) {
            enum lx_node_state ns = lx_node_state(n, now);

            json_object_set_new(so, "healthy", json_boolean(lx_node_state_is_eligible(ns)));
            json_object_set_new(so, "state", json_string(lx_node_state_name(ns)));
            json_object_set_new(so, "drained", json_boolean(atomic_load(&n->drained)));
            json_object_set_new(so, "in_flight", json_integer(atomic_load(&n->in_flight)));
            json_object_set_new(so, "requests_total",
                                json_integer((json_int_t)atomic_load(&n->requests_total)));
        }
        json_array_append_new(servers, so);
    }
    json_object_set_new(o, "servers", servers);
    return o;
}

/* Says whether a change reached the config file, and what that means. */
static void set_persisted(json_t *o, const struct lx_conf *conf)
{
    json_object_set_new(o, "persisted", json_boolean(conf->config_path != NULL));
    if (!conf->config_path)
        json_object_set_new(o, "note",
                            json_string("llmux was started without a config file: this change "
                                        "lasts until it restarts"));
}

/* ---- operations (threadpool, under the lock) --------------------------- */

/* Nodes new in <reg> whose name is drained in <prev> start drained: drain
 * is by name and outlives pool changes until enable. */
static void carry_drained(struct lx_registry *reg, struct lx_registry *prev)
{
    for (size_t i = 0; i < reg->n_pools; i++) {
        for (size_t k = 0; k < reg->pools[i].n_nodes; k++) {
            struct lx_node *n = reg->pools[i].nodes[k];

            for (size_t j = 0; prev && j < prev->n_pools; j++)
                for (size_t m = 0; m < prev->pools[j].n_nodes; m++) {
                    struct lx_node *o = prev->pools[j].nodes[m];

                    if (o != n && atomic_load(&o->drained) && strcmp(o->name, n->name) == 0)
                        atomic_store(&n->drained, true);
                }
        }
    }
}

#define INSTALL_WAIT_NS (5 * 1000000000ULL)

/* An admin call waiting for lx_gateway_install()'s completion (every worker
 * has switched). Shared with the callback, which outlives a wait that gave
 * up. */
struct install_wait {
    uv_mutex_t lock;
    uv_cond_t cond;
    bool done;
    int refs;
};

static void install_wait_unref(struct install_wait *iw)
{
    bool last;

    uv_mutex_lock(&iw->lock);
    last = --iw->refs == 0;
    uv_mutex_unlock(&iw->lock);
    if (!last)
        return;
    uv_cond_destroy(&iw->cond);
    uv_mutex_destroy(&iw->lock);
    free(iw);
}

static void on_installed(void *arg)
{
    struct install_wait *iw = arg;

    uv_mutex_lock(&iw->lock);
    iw->done = true;
    uv_cond_signal(&iw->cond);
    uv_mutex_unlock(&iw->lock);
    install_wait_unref(iw);
}

/* Installs <reg> and waits until every worker uses it, or 5 s (a worker
 * that cannot take it then is stuck anyway; the admin API must not be). */
static void install_and_wait(struct lx_gateway *gw, struct lx_registry *reg, const char *rid)
{
    struct install_wait *iw = lx_calloc(1, sizeof(*iw));
    uint64_t deadline = uv_hrtime() + INSTALL_WAIT_NS;
    bool done;

    uv_mutex_init(&iw->lock);
    uv_cond_init(&iw->cond);
    iw->refs = 2;
    lx_gateway_install(gw, reg, on_installed, iw);
    uv_mutex_lock(&iw->lock);
    while (!iw->done) {
        uint64_t now = uv_hrtime();

        if (now >= deadline || uv_cond_timedwait(&iw->cond, &iw->lock, deadline - now) != 0)
            break;
    }
    done = iw->done;
    uv_mutex_unlock(&iw->lock);
    if (!done)
        lx_warn("admin: not every worker has taken the new pools after 5 s [request %s]", rid);
    install_wait_unref(iw);
}

/*
 * Applies a change to the pool list: the pool at <at> (st.n = a new one) is
 * replaced by <np> with file entry <nsrc>, or removed when <np> is NULL.
 * Steps 2-4 of the file comment. Takes <np>'s contents and <nsrc> whatever
 * happens. Returns 0, or a negative error with the job's error set.
 */
static int change(struct admin_job *job, size_t at, struct lx_conf_pool *np, json_t *nsrc)
{
    struct lx_gateway *gw = job->w->gw;
    struct lx_conf conf = *gw->conf; /* non-pool settings; nothing here is freed */
    const char *model = np ? np->model : st.pools[at].model;
    size_t n = st.n + (at == st.n) - (np == NULL), k = 0;
    struct lx_conf_pool *pools = lx_calloc(n + 1, sizeof(*pools));
    json_t **src = lx_calloc(n + 1, sizeof(*src));
    struct lx_registry *reg;
    char err[400];
    int rc = 0;

    for (size_t i = 0; i <= st.n; i++) {
        if (i == at && np) {
            pools[k] = *np;
            src[k++] = nsrc;
        } else if (i < st.n && i != at) {
            pools[k] = st.pools[i];
            src[k++] = st.src[i];
        }
    }
    LX_ASSERT(k == n);
    conf.pools = pools;
    conf.n_pools = n;
    reg = lx_router_registry_new(&conf, gw->reg, err, sizeof(err));
    if (!reg) {
        job_error(job, 400, "invalid_request_error", "invalid_pool", "%s", err);
        rc = LX_EINVAL;
        goto out_error;
    }
    carry_drained(reg, gw->reg);
    if (gw->conf->config_path)
        rc = lx_conf_file_set_model(gw->conf->config_path, model, np ? nsrc : NULL, err,
                                    sizeof(err));
    if (rc < 0) {
        lx_error("admin: change of model %s refused, the config file was not written: %s "
                 "[request %s]",
                 model, err, job->rid);
        job_error(job, 500, "server_error", "config_write_failed", "the change was not applied: %s",
                  err);
        lx_registry_unref(reg);
        goto out_error;
    }
    /* The answer leaves once every worker has switched, so the client's next
     * request sees the change. */
    install_and_wait(gw, reg, job->rid);
    lx_registry_unref(reg);
    if (at < st.n) {
        lx_conf_pool_free(&st.pools[at]);
        json_decref(st.src[at]);
    }
    free(st.pools);
    free(st.src);
    st.pools = pools;
    st.src = src;
    st.n = n;
    return 0;

out_error:
    if (np)
        lx_conf_pool_free(np);
    json_decref(nsrc);
    free(pools);
    free(src);
    return rc;
}

static void answer_pool(struct admin_job *job, int status, size_t i, bool mutation)
{
    job->status = status;
    job->result = pool_json(job->w->gw, &st.pools[i]);
    if (mutation)
        set_persisted(job->result, job->w->gw->conf);
}

static void op_list(struct admin_job *job)
{
    const struct lx_conf *conf = job->w->gw->conf;
    json_t *models = json_array();

    for (size_t i = 0; i < st.n; i++)
        json_array_append_new(models, pool_json(job->w->gw, &st.pools[i]));
    job->status = 200;
    job->result = json_object();
    json_object_set_new(job->result, "models", models);
    json_object_set_new(job->result, "persistent", json_boolean(conf->config_path != NULL));
    json_object_set_new(job->result, "config_path",
                        conf->config_path ? json_string(conf->config_path) : json_null());
}

static void not_found(struct admin_job *job)
{
    job_error(job, 404, "invalid_request_error", "model_not_found",
              "The model `%.200s` does not exist.", job->name);
}

static void op_get(struct admin_job *job)
{
    size_t i = state_find(job->name);

    if (i == st.n)
        not_found(job);
    else
        answer_pool(job, 200, i, false);
}

static void op_create(struct admin_job *job)
{
    json_t *mn = json_object_get(job->body, "model_name"), *obj;
    struct lx_conf_pool np;
    char err[400];
    const char *name;

    if (!mn || !json_is_string(mn)) {
        job_error(job, 400, "invalid_request_error", "invalid_pool", "body.model_name: %s%s",
                  mn ? "expected a string, got " : "missing",
                  mn ? lx_conf_json_type(mn) : " (the model name clients will send)");
        return;
    }
    name = json_string_value(mn);
    if (state_find(name) < st.n) {
        job_error(job, 409, "invalid_request_error", "model_exists",
                  "the model `%.200s` already exists (PUT /admin/models/{name} changes it)", name);
        return;
    }
    obj = json_deep_copy(job->body);
    json_object_del(obj, "model_name");
    if (lx_conf_pool_from_json(&np, name, obj, st.default_strategy, "body", err, sizeof(err)) < 0) {
        json_decref(obj);
        job_error(job, 400, "invalid_request_error", "invalid_pool", "%s", err);
        return;
    }
    if (change(job, st.n, &np, obj) < 0)
        return;
    lx_info("admin: model %s added (%zu servers, %s) [request %s]", st.pools[st.n - 1].model,
            st.pools[st.n - 1].n_servers, st.pools[st.n - 1].strategy, job->rid);
    answer_pool(job, 201, st.n - 1, true);
}

static void op_update(struct admin_job *job)
{
    size_t i = state_find(job->name);
    json_t *mn = json_object_get(job->body, "model_name"), *merged;
    struct lx_conf_pool np;
    const char *key;
    json_t *v;
    char err[400];

    if (i == st.n) {
        not_found(job);
        return;
    }
    if (mn && (!json_is_string(mn) || strcmp(json_string_value(mn), job->name) != 0)) {
        job_error(job, 400, "invalid_request_error", "invalid_pool",
                  "body.model_name: a pool cannot be renamed (DELETE it and POST it under the "
                  "new name)");
        return;
    }
    /* Only the keys given change; "servers" is replaced as a whole. */
    merged = json_deep_copy(st.src[i]);
    json_object_foreach(job->body, key, v)
    {
        if (strcmp(key, "model_name") != 0)
            json_object_set_new(merged, key, json_deep_copy(v));
    }
    if (lx_conf_pool_from_json(&np, job->name, merged, st.default_strategy, "body", err,
                               sizeof(err)) < 0) {
        json_decref(merged);
        job_error(job, 400, "invalid_request_error", "invalid_pool", "%s", err);
        return;
    }
    if (change(job, i, &np, merged) < 0)
        return;
    lx_info("admin: model %s changed (%zu servers, %s) [request %s]", st.pools[i].model,
            st.pools[i].n_servers, st.pools[i].strategy, job->rid);
    answer_pool(job, 200, i, true);
}

static void op_delete(struct admin_job *job)
{
    size_t i = state_find(job->name);

    if (i == st.n) {
        not_found(job);
        return;
    }
    if (st.n == 1) {
        /* llmux refuses to start without a pool: neither may the file. */
        job_error(job, 409, "invalid_request_error", "last_model",
                  "`%.200s` is the only model: llmux needs at least one (add another first)",
                  job->name);
        return;
    }
    if (change(job, i, NULL, NULL) < 0)
        return;
    lx_info("admin: model %s deleted [request %s]", job->name, job->rid);
    job->status = 200;
    job->result = json_object();
    json_object_set_new(job->result, "deleted", json_string(job->name));
    set_persisted(job->result, job->w->gw->conf);
}

static void op_drain(struct admin_job *job, bool drain)
{
    struct lx_registry *reg = job->w->gw->reg;
    json_t *nodes = json_array();

    for (size_t i = 0; i < reg->n_pools; i++) {
        for (size_t k = 0; k < reg->pools[i].n_nodes; k++) {
            struct lx_node *n = reg->pools[i].nodes[k];
            json_t *o;

            if (strcmp(n->name, job->name) != 0)
                continue;
            atomic_store(&n->drained, drain);
            o = json_object();
            json_object_set_new(o, "model", json_string(reg->pools[i].model));
            json_object_set_new(o, "url", json_string(n->url));
            json_object_set_new(o, "in_flight", json_integer(atomic_load(&n->in_flight)));
            json_array_append_new(nodes, o);
        }
    }
    if (json_array_size(nodes) == 0) {
        json_decref(nodes);
        job_error(job, 404, "invalid_request_error", "node_not_found", "no node is named `%.200s`",
                  job->name);
        return;
    }
    lx_info("admin: node %s %s (%zu in pools) [request %s]", job->name,
            drain ? "drained" : "enabled", json_array_size(nodes), job->rid);
    job->status = 200;
    job->result = json_object();
    json_object_set_new(job->result, "node", json_string(job->name));
    json_object_set_new(job->result, "drained", json_boolean(drain));
    json_object_set_new(job->result, "nodes", nodes);
    json_object_set_new(job->result, "persisted", json_false());
    json_object_set_new(job->result, "note",
                        json_string("drain is run-time state: it lasts until enable or a "
                                    "restart"));
}

static void on_work(uv_work_t *wk)
{
    struct admin_job *job = container_of(wk, struct admin_job, work);
    bool changes = job->op == OP_CREATE || job->op == OP_UPDATE || job->op == OP_DELETE;

    lx_admin_lock();
    if (!st.loaded)
        state_load(job->w->gw->conf);
    if (changes && st.shutdown) {
        job_error(job, 503, "server_error", "shutting_down",
                  "llmux is shutting down: pools cannot change now");
        goto out;
    }
    switch (job->op) {
    case OP_LIST:
        op_list(job);
        break;
    case OP_GET:
        op_get(job);
        break;
    case OP_CREATE:
        op_create(job);
        break;
    case OP_UPDATE:
        op_update(job);
        break;
    case OP_DELETE:
        op_delete(job);
        break;
    case OP_DRAIN:
    case OP_ENABLE:
        op_drain(job, job->op == OP_DRAIN);
        break;
    }
out:
    lx_admin_unlock();
    json_decref(job->body);
    job->body = NULL;
}

/* ---- HTTP (the worker's loop) ---------------------------------------- */

/* An error in OpenAI's shape with X-Request-Id (and WWW-Authenticate on
 * 401, Allow on 405). Ends the response. */
static void send_error(struct lx_worker *w, struct lx_http_req *req, const char *rid, int status,
                       const char *type, const char *code, const char *allow, const char *msg)
{
    struct lx_http_header h[2] = {{"X-Request-Id", 12, rid, strlen(rid)}};
    size_t n = 1;

    lx_gateway_account(w, req, rid, status);
    if (status == 401)
        h[n++] = (struct lx_http_header){"WWW-Authenticate", 16, "Bearer", 6};
    else if (allow)
        h[n++] = (struct lx_http_header){"Allow", 5, allow, strlen(allow)};
    lx_http_resp_error(req, status, type, code, h, n, "%s", msg);
}

/* Sends <j> (taken) as the JSON answer. */
static void send_json(struct lx_worker *w, struct lx_http_req *req, const char *rid, int status,
                      json_t *j)
{
    struct lx_http_header h[] = {{"X-Request-Id", 12, rid, strlen(rid)},
                                 {"Cache-Control", 13, "no-store", 8}};
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15));
    size_t len;

    json_decref(j);
    if (!text) {
        send_error(w, req, rid, 500, "server_error", "internal_error", NULL,
                   "cannot serialise the answer");
        return;
    }
    len = strlen(text);
    text = lx_realloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0';
    lx_gateway_account(w, req, rid, status);
    lx_http_resp_send(req, status, "application/json", h, ARRAY_SIZE(h), text, len);
    free(text);
}

static void job_free(struct admin_job *job)
{
    json_decref(job->body);
    json_decref(job->result);
    free(job->name);
    free(job);
}

static void on_client_abort(struct lx_http_req *req)
{
    struct admin_job *job = req->data;

    job->req = NULL;
}

static void on_after_work(uv_work_t *wk, int status)
{
    struct admin_job *job = container_of(wk, struct admin_job, work);
    struct lx_http_req *req = job->req;

    LX_UNUSED(status);
    if (!req) {
        lx_gateway_account(job->w, NULL, job->rid, 499);
    } else if (job->result) {
        req->on_abort = NULL;
        send_json(job->w, req, job->rid, job->status, job->result);
        job->result = NULL;
    } else {
        req->on_abort = NULL;
        send_error(job->w, req, job->rid, job->status, job->type, job->code, NULL, job->msg);
    }
    job_free(job);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes <len> bytes of a path segment; NULL when empty, badly
 * encoded, or holding a NUL. '+' stays '+' (a path, not a form). */
static char *path_decode(const char *s, size_t len)
{
    char *out = lx_malloc(len + 1);
    size_t k = 0;

    for (size_t i = 0; i < len; i++) {
        int hi, lo;

        if (s[i] != '%') {
            out[k++] = s[i];
            continue;
        }
        hi = i + 2 < len ? hex_value(s[i + 1]) : -1;
        lo = i + 2 < len ? hex_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            goto out_bad;
        out[k++] = (char)(hi << 4 | lo);
        i += 2;
    }
    if (k == 0)
        goto out_bad;
    out[k] = '\0';
    return out;

out_bad:
    free(out);
    return NULL;
}

static bool has_suffix(const char *s, size_t len, const char *suffix, size_t *stem)
{
    size_t n = strlen(suffix);

    if (len < n || memcmp(s + len - n, suffix, n) != 0)
        return false;
    *stem = len - n;
    return true;
}

/*
 * Maps the path after "/admin/" and the method to an operation in <job>.
 * Returns 0, or an HTTP status with <type>, <code>, <allow> and <msg> set.
 */
static int route(struct admin_job *job, const struct lx_http_req *req, const char *p, size_t len,
                 const char **code, const char **allow, const char **msg)
{
    int m = req->method;
    size_t stem;

    *code = "not_found";
    *allow = NULL;
    *msg = "no such admin endpoint";
    if ((len == 6 && memcmp(p, "models", 6) == 0) || (len == 7 && memcmp(p, "models/", 7) == 0)) {
        *allow = "GET, POST";
        if (m != HTTP_GET && m != HTTP_POST)
            goto out_method;
        job->op = m == HTTP_GET ? OP_LIST : OP_CREATE;
        return 0;
    }
    if (len > 7 && memcmp(p, "models/", 7) == 0) {
        *allow = "GET, PUT, DELETE";
        if (m != HTTP_GET && m != HTTP_PUT && m != HTTP_DELETE)
            goto out_method;
        job->op = m == HTTP_GET ? OP_GET : m == HTTP_PUT ? OP_UPDATE : OP_DELETE;
        job->name = path_decode(p + 7, len - 7);
        goto out_name;
    }
    if (len > 6 && memcmp(p, "nodes/", 6) == 0) {
        p += 6;
        len -= 6;
        if (has_suffix(p, len, "/drain", &stem))
            job->op = OP_DRAIN;
        else if (has_suffix(p, len, "/enable", &stem))
            job->op = OP_ENABLE;
        else
            return 404;
        *allow = "POST";
        if (m != HTTP_POST)
            goto out_method;
        job->name = path_decode(p, stem);
        goto out_name;
    }
    return 404;

out_name:
    if (job->name)
        return 0;
    *code = "invalid_name";
    *msg = "the name in the path is empty or badly percent-encoded";
    return 400;
out_method:
    *code = "method_not_allowed";
    *msg = "method not allowed on this admin endpoint";
    return 405;
}

void lx_admin_handle(struct lx_worker *w, struct lx_http_req *req, const char *rid)
{
    const char *token = w->gw->conf->admin_token;
    size_t plen = req->path_only_len;
    const char *code, *allow, *msg;
    struct admin_job *job;
    int status;

    if (!token || !*token) {
        send_error(w, req, rid, 403, "permission_error", "admin_disabled", NULL,
                   "the admin API is disabled: set ADMIN_TOKEN (or --admin-token) to enable it");
        return;
    }
    if (!lx_http_req_bearer_is(req, token)) {
        send_error(w, req, rid, 401, "invalid_request_error", "invalid_api_key", NULL,
                   "missing or invalid admin bearer token");
        return;
    }
    job = lx_calloc(1, sizeof(*job));
    job->w = w;
    job->req = req;
    snprintf(job->rid, sizeof(job->rid), "%s", rid);
    status = route(job, req, req->path + 7, plen - 7, &code, &allow, &msg);
    if (status) {
        send_error(w, req, rid, status, "invalid_request_error", code, allow, msg);
        job_free(job);
        return;
    }
    if (job->op == OP_CREATE || job->op == OP_UPDATE) {
        json_error_t je;
        char why[300];

        job->body = json_loadb(req->body.data ? req->body.data : "", req->body.len,
                               JSON_REJECT_DUPLICATES, &je);
        if (!job->body || !json_is_object(job->body)) {
            if (job->body)
                snprintf(why, sizeof(why), "the request body must be a JSON object, got %s",
                         lx_conf_json_type(job->body));
            else
                snprintf(why, sizeof(why),
                         "the request body must be a JSON object: %s (line %d, column %d)", je.text,
                         je.line, je.column);
            send_error(w, req, rid, 400, "invalid_request_error", "invalid_json", NULL, why);
            job_free(job);
            return;
        }
    }
    req->data = job;
    req->on_abort = on_client_abort;
    uv_queue_work(&w->loop, &job->work, on_work, on_after_work);
}
