"""chatbxctl: the operator's command line (accounts, schema, certificates, config).

Runs without a reactor: the stores are used through a threadless Database
whose Deferreds have already fired when ``run`` returns, so each command is
plain synchronous code. Every failure is one line on stderr
(``chatbxctl: error: ...``) and exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatbx_server.config import Config, ConfigError, load_config, prepare_domain

__all__ = ["CLIError", "main", "run"]

PROG = "chatbxctl"
T = TypeVar("T")


class CLIError(Exception):
    """A failure reported as one line, exit code 1."""

    exit_code = 1


class UsageError(CLIError):
    """Arguments that do not make a command (exit code 2, like argparse)."""

    exit_code = 2


# --- helpers ------------------------------------------------------------------

def _result(d: Deferred[T]) -> T:
    """The value of an already-fired Deferred (threadless Database)."""
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise CLIError("internal error: database call did not complete synchronously")
    value = box[0]
    if isinstance(value, Failure):
        value.raiseException()
    return value


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _user_jid(text: str, config: Config) -> str:
    """A prepared bare user JID on a configured domain, or CLIError."""
    from chatbx_server.xmpp.jid import JID, InvalidJID

    try:
        jid = JID.parse(text.strip())
    except InvalidJID as exc:
        raise CLIError(f"invalid JID {text!r}: {exc}") from None
    if not jid.user or jid.resource:
        raise CLIError(f"not a bare user JID (user@domain): {text!r}")
    _check_domain(jid.host, config)
    return jid.bare


def _check_domain(domain: str, config: Config) -> None:
    if domain not in config.domains:
        raise CLIError(f"unknown domain {domain} (configured: {', '.join(config.domains)})")


def _first_line(text: str) -> str:
    """The first line without its line ending (other spaces belong to the password)."""
    return text.splitlines()[0] if text else ""


def _read_password(args: argparse.Namespace) -> str:
    """The password from --password, --password-file, --password-stdin, or
    typed twice without echo (the default)."""
    if args.password is not None:
        password = args.password
    elif args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as fh:
                password = _first_line(fh.readline())
        except OSError as exc:
            raise CLIError(f"cannot read {args.password_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CLIError(f"cannot read {args.password_file}: not UTF-8 text") from None
    elif args.password_stdin:
        password = _first_line(sys.stdin.readline())
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Repeat password: ")
        except (EOFError, KeyboardInterrupt):
            raise CLIError("no password given") from None
        if password != again:
            raise CLIError("passwords do not match")
    if not password:
        raise CLIError("empty password refused")
    return password


def _password_given(args: argparse.Namespace) -> bool:
    return (args.password is not None or args.password_file is not None
            or args.password_stdin)


class _Context:
    """What a command needs: the config, and the database opened on demand."""

    def __init__(self, config: Config, out: TextIO):
        self.config = config
        self.out = out
        self._db: Any = None

    @property
    def url(self) -> str:
        return self.config.database_url

    def database(self) -> Any:
        """A threadless Database with the schema checked (SQLite upgrades itself)."""
        if self._db is None:
            from chatbx_server.storage import Database

            self._ensure_schema()
            self._db = Database(self.url, threadless=True)
        return self._db

    def stores(self) -> Any:
        from chatbx_server.storage import Stores

        return Stores(self.database())

    def _ensure_schema(self) -> None:
        from chatbx_server.storage import migrate

        state = str(migrate.check(self.url))
        if state == "current":
            return
        if state == "ahead":
            raise CLIError("database schema is newer than this chatbx "
                           f"(revision {migrate.current(self.url)}); upgrade chatbx")
        if self.url.startswith("sqlite"):
            migrate.upgrade(self.url)  # the SQLite default upgrades itself
            return
        raise CLIError("database schema is behind; run: chatbxctl db upgrade")

    def close(self) -> None:
        if self._db is not None:
            self._db.stop()
            self._db = None


# --- commands -----------------------------------------------------------------

def cmd_db_upgrade(ctx: _Context, args: argparse.Namespace) -> None:
    from chatbx_server.storage import migrate

    state = str(migrate.check(ctx.url))
    if state == "ahead":
        raise CLIError("database schema is newer than this chatbx "
                       f"(revision {migrate.current(ctx.url)}); upgrade chatbx")
    head = migrate.head()
    if state == "current":
        print(f"database already at {head}", file=ctx.out)
        return
    migrate.upgrade(ctx.url)
    print(f"database upgraded to {head}", file=ctx.out)


def cmd_db_current(ctx: _Context, args: argparse.Namespace) -> None:
    from chatbx_server.storage import migrate

    state = str(migrate.check(ctx.url))
    current = migrate.current(ctx.url)
    head = migrate.head()
    status = {
        "current": "up to date",
        "behind": "behind; run: chatbxctl db upgrade",
        "empty": "empty; run: chatbxctl db upgrade",
        "ahead": "ahead of this chatbx (written by a newer version)",
    }[state]
    print(f"current: {current or 'none'}", file=ctx.out)
    print(f"head:    {head}", file=ctx.out)
    print(f"status:  {status}", file=ctx.out)


def cmd_user_add(ctx: _Context, args: argparse.Namespace) -> None:
    if args.from_file is not None:
        if args.jid is not None or _password_given(args):
            raise UsageError("user add: --from-file takes no JID or password option")
        _bulk_add(ctx, args.from_file)
        return
    if args.jid is None:
        raise UsageError("user add: give a JID or --from-file FILE")
    jid = _user_jid(args.jid, ctx.config)
    password = _read_password(args)
    from chatbx_server.storage import UserExists

    try:
        _result(ctx.stores().users.create(jid, password))
    except UserExists:
        raise CLIError(f"user already exists: {jid}") from None
    print(f"added {jid}", file=ctx.out)


def _bulk_lines(name: str) -> Iterable[tuple[int, str]]:
    if name == "-":
        return enumerate(sys.stdin.read().splitlines(), 1)
    try:
        with open(name, encoding="utf-8") as fh:
            return enumerate(fh.read().splitlines(), 1)
    except OSError as exc:
        raise CLIError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CLIError(f"cannot read {name}: not UTF-8 text") from None


def _bulk_add(ctx: _Context, name: str) -> None:
    """Validate every line first, then create all accounts in one transaction."""
    label = "<stdin>" if name == "-" else name
    pairs: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    for lineno, raw in _bulk_lines(name):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise CLIError(f"{label}:{lineno}: expected 'JID PASSWORD'")
        try:
            jid = _user_jid(parts[0], ctx.config)
        except CLIError as exc:
            raise CLIError(f"{label}:{lineno}: {exc}") from None
        if jid in first_line:
            raise CLIError(f"{label}:{lineno}: duplicate JID {jid} "
                           f"(first on line {first_line[jid]})")
        first_line[jid] = lineno
        pairs.append((jid, parts[1]))
    if not pairs:
        raise CLIError(f"{label}: no users found")
    from chatbx_server.storage import UserExists

    try:
        count = _result(ctx.stores().users.create_many(pairs))
    except UserExists as exc:
        dup_line = first_line.get(exc.jid)
        where = f"{label}:{dup_line}" if dup_line else label
        raise CLIError(f"{where}: user already exists: {exc.jid} (no users added)") from None
    print(f"added {count} users", file=ctx.out)


def cmd_user_passwd(ctx: _Context, args: argparse.Namespace) -> None:
    jid = _user_jid(args.jid, ctx.config)
    stores = ctx.stores()
    if not _result(stores.users.exists(jid)):
        raise CLIError(f"unknown user {jid}")
    password = _read_password(args)
    from chatbx_server.storage import UnknownUser

    try:
        _result(stores.users.set_password(jid, password))
    except UnknownUser:
        raise CLIError(f"unknown user {jid}") from None
    print(f"password changed for {jid}", file=ctx.out)


def cmd_user_delete(ctx: _Context, args: argparse.Namespace) -> None:
    """All data goes in one transaction (storage/accounts.py), the name stays
    reserved for [registration] tombstone_period; a running server closes
    the sessions within its poll interval."""
    from chatbx_server.accounts import remove_upload_files

    jid = _user_jid(args.jid, ctx.config)
    deleted = _result(ctx.stores().accounts.delete(
        jid, ctx.config.registration.tombstone_period))
    if deleted is None:
        raise CLIError(f"unknown user {jid}")
    if deleted.upload_slots:
        remove_upload_files(ctx.config, deleted.upload_slots)
    print(f"deleted {jid}", file=ctx.out)


def _set_disabled(ctx: _Context, args: argparse.Namespace, disabled: bool) -> None:
    from chatbx_server.storage import UnknownUser

    jid = _user_jid(args.jid, ctx.config)
    try:
        _result(ctx.stores().accounts.set_disabled(jid, disabled))
    except UnknownUser:
        raise CLIError(f"unknown user {jid}") from None
    print(f"{'disabled' if disabled else 'enabled'} {jid}", file=ctx.out)


def cmd_user_disable(ctx: _Context, args: argparse.Namespace) -> None:
    _set_disabled(ctx, args, True)


def cmd_user_enable(ctx: _Context, args: argparse.Namespace) -> None:
    _set_disabled(ctx, args, False)


def invite_url(config: Config, invite: Any) -> str:
    """The landing page of an invite (XEP-0401 §5: an https link that shows
    the xmpp: URI)."""
    from chatbx_server.http.invites import landing_url

    return landing_url(config, invite.domain, invite.token)


def cmd_invite_create(ctx: _Context, args: argparse.Namespace) -> None:
    config = ctx.config
    stores = ctx.stores()
    lifetime = (args.days * 86400.0 if args.days is not None
                else config.registration.invite_lifetime)
    if args.contact is not None:
        creator = _user_jid(args.contact, config)
        if not _result(stores.users.exists(creator)):
            raise CLIError(f"unknown user {creator}")
        domain = creator.split("@", 1)[1]
        invite = _result(stores.invites.create(domain, "contact", lifetime, creator=creator))
    else:
        domain = args.domain or config.domains[0]
        try:
            domain = prepare_domain(domain)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        _check_domain(domain, config)
        username = None
        if args.username:
            from chatbx_server.config import prepare_localpart

            try:
                username = prepare_localpart(args.username)
            except ValueError:
                raise CLIError(f"invalid username {args.username!r}") from None
        invite = _result(stores.invites.create(domain, "account", lifetime, username=username,
                                               admin=args.admin))
    print(invite_url(config, invite), file=ctx.out)


def cmd_invite_list(ctx: _Context, args: argparse.Namespace) -> None:
    import time

    for inv in _result(ctx.stores().invites.list()):
        left = max(0, int((inv.expires_at - time.time()) / 3600))
        what = f"contact of {inv.creator}" if inv.creator else "account"
        extra = (" admin" if inv.admin else "") + (f" name={inv.username}" if inv.username else "")
        print(f"{inv.token}  {inv.domain}  {what}{extra}  expires in {left} h", file=ctx.out)


def cmd_invite_revoke(ctx: _Context, args: argparse.Namespace) -> None:
    if not _result(ctx.stores().invites.delete(args.token)):
        raise CLIError("no such invite")
    print("revoked", file=ctx.out)


def cmd_user_list(ctx: _Context, args: argparse.Namespace) -> None:
    domain = None
    if args.domain is not None:
        try:
            domain = prepare_domain(args.domain)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        _check_domain(domain, ctx.config)
    for jid in _result(ctx.stores().users.list_users(domain)):
        print(jid, file=ctx.out)


def cmd_reports_list(ctx: _Context, args: argparse.Namespace) -> None:
    """XEP-0377 spam/abuse reports users sent with a block, newest first."""
    import json
    import time

    reporter = _user_jid(args.reporter, ctx.config) if args.reporter else None
    if args.limit < 1:
        raise UsageError("reports list: --limit must be at least 1")
    for r in _result(ctx.stores().blocking.list_reports(args.limit, reporter)):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created_at))
        ids = " ".join(f"{by}#{sid}" for by, sid in r.stanza_ids)
        text = json.dumps(r.text, ensure_ascii=False) if r.text else "-"
        print(f"{when}\t{r.reporter}\t{r.jid}\t{r.reason}\t{text}\t{ids or '-'}", file=ctx.out)


def cmd_cert_generate(ctx: _Context, args: argparse.Namespace) -> None:
    from chatbx_server import tls

    try:
        domain = prepare_domain(args.domain)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    cert_path, key_path = tls.self_signed_paths(ctx.config, domain)
    existing = [p for p in (cert_path, key_path) if os.path.exists(p)]
    if existing and not args.force:
        raise CLIError(f"{existing[0]} exists; use --force to replace it")
    tls.generate_self_signed(domain, cert_path, key_path, days=args.days)
    print(f"certificate: {cert_path}", file=ctx.out)
    print(f"key:         {key_path}", file=ctx.out)
    print(f"SHA-256:     {tls.certificate_fingerprint(cert_path)}", file=ctx.out)


def cmd_config_check(ctx: _Context, args: argparse.Namespace) -> None:
    config = ctx.config
    from chatbx_server import features

    try:
        features.validate_module_options(config)  # ConfigError names modules.<name>.<key>
    except ImportError as exc:
        raise CLIError(f"cannot load an enabled module: {exc}") from None
    # Operator-supplied certificates must exist, load and match their keys;
    # generated ones are created at start, so they are not required here.
    from chatbx_server import tls

    pairs = {d: (e.certificate, e.key) for d, e in config.tls.domains.items()}
    if config.tls.certificate and config.tls.key:
        pairs.setdefault("*", (config.tls.certificate, config.tls.key))
    for domain, (cert, key) in pairs.items():
        keyname = "tls" if domain == "*" else f'tls.domains."{domain}"'
        for label, file in (("certificate", cert), ("key", key)):
            if not os.path.isfile(file):
                raise ConfigError(f"file not found: {file}", f"{keyname}.{label}", config.path)
        tls.TLSContexts({domain: (cert, key)})
    where = config.path or "built-in defaults"
    print(f"configuration OK: {where} (domains: {', '.join(config.domains)})", file=ctx.out)


def cmd_s2s_status(ctx: _Context, args: argparse.Namespace) -> None:
    """Print the federation streams of the running server (its status file)."""
    import json

    from chatbx_server.s2s.manager import STATUS_FILE

    path = os.path.join(ctx.config.data_dir, STATUS_FILE)
    try:
        with open(path) as fh:
            status = json.load(fh)
    except FileNotFoundError:
        raise CLIError(f"no {path}: the server is not running with an s2s port, "
                       "or has not started yet") from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {path}: {exc}") from None
    if args.json:
        print(json.dumps(status, indent=1), file=ctx.out)
        return
    state = "running" if status.get("running") else "stopped"
    print(f"s2s {state}; updated {status.get('updated')}", file=ctx.out)
    outgoing = status.get("outgoing", [])
    print(f"outgoing ({len(outgoing)}):", file=ctx.out)
    for e in outgoing:
        extra = e.get("auth") or e.get("error") or ""
        if e.get("bidi"):
            extra += "  bidi" + (" (their stream)" if e.get("via") == "incoming" else "")
        print(f"  {e.get('local')} -> {e.get('remote')}  {e.get('state')}  {extra}  "
              f"queued={e.get('queued', 0)}".rstrip(), file=ctx.out)
    incoming = status.get("incoming", [])
    print(f"incoming ({len(incoming)}):", file=ctx.out)
    for e in incoming:
        remote = ",".join(e.get("remote") or []) or "?"
        print(f"  {remote} -> {e.get('local')}  {e.get('auth') or 'unauthenticated'}  "
              f"{'bidi  ' if e.get('bidi') else ''}{e.get('peer', '')}", file=ctx.out)


def cmd_cluster_status(ctx: _Context, args: argparse.Namespace) -> None:
    """Print the nodes of the cluster ([cluster] redis) and their sessions."""
    import json

    from chatbx_server.cluster.redis import parse_redis_url
    from chatbx_server.cluster.status import cluster_status

    cluster = ctx.config.cluster
    if cluster is None:
        raise CLIError("no [cluster] section: this is a single node")
    try:
        nodes = cluster_status(parse_redis_url(cluster.redis))
    except (OSError, RuntimeError, ValueError) as exc:
        raise CLIError(f"cannot read the cluster from redis: {_one_line(exc)}") from None
    if args.json:
        print(json.dumps(nodes, indent=1), file=ctx.out)
        return
    print(f"{len(nodes)} nodes, {sum(1 for n in nodes if n['live'])} live", file=ctx.out)
    for n in nodes:
        state = "live" if n["live"] else "dead"
        print(f"  {n['node']}  {state}  sessions={n['sessions']}  inbox={n['inbox']}  "
              f"heartbeat {n['heartbeat_age']}s ago", file=ctx.out)


def _upload_files(ctx: _Context) -> Any:
    from chatbx_server.features import build_module_options
    from chatbx_server.features.upload import UploadFeature
    from chatbx_server.storage.upload import UploadFiles

    options = build_module_options(UploadFeature, ctx.config)
    return options, UploadFiles(os.path.abspath(
        options.store_dir or os.path.join(ctx.config.data_dir, "uploads")))


def cmd_upload_usage(ctx: _Context, args: argparse.Namespace) -> None:
    jid = _user_jid(args.jid, ctx.config) if args.jid else None
    rows = _result(ctx.stores().upload.usage(jid))
    if jid is not None and not rows:
        print(f"{jid}: no uploads", file=ctx.out)
        return
    print(f"{'uploader':40} {'files':>7} {'bytes':>14} {'last 24h':>14}", file=ctx.out)
    for row in rows:
        print(f"{row.uploader:40} {row.files:>7} {row.bytes:>14} {row.bytes_today:>14}",
              file=ctx.out)


def cmd_upload_purge(ctx: _Context, args: argparse.Namespace) -> None:
    import time

    from chatbx_server.features.upload import UNUSED_GRACE

    options, files = _upload_files(ctx)
    store = ctx.stores().upload
    total = 0
    jid = _user_jid(args.user, ctx.config) if args.user else None
    while True:
        if jid is not None:
            slots = _result(store.of_uploader(jid, options.purge_batch))
        else:
            before = time.time() - options.slot_lifetime - UNUSED_GRACE
            slots = _result(store.due(before, options.purge_batch))
        if not slots:
            break
        files.remove(slots)
        total += _result(store.delete(slots))
    what = f"of {jid}" if jid else "expired"
    print(f"deleted {total} {what} uploads", file=ctx.out)
def _room_jid(text: str) -> str:
    from chatbx_server.xmpp.jid import InvalidJID, JID

    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise CLIError(f"not a room JID: {text!r} ({exc})") from None
    if jid.user is None or jid.resource is not None:
        raise CLIError(f"not a room JID: {text!r} (room@service)")
    return jid.bare


def cmd_room_list(ctx: _Context, args: argparse.Namespace) -> None:
    """Stored (persistent) rooms; temporary rooms live only in the server."""
    for room in _result(ctx.stores().muc.list_rooms()):
        config = room["config"]
        flags = ",".join(flag for flag, on in (
            ("public", config.get("public", True)), ("hidden", not config.get("public", True)),
            ("members-only", config.get("members_only")), ("password", config.get("password")),
            ("moderated", config.get("moderated")),
            ("non-anonymous", config.get("whois") == "anyone")) if on)
        print(f"{room['jid']}\t{flags}\t{room['affiliations']} affiliations\t"
              f"{room['messages']} messages", file=ctx.out)


def cmd_room_show(ctx: _Context, args: argparse.Namespace) -> None:
    jid = _room_jid(args.jid)
    rooms = [r for r in _result(ctx.stores().muc.list_rooms()) if r["jid"] == jid]
    if not rooms:
        raise CLIError(f"unknown room {jid}")
    room = rooms[0]
    import time as _time

    print(f"room:         {jid}", file=ctx.out)
    print(f"created:      {_time.strftime('%Y-%m-%d %H:%M:%S', _time.gmtime(room['created_at']))} "
          f"UTC by {room['creator'] or '?'}", file=ctx.out)
    print(f"subject:      {room['subject'] or ''}", file=ctx.out)
    print(f"messages:     {room['messages']}", file=ctx.out)
    for key, value in sorted(room["config"].items()):
        if key == "password":
            value = "(set)" if value else ""
        print(f"config.{key}: {value}", file=ctx.out)
    for who, affiliation in _result(ctx.stores().muc.affiliations(jid)):
        print(f"{affiliation}: {who}", file=ctx.out)


def cmd_room_destroy(ctx: _Context, args: argparse.Namespace) -> None:
    """Delete a stored room with its affiliations and archive. A running
    server that has the room loaded keeps it until it restarts (destroy it
    from a client as its owner to tell the occupants)."""
    jid = _room_jid(args.jid)
    if not _result(ctx.stores().muc.delete_room(jid)):
        raise CLIError(f"unknown room {jid}")
    print(f"destroyed {jid}", file=ctx.out)


def _utc(seconds: float) -> str:
    import time as _time

    return _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(seconds))


def cmd_fast_list(ctx: _Context, args: argparse.Namespace) -> None:
    """An account's FAST tokens (XEP-0484) by device; never the tokens themselves."""
    import time as _time

    from chatbx_server.storage.errors import UnknownUser

    jid = _user_jid(args.jid, ctx.config)
    try:
        tokens = _result(ctx.stores().fast.list(jid))
    except UnknownUser:
        raise CLIError(f"unknown user {jid}") from None
    for t in tokens:
        state = "expired" if t.expires_at <= _time.time() else t.slot
        print(f"{t.device}\t{state}\t{t.mechanism}\tissued {_utc(t.issued_at)} UTC\t"
              f"expires {_utc(t.expires_at)} UTC\t{t.label or ''}", file=ctx.out)


