"""The generic Publish-Subscribe service on ``pubsub.<domain>`` (XEP-0060
1.26): nodes created by local users (``create = "local"``, or nobody),
explicit subscriptions, publish, items, retract, purge, delete,
affiliations and node configuration; notifications go to the
subscribers, through ``router.route`` (remote subscribers over s2s once
federation exists). Real-time block lists other servers publish use it.

It shares the protocol engine with PEP (engine.py) rather than wokkel's
``PubSubService``: wokkel 18's request parser drops publish-options
(XEP-0223) and the retract ``notify`` attribute, which the engine supports
for both services alike. The service answers disco#info and disco#items
itself (identity pubsub/service, its nodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.logs import log_observer
from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.pubsub.engine import Limits, PubSubEngine
from chatbx_server.pubsub.protocol import FEATURES, NS_OWNER, NS_PUBSUB, event_message
from chatbx_server.storage.pubsub import Node
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

log = Logger(observer=log_observer)

__all__ = ["PubSubServiceFeature", "ServiceEngine"]


class ServiceEngine(PubSubEngine):
    """Nodes owned through affiliations; notifications to subscribers."""

    pep = False

    def __init__(self, feature: "PubSubServiceFeature", limits: Limits) -> None:
        super().__init__(feature.server.stores.pubsub, limits)
        self.feature = feature

    def may_create(self, service: str, requester: JID) -> bool:
        if self.feature.options.create == "nobody":
            return False
        return requester.user is not None and self.feature.server.is_local(requester.host)

    def notify(self, service: str, node: Node, event_child: domish.Element,
               subscribers: list[str], item_ids: tuple[str, ...] = ()) -> None:
        message = event_message(service, event_child)
        for jid in subscribers:
            copy = domish.Element((message.uri, message.name))
            copy.attributes = dict(message.attributes)
            copy["to"] = jid
            copy.children = list(message.children)
            self.send_to(copy)

    def send_to(self, message: domish.Element) -> None:
        self.feature.server.router.route(message)


class PubSubServiceFeature(Feature):
    name = "pubsub"
    spec = "XEP-0060 1.26 (Publish-Subscribe service)"

    @dataclass(frozen=True)
    class Options:
        #: the service's name under every hosted domain (pubsub.example.org)
        subdomain: str = "pubsub"
        #: who may create nodes: "local" (accounts of this server) or "nobody"
        create: str = "local"
        #: bytes of one item's payload
        max_item_bytes: int = 256 * 1024
        #: items a node keeps at most ("max")
        max_items: int = 1000
        #: nodes per service domain
        max_nodes: int = 10000

        def __post_init__(self) -> None:
            if self.create not in ("local", "nobody"):
                raise ValueError("create must be 'local' or 'nobody'")
            if not self.subdomain or "." in self.subdomain or "@" in self.subdomain:
                raise ValueError("subdomain must be one DNS label")
            if min(self.max_item_bytes, self.max_items, self.max_nodes) < 1:
                raise ValueError("max_item_bytes, max_items and max_nodes must be at least 1")

    def setup(self) -> None:
        o = self.options
        self.engine = ServiceEngine(self, Limits(o.max_item_bytes, o.max_items, o.max_nodes))
        self.domains = [f"{o.subdomain}.{host}" for host in sorted(self.server.hosts)]
        for domain in self.domains:
            self.server.router.services[domain] = self.on_stanza

    def teardown(self) -> None:
        for domain in self.domains:
            if self.server.router.services.get(domain) == self.on_stanza:
                del self.server.router.services[domain]
        super().teardown()

    # -- stanzas ---------------------------------------------------------------------
    def on_stanza(self, event: StanzaEvent) -> Any:
        """What the router hands to the service domain (the StanzaEvent)."""
        stanza = event.stanza
        if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set"):
            return True  # messages and presence to the service: nothing to do
        try:
            sender = JID.parse(stanza.getAttribute("from") or "")
            domain = JID.parse(stanza.getAttribute("to") or "").host
        except InvalidJID:
            return True
        d = defer.ensureDeferred(self._answer_iq(stanza, sender, domain))
        d.addCallbacks(lambda reply: self._send(stanza, reply),
                       lambda failure: self._fail(stanza, failure))
        return d

    async def _answer_iq(self, stanza: domish.Element, sender: JID, domain: str) -> Optional[domish.Element]:
        payload = stanza.firstChildElement()
        iq_type = stanza.getAttribute("type")
        if payload is None:
            raise StanzaError("bad-request")
        if payload.uri in (NS_PUBSUB, NS_OWNER) and payload.name == "pubsub":
            return await self.engine.handle(domain, sender, iq_type, payload)
        if iq_type == "get" and payload.uri == ns.DISCO_INFO:
            return self._disco_info(payload.getAttribute("node"))
        if iq_type == "get" and payload.uri == ns.DISCO_ITEMS:
            return await self._disco_items(domain, payload.getAttribute("node"))
        raise StanzaError("service-unavailable")

    def _send(self, stanza: domish.Element, child: Optional[domish.Element]) -> None:
        reply = result_reply(stanza)
        if child is not None:
            reply.addChild(child)
        self.server.router.route(reply)

    def _fail(self, stanza: domish.Element, failure: Failure) -> None:
        if failure.check(StanzaError):
            reply = error_reply(stanza, cast(StanzaError, failure.value))
        else:
            log.failure("pubsub service request failed", failure)
            reply = error_reply(stanza, "internal-server-error")
        self.server.router.route(reply)

    # -- disco -----------------------------------------------------------------------
    def _disco_info(self, node: Optional[str]) -> domish.Element:
        query = domish.Element((ns.DISCO_INFO, "query"))
        if node:
            query["node"] = node
            ident = query.addElement("identity")
            ident["category"] = "pubsub"
            ident["type"] = "leaf"
            return query
        ident = query.addElement("identity")
        ident["category"] = "pubsub"
        ident["type"] = "service"
        ident["name"] = "Publish-Subscribe"
        for var in (ns.DISCO_INFO, ns.DISCO_ITEMS) + FEATURES:
            query.addElement("feature")["var"] = var
        return query

    async def _disco_items(self, domain: str, node: Optional[str]) -> domish.Element:
        query = domish.Element((ns.DISCO_ITEMS, "query"))
        if node:
            query["node"] = node
            return query
        for stored in await self.server.stores.pubsub.nodes(domain):
            item = query.addElement("item")
            item["jid"] = domain
            item["node"] = stored.name
            if stored.config.get("title"):
                item["name"] = stored.config["title"]
        return query
