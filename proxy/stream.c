/*
 * stream: non-blocking socket I/O into and out of evbuffers.
 *
 * Owns the socket, the two evbuffers and the two events of each stream
 * (all released by stream_close()). The struct itself is embedded in, and
 * freed with, its owner. One worker thread. Every handler finishes its own
 * work on the stream before it calls back, and touches nothing afterwards.
 */
#include "stream.h"

#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "tls.h"

/* Reservations just under a power of two keep evbuffer chains in one
 * allocation of that size. */
#define STREAM_READ_CHUNK   (16 * 1024 - 128)
#define STREAM_READS_PER_EV 4     /* reads in one wake-up while the socket keeps filling them */
#define STREAM_TLS_RECORD   16384 /* plaintext bytes of one full TLS record */

static void stream_on_readable(evutil_socket_t fd, short what, void *arg);
static void stream_on_writable(evutil_socket_t fd, short what, void *arg);
static void want_write(struct stream *s);

int stream_init(struct stream *s, struct event_base *base, int fd)
{
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    s->in = evbuffer_new(); /* freed in stream_close() */
    s->out = evbuffer_new();
    if (!s->in || !s->out) {
        stream_close(s);
        return -1;
    }
    s->fd = fd;
    s->base = base;
    event_assign(&s->read_ev, base, fd, EV_READ | EV_PERSIST, stream_on_readable, s);
    event_assign(&s->write_ev, base, fd, EV_WRITE | EV_PERSIST, stream_on_writable, s);
    return 0;
}

void stream_set_callbacks(struct stream *s, stream_data_fn on_read, stream_data_fn on_drained,
                          stream_event_fn on_event, void *arg)
{
    s->on_read = on_read;
    s->on_drained = on_drained;
    s->on_event = on_event;
    s->arg = arg;
}

bool stream_is_open(const struct stream *s)
{
    return s->fd != -1;
}

int stream_connect(struct stream *s, struct event_base *base, const struct sockaddr *sa,
                   socklen_t salen)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    int one = 1;
    /* heads and bodies are written whole; Nagle would only delay them */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (stream_init(s, base, fd) == -1) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    if (connect(fd, sa, salen) == -1 && errno != EINPROGRESS) {
        int saved = errno;
        stream_close(s);
        errno = saved;
        return -1;
    }
    /* done or under way: the writable event reports it from the loop */
    s->connecting = true;
    event_add(&s->write_ev, s->write_tv);
    s->write_pending = true;
    return 0;
}

/* ------------------------------------------------------------ reading */

static bool over_high(const struct stream *s)
{
    return s->read_high && evbuffer_get_length(s->in) >= s->read_high;
}

static void arm_read(struct stream *s)
{
    if (s->fd == -1 || !s->reading)
        return;
    if (s->eof) {
        /* an end not yet reported (reading was off when it came) */
        if (!s->eof_reported)
            event_active(&s->read_ev, EV_READ, 1);
        return;
    }
    if (over_high(s))
        return;
    if (!event_pending(&s->read_ev, EV_READ, NULL))
        event_add(&s->read_ev, s->read_tv);
    /* bytes TLS already decrypted will not make the socket readable */
    if (s->ssl && SSL_has_pending(s->ssl))
        event_active(&s->read_ev, EV_READ, 1);
}

void stream_read_enable(struct stream *s, bool on)
{
    s->reading = on;
    if (on)
        arm_read(s);
    else if (s->fd != -1)
        event_del(&s->read_ev);
}

const char *stream_error_text(const struct stream *s)
{
    static _Thread_local char text[160];
    if (s->ssl && s->error == EPROTO && !SSL_is_server(s->ssl)) {
        long v = SSL_get_verify_result(s->ssl);
        if (v != X509_V_OK) {
            snprintf(text, sizeof(text), "TLS certificate check failed: %s",
                     X509_verify_cert_error_string(v));
            return text;
        }
        return "TLS handshake failed";
    }
    return strerror(s->error);
}

bool stream_error_is_local(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM ||
           err == EADDRNOTAVAIL;
}

