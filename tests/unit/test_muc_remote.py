"""MUC with occupants on other servers, and IQs between occupants through
the room (XEP-0045 §7.5, XEP-0410): what a remote server hands the room
comes in through the router with a foreign ``from``; what the room sends
them leaves through ``router.remote`` (recorded here)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.words.xish import domish

from chatbx_server.server import Server
from chatbx_server.xmpp.stanzas import parse_stanza
from tests.unit.test_muc import MUC, ROOM, bodies, child, codes, condition, groupchat, iq, item, \
    send
from tests.unit.test_muc import alice, bob, carol, room, server  # noqa: F401 - fixtures

DAVE = "dave@remote.example/laptop"


@pytest.fixture
def remote(server: Server) -> list[domish.Element]:
    sent: list[domish.Element] = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    return sent


def from_remote(server: Server, xml: str) -> None:
    """A stanza as the s2s stream hands it to the router (``from`` checked there)."""
    server.router.route(parse_stanza(xml))


def test_remote_user_joins_and_talks(server: Server, room: str, alice: Any, bob: Any,
                                     remote: list[domish.Element]) -> None:
    """A user of another server joins: it gets the occupants, its own presence
    (110) and the subject at its full JID; the others see it (the owner with
    its real JID); its groupchat and private messages reach the room's
    occupants and theirs reach it."""
    groupchat(bob, "earlier")
    bob.take()
    alice.take()
    from_remote(server, f"<presence from='{DAVE}' to='{ROOM}/Dave'><x xmlns='{MUC}'/></presence>")
    assert all(s["to"] == DAVE for s in remote)
    own = [s for s in remote if s.name == "presence" and s["from"] == f"{ROOM}/Dave"]
    assert len(own) == 1 and 110 in codes(own[0])
    assert {s["from"] for s in remote if s.name == "presence"} >= {f"{ROOM}/Alice", f"{ROOM}/Bob"}
    assert bodies(remote) == ["earlier"]  # history
    assert any(child(s, "subject") is not None for s in remote)
    seen = [s for s in alice.take() if s.name == "presence"]
    assert item(seen[0])["jid"] == DAVE  # alice is a moderator
    remote.clear()

    from_remote(server, f"<message from='{DAVE}' to='{ROOM}' type='groupchat'><body>hi</body>"
                        "</message>")
    assert bodies(bob.take()) == ["hi"]
    assert bodies(remote) == ["hi"] and remote[0]["from"] == f"{ROOM}/Dave"
    remote.clear()
    send(bob, f"<message to='{ROOM}/Dave' type='chat'><body>psst</body></message>")
    assert bodies(remote) == ["psst"] and remote[0]["from"] == f"{ROOM}/Bob"
    from_remote(server, f"<message from='{DAVE}' to='{ROOM}/Bob' type='chat'><body>back</body>"
                        "</message>")
    got = bob.take()
    assert bodies(got) == ["back"] and got[0]["from"] == f"{ROOM}/Dave"

    remote.clear()
    from_remote(server, f"<presence from='{DAVE}' to='{ROOM}/Dave' type='unavailable'/>")
    left = [s for s in bob.take() if s.name == "presence"]
    assert left[0]["type"] == "unavailable" and left[0]["from"] == f"{ROOM}/Dave"
    assert 110 in codes(remote[0])


def test_iq_to_occupant_is_forwarded(server: Server, room: str, alice: Any, bob: Any,
                                     remote: list[domish.Element]) -> None:
    """An IQ from one occupant to another's occupant JID reaches the target's
    session from the asker's occupant JID (no real JID shown); the answer
    goes back to the asking session with its own id."""
    send(bob, f"<iq type='get' id='q1' to='{ROOM}/Alice'>"
              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    fwd = [s for s in alice.take() if s.name == "iq"]
    assert len(fwd) == 1
    assert fwd[0]["from"] == f"{ROOM}/Bob" and fwd[0]["id"] != "q1"
    assert "bob@localhost" not in fwd[0].toXml()
    send(alice, f"<iq type='result' id='{fwd[0]['id']}' to='{ROOM}/Bob'>"
                "<query xmlns='http://jabber.org/protocol/disco#info'><feature var='x'/></query>"
                "</iq>")
    answer = [s for s in bob.take() if s.name == "iq"]
    assert len(answer) == 1
    assert answer[0]["from"] == f"{ROOM}/Alice" and answer[0]["id"] == "q1"
    assert answer[0]["type"] == "result" and "feature" in answer[0].toXml()


def test_forged_answers_reach_nobody(server: Server, room: str, alice: Any, bob: Any,
                                     carol: Any) -> None:
    """An answer with an id the room did not make, or one from another
    occupant than the asked one, is dropped."""
    send(carol, f"<presence to='{ROOM}/Carol'><x xmlns='{MUC}'/></presence>")
    bob.take()
    send(bob, f"<iq type='get' id='q1' to='{ROOM}/Alice'>"
              "<query xmlns='jabber:iq:version'/></iq>")
    fwd = [s for s in alice.take() if s.name == "iq"][0]
    carol.take()
    send(carol, f"<iq type='result' id='{fwd['id']}' to='{ROOM}/Bob'/>")
    send(alice, f"<iq type='result' id='cXEx.AAAAAAAAAAAAAAAA' to='{ROOM}/Bob'/>")
    send(alice, f"<iq type='result' id='nonsense' to='{ROOM}/Bob'/>")
    assert [s for s in bob.take() if s.name == "iq"] == []


def test_iq_to_occupant_refusals(server: Server, room: str, bob: Any, carol: Any) -> None:
    """Not in the room: not-acceptable; no such nick: item-not-found."""
    carol.take()
    assert condition(iq(carol, f"<iq type='get' id='v' to='{ROOM}/Alice'>"
                               "<query xmlns='jabber:iq:version'/></iq>")) == "not-acceptable"
    assert condition(iq(bob, f"<iq type='get' id='v' to='{ROOM}/Nobody'>"
                             "<query xmlns='jabber:iq:version'/></iq>")) == "item-not-found"


def test_vcard_of_occupant_from_its_server(server: Server, room: str, alice: Any, bob: Any,
                                           remote: list[domish.Element]) -> None:
    """A vCard request to an occupant JID goes to the occupant's bare JID
    (here a remote user's server) and that server's answer, from the bare
    JID, comes back from the occupant JID."""
    from_remote(server, f"<presence from='{DAVE}' to='{ROOM}/Dave'><x xmlns='{MUC}'/></presence>")
    remote.clear()
    bob.take()
    send(bob, f"<iq type='get' id='vc' to='{ROOM}/Dave'><vCard xmlns='vcard-temp'/></iq>")
    assert len(remote) == 1 and remote[0]["to"] == "dave@remote.example"
    from_remote(server, f"<iq type='result' id='{remote[0]['id']}' from='dave@remote.example' "
                        f"to='{ROOM}/Bob'><vCard xmlns='vcard-temp'><FN>Dave</FN></vCard></iq>")
    answer = [s for s in bob.take() if s.name == "iq"]
    assert len(answer) == 1 and answer[0]["id"] == "vc" and answer[0]["from"] == f"{ROOM}/Dave"
    assert "<FN>Dave</FN>" in answer[0].toXml()
