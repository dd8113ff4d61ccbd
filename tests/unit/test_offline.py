"""XEP-0160 offline messages: what is stored, bounds and errors, delivery at initial presence."""

from __future__ import annotations

from twisted.internet import defer

from chatbx_server.features.offline import storage_decision
from chatbx_server.xmpp.stanzas import parse_stanza
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server, stanza

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def setup_server(max_per_user: int | None = None):
    if max_per_user is None:
        server = make_server(modules=["message", "offline"])
    else:
        server = make_server(config_text='[modules]\nenabled = ["message", "offline"]\n'
                                         f'[modules.offline]\nmax_per_user = {max_per_user}\n')
    server.clock.advance(T0 - server.clock.seconds())
    create_user(server, "alice@localhost")
    create_user(server, "bob@localhost")
    return server, bind(server, "bob@localhost/b")


def send(server, session, xml):
    """Route a stanza as the c2s session would (with 'from' stamped)."""
    element = stanza(xml)
    element["from"] = session.jid.full
    return server.router.route(element, session)


def come_online(server, session, priority: int = 0) -> None:
    """Initial presence, then what the presence module does (it is not loaded here)."""
    xml = "<presence/>" if not priority else f"<presence><priority>{priority}</priority></presence>"
    send(server, session, xml)
    session.presence = stanza(xml)
    session.priority = priority


def count(server, user: str = "alice@localhost") -> int:
    result = []
    server.stores.offline.count(user).addCallback(result.append)
    return result[0]


def condition(reply) -> str:
    error = next(reply.elements(ns.CLIENT, "error"))
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def error_text(reply) -> str:
    error = next(reply.elements(ns.CLIENT, "error"))
    return str(next(error.elements(ns.STANZA_ERRORS, "text")))


def test_message_to_offline_user_is_stored_and_acknowledged_after_commit() -> None:
    """A chat message to an account with no available resource is stored; route() returns the store's Deferred."""
    server, bob = setup_server()
    result = send(server, bob, "<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
    assert isinstance(result, defer.Deferred)
    fired = []
    result.addCallback(fired.append)
    assert fired == [True]
    assert count(server) == 1
    assert bob.take() == []  # no error to the sender


def test_delivery_at_initial_presence_in_order_with_delay_then_deleted() -> None:
    """Stored messages arrive oldest first, stamped with the receive time and our domain, then are deleted."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost' type='chat' id='m1'><body>one</body></message>")
    server.clock.advance(60)
    send(server, bob, "<message to='alice@localhost/gone' id='m2'><body>two</body></message>")
    server.clock.advance(3600)  # delivery much later: the stamp must not move
    alice = bind(server, "alice@localhost/phone")
    assert alice.take() == []  # bound but not yet available: nothing
    come_online(server, alice)
    delivered = alice.take()
    assert [m["id"] for m in delivered] == ["m1", "m2"]
    assert [str(next(m.elements(ns.CLIENT, "body"))) for m in delivered] == ["one", "two"]
    stamps = []
    for message in delivered:
        [delay] = list(message.elements(ns.DELAY, "delay"))
        assert delay["from"] == "localhost"
        stamps.append(delay["stamp"])
    assert stamps == ["2023-11-14T22:13:20Z", "2023-11-14T22:14:20Z"]
    assert delivered[0]["from"] == "bob@localhost/b"
    assert count(server) == 0
    # A second resource coming online gets nothing more.
    other = bind(server, "alice@localhost/laptop")
    come_online(server, other)
    assert other.take() == []


def test_negative_priority_gets_nothing_and_messages_stay() -> None:
    """Initial presence with a negative priority does not receive offline messages (RFC 6121 §8.5.2.1.1)."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost'><body>hi</body></message>")
    alice = bind(server, "alice@localhost/bot")
    come_online(server, alice, priority=-1)
    assert alice.take() == []
    assert count(server) == 1


def test_message_to_available_resource_is_not_stored() -> None:
    """When a resource takes the message, offline storage is not involved."""
    server, bob = setup_server()
    alice = bind(server, "alice@localhost/phone")
    come_online(server, alice)
    send(server, bob, "<message to='alice@localhost' type='chat'><body>hi</body></message>")
    assert len(alice.take()) == 1
    assert count(server) == 0


def test_headline_error_and_groupchat_are_not_stored() -> None:
    """Headline is silently dropped; error too; groupchat to a bare JID bounces; none is stored."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost' type='headline'><body>news</body></message>")
    assert bob.take() == []
    send(server, bob, "<message to='alice@localhost' type='error'><body>x</body></message>")
    assert bob.take() == []
    send(server, bob, "<message to='alice@localhost' type='groupchat'><body>x</body></message>")
    [reply] = bob.take()
    assert condition(reply) == "service-unavailable"
    assert count(server) == 0


def test_chat_state_only_is_dropped_silently() -> None:
    """A bare typing notification is neither stored nor bounced."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost' type='chat'>"
                      "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert bob.take() == []
    assert count(server) == 0


