"""Fixtures for the integration tests.

Each test declares its world and gets fresh processes on free loopback ports,
stopped by PID in teardown:

    def test_x(origins, clonegate, redis):
        o1, o2 = origins(2)
        cg = clonegate({"cache.enabled": "no"}, redis=redis)
        r = cg.get("/echo")

A hard time limit (SIGALRM) bounds every test, its set-up and teardown
included: 120 s, or @pytest.mark.hard_timeout(N), or env
CLONEGATE_TEST_TIMEOUT.
"""

import os
import signal

import pytest

import helpers

HARD_TIMEOUT = int(os.environ.get("CLONEGATE_TEST_TIMEOUT", "120"))  # s per test
TEARDOWN_GRACE = 30  # s teardown may still take once the limit has struck


class HardTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so no `except Exception` in the
    code under the test swallows it."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "hard_timeout(seconds): hard time limit for one test (default 120 s)"
    )


def pytest_sessionfinish(session, exitstatus):
    # Whatever a struck time limit left running.
    helpers.stop_all()


class World:
    """The helper processes of one test. They are stopped after every
    fixture's own teardown, so a clonegate is always stopped (and its log
    checked) before the origins and the Redis it talks to, whatever the
    order in which the test asked for the fixtures."""

    def __init__(self):
        self.servers = []  # anything with .stop(), stopped in reverse order

    def add(self, server):
        self.servers.append(server)
        return server

    def stop_all(self):
        for s in reversed(self.servers):
            s.stop()


@pytest.fixture(autouse=True)
def world(request):
    """Arms the hard time limit, and stops the test's helper processes last."""
    marker = request.node.get_closest_marker("hard_timeout")
    seconds = int(marker.args[0]) if marker else HARD_TIMEOUT

    def on_alarm(signum, frame):
        signal.alarm(TEARDOWN_GRACE)  # bound the teardown that follows too
        raise HardTimeout(f"{request.node.nodeid} exceeded its hard time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    w = World()
    try:
        yield w
    finally:
        try:
            w.stop_all()
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def redis(tmp_path, world):
    """A fresh redis-server (no persistence) on a free port: .port .addr
    .command(*args) .proc .kill9() .restart()."""
    return world.add(helpers.start_redis(tmp_path / "redis"))


class _Factory:
    """Starts processes on demand, remembers them, stops them in teardown."""

    def __init__(self, start, log_dir, prefix, world):
        self._start = start
        self.world = world
        self.log_dir = log_dir
        self.prefix = prefix
        self.all = []  # every one started in this test, in order

    def __call__(self, n=2, names=None, host="127.0.0.1"):
        if names is None:
            first = len(self.all) + 1
            names = [f"{self.prefix}{i}" for i in range(first, first + n)]
        new = [self.world.add(self._start(name, self.log_dir, host=host)) for name in names]
        self.all.extend(new)
        return new


@pytest.fixture
def origins(tmp_path, world):
    """origins(n=2, names=None, host="127.0.0.1") -> [Origin]: origin.py
    processes named origin1, origin2... (.port .name .addr .proc .kill9()
    .restart() .count(path) .set_health(up) .get(target))."""
    return _Factory(helpers.start_origin, tmp_path / "origins", "origin", world)


@pytest.fixture
def democlones(tmp_path, world):
    """democlones(n=2, names=None, host="127.0.0.1") -> [Server]: build/democlone
    processes named clone1, clone2... (.port .name .addr .proc .kill9() .restart())."""
    return _Factory(helpers.start_democlone, tmp_path / "democlones", "clone", world)


def default_sections(servers, redis=None):
    """The default test ini as {section: {key: value}}: a free listen port, one
    worker, access log on stderr, quick health checks, the in-process cache
    (plus <redis> when given), an admin listener on a free port."""
    return {
        "server": {
            "listen": f"127.0.0.1:{helpers.free_port()}",
            "workers": 1,
            "access_log": "stderr",
            "drain_timeout": "2s",
        },
        "upstream": {
            "servers": ", ".join(s if isinstance(s, str) else s.addr for s in servers),
        },
        "health": {
            "path": "/health",
            "interval": "500ms",
            "timeout": "250ms",
        },
        "cache": {
            "enabled": "yes",
            "redis": redis.addr if redis is not None else "",
        },
        "stats": {
            "listen": f"127.0.0.1:{helpers.free_port()}",
        },
    }


def apply_overrides(sections, overrides):
    """Merges <overrides> into <sections>: {"section.key": value} or
    {"section": {"key": value}}; a None value removes the key (or, for a
    whole section, the section)."""
    for key, value in (overrides or {}).items():
        if "." in key:
            section, name = key.split(".", 1)
            keys = sections.setdefault(section, {})
            if value is None:
                keys.pop(name, None)
            else:
                keys[name] = value
        elif value is None:
            sections.pop(key, None)
        else:
            keys = sections.setdefault(key, {})
            for name, v in value.items():
                if v is None:
                    keys.pop(name, None)
                else:
                    keys[name] = v
    return sections


class _ClonegateFactory:
    def __init__(self, tmp_path, origins, world):
        self.tmp_path = tmp_path
        self.origins = origins
        self.world = world
        self.all = []

    def ini(self, servers=None, redis=None, overrides=None):
        """The default ini text (see default_sections) with <overrides>.
        <servers>: Origin/Server objects or "host:port" strings; default the
        origins this test started, or two new ones."""
        if servers is None:
            servers = self.origins.all or self.origins(2)
        return helpers.render_ini(apply_overrides(default_sections(servers, redis), overrides))

    def __call__(self, ini=None, servers=None, redis=None, wait=True, args=()):
        """Starts clonegate on <ini>: ini text, or a dict of overrides to the
        default ini, or None for the default. Waits for its client listeners."""
        if ini is None or isinstance(ini, dict):
            ini = self.ini(servers, redis, ini)
        n = len(self.all) + 1
        cg = helpers.start_clonegate(
            ini, self.tmp_path / f"clonegate{n}", name=f"clonegate{n}", wait=False, args=args
        )
        self.all.append(cg)
        self.world.add(cg)  # a safety net only: teardown() stops it first
        if wait:
            cg.wait_ready()
        return cg

    def teardown(self):
        problems = []
        for cg in self.all:
            cg.stop()
            problems += cg.check_log()
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def clonegate(tmp_path, origins, world):
    """clonegate(ini=None, servers=None, redis=None, wait=True, args=()) ->
    Clonegate. clonegate.ini(servers, redis, overrides) gives the default ini
    text. Teardown stops each instance and fails the test on sanitizer
    reports, unexpected error lines (allow some with
    cg.allowed_errors.append(regex)) or an exit status other than
    cg.expected_exit (0; None for any)."""
    f = _ClonegateFactory(tmp_path, origins, world)
    yield f
    f.teardown()