void stream_ack_now(struct stream *s)
{
    int one = 1;
    /* an optimisation only: without it the ACK leaves on the delayed-ACK
     * timer, so a failure costs latency, never data */
    if (s->fd != -1 && setsockopt(s->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one)) == -1)
        log_debug("TCP_QUICKACK: %s", strerror(errno));
}

void stream_read_resume(struct stream *s)
{
    arm_read(s);
}

/* One readv into reserved space; returns its result (errno kept). */
static ssize_t read_once(struct stream *s, size_t want)
{
    struct evbuffer_iovec vec[2];
    int n = evbuffer_reserve_space(s->in, (ev_ssize_t)want, vec, 2);
    if (n <= 0) {
        errno = ENOMEM;
        return -1;
    }
    if ((size_t)n > 2)
        n = 2;
    size_t room = 0;
    for (int i = 0; i < n; i++) {
        if (room + vec[i].iov_len > want)
            vec[i].iov_len = want - room;
        room += vec[i].iov_len;
    }
    /* recv() for one piece: a socket call skips the file layer readv() goes through */
    ssize_t r = n == 1 ? recv(s->fd, vec[0].iov_base, vec[0].iov_len, 0)
                       : readv(s->fd, (struct iovec *)vec, n);
    if (r <= 0) {
        int saved = errno;
        evbuffer_commit_space(s->in, vec, 0);
        errno = saved;
        return r;
    }
    s->bytes_read += (uint64_t)r;
    size_t left = (size_t)r;
    int used = 0;
    for (int i = 0; i < n && left > 0; i++, used++) {
        if (vec[i].iov_len > left)
            vec[i].iov_len = left;
        left -= vec[i].iov_len;
    }
    evbuffer_commit_space(s->in, vec, used);
    return r;
}

/* SSL_get_error() needs an empty error queue before each SSL_read or
 * SSL_write; every failure path below empties it, so it is nearly always
 * empty already, and looking is far cheaper than clearing. */
static void tls_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* Notes the end of the handshake once; only client connections (the
 * server side) count in the TLS figures. */
static void tls_note_handshake(struct stream *s)
{
    if (!s->tls_done && SSL_is_init_finished(s->ssl)) {
        s->tls_done = true;
        if (SSL_is_server(s->ssl))
            tls_count_handshake(s->ssl);
    }
}

/* OpenSSL says when a handshake is done, even when the peer's close came
 * in the same read (SSL_read then fails and the state looks unfinished). */
static void stream_on_tls_info(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (!(where & SSL_CB_HANDSHAKE_DONE))
        return;
    struct stream *s = SSL_get_app_data(ssl);
    if (s && !s->tls_done) {
        s->tls_done = true;
        if (SSL_is_server(ssl))
            tls_count_handshake((SSL *)(uintptr_t)ssl);
    }
}

/* A handshake that failed counts, on the server side, once the client sent
 * something: a TCP probe that connects and closes is not a failure. */
static void tls_count_failed(const struct stream *s)
{
    if (s->tls_done || !SSL_is_server(s->ssl))
        return;
    BIO *rbio = SSL_get_rbio(s->ssl);
    if (rbio && BIO_number_read(rbio) > 0)
        tls_count_failure(false);
}

/* Classifies a failed SSL_read/SSL_write: sets errno (EAGAIN to wait) and
 * returns -1, or 0 for a clean end. */
