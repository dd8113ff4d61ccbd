"""Locks shared by the nodes of a cluster (Redis), taken inside a local lock.

Per-process locks (the roster's per-user lock, offline delivery's one
delivery per account) serialize work on one node only; with a cluster the
same work may run on two nodes at once for one account. :meth:`ClusterLocks.run`
holds a Redis lock around it as well, the single-instance pattern Redis
documents ("Distributed Locks with Redis", correct implementation with a
single instance):

- acquire: ``SET chatbx:lock:<name> <token> NX PX <ttl>``; the token is
  unique to this holder, and the TTL frees the lock of a node that died
  holding it;
- release: a Lua script deletes the key only if it still holds our token
  (a holder that outlived its TTL must not free another holder's lock).

Never blocking the reactor: a lock held elsewhere is retried on the reactor
clock, backing off up to ``RETRY_MAX``; after ``wait`` seconds, or when Redis
fails or does not answer in time, the work goes on under the local lock only
(logged): availability over strict exclusion, as before the cluster.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger

from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

#: first pause before asking again for a lock held elsewhere (seconds)
RETRY_FIRST = 0.01
#: longest pause between two attempts (seconds)
RETRY_MAX = 0.25

#: compare-and-delete: only the holder (its token) releases the lock
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockTimeout(Exception):
    """Redis did not answer within the wait."""


class ClusterLocks:
    def __init__(self, cluster: "Cluster", prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix + "lock:"
        self._tokens = itertools.count(1)

    def run(self, name: str, fn: Callable[[], Any], ttl: float, wait: float) -> defer.Deferred:
        """Run ``fn`` (may return a Deferred) holding the cluster lock
        ``name``; fires with its result.

        Args:
            name: what is locked (``roster:<bare JID>``).
            ttl: seconds after which Redis frees the lock whatever happens
                (longer than ``fn`` takes).
            wait: seconds to wait for a lock held elsewhere before going on
                without it.
        """
        return defer.ensureDeferred(self._run(self.prefix + name, fn, ttl, wait))

    async def _run(self, key: str, fn: Callable[[], Any], ttl: float, wait: float) -> Any:
        token = await self._acquire(key, ttl, wait) if self.cluster.running else None
        try:
            result = fn()
            if isinstance(result, defer.Deferred):
                result = await result
            return result
        finally:
            if token is not None:
                self._release(key, token)

    async def _acquire(self, key: str, ttl: float, wait: float) -> Optional[str]:
        """The token of the lock now held, or None: go on without it."""
        clock = self.cluster.clock
        token = f"{self.cluster.node}:{next(self._tokens)}"
        deadline = clock.seconds() + wait
        delay = RETRY_FIRST
        attempts = 0
        while True:
            attempts += 1
            try:
                got = await self._set(key, token, ttl, deadline - clock.seconds())
            except LockTimeout:
                log.warn("cluster: no answer from redis for lock {key} in {wait} s; "
                         "going on with the local lock only", key=key, wait=wait)
                return None
            except Exception:
                log.failure("cluster: taking lock {key} failed; going on with the local "
                            "lock only", key=key)
                return None
            if got == "OK":
                return token
            remaining = deadline - clock.seconds()
            if remaining <= 0:
                log.warn("cluster: lock {key} still held elsewhere after {wait} s "
                         "({attempts} attempts); going on with the local lock only",
                         key=key, wait=wait, attempts=attempts)
                return None
            await task.deferLater(clock, min(delay, remaining), lambda: None)
            delay = min(delay * 2, RETRY_MAX)

    def _set(self, key: str, token: str, ttl: float, timeout: float) -> defer.Deferred:
        """SET NX PX, failing with LockTimeout after ``timeout`` seconds; a
        lock granted after that is given back."""
        result: defer.Deferred = defer.Deferred()
        call = self.cluster.clock.callLater(max(timeout, 0.0), result.errback, LockTimeout())

        def got(reply: Any) -> None:
            if call.active():
                call.cancel()
                result.callback(reply)
            elif reply == "OK":
                self._release(key, token)  # too late: nobody runs under it

        def failed(failure: Any) -> None:
            if call.active():
                call.cancel()
                result.errback(failure)

        d = self.cluster.redis.execute_command("SET", key, token, "NX", "PX",
                                               str(max(1, int(ttl * 1000))))
        d.addCallbacks(got, failed)
        return result

    def _release(self, key: str, token: str) -> None:
        d = self.cluster.redis.eval(_RELEASE, [key], [token])
        d.addErrback(lambda f: log.failure(
            "cluster: releasing lock {key} failed (it expires by itself)", f, key=key))
