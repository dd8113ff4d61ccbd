"""XEP-0357 push notifications end to end, over federation.

The push service usually runs on the app vendor's server, so the fake one
sits on a second chatbx process: server A hosts Alice (a phone with
stream management) and Carol; server B hosts ``push@b.localhost``, a raw
client whose full JID is the push service JID Alice enables. The
notification is an IQ set to that full JID: A's push module hands it to
its router, s2s (dialback, self-signed certificates) carries it to B, and
B's router delivers it to the connected resource, which answers like a
push service. Nothing in-process is faked: it is the path a notification
to a remote service takes.
"""

from __future__ import annotations

import socket
import struct
import xml.etree.ElementTree as ET

import pytest

from conftest import free_port
from rawclient import NS_CLIENT, RawClient, login, q

pytestmark = pytest.mark.integration

A, B = "a.localhost", "b.localhost"
ALICE, CAROL, PUSH_USER = f"alice@{A}", f"carol@{A}", f"push@{B}"
SERVICE = f"{PUSH_USER}/svc"
NS_PUSH, NS_SM = "urn:xmpp:push:0", "urn:xmpp:sm:3"
NS_PUBSUB, NS_DATA = "http://jabber.org/protocol/pubsub", "jabber:x:data"


def fields(form: ET.Element) -> dict[str, str]:
    return {f.get("var", ""): f.findtext(q(NS_DATA, "value")) or "" for f in form.findall(q(NS_DATA, "field"))}


def test_push_notification_reaches_a_remote_push_service(chatbx_server):
    """Alice enables push (service JID, node, a secret in publish options)
    and her phone loses its connection (the session hibernates). Carol's
    message makes A publish to the service on B: from Alice's bare JID, to
    the node, with message count 1, Carol as last sender, no body, and the
    secret; the service answers with a result."""
    ports = {A: free_port(), B: free_port()}
    servers = {}
    for domain, other, users in ((A, B, {ALICE: "pw-alice", CAROL: "pw-carol"}),
                                 (B, A, {PUSH_USER: "pw-push"})):
        routes = f'[s2s]\nstatic_routes = {{ "{other}" = "127.0.0.1:{ports[other]}" }}\n'
        servers[domain] = chatbx_server(users=users, domains=[domain], extra_config=routes,
                                        s2s_port=ports[domain])
    a, b = servers[A], servers[B]

    service = login(b.c2s_port, "push", "pw-push", "svc", domain=B)
    service.send("<presence/>")
    alice = login(a.c2s_port, "alice", "pw-alice", "phone", domain=A)
    alice.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    assert alice.expect(q(NS_SM, "enabled")).get("resume") == "true"
    alice.send("<presence/>")
    alice.send(f"<iq type='set' id='push1'><enable xmlns='{NS_PUSH}' jid='{SERVICE}' node='n1'>"
               f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
               f"<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
               f"<field var='secret'><value>app-secret</value></field></x></enable></iq>")
    reply = alice.wait_for(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == "push1")
    assert reply.get("type") == "result", ET.tostring(reply)
    # The phone's network goes away: RST, no </stream:stream>.
    alice.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    alice.sock.close()

    carol = login(a.c2s_port, "carol", "pw-carol", "pc", domain=A)
    carol.send("<iq type='get' id='c0'><ping xmlns='urn:xmpp:ping'/></iq>")
    carol.wait_for(lambda e: e.get("id") == "c0")  # Alice's loss is processed by now
    carol.message(ALICE, "wake up")

    iq = service.wait_for(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("type") == "set",
                          timeout=20)
    assert iq.get("from") == ALICE and iq.get("to") == SERVICE, ET.tostring(iq)
    publish = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish')}")
    assert publish is not None and publish.get("node") == "n1", ET.tostring(iq)
    summary = publish.find(f"{q(NS_PUBSUB, 'item')}/{q(NS_PUSH, 'notification')}/{q(NS_DATA, 'x')}")
    assert summary is not None
    got = fields(summary)
    assert got["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert got["message-count"] == "1"
    assert got["last-message-sender"].startswith(CAROL)
    assert "last-message-body" not in got
    options = iq.find(f"{q(NS_PUBSUB, 'pubsub')}/{q(NS_PUBSUB, 'publish-options')}/{q(NS_DATA, 'x')}")
    assert options is not None and fields(options)["secret"] == "app-secret"
    service.send(f"<iq type='result' id='{iq.get('id')}' to='{ALICE}'/>")

    # The message itself waits in Alice's hibernated session for her return.
    service.close()
    carol.close()
    assert "push notification for alice@a.localhost" in a.log_text()
    assert "refused a notification" not in a.log_text()
