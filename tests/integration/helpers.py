"""Helpers for the integration tests: processes, ports, raw HTTP, Redis.

Standard library only. Every wait is a poll with a deadline; every process
is started in its own process group, tracked in PROCS, and stopped by its
PID (SIGTERM, then SIGKILL after a bound). conftest.py builds the fixtures
on top of these.
"""

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ORIGIN_PY = HERE / "origin.py"

CLONEGATE = os.environ.get("CLONEGATE", str(REPO / "build" / "clonegate"))
DEMOCLONE = os.environ.get("DEMOCLONE", str(REPO / "build" / "democlone"))
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")

READY_TIMEOUT = 10.0  # s a process may take to listen
STOP_TIMEOUT = 10.0  # s between SIGTERM and SIGKILL
IO_TIMEOUT = 10.0  # s default socket timeout of the raw HTTP helpers
MAX_HEAD = 256 * 1024  # bytes of a response head the parser accepts

# What makes clonegate's stderr fail a test in teardown.
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")
# An error-level line of clonegate's log ("2024-01-01T00:00:00.000Z error: ...").
ERROR_LINE = re.compile(r"^\S+ error: ", re.M)

# Every Proc started and not yet stopped, so a session can sweep leftovers.
PROCS = []

# The byte pattern of democlone's and origin.py's /bytes bodies.
PATTERN_LEN = 26


def pattern_bytes(n, offset=0):
    """The n bytes /bytes answers from <offset> on: byte i is 'a' + i % 26."""
    start = offset % PATTERN_LEN
    reps = (start + n) // PATTERN_LEN + 1
    return (bytes(range(97, 97 + PATTERN_LEN)) * reps)[start : start + n]


def pattern_sha256(n):
    """SHA-256 hex digest of pattern_bytes(n), computed in bounded memory."""
    h = hashlib.sha256()
    piece = pattern_bytes(PATTERN_LEN * 4096)  # a whole number of periods
    full, rest = divmod(n, len(piece))
    for _ in range(full):
        h.update(piece)
    h.update(piece[:rest])
    return h.hexdigest()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def scratch_dir(kind):
    """A new directory for logs when the caller gives none (pytest's
    tmp_path is the usual one)."""
    return Path(tempfile.mkdtemp(prefix=f"clonegate-{kind}-"))


