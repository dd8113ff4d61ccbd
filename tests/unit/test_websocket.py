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


def _client_frame(payload: bytes, first: int = 0x81, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out (masked unless mask is empty)."""
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
    return head + mask + body


def test_short_path_takes_complete_masked_text_frames() -> None:
    """Several complete text frames (7-bit and 16-bit lengths) in one read
    are unmasked in order; the byte count says where they end."""
    from chatbx_server.http.websocket import split_text_frames

    small, medium = b"<message/>", b"<message><body>" + b"x" * 300 + b"</body></message>"
    data = _client_frame(small) + _client_frame(medium, mask=b"\xff\x00\xa5\x5a")
    payloads, used = split_text_frames(data, 65536)
    assert payloads == [small, medium] and used == len(data)


def test_short_path_leaves_everything_else_to_autobahn() -> None:
    """It stops before a partial frame, a control (close/ping) frame, a
    fragment, a binary or unmasked frame, RSV bits, a 64-bit length and a
    frame over the limit: those bytes are autobahn's."""
    from chatbx_server.http.websocket import split_text_frames

    good = _client_frame(b"<iq/>")
    for other in (_client_frame(b"<iq/>")[:-1], _client_frame(b"\x03\xe8", first=0x88),
                  _client_frame(b"", first=0x89), _client_frame(b"<mess", first=0x01),
                  _client_frame(b"\x00", first=0x82), _client_frame(b"<iq/>", mask=b""),
                  _client_frame(b"<iq/>", first=0xC1), _client_frame(b"x" * 70000),
                  _client_frame(b"x" * 200)):
        payloads, used = split_text_frames(good + other, 100)
        assert payloads == [b"<iq/>"] and used == len(good), other[:2]


def test_server_frames_are_unmasked_text() -> None:
    """Outgoing stanzas: FIN + text, no mask, 7/16/64-bit lengths."""
    from chatbx_server.http.websocket import text_frame, unmask

    assert text_frame(b"<a/>") == b"\x81\x04<a/>"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert unmask(unmask(b"hello world", b"abcd"), b"abcd") == b"hello world"
