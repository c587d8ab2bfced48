/*
 * conf.c - configuration loading: the settings table, defaults, the layers in
 * order, validation and the pools. See conf.h for the contract and
 * docs/CONFIG.md for the user's view.
 *
 * Every setting is one row of lx_conf_settings: its environment variable,
 * JSON key, flag, kind (how it parses and validates) and field. The layers
 * only differ in where the text (or JSON value) comes from, so a setting
 * validates the same way and reports errors the same way ("<source>: <why>")
 * whichever layer sets it. A row's default is text too, parsed the same way
 * when a build starts: the table is the one place a default is written.
 *
 * Load order: argv is scanned first (--help/--version end the load there),
 * then the .env file is read, then the JSON file named by --config or
 * LLMUX_CONFIG is applied over the defaults, then the environment, then the
 * flags in argv order. Pools are finalised last: VLLM_NODES (from whichever
 * layer set it last) adds or replaces the pool for MODEL_NAME ("*" when
 * unset), and pools without a strategy take ROUTING_STRATEGY.
 */
#include "conf_internal.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../core/log.h"
#include "../core/lx.h"
#include "strategies.h"

extern char **environ;

#define F(field) offsetof(struct lx_conf, field)
#define SECS_MAX 86400LL /* one day: longer is a typo, and ms still fit anything */

