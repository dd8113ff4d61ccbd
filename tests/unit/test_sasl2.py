"""XEP-0388 SASL2 and XEP-0386 Bind2 on the client stream: the same
mechanisms, no restart, bind and inline SM/CSI in the one <success/>, a
stable resource per user-agent id."""

from __future__ import annotations

import base64

import pytest

from chatbx_server.c2s import stream as c2s
from chatbx_server.c2s.sasl2 import BIND2, NS, bind2_resource, clean_tag
from chatbx_server.xmpp import ns
from tests.unit.fakes import create_user, make_server
from tests.unit.test_c2s_stream import Client, tls_factory  # noqa: F401 (fixture)
from tests.unit.test_scram import client_final

SM = "urn:xmpp:sm:3"
CSI = "urn:xmpp:csi:0"
UA = "d4565fa7-4d72-4749-b3d3-740edbf87770"


@pytest.fixture
def server():
    srv = make_server(modules=["message", "roster", "presence", "offline", "smacks", "csi"],
                      config_text="[limits]\nauth_failure_delay = 2.0\n")
    create_user(srv, "alice@localhost", "pencil")
    return srv


@pytest.fixture
def client(tls_factory):  # noqa: F811
    c = Client(tls_factory)
    c.header()
    return c


def plain(user: str = "alice", password: str = "pencil") -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def authenticate(client: Client, inner: str, mechanism: str = "PLAIN", initial: str = "") -> None:
    initial_el = f"<initial-response>{initial}</initial-response>" if initial else ""
    client.send(f"<authenticate xmlns='{NS}' mechanism='{mechanism}'>{initial_el}{inner}</authenticate>")


BIND_SM_CSI = (f"<user-agent id='{UA}'><software>Test</software></user-agent>"
               f"<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/>"
               f"<inactive xmlns='{CSI}'/></bind>")


def test_resource_is_stable_per_device():
    """The same account and user-agent id give the same resource; no id, a random one."""
    assert bind2_resource("a@x", "App", "id1") == bind2_resource("a@x", "App", "id1")
    assert bind2_resource("a@x", "App", "id1") != bind2_resource("b@x", "App", "id1")
    assert bind2_resource("a@x", None, None) != bind2_resource("a@x", None, None)
    assert clean_tag(" My App/1 ") == "MyApp1"


def test_sasl2_is_offered_with_bind2_inline_features(client):
    """The pre-auth features carry <authentication/> with the SASL
    mechanisms and the Bind2 inline features of the loaded modules."""
    features = client.features()
    auth = [e for e in features.elements() if e.uri == NS and e.name == "authentication"][0]
    mechs = [str(m) for m in auth.elements() if m.name == "mechanism"]
    assert "SCRAM-SHA-256" in mechs and "PLAIN" in mechs
    bind = auth.inline.bind
    assert bind.uri == BIND2
    assert {f["var"] for f in bind.inline.elements()} == {SM, CSI}


def test_one_exchange_authenticates_binds_and_enables_sm_and_csi(client, server):
    """PLAIN via SASL2 with Bind2: <success/> names the full JID, <bound/>
    holds <enabled/>; the stream is bound without a restart, CSI is
    inactive, and the same device gets the same resource next time."""
    client.features()
    authenticate(client, BIND_SM_CSI, initial=plain())
    success = client.one()
    assert (success.uri, success.name) == (NS, "success"), success.toXml()
    jid = str([e for e in success.elements() if e.name == "authorization-identifier"][0])
    assert jid.startswith("alice@localhost/Phone.")
    bound = [e for e in success.elements() if e.name == "bound"][0]
    enabled = [e for e in bound.elements() if e.uri == SM and e.name == "enabled"][0]
    assert enabled["resume"] == "true"
    assert client.proto.state == c2s.BOUND
    session = server.sessions.get("alice@localhost", jid.split("/")[1])
    assert session is not None and session.sm is not None and session.csi is not None
    # Stanzas flow on the same stream.
    client.send(f"<iq type='get' id='p1'><ping xmlns='{ns.PING}'/></iq>")

    again = Client(client.proto.factory, peer="10.0.0.2")
    again.header()
    again.features()
    authenticate(again, BIND_SM_CSI, initial=plain())
    jid2 = [str(e) for e in again.one().elements() if e.name == "authorization-identifier"][0]
    assert jid2 == jid


def test_sasl2_scram_with_challenge_and_failure(client, server):
    """SCRAM through SASL2 wrappers: a <challenge/>, and a wrong proof
    ends in a SASL2 <failure/> with the RFC 6120 condition (after the
    failed-login delay)."""
    client.features()
    bare = "n=alice,r=cnonce"
    authenticate(client, "", mechanism="SCRAM-SHA-256",
                 initial=base64.b64encode(("n,," + bare).encode()).decode())
    challenge = client.one()
    assert (challenge.uri, challenge.name) == (NS, "challenge")
    server_first = base64.b64decode(str(challenge))
    final = client_final("SHA-256", "wrong", bare, server_first, "n,,", b"")
    client.send(f"<response xmlns='{NS}'>{base64.b64encode(final).decode()}</response>")
    server.clock.advance(10)
    failure = client.one()
    assert (failure.uri, failure.name) == (NS, "failure")
    assert failure.firstChildElement().name == "not-authorized"
    assert client.proto.state == c2s.AUTH_NEEDED


def test_sasl2_scram_success_carries_additional_data(client, server):
    """A right SCRAM proof: <success/> with <additional-data/> (v=...) and
    the bare JID when no Bind2 was asked, then bind features on the same stream."""
    client.features()
    bare = "n=alice,r=cnonce"
    authenticate(client, "", mechanism="SCRAM-SHA-256",
                 initial=base64.b64encode(("n,," + bare).encode()).decode())
    server_first = base64.b64decode(str(client.one()))
    final = client_final("SHA-256", "pencil", bare, server_first, "n,,", b"")
    client.send(f"<response xmlns='{NS}'>{base64.b64encode(final).decode()}</response>")
    got = client.received()
    success = [e for e in got if e.name == "success"][0]
    data = [e for e in success.elements() if e.name == "additional-data"][0]
    assert base64.b64decode(str(data)).startswith(b"v=")
    assert str([e for e in success.elements() if e.name == "authorization-identifier"][0]) == "alice@localhost"
    features = [e for e in got if e.name == "features"][0]
    assert features.bind is not None
    assert client.proto.state == c2s.BIND_NEEDED
