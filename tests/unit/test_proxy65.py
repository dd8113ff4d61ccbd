"""XEP-0065 SOCKS5 Bytestreams proxy: proxy.DOMAIN (disco, streamhost,
activation) and the SOCKS5 relay over StringTransports: pairing by
DST.ADDR, nothing before activation, bandwidth, flow control, idle and
activation timeouts, connection and session limits, local users only."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatbx_server.features.proxy65 import NS_BYTESTREAMS, dst_addr
from chatbx_server.proxy.socks5 import Socks5Factory
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza

ALICE, BOB = "alice@localhost/phone", "bob@localhost/pc"
SID = "s5b-1"
DST = dst_addr(SID, ALICE, BOB)


def make(options: str = "", listen: bool = True) -> Any:
    text = '[modules]\nenabled = ["message", "disco", "proxy65"]\n'
    if options:
        text += f"[modules.proxy65]\n{options}\n"
    if listen:
        text += '[listen]\nproxy = "127.0.0.1:7777"\n'
    return make_server(config_text=text)


class Conn:
    """One SOCKS5 client connection to the proxy over a StringTransport."""

    def __init__(self, server: Any, ip: str = "192.0.2.1") -> None:
        self.server = server
        self.proto = Socks5Factory(server).buildProtocol(IPv4Address("TCP", ip, 40000))
        self.transport = StringTransport()
        if self.proto is not None:
            self.proto.makeConnection(self.transport)

    def take(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def connect(self, dst: bytes = DST) -> bytes:
        """Method selection and CONNECT; returns the proxy's reply to CONNECT."""
        self.proto.dataReceived(b"\x05\x01\x00")
        assert self.take() == b"\x05\x00"
        self.proto.dataReceived(b"\x05\x01\x00\x03" + bytes([len(dst)]) + dst + b"\x00\x00")
        return self.take()

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def reading(self) -> bool:
        return self.transport.producerState == "producing"


def ask(server: Any, session: Any, xml: str) -> Any:
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    [reply] = session.take()
    return reply


def activate(server: Any, alice: Any, target: str = BOB, sid: str = SID) -> Any:
    return ask(server, alice, f"<iq type='set' id='a1' to='proxy.localhost'><query xmlns='{NS_BYTESTREAMS}' "
                              f"sid='{sid}'><activate>{target}</activate></query></iq>")


def condition(reply: Any) -> str:
    error = next(c for c in reply.elements() if c.name == "error")
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def paired(server: Any) -> tuple[Any, Conn, Conn]:
    """alice bound, the target's and the requester's connections made and activated."""
    alice = bind(server, ALICE)
    target, requester = Conn(server), Conn(server)
    target.connect()
    requester.connect()
    assert activate(server, alice)["type"] == "result"
    return alice, target, requester


