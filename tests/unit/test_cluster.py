"""The cluster seam (chatbx_server/cluster) with a fake Redis on the fake reactor:
``[cluster]`` config, remote sessions in ``server.sessions``, stanzas to
other nodes batched per node, the inbox's undelivered path and ack, a dead
node's sessions and inbox. The real Redis runs in tests/integration/test_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from chatbx_server.cluster import node as cluster_node
from chatbx_server.config import ConfigError, load_config
from tests.unit.fakes import bind, create_user, make_server, stanza

T0 = 1_700_000_000


class FakeRedis:
    """Records commands; answers from ``replies`` (name -> value or callable)."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, ...]] = []
        self.replies: dict[str, Any] = {
            "TIME": lambda: [str(T0), "0"],
            "ZRANGE": [],
            "XREADGROUP": lambda: defer.Deferred(),  # blocks forever
            "SET": "OK",
            "XRANGE": [],
            "HGETALL": [],
        }

    def execute_command(self, *args: str) -> Any:
        self.commands.append(tuple(args))
        reply = self.replies.get(args[0], "OK")
        reply = reply() if callable(reply) else reply
        return reply if isinstance(reply, defer.Deferred) else defer.succeed(reply)

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        self.commands.append(("EVAL", *keys, *args))
        if script == cluster_node.END_PREVIOUS_RUN_SCRIPT:
            return defer.succeed(self.replies.get("END_PREVIOUS_RUN", []))
        return defer.succeed(self.replies.get("EVAL", "1-0"))

    def publish(self, channel: str, message: str) -> Any:
        self.commands.append(("PUBLISH", channel, message))
        return defer.succeed(1)

    def disconnect(self) -> Any:
        return defer.succeed(None)

    def named(self, name: str) -> list[tuple[str, ...]]:
        return [c for c in self.commands if c[0] == name]


def install_redis(monkeypatch: pytest.MonkeyPatch, redis: Any) -> Any:
    """Every cluster node made from now on talks to ``redis`` (commands and
    the directory channel); returns it."""
    monkeypatch.setattr(cluster_node, "command_connection", lambda address: redis)

    class Sub:
        handler = redis

        def stopTrying(self) -> None:
            pass

    monkeypatch.setattr(cluster_node, "subscriber", lambda *a: Sub())
    return redis


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> FakeRedis:
    return install_redis(monkeypatch, FakeRedis())


