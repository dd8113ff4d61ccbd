"""Per-address and per-account limits shared by the nodes of a cluster.

On one node, the failed-login throttle (c2s/sasl.py ``AuthThrottle``) and
the c2s connections per address are counted in the process. With several
nodes (or ``[cluster] workers``, where the kernel spreads the connections of
one address over the workers) each would allow the full limit: N nodes, N
times the guesses and the connections. So in a cluster both are also kept
in Redis:

- Failure scores: every change the throttle makes to a score (a charge, a
  refund, a failure) is added to a leaky bucket in Redis, all the changes
  of a reactor turn in one script call; the reply (each bucket's shared
  score) goes into a bounded local cache that the throttle's synchronous
  checks read (the larger of the local and the shared score). Before a
  password or token is checked, the login path asks Redis for the current
  scores of its address and account (:meth:`SharedAuthScores.refresh`), so
  a node that never saw the address still refuses it. Redis down: the
  local limits go on alone (logged).
- Connections: each node keeps its count per address in a hash of its own
  (``conns:<node>``); after a connection is admitted here, a script adds
  it and sums the address's counts over the live nodes; over the limit,
  the connection is closed. A dead node's hash is deleted by its reaper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

#: a reactor turn's score changes for more keys than this are sent at once
MAX_PENDING = 1000

#: KEYS: bucket keys; ARGV[1] now (seconds), ARGV[2] leak per second,
#: ARGV[3] expiry (ms), ARGV[3 + i] the amount for KEYS[i] (0: only read).
#: Returns each bucket's score after the change (as text: Lua numbers would
#: come back truncated to integers).
_ADD_SCRIPT = """
local now = tonumber(ARGV[1])
local leak = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 's', 't')
  local s = tonumber(v[1]) or 0
  local t = tonumber(v[2]) or now
  if now > t then
    s = s - (now - t) * leak
    t = now
  end
  if s < 0 then s = 0 end
  s = s + tonumber(ARGV[3 + i])
  if s < 0 then s = 0 end
  if s > 0 then
    redis.call('HSET', key, 's', tostring(s), 't', tostring(t))
    redis.call('PEXPIRE', key, ARGV[3])
  else
    redis.call('DEL', key)
  end
  out[i] = tostring(s)
end
return out
"""

#: KEYS[1] nodes (sorted set of heartbeats), KEYS[2] this node's counts;
#: ARGV[1] address, ARGV[2] change, ARGV[3] heartbeat age limit (ms),
#: ARGV[4] key prefix. Returns the address's connections on the live nodes.
_CONNECTIONS_SCRIPT = """
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[3]), '+inf')
local total = 0
for _, node in ipairs(nodes) do
  total = total + (tonumber(redis.call('HGET', ARGV[4] .. 'conns:' .. node, ARGV[1])) or 0)
end
return total
"""


def connections_key(prefix: str, node: str) -> str:
    return f"{prefix}conns:{node}"


class SharedAuthScores:
    """The Redis side of an ``AuthThrottle`` (installed as its ``shared``)."""

    def __init__(self, cluster: "Cluster", prefix: str, leak: float, window: float,
                 max_entries: int) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.leak = leak
        #: a bucket unused this long is empty (it leaks out well before)
        self.expire_ms = str(int(window * 2000) + 1000)
        self.max_entries = max_entries
        #: (kind, key) -> (shared score, local time of the reply); oldest first
        self._cache: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        #: changes of this reactor turn, sent together
        self._pending: dict[tuple[str, str], float] = {}
        self._flush_call: Any = None
        self._warned = False

    def _bucket(self, kind: str, key: str) -> str:
        return f"{self.prefix}auth:{kind}:{key}"

    def score(self, kind: str, key: str, now: float) -> float:
        entry = self._cache.get((kind, key))
        if entry is None:
            return 0.0
        score, then = entry
        return max(0.0, score - (now - then) * self.leak)

    def add(self, kind: str, key: str, amount: float) -> None:
        pending = self._pending
        pending[(kind, key)] = pending.get((kind, key), 0.0) + amount
        if len(pending) >= MAX_PENDING:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self.cluster.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        pending, self._pending = self._pending, {}
        # A right password's charge and refund come in one turn: nothing to send.
        changes = [(pair, amount) for pair, amount in pending.items() if amount]
        if changes:
            self._send(changes).addErrback(self._failed)

    def refresh(self, pairs: Iterable[tuple[str, Optional[str]]]) -> defer.Deferred:
        """Read the shared scores of ``pairs`` ((kind, key); None keys are
        skipped) into the cache; fires when done, also when Redis failed."""
        wanted = [(kind, key) for kind, key in pairs if key is not None]
        if not wanted or not self.cluster.running:
            return defer.succeed(None)
        d = self._send([(pair, 0.0) for pair in wanted])
        d.addErrback(self._failed)
        return d

    def _send(self, changes: Iterable[tuple[tuple[str, str], float]]) -> defer.Deferred:
        changes = list(changes)
        keys = [self._bucket(kind, key) for (kind, key), _ in changes]
        clock = self.cluster.clock
        args = [repr(clock.seconds()), repr(self.leak), self.expire_ms,
                *(repr(amount) for _, amount in changes)]
        d = self.cluster.redis.eval(_ADD_SCRIPT, keys, args)

        def store(scores: Any) -> None:
            now = clock.seconds()
            cache = self._cache
            for ((kind, key), _), raw in zip(changes, scores or ()):
                cache.pop((kind, key), None)
                value = float(raw)
                if value > 0:
                    cache[(kind, key)] = (value, now)
            while len(cache) > self.max_entries:
                cache.popitem(last=False)

        return d.addCallback(store)

    def _failed(self, failure: Any) -> None:
        if not self._warned:
            self._warned = True
            log.failure("cluster: shared login limits unavailable; local limits only", failure)


class SharedConnectionCounts:
    """c2s connections per address over the live nodes."""

    def __init__(self, cluster: "Cluster", prefix: str, nodes_key: str, node_ttl: float) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.nodes_key = nodes_key
        self.ttl_ms = str(int(node_ttl * 1000))
        self._warned = False

    def _change(self, address: str, amount: int) -> defer.Deferred:
        cluster = self.cluster
        return cluster.redis.eval(
            _CONNECTIONS_SCRIPT, [self.nodes_key, connections_key(self.prefix, cluster.node)],
            [address, str(amount), self.ttl_ms, self.prefix])

    def connected(self, address: str, limit: int, refuse: Callable[[], None]) -> bool:
        """A connection from ``address`` was admitted here: count it, and
        call ``refuse`` when the address has more than ``limit`` connections
        on the live nodes together. False when nothing was counted."""
        if not address or not self.cluster.running:
            return False

        def check(total: Any) -> None:
            if int(total) > limit:
                log.warn("c2s connection limit reached for {peer} across the cluster",
                         peer=address)
                refuse()

        self._change(address, 1).addCallbacks(check, self._failed)
        return True

    def disconnected(self, address: str) -> None:
        """A connection :meth:`connected` counted is gone."""
        if self.cluster.running:
            self._change(address, -1).addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        # Once: with Redis gone, every connection would log it again.
        if not self._warned:
            self._warned = True
            log.failure("cluster: counting connections per address failed; local limit only",
                        failure)
