"""XMPP over WebSocket (RFC 7395) against the real server: a raw WebSocket
client (``websockets``) logs in with SASL, binds and chats with a TCP
slixmpp client; /metrics answers and counts the messages."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from typing import Any

import pytest

from conftest import Inbox, run, slix_close, slix_login
from test_http_upload import fetch

pytestmark = pytest.mark.integration

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _recv(ws: Any, pattern: str, timeout: float = 10.0) -> str:
    """The next message matching ``pattern`` (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        message = await asyncio.wait_for(ws.recv(), max(left, 0.01))
        if re.search(pattern, message):
            return message


async def ws_login(server: Any, user: str, password: str, resource: str) -> Any:
    import websockets

    ws = await websockets.connect(f"wss://127.0.0.1:{server.http_port}/xmpp-websocket",
                                  subprotocols=["xmpp"], ssl=_context())
    assert ws.subprotocol == "xmpp"
    await ws.send(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    opened = await _recv(ws, "<open")
    assert FRAMING in opened and "from='localhost'" in opened
    features = await _recv(ws, "features")
    assert "xmlns:stream='http://etherx.jabber.org/streams'" in features
    assert "PLAIN" in features and "starttls" not in features
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    await ws.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    await _recv(ws, "<success")
    await ws.send(f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>")
    await _recv(ws, "<open")
    assert "urn:ietf:params:xml:ns:xmpp-bind" in await _recv(ws, "features")
    await ws.send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:"
                  f"xmpp-bind'><resource>{resource}</resource></bind></iq>")
    bound = await _recv(ws, "id='b1'")
    assert f"{user}@localhost/{resource}" in bound and "xmlns='jabber:client'" in bound
    await ws.send("<presence xmlns='jabber:client'/>")
    return ws


def test_websocket_client_chats_with_tcp_client(chatbx_server: Any) -> None:
    """A WebSocket client and a TCP client exchange messages both ways;
    <close/> is answered with <close/>; the metrics count the messages."""
    server = chatbx_server()

    async def scenario() -> None:
        ws = await ws_login(server, "alice", "alice-pw", "web")
        bob = await slix_login(server, "bob@localhost/tcp")
        inbox = Inbox(bob, "message")
        try:
            bob.send_message(mto="alice@localhost/web", mbody="hello websocket", mtype="chat")
            got = await _recv(ws, "hello websocket")
            assert "from='bob@localhost/tcp'" in got
            await ws.send("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'>"
                          "<body>hello tcp</body></message>")
            message = await inbox.wait(lambda m: m["body"] == "hello tcp")
            assert message["from"] == "alice@localhost/web"
            await ws.send(f"<close xmlns='{FRAMING}'/>")
            assert FRAMING in await _recv(ws, "<close")
        finally:
            await slix_close(bob)
            await ws.close()
        code, _, body = fetch(server, "GET", "https://localhost/metrics")
        assert code == 200
        match = re.search(rb'chatbx_stanzas_total\{direction="in",kind="message"\} (\d+)', body)
        assert match and float(match.group(1)) >= 2

    run(scenario())


def test_websocket_refuses_without_subprotocol_and_bad_framing(chatbx_server: Any) -> None:
    """No 'xmpp' subprotocol: the upgrade is refused; a stanza split over two
    messages closes the stream with a stream error."""
    import websockets

    server = chatbx_server()

    async def scenario() -> None:
        with pytest.raises(Exception):
            await websockets.connect(f"wss://127.0.0.1:{server.http_port}/xmpp-websocket",
                                     ssl=_context())
        ws = await ws_login(server, "carol", "carol-pw", "w")
        await ws.send("<message xmlns='jabber:client' to='bob@localhost'>")
        error = await _recv(ws, "error")
        assert "not-well-formed" in error
        await _recv(ws, "<close")
        await ws.close()

    run(scenario())
