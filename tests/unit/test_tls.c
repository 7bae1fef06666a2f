/*
 * test_tls: tls.c through tls.h.
 *
 * Certificates and keys are made at test time with OpenSSL's API in a
 * private temporary directory; configurations are ini files loaded with
 * config_load(). Handshakes run in memory: a client SSL and a server SSL
 * over a BIO pair, pumped until both are done, so SNI, ALPN, protocol
 * limits and resumption are checked without a socket.
 */
#include "tls.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"

#define DAY_S         (24 * 60 * 60)
#define HANDSHAKE_MAX 64 /* rounds of the in-memory pump before giving up */

static char test_dir[] = "/tmp/test_tls.XXXXXX";
static char start_dir[PATH_MAX];

/* ------------------------------------------------------------------------
 * Certificates
 */

/*
 * Writes a self-signed certificate for <cn> with subjectAltName <san>
 * (NULL: none, so the CN is the name) valid from <from_days> to <to_days>
 * from now, to <cert_file>, and its new P-256 key to <key_file> (the same
 * file: appended after the certificate).
 */
static void make_cert(const char *cert_file, const char *key_file, const char *cn, const char *san,
                      long from_days, long to_days)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *name;
    FILE *f;

    assert_non_null(pkey);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), (long)random() & 0xffffff), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from_days * DAY_S));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to_days * DAY_S));
    assert_int_equal(X509_set_pubkey(x, pkey), 1);
    name = X509_get_subject_name(x);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0),
        1);
    assert_int_equal(X509_set_issuer_name(x, name), 1);
    if (san != NULL) {
        X509V3_CTX ctx;
        X509_EXTENSION *ext;
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, san);
        assert_non_null(ext);
        assert_int_equal(X509_add_ext(x, ext, -1), 1);
        X509_EXTENSION_free(ext);
    }
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);

    f = fopen(cert_file, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    if (strcmp(cert_file, key_file) != 0) {
        assert_int_equal(fclose(f), 0);
        f = fopen(key_file, "w");
        assert_non_null(f);
    }
    assert_int_equal(PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(f), 0);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

/* Writes test.ini: the [tls] section with cert.pem/key.pem plus <tls>,
 * one server plus <upstream>, and loads it. */
static struct config *load_config(const char *tls, const char *upstream)
{
    FILE *f = fopen("test.ini", "w");
    char *errors = NULL;
    size_t size;
    FILE *mem;
    struct config *cfg;

    assert_non_null(f);
    fprintf(f,
            "[tls]\nlisten = 127.0.0.1:8443\ncert = cert.pem\nkey = key.pem\n%s\n"
            "[upstream]\nservers = 127.0.0.1:9001\n%s\n",
            tls, upstream);
    assert_int_equal(fclose(f), 0);
    mem = open_memstream(&errors, &size);
    assert_non_null(mem);
    cfg = config_load("test.ini", mem);
    assert_int_equal(fclose(mem), 0);
    assert_string_equal(errors, "");
    assert_non_null(cfg);
    free(errors);
    return cfg;
}

/* tls_server_new(), with its messages into *<errors> (caller frees). */
static struct tls_server *server_new(const struct config *cfg, char **errors)
{
    size_t size;
    FILE *mem = open_memstream(errors, &size);
    struct tls_server *t;

    assert_non_null(mem);
    t = tls_server_new(cfg, mem);
    assert_int_equal(fclose(mem), 0);
    return t;
}

static struct tls_server *server_ok(const struct config *cfg)
{
    char *errors = NULL;
    struct tls_server *t = server_new(cfg, &errors);

    assert_string_equal(errors, "");
    assert_non_null(t);
    free(errors);
    return t;
}

/* ------------------------------------------------------------------------
 * In-memory handshakes
 */

static bool want_more(SSL *ssl, int rc)
{
    int e = SSL_get_error(ssl, rc);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* Joins <client> and <server> with a BIO pair and runs the handshake.
 * 0 when both finished, -1 when either failed. */
static int handshake(SSL *client, SSL *server)
{
    BIO *cb, *sb;

    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    SSL_set_bio(client, cb, cb);
    SSL_set_bio(server, sb, sb);
    SSL_set_connect_state(client);
    SSL_set_accept_state(server);
    for (int i = 0; i < HANDSHAKE_MAX; i++) {
        int rc = SSL_do_handshake(client);
        int rs = SSL_do_handshake(server);
        if (rc == 1 && rs == 1)
            return 0;
        if ((rc != 1 && !want_more(client, rc)) || (rs != 1 && !want_more(server, rs))) {
            ERR_clear_error();
            return -1;
        }
    }
    return -1;
}

/* Sends a byte server to client, so the client reads the TLS 1.3
 * session tickets sent after the handshake. */
static void exchange(SSL *client, SSL *server)
{
    char c = 0;

    assert_int_equal(SSL_write(server, "x", 1), 1);
    assert_int_equal(SSL_read(client, &c, 1), 1);
    assert_int_equal(c, 'x');
}

/* A plain client: optional SNI <sni>, versions up to <max_version> (0:
 * any), ALPN list <alpn> (wire form, NULL: none). */
static SSL *client_new(SSL_CTX **ctx, const char *sni, int max_version, const char *alpn)
{
    SSL *ssl;

    *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(*ctx);
    if (max_version != 0) {
        SSL_CTX_set_min_proto_version(*ctx, TLS1_VERSION);
        assert_int_equal(SSL_CTX_set_max_proto_version(*ctx, max_version), 1);
        /* let the client even offer what a server at level 1 refuses */
        SSL_CTX_set_security_level(*ctx, 0);
        assert_int_equal(SSL_CTX_set_cipher_list(*ctx, "ALL:@SECLEVEL=0"), 1);
    }
    if (alpn != NULL)
        assert_int_equal(
            SSL_CTX_set_alpn_protos(*ctx, (const unsigned char *)alpn, (unsigned)strlen(alpn)), 0);
    ssl = SSL_new(*ctx);
    assert_non_null(ssl);
    if (sni != NULL) {
        char name[256];
        snprintf(name, sizeof(name), "%s", sni);
        assert_int_equal(SSL_set_tlsext_host_name(ssl, name), 1);
    }
    return ssl;
}

/* The CN of the certificate <client> was shown, into <buf>. */
static const char *peer_cn(SSL *client, char *buf, int size)
{
    X509 *peer = SSL_get1_peer_certificate(client);

    assert_non_null(peer);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, size) >
                0);
    X509_free(peer);
    return buf;
}

