/*
 * config: the ini file turned into an immutable struct config.
 *
 * config_load() parses the whole file with inih, checks every key against
 * one table (section, key, type, bounds, default, offset), then runs the
 * whole-file checks, and reports every error it finds as
 * "FILE:LINE: [section] key: reason". A loaded config is never written
 * again: a reload builds a new one and swaps the pointer. The struct is
 * reference counted with atomics so any thread may hold and drop it.
 * This module never touches sockets beyond resolving numeric addresses.
 */
#ifndef CLONEGATE_CONFIG_H
#define CLONEGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_MAX_LISTEN  8   /* addresses per listen key */
#define CONFIG_MAX_SERVERS 64  /* clones in [upstream] servers */
#define CONFIG_MAX_CIDRS   32  /* entries in an address list (purge_allow) */
#define CONFIG_ADDR_TEXT   72  /* "[v6addr]:port" plus NUL */
#define CONFIG_PATH_MAX    512 /* file paths in the ini */
#define CONFIG_MAX_WEIGHT  256 /* weight=N upper bound */
#define CONFIG_MAX_WORKERS 64  /* workers upper bound */
#define CONFIG_CIPHERS_MAX 256 /* [tls] ciphers, ciphersuites text, plus NUL */

enum config_balance {
    CONFIG_BALANCE_ROUND_ROBIN = 0, /* smooth weighted round robin */
    CONFIG_BALANCE_LEAST_CONN = 1,  /* fewest active requests, weighted */
};

enum config_log_format {
    CONFIG_LOG_COMBINED = 0, /* Apache combined plus upstream fields */
    CONFIG_LOG_JSON = 1,     /* one JSON object per line */
};

/* A numeric socket address as written in the file ("127.0.0.1:8080",
 * "[::1]:8080"); names are not resolved. */
struct config_addr {
    struct sockaddr_storage sa;  /* family, address and port */
    socklen_t salen;             /* bytes of sa in use */
    char text[CONFIG_ADDR_TEXT]; /* normalised "host:port", for logs */
};

/* An address block of an allow list ("127.0.0.1/32", "::1/128"). */
struct config_cidr {
    int family;          /* AF_INET or AF_INET6 */
    uint8_t addr[16];    /* network bytes, 4 used for AF_INET */
    unsigned prefix_len; /* bits */
};

struct config_server {
    struct config_addr addr; /* where the clone listens */
    unsigned weight;         /* 1..CONFIG_MAX_WEIGHT, default 1 */
};

struct config {
    int refs;                   /* atomic; config_unref() frees at zero */
    char path[CONFIG_PATH_MAX]; /* the file it was read from */

    /* [server] */
    struct config_addr listen[CONFIG_MAX_LISTEN];
    unsigned listen_count;                    /* >= 1; default 127.0.0.1:8080 */
    unsigned workers;                         /* resolved: auto = online CPUs */
    unsigned max_connections;                 /* per process; default 10000 */
    unsigned queue_timeout_ms;                /* default 5s; 0 = wait for a slot */
    unsigned busy_poll_us;                    /* polling after a wake-up; default 50, 0 off */
    unsigned busy_nap_us;                     /* timed sleeps under load; default 50, 0 off */
    unsigned header_timeout_ms;               /* default 10s */
    unsigned idle_timeout_ms;                 /* default 60s */
    unsigned tunnel_timeout_ms;               /* default 1h: an Upgrade tunnel idle both ways */
    unsigned drain_timeout_ms;                /* default 30s */
    size_t max_header_size;                   /* bytes, default 32k; larger head: 431 */
    size_t max_uri_size;                      /* bytes, default 8k; longer target: 414 */
    uint64_t max_body_size;                   /* bytes, default 100m; 0 = unlimited; larger: 413 */
    char access_log[CONFIG_PATH_MAX];         /* "off", "stderr" or a path; default stderr */
    enum config_log_format access_log_format; /* default combined */
    char error_log_level[16];                 /* "error", "warn", "info", "debug"; default info */

    /* [tls] (present when tls_listen_count > 0) */
    struct config_addr tls_listen[CONFIG_MAX_LISTEN];
    unsigned tls_listen_count;
    char tls_cert[CONFIG_PATH_MAX];
    char tls_key[CONFIG_PATH_MAX];
    char tls_certs[CONFIG_PATH_MAX];           /* directory of SNI *.pem (chain + key); "" = none */
    char tls_protocols[32];                    /* "TLSv1.2 TLSv1.3" (default); tokens checked */
    char tls_ciphers[CONFIG_CIPHERS_MAX];      /* TLS <= 1.2 list, OpenSSL syntax; checked */
    char tls_ciphersuites[CONFIG_CIPHERS_MAX]; /* TLS 1.3 list, OpenSSL syntax; checked */
    char tls_ocsp[CONFIG_PATH_MAX];            /* DER OCSP response stapled for cert; "" = none */
    bool tls_session_tickets;                  /* default yes */

