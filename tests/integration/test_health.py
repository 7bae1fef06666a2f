"""Health of the clones (issue 4): active checks, passive marking from real
traffic, failover, stalled clones, no clone left, drain/ready through the
admin listener, reload and slow start.

Every test runs under a load it makes itself: LOAD_THREADS threads, each
with one keep-alive connection to the proxy, for at most LOAD_MAX_S, every
request timed and its answering origin (X-Origin) recorded. Figures each
test measures are printed (pytest -s shows them) and asserted with bounds
derived from health.interval, rise and fall, never exact timings.
"""

import json
import re
import socket
import statistics
import threading
import time

import pytest

import helpers

LOAD_THREADS = 8  # concurrent keep-alive client connections
LOAD_MAX_S = 10.0  # s a load runs at most
LOAD_MAX_REQUESTS = 200_000  # per thread, a second bound on every load loop
LOAD_PATH = "/load"  # origin.py's default route: 200, counted under this path
POLL_S = 0.01  # s between two /stats polls when timing a state change
SLACK_S = 0.35  # s allowed on top of an interval-derived bound (poll, scheduling)

INTERVAL_S = 0.5
# Quick active checks for the tests that time them; no cache, so every
# request reaches a clone.
QUICK = {
    "cache.enabled": "no",
    "health.interval": "500ms",
    "health.timeout": "250ms",
    "health.rise": 2,
    "health.fall": 3,
    "upstream.retries": 1,
}
# Active checks too rare to act within a test: only traffic can mark a clone.
PASSIVE_ONLY = {
    "cache.enabled": "no",
    "health.interval": "30s",
    "health.timeout": "1s",
    "health.rise": 2,
    "health.fall": 3,
    "upstream.retries": 1,
}


def report(title, **figures):
    """Prints one line of measured figures (collected for the issue)."""
    text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in figures.items())
    print(f"\n[issue 4] {title}: {text}")


# ---------------------------------------------------------------------------
# Load


class Record:
    __slots__ = ("t0", "t1", "status", "origin", "retry_after", "error")

    def __init__(self, t0, t1, status=None, origin=None, retry_after=None, error=None):
        self.t0 = t0  # monotonic s, request about to be sent
        self.t1 = t1  # monotonic s, response complete (or failure seen)
        self.status = status
        self.origin = origin  # X-Origin of the answer
        self.retry_after = retry_after
        self.error = error  # repr of the client-side failure, None if a response came

    @property
    def latency(self):
        return self.t1 - self.t0


