/*
 * fuzz_conf_pool.c - libFuzzer target for the config file's pool parser
 * (lx_conf_pool_from_json), which also validates admin API bodies: any JSON
 * a client sends must give a pool or one error line, never a crash or leak.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lx_conf_pool pool;
    char err[512];
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    int rc;

    if (!j)
        return 0;
    memset(&pool, 0, sizeof(pool));
    err[0] = '\0';
    rc = lx_conf_pool_from_json(&pool, "m", j, "round_robin", "models.m", err, sizeof(err));
    if (rc == 0) {
        if (pool.n_servers == 0 || !pool.strategy)
            abort();
        lx_conf_pool_free(&pool);
    } else if (err[0] == '\0') {
        abort();
    }
    json_decref(j);
    return 0;
}
