/*
 * main.c - llmux-sim: a simulated vLLM node. Parses the command line, wires
 * the HTTP server (src/http) to the API (api.c) and its engine (engine.c),
 * and runs one libuv loop until SIGTERM or SIGINT.
 *
 * Start-up contract for scripts and tests: once listening, exactly one line
 * goes to stdout, flushed: "llmux-sim listening on HOST:PORT" (the real port
 * also with --port 0). Logs go to stderr. Exit status: 0 after a signal,
 * 1 after --die-after or when it cannot listen, 2 on a bad command line.
 * docs/SIM.md describes the flags, endpoints and model.
 */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "../src/core/log.h"
#include "../src/core/parse.h"
#include "../src/http/server.h"
#include "api.h"
#include "engine.h"

#define DEFAULT_MODEL "mistralai/Mistral-7B-Instruct-v0.3"
#define DEFAULT_MAX_MODEL_LEN 32768 /* Mistral-7B-Instruct-v0.3's context */

struct sim_main {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    struct lx_http_server *srv;
    struct sim_api *api;
    char name[300];
};

enum {
    OPT_HOST = 256,
    OPT_PORT,
    OPT_MODEL,
    OPT_NAME,
    OPT_MAX_NUM_SEQS,
    OPT_KV_CACHE_TOKENS,
    OPT_BLOCK_SIZE,
    OPT_MAX_MODEL_LEN,
    OPT_PREFILL_TPS,
    OPT_DECODE_MS,
    OPT_DECODE_MS_PER_SEQ,
    OPT_MAX_TOKENS,
    OPT_ERROR_RATE,
    OPT_SEED,
    OPT_HANG,
    OPT_DIE_AFTER,
    OPT_DROP_AFTER,
    OPT_SLOW_START_MS,
    OPT_KEEP_ALIVE_MS,
    OPT_FAST,
    OPT_LOG_LEVEL,
    OPT_HELP
};

static const struct option options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"model", required_argument, NULL, OPT_MODEL},
    {"name", required_argument, NULL, OPT_NAME},
    {"max-num-seqs", required_argument, NULL, OPT_MAX_NUM_SEQS},
    {"kv-cache-tokens", required_argument, NULL, OPT_KV_CACHE_TOKENS},
    {"block-size", required_argument, NULL, OPT_BLOCK_SIZE},
    {"max-model-len", required_argument, NULL, OPT_MAX_MODEL_LEN},
    {"prefill-tps", required_argument, NULL, OPT_PREFILL_TPS},
    {"decode-ms", required_argument, NULL, OPT_DECODE_MS},
    {"decode-ms-per-seq", required_argument, NULL, OPT_DECODE_MS_PER_SEQ},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"error-rate", required_argument, NULL, OPT_ERROR_RATE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"hang", no_argument, NULL, OPT_HANG},
    {"die-after", required_argument, NULL, OPT_DIE_AFTER},
    {"drop-after", required_argument, NULL, OPT_DROP_AFTER},
    {"slow-start-ms", required_argument, NULL, OPT_SLOW_START_MS},
    {"keep-alive-ms", required_argument, NULL, OPT_KEEP_ALIVE_MS},
    {"fast", no_argument, NULL, OPT_FAST},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: llmux-sim [options]\n"
        "A simulated vLLM node: OpenAI API, vLLM /metrics, continuous batching,\n"
        "KV-cache admission, prefix caching and fault injection.\n"
        "\n"
        "  --host H                 address to listen on (default 127.0.0.1)\n"
        "  --port P                 port (default 8001; 0 = ephemeral)\n"
        "  --model NAME             served model id (default %s)\n"
        "  --name NAME              node name in logs (default host:port)\n"
        "  --max-num-seqs N         sequences in the batch at most (default 64)\n"
        "  --kv-cache-tokens N      KV-cache capacity in tokens (default 200000)\n"
        "  --block-size N           tokens per KV block (default 16)\n"
        "  --max-model-len N        prompt + completion limit (default %d, at most the KV cache)\n"
        "  --prefill-tps N          prefill speed, prompt tokens per second (default 20000)\n"
        "  --decode-ms MS           decode step time at batch 1 (default 10)\n"
        "  --decode-ms-per-seq MS   extra step time per running sequence (default 0.2)\n"
        "  --max-tokens N           completion length when the request gives none (default 16)\n"
        "  --error-rate P           share of requests answered 500, 0..1 (default 0)\n"
        "  --seed N                 seed of the --error-rate PRNG (default 1)\n"
        "  --hang                   accept requests, never answer\n"
        "  --die-after N            exit(1) right after answering the N-th inference request\n"
        "  --drop-after N           close every inference request's connection after N tokens\n"
        "                           (as x-sim drop_after=N, for requests that set none)\n"
        "  --slow-start-ms MS       /health and requests answer 503 this long after start\n"
        "  --keep-alive-ms MS       close idle keep-alive connections after MS (default 5000,\n"
        "                           uvicorn's; 0 = never)\n"
        "  --fast                   no prefill or decode time (throughput benchmarks)\n"
        "  --log-level L            debug, info, warn, error (default info; env LOG_LEVEL)\n"
        "  --help                   this text\n"
        "\n"
        "Per request, the header `x-sim: k=v,...` steers one request: status=N,\n"
        "html_error=N, plain_error=N, ttft_ms=N, tokens=N, drop_after=N, hang=1,\n"
        "delay_ms=N. See docs/SIM.md.\n",
        DEFAULT_MODEL, DEFAULT_MAX_MODEL_LEN);
}

