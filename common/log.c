/*
 * log: levelled, timestamped log lines on stderr (see log.h).
 *
 * Key decision: format the whole line into a stack buffer and emit it with one
 * write(2), so concurrent threads never interleave and the error path never
 * allocates.
 */
#include "common/log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

static enum log_level log_min_level = LOG_INFO;
static const char *log_component = "millrace";

static const char *const log_level_names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void log_setup(enum log_level level, const char *component)
{
    log_min_level = level;
    if (component)
        log_component = component;
}

int log_level_parse(const char *name, enum log_level *out)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

int log_enabled(enum log_level level)
{
    return level >= log_min_level;
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    if (level < log_min_level)
        return;
    if ((int)level < 0 || level > LOG_ERROR)
        level = LOG_ERROR;

    char line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, log_level_names[level], log_component);
    if (n < 0)
        return;
    size_t used = (size_t)n;
    int m = vsnprintf(line + used, sizeof(line) - used, fmt, ap);
    if (m < 0)
        m = 0;
    if (used + (size_t)m >= sizeof(line) - 1) {
        /* cut: keep room for "...\n" */
        used = sizeof(line) - 5;
        memcpy(line + used, "...", 3);
        used += 3;
    } else {
        used += (size_t)m;
    }
    line[used++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, used);
    (void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}