def cmd_fast_revoke(ctx: _Context, args: argparse.Namespace) -> None:
    """Invalidate FAST tokens now: new logins and resumptions with them
    fail; the device falls back to its password."""
    from chatbx_server.storage.errors import UnknownUser

    jid = _user_jid(args.jid, ctx.config)
    try:
        count = _result(ctx.stores().fast.revoke(jid, args.device))
    except UnknownUser:
        raise CLIError(f"unknown user {jid}") from None
    if args.device is not None and not count:
        raise CLIError(f"no FAST tokens for device {args.device!r} of {jid}")
    what = f"device {args.device}" if args.device is not None else "all devices"
    print(f"revoked {count} FAST tokens of {jid} ({what})", file=ctx.out)


# --- argument parsing -----------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Operate a chatbx XMPP server: accounts, database, certificates.")
    parser.add_argument("--config", "-c", metavar="FILE",
                        default=os.environ.get("CHATBX_CONFIG"),
                        help="TOML configuration file (default: $CHATBX_CONFIG, "
                             "else built-in defaults)")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)

    def group(name: str, help_text: str) -> Any:
        sub = groups.add_parser(name, help=help_text)
        return sub.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(subs: Any, name: str, fn: Callable[..., None], help_text: str) -> Any:
        p = subs.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    db = group("db", "database schema")
    command(db, "upgrade", cmd_db_upgrade, "apply every pending schema migration")
    command(db, "current", cmd_db_current, "show the database's revision and the newest one")

    user = group("user", "accounts")
    p = command(user, "add", cmd_user_add, "create an account (or many with --from-file)")
    p.add_argument("jid", nargs="?", metavar="JID")
    _password_options(p)
    p.add_argument("--from-file", metavar="FILE",
                   help="lines 'JID PASSWORD' ('-' reads stdin); blank lines and # comments "
                        "skipped; all or nothing")
    p = command(user, "passwd", cmd_user_passwd, "change an account's password")
    p.add_argument("jid", metavar="JID")
    _password_options(p)
    p = command(user, "delete", cmd_user_delete, "delete an account and all its data")
    p.add_argument("jid", metavar="JID")
    p = command(user, "list", cmd_user_list, "list accounts")
    p.add_argument("domain", nargs="?", metavar="DOMAIN")
    p = command(user, "disable", cmd_user_disable,
                "refuse the account's logins and close its sessions")
    p.add_argument("jid", metavar="JID")
    p = command(user, "enable", cmd_user_enable, "allow a disabled account again")
    p.add_argument("jid", metavar="JID")

    invite = group("invite", "invites (XEP-0401): links that create accounts")
    p = command(invite, "create", cmd_invite_create,
                "print the link of a new single-use invite")
    p.add_argument("--domain", metavar="DOMAIN", help="hosted domain (default: the first)")
    p.add_argument("--username", metavar="NAME", help="the only username it may register")
    p.add_argument("--admin", action="store_true", help="the account it creates is an admin")
    p.add_argument("--contact", metavar="JID",
                   help="a contact invite of this user: the new account gets them on its "
                        "roster (XEP-0379)")
    p.add_argument("--days", type=float, metavar="N",
                   help="valid for N days (default: [registration] invite_lifetime)")
    command(invite, "list", cmd_invite_list, "list unexpired invites")
    p = command(invite, "revoke", cmd_invite_revoke, "delete an invite")
    p.add_argument("token", metavar="TOKEN")

    reports = group("reports", "spam and abuse reports (XEP-0377)")
    p = command(reports, "list", cmd_reports_list,
                "print reports, newest first: time, reporter, reported JID, reason, text, stanza-ids")
    p.add_argument("--limit", "-n", type=int, default=100, help="at most this many (default: 100)")
    p.add_argument("--reporter", metavar="JID", help="only the reports of this account")

    cert = group("cert", "TLS certificates")
    p = command(cert, "generate", cmd_cert_generate,
                "write a self-signed certificate into data_dir/certs")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--force", action="store_true", help="replace an existing certificate")
    p.add_argument("--days", type=int, default=3650, help="validity (default: 3650)")

    s2s = group("s2s", "federation")
    p = command(s2s, "status", cmd_s2s_status,
                "list the running server's incoming and outgoing s2s streams")
    p.add_argument("--json", action="store_true", help="print the status file as it is")
    upload = group("upload", "HTTP File Upload (XEP-0363) files")
    p = command(upload, "usage", cmd_upload_usage,
                "files and bytes stored per uploader (largest first)")
    p.add_argument("jid", nargs="?", metavar="JID")
    p = command(upload, "purge", cmd_upload_purge,
                "delete expired files and unused slots now (or every file of --user)")
    p.add_argument("--user", metavar="JID", help="delete every upload of this account")
    room = group("room", "group chat rooms (stored, persistent ones)")
    command(room, "list", cmd_room_list, "list stored rooms")
    p = command(room, "show", cmd_room_show, "show a room's configuration and affiliations")
    p.add_argument("jid", metavar="ROOM")
    p = command(room, "destroy", cmd_room_destroy,
                "delete a stored room, its affiliations and archive (a running server "
                "forgets it at its next start)")
    p.add_argument("jid", metavar="ROOM")

    cluster = group("cluster", "nodes sharing PostgreSQL and Redis ([cluster])")
    p = command(cluster, "status", cmd_cluster_status,
                "list the nodes, whether they are live, their sessions and inbox backlog")
    p.add_argument("--json", action="store_true", help="print the status as JSON")

    fast = group("fast", "FAST login tokens (XEP-0484)")
    p = command(fast, "list", cmd_fast_list, "list an account's FAST tokens per device")
    p.add_argument("jid", metavar="JID")
    p = command(fast, "revoke", cmd_fast_revoke,
                "invalidate an account's FAST tokens (of one device with --device)")
    p.add_argument("jid", metavar="JID")
    p.add_argument("--device", metavar="ID", help="the device (user-agent id) 'fast list' shows")

    config = group("config", "configuration")
    command(config, "check", cmd_config_check,
            "validate the configuration and every enabled module's options")
    return parser


