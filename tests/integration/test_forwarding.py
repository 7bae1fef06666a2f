"""Forwarding through clonegate (issue 3): balancing, keep-alive on both
sides, pipelining, bodies both ways, Expect, Upgrade and header rewriting.

Each test starts its own origins (origin.py) and one clonegate with one
worker and the cache off, so every request reaches an origin and the counts
at the origins are exact.
"""

import socket
import threading
import time

import pytest

import helpers
from helpers import build_request, chunked, http_request, parse_responses

# The ini of every test here: one worker (the balancer's order is per
# worker) and no cache (every request must reach an origin).
BASE = {"server.workers": 1, "cache.enabled": "no"}

HOP_BY_HOP = ("keep-alive", "te", "trailer", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "upgrade", "x-hop")


def start(clonegate, servers=None, **overrides):
    ini = dict(BASE)
    ini.update(overrides)
    return clonegate(ini, servers=servers)


def names(headers, name):
    """Every value of header <name> in an /echo header list."""
    return [v for k, v in headers if k.lower() == name.lower()]


def connection_tokens(values):
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def pipelined_gets(conns, path, total, batch=50):
    """Sends <total> GETs of <path> over <conns>, <batch> pipelined per
    connection at a time, and returns every response's X-Origin."""
    seen = []
    sent = 0
    while sent < total:  # bounded: each pass sends at least one request
        rounds = []
        for c in conns:
            n = min(batch, total - sent)
            if n == 0:
                break
            c.send(build_request("GET", path) * n)
            rounds.append((c, n))
            sent += n
        for c, n in rounds:
            for _ in range(n):
                r = c.read_response()
                assert r.status == 200, r.raw[:300]
                seen.append(r.header("X-Origin"))
    return seen


# ---------------------------------------------------------------- balancing


@pytest.mark.hard_timeout(90)
def test_round_robin_splits_10000_requests_exactly_in_half(origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate)
    conns = [cg.conn(timeout=20) for _ in range(4)]
    try:
        t0 = time.monotonic()
        seen = pipelined_gets(conns, "/rr", 10_000)
        took = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    assert len(seen) == 10_000
    assert (seen.count("origin1"), seen.count("origin2")) == (5000, 5000)
    assert (o1.count("/rr"), o2.count("/rr")) == (5000, 5000)
    assert took < 60, f"10,000 keep-alive GETs took {took:.1f} s"


