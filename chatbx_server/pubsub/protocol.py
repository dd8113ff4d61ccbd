"""XEP-0060 wire format: namespaces, error conditions, event messages."""

from __future__ import annotations

from typing import Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError

__all__ = ["NS_PUBSUB", "NS_OWNER", "NS_EVENT", "NS_ERRORS", "pubsub_error", "event_message",
           "items_element", "item_element", "FEATURES"]

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"

#: XEP-0060 §10 features this engine implements (disco#info "pubsub#...")
FEATURES = tuple(NS_PUBSUB + "#" + f for f in (
    "access-open", "access-presence", "access-roster", "access-whitelist", "auto-create",
    "auto-subscribe", "config-node", "create-and-configure", "create-nodes", "delete-items",
    "delete-nodes", "filtered-notifications", "item-ids", "last-published", "manage-subscriptions",
    "modify-affiliations", "multi-items", "outcast-affiliation", "persistent-items",
    "presence-notifications", "presence-subscribe", "publish", "publish-options", "purge-nodes",
    "retract-items", "retrieve-affiliations", "retrieve-default", "retrieve-items",
    "retrieve-subscriptions", "subscribe", "member-affiliation", "publisher-affiliation",
    "config-node-max",
)) + (NS_PUBSUB,)


def pubsub_error(condition: str, app: Optional[str] = None, text: Optional[str] = None,
                 type: Optional[str] = None, feature: Optional[str] = None) -> StanzaError:
    """A StanzaError with a pubsub#errors application condition (XEP-0060 §7-8)."""
    app_el = None
    if app is not None:
        app_el = domish.Element((NS_ERRORS, app))
        if feature is not None:
            app_el["feature"] = feature
    return StanzaError(condition, type, text, app_el)


def item_element(item_id: str, payload: Optional[domish.Element | str] = None,
                 publisher: Optional[str] = None, uri: str = NS_PUBSUB) -> domish.Element:
    """``<item id=.../>`` with its payload (an element, or stored XML added raw)."""
    item = domish.Element((uri, "item"))
    item["id"] = item_id
    if publisher:
        item["publisher"] = publisher
    if isinstance(payload, domish.Element):
        item.addChild(payload)
    elif payload:
        item.addRawXml(payload)
    return item


def items_element(node: str, items: Iterable[domish.Element], uri: str = NS_PUBSUB) -> domish.Element:
    el = domish.Element((uri, "items"))
    el["node"] = node
    for item in items:
        el.addChild(item)
    return el


def event_message(sender: str, child: domish.Element) -> domish.Element:
    """A headline ``<message><event/></message>`` without ``to`` (set per
    recipient); ``child`` is an ``items``, ``purge``, ``delete`` ... element
    in the event namespace (XEP-0060 §7.1.2.1, §7.2.2.1, §8.4.2, §8.5.3)."""
    message = domish.Element((ns.CLIENT, "message"))
    message["from"] = sender
    message["type"] = "headline"
    event = message.addElement((NS_EVENT, "event"))
    event.addChild(child)
    return message


def verb(pubsub: domish.Element) -> Optional[domish.Element]:
    """The first child of ``<pubsub/>`` that is not an options element."""
    for child in pubsub.elements():
        if child.name not in ("publish-options", "options", "configure") or child.uri != pubsub.uri:
            return child
    for child in pubsub.elements():
        return child
    return None


def child(parent: domish.Element, uri: str, name: str) -> Optional[domish.Element]:
    for el in parent.elements(uri, name):
        return el
    return None
