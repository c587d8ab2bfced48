/*
 * metrics.c - sharded Prometheus counters and histograms; see metrics.h.
 *
 * Series key: family + up to two label values. Each shard has an
 * open-addressing table of series; the scrape collects every shard's series
 * and the keys known in advance (known_keys: fixed label sets, and the nodes
 * and configured models of the registry it is given, at 0), sorts them by
 * key and sums equal keys, so one family's samples come out together whatever
 * shard saw them, and a known series is one line whether or not anything was
 * recorded into it.
 */
#include "metrics.h"

#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "../core/lx.h"
#include "../nodes/node.h"

#define MAX_SERIES 4096       /* per shard; beyond, new label sets are dropped */
#define LABEL_MAX 128         /* longer label values are cut (at a character boundary) to
                                 127 bytes, the size of the proxy's model label */

enum family {
    F_REQUESTS,          /* counter {model,status} */
    F_REJECTED,          /* counter {reason} */
    F_PER_NODE,          /* counter {node} */
    F_NODE_FAILURES,     /* counter {node} */
    F_UPSTREAM_ERRORS,   /* counter {node,kind} */
    F_RETRIES,           /* counter */
    F_RETRIES_REFUSED,   /* counter */
    F_HEDGES,            /* counter {outcome} */
    F_RESUMES,           /* counter {outcome} */
    F_TOKENS,            /* counter {model,kind} */
    F_LATENCY,           /* histogram {model} */
    F_QUEUE_WAIT,        /* histogram */
    F_TTFT,              /* histogram {model} */
    F_NODE_LATENCY,      /* histogram {node,stream} */
    F_NODE_TTFT,         /* histogram {node} */
    F_NODE_ITL,          /* histogram {node} */
    F_TOKENS_PER_S,      /* histogram {model} */
    F_ENDPOINT,          /* counter {endpoint,status_class} */
    F__N
};

enum btype { B_NONE, B_SECONDS, B_TOKENS };

static const struct {
    const char *name, *help, *l1, *l2;
    enum btype buckets;
} families[F__N] = {
    [F_REQUESTS] = {"llmux_requests_total", "Requests answered, by model and HTTP status sent.",
                    "model", "status", B_NONE},
    [F_REJECTED] = {"llmux_requests_rejected_total",
                    "Requests refused by the gateway itself, by reason.", "reason", NULL, B_NONE},
    [F_PER_NODE] = {"llmux_requests_per_node_total", "Requests sent to each node (attempts).",
                    "node", NULL, B_NONE},
    [F_NODE_FAILURES] = {"llmux_node_failures_total",
                         "Failed attempts per node (connect, timeout, 5xx, broken stream).",
                         "node", NULL, B_NONE},
    [F_UPSTREAM_ERRORS] = {"llmux_upstream_errors_total", "Node errors by node and kind.", "node",
                           "kind", B_NONE},
    [F_RETRIES] = {"llmux_retries_total", "Attempts retried on another node.", NULL, NULL,
                   B_NONE},
    [F_RETRIES_REFUSED] = {"llmux_retries_refused_total",
                           "Retries, hedges and stream resumes refused by the pool's retry "
                           "budget.",
                           NULL, NULL, B_NONE},
    [F_HEDGES] = {"llmux_hedges_total",
                  "Hedged requests: started (a second node asked after HEDGE_AFTER_SECONDS "
                  "without a first byte), won (the hedge's node answered first), lost (the "
                  "original node answered first).",
                  "outcome", NULL, B_NONE},
    [F_RESUMES] = {"llmux_stream_resumes_total",
                   "Broken streams continued on another node: resumed (the stream completed), "
                   "failed (it ended with an error event after all).",
                   "outcome", NULL, B_NONE},
    [F_TOKENS] = {"llmux_tokens_total", "Tokens from the nodes' usage, by model and kind.",
                  "model", "kind", B_NONE},
    [F_LATENCY] = {"llmux_request_latency_seconds",
                   "Request latency from arrival to the end of the response, queue included.",
                   "model", NULL, B_SECONDS},
    [F_QUEUE_WAIT] = {"llmux_queue_wait_seconds", "Time requests waited in the admission queue.",
                      NULL, NULL, B_SECONDS},
    [F_TTFT] = {"llmux_time_to_first_token_seconds",
                "Time from arrival to the first streamed token.", "model", NULL, B_SECONDS},
    [F_NODE_LATENCY] = {"llmux_node_latency_seconds",
                        "Time from sending to a node to its response head, by whether the "
                        "client asked for a stream (a whole answer's head comes after the "
                        "generation, a stream's before it).",
                        "node", "stream", B_SECONDS},
    [F_NODE_TTFT] = {"llmux_node_time_to_first_token_seconds",
                     "Streamed requests: time from sending to a node to its first SSE event.",
                     "node", NULL, B_SECONDS},
    [F_NODE_ITL] = {"llmux_node_inter_token_latency_seconds",
                    "Streamed requests: gaps between a node's SSE events, measured per read "
                    "from the node (k events in one read: k gaps of 1/k of the time since the "
                    "previous read with events).",
                    "node", NULL, B_SECONDS},
    [F_TOKENS_PER_S] = {"llmux_tokens_per_second",
                        "Completion tokens per second of generation, per request.", "model", NULL,
                        B_TOKENS},
    [F_ENDPOINT] = {"llmux_endpoint_requests_total",
                    "Requests answered, by API endpoint (\"other\" for any other path) and "
                    "status class of the answer.",
                    "endpoint", "status_class", B_NONE},
};