def test_no_store_hint_is_not_stored_and_bounces() -> None:
    """A XEP-0334 no-store (or no-permanent-store) message is not stored; the sender gets service-unavailable."""
    server, bob = setup_server()
    for hint in ("no-store", "no-permanent-store"):
        send(server, bob, f"<message to='alice@localhost' type='chat'><body>x</body>"
                          f"<{hint} xmlns='urn:xmpp:hints'/></message>")
        [reply] = bob.take()
        assert reply["type"] == "error" and condition(reply) == "service-unavailable"
    assert count(server) == 0


def test_payload_without_body_is_stored() -> None:
    """A receipt (no body, a real payload) is kept, like ejabberd and Prosody do."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost' id='r1'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
    assert count(server) == 1


def test_full_store_bounces_with_text() -> None:
    """Past max_per_user the message bounces with service-unavailable 'offline storage full'."""
    server, bob = setup_server(max_per_user=2)
    for i in range(3):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{i}</body></message>")
    [reply] = bob.take()
    assert reply["type"] == "error" and reply["id"] == "m2"
    assert condition(reply) == "service-unavailable"
    assert error_text(reply) == "offline storage full"
    assert count(server) == 2


def test_unknown_account_bounces() -> None:
    """A message to a JID without an account gets service-unavailable."""
    server, bob = setup_server()
    send(server, bob, "<message to='nobody@localhost' id='x1'><body>hi</body></message>")
    [reply] = bob.take()
    assert reply["type"] == "error" and reply["id"] == "x1"
    assert condition(reply) == "service-unavailable"


def test_storing_does_not_change_the_routed_stanza() -> None:
    """The delay is added to the stored copy only; the original element is unchanged."""
    server, bob = setup_server()
    element = stanza("<message to='alice@localhost'><body>hi</body></message>")
    element["from"] = bob.jid.full
    server.router.route(element, bob)
    assert list(element.elements(ns.DELAY, "delay")) == []


def test_storage_decision_and_parse_round_trip() -> None:
    """The storage rules in one place, and toXml() output parses back to the same stanza."""
    assert storage_decision(stanza("<message><body>x</body></message>")) is True
    assert storage_decision(stanza("<message><store xmlns='urn:xmpp:hints'/></message>")) is True
    assert storage_decision(stanza("<message type='chat'><thread>t</thread></message>")) is False
    assert storage_decision(stanza("<message type='headline'><body>x</body></message>")) is None
    original = stanza("<message to='a@localhost' id='1'><body>&lt;b&gt; &amp; é</body></message>")
    parsed = parse_stanza(original.toXml())
    assert parsed.toXml() == original.toXml()
    assert (parsed.uri, parsed.name) == (ns.CLIENT, "message")


def test_two_resources_coming_online_at_once_get_the_messages_once() -> None:
    """While one delivery's fetch is in flight, a second initial presence fetches nothing again."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost' id='m1'><body>one</body></message>")
    store = server.stores.offline
    real_fetch = store.fetch
    pending: list[defer.Deferred] = []

    def slow_fetch(user):
        d = defer.Deferred()
        real_fetch(user).addCallback(lambda rows: pending.append((d, rows)))
        return d

    store.fetch = slow_fetch
    phone = bind(server, "alice@localhost/phone")
    laptop = bind(server, "alice@localhost/laptop")
    come_online(server, phone)
    come_online(server, laptop)
    assert len(pending) == 1
    d, rows = pending.pop()
    d.callback(rows)
    assert [m["id"] for m in phone.take()] == ["m1"]
    assert laptop.take() == []
    assert count(server) == 0
    # The guard is released: the next login fetches again (and finds nothing).
    store.fetch = real_fetch
    tablet = bind(server, "alice@localhost/tablet")
    come_online(server, tablet)
    assert tablet.take() == []


def test_refused_presence_gets_no_offline_messages() -> None:
    """An initial presence with a priority the presence module refuses (out of -128..127)
    leaves the session unavailable, so it is not given the stored messages either."""
    server, bob = setup_server()
    send(server, bob, "<message to='alice@localhost'><body>hi</body></message>")
    alice = bind(server, "alice@localhost/bot")
    send(server, alice, "<presence><priority>500</priority></presence>")
    assert alice.take() == []
    assert count(server) == 1
