"""Named events with handlers pre-sorted by priority.

The router computes one event name per stanza ("message/bare",
"iq-get/host/urn:xmpp:ping:ping", ...) and looks it up in a dict: no walk
over every handler, no XPath (the scheme Prosody made familiar). Handlers
run from the highest priority down; the first that returns something other
than None has handled the event (a Deferred counts).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.logger import Logger
from chatbx_server.logs import log_observer
from twisted.words.xish import domish

log = Logger(observer=log_observer)

# Priorities, highest first. Filters may drop or rewrite, archive and copy
# observe, deliver hands the stanza over, fallback answers what is left.
FILTER = 1000
CHECK = 500
ARCHIVE = 200
COPY = 100
DELIVER = 0
OFFLINE = -100
FALLBACK = -1000

Handler = Callable[[Any], Any]


class StanzaEvent:
    """What a stanza handler receives."""

    __slots__ = ("stanza", "origin", "to", "sender", "kind")

    def __init__(self, stanza: domish.Element, origin: Any, to: Any, sender: Any, kind: str):
        self.stanza = stanza
        #: the local client session that sent the stanza, or None
        self.origin = origin
        #: prepared JID of the target
        self.to = to
        #: prepared JID of the sender (may be None for server-made stanzas)
        self.sender = sender
        #: "bare", "full" or "host": how the target is addressed
        self.kind = kind


class EventBus:
    """Event name -> handlers sorted by priority, rebuilt on change."""

    def __init__(self) -> None:
        self._entries: dict[str, list[tuple[int, int, Handler]]] = {}
        self._sorted: dict[str, tuple[Handler, ...]] = {}
        #: name -> ((priority, handler), ...) in the same order, for fire_from
        self._levels: dict[str, tuple[tuple[int, Handler], ...]] = {}
        self._seq = 0

    def on(self, name: str, handler: Handler, priority: int = DELIVER) -> None:
        """Register ``handler``; equal priorities run in registration order."""
        self._seq += 1
        entries = self._entries.setdefault(name, [])
        entries.append((-priority, self._seq, handler))
        entries.sort(key=lambda e: (e[0], e[1]))
        self._index(name, entries)

    def off(self, name: str, handler: Handler) -> None:
        entries = [e for e in self._entries.get(name, []) if e[2] is not handler]
        if entries:
            self._entries[name] = entries
            self._index(name, entries)
        else:
            self._entries.pop(name, None)
            self._sorted.pop(name, None)
            self._levels.pop(name, None)

    def _index(self, name: str, entries: list[tuple[int, int, Handler]]) -> None:
        self._sorted[name] = tuple(e[2] for e in entries)
        self._levels[name] = tuple((-e[0], e[2]) for e in entries)

    def has(self, name: str) -> bool:
        return name in self._sorted

    def fire(self, name: str, event: Any) -> Optional[Any]:
        """Run the handlers of ``name``; return the first non-None result."""
        handlers = self._sorted.get(name)
        if handlers is None:
            return None
        for handler in handlers:
            result = handler(event)
            if result is not None:
                return result
        return None

    def fire_from(self, name: str, event: Any, priority: int) -> Optional[Any]:
        """Like :meth:`fire`, but only the handlers at ``priority`` or below.

        For a stanza that has already been through the handlers above
        ``priority`` under another event name: message/full falling back to
        the bare-JID rules enters message/bare at DELIVER, so observers
        hooked on both (archive, carbons) do not see it twice.
        """
        for level, handler in self._levels.get(name, ()):
            if level > priority:
                continue
            result = handler(event)
            if result is not None:
                return result
        return None

    def fire_all(self, name: str, event: Any) -> None:
        """Run every handler (notifications such as session/closed).

        One failing handler is logged and does not stop the others: a
        broken feature must not leave the rest of the server half-notified.
        """
        for handler in self._sorted.get(name, ()):
            try:
                handler(event)
            except Exception:
                log.failure("handler for {event_name} failed", event_name=name)
