"""Message archives (XEP-0313) against the real server, driven by slixmpp.

What a person with several devices sees: a device that was offline pages the
archive back and finds every message once (also those delivered from offline
storage, whose stanza-ids match the archive); 500 messages paged forwards
and backwards with no gap and no duplicate; a word found by full-text search
(XEP-0431); another account's archive refused.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from typing import Any, Optional

import pytest

from conftest import Inbox, run, slix_close, slix_login

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
SID = "urn:xmpp:sid:0"
CLIENT = "jabber:client"


def _form(fields: dict[str, str]) -> str:
    if not fields:
        return ""
    xml = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
           f"<value>{MAM}</value></field>")
    for var, value in fields.items():
        xml += f"<field var='{var}'><value>{value}</value></field>"
    return xml + "</x>"


async def mam(client: Any, fields: Optional[dict[str, str]] = None, rsm: str = "",
              to: Optional[str] = None) -> tuple[list[ET.Element], ET.Element]:
    """One MAM query: (the <result/> elements of this query, the IQ answer)."""
    from slixmpp.exceptions import IqError
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    qid = uuid.uuid4().hex
    results: list[ET.Element] = []

    def on_message(msg: Any) -> None:
        result = msg.xml.find(f"{{{MAM}}}result")
        if result is not None and result.get("queryid") == qid:
            results.append(result)

    # slixmpp's "message" event only fires for messages with a <body/>.
    client.register_handler(Callback(f"mam-{qid}", MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"),
                                     on_message))
    iq = client.make_iq_set(ito=to)
    rsm_xml = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
    iq.append(ET.fromstring(f"<query xmlns='{MAM}' queryid='{qid}'>{_form(fields or {})}"
                            f"{rsm_xml}</query>"))
    try:
        reply = (await iq.send(timeout=20)).xml
    except IqError as exc:
        reply = exc.iq.xml
    finally:
        client.remove_handler(f"mam-{qid}")
    return results, reply


def body_of(result: ET.Element) -> str:
    return result.findtext(f"{{urn:xmpp:forward:0}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body") or ""


def fin_of(reply: ET.Element) -> tuple[bool, Optional[str], Optional[str]]:
    fin = reply.find(f"{{{MAM}}}fin")
    assert fin is not None, ET.tostring(reply)
    return (fin.get("complete") == "true", fin.findtext(f"{{{RSM}}}set/{{{RSM}}}first"),
            fin.findtext(f"{{{RSM}}}set/{{{RSM}}}last"))


def archive_id(message: Any, owner: str) -> Optional[str]:
    for sid in message.xml.findall(f"{{{SID}}}stanza-id"):
        if sid.get("by") == owner:
            return sid.get("id")
    return None


async def online(server: Any, jid: str) -> tuple[Any, Inbox]:
    client = await slix_login(server, jid)
    messages = Inbox(client, "message")
    client.send_presence()
    await client.get_roster()
    return client, messages


def test_device_that_was_offline_pages_back_and_finds_every_message_once(chatbx_server, backend):
    """Alice's desk is online while Bob writes 30 messages; then the desk goes away and
    Bob writes 5 more (offline storage). Her phone comes online, gets the 5 from
    offline storage, and pages the archive backwards 7 at a time: every one of the
    35 messages is there exactly once, in order, and the ids the desk and the phone
    received live match the archive's."""
    server = chatbx_server(db_url=backend)

    async def main() -> None:
        desk, desk_msgs = await online(server, f"{ALICE}/desk")
        bob, _ = await online(server, f"{BOB}/pc")
        phone = None
        try:
            for n in range(30):
                bob.send_message(mto=ALICE, mbody=f"live {n}", mtype="chat")
            await desk_msgs.wait(lambda m: m["body"] == "live 29", what="the 30th message")
            live_ids = {m["body"]: archive_id(m, ALICE) for m in desk_msgs.items if m["body"]}
            await slix_close(desk)
            for n in range(5):
                bob.send_message(mto=ALICE, mbody=f"stored {n}", mtype="chat")
            await bob.get_roster()  # a round trip: the messages have been routed
            phone, phone_msgs = await online(server, f"{ALICE}/phone")
            await phone_msgs.wait(lambda m: m["body"] == "stored 4", what="the offline messages")
            live_ids.update({m["body"]: archive_id(m, ALICE) for m in phone_msgs.items if m["body"]})
            assert len(live_ids) == 35 and all(live_ids.values()), live_ids

            pages: list[list[ET.Element]] = []
            before = ""
            while True:
                results, reply = await mam(phone, rsm=f"<max>7</max><before>{before}</before>"
                                           if before else "<max>7</max><before/>")
                complete, first, _ = fin_of(reply)
                pages.insert(0, results)
                if complete:
                    break
                assert first, ET.tostring(reply)
                before = first
                assert len(pages) < 10, "paging does not end"
            archived = [r for page in pages for r in page]
            bodies = [body_of(r) for r in archived]
            assert bodies == [f"live {n}" for n in range(30)] + [f"stored {n}" for n in range(5)]
            assert {body_of(r): r.get("id") for r in archived} == live_ids
        finally:
            for client in (bob, phone):
                if client is not None:
                    await slix_close(client)

    run(main(), timeout=120)


