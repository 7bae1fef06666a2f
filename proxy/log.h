/*
 * log: the error log (stderr, one line per event, with a level) and the
 * access log (combined or JSON, to stderr or a file).
 *
 * The level is tested in the macros before anything is formatted. Error
 * lines are written with one write(2) each. Access lines are formatted into
 * the calling worker's own buffer (struct log_access_buf, owned by the
 * worker) and written out when it fills or on the worker's flush timer, so
 * the hot path does one write per batch, not per request. The access log
 * file descriptor is process-wide; log_access_reopen() swaps it (SIGUSR1).
 */
#ifndef CLONEGATE_LOG_H
#define CLONEGATE_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

#define LOG_ACCESS_BUF_SIZE 4096 /* flushed before it would exceed this (PIPE_BUF) */

extern int log_level_current; /* read by the macros; set once by log_init() */

/* Sets the error log level from its name ("error", "warn", "info",
 * "debug"); returns -1 for an unknown name. Main thread, before workers. */
int log_set_level(const char *name);

/* Routes libevent's own messages through log_*. Main thread, at start. */
void log_init(void);

void log_write(enum log_level level, int with_errno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define log_error(...) log_write(LOG_LEVEL_ERROR, 0, __VA_ARGS__)
/* log_warn appends strerror(errno); log_warnx does not. */
#define log_warn(...)                                                                              \
    do {                                                                                           \
        if (log_level_current >= LOG_LEVEL_WARN)                                                   \
            log_write(LOG_LEVEL_WARN, 1, __VA_ARGS__);                                             \
    } while (0)
#define log_warnx(...)                                                                             \
    do {                                                                                           \
        if (log_level_current >= LOG_LEVEL_WARN)                                                   \
            log_write(LOG_LEVEL_WARN, 0, __VA_ARGS__);                                             \
    } while (0)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_level_current >= LOG_LEVEL_INFO)                                                   \
            log_write(LOG_LEVEL_INFO, 0, __VA_ARGS__);                                             \
    } while (0)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_level_current >= LOG_LEVEL_DEBUG)                                                  \
            log_write(LOG_LEVEL_DEBUG, 0, __VA_ARGS__);                                            \
    } while (0)

/* One finished request, as the access log records it. Strings are not
 * NUL-terminated; lengths are given. */
struct log_access_entry {
    const char *client; /* "ip" */
    const char *method; /* request method */
    size_t method_len;
    const char *target; /* request target */
    size_t target_len;
    const char *protocol; /* "HTTP/1.1" */
    unsigned status;      /* sent to the client */
    uint64_t bytes_sent;  /* body bytes sent to the client */
    const char *referer;  /* may be NULL */
    size_t referer_len;
    const char *user_agent; /* may be NULL */
    size_t user_agent_len;
    const char *upstream; /* "host:port" or NULL when none was used */
    double upstream_time; /* seconds from sending to last byte, -1 if none */
    double total_time;    /* seconds from first byte to last byte */
};

struct log_access_buf {
    size_t len;                     /* bytes waiting in data */
    char data[LOG_ACCESS_BUF_SIZE]; /* formatted lines */
};

/* Opens the access log named by the config value ("off", "stderr" or a
 * path; appended to). Returns 0 or -1 (errno set). Main thread. */
int log_access_open(const char *where, int json);

/* Reopens the current access log file (SIGUSR1). Main thread. */
int log_access_reopen(void);

/* Whether access logging is on at all (cheap; read per request). */
int log_access_enabled(void);

/* Formats <e> into <buf>, flushing first if it would not fit. Worker. */
void log_access(struct log_access_buf *buf, const struct log_access_entry *e);

/* Writes out what <buf> holds. Worker (its flush timer, or at exit). */
void log_access_flush(struct log_access_buf *buf);

#endif /* CLONEGATE_LOG_H */
