"""The access log ([server] access_log, access_log_format): one line per
request naming the client, the request, the status, the body bytes sent,
the upstream that answered and how long the upstream and the whole request
took; combined or JSON; off; to stderr or to a file."""

import json
import re
import uuid

import pytest

import helpers

LOG_WAIT = 5.0  # s a request's line may take to reach the log (lines are buffered)

# Apache combined: client ident user [time] "request" status bytes "referer" "ua",
# then clonegate's own fields (upstream address, upstream time, total time).
COMBINED = re.compile(
    r'^(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<target>\S+) (?P<protocol>HTTP/\d\.\d)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<ua>[^"]*)"(?P<rest>.*)$'
)
NUMBER = re.compile(r"(?<![\w.:])(\d+(?:\.\d+)?)(?![\w.:])")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def lines_with(text, needle):
    return [line for line in text.splitlines() if needle in line]


def wait_lines(read, needle, count=1):
    """Polls read() until <count> lines hold <needle>; returns them."""
    return helpers.wait_for(lambda: (lambda ls: ls if len(ls) >= count else None)(
        lines_with(read(), needle)), timeout=LOG_WAIT, what=f"access log line with {needle}")


def read_file(path):
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def addr_of(origins_by_name, r):
    return origins_by_name[r.header("X-Origin")].addr


def parse_combined(line):
    m = COMBINED.match(line)
    assert m, f"not a combined access log line: {line!r}"
    numbers = [float(x) for x in NUMBER.findall(m.group("rest"))]
    return m, numbers


def check_combined(line, target, status, body_len, upstream, min_time=0.0,
                   referer="-", ua="-", framing=0):
    """<framing>: bytes of chunked framing the count may include beyond the
    body (the message body on the wire, as nginx counts it, or the content
    alone, as Apache does: either is fine)."""
    m, _ = parse_combined(line)
    assert m.group("client") == "127.0.0.1", line
    assert m.group("method") == "GET" and m.group("target") == target, line
    assert m.group("protocol") == "HTTP/1.1", line
    assert int(m.group("status")) == status, line
    assert body_len <= int(m.group("bytes")) <= body_len + framing, line
    assert m.group("referer") == referer and m.group("ua") == ua, line
    rest = m.group("rest")
    assert upstream in rest, f"upstream {upstream} not in {line!r}"
    # Upstream time and total time: two durations in seconds after the address.
    after = rest.split(upstream, 1)[1]
    times = [float(x) for x in NUMBER.findall(after)]
    assert len(times) >= 2, f"no upstream time and total time in {line!r}"
    upstream_time, total_time = times[-2], times[-1]
    assert min_time <= upstream_time <= total_time + 0.002, line
    assert total_time < 10, line


def test_combined_line_per_request_on_stderr(origins, clonegate):
    os_ = origins(2)
    by_name = {o.name: o for o in os_}
    cg = clonegate({"server.access_log": "stderr", "server.access_log_format": "combined",
                    "cache.enabled": "no"})
    t1 = "/echo?id=" + unique("a")
    t2 = "/status?code=404&id=" + unique("b")
    t3 = "/slow?ms=300&id=" + unique("c")
    r1 = cg.get(t1, {"Referer": "http://ref.example/page", "User-Agent": "clonegate-test/1"})
    r2 = cg.get(t2)
    r3 = cg.get(t3)
    assert (r1.status, r2.status, r3.status) == (200, 404, 200)

    (l1,) = wait_lines(cg.stderr_text, t1)
    (l2,) = wait_lines(cg.stderr_text, t2)
    (l3,) = wait_lines(cg.stderr_text, t3)
    check_combined(l1, t1, 200, len(r1.body), addr_of(by_name, r1),
                   referer="http://ref.example/page", ua="clonegate-test/1")
    check_combined(l2, t2, 404, len(r2.body), addr_of(by_name, r2))
    check_combined(l3, t3, 200, len(r3.body), addr_of(by_name, r3), min_time=0.3)
    # Exactly one line per request, also once everything is flushed at exit.
    assert cg.stop() == 0
    text = cg.stderr_text()
    assert [len(lines_with(text, t)) for t in (t1, t2, t3)] == [1, 1, 1], text


