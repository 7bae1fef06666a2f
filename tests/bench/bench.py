#!/usr/bin/env python3
"""Clonegate's benchmark: Clonegate side by side with HAProxy, nginx and
Varnish, each in front of the same two origin clones, driven by wrk.

Run by `make bench` (see README.md, "Benchmark"). Python 3 standard library
only, plus Debian's wrk, nginx, haproxy, varnishd, redis-server, openssl,
gnuplot and taskset.

Owns: every process it starts (each the leader of its own process group,
tracked by pid and stopped by that id on exit, on error, on Ctrl-C, SIGTERM
and SIGHUP), and its scratch directories (mktemp; removed at the end unless
KEEP=1). Writes only under the output directory (build/bench by default).
Listens on 127.0.0.1 only, on ports the kernel hands out as free.

Options come from the environment (the Makefile passes its variables on):
  QUICK=1         1 round x 3 s (default: 3 rounds x 5 s)
  ROUNDS, DURATION  rounds, and seconds per measured run
  WORKERS         worker threads/processes of every contender (default 1)
  ONLY            comma list of scenarios (default all)
  CONTENDERS      comma list of contenders (default all installed)
  KEEP=1          keep the scratch directory (configs, logs)
  BENCH_CPUS      CPU list (taskset syntax) for proxies, origins and redis
  LOAD_CPUS       CPU list for wrk
  CLONEGATE       the clonegate executable (default build/clonegate)

Every scenario but one is a wrk run. `idle` is not: it measures what an idle
keep-alive client connection costs in memory. A fresh contender (configured
as for `pass`, allowing more than IDLE_CONNS clients and idling them for
longer than the measurement) gets one warm-up request; after IDLE_PAUSE s its
VmRSS (current, summed over its processes) is read. The bench itself then
opens IDLE_CONNS connections (non-blocking sockets and a selector, at most
IDLE_WINDOW connecting or waiting for their answer at a time, so that the
proxies' upstream pools stay small), sends one GET /nostore on each, reads
the whole answer (200, 1 KiB) and keeps it open; after IDLE_SETTLE s VmRSS is
read again, and every connection must still be open. The figure is
idle_bytes_per_conn = (VmRSS after - VmRSS before) / IDLE_CONNS, in bytes;
Clonegate's ratio is to the peer with the fewest bytes (lower is better).
The connections are then reset (SO_LINGER 0: no TIME_WAIT left behind).
"""

import argparse
import ctypes
import errno
import http.client
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")
KIB = 1024
READY_TIMEOUT = 20.0  # s a contender or origin may take to answer
STOP_GRACE = 5.0  # s between SIGTERM and SIGKILL
WRK_SLACK = 30.0  # s wrk may overrun its -d before it is stopped
WARMUP = 1  # s of unmeasured load before each measured run
HEALTH_INTERVAL = "2s"
IDLE_CONNS = 10000  # idle scenario: client connections held open at once
IDLE_WINDOW = 8  # ... of which at most this many connecting or awaiting their answer
IDLE_PAUSE = 0.5  # s after the warm-up request before the first VmRSS reading
IDLE_SETTLE = 1.0  # s with every connection open and idle before the second
IDLE_TIMEOUT = 60.0  # s opening them all may take
IDLE_HEADROOM = 1000  # client connections each contender allows beyond IDLE_CONNS
# Every TLS listener offers the same: TLS 1.2 and 1.3, these 1.3 suites in the server's order.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

# name -> what wrk asks for. cache: the peers run with their cache on;
# tls: over HTTPS; close: Connection: close on every request.
SCENARIOS = {
    "pass": dict(path="/nostore", size=KIB, conns=64, close=False, tls=False, cache=False,
                 desc="1 KiB no-store, keep-alive, 64 connections"),
    "hit": dict(path="/small", size=KIB, conns=64, close=False, tls=False, cache=True,
                desc="1 KiB max-age=300, warmed, 64 connections; Clonegate from L1"),
    "hit-redis": dict(path="/small", size=KIB, conns=64, close=False, tls=False, cache=True,
                      desc="as hit, Clonegate with memory = 0 (every hit from Redis); "
                      "peers as in hit"),
    "big": dict(path="/big", size=256 * KIB, conns=64, close=False, tls=False, cache=False,
                desc="256 KiB no-store, keep-alive, 64 connections"),
    "conns": dict(path="/nostore", size=KIB, conns=1000, close=False, tls=False, cache=False,
                  desc="1 KiB no-store, 1,000 keep-alive connections"),
    "close": dict(path="/nostore", size=KIB, conns=64, close=True, tls=False, cache=False,
                  desc="1 KiB no-store, Connection: close on every request, 64 connections"),
    "tls": dict(path="/nostore", size=KIB, conns=64, close=False, tls=True, cache=False,
                desc="1 KiB no-store over HTTPS, keep-alive, 64 connections"),
    "tls-handshakes": dict(path="/nostore", size=KIB, conns=64, close=True, tls=True,
                           cache=False, desc="1 KiB no-store over HTTPS, a new TLS connection "
                           "(full handshake) per request, 64 connections"),
    # not a wrk run: see Bench.idle()
    "idle": dict(path="/nostore", size=KIB, conns=IDLE_CONNS, close=False, tls=False,
                 cache=False, idle=True,
                 desc="VmRSS bytes per idle keep-alive client connection: %d connections "
                 "opened by the bench, one 1 KiB no-store request each, then held idle"
                 % IDLE_CONNS),
}
CONTENDERS = ["clonegate", "haproxy", "nginx", "varnish"]
PROGRAMS = {"clonegate": None, "haproxy": "haproxy", "nginx": "nginx", "varnish": "varnishd"}
NEEDED = {"wrk": "wrk", "nginx": "nginx-light", "redis-server": "redis-server",
          "openssl": "openssl"}

LUA_DONE = r"""-- Clonegate bench: one JSON line with wrk's figures when the run ends.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "CG-BENCH {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,"
    .. "\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%d,"
    .. "\"p90_us\":%d,\"p99_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class BenchError(Exception):
    """A failure that ends one run (or the whole bench during set-up)."""


class Interrupted(Exception):
    """A signal asked us to stop."""


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def runs_in(contender, scen):
    """Varnish terminates no TLS; every other pairing runs."""
    return not (contender == "varnish" and SCENARIOS[scen]["tls"])


# ------------------------------------------------------------------ processes


def _parent_death_signal():
    # Runs in the child before exec: should this harness die by SIGKILL, the
    # kernel sends the child SIGTERM, so nothing is left behind.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_stat(pid):
    """(ppid, pgrp, state, cpu ticks incl. reaped children) of pid, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rindex(b")") + 2:].split()
    # after the command: state ppid pgrp ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return int(rest[1]), int(rest[2]), rest[0].decode(), ticks