def cluster_server(modules: str = '"message", "offline", "roster", "presence"') -> Any:
    server = make_server(config_text=f'[modules]\nenabled = [{modules}]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    create_user(server, "alice@localhost")
    create_user(server, "bob@localhost")
    return server


def remote(server: Any, node: str, full: str, priority: int = 0, available: bool = True) -> None:
    """What another node publishes when one of its sessions becomes available."""
    state = {"p": priority, "x": "<presence xmlns='jabber:client'/>" if available else None, "r": True}
    server.cluster._on_message("chatbx:directory", json.dumps({"n": node, "f": full, "s": state}))


def test_config_cluster_section(tmp_path: Path) -> None:
    """[cluster] is parsed (absent = None, a single node); a bad URL or node
    name is an error naming the key."""
    path = tmp_path / "c.toml"
    path.write_text('[cluster]\nredis = "redis://:pw@10.0.0.1:6380/2"\nnode = "a-1"\n')
    config = load_config(str(path))
    assert config.cluster is not None and config.cluster.node == "a-1"
    assert load_config(None).cluster is None
    path.write_text('[cluster]\nredis = "http://x"\n')
    with pytest.raises(ConfigError, match="cluster.redis"):
        load_config(str(path))
    path.write_text('[cluster]\nnode = "a b"\n')
    with pytest.raises(ConfigError, match="cluster.node"):
        load_config(str(path))


def test_single_node_has_no_cluster() -> None:
    """Without [cluster] the server keeps its plain SessionManager and no Redis."""
    server = make_server(modules=["message"])
    assert server.cluster is None
    assert type(server.sessions).__name__ == "SessionManager"


def test_local_session_is_published(fake_redis: FakeRedis) -> None:
    """Binding a session writes it to this node's directory hash and notifies
    the other nodes; its initial presence updates both after the turn."""
    server = cluster_server()
    session = bind(server, "alice@localhost/a", available=True)
    server.clock.advance(0)
    hsets = [c for c in fake_redis.named("HSET")
             if c[1] == "chatbx:sessions:n1" and c[2] == "alice@localhost/a"]
    assert hsets and json.loads(hsets[-1][3])["x"] is not None
    assert hsets[0][1] == "chatbx:sessions:n1"
    session.stream.connectionLost(None)
    assert ("HDEL", "chatbx:sessions:n1", "alice@localhost/a") in fake_redis.commands


def test_remote_sessions_in_view_and_batched_forward(fake_redis: FakeRedis) -> None:
    """A session on node n2 is seen by features (available, get) and a
    message to it, and a headline to both of bob's resources there, leave as
    ONE stream entry to n2's inbox in that reactor turn."""
    server = cluster_server()
    alice = bind(server, "alice@localhost/a", available=True)
    remote(server, "n2", "bob@localhost/phone", priority=5)
    remote(server, "n2", "bob@localhost/tab", priority=5)
    assert {s.jid.full for s in server.sessions.available("bob@localhost")} == {
        "bob@localhost/phone", "bob@localhost/tab"}
    assert server.sessions.get("bob@localhost", "phone").node == "n2"
    assert list(server.sessions) == [alice]  # iteration stays local (shutdown, metrics)
    fake_redis.commands.clear()
    for body in ("one", "two"):
        msg = stanza(f"<message to='bob@localhost' type='chat'><body>{body}</body></message>")
        msg["from"] = alice.jid.full
        server.router.route(msg, alice)
    assert not fake_redis.named("EVAL")
    server.clock.advance(0)
    xadds = fake_redis.named("EVAL")
    assert len(xadds) == 1 and xadds[0][1:4] == ("chatbx:nodes", "chatbx:inbox:n2", "n2")
    batch = json.loads(xadds[0][5])
    assert [full for full, _ in batch] == ["bob@localhost/phone", "bob@localhost/tab"] * 2
    assert "<body>one</body>" in batch[0][1]


def test_inbox_entry_for_gone_session_goes_offline_and_is_acked(fake_redis: FakeRedis) -> None:
    """A forwarded chat message whose session has ended meanwhile is stored
    offline (RFC 6121 §8.5.3.2.1 via the bare-JID rules); the entry is
    acknowledged and deleted only after that."""
    server = cluster_server()
    xml = "<message xmlns='jabber:client' from='alice@localhost/a' to='bob@localhost/gone' " \
          "type='chat'><body>hi</body></message>"
    d = server.cluster._deliver_entry("1-0", ["b", json.dumps([["bob@localhost/gone", xml]])])
    result: list[Any] = []
    d.addBoth(result.append)
    assert not fake_redis.named("XACK")  # with the other entries of this turn
    server.clock.advance(0)
    assert ("XACK", "chatbx:inbox:n1", "chatbx", "1-0") in fake_redis.commands
    assert ("XDEL", "chatbx:inbox:n1", "1-0") in fake_redis.commands
    counted: list[int] = []
    server.stores.offline.count("bob@localhost").addCallback(counted.append)
    assert counted == [1]


def test_inbox_entries_of_one_turn_are_acked_together(fake_redis: FakeRedis) -> None:
    """Entries delivered in one reactor turn cost one XACK and one XDEL."""
    server = cluster_server()
    bind(server, "bob@localhost/here", available=True)
    fired: list[Any] = []
    for i in range(3):
        xml = (f"<message xmlns='jabber:client' from='alice@localhost/a' "
               f"to='bob@localhost/here' type='chat'><body>{i}</body></message>")
        d = server.cluster._deliver_entry(f"{i}-0", ["b", json.dumps([["bob@localhost/here", xml]])])
        d.addBoth(fired.append)
    assert fired == [] and not fake_redis.named("XACK")
    server.clock.advance(0)
    assert fake_redis.named("XACK") == [("XACK", "chatbx:inbox:n1", "chatbx", "0-0", "1-0", "2-0")]
    assert fake_redis.named("XDEL") == [("XDEL", "chatbx:inbox:n1", "0-0", "1-0", "2-0")]
    assert len(fired) == 3


def test_inbox_entry_reaches_local_session(fake_redis: FakeRedis) -> None:
    """A forwarded stanza for a session bound here is sent to it."""
    server = cluster_server()
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    xml = "<message xmlns='jabber:client' from='alice@localhost/a' to='bob@localhost/b' " \
          "type='chat'><body>hi</body></message>"
    server.cluster._deliver_entry("2-0", ["b", json.dumps([["bob@localhost/b", xml]])])
    assert [str(e.body) for e in bob.take() if e.name == "message"] == ["hi"]


def test_forwarded_subscription_drops_the_cached_roster_first(fake_redis: FakeRedis) -> None:
    """Another node changed Bob's roster (Alice's subscription request set
    pending-in) and forwards the request to Bob's session here: the cached
    roster is dropped before Bob sees it, so his approval is judged on the
    stored state, whenever the directory's notice of the change arrives. A
    chat message keeps the cache."""
    server = cluster_server()
    roster = server.modules.get("roster")
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    roster.load("bob@localhost")
    assert roster.cached("bob@localhost") is not None
    chat = "<message xmlns='jabber:client' from='alice@localhost/a' to='bob@localhost/b' " \
           "type='chat'><body>hi</body></message>"
    server.cluster._deliver_entry("2-0", ["b", json.dumps([["bob@localhost/b", chat]])])
    assert roster.cached("bob@localhost") is not None
    sub = "<presence xmlns='jabber:client' from='alice@localhost' to='bob@localhost' " \
          "type='subscribe'/>"
    server.cluster._deliver_entry("3-0", ["b", json.dumps([["bob@localhost/b", sub]])])
    assert roster.cached("bob@localhost") is None
    assert [e.getAttribute("type") for e in bob.take() if e.name == "presence"] == ["subscribe"]


def test_dead_node_sessions_vanish_and_inbox_is_reaped(fake_redis: FakeRedis) -> None:
    """When n2's heartbeat is older than NODE_TTL, its sessions leave the
    view, session/closed fires for them (presence tells their contacts), and
    the node that took the reap lock empties n2's inbox and forgets n2."""
    server = cluster_server()
    remote(server, "n2", "bob@localhost/phone")
    fake_redis.replies["HGETALL"] = ["bob@localhost/phone", json.dumps(
        {"p": 0, "x": "<presence xmlns='jabber:client'/>", "r": True})]
    closed: list[Any] = []
    server.events.on("session/closed", closed.append)
    old = T0 * 1000 - int(cluster_node.NODE_TTL * 1000) - 1
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000), "n2", str(old)]
    server.clock.advance(cluster_node.HEARTBEAT)
    assert server.sessions.available("bob@localhost") == []
    assert [s.jid.full for s in closed] == ["bob@localhost/phone"]
    assert [c[1] for c in fake_redis.named("SET") if "reap" in c[1]] == ["chatbx:reap:n2"]
    assert ("DEL", "chatbx:inbox:n2") in fake_redis.commands
    assert ("ZREM", "chatbx:nodes", "n2") in fake_redis.commands


