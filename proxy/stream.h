/*
 * stream: a non-blocking socket with an input and an output evbuffer.
 *
 * The proxy's own small replacement for libevent's bufferevent on the hot
 * path: it reads up to STREAM_READ_SIZE per call with readv into reserved
 * evbuffer space (bufferevents read 4 KiB at a time and ask FIONREAD each
 * time), writes as soon as bytes are queued instead of waiting for the next
 * loop turn, and registers for writability only when the kernel pushed
 * back. Both the client side (conn) and the clone side (upstream) use it.
 *
 * A stream is embedded in its owner and lives in one worker thread.
 * Callbacks run last in every handler, so an owner may free the stream
 * (after stream_close()) from inside any callback.
 */
#ifndef CLONEGATE_STREAM_H
#define CLONEGATE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/event_struct.h>
#include <openssl/ssl.h>

struct evbuffer;
struct stream;

#define STREAM_READ_SIZE (64 * 1024) /* bytes one read may take at most */

enum stream_event {
    STREAM_EV_CONNECTED = 1,     /* the outgoing connect finished */
    STREAM_EV_EOF = 2,           /* the peer closed its side */
    STREAM_EV_ERROR = 3,         /* a socket error; errno-style code in stream.error */
    STREAM_EV_READ_TIMEOUT = 4,  /* nothing read within the read timeout */
    STREAM_EV_WRITE_TIMEOUT = 5, /* no progress writing within the write timeout */
};

typedef void (*stream_data_fn)(struct stream *s, void *arg);
typedef void (*stream_event_fn)(struct stream *s, enum stream_event what, void *arg);

struct stream {
    int fd;                         /* owned; -1 once closed */
    struct event_base *base;        /* borrowed from the worker */
    struct event read_ev;           /* persistent EV_READ while reading */
    struct event write_ev;          /* EV_WRITE while output waits or connecting */
    struct evbuffer *in;            /* owned; bytes read, not yet used */
    struct evbuffer *out;           /* owned; bytes queued for the peer */
    stream_data_fn on_read;         /* new bytes in <in> */
    stream_data_fn on_drained;      /* <out> fell to write_low or below */
    stream_event_fn on_event;       /* connected, EOF, error, timeout */
    void *arg;                      /* passed to the callbacks */
    const struct timeval *read_tv;  /* borrowed (often a common timeout); NULL none */
    const struct timeval *write_tv; /* borrowed; NULL none */
    size_t read_high;               /* stop reading while <in> holds this much; 0 none */
    size_t write_low;               /* call on_drained when <out> is at or below it */
    int error;                      /* errno of the last STREAM_EV_ERROR */
    uint64_t bytes_read;            /* since the stream was set up */
    uint64_t bytes_written;
    bool reading;        /* the owner wants bytes */
    bool connecting;     /* connect(2) in progress */
    bool eof;            /* the peer closed; no more reads */
    bool eof_reported;   /* on_event heard of the end */
    bool write_pending;  /* write_ev is added */
    bool notify_drained; /* call on_drained at write_low */
    SSL *ssl;            /* owned when set (TLS): bytes go through it; freed in stream_close() */
    bool tls_done;       /* the TLS handshake finished */
    bool tls_read_wants_write; /* SSL_read needs the socket writable first */
    bool tls_write_wants_read; /* SSL_write needs the socket readable first */
    bool aborted;              /* closed mid-message: no TLS close_notify */
};

/*
 * Sets up <s> over the connected (or connecting, see stream_connect)
 * non-blocking socket <fd>, which it then owns. Returns 0, or -1 when the
 * buffers could not be made (the fd is not closed then).
 */
int stream_init(struct stream *s, struct event_base *base, int fd);

/* Sets the callbacks and their argument (any may be NULL). */
void stream_set_callbacks(struct stream *s, stream_data_fn on_read, stream_data_fn on_drained,
                          stream_event_fn on_event, void *arg);

