"""XEP-0280 Message Carbons: enable/disable, sent and received copies, what is
eligible, and that copies are separate elements that carry the archive's stanza-id."""

from __future__ import annotations

from typing import Any, Optional

from twisted.words.xish import domish

from chatbx_server.events import ARCHIVE
from chatbx_server.features.carbons import NS_CARBONS, NS_FORWARD, eligible
from chatbx_server.xmpp import ns
from tests.unit.fakes import FakeSession, bind, create_user, make_server, stanza

ALICE, BOB = "alice@localhost", "bob@localhost"
MODULES = ["message", "roster", "presence", "disco", "carbons"]


def setup() -> Any:
    server = make_server(modules=MODULES)
    create_user(server, ALICE)
    create_user(server, BOB)
    return server


def send(server: Any, session: FakeSession, xml: str) -> Any:
    """Route a stanza as the c2s session does (with 'from' stamped)."""
    element = stanza(xml)
    element["from"] = session.jid.full
    return server.router.route(element, session)


def enable(server: Any, session: FakeSession, verb: str = "enable") -> domish.Element:
    send(server, session, f"<iq type='set' id='c1'><{verb} xmlns='{NS_CARBONS}'/></iq>")
    replies = [s for s in session.take() if s.name == "iq"]
    assert len(replies) == 1
    return replies[0]


def online(server: Any, jid: str, priority: int = 0, carbons: bool = True) -> FakeSession:
    session = bind(server, jid, available=True, priority=priority)
    if carbons:
        assert enable(server, session)["type"] == "result"
    session.take()
    return session


def _children(el: domish.Element, uri: str) -> list[domish.Element]:
    return [c for c in el.elements() if c.uri == uri]


def carbons(session: FakeSession) -> list[tuple[str, domish.Element, domish.Element]]:
    """(direction, wrapper, forwarded message) of every carbon the session got."""
    out = []
    for el in session.sent:
        if el.name != "message":
            continue
        for child in _children(el, NS_CARBONS):
            forwarded = next(child.elements(NS_FORWARD, "forwarded"))
            out.append((child.name, el, next(forwarded.elements(ns.CLIENT, "message"))))
    return out


def messages(session: FakeSession) -> list[domish.Element]:
    """Plain (non-carbon) messages the session got."""
    return [el for el in session.sent
            if el.name == "message" and not _children(el, NS_CARBONS)]


def body(el: domish.Element) -> Optional[str]:
    for child in el.elements(ns.CLIENT, "body"):
        return str(child)
    return None


def test_enable_and_disable_answer_result_and_may_repeat() -> None:
    """§4, §5, §9.1: enable and disable give an empty result, also when repeated."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    for verb in ("enable", "enable", "disable", "disable"):
        reply = enable(server, desk, verb)
        assert reply["type"] == "result" and reply.getAttribute("id") == "c1"
        assert reply.firstChildElement() is None


def test_enable_for_another_account_is_not_allowed() -> None:
    """§4.1: a client may enable carbons only for itself."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    send(server, desk, f"<iq type='set' id='c2' to='{BOB}'><enable xmlns='{NS_CARBONS}'/></iq>")
    reply = desk.take()[-1]
    assert reply["type"] == "error"
    assert [e for e in reply.elements() if e.name == "error"][0].firstChildElement().name == "not-allowed"


def test_sent_copies_go_to_other_enabled_resources_only() -> None:
    """§8: what one resource sends reaches the account's other carbons-enabled
    resources as <sent/>, not the sender, not resources without carbons; the
    sender need not have enabled carbons itself."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", carbons=False)
    phone = online(server, f"{ALICE}/phone")
    laptop = online(server, f"{ALICE}/laptop", carbons=False)
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, desk, f"<message to='{BOB}' type='chat' id='m1'><body>hi</body></message>")
    [(direction, wrapper, inner)] = carbons(phone)
    assert direction == "sent"
    assert wrapper["from"] == ALICE and wrapper["to"] == f"{ALICE}/phone" and wrapper["type"] == "chat"
    assert inner["from"] == f"{ALICE}/desk" and inner["to"] == BOB and inner["id"] == "m1"
    assert body(inner) == "hi"
    assert carbons(desk) == [] and laptop.sent == []
    assert [body(m) for m in messages(bob)] == ["hi"]


def test_received_bare_copies_go_to_resources_that_did_not_get_it() -> None:
    """§7: a message to the bare JID goes to the top-priority resource; the other
    carbons-enabled ones get <received/>; a lower one without carbons gets nothing."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone", priority=1)
    tablet = online(server, f"{ALICE}/tablet", priority=1, carbons=False)
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, bob, f"<message to='{ALICE}' type='chat' id='m2'><body>hey</body></message>")
    assert [body(m) for m in messages(desk)] == ["hey"] and carbons(desk) == []
    [(direction, wrapper, inner)] = carbons(phone)
    assert direction == "received" and wrapper["to"] == f"{ALICE}/phone"
    assert inner["from"] == f"{BOB}/home" and inner["to"] == ALICE
    assert messages(phone) == [] and tablet.sent == []


