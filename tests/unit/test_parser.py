"""The restricted XML parser of client streams (RFC 6120 §11.1) and its limits."""

from __future__ import annotations

import pytest

from chatbx_server.c2s.parser import SafeElementStream
from chatbx_server.xmpp.stanzas import StreamError

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


class Recorder:
    def __init__(self, max_size: int = 10_000, max_depth: int = 8, max_attributes: int = 8) -> None:
        self.parser = SafeElementStream(max_size, max_depth, max_attributes)
        self.roots: list = []
        self.elements: list = []
        self.ended = False
        self.parser.DocumentStartEvent = self.roots.append
        self.parser.ElementEvent = self.elements.append
        self.parser.DocumentEndEvent = lambda: setattr(self, "ended", True)

    def feed(self, data: bytes) -> None:
        self.parser.parse(data)


def condition(data: bytes, **limits) -> str:
    rec = Recorder(**limits)
    with pytest.raises(StreamError) as err:
        rec.feed(data)
    return err.value.condition


def test_normal_stanzas_pass():
    """Header, stanzas (with namespaced children, entities, CDATA) and the end
    of the stream come out as events."""
    rec = Recorder()
    rec.feed(HEADER)
    rec.feed(b"<message to='a@localhost' type='chat'><body>hi &amp; &lt;3 &#x263A;</body></message>")
    rec.feed(b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq><presence/>")
    rec.feed(b"<message><body><![CDATA[<x>]]></body></message>")
    rec.feed(b"</stream:stream>")
    assert rec.roots[0].name == "stream"
    assert [e.name for e in rec.elements] == ["message", "iq", "presence", "message"]
    assert str(rec.elements[0].body) == "hi & <3 \u263a"
    assert rec.elements[0].uri == "jabber:client"
    assert rec.elements[1].firstChildElement().uri == "urn:xmpp:ping"
    assert str(rec.elements[3].body) == "<x>"
    assert rec.ended


def test_split_across_reads():
    """A stanza arriving one byte at a time is still parsed."""
    rec = Recorder()
    rec.feed(HEADER)
    for byte in b"<message><body>split</body></message>":
        rec.feed(bytes([byte]))
    assert str(rec.elements[0].body) == "split"


@pytest.mark.parametrize("payload", [
    b"<!-- a comment -->",
    b"<message><!-- inside --></message>",
    b"<?foo bar?>",
    b"<message><?pi data?></message>",
])
def test_comments_and_pis_are_restricted(payload):
    """Comments and processing instructions close the stream with restricted-xml."""
    rec = Recorder()
    rec.feed(HEADER)
    with pytest.raises(StreamError) as err:
        rec.feed(payload)
    assert err.value.condition == "restricted-xml"


@pytest.mark.parametrize("prolog", [
    b"<!DOCTYPE stream>",
    b"<!DOCTYPE s [<!ENTITY lol 'lol'>]>",
    b"<!DOCTYPE s [<!ENTITY % p 'x'>]>",
    b"<!DOCTYPE s SYSTEM 'file:///etc/passwd'>",
    b"<!-- before the stream -->",
])
def test_dtd_and_entity_declarations_are_restricted(prolog):
    """DTDs and entity declarations (billion laughs, XXE) are refused before they expand."""
    assert condition(b"<?xml version='1.0'?>" + prolog + HEADER[21:]) == "restricted-xml"


def test_billion_laughs_never_expands():
    """The classic entity bomb stops at the DOCTYPE, before any expansion."""
    bomb = (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
            + b"".join(b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                       for i in range(1, 10))
            + b"]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
            + b"<message><body>&lol9;</body></message>")
    assert condition(bomb) == "restricted-xml"


@pytest.mark.parametrize("payload", [
    b"<message><body>unclosed</message>",
    b"<message to='a' to='b'/>",
    b"<message><body>&undefined;</body></message>",
    b"<message>\x00</message>",
    b"<message><body>\xff\xfe</body></message>",
    b"<1message/>",
    b"<x:message/>",
])
def test_not_well_formed(payload):
    """Broken XML (mismatched tags, duplicate attributes, undefined entities,
    bad bytes, unbound prefixes) is not-well-formed."""
    rec = Recorder()
    rec.feed(HEADER)
    with pytest.raises(StreamError) as err:
        rec.feed(payload)
    assert err.value.condition == "not-well-formed"


def test_stanza_too_large():
    """A stanza growing past max_stanza_size across reads is policy-violation."""
    rec = Recorder(max_size=2000)
    rec.feed(HEADER)
    rec.feed(b"<message><body>")
    with pytest.raises(StreamError) as err:
        for _ in range(10):
            rec.feed(b"x" * 500)
    assert err.value.condition == "policy-violation"


def test_size_limit_is_per_stanza():
    """Many small stanzas adding up to more than the limit are fine."""
    rec = Recorder(max_size=2000)
    rec.feed(HEADER)
    for _ in range(20):
        rec.feed(b"<message><body>" + b"x" * 300 + b"</body></message>")
    assert len(rec.elements) == 20


def test_too_deep():
    """Nesting beyond max_depth (the stream element counts as one) is policy-violation."""
    ok = Recorder(max_depth=4)
    ok.feed(HEADER)
    ok.feed(b"<message><a><b/></a></message>")  # depth 4 with the stream
    assert len(ok.elements) == 1
    assert condition(HEADER + b"<message><a><b><c/></b></a></message>", max_depth=4) == "policy-violation"


def test_depth_recovers_after_each_stanza():
    """Depth is counted per open element, not accumulated across stanzas."""
    rec = Recorder(max_depth=3)
    rec.feed(HEADER)
    for _ in range(10):
        rec.feed(b"<message><body>x</body></message>")
    assert len(rec.elements) == 10


def test_too_many_attributes():
    """More attributes than max_attributes on one element is policy-violation."""
    attrs = b" ".join(b"a%d='x'" % i for i in range(9))
    assert condition(HEADER + b"<message " + attrs + b"/>", max_attributes=8) == "policy-violation"
    rec = Recorder(max_attributes=8)
    rec.feed(HEADER)
    rec.feed(b"<message " + b" ".join(b"a%d='x'" % i for i in range(8)) + b"/>")
    assert len(rec.elements) == 1


def test_whole_oversized_stanza_in_one_read():
    """A complete stanza over the limit that arrives in a single read is still refused."""
    stream = SafeElementStream(max_stanza_size=65536, max_depth=64, max_attributes=64)
    stream.DocumentStartEvent = lambda root: None
    got = []
    stream.ElementEvent = got.append
    stream.DocumentEndEvent = lambda: None
    body = "x" * 70000
    data = ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
            f"<message to='a@b'><body>{body}</body></message>").encode()
    with pytest.raises(StreamError) as exc:
        stream.parse(data)
    assert exc.value.condition == "policy-violation"
    assert got == []


