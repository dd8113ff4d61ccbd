"""Real-time block list: drop stanzas from JIDs and domains that a pubsub
node lists (the xmppbl.org scheme, as Prosody's mod_muc_rtbl and
ejabberd's mod_muc_rtbl read it).

The operator names the node::

    [modules.rtbl]
    service = "xmppbl.org"
    node = "muc_bans_sha256"

Each item of the node has as its id the lowercase hex SHA-256 of a bare JID
or of a domain; the payload is ignored. At start-up chatbx subscribes
(XEP-0060 §6.1) from its first hosted domain, then fetches the items
(§6.5); afterwards notifications (§7.1.2 items, §7.2.2.1 retract, §8.5
purge, §8.4 delete) sent to the domain keep the set current, and the
items are fetched again every ``refresh`` seconds (a missed notification
does not last). A failed subscription or fetch is retried after
``retry`` seconds. Requests go through ``server.router``, so the service
may be remote (s2s) or one of ours.

What is dropped, silently (a listed spammer learns nothing): messages to
local accounts and to the server, subscription requests, and every stanza
to the MUC service (joins, messages) except unavailable presence and
errors. Only senders on other servers are checked: a local account is the
operator's own business. The check costs nothing while the list is empty
and otherwise two SHA-256 of short strings and set lookups per stanza.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import FILTER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, parse_or_none

log = Logger(observer=log_observer)

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_PUBSUB_EVENT = "http://jabber.org/protocol/pubsub#event"
#: seconds after start-up before the first request (s2s is wired after modules)
START_DELAY = 1.0


def jid_hash(text: str) -> str:
    """The item id that lists ``text`` (a bare JID or a domain)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RtblFeature(Feature):
    name = "rtbl"
    spec = "real-time block list on a pubsub node (xmppbl.org scheme, XEP-0060)"

    @dataclass(frozen=True)
    class Options:
        #: JID of the pubsub service ("" = no block list)
        service: str = ""
        #: the node whose item ids are SHA-256 of listed JIDs/domains
        node: str = "muc_bans_sha256"
        #: seconds between full fetches of the items
        refresh: float = 3600.0
        #: seconds before a failed subscription or fetch is tried again
        retry: float = 300.0
        #: seconds an answer to a request may take
        timeout: float = 60.0
        #: most entries kept (a larger list is cut, with a warning)
        max_entries: int = 100000

        def __post_init__(self) -> None:
            if self.service:
                jid = parse_or_none(self.service)
                if jid is None or jid.resource is not None:
                    raise ValueError(f"service: {self.service!r} is not a JID")
                if not self.node:
                    raise ValueError("node must not be empty")
            for key in ("refresh", "retry", "timeout"):
                if getattr(self, key) <= 0:
                    raise ValueError(f"{key} must be positive")
            if self.max_entries < 1:
                raise ValueError("max_entries must be positive")

    def setup(self) -> None:
        #: SHA-256 hex of the listed bare JIDs and domains
        self.hashes: frozenset[str] = frozenset()
        self.subscribed = False
        self._ids = 0
        self._timer: Any = None
        if self.options is None:
            self.options = self.Options()
        if not self.options.service:
            return
        self.service = JID.parse(self.options.service).full
        self.local = sorted(self.server.hosts)[0]
        for kind in ("bare", "full", "host"):
            self.hook(f"message/{kind}", self.on_message, FILTER + 10)
        self.hook("message/host", self.on_notification, FILTER + 20)
        self.hook("presence/bare", self.on_presence, FILTER + 10)
        self.hook("presence/full", self.on_presence, FILTER + 10)
        self.hook("muc/stanza", self.on_muc)
        self._schedule(START_DELAY)

    def teardown(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        super().teardown()

    # -- the hot path --------------------------------------------------------
    def listed(self, jid: Optional[JID]) -> bool:
        """Whether ``jid`` (a sender on another server) or its domain is listed."""
        hashes = self.hashes
        if not hashes or jid is None or jid.host in self.server.hosts:
            return False
        if jid.user is not None and jid_hash(jid.bare) in hashes:
            return True
        return jid_hash(jid.host) in hashes

    def _drop(self, event: StanzaEvent, what: str) -> bool:
        log.debug("rtbl: {what} from listed {jid} dropped", what=what, jid=event.sender.bare)
        return True

    def on_message(self, event: StanzaEvent) -> Optional[bool]:
        if self.hashes and event.origin is None and self.listed(event.sender):
            return self._drop(event, "message")
        return None

    def on_presence(self, event: StanzaEvent) -> Optional[bool]:
        if (self.hashes and event.origin is None and event.stanza.getAttribute("type") == "subscribe"
                and self.listed(event.sender)):
            return self._drop(event, "subscription request")
        return None

    def on_muc(self, event: StanzaEvent) -> Optional[bool]:
        if (self.hashes and event.stanza.getAttribute("type") not in ("unavailable", "error")
                and self.listed(event.sender)):
            return self._drop(event, f"MUC {event.stanza.name}")
        return None

    # -- keeping the list ------------------------------------------------------
    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.server.clock.callLater(delay, self._refresh)

    def _refresh(self) -> defer.Deferred[None]:
        self._timer = None
        d = defer.ensureDeferred(self.sync())

        def next_run(ok: bool) -> None:
            self._schedule(self.options.refresh if ok else self.options.retry)

        def failed(failure: Any) -> None:
            log.failure("rtbl: sync with {service} failed", failure, service=self.service)
            self._schedule(self.options.retry)

        return d.addCallbacks(next_run, failed)

    async def sync(self) -> bool:
        """Subscribe (once), then fetch every item; False when either failed."""
        opts = self.options
        if not self.subscribed:
            sub = domish.Element((NS_PUBSUB, "pubsub"))
            el = sub.addElement("subscribe")
            el["node"], el["jid"] = opts.node, self.local
            answer = await self._request("set", sub)
            if answer is None or answer.getAttribute("type") != "result":
                log.warn("rtbl: subscribing to {node} on {service} failed ({why}); retrying in {retry}s",
                         node=opts.node, service=self.service, why=_condition(answer), retry=opts.retry)
                return False
            self.subscribed = True
        query = domish.Element((NS_PUBSUB, "pubsub"))
        query.addElement("items")["node"] = opts.node
        answer = await self._request("get", query)
        if answer is None or answer.getAttribute("type") != "result":
            log.warn("rtbl: fetching {node} from {service} failed ({why}); retrying in {retry}s",
                     node=opts.node, service=self.service, why=_condition(answer), retry=opts.retry)
            return False
        ids: list[str] = []
        for pubsub in answer.elements(NS_PUBSUB, "pubsub"):
            for items in pubsub.elements(NS_PUBSUB, "items"):
                ids.extend(_item_ids(items, NS_PUBSUB))
        self._replace(ids)
        return True

    def _replace(self, ids: list[str]) -> None:
        before = len(self.hashes)
        if len(ids) > self.options.max_entries:
            log.warn("rtbl: {count} entries, only {max} kept", count=len(ids), max=self.options.max_entries)
            ids = ids[:self.options.max_entries]
        self.hashes = frozenset(ids)
        log.info("rtbl: {count} entries from {node} on {service} (before: {before})",
                 count=len(self.hashes), node=self.options.node, service=self.service, before=before)

    def on_notification(self, event: StanzaEvent) -> Optional[bool]:
        """XEP-0060 §7.1.2/§7.2.2.1/§8.4/§8.5 events of our node from the service."""
        sender = event.sender
        if sender is None or sender.full != self.service or event.to.host != self.local:
            return None
        ev = next(event.stanza.elements(NS_PUBSUB_EVENT, "event"), None)
        if ev is None:
            return None
        node = self.options.node
        for child in ev.elements():
            if child.getAttribute("node") != node:
                continue
            if child.name == "items":
                added = _item_ids(child, NS_PUBSUB_EVENT)
                gone = {r.getAttribute("id") for r in child.elements(NS_PUBSUB_EVENT, "retract")}
                current = (self.hashes | frozenset(added)) - gone
                if len(current) > self.options.max_entries:
                    log.warn("rtbl: list full ({max}); new entries ignored", max=self.options.max_entries)
                    current = self.hashes - gone
                log.info("rtbl: {added} added, {removed} removed by {service} ({count} entries)",
                         added=len(current - self.hashes), removed=len(self.hashes - current),
                         service=self.service, count=len(current))
                self.hashes = frozenset(current)
            elif child.name in ("purge", "delete"):
                self.hashes = frozenset()
                if child.name == "delete":
                    self.subscribed = False
                log.info("rtbl: {node} {what} by {service}", node=node, what=child.name,
                         service=self.service)
        return True

    def _request(self, type_: str, payload: domish.Element) -> defer.Deferred[Optional[domish.Element]]:
        """Send an IQ from our domain to the service; fires with the answer
        (result or error) or None on timeout."""
        self._ids += 1
        iq_id = f"rtbl{self._ids}"
        iq = domish.Element((ns.CLIENT, "iq"))
        iq["type"], iq["id"], iq["from"], iq["to"] = type_, iq_id, self.local, self.service
        iq.addChild(payload)
        d: defer.Deferred[Optional[domish.Element]] = defer.Deferred()
        names = [f"iq-result/host/{iq_id}", f"iq-error/host/{iq_id}"]

        def answered(event: StanzaEvent) -> Optional[bool]:
            if event.sender is None or event.sender.full != self.service or event.to.host != self.local:
                return None
            finish(event.stanza)
            return True

        def finish(answer: Optional[domish.Element]) -> None:
            for name in names:
                self.server.events.off(name, answered)
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(answer)

        for name in names:
            self.server.events.on(name, answered)
        timer = self.server.clock.callLater(self.options.timeout, finish, None)
        self.server.router.route(iq)
        return d


def _item_ids(items: domish.Element, uri: str) -> list[str]:
    """The ids of ``<item/>`` children that look like SHA-256 hex."""
    out = []
    for item in items.elements(uri, "item"):
        item_id = (item.getAttribute("id") or "").lower()
        if len(item_id) == 64 and all(c in "0123456789abcdef" for c in item_id):
            out.append(item_id)
    return out


def _condition(answer: Optional[domish.Element]) -> str:
    if answer is None:
        return "no answer"
    for error in answer.elements(None, "error"):
        for child in error.elements():
            if child.name != "text":
                return str(child.name)
    return "error"


__all__ = ["RtblFeature", "jid_hash"]
