/*
 * log: error lines to stderr and the access log.
 *
 * Owns the access log file descriptor (process-wide, swapped atomically on
 * reopen) and the level. Error lines are formatted on the caller's stack and
 * written with one write(2). Access lines are formatted into a buffer the
 * calling worker owns; this module never allocates per line.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define LOG_LINE_MAX 2048 /* one error line; longer ones are cut */

int log_level_current = LOG_LEVEL_INFO;

static int access_fd = -1;    /* atomic; -1 = off */
static int access_json;       /* set once at start */
static char access_path[512]; /* "" for stderr */
static const char *const level_names[] = {"error", "warn", "info", "debug"};

int log_set_level(const char *name)
{
    for (int i = 0; i <= LOG_LEVEL_DEBUG; i++) {
        if (strcasecmp(name, level_names[i]) == 0) {
            log_level_current = i;
            return 0;
        }
    }
    return -1;
}

static void on_libevent_log(int severity, const char *msg)
{
    switch (severity) {
    case EVENT_LOG_DEBUG:
        log_debug("libevent: %s", msg);
        break;
    case EVENT_LOG_MSG:
        log_info("libevent: %s", msg);
        break;
    default:
        log_warnx("libevent: %s", msg);
        break;
    }
}

void log_init(void)
{
    event_set_log_callback(on_libevent_log);
}

static void write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing log */
        }
        p += n;
        len -= (size_t)n;
    }
}

static size_t format_time(char *buf, size_t size)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return n + (m > 0 ? (size_t)m : 0);
}

__attribute__((format(printf, 3, 0))) static void log_vwrite(enum log_level level, int errnum,
                                                             const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    size_t n = format_time(line, sizeof(line));
    int m = snprintf(line + n, sizeof(line) - n, " %s: ", level_names[level]);
    n += (size_t)m;
    m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    n = m < 0 ? n : n + (size_t)m;
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    if (errnum) {
        m = snprintf(line + n, sizeof(line) - n, ": %s", strerror(errnum));
        n = m < 0 ? n : n + (size_t)m;
        if (n >= sizeof(line) - 1)
            n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    write_all(STDERR_FILENO, line, n);
}

void log_write(enum log_level level, int with_errno, const char *fmt, ...)
{
    int saved = errno;
    if ((int)level > log_level_current)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, with_errno ? saved : 0, fmt, ap);
    va_end(ap);
    errno = saved;
}

void log_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(LOG_LEVEL_ERROR, 0, fmt, ap);
    va_end(ap);
    exit(1);
}

/* ------------------------------------------------------------ access log */

static int open_access(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

int log_access_open(const char *where, int json)
{
    access_json = json;
    if (strcmp(where, "off") == 0) {
        __atomic_store_n(&access_fd, -1, __ATOMIC_RELEASE);
        return 0;
    }
    if (strcmp(where, "stderr") == 0) {
        access_path[0] = '\0';
        __atomic_store_n(&access_fd, STDERR_FILENO, __ATOMIC_RELEASE);
        return 0;
    }
    int fd = open_access(where);
    if (fd == -1)
        return -1;
    snprintf(access_path, sizeof(access_path), "%s", where);
    __atomic_store_n(&access_fd, fd, __ATOMIC_RELEASE);
    return 0;
}

int log_access_reopen(void)
{
    if (access_path[0] == '\0')
        return 0;
    int fd = open_access(access_path);
    if (fd == -1)
        return -1;
    int cur = __atomic_load_n(&access_fd, __ATOMIC_ACQUIRE);
    if (cur <= STDERR_FILENO) {
        __atomic_store_n(&access_fd, fd, __ATOMIC_RELEASE);
        return 0;
    }
    /* dup2 swaps the file under the same descriptor number in one step, so
     * a worker writing at this moment writes to the old or the new file,
     * never to a closed or reused descriptor */
    int rc = dup2(fd, cur) == -1 ? -1 : 0;
    close(fd);
    return rc;
}

int log_access_enabled(void)
{
    return __atomic_load_n(&access_fd, __ATOMIC_RELAXED) != -1;
}

void log_access_flush(struct log_access_buf *buf)
{
    int fd = __atomic_load_n(&access_fd, __ATOMIC_ACQUIRE);
    if (buf->len > 0 && fd != -1)
        write_all(fd, buf->data, buf->len);
    buf->len = 0;
}

/* Appends <s> escaped for a quoted log field: JSON escaping, or for the
 * combined format the same (\" and \xHH for control bytes). */
static size_t put_escaped(char *out, size_t room, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (size_t i = 0; i < len && n + 6 < room; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            out[n++] = '\\';
            out[n++] = 'u';
            out[n++] = '0';
            out[n++] = '0';
            out[n++] = hex[ch >> 4];
            out[n++] = hex[ch & 15];
        } else {
            out[n++] = (char)ch;
        }
    }
    return n;
}