def test_combined_line_counts_streamed_body_bytes(origins, clonegate, tmp_path):
    (o,) = origins(1)
    path = tmp_path / "access.log"
    cg = clonegate({"server.access_log": str(path), "cache.enabled": "no"})
    n = 3 * 1024 * 1024 + 5
    t = f"/bytes?n={n}&chunked=1&id={unique('big')}"
    r = helpers.stream_request(cg.port, "GET", t, timeout=30)
    assert r.status == 200 and r.length == n
    (line,) = wait_lines(lambda: read_file(path), t)
    # origin.py sends 64 KiB chunks: "10000\r\n" + "\r\n" each, "0\r\n\r\n" last.
    check_combined(line, t, 200, n, o.addr, framing=(n // 65536 + 1) * 9 + 5)


def test_json_lines_to_a_file(origins, clonegate, tmp_path):
    os_ = origins(2)
    by_name = {o.name: o for o in os_}
    path = tmp_path / "access.json"
    cg = clonegate({"server.access_log": str(path), "server.access_log_format": "json",
                    "cache.enabled": "no"})
    targets = ["/echo?id=" + unique("j1"), "/status?code=503&id=" + unique("j2"),
               "/slow?ms=250&id=" + unique("j3")]
    responses = [cg.get(t, {"User-Agent": 'quote" and \\ back'}) for t in targets]
    assert [r.status for r in responses] == [200, 503, 200]
    for t in targets:
        wait_lines(lambda: read_file(path), json.dumps(t)[1:-1])

    entries = []
    for line in read_file(path).splitlines():
        obj = json.loads(line)  # every line is one JSON object
        assert isinstance(obj, dict), line
        entries.append(obj)
    assert len(entries) == len(targets), entries
    for t, r in zip(targets, responses):
        (e,) = [e for e in entries if e.get("target") == t]
        for key in ("client", "method", "target", "status", "bytes", "upstream",
                    "upstream_time", "total_time"):
            assert key in e, (key, e)
        assert e["client"] == "127.0.0.1", e
        assert e["method"] == "GET", e
        assert e["status"] == r.status, e
        assert e["bytes"] == len(r.body), e
        assert e["upstream"] == addr_of(by_name, r), e
        assert isinstance(e["upstream_time"], (int, float)), e
        assert isinstance(e["total_time"], (int, float)), e
        assert 0 <= e["upstream_time"] <= e["total_time"] + 0.002 < 10, e
    slow = [e for e in entries if e["target"] == targets[2]][0]
    assert slow["upstream_time"] >= 0.25 and slow["total_time"] >= 0.25, slow
    # Nothing of it went to stderr.
    assert not any(t in cg.stderr_text() for t in targets)


def test_combined_to_a_file_not_stderr(origins, clonegate, tmp_path):
    (o,) = origins(1)
    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    cg = clonegate({"server.access_log": str(path), "cache.enabled": "no"})
    targets = ["/echo?id=" + unique("f") for _ in range(5)]
    sizes = {}
    with cg.conn() as c:  # keep-alive: still one line per request
        for t in targets:
            r = c.get(t)
            assert r.status == 200
            sizes[t] = len(r.body)
    for t in targets:
        (line,) = wait_lines(lambda: read_file(path), t)
        check_combined(line, t, 200, sizes[t], o.addr)
    assert cg.stop() == 0
    text = read_file(path)
    assert len(text.splitlines()) == len(targets), text
    assert not any(t in cg.stderr_text() for t in targets)


def test_access_log_off_writes_nothing(origins, clonegate, tmp_path):
    origins(1)
    cg = clonegate({"server.access_log": "off", "cache.enabled": "no"})
    targets = ["/echo?id=" + unique("off") for _ in range(3)]
    for t in targets:
        assert cg.get(t).status == 200
    # Stopping flushes whatever was buffered: after it, absence is final.
    assert cg.stop() == 0
    text = cg.stderr_text()
    assert not any(t in text for t in targets), text
    assert not (helpers.REPO / "off").exists()


def test_issue_3_refused_request_is_logged_with_its_target(origins, clonegate):
    """A request refused after its request line was read (two Host fields)
    is logged with its method, target and 400, not as '-'."""
    origins(1)
    cg = clonegate({"server.access_log": "stderr", "server.access_log_format": "combined",
                    "cache.enabled": "no"})
    target = unique("/refused")
    raw = f"GET {target} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode()
    helpers.http_request(cg.port, raw, timeout=5)
    (line,) = wait_lines(cg.stderr_text, target)
    assert f'"GET {target} HTTP/1.1" 400 ' in line, line
    assert "upstream=-" in line, line


@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_a_line_of_long_escaped_fields_stays_whole(origins, clonegate, tmp_path, fmt):
    # quotes and non-ASCII bytes escape to 2-6 bytes each: the line must still
    # end as it should, with the upstream and the times, and parse
    (o,) = origins(1)
    path = tmp_path / "access.log"
    cg = clonegate({"server.access_log": str(path), "server.access_log_format": fmt,
                    "cache.enabled": "no"})
    target = "/echo?q=" + "%22" * 10 + '"' * 500
    raw = (f"GET {target} HTTP/1.1\r\nHost: test\r\n".encode("latin-1")
           + b"User-Agent: " + b"\x80" * 200 + b"\r\nReferer: " + b"\xff" * 200 + b"\r\n\r\n")
    data = helpers.http_request(cg.port, raw)
    r, _ = helpers.parse_response(data)
    wait_lines(lambda: read_file(path), "upstream")
    (line,) = read_file(path).splitlines()
    if fmt == "json":
        e = json.loads(line)
        assert e["status"] == r.status and e["upstream"] == o.addr, e
        assert isinstance(e["total_time"], (int, float)), e
        assert e["user_agent"].startswith("\x80") and e["referer"].startswith("\xff"), e
    else:
        assert re.search(r" upstream=\S+ upstream_time=[\d.]+ time=[\d.]+$", line), line[-200:]
