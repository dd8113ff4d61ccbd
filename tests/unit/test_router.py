"""Router: classification of 'to', event names, IQ rules and bounces
(RFC 6120 §8, §10; RFC 6121 §8.5)."""

from __future__ import annotations

import pytest

from chatbx_server.events import DELIVER
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza


@pytest.fixture
def server():
    return make_server(modules=["message"], domains=("localhost",))


def send(server, session, xml: str):
    """Route ``xml`` as the c2s stream does: stamped with the sender's full JID."""
    s = stanza(xml)
    s["from"] = session.jid.full
    return server.router.route(s, session)


def record(server, *names):
    """Hook every name; return the list of (name, event) seen."""
    seen: list = []
    for name in names:
        server.events.on(name, lambda ev, name=name: seen.append((name, ev)) or True, DELIVER + 10)
    return seen


def error_condition(element) -> str:
    assert element["type"] == "error", element.toXml()
    err = element.error
    return [c.name for c in err.elements() if c.uri == ns.STANZA_ERRORS and c.name != "text"][0]


@pytest.mark.parametrize("to,kind,target", [
    ("Bob@LocalHost", "bare", "bob@localhost"), ("bob@localhost/R", "full", "bob@localhost/R"),
    ("localhost", "host", "localhost"), ("localhost/r", "host", "localhost/r"),
    (None, "bare", "alice@localhost"),
])
def test_kind_classification_and_pre_events(server, to, kind, target):
    """A client's message fires pre-message/{kind} with the prepared target and sender;
    no 'to' means the sender's own bare JID."""
    alice = bind(server, "alice@localhost/phone")
    seen = record(server, f"pre-message/{kind}")
    msg = stanza(f"<message to='{to}'/>" if to else "<message/>")
    assert server.router.route(msg, alice) is True
    (name, ev), = seen
    assert ev.kind == kind and ev.origin is alice and ev.sender == alice.jid
    assert ev.to.full == target


def test_pre_event_only_for_local_clients(server):
    """Server-made or remote stanzas (no origin) skip pre- and go to delivery."""
    seen = record(server, "pre-message/bare", "message/bare")
    server.router.route(stanza("<message to='bob@localhost' from='x@remote.example/r'/>"))
    assert [n for n, _ in seen] == ["message/bare"]
    assert seen[0][1].sender.full == "x@remote.example/r" and seen[0][1].origin is None


def test_pre_then_delivery(server):
    """Without a pre- handler taking it, a message goes to {name}/{kind} delivery."""
    alice = bind(server, "alice@localhost/phone")
    seen = []
    server.events.on("pre-presence/bare", lambda ev: seen.append("pre"), DELIVER)  # returns None
    server.events.on("presence/bare", lambda ev: seen.append("deliver") or True, DELIVER)
    send(server, alice, "<presence to='bob@localhost'/>")
    assert seen == ["pre", "deliver"]


def test_deliver_skips_pre(server):
    """router.deliver() fires only the delivery event."""
    alice = bind(server, "alice@localhost/phone")
    seen = record(server, "pre-message/full", "message/full")
    from chatbx_server.events import StanzaEvent
    from chatbx_server.xmpp.jid import JID

    ev = StanzaEvent(stanza("<message to='bob@localhost/r'/>"), alice, JID.parse("bob@localhost/r"),
                     alice.jid, "full")
    server.router.deliver(ev)
    assert [n for n, _ in seen] == ["message/full"]


def test_unhandled_message_bounces_presence_does_not(server):
    """A message nobody takes is answered service-unavailable; presence is dropped."""
    alice = bind(server, "alice@localhost/phone")
    send(server, alice, "<message to='bob@localhost' id='m1'><body>x</body></message>")
    (reply,) = alice.take()
    assert error_condition(reply) == "service-unavailable"
    assert reply["id"] == "m1" and reply["to"] == "alice@localhost/phone"
    send(server, alice, "<presence to='bob@localhost'/>")
    assert alice.take() == []


