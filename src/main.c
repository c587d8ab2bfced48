/*
 * main.c - llmux: parse the configuration, build the node registry, start
 * the workers, wait for SIGINT/SIGTERM, stop gracefully. Nothing else.
 */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <uv.h>

#include "conf/conf.h"
#include "core/log.h"
#include "gateway/admin.h"
#include "gateway/gateway.h"
#include "nodes/health.h"
#include "nodes/node.h"
#include "obs/access_log.h"
#include "route/prefix.h"
#include "route/router.h"

struct main_ctx {
    struct lx_gateway *gw;
    struct lx_health *health;
    uv_signal_t sigint, sigterm, sighup;
    int argc;
    char **argv;
    bool stopping;
};

/* SIGHUP: load the configuration again; a valid one replaces the pools for
 * new requests, an invalid one is refused and the running one stays. */
static void on_sighup(uv_signal_t *s, int signum)
{
    struct main_ctx *m = s->data;
    struct lx_conf next;
    struct lx_registry *reg;
    char err[512], pools[1536];

    /* The admin API replaces gw->reg too: one change at a time. */
    lx_admin_lock();
    if (lx_conf_load(&next, m->argc, m->argv, NULL, NULL, err, sizeof(err)) != LX_CONF_OK) {
        lx_admin_unlock();
        lx_error("reload refused, keeping the running configuration: %s", err);
        return;
    }
    reg = lx_router_registry_new(&next, m->gw->reg, err, sizeof(err));
    if (!reg) {
        lx_admin_unlock();
        lx_error("reload refused, keeping the running configuration: %s", err);
        lx_conf_free(&next);
        return;
    }
    lx_gateway_install(m->gw, reg, NULL, NULL);
    lx_admin_reloaded(&next);
    lx_admin_unlock();
    lx_conf_pools_describe(&next, pools, sizeof(pools));
    lx_info("configuration reloaded: %s (pools apply now; other settings at restart)", pools);
    lx_registry_unref(reg);
    lx_conf_free(&next);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct main_ctx *m = s->data;

    if (m->stopping) {
        lx_warn("second signal: exiting now");
        exit(1);
    }
    m->stopping = true;
    lx_info("received %s: finishing in-flight requests, then exiting",
            signum == SIGINT ? "SIGINT" : "SIGTERM");
    lx_admin_shutdown(); /* no pool change may reach workers that are closing */
    lx_gateway_stop(m->gw);
    /* Keep watching for a second signal, but do not keep the loop alive. */
    uv_unref((uv_handle_t *)&m->sigint);
    uv_unref((uv_handle_t *)&m->sigterm);
    uv_signal_stop(&m->sighup);
}

/* One descriptor per client and per pooled node connection: take the whole
 * hard limit (as HAProxy does), so a busy gateway is not capped at 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    struct lx_conf conf;
    struct lx_gateway gw;
    struct lx_registry *reg;
    struct main_ctx m = {0};
    struct lx_health *health;
    uv_loop_t *loop = uv_default_loop();
    char err[512], pools[1536];

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    switch (lx_conf_load(&conf, argc, argv, NULL, NULL, err, sizeof(err))) {
    case LX_CONF_OK:
        break;
    case LX_CONF_EXIT:
        return 0;
    case LX_CONF_CHECK: {
        char *dump = lx_conf_dump(&conf);

        printf("%s\n", dump);
        free(dump);
        lx_conf_free(&conf);
        return 0;
    }
    default:
        fprintf(stderr, "llmux: %s\n", err);
        return 1;
    }
    lx_log_set_level((enum lx_log_level)lx_log_level_parse(conf.log_level));
    lx_node_set_policy((uint64_t)(conf.slow_start_s * 1000), (uint64_t)(conf.eject_cooldown_s * 1000),
                       60000, conf.health_failure_threshold);
    lx_route_set_cache_policy(conf.cache_aware_load_factor, conf.cache_aware_load_weight,
                              (size_t)conf.cache_aware_prefix_bytes);
    lx_prefix_set_policy((uint64_t)conf.cache_aware_node_tokens,
                         (uint64_t)conf.cache_aware_index_max_blocks);
    if (lx_access_log_open(conf.access_log) < 0) {
        fprintf(stderr, "llmux: ACCESS_LOG: cannot open %s: %s\n", conf.access_log, strerror(errno));
        lx_conf_free(&conf);
        return 1;
    }
    reg = lx_router_registry_new(&conf, NULL, err, sizeof(err));
    if (!reg) {
        fprintf(stderr, "llmux: %s\n", err);
        lx_conf_free(&conf);
        return 1;
    }
    if (lx_gateway_init(&gw, &conf, reg, err, sizeof(err)) < 0) {
        fprintf(stderr, "llmux: %s\n", err);
        lx_registry_unref(reg);
        lx_conf_free(&conf);
        lx_access_log_close();
        return 1;
    }
    m.gw = &gw;
    m.argc = argc;
    m.argv = argv;
    uv_signal_init(loop, &m.sigint);
    uv_signal_init(loop, &m.sigterm);
    uv_signal_init(loop, &m.sighup);
    m.sigint.data = m.sigterm.data = m.sighup.data = &m;
    uv_signal_start(&m.sigint, on_signal, SIGINT);
    uv_signal_start(&m.sigterm, on_signal, SIGTERM);
    uv_signal_start(&m.sighup, on_sighup, SIGHUP);
    if (lx_gateway_start(&gw) < 0) {
        fprintf(stderr, "llmux: cannot start worker threads\n");
        return 1;
    }
    health = lx_health_start(&conf, reg);
    m.health = health;
    lx_admin_set_health(&gw, health);
    lx_conf_pools_describe(&conf, pools, sizeof(pools));
    lx_log_ready("llmux %s listening on http://%s:%d (%d worker%s): %s", LX_VERSION,
                 conf.listen_host, gw.port, gw.n_workers, gw.n_workers == 1 ? "" : "s", pools);
    uv_run(loop, UV_RUN_DEFAULT);
    lx_gateway_join(&gw);
    lx_health_stop(health);
    uv_close((uv_handle_t *)&m.sigint, NULL);
    uv_close((uv_handle_t *)&m.sigterm, NULL);
    uv_close((uv_handle_t *)&m.sighup, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    lx_registry_unref(reg);
    lx_conf_free(&conf);
    lx_access_log_close();
    lx_info("llmux stopped");
    return 0;
}
