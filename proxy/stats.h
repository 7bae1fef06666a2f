/*
 * stats: the admin listener ([stats] listen) and what it shows.
 *
 * Serves, on the health thread's event_base so no worker is ever blocked:
 *   GET  /stats                         JSON: version, uptime, servers
 *   GET  /health                        200 while serving, 503 while draining
 *   POST /servers/<host:port>/drain     no new requests for that server
 *   POST /servers/<host:port>/ready     takes requests again
 * It never serves proxy traffic, and the proxy listeners never serve these
 * paths.
 */
#ifndef CLONEGATE_STATS_H
#define CLONEGATE_STATS_H

#include "config.h"

struct event_base;
struct health;
struct stats_admin;

/*
 * Opens the admin listener(s) of <cfg> on <base> (the health thread's).
 * <hl> gives the servers' state; <draining> points at the process's atomic
 * draining flag. Returns NULL with the reason logged; when <cfg> names no
 * admin listener, returns a harmless object that listens nowhere. Main
 * thread, before the health thread starts.
 */
struct stats_admin *stats_admin_start(struct event_base *base, const struct config *cfg,
                                      struct health *hl, const int *draining);

/* Closes the listener(s). Main thread, with the health thread stopped. */
void stats_admin_free(struct stats_admin *a);

#endif /* CLONEGATE_STATS_H */
