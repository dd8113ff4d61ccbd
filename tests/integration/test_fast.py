"""FAST (XEP-0484) against the real server with a raw client that counts
round trips: the first login (SASL2 SCRAM-SHA-256 + Bind2 + SM, asking
for a token) takes three, every later one (HT-SHA-256-EXPR with the
tls-exporter channel binding, + Bind2 + SM, or + an inline <resume/>)
takes one. ``chatbxctl fast revoke`` ends a device's token logins.

A round trip here is one flight of client writes that waits for the
server's answer, counted from the end of the TLS handshake (direct TLS,
XEP-0368). The one-round-trip login pipelines the stream header and the
<authenticate/> in one write (XEP-0484 §1: "fully authenticated stream
establishment within a single round-trip").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import xml.etree.ElementTree as ET
from typing import Optional

import pytest

from rawclient import NS_CLIENT, NS_STREAMS, RawClient, q

pytestmark = pytest.mark.integration

NS2, BIND2, FAST, SM = "urn:xmpp:sasl:2", "urn:xmpp:bind:0", "urn:xmpp:fast:0", "urn:xmpp:sm:3"
UA = "8a2c7b2e-5d41-4b1e-9a55-0f6c3b1d2e77"
AGENT = f"<user-agent id='{UA}'><software>rawclient</software><device>test</device></user-agent>"


class CountingClient(RawClient):
    """A RawClient that counts round trips: client flights answered by the server."""

    def __init__(self, *args, **kwargs) -> None:
        self.round_trips = 0
        self._sent_since_read = False
        super().__init__(*args, **kwargs)

    def send(self, data: bytes | str) -> None:
        self._sent_since_read = True
        super().send(data)

    def _recv(self, deadline: float) -> bytes:
        if self._sent_since_read:
            self.round_trips += 1  # this read waits on the answer to a flight
            self._sent_since_read = False
        return super()._recv(deadline)


def connect(server) -> CountingClient:
    client = CountingClient(server.c2s_tls_port, direct_tls=True)
    client.parser = ET.XMLPullParser(events=("start", "end"))
    client.depth = 0
    return client


HEADER = ("<?xml version='1.0'?><stream:stream to='localhost' from='alice@localhost' "
          f"xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' version='1.0'>")


def scram_first_login(server) -> tuple[CountingClient, ET.Element]:
    """SASL2 SCRAM-SHA-256 with Bind2 + resumable SM and a token request."""
    client = connect(server)
    client.send(HEADER)
    features = client.expect(q(NS_STREAMS, "features"))
    fast = features.find(f"{q(NS2, 'authentication')}/{q(NS2, 'inline')}/{q(FAST, 'fast')}")
    assert fast is not None and "HT-SHA-256-EXPR" in [m.text for m in fast], ET.tostring(features)
    nonce = base64.b64encode(os.urandom(12)).decode()
    first_bare = f"n=alice,r={nonce}"
    client.send(f"<authenticate xmlns='{NS2}' mechanism='SCRAM-SHA-256'><initial-response>"
                f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</initial-response>"
                f"{AGENT}<request-token xmlns='{FAST}' mechanism='HT-SHA-256-EXPR'/>"
                f"<bind xmlns='{BIND2}'><tag>Raw</tag><enable xmlns='{SM}' resume='true'/></bind>"
                f"</authenticate>")
    challenge = client.expect(q(NS2, "challenge"))
    server_first = base64.b64decode(challenge.text or "").decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", server.users["alice@localhost"].encode(),
                                 base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    client.send(f"<response xmlns='{NS2}'>{base64.b64encode(final.encode()).decode()}</response>")
    return client, client.expect(q(NS2, "success"))


def fast_login(server, token: str, inner: str) -> tuple[CountingClient, ET.Element]:
    """One write: stream header + <authenticate/> with HT-SHA-256-EXPR; the
    server's proof is checked."""
    client = connect(server)
    # The channel binding exists once TLS is up: before the first write.
    cb = client.channel_binding("tls-exporter")
    proof = hmac.digest(token.encode(), b"Initiator" + cb, "sha256")
    initial = base64.b64encode(b"alice\0" + proof).decode()
    client.send(HEADER + f"<authenticate xmlns='{NS2}' mechanism='HT-SHA-256-EXPR'>"
                f"<initial-response>{initial}</initial-response>{AGENT}"
                f"<fast xmlns='{FAST}'/>{inner}</authenticate>")
    client.expect(q(NS_STREAMS, "features"))
    answer = client.next()
    if answer.tag == q(NS2, "success"):
        data = base64.b64decode(answer.findtext(q(NS2, "additional-data")) or "")
        assert data == hmac.digest(token.encode(), b"Responder" + cb, "sha256"), "server proof"
    return client, answer