/* ------------------------------------------------------------------------
 * Fixtures
 */

static int group_setup(void **state)
{
    (void)state;
    if (getcwd(start_dir, sizeof(start_dir)) == NULL || mkdtemp(test_dir) == NULL ||
        chdir(test_dir) == -1 || mkdir("certs", 0700) == -1 || mkdir("empty", 0700) == -1)
        return -1;
    /* the [tls] cert, one for SNI by SAN, one by wildcard, one by CN only */
    make_cert("cert.pem", "key.pem", "localhost", "DNS:localhost,IP:127.0.0.1", 0, 365);
    make_cert("certs/other.pem", "certs/other.pem", "other.test", "DNS:other.test", 0, 365);
    make_cert("certs/wild.pem", "certs/wild.pem", "wild", "DNS:*.wild.test", 0, 365);
    make_cert("certs/cn-only.pem", "certs/cn-only.pem", "cn.test", NULL, 0, 365);
    /* not *.pem: ignored */
    make_cert("certs/notes.txt", "certs/notes.txt", "ignored.test", NULL, 0, 365);
    /* a key of no certificate here */
    make_cert("stray.pem", "stray-key.pem", "stray", NULL, 0, 365);
    make_cert("soon.pem", "soon-key.pem", "soon.test", "DNS:soon.test", -300, 10);
    make_cert("expired.pem", "expired-key.pem", "old.test", "DNS:old.test", -300, -2);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (chdir(start_dir) == -1)
        return -1;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Tests
 */

static void test_server_new(void **state)
{
    struct config *cfg = load_config("", "");
    struct tls_server *t = server_ok(cfg);
    SSL *ssl = tls_server_ssl(t);

    (void)state;
    assert_non_null(ssl);
    /* the SSL keeps the server alive past the last reference of ours */
    tls_server_unref(t);
    SSL_free(ssl);
    config_unref(cfg);
}

static void test_key_mismatch(void **state)
{
    struct config *cfg = load_config("", "");
    char *errors = NULL;

    (void)state;
    snprintf(cfg->tls_key, sizeof(cfg->tls_key), "stray-key.pem");
    assert_null(server_new(cfg, &errors));
    assert_string_equal(
        errors, "cert.pem: the private key in stray-key.pem does not match the certificate\n");
    free(errors);
    config_unref(cfg);
}

static void test_missing_files(void **state)
{
    struct config *cfg = load_config("", "");
    char *errors = NULL;

    (void)state;
    snprintf(cfg->tls_cert, sizeof(cfg->tls_cert), "nothing.pem");
    assert_null(server_new(cfg, &errors));
    assert_non_null(strstr(errors, "nothing.pem: cannot load the certificate chain: "));
    free(errors);
    config_unref(cfg);
}

static void test_bad_ocsp(void **state)
{
    struct config *cfg = load_config("ocsp = cert.pem", "");
    char *errors = NULL;

    (void)state;
    assert_null(server_new(cfg, &errors));
    assert_string_equal(errors, "cert.pem: not a DER OCSP response\n");
    free(errors);
    config_unref(cfg);
}

struct sni_case {
    const char *sni; /* NULL: none sent */
    const char *cn;  /* of the certificate the client must get */
};

static struct sni_case sni_cases[] = {
    {NULL, "localhost"},           {"localhost", "localhost"}, {"other.test", "other.test"},
    {"OTHER.Test", "other.test"},  {"a.wild.test", "wild"},    {"a.b.wild.test", "localhost"},
    {"wild.test", "localhost"},    {"cn.test", "cn.test"},     {"unknown.test", "localhost"},
    {"ignored.test", "localhost"},
};

static void test_sni(void **state)
{
    struct config *cfg = load_config("certs = certs", "");
    struct tls_server *t = server_ok(cfg);

    (void)state;
    for (size_t i = 0; i < sizeof(sni_cases) / sizeof(sni_cases[0]); i++) {
        SSL_CTX *ctx;
        SSL *client = client_new(&ctx, sni_cases[i].sni, 0, NULL);
        SSL *server = tls_server_ssl(t);
        char cn[256];

        assert_non_null(server);
        assert_int_equal(handshake(client, server), 0);
        assert_string_equal(peer_cn(client, cn, sizeof(cn)), sni_cases[i].cn);
        tls_ssl_free(client, true);
        tls_ssl_free(server, true);
        SSL_CTX_free(ctx);
    }
    tls_server_unref(t);
    config_unref(cfg);
}

static void test_alpn(void **state)
{
    static const char *const offers[] = {"\x02h2\x08http/1.1", "\x08http/1.1", "\x02h2", NULL};
    static const char *const picked[] = {"http/1.1", "http/1.1", "", ""};
    struct config *cfg = load_config("", "");
    struct tls_server *t = server_ok(cfg);

    (void)state;
    for (size_t i = 0; i < sizeof(offers) / sizeof(offers[0]); i++) {
        SSL_CTX *ctx;
        SSL *client = client_new(&ctx, "localhost", 0, offers[i]);
        SSL *server = tls_server_ssl(t);
        const unsigned char *proto = NULL;
        unsigned len = 0;

        assert_int_equal(handshake(client, server), 0);
        SSL_get0_alpn_selected(client, &proto, &len);
        assert_int_equal(len, strlen(picked[i]));
        if (len > 0)
            assert_memory_equal(proto, picked[i], len);
        tls_ssl_free(client, true);
        tls_ssl_free(server, true);
        SSL_CTX_free(ctx);
    }
    tls_server_unref(t);
    config_unref(cfg);
}

/* Runs one handshake of a client limited to <max_version> against <cfg>. */
static int handshake_version(const struct config *cfg, int max_version, int *version)
{
    struct tls_server *t = server_ok(cfg);
    SSL_CTX *ctx;
    SSL *client = client_new(&ctx, "localhost", max_version, NULL);
    SSL *server = tls_server_ssl(t);
    int rc = handshake(client, server);

    *version = SSL_version(server);
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);
    SSL_CTX_free(ctx);
    tls_server_unref(t);
    return rc;
}

