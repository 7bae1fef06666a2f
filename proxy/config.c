/*
 * config: the ini file turned into an immutable struct config.
 *
 * Owns the key table (one row per ini key: section, key, type, bounds,
 * default, validator and place in struct config), the value parsers
 * (durations, sizes, booleans, addresses, address blocks), the whole-file
 * checks, and the lifetime of every struct config: it is reference counted
 * with atomics and freed by the last config_unref(). Borrows the FILE * that
 * config_load() reports errors to. Never touches sockets, never resolves a
 * name, never logs through log.c, and keeps no global state: libinih's
 * tunables are read, never set, so any thread may load a file while workers
 * read an older config.
 *
 * Debian's libinih gives the handler no line number and cuts lines longer
 * than its buffer into pieces, so inih reads through read_line(), which
 * hands it one cleaned line at a time: it counts lines, drops comments,
 * indentation, a CR and a BOM, reports what inih would misread (no '=', a
 * bad section header, a line that does not fit inih's buffer) and takes
 * indented continuation lines itself. inih then splits "name = value" and
 * calls on_key() for the line read_line() just returned, so the line
 * number is known there.
 */
#include "config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#define MS_PER_S     1000ULL
#define MS_PER_M     (60 * MS_PER_S)
#define MS_PER_H     (60 * MS_PER_M)
#define KIB          1024ULL
#define MIB          (1024 * KIB)
#define GIB          (1024 * MIB)
#define SECTION_MAX  64  /* longest section name we keep, plus NUL */
#define ITEM_MAX     128 /* longest list entry ("host:port weight=N"), plus NUL */
#define REASON_MAX   256 /* one error reason */
#define NUM_TEXT_MAX 32  /* a formatted duration or size */
#define UTF8_BOM     "\xEF\xBB\xBF"

/* ------------------------------------------------------------------------
 * The key table
 */

enum key_type {
    T_DURATION = 0,    /* unsigned ms; min/max in ms */
    T_SIZE = 1,        /* size_t or uint64_t bytes; min/max in bytes */
    T_BOOL = 2,        /* bool */
    T_ENUM = 3,        /* enum field: index into words */
    T_KEYWORD = 4,     /* char array: one of words, stored as text */
    T_UINT = 5,        /* unsigned; min/max */
    T_STRING = 6,      /* char array; min = shortest length; check validates */
    T_PATH = 7,        /* char array holding a file name; min = shortest length */
    T_ADDR_LIST = 8,   /* struct config_addr[]; min/max entries */
    T_SERVER_LIST = 9, /* struct config_server[]; min/max entries */
    T_CIDR_LIST = 10,  /* struct config_cidr[]; min/max entries */
};

#define F_AUTO 0x1 /* T_UINT: "auto" means the number of online CPUs */

/* Returns NULL when <value> is acceptable, else the reason it is not. */
typedef const char *(*config_check_fn)(const char *value);

/* Told why a value, or one entry of a list, was refused (<why> is valid
 * during the call only). */
typedef void (*config_refuse_fn)(void *arg, const char *why);

struct key_def {
    const char *section;      /* without brackets */
    const char *key;          /* as written in the file */
    enum key_type type;       /* how the value is read and stored */
    uint64_t min;             /* by type: ms, bytes, count, length or entries */
    uint64_t max;             /* same unit; lists: at most the array's capacity */
    const char *def;          /* default, read as if it were in the file */
    size_t offset;            /* of the field in struct config */
    size_t size;              /* of the field */
    size_t count_offset;      /* lists: of the unsigned entry count */
    const char *const *words; /* T_ENUM, T_KEYWORD: NULL-terminated */
    config_check_fn check;    /* T_STRING: extra validation, or NULL */
    unsigned flags;           /* F_* */
};

#define FIELD(f)     .offset = offsetof(struct config, f), .size = sizeof(((struct config *)0)->f)
#define COUNT(f)     .count_offset = offsetof(struct config, f)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* In enum order: the index is the stored value. */
static const char *const balance_words[] = {"round_robin", "least_conn", NULL};
static const char *const log_format_words[] = {"combined", "json", NULL};
static const char *const log_level_words[] = {"error", "warn", "info", "debug", NULL};

static const char *check_health_path(const char *value);
static const char *check_status_range(const char *value);
static const char *check_host(const char *value);
static const char *check_header_name(const char *value);
static const char *check_redis(const char *value);
static const char *check_directory(const char *value);
static const char *check_readable(const char *value);
static const char *check_tls_protocols(const char *value);
static const char *check_tls_ciphers(const char *value);
static const char *check_tls_ciphersuites(const char *value);
static const char *check_sni_name(const char *value);

/* An ECDHE key exchange and an AEAD cipher only: forward secrecy, no CBC. */
#define DEFAULT_TLS_CIPHERS                                                                        \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define DEFAULT_TLS_CIPHERSUITES                                                                   \
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