def all_stats():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def family(leader, stats):
    """Live pids of leader's process group and of its descendants."""
    children = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    found = set()
    todo = [leader] + [pid for pid, st in stats.items() if st[1] == leader]
    while todo:
        pid = todo.pop()
        if pid in found or pid not in stats:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return {pid for pid in found if stats[pid][2] != "Z"}


def cpu_ticks(leaders):
    """{pid: ticks} over the families of leaders, taken in one /proc pass."""
    stats = all_stats()
    snap = {}
    for leader in leaders:
        for pid in family(leader, stats):
            snap[pid] = stats[pid][3]
    return snap


def cpu_seconds(before, after):
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / TICKS


def machine_busy():
    """CPU seconds the whole machine spent busy so far (steal not included)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICKS  # user nice system irq softirq


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_rss_mib(pids):
    kib = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        kib += int(line.split()[1])
                        break
        except OSError:
            pass
    return kib / 1024.0


def rss_bytes(pids):
    """Current VmRSS summed over pids, in bytes."""
    kib = 0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kib += int(line.split()[1])
                        break
        except OSError:
            pass
    return kib * 1024


class Processes:
    """Everything the bench started, by pid. Each process leads its own
    process group, so signalling the group (by that pid) reaches its workers."""

    def __init__(self):
        self.live = {}  # pid -> Popen; owned, emptied by stop()/stop_all()

    def start(self, name, argv, logfile=None, cpus=None, capture=False):
        if cpus:
            argv = ["taskset", "-c", cpus] + argv  # taskset execs: the pid stays
        out = subprocess.PIPE if capture else open(logfile, "ab")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
                                 start_new_session=True, preexec_fn=_parent_death_signal,
                                 universal_newlines=capture)
        finally:
            if not capture:
                out.close()
        p.cg_name = name
        self.live[p.pid] = p
        return p

    def stop(self, p):
        """SIGTERM to p's group, then SIGKILL after STOP_GRACE; waits, bounded."""
        if p.pid not in self.live:
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                p.poll()
                if p.returncode is not None and not self._group_left(p.pid):
                    break
                time.sleep(0.02)
            else:
                continue
            break
        try:
            p.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        del self.live[p.pid]

    @staticmethod
    def _group_left(pgid):
        return any(st[1] == pgid and st[2] != "Z" for st in all_stats().values())

    def stop_all(self):
        for p in reversed(list(self.live.values())):
            self.stop(p)


# ------------------------------------------------------------------ small helpers


def free_ports(n):
    """n distinct loopback ports the kernel sees as free right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def get(port, path, tls_ctx=None, timeout=3.0):
    """One GET; (status, headers with lower-case names, body, tls details)."""
    if tls_ctx is not None:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls_ctx)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": "bench.test"})
        r = c.getresponse()
        body = r.read()
        tls = None
        if tls_ctx is not None and c.sock is not None:
            tls = "%s %s" % (c.sock.version(), c.sock.cipher()[0])
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, tls
    finally:
        c.close()


def answer_done(buf):
    """(status, connection header) once buf holds one whole HTTP/1.1 answer, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip().lower()
    body = len(buf) - end - 4
    if "chunked" in headers.get("transfer-encoding", ""):
        if not buf.endswith(b"\r\n0\r\n\r\n"):
            return None
    elif body < int(headers.get("content-length", "0")):
        return None
    return status, headers.get("connection", "")


def hold_idle(port, path, n, window, timeout):
    """n keep-alive connections to port, each having had one GET path answered
    200 (read whole), left open: the list of their sockets. At most window of
    them connecting or waiting for their answer at a time."""
    request = ("GET %s HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: clonegate-bench\r\n\r\n"
               % path).encode()
    done, busy = [], {}  # busy: socket -> bytes read so far, or None while connecting
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    started = 0
    ok = False
    try:
        while len(done) < n:
            while started < n and len(busy) < window:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                busy[s] = None
                started += 1
                err = s.connect_ex(("127.0.0.1", port))
                if err not in (0, errno.EINPROGRESS):
                    raise BenchError("idle: connection %d: connect: %s" % (started, os.strerror(err)))
                sel.register(s, selectors.EVENT_WRITE)
            if time.monotonic() > deadline:
                raise BenchError("idle: only %d of %d connections answered within %.0f s"
                                 % (len(done), n, timeout))
            for key, _ in sel.select(1.0):
                s = key.fileobj
                if busy[s] is None:  # connected (or refused)
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError("idle: connection %d: connect: %s"
                                         % (len(done) + 1, os.strerror(err)))
                    s.send(request)  # a few dozen bytes into an empty buffer
                    busy[s] = b""
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    raise BenchError("idle: connection %d closed by the proxy before its "
                                     "answer was complete" % (len(done) + 1))
                busy[s] += chunk
                answer = answer_done(busy[s])
                if answer is None:
                    continue
                if answer[0] != 200 or "close" in answer[1]:
                    raise BenchError("idle: connection %d: status %d, Connection: %s"
                                     % (len(done) + 1, answer[0], answer[1] or "-"))
                sel.unregister(s)
                del busy[s]
                done.append(s)
        ok = True
        return done
    finally:
        sel.close()
        if not ok:
            close_reset(done + list(busy))


def close_reset(socks):
    """Close with SO_LINGER 0: a reset, no TIME_WAIT left behind."""
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        s.close()


def still_open(socks):
    """How many of socks the peer has not closed (nothing to read on any)."""
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(socks) - len(sel.select(0))
    finally:
        sel.close()


def origin_counts(port):
    """(accepted connections, requests) of an origin, from its stub_status."""
    _, _, body, _ = get(port, "/_status")
    numbers = body.decode().splitlines()[2].split()
    return int(numbers[0]), int(numbers[2])


def redis_command(port, *words):
    msg = "*%d\r\n" % len(words)
    for w in words:
        msg += "$%d\r\n%s\r\n" % (len(w.encode()), w)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(msg.encode())
        return s.recv(1024).decode(errors="replace").strip()


