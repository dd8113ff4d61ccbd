"""Publish-Subscribe storage: nodes, items, affiliations, subscriptions
(XEP-0060), for PEP services (an account's bare JID, XEP-0163) and the
``pubsub.<domain>`` service alike.

A node's configuration is an opaque JSON object for this store, except for
two keys it reads to bound the items kept: ``max_items`` (an int or
``"max"``, the server's limit) and ``persist_items`` (False keeps only the
last item, which PEP still needs for ``send_last_published_item``).

Publishing is one transaction: create the node when asked to (auto-create,
bounded by nodes per service), check the publish-options preconditions
against the stored configuration (XEP-0223: a mismatch changes nothing),
insert or replace the items, and trim the oldest past the node's bound.
Nothing is stored half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import StorageError
from chatbx_server.storage.schema import (entity_caps, pubsub_affiliations, pubsub_items,
                                          pubsub_nodes, pubsub_subscriptions)
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["NodeExists", "NodeNotFound", "ItemNotFound", "TooManyNodes", "PreconditionNotMet",
           "Node", "Item", "PubSubStore", "CapsStore", "payload_bytes", "kept_items"]

_n = pubsub_nodes.c
_i = pubsub_items.c
_a = pubsub_affiliations.c
_s = pubsub_subscriptions.c

_CHUNK = 500


class NodeNotFound(StorageError):
    """No such node on the service."""


class NodeExists(StorageError):
    """The node already exists (create)."""


class ItemNotFound(StorageError):
    """No such item on the node (retract)."""


class TooManyNodes(StorageError):
    """The service holds as many nodes as it may."""


class PreconditionNotMet(StorageError):
    """A publish-options precondition differs from the node's configuration;
    ``field`` names the first that differs."""

    def __init__(self, field: str) -> None:
        super().__init__(f"precondition not met: {field}")
        self.field = field


class Node(NamedTuple):
    id: int
    service: str
    name: str
    config: dict[str, Any]


class Item(NamedTuple):
    item_id: str
    publisher: str
    #: serialized payload XML, '' for none
    payload: str


@dataclass
class PublishResult:
    node: Node
    created: bool
    #: item ids trimmed away to honour max_items (oldest first)
    trimmed: list[str] = field(default_factory=list)
    #: JIDs with an explicit subscription to the node
    subscribers: list[str] = field(default_factory=list)


def _subscribers_txn(conn: Connection, node_id: int) -> list[str]:
    return [r.jid for r in conn.execute(sa.select(_s.jid).where(_s.node_id == node_id))]


def payload_bytes(xml: str) -> int:
    return len(xml.encode("utf-8"))


def kept_items(config: Mapping[str, Any], limit: int) -> int:
    """How many items a node keeps: its max_items bounded by ``limit``
    (``"max"`` is the limit); a non-persistent node keeps the last one."""
    if config.get("persist_items") is False:
        return 1
    value = config.get("max_items", limit)
    if value == "max":
        return limit
    return max(1, min(int(value), limit))


def _node_row(row: Any) -> Node:
    return Node(int(row.id), row.service, row.name, json.loads(row.config))


def _node_txn(conn: Connection, service: str, name: str, *, lock: bool = False) -> Optional[Node]:
    query = sa.select(_n.id, _n.service, _n.name, _n.config).where(
        _n.service == service, _n.name == name)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _node_row(row) if row is not None else None


def _require_node_txn(conn: Connection, service: str, name: str, *, lock: bool = False) -> Node:
    node = _node_txn(conn, service, name, lock=lock)
    if node is None:
        raise NodeNotFound(name)
    return node


def _owner_id_txn(conn: Connection, owner: Optional[str]) -> Optional[int]:
    if owner is None:
        return None
    return user_id_txn(conn, owner, for_update=True)


def create_node_txn(conn: Connection, service: str, name: str, owner: Optional[str],
                    config: dict[str, Any], max_nodes: int, now: float,
                    affiliation_owner: Optional[str] = None) -> Node:
    """Create a node (``owner``: the local account it belongs to, locked so
    that concurrent creations count right)."""
    user_id = _owner_id_txn(conn, owner)
    if _node_txn(conn, service, name) is not None:
        raise NodeExists(name)
    count = conn.execute(sa.select(sa.func.count()).where(_n.service == service)).scalar() or 0
    if count >= max_nodes:
        raise TooManyNodes(service)
    result = conn.execute(sa.insert(pubsub_nodes).values(
        service=service, name=name, user_id=user_id, config=json.dumps(config), created_at=now))
    key = result.inserted_primary_key
    assert key is not None
    node_id = int(key[0])
    if affiliation_owner is not None:
        conn.execute(sa.insert(pubsub_affiliations).values(
            node_id=node_id, jid=affiliation_owner, affiliation="owner"))
    return Node(node_id, service, name, dict(config))


def _trim_txn(conn: Connection, node_id: int, keep: int) -> list[str]:
    rows = conn.execute(
        sa.select(_i.id, _i.item_id).where(_i.node_id == node_id).order_by(_i.id.desc())
        .offset(keep)
    ).all()
    if not rows:
        return []
    ids = [int(r.id) for r in rows]
    for start in range(0, len(ids), _CHUNK):
        conn.execute(sa.delete(pubsub_items).where(_i.id.in_(ids[start:start + _CHUNK])))
    return [r.item_id for r in reversed(rows)]


def publish_txn(conn: Connection, service: str, name: str, owner: Optional[str],
                items: list[tuple[str, str]], publisher: str,
                create_config: Optional[dict[str, Any]], required: Mapping[str, Any],
                max_nodes: int, limit: int, now: float,
                creator: Optional[str] = None) -> PublishResult:
    """Publish ``items`` ((item id, payload XML), in order) to a node.

    Args:
        owner: the local account owning the service (PEP), locked first.
        create_config: the configuration to auto-create the node with; None:
            a missing node is NodeNotFound.
        required: publish-options preconditions, compared with the stored
            configuration of an existing node (XEP-0223 §3).
        limit: the server's bound on items per node.
        creator: the bare JID made owner of an auto-created node (a
            generic service; PEP nodes belong to the service's account).
    """
    if owner is not None:
        user_id_txn(conn, owner, for_update=True)
    node = _node_txn(conn, service, name, lock=True)
    created = False
    if node is None:
        if create_config is None:
            raise NodeNotFound(name)
        node = create_node_txn(conn, service, name, owner, create_config, max_nodes, now, creator)
        created = True
    else:
        for key, value in required.items():
            if node.config.get(key) != value:
                raise PreconditionNotMet(key)
    item_ids = [item_id for item_id, _ in items]
    for start in range(0, len(item_ids), _CHUNK):
        conn.execute(sa.delete(pubsub_items).where(
            _i.node_id == node.id, _i.item_id.in_(item_ids[start:start + _CHUNK])))
    conn.execute(sa.insert(pubsub_items), [
        {"node_id": node.id, "item_id": item_id, "publisher": publisher, "payload": xml,
         "payload_bytes": payload_bytes(xml), "published_at": now}
        for item_id, xml in items
    ])
    trimmed = _trim_txn(conn, node.id, kept_items(node.config, limit))
    subscribers = [] if created else _subscribers_txn(conn, node.id)
    return PublishResult(node, created, trimmed, subscribers)


def items_txn(conn: Connection, service: str, name: str, max_items: Optional[int],
              item_ids: Optional[list[str]]) -> tuple[Node, list[Item]]:
    """Items of a node, oldest first: those named, or the ``max_items`` most
    recent (XEP-0060 §6.5.7), or all."""
    node = _require_node_txn(conn, service, name)
    query = sa.select(_i.item_id, _i.publisher, _i.payload).where(_i.node_id == node.id)
    if item_ids is not None:
        query = query.where(_i.item_id.in_(item_ids[:_CHUNK]))
    query = query.order_by(_i.id.desc())
    if max_items is not None:
        query = query.limit(max_items)
    rows = conn.execute(query).all()
    return node, [Item(r.item_id, r.publisher, r.payload) for r in reversed(rows)]


def retract_txn(conn: Connection, service: str, name: str,
                item_ids: list[str]) -> tuple[Node, list[str]]:
    """Delete items; returns the node and its subscribers (ItemNotFound when
    none of the items exists)."""
    node = _require_node_txn(conn, service, name, lock=True)
    result = conn.execute(sa.delete(pubsub_items).where(
        _i.node_id == node.id, _i.item_id.in_(item_ids[:_CHUNK])))
    if not result.rowcount:
        raise ItemNotFound(item_ids[0] if item_ids else "")
    return node, _subscribers_txn(conn, node.id)


def purge_txn(conn: Connection, service: str, name: str) -> tuple[Node, list[str]]:
    node = _require_node_txn(conn, service, name, lock=True)
    conn.execute(sa.delete(pubsub_items).where(_i.node_id == node.id))
    return node, _subscribers_txn(conn, node.id)


def delete_node_txn(conn: Connection, service: str, name: str) -> tuple[Node, list[str]]:
    """Delete a node; returns it and the JIDs that were subscribed."""
    node = _require_node_txn(conn, service, name, lock=True)
    subscribers = _subscribers_txn(conn, node.id)
    conn.execute(sa.delete(pubsub_nodes).where(_n.id == node.id))
    return node, subscribers


def configure_txn(conn: Connection, service: str, name: str, config: dict[str, Any],
                  limit: int) -> Node:
    """Replace a node's configuration and trim its items to the new bound."""
    node = _require_node_txn(conn, service, name, lock=True)
    conn.execute(sa.update(pubsub_nodes).where(_n.id == node.id).values(config=json.dumps(config)))
    _trim_txn(conn, node.id, kept_items(config, limit))
    return Node(node.id, service, name, dict(config))


def nodes_txn(conn: Connection, service: str) -> list[Node]:
    rows = conn.execute(sa.select(_n.id, _n.service, _n.name, _n.config)
                        .where(_n.service == service).order_by(_n.name))
    return [_node_row(r) for r in rows]


def last_items_txn(conn: Connection, services: list[str]) -> list[tuple[Node, Item]]:
    """Every node of these services that holds an item, with its latest item
    (what ``send_last_published_item`` delivers), in one query."""
    out: list[tuple[Node, Item]] = []
    for start in range(0, len(services), _CHUNK):
        chunk = services[start:start + _CHUNK]
        latest = (sa.select(_i.node_id, sa.func.max(_i.id).label("last_id"))
                  .join(pubsub_nodes, _n.id == _i.node_id)
                  .where(_n.service.in_(chunk)).group_by(_i.node_id).subquery())
        rows = conn.execute(
            sa.select(_n.id, _n.service, _n.name, _n.config, _i.item_id, _i.publisher, _i.payload)
            .join(latest, latest.c.node_id == _n.id)
            .join(pubsub_items, _i.id == latest.c.last_id)
            .order_by(_n.service, _n.name)
        )
        out.extend((_node_row(r), Item(r.item_id, r.publisher, r.payload)) for r in rows)
    return out


def affiliations_txn(conn: Connection, service: str, name: str) -> dict[str, str]:
    node = _require_node_txn(conn, service, name)
    return {r.jid: r.affiliation for r in conn.execute(
        sa.select(_a.jid, _a.affiliation).where(_a.node_id == node.id))}


def set_affiliations_txn(conn: Connection, service: str, name: str,
                         changes: Mapping[str, str]) -> None:
    """Apply affiliation changes ('none' removes)."""
    node = _require_node_txn(conn, service, name, lock=True)
    for jid, affiliation in changes.items():
        conn.execute(sa.delete(pubsub_affiliations).where(
            _a.node_id == node.id, _a.jid == jid))
        if affiliation != "none":
            conn.execute(sa.insert(pubsub_affiliations).values(
                node_id=node.id, jid=jid, affiliation=affiliation))


def subscriptions_txn(conn: Connection, service: str, name: str) -> dict[str, str]:
    """JID -> subid of a node's subscribers."""
    node = _require_node_txn(conn, service, name)
    return {r.jid: r.subid for r in conn.execute(
        sa.select(_s.jid, _s.subid).where(_s.node_id == node.id))}


def subscribe_txn(conn: Connection, service: str, name: str, jid: str, subid: str) -> str:
    """Subscribe ``jid``; an existing subscription keeps its subid."""
    node = _require_node_txn(conn, service, name, lock=True)
    existing = conn.execute(sa.select(_s.subid).where(
        _s.node_id == node.id, _s.jid == jid)).scalar()
    if existing is not None:
        return str(existing)
    conn.execute(sa.insert(pubsub_subscriptions).values(node_id=node.id, jid=jid, subid=subid))
    return subid


def unsubscribe_txn(conn: Connection, service: str, name: str, jid: str) -> bool:
    node = _require_node_txn(conn, service, name, lock=True)
    result = conn.execute(sa.delete(pubsub_subscriptions).where(
        _s.node_id == node.id, _s.jid == jid))
    return bool(result.rowcount)


def user_subscriptions_txn(conn: Connection, service: str, jid_prefix: str) -> list[tuple[str, str, str]]:
    """(node, jid, subid) of one entity's subscriptions on a service (bare
    JID and its full JIDs)."""
    rows = conn.execute(
        sa.select(_n.name, _s.jid, _s.subid).join(pubsub_nodes, _n.id == _s.node_id)
        .where(_n.service == service,
               sa.or_(_s.jid == jid_prefix, _s.jid.startswith(jid_prefix + "/", autoescape=True)))
        .order_by(_n.name))
    return [(r.name, r.jid, r.subid) for r in rows]


def all_subscribers_txn(conn: Connection, service: str) -> dict[str, list[str]]:
    """node name -> subscriber JIDs, for every node of the service."""
    out: dict[str, list[str]] = {}
    rows = conn.execute(sa.select(_n.name, _s.jid).join(pubsub_nodes, _n.id == _s.node_id)
                        .where(_n.service == service))
    for r in rows:
        out.setdefault(r.name, []).append(r.jid)
    return out


def forget_jid_txn(conn: Connection, bare: str) -> int:
    """Remove a JID's subscriptions (bare and full) and affiliations on
    every node; returns how many rows went."""
    like = _s.jid.startswith(bare + "/", autoescape=True)
    gone = conn.execute(sa.delete(pubsub_subscriptions).where(
        sa.or_(_s.jid == bare, like))).rowcount
    gone += conn.execute(sa.delete(pubsub_affiliations).where(_a.jid == bare)).rowcount
    return int(gone)


class PubSubStore:
    """Nodes and items of every pubsub service. Deferreds fail with
    NodeNotFound, NodeExists, ItemNotFound, TooManyNodes, PreconditionNotMet
    or UnknownUser (a PEP service without an account)."""

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def node(self, service: str, name: str) -> Deferred[Optional[Node]]:
        return self.db.run("pubsub.node", _node_txn, service, name)

    def nodes(self, service: str) -> Deferred[list[Node]]:
        return self.db.run("pubsub.nodes", nodes_txn, service)

    def create(self, service: str, name: str, owner: Optional[str], config: dict[str, Any],
               max_nodes: int, affiliation_owner: Optional[str] = None) -> Deferred[Node]:
        return self.db.run("pubsub.create", create_node_txn, service, name, owner, config,
                           max_nodes, self._now(), affiliation_owner)

    def publish(self, service: str, name: str, owner: Optional[str], items: list[tuple[str, str]],
                publisher: str, create_config: Optional[dict[str, Any]],
                required: Mapping[str, Any], max_nodes: int, limit: int,
                creator: Optional[str] = None) -> Deferred[PublishResult]:
        return self.db.run("pubsub.publish", publish_txn, service, name, owner, list(items),
                           publisher, create_config, dict(required), max_nodes, limit, self._now(),
                           creator)

    def items(self, service: str, name: str, max_items: Optional[int] = None,
              item_ids: Optional[Iterable[str]] = None) -> Deferred[tuple[Node, list[Item]]]:
        ids = list(item_ids) if item_ids is not None else None
        return self.db.run("pubsub.items", items_txn, service, name, max_items, ids)

    def retract(self, service: str, name: str,
                item_ids: list[str]) -> Deferred[tuple[Node, list[str]]]:
        return self.db.run("pubsub.retract", retract_txn, service, name, list(item_ids))

    def purge(self, service: str, name: str) -> Deferred[tuple[Node, list[str]]]:
        return self.db.run("pubsub.purge", purge_txn, service, name)

    def delete(self, service: str, name: str) -> Deferred[tuple[Node, list[str]]]:
        return self.db.run("pubsub.delete", delete_node_txn, service, name)

    def configure(self, service: str, name: str, config: dict[str, Any], limit: int) -> Deferred[Node]:
        return self.db.run("pubsub.configure", configure_txn, service, name, config, limit)

    def last_items(self, services: Iterable[str]) -> Deferred[list[tuple[Node, Item]]]:
        """The latest item of every node of these services."""
        return self.db.run("pubsub.last_items", last_items_txn, sorted(set(services)))

    def affiliations(self, service: str, name: str) -> Deferred[dict[str, str]]:
        return self.db.run("pubsub.affiliations", affiliations_txn, service, name)

    def set_affiliations(self, service: str, name: str, changes: Mapping[str, str]) -> Deferred[None]:
        return self.db.run("pubsub.set_affiliations", set_affiliations_txn, service, name,
                           dict(changes))

    def subscriptions(self, service: str, name: str) -> Deferred[dict[str, str]]:
        return self.db.run("pubsub.subscriptions", subscriptions_txn, service, name)

    def subscribe(self, service: str, name: str, jid: str, subid: str) -> Deferred[str]:
        return self.db.run("pubsub.subscribe", subscribe_txn, service, name, jid, subid)

    def unsubscribe(self, service: str, name: str, jid: str) -> Deferred[bool]:
        return self.db.run("pubsub.unsubscribe", unsubscribe_txn, service, name, jid)

    def user_subscriptions(self, service: str, jid: str) -> Deferred[list[tuple[str, str, str]]]:
        return self.db.run("pubsub.user_subscriptions", user_subscriptions_txn, service, jid)

    def forget_jid(self, bare: str) -> Deferred[int]:
        """A deleted account's subscriptions and affiliations on other nodes."""
        return self.db.run("pubsub.forget_jid", forget_jid_txn, bare)

    def all_subscribers(self, service: str) -> Deferred[dict[str, list[str]]]:
        return self.db.run("pubsub.all_subscribers", all_subscribers_txn, service)


# -- entity capabilities (XEP-0115) -------------------------------------------

def caps_get_txn(conn: Connection, ver: str) -> Optional[list[str]]:
    value = conn.execute(sa.select(entity_caps.c.features).where(entity_caps.c.ver == ver)).scalar()
    return json.loads(value) if value is not None else None


def caps_put_txn(conn: Connection, ver: str, features: list[str], now: float) -> None:
    conn.execute(sa.delete(entity_caps).where(entity_caps.c.ver == ver))
    conn.execute(sa.insert(entity_caps).values(ver=ver, features=json.dumps(features), seen_at=now))


class CapsStore:
    """Verified ``hash:ver`` -> features, shared by every account and node."""

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def get(self, ver: str) -> Deferred[Optional[list[str]]]:
        return self.db.run("caps.get", caps_get_txn, ver)

    def put(self, ver: str, features: list[str]) -> Deferred[None]:
        return self.db.run("caps.put", caps_put_txn, ver, list(features), self._now())

