"""One conversation on every device (XEP-0280 carbons) and blocking
(XEP-0191 with XEP-0377 reports) against the real server, with slixmpp's
xep_0280 and xep_0191 plugins, the way a user's apps do it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from conftest import CLIENT_TIMEOUT, Inbox, manual_subscriptions, run, slix_close, slix_login, subscribe_mutually

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


async def _online(server, jid, priority=None, plugins=()):
    """Log in with ``plugins``, fetch the roster, send initial presence."""
    client = await slix_login(server, jid)
    for plugin in plugins:
        client.register_plugin(plugin)
    manual_subscriptions(client)
    presences, messages = Inbox(client, "presence"), Inbox(client, "message")
    await client.get_roster()
    client.send_presence(ppriority=priority)
    return client, presences, messages


def _body(text):
    return lambda m: m["body"] == text


def _carbon(kind, text):
    def match(m):
        return m[f"carbon_{kind}"]["body"] == text
    return match


def test_two_resources_see_the_same_conversation(chatbx_server):
    """Alice on desk (priority 5) and phone (priority 1), both with carbons on:
    what Bob sends to her bare JID reaches the desk and, as a received carbon,
    the phone; what the desk answers reaches Bob and, as a sent carbon, the
    phone; a message to the phone's full JID shows on the desk as a carbon; a
    <private/> message is not copied."""
    server = chatbx_server()

    async def main():
        desk, _, desk_msgs = await _online(server, f"{ALICE}/desk", 5, ("xep_0280",))
        phone, _, phone_msgs = await _online(server, f"{ALICE}/phone", 1, ("xep_0280",))
        bob, _, bob_msgs = await _online(server, f"{BOB}/pc")
        desk_carbons = Inbox(desk, "carbon_received")
        phone_received, phone_sent = Inbox(phone, "carbon_received"), Inbox(phone, "carbon_sent")
        try:
            await desk.plugin["xep_0280"].enable(timeout=CLIENT_TIMEOUT)
            await phone.plugin["xep_0280"].enable(timeout=CLIENT_TIMEOUT)

            bob.send_message(mto=ALICE, mbody="hello alice", mtype="chat")
            got = await desk_msgs.wait(_body("hello alice"), what="bob's message on the desk")
            assert got["from"].full == f"{BOB}/pc"
            carbon = await phone_received.wait(_carbon("received", "hello alice"),
                                               what="received carbon on the phone")
            assert carbon["from"].full == ALICE and carbon["to"].full == f"{ALICE}/phone"
            assert carbon["carbon_received"]["from"].full == f"{BOB}/pc"

            desk.send_message(mto=f"{BOB}/pc", mbody="hi bob", mtype="chat")
            await bob_msgs.wait(_body("hi bob"), what="the desk's answer on bob")
            sent = await phone_sent.wait(_carbon("sent", "hi bob"), what="sent carbon on the phone")
            assert sent["carbon_sent"]["to"].full == f"{BOB}/pc"
            assert sent["carbon_sent"]["from"].full == f"{ALICE}/desk"

            bob.send_message(mto=f"{ALICE}/phone", mbody="to your phone", mtype="chat")
            await phone_msgs.wait(_body("to your phone"), what="full-JID message on the phone")
            await desk_carbons.wait(_carbon("received", "to your phone"), what="its carbon on the desk")

            private = desk.make_message(mto=f"{BOB}/pc", mbody="just this device", mtype="chat")
            private.enable("carbon_private")
            private.send()
            await bob_msgs.wait(_body("just this device"), what="the private message on bob")
            await phone_sent.none(_carbon("sent", "just this device"), within=0.5)
            # The copies were only copies: nothing arrived twice or as plain messages.
            assert [m["body"] for m in phone_msgs.items if m["body"]] == ["to your phone"]
            assert [m["body"] for m in desk_msgs.items if m["body"]] == ["hello alice"]
        finally:
            for client in (desk, phone, bob):
                await slix_close(client)

    run(main())


def test_blocked_user_is_cut_off_both_ways(chatbx_server, backend):
    """Alice and Bob are mutual contacts; Alice blocks Bob: Bob sees her go
    unavailable, his messages never arrive (he gets service-unavailable), her
    presence never reaches him again (not even after he logs in again), and
    what she sends him is refused with <blocked/>; her other resource hears
    the block as a push. After unblocking, her presence reaches him again. A
    block with a spam report shows in `chatbxctl reports list`."""
    server = chatbx_server(db_url=backend)

    async def main():
        alice, a_pres, a_msgs = await _online(server, f"{ALICE}/desk", plugins=("xep_0191",))
        bob, b_pres, b_msgs = await _online(server, f"{BOB}/pc")
        laptop = bob2 = None
        try:
            await subscribe_mutually(alice, a_pres, bob, b_pres)
            await b_pres.wait(lambda p: p["from"].full == f"{ALICE}/desk" and p["type"] == "available",
                              what="alice's presence")
            laptop, _, _ = await _online(server, f"{ALICE}/laptop", plugins=("xep_0191",))
            blocked_pushes = Inbox(laptop, "blocked")
            assert await laptop.plugin["xep_0191"].get_blocked_jids(timeout=CLIENT_TIMEOUT) == set()

            await alice.plugin["xep_0191"].block(BOB, timeout=CLIENT_TIMEOUT)
            await b_pres.wait(lambda p: p["from"].full == f"{ALICE}/desk" and p["type"] == "unavailable",
                              what="alice unavailable at the block")
            push = await blocked_pushes.wait(lambda iq: True, what="the block push on the laptop")
            assert [str(item["jid"]) for item in push["block"]["items"]] == [BOB]

            bob.send_message(mto=ALICE, mbody="let me in", mtype="chat")
            bounce = await b_msgs.wait(lambda m: m["type"] == "error", what="the error for bob")
            assert bounce["error"]["condition"] == "service-unavailable"
            await a_msgs.none(_body("let me in"), within=0.5)

            alice.send_presence(pshow="away", pstatus="not for bob")
            await b_pres.none(lambda p: p["status"] == "not for bob", within=0.5)

            alice.send_message(mto=BOB, mbody="you will not read this", mtype="chat")
            refused = await a_msgs.wait(lambda m: m["type"] == "error", what="alice's refusal")
            assert refused["error"]["condition"] == "not-acceptable"
            assert refused.xml.find(f".//{{{NS_BLOCKING_ERRORS}}}blocked") is not None
            await b_msgs.none(_body("you will not read this"), within=0.3)

            # Bob logs in again: his server-side probe of Alice gets nothing.
            bob2, b2_pres, _ = await _online(server, f"{BOB}/phone")
            await b2_pres.none(lambda p: p["from"].bare == ALICE, within=0.7)

            await alice.plugin["xep_0191"].unblock(BOB, timeout=CLIENT_TIMEOUT)
            back = await b2_pres.wait(lambda p: p["from"].full == f"{ALICE}/desk",
                                      what="alice's presence after the unblock")
            assert back["status"] == "not for bob"  # her current presence

            # Block with a spam report (XEP-0377), written by hand: slixmpp has no API for it.
            iq = alice.make_iq_set()
            block = ET.SubElement(iq.xml, "{urn:xmpp:blocking}block")
            item = ET.SubElement(block, "{urn:xmpp:blocking}item", jid=CAROL)
            report = ET.SubElement(item, "{urn:xmpp:reporting:1}report", reason="urn:xmpp:reporting:spam")
            ET.SubElement(report, "{urn:xmpp:reporting:1}text").text = "unsolicited ads"
            await iq.send(timeout=CLIENT_TIMEOUT)
        finally:
            for client in (alice, bob, laptop, bob2):
                if client is not None:
                    await slix_close(client)

    run(main())
    out = server.ctl("reports", "list").stdout.splitlines()
    assert len(out) == 1
    assert out[0].split("\t")[1:5] == [ALICE, CAROL, "urn:xmpp:reporting:spam", '"unsolicited ads"']