static ssize_t tls_failed(struct stream *s, int r, bool reading)
{
    int err = SSL_get_error(s->ssl, r);
    int saved = errno;
    switch (err) {
    case SSL_ERROR_WANT_READ:
        if (!reading)
            s->tls_write_wants_read = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (reading)
            s->tls_read_wants_write = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (saved == 0 || saved == ECONNRESET || saved == EPIPE) {
            tls_count_failed(s);
            if (saved == 0)
                return 0; /* closed without close_notify: an end all the same */
        }
        errno = saved ? saved : EIO;
        return -1;
    default:
        /* an unexpected EOF right after the handshake lands here too */
        tls_count_failed(s);
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
}

/* One SSL_read into reserved space (the handshake runs inside it). */
static ssize_t tls_read_once(struct stream *s)
{
    struct evbuffer_iovec vec;
    if (evbuffer_reserve_space(s->in, STREAM_TLS_RECORD, &vec, 1) < 1) {
        errno = ENOMEM;
        return -1;
    }
    size_t want = vec.iov_len < STREAM_TLS_RECORD ? vec.iov_len : STREAM_TLS_RECORD;
    tls_clear_errors();
    int r = SSL_read(s->ssl, vec.iov_base, (int)want);
    tls_note_handshake(s);
    if (r <= 0) {
        evbuffer_commit_space(s->in, &vec, 0);
        return tls_failed(s, r, true);
    }
    vec.iov_len = (size_t)r;
    evbuffer_commit_space(s->in, &vec, 1);
    s->bytes_read += (uint64_t)r;
    return r;
}

/* Readable and writable events of this thread's streams: see stream_activity(). */
static _Thread_local unsigned stream_events;

unsigned stream_activity(void)
{
    return stream_events;
}

static void stream_on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct stream *s = arg;
    (void)fd;
    stream_events++;
    if (what & EV_TIMEOUT) {
        s->on_event(s, STREAM_EV_READ_TIMEOUT, s->arg);
        return;
    }
    if (s->eof) {
        /* the end that came together with the last bytes (see below) */
        if (!s->eof_reported) {
            s->eof_reported = true;
            s->on_event(s, s->error ? STREAM_EV_ERROR : STREAM_EV_EOF, s->arg);
        }
        return;
    }
    if (s->tls_write_wants_read) {
        /* a write waited for this: let it go on first */
        s->tls_write_wants_read = false;
        stream_flush(s);
    }
    size_t got = 0;
    bool more = false; /* the last read returned bytes: there may be more */
    for (int i = 0; i < STREAM_READS_PER_EV * (s->ssl ? 4 : 1); i++) {
        ssize_t r = s->ssl ? tls_read_once(s) : read_once(s, STREAM_READ_CHUNK);
        more = r > 0;
        if (r > 0) {
            got += (size_t)r;
            if (over_high(s))
                break;
            if (!s->ssl && (size_t)r < STREAM_READ_CHUNK)
                break;
            /* a short record with nothing buffered behind it: the socket
             * is most likely drained, and it stays readable if not */
            if (s->ssl && (size_t)r < STREAM_TLS_RECORD && !SSL_has_pending(s->ssl))
                break;
            continue;
        }
        if (r == 0) {
            s->eof = true;
            break;
        }
        if (errno == EAGAIN || errno == EINTR)
            break;
        s->error = errno;
        s->eof = true;
        break;
    }
    if (s->eof || over_high(s))
        event_del(&s->read_ev);
    else if (more && s->ssl && SSL_has_pending(s->ssl))
        event_active(&s->read_ev, EV_READ, 1); /* records read ahead: no readability says so */
    if (s->tls_read_wants_write)
        want_write(s); /* the read goes on once the socket takes a write */
    if (got == 0) {
        if (s->eof) {
            s->eof_reported = true;
            s->on_event(s, s->error ? STREAM_EV_ERROR : STREAM_EV_EOF, s->arg);
        } else if (s->reading && !event_pending(&s->read_ev, EV_READ, NULL)) {
            /* nothing yet: wait for it (stream_read_start). Not arm_read():
             * a partial TLS record counts as pending and would spin here */
            event_add(&s->read_ev, s->read_tv);
        }
        return;
    }
    /* Bytes first, the end after them: the end is reported from the loop,
     * and stream_close() cancels that if the owner closes meanwhile. */
    if (s->eof)
        event_active(&s->read_ev, EV_READ, 1);
    s->on_read(s, s->arg);
}

void stream_read_start(struct stream *s)
{
    s->reading = true;
    if (s->fd != -1 && !s->eof)
        stream_on_readable(s->fd, EV_READ, s);
}

/* ------------------------------------------------------------ writing */