def test_roster_change_is_announced_and_remote_change_forgets_cache(fake_redis: FakeRedis) -> None:
    """A roster changed here is announced on the directory channel; one
    changed on another node drops this node's cached copy."""
    server = cluster_server()
    roster = server.modules.get("roster")
    bind(server, "alice@localhost/a")
    loaded: list[Any] = []
    roster.load("alice@localhost").addCallback(loaded.append)
    assert roster.cached("alice@localhost") is loaded[0]
    server.cluster._on_message("chatbx:directory", json.dumps({"n": "n2", "roster": "alice@localhost"}))
    assert roster.cached("alice@localhost") is None
    server.events.fire_all("roster/changed", "bob@localhost")
    assert any(c[0] == "PUBLISH" and '"roster": "bob@localhost"' in c[2] for c in fake_redis.commands)


def test_node_that_left_cleanly_is_forgotten_at_once(fake_redis: FakeRedis) -> None:
    """A node's "gone" notice (clean stop) removes its sessions from the view
    without waiting for the heartbeat, and one node (the gone: lock's)
    announces its available sessions as ended."""
    server = cluster_server()
    remote(server, "n2", "bob@localhost/phone")
    remote(server, "n2", "bob@localhost/idle", available=False)
    closed: list[Any] = []
    server.events.on("session/closed", closed.append)
    server.cluster._on_message("chatbx:directory", json.dumps({"n": "n2", "gone": True}))
    assert server.sessions.resources("bob@localhost") == {}
    assert [s.jid.full for s in closed] == ["bob@localhost/phone"]
    assert [c[1] for c in fake_redis.named("SET") if "gone" in c[1]] == ["chatbx:gone:n2"]


