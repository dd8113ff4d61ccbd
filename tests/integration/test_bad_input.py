"""Stream-level bad input on the real server (RFC 6120 §4.9, §8.1.2.1, §11.1).

Each attack comes from its own connection (the raw client: slixmpp will
not send broken XML). In every case the attacker gets the right stream
error and its stream is closed, nothing it sent is delivered, and two
sessions that were already connected keep working: one sends the other a
message after the attack.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from OpenSSL import SSL

from rawclient import NS_CLIENT, RawClient, login, q

pytestmark = pytest.mark.integration

ATTACK_BODY = "attack-payload"
MAX_STANZA = 65536  # the shared server's [limits] max_stanza_size


@pytest.fixture
def bystanders(shared_server):
    """Alice and Bob, logged in and bound before the attack."""
    port = shared_server.c2s_port
    alice = login(port, "alice", "alice-pw", resource="by")
    bob = login(port, "bob", "bob-pw", resource="by")
    try:
        yield alice, bob
    finally:
        alice.close()
        bob.close()


def _check_bystanders(alice: RawClient, bob: RawClient) -> None:
    """Alice can still message Bob, and nothing from the attacker reached him."""
    alice.message(bob.jid, "still working")
    seen = []
    bob.wait_for(lambda e: e.tag == q(NS_CLIENT, "message") and not seen.append(e)
                 and e.findtext(q(NS_CLIENT, "body")) == "still working")
    leaked = [ET.tostring(e) for e in seen if e.findtext(q(NS_CLIENT, "body")) == ATTACK_BODY]
    assert not leaked, leaked
    # and Bob can answer
    bob.message(alice.jid, "me too")
    alice.wait_message("me too")


def _send_quietly(client: RawClient, data: bytes | str) -> None:
    """Send, tolerating the server closing the connection mid-write."""
    try:
        client.send(data)
    except (OSError, SSL.Error):
        pass


def _attacker(server, stage: str) -> RawClient:
    """A connection brought to ``stage``: 'header' (stream open, no TLS),
    'tls' (after STARTTLS, not authenticated) or 'bound' (as carol)."""
    if stage == "bound":
        return login(server.c2s_port, "carol", "carol-pw", resource="attacker")
    client = RawClient(server.c2s_port)
    client.open_stream()
    if stage == "tls":
        client.starttls()
    return client


def _expect_error(client: RawClient, condition: str) -> None:
    try:
        assert client.stream_error() == condition
        client.assert_closed()
    finally:
        client.close()


@pytest.mark.parametrize("stage", ["header", "bound"])
@pytest.mark.parametrize("data", [
    pytest.param(b"<message to='bob@localhost/by'><body>attack-payload</message>", id="mismatched-tag"),
    pytest.param(b"<message to='bob@localhost/by' a='1' a='2'><body>x</body></message>", id="duplicate-attr"),
    pytest.param(b"<message><body>\xff\xfe</body></message>", id="bad-utf8"),
])
def test_not_well_formed(shared_server, bystanders, stage, data):
    """XML that is not well-formed closes the stream with not-well-formed,
    before or after authentication."""
    client = _attacker(shared_server, stage)
    _send_quietly(client, data)
    _expect_error(client, "not-well-formed")
    _check_bystanders(*bystanders)


@pytest.mark.parametrize("stage", ["header", "bound"])
@pytest.mark.parametrize("data", [
    pytest.param("<!-- a comment -->", id="comment"),
    pytest.param("<?php echo 1; ?>", id="processing-instruction"),
    pytest.param("<message to='bob@localhost/by'><body>attack<!-- x -->-payload</body></message>",
                 id="comment-in-stanza"),
])
def test_restricted_xml_in_stream(shared_server, bystanders, stage, data):
    """A comment or processing instruction inside the stream is
    restricted XML (RFC 6120 §11.1): stream error restricted-xml."""
    client = _attacker(shared_server, stage)
    _send_quietly(client, data)
    _expect_error(client, "restricted-xml")
    _check_bystanders(*bystanders)


def test_restricted_xml_dtd(shared_server, bystanders):
    """A DTD with an entity declaration before the stream header (the
    billion-laughs shape) gets restricted-xml; nothing is expanded."""
    client = RawClient(shared_server.c2s_port)
    _send_quietly(client, "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY lol 'lol'>"
                          "<!ENTITY lol2 '&lol;&lol;&lol;&lol;'>]>"
                          "<stream:stream to='localhost' xmlns='jabber:client' "
                          "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    client.parser = ET.XMLPullParser(events=("start", "end"))  # read the server's reply
    _expect_error(client, "restricted-xml")
    _check_bystanders(*bystanders)


@pytest.mark.parametrize("stage", ["tls", "bound"])
def test_stanza_too_large(shared_server, bystanders, stage):
    """A stanza bigger than max_stanza_size closes the stream with
    policy-violation and is not delivered."""
    client = _attacker(shared_server, stage)
    padding = "x" * (MAX_STANZA + 1024)
    _send_quietly(client, f"<message to='bob@localhost/by'><body>{ATTACK_BODY}</body>"
                          f"<junk xmlns='urn:example'>{padding}</junk></message>")
    _expect_error(client, "policy-violation")
    _check_bystanders(*bystanders)


def test_self_closing_stanza_too_large(shared_server, bystanders):
    """The size limit also holds for a self-closing stanza whose size is
    all in one huge attribute (expat buffers the whole start tag)."""
    client = _attacker(shared_server, "bound")
    padding = "x" * (MAX_STANZA + 1024)
    _send_quietly(client, f"<message to='bob@localhost/by' junk='{padding}'/>")
    _expect_error(client, "policy-violation")
    _check_bystanders(*bystanders)


def test_stanza_just_under_limit_is_delivered(shared_server, bystanders):
    """The limit is not too eager: a large stanza under max_stanza_size is
    delivered normally."""
    alice, bob = bystanders
    body = "y" * (MAX_STANZA - 2048)
    alice.message(bob.jid, body)
    got = bob.wait_for(lambda e: e.tag == q(NS_CLIENT, "message"))
    assert got.findtext(q(NS_CLIENT, "body")) == body


@pytest.mark.parametrize("xmlns,stream_ns", [
    pytest.param("jabber:client", "http://etherx.jabber.org/wrong", id="stream-namespace"),
    pytest.param("jabber:server", "http://etherx.jabber.org/streams", id="content-namespace"),
    pytest.param("urn:example:nonsense", "http://etherx.jabber.org/streams", id="unknown-namespace"),
])
def test_invalid_namespace(shared_server, bystanders, xmlns, stream_ns):
    """A stream header in the wrong namespace gets invalid-namespace."""
    client = RawClient(shared_server.c2s_port)
    client.open_stream(xmlns=xmlns, stream_ns=stream_ns, read_features=False)
    _expect_error(client, "invalid-namespace")
    _check_bystanders(*bystanders)


def test_stanza_in_wrong_namespace_after_bind(shared_server, bystanders):
    """A bound session sending a <message/> qualified by another namespace
    gets invalid-namespace."""
    client = _attacker(shared_server, "bound")
    _send_quietly(client, f"<message xmlns='jabber:server' to='bob@localhost/by'><body>{ATTACK_BODY}</body></message>")
    _expect_error(client, "invalid-namespace")
    _check_bystanders(*bystanders)


def test_message_before_authentication(shared_server, bystanders):
    """A message after STARTTLS but before SASL gets not-authorized
    (RFC 6120 §4.9.3.12) and is not delivered."""
    client = _attacker(shared_server, "tls")
    _send_quietly(client, f"<message to='bob@localhost/by'><body>{ATTACK_BODY}</body></message>")
    _expect_error(client, "not-authorized")
    _check_bystanders(*bystanders)


def test_message_before_starttls(shared_server, bystanders):
    """A message before STARTTLS (TLS is required) is refused with a stream
    error — not-authorized or policy-violation — and not delivered."""
    client = _attacker(shared_server, "header")
    _send_quietly(client, f"<message to='bob@localhost/by'><body>{ATTACK_BODY}</body></message>")
    try:
        assert client.stream_error() in ("not-authorized", "policy-violation")
        client.assert_closed()
    finally:
        client.close()
    _check_bystanders(*bystanders)


def test_message_after_auth_before_bind(shared_server, bystanders):
    """A message after SASL but before resource binding is refused (only
    binding is allowed, RFC 6120 §7.1) and not delivered."""
    client = RawClient(shared_server.c2s_port)
    client.open_stream()
    client.starttls()
    assert client.scram("SCRAM-SHA-256", "carol", "carol-pw").tag.endswith("success")
    client.open_stream()
    _send_quietly(client, f"<message to='bob@localhost/by'><body>{ATTACK_BODY}</body></message>")
    try:
        assert client.stream_error() == "not-authorized"
        client.assert_closed()
    finally:
        client.close()
    _check_bystanders(*bystanders)


@pytest.mark.parametrize("sender", [
    "alice@localhost/by",  # another account's full JID
    "alice@localhost",  # another account's bare JID
    "carol@localhost/someone-else",  # own account, a resource it did not bind
    "localhost",  # the server
    "@@bad jid@@",  # not a JID
])
def test_invalid_from(shared_server, bystanders, sender):
    """A stanza whose 'from' the session does not own gets invalid-from
    (RFC 6120 §8.1.2.1) and is not delivered."""
    client = _attacker(shared_server, "bound")
    _send_quietly(client, f"<message from='{sender}' to='bob@localhost/by'><body>{ATTACK_BODY}</body></message>")
    _expect_error(client, "invalid-from")
    _check_bystanders(*bystanders)


@pytest.mark.parametrize("sender", ["carol@localhost/attacker", "carol@localhost"])
def test_own_from_is_accepted(shared_server, bystanders, sender):
    """The checks are not too strict: 'from' set to the session's own full
    or bare JID is allowed, and the stanza arrives stamped with the full JID."""
    alice, bob = bystanders
    client = _attacker(shared_server, "bound")
    try:
        client.send(f"<message from='{sender}' to='{bob.jid}'><body>from carol</body></message>")
        got = bob.wait_message("from carol")
        assert got.get("from") == "carol@localhost/attacker"
    finally:
        client.close()
