"""Discussion history sent on join (XEP-0045 §7.2.15).

The room keeps its last messages in memory (bounded by the service's
``history_size``); a joining occupant gets those its ``<history/>`` asks for
(maxstanzas, maxchars, seconds, since; all limits apply together), at most
the room's configured length, each with an XEP-0203 delay stamped by the
room. A persistent room refills this from its archive when it is loaded.
"""

from __future__ import annotations

import collections
from datetime import datetime, timezone
from typing import Iterator, NamedTuple, Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns


class Entry(NamedTuple):
    #: the message as broadcast, without 'to' (children shared, never changed)
    stanza: domish.Element
    stamp: float
    #: characters of the serialized stanza, what maxchars counts
    chars: int
    stanza_id: str
    #: the sender's real bare JID (who may retract it)
    sender: Optional[str]


def stamp_text(when: float) -> str:
    """XEP-0082 DateTime in UTC, with milliseconds when there are any."""
    dt = datetime.fromtimestamp(when, timezone.utc)
    ms = dt.microsecond // 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}" if ms else "") + "Z"


def parse_stamp(text: str) -> float:
    """Parse an XEP-0082 DateTime; ValueError when it is not one."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class History:
    """The last ``size`` messages of one room."""

    def __init__(self, size: int) -> None:
        self.entries: collections.deque[Entry] = collections.deque(maxlen=max(size, 0))

    def add(self, stanza: domish.Element, stamp: float, stanza_id: str,
            sender: Optional[str]) -> None:
        if self.entries.maxlen:
            self.entries.append(Entry(stanza, stamp, len(stanza.toXml()), stanza_id, sender))

    def find(self, stanza_id: str) -> Optional[Entry]:
        for entry in self.entries:
            if entry.stanza_id == stanza_id:
                return entry
        return None

    def replace(self, stanza_id: str, stanza: domish.Element) -> None:
        """Swap a message for its tombstone (retraction, moderation)."""
        for i, entry in enumerate(self.entries):
            if entry.stanza_id == stanza_id:
                self.entries[i] = entry._replace(stanza=stanza, chars=len(stanza.toXml()))
                return

    def select(self, request: Optional[domish.Element], length: int, now: float) -> list[Entry]:
        """The entries a join's ``<history/>`` asks for, oldest first.

        Without ``<history/>`` the room's configured length is sent; bad
        attribute values are ignored (the default applies), as Prosody does.
        """
        maxstanzas = length
        maxchars: Optional[int] = None
        since: Optional[float] = None
        if request is not None:
            def number(name: str) -> Optional[int]:
                raw = request.getAttribute(name)
                try:
                    return max(0, int(raw)) if raw is not None else None
                except ValueError:
                    return None

            ms = number("maxstanzas")
            if ms is not None:
                maxstanzas = min(ms, length)
            maxchars = number("maxchars")
            seconds = number("seconds")
            if seconds is not None:
                since = now - seconds
            raw_since = request.getAttribute("since")
            if raw_since:
                try:
                    value = parse_stamp(raw_since)
                    since = value if since is None else max(since, value)
                except ValueError:
                    pass
        out: list[Entry] = []
        chars = 0
        for entry in reversed(self.entries):
            if len(out) >= maxstanzas:
                break
            if since is not None and entry.stamp < since:
                break
            if maxchars is not None:
                chars += entry.chars
                if chars > maxchars:
                    break
            out.append(entry)
        out.reverse()
        return out

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


def delayed(entry: Entry, to: str, room: str) -> domish.Element:
    """A copy of a history message for ``to`` with the room's delay stamp."""
    el = domish.Element((entry.stanza.uri, entry.stanza.name))
    el.attributes = dict(entry.stanza.attributes)
    el["to"] = to
    el.children = list(entry.stanza.children)
    delay = el.addElement((ns.DELAY, "delay"))
    delay["from"] = room
    delay["stamp"] = stamp_text(entry.stamp)
    return el
