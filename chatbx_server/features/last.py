"""Last activity (XEP-0012 2.0): server uptime, and a minimal account answer.

Sent to the server's domain, the query returns the uptime in seconds
(§5), measured on ``server.clock`` from ``server.started_at``.

Sent to an account's bare JID (§3) the server answers on the account's
behalf. chatbx does not yet record when an account last logged out, so the
answer is deliberately minimal:

- a requester that may not see the account's presence (not the account
  itself, no subscription "from"/"both") gets ``forbidden`` (§3 MUST; §7),
  whether the account exists or not, so nothing leaks;
- an authorized requester gets ``seconds='0'`` while the account has an
  available resource (§3 SHOULD);
- otherwise ``service-unavailable`` (no logout time is stored).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.features.disco import presence_authorized
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError


def last_query(seconds: int) -> domish.Element:
    query = domish.Element((ns.LAST, "query"))
    query["seconds"] = str(max(0, int(seconds)))
    return query


class LastActivityFeature(Feature):
    name = "last"
    spec = "XEP-0012 2.0 (Last Activity): server uptime; account query minimal"
    disco_features = (ns.LAST,)

    def setup(self) -> None:
        self.iq("get", "host", ns.LAST, "query", self.on_uptime)
        self.iq("get", "bare", ns.LAST, "query", self.on_account)

    def on_uptime(self, event: StanzaEvent) -> domish.Element:
        return last_query(self.server.clock.seconds() - self.server.started_at)

    @defer.inlineCallbacks
    def on_account(self, event: StanzaEvent) -> Any:
        owner = event.to.bare
        allowed = yield presence_authorized(self.server, owner, event.sender)
        if not allowed:
            raise StanzaError("forbidden")
        if self.server.sessions.available(owner):
            return last_query(0)
        raise StanzaError("service-unavailable", text="last activity is not recorded")
