"""XEP-0352 client state indication: what an inactive session holds back,
latest per sender, and when the buffer goes out (active, important, full)."""

from __future__ import annotations

import pytest

from chatbx_server.features.csi import FLUSH, HOLD, NS, PASS, classify
from chatbx_server.xmpp.jid import JID
from tests.unit.fakes import FakeStream, bind, create_user, make_server, stanza

SM = "urn:xmpp:sm:3"


@pytest.mark.parametrize("xml, kind", [
    ("<presence from='a@x/r'/>", HOLD),
    ("<presence from='a@x/r' type='unavailable'/>", HOLD),
    ("<presence from='a@x' type='subscribe'/>", FLUSH),
    ("<presence from='a@x' type='error'/>", PASS),
    ("<message from='a@x/r'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", HOLD),
    ("<message from='a@x/r'><body>hi</body></message>", FLUSH),
    ("<message from='a@x/r'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>", FLUSH),
    ("<message from='a@x/r'><received xmlns='urn:xmpp:receipts' id='1'/></message>", PASS),
    ("<message from='a@x'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
     "<message xmlns='jabber:client' from='b@x/r'><body>hey</body></message></forwarded></received></message>", FLUSH),
    ("<message from='a@x'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
     "<message xmlns='jabber:client'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>"
     "</forwarded></sent></message>", PASS),
    ("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", PASS),
])
def test_classify(xml, kind):
    """Presence and chat states may wait; bodies, encryption, carbons of
    them and subscription requests are important; the rest passes."""
    assert classify(stanza(xml)) == kind


def setup(options: str = ""):
    server = make_server(config_text="[modules]\nenabled = [\"message\", \"roster\", \"presence\", "
                                     "\"offline\", \"smacks\", \"csi\"]\n" + options)
    for user in ("alice", "bob", "carol"):
        create_user(server, f"{user}@localhost")
    return server


def send(session, xml: str) -> None:
    session.stream.dataReceived(xml.encode())


def presence_from(session, sender: str, show: str = "") -> None:
    """A presence for ``session`` from another resource, as delivered."""
    body = f"<show>{show}</show>" if show else ""
    session.send(stanza(f"<presence from='{sender}' to='{session.jid.full}'>{body}</presence>"))


def names(elements):
    return [(e.name, e.getAttribute("from"), e.getAttribute("type")) for e in elements
            if e.name in ("presence", "message")]


def test_csi_is_offered_after_authentication():
    """The post-SASL stream features include <csi xmlns='urn:xmpp:csi:0'/>."""
    server = setup()
    stream = FakeStream(server, JID.parse("alice@localhost"))
    assert f"<csi xmlns='{NS}'/>" in stream.transport.value().decode()


def test_inactive_holds_presence_latest_per_sender_until_active():
    """Three presences from two contacts while inactive: nothing is sent;
    <active/> sends the latest of each, in one go."""
    server = setup()
    alice = bind(server, "alice@localhost/phone")
    send(alice, f"<inactive xmlns='{NS}'/>")
    presence_from(alice, "bob@localhost/pc", "away")
    presence_from(alice, "carol@localhost/pc")
    presence_from(alice, "bob@localhost/pc", "dnd")
    assert alice.take() == []
    send(alice, f"<active xmlns='{NS}'/>")
    got = alice.take()
    assert names(got) == [("presence", "carol@localhost/pc", None), ("presence", "bob@localhost/pc", None)]
    assert str(got[1].show) == "dnd"
    presence_from(alice, "bob@localhost/pc")
    assert len(alice.take()) == 1  # active again: straight through


def test_message_with_body_flushes_first():
    """A chat message wakes the device: held chat states and presence go
    out before it, in order."""
    server = setup()
    alice = bind(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc")
    send(alice, f"<inactive xmlns='{NS}'/>")
    presence_from(alice, "carol@localhost/pc")
    send(bob, "<message to='alice@localhost/phone' type='chat'>"
              "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert alice.take() == []
    send(bob, "<message to='alice@localhost/phone' type='chat'><body>hi</body>"
              "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    got = alice.take()
    assert [e.name for e in got] == ["presence", "message", "message"]
    assert str(got[2].body) == "hi"


def test_iq_passes_without_flushing():
    """IQs reach an inactive client at once; held presence stays held."""
    server = setup()
    alice = bind(server, "alice@localhost/phone")
    send(alice, f"<inactive xmlns='{NS}'/>")
    presence_from(alice, "bob@localhost/pc")
    alice.send(stanza("<iq type='get' id='q1' from='bob@localhost/pc'><query xmlns='jabber:iq:version'/></iq>"))
    assert [e.name for e in alice.take()] == ["iq"]


def test_full_buffer_flushes():
    """Past max_buffered distinct senders the buffer goes out."""
    server = setup("[modules.csi]\nmax_buffered = 3\n")
    alice = bind(server, "alice@localhost/phone")
    send(alice, f"<inactive xmlns='{NS}'/>")
    presence_from(alice, "a@localhost/1")
    presence_from(alice, "b@localhost/1")
    assert alice.take() == []
    presence_from(alice, "c@localhost/1")
    assert len(alice.take()) == 3


def test_held_stanzas_are_counted_by_sm_only_when_sent():
    """With stream management, held presence is not in the unacked queue
    until it is flushed."""
    server = setup()
    alice = bind(server, "alice@localhost/phone")
    send(alice, f"<enable xmlns='{SM}'/>")
    send(alice, f"<inactive xmlns='{NS}'/>")
    presence_from(alice, "bob@localhost/pc")
    assert alice.sm is not None and len(alice.sm.queue) == 0
    send(alice, f"<active xmlns='{NS}'/>")
    assert len(alice.sm.queue) == 1


def test_flush_logs_counts():
    """A flush writes one debug line with the number sent and superseded."""
    from twisted.logger import globalLogPublisher
    from chatbx_server.logs import set_level

    server = setup()
    alice = bind(server, "alice@localhost/phone")
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    set_level("debug")
    try:
        send(alice, f"<inactive xmlns='{NS}'/>")
        presence_from(alice, "bob@localhost/pc")
        presence_from(alice, "bob@localhost/pc", "away")
        send(alice, f"<active xmlns='{NS}'/>")
    finally:
        set_level("info")
        globalLogPublisher.removeObserver(seen.append)
    flushes = [e for e in seen if e.get("log_format", "").startswith("csi: flushed")]
    assert len(flushes) == 1
    assert flushes[0]["count"] == 1 and flushes[0]["saved"] == 1 and flushes[0]["reason"] == "active"
