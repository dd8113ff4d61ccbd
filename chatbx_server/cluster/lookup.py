"""Asking Redis before a stanza takes the no-session path (cluster only).

Other nodes' sessions reach this node's directory cache through pub/sub
notifications, which lag. A stanza for a session bound on another node a
moment ago would find no session in the cache and take the no-session path
(RFC 6121 §8.5.2.2: offline storage or an error; §8.5.3.2: the bare-JID
rules, or an IQ error, or a dropped presence) although on one node it
would have been delivered. So before that, the router hands such a stanza
here (``Router.hold``), and this module reads the user's authoritative
entry in Redis (``chatbx:user:<bare>``: full JID -> node, written by the
node before it publishes; only sessions of live nodes count), puts what it
finds into the cache and delivers the stanza again through the router.

- Never blocking: the lookup is one script call on the command connection;
  the stanza's Deferred (what acknowledges it waits on it) fires after.
- Order: while a lookup for an account is under way, every stanza for that
  account waits behind it in one queue (bounded: ``[cluster] held_per_user``
  and ``held_stanzas``; beyond it a stanza goes on with the cache, as
  without a cluster lookup), so a later stanza never overtakes one held.
- Coherence: an answer is put into the cache only if no directory
  notification about that account arrived while it was under way (a newer
  notification would otherwise be overwritten by an older answer); else
  the lookup is repeated (MAX_TRIES), then the cache is taken as it is.
- No cache of negative answers: a "no session" answer is exactly what a
  notification still in flight would contradict, and a stanza for an
  account with no session anywhere costs a database write (offline
  storage) anyway, next to which one Redis round trip is small.

Single-node servers never get here (``Router.hold`` stays None).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatbx_server.events import StanzaEvent
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

#: seconds a lookup may take before the held stanzas go on with the cache
LOOKUP_TIMEOUT = 2.0
#: lookups per held queue when notifications keep arriving meanwhile, or
#: when lookups time out (a stanza waits at most MAX_TRIES * LOOKUP_TIMEOUT)
MAX_TRIES = 3


def user_key(prefix: str, bare: str) -> str:
    return f"{prefix}user:{bare}"


#: The sessions of one account on live nodes: [full, node, state, ...].
#: KEYS: nodes (sorted set), user:<bare>; ARGV: node TTL in ms, key prefix.
LOOKUP_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #entries, 2 do
  local full, node = entries[i], entries[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], node)
  if score and tonumber(score) >= now - tonumber(ARGV[1]) then
    local state = redis.call('HGET', ARGV[2] .. 'sessions:' .. node, full)
    if state then
      out[#out + 1] = full
      out[#out + 1] = node
      out[#out + 1] = state
    end
  end
end
return out
"""

#: Forget that ``full`` is on ``node`` unless another node took it since.
#: KEYS: user:<bare>; ARGV: full JID, node.
UNSET_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

#: Forget every session of a node that stopped or died in the user keys.
#: KEYS: sessions:<node>; ARGV: node, key prefix.
#: Lua: each full JID of the table ``fulls`` out of its account's entry
#: while the entry names node ARGV[1] (ARGV[2]: the key prefix)
FORGET_FULLS_LUA = """
for _, full in ipairs(fulls) do
  local slash = string.find(full, '/', 1, true)
  local bare = slash and string.sub(full, 1, slash - 1) or full
  local key = ARGV[2] .. 'user:' .. bare
  if redis.call('HGET', key, full) == ARGV[1] then
    redis.call('HDEL', key, full)
  end
end
"""

FORGET_NODE_SCRIPT = ("local fulls = redis.call('HKEYS', KEYS[1])\n" + FORGET_FULLS_LUA
                      + "return #fulls\n")


class _Waiting:
    """Stanzas for one account held behind its lookup, in arrival order."""

    __slots__ = ("queue", "dirty", "tries")

    def __init__(self) -> None:
        self.queue: list[tuple[StanzaEvent, defer.Deferred]] = []
        #: a directory notification about the account arrived meanwhile
        self.dirty = False
        self.tries = 0