/*
 * Opens a non-blocking TCP socket to <sa> and sets <s> up over it.
 * Returns 0 when the connect is under way or done (STREAM_EV_CONNECTED
 * follows either way, from the loop), -1 with errno set when it failed at
 * once (refused, no socket): the stream is then closed already.
 */
int stream_connect(struct stream *s, struct event_base *base, const struct sockaddr *sa,
                   socklen_t salen);

/* What went wrong on <s> after STREAM_EV_ERROR, for logs: a failed TLS
 * certificate check by name, else the error's text. Static or owned by the
 * stream; valid until the next call. */
const char *stream_error_text(const struct stream *s);

/* Whether a stream_connect() failure with <err> is this machine's (out of
 * descriptors, memory or local ports), not the peer's: nothing to hold
 * against the peer. */
bool stream_error_is_local(int err);

/* Starts or stops reading. Reading also stops by itself while <in> holds
 * read_high bytes or more, and resumes with stream_read_resume(). */
void stream_read_enable(struct stream *s, bool on);

/* Turns reading on and reads now, without waiting for the loop to say the
 * socket is readable (a new connection usually has its request waiting).
 * The read event is armed only when nothing came; once bytes came, the
 * owner arms it with stream_read_resume() if it wants more, so a whole last
 * request never registers with the poller at all. May call back. */
void stream_read_start(struct stream *s);

/* After the owner consumed input: reads again if read_high had stopped it. */
void stream_read_resume(struct stream *s);

/* Acknowledges what the socket received at once, not with the next answer.
 * Listeners delay these ACKs (TCP_QUICKACK off: an answer follows a
 * request); a peer still sending, with Nagle on, would wait for one. */
void stream_ack_now(struct stream *s);

/* Sets the read (idle between reads) and write (no progress) timeouts. */
void stream_set_timeouts(struct stream *s, const struct timeval *read_tv,
                         const struct timeval *write_tv);

/* Writes what <out> holds as far as the socket takes it now and waits for
 * writability for the rest. Call after queueing bytes. Never calls back. */
void stream_flush(struct stream *s);

/* Writes <iov> (<n> pieces) straight to the socket when nothing waits
 * before it (no queued output, no TLS, connected), sparing the copy into
 * <out>. Returns the bytes the kernel took, possibly fewer than offered:
 * the caller queues the rest in <out> and calls stream_flush(). 0 when it
 * did not try, the socket was full or the write failed (the caller then
 * queues it all, and stream_flush() reports the error). */
size_t stream_write_now(struct stream *s, const struct iovec *iov, int n);

/* How many times this thread's streams were readable or writable so far
 * (it wraps): a loop turn that moved it did some I/O. */
unsigned stream_activity(void);

/* Asks for on_drained once <out> holds <low> bytes or fewer. */
void stream_notify_drained(struct stream *s, size_t low);

/*
 * Speaks TLS over <s> from now on through <ssl> (owned from here; freed by
 * stream_close()), as the server (<server>) or the client side. The
 * handshake runs inside the first reads and writes; reads give plaintext.
 * Returns 0, or -1 when <ssl> could not take the socket (<ssl> is freed).
 */
int stream_start_tls(struct stream *s, SSL *ssl, bool server);

/* Whether the peer sent bytes not read yet: they wait in the kernel, and
 * closing the socket over them would reset the connection. */
bool stream_unread_waiting(const struct stream *s);

/* Ends this side's output, a TLS close_notify first: the peer reads what
 * was written, then the end. Reading goes on as before. */
void stream_shutdown_write(struct stream *s);

/* Marks what is being sent as cut short: stream_close() then sends no TLS
 * close_notify, so the peer sees a truncated stream, not a clean end. */
void stream_abort(struct stream *s);

/* Closes the socket, drops both buffers and events. Safe to call twice. */
void stream_close(struct stream *s);

/* Whether the stream has a socket. */
bool stream_is_open(const struct stream *s);

/* Gives back the TLS record buffers of an idle stream (no-op without TLS,
 * or when TLS still holds unread bytes); they are made again on the next
 * read or write. */
void stream_release_buffers(struct stream *s);

#endif /* CLONEGATE_STREAM_H */
