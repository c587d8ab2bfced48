/*
 * conf_internal.h - what conf.c, conf_json.c and conf_env.c share; not part
 * of the module's interface (include conf.h for that).
 *
 * A load builds a struct lx_conf_build from scratch: defaults, then each layer
 * writes into it through the settings table, then conf.c finalises the pools
 * and hands build.conf to the caller. On any error the build is freed, so the
 * caller's struct is never half-written. Nothing here is shared between
 * threads: a build lives on the stack of one lx_conf_load() call.
 */
#ifndef LX_CONF_INTERNAL_H
#define LX_CONF_INTERNAL_H

#include <jansson.h>

#include "conf.h"

/* How a setting's value is parsed, validated and stored. */
enum lx_conf_kind {
    LX_CONF_K_INT,      /* int field, integer in [min, max] */
    LX_CONF_K_U64,      /* uint64_t field, integer in [min, max] */
    LX_CONF_K_SECS,     /* double field, seconds, 0 < s <= max */
    LX_CONF_K_SECS_OFF, /* double field, seconds, 0 <= s <= max, 0 = off */
    LX_CONF_K_FLOAT,    /* double field, a plain number, 0 < x <= max */
    LX_CONF_K_NUM,      /* double field, a plain number, 0 <= x <= max */
    LX_CONF_K_BOOL,     /* bool field: on/off, true/false, yes/no, 1/0; JSON true/false */
    LX_CONF_K_HOST,     /* char * field: IPv4, IPv6 (brackets optional) or host name */
    LX_CONF_K_STRATEGY, /* char * field: a strategy name, stored canonical */
    LX_CONF_K_LOGLEVEL, /* char * field: debug|info|warn|error */
    LX_CONF_K_URLPATH,  /* char * field: an absolute URL path ("/health") */
    LX_CONF_K_OPTSTR,   /* char * field, NULL when unset or empty */
    LX_CONF_K_SECRET,   /* like OPTSTR; masked in dumps */
    LX_CONF_K_MODEL,    /* model_name: NULL when unset, empty or "*" */
    LX_CONF_K_LISTEN,   /* "HOST:PORT" into listen_host and listen_port */
    LX_CONF_K_NODES,    /* VLLM_NODES: comma-separated URLs (or a JSON array) */
    LX_CONF_K_CONFIG,   /* LLMUX_CONFIG / --config: read before the layers */
    LX_CONF_K_CHECK,    /* --check-config */
    LX_CONF_K_HELP,     /* --help, -h */
    LX_CONF_K_VERSION,  /* --version, -V */
};

#define LX_CONF_NOFIELD ((size_t)-1)

/* One row of the settings table in conf.c. */
struct lx_conf_setting {
    const char *env;        /* environment variable, NULL = none */
    const char *json;       /* top-level JSON key, NULL = none */
    const char *json_alias; /* a second accepted JSON key, NULL = none */
    const char *flag;       /* long flag without "--", NULL = none */
    char short_flag;        /* 'h', 'V' or 0 */
    const char *metavar;    /* the flag's value in --help ("N"), NULL = no value */
    enum lx_conf_kind kind;
    size_t off;         /* offsetof(struct lx_conf, field) or LX_CONF_NOFIELD */
    long long min, max; /* integer range; max for seconds */
    const char *def;      /* the default, parsed like an environment value when a build
                             starts; NULL = none (the field stays 0 / NULL) */
    const char *def_text; /* --help's default when <def> is NULL ("CPU count"), or NULL */
    const char *help;   /* one line for --help */
};

extern const struct lx_conf_setting lx_conf_settings[];
extern const size_t lx_conf_n_settings;

/* A parsed .env file: KEY=VALUE pairs in file order (later duplicates win). */
struct lx_conf_dotenv_entry {
    char *key;
    char *value;
    int line; /* 1-based line of the key */
};

struct lx_conf_dotenv {
    char *path; /* the file read; NULL when there was none */
    struct lx_conf_dotenv_entry *v;
    size_t n;
};

/* The configuration being built by one lx_conf_load() call. */
struct lx_conf_build {
    struct lx_conf conf;          /* becomes the caller's on success */
    struct lx_conf_server *nodes; /* VLLM_NODES of the latest layer that set it */
    size_t n_nodes;
    bool has_nodes;
    bool json_seen[64]; /* settings set by the file, to catch alias clashes */
};

/*
 * Errors: functions returning int give 0 or LX_EINVAL with one line in <err>
 * (at most <errlen> bytes), prefixed by <who>, the source being applied:
 * "MAX_RETRIES", ".env:3: MAX_RETRIES", "--max-retries",
 * "config.json: models.gpt-4.servers[1].weight".
 */

