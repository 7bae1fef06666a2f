/*
 * test_config: config.c through config.h.
 *
 * Value parsers (durations, sizes, booleans, addresses, address blocks,
 * allow-list matching) are checked from tables; whole files are written to
 * test.ini in a private temporary directory, loaded with config_load(), and
 * the error output is compared byte for byte, line numbers included. One
 * cmocka test per table row, so a failure names its case.
 */
#include "config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#define TEST_INI "test.ini" /* relative: messages then read "test.ini:LINE: ..." */

/* Ten characters, to build long lines. */
#define X10  "aaaaaaaaaa"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10

/* The smallest valid file; most error cases start from it. */
#define MINIMAL "[upstream]\nservers = 127.0.0.1:9001\n"

static char test_dir[] = "/tmp/test_config.XXXXXX";
static char start_dir[PATH_MAX];

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Writes <len> bytes of <ini> (strlen when 0) to test.ini. */
static void write_ini(const char *ini, size_t len)
{
    FILE *f = fopen(TEST_INI, "w");

    assert_non_null(f);
    if (len == 0)
        len = strlen(ini);
    assert_int_equal(fwrite(ini, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Loads <path>; *<errors> gets everything config_load() printed (caller
 * frees). */
static struct config *load_path(const char *path, char **errors)
{
    size_t size;
    FILE *mem = open_memstream(errors, &size);
    struct config *cfg;

    assert_non_null(mem);
    cfg = config_load(path, mem);
    assert_int_equal(fclose(mem), 0);
    return cfg;
}

static struct config *load_text(const char *ini, size_t len, char **errors)
{
    write_ini(ini, len);
    return load_path(TEST_INI, errors);
}

/* Loads <ini>, which must be valid. */
static struct config *load_ok(const char *ini)
{
    char *errors = NULL;
    struct config *cfg = load_text(ini, 0, &errors);

    assert_string_equal(errors, "");
    assert_non_null(cfg);
    free(errors);
    return cfg;
}

static unsigned expected_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1)
        return 1;
    return n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (unsigned)n;
}

static int group_setup(void **state)
{
    (void)state;
    if (getcwd(start_dir, sizeof(start_dir)) == NULL)
        return -1;
    if (mkdtemp(test_dir) == NULL)
        return -1;
    return chdir(test_dir);
}

static int group_teardown(void **state)
{
    (void)state;
    unlink(TEST_INI);
    if (chdir(start_dir) == -1)
        return -1;
    return rmdir(test_dir);
}

/* ------------------------------------------------------------------------
 * Value parser tables
 */

struct duration_case {
    const char *text;
    int rc;      /* 0 or -1 */
    unsigned ms; /* when rc == 0 */
};

static struct duration_case duration_cases[] = {
    {"500ms", 0, 500},
    {"30s", 0, 30000},
    {"2m", 0, 120000},
    {"1h", 0, 3600000},
    {"10", 0, 10000},
    {"0", 0, 0},
    {"0ms", 0, 0},
    {"007s", 0, 7000},
    {"1S", 0, 1000},
    {"250MS", 0, 250},
    {"4294967295ms", 0, UINT_MAX},
    {"4294967s", 0, 4294967000U},
    {"4294968s", -1, 0},
    {"99999999999999999999", -1, 0},
    {"", -1, 0},
    {"s", -1, 0},
    {"ms", -1, 0},
    {"xs", -1, 0},
    {"-1s", -1, 0},
    {"+1s", -1, 0},
    {"1.5s", -1, 0},
    {" 1s", -1, 0},
    {"1s ", -1, 0},
    {"1 s", -1, 0},
    {"1d", -1, 0},
    {"1sm", -1, 0},
    {"1h30m", -1, 0},
    {"0x10", -1, 0},
};

static void test_parse_duration(void **state)
{
    const struct duration_case *c = *state;
    unsigned ms = 12345;

    assert_int_equal(config_parse_duration(c->text, &ms), c->rc);
    assert_int_equal(ms, c->rc == 0 ? c->ms : 12345);
}

struct size_case {
    const char *text;
    int rc;         /* 0 or -1 */
    uint64_t bytes; /* when rc == 0 */
};

static struct size_case size_cases[] = {
    {"512", 0, 512},
    {"0", 0, 0},
    {"64k", 0, 65536},
    {"8m", 0, 8388608},
    {"1g", 0, 1073741824},
    {"1K", 0, 1024},
    {"2G", 0, 2147483648ULL},
    {"18446744073709551615", 0, UINT64_MAX},
    {"17179869183g", 0, 17179869183ULL * 1073741824ULL},
    {"17179869184g", -1, 0},
    {"18446744073709551616", -1, 0},
    {"", -1, 0},
    {"k", -1, 0},
    {"1kb", -1, 0},
    {"1t", -1, 0},
    {"-1", -1, 0},
    {"1.5m", -1, 0},
    {"1 k", -1, 0},
    {" 1k", -1, 0},
};

static void test_parse_size(void **state)
{
    const struct size_case *c = *state;
    uint64_t bytes = 12345;

    assert_int_equal(config_parse_size(c->text, &bytes), c->rc);
    assert_int_equal(bytes, c->rc == 0 ? c->bytes : 12345);
}

struct bool_case {
    const char *text;
    int rc;     /* 0 or -1 */
    bool value; /* when rc == 0 */
};

static struct bool_case bool_cases[] = {
    {"yes", 0, true},  {"no", 0, false},    {"on", 0, true},     {"off", 0, false},
    {"true", 0, true}, {"false", 0, false}, {"1", 0, true},      {"0", 0, false},
    {"YES", 0, true},  {"Off", 0, false},   {"TrUe", 0, true},   {"", -1, false},
    {"y", -1, false},  {"2", -1, false},    {"yes ", -1, false}, {"enabled", -1, false},
};

static void test_parse_bool(void **state)
{
    const struct bool_case *c = *state;
    bool value = !c->value;

    assert_int_equal(config_parse_bool(c->text, &value), c->rc);
    if (c->rc == 0)
        assert_int_equal(value, c->value);
}

struct addr_case {
    const char *text;
    int family;        /* 0: refused */
    const char *shown; /* normalised text */
    unsigned port;
};

static struct addr_case addr_cases[] = {
    {"127.0.0.1:8080", AF_INET, "127.0.0.1:8080", 8080},
    {"0.0.0.0:1", AF_INET, "0.0.0.0:1", 1},
    {"10.1.2.3:65535", AF_INET, "10.1.2.3:65535", 65535},
    {"localhost:80", AF_INET, "127.0.0.1:80", 80},
    {"LOCALHOST:80", AF_INET, "127.0.0.1:80", 80},
    {"[::1]:8080", AF_INET6, "[::1]:8080", 8080},
    {"[0:0:0:0:0:0:0:1]:80", AF_INET6, "[::1]:80", 80},
    {"[::]:443", AF_INET6, "[::]:443", 443},
    {"[2001:DB8::1]:9000", AF_INET6, "[2001:db8::1]:9000", 9000},
    {"[::ffff:127.0.0.1]:80", AF_INET6, "[::ffff:127.0.0.1]:80", 80},
    {"127.0.0.1:080", AF_INET, "127.0.0.1:80", 80},
    {"", 0, NULL, 0},
    {"127.0.0.1", 0, NULL, 0},
    {"127.0.0.1:", 0, NULL, 0},
    {"127.0.0.1:0", 0, NULL, 0},
    {"127.0.0.1:65536", 0, NULL, 0},
    {"127.0.0.1:-1", 0, NULL, 0},
    {"127.0.0.1:80x", 0, NULL, 0},
    {"127.0.0.1: 80", 0, NULL, 0},
    {":80", 0, NULL, 0},
    {"1.2.3:80", 0, NULL, 0},
    {"256.0.0.1:80", 0, NULL, 0},
    {"example.com:80", 0, NULL, 0},
    {"::1:80", 0, NULL, 0},
    {"[::1]80", 0, NULL, 0},
    {"[::1]", 0, NULL, 0},
    {"[::1:80", 0, NULL, 0},
    {"[]:80", 0, NULL, 0},
    {"[127.0.0.1]:80", 0, NULL, 0},
    {"[fe80::1%eth0]:80", 0, NULL, 0},
};

static void test_parse_addr(void **state)
{
    const struct addr_case *c = *state;
    struct config_addr addr;

    if (c->family == 0) {
        assert_int_equal(config_parse_addr(c->text, &addr), -1);
        return;
    }
    assert_int_equal(config_parse_addr(c->text, &addr), 0);
    assert_string_equal(addr.text, c->shown);
    assert_int_equal(addr.sa.ss_family, c->family);
    if (c->family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, &addr.sa, sizeof(sin));
        assert_int_equal(addr.salen, sizeof(struct sockaddr_in));
        assert_int_equal(ntohs(sin.sin_port), c->port);
    } else {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, &addr.sa, sizeof(sin6));
        assert_int_equal(addr.salen, sizeof(struct sockaddr_in6));
        assert_int_equal(ntohs(sin6.sin6_port), c->port);
    }
}