def wait_for(cond, timeout=10.0, interval=0.05, what="condition"):
    """Polls cond() until it returns a true value, which is returned; raises
    TimeoutError naming <what> after <timeout> s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Ports and processes

_handed_out = set()


def free_port(host="127.0.0.1"):
    """A TCP port that nothing listened on a moment ago (not handed out before
    in this session)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def port_open(port, host="127.0.0.1", timeout=0.5):
    """Whether something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Proc:
    """One child process: its own process group, stderr (and stdout) to a
    file, readiness by TCP port, stopped by PID.

    Proc(argv, name, log_dir, env=None, cwd=None) starts it at once.
    """

    def __init__(self, argv, name, log_dir, env=None, cwd=None):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.cwd = cwd
        self.returncode = None
        self.popen = None
        self.stderr_path = None
        self.starts = 0
        self.start()

    def start(self):
        """Starts (or starts again) the process; stderr goes to a new file
        <log_dir>/<name>.<n>.stderr."""
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        self.starts += 1
        self.stderr_path = self.log_dir / f"{self.name}.{self.starts}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                process_group=0,
            )
        self.returncode = None
        if self not in PROCS:
            PROCS.append(self)
        return self

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def stderr_text(self):
        """What the current run wrote to stderr/stdout so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_port(self, port, host="127.0.0.1", timeout=READY_TIMEOUT):
        """Waits until host:port accepts; raises if the process exits first
        or <timeout> s pass, with the tail of its stderr."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.returncode} before listening on "
                    f"{host}:{port}; stderr:\n{self.stderr_text()[-4000:]}"
                )
            if port_open(port, host, timeout=0.2):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} did not listen on {host}:{port} within {timeout} s; "
                    f"stderr:\n{self.stderr_text()[-4000:]}"
                )
            time.sleep(0.02)

    def signal(self, sig):
        """Sends <sig> to the process (by PID) if it still runs."""
        if self.alive():
            os.kill(self.pid, sig)

    def freeze(self, timeout=5.0):
        """SIGSTOP, then waits until every thread of it is stopped: the
        signal is delivered on its own time, and a thread still running
        could take work meant to wait for the thaw (see thaw())."""
        self.signal(signal.SIGSTOP)

        def all_stopped():
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                        state = f.read().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue  # a thread that just ended
                if state not in ("T", "t"):
                    return False
            return True

        wait_for(all_stopped, timeout=timeout, interval=0.005, what=f"{self.name} stopped")

    def thaw(self):
        """SIGCONT: goes on after freeze()."""
        self.signal(signal.SIGCONT)

    def wait(self, timeout):
        """Waits up to <timeout> s for it to exit; returns its code or None."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL if it has not exited after <timeout> s.
        Returns the exit code (negative: killed by that signal). Idempotent."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None:
                sys.stderr.write(f"{self.name} (pid {self.pid}) ignored SIGTERM; SIGKILL\n")
                self.kill9()
        self.returncode = self.popen.wait(timeout=STOP_TIMEOUT)
        if self in PROCS:
            PROCS.remove(self)
        return self.returncode

    def kill9(self):
        """SIGKILL by PID and reap. Returns the exit code (-9)."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.returncode = self.popen.wait(timeout=STOP_TIMEOUT)
        return self.returncode

    def rss_kb(self):
        return rss_kb(self.pid)


def stop_all():
    """Stops every Proc still tracked (for a session's end, after a hard
    timeout interrupted normal teardown)."""
    for p in list(PROCS):
        try:
            p.stop(timeout=2.0)
        except Exception as e:  # keep sweeping the others
            sys.stderr.write(f"stopping {p.name}: {e}\n")


def rss_kb(pid):
    """Resident set size of <pid> in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def hwm_kb(pid):
    """Peak resident set size (VmHWM) of <pid> in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def open_fds(pid):
    """How many file descriptors <pid> has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------
# The processes the tests start


