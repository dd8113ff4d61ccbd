"""Group chat against the real server with slixmpp's XEP-0045 plugin, on
SQLite and PostgreSQL: what people do in open and closed rooms, and that
rooms, their members and their archive survive a restart."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from conftest import Inbox, run, slix_close, slix_login

pytestmark = pytest.mark.integration

ROOM = "team@conference.localhost"
MUC_USER = "{http://jabber.org/protocol/muc#user}"


class Results:
    """XEP-0313 results (slixmpp hands them to no 'message' handler)."""

    def __init__(self, client: Any) -> None:
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        self.items: list[Any] = []
        client.register_handler(Callback(
            "mam results", MatchXPath("{jabber:client}message/{urn:xmpp:mam:2}result"),
            self.items.append))


async def _client(server: Any, jid: str) -> tuple[Any, Inbox, Inbox]:
    client = await slix_login(server, jid)
    client.register_plugin("xep_0045")
    client.mam_results = Results(client)
    presences, messages = Inbox(client, "groupchat_presence"), Inbox(client, "message")
    client.send_presence()
    return client, presences, messages


def _codes(stanza: Any) -> set[int]:
    return {int(s.get("code")) for s in stanza.xml.iter(f"{MUC_USER}status")}


async def _iq(client: Any, to: str, itype: str, payload: str) -> Any:
    iq = client.Iq()
    iq["to"] = to
    iq["type"] = itype
    iq.append(ET.fromstring(payload))
    return await iq.send(timeout=10)


async def _configure(client: Any, fields: dict[str, str]) -> None:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    await _iq(client, ROOM, "set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                                   f"<x xmlns='jabber:x:data' type='submit'>{body}</x></query>")


async def _join_error(client: Any, nick: str, **kwargs: Any) -> str:
    from slixmpp.exceptions import PresenceError

    try:
        await client.plugin["xep_0045"].join_muc_wait(ROOM, nick, timeout=10, **kwargs)
    except PresenceError as exc:
        return exc.condition
    raise AssertionError("joined")


async def _mam(client: Any, messages: Inbox, rsm: str, qid: str) -> tuple[list[Any], Any]:
    fin = await _iq(client, ROOM, "set", f"<query xmlns='urn:xmpp:mam:2' queryid='{qid}'>"
                                         f"<set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>"
                                         "</query>")
    results = [m for m in client.mam_results.items
               if m.xml.find("{urn:xmpp:mam:2}result") is not None
               and m.xml.find("{urn:xmpp:mam:2}result").get("queryid") == qid]
    return results, fin


def _archived_body(msg: Any) -> str:
    inner = msg.xml.find("{urn:xmpp:mam:2}result/{urn:xmpp:forward:0}forwarded/"
                         "{jabber:client}message")
    body = inner.find("{jabber:client}body")
    return body.text if body is not None else ""


def test_rooms_end_to_end(chatbx_server: Any, backend: Any) -> None:
    """Create and configure a room, talk, kick, ban, password and members-only
    refusals, archive paging, moderation with a tombstone; after a restart
    the room, its members and archive are back, a reconnected client's
    self-ping finds itself a ghost (not-acceptable) and rejoins; destroy."""
    server = chatbx_server(db_url=backend)

    async def main() -> None:
        alice, a_pres, a_msgs = await _client(server, "alice@localhost/desk")
        bob, b_pres, b_msgs = await _client(server, "bob@localhost/phone")
        carol, c_pres, c_msgs = await _client(server, "carol@localhost/web")
        try:
            pres, subject, _, _ = await alice.plugin["xep_0045"].join_muc_wait(
                ROOM, "Alice", timeout=10)
            assert {110, 201} <= _codes(pres)
            form = await alice.plugin["xep_0045"].get_room_config(ROOM)
            assert "muc#roomconfig_persistentroom" in form.get_fields()
            await _configure(alice, {"muc#roomconfig_persistentroom": "1",
                                     "muc#roomconfig_roomname": "Team"})
            await bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob", timeout=10)
            await carol.plugin["xep_0045"].join_muc_wait(ROOM, "Carol", timeout=10)
            bob.send_message(mto=ROOM, mbody="hello all", mtype="groupchat")
            got = await a_msgs.wait(lambda m: m["body"] == "hello all", what="bob's message")
            assert got["from"].full == f"{ROOM}/Bob"

            # kick, then ban
            await alice.plugin["xep_0045"].set_role(ROOM, "Carol", "none", reason="out")
            kicked = await c_pres.wait(lambda p: p["type"] == "unavailable"
                                       and 307 in _codes(p), what="kick")
            assert 110 in _codes(kicked)
            await alice.plugin["xep_0045"].set_affiliation(ROOM, "outcast",
                                                           jid="carol@localhost")
            assert await _join_error(carol, "Carol") == "forbidden"

            # password, then members-only
            await _configure(alice, {"muc#roomconfig_passwordprotectedroom": "1",
                                     "muc#roomconfig_roomsecret": "pw"})
            await alice.plugin["xep_0045"].set_affiliation(ROOM, "none", jid="carol@localhost")
            assert await _join_error(carol, "Carol") == "not-authorized"
            await _configure(alice, {"muc#roomconfig_passwordprotectedroom": "0",
                                     "muc#roomconfig_membersonly": "1",
                                     "muc#roomconfig_whois": "anyone"})
            assert await _join_error(carol, "Carol") == "registration-required"
            gone = await b_pres.wait(lambda p: 322 in _codes(p), what="bob removed (322)")
            assert gone["type"] == "unavailable"
            await alice.plugin["xep_0045"].set_affiliation(ROOM, "member", jid="bob@localhost")
            await bob.plugin["xep_0045"].join_muc_wait(ROOM, "Bob", timeout=10)

            # archive paging
            for i in range(5):
                alice.send_message(mto=ROOM, mbody=f"m{i}", mtype="groupchat")
            spam = None
            for i in range(5):
                got = await b_msgs.wait(lambda m, i=i: m["body"] == f"m{i}", what=f"m{i}")
            bob.send_message(mto=ROOM, mbody="spam", mtype="groupchat")
            got = await a_msgs.wait(lambda m: m["body"] == "spam", what="spam")
            spam = got.xml.find("{urn:xmpp:sid:0}stanza-id").get("id")
            page, fin = await _mam(bob, b_msgs, "<max>3</max><before/>", "q1")
            assert [_archived_body(m) for m in page] == ["m3", "m4", "spam"]
            first = fin.xml.find("{urn:xmpp:mam:2}fin/{http://jabber.org/protocol/rsm}set/"
                                 "{http://jabber.org/protocol/rsm}first").text
            page, fin = await _mam(bob, b_msgs, f"<max>10</max><before>{first}</before>", "q2")
            assert [_archived_body(m) for m in page][-3:] == ["m0", "m1", "m2"]

            # moderation leaves a tombstone
            await _iq(alice, ROOM, "set",
                      f"<moderate xmlns='urn:xmpp:message-moderate:1' id='{spam}'>"
                      "<retract xmlns='urn:xmpp:message-retract:1'/><reason>no</reason>"
                      "</moderate>")
            await b_msgs.wait(lambda m: m.xml.find("{urn:xmpp:message-retract:1}retract")
                              is not None, what="moderation announcement")
            page, _ = await _mam(bob, b_msgs, "<max>1</max><before/>", "q3")
            assert "spam" not in str(page[0]) and "retracted" in str(page[0])
        finally:
            for client in (alice, bob, carol):
                await slix_close(client)

        server.restart()
        alice, a_pres, a_msgs = await _client(server, "alice@localhost/desk")
        bob, b_pres, b_msgs = await _client(server, "bob@localhost/phone")
        carol, c_pres, c_msgs = await _client(server, "carol@localhost/web")
        try:
            # The reconnected client still believes it is in the room: self-ping.
            from slixmpp.exceptions import IqError

            try:
                await _iq(bob, f"{ROOM}/Bob", "get", "<ping xmlns='urn:xmpp:ping'/>")
                raise AssertionError("ghost self-ping succeeded")
            except IqError as exc:
                assert exc.condition == "not-acceptable"
            _, _, _, history = await bob.plugin["xep_0045"].join_muc_wait(
                ROOM, "Bob", maxstanzas=3, timeout=10)
            assert [m["body"] for m in history][:2] == ["m3", "m4"]
            await _iq(bob, f"{ROOM}/Bob", "get", "<ping xmlns='urn:xmpp:ping'/>")
            assert await _join_error(carol, "Carol") == "registration-required"
            await alice.plugin["xep_0045"].join_muc_wait(ROOM, "Alice", timeout=10)
            members = await alice.plugin["xep_0045"].get_affiliation_list(ROOM, "member")
            assert members == ["bob@localhost"]
            await alice.plugin["xep_0045"].destroy(ROOM, reason="done",
                                                   altroom="next@conference.localhost")
            destroyed = await b_pres.wait(lambda p: p["type"] == "unavailable"
                                          and p.xml.find(f"{MUC_USER}x/{MUC_USER}destroy")
                                          is not None, what="destroy")
            assert destroyed.xml.find(f"{MUC_USER}x/{MUC_USER}destroy").get("jid") == \
                "next@conference.localhost"
        finally:
            for client in (alice, bob, carol):
                await slix_close(client)

    run(main(), timeout=120)
