"""Clones that fail (INTERFACE.md "HTTP behaviour"): nobody listening,
refusing, too slow, answering garbage, closing early or mid-body, dying
under load. The client gets 502 / 504 or the answer of another clone, never
a complete-looking wrong response, and the next request works."""

import socket
import threading
import time
import uuid

import pytest

import helpers
from helpers import build_request

# Health checks out of the way: these tests are about the forwarding path,
# so no active check may take a clone out (or put it back) while they run.
QUIET_HEALTH = {"health.interval": "60s", "health.timeout": "1s", "health.fall": 100}
# Log lines the proxy may write about the failures these tests provoke.
UPSTREAM_ERRORS = r"(?i)upstream|clone|connect|refused|reset|timed? ?out|502|504|invalid"


def world(clonegate, servers, **overrides):
    ini = dict(QUIET_HEALTH)
    ini.update({"upstream.retries": 1})
    ini.update(overrides)
    cg = clonegate(ini, servers=servers)
    cg.allowed_errors.append(UPSTREAM_ERRORS)
    return cg


def dead_addr():
    """"127.0.0.1:port" where nothing listens."""
    port = helpers.free_port()
    assert not helpers.port_open(port)
    return f"127.0.0.1:{port}"


def assert_next_request_works(cg, origin_names):
    r = cg.get("/echo?after=" + uuid.uuid4().hex)
    assert r.status == 200, r
    assert r.header("X-Origin") in origin_names, r


def slow_total(os_, path):
    return sum(o.count(path) for o in os_)


