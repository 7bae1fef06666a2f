"""Request framing and limits (issue 3): what clonegate refuses, with which
status, and that a refused request never reaches an origin.

Every refusal is checked three ways: the client gets the stated status from
clonegate itself (no X-Origin header), the connection is closed after it (the
rest of the stream cannot be framed any more), and the origin saw no request
(origin.py's counts); then a good request on a fresh socket must still
succeed. A chunked body found bad or too big after its head went upstream is
checked with a recording origin instead: it must never get the whole request,
and its connection must be closed.

A request line or head ended by a bare LF is refused like any other bare LF
(RFC 9112 2.2 lets a recipient accept one; an origin that does not would
frame the bytes differently). A target in absolute-form overrides Host (RFC
9112 3.2.2): the origin gets the origin-form target and the target's
authority as Host, the same host the cache keys the request by, so a Host
naming another site cannot store that site's page under the target's key.

Transfer-Encoding "chunked, chunked" (or two "Transfer-Encoding: chunked"
lines, which RFC 9110 5.3 makes the same thing) is refused with 400: RFC 9112
6.1 forbids applying chunked more than once, so such a body cannot be
framed by decoding chunked once, and a proxy that passes it on lets an
origin that frames it differently see another request (smuggling).
"""

import json
import socket
import threading
import time
import urllib.parse

import pytest

import helpers
from helpers import HttpConn, build_request, chunked

BASE = {"server.workers": 1, "cache.enabled": "no"}
CLOSE_WITHIN = 2.0  # s the proxy may take to close after its error response


def start(clonegate, servers=None, **overrides):
    ini = dict(BASE)
    ini.update(overrides)
    return clonegate(ini, servers=servers)


def forwarded(origin):
    """The requests <origin> served, by path, health checks left out."""
    return {p: n for p, n in origin.counts()["paths"].items() if p != "/health"}


