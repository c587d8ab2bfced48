/*
 * health.c - active health checks and /metrics scrapes; see health.h.
 *
 * A 100 ms tick walks the watched nodes and starts what is due: a probe
 * (GET HEALTH_CHECK_PATH) every HEALTH_CHECK_INTERVAL_SECONDS, a scrape
 * (GET /metrics) every metrics interval of the node's pool. A probe answered
 * 2xx is a success; anything else (status, connect error, timeout) a failure.
 * HEALTH_FAILURE_THRESHOLD failures in a row mark the node unhealthy,
 * HEALTH_RECOVERY_THRESHOLD successes bring it back (with slow start, see
 * node.c). A scrape that fails or yields no vLLM figure leaves the old
 * figures to go stale, and routing then falls back to gateway-side counts.
 *
 * Registry changes arrive through an async handle; nodes that stay (same
 * object) keep their probe state.
 */
#include "health.h"

#include <string.h>
#include <uv.h>

#include "../core/log.h"
#include "prom.h"

#define TICK_MS 100 /* re-check of an exchange that was still busy when due */
#define SCRAPE_MAX_BYTES (8u << 20)

struct hnode;

struct hx {                          /* one exchange: a probe or a scrape */
    struct hnode *hn;
    struct lx_upstream_req ur;
    struct lx_buf head;              /* request head */
    struct lx_buf body;              /* response body (scrapes) */
    char *url;                       /* what is requested, for messages */
    bool busy;
    bool is_scrape;
    int status;                      /* response status, 0 = none yet */
    uint64_t next_ms;                /* when it is due next */
};

struct hnode {
    struct lx_health *h;
    struct lx_node *node;            /* reference */
    double scrape_interval_s;
    int ok_run, fail_run;            /* probe results in a row */
    struct hx probe, scrape;
};

struct lx_health {
    const struct lx_conf *conf;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_timer_t tick;
    uv_async_t wake;                 /* registry change or stop */
    uv_mutex_t lock;
    struct lx_registry *pending;     /* under lock: a new registry to watch */
    bool stop;                       /* under lock */
    struct lx_upstream_pool *pool;
    struct hnode **nodes;
    size_t n_nodes;
};

static const struct lx_upstream_cbs hx_cbs;

static void hx_init(struct hx *x, struct hnode *hn, bool is_scrape, const char *path)
{
    const struct lx_node *n = hn->node;

    x->hn = hn;
    x->is_scrape = is_scrape;
    lx_buf_init(&x->head, 0);
    lx_buf_init(&x->body, SCRAPE_MAX_BYTES);
    x->url = lx_malloc(strlen(n->host_header) + strlen(n->base_path) + strlen(path) + 8);
    sprintf(x->url, "http://%s%s%s", n->host_header, n->base_path, path);
    lx_buf_appendf(&x->head, "GET %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: llmux/%s\r\n",
                   n->base_path, path, n->host_header, LX_VERSION);
    if (n->auth_header)
        lx_buf_appendf(&x->head, "Authorization: %s\r\n", n->auth_header);
    lx_buf_append(&x->head, "\r\n", 2);
}

static struct hnode *hnode_new(struct lx_health *h, struct lx_node *node, double scrape_s)
{
    struct hnode *hn = lx_calloc(1, sizeof(*hn));
    uint64_t now = lx_now_ms();

    hn->h = h;
    hn->node = lx_node_ref(node);
    hn->scrape_interval_s = scrape_s;
    hx_init(&hn->probe, hn, false, h->conf->health_check_path);
    hx_init(&hn->scrape, hn, true, "/metrics");
    hn->probe.next_ms = now;
    hn->scrape.next_ms = now;
    return hn;
}

static void hnode_free(struct hnode *hn)
{
    lx_buf_deinit(&hn->probe.head);
    lx_buf_deinit(&hn->probe.body);
    lx_buf_deinit(&hn->scrape.head);
    lx_buf_deinit(&hn->scrape.body);
    free(hn->probe.url);
    free(hn->scrape.url);
    lx_node_unref(hn->node);
    free(hn);
}

static void hx_start(struct hx *x)
{
    const struct lx_conf *conf = x->hn->h->conf;
    double t = conf->health_check_timeout_s;
    struct lx_upstream_target target = lx_node_target(x->hn->node);

    x->busy = true;
    x->status = 0;
    lx_buf_reset(&x->body);
    x->ur.cbs = &hx_cbs;
    x->ur.ctx = x;
    x->ur.nbufs = 1;
    x->ur.bufs[0] = uv_buf_init(x->head.data, (unsigned int)x->head.len);
    x->ur.timeouts.connect_ms = (uint64_t)(LX_MIN(conf->connect_timeout_s, t) * 1000);
    x->ur.timeouts.first_byte_ms = (uint64_t)(t * 1000);
    x->ur.timeouts.idle_ms = (uint64_t)(t * 1000);
    lx_upstream_send(x->hn->h->pool, &target, &x->ur);
}

