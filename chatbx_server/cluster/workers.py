"""``[cluster] workers = N``: one machine, N chatbx processes, one command.

One Python process uses one core. With ``workers`` above 1, ``twistd
chatbx`` becomes a parent that runs no XMPP: it binds every listening
socket once (before twistd drops privileges or daemonizes) and spawns N
workers, ``twistd -n chatbx --worker-node NAME --inherit c2s=FD,...``,
that inherit the sockets and adopt them (``reactor.adoptStreamPort``, the
pattern Twisted documents for multi-core servers). The kernel hands each
new connection to one of the workers waiting in ``accept``. Each worker is
a full cluster node named ``<node>-w<i>`` sharing PostgreSQL and Redis with
the others, so a user on one worker reaches a user on another exactly as
across machines (DESIGN.md, "Cluster").

The HTTP listener is adopted by worker 0 only (``WORKER0_ONLY``): a BOSH
session is a series of HTTP requests over connections the client opens as
it likes, all of which must reach the process holding the session. (The
SOCKS5 proxy, whose two halves of a transfer and its activation must meet
in one process, is refused with several workers: config.py.)

The parent restarts a worker that died (after 1, 2, 4 ... up to 30 s;
after MAX_FAILURES quick deaths in a row its slot stays empty) under a
new name (``-r<k>``), so that the dead incarnation is reaped by the other
nodes as any dead node is: its sessions end, its inbox goes to offline
storage. On SIGTERM the parent sends SIGTERM to each worker by PID,
SIGKILL after STOP_TIMEOUT, and exits once they are gone; SIGHUP (TLS
reload) is passed on to every worker. A worker whose parent is gone stops.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

#: listeners, in [listen] order
LISTENERS = ("c2s", "c2s_tls", "s2s", "s2s_tls", "http", "proxy")
#: listeners adopted by worker 0 alone (state spanning several connections)
WORKER0_ONLY = frozenset({"http"})
#: listen() backlog of the shared sockets (Twisted's listenTCP default)
BACKLOG = 50
#: seconds before restarting a worker that died: FIRST_DELAY doubling up to MAX_DELAY
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
#: a worker that ran this long was healthy: its slot's failure count restarts
STABLE_AFTER = 60.0
#: quick deaths in a row after which a slot is given up
MAX_FAILURES = 8
#: seconds a stopping worker gets between SIGTERM and SIGKILL
STOP_TIMEOUT = 20.0
#: seconds to wait for a SIGKILLed worker to be reaped before giving up on it
KILL_GRACE = 5.0
#: seconds between a worker's checks that its parent is still there
PARENT_CHECK = 1.0


# -- sockets ------------------------------------------------------------------------

def bind_listeners(listen: Any, backlog: int = BACKLOG) -> dict[str, socket.socket]:
    """Bind and listen on every configured address of ``[listen]``.

    Returns:
        listener name -> its listening, non-blocking socket.

    Raises:
        OSError: an address cannot be bound; its ``filename`` is the
            listener's name (the sockets bound before are closed).
    """
    sockets: dict[str, socket.socket] = {}
    try:
        for name in LISTENERS:
            address = getattr(listen, name, None)
            if address is None:
                continue
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets[name] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address.host, address.port))
            except OSError as exc:
                exc.filename = f"listen.{name} {address.host}:{address.port}"
                raise
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def format_inherit(fds: dict[str, int]) -> str:
    """``{"c2s": 5}`` -> ``"c2s=5"`` (the worker's ``--inherit``)."""
    return ",".join(f"{name}={fd}" for name, fd in fds.items())


def parse_inherit(spec: str) -> dict[str, int]:
    """The inverse of :func:`format_inherit`.

    Raises:
        ValueError: not ``name=fd,...`` with known listener names.
    """
    fds: dict[str, int] = {}
    for part in filter(None, spec.split(",")):
        name, _, fd = part.partition("=")
        if name not in LISTENERS or not fd.isdigit():
            raise ValueError(f"bad --inherit entry {part!r}")
        fds[name] = int(fd)
    return fds


class AdoptedPortService(service.Service):
    """Accepts on a listening socket inherited from the parent.

    Started after the server (children of ChatbxService start after it), so
    a worker takes connections only once it can serve them; until then
    they wait in the shared backlog or go to another worker.
    """

    def __init__(self, reactor: Any, name: str, fd: int, factory: Any) -> None:
        self.reactor = reactor
        self.name = name
        self.fd = fd
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        sock = socket.socket(fileno=self.fd)  # learns the address family
        try:
            # adoptStreamPort works on its own duplicate of the descriptor.
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class ParentWatch(service.Service):
    """Stops this worker when its parent is gone (killed with SIGKILL, say):
    a worker nobody supervises must not keep the sockets open."""

    def __init__(self, clock: Any, on_gone: Callable[[], None],
                 getppid: Callable[[], int] = os.getppid) -> None:
        self.clock = clock
        self.on_gone = on_gone
        self.getppid = getppid
        self.parent_pid = getppid()
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.clock
        self._loop.start(PARENT_CHECK, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()

    def _check(self) -> None:
        if self.getppid() != self.parent_pid:
            log.warn("cluster: worker {pid}: parent {parent} is gone, stopping",
                     pid=os.getpid(), parent=self.parent_pid)
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            self.on_gone()


# -- the parent ---------------------------------------------------------------------

@dataclass
class Slot:
    """One worker position: its current process and its history."""

    index: int
    #: incarnations started so far (the name of the k-th restart ends -r<k>)
    starts: int = 0
    #: quick deaths in a row
    failures: int = 0
    name: str = ""
    pid: Optional[int] = None
    started_at: float = 0.0
    restart_call: Any = None
    kill_call: Any = None
    given_up: bool = False
    ended: list[defer.Deferred] = field(default_factory=list)


class WorkerProtocol(protocol.ProcessProtocol):
    """Tells the supervisor when its worker ended."""

    def __init__(self, supervisor: "WorkerSupervisor", slot: Slot) -> None:
        self.supervisor = supervisor
        self.slot = slot

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self.slot, reason)


def worker_name(base: str, index: int, starts: int) -> str:
    """``<base>-w<i>``; restarts get ``-r<k>`` so that the dead incarnation
    is reaped like any dead node instead of being taken for the new one."""
    name = f"{base}-w{index}"
    return name if starts <= 1 else f"{name}-r{starts - 1}"


def restart_delay(failures: int) -> float:
    """Seconds before the restart after ``failures`` quick deaths in a row."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - 1)))


class WorkerSupervisor(service.Service):
    """The parent's only service: runs ``count`` workers and keeps them running.

    Args:
        clock: IReactorTime (the reactor; a Clock in tests).
        count: how many workers.
        command: (name, index, fds) -> argv of a worker.
        sockets: listener name -> the listening socket the workers inherit.
        spawn: (protocol, argv, childFDs) -> a process transport with ``pid``.
        kill: os.kill, by PID.
        base_name: the node name the workers' names start with; "" = host
            name and the parent's pid once started (after twistd forked).
        on_all_failed: called when every slot was given up (stops the parent).
    """

    def __init__(self, clock: Any, count: int, command: Callable[[str, int, dict[str, int]], list[str]],
                 sockets: dict[str, socket.socket], spawn: Callable[[Any, list[str], dict[int, Any]], Any],
                 kill: Callable[[int, int], None] = os.kill, base_name: str = "",
                 on_all_failed: Optional[Callable[[], None]] = None,
                 stdio: Optional[dict[int, Any]] = None) -> None:
        self.clock = clock
        self.command = command
        self.sockets = sockets
        self.spawn = spawn
        self.kill = kill
        self.base_name = base_name
        self.on_all_failed = on_all_failed
        self.stdio = stdio if stdio is not None else {0: 0, 1: 1, 2: 2}
        self.slots = [Slot(i) for i in range(count)]
        self.stopping = False
        self._previous_hup: Any = None

    def fds_for(self, index: int) -> dict[str, int]:
        return {name: sock.fileno() for name, sock in self.sockets.items()
                if index == 0 or name not in WORKER0_ONLY}

    # -- life cycle -------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        if not self.base_name:
            self.base_name = f"{socket.gethostname()}-{os.getpid()}"
        log.info("cluster: starting {count} workers on {listeners}", count=len(self.slots),
                 listeners=",".join(f"{n}:{s.getsockname()[1]}" for n, s in self.sockets.items()))
        for slot in self.slots:
            self._start(slot)

    def _start(self, slot: Slot) -> None:
        slot.restart_call = None
        if self.stopping:
            return
        slot.starts += 1
        slot.name = worker_name(self.base_name, slot.index, slot.starts)
        fds = self.fds_for(slot.index)
        child_fds: dict[int, Any] = dict(self.stdio)
        child_fds.update({fd: fd for fd in fds.values()})
        try:
            transport = self.spawn(WorkerProtocol(self, slot), self.command(slot.name, slot.index, fds),
                                   child_fds)
        except Exception:
            log.failure("cluster: worker {node} could not be started", node=slot.name)
            self._died(slot)
            return
        slot.pid = transport.pid
        slot.started_at = self.clock.seconds()
        log.info("cluster: worker {node} started, pid {pid}", node=slot.name, pid=slot.pid,
                 worker=slot.index, listeners=",".join(fds))

    def worker_ended(self, slot: Slot, reason: Failure) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        ran = self.clock.seconds() - slot.started_at
        pid, slot.pid = slot.pid, None
        if slot.kill_call is not None and slot.kill_call.active():
            slot.kill_call.cancel()
        slot.kill_call = None
        log_event = log.info if self.stopping else log.warn
        log_event("cluster: worker {node} (pid {pid}) exited after {ran:.1f}s: "
                  "exit code {code}, signal {signal}", node=slot.name, pid=pid, worker=slot.index,
                  code=code, signal=sig, ran=ran)
        ended, slot.ended = slot.ended, []
        for d in ended:
            d.callback(None)
        if self.stopping:
            return
        if ran >= STABLE_AFTER:
            slot.failures = 0
        self._died(slot)

    def _died(self, slot: Slot) -> None:
        slot.failures += 1
        if slot.failures > MAX_FAILURES:
            slot.given_up = True
            log.critical("cluster: worker slot {worker} died {count} times in a row; not restarted",
                         worker=slot.index, count=slot.failures - 1)
            if all(s.given_up for s in self.slots) and self.on_all_failed is not None:
                self.on_all_failed()
            return
        delay = restart_delay(slot.failures)
        log.info("cluster: restarting worker slot {worker} in {delay:.0f}s", worker=slot.index, delay=delay)
        slot.restart_call = self.clock.callLater(delay, self._start, slot)

    def stopService(self) -> Any:
        """SIGTERM each worker by PID, SIGKILL after STOP_TIMEOUT; fires
        once all are gone."""
        super().stopService()
        self.stopping = True
        waits = []
        for slot in self.slots:
            if slot.restart_call is not None and slot.restart_call.active():
                slot.restart_call.cancel()
            slot.restart_call = None
            if slot.pid is None:
                continue
            d: defer.Deferred = defer.Deferred()
            slot.ended.append(d)
            waits.append(d)
            self._signal(slot, signal.SIGTERM)
            slot.kill_call = self.clock.callLater(STOP_TIMEOUT, self._force, slot)
        return defer.DeferredList(waits) if waits else None

    def _force(self, slot: Slot) -> None:
        slot.kill_call = None
        if slot.pid is None:
            return
        log.warn("cluster: worker {node} (pid {pid}) still running {timeout}s after SIGTERM; SIGKILL",
                 node=slot.name, pid=slot.pid, timeout=STOP_TIMEOUT)
        self._signal(slot, signal.SIGKILL)
        slot.kill_call = self.clock.callLater(KILL_GRACE, self._abandon, slot)

    def _abandon(self, slot: Slot) -> None:
        slot.kill_call = None
        if slot.pid is None:
            return
        log.error("cluster: worker {node} (pid {pid}) did not end after SIGKILL", node=slot.name, pid=slot.pid)
        ended, slot.ended = slot.ended, []
        for d in ended:
            d.callback(None)

    def _signal(self, slot: Slot, signum: int) -> None:
        if slot.pid is None:
            return
        try:
            self.kill(slot.pid, signum)
        except ProcessLookupError:
            pass  # ended already; processEnded follows

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every running worker (SIGHUP: reload TLS)."""
        for slot in self.slots:
            self._signal(slot, signum)

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid is not None]