class Server:
    """A started helper process listening on one port: .port, .addr, .proc."""

    def __init__(self, proc, port, host="127.0.0.1", name=None):
        self.proc = proc
        self.port = port
        self.host = host
        self.name = name or proc.name

    @property
    def addr(self):
        """"host:port" as clonegate's ini writes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def kill9(self):
        return self.proc.kill9()

    def stop(self):
        return self.proc.stop()

    def restart(self, timeout=READY_TIMEOUT):
        """Stops it if it runs, starts it again on the same port, waits."""
        if self.proc.alive():
            self.proc.stop()
        self.proc.start()
        self.proc.wait_port(self.port, self.host, timeout)
        return self

    def get(self, target, headers=None, timeout=IO_TIMEOUT):
        if getattr(self, "tls", False):
            with HttpConn(self.port, self.host, timeout, tls=unverified_tls_context()) as c:
                return c.get(target, headers)
        return get(self.port, target, headers=headers, host=self.host, timeout=timeout)


class Origin(Server):
    """origin.py: .count(path=None) asks it how many requests it served."""

    def count(self, path=None):
        """Requests served (all, or for <path>); /count and /control are not
        counted."""
        if path is None:
            return json.loads(self.get("/count").body)["total"]
        return int(self.get("/count?path=" + path).body)

    def counts(self):
        """The whole /count answer: {"total", "connections", "paths": {...}}."""
        return json.loads(self.get("/count").body)

    def set_health(self, up):
        """Makes its /health answer 200 (up) or 503 (down)."""
        r = self.get("/control?health=" + ("up" if up else "down"))
        assert r.status == 200, r


def start_origin(name, log_dir=None, port=None, host="127.0.0.1", tls=None):
    """Starts tests/integration/origin.py; returns an Origin once it listens.
    <tls>: (cert file, key file) to have it speak HTTPS only; its .get()
    and .count() then go over TLS too (no verification)."""
    log_dir = log_dir or scratch_dir("origin")
    port = port or free_port(host)
    argv = [sys.executable, ORIGIN_PY, "--port", port, "--name", name, "--host", host]
    if tls is not None:
        argv += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    proc = Proc(argv, f"origin-{name}", log_dir)
    proc.wait_port(port, host)
    o = Origin(proc, port, host, name)
    o.tls = tls is not None
    return o


def start_democlone(name, log_dir=None, port=None, host="127.0.0.1", binary=None):
    """Starts build/democlone (env DEMOCLONE); returns a Server once it listens."""
    log_dir = log_dir or scratch_dir("democlone")
    binary = binary or DEMOCLONE
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not built: run make build/democlone")
    port = port or free_port(host)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proc = Proc([binary, "-l", listen, "-n", name], f"democlone-{name}", log_dir)
    proc.wait_port(port, host)
    return Server(proc, port, host, name)


class Redis(Server):
    """A redis-server: .command(*args) sends one command over RESP."""

    def command(self, *args, timeout=IO_TIMEOUT):
        return redis_command(self.port, *args, host=self.host, timeout=timeout)


def start_redis(log_dir=None, port=None, args=()):
    """Starts a fresh redis-server (no persistence) on a free port; <args>
    are extra command-line options (e.g. "--enable-debug-command", "local")."""
    log_dir = log_dir or scratch_dir("redis")
    port = port or free_port()
    data = Path(log_dir) / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        REDIS_SERVER,
        "--bind", "127.0.0.1",
        "--port", port,
        "--save", "",
        "--appendonly", "no",
        "--dir", data,
        "--daemonize", "no",
        *args,
    ]
    proc = Proc(argv, f"redis-{port}", log_dir)
    proc.wait_port(port)
    r = Redis(proc, port, name="redis")
    wait_for(lambda: _redis_ready(r), timeout=READY_TIMEOUT, what="redis PING")
    return r


def _redis_ready(r):
    try:
        return r.command("PING") == "PONG"
    except (OSError, RedisError):
        return False


# ---------------------------------------------------------------------------
# clonegate


def ini_sections(text):
    """Parses ini text into {section: {key: value}} (inline ';'/'#' comments
    dropped). Enough for the files the tests write."""
    out = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and "]" in line:
            section = line[1 : line.index("]")].strip()
            out.setdefault(section, {})
            continue
        if "=" in line and section is not None:
            key, value = line.split("=", 1)
            value = re.split(r"\s[;#]", value, maxsplit=1)[0]
            out[section][key.strip()] = value.strip()
    return out


def render_ini(sections):
    """{section: {key: value}} -> ini text; a None value leaves the key out."""
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "yes" if value else "no"
            lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


def split_addr(text):
    """"127.0.0.1:80" / "[::1]:80" -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


