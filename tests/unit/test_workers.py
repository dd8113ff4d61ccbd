"""``[cluster] workers = N`` (chatbx_server/cluster/workers.py): the config
checks, the parent's supervision of its workers on a fake clock with fake
processes, and the workers' adoption of the inherited sockets."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from chatbx_server import tap
from chatbx_server.cluster import workers as w
from chatbx_server.config import ConfigError, Endpoint, ListenConfig, load_config

PG = 'url = "postgresql://postgres@127.0.0.1:5432/chatbx"'
REDIS = 'redis = "redis://127.0.0.1:7000/0"'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chatbx.toml"
    path.write_text(text)
    return str(path)


# -- config -------------------------------------------------------------------------------

def test_workers_default_to_one_and_need_nothing_more(tmp_path: Path) -> None:
    """Without the key a [cluster] node is one process (today's behaviour),
    also on SQLite and with the default Redis."""
    config = load_config(write(tmp_path, '[cluster]\nnode = "a"\n'))
    assert config.cluster is not None and config.cluster.workers == 1


def test_workers_with_redis_and_postgresql_are_accepted(tmp_path: Path) -> None:
    """workers = 4 with a named Redis and PostgreSQL loads."""
    config = load_config(write(tmp_path, f"[database]\n{PG}\n[cluster]\n{REDIS}\nworkers = 4\n"))
    assert config.cluster is not None and config.cluster.workers == 4


@pytest.mark.parametrize("text, message", [
    (f"[database]\n{PG}\n[cluster]\nworkers = 2\n", "set cluster.redis"),
    (f"[cluster]\n{REDIS}\nworkers = 2\n", "need PostgreSQL"),
    (f'[database]\nurl = "sqlite:///x.sqlite"\n[cluster]\n{REDIS}\nworkers = 2\n', "need PostgreSQL"),
    (f"[database]\n{PG}\n[cluster]\n{REDIS}\nworkers = 0\n", "between 1 and 64"),
    (f"[database]\n{PG}\n[cluster]\n{REDIS}\nworkers = 65\n", "between 1 and 64"),
    (f"[database]\n{PG}\n[listen]\nproxy = '127.0.0.1:7777'\n[cluster]\n{REDIS}\nworkers = 2\n",
     "SOCKS5 proxy"),
])
def test_workers_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    """Several workers without an explicit Redis, on SQLite (several
    writing processes), out of range or with the one-process SOCKS5 proxy
    are refused with one line naming cluster.workers."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cluster.workers: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_twistd_refuses_workers_on_sqlite_with_one_line(tmp_path: Path, capsys: Any) -> None:
    """``twistd chatbx`` with workers = 2 on SQLite exits 1 with one line
    on stderr, before anything is started."""
    options = tap.Options()
    options.parseOptions(["--config", write(tmp_path, f"[cluster]\n{REDIS}\nworkers = 2\n")])
    with pytest.raises(SystemExit) as exc:
        tap.makeService(options)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chatbx: error: ") and "PostgreSQL" in err


def test_worker_options_go_together() -> None:
    """--worker-node without --inherit (or the reverse) is a usage error."""
    from twisted.python import usage

    with pytest.raises(usage.UsageError):
        tap.Options().parseOptions(["--worker-node", "a-w0"])


# -- sockets --------------------------------------------------------------------------------

def test_bind_listeners_and_inherit_spec() -> None:
    """The parent binds each configured listener once; the --inherit spec
    round-trips; a bad spec is refused."""
    listen = ListenConfig(c2s=Endpoint("127.0.0.1", 0), c2s_tls=None, http=Endpoint("127.0.0.1", 0))
    sockets = w.bind_listeners(listen)
    try:
        assert list(sockets) == ["c2s", "http"]
        for sock in sockets.values():
            assert not sock.getblocking()
            socket.create_connection(sock.getsockname(), timeout=5).close()  # in the backlog
        fds = {name: sock.fileno() for name, sock in sockets.items()}
        assert w.parse_inherit(w.format_inherit(fds)) == fds
    finally:
        for sock in sockets.values():
            sock.close()
    for bad in ("c2s", "nope=3", "c2s=x"):
        with pytest.raises(ValueError):
            w.parse_inherit(bad)


def test_bind_listeners_names_the_busy_listener() -> None:
    """A port in use: OSError naming the listener; nothing stays bound."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        listen = ListenConfig(c2s=Endpoint("127.0.0.1", 0), c2s_tls=Endpoint("127.0.0.1", port))
        with pytest.raises(OSError) as info:
            w.bind_listeners(listen)
        assert info.value.filename == f"listen.c2s_tls 127.0.0.1:{port}"


def test_worker_adopts_its_inherited_sockets() -> None:
    """In a worker each listener adopts the inherited socket (TLS ones
    wrapped as SSL4ServerEndpoint would); a listener it was not given
    (HTTP, worker 0's) is not served; stopping stops listening."""
    from twisted.application import service

    reactor = MemoryReactor()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        listeners = tap.Listeners(reactor, {"c2s": os.dup(sock.fileno()), "c2s_tls": os.dup(sock.fileno())})
        top = service.MultiService()
        plain, tls = protocol.ServerFactory(), protocol.ServerFactory()
        from twisted.internet.ssl import CertificateOptions

        context = CertificateOptions()
        listeners.add(top, "c2s", Endpoint("127.0.0.1", 1), plain)
        listeners.add(top, "c2s_tls", Endpoint("127.0.0.1", 2), tls, context)
        listeners.add(top, "http", Endpoint("127.0.0.1", 3), protocol.ServerFactory())
        top.startService()
        assert [(f, fam) for f, fam, _ in reactor.adoptedPorts] == [
            (f, socket.AF_INET) for f in listeners.inherited.values()]  # type: ignore[union-attr]
        assert reactor.adoptedPorts[0][2] is plain
        wrapped = reactor.adoptedPorts[1][2]
        assert isinstance(wrapped, TLSMemoryBIOFactory) and wrapped.wrappedFactory is tls
        ports = [s.port for s in top]
        top.stopService()
        assert all(s.port is None for s in top) and len(ports) == 2
    finally:
        sock.close()


def test_single_process_listens_on_endpoints() -> None:
    """Without inherited sockets nothing changes: an endpoint service per listener."""
    from twisted.application import internet, service

    top = service.MultiService()
    tap.Listeners(MemoryReactor()).add(top, "c2s", Endpoint("127.0.0.1", 5222), protocol.ServerFactory())
    assert [type(s) for s in top] == [internet.StreamServerEndpointService]


# -- the parent ----------------------------------------------------------------------------

class FakeProcesses:
    """spawn() and kill() of the supervisor, recorded; PIDs from 100."""

    def __init__(self) -> None:
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []
        self.signals: list[tuple[int, int]] = []
        self.next_pid = 100

    def spawn(self, proto: Any, argv: list[str], child_fds: dict[int, Any]) -> Any:
        self.spawned.append((proto, argv, child_fds))
        self.next_pid += 1
        transport = type("T", (), {"pid": self.next_pid})()
        proto.pid = self.next_pid
        return transport

    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))

    def by_pid(self, pid: int) -> Any:
        return next(p for p, _, _ in self.spawned if p.pid == pid)


