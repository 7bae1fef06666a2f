"""browser_check.py: headless Chromium for the dashboard tests (issue 7).

Standard library only. Two ways to look at a page:

    dump_dom(url, tmp_dir)                 the DOM after --virtual-time-budget ms
    screenshot(url, png, tmp_dir, 390, 844)  a PNG at that window size
    with Browser(url, tmp_dir) as b:       one page kept open, read through the
        b.evaluate("document.title")       DevTools protocol (a tiny websocket
                                           client below)

Every Chromium runs headless as root (--no-sandbox), with a fresh
--user-data-dir under <tmp_dir>, no background networking, in its own process
group; it is stopped by its PID (SIGTERM, then SIGKILL of its group after a
bound), and one-shot runs are killed the same way when they overrun.
"""

import base64
import hashlib
import html.parser
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

RUN_TIMEOUT = 60.0  # s a one-shot chromium run may take
START_TIMEOUT = 20.0  # s for the DevTools endpoint to appear
STOP_TIMEOUT = 10.0  # s between SIGTERM and SIGKILL
CALL_TIMEOUT = 10.0  # s per DevTools command
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 64 << 20  # bytes of one DevTools message accepted

FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--no-default-browser-check",
    "--no-proxy-server",  # loopback only, whatever the environment says
    "--disable-dev-shm-usage",
]


def chromium_binary():
    """The chromium to run (env CHROMIUM, else chromium on PATH), or None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")


_runs = itertools.count(1)


def _profile(tmp_dir):
    d = Path(tmp_dir) / f"chromium-profile-{next(_runs)}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _exited(pid, timeout):
    """Waits up to <timeout> s for <pid> to exit, leaving it unreaped (a
    zombie keeps its PID and process group from being reused)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _stop_group(popen, timeout=STOP_TIMEOUT):
    """Ends a chromium we started: SIGTERM to its PID (if still running), waits up
    to <timeout> s, then SIGKILL to its process group (renderers left over,
    or all of it if it ignored SIGTERM) before reaping it."""
    if popen.returncode is None:
        if not _exited(popen.pid, 0):
            try:
                os.kill(popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _exited(popen.pid, timeout)
        try:
            os.killpg(popen.pid, signal.SIGKILL)  # this run's group only
        except (ProcessLookupError, PermissionError):
            pass
    popen.wait(timeout=timeout)


def run_once(args, tmp_dir, timeout=RUN_TIMEOUT):
    """Runs chromium once with FLAGS + <args> (a fresh profile); returns
    (exit code, stdout bytes, stderr text). Killed after <timeout> s."""
    binary = chromium_binary()
    profile = _profile(tmp_dir)
    log = profile.with_suffix(".stderr")
    out_path = profile.with_suffix(".stdout")
    with open(log, "wb") as err, open(out_path, "wb") as out:
        p = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             process_group=0)
    finished = _exited(p.pid, timeout)
    _stop_group(p)
    if not finished:
        raise TimeoutError(f"chromium {args} did not finish within {timeout} s; "
                           f"stderr in {log}")
    return p.returncode, out_path.read_bytes(), log.read_text(errors="replace")


def dump_dom(url, tmp_dir, budget_ms=4000, window="1280,900"):
    """The serialized DOM of <url> after <budget_ms> of virtual time."""
    code, out, err = run_once([f"--virtual-time-budget={budget_ms}", f"--window-size={window}",
                               "--dump-dom", url], tmp_dir)
    if code != 0 or not out:
        raise RuntimeError(f"chromium --dump-dom exited {code}; stderr tail:\n{err[-3000:]}")
    return out.decode("utf-8", errors="replace")


def screenshot(url, png, tmp_dir, width, height, budget_ms=4000):
    """Writes a PNG of <url> at <width>x<height> to <png>."""
    png = Path(png)
    code, _, err = run_once([f"--virtual-time-budget={budget_ms}",
                             f"--window-size={width},{height}", f"--screenshot={png}", url],
                            tmp_dir)
    if code != 0:
        raise RuntimeError(f"chromium --screenshot exited {code}; stderr tail:\n{err[-3000:]}")
    return png


class _Rows(html.parser.HTMLParser):
    """Collects the dashboard's server rows: <tr data-server=A> and the text
    and classes of its td.state cell."""

    def __init__(self):
        super().__init__()
        self.rows = {}  # address -> {"state": text, "classes": [...]}
        self._row = None
        self._in_state = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-server" in a:
            self._row = a["data-server"]
            self.rows[self._row] = {"state": "", "classes": []}
        elif tag == "td" and self._row is not None:
            classes = (a.get("class") or "").split()
            if "state" in classes:
                self._in_state = True
                self.rows[self._row]["classes"] = classes

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_state = False
        elif tag == "tr":
            self._row = None
            self._in_state = False

    def handle_data(self, data):
        if self._in_state and self._row is not None:
            self.rows[self._row]["state"] += data.strip()