class Clonegate:
    """A running clonegate: .port, .host, .stats_port, .ini_path, .proc.

    Teardown (conftest) calls .check_log(), which fails on sanitizer reports
    and on error lines not matched by a regex in .allowed_errors.
    """

    def __init__(self, proc, ini_path, ini_text):
        self.proc = proc
        self.ini_path = Path(ini_path)
        self.ini_text = ini_text
        self.allowed_errors = []  # regexes of error lines a test expects
        self.expected_exit = 0  # exit status after SIGTERM; None: any
        self.stopped_code = None
        self._admin_ready = False
        self._read_ini(ini_text)

    def _read_ini(self, text):
        sections = ini_sections(text)
        self.sections = sections
        listen = [a for a in sections.get("server", {}).get("listen", "").split(",") if a.strip()]
        self.listen = [split_addr(a) for a in listen] or [("127.0.0.1", 8080)]
        self.host, self.port = self.listen[0]
        stats = [a for a in sections.get("stats", {}).get("listen", "").split(",") if a.strip()]
        self.stats_listen = [split_addr(a) for a in stats]
        self.stats_host, self.stats_port = self.stats_listen[0] if stats else (None, None)
        tls = [a for a in sections.get("tls", {}).get("listen", "").split(",") if a.strip()]
        self.tls_listen = [split_addr(a) for a in tls]

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits for the client listeners in the ini ([server] and [tls]
        listen); the admin listener is waited for by admin() on first use."""
        for host, port in self.listen + self.tls_listen:
            self.proc.wait_port(port, host, timeout)

    def request(self, method, target, headers=None, body=b"", timeout=IO_TIMEOUT):
        """One request on a fresh connection to the first listener."""
        return request(self.port, method, target, headers, body, host=self.host, timeout=timeout)

    def get(self, target, headers=None, timeout=IO_TIMEOUT):
        return self.request("GET", target, headers, timeout=timeout)

    def conn(self, timeout=IO_TIMEOUT):
        """A keep-alive HttpConn to the first listener."""
        return HttpConn(self.port, host=self.host, timeout=timeout)

    def admin(self, target, method="GET", headers=None, body=b"", timeout=IO_TIMEOUT):
        """One request to the [stats] listener."""
        if self.stats_port is None:
            raise RuntimeError("this clonegate has no [stats] listen")
        if not self._admin_ready:
            self.proc.wait_port(self.stats_port, self.stats_host)
            self._admin_ready = True
        return request(
            self.stats_port, method, target, headers, body, host=self.stats_host, timeout=timeout
        )

    def stats(self):
        """GET /stats on the admin listener, decoded."""
        r = self.admin("/stats")
        assert r.status == 200, r
        return json.loads(r.body)

    def reload(self, ini_text=None):
        """Rewrites the ini (when given) and sends SIGHUP. Poll for the
        effect (wait_for) rather than sleeping."""
        if ini_text is not None:
            self.ini_path.write_text(ini_text)
            self.ini_text = ini_text
            self._read_ini(ini_text)
        self.proc.signal(signal.SIGHUP)

    def signal(self, sig):
        self.proc.signal(sig)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM (SIGKILL after <timeout> s); returns the exit code."""
        code = self.proc.stop(timeout)
        if self.stopped_code is None:
            self.stopped_code = code
        return code

    def stderr_text(self):
        return self.proc.stderr_text()

    def error_lines(self):
        """Error-level lines of its log that no allowed_errors regex matches."""
        text = self.stderr_text()
        bad = []
        for line in text.splitlines():
            if ERROR_LINE.match(line) and not any(re.search(p, line) for p in self.allowed_errors):
                bad.append(line)
        return bad

    def sanitizer_reports(self):
        text = self.stderr_text()
        return [p for p in SANITIZER_PATTERNS if p in text]

    def check_log(self):
        """Problems to fail the test with: sanitizer reports, unexpected error
        lines, an unexpected exit status. Returns a list of strings."""
        problems = []
        reports = self.sanitizer_reports()
        if reports:
            problems.append(f"sanitizer report in clonegate stderr: {', '.join(reports)}")
        errors = self.error_lines()
        if errors:
            problems.append("unexpected error lines:\n  " + "\n  ".join(errors[:20]))
        code, want = self.stopped_code, self.expected_exit
        if want is not None and code not in (None, want):
            problems.append(f"clonegate exited with {code}, expected {want}")
        if problems:
            problems.append(f"stderr ({self.proc.stderr_path}), last 4000 chars:\n"
                            + self.stderr_text()[-4000:])
        return problems

    def rss_kb(self):
        return rss_kb(self.pid)


