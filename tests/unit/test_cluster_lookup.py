"""A stanza for a session bound on another node a moment ago, before that
node's directory notification reached this node (cluster/lookup.py): it is
delivered there, in order, not stored offline; answers older than a
notification do not go into the cache. Two nodes share the fake Redis of
test_cluster_smacks (``Bus``), whose notifications the tests hold back."""

from __future__ import annotations

from typing import Any

from tests.unit.fakes import bind, make_server
from tests.unit.test_cluster_smacks import Bus, bodies, bus, send  # noqa: F401 (fixture)


def offline_count(server: Any, user: str) -> int:
    counted: list[int] = []
    server.stores.offline.count(user).addCallback(counted.append)
    return counted[0]


def bob_on_n2_unheard(bus: Bus) -> tuple[Any, Any, list[tuple[str, str]]]:
    """Alice on n1 (known everywhere); Bob binds on n2 and sends his initial
    presence; n2 has written Redis and published, but n1 has not received
    the notifications yet (returned, to deliver later)."""
    n1, n2 = bus.servers["n1"], bus.servers["n2"]
    alice = bind(n1, "alice@localhost/a", available=True)
    bus.pump()
    bob = bind(n2, "bob@localhost/b", available=True)
    n2.clock.advance(0)
    late, bus.notes = bus.notes, []
    assert n1.sessions.get("bob@localhost", "b") is None
    bob.take()
    return alice, bob, late


def deliver_notes(bus: Bus, notes: list[tuple[str, str]]) -> None:
    for channel, message in notes:
        for server in bus.servers.values():
            server.cluster._on_message(channel, message)


def test_message_for_a_session_the_cache_does_not_know_yet(bus: Bus) -> None:
    """Alice (n1) writes to Bob's bare and full JID right after he bound on
    n2: n1 reads Bob's entry in Redis and forwards both to n2, in order;
    nothing goes to offline storage, and the late notifications change
    nothing (no duplicate)."""
    alice, bob, late = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    before = n1.cluster.lookup.lookups
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    send(alice, "<message to='bob@localhost/b' type='chat'><body>2</body></message>")
    bus.pump()
    assert bodies(bob.take()) == ["1", "2"]
    assert offline_count(n1, "bob@localhost") == 0
    assert n1.sessions.get("bob@localhost", "b").node == "n2"
    assert n1.cluster.lookup.lookups == before + 1  # the second found the cache filled
    deliver_notes(bus, late)
    bus.pump()
    assert bodies(bob.take()) == []


def test_iq_for_a_full_jid_the_cache_does_not_know_yet(bus: Bus) -> None:
    """An IQ request to Bob's new resource reaches it rather than bouncing
    with service-unavailable (RFC 6121 §8.5.3.2.2 is for resources that are
    not there)."""
    alice, bob, _ = bob_on_n2_unheard(bus)
    send(alice, "<iq to='bob@localhost/b' type='get' id='v1'>"
                "<query xmlns='jabber:iq:version'/></iq>")
    bus.pump()
    assert [e["id"] for e in bob.take() if e.name == "iq"] == ["v1"]
    assert not [e for e in alice.take() if e.name == "iq" and e.getAttribute("type") == "error"]


def test_later_stanzas_wait_behind_a_lookup_and_a_notification_repeats_it(bus: Bus) -> None:
    """While n1's lookup of Bob is under way, the notification of his session
    arrives and Alice writes again: her second message waits behind the
    first (no overtaking through the now filled cache), and the answer,
    possibly older than the notification, is asked again before use."""
    alice, bob, late = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    bus.held_lookups = []
    before = n1.cluster.lookup.lookups
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    deliver_notes(bus, late)
    assert n1.sessions.get("bob@localhost", "b") is not None
    send(alice, "<message to='bob@localhost' type='chat'><body>2</body></message>")
    assert n1.cluster.lookup.held() == 2
    bus.answer_lookups()  # stale: asked again
    assert n1.cluster.lookup.lookups == before + 2 and n1.cluster.lookup.held() == 2
    bus.answer_lookups()
    bus.held_lookups = None
    bus.pump()
    assert bodies(bob.take()) == ["1", "2"]
    assert n1.cluster.lookup.held() == 0
    assert offline_count(n1, "bob@localhost") == 0