def server_rows(dom):
    """{address: {"state", "classes"}} from a dashboard DOM."""
    p = _Rows()
    p.feed(dom)
    p.close()
    return p.rows


# ---------------------------------------------------------------------------
# One page kept open, driven through the DevTools protocol


class WebSocket:
    """The client side of RFC 6455, enough for DevTools: text frames out
    (masked), text/continuation/ping/close frames in."""

    def __init__(self, host, port, path, timeout=CALL_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        head = self._until(b"\r\n\r\n", time.monotonic() + timeout).decode("latin-1")
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            raise ConnectionError(f"websocket handshake refused: {head[:300]!r}")
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        accept = [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
                  if line.lower().startswith("sec-websocket-accept:")]
        if accept != [want]:
            raise ConnectionError(f"bad Sec-WebSocket-Accept in {head[:300]!r}")

    def close(self):
        if self.sock is not None:
            try:
                self._send_frame(0x8, b"")
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("websocket: nothing within the deadline")
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("websocket closed by the browser")
        self.buf += chunk

    def _until(self, sep, deadline):
        while sep not in self.buf:
            if len(self.buf) > 65536:
                raise ConnectionError("websocket handshake answer too long")
            self._fill(deadline)
        head, _, self.buf = self.buf.partition(sep)
        return head

    def _take(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send_text(self, text):
        self._send_frame(0x1, text.encode())

    def recv_text(self, deadline):
        """The next whole text message (pings answered on the way)."""
        parts = []
        while True:
            b0, b1 = self._take(2, deadline)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2, deadline))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8, deadline))[0]
            if n > MAX_MESSAGE:
                raise ConnectionError(f"websocket frame of {n} bytes")
            mask = self._take(4, deadline) if b1 & 0x80 else None
            payload = self._take(n, deadline)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if fin:
                return b"".join(parts).decode("utf-8", errors="replace")


class Browser:
    """A headless chromium showing <url>, with its DevTools endpoint on a
    loopback port it picks itself (--remote-debugging-port=0, read back from
    DevToolsActivePort). .evaluate(js) runs an expression in the page and
    returns its value. .stop() ends it by PID; also a context manager."""

    def __init__(self, url, tmp_dir, window="1280,900"):
        binary = chromium_binary()
        self.url = url
        self.profile = _profile(tmp_dir)
        self.log = self.profile.with_suffix(".stderr")
        self.ws = None
        self._ids = itertools.count(1)
        with open(self.log, "wb") as err:
            self.popen = subprocess.Popen(
                [binary, *FLAGS, f"--user-data-dir={self.profile}",
                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 f"--window-size={window}", url],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, process_group=0)
        try:
            self._attach()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self):
        return self.popen.pid

    def stderr_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _attach(self):
        deadline = time.monotonic() + START_TIMEOUT
        active = self.profile / "DevToolsActivePort"
        port = None
        while True:  # bounded by the deadline
            if self.popen.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.popen.returncode}; stderr tail:"
                                   f"\n{self.stderr_text()[-3000:]}")
            if port is None and active.exists():
                lines = active.read_text().split()
                if lines and lines[0].isdigit():
                    port = int(lines[0])
            if port is not None:
                page = self._page_target(port)
                if page:
                    break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no DevTools page target within {START_TIMEOUT} s; "
                                   f"stderr tail:\n{self.stderr_text()[-3000:]}")
            time.sleep(0.1)
        ws_url = page["webSocketDebuggerUrl"]  # ws://127.0.0.1:PORT/devtools/page/ID
        hostport, _, path = ws_url[len("ws://"):].partition("/")
        host, _, p = hostport.rpartition(":")
        self.ws = WebSocket(host, int(p), "/" + path)

    def _page_target(self, port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                targets = json.loads(r.read())
        except (OSError, ValueError):
            return None
        for t in targets:
            if t.get("type") == "page" and t.get("webSocketDebuggerUrl"):
                return t
        return None

    def call(self, method, params=None, timeout=CALL_TIMEOUT):
        """Sends one DevTools command; returns its result (events skipped)."""
        i = next(self._ids)
        self.ws.send_text(json.dumps({"id": i, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline: recv_text raises past it
            msg = json.loads(self.ws.recv_text(deadline))
            if msg.get("id") != i:
                continue
            if "error" in msg:
                raise RuntimeError(f"DevTools {method}: {msg['error']}")
            return msg.get("result", {})

    def evaluate(self, expression, timeout=CALL_TIMEOUT):
        """The value of <expression> in the page (JSON-serializable)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                        timeout)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page raised: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def stop(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        _stop_group(self.popen)
        return self.popen.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
