"""Signals (INTERFACE.md "Command line"): SIGTERM drains and exits 0
within drain_timeout, SIGHUP reloads without dropping a connection (a bad
file is rejected and the old configuration keeps serving), SIGUSR1 reopens
the access log."""

import re
import signal
import time
import uuid

import pytest

import helpers

LOG_WAIT = 5.0  # s a log line may take to appear
RELOAD_WAIT = 5.0  # s a reload may take to show


def refused(port):
    return not helpers.port_open(port, timeout=0.2)


def send_slow(cg, origin_list, ms):
    """Sends GET /slow?ms=<ms> on a new keep-alive connection and waits until
    a clone has it; returns the connection (the answer still to come)."""
    c = cg.conn(timeout=15)
    c.send(helpers.build_request("GET", f"/slow?ms={ms}"))
    helpers.wait_for(lambda: sum(o.count("/slow") for o in origin_list) == 1, timeout=5,
                     what="the clone to get /slow")
    return c


def test_sigterm_lets_the_request_in_flight_finish(origins, clonegate):
    os_ = origins(2)
    cg = clonegate({"server.drain_timeout": "5s"})
    c = send_slow(cg, os_, 1500)
    t = time.monotonic()
    cg.signal(signal.SIGTERM)
    # The listener closes at once: new connections are refused.
    helpers.wait_for(lambda: refused(cg.port), timeout=1.0, what="the listener to close")
    assert time.monotonic() - t < 1.0
    r = c.read_response(timeout=10)
    c.close()
    assert r.status == 200 and r.body == b"slow answer\n", r
    code = cg.proc.wait(5)
    took = time.monotonic() - t
    assert code == 0, cg.stderr_text()[-2000:]
    # It did not wait out the whole drain_timeout once the request was done.
    assert took < 3.5, f"exited {took:.2f} s after SIGTERM"


def test_sigterm_with_idle_keepalive_connection_exits_promptly(origins, clonegate):
    origins(1)
    cg = clonegate({"server.drain_timeout": "10s"})
    with cg.conn() as c:
        assert c.get("/echo").status == 200
        t = time.monotonic()
        cg.signal(signal.SIGTERM)
        code = cg.proc.wait(5)
        took = time.monotonic() - t
        assert code == 0, cg.stderr_text()[-2000:]
        # drain_timeout is 10 s: an idle connection must not hold the exit.
        assert took < 2.0, f"an idle connection held the exit for {took:.2f} s"
        assert c.closed_by_peer(1.0), "the idle connection was left open"


def test_sigterm_right_after_start_exits(origins, clonegate):
    """A SIGTERM that comes while the threads are still starting (health
    checks, workers) is not lost: every start ends with exit 0 at once."""
    origins(1)
    cg = clonegate({"server.workers": 2})
    for i in range(30):
        if i:
            cg.proc.start()
            # the listeners open before the threads start: signal the
            # moment they do, without the readiness poll's pauses
            deadline = time.monotonic() + 10
            while not helpers.port_open(cg.port, timeout=0.05):
                assert cg.proc.alive() and time.monotonic() < deadline, cg.stderr_text()[-2000:]
        cg.signal(signal.SIGTERM)
        code = cg.proc.wait(5)
        assert code == 0, f"start {i + 1}: exit {code}\n" + cg.stderr_text()[-2000:]


def test_drain_timeout_bounds_the_exit(origins, clonegate):
    os_ = origins(2)
    cg = clonegate({"server.drain_timeout": "1s"})
    c = send_slow(cg, os_, 5000)
    t = time.monotonic()
    cg.signal(signal.SIGTERM)
    code = cg.proc.wait(5)
    took = time.monotonic() - t
    try:
        assert code == 0, cg.stderr_text()[-2000:]
        assert 0.8 <= took < 1.8, f"exited {took:.2f} s after SIGTERM, drain_timeout 1s"
        # The request that outlived the drain got no complete answer.
        with pytest.raises((ConnectionError, helpers.ProtocolError, TimeoutError)):
            c.read_response(timeout=2)
    finally:
        c.close()


def test_sighup_switches_servers_and_keeps_connections(origins, clonegate):
    o1, o2 = origins(2)
    cg = clonegate({"cache.enabled": "no"}, servers=[o1])
    keep = cg.conn()
    try:
        r = keep.get("/echo?before")
        assert r.status == 200 and r.header("X-Origin") == "origin1"
        assert cg.get("/echo").header("X-Origin") == "origin1"

        cg.reload(clonegate.ini([o2], overrides={"cache.enabled": "no",
                                                  "server.listen": f"127.0.0.1:{cg.port}",
                                                  "stats.listen": cg.sections["stats"]["listen"]}))
        helpers.wait_for(lambda: cg.get("/echo?probe").header("X-Origin") == "origin2",
                         timeout=RELOAD_WAIT, what="requests to go to the new server list")
        # From now on only the new set answers new connections.
        for i in range(10):
            r = cg.get(f"/echo?after={i}")
            assert r.status == 200 and r.header("X-Origin") == "origin2", (i, r)
        # The connection opened before the reload still works.
        r = keep.get("/echo?after-reload")
        assert r.status == 200, r
        assert r.json()["target"] == "/echo?after-reload"
        assert cg.proc.alive()
    finally:
        keep.close()