static const struct key_def keys[] = {
    /* [server] */
    {"server", "listen", T_ADDR_LIST, 1, CONFIG_MAX_LISTEN, "127.0.0.1:8080", FIELD(listen),
     COUNT(listen_count)},
    {"server", "workers", T_UINT, 1, CONFIG_MAX_WORKERS, "auto", FIELD(workers), .flags = F_AUTO},
    {"server", "max_connections", T_UINT, 1, 1000000, "10000", FIELD(max_connections)},
    {"server", "busy_poll_us", T_UINT, 0, 1000, "50", FIELD(busy_poll_us)},
    {"server", "busy_nap_us", T_UINT, 0, 1000, "50", FIELD(busy_nap_us)},
    {"server", "queue_timeout", T_DURATION, 0, 1 * MS_PER_H, "5s", FIELD(queue_timeout_ms)},
    {"server", "header_timeout", T_DURATION, 10, 1 * MS_PER_H, "10s", FIELD(header_timeout_ms)},
    {"server", "idle_timeout", T_DURATION, 10, 24 * MS_PER_H, "60s", FIELD(idle_timeout_ms)},
    {"server", "tunnel_timeout", T_DURATION, 10, 24 * MS_PER_H, "1h", FIELD(tunnel_timeout_ms)},
    {"server", "drain_timeout", T_DURATION, 0, 1 * MS_PER_H, "30s", FIELD(drain_timeout_ms)},
    {"server", "max_header_size", T_SIZE, 1 * KIB, 1 * MIB, "32k", FIELD(max_header_size)},
    {"server", "max_uri_size", T_SIZE, 256, 1 * MIB, "8k", FIELD(max_uri_size)},
    {"server", "max_body_size", T_SIZE, 0, 1024 * GIB, "100m", FIELD(max_body_size)},
    {"server", "access_log", T_PATH, 1, 0, "stderr", FIELD(access_log)},
    {"server", "access_log_format", T_ENUM, 0, 0, "combined", FIELD(access_log_format),
     .words = log_format_words},
    {"server", "error_log_level", T_KEYWORD, 0, 0, "info", FIELD(error_log_level),
     .words = log_level_words},

    /* [tls] */
    {"tls", "listen", T_ADDR_LIST, 0, CONFIG_MAX_LISTEN, "", FIELD(tls_listen),
     COUNT(tls_listen_count)},
    {"tls", "cert", T_PATH, 0, 0, "", FIELD(tls_cert)},
    {"tls", "key", T_PATH, 0, 0, "", FIELD(tls_key)},
    {"tls", "certs", T_PATH, 0, 0, "", FIELD(tls_certs), .check = check_directory},
    {"tls", "protocols", T_STRING, 1, 0, "TLSv1.2 TLSv1.3", FIELD(tls_protocols),
     .check = check_tls_protocols},
    {"tls", "ciphers", T_STRING, 1, 0, DEFAULT_TLS_CIPHERS, FIELD(tls_ciphers),
     .check = check_tls_ciphers},
    {"tls", "ciphersuites", T_STRING, 1, 0, DEFAULT_TLS_CIPHERSUITES, FIELD(tls_ciphersuites),
     .check = check_tls_ciphersuites},
    {"tls", "ocsp", T_PATH, 0, 0, "", FIELD(tls_ocsp), .check = check_readable},
    {"tls", "session_tickets", T_BOOL, 0, 0, "yes", FIELD(tls_session_tickets)},

    /* [upstream] */
    {"upstream", "servers", T_SERVER_LIST, 1, CONFIG_MAX_SERVERS, "", FIELD(servers),
     COUNT(server_count)},
    {"upstream", "balance", T_ENUM, 0, 0, "round_robin", FIELD(balance), .words = balance_words},
    {"upstream", "keepalive", T_UINT, 0, 10000, "64", FIELD(keepalive)},
    {"upstream", "connect_timeout", T_DURATION, 10, 1 * MS_PER_H, "2s", FIELD(connect_timeout_ms)},
    {"upstream", "response_timeout", T_DURATION, 10, 24 * MS_PER_H, "30s",
     FIELD(response_timeout_ms)},
    {"upstream", "retries", T_UINT, 0, CONFIG_MAX_SERVERS, "1", FIELD(retries)},
    {"upstream", "tls", T_BOOL, 0, 0, "no", FIELD(upstream_tls)},
    {"upstream", "tls_verify", T_BOOL, 0, 0, "yes", FIELD(upstream_tls_verify)},
    {"upstream", "tls_ca", T_PATH, 0, 0, "", FIELD(upstream_tls_ca), .check = check_readable},
    {"upstream", "tls_sni", T_STRING, 0, 0, "", FIELD(upstream_tls_sni), .check = check_sni_name},

    /* [health] */
    {"health", "path", T_STRING, 1, 0, "/health", FIELD(health_path), .check = check_health_path},
    {"health", "interval", T_DURATION, 10, 1 * MS_PER_H, "2s", FIELD(health_interval_ms)},
    {"health", "timeout", T_DURATION, 10, 1 * MS_PER_H, "1s", FIELD(health_timeout_ms)},
    {"health", "rise", T_UINT, 1, 100, "2", FIELD(health_rise)},
    {"health", "fall", T_UINT, 1, 100, "3", FIELD(health_fall)},
    {"health", "expect_status", T_STRING, 3, 0, "200-399", FIELD(health_expect_status),
     .check = check_status_range},
    {"health", "host", T_STRING, 0, 0, "", FIELD(health_host), .check = check_host},
    {"health", "slow_start", T_DURATION, 0, 1 * MS_PER_H, "0s", FIELD(health_slow_start_ms)},

    /* [cache] */
    {"cache", "enabled", T_BOOL, 0, 0, "yes", FIELD(cache_enabled)},
    {"cache", "redis", T_STRING, 0, 0, "", FIELD(cache_redis), .check = check_redis},
    {"cache", "memory", T_SIZE, 0, 1024 * GIB, "64m", FIELD(cache_memory)},
    /* at most Redis's default proto-max-bulk-len: a larger value is no bulk it takes */
    {"cache", "max_object_size", T_SIZE, 1 * KIB, 512 * MIB, "8m", FIELD(cache_max_object_size)},
    {"cache", "default_ttl", T_DURATION, 0, 720 * MS_PER_H, "0s", FIELD(cache_default_ttl_ms)},
    {"cache", "tag_header", T_STRING, 1, 0, "Surrogate-Key", FIELD(cache_tag_header),
     .check = check_header_name},
    {"cache", "expose_tags", T_BOOL, 0, 0, "no", FIELD(cache_expose_tags)},
    {"cache", "redis_timeout", T_DURATION, 1, 60 * 1000, "50ms", FIELD(cache_redis_timeout_ms)},
    {"cache", "lock_timeout", T_DURATION, 0, 10 * 60 * 1000, "5s", FIELD(cache_lock_timeout_ms)},
    {"cache", "stale_while_revalidate", T_DURATION, 0, 720 * MS_PER_H, "0s",
     FIELD(cache_stale_while_revalidate_ms)},
    {"cache", "stale_if_error", T_DURATION, 0, 720 * MS_PER_H, "0s",
     FIELD(cache_stale_if_error_ms)},
    {"cache", "store_set_cookie", T_BOOL, 0, 0, "no", FIELD(cache_store_set_cookie)},
    {"cache", "purge_allow", T_CIDR_LIST, 0, CONFIG_MAX_CIDRS, "127.0.0.1/32, ::1/128",
     FIELD(purge_allow), COUNT(purge_allow_count)},

    /* [stats] */
    {"stats", "listen", T_ADDR_LIST, 0, CONFIG_MAX_LISTEN, "", FIELD(stats_listen),
     COUNT(stats_listen_count)},
    {"stats", "allow", T_CIDR_LIST, 0, CONFIG_MAX_CIDRS, "", FIELD(stats_allow),
     COUNT(stats_allow_count)},
    {"stats", "auth", T_PATH, 0, 0, "", FIELD(stats_auth)},
};

#define KEY_COUNT ARRAY_LEN(keys)

static const struct key_def *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

static bool known_section(const char *section)
{
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strcmp(keys[i].section, section) == 0)
            return true;
    return false;
}

static bool is_list(const struct key_def *k)
{
    return k->type == T_ADDR_LIST || k->type == T_SERVER_LIST || k->type == T_CIDR_LIST;
}

/* ------------------------------------------------------------------------
 * Value parsers
 */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads one or more decimal digits at *<p> into *<out> and moves *<p> past
 * them. Returns -1 when there is no digit or the number overflows. */
