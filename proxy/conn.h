/*
 * conn: one client connection, from accept to close.
 *
 * Reads requests, parses their heads (http), sends each to a clone through
 * an upstream connection and streams the response back, keeping the
 * connection alive between requests, answering pipelined requests in order,
 * tunnelling upgraded connections, and enforcing the timeouts and limits of
 * the config. A conn belongs to its worker's thread and is freed by
 * conn_close(). Never speaks to Redis.
 */
#ifndef CLONEGATE_CONN_H
#define CLONEGATE_CONN_H

#include <sys/socket.h>
#include <sys/queue.h>

struct tls_server;
struct worker;

/* Takes ownership of the accepted socket <fd> (non-blocking) from the peer
 * <sa>; on failure the socket is closed. With <tls> (the [tls] contexts; the
 * connection takes a reference) it speaks HTTPS. Worker thread. */
void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, struct tls_server *tls);

/* Closes <w>'s idle connections and marks the busy ones to close once
 * their current response is sent (drain). Worker thread. */
void conn_drain_all(struct worker *w);

/* Frees every connection of <w> at once (the worker is going away). */
void conn_close_all(struct worker *w);

#endif /* CLONEGATE_CONN_H */
