"""Tests for UserStore: accounts and SCRAM credentials, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
import scramp
import sqlalchemy as sa

from chatbx_server.storage import Stores, schema
from chatbx_server.storage.blocking import SpamReport
from chatbx_server.storage.errors import UnknownUser, UserExists
from chatbx_server.storage.roster import RosterItem
from chatbx_server.storage.users import ScramCredentials, UserStore, split_jid


def test_split_jid() -> None:
    """The first '@' separates localpart and domain; non-user JIDs are refused."""
    assert split_jid("alice@example.org") == ("alice", "example.org")
    for bad in ("example.org", "@example.org", "alice@", "alice@example.org/res"):
        with pytest.raises(ValueError):
            split_jid(bad)


def test_create_and_exists(stores: Stores, result_of: Any) -> None:
    """A created account exists; others do not; its creation time is the clock's."""
    assert result_of(stores.users.create("alice@example.org", "secret")) is None
    assert result_of(stores.users.exists("alice@example.org")) is True
    assert result_of(stores.users.exists("bob@example.org")) is False
    assert result_of(stores.users.exists("alice@other.org")) is False
    created = result_of(stores.db.run("t", lambda c: c.execute(
        sa.select(schema.users.c.created_at)).scalar()))
    assert created == 1000.0


def test_create_twice_raises_user_exists(stores: Stores, result_of: Any) -> None:
    """Creating an existing account fails with UserExists naming it."""
    result_of(stores.users.create("alice@example.org", "secret"))
    with pytest.raises(UserExists) as info:
        result_of(stores.users.create("alice@example.org", "other"))
    assert info.value.jid == "alice@example.org"
    assert result_of(stores.users.check_password("alice@example.org", "secret"))


def test_create_many_is_all_or_nothing(stores: Stores, result_of: Any) -> None:
    """create_many writes every account, or none when one already exists."""
    assert result_of(stores.users.create_many(
        [("a@x.org", "pa"), ("b@x.org", "pb")])) == 2
    with pytest.raises(UserExists) as info:
        result_of(stores.users.create_many([("c@x.org", "pc"), ("b@x.org", "pb")]))
    assert info.value.jid == "b@x.org"
    assert result_of(stores.users.exists("c@x.org")) is False
    with pytest.raises(UserExists) as info:
        result_of(stores.users.create_many([("d@x.org", "1"), ("d@x.org", "2")]))
    assert info.value.jid == "d@x.org"
    assert result_of(stores.users.list_users()) == ["a@x.org", "b@x.org"]


def test_list_users_sorted_and_by_domain(stores: Stores, result_of: Any) -> None:
    """list_users returns sorted bare JIDs, optionally of one domain."""
    result_of(stores.users.create_many(
        [("zed@b.org", "p"), ("amy@b.org", "p"), ("bob@a.org", "p")]))
    assert result_of(stores.users.list_users()) == ["amy@b.org", "bob@a.org", "zed@b.org"]
    assert result_of(stores.users.list_users("b.org")) == ["amy@b.org", "zed@b.org"]
    assert result_of(stores.users.list_users("none.org")) == []


def test_credentials_are_valid_scram(stores: Stores, result_of: Any) -> None:
    """Stored SHA-1 and SHA-256 credentials are RFC 5802 keys of the password,
    and the password itself is not stored anywhere."""
    result_of(stores.users.create("alice@example.org", "pencil"))
    for mech, hash_name in (("SHA-1", "sha1"), ("SHA-256", "sha256")):
        creds = result_of(stores.users.get_credentials("alice@example.org", mech))
        assert isinstance(creds, ScramCredentials)
        assert creds.iterations == 4096
        salted = hashlib.pbkdf2_hmac(hash_name, b"pencil", creds.salt, creds.iterations)
        client_key = hmac.new(salted, b"Client Key", hash_name).digest()
        assert creds.stored_key == hashlib.new(hash_name, client_key).digest()
        assert creds.server_key == hmac.new(salted, b"Server Key", hash_name).digest()
    # SCRAM mechanism names are accepted too.
    assert result_of(stores.users.get_credentials("alice@example.org", "SCRAM-SHA-256-PLUS")) \
        == result_of(stores.users.get_credentials("alice@example.org", "SHA-256"))
    rows = result_of(stores.db.run("t", lambda c: [tuple(r) for r in c.execute(
        sa.select(schema.scram_credentials))]))
    assert len(rows) == 2
    assert not any(b"pencil" in bytes(v) for r in rows for v in r if isinstance(v, bytes))


def test_get_credentials_unknown(stores: Stores, result_of: Any) -> None:
    """No credentials for unknown users or mechanisms."""
    result_of(stores.users.create("alice@example.org", "pencil"))
    assert result_of(stores.users.get_credentials("bob@example.org", "SHA-256")) is None
    assert result_of(stores.users.get_credentials("alice@example.org", "SHA-512")) is None


