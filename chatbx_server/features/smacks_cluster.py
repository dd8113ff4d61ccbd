"""A stream management session moving to another node (XEP-0198 §5 in a cluster).

The transport (Redis, who holds which id, timeouts) is cluster/handover.py;
this is what a session is made of when it moves, and how it leaves one
node and arrives on the other:

- :func:`export` (the old node): once the stanzas the client sent are
  handled (so the 'h' the new node reports covers them), the session's
  state is written down, features add theirs (``session/export``: CSI
  flushes its buffer into the SM queue first, carbons, block list
  interest), and the session ends here *without* an unavailable presence
  and without re-routing its queue: both go on on the new node.
- :func:`adopt` (the new node): the session is recreated hibernating, as
  if its connection had just dropped here; features take their part back
  (``session/import``), and the stream that sent ``<resume/>`` resumes it
  by the ordinary path (features/smacks.py ``take_over``), which checks the
  client's 'h' and sends the queue again.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger

from chatbx_server.c2s.session import ClientSession
from chatbx_server.c2s.smacks import InboundCounter, StreamManagement
from chatbx_server.c2s.stream import end_session
from chatbx_server.logs import log_observer
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.serializer import CLIENT_STREAMS
from chatbx_server.xmpp.stanzas import parse_stanza

if TYPE_CHECKING:
    from chatbx_server.cluster.directory import ClusterSessions
    from chatbx_server.features.smacks import SmacksFeature

log = Logger(observer=log_observer)


def export(feature: "SmacksFeature", request: dict[str, Any]) -> Any:
    """Answer a handover request: ``{"s": state}`` and the session ends
    here, or ``{"h": handled or None}`` when there is no such session.
    A Deferred of it while the client's stanzas are still being handled."""
    previd = str(request.get("id") or "")
    user = str(request.get("u") or "")
    to = str(request.get("n") or "")
    session = feature.resumable(previd)
    if session is None or session.bare != user or session.closed or session.sm is None:
        return {"h": feature.ended_h(previd, user)}
    sm = session.sm
    if sm.inbound.pending:
        d = sm.inbound.settled()
        d.addCallback(lambda _: export(feature, request))
        return d
    server = feature.server
    state: dict[str, Any] = {
        "jid": session.jid.full, "id": previd, "peer": session.peer, "secure": session.secure,
        "p": session.priority,
        "x": session.presence.toXml() if session.presence is not None else None,
        "r": session.roster_requested,
        "d": sorted(session.directed) if session.directed else None,
        "acked": sm.acked, "handled": sm.inbound.handled, "timeout": sm.resume_timeout,
    }
    # Features first: CSI's buffer goes into the SM queue.
    server.events.fire_all("session/export", (session, state))
    if sm.hibernated is not None:
        sm.hibernated.cancel()
        sm.hibernated = None
    else:
        # §5: the old connection may not have noticed it is dead yet.
        old = session.stream
        old.detach_session()
        old.close_stream("conflict", "replaced by a resumed session")
    state["q"] = sm.unacked_xml()
    feature.forget_resumable(previd)
    session.sm = None  # the queue went with the state: nothing is re-routed here
    if session.data is None:
        session.data = {}
    session.data["moved"] = (to, server.cluster.state_of(session))
    # Not unavailable (presence.py broadcasts only for an available or
    # directed-to session): it is still available, on the other node.
    session.presence = None
    session.directed = None
    end_session(server, session)
    log.info("c2s {jid}: session handed over to node {node} ({count} unacked)",
             jid=state["jid"], node=to, count=len(state["q"]))
    return {"s": state}


def adopt(feature: "SmacksFeature", state: dict[str, Any]) -> None:
    """Recreate a handed-over session here, hibernating, resumable by its id."""
    server = feature.server
    jid = JID.parse(state["jid"])
    previd = str(state["id"])
    session = ClientSession(None, jid, str(state.get("peer") or ""),
                            secure=bool(state.get("secure", True)))
    session.priority = int(state.get("p") or 0)
    presence = state.get("x")
    session.presence = parse_stanza(presence) if presence else None
    session.roster_requested = bool(state.get("r"))
    directed = state.get("d")
    session.directed = set(directed) if directed else None
    options = feature.options
    sm = StreamManagement(options.max_unacked, previd,
                          float(state.get("timeout") or options.resume_timeout),
                          feature.requests)
    queue = [CLIENT_STREAMS.encode(parse_stanza(xml)) for xml in state.get("q") or ()]
    if queue:
        sm.queue = deque(queue)  # sm.encoding is CLIENT_STREAMS; resuming re-encodes
    sm.acked = int(state.get("acked") or 0)
    sm.inbound = InboundCounter(int(state.get("handled") or 0))
    session.sm = sm
    # A cluster's view (adopt runs only there): a session bound on this node.
    existing = cast("ClusterSessions", server.sessions).local(jid.bare, jid.resource)
    if existing is not None and not existing.closed:
        # The client gave up on resuming (we answered <failed/> before the
        # state came) and bound that resource again: the new session stays,
        # what the old one had not acknowledged goes where undelivered
        # stanzas go (§5), without an unavailable for the resource in use.
        log.info("c2s {jid}: handed-over session arrived after a new bind; "
                 "{count} unacked re-routed", jid=jid.full, count=len(queue))
        session.closed = True
        session.sm = None
        feature.remember_ended(previd, jid.bare, sm.inbound.handled)
        if queue:
            feature.undelivered(session, sm.take_unacked())
        return
    feature.add_resumable(previd, session)
    feature.on_hibernate(session)
    server.sessions.add(session)
    server.events.fire_all("session/import", (session, state))
    log.info("c2s {jid}: session taken over from another node ({count} unacked)",
             jid=jid.full, count=len(queue))
