"""Stanza and stream errors and replies (RFC 6120 §4.9, §8.3)."""

from __future__ import annotations

import threading
from typing import Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns

# RFC 6120 §8.3.3: the error type each defined condition usually carries.
DEFAULT_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


class StanzaError(Exception):
    """Raised by handlers; the router turns it into an error reply."""

    def __init__(self, condition: str, type: Optional[str] = None,
                 text: Optional[str] = None, app_element: Optional[domish.Element] = None):
        super().__init__(condition)
        self.condition = condition
        self.type = type or DEFAULT_TYPES.get(condition, "cancel")
        self.text = text
        self.app_element = app_element

    def element(self) -> domish.Element:
        err = domish.Element((None, "error"))
        err["type"] = self.type
        err.addElement((ns.STANZA_ERRORS, self.condition))
        if self.text:
            t = err.addElement((ns.STANZA_ERRORS, "text"), content=self.text)
            t[("http://www.w3.org/XML/1998/namespace", "lang")] = "en"
        if self.app_element is not None:
            err.addChild(self.app_element)
        return err


class StreamError(Exception):
    """Raised inside stream handling to close the stream with this condition."""

    def __init__(self, condition: str, text: Optional[str] = None):
        super().__init__(condition)
        self.condition = condition
        self.text = text

    def element(self) -> domish.Element:
        err = domish.Element((ns.STREAMS, "error"))
        err.addElement((ns.STREAM_ERRORS, self.condition))
        if self.text:
            err.addElement((ns.STREAM_ERRORS, "text"), content=self.text)
        return err


def _copy_shallow(stanza: domish.Element) -> domish.Element:
    reply = domish.Element((stanza.uri, stanza.name))
    if stanza.getAttribute("id") is not None:
        reply["id"] = stanza["id"]
    sender = stanza.getAttribute("from")
    if sender:
        reply["to"] = sender
    target = stanza.getAttribute("to")
    if target:
        reply["from"] = target
    return reply


def result_reply(iq: domish.Element) -> domish.Element:
    """An empty ``type="result"`` reply to ``iq``, addressed back."""
    reply = _copy_shallow(iq)
    reply["type"] = "result"
    return reply


def error_reply(stanza: domish.Element, error: StanzaError | str,
                type: Optional[str] = None, text: Optional[str] = None,
                include_original: bool = True) -> domish.Element:
    """The error reply to ``stanza`` (RFC 6120 §8.3.1).

    The original payload is included for messages and presence, as Prosody
    and ejabberd do, so clients can tell what bounced; IQ errors carry only
    the first child, which is what clients match on.
    """
    if isinstance(error, str):
        error = StanzaError(error, type, text)
    reply = _copy_shallow(stanza)
    reply["type"] = "error"
    if include_original:
        for child in stanza.elements():
            if child.name == "error":
                continue
            reply.addChild(child)
            if stanza.name == "iq":
                break
    reply.addChild(error.element())
    return reply


def is_error_or_result(stanza: domish.Element) -> bool:
    """True for stanzas that must never be answered with an error (§8.3.1)."""
    t = stanza.getAttribute("type")
    return t == "error" or (stanza.name == "iq" and t == "result")


class _StanzaParser:
    """One expat parser kept open inside a ``<stored>`` root and fed one
    stanza at a time: creating a parser (and domish's stream around it)
    cost more than parsing a message (~60 % of ``parse_stanza``), and
    offline delivery, archive pages and every stanza a cluster node
    receives from another come through here."""

    #: stanzas one parser reads before a fresh one is made
    ROTATE = 10000

    def __init__(self) -> None:
        self.result: list[domish.Element] = []
        stream = self.stream = domish.elementStream()
        stream.DocumentStartEvent = lambda root: None
        stream.ElementEvent = self.result.append
        stream.DocumentEndEvent = lambda: None
        stream.parse(_STORED_OPEN)
        self.left = self.ROTATE

    def parse(self, data: bytes) -> domish.Element:
        result = self.result
        stream = self.stream
        stream.parse(data)
        if len(result) != 1 or stream.currElem is not None:
            raise ValueError("not exactly one stanza")
        return result.pop()


_STORED_OPEN = f"<stored xmlns='{ns.CLIENT}'>".encode()
_parsers = threading.local()


def parse_stanza(xml: str) -> domish.Element:
    """Parse one serialized stanza (as written by ``Element.toXml()``).

    Stored stanzas (offline messages) come back through here; the default
    namespace is jabber:client. Input that is not exactly one complete
    element raises (ValueError, or expat's error); the parser it spoiled
    is dropped.
    """
    parser: Optional[_StanzaParser] = getattr(_parsers, "parser", None)
    if parser is None or parser.left <= 0:
        parser = _parsers.parser = _StanzaParser()
    parser.left -= 1
    try:
        return parser.parse(xml.encode("utf-8"))
    except BaseException:
        _parsers.parser = None
        raise