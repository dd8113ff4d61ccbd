"""Roster management (RFC 6121 §2) with roster versioning (XEP-0237).

The account's own resources get, add, update and remove roster items; every
change is pushed to each "interested" resource (one that asked for the
roster, §2.1.6), including the one that made it. Versions are the store's
per-user counter: a client whose ``ver`` is current gets an empty result
and hears later changes as pushes; any other ``ver`` gets the full roster.

The feature also owns the in-memory roster cache the presence feature uses
on its hot path: a user's roster (items plus pending inbound subscription
requests) is loaded once and kept while the user has sessions, and every
change goes through this module, which keeps the cached copy current.
Changes to one user's roster are serialized with a per-user lock; on a
cluster also with a Redis lock per user (cluster/locks.py), since the
subscription state machine (RFC 6121 §3) of one account can run on two
nodes at once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
import inspect
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.events import FALLBACK, StanzaEvent
from chatbx_server.features.subscription import SubState, has_from, has_to
from chatbx_server.modules import Feature
from chatbx_server.storage.roster import RosterItem, RosterLimitReached
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import InvalidJID, JID
from chatbx_server.xmpp.stanzas import StanzaError
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

#: seconds Redis keeps a roster lock of a cluster (a node that died holding
#: it); a change takes a few database round trips
ROSTER_LOCK_TTL = 10.0
#: seconds a change waits for a roster lock held on another node before it
#: goes on under the local lock only (logged); the TTL: a dead holder's lock
#: has expired by then
ROSTER_LOCK_WAIT = 10.0

__all__ = ["RosterFeature", "RosterState", "item_element", "item_with_state", "state_of"]


class RosterState:
    """One account's roster as cached in memory."""

    __slots__ = ("version", "items", "requests")

    def __init__(self, version: int, items: Iterable[RosterItem],
                 requests: Iterable[tuple[str, Optional[str]]]) -> None:
        self.version = version
        #: contact bare JID -> item
        self.items: dict[str, RosterItem] = {i.jid: i for i in items}
        #: contact bare JID -> status text of its pending request (Pending In)
        self.requests: dict[str, Optional[str]] = dict(requests)

    def subscribers(self) -> list[str]:
        """Contacts that receive the user's presence ('from' or 'both')."""
        return [j for j, i in self.items.items() if has_from(i.subscription)]

    def subscriptions(self) -> list[str]:
        """Contacts whose presence the user receives ('to' or 'both')."""
        return [j for j, i in self.items.items() if has_to(i.subscription)]


def state_of(state: RosterState, contact: str) -> SubState:
    """The subscription state machine's view of ``contact``."""
    item = state.items.get(contact)
    pending_in = contact in state.requests
    if item is None:
        return SubState(pending_in=pending_in)
    return SubState(item.subscription, item.ask, item.approved, pending_in)


def item_with_state(old: Optional[RosterItem], contact: str, new: SubState) -> Optional[RosterItem]:
    """The roster item holding ``new``; None when no item is needed.

    An existing item stays (even at "none") until the user removes it; a
    missing one is created only when there is something to remember
    (RFC 6121 §3.1.5 approval, §3.1.2 Pending Out, §3.4 pre-approval).
    """
    if old is None:
        if new.subscription == "none" and not new.ask and not new.approved:
            return None
        return RosterItem(contact, None, new.subscription, new.ask, new.approved, ())
    return RosterItem(old.jid, old.name, new.subscription, new.ask, new.approved, old.groups)


def item_element(item: RosterItem, remove: bool = False) -> domish.Element:
    """``<item/>`` as in results and pushes (§2.1.2)."""
    el = domish.Element((ns.ROSTER, "item"))
    el["jid"] = item.jid
    if remove:
        el["subscription"] = "remove"
        return el
    if item.name:
        el["name"] = item.name
    el["subscription"] = item.subscription
    if item.ask:
        el["ask"] = "subscribe"
    if item.approved:
        el["approved"] = "true"
    for group in item.groups:
        el.addElement("group", content=group)
    return el


