/*
 * log: levelled, timestamped log lines on stderr.
 *
 * One line per event: `2026-11-27T11:18:02.123Z INFO  api: message`. A line is
 * written with a single write(2) so that lines from several threads never
 * interleave. The level and the component name are configuration: set them
 * once in main() before threads start.
 */
#pragma once

#include <stdarg.h>

enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO = 1,
    LOG_WARN = 2,
    LOG_ERROR = 3,
};

/* Set the lowest level that is printed and the component name that starts each
 * message (borrowed: must outlive the process, a string literal in practice).
 * Not thread-safe: call from main() before starting threads. */
void log_setup(enum log_level level, const char *component);

/* Parse "debug", "info", "warn" or "error" (case-insensitive). Returns 0 and
 * sets *out, or -1 when the name is not one of those. */
int log_level_parse(const char *name, enum log_level *out);

/* Whether a message at `level` would be printed. */
int log_enabled(enum log_level level);

/* Print one line at `level`. Thread-safe. Never allocates; a message longer
 * than 2 KiB is cut and ends with "...". */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
