"""Bounds on incoming s2s connections: ``[s2s] max_incoming`` in all and
``max_unauthenticated`` not yet authenticated (besides the per-address
limit); a refused connection is dropped at once, and a slot frees when a
stream authenticates or closes."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone

from chatbx_server.config import ConfigError
from chatbx_server.s2s.incoming import S2SInStream

from tests.unit.fakes import make_server
from tests.unit.s2s_helpers import PeerTransport, make_manager
from tests.unit.test_s2s_incoming import HEAD, feed

_next_ip = [0]


def connect_from_new_ip(manager: Any) -> tuple[S2SInStream, PeerTransport]:
    """A connection from an address of its own (the per-address limit stays out of the way)."""
    _next_ip[0] += 1
    stream = S2SInStream(manager)
    transport = PeerTransport()
    transport.peerAddress = IPv4Address("TCP", f"198.51.100.{_next_ip[0] % 250 + 1}", 40000)
    stream.makeConnection(transport)
    return stream, transport


def refused(transport: PeerTransport) -> bool:
    return transport.disconnecting and transport.value() == b""


def lose(stream: S2SInStream) -> None:
    stream.connectionLost(Failure(ConnectionDone()))


def test_total_incoming_is_bounded() -> None:
    """max_incoming = 2: a third connection is refused; once one closes, a new one is accepted."""
    server, manager = make_manager("[s2s]\nmax_incoming = 2\n")
    first, _ = connect_from_new_ip(manager)
    second, t2 = connect_from_new_ip(manager)
    assert not t2.disconnecting and len(manager.incoming) == 2
    third, t3 = connect_from_new_ip(manager)
    assert refused(t3) and third not in manager.incoming
    lose(first)
    fourth, t4 = connect_from_new_ip(manager)
    assert not t4.disconnecting and fourth in manager.incoming


def _authenticate(manager: Any, stream: S2SInStream) -> None:
    """TLS, then dialback that the authoritative server confirms."""
    feed(stream, HEAD)
    feed(stream, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    feed(stream, HEAD)
    manager.request_verify = lambda *a: defer.succeed(True)
    feed(stream, "<db:result from='b.example' to='a.example'>KEY</db:result>")
    assert stream.authenticated == {"b.example"}


def test_unauthenticated_are_bounded() -> None:
    """max_unauthenticated = 2: a third connection waiting to authenticate is
    refused; a stream that authenticates frees its slot, as does one that closes."""
    server, manager = make_manager("[s2s]\nmax_unauthenticated = 2\n")
    first, _ = connect_from_new_ip(manager)
    second, _ = connect_from_new_ip(manager)
    assert manager.unauthenticated == 2
    third, t3 = connect_from_new_ip(manager)
    assert refused(t3)
    _authenticate(manager, first)
    assert manager.unauthenticated == 1 and manager.status()["unauthenticated"] == 1
    fourth, t4 = connect_from_new_ip(manager)
    assert not t4.disconnecting and manager.unauthenticated == 2
    lose(second)
    lose(first)  # authenticated: its close frees no unauthenticated slot twice
    assert manager.unauthenticated == 1
    fifth, t5 = connect_from_new_ip(manager)
    assert not t5.disconnecting and manager.unauthenticated == 2


def test_auth_timeout_frees_the_slot() -> None:
    """An unauthenticated stream is closed after auth_timeout, which frees its slot."""
    server, manager = make_manager("[s2s]\nmax_unauthenticated = 1\nauth_timeout = 5\n")
    first, t1 = connect_from_new_ip(manager)
    feed(first, HEAD)
    server.clock.advance(5)
    assert t1.closed_with == ("connection-timeout", "authentication took too long")
    lose(first)
    second, t2 = connect_from_new_ip(manager)
    assert not t2.disconnecting


@pytest.mark.parametrize("key", ["max_incoming", "max_unauthenticated"])
def test_limits_must_be_positive(key: str) -> None:
    """A limit of 0 is a config error naming the key."""
    with pytest.raises(ConfigError) as err:
        make_server(config_text=f"[s2s]\n{key} = 0\n")
    assert f"s2s.{key}" in str(err.value)
