"""XEP-0092 software version: name and version, OS hidden by default, the whole thing hideable."""

from __future__ import annotations

import platform

from chatbx_server import __version__
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza

QUERY = "<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>"


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def children(element) -> dict[str, str]:
    return {c.name: str(c) for c in element.elements()}


def test_version_answers_name_and_version_without_os_by_default() -> None:
    """By default the answer has name chatbx and the package version, and no <os/>."""
    server = make_server(modules=["message", "version"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, QUERY)
    assert reply["type"] == "result"
    query = reply.firstChildElement()
    assert query.uri == ns.VERSION
    assert children(query) == {"name": "chatbx", "version": __version__}


def test_version_includes_os_when_not_hidden() -> None:
    """With hide_os = false the <os/> is platform.system()."""
    server = make_server(config_text='[modules]\nenabled = ["message", "version"]\n'
                                     '[modules.version]\nhide_os = false\n')
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, QUERY)
    assert children(reply.firstChildElement())["os"] == (platform.system() or "unknown")


def test_hidden_version_is_service_unavailable_and_not_advertised() -> None:
    """With hide = true the query gets service-unavailable and disco does not list the feature."""
    server = make_server(config_text='[modules]\nenabled = ["message", "disco", "version"]\n'
                                     '[modules.version]\nhide = true\n')
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, QUERY)
    assert reply["type"] == "error"
    error = next(reply.elements(ns.CLIENT, "error"))
    assert next(error.elements(ns.STANZA_ERRORS, "service-unavailable"), None) is not None
    [info] = ask(server, alice, "<iq type='get' id='d1' to='localhost'>"
                                "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    features = {f["var"] for f in info.firstChildElement().elements(ns.DISCO_INFO, "feature")}
    assert ns.VERSION not in features and ns.DISCO_INFO in features
