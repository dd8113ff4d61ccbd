"""Blocking Command (XEP-0191 1.3) with spam reports (XEP-0377 0.3).

An account blocks JIDs with ``<block/>``, lifts blocks with ``<unblock/>``
(an empty one lifts all) and reads its list with ``<blocklist/>``; the first
read marks the session "interested", and every change is pushed to the
interested sessions (§3.3-§3.5). A block may carry a XEP-0377 ``<report/>``;
it is stored for operators (``chatbxctl reports list``) and otherwise
changes nothing.

Matching (§2, the order of XEP-0016): an item ``user@domain/resource``
matches only that resource, ``user@domain`` any of its resources,
``domain/resource`` only that resource of the domain, and ``domain`` the
domain itself, every address at it and at its subdomains.

What a block does (§3.3), as Prosody's mod_blocklist does it where the XEP
leaves room:

- from a blocked JID: presence (notifications, subscriptions, probes) is
  dropped without an error; chat and normal messages are answered with
  service-unavailable, other messages dropped; IQ get/set are answered
  with service-unavailable, results and errors dropped. The user appears
  offline.
- to a blocked JID: what the user's client sends is refused with
  not-acceptable and ``<blocked xmlns='urn:xmpp:blocking:errors'/>``
  (errors are dropped); presence the server sends on the user's behalf
  (broadcasts, probe answers) is dropped. On the block, each available
  resource sends unavailable presence to blocked contacts that were
  subscribed to it, and their pending subscription requests are dropped (the
  user could not answer them any more); on unblock, subscribed contacts get
  the current presence again.

Stanzas between an account's own resources and IQs to the user's own
server are never blocked (a user who blocks their own domain keeps a
working client).

The check is a set lookup per stanza (``frozenset`` of the blocked JIDs,
empty for most accounts): lists are cached while the account has sessions
and in a bounded LRU otherwise. The first stanza that needs a list not in
memory waits for one database read, then goes on from where it stopped
(``router.deliver`` / ``router.route``), so filters never block the reactor.
The hooks run at FILTER priority on ``pre-message|pre-presence|pre-iq/*``
(the sender's list) and ``message|presence|iq/bare|full`` (the
recipient's; for presence also the local sender's), ahead of archiving,
carbons and delivery.

Limitation: presence the server sends for the user to a *remote* contact
has no event before s2s (there is none yet); the unavailable sent at the
block and the contact's own server are what keep it from them then.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.events import FILTER, StanzaEvent
from chatbx_server.features.presence import copy_to
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.storage.blocking import SpamReport
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID, parse_or_none
from chatbx_server.xmpp.stanzas import StanzaError, error_reply

log = Logger(observer=log_observer)

__all__ = ["BlockingFeature", "NS_BLOCKING", "NS_BLOCKING_ERRORS", "NS_REPORTING", "matches"]

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_REPORTING = "urn:xmpp:reporting:1"
NS_SID = "urn:xmpp:sid:0"

EMPTY: frozenset[str] = frozenset()
#: block lists of accounts without sessions kept in memory (LRU)
RECENT_LISTS = 1024
#: longest blocked JID in UTF-8 bytes (an index key on PostgreSQL is < 2.7 KB)
MAX_JID_BYTES = 2047
#: bounds on what one report may carry
MAX_REPORT_TEXT = 4096
MAX_REPORT_IDS = 32


def matches(items: frozenset[str], jid: JID) -> bool:
    """Whether the block list ``items`` blocks ``jid`` (XEP-0191 §2)."""
    if jid.full in items:
        return True  # user@domain/resource, domain/resource, or the bare/domain JID itself
    if jid.resource is not None:
        if jid.bare in items:
            return True  # user@domain: any resource (or domain for domain/resource)
        if jid.user is not None and f"{jid.host}/{jid.resource}" in items:
            return True
    host = jid.host
    while True:  # domain: every address at it and at its subdomains
        if host in items:
            return True
        dot = host.find(".")
        if dot < 0:
            return False
        host = host[dot + 1:]


def _blocked_error(stanza: domish.Element) -> domish.Element:
    app = domish.Element((NS_BLOCKING_ERRORS, "blocked"))
    return error_reply(stanza, StanzaError("not-acceptable", "cancel", app_element=app))


def _parse_items(query: domish.Element, user: str) -> tuple[list[str], list[SpamReport]]:
    """The prepared JIDs of ``<item/>`` children and their reports."""
    jids: list[str] = []
    reports: list[SpamReport] = []
    for item in query.elements(NS_BLOCKING, "item"):
        text = item.getAttribute("jid")
        if not text:
            raise StanzaError("bad-request", text="item without jid")
        try:
            jid = JID.parse(text).full
        except InvalidJID:
            raise StanzaError("jid-malformed") from None
        if len(jid.encode("utf-8")) > MAX_JID_BYTES:
            raise StanzaError("not-acceptable", text="JID too long")
        jids.append(jid)
        for report in item.elements(NS_REPORTING, "report"):
            parsed = _parse_report(report, user, jid)
            if parsed is not None:
                reports.append(parsed)
    return list(dict.fromkeys(jids)), reports


def _parse_report(report: domish.Element, user: str, jid: str) -> Optional[SpamReport]:
    """XEP-0377 §4-§6; a report without a reason is ignored (the block stands)."""
    reason = report.getAttribute("reason")
    if not reason or len(reason) > 1023:
        return None
    text = None
    ids: list[tuple[str, str]] = []
    for child in report.elements():
        if child.name == "text" and child.uri == NS_REPORTING and text is None:
            text = str(child).strip()[:MAX_REPORT_TEXT] or None
        elif child.name == "stanza-id" and child.uri == NS_SID and len(ids) < MAX_REPORT_IDS:
            by, sid = child.getAttribute("by"), child.getAttribute("id")
            if by and sid:
                ids.append((by[:3071], sid[:1023]))
    return SpamReport(user, jid, reason, text, tuple(ids))


def _query(iq: domish.Element, name: str) -> domish.Element:
    for child in iq.elements(NS_BLOCKING, name):
        return child
    raise StanzaError("bad-request")


class BlockingFeature(Feature):
    name = "blocking"
    spec = "XEP-0191 1.3 (Blocking Command), XEP-0377 0.3 (Spam Reporting)"
    disco_features = (NS_BLOCKING, NS_REPORTING)
    soft_depends = ("roster", "presence")

    @dataclass(frozen=True)
    class Options:
        #: JIDs one account may block; a block past it answers not-allowed
        max_items: int = 1000
        #: XEP-0377 reports kept per reporting account; later ones are not
        #: stored (the block still applies)
        max_reports: int = 100

        def __post_init__(self) -> None:
            if self.max_items < 1:
                raise ValueError("max_items must be at least 1")
            if self.max_reports < 0:
                raise ValueError("max_reports must not be negative")

    def setup(self) -> None:
        if self.options is None:
            self.options = self.Options()
        self.router = self.server.router
        self.sessions = self.server.sessions
        #: block lists of accounts with sessions
        self._online: dict[str, frozenset[str]] = {}
        #: block lists of other accounts, least recently loaded first
        self._recent: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._loading: dict[str, list[defer.Deferred]] = {}
        #: bare JID -> {resource: session} that asked for the list (pushes go there)
        self._interested: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self._push_ids = 0
        #: the unavailable presence sent when a block starts: let through
        #: even when a contact's list must be loaded first and the block
        #: is in force by the time it is delivered
        self._farewells: weakref.WeakSet[domish.Element] = weakref.WeakSet()
        self.iq("get", "bare", NS_BLOCKING, "blocklist", self.on_get)
        self.iq("set", "bare", NS_BLOCKING, "block", self.on_block)
        self.iq("set", "bare", NS_BLOCKING, "unblock", self.on_unblock)
        for kind in ("bare", "full", "host"):
            self.hook(f"pre-message/{kind}", self.on_outbound, FILTER)
            self.hook(f"pre-presence/{kind}", self.on_outbound, FILTER)
            self.hook(f"pre-iq/{kind}", self.on_outbound, FILTER)
        for kind in ("bare", "full"):
            self.hook(f"message/{kind}", self.on_inbound_message, FILTER)
            self.hook(f"presence/{kind}", self.on_inbound_presence, FILTER)
            self.hook(f"iq/{kind}", self.on_inbound_iq, FILTER)
        self.hook("session/bound", self.on_session_bound)
        self.hook("session/closed", self.on_session_closed)
        # A session moving to another node (features/smacks_cluster.py).
        self.hook("session/export", self.on_export)
        self.hook("session/import", self.on_import)

    def teardown(self) -> None:
        super().teardown()
        self._online.clear()
        self._recent.clear()
        self._interested.clear()

    # -- the cache -------------------------------------------------------------
    def cached(self, user: str) -> Optional[frozenset[str]]:
        """The block list of ``user`` if it is in memory."""
        items = self._online.get(user)
        if items is None:
            items = self._recent.get(user)
        return items

    def _install(self, user: str, items: frozenset[str]) -> None:
        if self.sessions.resources(user):
            self._recent.pop(user, None)
            self._online[user] = items
        else:
            self._online.pop(user, None)
            self._recent[user] = items
            self._recent.move_to_end(user)
            while len(self._recent) > RECENT_LISTS:
                self._recent.popitem(last=False)

    def load(self, user: str) -> defer.Deferred:
        """Fire with the block list of ``user`` (empty for a JID without an account)."""
        items = self.cached(user)
        if items is not None:
            return defer.succeed(items)
        d: defer.Deferred = defer.Deferred()
        waiters = self._loading.get(user)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._loading[user] = [d]

        def done(result: Any) -> None:
            del self._loading[user]
            if isinstance(result, Failure) and result.check(UnknownUser):
                result = []
            if not isinstance(result, Failure):
                if self.cached(user) is None:  # a change made meanwhile is newer
                    self._install(user, frozenset(result) if result else EMPTY)
                result = self.cached(user)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self.server.stores.blocking.load(user).addBoth(done)
        return d

    def _after_load(self, user: str, stanza: domish.Element, go_on: Callable[[], Any]) -> defer.Deferred:
        """Handle ``stanza`` once the list of ``user`` is in memory."""
        d = self.load(user)
        d.addCallback(lambda _: go_on())

        def failed(failure: Failure) -> bool:
            log.failure("loading the block list of {user} failed", failure, user=user)
            self.router.bounce(stanza, "internal-server-error")
            return True

        d.addErrback(failed)
        return d

    def on_session_bound(self, session: Any) -> None:
        items = self._recent.pop(session.bare, None)
        if items is not None:
            self._online[session.bare] = items

    def on_session_closed(self, session: Any) -> None:
        user, resource = session.bare, session.resource
        interested = self._interested.get(user)
        if interested is not None and interested.get(resource) is session:
            del interested[resource]
            if not interested:
                del self._interested[user]
        if not self.sessions.resources(user):
            items = self._online.pop(user, None)
            if items is not None:
                self._install(user, items)

    def on_export(self, item: tuple[Any, dict[str, Any]]) -> None:
        session, state = item
        if self._interested.get(session.bare, {}).get(session.resource) is session:
            state["blocklist"] = True

    def on_import(self, item: tuple[Any, dict[str, Any]]) -> None:
        """The moved session asked for the block list: it hears of changes (§3.2)."""
        session, state = item
        if state.get("blocklist"):
            self._interested.setdefault(session.bare, {})[session.resource] = session

    # -- filters -----------------------------------------------------------------
    def on_outbound(self, event: StanzaEvent) -> Any:
        """What a local client sends to a JID it blocks is refused (§3.3)."""
        origin = event.origin
        user = origin.bare
        items = self._online.get(user)
        if items is not None and not items:
            return None  # the common case: an empty list
        to = event.to
        if to.bare == user or (event.kind == "host" and to.host == origin.host):
            return None  # never blocked, and no list to load for it (login: roster, presence)
        if items is None:
            items = self.cached(user)
            if items is None:
                stanza = event.stanza
                return self._after_load(user, stanza, lambda: self.router.route(stanza, origin))
        if not items or not matches(items, to):
            return None
        stanza = event.stanza
        stype = stanza.getAttribute("type")
        if stype == "error" or (stanza.name == "iq" and stype == "result"):
            return True
        origin.send(_blocked_error(stanza))
        return True

    def _recipient_blocks(self, event: StanzaEvent) -> Any:
        """None (not blocked), True (blocked) or a Deferred (list being loaded)."""
        user = event.to.bare
        items = self._online.get(user)
        if items is not None and not items:
            return None  # the common case: an empty list
        sender = event.sender
        if sender is None or sender.bare == user:
            return None
        if items is None:
            items = self.cached(user)
            if items is None:
                return self._after_load(user, event.stanza, lambda: self.router.deliver(event))
        if items and matches(items, sender):
            return True
        return None

    def on_inbound_message(self, event: StanzaEvent) -> Any:
        items = self._online.get(event.to.bare)
        if items is not None and not items:
            return None  # the hot path: an online account that blocks nobody
        blocked = self._recipient_blocks(event)
        if blocked is not True:
            return blocked
        stanza = event.stanza
        if stanza.getAttribute("type", "normal") in ("chat", "normal"):
            # §3.3 SHOULD, and Prosody: the user looks offline to them.
            return self.router.bounce(stanza, "service-unavailable")
        return True

    def on_inbound_presence(self, event: StanzaEvent) -> Any:
        blocked = self._recipient_blocks(event)
        if blocked is not None:
            return blocked  # §3.3: dropped, no error
        # Presence the server sends for a local user (broadcasts, probe
        # answers) has no pre-presence event: check the sender's list here.
        sender = event.sender
        if sender is None or sender.user is None or sender.host not in self.server.hosts:
            return None
        owner = sender.bare
        if owner == event.to.bare:
            return None
        items = self._online.get(owner)
        if items is None:
            items = self.cached(owner)
            if items is None:
                return self._after_load(owner, event.stanza, lambda: self.router.deliver(event))
        if items and matches(items, event.to) and event.stanza not in self._farewells:
            return True
        return None

    def on_inbound_iq(self, event: StanzaEvent) -> Any:
        blocked = self._recipient_blocks(event)
        if blocked is not True:
            return blocked
        if event.stanza.getAttribute("type") in ("get", "set"):
            return self.router.bounce(event.stanza, "service-unavailable")
        return True

    # -- IQ handlers -------------------------------------------------------------
    def _owner(self, event: StanzaEvent) -> Any:
        session = event.origin
        if session is None or event.to.bare != session.bare:
            raise StanzaError("service-unavailable")
        return session

    def on_get(self, event: StanzaEvent) -> defer.Deferred:
        session = self._owner(event)
        # §3.2: this resource now hears about every change.
        self._interested.setdefault(session.bare, {})[session.resource] = session

        def answer(items: frozenset[str]) -> domish.Element:
            blocklist = domish.Element((NS_BLOCKING, "blocklist"))
            for jid in sorted(items):
                blocklist.addElement("item")["jid"] = jid
            return blocklist

        return self.load(session.bare).addCallback(answer)

    def on_block(self, event: StanzaEvent) -> defer.Deferred:
        session = self._owner(event)
        user = session.bare
        jids, reports = _parse_items(_query(event.stanza, "block"), user)
        if not jids:
            raise StanzaError("bad-request", text="block needs at least one item")  # §3.3
        if len(jids) > self.options.max_items:
            raise StanzaError("not-allowed", text="block list is full")
        return self._locked(user, lambda: self._block(user, jids, reports))

    def on_unblock(self, event: StanzaEvent) -> defer.Deferred:
        session = self._owner(event)
        user = session.bare
        jids, _ = _parse_items(_query(event.stanza, "unblock"), user)
        return self._locked(user, lambda: self._unblock(user, jids or None))

    def _locked(self, user: str, fn: Callable[[], Any]) -> defer.Deferred:
        """Run ``fn`` (async) with ``user``'s block list changes serialized."""
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = defer.DeferredLock()
        d = lock.run(lambda: defer.ensureDeferred(fn()))

        def cleanup(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(user) is lock:
                del self._locks[user]
            return result

        return d.addBoth(cleanup)

    async def _block(self, user: str, jids: list[str], reports: list[SpamReport]) -> None:
        before = await self.load(user)
        result = await self.server.stores.blocking.block(user, jids, reports, self.options.max_items,
                                                         self.options.max_reports)
        if result is None:
            raise StanzaError("not-allowed", text="block list is full")
        after = frozenset(result)
        if reports:
            log.info("{user} reported {count} JID(s) while blocking", user=user, count=len(reports))
            for report in reports:
                # Stored now; antispam forwards it to the abuse addresses.
                self.server.events.fire_all("spam/reported", report)
        # Unavailable first: the new list would stop it (§3.3).
        newly = lambda jid: matches(after, jid) and not matches(before, jid)  # noqa: E731
        await self._presence_to_contacts(user, newly, available=False)
        self._install(user, after)
        self._push(user, "block", jids)
        await self._drop_requests(user, newly)

    async def _unblock(self, user: str, jids: Optional[list[str]]) -> None:
        before = await self.load(user)
        after = frozenset(await self.server.stores.blocking.unblock(user, jids))
        self._install(user, after)
        self._push(user, "unblock", jids or ())
        lifted = lambda jid: matches(before, jid) and not matches(after, jid)  # noqa: E731
        await self._presence_to_contacts(user, lifted, available=True)

    def _push(self, user: str, action: str, jids: Iterable[str]) -> None:
        """§3.3-§3.5: the change, to every interested resource."""
        for session in list(self._interested.get(user, {}).values()):
            self._push_ids += 1
            iq = domish.Element((ns.CLIENT, "iq"))
            iq["type"] = "set"
            iq["id"] = f"block-push-{self._push_ids}"
            iq["to"] = session.jid.full
            query = iq.addElement((NS_BLOCKING, action))
            for jid in jids:
                query.addElement("item")["jid"] = jid
            session.send(iq)

    async def _presence_to_contacts(self, user: str, changed: Callable[[JID], bool],
                                    available: bool) -> None:
        """Presence to subscribed contacts whose block state ``changed``.

        On block: unavailable from each available resource, also to
        directed-presence targets (§3.3); on unblock: the current presence
        of each available resource (§3.4).
        """
        roster = self.server.modules.get("roster")
        contacts: list[str] = []
        if roster is not None:
            state = await roster.load(user)  # type: ignore[attr-defined]
            contacts = [c for c in state.subscribers() if _changed(changed, c)]
        for session in self.sessions.available(user):
            targets = list(contacts)
            if not available and session.directed:
                for target in list(session.directed):
                    if _changed(changed, target):
                        session.directed.discard(target)
                        if target.partition("/")[0] not in contacts:
                            targets.append(target)
            for target in targets:
                if available:
                    self.router.route(copy_to(session.presence, target))
                else:
                    pres = domish.Element((ns.CLIENT, "presence"))
                    pres["from"] = session.jid.full
                    pres["to"] = target
                    pres["type"] = "unavailable"
                    self._farewells.add(pres)
                    self.router.route(pres)

    async def _drop_requests(self, user: str, blocked: Callable[[JID], bool]) -> None:
        """Forget pending subscription requests from newly blocked JIDs.

        The user could no longer answer them (the answer would be refused),
        and they would be shown again at every login.
        """
        roster: Any = self.server.modules.get("roster")
        if roster is None:
            return

        async def drop() -> None:
            state = await roster.load(user)
            for contact in [c for c in state.requests if _changed(blocked, c)]:
                await roster.set_pending_in(user, state, contact, False)

        await roster.run_locked(user, drop)


def _changed(test: Callable[[JID], bool], text: str) -> bool:
    jid = parse_or_none(text)
    return jid is not None and test(jid)
