"""A raw XMPP c2s client on asyncio for load generation (RFC 6120, RFC 6121, XEP-0199).

Why not slixmpp: in a benchmark the client must cost far less per stanza than
the server it measures. This client parses with expat (C) into tiny element
objects, batches its writes per event-loop turn (one TLS record for many
stanzas), and does nothing it does not need: stream open, STARTTLS (or direct
TLS, XEP-0368), SASL SCRAM-SHA-256 / SCRAM-SHA-1 / PLAIN, bind, optional roster
get, initial presence, and a ping round trip that proves the presence was
processed. Or, with `fast=`, SASL2 + Bind2 with a FAST token (XEP-0388,
XEP-0386, XEP-0484): SCRAM asking for a token once, then the token.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import hashlib
import hmac
import itertools
import os
import uuid
import socket
import ssl
from collections import deque
from typing import Callable, Optional
from xml.parsers import expat

NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_PING = "urn:xmpp:ping"
NS_SM = "urn:xmpp:sm:3"
NS_SASL2 = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
#: FAST mechanisms we can run, best first: -ENDP binds the token to the
#: server certificate (tls-server-end-point, RFC 5929); Python's ssl module
#: has no tls-exporter or tls-unique for TLS 1.3, so no -EXPR / -UNIQ
FAST_MECHANISMS = ("HT-SHA-256-ENDP", "HT-SHA-256-NONE")

#: enable XEP-0198 stream management after bind (loadgen/compare --sm):
#: the server's <r/> is answered with the count of stanzas received
SM_ENABLED = False
T_SM_R = NS_SM + " r"
T_SM_A = NS_SM + " a"
T_SM_ENABLED = NS_SM + " enabled"

T_FEATURES = NS_STREAMS + " features"
T_STREAM_ERROR = NS_STREAMS + " error"
T_MESSAGE = NS_CLIENT + " message"
T_PRESENCE = NS_CLIENT + " presence"
T_IQ = NS_CLIENT + " iq"

_ids = itertools.count(1)

# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size):
# 2.5 GiB of load-generator memory at 10,000 idle connections. 32 KiB holds two
# full TLS records, plenty for our reads.
asyncio.sslproto.SSLProtocol.max_size = 32 * 1024


class LoginError(Exception):
    """A login step failed; the message names the step."""


class El:
    """A parsed element: expat 'ns local' tag, attribute dict, children, text."""

    __slots__ = ("tag", "attrs", "children", "text")

    def __init__(self, tag: str, attrs: dict) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[El] = []
        self.text = ""

    def find(self, tag: str) -> Optional["El"]:
        """First direct child with this tag, or None."""
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """An attribute value."""
        return self.attrs.get(name, default)

    def __repr__(self) -> str:
        return f"<El {self.tag} {self.attrs} {len(self.children)} children>"


_SHARED_CTX: Optional[ssl.SSLContext] = None


def make_ssl_context() -> ssl.SSLContext:
    """A client context that accepts the benchmark servers' self-signed certificates.

    Shared: building a context loads the CA store (~20 ms), more than a login.
    """
    global _SHARED_CTX
    if _SHARED_CTX is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _SHARED_CTX = ctx
    return _SHARED_CTX


def xml_escape(text: str) -> str:
    """Escape text for element content and single-quoted attributes."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


class FastCredentials:
    """One device's FAST state (XEP-0484): its user-agent id and, once the
    server issued one, the token and the mechanism it is bound to. Shared
    by the logins of one account: without a token, `login(fast=...)`
    authenticates with SCRAM over SASL2 and asks for one; with a token,
    it logs in with it in one round trip (and keeps a rotated one)."""

    __slots__ = ("device", "mechanism", "token", "scram_logins", "token_logins")

    def __init__(self, mechanism: Optional[str] = None) -> None:
        self.device = str(uuid.uuid4())
        #: the HT-* mechanism to ask a token for (None: the best the server offers)
        self.mechanism = mechanism
        self.token: Optional[str] = None
        self.scram_logins = 0
        self.token_logins = 0