struct cidr_case {
    const char *text;
    int family;          /* 0: refused */
    const char *network; /* address after host bits are cleared */
    unsigned prefix_len;
};

static struct cidr_case cidr_cases[] = {
    {"127.0.0.1/32", AF_INET, "127.0.0.1", 32},
    {"10.0.0.0/8", AF_INET, "10.0.0.0", 8},
    {"10.1.2.3/8", AF_INET, "10.0.0.0", 8},
    {"192.168.1.200/25", AF_INET, "192.168.1.128", 25},
    {"1.2.3.4", AF_INET, "1.2.3.4", 32},
    {"0.0.0.0/0", AF_INET, "0.0.0.0", 0},
    {"9.9.9.9/0", AF_INET, "0.0.0.0", 0},
    {"::1/128", AF_INET6, "::1", 128},
    {"::1", AF_INET6, "::1", 128},
    {"fd12:3456::1/8", AF_INET6, "fd00::", 8},
    {"fe80::1/10", AF_INET6, "fe80::", 10},
    {"::/0", AF_INET6, "::", 0},
    {"", 0, NULL, 0},
    {"/8", 0, NULL, 0},
    {"10.0.0.0/", 0, NULL, 0},
    {"10.0.0.0/33", 0, NULL, 0},
    {"10.0.0.0/-1", 0, NULL, 0},
    {"10.0.0.0/8x", 0, NULL, 0},
    {"10.0.0/8", 0, NULL, 0},
    {"::/129", 0, NULL, 0},
    {"[::1]/128", 0, NULL, 0},
    {"localhost/32", 0, NULL, 0},
};

static void test_parse_cidr(void **state)
{
    const struct cidr_case *c = *state;
    struct config_cidr cidr;
    char shown[INET6_ADDRSTRLEN];

    if (c->family == 0) {
        assert_int_equal(config_parse_cidr(c->text, &cidr), -1);
        return;
    }
    assert_int_equal(config_parse_cidr(c->text, &cidr), 0);
    assert_int_equal(cidr.family, c->family);
    assert_int_equal(cidr.prefix_len, c->prefix_len);
    assert_non_null(inet_ntop(c->family, cidr.addr, shown, sizeof(shown)));
    assert_string_equal(shown, c->network);
}

struct match_case {
    const char *addr; /* numeric IPv4 or IPv6, or "unix" */
    bool match;       /* against match_blocks */
};

static const char *const match_blocks[] = {
    "127.0.0.1/32", "10.0.0.0/8", "192.168.1.128/25", "::1/128", "fd00::/8",
};

static struct match_case match_cases[] = {
    {"127.0.0.1", true},
    {"127.0.0.2", false},
    {"10.255.0.1", true},
    {"11.0.0.1", false},
    {"192.168.1.200", true},
    {"192.168.1.100", false},
    {"::1", true},
    {"::2", false},
    {"fd12::1", true},
    {"fe00::1", false},
    {"::ffff:10.1.1.1", true},
    {"::ffff:127.0.0.1", true},
    {"::ffff:11.0.0.1", false},
    {"::a01:101", false}, /* IPv4-compatible, not mapped: no IPv4 match */
    {"unix", false},
};

/* Fills <ss> with <text> as an IPv4 or IPv6 address, or AF_UNIX. */
static void make_sockaddr(const char *text, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (strcmp(text, "unix") == 0) {
        ss->ss_family = AF_UNIX;
    } else if (strchr(text, ':') == NULL) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(1234)};
        assert_int_equal(inet_pton(AF_INET, text, &sin.sin_addr), 1);
        memcpy(ss, &sin, sizeof(sin));
    } else {
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(1234)};
        assert_int_equal(inet_pton(AF_INET6, text, &sin6.sin6_addr), 1);
        memcpy(ss, &sin6, sizeof(sin6));
    }
}

static void test_cidr_match(void **state)
{
    const struct match_case *c = *state;
    struct config_cidr cidrs[sizeof(match_blocks) / sizeof(match_blocks[0])];
    const unsigned n = sizeof(cidrs) / sizeof(cidrs[0]);
    struct sockaddr_storage ss;

    for (unsigned i = 0; i < n; i++)
        assert_int_equal(config_parse_cidr(match_blocks[i], &cidrs[i]), 0);
    make_sockaddr(c->addr, &ss);
    assert_int_equal(config_cidr_match(cidrs, n, (const struct sockaddr *)&ss), c->match);
    /* An empty list matches nothing. */
    assert_false(config_cidr_match(cidrs, 0, (const struct sockaddr *)&ss));
}

