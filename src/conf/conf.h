/*
 * conf.h - llmux configuration: built-in defaults, then the JSON file
 * (LLMUX_CONFIG or --config), then the environment (a .env file in the working
 * directory first, real variables win over it), then command-line flags.
 * Later layers win. Validation names the key (or JSON path) and the reason;
 * a bad config never half-applies: lx_conf_load() fills <out> only on success.
 *
 * The result is immutable after load and may be read from any thread.
 */
#ifndef LX_CONF_H
#define LX_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef LX_VERSION
#define LX_VERSION "0.1.0"
#endif

struct json_t;

struct lx_conf_server {
    char *url;              /* "http://host:port" (http only); trailing '/' stripped */
    char *name;             /* defaults to the url */
    char *host;             /* parsed from url; IPv6 without brackets */
    int port;               /* parsed from url; 80 when absent */
    char *base_path;        /* path prefix from the url ("" when none) */
    int weight;             /* >= 1, default 1 */
    int max_concurrency;    /* 0 = unlimited */
    char *api_key;          /* sent as "Authorization: Bearer"; NULL = none */
};

struct lx_conf_pool {
    char *model;            /* the model name clients ask for; "*" = any model */
    char *strategy;         /* canonical strategy name, e.g. "round_robin" */
    char *upstream_model;   /* replaces "model" in the forwarded body; NULL = keep */
    double metrics_update_interval_s; /* per pool; 0 = use the global one */
    bool has_hedge_after;   /* "hedge_after_seconds" set for this pool; else HEDGE_AFTER_SECONDS */
    double hedge_after_s;   /* seconds, 0 = off; meaningful only when has_hedge_after */
    struct lx_conf_server *servers;
    size_t n_servers;
};

struct lx_conf {
    /* listener and process */
    char *listen_host;                  /* GATEWAY_HOST, default "0.0.0.0"; IPv6 unbracketed */
    int listen_port;                    /* GATEWAY_PORT, default 8000 */
    int workers;                        /* WORKERS, default: CPU count */

    /* pools */
    struct lx_conf_pool *pools;
    size_t n_pools;
    char *strategy;                     /* ROUTING_STRATEGY, default "round_robin" */
    char *model_name;                   /* MODEL_NAME; NULL = any model */

    /* timeouts, seconds (double: fractions allowed) */
    double connect_timeout_s;           /* CONNECT_TIMEOUT_SECONDS, default 10 */
    double node_timeout_s;              /* NODE_TIMEOUT_SECONDS (to first byte), default 120 */
    double stream_idle_timeout_s;       /* STREAM_IDLE_TIMEOUT_SECONDS, after the head, default 120 */
    double queue_timeout_s;             /* QUEUE_TIMEOUT_SECONDS, default 30 */
    double request_timeout_s;           /* REQUEST_TIMEOUT_SECONDS head+body read, default 30 */
    double send_timeout_s;              /* SEND_TIMEOUT_SECONDS, client not reading, default 60 */
    double keepalive_timeout_s;         /* KEEPALIVE_TIMEOUT_SECONDS, idle client conns, default 75 */
    double shutdown_timeout_s;          /* SHUTDOWN_TIMEOUT_SECONDS, graceful stop bound, default 30 */
    double total_timeout_s;             /* TOTAL_TIMEOUT_SECONDS, whole request, default 0 = off */

    /* retries, health */
    int max_retries;                    /* MAX_RETRIES, default 2 */
    bool stream_resume;                 /* STREAM_RESUME, continue broken streams, default on */
    double hedge_after_s;               /* HEDGE_AFTER_SECONDS, no first byte this long: a
                                           second node too; default 0 = off; per pool too */
    double retry_budget_percent;        /* RETRY_BUDGET_PERCENT, extra attempts per 100
                                           requests of a pool over 10 s, 0..1000, default 20 */
    double retry_budget_min_per_s;      /* RETRY_BUDGET_MIN_PER_SECOND, extra attempts a pool
                                           may always make per second, default 1, 0 = none */
    double health_check_interval_s;     /* HEALTH_CHECK_INTERVAL_SECONDS, default 15 */
    int health_failure_threshold;       /* HEALTH_FAILURE_THRESHOLD, default 3 */
    int health_recovery_threshold;      /* HEALTH_RECOVERY_THRESHOLD, default 1 */
    char *health_check_path;            /* HEALTH_CHECK_PATH, default "/health" */
    double health_check_timeout_s;      /* HEALTH_CHECK_TIMEOUT_SECONDS, default 5 */
    double slow_start_s;                /* SLOW_START_SECONDS, ramp after recovery, default 10, 0 = off */
    double eject_cooldown_s;            /* EJECT_COOLDOWN_SECONDS, passive ejection base, default 5, 0 = off */