def tls_server_end_point(transport: asyncio.BaseTransport) -> Optional[bytes]:
    """RFC 5929 channel binding: SHA-256 of the server's certificate (right for
    certificates signed with SHA-256, SHA-1 or MD5, as the benchmark's are)."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).digest() if der else None


class XmppConnection(asyncio.Protocol):
    """One client stream. Stanzas go to `on_stanza` when set, else to an inbox for `recv()`."""

    def __init__(self, domain: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.domain = domain
        self.transport: Optional[asyncio.BaseTransport] = None
        self.jid = ""
        self.on_stanza: Optional[Callable[["XmppConnection", El], None]] = None
        self.inbox: deque[El] = deque()
        self.waiter: Optional[asyncio.Future] = None
        self.lost = False
        self.lost_reason: Optional[str] = None
        self.discarded = 0
        self._wbuf: list[bytes] = []
        self._flush_scheduled = False
        self.user_data: object = None
        #: stanzas received since SM was enabled (None: SM off)
        self.sm_handled: Optional[int] = None
        self.reset_parser()

    # -- parsing ---------------------------------------------------------
    def reset_parser(self) -> None:
        """A fresh parser for a new stream (after STARTTLS and after SASL success)."""
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.buffer_text = True
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chars
        self._parser = parser
        self._depth = 0
        self._stack: list[El] = []

    def _start(self, tag: str, attrs: dict) -> None:
        depth = self._depth
        self._depth = depth + 1
        if depth == 0:
            return  # the server's stream header
        el = El(tag, attrs)
        if depth > 1:
            self._stack[-1].children.append(el)
        self._stack.append(el)

    def _end(self, tag: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._lose("server closed the stream")
            return
        el = self._stack.pop()
        if self._depth == 1:
            if self.sm_handled is not None:
                tag = el.tag
                if tag == T_SM_R:
                    self.send(f"<a xmlns='{NS_SM}' h='{self.sm_handled % 2**32}'/>".encode())
                    return
                if tag == T_SM_A:
                    return
                if tag in (T_MESSAGE, T_PRESENCE, T_IQ):
                    self.sm_handled += 1
            if self.on_stanza is not None and el.tag != T_STREAM_ERROR:
                self.on_stanza(self, el)
            else:
                self.inbox.append(el)
                self._wake()

    def _chars(self, data: str) -> None:
        if self._stack:
            el = self._stack[-1]
            el.text = el.text + data if el.text else data

    # -- asyncio protocol ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            self._lose(f"XML error: {exc}")
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._lose(f"connection lost: {exc}" if exc else "connection closed")

    def _lose(self, reason: str) -> None:
        if not self.lost:
            self.lost = True
            self.lost_reason = reason
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one loop turn leaves in one write."""
        self._wbuf.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wbuf and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._wbuf))  # type: ignore[attr-defined]
        self._wbuf.clear()

    def open_stream(self) -> None:
        """Send the client stream header."""
        self.send(("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                   "xmlns:stream='http://etherx.jabber.org/streams' "
                   f"to='{self.domain}' version='1.0'>").encode())

    def close(self) -> None:
        """Close the stream and the connection without waiting for the server's goodbye."""
        if self.transport is not None and not self.transport.is_closing():
            self.send(b"</stream:stream>")
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (used when the run is over and time is short)."""
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    # -- receiving in coroutines -----------------------------------------
    async def recv(self, timeout: float) -> El:
        """The next stanza from the inbox; raises LoginError if the stream is gone."""
        deadline = self.loop.time() + timeout
        while not self.inbox:
            if self.lost:
                raise LoginError(self.lost_reason or "stream lost")
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                raise LoginError("timeout waiting for a stanza")
            self.waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self.waiter, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                self.waiter = None
        el = self.inbox.popleft()
        if el.tag == T_STREAM_ERROR:
            cond = el.children[0].tag.split(" ")[-1] if el.children else "unknown"
            raise LoginError(f"stream error: {cond}")
        return el

    async def recv_until(self, pred: Callable[[El], bool], timeout: float) -> El:
        """The first stanza matching `pred`; earlier ones are counted and dropped."""
        deadline = self.loop.time() + timeout
        while True:
            el = await self.recv(max(0.0, deadline - self.loop.time()))
            if pred(el):
                return el
            self.discarded += 1

    async def iq(self, kind: str, payload: str, to: Optional[str] = None, timeout: float = 30.0) -> El:
        """Send an IQ and wait for its result; raises LoginError on an error reply."""
        iq_id = f"q{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{kind}' id='{iq_id}'{to_attr}>{payload}</iq>".encode())
        reply = await self.recv_until(lambda el: el.tag == T_IQ and el.get("id") == iq_id, timeout)
        if reply.get("type") != "result":
            raise LoginError(f"iq {payload[:40]!r} answered {reply.get('type')}")
        return reply


async def login(host: str, port: int, domain: str, username: str, password: str, *,
                starttls: bool = True, direct_tls: bool = False,
                ssl_ctx: Optional[ssl.SSLContext] = None, resource: Optional[str] = None,
                roster: bool = False, presence: Optional[str] = "<presence/>",
                mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"),
                fast: Optional[FastCredentials] = None,
                timeout: float = 30.0) -> XmppConnection:
    """Connect and log in; returns the connection with initial presence processed.

    With `fast`: SASL2 (XEP-0388) and Bind2 (XEP-0386) instead of RFC 6120
    SASL and bind, and a FAST token (XEP-0484): asked for with a SCRAM
    login when `fast` has none, used when it has one.

    Raises:
        LoginError: naming the step that failed (or asyncio.TimeoutError past `timeout`).
    """
    return await asyncio.wait_for(
        _login(host, port, domain, username, password, starttls, direct_tls,
               ssl_ctx or make_ssl_context(), resource, roster, presence, mechanisms, fast), timeout)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _child_text(el: El, tag: str) -> Optional[str]:
    child = el.find(tag)
    return child.text if child is not None else None


async def _sasl2_login(conn: XmppConnection, features: El, username: str, password: str,
                       fast: FastCredentials, resource: Optional[str], timeout: float) -> None:
    """XEP-0388 authentication with an inline Bind2 request (the stream is
    bound when it returns): SCRAM-SHA-256 with a FAST token request, or the
    FAST token with its HT-* mechanism. Verifies the server's proof."""
    from . import scram

    auth = features.find(NS_SASL2 + " authentication")
    if auth is None:
        raise LoginError("server offers no SASL2")
    inline = auth.find(NS_SASL2 + " inline")
    fast_el = inline.find(NS_FAST + " fast") if inline is not None else None
    offered_ht = [m.text.strip() for m in fast_el.children] if fast_el is not None else []
    cb = tls_server_end_point(conn.transport) if conn.transport is not None else None
    usable = [m for m in FAST_MECHANISMS if m in offered_ht and (m.endswith("-NONE") or cb)]
    bind_inner = f"<tag>{xml_escape(resource or 'bench')}</tag>"
    if SM_ENABLED:
        bind_inner += f"<enable xmlns='{NS_SM}' resume='true'/>"
    common = (f"<user-agent id='{fast.device}'><software>xmppload</software>"
              f"<device>bench</device></user-agent><bind xmlns='{NS_BIND2}'>{bind_inner}</bind>")
    client = None
    expected: Optional[bytes] = None
    if fast.token is not None:
        mech = fast.mechanism or ""
        if mech not in usable:
            raise LoginError(f"FAST {mech} not offered (offered {offered_ht})")
        cb_data = cb if mech.endswith("-ENDP") and cb is not None else b""
        token = fast.token.encode()
        proof = hmac.digest(token, b"Initiator" + cb_data, "sha256")
        expected = hmac.digest(token, b"Responder" + cb_data, "sha256")
        initial = username.encode() + b"\0" + proof
        extra = f"<fast xmlns='{NS_FAST}'/>"
        fast.token_logins += 1
    else:
        mechs = [m.text.strip() for m in auth.children if m.tag == NS_SASL2 + " mechanism"]
        mech = "SCRAM-SHA-256"
        if mech not in mechs:
            raise LoginError(f"no SCRAM-SHA-256 in SASL2 mechanisms {mechs}")
        if fast.mechanism is None:
            if not usable:
                raise LoginError(f"no usable FAST mechanism in {offered_ht}")
            fast.mechanism = usable[0]
        client = scram.ScramClient(mech, username, password)
        initial = client.first()
        extra = f"<request-token xmlns='{NS_FAST}' mechanism='{fast.mechanism}'/>"
        fast.scram_logins += 1
    conn.send(f"<authenticate xmlns='{NS_SASL2}' mechanism='{mech}'><initial-response>"
              f"{_b64(initial)}</initial-response>{common}{extra}</authenticate>".encode())
    while True:
        answer = await conn.recv(timeout)
        kind = answer.tag.split(" ")[-1]
        if kind == "challenge" and client is not None and not client.server_signature:
            final = client.final(base64.b64decode(answer.text or ""))
            conn.send(f"<response xmlns='{NS_SASL2}'>{_b64(final)}</response>".encode())
        elif kind == "success":
            break
        else:
            cond = answer.children[0].tag.split(" ")[-1] if answer.children else kind
            raise LoginError(f"SASL2 {mech} failed: {cond}")
    additional = base64.b64decode(_child_text(answer, NS_SASL2 + " additional-data") or "")
    if client is not None and not client.verify(additional):
        raise LoginError("server signature mismatch")
    if expected is not None and not hmac.compare_digest(additional, expected):
        raise LoginError("FAST: the server's answer does not prove it knows the token")
    token_el = answer.find(NS_FAST + " token")
    if token_el is not None:  # issued, or rotated (XEP-0484 §3.5)
        fast.token = token_el.get("token")
    elif fast.token is None:
        raise LoginError("FAST: no token in <success/>")
    bound = answer.find(NS_BIND2 + " bound")
    if bound is None:
        raise LoginError("Bind2: no <bound/> in <success/>")
    conn.jid = _child_text(answer, NS_SASL2 + " authorization-identifier") or ""
    if SM_ENABLED:
        if bound.find(T_SM_ENABLED) is None:
            raise LoginError("Bind2: stream management was not enabled")
        conn.sm_handled = 0


