"""Extensible SASL Profile (XEP-0388 1.0) and Bind 2 (XEP-0386 1.0): elements.

SASL2 runs the same mechanisms and channel binding as RFC 6120 SASL (the
stream's :class:`~chatbx_server.c2s.sasl.SASLExchange` does the work), with
other wrappers and no stream restart after success. An ``<authenticate/>``
may carry a ``<user-agent id=.../>`` and a Bind2 ``<bind/>`` request, so that
one exchange authenticates, binds a resource and enables what the client
asks inline (stream management, CSI, carbons: each feature answers
``bind2-inline/{ns}:{name}`` events with what goes into ``<bound/>``).

Resources: Bind2 resources are chosen by the server (XEP-0386 §3): the
client's tag, a dot and a part derived from the account and the
user-agent id, so a device gets the same full JID at every login, and a
random part when it sent no id.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.c2s.sasl import SASLFailure, decode_payload
from chatbx_server.xmpp import ns

NS = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
MAX_TAG = 32
_TAG_OK = re.compile(r"[^\w.-]", re.UNICODE)

#: inline Bind2 requests a feature may answer: (namespace, element, disco var)
INLINE = (
    ("urn:xmpp:sm:3", "enable", "urn:xmpp:sm:3"),
    ("urn:xmpp:csi:0", "inactive", "urn:xmpp:csi:0"),
    ("urn:xmpp:csi:0", "active", "urn:xmpp:csi:0"),
    ("urn:xmpp:carbons:2", "enable", "urn:xmpp:carbons:2"),
)


class Authenticate:
    """What an ``<authenticate/>`` asked for beyond the mechanism."""

    __slots__ = ("mechanism", "initial", "user_agent", "bind", "tag", "inline")

    def __init__(self, element: domish.Element) -> None:
        self.mechanism = element.getAttribute("mechanism", "")
        #: the initial response; None when the client sent none
        self.initial: Optional[bytes] = None
        self.user_agent: Optional[str] = None
        #: a Bind2 request was made
        self.bind = False
        self.tag: Optional[str] = None
        #: inline requests inside <bind/>, in order
        self.inline: list[domish.Element] = []
        for child in element.elements():
            if child.uri != NS and child.uri != BIND2:
                continue
            if child.name == "initial-response" and child.uri == NS:
                self.initial = decode_payload(child)
            elif child.name == "user-agent" and child.uri == NS:
                ua = (child.getAttribute("id") or "").strip()
                self.user_agent = ua[:128] or None
            elif child.name == "bind" and child.uri == BIND2:
                self.bind = True
                for item in child.elements():
                    if item.uri == BIND2 and item.name == "tag":
                        self.tag = clean_tag(str(item))
                    elif item.uri != BIND2:
                        self.inline.append(item)


def clean_tag(text: str) -> Optional[str]:
    """A Bind2 tag usable in a resource: short, no spaces or slashes."""
    tag = _TAG_OK.sub("", text.strip())[:MAX_TAG]
    return tag or None


def bind2_resource(user: str, tag: Optional[str], user_agent: Optional[str]) -> str:
    """XEP-0386 §3: server-chosen; stable for one account and device."""
    if user_agent:
        part = hashlib.sha256(f"{user}\0{user_agent}".encode()).hexdigest()[:8]
    else:
        part = os.urandom(4).hex()
    return f"{tag or 'chatbx'}.{part}"


def features_element(mechanisms: Iterable[str], inline_vars: Iterable[str],
                     sm_inline: bool) -> domish.Element:
    """``<authentication/>`` for the pre-authentication stream features."""
    auth = domish.Element((NS, "authentication"))
    for name in mechanisms:
        auth.addElement("mechanism", content=name)
    inline = auth.addElement("inline")
    bind = inline.addElement((BIND2, "bind"))
    bind_inline = bind.addElement("inline")
    for var in sorted(set(inline_vars)):
        bind_inline.addElement("feature")["var"] = var
    if sm_inline:
        inline.addElement(("urn:xmpp:sm:3", "sm"))
    return auth


def challenge(data: bytes) -> domish.Element:
    import base64

    el = domish.Element((NS, "challenge"))
    el.addContent(base64.b64encode(data).decode())
    return el


def success(additional: Optional[bytes], authzid: str) -> domish.Element:
    import base64

    el = domish.Element((NS, "success"))
    if additional:
        el.addElement("additional-data", content=base64.b64encode(additional).decode())
    el.addElement("authorization-identifier", content=authzid)
    return el


def failure(condition: str, text: Optional[str] = None) -> domish.Element:
    """XEP-0388 §2.6.2: the RFC 6120 condition inside a SASL2 ``<failure/>``."""
    el = domish.Element((NS, "failure"))
    el.addElement((ns.SASL, condition))
    if text:
        el.addElement("text", content=text)
    return el


__all__ = ["NS", "BIND2", "INLINE", "Authenticate", "bind2_resource", "features_element",
           "challenge", "success", "failure", "SASLFailure"]
