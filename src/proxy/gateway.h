/*
 * gateway.h - the gateway's shared state and its worker threads.
 *
 * struct lx_gateway is built once by main (config, node registry, start time)
 * and read by every worker. Each struct lx_worker runs one libuv loop on its
 * own thread with its own SO_REUSEPORT listener and its own upstream pool;
 * nothing on a request's path takes a lock.
 */
#ifndef LX_GATEWAY_H
#define LX_GATEWAY_H

#include <uv.h>

#include "../admit/admit.h"
#include "../conf/conf.h"
#include "../http/server.h"
#include "../nodes/node.h"
#include "../http/upstream.h"

struct lx_health;

struct lx_gateway {
    const struct lx_conf *conf;      /* borrowed, immutable */
    struct lx_registry *reg;         /* newest snapshot (reference); replaced under the
                                        admin lock (lx_admin_lock, src/obs/admin.h) */
    struct lx_health *health;        /* the health thread, NULL until started; under the
                                        admin lock */
    uint64_t start_unix;             /* seconds since epoch at start */
    uint64_t start_hr_ns;            /* uv_hrtime() at start */
    int port;                        /* the port actually bound */
    struct lx_admit admit;           /* global in-flight limit and queue */
    _Atomic size_t n_conns;          /* open client connections, all workers
                                        (MAX_CONNECTIONS) */
    struct lx_worker *workers;
    int n_workers;
};

struct lx_worker {
    struct lx_gateway *gw;
    int index;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t stop_async;
    uv_timer_t grace_timer;
    struct lx_http_server *srv;
    struct lx_upstream_pool *pool;
    struct lx_metrics *metrics;      /* this worker's shard */
    struct lx_registry *reg;         /* this worker's current snapshot (reference) */
    struct lx_registry *next_reg;    /* under wake_lock: a newer snapshot to adopt */
    uint64_t rng;                    /* xorshift state, per worker */
    bool stopping;

    /* Mailbox: requests woken by other threads (admission granted, a node
     * freed capacity) are handed over here and resumed on this loop. */
    uv_async_t wake_async;
    uv_mutex_t wake_lock;
    struct lx_proxy *wake_head;      /* under wake_lock */
    struct lx_proxy *waiting;        /* requests in a queue, for timeouts */
    uv_timer_t wait_timer;           /* sweeps `waiting` while it is not empty */
};

struct lx_proxy;
struct lx_metrics;

/* Binds every worker's listener (so errors show before anything runs);
 * 0 or -errno with <err> filled. */
int lx_gateway_init(struct lx_gateway *gw, const struct lx_conf *conf, struct lx_registry *reg,
                    char *err, size_t errlen);
/* Starts the worker threads. */
int lx_gateway_start(struct lx_gateway *gw);
/* Asks every worker to stop gracefully (thread-safe, async-signal-safe is not
 * required: call it from the main loop). */
void lx_gateway_stop(struct lx_gateway *gw);
/* Makes <reg> the registry for new requests on every worker (any thread,
 * under the admin lock, src/obs/admin.h; takes a reference). In-flight requests keep the snapshot they started with. */
void lx_gateway_set_registry(struct lx_gateway *gw, struct lx_registry *reg);
/* Joins the workers and frees their resources. */
void lx_gateway_join(struct lx_gateway *gw);

/* Counts (metrics, rejections by status) and access-logs a request the
 * gateway answered itself; <req> may be NULL when its client is gone. */
void lx_gateway_account(struct lx_worker *w, struct lx_http_req *req, const char *rid,
                        int status);
/* The per-request handler behind every worker's server. */
void lx_gateway_handle(struct lx_http_req *req, void *worker);
/* Hands <p> to its worker's loop (any thread); lx_proxy_resume runs there. */
void lx_worker_wake(struct lx_worker *w, struct lx_proxy *p);
/* A random 64-bit number from the worker's generator. */
uint64_t lx_worker_rand(struct lx_worker *w);

#endif /* LX_GATEWAY_H */