def test_500_messages_paged_forwards_and_backwards(chatbx_server, backend):
    """Alice sends Bob 500 messages; Bob pages his archive forwards 50 at a time
    with <after/>, then backwards from the last page with <before/>: both walks give
    the same 500 messages in order, no gap, no duplicate, 'complete' only at the end."""
    server = chatbx_server(db_url=backend)

    async def main() -> None:
        alice, _ = await online(server, f"{ALICE}/desk")
        bob, bob_msgs = await online(server, f"{BOB}/pc")
        try:
            for n in range(500):
                alice.send_message(mto=BOB, mbody=f"n{n}", mtype="chat")
            await bob_msgs.wait(lambda m: m["body"] == "n499", what="the 500th message", timeout=30)
            live = [archive_id(m, BOB) for m in bob_msgs.items if m["body"]]
            assert len(live) == 500 and len(set(live)) == 500

            forwards: list[ET.Element] = []
            after: Optional[str] = None
            for page_no in range(11):
                results, reply = await mam(bob, fields={"with": ALICE},
                                           rsm=f"<max>50</max>" + (f"<after>{after}</after>" if after else ""))
                complete, first, last = fin_of(reply)
                forwards += results
                if complete:
                    break
                assert len(results) == 50 and last == results[-1].get("id")
                after = last
            assert page_no == 10 or (page_no == 9 and complete)
            backwards: list[ET.Element] = []
            before: Optional[str] = None
            for _ in range(11):
                results, reply = await mam(bob, rsm="<max>50</max>" + (
                    f"<before>{before}</before>" if before else "<before/>"))
                complete, first, _ = fin_of(reply)
                backwards = results + backwards
                if complete:
                    break
                before = first
            for walk in (forwards, backwards):
                assert [r.get("id") for r in walk] == live
                assert [body_of(r) for r in walk] == [f"n{n}" for n in range(500)]
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main(), timeout=180)


def test_full_text_search_finds_a_word(chatbx_server):
    """A XEP-0431 full-text query finds the messages with the word, whatever its case,
    and nothing else."""
    server = chatbx_server()

    async def main() -> None:
        alice, _ = await online(server, f"{ALICE}/desk")
        bob, bob_msgs = await online(server, f"{BOB}/pc")
        try:
            for text in ("meet me at the Harbour", "bring apples", "the harbour is closed"):
                alice.send_message(mto=BOB, mbody=text, mtype="chat")
            await bob_msgs.wait(lambda m: m["body"] == "the harbour is closed", what="the messages")
            results, reply = await mam(bob, fields={"{urn:xmpp:fulltext:0}fulltext": "harbour"})
            assert [body_of(r) for r in results] == ["meet me at the Harbour", "the harbour is closed"]
            assert fin_of(reply)[0]
            results, _ = await mam(bob, fields={"{urn:xmpp:fulltext:0}fulltext": "bananas"})
            assert results == []
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main())


def test_another_accounts_archive_is_forbidden(chatbx_server):
    """Alice asking for Bob's archive gets 'forbidden' and no message of his."""
    server = chatbx_server()

    async def main() -> None:
        alice, _ = await online(server, f"{ALICE}/desk")
        bob, _ = await online(server, f"{BOB}/pc")
        try:
            bob.send_message(mto="carol@localhost", mbody="for carol only", mtype="chat")
            await bob.get_roster()
            results, reply = await mam(alice, to=BOB)
            assert results == []
            assert reply.get("type") == "error", ET.tostring(reply)
            assert reply.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}forbidden") \
                is not None, ET.tostring(reply)
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main())