/* clang-format off */
const struct lx_conf_setting lx_conf_settings[] = {
    {"LLMUX_CONFIG", NULL, NULL, "config", 0, "FILE", LX_CONF_K_CONFIG, LX_CONF_NOFIELD, 0, 0,
     NULL, "none", "JSON config file (docs/CONFIG.md)"},
    {"GATEWAY_HOST", "gateway_host", NULL, NULL, 0, NULL, LX_CONF_K_HOST, F(listen_host), 0, 0,
     "0.0.0.0", NULL, "address to listen on (IPv4, IPv6 or name)"},
    {"GATEWAY_PORT", "gateway_port", NULL, NULL, 0, NULL, LX_CONF_K_INT, F(listen_port), 0, 65535,
     "8000", NULL, "port to listen on, 0 = any free port"},
    {NULL, "listen", NULL, "listen", 0, "HOST:PORT", LX_CONF_K_LISTEN, LX_CONF_NOFIELD, 0, 65535,
     NULL, NULL, "HOST:PORT or [IPV6]:PORT; \":PORT\" keeps the host"},
    {"WORKERS", "workers", NULL, "workers", 0, "N", LX_CONF_K_INT, F(workers), 1, 256,
     NULL, "CPU count", "worker threads, 1..256"},
    {"VLLM_NODES", "vllm_nodes", NULL, "nodes", 0, "URL,URL", LX_CONF_K_NODES, LX_CONF_NOFIELD, 0,
     0, NULL, "none", "node URLs (http://host:port[/path]) of the pool for MODEL_NAME"},
    {"ROUTING_STRATEGY", "routing_strategy", "strategy", "strategy", 0, "NAME",
     LX_CONF_K_STRATEGY, F(strategy), 0, 0, "round_robin", NULL,
     "routing strategy of pools that name none (below)"},
    {"MODEL_NAME", "model_name", NULL, "model", 0, "NAME", LX_CONF_K_MODEL, F(model_name), 0, 0,
     NULL, "any model", "the model the VLLM_NODES pool serves"},
    {"CONNECT_TIMEOUT_SECONDS", "connect_timeout_seconds", NULL, "connect-timeout", 0, "S",
     LX_CONF_K_SECS, F(connect_timeout_s), 0, SECS_MAX, "10", NULL, "seconds to connect to a node"},
    {"NODE_TIMEOUT_SECONDS", "node_timeout_seconds", NULL, "node-timeout", 0, "S", LX_CONF_K_SECS,
     F(node_timeout_s), 0, SECS_MAX, "120", NULL, "seconds to a node's first response byte"},
    {"STREAM_IDLE_TIMEOUT_SECONDS", "stream_idle_timeout_seconds", NULL, "stream-idle-timeout", 0,
     "S", LX_CONF_K_SECS_OFF, F(stream_idle_timeout_s), 0, SECS_MAX, "120", NULL,
     "longest gap between a node's bytes after its response head, 0 = off"},
    {"QUEUE_TIMEOUT_SECONDS", "queue_timeout_seconds", NULL, "queue-timeout", 0, "S",
     LX_CONF_K_SECS, F(queue_timeout_s), 0, SECS_MAX, "30", NULL,
     "longest wait in the admission queue (then 503)"},
    {"REQUEST_TIMEOUT_SECONDS", "request_timeout_seconds", NULL, "request-timeout", 0, "S",
     LX_CONF_K_SECS, F(request_timeout_s), 0, SECS_MAX, "30", NULL,
     "seconds to read a client's request head and body, from its first byte (then 408)"},
    {"SEND_TIMEOUT_SECONDS", "send_timeout_seconds", NULL, "send-timeout", 0, "S",
     LX_CONF_K_SECS_OFF, F(send_timeout_s), 0, SECS_MAX, "60", NULL,
     "a client that takes no byte of its answer this long is closed, 0 = off"},
    {"KEEPALIVE_TIMEOUT_SECONDS", "keepalive_timeout_seconds", NULL, "keepalive-timeout", 0, "S",
     LX_CONF_K_SECS, F(keepalive_timeout_s), 0, SECS_MAX, "75", NULL,
     "idle client connections are closed after this"},
    {"SHUTDOWN_TIMEOUT_SECONDS", "shutdown_timeout_seconds", NULL, "shutdown-timeout", 0, "S",
     LX_CONF_K_SECS, F(shutdown_timeout_s), 0, SECS_MAX, "30", NULL,
     "graceful stop waits this long for requests in flight"},
    {"TOTAL_TIMEOUT_SECONDS", "total_timeout_seconds", NULL, "total-timeout", 0, "S",
     LX_CONF_K_SECS_OFF, F(total_timeout_s), 0, SECS_MAX, "0", NULL,
     "longest a request may take end to end, queue included, 0 = off"},
    {"MAX_RETRIES", "max_retries", NULL, "max-retries", 0, "N", LX_CONF_K_INT, F(max_retries), 0,
     100, "2", NULL, "retries on another node, 0..100"},
    {"STREAM_RESUME", "stream_resume", NULL, "stream-resume", 0, "on|off", LX_CONF_K_BOOL,
     F(stream_resume), 0, 0, "on", NULL,
     "a stream whose node fails mid-way goes on from another node (a retry)"},
    {"HEDGE_AFTER_SECONDS", "hedge_after_seconds", NULL, "hedge-after", 0, "S",
     LX_CONF_K_SECS_OFF, F(hedge_after_s), 0, SECS_MAX, "0", NULL,
     "no first byte after S seconds: ask a second node too, 0 = off"},
    {"RETRY_BUDGET_PERCENT", "retry_budget_percent", NULL, "retry-budget-percent", 0, "X",
     LX_CONF_K_NUM, F(retry_budget_percent), 0, 1000, "20", NULL,
     "retry budget: retries, hedges, resumes per 100 requests of a pool (10 s)"},
    {"RETRY_BUDGET_MIN_PER_SECOND", "retry_budget_min_per_second", NULL,
     "retry-budget-min-per-second", 0, "X", LX_CONF_K_NUM, F(retry_budget_min_per_s), 0,
     1000000, "1", NULL, "retry budget floor: X per second more, whatever the traffic"},
    {"HEALTH_CHECK_INTERVAL_SECONDS", "health_check_interval_seconds", NULL,
     "health-check-interval", 0, "S", LX_CONF_K_SECS, F(health_check_interval_s), 0, SECS_MAX,
     "15", NULL, "seconds between active health checks of a node"},
    {"HEALTH_FAILURE_THRESHOLD", "health_failure_threshold", NULL, "health-failure-threshold", 0,
     "N", LX_CONF_K_INT, F(health_failure_threshold), 1, 1000, "3", NULL,
     "failed checks in a row that mark a node unhealthy"},
    {"HEALTH_RECOVERY_THRESHOLD", "health_recovery_threshold", NULL, "health-recovery-threshold",
     0, "N", LX_CONF_K_INT, F(health_recovery_threshold), 1, 1000, "1", NULL,
     "good checks in a row that bring a node back"},
    {"HEALTH_CHECK_TIMEOUT_SECONDS", "health_check_timeout_seconds", NULL, "health-check-timeout",
     0, "S", LX_CONF_K_SECS, F(health_check_timeout_s), 0, SECS_MAX, "5", NULL,
     "a health check not answered in this time fails"},
    {"SLOW_START_SECONDS", "slow_start_seconds", NULL, "slow-start", 0, "S", LX_CONF_K_SECS_OFF,
     F(slow_start_s), 0, SECS_MAX, "10", NULL,
     "a node back in service ramps up to its full share over this, 0 = off"},
    {"EJECT_COOLDOWN_SECONDS", "eject_cooldown_seconds", NULL, "eject-cooldown", 0, "S",
     LX_CONF_K_SECS_OFF, F(eject_cooldown_s), 0, SECS_MAX, "5", NULL,
     "first ejection after HEALTH_FAILURE_THRESHOLD failed requests; doubles, max 60 s; 0 = off"},
    {"CACHE_AWARE_LOAD_FACTOR", "cache_aware_load_factor", NULL, "cache-aware-load-factor", 0, "X",
     LX_CONF_K_FLOAT, F(cache_aware_load_factor), 0, 1000, "2", NULL,
     "cache_aware: leave the prefix's node above X times the pool's average load"},
    {"CACHE_AWARE_LOAD_WEIGHT", "cache_aware_load_weight", NULL, "cache-aware-load-weight", 0,
     "X", LX_CONF_K_FLOAT, F(cache_aware_load_weight), 0, 1000000, "4", NULL,
     "cache_aware: what a request in flight on a node weighs, in prompt blocks it lacks"},
    {"CACHE_AWARE_PREFIX_BYTES", "cache_aware_prefix_bytes", NULL, "cache-aware-prefix-bytes", 0,
     "N", LX_CONF_K_INT, F(cache_aware_prefix_bytes), 128, 1 << 21, "2097152", NULL,
     "cache_aware: bytes of each prompt indexed (its first N)"},
    {"CACHE_AWARE_NODE_TOKENS", "cache_aware_node_tokens", NULL, "cache-aware-node-tokens", 0,
     "N", LX_CONF_K_INT, F(cache_aware_node_tokens), 1024, 1 << 30, "262144", NULL,
     "cache_aware: a node's prefix-cache size in tokens when it does not export "
     "vllm:cache_config_info"},
    {"CACHE_AWARE_INDEX_MAX_BLOCKS", "cache_aware_index_max_blocks", NULL,
     "cache-aware-index-max-blocks", 0, "N", LX_CONF_K_INT, F(cache_aware_index_max_blocks), 0,
     1 << 26, "1048576", NULL,
     "cache_aware: blocks indexed at most, all nodes together (32 bytes each)"},
    {"HEALTH_CHECK_PATH", "health_check_path", NULL, "health-check-path", 0, "PATH",
     LX_CONF_K_URLPATH, F(health_check_path), 0, 0, "/health", NULL, "path probed on each node"},
    {"METRICS_UPDATE_INTERVAL_SECONDS", "metrics_update_interval",
     "metrics_update_interval_seconds", "metrics-update-interval", 0, "S", LX_CONF_K_SECS,
     F(metrics_update_interval_s), 0, SECS_MAX, "10", NULL,
     "seconds between scrapes of the nodes' vLLM /metrics"},
    {"MAX_CONCURRENT_REQUESTS", "max_concurrent_requests", NULL, "max-concurrent", 0, "N",
     LX_CONF_K_INT, F(max_concurrent_requests), 1, 1000000, "256", NULL,
     "requests in flight to nodes, at most"},
    {"MAX_QUEUE_SIZE", "max_queue_size", NULL, "max-queue", 0, "N", LX_CONF_K_INT,
     F(max_queue_size), 0, 1000000, "1024", NULL,
     "requests waiting for a slot, 0 = no queue (then 429)"},
    {"MAX_CONNECTIONS", "max_connections", NULL, "max-connections", 0, "N", LX_CONF_K_INT,
     F(max_connections), 0, 100000000, "16384", NULL,
     "open client connections at most; at the limit accepting pauses, 0 = no limit"},
    {"MAX_BODY_BYTES", "max_body_bytes", NULL, "max-body-bytes", 0, "N", LX_CONF_K_U64,
     F(max_body_bytes), 1, 1LL << 40, "33554432", NULL, "largest request body (then 413)"},
    {"MAX_HEADER_BYTES", "max_header_bytes", NULL, "max-header-bytes", 0, "N", LX_CONF_K_U64,
     F(max_header_bytes), 1024, 16LL << 20, "65536", NULL, "largest request head (then 431)"},
    {"AUTH_TOKEN", "auth_token", NULL, "auth-token", 0, "TOKEN", LX_CONF_K_SECRET, F(auth_token),
     0, 0, NULL, "none (no client auth)", "clients send \"Authorization: Bearer TOKEN\""},
    {"ADMIN_TOKEN", "admin_token", NULL, "admin-token", 0, "TOKEN", LX_CONF_K_SECRET,
     F(admin_token), 0, 0, NULL, "none (admin API off)", "bearer token of the admin API"},
    {"LOG_LEVEL", "log_level", NULL, "log-level", 0, "LEVEL", LX_CONF_K_LOGLEVEL, F(log_level), 0,
     0, "info", NULL, "debug, info, warn or error"},
    {"ACCESS_LOG", "access_log", NULL, "access-log", 0, "PATH", LX_CONF_K_OPTSTR, F(access_log), 0,
     0, NULL, "off", "access log file, \"-\" = stdout"},
    {NULL, NULL, NULL, "check-config", 0, NULL, LX_CONF_K_CHECK, LX_CONF_NOFIELD, 0, 0, NULL, NULL,
     "validate, print the effective config (secrets masked) and exit"},
    {NULL, NULL, NULL, "help", 'h', NULL, LX_CONF_K_HELP, LX_CONF_NOFIELD, 0, 0, NULL, NULL,
     "print this help and exit"},
    {NULL, NULL, NULL, "version", 'V', NULL, LX_CONF_K_VERSION, LX_CONF_NOFIELD, 0, 0, NULL, NULL,
     "print \"llmux " LX_VERSION "\" and exit"},
};
/* clang-format on */

