"""RFC 7395 framing: what the WebSocket stream writes and how <open/> is read."""

from __future__ import annotations

from twisted.words.xish import domish

from chatbx_server.http.websocket import FRAMING, FRAMING_NS, stream_header
from chatbx_server.xmpp import ns
from tests.unit.fakes import stanza


def test_header_footer_are_open_and_close() -> None:
    """The stream header is <open/> and the footer <close/>, both in the framing namespace (§3.3.2)."""
    header = FRAMING.header("id1", "localhost", None)
    assert header == (f"<open xmlns='{FRAMING_NS}' from='localhost' id='id1' version='1.0' "
                      "xml:lang='en'/>")
    assert FRAMING.footer == f"<close xmlns='{FRAMING_NS}'/>"


def test_elements_are_standalone_documents() -> None:
    """Every element declares its namespaces: stanzas jabber:client, stream
    features the stream prefix (§3.3.3), since no header is in scope."""
    features = domish.Element((ns.STREAMS, "features"))
    features.addElement((ns.BIND, "bind"))
    text = FRAMING.serialize(features)
    assert text.startswith(f"<stream:features xmlns:stream='{ns.STREAMS}'>")
    message = stanza("<message to='a@b'><body>hi</body></message>")
    assert FRAMING.serialize(message) == "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>"


def test_open_becomes_stream_header() -> None:
    """An <open/>'s to/version become the header the c2s parser expects, escaped."""
    root = domish.Element((FRAMING_NS, "open"))
    root["to"], root["version"] = "local'host", "1.0"
    assert stream_header(root) == (f"<stream:stream xmlns='jabber:client' xmlns:stream='{ns.STREAMS}'"
                                   " to='local&apos;host' version='1.0'>").encode()
