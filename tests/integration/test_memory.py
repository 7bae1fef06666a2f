"""Big bodies stream through the proxy in bounded memory (DESIGN.md "Hot
paths"; cache.max_object_size: larger responses are streamed, not
buffered): the proxy's peak resident size (VmHWM) stays under 64 MiB while
1 GiB goes down and 512 MiB goes up, and every byte arrives intact
(compared by digest). An idle keep-alive client connection costs little:
its request state goes back when it falls idle (VmRSS per connection over
a few thousand of them)."""

import resource
import selectors
import socket
import threading
import time

import pytest

import helpers

HWM_LIMIT_KB = 64 * 1024  # peak resident size the proxy may reach
DOWNLOAD_HWM_LIMIT_KB = 16 * 1024  # ... while a 1 GiB response streams through
GIB = 1 << 30
MIB = 1 << 20
STREAM_TIMEOUT = 120  # s one transfer may take (loopback: a few seconds)
IDLE_CONNS = 2000  # idle keep-alive client connections held at once
IDLE_WINDOW = 8  # ... of which at most this many awaiting their answer
IDLE_BYTES_LIMIT = 1536  # VmRSS bytes one idle connection may cost
IDLE_SETTLE = 0.5  # s the proxy is left alone before each VmRSS reading
IDLE_OPEN_TIMEOUT = 60  # s opening them all may take
IDLE_PATH = "/c/idle?cc=no-store"  # one URL, never stored: the cache holds nothing new


def big_world(clonegate, origins):
    (o,) = origins(1)
    # The defaults the user gets (cache on, 8m max_object_size), with a body
    # limit that lets 512 MiB up.
    cg = clonegate({"server.max_body_size": "1g", "server.workers": 1}, servers=[o])
    assert cg.get("/echo").status == 200  # warmed up: the baseline is in the peak too
    return o, cg


def assert_small_peak(cg, what, limit_kb=HWM_LIMIT_KB):
    hwm = helpers.hwm_kb(cg.pid)
    print(f"\n{what}: proxy VmHWM {hwm} KiB")
    assert hwm < limit_kb, f"{what}: proxy VmHWM {hwm} KiB, limit {limit_kb} KiB"


@pytest.mark.hard_timeout(300)
@pytest.mark.parametrize("n, framing", [(GIB, "chunked=1"), (128 * MIB, "chunked=0")],
                         ids=["1GiB-chunked", "128MiB-content-length"])
def test_big_download_streams_in_bounded_memory(clonegate, origins, n, framing):
    o, cg = big_world(clonegate, origins)
    r = helpers.stream_request(cg.port, "GET", f"/bytes?n={n}&{framing}",
                               timeout=STREAM_TIMEOUT)
    assert r.status == 200, r
    assert r.length == n
    assert r.sha256 == helpers.pattern_sha256(n)
    if framing == "chunked=0":
        assert r.header("Content-Length") == str(n)
    # downloads: the tighter bound (an ASan build's shadow memory keeps the
    # general one)
    assert_small_peak(cg, f"GET {n} bytes ({framing})",
                      HWM_LIMIT_KB if sanitized(helpers.CLONEGATE) else DOWNLOAD_HWM_LIMIT_KB)
    # Still serving, and the big answer was not kept: a second fetch goes
    # to the clone again.
    assert cg.get("/echo").status == 200
    assert o.count("/bytes") == 1


@pytest.mark.hard_timeout(300)
@pytest.mark.parametrize("te", [False, True], ids=["content-length", "chunked"])
def test_big_upload_streams_in_bounded_memory(clonegate, origins, te):
    o, cg = big_world(clonegate, origins)
    n = 512 * MIB
    headers = {"Transfer-Encoding": "chunked"} if te else {"Content-Length": str(n)}
    r = helpers.stream_request(cg.port, "POST", "/sink", headers, helpers.pattern_pieces(n),
                               timeout=STREAM_TIMEOUT)
    assert r.status == 200, r
    assert r.json() == {"length": n, "sha256": helpers.pattern_sha256(n)}
    assert_small_peak(cg, f"POST {n} bytes ({'chunked' if te else 'Content-Length'})")
    assert cg.get("/echo").status == 200


