"""A node restarted under its fixed name before its heartbeat went stale
(cluster/node.py ``_end_previous_run``): the sessions its previous run left
in the directory end, for the other nodes and for the contacts."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from tests.unit.fakes import bind
from tests.unit.test_cluster_smacks import Bus, bus, node_on  # noqa: F401 (fixture)


def test_sessions_of_the_previous_run_end_when_the_node_restarts(bus: Bus) -> None:
    """Alice is online on n1, Bob on n2 sees her. n1 dies without a word (its
    process killed) and starts again as n1 at once, so its heartbeat never
    looked stale: Bob gets Alice's unavailable, n2 forgets her session, the
    directory no longer lists it, and a message to her full JID is not
    forwarded to n1 any more."""
    n2 = bus.servers["n2"]
    alice = bind(bus.servers["n1"], "alice@localhost/phone", available=True)
    bob = bind(n2, "bob@localhost/pc", available=True)
    bus.pump()
    assert n2.cluster.sessions.remote("alice@localhost")
    assert "alice@localhost/phone" in bus.keys["chatbx:sessions:n1"]
    bob.take()
    alice.sent.clear()
    del bus.servers["n1"]  # killed: no stop(), its entries stay in Redis
    # The new run's first heartbeat is answered once its accounts are set up
    # (each fake server has a database of its own; a cluster shares one).
    held: list[defer.Deferred] = []
    time_reply = bus.replies["TIME"]
    bus.replies["TIME"] = lambda: held.append(defer.Deferred()) or held[-1]
    restarted = node_on(bus, "n1")
    bus.replies["TIME"] = time_reply
    assert bob.take() == []  # not before the live nodes are known
    held[0].callback(time_reply())
    bus.pump()
    gone = [p for p in bob.take() if p.name == "presence"
            and p.getAttribute("from") == "alice@localhost/phone"]
    assert [p.getAttribute("type") for p in gone] == ["unavailable"]
    assert not n2.cluster.sessions.remote("alice@localhost")
    assert bus.keys.get("chatbx:sessions:n1", {}) == {}
    assert bus.keys.get("chatbx:user:alice@localhost", {}) == {}
    # A session of the new run is listed as usual.
    bind(restarted, "alice@localhost/laptop", available=True)
    bus.pump()
    assert list(bus.keys["chatbx:sessions:n1"]) == ["alice@localhost/laptop"]
    assert list(n2.cluster.sessions.remote("alice@localhost")) == ["laptop"]


def test_a_first_start_ends_nothing(bus: Bus) -> None:
    """No previous run: nothing is published about sessions, nobody is told anything."""
    n2 = bus.servers["n2"]
    bob = bind(n2, "bob@localhost/pc", available=True)
    bus.pump()
    bob.take()
    node_on(bus, "n3")
    bus.pump()
    assert [p for p in bob.take() if p.name == "presence"] == []
    assert any(c[0] == "EVAL" and c[1] == "chatbx:sessions:n3" for c in bus.commands)