const size_t lx_conf_n_settings = ARRAY_SIZE(lx_conf_settings);

/* Every accepted strategy name and the canonical one it stands for. */
static const struct {
    const char *name;
    const char *canonical;
} strategies[] = {
#define STRATEGY(name) {#name, #name},
#define ALIAS(alias, name) {#alias, #name},
    LX_STRATEGIES(STRATEGY) LX_STRATEGY_ALIASES(ALIAS)
#undef STRATEGY
#undef ALIAS
};

const char *lx_conf_strategy_canonical(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(strategies); i++)
        if (strcmp(name, strategies[i].name) == 0)
            return strategies[i].canonical;
    return NULL;
}

void lx_conf_fmt(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const struct lx_conf_setting *lx_conf_setting_by_json(const char *key)
{
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];

        if ((s->json && strcmp(s->json, key) == 0) ||
            (s->json_alias && strcmp(s->json_alias, key) == 0))
            return s;
    }
    return NULL;
}

static char fold_char(char c, bool fold)
{
    return fold ? (char)toupper((unsigned char)c) : c;
}

/* Edit distance of two short names, capped at 9, for "did you mean":
 * insertions, deletions, substitutions and swaps of two neighbours
 * (optimal string alignment), so "STRATEGEY" and "stratgey" are one edit
 * from their setting. <fold>: compare ASCII letters in any case. */