static void die_usage(const char *opt, const char *val, const char *why)
{
    fprintf(stderr, "llmux-sim: --%s %s: %s\n", opt, val, why);
    exit(2);
}

static double parse_num(const char *opt, const char *val, double min, double max)
{
    double v = 0;
    const char *why = lx_parse_double(val, min, max, &v);

    if (why)
        die_usage(opt, val, why);
    return v;
}

static uint64_t parse_uint(const char *opt, const char *val, uint64_t min, uint64_t max)
{
    uint64_t v = 0;
    const char *why = lx_parse_u64(val, min, max, &v);

    if (why)
        die_usage(opt, val, why);
    return v;
}

static void parse_args(int argc, char **argv, struct sim_conf *c)
{
    int opt, level;

    *c = (struct sim_conf){
        .host = "127.0.0.1",
        .port = 8001,
        .model = DEFAULT_MODEL,
        .max_num_seqs = 64,
        .kv_cache_tokens = 200000,
        .block_size = 16,
        .max_model_len = DEFAULT_MAX_MODEL_LEN,
        .prefill_tps = 20000,
        .decode_ms = 10,
        .decode_ms_per_seq = 0.2,
        .max_tokens = 16,
        .seed = 1,
        .keep_alive_ms = 5000,
        .drop_after = -1,
    };
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        const char *name = opt >= OPT_HOST && opt <= OPT_HELP ? options[opt - OPT_HOST].name : "";

        switch (opt) {
        case OPT_HOST:
            c->host = optarg;
            break;
        case OPT_PORT:
            c->port = (int)parse_uint(name, optarg, 0, 65535);
            break;
        case OPT_MODEL:
            c->model = optarg;
            break;
        case OPT_NAME:
            c->name = optarg;
            break;
        case OPT_MAX_NUM_SEQS:
            c->max_num_seqs = (unsigned)parse_uint(name, optarg, 1, 1u << 20);
            break;
        case OPT_KV_CACHE_TOKENS:
            c->kv_cache_tokens = parse_uint(name, optarg, 1, 1ull << 32);
            break;
        case OPT_BLOCK_SIZE:
            c->block_size = (unsigned)parse_uint(name, optarg, 1, 1u << 16);
            break;
        case OPT_MAX_MODEL_LEN:
            c->max_model_len = (unsigned)parse_uint(name, optarg, 2, 1u << 30);
            break;
        case OPT_PREFILL_TPS:
            c->prefill_tps = parse_num(name, optarg, 0, 1e12);
            break;
        case OPT_DECODE_MS:
            c->decode_ms = parse_num(name, optarg, 0, 1e7);
            break;
        case OPT_DECODE_MS_PER_SEQ:
            c->decode_ms_per_seq = parse_num(name, optarg, 0, 1e7);
            break;
        case OPT_MAX_TOKENS:
            c->max_tokens = (unsigned)parse_uint(name, optarg, 1, 1u << 30);
            break;
        case OPT_ERROR_RATE:
            c->error_rate = parse_num(name, optarg, 0, 1);
            break;
        case OPT_SEED:
            c->seed = parse_uint(name, optarg, 0, UINT64_MAX);
            break;
        case OPT_HANG:
            c->hang = true;
            break;
        case OPT_DIE_AFTER:
            c->die_after = parse_uint(name, optarg, 0, UINT64_MAX);
            break;
        case OPT_DROP_AFTER:
            c->drop_after = (int64_t)parse_uint(name, optarg, 0, INT64_MAX);
            break;
        case OPT_SLOW_START_MS:
            c->slow_start_ms = parse_uint(name, optarg, 0, UINT64_MAX);
            break;
        case OPT_KEEP_ALIVE_MS:
            c->keep_alive_ms = parse_uint(name, optarg, 0, UINT64_MAX);
            break;
        case OPT_FAST:
            c->fast = true;
            break;
        case OPT_LOG_LEVEL:
            level = lx_log_level_parse(optarg);
            if (level < 0)
                die_usage(name, optarg, "not one of debug, info, warn, error");
            lx_log_set_level((enum lx_log_level)level);
            break;
        case OPT_HELP:
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llmux-sim: unexpected argument: %s\n", argv[optind]);
        exit(2);
    }
    if (c->kv_cache_tokens < c->block_size)
        die_usage("kv-cache-tokens", "", "smaller than one block");
    /* vLLM refuses to start when a whole max_model_len sequence does not fit
     * in the KV cache; the sim shrinks max_model_len instead, so that every
     * request it accepts can be admitted. */
    if (c->max_model_len > c->kv_cache_tokens / c->block_size * c->block_size)
        c->max_model_len = (unsigned)(c->kv_cache_tokens / c->block_size * c->block_size);
}

