/*
 * conf_json.c - the JSON config file layer, pools and servers from JSON, the dump.
 *
 * The file is one object. "models" maps a model name to a pool
 * ({"servers": [...], "strategy", "upstream_model", "metrics_update_interval",
 * "hedge_after_seconds"});
 * every other top-level key is a setting from the table in conf.c, named in
 * lowercase snake case ("max_retries", "listen", "vllm_nodes"...). Unknown
 * keys, wrong types, bad values and duplicate object keys are errors naming
 * the file and the JSON path ("config.json: models.gpt-4.servers[1].weight:
 * expected a positive integer, got 0"); syntax errors name line:column.
 */
#include "conf_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "../core/lx.h"

#define WEIGHT_MAX 1000000
#define MAX_CONCURRENCY_MAX 1000000
#define WHO_MAX 512

static bool has_ctl_str(const char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v < 0x20 || *v == 0x7f)
            return true;
    return false;
}

/* Takes a JSON string that may be null or empty (both mean unset). */
static int opt_string(json_t *v, const char *who, char **out, char *err, size_t errlen)
{
    const char *s;

    if (json_is_null(v)) {
        free(*out);
        *out = NULL;
        return 0;
    }
    if (!json_is_string(v)) {
        lx_conf_fmt(err, errlen, "%s: expected a string or null, got %s", who,
                    lx_conf_json_type(v));
        return LX_EINVAL;
    }
    s = json_string_value(v);
    if (has_ctl_str(s)) {
        lx_conf_fmt(err, errlen, "%s: contains control characters", who);
        return LX_EINVAL;
    }
    free(*out);
    *out = *s ? lx_strdup(s) : NULL;
    return 0;
}

static int json_int_range(json_t *v, const char *who, long long min, long long max, int *out,
                          char *err, size_t errlen)
{
    const char *desc = min == 1 ? "a positive integer" : "a non-negative integer";
    long long n;

    if (!json_is_integer(v)) {
        lx_conf_fmt(err, errlen, "%s: expected %s, got %s", who, desc, lx_conf_json_type(v));
        return LX_EINVAL;
    }
    n = json_integer_value(v);
    if (n < min) {
        lx_conf_fmt(err, errlen, "%s: expected %s, got %lld", who, desc, n);
        return LX_EINVAL;
    }
    if (n > max) {
        lx_conf_fmt(err, errlen, "%s: %lld is too large (at most %lld)", who, n, max);
        return LX_EINVAL;
    }
    *out = (int)n;
    return 0;
}

/* One entry of a "servers" array into <s> (zeroed by the caller). */
static int server_from_json(json_t *v, const char *who, struct lx_conf_server *s, char *err,
                            size_t errlen)
{
    char kwho[WHO_MAX], why[160];
    json_t *url;

    s->weight = 1;
    if (json_is_string(v)) {
        if (lx_conf_url_parse(s, json_string_value(v), why, sizeof(why)) < 0) {
            lx_conf_fmt(err, errlen, "%s: \"%.200s\": %s", who, json_string_value(v), why);
            return LX_EINVAL;
        }
        s->name = lx_strdup(s->url);
        return 0;
    }
    if (!json_is_object(v)) {
        lx_conf_fmt(err, errlen, "%s: expected a URL string or an object, got %s", who,
                    lx_conf_json_type(v));
        return LX_EINVAL;
    }
    url = json_object_get(v, "url");
    if (!url) {
        lx_conf_fmt(err, errlen, "%s: missing \"url\"", who);
        return LX_EINVAL;
    }
    for (void *it = json_object_iter(v); it; it = json_object_iter_next(v, it)) {
        const char *key = json_object_iter_key(it);
        json_t *kv = json_object_iter_value(it);
        lx_conf_fmt(kwho, sizeof(kwho), "%s.%s", who, key);
        if (strcmp(key, "url") == 0) {
            if (!json_is_string(kv)) {
                lx_conf_fmt(err, errlen, "%s: expected a URL string, got %s", kwho,
                            lx_conf_json_type(kv));
                return LX_EINVAL;
            }
            if (lx_conf_url_parse(s, json_string_value(kv), why, sizeof(why)) < 0) {
                lx_conf_fmt(err, errlen, "%s: \"%.200s\": %s", kwho, json_string_value(kv), why);
                return LX_EINVAL;
            }
        } else if (strcmp(key, "name") == 0) {
            if (!json_is_string(kv) || !*json_string_value(kv) ||
                has_ctl_str(json_string_value(kv))) {
                lx_conf_fmt(err, errlen, "%s: expected a non-empty string, got %s", kwho,
                            json_is_string(kv) ? "a bad one" : lx_conf_json_type(kv));
                return LX_EINVAL;
            }
            free(s->name);
            s->name = lx_strdup(json_string_value(kv));
        } else if (strcmp(key, "weight") == 0) {
            if (json_int_range(kv, kwho, 1, WEIGHT_MAX, &s->weight, err, errlen) < 0)
                return LX_EINVAL;
        } else if (strcmp(key, "max_concurrency") == 0) {
            if (json_int_range(kv, kwho, 0, MAX_CONCURRENCY_MAX, &s->max_concurrency, err, errlen) <
                0)
                return LX_EINVAL;
        } else if (strcmp(key, "api_key") == 0) {
            if (opt_string(kv, kwho, &s->api_key, err, errlen) < 0)
                return LX_EINVAL;
        } else {
            lx_conf_fmt(err, errlen,
                        "%s: unknown key (expected url, name, weight, max_concurrency, api_key)",
                        kwho);
            return LX_EINVAL;
        }
    }
    if (!s->name)
        s->name = lx_strdup(s->url);
    return 0;
}

