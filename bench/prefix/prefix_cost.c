/*
 * prefix_cost.c - what cache_aware's block index costs per request, figures
 * for docs/BENCHMARKS.md (`make bench-prefix`; not part of
 * llmux-bench, which drives real processes).
 *
 * A request is what ca_pick does with it: lx_prefix_blocks over the scanned
 * body, lx_prefix_match on each of 4 nodes, lx_prefix_insert on the one
 * chosen (here round robin). Chat bodies of 1k and 32k tokens at 4 bytes a
 * token (a system prompt and a question), scanned once beforehand as the
 * proxy does. Two cases bracket real traffic:
 *   new     every request is a prompt no node holds (its first bytes carry
 *           a counter), so every block is inserted and evicts an old one:
 *           each node is filled to its capacity first;
 *   repeat  the same prompt again and again: every block is found.
 * Each figure is the median over RUNS runs of the mean over a run. The
 * phases are timed one by one (clock_gettime around each, ~20 ns each,
 * included); "total" comes from runs without the inner clocks.
 *
 * Memory: 1 Mi blocks indexed over 4 nodes of 256 Ki blocks each (the
 * default CACHE_AWARE_INDEX_MAX_BLOCKS), the growth of the resident set
 * from before the first index to after the last block; bytes per block are
 * that growth over the blocks.
 *
 * Single-threaded; one process, one run.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../src/http/body_scan.h"
#include "../../src/nodes/node.h"
#include "../../src/route/prefix.h"

#define NODES 4
#define RUNS 7
#define NODE_TOKENS 262144 /* CACHE_AWARE_NODE_TOKENS default: 8192 blocks */
#define MEM_NODE_BLOCKS (256u * 1024)