def sanitized(binary):
    """Whether <binary> is an AddressSanitizer build (redzones, shadow memory
    and no reuse lists: its bytes per connection say nothing of ours)."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def raise_nofile(need):
    """Raises this process's open-file limit (inherited by the clonegate it
    starts) to at least <need>, within the hard limit; skips when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"open-file hard limit {hard} is below the {need} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def hold_idle(port, n, window, timeout):
    """<n> keep-alive connections to <port>, each having had one GET
    IDLE_PATH answered 200 (read whole), left open: their sockets. At most
    <window> of them awaiting their answer at a time."""
    request = helpers.build_request("GET", IDLE_PATH)
    done, busy = [], {}  # busy: socket -> bytes read so far
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    try:
        while len(done) < n:
            while len(done) + len(busy) < n and len(busy) < window:
                s = socket.create_connection(("127.0.0.1", port), timeout=helpers.IO_TIMEOUT)
                s.sendall(request)
                s.setblocking(False)
                busy[s] = b""
                sel.register(s, selectors.EVENT_READ)
            assert time.monotonic() < deadline, f"only {len(done)} of {n} answered in time"
            for key, _ in sel.select(1.0):
                s = key.fileobj
                chunk = s.recv(65536)
                assert chunk, f"connection {len(done) + 1} closed before its answer"
                busy[s] += chunk
                try:
                    r, _ = helpers.parse_response(busy[s])
                except helpers.Incomplete:
                    continue
                assert r.status == 200 and r.header("Connection", "") != "close", r
                sel.unregister(s)
                del busy[s]
                done.append(s)
        return done
    except BaseException:
        for s in done + list(busy):
            s.close()
        raise
    finally:
        sel.close()


@pytest.mark.hard_timeout(180)
def test_an_idle_keep_alive_connection_costs_under_1_5_kib(clonegate, origins):
    raise_nofile(IDLE_CONNS + 512)
    origins(1)
    # the defaults (cache on, access log on) and room for every connection
    cg = clonegate({"server.max_connections": IDLE_CONNS + 100, "server.idle_timeout": "120s"})
    assert cg.get(IDLE_PATH).status == 200  # warmed up: first-request allocations are in before
    time.sleep(IDLE_SETTLE)
    before = helpers.rss_kb(cg.pid)
    socks = hold_idle(cg.port, IDLE_CONNS, IDLE_WINDOW, IDLE_OPEN_TIMEOUT)
    try:
        time.sleep(IDLE_SETTLE)
        after = helpers.rss_kb(cg.pid)
        per_conn = (after - before) * 1024 / IDLE_CONNS
        assert cg.stats()["connections"]["open"] >= IDLE_CONNS
        # every connection is still usable: a sample asks again
        for s in socks[::100]:
            s.setblocking(True)
            s.settimeout(helpers.IO_TIMEOUT)
            s.sendall(helpers.build_request("GET", IDLE_PATH))
            data = b""
            while True:
                chunk = s.recv(65536)
                assert chunk, "an idle connection was closed"
                data += chunk
                try:
                    r, _ = helpers.parse_response(data)
                    break
                except helpers.Incomplete:
                    continue
            assert r.status == 200, r
    finally:
        for s in socks:
            s.close()
    if not sanitized(helpers.CLONEGATE):
        assert per_conn < IDLE_BYTES_LIMIT, (
            f"{per_conn:.0f} bytes of VmRSS per idle connection (VmRSS {before} -> {after} KiB "
            f"over {IDLE_CONNS}), limit {IDLE_BYTES_LIMIT}")


# ------------------------------------------------------------ unread answers

UNREAD_GROWTH_LIMIT_KB = 4 * 1024  # VmRSS the proxy may gain while a client reads nothing
UNREAD_SECONDS = 2.0  # how long the client sends without reading


