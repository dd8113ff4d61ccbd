"""Client State Indication (XEP-0352 1.0.0): quiet phones while they sleep.

A client that says ``<inactive/>`` (§3, after bind) gets a small buffer on
its session (``session.csi``): presence updates (available/unavailable)
and pure chat-state notifications (XEP-0085) are held back, the latest per
sender replacing the one before (bounded, ``max_buffered``). The buffer
goes out, in order, before anything important (a message with a body or
an encrypted payload, a carbon of one, or a subscription request), when it
is full, and when the client says ``<active/>``. Everything else (IQs,
receipts, markers) passes straight through. Held stanzas are not yet
delivered, so stream management counts them only when they leave.

Like Prosody's mod_csi_simple; one debug line per flush counts what the
buffer saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature

log = Logger(observer=log_observer)

NS = "urn:xmpp:csi:0"
CHATSTATES = "http://jabber.org/protocol/chatstates"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
#: payloads that make a message worth waking the device for
ENCRYPTED = frozenset((
    "eu.siacs.conversations.axolotl",  # OMEMO (XEP-0384 0.3)
    "urn:xmpp:omemo:2",                # OMEMO (XEP-0384 0.8+)
    "urn:xmpp:openpgp:0",              # XEP-0373
    "jabber:x:encrypted",              # XEP-0027
))
#: children that do not change what a chat-state-only message is
_INCIDENTAL = frozenset((CHATSTATES, "urn:xmpp:hints", "urn:xmpp:delay", "urn:xmpp:sid:0"))

HOLD, FLUSH, PASS = "hold", "flush", "pass"


def _important_message(message: domish.Element) -> bool:
    for child in message.elements():
        if child.name == "body" or child.uri in ENCRYPTED:
            return True
    return False


def _carbon_payload(message: domish.Element) -> Optional[domish.Element]:
    """The forwarded message of a XEP-0280 carbon, if this is one."""
    for child in message.elements():
        if child.uri == CARBONS and child.name in ("sent", "received"):
            for forwarded in child.elements():
                if forwarded.uri == FORWARD and forwarded.name == "forwarded":
                    for inner in forwarded.elements():
                        if inner.name == "message":
                            return inner
    return None


def classify(stanza: domish.Element) -> str:
    """HOLD (may wait, latest per sender wins), FLUSH (important: the
    buffer goes out first) or PASS (goes out now, buffer untouched)."""
    name = stanza.name
    if name == "presence":
        ptype = stanza.getAttribute("type")
        if ptype is None or ptype == "unavailable":
            return HOLD
        if ptype in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return FLUSH
        return PASS
    if name != "message":
        return PASS
    if _important_message(stanza):
        return FLUSH
    carbon = _carbon_payload(stanza)
    if carbon is not None:
        return FLUSH if _important_message(carbon) else PASS
    state = False
    for child in stanza.elements():
        if child.uri == CHATSTATES:
            state = True
        elif child.uri not in _INCIDENTAL and child.name != "thread":
            return PASS
    return HOLD if state else PASS


class CSIBuffer:
    """What an inactive session holds back; lives on ``session.csi``."""

    __slots__ = ("held", "superseded", "limit")

    def __init__(self, limit: int) -> None:
        #: (kind, sender) -> the latest such stanza, in arrival order
        self.held: dict[tuple[str, str], domish.Element] = {}
        #: stanzas replaced by a later one from the same sender
        self.superseded = 0
        self.limit = limit

    def hold(self, session: Any, stanza: domish.Element) -> bool:
        """True when ``stanza`` is held; otherwise it may be sent now (the
        buffer went out first when the stanza is important)."""
        kind = classify(stanza)
        if kind == PASS:
            return False
        if kind == FLUSH:
            self.flush(session, "important")
            return False
        key = (stanza.name, stanza.getAttribute("from", ""))
        held = self.held
        if held.pop(key, None) is not None:
            self.superseded += 1
        held[key] = stanza
        if len(held) >= self.limit:
            self.flush(session, "full")
        return True

    def flush(self, session: Any, reason: str) -> None:
        held = self.held
        if not held and not self.superseded:
            return
        stanzas = list(held.values())
        held.clear()
        superseded, self.superseded = self.superseded, 0
        log.debug("csi: flushed {count} stanzas to {jid} ({reason}), {saved} superseded ones not sent",
                  count=len(stanzas), jid=session.jid.full, reason=reason, saved=superseded)
        for stanza in stanzas:
            session.write(stanza)


class CSIFeature(Feature):
    name = "csi"
    spec = "XEP-0352 1.0.0 (Client State Indication)"

    @dataclass(frozen=True)
    class Options:
        #: stanzas held back per inactive session before they are sent anyway
        max_buffered: int = 100

        def __post_init__(self) -> None:
            if self.max_buffered < 1:
                raise ValueError("max_buffered must be at least 1")

    def setup(self) -> None:
        self.hook(f"stream-element/{NS}:inactive", self.on_inactive)
        self.hook(f"stream-element/{NS}:active", self.on_active)
        # XEP-0386 §4: a Bind2 request may set the state at login.
        self.hook(f"bind2-inline/{NS}:inactive", self.on_inline)
        self.hook(f"bind2-inline/{NS}:active", self.on_inline)
        # A session moving to another node (features/smacks_cluster.py).
        self.hook("session/export", self.on_export)
        self.hook("session/import", self.on_import)

    def stream_features(self, stream: Any) -> list[domish.Element]:
        return [domish.Element((NS, "csi"))]

    def on_inactive(self, item: tuple[Any, domish.Element]) -> bool:
        session, _ = item
        if session.csi is None:
            session.csi = CSIBuffer(self.options.max_buffered)
        return True

    def on_inline(self, item: tuple[Any, domish.Element]) -> None:
        session, element = item
        if element.name == "inactive":
            self.on_inactive(item)
        else:
            self.on_active(item)
        return None  # nothing to say in <bound/>

    def on_active(self, item: tuple[Any, domish.Element]) -> bool:
        session, _ = item
        buffer, session.csi = session.csi, None
        if buffer is not None:
            buffer.flush(session, "active")
        return True

    def on_export(self, item: tuple[Any, dict[str, Any]]) -> None:
        """What is held goes into the SM queue, which moves; the new node
        keeps holding for the still inactive client."""
        session, state = item
        buffer, session.csi = session.csi, None
        if buffer is not None:
            buffer.flush(session, "moved")
            state["csi"] = True

    def on_import(self, item: tuple[Any, dict[str, Any]]) -> None:
        session, state = item
        if state.get("csi"):
            session.csi = CSIBuffer(self.options.max_buffered)


__all__ = ["CSIFeature", "CSIBuffer", "classify"]