def tail(path, lines=12):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def version_of(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (r.stdout.strip().splitlines() or [""])[0]


def env_int(name, default, low=1, high=10000):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise SystemExit("bench: %s=%r is not a whole number" % (name, raw))
    if not low <= v <= high:
        raise SystemExit("bench: %s=%d is outside %d..%d" % (name, v, low, high))
    return v


def env_list(name, known):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return list(known)
    picked = [w.strip() for w in raw.split(",") if w.strip()]
    bad = [w for w in picked if w not in known]
    if bad:
        raise SystemExit("bench: %s: unknown %s (known: %s)"
                         % (name, ", ".join(bad), ", ".join(known)))
    return [k for k in known if k in picked]


def parse_cpus(text):
    """'0-2,5' -> [0, 1, 2, 5]."""
    cpus = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
        if hi_i < lo_i or hi_i - lo_i > 4096:
            raise ValueError(part)
        cpus.update(range(lo_i, hi_i + 1))
    return sorted(cpus)


def cpu_text(cpus):
    return ",".join(str(c) for c in cpus)


def fmt(v, digits=2):
    if v is None:
        return "-"
    if digits == 0:
        return "{:,.0f}".format(v)
    return "%.*f" % (digits, v)


# ------------------------------------------------------------------ configurations


def nginx_head(scratch, name, workers, nofile):
    user = "user root;\n" if os.geteuid() == 0 else ""
    tmp = os.path.join(scratch, "tmp-" + name)
    return (
        f"{user}daemon off;\nworker_processes {workers};\n"
        f"pid {scratch}/{name}.pid;\nerror_log {scratch}/{name}.log warn;\n"
        f"worker_rlimit_nofile {nofile};\n"
        f"events {{ worker_connections {min(20000, nofile)}; }}\n"
        "http {\n  access_log off;\n  keepalive_timeout 120s;\n"
        "  keepalive_requests 10000000;\n  default_type application/octet-stream;\n"
        + "".join(f"  {kind}_temp_path {tmp}/{kind};\n"
                  for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")))


def origin_conf(scratch, name, port, nofile):
    """One clone: nginx, one worker, static files, every answer naming it."""
    locations = ""
    for path, cc in (("small", "public, max-age=300"), ("nostore", "no-store"),
                     ("big", "no-store")):
        locations += (f"    location = /{path} {{\n"
                      f"      add_header Cache-Control \"{cc}\" always;\n"
                      f"      add_header X-Clone {name} always;\n    }}\n")
    return nginx_head(scratch, name, 1, nofile) + (
        "  sendfile on;\n  tcp_nopush on;\n  etag off;\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        f"    root {scratch}/www;\n{locations}"
        f"    location = /health {{ add_header X-Clone {name}; return 200 \"ok\\n\"; }}\n"
        "    location = /_status { stub_status; }\n"
        "    location / { return 404; }\n  }\n}\n")


def nginx_conf(b, scen, port, tls_port):
    s = SCENARIOS[scen]
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n"
                      for p in b.origin_ports)
    cache_zone = cache_use = ""
    if s["cache"]:
        cache_zone = (f"  proxy_cache_path {b.cache_dir('nginx')} levels=1:2 "
                      "keys_zone=bench:16m max_size=256m inactive=10m use_temp_path=off;\n")
        cache_use = "      proxy_cache bench;\n      proxy_cache_lock on;\n"
    listen_tls = ""
    if s["tls"]:
        listen_tls = (f"    listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
                      f"    ssl_certificate {b.cert};\n    ssl_certificate_key {b.key};\n"
                      "    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_prefer_server_ciphers on;\n"
                      f"    ssl_conf_command Ciphersuites {TLS13_SUITES};\n")
    return nginx_head(b.scratch, "nginx", b.workers, b.nofile) + cache_zone + (
        f"  upstream clones {{\n{servers}    keepalive 1024;\n"
        "    keepalive_requests 10000000;\n    keepalive_timeout 120s;\n  }\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n{listen_tls}"
        "    location / {\n      proxy_pass http://clones;\n      proxy_http_version 1.1;\n"
        "      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n"
        "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "      proxy_max_temp_file_size 0;\n"
        f"{cache_use}    }}\n  }}\n}}\n")


def haproxy_conf(b, scen, port, tls_port):
    s = SCENARIOS[scen]
    maxconn = max(2000, min(20000, (b.nofile - 500) // 2))
    limits = ""
    if s.get("idle"):
        # HAProxy reserves two fds per connection (client and server side), so
        # IDLE_CONNS would need more than the usual open-file limit; idle
        # clients need one each. Without strict-limits it starts and says so.
        maxconn = IDLE_CONNS + IDLE_HEADROOM
        limits = f"  ulimit-n {b.nofile}\n  no strict-limits\n"
    servers = "".join(f"  server clone{i + 1} 127.0.0.1:{p}\n"
                      for i, p in enumerate(b.origin_ports))
    bind_tls = f"  bind 127.0.0.1:{tls_port} ssl crt {b.cert_and_key}\n" if s["tls"] else ""
    cache_section = cache_use = ""
    if s["cache"]:
        cache_section = ("\ncache bench\n  total-max-size 64\n  max-object-size 1048576\n"
                         "  max-age 300\n")
        cache_use = "  http-request cache-use bench\n  http-response cache-store bench\n"
    return (
        f"global\n  nbthread {b.workers}\n  maxconn {maxconn}\n{limits}"
        "  ssl-default-bind-options ssl-min-ver TLSv1.2\n"
        f"  ssl-default-bind-ciphersuites {TLS13_SUITES}\n\n"
        "defaults\n  mode http\n  option http-keep-alive\n  option forwardfor\n"
        f"  http-reuse always\n  maxconn {maxconn}\n  timeout connect 2s\n"
        "  timeout client 60s\n  timeout server 30s\n  timeout http-request 10s\n"
        f"  timeout http-keep-alive 120s\n{cache_section}\n"
        f"frontend web\n  bind 127.0.0.1:{port}\n{bind_tls}  backlog 4096\n"
        "  default_backend clones\n\n"
        f"backend clones\n  balance roundrobin\n{cache_use}"
        "  option httpchk\n  http-check send meth GET uri /health ver HTTP/1.1 hdr Host bench\n"
        f"  default-server check inter {HEALTH_INTERVAL} rise 2 fall 3\n{servers}")


def varnish_vcl(b, scen):
    backends = ""
    for i, p in enumerate(b.origin_ports):
        backends += (f"backend clone{i + 1} {{\n  .host = \"127.0.0.1\";\n  .port = \"{p}\";\n"
                     "  .probe = { .url = \"/health\"; .interval = "
                     f"{HEALTH_INTERVAL}; .timeout = 1s; .window = 3; .threshold = 2; }}\n}}\n")
    adds = "".join(f"  clones.add_backend(clone{i + 1});\n" for i in range(len(b.origin_ports)))
    return ("vcl 4.1;\nimport directors;\n\n" + backends
            + "\nsub vcl_init {\n  new clones = directors.round_robin();\n" + adds + "}\n\n"
            "sub vcl_recv {\n  set req.backend_hint = clones.backend();\n"
            # outside the hit scenarios Varnish passes, as a no-cache proxy would
            + ("" if SCENARIOS[scen]["cache"] else "  return (pass);\n") + "}\n")


def clonegate_ini(b, scen, port, tls_port):
    s = SCENARIOS[scen]
    tls = ""
    if s["tls"]:
        tls = (f"\n[tls]\nlisten = 127.0.0.1:{tls_port}\ncert = {b.cert}\nkey = {b.key}\n"
               f"protocols = TLSv1.2 TLSv1.3\nciphersuites = {TLS13_SUITES}\n")
    memory = "0" if scen == "hit-redis" else "64m"
    max_conns = IDLE_CONNS + IDLE_HEADROOM if s.get("idle") else 10000
    servers = ", ".join(f"127.0.0.1:{p}" for p in b.origin_ports)
    return (
        f"; written by tests/bench/bench.py for the {scen} scenario\n"
        f"[server]\nlisten = 127.0.0.1:{port}\nworkers = {b.workers}\n"
        f"max_connections = {max_conns}\nidle_timeout = 120s\naccess_log = off\n"
        f"error_log_level = warn\n{tls}\n"
        f"[upstream]\nservers = {servers}\nbalance = round_robin\nkeepalive = 512\n"
        "connect_timeout = 2s\nresponse_timeout = 30s\nretries = 1\n\n"
        f"[health]\npath = /health\ninterval = {HEALTH_INTERVAL}\ntimeout = 1s\n"
        "rise = 2\nfall = 3\n\n"
        f"[cache]\nenabled = yes\nredis = 127.0.0.1:{b.redis_port}\nmemory = {memory}\n"
        "max_object_size = 8m\n\n"
        f"[stats]\nlisten = 127.0.0.1:{b.stats_port}\nallow = 127.0.0.1/32\n")


# ------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, opts, procs):
        self.o = opts
        self.procs = procs
        self.workers = opts.workers
        self.scratch = tempfile.mkdtemp(prefix="clonegate-bench.")
        os.chmod(self.scratch, 0o755)  # nginx workers may run as another user
        self.shm = None  # tmpfs dir for the peers' caches, when /dev/shm is writable
        self.nofile = 0
        self.origins = []  # Popen of each clone
        self.origin_ports = []
        self.redis = None
        self.notes = []
        self.tls_seen = {}  # contender -> "TLSv1.3 TLS_AES_..." negotiated
        self.raw = {}  # scenario -> contender -> [one dict per round]

    def path(self, name):
        return os.path.join(self.scratch, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def cache_dir(self, name):
        return os.path.join(self.shm or self.scratch, "cache-" + name)

    # -- set-up -------------------------------------------------------------
    def setup(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if self.nofile < 2600 and "conns" in self.o.scenarios:
            self.notes.append("open-file limit %d: conns needs about 2,600 (raise ulimit -Hn)"
                              % self.nofile)
        if self.nofile < IDLE_CONNS + 200 and "idle" in self.o.scenarios:
            self.notes.append("open-file limit %d: idle needs about %d (raise ulimit -Hn)"
                              % (self.nofile, IDLE_CONNS + 200))
        if os.access("/dev/shm", os.W_OK):
            self.shm = tempfile.mkdtemp(prefix="clonegate-bench.", dir="/dev/shm")
            os.chmod(self.shm, 0o755)

        for sub in ("www", "tmp-clone1", "tmp-clone2", "tmp-nginx"):
            os.makedirs(self.path(sub))
        for name, size in (("small", KIB), ("nostore", KIB), ("big", 256 * KIB)):
            with open(os.path.join(self.scratch, "www", name), "wb") as f:
                f.write((b"0123456789abcdef" * (size // 16 + 1))[:size])
        self.write("done.lua", LUA_DONE)

        # one self-signed P-256 certificate for every TLS listener
        self.cert, self.key = self.path("cert.pem"), self.path("key.pem")
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", self.key, "-out", self.cert],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
        if r.returncode != 0:
            raise BenchError("openssl could not make a certificate:\n" + r.stdout)
        with open(self.cert) as c, open(self.key) as k:
            self.cert_and_key = self.write("cert-and-key.pem", c.read() + k.read())
        self.tls_ctx = ssl.create_default_context(cafile=self.cert)

        ports = free_ports(5 + 2 * len(CONTENDERS))
        self.origin_ports = ports[0:2]
        self.redis_port, self.stats_port = ports[2], ports[3]
        self.port = {c: ports[4 + 2 * i] for i, c in enumerate(CONTENDERS)}
        self.tls_port = {c: ports[5 + 2 * i] for i, c in enumerate(CONTENDERS)}

        for i, port in enumerate(self.origin_ports):
            name = "clone%d" % (i + 1)
            conf = self.write(name + ".conf", origin_conf(self.scratch, name, port, self.nofile))
            p = self.procs.start(name, ["nginx", "-p", self.scratch, "-e", self.path(name + ".log"),
                                        "-c", conf], self.path(name + ".log"), self.o.bench_cpus)
            self.origins.append(p)
            self.wait_ready(p, port, "/health", name, self.path(name + ".log"))
            for path, size in (("/small", KIB), ("/nostore", KIB), ("/big", 256 * KIB)):
                st, h, body, _ = get(port, path)
                if st != 200 or len(body) != size or h.get("x-clone") != name:
                    raise BenchError("%s %s: status %d, %d bytes, X-Clone %r"
                                     % (name, path, st, len(body), h.get("x-clone")))

        if "clonegate" in self.o.contenders:
            self.redis = self.procs.start(
                "redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                          "--save", "", "--appendonly", "no", "--dir", self.scratch,
                          "--daemonize", "no", "--logfile", ""],
                self.path("redis.log"), self.o.bench_cpus)
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                try:
                    if redis_command(self.redis_port, "PING") == "+PONG":
                        break
                except OSError:
                    pass
                if self.redis.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("redis-server did not start:\n" + tail(self.path("redis.log")))
                time.sleep(0.05)
            # Clonegate must accept every configuration the bench gives it
            for scen in self.o.scenarios:
                ini = self.write("clonegate-check.ini",
                                 clonegate_ini(self, scen, self.port["clonegate"],
                                               self.tls_port["clonegate"]))
                r = subprocess.run([self.o.clonegate, "-t", "-c", ini], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
                if r.returncode != 0:
                    raise BenchError("clonegate -t refused the %s configuration:\n%s"
                                     % (scen, r.stdout))

    def wait_ready(self, proc, port, path, name, logfile, tls=False):
        deadline = time.monotonic() + READY_TIMEOUT
        why = "no answer"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise BenchError("%s exited (status %s):\n%s" % (name, proc.returncode,
                                                                 tail(logfile)))
            try:
                st = get(port, path, self.tls_ctx if tls else None, timeout=1.0)[0]
                if st == 200:
                    return
                why = "status %d" % st
            except (OSError, http.client.HTTPException) as e:
                why = str(e) or type(e).__name__
            time.sleep(0.05)
        raise BenchError("%s not ready on :%d%s within %.0f s (%s):\n%s"
                         % (name, port, path, READY_TIMEOUT, why, tail(logfile)))

    # -- one run: a fresh contender, one scenario --------------------------
    def start(self, name, scen):
        log = self.path(name + ".log")
        port, tls_port = self.port[name], self.tls_port[name]
        if name == "clonegate":
            redis_command(self.redis_port, "FLUSHALL")
            conf = self.write("clonegate.ini", clonegate_ini(self, scen, port, tls_port))
            argv = [self.o.clonegate, "-c", conf]
        elif name == "haproxy":
            conf = self.write("haproxy.cfg", haproxy_conf(self, scen, port, tls_port))
            argv = ["haproxy", "-db", "-f", conf]
        elif name == "nginx":
            shutil.rmtree(self.cache_dir("nginx"), ignore_errors=True)
            conf = self.write("nginx.conf", nginx_conf(self, scen, port, tls_port))
            argv = ["nginx", "-p", self.scratch, "-e", log, "-c", conf]
        elif name == "varnish":
            work = self.cache_dir("varnish")
            shutil.rmtree(work, ignore_errors=True)
            vcl = self.write("varnish.vcl", varnish_vcl(self, scen))
            argv = ["varnishd", "-F", "-j", "none", "-n", work, "-T", "none",
                    "-a", "127.0.0.1:%d" % port, "-f", vcl, "-s", "malloc,256m",
                    "-p", "thread_pools=%d" % self.workers, "-p", "listen_depth=4096"]
            if SCENARIOS[scen].get("idle"):
                argv += ["-p", "timeout_idle=120"]  # default 5 s: longer than idle takes
        else:
            raise BenchError("unknown contender " + name)
        return self.procs.start(name, argv, log, self.o.bench_cpus), log

    def wrk(self, port, scen, seconds):
        s = SCENARIOS[scen]
        url = "%s://127.0.0.1:%d%s" % ("https" if s["tls"] else "http", port, s["path"])
        argv = ["wrk", "-t", str(min(self.o.wrk_threads, s["conns"])), "-c", str(s["conns"]),
                "-d", "%ds" % seconds, "--timeout", "5s", "-s", self.path("done.lua")]
        if s["close"]:
            argv += ["-H", "Connection: close"]
        argv.append(url)
        p = self.procs.start("wrk", argv, cpus=self.o.load_cpus, capture=True)
        try:
            out, err = p.communicate(timeout=seconds + WRK_SLACK)
        except subprocess.TimeoutExpired:
            raise BenchError("wrk ran past %d s" % (seconds + WRK_SLACK))
        finally:
            self.procs.stop(p)
        with open(self.path("wrk.log"), "a") as f:
            f.write("$ %s\n%s%s\n" % (" ".join(argv), out, err))
        for line in out.splitlines():
            if line.startswith("CG-BENCH "):
                return json.loads(line[len("CG-BENCH "):])
        raise BenchError("wrk printed no result: " + (out + err)[-400:])

    def clonegate_cache(self):
        try:
            st, _, body, _ = get(self.stats_port, "/stats")
            c = json.loads(body)["cache"]
            return {"hits": c["hits"], "l2_hits": c["l2_hits"]}
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return None

    def idle(self, name, scen, rnd):
        """The idle scenario: VmRSS bytes per idle keep-alive client connection."""
        s = SCENARIOS[scen]
        port = self.port[name]
        if self.nofile < IDLE_CONNS + 200:
            raise BenchError("open-file limit %d is too low for %d connections"
                             % (self.nofile, IDLE_CONNS))
        res = {"round": rnd}
        proc, log = self.start(name, scen)
        socks = []
        try:
            self.wait_ready(proc, port, s["path"], name, log)
            st, _, body, _ = get(port, s["path"])  # the warm-up request
            if st != 200 or len(body) != s["size"]:
                raise BenchError("%s answered %s with %d, %d bytes"
                                 % (name, s["path"], st, len(body)))
            time.sleep(IDLE_PAUSE)
            before = rss_bytes(family(proc.pid, all_stats()))
            t0 = time.monotonic()
            socks = hold_idle(port, s["path"], IDLE_CONNS, IDLE_WINDOW, IDLE_TIMEOUT)
            opened = time.monotonic() - t0
            time.sleep(IDLE_SETTLE)
            pids = family(proc.pid, all_stats())
            after = rss_bytes(pids)
            left = still_open(socks)
            if proc.poll() is not None:
                raise BenchError("%s exited during the run (status %s):\n%s"
                                 % (name, proc.returncode, tail(log)))
            if left < len(socks):
                raise BenchError("%s closed %d of the %d idle connections within %.1f s"
                                 % (name, len(socks) - left, len(socks), IDLE_SETTLE))
            rss = peak_rss_mib(pids)
        finally:
            close_reset(socks)
            self.procs.stop(proc)
        res.update({
            "idle_conns": IDLE_CONNS,
            "idle_bytes_per_conn": (after - before) / IDLE_CONNS,
            "rss_before_mib": before / (1024.0 * 1024),
            "rss_after_mib": after / (1024.0 * 1024),
            "open_s": opened,
            "errors": 0,
            "rss_mib": rss,
            "processes": len(pids),
        })
        return res

    def run(self, name, scen, rnd):
        s = SCENARIOS[scen]
        if s.get("idle"):
            return self.idle(name, scen, rnd)
        tls_ctx = self.tls_ctx if s["tls"] else None
        port = self.tls_port[name] if s["tls"] else self.port[name]
        res = {"round": rnd}
        proc, log = self.start(name, scen)
        try:
            self.wait_ready(proc, port, s["path"], name, log, tls=s["tls"])
            clones = set()
            for _ in range(4):  # right answer, and both clones reached
                st, h, body, tls = get(port, s["path"], tls_ctx)
                if st != 200 or len(body) != s["size"]:
                    raise BenchError("%s answered %s with %d, %d bytes"
                                     % (name, s["path"], st, len(body)))
                clones.add(h.get("x-clone"))
                if tls:
                    self.tls_seen[name] = tls
            if not s["cache"]:
                res["both_clones"] = len(clones) == 2
            if WARMUP:
                self.wrk(port, scen, WARMUP)
            cg0 = self.clonegate_cache() if name == "clonegate" else None
            leaders = [proc.pid]
            before = cpu_ticks(leaders)
            origin0 = cpu_ticks([p.pid for p in self.origins])
            redis0 = cpu_ticks([self.redis.pid]) if self.redis else {}
            counts0 = [origin_counts(p) for p in self.origin_ports]
            busy0, wrk0, wall0 = machine_busy(), children_cpu(), time.monotonic()
            w = self.wrk(port, scen, self.o.duration)
            busy1, wrk1, wall = machine_busy(), children_cpu(), time.monotonic() - wall0
            counts1 = [origin_counts(p) for p in self.origin_ports]
            after = cpu_ticks(leaders)
            origin1 = cpu_ticks([p.pid for p in self.origins])
            redis1 = cpu_ticks([self.redis.pid]) if self.redis else {}
            cg1 = self.clonegate_cache() if name == "clonegate" else None
            if proc.poll() is not None:
                raise BenchError("%s exited during the run (status %s):\n%s"
                                 % (name, proc.returncode, tail(log)))
            rss = peak_rss_mib(after)
        finally:
            self.procs.stop(proc)

        n = max(1, w["requests"])
        per10k = 10000.0 / n
        seconds = w["duration_us"] / 1e6
        # the stub_status request itself counts once per clone
        origin_reqs = sum(c1[1] - c0[1] - 1 for c0, c1 in zip(counts0, counts1))
        origin_conns = sum(c1[0] - c0[0] for c0, c1 in zip(counts0, counts1)) - 2
        ours = (cpu_seconds(before, after) + cpu_seconds(origin0, origin1)
                + cpu_seconds(redis0, redis1) + (wrk1 - wrk0))
        res.update({
            "other_load_cpus": max(0.0, (busy1 - busy0 - ours) / wall),
            "requests": w["requests"],
            "rps": w["requests"] / seconds,
            "mib_per_s": w["bytes"] / seconds / (1024 * 1024),
            "p50_ms": w["p50_us"] / 1000.0,
            "p90_ms": w["p90_us"] / 1000.0,
            "p99_ms": w["p99_us"] / 1000.0,
            "max_ms": w["max_us"] / 1000.0,
            "errors": sum(w[k] for k in ("connect", "read", "write", "status", "timeout")),
            "error_kinds": {k: w[k] for k in ("connect", "read", "write", "status", "timeout")},
            "cpu_per_10k": cpu_seconds(before, after) * per10k,
            "redis_cpu_per_10k": (cpu_seconds(redis0, redis1) * per10k
                                  if name == "clonegate" else None),
            "origin_cpu_per_10k": cpu_seconds(origin0, origin1) * per10k,
            "origin_requests_per_10k": origin_reqs * per10k,
            "origin_conns_per_10k": origin_conns * per10k,
            "rss_mib": rss,
            "processes": len(after),
        })
        if s["cache"]:
            res["cache_hits"] = origin_reqs < 0.01 * n  # the clones saw (almost) nothing
        if cg0 and cg1 and cg1["hits"] > cg0["hits"]:
            res["redis_hit_share"] = (cg1["l2_hits"] - cg0["l2_hits"]) / (cg1["hits"] - cg0["hits"])
        return res

    def teardown(self):
        self.procs.stop_all()
        for d in (self.shm, self.scratch):
            if d and not self.o.keep:
                shutil.rmtree(d, ignore_errors=True)
        if self.o.keep:
            say("bench: scratch kept in %s %s" % (self.scratch, self.shm or ""))


# ------------------------------------------------------------------ results


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarise(runs):
    ok = [r for r in runs if "error" not in r]
    out = {"rounds": len(runs), "rounds_failed": len(runs) - len(ok)}
    if len(ok) < len(runs):
        out["error"] = next(r["error"] for r in runs if "error" in r)
    if not ok:
        return out
    if any("idle_bytes_per_conn" in r for r in ok):
        for key in ("idle_bytes_per_conn", "rss_before_mib", "rss_after_mib", "rss_mib"):
            out[key] = median_of(ok, key)
        per = [r["idle_bytes_per_conn"] for r in ok]
        mid = out["idle_bytes_per_conn"]
        out["spread_pct"] = 100.0 * (max(per) - min(per)) / mid if mid > 0 else 0.0
        out["idle_conns"] = ok[0]["idle_conns"]
        out["errors"] = sum(r["errors"] for r in ok)
        return out
    for key in ("rps", "mib_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_per_10k",
                "redis_cpu_per_10k", "origin_cpu_per_10k", "origin_requests_per_10k",
                "origin_conns_per_10k", "rss_mib", "redis_hit_share"):
        out[key] = median_of(ok, key)
    rps = [r["rps"] for r in ok]
    out["spread_pct"] = 100.0 * (max(rps) - min(rps)) / out["rps"] if out["rps"] else 0.0
    out["errors"] = sum(r["errors"] for r in ok)
    out["requests"] = sum(r["requests"] for r in ok)
    for flag in ("both_clones", "cache_hits"):
        if any(flag in r for r in ok):
            out[flag] = all(r.get(flag, True) for r in ok)
    return out


def total_cpu(name, row):
    """CPU per 10k requests that the ratio uses: Clonegate's counts the Redis it uses."""
    if row.get("cpu_per_10k") is None:
        return None
    redis = row.get("redis_cpu_per_10k") if name == "clonegate" else None
    return row["cpu_per_10k"] + (redis or 0.0)


def idle_ratio(rows):
    """Clonegate's bytes per idle connection over the lowest peer's (lower is better)."""
    key = "idle_bytes_per_conn"
    cg = rows.get("clonegate")
    peers = {n: r for n, r in rows.items() if n != "clonegate" and r.get(key) is not None}
    if not cg or cg.get(key) is None or not peers:
        return None
    best = min(peers, key=lambda n: peers[n][key])
    return {"best_peer": best, "idle_bytes_ratio": (cg[key] / peers[best][key]
                                                    if peers[best][key] > 0 else None)}


def ratios(results):
    out = {}
    for scen, rows in results.items():
        if SCENARIOS[scen].get("idle"):
            r = idle_ratio(rows)
            if r:
                out[scen] = r
            continue
        cg = rows.get("clonegate")
        peers = {n: r for n, r in rows.items() if n != "clonegate" and r.get("rps")}
        if not cg or not cg.get("rps") or not peers:
            continue
        best = max(peers, key=lambda n: peers[n]["rps"])
        cg_cpu, peer_cpu = total_cpu("clonegate", cg), total_cpu(best, peers[best])
        out[scen] = {
            "best_peer": best,
            "throughput_ratio": cg["rps"] / peers[best]["rps"],
            "cpu_ratio": cg_cpu / peer_cpu if cg_cpu and peer_cpu else None,
            "p99_ratio": (cg["p99_ms"] / peers[best]["p99_ms"]
                          if peers[best].get("p99_ms") else None),
        }
    return out


def markdown(results, rat, opts, meta, notes, raw):
    lines = []
    has_idle = any(SCENARIOS[s].get("idle") for s in opts.scenarios)
    head = ["scenario", "contender", "req/s", "±%", "p50 ms", "p99 ms", "errors",
            "CPU s/10k req", "redis CPU s/10k", "origin CPU s/10k", "RSS MiB"]
    if has_idle:
        head.append("bytes/idle conn")
    head.append("Clonegate vs best peer")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---:|" * (len(head) - 3) + "---|")
    for scen in opts.scenarios:
        idle = SCENARIOS[scen].get("idle")
        for name in opts.contenders:
            row = results.get(scen, {}).get(name)
            if row is None:
                continue
            if row.get("idle_bytes_per_conn" if idle else "rps") is None:
                cells = [scen, name, "failed: " + row["error"].splitlines()[0][:70]]
                cells += [""] * (len(head) - len(cells))
            elif idle:
                vs = ""
                if name == "clonegate" and scen in rat:
                    r = rat[scen]
                    vs = "%s bytes/idle conn (%s; lower is better)" % (
                        "%.2fx" % r["idle_bytes_ratio"] if r["idle_bytes_ratio"] else "-",
                        r["best_peer"])
                cells = [scen, name, "-", fmt(row["spread_pct"], 0), "-", "-",
                         str(row["errors"]), "-", "-", "-", fmt(row["rss_mib"], 1),
                         fmt(row["idle_bytes_per_conn"], 0), vs]
            else:
                label = name
                if row.get("both_clones") is False:
                    label += " (one clone only!)"
                if row.get("cache_hits") is False:
                    label += " (not from cache!)"
                vs = ""
                if name == "clonegate" and scen in rat:
                    r = rat[scen]
                    vs = "%.2fx req/s, %s CPU/req (%s)" % (
                        r["throughput_ratio"],
                        "%.2fx" % r["cpu_ratio"] if r["cpu_ratio"] else "-", r["best_peer"])
                cells = [scen, label, fmt(row["rps"], 0), fmt(row["spread_pct"], 0),
                         fmt(row["p50_ms"]), fmt(row["p99_ms"]), str(row["errors"]),
                         fmt(row["cpu_per_10k"], 3), fmt(row.get("redis_cpu_per_10k"), 3),
                         fmt(row["origin_cpu_per_10k"], 3), fmt(row["rss_mib"], 1)]
                cells += ["-"] if has_idle else []
                cells.append(vs)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if rat:
        x = lambda v: "%.2fx" % v if v else "-"
        rhead = "| scenario | best peer | throughput ratio | CPU/req ratio | p99 ratio |"
        rline = "|---|---|---:|---:|---:|"
        if has_idle:
            rhead += " bytes/idle conn ratio (lower is better) |"
            rline += "---:|"
        lines.append(rhead)
        lines.append(rline)
        for scen in opts.scenarios:
            if scen not in rat:
                continue
            r = rat[scen]
            if SCENARIOS[scen].get("idle"):
                lines.append("| %s | %s | - | - | - | %s |" % (
                    scen, r["best_peer"], x(r["idle_bytes_ratio"])))
            else:
                lines.append("| %s | %s | %s | %s | %s |%s" % (
                    scen, r["best_peer"], x(r["throughput_ratio"]), x(r["cpu_ratio"]),
                    x(r["p99_ratio"]), " - |" if has_idle else ""))
        lines.append("")
    lines.append("%s; %d round(s) x %d s, medians; workers = %d; %s." % (
        meta["machine"], opts.rounds, opts.duration, opts.workers, meta["pinning"]))
    other = [r["other_load_cpus"] for per in raw.values() for runs in per.values()
             for r in runs if "other_load_cpus" in r]
    if other:
        lines.append("Other processes kept %.2f CPUs busy during the measured runs (median; "
                     "max %.2f): the more, the noisier." % (statistics.median(other), max(other)))
    lines.append("±% = (max - min) / median of req/s over the rounds. CPU = utime + stime of "
                 "the contender's processes per 10,000 requests; Clonegate's ratio adds the "
                 "redis-server it uses. Best peer = the peer with the most req/s. RSS = "
                 "VmHWM summed over the contender's processes.")
    if has_idle:
        lines.append("idle (no wrk): bytes/idle conn = (VmRSS with %s idle keep-alive client "
                     "connections open, each after one 1 KiB request - VmRSS before them) / "
                     "%s, VmRSS summed over the contender's processes; ±%% is over that "
                     "figure. Its best peer is the one with the fewest bytes, and the ratio "
                     "is Clonegate's bytes over that peer's: lower is better."
                     % ("{:,}".format(IDLE_CONNS), "{:,}".format(IDLE_CONNS)))
    for n in notes:
        lines.append("Note: " + n)
    return "\n".join(lines)


def chart(results, opts, out_dir, scratch):
    """build/bench/bench.png: req/s and p99 per scenario and contender (idle,
    which has neither, is left out). None when written, else why not."""
    scenarios = [s for s in opts.scenarios if not SCENARIOS[s].get("idle")]
    if not scenarios:
        return "no chart: only the idle scenario ran (its figures are in the table)"
    if not shutil.which("gnuplot"):
        return "gnuplot not installed: no chart (apt-get install gnuplot-nox)"
    names = opts.contenders
    data = os.path.join(scratch, "chart.dat")
    with open(data, "w") as f:
        f.write("# scenario " + " ".join(names) + " " + " ".join(names) + "\n")
        for scen in scenarios:
            rows = results.get(scen, {})
            rps = [rows.get(n, {}).get("rps") for n in names]
            p99 = [rows.get(n, {}).get("p99_ms") for n in names]
            f.write(scen + " " + " ".join("%.1f" % v if v else "-" for v in rps) + " "
                    + " ".join("%.3f" % v if v else "-" for v in p99) + "\n")
    png = os.path.join(out_dir, "bench.png")
    k = len(names)
    rps_plot = ", ".join("'%s' using %d:xtic(1) title '%s'" % (data, 2 + i, n)
                         for i, n in enumerate(names))
    p99_plot = ", ".join("'%s' using %d:xtic(1) title '%s'" % (data, 2 + k + i, n)
                         for i, n in enumerate(names))
    script = f"""set terminal pngcairo size 1200,900 font 'Sans,10'
set output '{png}'
set datafile missing '-'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key outside right top
set grid ytics
set logscale y
set format y '%.0s%c'
set multiplot layout 2,1 title 'Clonegate bench: workers = {opts.workers}, {opts.rounds} round(s) x {opts.duration} s, medians'
set title 'throughput (requests/s, log scale; higher is better)'
plot {rps_plot}
set title 'p99 latency (ms, log scale; lower is better)'
set format y '%g'
plot {p99_plot}
unset multiplot
"""
    gp = os.path.join(scratch, "chart.gp")
    with open(gp, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", gp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=60)
    if r.returncode != 0:
        return "gnuplot failed: " + r.stdout.strip()[-300:]
    return None


# ------------------------------------------------------------------ main


def options(argv):
    ap = argparse.ArgumentParser(description="Clonegate's benchmark; options come from the "
                                 "environment (see the top of this file).")
    ap.add_argument("--out", default="build/bench", help="output directory (build/bench)")
    a = ap.parse_args(argv)
    quick = os.environ.get("QUICK", "").strip() not in ("", "0")
    a.rounds = env_int("ROUNDS", 1 if quick else 3, 1, 100)
    a.duration = env_int("DURATION", 3 if quick else 5, 1, 3600)
    a.workers = env_int("WORKERS", 1, 1, 256)
    a.scenarios = env_list("ONLY", list(SCENARIOS))
    a.contenders = env_list("CONTENDERS", CONTENDERS)
    a.keep = os.environ.get("KEEP", "").strip() not in ("", "0")
    a.clonegate = os.path.abspath(os.environ.get("CLONEGATE") or "build/clonegate")
    a.out = os.path.abspath(a.out)

    # CPU sets: wrk apart from everything else when there are more than 2 CPUs
    mine = sorted(os.sched_getaffinity(0))
    bench_env = os.environ.get("BENCH_CPUS", "").strip()
    load_env = os.environ.get("LOAD_CPUS", "").strip()
    try:
        bench = parse_cpus(bench_env) if bench_env else []
        load = parse_cpus(load_env) if load_env else []
    except ValueError as e:
        raise SystemExit("bench: bad CPU list: %s" % e)
    if bench or load:
        bench = bench or [c for c in mine if c not in load]
        load = load or [c for c in mine if c not in bench]
        if not bench or not load:
            raise SystemExit("bench: BENCH_CPUS / LOAD_CPUS leave one side without a CPU")
        a.pinning = "wrk on CPUs %s, the rest on CPUs %s (BENCH_CPUS/LOAD_CPUS)" % (
            cpu_text(load), cpu_text(bench))
    elif len(mine) > 2:
        n_load = max(1, len(mine) // 4)
        load, bench = mine[-n_load:], mine[:-n_load]
        a.pinning = "wrk pinned to CPUs %s, proxies, clones and redis to CPUs %s" % (
            cpu_text(load), cpu_text(bench))
    else:
        a.pinning = ("wrk and the proxies share the %d CPUs (no pinning; set BENCH_CPUS and "
                     "LOAD_CPUS on a larger machine)" % len(mine))
    a.bench_cpus = cpu_text(bench) if bench else None
    a.load_cpus = cpu_text(load) if load else None
    a.wrk_threads = env_int("WRK_THREADS", max(1, len(load)), 1, 256)
    return a


def check_tools(opts):
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in NEEDED if not shutil.which(t)]
    if missing:
        raise SystemExit("bench: missing %s; install with: apt-get install %s (or make bench-deps)"
                         % (", ".join(missing), " ".join(NEEDED[t] for t in missing)))
    skipped = []
    for c in list(opts.contenders):
        if c == "clonegate":
            if not os.access(opts.clonegate, os.X_OK):
                raise SystemExit("bench: no clonegate at %s (run make)" % opts.clonegate)
        elif not shutil.which(PROGRAMS[c]):
            opts.contenders.remove(c)
            skipped.append(c)
    return skipped


def main(argv):
    opts = options(argv)
    skipped = check_tools(opts)
    procs = Processes()

    def on_signal(signum, _frame):
        raise Interrupted("signal %d" % signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    bench = None
    status = 1
    try:
        bench = Bench(opts, procs)
        if skipped:
            bench.notes.append("not installed, left out: " + ", ".join(skipped))
        bench.setup()
        plan = []
        for rnd in range(opts.rounds):
            for scen in opts.scenarios:
                names = [c for c in opts.contenders if runs_in(c, scen)]
                k = rnd % len(names) if names else 0  # each round starts one contender later
                plan += [(rnd + 1, scen, c) for c in names[k:] + names[:k]]
        say("bench: %d runs (%s; %s), about %.1f min; %s" % (
            len(plan), ",".join(opts.contenders), ",".join(opts.scenarios),
            sum(IDLE_PAUSE + IDLE_SETTLE + 3 if SCENARIOS[s].get("idle")
                else opts.duration + WARMUP + 0.7 for _, s, _ in plan) / 60.0, opts.pinning))
        t0 = time.monotonic()
        for i, (rnd, scen, name) in enumerate(plan, 1):
            try:
                res = bench.run(name, scen, rnd)
                if "idle_bytes_per_conn" in res:
                    say("[%2d/%d] round %d %-14s %-9s %9s bytes/idle conn  VmRSS %.1f -> %.1f "
                        "MiB  (%d connections opened in %.1f s)"
                        % (i, len(plan), rnd, scen, name, fmt(res["idle_bytes_per_conn"], 0),
                           res["rss_before_mib"], res["rss_after_mib"], res["idle_conns"],
                           res["open_s"]))
                else:
                    say("[%2d/%d] round %d %-14s %-9s %9s req/s  p99 %7s ms  cpu %s s/10k  "
                        "errors %d" % (i, len(plan), rnd, scen, name, fmt(res["rps"], 0),
                                       fmt(res["p99_ms"]), fmt(res["cpu_per_10k"], 3),
                                       res["errors"]))
            except (BenchError, OSError, ValueError, KeyError, http.client.HTTPException,
                    subprocess.SubprocessError) as e:
                res = {"round": rnd, "error": str(e) or type(e).__name__}
                say("[%2d/%d] round %d %-14s %-9s FAILED: %s" % (i, len(plan), rnd, scen, name,
                                                                 res["error"]))
            bench.raw.setdefault(scen, {}).setdefault(name, []).append(res)
        elapsed = time.monotonic() - t0

        results = {s: {c: summarise(r) for c, r in bench.raw.get(s, {}).items()}
                   for s in opts.scenarios}
        rat = ratios(results)
        for c, t in sorted(bench.tls_seen.items()):
            bench.notes.append("TLS negotiated by %s: %s" % (c, t))
        model = ""
        try:
            with open("/proc/cpuinfo") as f:
                model = next((l.split(":", 1)[1].strip() for l in f
                              if l.startswith("model name")), "")
        except OSError:
            pass
        ncpu = len(os.sched_getaffinity(0))
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": "%d CPUs (%s), Linux %s" % (ncpu, model or platform.machine(),
                                                 platform.release()),
            "pinning": opts.pinning,
            "elapsed_s": round(elapsed, 1),
            "versions": {
                "clonegate": version_of([opts.clonegate, "-V"]),
                "haproxy": version_of(["haproxy", "-v"]),
                "nginx": version_of(["nginx", "-v"]),
                "varnish": version_of(["varnishd", "-V"]),
                "redis": version_of(["redis-server", "--version"]),
                "wrk": version_of(["wrk", "-v"]),
            },
        }
        os.makedirs(opts.out, exist_ok=True)
        problem = chart(results, opts, opts.out, bench.scratch)
        if problem:
            bench.notes.append(problem)
        text = markdown(results, rat, opts, meta, bench.notes, bench.raw)
        doc = {
            "meta": meta,
            "options": {k: getattr(opts, k) for k in ("rounds", "duration", "workers",
                                                      "scenarios", "contenders", "bench_cpus",
                                                      "load_cpus", "wrk_threads")},
            "scenarios": {s: SCENARIOS[s] for s in opts.scenarios},
            "results": results,
            "ratios": rat,
            "runs": bench.raw,
            "notes": bench.notes,
        }
        with open(os.path.join(opts.out, "results.json"), "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(opts.out, "results.md"), "w") as f:
            f.write(text + "\n")
        print(text)
        print("\nwritten: %s/results.md, results.json%s; %.0f s of runs"
              % (opts.out, "" if problem else ", bench.png", elapsed), flush=True)
        status = 0
    except Interrupted as e:
        say("bench: interrupted (%s); stopping what it started" % e)
        status = 130
    except BenchError as e:
        say("bench: %s" % e)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        if bench is not None:
            bench.teardown()
        else:
            procs.stop_all()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
