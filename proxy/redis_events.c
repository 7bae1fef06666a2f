/*
 * redis_events: runs a hiredis async context on a worker's libevent loop.
 *
 * Owns the struct redis_events of each attached context and its three
 * events; hiredis calls cleanup() when the context is freed. A context may
 * be freed from inside one of our callbacks (an error or the end of the
 * link while hiredis reads or writes): the read and write callbacks touch
 * nothing after handing over to hiredis, and the flush callback, which
 * does, defers the free to its own end.
 */
#include "redis_events.h"

#include <stdbool.h>
#include <stdlib.h>

struct redis_events {
    redisAsyncContext *ac;
    struct event *read_ev;  /* persistent, registered while hiredis reads */
    struct event *write_ev; /* persistent, registered while a write waits for room */
    struct event *flush_ev; /* made active: writes at the end of the loop turn */
    bool reading;
    bool writing;  /* write_ev registered */
    bool flushing; /* inside flush_ev's callback */
    bool dead;     /* cleaned up while flushing: free at the flush's end */
};

/* Frees <e> and whichever of its events were made. */
static void events_free(struct redis_events *e)
{
    struct event *evs[] = {e->read_ev, e->write_ev, e->flush_ev};
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    free(e);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct redis_events *e = arg;
    (void)fd;
    (void)what;
    redisAsyncHandleRead(e->ac); /* may free e */
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct redis_events *e = arg;
    (void)fd;
    (void)what;
    redisAsyncHandleWrite(e->ac); /* may free e */
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct redis_events *e = arg;
    (void)fd;
    (void)what;
    e->flushing = true;
    redisAsyncHandleWrite(e->ac); /* what the socket does not take: add_write() */
    e->flushing = false;
    if (e->dead)
        events_free(e);
}

static void add_read(void *data)
{
    struct redis_events *e = data;
    if (!e->reading && event_add(e->read_ev, NULL) == 0)
        e->reading = true;
}

static void del_read(void *data)
{
    struct redis_events *e = data;
    if (e->reading) {
        event_del(e->read_ev);
        e->reading = false;
    }
}

static void add_write(void *data)
{
    struct redis_events *e = data;
    if (e->writing)
        return;
    /* Connected: write at the end of this turn, with whatever else this
     * turn queues. Connecting (the first write event says the connect is
     * done) or the socket was full: wait for room. */
    if (!e->flushing && (e->ac->c.flags & REDIS_CONNECTED)) {
        event_active(e->flush_ev, EV_WRITE, 1); /* once, however often asked */
        return;
    }
    if (event_add(e->write_ev, NULL) == 0)
        e->writing = true;
}

static void del_write(void *data)
{
    struct redis_events *e = data;
    if (e->writing) {
        event_del(e->write_ev);
        e->writing = false;
    }
}

static void cleanup(void *data)
{
    struct redis_events *e = data;
    event_del(e->read_ev);
    event_del(e->write_ev);
    event_del(e->flush_ev);
    if (e->flushing)
        e->dead = true;
    else
        events_free(e);
}

int redis_events_attach(redisAsyncContext *ac, struct event_base *base)
{
    if (ac->ev.data != NULL)
        return REDIS_ERR;
    struct redis_events *e = calloc(1, sizeof(*e)); /* freed by cleanup() */
    if (e == NULL)
        return REDIS_ERR;
    e->ac = ac;
    int fd = ac->c.fd;
    e->read_ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, e);
    e->write_ev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, e);
    e->flush_ev = event_new(base, -1, 0, on_flush, e);
    if (e->read_ev == NULL || e->write_ev == NULL || e->flush_ev == NULL) {
        events_free(e);
        return REDIS_ERR;
    }
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    /* as hiredis expects of an adapter: read, and wait for the connect */
    add_read(e);
    add_write(e);
    return REDIS_OK;
}