def test_answer_older_than_a_session_end_stays_out_of_the_cache(bus: Bus) -> None:
    """Redis answered "Bob is on n2" before his session ended; the end's
    notification reaches n1 before that answer: the answer must not bring
    the ended session back into n1's cache. The message goes to offline
    storage, as on one node."""
    alice, bob, late = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    bus.held_lookups = []
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    bob.stream.connectionLost(None)  # n2: HDEL, then the end's notification
    bus.servers["n2"].clock.advance(0)
    deliver_notes(bus, late + bus.notes)
    bus.notes = []
    bus.answer_lookups()  # said "on n2": dropped, asked again
    bus.answer_lookups()
    bus.held_lookups = None
    bus.pump()
    assert n1.sessions.get("bob@localhost", "b") is None
    assert offline_count(n1, "bob@localhost") == 1


def test_single_node_router_holds_nothing() -> None:
    """Without [cluster] the router has no hold hook (the path stays free)."""
    server = make_server(modules=["message"])
    assert server.router.hold is None


def test_held_stanzas_are_bounded_per_account(bus: Bus) -> None:
    """With ``held_per_user`` = 1 a second message for Bob does not wait
    behind the first one's lookup: it goes on with what the cache knows
    (offline storage here), the held one is delivered after the answer."""
    alice, bob, _ = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    n1.cluster.lookup.per_user = 1
    bus.held_lookups = []
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    send(alice, "<message to='bob@localhost' type='chat'><body>2</body></message>")
    assert n1.cluster.lookup.held() == 1
    bus.answer_lookups()
    bus.held_lookups = None
    bus.pump()
    assert bodies(bob.take()) == ["1"]
    assert offline_count(n1, "bob@localhost") == 1


def test_a_lookup_that_times_out_is_asked_again(bus: Bus) -> None:
    """A lookup unanswered within LOOKUP_TIMEOUT (a node seconds behind its
    reactor) is asked again, up to MAX_TRIES: Alice's message reaches Bob on
    n2 when a later answer comes, instead of offline storage; only when
    every try timed out does the message go on with the cache (offline)."""
    from chatbx_server.cluster import lookup

    alice, bob, late = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    bus.held_lookups = []
    before = n1.cluster.lookup.lookups
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    n1.clock.advance(lookup.LOOKUP_TIMEOUT)
    assert n1.cluster.lookup.lookups == before + 2 and n1.cluster.lookup.held() == 1
    bus.answer_lookups()  # the first, timed out: ignored; the second, answered
    bus.held_lookups = None
    bus.pump()
    assert bodies(bob.take()) == ["1"]
    assert offline_count(n1, "bob@localhost") == 0


def test_a_lookup_that_never_answers_gives_up_after_max_tries(bus: Bus) -> None:
    """Redis silent: after MAX_TRIES timeouts the held message goes on with
    what the cache knows (here: no session, so offline storage)."""
    from chatbx_server.cluster import lookup

    alice, bob, late = bob_on_n2_unheard(bus)
    n1 = bus.servers["n1"]
    bus.held_lookups = []
    before = n1.cluster.lookup.lookups
    send(alice, "<message to='bob@localhost' type='chat'><body>1</body></message>")
    for _ in range(lookup.MAX_TRIES - 1):
        n1.clock.advance(lookup.LOOKUP_TIMEOUT)
        assert n1.cluster.lookup.held() == 1
    n1.clock.advance(lookup.LOOKUP_TIMEOUT)
    assert n1.cluster.lookup.lookups == before + lookup.MAX_TRIES
    assert n1.cluster.lookup.held() == 0
    assert offline_count(n1, "bob@localhost") == 1
    bus.held_lookups = None
