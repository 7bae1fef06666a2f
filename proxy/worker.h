/*
 * worker: one event-loop thread and everything it owns.
 *
 * Each worker has its own event_base, its own listening sockets on the
 * shared ports (SO_REUSEPORT), its own upstream pool and its own client
 * connections; workers share nothing mutable but the atomics named below.
 * main.c starts and stops workers and hands them a new configuration on
 * reload through worker_reload(), which wakes the worker's loop through an
 * eventfd; the worker swaps its pointer there, in its own thread. Linux-specific socket calls
 * (SO_REUSEPORT, accept4) live here and nowhere else.
 */
#ifndef CLONEGATE_WORKER_H
#define CLONEGATE_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "config.h"
#include "log.h"

struct cache;
struct cache_mailbox;
struct conn;
struct event;
struct event_base;
struct evconnlistener;
struct health;
struct purge;
struct tls_server;
struct stats_worker;
struct store_redis;
struct upstream_pool;

TAILQ_HEAD(worker_conn_list, conn);

/* What every worker of the process sees (owned by main). */
struct worker_shared {
    int connections;     /* atomic: open client connections, all workers */
    int draining;        /* atomic: 1 once SIGTERM/SIGINT arrived */
    struct cache *cache; /* owned by main: the L1 store and coalescing; NULL when
                            cache.enabled is off at start */
    struct purge *purge; /* owned by main: purges and their announcements; NULL with no cache */
    pthread_mutex_t tls_lock; /* guards tls */
    struct tls_server *tls;   /* referenced by main: the [tls] contexts now in force;
                                 swapped on reload; NULL without [tls] */
};

struct worker {
    unsigned id;                  /* 0..workers-1 */
    pthread_t thread;             /* started by worker_start() */
    struct event_base *base;      /* owned */
    struct worker_shared *shared; /* borrowed from main */
    struct health *health;        /* borrowed from main; outlives the worker */
    struct config *cfg;           /* referenced; swapped on reload in this thread */
    struct config *next_cfg;      /* referenced; handed over by worker_reload() */
    pthread_mutex_t next_lock;    /* guards next_cfg between main and this thread */
    struct upstream_pool *pool;   /* owned; retired and replaced on reload */
    struct evconnlistener *listeners[2 * CONFIG_MAX_LISTEN]; /* owned: plain, then TLS */
    unsigned listener_count;
    bool accept_paused;                /* listeners disabled at max_connections */
    bool refusing;                     /* listeners on again, but only to refuse (503) */
    int64_t paused_at_ms;              /* when max_connections paused accepting */
    int64_t pause_logged_ms;           /* when that was last logged */
    int64_t refuse_logged_ms;          /* when refusing was last logged */
    struct worker_conn_list conns;     /* every open client connection */
    unsigned conn_count;               /* length of conns */
    unsigned exchanges_open;           /* requests between their first byte and their end */
    int wake_fd;                       /* owned eventfd; written by worker_reload()/_stop() */
    struct event *wake_ev;             /* owned; reads wake_fd */
    int stop_requested;                /* atomic; set by worker_stop() */
    struct event *tick_ev;             /* owned; 100 ms: log flush, accept resume */
    struct event *drain_deadline_ev;   /* owned; drain_timeout expiry */
    const struct timeval *header_tv;   /* common timeout for header_timeout */
    const struct timeval *idle_tv;     /* common timeout for idle_timeout */
    const struct timeval *connect_tv;  /* common timeout for upstream.connect_timeout */
    const struct timeval *response_tv; /* common timeout for upstream.response_timeout */
    bool draining;                     /* this worker is draining */
    struct log_access_buf access;      /* this worker's pending access lines */
    struct stats_worker *stats;        /* borrowed from main: outlives the admin listener */
    struct store_redis *redis;         /* owned: this worker's Redis link; NULL without one */
    struct cache_mailbox *mailbox;     /* owned: coalesced waiters woken for this worker */
};

/*
 * Creates worker <id> with its event_base and listeners for <cfg> (a
 * reference is taken). <hl> and <stats> (this worker's counters) are
 * borrowed and must outlive the worker. Returns NULL with the reason logged. Main thread.
 */
struct worker *worker_new(unsigned id, struct config *cfg, struct worker_shared *shared,
                          struct health *hl, struct stats_worker *stats);

/* Starts the worker's thread. 0 or -1. Main thread. */
int worker_start(struct worker *w);

/* Hands <cfg> to the worker (a reference is taken); it applies it to new
 * requests. Any thread. */
void worker_reload(struct worker *w, struct config *cfg);

/* Asks the worker to drain (stop accepting, finish in-flight requests, then
 * leave its loop, or leave at drain_timeout). Any thread. */
void worker_stop(struct worker *w);

/* Waits for the thread to end and frees the worker. Main thread. */
void worker_join_free(struct worker *w);

/* Called by conn when a connection closes: counts it and resumes accepting
 * when it was paused at max_connections. Worker thread. */
void worker_conn_closed(struct worker *w, struct conn *c);

#endif /* CLONEGATE_WORKER_H */
