"""Accounts and their SCRAM credentials (RFC 5802, RFC 7677).

Passwords are never stored: only salt, iteration count, StoredKey and
ServerKey for SCRAM-SHA-1 and SCRAM-SHA-256. SASL PLAIN is checked by
re-deriving the SHA-256 keys. PBKDF2 is slow on purpose, so it runs on a
:class:`HashPool` of its own: never on the reactor, and never inside a
transaction, where it would hold the database thread (SQLite has only one)
and stall every roster and offline read behind a flood of logins. The
``_txn`` functions only read and write credentials.

JIDs arrive as already-prepared bare JID strings ``user@domain``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chatbx_server.c2s import scram
from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import StorageError, UnknownUser, UserExists
from chatbx_server.storage.schema import roster_versions, scram_credentials, users

__all__ = [
    "HashPool",
    "MECHANISMS",
    "ScramCredentials",
    "StorageError",
    "UnknownUser",
    "UserExists",
    "UserStore",
    "split_jid",
    "user_id_txn",
]

#: Hash names stored per account, with their SASL mechanism names.
MECHANISMS = {"SHA-1": "SCRAM-SHA-1", "SHA-256": "SCRAM-SHA-256"}
DEFAULT_ITERATIONS = 4096
#: hashing threads when the server configures none ([limits] hash_threads)
DEFAULT_HASH_THREADS = 2

T = TypeVar("T")


#: the SCRAM module's credentials type: one definition for store and server
ScramCredentials = scram.Credentials


def split_jid(jid: str) -> tuple[str, str]:
    """Split a prepared bare JID into (localpart, domain).

    A localpart cannot contain '@' (RFC 7622 §3.3.1), so the first '@' is
    the separator.

    Raises:
        ValueError: not a bare JID with a localpart.
    """
    username, sep, domain = jid.partition("@")
    if not sep or not username or not domain or "/" in domain:
        raise ValueError(f"not a bare user JID: {jid!r}")
    return username, domain


#: built once: every store looks the account up, and building a select
#: costs more than running it on SQLite; values are bound per call
_USER_ID = sa.select(users.c.id).where(users.c.username == sa.bindparam("username"),
                                       users.c.domain == sa.bindparam("domain"))
_USER_ID_FOR_UPDATE = _USER_ID.with_for_update()


def user_id_txn(conn: Connection, jid: str, *, for_update: bool = False) -> int:
    """The users.id of a local account.

    Args:
        for_update: lock the account row (PostgreSQL) so per-user
            read-then-write sequences in other stores are serialized.

    Raises:
        UnknownUser: no such account.
    """
    username, domain = split_jid(jid)
    query = _USER_ID_FOR_UPDATE if for_update else _USER_ID
    user_id = conn.execute(query, {"username": username, "domain": domain}).scalar()
    if user_id is None:
        raise UnknownUser(jid)
    return int(user_id)


def _normalise_mechanism(mechanism: str) -> str:
    """Accept 'SHA-256', 'SCRAM-SHA-256' and 'SCRAM-SHA-256-PLUS' alike."""
    name = mechanism.upper()
    if name.startswith("SCRAM-"):
        name = name[len("SCRAM-"):]
    if name.endswith("-PLUS"):
        name = name[: -len("-PLUS")]
    return name


def derive_credentials(
    password: str, iterations: int = DEFAULT_ITERATIONS
) -> dict[str, ScramCredentials]:
    """SCRAM credentials for every stored mechanism (slow: PBKDF2).

    Raises:
        ValueError: the password is refused by SASLprep.
    """
    return {name: scram.derive_credentials(name, password, iterations=iterations)
            for name in MECHANISMS}


def _insert_credentials_txn(
    conn: Connection, user_id: int, creds: dict[str, ScramCredentials]
) -> None:
    conn.execute(
        sa.insert(scram_credentials),
        [
            {
                "user_id": user_id,
                "mechanism": name,
                "salt": c.salt,
                "iterations": c.iterations,
                "stored_key": c.stored_key,
                "server_key": c.server_key,
            }
            for name, c in creds.items()
        ],
    )


def _parse_new_users(jids: Iterable[str]) -> list[tuple[str, str, str]]:
    """(jid, localpart, domain) of each; UserExists for a JID given twice."""
    seen: set[str] = set()
    parsed = []
    for jid in jids:
        username, domain = split_jid(jid)
        if jid in seen:
            raise UserExists(jid)
        seen.add(jid)
        parsed.append((jid, username, domain))
    return parsed


def check_new_users_txn(conn: Connection, jids: list[str]) -> None:
    """Refuse bad, repeated or existing JIDs before any password is hashed.

    Raises:
        ValueError: not a bare user JID.
        UserExists: naming the first JID that already exists (or repeats).
    """
    for jid, username, domain in _parse_new_users(jids):
        found = conn.execute(
            sa.select(users.c.id).where(users.c.username == username, users.c.domain == domain)
        ).first()
        if found is not None:
            raise UserExists(jid)


def create_users_txn(
    conn: Connection, accounts: list[tuple[str, dict[str, ScramCredentials]]], now: float
) -> int:
    """Insert accounts with their (already derived) credentials; all or nothing.

    Raises:
        UserExists: naming the first JID that already exists (or repeats).
    """
    jids = [jid for jid, _ in accounts]
    # Check first so the error names the JID; the unique constraint still
    # guards against a concurrent insert.
    check_new_users_txn(conn, jids)
    for (jid, username, domain), (_, creds) in zip(_parse_new_users(jids), accounts):
        try:
            # A single-row INSERT always has a primary key row (SQLAlchemy
            # types it Optional for executemany).
            user_id = cast("sa.Row[Any]", conn.execute(
                sa.insert(users).values(username=username, domain=domain, created_at=now)
            ).inserted_primary_key)[0]
        except IntegrityError as exc:
            raise UserExists(jid) from exc
        conn.execute(sa.insert(roster_versions).values(user_id=user_id, version=0))
        _insert_credentials_txn(conn, user_id, creds)
    return len(accounts)


def set_credentials_txn(conn: Connection, jid: str, creds: dict[str, ScramCredentials]) -> None:
    """Replace an account's credentials. Raises UnknownUser."""
    user_id = user_id_txn(conn, jid)
    conn.execute(sa.delete(scram_credentials).where(scram_credentials.c.user_id == user_id))
    _insert_credentials_txn(conn, user_id, creds)