/* Writes until the socket pushes back or <out> is empty; -1 on an error. */
static int tls_write_some(struct stream *s)
{
    while (evbuffer_get_length(s->out) > 0) {
        /* whole records where the bytes allow: a small piece makes a small record */
        size_t len = evbuffer_get_length(s->out);
        if (len > STREAM_TLS_RECORD)
            len = STREAM_TLS_RECORD;
        const unsigned char *p = evbuffer_pullup(s->out, (ev_ssize_t)len);
        if (!p) {
            errno = ENOMEM;
            return -1;
        }
        tls_clear_errors();
        int n = SSL_write(s->ssl, p, (int)len);
        tls_note_handshake(s);
        if (n > 0) {
            evbuffer_drain(s->out, (size_t)n);
            s->bytes_written += (uint64_t)n;
            continue;
        }
        if (tls_failed(s, n, false) == -1 && errno == EAGAIN) {
            if (s->tls_write_wants_read) {
                arm_read(s);
                return 1; /* waits for readability, not writability */
            }
            return 0;
        }
        if (errno == 0)
            errno = EPIPE;
        return -1;
    }
    return 0;
}

/* Pieces of <out> handed to the kernel in one call. */
#define STREAM_WRITE_IOV 16

/* One sendmsg() of <iov> (not writev(): a socket call skips the file
 * layer), counted in bytes_written; its result, errno kept. */
static ssize_t send_iov(struct stream *s, const struct iovec *iov, int n)
{
    struct msghdr msg = {.msg_iov = (struct iovec *)(uintptr_t)iov, .msg_iovlen = (size_t)n};
    ssize_t r = sendmsg(s->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0)
        s->bytes_written += (uint64_t)r;
    return r;
}

static int write_some(struct stream *s)
{
    if (s->ssl)
        return tls_write_some(s);
    while (evbuffer_get_length(s->out) > 0) {
        struct evbuffer_iovec vec[STREAM_WRITE_IOV];
        int n = evbuffer_peek(s->out, -1, NULL, vec, STREAM_WRITE_IOV);
        if (n > STREAM_WRITE_IOV)
            n = STREAM_WRITE_IOV;
        size_t offered = 0;
        for (int i = 0; i < n; i++)
            offered += vec[i].iov_len;
        ssize_t r = send_iov(s, (const struct iovec *)vec, n);
        if (r > 0) {
            evbuffer_drain(s->out, (size_t)r);
            if ((size_t)r < offered)
                return 0; /* the socket is full: one more call would only say EAGAIN */
            continue;
        }
        if (r == -1 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (r == -1)
            return -1;
        return 0;
    }
    return 0;
}

static void want_write(struct stream *s)
{
    if (!s->write_pending) {
        event_add(&s->write_ev, s->write_tv);
        s->write_pending = true;
    }
}

void stream_flush(struct stream *s)
{
    if (s->fd == -1 || s->connecting || s->write_pending)
        return;
    int r = write_some(s);
    if (r == -1) {
        /* report from the loop, not from under the caller */
        s->error = errno;
        evbuffer_drain(s->out, evbuffer_get_length(s->out));
        event_active(&s->write_ev, EV_WRITE, 1);
        return;
    }
    if (r == 0 && evbuffer_get_length(s->out) > 0)
        want_write(s);
}

size_t stream_write_now(struct stream *s, const struct iovec *iov, int n)
{
    if (s->fd == -1 || s->ssl || s->connecting || s->write_pending ||
        evbuffer_get_length(s->out) > 0)
        return 0;
    ssize_t r = send_iov(s, iov, n);
    return r > 0 ? (size_t)r : 0;
}

void stream_notify_drained(struct stream *s, size_t low)
{
    s->write_low = low;
    s->notify_drained = true;
    if (s->fd != -1 && evbuffer_get_length(s->out) <= low)
        event_active(&s->write_ev, EV_WRITE, 1);
}

static void stream_on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct stream *s = arg;
    stream_events++;

    if (what & EV_TIMEOUT) {
        s->on_event(s, STREAM_EV_WRITE_TIMEOUT, s->arg);
        return;
    }
    if (s->error) {
        event_del(&s->write_ev);
        s->write_pending = false;
        s->on_event(s, STREAM_EV_ERROR, s->arg);
        return;
    }
    if (s->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
            err = errno;
        s->connecting = false;
        if (err != 0) {
            s->error = err;
            event_del(&s->write_ev);
            s->write_pending = false;
            s->on_event(s, STREAM_EV_ERROR, s->arg);
            return;
        }
        int r = write_some(s);
        if (r == -1) {
            s->error = errno;
            s->on_event(s, STREAM_EV_ERROR, s->arg);
            return;
        }
        /* all written, or TLS waits to read first: no writability to wait on */
        if (evbuffer_get_length(s->out) == 0 || r == 1) {
            event_del(&s->write_ev);
            s->write_pending = false;
        }
        s->on_event(s, STREAM_EV_CONNECTED, s->arg);
        return;
    }
    if (s->tls_read_wants_write) {
        s->tls_read_wants_write = false;
        if (evbuffer_get_length(s->out) == 0) {
            event_del(&s->write_ev);
            s->write_pending = false;
        }
        stream_on_readable(fd, EV_READ, s); /* calls back last */
        return;
    }
    int r = write_some(s);
    if (r == -1) {
        s->error = errno;
        event_del(&s->write_ev);
        s->write_pending = false;
        s->on_event(s, STREAM_EV_ERROR, s->arg);
        return;
    }
    if ((evbuffer_get_length(s->out) == 0 || r == 1) && s->write_pending) {
        event_del(&s->write_ev);
        s->write_pending = false;
    }
    if (s->notify_drained && evbuffer_get_length(s->out) <= s->write_low) {
        s->notify_drained = false;
        if (s->on_drained)
            s->on_drained(s, s->arg);
    }
}