static void test_protocols(void **state)
{
    struct config *both = load_config("", "");
    struct config *only13 = load_config("protocols = TLSv1.3", "");
    struct config *only12 = load_config("protocols = TLSv1.2", "");
    int version = 0;

    (void)state;
    assert_int_equal(handshake_version(both, TLS1_1_VERSION, &version), -1);
    assert_int_equal(handshake_version(both, TLS1_VERSION, &version), -1);
    assert_int_equal(handshake_version(both, TLS1_2_VERSION, &version), 0);
    assert_int_equal(version, TLS1_2_VERSION);
    assert_int_equal(handshake_version(both, 0, &version), 0);
    assert_int_equal(version, TLS1_3_VERSION);
    assert_int_equal(handshake_version(only13, TLS1_2_VERSION, &version), -1);
    assert_int_equal(handshake_version(only12, 0, &version), 0);
    assert_int_equal(version, TLS1_2_VERSION);
    config_unref(both);
    config_unref(only13);
    config_unref(only12);
}

/* Two handshakes of the same client: whether the second resumed. <sni2>
 * is the name of the second (certificates may differ). */
static bool resumes(struct tls_server *t, int max_version, const char *sni1, const char *sni2)
{
    SSL_CTX *ctx;
    SSL *client = client_new(&ctx, sni1, 0, NULL);
    SSL *server = tls_server_ssl(t);
    SSL_SESSION *session;
    bool reused;

    if (max_version != 0)
        assert_int_equal(SSL_set_max_proto_version(client, max_version), 1);
    assert_int_equal(handshake(client, server), 0);
    assert_false(SSL_session_reused(server));
    exchange(client, server);
    session = SSL_get1_session(client);
    assert_non_null(session);
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);

    client = SSL_new(ctx);
    assert_non_null(client);
    if (max_version != 0)
        assert_int_equal(SSL_set_max_proto_version(client, max_version), 1);
    if (sni2 != NULL) {
        char name[256];
        snprintf(name, sizeof(name), "%s", sni2);
        assert_int_equal(SSL_set_tlsext_host_name(client, name), 1);
    }
    assert_int_equal(SSL_set_session(client, session), 1);
    server = tls_server_ssl(t);
    assert_int_equal(handshake(client, server), 0);
    reused = SSL_session_reused(server);
    assert_int_equal(SSL_session_reused(client), reused);
    tls_count_handshake(server);
    SSL_SESSION_free(session);
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);
    SSL_CTX_free(ctx);
    return reused;
}