/* LLM work: 5 ms to 10 minutes. */
static const double seconds_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                    2.5,   5,    10,    30,   60,  120, 300, 600};
static const double tokens_le[] = {1, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000};
#define NB_MAX 16

static const char *const reject_names[LX_REJECT__N] = {
    "auth", "queue_full", "queue_timeout", "no_healthy_node", "bad_request", "too_large"};
static const char *const hedge_names[LX_HEDGE__N] = {"started", "won", "lost"};
static const char *const resume_names[2] = {"failed", "resumed"}; /* by ok */
/* The status class of a status, at status / 100 - 1. */
static const char *const class_names[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
/* The status classes every endpoint starts with, at 0. */
static const char *const endpoint_classes[] = {"2xx", "4xx", "5xx"};
/* The statuses a configured model's llmux_requests_total starts with, at 0:
 * success, the node's client errors, and every status llmux itself answers a
 * request of a known model with (queue full, node errors, unreachable, no
 * healthy node or queue timeout, timeout). */
static const char *const model_statuses[] = {"200", "400", "429", "500", "502", "503", "504"};

struct series {
    uint8_t family;
    char l1[LABEL_MAX], l2[LABEL_MAX];
    uint64_t hash;
    atomic_uint_fast64_t count;        /* counter value, or histogram count */
    atomic_uint_fast64_t sum_us;       /* histogram sum, microseconds (or milli-tokens/s) */
    atomic_uint_fast64_t bucket[NB_MAX];
};

struct lx_metrics {
    uv_mutex_t lock;                   /* series creation and scrapes */
    struct series **table;             /* open addressing, MAX_SERIES * 2 slots */
    size_t n;
    struct lx_metrics *next;           /* the process-wide list */
};

static uv_mutex_t shards_lock;
static uv_once_t shards_once = UV_ONCE_INIT;
static struct lx_metrics *shards;

/* The model names clients chose, interned for labels (process-wide). */
static struct {
    uv_mutex_t lock;
    size_t n;
    char *names[LX_METRICS_MAX_CLIENT_MODELS];
} client_models;

static void shards_init(void)
{
    uv_mutex_init(&shards_lock);
    uv_mutex_init(&client_models.lock);
}

/* Printable UTF-8 (RFC 3629: no overlongs, no surrogates), no control
 * characters: safe as a label value in any scraper. */
static bool is_printable_utf8(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp;

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (len - i - 1 < n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += n + 1;
    }
    return true;
}

void lx_metrics_model_label(char *out, size_t outlen, const char *name, size_t len)
{
    size_t i;

    uv_once(&shards_once, shards_init);
    if (len == 0 || len >= outlen || !is_printable_utf8((const unsigned char *)name, len)) {
        snprintf(out, outlen, "other");
        return;
    }
    uv_mutex_lock(&client_models.lock);
    for (i = 0; i < client_models.n; i++)
        if (strlen(client_models.names[i]) == len && memcmp(client_models.names[i], name, len) == 0)
            break;
    if (i == client_models.n && i < LX_METRICS_MAX_CLIENT_MODELS) {
        client_models.names[i] = lx_malloc(len + 1);
        memcpy(client_models.names[i], name, len);
        client_models.names[i][len] = '\0';
        client_models.n++;
    }
    uv_mutex_unlock(&client_models.lock);
    if (i < LX_METRICS_MAX_CLIENT_MODELS) {
        memcpy(out, name, len);
        out[len] = '\0';
    } else {
        snprintf(out, outlen, "other");
    }
}

struct lx_metrics *lx_metrics_new(void)
{
    struct lx_metrics *m = lx_calloc(1, sizeof(*m));

    uv_once(&shards_once, shards_init);
    uv_mutex_init(&m->lock);
    m->table = lx_calloc(MAX_SERIES * 2, sizeof(*m->table));
    uv_mutex_lock(&shards_lock);
    m->next = shards;
    shards = m;
    uv_mutex_unlock(&shards_lock);
    return m;
}

void lx_metrics_free(struct lx_metrics *m)
{
    struct lx_metrics **pp;

    if (!m)
        return;
    uv_mutex_lock(&shards_lock);
    for (pp = &shards; *pp && *pp != m; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = m->next;
    uv_mutex_unlock(&shards_lock);
    for (size_t i = 0; i < MAX_SERIES * 2; i++)
        free(m->table[i]);
    free(m->table);
    uv_mutex_destroy(&m->lock);
    free(m);
}

static uint64_t key_hash(int family, const char *l1, const char *l2)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)family;

    for (const char *p = l1; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    h = (h ^ 0xff) * 0x100000001b3ULL;
    for (const char *p = l2; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    return h;
}

/* Copies label value <v> (NULL = "") into <dst>, cut to LABEL_MAX - 1 bytes
 * without splitting a UTF-8 character: every key is stored this way, so a
 * long name cut here is the same series wherever it comes from. */
static void label_copy(char dst[LABEL_MAX], const char *v)
{
    size_t len = v ? strnlen(v, LABEL_MAX) : 0;

    if (len == LABEL_MAX) {
        len = LABEL_MAX - 1;
        while (len > 0 && ((unsigned char)v[len] & 0xc0) == 0x80)
            len--;
    }
    if (len)
        memcpy(dst, v, len);
    dst[len] = '\0';
}

/* The series for a key, created on first use; NULL when the shard is full. */
static struct series *series_get(struct lx_metrics *m, int family, const char *l1,
                                 const char *l2)
{
    char k1[LABEL_MAX], k2[LABEL_MAX];
    uint64_t h;
    size_t mask = MAX_SERIES * 2 - 1, i;
    struct series *s;

    label_copy(k1, l1);
    label_copy(k2, l2);
    h = key_hash(family, k1, k2);
    for (i = (size_t)h & mask;; i = (i + 1) & mask) {
        s = m->table[i];
        if (!s)
            break;
        if (s->hash == h && s->family == family && strcmp(s->l1, k1) == 0 &&
            strcmp(s->l2, k2) == 0)
            return s;
    }
    if (m->n >= MAX_SERIES)
        return NULL;
    s = lx_calloc(1, sizeof(*s));
    s->family = (uint8_t)family;
    s->hash = h;
    memcpy(s->l1, k1, sizeof(k1));
    memcpy(s->l2, k2, sizeof(k2));
    uv_mutex_lock(&m->lock);
    m->table[i] = s;
    m->n++;
    uv_mutex_unlock(&m->lock);
    return s;
}

static void count(struct lx_metrics *m, int family, const char *l1, const char *l2, uint64_t n)
{
    struct series *s = series_get(m, family, l1, l2);

    if (s)
        atomic_fetch_add_explicit(&s->count, n, memory_order_relaxed);
}

/* Records <n> observations of <v> into the series (<l1>, <l2>). */
static void observe_n(struct lx_metrics *m, int family, const char *l1, const char *l2, double v,
                      uint64_t n)
{
    struct series *s;
    const double *le = families[family].buckets == B_TOKENS ? tokens_le : seconds_le;
    size_t nb = families[family].buckets == B_TOKENS ? ARRAY_SIZE(tokens_le)
                                                     : ARRAY_SIZE(seconds_le);

    if (v < 0 || n == 0)
        return;
    s = series_get(m, family, l1, l2);
    if (!s)
        return;
    atomic_fetch_add_explicit(&s->count, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_us, (uint64_t)(v * 1e6) * n, memory_order_relaxed);
    /* Cumulative buckets are made at render time: store per-bucket counts. */
    for (size_t b = 0; b < nb; b++) {
        if (v <= le[b]) {
            atomic_fetch_add_explicit(&s->bucket[b], n, memory_order_relaxed);
            break;
        }
    }
}

static void observe(struct lx_metrics *m, int family, const char *l1, double v)
{
    observe_n(m, family, l1, NULL, v, 1);
}

void lx_metrics_request(struct lx_metrics *m, const struct lx_request_record *r)
{
    char status[8];

    snprintf(status, sizeof(status), "%d", r->status);
    count(m, F_REQUESTS, r->model, status, 1);
    observe(m, F_LATENCY, r->model, r->latency_s);
    if (r->ttft_s >= 0)
        observe(m, F_TTFT, r->model, r->ttft_s);
    if (r->tokens_per_s >= 0)
        observe(m, F_TOKENS_PER_S, r->model, r->tokens_per_s);
    if (r->prompt_tokens > 0)
        count(m, F_TOKENS, r->model, "prompt", (uint64_t)r->prompt_tokens);
    if (r->completion_tokens > 0)
        count(m, F_TOKENS, r->model, "completion", (uint64_t)r->completion_tokens);
    lx_metrics_endpoint(m, r->endpoint, r->status);
}

void lx_metrics_endpoint(struct lx_metrics *m, enum lx_api endpoint, int status)
{
    int c = status / 100;
    const char *cls = c >= 1 && c <= 5 ? class_names[c - 1] : "other";

    if ((unsigned)endpoint >= LX_API__N)
        endpoint = LX_API_OTHER;
    count(m, F_ENDPOINT, lx_api_endpoints[endpoint].path, cls, 1);
}

void lx_metrics_reject(struct lx_metrics *m, enum lx_reject reason)
{
    count(m, F_REJECTED, reject_names[reason], NULL, 1);
}

void lx_metrics_retry(struct lx_metrics *m)
{
    count(m, F_RETRIES, NULL, NULL, 1);
}

void lx_metrics_retry_refused(struct lx_metrics *m)
{
    count(m, F_RETRIES_REFUSED, NULL, NULL, 1);
}

void lx_metrics_hedge(struct lx_metrics *m, enum lx_hedge_outcome outcome)
{
    count(m, F_HEDGES, hedge_names[outcome], NULL, 1);
}

void lx_metrics_resume(struct lx_metrics *m, bool ok)
{
    count(m, F_RESUMES, resume_names[ok], NULL, 1);
}

void lx_metrics_queue_wait(struct lx_metrics *m, double seconds)
{
    observe(m, F_QUEUE_WAIT, NULL, seconds);
}

void lx_metrics_node_request(struct lx_metrics *m, const char *node)
{
    count(m, F_PER_NODE, node, NULL, 1);
}

void lx_metrics_node_latency(struct lx_metrics *m, const char *node, bool stream, double seconds)
{
    observe_n(m, F_NODE_LATENCY, node, stream ? "true" : "false", seconds, 1);
}

void lx_metrics_node_ttft(struct lx_metrics *m, const char *node, double seconds)
{
    observe(m, F_NODE_TTFT, node, seconds);
}

void lx_metrics_node_itl(struct lx_metrics *m, const char *node, double seconds,
                         uint64_t n_events)
{
    if (n_events)
        observe_n(m, F_NODE_ITL, node, NULL, seconds / (double)n_events, n_events);
}

void lx_metrics_node_failure(struct lx_metrics *m, const char *node)
{
    count(m, F_NODE_FAILURES, node, NULL, 1);
}

void lx_metrics_upstream_error(struct lx_metrics *m, const char *node,
                               enum lx_fail kind)
{
    count(m, F_UPSTREAM_ERRORS, node, lx_fail_kinds[kind].label, 1);
}

/* ---- rendering ---------------------------------------------------------- */

void lx_metrics_escape(struct lx_buf *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\')
            lx_buf_append(out, "\\\\", 2);
        else if (*s == '"')
            lx_buf_append(out, "\\\"", 2);
        else if (*s == '\n')
            lx_buf_append(out, "\\n", 2);
        else
            lx_buf_append(out, s, 1);
    }
}

void lx_metrics_gauge_head(struct lx_buf *out, const char *name, const char *help)
{
    lx_buf_appendf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

void lx_metrics_counter_head(struct lx_buf *out, const char *name, const char *help)
{
    lx_buf_appendf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
}

void lx_metrics_sample(struct lx_buf *out, const char *name, const char *label,
                       const char *value, double v)
{
    lx_buf_append(out, name, strlen(name));
    if (label) {
        lx_buf_appendf(out, "{%s=\"", label);
        lx_metrics_escape(out, value ? value : "");
        lx_buf_append(out, "\"}", 2);
    }
    lx_buf_appendf(out, " %.17g\n", v);
}

void lx_metrics_sample_labels(struct lx_buf *out, const char *name, const char *l1,
                              const char *v1, const char *l2, const char *v2, const char *l3,
                              const char *v3, double v)
{
    const char *l[3] = {l1, l2, l3}, *vals[3] = {v1, v2, v3};

    lx_buf_append(out, name, strlen(name));
    for (int i = 0; i < 3 && l[i]; i++) {
        lx_buf_appendf(out, "%c%s=\"", i ? ',' : '{', l[i]);
        lx_metrics_escape(out, vals[i] ? vals[i] : "");
        lx_buf_append(out, "\"", 1);
    }
    if (l1)
        lx_buf_append(out, "}", 1);
    lx_buf_appendf(out, " %.17g\n", v);
}

/* A summed copy of a series. */
struct snap {
    int family;
    const char *l1, *l2;  /* point into a shard's series (alive under the locks) or a key */
    uint64_t count, sum_us, bucket[NB_MAX];
};

/* A series every scrape shows, at 0 until something is recorded into it. */
struct key {
    int family;
    char l1[LABEL_MAX], l2[LABEL_MAX];
};

struct snaps {
    struct snap *v;
    size_t n, cap;
};

static struct snap *snap_push(struct snaps *ss, int family, const char *l1, const char *l2)
{
    struct snap *s;

    if (ss->n == ss->cap) {
        ss->cap = ss->cap ? ss->cap * 2 : 256;
        ss->v = lx_realloc(ss->v, ss->cap * sizeof(*ss->v));
    }
    s = &ss->v[ss->n++];
    memset(s, 0, sizeof(*s));
    s->family = family;
    s->l1 = l1;
    s->l2 = l2;
    return s;
}

struct keys {
    struct key *v;
    size_t n, cap;
};

static void key_add(struct keys *ks, int family, const char *l1, const char *l2)
{
    struct key *k;

    if (ks->n == ks->cap) {
        ks->cap = ks->cap ? ks->cap * 2 : 256;
        ks->v = lx_realloc(ks->v, ks->cap * sizeof(*ks->v));
    }
    k = &ks->v[ks->n++];
    k->family = family;
    label_copy(k->l1, l1);
    label_copy(k->l2, l2);
}

/*
 * The series known before any event, so that rate() and the dashboard have
 * data from the first scrape: the fixed label sets (rejection reasons,
 * hedge and resume outcomes, endpoints, the unlabelled counters and the
 * queue wait histogram), and from <reg> (may be NULL) every node and every
 * configured model (not a catch-all pool's: its labels come from clients).
 * A node in several pools appears more than once; equal keys are merged.
 */
static void known_keys(struct keys *ks, const struct lx_registry *reg)
{
    for (int r = 0; r < LX_REJECT__N; r++)
        key_add(ks, F_REJECTED, reject_names[r], NULL);
    key_add(ks, F_RETRIES, NULL, NULL);
    key_add(ks, F_RETRIES_REFUSED, NULL, NULL);
    for (int o = 0; o < LX_HEDGE__N; o++)
        key_add(ks, F_HEDGES, hedge_names[o], NULL);
    for (int o = 0; o < 2; o++)
        key_add(ks, F_RESUMES, resume_names[o], NULL);
    key_add(ks, F_QUEUE_WAIT, NULL, NULL);
    for (int e = 0; e < LX_API__N; e++)
        for (size_t c = 0; c < ARRAY_SIZE(endpoint_classes); c++)
            key_add(ks, F_ENDPOINT, lx_api_endpoints[e].path, endpoint_classes[c]);
    for (size_t i = 0; reg && i < reg->n_pools; i++) {
        const struct lx_pool *p = &reg->pools[i];

        for (size_t k = 0; k < p->n_nodes; k++) {
            const char *node = p->nodes[k]->name;

            key_add(ks, F_PER_NODE, node, NULL);
            key_add(ks, F_NODE_FAILURES, node, NULL);
            for (int f = 0; f < LX_FAIL__N; f++)
                key_add(ks, F_UPSTREAM_ERRORS, node, lx_fail_kinds[f].label);
            key_add(ks, F_NODE_LATENCY, node, "false");
            key_add(ks, F_NODE_LATENCY, node, "true");
            key_add(ks, F_NODE_TTFT, node, NULL);
            key_add(ks, F_NODE_ITL, node, NULL);
        }
        if (strcmp(p->model, "*") == 0)
            continue;
        for (size_t k = 0; k < ARRAY_SIZE(model_statuses); k++)
            key_add(ks, F_REQUESTS, p->model, model_statuses[k]);
        key_add(ks, F_TOKENS, p->model, "prompt");
        key_add(ks, F_TOKENS, p->model, "completion");
        key_add(ks, F_LATENCY, p->model, NULL);
        key_add(ks, F_TTFT, p->model, NULL);
        key_add(ks, F_TOKENS_PER_S, p->model, NULL);
    }
}

static int snap_cmp(const void *a, const void *b)
{
    const struct snap *x = a, *y = b;
    int c;

    if (x->family != y->family)
        return x->family - y->family;
    c = strcmp(x->l1, y->l1);
    return c ? c : strcmp(x->l2, y->l2);
}

static void labels(struct lx_buf *out, int f, const struct snap *s, const char *extra,
                   const char *extra_value)
{
    bool any = false;

    if (families[f].l1) {
        lx_buf_appendf(out, "{%s=\"", families[f].l1);
        lx_metrics_escape(out, s->l1);
        lx_buf_append(out, "\"", 1);
        any = true;
    }
    if (families[f].l2) {
        lx_buf_appendf(out, ",%s=\"", families[f].l2);
        lx_metrics_escape(out, s->l2);
        lx_buf_append(out, "\"", 1);
    }
    if (extra) {
        lx_buf_appendf(out, "%s%s=\"%s\"", any ? "," : "{", extra, extra_value);
        any = true;
    }
    if (any)
        lx_buf_append(out, "}", 1);
}

static void render_family(struct lx_buf *out, int f, const struct snap *v, size_t n)
{
    const char *name = families[f].name;
    bool hist = families[f].buckets != B_NONE;
    const double *le = families[f].buckets == B_TOKENS ? tokens_le : seconds_le;
    size_t nb = families[f].buckets == B_TOKENS ? ARRAY_SIZE(tokens_le) : ARRAY_SIZE(seconds_le);

    lx_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, families[f].help, name,
                   hist ? "histogram" : "counter");
    for (size_t i = 0; i < n; i++) {
        if (!hist) {
            lx_buf_append(out, name, strlen(name));
            labels(out, f, &v[i], NULL, NULL);
            lx_buf_appendf(out, " %llu\n", (unsigned long long)v[i].count);
            continue;
        }
        uint64_t cum = 0;

        for (size_t b = 0; b < nb; b++) {
            char lev[32];

            cum += v[i].bucket[b];
            snprintf(lev, sizeof(lev), "%g", le[b]);
            lx_buf_appendf(out, "%s_bucket", name);
            labels(out, f, &v[i], "le", lev);
            lx_buf_appendf(out, " %llu\n", (unsigned long long)cum);
        }
        lx_buf_appendf(out, "%s_bucket", name);
        labels(out, f, &v[i], "le", "+Inf");
        lx_buf_appendf(out, " %llu\n%s_sum", (unsigned long long)v[i].count, name);
        labels(out, f, &v[i], NULL, NULL);
        lx_buf_appendf(out, " %.6f\n%s_count", (double)v[i].sum_us / 1e6, name);
        labels(out, f, &v[i], NULL, NULL);
        lx_buf_appendf(out, " %llu\n", (unsigned long long)v[i].count);
    }
}

void lx_metrics_render(struct lx_buf *out, const struct lx_registry *reg)
{
    struct snaps ss = {0};
    struct keys ks = {0};
    size_t i, j, n;
    struct lx_metrics *m;

    uv_once(&shards_once, shards_init);
    known_keys(&ks, reg);
    for (i = 0; i < ks.n; i++)
        snap_push(&ss, ks.v[i].family, ks.v[i].l1, ks.v[i].l2);
    uv_mutex_lock(&shards_lock);
    for (m = shards; m; m = m->next) {
        uv_mutex_lock(&m->lock);
        for (i = 0; i < MAX_SERIES * 2; i++) {
            struct series *s = m->table[i];
            struct snap *v;

            if (!s)
                continue;
            v = snap_push(&ss, s->family, s->l1, s->l2);
            v->count = atomic_load_explicit(&s->count, memory_order_relaxed);
            v->sum_us = atomic_load_explicit(&s->sum_us, memory_order_relaxed);
            for (size_t b = 0; b < NB_MAX; b++)
                v->bucket[b] = atomic_load_explicit(&s->bucket[b], memory_order_relaxed);
        }
    }
    n = ss.n;
    if (n)
        qsort(ss.v, n, sizeof(*ss.v), snap_cmp);
    /* Sum equal keys (the same series seen by several workers, or known
     * and recorded). */
    for (i = 0, j = 0; i < n; i++) {
        struct snap *v = ss.v;

        if (j > 0 && snap_cmp(&v[j - 1], &v[i]) == 0) {
            v[j - 1].count += v[i].count;
            v[j - 1].sum_us += v[i].sum_us;
            for (size_t b = 0; b < NB_MAX; b++)
                v[j - 1].bucket[b] += v[i].bucket[b];
        } else {
            v[j++] = v[i];
        }
    }
    n = j;
    for (int f = 0, k = 0; f < F__N; f++) {
        size_t start = (size_t)k;

        while ((size_t)k < n && ss.v[k].family == f)
            k++;
        render_family(out, f, ss.v + start, (size_t)k - start);
    }
    for (m = shards; m; m = m->next)
        uv_mutex_unlock(&m->lock);
    uv_mutex_unlock(&shards_lock);
    free(ss.v);
    free(ks.v);
}
