"""Tests of the harness itself: the origin, the demo clone, Redis and the
raw HTTP helpers, without clonegate."""

import signal
import socket
import time

import pytest

import helpers
from helpers import HttpConn, build_request, chunked, http_request, parse_responses


def test_origin_echo_keeps_the_connection(origins):
    (o,) = origins(1)
    with HttpConn(o.port) as c:
        r1 = c.request("GET", "/echo?a=1", {"X-Test": "one"})
        r2 = c.request("POST", "/echo", {"X-Test": "two"}, body=b"hello")
    assert r1.status == r2.status == 200
    assert r1.header("X-Origin") == "origin1"
    assert r1.header("X-Connection") == r2.header("X-Connection")
    assert int(r2.header("X-Request-Count")) == int(r1.header("X-Request-Count")) + 1
    e1, e2 = r1.json(), r2.json()
    assert (e1["method"], e1["target"], e1["version"]) == ("GET", "/echo?a=1", "HTTP/1.1")
    assert ["X-Test", "one"] in e1["headers"]
    assert e2["body_length"] == 5 and e2["body_sha256"] == helpers.sha256(b"hello")
    # A new socket is a new connection.
    assert o.get("/echo").header("X-Connection") != r1.header("X-Connection")


@pytest.mark.parametrize("framing", ["chunked=1", "chunked=0", "close=1"])
def test_origin_bytes_framing_parses(origins, framing):
    (o,) = origins(1)
    n = 200_000
    r = o.get(f"/bytes?n={n}&{framing}")
    assert r.status == 200
    assert r.chunked == (framing == "chunked=1")
    assert r.close_delimited == (framing == "close=1")
    assert len(r.body) == n and helpers.sha256(r.body) == helpers.pattern_sha256(n)
    assert r.body == helpers.pattern_bytes(n)


def test_pipelined_responses_parse(origins):
    (o,) = origins(1)
    raw = (
        build_request("GET", "/bytes?n=70000&chunked=1")
        + build_request("HEAD", "/bytes?n=10")
        + build_request("GET", "/status?code=204")
        + build_request("POST", "/echo", body=b"x" * 10)
    )
    data = http_request(o.port, raw, responses=4)
    rs = parse_responses(data, ["GET", "HEAD", "GET", "POST"], eof=False)
    assert [r.status for r in rs] == [200, 200, 204, 200]
    assert rs[0].body == helpers.pattern_bytes(70000)
    assert rs[1].body == b"" and rs[1].header("Content-Length") == "10"
    assert rs[3].json()["body_length"] == 10
    assert len({r.header("X-Connection") for r in rs}) == 1


def test_origin_reads_big_chunked_body_streaming(origins):
    (o,) = origins(1)
    body = helpers.pattern_bytes(8 << 20)
    with HttpConn(o.port, timeout=30) as c:
        r = c.request("POST", "/sink", {"Transfer-Encoding": "chunked"}, body=chunked(body, 65536))
    assert r.json() == {"length": len(body), "sha256": helpers.sha256(body)}
    assert o.proc.rss_kb() < 64 * 1024


def test_origin_expect_100_continue(origins):
    (o,) = origins(1)
    with HttpConn(o.port) as c:
        c.send(build_request("POST", "/expect", {"Expect": "100-continue",
                                                 "Content-Length": "3"}))
        interim = c.read_response("POST", interim=True)
        assert interim.status == 100
        c.send(b"abc")
        r = c.read_response("POST")
    assert r.json()["continue_sent"] and r.json()["length"] == 3