static void test_resumption(void **state)
{
    struct config *cfg = load_config("certs = certs", "");
    struct config *no_tickets = load_config("session_tickets = no", "");
    struct tls_server *t = server_ok(cfg);
    struct tls_server *nt = server_ok(no_tickets);
    uint64_t before = __atomic_load_n(&tls_stats()->resumed, __ATOMIC_RELAXED);

    (void)state;
    /* tickets, TLS 1.3 and 1.2 */
    assert_true(resumes(t, 0, "localhost", "localhost"));
    assert_true(resumes(t, TLS1_2_VERSION, "localhost", "localhost"));
    /* one ticket key ring for every certificate */
    assert_true(resumes(t, 0, "other.test", "other.test"));
    assert_true(resumes(t, TLS1_2_VERSION, "a.wild.test", "a.wild.test"));
    /* no tickets: the server's session cache */
    assert_true(resumes(nt, 0, "localhost", "localhost"));
    assert_true(resumes(nt, TLS1_2_VERSION, "localhost", "localhost"));
    assert_int_equal(__atomic_load_n(&tls_stats()->resumed, __ATOMIC_RELAXED), before + 6);
    /* a session of another server object (another key ring) does not */
    tls_server_unref(nt);
    tls_server_unref(t);
    config_unref(cfg);
    config_unref(no_tickets);
}

static void test_other_server_does_not_resume(void **state)
{
    struct config *cfg = load_config("", "");
    struct tls_server *a = server_ok(cfg), *b = server_ok(cfg);
    SSL_CTX *ctx;
    SSL *client = client_new(&ctx, "localhost", 0, NULL);
    SSL *server = tls_server_ssl(a);
    SSL_SESSION *session;

    (void)state;
    assert_int_equal(handshake(client, server), 0);
    exchange(client, server);
    session = SSL_get1_session(client);
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);
    client = SSL_new(ctx);
    assert_int_equal(SSL_set_session(client, session), 1);
    server = tls_server_ssl(b);
    assert_int_equal(handshake(client, server), 0);
    assert_false(SSL_session_reused(server));
    SSL_SESSION_free(session);
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);
    SSL_CTX_free(ctx);
    tls_server_unref(a);
    tls_server_unref(b);
    config_unref(cfg);
}

