/*
 * main.c - llmux-bench: the command line, and the run and sweep commands on
 * top of client.c (load) and report.c (output).
 *
 *   llmux-bench run   [flags]   naive, concurrent, or both and their multiplier
 *   llmux-bench sweep [flags]   one concurrent run per --concurrencies level
 *
 * The first seed's flags and defaults are kept (its users' commands work
 * unchanged); flags given without a command mean `run`, as its
 * run_benchmark.py took them. Exit status: 0 when the benchmark ran and at
 * least one request succeeded, 1 when none did or an output file could not
 * be written, 2 on a bad command line, 130 after Ctrl-C (the figures so far
 * are still reported and written). docs/BENCH_CLIENT.md has the details.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../src/core/lx.h"
#include "../src/core/parse.h"
#include "bench.h"

#define DEFAULT_MODEL "mistralai/Mistral-7B-Instruct-v0.3"
#define DEFAULT_LEVELS "1,2,4,8,12,16"
#define MAX_LEVELS 64
#define MAX_HEADERS 32

enum {
    OPT_MODE = 256,
    OPT_NUM_REQUESTS,
    OPT_CONCURRENCY,
    OPT_PROMPT_TOKENS,
    OPT_MAX_TOKENS,
    OPT_BASE_URL,
    OPT_AUTH_TOKEN,
    OPT_MODEL,
    OPT_OUTPUT,
    OPT_LOG_NODE,
    OPT_STREAM,
    OPT_DURATION,
    OPT_RATE,
    OPT_ENDPOINT,
    OPT_TIMEOUT,
    OPT_CONNECT_TIMEOUT,
    OPT_HEADER,
    OPT_NO_PROGRESS,
    OPT_CONCURRENCIES,
    OPT_OUTPUT_JSON,
    OPT_OUTPUT_CSV,
    OPT_PLOT,
    OPT_HELP,
    OPT_VERSION,
};

static const struct option options[] = {
    {"mode", required_argument, NULL, OPT_MODE},
    {"num-requests", required_argument, NULL, OPT_NUM_REQUESTS},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"prompt-tokens", required_argument, NULL, OPT_PROMPT_TOKENS},
    {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
    {"base-url", required_argument, NULL, OPT_BASE_URL},
    {"auth-token", required_argument, NULL, OPT_AUTH_TOKEN},
    {"model", required_argument, NULL, OPT_MODEL},
    {"output", required_argument, NULL, OPT_OUTPUT},
    {"log-node", no_argument, NULL, OPT_LOG_NODE},
    {"stream", no_argument, NULL, OPT_STREAM},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"rate", required_argument, NULL, OPT_RATE},
    {"endpoint", required_argument, NULL, OPT_ENDPOINT},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"header", required_argument, NULL, OPT_HEADER},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"concurrencies", required_argument, NULL, OPT_CONCURRENCIES},
    {"output-json", required_argument, NULL, OPT_OUTPUT_JSON},
    {"output-csv", required_argument, NULL, OPT_OUTPUT_CSV},
    {"plot", required_argument, NULL, OPT_PLOT},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static const char common_help[] =
    "  --base-url URL         server, with or without a trailing /v1 (default\n"
    "                         http://localhost:8000); requests go to URL/v1/chat/completions\n"
    "                         or URL/v1/completions. llmux, a vLLM node, llmux-sim, ...\n"
    "  --auth-token T         sends Authorization: Bearer T (default: $AUTH_TOKEN, else none)\n"
    "  --model M              the request's model (default: $MODEL_NAME, else\n"
    "                         " DEFAULT_MODEL ")\n"
    "  --endpoint E           chat (default) or completions\n"
    "  --prompt-tokens P      synthetic prompt of about P tokens, 4 characters each\n"
    "                         (default 120); the same text every request\n"
    "  --max-tokens M         max_tokens of each request (default 200)\n"
    "  --stream               stream the answers (SSE): adds time to first token and\n"
    "                         inter-token latency; asks for usage in the stream\n"
    "  --num-requests N       requests per run (default 60)\n"
    "  --duration S           run for S seconds instead of a count (requests in\n"
    "                         flight at the end finish and count)\n"
    "  --timeout S            a request fails as `timeout` after S seconds (default 180)\n"
    "  --connect-timeout S    connect fails after S seconds (default 10)\n"
    "  --header 'K: V'        an extra request header (repeatable), e.g. x-sim: tokens=50\n"
    "  --no-progress          no progress bar (it is only drawn when stderr is a terminal)\n"
    "  --help                 this text\n";

static void usage_main(FILE *f)
{
    fprintf(f, "usage: llmux-bench run [flags]     naive vs concurrent throughput and latency\n"
               "       llmux-bench sweep [flags]   one concurrent run per concurrency level\n"
               "       llmux-bench --version\n"
               "\n"
               "A benchmark client for OpenAI-compatible servers (llmux, vLLM, llmux-sim).\n"
               "Flags without a command mean `run`. `llmux-bench run --help` and\n"
               "`llmux-bench sweep --help` list the flags; docs/BENCH_CLIENT.md explains the\n"
               "figures. Example:\n"
               "\n"
               "  llmux-bench run --mode both --num-requests 60 --concurrency 12 \\\n"
               "      --base-url http://localhost:8000 --auth-token T --model M --output run.json\n"
               "  llmux-bench sweep --concurrencies 1,2,4,8 --output-json s.json \\\n"
               "      --output-csv s.csv --plot s.svg\n");
}

static void usage_run(FILE *f)
{
    fprintf(f,
            "usage: llmux-bench run [flags]\n"
            "Sends the same chat (or completions) request many times and reports\n"
            "throughput, latency percentiles, errors and the X-Routed-Node distribution.\n"
            "\n"
            "  --mode naive|concurrent|both\n"
            "                         naive: one request after another; concurrent: C at\n"
            "                         once; both (default): naive, then concurrent, and the\n"
            "                         concurrent/naive throughput multiplier\n"
            "  --concurrency C        requests in flight at most (default 12)\n"
            "  --rate R               open loop: start R requests per second whether or not\n"
            "                         earlier ones finished, at most C in flight; latency is\n"
            "                         counted from when each request was due\n"
            "  --output FILE.json     write every figure and the configuration as JSON\n"
            "                         (--output-json is the same)\n"
            "  --log-node             print the node distribution (it is always in the JSON)\n"
            "%s",
            common_help);
}

static void usage_sweep(FILE *f)
{
    fprintf(f,
            "usage: llmux-bench sweep [flags]\n"
            "One concurrent run per concurrency level: where throughput levels off and\n"
            "latency starts to grow.\n"
            "\n"
            "  --concurrencies LIST   comma-separated levels (default " DEFAULT_LEVELS ")\n"
            "  --output-json FILE     one row per level, every figure (--output is the same)\n"
            "  --output-csv FILE      one row per level\n"
            "  --plot FILE.svg        chart: throughput and p95 latency vs concurrency\n"
            "  --num-requests N       requests per level (default 60), or --duration S per level\n"
            "%s",
            common_help);
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die_usage(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "llmux-bench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'llmux-bench --help'.\n");
    exit(2);
}

static double parse_num(const char *opt, const char *val, double min, double max)
{
    double v = 0;
    const char *why = lx_parse_double(val, min, max, &v);

    if (why)
        die_usage("--%s %s: %s", opt, val, why);
    return v;
}

static uint64_t parse_uint(const char *opt, const char *val, uint64_t min, uint64_t max)
{
    uint64_t v = 0;
    const char *why = lx_parse_u64(val, min, max, &v);

    if (why)
        die_usage("--%s %s: %s", opt, val, why);
    return v;
}

static unsigned parse_levels(const char *val, unsigned *out)
{
    char buf[1024], *save = NULL, *tok;
    unsigned n = 0;

    if (strlen(val) >= sizeof(buf))
        die_usage("--concurrencies %s: too long", val);
    strcpy(buf, val);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (!*tok)
            continue;
        if (n == MAX_LEVELS)
            die_usage("--concurrencies %s: at most 64 levels", val);
        out[n++] = (unsigned)parse_uint("concurrencies", tok, 1, 100000);
    }
    if (!n)
        die_usage("--concurrencies %s: list at least one level", val);
    return n;
}

/* Enough descriptors for the connections: raise the soft limit if needed. */
static void check_fd_limit(unsigned concurrency)
{
    struct rlimit rl;
    char need[32], have[32];

    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    if (rl.rlim_cur < (rlim_t)concurrency + 32 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = LX_MIN(rl.rlim_max, (rlim_t)concurrency + 32);
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < (rlim_t)concurrency + 32) {
        snprintf(need, sizeof(need), "%u", concurrency + 32);
        snprintf(have, sizeof(have), "%llu", (unsigned long long)rl.rlim_cur);
        die_usage("concurrency needs %s file descriptors; ulimit -n allows %s", need, have);
    }
}

