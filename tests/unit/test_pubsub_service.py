"""The pubsub.<domain> service (XEP-0060): nodes created by local users,
subscriptions, publish with notifications to subscribers, owner rights,
disco."""

from __future__ import annotations

from tests.unit.pephelpers import (NS_OWNER, NS_PUBSUB, error_of, events, got_items, item_ids, items, iq,
                                   online, pep_server, publish)

A, B = "alice@localhost", "bob@localhost"
PS = "pubsub.localhost"
MODULES = ["message", "roster", "presence", "disco", "caps", "pep", "pubsub"]


def create(node: str, iq_id: str = "c") -> str:
    return (f"<iq type='set' id='{iq_id}' to='{PS}'><pubsub xmlns='{NS_PUBSUB}'>"
            f"<create node='{node}'/></pubsub></iq>")


def test_create_subscribe_publish_notify() -> None:
    """Alice creates a node, Bob subscribes, Alice publishes: Bob gets the
    event from the service; Bob may read but not publish; Alice owns it."""
    server = pep_server(MODULES)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b")
    assert iq(alice, create("news"))["type"] == "result"
    assert error_of(iq(alice, create("news", "c2")))[0] == "conflict"
    sub = iq(bob, f"<iq type='set' id='s' to='{PS}'><pubsub xmlns='{NS_PUBSUB}'>"
                  f"<subscribe node='news' jid='{B}/b'/></pubsub></iq>")
    assert sub["type"] == "result" and "subscribed" in sub.toXml()
    assert iq(alice, publish("news", "<entry xmlns='urn:x'>hi</entry>", "e1", to=PS))["type"] == "result"
    [ev] = events(bob, "news")
    assert ev["from"] == PS and item_ids(ev) == ["e1"]
    assert [i for i, _ in got_items(iq(bob, items(PS, "news")))] == ["e1"]
    assert error_of(iq(bob, publish("news", "<entry xmlns='urn:x'/>", "e2", to=PS, iq_id="p2")))[0] == \
        "forbidden"
    aff = iq(alice, f"<iq type='get' id='a' to='{PS}'><pubsub xmlns='{NS_OWNER}'>"
                    "<affiliations node='news'/></pubsub></iq>")
    assert f"jid='{A}'" in aff.toXml().replace('"', "'") and "owner" in aff.toXml()
    # Publisher affiliation lets Bob publish.
    iq(alice, f"<iq type='set' id='a2' to='{PS}'><pubsub xmlns='{NS_OWNER}'><affiliations node='news'>"
              f"<affiliation jid='{B}' affiliation='publisher'/></affiliations></pubsub></iq>")
    assert iq(bob, publish("news", "<entry xmlns='urn:x'/>", "e3", to=PS, iq_id="p3"))["type"] == "result"


def test_disco_and_auto_create_and_create_nobody() -> None:
    """The service answers disco#info (pubsub/service) and lists its nodes;
    with create = "nobody" nobody creates nodes."""
    server = pep_server(MODULES)
    alice = online(server, f"{A}/a")
    iq(alice, publish("auto", "<x xmlns='urn:x'/>", to=PS))
    info = iq(alice, f"<iq type='get' id='d' to='{PS}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert "category='pubsub'" in info.toXml().replace('"', "'")
    disco_items = iq(alice, f"<iq type='get' id='d2' to='{PS}'>"
                            "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "node='auto'" in disco_items.toXml().replace('"', "'")
    # The auto-created node's creator owns it.
    aff = iq(alice, f"<iq type='get' id='a' to='{PS}'><pubsub xmlns='{NS_OWNER}'>"
                    "<affiliations node='auto'/></pubsub></iq>")
    assert aff["type"] == "result" and "owner" in aff.toXml()
    host_items = iq(alice, "<iq type='get' id='d3' to='localhost'>"
                           "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert PS in host_items.toXml()

    closed = pep_server(MODULES, config_text="[modules.pubsub]\ncreate = \"nobody\"\n")
    carol = online(closed, f"{A}/a")
    assert error_of(iq(carol, create("x")))[0] == "forbidden"