def exited(code: int = 1) -> Failure:
    return Failure(ProcessTerminated(exitCode=code))


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 5000 + self.fd)


def supervisor(count: int = 2, failed: list[str] | None = None) -> tuple[w.WorkerSupervisor, Clock, FakeProcesses]:
    clock, procs = Clock(), FakeProcesses()
    sockets: Any = {"c2s": FakeSocket(5), "c2s_tls": FakeSocket(6), "http": FakeSocket(7)}
    sup = w.WorkerSupervisor(clock, count, w.worker_command("/etc/chatbx.toml"), sockets, procs.spawn,
                             kill=procs.kill, base_name="wk",
                             on_all_failed=(lambda: failed.append("all")) if failed is not None else None)
    sup.startService()
    return sup, clock, procs


def argv_value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_parent_starts_named_workers_with_their_sockets() -> None:
    """N workers ``<node>-w<i>``, twistd in the foreground without pidfile,
    each inheriting the sockets under the same numbers; HTTP only for w0."""
    sup, _, procs = supervisor()
    assert len(procs.spawned) == 2
    (_, argv0, fds0), (_, argv1, fds1) = procs.spawned
    assert argv_value(argv0, "--worker-node") == "wk-w0" and argv_value(argv1, "--worker-node") == "wk-w1"
    assert "-n" in argv0 and "--pidfile=" in argv0 and argv_value(argv0, "--config") == "/etc/chatbx.toml"
    assert w.parse_inherit(argv_value(argv0, "--inherit")) == {"c2s": 5, "c2s_tls": 6, "http": 7}
    assert w.parse_inherit(argv_value(argv1, "--inherit")) == {"c2s": 5, "c2s_tls": 6}
    assert fds0 == {0: 0, 1: 1, 2: 2, 5: 5, 6: 6, 7: 7} and fds1 == {0: 0, 1: 1, 2: 2, 5: 5, 6: 6}
    assert sorted(sup.pids) == [101, 102]


