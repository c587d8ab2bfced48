/*
 * access_log.c - JSON access log lines; see access_log.h.
 */
#include "access_log.h"

#include <fcntl.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/buf.h"
#include "../http/server.h"

static int log_fd = -1;

int lx_access_log_open(const char *path)
{
    if (!path || !*path)
        return 0;
    if (strcmp(path, "-") == 0) {
        log_fd = STDOUT_FILENO;
        return 0;
    }
    log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    return log_fd < 0 ? -errno : 0;
}

bool lx_access_log_enabled(void)
{
    return log_fd >= 0;
}

void lx_access_log_close(void)
{
    if (log_fd > STDERR_FILENO)
        close(log_fd);
    log_fd = -1;
}

static void str_field(struct lx_buf *b, const char *key, const char *v)
{
    lx_buf_appendf(b, ",\"%s\":", key);
    if (!v) {
        lx_buf_append(b, "null", 4);
        return;
    }
    lx_buf_append(b, "\"", 1);
    lx_json_escape(b, v, strlen(v));
    lx_buf_append(b, "\"", 1);
}

static void secs_field(struct lx_buf *b, const char *key, double v)
{
    if (v < 0)
        lx_buf_appendf(b, ",\"%s\":null", key);
    else
        lx_buf_appendf(b, ",\"%s\":%.6f", key, v);
}

static void tokens_field(struct lx_buf *b, const char *key, int64_t v)
{
    if (v < 0)
        lx_buf_appendf(b, ",\"%s\":null", key);
    else
        lx_buf_appendf(b, ",\"%s\":%lld", key, (long long)v);
}

void lx_access_log_write(const struct lx_access_entry *e)
{
    char ts[40];
    struct lx_buf b;
    struct timespec now;
    struct tm tm;
    size_t n;

    if (log_fd < 0)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);
    lx_buf_init(&b, 0);
    lx_buf_appendf(&b, "{\"time\":\"%s\"", ts);
    str_field(&b, "request_id", e->request_id);
    str_field(&b, "client", e->client);
    str_field(&b, "method", e->method);
    str_field(&b, "path", e->path);
    str_field(&b, "model", e->model);
    str_field(&b, "node", e->node);
    lx_buf_appendf(&b, ",\"status\":%d,\"stream\":%s,\"retries\":%d", e->status,
                   e->stream ? "true" : "false", e->retries);
    str_field(&b, "error", e->error);
    lx_buf_appendf(&b, ",\"attempts\":%d", e->attempts);
    str_field(&b, "hedge", e->hedge);
    lx_buf_appendf(&b, ",\"resumed\":%d,\"budget_refused\":%s", e->resumed,
                   e->budget_refused ? "true" : "false");
    secs_field(&b, "queue_wait_s", e->queue_wait_s);
    secs_field(&b, "ttft_s", e->ttft_s);
    secs_field(&b, "total_s", e->total_s);
    lx_buf_appendf(&b, ",\"bytes_in\":%llu,\"bytes_out\":%llu", (unsigned long long)e->bytes_in,
                   (unsigned long long)e->bytes_out);
    tokens_field(&b, "prompt_tokens", e->prompt_tokens);
    tokens_field(&b, "completion_tokens", e->completion_tokens);
    lx_buf_append(&b, "}\n", 2);
    if (write(log_fd, b.data, b.len) < 0) {
        /* Nowhere better to report it; the request itself is unaffected. */
    }
    lx_buf_deinit(&b);
}
