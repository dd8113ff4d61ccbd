"""Fixtures that run the real server: ``twistd -n --pidfile= chatbx --config FILE``.

``chatbx_server`` is a factory: each call writes a config into the test's
tmp_path with free loopback ports, creates the accounts with ``chatbxctl``
(after ``chatbxctl db upgrade`` on PostgreSQL), starts twistd in its own
process group with its output in a log file, and waits (bounded) until
both client ports accept connections. Every server a test started is
stopped at teardown by its PID (SIGTERM, SIGKILL after a bounded wait);
when the test failed, the server log is attached to the report.

``backend`` parametrizes over SQLite (the default database in data_dir)
and a throwaway PostgreSQL database, created on the server the storage
tests use (``postgres_admin_engine`` in tests/conftest.py) and skipped the
same way when it is unreachable — except under CI or
CHATBX_REQUIRE_POSTGRES=1, where that fails.

``slix_login`` connects a slixmpp client the way a user's app does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # rawclient, importable from the test modules

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DEFAULT_PASSWORDS = {"alice@localhost": "alice-pw", "bob@localhost": "bob-pw", "carol@localhost": "carol-pw"}


def _script(name: str) -> str:
    """The console script installed beside this Python (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (pip install -e .)")
    return found


def free_port() -> int:
    """A currently free loopback port (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class ChatbxServer:
    """One twistd process and everything needed to restart it."""

    root: Path
    db_url: Optional[str]
    users: dict[str, str]
    extra_config: str = ""
    modules: Optional[list[str]] = None
    #: hosted domains (default: localhost)
    domains: Optional[list[str]] = None
    #: s2s listener port: None = off, 0 = a free port picked at prepare()
    s2s_port: Optional[int] = None
    #: direct-TLS s2s listener port (XEP-0368): None = off
    s2s_tls_port: Optional[int] = None
    #: SOCKS5 proxy listener port (XEP-0065): None = off, 0 = a free port picked at prepare()
    proxy_port: Optional[int] = None
    c2s_port: int = 0
    c2s_tls_port: int = 0
    http_port: int = 0
    proc: Optional[subprocess.Popen] = None
    starts: int = 0
    log_paths: list[Path] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "chatbx.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_config(self) -> None:
        self.c2s_port = free_port()
        self.c2s_tls_port = free_port()
        self.http_port = free_port()
        domains = self.domains or ["localhost"]
        if self.s2s_port == 0:
            self.s2s_port = free_port()
        if self.proxy_port == 0:
            self.proxy_port = free_port()
        lines = ["domains = [" + ", ".join(f'"{d}"' for d in domains) + "]",
                 f'data_dir = "{self.data_dir}"']
        if self.modules is not None:
            lines.append("modules = [" + ", ".join(f'"{m}"' for m in self.modules) + "]")
        if self.db_url:
            lines += ["[database]", f'url = "{self.db_url}"']
        lines += ["[listen]", f'c2s = "127.0.0.1:{self.c2s_port}"', f'c2s_tls = "127.0.0.1:{self.c2s_tls_port}"',
                  f'http = "127.0.0.1:{self.http_port}"']
        if self.s2s_port is not None:
            lines.append(f's2s = "127.0.0.1:{self.s2s_port}"')
        if self.s2s_tls_port is not None:
            lines.append(f's2s_tls = "127.0.0.1:{self.s2s_tls_port}"')
        if self.proxy_port is not None:
            lines.append(f'proxy = "127.0.0.1:{self.proxy_port}"')
        extra = self.extra_config.strip()
        if "[limits]" not in extra:
            # Many tests fail logins on purpose from 127.0.0.1: no refusals.
            lines += ["[limits]", "auth_failure_delay = 0.3", "max_stanza_size = 65536",
                      "auth_max_failures = 1000"]
        lines += ["[log]", 'level = "debug"']
        if extra:
            lines.append(extra)
        self.config_path.write_text("\n".join(lines) + "\n")

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run chatbxctl on this server's config; a failure fails the test."""
        result = subprocess.run([_script("chatbxctl"), "--config", str(self.config_path), *args],
                                capture_output=True, text=True, timeout=60, cwd=self.root)
        if result.returncode != 0:
            pytest.fail(f"chatbxctl {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stdout}{result.stderr}")
        return result

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        if self.db_url:
            self.ctl("db", "upgrade")
        if self.users:
            users_file = self.root / "users.txt"
            users_file.write_text("".join(f"{jid} {pw}\n" for jid, pw in self.users.items()))
            self.ctl("user", "add", "--from-file", str(users_file))

    def start(self) -> None:
        """Start twistd and wait until both client ports answer."""
        assert self.proc is None
        self.starts += 1
        log_path = self.root / f"server-{self.starts}.log"
        self.log_paths.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [_script("twistd"), "-n", "--pidfile=", "chatbx", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                pytest.fail(f"chatbx exited with {code} while starting:\n{self.log_text()}")
            if _port_open(self.c2s_port) and _port_open(self.c2s_tls_port) and _port_open(self.http_port):
                return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"chatbx did not listen within {START_TIMEOUT}s:\n{self.log_text()}")
            time.sleep(0.05)  # polling the port, bounded by the deadline

    def stop(self) -> None:
        """SIGTERM the process, SIGKILL its group after a bounded wait."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop and start again on the same data (ports are kept)."""
        self.stop()
        self.start()

    @property
    def certificate(self) -> Path:
        """The generated self-signed certificate of localhost (HTTPS clients trust it)."""
        return self.data_dir / "certs" / "localhost.crt"

    def log_text(self) -> str:
        out = []
        for path in self.log_paths:
            if path.exists():
                out.append(f"--- {path.name} ---\n" + path.read_text(errors="replace"))
        return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Attach the logs of the servers a failed test started to its report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.parent is not None:
        item.parent._chatbx_failed_step = item.name  # read by the ``steps`` fixture
    servers = getattr(item, "_chatbx_servers", None)
    if report.failed and servers:
        for i, server in enumerate(servers):
            report.sections.append((f"chatbx server {i} log", server.log_text()[-20000:]))


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[Optional[str]]:
    """None for SQLite (the default database in data_dir), or the URL of a
    throwaway PostgreSQL database dropped afterwards (tests/conftest.py)."""
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("postgres_url")


def _factory(root: Path, servers: list[ChatbxServer]) -> Callable[..., ChatbxServer]:
    def start(db_url: Optional[str] = None, users: Optional[dict[str, str]] = None,
              extra_config: str = "", modules: Optional[list[str]] = None,
              domains: Optional[list[str]] = None, s2s_port: Optional[int] = None,
              s2s_tls_port: Optional[int] = None, started: bool = True,
              proxy_port: Optional[int] = None) -> ChatbxServer:
        server = ChatbxServer(root / f"server{len(servers)}", db_url,
                              dict(DEFAULT_PASSWORDS if users is None else users), extra_config, modules,
                              domains, s2s_port, s2s_tls_port, proxy_port)
        servers.append(server)
        server.prepare()
        if started:
            server.start()
        return server

    return start


@pytest.fixture
def chatbx_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ChatbxServer]]:
    """Factory: ``chatbx_server(db_url=None, users=None, extra_config="", modules=None,
    domains=None, s2s_port=None, s2s_tls_port=None, started=True, proxy_port=None)`` starts a server (or only prepares
    it, ``started=False``) and returns its ChatbxServer; all are stopped at teardown.
    ``extra_config`` is TOML tables appended to the config (a ``[limits]``
    table there replaces the test default)."""
    servers: list[ChatbxServer] = []
    request.node._chatbx_servers = servers
    try:
        yield _factory(tmp_path, servers)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatbxServer]:
    servers: list[ChatbxServer] = []
    try:
        yield _factory(tmp_path_factory.mktemp("chatbx"), servers)(
            extra_config="[limits]\nauth_failure_delay = 0.01\nmax_stanza_size = 65536\n"
                         "auth_max_failures = 1000")
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def shared_server(request: pytest.FixtureRequest, _module_server: ChatbxServer) -> ChatbxServer:
    """One SQLite server for all tests of a module that leave no state
    behind (logins, attacks on their own connections): it saves a start
    per test. Its failed-login delay is tiny so that failures in one test
    do not slow the next; tests of the delay start their own server."""
    request.node._chatbx_servers = [_module_server]
    assert _module_server.proc is not None and _module_server.proc.poll() is None, "shared server died"
    return _module_server


