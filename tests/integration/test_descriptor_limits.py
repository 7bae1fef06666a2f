"""Running out of file descriptors (issue 3, bad input of any kind): the
proxy's shortage is its own, never the clones'. Health checks that cannot
open a socket give no verdict, a request that cannot get a connection to a
clone gets 503 without counting against the clone, and the admin listener
pauses accepting instead of spinning on accept() and flooding the log.
Also: an admin client that sends half a request is let go.

Each test lowers the running proxy's descriptor limit with prlimit(2) after
it started (the proxy raises its own limit at start), holds the descriptors
with idle client connections, and lets them go before it ends.
"""

import json
import os
import re
import resource
import socket
import time

import helpers

BASE = {"server.workers": 1, "cache.enabled": "no"}


def fds_open(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def limit_fds(pid, spare):
    """Sets <pid>'s soft descriptor limit to what it has open plus <spare>."""
    soft = fds_open(pid) + spare
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def hold_connections(port, count, deadline_s=10.0):
    """<count> idle connections to <port>, sending nothing."""
    socks = []
    t_end = time.monotonic() + deadline_s
    while len(socks) < count and time.monotonic() < t_end:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            break
        socks.append(s)
    return socks


def release(socks):
    for s in socks:
        s.close()


def test_out_of_descriptors_the_admin_listener_pauses_without_flooding_the_log(origins,
                                                                               clonegate):
    origins(1)
    cg = clonegate(dict(BASE))
    assert cg.admin("/stats").status == 200
    limit_fds(cg.pid, 8)
    socks = hold_connections(cg.stats_port, 40)
    try:
        time.sleep(2.0)  # accept() fails all this time: once warned, paused
        warnings = [line for line in cg.stderr_text().splitlines() if "accept" in line]
        assert len(warnings) <= 3, f"{len(warnings)} accept lines, first: {warnings[:2]}"
    finally:
        release(socks)
    # once descriptors are free again, the admin listener answers
    t_end = time.monotonic() + 5
    while True:
        try:
            r = cg.admin("/stats", timeout=2)
            break
        except (OSError, TimeoutError):
            if time.monotonic() > t_end:
                raise
            time.sleep(0.2)
    assert r.status == 200


def test_out_of_descriptors_health_checks_do_not_take_the_clones_down(origins, clonegate):
    origins(2)
    cg = clonegate(dict(BASE, **{"health.interval": "200ms", "health.timeout": "100ms", "health.fall": 2,
                                 "server.idle_timeout": "60s", "server.header_timeout": "60s"}))
    assert cg.get("/echo").status == 200
    limit_fds(cg.pid, 6)
    socks = hold_connections(cg.port, 30)
    try:
        time.sleep(1.5)  # seven check rounds that cannot open a socket
    finally:
        release(socks)
    stats = json.loads(cg.admin("/stats").body)
    states = {s["address"]: s["up"] for s in stats["servers"]}
    assert all(states.values()), f"clones taken down: {states}"
    assert not re.search(r"server \S+ down", cg.stderr_text())
    assert cg.get("/echo").status == 200


def test_out_of_descriptors_a_request_gets_503_and_the_clone_no_failure(origins, clonegate):
    (o,) = origins(1)
    # no pooled connection to the clone: the second request needs a socket
    cg = clonegate(dict(BASE, **{"health.interval": "60s", "server.idle_timeout": "60s",
                                 "server.header_timeout": "60s", "upstream.keepalive": 0}))
    before = json.loads(cg.admin("/stats").body)["servers"][0]["failures"]
    with cg.conn(timeout=5) as c:
        assert c.get("/echo").status == 200  # the connection is accepted
        soft = limit_fds(cg.pid, 2)
        socks = []
        try:
            # idle clients take what is left (accepting resumes every 100 ms)
            socks = hold_connections(cg.port, 10, deadline_s=3)
            t_end = time.monotonic() + 3
            while fds_open(cg.pid) < soft and time.monotonic() < t_end:
                time.sleep(0.05)
            assert fds_open(cg.pid) == soft
            c.send(helpers.build_request("GET", "/echo"))
            r = c.read_response()
        finally:
            release(socks)
    assert r.status == 503, r.raw[:300]
    time.sleep(0.3)
    after = json.loads(cg.admin("/stats").body)["servers"][0]["failures"]
    assert after == before


def test_an_admin_client_that_sends_half_a_request_is_let_go(origins, clonegate):
    origins(1)
    cg = clonegate(dict(BASE))
    assert cg.admin("/stats").status == 200
    s = socket.create_connection((cg.stats_host, cg.stats_port), timeout=20)
    try:
        s.sendall(b"GET /stats HTTP/1.1\r\n")
        t0 = time.monotonic()
        try:
            got = s.recv(4096)  # the proxy closes: b"" (or an error answer)
        except ConnectionResetError:
            got = b""
        took = time.monotonic() - t0
    finally:
        s.close()
    assert took < 15, f"held {took:.1f} s"
    assert got == b"" or got.startswith(b"HTTP/1.1 4")
