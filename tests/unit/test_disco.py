"""XEP-0030 service discovery on the server and on accounts (with XEP-0030 §9's privacy rules)."""

from __future__ import annotations

from typing import Any, Optional

from chatbx_server.modules import Feature
from chatbx_server.storage.roster import RosterItem
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server, stanza

MODULES = ["message", "disco", "ping", "time", "version", "last", "offline"]


def ask(server, session, xml):
    iq = stanza(xml)
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    return session.take()


def info(to: str, node: Optional[str] = None) -> str:
    node_attr = f" node='{node}'" if node else ""
    return f"<iq type='get' id='i1' to='{to}'><query xmlns='{ns.DISCO_INFO}'{node_attr}/></iq>"


def items(to: str, node: Optional[str] = None) -> str:
    node_attr = f" node='{node}'" if node else ""
    return f"<iq type='get' id='i2' to='{to}'><query xmlns='{ns.DISCO_ITEMS}'{node_attr}/></iq>"


def condition(reply) -> str:
    error = next(reply.elements(ns.CLIENT, "error"))
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def identities(query) -> set[tuple[str, str, Any]]:
    return {(i["category"], i["type"], i.getAttribute("name"))
            for i in query.elements(ns.DISCO_INFO, "identity")}


def features(query) -> list[str]:
    return [f["var"] for f in query.elements(ns.DISCO_INFO, "feature")]


def test_host_info_gathers_every_loaded_feature() -> None:
    """disco#info on the domain: server/im 'chatbx' plus each loaded module's features, once each."""
    server = make_server(modules=MODULES)
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, info("localhost"))
    assert reply["type"] == "result" and reply["from"] == "localhost"
    query = reply.firstChildElement()
    assert identities(query) == {("server", "im", "chatbx")}
    found = features(query)
    for var in (ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.TIME, ns.VERSION, ns.LAST, ns.OFFLINE):
        assert var in found
    assert len(found) == len(set(found))


def test_host_info_leaves_out_unloaded_features() -> None:
    """A module that is not loaded is not advertised."""
    server = make_server(modules=["message", "disco"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, info("localhost"))
    found = features(reply.firstChildElement())
    assert ns.PING not in found and ns.DISCO_INFO in found


def test_unknown_node_is_item_not_found() -> None:
    """disco#info and disco#items to a node nobody serves get item-not-found."""
    server = make_server(modules=MODULES)
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, info("localhost", "urn:example:nothing"))
    assert reply["type"] == "error" and condition(reply) == "item-not-found"
    [reply] = ask(server, alice, items("localhost", "urn:example:nothing"))
    assert reply["type"] == "error" and condition(reply) == "item-not-found"


class NodeFeature(Feature):
    """A test feature with a dynamic node on the host."""

    name = "test-node"

    def disco_info(self, target: Any, node: Optional[str]):
        if target.user is None and node == "urn:example:node":
            return [("automation", "command-list", "Commands")], ["urn:example:feature"]
        return (), ()


def test_dynamic_node_is_answered(monkeypatch) -> None:
    """A node offered by a feature's disco_info() is answered with its identities and features."""
    from chatbx_server import features as registry

    monkeypatch.setitem(registry.REGISTRY, "test-node", f"{__name__}.NodeFeature")
    server = make_server(modules=MODULES + ["test-node"])
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, info("localhost", "urn:example:node"))
    assert reply["type"] == "result"
    query = reply.firstChildElement()
    assert query["node"] == "urn:example:node"
    assert identities(query) == {("automation", "command-list", "Commands")}
    assert features(query) == ["urn:example:feature"]


def test_host_items_list_hosted_services() -> None:
    """disco#items on the domain lists the router's service domains (none by default)."""
    server = make_server(modules=MODULES)
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, items("localhost"))
    assert reply["type"] == "result" and list(reply.firstChildElement().elements()) == []
    server.router.services["conference.localhost"] = lambda event: None
    [reply] = ask(server, alice, items("localhost"))
    jids = [i["jid"] for i in reply.firstChildElement().elements(ns.DISCO_ITEMS, "item")]
    assert jids == ["conference.localhost"]


def test_own_account_info() -> None:
    """An account's own bare JID answers account/registered with the account features."""
    server = make_server(modules=MODULES)
    create_user(server, "alice@localhost")
    alice = bind(server, "alice@localhost/a")
    [reply] = ask(server, alice, info("alice@localhost"))
    assert reply["type"] == "result" and reply["from"] == "alice@localhost"
    query = reply.firstChildElement()
    assert identities(query) == {("account", "registered", None)}
    assert ns.DISCO_INFO in features(query)
    assert ns.PING not in features(query)  # server features are not account features


def test_account_info_for_contacts_and_strangers() -> None:
    """A subscribed contact gets the account's info; a stranger and an unknown account get service-unavailable."""
    server = make_server(modules=MODULES)
    for user in ("alice@localhost", "bob@localhost", "mallory@localhost"):
        create_user(server, user)
    server.stores.roster.set_item("alice@localhost", RosterItem("bob@localhost", subscription="both"))
    bob = bind(server, "bob@localhost/b")
    mallory = bind(server, "mallory@localhost/m")
    [reply] = ask(server, bob, info("alice@localhost"))
    assert reply["type"] == "result"
    [reply] = ask(server, mallory, info("alice@localhost"))
    assert reply["type"] == "error" and condition(reply) == "service-unavailable"
    [reply] = ask(server, mallory, info("nobody@localhost"))
    assert reply["type"] == "error" and condition(reply) == "service-unavailable"


def test_account_items_are_empty_even_for_unknown_accounts() -> None:
    """disco#items to a bare JID is an empty result, whether or not the account exists (§9)."""
    server = make_server(modules=MODULES)
    create_user(server, "alice@localhost")
    alice = bind(server, "alice@localhost/a")
    for to in ("alice@localhost", "nobody@localhost"):
        [reply] = ask(server, alice, items(to))
        assert reply["type"] == "result"
        assert list(reply.firstChildElement().elements()) == []