# -- wiring for tap.py ------------------------------------------------------------------

def worker_command(config_path: str) -> Callable[[str, int, dict[str, int]], list[str]]:
    """argv of a worker: this Python running twistd in the foreground (it
    must stay our child), no pidfile (the parent has it); its log goes to
    the parent's stdout, or to ``chatbx-w<i>.log`` in the working
    directory when that is /dev/null (twistd daemonized)."""

    def command(name: str, index: int, fds: dict[str, int]) -> list[str]:
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        if stdout_is_devnull():
            argv.append(f"--logfile={os.path.join(os.getcwd(), f'chatbx-w{index}.log')}")
        return argv + ["chatbx", "--config", config_path, "--worker-node", name,
                       "--inherit", format_inherit(fds)]

    return command


def stdout_is_devnull() -> bool:
    try:
        out, null = os.fstat(1), os.stat(os.devnull)
    except OSError:
        return True
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


class SupervisorService(service.MultiService):
    """The parent's service tree: the supervisor, SIGHUP passed on, and
    the sockets closed when the parent ends."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        super().__init__()
        self.supervisor = supervisor
        supervisor.setServiceParent(self)
        self._previous_hup: Any = None

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            clock = self.supervisor.clock

            def on_hup(signum: int, frame: Any) -> None:
                clock.callFromThread(self.supervisor.signal_all, signal.SIGHUP)

            self._previous_hup = signal.signal(signal.SIGHUP, on_hup)

    def stopService(self) -> Any:
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        d = defer.maybeDeferred(super().stopService)

        def close(result: Any) -> Any:
            for sock in self.supervisor.sockets.values():
                sock.close()
            log.info("cluster: all workers stopped")
            return result

        return d.addBoth(close)


def make_supervisor(reactor: Any, config: Any, config_path: str,
                    sockets: dict[str, socket.socket]) -> SupervisorService:
    """The parent of ``config.cluster.workers`` workers on ``sockets``."""
    devnull = os.open(os.devnull, os.O_RDWR)

    def spawn(proto: Any, argv: list[str], child_fds: dict[int, Any]) -> Any:
        return reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ), childFDs=child_fds)

    def all_failed() -> None:
        if reactor.running:
            reactor.stop()

    supervisor = WorkerSupervisor(reactor, config.cluster.workers, worker_command(config_path),
                                  sockets, spawn, base_name=config.cluster.node,
                                  on_all_failed=all_failed, stdio={0: devnull, 1: 1, 2: 2})
    return SupervisorService(supervisor)