int lx_conf_json_servers(json_t *arr, const char *who, struct lx_conf_server **out, size_t *n_out,
                         char *err, size_t errlen)
{
    struct lx_conf_server *v;
    char ewho[WHO_MAX];
    size_t n;

    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        lx_conf_fmt(err, errlen, "%s: expected a non-empty array of servers, got %s", who,
                    json_is_array(arr) ? "an empty one" : lx_conf_json_type(arr));
        return LX_EINVAL;
    }
    n = json_array_size(arr);
    v = lx_calloc(n, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        lx_conf_fmt(ewho, sizeof(ewho), "%s[%zu]", who, i);
        if (server_from_json(json_array_get(arr, i), ewho, &v[i], err, errlen) < 0) {
            lx_conf_servers_free(v, n);
            return LX_EINVAL;
        }
    }
    *out = v;
    *n_out = n;
    return 0;
}

int lx_conf_servers_check_unique(const struct lx_conf_server *v, size_t n, const char *who,
                                 char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(v[i].name, v[j].name) == 0) {
                lx_conf_fmt(err, errlen,
                            "%s[%zu]: duplicate server name \"%.200s\" (the same as [%zu])", who, i,
                            v[i].name, j);
                return LX_EINVAL;
            }
        }
    }
    return 0;
}

/* A pool's seconds: a JSON number in 0..86400 into *out. <nullable> says
 * null is accepted too (the caller handles it), <range> what the values mean. */
static int pool_secs(json_t *v, const char *who, bool nullable, const char *range, double *out,
                     char *err, size_t errlen)
{
    if (!json_is_number(v)) {
        lx_conf_fmt(err, errlen, "%s: expected a number of seconds%s, got %s", who,
                    nullable ? " or null" : "", lx_conf_json_type(v));
        return LX_EINVAL;
    }
    if (json_number_value(v) < 0 || json_number_value(v) > 86400) {
        lx_conf_fmt(err, errlen, "%s: %g is out of range (0..86400 seconds, %s)", who,
                    json_number_value(v), range);
        return LX_EINVAL;
    }
    *out = json_number_value(v);
    return 0;
}

/* A pool's "hedge_after_seconds": seconds (0 = off for this pool), or null
 * for the global HEDGE_AFTER_SECONDS. */
static int pool_hedge_after(struct lx_conf_pool *p, json_t *v, const char *who, char *err,
                            size_t errlen)
{
    if (json_is_null(v)) {
        p->has_hedge_after = false;
        p->hedge_after_s = 0;
        return 0;
    }
    if (pool_secs(v, who, true, "0 = off, null = the global HEDGE_AFTER_SECONDS", &p->hedge_after_s,
                  err, errlen) < 0)
        return LX_EINVAL;
    p->has_hedge_after = true;
    return 0;
}