static void test_cidr_match_everything_v4(void **state)
{
    struct config_cidr all;
    struct sockaddr_storage ss;

    (void)state;
    assert_int_equal(config_parse_cidr("0.0.0.0/0", &all), 0);
    make_sockaddr("203.0.113.9", &ss);
    assert_true(config_cidr_match(&all, 1, (const struct sockaddr *)&ss));
    make_sockaddr("::ffff:203.0.113.9", &ss);
    assert_true(config_cidr_match(&all, 1, (const struct sockaddr *)&ss));
    make_sockaddr("2001:db8::1", &ss);
    assert_false(config_cidr_match(&all, 1, (const struct sockaddr *)&ss));
    assert_false(config_cidr_match(&all, 1, NULL));
}

/* ------------------------------------------------------------------------
 * Whole files that load
 */

static void test_defaults(void **state)
{
    struct config *cfg = load_ok(MINIMAL);

    (void)state;
    assert_string_equal(cfg->path, TEST_INI);
    assert_int_equal(cfg->listen_count, 1);
    assert_string_equal(cfg->listen[0].text, "127.0.0.1:8080");
    assert_int_equal(cfg->workers, expected_workers());
    assert_int_equal(cfg->max_connections, 10000);
    assert_int_equal(cfg->queue_timeout_ms, 5000);
    assert_int_equal(cfg->busy_poll_us, 50);
    assert_int_equal(cfg->busy_nap_us, 50);
    assert_int_equal(cfg->header_timeout_ms, 10000);
    assert_int_equal(cfg->idle_timeout_ms, 60000);
    assert_int_equal(cfg->tunnel_timeout_ms, 3600000);
    assert_int_equal(cfg->drain_timeout_ms, 30000);
    assert_int_equal(cfg->max_header_size, 32 * 1024);
    assert_int_equal(cfg->max_uri_size, 8 * 1024);
    assert_int_equal(cfg->max_body_size, 100 * 1024 * 1024);
    assert_string_equal(cfg->access_log, "stderr");
    assert_int_equal(cfg->access_log_format, CONFIG_LOG_COMBINED);
    assert_string_equal(cfg->error_log_level, "info");

    assert_int_equal(cfg->tls_listen_count, 0);
    assert_string_equal(cfg->tls_cert, "");
    assert_string_equal(cfg->tls_key, "");
    assert_string_equal(cfg->tls_certs, "");
    assert_string_equal(cfg->tls_protocols, "TLSv1.2 TLSv1.3");
    assert_string_equal(cfg->tls_ciphers,
                        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305");
    assert_string_equal(
        cfg->tls_ciphersuites,
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    assert_string_equal(cfg->tls_ocsp, "");
    assert_true(cfg->tls_session_tickets);

    assert_int_equal(cfg->server_count, 1);
    assert_string_equal(cfg->servers[0].addr.text, "127.0.0.1:9001");
    assert_int_equal(cfg->servers[0].weight, 1);
    assert_int_equal(cfg->balance, CONFIG_BALANCE_ROUND_ROBIN);
    assert_int_equal(cfg->keepalive, 64);
    assert_int_equal(cfg->connect_timeout_ms, 2000);
    assert_int_equal(cfg->response_timeout_ms, 30000);
    assert_int_equal(cfg->retries, 1);
    assert_false(cfg->upstream_tls);
    assert_true(cfg->upstream_tls_verify);
    assert_string_equal(cfg->upstream_tls_ca, "");
    assert_string_equal(cfg->upstream_tls_sni, "");

    assert_string_equal(cfg->health_path, "/health");
    assert_int_equal(cfg->health_interval_ms, 2000);
    assert_int_equal(cfg->health_timeout_ms, 1000);
    assert_int_equal(cfg->health_rise, 2);
    assert_int_equal(cfg->health_fall, 3);

    assert_true(cfg->cache_enabled);
    assert_string_equal(cfg->cache_redis, "");
    assert_int_equal(cfg->cache_memory, 64 * 1024 * 1024);
    assert_int_equal(cfg->cache_max_object_size, 8 * 1024 * 1024);
    assert_int_equal(cfg->cache_default_ttl_ms, 0);
    assert_string_equal(cfg->cache_tag_header, "Surrogate-Key");
    assert_int_equal(cfg->purge_allow_count, 2);
    assert_int_equal(cfg->purge_allow[0].family, AF_INET);
    assert_int_equal(cfg->purge_allow[0].prefix_len, 32);
    assert_int_equal(cfg->purge_allow[1].family, AF_INET6);
    assert_int_equal(cfg->purge_allow[1].prefix_len, 128);

    assert_int_equal(cfg->stats_listen_count, 0);
    config_unref(cfg);
}

/* Every key, each set away from its default. */
static const char full_ini[] = "[server]\n"
                               "listen = 0.0.0.0:8000, [::]:8000\n"
                               "workers = 4\n"
                               "max_connections = 500\n"
                               "queue_timeout = 0\n"
                               "busy_poll_us = 0\n"
                               "busy_nap_us = 200\n"
                               "header_timeout = 5s\n"
                               "idle_timeout = 2m\n"
                               "drain_timeout = 0\n"
                               "max_header_size = 16k\n"
                               "max_uri_size = 4096\n"
                               "max_body_size = 1g\n"
                               "access_log = /var/log/clonegate/access.log\n"
                               "access_log_format = json\n"
                               "error_log_level = debug\n"
                               "\n"
                               "[tls]\n"
                               "listen = 127.0.0.1:8443\n"
                               "cert = /etc/clonegate/cert.pem\n"
                               "key = /etc/clonegate/key.pem\n"
                               "certs = .\n" /* checked: a directory that exists */
                               "protocols = TLSv1.3\n"
                               "ciphers = ECDHE-ECDSA-AES256-GCM-SHA384\n"
                               "ciphersuites = TLS_AES_256_GCM_SHA384\n"
                               "ocsp = test.ini\n" /* checked: a file that can be read */
                               "session_tickets = no\n"
                               "\n"
                               "[upstream]\n"
                               "servers = 10.0.0.1:80 weight=3, [2001:db8::1]:8080, "
                               "localhost:9000 weight=256\n"
                               "balance = least_conn\n"
                               "keepalive = 0\n"
                               "connect_timeout = 500ms\n"
                               "response_timeout = 1h\n"
                               "retries = 2\n"
                               "tls = yes\n"
                               "tls_verify = no\n"
                               "tls_ca = test.ini\n"
                               "tls_sni = app.example.com\n"
                               "\n"
                               "[health]\n"
                               "path = /status?full=1\n"
                               "interval = 5s\n"
                               "timeout = 1500ms\n"
                               "rise = 1\n"
                               "fall = 5\n"
                               "\n"
                               "[cache]\n"
                               "enabled = off\n"
                               "redis = unix:/run/redis/redis.sock\n"
                               "memory = 1g\n"
                               "max_object_size = 512k\n"
                               "default_ttl = 30s\n"
                               "tag_header = Cache-Tag\n"
                               "purge_allow = 10.0.0.0/8, 192.168.0.1, fd00::/8\n"
                               "\n"
                               "[stats]\n"
                               "listen = 127.0.0.1:8081\n";

static void test_full(void **state)
{
    struct config *cfg = load_ok(full_ini);
    char shown[INET6_ADDRSTRLEN];

    (void)state;
    assert_int_equal(cfg->listen_count, 2);
    assert_string_equal(cfg->listen[0].text, "0.0.0.0:8000");
    assert_string_equal(cfg->listen[1].text, "[::]:8000");
    assert_int_equal(cfg->listen[1].sa.ss_family, AF_INET6);
    assert_int_equal(cfg->workers, 4);
    assert_int_equal(cfg->max_connections, 500);
    assert_int_equal(cfg->queue_timeout_ms, 0);
    assert_int_equal(cfg->busy_poll_us, 0);
    assert_int_equal(cfg->busy_nap_us, 200);
    assert_int_equal(cfg->header_timeout_ms, 5000);
    assert_int_equal(cfg->idle_timeout_ms, 120000);
    assert_int_equal(cfg->drain_timeout_ms, 0);
    assert_int_equal(cfg->max_header_size, 16384);
    assert_int_equal(cfg->max_uri_size, 4096);
    assert_int_equal(cfg->max_body_size, 1073741824ULL);
    assert_string_equal(cfg->access_log, "/var/log/clonegate/access.log");
    assert_int_equal(cfg->access_log_format, CONFIG_LOG_JSON);
    assert_string_equal(cfg->error_log_level, "debug");

    assert_int_equal(cfg->tls_listen_count, 1);
    assert_string_equal(cfg->tls_listen[0].text, "127.0.0.1:8443");
    assert_string_equal(cfg->tls_cert, "/etc/clonegate/cert.pem");
    assert_string_equal(cfg->tls_key, "/etc/clonegate/key.pem");
    assert_string_equal(cfg->tls_certs, ".");
    assert_string_equal(cfg->tls_protocols, "TLSv1.3");
    assert_string_equal(cfg->tls_ciphers, "ECDHE-ECDSA-AES256-GCM-SHA384");
    assert_string_equal(cfg->tls_ciphersuites, "TLS_AES_256_GCM_SHA384");
    assert_string_equal(cfg->tls_ocsp, "test.ini");
    assert_false(cfg->tls_session_tickets);

    assert_int_equal(cfg->server_count, 3);
    assert_string_equal(cfg->servers[0].addr.text, "10.0.0.1:80");
    assert_int_equal(cfg->servers[0].weight, 3);
    assert_string_equal(cfg->servers[1].addr.text, "[2001:db8::1]:8080");
    assert_int_equal(cfg->servers[1].weight, 1);
    assert_string_equal(cfg->servers[2].addr.text, "127.0.0.1:9000");
    assert_int_equal(cfg->servers[2].weight, 256);
    assert_int_equal(cfg->balance, CONFIG_BALANCE_LEAST_CONN);
    assert_int_equal(cfg->keepalive, 0);
    assert_int_equal(cfg->connect_timeout_ms, 500);
    assert_int_equal(cfg->response_timeout_ms, 3600000);
    assert_int_equal(cfg->retries, 2);
    assert_true(cfg->upstream_tls);
    assert_false(cfg->upstream_tls_verify);
    assert_string_equal(cfg->upstream_tls_ca, "test.ini");
    assert_string_equal(cfg->upstream_tls_sni, "app.example.com");

    assert_string_equal(cfg->health_path, "/status?full=1");
    assert_int_equal(cfg->health_interval_ms, 5000);
    assert_int_equal(cfg->health_timeout_ms, 1500);
    assert_int_equal(cfg->health_rise, 1);
    assert_int_equal(cfg->health_fall, 5);

    assert_false(cfg->cache_enabled);
    assert_string_equal(cfg->cache_redis, "unix:/run/redis/redis.sock");
    assert_int_equal(cfg->cache_memory, 1073741824ULL);
    assert_int_equal(cfg->cache_max_object_size, 524288);
    assert_int_equal(cfg->cache_default_ttl_ms, 30000);
    assert_string_equal(cfg->cache_tag_header, "Cache-Tag");
    assert_int_equal(cfg->purge_allow_count, 3);
    assert_int_equal(cfg->purge_allow[1].family, AF_INET);
    assert_int_equal(cfg->purge_allow[1].prefix_len, 32);
    assert_non_null(inet_ntop(AF_INET, cfg->purge_allow[1].addr, shown, sizeof(shown)));
    assert_string_equal(shown, "192.168.0.1");
    assert_int_equal(cfg->purge_allow[2].family, AF_INET6);
    assert_int_equal(cfg->purge_allow[2].prefix_len, 8);

    assert_int_equal(cfg->stats_listen_count, 1);
    assert_string_equal(cfg->stats_listen[0].text, "127.0.0.1:8081");
    config_unref(cfg);
}

/* Comments, blanks, CRLF, a BOM, case, continuation lines. */
static void test_syntax(void **state)
{
    static const char ini[] = "\xEF\xBB\xBF; leading comment\r\n"
                              "# hash comment\r\n"
                              "[server]   ; comment after a section\r\n"
                              "listen = 127.0.0.1:8080, [::1]:8080 ; two addresses\r\n"
                              "   ; an indented comment\r\n"
                              "\t\r\n"
                              "access_log = /tmp/a;b#c   # ';' and '#' need a blank before\r\n"
                              "workers=AUTO\r\n"
                              "access_log_format = JSON\r\n"
                              "[ upstream ]\n"
                              "servers = 127.0.0.1:9001 weight=2,\n"
                              "    127.0.0.1:9002,   ; a comment after a trailing comma\n"
                              "    ; a comment inside the list\n"
                              "\n"
                              "\t127.0.0.1:9003   weight=5\n"
                              "[cache]\n"
                              "redis = redis.internal:6379\n"
                              "purge_allow =\n"
                              "[health]\n"
                              "interval = 1s\n"
                              "timeout = 999ms";

    struct config *cfg = load_ok(ini);

    (void)state;
    assert_int_equal(cfg->listen_count, 2);
    assert_string_equal(cfg->listen[1].text, "[::1]:8080");
    assert_string_equal(cfg->access_log, "/tmp/a;b#c");
    assert_int_equal(cfg->workers, expected_workers());
    assert_int_equal(cfg->access_log_format, CONFIG_LOG_JSON);
    assert_int_equal(cfg->server_count, 3);
    assert_int_equal(cfg->servers[0].weight, 2);
    assert_string_equal(cfg->servers[1].addr.text, "127.0.0.1:9002");
    assert_int_equal(cfg->servers[1].weight, 1);
    assert_string_equal(cfg->servers[2].addr.text, "127.0.0.1:9003");
    assert_int_equal(cfg->servers[2].weight, 5);
    assert_string_equal(cfg->cache_redis, "redis.internal:6379");
    assert_int_equal(cfg->purge_allow_count, 0);
    assert_int_equal(cfg->health_timeout_ms, 999);
    config_unref(cfg);
}

/* Long comments are fine; what counts is the text before them. */
static void test_long_comment_and_longest_line(void **state)
{
    static const char ini[] =
        MINIMAL "; " X100 X100 X100 "\n"
                "[server]\n"
                /* 13 + 1 + 184 = 198 characters */
                "access_log = /" X100 X10 X10 X10 X10 X10 X10 X10 X10 "aaaa ; " X100 "\n";
    struct config *cfg = load_ok(ini);

    (void)state;
    assert_int_equal(strlen(cfg->access_log), 185);
    config_unref(cfg);
}

static void test_ref_unref(void **state)
{
    struct config *cfg = load_ok(MINIMAL);

    (void)state;
    assert_int_equal(cfg->refs, 1);
    assert_ptr_equal(config_ref(cfg), cfg);
    assert_int_equal(cfg->refs, 2);
    config_unref(cfg);
    assert_int_equal(cfg->refs, 1);
    config_unref(cfg); /* freed; ASan would see a second use */
    config_unref(NULL);
}

static void test_errors_to_null(void **state)
{
    (void)state;
    write_ini("[nope]\n", 0);
    assert_null(config_load(TEST_INI, NULL));
}

static void test_missing_file(void **state)
{
    char *errors = NULL;

    (void)state;
    assert_null(load_path("no-such-file.ini", &errors));
    assert_string_equal(errors, "no-such-file.ini: cannot open: No such file or directory\n");
    free(errors);
}

static void test_directory(void **state)
{
    char *errors = NULL;

    (void)state;
    assert_null(load_path(".", &errors));
    assert_string_equal(errors, ".: read error: Is a directory\n");
    free(errors);
}

/* The ini files the project ships load cleanly (run from the top of the
 * tree, as make does; skipped elsewhere). */
static void test_shipped_files(void **state)
{
    static const char *const files[] = {"config/clonegate.ini", "examples/clonegate-minimal.ini"};
    char path[PATH_MAX + 64];

    (void)state;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char *errors = NULL;
        struct config *cfg;

        snprintf(path, sizeof(path), "%s/%s", start_dir, files[i]);
        if (access(path, R_OK) == -1)
            skip();
        cfg = load_path(path, &errors);
        assert_string_equal(errors, "");
        assert_non_null(cfg);
        assert_int_equal(cfg->server_count, 2);
        assert_string_equal(cfg->listen[0].text, "127.0.0.1:8080");
        config_unref(cfg);
        free(errors);
    }
}

/* ------------------------------------------------------------------------
 * Whole files that do not load: exact messages
 */

struct bad_case {
    const char *name;
    const char *ini;
    size_t len;         /* bytes of ini; 0: strlen */
    const char *errors; /* everything config_load() prints */
};

static struct bad_case bad_cases[] = {
    {"unknown section", MINIMAL "[backend]\nservers = 1\nanything = goes\n", 0,
     "test.ini:3: [backend]: unknown section\n"},
    {"unknown key", "[server]\nlisten_addr = 127.0.0.1:80\n" MINIMAL, 0,
     "test.ini:2: [server] listen_addr: unknown key\n"},
    {"key in the wrong section", MINIMAL "workers = 2\n", 0,
     "test.ini:3: [upstream] workers: unknown key\n"},
    {"key outside a section", "workers = 2\n" MINIMAL, 0,
     "test.ini:1: workers: key outside any [section]\n"},
    {"duplicate key", MINIMAL "[server]\nworkers = 2\n\nworkers = 3\n", 0,
     "test.ini:6: [server] workers: duplicate key (first set on line 4)\n"},
    {"duplicate key across repeated sections", MINIMAL "[upstream]\nservers = 127.0.0.1:2\n", 0,
     "test.ini:4: [upstream] servers: duplicate key (first set on line 2)\n"},
    {"bad duration", "[server]\nheader_timeout = xs\n" MINIMAL, 0,
     "test.ini:2: [server] header_timeout: bad duration 'xs'\n"},
    {"bad duration, fraction", "[server]\nidle_timeout = 1.5s\n" MINIMAL, 0,
     "test.ini:2: [server] idle_timeout: bad duration '1.5s'\n"},
    {"duration too large for any field", "[server]\nidle_timeout = 99999999999999999999h\n" MINIMAL,
     0, "test.ini:2: [server] idle_timeout: bad duration '99999999999999999999h'\n"},
    {"out of range, busy_poll_us", "[server]\nbusy_poll_us = 5000\n" MINIMAL, 0,
     "test.ini:2: [server] busy_poll_us: '5000' out of range (0..1000)\n"},
    {"out of range, busy_nap_us", "[server]\nbusy_nap_us = 1001\n" MINIMAL, 0,
     "test.ini:2: [server] busy_nap_us: '1001' out of range (0..1000)\n"},
    {"bad duration, queue_timeout", "[server]\nqueue_timeout = 2h\n" MINIMAL, 0,
     "test.ini:2: [server] queue_timeout: '2h' out of range (0s..1h)\n"},
    {"bad size", "[server]\nmax_body_size = 10q\n" MINIMAL, 0,
     "test.ini:2: [server] max_body_size: bad size '10q'\n"},
    {"bad size, negative", "[cache]\nmemory = -1m\n" MINIMAL, 0,
     "test.ini:2: [cache] memory: bad size '-1m'\n"},
    {"bad bool", "[cache]\nenabled = maybe\n" MINIMAL, 0,
     "test.ini:2: [cache] enabled: bad boolean 'maybe' (yes/no/on/off/true/false/1/0)\n"},
    {"bad number", "[server]\nworkers = many\n" MINIMAL, 0,
     "test.ini:2: [server] workers: bad number 'many'\n"},
    {"bad enum", MINIMAL "balance = random\n", 0,
     "test.ini:3: [upstream] balance: bad value 'random' (round_robin|least_conn)\n"},
    {"bad log level", "[server]\nerror_log_level = trace\n" MINIMAL, 0,
     "test.ini:2: [server] error_log_level: bad value 'trace' (error|warn|info|debug)\n"},
    {"empty value", "[server]\nworkers =\n" MINIMAL, 0,
     "test.ini:2: [server] workers: empty value\n"},
    {"out of range, count", "[server]\nworkers = 65\n" MINIMAL, 0,
     "test.ini:2: [server] workers: '65' out of range (1..64)\n"},
    {"out of range, zero", "[health]\nrise = 0\n" MINIMAL, 0,
     "test.ini:2: [health] rise: '0' out of range (1..100)\n"},
    {"out of range, duration", "[server]\nheader_timeout = 5ms\n" MINIMAL, 0,
     "test.ini:2: [server] header_timeout: '5ms' out of range (10ms..1h)\n"},
    {"out of range, long duration", "[server]\nheader_timeout = 61m\n" MINIMAL, 0,
     "test.ini:2: [server] header_timeout: '61m' out of range (10ms..1h)\n"},
    {"out of range, past 32 bits",
     "[upstream]\nresponse_timeout = 5000000s\n"
     "servers = 127.0.0.1:1\n",
     0, "test.ini:2: [upstream] response_timeout: '5000000s' out of range (10ms..24h)\n"},
    {"out of range, size", "[server]\nmax_header_size = 2m\n" MINIMAL, 0,
     "test.ini:2: [server] max_header_size: '2m' out of range (1k..1m)\n"},
    {"out of range, object size over a Redis bulk", "[cache]\nmax_object_size = 1g\n" MINIMAL, 0,
     "test.ini:2: [cache] max_object_size: '1g' out of range (1k..512m)\n"},
    {"out of range, retries", MINIMAL "retries = 65\n", 0,
     "test.ini:3: [upstream] retries: '65' out of range (0..64)\n"},
    {"bad server address, name", "[upstream]\nservers = example.com:80\n", 0,
     "test.ini:2: [upstream] servers: bad server address 'example.com:80': host must be a "
     "numeric IPv4 address, an [IPv6] address or localhost\n"},
    {"bad server address, no port", "[upstream]\nservers = 127.0.0.1:9001, 127.0.0.1\n", 0,
     "test.ini:2: [upstream] servers: bad server address '127.0.0.1': missing ':port'\n"},
    {"bad server address, bare IPv6", "[upstream]\nservers = ::1:80\n", 0,
     "test.ini:2: [upstream] servers: bad server address '::1:80': an IPv6 address needs "
     "brackets, as in [::1]:8080\n"},
    {"bad server address, port", "[upstream]\nservers = 127.0.0.1:70000\n", 0,
     "test.ini:2: [upstream] servers: bad server address '127.0.0.1:70000': port must be a "
     "number from 1 to 65535\n"},
    {"bad server, junk", "[upstream]\nservers = 127.0.0.1:80 heavy\n", 0,
     "test.ini:2: [upstream] servers: bad server '127.0.0.1:80 heavy': expected 'host:port' or "
     "'host:port weight=N'\n"},
    {"bad weight, zero", "[upstream]\nservers = 127.0.0.1:80 weight=0\n", 0,
     "test.ini:2: [upstream] servers: bad weight '0' (1..256)\n"},
    {"bad weight, too big", "[upstream]\nservers = 127.0.0.1:80 weight=257\n", 0,
     "test.ini:2: [upstream] servers: bad weight '257' (1..256)\n"},
    {"bad weight, text", "[upstream]\nservers = 127.0.0.1:80 weight=x\n", 0,
     "test.ini:2: [upstream] servers: bad weight 'x' (1..256)\n"},
    {"empty list entry", "[upstream]\nservers = 127.0.0.1:80,,127.0.0.1:81\n", 0,
     "test.ini:2: [upstream] servers: empty entry in list\n"},
    {"every bad server entry of a line",
     "[upstream]\nservers = 127.0.0.1:9001 weight=0, 127.0.0.1:9002 weight=257\n", 0,
     "test.ini:2: [upstream] servers: bad weight '0' (1..256)\n"
     "test.ini:2: [upstream] servers: bad weight '257' (1..256)\n"},
    {"bad server entries around good ones, on continuation lines too",
     "[upstream]\n"
     "servers = 127.0.0.1, 127.0.0.1:9001,\n"
     "  127.0.0.1:9002 weight=x, 127.0.0.1:9003,, 127.0.0.1:9004 heavy\n"
     "[health]\nrise = 0\n",
     0,
     "test.ini:2: [upstream] servers: bad server address '127.0.0.1': missing ':port'\n"
     "test.ini:3: [upstream] servers: bad weight 'x' (1..256)\n"
     "test.ini:3: [upstream] servers: empty entry in list\n"
     "test.ini:3: [upstream] servers: bad server '127.0.0.1:9004 heavy': expected 'host:port' or "
     "'host:port weight=N'\n"
     "test.ini:5: [health] rise: '0' out of range (1..100)\n"},
    {"a bad server entry does not hide a duplicate",
     "[upstream]\nservers = 127.0.0.1:1, 127.0.0.1:2 weight=0, 127.0.0.1:1\n", 0,
     "test.ini:2: [upstream] servers: bad weight '0' (1..256)\n"
     "test.ini: [upstream] servers: 127.0.0.1:1 is listed twice\n"},
    {"every bad address block of a line", MINIMAL "[stats]\nallow = 10.0.0.0/33, ::1, x\n", 0,
     "test.ini:4: [stats] allow: bad address block '10.0.0.0/33': prefix length must be 0..32\n"
     "test.ini:4: [stats] allow: bad address block 'x': not an IPv4 or IPv6 address\n"},
    {"bad listen address", "[server]\nlisten = *:80\n" MINIMAL, 0,
     "test.ini:2: [server] listen: bad address '*:80': host must be a numeric IPv4 address, an "
     "[IPv6] address or localhost\n"},
    {"too many listen addresses",
     "[stats]\nlisten = 127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3, 127.0.0.1:4, 127.0.0.1:5, "
     "127.0.0.1:6, 127.0.0.1:7, 127.0.0.1:8, 127.0.0.1:9\n" MINIMAL,
     0, "test.ini:2: [stats] listen: too many addresses (max 8)\n"},
    {"too many is said once",
     "[stats]\nlisten = 127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3, 127.0.0.1:4, 127.0.0.1:5, "
     "127.0.0.1:6, 127.0.0.1:7, 127.0.0.1:8, 127.0.0.1:9, 127.0.0.1:10, x\n" MINIMAL,
     0, "test.ini:2: [stats] listen: too many addresses (max 8)\n"},
    {"empty listen", "[server]\nlisten =\n" MINIMAL, 0,
     "test.ini:2: [server] listen: at least one address is required\n"},
    {"bad address block", MINIMAL "[cache]\npurge_allow = 127.0.0.1/33\n", 0,
     "test.ini:4: [cache] purge_allow: bad address block '127.0.0.1/33': prefix length must be "
     "0..32\n"},
    {"bad address block, name", MINIMAL "[cache]\npurge_allow = localhost\n", 0,
     "test.ini:4: [cache] purge_allow: bad address block 'localhost': not an IPv4 or IPv6 "
     "address\n"},
    {"bad redis", MINIMAL "[cache]\nredis = redis\n", 0,
     "test.ini:4: [cache] redis: bad value 'redis': expected host:port, unix:/path or nothing\n"},
    {"bad redis, relative socket", MINIMAL "[cache]\nredis = unix:redis.sock\n", 0,
     "test.ini:4: [cache] redis: bad value 'unix:redis.sock': a unix socket path must be "
     "absolute, as in unix:/run/redis.sock\n"},
    {"bad health path", MINIMAL "[health]\npath = health\n", 0,
     "test.ini:4: [health] path: bad value 'health': must start with '/'\n"},
    {"bad tag header", MINIMAL "[cache]\ntag_header = Surrogate Key\n", 0,
     "test.ini:4: [cache] tag_header: bad value 'Surrogate Key': not a valid HTTP header name\n"},
    {"string too long", MINIMAL "[cache]\ntag_header = " X10 X10 X10 X10 X10 X10 "abcd\n", 0,
     "test.ini:4: [cache] tag_header: too long (max 63 characters)\n"},
    {"missing servers", "[server]\nlisten = 127.0.0.1:8080\n", 0,
     "test.ini: [upstream] servers: at least one server is required\n"},
    {"empty servers", "[upstream]\nservers =\n", 0,
     "test.ini:2: [upstream] servers: at least one server is required\n"},
    {"empty file", "", 0, "test.ini: [upstream] servers: at least one server is required\n"},
    {"duplicate servers", "[upstream]\nservers = 127.0.0.1:9001, localhost:9001\n", 0,
     "test.ini: [upstream] servers: 127.0.0.1:9001 is listed twice\n"},
    {"health timeout equal to interval", MINIMAL "[health]\ninterval = 2s\ntimeout = 2000ms\n", 0,
     "test.ini: [health] timeout: 2s must be below interval (2s)\n"},
    {"health timeout above the default interval", MINIMAL "[health]\ntimeout = 3s\n", 0,
     "test.ini: [health] timeout: 3s must be below interval (2s)\n"},
    {"tls cert without key", MINIMAL "[tls]\nlisten = 127.0.0.1:8443\ncert = c.pem\n", 0,
     "test.ini: [tls] cert and key must be given together\n"},
    {"tls listen without cert", MINIMAL "[tls]\nlisten = 127.0.0.1:8443\n", 0,
     "test.ini: [tls] listen: needs cert and key\n"},
    {"tls cert without listen", MINIMAL "[tls]\ncert = c.pem\nkey = k.pem\n", 0,
     "test.ini: [tls] cert and key are set but [tls] listen is not\n"},
    {"tls certs without listen", MINIMAL "[tls]\ncerts = .\n", 0,
     "test.ini: [tls] certs or ocsp is set but [tls] listen is not\n"},
    {"tls protocols, unknown", MINIMAL "[tls]\nprotocols = TLSv1.1 TLSv1.2\n", 0,
     "test.ini:4: [tls] protocols: bad value 'TLSv1.1 TLSv1.2': the known protocols are "
     "TLSv1.2 and TLSv1.3\n"},
    {"tls protocols, separators only", MINIMAL "[tls]\nprotocols = ,\n", 0,
     "test.ini:4: [tls] protocols: bad value ',': the known protocols are TLSv1.2 and TLSv1.3\n"},
    {"tls protocols, empty", MINIMAL "[tls]\nprotocols =\n", 0,
     "test.ini:4: [tls] protocols: empty value\n"},
    {"tls ciphers, unknown", MINIMAL "[tls]\nciphers = RC5-MAGIC:FOO\n", 0,
     "test.ini:4: [tls] ciphers: bad value 'RC5-MAGIC:FOO': OpenSSL knows none of these "
     "ciphers\n"},
    {"tls ciphers, TLS 1.3 names", MINIMAL "[tls]\nciphers = TLS_AES_128_GCM_SHA256\n", 0,
     "test.ini:4: [tls] ciphers: bad value 'TLS_AES_128_GCM_SHA256': OpenSSL knows none of "
     "these ciphers\n"},
    {"tls ciphersuites, unknown", MINIMAL "[tls]\nciphersuites = TLS_FOO\n", 0,
     "test.ini:4: [tls] ciphersuites: bad value 'TLS_FOO': OpenSSL knows none of these "
     "suites\n"},
    {"tls certs, missing", MINIMAL "[tls]\ncerts = /nonexistent/certs\n", 0,
     "test.ini:4: [tls] certs: bad value '/nonexistent/certs': no such directory\n"},
    {"tls certs, a file", MINIMAL "[tls]\ncerts = test.ini\n", 0,
     "test.ini:4: [tls] certs: bad value 'test.ini': not a directory\n"},
    {"tls ocsp, missing", MINIMAL "[tls]\nocsp = /nonexistent/ocsp.der\n", 0,
     "test.ini:4: [tls] ocsp: bad value '/nonexistent/ocsp.der': no such file\n"},
    {"tls session_tickets, bad", MINIMAL "[tls]\nsession_tickets = sometimes\n", 0,
     "test.ini:4: [tls] session_tickets: bad boolean 'sometimes' "
     "(yes/no/on/off/true/false/1/0)\n"},
    {"upstream tls, bad", MINIMAL "tls = maybe\n", 0,
     "test.ini:3: [upstream] tls: bad boolean 'maybe' (yes/no/on/off/true/false/1/0)\n"},
    {"upstream tls_ca, missing", MINIMAL "tls_ca = /nonexistent/ca.pem\n", 0,
     "test.ini:3: [upstream] tls_ca: bad value '/nonexistent/ca.pem': no such file\n"},
    {"upstream tls_sni, bad", MINIMAL "tls_sni = app.example.com:443\n", 0,
     "test.ini:3: [upstream] tls_sni: bad value 'app.example.com:443': must be a DNS name\n"},
    {"listen clash", MINIMAL "[stats]\nlisten = 127.0.0.1:8080\n", 0,
     "test.ini: 127.0.0.1:8080 is in both [server] listen and [stats] listen\n"},
    {"listen twice", "[server]\nlisten = 127.0.0.1:80, localhost:80\n" MINIMAL, 0,
     "test.ini: [server] listen: 127.0.0.1:80 is listed twice\n"},
    {"no equals sign", MINIMAL "retries 2\n", 0,
     "test.ini:3: expected 'key = value' or '[section]'\n"},
    {"colon syntax", MINIMAL "retries: 2\n", 0,
     "test.ini:3: expected 'key = value' or '[section]'\n"},
    {"no key", MINIMAL "= 2\n", 0, "test.ini:3: missing key before '='\n"},
    {"section without bracket", MINIMAL "[health\nrise = 0\n", 0,
     "test.ini:3: missing ']' in section header\n"},
    {"text after section", MINIMAL "[health] x\nrise = 0\n", 0,
     "test.ini:3: text after ']' in section header\n"},
    {"continuation of a scalar", "[server]\nworkers = 2\n  3\n" MINIMAL, 0,
     "test.ini:3: [server] workers: indented line, but only lists may continue on the next "
     "line\n"},
    {"a key indented under a list", "[upstream]\nservers = 127.0.0.1:1\n retries = 3\n", 0,
     "test.ini:3: [upstream] servers: an indented line continues the list above, and this one "
     "looks like a key of its own: remove its leading blanks\n"},
    {"continuation without a key", "[server]\n  127.0.0.1:80\n" MINIMAL, 0,
     "test.ini:2: indented line, but no key above to continue\n"},
    {"continuation of a bad key is not reported again", "[server]\nlistn = 1\n  2\n" MINIMAL, 0,
     "test.ini:2: [server] listn: unknown key\n"},
    {"bad entry on a continuation line",
     "[upstream]\nservers = 127.0.0.1:1,\n  127.0.0.1:2 weight=9999\n", 0,
     "test.ini:3: [upstream] servers: bad weight '9999' (1..256)\n"},
    {"NUL byte", MINIMAL "[server]\nworkers = 2\0\n",
     sizeof(MINIMAL "[server]\nworkers = 2\0\n") - 1, "test.ini:4: NUL byte in line\n"},
    {"line too long", MINIMAL "[cache]\ntag_header = " X100 X100 "\n[health]\nrise = 0\n", 0,
     "test.ini:4: line too long (max 198 characters, comments excluded)\n"
     "test.ini:6: [health] rise: '0' out of range (1..100)\n"},
    {"line one character too long",
     MINIMAL "[server]\naccess_log = /" X100 X10 X10 X10 X10 X10 X10 X10 X10 "aaaaa\n", 0,
     "test.ini:4: line too long (max 198 characters, comments excluded)\n"},
    {"several errors",
     "[server]\n"                                 /* 1 */
     "workers = many\n"                           /* 2 */
     "bogus = 1\n"                                /* 3 */
     "max_body_size = 1x\n"                       /* 4 */
     "[nope]\n"                                   /* 5 */
     "anything = at all\n"                        /* 6 */
     "[upstream]\n"                               /* 7 */
     "servers = 127.0.0.1:9001, 127.0.0.1:9001\n" /* 8 */
     "retries = 100\n"                            /* 9 */
     "[health]\n"                                 /* 10 */
     "interval = 1s\n"                            /* 11 */
     "timeout = 1s\n"                             /* 12 */
     "rise = 0\n"                                 /* 13 */
     "fall\n"                                     /* 14 */
     "[tls]\n"                                    /* 15 */
     "key = k.pem\n",                             /* 16 */
     0,
     "test.ini:2: [server] workers: bad number 'many'\n"
     "test.ini:3: [server] bogus: unknown key\n"
     "test.ini:4: [server] max_body_size: bad size '1x'\n"
     "test.ini:5: [nope]: unknown section\n"
     "test.ini:9: [upstream] retries: '100' out of range (0..64)\n"
     "test.ini:13: [health] rise: '0' out of range (1..100)\n"
     "test.ini:14: expected 'key = value' or '[section]'\n"
     "test.ini: [upstream] servers: 127.0.0.1:9001 is listed twice\n"
     "test.ini: [tls] cert and key must be given together\n"
     "test.ini: [health] timeout: 1s must be below interval (1s)\n"},
    {"a refused servers line is not also missing", "[upstream]\nservers = 127.0.0.1\n", 0,
     "test.ini:2: [upstream] servers: bad server address '127.0.0.1': missing ':port'\n"},
};

static void test_bad(void **state)
{
    const struct bad_case *c = *state;
    char *errors = NULL;
    struct config *cfg = load_text(c->ini, c->len, &errors);

    assert_string_equal(errors, c->errors);
    assert_null(cfg);
    free(errors);
}

/* ------------------------------------------------------------------------
 * Main: fixed tests, then one test per table row
 */

/* Appends one test per row of <table>, named "<kind> '<row's field>'"; the
 * names are freed by main(). */
#define ADD_ROWS(kind, table, fn, field)                                                           \
    do {                                                                                           \
        for (size_t i_ = 0; i_ < sizeof(table) / sizeof((table)[0]); i_++) {                       \
            char *name_;                                                                           \
            if (asprintf(&name_, "%s '%s'", kind, (table)[i_].field) == -1)                        \
                return 1;                                                                          \
            tests[n++] = (struct CMUnitTest){name_, fn, NULL, NULL, &(table)[i_]};                 \
        }                                                                                          \
    } while (0)

#define ROWS(table) (sizeof(table) / sizeof((table)[0]))

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_cidr_match_everything_v4),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_long_comment_and_longest_line),
        cmocka_unit_test(test_ref_unref),
        cmocka_unit_test(test_errors_to_null),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_directory),
        cmocka_unit_test(test_shipped_files),
    };
    const size_t max = ROWS(fixed) + ROWS(duration_cases) + ROWS(size_cases) + ROWS(bool_cases) +
                       ROWS(addr_cases) + ROWS(cidr_cases) + ROWS(match_cases) + ROWS(bad_cases);
    struct CMUnitTest *tests = calloc(max, sizeof(*tests));
    size_t n = 0;
    int failed;

    if (tests == NULL)
        return 1;
    for (size_t i = 0; i < ROWS(fixed); i++)
        tests[n++] = fixed[i];
    ADD_ROWS("duration", duration_cases, test_parse_duration, text);
    ADD_ROWS("size", size_cases, test_parse_size, text);
    ADD_ROWS("bool", bool_cases, test_parse_bool, text);
    ADD_ROWS("addr", addr_cases, test_parse_addr, text);
    ADD_ROWS("cidr", cidr_cases, test_parse_cidr, text);
    ADD_ROWS("cidr_match", match_cases, test_cidr_match, addr);
    ADD_ROWS("bad file:", bad_cases, test_bad, name);
    failed = _cmocka_run_group_tests("config", tests, n, group_setup, group_teardown);
    for (size_t i = ROWS(fixed); i < n; i++)
        free((void *)(uintptr_t)tests[i].name);
    free(tests);
    return failed;
}