static int parse_digits(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;

    if (!is_digit(*s))
        return -1;
    for (; is_digit(*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 0;
}

/* A whole string of digits, nothing else. */
static int parse_number(const char *text, uint64_t *out)
{
    const char *p = text;

    if (parse_digits(&p, out) == -1 || *p != '\0')
        return -1;
    return 0;
}

static int scale(uint64_t v, uint64_t unit, uint64_t *out)
{
    if (v > UINT64_MAX / unit)
        return -1;
    *out = v * unit;
    return 0;
}

/* Like config_parse_duration() but to 64 bits, so that "too large" can be
 * told apart from "not a duration". */
static int parse_duration_ms(const char *text, uint64_t *ms)
{
    const char *p = text;
    uint64_t v, unit;

    if (parse_digits(&p, &v) == -1)
        return -1;
    if (*p == '\0' || strcasecmp(p, "s") == 0)
        unit = MS_PER_S;
    else if (strcasecmp(p, "ms") == 0)
        unit = 1;
    else if (strcasecmp(p, "m") == 0)
        unit = MS_PER_M;
    else if (strcasecmp(p, "h") == 0)
        unit = MS_PER_H;
    else
        return -1;
    return scale(v, unit, ms);
}

int config_parse_duration(const char *text, unsigned *ms)
{
    uint64_t v;

    if (parse_duration_ms(text, &v) == -1 || v > UINT_MAX)
        return -1;
    *ms = (unsigned)v;
    return 0;
}

int config_parse_size(const char *text, uint64_t *bytes)
{
    const char *p = text;
    uint64_t v, unit;

    if (parse_digits(&p, &v) == -1)
        return -1;
    if (*p == '\0')
        unit = 1;
    else if (strcasecmp(p, "k") == 0)
        unit = KIB;
    else if (strcasecmp(p, "m") == 0)
        unit = MIB;
    else if (strcasecmp(p, "g") == 0)
        unit = GIB;
    else
        return -1;
    return scale(v, unit, bytes);
}

int config_parse_bool(const char *text, bool *value)
{
    static const char *const yes[] = {"yes", "on", "true", "1"};
    static const char *const no[] = {"no", "off", "false", "0"};

    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *value = true;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *value = false;
            return 0;
        }
    }
    return -1;
}

static int parse_port(const char *text, in_port_t *port)
{
    uint64_t v;

    if (parse_number(text, &v) == -1 || v < 1 || v > 65535)
        return -1;
    *port = htons((in_port_t)v);
    return 0;
}

/* config_parse_addr(), saying why a value is refused: NULL on success. */
static const char *parse_addr(const char *text, struct config_addr *addr)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port_text;
    size_t host_len;
    char shown[INET6_ADDRSTRLEN];
    in_port_t port;

    memset(addr, 0, sizeof(*addr));
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (end == NULL)
            return "missing ']' after the IPv6 address";
        if (end[1] != ':')
            return "missing ':port'";
        host_len = (size_t)(end - text - 1);
        port_text = end + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon == NULL)
            return "missing ':port'";
        if (memchr(text, ':', (size_t)(colon - text)) != NULL)
            return "an IPv6 address needs brackets, as in [::1]:8080";
        host_len = (size_t)(colon - text);
        port_text = colon + 1;
    }
    if (host_len == 0)
        return "missing host";
    if (host_len >= sizeof(host))
        return "host must be a numeric IPv4 address, an [IPv6] address or localhost";
    memcpy(host, text[0] == '[' ? text + 1 : text, host_len);
    host[host_len] = '\0';
    if (parse_port(port_text, &port) == -1)
        return "port must be a number from 1 to 65535";

    if (text[0] == '[') {
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = port};
        if (inet_pton(AF_INET6, host, &sin6.sin6_addr) != 1)
            return "not a numeric IPv6 address";
        memcpy(&addr->sa, &sin6, sizeof(sin6));
        addr->salen = sizeof(sin6);
        inet_ntop(AF_INET6, &sin6.sin6_addr, shown, sizeof(shown));
        snprintf(addr->text, sizeof(addr->text), "[%s]:%u", shown, (unsigned)ntohs(port));
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = port};
        if (strcasecmp(host, "localhost") == 0)
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
            return "host must be a numeric IPv4 address, an [IPv6] address or localhost";
        memcpy(&addr->sa, &sin, sizeof(sin));
        addr->salen = sizeof(sin);
        inet_ntop(AF_INET, &sin.sin_addr, shown, sizeof(shown));
        snprintf(addr->text, sizeof(addr->text), "%s:%u", shown, (unsigned)ntohs(port));
    }
    return NULL;
}

int config_parse_addr(const char *text, struct config_addr *addr)
{
    return parse_addr(text, addr) == NULL ? 0 : -1;
}

/* config_parse_cidr(), saying why a value is refused: NULL on success. */
static const char *parse_cidr(const char *text, struct config_cidr *cidr)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(text, '/');
    size_t host_len = slash != NULL ? (size_t)(slash - text) : strlen(text);
    unsigned bits;
    uint64_t len;

    memset(cidr, 0, sizeof(*cidr));
    if (host_len == 0 || host_len >= sizeof(host))
        return "not an IPv4 or IPv6 address";
    memcpy(host, text, host_len);
    host[host_len] = '\0';
    if (inet_pton(AF_INET, host, cidr->addr) == 1) {
        cidr->family = AF_INET;
        bits = 32;
    } else if (inet_pton(AF_INET6, host, cidr->addr) == 1) {
        cidr->family = AF_INET6;
        bits = 128;
    } else {
        return "not an IPv4 or IPv6 address";
    }
    len = bits;
    if (slash != NULL && (parse_number(slash + 1, &len) == -1 || len > bits))
        return cidr->family == AF_INET ? "prefix length must be 0..32"
                                       : "prefix length must be 0..128";
    cidr->prefix_len = (unsigned)len;

    /* Host bits below the prefix mean nothing: clear them. */
    for (unsigned i = 0; i < bits / 8; i++) {
        if (i * 8 >= len)
            cidr->addr[i] = 0;
        else if (i * 8 + 8 > len)
            cidr->addr[i] &= (uint8_t)(0xff << (8 - (len - i * 8)));
    }
    return NULL;
}

int config_parse_cidr(const char *text, struct config_cidr *cidr)
{
    return parse_cidr(text, cidr) == NULL ? 0 : -1;
}