def test_disco_and_streamhost() -> None:
    """proxy.localhost is in the host's items, has the proxy/bytestreams
    identity, and answers a local user's streamhost query with the
    listener's address (XEP-0065 'Discovering the network address')."""
    server = make()
    alice = bind(server, ALICE)
    items = ask(server, alice, f"<iq type='get' id='i' to='localhost'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")
    assert "proxy.localhost" in [i["jid"] for i in items.firstChildElement().elements()]
    info = ask(server, alice, f"<iq type='get' id='d' to='proxy.localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    xml = info.toXml()
    assert "category='proxy'" in xml and "type='bytestreams'" in xml and NS_BYTESTREAMS in xml
    reply = ask(server, alice, f"<iq type='get' id='s' to='proxy.localhost'><query xmlns='{NS_BYTESTREAMS}'/></iq>")
    [host] = reply.firstChildElement().elements()
    assert (host["jid"], host["host"], host["port"]) == ("proxy.localhost", "127.0.0.1", "7777")


def test_announced_address_configurable() -> None:
    """host/port options override what is announced (NAT, 0.0.0.0 listeners)."""
    server = make('host = "proxy.example.org"\nport = 17777')
    alice = bind(server, ALICE)
    reply = ask(server, alice, f"<iq type='get' id='s' to='proxy.localhost'><query xmlns='{NS_BYTESTREAMS}'/></iq>")
    [host] = reply.firstChildElement().elements()
    assert (host["host"], host["port"]) == ("proxy.example.org", "17777")


def test_no_listener_no_service() -> None:
    """Without [listen] proxy there is no proxy.localhost, and the factory
    refuses connections."""
    server = make(listen=False)
    alice = bind(server, ALICE)
    items = ask(server, alice, f"<iq type='get' id='i' to='localhost'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")
    assert "proxy.localhost" not in items.toXml()
    assert Conn(server).proto is None


def test_remote_users_forbidden() -> None:
    """Another server's user may neither discover nor activate."""
    server = make()
    sent: list[Any] = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    for payload in (f"<query xmlns='{NS_BYTESTREAMS}'/>",
                    f"<query xmlns='{NS_BYTESTREAMS}' sid='x'><activate>{BOB}</activate></query>"):
        kind = "get" if "activate" not in payload else "set"
        server.router.route(stanza(f"<iq type='{kind}' id='r' to='proxy.localhost' "
                                   f"from='mallory@evil.example/x'>{payload}</iq>"))
    assert [condition(r) for r in sent] == ["forbidden", "forbidden"]


def test_socks5_reply_echoes_address_and_pauses_until_activation() -> None:
    """CONNECT to the hex SHA-1 with port 0 gets success echoing DST.ADDR
    and DST.PORT; the proxy then stops reading until activation."""
    server = make()
    conn = Conn(server)
    assert conn.connect() == b"\x05\x00\x00\x03\x28" + DST + b"\x00\x00"
    assert not conn.reading and not conn.closed


def test_relay_after_activation_both_ways() -> None:
    """Activation pairs the two connections by DST.ADDR: bytes sent early
    (held, not relayed) arrive at activation, then everything flows both
    ways, unchanged; closing one side closes the other."""
    server = make()
    alice = bind(server, ALICE)
    target, requester = Conn(server), Conn(server)
    target.connect()
    requester.connect()
    requester.send(b"early")
    assert target.take() == b""
    assert activate(server, alice)["type"] == "result"
    assert target.take() == b"early" and target.reading and requester.reading
    payload = bytes(range(256)) * 40
    requester.send(payload)
    assert target.take() == payload
    target.send(b"ack")
    assert requester.take() == b"ack"
    requester.close()
    assert target.closed
    target.close()
    relay = server.modules.get("proxy65").relay
    assert relay.connections == 0 and not relay.sessions and not relay.per_user


def test_activation_errors() -> None:
    """No connection for the hash (wrong requester/target/sid):
    item-not-found; only one party connected: not-allowed; no sid: bad-request."""
    server = make()
    alice = bind(server, ALICE)
    assert condition(activate(server, alice)) == "item-not-found"
    Conn(server).connect()
    assert condition(activate(server, alice)) == "not-allowed"
    assert condition(activate(server, alice, target="carol@localhost/x")) == "item-not-found"
    bob = bind(server, BOB)
    # The hash binds the requester: bob cannot activate alice's stream.
    Conn(server).connect()
    assert condition(activate(server, bob, target=ALICE)) == "item-not-found"
    reply = ask(server, alice, f"<iq type='set' id='a' to='proxy.localhost'><query xmlns='{NS_BYTESTREAMS}'>"
                               f"<activate>{BOB}</activate></query></iq>")
    assert condition(reply) == "bad-request"


def test_socks5_refusals() -> None:
    """No acceptable method: 0x05 0xFF and closed; a DST.ADDR that is not a
    hex SHA-1, a port other than 0, a third connection for one hash:
    'not allowed' (0x02); BIND/UDP: 'command not supported' (0x07)."""
    server = make()
    conn = Conn(server)
    conn.send(b"\x05\x01\x02")
    assert conn.take() == b"\x05\xff" and conn.closed
    assert Conn(server).connect(b"example.org")[1] == 0x02
    conn = Conn(server)
    conn.send(b"\x05\x01\x00")
    conn.take()
    conn.send(b"\x05\x01\x00\x03\x28" + DST + b"\x00\x50")
    assert conn.take()[1] == 0x02 and conn.closed
    conn = Conn(server)
    conn.send(b"\x05\x01\x00")
    conn.take()
    conn.send(b"\x05\x02\x00\x03\x28" + DST + b"\x00\x00")
    assert conn.take()[1] == 0x07
    Conn(server).connect()
    Conn(server).connect()
    third = Conn(server)
    assert third.connect()[1] == 0x02 and third.closed


def test_bandwidth_pauses_sender() -> None:
    """Past bandwidth bytes/s the sender's transport is paused and resumed
    when the bucket has refilled; the bytes themselves are passed on."""
    server = make("bandwidth = 1000")
    _, target, requester = paired(server)
    requester.send(b"x" * 3000)
    assert len(target.take()) == 3000
    assert not requester.reading
    server.clock.advance(1.9)
    assert not requester.reading
    server.clock.advance(0.2)
    assert requester.reading


def test_slow_reader_pauses_sender() -> None:
    """The receiver's full buffer (its transport pauses its producer)
    pauses the sender; it reads again when the buffer drained."""
    server = make("bandwidth = 0")
    _, target, requester = paired(server)
    target.transport.producer.pauseProducing()
    assert not requester.reading
    target.transport.producer.resumeProducing()
    assert requester.reading


def test_idle_session_closed() -> None:
    """A session without traffic for idle_timeout is closed; traffic keeps it."""
    server = make("idle_timeout = 10")
    _, target, requester = paired(server)
    server.clock.advance(8)
    requester.send(b"still here")
    server.clock.advance(8)
    assert not target.closed
    server.clock.advance(3)
    assert target.closed and requester.closed


def test_unactivated_connection_times_out() -> None:
    """A connection that is never activated is dropped after activation_timeout."""
    server = make("activation_timeout = 5")
    conn = Conn(server)
    conn.connect()
    server.clock.advance(4)
    assert not conn.closed
    server.clock.advance(2)
    assert conn.closed and conn.transport.disconnected


def test_connection_and_session_limits() -> None:
    """Connections per address are refused at accept past the limit (and
    counted down when closed); activated sessions per user are bounded
    (resource-constraint)."""
    server = make("max_connections_per_ip = 2\nmax_sessions_per_user = 1")
    a, b = Conn(server, "198.51.100.7"), Conn(server, "198.51.100.7")
    assert Conn(server, "198.51.100.7").proto is None
    assert Conn(server, "198.51.100.8").proto is not None
    a.close()
    assert Conn(server, "198.51.100.7").proto is not None
    b.close()
    alice, _, _ = paired(server)
    Conn(server, "203.0.113.1").connect(dst_addr("s2", ALICE, BOB))
    Conn(server, "203.0.113.2").connect(dst_addr("s2", ALICE, BOB))
    assert condition(activate(server, alice, sid="s2")) == "resource-constraint"