static void parse_args(int argc, char **argv, struct bench_conf *c)
{
    static const char *headers[MAX_HEADERS];
    static unsigned levels[MAX_LEVELS];
    bool set_num = false, set_mode = false, set_conc = false;
    const char *sub = c->sweep ? "sweep" : "run", *env;
    int opt;

    *c = (struct bench_conf){
        .sweep = c->sweep,
        .mode = BENCH_BOTH,
        .num_requests = 60,
        .concurrency = 12,
        .prompt_tokens = 120,
        .max_tokens = 200,
        .base_url = "http://localhost:8000",
        .model = DEFAULT_MODEL,
        .endpoint = BENCH_CHAT,
        .timeout_s = 180,
        .connect_timeout_s = 10,
        .progress = true,
        .headers = headers,
        .levels = levels,
    };
    env = getenv("AUTH_TOKEN");
    if (env && *env)
        c->auth_token = env;
    env = getenv("MODEL_NAME");
    if (env && *env)
        c->model = env;

    opterr = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        const char *name =
            opt >= OPT_MODE && opt <= OPT_VERSION ? options[opt - OPT_MODE].name : "";

        switch (opt) {
        case OPT_MODE:
            if (!strcmp(optarg, "naive"))
                c->mode = BENCH_NAIVE;
            else if (!strcmp(optarg, "concurrent"))
                c->mode = BENCH_CONCURRENT;
            else if (!strcmp(optarg, "both"))
                c->mode = BENCH_BOTH;
            else
                die_usage("--mode %s: use naive, concurrent or both", optarg);
            set_mode = true;
            break;
        case OPT_NUM_REQUESTS:
            c->num_requests = parse_uint(name, optarg, 1, 1000000000);
            set_num = true;
            break;
        case OPT_CONCURRENCY:
            c->concurrency = (unsigned)parse_uint(name, optarg, 1, 100000);
            set_conc = true;
            break;
        case OPT_PROMPT_TOKENS:
            c->prompt_tokens = (unsigned)parse_uint(name, optarg, 1, 4000000);
            break;
        case OPT_MAX_TOKENS:
            c->max_tokens = (unsigned)parse_uint(name, optarg, 1, 100000000);
            break;
        case OPT_BASE_URL:
            c->base_url = optarg;
            break;
        case OPT_AUTH_TOKEN:
            if (strpbrk(optarg, "\r\n"))
                die_usage("--auth-token: must not contain a line break");
            c->auth_token = *optarg ? optarg : NULL;
            break;
        case OPT_MODEL:
            c->model = optarg;
            break;
        case OPT_OUTPUT:
        case OPT_OUTPUT_JSON:
            c->output = optarg;
            break;
        case OPT_LOG_NODE:
            c->log_node = true;
            break;
        case OPT_STREAM:
            c->stream = true;
            break;
        case OPT_DURATION:
            c->duration_s = parse_num(name, optarg, 0.001, 1e7);
            break;
        case OPT_RATE:
            c->rate = parse_num(name, optarg, 0.001, 1e7);
            break;
        case OPT_ENDPOINT:
            if (!strcmp(optarg, "chat"))
                c->endpoint = BENCH_CHAT;
            else if (!strcmp(optarg, "completions"))
                c->endpoint = BENCH_COMPLETIONS;
            else
                die_usage("--endpoint %s: use chat or completions", optarg);
            break;
        case OPT_TIMEOUT:
            c->timeout_s = parse_num(name, optarg, 0.001, 1e7);
            break;
        case OPT_CONNECT_TIMEOUT:
            c->connect_timeout_s = parse_num(name, optarg, 0.001, 1e7);
            break;
        case OPT_HEADER:
            if (!strchr(optarg, ':') || *optarg == ':' || strpbrk(optarg, "\r\n"))
                die_usage("--header %s: expected 'Name: value' on one line", optarg);
            if (c->n_headers == MAX_HEADERS)
                die_usage("--header %s: at most 32 headers", optarg);
            headers[c->n_headers++] = optarg;
            break;
        case OPT_NO_PROGRESS:
            c->progress = false;
            break;
        case OPT_CONCURRENCIES:
            if (!c->sweep)
                die_usage("--concurrencies is a sweep flag: llmux-bench sweep --concurrencies %s",
                          optarg);
            c->n_levels = parse_levels(optarg, levels);
            break;
        case OPT_OUTPUT_CSV:
        case OPT_PLOT:
            if (!c->sweep)
                die_usage("--%s is a sweep flag (llmux-bench sweep --%s ...)", name, name);
            if (opt == OPT_OUTPUT_CSV)
                c->output_csv = optarg;
            else
                c->plot = optarg;
            break;
        case OPT_HELP:
        case 'h':
            if (c->sweep)
                usage_sweep(stdout);
            else
                usage_run(stdout);
            exit(0);
        case OPT_VERSION:
            printf("llmux-bench " BENCH_VERSION "\n");
            exit(0);
        case ':':
            die_usage("%s: needs a value", argv[optind - 1]);
            break;
        default:
            if (optopt >= OPT_MODE && optopt <= OPT_VERSION)
                die_usage("--%s: needs a value", options[optopt - OPT_MODE].name);
            die_usage("%s: unknown flag for `%s`", argv[optind - 1], sub);
        }
    }
    if (optind < argc)
        die_usage("%s: unexpected argument for `%s`", argv[optind], sub);
    if (set_num && c->duration_s > 0)
        die_usage("give --num-requests or --duration, not both");
    if (c->duration_s > 0)
        c->num_requests = 0;
    if (c->sweep) {
        if (set_mode)
            die_usage("--mode is a run flag: a sweep runs concurrent levels");
        if (c->rate > 0)
            die_usage("--rate is a run flag: a sweep runs closed-loop levels");
        if (set_conc)
            die_usage("sweep takes --concurrencies LIST, not --concurrency");
        if (!c->n_levels)
            c->n_levels = parse_levels(DEFAULT_LEVELS, levels);
        for (unsigned i = 0; i < c->n_levels; i++)
            check_fd_limit(c->levels[i]);
    } else {
        if (c->rate > 0 && c->mode == BENCH_NAIVE)
            die_usage("--rate applies to the concurrent run: use --mode concurrent or both");
        check_fd_limit(c->concurrency);
    }
}

