"""TLS: termination on the [tls] listener and TLS to the clones ([upstream]
tls). Real clonegate, origin.py (plain, or HTTPS with --tls-cert), and the
clients people use: `openssl s_client`, curl and Python's ssl module.

Every certificate is made by examples/tls/make-cert.sh in the test's own
pytest tmp dir (self-signed P-256; a self-signed certificate is its own
trust anchor, so the test "CA" is the certificate itself); no key is ever
written into the tree. Each test checks the "tls" figures of /stats along
with what the client saw.
"""

import hashlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

import helpers

MAKE_CERT = helpers.REPO / "examples" / "tls" / "make-cert.sh"
OPENSSL = shutil.which("openssl") or "openssl"
CURL = shutil.which("curl") or "curl"
TLS_KEYS = ("handshakes", "resumed", "failures", "plaintext", "timeouts")
BASE = {"server.workers": 1, "cache.enabled": "no"}
TOOL_TIMEOUT = 20  # s an openssl or curl run may take
# What the proxy may log about a clone whose certificate it refuses.
UPSTREAM_ERRORS = r"(?i)upstream|clone|certificate|verify|tls|ssl|handshake|down|50[234]"


def make_cert(directory, name="localhost", days=365):
    """Runs make-cert.sh into <directory>: (cert, key) paths for localhost,
    else the path of certs/<name>.pem (certificate and key in one file)."""
    r = subprocess.run([str(MAKE_CERT), "--dir", str(directory), "--name", name,
                        "--days", str(days)], capture_output=True, timeout=TOOL_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    if name == "localhost":
        return directory / "cert.pem", directory / "key.pem"
    return directory / "certs" / f"{name}.pem"


def fingerprint(pem_path):
    """SHA-256 of the first certificate in <pem_path> (DER)."""
    text = pem_path.read_text()
    block = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(block.group(0))).hexdigest()


class Certs:
    """A default certificate (localhost, IP:127.0.0.1) and a certs directory
    holding other.test, in one tmp dir."""

    def __init__(self, directory):
        self.dir = directory
        self.cert, self.key = make_cert(directory)
        self.other = make_cert(directory, "other.test")
        self.certs_dir = directory / "certs"


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path / "tls")


def tls_section(c, port=None):
    return {"listen": f"127.0.0.1:{port or helpers.free_port()}", "cert": str(c.cert),
            "key": str(c.key), "certs": str(c.certs_dir)}


def start(clonegate, c, servers=None, **overrides):
    """clonegate with BASE, a [tls] listener on <c>'s certificates and
    <overrides>; .tls_port is where it speaks TLS."""
    ini = dict(BASE)
    ini["tls"] = tls_section(c)
    ini.update(overrides)
    cg = clonegate(ini, servers=servers)
    return with_baseline(cg)


def with_baseline(cg):
    """Sets .tls_port and .tls0, the tls figures once the harness's
    readiness probes (a TCP connect and close on each listener) are closed:
    tls_figures() reports what moved since."""
    cg.tls_port = cg.tls_listen[0][1] if cg.tls_listen else None
    helpers.wait_for(lambda: (lambda c: c["total"] >= len(cg.listen) + len(cg.tls_listen)
                              and c["open"] == 0)(cg.stats()["connections"]),
                     timeout=5, what="the readiness probes to be closed")
    cg.tls0 = None
    cg.tls0 = tls_figures(cg)
    return cg


