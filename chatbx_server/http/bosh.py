"""BOSH (XEP-0124 1.11.2, XEP-0206 1.4) at ``/http-bind``.

As with WebSocket, the session is the TCP one: the real C2SStream runs
over a transport adapter. What the client posts in ``<body/>`` is fed to
the stream's parser (a session request or ``xmpp:restart`` becomes a
stream header, ``type='terminate'`` the end tag); what the stream writes
is queued and returned in the response bodies of held requests.

Everything is bounded: ``wait`` and ``hold`` are capped by configuration
(``[http] bosh_max_wait``, ``bosh_max_hold``), at most ``hold + 1``
requests are accepted at once (§11: ``requests``), bodies by
``max_request_body`` (refused before they are read, see server.py), a
session without requests dies after ``bosh_inactivity`` seconds, and one
address holds at most ``bosh_max_sessions_per_ip`` sessions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET
from twisted.words.xish import domish

from chatbx_server.c2s.parser import SafeElementStream
from chatbx_server.c2s.stream import C2SFactory, C2SStream
from chatbx_server.http.websocket import FramingSerializer
from chatbx_server.logs import log_observer
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import escape_attr
from chatbx_server.xmpp.stanzas import StreamError

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"


class BoshSerializer(FramingSerializer):
    """Elements as standalone documents; no header or footer (the body carries them)."""

    def __init__(self) -> None:
        super().__init__()
        self.footer = ""

    def header(self, stream_id: str, from_: Optional[str], to: Optional[str] = None,
               version: Optional[str] = "1.0", lang: Optional[str] = "en") -> str:
        return ""


BOSH_SERIALIZER = BoshSerializer()


class BoshC2SStream(C2SStream):
    serializer = BOSH_SERIALIZER
    transport_kind = "bosh"


def _body(attrs: dict[str, str], payload: list[str]) -> bytes:
    head = [f"<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' xmlns:stream='{ns.STREAMS}'"]
    for name, value in attrs.items():
        head.append(f" {name}='{escape_attr(value)}'")
    if not payload:
        return ("".join(head) + "/>").encode("utf-8")
    return ("".join(head) + ">" + "".join(payload) + "</body>").encode("utf-8")


class BoshSession:
    """One BOSH session: the stream, its output queue and the held requests."""

    def __init__(self, resource: "BoshResource", sid: str, rid: int, wait: int, hold: int,
                 ip: str) -> None:
        self.resource = resource
        self.sid = sid
        self.rid = rid
        self.wait = wait
        self.hold = hold
        self.ip = ip
        self.queue: list[str] = []
        self.held: list[tuple[Any, Any]] = []   # (request, timer)
        self.terminated = False
        self.condition: Optional[str] = None
        self.last_response = b""
        self._flush_call: Any = None
        self._inactive: Any = None
        self.transport = _BoshTransport(self, ip)
        self.stream = BoshC2SStream(resource.c2s)
        self.stream.makeConnection(self.transport)

    # -- what the stream writes ------------------------------------------------
    def output(self, data: bytes) -> None:
        if data:
            self.queue.append(data.decode("utf-8"))
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self.held and self._flush_call is None:
            # Next turn: everything the stream writes in this one goes in one body.
            self._flush_call = self.resource.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self.held and (self.queue or self.terminated):
            request, timer = self.held.pop(0)
            if timer.active():
                timer.cancel()
            self.respond(request)
        self._idle_check()

    def end(self) -> None:
        """The stream closed: answer with terminate and forget the session."""
        if self.terminated:
            return
        self.terminated = True
        self.resource.forget(self)
        if self.stream.admitted:
            # No socket reports the end: release the connection the stream holds.
            self.stream.connectionLost(Failure(ConnectionDone()))
        if self.held:
            self._schedule_flush()

    # -- requests ---------------------------------------------------------------
    def respond(self, request: Any, attrs: Optional[dict[str, str]] = None) -> None:
        attrs = dict(attrs or {})
        if self.terminated:
            attrs["type"] = "terminate"
            if self.condition:
                attrs["condition"] = self.condition
        payload, self.queue = self.queue, []
        body = _body(attrs, payload)
        self.last_response = body
        self.resource.send(request, body)

    def hold_request(self, request: Any) -> None:
        if self.queue or self.terminated:
            self.respond(request)
            self._idle_check()
            return
        while len(self.held) >= self.hold:
            old, timer = self.held.pop(0)
            if timer.active():
                timer.cancel()
            self.respond(old)
        timer = self.resource.clock.callLater(self.wait, self._timed_out, request)
        self.held.append((request, timer))
        request.notifyFinish().addErrback(lambda _: self._gone(request))
        self._idle_check()

    def _timed_out(self, request: Any) -> None:
        for index, (held, _) in enumerate(self.held):
            if held is request:
                del self.held[index]
                self.respond(request)
                break
        self._idle_check()

    def _gone(self, request: Any) -> None:
        self.held = [(r, t) for r, t in self.held if r is not request]
        self._idle_check()

    def _idle_check(self) -> None:
        """XEP-0124 §10: without a held request the session dies after 'inactivity'."""
        timer = self._inactive
        if self.held or self.terminated:
            if timer is not None and timer.active():
                timer.cancel()
            self._inactive = None
            return
        if timer is None or not timer.active():
            self._inactive = self.resource.clock.callLater(
                self.resource.config.bosh_inactivity, self._inactivity)

    def _inactivity(self) -> None:
        self._inactive = None
        log.info("bosh session from {ip} inactive: closed", ip=self.ip)
        self.end()

    def feed(self, data: bytes) -> None:
        self.stream.dataReceived(data)


class _BoshTransport:
    """What C2SStream needs of a transport, over a BOSH session."""

    disconnecting = False

    def __init__(self, session: BoshSession, ip: str) -> None:
        self.session = session
        self.peer = (IPv6Address if ":" in ip else IPv4Address)("TCP", ip, 0)

    def getPeer(self) -> Any:
        return self.peer

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.session.output(data)

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.session.end()

    def abortConnection(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # output is bounded by the queue of held requests, not a socket

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


def _parse_body(data: bytes, limits: Any) -> tuple[domish.Element, list[domish.Element]]:
    root: list[domish.Element] = []
    children: list[domish.Element] = []
    parser = SafeElementStream(limits.max_stanza_size, limits.max_depth + 1, limits.max_attributes)
    parser.DocumentStartEvent = root.append
    parser.ElementEvent = children.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(data)
    if not root or root[0].name != "body" or root[0].uri != NS_HTTPBIND:
        raise StreamError("bad-format")
    return root[0], children


def _header(to: str) -> bytes:
    return (f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAMS}' "
            f"to='{escape_attr(to)}' version='1.0'>").encode("utf-8")


class BoshResource(resource.Resource):
    isLeaf = True

    def __init__(self, chatbx: "Server") -> None:
        super().__init__()
        self.chatbx = chatbx
        self.clock = chatbx.clock
        self.config = chatbx.config.http
        self.c2s = C2SFactory(chatbx, tls=None, direct_tls=True)
        self.sessions: dict[str, BoshSession] = {}
        self.per_ip: dict[str, int] = {}

    def forget(self, session: BoshSession) -> None:
        if self.sessions.pop(session.sid, None) is not None:
            count = self.per_ip.get(session.ip, 1) - 1
            if count > 0:
                self.per_ip[session.ip] = count
            else:
                self.per_ip.pop(session.ip, None)

    @staticmethod
    def _cors(request: Any) -> None:
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"access-control-allow-methods", b"POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Content-Type")
        request.setHeader(b"access-control-max-age", b"86400")

    def send(self, request: Any, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def render_OPTIONS(self, request: Any) -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        return b""

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"BOSH (XEP-0206): POST here\n"

    def render_POST(self, request: Any) -> Any:
        from chatbx_server.http import metrics

        metrics.HTTP_REQUESTS.labels("bosh").inc()
        self._cors(request)
        try:
            root, children = _parse_body(request.content.read(), self.chatbx.config.limits)
        except StreamError:
            request.setResponseCode(400)
            return b""
        sid = root.getAttribute("sid")
        try:
            rid = int(root.getAttribute("rid", ""))
        except ValueError:
            request.setResponseCode(400)
            return b""
        if sid is None:
            return self._create(request, root, rid, children)
        session = self.sessions.get(sid)
        if session is None:
            return _body({"type": "terminate", "condition": "item-not-found"}, [])
        if rid == session.rid:
            return session.last_response  # XEP-0124 §14.3: a retransmission
        if not session.rid < rid <= session.rid + session.hold + 1:
            session.condition = "item-not-found"
            session.stream.close_stream()
            return _body({"type": "terminate", "condition": "item-not-found"}, [])
        session.rid = rid
        if root.getAttribute((NS_XBOSH, "restart")) == "true":
            session.feed(_header(session.stream.host or ""))
        self._feed_children(session, children)
        if root.getAttribute("type") == "terminate":
            session.feed(b"</stream:stream>")
        session.hold_request(request)
        return NOT_DONE_YET

    def _feed_children(self, session: BoshSession, children: list[domish.Element]) -> None:
        for child in children:
            if session.terminated:
                return
            if child.uri == NS_HTTPBIND:
                child.uri = child.defaultUri = ns.CLIENT  # stanzas without their xmlns
            session.feed(child.toXml().encode("utf-8"))

    def _create(self, request: Any, root: domish.Element, rid: int,
                children: list[domish.Element]) -> Any:
        ip = request.client_ip()
        config = self.config
        if self.per_ip.get(ip, 0) >= config.bosh_max_sessions_per_ip:
            return _body({"type": "terminate", "condition": "policy-violation"}, [])
        to = root.getAttribute("to", "")
        if to not in self.chatbx.hosts:
            return _body({"type": "terminate", "condition": "host-unknown"}, [])
        try:
            wait = max(1, min(int(root.getAttribute("wait", "60")), config.bosh_max_wait))
            hold = max(1, min(int(root.getAttribute("hold", "1")), config.bosh_max_hold))
        except ValueError:
            request.setResponseCode(400)
            return b""
        sid = os.urandom(16).hex()
        session = BoshSession(self, sid, rid, wait, hold, ip)
        self.sessions[sid] = session
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        session.feed(_header(to))
        attrs = {"sid": sid, "wait": str(wait), "hold": str(hold), "requests": str(hold + 1),
                 "inactivity": str(config.bosh_inactivity), "polling": "1", "ver": "1.11",
                 "from": to, "authid": session.stream.stream_id, "secure": "true",
                 "xmpp:version": "1.0", "maxpause": "0"}
        session.respond(request, attrs)
        session._idle_check()
        return NOT_DONE_YET