def test_received_full_copies_go_to_every_other_enabled_resource() -> None:
    """§7: a message to a full JID reaches that resource only; every other
    carbons-enabled resource, whatever its priority, gets <received/>."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone", priority=1)
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, bob, f"<message to='{ALICE}/phone' type='chat'><body>to phone</body></message>")
    assert [body(m) for m in messages(phone)] == ["to phone"] and carbons(phone) == []
    assert [d for d, _, _ in carbons(desk)] == ["received"] and messages(desk) == []


def test_full_jid_of_gone_resource_is_copied_once() -> None:
    """A message to a resource that is not online is delivered as if to the bare
    JID; the resources that did not get it get exactly one copy each (the
    message module hands it on as message/bare: no second copy)."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone", priority=1)
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, bob, f"<message to='{ALICE}/gone' type='chat'><body>x</body></message>")
    assert [body(m) for m in messages(desk)] == ["x"] and carbons(desk) == []
    assert len(carbons(phone)) == 1 and messages(phone) == []


def test_private_is_not_copied_and_removed_for_the_recipient() -> None:
    """§10: <private/> stops sent and received copies; the recipient's server
    removes it before delivery."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    bob = online(server, f"{BOB}/home", priority=5)
    bob_phone = online(server, f"{BOB}/phone")
    send(server, desk, f"<message to='{BOB}' type='chat'><body>p</body>"
                       f"<private xmlns='{NS_CARBONS}'/></message>")
    assert carbons(phone) == [] and carbons(bob_phone) == []
    [got] = messages(bob)
    assert body(got) == "p" and list(got.elements(NS_CARBONS, "private")) == []


def test_no_copy_hint_is_honoured() -> None:
    """XEP-0334 <no-copy/>: no carbons either way."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    bob = online(server, f"{BOB}/home", priority=5)
    bob_phone = online(server, f"{BOB}/phone")
    send(server, desk, f"<message to='{BOB}' type='chat'><body>n</body>"
                       "<no-copy xmlns='urn:xmpp:hints'/></message>")
    assert carbons(phone) == [] and carbons(bob_phone) == []
    assert [body(m) for m in messages(bob)] == ["n"]


def test_eligibility_rules() -> None:
    """§6 as Prosody applies it: chat, normal with body, bounces from a bare JID,
    call messages, archived messages; never groupchat, headline, carbons of
    carbons, or a MUC's private messages to a full JID."""
    def ok(xml: str, inbound: bool = True) -> bool:
        return eligible(stanza(xml), ALICE, inbound)

    assert ok("<message type='chat'/>")  # chat states too (§9.2)
    assert ok("<message><body>b</body></message>")
    assert not ok("<message type='normal'/>")
    assert not ok("<message type='groupchat'><body>g</body></message>")
    assert not ok("<message type='headline'><body>h</body></message>")
    assert ok(f"<message type='error' from='{BOB}'/>")
    assert not ok(f"<message type='error' from='{BOB}/home'/>")
    assert not ok(f"<message type='error' from='{BOB}'/>", inbound=False)
    assert ok("<message><propose xmlns='urn:xmpp:jingle-message:0' id='j'/></message>")
    assert ok(f"<message><stanza-id xmlns='urn:xmpp:sid:0' by='{ALICE}' id='s'/></message>")
    assert not ok(f"<message><stanza-id xmlns='urn:xmpp:sid:0' by='{BOB}' id='s'/></message>")
    assert not ok(f"<message type='chat'><received xmlns='{NS_CARBONS}'/></message>")
    assert not ok(f"<message type='chat'><sent xmlns='{NS_CARBONS}'/></message>", inbound=False)
    muc_pm = ("<message type='chat' to='{to}'><body>pm</body>"
              "<x xmlns='http://jabber.org/protocol/muc#user'/></message>")
    assert not ok(muc_pm.format(to=f"{ALICE}/desk"))
    assert ok(muc_pm.format(to=ALICE))
    assert ok(muc_pm.format(to="room@conference.localhost/nick"), inbound=False)