static int distance(const char *a, const char *b, bool fold)
{
    size_t la = strlen(a), lb = strlen(b);
    int rows[3][64], *prev2 = rows[0], *prev = rows[1], *row = rows[2];

    if (la >= ARRAY_SIZE(rows[0]) || lb >= ARRAY_SIZE(rows[0]))
        return 9;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int *t;

        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            char ca = fold_char(a[i - 1], fold), cb = fold_char(b[j - 1], fold);
            int best = prev[j - 1] + (ca != cb);

            best = LX_MIN(best, prev[j] + 1);
            best = LX_MIN(best, row[j - 1] + 1);
            if (i > 1 && j > 1 && ca == fold_char(b[j - 2], fold) &&
                fold_char(a[i - 2], fold) == cb)
                best = LX_MIN(best, prev2[j - 2] + 1);
            row[j] = best;
        }
        t = prev2;
        prev2 = prev;
        prev = row;
        row = t;
    }
    return LX_MIN(prev[lb], 9);
}

const char *lx_conf_suggest(const char *name, bool flag)
{
    const char *best = NULL;
    /* Two edits away at most, three for longer names ("max_retry"). */
    int best_d = strlen(name) >= 8 ? 4 : 3;

    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];
        const char *cand[2] = {flag ? s->flag : s->json, flag ? NULL : s->json_alias};

        for (size_t k = 0; k < 2; k++) {
            int d = cand[k] ? distance(name, cand[k], false) : 9;

            if (d < best_d) {
                best = cand[k];
                best_d = d;
            }
        }
    }
    if (!flag && !best && distance(name, "models", false) < 3)
        best = "models";
    return best;
}

/* The known variable nearest to <name> (letters in any case), if it is at
 * most two edits away and <name> is long enough for that to mean a typo. */
static const char *env_nearest(const char *name)
{
    const char *best = NULL;
    int best_d = 3;

    if (strlen(name) < 6)
        return NULL;
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const char *env = lx_conf_settings[i].env;
        int d = env ? distance(name, env, true) : 9;

        if (d < best_d) {
            best = env;
            best_d = d;
        }
    }
    return best;
}

bool lx_conf_env_is_suspect(const char *name, const char **hint)
{
    const char *near;

    *hint = NULL;
    for (size_t i = 0; i < lx_conf_n_settings; i++)
        if (lx_conf_settings[i].env && strcmp(lx_conf_settings[i].env, name) == 0)
            return false;
    if (strncasecmp(name, "LLMUX_", 6) == 0) {
        /* LLMUX_WORKERS: the prefix is the mistake. */
        near = env_nearest(name + 6);
        *hint = near ? near : env_nearest(name);
        return true;
    }
    near = env_nearest(name);
    *hint = near;
    return near != NULL;
}

/* Warns about <name> (<where> it was set, then <name>) when it looks meant
 * for llmux but is none of its settings: ignored without a word otherwise. */
static void warn_if_suspect(const char *where, const char *name)
{
    const char *hint;

    if (!lx_conf_env_is_suspect(name, &hint))
        return;
    lx_warn("%s%s is not an llmux setting and is ignored (%s%s%s)", where, name,
            hint ? "did you mean " : "llmux --help lists them", hint ? hint : "", hint ? "?" : "");
}

/* Each variable of the environment and each key of <dotenv>. */
static void warn_unknown_env(char **envp, const struct lx_conf_dotenv *dotenv)
{
    char name[128], where[512];

    for (char **e = envp; e && *e; e++) {
        size_t n = strcspn(*e, "=");

        if (n == 0 || n >= sizeof(name))
            continue;
        memcpy(name, *e, n);
        name[n] = '\0';
        warn_if_suspect("environment variable ", name);
    }
    for (size_t i = 0; i < dotenv->n; i++) {
        snprintf(where, sizeof(where), "%s:%d: ", dotenv->path, dotenv->v[i].line);
        warn_if_suspect(where, dotenv->v[i].key);
    }
}

/* ---- storing values: range checks shared by the layers ---- */

void lx_conf_store_str(struct lx_conf_build *b, const struct lx_conf_setting *s, char *v)
{
    char **f = (char **)(void *)((char *)&b->conf + s->off);

    free(*f);
    *f = v;
}

const char *lx_conf_int_desc(const struct lx_conf_setting *s, char *buf, size_t len)
{
    if (s->min == 1 && s->max >= 1000000)
        return "a positive integer";
    if (s->min == 0 && s->max >= 1000000)
        return "a non-negative integer";
    snprintf(buf, len, "an integer in %lld..%lld", s->min, s->max);
    return buf;
}

