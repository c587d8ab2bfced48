/*
 * api.h - the one list of the OpenAI-compatible API endpoints llmux serves
 * (an X-macro, like src/conf/strategies.h).
 *
 * Whoever needs the list builds from it: the gateway's routing table, the
 * metrics (llmux_endpoint_requests_total{endpoint}: the path is the label, so
 * the label values are this fixed set plus "other"), the docs. Adding an
 * endpoint is one line here. Self-contained: nothing but <stdbool.h> and
 * <stddef.h>.
 *
 * Paths are matched exactly, without the query string; an endpoint with
 * LX_API_SUBPATHS also owns `path/<anything>` (GET /v1/models/{id}). vLLM's
 * other names for an endpoint (/rerank and /v2/rerank, /score) are aliases
 * in api.c.
 */
#ifndef LX_API_H
#define LX_API_H

#include <stdbool.h>
#include <stddef.h>

/* What an endpoint's requests are like (the flags column below). */
/* clang-format off */
#define LX_API_GET       (1u << 0) /* GET; without it, POST */
#define LX_API_MODEL     (1u << 1) /* routed by a "model": the JSON body's field, or the
                                      multipart form field with LX_API_MULTIPART */
#define LX_API_STREAM    (1u << 2) /* may answer with an SSE stream ("stream": true) */
#define LX_API_MULTIPART (1u << 3) /* the body is multipart/form-data (audio files) */
#define LX_API_SUBPATHS  (1u << 4) /* path/<id> belongs to it too */
/* clang-format on */

/* X(id, path, flags): an endpoint, LX_API_<id> in enum lx_api. The order is
 * the one the metrics and the docs list. */
#define LX_API_ENDPOINTS(X)                                                                        \
    X(CHAT_COMPLETIONS, "/v1/chat/completions", LX_API_MODEL | LX_API_STREAM)                      \
    X(COMPLETIONS, "/v1/completions", LX_API_MODEL | LX_API_STREAM)                                \
    X(EMBEDDINGS, "/v1/embeddings", LX_API_MODEL)                                                  \
    X(RERANK, "/v1/rerank", LX_API_MODEL)                                                          \
    X(SCORE, "/v1/score", LX_API_MODEL)                                                            \
    X(RESPONSES, "/v1/responses", LX_API_MODEL | LX_API_STREAM)                                    \
    X(AUDIO_TRANSCRIPTIONS, "/v1/audio/transcriptions",                                            \
      LX_API_MODEL | LX_API_STREAM | LX_API_MULTIPART)                                             \
    X(AUDIO_TRANSLATIONS, "/v1/audio/translations",                                                \
      LX_API_MODEL | LX_API_STREAM | LX_API_MULTIPART)                                             \
    X(TOKENIZE, "/tokenize", LX_API_MODEL)                                                         \
    X(DETOKENIZE, "/detokenize", LX_API_MODEL)                                                     \
    X(POOLING, "/pooling", LX_API_MODEL)                                                           \
    X(CLASSIFY, "/classify", LX_API_MODEL)                                                         \
    X(MODELS, "/v1/models", LX_API_GET | LX_API_SUBPATHS)

/* LX_API_OTHER (0, so a zeroed record means "not one of these") stands for
 * any other path. */
enum lx_api {
    LX_API_OTHER,
#define LX_API_ENUM(id, path, flags) LX_API_##id,
    LX_API_ENDPOINTS(LX_API_ENUM)
#undef LX_API_ENUM
    LX_API__N
};

struct lx_api_endpoint {
    const char *path; /* also the metric label; "other" for LX_API_OTHER */
    size_t path_len;
    unsigned flags; /* LX_API_* above */
};

/* Indexed by enum lx_api. */
extern const struct lx_api_endpoint lx_api_endpoints[LX_API__N];

/* The endpoint of a request path (<len> bytes, not NUL-terminated; a query
 * string from '?' on is ignored); LX_API_OTHER when none. Pure. */
enum lx_api lx_api_lookup(const char *path, size_t len);

static inline bool lx_api_has(enum lx_api ep, unsigned flag)
{
    return (lx_api_endpoints[ep].flags & flag) != 0;
}

#endif /* LX_API_H */
