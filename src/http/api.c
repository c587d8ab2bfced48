/*
 * api.c - the endpoint table and its lookup; see api.h.
 */
#include "api.h"

#include <string.h>

const struct lx_api_endpoint lx_api_endpoints[LX_API__N] = {[LX_API_OTHER] = {"other", 5, 0},
#define LX_API_ENTRY(id, path, flags) [LX_API_##id] = {path, sizeof(path) - 1, flags},
                                                            LX_API_ENDPOINTS(LX_API_ENTRY)
#undef LX_API_ENTRY
};

/* Other paths vLLM serves the same endpoint on (the request is forwarded
 * on the path it came with; the metric label is the endpoint's). */
static const struct {
    const char *path;
    enum lx_api ep;
} aliases[] = {
    {"/rerank", LX_API_RERANK},
    {"/v2/rerank", LX_API_RERANK},
    {"/score", LX_API_SCORE},
};

enum lx_api lx_api_lookup(const char *path, size_t len)
{
    const char *q = memchr(path, '?', len);

    if (q)
        len = (size_t)(q - path);
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (len == strlen(aliases[i].path) && memcmp(path, aliases[i].path, len) == 0)
            return aliases[i].ep;
    for (int i = LX_API_OTHER + 1; i < LX_API__N; i++) {
        const struct lx_api_endpoint *e = &lx_api_endpoints[i];

        if (len < e->path_len || memcmp(path, e->path, e->path_len) != 0)
            continue;
        if (len == e->path_len)
            return (enum lx_api)i;
        /* path/<id>: at least one byte after the slash. */
        if ((e->flags & LX_API_SUBPATHS) && path[e->path_len] == '/' && len > e->path_len + 1)
            return (enum lx_api)i;
    }
    return LX_API_OTHER;
}