def test_sighup_turning_the_cache_off_applies_at_once_and_says_so_truly(origins, clonegate):
    """enabled = no applies to the next request without a "takes a restart"
    warning; a changed memory is named alone as the key that takes one."""
    (o,) = origins(1)
    cg = clonegate({"cache.memory": "8m"}, servers=[o])
    target = "/c/reload-off?cc=max-age=60"
    assert cg.get(target).status == 200
    assert "; hit" in cg.get(target).header("Cache-Status")
    keep = {"server.listen": f"127.0.0.1:{cg.port}", "stats.listen": cg.sections["stats"]["listen"]}
    cg.reload(clonegate.ini([o], overrides=dict(keep, **{"cache.enabled": "no"})))
    helpers.wait_for(lambda: "fwd=bypass" in (cg.get(target).header("Cache-Status") or "")
                     or cg.get(target).header("Cache-Status") is None,
                     timeout=RELOAD_WAIT, what="the cache to be off")
    log = cg.stderr_text()
    assert "cache.enabled" not in log, log[-2000:]
    cg.reload(clonegate.ini([o], overrides=dict(keep, **{"cache.memory": "16m"})))
    helpers.wait_for(lambda: "reload: cache.memory changed" in cg.stderr_text(),
                     timeout=RELOAD_WAIT, what="the warning about memory")
    log = cg.stderr_text()
    assert "cache.enabled" not in log and "cache.redis" not in log, log[-2000:]


def test_sighup_with_broken_file_keeps_old_config(origins, clonegate):
    o1, o2 = origins(2)
    cg = clonegate({"cache.enabled": "no"}, servers=[o1])
    cg.allowed_errors.append(r"(?i)reload|config|\.ini")
    assert cg.get("/echo").header("X-Origin") == "origin1"
    good = cg.ini_text
    # servers points at o2, but the file is broken: none of it may apply.
    broken = good.replace(o1.addr, o2.addr) + "\n[server]\nworkers = banana\nno_such_key = 1\n"
    cg.reload(broken)
    helpers.wait_for(lambda: helpers.ERROR_LINE.search(cg.stderr_text()), timeout=LOG_WAIT,
                     what="an error line about the rejected reload")
    errors = [line for line in cg.stderr_text().splitlines() if helpers.ERROR_LINE.match(line)]
    assert any(re.search(r"(?i)reload|\.ini", line) for line in errors), errors
    assert cg.proc.alive()
    with cg.conn() as c:
        for i in range(5):
            r = c.get(f"/echo?still={i}")
            assert r.status == 200 and r.header("X-Origin") == "origin1", r
    assert o2.count("/echo") == 0
    # Fixing the file and reloading again works.
    cg.reload(good.replace(o1.addr, o2.addr))
    helpers.wait_for(lambda: cg.get("/echo?fixed").header("X-Origin") == "origin2",
                     timeout=RELOAD_WAIT, what="the fixed file to apply")


def test_sigusr1_reopens_the_access_log(origins, clonegate, tmp_path):
    origins(1)
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    cg = clonegate({"server.access_log": str(path), "cache.enabled": "no"})

    def has(p, needle):
        try:
            return needle in p.read_text()
        except FileNotFoundError:
            return False

    t1 = "/echo?first=" + uuid.uuid4().hex
    assert cg.get(t1).status == 200
    helpers.wait_for(lambda: has(path, t1), timeout=LOG_WAIT, what="the first line")

    path.rename(rotated)
    t2 = "/echo?between=" + uuid.uuid4().hex
    assert cg.get(t2).status == 200
    # Until the reopen, lines go on to the renamed file (the open one).
    helpers.wait_for(lambda: has(rotated, t2), timeout=LOG_WAIT, what="a line in the rotated file")

    cg.signal(signal.SIGUSR1)
    helpers.wait_for(lambda: path.exists(), timeout=LOG_WAIT, what="a new file at the path")
    t3 = "/echo?after=" + uuid.uuid4().hex
    assert cg.get(t3).status == 200
    helpers.wait_for(lambda: has(path, t3), timeout=LOG_WAIT, what="the line in the new file")
    assert not has(rotated, t3)
    assert not has(path, t1) and not has(path, t2)
    assert cg.proc.alive()


def test_sigterm_lets_answers_a_slow_reader_has_not_read_yet_arrive_whole(origins, clonegate):
    # pipelined answers wait in the proxy for a client that reads nothing
    # yet; a drain must send what was answered, whole, then close
    import socket

    origins(1)
    cg = clonegate({"server.drain_timeout": "10s", "server.workers": 1})
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # little room in the kernel
    s.settimeout(10)
    s.connect(("127.0.0.1", cg.port))
    try:
        s.sendall(helpers.build_request("GET", "/bytes?n=30000") * 300)
        time.sleep(1.0)  # answers pile up in the proxy (and its socket)
        cg.signal(signal.SIGTERM)
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # bounded: until the close or the deadline
            piece = s.recv(1 << 20)
            if not piece:
                break
            data += piece
    finally:
        s.close()
    answers = helpers.parse_responses(data)  # raises if the last one is cut
    assert answers and all(r.status == 200 and len(r.body) == 30000 for r in answers)
    assert cg.proc.wait(10) == 0