def delete_user_txn(conn: Connection, jid: str) -> bool:
    """Delete an account and all its data, without a tombstone.

    The one place accounts are removed is storage/accounts.py
    (``delete_account_txn``); this is its shortcut for callers that do not
    keep the name reserved.
    """
    from chatbx_server.storage.accounts import delete_account_txn

    return delete_account_txn(conn, jid, 0.0, None) is not None


def user_exists_txn(conn: Connection, jid: str) -> bool:
    """Whether the account exists."""
    try:
        user_id_txn(conn, jid)
    except UnknownUser:
        return False
    return True


def list_users_txn(conn: Connection, domain: str | None) -> list[str]:
    """Every account's bare JID (optionally of one domain), sorted."""
    query = sa.select(users.c.username, users.c.domain)
    if domain is not None:
        query = query.where(users.c.domain == domain)
    # Sort in Python: database collations differ between backends.
    return sorted(f"{u}@{d}" for u, d in conn.execute(query))


_CREDENTIALS = (
    sa.select(
        scram_credentials.c.salt,
        scram_credentials.c.iterations,
        scram_credentials.c.stored_key,
        scram_credentials.c.server_key,
    )
    .select_from(scram_credentials.join(users))
    .where(
        users.c.username == sa.bindparam("username"),
        users.c.domain == sa.bindparam("domain"),
        scram_credentials.c.mechanism == sa.bindparam("mechanism"),
    )
)


def get_credentials_txn(conn: Connection, jid: str, mechanism: str) -> ScramCredentials | None:
    """The stored SCRAM credentials, or None (no account / mechanism)."""
    try:
        username, domain = split_jid(jid)
    except ValueError:
        return None
    row = conn.execute(_CREDENTIALS, {"username": username, "domain": domain,
                                      "mechanism": _normalise_mechanism(mechanism)}).first()
    if row is None:
        return None
    return ScramCredentials(bytes(row.salt), int(row.iterations), bytes(row.stored_key),
                            bytes(row.server_key))


def verify_plain(creds: ScramCredentials | None, password: str, iterations: int) -> bool:
    """Whether ``password`` matches SCRAM-SHA-256 credentials (slow: PBKDF2).

    For an unknown account (None) the same PBKDF2 work is spent on a decoy
    with the iteration count new accounts get, so the answer time does not
    tell which accounts exist.
    """
    if creds is None:
        decoy = scram.Credentials(b"\0" * scram.SALT_LENGTH, iterations, b"", b"")
        scram.verify_password(decoy, "SHA-256", password)
        return False
    return scram.verify_password(creds, "SHA-256", password)


def _derive_all(passwords: list[str], iterations: int) -> list[dict[str, ScramCredentials]]:
    return [derive_credentials(password, iterations) for password in passwords]


