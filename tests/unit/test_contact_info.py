"""XEP-0157 contact addresses: config -> serverinfo data form in the server's disco#info."""

from __future__ import annotations

import pytest

from chatbx_server.config import ConfigError
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza

CONFIG = '''
[modules]
enabled = ["message", "disco", "contact_info"]
[modules.contact_info]
addresses = { admin-addresses = ["xmpp:admin@example.org", "mailto:admin@example.org"], abuse-addresses = ["mailto:abuse@example.org"] }
'''

INFO = "<iq type='get' id='d1' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def forms(query):
    return [x for x in query.elements(ns.DATA_FORMS, "x")]


def fields(form) -> dict[str, list[str]]:
    return {f["var"]: [str(v) for v in f.elements(ns.DATA_FORMS, "value")]
            for f in form.elements(ns.DATA_FORMS, "field")}


def test_addresses_are_published_in_host_disco_info() -> None:
    """The configured addresses appear in a result form with FORM_TYPE serverinfo."""
    server = make_server(config_text=CONFIG)
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, INFO.format(to="localhost"))
    assert reply["type"] == "result"
    [form] = forms(reply.firstChildElement())
    assert form["type"] == "result"
    assert fields(form) == {
        "FORM_TYPE": [ns.SERVERINFO],
        "abuse-addresses": ["mailto:abuse@example.org"],
        "admin-addresses": ["xmpp:admin@example.org", "mailto:admin@example.org"],
    }


def test_no_form_without_addresses_or_on_accounts() -> None:
    """No addresses configured: no form; the form is never attached to an account's disco."""
    server = make_server(modules=["message", "disco", "contact_info"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, INFO.format(to="localhost"))
    assert forms(reply.firstChildElement()) == []
    server = make_server(config_text=CONFIG)
    feature = server.modules.get("contact_info")
    assert list(feature.disco_extensions(alice.bare_jid, None)) == []
    assert list(feature.disco_extensions(alice.bare_jid.bare_jid(), "some-node")) == []


@pytest.mark.parametrize("table, message", [
    ('addresses = { bogus-addresses = ["xmpp:a@b"] }', "bogus-addresses"),
    ('addresses = { admin-addresses = "xmpp:a@b" }', "admin-addresses"),
    ('addresses = { admin-addresses = ["admin at example"] }', "not a URI"),
])
def test_bad_addresses_are_config_errors(table: str, message: str) -> None:
    """Unknown address kinds, a string instead of a list, and non-URIs are refused, naming the key."""
    with pytest.raises(ConfigError) as info:
        make_server(config_text='[modules]\nenabled = ["contact_info"]\n[modules.contact_info]\n' + table + "\n")
    assert message in str(info.value)
    assert "modules.contact_info" in str(info.value)