def test_round_robin_alternates_strictly_on_one_connection(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    with cg.conn() as c:
        seen = [c.get("/alt").header("X-Origin") for _ in range(20)]
    first, second = seen[0], seen[1]
    assert {first, second} == {"origin1", "origin2"}
    assert seen == [first, second] * 10


def test_weighted_round_robin_gives_three_to_one_over_400_requests(origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate, servers=[f"{o1.addr} weight=3", o2.addr])
    conns = [cg.conn() for _ in range(2)]
    try:
        seen = pipelined_gets(conns, "/w", 400, batch=20)
    finally:
        for c in conns:
            c.close()
    assert (seen.count("origin1"), seen.count("origin2")) == (300, 100)
    assert (o1.count("/w"), o2.count("/w")) == (300, 100)


def test_least_conn_avoids_the_origin_busy_with_a_slow_request(origins, clonegate):
    o1, o2 = origins(2)
    cg = start(clonegate, **{"upstream.balance": "least_conn"})
    with cg.conn() as slow:
        slow.send(build_request("GET", "/slow?ms=3000"))
        busy = helpers.wait_for(
            lambda: [o for o in (o1, o2) if o.count("/slow") == 1], timeout=5,
            what="the slow request to reach an origin")[0]
        idle = o2 if busy is o1 else o1
        with cg.conn() as c:
            seen = [c.get("/lc").header("X-Origin") for _ in range(10)]
        assert seen == [idle.name] * 10
        assert busy.count("/lc") == 0 and idle.count("/lc") == 10
        r = slow.read_response(timeout=10)
    assert r.status == 200 and r.header("X-Origin") == busy.name


# ---------------------------------------------------------------- keep-alive


def test_client_keep_alive_serves_several_requests_on_one_socket(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    with cg.conn() as c:
        for i in range(5):
            r = c.get(f"/echo?i={i}")
            assert r.status == 200 and r.json()["target"] == f"/echo?i={i}"
            assert "close" not in connection_tokens(r.header_all("Connection"))
        assert not c.closed_by_peer(timeout=0.3)


def test_upstream_connection_is_pooled_across_client_connections(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate)
    ids = [cg.get("/echo").header("X-Connection") for _ in range(5)]
    assert ids[0] is not None
    assert ids == [ids[0]] * 5, "each request used a new upstream connection"


def test_http10_client_without_keep_alive_gets_answer_and_close(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    with cg.conn() as c:
        c.send(b"GET /echo?v=10 HTTP/1.0\r\nHost: test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/echo?v=10"
        assert c.closed_by_peer(timeout=2.0), "HTTP/1.0 connection left open"


def test_http10_client_with_keep_alive_stays_open(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    with cg.conn() as c:
        for i in range(3):
            c.send(b"GET /echo?k=%d HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n" % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["target"] == f"/echo?k={i}"
            assert "keep-alive" in connection_tokens(r.header_all("Connection"))
        assert not c.closed_by_peer(timeout=0.3)


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "keep-alive"])
def test_http10_client_gets_chunked_upstream_answer_dechunked(origins, clonegate, keep_alive):
    origins(1)
    cg = start(clonegate)
    n = 200_000
    extra = b"Connection: keep-alive\r\n" if keep_alive else b""
    with cg.conn() as c:
        c.send(b"GET /bytes?n=%d&chunked=1 HTTP/1.0\r\nHost: test\r\n%s\r\n" % (n, extra))
        closed = c.closed_by_peer(timeout=5.0)
        r, _ = helpers.parse_response(c.buf, 0, "GET", eof=c.eof)
    assert r.status == 200
    assert not r.chunked and r.header("Transfer-Encoding") is None
    assert r.body == helpers.pattern_bytes(n)
    # Without a length the end of the body can only be the close.
    assert closed or r.header("Content-Length") == str(n)
    if not keep_alive:
        assert closed


def test_client_connection_close_ends_the_connection_after_that_answer(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate)
    with cg.conn() as c:
        c.send(build_request("GET", "/echo?last", {"Connection": "close"})
               + build_request("GET", "/echo?after-close"))
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/echo?last"
        assert "close" in connection_tokens(r.header_all("Connection"))
        assert c.closed_by_peer(timeout=2.0)
        assert c.buf == b"", "a request after Connection: close was answered"
    assert o.count("/echo") == 1


def test_last_answer_before_a_close_comes_at_once(origins, clonegate):
    # The last bytes before a close wait for the FIN to go with them; they
    # must never wait longer (the kernel would hold a partial segment for
    # 200 ms). Answers of several segments, each followed by the close.
    origins(1)
    cg = start(clonegate)
    size = 100_000
    for i in range(10):
        with cg.conn(timeout=5) as c:
            t0 = time.monotonic()
            c.send(build_request("GET", f"/bytes?n={size}&i={i}", {"Connection": "close"}))
            r = c.read_response()
            assert r.status == 200 and r.body == helpers.pattern_bytes(size)
            assert c.closed_by_peer(timeout=2.0)
            took = time.monotonic() - t0
            assert took < 0.15, f"answer {i} and its close took {took * 1000:.0f} ms"


def slow_read_all(sock, limit_s=20.0):
    """Reads until the end in 16 KiB steps with a pause after each, as a
    slow client does; returns the bytes and how it ended ('eof' or 'reset')."""
    data = bytearray()
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            piece = sock.recv(16384)
        except ConnectionResetError:
            return bytes(data), "reset"
        if not piece:
            return bytes(data), "eof"
        data += piece
        time.sleep(0.002)
    raise AssertionError(f"no end after {limit_s} s ({len(data)} bytes)")


@pytest.mark.parametrize("after", [b"GET /echo?after HTTP/1.1\r\nHost: test\r\n\r\n", b"\r\n"])
def test_bytes_sent_after_a_last_request_do_not_cut_its_answer(origins, clonegate, after):
    # What a client sends after a Connection: close request (another request,
    # a stray CRLF) is never answered, but it waits unread in the kernel:
    # closing over it would reset the connection and lose what of the answer
    # the slow client had not read yet. The whole answer comes, then the end.
    # (8 MB: more than the kernel buffers take, so the proxy is still
    # sending when the extra bytes come.)
    origins(1)
    cg = start(clonegate)
    n = 8_000_000
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        s.settimeout(10)
        s.connect(("127.0.0.1", cg.port))
        s.sendall(build_request("GET", f"/bytes?n={n}", {"Connection": "close"}))
        time.sleep(0.05)
        s.sendall(after)
        data, how = slow_read_all(s)
    assert how == "eof", f"reset after {len(data)} bytes"
    (r,) = parse_responses(data, ["GET"], eof=True)
    assert r.status == 200 and len(r.body) == n and r.body == helpers.pattern_bytes(n)


def test_a_refused_upload_still_gets_its_answer_read(origins, clonegate):
    # 413 is sent as soon as the head says the body is too large, while the
    # client is still sending it. A client that sends its whole body before
    # it reads (as many simple clients do) must not have its sending cut by
    # a reset: the body is read and dropped, then the 413 and the end come.
    origins(1)
    cg = start(clonegate, **{"server.max_body_size": "1k"})
    with socket.socket() as s:
        s.settimeout(10)
        s.connect(("127.0.0.1", cg.port))
        s.sendall(build_request("POST", "/sink", {"Content-Length": str(1 << 20)}))
        time.sleep(0.05)  # the 413 is out and the proxy about to close
        for _ in range(16):
            s.sendall(b"x" * 65536)
        data, how = slow_read_all(s)
    assert data.startswith(b"HTTP/1.1 413 "), (how, data[:80])
    assert how == "eof", "the connection was reset after the 413"


def test_a_client_that_goes_on_sending_after_its_answer_is_closed_after_5_s(origins, clonegate):
    # The bytes after a refused request are read and dropped for 5 s at
    # most: a client cannot hold the connection by sending forever.
    origins(1)
    cg = start(clonegate, **{"server.max_body_size": "1k"})
    with socket.socket() as s:
        s.settimeout(10)
        s.connect(("127.0.0.1", cg.port))
        t0 = time.monotonic()
        s.sendall(build_request("POST", "/sink", {"Content-Length": str(1 << 30)}))
        ended = None
        while time.monotonic() - t0 < 9:
            try:
                s.sendall(b"x" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                ended = time.monotonic() - t0
                break
            time.sleep(0.01)
    assert ended is not None, "still open after 9 s"
    assert 4.5 < ended < 7.5, f"closed after {ended:.1f} s"


# ---------------------------------------------------------------- pipelining


def test_ten_pipelined_gets_answered_in_order(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    raw = b"".join(build_request("GET", f"/echo?p={i}") for i in range(10))
    data = http_request(cg.port, raw, responses=10)
    rs = parse_responses(data, ["GET"] * 10, eof=False)
    assert [r.status for r in rs] == [200] * 10
    assert [r.json()["target"] for r in rs] == [f"/echo?p={i}" for i in range(10)]


def test_pipelined_post_body_in_the_middle_keeps_the_order(origins, clonegate):
    origins(2)
    cg = start(clonegate)
    body = helpers.pattern_bytes(30_000)
    raw = (build_request("GET", "/echo?p=0") + build_request("GET", "/echo?p=1")
           + build_request("POST", "/echo?p=2", body=body)
           + build_request("GET", "/echo?p=3") + build_request("GET", "/echo?p=4"))
    methods = ["GET", "GET", "POST", "GET", "GET"]
    data = http_request(cg.port, raw, responses=5, methods=methods)
    rs = parse_responses(data, methods, eof=False)
    echoes = [r.json() for r in rs]
    assert [e["target"] for e in echoes] == [f"/echo?p={i}" for i in range(5)]
    assert [e["method"] for e in echoes] == methods
    assert echoes[2]["body_length"] == len(body)
    assert echoes[2]["body_sha256"] == helpers.sha256(body)
    assert [e["body_length"] for e in echoes[:2] + echoes[3:]] == [0, 0, 0, 0]


# ---------------------------------------------------------------- bodies


def test_content_length_request_body_reaches_origin_intact(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    body = helpers.pattern_bytes(3_000_001, offset=5)
    r = cg.request("POST", "/sink", body=body, timeout=30)
    assert r.status == 200
    assert r.json() == {"length": len(body), "sha256": helpers.sha256(body)}


def test_chunked_request_body_reaches_origin_intact(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    body = helpers.pattern_bytes(2_000_003, offset=11)
    r = cg.request("POST", "/sink", {"Transfer-Encoding": "chunked"},
                   body=chunked(body, 7777), timeout=30)
    assert r.status == 200
    assert r.json() == {"length": len(body), "sha256": helpers.sha256(body)}


@pytest.mark.parametrize("use_chunked", [0, 1], ids=["content-length", "chunked"])
def test_response_body_reaches_client_intact(origins, clonegate, use_chunked):
    origins(1)
    cg = start(clonegate)
    n = 5_000_017
    r = helpers.stream_request(cg.port, "GET", f"/bytes?n={n}&chunked={use_chunked}", timeout=60)
    assert r.status == 200
    assert r.length == n and r.sha256 == helpers.pattern_sha256(n)
    if not use_chunked:
        assert r.header("Content-Length") == str(n)


def test_head_response_has_no_body(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    with cg.conn(timeout=5) as c:
        r = c.request("HEAD", "/bytes?n=1000")
        assert r.status == 200 and r.body == b""
        assert r.header("Content-Length") == "1000"
        r = c.request("HEAD", "/bytes?n=1000&chunked=1")
        assert r.status == 200 and r.body == b""
        # Anything sent after either head would be read as this answer.
        r = c.get("/echo?after=head")
        assert r.status == 200 and r.json()["target"] == "/echo?after=head"
        assert c.buf == b""


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_status_has_no_body(origins, clonegate, code):
    origins(1)
    cg = start(clonegate)
    raw = build_request("GET", f"/status?code={code}") + build_request("GET", "/echo?after=1")
    data = http_request(cg.port, raw, responses=2, timeout=5)
    rs = parse_responses(data, ["GET", "GET"], eof=False)
    assert [r.status for r in rs] == [code, 200]
    assert rs[0].body == b"" and rs[0].header("Transfer-Encoding") is None
    assert rs[1].json()["target"] == "/echo?after=1"


# ---------------------------------------------------------------- Expect


def test_expect_100_continue_comes_before_the_body(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    body = b"hello, continue"
    with cg.conn(timeout=5) as c:
        c.send(build_request("POST", "/expect", {"Expect": "100-continue",
                                                 "Content-Length": str(len(body))}))
        interim = c.read_response("POST", interim=True)
        assert interim.status == 100 and interim.raw.startswith(b"HTTP/1.1 100 Continue\r\n")
        c.send(body)
        r = c.read_response("POST")
    assert r.status == 200
    assert r.json()["length"] == len(body) and r.json()["sha256"] == helpers.sha256(body)


def test_a_nagle_client_sending_a_request_in_pieces_is_not_held_up(origins, clonegate):
    """The proxy delays its ACK of a request until the answer (one segment
    fewer per request). A client with Nagle on that sends a head and then
    its body, or its head in two writes, waits for that ACK before its
    second write: it must get it at once, not after the 40 ms delayed-ACK
    timer."""
    origins(1)
    cg = start(clonegate)
    body = b"b" * 100
    post_head = build_request("POST", "/echo", {"Content-Length": str(len(body))})
    get = build_request("GET", "/echo")
    cut = get.index(b"\r\n") + 2
    pieces = {"head, then body": (post_head, body, "POST"),
              "head in two writes": (get[:cut], get[cut:], "GET")}
    with cg.conn(timeout=5) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # Nagle on
        assert c.get("/echo").status == 200
        for name, (first, second, method) in pieces.items():
            took = []
            for _ in range(7):
                t0 = time.monotonic()
                c.send(first)
                c.send(second)
                r = c.read_response(method)
                took.append(time.monotonic() - t0)
                assert r.status == 200, r.raw[:200]
            took.sort()
            assert took[3] < 0.025, f"{name}: median {took[3] * 1000:.1f} ms"


# ---------------------------------------------------------------- Upgrade

WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def read_exactly(c, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    got = b""
    while len(got) < n and time.monotonic() < deadline:
        piece = c.recv_raw(n - len(got), timeout=max(0.05, deadline - time.monotonic()))
        if not piece:
            break
        got += piece
    return got


def test_websocket_upgrade_relays_bytes_both_ways(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    with cg.conn(timeout=5) as c:
        c.send(build_request("GET", "/ws", WS_HEADERS))
        r = c.read_response()
        assert r.status == 101
        assert r.header("Upgrade", "").lower() == "websocket"
        assert "upgrade" in connection_tokens(r.header_all("Connection"))
        assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        for i in range(5):
            msg = bytes([0x81, i]) + b"round %d " % i + bytes(range(256)) * (i + 1)
            c.send(msg)
            assert read_exactly(c, len(msg)) == msg


def test_declined_upgrade_continues_as_plain_http(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    # What curl --http2 sends on http:// URLs; the origin answers 200, not 101.
    h2c = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
           "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}
    with cg.conn(timeout=5) as c:
        r = c.get("/echo?upgrade=declined", h2c)
        assert r.status == 200 and r.json()["target"] == "/echo?upgrade=declined"
        assert names(r.json()["headers"], "HTTP2-Settings") == []
        r = c.get("/echo?next")
        assert r.status == 200 and r.json()["target"] == "/echo?next"


class TunnelOrigin:
    """A raw upstream that answers /health and upgrades /ws, echoing bytes
    until either side closes. .peer_closed is set when clonegate closes the
    tunnel; .close_tunnel() closes it from the origin's side."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.peer_closed = threading.Event()
        self.close_now = threading.Event()
        self.upgraded = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.lsock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s):
        deadline = time.monotonic() + 60
        s.settimeout(0.1)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
                try:
                    piece = s.recv(65536)
                except socket.timeout:
                    continue
                if not piece or self.stopping.is_set():
                    return
                buf += piece
            if not buf.startswith(b"GET /ws "):
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                return
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\n" + buf.split(b"\r\n\r\n", 1)[1])
            self.upgraded.set()
            while time.monotonic() < deadline and not self.stopping.is_set():
                if self.close_now.is_set():
                    return
                try:
                    piece = s.recv(65536)
                except socket.timeout:
                    continue
                if not piece:
                    self.peer_closed.set()
                    return
                s.sendall(piece)
        except OSError:
            self.peer_closed.set()
        finally:
            s.close()

    def close_tunnel(self):
        self.close_now.set()

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        for t in self.threads:
            t.join(timeout=2)


@pytest.fixture
def tunnel_origin(world):
    return world.add(TunnelOrigin())


def open_tunnel(cg, origin):
    c = cg.conn(timeout=5)
    c.send(build_request("GET", "/ws", WS_HEADERS))
    r = c.read_response()
    assert r.status == 101
    assert origin.upgraded.wait(5)
    c.send(b"ping")
    assert read_exactly(c, 4) == b"ping"
    return c


def test_upgraded_tunnel_closed_by_client_closes_origin_side(clonegate, tunnel_origin):
    cg = start(clonegate, servers=[tunnel_origin.addr])
    c = open_tunnel(cg, tunnel_origin)
    c.close()
    assert tunnel_origin.peer_closed.wait(3), "origin side stayed open after the client closed"


def test_issue_3_tunnel_half_close_still_delivers_the_origins_last_bytes(clonegate, tunnel_origin):
    """A client that shuts down its sending side still reads what the origin
    answers to its last bytes, then sees the close."""
    cg = start(clonegate, servers=[tunnel_origin.addr])
    c = open_tunnel(cg, tunnel_origin)
    try:
        c.send(b"last words")
        c.sock.shutdown(socket.SHUT_WR)
        got = b""
        deadline = time.time() + 5
        while time.time() < deadline:
            piece = c.sock.recv(65536)
            if not piece:
                break
            got += piece
        assert got == b"last words", got
        assert tunnel_origin.peer_closed.wait(3), "the half-close never reached the origin"
    finally:
        c.close()


def test_upgraded_tunnel_closed_by_origin_closes_client_side(clonegate, tunnel_origin):
    cg = start(clonegate, servers=[tunnel_origin.addr])
    with open_tunnel(cg, tunnel_origin) as c:
        tunnel_origin.close_tunnel()
        assert c.closed_by_peer(timeout=3), "client side stayed open after the origin closed"



def test_a_tunnel_silent_both_ways_for_tunnel_timeout_is_closed(clonegate, tunnel_origin):
    cg = start(clonegate, servers=[tunnel_origin.addr], **{"server.tunnel_timeout": "1s"})
    with open_tunnel(cg, tunnel_origin) as c:
        # bytes every 0.4 s keep it open past the timeout
        for i in range(5):
            time.sleep(0.4)
            c.send(b"k%d" % i)
            assert read_exactly(c, 2) == b"k%d" % i
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=4), "a silent tunnel stayed open"
        took = time.monotonic() - t0
        assert 0.8 <= took < 2.5, f"closed {took:.2f} s after the last bytes, want about 1 s"
    assert tunnel_origin.peer_closed.wait(3), "the clone side of the idle tunnel stayed open"


# ---------------------------------------------------------------- headers


def test_hop_by_hop_request_headers_are_not_forwarded(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    sent = [
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Upgrade", "h2c"),
        ("X-End-To-End", "kept"),
    ]
    body = b"0123456789"
    r = cg.request("POST", "/echo", sent, body=body)
    assert r.status == 200
    got = r.json()["headers"]
    received = {k.lower() for k, _ in got}
    assert not received & set(HOP_BY_HOP), f"hop-by-hop forwarded: {got}"
    assert connection_tokens(names(got, "Connection")) <= {"keep-alive", "close"}
    assert names(got, "X-End-To-End") == ["kept"]
    assert names(got, "Host") == ["test"]
    assert names(got, "Content-Length") == [str(len(body))]
    assert r.json()["body_length"] == len(body)


def test_hop_by_hop_response_headers_are_not_returned(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    adds = ["Connection:X-Hop", "X-Hop:secret", "Keep-Alive:timeout%3D5", "Trailer:X-Checksum",
            "Proxy-Connection:keep-alive", "Proxy-Authenticate:Basic", "Upgrade:h2c",
            "X-End-To-End:kept"]
    with cg.conn() as c:
        r = c.get("/echo?" + "&".join("hdr=" + a for a in adds))
        assert r.status == 200
        present = {k.lower() for k, _ in r.headers}
        assert not present & set(HOP_BY_HOP), f"hop-by-hop returned: {r.headers}"
        assert connection_tokens(r.header_all("Connection")) <= {"keep-alive", "close"}
        assert r.header_all("X-End-To-End") == ["kept"]
        assert r.header_all("Via") == ["1.1 clonegate"]
        # The origin's hop-by-hop headers did not end the client connection.
        assert c.get("/echo").status == 200


def test_forwarding_headers_are_added_toward_origin(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    r = cg.get("/echo")
    got = r.json()["headers"]
    assert names(got, "X-Forwarded-For") == ["127.0.0.1"]
    assert names(got, "X-Forwarded-Proto") == ["http"]
    assert names(got, "Forwarded") == ["for=127.0.0.1;proto=http"]
    assert names(got, "Via") == ["1.1 clonegate"]
    assert names(got, "Host") == ["test"]
    assert r.header_all("Via") == ["1.1 clonegate"]


def test_forwarding_headers_append_to_what_the_client_sent(origins, clonegate):
    origins(1)
    cg = start(clonegate)
    r = cg.get("/echo", [("X-Forwarded-For", "203.0.113.7"),
                         ("X-Forwarded-For", "198.51.100.2"),
                         ("X-Forwarded-Proto", "https"),
                         ("Forwarded", "for=192.0.2.60;proto=https"),
                         ("Via", "1.1 edge")])
    got = r.json()["headers"]
    xff = ", ".join(names(got, "X-Forwarded-For"))
    assert xff == "203.0.113.7, 198.51.100.2, 127.0.0.1"
    # The proto is what this hop saw, not what the client claims.
    assert names(got, "X-Forwarded-Proto") == ["http"]
    forwarded = ", ".join(names(got, "Forwarded"))
    assert forwarded == "for=192.0.2.60;proto=https, for=127.0.0.1;proto=http"
    assert ", ".join(names(got, "Via")) == "1.1 edge, 1.1 clonegate"