/* conf.c: the table and storing values */
const struct lx_conf_setting *lx_conf_setting_by_json(const char *key);
/* Formats into a bounded buffer, truncating; for messages and JSON paths. */
void lx_conf_fmt(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "a positive integer", "an integer in 0..65535": what <s> accepts. */
const char *lx_conf_int_desc(const struct lx_conf_setting *s, char *buf, size_t len);
/* " of seconds" for a seconds setting, "" for a plain number: for "expected
 * a number%s" and "is not a number%s". */
const char *lx_conf_num_unit(const struct lx_conf_setting *s);
/* Range-checks and stores an integer (K_INT, K_U64), or seconds (K_SECS*) and
 * plain numbers (K_FLOAT, K_NUM). */
int lx_conf_store_int(struct lx_conf_build *b, const struct lx_conf_setting *s, long long v,
                      const char *who, char *err, size_t errlen);
int lx_conf_store_secs(struct lx_conf_build *b, const struct lx_conf_setting *s, double v,
                       const char *who, char *err, size_t errlen);
/* Stores a boolean (K_BOOL). */
void lx_conf_store_bool(struct lx_conf_build *b, const struct lx_conf_setting *s, bool v);
/* Takes <v> (may be NULL) as the value of a string setting. */
void lx_conf_store_str(struct lx_conf_build *b, const struct lx_conf_setting *s, char *v);
/* Takes <v> as the VLLM_NODES servers, replacing those of an earlier layer. */
void lx_conf_store_nodes(struct lx_conf_build *b, struct lx_conf_server *v, size_t n);
/* The JSON key (or, with <flag>, the flag) closest to the unknown <name>,
 * when it is a few edits away; NULL otherwise. */
const char *lx_conf_suggest(const char *name, bool flag);
/* Whether the variable <name> looks meant for llmux but is none of its
 * settings: "LLMUX_" and anything after it, or a name of six characters or
 * more at most two edits (letters in any case) from a known one. *hint: the
 * likely known name, or NULL. */
bool lx_conf_env_is_suspect(const char *name, const char **hint);
/* "round_robin, least_loaded (least_connection), ...", for error messages. */
const char *lx_conf_strategy_list(void);
void lx_conf_servers_free(struct lx_conf_server *v, size_t n);

/* conf_json.c: the file, pools and servers from JSON, the dump */
/* Applies a JSON value to <s>. */
int lx_conf_set_json(struct lx_conf_build *b, const struct lx_conf_setting *s, json_t *val,
                     const char *who, char *err, size_t errlen);
/* Reads the JSON file at <path> into <b>; 0 or LX_EINVAL with <err> set. */
int lx_conf_json_apply(struct lx_conf_build *b, const char *path, char *err, size_t errlen);
/* Parses a JSON array of servers (URL strings or objects) into a new array. */
int lx_conf_json_servers(json_t *arr, const char *who, struct lx_conf_server **out, size_t *n_out,
                         char *err, size_t errlen);
/* Rejects two servers of one pool with the same name. */
int lx_conf_servers_check_unique(const struct lx_conf_server *v, size_t n, const char *who,
                                 char *err, size_t errlen);
/* Builds the dump object for --check-config. */
char *lx_conf_json_dump(const struct lx_conf *conf);

/* conf_env.c: text values (environment, .env, flags) and the .env file */
/* Applies the text <val> (from the environment, .env or a flag) to <s>. */
int lx_conf_set_text(struct lx_conf_build *b, const struct lx_conf_setting *s, const char *val,
                     const char *who, char *err, size_t errlen);
/* Validates a host (IPv4, IPv6 with or without brackets, or a name) of <len>
 * bytes at <in>; on success *out is a new string without brackets; else
 * LX_EINVAL and the reason in *why. */
int lx_conf_host_parse(const char *in, size_t len, char **out, const char **why);
/* Parses an http:// URL into <s> (url, host, port, base_path); 0 or LX_EINVAL
 * with a reason (no key) in <why>. Fields already in <s> are replaced. */
int lx_conf_url_parse(struct lx_conf_server *s, const char *url, char *why, size_t whylen);
/* Reads and parses the dotenv file at <path>; a missing file yields an empty
 * set and 0. Returns LX_EINVAL with "<path>:<line>: reason" in <err>. */
int lx_conf_dotenv_read(struct lx_conf_dotenv *d, const char *path, char *err, size_t errlen);
void lx_conf_dotenv_free(struct lx_conf_dotenv *d);
/* The value of <name> in .env (NULL if absent); its line in *line. */
const char *lx_conf_dotenv_get(const struct lx_conf_dotenv *d, const char *name, int *line);
/* The value of <name> in <envp> (first match, as getenv), NULL if absent. */
const char *lx_conf_env_get(char **envp, const char *name);

#endif /* LX_CONF_INTERNAL_H */
