"""BOSH (XEP-0124/0206) against the real server: a raw BOSH client logs in
with SASL, binds and chats with a TCP slixmpp client."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from conftest import Inbox, run, slix_close, slix_login
from test_http_upload import fetch

pytestmark = pytest.mark.integration

BIND = "http://jabber.org/protocol/httpbind"


class Bosh:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.rid = 4000
        self.sid = ""

    async def post(self, inner: str = "", **attrs: str) -> str:
        self.rid += 1
        extra = "".join(f" {k.replace('_', ':')}='{v}'" for k, v in attrs.items())
        sid = f" sid='{self.sid}'" if self.sid else ""
        body = (f"<body xmlns='{BIND}' xmlns:xmpp='urn:xmpp:xbosh' rid='{self.rid}'{sid}{extra}>"
                f"{inner}</body>").encode()
        code, _, data = await asyncio.to_thread(
            fetch, self.server, "POST", "https://localhost/http-bind", body,
            {"Content-Type": "text/xml; charset=utf-8"})
        assert code == 200, data
        return data.decode()

    async def until(self, needle: str, tries: int = 6) -> str:
        for _ in range(tries):
            got = await self.post()
            if needle in got:
                return got
        raise AssertionError(f"no {needle!r} in BOSH responses")


def test_bosh_client_chats_with_tcp_client(chatbx_server: Any) -> None:
    """Session creation announces SASL; PLAIN, restart and bind work; a
    message goes each way between the BOSH and the TCP client; terminate ends it."""
    server = chatbx_server()

    async def scenario() -> None:
        bosh = Bosh(server)
        created = await bosh.post(to="localhost", wait="2", hold="1", xmpp_version="1.0",
                                  xml_lang="en")
        assert "authid=" in created and "PLAIN" in created and "requests='2'" in created
        bosh.sid = created.split("sid='")[1].split("'")[0]
        token = base64.b64encode(b"\0alice\0alice-pw").decode()
        got = await bosh.post(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                              f"mechanism='PLAIN'>{token}</auth>")
        if "success" not in got:
            got = await bosh.until("success")
        got = await bosh.post(to="localhost", xmpp_restart="true")
        assert "urn:ietf:params:xml:ns:xmpp-bind" in got
        got = await bosh.post("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:"
                              "params:xml:ns:xmpp-bind'><resource>bosh</resource></bind></iq>")
        assert "alice@localhost/bosh" in got
        await bosh.post("<presence xmlns='jabber:client'/>")
        bob = await slix_login(server, "bob@localhost/tcp")
        inbox = Inbox(bob, "message")
        try:
            bob.send_message(mto="alice@localhost/bosh", mbody="hello bosh", mtype="chat")
            got = await bosh.until("hello bosh")
            assert "from='bob@localhost/tcp'" in got
            await bosh.post("<message xmlns='jabber:client' to='bob@localhost/tcp' type='chat'>"
                            "<body>hello from bosh</body></message>")
            message = await inbox.wait(lambda m: m["body"] == "hello from bosh")
            assert message["from"] == "alice@localhost/bosh"
            got = await bosh.post(type="terminate")
            assert "type='terminate'" in got
            stale = await bosh.post()
            assert "item-not-found" in stale
        finally:
            await slix_close(bob)

    run(scenario())
