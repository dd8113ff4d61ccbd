"""twistd start-up (tap.py): the database check before the reactor runs,
and the service that starts the server before its listeners."""

from __future__ import annotations

from typing import Iterator

import pytest

from chatbx_server import tap
from chatbx_server.storage import migrate


def fail_message(capsys, url: str) -> str:
    """Run prepare_database expecting a refusal; return its one stderr line."""
    with pytest.raises(SystemExit) as exc:
        tap.prepare_database(url)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("chatbx: error: ")
    return err


def test_fresh_sqlite_is_upgraded(tmp_path):
    """A new SQLite file is created and brought to the head revision."""
    url = f"sqlite:///{tmp_path / 'chatbx.sqlite'}"
    tap.prepare_database(url)
    assert migrate.check(url) == migrate.SchemaState.CURRENT
    tap.prepare_database(url)  # idempotent
    assert migrate.current(url) == migrate.head()


def test_behind_sqlite_is_upgraded(tmp_path, monkeypatch):
    """A SQLite database behind the code is upgraded rather than refused."""
    url = f"sqlite:///{tmp_path / 'chatbx.sqlite'}"
    upgraded: list[str] = []
    monkeypatch.setattr(migrate, "check", lambda u: migrate.SchemaState.BEHIND)
    monkeypatch.setattr(migrate, "upgrade", lambda u: upgraded.append(u))
    tap.prepare_database(url)
    assert upgraded == [url]


@pytest.fixture
def empty_postgres(postgres_admin_engine) -> Iterator[str]:
    """An empty throwaway PostgreSQL database (skipped when none is reachable)."""
    from tests.conftest import _fresh_postgres

    yield from _fresh_postgres(postgres_admin_engine)


def test_empty_postgres_refused(empty_postgres, capsys):
    """PostgreSQL is never migrated at start: an empty one is refused with the command to run."""
    err = fail_message(capsys, empty_postgres)
    assert "run: chatbxctl db upgrade" in err and "no chatbx schema" in err
    assert migrate.check(empty_postgres) == migrate.SchemaState.EMPTY  # untouched


def test_behind_postgres_refused(capsys, monkeypatch):
    """A PostgreSQL schema behind the code is refused with the upgrade command."""
    monkeypatch.setattr(migrate, "check", lambda u: migrate.SchemaState.BEHIND)
    monkeypatch.setattr(migrate, "upgrade", lambda u: pytest.fail("must not migrate PostgreSQL"))
    err = fail_message(capsys, "postgresql://x@127.0.0.1/db")
    assert "behind" in err and "chatbxctl db upgrade" in err


def test_ahead_refused_on_any_backend(capsys, monkeypatch, tmp_path):
    """A schema newer than the code is refused, SQLite included (never downgraded)."""
    monkeypatch.setattr(migrate, "check", lambda u: migrate.SchemaState.AHEAD)
    monkeypatch.setattr(migrate, "current", lambda u: "f00d")
    monkeypatch.setattr(migrate, "upgrade", lambda u: pytest.fail("must not migrate"))
    err = fail_message(capsys, f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert "f00d" in err and "upgrade chatbx" in err


def test_unreachable_database(capsys):
    """A database that cannot be reached gives one line, not a traceback."""
    err = fail_message(capsys, "postgresql://postgres@127.0.0.1:1/none")
    assert "cannot use the database" in err


def test_service_starts_server_before_listeners_and_stops_after():
    """ChatbxService starts the server, then children; stops children, then the server."""
    from twisted.application import service

    order: list[str] = []

    class FakeServer:
        def start(self):
            order.append("server start")

        def stop(self):
            order.append("server stop")

    class Child(service.Service):
        def startService(self):
            order.append("listener start")
            super().startService()

        def stopService(self):
            order.append("listener stop")
            return super().stopService()

    top = tap.ChatbxService(FakeServer())
    Child().setServiceParent(top)
    top.startService()
    top.stopService()
    assert order == ["server start", "listener start", "listener stop", "server stop"]


class _Reactor:
    """Queues callFromThread calls; run() runs them like the reactor's next turn."""

    def __init__(self) -> None:
        self.calls: list = []

    def callFromThread(self, f, *args, **kwargs):  # noqa: N802
        self.calls.append((f, args, kwargs))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, args, kwargs in calls:
            f(*args, **kwargs)


class _Server:
    def start(self):
        pass

    def stop(self):
        pass


class _TLS:
    domains = ("localhost",)

    def __init__(self, error=None) -> None:
        self.reloads = 0
        self.error = error

    def reload(self) -> None:
        self.reloads += 1
        if self.error is not None:
            raise self.error


@pytest.fixture
def capture_logs():
    """The log events published while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def hup_guard():
    """A SIGHUP handler of the test's own, so a missing chatbx handler cannot
    let SIGHUP kill the test process; restored afterwards."""
    import signal

    seen: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGHUP, previous)


def _logged(events: list, text: str) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events if text in formatEvent(e)]


def test_sighup_reloads_certificates(hup_guard, capture_logs):
    """While the service runs, SIGHUP reloads the TLS contexts on the reactor's
    turn and logs one line; after stopService the previous handler is back."""
    import os
    import signal

    reactor, tls = _Reactor(), _TLS()
    top = tap.ChatbxService(_Server(), tls, reactor)
    top.startService()
    os.kill(os.getpid(), signal.SIGHUP)
    assert hup_guard == [] and tls.reloads == 0  # not inside the signal handler
    reactor.run()
    assert tls.reloads == 1
    assert len(_logged(capture_logs, "TLS certificates reloaded for localhost")) == 1
    top.stopService()
    os.kill(os.getpid(), signal.SIGHUP)
    assert hup_guard == [signal.SIGHUP] and reactor.calls == []


def test_sighup_reload_error_keeps_running(capture_logs):
    """A reload that fails (bad new certificate) logs the error, saying the
    old certificates stay, and raises nothing into the reactor."""
    from chatbx_server.tls import CertificateError

    tls = _TLS(CertificateError("cannot load certificate /x.crt", 'tls.domains."localhost"'))
    top = tap.ChatbxService(_Server(), tls, _Reactor())
    assert top.reload_tls() is False
    (line,) = _logged(capture_logs, "not reloaded")
    assert "keeping the old ones" in line and "/x.crt" in line


def test_freeze_heap_freezes_what_is_alive_and_collects_garbage_first():
    """freeze_heap() puts the live heap in the permanent generation (full
    collections skip it) after collecting garbage, so no cycle is kept for good."""
    import gc
    import weakref

    class Node:
        pass

    garbage = Node()
    garbage.self = garbage  # a cycle only the collector frees
    probe = weakref.ref(garbage)
    del garbage
    gc.unfreeze()
    try:
        tap.freeze_heap()
        assert probe() is None
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
