"""PEP, avatars, vCards, nicknames and bookmarks with slixmpp against the
real server (XEP-0163, XEP-0084, XEP-0054/0153/0398, XEP-0172, XEP-0048/
0049/0402/0411), on SQLite and PostgreSQL.

What users see: a contact's client hears about a new nickname or avatar
(its caps say +notify), a client without that interest hears nothing, a
stranger cannot read presence-only or whitelist nodes, the avatar shows
in the vCard too, and an old bookmarks client and a new one see the same
rooms.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from conftest import (Inbox, make_slix, manual_subscriptions, run, slix_close, slix_login,
                      subscribe_mutually, CLIENT_TIMEOUT)

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
PNG = b"\x89PNG\r\n\x1a\n not really a picture " * 20
SHA = hashlib.sha1(PNG).hexdigest()


class AllMessages(Inbox):
    """Every message stanza (slixmpp's "message" event skips those without
    a body, which pubsub notifications are)."""

    def __init__(self, client: Any) -> None:
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import StanzaPath

        self.items = []
        self._waiters = []
        client.register_handler(Callback("all messages", StanzaPath("message"), self._on))


async def pep_client(server: Any, jid: str, plugins: tuple[str, ...] = (
        "xep_0060", "xep_0163", "xep_0115", "xep_0084", "xep_0054", "xep_0172", "xep_0153")) -> Any:
    """Log in like an app with PEP support: caps with +notify for the
    registered PEP plugins, roster, initial presence."""
    client = make_slix(jid, server.users[jid.split("/")[0]])
    for plugin in plugins:
        client.register_plugin(plugin)
    manual_subscriptions(client)
    client.inbox = AllMessages(client)
    client.presences = Inbox(client, "presence")
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    client.connect("127.0.0.1", server.c2s_port)
    await asyncio.wait_for(started, CLIENT_TIMEOUT)
    await client.get_roster()
    client.send_presence()
    await asyncio.sleep(0.3)  # caps: the server asks disco#info once per new ver
    return client


def _pep_event(node: str):
    def match(msg: Any) -> bool:
        return msg.xml.find(f".//{{http://jabber.org/protocol/pubsub#event}}items[@node='{node}']") is not None
    return match


async def _condition(coro: Any) -> str:
    try:
        await coro
    except IqError as exc:
        return exc.condition
    return "result"


def test_pep_nick_avatar_vcard_access(chatbx_server, backend) -> None:
    """Alice publishes an item, a nickname and an avatar; Bob (contact,
    +notify) gets the notifications and reads the items, the avatar is in
    Alice's vCard, Bob's plain client (no +notify) gets no notification,
    Carol (a stranger) reads the vCard but not the presence-only or
    whitelist nodes."""
    server = chatbx_server(db_url=backend)

    async def main() -> None:
        alice = await pep_client(server, f"{ALICE}/desk")
        bob = await pep_client(server, f"{BOB}/phone")
        clients = [alice, bob]
        try:
            await subscribe_mutually(alice, alice.presences, bob, bob.presences)
            plain = await slix_login(server, f"{BOB}/plain")
            plain_msgs = AllMessages(plain)
            plain.send_presence()
            carol = await pep_client(server, f"{CAROL}/c")
            clients += [plain, carol]
            await asyncio.sleep(0.3)

            # A generic item, read back by the owner and by the contact.
            payload = ET.fromstring("<thing xmlns='urn:example:test'>one</thing>")
            await alice.plugin["xep_0060"].publish(alice.boundjid.bare, "urn:example:test",
                                                    id="i1", payload=payload)
            got = await bob.plugin["xep_0060"].get_items(ALICE, "urn:example:test")
            assert [i["id"] for i in got["pubsub"]["items"]] == ["i1"]
            assert await _condition(carol.plugin["xep_0060"].get_items(ALICE, "urn:example:test")) == \
                "not-authorized"

            # XEP-0172 nickname: Bob's PEP client hears it, the plain one and Carol do not.
            await alice.plugin["xep_0172"].publish_nick("Ally")
            nick = await bob.inbox.wait(_pep_event("http://jabber.org/protocol/nick"), what="nick event")
            assert "Ally" in str(nick)
            await plain_msgs.none(lambda m: True, within=1.0)
            await carol.inbox.none(_pep_event("http://jabber.org/protocol/nick"), within=0.2)

            # XEP-0084 avatar: data then metadata; Bob hears the metadata,
            # fetches the data; the vCard has the photo (XEP-0398).
            await alice.plugin["xep_0084"].publish_avatar(PNG)
            await alice.plugin["xep_0084"].publish_avatar_metadata(
                {"id": SHA, "type": "image/png", "bytes": len(PNG)})
            await bob.inbox.wait(_pep_event("urn:xmpp:avatar:metadata"), what="avatar metadata event")
            data = await bob.plugin["xep_0084"].retrieve_avatar(ALICE, SHA)
            assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == PNG
            vcard = await bob.plugin["xep_0054"].get_vcard(ALICE, local=False)
            assert vcard["vcard_temp"]["PHOTO"]["BINVAL"] == PNG, str(vcard)

            # vcard-temp: Alice writes, Carol (a stranger) reads.
            card = alice.plugin["xep_0054"].make_vcard()
            card["FN"] = "Alice Liddell"
            card["PHOTO"]["TYPE"] = "image/png"
            card["PHOTO"]["BINVAL"] = PNG
            await alice.plugin["xep_0054"].publish_vcard(card)
            seen = await carol.plugin["xep_0054"].get_vcard(ALICE, local=False)
            assert seen["vcard_temp"]["FN"] == "Alice Liddell"

            # XEP-0153: Alice's next presence carries the photo hash for Bob.
            alice.send_presence(pstatus="with avatar")
            pres = await bob.presences.wait(
                lambda p: p["from"].bare == ALICE and p["status"] == "with avatar", what="presence")
            photo = pres.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
            assert photo is not None and photo.text == SHA

            # A whitelist node refuses the stranger, also a subscription.
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden",
                           value="http://jabber.org/protocol/pubsub#publish-options")
            form.add_field(var="pubsub#access_model", value="whitelist")
            await alice.plugin["xep_0060"].publish(alice.boundjid.bare, "urn:example:private", id="s",
                                                    payload=ET.fromstring("<s xmlns='urn:example:private'/>"),
                                                    options=form)
            assert await _condition(carol.plugin["xep_0060"].get_items(ALICE, "urn:example:private")) == \
                "not-allowed"
            assert await _condition(carol.plugin["xep_0060"].subscribe(ALICE, "urn:example:private")) == \
                "not-allowed"
            # A mismatching publish-option is refused, never applied silently.
            form2 = alice.plugin["xep_0004"].make_form(ftype="submit")
            form2.add_field(var="FORM_TYPE", ftype="hidden",
                            value="http://jabber.org/protocol/pubsub#publish-options")
            form2.add_field(var="pubsub#access_model", value="open")
            assert await _condition(alice.plugin["xep_0060"].publish(
                alice.boundjid.bare, "urn:example:private", id="t",
                payload=ET.fromstring("<s xmlns='urn:example:private'/>"), options=form2)) == "conflict"
        finally:
            for client in clients:
                await slix_close(client)

    run(main(), timeout=90)


def test_bookmarks_old_and_new_client(chatbx_server, backend) -> None:
    """An old client (XEP-0048 in private storage) and a new one (XEP-0402
    PEP items) of the same account see the same rooms (XEP-0411)."""
    server = chatbx_server(db_url=backend)

    async def main() -> None:
        old = await pep_client(server, f"{ALICE}/old", ("xep_0048", "xep_0049"))
        new = await pep_client(server, f"{ALICE}/new", ("xep_0060", "xep_0163", "xep_0115", "xep_0402"))
        try:
            marks = old.plugin["xep_0048"].stanza.Bookmarks()
            marks.add_conference("room@conference.localhost", "al", name="The Room", autojoin=True)
            await old.plugin["xep_0048"].set_bookmarks(marks)

            got = await new.plugin["xep_0060"].get_items(ALICE, "urn:xmpp:bookmarks:1")
            [item] = list(got["pubsub"]["items"])
            assert item["id"] == "room@conference.localhost"
            assert item["conference"]["name"] == "The Room" and item["conference"]["autojoin"] is True
            assert item["conference"]["nick"] == "al"

            conf = ET.fromstring("<conference xmlns='urn:xmpp:bookmarks:1' name='Other' autojoin='false'>"
                                 "<nick>al2</nick></conference>")
            form = new.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="FORM_TYPE", ftype="hidden",
                           value="http://jabber.org/protocol/pubsub#publish-options")
            for var, value in (("pubsub#persist_items", "true"), ("pubsub#max_items", "max"),
                               ("pubsub#send_last_published_item", "never"),
                               ("pubsub#access_model", "whitelist")):
                form.add_field(var=var, value=value)
            await new.plugin["xep_0060"].publish(ALICE, "urn:xmpp:bookmarks:1",
                                                  id="other@conference.localhost", payload=conf,
                                                  options=form)

            back = await old.plugin["xep_0048"].get_bookmarks()
            rooms = {str(c["jid"]): c for c in back["private"]["bookmarks"]["conferences"]}
            assert set(rooms) == {"room@conference.localhost", "other@conference.localhost"}
            assert rooms["other@conference.localhost"]["nick"] == "al2"
        finally:
            await slix_close(old)
            await slix_close(new)

    run(main(), timeout=60)
