#!/usr/bin/env python3
"""origin.py: a scriptable HTTP/1.1 origin for the integration tests.

    python3 origin.py --port P --name N [--host 127.0.0.1]
                      [--tls-cert FILE --tls-key FILE]

Standard library only: one thread per connection, raw HTTP/1.1 with
keep-alive, request bodies read as they arrive (Content-Length or chunked)
and hashed, never held whole, so memory stays bounded whatever the size.
Run as a subprocess so that a test can kill -9 it.

Every response carries X-Origin: <name>, X-Connection: <n> (the accepted
connection it goes out on, from 1) and X-Request-Count: <n> (requests served
so far, this one included). Any request may add response headers with
query parameters hdr=Name:Value (repeatable, URL-encoded).

    /echo                 JSON: method, target, version, headers (list of
                          [name, value] as received), body_length,
                          body_sha256, origin, connection, request_count
    /bytes?n=N&chunked=0|1  N bytes (byte i = 'a' + i % 26) in 64 KiB pieces,
                          with Content-Length or chunked; &close=1: neither,
                          the end of the body is the connection's close
    /sink                 reads a body of any size, answers JSON length, sha256
    /slow?ms=N            answers after N ms; &body_ms=M: sends the head, then
                          the body M ms later
    /status?code=N        answers status N
    /truncated            promises Content-Length 1000, sends 100 bytes, closes
    /garbage              answers a line that is not HTTP, closes
    /close-early          closes without answering
    /ws                   with Upgrade: websocket: 101, then echoes raw bytes
                          until the peer closes (400 without the header)
    /expect               honours Expect: 100-continue (sends 100 Continue,
                          then reads the body); &status=N: answers N at once
                          without reading the body, and closes
    /count                JSON {total, connections, paths: {path: n}};
                          ?path=/x: the count of that path alone, as text
    /control?health=down|up  makes /health answer 503 or 200
    /health               200 "ok" (or 503 after /control?health=down)
    /c/<anything>         a response for the cache tests, shaped by query
                          parameters (see route_cache); body "<origin>
                          <path> #<n>" where n counts that path's requests
    /control?path=/c/x&status=N&ms=N&cut=1&nm=0&cc=V&etag=V&cookie=V  overrides those
                          parameters of one /c/ path (whatever its query);
                          &clear=1 drops its overrides
    /last?path=/c/x       JSON: the headers of that path's last request
    anything else         200, a line naming the origin and the request

/count, /control and /last are not counted themselves.

With --tls-cert and --tls-key it speaks HTTPS only (TLS 1.2 and 1.3, ALPN
http/1.1, resumption by ticket): each connection's handshake runs in its
thread, and /count adds tls_handshakes (completed) and tls_resumed (of
those, resumed sessions). A connection whose handshake fails is closed
and counted in neither.
"""

import argparse
import base64
import email.utils
import hashlib
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse

PIECE = 64 * 1024  # bytes per send / recv
MAX_HEAD = 64 * 1024  # request head limit: larger gets 431
MAX_SLOW_MS = 600_000  # /slow upper bound
MAX_BYTES = 1 << 40  # /bytes upper bound
IDLE_TIMEOUT = 300  # s a connection may sit without a byte
MAX_TRAILERS = 100  # trailer lines after a chunked body
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATTERN = bytes(range(97, 97 + 26)) * (PIECE // 26 + 2)

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
    204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 417: "Expectation Failed", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


class State:
    """Process-wide counters, shared by the connection threads."""

    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0  # accepted so far
        self.total = 0  # requests counted so far
        self.paths = {}  # path -> requests
        self.health_up = True
        self.overrides = {}  # /c/ path -> {param: value}, from /control?path=
        self.last = {}  # /c/ path -> headers of its last request
        self.started = int(time.time())  # s, the epoch /c/?lm= counts back from
        self.tls_handshakes = 0  # completed, with --tls-cert
        self.tls_resumed = 0  # of those, resumed sessions

    def tls_done(self, resumed):
        with self.lock:
            self.tls_handshakes += 1
            if resumed:
                self.tls_resumed += 1

    def new_connection(self):
        with self.lock:
            self.connections += 1
            return self.connections

    def count(self, path):
        with self.lock:
            self.total += 1
            self.paths[path] = self.paths.get(path, 0) + 1
            return self.total


class BadRequest(Exception):
    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


class Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        chunk = self.sock.recv(PIECE)
        if not chunk:
            raise EOFError()
        self.buf += chunk

    def head(self):
        """The request head up to the blank line, or None at a clean EOF."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end != -1:
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                return head
            if len(self.buf) > MAX_HEAD:
                raise BadRequest(431, "head too large")
            try:
                self._more()
            except EOFError:
                if self.buf.strip():
                    raise BadRequest(400, "connection closed mid-head") from None
                return None

    def line(self, limit=4096):
        while True:
            end = self.buf.find(b"\r\n")
            if end != -1:
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                return line
            if len(self.buf) > limit:
                raise BadRequest(400, "line too long")
            self._more()

    def pieces(self, n):
        """Yields the next n bytes in pieces of at most PIECE."""
        while n > 0:
            if not self.buf:
                self._more()
            take = self.buf[: min(n, PIECE)]
            self.buf = self.buf[len(take) :]
            n -= len(take)
            yield take


class Request:
    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # [(name, value)] as received
        split = urllib.parse.urlsplit(target)
        self.path = split.path or "/"
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self.body_length = 0
        self.body_sha256 = hashlib.sha256(b"").hexdigest()

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def tokens(self, name):
        """The comma-separated, lower-cased tokens of every <name> header."""
        out = []
        for k, v in self.headers:
            if k.lower() == name.lower():
                out += [t.strip().lower() for t in v.split(",") if t.strip()]
        return out

    def param(self, key, default=None):
        values = self.query.get(key)
        return values[0] if values else default

    def int_param(self, key, default, hi):
        text = self.param(key)
        if text is None:
            return default
        try:
            v = int(text)
        except ValueError:
            raise BadRequest(400, f"{key} must be a number") from None
        if v < 0 or v > hi:
            raise BadRequest(400, f"{key} must be 0..{hi}")
        return v

    def keep_alive(self):
        conn = self.tokens("Connection")
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn

    def has_body(self):
        return bool(self.tokens("Transfer-Encoding")) or self.header("Content-Length") is not None


def parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"bad request line {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"bad header line {line[:100]!r}")
        headers.append((name, value.strip(" \t")))
    return Request(parts[0], parts[1], parts[2], headers)


def read_body(reader, req):
    """Reads the request body as it arrives into a running digest."""
    h = hashlib.sha256()
    n = 0
    te = req.tokens("Transfer-Encoding")
    if te:
        if te[-1] != "chunked":
            raise BadRequest(400, "unsupported transfer coding")
        while True:
            size_text = reader.line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(400, "bad chunk size") from None
            if size == 0:
                break
            for piece in reader.pieces(size):
                h.update(piece)
                n += len(piece)
            if reader.line() != b"":
                raise BadRequest(400, "chunk not followed by CRLF")
        for _ in range(MAX_TRAILERS):
            if reader.line() == b"":
                break
        else:
            raise BadRequest(400, "too many trailers")
    elif req.header("Content-Length") is not None:
        text = req.header("Content-Length")
        if not text.isdigit():
            raise BadRequest(400, "bad Content-Length")
        for piece in reader.pieces(int(text)):
            h.update(piece)
            n += len(piece)
    req.body_length = n
    req.body_sha256 = h.hexdigest()


class Conn:
    """One client connection and its requests, served in order."""

    def __init__(self, state, sock):
        self.state = state
        self.sock = sock
        self.reader = Reader(sock)
        self.id = state.new_connection()
        self.request_count = 0

    def common_headers(self, req):
        out = [
            ("X-Origin", self.state.name),
            ("X-Connection", str(self.id)),
            ("X-Request-Count", str(self.request_count)),
        ]
        for value in (req.query.get("hdr", []) if req else []):
            name, sep, v = value.partition(":")
            if sep and name.strip():
                out.append((name.strip(), v.strip()))
        return out

    def send_head(self, req, status, headers, keep_alive=True, reason=None):
        lines = [f"HTTP/1.1 {status} {reason or REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in self.common_headers(req) + headers]
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def respond(self, req, status, body=b"", headers=(), keep_alive=True, ctype="text/plain"):
        """A whole response with Content-Length, sent in one write."""
        if isinstance(body, str):
            body = body.encode()
        no_body = 100 <= status < 200 or status in (204, 304)
        headers = list(headers)
        if not no_body:
            headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))] + headers
        head = self.send_head(req, status, headers, keep_alive)
        if no_body or (req is not None and req.method == "HEAD"):
            body = b""
        self.sock.sendall(head + body)
        return keep_alive

    def respond_json(self, req, obj, status=200, keep_alive=True):
        body = json.dumps(obj, sort_keys=True).encode() + b"\n"
        return self.respond(req, status, body, keep_alive=keep_alive, ctype="application/json")

    def serve(self):
        """Requests until the client closes, an error, or a route that closes."""
        try:
            self.sock.settimeout(IDLE_TIMEOUT)
            if isinstance(self.sock, ssl.SSLSocket):
                try:
                    self.sock.do_handshake()
                except ssl.SSLError:
                    return
                self.state.tls_done(self.sock.session_reused)
            while True:
                try:
                    head = self.reader.head()
                    if head is None:
                        return
                    req = parse_head(head)
                except BadRequest as e:
                    self.respond(None, e.status, f"{e}\n", keep_alive=False)
                    return
                if not self.handle(req):
                    return
        except (OSError, EOFError):
            return  # the peer left or reset (or a TLS error): nothing to answer
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def handle(self, req):
        """Answers <req>; returns whether the connection stays open."""
        path = req.path
        if path not in ("/count", "/control", "/last"):
            self.request_count = self.state.count(path)
        else:
            self.request_count = self.state.total
        ka = req.keep_alive()
        try:
            route = ROUTES.get(path, Conn.route_default)
            if path.startswith("/c/"):
                route = Conn.route_cache
            # These read (or refuse) the body themselves.
            if route not in (Conn.route_expect, Conn.route_sink, Conn.route_ws,
                             Conn.route_echo, Conn.route_close_early):
                read_body(self.reader, req)
            return route(self, req, ka)
        except BadRequest as e:
            return self.respond(req, e.status, f"{e}\n", keep_alive=False)

    # -- routes --------------------------------------------------------------

    def route_default(self, req, ka):
        body = f"origin {self.state.name}: {req.method} {req.target}\n"
        return self.respond(req, 200, body, keep_alive=ka)

    def route_health(self, req, ka):
        if self.state.health_up:
            return self.respond(req, 200, "ok\n", keep_alive=ka)
        return self.respond(req, 503, "down\n", keep_alive=ka)

    def route_control(self, req, ka):
        health = req.param("health")
        if health not in (None, "up", "down"):
            raise BadRequest(400, "health must be up or down")
        if health is not None:
            self.state.health_up = health == "up"
        path = req.param("path")
        if path is not None:
            with self.state.lock:
                if req.param("clear") is not None:
                    self.state.overrides.pop(path, None)
                else:
                    o = self.state.overrides.setdefault(path, {})
                    for key in CACHE_OVERRIDES:
                        if req.param(key) is not None:
                            o[key] = req.param(key)
        return self.respond(req, 200, f"health {'up' if self.state.health_up else 'down'}\n",
                            keep_alive=ka)

    def route_echo(self, req, ka):
        read_body(self.reader, req)
        return self.respond_json(req, {
            "method": req.method,
            "target": req.target,
            "version": req.version,
            "headers": [[k, v] for k, v in req.headers],
            "body_length": req.body_length,
            "body_sha256": req.body_sha256,
            "origin": self.state.name,
            "connection": self.id,
            "request_count": self.request_count,
        }, keep_alive=ka)

    def route_sink(self, req, ka):
        read_body(self.reader, req)
        return self.respond_json(req, {"length": req.body_length, "sha256": req.body_sha256},
                                 keep_alive=ka)

    def route_bytes(self, req, ka):
        n = req.int_param("n", 0, MAX_BYTES)
        use_chunked = req.int_param("chunked", 0, 1) == 1
        close = req.int_param("close", 0, 1) == 1
        headers = [("Content-Type", "application/octet-stream")]
        if close:
            ka = False
        elif use_chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(n)))
        self.sock.sendall(self.send_head(req, 200, headers, keep_alive=ka))
        if req.method == "HEAD":
            return ka
        sent = 0
        while sent < n:
            size = min(PIECE, n - sent)
            start = sent % 26
            piece = PATTERN[start : start + size]
            if use_chunked and not close:
                self.sock.sendall(b"%x\r\n" % size + piece + b"\r\n")
            else:
                self.sock.sendall(piece)
            sent += size
        if use_chunked and not close:
            self.sock.sendall(b"0\r\n\r\n")
        return ka

    def route_slow(self, req, ka):
        ms = req.int_param("ms", 0, MAX_SLOW_MS)
        body_ms = req.int_param("body_ms", 0, MAX_SLOW_MS)
        time.sleep(ms / 1000)
        body = b"slow answer\n"
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        self.sock.sendall(self.send_head(req, 200, headers, keep_alive=ka))
        if req.method != "HEAD":
            time.sleep(body_ms / 1000)
            self.sock.sendall(body)
        return ka

    def route_status(self, req, ka):
        code = req.int_param("code", 200, 999)
        if code < 100:
            raise BadRequest(400, "code must be 100..999")
        return self.respond(req, code, f"status {code}\n", keep_alive=ka)

    def route_truncated(self, req, ka):
        head = self.send_head(req, 200, [("Content-Type", "text/plain"),
                                         ("Content-Length", "1000")])
        self.sock.sendall(head + b"x" * 100)
        return False

    def route_garbage(self, req, ka):
        self.sock.sendall(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
        return False

    def route_close_early(self, req, ka):
        return False

    def route_ws(self, req, ka):
        if "websocket" not in req.tokens("Upgrade"):
            read_body(self.reader, req)
            return self.respond(req, 400, "this path wants Upgrade: websocket\n", keep_alive=ka)
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        key = req.header("Sec-WebSocket-Key")
        if key:
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            headers.append(("Sec-WebSocket-Accept", accept))
        self.sock.sendall(self.send_head(req, 101, headers))
        if self.reader.buf:
            self.sock.sendall(self.reader.buf)
            self.reader.buf = b""
        while True:  # ends when the peer closes or after IDLE_TIMEOUT of silence
            data = self.sock.recv(PIECE)
            if not data:
                return False
            self.sock.sendall(data)

    def route_expect(self, req, ka):
        expect = req.header("Expect", "")
        status = req.int_param("status", 0, 999)
        if status:
            # Refuse without reading the body; the rest of the stream is
            # unread body, so the connection cannot be reused.
            return self.respond(req, status, f"status {status}\n", keep_alive=False)
        sent_continue = False
        if expect.lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            sent_continue = True
        read_body(self.reader, req)
        return self.respond_json(req, {
            "expect": expect,
            "continue_sent": sent_continue,
            "length": req.body_length,
            "sha256": req.body_sha256,
        }, keep_alive=ka)

    def route_count(self, req, ka):
        path = req.param("path")
        with self.state.lock:
            if path is not None:
                return self.respond(req, 200, f"{self.state.paths.get(path, 0)}\n", keep_alive=ka)
            obj = {
                "total": self.state.total,
                "connections": self.state.connections,
                "paths": dict(self.state.paths),
                "tls_handshakes": self.state.tls_handshakes,
                "tls_resumed": self.state.tls_resumed,
            }
        return self.respond_json(req, obj, keep_alive=ka)

    def route_last(self, req, ka):
        with self.state.lock:
            headers = self.state.last.get(req.param("path", ""))
        return self.respond_json(req, {"headers": headers}, keep_alive=ka)

    def route_cache(self, req, ka):
        """/c/<anything>, for the cache tests. Query parameters (a /control
        override of the path wins for those in CACHE_OVERRIDES):
            cc=V            Cache-Control: V
            etag=V          ETag: V; a matching If-None-Match gets 304
            lm=N            Last-Modified N s before the origin started (the
                            same date every time); If-Modified-Since at
                            or after it gets 304 (without If-None-Match)
            nm=0            never answer 304
            expires=N       Expires N s from now (negative: past)
            date=N          Date N s ago (0: now); none by default
            vary=V          Vary: V; the body names each varied request
                            header's value
            cookie=V        Set-Cookie: V
            status=N        the status (default 200)
            ms=N            answer after N ms
            size=N          body of N pattern bytes instead of the text;
                            &chunked=1 sends it chunked
            cut=1           promise the whole body, send half, close
        """
        path = req.path
        with self.state.lock:
            n = self.state.paths.get(path, 0)
            self.state.last[path] = [[k, v] for k, v in req.headers]
            over = dict(self.state.overrides.get(path, {}))

        def param(key, default=None):
            return over.get(key, req.param(key, default))

        def number(key, default, lo=0, hi=MAX_SLOW_MS):
            text = param(key)
            if text is None:
                return default
            try:
                v = int(text)
            except ValueError:
                raise BadRequest(400, f"{key} must be a number") from None
            if v < lo or v > hi:
                raise BadRequest(400, f"{key} must be {lo}..{hi}")
            return v

        time.sleep(number("ms", 0) / 1000)
        now = time.time()
        status = number("status", 200, 100, 999)
        headers = []
        if param("cc") is not None:
            headers.append(("Cache-Control", param("cc")))
        etag = param("etag")
        if etag is not None:
            headers.append(("ETag", etag))
        lm = None
        if param("lm") is not None:
            lm = self.state.started - number("lm", 0, 0, 10 ** 9)
            headers.append(("Last-Modified", email.utils.formatdate(lm, usegmt=True)))
        if param("expires") is not None:
            exp = now + number("expires", 0, -10 ** 9, 10 ** 9)
            headers.append(("Expires", email.utils.formatdate(exp, usegmt=True)))
        if param("date") is not None:
            date = now - number("date", 0, 0, 10 ** 9)
            headers.append(("Date", email.utils.formatdate(date, usegmt=True)))
        vary = param("vary")
        if vary is not None:
            headers.append(("Vary", vary))
        if param("cookie") is not None:
            headers.append(("Set-Cookie", param("cookie")))

        not_modified = False
        if param("nm") != "0" and 200 <= status < 300:
            inm = req.tokens("If-None-Match")
            ims = req.header("If-Modified-Since")
            if inm:
                not_modified = etag is not None and (etag.lower() in inm or "*" in inm)
            elif ims and lm is not None:
                try:
                    since = email.utils.parsedate_to_datetime(ims).timestamp()
                    not_modified = since >= lm
                except (TypeError, ValueError):
                    pass
        if not_modified:
            return self.respond(req, 304, headers=headers, keep_alive=ka)

        if param("size") is not None:
            size = number("size", 0, 0, MAX_BYTES)
            body = (PATTERN * (size // len(PATTERN) + 1))[:size]
        else:
            body = f"{self.state.name} {path} #{n}".encode()
            if vary:
                for name in (v.strip() for v in vary.split(",")):
                    if name and name != "*":
                        body += f" {name.lower()}={req.header(name, '')}".encode()
            body += b"\n"
        if param("chunked") == "1" and param("cut") != "1":
            head = self.send_head(req, status, [("Content-Type", "text/plain"),
                                                ("Transfer-Encoding", "chunked")] + headers,
                                  keep_alive=ka)
            self.sock.sendall(head)
            if req.method != "HEAD":
                for i in range(0, len(body), PIECE):
                    piece = body[i : i + PIECE]
                    self.sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                self.sock.sendall(b"0\r\n\r\n")
            return ka
        if param("cut") == "1" and req.method != "HEAD":
            head = self.send_head(req, status, [("Content-Type", "text/plain"),
                                                ("Content-Length", str(len(body)))] + headers)
            self.sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.05)  # the half arrives before the close
            return False
        return self.respond(req, status, body, headers=headers, keep_alive=ka)


# The /c/ parameters a /control?path= override may set.
CACHE_OVERRIDES = ("status", "ms", "cut", "nm", "cc", "etag", "cookie")

ROUTES = {
    "/health": Conn.route_health,
    "/control": Conn.route_control,
    "/echo": Conn.route_echo,
    "/sink": Conn.route_sink,
    "/bytes": Conn.route_bytes,
    "/slow": Conn.route_slow,
    "/status": Conn.route_status,
    "/truncated": Conn.route_truncated,
    "/garbage": Conn.route_garbage,
    "/close-early": Conn.route_close_early,
    "/ws": Conn.route_ws,
    "/expect": Conn.route_expect,
    "/count": Conn.route_count,
    "/last": Conn.route_last,
}


def main():
    ap = argparse.ArgumentParser(description="scriptable HTTP/1.1 test origin")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = ap.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        tls.set_alpn_protocols(["http/1.1"])

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    state = State(args.name)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.host, args.port))
    lsock.listen(1024)
    print(f"origin {args.name} listening on {args.host} port {args.port}", file=sys.stderr,
          flush=True)
    while True:  # until SIGTERM / SIGKILL
        try:
            sock, _ = lsock.accept()
        except InterruptedError:
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            # the handshake runs in the connection's thread (Conn.serve)
            sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=Conn(state, sock).serve, daemon=True).start()


if __name__ == "__main__":
    main()
