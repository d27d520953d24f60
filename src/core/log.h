/*
 * log.h: one-line log records on stderr: "2026-11-25 10:00:00.123 INFO  [req-12] message".
 * The level comes from LOOM_LOG (debug|info|warn|error, default info) or loom_log_set_level.
 */
#ifndef LOOM_CORE_LOG_H
#define LOOM_CORE_LOG_H

#include "core/error.h"

enum loom_log_level { LOOM_LOG_DEBUG = 0, LOOM_LOG_INFO, LOOM_LOG_WARN, LOOM_LOG_ERROR, LOOM_LOG_OFF };

void loom_log_set_level(enum loom_log_level level);
enum loom_log_level loom_log_get_level(void);
void loom_log(enum loom_log_level level, const char *fmt, ...) LOOM_PRINTF(2, 3);

#define LOG_DEBUG(...) loom_log(LOOM_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...)  loom_log(LOOM_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...)  loom_log(LOOM_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) loom_log(LOOM_LOG_ERROR, __VA_ARGS__)

/* Monotonic clock in seconds, for timings and progress. */
double loom_now(void);

/* A progress line on stderr, redrawn in place on a terminal and printed every few seconds otherwise. */
struct loom_progress {
    const char *what;
    long long total, done;
    double start, last_print;
};
void loom_progress_begin(struct loom_progress *p, const char *what, long long total);
void loom_progress_update(struct loom_progress *p, long long done);
void loom_progress_end(struct loom_progress *p);

#endif