int lx_conf_pool_from_json(struct lx_conf_pool *out, const char *model, const json_t *obj,
                           const char *default_strategy, const char *who, char *err, size_t errlen)
{
    struct lx_conf_pool p = {0};
    char kwho[WHO_MAX];
    json_t *o = (json_t *)obj;

    if (!model || !*model || has_ctl_str(model)) {
        lx_conf_fmt(err, errlen, "%s: a model name must be a non-empty string", who);
        return LX_EINVAL;
    }
    if (!json_is_object(o)) {
        lx_conf_fmt(err, errlen, "%s: expected an object with \"servers\", got %s", who,
                    lx_conf_json_type(o));
        return LX_EINVAL;
    }
    for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        lx_conf_fmt(kwho, sizeof(kwho), "%s.%s", who, key);
        if (strcmp(key, "servers") == 0) {
            if (lx_conf_json_servers(v, kwho, &p.servers, &p.n_servers, err, errlen) < 0 ||
                lx_conf_servers_check_unique(p.servers, p.n_servers, kwho, err, errlen) < 0)
                goto out_error;
        } else if (strcmp(key, "strategy") == 0) {
            const char *canon =
                json_is_string(v) ? lx_conf_strategy_canonical(json_string_value(v)) : NULL;

            if (!json_is_string(v)) {
                lx_conf_fmt(err, errlen, "%s: expected a strategy name, got %s", kwho,
                            lx_conf_json_type(v));
                goto out_error;
            }
            if (!canon) {
                lx_conf_fmt(err, errlen, "%s: unknown strategy \"%.64s\" (expected one of %s)",
                            kwho, json_string_value(v), lx_conf_strategy_list());
                goto out_error;
            }
            free(p.strategy);
            p.strategy = lx_strdup(canon);
        } else if (strcmp(key, "upstream_model") == 0) {
            if (opt_string(v, kwho, &p.upstream_model, err, errlen) < 0)
                goto out_error;
        } else if (strcmp(key, "metrics_update_interval") == 0) {
            if (pool_secs(v, kwho, false, "0 = the global interval", &p.metrics_update_interval_s,
                          err, errlen) < 0)
                goto out_error;
        } else if (strcmp(key, "hedge_after_seconds") == 0) {
            if (pool_hedge_after(&p, v, kwho, err, errlen) < 0)
                goto out_error;
        } else {
            lx_conf_fmt(err, errlen,
                        "%s: unknown key (expected servers, strategy, upstream_model, "
                        "metrics_update_interval, hedge_after_seconds)",
                        kwho);
            goto out_error;
        }
    }
    if (!p.servers) {
        lx_conf_fmt(err, errlen, "%s: missing \"servers\"", who);
        goto out_error;
    }
    if (!p.strategy && default_strategy)
        p.strategy = lx_strdup(default_strategy);
    p.model = lx_strdup(model);
    *out = p;
    return 0;

out_error:
    lx_conf_pool_free(&p);
    return LX_EINVAL;
}

static int models_from_json(struct lx_conf_build *b, json_t *models, const char *file, char *err,
                            size_t errlen)
{
    struct lx_conf *c = &b->conf;
    char who[WHO_MAX];

    if (!json_is_object(models)) {
        lx_conf_fmt(err, errlen,
                    "%s: models: expected an object mapping model names to pools, "
                    "got %s",
                    file, lx_conf_json_type(models));
        return LX_EINVAL;
    }
    for (void *it = json_object_iter(models); it; it = json_object_iter_next(models, it)) {
        const char *model = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        struct lx_conf_pool p;

        lx_conf_fmt(who, sizeof(who), "%s: models.%s", file, model);
        /* Strategy NULL for now: it defaults to ROUTING_STRATEGY, whichever
         * layer sets that. */
        if (lx_conf_pool_from_json(&p, model, v, NULL, who, err, errlen) < 0)
            return LX_EINVAL;
        c->pools = lx_realloc(c->pools, (c->n_pools + 1) * sizeof(*c->pools));
        c->pools[c->n_pools++] = p;
    }
    return 0;
}