def client_context(c, alpn=("http/1.1",), **versions):
    """A verifying client context trusting <c>'s default certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(c.cert))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    for k, v in versions.items():
        setattr(ctx, k, v)
    return ctx


def https(cg, c, **kw):
    """A keep-alive HTTPS connection to <cg>'s TLS port, verified, SNI
    localhost."""
    ctx = kw.pop("ctx", None) or client_context(c)
    return helpers.HttpConn(cg.tls_port, tls=ctx, server_hostname=kw.pop("sni", "localhost"),
                            **kw)


def tls_figures(cg):
    """/stats "tls", checked for its keys and types, less cg.tls0."""
    t = cg.stats()["tls"]
    assert set(t) == set(TLS_KEYS), t
    assert all(type(t[k]) is int and t[k] >= 0 for k in TLS_KEYS), t
    base = getattr(cg, "tls0", None) or dict.fromkeys(TLS_KEYS, 0)
    return {k: t[k] - base[k] for k in TLS_KEYS}


def tls_settled(cg, cond, what, timeout=5.0):
    box = {}

    def check():
        box["t"] = tls_figures(cg)
        return cond(box["t"])

    try:
        helpers.wait_for(check, timeout=timeout, interval=0.02, what=what)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last tls figures: {box.get('t')}") from None
    return box["t"]


def s_client(port, *args, stdin=b"", timeout=TOOL_TIMEOUT):
    """openssl s_client to 127.0.0.1:<port> with <args>; (exit code, output)."""
    r = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


HEAD_CLOSE = b"GET /s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def subject_cn(out):
    m = re.search(r"^subject=.*?CN ?= ?([^,\n/]+)", out, re.M)
    return m.group(1).strip() if m else None


def curl(c, *args, timeout=60):
    r = subprocess.run([CURL, "-sS", "--cacert", str(c.cert), *args], capture_output=True,
                       timeout=timeout)
    return r


def echo_headers(r):
    return {k.lower(): v for k, v in json.loads(r.body)["headers"]}


# ---------------------------------------------------------------------------
# 1. Requests over TLS


def test_https_request_reaches_the_origin_with_x_forwarded_proto_https(origins, clonegate,
                                                                       certs):
    origins(1)
    cg = start(clonegate, certs)
    with https(cg, certs) as conn:
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        r = conn.get("/echo")
    assert r.status == 200, r
    h = echo_headers(r)
    assert h["x-forwarded-proto"] == "https", h
    assert "proto=https" in h["forwarded"], h
    # the plain port still says http
    h = echo_headers(cg.get("/echo"))
    assert h["x-forwarded-proto"] == "http" and "proto=http" in h["forwarded"], h
    t = tls_settled(cg, lambda t: t["handshakes"] == 1, "one handshake")
    assert t == {"handshakes": 1, "resumed": 0, "failures": 0, "plaintext": 0, "timeouts": 0}
    # curl, the everyday client, verifying the certificate by name
    port = cg.tls_port
    r = curl(certs, "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/echo")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["headers"], r.stdout
    # the start-up lines name the TLS listener too
    assert re.search(rf"listening on 127\.0\.0\.1:{port} \(TLS\)", cg.stderr_text()), \
        cg.stderr_text()[-2000:]


def test_alpn_answers_http11_and_an_h2_only_client_gets_no_alpn_but_is_served(origins,
                                                                             clonegate, certs):
    origins(1)
    cg = start(clonegate, certs)
    with https(cg, certs, ctx=client_context(certs, alpn=("h2", "http/1.1"))) as conn:
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
        assert conn.get("/x").status == 200
    # h2 only: no ALPN answer (clonegate declines, it does not abort), and
    # the client may still speak HTTP/1.1
    with https(cg, certs, ctx=client_context(certs, alpn=("h2",))) as conn:
        assert conn.sock.selected_alpn_protocol() is None
        assert conn.get("/x").status == 200
    code, out = s_client(cg.tls_port, "-alpn", "h2", "-servername", "localhost")
    assert "No ALPN negotiated" in out, out
    code, out = s_client(cg.tls_port, "-alpn", "http/1.1", "-servername", "localhost")
    assert "ALPN protocol: http/1.1" in out, out
    t = tls_settled(cg, lambda t: t["handshakes"] == 4, "four handshakes")
    assert t["failures"] == 0, t


def test_tls12_and_tls13_accepted_tls11_refused_and_counted(origins, clonegate, certs):
    origins(1)
    cg = start(clonegate, certs)
    for flag, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        code, out = s_client(cg.tls_port, flag, "-servername", "localhost", "-ign_eof",
                             stdin=HEAD_CLOSE)
        assert re.search(rf"Protocol *: *{name}", out) or f"New, {name}" in out, out
        assert "HTTP/1.1 200" in out, out
    t = tls_settled(cg, lambda t: t["handshakes"] == 2, "two handshakes")
    assert t["failures"] == 0, t
    # SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all: the server must refuse it
    code, out = s_client(cg.tls_port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                         "-servername", "localhost")
    assert code != 0, out
    assert "Cipher is (NONE)" in out or "handshake failure" in out or "alert" in out, out
    t = tls_settled(cg, lambda t: t["failures"] == 1, "the TLS 1.1 attempt counted")
    assert t["handshakes"] == 2 and t["plaintext"] == 0, t
    # Python's client, pinned to each version
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(certs, minimum_version=v, maximum_version=v)
        with https(cg, certs, ctx=ctx) as conn:
            assert conn.sock.version() == v.name.replace("_", "."), conn.sock.version()
            assert conn.get("/v").status == 200


def test_sni_picks_the_certificate_from_the_certs_directory(origins, clonegate, certs):
    origins(1)
    cg = start(clonegate, certs)
    code, out = s_client(cg.tls_port, "-servername", "other.test")
    assert subject_cn(out) == "other.test", out
    code, out = s_client(cg.tls_port, "-noservername")
    assert subject_cn(out) == "localhost", out
    code, out = s_client(cg.tls_port, "-servername", "unknown.test")
    assert subject_cn(out) == "localhost", out
    # a client verifying other.test against its own certificate is served
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.other))
    with helpers.HttpConn(cg.tls_port, tls=ctx, server_hostname="other.test") as conn:
        r = conn.get("/sni", headers={"Host": "other.test"})
        assert r.status == 200, r
    tls_settled(cg, lambda t: t["handshakes"] == 4, "four handshakes")


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_resumption_with_s_client_is_reused_and_counted(origins, clonegate, certs,
                                                                tmp_path, version):
    origins(1)
    cg = start(clonegate, certs)
    sess = tmp_path / "session.pem"
    # the request makes s_client read on until the close, so a TLS 1.3
    # ticket sent after the handshake is in the saved session
    code, out = s_client(cg.tls_port, version, "-servername", "localhost", "-ign_eof",
                         "-sess_out", str(sess), stdin=HEAD_CLOSE)
    assert "New, TLS" in out and "HTTP/1.1 200" in out, out
    assert sess.exists() and sess.stat().st_size > 0
    code, out = s_client(cg.tls_port, version, "-servername", "localhost", "-ign_eof",
                         "-sess_in", str(sess), stdin=HEAD_CLOSE)
    assert "Reused, TLS" in out, out
    assert "HTTP/1.1 200" in out, out
    t = tls_settled(cg, lambda t: t["handshakes"] == 2, "two handshakes")
    assert t["resumed"] == 1 and t["failures"] == 0, t


# ---------------------------------------------------------------------------
# 2. Reload


def served_fingerprint(cg):
    """SHA-256 of the certificate a new connection (SNI localhost) gets."""
    ctx = helpers.unverified_tls_context()
    with socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def test_sighup_with_a_new_certificate_serves_it_and_keeps_open_connections(
        origins, clonegate, certs, tmp_path):
    origins(1)
    cg = start(clonegate, certs)
    old = fingerprint(certs.cert)
    assert served_fingerprint(cg) == old
    conn = https(cg, certs)  # keep-alive across the reload, on the old certificate
    try:
        assert conn.get("/before").status == 200
        new_cert, new_key = make_cert(tmp_path / "new")
        new = fingerprint(new_cert)
        assert new != old
        shutil.copyfile(new_cert, certs.cert)
        shutil.copyfile(new_key, certs.key)
        cg.reload()
        helpers.wait_for(lambda: served_fingerprint(cg) == new, timeout=5,
                         what="new connections to get the new certificate")
        for i in range(3):
            r = conn.get(f"/after?i={i}")
            assert r.status == 200, r
    finally:
        conn.close()
    # the new certificate verifies for a client trusting it alone
    with https(cg, certs, ctx=client_context(certs)) as c2:
        assert c2.get("/fresh").status == 200


def test_sighup_with_a_broken_key_keeps_the_old_certificate_and_logs_an_error(
        origins, clonegate, certs, tmp_path):
    origins(1)
    cg = start(clonegate, certs)
    cg.allowed_errors.append(r"reload: \[tls\] certificates not loaded")
    old = fingerprint(certs.cert)
    new_cert, new_key = make_cert(tmp_path / "new")
    shutil.copyfile(new_cert, certs.cert)
    certs.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    cg.reload()
    helpers.wait_for(lambda: "certificates not loaded" in cg.stderr_text(), timeout=5,
                     what="the reload's error line")
    assert re.search(r"^\S+ error: reload: \[tls\] certificates not loaded; the old ones stay",
                     cg.stderr_text(), re.M), cg.stderr_text()[-2000:]
    assert served_fingerprint(cg) == old
    with https(cg, certs, ctx=helpers.unverified_tls_context()) as conn:
        assert conn.get("/still").status == 200


# ---------------------------------------------------------------------------
# 3. Clients that do not speak TLS, or not in time


def plaintext_on_tls_port(cg, pause):
    """Sends a plain GET to the TLS port <pause> s after connecting; returns
    what came back until the close."""
    with socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5) as s:
        if pause:
            time.sleep(pause)
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("pause", [0, 0.3], ids=["at-once", "after-a-pause"])
def test_plain_http_on_the_tls_port_gets_a_plain_400_and_counts(origins, clonegate, certs,
                                                                pause):
    origins(1)
    cg = start(clonegate, certs)
    data = plaintext_on_tls_port(cg, pause)
    assert data.startswith(b"HTTP/1.1 400 "), data
    r = helpers.parse_response(data, eof=True)[0]
    assert b"HTTPS" in r.body, r
    t = tls_settled(cg, lambda t: t["plaintext"] == 1, "the plain request counted")
    assert t["failures"] == 1 and t["handshakes"] == 0, t
    # curl's http:// to the TLS port sees the same
    r = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://127.0.0.1:{cg.tls_port}/"], capture_output=True,
                       timeout=TOOL_TIMEOUT)
    assert r.stdout == b"400", r
    tls_settled(cg, lambda t: t["plaintext"] == 2, "the curl request counted")


# the first bytes of a ClientHello: a handshake record announcing 512 bytes
HALF_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))


@pytest.mark.parametrize("send", [b"", HALF_CLIENT_HELLO], ids=["silent", "half-hello"])
def test_a_stalled_handshake_is_closed_after_header_timeout_and_counted(origins, clonegate,
                                                                        certs, send):
    origins(1)
    cg = start(clonegate, certs, **{"server.header_timeout": "1s"})
    start_t = time.monotonic()
    with socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5) as s:
        if send:
            s.sendall(send)
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - start_t
    assert data == b"" or data[:1] == b"\x15", data  # a close (or a TLS alert), no HTTP
    assert 0.8 <= elapsed < 3.0, elapsed
    t = tls_settled(cg, lambda t: t["timeouts"] == 1, "the timeout counted")
    # a timeout is not also a failure (README, clonegate(8))
    assert t == {"handshakes": 0, "resumed": 0, "failures": 0, "plaintext": 0, "timeouts": 1}, t


def test_failed_handshakes_are_counted(origins, clonegate, certs):
    origins(1)
    cg = start(clonegate, certs)
    # no cipher in common (TLS 1.2, a cipher the default list leaves out)
    code, out = s_client(cg.tls_port, "-tls1_2", "-cipher", "AES128-SHA",
                         "-servername", "localhost")
    assert code != 0, out
    tls_settled(cg, lambda t: t["failures"] == 1, "the cipher mismatch counted")
    # a client that rejects the certificate aborts the handshake
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.other))  # trusts the wrong certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        helpers.HttpConn(cg.tls_port, tls=ctx, server_hostname="localhost")
    # garbage that is neither TLS nor HTTP
    with socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    t = tls_settled(cg, lambda t: t["failures"] == 3, "three failed handshakes")
    assert t["handshakes"] == 0 and t["plaintext"] == 0 and t["timeouts"] == 0, t


def test_a_tcp_probe_that_sends_nothing_is_not_a_failed_handshake(origins, clonegate, certs):
    """A load balancer's TCP check (connect, close) never began a handshake:
    tls.h defines failures as handshakes that failed (bad version, no
    cipher, alert...)."""
    origins(1)
    ini = dict(BASE, tls=tls_section(certs))
    cg = clonegate(ini)
    cg.tls_port = cg.tls_listen[0][1]
    s0 = cg.stats()
    for _ in range(3):
        socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5).close()
    helpers.wait_for(lambda: (lambda c: c["total"] >= s0["connections"]["total"] + 3
                              and c["open"] == 0)(cg.stats()["connections"]),
                     timeout=5, what="the probes to be closed")
    # the harness's own readiness probe was one of these too
    assert cg.stats()["tls"] == dict.fromkeys(TLS_KEYS, 0), cg.stats()["tls"]


def test_metrics_carry_the_tls_figures_and_pass_promtool(origins, clonegate, certs):
    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool not installed (Debian package prometheus; make deps)")
    origins(1)
    cg = start(clonegate, certs)
    ctx = client_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    with https(cg, certs, ctx=ctx) as conn:
        assert conn.get("/a").status == 200
        session = conn.sock.session
    raw = socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        assert s.session_reused
        s.sendall(HEAD_CLOSE)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert plaintext_on_tls_port(cg, 0).startswith(b"HTTP/1.1 400 ")
    t = tls_settled(cg, lambda t: t["handshakes"] == 2 and t["plaintext"] == 1,
                    "two handshakes and a plain request")
    assert t == {"handshakes": 2, "resumed": 1, "failures": 1, "plaintext": 1, "timeouts": 0}
    r = cg.admin("/metrics")
    assert r.status == 200, r
    check = subprocess.run([tool, "check", "metrics"], input=r.body, capture_output=True,
                           timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout.decode(), check.stderr.decode())
    raw_tls = cg.stats()["tls"]
    for k in TLS_KEYS:
        m = re.search(rf"^clonegate_tls_{k}_total (\d+)$", r.text(), re.M)
        assert m and int(m.group(1)) == raw_tls[k], (k, raw_tls, r.text()[-1500:])
        assert f"# TYPE clonegate_tls_{k}_total counter" in r.text(), k


def test_a_client_that_closes_right_after_a_resumed_handshake_counts_a_handshake(
        origins, clonegate, certs):
    """A TLS check (handshake, then close without close_notify, as Python's
    ssl and many probes do) completed its handshake: it is a handshake, not
    a failure. TLS 1.2, where a resumed handshake ends with the client's
    Finished, which then reaches the server together with the FIN."""
    origins(1)
    cg = start(clonegate, certs)
    ctx = client_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    with https(cg, certs, ctx=ctx) as conn:
        assert conn.get("/first").status == 200
        session = conn.sock.session
    n = 20
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", cg.tls_port), timeout=5)
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        assert s.session_reused
        s.close()
    t = tls_settled(cg, lambda t: t["handshakes"] + t["failures"] == n + 1,
                    f"{n + 1} connections counted")
    assert t == {"handshakes": n + 1, "resumed": n, "failures": 0,
                 "plaintext": 0, "timeouts": 0}, t


# ---------------------------------------------------------------------------
# 4. clonegate -t


def test_check_prints_each_certificate_with_days_left_and_fails_on_a_wrong_key(
        origins, clonegate, certs, tmp_path):
    o = origins(1)
    ini = clonegate.ini(overrides={"tls": tls_section(certs)})
    code, out = helpers.clonegate_check(ini, tmp_path)
    assert code == 0, out
    assert re.search(rf"^{re.escape(str(certs.cert))}: localhost, IP:127\.0\.0\.1.*"
                     r"not after .*; 36[45] days left$", out, re.M), out
    assert re.search(rf"^{re.escape(str(certs.other))}: other\.test; .* 36[45] days left$",
                     out, re.M), out
    assert out.rstrip().endswith("configuration ok"), out
    # a key that is not the certificate's
    other_key = make_cert(tmp_path / "k")[1]
    sections = {"tls": dict(tls_section(certs), key=str(other_key))}
    code, out = helpers.clonegate_check(clonegate.ini(overrides=sections), tmp_path)
    assert code == 1, out
    assert "configuration ok" not in out, out
    assert re.search(r"(?i)match", out), out
    # a certificate close to expiry warns but passes
    short = make_cert(tmp_path / "short", days=5)
    sections = {"tls": dict(tls_section(certs), cert=str(short[0]), key=str(short[1]))}
    code, out = helpers.clonegate_check(clonegate.ini(overrides=sections), tmp_path)
    assert code == 0 and re.search(r"[45] days left; warning", out), out
    assert o


# ---------------------------------------------------------------------------
# 5. Bodies and keep-alive over TLS


@pytest.mark.hard_timeout(60)
def test_large_download_and_upload_over_tls_are_intact(origins, clonegate, certs, tmp_path):
    origins(1)
    cg = start(clonegate, certs)
    port = cg.tls_port
    url = f"https://localhost:{port}"
    n = 10 * 1024 * 1024
    for query in ("chunked=1", "chunked=0"):
        out = tmp_path / "download"
        r = curl(certs, "--resolve", f"localhost:{port}:127.0.0.1", "-o", str(out),
                 f"{url}/bytes?n={n}&{query}")
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size == n
        assert helpers.sha256(out.read_bytes()) == helpers.pattern_sha256(n), query
    up = tmp_path / "upload"
    body = helpers.pattern_bytes(5 * 1024 * 1024, offset=7)
    up.write_bytes(body)
    r = curl(certs, "--resolve", f"localhost:{port}:127.0.0.1", "--data-binary", f"@{up}",
             "-H", "Content-Type: application/octet-stream", f"{url}/sink")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"length": len(body), "sha256": helpers.sha256(body)}
    # chunked upload too
    r = curl(certs, "--resolve", f"localhost:{port}:127.0.0.1", "--data-binary", f"@{up}",
             "-H", "Transfer-Encoding: chunked", f"{url}/sink")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"length": len(body), "sha256": helpers.sha256(body)}
    t = tls_settled(cg, lambda t: t["handshakes"] == 4, "four handshakes")
    assert t["failures"] == 0, t


def test_one_hundred_requests_on_one_tls_connection(origins, clonegate, certs):
    origins(1)
    cg = start(clonegate, certs)
    before = cg.stats()
    with https(cg, certs) as conn:
        for i in range(100):
            r = conn.get(f"/ka?i={i}")
            assert r.status == 200 and f"/ka?i={i}".encode() in r.body, (i, r)
        # a pipelined pair as well
        conn.send(helpers.build_request("GET", "/p1") + helpers.build_request("GET", "/p2"))
        assert b"/p1" in conn.read_response().body
        assert b"/p2" in conn.read_response().body
    s = cg.stats()
    assert s["connections"]["total"] - before["connections"]["total"] == 1, s["connections"]
    assert s["tls"]["handshakes"] == 1, s["tls"]


# ---------------------------------------------------------------------------
# 6. TLS to the clones


def tls_origin(world, tmp_path, c, name="tlsorigin", cert=None):
    """An origin.py speaking HTTPS only with <c>'s default certificate."""
    cert = cert or (c.cert, c.key)
    return world.add(helpers.start_origin(name, tmp_path / "origins", tls=cert))


