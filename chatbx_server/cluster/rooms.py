"""Group chat rooms on a cluster: each room is owned by one live node.

A room (XEP-0045) is in-memory state (occupants, nicks, roles) that must
live in exactly one process. Its owner is chosen by rendezvous (highest
random weight) hashing over the live nodes the first time any node needs
it, and recorded in Redis (``HSETNX chatbx:rooms <room> <node>``) so that
the room stays where its occupants are when nodes join: pure rendezvous
hashing would move a room to a new node and strand its occupants. When
the owner dies, the reaper deletes its claims and the next stanza for the
room claims it again over the nodes still alive (the new owner serves it
from the configuration it loaded from the database; its occupants rejoin,
XEP-0410 clients do so by themselves).

Stanzas for a room owned elsewhere go to the owner's inbox like any other
forwarded stanza (cluster/node.py, batched per node) and are handed to the
MUC service there; the owner's fan-out to occupants goes through the router,
which sends each occupant's copy to the node holding that occupant.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbx_server.events import StanzaEvent
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

ROOMS = "chatbx:rooms"
#: the recipient marker of a forwarded room stanza (never a JID)
ROOM_TARGET = "#room"
#: room owners remembered per node (a cache: the truth is in Redis)
MAX_CACHED_OWNERS = 100000
#: stanzas held per room while its owner is looked up in Redis
MAX_WAITING = 1000
#: dead node names remembered (a node's name is its host's, or configured)
MAX_BURIED = 1000


def rendezvous(key: str, nodes: Iterable[str]) -> str:
    """The node with the highest hash of (node, key): every node computes
    the same answer from the same set, and removing a node moves only the
    keys it won."""
    return max(nodes, key=lambda n: hashlib.sha1(f"{n}\0{key}".encode()).digest())


class RoomOwnership:
    """Wraps the MUC service's router entries so room stanzas reach the owner."""

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster
        #: room bare JID -> owning node
        self.owners: dict[str, str] = {}
        #: service domain -> the MUC service's own entry
        self.services: dict[str, Callable[[StanzaEvent], Any]] = {}
        #: the stored rooms being re-read after a node died
        self._reloading: Optional[defer.Deferred] = None
        #: rooms whose owner is being looked up -> their stanzas, in order
        self._claiming: dict[str, list[tuple[StanzaEvent, defer.Deferred]]] = {}
        #: dead nodes whose rooms were given up already (every tick until the
        #: reaper removes a node reports it dead again: one reload per death)
        self._buried: set[str] = set()

    def install(self) -> None:
        """Put the ownership check in front of each MUC service domain."""
        muc = self.cluster.server.modules.get("muc")
        if muc is None:
            return
        router = self.cluster.server.router
        for domain, handler in list(router.services.items()):
            if getattr(handler, "__self__", None) is muc:
                self.services[domain] = handler
                router.services[domain] = self.route

    def route(self, event: StanzaEvent) -> Any:
        handler = self.services.get(event.to.host)
        if handler is None:
            return None
        if event.to.user is None:
            return handler(event)  # the service itself (disco, room list): any node
        room = event.to.bare
        waiting = self._claiming.get(room)
        if waiting is None:
            owner = self.owners.get(room)
            if owner is not None and owner in self.cluster.live:
                return self._to_owner(owner, handler, event)
        elif len(waiting) >= MAX_WAITING:
            return self.cluster.server.router.bounce(event.stanza, "resource-constraint",
                                                     "the room is moving; try again")
        # A room's stanzas keep their order while its owner is looked up: a
        # leave overtaken by the rejoin that follows it would leave the
        # occupant out of the room it just joined.
        done: defer.Deferred = defer.Deferred()
        if waiting is not None:
            waiting.append((event, done))
            return done
        self._claiming[room] = [(event, done)]
        self._claim(room).addBoth(self._claimed, room)
        return done

    def _claimed(self, outcome: Any, room: str) -> None:
        waiting = self._claiming.pop(room, [])
        if isinstance(outcome, Failure):
            log.failure("cluster: cannot find the owner of {room}", outcome, room=room)
        for event, done in waiting:
            if isinstance(outcome, Failure):
                self.cluster.server.router.bounce(event.stanza, "internal-server-error")
                done.callback(True)
                continue
            handler = self.services[event.to.host]
            result = defer.maybeDeferred(self._to_owner, outcome, handler, event)
            result.chainDeferred(done)

    def _to_owner(self, owner: str, handler: Callable[[StanzaEvent], Any], event: StanzaEvent) -> Any:
        if owner == self.cluster.node:
            return handler(event)
        self.cluster.forward(owner, ROOM_TARGET, event.stanza)
        return True

    @defer.inlineCallbacks
    def _claim(self, room: str) -> Any:
        if self._reloading is not None:
            yield self._reloading
        redis = self.cluster.redis
        live = self.cluster.live
        owner = yield redis.execute_command("HGET", ROOMS, room)
        if owner is not None and owner not in live:
            # Perhaps only this node's view is behind (it has just started).
            live = yield self.cluster.live_nodes()
            if owner not in live and owner != self.cluster.node:
                # Its owner died. This node may not have seen the death
                # itself (another node's reaper can take a dead node off the
                # list before this node's heartbeat finds it stale): the room
                # may come here, so the stored rooms are read as they are now
                # (once per death), before the room is served from them.
                self.node_died(owner)
                if self._reloading is not None:
                    yield self._reloading
        if owner is None or owner not in live:
            choice = rendezvous(room, sorted(live))
            if owner is None:
                yield redis.execute_command("HSETNX", ROOMS, room, choice)
            else:
                # The recorded owner is dead: replace exactly that claim.
                yield redis.eval(_REPLACE_IF, [ROOMS], [room, owner, choice])
            owner = yield redis.execute_command("HGET", ROOMS, room)
        if len(self.owners) >= MAX_CACHED_OWNERS:
            self.owners.clear()
        self.owners[room] = owner
        return owner

    def seen_live(self, nodes: Iterable[str]) -> None:
        """``nodes`` have a current heartbeat: a node that comes back under a
        dead one's name may die again, and is reloaded for again."""
        if self._buried:
            self._buried.difference_update(nodes)

    def deliver(self, stanza: Any) -> Any:
        """A room stanza forwarded to this node (its owner); while the stored
        rooms are being re-read (a room may just have moved here), after
        that, in arrival order."""
        reloading = self._reloading
        if reloading is None:
            return self._deliver_now(stanza)
        done: defer.Deferred = defer.Deferred()

        def now(_: Any) -> None:
            defer.maybeDeferred(self._deliver_now, stanza).chainDeferred(done)

        reloading.addBoth(now)
        return done

    def _deliver_now(self, stanza: Any) -> Any:
        from chatbx_server.xmpp.jid import JID, parse_or_none

        to = JID.parse(stanza.getAttribute("to"))
        handler = self.services.get(to.host)
        if handler is None:
            return self.cluster.server.router.bounce(stanza, "service-unavailable")
        kind = "host" if to.user is None else ("bare" if to.resource is None else "full")
        return handler(StanzaEvent(stanza, None, to, parse_or_none(stanza.getAttribute("from")), kind))

    def node_died(self, node: str) -> None:
        """Forget ``node``'s rooms (they are claimed again on their next
        stanza) and re-read the stored rooms, so that this node serves a room
        it takes over as the database has it, not as it was when this node
        started (one query per death, whichever rooms move here)."""
        for room in [r for r, n in self.owners.items() if n == node]:
            del self.owners[room]
        if node in self._buried:
            return
        if len(self._buried) >= MAX_BURIED:
            self._buried.clear()
        self._buried.add(node)
        muc = self.cluster.server.modules.get("muc")
        reload = getattr(muc, "reload_stored", None)
        if reload is None:
            return
        d = self._reloading = reload()

        def done(result: Any) -> None:
            if self._reloading is d:
                self._reloading = None

        d.addErrback(lambda f: log.failure("cluster: reloading the stored rooms failed", f))
        d.addBoth(done)


#: HSET only if the field still names the dead owner (atomic in Redis).
_REPLACE_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"""
