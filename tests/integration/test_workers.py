"""Worker threads and the connection limit ([server] workers,
max_connections; DESIGN.md "Threads"): every worker serves, auto starts one
per online CPU, and beyond max_connections accepting pauses until a
connection closes."""

import os
import socket
import threading
import time

import pytest

import helpers

CONCURRENT = 64  # client connections opened at once
PER_CONN = 4  # requests on each
BODY = 256 * 1024  # bytes per answer, so each serving thread moves MiBs
SERVED_BYTES = 1 << 20  # bytes of I/O that show a thread served traffic


def tasks(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def task_io(pid):
    """{tid: bytes read + written by that thread}, from /proc/PID/task/TID/io."""
    out = {}
    for tid in tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                fields = dict(line.split(":") for line in f.read().splitlines())
        except FileNotFoundError:
            continue
        out[tid] = int(fields["rchar"]) + int(fields["wchar"])
    return out


def run_concurrent(cg, n=CONCURRENT, per_conn=PER_CONN, target="/bytes?n=%d" % BODY):
    """n keep-alive connections at once, per_conn requests each; returns the
    list of problems (empty when every answer was a whole 200)."""
    problems = []
    barrier = threading.Barrier(n, timeout=20)

    def client(i):
        try:
            barrier.wait()
            with cg.conn(timeout=20) as c:
                for k in range(per_conn):
                    r = c.get(f"{target}&c={i}&k={k}")
                    if r.status != 200 or r.body != helpers.pattern_bytes(BODY):
                        problems.append((i, k, r.status, len(r.body)))
        except Exception as e:  # reported, not raised in a thread
            problems.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        problems.append("client threads still running after 60 s")
    return problems


def test_two_workers_both_serve(origins, clonegate):
    origins(2)
    cg = clonegate({"server.workers": 2, "cache.enabled": "no"})
    assert cg.get("/echo").status == 200
    # The main thread and two workers at least.
    assert len(tasks(cg.pid)) >= 3, tasks(cg.pid)
    before = task_io(cg.pid)
    problems = run_concurrent(cg)
    assert not problems, problems[:10]
    after = task_io(cg.pid)
    moved = {tid: after[tid] - before.get(tid, 0) for tid in after if tid != cg.pid}
    serving = [tid for tid, n in moved.items() if n >= SERVED_BYTES]
    assert len(serving) >= 2, f"bytes moved per thread (main excluded): {moved}"


def test_workers_auto_starts_one_per_cpu(origins, clonegate):
    origins(2)
    cg = clonegate({"server.workers": "auto", "cache.enabled": "no"})
    cpus = min(os.sysconf("SC_NPROCESSORS_ONLN"), 64)
    # the listeners open before the worker threads start: wait for them
    helpers.wait_for(lambda: len(tasks(cg.pid)) >= 1 + cpus, timeout=10,
                     what=f"{1 + cpus} threads (main + one worker per CPU)")
    problems = run_concurrent(cg, n=16, per_conn=2)
    assert not problems, problems[:10]


def test_max_connections_pauses_accept(origins, clonegate):
    origins(1)
    limit = 5
    cg = clonegate({"server.max_connections": limit, "server.workers": 1,
                    "cache.enabled": "no"})
    cg.allowed_errors.append(r"(?i)max_connections")
    idle = []
    try:
        for i in range(limit):
            c = cg.conn(timeout=5)
            idle.append(c)
            assert c.get(f"/echo?idle={i}").status == 200  # accepted, now idle
        # The sixth connects (the kernel queues it) but is not served.
        sixth = socket.create_connection(("127.0.0.1", cg.port), timeout=5)
        try:
            sixth.sendall(helpers.build_request("GET", "/echo?sixth"))
            sixth.settimeout(1.0)
            with pytest.raises(socket.timeout):
                data = sixth.recv(65536)
                pytest.fail(f"served beyond max_connections: {data[:200]!r}")
            # The idle five are still served meanwhile.
            assert idle[1].get("/echo?still").status == 200
            # One closes: the sixth is accepted and answered.
            idle.pop(0).close()
            sixth.settimeout(5.0)
            r = read_answer(sixth)
            assert r.status == 200 and r.json()["target"] == "/echo?sixth", r
        finally:
            sixth.close()
    finally:
        for c in idle:
            c.close()
    # With the limit free again, new connections are served at once.
    assert cg.get("/echo?after").status == 200


def answer_on_new_connection(port, target, deadline_s=5):
    """Sends GET <target> on a new connection and reads the answer up to the
    close; returns (answer bytes, seconds from connect to the close)."""
    t0 = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    try:
        sock.sendall(helpers.build_request("GET", target))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, time.monotonic() - t0
            data += chunk
    finally:
        sock.close()


def test_max_connections_refuses_past_queue_timeout(origins, clonegate):
    """A client waits in the listen queue at most queue_timeout; then it gets
    503 and the refusal is counted. Freeing a slot serves again at once."""
    origins(1)
    limit = 2
    cg = clonegate({"server.max_connections": limit, "server.workers": 1,
                    "server.queue_timeout": "1s", "cache.enabled": "no"})
    cg.allowed_errors.append(r"(?i)max_connections")
    before = cg.stats()["connections"]
    assert before["refused"] == 0, before
    idle = []
    try:
        for i in range(limit):
            c = cg.conn(timeout=5)
            idle.append(c)
            assert c.get(f"/echo?idle={i}").status == 200
        data, waited = answer_on_new_connection(cg.port, "/echo?third")
        r, _ = helpers.parse_response(data, 0, "GET", eof=True)
        assert r.status == 503, data[:300]
        assert r.header("retry-after") == "1", r.headers
        assert r.header("connection") == "close", r.headers
        assert b"too many connections" in r.body, r.body
        # it waited (queue_timeout, checked every 100 ms), but not for ever
        assert 0.9 <= waited <= 3.0, waited
        # refusing is fast once the limit has held past queue_timeout
        for _ in range(3):
            data, took = answer_on_new_connection(cg.port, "/echo?more")
            assert data.startswith(b"HTTP/1.1 503 "), data[:200]
            assert took < 0.5, took
        # the connections within the limit were served all along
        assert idle[0].get("/echo?still").status == 200
        after = cg.stats()["connections"]
        assert after["refused"] == before["refused"] + 4, after
        assert after["accept_pauses"] >= 1, after
        # a slot frees: the next client is served, not refused
        idle.pop().close()
        helpers.wait_for(lambda: cg.stats()["connections"]["open"] <= limit - 1, timeout=5,
                         what="the closed connection counted out")
        assert cg.get("/echo?after").status == 200
        assert cg.stats()["connections"]["refused"] == after["refused"]
    finally:
        for c in idle:
            c.close()


def cpu_seconds(pid):
    """utime + stime of every thread of <pid>, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slow_requests(cg, n, ms):
    """n connections, each with a GET /slow?ms=<ms> sent and not yet answered."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", cg.port), timeout=10)
        s.sendall(helpers.build_request("GET", f"/slow?ms={ms}&i={i}"))
        socks.append(s)
    return socks


