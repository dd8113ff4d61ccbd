"""Bad input on a real server's s2s port, each answered with the right stream
or dialback error, while federation between two servers carries on.

A raw socket speaks server-to-server XMPP by hand (rawclient): a stream to a
domain not served, a jabber:client stream, plaintext dialback where TLS is
required, stanzas before authentication, a huge pre-authentication element,
a dialback key the authoritative server refuses, a db:verify for a domain
not hosted (no oracle), and a remote that accepts TCP and never answers.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from conftest import ChatbxServer, Inbox, run, slix_close, slix_login
from rawclient import NS_STREAMS, RawClient, q
from test_federation import A, ALICE, B, BOB, start_pair

NS_SERVER = "jabber:server"
NS_DB = "jabber:server:dialback"


def raw(server: ChatbxServer, to: str = A) -> RawClient:
    """A raw connection to the server's s2s port."""
    return RawClient(server.s2s_port or 0, domain=to)


def tls_stream(server: ChatbxServer) -> RawClient:
    """A raw s2s stream after STARTTLS, claiming to be b.localhost (no certificate)."""
    client = raw(server)
    client.open_stream(xmlns=NS_SERVER)
    client.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    client.expect(q("urn:ietf:params:xml:ns:xmpp-tls", "proceed"))
    client._start_tls()
    client.parser = ET.XMLPullParser(events=("start", "end"))
    client.depth = 0
    client.send(f"<?xml version='1.0'?><stream:stream to='{A}' from='{B}' xmlns='{NS_SERVER}' "
                f"xmlns:stream='{NS_STREAMS}' xmlns:db='{NS_DB}' version='1.0'>")
    client.features = client.expect(q(NS_STREAMS, "features"))
    return client


def test_bad_s2s_input(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path) -> None:
    """Each bad input gets its error; a silent remote makes a message bounce
    with remote-server-timeout; alice and bob still chat afterwards."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    silent_port = silent.getsockname()[1]
    try:
        a, b = start_pair(chatbx_server, tmp_path, with_ca=False,
                          extra_a=f'"silent.localhost" = "127.0.0.1:{silent_port}"',
                          extra_s2s="auth_timeout = 2.0\n")

        c = raw(a, to="nowhere.localhost")
        c.open_stream(xmlns=NS_SERVER, read_features=False)
        assert c.stream_error() == "host-unknown"

        c = raw(a)
        c.open_stream(xmlns="jabber:client", read_features=False)
        assert c.stream_error() == "invalid-namespace"

        c = raw(a)
        c.open_stream(xmlns=NS_SERVER)
        c.send(f"<db:result xmlns:db='{NS_DB}' from='{B}' to='{A}'>key</db:result>")
        assert c.stream_error() == "policy-violation"  # TLS is required

        c = tls_stream(a)
        c.send(f"<message from='bob@{B}' to='{ALICE}'><body>sneaky</body></message>")
        assert c.stream_error() == "not-authorized"

        c = tls_stream(a)
        c.send(f"<db:result from='{B}' to='{A}'>" + "k" * 70000 + "</db:result>")
        assert c.stream_error() == "policy-violation"

        # A key b.localhost never made: a asks b (authoritative), b says invalid.
        c = tls_stream(a)
        c.send(f"<db:result from='{B}' to='{A}'>0123456789abcdef</db:result>")
        answer = c.wait_for(lambda e: e.tag == q(NS_DB, "result"), timeout=10)
        assert answer.get("type") == "invalid"
        c.send(f"<message from='bob@{B}' to='{ALICE}'><body>sneaky</body></message>")
        assert c.stream_error() == "not-authorized"

        # Not an oracle for domains a does not host.
        c = tls_stream(a)
        c.send(f"<db:verify from='{B}' to='other.localhost' id='x'>0123</db:verify>")
        answer = c.wait_for(lambda e: e.tag == q(NS_DB, "verify"))
        assert answer.get("type") == "error"

        async def chat() -> None:
            alice = await slix_login(a, ALICE)
            bob = await slix_login(b, BOB)
            try:
                alice_msgs, bob_msgs = Inbox(alice, "message"), Inbox(bob, "message")
                bob_presence = Inbox(bob, "presence")
                bob.send_presence()
                await bob_presence.wait(lambda p: p["from"] == bob.boundjid, what="bob's own presence")
                alice.send_message(mto="x@silent.localhost", mbody="anyone?", mtype="chat")
                err = await alice_msgs.wait(lambda m: m["type"] == "error", timeout=10,
                                            what="a bounce from the silent remote")
                assert err["error"]["condition"] == "remote-server-timeout"
                alice.send_message(mto=BOB, mbody="still here", mtype="chat")
                await bob_msgs.wait(lambda m: m["body"] == "still here", what="alice's message")
            finally:
                await slix_close(alice)
                await slix_close(bob)

        run(chat(), 60)
    finally:
        silent.close()
