"""The stream serializer (RFC 6120 §4.8.5): elements written in the scope of
the stream header, checked as bytes and by parsing them back the way a
client does (a stream header, then the elements)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import CLIENT_STREAMS, SERVER_STREAMS, StreamSerializer
from chatbx_server.xmpp.stanzas import StreamError, error_reply, parse_stanza

FORWARD = "urn:xmpp:forward:0"


def parse_in_stream(serializer: StreamSerializer, xml: str) -> list[domish.Element]:
    """Parse ``xml`` after the serializer's own header, as a peer would."""
    out: list[domish.Element] = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = out.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(serializer.header("id1", "localhost").encode())
    parser.parse(xml.encode())
    return out


def tree(element: domish.Element, content_ns: str = ns.CLIENT) -> Any:
    """(namespace, name, attributes, children) with the stanza namespaces
    (none, jabber:client, jabber:server) written as ``content_ns``."""
    def walk(el: domish.Element, inherited: str) -> Any:
        uri = el.uri if el.uri is not None else inherited
        if uri in (None, "", ns.CLIENT, ns.SERVER) and inherited == content_ns:
            uri = content_ns
        kids = []
        for c in el.children:
            kids.append(walk(c, uri) if isinstance(c, domish.Element) else str(c))
        return (uri, el.name, dict(el.attributes), kids)
    return walk(element, content_ns)


def round_trip(element: domish.Element, serializer: StreamSerializer = CLIENT_STREAMS) -> domish.Element:
    (parsed,) = parse_in_stream(serializer, serializer.serialize(element))
    return parsed


