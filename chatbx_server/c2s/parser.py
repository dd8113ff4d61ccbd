"""An expat element stream that enforces RFC 6120 §11.1 and size limits.

XMPP forbids comments, processing instructions, DTDs and entity
declarations; anything else the parser accepts could be used to grow
memory or smuggle content, so they close the stream (``restricted-xml``).
Stanza size, nesting depth and attribute counts are bounded
(``policy-violation``).

An idle connection need not keep its expat parser (about 12 KiB of
buffers and tables, the largest Python-side cost of an idle connection):
between stanzas the only state that matters is the namespace context of
the stream header. :meth:`SafeElementStream.suspend` drops the parser at
such a point; the next ``parse`` builds a new one and primes it with a
header declaring the same namespaces (its DocumentStartEvent is not
passed on), then goes on as if nothing happened.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn, Optional

import pyexpat
from twisted.words.xish import domish

from chatbx_server.xmpp.stanzas import StreamError

PARSE_CHUNK = 4096
#: what may follow the end event of the last stanza for the parser to hold
#: nothing: its end tag (expat reports an end tag's event where the tag
#: starts, a self-closing tag's where it ends) and spaces
_CLEAN_TAIL = re.compile(rb"(?:</[^<>]*>)?\s*")


def _restricted(*args: Any) -> NoReturn:
    raise StreamError("restricted-xml")


def _ignore(*args: Any) -> None:
    """The DocumentStartEvent of a primed parser's synthetic header."""


def _quote(value: str) -> str:
    return "'" + (value.replace("&", "&amp;").replace("<", "&lt;")
                  .replace("'", "&apos;").replace('"', "&quot;")) + "'"


class SafeElementStream(domish.ExpatElementStream):
    """domish's expat stream with XMPP's restrictions and our limits."""

    def __init__(self, max_stanza_size: int, max_depth: int, max_attributes: int) -> None:
        super().__init__()
        self.maxStanzaSize = max_stanza_size
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self.depth = 0
        self.stanza_start = 0
        #: bytes given to the current expat parser; the byte index of the
        #: end event of the last stanza; whether the parser holds nothing
        #: but the stream's namespace context (see suspend)
        self.fed = 0
        self.stanza_end = -1
        self.clean = False
        #: the stream header to prime a new parser with, once known
        self._header: Optional[bytes] = None
        self._install(self.parser)

    def _install(self, p: Any) -> None:
        # Module-level functions, not bound methods: one object each for
        # the whole process instead of ten per connection.
        p.CommentHandler = _restricted
        p.ProcessingInstructionHandler = _restricted
        p.StartDoctypeDeclHandler = _restricted
        p.EntityDeclHandler = _restricted
        p.UnparsedEntityDeclHandler = _restricted
        p.NotationDeclHandler = _restricted
        p.ElementDeclHandler = _restricted
        p.AttlistDeclHandler = _restricted
        p.SkippedEntityHandler = _restricted
        p.ExternalEntityRefHandler = _restricted

    # -- idle connections ----------------------------------------------------
    def suspend(self) -> bool:
        """Drop the expat parser if it holds nothing but the stream's
        namespace context; returns whether it did."""
        if not self.clean or self._header is None or self.parser is None:
            return False
        self.parser = None  # type: ignore[assignment]  # domish types it as always set
        return True

    @property
    def suspended(self) -> bool:
        return self.parser is None

    def _revive(self) -> None:
        """A new parser, inside a stream header with the same namespaces."""
        assert self._header is not None
        p = pyexpat.ParserCreate("UTF-8", " ")
        p.StartElementHandler = self._onStartElement
        p.EndElementHandler = self._onEndElement
        p.CharacterDataHandler = self._onCdata
        p.StartNamespaceDeclHandler = self._onStartNamespace
        p.EndNamespaceDeclHandler = self._onEndNamespace
        self._install(p)
        self.parser = p
        self.documentStarted = 0
        self.depth = 0
        self.defaultNsStack = [""]
        self.localPrefixes = {}
        self.currElem = None
        started = self.DocumentStartEvent
        self.DocumentStartEvent = _ignore
        try:
            p.Parse(self._header)
        finally:
            self.DocumentStartEvent = started
        self.fed = len(self._header)
        self.stanza_end = -1
        self.stanzaSize = 0
        self.elementCount = 0

    def _remember_header(self, name: str) -> None:
        """At the root element: the header a new parser will be primed with
        (its qualified name, so the closing tag still matches)."""
        uri, _, local = name.rpartition(" ")
        prefix = next((p for p, u in self.localPrefixes.items() if u == uri), None)
        if prefix is None or not uri:
            return  # not reproducible (no prefix): this stream keeps its parser
        attrs = [f"xmlns:{p}={_quote(u)}" for p, u in self.localPrefixes.items()]
        default = self.defaultNsStack[-1]
        if default:
            attrs.append(f"xmlns={_quote(default)}")
        self._header = f"<{prefix}:{local} {' '.join(attrs)}>".encode()

    def parse(self, buffer: bytes) -> None:
        if self.parser is None:
            self._revive()
        begin = self.fed
        self.fed = begin + len(buffer)
        try:
            # Small pieces: domish checks its byte count after each Parse()
            # call, so an oversized start tag (a self-closing stanza with a
            # huge attribute) is caught before it completes.
            for start in range(0, len(buffer), PARSE_CHUNK):
                super().parse(buffer[start:start + PARSE_CHUNK])
        except domish.ParserError as exc:
            if "Maximum stanza size" in str(exc) or "Maximum element count" in str(exc):
                raise StreamError("policy-violation", "stanza too large") from None
            raise StreamError("not-well-formed") from None
        # Between stanzas with nothing half-read? (A '>' inside an unfinished
        # attribute value cannot pass: the tail must be a whole end tag.)
        if self.depth != 1 or self.currElem is not None:
            self.clean = False
        elif self.stanza_end >= begin:
            self.clean = _CLEAN_TAIL.fullmatch(buffer, self.stanza_end - begin) is not None
        else:
            self.clean = self.clean and not buffer.strip()

    def _check_size(self) -> None:
        # domish checks the size only after Parse() returns, and resets it
        # when a stanza completes: a whole oversized stanza arriving in one
        # read (TLS hands over many records at once) would pass. Measure
        # the stanza's bytes while it is parsed instead.
        if self.depth >= 2 and self.parser.CurrentByteIndex - self.stanza_start > self.maxStanzaSize:
            raise StreamError("policy-violation", "stanza too large")

    def _onStartElement(self, name: str, attrs: dict) -> None:
        self.depth += 1
        if self.depth == 2:
            self.stanza_start = self.parser.CurrentByteIndex
        else:
            self._check_size()
            if self.depth == 1:
                self._remember_header(name)
        if self.depth > self.max_depth:
            raise StreamError("policy-violation", "elements nested too deeply")
        if len(attrs) > self.max_attributes:
            raise StreamError("policy-violation", "too many attributes")
        super()._onStartElement(name, attrs)

    def _onEndElement(self, name: str) -> None:
        self._check_size()
        if self.depth == 2:
            self.stanza_end = self.parser.CurrentByteIndex
        self.depth -= 1
        super()._onEndElement(name)

    def _onCdata(self, data: str) -> None:
        self._check_size()
        super()._onCdata(data)