def test_rendezvous_moves_only_the_dead_nodes_rooms() -> None:
    """Every node computes the same owner; removing a node moves only the
    rooms it owned."""
    from chatbx_server.cluster.rooms import rendezvous

    rooms = [f"r{i}@conference.localhost" for i in range(200)]
    before = {r: rendezvous(r, ["a", "b", "c"]) for r in rooms}
    after = {r: rendezvous(r, ["a", "c"]) for r in rooms}
    assert set(before.values()) == {"a", "b", "c"}
    assert all(after[r] == before[r] for r in rooms if before[r] != "b")


def test_room_stanza_goes_to_the_owning_node(fake_redis: FakeRedis) -> None:
    """A groupchat message for a room that Redis records as owned by n2
    leaves for n2's inbox, addressed to the room, instead of reaching this
    node's MUC service."""
    server = make_server(config_text='[modules]\nenabled = ["message", "muc"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    create_user(server, "alice@localhost")
    server.cluster.live.add("n2")
    fake_redis.replies["HGET"] = "n2"
    alice = bind(server, "alice@localhost/a", available=True)
    msg = stanza("<message to='team@conference.localhost' type='groupchat'><body>x</body></message>")
    msg["from"] = alice.jid.full
    server.router.route(msg, alice)
    server.clock.advance(0)
    xadds = [c for c in fake_redis.named("EVAL") if c[2] == "chatbx:inbox:n2"]
    assert len(xadds) == 1
    assert json.loads(xadds[0][5])[0][0] == "#room"
    assert server.cluster.rooms.owners["team@conference.localhost"] == "n2"


def test_room_stanzas_keep_their_order_while_the_owner_is_looked_up(fake_redis: FakeRedis) -> None:
    """A leave and the rejoin right after it, both sent while the room's
    owner is unknown here: the rejoin must not overtake the leave even when
    its own lookup would answer first (the leave would then take the
    occupant out of the room it just rejoined)."""
    server = make_server(config_text='[modules]\nenabled = ["message", "muc"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    create_user(server, "alice@localhost")
    rooms = server.cluster.rooms
    seen: list[str] = []
    rooms.services["conference.localhost"] = lambda event: seen.append(
        event.stanza.getAttribute("type") or "available")
    slow: defer.Deferred = defer.Deferred()
    answers = iter([slow])
    fake_redis.replies["HGET"] = lambda: next(answers, "n1")
    alice = bind(server, "alice@localhost/a", available=True)
    for kind in ("unavailable", None):
        pres = stanza("<presence to='team@conference.localhost/Alice'/>")
        if kind:
            pres["type"] = kind
        pres["from"] = alice.jid.full
        server.router.route(pres, alice)
    assert seen == []
    slow.callback("n1")
    assert seen == ["unavailable", "available"]
    assert rooms.owners["team@conference.localhost"] == "n1"


def test_a_dead_owner_costs_one_reload_of_the_stored_rooms(fake_redis: FakeRedis) -> None:
    """Every tick reports a dead node again until the reaper removes it:
    the stored rooms are re-read once per death, not once per tick (a
    reload replaces the empty rooms that another node's occupants are
    about to rejoin); a node that comes back and dies again is reloaded
    for again."""
    server = make_server(config_text='[modules]\nenabled = ["message", "muc"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    muc = server.modules.get("muc")
    reloads: list[int] = []
    muc.reload_stored = lambda: reloads.append(1) or defer.succeed([])
    fake_redis.replies["SET"] = None  # another node holds the reap lock
    old = T0 * 1000 - int(cluster_node.NODE_TTL * 1000) - 1
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000), "n2", str(old)]
    for _ in range(3):
        server.clock.advance(cluster_node.HEARTBEAT)
    assert len(reloads) == 1
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000), "n2", str(T0 * 1000)]
    server.clock.advance(cluster_node.HEARTBEAT)
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000), "n2", str(old)]
    server.clock.advance(cluster_node.HEARTBEAT)
    assert len(reloads) == 2


