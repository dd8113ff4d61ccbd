"""A bound client session: what features see of a c2s connection.

Kept small (slots, no per-session dicts unless a feature needs one):
idle connections should cost kilobytes.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.words.xish import domish

from chatbx_server.http.metrics import STANZAS_OUT
from chatbx_server.xmpp.jid import JID


class ClientSession:
    """A resource bound on a client stream."""

    __slots__ = (
        "stream", "jid", "bare_jid", "bare", "resource", "host",
        "priority", "presence", "roster_requested", "directed",
        "closed", "peer", "secure", "data", "__weakref__",
    )

    def __init__(self, stream: Any, jid: JID, peer: str = "", secure: bool = True) -> None:
        self.stream = stream
        self.jid = jid
        self.bare_jid = jid.bare_jid()
        self.bare = jid.bare
        self.resource = jid.resource
        self.host = jid.host
        #: RFC 6121 §4.7.2.3; meaningful once available
        self.priority = 0
        #: the last broadcast available presence; None = not available
        self.presence: Optional[domish.Element] = None
        #: asked for the roster: an "interested resource" (RFC 6121 §2.1.6)
        self.roster_requested = False
        #: full/bare JIDs this resource sent directed presence to (§4.6)
        self.directed: Optional[set[str]] = None
        self.closed = False
        self.peer = peer
        self.secure = secure
        #: per-feature state, created on first use
        self.data: Optional[dict[str, Any]] = None

    @property
    def available(self) -> bool:
        return self.presence is not None

    def send(self, element: domish.Element) -> None:
        """Deliver a stanza to the client (serialized once, here)."""
        if not self.closed:
            counter = STANZAS_OUT.get(element.name)
            if counter is not None:
                counter.inc()
            self.stream.send_element(element)

    def close(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        """End the stream, with a stream error when ``condition`` is given."""
        if not self.closed:
            self.stream.close_stream(condition, text)

    def __repr__(self) -> str:
        return f"<ClientSession {self.jid}>"