def refused(cg, raw, status, timeout=5.0):
    """Sends <raw> on a fresh connection; asserts that the first response is
    <status> and that the proxy then closes. Returns the response."""
    with HttpConn(cg.port, timeout=timeout) as c:
        try:
            c.send(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all was sent: the answer is still to read
        r = c.read_response()
        assert r.status == status, f"sent {raw[:300]!r}\ngot {r.raw[:300]!r}"
        # origin.py marks its answers: an origin's refusal means it was forwarded.
        assert r.header("X-Origin") is None, f"forwarded {raw[:300]!r}\ngot {r.raw[:300]!r}"
        assert c.closed_by_peer(timeout=CLOSE_WITHIN), (
            f"connection left open after {status} to {raw[:300]!r}")
    assert r.body, "an error response carries a short body"
    if status == 405:
        # RFC 9110 15.5.6: a 405 names the methods the target does allow
        assert "GET" in (r.header("Allow") or ""), r.raw[:300]
    return r


def still_serves(cg):
    r = cg.get("/ok")
    assert r.status == 200, r


# ---------------------------------------------------------------- malformed

H = b"Host: test\r\n"

MALFORMED = [
    ("content-length-with-transfer-encoding",
     b"POST /framing HTTP/1.1\r\n" + H
     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # RFC 9112 6.3 lets a recipient merge equal values; a proxy that refuses
    # them leaves no doubt about the framing an origin will see.
    ("duplicate-equal-content-length",
     b"POST /framing HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
     400),
    ("conflicting-content-length",
     b"POST /framing HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     400),
    ("content-length-list",
     b"POST /framing HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("transfer-encoding-gzip",
     b"POST /framing HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello", 400),
    ("transfer-encoding-chunked-then-gzip",
     b"POST /framing HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
     400),
    ("transfer-encoding-chunked-twice",
     b"POST /framing HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("transfer-encoding-chunked-chunked",
     b"POST /framing HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
     400),
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    ("transfer-encoding-on-http10",
     b"POST /framing HTTP/1.0\r\n" + H
     + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     400),
    ("bare-lf-line-endings", b"GET /framing HTTP/1.1\nHost: test\n\n", 400),
    ("bare-lf-ending-the-request-line", b"GET /echo HTTP/1.1\nHost: localhost\r\n\r\n", 400),
    ("bare-lf-ending-the-head", b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\n", 400),
    ("bare-lf-before-the-request-line", b"\nGET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
     400),
    ("obs-fold", b"GET /framing HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", 400),
    ("obs-fold-tab", b"GET /framing HTTP/1.1\r\n" + H + b"X-Folded: a\r\n\tb\r\n\r\n", 400),
    ("space-before-colon", b"GET /framing HTTP/1.1\r\n" + H + b"X-Spaced : a\r\n\r\n", 400),
    ("nul-in-header-value", b"GET /framing HTTP/1.1\r\n" + H + b"X-Nul: a\x00b\r\n\r\n", 400),
    ("control-byte-in-header-value",
     b"GET /framing HTTP/1.1\r\n" + H + b"X-Ctl: a\x01b\r\n\r\n", 400),
    ("invalid-header-name", b"GET /framing HTTP/1.1\r\n" + H + b"X@Bad: a\r\n\r\n", 400),
    ("missing-host-on-http11", b"GET /framing HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two-host-headers", b"GET /framing HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", 400),
    # RFC 9112 3.2: a Host with an invalid value is a 400 like a missing one.
    ("invalid-host-value", b"GET /framing HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    # RFC 9110 4.2.4: no userinfo in an http(s) URI; nor another scheme.
    ("absolute-form-userinfo", b"GET http://user@test/framing HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form-ftp", b"GET ftp://test/framing HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("absolute-form-no-authority", b"GET http:///framing HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-garbage", b"THIS IS NOT HTTP\r\n" + H + b"\r\n", 400),
    ("request-line-extra-field", b"GET /framing HTTP/1.1 extra\r\n" + H + b"\r\n", 400),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
]


@pytest.mark.parametrize("raw,status", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_refused_closed_and_not_forwarded(origins, clonegate, raw, status):
    (o,) = origins(1)
    cg = start(clonegate)
    refused(cg, raw, status)
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


# ---------------------------------------------------------------- absolute-form


def hosts_of(echo):
    return [v for k, v in echo["headers"] if k.lower() == "host"]


ABSOLUTE = [
    ("http", b"GET http://clone.example:8080/echo?x=1 HTTP/1.1\r\nHost: evil.example\r\n"
     b"Accept: */*\r\n\r\n", "/echo?x=1", "clone.example:8080"),
    ("https-capitals", b"GET HTTPS://Clone.Example/echo HTTP/1.1\r\nHost: evil.example\r\n\r\n",
     "/echo", "Clone.Example"),
    ("http10-without-host", b"GET http://clone.example/echo HTTP/1.0\r\n\r\n", "/echo",
     "clone.example"),
]


@pytest.mark.parametrize("raw,target,host", [c[1:] for c in ABSOLUTE], ids=[c[0] for c in ABSOLUTE])
def test_absolute_form_reaches_the_origin_in_origin_form_with_the_authority_as_host(
        origins, clonegate, raw, target, host):
    (o,) = origins(1)
    cg = start(clonegate)
    with HttpConn(cg.port) as c:
        c.send(raw)
        r = c.read_response()
    assert r.status == 200 and r.header("X-Origin") == o.name, r
    echo = r.json()
    assert echo["target"] == target, echo
    assert hosts_of(echo) == [host], echo
    assert "evil.example" not in json.dumps(echo), echo
    assert forwarded(o) == {"/echo": 1}


def test_absolute_form_cannot_store_another_hosts_page_under_its_key(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"cache.enabled": "yes"})
    path = "/c/poison"
    target = path + "?" + urllib.parse.urlencode({"cc": "max-age=60"})

    def last_host():
        r = o.get("/last?path=" + urllib.parse.quote(path))
        return [v for k, v in r.json()["headers"] or [] if k.lower() == "host"]

    with HttpConn(cg.port) as c:
        c.send(b"GET http://clone.example%s HTTP/1.1\r\nHost: evil.example\r\n\r\n"
               % target.encode())
        r1 = c.read_response()
    assert r1.status == 200, r1
    # what was stored under http://clone.example/c/poison was asked of clone.example
    assert last_host() == ["clone.example"]
    r2 = cg.get(target, {"Host": "clone.example"})
    assert r2.status == 200 and r2.body == r1.body, r2
    assert "hit" in r2.header("Cache-Status", ""), r2
    # evil.example's own page is another entry, fetched with its own Host
    r3 = cg.get(target, {"Host": "evil.example"})
    assert r3.status == 200 and r3.body != r1.body, r3
    assert last_host() == ["evil.example"]
    assert o.count(path) == 2


def test_absolute_form_stale_entry_is_refreshed_behind(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"cache.enabled": "yes"})
    path = "/c/behind"
    target = path + "?" + urllib.parse.urlencode({"cc": "max-age=1, stale-while-revalidate=30"})
    raw = b"GET http://clone.example%s HTTP/1.1\r\nHost: evil.example\r\n\r\n" % target.encode()

    first = helpers.parse_response(helpers.http_request(cg.port, raw), 0, "GET")[0]
    assert first.status == 200, first
    time.sleep(1.3)  # max-age=1 is over: the next request is answered stale
    r = helpers.parse_response(helpers.http_request(cg.port, raw), 0, "GET")[0]
    assert r.status == 200 and r.body == first.body, r
    helpers.wait_for(lambda: o.count(path) == 2, timeout=CLOSE_WITHIN,
                     what="the background refresh to reach the origin")


# ------------------------------------------- bodies refused after the head went


class RecordingOrigin:
    """A raw upstream that answers /health and /ok with 200 and close, and
    for anything else records the bytes it gets until clonegate closes,
    never answering. .requests: [(bytearray, closed Event)]."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.requests = []
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
        deadline = time.monotonic() + 30
        s.settimeout(0.1)
        data, closed = bytearray(), threading.Event()
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                try:
                    piece = s.recv(65536)
                except socket.timeout:
                    continue
                if not piece:
                    break
                data += piece
                if data.startswith((b"GET /health ", b"GET /ok ")):
                    if b"\r\n\r\n" in data:
                        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                  b"Connection: close\r\n\r\nok\n")
                        return
                elif len(data) == len(piece):  # the first bytes of a request
                    with self.lock:
                        self.requests.append((data, closed))
        except OSError:
            pass
        finally:
            closed.set()
            s.close()

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        for t in self.threads:
            t.join(timeout=2)


@pytest.fixture
def recording_origin(world):
    return world.add(RecordingOrigin())


def assert_no_complete_request(origin):
    """Every request connection <origin> got was closed by clonegate, and
    none carried the end of a chunked body."""
    helpers.wait_for(lambda: all(closed.is_set() for _, closed in origin.requests),
                     timeout=CLOSE_WITHIN, what="clonegate to close the upstream connection")
    for data, _ in origin.requests:
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert b"0\r\n\r\n" not in body, f"origin got a complete request: {bytes(data)[:400]!r}"


def test_bad_chunk_size_is_refused_and_origin_gets_no_complete_request(
        clonegate, recording_origin):
    cg = start(clonegate, servers=[recording_origin.addr])
    raw = (b"POST /framing HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\nzz\r\nsmuggled\r\n0\r\n\r\n")
    refused(cg, raw, 400)
    assert_no_complete_request(recording_origin)
    for data, _ in recording_origin.requests:
        assert b"zz" not in data and b"smuggled" not in data
    still_serves(cg)


def test_chunked_body_growing_over_max_body_size_gets_413(clonegate, recording_origin):
    cg = start(clonegate, servers=[recording_origin.addr], **{"server.max_body_size": "1k"})
    body = helpers.pattern_bytes(3 * 600)
    raw = build_request("POST", "/framing", {"Transfer-Encoding": "chunked"},
                        body=chunked(body, 600))
    refused(cg, raw, 413)
    assert_no_complete_request(recording_origin)
    for data, _ in recording_origin.requests:
        assert len(data.partition(b"\r\n\r\n")[2]) <= 1024 + 64, "over the limit went upstream"
    still_serves(cg)


# ---------------------------------------------------------------- limits


def test_head_over_max_header_size_gets_431(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.max_header_size": "2k"})
    refused(cg, build_request("GET", "/framing", {"X-Big": "a" * 3000}), 431)
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_head_just_under_max_header_size_is_served(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.max_header_size": "2k"})
    raw = build_request("GET", "/framing", {"X-Big": "a" * 1800})
    assert len(raw) < 2048
    r = helpers.parse_response(helpers.http_request(cg.port, raw), 0, "GET", eof=False)[0]
    assert r.status == 200
    assert forwarded(o) == {"/framing": 1}


def test_more_than_64_header_fields_get_431(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate)
    headers = [(f"X-Field-{i}", "v") for i in range(64)]  # plus Host: 65 fields
    refused(cg, build_request("GET", "/framing", headers), 431)
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_64_header_fields_are_served(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate)
    headers = [(f"X-Field-{i}", "v") for i in range(63)]  # plus Host: 64 fields
    assert cg.get("/framing", headers).status == 200
    assert forwarded(o) == {"/framing": 1}


def test_target_over_max_uri_size_gets_414(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.max_uri_size": "1k"})
    refused(cg, build_request("GET", "/framing?q=" + "x" * 1100), 414)
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_content_length_over_max_body_size_gets_413(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.max_body_size": "1k"})
    # The head alone: the refusal must not wait for a body it will not take.
    refused(cg, build_request("POST", "/framing", {"Content-Length": "2048"}), 413)
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_half_a_head_gets_408_after_header_timeout(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.header_timeout": "500ms"})
    with HttpConn(cg.port, timeout=5) as c:
        t0 = time.monotonic()
        c.send(b"GET /framing HTTP/1.1\r\nHost: te")
        r = c.read_response()
        took = time.monotonic() - t0
        assert r.status == 408, r
        assert c.closed_by_peer(timeout=CLOSE_WITHIN)
    assert 0.4 <= took < 2.0, f"408 after {took:.2f} s, header_timeout is 0.5 s"
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_slowloris_drip_gets_408_at_header_timeout(origins, clonegate):
    (o,) = origins(1)
    cg = start(clonegate, **{"server.header_timeout": "500ms"})
    head = b"GET /framing HTTP/1.1\r\nHost: test\r\nX-Drip: " + b"a" * 100
    with HttpConn(cg.port, timeout=5) as c:
        t0 = time.monotonic()
        for byte in head[:40]:  # 4 s of drip at most; the answer is due at 0.5 s
            try:
                c.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            c.sock.settimeout(0.1)
            try:
                piece = c.sock.recv(65536)
            except socket.timeout:
                continue
            c.buf += piece
            c.eof = not piece
            break
        r = c.read_response()
        took = time.monotonic() - t0
        assert r.status == 408, r
        assert c.closed_by_peer(timeout=CLOSE_WITHIN)
    assert 0.4 <= took < 1.5, f"408 after {took:.2f} s of drip, header_timeout is 0.5 s"
    still_serves(cg)
    assert forwarded(o) == {"/ok": 1}


def test_a_request_body_that_stalls_gets_408_and_an_access_log_line(origins, clonegate):
    """A body that stops coming for idle_timeout, before any answer: the
    client gets 408 (then the close) and the access log records it."""
    origins(1)
    cg = start(clonegate, **{"server.idle_timeout": "500ms", "server.access_log": "stderr"})
    with HttpConn(cg.port, timeout=5) as c:
        c.send(build_request("POST", "/sink-stall", {"Content-Length": "10"}) + b"abc")
        r = c.read_response("POST")
        assert r.status == 408, r.raw[:200]
        assert c.closed_by_peer(timeout=3.0)
    helpers.wait_for(lambda: "/sink-stall" in cg.stderr_text() and " 408 " in cg.stderr_text(),
                     timeout=5, what="the access log line of the stalled request")
    still_serves(cg)


def test_idle_keep_alive_connection_closed_after_idle_timeout(origins, clonegate):
    origins(1)
    cg = start(clonegate, **{"server.idle_timeout": "500ms"})
    with HttpConn(cg.port, timeout=5) as c:
        assert c.get("/framing").status == 200
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=3.0), "idle connection still open after 3 s"
        took = time.monotonic() - t0
    assert 0.4 <= took < 1.5, f"idle close after {took:.2f} s, idle_timeout is 0.5 s"
    still_serves(cg)
