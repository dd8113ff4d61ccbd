"""External service discovery (XEP-0215) and the outage status URL
(XEP-0455) against the real server, asked by slixmpp: STUN/TURN services
with TURN REST API credentials that coturn's use-auth-secret accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from conftest import run, slix_close, slix_login

pytestmark = pytest.mark.integration

NS = "urn:xmpp:extdisco:2"
SECRET = "coturn-static-auth-secret"
CONFIG = f"""
[modules.extdisco]
credentials_lifetime = 600
[[modules.extdisco.services]]
type = "stun"
host = "turn.localhost"
port = 3478
transport = "udp"
[[modules.extdisco.services]]
type = "turn"
host = "turn.localhost"
port = 3478
transport = "udp"
secret = "{SECRET}"
[modules.outage_status]
urls = ["https://status.example.org/chatbx.json"]
"""


async def iq_get(client: Any, payload: str) -> Any:
    """A raw IQ get to the account's server; the result's payload (ElementTree)."""
    from slixmpp.xmlstream import ET

    iq = client.Iq()
    iq["type"] = "get"
    iq["to"] = client.boundjid.host
    iq.append(ET.fromstring(payload))
    result = await iq.send(timeout=10)
    return result.xml[0]


def test_turn_credentials_and_status_url(chatbx_server: Any) -> None:
    """alice gets the STUN and TURN services; the TURN username is
    '<expiry>:alice@localhost' with the HMAC-SHA1 password coturn computes
    from the shared secret, expiring in credentials_lifetime; a credentials
    request answers the same; the server's disco#info names the status URL."""
    server = chatbx_server(extra_config=CONFIG)

    async def scenario() -> None:
        alice = await slix_login(server, "alice@localhost/phone")
        alice.register_plugin("xep_0030")
        alice.register_plugin("xep_0455")
        try:
            info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=10)
            assert NS in info["disco_info"]["features"]
            services = await iq_get(alice, f"<services xmlns='{NS}'/>")
            got = [dict(s.attrib) for s in services]
            assert [(s["type"], s["host"], s["port"], s["transport"]) for s in got] == [
                ("stun", "turn.localhost", "3478", "udp"), ("turn", "turn.localhost", "3478", "udp")]
            turn = got[1]
            expiry, user = turn["username"].split(":", 1)
            assert user == "alice@localhost" and 590 <= int(expiry) - time.time() <= 610
            digest = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
            assert turn["password"] == base64.b64encode(digest).decode()
            expires = datetime.strptime(turn["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            assert int(expires.timestamp()) == int(expiry)
            credentials = await iq_get(alice, f"<credentials xmlns='{NS}'>"
                                              f"<service host='turn.localhost' type='turn'/></credentials>")
            [again] = [dict(s.attrib) for s in credentials]
            assert again["username"].endswith(":alice@localhost") and again["password"]
            urls = await alice.plugin["xep_0455"].get_external_status_addresses(timeout=10)
            assert urls == ["https://status.example.org/chatbx.json"]
        finally:
            await slix_close(alice)

    run(scenario())