def test_credentials_work_with_a_scram_exchange(stores: Stores, result_of: Any) -> None:
    """A real SCRAM-SHA-256 client/server exchange succeeds with the stored keys."""
    result_of(stores.users.create("alice@example.org", "pencil"))
    creds = result_of(stores.users.get_credentials("alice@example.org", "SHA-256"))
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    server = mech.make_server(lambda _u: (creds.salt, creds.stored_key, creds.server_key,
                                          creds.iterations))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pencil")
    server.set_client_first(client.get_client_first())
    client.set_server_first(server.get_server_first())
    server.set_client_final(client.get_client_final())
    client.set_server_final(server.get_server_final())  # raises on a bad signature


def test_check_password(stores: Stores, result_of: Any) -> None:
    """check_password accepts the password and refuses others and unknown users."""
    result_of(stores.users.create("alice@example.org", "pencil"))
    assert result_of(stores.users.check_password("alice@example.org", "pencil")) is True
    assert result_of(stores.users.check_password("alice@example.org", "Pencil")) is False
    assert result_of(stores.users.check_password("alice@example.org", "")) is False
    assert result_of(stores.users.check_password("bob@example.org", "pencil")) is False


def test_set_password(stores: Stores, result_of: Any) -> None:
    """set_password replaces both credentials; unknown users raise UnknownUser."""
    result_of(stores.users.create("alice@example.org", "old"))
    before = result_of(stores.users.get_credentials("alice@example.org", "SHA-1"))
    assert result_of(stores.users.set_password("alice@example.org", "new")) is None
    assert result_of(stores.users.check_password("alice@example.org", "new")) is True
    assert result_of(stores.users.check_password("alice@example.org", "old")) is False
    assert result_of(stores.users.get_credentials("alice@example.org", "SHA-1")) != before
    with pytest.raises(UnknownUser):
        result_of(stores.users.set_password("bob@example.org", "x"))


def test_delete_cascades(stores: Stores, result_of: Any) -> None:
    """Deleting an account removes its credentials, roster, requests, offline
    messages, archive and archive preferences, PEP nodes (items, affiliations,
    subscriptions), vCard and private data, block list, and nobody else's
    (caps are shared, spam reports are kept)."""
    from chatbx_server.storage.archive import ArchivePrefs

    result_of(stores.users.create_many([("alice@x.org", "p"), ("bob@x.org", "p")]))
    for user in ("alice@x.org", "bob@x.org"):
        result_of(stores.roster.set_item(user, RosterItem("carol@y.org")))
        result_of(stores.roster.add_request(user, "dave@y.org", None))
        result_of(stores.offline.store(user, "<message/>", 10))
        result_of(stores.pubsub.publish(user, "n", user, [("1", "<x xmlns='y'/>")], user,
                                        {"max_items": 5}, {}, 10, 10))
        result_of(stores.pubsub.set_affiliations(user, "n", {"carol@y.org": "member"}))
        result_of(stores.pubsub.subscribe(user, "n", "carol@y.org", "s"))
        result_of(stores.vcard.set(user, "<vCard xmlns='vcard-temp'/>"))
        result_of(stores.private.set(user, "{a}b", "<b xmlns='a'/>", 1000))
        result_of(stores.blocking.block(user, ["spam.example"], [
            SpamReport(user, "spam.example", "urn:xmpp:reporting:spam")]))
        ids = stores.archive.ids
        stores.archive.append((user, ids.next_id(), ids.nonce(), "carol@y.org", None, "hi",
                               "<message/>", False))
        result_of(stores.archive.set_prefs(user, ArchivePrefs()))
    result_of(stores.caps.put("sha-1:x", ["f"]))
    result_of(stores.archive.flush())
    assert result_of(stores.users.delete("alice@x.org")) is True
    assert result_of(stores.users.delete("alice@x.org")) is False

    def counts(conn: Any) -> dict[str, int]:
        return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in schema.metadata.sorted_tables}

    assert result_of(stores.db.run("t", counts)) == {
        "users": 1, "scram_credentials": 2, "roster_items": 1, "roster_versions": 1,
        "subscription_requests": 1, "offline_messages": 1, "server_secrets": 0,
        "muc_rooms": 0, "muc_affiliations": 0, "muc_archive": 0,
        "fast_tokens": 0, "push_registrations": 0,
        "archive_messages": 1, "archive_prefs": 1,
        "pubsub_nodes": 1, "pubsub_items": 1, "pubsub_affiliations": 1, "pubsub_subscriptions": 1,
        "vcards": 1, "private_storage": 1, "entity_caps": 1,
        "blocklist_items": 1, "spam_reports": 2,  # reports outlive the reporter
        "uploads": 0, "tombstones": 0, "invites": 0, "captcha_challenges": 0,
    }
    assert result_of(stores.roster.get_roster("bob@x.org"))[1] == [RosterItem("carol@y.org")]


