"""XEP-0160 offline messages: what is stored, bounds (messages, bytes) and errors,
delivery in pages when a resource starts taking bare-JID messages."""

from __future__ import annotations

from twisted.internet import defer

from chatbx_server.features.offline import storage_decision
from chatbx_server.xmpp.stanzas import parse_stanza
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server, stanza

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def setup_server(max_per_user: int | None = None, max_bytes: int | None = None,
                 modules: tuple[str, ...] = ("message", "offline")):
    """A server with alice and bob, and bob bound (not available) as bob@localhost/b."""
    options = ""
    if max_per_user is not None:
        options += f"max_per_user = {max_per_user}\n"
    if max_bytes is not None:
        options += f"max_bytes = {max_bytes}\n"
    enabled = ", ".join(f'"{m}"' for m in modules)
    server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n"
                                     f"[modules.offline]\n{options}")
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


def usage(server, user: str = "alice@localhost") -> tuple[int, int]:
    result = []
    server.stores.offline.usage(user).addCallback(result.append)
    return result[0]


class HeldFetches:
    """Stands in for the store's fetch: each call waits until the test releases it."""

    def __init__(self, server) -> None:
        self.store = server.stores.offline
        self.real = self.store.fetch
        self.calls: list[tuple[str, dict, defer.Deferred]] = []
        self.store.fetch = self.fetch

    def fetch(self, user, **kwargs):
        d = defer.Deferred()
        self.calls.append((user, kwargs, d))
        return d

    def release(self) -> list:
        """Run the oldest held fetch on the real store and fire it; return its rows."""
        user, kwargs, d = self.calls.pop(0)
        rows = []
        self.real(user, **kwargs).addCallback(rows.extend)
        d.callback(rows)
        return rows

    def release_all(self) -> None:
        while self.calls:
            self.release()

    def restore(self) -> None:
        self.store.fetch = self.real


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
    held = HeldFetches(server)
    phone = bind(server, "alice@localhost/phone")
    laptop = bind(server, "alice@localhost/laptop")
    come_online(server, phone)
    come_online(server, laptop)
    assert len(held.calls) == 1
    held.release_all()
    assert [m["id"] for m in phone.take()] == ["m1"]
    assert laptop.take() == []
    assert count(server) == 0
    # The guard is released: the next login fetches again (and finds nothing).
    held.restore()
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


# -- the byte bound ------------------------------------------------------------

def test_byte_bound_bounces_what_would_pass_it_and_keeps_what_was_accepted() -> None:
    """[modules.offline] max_bytes bounds the stored XML per account: a message that
    would pass it bounces with service-unavailable (XEP-0160 §2 step 3) while smaller
    ones still fit, and what was accepted is delivered intact."""
    server, bob = setup_server(max_bytes=1500)
    big = "x" * 600
    send(server, bob, f"<message to='alice@localhost' id='m0'><body>{big}</body></message>")
    held, held_bytes = usage(server)
    assert held == 1 and 600 < held_bytes < 800  # the XML with its delay stamp
    send(server, bob, f"<message to='alice@localhost' id='m1'><body>{big}</body></message>")
    [reply] = bob.take()
    assert reply["type"] == "error" and reply["id"] == "m1"
    assert condition(reply) == "service-unavailable"
    assert error_text(reply) == "offline storage full"
    send(server, bob, "<message to='alice@localhost' id='m2'><body>small</body></message>")
    assert bob.take() == []
    assert usage(server)[0] == 2
    alice = bind(server, "alice@localhost/phone")
    come_online(server, alice)
    delivered = alice.take()
    assert [m["id"] for m in delivered] == ["m0", "m2"]
    assert str(next(delivered[0].elements(ns.CLIENT, "body"))) == big
    assert usage(server) == (0, 0)


def test_a_thousand_big_messages_do_not_fit_by_default() -> None:
    """The default byte bound (10 MiB) stops one sender long before 1,000 messages
    of 256 KiB (250 MiB) could be stored for someone."""
    server, bob = setup_server()
    body = "y" * (256 * 1024 - 400)
    stored = 0
    for i in range(60):
        send(server, bob, f"<message to='alice@localhost' id='b{i}'><body>{body}</body></message>")
        if bob.take():
            break
        stored += 1
    held, held_bytes = usage(server)
    assert held == stored == 10 * 1024 * 1024 // (held_bytes // held)  # 40, not 1,000


# -- delivery in pages ---------------------------------------------------------

