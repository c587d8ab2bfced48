/*
 * access_log.h - one JSON line per request (ACCESS_LOG: a file path, or "-"
 * for stdout). No secrets: no tokens, api keys or prompt text, ever.
 *
 * Each line goes out in one write(2) to a descriptor opened with O_APPEND,
 * so lines from several workers never interleave. Thread-safe.
 */
#ifndef LX_ACCESS_LOG_H
#define LX_ACCESS_LOG_H

#include <stdbool.h>
#include <stdint.h>

struct lx_access_entry {
    const char *request_id;
    const char *client;        /* client address */
    const char *method;
    const char *path;          /* without the query string */
    const char *model;         /* the model asked for, "" when none */
    const char *node;          /* node that answered (or was tried last), NULL = none */
    int status;                /* sent to the client; 499 = client went away first */
    const char *error;         /* the error code llmux answered or ended a stream with
                                  (failure.h, the proxy's own answers), NULL = none */
    int retries;               /* attempts after the first (retries, resumes, a hedge) */
    int attempts;              /* node requests started */
    const char *hedge;         /* "started" (neither answered), "won", "lost", NULL = none */
    int resumed;               /* stream continuations started (STREAM_RESUME) */
    bool budget_refused;       /* a retry, hedge or resume was refused by the retry budget */
    double queue_wait_s;       /* < 0 = did not wait */
    double ttft_s;             /* < 0 = not a stream or no token */
    double total_s;
    uint64_t bytes_in, bytes_out;
    int64_t prompt_tokens, completion_tokens; /* < 0 = unknown */
    bool stream;
};

/* Opens <path> ("-" = stdout); 0 or -errno. Call once before workers start. */
int lx_access_log_open(const char *path);
bool lx_access_log_enabled(void);
void lx_access_log_write(const struct lx_access_entry *e);
void lx_access_log_close(void);

#endif /* LX_ACCESS_LOG_H */