def test_saslprep_refused_password(stores: Stores, result_of: Any) -> None:
    """A password SASLprep prohibits is refused (ValueError), nothing stored."""
    with pytest.raises(ValueError):
        result_of(stores.users.create("alice@example.org", "bad\u0007"))
    assert result_of(stores.users.exists("alice@example.org")) is False


def test_iterations_are_configurable(database: Any, result_of: Any) -> None:
    """A store built with more iterations stores that count."""
    store = UserStore(database, iterations=5000)
    result_of(store.create("alice@example.org", "p"))
    creds = result_of(store.get_credentials("alice@example.org", "SHA-256"))
    assert creds.iterations == 5000
    assert result_of(store.check_password("alice@example.org", "p")) is True


# -- where the hashing runs ----------------------------------------------------------

def _watch_hashing(db: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, str]]:
    """Record (inside a transaction?, thread name) for every PBKDF2 run."""
    import threading

    state = threading.local()
    calls: list[tuple[bool, str]] = []
    real_txn = db._run_txn
    real_pbkdf2 = hashlib.pbkdf2_hmac

    def run_txn(*args: Any) -> Any:
        state.inside = True
        try:
            return real_txn(*args)
        finally:
            state.inside = False

    def pbkdf2(*args: Any) -> bytes:
        calls.append((getattr(state, "inside", False), threading.current_thread().name))
        return real_pbkdf2(*args)

    monkeypatch.setattr(db, "_run_txn", run_txn)
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", pbkdf2)
    return calls


def test_no_hashing_inside_transactions(stores: Stores, result_of: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating accounts, changing a password and checking one (PLAIN, also
    for an unknown account) hash outside Database.run: the transactions only
    read and write credentials, so the database thread (SQLite's only one)
    is never held by PBKDF2."""
    calls = _watch_hashing(stores.db, monkeypatch)
    result_of(stores.users.create("alice@example.org", "pencil"))
    result_of(stores.users.create_many([("bob@example.org", "b"), ("carol@example.org", "c")]))
    result_of(stores.users.set_password("alice@example.org", "new"))
    assert result_of(stores.users.check_password("alice@example.org", "new")) is True
    assert result_of(stores.users.check_password("alice@example.org", "old")) is False
    assert result_of(stores.users.check_password("nobody@example.org", "x")) is False
    assert len(calls) == 2 * 4 + 3  # two mechanisms per password set, one per check
    assert not any(inside for inside, _ in calls)


def test_existing_account_refused_before_hashing(stores: Stores, result_of: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A bulk create naming an existing account fails before any password of
    it is hashed (a long import does not hash for nothing)."""
    result_of(stores.users.create("alice@example.org", "pencil"))
    calls = _watch_hashing(stores.db, monkeypatch)
    with pytest.raises(UserExists):
        result_of(stores.users.create_many([("bob@example.org", "b"), ("alice@example.org", "a")]))
    assert calls == []


class _ImmediateReactor:
    """Runs callFromThread calls at once (in the calling thread)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


def _wait(d: Any, timeout: float = 30.0) -> Any:
    import threading

    done = threading.Event()
    box: list[Any] = []
    d.addBoth(lambda r: (box.append(r), done.set()))
    assert done.wait(timeout), "call did not finish"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def test_hash_pool_threads_apart_from_database(db_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a threaded Database, PBKDF2 runs on the hash pool's threads, not on
    the database's, and the results come back."""
    from chatbx_server.storage import migrate
    from chatbx_server.storage.database import Database
    from chatbx_server.storage.users import HashPool

    migrate.upgrade(db_url)
    reactor = _ImmediateReactor()
    db = Database(db_url, reactor, pool_size=2)
    db.start()
    hasher = HashPool(2, reactor)
    try:
        store = UserStore(db, hasher=hasher)
        calls = _watch_hashing(db, monkeypatch)
        _wait(store.create("alice@example.org", "pencil"))
        assert _wait(store.check_password("alice@example.org", "pencil")) is True
        assert calls and all(not inside and name.startswith("chatbx-hash")
                             for inside, name in calls)
    finally:
        hasher.stop()
        db.stop()


def test_hash_pool_is_bounded() -> None:
    """No more than ``threads`` hashes run at once; the others wait their turn,
    and stop() drops what is still queued."""
    import threading

    from chatbx_server.storage.users import HashPool

    pool = HashPool(2, _ImmediateReactor())
    lock = threading.Lock()
    release = threading.Event()
    running = [0, 0]  # now, most at once

    def job(n: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return n

    ds = [pool.run(job, n) for n in range(6)]
    release.set()
    assert [_wait(d) for d in ds] == list(range(6))
    assert running[1] == 2
    pool.stop()
    with pytest.raises(Exception):
        _wait(pool.run(job, 7))
