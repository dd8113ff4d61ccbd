"""Message delivery to local accounts (RFC 6121 §8.5.2, §8.5.3).

``message/full`` goes to the connected resource, or is treated as if sent
to the bare JID; ``message/bare`` goes to the available resources with the
highest non-negative priority (chat, normal; Prosody's choice among the
options §8.5.2.1.1 allows) or all non-negative ones (headline). What no
resource takes falls through to lower priorities (offline storage), then
to this module's fallback, which answers the way §8.5.2.2 says.

Each message passes each event's observers once. A message to a full JID
whose resource is gone (§8.5.3.2.1) has already been through the
``message/full`` handlers above DELIVER (archive, carbons, filters); its
bare-JID delivery enters ``message/bare`` at DELIVER
(``events.fire_from``), so delivery, offline storage and the fallback run
and a handler hooked on both events above DELIVER does not run twice
(Prosody's mod_message calls its bare-JID delivery directly for the same
reason). A feature that must see every message to an account, however it
was addressed, hooks both events above DELIVER.
"""

from __future__ import annotations

from typing import Any

from chatbx_server.events import DELIVER, FALLBACK, StanzaEvent
from chatbx_server.modules import Feature


class MessageFeature(Feature):
    name = "message"
    spec = "RFC 6121 §8.5 (message delivery)"

    def setup(self) -> None:
        self.hook("message/full", self.on_full, DELIVER)
        self.hook("message/bare", self.on_bare, DELIVER)
        self.hook("message/bare", self.on_undeliverable, FALLBACK)
        self.hook("message/host", self.on_host, FALLBACK)

    def on_full(self, event: StanzaEvent) -> Any:
        to = event.to
        session = self.server.sessions.get(to.bare, to.resource)
        if session is not None:
            session.send(event.stanza)
            return True
        mtype = event.stanza.getAttribute("type", "normal")
        if mtype == "error":
            return True  # §8.5.3.2.1: silently ignored
        if mtype == "groupchat":
            return self.server.router.bounce(event.stanza, "service-unavailable")
        # chat, normal, headline: as if addressed to the bare JID, from
        # delivery down (see the module docstring).
        event.kind = "bare"
        return self.server.events.fire_from("message/bare", event, DELIVER)

    def on_bare(self, event: StanzaEvent) -> Any:
        mtype = event.stanza.getAttribute("type", "normal")
        if mtype in ("groupchat", "error"):
            return None
        sessions = self.server.sessions.available(event.to.bare)
        if len(sessions) == 1:  # the common case, without the filtering below
            if sessions[0].priority < 0:
                return None
            sessions[0].send(event.stanza)
            return True
        sessions = [s for s in sessions if s.priority >= 0]
        if not sessions:
            return None
        if mtype != "headline":
            top = max(s.priority for s in sessions)
            sessions = [s for s in sessions if s.priority == top]
        for session in sessions:
            session.send(event.stanza)
        return True

    def on_undeliverable(self, event: StanzaEvent) -> Any:
        mtype = event.stanza.getAttribute("type", "normal")
        if mtype in ("headline", "error"):
            return True  # §8.5.2.2.1: silently ignored
        return self.server.router.bounce(event.stanza, "service-unavailable")

    def on_host(self, event: StanzaEvent) -> Any:
        # RFC 6120 §10.5.4 leaves messages to the server to local policy;
        # like Prosody, chatbx drops them without an error.
        return True