class Load:
    """<threads> client threads sending GET <path> on keep-alive connections
    to <port> until stop() or <duration> s, whichever first."""

    def __init__(self, port, path=LOAD_PATH, threads=LOAD_THREADS, duration=LOAD_MAX_S,
                 timeout=5.0):
        assert duration <= LOAD_MAX_S
        self.port = port
        self.path = path
        self.timeout = timeout  # s one request may take before it counts as failed
        self.duration = duration
        self.records = []  # list.append is atomic: shared by the threads
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.started = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self.started = time.monotonic()
        self.deadline = self.started + self.duration
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 5.0)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"
        return self

    def _run(self):
        conn = None
        for _ in range(LOAD_MAX_REQUESTS):
            if self.stopping.is_set() or time.monotonic() >= self.deadline:
                break
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = helpers.HttpConn(self.port, timeout=self.timeout)
                r = conn.get(self.path)
            except (OSError, ConnectionError, TimeoutError, helpers.ProtocolError) as e:
                self.records.append(Record(t0, time.monotonic(), error=repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.005)  # a refused connect must not spin
                continue
            self.records.append(Record(t0, time.monotonic(), r.status, r.header("X-Origin"),
                                       r.header("Retry-After")))
            if "close" in (r.header("Connection") or "").lower():
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # -- figures --------------------------------------------------------------

    def snapshot(self):
        return list(self.records)

    def failures(self, since=None, until=None):
        """Requests that got no 200 (errors included), sent in [since, until)."""
        return [r for r in self.window(since, until) if r.status != 200]

    def window(self, since=None, until=None):
        return [r for r in self.snapshot()
                if (since is None or r.t0 >= since) and (until is None or r.t0 < until)]

    def totals(self):
        recs = self.snapshot()
        by_status = {}
        for r in recs:
            key = r.status if r.status is not None else "error"
            by_status[key] = by_status.get(key, 0) + 1
        lat = sorted(r.latency for r in recs if r.status == 200)
        return {
            "requests": len(recs),
            "ok": sum(1 for r in recs if r.status == 200),
            "failed": sum(1 for r in recs if r.status != 200),
            "by_status": by_status,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "seconds": (max(r.t1 for r in recs) - self.started) if recs else 0.0,
        }

    def first_from(self, origin, after):
        """The first answer from <origin> completed after <after>, or None."""
        hits = [r for r in self.snapshot() if r.origin == origin and r.t1 >= after]
        return min(hits, key=lambda r: r.t1) if hits else None

    def last_sent_to(self, origin):
        hits = [r for r in self.snapshot() if r.origin == origin]
        return max(hits, key=lambda r: r.t0) if hits else None

    def share(self, origin, since, until):
        """(share of <origin>, answers) among 200s sent in [since, until)."""
        recs = [r for r in self.window(since, until) if r.status == 200]
        if not recs:
            return 0.0, 0
        return sum(1 for r in recs if r.origin == origin) / len(recs), len(recs)


def wait_until(t):
    """Lets a measuring window run until monotonic time <t> (load threads do
    the work meanwhile)."""
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


# ---------------------------------------------------------------------------
# Admin and log


def server_view(cg, addr):
    """The /stats entry of the server at <addr>, or None when not listed."""
    for s in cg.stats()["servers"]:
        if s["address"] == addr:
            return s
    return None


def wait_state(cg, addr, state, timeout, what=None):
    """Polls /stats every POLL_S until the server at <addr> is in <state>;
    returns (monotonic time first seen, its view)."""
    deadline = time.monotonic() + timeout
    while True:
        v = server_view(cg, addr)
        now = time.monotonic()
        if v is not None and v["state"] == state:
            return now, v
        if now >= deadline:
            raise AssertionError(f"{what or addr} not {state} within {timeout} s; last view {v}")
        time.sleep(POLL_S)


def log_lines(cg, pattern):
    return [line for line in cg.stderr_text().splitlines() if re.search(pattern, line)]


def down_line(addr):
    return r"\bwarn: server " + re.escape(addr) + r" down: "


def up_line(addr):
    return r"\binfo: server " + re.escape(addr) + r" up: "


# ---------------------------------------------------------------------------
# In-test clones


class Listener:
    """A loopback TCP clone written here: accepts, reads request heads and
    records them; <answer> True answers each with 200 and closes, False
    never answers (a stalled clone: the connection stays open until stop).
    .heads: [(monotonic s of arrival, request line, {lower header name:
    value})]."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.heads = []
        self.conns = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(0.1)
        data = b""
        deadline = time.monotonic() + 60.0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:
                head, data = data.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                fields = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                with self.lock:
                    self.heads.append((time.monotonic(), lines[0], fields))
                if self.answer:
                    try:
                        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                                  b"Connection: close\r\n\r\nok\n")
                    except OSError:
                        pass
                    return

    def requests(self, path):
        """(arrival, request line, fields) received for <path> (query
        excluded), in arrival order."""
        with self.lock:
            return [(t, line, f) for t, line, f in self.heads
                    if line.split(" ")[1].split("?")[0] == path]

    def stop(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass
        self.thread.join(timeout=2.0)


@pytest.fixture
def listeners(world):
    """listeners(answer) -> Listener, stopped in teardown (after clonegate)."""
    made = []

    def make(answer):
        lst = Listener(answer)
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.stop()


def load_count(o):
    return o.count(LOAD_PATH)


# ---------------------------------------------------------------------------
# 1. Active checks


@pytest.mark.hard_timeout(60)
def test_issue_4_active_check_takes_clone_out_after_fall_and_back_after_rise(origins, clonegate):
    o1, o2, o3 = origins(3)
    cg = clonegate(dict(QUICK), servers=[o1, o2, o3])
    fall, rise = 3, 2
    # past the start-up checks, so the checks come every interval (the gap
    # after the first one is test_issue_4_checks_come_every_interval...)
    helpers.wait_for(lambda: server_view(cg, o2.addr)["checks_passed"] >= 3, timeout=5,
                     what="three passed checks")

    with Load(cg.port, duration=9.0) as load:
        wait_for_answers(load, [o1, o2, o3])

        t_off = time.monotonic()
        o2.set_health(False)
        t_down, view = wait_state(cg, o2.addr, "down", fall * INTERVAL_S + 2)
        out_after = t_down - t_off
        assert view["up"] is False and view["checks_failed"] >= fall, view
        assert "503" in view["last_error"], view
        # settle what was in flight when it left, then watch it get nothing
        wait_until(t_down + 0.2)
        c_down = load_count(o2)
        wait_until(t_down + 1.2)
        c_later = load_count(o2)
        sent_after_down = [r for r in load.window(since=t_down + 0.01) if r.origin == o2.name]

        t_on = time.monotonic()
        o2.set_health(True)
        t_up, view_up = wait_state(cg, o2.addr, "up", rise * INTERVAL_S + 2)
        back_after = t_up - t_on
        helpers.wait_for(lambda: load.first_from(o2.name, t_on), timeout=2,
                         what="an answer from the clone back in rotation")
        first = load.first_from(o2.name, t_on)
        wait_until(time.monotonic() + 0.5)
    totals = load.totals()

    report("active down/up", out_after_s=out_after, back_after_s=back_after,
           first_answer_after_up_s=(first.t1 - t_up) if first else None,
           load_to_o2_while_down=c_later - c_down, **totals)
    # the first failing check comes within one interval, then fall-1 more
    assert (fall - 1) * INTERVAL_S - 0.05 <= out_after <= fall * INTERVAL_S + SLACK_S
    assert (rise - 1) * INTERVAL_S - 0.05 <= back_after <= rise * INTERVAL_S + SLACK_S
    assert c_later == c_down, "the clone out of rotation still got requests"
    assert sent_after_down == [], sent_after_down[:3]
    assert first.t1 >= t_up - POLL_S - 0.05, f"served {t_up - first.t1:.3f} s before it was up"
    assert totals["failed"] == 0, totals
    assert len(log_lines(cg, down_line(o2.addr))) == 1, cg.stderr_text()[-3000:]
    assert len(log_lines(cg, down_line(o2.addr) + rf"{fall} failed checks \(.*503")) == 1
    assert len(log_lines(cg, up_line(o2.addr) + rf"{rise} passed checks")) == 1
    assert len(log_lines(cg, up_line(o2.addr))) == 1


def wait_for_answers(load, servers, timeout=5.0):
    """Waits until every one of <servers> has answered the load."""
    names = {s.name for s in servers}
    helpers.wait_for(lambda: names <= {r.origin for r in load.snapshot()}, timeout=timeout,
                     what="an answer from every clone")


@pytest.mark.hard_timeout(60)
def test_issue_4_expect_status_200_takes_out_a_clone_answering_204(origins, clonegate):
    (o1,) = origins(1)
    ini = dict(QUICK, **{"health.path": "/status?code=204"})
    lenient = clonegate(ini, servers=[o1])  # default expect_status 200-399
    strict = clonegate(dict(ini, **{"health.expect_status": "200"}), servers=[o1])
    t_start = time.monotonic()

    with Load(strict.port, duration=4.0) as load:
        t_down, view = wait_state(strict, o1.addr, "down", 3 * INTERVAL_S + 3)
        wait_until(t_down + 0.3)
        after_down = load.window(since=t_down + 0.05)
    report("expect_status=200, /health answering 204", down_after_start_s=t_down - t_start,
           last_error=view["last_error"], **load.totals())
    assert view["checks_failed"] >= 3 and view["checks_passed"] == 0, view
    assert "204" in view["last_error"], view
    assert after_down and all(r.status == 503 and r.retry_after for r in after_down), \
        [(r.status, r.retry_after, r.error) for r in after_down[:5]]
    assert len(log_lines(strict, down_line(o1.addr) + r"3 failed checks \(.*204")) == 1

    # the same 204 passes the default range, and that proxy keeps serving
    helpers.wait_for(lambda: server_view(lenient, o1.addr)["checks_passed"] >= 3, timeout=5,
                     what="three passed checks with the default expect_status")
    v = server_view(lenient, o1.addr)
    assert v["state"] == "up" and v["checks_failed"] == 0, v
    assert lenient.get(LOAD_PATH).status == 200
    assert log_lines(lenient, down_line(o1.addr)) == []


@pytest.mark.hard_timeout(60)
def test_issue_4_health_host_is_sent_on_checks(clonegate, listeners):
    # origin.py keeps no record of request headers, so a recording clone
    # written here answers the checks (200) and keeps their heads.
    rec = listeners(True)
    named = clonegate(dict(QUICK, **{"health.path": "/hc-named",
                                     "health.host": "checks.example.test"}), servers=[rec.addr])
    default = clonegate(dict(QUICK, **{"health.path": "/hc-default"}), servers=[rec.addr])
    helpers.wait_for(lambda: len(rec.requests("/hc-named")) >= 2
                     and len(rec.requests("/hc-default")) >= 2,
                     timeout=5, what="two checks from each proxy")
    named_hosts = {f.get("host") for _, _, f in rec.requests("/hc-named")}
    default_hosts = {f.get("host") for _, _, f in rec.requests("/hc-default")}
    report("health.host", configured=named_hosts, default=default_hosts)
    assert named_hosts == {"checks.example.test"}
    assert default_hosts == {rec.addr}
    for cg in (named, default):
        assert server_view(cg, rec.addr)["state"] == "up"


@pytest.mark.hard_timeout(60)
def test_issue_4_checks_come_every_interval_from_the_first(clonegate, listeners):
    # No load here: the arrival times of the checks are the figure, and
    # client threads would only add jitter to a recorder in this process.
    rec = listeners(True)
    cg = clonegate(dict(QUICK, **{"health.path": "/hc"}), servers=[rec.addr])
    helpers.wait_for(lambda: len(rec.requests("/hc")) >= 5, timeout=6, what="five checks")
    cg.reload()  # the same file: every check is set up again
    t_hup = time.monotonic()
    helpers.wait_for(lambda: len([x for x in rec.requests("/hc") if x[0] > t_hup]) >= 4,
                     timeout=6, what="four checks after SIGHUP")
    times = [t for t, _, _ in rec.requests("/hc")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    after_hup = [t for t in times if t > t_hup]
    gaps_hup = [b - a for a, b in zip(after_hup, after_hup[1:])]
    report("check spacing (interval 0.5 s)", gaps_from_start=[round(g, 3) for g in gaps],
           gaps_after_sighup=[round(g, 3) for g in gaps_hup])
    # a reload may check at once (a short gap); no gap may exceed the interval
    assert max(gaps) <= INTERVAL_S + 0.15, gaps


# ---------------------------------------------------------------------------
# 2. Passive marking


@pytest.mark.hard_timeout(60)
def test_issue_4_traffic_failures_mark_a_killed_clone_down_within_a_second(origins, clonegate):
    o1, o2, o3 = origins(3)
    cg = clonegate(dict(PASSIVE_ONLY), servers=[o1, o2, o3])
    fall = 3
    helpers.wait_for(lambda: server_view(cg, o2.addr)["checks_passed"] >= 1, timeout=5,
                     what="the first active check")

    with Load(cg.port, duration=6.0) as load:
        wait_for_answers(load, [o1, o2, o3])
        wait_until(time.monotonic() + 0.5)
        before = server_view(cg, o2.addr)
        t_kill = time.monotonic()
        o2.kill9()
        t_down, view = wait_state(cg, o2.addr, "down", 3.0)
        wait_until(t_down + 1.0)
        late = server_view(cg, o2.addr)
    totals = load.totals()
    lines = log_lines(cg, down_line(o2.addr))
    report("passive mark-down after kill -9", down_after_kill_s=t_down - t_kill,
           traffic_failures=view["traffic_failures"], checks_failed=view["checks_failed"],
           last_error=view["last_error"], **totals)
    assert t_down - t_kill <= 1.0
    assert view["traffic_failures"] >= fall, view
    # no active check ran between the kill and the mark (interval 30 s)
    assert view["checks_failed"] == before["checks_failed"] == 0, (before, view)
    assert late["state"] == "down", late
    assert len(lines) == 1, lines
    assert re.search(r"down: \d+ failures in a row on traffic \(.+\)", lines[0]), lines[0]


# ---------------------------------------------------------------------------
# 3. Failover


@pytest.mark.hard_timeout(60)
def test_issue_4_killed_clone_costs_no_request_and_serves_again_after_restart(origins,
                                                                             clonegate):
    o1, o2, o3 = origins(3)
    rise = 2
    cg = clonegate(dict(QUICK, **{"health.fall": 2}), servers=[o1, o2, o3])

    with Load(cg.port, duration=8.0) as load:
        wait_for_answers(load, [o1, o2, o3])
        wait_until(time.monotonic() + 0.7)
        t_kill = time.monotonic()
        o2.kill9()
        t_down, _ = wait_state(cg, o2.addr, "down", 3.0)
        wait_until(t_kill + 1.5)
        o2.restart()
        t_restart = time.monotonic()
        helpers.wait_for(lambda: load.first_from(o2.name, t_restart),
                         timeout=rise * INTERVAL_S + 3, what="an answer from the restarted clone")
        first = load.first_from(o2.name, t_restart)
        wait_until(time.monotonic() + 0.5)
    totals = load.totals()
    serving_after = first.t1 - t_restart
    report("failover", down_after_kill_s=t_down - t_kill, serving_after_restart_s=serving_after,
           **totals)
    assert totals["failed"] == 0, (totals, [(r.status, r.error) for r in load.failures()][:5])
    assert serving_after <= rise * INTERVAL_S + 1.0


# ---------------------------------------------------------------------------
# 4. A stalled clone


@pytest.mark.hard_timeout(60)
def test_issue_4_stalled_clone_costs_only_its_requests_then_gets_none(origins, clonegate,
                                                                       listeners):
    o1, o2 = origins(2)
    stall = listeners(False)
    fall = 3
    cg = clonegate(dict(PASSIVE_ONLY, **{"upstream.response_timeout": "1s"}),
                   servers=[o1, o2, stall.addr])
    # the first active check fails (the stall never answers): one of fall
    helpers.wait_for(lambda: server_view(cg, stall.addr)["checks_failed"] >= 1, timeout=5,
                     what="the first check of the stalled clone")
    assert server_view(cg, stall.addr)["state"] == "up"

    with Load(cg.port, duration=5.0) as load:
        t_down, view = wait_state(cg, stall.addr, "down", 4.0)
        wait_until(t_down + 0.3)
        got_at_down = len(stall.requests(LOAD_PATH))
        wait_until(t_down + 2.5)
        got_later = len(stall.requests(LOAD_PATH))
    totals = load.totals()
    recs = load.snapshot()
    timeouts = [r for r in recs if r.status == 504]
    others = [r for r in recs if r.status != 504]
    lat504 = sorted(r.latency for r in timeouts)
    report("stalled clone", requests_to_stall=got_later, n504=len(timeouts),
           lat504_min_s=lat504[0] if lat504 else None,
           lat504_max_s=lat504[-1] if lat504 else None,
           down_after_load_start_s=t_down - load.started,
           traffic_failures=view["traffic_failures"], **totals)
    assert got_later == got_at_down, "the stalled clone got requests after it was marked down"
    # exactly the requests sent to it failed, each after response_timeout
    assert len(timeouts) == got_later > 0
    # the ones in flight when the first timed out, plus at most one more per
    # client freed by the fall-1 timeouts before the mark
    assert len(timeouts) <= LOAD_THREADS + fall - 1
    assert all(r.t0 < t_down for r in timeouts), "a request was sent to it after the mark"
    assert all(0.95 <= x <= 1.0 + SLACK_S + 0.5 for x in lat504), lat504
    assert all(r.status == 200 for r in others), [(r.status, r.error) for r in others
                                                   if r.status != 200][:5]
    assert view["traffic_failures"] >= fall and view["checks_failed"] == 1, view
    lines = log_lines(cg, down_line(stall.addr))
    assert len(lines) == 1 and "failures in a row on traffic" in lines[0], lines


# ---------------------------------------------------------------------------
# 5. No clone left


@pytest.mark.hard_timeout(60)
def test_issue_4_all_down_gets_fast_503_and_service_resumes_after_rise(origins, clonegate):
    o1, o2, o3 = origins(3)
    rise = 2
    cg = clonegate(dict(QUICK, **{"health.fall": 2}), servers=[o1, o2, o3])

    with Load(cg.port, duration=4.0) as load:
        wait_for_answers(load, [o1, o2, o3])
        t_kill = time.monotonic()
        for o in (o1, o2, o3):
            o.kill9()
        t_all = max(wait_state(cg, o.addr, "down", 3.0)[0] for o in (o1, o2, o3))
        wait_until(t_all + 0.5)
    under_load = [r for r in load.window(since=t_all + 0.05)]
    load_503_ms = sorted(1000 * r.latency for r in under_load)

    lat = []
    answers = []
    with cg.conn(timeout=2.0) as c:
        for i in range(50):
            t0 = time.monotonic()
            r = c.get(f"{LOAD_PATH}?n={i}")
            lat.append(1000 * (time.monotonic() - t0))
            answers.append((r.status, r.header("Retry-After")))
    p100 = max(lat)

    with Load(cg.port, duration=6.0) as load2:
        wait_until(time.monotonic() + 0.3)
        o1.restart()
        t_restart = time.monotonic()
        t_up, _ = wait_state(cg, o1.addr, "up", rise * INTERVAL_S + 3)
        helpers.wait_for(lambda: load2.first_from(o1.name, t_restart), timeout=3,
                         what="an answer after the restart")
        first = load2.first_from(o1.name, t_restart)
        wait_until(time.monotonic() + 0.3)
    report("all down", all_down_after_kill_s=t_all - t_kill, p100_ms_of_50=p100,
           p50_ms_of_50=statistics.median(lat),
           load_503s=len(under_load),
           load_503_p100_ms=load_503_ms[-1] if load_503_ms else None,
           up_after_restart_s=t_up - t_restart, first_200_after_up_s=first.t1 - t_up,
           first_200_after_restart_s=first.t1 - t_restart)
    assert all(s == 503 and ra for s, ra in answers), answers
    assert p100 <= 50.0, lat
    assert under_load and all(r.status == 503 and r.retry_after for r in under_load)
    assert first.t1 - t_up <= INTERVAL_S
    assert first.t1 - t_restart <= rise * INTERVAL_S + INTERVAL_S + SLACK_S


# ---------------------------------------------------------------------------
# 6. Drain and ready


@pytest.mark.hard_timeout(60)
def test_issue_4_drain_takes_no_new_requests_finishes_in_flight_and_ready_restores(
        origins, clonegate):
    o1, o2, o3 = origins(3)
    cg = clonegate(dict(QUICK), servers=[o1, o2, o3])
    for o in (o1, o2, o3):
        wait_state(cg, o.addr, "up", 5)

    # six slow requests, dispatched one after the other: round robin puts
    # two on every clone, o2 included
    slow = []

    def slow_request():
        try:
            r = cg.get("/slow?ms=2500", timeout=10)
            slow.append((r.status, r.header("X-Origin")))
        except (OSError, ConnectionError, helpers.ProtocolError) as e:
            slow.append((None, repr(e)))

    slow_threads = []
    for i in range(6):
        t = threading.Thread(target=slow_request, daemon=True)
        t.start()
        slow_threads.append(t)
        helpers.wait_for(lambda: sum(o.count("/slow") for o in (o1, o2, o3)) >= i + 1,
                         timeout=3, what=f"slow request {i + 1} to reach a clone")
    assert o2.count("/slow") >= 1

    with Load(cg.port, duration=7.0) as load:
        wait_for_answers(load, [o1, o2, o3])
        r = cg.admin(f"/servers/{o2.addr}/drain", "POST")
        t_drained = time.monotonic()
        c0 = load_count(o2)
        assert r.status == 200, r
        assert json.loads(r.body)["draining"] is True, r
        view = server_view(cg, o2.addr)
        wait_until(t_drained + 0.3)
        c1 = load_count(o2)
        wait_until(t_drained + 2.3)
        c2 = load_count(o2)
        sent_after = [x for x in load.window(since=t_drained) if x.origin == o2.name]

        r_ready = cg.admin(f"/servers/{o2.addr}/ready", "POST")
        t_ready = time.monotonic()
        helpers.wait_for(lambda: load.first_from(o2.name, t_ready), timeout=3,
                         what="an answer from the clone made ready")
        back_after = load.first_from(o2.name, t_ready).t1 - t_ready
        view_ready = server_view(cg, o2.addr)
        wait_until(time.monotonic() + 0.3)
    for t in slow_threads:
        t.join(timeout=10)
    totals = load.totals()
    unknown_drain = cg.admin("/servers/127.0.0.1:1/drain", "POST")
    unknown_ready = cg.admin("/servers/127.0.0.1:1/ready", "POST")

    report("drain/ready", in_flight_at_answer=c1 - c0, after_settle=c2 - c1,
           sent_to_drained_after_answer=len(sent_after), slow=slow, back_after_ready_s=back_after,
           **totals)
    assert view["state"] == "draining" and view["draining"] is True, view
    assert c2 == c1, "the drained clone got new requests"
    assert c1 - c0 <= LOAD_THREADS
    assert sent_after == [], [(x.t0 - t_drained, x.status) for x in sent_after[:5]]
    assert len(slow) == 6 and all(s == 200 for s, _ in slow), slow
    assert sum(1 for _, name in slow if name == o2.name) >= 1, slow
    assert totals["failed"] == 0, totals
    assert r_ready.status == 200 and json.loads(r_ready.body)["draining"] is False, r_ready
    assert view_ready["state"] == "up", view_ready
    assert unknown_drain.status == 404, unknown_drain
    assert unknown_ready.status == 404, unknown_ready


# ---------------------------------------------------------------------------
# 7. Reload


@pytest.mark.hard_timeout(60)
def test_issue_4_reload_keeps_state_adds_down_and_removes(origins, clonegate):
    o1, o2, o3, o4 = origins(4)
    rise = 2
    cg = clonegate(dict(QUICK, **{"health.fall": 2}), servers=[o1, o2, o3])
    helpers.wait_for(lambda: server_view(cg, o1.addr)["checks_passed"] >= 3, timeout=5,
                     what="three passed checks")

    with Load(cg.port, duration=8.0) as load:
        wait_for_answers(load, [o1, o2, o3])
        o2.set_health(False)
        wait_state(cg, o2.addr, "down", 2 * INTERVAL_S + 2)
        before = {o.addr: server_view(cg, o.addr) for o in (o1, o2)}

        sections = helpers.ini_sections(cg.ini_text)
        sections["upstream"]["servers"] = ", ".join(o.addr for o in (o1, o2, o4))
        t_reload = time.monotonic()
        cg.reload(helpers.render_ini(sections))
        # first sight of the added server
        deadline = t_reload + 5
        seen = None
        while seen is None:
            seen = server_view(cg, o4.addr)
            assert time.monotonic() < deadline, "the added server never appeared in /stats"
            if seen is None:
                time.sleep(POLL_S)
        o4_load_at_sight = load_count(o4)
        after = {o.addr: server_view(cg, o.addr) for o in (o1, o2)}
        t_up, _ = wait_state(cg, o4.addr, "up", rise * INTERVAL_S + 3)
        helpers.wait_for(lambda: load.first_from(o4.name, t_reload), timeout=2,
                         what="an answer from the added server")
        first_o4 = load.first_from(o4.name, t_reload)

        wait_until(t_reload + 0.5)
        c3a = load_count(o3)
        h3a = o3.count("/health")
        wait_until(t_reload + 2.5)
        c3b = load_count(o3)
        h3b = o3.count("/health")
        o2_later = server_view(cg, o2.addr)
        o3_view = server_view(cg, o3.addr)
        sent_to_o2 = [r for r in load.window(since=t_reload) if r.origin == o2.name]
    totals = load.totals()
    report("reload", o4_state_at_first_sight=seen["state"], o4_up_after_reload_s=t_up - t_reload,
           o4_first_answer_after_up_s=(first_o4.t1 - t_up) if first_o4 else None,
           o1_checks_passed_before=before[o1.addr]["checks_passed"],
           o1_checks_passed_after=after[o1.addr]["checks_passed"],
           o2_checks_failed_before=before[o2.addr]["checks_failed"],
           o2_checks_failed_after=after[o2.addr]["checks_failed"],
           o3_load_after_reload=c3b - c3a, o3_checks_after_reload=h3b - h3a, **totals)
    # kept servers: state and counters survive
    assert after[o1.addr]["checks_passed"] >= before[o1.addr]["checks_passed"] >= 3, (before, after)
    assert after[o2.addr]["checks_failed"] >= before[o2.addr]["checks_failed"] >= 2, (before, after)
    assert after[o2.addr]["state"] == "down" and o2_later["state"] == "down", (after, o2_later)
    assert sent_to_o2 == []
    # the added one starts down, takes nothing until rise passes
    assert seen["state"] == "down" and seen["up"] is False, seen
    assert o4_load_at_sight == 0, f"{o4_load_at_sight} requests reached it while /stats said down"
    assert first_o4.t1 >= t_up - POLL_S - 0.05, \
        f"it answered {t_up - first_o4.t1:.3f} s before /stats showed it up"
    assert t_up - t_reload <= rise * INTERVAL_S + SLACK_S
    assert len(log_lines(cg, up_line(o4.addr) + rf"{rise} passed checks")) == 1
    # the removed one: no traffic, no checks, not shown as a live server
    assert c3b == c3a, "the removed server still got requests"
    assert h3b == h3a, "the removed server is still checked"
    assert o3_view is None or o3_view["state"] == "removed", o3_view
    assert len(log_lines(cg, down_line(o2.addr))) == 1
    assert totals["failed"] == 0, totals


@pytest.mark.hard_timeout(60)
def test_issue_4_added_server_takes_no_traffic_before_it_is_up_over_8_reloads(
        origins, clonegate, listeners):
    # Each reload adds a fresh server (a recorder answering 200) and drops
    # the previous one; for 0.4 s (less than the rise passes take) it must
    # get none of the load while /stats does not show it up.
    o1, o2 = origins(2)
    cg = clonegate(dict(QUICK, **{"health.fall": 2}), servers=[o1, o2])
    cycles = []
    with Load(cg.port, duration=8.0) as load:
        wait_for_answers(load, [o1, o2])
        for i in range(8):
            new = listeners(True)
            sections = helpers.ini_sections(cg.ini_text)
            sections["upstream"]["servers"] = f"{o1.addr}, {o2.addr}, {new.addr}"
            t_reload = time.monotonic()
            cg.reload(helpers.render_ini(sections))
            early = 0
            states = set()
            for _ in range(400):  # bounded by the 0.4 s window below
                if time.monotonic() >= t_reload + 0.4:
                    break
                v = server_view(cg, new.addr)
                got = len(new.requests(LOAD_PATH))
                state = v["state"] if v else None
                states.add(state)
                if state != "up":
                    early = max(early, got)
                time.sleep(POLL_S)
            cycles.append((i, sorted(map(str, states)), early))
    totals = load.totals()
    report("added server before up, per reload", cycles=cycles, **totals)
    assert all(early == 0 for _, _, early in cycles), \
        f"requests reached a new server while /stats showed it not up: {cycles}"
    assert totals["failed"] == 0, totals


@pytest.mark.hard_timeout(60)
def test_reload_readding_a_removed_server_starts_it_afresh(origins, clonegate):
    # A clone a reload removes and a later reload puts back is a new clone:
    # down until rise passed checks, zero counters, not drained, no error;
    # nothing of its first stay survives, however short its absence.
    o1, o2 = origins(2)
    rise = 2
    cg = clonegate(dict(QUICK), servers=[o1, o2])
    both = helpers.ini_sections(cg.ini_text)
    # a history for o2: passed and failed checks, an error, traffic, drained
    helpers.wait_for(lambda: server_view(cg, o2.addr)["checks_passed"] >= 3, timeout=5,
                     what="three passed checks on o2")
    o2.set_health(False)
    helpers.wait_for(lambda: server_view(cg, o2.addr)["checks_failed"] >= 1, timeout=3,
                     what="a failed check on o2")
    o2.set_health(True)
    for i in range(4):
        assert cg.get(f"{LOAD_PATH}?n={i}").status == 200
    assert cg.admin(f"/servers/{o2.addr}/drain", "POST").status == 200
    old = server_view(cg, o2.addr)
    assert old["checks_passed"] >= 3 and old["checks_failed"] >= 1, old
    assert old["last_error"] == "status 503" and old["draining"] is True, old
    assert old["requests"] >= 1 and old["latency_ms"]["count"] >= 1, old

    only_o1 = helpers.ini_sections(cg.ini_text)
    only_o1["upstream"]["servers"] = o1.addr
    cg.reload(helpers.render_ini(only_o1))
    helpers.wait_for(lambda: server_view(cg, o2.addr) is None, timeout=5,
                     what="o2 gone from /stats after the reload that removed it")
    served_before = o2.count(LOAD_PATH)
    cg.reload(helpers.render_ini(both))
    t_reload = time.monotonic()
    seen = helpers.wait_for(lambda: server_view(cg, o2.addr), timeout=5,
                            what="o2 back in /stats after the reload that added it")
    t_up, up_view = wait_state(cg, o2.addr, "up", rise * INTERVAL_S + 3)
    report("re-added server", state_at_first_sight=seen["state"],
           checks_at_first_sight=seen["checks_passed"], up_after_reload_s=t_up - t_reload)

    assert seen["state"] == "down" and seen["up"] is False and seen["draining"] is False, seen
    assert seen["checks_passed"] < rise and seen["checks_failed"] == 0, seen
    assert seen["traffic_failures"] == 0 and seen["last_error"] == "", seen
    assert seen["requests"] == 0 and seen["failures"] == 0 and seen["retries"] == 0, seen
    assert seen["latency_ms"]["count"] == 0, seen
    assert up_view["checks_passed"] >= rise and up_view["checks_failed"] == 0, up_view
    assert up_view["last_change"] > 0, up_view
    assert len(log_lines(cg, up_line(o2.addr) + rf"{rise} passed checks")) == 1
    # its request count starts from the re-add: only what it served since
    for i in range(6):
        assert cg.get(f"{LOAD_PATH}?after={i}").status == 200
    served = o2.count(LOAD_PATH) - served_before
    assert served >= 1
    helpers.wait_for(lambda: server_view(cg, o2.addr)["requests"] == served, timeout=5,
                     what=f"o2's requests to be the {served} it served since it was put back")
    metrics = cg.admin("/metrics").text()
    assert f'clonegate_server_requests_total{{server="{o2.addr}"}} {served}\n' in metrics, \
        [line for line in metrics.splitlines() if "requests_total" in line]


# ---------------------------------------------------------------------------
# 8. Slow start


@pytest.mark.hard_timeout(60)
def test_issue_4_slow_start_ramps_a_returning_clone_up(origins, clonegate):
    o1, o2 = origins(2)
    ramp = 2.0
    cg = clonegate(dict(QUICK, **{"health.fall": 2, "health.slow_start": "2s"}),
                   servers=[o1, o2])
    wait_state(cg, o2.addr, "up", 5)

    with Load(cg.port, duration=9.0) as load:
        wait_for_answers(load, [o1, o2])
        o2.set_health(False)
        wait_state(cg, o2.addr, "down", 2 * INTERVAL_S + 2)
        o2.set_health(True)
        t_up, _ = wait_state(cg, o2.addr, "up", 2 * INTERVAL_S + 2)
        wait_until(t_up + ramp + 1.2)
    windows = [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5), (1.5, 2.0), (ramp + 0.2, ramp + 1.2)]
    shares = [load.share(o2.name, t_up + a, t_up + b) for a, b in windows]
    totals = load.totals()
    report("slow start", **{f"share_{a:.1f}_{b:.1f}s": f"{s:.3f} of {n}"
                            for (a, b), (s, n) in zip(windows, shares)}, **totals)
    early, late = shares[0][0], shares[-1][0]
    assert shares[0][1] >= 50 and shares[-1][1] >= 50, shares
    assert late >= 0.4, shares  # equal weights: about half once ramped
    assert early <= 0.5 * late, shares
    assert shares[1][0] >= early, shares  # it grows
    assert totals["failed"] == 0, totals