@pytest.fixture(scope="class")
def _class_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatbxServer]:
    servers: list[ChatbxServer] = []
    try:
        yield _factory(tmp_path_factory.mktemp("chatbx"), servers)()
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def class_server(request: pytest.FixtureRequest, _class_server: ChatbxServer) -> ChatbxServer:
    """One default SQLite server for all tests of a class whose tests are
    the steps of one scenario (see ``steps``); its log is attached to a
    failed step's report."""
    request.node._chatbx_servers = [_class_server]
    assert _class_server.proc is not None and _class_server.proc.poll() is None, "class server died"
    return _class_server


@pytest.fixture
def steps(request: pytest.FixtureRequest) -> None:
    """For a class whose tests are steps of one scenario, each building on
    the one before (in file order): once a step failed, the later steps
    of the class are skipped instead of failing again on its leftovers."""
    failed = getattr(request.node.parent, "_chatbx_failed_step", None)
    if failed is not None:
        pytest.skip(f"an earlier step failed: {failed}")


# -- slixmpp -------------------------------------------------------------------

CLIENT_TIMEOUT = 10.0


def make_slix(jid: str, password: str, sasl_mech: Optional[str] = None) -> Any:
    import slixmpp

    client = slixmpp.ClientXMPP(jid, password, sasl_mech=sasl_mech)
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE
    client.enable_plaintext = False
    client.register_plugin("xep_0203")  # delayed delivery, parsed on messages
    return client


