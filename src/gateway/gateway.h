/*
 * gateway.h - the top layer: worker threads, the per-request dispatch, and
 * the installation of registry snapshots on every worker.
 *
 * struct lx_gateway is built once by main (config, node registry, start time)
 * and read by every worker. Each struct lx_worker runs one libuv loop on its
 * own thread with its own listener and its own upstream pool; nothing on a
 * request's path takes a lock. The layers below never see a worker: the
 * proxy gets its struct lx_proxy_env, the obs endpoints a struct lx_obs_view.
 */
#ifndef LX_GATEWAY_H
#define LX_GATEWAY_H

#include <uv.h>

#include "../admit/admit.h"
#include "../conf/conf.h"
#include "../core/mailbox.h"
#include "../http/server.h"
#include "../nodes/node.h"
#include "../proxy/proxy.h"

struct lx_health;

struct lx_gateway {
    const struct lx_conf *conf;      /* borrowed, immutable */
    struct lx_registry *reg;         /* newest snapshot (reference); replaced by
                                        lx_gateway_install() under the admin lock */
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
    struct lx_proxy_env env;         /* what this worker's requests use */
    struct lx_mailbox mailbox;       /* wakes and registry snapshots from other threads */
    bool stopping;
};

/* Binds every worker's listener (so errors show before anything runs), after
 * checking that no other process listens on the address (-EADDRINUSE);
 * 0 or -errno with <err> filled. */
int lx_gateway_init(struct lx_gateway *gw, const struct lx_conf *conf, struct lx_registry *reg,
                    char *err, size_t errlen);
/* Starts the worker threads. */
int lx_gateway_start(struct lx_gateway *gw);
/* Asks every worker to stop gracefully (call it from the main loop). */
void lx_gateway_stop(struct lx_gateway *gw);
/*
 * Makes <reg> the registry of new requests on every worker and on the
 * health thread (takes its own references). In-flight requests keep the
 * snapshot they started with. <done>, when not NULL, runs once every worker
 * has switched, on the thread of the last one; after it, every new request
 * uses <reg>. Any thread, under the admin lock (admin.h).
 */
void lx_gateway_install(struct lx_gateway *gw, struct lx_registry *reg, void (*done)(void *arg),
                        void *arg);
/* Sets the health thread (under the admin lock), and points it at the
 * newest snapshot. */
void lx_gateway_set_health(struct lx_gateway *gw, struct lx_health *health);
/* Joins the workers and frees their resources. */
void lx_gateway_join(struct lx_gateway *gw);

/* Counts and access-logs a request the gateway answered itself; <req> may
 * be NULL when its client is gone. */
void lx_gateway_account(struct lx_worker *w, struct lx_http_req *req, const char *rid,
                        int status);

#endif /* LX_GATEWAY_H */