static void say_saved(const char *what, const char *path, int rc, int *status)
{
    if (rc) {
        fprintf(stderr, "llmux-bench: cannot write %s: %s\n", path, strerror(-rc));
        *status = 1;
    } else {
        printf("Saved %s to %s\n", what, path);
    }
}

static int phase(const struct bench_conf *c, const struct bench_target *t, unsigned concurrency,
                 double rate, struct bench_result *r)
{
    int rc = bench_client_run(c, t, concurrency, rate, r);

    if (rc)
        fprintf(stderr, "llmux-bench: out of memory\n");
    return rc;
}

static int cmd_run(const struct bench_conf *c, const struct bench_target *t)
{
    struct bench_result naive, conc, *a = NULL, *b = NULL;
    int status = 0;
    bool by_tokens;

    bench_result_init(&naive, "naive");
    bench_result_init(&conc, "concurrent");
    if (c->mode & BENCH_NAIVE) {
        if (phase(c, t, 1, 0, &naive))
            return 1;
        a = &naive;
    }
    if (c->mode & BENCH_CONCURRENT) {
        if (phase(c, t, c->concurrency, c->rate, &conc))
            return 1;
        if (a)
            b = &conc;
        else
            a = &conc;
    }
    bench_report_table(c, t, a, b);
    if (c->log_node) {
        printf("\n");
        if (c->mode & BENCH_NAIVE)
            bench_report_nodes(&naive, "Naive");
        if (c->mode & BENCH_CONCURRENT)
            bench_report_nodes(&conc, "Concurrent");
    }
    /* The seed's summary lines, for scripts that read them. */
    printf("\n");
    if (c->mode & BENCH_NAIVE)
        printf("Naive tok/s:      %.2f\n", bench_result_tps(&naive));
    if (c->mode & BENCH_CONCURRENT)
        printf("Concurrent tok/s: %.2f\n", bench_result_tps(&conc));
    if (c->mode == BENCH_BOTH) {
        double m = bench_multiplier(&naive, &conc, &by_tokens);

        if (m > 0)
            printf("Multiplier:       %.2fx (%s)\n", m,
                   by_tokens ? "completion tokens/s" : "requests/s");
        else
            printf("Multiplier:       n/a (no successful %s request)\n",
                   naive.ok ? "concurrent" : "naive");
    }
    if (c->output)
        say_saved("results", c->output,
                  bench_report_run_json(c->output, c, t, (c->mode & BENCH_NAIVE) ? &naive : NULL,
                                        (c->mode & BENCH_CONCURRENT) ? &conc : NULL),
                  &status);
    if (naive.ok + conc.ok == 0) {
        fprintf(stderr, "llmux-bench: no request succeeded\n");
        status = 1;
    }
    if (naive.interrupted || conc.interrupted)
        status = 130;
    bench_result_deinit(&naive);
    bench_result_deinit(&conc);
    return status;
}

