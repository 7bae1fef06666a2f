/*
 * tls: the OpenSSL 3 contexts of TLS termination and of TLS to the clones.
 *
 * Owns every SSL_CTX it builds, the session-ticket key ring of each
 * struct tls_server, the OCSP response it staples, the client session
 * slots of each struct tls_client, and the process-wide handshake
 * counters. Borrows the struct config it builds from, only during the
 * call. Never reads or writes a socket: the stream module drives the SSL
 * objects made here.
 *
 * Threads: a tls_server or tls_client is built by one thread, then shared
 * read-only by every worker; its contexts are never changed after the
 * build. The only state written later is guarded: the ticket key ring
 * (rotated lazily by whichever worker issues a ticket, under ticket_lock),
 * the client session slots (under lock), the reference counts and the
 * counters (atomics). Every SSL handed out holds a reference on its
 * tls_server or tls_client in its ex data, dropped when the SSL is freed,
 * so the callbacks below always find their object alive, whatever reloads
 * happened since.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "config.h"

#define TLS_SESSION_CACHE_SIZE 20480              /* sessions in the server's cache */
#define TLS_SESSION_TIMEOUT_S  7200               /* lifetime of a session and of its ticket */
#define TLS_SID_CONTEXT        "clonegate"        /* same on every context: resumes whatever cert */
#define TLS_WARN_DAYS          30                 /* tls_check() warns below this many days left */
#define TLS_OCSP_MAX           (64 * 1024)        /* bytes; a larger file is refused */
#define TLS_CLIENT_SESSIONS    CONFIG_MAX_SERVERS /* client session slots: one per clone */
#define TLS_HOST_MAX           256                /* a clone's address text or name, plus NUL */
#define TLS_REASON_MAX         256                /* one OpenSSL error text */
#define TLS_TICKET_NAME_LEN    16                 /* fixed by OpenSSL */
#define TLS_TICKET_AES_LEN     32                 /* AES-256 */
#define TLS_TICKET_HMAC_LEN    32                 /* HMAC-SHA256 key */
#define TLS_ALPN_HTTP11        "\x08http/1.1"     /* ALPN wire form: length, name */

/* A ticket encrypted with a key lives no longer than the ring keeps it. */
_Static_assert(TLS_SESSION_TIMEOUT_S <= (TLS_TICKET_KEYS - 1) * TLS_TICKET_ROTATE_S,
               "a session ticket must not outlive the key that decrypts it");

/* ------------------------------------------------------------------------
 * Objects
 */

struct ticket_key {
    unsigned char name[TLS_TICKET_NAME_LEN]; /* random; tells tickets' keys apart */
    unsigned char aes[TLS_TICKET_AES_LEN];   /* random */
    unsigned char hmac[TLS_TICKET_HMAC_LEN]; /* random */
    time_t created;                          /* CLOCK_MONOTONIC s */
};

/* A name a certificate is valid for. */
struct cert_name {
    char *text; /* owned; lower case; "*.example.com" for a wildcard */
    bool ip;    /* an IP address entry: shown by tls_check(), never matched to SNI */
};

struct tls_cert {
    SSL_CTX *ctx;            /* owned; SSL_CTX_free() in server_free() */
    char *file;              /* owned; the certificate file, for messages */
    struct cert_name *names; /* owned; subjectAltName DNS and IP entries, else CN */
    size_t name_count;       /* entries at names */
};

struct tls_server {
    int refs;                    /* atomic; server_free() at zero */
    struct tls_cert *certs;      /* owned; [0] is [tls] cert/key, then tls.certs sorted */
    size_t cert_count;           /* entries at certs in use */
    size_t cert_cap;             /* entries allocated at certs */
    EVP_CIPHER *ticket_cipher;   /* owned; AES-256-CBC, fetched once */
    unsigned char *ocsp;         /* owned; DER response stapled for certs[0]; NULL = none */
    size_t ocsp_len;             /* bytes at ocsp */
    pthread_mutex_t ticket_lock; /* guards tickets and ticket_count */
    struct ticket_key tickets[TLS_TICKET_KEYS]; /* [0] encrypts, all decrypt */
    unsigned ticket_count;                      /* keys in use at tickets */
};

struct client_slot {
    char key[TLS_HOST_MAX]; /* the <host> given to tls_client_ssl(); "" = free */
    SSL_SESSION *session;   /* owned reference; the last one that host gave */
};

struct tls_client {
    int refs;               /* atomic; client_free() at zero */
    SSL_CTX *ctx;           /* owned */
    bool verify;            /* [upstream] tls_verify */
    char sni[TLS_HOST_MAX]; /* [upstream] tls_sni; "" = each server's host */
    pthread_mutex_t lock;   /* guards slots and next_slot */
    struct client_slot slots[TLS_CLIENT_SESSIONS];
    unsigned next_slot; /* the slot a new host takes when all are used */
};