@dataclass(frozen=True)
class RosterOptions:
    """``[modules.roster]``: limits on what an account stores (§2.3.3)."""

    #: roster items, however they are created (roster set, subscribe,
    #: approval, pre-approval)
    max_items: int = 1000
    max_name_length: int = 1023
    max_group_length: int = 1023
    max_groups: int = 64
    #: unanswered inbound subscription requests kept for the account
    #: (§3.1.3); anyone may send them, so they are bounded on their own
    max_pending_requests: int = 100

    def __post_init__(self) -> None:
        for name in ("max_items", "max_name_length", "max_group_length", "max_groups",
                     "max_pending_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class _Loading:
    __slots__ = ("waiters", "dirty")

    def __init__(self) -> None:
        self.waiters: list[defer.Deferred] = []
        self.dirty = False


class RosterFeature(Feature):
    name = "roster"
    spec = "RFC 6121 §2, XEP-0237"
    Options = RosterOptions

    def setup(self) -> None:
        if self.options is None:
            self.options = RosterOptions()
        self._cache: dict[str, RosterState] = {}
        self._loading: dict[str, _Loading] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self._ids = itertools.count(1)
        self.iq("get", "bare", ns.ROSTER, "query", self.on_get)
        self.iq("set", "bare", ns.ROSTER, "query", self.on_set)
        # Last, so presence's unavailable broadcast still finds the cache.
        self.hook("session/closed", self.on_session_closed, FALLBACK)

    def teardown(self) -> None:
        super().teardown()
        self._cache.clear()

    def stream_features(self, session: Any) -> Iterable[domish.Element]:
        return (domish.Element((ns.ROSTER_VER, "ver")), domish.Element((ns.PRE_APPROVAL, "sub")))

    # -- cache ---------------------------------------------------------------
    def cached(self, user: str) -> Optional[RosterState]:
        """The cached roster of ``user``, if it is loaded."""
        return self._cache.get(user)

    def load(self, user: str) -> defer.Deferred:
        """Fire with the RosterState of ``user`` (cached while it has sessions here).

        Fails with UnknownUser for a JID that is not a local account.
        """
        state = self._cache.get(user)
        if state is not None:
            return defer.succeed(state)
        loading = self._loading.get(user)
        if loading is not None:
            d: defer.Deferred = defer.Deferred()
            loading.waiters.append(d)
            return d
        loading = self._loading[user] = _Loading()
        d = defer.ensureDeferred(self._fetch(user))

        def done(result: Any) -> Any:
            self._loading.pop(user, None)
            if (isinstance(result, RosterState) and not loading.dirty
                    and self.server.sessions.has_local(user)):
                self._cache[user] = result
            for waiter in loading.waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        d.addBoth(done)
        return d

    async def _fetch(self, user: str) -> RosterState:
        version, items, requests = await self.server.stores.roster.load(user)
        return RosterState(version, items, requests)

    def _changed(self, user: str, state: RosterState) -> None:
        """``state`` was modified: keep the cache consistent with it."""
        if self._cache.get(user) is not state:
            self._cache.pop(user, None)
        loading = self._loading.get(user)
        if loading is not None:
            loading.dirty = True
        # Other nodes of a cluster drop their copy (cluster/node.py).
        self.server.events.fire_all("roster/changed", user)

    def _stale(self, user: str) -> None:
        """The store refused what the cached copy allowed: load it afresh next time."""
        self.forget(user)
        self.server.events.fire_all("roster/changed", user)

    def forget(self, user: str) -> None:
        """Drop the cached roster of ``user`` (changed elsewhere: another node)."""
        self._cache.pop(user, None)
        loading = self._loading.get(user)
        if loading is not None:
            loading.dirty = True

    def on_session_closed(self, session: Any) -> None:
        if not self.server.sessions.has_local(session.bare):
            self._cache.pop(session.bare, None)

    def run_locked(self, user: str, fn: Callable[[], Any]) -> defer.Deferred:
        """Run ``fn`` (may be async) with ``user``'s roster changes serialized."""
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = defer.DeferredLock()

        def call() -> Any:
            result = fn()
            return defer.ensureDeferred(result) if inspect.iscoroutine(result) else result

        cluster = self.server.cluster
        if cluster is None:
            d = lock.run(call)
        else:
            # Other nodes change this roster too (a contact's subscription
            # handled there): one read-modify-write at a time cluster-wide.
            d = lock.run(lambda: cluster.locks.run("roster:" + user, call,
                                                   ROSTER_LOCK_TTL, ROSTER_LOCK_WAIT))

        def cleanup(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._locks.get(user) is lock:
                del self._locks[user]
            return result

        d.addBoth(cleanup)
        return d

    # -- changes (call under run_locked) --------------------------------------
    def check_room(self, state: RosterState, contact: str, item: Optional[RosterItem],
                   pending_in: bool = False) -> None:
        """Refuse a change that would add past a limit; nothing is stored then.

        A new roster item past ``max_items`` is ``not-allowed``: the
        account's own action (roster set, subscribe, approval,
        pre-approval) that only the user can undo, by removing items; the
        same answer as a roster set (§2.3.3 leaves the condition open;
        ``resource-constraint`` would ask the client to retry later).
        A new inbound request past ``max_pending_requests`` is
        ``resource-constraint`` (type wait) to its sender: room returns
        when the user answers requests.

        Raises:
            StanzaError: the limit that would be passed.
        """
        opts = self.options
        if item is not None and contact not in state.items and len(state.items) >= opts.max_items:
            raise StanzaError("not-allowed", text="roster is full")
        if (pending_in and contact not in state.requests
                and len(state.requests) >= opts.max_pending_requests):
            raise StanzaError("resource-constraint", text="too many pending subscription requests")

    async def store_item(self, user: str, state: RosterState, contact: str,
                         item: Optional[RosterItem]) -> None:
        """Store ``item`` for ``contact`` (None removes it) and push the change.

        Every path that creates an item comes here, so ``max_items`` holds
        for all of them (:meth:`check_room`).
        """
        old = state.items.get(contact)
        if item == old:
            return
        self.check_room(state, contact, item)
        roster = self.server.stores.roster
        if item is None:
            version = await roster.remove_item(user, contact)
            state.items.pop(contact, None)
        else:
            try:
                version = await roster.set_item(user, item, self.options.max_items)
            except RosterLimitReached:
                self._stale(user)
                raise StanzaError("not-allowed", text="roster is full") from None
            state.items[contact] = item
        state.version = version
        self._changed(user, state)
        self.push(user, item if item is not None else RosterItem(contact), version,
                  remove=item is None)

    async def set_pending_in(self, user: str, state: RosterState, contact: str,
                             pending: bool, status: Optional[str] = None) -> None:
        """Remember or forget ``contact``'s inbound request (§3.1.3)."""
        if pending == (contact in state.requests):
            return
        self.check_room(state, contact, None, pending)
        roster = self.server.stores.roster
        if pending:
            try:
                await roster.add_request(user, contact, status, self.options.max_pending_requests)
            except RosterLimitReached:
                self._stale(user)
                raise StanzaError("resource-constraint",
                                  text="too many pending subscription requests") from None
            state.requests[contact] = status
        else:
            await roster.remove_request(user, contact)
            state.requests.pop(contact, None)
        self._changed(user, state)

    def push(self, user: str, item: RosterItem, version: int, remove: bool = False) -> None:
        """Send a roster push to every interested resource of ``user`` (§2.1.6)."""
        for session in self.server.sessions.interested(user):
            iq = domish.Element((ns.CLIENT, "iq"))
            iq["type"] = "set"
            iq["id"] = f"push{next(self._ids)}"
            iq["to"] = session.jid.full
            query = iq.addElement((ns.ROSTER, "query"))
            query["ver"] = str(version)
            query.addChild(item_element(item, remove))
            session.send(iq)

    # -- IQ handlers -------------------------------------------------------
    def _owner(self, event: StanzaEvent) -> str:
        """Only the account itself manages its roster (§2.1.5)."""
        user = event.to.bare
        if event.sender is None or event.sender.bare != user:
            raise StanzaError("forbidden")
        return user

    def on_get(self, event: StanzaEvent) -> Any:
        user = self._owner(event)
        query = _payload(event.stanza)
        client_ver = query.getAttribute("ver")
        if event.origin is not None:
            event.origin.roster_requested = True
        d = self.load(user)

        def answer(state: RosterState) -> Optional[domish.Element]:
            if client_ver is not None and client_ver == str(state.version):
                return None  # XEP-0237 §2.4 / RFC 6121 §2.6.3: nothing changed
            result = domish.Element((ns.ROSTER, "query"))
            if client_ver is not None:
                result["ver"] = str(state.version)
            for contact in sorted(state.items):
                result.addChild(item_element(state.items[contact]))
            return result

        return d.addCallback(answer)

    def on_set(self, event: StanzaEvent) -> Any:
        user = self._owner(event)
        query = _payload(event.stanza)
        children = list(query.elements())
        if len(children) != 1 or children[0].name != "item":
            raise StanzaError("bad-request", text="a roster set holds exactly one item")
        item_el = children[0]
        contact = _item_jid(item_el)
        if item_el.getAttribute("subscription") == "remove":
            d = self.run_locked(user, lambda: self._remove(user, contact))
            return d.addCallback(self.route_all)
        name, groups = self._validate(item_el)
        return self.run_locked(user, lambda: self._update(user, contact, name, groups))

    def _validate(self, item_el: domish.Element) -> tuple[Optional[str], tuple[str, ...]]:
        opts = self.options
        name = item_el.getAttribute("name") or None
        if name is not None and len(name) > opts.max_name_length:
            raise StanzaError("not-acceptable", text="name too long")
        groups: list[str] = []
        for child in item_el.elements():
            if child.name != "group":
                continue
            group = str(child)
            if not group:
                raise StanzaError("not-acceptable", text="empty group name")
            if len(group) > opts.max_group_length:
                raise StanzaError("not-acceptable", text="group name too long")
            if group in groups:
                raise StanzaError("bad-request", text="duplicate group")
            groups.append(group)
        if len(groups) > opts.max_groups:
            raise StanzaError("not-acceptable", text="too many groups")
        return name, tuple(groups)

    async def _update(self, user: str, contact: str, name: Optional[str],
                      groups: tuple[str, ...]) -> None:
        # §2.3.2: subscription, ask and approved from the client are ignored.
        state = await self.load(user)
        old = state.items.get(contact)
        if old is None:
            new = RosterItem(contact, name, "none", False, False, groups)
        else:
            new = RosterItem(contact, name, old.subscription, old.ask, old.approved, groups)
        await self.store_item(user, state, contact, new)

    async def _remove(self, user: str, contact: str) -> list[domish.Element]:
        state = await self.load(user)
        old = state.items.get(contact)
        if old is None:
            raise StanzaError("item-not-found")
        pending_in = contact in state.requests
        await self.store_item(user, state, contact, None)
        await self.set_pending_in(user, state, contact, False)
        # §2.5.2: cancel both directions on the user's behalf.
        outgoing: list[domish.Element] = []
        if has_from(old.subscription):
            for session in self.server.sessions.available(user):
                outgoing.append(_presence(session.jid.full, contact, "unavailable"))
        if has_to(old.subscription) or old.ask:
            outgoing.append(_presence(user, contact, "unsubscribe"))
        if has_from(old.subscription) or pending_in:
            outgoing.append(_presence(user, contact, "unsubscribed"))
        return outgoing

    def route_all(self, stanzas: Optional[list[domish.Element]]) -> None:
        """Route what a locked change produced, once the lock is released.

        The contact may be local and answer straight into this user's
        roster, which needs the lock again.
        """
        for stanza in stanzas or ():
            self.server.router.route(stanza)


def _payload(iq: domish.Element) -> domish.Element:
    for child in iq.elements():
        return child
    raise StanzaError("bad-request")


def _item_jid(item_el: domish.Element) -> str:
    text = item_el.getAttribute("jid")
    if not text:
        raise StanzaError("bad-request", text="item without jid")
    try:
        jid = JID.parse(text)
    except InvalidJID:
        raise StanzaError("jid-malformed") from None
    if jid.resource is not None:
        raise StanzaError("bad-request", text="roster items are bare JIDs")
    return jid.bare


def _presence(sender: str, to: str, ptype: Optional[str]) -> domish.Element:
    pres = domish.Element((ns.CLIENT, "presence"))
    pres["from"] = sender
    pres["to"] = to
    if ptype is not None:
        pres["type"] = ptype
    return pres