int lx_conf_json_apply(struct lx_conf_build *b, const char *path, char *err, size_t errlen)
{
    json_error_t je;
    struct stat st;
    json_t *root;
    int rc = 0;
    FILE *f;

    f = fopen(path, "rb");
    if (!f) {
        lx_conf_fmt(err, errlen, "%s: %s", path, strerror(errno));
        return LX_EINVAL;
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        lx_conf_fmt(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return LX_EINVAL;
    }
    root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root) {
        if (je.line > 0)
            lx_conf_fmt(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        else
            lx_conf_fmt(err, errlen, "%s: %s", path, je.text);
        return LX_EINVAL;
    }
    if (!json_is_object(root)) {
        lx_conf_fmt(err, errlen, "%s: expected a JSON object at the top level, got %s", path,
                    lx_conf_json_type(root));
        rc = LX_EINVAL;
        goto out;
    }
    for (void *it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        const char *key = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        const struct lx_conf_setting *s;
        char who[WHO_MAX];
        size_t idx;

        if (strcmp(key, "models") == 0) {
            rc = models_from_json(b, v, path, err, errlen);
            if (rc < 0)
                goto out;
            continue;
        }
        lx_conf_fmt(who, sizeof(who), "%s: %s", path, key);
        s = lx_conf_setting_by_json(key);
        if (!s) {
            const char *hint = lx_conf_suggest(key, false);

            if (hint)
                lx_conf_fmt(err, errlen, "%s: unknown key (did you mean \"%s\"?)", who, hint);
            else
                lx_conf_fmt(err, errlen, "%s: unknown key", who);
            rc = LX_EINVAL;
            goto out;
        }
        idx = (size_t)(s - lx_conf_settings);
        if (b->json_seen[idx]) {
            lx_conf_fmt(err, errlen, "%s: the same setting as \"%s\", given twice", who,
                        strcmp(key, s->json) == 0 ? s->json_alias : s->json);
            rc = LX_EINVAL;
            goto out;
        }
        b->json_seen[idx] = true;
        rc = lx_conf_set_json(b, s, v, who, err, errlen);
        if (rc < 0)
            goto out;
    }

out:
    json_decref(root);
    return rc;
}

const char *lx_conf_json_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "null";
    }
}

int lx_conf_set_json(struct lx_conf_build *b, const struct lx_conf_setting *s, json_t *val,
                     const char *who, char *err, size_t errlen)
{
    struct lx_conf_server *servers = NULL;
    size_t n = 0;
    char desc[64];
    int rc;

    switch (s->kind) {
    case LX_CONF_K_INT:
    case LX_CONF_K_U64:
        if (!json_is_integer(val)) {
            lx_conf_fmt(err, errlen, "%s: expected %s, got %s", who,
                        lx_conf_int_desc(s, desc, sizeof(desc)), lx_conf_json_type(val));
            return LX_EINVAL;
        }
        return lx_conf_store_int(b, s, json_integer_value(val), who, err, errlen);
    case LX_CONF_K_SECS:
    case LX_CONF_K_SECS_OFF:
    case LX_CONF_K_FLOAT:
    case LX_CONF_K_NUM:
        if (!json_is_number(val)) {
            lx_conf_fmt(err, errlen, "%s: expected a number%s, got %s", who, lx_conf_num_unit(s),
                        lx_conf_json_type(val));
            return LX_EINVAL;
        }
        return lx_conf_store_secs(b, s, json_number_value(val), who, err, errlen);
    case LX_CONF_K_BOOL:
        if (!json_is_boolean(val)) {
            lx_conf_fmt(err, errlen, "%s: expected true or false, got %s", who,
                        lx_conf_json_type(val));
            return LX_EINVAL;
        }
        lx_conf_store_bool(b, s, json_is_true(val));
        return 0;
    case LX_CONF_K_OPTSTR:
    case LX_CONF_K_SECRET:
    case LX_CONF_K_MODEL:
        if (json_is_null(val)) {
            lx_conf_store_str(b, s, NULL);
            return 0;
        }
        if (!json_is_string(val)) {
            lx_conf_fmt(err, errlen, "%s: expected a string or null, got %s", who,
                        lx_conf_json_type(val));
            return LX_EINVAL;
        }
        return lx_conf_set_text(b, s, json_string_value(val), who, err, errlen);
    case LX_CONF_K_NODES:
        if (json_is_array(val)) {
            rc = lx_conf_json_servers(val, who, &servers, &n, err, errlen);
            if (rc == 0)
                rc = lx_conf_servers_check_unique(servers, n, who, err, errlen);
            if (rc < 0) {
                lx_conf_servers_free(servers, n);
                return rc;
            }
            lx_conf_store_nodes(b, servers, n);
            return 0;
        }
        if (!json_is_string(val)) {
            lx_conf_fmt(err, errlen, "%s: expected an array of servers or a string, got %s", who,
                        lx_conf_json_type(val));
            return LX_EINVAL;
        }
        return lx_conf_set_text(b, s, json_string_value(val), who, err, errlen);
    default:
        if (!json_is_string(val)) {
            lx_conf_fmt(err, errlen, "%s: expected a string, got %s", who, lx_conf_json_type(val));
            return LX_EINVAL;
        }
        if (!*json_string_value(val)) {
            lx_conf_fmt(err, errlen, "%s: must not be empty", who);
            return LX_EINVAL;
        }
        return lx_conf_set_text(b, s, json_string_value(val), who, err, errlen);
    }
}