class DirectoryLookup:
    """The per-account waiting queues and their Redis lookups."""

    def __init__(self, cluster: "Cluster", prefix: str, node_ttl: float,
                 per_user: int, total: int) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.node_ttl_ms = str(int(node_ttl * 1000))
        self.per_user = per_user
        self.total = total
        self._waiting: dict[str, _Waiting] = {}
        self._held = 0
        #: the event being delivered again (not to be held a second time)
        self._passing: Optional[StanzaEvent] = None
        #: counters for operators and tests
        self.lookups = 0
        self.found = 0

    def held(self) -> int:
        return self._held

    # -- the router's hook -------------------------------------------------------
    def hold(self, event: StanzaEvent) -> Optional[defer.Deferred]:
        """Hold ``event`` (to a local account, bare or full JID) if the cache
        knows no session that would take it, or if stanzas for the same
        account are already held. Returns the Deferred of its delivery, or
        None to deliver it now."""
        if event is self._passing or not self.cluster.running:
            return None
        bare = event.to.bare
        waiting = self._waiting.get(bare)
        if waiting is None:
            if self._known(event) or self._held >= self.total:
                return None
            waiting = self._waiting[bare] = _Waiting()
            d = self._enqueue(waiting, event)
            self._lookup(bare, waiting)
            return d
        if len(waiting.queue) >= self.per_user or self._held >= self.total:
            log.warn("cluster: too many stanzas wait for a directory lookup of {user}", user=bare)
            return None
        return self._enqueue(waiting, event)

    def _enqueue(self, waiting: _Waiting, event: StanzaEvent) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        waiting.queue.append((event, d))
        self._held += 1
        return d

    def _known(self, event: StanzaEvent) -> bool:
        """Would the cache deliver ``event`` without the no-session path?"""
        sessions = self.cluster.sessions
        to = event.to
        if event.kind == "full":
            return sessions.get(to.bare, to.resource) is not None
        return bool(sessions.available(to.bare))

    def changed(self, bare: str) -> None:
        """The cache took a notification about ``bare``: an answer under way
        may be older than it."""
        waiting = self._waiting.get(bare)
        if waiting is not None:
            waiting.dirty = True

    # -- the lookup ----------------------------------------------------------------
    def _lookup(self, bare: str, waiting: _Waiting) -> None:
        waiting.dirty = False
        waiting.tries += 1
        self.lookups += 1
        cluster = self.cluster
        d = cluster.redis.eval(LOOKUP_SCRIPT, [self.prefix + "nodes", user_key(self.prefix, bare)],
                               [self.node_ttl_ms, self.prefix])
        d.addTimeout(LOOKUP_TIMEOUT, cluster.clock)
        d.addBoth(self._answered, bare, waiting)

    def _answered(self, reply: Any, bare: str, waiting: _Waiting) -> None:
        if self._waiting.get(bare) is not waiting:
            return
        if isinstance(reply, Failure):
            if reply.check(defer.TimeoutError) and waiting.tries < MAX_TRIES:
                # A busy node can be seconds behind its own reactor: the
                # reply may be waiting to be read. Asked again before the
                # held stanzas give up on it (which would store messages
                # for an online user offline).
                self._lookup(bare, waiting)
                return
            log.failure("cluster: directory lookup of {user} failed", reply, user=bare)
        elif waiting.dirty:
            if waiting.tries < MAX_TRIES:
                self._lookup(bare, waiting)
                return
        self._waiting.pop(bare, None)
        if not isinstance(reply, Failure) and not waiting.dirty:
            self._apply(reply)
        self._release(waiting)

    def _apply(self, reply: Any) -> None:
        if not isinstance(reply, (list, tuple)):
            return
        cluster = self.cluster
        for i in range(0, len(reply) - 2, 3):
            full, node, raw = reply[i], reply[i + 1], reply[i + 2]
            if node == cluster.node:
                continue  # ours: the local sessions are the truth here
            try:
                state = json.loads(raw)
            except (TypeError, ValueError):
                continue
            self.found += 1
            cluster.live.add(node)  # its heartbeat is current (the script checked)
            cluster.sessions.put_remote(node, full, state)

    def _release(self, waiting: _Waiting) -> None:
        """Deliver the held stanzas in order, through the router again."""
        router = self.cluster.server.router
        for event, d in waiting.queue:
            self._held -= 1
            self._passing = event
            try:
                result = defer.maybeDeferred(router.deliver, event)
            finally:
                self._passing = None
            result.addErrback(self._delivery_failed)
            result.chainDeferred(d)
        waiting.queue = []

    @staticmethod
    def _delivery_failed(failure: Failure) -> None:
        log.failure("cluster: delivering a held stanza failed", failure)