    /* [upstream] */
    struct config_server servers[CONFIG_MAX_SERVERS];
    unsigned server_count;        /* >= 1 required */
    enum config_balance balance;  /* default round_robin */
    unsigned keepalive;           /* idle pooled connections per server per worker; default 64 */
    unsigned connect_timeout_ms;  /* default 2s */
    unsigned response_timeout_ms; /* default 30s */
    unsigned retries;             /* default 1, 0..CONFIG_MAX_SERVERS */
    bool upstream_tls;            /* TLS to the clones; default no */
    bool upstream_tls_verify;     /* check the clones' certificates; default yes */
    char upstream_tls_ca[CONFIG_PATH_MAX]; /* CA file (or directory); "" = the system store */
    char upstream_tls_sni[256];            /* SNI and checked name; "" = the server's host */

    /* [health] */
    char health_path[256];         /* default /health */
    unsigned health_interval_ms;   /* default 2s */
    unsigned health_timeout_ms;    /* default 1s; must be below interval */
    unsigned health_rise;          /* default 2 */
    unsigned health_fall;          /* default 3 */
    char health_expect_status[16]; /* "200-399" (default) or "200": passing statuses */
    char health_host[256];         /* Host header of the checks; "" = the server address */
    unsigned health_slow_start_ms; /* ramp a recovered server's share over this; 0 = off */

    /* [cache] */
    bool cache_enabled;                /* default yes */
    char cache_redis[CONFIG_PATH_MAX]; /* "host:port", "unix:/path" or "" */
    size_t cache_memory;               /* bytes, default 64m */
    size_t cache_max_object_size;      /* bytes, default 8m */
    unsigned cache_default_ttl_ms;     /* default 0 */
    char cache_tag_header[64];         /* default Surrogate-Key */
    bool cache_expose_tags;            /* keep the tag header toward clients; default no */
    unsigned cache_redis_timeout_ms;   /* longest wait on Redis per request; default 50ms */
    unsigned cache_lock_timeout_ms;    /* longest wait on another request's fill; default 5s */
    unsigned cache_stale_while_revalidate_ms; /* default window when the response names none */
    unsigned cache_stale_if_error_ms;         /* default window when the response names none */
    bool
        cache_store_set_cookie; /* store Set-Cookie responses (the cookie itself is never stored) */
    struct config_cidr purge_allow[CONFIG_MAX_CIDRS];
    unsigned purge_allow_count; /* default 127.0.0.1/32, ::1/128 */

    /* [stats] (admin listener; absent when stats_listen_count == 0) */
    struct config_addr stats_listen[CONFIG_MAX_LISTEN];
    unsigned stats_listen_count;
    struct config_cidr stats_allow[CONFIG_MAX_CIDRS]; /* clients allowed; none = any */
    unsigned stats_allow_count;
    char stats_auth[CONFIG_PATH_MAX]; /* file with a bearer token; "" = none asked */
};

/*
 * Reads and checks the ini file <path>. Every error is printed to <errors>
 * (one line each, "FILE:LINE: [section] key: reason", or "FILE: reason" for
 * whole-file problems). Returns a new config with one reference, which the
 * caller drops with config_unref(), or NULL when the file had any error.
 * Any thread.
 */
struct config *config_load(const char *path, FILE *errors) __attribute__((warn_unused_result));

/* Takes one more reference on <cfg> (not NULL) and returns it. Any thread. */
struct config *config_ref(struct config *cfg);

/* Drops one reference; frees <cfg> at zero. NULL is ignored. Any thread. */
void config_unref(struct config *cfg);

/* Parses a duration ("500ms", "30s", "2m", "1h"; a bare number is seconds)
 * into *<ms>. Returns 0, or -1 on a bad value or overflow. */
int config_parse_duration(const char *text, unsigned *ms);

/* Parses a size ("512", "64k", "8m", "1g") into *<bytes>. Returns 0 or -1. */
int config_parse_size(const char *text, uint64_t *bytes);

/* Parses a boolean (yes/no/on/off/true/false/1/0). Returns 0 or -1. */
int config_parse_bool(const char *text, bool *value);

/* Parses "host:port" or "[v6]:port" (numeric host) into <addr>. 0 or -1. */
int config_parse_addr(const char *text, struct config_addr *addr);

/* Parses an address block ("10.0.0.0/8", "::1/128"; a bare address is a
 * single host) into <cidr>, clearing host bits below the prefix. 0 or -1. */
int config_parse_cidr(const char *text, struct config_cidr *cidr);

/* Whether <sa> falls in one of <cidrs>[0..<count>). IPv4-mapped IPv6
 * addresses match IPv4 blocks. */
bool config_cidr_match(const struct config_cidr *cidrs, unsigned count, const struct sockaddr *sa);

#endif /* CLONEGATE_CONFIG_H */
