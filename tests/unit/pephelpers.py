"""Helpers for PEP, caps and profile tests: sessions that announce entity
capabilities and answer the server's disco#info, and pubsub requests."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.c2s import stream as c2s
from chatbx_server.features.caps import NS_CAPS, caps_hash
from chatbx_server.storage.roster import RosterItem
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server, stanza

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"

MODULES = ["message", "roster", "presence", "disco", "caps", "pep"]


def pep_server(modules: Optional[list[str]] = None, config_text: str = "",
               users: Iterable[str] = ("alice@localhost", "bob@localhost", "carol@localhost")) -> Any:
    names = modules or MODULES
    if "[modules." in config_text:
        # TOML allows no `modules = [...]` beside [modules.<name>] tables.
        enabled = ", ".join(f'"{m}"' for m in names)
        server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n" + config_text)
    else:
        server = make_server(modules=names, config_text=config_text)
    for user in users:
        create_user(server, user)
    return server


def befriend(server: Any, a: str, b: str, sub_ab: str = "both", sub_ba: str = "both") -> None:
    """Roster items both ways: ``sub_ab`` is a's subscription to b."""
    server.stores.roster.set_item(a, RosterItem(b, subscription=sub_ab))
    server.stores.roster.set_item(b, RosterItem(a, subscription=sub_ba))


def disco_query(features: Iterable[str], node: Optional[str] = None) -> domish.Element:
    query = domish.Element((ns.DISCO_INFO, "query"))
    if node:
        query["node"] = node
    ident = query.addElement("identity")
    ident["category"] = "client"
    ident["type"] = "pc"
    ident["name"] = "test"
    for var in features:
        query.addElement("feature")["var"] = var
    return query


def send(session: Any, element: domish.Element) -> None:
    session.stream.dataReceived(c2s.CLIENT_STREAMS.serialize(element).encode())


def online(server: Any, jid: str, features: Optional[Iterable[str]] = None,
           answer: bool = True, lie: bool = False) -> Any:
    """Bind ``jid``, send initial presence (with caps for ``features``) and
    answer the server's disco#info for them. Returns the session with what
    it was sent afterwards kept (the disco query removed)."""
    session = bind(server, jid)
    pres = domish.Element((ns.CLIENT, "presence"))
    query = None
    if features is not None:
        query = disco_query(list(features) + [ns.DISCO_INFO])
        ver = caps_hash("sha-1", query)
        if lie:
            ver = "A" + ver[1:]
        c = pres.addElement((NS_CAPS, "c"))
        c["hash"] = "sha-1"
        c["node"] = "https://test.example"
        c["ver"] = ver
    send(session, pres)
    if query is not None and answer:
        answer_disco(session, query)
    return session


def answer_disco(session: Any, query: domish.Element) -> bool:
    """Answer the server's pending disco#info query to ``session``."""
    for el in list(session.sent):
        if el.name == "iq" and el.getAttribute("type") == "get":
            q = el.firstChildElement()
            if q is not None and q.uri == ns.DISCO_INFO:
                session.sent.remove(el)
                reply = domish.Element((ns.CLIENT, "iq"))
                reply["type"] = "result"
                reply["id"] = el["id"]
                reply["to"] = el["from"]
                query["node"] = q.getAttribute("node", "")
                reply.addChild(query)
                send(session, reply)
                return True
    return False


def iq(session: Any, xml: str) -> domish.Element:
    """Send an iq from ``session`` and return the reply it got (other
    stanzas it was sent stay in ``session.sent``)."""
    el = stanza(xml)
    iq_id = el["id"]
    send(session, el)
    for reply in list(session.sent):
        if reply.name == "iq" and reply.getAttribute("id") == iq_id:
            session.sent.remove(reply)
            return reply
    raise AssertionError(f"no reply to {iq_id}: {[e.toXml() for e in session.sent]}")


def error_of(reply: domish.Element) -> tuple[str, Optional[str]]:
    """(condition, pubsub#errors condition) of an error reply."""
    assert reply["type"] == "error", reply.toXml()
    err = next(e for e in reply.elements() if e.name == "error")
    cond = next(c.name for c in err.elements() if c.uri == ns.STANZA_ERRORS)
    app = next((c.name for c in err.elements() if c.uri == NS_ERRORS), None)
    return cond, app


def events(session: Any, node: Optional[str] = None) -> list[domish.Element]:
    """The pubsub event messages ``session`` received (and forget them)."""
    out = []
    for el in list(session.sent):
        if el.name != "message":
            continue
        ev = next(el.elements(NS_EVENT, "event"), None)
        if ev is None:
            continue
        session.sent.remove(el)
        first = ev.firstChildElement()
        if node is None or first.getAttribute("node") == node:
            out.append(el)
    return out


def item_ids(message: domish.Element) -> list[str]:
    ev = next(message.elements(NS_EVENT, "event"))
    items = ev.firstChildElement()
    return [i["id"] for i in items.elements(NS_EVENT, "item")]


def publish(node: str, payload: str, item_id: Optional[str] = None, options: Optional[dict] = None,
            iq_id: str = "p1", to: str = "") -> str:
    idattr = f" id='{item_id}'" if item_id else ""
    po = ""
    if options:
        fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in options.items())
        po = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' "
              "type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
              f"{fields}</x></publish-options>")
    toattr = f" to='{to}'" if to else ""
    return (f"<iq type='set' id='{iq_id}'{toattr}><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>"
            f"<item{idattr}>{payload}</item></publish>{po}</pubsub></iq>")


def items(to: str, node: str, extra: str = "", inner: str = "", iq_id: str = "i1") -> str:
    return (f"<iq type='get' id='{iq_id}' to='{to}'><pubsub xmlns='{NS_PUBSUB}'>"
            f"<items node='{node}'{extra}>{inner}</items></pubsub></iq>")


def got_items(reply: domish.Element) -> list[tuple[str, Optional[domish.Element]]]:
    assert reply["type"] == "result", reply.toXml()
    pubsub = reply.firstChildElement()
    items_el = next(pubsub.elements(NS_PUBSUB, "items"))
    return [(i["id"], i.firstChildElement()) for i in items_el.elements(NS_PUBSUB, "item")]


def node_config(to: str, node: str, fields: dict, iq_id: str = "c1") -> str:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (f"<iq type='set' id='{iq_id}' to='{to}'><pubsub xmlns='{NS_OWNER}'><configure node='{node}'>"
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
            f"<value>http://jabber.org/protocol/pubsub#node_config</value></field>{body}</x>"
            "</configure></pubsub></iq>")
