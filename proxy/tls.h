/*
 * tls: OpenSSL 3 contexts for TLS termination ([tls]) and for TLS to the
 * clones ([upstream] tls = yes). Nothing else: the stream module does the
 * I/O over the SSL objects made here.
 *
 * A struct tls_server holds one SSL_CTX per certificate (the [tls]
 * cert/key pair first, then every certificate of tls.certs), configured
 * identically: TLS 1.2 and 1.3 by default, the configured ciphers with the
 * server's preference, ALPN "http/1.1" only, session tickets whose key
 * rotates (shared by every worker, since the contexts are), an OCSP staple
 * when one is configured. A client's SNI name picks the certificate
 * (exact names and "*." wildcards from subjectAltName, else CN); no match
 * or no SNI gets the first. Contexts are immutable once built and shared
 * by all workers; a reload builds a new tls_server and swaps a reference,
 * so connections keep the context they began with.
 */
#ifndef CLONEGATE_TLS_H
#define CLONEGATE_TLS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/ssl.h>

struct config;

#define TLS_TICKET_ROTATE_S 3600 /* a new session-ticket key this often ... */
#define TLS_TICKET_KEYS     3    /* ... keeping this many for decryption */

struct tls_server;
struct tls_client;

/* Handshake figures, atomics bumped from any worker. */
struct tls_stats {
    uint64_t handshakes; /* completed */
    uint64_t resumed;    /* of those, resumed sessions */
    uint64_t failures;   /* handshakes that failed (bad version, no cipher, alert...) */
    uint64_t plaintext;  /* failures that were plain HTTP on the TLS port */
    uint64_t timeouts;   /* handshakes not finished within header_timeout */
};

/*
 * Builds the server contexts of <cfg>'s [tls]. Returns NULL and writes
 * one line per problem to <errors> (as "FILE: reason") when a certificate
 * or key cannot be loaded, they do not match, or a setting is refused.
 * Any thread; the result is shared read-only.
 */
struct tls_server *tls_server_new(const struct config *cfg, FILE *errors);

struct tls_server *tls_server_ref(struct tls_server *t);
void tls_server_unref(struct tls_server *t);

/* A new server-side SSL for an accepted connection, or NULL. The caller
 * owns it (SSL_free). The SSL holds its own reference on <t>, dropped by
 * SSL_free(), so <t> may be unreferenced (a reload) while it lives. */
SSL *tls_server_ssl(struct tls_server *t);

/* Frees <ssl> (NULL is ignored), from tls_server_ssl() or tls_client_ssl().
 * <orderly>: the connection ended normally (not on an error or a timeout),
 * so its session stays resumable; OpenSSL otherwise drops the session from
 * the cache when an SSL is freed without a shutdown. No I/O: sending
 * close_notify is the caller's business. Any thread. */
void tls_ssl_free(SSL *ssl, bool orderly);

/* The process-wide handshake counters (never NULL). Read the fields with
 * __atomic_load_n; only the tls_count_*() functions write them. */
struct tls_stats *tls_stats(void);

/* Counts a completed handshake of <ssl> (server side, not NULL), and a
 * resumed session when it was one. Any thread. */
void tls_count_handshake(SSL *ssl);

/* Counts a failed handshake; <plaintext>: it was plain HTTP on the TLS
 * port (see tls_looks_like_plaintext()). Any thread. */
void tls_count_failure(bool plaintext);

/* Counts a handshake that did not finish within header_timeout. */
void tls_count_timeout(void);

/* Whether the first <n> bytes a client sent on the TLS port (<first_bytes>,
 * n >= 1) are plain HTTP rather than a TLS record: no handshake record
 * type (0x16) and an upper-case method token followed by a space (or all
 * of the bytes so far upper-case letters). The caller may then answer with
 * a plain "HTTP/1.1 400" and close. Pure; any thread. */
bool tls_looks_like_plaintext(const unsigned char *first_bytes, size_t n);

/* For `clonegate -t`: loads every certificate and key of <cfg>, checks
 * that each key matches its certificate, and prints one line per
 * certificate to <out>: its names, expiry date and days left (a warning
 * below 30 days, an error once expired). Returns 0, or -1 on any error. */
int tls_check(const struct config *cfg, FILE *out);

/* Builds the client context for [upstream] tls (verify, CA file, SNI
 * name); NULL with the reason on <errors>. */
struct tls_client *tls_client_new(const struct config *cfg, FILE *errors);
void tls_client_unref(struct tls_client *t);
struct tls_client *tls_client_ref(struct tls_client *t);

/* A new client-side SSL toward the clone <host> (SNI and, with
 * tls_verify, the name checked), or NULL. The caller owns it. <host> is the
 * server's address text ("10.0.0.1:443", "[::1]:443") or a bare host; a
 * port is ignored for the name, and an IP address is checked against the
 * certificate's IP entries and sent no SNI. [upstream] tls_sni, when set,
 * replaces the name. The last session of each <host> (the whole string)
 * is kept and offered again, so a new connection to the same clone
 * resumes. The SSL holds a reference on <t> until SSL_free(). Any thread. */
SSL *tls_client_ssl(struct tls_client *t, const char *host);

#endif /* CLONEGATE_TLS_H */
