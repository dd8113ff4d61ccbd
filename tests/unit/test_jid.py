"""JID preparation with PRECIS (RFC 7622, RFC 8265) and the parse cache."""

from __future__ import annotations

import tracemalloc

import pytest

from chatbx_server.xmpp import jid as jid_module
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
    ("a@[0:0::1]", "a", "[::1]", None),                 # IPv6 in canonical form (RFC 5952)
    ("a@[2001:DB8::1]", "a", "[2001:db8::1]", None),
    ("a@[::ffff:192.0.2.1]", "a", "[::ffff:c000:201]", None),
    ("a@xn--bcher-kva.example", "a", "xn--bcher-kva.example", None),  # a valid A-label
    ("a@3com.example", "a", "3com.example", None),      # labels may start with a digit
    ("a@a-b.c0", "a", "a-b.c0", None),
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


@pytest.mark.parametrize("domain", [
    "ex!ample.com", "ex=ample.com", "ex%ample.com", "ex\tample.com", "a_b.example",
    "exa+mple.com", "ex,ample", "-ab.example", "ab-.example", "exa\u00a0mple.com",
    "b\u00fccher!.example",                              # non-ASCII domain with a bad ASCII label
    "[::1", "::1]", "[]", "[::g]", "[1.2.3.4]", "[fe80::1%eth0]", "[v1.fe]", "[::1]x",
    "999.1.1.1", "1.2.3", "01.2.3.4", "123", "1.2.3.4.5",
    "xn--zz.example", "xn--.example", "xn--abc-.example",  # not A-labels
])
def test_invalid_domainparts(domain):
    """RFC 7622 §3.2: only an IPv6 literal, an IPv4 address or LDH/IDNA2008 labels are domains."""
    with pytest.raises(InvalidJID):
        JID.parse(f"a@{domain}")
    with pytest.raises(InvalidJID):
        JID.parse(domain)


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


def test_uncached_parse_is_not_remembered():
    """cache=False (what unauthenticated peers send) prepares the JID without keeping it."""
    text = "precache@example.com/r"
    first = JID.parse(text, cache=False)
    assert first == JID.parse(text, cache=False)
    assert first is not JID.parse(text, cache=False)
    assert JID.parse(text) is not first
    assert parse_or_none("x@example.com", cache=False) == JID.parse("x@example.com")


def test_cache_memory_is_bounded():
    """Long attacker-chosen JIDs are not kept: parsing thousands costs no lasting memory."""
    resource = "r" * 1023
    domain = ".".join(["d" * 63] * 15)                  # 959 characters
    texts = [f"{i:08d}".ljust(1000, "l") + f"@{domain}/{resource}" for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            assert JID.parse(text).resource == resource
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Before the cache was bounded, each of these held ~11 KB (22 MB here).
    assert grown < 1_000_000
    assert jid_module.CACHE_SIZE * jid_module.CACHE_MAX_TEXT <= 4 * 2**20


def test_parse_or_none():
    """parse_or_none turns missing and malformed JIDs into None."""
    assert parse_or_none(None) is None
    assert parse_or_none("@bad") is None
    assert parse_or_none("a@b").bare == "a@b"



def test_unauthenticated_input_is_not_cached():
    """Stream headers and SASL usernames/authzids (before login) leave the parse cache as it was."""
    from chatbx_server.c2s.sasl import SASLExchange
    from chatbx_server.c2s.stream import C2SFactory
    from tests.unit.fakes import make_server
    from tests.unit.test_c2s_stream import Client, FakeTLS

    server = make_server(modules=[])
    size = jid_module._cached.cache_info().currsize
    for i in range(20):
        exchange = SASLExchange(server, "localhost", "PLAIN", ["PLAIN"], {})
        exchange.start(f"nobody{i}@localhost\0nobody{i}\0pw".encode()).addErrback(lambda f: None)
        exchange = SASLExchange(server, "localhost", "SCRAM-SHA-256", ["SCRAM-SHA-256"], {})
        exchange.start(f"n,,n=someone{i},r=nonce".encode()).addErrback(lambda f: None)
        client = Client(C2SFactory(server, FakeTLS(), direct_tls=True))
        client.header(to=f"LocalHost{i}.")
    assert jid_module._cached.cache_info().currsize == size