def upstream_tls(**keys):
    return {"upstream": dict({"tls": "yes"}, **keys)}


def by_addr(s):
    return {x["address"]: x for x in s["servers"]}


def test_upstream_tls_serves_passes_checks_and_reuses_connections(clonegate, certs, tmp_path,
                                                                  world):
    o = tls_origin(world, tmp_path, certs)
    ini = dict(BASE, **upstream_tls(tls_ca=str(certs.cert)))
    cg = clonegate(ini, servers=[o])
    n = 30
    with cg.conn() as conn:
        for i in range(n):
            r = conn.get(f"/echo?i={i}")
            assert r.status == 200, r
            assert json.loads(r.body)["target"] == f"/echo?i={i}"
    # separate client connections share the pooled TLS connections too
    for i in range(5):
        assert cg.get(f"/x?i={i}").status == 200
    c = o.counts()
    assert c["paths"]["/echo"] == n, c
    # health checks and traffic: far fewer handshakes than requests
    assert 1 <= c["tls_handshakes"] < n, c
    # checks over TLS keep it up
    s = helpers.wait_for(lambda: (lambda s: s if by_addr(s)[o.addr]["checks_passed"] >= 2
                                  else None)(cg.stats()), timeout=5, what="two passed checks")
    srv = by_addr(s)[o.addr]
    assert srv["up"] and srv["checks_failed"] == 0 and srv["traffic_failures"] == 0, srv
    assert o.count("/health") >= 2
    # the tls figures are about clients of the [tls] listener: none here
    assert s["tls"] == dict.fromkeys(TLS_KEYS, 0), s["tls"]