/* What a client SSL carries in its ex data: freed with the SSL. */
struct client_link {
    struct tls_client *t;   /* referenced */
    char key[TLS_HOST_MAX]; /* the slot key of the host */
};

static struct tls_stats stats; /* atomics; any thread */

static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static int server_index = -1; /* SSL ex data: struct tls_server *, referenced */
static int client_index = -1; /* SSL ex data: struct client_link *, owned */

static void server_free(struct tls_server *t);
static void client_free(struct tls_client *t);

/* ------------------------------------------------------------------------
 * Helpers
 */

static void report(FILE *errors, const char *file, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "FILE: reason" to <errors> (may be NULL). */
static void report(FILE *errors, const char *file, const char *fmt, ...)
{
    va_list ap;

    if (errors == NULL)
        return;
    fprintf(errors, "%s: ", file);
    va_start(ap, fmt);
    vfprintf(errors, fmt, ap);
    va_end(ap);
    fputc('\n', errors);
}

/* The reason of the oldest OpenSSL error of this thread, into <buf>; the
 * queue is emptied. */
static const char *ssl_reason(char *buf, size_t size)
{
    unsigned long e = ERR_get_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

    if (r != NULL)
        snprintf(buf, size, "%s", r);
    else if (e != 0)
        snprintf(buf, size, "OpenSSL error %lx", e);
    else
        snprintf(buf, size, "unknown error");
    ERR_clear_error();
    return buf;
}

static time_t now_monotonic(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void on_ssl_free_server(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    tls_server_unref(ptr);
}

static void on_ssl_free_client(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                               void *argp)
{
    struct client_link *l = ptr;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (l == NULL)
        return;
    tls_client_unref(l->t);
    free(l);
}

static void make_indexes(void)
{
    server_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_free_server);
    client_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, on_ssl_free_client);
}

static int ensure_indexes(void)
{
    pthread_once(&index_once, make_indexes);
    return server_index >= 0 && client_index >= 0 ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Counters
 */

struct tls_stats *tls_stats(void)
{
    return &stats;
}

void tls_count_handshake(SSL *ssl)
{
    __atomic_add_fetch(&stats.handshakes, 1, __ATOMIC_RELAXED);
    if (SSL_session_reused(ssl))
        __atomic_add_fetch(&stats.resumed, 1, __ATOMIC_RELAXED);
}

void tls_count_failure(bool plaintext)
{
    __atomic_add_fetch(&stats.failures, 1, __ATOMIC_RELAXED);
    if (plaintext)
        __atomic_add_fetch(&stats.plaintext, 1, __ATOMIC_RELAXED);
}

void tls_count_timeout(void)
{
    __atomic_add_fetch(&stats.timeouts, 1, __ATOMIC_RELAXED);
}

bool tls_looks_like_plaintext(const unsigned char *first_bytes, size_t n)
{
    /* The longest method we could be sent, "OPTIONS"/"CONNECT", and a
     * margin for extension methods. */
    static const size_t method_max = 16;
    size_t i;

    if (n == 0 || first_bytes[0] == 0x16)
        return false;
    for (i = 0; i < n && i <= method_max; i++) {
        unsigned char c = first_bytes[i];
        if (c == ' ')
            return i > 0;
        if (c < 'A' || c > 'Z')
            return false;
    }
    return i == n; /* all upper case so far: a method being sent */
}

/* ------------------------------------------------------------------------
 * Session tickets
 */

static int ticket_key_fill(struct ticket_key *k, time_t now)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
        return -1;
    k->created = now;
    return 0;
}

/* Copies the key that encrypts new tickets into *<out>, making a new one
 * first when the newest is TLS_TICKET_ROTATE_S old. 0 or -1. */
static int ticket_current(struct tls_server *t, struct ticket_key *out)
{
    time_t now = now_monotonic();
    int rc = 0;

    pthread_mutex_lock(&t->ticket_lock);
    if (t->ticket_count == 0 || now - t->tickets[0].created >= TLS_TICKET_ROTATE_S) {
        struct ticket_key fresh;
        if (ticket_key_fill(&fresh, now) == 0) {
            /* the oldest falls off the end: tickets it made no longer resume */
            memmove(&t->tickets[1], &t->tickets[0], sizeof(t->tickets[0]) * (TLS_TICKET_KEYS - 1));
            t->tickets[0] = fresh;
            if (t->ticket_count < TLS_TICKET_KEYS)
                t->ticket_count++;
        }
        OPENSSL_cleanse(&fresh, sizeof(fresh));
    }
    if (t->ticket_count > 0)
        *out = t->tickets[0];
    else
        rc = -1;
    pthread_mutex_unlock(&t->ticket_lock);
    return rc;
}

