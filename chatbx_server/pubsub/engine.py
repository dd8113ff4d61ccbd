"""The XEP-0060 operations, shared by PEP and the pubsub.<domain> service.

A subclass says who owns a service, who may create nodes, how an entity
relates to the owner (roster) and who hears a notification; this class
parses the requests, checks access and limits, runs the store and builds
the replies (XEP-0060 §6 subscriber, §7 publisher, §8 owner use cases).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.pubsub import config as cfg
from chatbx_server.pubsub.access import AFFILIATIONS, may_access, may_publish
from chatbx_server.pubsub.protocol import (NS_EVENT, NS_OWNER, NS_PUBSUB, child, event_message,
                                           item_element, items_element, pubsub_error, verb)
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.pubsub import (Item, ItemNotFound, Node, NodeExists, NodeNotFound,
                                          PreconditionNotMet, PubSubStore, TooManyNodes,
                                          payload_bytes)
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError

__all__ = ["Limits", "PubSubEngine"]

_TRUE = ("1", "true")


@dataclass(frozen=True)
class Limits:
    #: bytes of one item's payload (serialized XML)
    max_item_bytes: int = 256 * 1024
    #: items a node keeps at most ("max" means this)
    max_items: int = 256
    #: nodes per service (PEP: per account)
    max_nodes: int = 256
    #: items one request may publish or ask for by id
    max_items_per_request: int = 64


def _node_attr(el: domish.Element, required: bool = True) -> str:
    node = el.getAttribute("node")
    if not node:
        if required:
            raise pubsub_error("bad-request", "nodeid-required")
        return ""
    return node


class PubSubEngine:
    """One kind of pubsub service on the server's store.

    Args:
        store: the PubSubStore.
        limits: the bounds; exceeding one is a clear error, never a partial store.
    """

    #: PEP (True) or a generic service (False): the default configuration
    pep = False

    def __init__(self, store: PubSubStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits

    # -- what a subclass decides ----------------------------------------------
    def owner_account(self, service: str) -> Optional[str]:
        """The local account owning the whole service (locked on writes), or None."""
        return None

    def is_owner(self, service: str, node: Optional[Node], requester: JID,
                 affiliation: Optional[str]) -> bool:
        return affiliation == "owner"

    def may_create(self, service: str, requester: JID) -> bool:
        return False

    async def relation(self, service: str, node: Node, requester: JID) -> tuple[Optional[str], tuple[str, ...]]:
        """(owner's roster subscription to the requester, its groups)."""
        return None, ()

    def notify(self, service: str, node: Node, event_child: domish.Element,
               subscribers: list[str], item_ids: tuple[str, ...] = ()) -> None:
        """Send ``event_child`` (in the event namespace) to who should hear it."""

    def send_last(self, service: str, node: Node, item: Item, to: str) -> None:
        """Send the last published item of ``node`` to one JID (on subscription)."""
        self.notify_one(service, node, [item], to)

    def send_to(self, message: domish.Element) -> None:
        raise NotImplementedError

    def published(self, service: str, node: Node, items: list[tuple[str, Optional[domish.Element]]]) -> None:
        """After a publish by an entity (other features may follow it)."""

    def retracted(self, service: str, node: Node, item_ids: list[str]) -> None:
        """After a retract by an entity."""

    # -- helpers ----------------------------------------------------------------
    def items_event(self, node: Node, items: Iterable[Item], uri: str = NS_EVENT) -> domish.Element:
        payloads = node.config.get("deliver_payloads", True)
        return items_element(node.name, (
            item_element(i.item_id, i.payload if payloads else None, uri=uri) for i in items), uri)

    def notify_one(self, service: str, node: Node, items: list[Item], to: str) -> None:
        message = event_message(service, self.items_event(node, items))
        message["to"] = to
        self.send_to(message)

    async def affiliation_of(self, service: str, node: Node, bare: str) -> Optional[str]:
        affiliations = await self.store.affiliations(service, node.name)
        return affiliations.get(bare)

    async def may_read(self, service: str, node: Node, requester: JID) -> bool:
        """The access model's answer for ``requester`` (owner always)."""
        if self.is_owner(service, node, requester, None):
            return True
        model = node.config.get("access_model")
        affiliation = None
        if not self.pep or model in ("whitelist", "roster"):
            affiliation = await self.affiliation_of(service, node, requester.bare)
            if self.is_owner(service, node, requester, affiliation):
                return True
        if model == "open" and affiliation != "outcast":
            return True
        subscription, groups = await self.relation(service, node, requester)
        return may_access(node.config, False, affiliation, subscription, groups)

    def access_error(self, node: Node) -> StanzaError:
        """XEP-0060 §6.1.3.2-§6.1.3.4, §6.5.9: why a read was refused."""
        model = node.config.get("access_model")
        if model == "presence":
            return pubsub_error("not-authorized", "presence-subscription-required", type="auth")
        if model == "roster":
            return pubsub_error("not-authorized", "not-in-roster-group", type="auth")
        return pubsub_error("not-allowed", "closed-node")

    async def _node(self, service: str, name: str) -> Node:
        node = await self.store.node(service, name)
        if node is None:
            raise StanzaError("item-not-found")
        return node

    async def _owner_node(self, service: str, name: str, requester: JID) -> Node:
        node = await self._node(service, name)
        affiliation = None if self.pep else await self.affiliation_of(service, node, requester.bare)
        if not self.is_owner(service, node, requester, affiliation):
            raise StanzaError("forbidden")
        return node

    # -- dispatch ---------------------------------------------------------------
    async def handle(self, service: str, requester: JID, iq_type: str,
                     pubsub: domish.Element) -> Optional[domish.Element]:
        """Answer one ``<pubsub/>`` (either namespace): the result child or None."""
        action = verb(pubsub)
        if action is None:
            raise StanzaError("bad-request", text="empty pubsub request")
        owner_ns = pubsub.uri == NS_OWNER
        name = action.name
        key = (iq_type, owner_ns, name)
        handler = _HANDLERS.get(key)
        if handler is None:
            raise pubsub_error("feature-not-implemented", "unsupported",
                               feature=name if name != "items" else "retrieve-items")
        try:
            result: Optional[domish.Element] = await getattr(self, handler)(
                service, requester, pubsub, action)
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        except NodeNotFound:
            raise StanzaError("item-not-found") from None
        return result

    # -- publisher (§7) ---------------------------------------------------------
    async def on_publish(self, service: str, requester: JID, pubsub: domish.Element,
                         action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        items: list[tuple[str, str]] = []
        live: list[tuple[str, Optional[domish.Element]]] = []
        for item in action.elements(NS_PUBSUB, "item"):
            payloads = list(item.elements())
            if len(payloads) > 1:
                raise pubsub_error("bad-request", "invalid-payload")
            payload = payloads[0] if payloads else None
            xml = payload.toXml() if payload is not None else ""
            if payload_bytes(xml) > self.limits.max_item_bytes:
                raise pubsub_error("not-acceptable", "payload-too-big",
                                   text=f"an item holds at most {self.limits.max_item_bytes} bytes")
            item_id = item.getAttribute("id") or uuid.uuid4().hex
            items.append((item_id, xml))
            live.append((item_id, payload))
        if not items:
            # §7.1.3.6: publishing without an item is not supported here.
            raise pubsub_error("bad-request", "item-required")
        if len(items) > self.limits.max_items_per_request:
            raise pubsub_error("policy-violation", "too-many-items",
                               text=f"at most {self.limits.max_items_per_request} items per request")
        if len({i for i, _ in items}) != len(items):
            raise StanzaError("bad-request", text="an item id appears twice")
        options: dict[str, Any] = {}
        po = child(pubsub, NS_PUBSUB, "publish-options")
        form = cfg.find_form(po)
        if form is not None:
            try:
                options = cfg.parse_form(form, cfg.PUBLISH_OPTIONS, strict=False)
            except cfg.ConfigError as exc:
                raise pubsub_error("conflict", "precondition-not-met", text=str(exc)) from None
        create_config = None
        if self.may_create(service, requester):
            create_config = cfg.apply_options(cfg.default_config(self.pep), options)
            try:
                cfg.check_limits(create_config, self.limits.max_items)
            except cfg.ConfigError as exc:
                raise pubsub_error("conflict", "precondition-not-met", text=str(exc)) from None
        await self._check_publisher(service, name, requester, create_config is not None)
        try:
            result = await self.store.publish(
                service, name, self.owner_account(service), items, requester.bare, create_config,
                options, self.limits.max_nodes, self.limits.max_items,
                None if self.pep else requester.bare)
        except PreconditionNotMet as exc:
            # XEP-0223 §3 / XEP-0060 §7.1.5: never a silent change.
            raise pubsub_error("conflict", "precondition-not-met",
                               text=f"the node's pubsub#{exc.field} differs") from None
        except TooManyNodes:
            raise pubsub_error("not-allowed", "max-nodes-exceeded",
                               text=f"at most {self.limits.max_nodes} nodes") from None
        except NodeNotFound:
            raise StanzaError("item-not-found") from None
        node = result.node
        payloads = node.config.get("deliver_payloads", True)
        # The payload goes out as the XML serialized for storage: the
        # stream serializer copies it for every recipient instead of
        # walking the element again each time.
        event_items = items_element(node.name, (
            item_element(item_id, xml if payloads else None, uri=NS_EVENT)
            for item_id, xml in items), NS_EVENT)
        self.notify(service, node, event_items, result.subscribers, tuple(i for i, _ in items))
        self.published(service, node, live)
        reply = domish.Element((NS_PUBSUB, "pubsub"))
        pub = reply.addElement("publish")
        pub["node"] = node.name
        for item_id, _ in items:
            pub.addElement("item")["id"] = item_id
        return reply

    async def _check_publisher(self, service: str, name: str, requester: JID,
                               may_create: bool) -> None:
        """Raise unless ``requester`` may publish to (or retract from) the node;
        ``may_create``: it may create the node if it does not exist."""
        if self.pep:
            if not may_create:
                raise StanzaError("forbidden")  # PEP: the account only
            return
        node = await self.store.node(service, name)
        if node is None:
            if not may_create:
                raise StanzaError("item-not-found")
            return
        affiliation = await self.affiliation_of(service, node, requester.bare)
        subscribed = False
        if node.config.get("publish_model") == "subscribers":
            subscribed = requester.full in (await self.store.subscriptions(service, name)) or \
                requester.bare in (await self.store.subscriptions(service, name))
        if not may_publish(node.config, self.is_owner(service, node, requester, affiliation),
                           affiliation, subscribed):
            raise StanzaError("forbidden")

    async def on_retract(self, service: str, requester: JID, pubsub: domish.Element,
                         action: domish.Element) -> None:
        name = _node_attr(action)
        ids = [i.getAttribute("id") for i in action.elements(NS_PUBSUB, "item")]
        if not ids or not all(ids):
            raise pubsub_error("bad-request", "item-required")
        await self._check_publisher(service, name, requester, self.is_owner(service, None, requester, None))
        try:
            node, subscribers = await self.store.retract(service, name, [str(i) for i in ids])
        except ItemNotFound:
            raise StanzaError("item-not-found") from None
        notify = action.getAttribute("notify", "").lower() in _TRUE or node.config.get("notify_retract")
        if notify:
            # §7.2.2.1: the notify attribute asks for it; notify_retract too.
            event_items = items_element(node.name, (), NS_EVENT)
            for item_id in ids:
                event_items.addElement("retract")["id"] = str(item_id)
            self.notify(service, node, event_items, subscribers)
        self.retracted(service, node, [str(i) for i in ids])
        return None

    # -- subscriber (§6) --------------------------------------------------------
    async def on_items(self, service: str, requester: JID, pubsub: domish.Element,
                       action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        max_attr = action.getAttribute("max_items")
        max_items: Optional[int] = None
        if max_attr is not None:
            try:
                max_items = int(max_attr)
            except ValueError:
                raise StanzaError("bad-request", text="max_items is not a number") from None
            if max_items < 1:
                raise StanzaError("bad-request", text="max_items must be at least 1")
        ids = [str(i.getAttribute("id")) for i in action.elements(NS_PUBSUB, "item")
               if i.getAttribute("id")]
        if len(ids) > self.limits.max_items_per_request:
            raise pubsub_error("policy-violation", "too-many-items")
        node, items = await self.store.items(service, name, max_items, ids or None)
        if not await self.may_read(service, node, requester):
            raise self.access_error(node)
        if ids and not items:
            raise StanzaError("item-not-found")
        reply = domish.Element((NS_PUBSUB, "pubsub"))
        reply.addChild(items_element(node.name, (item_element(i.item_id, i.payload)
                                                 for i in items)))
        return reply

    async def on_subscribe(self, service: str, requester: JID, pubsub: domish.Element,
                           action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        jid = _jid_attr(action)
        if jid.bare != requester.bare:
            raise pubsub_error("bad-request", "invalid-jid")  # §6.1.3.1
        node = await self._node(service, name)
        if not await self.may_read(service, node, requester):
            raise self.access_error(node)
        subid = await self.store.subscribe(service, name, jid.full, uuid.uuid4().hex)
        reply = domish.Element((NS_PUBSUB, "pubsub"))
        sub = reply.addElement("subscription")
        sub["node"] = name
        sub["jid"] = jid.full
        sub["subid"] = subid
        sub["subscription"] = "subscribed"
        if node.config.get("send_last_published_item", "never") != "never":
            # §6.1.7: the last published item, after the result.
            _, items = await self.store.items(service, name, 1, None)
            if items:
                self.send_last(service, node, items[-1], jid.full)
        return reply

    async def on_unsubscribe(self, service: str, requester: JID, pubsub: domish.Element,
                             action: domish.Element) -> None:
        name = _node_attr(action)
        jid = _jid_attr(action)
        if jid.bare != requester.bare:
            raise pubsub_error("bad-request", "invalid-jid")
        if not await self.store.unsubscribe(service, name, jid.full):
            raise pubsub_error("unexpected-request", "not-subscribed")
        return None

    async def on_subscriptions(self, service: str, requester: JID, pubsub: domish.Element,
                               action: domish.Element) -> domish.Element:
        reply = domish.Element((NS_PUBSUB, "pubsub"))
        subs = reply.addElement("subscriptions")
        only = action.getAttribute("node")
        for node, jid, subid in await self.store.user_subscriptions(service, requester.bare):
            if only and node != only:
                continue
            el = subs.addElement("subscription")
            el["node"] = node
            el["jid"] = jid
            el["subid"] = subid
            el["subscription"] = "subscribed"
        return reply

    async def on_affiliations(self, service: str, requester: JID, pubsub: domish.Element,
                              action: domish.Element) -> domish.Element:
        reply = domish.Element((NS_PUBSUB, "pubsub"))
        affs = reply.addElement("affiliations")
        only = action.getAttribute("node")
        for node in await self.store.nodes(service):
            if only and node.name != only:
                continue
            affiliation = None
            if self.is_owner(service, node, requester, None):
                affiliation = "owner"
            else:
                affiliation = await self.affiliation_of(service, node, requester.bare)
            if affiliation:
                el = affs.addElement("affiliation")
                el["node"] = node.name
                el["affiliation"] = affiliation
        return reply

    async def on_create(self, service: str, requester: JID, pubsub: domish.Element,
                        action: domish.Element) -> Optional[domish.Element]:
        name = action.getAttribute("node")
        if not name:
            raise pubsub_error("not-acceptable", "nodeid-required")  # §8.1.2: no instant nodes
        if not self.may_create(service, requester):
            raise StanzaError("forbidden")
        config = cfg.default_config(self.pep)
        form = cfg.find_form(child(pubsub, NS_PUBSUB, "configure"))
        if form is not None:
            config = cfg.apply_options(config, self._parse_config(form))
        try:
            await self.store.create(service, name, self.owner_account(service), config,
                                    self.limits.max_nodes,
                                    None if self.pep else requester.bare)
        except NodeExists:
            raise StanzaError("conflict") from None
        except TooManyNodes:
            raise pubsub_error("not-allowed", "max-nodes-exceeded",
                               text=f"at most {self.limits.max_nodes} nodes") from None
        return None

    def _parse_config(self, form: domish.Element) -> dict[str, Any]:
        try:
            options = cfg.parse_form(form, cfg.NODE_CONFIG, strict=True)
            cfg.check_limits(options, self.limits.max_items)
        except cfg.ConfigError as exc:
            raise StanzaError("not-acceptable", text=str(exc)) from None
        return options

    # -- owner (§8) -------------------------------------------------------------
    async def on_configure_get(self, service: str, requester: JID, pubsub: domish.Element,
                               action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        node = await self._owner_node(service, name, requester)
        reply = domish.Element((NS_OWNER, "pubsub"))
        conf = reply.addElement("configure")
        conf["node"] = name
        conf.addChild(cfg.config_form(node.config))
        return reply

    async def on_configure_set(self, service: str, requester: JID, pubsub: domish.Element,
                               action: domish.Element) -> None:
        name = _node_attr(action)
        node = await self._owner_node(service, name, requester)
        form = cfg.find_form(action)
        if form is None:
            raise StanzaError("bad-request", text="no configuration form")
        if cfg.form_values(form)[1] == "cancel":
            return None
        new = cfg.apply_options(node.config, self._parse_config(form))
        await self.store.configure(service, name, new, self.limits.max_items)
        return None

    async def on_default(self, service: str, requester: JID, pubsub: domish.Element,
                         action: domish.Element) -> domish.Element:
        reply = domish.Element((NS_OWNER, "pubsub"))
        reply.addElement("default").addChild(cfg.config_form(cfg.default_config(self.pep)))
        return reply

    async def on_delete(self, service: str, requester: JID, pubsub: domish.Element,
                        action: domish.Element) -> None:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        node, subscribers = await self.store.delete(service, name)
        if node.config.get("notify_delete", True):
            deleted = domish.Element((NS_EVENT, "delete"))
            deleted["node"] = name
            self.notify(service, node, deleted, subscribers)
        return None

    async def on_purge(self, service: str, requester: JID, pubsub: domish.Element,
                       action: domish.Element) -> None:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        node, subscribers = await self.store.purge(service, name)
        if node.config.get("notify_retract", True):
            purged = domish.Element((NS_EVENT, "purge"))
            purged["node"] = name
            self.notify(service, node, purged, subscribers)
        return None

    async def on_owner_affiliations_get(self, service: str, requester: JID,
                                        pubsub: domish.Element, action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        reply = domish.Element((NS_OWNER, "pubsub"))
        affs = reply.addElement("affiliations")
        affs["node"] = name
        if self.pep:
            own = affs.addElement("affiliation")
            own["jid"] = service
            own["affiliation"] = "owner"
        for jid, affiliation in sorted((await self.store.affiliations(service, name)).items()):
            el = affs.addElement("affiliation")
            el["jid"] = jid
            el["affiliation"] = affiliation
        return reply

    async def on_owner_affiliations_set(self, service: str, requester: JID,
                                        pubsub: domish.Element, action: domish.Element) -> None:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        changes: dict[str, str] = {}
        for el in action.elements(NS_OWNER, "affiliation"):
            jid = _jid_attr(el)
            affiliation = el.getAttribute("affiliation", "")
            if affiliation not in AFFILIATIONS:
                raise StanzaError("bad-request", text=f"unknown affiliation {affiliation!r}")
            if self.pep and jid.bare == service:
                continue  # §8.9.2.4: the account stays the owner of its PEP nodes
            changes[jid.bare] = affiliation
        await self.store.set_affiliations(service, name, changes)
        return None

    async def on_owner_subscriptions_get(self, service: str, requester: JID,
                                         pubsub: domish.Element, action: domish.Element) -> domish.Element:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        reply = domish.Element((NS_OWNER, "pubsub"))
        subs = reply.addElement("subscriptions")
        subs["node"] = name
        for jid, subid in sorted((await self.store.subscriptions(service, name)).items()):
            el = subs.addElement("subscription")
            el["jid"] = jid
            el["subid"] = subid
            el["subscription"] = "subscribed"
        return reply

    async def on_owner_subscriptions_set(self, service: str, requester: JID,
                                         pubsub: domish.Element, action: domish.Element) -> None:
        name = _node_attr(action)
        await self._owner_node(service, name, requester)
        for el in action.elements(NS_OWNER, "subscription"):
            jid = _jid_attr(el)
            state = el.getAttribute("subscription", "")
            if state == "none":
                await self.store.unsubscribe(service, name, jid.full)
            elif state == "subscribed":
                await self.store.subscribe(service, name, jid.full, uuid.uuid4().hex)
            else:
                raise StanzaError("bad-request", text=f"unsupported subscription state {state!r}")
        return None


def _jid_attr(el: domish.Element) -> JID:
    try:
        return JID.parse(el.getAttribute("jid") or "")
    except InvalidJID:
        raise StanzaError("jid-malformed") from None


#: (iq type, owner namespace, element) -> handler method
_HANDLERS: dict[tuple[str, bool, str], str] = {
    ("set", False, "publish"): "on_publish",
    ("set", False, "retract"): "on_retract",
    ("get", False, "items"): "on_items",
    ("set", False, "subscribe"): "on_subscribe",
    ("set", False, "unsubscribe"): "on_unsubscribe",
    ("get", False, "subscriptions"): "on_subscriptions",
    ("get", False, "affiliations"): "on_affiliations",
    ("set", False, "create"): "on_create",
    ("get", True, "configure"): "on_configure_get",
    ("set", True, "configure"): "on_configure_set",
    ("get", True, "default"): "on_default",
    ("set", True, "delete"): "on_delete",
    ("set", True, "purge"): "on_purge",
    ("get", True, "affiliations"): "on_owner_affiliations_get",
    ("set", True, "affiliations"): "on_owner_affiliations_set",
    ("get", True, "subscriptions"): "on_owner_subscriptions_get",
    ("set", True, "subscriptions"): "on_owner_subscriptions_set",
}