def test_a_room_whose_dead_owner_this_node_never_saw_dead_is_read_from_storage(
        fake_redis: FakeRedis) -> None:
    """Another node's reaper took the dead owner n2 off the node list before
    this node's heartbeat found it stale, so this node never saw the death:
    the first stanza for n2's room re-reads the stored rooms before the room
    is claimed and served here (else it would be created anew, empty)."""
    server = make_server(config_text='[modules]\nenabled = ["message", "presence", "muc"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    muc = server.modules.get("muc")
    order: list[str] = []
    muc.reload_stored = lambda: order.append("reload") or defer.succeed([])
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000)]  # n2 already reaped
    owners = iter(["n2", "n1"])
    fake_redis.replies["HGET"] = lambda: next(owners, "n1")
    server.clock.advance(cluster_node.HEARTBEAT)
    assert order == []
    create_user(server, "alice@localhost")
    alice = bind(server, "alice@localhost/a", available=True)
    join = stanza("<presence to='team@conference.localhost/Alice'>"
                  "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
    join["from"] = alice.jid.full
    server.router.route(join, alice)
    assert order == ["reload"]
    assert server.cluster.rooms.owners.get("team@conference.localhost") == "n1"


def test_a_reaped_node_is_announced_and_room_stanzas_wait_for_the_reload(
        fake_redis: FakeRedis) -> None:
    """The reaper of a dead node announces the death on the directory channel;
    a node whose own heartbeat never saw it stale forgets the node's sessions
    and re-reads the stored rooms (once), and a room stanza forwarded to it
    meanwhile is served only after that re-read, in order."""
    server = make_server(config_text='[modules]\nenabled = ["message", "presence", "muc"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\nnode = "n1"\n')
    muc = server.modules.get("muc")
    reloading: list[defer.Deferred] = []

    def reload_stored() -> defer.Deferred:
        reloading.append(defer.Deferred())
        return reloading[-1]

    muc.reload_stored = reload_stored
    remote(server, "n2", "bob@localhost/phone")
    server.cluster._on_message("chatbx:directory", json.dumps({"n": "n2", "dead": True}))
    assert server.sessions.available("bob@localhost") == [] and len(reloading) == 1
    served: list[str] = []
    handler = server.cluster.rooms.services["conference.localhost"]
    server.cluster.rooms.services["conference.localhost"] = (
        lambda event: served.append(event.stanza["id"]))
    for n in ("1", "2"):
        server.cluster.rooms.deliver(stanza(
            f"<message to='team@conference.localhost' from='bob@localhost/phone' id='{n}' "
            "type='groupchat'/>"))
    assert served == []
    reloading[0].callback([])
    assert served == ["1", "2"]
    server.cluster._on_message("chatbx:directory", json.dumps({"n": "n2", "dead": True}))
    assert len(reloading) == 1  # one re-read per death
    server.cluster.rooms.services["conference.localhost"] = handler


def test_the_reaper_announces_the_death(fake_redis: FakeRedis) -> None:
    server = cluster_server()
    remote(server, "n2", "bob@localhost/phone")
    old = T0 * 1000 - int(cluster_node.NODE_TTL * 1000) - 1
    fake_redis.replies["ZRANGE"] = ["n1", str(T0 * 1000), "n2", str(old)]
    server.clock.advance(cluster_node.HEARTBEAT)
    assert ("PUBLISH", "chatbx:directory", json.dumps({"n": "n2", "dead": True})) in fake_redis.commands


def test_caps_of_a_session_on_another_node_are_known(fake_redis: FakeRedis) -> None:
    """A remote session's presence carries caps (XEP-0115) whose features its
    node stored: caps.wants answers for it, so PEP notifications reach
    resources on other nodes; when it ends they are forgotten."""
    server = cluster_server('"message", "roster", "presence", "disco", "caps", "pep"')
    server.stores.caps.put("sha-1:abc", ["urn:xmpp:avatar:metadata+notify"])
    caps = server.modules.get("caps")
    full = "bob@localhost/phone"
    presence = ("<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' "
                "hash='sha-1' node='https://x' ver='abc'/></presence>")
    server.cluster._on_message("chatbx:directory", json.dumps(
        {"n": "n2", "f": full, "s": {"p": 0, "x": presence, "r": True}}))
    assert caps.wants(full, "urn:xmpp:avatar:metadata")
    server.cluster._on_message("chatbx:directory", json.dumps({"n": "n2", "f": full}))
    assert not caps.wants(full, "urn:xmpp:avatar:metadata")


def test_cluster_status_without_cluster_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """chatbxctl cluster status on a single-node config says so and exits 1."""
    from chatbx_server.cli import main

    path = tmp_path / "c.toml"
    path.write_text('domains = ["localhost"]\n')
    assert main(["--config", str(path), "cluster", "status"]) == 1
    assert "no [cluster] section" in capsys.readouterr().err


def test_default_node_name_is_host_and_pid(fake_redis: FakeRedis) -> None:
    """Without [cluster] node, the node is named after the host and the
    running process's pid (taken at start, after twistd forked)."""
    import os
    import socket

    server = make_server(config_text='[modules]\nenabled = ["message"]\n'
                                     '[cluster]\nredis = "redis://127.0.0.1:1/0"\n')
    assert server.cluster.node == f"{socket.gethostname()}-{os.getpid()}"


def test_send_refused_for_a_stale_node_goes_undelivered_here(fake_redis: FakeRedis) -> None:
    """When Redis refuses a batch because its node's heartbeat is stale (the
    reaper may have drained the inbox already), the node is forgotten here
    and its chat message goes to offline storage instead of being lost."""
    server = cluster_server()
    alice = bind(server, "alice@localhost/a", available=True)
    remote(server, "n2", "bob@localhost/phone")
    fake_redis.replies["EVAL"] = None
    msg = stanza("<message to='bob@localhost/phone' type='chat'><body>x</body></message>")
    msg["from"] = alice.jid.full
    server.router.route(msg, alice)
    server.clock.advance(0)
    assert "n2" not in server.cluster.live
    assert server.sessions.resources("bob@localhost") == {}
    counted: list[int] = []
    server.stores.offline.count("bob@localhost").addCallback(counted.append)
    assert counted == [1]


def test_roster_of_an_account_only_on_other_nodes_is_not_cached(fake_redis: FakeRedis) -> None:
    """Rosters are cached only for accounts with a session on this node: one
    whose sessions are all elsewhere is read from the database each time, so
    a change made by its own node is never hidden by a stale copy here."""
    server = cluster_server()
    remote(server, "n2", "bob@localhost/phone")
    roster = server.modules.get("roster")
    roster.load("bob@localhost")
    assert roster.cached("bob@localhost") is None
    bind(server, "bob@localhost/here")
    roster.load("bob@localhost")
    assert roster.cached("bob@localhost") is not None


def test_a_heartbeat_in_flight_when_the_node_stops_does_not_list_it_again(fake_redis: FakeRedis) -> None:
    """The node stops while a heartbeat waits for Redis's TIME: the
    heartbeat's ZADD must not follow the leaving ZREM (the node would stay
    listed, as dead, after a clean stop)."""
    server = cluster_server()
    server.cluster.start()
    pending: defer.Deferred = defer.Deferred()
    times = iter([pending])
    fake_redis.replies["TIME"] = lambda: next(times, [str(T0), "0"])
    server.cluster._tick()
    server.cluster.stop()
    pending.callback([str(T0), "0"])
    names = [c[0] for c in fake_redis.commands if c[0] in ("ZADD", "ZREM")]
    assert names[-1] == "ZREM", names


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The XML of every forwarded stanza the receiving node parses."""
    parsed: list[str] = []
    real = cluster_node.parse_stanza

    def counting(xml: str) -> Any:
        parsed.append(xml)
        return real(xml)

    monkeypatch.setattr(cluster_node, "parse_stanza", counting)
    return parsed


def test_forwarded_message_is_written_as_it_came_without_parsing(
        fake_redis: FakeRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forwarded message for a session that only writes it goes out as
    the bytes another node serialized, never parsed here; a presence (a
    roster change may come with it) is still parsed."""
    server = cluster_server()
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    bob.stream.transport.clear()
    parsed = _count_parses(monkeypatch)
    xml = "<message from='alice@localhost/a' to='bob@localhost/b' type='chat' id='m1'><body>hi</body></message>"
    server.cluster._deliver_entry("1-0", ["b", json.dumps([["bob@localhost/b", xml]])])
    assert bob.stream.transport.value() == xml.encode()
    assert parsed == []
    pres = "<presence from='alice@localhost/a' to='bob@localhost/b'/>"
    server.cluster._deliver_entry("2-0", ["b", json.dumps([["bob@localhost/b", pres]])])
    assert parsed == [pres]
    assert [e.name for e in bob.take()] == ["message", "presence"]


def test_forwarded_message_to_an_inactive_session_waits_in_its_csi_buffer(
        fake_redis: FakeRedis) -> None:
    """XEP-0352: a chat state forwarded to a session that said <inactive/>
    is held like a local one; a message with a body sends it and itself."""
    server = cluster_server('"message", "offline", "roster", "presence", "csi"')
    bob = bind(server, "bob@localhost/b", available=True)
    bob.stream.dataReceived(b"<inactive xmlns='urn:xmpp:csi:0'/>")
    bob.take()
    state = ("<message from='alice@localhost/a' to='bob@localhost/b' type='chat'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    server.cluster._deliver_entry("1-0", ["b", json.dumps([["bob@localhost/b", state]])])
    assert bob.take() == []
    chat = "<message from='alice@localhost/a' to='bob@localhost/b' type='chat'><body>hi</body></message>"
    server.cluster._deliver_entry("2-0", ["b", json.dumps([["bob@localhost/b", chat]])])
    got = bob.take()
    assert [e.firstChildElement().name for e in got] == ["composing", "body"]


def test_forwarded_message_to_a_stream_management_session_is_queued(fake_redis: FakeRedis) -> None:
    """XEP-0198: a forwarded message to a session with stream management
    enabled is written and kept in its queue until acknowledged."""
    server = cluster_server('"message", "offline", "roster", "presence", "smacks"')
    bob = bind(server, "bob@localhost/b", available=True)
    bob.stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    bob.take()
    assert bob.sm is not None and bob.sm.sent == 0
    chat = "<message from='alice@localhost/a' to='bob@localhost/b' type='chat'><body>hi</body></message>"
    server.cluster._deliver_entry("1-0", ["b", json.dumps([["bob@localhost/b", chat]])])
    assert [str(e.body) for e in bob.take() if e.name == "message"] == ["hi"]
    assert bob.sm.sent == 1 and list(bob.sm.queue) == [chat.encode()]