def test_oversized_self_closing_stanza_in_one_read():
    """A huge attribute on a self-closing stanza is refused before it completes."""
    stream = SafeElementStream(max_stanza_size=65536, max_depth=64, max_attributes=64)
    stream.DocumentStartEvent = lambda root: None
    got = []
    stream.ElementEvent = got.append
    stream.DocumentEndEvent = lambda: None
    data = ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
            f"<presence status='{'y' * 70000}'/>").encode()
    with pytest.raises(StreamError) as exc:
        stream.parse(data)
    assert exc.value.condition == "policy-violation"
    assert got == []


# -- suspending the parser of an idle stream ---------------------------------------

def test_suspend_only_between_stanzas():
    """The parser may be dropped only when it holds nothing half-read: not
    before the first stanza, not inside a stanza or a start tag (even one
    whose unfinished attribute value ends with '>'), yes after a whole stanza
    and whitespace."""
    rec = Recorder()
    rec.feed(HEADER)
    assert rec.parser.suspend() is False  # no stanza yet: the header is all there is
    rec.feed(b"<presence/><message to='a@localhost'><body>x")
    assert rec.parser.suspend() is False
    rec.feed(b"</body></message>  ")
    assert rec.parser.clean
    rec.feed(b"<iq type='get' id='a>")  # '>' inside an unfinished attribute value
    assert rec.parser.suspend() is False
    rec.feed(b"b'><ping xmlns='urn:xmpp:ping'/></iq>\n")
    assert rec.parser.clean
    rec.feed(b"<r xmlns='urn:xmpp:sm:3'/><iq id='x/>")  # a new tag, unfinished, ending in '/>'
    assert rec.parser.suspend() is False
    rec.feed(b"'/>")
    assert rec.parser.suspend() is True and rec.parser.suspended
    assert [e.name for e in rec.elements] == ["presence", "message", "iq", "r", "iq"]
    assert rec.elements[2]["id"] == "a>b" and rec.elements[4]["id"] == "x/>"


def test_a_suspended_stream_parses_on_in_the_same_namespaces():
    """After suspension the next bytes build a new parser primed with the
    stream's namespaces: stanzas are jabber:client, a prefixed stream error
    is understood, </stream:stream> ends the stream; no second stream
    start is reported."""
    rec = Recorder()
    rec.feed(HEADER + b"<presence/>")
    assert rec.parser.suspend()
    rec.feed(b"<message type='chat'><body>after</body></message>")
    msg = rec.elements[-1]
    assert (msg.uri, msg.name, str(msg.body)) == ("jabber:client", "message", "after")
    assert rec.parser.suspend()
    rec.feed(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    assert (rec.elements[-1].uri, rec.elements[-1].name) == ("http://etherx.jabber.org/streams", "error")
    assert rec.parser.suspend()
    rec.feed(b"</stream:stream>")
    assert rec.ended and len(rec.roots) == 1


def test_limits_hold_after_revival():
    """A revived parser enforces the same limits (stanza size here)."""
    rec = Recorder(max_size=200)
    rec.feed(HEADER + b"<presence/>")
    assert rec.parser.suspend()
    with pytest.raises(StreamError) as err:
        rec.feed(b"<message><body>" + b"x" * 400 + b"</body></message>")
    assert err.value.condition == "policy-violation"
