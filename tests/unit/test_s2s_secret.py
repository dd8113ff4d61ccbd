"""The dialback secret comes from the database (``server_secrets``): every
node and every restart on the same database makes and verifies the same
keys (XEP-0185 §3); dialback waits until it has been read; a database
that cannot be read leaves a per-process secret and a log line."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from chatbx_server.s2s.dialback import DIALBACK_SECRET, make_key
from chatbx_server.s2s.manager import S2SManager
from chatbx_server.server import Server
from chatbx_server.storage.secrets import get_or_create_secret_txn

from tests.unit.s2s_helpers import FixedTrust, make_manager
from tests.unit.test_s2s_incoming import feed as feed_in
from tests.unit.test_s2s_incoming import open_tls
from tests.unit.test_s2s_outgoing import feed, send, setup, through_tls


def second_node(server: Server) -> S2SManager:
    """Another process (a restart, or a cluster node) on the same database."""
    other = Server(server.config, clock=MemoryReactorClock(), database=server.database)
    other.start()
    manager = S2SManager(other, {"a.example": ("a.crt", "a.key")}, server_tls="server-tls",
                         connect=lambda *a: defer.Deferred(), trust=FixedTrust())
    manager.start()
    return manager


def test_secret_is_the_database_row_shared_by_nodes() -> None:
    """The manager's secret is the server_secrets row; a second node on the
    same database reads the same one."""
    server, manager = make_manager()
    with server.database.engine.begin() as conn:
        stored = get_or_create_secret_txn(conn, DIALBACK_SECRET)
    assert manager.secret == stored and len(stored) == 32
    assert second_node(server).secret == stored


def test_key_made_by_one_node_verifies_on_another() -> None:
    """Authoritative role on node 2 for a key node 1 made: 'valid'."""
    server, manager = make_manager()
    key = make_key(manager.secret or b"", "b.example", "a.example", "S1")
    other = second_node(server)
    stream, transport = open_tls(other)
    feed_in(stream, f"<db:verify from='b.example' to='a.example' id='S1'>{key}</db:verify>")
    assert transport.last("verify")["type"] == "valid"


class SlowSecrets:
    """server.secrets whose answer the test releases."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def get(self, name: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


def _slow_manager(setup_fn: Any) -> tuple[Any, ...]:
    """setup() with a manager that has not read its secret yet."""
    result = setup_fn()
    server, manager = result[0], result[1]
    slow = SlowSecrets()
    server.secrets = slow
    manager.secret = None
    manager.stop()
    manager.start()
    return (*result, slow)


def test_dialback_waits_for_the_secret() -> None:
    """Originating role: the db:result goes out once the secret is read, with
    a key made from it; authoritative role: the db:verify answer waits too."""
    server, manager, connector, alice, slow = _slow_manager(lambda: setup())
    send(alice, "<message id='m1' to='bob@b.example'><body>one</body></message>")
    stream, transport = connector.accept()
    through_tls(stream, transport, "<dialback xmlns='urn:xmpp:features:dialback'/>")
    assert [e for e in transport.elements if e.name == "result"] == []
    secret = b"k" * 32
    slow.pending[0].callback(secret)
    assert str(transport.last("result")) == make_key(secret, "b.example", "a.example", "RID")
    feed(stream, "<db:result from='b.example' to='a.example' type='valid'/>")
    assert stream.ready

    instream, intransport = open_tls(manager)
    key = make_key(secret, "b.example", "a.example", "S9")
    feed_in(instream, f"<db:verify from='b.example' to='a.example' id='S9'>{key}</db:verify>")
    assert intransport.last("verify")["type"] == "valid"


def test_unreadable_database_falls_back_to_a_process_secret() -> None:
    """The secret cannot be read: a random per-process one is used (federation
    keeps working on this node) and the failure is logged."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        server, manager, connector, alice, slow = _slow_manager(lambda: setup())
        slow.pending[0].errback(RuntimeError("database is gone"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert manager.secret is not None and len(manager.secret) == 32
    assert any("dialback secret" in e.get("log_format", "") for e in events)