def test_groupchat_and_normal_without_body_are_not_copied() -> None:
    """Routing path: a normal message without body and a headline reach their
    recipients with no copies."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, bob, f"<message to='{ALICE}'><subject>s</subject></message>")
    send(server, bob, f"<message to='{ALICE}' type='headline'><body>h</body></message>")
    assert carbons(phone) == [] and carbons(desk) == []
    assert len(messages(desk)) == 2


def test_disable_and_disconnect_stop_copies() -> None:
    """After disable, or when the session ends, a resource gets no more copies."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    laptop = online(server, f"{ALICE}/laptop")
    bob = online(server, f"{BOB}/home", carbons=False)
    assert enable(server, phone, "disable")["type"] == "result"
    laptop.close()
    server.sessions.remove(laptop)
    server.events.fire_all("session/closed", laptop)
    send(server, bob, f"<message to='{ALICE}' type='chat'><body>after</body></message>")
    assert carbons(phone) == [] and carbons(laptop) == []
    feature = server.modules.get("carbons")
    assert feature.enabled(desk) and not feature.enabled(phone) and not feature.enabled(laptop)


def test_copy_is_a_separate_element_with_the_archive_stanza_id() -> None:
    """The copy is made at COPY time, after the archive stamped <stanza-id/> at
    ARCHIVE priority, so the copy carries it; the original is not changed and
    later changes to it do not show in the copy."""
    server = setup()

    def stamp(event: Any) -> None:
        sid = event.stanza.addElement(("urn:xmpp:sid:0", "stanza-id"))
        sid["by"], sid["id"] = event.to.bare, "archived-1"
        return None

    server.events.on("message/bare", stamp, ARCHIVE)
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    bob = online(server, f"{BOB}/home", carbons=False)
    original = stanza(f"<message to='{ALICE}' type='chat' id='m9'><body>keep</body></message>")
    original["from"] = bob.jid.full
    server.router.route(original, bob)
    [(_, wrapper, inner)] = carbons(phone)
    assert inner is not original
    [sid] = list(inner.elements("urn:xmpp:sid:0", "stanza-id"))
    assert sid["id"] == "archived-1"
    assert not _children(original, NS_CARBONS)  # nothing added to the original
    [delivered] = messages(desk)  # what desk's client parsed: the original, stamped
    assert delivered["id"] == "m9" and list(delivered.elements("urn:xmpp:sid:0", "stanza-id"))
    original["id"] = "changed"
    original.addElement("late")
    assert inner["id"] == "m9" and [c.name for c in inner.elements()] == ["body", "stanza-id"]


def test_message_without_to_is_copied_with_the_account_as_to() -> None:
    """A message with no 'to' is for the sender's own account (RFC 6120 §10.3):
    the sent copy names the account as recipient."""
    server = setup()
    desk = online(server, f"{ALICE}/desk", priority=5)
    phone = online(server, f"{ALICE}/phone")
    send(server, desk, "<message type='chat'><body>note to self</body></message>")
    sent = [inner for d, _, inner in carbons(phone) if d == "sent"]
    assert [m["to"] for m in sent] == [ALICE]


def test_disco_advertises_carbons() -> None:
    """§3: the server's disco#info lists urn:xmpp:carbons:2 (and the rules version)."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    send(server, desk, "<iq type='get' id='d1' to='localhost'>"
                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    [reply] = desk.take()
    features = {f["var"] for f in reply.firstChildElement().elements(ns.DISCO_INFO, "feature")}
    assert {NS_CARBONS, "urn:xmpp:carbons:rules:0"} <= features


def test_copies_sent_only_when_another_resource_has_carbons() -> None:
    """What the archive asks before it stamps the sender's id on a copy (§8: never
    to the sending resource itself)."""
    server = setup()
    feature = server.modules.get("carbons")
    desk = online(server, f"{ALICE}/desk")
    assert not feature.copies_sent(desk)
    phone = online(server, f"{ALICE}/phone", carbons=False)
    assert not feature.copies_sent(desk) and feature.copies_sent(phone)
    enable(server, phone)
    assert feature.copies_sent(desk)
    enable(server, desk, "disable")
    assert feature.copies_sent(desk) and not feature.copies_sent(phone)


def test_sent_carbon_carries_the_senders_archive_id() -> None:
    """With the archive on, the sent carbon has the id of the sender's archive entry
    (XEP-0313 §3.5 via XEP-0280); the message bob gets has only his own."""
    server = make_server(modules=MODULES + ["mam"])
    create_user(server, ALICE)
    create_user(server, BOB)
    desk = online(server, f"{ALICE}/desk", carbons=False)
    phone = online(server, f"{ALICE}/phone")
    bob = online(server, f"{BOB}/home", carbons=False)
    send(server, desk, f"<message to='{BOB}' type='chat' id='m1'><body>hi</body></message>")
    [(_, _, inner)] = carbons(phone)
    assert [c["by"] for c in inner.elements("urn:xmpp:sid:0", "stanza-id")] == [ALICE]
    [got] = messages(bob)
    assert [c["by"] for c in got.elements("urn:xmpp:sid:0", "stanza-id")] == [BOB]