static bool prefix_match(const uint8_t *net, const uint8_t *addr, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;

    if (memcmp(net, addr, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net[whole] & mask) == (addr[whole] & mask);
}

bool config_cidr_match(const struct config_cidr *cidrs, unsigned count, const struct sockaddr *sa)
{
    uint8_t v4[4], v6[16];
    bool has_v4 = false, has_v6 = false;

    if (sa == NULL)
        return false;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        memcpy(v4, &sin.sin_addr, 4);
        has_v4 = true;
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        memcpy(v6, &sin6.sin6_addr, 16);
        has_v6 = true;
        if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
            memcpy(v4, v6 + 12, 4);
            has_v4 = true;
        }
    }
    for (unsigned i = 0; i < count; i++) {
        const struct config_cidr *c = &cidrs[i];
        if (c->family == AF_INET && has_v4 && prefix_match(c->addr, v4, c->prefix_len))
            return true;
        if (c->family == AF_INET6 && has_v6 && prefix_match(c->addr, v6, c->prefix_len))
            return true;
    }
    return false;
}

static const char *check_health_path(const char *value)
{
    if (value[0] != '/')
        return "must start with '/'";
    for (const char *p = value; *p != '\0'; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

/* "NNN" or "NNN-NNN", statuses from 100 to 599, low before high. */
static const char *check_status_range(const char *value)
{
    unsigned lo, hi;
    int end = 0;
    if (sscanf(value, "%3u-%3u%n", &lo, &hi, &end) == 2 && value[end] == '\0') {
        if (lo < 100 || hi > 599 || lo > hi)
            return "must be a status or a range within 100-599, low first";
        return NULL;
    }
    end = 0;
    if (sscanf(value, "%3u%n", &lo, &end) == 1 && value[end] == '\0' && lo >= 100 && lo <= 599)
        return NULL;
    return "must be a status (200) or a range (200-399)";
}

/* A Host value for the checks: letters, digits and - . : [ ] only. */
static const char *check_host(const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (!(isalnum(c) || c == '-' || c == '.' || c == ':' || c == '[' || c == ']'))
            return "must be a host name or address, optionally with :port";
    }
    return NULL;
}

/* An HTTP field name is a token (RFC 9110, 5.6.2). */
static const char *check_header_name(const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(*p) ||
              (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL)))
            return "not a valid HTTP header name";
    }
    return NULL;
}

/* "", "unix:/path", "[v6]:port" or "host:port" with a host name or a
 * numeric address: hiredis resolves it, we only check its shape. */
static const char *check_redis(const char *value)
{
    static const char shape[] = "expected host:port, unix:/path or nothing";
    struct config_addr addr;
    const char *colon;

    if (value[0] == '\0')
        return NULL;
    if (strncmp(value, "unix:", 5) == 0) {
        const char *path = value + 5;
        if (path[0] != '/')
            return "a unix socket path must be absolute, as in unix:/run/redis.sock";
        if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return "unix socket path too long";
        return NULL;
    }
    if (value[0] == '[')
        return parse_addr(value, &addr);
    colon = strrchr(value, ':');
    if (colon == NULL || colon == value)
        return shape;
    for (const char *p = value; p < colon; p++) {
        unsigned char c = (unsigned char)*p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(*p) || c == '.' ||
              c == '-'))
            return shape;
    }
    in_port_t port;
    if (parse_port(colon + 1, &port) == -1)
        return "port must be a number from 1 to 65535";
    return NULL;
}

/* A directory that exists ("" = none). Its files are read by tls.c. */
static const char *check_directory(const char *value)
{
    struct stat st;

    if (value[0] == '\0')
        return NULL;
    if (stat(value, &st) == -1)
        return errno == ENOENT ? "no such directory" : "cannot be read";
    if (!S_ISDIR(st.st_mode))
        return "not a directory";
    return NULL;
}

/* A file that can be read now ("" = none). */
static const char *check_readable(const char *value)
{
    struct stat st;

    if (value[0] == '\0')
        return NULL;
    if (stat(value, &st) == -1)
        return errno == ENOENT ? "no such file" : "cannot be read";
    if (access(value, R_OK) == -1)
        return "cannot be read";
    return NULL;
}

/* "TLSv1.2", "TLSv1.3" or both, separated by blanks or commas. */
static const char *check_tls_protocols(const char *value)
{
    static const char *const known[] = {"TLSv1.2", "TLSv1.3"};
    const char *p = value;
    bool any = false;

    while (*p != '\0') {
        size_t len = strcspn(p, " \t,");
        bool found = false;
        for (size_t i = 0; i < ARRAY_LEN(known) && len > 0; i++)
            found |= strlen(known[i]) == len && strncasecmp(p, known[i], len) == 0;
        if (len > 0 && !found)
            return "the known protocols are TLSv1.2 and TLSv1.3";
        any |= found;
        p += len;
        p += strspn(p, " \t,");
    }
    return any ? NULL : "the known protocols are TLSv1.2 and TLSv1.3";
}

/* Asks OpenSSL, on a context made for the question, whether it takes
 * <value> as a cipher list (<suites>: the TLS 1.3 one). */
static bool openssl_takes_ciphers(const char *value, bool suites)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    int ok;

    if (ctx == NULL)
        return true; /* cannot ask now: tls.c asks again when it builds */
    ok = suites ? SSL_CTX_set_ciphersuites(ctx, value) : SSL_CTX_set_cipher_list(ctx, value);
    SSL_CTX_free(ctx);
    ERR_clear_error(); /* the refusal is reported by us, not left for the next caller */
    return ok == 1;
}

static const char *check_tls_ciphers(const char *value)
{
    return openssl_takes_ciphers(value, false) ? NULL : "OpenSSL knows none of these ciphers";
}

static const char *check_tls_ciphersuites(const char *value)
{
    return openssl_takes_ciphers(value, true) ? NULL : "OpenSSL knows none of these suites";
}

/* A DNS name to send as SNI ("" = none given). */
static const char *check_sni_name(const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (!(isalnum(c) || c == '-' || c == '.'))
            return "must be a DNS name";
    }
    if (value[0] == '.' || value[0] == '-')
        return "must be a DNS name";
    return NULL;
}

/* ------------------------------------------------------------------------
 * Storing values
 */

static void format_duration(uint64_t ms, char *buf, size_t size)
{
    if (ms == 0)
        snprintf(buf, size, "0s");
    else if (ms % MS_PER_H == 0)
        snprintf(buf, size, "%lluh", (unsigned long long)(ms / MS_PER_H));
    else if (ms % MS_PER_M == 0)
        snprintf(buf, size, "%llum", (unsigned long long)(ms / MS_PER_M));
    else if (ms % MS_PER_S == 0)
        snprintf(buf, size, "%llus", (unsigned long long)(ms / MS_PER_S));
    else
        snprintf(buf, size, "%llums", (unsigned long long)ms);
}

static void format_size(uint64_t bytes, char *buf, size_t size)
{
    if (bytes != 0 && bytes % GIB == 0)
        snprintf(buf, size, "%llug", (unsigned long long)(bytes / GIB));
    else if (bytes != 0 && bytes % MIB == 0)
        snprintf(buf, size, "%llum", (unsigned long long)(bytes / MIB));
    else if (bytes != 0 && bytes % KIB == 0)
        snprintf(buf, size, "%lluk", (unsigned long long)(bytes / KIB));
    else
        snprintf(buf, size, "%llu", (unsigned long long)bytes);
}

