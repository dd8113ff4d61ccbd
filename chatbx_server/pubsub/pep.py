"""Personal Eventing Protocol (XEP-0163 1.2): a pubsub service on every
account's bare JID, with the subset of XEP-0060 clients use and
publish-options (XEP-0223).

- Only the account publishes, configures, purges and deletes; nodes are
  created on first publish (#auto-create) with the publish-options as
  configuration; an existing node whose configuration differs from a
  publish-option is refused with ``conflict`` + ``precondition-not-met``
  (XEP-0060 §7.1.5), never silently changed.
- Who may read follows the node's access model (presence by default, open,
  roster, whitelist); the account always may.
- Notifications (§4.3) go to the account's own available resources and its
  presence-subscribed contacts' resources that announce ``NODE+notify`` in
  their entity capabilities (XEP-0115, read through the caps feature), and
  to explicit subscribers; never to a resource without the interest.
- The last item of each node goes to a resource when its interest becomes
  known (it comes online: §4.3.1 "send_last_published_item" =
  on_sub_and_presence), for the account's own nodes and for those of its
  local contacts, and to a contact's resources when the account approves
  its subscription.

Everything outgoing goes through ``router.route``: a contact may be on
another node or another server.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import CHECK, StanzaEvent
from chatbx_server.features.caps import CapsChange
from chatbx_server.features.subscription import has_from, has_to
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.pubsub.access import may_access
from chatbx_server.pubsub.engine import Limits, PubSubEngine
from chatbx_server.pubsub.protocol import FEATURES, NS_OWNER, NS_PUBSUB, event_message
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.pubsub import Node
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.stanzas import StanzaError

#: XEP-0045's payload on presence relayed by a room
MUC_USER = "http://jabber.org/protocol/muc#user"

log = Logger(observer=log_observer)

__all__ = ["PEPFeature", "PEPEngine"]


def _addressed(message: domish.Element, to: str) -> domish.Element:
    """A copy of ``message`` to ``to``; children are shared, not copied."""
    el = domish.Element((message.uri, message.name))
    el.attributes = dict(message.attributes)
    el["to"] = to
    el.children = list(message.children)
    return el


class PEPEngine(PubSubEngine):
    """PubSubEngine whose services are accounts."""

    pep = True

    def __init__(self, feature: "PEPFeature", limits: Limits) -> None:
        super().__init__(feature.server.stores.pubsub, limits)
        self.feature = feature

    def owner_account(self, service: str) -> Optional[str]:
        return service

    def is_owner(self, service: str, node: Optional[Node], requester: JID,
                 affiliation: Optional[str]) -> bool:
        return requester.bare == service

    def may_create(self, service: str, requester: JID) -> bool:
        return requester.bare == service

    async def relation(self, service: str, node: Node, requester: JID) -> tuple[Optional[str], tuple[str, ...]]:
        state = await self.feature.roster.load(service)
        item = state.items.get(requester.bare)
        if item is None:
            return None, ()
        return item.subscription, tuple(item.groups)

    def notify(self, service: str, node: Node, event_child: domish.Element,
               subscribers: list[str], item_ids: tuple[str, ...] = ()) -> None:
        d = self.feature.fan_out(service, node, event_message(service, event_child), subscribers)
        d.addErrback(lambda f: log.failure("PEP notification of {node} failed", f, node=node.name))

    def send_to(self, message: domish.Element) -> None:
        self.feature.server.router.route(message)

    def published(self, service: str, node: Node, items: list[tuple[str, Optional[domish.Element]]]) -> None:
        self.feature.server.events.fire_all("pep/published", Published(service, node.name, items))

    def retracted(self, service: str, node: Node, item_ids: list[str]) -> None:
        self.feature.server.events.fire_all("pep/retracted", Published(service, node.name,
                                                                       [(i, None) for i in item_ids]))


@dataclass(frozen=True)
class Published:
    """What ``pep/published`` and ``pep/retracted`` carry: the account, the
    node and (item id, payload or None) in order."""

    owner: str
    node: str
    items: list[tuple[str, Optional[domish.Element]]]


class PEPFeature(Feature):
    name = "pep"
    spec = ("XEP-0163 1.2 (Personal Eventing Protocol), XEP-0060 1.26 (subset), "
            "XEP-0223 1.1 (publish-options)")
    depends = ("roster", "caps")
    account_disco_features = FEATURES

    @dataclass(frozen=True)
    class Options:
        #: bytes of one item's payload; a bigger item is refused (payload-too-big)
        max_item_bytes: int = 256 * 1024
        #: items a node keeps at most; pubsub#max_items = "max" means this
        max_items: int = 256
        #: nodes per account; publishing to a new node past it is refused
        max_nodes: int = 256

        def __post_init__(self) -> None:
            if min(self.max_item_bytes, self.max_items, self.max_nodes) < 1:
                raise ValueError("max_item_bytes, max_items and max_nodes must be at least 1")

    def setup(self) -> None:
        options = self.options
        self.roster: Any = self.server.modules.get("roster")
        self.caps: Any = self.server.modules.get("caps")
        self.engine = PEPEngine(self, Limits(options.max_item_bytes, options.max_items,
                                             options.max_nodes))
        for iq_type in ("get", "set"):
            self.iq(iq_type, "bare", NS_PUBSUB, "pubsub", self.on_pubsub)
            self.iq(iq_type, "bare", NS_OWNER, "pubsub", self.on_pubsub)
        #: remote full JID -> local accounts whose last items wait for its caps
        self._remote_waiting: OrderedDict[str, set[str]] = OrderedDict()
        self.hook("caps/changed", self.on_caps_changed)
        self.hook("presence/bare", self.on_subscribed, CHECK)
        self.hook("presence/bare", self.on_remote_presence, CHECK)
        self.hook("presence/full", self.on_remote_presence, CHECK)
        # Not fired by the account deletion code yet (storage cascades take
        # the account's own nodes); subscriptions elsewhere go here when it is.
        self.hook("user/deleted", self.on_user_deleted)

    def disco_info(self, target: Any, node: Optional[str]) -> tuple[Iterable[tuple[str, str, str]], Iterable[str]]:
        if getattr(target, "user", None) is not None and node is None:
            return [("pubsub", "pep", "")], ()
        return (), ()

    # -- requests -------------------------------------------------------------------
    def on_pubsub(self, event: StanzaEvent) -> Any:
        if event.sender is None:
            raise StanzaError("forbidden")
        service = event.to.bare
        stanza = event.stanza
        pubsub = stanza.firstChildElement()
        return self.engine.handle(service, event.sender, stanza.getAttribute("type"), pubsub)

    # -- for other features (XEP-0398, XEP-0411) ---------------------------------------
    async def publish_item(self, owner: str, node: str, item_id: str, payload: domish.Element,
                           options: Optional[dict[str, Any]] = None) -> None:
        """Publish as the account itself would (auto-create with ``options``,
        no preconditions), with notifications."""
        from chatbx_server.pubsub import config as cfg
        from chatbx_server.pubsub.protocol import NS_EVENT, item_element, items_element

        create = cfg.apply_options(cfg.default_config(True), options or {})
        result = await self.server.stores.pubsub.publish(
            owner, node, owner, [(item_id, payload.toXml())], owner, create, {},
            self.options.max_nodes, self.options.max_items)
        event_items = items_element(node, [item_element(item_id, payload, uri=NS_EVENT)], NS_EVENT)
        self.engine.notify(owner, result.node, event_items, result.subscribers)

    async def retract_item(self, owner: str, node: str, item_id: str) -> bool:
        """Retract one item with a notification; False when it was not there."""
        from chatbx_server.pubsub.protocol import NS_EVENT, items_element
        from chatbx_server.storage.pubsub import ItemNotFound, NodeNotFound

        try:
            stored, subscribers = await self.server.stores.pubsub.retract(owner, node, [item_id])
        except (ItemNotFound, NodeNotFound):
            return False
        event_items = items_element(node, (), NS_EVENT)
        event_items.addElement("retract")["id"] = item_id
        self.engine.notify(owner, stored, event_items, subscribers)
        return True

    async def items(self, owner: str, node: str) -> Optional[list[Any]]:
        """The node's items (oldest first), None when there is no such node."""
        from chatbx_server.storage.pubsub import NodeNotFound

        try:
            return (await self.server.stores.pubsub.items(owner, node))[1]
        except NodeNotFound:
            return None

    # -- notifications ---------------------------------------------------------------
    def fan_out(self, service: str, node: Node, message: domish.Element,
                subscribers: list[str]) -> defer.Deferred[int]:
        """Send ``message`` to every interested resource; fires with the count."""
        state = self.roster.cached(service)
        if state is not None and node.config.get("access_model") not in ("whitelist", "roster"):
            return defer.succeed(self._fan_out(service, node, message, subscribers, state, {}))
        return defer.ensureDeferred(self._fan_out_loaded(service, node, message, subscribers))

    async def _fan_out_loaded(self, service: str, node: Node, message: domish.Element,
                              subscribers: list[str]) -> int:
        state = await self.roster.load(service)
        affiliations: dict[str, str] = {}
        if node.config.get("access_model") in ("whitelist", "roster"):
            affiliations = await self.server.stores.pubsub.affiliations(service, node.name)
        return self._fan_out(service, node, message, subscribers, state, affiliations)

    def _fan_out(self, service: str, node: Node, message: domish.Element, subscribers: list[str],
                 state: Any, affiliations: dict[str, str]) -> int:
        caps = self.caps
        name = node.name
        sessions = self.server.sessions
        targets: dict[str, None] = {}
        for session in sessions.available(service):
            full = session.jid.full
            if caps.wants(full, name):
                targets[full] = None
        config = node.config
        for contact, item in state.items.items():
            if not has_from(item.subscription):
                continue
            if not may_access(config, False, affiliations.get(contact), item.subscription,
                              item.groups):
                continue
            if self.server.is_local(contact.rpartition("@")[2]):
                for session in sessions.available(contact):
                    full = session.jid.full
                    if caps.wants(full, name):
                        targets[full] = None
            else:
                for full in caps.remote_resources(contact):
                    if caps.wants(full, name):
                        targets[full] = None
        for jid in subscribers:
            bare = jid.partition("/")[0]
            if "/" in jid:
                targets[jid] = None
            elif not any(t.startswith(bare + "/") for t in targets):
                targets[jid] = None
        route = self.server.router.route
        for to in targets:
            route(_addressed(message, to))
        return len(targets)

    # -- last published items --------------------------------------------------------
    def on_caps_changed(self, change: CapsChange) -> None:
        jid = change.jid
        if jid.user is None:
            return
        if not self.server.is_local(jid.host):
            owners = self._remote_waiting.pop(jid.full, None)
            if owners:
                self._to_remote(jid, change.features, sorted(owners))
            return
        wanted = {f[:-len("+notify")] for f in change.features if f.endswith("+notify")}
        if change.old is not None:
            wanted -= {f[:-len("+notify")] for f in change.old if f.endswith("+notify")}
        if not wanted:
            return
        d = defer.ensureDeferred(self._send_last_items(jid, wanted))
        d.addErrback(self._failed, "sending last items")

    def _failed(self, failure: Any, what: str) -> None:
        if failure.check(UnknownUser):
            return None
        log.failure("PEP: {what} failed", failure, what=what)
        return None

    async def _send_last_items(self, jid: JID, wanted: set[str],
                               services: Optional[list[str]] = None) -> int:
        """Send ``jid`` the last item of each node it wants from its own
        account and from its local contacts whose presence it receives."""
        user = jid.bare
        if services is None:
            state = await self.roster.load(user)
            services = [user] + [c for c, item in state.items.items()
                                 if has_to(item.subscription)
                                 and self.server.is_local(c.rpartition("@")[2])]
        sent = 0
        for node, item in await self.server.stores.pubsub.last_items(services):
            if node.name not in wanted:
                continue
            if node.config.get("send_last_published_item") != "on_sub_and_presence":
                continue
            if node.service != user and not await self._contact_may_read(node, jid):
                continue
            self.engine.notify_one(node.service, node, [item], jid.full)
            sent += 1
        return sent

    async def _contact_may_read(self, node: Node, jid: JID) -> bool:
        try:
            return await self.engine.may_read(node.service, node, jid)
        except UnknownUser:
            return False

    # -- remote contacts (XEP-0163 §4.3.1 over s2s) ---------------------------------------
    def on_remote_presence(self, event: StanzaEvent) -> None:
        """A remote contact's available presence reaches a local account:
        its resource gets the account's last items it wants, once its caps
        are known (the caps feature tracks remote resources)."""
        sender = event.sender
        stanza = event.stanza
        if (sender is None or sender.resource is None or stanza.getAttribute("type") is not None
                or self.server.is_local(sender.host)):
            return None
        if next(stanza.elements(MUC_USER, "x"), None) is not None:
            # An occupant's presence relayed by a room (XEP-0045 §7.2.3): the
            # occupant JID is not a contact (XEP-0163 §4.3.1 sends last items
            # to contacts), and a room of N occupants would otherwise leave
            # N x N entries here (N for each occupant JID).
            return None
        owner = event.to.bare
        features = self.caps.features(sender.full)
        if features is not None:
            self._to_remote(sender, features, [owner])
            return None
        waiting = self._remote_waiting.setdefault(sender.full, set())
        waiting.add(owner)
        self._remote_waiting.move_to_end(sender.full)
        while len(self._remote_waiting) > self.caps.options.max_remote:
            self._remote_waiting.popitem(last=False)
        return None

    def _to_remote(self, jid: JID, features: frozenset[str], owners: list[str]) -> None:
        wanted = {f[:-len("+notify")] for f in features if f.endswith("+notify")}
        if wanted:
            d = defer.ensureDeferred(self._send_last_items(jid, wanted, owners))
            d.addErrback(self._failed, "sending last items to a remote contact")

    def on_user_deleted(self, user: Any) -> None:
        bare = getattr(user, "bare", user)
        d = self.server.stores.pubsub.forget_jid(str(bare))
        d.addErrback(self._failed, "forgetting a deleted account's subscriptions")

    def on_subscribed(self, event: StanzaEvent) -> None:
        """A local account approved ``to``'s subscription: its resources get
        the account's last items (XEP-0163 §4.3.1, on subscription)."""
        stanza = event.stanza
        sender = event.sender
        if stanza.getAttribute("type") != "subscribed" or sender is None:
            return None
        owner = sender.bare
        if not self.server.is_local(sender.host) or owner == event.to.bare:
            return None
        for session in self.server.sessions.available(event.to.bare):
            features = self.caps.features(session.jid.full) or frozenset()
            wanted = {f[:-len("+notify")] for f in features if f.endswith("+notify")}
            if wanted:
                d = defer.ensureDeferred(self._send_last_items(session.jid, wanted, [owner]))
                d.addErrback(self._failed, "sending last items on subscription")
        return None
