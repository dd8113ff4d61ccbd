"""Per-account state shared across the nodes of a cluster, with the fake
Redis of test_cluster.py on the fake reactor: Message Carbons (XEP-0280)
for resources held by other nodes."""

from __future__ import annotations

import json
from typing import Any

from chatbx_server.features.carbons import NS_CARBONS
from tests.unit.fakes import bind, stanza
from tests.unit.test_cluster import FakeRedis, cluster_server, fake_redis  # noqa: F401

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
        states = [json.loads(c[3]) for c in fake_redis.named("HSET") if c[2] == alice.jid.full]
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