def test_iq_event_name(server):
    """Requests fire iq-{type}/{kind}/{xmlns}:{name}."""
    alice = bind(server, "alice@localhost/phone")
    seen = record(server, "iq-get/host/urn:xmpp:ping:ping", "iq-set/bare/jabber:iq:roster:query")
    send(server, alice, "<iq type='get' id='1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    send(server, alice, "<iq type='set' id='2'><query xmlns='jabber:iq:roster'/></iq>")
    assert [n for n, _ in seen] == ["iq-get/host/urn:xmpp:ping:ping", "iq-set/bare/jabber:iq:roster:query"]


def test_unhandled_iq_is_service_unavailable(server):
    """An iq get nobody handles is answered service-unavailable with its payload."""
    alice = bind(server, "alice@localhost/phone")
    send(server, alice, "<iq type='get' id='u1' to='localhost'><q xmlns='urn:unknown'/></iq>")
    (reply,) = alice.take()
    assert error_condition(reply) == "service-unavailable"
    assert reply["id"] == "u1" and reply["from"] == "localhost"
    assert reply.firstChildElement().uri == "urn:unknown"


def test_iq_to_full_jid_forwarded(server):
    """An unhandled iq to a connected full JID goes to that resource, and its result back."""
    alice = bind(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/desk")
    iq = stanza("<iq type='get' id='v1' to='bob@localhost/desk' from='alice@localhost/phone'>"
                "<query xmlns='jabber:iq:version'/></iq>")
    assert server.router.route(iq, alice) is True
    (got,) = bob.take()
    assert got["id"] == "v1" and got["from"] == "alice@localhost/phone"
    result = stanza("<iq type='result' id='v1' to='alice@localhost/phone' from='bob@localhost/desk'/>")
    server.router.route(result, bob)
    assert [s["type"] for s in alice.take()] == ["result"]


def test_iq_to_missing_full_jid(server):
    """An iq request to an absent resource is service-unavailable; a result to one is dropped."""
    alice = bind(server, "alice@localhost/phone")
    send(server, alice, "<iq type='get' id='x' to='bob@localhost/gone'>"
                               "<query xmlns='jabber:iq:version'/></iq>")
    assert error_condition(alice.take()[0]) == "service-unavailable"
    assert send(server, alice, "<iq type='result' id='x' to='bob@localhost/gone'/>") is True
    assert alice.take() == []


def test_iq_result_to_host_fires_id_event(server):
    """Answers to the server's own requests fire iq-result/host/{id}."""
    seen = record(server, "iq-result/host/srv1", "iq-error/bare/srv2")
    alice = bind(server, "alice@localhost/phone")
    send(server, alice, "<iq type='result' id='srv1' to='localhost'/>")
    send(server, alice, "<iq type='error' id='srv2' to='alice@localhost'/>")
    assert [n for n, _ in seen] == ["iq-result/host/srv1", "iq-error/bare/srv2"]


@pytest.mark.parametrize("xml,text", [
    ("<iq type='get' id='b' to='localhost'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>", "more than one"),
    ("<iq type='get' id='b' to='localhost'/>", "without payload"),
    ("<iq type='get' to='localhost'><a xmlns='urn:a'/></iq>", "without id"),
    ("<iq type='bogus' id='b' to='localhost'><a xmlns='urn:a'/></iq>", "bad iq type"),
])
def test_bad_iq(server, xml, text):
    """IQs with two payloads, none, no id or a bad type are bad-request (RFC 6120 §8.2.3)."""
    alice = bind(server, "alice@localhost/phone")
    seen = record(server, "iq-get/host/urn:a:a")
    send(server, alice, xml)
    (reply,) = alice.take()
    assert error_condition(reply) == "bad-request"
    assert text in str(reply.error.text)
    assert seen == []


@pytest.mark.parametrize("xml", [
    "<message type='error' to='nobody@localhost'/>",
    "<message type='error' to='x@remote.example'/>",
    "<iq type='error' id='e' to='x@remote.example'/>",
    "<iq type='result' id='e' to='x@remote.example'/>",
    "<message type='error' to='@@bad'/>",
])
def test_errors_never_bounced(server, xml):
    """Errors (and IQ results) that cannot be delivered vanish, never answered."""
    alice = bind(server, "alice@localhost/phone")
    send(server, alice, xml)
    assert alice.take() == []


def test_malformed_to_is_jid_malformed(server):
    """A 'to' that is not a JID is answered jid-malformed."""
    alice = bind(server, "alice@localhost/phone")
    alice_stanza = stanza("<message to='a@b@c' id='j'><body>x</body></message>")
    alice_stanza["from"] = alice.jid.full
    server.router.route(alice_stanza, alice)
    (reply,) = alice.take()
    assert error_condition(reply) == "jid-malformed" and reply["id"] == "j"


def test_remote_without_s2s(server):
    """With no remote delivery, stanzas for other domains bounce remote-server-not-found."""
    alice = bind(server, "alice@localhost/phone")
    for xml in ("<message to='x@remote.example' id='r'><body>x</body></message>",
                "<iq type='get' id='r' to='remote.example'><ping xmlns='urn:xmpp:ping'/></iq>"):
        s = stanza(xml)
        s["from"] = alice.jid.full
        server.router.route(s, alice)
        (reply,) = alice.take()
        assert error_condition(reply) == "remote-server-not-found"
        assert reply["from"] in ("x@remote.example", "remote.example")


def test_remote_and_services(server):
    """Remote stanzas go to router.remote; hosted service domains to their handler."""
    alice = bind(server, "alice@localhost/phone")
    remote, service = [], []
    server.router.remote = remote.append
    server.router.services["conference.localhost"] = service.append
    send(server, alice, "<message to='x@remote.example'/>")
    send(server, alice, "<presence to='room@conference.localhost/nick'/>")
    assert remote[0].to.full == "x@remote.example" and remote[0].sender == alice.jid
    assert service[0].name == "presence"


def test_no_to_and_no_origin_is_dropped(server):
    """A server-made stanza without 'to' has nowhere to go: dropped, no crash."""
    assert server.router.route(stanza("<message><body>x</body></message>")) is None


def test_reply_local_and_routed(server):
    """router.reply answers a local origin directly and routes otherwise."""
    alice = bind(server, "alice@localhost/phone")
    from chatbx_server.events import StanzaEvent

    ev = StanzaEvent(stanza("<iq/>"), alice, None, alice.jid, "host")
    server.router.reply(ev, stanza("<iq type='result' id='1'/>"))
    assert len(alice.take()) == 1
    ev = StanzaEvent(stanza("<iq/>"), None, None, None, "host")
    server.router.reply(ev, stanza("<iq type='result' id='2' to='alice@localhost/phone'/>"))
    assert [s["id"] for s in alice.take()] == ["2"]


def test_bounce_of_stanza_without_to_comes_from_account(server):
    """An error for a stanza without 'to' comes from the sender's bare JID."""
    alice = bind(server, "alice@localhost/phone")
    s = stanza("<message id='n'><body/></message>")
    s["from"] = alice.jid.full
    server.router.bounce(s, "not-allowed")
    (reply,) = alice.take()
    assert reply["from"] == "alice@localhost" and error_condition(reply) == "not-allowed"


def test_full_jid_fallback_runs_observers_once(server):
    """§8.5.3.2.1: a message to a gone resource is delivered by the bare-JID rules, and an
    observer hooked on message/full and message/bare above DELIVER sees it only once."""
    from chatbx_server.events import ARCHIVE
    alice = bind(server, "alice@localhost/a")
    bob = bind(server, "bob@localhost/r1")
    bob.presence = stanza("<presence/>")  # available (no presence module here)
    seen = []
    for name in ("message/full", "message/bare"):
        server.events.on(name, lambda ev, name=name: seen.append(name), ARCHIVE)
    send(server, alice, "<message to='bob@localhost/gone' type='chat'><body>hi</body></message>")
    assert seen == ["message/full"]
    assert [m["to"] for m in bob.sent if m.name == "message"] == ["bob@localhost/gone"]
    send(server, alice, "<message to='bob@localhost' type='chat'><body>hi</body></message>")
    assert seen == ["message/full", "message/bare"]


def test_full_jid_fallback_reaches_lower_priorities(server):
    """With no resource available, the fallback still reaches offline storage (below DELIVER)."""
    from chatbx_server.events import OFFLINE
    alice = bind(server, "alice@localhost/a")
    stored = []
    server.events.on("message/bare", lambda ev: stored.append(ev.stanza["to"]) or True, OFFLINE)
    alice.take()
    send(server, alice, "<message to='bob@localhost/gone' type='chat'><body>hi</body></message>")
    assert stored == ["bob@localhost/gone"]
    assert alice.sent == []  # stored, not bounced
