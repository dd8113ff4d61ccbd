"""Extensible SASL Profile (XEP-0388 1.0) and Bind 2 (XEP-0386 1.0): elements.

SASL2 runs the same mechanisms and channel binding as RFC 6120 SASL (the
stream's :class:`~chatbx_server.c2s.sasl.SASLExchange` does the work), with
other wrappers and no stream restart after success. An ``<authenticate/>``
may carry a ``<user-agent id=.../>`` and a Bind2 ``<bind/>`` request, so that
one exchange authenticates, binds a resource and enables what the client
asks inline (stream management, CSI, carbons: each feature answers
``bind2-inline/{ns}:{name}`` events with what goes into ``<bound/>``).

Other specifications plug into the exchange through named events (the
stream fires them; see ``c2s/stream.py``):

- ``sasl2-features`` (fire_all, ``(stream, children)``): elements to add to
  ``<inline/>`` of ``<authentication/>`` (FAST's ``<fast/>``, SM's ``<sm/>``);
- ``sasl2-mechanism/{name}`` (fire, ``(stream, request)``): an
  :class:`Exchange` for a mechanism the stream does not run itself (FAST's
  HT-*), or None;
- ``sasl2-authenticated`` (fire_all, :class:`Outcome`): the client is
  authenticated; handlers add children to ``<success/>`` and may make it
  wait on a Deferred (a FAST token is stored before it is handed out);
- ``sasl2-inline/{ns}:{name}`` (fire, ``(stream, element, outcome)``): an
  inline request at the top of ``<authenticate/>`` (XEP-0198 ``<resume/>``),
  answered inside ``<success/>``; a resumption sets ``outcome.resumed`` and
  Bind2 is skipped.

Resources: Bind2 resources are chosen by the server (XEP-0386 §3): the
client's tag, a dot and a part derived from the account and the
user-agent id, so a device gets the same full JID at every login, and a
random part when it sent no id.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Callable, Iterable, Optional, Protocol

from twisted.internet import defer
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

    __slots__ = ("mechanism", "initial", "user_agent", "user_agent_label", "bind", "tag",
                 "inline", "extensions")

    def __init__(self, element: domish.Element) -> None:
        self.mechanism = element.getAttribute("mechanism", "")
        #: the initial response; None when the client sent none
        self.initial: Optional[bytes] = None
        self.user_agent: Optional[str] = None
        #: "<software> on <device>" as the client names itself, for listings
        self.user_agent_label: Optional[str] = None
        #: a Bind2 request was made
        self.bind = False
        self.tag: Optional[str] = None
        #: inline requests inside <bind/>, in order
        self.inline: list[domish.Element] = []
        #: children of other namespaces (FAST, SM <resume/>), in order
        self.extensions: list[domish.Element] = []
        for child in element.elements():
            if child.uri != NS and child.uri != BIND2:
                self.extensions.append(child)
                continue
            if child.name == "initial-response" and child.uri == NS:
                self.initial = decode_payload(child)
            elif child.name == "user-agent" and child.uri == NS:
                ua = (child.getAttribute("id") or "").strip()
                self.user_agent = ua[:128] or None
                names = [str(c).strip()[:100] for c in child.elements()
                         if c.uri == NS and c.name in ("software", "device")]
                self.user_agent_label = " on ".join(n for n in names if n)[:255] or None
            elif child.name == "bind" and child.uri == BIND2:
                self.bind = True
                for item in child.elements():
                    if item.uri == BIND2 and item.name == "tag":
                        self.tag = clean_tag(str(item))
                    elif item.uri != BIND2:
                        self.inline.append(item)

    def extension(self, uri: str, name: str) -> Optional[domish.Element]:
        """The first top-level child ``{uri}name``, if the client sent one."""
        for child in self.extensions:
            if child.uri == uri and child.name == name:
                return child
        return None


class Exchange(Protocol):
    """A SASL mechanism run: what ``SASLExchange`` and FAST's exchange offer.

    ``start``/``step`` fire with ``("challenge", data)`` or
    ``("success", (jid, additional))``; a ``SASLFailure`` means failure.
    """

    def start(self, initial: bytes) -> defer.Deferred: ...

    def step(self, data: bytes) -> defer.Deferred: ...


class Outcome:
    """A successful SASL2 authentication, while ``<success/>`` is prepared.

    Handlers of ``sasl2-authenticated`` add children (``add``) and may make
    the answer wait (``wait``); handlers of ``sasl2-inline/*`` answer inline
    requests and, for a resumption, set ``resumed`` (the session taken over)
    and queue what must follow the ``<success/>`` (``after``).
    """

    __slots__ = ("stream", "request", "jid", "exchange", "children", "pending", "resumed",
                 "after")

    def __init__(self, stream: Any, request: Authenticate, jid: Any, exchange: Any) -> None:
        self.stream = stream
        self.request = request
        #: the authenticated (bare) JID
        self.jid = jid
        #: the mechanism run that succeeded (FAST's carries the token used)
        self.exchange = exchange
        self.children: list[domish.Element] = []
        self.pending: list[defer.Deferred] = []
        #: the session a <resume/> took over (no Bind2 then)
        self.resumed: Any = None
        self.after: list[Callable[[], None]] = []

    def add(self, element: domish.Element) -> None:
        self.children.append(element)

    def wait(self, d: defer.Deferred) -> None:
        """Send ``<success/>`` only once ``d`` has fired (its errors are the
        handler's to handle: a failure here ends the stream)."""
        self.pending.append(d)


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
                     extra: Iterable[domish.Element] = ()) -> domish.Element:
    """``<authentication/>`` for the pre-authentication stream features;
    ``extra``: more ``<inline/>`` children (XEP-0484 ``<fast/>``, XEP-0198 ``<sm/>``)."""
    auth = domish.Element((NS, "authentication"))
    for name in mechanisms:
        auth.addElement("mechanism", content=name)
    inline = auth.addElement("inline")
    bind = inline.addElement((BIND2, "bind"))
    bind_inline = bind.addElement("inline")
    for var in sorted(set(inline_vars)):
        bind_inline.addElement("feature")["var"] = var
    for child in extra:
        inline.addChild(child)
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


__all__ = ["NS", "BIND2", "INLINE", "Authenticate", "Exchange", "Outcome", "bind2_resource",
           "features_element",
           "challenge", "success", "failure", "SASLFailure"]
