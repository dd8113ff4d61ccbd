"""What a fan-out costs on the wire side: ``serializer.Addressed`` copies
(one serialization per broadcast, each copy's bytes the shared text with
its own 'to') and TCP_NODELAY on client and server connections."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from chatbx_server.c2s import stream as c2s
from chatbx_server.s2s.incoming import S2SInStream
from chatbx_server.xmpp.serializer import CLIENT_STREAMS, SERVER_STREAMS, Addressed
from chatbx_server.xmpp.stanzas import parse_stanza
from chatbx_server.xmpp.transport import set_no_delay
from tests.unit.fakes import make_server
from tests.unit.s2s_helpers import PeerTransport, make_manager

MESSAGE = ("<message xmlns='jabber:client' type='groupchat' from='room@conference.localhost/A&amp;B'"
           " id='m1'><body>a &lt; b &amp; &quot;c&quot;</body>"
           "<stanza-id xmlns='urn:xmpp:sid:0' id='x' by='room@conference.localhost'/></message>")


def test_copies_serialize_as_the_serializer_would() -> None:
    """Each copy's recorded bytes are exactly what serializing it gives,
    'to' escaped; presence without children ("/>") too."""
    copies = Addressed(parse_stanza(MESSAGE))
    for to in ("bob@localhost/phone", "o'neil@localhost/a&b<c>"):
        copy = copies.copy(to)
        assert copy["to"] == to
        assert CLIENT_STREAMS.encode(copy) == CLIENT_STREAMS.serialize(copy).encode()
        assert "_wire" in copy.__dict__  # taken from the shared text, not walked
    empty = Addressed(parse_stanza("<presence xmlns='jabber:client' from='r@c.localhost/n'/>"))
    copy = empty.copy("bob@localhost/x")
    assert CLIENT_STREAMS.encode(copy) == b"<presence from='r@c.localhost/n' to='bob@localhost/x'/>"


def test_changed_copy_and_other_streams_serialize_afresh() -> None:
    """A copy a handler changes later (a child added, 'to' rewritten) is
    serialized again; a server stream does not use the client bytes; the
    other copies keep theirs."""
    copies = Addressed(parse_stanza(MESSAGE))
    first, second = copies.copy("a@localhost/1"), copies.copy("b@localhost/2")
    first.addElement(("urn:xmpp:delay", "delay"))["stamp"] = "2026-01-01T00:00:00Z"
    assert b"urn:xmpp:delay" in CLIENT_STREAMS.encode(first)
    assert b"urn:xmpp:delay" not in CLIENT_STREAMS.encode(second)
    second["to"] = "c@localhost/3"
    assert b"c@localhost/3" in CLIENT_STREAMS.encode(second)
    third = copies.copy("d@remote.example/x")
    assert SERVER_STREAMS.encode(third) == SERVER_STREAMS.serialize(third).encode()


class NoDelayTransport(StringTransport):
    """A StringTransport with a TCP socket's setTcpNoDelay."""

    nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        self.nodelay = enabled


def test_client_connections_set_nodelay() -> None:
    """An accepted c2s connection turns Nagle's algorithm off."""
    server = make_server()
    stream = c2s.C2SStream(c2s.C2SFactory(server, tls=None, direct_tls=True))
    transport = NoDelayTransport()
    stream.makeConnection(transport)
    assert transport.nodelay


def test_server_connections_set_nodelay() -> None:
    """s2s streams (incoming here; outgoing share connectionMade) do too."""
    class Peer(PeerTransport):
        nodelay = False

        def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802
            self.nodelay = enabled

    _, manager = make_manager()
    transport = Peer()
    S2SInStream(manager).makeConnection(transport)
    assert transport.nodelay


def test_nodelay_passes_through_tls() -> None:
    """On a direct-TLS connection the protocol's transport is the TLS
    wrapper: the option reaches the TCP transport under it; a transport
    without a socket is left alone."""
    from OpenSSL import SSL
    from twisted.internet.ssl import CertificateOptions

    class Options(CertificateOptions):
        def getContext(self) -> Any:  # noqa: N802
            return SSL.Context(SSL.TLS_METHOD)

    wrapped = TLSMemoryBIOFactory(Options(), False, Factory.forProtocol(Protocol))
    tls = wrapped.buildProtocol(None)
    tcp = NoDelayTransport()
    tls.makeConnection(tcp)
    assert set_no_delay(tls.wrappedProtocol.transport)
    assert tcp.nodelay
    assert not set_no_delay(StringTransport())
