"""Bookmarks in both formats (XEP-0411 1.1 conversion between XEP-0048 1.2
private-storage bookmarks and XEP-0402 1.2 PEP Native Bookmarks).

The PEP node ``urn:xmpp:bookmarks:1`` (one item per room, item id = room
JID) is where the rooms live once it exists:

- an old client writing ``<storage xmlns='storage:bookmarks'/>`` to private
  storage (XEP-0049) has its rooms published to that node, changed ones
  republished, removed ones retracted (so new clients are notified), and
  the element itself kept for its ``<url/>`` bookmarks;
- an old client reading private storage gets the rooms from that node, so
  what a new client added or removed shows up there.

Without the node (nobody used XEP-0402 yet) the stored element is returned
as it was written.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.words.xish import domish

from chatbx_server.features.private import Override
from chatbx_server.modules import Feature
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError, parse_stanza

__all__ = ["BookmarksFeature", "BOOKMARKS", "LEGACY"]

LEGACY = "storage:bookmarks"
BOOKMARKS = "urn:xmpp:bookmarks:1"
COMPAT = "urn:xmpp:bookmarks:1#compat"
#: XEP-0402 §4: the node's configuration
OPTIONS = {"access_model": "whitelist", "max_items": "max", "send_last_published_item": "never",
           "persist_items": True}
KEY = "{%s}storage" % LEGACY


def _text(el: domish.Element, name: str) -> Optional[str]:
    for child in el.elements():
        if child.name == name:
            return str(child)
    return None


def _true(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true")


def to_native(conference: domish.Element) -> domish.Element:
    """A XEP-0048 ``<conference/>`` as a XEP-0402 one (without the jid)."""
    native = domish.Element((BOOKMARKS, "conference"))
    if conference.getAttribute("name"):
        native["name"] = conference["name"]
    if _true(conference.getAttribute("autojoin")):
        native["autojoin"] = "true"
    for name in ("nick", "password"):
        value = _text(conference, name)
        if value:
            native.addElement(name, content=value)
    return native


def to_legacy(jid: str, native: domish.Element) -> domish.Element:
    legacy = domish.Element((LEGACY, "conference"))
    legacy["jid"] = jid
    if native.getAttribute("name"):
        legacy["name"] = native["name"]
    legacy["autojoin"] = "true" if _true(native.getAttribute("autojoin")) else "false"
    for name in ("nick", "password"):
        value = _text(native, name)
        if value:
            legacy.addElement(name, content=value)
    return legacy


class BookmarksFeature(Feature):
    name = "bookmarks"
    spec = "XEP-0411 1.1 (Bookmarks Conversion), XEP-0402 1.2, XEP-0048 1.2"
    depends = ("private", "pep")
    account_disco_features = (COMPAT,)

    def setup(self) -> None:
        private: Any = self.server.modules.get("private")
        self.private = private
        self.pep: Any = self.server.modules.get("pep")
        private.override(KEY, Override(self.get, self.set))

    def teardown(self) -> None:
        self.private.overrides.pop(KEY, None)
        super().teardown()

    async def get(self, owner: str) -> Optional[str]:
        stored = await self.server.stores.private.get(owner, KEY)
        items = await self.pep.items(owner, BOOKMARKS)
        if items is None:
            return stored
        storage = domish.Element((LEGACY, "storage"))
        for item in items:
            if item.payload:
                storage.addChild(to_legacy(item.item_id, parse_stanza(item.payload)))
        if stored:
            for el in parse_stanza(stored).elements():
                if el.name == "url":
                    storage.addChild(el)
        return storage.toXml()

    async def set(self, owner: str, storage: domish.Element) -> None:
        wanted: dict[str, domish.Element] = {}
        for el in storage.elements(LEGACY, "conference"):
            try:
                jid = JID.parse(el.getAttribute("jid") or "")
            except InvalidJID:
                raise StanzaError("bad-request", text="a conference without a valid jid") from None
            wanted[jid.bare] = to_native(el)
        if not await self.server.stores.private.set(owner, KEY, storage.toXml(),
                                                     self.private.options.max_bytes):
            raise StanzaError("not-acceptable", text="private storage is full")
        existing = {i.item_id: i.payload for i in (await self.pep.items(owner, BOOKMARKS) or [])}
        for room, native in wanted.items():
            if existing.get(room) != native.toXml():
                await self.pep.publish_item(owner, BOOKMARKS, room, native, OPTIONS)
        for room in existing:
            if room not in wanted:
                await self.pep.retract_item(owner, BOOKMARKS, room)