static void format_bound(const struct key_def *k, uint64_t v, char *buf, size_t size)
{
    if (k->type == T_DURATION)
        format_duration(v, buf, size);
    else if (k->type == T_SIZE)
        format_size(v, buf, size);
    else
        snprintf(buf, size, "%llu", (unsigned long long)v);
}

static void *field(struct config *cfg, const struct key_def *k)
{
    return (char *)cfg + k->offset;
}

static unsigned *count_field(struct config *cfg, const struct key_def *k)
{
    return (unsigned *)(void *)((char *)cfg + k->count_offset);
}

/* Stores a number into a field of 1, 4 or 8 bytes; the table's bounds make
 * sure it fits. */
static void store_number(struct config *cfg, const struct key_def *k, uint64_t v)
{
    void *p = field(cfg, k);

    if (k->size == sizeof(uint64_t)) {
        memcpy(p, &v, sizeof(v));
    } else if (k->size == sizeof(uint32_t)) {
        assert(v <= UINT32_MAX);
        uint32_t v32 = (uint32_t)v;
        memcpy(p, &v32, sizeof(v32));
    } else {
        assert(k->size == sizeof(bool) && v <= 1);
        bool b = v != 0;
        memcpy(p, &b, sizeof(b));
    }
}

static int check_range(const struct key_def *k, const char *value, uint64_t v, char *why,
                       size_t why_size)
{
    char lo[NUM_TEXT_MAX], hi[NUM_TEXT_MAX];

    if (v >= k->min && v <= k->max)
        return 0;
    format_bound(k, k->min, lo, sizeof(lo));
    format_bound(k, k->max, hi, sizeof(hi));
    snprintf(why, why_size, "'%s' out of range (%s..%s)", value, lo, hi);
    return -1;
}

static unsigned online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1)
        return 1;
    if (n > CONFIG_MAX_WORKERS)
        return CONFIG_MAX_WORKERS;
    return (unsigned)n;
}

static int match_word(const struct key_def *k, const char *value, char *why, size_t why_size)
{
    size_t used;

    for (int i = 0; k->words[i] != NULL; i++)
        if (strcasecmp(value, k->words[i]) == 0)
            return i;
    used = (size_t)snprintf(why, why_size, "bad value '%s' (", value);
    for (int i = 0; k->words[i] != NULL && used < why_size; i++)
        used +=
            (size_t)snprintf(why + used, why_size - used, "%s%s", i > 0 ? "|" : "", k->words[i]);
    if (used < why_size)
        snprintf(why + used, why_size - used, ")");
    return -1;
}

/* One server entry: "host:port" and an optional " weight=N". */
static int parse_server(const char *item, struct config_server *s, char *why, size_t why_size)
{
    char addr_text[ITEM_MAX];
    size_t addr_len = 0;
    const char *rest, *reason;
    uint64_t weight = 1;

    while (item[addr_len] != '\0' && !is_blank(item[addr_len]))
        addr_len++;
    memcpy(addr_text, item, addr_len);
    addr_text[addr_len] = '\0';
    reason = parse_addr(addr_text, &s->addr);
    if (reason != NULL) {
        snprintf(why, why_size, "bad server address '%s': %s", addr_text, reason);
        return -1;
    }
    rest = item + addr_len;
    while (is_blank(*rest))
        rest++;
    if (*rest != '\0') {
        if (strncmp(rest, "weight=", 7) != 0) {
            snprintf(why, why_size, "bad server '%s': expected 'host:port' or 'host:port weight=N'",
                     item);
            return -1;
        }
        if (parse_number(rest + 7, &weight) == -1 || weight < 1 || weight > CONFIG_MAX_WEIGHT) {
            snprintf(why, why_size, "bad weight '%s' (1..%u)", rest + 7,
                     (unsigned)CONFIG_MAX_WEIGHT);
            return -1;
        }
    }
    s->weight = (unsigned)weight;
    return 0;
}

/* Parses one list entry, <len> bytes at <text>, into slot *<count> of the
 * list <k>. Returns 0, or -1 with the reason in <why>. */
static int add_entry(struct config *cfg, const struct key_def *k, const char *text, size_t len,
                     char *why, size_t why_size)
{
    static const char *const nouns[] = {
        [T_ADDR_LIST] = "addresses", [T_SERVER_LIST] = "servers", [T_CIDR_LIST] = "address blocks"};
    unsigned *count = count_field(cfg, k);
    char item[ITEM_MAX];
    const char *reason = NULL;

    /* first: once full, every entry after would only say it again */
    if (*count >= k->max) {
        snprintf(why, why_size, "too many %s (max %llu)", nouns[k->type],
                 (unsigned long long)k->max);
        return -1;
    }
    if (len == 0) {
        snprintf(why, why_size, "empty entry in list");
        return -1;
    }
    if (len >= sizeof(item)) {
        snprintf(why, why_size, "entry too long: '%.40s...'", text);
        return -1;
    }
    memcpy(item, text, len);
    item[len] = '\0';
    switch (k->type) {
    case T_ADDR_LIST:
        reason = parse_addr(item, (struct config_addr *)field(cfg, k) + *count);
        if (reason != NULL) {
            snprintf(why, why_size, "bad address '%s': %s", item, reason);
            return -1;
        }
        break;
    case T_SERVER_LIST:
        if (parse_server(item, (struct config_server *)field(cfg, k) + *count, why, why_size) == -1)
            return -1;
        break;
    case T_CIDR_LIST:
        reason = parse_cidr(item, (struct config_cidr *)field(cfg, k) + *count);
        if (reason != NULL) {
            snprintf(why, why_size, "bad address block '%s': %s", item, reason);
            return -1;
        }
        break;
    default:
        assert(!"not a list type");
        return -1;
    }
    (*count)++;
    return 0;
}

/*
 * Appends the comma-separated entries of <value> to the list <k>. A
 * trailing comma is allowed, so a list may go on on the next line. Each
 * refused entry is told to <refuse> and the entries after it are still
 * read, so one line reports all its bad entries. Returns 0, or -1 when an
 * entry was refused.
 */
static int append_list(struct config *cfg, const struct key_def *k, const char *value,
                       config_refuse_fn refuse, void *arg)
{
    const char *p = value;
    char why[REASON_MAX];
    int rc = 0;

    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);

        while (len > 0 && is_blank(*p)) {
            p++;
            len--;
        }
        while (len > 0 && is_blank(p[len - 1]))
            len--;
        if (add_entry(cfg, k, p, len, why, sizeof(why)) == -1) {
            refuse(arg, why);
            rc = -1;
            if (*count_field(cfg, k) >= k->max)
                break;
        }
        if (end == NULL)
            break;
        p = end + 1;
        /* A comma followed by nothing: the list continues on the next line. */
        while (is_blank(*p))
            p++;
    }
    return rc;
}

