/*
 * log.h - leveled logging to stderr, one line per call, safe from any thread
 * (each line is one write(2) call).
 */
#ifndef LX_LOG_H
#define LX_LOG_H

enum lx_log_level { LX_LOG_DEBUG, LX_LOG_INFO, LX_LOG_WARN, LX_LOG_ERROR };

/* Sets the minimum level printed; not thread-safe, call before starting threads. */
void lx_log_set_level(enum lx_log_level level);
/* Parses "debug", "info", "warn"/"warning", "error"; returns -1 if unknown. */
int lx_log_level_parse(const char *name);
void lx_log(enum lx_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs at info level whatever the minimum: for the one "ready" line that
 * scripts and supervisors wait for. */
void lx_log_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define lx_debug(...) lx_log(LX_LOG_DEBUG, __VA_ARGS__)
#define lx_info(...) lx_log(LX_LOG_INFO, __VA_ARGS__)
#define lx_warn(...) lx_log(LX_LOG_WARN, __VA_ARGS__)
#define lx_error(...) lx_log(LX_LOG_ERROR, __VA_ARGS__)

#endif /* LX_LOG_H */