/* tls_check() on <cfg>; its output into *<out> (caller frees). */
static int check(const struct config *cfg, char **out)
{
    size_t size;
    FILE *mem = open_memstream(out, &size);
    int rc;

    assert_non_null(mem);
    rc = tls_check(cfg, mem);
    assert_int_equal(fclose(mem), 0);
    return rc;
}

static void test_check(void **state)
{
    struct config *cfg = load_config("certs = certs", "");
    char *out = NULL;

    (void)state;
    assert_int_equal(check(cfg, &out), 0);
    /* one line per certificate, the [tls] one first, then by file name */
    assert_non_null(strstr(out, "cert.pem: localhost, IP:127.0.0.1; not after "));
    assert_non_null(strstr(out, "\ncerts/cn-only.pem: cn.test; not after "));
    assert_non_null(strstr(out, "\ncerts/other.pem: other.test; not after "));
    assert_non_null(strstr(out, "\ncerts/wild.pem: *.wild.test; not after "));
    /* made a moment ago for 365 days: 365 days, or 364 and a bit */
    assert_true(strstr(out, "; 365 days left\n") != NULL ||
                strstr(out, "; 364 days left\n") != NULL);
    assert_null(strstr(out, "warning"));
    assert_null(strstr(out, "ignored"));
    free(out);

    snprintf(cfg->tls_cert, sizeof(cfg->tls_cert), "soon.pem");
    snprintf(cfg->tls_key, sizeof(cfg->tls_key), "soon-key.pem");
    snprintf(cfg->tls_certs, sizeof(cfg->tls_certs), "empty");
    assert_int_equal(check(cfg, &out), 0);
    assert_non_null(strstr(out, "soon.pem: soon.test; not after "));
    assert_true(strstr(out, "; 10 days left; warning: fewer than 30 days left\n") != NULL ||
                strstr(out, "; 9 days left; warning: fewer than 30 days left\n") != NULL);
    free(out);

    snprintf(cfg->tls_cert, sizeof(cfg->tls_cert), "expired.pem");
    snprintf(cfg->tls_key, sizeof(cfg->tls_key), "expired-key.pem");
    assert_int_equal(check(cfg, &out), -1);
    assert_non_null(strstr(out, "expired.pem: old.test; not after "));
    assert_non_null(strstr(out, "; error: expired 2 days ago\n"));
    free(out);

    snprintf(cfg->tls_key, sizeof(cfg->tls_key), "stray-key.pem");
    assert_int_equal(check(cfg, &out), -1);
    assert_string_equal(out, "expired.pem: the private key in stray-key.pem does not match the "
                             "certificate\n");
    free(out);
    config_unref(cfg);
}

static void test_check_client(void **state)
{
    struct config *cfg = load_config("", "tls = yes\ntls_ca = cert.pem");
    char *out = NULL;

    (void)state;
    assert_int_equal(check(cfg, &out), 0);
    free(out);
    /* a CA file that holds no certificate */
    snprintf(cfg->upstream_tls_ca, sizeof(cfg->upstream_tls_ca), "key.pem");
    assert_int_equal(check(cfg, &out), -1);
    assert_non_null(strstr(out, "key.pem: [upstream] tls_ca: cannot load: "));
    free(out);
    config_unref(cfg);
}

/* Handshakes of tls_client_ssl(<host>) against the [tls] server. */
static int client_handshake(struct tls_client *c, struct tls_server *t, const char *host,
                            bool *reused, char *cn, int cn_size)
{
    SSL *client = tls_client_ssl(c, host);
    SSL *server = tls_server_ssl(t);
    int rc;

    assert_non_null(client);
    rc = handshake(client, server);
    if (rc == 0) {
        const unsigned char *proto = NULL;
        unsigned len = 0;
        exchange(client, server); /* the client keeps the tickets */
        *reused = SSL_session_reused(server);
        peer_cn(client, cn, cn_size);
        SSL_get0_alpn_selected(client, &proto, &len);
        assert_int_equal(len, 8);
        assert_memory_equal(proto, "http/1.1", 8);
    }
    tls_ssl_free(client, true);
    tls_ssl_free(server, true);
    return rc;
}