    /* cache_aware strategy */
    double cache_aware_load_factor;     /* CACHE_AWARE_LOAD_FACTOR, default 2 */
    double cache_aware_load_weight;     /* CACHE_AWARE_LOAD_WEIGHT, default 4 */
    int cache_aware_prefix_bytes;       /* CACHE_AWARE_PREFIX_BYTES, default 2 MiB */
    int cache_aware_node_tokens;        /* CACHE_AWARE_NODE_TOKENS, default 262144 */
    int cache_aware_index_max_blocks;   /* CACHE_AWARE_INDEX_MAX_BLOCKS, default 1M */
    double metrics_update_interval_s;   /* METRICS_UPDATE_INTERVAL_SECONDS / "metrics_update_interval", default 10 */

    /* admission */
    int max_concurrent_requests;        /* MAX_CONCURRENT_REQUESTS, default 256 */
    int max_queue_size;                 /* MAX_QUEUE_SIZE, default 1024 */
    int max_connections;                /* MAX_CONNECTIONS, whole process, default 16384 */

    /* limits */
    uint64_t max_body_bytes;            /* MAX_BODY_BYTES, default 32 MiB */
    uint64_t max_header_bytes;          /* MAX_HEADER_BYTES, default 64 KiB */

    /* security */
    char *auth_token;                   /* AUTH_TOKEN; NULL = no client auth */
    char *admin_token;                  /* ADMIN_TOKEN; NULL = admin API disabled */

    /* logging */
    char *log_level;                    /* LOG_LEVEL: debug|info|warn|error, default "info" */
    char *access_log;                   /* ACCESS_LOG: path or "-"; NULL = off */

    char *config_path;                  /* the JSON file used, NULL if none */
};

enum lx_conf_result {
    LX_CONF_OK = 0,      /* run */
    LX_CONF_EXIT = 1,    /* --help / --version printed; exit 0 */
    LX_CONF_CHECK = 2,   /* --check-config: valid; caller prints and exits 0 */
    LX_CONF_ERROR = -1,  /* invalid; message in err */
};

/*
 * Loads the configuration from all layers. <envp> is the environment to use
 * (NULL = the process environment); <dotenv_path> the .env file to read (NULL
 * = "./.env"; a missing file is fine). On LX_CONF_ERROR, <err> holds one line
 * naming the key and the reason and <out> is untouched. On success <out> is
 * owned by the caller, released with lx_conf_free().
 */
enum lx_conf_result lx_conf_load(struct lx_conf *out, int argc, char **argv, char **envp,
                                 const char *dotenv_path, char *err, size_t errlen);
void lx_conf_free(struct lx_conf *conf);
/*
 * Writes the pools of <conf> for the ready line into <buf> (<len> >= 64):
 * "pools chat-m (round_robin, 2 nodes), * (any model, least_loaded, 1 node)";
 * pools that do not fit are counted (", and 3 more").
 */
void lx_conf_pools_describe(const struct lx_conf *conf, char *buf, size_t len);
/* The effective config as pretty JSON, secrets masked; caller frees. */
char *lx_conf_dump(const struct lx_conf *conf);
/* Canonical strategy name for <name> (aliases resolved), NULL if unknown. */
const char *lx_conf_strategy_canonical(const char *name);
/* Finds the pool serving <model> ("*" pools match anything); NULL if none. */
const struct lx_conf_pool *lx_conf_pool_find(const struct lx_conf *conf, const char *model,
                                             size_t model_len);
/* The --help text. */
const char *lx_conf_usage(void);

/*
 * Parses one pool for <model> from <obj>, a JSON object shaped like an entry
 * of the file's "models" map ({"servers": [...], "strategy", "upstream_model",
 * "metrics_update_interval", "hedge_after_seconds"}), with the file's
 * validation; for the admin API.
 * A missing "strategy" becomes <default_strategy> (NULL: stays NULL). <who> prefixes error
 * messages (e.g. "models.gpt-4"). Returns 0, or LX_EINVAL with one line in
 * <err> and <out> untouched. <obj> is borrowed; <out> is released with
 * lx_conf_pool_free().
 */
int lx_conf_pool_from_json(struct lx_conf_pool *out, const char *model, const struct json_t *obj,
                           const char *default_strategy, const char *who, char *err,
                           size_t errlen);
/* "an object", "a string", ...: a JSON value's type for error messages. */
const char *lx_conf_json_type(const struct json_t *v);
/* Frees what a pool owns (not <pool> itself) and zeroes it. */
void lx_conf_pool_free(struct lx_conf_pool *pool);

/* The "models" object of the config file at <path> (a new reference), or
 * NULL when there is no file, no such object, or the file does not parse. */
struct json_t *lx_conf_file_models(const char *path);
/*
 * Sets the config file's entry "models"[<model>] to <entry>, or removes it
 * when <entry> is NULL; every other key of the file is kept as it is on disk
 * now. The file is replaced atomically: a temporary file in the same
 * directory with the original's mode and owner, fsync, rename, fsync of the
 * directory. Returns 0, or a negative error with <err> filled (file
 * untouched). Blocks on the disk: not for a worker's loop.
 */
int lx_conf_file_set_model(const char *path, const char *model, struct json_t *entry, char *err,
                           size_t errlen);

#endif /* LX_CONF_H */
