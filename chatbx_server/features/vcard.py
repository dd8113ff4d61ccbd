"""vcard-temp (XEP-0054 1.2), vCard-based avatars (XEP-0153 1.1) and the
PEP avatar conversion (XEP-0398 0.2).

- Every account has one vCard, stored whole and bounded in bytes
  (``max_bytes``); anyone may read it (as Prosody does), only the account
  writes it. A JID without an account gets item-not-found.
- XEP-0153: the SHA-1 of the vCard photo is added to the account's
  broadcast presence as ``<x xmlns='vcard-temp:x:update'><photo/></x>``
  when the client did not put one there itself.
- XEP-0398: a vCard with a photo is published as a User Avatar (XEP-0084)
  to the account's PEP nodes; a User Avatar a client publishes with PEP
  becomes the vCard's photo. Each side is only written when the hash
  differs, so the two never chase each other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import DELIVER, FILTER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.xmpp.stanzas import StanzaError, parse_stanza, result_reply

log = Logger(observer=log_observer)

__all__ = ["VCardFeature", "photo_of", "VCARD", "VCARD_UPDATE", "AVATAR_DATA", "AVATAR_METADATA"]

VCARD = "vcard-temp"
VCARD_UPDATE = "vcard-temp:x:update"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_METADATA = "urn:xmpp:avatar:metadata"
CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
#: XEP-0084 §4.2 / XEP-0398: the avatar nodes are readable like presence
AVATAR_OPTIONS = {"access_model": "presence", "max_items": 1}


def _child(parent: domish.Element, name: str) -> Optional[domish.Element]:
    for el in parent.elements():
        if el.name == name:
            return el
    return None


def photo_of(vcard: domish.Element) -> Optional[tuple[str, bytes]]:
    """(MIME type, bytes) of a vCard's embedded PHOTO, if it has one."""
    photo = _child(vcard, "PHOTO")
    if photo is None:
        return None
    binval = _child(photo, "BINVAL")
    if binval is None:
        return None
    try:
        data = base64.b64decode("".join(str(binval).split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data:
        return None
    mime = _child(photo, "TYPE")
    return (str(mime).strip() if mime is not None else "image/png") or "image/png", data


def _when_done(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires (with None) once ``d`` has, leaving ``d``'s result alone."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


class VCardFeature(Feature):
    name = "vcard"
    spec = "XEP-0054 1.2 (vcard-temp), XEP-0153 1.1 (vCard-Based Avatars), XEP-0398 0.2"
    disco_features = (VCARD,)
    account_disco_features = (VCARD, CONVERSION)
    soft_depends = ("pep",)

    @dataclass(frozen=True)
    class Options:
        #: bytes of one account's vCard (serialized XML, photo included)
        max_bytes: int = 128 * 1024
        #: accounts whose photo hash (XEP-0153) is kept in memory
        hash_cache_size: int = 10000

        def __post_init__(self) -> None:
            if self.max_bytes < 1 or self.hash_cache_size < 1:
                raise ValueError("max_bytes and hash_cache_size must be at least 1")

    def setup(self) -> None:
        #: account -> SHA-1 of its photo ('' for none), least recently used
        #: first; kept after logout (bounded) so a reconnect reads no vCard
        self._hashes: OrderedDict[str, str] = OrderedDict()
        #: account -> its PEP-avatar-to-vCard conversion in progress
        self._converting: dict[str, defer.Deferred[None]] = {}
        self.iq("get", "bare", VCARD, "vCard", self.on_get)
        self.iq("set", "bare", VCARD, "vCard", self.on_set)
        self.hook("session/bound", self.on_bound, DELIVER)
        self.hook("pre-presence/bare", self.on_presence, FILTER)
        self.hook("pep/published", self.on_pep_published, DELIVER)

    @property
    def pep(self) -> Any:
        return self.server.modules.get("pep")

    # -- iq ----------------------------------------------------------------------
    async def on_get(self, event: StanzaEvent) -> domish.Element:
        converting = self._converting.get(event.to.bare)
        if converting is not None:
            # Read what the avatar just published became, not the old photo.
            await _when_done(converting)
        try:
            xml = await self.server.stores.vcard.get(event.to.bare)
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        reply = result_reply(event.stanza)
        if xml is None:
            reply.addElement((VCARD, "vCard"))
        else:
            reply.addRawXml(xml)
        return reply

    async def on_set(self, event: StanzaEvent) -> None:
        owner = event.to.bare
        if event.sender is None or event.sender.bare != owner:
            raise StanzaError("forbidden")
        vcard = event.stanza.firstChildElement()
        xml = vcard.toXml()
        if len(xml.encode("utf-8")) > self.options.max_bytes:
            raise StanzaError("not-acceptable",
                              text=f"a vCard holds at most {self.options.max_bytes} bytes")
        await self.server.stores.vcard.set(owner, xml)
        photo = photo_of(vcard)
        digest = hashlib.sha1(photo[1]).hexdigest() if photo else ""
        old = self._hashes.get(owner)
        self._remember(owner, digest)
        if photo is not None and self.pep is not None and digest != old:
            await self._publish_avatar(owner, photo[0], photo[1], digest)
        return None

    async def _publish_avatar(self, owner: str, mime: str, data: bytes, digest: str) -> None:
        """XEP-0398 §3: the vCard photo as a XEP-0084 User Avatar."""
        payload = domish.Element((AVATAR_DATA, "data"))
        payload.addContent(base64.b64encode(data).decode("ascii"))
        await self.pep.publish_item(owner, AVATAR_DATA, digest, payload, AVATAR_OPTIONS)
        meta = domish.Element((AVATAR_METADATA, "metadata"))
        info = meta.addElement("info")
        info["id"] = digest
        info["bytes"] = str(len(data))
        info["type"] = mime
        await self.pep.publish_item(owner, AVATAR_METADATA, digest, meta, AVATAR_OPTIONS)

    # -- XEP-0398: PEP avatar -> vCard ----------------------------------------------
    def on_pep_published(self, published: Any) -> None:
        if published.node != AVATAR_METADATA or not published.items:
            return
        _, meta = published.items[-1]
        if meta is None:
            return
        info = next((el for el in meta.elements() if el.name == "info"
                     and not el.getAttribute("url")), None)
        owner = published.owner
        if info is None:
            return  # an empty <metadata/> disables the avatar; the vCard keeps its photo
        digest = info.getAttribute("id", "")
        previous = self._converting.get(owner)

        async def convert() -> None:
            if previous is not None:
                await _when_done(previous)
            await self._avatar_to_vcard(owner, digest, info.getAttribute("type", "image/png"))

        d = defer.ensureDeferred(convert())
        d.addErrback(lambda f: log.failure("XEP-0398 conversion for {user} failed", f, user=owner))
        self._converting[owner] = d

        def done(_: Any) -> None:
            if self._converting.get(owner) is d:
                del self._converting[owner]

        d.addBoth(done)

    async def _avatar_to_vcard(self, owner: str, digest: str, mime: str) -> None:
        items = await self.pep.items(owner, AVATAR_DATA) or []
        data_item = next((i for i in items if i.item_id == digest), None)
        if data_item is None or not data_item.payload:
            return
        binval = str(parse_stanza(data_item.payload)).strip()
        xml = await self.server.stores.vcard.get(owner)
        vcard = parse_stanza(xml) if xml else domish.Element((VCARD, "vCard"))
        current = photo_of(vcard)
        if current is not None and hashlib.sha1(current[1]).hexdigest() == digest:
            return
        for old in [el for el in vcard.elements() if el.name == "PHOTO"]:
            vcard.children.remove(old)
        photo = vcard.addElement("PHOTO")
        photo.addElement("TYPE", content=mime)
        photo.addElement("BINVAL", content=binval)
        new_xml = vcard.toXml()
        if len(new_xml.encode("utf-8")) > self.options.max_bytes:
            log.info("avatar of {user} too big for its vCard", user=owner)
            return
        await self.server.stores.vcard.set(owner, new_xml)
        self._remember(owner, digest)

    # -- XEP-0153: the photo hash in presence ------------------------------------------
    def _remember(self, user: str, digest: str) -> None:
        self._hashes[user] = digest
        self._hashes.move_to_end(user)
        while len(self._hashes) > self.options.hash_cache_size:
            self._hashes.popitem(last=False)

    def on_bound(self, session: Any) -> None:
        user = session.bare
        if user in self._hashes:
            self._hashes.move_to_end(user)
            return
        d = self.server.stores.vcard.get(user)

        def loaded(xml: Optional[str]) -> None:
            photo = photo_of(parse_stanza(xml)) if xml else None
            if user not in self._hashes:
                self._remember(user, hashlib.sha1(photo[1]).hexdigest() if photo else "")

        d.addCallback(loaded)
        d.addErrback(lambda f: None if f.check(UnknownUser) else
                     log.failure("loading the vCard of {user} failed", f, user=user))

    def on_presence(self, event: StanzaEvent) -> None:
        stanza = event.stanza
        if event.origin is None or stanza.getAttribute("type") is not None:
            return None
        if stanza.getAttribute("to") is not None:
            return None
        digest = self._hashes.get(event.origin.bare)
        if digest is None:
            return None
        theirs = [el for el in stanza.elements() if el.uri == VCARD_UPDATE]
        if theirs:
            if not digest:
                return None  # the client's own word when we know of no photo
            # XEP-0398 §4: the server's hash replaces the client's (which
            # may not know of an avatar another client published).
            for el in theirs:
                stanza.children.remove(el)
        x = stanza.addElement((VCARD_UPDATE, "x"))
        x.addElement("photo", content=digest) if digest else x.addElement("photo")
        return None