static void test_client(void **state)
{
    struct config *cfg = load_config("certs = certs", "tls = yes\ntls_ca = cert.pem");
    struct config *sni = load_config("certs = certs", "tls = yes\ntls_verify = no\n"
                                                      "tls_sni = other.test");
    struct tls_server *t = server_ok(cfg);
    struct tls_client *c = tls_client_new(cfg, stderr);
    struct tls_client *s = tls_client_new(sni, stderr);
    bool reused = true;
    char cn[256];

    (void)state;
    assert_non_null(c);
    assert_non_null(s);
    /* an IP address: no SNI, checked against the IP entry */
    assert_int_equal(client_handshake(c, t, "127.0.0.1:8443", &reused, cn, sizeof(cn)), 0);
    assert_false(reused);
    assert_string_equal(cn, "localhost");
    /* the same clone again: its session resumes */
    assert_int_equal(client_handshake(c, t, "127.0.0.1:8443", &reused, cn, sizeof(cn)), 0);
    assert_true(reused);
    /* a name: sent as SNI and checked */
    assert_int_equal(client_handshake(c, t, "localhost:8443", &reused, cn, sizeof(cn)), 0);
    assert_false(reused);
    assert_string_equal(cn, "localhost");
    /* a name the certificate it gets does not carry, or one of another CA */
    assert_int_equal(client_handshake(c, t, "127.0.0.2:8443", &reused, cn, sizeof(cn)), -1);
    assert_int_equal(client_handshake(c, t, "other.test:8443", &reused, cn, sizeof(cn)), -1);
    /* tls_sni replaces the name; tls_verify = no accepts any certificate */
    assert_int_equal(client_handshake(s, t, "127.0.0.1:8443", &reused, cn, sizeof(cn)), 0);
    assert_string_equal(cn, "other.test");

    /* SSLs keep their client alive */
    SSL *orphan = tls_client_ssl(c, "[::1]:8443");
    assert_non_null(orphan);
    tls_client_unref(c);
    tls_client_unref(s);
    tls_ssl_free(orphan, false);
    tls_server_unref(t);
    config_unref(cfg);
    config_unref(sni);
}

struct plain_case {
    const char *bytes;
    size_t len;
    bool plaintext;
};

static struct plain_case plain_cases[] = {
    {"GET / HTTP/1.1\r\n", 16, true},
    {"POST /x", 7, true},
    {"OPTIONS * HTTP/1.1", 18, true},
    {"GE", 2, true},
    {"\x16\x03\x01\x02\x00", 5, false},
    {"\x80\x2e\x01", 3, false},
    {"get / HTTP/1.1", 14, false},
    {" GET", 4, false},
    {"GET\r\n", 5, false},
    {"", 0, false},
    {"ABCDEFGHIJKLMNOPQRSTUVWXYZ /", 28, false},
};

static void test_plaintext(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(plain_cases) / sizeof(plain_cases[0]); i++) {
        const struct plain_case *c = &plain_cases[i];
        if (tls_looks_like_plaintext((const unsigned char *)c->bytes, c->len) != c->plaintext)
            fail_msg("case %zu '%s': expected %d", i, c->bytes, c->plaintext);
    }
}

static void test_counters(void **state)
{
    struct tls_stats before = *tls_stats(), *now = tls_stats();

    (void)state;
    tls_count_failure(false);
    tls_count_failure(true);
    tls_count_timeout();
    assert_int_equal(now->failures, before.failures + 2);
    assert_int_equal(now->plaintext, before.plaintext + 1);
    assert_int_equal(now->timeouts, before.timeouts + 1);
}

int main(void)
{
    static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_new),
        cmocka_unit_test(test_key_mismatch),
        cmocka_unit_test(test_missing_files),
        cmocka_unit_test(test_bad_ocsp),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_alpn),
        cmocka_unit_test(test_protocols),
        cmocka_unit_test(test_resumption),
        cmocka_unit_test(test_other_server_does_not_resume),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_check_client),
        cmocka_unit_test(test_client),
        cmocka_unit_test(test_plaintext),
        cmocka_unit_test(test_counters),
    };

    return cmocka_run_group_tests_name("tls", tests, group_setup, group_teardown);
}