def test_upstream_tls_with_the_wrong_ca_gets_502_and_the_clone_goes_down(clonegate, certs,
                                                                         tmp_path, world):
    o = tls_origin(world, tmp_path, certs)
    wrong = make_cert(tmp_path / "wrong")[0]
    ini = dict(BASE, **upstream_tls(tls_ca=str(wrong), tls_verify="yes"),
               **{"upstream.retries": 0})
    cg = clonegate(ini, servers=[o])
    cg.allowed_errors.append(UPSTREAM_ERRORS)
    r = cg.get("/x")
    assert r.status in (502, 503), r
    if r.status == 503:  # health was quicker: the clone is already out
        assert not by_addr(cg.stats())[o.addr]["up"]
    helpers.wait_for(lambda: not by_addr(cg.stats())[o.addr]["up"], timeout=5,
                     what="the clone to be marked down")
    srv = by_addr(cg.stats())[o.addr]
    assert srv["checks_passed"] == 0 and srv["checks_failed"] >= 1, srv
    # the operator is told it is the certificate, not the network
    assert srv["last_error"].startswith("TLS certificate check failed"), srv["last_error"]
    assert o.count() == 0  # nothing got past the handshake
    assert cg.get("/y").status == 503


def test_upstream_tls_verify_no_accepts_any_certificate(clonegate, certs, tmp_path, world):
    o = tls_origin(world, tmp_path, certs)
    wrong = make_cert(tmp_path / "wrong")[0]
    ini = dict(BASE, **upstream_tls(tls_ca=str(wrong), tls_verify="no"))
    cg = clonegate(ini, servers=[o])
    for i in range(3):
        r = cg.get(f"/ok?i={i}")
        assert r.status == 200, r
    s = helpers.wait_for(lambda: (lambda s: s if by_addr(s)[o.addr]["checks_passed"] >= 1
                                  else None)(cg.stats()), timeout=5, what="a passed check")
    assert by_addr(s)[o.addr]["up"], s