/* <why>: what failed, naming the URL and the status or the cause; kept as
 * the node's last error (interned: other threads read it). */
static void probe_result(struct hnode *hn, bool ok, const char *why)
{
    const struct lx_conf *conf = hn->h->conf;
    struct lx_node *n = hn->node;

    if (ok) {
        hn->fail_run = 0;
        hn->ok_run++;
        lx_node_note_probe(n, 0);
        if (!atomic_load(&n->healthy) && hn->ok_run >= conf->health_recovery_threshold)
            lx_node_set_healthy(n, true, NULL);
        return;
    }
    hn->ok_run = 0;
    hn->fail_run++;
    lx_node_note_probe(n, hn->fail_run);
    why = lx_intern(why);
    if (!why)
        why = "health check failed";
    lx_debug("node %s: %s (%d in a row)", n->name, why, hn->fail_run);
    if (hn->fail_run >= conf->health_failure_threshold)
        lx_node_set_healthy(n, false, why);
}

static void scrape_result(struct hnode *hn, struct hx *x)
{
    struct lx_vllm_load load;
    struct lx_node *n = hn->node;

    if (x->status != 200 || lx_prom_scan_vllm(x->body.data, x->body.len, &load) < 0) {
        lx_debug("scrape of %s gave no vLLM figures (status %d)", x->url, x->status);
        return;
    }
    atomic_store(&n->scraped_waiting, (int)load.waiting);
    atomic_store(&n->scraped_running, (int)load.running);
    atomic_store(&n->scraped_kv_milli, (int)(load.kv_usage * 1000 + 0.5));
    if (load.has_cache_tokens)
        atomic_store(&n->scraped_cache_tokens, (uint64_t)load.cache_tokens);
    if (load.has_prefix_queries) {
        uint64_t q = (uint64_t)load.prefix_queries;

        /* A counter that went back: the engine restarted, its cache is empty. */
        if (q < atomic_exchange(&n->scraped_prefix_queries, q))
            atomic_fetch_add(&n->cache_gen, 1);
        atomic_store(&n->scraped_has_prefix_queries, true);
    }
    if (load.has_prefix_hits) {
        atomic_store(&n->scraped_prefix_hits, (uint64_t)load.prefix_hits);
        atomic_store(&n->scraped_has_prefix_hits, true);
    }
    atomic_store(&n->scraped_at_ms, lx_now_ms());
}

/* <why>: the failure when not <ok> ("connection refused"). */
static void hx_finish(struct hx *x, bool ok, const char *why)
{
    struct hnode *hn = x->hn;
    char msg[1024];

    x->busy = false;
    if (x->is_scrape) {
        if (ok)
            scrape_result(hn, x);
        return;
    }
    if (ok && x->status >= 200 && x->status < 300) {
        probe_result(hn, true, NULL);
        return;
    }
    if (ok)
        snprintf(msg, sizeof(msg), "health check of %s answered %d", x->url, x->status);
    else
        snprintf(msg, sizeof(msg), "health check of %s failed: %s", x->url, why);
    probe_result(hn, false, msg);
}

static void hx_on_head(void *ctx, int status, const struct lx_http_header *hdrs, size_t n,
                       int64_t clen)
{
    struct hx *x = ctx;

    x->status = status;
}

static void hx_on_body(void *ctx, const char *data, size_t len)
{
    struct hx *x = ctx;

    if (x->is_scrape && lx_buf_append(&x->body, data, len) < 0) {
        lx_upstream_cancel(&x->ur);
        hx_finish(x, false, "metrics too large");
    }
}

static void hx_on_done(void *ctx)
{
    hx_finish(ctx, true, NULL);
}

static void hx_on_error(void *ctx, enum lx_upstream_err kind, bool got_head)
{
    struct hx *x = ctx;

    hx_finish(x, false,
              kind == LX_UP_TIMEOUT || kind == LX_UP_IDLE
                  ? "timed out (HEALTH_CHECK_TIMEOUT_SECONDS)"
                  : lx_upstream_cause(kind, x->ur.uv_err));
}

static const struct lx_upstream_cbs hx_cbs = {
    .on_head = hx_on_head,
    .on_body = hx_on_body,
    .on_done = hx_on_done,
    .on_error = hx_on_error,
};

/* Starts what is due and sleeps until the next thing is (no idle ticking).
 * An exchange still in flight when due is looked at again a tick later. */