#define PUT_LIT(s)                                                                                 \
    do {                                                                                           \
        size_t l_ = sizeof(s) - 1;                                                                 \
        if (n + l_ < sizeof(line)) {                                                               \
            memcpy(line + n, s, l_);                                                               \
            n += l_;                                                                               \
        }                                                                                          \
    } while (0)
/* Escaping may make a field six times longer: each has a budget, so that
 * the closing part of the line always fits and a line is never cut. */
#define LOG_METHOD_ROOM 128
#define LOG_TARGET_ROOM 1536
#define LOG_FIELD_ROOM  512
#define PUT_ESC(p, l, budget)                                                                      \
    (n +=                                                                                          \
     put_escaped(line + n, sizeof(line) - n < (budget) ? sizeof(line) - n : (budget), (p), (l)))
#define PUT_FMT(...)                                                                               \
    do {                                                                                           \
        int m_ = snprintf(line + n, sizeof(line) - n, __VA_ARGS__);                                \
        if (m_ > 0)                                                                                \
            n = n + (size_t)m_ < sizeof(line) ? n + (size_t)m_ : sizeof(line) - 1;                 \
    } while (0)

void log_access(struct log_access_buf *buf, const struct log_access_entry *e)
{
    /* budgets plus the fixed parts (client, time, upstream name, figures)
     * stay under this */
    char line[LOG_ACCESS_BUF_SIZE];
    size_t n = 0;
    /* the time text changes once a second: made once per second per thread */
    static _Thread_local char when[40];
    static _Thread_local time_t when_sec = -1;
    static _Thread_local int when_json;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != when_sec || when_json != access_json) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        if (access_json)
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        else
            strftime(when, sizeof(when), "%d/%b/%Y:%H:%M:%S +0000", &tm);
        when_sec = ts.tv_sec;
        when_json = access_json;
    }

    if (access_json) {
        PUT_FMT("{\"time\":\"%s\",\"client\":\"%s\",\"method\":\"", when, e->client);
        PUT_ESC(e->method, e->method_len, LOG_METHOD_ROOM);
        PUT_LIT("\",\"target\":\"");
        PUT_ESC(e->target, e->target_len, LOG_TARGET_ROOM);
        PUT_FMT("\",\"protocol\":\"%s\",\"status\":%u,\"bytes\":%llu,\"referer\":\"", e->protocol,
                e->status, (unsigned long long)e->bytes_sent);
        if (e->referer)
            PUT_ESC(e->referer, e->referer_len, LOG_FIELD_ROOM);
        PUT_LIT("\",\"user_agent\":\"");
        if (e->user_agent)
            PUT_ESC(e->user_agent, e->user_agent_len, LOG_FIELD_ROOM);
        PUT_LIT("\",\"upstream\":");
        if (e->upstream)
            PUT_FMT("\"%s\",\"upstream_time\":", e->upstream);
        else
            PUT_LIT("null,\"upstream_time\":");
        if (e->upstream && e->upstream_time >= 0)
            PUT_FMT("%.3f", e->upstream_time);
        else
            PUT_LIT("null");
        PUT_FMT(",\"total_time\":%.3f}\n", e->total_time);
    } else {
        PUT_FMT("%s - - [%s] \"", e->client, when);
        PUT_ESC(e->method, e->method_len, LOG_METHOD_ROOM);
        PUT_LIT(" ");
        PUT_ESC(e->target, e->target_len, LOG_TARGET_ROOM);
        PUT_FMT(" %s\" %u %llu \"", e->protocol, e->status, (unsigned long long)e->bytes_sent);
        if (e->referer)
            PUT_ESC(e->referer, e->referer_len, LOG_FIELD_ROOM);
        else
            PUT_LIT("-");
        PUT_LIT("\" \"");
        if (e->user_agent)
            PUT_ESC(e->user_agent, e->user_agent_len, LOG_FIELD_ROOM);
        else
            PUT_LIT("-");
        if (e->upstream)
            PUT_FMT("\" upstream=%s", e->upstream);
        else
            PUT_LIT("\" upstream=-");
        if (e->upstream && e->upstream_time >= 0)
            PUT_FMT(" upstream_time=%.3f", e->upstream_time);
        else
            PUT_LIT(" upstream_time=-");
        PUT_FMT(" time=%.3f\n", e->total_time);
    }
    if (n == 0 || line[n - 1] != '\n')
        line[n - 1] = '\n';
    if (buf->len + n > sizeof(buf->data))
        log_access_flush(buf);
    memcpy(buf->data + buf->len, line, n);
    buf->len += n;
}
