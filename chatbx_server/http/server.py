"""The HTTP listener: one twisted.web Site for upload, WebSocket, BOSH,
host-meta and metrics.

HTTPS uses the c2s TLS contexts (per-domain certificates by SNI). Plain
HTTP is served only to configured reverse proxies (``[http] tls = false``):
a proxy terminates TLS, and only a trusted proxy's ``X-Forwarded-For`` and
``X-Forwarded-Proto`` are believed (RFC 7239 §8.3 on trusting forwarded
headers). Everything else gets 403, so nobody logs in over plain HTTP.

Request bodies are bounded before they are stored: ``gotLength`` sees the
declared length before the first body byte, refuses what is too large with
an immediate response and a closed connection (no 10 MB POST is read only
to be refused), and counts the bytes of bodies without a length. Upload
bodies go straight into a file in the upload store (never into memory); the
upload resource decides, from the signed URL alone, whether to accept one.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Optional, cast

from twisted.logger import Logger
from twisted.web import http, pages, resource, server

from chatbx_server.config import parse_networks
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

Network = Any  # ipaddress.IPv4Network | IPv6Network

#: listen(2) backlog of the HTTP listener (the kernel caps it at
#: net.core.somaxconn). Twisted's default of 50 overflows when a page or a
#: client opens many connections at once (200 parallel uploads: the SYNs
#: past 50 are dropped and retried a second later).
LISTEN_BACKLOG = 1024


class Refused(Exception):
    """A request refused before its body is read: status and a short text."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _Discard:
    """A body sink for refused requests: bytes still arriving go nowhere."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> None:
        pass

    def read(self, *args: Any) -> bytes:
        return b""

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


def in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class ChatbxRequest(server.Request):
    """A request with bounded bodies and reverse-proxy awareness."""

    # Type-only: Twisted's stubs say HTTPChannel/ITransport; ours has .site
    # and a TLS or TCP transport.
    channel: Any
    content: Any
    #: what the body may still grow to (bytes), checked per chunk
    _body_left: Optional[int] = None
    #: refused before the body: nothing is rendered
    refused = False
    #: set by a body handler (upload) that owns the content file
    body_owner: Any = None

    def gotLength(self, length: Optional[int]) -> None:
        site: ChatbxSite = self.channel.site
        method = getattr(self.channel, "_command", b"")
        path = getattr(self.channel, "_path", b"")
        try:
            handler = site.body_handler(method, path)
            if handler is not None:
                self.content, self._body_left = handler.open_body(self, path, length)
                self.body_owner = handler
                return
            limit = site.http_config.max_request_body
            if length is not None and length > limit:
                raise Refused(413, f"request body larger than {limit} bytes")
            self._body_left = limit
        except Refused as exc:
            self.refuse_early(exc.code, exc.text)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        left = self._body_left
        if left is not None:
            left -= len(data)
            self._body_left = left
            if left < 0:
                self.refuse_early(413, "request body too large")
                return
        self.content.write(data)

    def refuse_early(self, code: int, text: str) -> None:
        """Answer now and close: the rest of the body is never read or stored."""
        if self.refused:
            return
        self.refused = True
        owner, self.body_owner = self.body_owner, None
        if owner is not None:
            owner.discard_body(self)
        self.content = _Discard()
        # No "100 Continue" after this answer (allHeadersReceived sends it).
        self.requestHeaders.removeHeader(b"expect")
        body = (text + "\n").encode("utf-8")
        reason = http.RESPONSES.get(code, b"Error")
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n"
                b"Access-Control-Allow-Origin: *\r\n\r\n" % (code, reason, len(body)))
        transport = self.channel.transport
        if transport is not None:
            transport.write(head + body)
        self.channel.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        owner, self.body_owner = self.body_owner, None
        if owner is not None:
            owner.discard_body(self)
        super().connectionLost(reason)

    def process(self) -> None:
        if self.refused:
            return
        site: ChatbxSite = self.channel.site
        if site.proxy_only and not self.from_proxy():
            self.setResponseCode(403)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.write(b"plain HTTP is served to the reverse proxy only\n")
            self.finish()
            return
        super().process()

    # -- who is asking -----------------------------------------------------
    def peer_ip(self) -> str:
        return getattr(self.getClientAddress(), "host", "") or ""

    def from_proxy(self) -> bool:
        return in_networks(self.peer_ip(), self.channel.site.proxies)

    def client_ip(self) -> str:
        """The client's address: the peer, or for a trusted proxy the last
        address in X-Forwarded-For that is not itself a trusted proxy."""
        peer = self.peer_ip()
        proxies = self.channel.site.proxies
        if not in_networks(peer, proxies):
            return peer
        values = self.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        hops = [h.strip().decode("ascii", "replace") for v in values for h in v.split(b",")]
        for hop in reversed(hops):
            if hop and not in_networks(hop, proxies):
                return hop
        return peer

    def isSecure(self) -> bool:
        if self.from_proxy():
            proto = self.getHeader(b"x-forwarded-proto")
            return proto is not None and proto.strip().lower() == b"https"
        return bool(super().isSecure())


class BodyHandler:
    """What a resource implements to take a request body itself (uploads)."""

    def open_body(self, request: ChatbxRequest, path: bytes, length: Optional[int]
                  ) -> tuple[Any, Optional[int]]:
        """The file the body goes into and how many bytes it may have.

        Raises:
            Refused: the request is refused before any byte is stored.
        """
        raise NotImplementedError

    def discard_body(self, request: ChatbxRequest) -> None:
        """The body will not be used (refused, or the connection dropped)."""


class Root(resource.Resource):
    """``/``: only the named children exist; no listings anywhere."""

    def getChild(self, path: bytes, request: Any) -> Any:
        return pages.notFound()

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"chatbx\n"


class ChatbxSite(server.Site):
    """The Site of the HTTP listener.

    Args:
        server: the chatbx Server (config, modules).
        reactor: for the idle timeout.
    """

    requestFactory = ChatbxRequest
    noisy = False

    def __init__(self, chatbx: "Server", reactor: Any = None) -> None:
        self.chatbx = chatbx
        self.http_config = chatbx.config.http
        self.proxies = parse_networks(self.http_config.trusted_proxies, "http.trusted_proxies")
        self.proxy_only = not self.http_config.tls
        #: path prefix -> BodyHandler for PUT/POST bodies it takes itself
        self.body_handlers: dict[bytes, BodyHandler] = {}
        self.root = Root()
        super().__init__(self.root, timeout=self.http_config.idle_timeout, reactor=reactor)

    def body_handler(self, method: bytes, path: bytes) -> Optional[BodyHandler]:
        if method != b"PUT":
            return None
        for prefix, handler in self.body_handlers.items():
            if path.startswith(prefix):
                return handler
        return None

    def log(self, request: Any) -> None:
        # No access log lines with query strings: upload URLs carry tokens.
        log.debug("http {method} {path} {code}", method=request.method.decode("ascii", "replace"),
                  path=request.path.decode("ascii", "replace")[:200], code=request.code)


def base_url(chatbx: "Server", domain: str) -> str:
    """The public URL of the HTTP listener for ``domain``, without a trailing slash."""
    config = chatbx.config
    url = config.http.external_url
    if url:
        return url.replace("{domain}", domain)
    endpoint = config.listen.http
    port = endpoint.port if endpoint is not None else 443
    return f"https://{domain}" if port == 443 else f"https://{domain}:{port}"


def http_enabled(chatbx: "Server") -> bool:
    """There is an HTTP listener or a public URL that reaches one."""
    config = chatbx.config
    return config.listen.http is not None or bool(config.http.external_url)


def _child(parent: resource.Resource, name: bytes, child: Any) -> None:
    # Our resources provide IResource through Resource's @implementer,
    # which mypy cannot see.
    parent.putChild(name, cast(resource.IResource, child))


def build_site(chatbx: "Server", reactor: Any = None) -> ChatbxSite:
    """The Site with every HTTP service the configuration enables."""
    from chatbx_server.http import upload

    site = ChatbxSite(chatbx, reactor)
    upload_resource = upload.UploadResource(chatbx)
    _child(site.root, b"upload", upload_resource)
    site.body_handlers[b"/upload/"] = upload_resource
    from chatbx_server.http import metrics

    _child(site.root, b"metrics", metrics.MetricsResource(chatbx))
    from chatbx_server.http import hostmeta

    _child(site.root, b".well-known", hostmeta.WellKnown(chatbx))
    if chatbx.config.http.websocket:
        from chatbx_server.http import websocket

        _child(site.root, b"xmpp-websocket", websocket.websocket_resource(chatbx))
    if chatbx.config.http.bosh:
        from chatbx_server.http import bosh

        _child(site.root, b"http-bind", bosh.BoshResource(chatbx))
    from chatbx_server.http import invites

    invites.install(chatbx, site.root)  # /invite/, /register, /password, /captcha/
    return site


__all__ = ["LISTEN_BACKLOG", "BodyHandler", "ChatbxRequest", "ChatbxSite", "Refused", "base_url",
           "build_site", "http_enabled", "in_networks"]