def start_clonegate(ini_text, tmp_dir=None, binary=None, name="clonegate", wait=True, args=()):
    """Writes <ini_text> to <tmp_dir>/<name>.ini, runs `clonegate -c` on it
    (binary: env CLONEGATE, default build/clonegate) and, when <wait>, waits
    until its client listeners accept."""
    binary = binary or CLONEGATE
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not built: run make build/clonegate")
    tmp_dir = Path(tmp_dir or scratch_dir("clonegate"))
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ini_path = tmp_dir / f"{name}.ini"
    ini_path.write_text(ini_text)
    proc = Proc([binary, *args, "-c", ini_path], name, tmp_dir, cwd=str(REPO))
    cg = Clonegate(proc, ini_path, ini_text)
    if wait:
        cg.wait_ready()
    return cg


def clonegate_check(ini_text, tmp_dir=None, binary=None, timeout=READY_TIMEOUT):
    """Runs `clonegate -t -c FILE`; returns (exit code, stdout + stderr)."""
    binary = binary or CLONEGATE
    ini_path = Path(tmp_dir or scratch_dir("check")) / "check.ini"
    ini_path.write_text(ini_text)
    r = subprocess.run(
        [binary, "-t", "-c", str(ini_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        cwd=str(REPO),
    )
    return r.returncode, r.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------
# Raw HTTP


class Incomplete(Exception):
    """More bytes are needed to finish parsing a response."""


class ProtocolError(Exception):
    """The bytes are not a valid HTTP/1.x response."""


class Response:
    """One parsed response: .version .status .reason .headers (list of
    (name, value) as received) .body (bytes, de-chunked) .trailers .chunked
    .raw (the response's exact bytes) .close_delimited."""

    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.body = b""
        self.trailers = []
        self.chunked = False
        self.close_delimited = False
        self.raw = b""

    def header(self, name, default=None):
        """The first value of header <name> (any case), or <default>."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        """Every value of header <name>, in order."""
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name):
        return self.header(name) is not None

    def json(self):
        return json.loads(self.body)

    def text(self):
        return self.body.decode(errors="replace")

    def __repr__(self):
        body = self.body[:200]
        return (
            f"<Response {self.status} {self.reason!r} headers={self.headers!r} "
            f"body[{len(self.body)}]={body!r}>"
        )


def _no_body(status, method):
    return method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304)


def _parse_head(head, r=None):
    """Fills <r> (default a new Response) from the head's text: status line
    and headers. Returns it."""
    lines = head.split("\r\n")
    m = re.match(r"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
    if not m:
        raise ProtocolError(f"bad status line: {lines[0][:200]!r}")
    r = r if r is not None else Response()
    r.version, r.status, r.reason = m.group(1), int(m.group(2)), m.group(3) or ""
    for line in lines[1:]:
        if ":" not in line:
            raise ProtocolError(f"bad header line: {line[:200]!r}")
        k, v = line.split(":", 1)
        r.headers.append((k, v.strip(" \t")))
    return r


def parse_response(data, offset=0, method="GET", eof=False):
    """Parses one response from data[offset:]. Returns (Response, end offset).
    Raises Incomplete when more bytes are needed (a close-delimited body is
    complete only when <eof>), ProtocolError on garbage. A 101 response ends
    at its head: what follows belongs to the new protocol."""
    end = data.find(b"\r\n\r\n", offset)
    if end == -1:
        if len(data) - offset > MAX_HEAD:
            raise ProtocolError("response head too long")
        if eof and len(data) > offset:
            raise ProtocolError(f"truncated head: {data[offset:offset + 200]!r}")
        raise Incomplete()
    r = _parse_head(data[offset:end].decode("latin-1"))
    pos = end + 4

    te = ",".join(r.header_all("Transfer-Encoding")).lower()
    cl = r.header_all("Content-Length")
    if _no_body(r.status, method):
        pass
    elif "chunked" in te:
        r.chunked = True
        body = []
        while True:
            eol = data.find(b"\r\n", pos)
            if eol == -1:
                raise Incomplete()
            size_text = data[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:40]!r}") from None
            pos = eol + 2
            if size == 0:
                break
            if len(data) < pos + size + 2:
                raise Incomplete()
            body.append(data[pos : pos + size])
            if data[pos + size : pos + size + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            pos += size + 2
        while True:  # trailers, up to the empty line
            eol = data.find(b"\r\n", pos)
            if eol == -1:
                raise Incomplete()
            line = data[pos:eol].decode("latin-1")
            pos = eol + 2
            if not line:
                break
            k, _, v = line.partition(":")
            r.trailers.append((k, v.strip()))
        r.body = b"".join(body)
    elif cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise ProtocolError(f"bad Content-Length {cl!r}")
        n = int(cl[0])
        if len(data) < pos + n:
            if eof:
                raise ProtocolError(f"body truncated: {len(data) - pos} of {n} bytes")
            raise Incomplete()
        r.body = data[pos : pos + n]
        pos += n
    else:
        if not eof:
            raise Incomplete()
        r.close_delimited = True
        r.body = data[pos:]
        pos = len(data)
    r.raw = data[offset:pos]
    return r, pos


def parse_responses(data, methods=None, eof=True):
    """Parses every response in <data> (pipelined answers on one stream).
    <methods>: the request methods in order (HEAD matters), default GET.
    Interim 1xx responses (but 101) are returned as responses of their own
    and do not use up a method. Raises Incomplete if the last is partial."""
    out = []
    pos = 0
    i = 0
    while pos < len(data):
        method = methods[i] if methods and i < len(methods) else "GET"
        r, pos = parse_response(data, pos, method, eof)
        out.append(r)
        if r.status == 101:
            break
        if not (100 <= r.status < 200):
            i += 1
    return out


def _connect(port, host, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _request_methods(raw):
    """The methods of the requests in <raw>, found at line starts (a body
    that happens to hold a request line would fool it; pass methods then)."""
    return re.findall(rb"(?:^|\r\n\r\n|\n\n)([A-Z]+) \S+ HTTP/", raw)


def http_request(port, raw, timeout=IO_TIMEOUT, host="127.0.0.1", responses=1, methods=None):
    """Sends <raw> bytes on a new connection and returns the raw bytes read
    until <responses> complete final responses have arrived, the server
    closed, or <timeout> s passed (then whatever arrived). The connection is
    closed afterwards."""
    if methods is None:
        methods = [m.decode() for m in _request_methods(raw)]
    deadline = time.monotonic() + timeout
    data = b""
    with _connect(port, host, timeout) as s:
        s.sendall(raw)
        while True:
            try:
                done = parse_responses(data, methods, eof=False)
                finals = [r for r in done if r.status >= 200 or r.status == 101]
                if len(finals) >= responses:
                    return data
            except Incomplete:
                pass
            except ProtocolError:
                pass  # keep reading: the caller gets the raw bytes anyway
            left = deadline - time.monotonic()
            if left <= 0:
                return data
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return data
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def build_request(method, target, headers=None, body=b"", host_header="test", version="HTTP/1.1"):
    """Request bytes. <headers>: dict or list of pairs; Host is added unless
    given, Content-Length when a body is given and neither it nor
    Transfer-Encoding is."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    if "host" not in names and host_header is not None:
        headers.insert(0, ("Host", host_header))
    if isinstance(body, str):
        body = body.encode()
    if body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + body


def chunked(body, piece=4096):
    """<body> in chunked transfer coding (with the final 0 chunk)."""
    out = []
    for i in range(0, len(body), piece):
        part = body[i : i + piece]
        out.append(b"%x\r\n%s\r\n" % (len(part), part))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def request(port, method, target, headers=None, body=b"", host="127.0.0.1", timeout=IO_TIMEOUT):
    """One request on a fresh connection; returns the parsed Response."""
    raw = build_request(method, target, headers, body)
    data = http_request(port, raw, timeout=timeout, host=host, methods=[method])
    if not data:
        raise ProtocolError(f"no response from {host}:{port} to {method} {target}")
    pos = 0
    while True:  # each pass consumes a response: bounded by len(data)
        r, pos = parse_response(data, pos, method, eof=True)
        if r.status >= 200 or r.status == 101:
            return r


def get(port, target, headers=None, host="127.0.0.1", timeout=IO_TIMEOUT):
    return request(port, "GET", target, headers, host=host, timeout=timeout)


class HttpConn:
    """A client connection kept open across requests (keep-alive,
    pipelining, half-sent requests).

        with HttpConn(port) as c:
            r1 = c.request("GET", "/echo")
            c.send(raw); r2 = c.read_response()
    """

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT, tls=None,
                 server_hostname=None):
        """<tls>: an ssl.SSLContext to speak HTTPS with (the handshake is
        done here), sending SNI <server_hostname> (None: none)."""
        self.port = port
        self.host = host
        self.timeout = timeout
        self.sock = _connect(port, host, timeout)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname)
            except BaseException:
                self.sock.close()
                raise
        self.buf = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, raw):
        self.sock.sendall(raw)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {self.timeout} s: {self.buf[:200]!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def read_response(self, method="GET", timeout=None, interim=False):
        """The next response on the connection. 1xx interim responses are
        skipped unless <interim>. Raises ConnectionError if the server
        closes before a whole response, TimeoutError after <timeout> s."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                r, pos = parse_response(self.buf, 0, method, eof=self.eof)
            except Incomplete:
                if self.eof:
                    raise ConnectionError(f"server closed mid-response: {self.buf[:200]!r}")
                self._fill(deadline)
                continue
            self.buf = self.buf[pos:]
            if 100 <= r.status < 200 and r.status != 101 and not interim:
                continue
            return r

    def request(self, method, target, headers=None, body=b"", timeout=None):
        """Sends one request and reads its response."""
        self.send(build_request(method, target, headers, body))
        return self.read_response(method, timeout)

    def get(self, target, headers=None, timeout=None):
        return self.request("GET", target, headers, timeout=timeout)

    def recv_raw(self, n=65536, timeout=None):
        """Raw bytes: what is buffered, else one recv (b"" at EOF)."""
        if self.buf:
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        self.sock.settimeout(timeout or self.timeout)
        return self.sock.recv(n)

    def closed_by_peer(self, timeout=1.0):
        """Whether the server closes the connection within <timeout> s (any
        bytes that arrive first are kept in the buffer)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if time.monotonic() >= deadline:
                return False
            try:
                self._fill(deadline)
            except (TimeoutError, socket.timeout):
                return False
        return True


def unverified_tls_context():
    """A client ssl.SSLContext that accepts any certificate (for test
    origins behind TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class StreamResult(Response):
    """A Response whose body was hashed as it came: .length and .sha256 of
    it (de-chunked), .body its first <keep> bytes only, .elapsed s from
    sending to the last byte."""

    def __init__(self):
        super().__init__()
        self.length = 0
        self.sha256 = hashlib.sha256(b"").hexdigest()
        self.elapsed = 0.0


class _SockReader:
    """Buffered reads with one overall deadline."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.eof = False

    def fill(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("response not complete before the deadline")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk
        return bool(chunk)

    def until(self, sep, limit):
        while True:
            i = self.buf.find(sep)
            if i != -1:
                out, self.buf = self.buf[:i], self.buf[i + len(sep) :]
                return out
            if len(self.buf) > limit:
                raise ProtocolError(f"no {sep!r} within {limit} bytes")
            if not self.fill():
                raise ConnectionError(f"closed before {sep!r}: {self.buf[:200]!r}")

    def pieces(self, n):
        while n > 0:
            if not self.buf and not self.fill():
                raise ConnectionError(f"closed with {n} body bytes missing")
            take = self.buf[:n]
            self.buf = self.buf[len(take) :]
            n -= len(take)
            yield take


def stream_request(port, method, target, headers=None, body=None, host="127.0.0.1",
                   timeout=120.0, keep=65536):
    """One request on a fresh connection, for bodies too big to hold: <body>
    is bytes or an iterable of bytes, sent as produced (give Content-Length,
    or Transfer-Encoding: chunked to have each piece framed). The response
    body is read into a running digest; its first <keep> bytes are kept in
    .body. Returns a StreamResult."""
    headers = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    te_chunked = any(k.lower() == "transfer-encoding" and "chunked" in v.lower()
                     for k, v in headers)
    if isinstance(body, (bytes, bytearray)):
        head = build_request(method, target, headers, bytes(body))
        body = ()
    else:
        head = build_request(method, target, headers)
    start = time.monotonic()
    deadline = start + timeout
    with _connect(port, host, timeout) as s:
        try:
            s.sendall(head)
            for piece in body or ():
                if te_chunked and piece:
                    piece = b"%x\r\n%s\r\n" % (len(piece), piece)
                s.sendall(piece)
            if te_chunked:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and stopped reading: read that answer
        rd = _SockReader(s, deadline)
        while True:  # interim 1xx answers, then the final one
            r = _parse_head(rd.until(b"\r\n\r\n", MAX_HEAD).decode("latin-1"), StreamResult())
            if not (100 <= r.status < 200) or r.status == 101:
                break
        h = hashlib.sha256()
        kept = []

        def take(piece):
            h.update(piece)
            if r.length < keep:
                kept.append(piece[: keep - r.length])
            r.length += len(piece)

        te = ",".join(r.header_all("Transfer-Encoding")).lower()
        cl = r.header("Content-Length")
        if _no_body(r.status, method):
            pass
        elif "chunked" in te:
            r.chunked = True
            while True:
                size = int(rd.until(b"\r\n", 4096).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                for piece in rd.pieces(size):
                    take(piece)
                if rd.until(b"\r\n", 2) != b"":
                    raise ProtocolError("chunk not followed by CRLF")
            while True:
                line = rd.until(b"\r\n", MAX_HEAD)
                if not line:
                    break
                k, _, v = line.decode("latin-1").partition(":")
                r.trailers.append((k, v.strip()))
        elif cl is not None:
            for piece in rd.pieces(int(cl)):
                take(piece)
        else:
            r.close_delimited = True
            while True:  # ends at EOF, or TimeoutError at the deadline
                if rd.buf:
                    take(rd.buf)
                    rd.buf = b""
                if not rd.fill():
                    break
        r.sha256 = h.hexdigest()
        r.body = b"".join(kept)
        r.elapsed = time.monotonic() - start
        return r


def pattern_pieces(n, piece=1 << 20):
    """Yields pattern_bytes(n) in pieces of <piece> bytes, for big uploads."""
    block = pattern_bytes(piece + PATTERN_LEN)
    sent = 0
    while sent < n:
        size = min(piece, n - sent)
        start = sent % PATTERN_LEN
        yield block[start : start + size]
        sent += size


# ---------------------------------------------------------------------------
# Redis (RESP2, enough for tests)


class RedisError(Exception):
    pass


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_resp_read(f) for _ in range(n)]
    raise RedisError(f"bad RESP reply {line[:80]!r}")


def redis_command(port, *args, host="127.0.0.1", timeout=IO_TIMEOUT):
    """Sends one command (e.g. "SET", "k", "v") on a fresh connection and
    returns the reply: str (simple string), int, bytes (bulk), list, None.
    A Redis error reply raises RedisError."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    raw = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(raw)
        with s.makefile("rb") as f:
            return _resp_read(f)
