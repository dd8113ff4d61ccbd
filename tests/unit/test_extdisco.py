"""XEP-0215 external service discovery: configured STUN/TURN services,
TURN REST API credentials (coturn use-auth-secret) that expire, only for
local users; and XEP-0455's status URLs in the server's disco#info."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from chatbx_server.config import ConfigError
from chatbx_server.features.extdisco import NS_EXTDISCO, turn_rest_credentials
from chatbx_server.features.outage_status import NS_SOS
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza

SERVICES = """
[modules]
enabled = ["message", "disco", "extdisco", "outage_status"]
[modules.extdisco]
credentials_lifetime = 3600
[[modules.extdisco.services]]
type = "stun"
host = "turn.example.org"
port = 3478
transport = "udp"
[[modules.extdisco.services]]
type = "turn"
host = "turn.example.org"
port = 3478
transport = "udp"
secret = "s3cret"
[[modules.extdisco.services]]
type = "turns"
host = "turn.example.org"
port = 5349
transport = "tcp"
secret = "s3cret"
name = "TURN over TLS"
[[modules.extdisco.services]]
type = "turn"
host = "legacy.example.org"
port = 3478
username = "u"
password = "p"
[modules.outage_status]
urls = ["https://status.example.org/chatbx.json"]
"""


def ask(server: Any, session: Any, xml: str) -> Any:
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    [reply] = session.take()
    return reply


def services_of(reply: Any) -> list[dict[str, str]]:
    assert reply["type"] == "result", reply.toXml()
    return [dict(s.attributes) for s in reply.firstChildElement().elements(NS_EXTDISCO, "service")]


def condition(reply: Any) -> str:
    error = next(c for c in reply.elements() if c.name == "error")
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def test_turn_rest_credentials_match_coturn_scheme() -> None:
    """username = "<expiry>:<user>", password = base64(HMAC-SHA1(secret, username))."""
    username, password = turn_rest_credentials("s3cret", "alice@localhost", 1700000000)
    assert username == "1700000000:alice@localhost"
    expected = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_all_services_with_expiring_credentials() -> None:
    """§3.1: every service; TURN with a secret gets per-user credentials
    valid for credentials_lifetime ('expires' in UTC, restricted); fixed
    credentials are passed on; STUN has none; the feature is in disco."""
    server = make_server(config_text=SERVICES)
    server.clock.advance(1700000000)
    alice = bind(server, "alice@localhost/phone")
    got = services_of(ask(server, alice, f"<iq type='get' id='e1' to='localhost'>"
                                         f"<services xmlns='{NS_EXTDISCO}'/></iq>"))
    assert [(s["type"], s["host"], s["port"], s.get("transport")) for s in got] == [
        ("stun", "turn.example.org", "3478", "udp"), ("turn", "turn.example.org", "3478", "udp"),
        ("turns", "turn.example.org", "5349", "tcp"), ("turn", "legacy.example.org", "3478", None)]
    stun, turn, turns, legacy = got
    assert "username" not in stun and "password" not in stun and "restricted" not in stun
    username, password = turn_rest_credentials("s3cret", "alice@localhost", 1700003600)
    assert (turn["username"], turn["password"]) == (username, password)
    assert turn["expires"] == "2023-11-14T23:13:20Z" and turn["restricted"] == "1"
    assert turns["name"] == "TURN over TLS" and turns["username"] == username
    assert (legacy["username"], legacy["password"]) == ("u", "p") and "expires" not in legacy
    info = ask(server, alice, f"<iq type='get' id='d1' to='localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    assert NS_EXTDISCO in [f["var"] for f in info.firstChildElement().elements(ns.DISCO_INFO, "feature")]


def test_services_of_one_type_and_credentials_change_with_time_and_user() -> None:
    """§3.2: type='turn' selects; later requests get a later expiry, and
    another user another username and password."""
    server = make_server(config_text=SERVICES)
    server.clock.advance(1700000000)
    alice = bind(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc")
    query = f"<iq type='get' id='e2' to='localhost'><services xmlns='{NS_EXTDISCO}' type='turn'/></iq>"
    reply = ask(server, alice, query)
    assert reply.firstChildElement()["type"] == "turn"
    first = services_of(reply)
    assert [s["host"] for s in first] == ["turn.example.org", "legacy.example.org"]
    server.clock.advance(60)
    later = services_of(ask(server, alice, query))[0]
    assert later["username"] == "1700003660:alice@localhost" != first[0]["username"]
    assert later["password"] != first[0]["password"]
    assert services_of(ask(server, bob, query))[0]["username"] == "1700003660:bob@localhost"


def test_credentials_request() -> None:
    """§3.3: credentials for host+type (+port); an unknown service is
    item-not-found, a request without host/type bad-request."""
    server = make_server(config_text=SERVICES)
    server.clock.advance(1700000000)
    alice = bind(server, "alice@localhost/phone")

    def creds(service: str) -> Any:
        return ask(server, alice, f"<iq type='get' id='c1' to='localhost'><credentials "
                                  f"xmlns='{NS_EXTDISCO}'>{service}</credentials></iq>")

    reply = creds("<service host='turn.example.org' type='turn'/>")
    assert reply.firstChildElement().name == "credentials"
    [turn] = services_of(reply)
    assert turn["username"] == "1700003600:alice@localhost" and turn["port"] == "3478"
    [turns] = services_of(creds("<service host='turn.example.org' type='turns' port='5349'/>"))
    assert turns["transport"] == "tcp"
    assert condition(creds("<service host='turn.example.org' type='turns' port='1'/>")) == "item-not-found"
    assert condition(creds("<service host='other.example.org' type='turn'/>")) == "item-not-found"
    assert condition(creds("<service type='turn'/>")) == "bad-request"


def test_remote_users_are_refused() -> None:
    """Credentials relay traffic through the operator's TURN server: a
    request from another server's user gets forbidden."""
    server = make_server(config_text=SERVICES)
    sent: list[Any] = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    iq = stanza(f"<iq type='get' id='r1' to='localhost' from='mallory@evil.example/x'>"
                f"<services xmlns='{NS_EXTDISCO}'/></iq>")
    server.router.route(iq)
    [reply] = sent
    assert reply["type"] == "error" and condition(reply) == "forbidden"
    assert "password" not in reply.toXml()