def _password_options(parser: argparse.ArgumentParser) -> None:
    """--password / --password-file / --password-stdin; none: prompt twice."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password", "-p", metavar="PASSWORD",
                       help="the password itself; UNSAFE: other users of this machine "
                            "see it in the process list (ps) and it stays in your shell "
                            "history; prefer --password-file, --password-stdin or the prompt")
    group.add_argument("--password-file", metavar="FILE",
                       help="read the password from the first line of FILE")
    group.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    ctx: _Context | None = None
    try:
        ctx = _Context(load_config(args.config), sys.stdout)
        args.func(ctx, args)
        return 0
    except CLIError as exc:
        return _fail(str(exc), exc.exit_code)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as exc:
        return _fail(_describe_unexpected(exc, ctx))
    finally:
        if ctx is not None:
            try:
                ctx.close()
            except Exception:
                pass


def _describe_unexpected(exc: Exception, ctx: _Context | None) -> str:
    """One line for errors no command anticipated (database down, disk full)."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    url = _safe_url(ctx.url) if ctx is not None else "the database"
    if isinstance(exc, DBAPIError):
        return f"cannot use database {url}: {_one_line(exc)}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error ({url}): {_one_line(exc)}"
    if isinstance(exc, OSError):
        target = f" {exc.filename}" if exc.filename else ""
        return f"cannot access{target}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def run() -> None:
    """Console-script entry point (``chatbxctl``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
