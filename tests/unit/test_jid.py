"""JID preparation with PRECIS (RFC 7622, RFC 8265) and the parse cache."""

from __future__ import annotations

import pytest

from chatbx_server.xmpp.jid import JID, InvalidJID, parse_or_none


@pytest.mark.parametrize("text,user,host,resource", [
    ("Alice@Example.COM/Res", "alice", "example.com", "Res"),
    ("alice@example.com", "alice", "example.com", None),
    ("example.com", None, "example.com", None),
    ("example.com/res", None, "example.com", "res"),
    ("\uff21lice@x", "alice", "x", None),              # fullwidth A: width-mapped
    ("\u00c9lise@x", "\u00e9lise", "x", None),          # non-ASCII case folding
    ("E\u0301lise@x", "\u00e9lise", "x", None),         # NFC
    ("a@localhost.", "a", "localhost", None),           # trailing dot
    ("a@b.c/d@e/f", "a", "b.c", "d@e/f"),              # resource is everything after the first '/'
    ("a@x/ spaced res ", "a", "x", " spaced res "),     # OpaqueString keeps spaces
    ("a@x/\u00e9", "a", "x", "\u00e9"),
    ("a@127.0.0.1", "a", "127.0.0.1", None),
    ("a@[::1]/r", "a", "[::1]", "r"),
])
def test_valid(text, user, host, resource):
    """Valid JIDs are split at the right places and prepared."""
    jid = JID.parse(text)
    assert (jid.user, jid.host, jid.resource) == (user, host, resource)


@pytest.mark.parametrize("text", [
    "", "@x", "a@", "a@/r", "a@x/", "/r", "a b@x", "a@b@c", "a\"b@x", "a'b@x", "a<b@x",
    "a:b@x", "a&b@x", "\ufb01@x",                      # ligature: compatibility char
    "a\u200d@x", "a@x/\u200d", "a@x/\u0007",         # ZWJ, control character
    "a@exa mple.com", "a@exa<mple", "a@x..y", "a@" + "l" * 64 + ".com",
    "a@.",
])
def test_invalid(text):
    """Empty parts, forbidden characters and bad domains raise InvalidJID."""
    with pytest.raises(InvalidJID):
        JID.parse(text)


def test_too_long_parts():
    """Each part is at most 1023 octets (RFC 7622 §3); the whole at most 3071 characters."""
    assert JID.parse("a" * 1023 + "@x").user == "a" * 1023
    with pytest.raises(InvalidJID):
        JID.parse("a" * 1024 + "@x")
    with pytest.raises(InvalidJID):
        JID.parse("\u00e9" * 600 + "@x")  # 1200 octets in UTF-8
    with pytest.raises(InvalidJID):
        JID.parse("a@x/" + "r" * 1024)
    with pytest.raises(InvalidJID):
        JID.parse("a@" + ".".join(["d" * 60] * 20))  # domain over 1023 octets
    with pytest.raises(InvalidJID):
        JID.parse("x" * 3072)


def test_idna_domain():
    """A non-ASCII domain is prepared and compares equal to its ACE form."""
    assert JID.parse("a@B\u00fccher.Example") == JID.parse("a@xn--bcher-kva.example")


def test_idna2008_sharp_s():
    """IDNA2008 keeps 'ß' (xn--strae-oqa), so straße.de and strasse.de are different domains."""
    assert JID.parse("a@stra\u00dfe.de") != JID.parse("a@strasse.de")
    assert JID.parse("a@stra\u00dfe.de").host == "xn--strae-oqa.de"


def test_forms_and_equality():
    """bare/full/str, bare_jid and with_resource; equality and hashing by full form."""
    jid = JID.parse("Alice@Example.com/Phone")
    assert jid.bare == "alice@example.com"
    assert jid.full == str(jid) == "alice@example.com/Phone"
    assert jid.bare_jid() == JID.parse("alice@example.com")
    assert jid.bare_jid().bare_jid() is jid.bare_jid()
    assert jid.with_resource("Desk").full == "alice@example.com/Desk"
    assert {jid, JID.parse("alice@EXAMPLE.com/Phone")} == {jid}
    assert jid != JID.parse("alice@example.com/phone")  # resources are case-sensitive
    assert jid != "alice@example.com/Phone"


def test_cached():
    """Parsing the same text twice gives the same object (the router's hot path)."""
    assert JID.parse("cache@example.com/r") is JID.parse("cache@example.com/r")


def test_parse_or_none():
    """parse_or_none turns missing and malformed JIDs into None."""
    assert parse_or_none(None) is None
    assert parse_or_none("@bad") is None
    assert parse_or_none("a@b").bare == "a@b"