def test_https_in_front_of_an_https_clone(clonegate, certs, tmp_path, world):
    o = tls_origin(world, tmp_path, certs)
    ini = dict(BASE, tls=tls_section(certs), **upstream_tls(tls_ca=str(certs.cert)))
    cg = with_baseline(clonegate(ini, servers=[o]))
    with https(cg, certs) as conn:
        for i in range(10):
            r = conn.get("/echo")
            assert r.status == 200 and echo_headers(r)["x-forwarded-proto"] == "https", r
    t = tls_settled(cg, lambda t: t["handshakes"] == 1, "one client handshake")
    assert t["failures"] == 0, t


def test_a_tls_connection_idle_past_a_second_gives_back_its_buffers_and_still_serves(
        origins, clonegate, certs):
    # Idle for a second, a TLS connection gives its record buffers back
    # (they are made again by the next request): the second request, and
    # one on each of a batch idle as long, must not notice.
    origins(1)
    cg = start(clonegate, certs)
    with https(cg, certs) as conn:
        assert conn.get("/ka?i=1").status == 200
        batch = [https(cg, certs) for _ in range(20)]
        try:
            for b in batch:
                assert b.get("/batch").status == 200
            time.sleep(1.5)
            r = conn.get("/ka?i=2")
            assert r.status == 200 and b"/ka?i=2" in r.body, r
            for b in batch:
                assert b.get("/batch?again=1").status == 200
            # and idle again, then a pipelined pair
            time.sleep(1.5)
            conn.send(helpers.build_request("GET", "/p1") + helpers.build_request("GET", "/p2"))
            assert b"/p1" in conn.read_response().body
            assert b"/p2" in conn.read_response().body
        finally:
            for b in batch:
                b.close()
    s = cg.stats()
    assert s["tls"]["handshakes"] - cg.tls0["handshakes"] == 21, s["tls"]
    assert s["tls"]["failures"] - cg.tls0["failures"] == 0, s["tls"]