static int cmd_sweep(const struct bench_conf *c, const struct bench_target *t)
{
    struct bench_result *rows = lx_calloc(c->n_levels, sizeof(*rows));
    static char labels[MAX_LEVELS][24];
    uint64_t ok = 0;
    unsigned n = 0;
    int status = 0;

    for (unsigned i = 0; i < c->n_levels; i++) {
        struct bench_result *r = &rows[i];
        struct bench_summary lat;

        snprintf(labels[i], sizeof(labels[i]), "c=%u", c->levels[i]);
        bench_result_init(r, labels[i]);
        n++;
        if (phase(c, t, c->levels[i], 0, r)) {
            status = 1;
            break;
        }
        ok += r->ok;
        bench_samples_summary(&r->latency_ms, &lat);
        /* The seed's line per level. */
        printf("c=%-2u tok/s=%.2f p95=%.2fms err=%.2f%%  req/s=%.2f\n", c->levels[i],
               bench_result_tps(r), lat.p95,
               r->ok + r->errors ? 100.0 * (double)r->errors / (double)(r->ok + r->errors) : 0,
               bench_result_rps(r));
        fflush(stdout);
        if (r->interrupted)
            break;
    }
    bench_report_sweep_table(rows, n);
    printf("\n");
    if (c->output)
        say_saved("sweep JSON", c->output, bench_report_sweep_json(c->output, c, t, rows, n),
                  &status);
    if (c->output_csv)
        say_saved("sweep CSV ", c->output_csv, bench_report_sweep_csv(c->output_csv, rows, n),
                  &status);
    if (c->plot)
        say_saved("sweep plot", c->plot, bench_report_sweep_svg(c->plot, c, rows, n), &status);
    if (!ok) {
        fprintf(stderr, "llmux-bench: no request succeeded\n");
        status = 1;
    }
    if (n && rows[n - 1].interrupted)
        status = 130;
    for (unsigned i = 0; i < n; i++)
        bench_result_deinit(&rows[i]);
    free(rows);
    return status;
}

int main(int argc, char **argv)
{
    struct bench_conf conf = {0};
    struct bench_target target;
    const char *cmd = argc > 1 ? argv[1] : NULL;
    int rc, status;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!cmd || !strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage_main(cmd ? stdout : stderr);
        return cmd ? 0 : 2;
    }
    if (!strcmp(cmd, "--version")) {
        printf("llmux-bench " BENCH_VERSION "\n");
        return 0;
    }
    if (!strcmp(cmd, "run") || !strcmp(cmd, "sweep")) {
        conf.sweep = !strcmp(cmd, "sweep");
        argv[1] = argv[0];
        argc--;
        argv++;
    } else if (strncmp(cmd, "--", 2) != 0) {
        fprintf(stderr,
                "llmux-bench: %s: unknown command (run or sweep)\n"
                "Try 'llmux-bench --help'.\n",
                cmd);
        return 2;
    }
    parse_args(argc, argv, &conf);

    rc = bench_target_init(&target, &conf);
    if (rc)
        return rc == LX_EINVAL ? 2 : 1;
    status = conf.sweep ? cmd_sweep(&conf, &target) : cmd_run(&conf, &target);
    bench_target_deinit(&target);
    return status;
}
