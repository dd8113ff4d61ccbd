"""Writing elements into an XML stream (RFC 6120 §4.7, §4.8.5, §4.9).

Every stream type (c2s now; s2s and components later) writes through one
:class:`StreamSerializer`, which knows what the stream header declared:
the default namespace (``jabber:client``, ``jabber:server``) and the
``stream:`` prefix. So stream-level elements go out as ``<stream:features>``
and ``<stream:error>``, and stanzas in the stream's default namespace carry
no ``xmlns`` (RFC 6120 §4.8.5 and Appendix A). ``Element.toXml()`` knows
neither and writes ``<features xmlns='http://etherx.jabber.org/streams'>``,
which some clients (loudmouth, hence mcabber) do not accept.

Stanzas are written in the stream's own namespace whatever namespace they
were built or parsed in: ``jabber:client``, ``jabber:server``, none, or the
empty namespace all mean "the stream's content namespace", as a stanza
routed from an s2s stream to a client must change namespace (§4.8.3).

This is the hot path (every stanza to every client), so the common shapes
(no namespace prefixes declared on the element, ``xml:lang`` the only
qualified attribute) are written by a small loop here; anything unusual is
handed to domish's serializer with the stream's scope.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns

XML_NS = "http://www.w3.org/XML/1998/namespace"

#: namespaces that mean "the stream's default namespace" for a stanza
CONTENT_NAMESPACES = frozenset((None, "", ns.CLIENT, ns.SERVER))

_SerializedXML = domish.SerializedXML


def escape_text(text: str) -> str:
    """Character data (XML 1.0 §2.4)."""
    # Most text needs nothing: 'in' tests are cheaper than replace() calls.
    if "&" in text or "<" in text or ">" in text:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def escape_attr(value: str) -> str:
    """An attribute value written between single quotes."""
    if "&" in value or "<" in value or ">" in value or "'" in value or '"' in value:
        return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                .replace("'", "&apos;").replace('"', "&quot;"))
    return value


class StreamSerializer:
    """Serializes elements as they appear inside one kind of stream.

    Stateless once built: one instance per stream type is shared by every
    connection of that type.

    Args:
        default_ns: the stream's default namespace (``jabber:client``).
        prefixes: namespace -> prefix declared on the stream header; the
            streams namespace must be among them (default ``stream``).
    """

    __slots__ = ("default_ns", "prefixes", "footer", "_scope", "_declarations")

    def __init__(self, default_ns: str, prefixes: Optional[Mapping[str, str]] = None) -> None:
        self.default_ns = default_ns
        self.prefixes: dict[str, str] = dict(prefixes or {ns.STREAMS: "stream"})
        stream_prefix = self.prefixes[ns.STREAMS]
        #: what closes the stream (RFC 6120 §4.4)
        self.footer = f"</{stream_prefix}:stream>"
        self._scope = [tuple(self.prefixes.values())]
        self._declarations = "".join(
            f" xmlns:{prefix}='{escape_attr(uri)}'" for uri, prefix in self.prefixes.items())

    def header(self, stream_id: str, from_: Optional[str], to: Optional[str] = None,
               version: Optional[str] = "1.0", lang: Optional[str] = "en") -> str:
        """The XML declaration and the opening stream tag (RFC 6120 §4.7).

        Attribute values are escaped: ``to`` echoes what the peer sent.
        """
        out = [f"<?xml version='1.0'?><{self.prefixes[ns.STREAMS]}:stream "
               f"xmlns='{escape_attr(self.default_ns)}'{self._declarations}"]
        for name, value in (("from", from_), ("to", to), ("id", stream_id),
                            ("version", version), ("xml:lang", lang)):
            if value:
                out.append(f" {name}='{escape_attr(value)}'")
        out.append(">")
        return "".join(out)

    def remember(self, element: domish.Element, text: str) -> None:
        """Record ``text`` as ``element``'s serialization in this stream.

        For a caller that built the text already (the archive serializes
        every archived message once, and the delivered copy is that text
        plus the ``<stanza-id/>``): :meth:`encode` then returns it without
        walking the element again, for every resource and every resend
        from the XEP-0198 queue. The cache is checked against the element's
        attributes and its list of children, so a handler that changes
        those later (adds a ``<delay/>``, rewrites 'to') gets a fresh
        serialization; changes deeper down (inside a child) must not be
        made to an element after this call.
        """
        element._wire = (self, text.encode("utf-8"), tuple(element.children),  # type: ignore[attr-defined]
                         dict(element.attributes))

    def encode(self, element: domish.Element) -> bytes:
        """The element as written at the top level of this stream, UTF-8
        (what :meth:`remember` recorded, when still valid)."""
        cached = element.__dict__.get("_wire")
        if (cached is not None and cached[0] is self and cached[3] == element.attributes
                and cached[2] == tuple(element.children)):
            return cached[1]
        return self.serialize(element).encode("utf-8")

    def serialize(self, element: domish.Element) -> str:
        """The element as written at the top level of this stream."""
        out: list[str] = []
        default = self.default_ns
        self._write(out.append, element, default, default)
        return "".join(out)

    def _write(self, write: Callable[[str], None], elem: domish.Element,
               inherited: Optional[str], wire: Optional[str]) -> None:
        """Write ``elem``.

        Args:
            inherited: the namespace an element without one is in (domish's
                rule: its parent's ``defaultUri``).
            wire: the default namespace in effect on the wire at this point.
        """
        uri = elem.uri
        if uri is None:
            uri = inherited
        default = elem.defaultUri
        if default is None:
            default = inherited
        prefix = self.prefixes.get(uri) if uri else None
        if elem.localPrefixes or (prefix is None and default != uri):
            write(self._fallback(elem, uri, wire))
            return
        name = elem.name
        if prefix is not None:
            # e.g. stream:features; the prefix is declared by the header and
            # the default namespace on the wire does not change.
            tag = f"{prefix}:{name}"
            write("<" + tag)
        elif uri == wire or (wire == self.default_ns and uri in CONTENT_NAMESPACES):
            tag = name
            write("<" + name)
        else:
            tag = name
            write(f"<{name} xmlns='{escape_attr(uri or '')}'")
            wire = uri
        attributes = elem.attributes
        if attributes:
            counter = 0
            for key, value in attributes.items():
                if key.__class__ is tuple:
                    attr_uri, attr_name = key
                    if attr_uri == XML_NS:
                        write(f" xml:{attr_name}='{escape_attr(value)}'")
                        continue
                    attr_prefix = self.prefixes.get(attr_uri)
                    if attr_prefix is None:
                        # Declared on this element only: no scope to track.
                        attr_prefix = f"xa{counter}"
                        counter += 1
                        write(f" xmlns:{attr_prefix}='{escape_attr(attr_uri)}'")
                    write(f" {attr_prefix}:{attr_name}='{escape_attr(value)}'")
                else:
                    write(f" {key}='{escape_attr(value)}'")
        children = elem.children
        if not children:
            write("/>")
            return
        write(">")
        for child in children:
            if child.__class__ is str:
                write(escape_text(child))
            elif isinstance(child, _SerializedXML):
                write(child)
            elif isinstance(child, str):
                write(escape_text(child))
            else:
                self._write(write, child, default, wire)
        write(f"</{tag}>")

    def _fallback(self, elem: domish.Element, uri: Optional[str], wire: Optional[str]) -> str:
        """Namespace prefixes declared on the element: domish's serializer,
        told what the stream already has in scope."""
        if wire == self.default_ns and uri in CONTENT_NAMESPACES:
            wire = uri  # the stanza's own namespace is the stream's
        return elem.toXml(prefixes=self.prefixes, prefixesInScope=self._scope, defaultUri=wire)


#: client streams (RFC 6120 §4.8.3)
CLIENT_STREAMS = StreamSerializer(ns.CLIENT)
#: server-to-server streams
SERVER_STREAMS = StreamSerializer(ns.SERVER)


class Addressed:
    """One stanza sent to many recipients: the copies differ only in 'to'.

    A group chat message or presence goes to every occupant as its own
    element (each is routed, may be queued for XEP-0198, may go to another
    server). Serializing each copy would walk the same tree once per
    recipient; here the stanza is serialized once for client streams with
    a marker as 'to', and each copy gets its bytes as the text around the
    marker with its own 'to' in between, recorded as :meth:`StreamSerializer.remember`
    does (so the same cache checks apply: a copy changed later, or written
    to another kind of stream, is serialized afresh).

    The copies share the stanza's children, which must not be changed
    afterwards (adding or removing a child of a copy is fine).
    """

    __slots__ = ("stanza", "serializer", "_head", "_tail")

    #: cannot occur in XML (Char, XML 1.0 §2.2), so not in any real value
    MARK = "\x00to\x00"

    def __init__(self, stanza: domish.Element, serializer: StreamSerializer = CLIENT_STREAMS) -> None:
        self.stanza = stanza
        self.serializer = serializer
        self._head: Optional[bytes] = None
        self._tail = b""
        text = serializer.serialize(self._copy(self.MARK))
        parts = text.split(self.MARK)
        if len(parts) == 2:
            self._head, self._tail = parts[0].encode("utf-8"), parts[1].encode("utf-8")

    def _copy(self, to: str) -> domish.Element:
        stanza = self.stanza
        el = domish.Element((stanza.uri, stanza.name), defaultUri=stanza.defaultUri)
        attributes = dict(stanza.attributes)
        attributes["to"] = to
        el.attributes = attributes
        el.children = list(stanza.children)
        return el

    def copy(self, to: str) -> domish.Element:
        """The stanza addressed to ``to``, its client-stream bytes ready."""
        el = self._copy(to)
        head = self._head
        if head is not None:
            el._wire = (self.serializer,  # type: ignore[attr-defined]
                        head + escape_attr(to).encode("utf-8") + self._tail,
                        tuple(el.children), dict(el.attributes))
        return el
