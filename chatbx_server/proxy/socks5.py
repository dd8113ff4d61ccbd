"""The TCP side of the SOCKS5 Bytestreams proxy (XEP-0065 1.8 §6, RFC 1928).

XEP-0065 uses a small subset of SOCKS5: no authentication (method 0x00),
one CONNECT request whose DST.ADDR is a domain (ATYP 3) holding the hex
SHA-1 of SID + requester JID + target JID, and DST.PORT 0. The reply echoes
that address and port (XEP-0065 "SHOULD set BND.ADDR and BND.PORT to the
values provided"). The two connections that ask for the same hash (the
target's first, then the requester's) are paired; nothing is relayed until
the requester activates the pair with an IQ to proxy.DOMAIN
(:meth:`Relay.activate`), and only then are bytes copied both ways.

Everything is bounded:

* connections: ``max_connections`` in all and ``max_connections_per_ip``,
  refused at accept time; a connection that is not activated within
  ``activation_timeout`` (or never finishes SOCKS) is closed;
* bytes before activation: at most ``PENDING_LIMIT`` are held (reading is
  paused right after the SOCKS reply), more closes the connection;
* active sessions: ``max_sessions_per_user`` per requester;
* bandwidth: a token bucket of ``bandwidth`` bytes/s per session and
  direction pauses the sender's transport when it is ahead, and the
  receiver's transport pauses the sender too when its buffer is full
  (Twisted push-producer flow control), so a slow reader never makes the
  proxy buffer a file;
* idle time: a session without a byte for ``idle_timeout`` is closed.

Relayed bytes are never logged.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Optional

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

#: bytes a connection may send between its CONNECT request and activation
PENDING_LIMIT = 65536
_HASH = re.compile(rb"^[0-9a-f]{40}$")

# RFC 1928 §6 reply codes
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_NOT_SUPPORTED = 0x08


class Limits:
    """The relay's bounds (the proxy65 feature's options)."""

    def __init__(self, max_connections: int = 1000, max_connections_per_ip: int = 20,
                 max_sessions_per_user: int = 10, bandwidth: int = 10485760,
                 idle_timeout: float = 120.0, activation_timeout: float = 60.0) -> None:
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.max_sessions_per_user = max_sessions_per_user
        #: bytes per second per session and direction (0 = unlimited)
        self.bandwidth = bandwidth
        self.idle_timeout = idle_timeout
        self.activation_timeout = activation_timeout


@implementer(interfaces.IPushProducer)
class Pipe:
    """One direction of a session: bytes from ``source`` written to ``sink``.

    Registered as the streaming producer of the sink's transport, so the
    sink's full buffer pauses the source; the token bucket pauses it too.
    The source reads again only when neither holds it.
    """

    def __init__(self, session: "Session", source: "Socks5Protocol", sink: "Socks5Protocol") -> None:
        self.session = session
        self.source = source
        self.sink = sink
        self.by_consumer = False
        self.by_rate = False
        self._paused = False
        rate = session.relay.limits.bandwidth
        self.rate = rate
        #: token bucket: at most one second's worth may be sent in a burst
        self.tokens = float(rate)
        self.stamp = session.relay.clock.seconds()
        self._resume: Any = None
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.sink.transport.write(data)
        if not self.rate:
            return
        clock = self.session.relay.clock
        now = clock.seconds()
        self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate) - len(data)
        self.stamp = now
        if self.tokens < 0 and not self.by_rate:
            self.by_rate = True
            self._update()
            self._resume = clock.callLater(-self.tokens / self.rate, self._refilled)

    def _refilled(self) -> None:
        self._resume = None
        self.by_rate = False
        self._update()

    def _update(self) -> None:
        paused = self.by_consumer or self.by_rate
        if paused == self._paused or self.source.transport is None:
            return
        self._paused = paused
        if paused:
            self.source.transport.pauseProducing()
        else:
            self.source.transport.resumeProducing()

    # IPushProducer, called by the sink's transport
    def pauseProducing(self) -> None:
        self.by_consumer = True
        self._update()

    def resumeProducing(self) -> None:
        self.by_consumer = False
        self._update()

    def stopProducing(self) -> None:
        self.session.close()

    def stop(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None


class Session:
    """An activated pair: two pipes, an idle timer, its requester."""

    def __init__(self, relay: "Relay", a: "Socks5Protocol", b: "Socks5Protocol", user: str) -> None:
        self.relay = relay
        self.user = user
        self.a, self.b = a, b
        self.pipes = {a: Pipe(self, a, b), b: Pipe(self, b, a)}
        self.last = relay.clock.seconds()
        self.closed = False
        self._idle: Any = None

    def start(self) -> None:
        for source, pipe in self.pipes.items():
            pipe.sink.transport.registerProducer(pipe, True)
            source.session = self
        self._idle = self.relay.clock.callLater(self.relay.limits.idle_timeout, self._check_idle)
        # Read again (paused since the SOCKS reply), then relay what came
        # early; a pipe may pause its source again at once (bandwidth).
        for source in (self.a, self.b):
            if source.transport is not None:
                source.transport.resumeProducing()
        for source in (self.a, self.b):
            source.flush_pending()

    def forward(self, source: "Socks5Protocol", data: bytes) -> None:
        if self.closed:
            return
        self.last = self.relay.clock.seconds()
        self.pipes[source].write(data)

    def _check_idle(self) -> None:
        self._idle = None
        idle = self.relay.clock.seconds() - self.last
        limit = self.relay.limits.idle_timeout
        if idle >= limit:
            log.info("proxy65: session of {user} idle for {idle:.0f} s, closed", user=self.user, idle=idle)
            self.close()
        else:
            self._idle = self.relay.clock.callLater(limit - idle, self._check_idle)

    def close(self) -> None:
        """Close both connections (what was written is still sent)."""
        if self.closed:
            return
        self.closed = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        for pipe in self.pipes.values():
            pipe.stop()
            if pipe.sink.transport is not None:
                pipe.sink.transport.unregisterProducer()
        self.relay.session_ended(self)
        for conn in (self.a, self.b):
            if conn.transport is not None:
                conn.transport.loseConnection()
        log.info("proxy65: session of {user} ended, {up} + {down} bytes", user=self.user,
                 up=self.pipes[self.a].bytes, down=self.pipes[self.b].bytes)


class Socks5Protocol(protocol.Protocol):
    """One SOCKS5 connection: method selection, CONNECT, wait, relay."""

    # Type-only: a TCP transport (producer, consumer, abortConnection);
    # Twisted's stubs say ITransport.
    transport: Any

    def __init__(self, relay: "Relay", ip: str) -> None:
        self.relay = relay
        self.ip = ip
        self.state = "methods"
        self.buffer = b""
        self.dst: Optional[bytes] = None
        self.session: Optional[Session] = None
        self._timeout: Any = None

    def connectionMade(self) -> None:
        self._timeout = self.relay.clock.callLater(self.relay.limits.activation_timeout, self._expired)

    def _expired(self) -> None:
        self._timeout = None
        if self.session is None and self.transport is not None:
            log.debug("proxy65: connection from {ip} not activated in time", ip=self.ip)
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.session.forward(self, data)
            return
        self.buffer += data
        if self.state == "methods":
            self._methods()
        if self.state == "request":
            self._request()
        if self.state == "waiting" and len(self.buffer) > PENDING_LIMIT:
            log.info("proxy65: {ip} sent too much before activation", ip=self.ip)
            self.transport.loseConnection()

    def _methods(self) -> None:
        # RFC 1928 §3: VER NMETHODS METHODS
        if len(self.buffer) < 2:
            return
        if self.buffer[0] != 5:
            self._close()
            return
        count = self.buffer[1]
        if len(self.buffer) < 2 + count:
            return
        methods, self.buffer = self.buffer[2:2 + count], self.buffer[2 + count:]
        if 0 not in methods:
            self.transport.write(b"\x05\xff")  # no acceptable method
            self._close()
            return
        self.transport.write(b"\x05\x00")
        self.state = "request"

    def _request(self) -> None:
        # RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT
        if len(self.buffer) < 5:
            return
        version, command, _, atyp, length = self.buffer[:5]
        if version != 5:
            self._close()
            return
        if atyp != 3:
            self._reply(ADDRESS_NOT_SUPPORTED, b"")
            return
        if len(self.buffer) < 5 + length + 2:
            return
        address = bytes(self.buffer[5:5 + length])
        port = self.buffer[5 + length:7 + length]
        self.buffer = self.buffer[7 + length:]
        if command != 1:
            self._reply(COMMAND_NOT_SUPPORTED, address)
            return
        if not _HASH.match(address) or port != b"\x00\x00":
            # XEP-0065: DST.ADDR is the hex SHA-1, DST.PORT is 0.
            self._reply(NOT_ALLOWED, address)
            return
        if not self.relay.register(self, address):
            self._reply(NOT_ALLOWED, address)
            return
        self.dst = address
        self.state = "waiting"
        self.transport.write(b"\x05\x00\x00\x03" + bytes([len(address)]) + address + b"\x00\x00")
        # Nothing is relayed before activation: stop reading until then.
        self.transport.pauseProducing()

    def _reply(self, code: int, address: bytes) -> None:
        """A failure reply, then close (RFC 1928 §6)."""
        self.transport.write(b"\x05" + bytes([code]) + b"\x00\x03" + bytes([len(address)])
                             + address + b"\x00\x00")
        self._close()

    def _close(self) -> None:
        self.state = "closed"
        self.transport.loseConnection()

    def flush_pending(self) -> None:
        """At activation: relay what arrived between the reply and now."""
        data, self.buffer = self.buffer, b""
        if data and self.session is not None:
            self.session.forward(self, data)

    def connectionLost(self, reason: Any = None) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if self.session is not None:
            self.session.close()
        self.relay.lost(self)


class Relay:
    """The proxy's state: waiting connections by hash, sessions, counters.

    Args:
        clock: an IReactorTime (the server's clock).
        limits: the bounds.
    """

    def __init__(self, clock: Any, limits: Limits) -> None:
        self.clock = clock
        self.limits = limits
        #: DST.ADDR -> the (at most two) connections that asked for it
        self.waiting: dict[bytes, list[Socks5Protocol]] = {}
        self.sessions: set[Session] = set()
        self.connections = 0
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        """May one more connection come from ``ip``? (Counted when True.)"""
        if self.connections >= self.limits.max_connections:
            log.warn("proxy65: {max} connections open, refusing more", max=self.limits.max_connections)
            return False
        if self.per_ip[ip] >= self.limits.max_connections_per_ip:
            log.info("proxy65: {ip} has {n} connections, refusing more", ip=ip, n=self.per_ip[ip])
            return False
        self.connections += 1
        self.per_ip[ip] += 1
        return True

    def register(self, conn: Socks5Protocol, dst: bytes) -> bool:
        """A connection asked for ``dst``; False for a third one."""
        waiting = self.waiting.setdefault(dst, [])
        if len(waiting) >= 2:
            return False
        waiting.append(conn)
        return True

    def activate(self, dst: bytes, user: str) -> Optional[str]:
        """Pair the two connections of ``dst`` and start relaying.

        Returns:
            None, or the stanza error condition (XEP-0065 §6.3.4 / 'Activation
            of Bytestream'): item-not-found when no connection asked for this
            hash (the requester's JID does not match), not-allowed when only
            one party is connected, resource-constraint past the per-user limit.
        """
        waiting = self.waiting.get(dst)
        if not waiting:
            return "item-not-found"
        if len(waiting) < 2:
            return "not-allowed"
        if self.per_user[user] >= self.limits.max_sessions_per_user:
            return "resource-constraint"
        del self.waiting[dst]
        a, b = waiting
        for conn in waiting:
            if conn._timeout is not None and conn._timeout.active():
                conn._timeout.cancel()
            conn._timeout = None
            conn.state = "relaying"
        session = Session(self, a, b, user)
        self.sessions.add(session)
        self.per_user[user] += 1
        session.start()
        log.info("proxy65: session of {user} activated", user=user)
        return None

    def session_ended(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_user[session.user] -= 1
            if self.per_user[session.user] <= 0:
                del self.per_user[session.user]

    def lost(self, conn: Socks5Protocol) -> None:
        """A connection closed: forget it and its counters."""
        if conn.dst is not None:
            waiting = self.waiting.get(conn.dst)
            if waiting is not None and conn in waiting:
                waiting.remove(conn)
                if not waiting:
                    del self.waiting[conn.dst]
        self.connections -= 1
        self.per_ip[conn.ip] -= 1
        if self.per_ip[conn.ip] <= 0:
            del self.per_ip[conn.ip]

    def close_all(self) -> None:
        """At shutdown: every session and waiting connection is closed."""
        for session in list(self.sessions):
            session.close()
        for waiting in list(self.waiting.values()):
            for conn in list(waiting):
                if conn.transport is not None:
                    conn.transport.loseConnection()


class Socks5Factory(protocol.Factory):
    """The ``[listen] proxy`` factory; refuses connections past the limits,
    and all of them while the proxy65 module is not loaded."""

    noisy = False

    def __init__(self, chatbx: Any) -> None:
        self.chatbx = chatbx

    def buildProtocol(self, addr: Any) -> Optional[protocol.Protocol]:
        feature = self.chatbx.modules.get("proxy65")
        relay: Optional[Relay] = getattr(feature, "relay", None)
        ip = getattr(addr, "host", "") or ""
        if relay is None or not relay.admit(ip):
            return None
        conn = Socks5Protocol(relay, ip)
        conn.factory = self
        return conn
