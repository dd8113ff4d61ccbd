"""Service discovery (XEP-0030 2.5) for the server and its accounts.

The server's disco#info is gathered from every loaded feature: its
``disco_identities`` and ``disco_features`` declarations, its dynamic
``disco_info(target, node)`` and its XEP-0128 ``disco_extensions`` (the way
wokkel's DiscoHandler gathers its IDisco siblings). An account's bare JID
answers with the ``account/registered`` identity and the features declared
in ``account_disco_features``.

Requests to bare JIDs follow XEP-0030 §9 (Security Considerations), so that
disco cannot be used to harvest accounts or watch presence: disco#info is
answered for the account itself and for entities the account shares its
presence with (subscription "from" or "both"); anyone else, and any query
to a JID without an account, gets service-unavailable. disco#items to an
account is always an empty result (the server lists no resources).

A feature's ``disco_info``/``disco_extensions`` receive the target JID and
must check whether it is the host (``target.user is None``) or an account.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.words.xish import domish

from chatbx_server import _compat  # noqa: F401  (before any wokkel import)
from wokkel import disco as wokkel_disco
from twisted.words.protocols.jabber.jid import JID as WokkelJID

from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError

SERVER_IDENTITY = ("server", "im", "chatbx")
ACCOUNT_IDENTITY = ("account", "registered", "")


def presence_authorized(server: Any, owner: str, requester: Any) -> defer.Deferred:
    """Fire True when ``requester`` may see the presence of account ``owner``.

    True for the account itself and for a contact whose roster item in the
    owner's roster has subscription "from" or "both" (RFC 6121 §3). Used by
    disco and last activity, which must not leak presence (XEP-0030 §9,
    XEP-0012 §4). A missing account or roster fires False.
    """
    if requester is None:
        return defer.succeed(False)
    if requester.bare == owner:
        return defer.succeed(True)
    d = defer.maybeDeferred(server.stores.roster.get_item, owner, requester.bare)
    d.addCallback(lambda item: item is not None and item.subscription in ("from", "both"))

    def failed(failure: Any) -> bool:
        from chatbx_server.storage.errors import UnknownUser

        failure.trap(UnknownUser)
        return False

    d.addErrback(failed)
    return d


class DiscoFeature(Feature):
    name = "disco"
    spec = "XEP-0030 2.5 (Service Discovery), XEP-0128 1.0 (Service Discovery Extensions)"
    disco_features = (ns.DISCO_INFO, ns.DISCO_ITEMS)
    account_disco_features = (ns.DISCO_INFO, ns.DISCO_ITEMS)

    def setup(self) -> None:
        self.iq("get", "host", ns.DISCO_INFO, "query", self.on_host_info)
        self.iq("get", "host", ns.DISCO_ITEMS, "query", self.on_host_items)
        self.iq("get", "bare", ns.DISCO_INFO, "query", self.on_account_info)
        self.iq("get", "bare", ns.DISCO_ITEMS, "query", self.on_account_items)

    # -- gathering ---------------------------------------------------------
    def _gather(self, target: Any, node: Optional[str], account: bool) -> Optional[domish.Element]:
        """The disco#info result for target+node, or None when it has none."""
        identities: list[tuple[str, str, str]] = []
        features: list[str] = []
        extensions: list[domish.Element] = []
        if node is None:
            if account:
                identities.append(ACCOUNT_IDENTITY)
            else:
                identities.append(SERVER_IDENTITY)
            for feature in self.server.modules.features():
                if account:
                    features.extend(feature.account_disco_features)
                else:
                    identities.extend(feature.disco_identities)
                    features.extend(feature.disco_features)
        for feature in self.server.modules.features():
            dyn_identities, dyn_features = feature.disco_info(target, node)
            identities.extend(dyn_identities)
            features.extend(dyn_features)
            extensions.extend(feature.disco_extensions(target, node))
        if node is not None and not (identities or features or extensions):
            return None
        info = wokkel_disco.DiscoInfo()
        info.nodeIdentifier = node or ""
        for category, type_, name in dict.fromkeys(identities):
            info.append(wokkel_disco.DiscoIdentity(category, type_, name or None))
        for var in dict.fromkeys(features):
            info.append(wokkel_disco.DiscoFeature(var))
        query = info.toElement()
        for form in extensions:
            query.addChild(form if isinstance(form, domish.Element) else form.toElement())
        return query

    @staticmethod
    def _node(event: StanzaEvent) -> Optional[str]:
        node = event.stanza.firstChildElement().getAttribute("node")
        return node or None

    # -- host ------------------------------------------------------------------
    def on_host_info(self, event: StanzaEvent) -> domish.Element:
        query = self._gather(event.to, self._node(event), account=False)
        if query is None:
            raise StanzaError("item-not-found")
        return query

    def on_host_items(self, event: StanzaEvent) -> domish.Element:
        node = self._node(event)
        if node is not None:
            raise StanzaError("item-not-found")
        items = wokkel_disco.DiscoItems()
        host = event.to.host
        hosts = self.server.hosts
        for service in sorted(self.server.router.services):
            # A service belongs to the host it is named under (conference.HOST);
            # one under none of the hosts is listed on every host.
            parents = [h for h in hosts if service.endswith("." + h)]
            if host in parents or not parents:
                items.append(wokkel_disco.DiscoItem(WokkelJID(service)))
        return items.toElement()

    # -- accounts --------------------------------------------------------------
    @defer.inlineCallbacks
    def on_account_info(self, event: StanzaEvent) -> Any:
        owner = event.to.bare
        exists = yield self.server.stores.users.exists(owner)
        allowed = exists and (yield presence_authorized(self.server, owner, event.sender))
        if not allowed:
            # XEP-0030 §9: the same answer for "no account" and "not yours".
            raise StanzaError("service-unavailable")
        query = self._gather(event.to.bare_jid(), self._node(event), account=True)
        if query is None:
            raise StanzaError("item-not-found")
        return query

    def on_account_items(self, event: StanzaEvent) -> domish.Element:
        # XEP-0030 §9: an empty result for every account, existing or not,
        # and the server does not list available resources.
        query = domish.Element((ns.DISCO_ITEMS, "query"))
        node = self._node(event)
        if node is not None:
            query["node"] = node
        return query
