"""Headless Chromium driven over the DevTools protocol, and converse.js
fetched from npm, for tests/integration/test_browser.py.

Chromium (Debian's ``chromium``, installed by ``.ci/run``) runs headless
with its own profile in the test's tmp dir, a remote-debugging port chosen
by itself (read back from ``DevToolsActivePort``), and trusts exactly one
certificate: the test server's, by the SHA-256 of its public key
(``--ignore-certificate-errors-spki-list``), with ``localhost`` mapped to
127.0.0.1. It is stopped by PID (its process group) at the end.

converse.js is fetched at test time with ``npm pack`` into a cache folder
outside the repository (``CHATBX_TEST_CACHE``, default
``~/.cache/chatbx-tests``) and reused by later runs; only its ``dist/`` is
unpacked. Screenshots go to ``CHATBX_ARTIFACTS_DIR`` (default: the cache's
``artifacts/``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

CONVERSE_VERSION = os.environ.get("CHATBX_CONVERSE_VERSION", "14.0.0")
#: downloads kept between runs (never in the repository)
CACHE_DIR = Path(os.environ.get("CHATBX_TEST_CACHE")
                 or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbx-tests")
#: screenshots and other files a CI run keeps
ARTIFACTS_DIR = Path(os.environ.get("CHATBX_ARTIFACTS_DIR") or CACHE_DIR / "artifacts")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class Unavailable(Exception):
    """Chromium or converse.js cannot be had here; the message says why."""


def spki_sha256(certificate_pem: Path) -> str:
    """base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as
    ``--ignore-certificate-errors-spki-list`` wants it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certificate_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def fetch_converse(cache: Path, version: str = CONVERSE_VERSION) -> Path:
    """converse.js's dist/ folder, from npm on the first call (bounded)."""
    target = cache / f"converse.js-{version}"
    dist = target / "package" / "dist"
    if (dist / "converse.min.js").exists():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed (apt-get install npm)")
    target.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run([npm, "pack", f"converse.js@{version}", "--pack-destination", str(target),
                                 "--silent"], capture_output=True, text=True, timeout=300, cwd=target,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Unavailable("npm pack converse.js took longer than 300 s") from None
    if result.returncode != 0:
        raise Unavailable(f"npm pack converse.js@{version} failed: {result.stderr.strip()[-2000:]}")
    tarball = target / f"converse.js-{version}.tgz"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
        tar.extractall(target, members=members, filter="data")
    tarball.unlink()
    if not (dist / "converse.min.js").exists():
        raise Unavailable(f"converse.js@{version} has no dist/converse.min.js")
    return dist


class StaticSite:
    """A tiny HTTP server on 127.0.0.1 for the test page and converse's files."""

    def __init__(self, root: Path) -> None:
        handler = partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(STOP_TIMEOUT)


class _QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Chromium:
    """One headless Chromium and a DevTools session on its first page."""

    def __init__(self, profile: Path, spki: str) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise Unavailable("chromium is not installed (apt-get install chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        self.profile = profile
        self.log_path = profile.parent / "chromium.log"
        argv = [binary, "--headless=new", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-quic",
                "--disable-component-update", "--window-size=1280,900",
                f"--ignore-certificate-errors-spki-list={spki}",
                "--host-resolver-rules=MAP localhost 127.0.0.1", "about:blank"]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.ws: Any = None
        self._id = 0
        #: the page's console lines (with Runtime enabled), the last 200
        self.console: list[str] = []
        try:
            self._attach()
        except BaseException:
            self.stop()
            raise

    def _attach(self) -> None:
        from websockets.sync.client import connect

        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise Unavailable(f"chromium exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise Unavailable(f"chromium did not open its DevTools port in {START_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.1)  # polling the file, bounded by the deadline
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws_context = connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10)
        self.ws = self._ws_context.__enter__()
        self.call("Runtime.enable")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"DevTools {method} timed out")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("method") == "Runtime.consoleAPICalled":
                params = message["params"]
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.console.append(f"{params.get('type')}: {text[:500]}")
                del self.console[:-200]  # the last 200 lines
            if message.get("id") == self._id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self) -> None:
        """Close the DevTools socket, then end Chromium's process group by PID."""
        if self.ws is not None:
            try:
                self._ws_context.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - teardown
                pass
            self.ws = None
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(STOP_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                continue


def wait_for(check: Any, what: str, timeout: float = 20.0, details: Optional[Any] = None,
             tick: Optional[Any] = None) -> Any:
    """Poll ``check()`` until truthy (returned) or fail with ``what``;
    ``tick()`` waits between polls (default: 0.1 s of sleep; an asyncio
    caller passes one that runs its loop meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        if tick is not None:
            tick()
        else:
            time.sleep(0.1)  # polling, bounded by the deadline