static int store_text(struct config *cfg, const struct key_def *k, const char *value, char *why,
                      size_t why_size)
{
    size_t len = strlen(value);
    const char *reason;

    if (len < k->min) {
        snprintf(why, why_size, "empty value");
        return -1;
    }
    if (len >= k->size) {
        snprintf(why, why_size, "too long (max %zu characters)", k->size - 1);
        return -1;
    }
    for (const char *p = value; *p != '\0'; p++) {
        if ((unsigned char)*p < ' ' || *p == 0x7f) {
            snprintf(why, why_size, "control character in value");
            return -1;
        }
    }
    if (k->check != NULL && (reason = k->check(value)) != NULL) {
        snprintf(why, why_size, "bad value '%s': %s", value, reason);
        return -1;
    }
    memcpy(field(cfg, k), value, len + 1);
    return 0;
}

/* Reads <value> as key <k>, not a list, into <cfg>. Returns 0, or -1 with
 * the reason in <why>. */
static int set_scalar(struct config *cfg, const struct key_def *k, const char *value, char *why,
                      size_t why_size)
{
    uint64_t v;
    bool b;
    int i;

    if (value[0] == '\0' && k->type != T_STRING && k->type != T_PATH) {
        snprintf(why, why_size, "empty value");
        return -1;
    }
    switch (k->type) {
    case T_DURATION:
        if (parse_duration_ms(value, &v) == -1) {
            snprintf(why, why_size, "bad duration '%s'", value);
            return -1;
        }
        break;
    case T_SIZE:
        if (config_parse_size(value, &v) == -1) {
            snprintf(why, why_size, "bad size '%s'", value);
            return -1;
        }
        break;
    case T_UINT:
        if ((k->flags & F_AUTO) && strcasecmp(value, "auto") == 0) {
            store_number(cfg, k, online_cpus());
            return 0;
        }
        if (parse_number(value, &v) == -1) {
            snprintf(why, why_size, "bad number '%s'", value);
            return -1;
        }
        break;
    case T_BOOL:
        if (config_parse_bool(value, &b) == -1) {
            snprintf(why, why_size, "bad boolean '%s' (yes/no/on/off/true/false/1/0)", value);
            return -1;
        }
        store_number(cfg, k, b);
        return 0;
    case T_ENUM:
        if ((i = match_word(k, value, why, why_size)) == -1)
            return -1;
        assert(k->size == sizeof(int));
        memcpy(field(cfg, k), &i, sizeof(i));
        return 0;
    case T_KEYWORD:
        if ((i = match_word(k, value, why, why_size)) == -1)
            return -1;
        return store_text(cfg, k, k->words[i], why, why_size);
    case T_STRING:
    case T_PATH:
        return store_text(cfg, k, value, why, why_size);
    default:
        assert(!"list types are handled above");
        return -1;
    }
    if (check_range(k, value, v, why, why_size) == -1)
        return -1;
    store_number(cfg, k, v);
    return 0;
}

/*
 * Reads <value> as key <k> into <cfg>. A list is emptied first unless
 * <append> (an indented continuation line). Every reason for a refusal
 * goes to <refuse> (one per bad list entry). Returns 0, or -1 when
 * something was refused.
 */
