"""A bound client session: what features see of a c2s connection.

Kept small (slots, no per-session dicts unless a feature needs one):
idle connections should cost kilobytes.

Delivery goes through the CSI buffer (XEP-0352, ``csi``, only while the
client is inactive) and the stream-management queue (XEP-0198, ``sm``, once
enabled), then to the stream. While a resumable session is detached from
its connection (hibernating), ``stream`` is a stand-in that writes nothing
and whose ``close_stream`` ends the hibernation, so what is sent meanwhile
waits in the SM queue.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.words.xish import domish

from chatbx_server.http.metrics import STANZAS_OUT
from chatbx_server.c2s.smacks import StreamManagement
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.serializer import CLIENT_STREAMS


class ClientSession:
    """A resource bound on a client stream."""

    __slots__ = (
        "stream", "jid", "bare_jid", "bare", "resource", "host",
        "priority", "presence", "roster_requested", "directed",
        "closed", "peer", "secure", "data", "sm", "csi", "__weakref__",
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
        #: XEP-0198 state (c2s/smacks.py) once the client enabled it
        self.sm: Optional[StreamManagement] = None
        #: XEP-0352 buffer (features/csi.py) while the client is inactive
        self.csi: Any = None

    @property
    def available(self) -> bool:
        return self.presence is not None

    def send(self, element: domish.Element) -> None:
        """Deliver a stanza to the client (serialized once, by the stream)."""
        if self.closed:
            return
        counter = STANZAS_OUT.get(element.name)
        if counter is not None:
            counter.inc()
        csi = self.csi
        if csi is not None and csi.hold(self, element):
            return
        self.write(element)

    def send_serialized(self, name: str, data: bytes) -> bool:
        """Deliver a stanza the client streams' serializer wrote already
        (one another cluster node forwarded), without its element, when
        nothing on the way needs the element: no CSI buffer (it looks
        inside what it holds), no XEP-0198 queue, a stream that writes
        client-stream XML (not WebSocket framing or BOSH). The bytes are
        those :meth:`send` would write. Returns False (nothing sent) when
        the element is needed: the caller parses it and calls :meth:`send`.
        """
        if (self.csi is not None or self.sm is not None
                or getattr(self.stream, "serializer", None) is not CLIENT_STREAMS):
            return False
        if self.closed:
            return True  # as send(): dropped
        counter = STANZAS_OUT.get(name)
        if counter is not None:
            counter.inc()
        self.stream.send_data(data)
        return True

    def write(self, element: domish.Element) -> None:
        """Past the CSI buffer: into the SM queue when enabled, then out.

        A queue over its bound means the client does not acknowledge what
        it gets: it is dropped, not allowed to grow memory (the stanzas
        queued go where undelivered stanzas go when the session ends).
        """
        sm = self.sm
        if sm is None:
            self.stream.send_element(element)
            return
        stream = self.stream
        if not sm.push(stream.send_queued(element)) and not sm.overflowed:
            # Closed on the next turn: closing ends the session, and the
            # caller may be looping over the account's sessions right now.
            sm.overflowed = True
            stream.server.clock.callLater(0, self.close, "policy-violation",
                                          "too many unacknowledged stanzas")
        if not sm.request_outstanding and sm.hibernated is None:
            # XEP-0198 §4: ask for an ack; one request in flight at a time,
            # and only every few stanzas or after a short delay (AckRequests).
            sm.requests.after_send(self, sm)

    def close(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        """End the stream, with a stream error when ``condition`` is given."""
        if not self.closed:
            self.stream.close_stream(condition, text)

    def __repr__(self) -> str:
        return f"<ClientSession {self.jid}>"