const char *lx_conf_num_unit(const struct lx_conf_setting *s)
{
    return s->kind == LX_CONF_K_FLOAT || s->kind == LX_CONF_K_NUM ? "" : " of seconds";
}

int lx_conf_store_int(struct lx_conf_build *b, const struct lx_conf_setting *s, long long v,
                      const char *who, char *err, size_t errlen)
{
    char *field = (char *)&b->conf + s->off;

    if (v < s->min || v > s->max) {
        if (v < s->min && s->min == 1)
            lx_conf_fmt(err, errlen, "%s: expected a positive integer, got %lld", who, v);
        else if (v < s->min && s->min == 0)
            lx_conf_fmt(err, errlen, "%s: expected a non-negative integer, got %lld", who, v);
        else
            lx_conf_fmt(err, errlen, "%s: %lld is out of range (%lld..%lld)", who, v, s->min,
                        s->max);
        return LX_EINVAL;
    }
    if (s->kind == LX_CONF_K_U64)
        *(uint64_t *)(void *)field = (uint64_t)v;
    else
        *(int *)(void *)field = (int)v;
    return 0;
}

int lx_conf_store_secs(struct lx_conf_build *b, const struct lx_conf_setting *s, double v,
                       const char *who, char *err, size_t errlen)
{
    if (s->kind == LX_CONF_K_FLOAT && (v <= 0 || v > (double)s->max)) {
        lx_conf_fmt(err, errlen, "%s: expected a number > 0 and <= %lld, got %g", who, s->max, v);
        return LX_EINVAL;
    }
    if (s->kind == LX_CONF_K_NUM && (v < 0 || v > (double)s->max)) {
        lx_conf_fmt(err, errlen, "%s: expected a number in 0..%lld, got %g", who, s->max, v);
        return LX_EINVAL;
    }
    if (s->kind == LX_CONF_K_SECS && v <= 0) {
        lx_conf_fmt(err, errlen, "%s: expected seconds > 0, got %g", who, v);
        return LX_EINVAL;
    }
    if (v < 0) {
        lx_conf_fmt(err, errlen, "%s: expected seconds >= 0 (0 = off), got %g", who, v);
        return LX_EINVAL;
    }
    if (v > (double)s->max) {
        lx_conf_fmt(err, errlen, "%s: %g is out of range (at most %lld seconds)", who, v, s->max);
        return LX_EINVAL;
    }
    *(double *)(void *)((char *)&b->conf + s->off) = v;
    return 0;
}

void lx_conf_store_bool(struct lx_conf_build *b, const struct lx_conf_setting *s, bool v)
{
    *(bool *)(void *)((char *)&b->conf + s->off) = v;
}

void lx_conf_servers_free(struct lx_conf_server *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].url);
        free(v[i].name);
        free(v[i].host);
        free(v[i].base_path);
        free(v[i].api_key);
    }
    free(v);
}

void lx_conf_store_nodes(struct lx_conf_build *b, struct lx_conf_server *v, size_t n)
{
    lx_conf_servers_free(b->nodes, b->n_nodes);
    b->nodes = v;
    b->n_nodes = n;
    b->has_nodes = true;
}

/* "round_robin, least_loaded (<alias_word>least_connection), ...": the
 * strategies in list order, each alias in parentheses after its strategy. */
static void strategy_names(char *buf, size_t len, const char *alias_word)
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < ARRAY_SIZE(strategies); i++) {
        if (strcmp(strategies[i].name, strategies[i].canonical) != 0)
            continue;
        n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? ", " : "", strategies[i].name);
        for (size_t k = 0; k < ARRAY_SIZE(strategies); k++)
            if (k != i && strcmp(strategies[k].canonical, strategies[i].name) == 0)
                n += (size_t)snprintf(buf + n, len - n, " (%s%s)", alias_word, strategies[k].name);
        LX_ASSERT(n < len);
    }
}

static char strategy_list[256];
static pthread_once_t strategy_list_once = PTHREAD_ONCE_INIT;

static void strategy_list_build(void)
{
    strategy_names(strategy_list, sizeof(strategy_list), "");
}

const char *lx_conf_strategy_list(void)
{
    pthread_once(&strategy_list_once, strategy_list_build);
    return strategy_list;
}

/* ---- layers ---- */

static int cpu_count(void)
{
    cpu_set_t set;
    long n = 0;

    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    if (n <= 0)
        n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

/* Starts a build from the table's defaults, each parsed as if it came from
 * the environment, so a default cannot be a value the layers would refuse. */
static void build_init(struct lx_conf_build *b)
{
    char err[256];

    memset(b, 0, sizeof(*b));
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];

        if (s->def && lx_conf_set_text(b, s, s->def, "default", err, sizeof(err)) < 0) {
            lx_error("settings table: %s", err);
            LX_ASSERT(!"a default that does not parse");
        }
    }
    /* The one default that is not a constant. */
    b->conf.workers = cpu_count();
}