static int set_value(struct config *cfg, const struct key_def *k, const char *value, bool append,
                     config_refuse_fn refuse, void *arg)
{
    char why[REASON_MAX];

    if (is_list(k)) {
        if (!append)
            *count_field(cfg, k) = 0;
        return append_list(cfg, k, value, refuse, arg);
    }
    if (set_scalar(cfg, k, value, why, sizeof(why)) == -1) {
        refuse(arg, why);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Reading the file
 */

enum cont_state {
    CONT_NONE = 0, /* no key yet in this section: an indented line is an error */
    CONT_KEY = 1,  /* the last key line was accepted: continue it */
    CONT_SKIP = 2, /* the last key line was refused: ignore its continuations */
};

struct load_state {
    struct config *cfg;           /* being built; owned until config_load returns */
    const char *file;             /* name in messages; borrowed from the caller */
    FILE *in;                     /* the ini file; owned, closed by config_load */
    FILE *errors;                 /* where messages go; borrowed, may be NULL */
    char *raw;                    /* getline buffer; freed by config_load */
    size_t raw_size;              /* bytes allocated at raw */
    unsigned line;                /* number of the line last read */
    unsigned error_count;         /* messages printed */
    int read_errno;               /* nonzero when reading the file failed */
    bool in_section;              /* a [section] line was seen */
    bool section_known;           /* that section is in the table */
    char section[SECTION_MAX];    /* the current section's name */
    enum cont_state cont;         /* what an indented line means */
    const struct key_def *last;   /* CONT_KEY: the key it continues */
    unsigned set_line[KEY_COUNT]; /* line each key was set on; 0 = default */
    bool failed[KEY_COUNT];       /* a value of that key was refused */
};

/* Prints "FILE:LINE: [section] key: message" (parts left out when line is
 * 0, section or key NULL) and counts the error. */
static void report(struct load_state *st, unsigned line, const char *section, const char *key,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void report(struct load_state *st, unsigned line, const char *section, const char *key,
                   const char *fmt, ...)
{
    va_list ap;

    st->error_count++;
    if (st->errors == NULL)
        return;
    fprintf(st->errors, "%s", st->file);
    if (line > 0)
        fprintf(st->errors, ":%u", line);
    fputs(": ", st->errors);
    if (section != NULL)
        fprintf(st->errors, key != NULL ? "[%s] " : "[%s]: ", section);
    if (key != NULL)
        fprintf(st->errors, "%s: ", key);
    va_start(ap, fmt);
    vfprintf(st->errors, fmt, ap);
    va_end(ap);
    fputc('\n', st->errors);
}

/* What on_refused() reports for: the key being read. */
struct refusal {
    struct load_state *st;   /* borrowed from apply() */
    const struct key_def *k; /* the key on the current line */
};

static void on_refused(void *arg, const char *why)
{
    const struct refusal *r = arg;

    report(r->st, r->st->line, r->k->section, r->k->key, "%s", why);
}

/* Reads <value> for <k> on the current line and reports each refusal. */
static void apply(struct load_state *st, const struct key_def *k, const char *value, bool append)
{
    struct refusal r = {.st = st, .k = k};

    if (set_value(st->cfg, k, value, append, on_refused, &r) == -1)
        st->failed[k - keys] = true;
}

/* inih's handler: one "name = value" line, the one read_line() returned
 * last. Errors are reported here and parsing goes on, so it returns 1. */
static int on_key(void *arg, const char *section, const char *name, const char *value)
{
    struct load_state *st = arg;
    const struct key_def *k;
    size_t i;

    /* st->section is the same name, kept without inih's length limit. */
    (void)section;
    st->cont = CONT_SKIP;
    if (!st->in_section) {
        report(st, st->line, NULL, name, "key outside any [section]");
        return 1;
    }
    if (!st->section_known)
        return 1; /* the section line was reported, not each of its keys */
    k = find_key(st->section, name);
    if (k == NULL) {
        report(st, st->line, st->section, name, "unknown key");
        return 1;
    }
    i = (size_t)(k - keys);
    if (st->set_line[i] != 0) {
        report(st, st->line, k->section, k->key, "duplicate key (first set on line %u)",
               st->set_line[i]);
        return 1;
    }
    st->set_line[i] = st->line;
    st->cont = CONT_KEY;
    st->last = k;
    apply(st, k, value, false);
    return 1;
}

/* Whether <text> reads "name = ..." with <name> a key of the section: a
 * key line indented by mistake, not more entries for the list above. */
static bool indented_key(const struct load_state *st, const char *text)
{
    char name[64];
    size_t n = 0;
    while (n < sizeof(name) - 1 && (isalnum((unsigned char)text[n]) || text[n] == '_')) {
        name[n] = text[n];
        n++;
    }
    name[n] = '\0';
    const char *p = text + n;
    while (*p == ' ' || *p == '\t')
        p++;
    return n > 0 && *p == '=' && find_key(st->section, name) != NULL;
}

/* An indented line: more entries for the list on the key line above. */
static void on_continuation(struct load_state *st, const char *text)
{
    switch (st->cont) {
    case CONT_NONE:
        report(st, st->line, NULL, NULL, "indented line, but no key above to continue");
        break;
    case CONT_SKIP:
        break;
    case CONT_KEY:
        if (!is_list(st->last)) {
            report(st, st->line, st->last->section, st->last->key,
                   "indented line, but only lists may continue on the next line");
        } else if (indented_key(st, text)) {
            report(st, st->line, st->last->section, st->last->key,
                   "an indented line continues the list above, and this one looks like a "
                   "key of its own: remove its leading blanks");
            st->cont = CONT_SKIP;
        } else {
            apply(st, st->last, text, true);
        }
        break;
    }
}

/* A "[name]" line, brackets and blanks already checked. */
static void on_section(struct load_state *st, const char *name)
{
    st->in_section = true;
    st->cont = CONT_NONE;
    st->section_known = strlen(name) < sizeof(st->section) && known_section(name);
    if (!st->section_known) {
        report(st, st->line, name, NULL, "unknown section");
        st->section[0] = '\0';
        return;
    }
    snprintf(st->section, sizeof(st->section), "%s", name);
}

/* Cuts a comment (";" or "#" at the start, or after a blank) and the
 * blanks around what is left. Returns the text; *<indented> tells whether
 * it was preceded by blanks. */
static char *strip_line(char *text, bool *indented)
{
    char *start = text, *end;

    while (is_blank(*start))
        start++;
    *indented = start > text;
    for (end = start; *end != '\0'; end++) {
        if ((*end == ';' || *end == '#') && (end == start || is_blank(end[-1])))
            break;
    }
    while (end > start && is_blank(end[-1]))
        end--;
    *end = '\0';
    return start;
}

/*
 * inih's reader: fills <buf> (<size> bytes) with the next line inih should
 * parse, cleaned by strip_line(), or returns NULL at the end of the file.
 * Lines that are blank, comments, continuations or wrong are dealt with
 * here and not passed on.
 */
static char *read_line(char *buf, int size, void *arg)
{
    struct load_state *st = arg;

    for (;;) {
        ssize_t n;
        char *text;
        size_t len;
        bool indented;

        errno = 0;
        n = getline(&st->raw, &st->raw_size, st->in);
        if (n == -1) {
            if (!feof(st->in))
                st->read_errno = errno != 0 ? errno : EIO;
            return NULL;
        }
        st->line++;
        text = st->raw;
        if (memchr(text, '\0', (size_t)n) != NULL) {
            report(st, st->line, NULL, NULL, "NUL byte in line");
            st->cont = CONT_SKIP;
            continue;
        }
        if (st->line == 1 && strncmp(text, UTF8_BOM, strlen(UTF8_BOM)) == 0)
            text += strlen(UTF8_BOM);
        text[strcspn(text, "\r\n")] = '\0';
        text = strip_line(text, &indented);
        len = strlen(text);
        if (len == 0)
            continue;
        if (len + 2 > (size_t)size) {
            /* inih would cut it into pieces and read the rest as new lines. */
            report(st, st->line, NULL, NULL, "line too long (max %d characters, comments excluded)",
                   size - 2);
            st->cont = CONT_SKIP;
            continue;
        }
        if (indented) {
            on_continuation(st, text);
            continue;
        }
        if (text[0] == '[') {
            char *close = strchr(text, ']');
            if (close == NULL) {
                report(st, st->line, NULL, NULL, "missing ']' in section header");
            } else if (close[1] != '\0') {
                report(st, st->line, NULL, NULL, "text after ']' in section header");
            } else {
                char *name = text + 1;
                *close = '\0';
                while (is_blank(*name))
                    name++;
                while (close > name && is_blank(close[-1]))
                    *--close = '\0';
                on_section(st, name);
                snprintf(buf, (size_t)size, "[%s]\n", name);
                return buf;
            }
            /* Whatever section this was meant to be, its keys would land in
             * the wrong one: skip them. */
            st->in_section = true;
            st->section_known = false;
            st->cont = CONT_SKIP;
            continue;
        }
        char *eq = strchr(text, '=');
        if (eq == NULL || memchr(text, ':', (size_t)(eq - text)) != NULL) {
            /* inih would take "name: value" too; we want one syntax. */
            report(st, st->line, NULL, NULL, "expected 'key = value' or '[section]'");
            st->cont = CONT_SKIP;
            continue;
        }
        if (eq == text) {
            report(st, st->line, NULL, NULL, "missing key before '='");
            st->cont = CONT_SKIP;
            continue;
        }
        memcpy(buf, text, len);
        buf[len] = '\n';
        buf[len + 1] = '\0';
        return buf;
    }
}

/* ------------------------------------------------------------------------
 * Whole-file checks
 */

static size_t key_index(const char *section, const char *key)
{
    const struct key_def *k = find_key(section, key);

    assert(k != NULL);
    return (size_t)(k - keys);
}

static bool key_failed(const struct load_state *st, const char *section, const char *key)
{
    return st->failed[key_index(section, key)];
}

/* Lists that must not be empty, reported on the line that emptied them. */
static void check_list_minimums(struct load_state *st)
{
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const struct key_def *k = &keys[i];
        if (!is_list(k) || st->failed[i] || *count_field(st->cfg, k) >= k->min)
            continue;
        report(st, st->set_line[i], k->section, k->key, "at least one %s is required",
               k->type == T_SERVER_LIST ? "server" : "address");
    }
}

static void check_duplicate_servers(struct load_state *st)
{
    const struct config *cfg = st->cfg;

    for (unsigned i = 0; i < cfg->server_count; i++)
        for (unsigned j = 0; j < i; j++)
            if (strcmp(cfg->servers[i].addr.text, cfg->servers[j].addr.text) == 0) {
                report(st, 0, "upstream", "servers", "%s is listed twice",
                       cfg->servers[i].addr.text);
                break;
            }
}

/* No two listeners ([server], [tls], [stats]) on the same address. */
static void check_listeners(struct load_state *st)
{
    static const char *const sections[] = {"server", "tls", "stats"};
    const struct config_addr *lists[] = {st->cfg->listen, st->cfg->tls_listen,
                                         st->cfg->stats_listen};
    const unsigned counts[] = {st->cfg->listen_count, st->cfg->tls_listen_count,
                               st->cfg->stats_listen_count};

    for (unsigned a = 0; a < ARRAY_LEN(lists); a++) {
        for (unsigned i = 0; i < counts[a]; i++) {
            const char *text = lists[a][i].text;
            bool clash = false;
            for (unsigned b = 0; b <= a && !clash; b++) {
                for (unsigned j = 0; j < (b == a ? i : counts[b]) && !clash; j++) {
                    if (strcmp(text, lists[b][j].text) != 0)
                        continue;
                    clash = true;
                    if (a == b)
                        report(st, 0, sections[a], "listen", "%s is listed twice", text);
                    else
                        report(st, 0, NULL, NULL, "%s is in both [%s] listen and [%s] listen", text,
                               sections[b], sections[a]);
                }
            }
        }
    }
}

static void check_tls(struct load_state *st)
{
    const struct config *cfg = st->cfg;
    bool cert = cfg->tls_cert[0] != '\0', key = cfg->tls_key[0] != '\0';

    if (cert != key)
        report(st, 0, NULL, NULL, "[tls] cert and key must be given together");
    else if (cfg->tls_listen_count > 0 && !cert)
        report(st, 0, "tls", "listen", "needs cert and key");
    else if (cfg->tls_listen_count == 0 && cert)
        report(st, 0, NULL, NULL, "[tls] cert and key are set but [tls] listen is not");
    if (cfg->tls_listen_count == 0 && (cfg->tls_certs[0] != '\0' || cfg->tls_ocsp[0] != '\0'))
        report(st, 0, NULL, NULL, "[tls] certs or ocsp is set but [tls] listen is not");
}

static void check_health(struct load_state *st)
{
    const struct config *cfg = st->cfg;
    char timeout[NUM_TEXT_MAX], interval[NUM_TEXT_MAX];

    if (key_failed(st, "health", "timeout") || key_failed(st, "health", "interval"))
        return;
    if (cfg->health_timeout_ms < cfg->health_interval_ms)
        return;
    format_duration(cfg->health_timeout_ms, timeout, sizeof(timeout));
    format_duration(cfg->health_interval_ms, interval, sizeof(interval));
    report(st, 0, "health", "timeout", "%s must be below interval (%s)", timeout, interval);
}

/* stats.auth names a file that must hold a token: found now, not at start. */
static void check_stats_auth(struct load_state *st)
{
    const char *path = st->cfg->stats_auth;
    if (path[0] == '\0' || key_failed(st, "stats", "auth"))
        return;
    FILE *f = fopen(path, "re");
    if (!f) {
        report(st, 0, "stats", "auth", "cannot read '%s': %s", path, strerror(errno));
        return;
    }
    char line[8] = "";
    bool empty = !fgets(line, sizeof(line), f) || line[strspn(line, " \t")] == '\n' ||
                 line[strspn(line, " \t")] == '\r' || line[0] == '\0';
    fclose(f);
    if (empty)
        report(st, 0, "stats", "auth", "'%s' holds no token", path);
}

static void check_whole_file(struct load_state *st)
{
    check_list_minimums(st);
    check_duplicate_servers(st);
    check_listeners(st);
    check_tls(st);
    check_health(st);
    check_stats_auth(st);
}

/* ------------------------------------------------------------------------
 * Public
 */

/* A default the table itself refuses is a bug in the table. */
static void on_default_refused(void *arg, const char *why)
{
    const struct key_def *const *k = arg;

    fprintf(stderr, "config: the default of [%s] %s is refused: %s\n", (*k)->section, (*k)->key,
            why);
}

static void set_defaults(struct config *cfg)
{
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const struct key_def *k = &keys[i];
        int rc = set_value(cfg, k, k->def, false, on_default_refused, &k);
        assert(rc == 0);
        (void)rc;
    }
}

struct config *config_load(const char *path, FILE *errors)
{
    struct load_state st = {.file = path, .errors = errors};
    int rc;

    st.cfg = calloc(1, sizeof(*st.cfg));
    if (st.cfg == NULL) {
        report(&st, 0, NULL, NULL, "out of memory");
        return NULL;
    }
    st.cfg->refs = 1;
    set_defaults(st.cfg);
    if (strlen(path) >= sizeof(st.cfg->path)) {
        report(&st, 0, NULL, NULL, "file name too long");
        goto fail;
    }
    memcpy(st.cfg->path, path, strlen(path) + 1);

    st.in = fopen(path, "r");
    if (st.in == NULL) {
        report(&st, 0, NULL, NULL, "cannot open: %s", strerror(errno));
        goto fail;
    }
    rc = ini_parse_stream(read_line, &st, on_key, &st);
    if (st.read_errno != 0) {
        report(&st, 0, NULL, NULL, "read error: %s", strerror(st.read_errno));
        goto fail;
    }
    if (rc == -2)
        report(&st, 0, NULL, NULL, "out of memory");
    else if (rc != 0) /* read_line() passes on only lines inih accepts */
        report(&st, 0, NULL, NULL, "parse error on the line inih counts as %d", rc);
    check_whole_file(&st);
    if (st.error_count > 0)
        goto fail;
    fclose(st.in);
    free(st.raw);
    return st.cfg;

fail:
    if (st.in != NULL)
        fclose(st.in);
    free(st.raw);
    config_unref(st.cfg);
    return NULL;
}

struct config *config_ref(struct config *cfg)
{
    __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (cfg == NULL)
        return;
    /* Release our writes before the last holder frees; acquire theirs. */
    if (__atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(cfg);
}
