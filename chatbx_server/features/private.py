"""Private XML storage (XEP-0049 1.2): one element per namespace+name,
readable and writable only by the account itself, bounded in bytes per
account (``max_bytes``); a write past it gets not-acceptable and changes
nothing.

Other features may take over one key (bookmarks.py keeps XEP-0048
``storage:bookmarks`` in PEP, XEP-0411): they register an
:class:`Override` with :meth:`PrivateFeature.override`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, result_reply

__all__ = ["PrivateFeature", "PRIVATE", "Override"]

PRIVATE = "jabber:iq:private"
#: XEP-0049 §3: namespaces a client may not store under
_RESERVED = frozenset((ns.CLIENT, ns.SERVER, PRIVATE, "vcard-temp", ns.ROSTER))


@dataclass(frozen=True)
class Override:
    """get(owner) -> stored XML or None; set(owner, element) stores."""

    get: Callable[[str], Awaitable[Optional[str]]]
    set: Callable[[str, domish.Element], Awaitable[None]]


def key_of(el: domish.Element) -> str:
    return "{%s}%s" % (el.uri or "", el.name)


class PrivateFeature(Feature):
    name = "private"
    spec = "XEP-0049 1.2 (Private XML Storage)"
    account_disco_features = (PRIVATE,)
    disco_features = (PRIVATE,)

    @dataclass(frozen=True)
    class Options:
        #: bytes of private XML one account may store
        max_bytes: int = 256 * 1024

        def __post_init__(self) -> None:
            if self.max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")

    def setup(self) -> None:
        self.overrides: dict[str, Override] = {}
        self.iq("get", "bare", PRIVATE, "query", self.on_get)
        self.iq("set", "bare", PRIVATE, "query", self.on_set)

    def override(self, key: str, handler: Override) -> None:
        self.overrides[key] = handler

    def _element(self, event: StanzaEvent) -> domish.Element:
        owner = event.to.bare
        if event.sender is None or event.sender.bare != owner:
            raise StanzaError("forbidden")  # §3: only the account itself
        children = list(event.stanza.firstChildElement().elements())
        if len(children) != 1:
            raise StanzaError("not-acceptable", text="exactly one element per request")
        el = children[0]
        if not el.uri or el.uri in _RESERVED:
            raise StanzaError("not-acceptable", text="reserved or missing namespace")
        return el

    async def on_get(self, event: StanzaEvent) -> domish.Element:
        el = self._element(event)
        key = key_of(el)
        owner = event.to.bare
        override = self.overrides.get(key)
        try:
            xml = await (override.get(owner) if override else
                         self.server.stores.private.get(owner, key))
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        reply = result_reply(event.stanza)
        query = reply.addElement((PRIVATE, "query"))
        if xml is None:
            query.addElement((el.uri, el.name))
        else:
            query.addRawXml(xml)
        return reply

    async def on_set(self, event: StanzaEvent) -> None:
        el = self._element(event)
        key = key_of(el)
        owner = event.to.bare
        override = self.overrides.get(key)
        if override is not None:
            await override.set(owner, el)
            return None
        stored = await self.server.stores.private.set(owner, key, el.toXml(), self.options.max_bytes)
        if not stored:
            raise StanzaError("not-acceptable",
                              text=f"private storage holds at most {self.options.max_bytes} bytes")
        return None
