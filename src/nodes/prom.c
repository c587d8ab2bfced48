/*
 * prom.c - a line scanner for the Prometheus text format, for the few vLLM
 * gauges and counters llmux reads; see prom.h. Lines: `name{labels} value [timestamp]`, `#`
 * comments. Anything unexpected on a line skips that line.
 */
#include "prom.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sums of counts over a node's series stop here: far above any real engine,
 * and exact and convertible to uint64_t whatever a node sends. */
#define PROM_SUM_MAX 1e15
/* No real engine has a billion requests or sequences: a larger gauge or label
 * number is garbage. The prefix-cache counters count tokens, which a busy
 * engine passes a billion of within a day: they may go up to PROM_SUM_MAX. */
#define PROM_VALUE_MAX 1e9

enum metric {
    M_NONE,
    M_WAITING,
    M_RUNNING,
    M_KV_NEW,
    M_KV_OLD,
    M_CACHE_CONFIG,
    M_PREFIX_QUERIES,
    M_PREFIX_HITS
};

static enum metric metric_of(const char *p, size_t n)
{
    static const struct {
        const char *name;
        enum metric m;
    } names[] = {
        {"vllm:num_requests_waiting", M_WAITING},
        {"vllm:num_requests_running", M_RUNNING},
        {"vllm:kv_cache_usage_perc", M_KV_NEW},
        {"vllm:gpu_cache_usage_perc", M_KV_OLD},
        {"vllm:cache_config_info", M_CACHE_CONFIG},
        {"vllm:prefix_cache_queries_total", M_PREFIX_QUERIES},
        {"vllm:prefix_cache_hits_total", M_PREFIX_HITS},
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].name) == n && memcmp(names[i].name, p, n) == 0)
            return names[i].m;
    return M_NONE;
}

/* Parses a sample value: finite and at most <max> (+Inf, NaN and larger
 * values are rejected). */
static bool parse_value(const char *p, const char *end, double max, double *out)
{
    char tmp[64];
    size_t n = 0;
    char *stop;

    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (p + n < end && p[n] != ' ' && p[n] != '\t' && p[n] != '\r')
        n++;
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    *out = strtod(tmp, &stop);
    return *stop == '\0' && isfinite(*out) && *out <= max;
}

/* The number in label <name>="N" of the label set [p, end), or -1. */
static double label_number(const char *p, const char *end, const char *name)
{
    size_t n = strlen(name);
    double v;

    for (; p + n + 2 < end; p++) {
        if ((p[-1] == '{' || p[-1] == ',') && memcmp(p, name, n) == 0 && p[n] == '=' &&
            p[n + 1] == '"') {
            const char *v0 = p + n + 2, *q = v0;

            while (q < end && *q != '"')
                q++;
            return q < end && parse_value(v0, q, PROM_VALUE_MAX, &v) && v >= 0 ? v : -1;
        }
    }
    return -1;
}

int lx_prom_scan_vllm(const char *text, size_t len, struct lx_vllm_load *out)
{
    const char *p = text, *end = text + len;
    double kv_sum[2] = {0, 0};
    int kv_n[2] = {0, 0};

    memset(out, 0, sizeof(*out));
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line = p, *q, *labels = NULL;
        enum metric m;
        bool counter;
        double v;

        if (!eol)
            eol = end;
        p = eol + 1;
        if (line == eol || *line == '#')
            continue;
        for (q = line; q < eol && *q != '{' && *q != ' ' && *q != '\t'; q++)
            ;
        m = metric_of(line, (size_t)(q - line));
        if (m == M_NONE)
            continue;
        if (q < eol && *q == '{') {
            /* Skip the label set; quoted values may hold '}' and escapes. */
            bool quoted = false;

            labels = q + 1;
            for (q++; q < eol; q++) {
                if (quoted && *q == '\\') {
                    q++;
                    continue;
                }
                if (*q == '"')
                    quoted = !quoted;
                else if (!quoted && *q == '}')
                    break;
            }
            if (q >= eol)
                continue;
            q++;
        }
        counter = m == M_PREFIX_QUERIES || m == M_PREFIX_HITS;
        if (!parse_value(q, eol, counter ? PROM_SUM_MAX : PROM_VALUE_MAX, &v) || v < 0)
            continue;
        switch (m) {
        case M_WAITING:
            out->waiting += v;
            out->has_waiting = true;
            break;
        case M_RUNNING:
            out->running += v;
            out->has_running = true;
            break;
        case M_KV_NEW:
        case M_KV_OLD:
            kv_sum[m - M_KV_NEW] += v;
            kv_n[m - M_KV_NEW]++;
            break;
        case M_CACHE_CONFIG: {
            double blocks = labels ? label_number(labels, q, "num_gpu_blocks") : -1;
            double size = labels ? label_number(labels, q, "block_size") : -1;

            if (blocks > 0 && size > 0) {
                out->cache_tokens = fmin(out->cache_tokens + blocks * size, PROM_SUM_MAX);
                out->has_cache_tokens = true;
            }
            break;
        }
        case M_PREFIX_QUERIES:
            out->prefix_queries = fmin(out->prefix_queries + v, PROM_SUM_MAX);
            out->has_prefix_queries = true;
            break;
        case M_PREFIX_HITS:
            out->prefix_hits = fmin(out->prefix_hits + v, PROM_SUM_MAX);
            out->has_prefix_hits = true;
            break;
        default:
            break;
        }
    }
    for (int i = 0; i < 2 && !out->has_kv; i++) {
        if (kv_n[i]) {
            out->kv_usage = kv_sum[i] / kv_n[i];
            if (out->kv_usage > 1)
                out->kv_usage = 1;
            out->has_kv = true;
        }
    }
    return out->has_waiting || out->has_running || out->has_kv ? 0 : -1;
}