def test_delivery_goes_page_by_page_and_deletes_each_page_after_sending() -> None:
    """Stored messages are fetched at most 100 per query, each page sent and then
    deleted before the next one is fetched; a session gone mid-delivery leaves the
    rest stored, and the next login gets it, in order, with its original stamps."""
    server, bob = setup_server()
    for i in range(250):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{i}</body></message>")
        server.clock.advance(1)
    held = HeldFetches(server)
    alice = bind(server, "alice@localhost/phone")
    come_online(server, alice)
    assert len(held.calls) == 1 and held.calls[0][1]["max_messages"] == 100
    assert alice.take() == []  # nothing before the first page arrives

    held.release()
    assert [m["id"] for m in alice.take()] == [f"m{i}" for i in range(100)]
    assert count(server) == 150  # the page was deleted once sent
    assert len(held.calls) == 1  # the next page is asked for only now

    held.release()
    assert [m["id"] for m in alice.take()] == [f"m{i}" for i in range(100, 200)]
    assert count(server) == 50

    alice.close()  # the client goes away while the third page is being fetched
    assert alice.closed
    held.release()
    assert held.calls == []
    assert count(server) == 50

    held.restore()
    again = bind(server, "alice@localhost/laptop")
    come_online(server, again)
    delivered = again.take()
    assert [m["id"] for m in delivered] == [f"m{i}" for i in range(200, 250)]
    [delay] = list(delivered[0].elements(ns.DELAY, "delay"))
    assert delay["stamp"] == "2023-11-14T22:16:40Z"  # T0 + 200 s, the time it was stored
    assert count(server) == 0


def test_page_is_bounded_in_bytes_too() -> None:
    """A page holds about 1 MiB of XML at most (one bigger message goes alone), so
    writing it stays inside the c2s output buffer."""
    server, bob = setup_server()
    body = "z" * (200 * 1024)
    for i in range(12):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{body}</body></message>")
    held = HeldFetches(server)
    alice = bind(server, "alice@localhost/phone")
    come_online(server, alice)
    sizes = []
    while held.calls:
        held.release()
        sizes.append(len(alice.take()))
    assert sizes == [5, 5, 2, 0]
    assert count(server) == 0


def test_message_whose_write_dropped_the_stream_stays_stored() -> None:
    """When writing a stored message drops the connection (a client that stopped
    reading), that message and the rest of the page stay stored; those written
    before are deleted."""
    server, bob = setup_server()
    for i in range(5):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{i}</body></message>")
    alice = bind(server, "alice@localhost/phone")
    stream = alice.stream
    real_send = stream.send_element

    dropped = []

    def send_then_drop(element):
        real_send(element)
        if len(alice.sent) == 3 and not dropped:
            dropped.append(True)
            stream.close_stream("policy-violation", "output buffer full")

    stream.send_element = send_then_drop
    come_online(server, alice)
    assert [m["id"] for m in alice.take()] == ["m0", "m1", "m2"]
    laptop = bind(server, "alice@localhost/laptop")
    come_online(server, laptop)
    assert [m["id"] for m in laptop.take()] == ["m2", "m3", "m4"]


# -- when delivery happens (XEP-0160 §2 step 5, RFC 6121 §8.5.2.1.1) ------------

WITH_PRESENCE = ("message", "roster", "presence", "offline")


def presence(server, session, priority=None, ptype=None) -> None:
    """A broadcast presence from ``session``, handled by the real presence module."""
    attrs = f" type='{ptype}'" if ptype else ""
    child = f"<priority>{priority}</priority>" if priority is not None else ""
    server.router.route(stanza(f"<presence{attrs}>{child}</presence>"), session)


def messages(session) -> list:
    return [e for e in session.take() if e.name == "message"]


def test_negative_priority_resource_gets_messages_once_it_raises_its_priority() -> None:
    """A resource that comes online at priority -1 receives nothing, and messages sent
    meanwhile are stored (RFC 6121 §8.5.2.1.1); raising its priority to 5 delivers them
    all, without reconnecting (XEP-0160 §2: the next non-negative available presence)."""
    server, bob = setup_server(modules=WITH_PRESENCE)
    send(server, bob, "<message to='alice@localhost' id='m1'><body>before</body></message>")
    alice = bind(server, "alice@localhost/bot")
    presence(server, alice, priority=-1)
    assert alice.available and alice.priority == -1
    send(server, bob, "<message to='alice@localhost' id='m2'><body>while negative</body></message>")
    assert messages(alice) == []
    assert bob.take() == []
    assert count(server) == 2
    presence(server, alice, priority=5)
    assert [m["id"] for m in messages(alice)] == ["m1", "m2"]
    assert count(server) == 0
    # Now the resource takes bare-JID messages directly.
    send(server, bob, "<message to='alice@localhost' id='m3'><body>live</body></message>")
    assert [m["id"] for m in messages(alice)] == ["m3"]
    assert count(server) == 0


def test_going_negative_and_back_delivers_what_was_stored_meanwhile() -> None:
    """A resource that lowers its priority below zero stops taking bare-JID messages
    (they are stored); back at a non-negative priority it gets them."""
    server, bob = setup_server(modules=WITH_PRESENCE)
    alice = bind(server, "alice@localhost/phone")
    presence(server, alice, priority=1)
    presence(server, alice, priority=-5)
    send(server, bob, "<message to='alice@localhost' id='m1'><body>x</body></message>")
    assert messages(alice) == [] and count(server) == 1
    presence(server, alice)  # no <priority/>: 0
    assert [m["id"] for m in messages(alice)] == ["m1"]
    assert count(server) == 0


