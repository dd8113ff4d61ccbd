"""Pure parts of federation: dialback keys (XEP-0185), SRV order (RFC 2782,
XEP-0368), the resolver's static routes and TTL cache, and the s2s parser's
namespace rules (RFC 6120 §4.8.3)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns
from twisted.words.xish import domish

from chatbx_server import _compat  # noqa: F401
from chatbx_server.s2s.dialback import check_key, domain_or_none, make_key
from chatbx_server.s2s.dns import SRV, Resolver, Target, merge_targets, order_srv
from chatbx_server.s2s.stream import ServerElementStream, serialize
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StreamError, parse_stanza


def test_key_is_xep0185_and_wokkels() -> None:
    """The key is XEP-0185's HMAC-SHA256 of SHA-256(secret), identical to
    wokkel.server.generateKey for the same (hex) secret."""
    from wokkel.server import generateKey

    secret = bytes(range(32)).hex()
    key = make_key(secret.encode(), "b.example", "a.example", "D60000229F")
    assert key == generateKey(secret, "b.example", "a.example", "D60000229F")
    assert len(key) == 64


def test_check_key_accepts_only_the_same_inputs() -> None:
    """A key verifies only for the receiving/originating/stream id it was made for."""
    secret = b"s" * 32
    key = make_key(secret, "b.example", "a.example", "id1")
    assert check_key(secret, "b.example", "a.example", "id1", key)
    assert check_key(secret, "b.example", "a.example", "id1", f" {key}\n")
    assert not check_key(secret, "b.example", "a.example", "id2", key)
    assert not check_key(secret, "c.example", "a.example", "id1", key)
    assert not check_key(b"t" * 32, "b.example", "a.example", "id1", key)
    assert not check_key(secret, "b.example", "a.example", "id1", "ünicode")


def test_domain_or_none() -> None:
    """Only bare, valid domains are accepted from dialback/stream attributes."""
    assert domain_or_none("B.Example") == "b.example"
    assert domain_or_none("user@b.example") is None
    assert domain_or_none("b.example/r") is None
    assert domain_or_none("") is None and domain_or_none(None) is None


def test_srv_priority_then_weight() -> None:
    """Lower priority first; inside a priority the weighted pick follows the
    running sums (RFC 2782)."""
    records = [SRV(20, 0, 1, "late"), SRV(10, 10, 2, "light"), SRV(10, 90, 3, "heavy")]
    # rand=0.5 -> pick 50 of 100: 'light' (sum 10) is skipped, 'heavy' (100) taken.
    assert [r.target for r in order_srv(records, lambda: 0.5)] == ["heavy", "light", "late"]
    assert [r.target for r in order_srv(records, lambda: 0.05)] == ["light", "heavy", "late"]


def test_merge_direct_tls_first_and_fallback() -> None:
    """XEP-0368: both lookups merged by priority, direct TLS first at equal
    priority; no records: the domain on 5269; a lone "." disables a variant."""
    direct = [SRV(5, 0, 5270, "tls.b.example.")]
    starttls = [SRV(5, 0, 5269, "xmpp.b.example."), SRV(1, 0, 5269, "first.b.example.")]
    assert merge_targets(direct, starttls, "b.example", lambda: 0.0) == [
        Target("first.b.example", 5269, False), Target("tls.b.example", 5270, True),
        Target("xmpp.b.example", 5269, False)]
    assert merge_targets([], [], "b.example") == [Target("b.example", 5269, False)]
    assert merge_targets([SRV(0, 0, 0, ".")], starttls[:1], "b.example") == [
        Target("xmpp.b.example", 5269, False)]


def _answer(name: str, target: str, ttl: int) -> Any:
    return tdns.RRHeader(name, tdns.SRV, ttl=ttl, payload=tdns.Record_SRV(0, 0, 5269, target, ttl))


def test_resolver_static_routes_cache_and_ttl() -> None:
    """Static routes bypass DNS; answers are cached for their TTL, then asked again."""
    clock = MemoryReactorClock()
    asked: list[str] = []

    def lookup(name: str) -> Any:
        asked.append(name)
        if name.startswith("_xmpps"):
            return defer.fail(tdns.DomainError(name))
        return defer.succeed(([_answer(name, "xmpp.b.example", 60)], [], []))

    resolver = Resolver(clock, {"s.example": "tls:127.0.0.1:5999"}, cache_size=10, lookup=lookup)
    got: list[Any] = []
    resolver.resolve("s.example").addCallback(got.append)
    assert got == [[Target("127.0.0.1", 5999, True)]] and asked == []
    resolver.resolve("b.example").addCallback(got.append)
    assert got[-1] == [Target("xmpp.b.example", 5269, False)]
    assert len(asked) == 2
    resolver.resolve("b.example").addCallback(got.append)
    assert len(asked) == 2  # cached
    clock.advance(61)
    resolver.resolve("b.example").addCallback(got.append)
    assert len(asked) == 3  # the SRV answer expired; "no record" is kept longer
    clock.advance(300)
    resolver.resolve("b.example").addCallback(got.append)
    assert len(asked) == 5


def test_resolver_cache_is_bounded() -> None:
    """The cache keeps at most cache_size names."""
    resolver = Resolver(MemoryReactorClock(), cache_size=3,
                        lookup=lambda name: defer.fail(tdns.DomainError(name)))
    for i in range(10):
        resolver.resolve(f"d{i}.example")
    assert len(resolver._cache) == 3


def _parse(data: bytes) -> tuple[ServerElementStream, list[domish.Element]]:
    parser = ServerElementStream(10000, 20, 20)
    out: list[domish.Element] = []
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = out.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(data)
    return parser, out


def test_parser_maps_jabber_server_to_client() -> None:
    """Stanzas of a jabber:server stream come out as jabber:client, with their
    children, so features see one kind of stanza; the header's namespace is kept."""
    parser, out = _parse(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
                         b"<message to='a@x'><body>hi</body></message>")
    assert parser.stream_ns == ns.SERVER
    assert out[0].uri == ns.CLIENT and out[0].body.uri == ns.CLIENT


def test_parser_refuses_jabber_client_stanza() -> None:
    """A stanza declaring jabber:client inside a server stream is invalid-namespace."""
    with pytest.raises(StreamError) as exc:
        _parse(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
               b"<message xmlns='jabber:client' to='a@x'/>")
    assert exc.value.condition == "invalid-namespace"


def test_serializer_writes_no_client_namespace() -> None:
    """A stanza built in jabber:client goes out without xmlns (RFC 6120 §4.8.3)."""
    text = serialize(parse_stanza("<message to='b@y' from='a@x'><body>hi</body></message>"))
    assert "xmlns" not in text and text.startswith("<message")
