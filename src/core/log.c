/* log.c: timestamped log lines and progress bars on stderr. */
#include "core/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_level = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_init_level(void)
{
    const char *env = getenv("LOOM_LOG");
    log_level = LOOM_LOG_INFO;
    if (!env) return;
    if (!strcmp(env, "debug")) log_level = LOOM_LOG_DEBUG;
    else if (!strcmp(env, "warn")) log_level = LOOM_LOG_WARN;
    else if (!strcmp(env, "error")) log_level = LOOM_LOG_ERROR;
    else if (!strcmp(env, "off")) log_level = LOOM_LOG_OFF;
}

void loom_log_set_level(enum loom_log_level level)
{
    log_level = level;
}

enum loom_log_level loom_log_get_level(void)
{
    if (log_level < 0) log_init_level();
    return (enum loom_log_level)log_level;
}

void loom_log(enum loom_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    if ((int)level < (int)loom_log_get_level() || level >= LOOM_LOG_OFF) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s.%03ld %s ", stamp, ts.tv_nsec / 1000000, names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&log_lock);
    va_end(ap);
}

double loom_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress_print(struct loom_progress *p, int final)
{
    double el = loom_now() - p->start;
    double frac = p->total > 0 ? (double)p->done / (double)p->total : 0;
    int width = 30, fill = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    int tty = isatty(2);
    fprintf(stderr, "%s%s [%s] %lld/%lld %.1fs%s", tty ? "\r" : "", p->what, bar, p->done, p->total, el,
            (final || !tty) ? "\n" : "");
    fflush(stderr);
}

void loom_progress_begin(struct loom_progress *p, const char *what, long long total)
{
    p->what = what;
    p->total = total;
    p->done = 0;
    p->start = p->last_print = loom_now();
}

void loom_progress_update(struct loom_progress *p, long long done)
{
    p->done = done;
    double now = loom_now();
    double every = isatty(2) ? 0.1 : 5.0;
    if (now - p->last_print >= every) {
        p->last_print = now;
        progress_print(p, 0);
    }
}

void loom_progress_end(struct loom_progress *p)
{
    progress_print(p, 1);
}
