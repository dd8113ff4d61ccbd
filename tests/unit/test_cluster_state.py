"""Per-account state shared across the nodes of a cluster, with the fake
Redis of test_cluster.py on the fake reactor: Message Carbons (XEP-0280)
for resources held by other nodes; the Redis locks around a user's roster
changes and offline delivery (cluster/locks.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer

from chatbx_server.cluster.locks import RETRY_MAX
from chatbx_server.features.carbons import NS_CARBONS
from chatbx_server.features.roster import ROSTER_LOCK_WAIT
from tests.unit.fakes import bind, stanza
from tests.unit.test_cluster import FakeRedis, cluster_server, fake_redis, install_redis  # noqa: F401

CARBON_MODULES = '"message", "offline", "roster", "presence", "carbons"'


def remote_with_carbons(server: Any, full: str, carbons: bool, node: str = "n2") -> None:
    """What node ``node`` publishes of an available session of its own."""
    state = {"p": 0, "x": "<presence xmlns='jabber:client'/>", "r": True, "c": carbons}
    server.cluster._on_message("chatbx:directory", json.dumps({"n": node, "f": full, "s": state}))


def forwarded(redis: FakeRedis, node: str) -> list[tuple[str, str]]:
    """(full JID, xml) of every stanza sent to ``node``'s inbox."""
    out: list[tuple[str, str]] = []
    for command in redis.named("EVAL"):
        if command[2] == f"chatbx:inbox:{node}":
            out.extend((full, xml) for full, xml in json.loads(command[5]))
    return out


def chat(server: Any, session: Any, to: str, body: str) -> None:
    msg = stanza(f"<message to='{to}' type='chat'><body>{body}</body></message>")
    msg["from"] = session.jid.full
    server.router.route(msg, session)


def test_carbons_flag_is_published(fake_redis: FakeRedis) -> None:
    """Enabling carbons (XEP-0280 §4) republishes the session's directory
    state with "c" true; disabling (§5) with "c" false."""
    server = cluster_server(CARBON_MODULES)
    alice = bind(server, "alice@localhost/a", available=True)
    server.clock.advance(0)

    def published() -> Any:
        states = [json.loads(c[3]) for c in fake_redis.named("HSET")
                  if c[1].startswith("chatbx:sessions:") and c[2] == alice.jid.full]
        return states[-1]["c"]

    assert published() is False
    for verb, expected in (("enable", True), ("disable", False)):
        iq = f"<iq type='set' id='c-{verb}' xmlns='jabber:client'><{verb} xmlns='{NS_CARBONS}'/></iq>"
        element = stanza(iq)
        element["from"] = alice.jid.full
        server.router.route(element, alice)
        assert [e["type"] for e in alice.take() if e.name == "iq"] == ["result"]
        server.clock.advance(0)
        assert published() is expected


def test_sent_and_received_carbons_reach_a_remote_resource(fake_redis: FakeRedis) -> None:
    """Alice's resource 'a' here and 'r' on n2 with carbons on: a chat she
    sends from 'a' goes to n2 as a <sent/> carbon (§8) and a chat Bob sends
    to alice@localhost/a goes to n2 as a <received/> carbon (§7). A resource
    on n3 with carbons off gets neither."""
    server = cluster_server(CARBON_MODULES)
    alice = bind(server, "alice@localhost/a", available=True)
    bob = bind(server, "bob@localhost/b", available=True)
    remote_with_carbons(server, "alice@localhost/r", carbons=True)
    remote_with_carbons(server, "alice@localhost/off", carbons=False, node="n3")
    server.clock.advance(0)
    fake_redis.commands.clear()
    chat(server, alice, "bob@localhost/b", "from alice")
    chat(server, bob, "alice@localhost/a", "to alice")
    server.clock.advance(0)
    to_n2 = forwarded(fake_redis, "n2")
    assert [full for full, _ in to_n2] == ["alice@localhost/r"] * 2
    sent, received = (xml for _, xml in to_n2)
    assert f"<sent xmlns='{NS_CARBONS}'>" in sent and "from alice" in sent
    assert f"<received xmlns='{NS_CARBONS}'>" in received and "to alice" in received
    assert forwarded(fake_redis, "n3") == []