class HashPool:
    """The threads PBKDF2 runs on: apart from the reactor and the database.

    A few threads (``[limits] hash_threads``) bound how much CPU a flood
    of PLAIN logins takes, while the database thread keeps serving
    everybody else. Results come back through ``reactor.callFromThread``.

    Args:
        threads: most hashes computed at once.
        reactor: delivers results (the global reactor when None).
        threadless: hash at once in the caller and return a fired
            Deferred (unit tests and chatbxctl, which run no reactor).
    """

    def __init__(self, threads: int = DEFAULT_HASH_THREADS, reactor: Any = None, *,
                 threadless: bool = False) -> None:
        self.threads = threads
        self.threadless = threadless
        self._reactor = reactor
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = False

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """``fn(*args)`` on a hashing thread; a Deferred of its result."""
        if self.threadless:
            try:
                return defer.succeed(fn(*args))
            except Exception:
                return defer.fail()
        if self._stopped:
            return defer.fail(StorageError("password hashing stopped"))
        if self._executor is None:
            # Threads start on first use and end with the process at the latest.
            self._executor = ThreadPoolExecutor(max_workers=self.threads,
                                                thread_name_prefix="chatbx-hash")
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        d: Deferred[T] = Deferred()

        def done(future: Future[T]) -> None:
            try:
                result = future.result()
            except BaseException as exc:  # CancelledError at shutdown included
                reactor.callFromThread(d.errback, Failure(exc))
            else:
                reactor.callFromThread(d.callback, result)

        self._executor.submit(fn, *args).add_done_callback(done)
        return d

    def stop(self) -> None:
        """Drop queued hashes and wait for the running ones."""
        self._stopped = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class UserStore:
    """Account storage for SASL, registration and the operator CLI.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for creation times (``time.time`` if None).
        iterations: PBKDF2 iteration count for new credentials (>= 4096).
    """

    def __init__(self, db: Database, clock: Any = None, *,
                 iterations: int = DEFAULT_ITERATIONS, hasher: HashPool | None = None) -> None:
        self.db = db
        self._now: Callable[[], float] = now_function(clock)
        self.iterations = iterations
        #: where passwords are hashed; the server replaces it with one of
        #: ``[limits] hash_threads`` threads
        self.hasher = hasher if hasher is not None else HashPool(
            DEFAULT_HASH_THREADS, db.reactor, threadless=db.threadless)

    def create(self, jid: str, password: str) -> Deferred[None]:
        """Create one account. Fails with UserExists."""
        return self.create_many([(jid, password)]).addCallback(lambda _: None)

    def create_many(self, pairs: Iterable[tuple[str, str]]) -> Deferred[int]:
        """Create many accounts in one transaction; all or nothing.

        The JIDs are checked first, then the passwords hashed (off the
        database thread), then everything written in one transaction.

        Returns:
            the number created. Fails with UserExists naming a JID that
            exists already; then nothing is written. ValueError: a JID that
            is not a bare user JID, or a password SASLprep refuses.
        """
        pairs = list(pairs)
        jids = [jid for jid, _ in pairs]

        def hash_all(_: None) -> Deferred[list[dict[str, ScramCredentials]]]:
            return self.hasher.run(_derive_all, [pw for _, pw in pairs], self.iterations)

        def write(creds: list[dict[str, ScramCredentials]]) -> Deferred[int]:
            return self.db.run("users.create_many", create_users_txn,
                               list(zip(jids, creds)), self._now())

        d = self.db.run("users.check_new", check_new_users_txn, jids)
        return d.addCallback(hash_all).addCallback(write)

    def set_password(self, jid: str, password: str) -> Deferred[None]:
        """Replace the credentials. Fails with UnknownUser."""
        d = self.hasher.run(derive_credentials, password, self.iterations)
        return d.addCallback(
            lambda creds: self.db.run("users.set_password", set_credentials_txn, jid, creds))

    def delete(self, jid: str) -> Deferred[bool]:
        """Delete the account and all its data; False if there was none."""
        return self.db.run("users.delete", delete_user_txn, jid)

    def exists(self, jid: str) -> Deferred[bool]:
        """Whether the account exists."""
        return self.db.run("users.exists", user_exists_txn, jid)

    def list_users(self, domain: str | None = None) -> Deferred[list[str]]:
        """Sorted bare JIDs of all accounts, or of one domain."""
        return self.db.run("users.list", list_users_txn, domain)

    def get_credentials(self, jid: str, mechanism: str) -> Deferred[ScramCredentials | None]:
        """SCRAM credentials for 'SHA-1' or 'SHA-256' (SCRAM- names accepted)."""
        return self.db.run("users.get_credentials", get_credentials_txn, jid, mechanism)

    def check_password(self, jid: str, password: str) -> Deferred[bool]:
        """Check a plaintext password (SASL PLAIN); False for unknown users.

        The transaction only reads the credentials; the hashing runs after
        it, on the hash pool.
        """
        d = self.db.run("users.check_password", get_credentials_txn, jid, "SHA-256")
        return d.addCallback(
            lambda creds: self.hasher.run(verify_plain, creds, password, self.iterations))


def now_function(clock: Any) -> Callable[[], float]:
    """``clock.seconds`` for an injected IReactorTime, else ``time.time``."""
    return time.time if clock is None else clock.seconds
