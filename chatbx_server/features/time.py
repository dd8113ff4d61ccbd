"""Entity time (XEP-0202 2.0) and the XEP-0082 timestamp format.

The server answers in UTC with a zero offset: it has no business telling
the network which time zone its machine is configured for. The time comes
from ``server.clock``, so tests drive it with a fake clock.
"""

from __future__ import annotations

from datetime import datetime, timezone

from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns


def xep0082_datetime(seconds: float) -> str:
    """UTC ``CCYY-MM-DDThh:mm:ssZ`` (XEP-0082 DateTime profile) for a Unix time.

    Whole seconds only: every client parses that form, and sub-second
    precision would only reveal timing for nothing.
    """
    return datetime.fromtimestamp(int(seconds), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TimeFeature(Feature):
    """Answers ``<time xmlns='urn:xmpp:time'/>`` requests sent to the server."""

    name = "time"
    spec = "XEP-0202 2.0 (Entity Time)"
    disco_features = (ns.TIME,)

    def setup(self) -> None:
        self.iq("get", "host", ns.TIME, "time", self.on_time)

    def on_time(self, event: StanzaEvent) -> domish.Element:
        result = domish.Element((ns.TIME, "time"))
        result.addElement("tzo", content="+00:00")
        result.addElement("utc", content=xep0082_datetime(self.server.clock.seconds()))
        return result
