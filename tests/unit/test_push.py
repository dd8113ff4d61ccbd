"""XEP-0357 push notifications with a fake push service registered as a
service domain: enable/disable, who gets notified (all sessions
hibernated or offline), what a notification holds (summary, publish
options, the body only on request), the per-device rate limit, and a
service's error disabling the registration."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.features.push import importance, parse_enable
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError
from tests.unit.fakes import bind, create_user, disconnect, make_server, stanza

PUSH = "urn:xmpp:push:0"
SM = "urn:xmpp:sm:3"
SERVICE = "push.example"
ALICE = "alice@localhost"


class FakePushService:
    """A push service domain: records the publish IQs, answers them."""

    def __init__(self, server: Any, answer: str = "result", error_type: str = "cancel") -> None:
        self.server = server
        self.answer = answer
        self.error_type = error_type
        self.got: list[domish.Element] = []
        server.router.services[SERVICE] = self.deliver

    def deliver(self, event: StanzaEvent) -> bool:
        iq = event.stanza
        self.got.append(iq)
        if self.answer is None:
            return True
        reply = domish.Element((ns.CLIENT, "iq"))
        reply["type"] = self.answer
        reply["id"] = iq["id"]
        reply["from"] = iq["to"]
        reply["to"] = iq["from"]
        if self.answer == "error":
            err = reply.addElement("error")
            err["type"] = self.error_type
            err.addElement((ns.STANZA_ERRORS, "item-not-found"))
        self.server.router.route(reply)
        return True

    def summaries(self) -> list[dict[str, str]]:
        out = []
        for iq in self.got:
            note = iq.pubsub.publish.item.notification
            fields = {f["var"]: str(f.value) for f in note.x.elements() if f.name == "field"}
            out.append(fields)
        return out


def make(options: str = "") -> Any:
    server = make_server(config_text='[modules]\nenabled = ["message", "roster", "presence", '
                                     '"offline", "smacks", "disco", "push"]\n'
                                     f"[modules.push]\nmin_interval = 10.0\n{options}")
    for user in ("alice", "bob"):
        create_user(server, f"{user}@localhost")
    return server


def send(session: Any, xml: str) -> None:
    session.stream.dataReceived(xml.encode())


def enable(session: Any, node: str = "node1", forms: str = "") -> domish.Element:
    send(session, f"<iq type='set' id='en'><enable xmlns='{PUSH}' jid='{SERVICE}' node='{node}'>"
                  f"{forms}</enable></iq>")
    return [e for e in session.take() if e.name == "iq" and e.getAttribute("id") == "en"][0]


SECRET_FORM = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
               "http://jabber.org/protocol/pubsub#publish-options</value></field>"
               "<field var='secret'><value>s3cr3t</value></field></x>")
BODY_FORM = ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
             "urn:xmpp:push:summary</value></field>"
             "<field var='last-message-body'><value>true</value></field></x>")


def hibernate(server: Any, jid: str) -> Any:
    """A session with resumable SM whose connection drops."""
    session = bind(server, jid, available=True)
    send(session, f"<enable xmlns='{SM}' resume='true'/>")
    session.take()
    disconnect(session)
    assert server.sessions.get(ALICE, jid.split("/")[1]) is session
    return session


def chat(server: Any, body: str, to: str = ALICE, extra: str = "") -> None:
    bob = server.sessions.get("bob@localhost", "pc") or bind(server, "bob@localhost/pc", available=True)
    inner = f"<body>{body}</body>" if body else ""
    send(bob, f"<message to='{to}' type='chat'>{inner}{extra}</message>")


@pytest.fixture
def server():
    return make()


# -- pure ----------------------------------------------------------------------------

def test_importance():
    """Bodies, encrypted payloads and call proposals count; chat states,
    groupchat and errors do not; encrypted is told apart."""
    assert importance(stanza("<message type='chat'><body>x</body></message>")) == (True, False)
    assert importance(stanza("<message><encrypted xmlns='eu.siacs.conversations.axolotl'/>"
                             "<body>fallback</body></message>")) == (True, True)
    assert importance(stanza("<message type='chat'><propose xmlns='urn:xmpp:jingle-message:0'/>"
                             "</message>")) == (True, False)
    assert importance(stanza("<message type='chat'><composing xmlns="
                             "'http://jabber.org/protocol/chatstates'/></message>"))[0] is False
    assert importance(stanza("<message type='groupchat'><body>x</body></message>"))[0] is False


def test_parse_enable_requires_a_valid_jid():
    """jid is required and must be a JID; the publish-options form is kept
    without FORM_TYPE; the summary form asks for bodies."""
    with pytest.raises(StanzaError):
        parse_enable(stanza(f"<enable xmlns='{PUSH}' node='n'/>"))
    with pytest.raises(StanzaError):
        parse_enable(stanza(f"<enable xmlns='{PUSH}' jid='a@@b'/>"))
    reg = parse_enable(stanza(f"<enable xmlns='{PUSH}' jid='{SERVICE}' node='n'>"
                              f"{SECRET_FORM}{BODY_FORM}</enable>"))
    assert (reg.service, reg.node, reg.publish_options, reg.include_body) == (
        SERVICE, "n", (("secret", ("s3cr3t",)),), True)


# -- enable / disable ----------------------------------------------------------------

def test_enable_is_stored_and_advertised_on_the_account(server):
    """<enable/> answers a result and stores the registration with the
    resource that made it; the account's disco#info has urn:xmpp:push:0."""
    alice = bind(server, f"{ALICE}/phone")
    assert enable(alice, forms=SECRET_FORM)["type"] == "result"
    regs: list = []
    server.stores.push.list(ALICE).addCallback(regs.extend)
    assert [(r.service, r.node, r.resource, r.publish_options) for r in regs] == [
        (SERVICE, "node1", "phone", (("secret", ("s3cr3t",)),))]
    send(alice, f"<iq type='get' id='d' to='{ALICE}'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    info = [e for e in alice.take() if e.getAttribute("id") == "d"][0]
    assert PUSH in [f["var"] for f in info.query.elements() if f.name == "feature"]


def test_only_the_account_itself_may_enable(server):
    """Bob cannot register a push service for Alice."""
    bob = bind(server, "bob@localhost/pc")
    send(bob, f"<iq type='set' id='en' to='{ALICE}'><enable xmlns='{PUSH}' jid='{SERVICE}' "
              f"node='x'/></iq>")
    reply = [e for e in bob.take() if e.getAttribute("id") == "en"][0]
    assert reply["type"] == "error" and reply.error.firstChildElement().name == "forbidden"


# -- notifications -------------------------------------------------------------------

def test_offline_account_is_notified_with_a_summary_and_the_options(server):
    """Alice enabled push and went offline: Bob's message (stored offline)
    triggers one publish from her bare JID to the service's node, with the
    message count, last sender, no body, and the publish options."""
    service = FakePushService(server)
    alice = bind(server, f"{ALICE}/phone")
    enable(alice, forms=SECRET_FORM)
    alice.close()
    chat(server, "hello")
    assert len(service.got) == 1
    iq = service.got[0]
    assert (iq["type"], iq["from"], iq["to"]) == ("set", ALICE, SERVICE)
    assert iq.pubsub.publish["node"] == "node1"
    assert service.summaries() == [{"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                                    "last-message-sender": "bob@localhost/pc"}]
    publish_options = [c for c in iq.pubsub.elements() if c.name == "publish-options"][0]
    options = {f["var"]: str(f.value) for f in publish_options.x.elements() if f.name == "field"}
    assert options == {"FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
                       "secret": "s3cr3t"}


def test_hibernated_sessions_get_notified_live_ones_do_not(server):
    """While Alice's only session is connected nothing is published; once
    its connection is lost (SM hibernation) a message is; an attached second
    session stops it again."""
    service = FakePushService(server)
    phone = bind(server, f"{ALICE}/phone", available=True)
    enable(phone)
    send(phone, f"<enable xmlns='{SM}' resume='true'/>")
    chat(server, "while online")
    assert service.got == []
    disconnect(phone)
    chat(server, "while asleep")
    assert len(service.got) == 1
    bind(server, f"{ALICE}/desktop", available=True)
    server.clock.advance(60)
    chat(server, "desktop is on")
    assert len(service.got) == 1


def test_chat_states_do_not_wake_the_phone(server):
    """A typing notification alone is no reason for a notification."""
    service = FakePushService(server)
    enable(bind(server, f"{ALICE}/phone"))
    server.sessions.get(ALICE, "phone").close()
    chat(server, "", extra="<composing xmlns='http://jabber.org/protocol/chatstates'/>")
    assert service.got == []


def test_body_only_when_asked_and_allowed():
    """The body goes out only for a registration that asked for it, and not
    when the operator forbids bodies (allow_body = false)."""
    for options, expected in (("", "secret plans"), ("allow_body = false\n", None)):
        server = make(options)
        service = FakePushService(server)
        alice = bind(server, f"{ALICE}/phone")
        enable(alice, forms=BODY_FORM)
        alice.close()
        chat(server, "secret plans")
        assert service.summaries()[0].get("last-message-body") == expected


def test_rate_limit_summarizes_what_came_in_between(server):
    """Three messages in a row: one notification at once, then one when the
    interval has passed, counting all three."""
    service = FakePushService(server)
    alice = bind(server, f"{ALICE}/phone")
    enable(alice)
    alice.close()
    for n in range(3):
        chat(server, f"m{n}")
        server.clock.advance(1)
    assert [s["message-count"] for s in service.summaries()] == ["1"]
    server.clock.advance(8)
    assert [s["message-count"] for s in service.summaries()] == ["1", "3"]
    server.clock.advance(60)
    assert len(service.got) == 2


def test_count_restarts_after_the_account_was_online(server):
    """A login resets the count: the next notification says 1 again."""
    service = FakePushService(server)
    alice = bind(server, f"{ALICE}/phone")
    enable(alice)
    alice.close()
    chat(server, "one")
    server.clock.advance(20)
    bind(server, f"{ALICE}/phone").close()
    chat(server, "two")
    assert [s["message-count"] for s in service.summaries()] == ["1", "1"]


def test_service_error_disables_the_registration(server):
    """§7.1: a publish answered with a cancel error disables that
    registration: no more notifications go there."""
    service = FakePushService(server, answer="error")
    alice = bind(server, f"{ALICE}/phone")
    enable(alice)
    alice.close()
    chat(server, "one")
    regs: list = []
    server.stores.push.list(ALICE).addCallback(regs.extend)
    assert regs == []
    server.clock.advance(60)
    chat(server, "two")
    assert len(service.got) == 1


def test_wait_error_and_no_answer_keep_the_registration(server):
    """A transient (wait) error, or a service that never answers, does not
    disable the registration."""
    FakePushService(server, answer="error", error_type="wait")
    alice = bind(server, f"{ALICE}/phone")
    enable(alice)
    alice.close()
    chat(server, "one")
    regs: list = []
    server.stores.push.list(ALICE).addCallback(regs.extend)
    assert len(regs) == 1
    silent = FakePushService(server, answer=None)
    server.clock.advance(120)
    chat(server, "two")
    assert len(silent.got) == 1
    server.clock.advance(120)  # the answer's wait times out
    regs = []
    server.stores.push.list(ALICE).addCallback(regs.extend)
    assert len(regs) == 1


def test_disable_stops_notifications(server):
    """<disable jid/> removes every node of the service."""
    service = FakePushService(server)
    alice = bind(server, f"{ALICE}/phone")
    enable(alice, node="a")
    enable(alice, node="b")
    send(alice, f"<iq type='set' id='dis'><disable xmlns='{PUSH}' jid='{SERVICE}'/></iq>")
    assert [e for e in alice.take() if e.getAttribute("id") == "dis"][0]["type"] == "result"
    alice.close()
    chat(server, "hello")
    assert service.got == []