static void on_tick(uv_timer_t *t)
{
    struct lx_health *h = container_of(t, struct lx_health, tick);
    uint64_t now = lx_now_ms(), next = now + 60000;
    uint64_t probe_ms = (uint64_t)(h->conf->health_check_interval_s * 1000);

    for (size_t i = 0; i < h->n_nodes; i++) {
        struct hnode *hn = h->nodes[i];

        if (now >= hn->probe.next_ms) {
            if (!hn->probe.busy) {
                hn->probe.next_ms = now + probe_ms;
                hx_start(&hn->probe);
            } else {
                hn->probe.next_ms = now + TICK_MS;
            }
        }
        if (now >= hn->scrape.next_ms) {
            if (!hn->scrape.busy) {
                hn->scrape.next_ms = now + (uint64_t)(hn->scrape_interval_s * 1000);
                hx_start(&hn->scrape);
            } else {
                hn->scrape.next_ms = now + TICK_MS;
            }
        }
        next = LX_MIN(next, LX_MIN(hn->probe.next_ms, hn->scrape.next_ms));
    }
    uv_timer_start(&h->tick, on_tick, next > now ? next - now : 1, 0);
}

/* Drops a watched node; an exchange in flight is cancelled first. */
static void hnode_drop(struct hnode *hn)
{
    if (hn->probe.busy) {
        lx_upstream_cancel(&hn->probe.ur);
        hn->probe.busy = false;
    }
    if (hn->scrape.busy) {
        lx_upstream_cancel(&hn->scrape.ur);
        hn->scrape.busy = false;
    }
    hnode_free(hn);
}

static void watch(struct lx_health *h, struct lx_registry *reg)
{
    struct hnode **next = NULL;
    size_t n = 0, cap = 0;

    for (size_t i = 0; i < reg->n_pools; i++) {
        const struct lx_pool *p = &reg->pools[i];
        double scrape_s = p->metrics_update_interval_s;

        for (size_t k = 0; k < p->n_nodes; k++) {
            struct hnode *hn = NULL;

            /* Keep the state of nodes that stay. */
            for (size_t j = 0; j < h->n_nodes; j++) {
                if (h->nodes[j] && h->nodes[j]->node == p->nodes[k]) {
                    hn = h->nodes[j];
                    h->nodes[j] = NULL;
                    break;
                }
            }
            if (!hn)
                hn = hnode_new(h, p->nodes[k], scrape_s);
            hn->scrape_interval_s = scrape_s;
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                next = lx_realloc(next, cap * sizeof(*next));
            }
            next[n++] = hn;
        }
    }
    for (size_t j = 0; j < h->n_nodes; j++)
        if (h->nodes[j])
            hnode_drop(h->nodes[j]);
    free(h->nodes);
    h->nodes = next;
    h->n_nodes = n;
}

static void on_handle_closed(uv_handle_t *hd)
{
    LX_UNUSED(hd);
}

static void on_wake(uv_async_t *a)
{
    struct lx_health *h = container_of(a, struct lx_health, wake);
    struct lx_registry *reg;
    bool stop;

    uv_mutex_lock(&h->lock);
    reg = h->pending;
    h->pending = NULL;
    stop = h->stop;
    uv_mutex_unlock(&h->lock);
    if (reg) {
        watch(h, reg);
        lx_registry_unref(reg);
        uv_timer_start(&h->tick, on_tick, 0, 0);
    }
    if (stop) {
        for (size_t j = 0; j < h->n_nodes; j++)
            hnode_drop(h->nodes[j]);
        h->n_nodes = 0;
        uv_close((uv_handle_t *)&h->tick, on_handle_closed);
        uv_close((uv_handle_t *)&h->wake, on_handle_closed);
        lx_upstream_pool_close(h->pool);
    }
}

static void health_main(void *arg)
{
    struct lx_health *h = arg;

    uv_run(&h->loop, UV_RUN_DEFAULT);
}

struct lx_health *lx_health_start(const struct lx_conf *conf, struct lx_registry *reg)
{
    struct lx_health *h = lx_calloc(1, sizeof(*h));

    h->conf = conf;
    uv_loop_init(&h->loop);
    uv_mutex_init(&h->lock);
    uv_timer_init(&h->loop, &h->tick);
    uv_async_init(&h->loop, &h->wake, on_wake);
    h->pool = lx_upstream_pool_new(&h->loop, 4000);
    watch(h, reg);
    uv_timer_start(&h->tick, on_tick, 0, 0);
    if (uv_thread_create(&h->thread, health_main, h) < 0) {
        lx_error("cannot start the health check thread");
        return NULL;
    }
    return h;
}

void lx_health_set_registry(struct lx_health *h, struct lx_registry *reg)
{
    uv_mutex_lock(&h->lock);
    if (h->pending)
        lx_registry_unref(h->pending);
    h->pending = lx_registry_ref(reg);
    uv_mutex_unlock(&h->lock);
    uv_async_send(&h->wake);
}

void lx_health_stop(struct lx_health *h)
{
    if (!h)
        return;
    uv_mutex_lock(&h->lock);
    h->stop = true;
    uv_mutex_unlock(&h->lock);
    uv_async_send(&h->wake);
    uv_thread_join(&h->thread);
    if (h->pending)
        lx_registry_unref(h->pending);
    free(h->nodes);
    uv_loop_close(&h->loop);
    uv_mutex_destroy(&h->lock);
    free(h);
}
