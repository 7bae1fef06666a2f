/*
 * health: whether each clone may take requests, from active checks and
 * from what workers see on real traffic.
 *
 * One health thread, with its own event_base, checks every server: every
 * health.interval it opens a connection, sends "GET path" and reads the
 * status line within health.timeout. health.fall failures in a row take a
 * server out, health.rise passes in a row bring it back. Workers read each
 * server's state with one atomic load per pick (health_server_usable) and
 * report failures and successes on their own traffic; health.fall failures
 * in a row there take a server out before the next check comes round, and
 * only active checks bring it back. An operator may drain a server (no new
 * requests) and make it ready again. Server states are found by address
 * and outlive reloads that keep naming them; a server a reload leaves out
 * starts afresh if a later reload names it again. The thread owns the
 * checks, the states are shared through atomics and a per-server mutex for
 * the last error text.
 */
#ifndef CLONEGATE_HEALTH_H
#define CLONEGATE_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct event_base;
struct health;
struct health_server;

/* A server's state as the admin listener shows it. */
struct health_server_view {
    int id;                      /* stable id (health_server_id) */
    char addr[CONFIG_ADDR_TEXT]; /* "host:port" */
    bool up;                     /* passing (or not yet failed) */
    bool draining;               /* taken out by an operator */
    bool in_config;              /* still named by the configuration */
    uint64_t checks_passed;      /* active checks, since start or it was (re)added */
    uint64_t checks_failed;
    uint64_t traffic_failures; /* failures seen on real requests */
    unsigned consecutive;      /* passes (when down) or failures (when up) in a row */
    int64_t last_change;       /* unix seconds of the last up/down/drain change, 0 none yet */
    char last_error[96];       /* why the last check or request failed, "" none */
};

/* Creates the health state for <cfg>'s servers (all up, to be checked at
 * once) and its thread's event_base; the thread starts with health_start().
 * evthread_use_pthreads() must have been called. Returns NULL when out of
 * memory. Main thread. */
struct health *health_new(struct config *cfg);

/* Starts the health thread. 0 or -1 (errno). Main thread. */
int health_start(struct health *hl);

/* The health thread's event_base (thread-safe: others may event_active()
 * on it); the admin listener runs there too. */
struct event_base *health_base(struct health *hl);

/* Told, by health_reload() on its caller's thread, of the stable <id> of
 * each server that starts afresh, so figures kept elsewhere by id can
 * start again too. */
typedef void (*health_fresh_fn)(void *arg, int id);

/* Has health_reload() call <fn>(<arg>, id) for each server it starts
 * afresh (<fn> NULL: nobody is told). Main thread, before the first
 * health_reload(). */
void health_set_on_fresh(struct health *hl, health_fresh_fn fn, void *arg);

/* Applies a reloaded <cfg>: servers named by both the configuration in
 * force and <cfg> keep their state and counters; the others it names (new
 * ones, and ones an earlier reload left out) start down with zero counters,
 * not drained, and come up after health.rise passing checks; those no
 * longer named stop being checked; the set health_fresh_fn is told of
 * each that starts afresh. Any thread, one call at a time. */
void health_reload(struct health *hl, struct config *cfg);

/* Stops the health thread (and with it the admin listener's loop); safe to
 * call twice or before health_start(). Main thread. */
void health_stop(struct health *hl);

/* Stops the thread and frees everything. Main thread, after the workers. */
void health_free(struct health *hl);

/* The shared state of the server at <addr>, or NULL when unknown. Valid
 * until health_free(). Any thread. */
struct health_server *health_server_find(struct health *hl, const struct config_addr *addr);

/* The server's stable id, 0..255, the same across reloads. */
int health_server_id(const struct health_server *hs);

/* Whether the server may take a new request (up and not draining). */
bool health_server_usable(const struct health_server *hs);

/*
 * The share of <weight> the server takes now: all of it, or during
 * health.slow_start after coming up, a part growing with the time since
 * (at least 1). <now_ms> is a monotonic time in ms. Any thread.
 */
unsigned health_server_weight(const struct health_server *hs, unsigned weight, int64_t now_ms);

/* A request to the server failed at the connection or protocol level
 * (<why>: a short static text). Worker threads. */
void health_report_failure(struct health_server *hs, const char *why);

/* A request to the server got a valid response head. Worker threads. */
void health_report_success(struct health_server *hs);

/* Drains (<drain> true) or readies the server at <addr>. Returns 0, or -1
 * when no server has that address. Any thread. */
int health_set_draining(struct health *hl, const char *addr, bool drain);

/* Copies up to <max> server states into <out>, configured servers first;
 * returns how many. Any thread. */
size_t health_snapshot(struct health *hl, struct health_server_view *out, size_t max);

/* Monotonic milliseconds (the clock health_server_weight() expects). */
int64_t health_now_ms(void);

#endif /* CLONEGATE_HEALTH_H */
