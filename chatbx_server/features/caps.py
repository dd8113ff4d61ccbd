"""Entity capabilities (XEP-0115 1.6): what each resource can do, from the
``<c/>`` in its presence, shared by every feature that needs it (PEP's
``+notify`` filtering first).

- A presence's ``hash:ver`` is looked up in a bounded in-memory cache shared
  by every account, then in the database (``entity_caps``), and only then
  asked for once with disco#info (``node#ver``) from the server to the
  resource that announced it (§6.3); every resource announcing the same
  unknown ver while the query is out waits for it.
- The answer is verified (§5.1 verification string, §5.4 processing rules):
  a hash that does not match is not cached, so a lying client cannot poison
  what others with the same ver are believed to support.
- Local resources are seen on their outgoing presence (``pre-presence``),
  remote contacts on the presence they send to a local account; the
  tracked remote JIDs are bounded.

When a resource's features become known or change, ``caps/changed`` is
fired (``fire_all``) with a :class:`CapsChange`.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import CHECK, DELIVER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID

log = Logger(observer=log_observer)

__all__ = ["CapsFeature", "CapsChange", "verification_string", "caps_hash", "NS_CAPS"]

NS_CAPS = "http://jabber.org/protocol/caps"
XML_LANG = ("http://www.w3.org/XML/1998/namespace", "lang")
#: §5.1 hash functions (IANA names) we can verify
_HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384",
           "sha-512": "sha512"}
#: runs before the presence module handles a broadcast presence
PRESENCE_PRIORITY = DELIVER + 40


@dataclass(frozen=True)
class CapsChange:
    """A resource's features became known (``old`` None) or changed."""

    jid: JID
    features: frozenset[str]
    old: Optional[frozenset[str]]


def verification_string(query: domish.Element) -> str:
    """The §5.1 verification string of a disco#info ``<query/>``.

    Raises:
        ValueError: §5.4 step 3: duplicate identities, features or forms,
            or a form without a hidden FORM_TYPE.
    """
    identities = []
    features = []
    forms = []
    for el in query.elements():
        if el.uri == ns.DISCO_INFO and el.name == "identity":
            identities.append("/".join((el.getAttribute("category", ""), el.getAttribute("type", ""),
                                        el.getAttribute(XML_LANG, ""), el.getAttribute("name", ""))))
        elif el.uri == ns.DISCO_INFO and el.name == "feature":
            features.append(el.getAttribute("var", ""))
        elif el.uri == ns.DATA_FORMS and el.name == "x":
            fields: dict[str, list[str]] = {}
            form_type = None
            for field in el.elements(ns.DATA_FORMS, "field"):
                var = field.getAttribute("var", "")
                values = sorted(str(v) for v in field.elements(ns.DATA_FORMS, "value"))
                if var == "FORM_TYPE":
                    if field.getAttribute("type") not in (None, "hidden") or len(values) != 1:
                        raise ValueError("FORM_TYPE must be one hidden value")
                    form_type = values[0]
                else:
                    fields[var] = values
            if form_type is None:
                continue  # §5.4 3.6: forms without FORM_TYPE are ignored
            text = form_type + "<" + "".join(
                var + "<" + "".join(v + "<" for v in vals) for var, vals in sorted(fields.items()))
            forms.append((form_type, text))
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        raise ValueError("duplicate identity or feature")
    if len({f for f, _ in forms}) != len(forms):
        raise ValueError("duplicate FORM_TYPE")
    out = "".join(i + "<" for i in sorted(identities))
    out += "".join(f + "<" for f in sorted(features))
    out += "".join(text for _, text in sorted(forms))
    return out


