"""The command line (INTERFACE.md "Command line"): -t, -V, -h, usage errors,
and start-up failures that must end the process with a clear message
instead of a hang."""

import re
import socket
import subprocess

import pytest

import helpers

CLI_TIMEOUT = 10  # s any of these invocations may take
EXIT_TIMEOUT = 5  # s a failing start may take to exit

SHIPPED_INIS = sorted(
    p for d in ("config", "examples") for p in (helpers.REPO / d).glob("*.ini")
)


def run(*args, timeout=CLI_TIMEOUT):
    """Runs clonegate with <args>; returns (exit code, stdout, stderr)."""
    r = subprocess.run(
        [helpers.CLONEGATE, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
        cwd=str(helpers.REPO),
    )
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def test_shipped_inis_exist():
    names = {p.name for p in SHIPPED_INIS}
    assert "clonegate.ini" in names and "clonegate-minimal.ini" in names, names


@pytest.mark.parametrize("ini", SHIPPED_INIS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_check_shipped_ini_is_ok(ini):
    code, out, err = run("-t", "-c", ini)
    assert code == 0, (out, err)
    assert "configuration ok" in out + err, (out, err)


def test_check_refuses_an_access_log_the_start_could_not_open(tmp_path):
    """-t says what the start would fail on: an access log in a directory
    that is not there. A writable one passes, and -t creates no file."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[server]\naccess_log = " + str(tmp_path / "missing" / "a.log") +
                   "\n[upstream]\nservers = 127.0.0.1:9001\n")
    code, out, err = run("-t", "-c", bad)
    assert code == 1, (out, err)
    assert "access_log" in err and "missing" in err and "configuration ok" not in out, (out, err)
    good = tmp_path / "good.ini"
    good.write_text("[server]\naccess_log = " + str(tmp_path / "a.log") +
                    "\n[upstream]\nservers = 127.0.0.1:9001\n")
    code, out, err = run("-t", "-c", good)
    assert code == 0 and "configuration ok" in out, (out, err)
    assert not (tmp_path / "a.log").exists()


def test_check_prints_every_error_with_file_and_line(tmp_path):
    ini = tmp_path / "broken.ini"
    # One error on each marked line; the good lines between them must not
    # stop the parser from reaching the later ones.
    ini.write_text(
        "[server]\n"  # 1
        "listen = 127.0.0.1:8080\n"  # 2
        "workers = banana\n"  # 3: bad number
        "no_such_key = 1\n"  # 4: unknown key
        "idle_timeout = 5 parsecs\n"  # 5: bad duration
        "\n"  # 6
        "[upstream]\n"  # 7
        "servers = 127.0.0.1:9001\n"  # 8
        "retries = -3\n"  # 9: bad number
        "[cache]\n"  # 10
        "enabled = perhaps\n"  # 11: bad boolean
        "[no_such_section]\n"  # 12: unknown section
    )
    code, out, err = run("-t", "-c", ini)
    text = out + err
    assert code == 1, text
    assert "configuration ok" not in text
    expected = {3: "workers", 4: "no_such_key", 5: "idle_timeout", 9: "retries",
                11: "enabled", 12: "no_such_section"}
    found = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(str(ini))}:(\d+): (.*)$", line)
        if m:
            found[int(m.group(1))] = m.group(2)
    assert set(found) == set(expected), text
    for lineno, name in expected.items():
        assert name in found[lineno], (lineno, found[lineno])


def test_check_prints_every_bad_server_of_one_line(tmp_path):
    ini = tmp_path / "servers.ini"
    ini.write_text(
        "[upstream]\n"  # 1
        "servers = 127.0.0.1:9001 weight=0, 127.0.0.1:9002 weight=257,\n"  # 2: two errors
        "  127.0.0.1:9003, 127.0.0.1:9004 weight=x\n"  # 3: one error
    )
    code, out, err = run("-t", "-c", ini)
    text = out + err
    assert code == 1, text
    assert re.findall(rf"(?m)^{re.escape(str(ini))}:(\d+): \[upstream\] servers: (.*)$", text) == [
        ("2", "bad weight '0' (1..256)"),
        ("2", "bad weight '257' (1..256)"),
        ("3", "bad weight 'x' (1..256)"),
    ], text
    assert "configuration ok" not in text


def test_version_names_every_library():
    code, out, err = run("-V")
    assert code == 0, err
    for name in ("clonegate", "libevent", "openssl", "hiredis", "llhttp"):
        assert re.search(rf"(?im)^{name}\b.*\d+\.\d+", out), f"no {name} version in:\n{out}"


def test_help_prints_usage_and_exits_0():
    code, out, err = run("-h")
    assert code == 0, err
    assert "usage" in out.lower()
    for flag in ("-c", "-t", "-V"):
        assert flag in out, out


def test_no_arguments_is_a_usage_error():
    code, out, err = run()
    assert code == 2, (out, err)
    assert "usage" in (out + err).lower()


def test_a_usage_error_says_what_is_wrong(tmp_path):
    code, out, err = run("-t")
    assert code == 2 and "no configuration file" in err, (out, err)
    ini = tmp_path / "a.ini"
    ini.write_text("[upstream]\nservers = 127.0.0.1:9001\n")
    code, out, err = run("-t", "-c", ini, "extra")
    assert code == 2 and "unexpected argument: extra" in err, (out, err)


def test_unknown_option_is_a_usage_error():
    code, out, err = run("-Z")
    assert code == 2, (out, err)
    assert "usage" in (out + err).lower()


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_repeated_config_option_is_a_usage_error(tmp_path, check):
    # Two good files: neither may be picked silently, for a check or a run.
    a, b = tmp_path / "a.ini", tmp_path / "b.ini"
    for ini, server in ((a, 9001), (b, 9002)):
        # a free port: without the check, the run case would start serving
        ini.write_text(f"[server]\nlisten = 127.0.0.1:{helpers.free_port()}\n"
                       f"[upstream]\nservers = 127.0.0.1:{server}\n")
    args = ["-c", a, "-c", b]
    code, out, err = run(*(["-t"] + args if check else args))
    assert code == 2, (out, err)
    assert "usage" in err.lower(), err
    assert re.search(r"-c .*more than once", err), err
    assert "configuration ok" not in out + err


@pytest.mark.parametrize("check", [True, False], ids=["check", "run"])
def test_missing_config_file_exits_1_with_message(tmp_path, check):
    missing = tmp_path / "does-not-exist.ini"
    args = ["-t", "-c", missing] if check else ["-c", missing]
    code, out, err = run(*args)
    text = out + err
    assert code == 1, text
    assert str(missing) in text, text
    assert re.search(r"(?i)no such file|cannot open|not found", text), text
    assert "configuration ok" not in text


def test_port_in_use_exits_with_clear_error(clonegate, origins):
    (o,) = origins(1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        # No SO_REUSEPORT here: nobody else may bind this port.
        holder.bind(("127.0.0.1", 0))
        holder.listen(16)
        port = holder.getsockname()[1]
        cg = clonegate({"server.listen": f"127.0.0.1:{port}"}, servers=[o], wait=False)
        code = cg.proc.wait(EXIT_TIMEOUT)
        text = cg.stderr_text()
        assert code is not None, f"clonegate still runs {EXIT_TIMEOUT} s after a failed bind:\n{text}"
        assert code != 0, text
        assert f"127.0.0.1:{port}" in text, text
        assert re.search(r"(?i)address already in use|in use", text), text
    # Its error lines are the point of this test.
    cg.expected_exit = None
    cg.allowed_errors.append(r".")