void stream_set_timeouts(struct stream *s, const struct timeval *read_tv,
                         const struct timeval *write_tv)
{
    s->read_tv = read_tv;
    s->write_tv = write_tv;
    if (s->fd == -1)
        return;
    /* event_add() with no time keeps an earlier timeout: remove it */
    if (event_pending(&s->read_ev, EV_READ, NULL)) {
        if (read_tv)
            event_add(&s->read_ev, read_tv);
        else
            event_remove_timer(&s->read_ev);
    }
    if (s->write_pending) {
        if (write_tv)
            event_add(&s->write_ev, write_tv);
        else
            event_remove_timer(&s->write_ev);
    }
}

int stream_start_tls(struct stream *s, SSL *ssl, bool server)
{
    if (SSL_set_fd(ssl, s->fd) != 1) {
        SSL_free(ssl);
        return -1;
    }
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    SSL_set_app_data(ssl, s);
    SSL_set_info_callback(ssl, stream_on_tls_info);
    s->ssl = ssl;
    s->tls_done = false;
    return 0;
}

bool stream_unread_waiting(const struct stream *s)
{
    char byte;
    return s->fd != -1 && recv(s->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

void stream_shutdown_write(struct stream *s)
{
    if (s->fd == -1)
        return;
    if (s->ssl && s->tls_done && !s->error) {
        SSL_shutdown(s->ssl); /* sends close_notify; the peer's is not waited for */
        ERR_clear_error();
    }
    if (shutdown(s->fd, SHUT_WR) == -1)
        log_debug("%s: %s", __func__, strerror(errno));
}

void stream_abort(struct stream *s)
{
    s->aborted = true;
}

void stream_close(struct stream *s)
{
    if (s->ssl) {
        /* a close_notify when the handshake is done; never waits for the answer */
        if (s->tls_done && s->fd != -1 && !s->error && !s->aborted &&
            !(SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN))
            SSL_shutdown(s->ssl);
        SSL_free(s->ssl);
        s->ssl = NULL;
        ERR_clear_error();
    }
    if (s->fd != -1) {
        event_del(&s->read_ev);
        event_del(&s->write_ev);
        close(s->fd);
        s->fd = -1;
    }
    if (s->in)
        evbuffer_free(s->in);
    if (s->out)
        evbuffer_free(s->out);
    s->in = NULL;
    s->out = NULL;
    s->write_pending = false;
    s->reading = false;
}

void stream_release_buffers(struct stream *s)
{
    if (s->ssl && !SSL_has_pending(s->ssl))
        SSL_free_buffers(s->ssl);
}