def test_presence_updates_of_an_available_resource_do_not_fetch_again() -> None:
    """Only the change to non-negative availability fetches stored messages: later
    status or priority updates of a resource that already takes messages do not."""
    server, bob = setup_server(modules=WITH_PRESENCE)
    alice = bind(server, "alice@localhost/phone")
    held = HeldFetches(server)
    presence(server, alice, priority=1)
    assert len(held.calls) == 1
    held.release_all()
    presence(server, alice, priority=3)
    presence(server, alice, priority=0)
    assert held.calls == []


def test_resource_going_negative_mid_delivery_keeps_the_rest_stored() -> None:
    """If the resource being delivered to lowers its priority below zero between two
    pages, the rest stays stored (no other resource takes it), and it gets the rest
    when its priority is non-negative again."""
    server, bob = setup_server(modules=WITH_PRESENCE)
    for i in range(150):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{i}</body></message>")
    held = HeldFetches(server)
    alice = bind(server, "alice@localhost/phone")
    presence(server, alice, priority=1)
    held.release()
    assert len(messages(alice)) == 100
    presence(server, alice, priority=-1)
    held.release_all()
    assert messages(alice) == []
    assert count(server) == 50
    presence(server, alice, priority=1)
    held.release_all()
    assert [m["id"] for m in messages(alice)] == [f"m{i}" for i in range(100, 150)]
    assert count(server) == 0


def test_rest_goes_to_another_available_resource_when_the_first_one_leaves() -> None:
    """Another resource that came online during the delivery got nothing then (one
    delivery per account); when the delivering resource disconnects, that resource
    takes the rest instead of it staying stuck until a reconnect."""
    server, bob = setup_server(modules=WITH_PRESENCE)
    for i in range(150):
        send(server, bob, f"<message to='alice@localhost' id='m{i}'><body>{i}</body></message>")
    held = HeldFetches(server)
    phone = bind(server, "alice@localhost/phone")
    laptop = bind(server, "alice@localhost/laptop")
    presence(server, phone)
    presence(server, laptop)
    assert len(held.calls) == 1
    held.release()
    assert len(messages(phone)) == 100
    assert messages(laptop) == []
    phone.close()
    server.sessions.remove(phone)
    server.events.fire_all("session/closed", phone)
    held.release_all()
    assert [m["id"] for m in messages(laptop)] == [f"m{i}" for i in range(100, 150)]
    assert count(server) == 0


class CountedFetches:
    """Counts the store's fetch calls (the real fetch still runs)."""

    def __init__(self, server) -> None:
        self.store = server.stores.offline
        self.real = self.store.fetch
        self.calls = 0
        self.store.fetch = self.fetch

    def fetch(self, user, **kwargs):
        self.calls += 1
        return self.real(user, **kwargs)


def _relogin(server, resource: str):
    session = bind(server, f"alice@localhost/{resource}")
    come_online(server, session)
    return session


def test_an_account_found_empty_is_not_asked_again_until_something_is_stored() -> None:
    """A login that found nothing stored is remembered: the next login of
    the account skips the query; a message stored meanwhile makes the next
    login ask (and get it) again."""
    server, bob = setup_server()
    fetches = CountedFetches(server)
    first = _relogin(server, "one")
    assert fetches.calls == 1 and first.take() == []
    second = _relogin(server, "two")
    assert fetches.calls == 1 and second.take() == []
    for session in (first, second):
        session.presence = None
        session.stream.connectionLost(None)
    send(server, bob, "<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
    third = _relogin(server, "three")
    assert fetches.calls >= 2
    assert [m["id"] for m in third.take() if m.name == "message"] == ["m1"]
    fetches.calls = 0
    fourth = _relogin(server, "four")
    assert fetches.calls == 0 and fourth.take() == []


def test_a_message_stored_while_the_empty_answer_is_on_its_way_is_delivered_next_time() -> None:
    """The fetch found nothing, but a message was stored before its answer
    came back: the account is not remembered as empty."""
    server, bob = setup_server()
    held = HeldFetches(server)
    first = bind(server, "alice@localhost/one")
    come_online(server, first)
    rows = []
    user, kwargs, d = held.calls.pop(0)
    held.real(user, **kwargs).addCallback(rows.extend)  # read now: empty
    first.presence = None
    first.stream.connectionLost(None)
    send(server, bob, "<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>")
    d.callback(rows)
    assert rows == []
    held.restore()
    second = _relogin(server, "two")
    assert [m["id"] for m in second.take() if m.name == "message"] == ["m1"]


def test_with_no_empty_memory_every_login_asks() -> None:
    """empty_memory = 0 keeps nothing: each login queries the store."""
    server = make_server(config_text="[modules]\nenabled = [\"message\", \"offline\"]\n"
                                     "[modules.offline]\nempty_memory = 0\n")
    create_user(server, "alice@localhost")
    fetches = CountedFetches(server)
    for resource in ("one", "two", "three"):
        _relogin(server, resource)
    assert fetches.calls == 3
