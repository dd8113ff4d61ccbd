"""Start the servers under test on loopback, provision bench users, read their RSS.

Prosody (Debian package) runs with its own config, data and certificate in a
temp dir, never as the system service. Its accounts are written straight into
`data_path/<host>/accounts/*.dat` in `mod_auth_internal_hashed` format (the same
file `prosodyctl register` writes; see `provision_prosody`): `prosodyctl
register` costs 25 ms per call, 4.4 minutes for 10,501 users; this takes ~13 s.

chatbx runs as `twistd -n --pidfile= chatbx --config FILE`; its users come from
`chatbxctl --config FILE user add --from-file FILE`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

from . import scram


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until something accepts on 127.0.0.1:port, or fail if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_cert(workdir: str, host: str) -> tuple[str, str]:
    """A self-signed certificate and key (PEM) for `host`, with `cryptography`."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(workdir, f"{host}.crt"), os.path.join(workdir, f"{host}.key")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@dataclass
class ServerHandle:
    """A running server process we started; `stop()` ends exactly that PID."""

    name: str
    proc: subprocess.Popen
    port: int
    tls_port: Optional[int]
    domain: str
    workdir: str
    log_path: str
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our PID, then SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""


def _preexec_pin(cpus: Optional[Sequence[int]]):
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, set(cpus))
    return pin


def raise_nofile() -> int:
    """Raise this process's soft fd limit to the hard limit (children inherit it)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- Prosody
PROSODY_CONFIG = """\
-- generated by chatbx bench/xmppload/servers.py; loopback only
run_as_root = true
pidfile = "{workdir}/prosody.pid"
data_path = "{workdir}/data"
plugin_paths = {{ {plugins} }}
certificates = "{workdir}"
admin_socket = "{workdir}/prosody.sock"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ {tls_port} }}
s2s_ports = {{ {s2s_ports} }}
http_ports = {{}}
https_ports = {{}}
component_ports = {{}}
network_backend = "epoll"
-- Nagle off, as chatbx: Prosody's default (on) adds a 40 ms delayed-ACK stall to logins on loopback
network_settings = {{ nagle = false }}
authentication = "internal_hashed"
password_hash = "SHA-256"
c2s_require_encryption = true
allow_registration = false
log = {{ warn = "{workdir}/prosody.log" }}
-- mod_mam: the message archive, on as chatbx's is by default (every chat message archived,
-- Prosody's default_archive_policy = true, in its internal file store)
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix", "pep", "mam"{more_modules} }}
modules_disabled = {{ {disabled} }}
{s2s_settings}
VirtualHost "{domain}"
    ssl = {{ certificate = "{cert}"; key = "{key}" }}

-- group chat (muc_room), as chatbx's default conference.DOMAIN: anyone local may create rooms
Component "conference.{domain}" "muc"
    ssl = {{ certificate = "{cert}"; key = "{key}" }}