static void build_free(struct lx_conf_build *b)
{
    lx_conf_free(&b->conf);
    lx_conf_servers_free(b->nodes, b->n_nodes);
    b->nodes = NULL;
    b->n_nodes = 0;
}

/* A value from the environment layer: the real environment, else .env. */
static const char *env_value(char **envp, const struct lx_conf_dotenv *dotenv, const char *name,
                             int *line)
{
    const char *v = lx_conf_env_get(envp, name);

    *line = 0;
    if (!v)
        v = lx_conf_dotenv_get(dotenv, name, line);
    return v;
}

static int apply_env(struct lx_conf_build *b, char **envp, const struct lx_conf_dotenv *dotenv,
                     char *err, size_t errlen)
{
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];
        char who[512];
        const char *v;
        int line, rc;

        if (!s->env || s->kind == LX_CONF_K_CONFIG)
            continue;
        v = env_value(envp, dotenv, s->env, &line);
        /* An empty variable counts as unset, as in the seeds' `VAR=` lines. */
        if (!v || !*v)
            continue;
        if (line)
            lx_conf_fmt(who, sizeof(who), "%s:%d: %s", dotenv->path, line, s->env);
        else
            lx_conf_fmt(who, sizeof(who), "%s", s->env);
        rc = lx_conf_set_text(b, s, v, who, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

struct flag_use {
    const struct lx_conf_setting *s;
    const char *val; /* borrowed from argv; NULL for flags without a value */
};

struct args {
    struct flag_use *v;
    size_t n;
    bool help, version, check;
    const char *config; /* the last --config */
};

static const struct lx_conf_setting *flag_find(const char *name, size_t len, char short_flag)
{
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];

        if (short_flag && s->short_flag == short_flag)
            return s;
        if (!short_flag && s->flag && strlen(s->flag) == len && memcmp(s->flag, name, len) == 0)
            return s;
    }
    return NULL;
}

static void unknown_arg(const char *arg, char *err, size_t errlen)
{
    const char *hint;
    char name[64];

    if (arg[0] != '-') {
        lx_conf_fmt(err, errlen, "unexpected argument \"%s\" (see --help)", arg);
        return;
    }
    hint = NULL;
    if (arg[1] == '-') {
        lx_conf_fmt(name, sizeof(name), "%.*s", (int)strcspn(arg + 2, "="), arg + 2);
        hint = lx_conf_suggest(name, true);
    }
    if (hint)
        lx_conf_fmt(err, errlen, "unknown flag \"%s\" (did you mean --%s?)", arg, hint);
    else
        lx_conf_fmt(err, errlen, "unknown flag \"%s\" (see --help)", arg);
}

/*
 * Scans argv for flags and their values without applying anything. Keeps the
 * first error but goes on, so that --help anywhere still prints the help.
 */
static int args_scan(struct args *a, int argc, char **argv, char *err, size_t errlen)
{
    int rc = 0;

    memset(a, 0, sizeof(*a));
    a->v = lx_calloc((size_t)(argc > 0 ? argc : 1), sizeof(*a->v));
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const struct lx_conf_setting *s = NULL;
        const char *eq = NULL, *val = NULL;

        if (arg[0] == '-' && arg[1] == '-' && arg[2]) {
            eq = strchr(arg + 2, '=');
            s = flag_find(arg + 2, eq ? (size_t)(eq - arg - 2) : strlen(arg + 2), 0);
        } else if (arg[0] == '-' && arg[1] && arg[1] != '-' && !arg[2]) {
            s = flag_find(NULL, 0, arg[1]);
        }
        if (!s) {
            if (rc == 0)
                unknown_arg(arg, err, errlen);
            rc = LX_EINVAL;
            continue;
        }
        if (s->metavar) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            if (!val) {
                if (rc == 0)
                    lx_conf_fmt(err, errlen, "--%s: missing value (--%s %s)", s->flag, s->flag,
                                s->metavar);
                rc = LX_EINVAL;
                continue;
            }
        } else if (eq) {
            if (rc == 0)
                lx_conf_fmt(err, errlen, "--%s takes no value", s->flag);
            rc = LX_EINVAL;
            continue;
        }
        /* The first of --help and --version wins. */
        if (s->kind == LX_CONF_K_HELP)
            a->help = a->help || !a->version;
        else if (s->kind == LX_CONF_K_VERSION)
            a->version = a->version || !a->help;
        else if (s->kind == LX_CONF_K_CHECK)
            a->check = true;
        else if (s->kind == LX_CONF_K_CONFIG)
            a->config = val;
        else
            a->v[a->n++] = (struct flag_use){s, val};
    }
    return rc;
}

