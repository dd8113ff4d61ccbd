"""Push Notifications (XEP-0357 0.4.1): wake a sleeping phone.

A client enables a push service (``<enable jid=... node=...>`` with an
optional publish-options form, §5) for its account; the registration is
stored per account, service and node (storage/push.py), with the
resource that enabled it (the device). When an important message (a body,
an encrypted payload, a call proposal; not chat states or receipts)
arrives for an account none of whose sessions has a live connection (all
hibernated by stream management, or none at all: offline storage takes
it), chatbx publishes a notification to each registration (§7): an IQ
set from the account's bare JID to the service, through the router, so a
service on another server is reached over s2s.

The notification carries the ``urn:xmpp:push:summary`` form: the number
of messages since the account last had a live connection and the last
sender. The body only when the client asked for it and the operator
allows it (``allow_body``), never for an encrypted message (its body is
a fallback text), and never in logs. chatbx's way for a client to ask: a
form with FORM_TYPE ``urn:xmpp:push:summary`` inside ``<enable/>`` whose
``last-message-body`` field is true (XEP-0357 has no element for it; the
same FORM_TYPE names the field the client wants).

Rate limit: one notification per registration (device) per
``min_interval`` seconds; what arrives in between is summarized in one
notification sent when the interval ends. A publish answered with an
error of type cancel or auth disables the registration (§7.1); a wait
error or no answer keeps it.

Registrations are read from the database once per account and kept in a
bounded cache (``cache_ttl`` seconds, cleared here on enable/disable);
counters are in memory: both are caches a node may lose.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server import _compat  # noqa: F401  (before any wokkel import)
from wokkel import data_form

from chatbx_server.events import DELIVER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.push import PushRegistration
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError

log = Logger(observer=log_observer)

NS = "urn:xmpp:push:0"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
PUBSUB = "http://jabber.org/protocol/pubsub"
#: payloads that make a message worth waking a phone for, besides a body
IMPORTANT_NS = frozenset(("eu.siacs.conversations.axolotl", "urn:xmpp:omemo:2",
                          "urn:xmpp:openpgp:0", "jabber:x:encrypted"))
ENCRYPTED_NS = IMPORTANT_NS
JINGLE_MESSAGE = "urn:xmpp:jingle-message:0"
#: between the archive/carbons observers and delivery: sees every message once
PRIORITY = DELIVER + 20


def importance(stanza: domish.Element) -> tuple[bool, bool]:
    """(worth a notification, encrypted)."""
    if stanza.getAttribute("type", "normal") not in ("chat", "normal"):
        return False, False
    important = encrypted = False
    for child in stanza.elements():
        if child.uri in ENCRYPTED_NS:
            important = encrypted = True
        elif child.name == "body" and child.uri == ns.CLIENT:
            important = True
        elif child.uri == JINGLE_MESSAGE and child.name == "propose":
            important = True
    return important, encrypted


def parse_enable(enable: domish.Element) -> PushRegistration:
    """An ``<enable/>`` as a registration (resource filled in by the caller)."""
    service = enable.getAttribute("jid")
    if not service:
        raise StanzaError("bad-request", text="'jid' is required")
    try:
        service = JID.parse(service, cache=False).full
    except InvalidJID:
        raise StanzaError("jid-malformed") from None
    node = enable.getAttribute("node") or ""
    if len(node) > 1023:
        raise StanzaError("bad-request", text="node too long")
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    include_body = False
    for child in enable.elements():
        if child.uri != ns.DATA_FORMS or child.name != "x":
            continue
        form = data_form.Form.fromElement(child)
        # wokkel reads FORM_TYPE only from a hidden field; clients often omit the type.
        type_field = form.fields.get("FORM_TYPE")
        form_type = form.formNamespace or (str(type_field.value) if type_field else None)
        if form_type == PUBLISH_OPTIONS:
            options = tuple((var, tuple(str(v) for v in field.values))
                            for var, field in form.fields.items() if var != "FORM_TYPE")
        elif form_type == SUMMARY:
            field = form.fields.get("last-message-body")
            include_body = field is not None and str(field.value).lower() in ("1", "true")
    if len(repr(options)) > 4096:
        raise StanzaError("not-acceptable", text="publish options too large")
    return PushRegistration(service, node, None, options, include_body)


class _Device:
    """Rate-limit state of one registration."""

    __slots__ = ("last_sent", "timer")

    def __init__(self) -> None:
        self.last_sent = float("-inf")
        self.timer: Any = None


class _Unread:
    """What arrived since the account last had a live connection."""

    __slots__ = ("count", "sender", "body")

    def __init__(self) -> None:
        self.count = 0
        self.sender: Optional[str] = None
        self.body: Optional[str] = None


class PushFeature(Feature):
    name = "push"
    spec = "XEP-0357 0.4.1 (Push Notifications)"
    account_disco_features = (NS,)

    @dataclass(frozen=True)
    class Options:
        #: seconds between two notifications to one device
        min_interval: float = 10.0
        #: registrations per account (the oldest go)
        max_per_user: int = 10
        #: whether clients may ask for message bodies in notifications
        allow_body: bool = True
        #: seconds to wait for the push service's answer
        timeout: float = 60.0
        #: seconds registrations stay cached; accounts cached
        cache_ttl: float = 300.0
        max_cached: int = 10000

        def __post_init__(self) -> None:
            if self.min_interval < 0 or self.timeout <= 0 or self.cache_ttl < 0:
                raise ValueError("min_interval, timeout and cache_ttl must not be negative")
            if self.max_per_user < 1 or self.max_cached < 1:
                raise ValueError("max_per_user and max_cached must be at least 1")

    def setup(self) -> None:
        self._cache: OrderedDict[str, tuple[float, list[PushRegistration]]] = OrderedDict()
        #: bounded by max_cached (oldest first out), like the registrations
        self._unread: OrderedDict[str, _Unread] = OrderedDict()
        self._devices: OrderedDict[tuple[str, str, str], _Device] = OrderedDict()
        #: publishes awaiting an answer: id -> (account, registration, timeout call)
        self._in_flight: dict[str, tuple[str, PushRegistration, Any]] = {}
        self.iq("set", "bare", NS, "enable", self.on_enable)
        self.iq("set", "bare", NS, "disable", self.on_disable)
        self.hook("message/bare", self.on_message, PRIORITY)
        self.hook("message/full", self.on_message, PRIORITY)
        self.hook("session/bound", self.on_online)
        self.hook("session/resumed", self.on_online)

    def teardown(self) -> None:
        for device in self._devices.values():
            if device.timer is not None and device.timer.active():
                device.timer.cancel()
        for _, _, call in self._in_flight.values():
            if call.active():
                call.cancel()
        self._devices.clear()
        self._in_flight.clear()
        super().teardown()

    # -- enabling (§5, §6) -------------------------------------------------------------
    def _own(self, event: StanzaEvent) -> str:
        sender = event.sender
        if sender is None or event.origin is None or sender.bare != event.to.bare:
            raise StanzaError("forbidden")
        return event.to.bare

    async def on_enable(self, event: StanzaEvent) -> None:
        account = self._own(event)
        enable = event.stanza.firstChildElement()
        reg = parse_enable(enable)._replace(resource=event.sender.resource)
        if reg.include_body and not self.options.allow_body:
            reg = reg._replace(include_body=False)
        try:
            await self.server.stores.push.enable(account, reg, self.options.max_per_user)
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        self._cache.pop(account, None)
        log.info("push enabled for {user} ({resource})", user=account, resource=reg.resource)

    async def on_disable(self, event: StanzaEvent) -> None:
        account = self._own(event)
        disable = event.stanza.firstChildElement()
        service = disable.getAttribute("jid")
        if not service:
            raise StanzaError("bad-request", text="'jid' is required")
        try:
            service = JID.parse(service, cache=False).full
        except InvalidJID:
            raise StanzaError("jid-malformed") from None
        await self.server.stores.push.disable(account, service, disable.getAttribute("node"))
        self._cache.pop(account, None)

    # -- noticing what needs a notification ----------------------------------------------
    def on_online(self, session: Any) -> None:
        """A live connection: the phone is awake; the count starts again."""
        self._unread.pop(session.bare, None)

    def _asleep(self, account: str) -> bool:
        for session in self.server.sessions.resources(account).values():
            sm = session.sm
            if sm is None or sm.hibernated is None:
                return False
        return True

    def on_message(self, event: StanzaEvent) -> None:
        account = event.to.bare
        if not self._asleep(account):
            return None
        important, encrypted = importance(event.stanza)
        if not important:
            return None
        body = event.stanza.body
        d = defer.ensureDeferred(self._notify(
            account, event.stanza.getAttribute("from"),
            str(body) if body is not None and not encrypted else None))
        d.addErrback(lambda f: log.failure("push notification for {user} failed", f, user=account))
        return None  # an observer: delivery goes on

    async def _registrations(self, account: str) -> list[PushRegistration]:
        now = self.server.clock.seconds()
        cached = self._cache.get(account)
        if cached is not None and now - cached[0] < self.options.cache_ttl:
            return cached[1]
        regs = await self.server.stores.push.list(account)
        self._cache[account] = (now, regs)
        self._cache.move_to_end(account)
        while len(self._cache) > self.options.max_cached:
            self._cache.popitem(last=False)
        return regs

    async def _notify(self, account: str, sender: Optional[str], body: Optional[str]) -> None:
        regs = await self._registrations(account)
        if not regs:
            return
        unread = self._unread.get(account)
        if unread is None:
            unread = self._unread[account] = _Unread()
            while len(self._unread) > self.options.max_cached:
                self._unread.popitem(last=False)
        unread.count += 1
        unread.sender = sender
        unread.body = body
        clock = self.server.clock
        for reg in regs:
            key = (account, reg.service, reg.node)
            device = self._devices.get(key)
            if device is None:
                device = self._devices[key] = _Device()
                while len(self._devices) > self.options.max_cached:
                    _, old = self._devices.popitem(last=False)
                    if old.timer is not None and old.timer.active():
                        old.timer.cancel()
            if device.timer is not None:
                continue  # a notification is due: it will carry the latest summary
            wait = device.last_sent + self.options.min_interval - clock.seconds()
            if wait > 0:
                device.timer = clock.callLater(wait, self._publish, account, reg)
            else:
                self._publish(account, reg)

    # -- publishing (§7) ----------------------------------------------------------------
    def notification(self, account: str, reg: PushRegistration) -> domish.Element:
        """The publish IQ for one registration, with the current summary."""
        unread = self._unread.get(account) or _Unread()
        iq = domish.Element((ns.CLIENT, "iq"))
        iq["type"] = "set"
        iq["from"] = account
        iq["to"] = reg.service
        iq["id"] = "push-" + os.urandom(8).hex()
        pubsub = iq.addElement((PUBSUB, "pubsub"))
        publish = pubsub.addElement("publish")
        publish["node"] = reg.node
        item = publish.addElement("item")
        note = item.addElement((NS, "notification"))
        form = data_form.Form("submit", formNamespace=SUMMARY)
        form.addField(data_form.Field(var="message-count", value=str(unread.count)))
        if unread.sender:
            form.addField(data_form.Field("jid-single", var="last-message-sender",
                                          value=unread.sender))
        if reg.include_body and self.options.allow_body and unread.body:
            form.addField(data_form.Field(var="last-message-body", value=unread.body))
        note.addChild(form.toElement())
        if reg.publish_options:
            options = data_form.Form("submit", formNamespace=PUBLISH_OPTIONS)
            for var, values in reg.publish_options:
                options.addField(data_form.Field(var=var, values=list(values)))
            pubsub.addElement("publish-options").addChild(options.toElement())
        return iq

    def _publish(self, account: str, reg: PushRegistration) -> None:
        device = self._devices.get((account, reg.service, reg.node))
        if device is None:
            return
        device.timer = None
        if not self._asleep(account) or account not in self._unread:
            return  # woke up meanwhile
        device.last_sent = self.server.clock.seconds()
        iq = self.notification(account, reg)
        iq_id = iq["id"]
        events = self.server.events
        events.on(f"iq-result/bare/{iq_id}", self._answered)
        events.on(f"iq-error/bare/{iq_id}", self._answered)
        call = self.server.clock.callLater(self.options.timeout, self._forget, iq_id)
        self._in_flight[iq_id] = (account, reg, call)
        log.info("push notification for {user} to {service} ({count} messages)", user=account,
                 service=reg.service, count=self._unread[account].count)
        self.server.router.route(iq)

    def _forget(self, iq_id: str) -> Optional[tuple[str, PushRegistration, Any]]:
        events = self.server.events
        events.off(f"iq-result/bare/{iq_id}", self._answered)
        events.off(f"iq-error/bare/{iq_id}", self._answered)
        return self._in_flight.pop(iq_id, None)

    def _answered(self, event: StanzaEvent) -> bool:
        iq = event.stanza
        entry = self._in_flight.get(iq.getAttribute("id", ""))
        if entry is None:
            return True
        account, reg, call = entry
        if event.sender is None or event.sender.full != reg.service or event.to.bare != account:
            return True  # not from the service we asked: ignored
        self._forget(iq["id"])
        if call.active():
            call.cancel()
        if iq.getAttribute("type") == "error":
            error = iq.error
            kind = error.getAttribute("type") if error is not None else "cancel"
            if kind in ("cancel", "auth"):
                # §7.1: the service refuses: treat the registration as disabled.
                log.info("push service {service} refused a notification for {user}: disabled",
                         service=reg.service, user=account)
                d = self.server.stores.push.disable(account, reg.service, reg.node)
                d.addErrback(lambda f: log.failure("disabling a push registration failed", f))
                self._cache.pop(account, None)
                self._devices.pop((account, reg.service, reg.node), None)
        return True


__all__ = ["PushFeature", "importance", "parse_enable", "NS"]
