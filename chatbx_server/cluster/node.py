"""This node in a cluster: heartbeat, session directory, inbox (Redis).

Keys (prefix ``chatbx:``):

- ``nodes``: sorted set, node -> time of its last heartbeat (Redis ``TIME``,
  in ms, so nodes need no synchronised clocks). A node whose heartbeat is
  older than NODE_TTL is dead; the first live node that notices takes the
  ``reap:<node>`` lock and cleans up after it.
- ``sessions:<node>``: hash, full JID -> JSON state (priority, presence,
  roster interest) of each session bound on that node.
- ``user:<bare>``: hash, full JID -> node, for each session of the account
  (written after ``sessions:<node>``): what a node asks before a stanza
  for a session its cache does not know takes the no-session path
  (cluster/lookup.py).
- ``inbox:<node>``: a stream, one entry per batch of stanzas for that node,
  read through the consumer group ``chatbx``; an entry is acknowledged and
  deleted (XACK, XDEL) only once each stanza in it has been handed to its
  session or to the undelivered path (offline storage has committed).
- channel ``directory``: JSON notifications (session bound, changed, ended;
  node stopped; roster changed) that keep every node's cache coherent.

Why streams and not pub/sub for stanzas: pub/sub delivers to whoever is
subscribed at that instant and forgets; a node that is reconnecting to
Redis, or that dies with stanzas in flight, would lose them silently.
An entry in a stream stays until its reader acknowledges it, and when the
reader dies it is still there for the reaper, which sends it where an
undelivered stanza goes (offline storage for messages, RFC 6121 §8.5.3.2.1).
The directory uses pub/sub because it is a cache: a missed notification
is repaired by re-reading the hashes after every (re)subscription.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any, Iterable, Optional

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.cluster.directory import ClusterSessions, RemoteSession, session_state
from chatbx_server.cluster.handover import SM_TARGET, Handover
from chatbx_server.cluster.locks import ClusterLocks
from chatbx_server.cluster.limits import SharedAuthScores, SharedConnectionCounts, connections_key
from chatbx_server.cluster.metrics import NodeMetrics
from chatbx_server.cluster.lookup import (FORGET_FULLS_LUA, FORGET_NODE_SCRIPT, UNSET_SCRIPT,
                                          DirectoryLookup, user_key)
from chatbx_server.cluster.redis import command_connection, parse_redis_url, subscriber
from chatbx_server.cluster.rooms import ROOM_TARGET, RoomOwnership
from chatbx_server.events import DELIVER, FILTER, StanzaEvent
from chatbx_server.http.metrics import own_metrics
from chatbx_server.logs import log_observer
from chatbx_server.xmpp.jid import JID, parse_or_none
from chatbx_server.xmpp.serializer import CLIENT_STREAMS
from chatbx_server.xmpp.stanzas import parse_stanza

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

PREFIX = "chatbx:"
NODES = PREFIX + "nodes"
CHANNEL = PREFIX + "directory"
GROUP = "chatbx"
#: seconds between heartbeats (and checks for dead nodes)
HEARTBEAT = 1.0
#: a node silent this long is dead: its sessions vanish within
#: NODE_TTL + HEARTBEAT (< 10 s)
NODE_TTL = 6.0
#: seconds a clean stop waits for Redis
STOP_TIMEOUT = 5.0
#: inbox entries read at once
READ_COUNT = 64
#: stanzas queued for other nodes before the senders' turn ends are sent
#: at once beyond this many per node (bounded memory)
MAX_BATCH = 500


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _sessions_key(node: str) -> str:
    return f"{PREFIX}sessions:{node}"


def _inbox_key(node: str) -> str:
    return f"{PREFIX}inbox:{node}"


class Cluster:
    """The Redis side of one node; ``sessions`` is the view features read."""

    def __init__(self, server: "Server", config: Any) -> None:
        self.server = server
        self.clock = server.clock
        self.address = parse_redis_url(config.redis)
        #: the configured name; "" until start() for the default (host name
        #: and pid of the running process, known only after twistd forked)
        self.node: str = config.node
        self.sessions = ClusterSessions(self)
        self.redis: Any = None
        self._reader: Any = None
        self._subscriber: Any = None
        self._heartbeat: Optional[task.LoopingCall] = None
        self._running = False
        #: node -> [(full JID, xml)] waiting for the end of this reactor turn
        self._outbox: dict[str, list[tuple[str, str]]] = {}
        self._flush_call: Any = None
        #: nodes whose heartbeat is current (self included), from the last tick
        self.live: set[str] = set()
        self._reading: Optional[defer.Deferred] = None
        self._pending: set[defer.Deferred] = set()
        #: inbox entries delivered this reactor turn, acknowledged together
        #: (one XACK and one XDEL for all), with what waits for that
        self._acks: list[tuple[str, defer.Deferred]] = []
        #: fires once the first heartbeat has read which nodes are live
        self._first_tick: defer.Deferred = defer.Deferred()
        #: group chat rooms: which node owns which (cluster/rooms.py)
        self.rooms = RoomOwnership(self)
        #: stream management sessions moving between nodes (cluster/handover.py)
        self.handover = Handover(self, PREFIX)
        #: every node's metrics in one scrape (cluster/metrics.py)
        self.metrics = NodeMetrics(self, PREFIX, lambda: own_metrics(server))
        #: c2s connections per address over the live nodes (cluster/limits.py)
        self.connections = SharedConnectionCounts(self, PREFIX, NODES, NODE_TTL)
        #: per-account locks shared by the nodes (cluster/locks.py)
        self.locks = ClusterLocks(self, PREFIX)
        #: asks Redis before a stanza takes the no-session path (cluster/lookup.py)
        self.lookup = DirectoryLookup(self, PREFIX, NODE_TTL,
                                      getattr(config, "held_per_user", 100),
                                      getattr(config, "held_stanzas", 10000))

    @property
    def running(self) -> bool:
        return self._running

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        """Connect (lazily: commands wait for the connection), announce this
        node, start reading the inbox and the directory channel."""
        if self._running:
            return
        self._running = True
        if not self.node:
            self.node = default_node_name()
        reactor = self.server.database.reactor
        self.redis = command_connection(self.address)
        self._reader = command_connection(self.address)
        self._subscriber = subscriber(self.address, [CHANNEL], self._on_message,
                                      self._resync, reactor)
        events = self.server.events
        for kind in ("bare", "full", "host"):
            events.on(f"pre-presence/{kind}", self._on_own_presence, FILTER + 100)
        events.on("iq-get/bare/jabber:iq:roster:query", self._on_own_presence, FILTER + 100)
        events.on("roster/changed", self._on_roster_changed)
        self.live.add(self.node)
        self.server.router.hold = self.lookup.hold
        throttle = self.server.auth_throttle
        throttle.shared = SharedAuthScores(self, PREFIX, throttle.max_failures / throttle.window,
                                           throttle.window, throttle.max_entries)
        self._end_previous_run()
        self.metrics.start()
        self.rooms.install()
        self._heartbeat = task.LoopingCall(self._tick)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT, now=True).addErrback(
            lambda f: log.failure("cluster: heartbeat stopped", f))
        self._reading = defer.ensureDeferred(self._read_loop())
        self._reading.addErrback(lambda f: log.failure("cluster: inbox reader stopped", f))
        log.info("cluster: node {node} on redis {host}:{port}/{db}", node=self.node,
                 host=self.address.host, port=self.address.port, db=self.address.db)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Leave the cluster: others forget this node at once, and what is
        still in its inbox goes where undelivered stanzas go."""
        if not self._running:
            return
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._flush()  # still running: what is queued goes to its nodes
        self._running = False
        self.server.auth_throttle.shared = None
        self.metrics.stop()
        leave = defer.ensureDeferred(self._leave())
        # Redis may be gone: shutting down does not wait for it forever
        # (what is left in the inbox is then reaped by another node).
        leave.addTimeout(STOP_TIMEOUT, self.clock)
        try:
            yield leave
        except Exception:
            log.failure("cluster: leaving the cluster failed")
        if self._pending:
            yield defer.DeferredList(list(self._pending), consumeErrors=True)
        for conn in (self._reader, self.redis):
            try:
                yield conn.disconnect()
            except Exception:
                pass
        if self._subscriber is not None:
            self._subscriber.stopTrying()
            self._subscriber.continueTrying = False
            try:
                yield self._subscriber.handler.disconnect()
            except Exception:
                pass

    async def _leave(self) -> None:
        await self.redis.execute_command("ZREM", NODES, self.node)
        await self._forget_users(self.node)
        await self.redis.execute_command("DEL", _sessions_key(self.node),
                                         connections_key(PREFIX, self.node))
        await self.redis.publish(CHANNEL, json.dumps({"n": self.node, "gone": True}))
        await self._drain(self.node)
        await self.handover.forget_node(self.node)

    def _end_previous_run(self) -> None:
        """End the sessions a previous run under this node name left listed.

        A node killed and restarted under a fixed ``node`` name within
        NODE_TTL is never seen dead: its heartbeat goes on. Its old sessions
        would stay in the directory for good (contacts seeing them online,
        stanzas forwarded to them). So, first thing at start (on the command
        connection before any session of this run is listed), one script
        takes them out of the directory and the accounts' entries
        atomically; then every node's cache drops them, as for a session
        that closed, and contacts get unavailable from here (RFC 6121
        §4.5.2), as for a dead node's sessions. The inbox's unacknowledged
        entries are read first by the inbox reader (they take the
        undelivered path, the sessions being gone).
        """
        stale = self.redis.eval(END_PREVIOUS_RUN_SCRIPT,
                                [_sessions_key(self.node), connections_key(PREFIX, self.node)],
                                [self.node, PREFIX])
        self._track(stale.addCallback(self._previous_sessions_ended).addErrback(self._failed))
        self._track(self.handover.forget_node(self.node).addErrback(self._failed))

    def _previous_sessions_ended(self, raw: Any) -> None:
        stubs = self._ended_sessions(self.node, raw)
        for stub in stubs:
            # Not "gone" for the whole node: that would take this run's
            # sessions, listed meanwhile, out of the caches too.
            self.redis.publish(CHANNEL, json.dumps({"n": self.node, "f": stub.jid.full})
                               ).addErrback(self._failed)
        if not stubs:
            return
        log.warn("cluster: node {node} restarted; {count} sessions of its previous run ended",
                 node=self.node, count=len(stubs))

        def broadcast(_: Any) -> None:
            # Once the live nodes are known: the unavailable presence goes
            # to contacts on other nodes too.
            for stub in stubs:
                self.server.events.fire_all("session/closed", stub)

        # Not tracked: a stop() before any heartbeat got through must not wait for it.
        self._first_tick.addCallback(broadcast).addErrback(self._failed)

    def _ended_sessions(self, node: str, raw: Any) -> list[RemoteSession]:
        """Closed stubs of the sessions in ``raw``, a ``sessions:<node>``
        hash as HGETALL gives it (for session/closed: their contacts are
        told they went offline)."""
        stubs = []
        for full, state in _pairs(raw).items():
            stub = RemoteSession(self, node, JID.parse(full))
            stub.update(json.loads(state))
            stub.closed = True
            stubs.append(stub)
        return stubs

    # -- local sessions -> directory ----------------------------------------------
    def session_added(self, session: Any) -> None:
        self._publish_session(session)

    def session_removed(self, session: Any) -> None:
        if not self._running:
            return
        full = session.jid.full
        self.redis.execute_command("HDEL", _sessions_key(self.node), full).addErrback(self._failed)
        self.redis.eval(UNSET_SCRIPT, [user_key(PREFIX, session.bare)], [full, self.node]
                        ).addErrback(self._failed)
        moved = session.data.get("moved") if session.data else None
        if moved is not None:
            # Handed over to another node (cluster/handover.py): the session
            # goes on there. Every node's directory says so now, without
            # a gap in which it would look ended.
            node, state = moved
            self.sessions.put_remote(node, full, state)
            note = {"n": node, "f": full, "s": state}
        else:
            note = {"n": self.node, "f": full}
        self.redis.publish(CHANNEL, json.dumps(note)).addErrback(self._failed)

    def state_of(self, session: Any) -> dict[str, Any]:
        """What the directory says of a local ``session`` (``session_state``)."""
        carbons = self.server.modules.get("carbons")
        enabled = getattr(carbons, "enabled", None)
        return session_state(session, carbons=bool(enabled is not None and enabled(session)))

    def session_changed(self, session: Any) -> None:
        """A feature changed what the directory publishes of a local session."""
        if self.sessions.local(session.bare, session.resource) is session:
            self._publish_session(session)

    def _publish_session(self, session: Any) -> None:
        if not self._running or session.closed:
            return
        state = self.state_of(session)
        data = session.data
        if data is None:
            data = session.data = {}
        if data.get("cluster") == state:
            return
        data["cluster"] = state
        full = session.jid.full
        encoded = json.dumps(state)
        self.redis.execute_command("HSET", _sessions_key(self.node), full, encoded
                                   ).addErrback(self._failed)
        # After the state (same connection, so in this order in Redis): a
        # lookup that finds the account's entry finds the state too.
        self.redis.execute_command("HSET", user_key(PREFIX, session.bare), full, self.node
                                   ).addErrback(self._failed)
        self.redis.publish(CHANNEL, json.dumps({"n": self.node, "f": full, "s": state})
                           ).addErrback(self._failed)

    def _on_own_presence(self, event: StanzaEvent) -> None:
        """Before presence/roster handlers change the session: publish its
        state once they are done (end of this reactor turn)."""
        origin = event.origin
        if origin is not None and self.sessions.local(origin.bare, origin.resource) is origin:
            self.clock.callLater(0, self._publish_session, origin)

    def _on_roster_changed(self, user: str) -> None:
        if self._running:
            self.redis.publish(CHANNEL, json.dumps({"n": self.node, "roster": user})
                               ).addErrback(self._failed)

    # -- directory -> cache -------------------------------------------------------------
    def _on_message(self, channel: str, message: str) -> None:
        try:
            note = json.loads(message)
            node = note["n"]
        except (ValueError, KeyError, TypeError):
            return
        if node == self.node:
            return
        if "roster" in note:
            self._forget_roster(note["roster"])
        elif note.get("gone"):
            self.live.discard(node)
            self._track(self._node_left(node))
        elif note.get("dead"):
            self._forget_node(node)  # its reaper tells its contacts
        elif "s" in note:
            self.live.add(node)
            self.sessions.put_remote(node, note["f"], note["s"])
        elif "f" in note:
            self.sessions.drop_remote(node, note["f"])

    def remote_presence(self, full: str, presence: Optional[domish.Element]) -> None:
        """A session on another node changed presence (None: ended): caps
        (XEP-0115) learns what it announces, for PEP notifications."""
        caps = self.server.modules.get("caps")
        track = getattr(caps, "track_cluster_session", None)
        if track is not None:
            track(full, presence)

    def _forget_roster(self, user: str) -> None:
        """Another node changed ``user``'s roster: drop the cached copy
        (kept only while ``user`` has a session on this node)."""
        roster = self.server.modules.get("roster")
        forget = getattr(roster, "forget", None)
        if forget is not None:
            forget(user)

    @defer.inlineCallbacks
    def _resync(self) -> Any:
        """(Re)subscribed: read the directory of every live node afresh."""
        try:
            live = yield self.live_nodes()
            for node in live:
                if node == self.node:
                    continue
                raw = yield self.redis.execute_command("HGETALL", _sessions_key(node))
                entries = _pairs(raw)
                self.sessions.replace_node(
                    node, {full: json.loads(state) for full, state in entries.items()})
            for node in self.sessions.nodes():
                if node not in live:
                    self.sessions.drop_node(node)
            # Our own sessions, in case Redis lost them (restarted empty).
            self.live |= live
            for session in list(self.sessions):  # local sessions only
                if session.data is not None:
                    session.data.pop("cluster", None)
                self._publish_session(session)
        except Exception:
            log.failure("cluster: reading the session directory failed")

    # -- heartbeat and dead nodes -----------------------------------------------------------
    @defer.inlineCallbacks
    def live_nodes(self) -> Any:
        now = yield self._now_ms()
        raw = yield self.redis.execute_command("ZRANGE", NODES, "0", "-1", "WITHSCORES")
        scores = _pairs(raw)
        return {n for n, s in scores.items() if float(s) >= now - NODE_TTL * 1000}

    @defer.inlineCallbacks
    def _now_ms(self) -> Any:
        seconds, micros = yield self.redis.execute_command("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    @defer.inlineCallbacks
    def _tick(self) -> Any:
        if not self._running:
            return
        try:
            now = yield self._now_ms()
            if not self._running:
                return  # stopped meanwhile: its ZREM went out, no ZADD after it
            yield self.redis.execute_command("ZADD", NODES, str(now), self.node)
            raw = yield self.redis.execute_command("ZRANGE", NODES, "0", "-1", "WITHSCORES")
            scores = {n: float(s) for n, s in _pairs(raw).items()}
        except Exception:
            log.failure("cluster: heartbeat failed")
            return
        limit = now - NODE_TTL * 1000
        self.live = {n for n, s in scores.items() if s >= limit} | {self.node}
        self.rooms.seen_live(self.live)
        if not self._first_tick.called:
            self._first_tick.callback(None)
        dead = {n for n, s in scores.items() if s < limit}
        for node in set(self.sessions.nodes()) - self.live:
            dead.add(node)
        for node in dead:
            yield self._node_died(node)

    @defer.inlineCallbacks
    def _node_died(self, node: str) -> Any:
        """Forget ``node``'s sessions; one node (the one that gets the lock)
        tells their contacts they went offline and empties its inbox."""
        self._forget_node(node)
        got = yield self.redis.execute_command("SET", f"{PREFIX}reap:{node}", self.node,
                                               "NX", "PX", str(int(NODE_TTL * 10000)))
        if got != "OK":
            return
        # Every node learns of the death now, also one whose heartbeat would
        # not see the stale entry before this reaper removes it: its rooms
        # may move there (cluster/rooms.py reloads the stored rooms).
        self.redis.publish(CHANNEL, json.dumps({"n": node, "dead": True})).addErrback(self._failed)
        # Its sessions as Redis has them (this node's cache may have
        # forgotten them already, when a send to the node was refused).
        raw = yield self.redis.execute_command("HGETALL", _sessions_key(node))
        stubs = self._ended_sessions(node, raw)
        log.warn("cluster: node {node} died; {count} sessions ended", node=node, count=len(stubs))
        for stub in stubs:
            # As if the session had closed here: presence.py broadcasts
            # unavailable to the contacts (RFC 6121 §4.5.2), caps forgets it.
            self.server.events.fire_all("session/closed", stub)
        yield self._drain(node)
        yield self.handover.forget_node(node)
        yield self._forget_users(node)
        yield self.redis.execute_command("DEL", _sessions_key(node), connections_key(PREFIX, node))
        yield self.redis.execute_command("ZREM", NODES, node)

    @defer.inlineCallbacks
    def _node_left(self, node: str) -> Any:
        """``node`` stopped cleanly and emptied its own inbox; the unavailable
        presence its closing sessions broadcast may not all have left it,
        so one node (the ``gone:`` lock's) broadcasts it again (a second
        unavailable is harmless, RFC 6121 §4.5.2)."""
        stubs = [s for s in self._forget_node(node) if s.presence is not None]
        if not stubs:
            return
        got = yield self.redis.execute_command("SET", f"{PREFIX}gone:{node}", self.node,
                                               "NX", "PX", str(int(NODE_TTL * 10000)))
        if got == "OK":
            for stub in stubs:
                self.server.events.fire_all("session/closed", stub)

    def _forget_users(self, node: str) -> Any:
        """Take ``node``'s sessions out of the accounts' entries (before its
        ``sessions:`` hash, which says which they are, is deleted)."""
        return self.redis.eval(FORGET_NODE_SCRIPT, [_sessions_key(node)], [node, PREFIX])

    # -- stanzas to other nodes --------------------------------------------------------
    def forward(self, node: str, full: str, element: domish.Element) -> None:
        """Queue ``element`` for ``full`` on ``node``; sent with everything
        else for that node at the end of this reactor turn (one stream entry
        per node per fan-out)."""
        # The client streams' serializer (about twice domish's speed, and
        # what the archive cached already for the message it stamped): the
        # receiving node parses it in jabber:client and writes it as it is.
        self.forward_raw(node, full, CLIENT_STREAMS.encode(element).decode("utf-8"))

    def forward_raw(self, node: str, full: str, payload: str) -> None:
        """:meth:`forward` for what is already serialized (or a special
        target's payload: ``#room``, ``#sm``)."""
        batch = self._outbox.setdefault(node, [])
        batch.append((full, payload))
        if len(batch) >= MAX_BATCH:
            self._send_batch(node, self._outbox.pop(node))
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        outbox, self._outbox = self._outbox, {}
        for node, batch in outbox.items():
            self._send_batch(node, batch)

    def _send_batch(self, node: str, batch: list[tuple[str, str]]) -> None:
        if node not in self.live or not self._running:
            # Its node is gone (or we are): undelivered here and now.
            self._track(self._undelivered_batch(batch))
            return
        d = self.redis.eval(_XADD_IF_LIVE, [NODES, _inbox_key(node)],
                            [node, str(int(NODE_TTL * 1000)), json.dumps(batch)])

        def sent(entry_id: Any) -> Any:
            if entry_id:
                return None
            # Refused: the node's heartbeat is too old (or it left). Its
            # reaper drains only what was added before, so this batch is
            # undelivered here, after forgetting the node.
            self._forget_node(node)
            return self._undelivered_batch(batch)

        def failed(f: Any) -> Any:
            log.failure("cluster: cannot send {count} stanzas to {node}", f,
                        count=len(batch), node=node)
            return self._undelivered_batch(batch)

        d.addCallbacks(sent, failed)
        self._track(d)

    def _forget_node(self, node: str) -> list[RemoteSession]:
        """``node`` is dead or gone: no more stanzas for it from here.
        Returns the stubs of its sessions that were still cached."""
        self.live.discard(node)
        self.rooms.node_died(node)
        return self.sessions.drop_node(node)

    def _track(self, d: Any) -> None:
        if isinstance(d, defer.Deferred):
            pending = self._pending
            pending.add(d)

            def done(result: Any) -> Any:
                pending.discard(d)
                return result

            d.addBoth(done)

    # -- this node's inbox ------------------------------------------------------------
    async def _read_loop(self) -> None:
        inbox = _inbox_key(self.node)
        try:
            await self._reader.execute_command("XGROUP", "CREATE", inbox, GROUP, "0", "MKSTREAM")
        except Exception as exc:  # BUSYGROUP: the group exists (a restart)
            if "BUSYGROUP" not in str(exc):
                raise
        start = "0"  # first what was read but not acknowledged before, then new
        while self._running:
            try:
                reply = await self._reader.execute_command(
                    "XREADGROUP", "GROUP", GROUP, self.node, "COUNT", str(READ_COUNT),
                    "BLOCK", "1000", "STREAMS", inbox, start)
            except Exception:
                if not self._running:
                    return
                log.failure("cluster: reading the inbox failed")
                await task.deferLater(self.clock, HEARTBEAT, lambda: None)
                continue
            entries = reply[0][1] if reply else []
            if start == "0" and not entries:
                start = ">"
                continue
            for entry_id, fields in entries:
                d = self._deliver_entry(entry_id, fields)
                self._track(d)

    def _deliver_entry(self, entry_id: str, fields: list[str]) -> defer.Deferred:
        batch = json.loads(_pairs(fields).get("b", "[]"))
        # Most stanzas are delivered at once (written to a local session):
        # only those that went on asynchronously (offline storage, a
        # handover) are waited for before the entry is acknowledged.
        waiting: list[defer.Deferred] = []
        for full, xml in batch:
            try:
                result = self._deliver_one(full, xml)
            except Exception:
                log.failure("cluster: delivering a forwarded stanza failed")
                continue
            if isinstance(result, defer.Deferred):
                waiting.append(result)
        if not waiting:
            return self._ack_entry(entry_id)
        d = defer.DeferredList(waiting, consumeErrors=True)

        def ack(outcome: list[tuple[bool, Any]]) -> Any:
            for ok, value in outcome:
                if not ok:
                    log.failure("cluster: delivering a forwarded stanza failed", value)
            return self._ack_entry(entry_id)

        d.addCallback(ack)
        d.addErrback(self._failed)
        return d

    def _ack_entry(self, entry_id: str) -> defer.Deferred:
        """Acknowledge and delete a delivered entry with the others of this
        reactor turn: under load an entry holds a few stanzas, and two Redis
        commands per entry cost more than the delivery."""
        d: defer.Deferred = defer.Deferred()
        if not self._acks:
            self.clock.callLater(0, self._flush_acks)
        self._acks.append((entry_id, d))
        return d

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if not acks:
            return
        ids = [entry_id for entry_id, _ in acks]
        inbox = _inbox_key(self.node)
        done = self.redis.execute_command("XACK", inbox, GROUP, *ids)
        done.addCallback(lambda _: self.redis.execute_command("XDEL", inbox, *ids))

        def release(result: Any) -> None:
            for _, d in acks:
                d.callback(None)
            if isinstance(result, Failure):
                self._failed(result)

        done.addBoth(release)

    def _deliver_one(self, full: str, xml: str) -> Any:
        if full == SM_TARGET:
            return self.handover.deliver(xml)
        if full == ROOM_TARGET:
            return self.rooms.deliver(parse_stanza(xml))
        jid = JID.parse(full)
        session = self.sessions.local(jid.bare, jid.resource)
        if session is not None and not session.closed and _is_message(xml):
            # A message for a session that only writes it (no CSI buffer,
            # no XEP-0198 queue): its bytes go out as they came, without
            # parsing them into an element nobody would look at. This was
            # most of what a message from another node cost this one.
            send_serialized = getattr(session, "send_serialized", None)
            if send_serialized is not None and send_serialized("message", xml.encode("utf-8")):
                return None
        stanza = parse_stanza(xml)
        if session is not None and not session.closed:
            # Written to the client as it came (rechecked against the
            # stanza's attributes and children before each write).
            CLIENT_STREAMS.remember(stanza, xml)
            if _changes_roster(stanza):
                # The sending node changed this account's roster before it
                # sent this (RFC 6121 §3: subscription states, roster
                # pushes); the directory's notice of it may come later than
                # the stanza, and the client's answer must see the change.
                self._forget_roster(jid.bare)
            session.send(stanza)
            return None
        moved = self.handover.moved_to(full)
        if moved is not None and moved in self.live:
            # Sent by a node that did not know yet that the session moved:
            # after the state, in the new node's inbox, so in order.
            self.forward(moved, full, stanza)
            return None
        return self._undelivered(stanza, jid)

    def _undelivered(self, stanza: domish.Element, jid: JID) -> Any:
        """Where a stanza for a resource that is gone goes (RFC 6121 §8.5.3.2):
        a message to the account's other resources or offline storage; an
        IQ request gets an error; presence is dropped."""
        name = stanza.name
        if name == "message":
            if stanza.getAttribute("type") in ("groupchat", "error"):
                return None
            event = StanzaEvent(stanza, None, jid.bare_jid(),
                                parse_or_none(stanza.getAttribute("from")), "bare")
            return self.server.events.fire_from("message/bare", event, DELIVER)
        if name == "iq" and stanza.getAttribute("type") in ("get", "set"):
            return self.server.router.bounce(stanza, "service-unavailable")
        return None

    def _undelivered_batch(self, batch: Iterable[tuple[str, str]]) -> defer.Deferred:
        results = []
        for full, xml in batch:
            results.append(defer.maybeDeferred(self._undelivered_item, full, xml))
        return defer.DeferredList(results, consumeErrors=True)

    def _undelivered_item(self, full: str, xml: str) -> Any:
        if full == SM_TARGET:
            return self.handover.undelivered(xml)
        stanza = parse_stanza(xml)
        if full == ROOM_TARGET:
            # The room's owner is gone: to the room's next owner.
            return self.server.router.route(stanza)
        return self._undelivered(stanza, JID.parse(full))

    @defer.inlineCallbacks
    def _drain(self, node: str) -> Any:
        """Send what is left in ``node``'s inbox where undelivered stanzas go."""
        inbox = _inbox_key(node)
        last = "-"
        while True:
            entries = yield self.redis.execute_command("XRANGE", inbox, last, "+", "COUNT", "100")
            if not entries:
                break
            for entry_id, fields in entries:
                batch = json.loads(_pairs(fields).get("b", "[]"))
                yield self._undelivered_batch(batch)
                yield self.redis.execute_command("XDEL", inbox, entry_id)
            last = "(" + entries[-1][0]
        yield self.redis.execute_command("DEL", inbox)

    # -- operators --------------------------------------------------------------
    def _failed(self, failure: Any) -> None:
        log.failure("cluster: redis command failed", failure)


#: XADD to a node's inbox only while its heartbeat is current (atomic in
#: Redis): once it is stale the reaper may have drained the inbox already,
#: and an entry added after that would never be read. Returns nil then.
_XADD_IF_LIVE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) < now - tonumber(ARGV[2]) then return false end
return redis.call('XADD', KEYS[2], '*', 'b', ARGV[3])
"""


#: this node name's sessions hash (KEYS[1]) as a previous run left it: each
#: session out of its account's entry (as FORGET_NODE_SCRIPT), the hash and
#: the run's connection counts (KEYS[2]) deleted, the sessions returned
#: (flat field/value list)
END_PREVIOUS_RUN_SCRIPT = ("local raw = redis.call('HGETALL', KEYS[1])\n"
                           "local fulls = {}\n"
                           "for i = 1, #raw, 2 do fulls[#fulls + 1] = raw[i] end\n"
                           + FORGET_FULLS_LUA
                           + "redis.call('DEL', KEYS[1], KEYS[2])\nreturn raw\n")


_SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))


def _is_message(xml: str) -> bool:
    """A ``<message>`` as the client streams' serializer writes it: never a
    roster change (_changes_roster), nothing else to look at on delivery."""
    return xml.startswith("<message") and len(xml) > 8 and xml[8] in " />"


def _changes_roster(stanza: domish.Element) -> bool:
    """A subscription presence or a roster push: sent after a roster change."""
    if stanza.name == "presence":
        return stanza.getAttribute("type") in _SUBSCRIPTION_TYPES
    if stanza.name == "iq" and stanza.getAttribute("type") == "set":
        child = stanza.firstChildElement()
        return child is not None and child.uri == "jabber:iq:roster"
    return False


def _pairs(raw: Any) -> dict[str, Any]:
    """A flat [k1, v1, k2, v2 ...] reply (or a dict) as a dict."""
    if not raw:
        return {}
    if isinstance(raw, dict):
        return raw
    return {raw[i]: raw[i + 1] for i in range(0, len(raw) - 1, 2)}


__all__ = ["Cluster", "RemoteSession"]