"""

PROSODY_ITERATIONS = 10000  # Prosody 0.12's default_iteration_count


def _lua_string(raw: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in raw) + '"'


def _prosody_account(args: tuple[str, str, int]) -> tuple[str, str, bytes, tuple[bytes, bytes, bytes]]:
    """Derive one account in a worker process: (user, file text, salt, keys)."""
    user, password, iterations = args
    salt = str(uuid.uuid4()).encode()  # Prosody uses a UUID string as salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    text = ("return {\n"
            f"\t[\"iteration_count\"] = {iterations};\n"
            f"\t[\"salt\"] = {_lua_string(salt)};\n"
            f"\t[\"server_key\"] = \"{server_key.hex()}\";\n"
            f"\t[\"stored_key\"] = \"{stored_key.hex()}\";\n"
            "};\n")
    return user, text, salt, (client_key, stored_key, server_key)


def _encode_node(user: str) -> str:
    return "".join(c if c.isalnum() and c.isascii() else f"%{ord(c):02x}" for c in user)


def provision_prosody(data_path: str, domain: str, users: Sequence[str], password: str,
                      iterations: int = PROSODY_ITERATIONS, procs: int = 2) -> float:
    """Write internal_hashed account files for `users`; returns seconds spent.

    The derived keys also seed the client's SCRAM cache, so the load generator
    does not pay PBKDF2 a second time.
    """
    t0 = time.monotonic()
    acc_dir = os.path.join(data_path, _encode_node(domain), "accounts")
    os.makedirs(acc_dir, exist_ok=True)
    todo = [u for u in users if not os.path.exists(os.path.join(acc_dir, _encode_node(u) + ".dat"))]
    with ProcessPoolExecutor(max_workers=procs) as pool:
        for user, text, salt, keys in pool.map(_prosody_account, [(u, password, iterations) for u in todo],
                                               chunksize=256):
            with open(os.path.join(acc_dir, _encode_node(user) + ".dat"), "w") as fh:
                fh.write(text)
            scram.seed_cache("sha256", password, salt, iterations, keys)
    return time.monotonic() - t0


def provision_prosody_rosters(data_path: str, domain: str, hub: str, contacts: Sequence[str]) -> None:
    """Write mutual ('both') roster files for the fan-out users, as mod_roster stores them.

    Building them through the protocol works too (the scenario does it when a
    roster is incomplete) but Prosody's file store rewrites the hub's whole
    roster on each change: ~85 s for 500 contacts.
    """
    roster_dir = os.path.join(data_path, _encode_node(domain), "roster")
    os.makedirs(roster_dir, exist_ok=True)
    item = '\t["{jid}"] = {{\n\t\t["subscription"] = "both";\n\t\t["groups"] = {{}};\n\t}};\n'
    head = 'return {\n\t[false] = {\n\t\t["version"] = 1;\n\t\t["pending"] = {};\n\t};\n'
    hub_jid = f"{hub}@{domain}"
    with open(os.path.join(roster_dir, _encode_node(hub) + ".dat"), "w") as fh:
        fh.write(head + "".join(item.format(jid=f"{c}@{domain}") for c in contacts) + "};\n")
    for contact in contacts:
        with open(os.path.join(roster_dir, _encode_node(contact) + ".dat"), "w") as fh:
            fh.write(head + item.format(jid=hub_jid) + "};\n")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: the test-only Prosody module that routes listed domains to loopback ports (no DNS)
ROUTES_MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "tests", "interop")


def start_prosody(workdir: str, domain: str = "localhost", cpus: Optional[Sequence[int]] = None,
                  port: Optional[int] = None, s2s_port: Optional[int] = None,
                  routes: Optional[dict[str, int]] = None, bidi: bool = False) -> ServerHandle:
    """Start Prosody in `workdir` on free loopback ports (installs the package if missing).

    With `s2s_port`, federation is on (dialback, TLS required, self-signed
    certificates accepted as Prosody's `s2s_secure_auth = false` does) and
    `routes` (domain -> loopback port) replace DNS through the test module
    tests/interop/mod_chatbx_test_routes.lua.
    """
    ensure_prosody()
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    cert, key = make_cert(workdir, domain)
    port = port or free_port()
    tls_port = free_port()
    cfg = os.path.join(workdir, "prosody.cfg.lua")
    if s2s_port is None:
        fed = dict(plugins="", s2s_ports="", more_modules="", disabled='"s2s", "s2s_auth_certs"', s2s_settings="")
    else:
        table = "; ".join(f'["{d}"] = {p}' for d, p in (routes or {}).items())
        fed = dict(plugins=f'"{ROUTES_MODULE_DIR}"', s2s_ports=str(s2s_port),
                   more_modules=', "dialback", "chatbx_test_routes"' + (', "s2s_bidi"' if bidi else ""),
                   disabled="", s2s_settings=("s2s_require_encryption = true\ns2s_secure_auth = false\n"
                                              "s2s_interfaces = { \"127.0.0.1\" }\n"
                                              f"chatbx_test_routes = {{ {table} }}"))
    with open(cfg, "w") as fh:
        fh.write(PROSODY_CONFIG.format(workdir=workdir, port=port, tls_port=tls_port, domain=domain,
                                       cert=cert, key=key, **fed))
    log_path = os.path.join(workdir, "prosody.stdout")
    out = open(log_path, "ab")
    proc = subprocess.Popen(["prosody", "--config", cfg, "-F"], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_preexec_pin(cpus), cwd=workdir)
    handle = ServerHandle("prosody", proc, port, tls_port, domain, workdir, log_path, {"config": cfg})
    try:
        wait_port(port, proc, 30)
        if s2s_port is not None:
            wait_port(s2s_port, proc, 30)
    except Exception as exc:
        handle.stop()
        log = os.path.join(workdir, "prosody.log")
        detail = open(log, errors="replace").read()[-2000:] if os.path.exists(log) else ""
        raise RuntimeError(f"prosody did not start: {exc}\n{handle.log_tail()}{detail}") from None
    return handle


def prosodyctl_register(workdir: str, user: str, domain: str, password: str) -> None:
    """Create one account the ordinary way, ``prosodyctl register``.

    `compare` logs in with it beside a bulk-written account: proof that the
    files `provision_prosody` writes are what Prosody itself writes.
    """
    cfg = os.path.join(workdir, "prosody.cfg.lua")
    result = subprocess.run(["prosodyctl", "--config", cfg, "register", user, domain, password],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"prosodyctl register failed: {result.stdout.decode(errors='replace')}")


def ensure_prosody() -> None:
    """Install the Debian prosody package when `prosody` is not on PATH."""
    if shutil.which("prosody"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "prosody"], check=True, env=env, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- chatbx
CHATBX_CONFIG = """\
# generated by chatbx bench/xmppload/servers.py; loopback only
domains = ["{domain}"]
data_dir = "{data_dir}"
{top}
[listen]
c2s = "127.0.0.1:{port}"
c2s_tls = "127.0.0.1:{tls_port}"

[limits]
# every benchmark connection comes from 127.0.0.1 (default 100)
max_connections_per_ip = 20000

[log]
# as Prosody's config here: warnings only, no per-connection lines
level = "warn"
"""


def chatbx_commands() -> tuple[list[str], list[str]]:
    """How to run twistd and chatbxctl with this interpreter.

    The scripts beside the interpreter come first (a virtualenv that is not
    activated), then PATH; chatbxctl also runs as a module.
    """
    def script(name: str) -> Optional[str]:
        beside = os.path.join(os.path.dirname(sys.executable), name)
        return beside if os.access(beside, os.X_OK) else shutil.which(name)

    twistd = script("twistd")
    if twistd is None:
        raise RuntimeError("twistd not found: pip install -e . (Twisted) first")
    ctl = script("chatbxctl")
    ctl_cmd = [ctl] if ctl else [sys.executable, "-c", "from chatbx_server.cli import run; run()"]
    return [twistd], ctl_cmd


def write_chatbx_config(workdir: str, domain: str, port: int, tls_port: int,
                        s2s_port: Optional[int] = None, routes: Optional[dict[str, int]] = None,
                        modules: Optional[Sequence[str]] = None, database_url: Optional[str] = None) -> str:
    """The bench config; with `s2s_port`, federation on that port and static
    routes (domain -> loopback port) to the other servers; `modules` replaces
    the default module set, `database_url` the SQLite default."""
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    cfg = os.path.join(workdir, "chatbx.toml")
    top = ""
    if modules is not None:
        top += "modules = [" + ", ".join(f'"{m}"' for m in modules) + "]\n"
    if database_url:
        top += f'\n[database]\nurl = "{database_url}"\n'
    text = CHATBX_CONFIG.format(domain=domain, data_dir=os.path.join(workdir, "data"), port=port,
                                tls_port=tls_port, top=top)
    if s2s_port is not None:
        text = text.replace("[limits]", f's2s = "127.0.0.1:{s2s_port}"\n\n[limits]', 1)
        table = ", ".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in (routes or {}).items())
        text += f"\n[s2s]\nstatic_routes = {{ {table} }}\n"
    with open(cfg, "w") as fh:
        fh.write(text)
    return cfg


def upgrade_chatbx_database(cfg: str) -> None:
    """`chatbxctl db upgrade` (a PostgreSQL database does not upgrade itself)."""
    _, ctl = chatbx_commands()
    res = subprocess.run(ctl + ["--config", cfg, "db", "upgrade"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"chatbxctl db upgrade failed ({res.returncode}): {res.stdout.decode()[-2000:]}")


def provision_chatbx(cfg: str, domain: str, users: Sequence[str], password: str, workdir: str) -> float:
    """Create users through `chatbxctl user add --from-file`; returns seconds spent."""
    t0 = time.monotonic()
    path = os.path.join(workdir, "users.txt")
    with open(path, "w") as fh:
        for user in users:
            fh.write(f"{user}@{domain} {password}\n")
    _, ctl = chatbx_commands()
    res = subprocess.run(ctl + ["--config", cfg, "user", "add", "--from-file", path],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"chatbxctl user add failed ({res.returncode}): {res.stdout.decode()[-2000:]}")
    return time.monotonic() - t0


def start_chatbx(workdir: str, domain: str = "localhost", cpus: Optional[Sequence[int]] = None,
                 cfg: Optional[str] = None, port: int = 0, tls_port: int = 0) -> ServerHandle:
    """Start `twistd -n --pidfile= chatbx --config FILE` on free loopback ports."""
    if cfg is None:
        port, tls_port = port or free_port(), tls_port or free_port()
        cfg = write_chatbx_config(workdir, domain, port, tls_port)
    twistd, _ = chatbx_commands()
    log_path = os.path.join(workdir, "chatbx.log")
    out = open(log_path, "ab")
    proc = subprocess.Popen(twistd + ["-n", "--pidfile=", "--logfile", log_path, "chatbx", "--config", cfg],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=_preexec_pin(cpus), cwd=workdir)
    handle = ServerHandle("chatbx", proc, port, tls_port, domain, workdir, log_path, {"config": cfg})
    try:
        wait_port(port, proc, 60)
    except Exception as exc:
        handle.stop()
        raise RuntimeError(f"chatbx did not start: {exc}\n{handle.log_tail()}") from None
    return handle
