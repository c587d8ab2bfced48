/*
 * prom.h - reads the few vLLM load figures llmux routes on out of a node's
 * Prometheus text exposition. Pure, no allocation; fuzzed.
 */
#ifndef LX_PROM_H
#define LX_PROM_H

#include <stdbool.h>
#include <stddef.h>

struct lx_vllm_load {
    double waiting;       /* vllm:num_requests_waiting, summed over series (engines) */
    double running;       /* vllm:num_requests_running, summed */
    double kv_usage;      /* vllm:kv_cache_usage_perc (or the older gpu_cache_usage_perc), 0..1, averaged */
    double cache_tokens;  /* vllm:cache_config_info: num_gpu_blocks x block_size, summed,
                             at most 1e15 */
    double prefix_queries; /* vllm:prefix_cache_queries_total (tokens looked up), summed
                              (falls when it restarts), at most 1e15 */
    double prefix_hits;    /* vllm:prefix_cache_hits_total (tokens found), as prefix_queries */
    bool has_waiting, has_running, has_kv, has_cache_tokens, has_prefix_queries,
        has_prefix_hits;
};

/*
 * Scans <text>. Series of the same metric with several label sets (several
 * engines, data parallel ranks) are summed (counts) or averaged (usage). When
 * both KV-cache names are present the newer one wins. Returns 0 when at least
 * one of the three load metrics was found with a finite value, -1 otherwise
 * (garbage, or not a vLLM); the cache size and the prefix-cache counters come
 * along when present. Gauges above 1e9 are garbage and skipped; the counters
 * may go up to 1e15.
 */
int lx_prom_scan_vllm(const char *text, size_t len, struct lx_vllm_load *out);

#endif /* LX_PROM_H */