def test_stream_features_use_the_stream_prefix():
    """<stream:features> is written with the header's prefix and no namespace
    declaration of its own; its children keep theirs."""
    features = domish.Element((ns.STREAMS, "features"))
    features.addElement((ns.BIND, "bind"))
    features.addElement((ns.SESSION, "session")).addElement("optional")
    assert CLIENT_STREAMS.serialize(features) == (
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>")
    assert tree(round_trip(features)) == tree(features)


def test_stream_error_uses_the_stream_prefix():
    """<stream:error> with its condition and text in the stream-errors namespace."""
    error = StreamError("connection-timeout", "a < b").element()
    xml = CLIENT_STREAMS.serialize(error)
    assert xml == ("<stream:error><connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                   "<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>a &lt; b</text></stream:error>")
    assert tree(round_trip(error)) == tree(error)


@pytest.mark.parametrize("uri", [ns.CLIENT, None, "", ns.SERVER])
def test_stanza_namespace_is_the_streams(uri):
    """A stanza built in jabber:client, in no namespace, in the empty one, or
    coming from s2s (jabber:server) is written without xmlns on a client stream."""
    msg = domish.Element((uri, "message"))
    msg["to"] = "bob@localhost"
    msg.addElement("body", content="hi")
    assert CLIENT_STREAMS.serialize(msg) == "<message to='bob@localhost'><body>hi</body></message>"
    parsed = round_trip(msg)
    assert (parsed.uri, parsed.body.uri) == (ns.CLIENT, ns.CLIENT)


def test_server_stream_writes_client_stanzas_in_its_namespace():
    """On an s2s stream a stanza a client sent (jabber:client) needs no xmlns
    either: on the wire it is in jabber:server (RFC 6120 §4.8.3)."""
    msg = parse_stanza("<message to='x@remote.example'><body>hi</body></message>")
    assert SERVER_STREAMS.serialize(msg) == "<message to='x@remote.example'><body>hi</body></message>"
    parsed = round_trip(msg, SERVER_STREAMS)
    assert (parsed.uri, parsed.body.uri) == (ns.SERVER, ns.SERVER)


def test_children_inherit_a_default_namespace():
    """<query xmlns='jabber:iq:roster'><item/></query>: the item inherits the
    query's namespace and is written without a declaration."""
    iq = domish.Element((ns.CLIENT, "iq"))
    iq["type"] = "set"
    query = iq.addElement((ns.ROSTER, "query"))
    item = query.addElement("item")
    item["jid"] = "bob@localhost"
    item.addElement("group", content="Friends")
    assert CLIENT_STREAMS.serialize(iq) == (
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'>"
        "<group>Friends</group></item></query></iq>")
    parsed = round_trip(iq)
    assert parsed.query.item.group.uri == ns.ROSTER
    assert tree(parsed) == tree(iq)


def test_unqualified_child_of_a_foreign_element_stays_in_its_namespace():
    """An element built without a namespace under a payload belongs to the
    payload's namespace (domish's inheritance), and is parsed back so."""
    query = domish.Element((ns.ROSTER, "query"))
    query.addChild(domish.Element((None, "item")))
    iq = domish.Element((ns.CLIENT, "iq"))
    iq.addChild(query)
    assert round_trip(iq).query.item.uri == ns.ROSTER


def test_empty_namespace_under_a_payload_is_declared():
    """An element explicitly in the empty namespace inside a payload gets xmlns=''."""
    query = domish.Element((ns.ROSTER, "query"))
    query.addChild(domish.Element(("", "odd")))
    iq = domish.Element((ns.CLIENT, "iq"))
    iq.addChild(query)
    assert "<odd xmlns=''/>" in CLIENT_STREAMS.serialize(iq)
    assert round_trip(iq).query.odd.uri == ""


def test_forwarded_stanza_keeps_its_namespace():
    """A jabber:client message inside a foreign payload (XEP-0297) must declare
    jabber:client again; its own children then need nothing."""
    outer = domish.Element((ns.CLIENT, "message"))
    fwd = outer.addElement((FORWARD, "forwarded"))
    inner = parse_stanza("<message from='a@localhost/x'><body>inner</body></message>")
    fwd.addChild(inner)
    xml = CLIENT_STREAMS.serialize(outer)
    assert xml == ("<message><forwarded xmlns='urn:xmpp:forward:0'>"
                   "<message xmlns='jabber:client' from='a@localhost/x'><body>inner</body></message>"
                   "</forwarded></message>")
    parsed = round_trip(outer)
    assert parsed.forwarded.message.uri == ns.CLIENT and parsed.forwarded.message.body.uri == ns.CLIENT


def test_attributes_and_text_are_escaped():
    """Quotes, ampersands and angle brackets in attributes and text survive the round trip."""
    msg = domish.Element((ns.CLIENT, "message"))
    msg["id"] = "a'b\"c<&>"
    msg.addElement("body", content="1 < 2 & 3 > 2 'q' \"d\"")
    parsed = round_trip(msg)
    assert parsed["id"] == "a'b\"c<&>" and str(parsed.body) == "1 < 2 & 3 > 2 'q' \"d\""


def test_xml_lang_and_other_qualified_attributes():
    """xml:lang uses the predeclared xml prefix; another qualified attribute
    declares its prefix on the element."""
    msg = domish.Element((ns.CLIENT, "message"))
    msg[("http://www.w3.org/XML/1998/namespace", "lang")] = "de"
    msg[("urn:example:a", "flag")] = "1"
    xml = CLIENT_STREAMS.serialize(msg)
    assert xml.startswith("<message xml:lang='de'")
    parsed = round_trip(msg)
    assert parsed.attributes == msg.attributes


def test_parsed_stanza_with_prefixes_round_trips():
    """A stanza that declared its own prefixes (rare; domish's serializer
    handles it) keeps its structure and writes no jabber:client xmlns."""
    stanza = parse_stanza("<message xmlns:x='urn:example:x' to='bob@localhost'>"
                          "<x:data a='1'><x:item/></x:data><body>b</body></message>")
    xml = CLIENT_STREAMS.serialize(stanza)
    assert "jabber:client" not in xml
    parsed = round_trip(stanza)
    assert tree(parsed) == tree(stanza)


def test_serialized_xml_children_are_written_verbatim():
    """domish.SerializedXML children (pre-serialized XML) are not escaped."""
    msg = domish.Element((ns.CLIENT, "message"))
    msg.addChild(domish.SerializedXML("<body>raw</body>"))
    assert CLIENT_STREAMS.serialize(msg) == "<message><body>raw</body></message>"


def test_error_reply_round_trips():
    """An error reply (stanza namespace, error payload, xml:lang text) keeps its shape."""
    original = parse_stanza("<iq type='get' id='1' to='localhost' from='a@localhost/r'>"
                            "<query xmlns='urn:example:q'/></iq>")
    reply = error_reply(original, "service-unavailable", text="nope")
    parsed = round_trip(reply)
    assert tree(parsed) == tree(reply)
    assert "jabber:client" not in CLIENT_STREAMS.serialize(reply)


def test_header_escapes_and_declares_the_prefix():
    """The header declares the default namespace and the stream prefix the
    serializer writes with, and escapes attribute values (to echoes the peer)."""
    header = CLIENT_STREAMS.header("abc", "localhost", "a'b@localhost")
    assert header.startswith("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                             "xmlns:stream='http://etherx.jabber.org/streams'")
    roots: list[domish.Element] = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = roots.append
    parser.ElementEvent = lambda e: None
    parser.DocumentEndEvent = lambda: None
    parser.parse(header.encode())
    assert roots[0]["to"] == "a'b@localhost" and roots[0]["from"] == "localhost"
    assert roots[0]["id"] == "abc" and roots[0]["version"] == "1.0"
    assert CLIENT_STREAMS.footer == "</stream:stream>"
    assert "to=" not in CLIENT_STREAMS.header("abc", "localhost")


def test_remembered_text_is_written_while_the_element_is_unchanged():
    """encode() returns the text remember() recorded (no second walk), and
    serializes afresh once the attributes or the children list changed, or
    for another stream type."""
    msg = parse_stanza("<message to='bob@localhost' type='chat'><body>hi</body></message>")
    CLIENT_STREAMS.remember(msg, "<message remembered='1'/>")
    assert CLIENT_STREAMS.encode(msg) == b"<message remembered='1'/>"
    assert SERVER_STREAMS.encode(msg).startswith(b"<message to='bob@localhost'")
    msg["to"] = "carol@localhost"
    assert CLIENT_STREAMS.encode(msg) == CLIENT_STREAMS.serialize(msg).encode()
    CLIENT_STREAMS.remember(msg, "<message remembered='2'/>")
    msg.addElement(("urn:xmpp:delay", "delay"))
    assert b"urn:xmpp:delay" in CLIENT_STREAMS.encode(msg)
    CLIENT_STREAMS.remember(msg, "<message remembered='3'/>")
    body = msg.children[0]
    msg.children[0] = domish.Element((None, "subject"))
    assert b"<subject/>" in CLIENT_STREAMS.encode(msg)
    msg.children[0] = body  # back to what was remembered
    assert CLIENT_STREAMS.encode(msg) == b"<message remembered='3'/>"


def test_unremembered_elements_are_serialized():
    """encode() of an ordinary element is serialize() as UTF-8."""
    msg = parse_stanza("<message to='bob@localhost'><body>é</body></message>")
    assert CLIENT_STREAMS.encode(msg) == CLIENT_STREAMS.serialize(msg).encode("utf-8")