class Closer:
    """A clone that accepts, reads a request head and closes without
    answering. .requests: the request lines it got (health checks aside)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.requests = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with s:
                s.settimeout(2.0)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                line = data.split(b"\r\n", 1)[0].decode("latin-1")
                if b"\r\n\r\n" in data and " /health " not in line:
                    with self.lock:
                        self.requests.append(line)

    def stop(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def closer():
    c = Closer()
    yield c
    c.stop()


def test_nobody_listening_gives_502(origins, clonegate):
    cg = world(clonegate, [dead_addr()])
    t = time.monotonic()
    r = cg.get("/echo")
    took = time.monotonic() - t
    assert r.status == 502, r
    assert took < 1.5, took  # a refused connect is not a connect timeout


def test_dead_clone_is_retried_on_the_good_one(origins, clonegate):
    (o,) = origins(1)
    dead = dead_addr()
    cg = world(clonegate, [dead, o])
    # Round robin sends every other first try to the dead clone: each must be
    # retried on the good one.
    for i in range(20):
        r = cg.get(f"/echo?i={i}")
        assert r.status == 200, (i, r)
        assert r.header("X-Origin") == "origin1", (i, r)
        assert r.json()["target"] == f"/echo?i={i}"
    with cg.conn() as c:
        for i in range(10):
            r = c.get(f"/echo?ka={i}")
            assert r.status == 200 and r.header("X-Origin") == "origin1", (i, r)
    assert o.count("/echo") == 30


def test_every_clone_refusing_gives_502_quickly(origins, clonegate):
    cg = world(clonegate, [dead_addr(), dead_addr()], **{"upstream.connect_timeout": "2s"})
    t = time.monotonic()
    r = cg.get("/echo")
    took = time.monotonic() - t
    assert r.status == 502, r
    assert took < 1.0, f"502 took {took:.2f} s: refused connects must fail at once"


def test_response_timeout_gives_504_and_no_retry(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_, **{"upstream.response_timeout": "1s"})
    t = time.monotonic()
    r = cg.get("/slow?ms=4000", timeout=10)
    took = time.monotonic() - t
    assert r.status == 504, r
    assert 0.9 <= took < 1.8, f"504 after {took:.2f} s, want about 1 s"
    # A timed-out request is not tried again on the other clone.
    assert slow_total(os_, "/slow") == 1
    assert_next_request_works(cg, {"origin1", "origin2"})
    assert slow_total(os_, "/slow") == 1


def test_garbage_answer_gives_502(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_)
    r = cg.get("/garbage")
    assert r.status == 502, r
    assert b"THIS IS NOT HTTP" not in r.raw
    assert_next_request_works(cg, {"origin1", "origin2"})


def read_until_eof(port, raw, timeout=5.0):
    """Sends <raw> on a fresh connection, reads until the server closes.
    Returns the bytes; fails if the connection is still open at <timeout>."""
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"connection still open after {timeout} s: {data[:300]!r}"
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def test_truncated_body_reaches_client_as_truncated(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_)
    for i in range(2):  # once per clone
        data = read_until_eof(cg.port, helpers.build_request("GET", f"/truncated?i={i}"))
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
        # The head and what came of the body, then the close: never a
        # response that parses as complete (whatever its framing).
        with pytest.raises(helpers.ProtocolError):
            helpers.parse_responses(data, ["GET"], eof=True)
        head, _, body = data.partition(b"\r\n\r\n")
        assert len(body) < 1000 + 200, len(body)
        assert_next_request_works(cg, {"origin1", "origin2"})


def test_truncated_body_on_keepalive_connection_is_closed(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_)
    with cg.conn(timeout=5) as c:
        r = c.get("/echo?first")
        assert r.status == 200
        c.send(helpers.build_request("GET", "/truncated"))
        # Closed before the promised length: an incomplete response.
        with pytest.raises((ConnectionError, helpers.ProtocolError)) as e:
            c.read_response()
        assert "truncated" in str(e.value) or "closed mid-response" in str(e.value), e.value
    assert_next_request_works(cg, {"origin1", "origin2"})


def test_get_closed_early_is_retried_on_the_other_clone(origins, clonegate, closer):
    (o,) = origins(1)
    cg = world(clonegate, [closer, o])
    for i in range(6):
        r = cg.get(f"/echo?ce={i}")
        assert r.status == 200, (i, r)
        assert r.header("X-Origin") == "origin1", (i, r)
        assert r.json()["target"] == f"/echo?ce={i}"
    # Round robin gave the closer some of the first tries.
    assert len(closer.requests) >= 1, closer.requests
    assert o.count("/echo") == 6


def test_post_closed_early_gives_502_without_retry(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_)
    body = b"p" * 1000
    r = cg.request("POST", "/close-early", body=body)
    assert r.status == 502, r
    # Not idempotent: sent once, never again to the other clone.
    assert slow_total(os_, "/close-early") == 1
    assert_next_request_works(cg, {"origin1", "origin2"})
    assert slow_total(os_, "/close-early") == 1


def test_get_close_early_on_every_clone_gives_502(origins, clonegate):
    os_ = origins(2)
    cg = world(clonegate, os_)
    r = cg.get("/close-early")
    assert r.status == 502, r
    # retries = 1: the first try and one retry, no more.
    assert 1 <= slow_total(os_, "/close-early") <= 2
    assert_next_request_works(cg, {"origin1", "origin2"})


THREADS = 20
PER_THREAD = 50
KILL_AFTER = 300  # requests answered before origin2 is killed


@pytest.mark.hard_timeout(120)
def test_responses_never_cross_under_load_and_kill9(origins, clonegate):
    o1, o2 = origins(2)
    cg = world(clonegate, [o1, o2])
    run_id = uuid.uuid4().hex[:8]
    lock = threading.Lock()
    done = [0]
    reached = threading.Event()
    killed_at = [None]
    problems = []  # (target, what)
    answers = []  # (target, origin, started)

    def client(tid):
        conn = None
        try:
            for i in range(PER_THREAD):
                target = f"/echo?run={run_id}&t={tid}&i={i}"
                started = time.monotonic()
                try:
                    if conn is None:
                        conn = cg.conn(timeout=10)
                    r = conn.get(target)
                except (OSError, ConnectionError, helpers.ProtocolError) as e:
                    problems.append((target, f"no response: {e!r}"))
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if r.status != 200:
                    problems.append((target, f"status {r.status}: {r!r}"))
                else:
                    got = r.json().get("target")
                    if got != target:
                        problems.append((target, f"answer for {got}"))
                    answers.append((target, r.header("X-Origin"), started))
                if (r.header("Connection") or "").lower() == "close":
                    conn.close()
                    conn = None
                with lock:
                    done[0] += 1
                    if done[0] >= KILL_AFTER:
                        reached.set()
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    assert reached.wait(60), f"only {done[0]} requests answered"
    o2.kill9()
    killed_at[0] = time.monotonic()
    deadline = time.monotonic() + 90
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads did not finish in time"

    assert not problems, f"{len(problems)} bad answers, first ones: {problems[:10]}"
    assert len(answers) == THREADS * PER_THREAD
    # A request sent after the kill was answered by the live clone.
    late = [a for a in answers if a[2] > killed_at[0] + 0.05]
    assert late, "no request was sent after the kill"
    assert {a[1] for a in late} == {"origin1"}, [a for a in late if a[1] != "origin1"][:5]
    assert_next_request_works(cg, {"origin1"})


def test_issue_3_pipelined_error_answers_all_come(clonegate, origins):
    """With no clone able to answer, every pipelined request gets its own
    error answer without waiting on a clone: 10,000 of them in one send are
    all answered 503, and the proxy serves normally afterwards. (The proxy
    answers each on its own loop turn so a batch cannot deepen its stack.)"""
    (o,) = origins(1)
    cg = world(clonegate, [o])
    cg.admin(f"/servers/{o.addr}/drain", method="POST")
    count = 10000
    raw = b"GET /p HTTP/1.1\r\nHost: test\r\n\r\n" * count
    data = helpers.http_request(cg.port, raw, timeout=30, responses=count)
    answers = helpers.parse_responses(data, eof=False)
    assert len(answers) == count, len(answers)
    assert all(r.status == 503 for r in answers), {r.status for r in answers}
    assert cg.proc.alive(), "clonegate died answering a pipelined batch"
    cg.admin(f"/servers/{o.addr}/ready", method="POST")
    assert_next_request_works(cg, {o.name})


def traffic_failures(cg):
    return sum(s["traffic_failures"] for s in cg.stats()["servers"])


def test_a_slow_upload_is_not_cut_by_response_timeout(origins, clonegate):
    # the upload's pace is the client's: response_timeout counts from the
    # request's last byte, and a slow client says nothing about the clone
    (o,) = origins(1)
    cg = world(clonegate, [o], **{"upstream.response_timeout": "1s"})
    body = b"0123456789" * 3
    with cg.conn(timeout=10) as c:
        c.send(build_request("POST", "/sink", [("Content-Length", str(len(body)))]))
        for i in range(len(body)):  # 30 bytes over 3 s, three times response_timeout
            c.send(body[i:i + 1])
            time.sleep(0.1)
        r = c.read_response()
    assert r.status == 200, r
    assert r.json()["length"] == len(body), r.json()
    assert traffic_failures(cg) == 0


def test_clients_that_leave_mid_body_do_not_take_the_clone_down(origins, clonegate):
    (o,) = origins(1)
    cg = world(clonegate, [o], **{"upstream.response_timeout": "1s", "health.fall": 3})
    for _ in range(4):  # more than fall: each would count against the clone
        s = socket.create_connection(("127.0.0.1", cg.port), timeout=5)
        s.sendall(build_request("POST", "/sink", [("Content-Length", "100")]) + b"abc")
        s.close()
    time.sleep(1.5)  # past response_timeout: a clone held waiting would have failed by now
    r = cg.get("/echo")
    assert r.status == 200, r
    assert traffic_failures(cg) == 0
    assert all(s["state"] == "up" for s in cg.stats()["servers"]), cg.stats()["servers"]


def test_an_upload_to_a_tls_clone_stuck_in_its_handshake_gets_504(clonegate):
    # the clone's kernel accepts, its process never answers the ClientHello;
    # the upload fills the proxy's buffer toward it, so the proxy stops
    # reading the client: response_timeout must still end it
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)  # never accepted
    try:
        cg = world(clonegate, [f"127.0.0.1:{stuck.getsockname()[1]}"],
                   **{"upstream.tls": "yes", "upstream.tls_verify": "no",
                      "upstream.response_timeout": "1s", "upstream.connect_timeout": "1s",
                      "upstream.retries": 0, "server.idle_timeout": "30s"})
        n = 4 << 20
        s = socket.create_connection(("127.0.0.1", cg.port), timeout=10)
        try:
            s.sendall(build_request("POST", "/sink", [("Content-Length", str(n))]))
            s.setblocking(False)
            sent, piece = 0, b"x" * 65536
            t0 = time.monotonic()
            while sent < n and time.monotonic() - t0 < 3:  # until the proxy stops taking it
                try:
                    sent += s.send(piece[: n - sent])
                except BlockingIOError:
                    time.sleep(0.05)
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:  # bounded by the 10 s timeout per recv
                chunk = s.recv(65536)
                assert chunk, "closed without an answer"
                data += chunk
            took = time.monotonic() - t0
        finally:
            s.close()
        assert data.startswith(b"HTTP/1.1 504"), data[:200]
        assert took < 8, f"answered after {took:.1f} s"
    finally:
        stuck.close()


def test_a_retry_after_a_reload_goes_to_a_clone_still_configured(origins, clonegate):
    # the first attempt went to A; a reload then leaves only B; A closes
    # without answering: the retry must find B in the new configuration
    (b,) = origins(1)
    got = threading.Event()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    a_addr = f"127.0.0.1:{srv.getsockname()[1]}"
    stop = threading.Event()

    def closer():
        while not stop.is_set():  # bounded by the test's stop
            try:
                s, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            with s:
                s.settimeout(5)
                try:
                    data = s.recv(65536)
                except OSError:
                    continue
                if b" /echo" in data:
                    got.set()
                    stop.wait(3)  # holds it until the reload is in, then closes unanswered

    t = threading.Thread(target=closer, daemon=True)
    t.start()
    try:
        cg = world(clonegate, [a_addr, b])
        servers_line = f"servers = {a_addr}, {b.addr}"
        assert servers_line in cg.ini_text
        c = cg.conn(timeout=10)
        c.send(build_request("GET", "/echo?reload"))
        assert got.wait(5), "A never got the request"
        cg.reload(cg.ini_text.replace(servers_line, f"servers = {b.addr}"))
        helpers.wait_for(lambda: [v["address"] for v in cg.stats()["servers"]] == [b.addr],
                         timeout=5, what="the reload")
        time.sleep(0.3)  # the worker takes its new pool on its next turn
        stop.set()  # A closes without answering
        r = c.read_response(timeout=10)
        c.close()
        assert r.status == 200 and r.header("X-Origin") == b.name, r
    finally:
        stop.set()
        srv.close()
        t.join(5)


def test_a_stale_pooled_connection_does_not_use_up_the_retries(clonegate):
    # A answers the first request of a connection and closes at the second
    # (a pooled connection gone stale); B refuses. With retries = 1 the
    # order A (stale, free), B (refused) must still reach A afresh.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve_conn(s):
        with s:
            s.settimeout(5)
            data = b""
            answered = 0
            while not stop.is_set():  # bounded: 5 s per recv, at most two requests
                try:
                    piece = s.recv(65536)
                except OSError:
                    return
                if not piece:
                    return
                data += piece
                while b"\r\n\r\n" in data:
                    data = data.split(b"\r\n\r\n", 1)[1]
                    if answered:
                        return  # the second request: closed unanswered
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Origin: A\r\n\r\nok")
                    answered += 1

    def accept():
        while not stop.is_set():  # bounded by the test's stop
            try:
                s, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=serve_conn, args=(s,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        a = f"127.0.0.1:{srv.getsockname()[1]}"
        cg = world(clonegate, [f"{a} weight=3", dead_addr()], **{"upstream.retries": 1})
        # weights 3:1 pick A, A, B, A: the second request meets A's stale connection
        assert cg.get("/first").status == 200
        r = cg.get("/second")
        assert r.status == 200 and r.header("X-Origin") == "A", r
    finally:
        stop.set()
        srv.close()
        t.join(5)
