"""Software version (XEP-0092 1.1) of the server.

The operating system is left out by default (``hide_os``), as ejabberd and
MongooseIM do: it helps attackers more than users. With ``hide = true`` the
feature is neither advertised nor answered, so a query gets the router's
service-unavailable, exactly as if the module were not loaded (Prosody's
way of hiding it).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from twisted.words.xish import domish

from chatbx_server import __version__
from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns

SOFTWARE_NAME = "chatbx"


class VersionFeature(Feature):
    name = "version"
    spec = "XEP-0092 1.1 (Software Version)"
    disco_features: tuple[str, ...] = (ns.VERSION,)  # setup() may empty it

    @dataclass(frozen=True)
    class Options:
        #: leave <os/> out of the answer
        hide_os: bool = True
        #: do not answer version queries at all (nor advertise them)
        hide: bool = False

    def setup(self) -> None:
        if self.options is not None and self.options.hide:
            # An instance attribute shadows the class declaration for disco.
            self.disco_features = ()
            return
        self.iq("get", "host", ns.VERSION, "query", self.on_version)

    def on_version(self, event: StanzaEvent) -> domish.Element:
        query = domish.Element((ns.VERSION, "query"))
        query.addElement("name", content=SOFTWARE_NAME)
        query.addElement("version", content=__version__)
        if self.options is None or not self.options.hide_os:
            query.addElement("os", content=platform.system() or "unknown")
        return query