static int apply_flags(struct lx_conf_build *b, const struct args *a, char *err, size_t errlen)
{
    for (size_t i = 0; i < a->n; i++) {
        const struct lx_conf_setting *s = a->v[i].s;
        const char *v = a->v[i].val;
        char who[128];
        int rc;

        lx_conf_fmt(who, sizeof(who), "--%s", s->flag);
        if (!*v && s->kind != LX_CONF_K_OPTSTR && s->kind != LX_CONF_K_SECRET &&
            s->kind != LX_CONF_K_MODEL) {
            lx_conf_fmt(err, errlen, "%s: empty value", who);
            return LX_EINVAL;
        }
        rc = lx_conf_set_text(b, s, v, who, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* VLLM_NODES becomes the pool for MODEL_NAME; strategies get their default. */
static int finalize(struct lx_conf_build *b, char *err, size_t errlen)
{
    struct lx_conf *c = &b->conf;

    if (b->has_nodes) {
        const char *model = c->model_name ? c->model_name : "*";
        struct lx_conf_pool *p = NULL;

        for (size_t i = 0; i < c->n_pools; i++)
            if (strcmp(c->pools[i].model, model) == 0)
                p = &c->pools[i];
        if (p) {
            lx_conf_pool_free(p);
        } else {
            c->pools = lx_realloc(c->pools, (c->n_pools + 1) * sizeof(*c->pools));
            p = &c->pools[c->n_pools++];
            memset(p, 0, sizeof(*p));
        }
        p->model = lx_strdup(model);
        p->servers = b->nodes;
        p->n_servers = b->n_nodes;
        b->nodes = NULL;
        b->n_nodes = 0;
    }
    for (size_t i = 0; i < c->n_pools; i++)
        if (!c->pools[i].strategy)
            c->pools[i].strategy = lx_strdup(c->strategy);
    if (c->n_pools == 0) {
        lx_conf_fmt(err, errlen,
                    "no nodes configured: set VLLM_NODES, --nodes or a config file with models");
        return LX_EINVAL;
    }
    /* One token for both would give every client the admin API. */
    if (c->admin_token && *c->admin_token && c->auth_token &&
        strcmp(c->admin_token, c->auth_token) == 0) {
        lx_conf_fmt(err, errlen, "ADMIN_TOKEN must differ from AUTH_TOKEN: with the same "
                                 "token every client could change the pools");
        return LX_EINVAL;
    }
    return 0;
}

enum lx_conf_result lx_conf_load(struct lx_conf *out, int argc, char **argv, char **envp,
                                 const char *dotenv_path, char *err, size_t errlen)
{
    struct lx_conf_dotenv dotenv = {0};
    enum lx_conf_result res = LX_CONF_ERROR;
    struct lx_conf_build b;
    const char *config;
    struct args a;
    int line, rc;

    LX_ASSERT(lx_conf_n_settings <= ARRAY_SIZE(b.json_seen));
    if (err && errlen)
        err[0] = '\0';
    if (!envp)
        envp = environ;
    rc = args_scan(&a, argc, argv, err, errlen);
    if (a.help || a.version) {
        if (a.help)
            fputs(lx_conf_usage(), stdout);
        else
            printf("llmux %s\n", LX_VERSION);
        fflush(stdout);
        res = LX_CONF_EXIT;
        goto out_args;
    }
    if (rc < 0)
        goto out_args;
    if (lx_conf_dotenv_read(&dotenv, dotenv_path ? dotenv_path : ".env", err, errlen) < 0)
        goto out_args;
    warn_unknown_env(envp, &dotenv);

    build_init(&b);
    config = a.config;
    if (config && !*config) {
        lx_conf_fmt(err, errlen, "--config: empty value");
        goto out_build;
    }
    if (!config)
        config = env_value(envp, &dotenv, "LLMUX_CONFIG", &line);
    if (config && *config) {
        b.conf.config_path = lx_strdup(config);
        if (lx_conf_json_apply(&b, config, err, errlen) < 0)
            goto out_build;
    }
    if (apply_env(&b, envp, &dotenv, err, errlen) < 0)
        goto out_build;
    if (apply_flags(&b, &a, err, errlen) < 0)
        goto out_build;
    if (finalize(&b, err, errlen) < 0)
        goto out_build;

    *out = b.conf;
    memset(&b.conf, 0, sizeof(b.conf));
    res = a.check ? LX_CONF_CHECK : LX_CONF_OK;

out_build:
    build_free(&b);
    lx_conf_dotenv_free(&dotenv);
out_args:
    free(a.v);
    return res;
}

/* ---- the result ---- */

void lx_conf_pool_free(struct lx_conf_pool *pool)
{
    if (!pool)
        return;
    free(pool->model);
    free(pool->strategy);
    free(pool->upstream_model);
    lx_conf_servers_free(pool->servers, pool->n_servers);
    memset(pool, 0, sizeof(*pool));
}

void lx_conf_free(struct lx_conf *conf)
{
    if (!conf)
        return;
    for (size_t i = 0; i < conf->n_pools; i++)
        lx_conf_pool_free(&conf->pools[i]);
    free(conf->pools);
    free(conf->listen_host);
    free(conf->strategy);
    free(conf->model_name);
    free(conf->health_check_path);
    free(conf->auth_token);
    free(conf->admin_token);
    free(conf->log_level);
    free(conf->access_log);
    free(conf->config_path);
    memset(conf, 0, sizeof(*conf));
}

const struct lx_conf_pool *lx_conf_pool_find(const struct lx_conf *conf, const char *model,
                                             size_t model_len)
{
    const struct lx_conf_pool *any = NULL;

    for (size_t i = 0; i < conf->n_pools; i++) {
        const struct lx_conf_pool *p = &conf->pools[i];

        if (strlen(p->model) == model_len && memcmp(p->model, model, model_len) == 0)
            return p;
        if (!any && strcmp(p->model, "*") == 0)
            any = p;
    }
    return any;
}

void lx_conf_pools_describe(const struct lx_conf *conf, char *buf, size_t len)
{
    size_t n = 0;

    LX_ASSERT(len >= 64);
    n = (size_t)snprintf(buf, len, conf->n_pools == 1 ? "pool" : "pools");
    for (size_t i = 0; i < conf->n_pools; i++) {
        const struct lx_conf_pool *p = &conf->pools[i];
        bool any = strcmp(p->model, "*") == 0;
        char one[512];
        int k = snprintf(one, sizeof(one), "%s %s (%s%s, %zu node%s)", i ? "," : "", p->model,
                         any ? "any model, " : "", p->strategy, p->n_servers,
                         p->n_servers == 1 ? "" : "s");

        /* Room for this one and for ", and 999999 more" after it. */
        if (k < 0 || (size_t)k >= sizeof(one) || n + (size_t)k + 24 >= len) {
            snprintf(buf + n, len - n, ", and %zu more", conf->n_pools - i);
            return;
        }
        memcpy(buf + n, one, (size_t)k + 1);
        n += (size_t)k;
    }
}

char *lx_conf_dump(const struct lx_conf *conf)
{
    return lx_conf_json_dump(conf);
}

/* ---- --help ---- */

static char usage_text[12288];
static pthread_once_t usage_once = PTHREAD_ONCE_INIT;

static const struct lx_conf_setting *setting_by_field(size_t off)
{
    for (size_t i = 0; i < lx_conf_n_settings; i++)
        if (lx_conf_settings[i].off == off)
            return &lx_conf_settings[i];
    LX_ASSERT(!"no setting for the field");
    return NULL;
}

/* What --help shows as <s>'s default, NULL for none. --listen has no field of
 * its own: its default is that of GATEWAY_HOST and GATEWAY_PORT. */
static const char *default_text(const struct lx_conf_setting *s, char *buf, size_t len)
{
    if (s->kind == LX_CONF_K_LISTEN) {
        const char *host = setting_by_field(F(listen_host))->def;

        snprintf(buf, len, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host,
                 setting_by_field(F(listen_port))->def);
        return buf;
    }
    return s->def ? s->def : s->def_text;
}

static void usage_build(void)
{
    size_t len = 0, cap = sizeof(usage_text);
    char buf[128], line[512];
    const char *def;
    size_t col = 0, wl;

#define ADD(...)                                                                                   \
    do {                                                                                           \
        int k_ = snprintf(usage_text + len, cap - len, __VA_ARGS__);                               \
        if (k_ > 0)                                                                                \
            len = LX_MIN(cap - 1, len + (size_t)k_);                                               \
    } while (0)

    ADD("Usage: llmux [OPTIONS]\n"
        "llmux %s - an OpenAI-compatible LLM inference gateway.\n\n"
        "Settings, later wins: built-in defaults, the JSON file (--config or LLMUX_CONFIG),\n"
        "the environment (./.env is read first; real variables win over it), these flags.\n"
        "Flags take \"--flag VALUE\" or \"--flag=VALUE\". An empty variable counts as unset.\n"
        "Seconds (S) may have fractions. See docs/CONFIG.md.\n\nOptions:\n",
        LX_VERSION);
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];
        char head[80];

        if (!s->flag)
            continue;
        if (s->short_flag)
            snprintf(head, sizeof(head), "-%c, --%s", s->short_flag, s->flag);
        else
            snprintf(head, sizeof(head), "--%s%s%s", s->flag, s->metavar ? " " : "",
                     s->metavar ? s->metavar : "");
        ADD("  %-30s %s\n", head, s->help);
        def = default_text(s, buf, sizeof(buf));
        if (s->env && def)
            ADD("  %-30s env %s, default: %s\n", "", s->env, def);
        else if (def)
            ADD("  %-30s default: %s\n", "", def);
    }
    /* "Strategies: ..." wrapped at 80 columns. */
    wl = (size_t)snprintf(line, sizeof(line), "Strategies: ");
    strategy_names(line + wl, sizeof(line) - wl - 1, "alias ");
    strcat(line, ".");
    ADD("\n");
    for (const char *w = line; *w; w += wl + (w[wl] == ' ')) {
        wl = strcspn(w, " ");
        if (col > 0 && col + 1 + wl > 80) {
            ADD("\n");
            col = 0;
        } else if (col > 0) {
            ADD(" ");
            col++;
        }
        ADD("%.*s", (int)wl, w);
        col += wl;
    }
    ADD("\n");
    ADD("\nEnvironment variables without a flag:\n");
    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];

        if (s->flag || !s->env)
            continue;
        ADD("  %-30s %s\n  %-30s default: %s\n", s->env, s->help, "",
            default_text(s, buf, sizeof(buf)));
    }
#undef ADD
}

const char *lx_conf_usage(void)
{
    pthread_once(&usage_once, usage_build);
    return usage_text;
}
