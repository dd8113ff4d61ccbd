"""Message Carbons (XEP-0280 1.0.1): one conversation on every device.

A resource turns carbons on or off for itself with
``<iq type='set'><enable|disable xmlns='urn:xmpp:carbons:2'/></iq>``
(§4, §5; repeating either is not an error, §9.1). Then:

- *received*: an eligible message to the account (bare or full JID) is
  delivered by the message module as usual, and every carbons-enabled
  resource that did not get it under RFC 6121's rules gets a copy wrapped in
  ``<received/>`` (§7);
- *sent*: an eligible message a resource sends goes as a ``<sent/>`` copy to
  the account's other carbons-enabled resources, whether or not the sender
  enabled carbons (§8).

The copies are made on ``message/*`` and ``pre-message/*`` at COPY priority:
after the filters (blocking) and the archive (which stamps its
``<stanza-id/>`` at ARCHIVE, so the copies carry it), before delivery. Each
copy is a new element around a shallow copy of the stanza; the original is
not changed, except that ``<private/>`` is removed from a message before it
is delivered to a recipient that uses carbons (§10).

Which messages are eligible (§6 leaves it to the server; these are Prosody's
mod_carbons rules): chat; normal with a body; an error whose sender is a bare
JID (a bounce of a message the user sent to a bare JID: §6's "error in
response to an eligible message"); XEP-0353 call messages; anything the
user's archive stamped with a stanza-id. Never: groupchat and headline,
messages with ``<private/>`` or the XEP-0334 ``<no-copy/>`` hint, messages
that already carry ``<sent/>``/``<received/>`` (no carbons of carbons), and
messages from a MUC to a full JID (``<x xmlns='...muc#user'/>``, §6: private
messages from MUC participants).

Copies go straight to the sessions (``session.send``), never through the
router, so a copy can neither bounce nor be copied again (§9.3: an error for
a forked message must not reach the original sender).

On a cluster the node that handles a message makes all its copies: a
session bound on another node is a stub in ``server.sessions`` whose
``send`` forwards to its node, and the session directory publishes whether
carbons are on for it (``RemoteSession.carbons``, the ``"c"`` of its state);
enabling or disabling here republishes the session's state.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.words.xish import domish

from chatbx_server.cluster.directory import RemoteSession
from chatbx_server.events import COPY, StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError

__all__ = ["CarbonsFeature", "eligible", "wrap", "NS_CARBONS", "NS_FORWARD"]

NS_CARBONS = "urn:xmpp:carbons:2"
#: advertised by servers that apply §6's eligibility rules (XEP-0280 0.13+)
NS_CARBONS_RULES = "urn:xmpp:carbons:rules:0"
NS_FORWARD = "urn:xmpp:forward:0"
NS_HINTS = "urn:xmpp:hints"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_SID = "urn:xmpp:sid:0"
_JINGLE_MESSAGE = frozenset(("urn:xmpp:jingle-message:0", "urn:xmpp:jingle-message:1"))
_BODY_NS = frozenset((ns.CLIENT, ns.SERVER))


def eligible(stanza: domish.Element, user: str, inbound: bool) -> bool:
    """Whether ``stanza`` is copied to ``user``'s other resources (§6).

    Args:
        stanza: the message.
        user: the bare JID of the account whose resources get the copies.
        inbound: True for a message to ``user`` (received copies), False
            for one a resource of ``user`` sends (sent copies).
    """
    mtype = stanza.getAttribute("type", "normal")
    if mtype == "groupchat" or mtype == "headline":
        return False
    body = other = False
    for child in stanza.elements():
        uri = child.uri
        if uri == NS_CARBONS:
            # <private/> (§10), or a carbon itself: never copied.
            if child.name in ("private", "sent", "received"):
                return False
        elif uri == NS_HINTS:
            if child.name == "no-copy":  # XEP-0334 §4.2
                return False
        elif uri == NS_MUC_USER:
            # §6: a MUC's private messages (sent to a full JID) are not copied.
            if inbound and child.name == "x" and "/" in stanza.getAttribute("to", ""):
                return False
        elif uri in _BODY_NS:
            if child.name == "body":
                body = True
        elif uri in _JINGLE_MESSAGE:
            other = True
        elif uri == NS_SID and child.name == "stanza-id" and child.getAttribute("by") == user:
            other = True  # in the user's archive: the devices should agree with it
    if mtype == "chat":
        return True
    if mtype == "normal":
        return body or other
    if mtype == "error":
        return inbound and "/" not in stanza.getAttribute("from", "/")
    return other


def forwardable(stanza: domish.Element, to: Optional[str] = None) -> domish.Element:
    """A shallow copy of ``stanza`` in jabber:client, to sit in ``<forwarded/>``.

    Attributes are copied and the children list is new (children are shared,
    never changed), so later changes to the original do not show in copies.
    """
    copy = domish.Element((ns.CLIENT, stanza.name))
    copy.attributes = dict(stanza.attributes)
    if to is not None and copy.attributes.get("to") is None:
        copy.attributes["to"] = to
    copy.children = list(stanza.children)
    return copy


def wrap(direction: str, inner: domish.Element, user: str, to: str, mtype: str) -> domish.Element:
    """``<message from=user to=to type=mtype><direction><forwarded>inner``.

    ``direction`` is "sent" or "received" (§7, §8); ``inner`` may be shared
    by many wrappers: nothing changes it.
    """
    carbon = domish.Element((ns.CLIENT, "message"))
    carbon["from"] = user
    carbon["to"] = to
    carbon["type"] = mtype
    forwarded = carbon.addElement((NS_CARBONS, direction)).addElement((NS_FORWARD, "forwarded"))
    forwarded.children.append(inner)
    return carbon


def _without_private(stanza: domish.Element) -> None:
    """Remove ``<private/>`` (§10); the children list is replaced, not edited."""
    stanza.children = [c for c in stanza.children
                       if not (isinstance(c, domish.Element) and c.uri == NS_CARBONS
                               and c.name == "private")]


class CarbonsFeature(Feature):
    name = "carbons"
    spec = "XEP-0280 1.0.1 (Message Carbons)"
    disco_features = (NS_CARBONS, NS_CARBONS_RULES)
    account_disco_features = (NS_CARBONS,)
    depends = ("message",)

    def setup(self) -> None:
        #: bare JID -> {resource: session} of the carbons-enabled sessions
        self._enabled: dict[str, dict[str, Any]] = {}
        #: (stanza, account) whose received copies were made last: the
        #: message module hands an undeliverable message/full on as
        #: message/bare with the same stanza; it must not be copied twice.
        self._last: tuple[Optional[domish.Element], str] = (None, "")
        #: a cluster's remote sessions of an account (resource -> stub), or None
        self._remote_of: Optional[Callable[[str], dict[str, Any]]] = getattr(
            self.server.sessions, "remote", None)
        self.iq("set", "bare", NS_CARBONS, "enable", self.on_enable)
        self.iq("set", "bare", NS_CARBONS, "disable", self.on_disable)
        for kind in ("bare", "full", "host"):
            self.hook(f"pre-message/{kind}", self.on_sent, COPY)
        self.hook("message/bare", self.on_received_bare, COPY)
        self.hook("message/full", self.on_received_full, COPY)
        self.hook("session/closed", self.on_session_closed)
        # A session moving to another node (features/smacks_cluster.py).
        self.hook("session/export", self.on_export)
        self.hook("session/import", self.on_import)

    def teardown(self) -> None:
        super().teardown()
        self._enabled.clear()
        self._last = (None, "")

    # -- enable / disable ------------------------------------------------------
    def _own_session(self, event: StanzaEvent) -> Any:
        session = event.origin
        # §4.1, §5.1: only a local client, for itself.
        if session is None or event.to.bare != session.bare:
            raise StanzaError("not-allowed")
        return session

    def on_enable(self, event: StanzaEvent) -> None:
        session = self._own_session(event)
        self._enabled.setdefault(session.bare, {})[session.resource] = session
        self._changed(session)
        return None

    def on_disable(self, event: StanzaEvent) -> None:
        session = self._own_session(event)
        self._forget(session)
        self._changed(session)
        return None

    def _changed(self, session: Any) -> None:
        """Tell the other nodes of a cluster (their stubs of ``session``)."""
        cluster = self.server.cluster
        if cluster is not None:
            cluster.session_changed(session)

    def enabled(self, session: Any) -> bool:
        """Whether ``session`` (local, or a stub of one on another node) has carbons on."""
        if isinstance(session, RemoteSession):
            return session.carbons
        return self._enabled.get(session.bare, {}).get(session.resource) is session

    def _targets(self, user: str) -> list[Any]:
        """``user``'s carbons-enabled sessions, here and on other nodes."""
        local = self._enabled.get(user)
        targets = list(local.values()) if local else []
        remote_of = self._remote_of
        if remote_of is not None:
            for resource, stub in remote_of(user).items():
                if stub.carbons and not stub.closed and (local is None or resource not in local):
                    targets.append(stub)
        return targets

    def copies_sent(self, origin: Any) -> bool:
        """Whether a message ``origin`` sends now gets a sent carbon (§8):
        another resource of the account has carbons on. Asked before the
        archive stamps the sender's stanza-id on a copy for carbons."""
        user = origin.bare
        local = self._enabled.get(user)
        if local is not None:
            for session in local.values():
                if session is not origin:
                    return True
        if self._remote_of is None:
            return False
        return any(s is not origin for s in self._targets(user))

    def _forget(self, session: Any) -> None:
        user, resource = session.bare, session.resource
        resources = self._enabled.get(user)
        if resources is not None and resources.get(resource) is session:
            del resources[resource]
            if not resources:
                del self._enabled[user]

    def on_session_closed(self, session: Any) -> None:
        self._forget(session)

    def on_export(self, item: tuple[Any, dict[str, Any]]) -> None:
        session, state = item
        if self.enabled(session):
            state["carbons"] = True

    def on_import(self, item: tuple[Any, dict[str, Any]]) -> None:
        session, state = item
        if state.get("carbons"):
            self._enabled.setdefault(session.bare, {})[session.resource] = session
            self._changed(session)  # published without it when it was added

    # -- sent (§8) ---------------------------------------------------------------
    def on_sent(self, event: StanzaEvent) -> None:
        origin = event.origin
        if origin is None:
            return None
        targets = [s for s in self._targets(origin.bare) if s is not origin]
        if not targets:
            return None  # §8: never to the sending resource itself
        stanza = event.stanza
        user = origin.bare
        if not eligible(stanza, user, inbound=False):
            return None
        # A message without 'to' goes to the account itself (RFC 6120 §10.3).
        inner = forwardable(stanza, to=user)
        mtype = stanza.getAttribute("type", "normal")
        for session in targets:
            session.send(wrap("sent", inner, user, session.jid.full, mtype))
        return None

    # -- received (§7) -----------------------------------------------------------
    def on_received_full(self, event: StanzaEvent) -> None:
        user = event.to.bare
        enabled = self._targets(user)
        if not enabled:
            return None
        target = self.server.sessions.get(user, event.to.resource)
        if target is not None:
            return self._received(event, user, enabled, (target,))
        # No such resource: the message module delivers it as if it were
        # sent to the bare JID (RFC 6121 §8.5.3.2.1), except errors (dropped)
        # and groupchat (bounced), which are not eligible anyway.
        return self._received(event, user, enabled, self._bare_recipients(user, event.stanza))

    def on_received_bare(self, event: StanzaEvent) -> None:
        user = event.to.bare
        enabled = self._targets(user)
        if not enabled:
            return None
        last_stanza, last_user = self._last
        if last_stanza is event.stanza and last_user == user:
            return None  # copied on message/full already
        return self._received(event, user, enabled, self._bare_recipients(user, event.stanza))

    def _bare_recipients(self, user: str, stanza: domish.Element) -> tuple[Any, ...]:
        """The sessions the message module delivers a bare-JID message to.

        The available resources with the highest non-negative priority
        (RFC 6121 §8.5.2.1.1, Prosody's choice; headline, which is never
        copied, would go to all non-negative ones): those already have it.
        """
        sessions = [s for s in self.server.sessions.available(user) if s.priority >= 0]
        if not sessions:
            return ()
        top = max(s.priority for s in sessions)
        return tuple(s for s in sessions if s.priority == top)

    def _received(self, event: StanzaEvent, user: str, enabled: list[Any],
                  recipients: tuple[Any, ...]) -> None:
        stanza = event.stanza
        self._last = (stanza, user)
        if not eligible(stanza, user, inbound=True):
            if any(True for _ in stanza.elements(NS_CARBONS, "private")):
                _without_private(stanza)  # §10: not for the recipient
            return None
        inner = forwardable(stanza)
        mtype = stanza.getAttribute("type", "normal")
        for session in enabled:
            if session not in recipients:
                session.send(wrap("received", inner, user, session.jid.full, mtype))
        return None
