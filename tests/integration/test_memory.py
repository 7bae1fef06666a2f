"""Big bodies stream through the proxy in bounded memory (DESIGN.md "Hot
paths"; cache.max_object_size: larger responses are streamed, not
buffered): the proxy's peak resident size (VmHWM) stays under 64 MiB while
1 GiB goes down and 512 MiB goes up, and every byte arrives intact
(compared by digest)."""

import pytest

import helpers

HWM_LIMIT_KB = 64 * 1024  # peak resident size the proxy may reach
GIB = 1 << 30
MIB = 1 << 20
STREAM_TIMEOUT = 120  # s one transfer may take (loopback: a few seconds)


def big_world(clonegate, origins):
    (o,) = origins(1)
    # The defaults the user gets (cache on, 8m max_object_size), with a body
    # limit that lets 512 MiB up.
    cg = clonegate({"server.max_body_size": "1g", "server.workers": 1}, servers=[o])
    assert cg.get("/echo").status == 200  # warmed up: the baseline is in the peak too
    return o, cg


def assert_small_peak(cg, what):
    hwm = helpers.hwm_kb(cg.pid)
    assert hwm < HWM_LIMIT_KB, f"{what}: proxy VmHWM {hwm} KiB, limit {HWM_LIMIT_KB} KiB"


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
    assert_small_peak(cg, f"GET {n} bytes ({framing})")
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
