/*
 * redis_events: runs a hiredis async context on a worker's libevent loop.
 *
 * Owns the events of one context (a struct hung on ac->ev.data, freed by
 * hiredis's cleanup call when the context goes). Unlike the adapter that
 * ships with hiredis, the read event stays registered while the link is up
 * (no epoll_ctl for every reply), and a command queued on a connected link
 * is written from the loop at the end of the current turn, not after a
 * poll for writability: the poller hears of the write side only when the
 * socket is full. One thread: the loop's.
 */
#ifndef CLONEGATE_REDIS_EVENTS_H
#define CLONEGATE_REDIS_EVENTS_H

#include <event2/event.h>
#include <hiredis/async.h>

/* Attaches <ac> to <base>; REDIS_OK, or REDIS_ERR (already attached, out of
 * memory) with <ac> left as it was. */
int redis_events_attach(redisAsyncContext *ac, struct event_base *base);

#endif /* CLONEGATE_REDIS_EVENTS_H */
