"""Service Outage Status (XEP-0455 0.3.1): where users read about outages.

The operator names one or more status documents (JSON as XEP-0455 §2.2
describes, hosted somewhere that stays up when this server is down) in
``[modules.outage_status] urls``; disco#info of the server's domain carries
them as a XEP-0128 form (FORM_TYPE ``urn:xmpp:sos:0``, list-multi field
``external-status-addresses``, §2.1 and §7), so a client learns and caches
them while the server works and polls them when it cannot connect (§4).
Nothing is announced while no URL is configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from twisted.words.xish import domish

from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns

NS_SOS = "urn:xmpp:sos:0"


@dataclass(frozen=True)
class OutageStatusOptions:
    """``[modules.outage_status]``."""

    #: https:// URLs of the status documents (http:// accepted, not advised)
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.urls) > 16:
            raise ValueError("at most 16 urls")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.netloc or any(c.isspace() for c in url):
                raise ValueError(f"url {url!r} is not an http(s) URL")


class OutageStatusFeature(Feature):
    name = "outage_status"
    spec = "XEP-0455 0.3.1 (Service Outage Status)"
    Options = OutageStatusOptions

    def disco_extensions(self, target: Any, node: Optional[str]) -> Iterable[domish.Element]:
        urls = self.options.urls
        if not urls or node is not None or target is None or target.user is not None:
            return ()
        form = domish.Element((ns.DATA_FORMS, "x"))
        form["type"] = "result"
        hidden = form.addElement("field")
        hidden["var"], hidden["type"] = "FORM_TYPE", "hidden"
        hidden.addElement("value", content=NS_SOS)
        field = form.addElement("field")
        field["var"], field["type"] = "external-status-addresses", "list-multi"
        for url in urls:
            field.addElement("value", content=url)
        return (form,)