struct phase_ns {
    double hash, match, insert, total; /* per request, ns */
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t rss_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static struct lx_node *node_new(uint64_t cache_tokens)
{
    struct lx_node *n = calloc(1, sizeof(*n));

    if (!n)
        abort();
    atomic_init(&n->refs, 1);
    atomic_init(&n->scraped_cache_tokens, cache_tokens);
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A chat body of about <tokens> x 4 bytes of message text; *stamp points at
 * 8 bytes of its first content that a "new" request overwrites. */
static char *chat_body(size_t tokens, char **stamp)
{
    static const char words[] = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    size_t text = tokens * 4, sys = text / 4, ask = text - sys, cap = text + 256, len;
    char *b = malloc(cap);

    if (!b)
        abort();
    len = (size_t)snprintf(b, cap,
                           "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"");
    *stamp = b + len;
    for (size_t i = 0; i < sys; i++)
        b[len++] = i < 8 ? '0' : words[i % (sizeof(words) - 1)];
    len += (size_t)snprintf(b + len, cap - len, "\"},{\"role\":\"user\",\"content\":\"");
    for (size_t i = 0; i < ask; i++)
        b[len++] = words[(i * 7) % (sizeof(words) - 1)];
    snprintf(b + len, cap - len, "\"}],\"max_tokens\":64}");
    return b;
}

static void stamp_set(char *stamp, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 7; i >= 0; i--, v >>= 4)
        stamp[i] = hex[v & 15];
}

/* One run of <n> requests; <timed> splits the phases. Returns ns per request. */
static struct phase_ns run(struct lx_node **nodes, const struct lx_body_scan *scan, char *stamp,
                           bool fresh, uint64_t *serial, size_t n, bool timed, uint64_t *blocks)
{
    struct phase_ns p = {0, 0, 0, 0};
    uint64_t t_start = now_ns(), t0, t1, t2, t3;
    size_t sink = 0;

    for (size_t r = 0; r < n; r++) {
        size_t nb;

        if (fresh)
            stamp_set(stamp, ++*serial);
        t0 = timed ? now_ns() : 0;
        nb = lx_prefix_blocks(scan, blocks, LX_PREFIX_MAX_BLOCKS);
        t1 = timed ? now_ns() : 0;
        for (int i = 0; i < NODES; i++)
            sink += lx_prefix_match(nodes[i], blocks, nb);
        t2 = timed ? now_ns() : 0;
        lx_prefix_insert(nodes[*serial % NODES], blocks, nb);
        t3 = timed ? now_ns() : 0;
        p.hash += (double)(t1 - t0);
        p.match += (double)(t2 - t1);
        p.insert += (double)(t3 - t2);
    }
    p.total = (double)(now_ns() - t_start);
    p.hash /= (double)n;
    p.match /= (double)n;
    p.insert /= (double)n;
    p.total /= (double)n;
    if (sink == (size_t)-1) /* keeps the matches */
        puts("");
    return p;
}

static void measure(size_t tokens, bool fresh, uint64_t *blocks)
{
    struct lx_node *nodes[NODES];
    struct lx_body_scan scan;
    char *stamp, *body = chat_body(tokens, &stamp);
    size_t nb, reqs = tokens >= 16384 ? 400 : 20000;
    uint64_t serial = 0;
    double hash[RUNS], match[RUNS], insert[RUNS], total[RUNS];

    if (lx_body_scan(body, strlen(body), &scan) != LX_SCAN_OK)
        abort();
    nb = lx_prefix_blocks(&scan, blocks, LX_PREFIX_MAX_BLOCKS);
    for (int i = 0; i < NODES; i++)
        nodes[i] = node_new(0);
    /* Warm up: every node full (new), or the prompt held (repeat). */
    if (fresh) {
        size_t fill = (size_t)NODE_TOKENS / 32 / nb + 1;

        run(nodes, &scan, stamp, true, &serial, fill * NODES, false, blocks);
    } else {
        run(nodes, &scan, stamp, false, &serial, 10, false, blocks);
    }
    for (int k = 0; k < RUNS; k++) {
        struct phase_ns t = run(nodes, &scan, stamp, fresh, &serial, reqs, true, blocks);
        struct phase_ns u = run(nodes, &scan, stamp, fresh, &serial, reqs, false, blocks);

        hash[k] = t.hash;
        match[k] = t.match;
        insert[k] = t.insert;
        total[k] = u.total;
    }
    printf("| %5zuk | %6zu | %-6s | %9.2f | %13.2f | %11.2f | %10.2f |\n", tokens / 1024, nb,
           fresh ? "new" : "repeat", median(hash, RUNS) / 1000, median(match, RUNS) / 1000,
           median(insert, RUNS) / 1000, median(total, RUNS) / 1000);
    for (int i = 0; i < NODES; i++)
        lx_node_unref(nodes[i]);
    free(body);
}

/* 1 Mi blocks over 4 nodes: resident growth, bytes per block, ns per block. */
static void memory(void)
{
    struct lx_node *nodes[NODES];
    uint64_t h[1024], x = 0x5eed;
    size_t before, after, total = 0;
    uint64_t t0;

    lx_prefix_set_policy(NODE_TOKENS, (uint64_t)NODES * MEM_NODE_BLOCKS);
    before = rss_bytes();
    for (int i = 0; i < NODES; i++)
        nodes[i] = node_new((uint64_t)MEM_NODE_BLOCKS * 32);
    t0 = now_ns();
    for (int i = 0; i < NODES; i++) {
        for (size_t done = 0; done < MEM_NODE_BLOCKS; done += 1024) {
            for (size_t k = 0; k < 1024; k++) {
                x += 0x9E3779B97F4A7C15ULL; /* distinct: a counter, mixed */
                h[k] = (x ^ (x >> 31)) * 0xBF58476D1CE4E5B9ULL;
            }
            lx_prefix_insert(nodes[i], h, 1024);
        }
        total += lx_prefix_count(nodes[i]);
    }
    t0 = now_ns() - t0;
    after = rss_bytes();
    printf("\nindexed blocks: %zu over %d nodes (LX_PREFIX_ENTRY_BYTES says %d bytes each)\n",
           total, NODES, LX_PREFIX_ENTRY_BYTES);
    printf("resident set growth: %.1f MiB, %.1f bytes per block; inserting: %.0f ns per block\n",
           (double)(after - before) / (1 << 20), (double)(after - before) / (double)total,
           (double)t0 / (double)total);
    for (int i = 0; i < NODES; i++)
        lx_node_unref(nodes[i]);
}

int main(void)
{
    static uint64_t blocks[LX_PREFIX_MAX_BLOCKS];
    static const size_t sizes[] = {1024, 32768};

    /* First, on a fresh heap. */
    memory();
    lx_prefix_set_policy(NODE_TOKENS, 1u << 20);
    printf("\nper request (us, median of %d runs): lx_prefix_blocks, lx_prefix_match on %d nodes,"
           " lx_prefix_insert\n\n",
           RUNS, NODES);
    printf("| tokens | blocks | case   | hash (us) | match x%d (us) | insert (us) | total (us) |\n",
           NODES);
    printf("| -----: | -----: | ------ | --------: | ------------: | ----------: | ---------: |\n");
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        measure(sizes[i], true, blocks);
        measure(sizes[i], false, blocks);
    }
    return 0;
}