def caps_hash(algo: str, query: domish.Element) -> str:
    """base64 of the §5.1 hash of the query's verification string."""
    digest = hashlib.new(_HASHES[algo], verification_string(query).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def caps_of(presence: domish.Element) -> Optional[tuple[str, str, str]]:
    """(hash, node, ver) of a presence's ``<c/>``; None without one, or
    with legacy caps (no hash: nothing to verify, §8.4)."""
    for c in presence.elements(NS_CAPS, "c"):
        algo = c.getAttribute("hash")
        ver = c.getAttribute("ver")
        if algo and ver and algo.lower() in _HASHES:
            return algo.lower(), c.getAttribute("node", ""), ver
        return None
    return None


class CapsFeature(Feature):
    name = "caps"
    spec = "XEP-0115 1.6 (Entity Capabilities)"

    @dataclass(frozen=True)
    class Options:
        #: verified ver strings kept in memory (shared by every account)
        cache_size: int = 4096
        #: remote resources whose announced caps are remembered
        max_remote: int = 100000
        #: seconds a disco#info query for an unknown ver may take
        query_timeout: float = 30.0

        def __post_init__(self) -> None:
            if self.cache_size < 1 or self.max_remote < 1:
                raise ValueError("cache_size and max_remote must be at least 1")
            if self.query_timeout <= 0:
                raise ValueError("query_timeout must be positive")

    def setup(self) -> None:
        #: "hash:ver" -> features, least recently used first
        self._cache: OrderedDict[str, frozenset[str]] = OrderedDict()
        #: full JID -> "hash:ver" it announced (local sessions)
        self._local: dict[str, str] = {}
        #: full JID -> "hash:ver" (remote contacts), oldest first
        self._remote: OrderedDict[str, str] = OrderedDict()
        #: full JID -> "hash:ver" of sessions on other nodes of a cluster
        self._cluster: dict[str, str] = {}
        #: "hash:ver" being resolved -> the full JIDs waiting for it
        self._pending: dict[str, set[str]] = {}
        self._ids = 0
        self.hook("pre-presence/bare", self.on_own_presence, PRESENCE_PRIORITY)
        self.hook("presence/bare", self.on_inbound, CHECK)
        self.hook("presence/full", self.on_inbound, CHECK)
        self.hook("session/closed", self.on_session_closed, DELIVER)
        self.hook("session/import", self.on_import)

    # -- queries --------------------------------------------------------------
    def features(self, full_jid: str) -> Optional[frozenset[str]]:
        """The verified features of a resource, None when not (yet) known."""
        key = (self._local.get(full_jid) or self._remote.get(full_jid)
               or self._cluster.get(full_jid))
        if key is None:
            return None
        return self._cache.get(key)

    def wants(self, full_jid: str, node: str) -> bool:
        """Does the resource announce ``node+notify`` (XEP-0163 §4.4)?"""
        features = self.features(full_jid)
        return features is not None and node + "+notify" in features

    def remote_resources(self, bare: str) -> list[str]:
        """Full JIDs of a remote entity whose caps we track."""
        prefix = bare + "/"
        return [j for j in self._remote if j.startswith(prefix)]

    def track_cluster_session(self, full_jid: str, presence: Optional[domish.Element]) -> None:
        """A session on another node of a cluster announced ``presence``
        (None: it ended), so ``wants`` answers for it too (PEP notifications
        to it). Its own node asks for unknown caps and stores the answer;
        here they are only looked up, and no caps/changed fires (its own
        node sends what a change calls for)."""
        caps = caps_of(presence) if presence is not None else None
        if caps is None:
            self._cluster.pop(full_jid, None)
            return
        key = f"{caps[0]}:{caps[2]}"
        self._cluster[full_jid] = key
        if key in self._cache:
            return

        def stored(features: Any) -> None:
            if features is not None:
                self._remember(key, frozenset(features))

        d = self.server.stores.caps.get(key)
        d.addCallback(stored)
        d.addErrback(lambda f: log.failure("reading caps {ver} failed", f, ver=key))

    # -- presence ---------------------------------------------------------------
    def on_own_presence(self, event: StanzaEvent) -> None:
        session = event.origin
        stanza = event.stanza
        if session is None or stanza.getAttribute("to") is not None:
            return None
        ptype = stanza.getAttribute("type")
        if ptype == "unavailable":
            self._local.pop(session.jid.full, None)
        elif ptype is None:
            self._seen(session.jid, stanza, self._local)
        return None

    def on_inbound(self, event: StanzaEvent) -> None:
        sender = event.sender
        if sender is None or sender.resource is None or self.server.is_local(sender.host):
            return None
        ptype = event.stanza.getAttribute("type")
        if ptype == "unavailable":
            self._remote.pop(sender.full, None)
        elif ptype is None:
            self._seen(sender, event.stanza, self._remote)
            while len(self._remote) > self.options.max_remote:
                self._remote.popitem(last=False)
        return None

    def on_import(self, item: tuple[Any, dict[str, Any]]) -> None:
        """A session taken over from another node: its caps as announced."""
        session, _ = item
        if session.presence is not None:
            self._seen(session.jid, session.presence, self._local)

    def on_session_closed(self, session: Any) -> None:
        jid = getattr(session, "jid", None)
        if jid is not None:
            self._local.pop(jid.full, None)

    def _seen(self, jid: JID, stanza: domish.Element, table: dict[str, str]) -> None:
        caps = caps_of(stanza)
        full = jid.full
        old_key = table.get(full)
        if caps is None:
            table.pop(full, None)
            return
        algo, node, ver = caps
        key = f"{algo}:{ver}"
        if key == old_key:
            return
        old = self._cache.get(old_key) if old_key else None
        table[full] = key
        if isinstance(table, OrderedDict):
            table.move_to_end(full)
        known = self._cache.get(key)
        if known is not None:
            self._cache.move_to_end(key)
            self._changed(jid, known, old)
            return
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.add(full)
            return
        self._pending[key] = {full}
        d = defer.ensureDeferred(self._resolve(key, algo, node, ver, jid))
        d.addErrback(lambda f: log.failure("resolving caps {ver} failed", f, ver=key))
        d.addBoth(lambda _: self._pending.pop(key, None))

    def _changed(self, jid: JID, features: frozenset[str], old: Optional[frozenset[str]]) -> None:
        if old == features:
            return
        self.server.events.fire_all("caps/changed", CapsChange(jid, features, old))

    def _remember(self, key: str, features: frozenset[str]) -> None:
        self._cache[key] = features
        self._cache.move_to_end(key)
        while len(self._cache) > self.options.cache_size:
            self._cache.popitem(last=False)

    def _announces(self, full: str, key: str) -> bool:
        return self._local.get(full) == key or self._remote.get(full) == key

    async def _resolve(self, key: str, algo: str, node: str, ver: str, jid: JID) -> None:
        stored = await self.server.stores.caps.get(key)
        if stored is not None:
            self._verified(key, frozenset(stored))
            return
        asked: set[str] = set()
        while True:
            waiting = [f for f in self._pending.get(key, ()) if f not in asked
                       and self._announces(f, key)]
            if not waiting:
                return
            target = jid if jid.full in waiting else JID.parse(sorted(waiting)[0])
            asked.add(target.full)
            query = await self._disco(target, f"{node}#{ver}")
            if query is None:
                continue
            try:
                computed: Optional[str] = caps_hash(algo, query)
            except ValueError:
                computed = None
            features = frozenset(el.getAttribute("var", "") for el in
                                 query.elements(ns.DISCO_INFO, "feature"))
            if computed == ver:
                await self.server.stores.caps.put(key, sorted(features))
                self._verified(key, features)
                return
            # §5.4 step 3.8: not cached under the announced ver (it would
            # poison it for everyone). The resource that answered is still
            # believed about itself, as Prosody does (slixmpp, for one,
            # announces a ver computed before its plugins added features);
            # every other resource announcing this ver is asked in turn.
            log.info("caps of {jid} do not match their hash", jid=target.full)
            if computed is None or not self._announces(target.full, key):
                continue
            own = f"{algo}:{computed}"
            table = self._local if target.full in self._local else self._remote
            table[target.full] = own
            self._remember(own, features)
            self._changed(target, features, None)

    def _verified(self, key: str, features: frozenset[str]) -> None:
        self._remember(key, features)
        for full in list(self._pending.get(key, ())):
            if self._announces(full, key):
                self._changed(JID.parse(full), features, None)

    def _disco(self, jid: JID, node: str) -> defer.Deferred[Optional[domish.Element]]:
        """Ask ``jid`` for disco#info of ``node``; fires with the query or None."""
        self._ids += 1
        iq_id = f"caps{self._ids}"
        iq = domish.Element((ns.CLIENT, "iq"))
        iq["type"] = "get"
        iq["id"] = iq_id
        iq["from"] = jid.host if self.server.is_local(jid.host) else sorted(self.server.hosts)[0]
        iq["to"] = jid.full
        iq.addElement((ns.DISCO_INFO, "query"))["node"] = node
        d: defer.Deferred[Optional[domish.Element]] = defer.Deferred()
        events = [f"iq-result/host/{iq_id}", f"iq-error/host/{iq_id}"]

        def answered(event: StanzaEvent) -> Optional[bool]:
            if event.sender is None or event.sender.full != jid.full:
                return None  # not from whom we asked: not ours
            finish(None if event.stanza.getAttribute("type") == "error" else
                   next(event.stanza.elements(ns.DISCO_INFO, "query"), None))
            return True

        def finish(result: Optional[domish.Element]) -> None:
            for name in events:
                self.server.events.off(name, answered)
            if timer.active():
                timer.cancel()
            if not d.called:
                d.callback(result)

        for name in events:
            self.server.events.on(name, answered)
        timer = self.server.clock.callLater(self.options.query_timeout, finish, None)
        self.server.router.route(iq)
        return d


def interested(caps: Optional[CapsFeature], jids: Iterable[str], node: str) -> list[str]:
    """The JIDs among ``jids`` that want notifications of ``node``."""
    if caps is None:
        return []
    return [j for j in jids if caps.wants(j, node)]
