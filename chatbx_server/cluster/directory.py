"""The cluster-aware session view: local sessions plus stubs of remote ones.

``server.sessions`` is this view when ``[cluster]`` is configured. Features
read it as before (``get``, ``resources``, ``available``, ``interested``)
and see every session of an account whichever node holds it; a remote
session is a :class:`RemoteSession` whose ``send`` hands the stanza to the
owning node (cluster/node.py, batched per node). ``add``/``remove`` (the c2s
stream binding and ending a session) and ``__iter__``/``count`` (shutdown,
metrics) stay local: a node only ever closes or counts its own sessions.

The remote part is a cache of the directory in Redis, kept coherent by the
notifications every node publishes when one of its sessions is bound,
changes presence or ends, and re-read whenever the subscription is
(re)established.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.words.xish import domish

from chatbx_server.sessions import SessionManager
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.stanzas import parse_stanza

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster


class RemoteSession:
    """What features see of a session bound on another node."""

    __slots__ = ("node", "jid", "bare_jid", "bare", "resource", "host", "priority",
                 "presence", "roster_requested", "directed", "closed", "cluster", "carbons")

    #: never a stream, SM or CSI state here: the owning node has them
    sm = None
    csi = None
    data = None

    def __init__(self, cluster: "Cluster", node: str, jid: JID) -> None:
        self.cluster = cluster
        self.node = node
        self.jid = jid
        self.bare_jid = jid.bare_jid()
        self.bare = jid.bare
        self.resource = jid.resource
        self.host = jid.host
        self.priority = 0
        self.presence: Optional[domish.Element] = None
        self.roster_requested = False
        self.directed: Optional[set[str]] = None
        self.closed = False
        #: Message Carbons (XEP-0280) enabled on it: it gets the copies
        self.carbons = False

    @property
    def available(self) -> bool:
        return self.presence is not None

    def update(self, state: dict[str, Any]) -> None:
        """Take the state the owning node published (see ``session_state``)."""
        self.priority = int(state.get("p", 0))
        xml = state.get("x")
        self.presence = parse_stanza(xml) if xml else None
        self.roster_requested = bool(state.get("r"))
        self.carbons = bool(state.get("c"))

    def send(self, element: domish.Element) -> None:
        if not self.closed:
            self.cluster.forward(self.node, self.jid.full, element)

    def close(self, condition: Optional[str] = None, text: Optional[str] = None) -> None:
        """Sessions are closed by the node that holds them (nothing to do here)."""

    def __repr__(self) -> str:
        return f"<RemoteSession {self.jid} on {self.node}>"


def session_state(session: Any, carbons: bool = False) -> dict[str, Any]:
    """What other nodes need of a local session for delivery decisions
    (RFC 6121 §8.5.2: availability and priority; probes: the presence;
    XEP-0280 §7, §8: whether it gets carbon copies)."""
    presence = session.presence
    return {"p": session.priority, "x": presence.toXml() if presence is not None else None,
            "r": bool(session.roster_requested), "c": carbons}


_NONE: dict[str, RemoteSession] = {}


class ClusterSessions(SessionManager):
    """Local sessions (the inherited dict) plus the remote directory cache."""

    def __init__(self, cluster: "Cluster") -> None:
        super().__init__()
        self.cluster = cluster
        #: bare JID -> {resource: RemoteSession}
        self._remote: dict[str, dict[str, RemoteSession]] = {}
        #: node -> {full JID: RemoteSession}
        self._by_node: dict[str, dict[str, RemoteSession]] = {}

    # -- local sessions (bound here) -----------------------------------------
    def add(self, session: Any) -> Optional[Any]:
        old = super().add(session)
        self.cluster.session_added(session)
        return old

    def remove(self, session: Any) -> bool:
        removed = super().remove(session)
        if removed:
            self.cluster.session_removed(session)
        return removed

    def local(self, bare: str, resource: Optional[str]) -> Optional[Any]:
        """A session bound on this node only."""
        return super().get(bare, resource)

    # -- the merged view -------------------------------------------------------
    def get(self, bare: str, resource: Optional[str]) -> Optional[Any]:
        session = super().get(bare, resource)
        if session is not None or resource is None:
            return session
        remote = self._remote.get(bare)
        return remote.get(resource) if remote else None

    def resources(self, bare: str) -> dict[str, Any]:
        remote = self._remote.get(bare)
        local = super().resources(bare)
        if not remote:
            return local
        merged: dict[str, Any] = dict(remote)
        merged.update(local)
        return merged

    def available(self, bare: str) -> list[Any]:
        result = super().available(bare)
        remote = self._remote.get(bare)
        if remote:
            result.extend(s for s in remote.values() if s.presence is not None)
        return result

    def interested(self, bare: str) -> list[Any]:
        result = super().interested(bare)
        remote = self._remote.get(bare)
        if remote:
            result.extend(s for s in remote.values() if s.roster_requested)
        return result

    def remote(self, bare: str) -> dict[str, RemoteSession]:
        """The cached sessions of ``bare`` on other nodes (resource -> stub);
        not to be changed by the caller."""
        return self._remote.get(bare) or _NONE

    # -- the remote cache --------------------------------------------------------
    def remote_count(self) -> int:
        return sum(len(s) for s in self._by_node.values())

    def nodes(self) -> list[str]:
        """Nodes that hold at least one cached session."""
        return list(self._by_node)

    def put_remote(self, node: str, full: str, state: dict[str, Any]) -> RemoteSession:
        """Add or update the stub of ``full`` bound on ``node``."""
        sessions = self._by_node.setdefault(node, {})
        stub = sessions.get(full)
        if stub is None:
            jid = JID.parse(full)
            resources = self._remote.setdefault(jid.bare, {})
            old = resources.get(jid.resource or "")
            if old is not None and old.node != node:
                # The resource moved (a conflict resolved on the new node).
                self._by_node.get(old.node, {}).pop(full, None)
            stub = sessions[full] = resources[jid.resource or ""] = RemoteSession(
                self.cluster, node, jid)
        stub.update(state)
        self.cluster.lookup.changed(stub.bare)
        self.cluster.remote_presence(full, stub.presence)
        return stub

    def drop_remote(self, node: str, full: str) -> Optional[RemoteSession]:
        sessions = self._by_node.get(node)
        stub = sessions.pop(full, None) if sessions else None
        if stub is None:
            return None
        if not sessions:
            del self._by_node[node]
        resources = self._remote.get(stub.bare)
        if resources is not None and resources.get(stub.resource or "") is stub:
            del resources[stub.resource or ""]
            if not resources:
                del self._remote[stub.bare]
        stub.closed = True
        self.cluster.lookup.changed(stub.bare)
        self.cluster.remote_presence(full, None)
        return stub

    def drop_node(self, node: str) -> list[RemoteSession]:
        """Forget every session of ``node``; return their stubs."""
        stubs = list(self._by_node.get(node, {}).values())
        for stub in stubs:
            self.drop_remote(node, stub.jid.full)
        return stubs

    def replace_node(self, node: str, entries: dict[str, dict[str, Any]]) -> None:
        """Make the cache of ``node`` exactly ``entries`` (a re-read of Redis)."""
        current = self._by_node.get(node, {})
        for full in [f for f in current if f not in entries]:
            self.drop_remote(node, full)
        for full, state in entries.items():
            self.put_remote(node, full, state)
