"""Instant messaging and presence against the real server (RFC 6121).

What a person does with two real clients: add each other, see each other
online, chat, get messages sent while offline (XEP-0160, with a XEP-0203
delay) even when the server restarted in between; several resources of
one account; roster pushes. The end-to-end cases run on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from conftest import (Inbox, manual_subscriptions, roster_items, run, slix_close, slix_login,
                      subscribe_mutually)
from rawclient import NS_CLIENT, NS_ROSTER, login, q

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"


async def _online(server, jid, priority=None, mech="SCRAM-SHA-256"):
    """Log in, fetch the roster, send initial presence; return the client
    and Inboxes for its presences and messages."""
    client = await slix_login(server, jid, sasl_mech=mech)
    manual_subscriptions(client)
    presences, messages = Inbox(client, "presence"), Inbox(client, "message")
    await client.get_roster()
    client.send_presence(ppriority=priority)
    return client, presences, messages


def _available_from(full_or_bare):
    def match(p):
        if p["type"] in ("unavailable", "error", "subscribe", "subscribed", "unsubscribe",
                         "unsubscribed", "probe"):
            return False
        sender = p["from"]
        return sender.full == full_or_bare or sender.bare == full_or_bare
    return match


def _body(text):
    return lambda m: m["body"] == text


def test_subscribe_presence_and_chat(chatbx_server, backend):
    """Alice and Bob add each other (roster set + subscribe/subscribed both
    ways), both rosters end with subscription 'both', each sees the
    other's presence, and they exchange chat messages."""
    server = chatbx_server(db_url=backend)

    async def main():
        alice, a_pres, a_msgs = await _online(server, f"{ALICE}/desk")
        bob, b_pres, b_msgs = await _online(server, f"{BOB}/phone")
        try:
            await subscribe_mutually(alice, a_pres, bob, b_pres)
            a_roster, b_roster = await roster_items(alice), await roster_items(bob)
            assert a_roster[BOB]["subscription"] == "both", a_roster
            assert a_roster[BOB]["ask"] is None
            assert a_roster[BOB]["name"] == "B" and a_roster[BOB]["groups"] == ["Friends"]
            assert b_roster[ALICE]["subscription"] == "both", b_roster
            # Once subscribed, each one's presence reaches the other.
            await a_pres.wait(_available_from(f"{BOB}/phone"), what="bob's presence")
            await b_pres.wait(_available_from(f"{ALICE}/desk"), what="alice's presence")
            # A presence change is broadcast too.
            bob.send_presence(pshow="away", pstatus="lunch")
            away = await a_pres.wait(lambda p: p["from"].full == f"{BOB}/phone" and p["show"] == "away",
                                     what="bob away")
            assert away["status"] == "lunch"

            alice.send_message(mto=BOB, mbody="hi bob", mtype="chat")
            got = await b_msgs.wait(_body("hi bob"), what="alice's message")
            assert got["from"].full == f"{ALICE}/desk"
            assert got["type"] == "chat"
            bob.send_message(mto=got["from"], mbody="hi alice", mtype="chat")
            reply = await a_msgs.wait(_body("hi alice"), what="bob's reply")
            assert reply["from"].full == f"{BOB}/phone"

            # Bob leaving is seen by Alice as unavailable.
            await slix_close(bob)
            await a_pres.wait(lambda p: p["type"] == "unavailable" and p["from"].full == f"{BOB}/phone",
                              what="bob unavailable")
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main())


def test_subscription_survives_restart(chatbx_server, backend):
    """A subscription agreed before a server restart is still 'both' after
    it, and presence flows again without a new request."""
    server = chatbx_server(db_url=backend)

    async def before():
        alice, a_pres, _ = await _online(server, f"{ALICE}/desk")
        bob, b_pres, _ = await _online(server, f"{BOB}/phone")
        try:
            await subscribe_mutually(alice, a_pres, bob, b_pres)
            assert (await roster_items(bob))[ALICE]["subscription"] == "both"
        finally:
            await slix_close(alice)
            await slix_close(bob)

    async def after():
        alice, a_pres, _ = await _online(server, f"{ALICE}/desk")
        bob, b_pres, _ = await _online(server, f"{BOB}/phone")
        try:
            assert (await roster_items(alice))[BOB]["subscription"] == "both"
            assert (await roster_items(bob))[ALICE]["subscription"] == "both"
            await a_pres.wait(_available_from(f"{BOB}/phone"), what="bob's presence after restart")
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(before())
    server.restart()
    run(after())


def test_offline_message_across_restart(chatbx_server, backend):
    """Bob is offline; Alice sends him a message; the server process is
    restarted; when Bob comes online he gets the message with a XEP-0203
    delay stamped by the server, once."""
    server = chatbx_server(db_url=backend)

    async def send():
        alice = await slix_login(server, f"{ALICE}/desk")
        try:
            alice.send_message(mto=BOB, mbody="while you were out", mtype="chat")
            # A round trip after the message: it has been routed by now.
            await alice.get_roster()
        finally:
            await slix_close(alice)

    async def receive():
        bob, _, b_msgs = await _online(server, f"{BOB}/phone")
        try:
            got = await b_msgs.wait(_body("while you were out"), what="the offline message")
            assert got["from"].bare == ALICE
            delay = got.xml.find("{urn:xmpp:delay}delay")
            assert delay is not None, str(got)
            assert delay.get("stamp"), str(got)
            assert delay.get("from") in (None, "localhost"), str(got)
        finally:
            await slix_close(bob)
        # Delivered means removed from storage: the next login gets nothing.
        bob, _, b_msgs = await _online(server, f"{BOB}/phone")
        try:
            await b_msgs.none(_body("while you were out"), within=0.5)
        finally:
            await slix_close(bob)

    run(send())
    server.restart()
    run(receive())