static void on_signal_closed(uv_handle_t *h) {}

static void on_server_closed(void *arg)
{
    struct sim_main *m = arg;

    m->srv = NULL;
    sim_api_set_server(m->api, NULL);
    sim_api_close(m->api);
    m->api = NULL;
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct sim_main *m = s->data;

    lx_info("llmux-sim %s: signal %d: shutting down", m->name, signum);
    uv_close((uv_handle_t *)&m->sigterm, on_signal_closed);
    uv_close((uv_handle_t *)&m->sigint, on_signal_closed);
    /* Force: in-flight and hung requests are aborted, as a stopping vLLM
     * drops its streams; the loop then ends by itself. */
    if (m->srv)
        lx_http_server_close(m->srv, true, on_server_closed, m);
}

int main(int argc, char **argv)
{
    struct sim_conf conf;
    struct sim_main m;
    struct lx_http_limits limits = {
        .head_max = 64 * 1024,
        .body_max = 64u << 20,
        .request_timeout_ms = 30000,
    };
    const char *env_level = getenv("LOG_LEVEL");
    int rc;

    memset(&m, 0, sizeof(m));
    if (env_level && lx_log_level_parse(env_level) >= 0)
        lx_log_set_level((enum lx_log_level)lx_log_level_parse(env_level));
    parse_args(argc, argv, &conf);
    limits.idle_timeout_ms = conf.keep_alive_ms;
    signal(SIGPIPE, SIG_IGN);

    rc = uv_loop_init(&m.loop);
    if (rc < 0) {
        fprintf(stderr, "llmux-sim: uv_loop_init: %s\n", uv_strerror(rc));
        return 1;
    }
    m.api = sim_api_new(&m.loop, &conf);
    rc = lx_http_server_new(&m.loop, conf.host, conf.port, &limits, sim_api_handle, m.api, &m.srv);
    if (rc < 0) {
        fprintf(stderr, "llmux-sim: cannot listen on %s:%d: %s\n", conf.host, conf.port,
                strerror(-rc));
        return 1;
    }
    sim_api_set_server(m.api, m.srv);
    snprintf(m.name, sizeof(m.name), "%s:%d", conf.host, lx_http_server_port(m.srv));
    if (conf.name)
        snprintf(m.name, sizeof(m.name), "%s", conf.name);
    conf.name = m.name;

    uv_signal_init(&m.loop, &m.sigterm);
    uv_signal_init(&m.loop, &m.sigint);
    m.sigterm.data = m.sigint.data = &m;
    uv_signal_start(&m.sigterm, on_signal, SIGTERM);
    uv_signal_start(&m.sigint, on_signal, SIGINT);

    printf("llmux-sim listening on %s:%d\n", conf.host, lx_http_server_port(m.srv));
    fflush(stdout);
    lx_info("llmux-sim %s: model %s, max_num_seqs %u, kv %llu tokens (block %u), "
            "max_model_len %u, prefill %.0f tok/s, decode %.2f ms + %.2f ms/seq%s%s%s",
            m.name, conf.model, conf.max_num_seqs, (unsigned long long)conf.kv_cache_tokens,
            conf.block_size, conf.max_model_len, conf.prefill_tps, conf.decode_ms,
            conf.decode_ms_per_seq, conf.fast ? ", fast" : "", conf.hang ? ", hang" : "",
            conf.drop_after >= 0 ? ", drops streams (--drop-after)" : "");

    uv_run(&m.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&m.loop);
    if (rc < 0)
        lx_warn("llmux-sim %s: loop closed with handles open: %s", m.name, uv_strerror(rc));
    lx_info("llmux-sim %s: stopped", m.name);
    return 0;
}