def send_without_reading(port, data, seconds):
    """Sends as much of <data> as the proxy takes within <seconds> and waits
    out the rest of them, reading nothing; returns (socket, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded by time; the proxy works meanwhile
        try:
            if sent < len(data):
                sent += s.send(data[sent:sent + 65536])
                continue
        except BlockingIOError:
            pass
        time.sleep(0.01)
    return s, sent


def read_all_answers(s, data, sent, count, timeout=60):
    """Sends the rest of <data> while reading <count> answers from <s>;
    returns them."""
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    buf = b""
    answers = []
    pos = 0
    deadline = time.monotonic() + timeout
    try:
        while len(answers) < count:  # bounded by the deadline
            assert time.monotonic() < deadline, f"{len(answers)} of {count} answers"
            for key, ev in sel.select(0.5):
                if ev & selectors.EVENT_WRITE and sent < len(data):
                    try:
                        sent += s.send(data[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    if sent == len(data):
                        sel.modify(s, selectors.EVENT_READ)
                if ev & selectors.EVENT_READ:
                    chunk = s.recv(1 << 20)
                    assert chunk, f"closed after {len(answers)} of {count} answers"
                    buf += chunk
            while len(answers) < count:  # each pass takes one whole answer off
                try:
                    r, used = helpers.parse_response(buf, pos)
                except helpers.Incomplete:
                    break
                answers.append(r)
                pos = used
            if pos > (1 << 20):
                buf, pos = buf[pos:], 0
    finally:
        sel.close()
    return answers


@pytest.mark.hard_timeout(120)
@pytest.mark.parametrize("cached, count", [(False, 1000), (True, 4000)],
                         ids=["forwarded", "cache-hits"])
def test_pipelined_answers_a_client_does_not_read_stay_bounded(clonegate, origins, cached, count):
    # pipelined GETs of 60 KB answers (1,000: 58 MiB of answers for 40 KB of
    # requests); the proxy must stop taking requests while answers wait
    (o,) = origins(1)
    target = "/c/unread?cc=max-age%3D60&size=61440" if cached else "/bytes?n=61440"
    cg = clonegate({"server.workers": 1}, servers=[o])
    assert cg.get(target).status == 200  # warmed up (and stored, when cached)
    time.sleep(IDLE_SETTLE)
    before = helpers.rss_kb(cg.pid)
    data = helpers.build_request("GET", target) * count
    s, sent = send_without_reading(cg.port, data, UNREAD_SECONDS)
    try:
        grown = helpers.rss_kb(cg.pid) - before
        answers = read_all_answers(s, data, sent, count)
    finally:
        s.close()
    assert all(r.status == 200 and len(r.body) == 61440 for r in answers)
    if not sanitized(helpers.CLONEGATE):
        assert grown < UNREAD_GROWTH_LIMIT_KB, f"VmRSS grew {grown} KiB while answers waited"


@pytest.mark.hard_timeout(60)
def test_interim_answers_a_client_does_not_read_stay_bounded(clonegate):
    # a clone that sends 103 after 103 (8 KB heads each) to a client that
    # reads nothing: the proxy must stop reading the clone, not buffer them
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: <" + b"x" * 8000 + b">\r\n\r\n"
    interim = 4000  # 32 MB of interim heads
    stop = threading.Event()

    def serve():
        srv.settimeout(10)
        for _ in range(10):  # health checks first, then the one request
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                c.settimeout(30)
                data = b""
                while b"\r\n\r\n" not in data:  # bounded: 30 s timeout per recv
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b" /hints " in data:
                    answer(c)
                    return
                try:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def answer(c):
        try:
            for _ in range(interim):
                if stop.is_set():
                    return
                c.sendall(hint)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return
        time.sleep(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cg = clonegate({"server.workers": 1, "cache.enabled": "no", "health.interval": "60s"},
                   servers=[f"127.0.0.1:{port}"])
    try:
        time.sleep(IDLE_SETTLE)
        before = helpers.rss_kb(cg.pid)
        data = helpers.build_request("GET", "/hints")
        s, sent = send_without_reading(cg.port, data, UNREAD_SECONDS)
        try:
            grown = helpers.rss_kb(cg.pid) - before
            answers = read_all_answers(s, data, sent, interim + 1)
        finally:
            s.close()
        assert [r.status for r in answers[:interim]] == [103] * interim
        assert answers[-1].status == 200 and answers[-1].body == b"ok"
        if not sanitized(helpers.CLONEGATE):
            assert grown < UNREAD_GROWTH_LIMIT_KB, f"VmRSS grew {grown} KiB while hints waited"
    finally:
        stop.set()
        srv.close()
        t.join(10)