def test_nothing_configured_nothing_announced() -> None:
    """Without services the feature is not in disco and a request gets
    service-unavailable, as without the module; no status form either."""
    server = make_server(modules=["message", "disco", "extdisco", "outage_status"])
    alice = bind(server, "alice@localhost/phone")
    reply = ask(server, alice, f"<iq type='get' id='e3' to='localhost'><services xmlns='{NS_EXTDISCO}'/></iq>")
    assert condition(reply) == "service-unavailable"
    info = ask(server, alice, f"<iq type='get' id='d2' to='localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    assert NS_EXTDISCO not in info.toXml() and NS_SOS not in info.toXml()


@pytest.mark.parametrize("bad", [
    '{ type = "turn", host = "x.example", secret = "a", username = "u", password = "p" }',
    '{ type = "turn", host = "x.example", username = "u" }',
    '{ type = "turn", host = "x.example", transport = "sctp" }',
    '{ type = "TURN!", host = "x.example" }',
    '{ type = "turn", host = "bad host" }',
    '{ type = "turn", host = "x.example", port = 70000 }',
    '{ host = "x.example" }',
])
def test_bad_service_config_is_refused(bad: str) -> None:
    """Every malformed service entry stops start-up with the section named."""
    with pytest.raises(ConfigError, match="modules.extdisco"):
        make_server(config_text=f'[modules]\nenabled = ["message", "extdisco"]\n'
                                f'[modules.extdisco]\nservices = [{bad}]\n')


def test_status_urls_in_server_disco_info() -> None:
    """XEP-0455 §2.1: the server's disco#info has the urn:xmpp:sos:0 form
    with the configured URLs; an account's disco#info does not."""
    server = make_server(config_text=SERVICES)
    alice = bind(server, "alice@localhost/phone")
    info = ask(server, alice, f"<iq type='get' id='d3' to='localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    forms = list(info.firstChildElement().elements(ns.DATA_FORMS, "x"))
    [form] = [f for f in forms if NS_SOS in f.toXml()]
    fields = {f["var"]: [str(v) for v in f.elements(ns.DATA_FORMS, "value")] for f in form.elements()}
    assert fields == {"FORM_TYPE": [NS_SOS], "external-status-addresses": ["https://status.example.org/chatbx.json"]}
    own = ask(server, alice, f"<iq type='get' id='d4' to='alice@localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    assert NS_SOS not in own.toXml()


def test_status_url_must_be_http() -> None:
    """A status URL that is not http(s) is a config error."""
    with pytest.raises(ConfigError, match="modules.outage_status"):
        make_server(config_text='[modules]\nenabled = ["message", "outage_status"]\n'
                                '[modules.outage_status]\nurls = ["ftp://status.example.org/x"]\n')