def test_several_resources(chatbx_server):
    """With two available resources of Alice (priorities 5 and 1): Bob's
    presence reaches both, each resource sees the other's presence, a
    chat to the bare JID goes only to the highest-priority resource and
    a message to a full JID only to that resource."""
    server = chatbx_server()

    async def main():
        phone, p_pres, p_msgs = await _online(server, f"{ALICE}/phone", priority=5)
        bob, b_pres, _ = await _online(server, f"{BOB}/pc")
        laptop = None
        try:
            await subscribe_mutually(phone, p_pres, bob, b_pres)
            laptop, l_pres, l_msgs = await _online(server, f"{ALICE}/laptop", priority=1)
            bob.send_presence(pstatus="here")  # a fresh broadcast for both resources
            await p_pres.wait(lambda p: _available_from(f"{BOB}/pc")(p) and p["status"] == "here",
                              what="bob's presence on phone")
            await l_pres.wait(lambda p: _available_from(f"{BOB}/pc")(p) and p["status"] == "here",
                              what="bob's presence on laptop")
            await p_pres.wait(_available_from(f"{ALICE}/laptop"), what="laptop's presence on phone")
            await l_pres.wait(_available_from(f"{ALICE}/phone"), what="phone's presence on laptop")
            # Bob sees both of Alice's resources.
            await b_pres.wait(_available_from(f"{ALICE}/laptop"), what="alice/laptop on bob")

            bob.send_message(mto=ALICE, mbody="to the bare jid", mtype="chat")
            await p_msgs.wait(_body("to the bare jid"), what="bare-JID chat on phone")
            bob.send_message(mto=f"{ALICE}/laptop", mbody="to the laptop", mtype="chat")
            await l_msgs.wait(_body("to the laptop"), what="full-JID chat on laptop")
            # Neither went to the other resource.
            await l_msgs.none(_body("to the bare jid"), within=0.3)
            await p_msgs.none(_body("to the laptop"), within=0.1)
        finally:
            for client in (phone, bob, laptop):
                if client is not None:
                    await slix_close(client)

    run(main())


def test_resource_conflict(shared_server):
    """Binding a resource that is already in use replaces the old session:
    it gets a `conflict` stream error and is closed; the new one works."""
    old = login(shared_server.c2s_port, "carol", "carol-pw", resource="dup")
    new = None
    try:
        new = login(shared_server.c2s_port, "carol", "carol-pw", resource="dup")
        assert new.jid == "carol@localhost/dup"
        assert old.stream_error() == "conflict"
        old.assert_closed()
        new.message(new.jid, "still here")
        new.wait_message("still here")
    finally:
        old.close()
        if new is not None:
            new.close()


def test_roster_push_to_other_resource(shared_server):
    """A roster set from one resource is pushed (iq set from the bare JID
    or no 'from') to every resource that requested the roster, including
    the one that made the change; a removal is pushed as
    subscription='remove'."""
    port = shared_server.c2s_port
    phone = login(port, "carol", "carol-pw", resource="phone")
    laptop = login(port, "carol", "carol-pw", resource="laptop")

    def push_for(jid, subscription):
        def match(e):
            if e.tag != q(NS_CLIENT, "iq") or e.get("type") != "set":
                return False
            item = e.find(f"{q(NS_ROSTER, 'query')}/{q(NS_ROSTER, 'item')}")
            return item is not None and item.get("jid") == jid and item.get("subscription") == subscription
        return match

    try:
        for client in (phone, laptop):
            client.send(f"<iq type='get' id='r1'><query xmlns='{NS_ROSTER}'/></iq>")
            client.wait_for(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == "r1")
        laptop.send(f"<iq type='set' id='add1'><query xmlns='{NS_ROSTER}'>"
                    f"<item jid='dave@example.net' name='Dave'><group>Work</group></item></query></iq>")
        push = phone.wait_for(push_for("dave@example.net", "none"))
        assert push.get("from") in (None, "carol@localhost"), ET.tostring(push)
        item = push.find(f"{q(NS_ROSTER, 'query')}/{q(NS_ROSTER, 'item')}")
        assert item.get("name") == "Dave" and item.findtext(q(NS_ROSTER, "group")) == "Work"
        phone.send(f"<iq type='result' id='{push.get('id')}'/>")
        seen = {"result": False, "push": False}

        def result_and_push(e):
            if e.tag == q(NS_CLIENT, "iq") and e.get("id") == "add1":
                assert e.get("type") == "result", ET.tostring(e)
                seen["result"] = True
            elif push_for("dave@example.net", "none")(e):
                seen["push"] = True
            return all(seen.values())

        laptop.wait_for(result_and_push)  # the resource that made the change gets the push too

        laptop.send(f"<iq type='set' id='del1'><query xmlns='{NS_ROSTER}'>"
                    f"<item jid='dave@example.net' subscription='remove'/></query></iq>")
        phone.wait_for(push_for("dave@example.net", "remove"))
    finally:
        phone.close()
        laptop.close()