/* ---- dump ---- */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *masked(const char *s)
{
    return s ? json_string("***") : json_null();
}

static json_t *pool_to_json(const struct lx_conf_pool *p)
{
    json_t *o = json_object(), *servers = json_array();

    json_object_set_new(o, "strategy", str_or_null(p->strategy));
    json_object_set_new(o, "upstream_model", str_or_null(p->upstream_model));
    json_object_set_new(o, "metrics_update_interval", json_real(p->metrics_update_interval_s));
    json_object_set_new(o, "hedge_after_seconds",
                        p->has_hedge_after ? json_real(p->hedge_after_s) : json_null());
    for (size_t i = 0; i < p->n_servers; i++) {
        const struct lx_conf_server *s = &p->servers[i];
        json_t *so = json_object();

        json_object_set_new(so, "url", json_string(s->url));
        json_object_set_new(so, "name", json_string(s->name));
        json_object_set_new(so, "weight", json_integer(s->weight));
        json_object_set_new(so, "max_concurrency", json_integer(s->max_concurrency));
        json_object_set_new(so, "api_key", masked(s->api_key));
        json_array_append_new(servers, so);
    }
    json_object_set_new(o, "servers", servers);
    return o;
}

char *lx_conf_json_dump(const struct lx_conf *conf)
{
    json_t *root = json_object(), *models = json_object();
    char *text;

    for (size_t i = 0; i < lx_conf_n_settings; i++) {
        const struct lx_conf_setting *s = &lx_conf_settings[i];
        const char *field;
        json_t *v;

        if (!s->json || s->off == LX_CONF_NOFIELD)
            continue;
        field = (const char *)conf + s->off;
        switch (s->kind) {
        case LX_CONF_K_INT:
            v = json_integer(*(const int *)(const void *)field);
            break;
        case LX_CONF_K_U64:
            v = json_integer((json_int_t) * (const uint64_t *)(const void *)field);
            break;
        case LX_CONF_K_SECS:
        case LX_CONF_K_SECS_OFF:
        case LX_CONF_K_FLOAT:
        case LX_CONF_K_NUM:
            v = json_real(*(const double *)(const void *)field);
            break;
        case LX_CONF_K_BOOL:
            v = json_boolean(*(const bool *)(const void *)field);
            break;
        case LX_CONF_K_SECRET:
            v = masked(*(char *const *)(const void *)field);
            break;
        default:
            v = str_or_null(*(char *const *)(const void *)field);
            break;
        }
        json_object_set_new(root, s->json, v);
    }
    for (size_t i = 0; i < conf->n_pools; i++)
        json_object_set_new(models, conf->pools[i].model, pool_to_json(&conf->pools[i]));
    json_object_set_new(root, "models", models);
    text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    json_decref(root);
    return text;
}