async def _login(host, port, domain, username, password, starttls, direct_tls, ssl_ctx,
                 resource, roster, presence, mechanisms, fast=None) -> XmppConnection:
    from . import scram  # local: keeps the module importable without side effects

    loop = asyncio.get_running_loop()
    conn = XmppConnection(domain)
    step_timeout = 30.0
    try:
        # A connected socket first: create_connection(host, port) would resolve the
        # name in the executor thread pool on every login (milliseconds each).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        if direct_tls:
            await loop.create_connection(lambda: conn, sock=sock, ssl=ssl_ctx, server_hostname=domain)
        else:
            await loop.create_connection(lambda: conn, sock=sock)
        conn.open_stream()
        features = await conn.recv_until(lambda el: el.tag == T_FEATURES, step_timeout)
        if starttls and not direct_tls:
            if features.find(NS_TLS + " starttls") is None:
                raise LoginError("server offers no STARTTLS")
            conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            answer = await conn.recv(step_timeout)
            if answer.tag != NS_TLS + " proceed":
                raise LoginError(f"STARTTLS refused: {answer.tag}")
            conn.reset_parser()
            conn.transport = await loop.start_tls(conn.transport, conn, ssl_ctx, server_hostname=domain)
            conn.open_stream()
            features = await conn.recv_until(lambda el: el.tag == T_FEATURES, step_timeout)

        if fast is not None:
            await _sasl2_login(conn, features, username, password, fast, resource, step_timeout)
            return await _after_bind(conn, domain, roster, presence)
        mechs_el = features.find(NS_SASL + " mechanisms")
        offered = [m.text.strip() for m in mechs_el.children] if mechs_el is not None else []
        mech = scram.choose_mechanism(offered, mechanisms)
        if mech is None:
            raise LoginError(f"no usable SASL mechanism in {offered}")
        client = None
        if mech == "PLAIN":
            initial = scram.plain_message(username, password)
        else:
            client = scram.ScramClient(mech, username, password)
            initial = client.first()
        conn.send(f"<auth xmlns='{NS_SASL}' mechanism='{mech}'>{base64.b64encode(initial).decode()}</auth>"
                  .encode())
        while True:
            answer = await conn.recv(step_timeout)
            kind = answer.tag.split(" ")[-1]
            if kind == "challenge" and client is not None and not client.server_signature:
                final = client.final(base64.b64decode(answer.text or ""))
                conn.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final).decode()}</response>".encode())
            elif kind == "challenge":  # server-final sent as a challenge (RFC 6120 §6.3.10 allows it)
                if client is not None and not client.verify(base64.b64decode(answer.text or "")):
                    raise LoginError("server signature mismatch")
                conn.send(f"<response xmlns='{NS_SASL}'/>".encode())
            elif kind == "success":
                if client is not None and answer.text and not client.verify(base64.b64decode(answer.text)):
                    raise LoginError("server signature mismatch")
                break
            else:
                cond = answer.children[0].tag.split(" ")[-1] if answer.children else kind
                raise LoginError(f"SASL {mech} failed: {cond}")

        conn.reset_parser()
        conn.open_stream()
        features = await conn.recv_until(lambda el: el.tag == T_FEATURES, step_timeout)
        res = resource or "b" + os.urandom(4).hex()
        reply = await conn.iq("set", f"<bind xmlns='{NS_BIND}'><resource>{res}</resource></bind>")
        bind = reply.find(NS_BIND + " bind")
        jid_el = bind.find(NS_BIND + " jid") if bind is not None else None
        conn.jid = jid_el.text if jid_el is not None else f"{username}@{domain}/{res}"
        if SM_ENABLED:
            conn.send(f"<enable xmlns='{NS_SM}' resume='true'/>".encode())
            await conn.recv_until(lambda el: el.tag == T_SM_ENABLED, step_timeout)
            conn.sm_handled = 0
        session = features.find(NS_SESSION + " session")
        if session is not None and session.find(NS_SESSION + " optional") is None:
            await conn.iq("set", f"<session xmlns='{NS_SESSION}'/>")
        return await _after_bind(conn, domain, roster, presence)
    except BaseException:
        if conn.transport is not None:
            conn.transport.abort()  # type: ignore[attr-defined]
        raise


async def _after_bind(conn: XmppConnection, domain: str, roster: bool,
                      presence: Optional[str]) -> XmppConnection:
    """Roster get (optional), initial presence and the ping that proves it was handled."""
    if roster:
        conn.user_data = await conn.iq("get", f"<query xmlns='{NS_ROSTER}'/>")
    if presence:
        conn.send(presence.encode())
        # Stanzas are processed in order: the ping's answer means the presence was handled.
        await conn.iq("get", f"<ping xmlns='{NS_PING}'/>", to=domain)
    return conn
