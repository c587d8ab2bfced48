/*
 * failure.h - the ways an exchange with a node fails, in one table: the
 * label llmux_upstream_errors_total and /stats use, what the client gets
 * when no other node is left to try, and whether one may be tried.
 */
#ifndef LX_FAILURE_H
#define LX_FAILURE_H

#include <stdbool.h>

enum lx_fail {
    LX_FAIL_CONNECT,        /* no connection: refused, unreachable, DNS, connect timeout */
    LX_FAIL_TIMEOUT,        /* no whole response head within NODE_TIMEOUT_SECONDS */
    LX_FAIL_STATUS_5XX,     /* the node answered 429 or 5xx (only 5xx counts as an error) */
    LX_FAIL_PROTOCOL,       /* the answer broke HTTP, or the node closed before it
                               (counted so; that one is answered as CONNECT) */
    LX_FAIL_STREAM_BROKEN,  /* the response broke after it reached the client */
    LX_FAIL__N
};

struct lx_fail_kind {
    const char *label;      /* metric label and /stats key */
    int status;             /* the client's status when it is the last word */
    const char *code;       /* the OpenAI error code sent with it */
    const char *message;
    bool retryable;         /* another node may be tried: nothing reached the client */
};

extern const struct lx_fail_kind lx_fail_kinds[LX_FAIL__N];

#endif /* LX_FAILURE_H */