def drop(client: RawClient) -> None:
    """The network goes away: RST, no </stream:stream>."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def ping(client: RawClient, jid: str) -> None:
    client.send("<iq type='get' id='fastping'><ping xmlns='urn:xmpp:ping'/></iq>")
    pong = client.wait_for(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == "fastping")
    assert pong.get("type") == "result" and pong.get("to") == jid


def token_of(success: ET.Element) -> Optional[str]:
    element = success.find(q(FAST, "token"))
    return element.get("token") if element is not None else None


def test_fast_login_and_resumption_take_one_round_trip(chatbx_server):
    """First login: 3 round trips (features, SCRAM challenge, success) and a
    token. Then a FAST + Bind2 + SM login: 1 round trip, bound with SM on.
    The phone drops; a FAST + inline <resume/> login: 1 round trip, the
    session is resumed and the message sent meanwhile arrives. Revoking
    the device with chatbxctl makes the next FAST login fail."""
    server = chatbx_server()
    first, success = scram_first_login(server)
    assert first.round_trips == 3
    token = token_of(success)
    assert token, ET.tostring(success)
    jid = success.findtext(q(NS2, "authorization-identifier")) or ""
    assert jid.startswith("alice@localhost/Raw.")
    first.close()

    client, success = fast_login(
        server, token, f"<bind xmlns='{BIND2}'><tag>Raw</tag><enable xmlns='{SM}' resume='true'/></bind>")
    assert success.tag == q(NS2, "success"), ET.tostring(success)
    assert client.round_trips == 1
    assert success.findtext(q(NS2, "authorization-identifier")) == jid  # stable per device
    enabled = success.find(f"{q(BIND2, 'bound')}/{q(SM, 'enabled')}")
    assert enabled is not None and enabled.get("resume") == "true"
    previd = enabled.get("id")
    client.send("<presence/>")
    ping(client, jid)

    # The phone loses its network; Bob writes meanwhile.
    drop(client)
    bob = RawClient(server.c2s_tls_port, direct_tls=True)
    bob.open_stream()
    assert bob.scram("SCRAM-SHA-256", "bob", server.users["bob@localhost"]).tag.endswith("success")
    bob.bind("pc")
    bob.message(jid, "while you were away")
    bob.send("<iq type='get' id='b1'><ping xmlns='urn:xmpp:ping'/></iq>")
    bob.wait_for(lambda e: e.get("id") == "b1")

    again, success = fast_login(server, token, f"<resume xmlns='{SM}' previd='{previd}' h='2'/>"
                                               f"<bind xmlns='{BIND2}'><tag>Raw</tag></bind>")
    assert success.tag == q(NS2, "success"), ET.tostring(success)
    resumed = success.find(q(SM, "resumed"))
    assert resumed is not None and resumed.get("previd") == previd, ET.tostring(success)
    assert success.find(q(BIND2, "bound")) is None
    assert success.findtext(q(NS2, "authorization-identifier")) == jid
    again.wait_message("while you were away")
    assert again.round_trips == 1
    again.close()
    bob.close()

    server.ctl("fast", "revoke", "alice@localhost", "--device", UA)
    refused, answer = fast_login(server, token, "")
    assert answer.tag == q(NS2, "failure"), ET.tostring(answer)
    refused.close()
