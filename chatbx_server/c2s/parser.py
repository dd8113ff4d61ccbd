"""An expat element stream that enforces RFC 6120 §11.1 and size limits.

XMPP forbids comments, processing instructions, DTDs and entity
declarations; anything else the parser accepts could be used to grow
memory or smuggle content, so they close the stream (``restricted-xml``).
Stanza size, nesting depth and attribute counts are bounded
(``policy-violation``).
"""

from __future__ import annotations

from typing import Any, NoReturn

from twisted.words.xish import domish

from chatbx_server.xmpp.stanzas import StreamError

PARSE_CHUNK = 4096


def _restricted(*args: Any) -> NoReturn:
    raise StreamError("restricted-xml")


class SafeElementStream(domish.ExpatElementStream):
    """domish's expat stream with XMPP's restrictions and our limits."""

    def __init__(self, max_stanza_size: int, max_depth: int, max_attributes: int) -> None:
        super().__init__()
        self.maxStanzaSize = max_stanza_size
        self.max_depth = max_depth
        self.max_attributes = max_attributes
        self.depth = 0
        self.stanza_start = 0
        # Module-level functions, not bound methods: one object each for
        # the whole process instead of ten per connection.
        p = self.parser
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

    def parse(self, buffer: bytes) -> None:
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
        if self.depth > self.max_depth:
            raise StreamError("policy-violation", "elements nested too deeply")
        if len(attrs) > self.max_attributes:
            raise StreamError("policy-violation", "too many attributes")
        super()._onStartElement(name, attrs)

    def _onEndElement(self, name: str) -> None:
        self._check_size()
        self.depth -= 1
        super()._onEndElement(name)

    def _onCdata(self, data: str) -> None:
        self._check_size()
        super()._onCdata(data)
