"""Stream management resumption across nodes (XEP-0198 §5 in a cluster).

A client whose connection dropped reconnects, possibly to another node,
and sends ``<resume previd=.../>``. The session hibernates on the node it
was bound on; this module moves it:

- ``sm:<id>`` (string): resumption id -> the node that holds the session;
  ``smids:<node>`` (set): the ids a node holds, so that the reaper of a
  dead node (or the node itself when it stops) removes them.
- The new node (B) reads ``sm:<id>``; when another live node (A) holds it,
  B puts a request into A's inbox (target ``#sm``, a JSON payload) and
  waits at most ``handover_timeout`` seconds. A answers, into B's inbox,
  with the session's state (the bound full JID, presence and priority,
  directed presence, the unacknowledged stanzas and both counters, what
  features add on ``session/export``: carbons, CSI, block list interest)
  and ends its copy without an unavailable presence (the session goes on,
  elsewhere). B recreates it hibernating, as its own, and the stream that
  asked resumes it by the single-node code path.
- The directory changes holder at once: A announces the session as B's,
  and stanzas that still reach A for that full JID (sent by nodes that had
  not heard yet) are forwarded to B for ``MOVED_FOR`` seconds. The inbox
  stream keeps the order: the state, then what followed it.
- B gave up waiting (answered ``<failed/>``) and the state arrives later:
  B keeps it as a hibernating session (it ends with its timeout, or a new
  bind on the same resource replaces it, as on one node), unless a session
  on that resource was bound meanwhile: then its unacknowledged stanzas go
  where undelivered stanzas go.
- A's answer cannot reach B (B died): A takes its session back, hibernating.
- A died: ``sm:<id>`` names a node that is not live, the answer is
  ``<failed><item-not-found/>`` at once; what A's inbox held went to the
  undelivered path with the dead node's other stanzas (cluster/node.py).
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

#: the inbox target of handover requests and answers
SM_TARGET = "#sm"
#: seconds stanzas reaching the old node for a moved session are forwarded
#: (other nodes learn the new holder from the directory within milliseconds)
MOVED_FOR = 30.0
#: moved sessions remembered at once for that forwarding (oldest dropped)
MAX_MOVED = 10000

#: DEL a key only while it still names this node (a newer holder keeps it)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


class Handover:
    """The Redis side of moving SM sessions between nodes.

    The smacks feature sets ``export`` (A: answer a request, with the
    answer's payload or a Deferred of it) and ``adopt`` (B, or A taking
    back an answer that could not be delivered: recreate the session).
    """

    def __init__(self, cluster: "Cluster", prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.export: Optional[Callable[[dict[str, Any]], Any]] = None
        self.adopt: Optional[Callable[[dict[str, Any]], None]] = None
        #: request token -> the Deferred of the resumption waiting for it
        self._waiting: dict[str, defer.Deferred] = {}
        #: full JID -> (node it moved to, until when), oldest first
        self._moved: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _key(self, resume_id: str) -> str:
        return f"{self.prefix}sm:{resume_id}"

    def _ids_key(self, node: str) -> str:
        return f"{self.prefix}smids:{node}"

    # -- which node holds a resumable session ----------------------------------
    def claim(self, resume_id: str) -> None:
        """This node holds the session ``resume_id`` names (enabled or adopted)."""
        cluster = self.cluster
        if not cluster._running:
            return
        redis = cluster.redis
        redis.execute_command("SET", self._key(resume_id), cluster.node).addErrback(cluster._failed)
        redis.execute_command("SADD", self._ids_key(cluster.node), resume_id
                              ).addErrback(cluster._failed)

    def release(self, resume_id: str) -> None:
        """The session ended here: its id names no node any more (unless
        another node took it over meanwhile)."""
        cluster = self.cluster
        if not cluster._running:
            return
        cluster.redis.eval(_RELEASE, [self._key(resume_id), self._ids_key(cluster.node)],
                           [cluster.node, resume_id]).addErrback(cluster._failed)

    @defer.inlineCallbacks
    def forget_node(self, node: str) -> Any:
        """``node`` is gone: the ids it held name nobody."""
        redis = self.cluster.redis
        ids = yield redis.execute_command("SMEMBERS", self._ids_key(node))
        for resume_id in ids or ():
            yield redis.eval(_RELEASE, [self._key(resume_id), self._ids_key(node)],
                             [node, resume_id])
        yield redis.execute_command("DEL", self._ids_key(node))

    # -- B: ask the holder ------------------------------------------------------------
    @defer.inlineCallbacks
    def fetch(self, resume_id: str, user: str, timeout: float) -> Any:
        """Ask the node that holds ``resume_id`` to hand it over.

        Returns (Deferred) ``(True, None)`` once the session was adopted
        here, ``(False, h)`` when it was not (not found, another account,
        the holder is dead or did not answer in ``timeout`` seconds); ``h``
        is the ended session's handled count when the holder remembers it.
        """
        cluster = self.cluster
        try:
            node = yield cluster.redis.execute_command("GET", self._key(resume_id))
        except Exception:
            log.failure("cluster: looking up a resumption id failed")
            return (False, None)
        if not node or node == cluster.node or node not in cluster.live:
            return (False, None)
        token = secrets.token_urlsafe(12)
        waiting: defer.Deferred = defer.Deferred()
        self._waiting[token] = waiting
        cluster.forward_raw(node, SM_TARGET, json.dumps(
            {"k": "req", "t": token, "id": resume_id, "u": user, "n": cluster.node}))
        waiting.addTimeout(timeout, cluster.clock)
        try:
            result = yield waiting
        except defer.TimeoutError:
            log.info("cluster: node {node} did not hand a session over in {seconds} s",
                     node=node, seconds=timeout)
            return (False, None)
        finally:
            self._waiting.pop(token, None)
        return result

    # -- the inbox --------------------------------------------------------------------------
    def deliver(self, raw: str) -> Any:
        """A ``#sm`` item of this node's inbox."""
        try:
            payload = json.loads(raw)
            kind = payload["k"]
        except (ValueError, KeyError, TypeError):
            return None
        if kind == "req":
            return self._answer(payload)
        if kind == "rep":
            state = payload.get("s")
            if state is not None and self.adopt is not None:
                self.adopt(state)
            waiting = self._waiting.pop(payload.get("t", ""), None)
            if waiting is not None and not waiting.called:
                waiting.callback((state is not None, payload.get("h")))
        return None

    def undelivered(self, raw: str) -> Any:
        """A ``#sm`` item whose node is gone: a request is answered "no" at
        once; an answer with a session comes back here (hibernating)."""
        try:
            payload = json.loads(raw)
        except ValueError:
            return None
        if payload.get("k") == "req":
            waiting = self._waiting.pop(payload.get("t", ""), None)
            if waiting is not None and not waiting.called:
                waiting.callback((False, None))
        elif payload.get("k") == "rep" and payload.get("s") is not None and self.adopt is not None:
            log.info("cluster: a handed-over session could not reach {node}; kept here",
                     node=payload.get("to"))
            self._moved.pop(payload["s"].get("jid", ""), None)
            self.adopt(payload["s"])
        return None

    def _answer(self, request: dict[str, Any]) -> Any:
        cluster = self.cluster
        to = request.get("n")
        if not isinstance(to, str) or self.export is None:
            return None
        d = defer.maybeDeferred(self.export, request)

        def send(payload: dict[str, Any]) -> None:
            payload.update({"k": "rep", "t": request.get("t"), "to": to})
            state = payload.get("s")
            if state is not None:
                self.moved(state["jid"], to)
            cluster.forward_raw(to, SM_TARGET, json.dumps(payload))

        d.addCallback(send)
        d.addErrback(lambda f: log.failure("cluster: handing a session over failed", f))
        return d

    # -- stanzas for a session that moved ---------------------------------------------------
    def moved(self, full: str, node: str) -> None:
        moved = self._moved
        now = self.cluster.clock.seconds()
        moved.pop(full, None)
        moved[full] = (node, now + MOVED_FOR)
        while moved:
            first = next(iter(moved.values()))
            if first[1] > now and len(moved) <= MAX_MOVED:
                break
            moved.popitem(last=False)

    def moved_to(self, full: str) -> Optional[str]:
        """The node a session of this node moved to moments ago, if any."""
        entry = self._moved.get(full)
        if entry is None:
            return None
        if entry[1] <= self.cluster.clock.seconds():
            del self._moved[full]
            return None
        return entry[0]
