"""``/.well-known/host-meta`` and ``host-meta.json`` (XEP-0156 §3, RFC 6415).

Announce the WebSocket (``urn:xmpp:alt-connections:websocket``) and BOSH
(``urn:xmpp:alt-connections:xbosh``) URLs of the domain the request names
in its Host header (the first hosted domain for anything else), so web
clients find them from the JID alone. CORS is open: browsers fetch this
from other origins.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.web import pages, resource

from chatbx_server.xmpp.serializer import escape_attr

if TYPE_CHECKING:
    from chatbx_server.server import Server

WEBSOCKET_REL = "urn:xmpp:alt-connections:websocket"
BOSH_REL = "urn:xmpp:alt-connections:xbosh"


def links(chatbx: "Server", domain: str) -> list[tuple[str, str]]:
    """(rel, href) of the enabled alternative connection methods of ``domain``."""
    from chatbx_server.http.server import base_url

    base = base_url(chatbx, domain)
    out = []
    config = chatbx.config.http
    if config.websocket:
        ws_base = "wss://" + base[8:] if base.startswith("https://") else "ws://" + base[7:]
        out.append((WEBSOCKET_REL, ws_base + "/xmpp-websocket"))
    if config.bosh:
        out.append((BOSH_REL, base + "/http-bind"))
    return out


class HostMeta(resource.Resource):
    isLeaf = True

    def __init__(self, chatbx: "Server", as_json: bool) -> None:
        super().__init__()
        self.chatbx = chatbx
        self.as_json = as_json

    def render_GET(self, request: Any) -> bytes:
        host = request.getRequestHostname().decode("ascii", "replace").lower()
        if host not in self.chatbx.hosts:
            host = sorted(self.chatbx.hosts)[0]
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"cache-control", b"public, max-age=3600")
        found = links(self.chatbx, host)
        if self.as_json:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"links": [{"rel": r, "href": h} for r, h in found]}).encode()
        request.setHeader(b"content-type", b"application/xrd+xml")
        body = "".join(f"<Link rel='{escape_attr(r)}' href='{escape_attr(h)}'/>" for r, h in found)
        return (f"<?xml version='1.0' encoding='utf-8'?><XRD xmlns='http://docs.oasis-open.org/ns/"
                f"xri/xrd-1.0'>{body}</XRD>").encode("utf-8")


class WellKnown(resource.Resource):
    """``/.well-known/``: host-meta only."""

    def __init__(self, chatbx: "Server") -> None:
        super().__init__()
        from chatbx_server.http.server import _child

        _child(self, b"host-meta", HostMeta(chatbx, False))
        _child(self, b"host-meta.json", HostMeta(chatbx, True))

    def getChild(self, path: bytes, request: Any) -> Any:
        return pages.notFound()

    def render(self, request: Any) -> bytes:
        request.setResponseCode(404)
        return b"not found\n"