def read_answer(s, deadline_s=10):
    """The first answer read from socket <s> (waiting at most <deadline_s>)."""
    data = b""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            r, _ = helpers.parse_response(data, 0, "GET")
            return r
        except helpers.Incomplete:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    r, _ = helpers.parse_response(data, 0, "GET", eof=True)
    return r


@pytest.mark.parametrize("busy_poll_us", [50, 0])
def test_busy_naps_serve_many_concurrent_clients(origins, clonegate, busy_poll_us):
    # 32 clients at once keep the worker busy enough to nap between turns
    # (busy_nap_us, the longest allowed); every answer must still come,
    # whole and in time, with or without the polling after a wake-up.
    origins(2)
    cg = clonegate({"server.workers": 1, "server.busy_nap_us": 1000,
                    "server.busy_poll_us": busy_poll_us, "cache.enabled": "no"})
    started = time.monotonic()
    problems = run_concurrent(cg, n=32, per_conn=20, target="/bytes?n=%d" % BODY)
    assert not problems, problems[:10]
    assert time.monotonic() - started < 30


def test_busy_naps_serve_many_concurrent_cache_hits(origins, clonegate):
    # Hits are answered at once, so no request stays in progress: the worker
    # counts as busy from the socket events of a turn, and naps the longest
    # allowed between turns. Every hit must still come, whole, in time.
    origins(1)
    cg = clonegate({"server.workers": 1, "server.busy_nap_us": 1000, "server.busy_poll_us": 0})
    target = "/c/nap-hit?cc=max-age%3D60&size=2000"
    first = cg.get(target)
    assert first.status == 200 and len(first.body) == 2000, first
    problems = []
    barrier = threading.Barrier(32, timeout=20)

    def client(i):
        try:
            barrier.wait()
            with cg.conn(timeout=20) as c:
                for k in range(50):
                    r = c.get(target)
                    if (r.status != 200 or r.body != first.body or
                            "hit" not in r.header("Cache-Status", "")):
                        problems.append((i, k, r.status, len(r.body)))
        except Exception as e:  # reported, not raised in a thread
            problems.append((i, repr(e)))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, started + 60 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads still running after 60 s"
    assert not problems, problems[:10]
    assert time.monotonic() - started < 30


def test_busy_worker_stops_napping_when_requests_stall(origins, clonegate):
    # Twelve requests in progress make the worker busy, but once their clone
    # goes quiet for a millisecond it sleeps in the kernel instead of
    # napping: stalled requests cost no CPU. (Napping on would burn about
    # half a CPU here: 50 us naps between 50 us polls.)
    origins(1)
    cg = clonegate({"server.workers": 1, "server.busy_nap_us": 50,
                    "server.busy_poll_us": 50, "cache.enabled": "no"})
    assert cg.get("/echo").status == 200
    socks = slow_requests(cg, 12, 4000)
    try:
        time.sleep(0.5)  # all twelve forwarded, the clone now silent
        before = cpu_seconds(cg.pid)
        time.sleep(2.0)
        used = cpu_seconds(cg.pid) - before
        assert used < 0.2, f"{used:.2f} s of CPU in 2 s with every request stalled"
        for s in socks:
            r = read_answer(s)
            assert r.status == 200 and r.body == b"slow answer\n", r
    finally:
        for s in socks:
            s.close()
