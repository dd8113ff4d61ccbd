"""XEP-0198 resumption on another node of a cluster (cluster/handover.py,
features/smacks_cluster.py): two servers on their own fake clocks share one
fake Redis that keeps keys and inbox entries; the test moves inbox entries
and directory notifications between them (``Bus.pump``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer

from chatbx_server.c2s import stream as c2s
from chatbx_server.c2s.sasl2 import NS as SASL2
from chatbx_server.cluster import lookup, node as cluster_node
from chatbx_server.cluster.directory import RemoteSession
from chatbx_server.c2s.stream import C2SFactory
from chatbx_server.xmpp.jid import JID
from tests.unit.fakes import FakeStream, bind, create_user, disconnect, make_server
from tests.unit.pephelpers import befriend
from tests.unit.test_c2s_stream import BINDINGS, Client, FakeTLS
from tests.unit.test_cluster import T0, FakeRedis, install_redis

SM = "urn:xmpp:sm:3"
MODULES = '"message", "offline", "roster", "presence", "smacks", "carbons", "csi"'
ALICE = "alice@localhost/phone"
#: where SASL leaves a new connection of Alice's
ALICE_BARE = JID.parse("alice@localhost")


class Bus(FakeRedis):
    """A fake Redis shared by the nodes: strings and sets are kept, inbox
    XADDs are queued for ``pump``, PUBLISHes go to the other nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, Any] = {}
        self.inboxes: list[tuple[str, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.servers: dict[str, Any] = {}
        self.entry = 0
        now = str(T0 * 1000)
        self.replies["ZRANGE"] = ["n1", now, "n2", now]
        self.replies["SET"] = self._set
        self.replies["GET"] = lambda: self.keys.get(self._args[1])
        self.replies["SADD"] = lambda: self.keys.setdefault(self._args[1], set()).add(self._args[2])
        self.replies["SMEMBERS"] = lambda: sorted(self.keys.get(self._args[1], ()))
        self.replies["HSET"] = self._hset
        self.replies["HDEL"] = lambda: self.keys.get(self._args[1], {}).pop(self._args[2], None)
        #: directory lookups (cluster/lookup.py) answered at once, or, when
        #: this is a list, computed at once and answered by ``answer_lookups``
        self.held_lookups: Any = None

    def execute_command(self, *args: str) -> Any:
        self._args = args
        return super().execute_command(*args)

    def _hset(self) -> int:
        self.keys.setdefault(self._args[1], {})[self._args[2]] = self._args[3]
        return 1

    def _lookup(self, user_key: str) -> list[str]:
        live = self.replies["ZRANGE"][::2]
        out: list[str] = []
        for full, node in self.keys.get(user_key, {}).items():
            state = self.keys.get(f"chatbx:sessions:{node}", {}).get(full)
            if node in live and state is not None:
                out += [full, node, state]
        return out

    def answer_lookups(self) -> None:
        held, self.held_lookups = self.held_lookups, []
        for d, reply in held:
            d.callback(reply)

    def _set(self) -> str:
        self.keys[self._args[1]] = self._args[2]
        return "OK"

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        self.commands.append(("EVAL", *keys, *args))
        if script == lookup.LOOKUP_SCRIPT:
            reply = self._lookup(keys[1])
            if self.held_lookups is None:
                return defer.succeed(reply)
            d: defer.Deferred = defer.Deferred()
            self.held_lookups.append((d, reply))
            return d
        if script == lookup.UNSET_SCRIPT:
            entries = self.keys.get(keys[0], {})
            if entries.get(args[0]) == args[1]:
                del entries[args[0]]
            return defer.succeed(1)
        if script == cluster_node.END_PREVIOUS_RUN_SCRIPT:
            stale = self.keys.pop(keys[0], {})
            for full in stale:
                entries = self.keys.get("chatbx:user:" + full.split("/")[0], {})
                if entries.get(full) == args[0]:
                    del entries[full]
            return defer.succeed([x for pair in stale.items() for x in pair])
        if script == lookup.FORGET_NODE_SCRIPT:
            for full in list(self.keys.get(keys[0], {})):
                entries = self.keys.get("chatbx:user:" + full.split("/")[0], {})
                if entries.get(full) == args[0]:
                    del entries[full]
            return defer.succeed(1)
        if len(keys) == 1:  # locks._RELEASE: DEL the lock while it is ours
            if self.keys.get(keys[0]) == args[0]:
                del self.keys[keys[0]]
            return defer.succeed(1)
        if keys[1].startswith("chatbx:inbox:"):
            self.entry += 1
            self.inboxes.append((keys[1].rsplit(":", 1)[1], args[2]))
            return defer.succeed(f"{self.entry}-0")
        # handover._RELEASE: DEL the id only while it names the node
        if self.keys.get(keys[0]) == args[0]:
            del self.keys[keys[0]]
        self.keys.get(keys[1], set()).discard(args[1])
        return defer.succeed(1)

    def publish(self, channel: str, message: str) -> Any:
        self.notes.append((channel, message))
        return super().publish(channel, message)

    def pump(self) -> None:
        """Run every node's turn, deliver inbox entries and notifications,
        until nothing moves."""
        for _ in range(50):
            for server in self.servers.values():
                server.clock.advance(0)
            if not self.inboxes and not self.notes:
                return
            inboxes, self.inboxes = self.inboxes, []
            notes, self.notes = self.notes, []
            for channel, message in notes:
                for server in self.servers.values():
                    server.cluster._on_message(channel, message)
            for node, batch in inboxes:
                self.entry += 1
                self.servers[node].cluster._deliver_entry(f"{self.entry}-0", ["b", batch])
        raise AssertionError("the nodes never went quiet")


def node_on(bus: Bus, name: str) -> Any:
    """A server that is cluster node ``name`` on ``bus``, with Alice and Bob as friends."""
    server = make_server(config_text=f'[modules]\nenabled = [{MODULES}]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\n'
                                     f'node = "{name}"\n')
    for user in ("alice@localhost", "bob@localhost"):
        create_user(server, user, "pencil")
    befriend(server, "alice@localhost", "bob@localhost")
    bus.servers[name] = server
    return server


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> Bus:
    redis = install_redis(monkeypatch, Bus())
    for name in ("n1", "n2"):
        node_on(redis, name)
    redis.pump()
    return redis


def send(session_or_stream: Any, xml: str) -> None:
    getattr(session_or_stream, "stream", session_or_stream).dataReceived(xml.encode())


def hibernated_alice(bus: Bus) -> tuple[str, Any]:
    """Alice on n1 (resumable SM, available, carbons on), Bob on n1; a
    message she read and acknowledged, one she did not; her connection drops
    and Bob writes again. Returns her resumption id and Bob's session."""
    n1 = bus.servers["n1"]
    alice = bind(n1, ALICE, available=True)
    bob = bind(n1, "bob@localhost/pc", available=True)
    send(alice, f"<enable xmlns='{SM}' resume='true'/>")
    previd = [e for e in alice.sent if e.name == "enabled"][0]["id"]
    send(alice, "<iq type='set' id='c1'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
    bus.pump()
    send(bob, f"<message to='{ALICE}' type='chat'><body>read</body></message>")
    send(alice, f"<a xmlns='{SM}' h='2'/>")  # the carbons result and 'read'
    send(bob, f"<message to='{ALICE}' type='chat'><body>unacked</body></message>")
    disconnect(alice)
    send(bob, "<message to='alice@localhost' type='chat'><body>while away</body></message>")
    bus.pump()
    bob.take()
    return previd, bob


def bodies(elements: list[Any]) -> list[str]:
    return [str(e.body) for e in elements if e.name == "message" and e.body is not None]


def test_resume_on_another_node_takes_the_session_over(bus: Bus) -> None:
    """Alice's session hibernates on n1; she resumes on n2: n1 hands the
    session over (counters, unacked queue, presence, carbons), n2 answers
    <resumed/> with n1's 'h' and sends what she had not acknowledged; the
    directory and Redis now say n2; Bob on n1 sees no unavailable presence
    and his next message reaches her on n2."""
    previd, bob = hibernated_alice(bus)
    n1, n2 = bus.servers["n1"], bus.servers["n2"]
    assert bus.keys[f"chatbx:sm:{previd}"] == "n1"
    stream = FakeStream(n2, ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    assert not stream.sent  # waiting for n1
    bus.pump()
    resumed = [e for e in stream.sent if e.name == "resumed"]
    assert resumed and resumed[0]["previd"] == previd
    assert resumed[0]["h"] == "1"  # the carbons request (SM was enabled after her presence)
    assert bodies(stream.sent) == ["unacked", "while away"]
    assert stream.state == c2s.BOUND and stream.session.jid.full == ALICE
    assert n1.sessions.local("alice@localhost", "phone") is None
    moved = n1.sessions.get("alice@localhost", "phone")
    assert isinstance(moved, RemoteSession) and moved.node == "n2" and moved.available
    assert bus.keys[f"chatbx:sm:{previd}"] == "n2"
    assert not [p for p in bob.take() if p.name == "presence"]
    assert n2.modules.get("carbons").enabled(stream.session)
    assert stream.session.presence is not None
    stream.transport.elements.clear()
    send(bob, f"<message to='{ALICE}' type='chat'><body>after</body></message>")
    bus.pump()
    assert bodies(stream.sent) == ["after"]


def test_stanzas_reaching_the_old_node_after_the_handover_are_forwarded(bus: Bus) -> None:
    """A third node that had not heard of the move forwards a message for
    alice's full JID to n1 after the handover: n1 sends it on to n2, where
    the resumed stream gets it (not offline storage)."""
    previd, _ = hibernated_alice(bus)
    n1 = bus.servers["n1"]
    stream = FakeStream(bus.servers["n2"], ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    bus.pump()
    stream.transport.elements.clear()
    xml = (f"<message xmlns='jabber:client' from='bob@localhost/pc' to='{ALICE}' type='chat'>"
           "<body>late</body></message>")
    n1.cluster._deliver_entry("99-0", ["b", json.dumps([[ALICE, xml]])])
    bus.pump()
    assert bodies(stream.sent) == ["late"]
    counted: list[int] = []
    n1.stores.offline.count("alice@localhost").addCallback(counted.append)
    assert counted == [0]


def test_silent_holder_gives_item_not_found_then_the_session_lands_here(bus: Bus) -> None:
    """n1 does not answer within handover_timeout: <failed><item-not-found/>
    (§5). Its answer comes later: n2 keeps the session hibernating, and a
    second <resume/> on n2 takes it over."""
    previd, _ = hibernated_alice(bus)
    n2 = bus.servers["n2"]
    stream = FakeStream(n2, ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    n2.clock.advance(0)
    held, bus.inboxes = bus.inboxes, []  # the request sits in n1's inbox
    n2.clock.advance(n2.modules.get("smacks").options.handover_timeout)
    failed = [e for e in stream.sent if e.name == "failed"]
    assert failed and failed[0].firstChildElement().name == "item-not-found"
    assert stream.state == c2s.BIND_NEEDED
    bus.inboxes = held
    bus.pump()
    again = FakeStream(n2, ALICE_BARE)
    send(again, f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    assert [e.name for e in again.sent][:1] == ["resumed"]
    assert bodies(again.sent) == ["unacked", "while away"]


def test_dead_holder_fails_at_once(bus: Bus) -> None:
    """The id names a node that is not live (killed): item-not-found at
    once, nothing is sent to it."""
    n2 = bus.servers["n2"]
    bus.keys["chatbx:sm:abc"] = "n9"
    stream = FakeStream(n2, ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='abc' h='0'/>")
    failed = [e for e in stream.sent if e.name == "failed"]
    assert failed and failed[0].firstChildElement().name == "item-not-found"
    assert not bus.inboxes


def test_sasl2_inline_resume_takes_the_same_route(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """<resume/> inside a SASL2 <authenticate/> on n2 for a session on n1:
    <success/> waits for the handover and holds <resumed/>; the queue
    follows it."""
    import base64

    previd, _ = hibernated_alice(bus)
    n2 = bus.servers["n2"]
    factory = C2SFactory(n2, FakeTLS(), direct_tls=True)
    monkeypatch.setattr(factory, "channel_bindings", lambda transport: dict(BINDINGS))
    client = Client(factory)
    client.header()
    client.received()
    plain = base64.b64encode(b"\0alice\0pencil").decode()
    client.send(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{plain}"
                f"</initial-response><resume xmlns='{SM}' previd='{previd}' h='2'/></authenticate>")
    assert not [e for e in client.received() if e.name == "success"]
    bus.pump()
    got = client.received()
    assert got[0].name == "success", [e.toXml() for e in got]
    resumed = [c for c in got[0].elements() if c.uri == SM and c.name == "resumed"]
    assert resumed and resumed[0]["previd"] == previd
    assert bodies(got[1:]) == ["unacked", "while away"]
    assert client.proto.state == c2s.BOUND


def test_reaper_forgets_the_resumption_ids_of_a_dead_node(bus: Bus) -> None:
    """The ids a dead node held are removed with its other keys."""
    previd, _ = hibernated_alice(bus)
    n2 = bus.servers["n2"]
    assert bus.keys[f"chatbx:sm:{previd}"] == "n1"
    old = T0 * 1000 - int(cluster_node.NODE_TTL * 1000) - 1
    bus.replies["ZRANGE"] = ["n1", str(old), "n2", str(T0 * 1000)]
    n2.clock.advance(cluster_node.HEARTBEAT)
    assert f"chatbx:sm:{previd}" not in bus.keys
    assert not bus.keys.get("chatbx:smids:n1")


def test_resume_elsewhere_replaces_an_old_connection_still_open(bus: Bus) -> None:
    """n1 has not noticed that Alice's connection is dead: the handover
    closes it with conflict (§5) and she goes on on n2, still available."""
    n1, n2 = bus.servers["n1"], bus.servers["n2"]
    alice = bind(n1, ALICE, available=True)
    bob = bind(n1, "bob@localhost/pc", available=True)
    send(alice, f"<enable xmlns='{SM}' resume='true'/>")
    previd = [e for e in alice.sent if e.name == "enabled"][0]["id"]
    bus.pump()
    bob.take()
    old = alice.stream
    stream = FakeStream(n2, ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    bus.pump()
    assert old.closed_with is not None and old.closed_with[0] == "conflict"
    assert [e.name for e in stream.sent][:1] == ["resumed"]
    assert stream.session.available
    assert not [p for p in bob.take() if p.name == "presence"]


def test_handover_waits_for_the_clients_stanzas_still_being_committed(bus: Bus) -> None:
    """Alice's last message is still being stored on n1 when she resumes on
    n2: n1 hands over once it is committed, so n2's 'h' covers it (she does
    not send it twice); her pipelined <r/> is answered after <resumed/>."""
    n1, n2 = bus.servers["n1"], bus.servers["n2"]
    alice = bind(n1, ALICE, available=True)
    send(alice, f"<enable xmlns='{SM}' resume='true'/>")
    previd = [e for e in alice.sent if e.name == "enabled"][0]["id"]
    held: list[defer.Deferred] = []

    def store(*args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        held.append(d)
        return d

    n1.stores.offline.store = store
    send(alice, "<message to='bob@localhost' type='chat'><body>for bob</body></message>")
    disconnect(alice)
    bus.pump()
    stream = FakeStream(n2, ALICE_BARE)
    send(stream, f"<resume xmlns='{SM}' previd='{previd}' h='0'/><r xmlns='{SM}'/>")
    bus.pump()
    assert not [e for e in stream.sent if e.name == "resumed"]
    held[0].callback(True)
    bus.pump()
    names = [e.name for e in stream.sent if e.uri == SM]
    assert names[0] == "resumed" and stream.sent[0]["h"] == "1"
    assert [e["h"] for e in stream.sent if e.uri == SM and e.name == "a"][-1] == "1"