def test_origin_websocket_echo(origins):
    (o,) = origins(1)
    with HttpConn(o.port) as c:
        c.send(build_request("GET", "/ws", {"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}))
        r = c.read_response()
        assert r.status == 101
        assert r.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        c.send(b"\x01\x02raw bytes")
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < 11 and time.monotonic() < deadline:
            got += c.recv_raw()
    assert got == b"\x01\x02raw bytes"


def test_origin_misbehaving_paths(origins):
    (o,) = origins(1)
    data = http_request(o.port, build_request("GET", "/truncated"))
    with pytest.raises(helpers.ProtocolError):
        parse_responses(data, eof=True)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"x" * 100)
    assert http_request(o.port, build_request("GET", "/garbage")).startswith(b"THIS IS NOT HTTP")
    assert http_request(o.port, build_request("GET", "/close-early")) == b""
    assert o.get("/status?code=503").status == 503
    r = o.get("/cache?hdr=Cache-Control:max-age%3D60&hdr=Surrogate-Key:a%20b")
    assert r.header("Cache-Control") == "max-age=60" and r.header("Surrogate-Key") == "a b"


def test_origin_counts_and_health_control(origins):
    (o,) = origins(1)
    for _ in range(3):
        o.get("/a")
    o.get("/b")
    assert o.count("/a") == 3 and o.count("/b") == 1 and o.count() == 4
    assert o.counts()["paths"] == {"/a": 3, "/b": 1}
    assert o.get("/health").status == 200
    o.set_health(False)
    assert o.get("/health").status == 503
    o.set_health(True)
    assert o.get("/health").status == 200


def test_origin_kill9_and_restart(origins):
    (o,) = origins(1)
    o.get("/x")
    assert o.kill9() == -signal.SIGKILL
    assert not helpers.port_open(o.port)
    o.restart()
    assert o.count() == 0
    assert o.get("/health").status == 200
    assert o.stop() == 0


def test_democlone_health_and_cacheable(democlones):
    c1, c2 = democlones(2)
    r = c1.get("/health")
    assert (r.status, r.body, r.header("X-Clone")) == (200, b"ok\n", "clone1")
    r = c2.get("/cacheable")
    assert r.status == 200 and r.header("X-Clone") == "clone2"
    assert r.header("Cache-Control") == "public, max-age=60"
    etag = r.header("ETag")
    assert etag and r.header("Last-Modified")
    assert c1.get("/cacheable").header("ETag") == etag
    assert c1.get("/cacheable", {"If-None-Match": etag}).status == 304
    assert c1.get("/nostore").header("Cache-Control") == "no-store"


def test_democlone_answers_head_with_the_get_length_and_no_body(democlones):
    (c,) = democlones(1)
    with HttpConn(c.port) as conn:
        for path in ("/", "/cacheable", "/nostore", "/health"):
            length = len(conn.get(path).body)
            r = conn.request("HEAD", path)
            assert r.status == 200 and r.body == b"", (path, r.raw[:300])
            assert r.header("Content-Length") == str(length), (path, r.raw[:300])
        # the connection is still in step: the next answer is the right one
        assert conn.get("/health").body == b"ok\n"


def test_democlone_keepalive_echo_bytes_slow(democlones):
    (c,) = democlones(1)
    with HttpConn(c.port) as conn:
        r1 = conn.request("POST", "/echo", {"X-Test": "yes"}, body=b"12345")
        r2 = conn.get("/bytes?n=300000")
        t = time.monotonic()
        r3 = conn.get("/slow?ms=200")
        took = time.monotonic() - t
    assert r1.header("X-Connection") == r2.header("X-Connection") == r3.header("X-Connection")
    assert b"X-Test: yes\n" in r1.body and b"body-length: 5\n" in r1.body
    assert r2.chunked and r2.body == helpers.pattern_bytes(300000)
    assert r3.status == 200 and 0.19 <= took < 5


def test_democlone_lazy_big_body(democlones):
    (c,) = democlones(1)
    n = 256 << 20
    got = 0
    with socket.create_connection(("127.0.0.1", c.port), timeout=30) as s:
        s.sendall(build_request("GET", f"/bytes?n={n}&cl=1"))
        deadline = time.monotonic() + 60
        while got < n + 100 and time.monotonic() < deadline:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
            if got > 64 << 20:
                break  # well into the body: memory must still be small
        assert c.proc.rss_kb() < 64 * 1024
    assert got > 64 << 20
    assert c.stop() == 0


def test_redis_answers_ping(redis):
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100) == b"+PONG\r\n"
    assert redis.command("SET", "k", "v") == "OK"
    assert redis.command("GET", "k") == b"v"
    assert redis.command("CONFIG", "GET", "save") == [b"save", b""]


def test_ini_overrides():
    import conftest

    s = conftest.default_sections(["127.0.0.1:1", "127.0.0.1:2"])
    conftest.apply_overrides(s, {"server.workers": 4, "cache": {"redis": None}, "stats": None,
                                 "tls.listen": "127.0.0.1:3"})
    text = helpers.render_ini(s)
    parsed = helpers.ini_sections(text)
    assert parsed["server"]["workers"] == "4"
    assert parsed["upstream"]["servers"] == "127.0.0.1:1, 127.0.0.1:2"
    assert "redis" not in parsed["cache"] and "stats" not in parsed
    assert parsed["tls"]["listen"] == "127.0.0.1:3"
    assert helpers.ini_sections("[a]\nk = v ; note\n") == {"a": {"k": "v"}}


@pytest.mark.parametrize("framing", ["chunked=1", "chunked=0", "close=1"])
def test_stream_request_big_download(origins, framing):
    (o,) = origins(1)
    n = (64 << 20) + 7
    r = helpers.stream_request(o.port, "GET", f"/bytes?n={n}&{framing}")
    assert r.status == 200 and r.length == n
    assert r.sha256 == helpers.pattern_sha256(n)
    assert r.body == helpers.pattern_bytes(65536)


@pytest.mark.parametrize("te", [True, False])
def test_stream_request_big_upload(origins, te):
    (o,) = origins(1)
    n = (32 << 20) + 3
    headers = {"Transfer-Encoding": "chunked"} if te else {"Content-Length": str(n)}
    r = helpers.stream_request(o.port, "POST", "/sink", headers, helpers.pattern_pieces(n))
    assert r.json() == {"length": n, "sha256": helpers.pattern_sha256(n)}


def test_ipv6_origin(origins):
    (o,) = origins(1, host="::1")
    assert o.addr == f"[::1]:{o.port}"
    assert o.get("/health").status == 200
