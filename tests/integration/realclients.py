"""Helpers to drive packaged XMPP clients (Debian's mcabber, go-sendxmpp,
profanity) against the real server from tests/integration/test_clients.py.

Curses clients run inside a tmux server of the test's own (own socket, no
user configuration, fixed pane size): keys go in with ``send-keys``, the
screen comes out with ``capture-pane``. Every client gets its own HOME in
the test's tmp dir. Nothing waits blindly: ``until`` polls a condition
(a file's content, the screen, a subprocess' output) against a deadline,
inside the asyncio loop that also runs the slixmpp side of each scenario.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional, TypeVar

import pytest

T = TypeVar("T")

WAIT_TIMEOUT = 15.0   # one observable effect of one action
STEP_TIMEOUT = 45.0   # one test step, everything included
STOP_TIMEOUT = 5.0


def clients_required() -> bool:
    """Under CI (``.ci/run`` installs the clients) a missing client fails."""
    return bool(os.environ.get("CI")) or os.environ.get("CHATBX_REQUIRE_CLIENTS") == "1"


def require(*commands: str) -> None:
    """Skip the test when a client program is not installed, or fail it
    under CI / CHATBX_REQUIRE_CLIENTS=1 (``.ci/run`` installs them)."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return
    message = (f"not installed: {', '.join(missing)} "
               "(apt-get install mcabber go-sendxmpp profanity tmux chromium)")
    if clients_required():
        pytest.fail(message + " (required: CI or CHATBX_REQUIRE_CLIENTS=1)")
    pytest.skip(message)


def client_env(home: Path) -> dict[str, str]:
    """A small environment whose HOME and XDG dirs are inside ``home``, so
    no client reads or writes the user's own files."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "GNUPGHOME": str(home / ".gnupg"),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
    }


def run_steps(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T],
              timeout: float = STEP_TIMEOUT) -> T:
    """Run one step's coroutine on the scenario's loop, bounded. The loop
    (and the slixmpp clients on it) lives across the steps of a class."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def until(check: Callable[[], Optional[T]], what: str, timeout: float = WAIT_TIMEOUT,
                details: Optional[Callable[[], str]] = None) -> T:
    """Poll ``check`` until it returns something truthy (returned), or fail
    after ``timeout`` with ``what`` and ``details()`` (e.g. a log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        await asyncio.sleep(0.05)  # polling, bounded by the deadline


def read(path: Path) -> str:
    """A file's text, or '' while it does not exist yet."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tail(path: Path, lines: int = 80) -> str:
    return f"--- last lines of {path} ---\n" + "\n".join(read(path).splitlines()[-lines:])


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _stop_pid(pid: Optional[int]) -> None:
    """SIGTERM, then SIGKILL after a bounded wait: for processes that are
    not our children (a tmux pane's program)."""
    if pid is None or _gone(pid):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.05)  # polling, bounded by the deadline


class Tmux:
    """One program in one 200x50 pane of a tmux server of our own."""

    def __init__(self) -> None:
        self.socket = f"chatbx-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.socket_path: Optional[str] = None
        self.server_pid: Optional[int] = None
        self.pane_pid: Optional[int] = None

    def tmux(self, *args: str, env: Optional[dict[str, str]] = None) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                                capture_output=True, text=True, timeout=10, env=env,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Start ``argv`` (run directly, no shell) with exactly ``env`` (+ TERM)."""
        server_env = dict(env)
        if "TMUX_TMPDIR" in os.environ:  # where -L puts the socket: same for every call
            server_env["TMUX_TMPDIR"] = os.environ["TMUX_TMPDIR"]
        self.tmux("new-session", "-d", "-s", "main", "-x", "200", "-y", "50", "-c", str(cwd),
                  "--", *argv, env=server_env)
        pids, self.socket_path = self.tmux("display-message", "-p", "-t", "main",
                                           "#{pid} #{pane_pid}\n#{socket_path}").splitlines()
        self.server_pid, self.pane_pid = (int(pid) for pid in pids.split())

    def type(self, text: str) -> None:
        """Type a line (literally) and press Enter."""
        self.tmux("send-keys", "-t", "main", "-l", "--", text)
        self.tmux("send-keys", "-t", "main", "Enter")

    def screen(self) -> str:
        """The visible screen, wrapped lines joined."""
        if self.pane_pid is None or _gone(self.pane_pid):
            return "(the program has exited)"
        return self.tmux("capture-pane", "-p", "-J", "-t", "main")

    def stop(self) -> None:
        """Kill the tmux server (its pane gets SIGHUP), then make sure the
        program and the server are gone, by PID."""
        if self.server_pid is None:
            return
        try:
            self.tmux("kill-server")
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        _stop_pid(self.pane_pid)
        _stop_pid(self.server_pid)
        self.server_pid = None
        if self.socket_path is not None:  # tmux 3.3 leaves it behind
            Path(self.socket_path).unlink(missing_ok=True)


class Program:
    """A client run as a plain subprocess (go-sendxmpp), output in files."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, name: str,
                 stdin: Optional[str] = None) -> None:
        self.stdout_path, self.stderr_path = cwd / f"{name}.out", cwd / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err,
                                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                         start_new_session=True)
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()

    @property
    def stdout(self) -> str:
        return read(self.stdout_path)

    @property
    def stderr(self) -> str:
        return read(self.stderr_path)

    def output(self) -> str:
        return (f"--- exit status: {self.proc.poll()} ---\n--- stdout ---\n{self.stdout}\n"
                f"--- stderr ---\n{self.stderr[-8000:]}")

    async def exit_status(self, what: str, timeout: float = WAIT_TIMEOUT) -> int:
        await until(lambda: self.proc.poll() is not None, what, timeout, self.output)
        return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM, then SIGKILL the process group after a bounded wait."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(STOP_TIMEOUT)


def write_fifo(path: Path, line: str) -> None:
    """Write one command line into a FIFO that a client reads; fails at
    once (ENXIO) instead of blocking when nobody has it open."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