def test_a_connection_quiet_after_its_handshake_has_idle_timeout_not_header_timeout(
        origins, clonegate, certs):
    origins(1)
    cg = start(clonegate, certs, **{"server.header_timeout": "1s", "server.idle_timeout": "10s"})
    raw = socket.create_connection(("127.0.0.1", cg.tls_port), timeout=10)
    with client_context(certs).wrap_socket(raw, server_hostname="localhost") as s:
        time.sleep(2.5)  # past header_timeout, well within idle_timeout
        s.sendall(helpers.build_request("GET", "/echo"))
        data = b""
        while b"\r\n\r\n" not in data:  # bounded by the socket timeout
            piece = s.recv(65536)
            assert piece, "closed after the handshake, before idle_timeout"
            data += piece
    assert data.startswith(b"HTTP/1.1 200"), data[:100]


def test_an_answer_cut_short_ends_without_a_tls_close_notify(clonegate, certs):
    # a close-delimited body cut off by response_timeout: over TLS the only
    # sign of the truncation is the missing close_notify
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []

    def serve():
        srv.settimeout(10)
        for _ in range(10):  # health checks first, then the request
            try:
                s, _ = srv.accept()
            except OSError:
                return
            s.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                piece = s.recv(65536)
                if not piece:
                    break
                data += piece
            if b" /cut " in data:
                s.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"a" * 1000)
                held.append(s)  # then silence, never closed by us until the end
                return
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            s.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        cg = start(clonegate, certs, servers=[f"127.0.0.1:{srv.getsockname()[1]}"],
                   **{"upstream.response_timeout": "1s", "health.interval": "60s"})
        # TLS over memory buffers: every byte the proxy sends is seen, then
        # the TCP end, so the verdict on the TLS end does not depend on timing
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = client_context(certs)
        # a plugin of the test runner may tell OpenSSL to take an unexpected
        # EOF for a clean end: this test is about telling the two apart
        ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        raw = socket.create_connection(("127.0.0.1", cg.tls_port), timeout=10)
        got, end, sent = b"", None, False
        with raw:
            while end is None:  # bounded: the proxy closes after response_timeout
                try:
                    if not tls.server_side and not sent and tls.version():
                        tls.write(helpers.build_request("GET", "/cut"))
                        sent = True
                    if not tls.version():
                        tls.do_handshake()
                    while end is None:
                        piece = tls.read(65536)
                        if not piece:
                            end = "clean close_notify"  # what read() says of one
                        got += piece
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    end = "clean close_notify"
                except ssl.SSLError as e:  # SSLEOFError, or a plain one naming it
                    if not isinstance(e, ssl.SSLEOFError) and "UNEXPECTED_EOF" not in str(e):
                        raise
                    end = "EOF without close_notify"
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                if end is None:
                    data = raw.recv(65536)
                    if data:
                        incoming.write(data)
                    else:
                        incoming.write_eof()
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"a" * 1000), got[:300]
        assert end == "EOF without close_notify", end
    finally:
        srv.close()
        for s in held:
            s.close()
        t.join(10)