async def slix_login(server: ChatbxServer, jid: str, password: Optional[str] = None,
                     sasl_mech: Optional[str] = None, direct_tls: bool = False,
                     timeout: float = CLIENT_TIMEOUT) -> Any:
    """A slixmpp client logged in and bound (session_start), or AssertionError
    with the reason. The caller sends presence / fetches the roster itself."""
    if password is None:
        password = server.users[jid.split("/")[0]]
    client = make_slix(jid, password, sasl_mech)
    client.enable_direct_tls = direct_tls
    client.enable_starttls = not direct_tls
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()

    def done(result: Any) -> None:
        if not started.done():
            started.set_result(result)

    client.add_event_handler("session_start", lambda _: done("ok"))
    client.add_event_handler("failed_all_auth", lambda _: done("failed_all_auth"))
    client.add_event_handler("failed_auth", lambda _: done("failed_auth"))
    client.add_event_handler("connection_failed", lambda e: done(f"connection_failed: {e}"))
    client.add_event_handler("stream_error", lambda e: done(f"stream_error: {e}"))
    client.connect("127.0.0.1", server.c2s_tls_port if direct_tls else server.c2s_port)
    try:
        result = await asyncio.wait_for(started, timeout)
    except asyncio.TimeoutError:
        result = "timeout"
    if result != "ok":
        await slix_close(client)
        raise AssertionError(f"{jid} could not log in: {result}")
    return client


async def slix_close(client: Any) -> None:
    """Disconnect without waiting long for the server's close."""
    try:
        await asyncio.wait_for(client.disconnect(wait=0.5), 3)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - teardown
        client.abort()


def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run a test coroutine with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Inbox:
    """Collects one client's incoming stanzas of a kind; wait() for a match."""

    def __init__(self, client: Any, event: str) -> None:
        self.items: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], asyncio.Future]] = []
        client.add_event_handler(event, self._on)

    def _on(self, stanza: Any) -> None:
        self.items.append(stanza)
        for match, fut in list(self._waiters):
            if not fut.done() and match(stanza):
                fut.set_result(stanza)

    async def wait(self, match: Callable[[Any], bool], timeout: float = CLIENT_TIMEOUT,
                   what: str = "a stanza") -> Any:
        for stanza in self.items:
            if match(stanza):
                return stanza
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((match, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {[str(s) for s in self.items]}") from None

    async def none(self, match: Callable[[Any], bool], within: float) -> None:
        """Assert that nothing matching arrives within ``within`` seconds."""
        try:
            got = await self.wait(match, within)
        except AssertionError:
            return
        raise AssertionError(f"unexpected stanza: {got}")


async def roster_items(client: Any) -> dict[str, dict[str, Any]]:
    """The account's roster as the server returns it to a fresh roster get:
    bare JID -> {subscription, ask, name, groups}."""
    iq = client.Iq()
    iq["type"] = "get"
    iq.enable("roster")
    result = await iq.send(timeout=CLIENT_TIMEOUT)
    items = {}
    for item in result.xml.iter("{jabber:iq:roster}item"):
        items[item.get("jid")] = {
            "subscription": item.get("subscription", "none"),
            "ask": item.get("ask"),
            "name": item.get("name"),
            "groups": sorted(g.text or "" for g in item.iter("{jabber:iq:roster}group")),
        }
    return items


def manual_subscriptions(client: Any) -> None:
    """Turn off slixmpp's automatic answers to subscription requests, so the
    test itself sends every subscribe/subscribed (as a user would click)."""
    client.roster.auto_authorize = None  # None = ask the app; False would auto-reject
    client.roster.auto_subscribe = False


async def subscribe_mutually(a: Any, a_presence: "Inbox", b: Any, b_presence: "Inbox") -> None:
    """RFC 6121 §3: a adds b and asks, b approves and asks back, a approves.
    ``*_presence`` are Inboxes on the 'presence' event of each client."""
    a_bare, b_bare = a.boundjid.bare, b.boundjid.bare
    await a.update_roster(b_bare, name="B", groups=["Friends"])
    a.send_presence_subscription(pto=b_bare, ptype="subscribe")
    await b_presence.wait(lambda p: p["type"] == "subscribe" and p["from"].bare == a_bare,
                          what=f"subscribe from {a_bare}")
    b.send_presence_subscription(pto=a_bare, ptype="subscribed")
    b.send_presence_subscription(pto=a_bare, ptype="subscribe")
    await a_presence.wait(lambda p: p["type"] == "subscribed" and p["from"].bare == b_bare,
                          what=f"subscribed from {b_bare}")
    await a_presence.wait(lambda p: p["type"] == "subscribe" and p["from"].bare == b_bare,
                          what=f"subscribe from {b_bare}")
    a.send_presence_subscription(pto=b_bare, ptype="subscribed")
    await b_presence.wait(lambda p: p["type"] == "subscribed" and p["from"].bare == a_bare,
                          what=f"subscribed from {a_bare}")
