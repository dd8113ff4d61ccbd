"""Message Archive Management (XEP-0313 1.1.3) for every account, with stanza
ids (XEP-0359 0.7), preferences (XEP-0441 0.2), full-text search (XEP-0431
0.2) and RSM paging (XEP-0059 1.0).

Where messages are archived (the events and priorities of ``events.py``):

- What a local client sends: ``pre-message/bare|full`` at ARCHIVE, into the
  sender's archive (with = 'to'). When the carbons module is loaded, other
  handlers (carbons, at COPY) then see an :class:`~.policy.OutgoingCopy`
  carrying the sender's own stanza-id, so the 'sent' carbon tells the
  sender's other devices where the message is archived; at RESTORE (below
  COPY, above delivery) the original, without that id, goes back into the
  event and is what leaves the server (XEP-0313 §3.5: no stanza-id to JIDs
  that cannot read the archive). This is what Prosody's mod_mam does.
- What is delivered to a local account: ``message/bare|full`` at ARCHIVE,
  into the recipient's archive (with = 'from'), stamping
  ``<stanza-id by=RECIPIENT id=UID/>`` on the delivered stanza, so the
  copies made from it (carbons, the offline copy) carry it too. The handler
  returns None: delivery goes on, and never waits for the database (the
  row goes through the store's batch writer). The sender's XEP-0198 ack
  does wait for the commit of the rows its message made (sender's and
  local recipient's archives; ``c2s.smacks.hold_write``). A message stored offline is
  archived here once, when it arrives; its later delivery sends the stored
  copy straight to the session.
- A message between two local accounts goes into both archives (the XML
  serialized once for both); one to oneself only once (as it arrives).
- A stanza-id claiming our archive that came from outside is removed first
  (XEP-0359 §4); ``<origin-id/>`` is left alone.

Queries (XEP-0313 §4) only for one's own archive: anything else is
``forbidden`` (§7.1). Results go to the querying resource, then the IQ
result with ``<fin/>``. Queries first wait for the writer to commit what is
queued, so a client that just received a stanza-id can page from it.

Preferences are kept in memory (loaded at start: only accounts that set
some have a row) and stored; the 'roster' default uses the roster cache of
the roster module when the account is online, and otherwise lets the
store check the roster when it writes the row. Expired messages
(``expire_after``) are deleted in bounded batches by a periodic task; on
SQLite another one feeds the full-text index (``ArchiveStore.index``).

``[modules.mam]`` options: see :class:`MamOptions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.c2s.smacks import hold_write
from chatbx_server.events import ARCHIVE, COPY, DELIVER, StanzaEvent
from chatbx_server.features.mam.policy import (SID, OutgoingCopy, StanzaId, archived_form,
                                               archiving_rule, examine, with_stanza_id)
from chatbx_server.features.mam.query import (FULLTEXT, MAM, MAM_EXTENDED, POLICIES, fin,
                                              flip_page, form, metadata, parse_prefs, parse_query,
                                              prefs_element, result_message)
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.storage.archive import ArchivePrefs, UnknownArchiveId, encode_uid
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, parse_or_none
from chatbx_server.xmpp.serializer import CLIENT_STREAMS
from chatbx_server.xmpp.stanzas import StanzaError

__all__ = ["MamFeature", "MamOptions", "parse_duration", "RESTORE"]

log = Logger(observer=log_observer)

#: below COPY (carbons have made their copies), above delivery
RESTORE = (COPY + DELIVER) // 2

#: expiry: first run after start, then hourly; a full batch runs again soon
EXPIRE_FIRST_DELAY = 60.0
EXPIRE_INTERVAL = 3600.0
EXPIRE_BATCH = 1000
EXPIRE_NEXT_BATCH = 1.0
#: full-text indexing (SQLite): rows per run while the writer is busy / idle,
#: and how often; an idle run that filled its chunk runs again soon
INDEX_BUSY_CHUNK = 500
INDEX_IDLE_CHUNK = 2000
INDEX_INTERVAL = 1.0
INDEX_CATCH_UP = 0.05

_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")


def parse_duration(value: Union[int, str]) -> Optional[int]:
    """Seconds of ``expire_after``; None for "never".

    An integer is seconds; a string is a number and a unit: s, min, h, d, w
    or y (365 days), e.g. "90d", "1y". "m" is refused as ambiguous
    (minutes or months?).

    Raises:
        ValueError: anything else, or a duration below one second.
    """
    if isinstance(value, str):
        if value.strip().lower() == "never":
            return None
        match = _DURATION.match(value.lower())
        if match is None or match.group(2) not in _UNITS and match.group(2) != "":
            raise ValueError(f"expire_after: {value!r} is not a duration like '90d', '1y', "
                             f"'12h', '30min' or 'never' (units: s, min, h, d, w, y)")
        seconds = int(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)
    else:
        seconds = value
    if seconds < 1:
        raise ValueError("expire_after must be at least one second (or 'never')")
    return seconds


@dataclass(frozen=True)
class MamOptions:
    """``[modules.mam]``.

    Attributes:
        default_policy: XEP-0441 default for accounts that set no
            preferences: "always", "roster" or "never".
        default_page_size: results per page when the client asks for no
            ``<max/>``; 50, ejabberd's DEF_PAGE_SIZE (mod_mam.erl).
        max_page_size: the largest page; a larger ``<max/>`` is lowered
            (XEP-0313 §4.3.1). 250, ejabberd's MAX_PAGE_SIZE; Prosody's
            max_archive_query_results is 50.
        include_count: report the size of the result set (RSM ``<count/>``,
            one COUNT over the index range per page), as Prosody's
            mam_include_total does by default.
        expire_after: how long messages are kept: seconds (an integer) or a
            duration string ("1y", "90d", "12h", "30min"); "never" keeps them
            forever. Default one year.
    """

    default_policy: str = "always"
    default_page_size: int = 50
    max_page_size: int = 250
    include_count: bool = True
    expire_after: Union[int, str] = "1y"

    def __post_init__(self) -> None:
        if self.default_policy not in POLICIES:
            raise ValueError(f"default_policy must be one of {', '.join(POLICIES)}")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ValueError("need 1 <= default_page_size <= max_page_size")
        if self.max_page_size > 10000:
            raise ValueError("max_page_size must be at most 10000")
        parse_duration(self.expire_after)

    @property
    def expire_seconds(self) -> Optional[int]:
        return parse_duration(self.expire_after)


class MamFeature(Feature):
    name = "mam"
    spec = ("XEP-0313 1.1.3 (Message Archive Management), XEP-0359 0.7.0 (Unique and Stable "
            "Stanza IDs), XEP-0441 0.2.0 (MAM Preferences), XEP-0431 0.2.0 (Full Text Search "
            "in MAM), XEP-0059 1.0.0 (Result Set Management)")
    account_disco_features = (MAM, MAM_EXTENDED, SID, FULLTEXT)
    depends = ("message",)
    Options = MamOptions

    def setup(self) -> None:
        if self.options is None:
            self.options = MamOptions()
        self.store = self.server.stores.archive
        #: stored preferences of the accounts that set some
        self._prefs: dict[str, ArchivePrefs] = {}
        self._active = True
        self._expiry: Any = None
        self._indexer: Any = None
        #: (stanza, its children list, their number, its client-stream XML,
        #: the archived XML, the body) of the last outgoing message to a
        #: local account, reused when it arrives there
        self._shared: Optional[tuple[domish.Element, list[Any], int, str, str,
                                     Optional[str]]] = None
        self.hook("pre-message/bare", self.on_outgoing, ARCHIVE)
        self.hook("pre-message/full", self.on_outgoing, ARCHIVE)
        self.hook("pre-message/bare", self.on_outgoing_routed, RESTORE)
        self.hook("pre-message/full", self.on_outgoing_routed, RESTORE)
        self.hook("message/bare", self.on_incoming, ARCHIVE)
        self.hook("message/full", self.on_incoming, ARCHIVE)
        self.iq("set", "bare", MAM, "query", self.on_query)
        self.iq("get", "bare", MAM, "query", self.on_form)
        self.iq("get", "bare", MAM, "metadata", self.on_metadata)
        self.iq("get", "bare", MAM, "prefs", self.on_prefs)
        self.iq("set", "bare", MAM, "prefs", self.on_prefs)
        if self.options.expire_seconds is not None:
            self._schedule_expiry(EXPIRE_FIRST_DELAY)
        if self.server.database.dialect == "sqlite":
            self._schedule_index(INDEX_INTERVAL)
        self.store.max_id().addCallbacks(self.store.ids.observe, self._failed,
                                         errbackArgs=("reading the newest archive id",))
        self.store.load_prefs().addCallbacks(self._prefs_loaded, self._failed,
                                             errbackArgs=("loading archive preferences",))

    def teardown(self) -> None:
        self._active = False
        for call in (self._expiry, self._indexer):
            if call is not None and call.active():
                call.cancel()
        self._expiry = self._indexer = None
        self._shared = None
        super().teardown()

    @staticmethod
    def _failed(failure: Failure, what: str) -> None:
        log.failure("mam: {what} failed", failure, what=what)

    def _prefs_loaded(self, rows: list[tuple[str, ArchivePrefs]]) -> None:
        for owner, prefs in rows:
            self._prefs.setdefault(owner, prefs)  # a set meanwhile is newer

    # -- archiving (hot path) --------------------------------------------------
    def on_outgoing(self, event: StanzaEvent) -> None:
        """A local client's message: into the sender's archive."""
        stanza = event.stanza
        owner = event.origin.bare
        to = event.to
        local = to.host in self.server.hosts
        # For a local recipient, the stanza is examined (and forged ids of
        # either archive removed) once for both archives: see on_incoming.
        store, body, _ = examine(stanza, owner, to.bare if local else None)
        if not store:
            return None
        if to.bare == owner:
            return None  # to oneself: archived once, when it arrives
        rule = self._rule(owner, to)
        if rule is False:
            return None
        wire = CLIENT_STREAMS.serialize(stanza)
        xml = archived_form(stanza, wire)
        if local:
            self._shared = (stanza, stanza.children, len(stanza.children), wire, xml, body)
        archive_id, nonce = self._append(owner, to, body, xml, rule is None, event.origin)
        # Only a copy that will be carbon-copied carries the sender's id.
        carbons: Any = self.server.modules.get("carbons")
        if carbons is not None and carbons.copies_sent(event.origin):
            event.stanza = OutgoingCopy(stanza, StanzaId(owner, encode_uid(archive_id, nonce)))
        return None

    def on_outgoing_routed(self, event: StanzaEvent) -> None:
        """After the copies: the message leaves without the sender's id."""
        stanza = event.stanza
        if isinstance(stanza, OutgoingCopy):
            event.stanza = stanza.original
        return None

    def on_incoming(self, event: StanzaEvent) -> None:
        """A message for a local account: into its archive, id stamped."""
        stanza = event.stanza
        owner = event.to.bare
        shared = self._shared
        self._shared = None
        if (shared is not None and shared[0] is stanza and shared[1] is stanza.children
                and shared[2] == len(stanza.children)):
            # The sender's copy, unchanged since: examined for this archive
            # too (worth archiving, forged ids gone, none of ours: nothing
            # added a child), and the same XML.
            wire: Optional[str] = shared[3]
            xml: Optional[str] = shared[4]
            body = shared[5]
        else:
            store, body, archived = examine(stanza, owner)
            if not store or archived:
                return None
            wire = xml = None
        sender = event.sender
        if sender is None:
            sender = parse_or_none(stanza.getAttribute("from")) or JID(None, event.to.host)
        rule = self._rule(owner, sender)
        if rule is False:
            return None
        if wire is None or xml is None:
            wire = CLIENT_STREAMS.serialize(stanza)
            xml = archived_form(stanza, wire)
        archive_id, nonce = self._append(owner, sender, body, xml, rule is None, event.origin)
        stanza_id = StanzaId(owner, encode_uid(archive_id, nonce))
        stanza_id.parent = stanza
        stanza.children.append(stanza_id)
        # The delivered copy is the same text with the id: the stream writes
        # it without serializing the stanza again (for every resource).
        delivered = with_stanza_id(wire, stanza_id)
        if delivered is not None:
            CLIENT_STREAMS.remember(stanza, delivered)
        return None

    def _rule(self, owner: str, target: JID) -> Optional[bool]:
        prefs = self._prefs.get(owner)
        default = self.options.default_policy
        if prefs is None and default == "always":
            return True
        roster: Optional[bool] = None
        if (prefs.default if prefs is not None else default) == "roster":
            cached = getattr(self.server.modules.get("roster"), "cached", None)
            state = cached(owner) if cached is not None else None
            if state is not None:
                roster = target.bare in state.items
        return archiving_rule(prefs, default, target, roster)

    def _append(self, owner: str, other: JID, body: Optional[str], xml: str,
                check_roster: bool, origin: Any = None) -> tuple[int, int]:
        ids = self.store.ids
        archive_id = ids.next_id()
        nonce = ids.nonce()
        row = (owner, archive_id, nonce, other.bare, other.resource, body, xml, check_roster)
        writer = self.store.writer
        writer.submit(row)
        if origin is not None:
            # The sender's XEP-0198 ack promises the archive row too: it
            # waits for the batch commit (delivery does not).
            hold_write(origin, writer)
        return archive_id, nonce

    # -- queries ---------------------------------------------------------------
    @staticmethod
    def _own_archive(event: StanzaEvent) -> str:
        """The archive's owner, when the requester is that account's own
        client; forbidden for anyone else (XEP-0313 §7.1)."""
        sender = event.sender
        if event.origin is None or sender is None or sender.bare != event.to.bare:
            raise StanzaError("forbidden")
        return event.to.bare

    async def on_query(self, event: StanzaEvent) -> domish.Element:
        owner = self._own_archive(event)
        query = event.stanza.firstChildElement()
        options = self.options
        q = parse_query(query, options.default_page_size, options.max_page_size,
                        options.include_count)
        await self.store.flush()
        try:
            page = await self.store.query(owner, q)
        except UnknownArchiveId:
            raise StanzaError("item-not-found") from None
        session = event.origin
        to = session.jid.full
        queryid = query.getAttribute("queryid")
        messages = page.messages[::-1] if flip_page(query) else page.messages
        for message in messages:
            session.send(result_message(owner, to, queryid, message))
        return fin(page)

    def on_form(self, event: StanzaEvent) -> domish.Element:
        self._own_archive(event)
        return form()

    async def on_metadata(self, event: StanzaEvent) -> domish.Element:
        owner = self._own_archive(event)
        await self.store.flush()
        first, last = await self.store.metadata(owner)
        return metadata(first, last)

    async def on_prefs(self, event: StanzaEvent) -> domish.Element:
        owner = self._own_archive(event)
        current = self._prefs.get(owner) or ArchivePrefs(self.options.default_policy)
        if event.stanza.getAttribute("type") == "get":
            return prefs_element(current)
        prefs = parse_prefs(event.stanza.firstChildElement(), current.default)
        await self.store.set_prefs(owner, prefs)
        self._prefs[owner] = prefs
        return prefs_element(prefs)

    # -- expiry ----------------------------------------------------------------
    def _schedule_expiry(self, delay: float) -> None:
        if self._active:
            self._expiry = self.server.clock.callLater(delay, self._expire)

    def _expire(self) -> defer.Deferred[None]:
        self._expiry = None
        seconds = self.options.expire_seconds
        assert seconds is not None
        d = self.store.expire(self.server.clock.seconds() - seconds, EXPIRE_BATCH)
        return d.addCallbacks(self._expired, self._expire_failed)

    def _expired(self, count: int) -> None:
        if count:
            log.info("mam: deleted {count} expired archived messages", count=count)
        self._schedule_expiry(EXPIRE_NEXT_BATCH if count >= EXPIRE_BATCH else EXPIRE_INTERVAL)

    def _expire_failed(self, failure: Failure) -> None:
        log.failure("mam: deleting expired messages failed", failure)
        self._schedule_expiry(EXPIRE_INTERVAL)

    # -- full-text indexing (SQLite) ---------------------------------------------
    def _schedule_index(self, delay: float) -> None:
        if self._active:
            self._indexer = self.server.clock.callLater(delay, self._index)

    def _index(self) -> defer.Deferred[None]:
        self._indexer = None
        # While messages are being written, index a little: the search covers
        # the rest by scanning; catch up when the writer is idle.
        chunk = INDEX_BUSY_CHUNK if self.store.writer.pending else INDEX_IDLE_CHUNK
        d = self.store.index(chunk)
        return d.addCallbacks(self._indexed, self._index_failed, callbackArgs=(chunk,))

    def _indexed(self, count: int, chunk: int) -> None:
        self._schedule_index(INDEX_CATCH_UP if count >= chunk == INDEX_IDLE_CHUNK
                             else INDEX_INTERVAL)

    def _index_failed(self, failure: Failure) -> None:
        log.failure("mam: full-text indexing failed", failure)
        self._schedule_index(INDEX_INTERVAL)
