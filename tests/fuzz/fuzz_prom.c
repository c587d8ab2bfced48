/*
 * fuzz_prom.c - libFuzzer target for lx_prom_scan_vllm (node /metrics text).
 * A scrape's body comes from the network: any bytes must give a clean answer,
 * and found figures must be finite, non-negative, and the KV usage within 0..1;
 * the cache size and prefix queries too, and zero when not found.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nodes/prom.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    struct lx_vllm_load load;
    int rc;

    memcpy(text, data, size);
    rc = lx_prom_scan_vllm(text, size, &load);
    if (rc == 0 && !load.has_waiting && !load.has_running && !load.has_kv)
        abort();
    if (!isfinite(load.waiting) || !isfinite(load.running) || load.waiting < 0 ||
        load.running < 0 || load.kv_usage < 0 || load.kv_usage > 1)
        abort();
    if (!isfinite(load.cache_tokens) || load.cache_tokens < 0 || !isfinite(load.prefix_queries) ||
        load.prefix_queries < 0 || (!load.has_cache_tokens && load.cache_tokens != 0) ||
        (!load.has_prefix_queries && load.prefix_queries != 0))
        abort();
    /* The counters are stored as uint64_t: at most 1e15, exact. */
    if (!(load.prefix_hits >= 0 && load.prefix_hits <= 1e15) || load.prefix_queries > 1e15 ||
        (!load.has_prefix_hits && load.prefix_hits != 0))
        abort();
    free(text);
    return 0;
}