def test_dead_worker_is_restarted_with_back_off_under_a_new_name() -> None:
    """A worker that dies is restarted after 1 s, then 2 s, 4 s ... as
    ``-r<k>`` (the dead incarnation is reaped as a dead node); one that ran
    STABLE_AFTER starts the back-off from 1 s again."""
    sup, clock, procs = supervisor()
    delays = []
    for k in range(1, 5):
        victim = procs.spawned[-1][0] if k > 1 else procs.by_pid(102)
        victim.processEnded(exited())
        before = len(procs.spawned)
        waited = 0.0
        while len(procs.spawned) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
        assert argv_value(procs.spawned[-1][1], "--worker-node") == f"wk-w1-r{k}"
    assert delays == [1.0, 2.0, 4.0, 8.0]
    clock.advance(w.STABLE_AFTER)
    procs.spawned[-1][0].processEnded(exited())
    clock.advance(1.0)
    assert argv_value(procs.spawned[-1][1], "--worker-node") == "wk-w1-r5"
    assert len(sup.pids) == 2
    assert w.restart_delay(20) == w.MAX_DELAY


def test_slot_given_up_after_too_many_quick_deaths() -> None:
    """After MAX_FAILURES quick restarts a slot stays empty; when every slot
    is given up the parent is told (it stops)."""
    failed: list[str] = []
    sup, clock, procs = supervisor(count=1, failed=failed)
    for _ in range(w.MAX_FAILURES):
        procs.spawned[-1][0].processEnded(exited())
        clock.advance(w.MAX_DELAY)
    assert len(procs.spawned) == w.MAX_FAILURES + 1 and not failed
    procs.spawned[-1][0].processEnded(exited())
    clock.advance(w.MAX_DELAY * 2)
    assert len(procs.spawned) == w.MAX_FAILURES + 1 and failed == ["all"] and sup.pids == []


def test_stop_sends_sigterm_then_sigkill_by_pid() -> None:
    """SIGTERM to each worker's PID; the stop completes when all ended; one
    that ignores SIGTERM gets SIGKILL after STOP_TIMEOUT; a restart that
    was pending is cancelled and a worker ending now is not restarted."""
    sup, clock, procs = supervisor(count=3)
    procs.by_pid(103).processEnded(exited())  # restart pending
    d = sup.stopService()
    assert sorted(procs.signals) == [(101, signal.SIGTERM), (102, signal.SIGTERM)]
    done: list[Any] = []
    d.addCallback(done.append)
    procs.by_pid(101).processEnded(Failure(ProcessDone(0)))
    assert not done
    clock.advance(w.STOP_TIMEOUT - 0.1)
    assert (102, signal.SIGKILL) not in procs.signals
    clock.advance(0.1)
    assert procs.signals[-1] == (102, signal.SIGKILL)
    procs.by_pid(102).processEnded(exited(-9))
    assert done and sup.pids == []
    clock.advance(100)
    assert len(procs.spawned) == 3  # nothing restarted


def test_stop_gives_up_on_a_worker_that_survives_sigkill() -> None:
    """Stopping is bounded even if a worker is never reaped."""
    sup, clock, procs = supervisor(count=1)
    done: list[Any] = []
    sup.stopService().addCallback(done.append)
    clock.advance(w.STOP_TIMEOUT)
    assert not done
    clock.advance(w.KILL_GRACE)
    assert done and procs.signals == [(101, signal.SIGTERM), (101, signal.SIGKILL)]


def test_sighup_is_passed_to_every_worker() -> None:
    """signal_all sends the signal (SIGHUP: reload TLS) to each running worker."""
    sup, _, procs = supervisor()
    sup.signal_all(signal.SIGHUP)
    assert sorted(procs.signals) == [(101, signal.SIGHUP), (102, signal.SIGHUP)]


def test_worker_stops_when_its_parent_is_gone() -> None:
    """A worker checks its parent's PID each second and stops once it changed."""
    clock, ppid, gone = Clock(), [10], []
    watch = w.ParentWatch(clock, lambda: gone.append(True), getppid=lambda: ppid[0])
    watch.startService()
    clock.advance(5)
    assert not gone
    ppid[0] = 1
    clock.advance(w.PARENT_CHECK)
    clock.advance(5)
    assert gone == [True]
    watch.stopService()