def test_remote_resource_turning_carbons_off_gets_no_more_copies(fake_redis: FakeRedis) -> None:
    """n2 republishes its session with carbons off: nothing more is copied to it."""
    server = cluster_server(CARBON_MODULES)
    alice = bind(server, "alice@localhost/a", available=True)
    bind(server, "bob@localhost/b", available=True)
    remote_with_carbons(server, "alice@localhost/r", carbons=True)
    remote_with_carbons(server, "alice@localhost/r", carbons=False)
    server.clock.advance(0)
    fake_redis.commands.clear()
    chat(server, alice, "bob@localhost/b", "hello")
    server.clock.advance(0)
    assert forwarded(fake_redis, "n2") == []
    carbons = server.modules.get("carbons")
    assert carbons.enabled(server.sessions.get("alice@localhost", "r")) is False


class LockingRedis(FakeRedis):
    """FakeRedis whose SET NX and the release script act on kept keys."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, str] = {}
        self.replies["SET"] = None  # answered by execute_command below
        #: SET of a lock: "keep" (Redis semantics), "fail", or "silent"
        self.mode = "keep"

    def execute_command(self, *args: str) -> Any:
        if args[0] == "SET" and args[1].startswith("chatbx:lock:"):
            self.commands.append(tuple(args))
            if self.mode == "fail":
                return defer.fail(ConnectionError("redis gone"))
            if self.mode == "silent":
                return defer.Deferred()
            assert args[3:5] == ("NX", "PX")
            if args[1] in self.keys:
                return defer.succeed(None)
            self.keys[args[1]] = args[2]
            return defer.succeed("OK")
        return super().execute_command(*args)

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        if keys and keys[0].startswith("chatbx:lock:"):
            self.commands.append(("EVAL", *keys, *args))
            if self.keys.get(keys[0]) == args[0]:
                del self.keys[keys[0]]
                return defer.succeed(1)
            return defer.succeed(0)
        return super().eval(script, keys, args)


@pytest.fixture
def locking_redis(monkeypatch: pytest.MonkeyPatch) -> LockingRedis:
    return install_redis(monkeypatch, LockingRedis())


ROSTER_KEY = "chatbx:lock:roster:alice@localhost"


def test_roster_change_waits_for_the_lock_held_on_another_node(locking_redis: LockingRedis) -> None:
    """Alice's roster lock is held by n2: a change here runs only once n2
    releases it (retried on the reactor clock, nothing blocks), under a lock
    of its own that it releases by its token; a second change here waits
    for the first."""
    server = cluster_server()
    server.clock.advance(0)
    roster = server.modules.get("roster")
    locking_redis.keys[ROSTER_KEY] = "n2:7"
    ran: list[str] = []

    def change(name: str) -> Any:
        def fn() -> None:
            ran.append(name)
            assert locking_redis.keys.get(ROSTER_KEY, "").startswith("n1:")
        return fn

    first = roster.run_locked("alice@localhost", change("first"))
    second = roster.run_locked("alice@localhost", change("second"))
    server.clock.advance(1.0)
    assert ran == []
    del locking_redis.keys[ROSTER_KEY]  # n2 is done
    server.clock.advance(RETRY_MAX)
    assert ran == ["first", "second"]
    assert first.called and second.called
    assert ROSTER_KEY not in locking_redis.keys
    releases = [c for c in locking_redis.named("EVAL") if c[1] == ROSTER_KEY]
    assert len(releases) == 2 and all(c[2].startswith("n1:") for c in releases)


def test_roster_lock_gives_up_after_the_wait(locking_redis: LockingRedis) -> None:
    """A lock that stays held (or a silent Redis) delays a change by at most
    ROSTER_LOCK_WAIT; then it runs under the local lock only. n2's lock is
    not released by us."""
    server = cluster_server()
    server.clock.advance(0)
    roster = server.modules.get("roster")
    locking_redis.keys[ROSTER_KEY] = "n2:7"
    ran: list[int] = []
    roster.run_locked("alice@localhost", lambda: ran.append(1))
    server.clock.advance(ROSTER_LOCK_WAIT - 0.5)
    assert ran == []
    server.clock.advance(1.0)
    assert ran == [1]
    assert locking_redis.keys[ROSTER_KEY] == "n2:7"
    locking_redis.mode = "silent"
    roster.run_locked("alice@localhost", lambda: ran.append(2))
    server.clock.advance(ROSTER_LOCK_WAIT + 0.1)
    assert ran == [1, 2]


def test_roster_lock_redis_failure_goes_on_locally(locking_redis: LockingRedis) -> None:
    """Redis refusing the SET: the change runs at once (local lock only)."""
    server = cluster_server()
    server.clock.advance(0)
    locking_redis.mode = "fail"
    ran: list[int] = []
    d = server.modules.get("roster").run_locked("alice@localhost", lambda: ran.append(1))
    assert ran == [1] and d.called


def test_roster_subscription_under_the_cluster_lock(locking_redis: LockingRedis) -> None:
    """A roster set (RFC 6121 §2.3) from Alice's session waits for n2's lock
    on her roster, then is stored and answered."""
    server = cluster_server()
    alice = bind(server, "alice@localhost/a", available=True)
    server.clock.advance(0)
    alice.take()
    locking_redis.keys[ROSTER_KEY] = "n2:1"
    iq = stanza("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'>"
                "<item jid='bob@localhost'/></query></iq>")
    iq["from"] = alice.jid.full
    server.router.route(iq, alice)
    server.clock.advance(0.5)
    assert [e for e in alice.take() if e.name == "iq" and e.getAttribute("id") == "r1"] == []
    del locking_redis.keys[ROSTER_KEY]
    server.clock.advance(RETRY_MAX)
    replies = [e for e in alice.take() if e.name == "iq" and e.getAttribute("id") == "r1"]
    assert [e["type"] for e in replies] == ["result"]


OFFLINE_KEY = "chatbx:lock:offline:alice@localhost"


def offline_server(redis: LockingRedis) -> tuple[Any, Any]:
    """Two messages stored for Alice; her session 'a' bound, not yet available."""
    server = cluster_server()
    for n in (1, 2):
        xml = f"<message xmlns='jabber:client' from='bob@localhost/b' to='alice@localhost' " \
              f"type='chat'><body>stored {n}</body></message>"
        server.stores.offline.store("alice@localhost", xml, 100, 100_000)
    alice = bind(server, "alice@localhost/a")
    server.clock.advance(0)
    alice.take()
    return server, alice


def come_online(server: Any, session: Any) -> None:
    presence = stanza("<presence/>")
    presence["from"] = session.jid.full
    server.router.route(presence, session)


def stored_bodies(session: Any) -> list[str]:
    return [str(e.body) for e in session.take() if e.name == "message" and e.body]


def offline_count(server: Any) -> int:
    result: list[int] = []
    server.stores.offline.count("alice@localhost").addCallback(result.append)
    return result[0]


def test_offline_delivery_waits_for_the_one_on_another_node(locking_redis: LockingRedis) -> None:
    """Alice logs in on n2 and here at once; n2 holds the offline lock and
    delivers both stored messages there: this node delivers nothing of them
    (XEP-0160: to one resource), and releases its own lock after."""
    server, alice = offline_server(locking_redis)
    locking_redis.keys[OFFLINE_KEY] = "n2:1"
    come_online(server, alice)
    server.clock.advance(1.0)
    assert stored_bodies(alice) == []
    # n2 handed them to its session and deleted them, then released
    fetched: list[Any] = []
    server.stores.offline.fetch("alice@localhost", after=0, max_messages=10,
                                max_bytes=100_000).addCallback(fetched.append)
    server.stores.offline.delete("alice@localhost", [m.id for m in fetched[0]])
    del locking_redis.keys[OFFLINE_KEY]
    server.clock.advance(RETRY_MAX)
    assert stored_bodies(alice) == []
    assert OFFLINE_KEY not in locking_redis.keys
    assert [c[1] for c in locking_redis.named("EVAL")].count(OFFLINE_KEY) == 1


def test_offline_delivery_after_the_other_node_released(locking_redis: LockingRedis) -> None:
    """The lock held elsewhere is released with the messages still stored (that
    session went away): this node delivers them once the lock is its own."""
    server, alice = offline_server(locking_redis)
    locking_redis.keys[OFFLINE_KEY] = "n2:1"
    come_online(server, alice)
    server.clock.advance(1.0)
    assert stored_bodies(alice) == []
    del locking_redis.keys[OFFLINE_KEY]
    server.clock.advance(RETRY_MAX)
    assert stored_bodies(alice) == ["stored 1", "stored 2"]
    assert offline_count(server) == 0
    assert OFFLINE_KEY not in locking_redis.keys


def test_offline_delivery_without_redis_goes_on(locking_redis: LockingRedis) -> None:
    """Redis failing: the stored messages are delivered at once (local lock only)."""
    server, alice = offline_server(locking_redis)
    locking_redis.mode = "fail"
    come_online(server, alice)
    assert stored_bodies(alice) == ["stored 1", "stored 2"]
