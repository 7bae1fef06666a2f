/*
 * upstream: connections from one worker to the clones.
 *
 * A struct upstream_pool belongs to one worker and one configuration
 * generation: per server it keeps the idle keep-alive connections (up to
 * upstream.keepalive, most recently used first) and the count of requests
 * in flight. It connects, hands connections out and takes them back; the
 * client connection (conn.c) drives the exchange on a connection while it
 * holds it, with its own stream callbacks. Choosing the clone is the
 * balancer's job; this module only asks it. One thread: the worker's.
 */
#ifndef CLONEGATE_UPSTREAM_H
#define CLONEGATE_UPSTREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "config.h"
#include "stream.h"

struct event_base;
struct health;
struct upstream_pool;

struct upstream_conn {
    struct stream s;            /* owned socket and buffers; closed in upstream_release() */
    struct upstream_pool *pool; /* borrowed; outlives its connections */
    unsigned server;            /* index into the pool's servers */
    unsigned requests;          /* requests sent on it before the current one */
    bool connected;             /* the TCP connect finished */
    TAILQ_ENTRY(upstream_conn) idle_link; /* in the pool's idle list while idle */
};

/* A pool for <cfg>'s servers on <base>; takes a reference on <cfg>, dropped
 * when the pool is freed. <hl> (may be NULL: every server usable) says which
 * servers may take requests. NULL when out of memory. Worker thread. */
struct upstream_pool *upstream_pool_new(struct event_base *base, struct config *cfg,
                                        struct health *hl);

/* No more requests will use <pool>: idle connections are closed now; the pool
 * is freed when its last active connection is released. */
void upstream_pool_retire(struct upstream_pool *pool);

/* Picks the server for the next request among those health lets take
 * requests, skipping those whose bit is set in <skip>; -1 when none is left. */
int upstream_pick(struct upstream_pool *pool, uint64_t skip);

/*
 * A connection to server <server>: an idle pooled one when there is one,
 * else a new one whose connect is under way (STREAM_EV_CONNECTED comes to
 * the callbacks the caller sets next). Counts one request in flight on the
 * server. Returns NULL when a socket could not be made (errno set). The
 * caller owns the result until upstream_release().
 */
struct upstream_conn *upstream_acquire(struct upstream_pool *pool, unsigned server);

/* Ends the caller's use of <u>: back into the pool when <reusable> and the
 * pool has room, else closed and freed. Counts the request as finished. */
void upstream_release(struct upstream_conn *u, bool reusable);

/* Tells health how a request to <server> went: <why> is NULL for a valid
 * response head, else the failure (a short static text). */
void upstream_report(struct upstream_pool *pool, unsigned server, const char *why);

/* How many servers <pool> has (positions 0 to count - 1). */
unsigned upstream_server_count(const struct upstream_pool *pool);

/* The stable id (for stats) of server <server>, -1 when health has none. */
int upstream_server_id(const struct upstream_pool *pool, unsigned server);

/* "host:port" of server <server> (borrowed from the config). */
const char *upstream_server_name(const struct upstream_pool *pool, unsigned server);

#endif /* CLONEGATE_UPSTREAM_H */