/* Copies the key named <name> into *<out>; *<newest>: it is the one new
 * tickets are made with. 0, or -1 when the ring no longer has it. */
static int ticket_find(struct tls_server *t, const unsigned char *name, struct ticket_key *out,
                       bool *newest)
{
    int rc = -1;

    pthread_mutex_lock(&t->ticket_lock);
    for (unsigned i = 0; i < t->ticket_count; i++) {
        if (memcmp(t->tickets[i].name, name, TLS_TICKET_NAME_LEN) == 0) {
            *out = t->tickets[i];
            *newest = i == 0 && now_monotonic() - t->tickets[0].created < TLS_TICKET_ROTATE_S;
            rc = 0;
            break;
        }
    }
    pthread_mutex_unlock(&t->ticket_lock);
    return rc;
}

/* OpenSSL's ticket key callback: 1 = key set, 2 = decrypted but renew
 * the ticket, 0 = no such key (a full handshake), -1 = failure. */
static int tls_on_ticket_key(SSL *ssl, unsigned char *key_name, unsigned char *iv,
                             EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    struct tls_server *t = SSL_get_ex_data(ssl, server_index);
    char digest[] = "SHA256";
    struct ticket_key key;
    int rc = 1;

    if (t == NULL || t->ticket_cipher == NULL)
        return -1;
    if (enc) {
        int iv_len = EVP_CIPHER_get_iv_length(t->ticket_cipher);
        if (ticket_current(t, &key) == -1)
            return -1;
        if (iv_len <= 0 || iv_len > EVP_MAX_IV_LENGTH || RAND_bytes(iv, iv_len) != 1 ||
            EVP_EncryptInit_ex2(cctx, t->ticket_cipher, key.aes, iv, NULL) != 1) {
            rc = -1;
            goto out;
        }
        memcpy(key_name, key.name, TLS_TICKET_NAME_LEN);
    } else {
        bool newest = false;
        if (ticket_find(t, key_name, &key, &newest) == -1)
            return 0;
        if (EVP_DecryptInit_ex2(cctx, t->ticket_cipher, key.aes, iv, NULL) != 1) {
            rc = -1;
            goto out;
        }
        /* TLS 1.3 clients use a ticket once (RFC 8446 C.4): without a
         * fresh one after each resumption, every other handshake is full */
        rc = newest && SSL_version(ssl) < TLS1_3_VERSION ? 1 : 2;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof(key.hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        rc = -1;
out:
    OPENSSL_cleanse(&key, sizeof(key));
    return rc;
}

/* ------------------------------------------------------------------------
 * Server callbacks: ALPN, SNI, OCSP
 */

/* Picks "http/1.1" from the client's list, or declines ALPN. */
static int tls_on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const char want[] = "http/1.1";
    unsigned i = 0;

    (void)ssl;
    (void)arg;
    while (i < inlen) {
        unsigned len = in[i];
        if (len == 0 || i + 1 + len > inlen)
            break;
        if (len == sizeof(want) - 1 && memcmp(in + i + 1, want, len) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* The certificate for <host>: exact names first, then "*." wildcards
 * covering exactly one more label. -1 when none matches. */
static long find_cert(const struct tls_server *t, const char *host)
{
    const char *dot = strchr(host, '.');

    for (size_t i = 0; i < t->cert_count; i++)
        for (size_t j = 0; j < t->certs[i].name_count; j++) {
            const struct cert_name *n = &t->certs[i].names[j];
            if (!n->ip && strcasecmp(n->text, host) == 0)
                return (long)i;
        }
    if (dot == NULL || dot == host)
        return -1;
    for (size_t i = 0; i < t->cert_count; i++)
        for (size_t j = 0; j < t->certs[i].name_count; j++) {
            const struct cert_name *n = &t->certs[i].names[j];
            if (!n->ip && n->text[0] == '*' && n->text[1] == '.' &&
                strcasecmp(n->text + 1, dot) == 0)
                return (long)i;
        }
    return -1;
}

/* Moves the handshake to the context whose certificate names the SNI
 * host; no SNI or no match keeps the first. */
static int tls_on_servername(SSL *ssl, int *alert, void *arg)
{
    struct tls_server *t = SSL_get_ex_data(ssl, server_index);
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    long i;

    (void)alert;
    (void)arg;
    if (t == NULL || host == NULL)
        return SSL_TLSEXT_ERR_OK;
    i = find_cert(t, host);
    if (i > 0 && SSL_set_SSL_CTX(ssl, t->certs[i].ctx) == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

/* Staples the OCSP response of the [tls] certificate. Set on certs[0]'s
 * context only: OpenSSL asks the context SNI chose. */
static int tls_on_status(SSL *ssl, void *arg)
{
    struct tls_server *t = SSL_get_ex_data(ssl, server_index);
    unsigned char *copy;

    (void)arg;
    if (t == NULL || t->ocsp == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    copy = OPENSSL_malloc(t->ocsp_len); /* OpenSSL frees it with the SSL */
    if (copy == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    memcpy(copy, t->ocsp, t->ocsp_len);
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)t->ocsp_len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ------------------------------------------------------------------------
 * Loading certificates
 */

static int add_name(struct tls_cert *c, const char *text, size_t len, bool ip)
{
    struct cert_name *names = realloc(c->names, (c->name_count + 1) * sizeof(*names));
    char *copy;

    if (names == NULL)
        return -1;
    c->names = names;
    copy = strndup(text, len);
    if (copy == NULL)
        return -1;
    for (char *p = copy; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    c->names[c->name_count].text = copy;
    c->names[c->name_count].ip = ip;
    c->name_count++;
    return 0;
}

/* The names of <leaf>: subjectAltName DNS and IP entries, else the CN. */
static int collect_names(struct tls_cert *c, X509 *leaf)
{
    GENERAL_NAMES *san = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    bool dns = false;
    int rc = 0;

    for (int i = 0; san != NULL && i < sk_GENERAL_NAME_num(san) && rc == 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        if (g->type == GEN_DNS) {
            const char *s = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
            size_t len = (size_t)ASN1_STRING_length(g->d.dNSName);
            if (memchr(s, '\0', len) != NULL)
                continue; /* an embedded NUL would match a shorter name */
            rc = add_name(c, s, len, false);
            dns = true;
        } else if (g->type == GEN_IPADD) {
            char text[INET6_ADDRSTRLEN];
            int len = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
            if ((len == 4 && inet_ntop(AF_INET, a, text, sizeof(text)) != NULL) ||
                (len == 16 && inet_ntop(AF_INET6, a, text, sizeof(text)) != NULL))
                rc = add_name(c, text, strlen(text), true);
        }
    }
    GENERAL_NAMES_free(san);
    if (rc == 0 && !dns) {
        const X509_NAME *subject = X509_get_subject_name(leaf);
        int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
        unsigned char *cn = NULL;
        int len = at >= 0 ? ASN1_STRING_to_UTF8(
                                &cn, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)))
                          : -1;
        if (len > 0 && memchr(cn, '\0', (size_t)len) == NULL)
            rc = add_name(c, (const char *)cn, (size_t)len, false);
        OPENSSL_free(cn);
    }
    return rc;
}

/* "TLSv1.2 TLSv1.3" (checked by config) to the lowest and highest. */
static void protocol_range(const char *text, int *min, int *max)
{
    bool v12 = strcasestr(text, "TLSv1.2") != NULL, v13 = strcasestr(text, "TLSv1.3") != NULL;

    *min = v12 || !v13 ? TLS1_2_VERSION : TLS1_3_VERSION;
    *max = v13 || !v12 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

/* A server context with every setting of [tls] but no certificate. */
static SSL_CTX *server_ctx_new(const struct config *cfg, FILE *errors)
{
    char why[TLS_REASON_MAX];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    int min, max;

    if (ctx == NULL) {
        report(errors, cfg->path, "cannot make a TLS context: %s", ssl_reason(why, sizeof(why)));
        return NULL;
    }
    protocol_range(cfg->tls_protocols, &min, &max);
    if (SSL_CTX_set_min_proto_version(ctx, min) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, max) != 1) {
        report(errors, cfg->path, "[tls] protocols: refused: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        report(errors, cfg->path, "[tls] ciphers: refused: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1) {
        report(errors, cfg->path, "[tls] ciphersuites: refused: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
                                 (cfg->tls_session_tickets ? 0 : SSL_OP_NO_TICKET));
    /* No SSL_MODE_RELEASE_BUFFERS: it frees and reallocates the 17 KiB
     * record buffers around every record, two allocations per request on a
     * keep-alive connection; each busy connection keeps its ~34 KiB instead,
     * and conn.c gives them back once it has been idle for a second.
     * No auto chain: the context's store is empty, so building a chain on
     * each full handshake only ever found the leaf; a chain file's
     * intermediates are sent as loaded. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_NO_AUTO_CHAIN);
    /* whole socket reads, not one per record header and body: stream.c
     * looks at SSL_has_pending() for records read ahead */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* one cache for every context: the handshake keeps the first
     * context's cache even when SNI moves it to another certificate */
    if (SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SID_CONTEXT,
                                       sizeof(TLS_SID_CONTEXT) - 1) != 1) {
        report(errors, cfg->path, "cannot set the session context: %s",
               ssl_reason(why, sizeof(why)));
        goto fail;
    }
    /* with tickets the client keeps its session: no server-side store per
     * handshake (a lock and an allocation each); without, the cache does */
    SSL_CTX_set_session_cache_mode(
        ctx,
        SSL_SESS_CACHE_SERVER | (cfg->tls_session_tickets ? SSL_SESS_CACHE_NO_INTERNAL_STORE : 0));
    SSL_CTX_sess_set_cache_size(ctx, TLS_SESSION_CACHE_SIZE);
    SSL_CTX_set_timeout(ctx, TLS_SESSION_TIMEOUT_S);
    /* one TLS 1.3 ticket per handshake (OpenSSL sends two by default):
     * a client resumes with one, and each costs an encryption */
    SSL_CTX_set_num_tickets(ctx, 1);
    if (cfg->tls_session_tickets &&
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, tls_on_ticket_key) != 1) {
        report(errors, cfg->path, "cannot set the ticket keys: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_on_alpn, NULL);
    return ctx;

fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Reads the private key of <key_file> (PEM; other blocks are skipped). */
static EVP_PKEY *read_key(const char *key_file, FILE *errors)
{
    char why[TLS_REASON_MAX];
    BIO *bio = BIO_new_file(key_file, "r");
    EVP_PKEY *pkey = NULL;

    if (bio == NULL) {
        report(errors, key_file, "cannot open: %s", strerror(errno));
        ERR_clear_error();
        return NULL;
    }
    pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pkey == NULL)
        report(errors, key_file, "no private key: %s", ssl_reason(why, sizeof(why)));
    return pkey;
}

/* Adds a certificate: the chain in <cert_file>, the key in <key_file>
 * (the same file for tls.certs). Every problem goes to <errors>. */
static int add_cert(struct tls_server *t, const struct config *cfg, const char *cert_file,
                    const char *key_file, FILE *errors)
{
    char why[TLS_REASON_MAX];
    struct tls_cert c = {0};
    EVP_PKEY *pkey = NULL;
    X509 *leaf;

    ERR_clear_error();
    c.ctx = server_ctx_new(cfg, errors);
    if (c.ctx == NULL)
        return -1;
    c.file = strdup(cert_file);
    if (c.file == NULL) {
        report(errors, cert_file, "out of memory");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(c.ctx, cert_file) != 1) {
        report(errors, cert_file, "cannot load the certificate chain: %s",
               ssl_reason(why, sizeof(why)));
        goto fail;
    }
    leaf = SSL_CTX_get0_certificate(c.ctx);
    pkey = read_key(key_file, errors);
    if (pkey == NULL)
        goto fail;
    if (X509_check_private_key(leaf, pkey) != 1) {
        ERR_clear_error();
        if (strcmp(cert_file, key_file) == 0)
            report(errors, cert_file, "the private key does not match the certificate");
        else
            report(errors, cert_file, "the private key in %s does not match the certificate",
                   key_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey(c.ctx, pkey) != 1 || SSL_CTX_check_private_key(c.ctx) != 1) {
        report(errors, cert_file, "cannot use the private key: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    EVP_PKEY_free(pkey);
    pkey = NULL;
    if (collect_names(&c, leaf) == -1) {
        report(errors, cert_file, "out of memory");
        goto fail;
    }
    if (t->cert_count == t->cert_cap) {
        size_t cap = t->cert_cap == 0 ? 4 : t->cert_cap * 2;
        struct tls_cert *certs = realloc(t->certs, cap * sizeof(*certs));
        if (certs == NULL) {
            report(errors, cert_file, "out of memory");
            goto fail;
        }
        t->certs = certs;
        t->cert_cap = cap;
    }
    t->certs[t->cert_count++] = c;
    return 0;

fail:
    EVP_PKEY_free(pkey);
    SSL_CTX_free(c.ctx);
    free(c.file);
    for (size_t i = 0; i < c.name_count; i++)
        free(c.names[i].text);
    free(c.names);
    return -1;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every "*.pem" of [tls] certs, in name order, each holding a chain and
 * its key. */
static int add_cert_dir(struct tls_server *t, const struct config *cfg, FILE *errors)
{
    DIR *dir = opendir(cfg->tls_certs);
    char **names = NULL;
    size_t count = 0, cap = 0;
    int rc = 0;
    const struct dirent *e;

    if (dir == NULL) {
        report(errors, cfg->tls_certs, "cannot open the directory: %s", strerror(errno));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len <= 4 || e->d_name[0] == '.' || strcmp(e->d_name + len - 4, ".pem") != 0)
            continue;
        if (count == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            char **n = realloc(names, ncap * sizeof(*n));
            if (n == NULL) {
                rc = -1;
                break;
            }
            names = n;
            cap = ncap;
        }
        if ((names[count] = strdup(e->d_name)) == NULL) {
            rc = -1;
            break;
        }
        count++;
    }
    closedir(dir);
    if (rc == -1)
        report(errors, cfg->tls_certs, "out of memory");
    else if (count > 0)
        qsort(names, count, sizeof(*names), compare_names);
    for (size_t i = 0; i < count; i++) {
        char path[CONFIG_PATH_MAX * 2];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", cfg->tls_certs, names[i]);
        free(names[i]);
        /* every file is tried, so that every problem is reported */
        if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
            continue;
        if (add_cert(t, cfg, path, path, errors) == -1)
            rc = -1;
    }
    free(names);
    return rc;
}

/* Reads the DER OCSP response to staple; it must parse and say
 * "successful". */
static int load_ocsp(struct tls_server *t, const char *file, FILE *errors)
{
    FILE *f = fopen(file, "rb");
    unsigned char *buf;
    const unsigned char *p;
    OCSP_RESPONSE *resp;
    size_t n;

    if (f == NULL) {
        report(errors, file, "cannot open: %s", strerror(errno));
        return -1;
    }
    buf = malloc(TLS_OCSP_MAX + 1); /* kept at t->ocsp, freed in server_free() */
    if (buf == NULL) {
        fclose(f);
        report(errors, file, "out of memory");
        return -1;
    }
    n = fread(buf, 1, TLS_OCSP_MAX + 1, f);
    fclose(f);
    if (n == 0 || n > TLS_OCSP_MAX) {
        report(errors, file,
               n == 0 ? "empty or unreadable OCSP response" : "OCSP response larger than 64k");
        free(buf);
        return -1;
    }
    p = buf;
    resp = d2i_OCSP_RESPONSE(NULL, &p, (long)n);
    if (resp == NULL || OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        report(errors, file,
               resp == NULL ? "not a DER OCSP response"
                            : "the OCSP response is not a successful one");
        OCSP_RESPONSE_free(resp);
        ERR_clear_error();
        free(buf);
        return -1;
    }
    OCSP_RESPONSE_free(resp);
    t->ocsp = buf;
    t->ocsp_len = n;
    return 0;
}

/* ------------------------------------------------------------------------
 * Server
 */

struct tls_server *tls_server_new(const struct config *cfg, FILE *errors)
{
    struct tls_server *t;
    int rc = 0;

    if (ensure_indexes() == -1) {
        report(errors, cfg->path, "cannot set up OpenSSL ex data");
        return NULL;
    }
    t = calloc(1, sizeof(*t)); /* freed by the last tls_server_unref() */
    if (t == NULL) {
        report(errors, cfg->path, "out of memory");
        return NULL;
    }
    t->refs = 1;
    pthread_mutex_init(&t->ticket_lock, NULL);
    t->ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (t->ticket_cipher == NULL) {
        report(errors, cfg->path, "OpenSSL has no AES-256-CBC for session tickets");
        rc = -1;
    }
    if (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0') {
        report(errors, cfg->path, "[tls] cert and key are required");
        rc = -1;
    } else if (add_cert(t, cfg, cfg->tls_cert, cfg->tls_key, errors) == -1) {
        rc = -1;
    }
    if (cfg->tls_certs[0] != '\0' && add_cert_dir(t, cfg, errors) == -1)
        rc = -1;
    if (cfg->tls_ocsp[0] != '\0' && load_ocsp(t, cfg->tls_ocsp, errors) == -1)
        rc = -1;
    if (rc == -1 || t->cert_count == 0) {
        server_free(t);
        return NULL;
    }
    SSL_CTX_set_tlsext_servername_callback(t->certs[0].ctx, tls_on_servername);
    if (t->ocsp != NULL)
        SSL_CTX_set_tlsext_status_cb(t->certs[0].ctx, tls_on_status);
    return t;
}

struct tls_server *tls_server_ref(struct tls_server *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void tls_server_unref(struct tls_server *t)
{
    if (t == NULL)
        return;
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        server_free(t);
}

static void server_free(struct tls_server *t)
{
    for (size_t i = 0; i < t->cert_count; i++) {
        SSL_CTX_free(t->certs[i].ctx);
        free(t->certs[i].file);
        for (size_t j = 0; j < t->certs[i].name_count; j++)
            free(t->certs[i].names[j].text);
        free(t->certs[i].names);
    }
    free(t->certs);
    EVP_CIPHER_free(t->ticket_cipher);
    free(t->ocsp);
    OPENSSL_cleanse(t->tickets, sizeof(t->tickets));
    pthread_mutex_destroy(&t->ticket_lock);
    free(t);
}

SSL *tls_server_ssl(struct tls_server *t)
{
    SSL *ssl = SSL_new(t->certs[0].ctx);

    if (ssl == NULL)
        return NULL;
    if (SSL_set_ex_data(ssl, server_index, tls_server_ref(t)) != 1) {
        tls_server_unref(t);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* ------------------------------------------------------------------------
 * Client
 */

/* Keeps a copy of the session a clone just gave, replacing that host's
 * last one. A copy: OpenSSL marks the SSL's own session unresumable when
 * the SSL is freed without a shutdown, as pooled connections often are. */
static int tls_on_new_session(SSL *ssl, SSL_SESSION *session)
{
    const struct client_link *l = SSL_get_ex_data(ssl, client_index);
    struct tls_client *t;
    struct client_slot *slot = NULL;

    if (l == NULL || !SSL_SESSION_is_resumable(session))
        return 0;
    session = SSL_SESSION_dup(session);
    if (session == NULL) {
        ERR_clear_error();
        return 0;
    }
    t = l->t;
    pthread_mutex_lock(&t->lock);
    for (unsigned i = 0; i < TLS_CLIENT_SESSIONS && slot == NULL; i++)
        if (strcmp(t->slots[i].key, l->key) == 0)
            slot = &t->slots[i];
    for (unsigned i = 0; i < TLS_CLIENT_SESSIONS && slot == NULL; i++)
        if (t->slots[i].key[0] == '\0')
            slot = &t->slots[i];
    if (slot == NULL) {
        slot = &t->slots[t->next_slot];
        t->next_slot = (t->next_slot + 1) % TLS_CLIENT_SESSIONS;
    }
    SSL_SESSION_free(slot->session);
    slot->session = session; /* the copy's one reference */
    snprintf(slot->key, sizeof(slot->key), "%s", l->key);
    pthread_mutex_unlock(&t->lock);
    return 0; /* OpenSSL keeps its reference to the original */
}

struct tls_client *tls_client_new(const struct config *cfg, FILE *errors)
{
    static const unsigned char alpn[] = TLS_ALPN_HTTP11;
    char why[TLS_REASON_MAX];
    struct tls_client *t;
    struct stat st;

    if (ensure_indexes() == -1) {
        report(errors, cfg->path, "cannot set up OpenSSL ex data");
        return NULL;
    }
    t = calloc(1, sizeof(*t)); /* freed by the last tls_client_unref() */
    if (t == NULL) {
        report(errors, cfg->path, "out of memory");
        return NULL;
    }
    t->refs = 1;
    t->verify = cfg->upstream_tls_verify;
    snprintf(t->sni, sizeof(t->sni), "%s", cfg->upstream_tls_sni);
    pthread_mutex_init(&t->lock, NULL);
    ERR_clear_error();
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        report(errors, cfg->path, "cannot make a TLS context: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(t->ctx, t->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (cfg->upstream_tls_ca[0] != '\0') {
        const char *ca = cfg->upstream_tls_ca;
        bool dir = stat(ca, &st) == 0 && S_ISDIR(st.st_mode);
        if ((dir ? SSL_CTX_load_verify_dir(t->ctx, ca) : SSL_CTX_load_verify_file(t->ctx, ca)) !=
            1) {
            report(errors, ca, "[upstream] tls_ca: cannot load: %s", ssl_reason(why, sizeof(why)));
            goto fail;
        }
    } else if (t->verify && SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        report(errors, cfg->path, "[upstream] tls_verify: no system CA store: %s",
               ssl_reason(why, sizeof(why)));
        goto fail;
    }
    /* returns 0 on success, unlike its neighbours */
    if (SSL_CTX_set_alpn_protos(t->ctx, alpn, sizeof(alpn) - 1) != 0) {
        report(errors, cfg->path, "cannot set ALPN: %s", ssl_reason(why, sizeof(why)));
        goto fail;
    }
    /* sessions are kept per clone by tls_on_new_session(), not by OpenSSL */
    SSL_CTX_set_session_cache_mode(t->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(t->ctx, tls_on_new_session);
    return t;

fail:
    client_free(t);
    return NULL;
}

struct tls_client *tls_client_ref(struct tls_client *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void tls_client_unref(struct tls_client *t)
{
    if (t == NULL)
        return;
    if (__atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        client_free(t);
}

static void client_free(struct tls_client *t)
{
    for (unsigned i = 0; i < TLS_CLIENT_SESSIONS; i++)
        SSL_SESSION_free(t->slots[i].session);
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* The host part of "host:port", "[v6]:port" or a bare host, into <buf>. */
static void host_only(const char *host, char *buf, size_t size)
{
    const char *colon = strrchr(host, ':');
    size_t len = strlen(host);

    if (host[0] == '[') {
        const char *end = strchr(host, ']');
        len = end != NULL ? (size_t)(end - host - 1) : len - 1;
        host++;
    } else if (colon != NULL && strchr(host, ':') == colon) {
        len = (size_t)(colon - host); /* one colon: a port; more: a bare IPv6 address */
    }
    if (len >= size)
        len = size - 1;
    memcpy(buf, host, len);
    buf[len] = '\0';
}

SSL *tls_client_ssl(struct tls_client *t, const char *host)
{
    char name[TLS_HOST_MAX];
    unsigned char addr[sizeof(struct in6_addr)];
    struct client_link *link;
    bool ip;
    SSL *ssl;

    if (t->sni[0] != '\0')
        snprintf(name, sizeof(name), "%s", t->sni);
    else
        host_only(host, name, sizeof(name));
    ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;

    ssl = SSL_new(t->ctx);
    if (ssl == NULL)
        return NULL;
    link = calloc(1, sizeof(*link)); /* freed with the SSL, by on_ssl_free_client() */
    if (link == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    link->t = tls_client_ref(t);
    snprintf(link->key, sizeof(link->key), "%s", host);
    if (SSL_set_ex_data(ssl, client_index, link) != 1) {
        tls_client_unref(link->t);
        free(link);
        goto fail;
    }
    /* RFC 6066: no IP literal in SNI */
    if (!ip && name[0] != '\0' && SSL_set_tlsext_host_name(ssl, name) != 1)
        goto fail;
    if (t->verify) {
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) != 1
               : SSL_set1_host(ssl, name) != 1)
            goto fail;
    }
    pthread_mutex_lock(&t->lock);
    for (unsigned i = 0; i < TLS_CLIENT_SESSIONS; i++) {
        if (t->slots[i].session != NULL && strcmp(t->slots[i].key, link->key) == 0) {
            SSL_set_session(ssl, t->slots[i].session); /* takes its own reference */
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return ssl;

fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

void tls_ssl_free(SSL *ssl, bool orderly)
{
    if (ssl == NULL)
        return;
    if (orderly)
        SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(ssl);
    ERR_clear_error();
}

/* ------------------------------------------------------------------------
 * tls_check
 */

/* One line about certificate <c>: names, expiry, days left. -1 when it
 * has expired. */
static int describe_cert(const struct tls_cert *c, FILE *out)
{
    const X509 *leaf = SSL_CTX_get0_certificate(c->ctx);
    const ASN1_TIME *not_after = X509_get0_notAfter(leaf);
    const ASN1_TIME *not_before = X509_get0_notBefore(leaf);
    char when[64] = "?";
    struct tm tm;
    int days = 0, secs = 0;

    fprintf(out, "%s: ", c->file);
    for (size_t i = 0; i < c->name_count; i++)
        fprintf(out, "%s%s%s", i > 0 ? ", " : "", c->names[i].ip ? "IP:" : "", c->names[i].text);
    if (c->name_count == 0)
        fputs("(no names)", out);
    if (ASN1_TIME_to_tm(not_after, &tm) == 1)
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    if (ASN1_TIME_diff(&days, &secs, NULL, not_after) != 1) {
        ERR_clear_error();
        fprintf(out, "; not after %s; error: unreadable expiry date\n", when);
        return -1;
    }
    if (days < 0 || secs < 0 || (days == 0 && secs == 0)) {
        fprintf(out, "; not after %s; error: expired %d days ago\n", when, -days);
        return -1;
    }
    fprintf(out, "; not after %s; %d days left", when, days);
    if (days < TLS_WARN_DAYS)
        fprintf(out, "; warning: fewer than %d days left", TLS_WARN_DAYS);
    if (X509_cmp_current_time(not_before) > 0)
        fputs("; warning: not valid yet", out);
    fputc('\n', out);
    return 0;
}

int tls_check(const struct config *cfg, FILE *out)
{
    int rc = 0;

    if (cfg->tls_listen_count > 0) {
        struct tls_server *t = tls_server_new(cfg, out);
        if (t == NULL)
            rc = -1;
        for (size_t i = 0; t != NULL && i < t->cert_count; i++)
            if (describe_cert(&t->certs[i], out) == -1)
                rc = -1;
        tls_server_unref(t);
    }
    if (cfg->upstream_tls) {
        struct tls_client *c = tls_client_new(cfg, out);
        if (c == NULL)
            rc = -1;
        tls_client_unref(c);
    }
    return rc;
}
