"""The real-time block list (features/rtbl.py) against a fake pubsub
service domain registered in router.services."""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from chatbx_server.features.rtbl import NS_PUBSUB, NS_PUBSUB_EVENT, jid_hash
from tests.unit.fakes import bind, create_user, make_server, stanza

SERVICE = "rtbl.example"
NODE = "muc_bans_sha256"
CONFIG = f"[modules.rtbl]\nservice = '{SERVICE}'\nnode = '{NODE}'\nrefresh = 600\nretry = 30\n"


class FakePubsub:
    """A pubsub service that answers subscribe and items requests."""

    def __init__(self, server: Any, items: list[str]) -> None:
        self.server = server
        self.items = list(items)
        self.requests: list[domish.Element] = []
        self.down = False
        server.router.services[SERVICE] = self.deliver

    def deliver(self, event: Any) -> bool:
        iq = event.stanza
        if iq.name != "iq" or iq.getAttribute("type") not in ("get", "set"):
            return True
        self.requests.append(iq)
        reply = domish.Element((None, "iq"))
        reply["from"], reply["to"], reply["id"] = SERVICE, iq["from"], iq["id"]
        if self.down:
            reply["type"] = "error"
            reply.addElement("error")["type"] = "cancel"
            reply.error.addElement(("urn:ietf:params:xml:ns:xmpp-stanzas", "remote-server-timeout"))
        else:
            reply["type"] = "result"
            if iq["type"] == "get":
                items = reply.addElement((NS_PUBSUB, "pubsub")).addElement("items")
                items["node"] = NODE
                for item_id in self.items:
                    items.addElement("item")["id"] = item_id
        self.server.router.route(reply)
        return True

    def notify(self, payload: str) -> None:
        self.server.router.route(stanza(
            f"<message from='{SERVICE}' to='localhost'><event xmlns='{NS_PUBSUB_EVENT}'>{payload}"
            "</event></message>"))


def _remote(server: Any, xml: str) -> None:
    """A stanza arriving from another server (s2s: no origin session)."""
    server.router.route(stanza(xml))


def _setup(items: list[str]) -> tuple[Any, FakePubsub, Any]:
    server = make_server(config_text=CONFIG)
    create_user(server, "alice@localhost")
    pubsub = FakePubsub(server, items)
    alice = bind(server, "alice@localhost/a", available=True)
    alice.take()
    return server, pubsub, alice


def _messages(session: Any) -> list[str]:
    return [m.getAttribute("from") for m in session.take() if m.name == "message"]


def test_listed_jids_and_domains_are_dropped_after_the_fetch() -> None:
    """After start-up rtbl subscribes from the domain and fetches the items;
    then messages and subscription requests from a listed JID, and from any
    JID at a listed domain, are dropped, others pass; MUC joins from listed
    senders get no room (and no answer)."""
    server, pubsub, alice = _setup([jid_hash("spam@evil.example"), jid_hash("spam.example")])
    _remote(server, "<message from='spam@evil.example/x' to='alice@localhost'><body>a</body></message>")
    assert _messages(alice) == ["spam@evil.example/x"]  # nothing fetched yet
    server.clock.advance(1)
    sub, items = pubsub.requests
    assert sub["type"] == "set" and sub["from"] == "localhost"
    assert next(sub.elements(NS_PUBSUB, "pubsub")).subscribe["jid"] == "localhost"
    assert next(items.elements(NS_PUBSUB, "pubsub")).items["node"] == NODE
    for sender in ("spam@evil.example/x", "anyone@spam.example/y", "friend@good.example/z"):
        _remote(server, f"<message from='{sender}' to='alice@localhost'><body>b</body></message>")
        _remote(server, f"<presence from='{sender}' to='alice@localhost' type='subscribe'/>")
    got = alice.take()
    assert {s.getAttribute("from").split("/")[0] for s in got} == {"friend@good.example"}, \
        [s.toXml() for s in got]
    assert [s.name for s in got].count("message") == 1
    _remote(server, "<presence from='spam@evil.example/x' to='room@conference.localhost/n'>"
                    "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
    assert "room@conference.localhost" not in server.modules.get("muc").rooms  # type: ignore[union-attr]


def test_notifications_add_retract_and_purge() -> None:
    """Items published later are added, retracted ones removed, a purge
    empties the list; notifications from another JID change nothing."""
    server, pubsub, alice = _setup([])
    server.clock.advance(1)
    bad = jid_hash("late@evil.example")
    pubsub.notify(f"<items node='{NODE}'><item id='{bad}'/></items>")
    _remote(server, "<message from='late@evil.example' to='alice@localhost'><body>x</body></message>")
    assert _messages(alice) == []
    server.router.route(stanza(f"<message from='other.example' to='localhost'><event xmlns="
                               f"'{NS_PUBSUB_EVENT}'><purge node='{NODE}'/></event></message>"))
    assert bad in server.modules.get("rtbl").hashes  # type: ignore[union-attr]
    pubsub.notify(f"<items node='{NODE}'><retract id='{bad}'/></items>")
    _remote(server, "<message from='late@evil.example' to='alice@localhost'><body>y</body></message>")
    assert _messages(alice) == ["late@evil.example"]
    pubsub.notify(f"<items node='{NODE}'><item id='{bad}'/></items>")
    pubsub.notify(f"<purge node='{NODE}'/>")
    _remote(server, "<message from='late@evil.example' to='alice@localhost'><body>z</body></message>")
    assert _messages(alice) == ["late@evil.example"]


def test_failure_is_retried_and_list_refreshed() -> None:
    """An error answer leaves the list empty and the subscription is tried
    again after `retry`; later the items are fetched again every `refresh`."""
    server, pubsub, alice = _setup([jid_hash("spam@evil.example")])
    pubsub.down = True
    server.clock.advance(1)
    assert len(pubsub.requests) == 1
    assert server.modules.get("rtbl").hashes == frozenset()  # type: ignore[union-attr]
    pubsub.down = False
    server.clock.advance(30)
    assert [r["type"] for r in pubsub.requests] == ["set", "set", "get"]
    assert server.modules.get("rtbl").hashes == {jid_hash("spam@evil.example")}  # type: ignore[union-attr]
    pubsub.items = []
    server.clock.advance(600)
    assert [r["type"] for r in pubsub.requests][3:] == ["get"]  # subscribed already
    assert server.modules.get("rtbl").hashes == frozenset()  # type: ignore[union-attr]


def test_local_senders_and_no_service_are_not_filtered() -> None:
    """Local accounts are not checked even if listed; without a service the
    module does nothing."""
    server, pubsub, alice = _setup([jid_hash("bob@localhost")])
    create_user(server, "bob@localhost")
    server.clock.advance(1)
    bob = bind(server, "bob@localhost/b")
    bob.stream.dataReceived(b"<message to='alice@localhost'><body>hi</body></message>")
    assert _messages(alice) == ["bob@localhost/b"]
    plain = make_server()
    assert plain.modules.get("rtbl").hashes == frozenset()  # type: ignore[union-attr]
    assert not any("rtbl" in repr(c).lower() for c in plain.clock.getDelayedCalls())
