"""Flaky mobile networks against the real server: XEP-0198 stream management
with slixmpp (xep_0198) and the raw client, and the durability promise (an
acknowledged message survives SIGKILL) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
import xml.etree.ElementTree as ET

import pytest

from conftest import CLIENT_TIMEOUT, Inbox, make_slix, run, slix_close, slix_login
from rawclient import NS_CLIENT, NS_SASL, RawClient, login, q

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"
NS_SM = "urn:xmpp:sm:3"


# -- raw client helpers ----------------------------------------------------------

def raw_login(server, user: str, resource: str) -> RawClient:
    """A raw client logged in (SCRAM with the account's localpart) and bound."""
    return login(server.c2s_port, user.split("@")[0], server.users[user], resource)


STANZA_TAGS = frozenset(q(NS_CLIENT, name) for name in ("message", "presence", "iq"))


def count_stanzas(client: RawClient) -> None:
    """From now on ``client.handled`` counts the stanzas read (the client's 'h')."""
    client.handled = 0  # type: ignore[attr-defined]
    read = client.next

    def counting(timeout=None):
        elem = read(timeout)
        if elem.tag in STANZA_TAGS:
            client.handled += 1  # type: ignore[attr-defined]
        return elem

    client.next = counting  # type: ignore[method-assign]


def sm_login(server, user: str, resource: str) -> tuple[RawClient, str]:
    """A raw client logged in, bound, available, with resumable SM enabled."""
    client = raw_login(server, user, resource)
    client.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    enabled = client.expect(q(NS_SM, "enabled"))
    count_stanzas(client)
    assert enabled.get("resume") == "true"
    client.send("<presence/>")
    return client, enabled.get("id") or ""


def drop(client: RawClient) -> None:
    """The phone loses its network: the TCP connection is reset (SO_LINGER 0),
    no </stream:stream>, no TLS close_notify."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def resume(server, user: str, previd: str, h: int) -> tuple[RawClient, ET.Element]:
    """A new connection: STARTTLS, SCRAM, stream restart, <resume/>; returns
    the client and the server's answer (<resumed/> or <failed/>)."""
    client = RawClient(server.c2s_port)
    client.open_stream()
    client.starttls()
    answer = client.scram("SCRAM-SHA-256", user.split("@")[0], server.users[user])
    assert answer.tag == q(NS_SASL, "success"), ET.tostring(answer)
    features = client.open_stream()
    assert features.find(q(NS_SM, "sm")) is not None, ET.tostring(features)
    client.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
    return client, client.wait_for(lambda e: e.tag in (q(NS_SM, "resumed"), q(NS_SM, "failed")))


def bodies_until(client: RawClient, count: int, timeout: float = 5.0) -> list[str]:
    """Collect ``count`` message bodies (answering the server's <r/>s)."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        elem = client.next(max(0.1, deadline - time.monotonic()))
        if elem.tag == q(NS_CLIENT, "message") and elem.findtext(q(NS_CLIENT, "body")) is not None:
            out.append(elem.findtext(q(NS_CLIENT, "body")) or "")
    return out


# -- resumption --------------------------------------------------------------------

def test_raw_client_resumes_after_a_reset_and_gets_what_it_missed(chatbx_server):
    """Alice's TCP connection is reset mid-conversation; Bob goes on writing.
    Alice reconnects, resumes with her 'h', is told how many of her own
    stanzas arrived, and receives the unacknowledged and the new messages,
    in order, on the same full JID, without going offline for Bob."""
    server = chatbx_server()
    alice, previd = sm_login(server, ALICE, "phone")
    bob = raw_login(server, BOB, "pc")
    bob.send("<presence/>")
    bob.message(f"{ALICE}/phone", "one")
    assert bodies_until(alice, 1) == ["one"]
    handled = alice.handled  # her presence echo and 'one'
    alice.message(f"{BOB}/pc", "from alice")
    bob.wait_message("from alice")
    bob.message(f"{ALICE}/phone", "two")  # sent, never acknowledged
    alice.wait_message("two")
    drop(alice)
    bob.message(f"{ALICE}/phone", "three")
    bob.message(ALICE, "four")

    # Alice acknowledges what she read up to 'one', not 'two'.
    again, answer = resume(server, ALICE, previd, h=handled)
    assert answer.tag == q(NS_SM, "resumed"), ET.tostring(answer)
    assert answer.get("previd") == previd
    assert answer.get("h") == "2"  # her presence and her message
    got = bodies_until(again, 3)
    assert got == ["two", "three", "four"]
    again.message(f"{BOB}/pc", "back")
    bob.wait_message("back")
    bob.close()
    again.close()


def test_slixmpp_resumes_after_losing_its_connection(chatbx_server):
    """slixmpp with xep_0198: the transport is aborted, Bob writes meanwhile,
    slixmpp reconnects and resumes the stream (no new session_start) and
    gets the messages."""
    server = chatbx_server()

    async def main():
        alice = make_slix(f"{ALICE}/phone", server.users[ALICE])
        alice.register_plugin("xep_0198")
        alice.enable_starttls, alice.enable_direct_tls = True, False
        started, resumed, disconnected = asyncio.Event(), asyncio.Event(), asyncio.Event()
        starts = []
        alice.add_event_handler("session_start", lambda _: (starts.append(1), started.set()))
        alice.add_event_handler("session_resumed", lambda _: resumed.set())
        alice.add_event_handler("disconnected", lambda _: disconnected.set())
        enabled = asyncio.Event()
        alice.add_event_handler("sm_enabled", lambda _: enabled.set())
        messages = Inbox(alice, "message")
        alice.connect("127.0.0.1", server.c2s_port)
        await asyncio.wait_for(started.wait(), CLIENT_TIMEOUT)
        await asyncio.wait_for(enabled.wait(), CLIENT_TIMEOUT)
        alice.send_presence()
        bob = await slix_login(server, f"{BOB}/pc")
        try:
            bob.send_message(mto=f"{ALICE}/phone", mbody="before", mtype="chat")
            await messages.wait(lambda m: m["body"] == "before", what="before")
            alice.abort()
            await asyncio.wait_for(disconnected.wait(), CLIENT_TIMEOUT)
            bob.send_message(mto=ALICE, mbody="missed 1", mtype="chat")
            bob.send_message(mto=f"{ALICE}/phone", mbody="missed 2", mtype="chat")
            await asyncio.sleep(0.3)  # let the server queue them for the hibernating session
            alice.connect("127.0.0.1", server.c2s_port)
            await asyncio.wait_for(resumed.wait(), CLIENT_TIMEOUT)
            await messages.wait(lambda m: m["body"] == "missed 1", what="missed 1")
            await messages.wait(lambda m: m["body"] == "missed 2", what="missed 2")
            assert len(starts) == 1, "resumed, not a new session"
        finally:
            await slix_close(bob)
            await slix_close(alice)

    run(main())


def test_resume_timeout_puts_unacked_messages_into_offline_storage(chatbx_server):
    """With resume_timeout = 1: a message alice never acknowledged before
    her connection vanished reaches her next login from offline storage
    (with a delay stamp), and a late resume fails with item-not-found."""
    server = chatbx_server(extra_config="[modules.smacks]\nresume_timeout = 1\n")
    alice, previd = sm_login(server, ALICE, "phone")
    bob = raw_login(server, BOB, "pc")
    bob.message(ALICE, "keep me")
    alice.wait_message("keep me")
    drop(alice)
    time.sleep(1.5)  # the server's resume timeout (real process, real clock)
    late, answer = resume(server, ALICE, previd, h=0)
    assert answer.tag == q(NS_SM, "failed")
    assert answer.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    assert answer.get("h") == "1"  # her initial presence had arrived
    late.close()

    again = raw_login(server, ALICE, "phone")
    again.send("<presence/>")
    message = again.wait_message("keep me")
    assert message.find("{urn:xmpp:delay}delay") is not None
    again.close()
    bob.close()


# -- durability: an acknowledged message survives SIGKILL ---------------------------

def archive_bodies(client: RawClient) -> list[str]:
    """The bodies in the client's own archive (XEP-0313 query, one page)."""
    client.send("<iq type='set' id='mamq'><query xmlns='urn:xmpp:mam:2' queryid='k'/></iq>")
    bodies = []
    while True:
        elem = client.next()
        if elem.tag == q(NS_CLIENT, "iq") and elem.get("id") == "mamq":
            assert elem.get("type") == "result", ET.tostring(elem)
            return bodies
        result = elem.find("{urn:xmpp:mam:2}result")
        if result is not None and result.get("queryid") == "k":
            bodies.append(result.findtext(
                "{urn:xmpp:forward:0}forwarded/{jabber:client}message/{jabber:client}body"))


def test_acked_message_survives_sigkill(chatbx_server, backend):
    """Alice sends Bob (offline) a message and asks for an ack; the moment
    <a h='N'/> covers it the server is killed with SIGKILL. After a restart
    Bob logs in and receives it, and it is in both archives (XEP-0313): the
    ack waited for the archive batch as well as the offline store."""
    server = chatbx_server(db_url=backend)
    alice, _ = sm_login(server, ALICE, "phone")  # sent one stanza: her presence
    alice.message(BOB, "durable")
    alice.send(f"<r xmlns='{NS_SM}'/>")
    deadline = time.monotonic() + 10
    while True:
        a = alice.wait_for(lambda e: e.tag == q(NS_SM, "a"), max(0.1, deadline - time.monotonic()))
        if int(a.get("h", "0")) >= 2:
            break
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    server.proc = None
    alice.close()
    server.start()
    bob = raw_login(server, BOB, "pc")
    bob.send("<presence/>")
    bob.wait_message("durable")
    assert archive_bodies(bob) == ["durable"]
    bob.close()
    alice = raw_login(server, ALICE, "pc")
    assert archive_bodies(alice) == ["durable"]
    alice.close()


# -- client state indication -------------------------------------------------------

def test_csi_inactive_client_gets_buffered_presence_in_one_flush(chatbx_server):
    """slixmpp (xep_0352) says inactive; Bob changes his presence three
    times and Carol once (directed presence): nothing reaches Alice. When
    she says active she gets the latest of each, and none of the older."""
    server = chatbx_server()

    async def main():
        alice = make_slix(f"{ALICE}/phone", server.users[ALICE])
        alice.register_plugin("xep_0352")
        started = asyncio.Event()
        alice.add_event_handler("session_start", lambda _: started.set())
        presences = Inbox(alice, "presence")
        alice.connect("127.0.0.1", server.c2s_port)
        await asyncio.wait_for(started.wait(), CLIENT_TIMEOUT)
        alice.send_presence()
        await presences.wait(lambda p: p["from"].full == f"{ALICE}/phone", what="own presence")
        bob = await slix_login(server, f"{BOB}/pc")
        carol = await slix_login(server, "carol@localhost/pc")
        try:
            alice.plugin["xep_0352"].send_inactive()
            await asyncio.sleep(0.2)
            for show in ("away", "xa", "dnd"):
                bob.send_presence(pto=f"{ALICE}/phone", pshow=show)
            carol.send_presence(pto=f"{ALICE}/phone", pshow="chat")
            others = lambda p: p["from"].bare in (BOB, "carol@localhost")  # noqa: E731
            await presences.none(others, within=1.0)
            alice.plugin["xep_0352"].send_active()
            await presences.wait(lambda p: p["from"].bare == "carol@localhost", what="carol's presence")
            await presences.wait(lambda p: p["from"].bare == BOB, what="bob's presence")
            await asyncio.sleep(0.3)
            got = [(p["from"].bare, p["show"]) for p in presences.items if others(p)]
            assert got == [(BOB, "dnd"), ("carol@localhost", "chat")], got
        finally:
            for client in (bob, carol, alice):
                await slix_close(client)

    run(main())


# -- SASL2 + Bind2 ------------------------------------------------------------------

def test_sasl2_bind2_login_binds_and_enables_sm_in_one_exchange(chatbx_server):
    """A raw client authenticates with SASL2 (SCRAM-SHA-256), binds with
    Bind2 and enables SM inline: one <authenticate/>, one <response/>, and
    the stream is ready (no restart, no bind IQ); the resource is the same
    for the same user-agent id on the next login."""
    import base64
    import hashlib
    import hmac

    server = chatbx_server()
    ns2, bind2 = "urn:xmpp:sasl:2", "urn:xmpp:bind:0"

    def login_sasl2() -> tuple[RawClient, ET.Element]:
        client = RawClient(server.c2s_port)
        client.open_stream()
        features = client.starttls()
        assert features.find(q(ns2, "authentication")) is not None
        nonce = base64.b64encode(os.urandom(12)).decode()
        first_bare = f"n=alice,r={nonce}"
        client.send(f"<authenticate xmlns='{ns2}' mechanism='SCRAM-SHA-256'>"
                    f"<initial-response>{base64.b64encode(('n,,' + first_bare).encode()).decode()}"
                    f"</initial-response><user-agent id='4f2c'><software>t</software></user-agent>"
                    f"<bind xmlns='{bind2}'><tag>Test</tag><enable xmlns='{NS_SM}' resume='true'/></bind>"
                    f"</authenticate>")
        challenge = client.expect(q(ns2, "challenge"))
        server_first = base64.b64decode(challenge.text or "").decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", b"alice-pw", base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        proof = bytes(a ^ b for a, b in zip(client_key, hmac.digest(stored, auth_message, "sha256")))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        client.send(f"<response xmlns='{ns2}'>{base64.b64encode(final.encode()).decode()}</response>")
        return client, client.expect(q(ns2, "success"))

    client, success = login_sasl2()
    jid = success.findtext(q(ns2, "authorization-identifier")) or ""
    assert jid.startswith("alice@localhost/Test."), ET.tostring(success)
    enabled = success.find(f"{q(bind2, 'bound')}/{q(NS_SM, 'enabled')}")
    assert enabled is not None and enabled.get("resume") == "true", ET.tostring(success)
    client.send(f"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = client.expect(q(NS_CLIENT, "iq"))
    assert pong.get("type") == "result" and pong.get("to") == jid
    client.close()
    again, success2 = login_sasl2()
    assert success2.findtext(q(ns2, "authorization-identifier")) == jid
    again.close()
