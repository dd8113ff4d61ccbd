"""Group chat across servers (XEP-0045 over s2s): two chatbx processes.

Server A hosts ``a.localhost`` (and ``conference.a.localhost``), server B
``b.localhost`` (and ``conference.b.localhost``); each reaches the other's
domains through ``[s2s] static_routes``. A user of B joins a room on A's
MUC service and a user of A joins a room on B's: they get the history,
see each other, talk in the room and privately through it, ping themselves
(XEP-0410), and their IQs to an occupant reach that occupant (§7.2 / §17.3).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import ChatbxServer, Inbox, run, slix_close, slix_login
from test_federation import A, ALICE, B, BOB, start_pair as federation_pair

pytestmark = pytest.mark.integration

ROOM_A, ROOM_B = f"lobby@conference.{A}", f"yard@conference.{B}"
MUC_USER = "{http://jabber.org/protocol/muc#user}"


def start_pair(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path,
               with_ca: bool) -> tuple[ChatbxServer, ChatbxServer]:
    """A and B with static routes to each other's domain and MUC service."""
    return federation_pair(chatbx_server, tmp_path, with_ca, services=("conference",))


async def _client(server: Any, jid: str) -> tuple[Any, Inbox, Inbox]:
    client = await slix_login(server, jid)
    client.register_plugin("xep_0045")
    client.register_plugin("xep_0030")
    client.register_plugin("xep_0199")
    presences, messages = Inbox(client, "groupchat_presence"), Inbox(client, "message")
    client.send_presence()
    return client, presences, messages


def _codes(stanza: Any) -> set[int]:
    return {int(s.get("code")) for s in stanza.xml.iter(f"{MUC_USER}status")}


def _item_jid(stanza: Any) -> str:
    item = stanza.xml.find(f"{MUC_USER}x/{MUC_USER}item")
    return item.get("jid", "") if item is not None else ""


async def _instant(client: Any, room: str) -> None:
    """§10.1.2: accept the default configuration (an instant room)."""
    iq = client.Iq()
    iq["to"] = room
    iq["type"] = "set"
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/muc#owner'>"
                            "<x xmlns='jabber:x:data' type='submit'/></query>"))
    await iq.send(timeout=15)


async def _talk(owner: Any, o_pres: Inbox, o_msgs: Inbox, guest: Any, g_pres: Inbox,
                g_msgs: Inbox, room: str) -> None:
    """``owner`` creates ``room`` on its own server and says something;
    ``guest`` (on the other server) joins, gets the history, and both talk."""
    muc_o, muc_g = owner.plugin["xep_0045"], guest.plugin["xep_0045"]
    for inbox in (o_pres, o_msgs, g_pres, g_msgs):
        inbox.items.clear()  # the same bodies are used for both rooms
    pres, _, _, _ = await muc_o.join_muc_wait(room, "Owner", timeout=15)
    assert {110, 201} <= _codes(pres)
    await _instant(owner, room)
    owner.send_message(mto=room, mbody="before you came", mtype="groupchat")
    await o_msgs.wait(lambda m: m["body"] == "before you came", what="the reflected message")

    pres, subject, _, history = await muc_g.join_muc_wait(room, "Guest", timeout=20)
    assert 110 in _codes(pres) and pres["from"].full == f"{room}/Guest"
    assert [m["body"] for m in history] == ["before you came"]
    assert history[0]["from"].full == f"{room}/Owner"
    # The guest saw the owner; the owner (a moderator) sees the guest's real JID.
    await g_pres.wait(lambda p: p["from"].full == f"{room}/Owner" and p["type"] != "unavailable",
                      what="the owner's presence at the guest")
    seen = await o_pres.wait(lambda p: p["from"].full == f"{room}/Guest", what="the guest at the owner")
    assert _item_jid(seen) == guest.boundjid.full

    guest.send_message(mto=room, mbody="hi from afar", mtype="groupchat")
    got = await o_msgs.wait(lambda m: m["body"] == "hi from afar", what="the guest's message")
    assert got["from"].full == f"{room}/Guest" and got["type"] == "groupchat"
    await g_msgs.wait(lambda m: m["body"] == "hi from afar", what="the guest's reflection")
    owner.send_message(mto=room, mbody="welcome", mtype="groupchat")
    got = await g_msgs.wait(lambda m: m["body"] == "welcome", what="the owner's message")
    assert got["from"].full == f"{room}/Owner"

    # Private messages through the room (§7.5), both ways.
    guest.send_message(mto=f"{room}/Owner", mbody="psst", mtype="chat")
    got = await o_msgs.wait(lambda m: m["body"] == "psst", what="the guest's private message")
    assert got["from"].full == f"{room}/Guest" and got["type"] == "chat"
    owner.send_message(mto=f"{room}/Guest", mbody="psst back", mtype="chat")
    got = await g_msgs.wait(lambda m: m["body"] == "psst back", what="the owner's private message")
    assert got["from"].full == f"{room}/Owner"

    # Self-ping (XEP-0410) and an IQ to another occupant, answered by that
    # occupant's client through the room.
    await guest.plugin["xep_0199"].ping(jid=f"{room}/Guest", timeout=15)
    info = await guest.plugin["xep_0030"].get_info(jid=f"{room}/Owner", timeout=15)
    assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"]  # the client's own
    assert info["from"].full == f"{room}/Owner"
    info = await owner.plugin["xep_0030"].get_info(jid=f"{room}/Guest", timeout=15)
    assert info["from"].full == f"{room}/Guest"

    # Leaving reaches the other side.
    muc_g.leave_muc(room, "Guest")
    gone = await o_pres.wait(lambda p: p["from"].full == f"{room}/Guest" and p["type"] == "unavailable",
                             what="the guest leaving")
    assert 110 not in _codes(gone)
    await g_pres.wait(lambda p: p["from"].full == f"{room}/Guest" and p["type"] == "unavailable"
                      and 110 in _codes(p), what="the guest's own leave")


@pytest.mark.parametrize("with_ca", [True, False], ids=["sasl-external", "dialback"])
def test_remote_users_join_and_talk(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path,
                                    with_ca: bool) -> None:
    """Bob (server B) joins a room on A's MUC service, Alice (server A) one on
    B's: history, presence with the real JID for the owner, groupchat and
    private messages both ways, self-ping, IQs to occupants, leaving."""
    a, b = start_pair(chatbx_server, tmp_path, with_ca)

    async def main() -> None:
        alice, a_pres, a_msgs = await _client(a, ALICE + "/desk")
        bob, b_pres, b_msgs = await _client(b, BOB + "/phone")
        try:
            await _talk(alice, a_pres, a_msgs, bob, b_pres, b_msgs, ROOM_A)
            await _talk(bob, b_pres, b_msgs, alice, a_pres, a_msgs, ROOM_B)
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main(), 100)
