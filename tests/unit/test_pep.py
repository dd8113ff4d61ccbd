"""PEP (XEP-0163) on every account: publish, items, retract, purge, delete,
configuration, publish-options (XEP-0223), access models, limits, and
notifications filtered by entity capabilities (XEP-0115)."""

from __future__ import annotations

from tests.unit.pephelpers import (NS_EVENT, NS_OWNER, NS_PUBSUB, befriend, error_of, events, got_items,
                                   item_ids, items, iq, node_config, online, pep_server, publish)

A, B, C = "alice@localhost", "bob@localhost", "carol@localhost"
NODE = "urn:example:mood"
PAYLOAD = "<mood xmlns='urn:example:mood'><happy/></mood>"


def test_publish_without_id_gets_one_and_items_returns_it() -> None:
    """A publish without an item id is given one (#item-ids) in the result,
    and the owner reads the item back with its payload (#retrieve-items)."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    reply = iq(alice, publish(NODE, PAYLOAD))
    assert reply["type"] == "result", reply.toXml()
    pub = next(reply.firstChildElement().elements(NS_PUBSUB, "publish"))
    [item] = list(pub.elements(NS_PUBSUB, "item"))
    assert item["id"]
    [(item_id, payload)] = got_items(iq(alice, items(A, NODE)))
    assert item_id == item["id"]
    assert (payload.uri, payload.name) == ("urn:example:mood", "mood")


def test_items_by_id_and_max_items() -> None:
    """Items by id return those; max_items returns the most recent N
    (XEP-0060 §6.5.7); the same id published again replaces the item."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    for n, item_id in enumerate(["1", "2", "3", "2"]):
        assert iq(alice, publish(NODE, PAYLOAD, item_id, {"pubsub#max_items": "10"},
                                 iq_id=f"p{n}"))["type"] == "result"
    assert [i for i, _ in got_items(iq(alice, items(A, NODE)))] == ["1", "3", "2"]
    assert [i for i, _ in got_items(iq(alice, items(A, NODE, " max_items='2'")))] == ["3", "2"]
    assert [i for i, _ in got_items(iq(alice, items(A, NODE, inner="<item id='1'/>")))] == ["1"]
    assert error_of(iq(alice, items(A, "urn:none")))[0] == "item-not-found"


def test_default_node_keeps_one_item() -> None:
    """An auto-created PEP node keeps one item unless configured otherwise."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "1", iq_id="p1"))
    iq(alice, publish(NODE, PAYLOAD, "2", iq_id="p2"))
    assert [i for i, _ in got_items(iq(alice, items(A, NODE)))] == ["2"]


def test_publish_options_mismatch_is_precondition_not_met_and_changes_nothing() -> None:
    """XEP-0223: an existing node whose configuration differs from a
    publish-option refuses the publish with conflict/precondition-not-met;
    neither the item nor the configuration changes."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    ok = iq(alice, publish(NODE, PAYLOAD, "1", {"pubsub#access_model": "open"}))
    assert ok["type"] == "result"
    refused = iq(alice, publish(NODE, PAYLOAD, "2", {"pubsub#access_model": "whitelist"}, "p2"))
    assert error_of(refused) == ("conflict", "precondition-not-met")
    assert [i for i, _ in got_items(iq(alice, items(A, NODE)))] == ["1"]
    conf = iq(alice, f"<iq type='get' id='g' to='{A}'><pubsub xmlns='{NS_OWNER}'>"
                     f"<configure node='{NODE}'/></pubsub></iq>")
    assert "<value>open</value>" in conf.toXml()
    # Same value written another way ("1" vs "true") is the same precondition.
    iq(alice, publish(NODE, PAYLOAD, "3", {"pubsub#persist_items": "1"}, "p3"))
    assert iq(alice, publish(NODE, PAYLOAD, "4", {"pubsub#persist_items": "true"}, "p4"))["type"] == "result"


def test_max_items_max_and_configure_set() -> None:
    """pubsub#max_items = max means the server's limit; configuring a node
    with a smaller max_items trims it; a value over the limit is refused."""
    server = pep_server(config_text="[modules.pep]\nmax_items = 3\n")
    alice = online(server, f"{A}/a")
    for n in range(5):
        iq(alice, publish(NODE, PAYLOAD, str(n), {"pubsub#max_items": "max"}, f"p{n}"))
    assert [i for i, _ in got_items(iq(alice, items(A, NODE)))] == ["2", "3", "4"]
    assert iq(alice, node_config(A, NODE, {"pubsub#max_items": "2"}))["type"] == "result"
    assert [i for i, _ in got_items(iq(alice, items(A, NODE)))] == ["3", "4"]
    assert error_of(iq(alice, node_config(A, NODE, {"pubsub#max_items": "9"}, "c2")))[0] == "not-acceptable"
    assert error_of(iq(alice, node_config(A, NODE, {"pubsub#access_model": "authorize"}, "c3")))[0] == \
        "not-acceptable"


def test_item_too_big_is_refused_and_nothing_stored() -> None:
    """An item over max_item_bytes gets not-acceptable/payload-too-big and
    no node is created."""
    server = pep_server(config_text="[modules.pep]\nmax_item_bytes = 100\n")
    alice = online(server, f"{A}/a")
    big = "<x xmlns='urn:big'>" + "a" * 200 + "</x>"
    assert error_of(iq(alice, publish(NODE, big))) == ("not-acceptable", "payload-too-big")
    assert error_of(iq(alice, items(A, NODE)))[0] == "item-not-found"


def test_nodes_per_account_limit() -> None:
    """Publishing to a new node past max_nodes is refused with a clear error."""
    server = pep_server(config_text="[modules.pep]\nmax_nodes = 2\n")
    alice = online(server, f"{A}/a")
    assert iq(alice, publish("n1", PAYLOAD, iq_id="1"))["type"] == "result"
    assert iq(alice, publish("n2", PAYLOAD, iq_id="2"))["type"] == "result"
    reply = iq(alice, publish("n3", PAYLOAD, iq_id="3"))
    assert error_of(reply) == ("not-allowed", "max-nodes-exceeded")
    assert "at most 2 nodes" in reply.toXml()
    assert iq(alice, publish("n1", PAYLOAD, iq_id="4"))["type"] == "result"


def test_only_the_owner_publishes() -> None:
    """Another account cannot publish to, configure or delete a PEP node."""
    server = pep_server()
    befriend(server, A, B)
    bob = online(server, f"{B}/b")
    assert error_of(iq(bob, publish(NODE, PAYLOAD, to=A)))[0] == "forbidden"
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD))
    assert error_of(iq(bob, f"<iq type='set' id='d' to='{A}'><pubsub xmlns='{NS_OWNER}'>"
                            f"<delete node='{NODE}'/></pubsub></iq>"))[0] == "forbidden"


def test_access_models() -> None:
    """presence (default): a contact with a 'from' subscription reads, a
    stranger gets not-authorized/presence-subscription-required; open:
    anyone; whitelist: a stranger gets not-allowed/closed-node, a member
    reads; roster: a contact in an allowed group reads."""
    server = pep_server()
    befriend(server, A, B)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b")
    carol = online(server, f"{C}/c")
    iq(alice, publish("pres", PAYLOAD, iq_id="1"))
    assert got_items(iq(bob, items(A, "pres")))
    assert error_of(iq(carol, items(A, "pres"))) == ("not-authorized", "presence-subscription-required")
    iq(alice, publish("open", PAYLOAD, options={"pubsub#access_model": "open"}, iq_id="2"))
    assert got_items(iq(carol, items(A, "open")))
    iq(alice, publish("white", PAYLOAD, options={"pubsub#access_model": "whitelist"}, iq_id="3"))
    assert error_of(iq(carol, items(A, "white"))) == ("not-allowed", "closed-node")
    assert error_of(iq(bob, items(A, "white"))) == ("not-allowed", "closed-node")
    assert iq(alice, f"<iq type='set' id='aff' to='{A}'><pubsub xmlns='{NS_OWNER}'><affiliations "
                     f"node='white'><affiliation jid='{B}' affiliation='member'/></affiliations>"
                     "</pubsub></iq>")["type"] == "result"
    assert got_items(iq(bob, items(A, "white")))
    assert error_of(iq(carol, items(A, "white")))[0] == "not-allowed"
    # The stranger cannot subscribe either.
    sub = iq(carol, f"<iq type='set' id='s' to='{A}'><pubsub xmlns='{NS_PUBSUB}'>"
                    f"<subscribe node='white' jid='{C}/c'/></pubsub></iq>")
    assert error_of(sub)[0] == "not-allowed"


def test_notifications_follow_caps_interest() -> None:
    """A publish reaches the owner's and the contacts' resources that
    announce NODE+notify, and not a contact's resource without it, nor a
    stranger's."""
    server = pep_server()
    befriend(server, A, B)
    befriend(server, A, C, "none", "none")
    alice = online(server, f"{A}/a", [NODE + "+notify"])
    alice2 = online(server, f"{A}/quiet", [])
    bob = online(server, f"{B}/b", [NODE + "+notify"])
    bob2 = online(server, f"{B}/other", ["urn:other+notify"])
    carol = online(server, f"{C}/c", [NODE + "+notify"])
    iq(alice, publish(NODE, PAYLOAD, "x1"))
    [ev] = events(bob, NODE)
    assert ev["from"] == A and ev["type"] == "headline"
    assert item_ids(ev) == ["x1"]
    ev_item = next(next(ev.elements(NS_EVENT, "event")).firstChildElement().elements(NS_EVENT, "item"))
    assert ev_item.firstChildElement().name == "mood"
    assert len(events(alice, NODE)) == 1
    assert events(alice2) == [] and events(bob2) == [] and events(carol) == []


def test_unverified_caps_are_not_cached_for_others() -> None:
    """A resource whose disco#info does not match its caps hash is believed
    about itself only (as Prosody does): it gets notifications, but another
    resource announcing the same ver is asked again, not trusted."""
    server = pep_server()
    befriend(server, A, B)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b", [NODE + "+notify"], lie=True)
    carol = online(server, f"{C}/c", [NODE + "+notify"], lie=True, answer=False)
    assert [e for e in carol.sent if e.name == "iq"], "the same bogus ver is asked again"
    assert not server.modules.get("caps").wants(f"{C}/c", NODE)
    iq(alice, publish(NODE, PAYLOAD))
    assert len(events(bob)) == 1


def test_one_disco_query_per_ver_for_everyone() -> None:
    """The second resource with the same caps ver is not asked (cached by
    ver across accounts, and in the database)."""
    server = pep_server()
    online(server, f"{A}/a", [NODE + "+notify"])
    bob = online(server, f"{B}/b", [NODE + "+notify"], answer=False)
    assert not [e for e in bob.sent if e.name == "iq"]
    assert server.modules.get("caps").wants(f"{B}/b", NODE)


def test_retract_with_notify_and_purge_and_delete() -> None:
    """Retract with notify='true' sends <retract/>, purge sends <purge/>,
    delete sends <delete/>; the node is gone afterwards."""
    server = pep_server()
    befriend(server, A, B)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b", [NODE + "+notify"])
    iq(alice, publish(NODE, PAYLOAD, "1", {"pubsub#max_items": "5", "pubsub#notify_retract": "0"}))
    events(bob)
    reply = iq(alice, f"<iq type='set' id='r' to='{A}'><pubsub xmlns='{NS_PUBSUB}'><retract node='{NODE}' "
                      "notify='true'><item id='1'/></retract></pubsub></iq>")
    assert reply["type"] == "result"
    [ev] = events(bob)
    assert "<retract id='1'" in ev.toXml().replace('"', "'")
    assert error_of(iq(alice, f"<iq type='set' id='r2' to='{A}'><pubsub xmlns='{NS_PUBSUB}'><retract "
                              f"node='{NODE}'><item id='1'/></retract></pubsub></iq>"))[0] == "item-not-found"
    iq(alice, publish(NODE, PAYLOAD, "2", iq_id="p2"))
    events(bob)
    iq(alice, f"<iq type='set' id='pu' to='{A}'><pubsub xmlns='{NS_OWNER}'><purge node='{NODE}'/></pubsub></iq>")
    assert got_items(iq(alice, items(A, NODE))) == []
    iq(alice, f"<iq type='set' id='de' to='{A}'><pubsub xmlns='{NS_OWNER}'><delete node='{NODE}'/></pubsub></iq>")
    kinds = [next(e.elements(NS_EVENT, "event")).firstChildElement().name for e in events(bob)]
    assert "delete" in kinds
    assert error_of(iq(alice, items(A, NODE, iq_id="i9")))[0] == "item-not-found"


def test_last_item_when_a_contact_comes_online() -> None:
    """A contact's resource that comes online with +notify gets the last
    item of the node; its own account's last items too."""
    server = pep_server()
    befriend(server, A, B)
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "last"))
    bob = online(server, f"{B}/b", [NODE + "+notify"])
    [ev] = events(bob, NODE)
    assert item_ids(ev) == ["last"]
    alice2 = online(server, f"{A}/again", [NODE + "+notify"])
    assert [item_ids(e) for e in events(alice2, NODE)] == [["last"]]
    carol = online(server, f"{C}/c", [NODE + "+notify"])
    assert events(carol) == []


def test_explicit_subscription_gets_last_item_and_notifications() -> None:
    """An explicit subscription to an open node (as OMEMO clients make for
    non-contacts) gets the last item and later notifications."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "1", {"pubsub#access_model": "open"}))
    carol = online(server, f"{C}/c")
    reply = iq(carol, f"<iq type='set' id='s' to='{A}'><pubsub xmlns='{NS_PUBSUB}'>"
                      f"<subscribe node='{NODE}' jid='{C}'/></pubsub></iq>")
    assert reply["type"] == "result"
    assert [item_ids(e) for e in events(carol)] == [["1"]]
    iq(alice, publish(NODE, PAYLOAD, "2", iq_id="p2"))
    assert [item_ids(e) for e in events(carol)] == [["2"]]


def test_account_deletion_removes_its_nodes() -> None:
    """Deleting the account deletes its PEP nodes and items (cascade)."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD))
    server.stores.users.delete(A)
    from chatbx_server.storage.schema import pubsub_items, pubsub_nodes
    with server.database.engine.connect() as conn:
        assert conn.execute(pubsub_nodes.select()).all() == []
        assert conn.execute(pubsub_items.select()).all() == []


def test_last_item_when_the_account_approves_a_subscription() -> None:
    """When Alice approves Bob's subscription, Bob's resources with
    +notify get Alice's last item (XEP-0163 §4.3.1)."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "last"))
    bob = online(server, f"{B}/b", [NODE + "+notify"])
    assert events(bob) == []
    from tests.unit.pephelpers import send
    from tests.unit.fakes import stanza
    send(bob, stanza(f"<presence to='{A}' type='subscribe'/>"))
    send(alice, stanza(f"<presence to='{B}' type='subscribed'/>"))
    assert [item_ids(e) for e in events(bob, NODE)] == [["last"]]


def test_caps_known_from_the_database_need_no_query() -> None:
    """A ver stored by an earlier process is used without asking the client."""
    server = pep_server()
    from tests.unit.pephelpers import disco_query
    from chatbx_server.features.caps import caps_hash
    from chatbx_server.xmpp import ns
    ver = caps_hash("sha-1", disco_query([NODE + "+notify", ns.DISCO_INFO]))
    server.stores.caps.put(f"sha-1:{ver}", [NODE + "+notify", ns.DISCO_INFO])
    bob = online(server, f"{B}/b", [NODE + "+notify"], answer=False)
    assert not [e for e in bob.sent if e.name == "iq"]
    assert server.modules.get("caps").wants(f"{B}/b", NODE)


def test_configuration_form_and_default() -> None:
    """The owner gets the node_config form with the node's values; the
    default form is offered too."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, options={"pubsub#max_items": "max", "pubsub#access_model": "open"}))
    xml = iq(alice, f"<iq type='get' id='g' to='{A}'><pubsub xmlns='{NS_OWNER}'>"
                    f"<configure node='{NODE}'/></pubsub></iq>").toXml().replace('"', "'")
    assert "var='pubsub#max_items'" in xml and "<value>max</value>" in xml
    assert "http://jabber.org/protocol/pubsub#node_config" in xml
    default = iq(alice, f"<iq type='get' id='d' to='{A}'><pubsub xmlns='{NS_OWNER}'><default/></pubsub></iq>")
    assert default["type"] == "result" and "<value>presence</value>" in default.toXml()


def test_last_items_to_a_remote_contact_coming_online() -> None:
    """A remote contact's available presence with known caps gets the
    account's last item, through the router's remote delivery."""
    from tests.unit.fakes import stanza
    from tests.unit.pephelpers import disco_query
    from chatbx_server.features.caps import caps_hash
    from chatbx_server.storage.roster import RosterItem
    from chatbx_server.xmpp import ns
    server = pep_server()
    remote = "dave@remote.example"
    server.stores.roster.set_item(A, RosterItem(remote, subscription="both"))
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "last"))
    ver = caps_hash("sha-1", disco_query([NODE + "+notify", ns.DISCO_INFO]))
    server.stores.caps.put(f"sha-1:{ver}", [NODE + "+notify", ns.DISCO_INFO])
    sent = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    pres = stanza(f"<presence from='{remote}/laptop' to='{A}'><c xmlns='http://jabber.org/protocol/caps' "
                  f"hash='sha-1' node='n' ver='{ver}'/></presence>")
    server.router.route(pres)
    [message] = [m for m in sent if m.name == "message"]
    assert message["to"] == f"{remote}/laptop" and item_ids(message) == ["last"]


def test_user_deleted_forgets_subscriptions_elsewhere() -> None:
    """user/deleted (when fired) removes the account's subscriptions and
    affiliations on other accounts' nodes."""
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, options={"pubsub#access_model": "open"}))
    server.stores.pubsub.subscribe(A, NODE, f"{C}/c", "s1")
    server.stores.pubsub.set_affiliations(A, NODE, {C: "member"})
    server.events.fire_all("user/deleted", C)
    results = []
    server.stores.pubsub.subscriptions(A, NODE).addCallback(results.append)
    server.stores.pubsub.affiliations(A, NODE).addCallback(results.append)
    assert results == [{}, {}]


def test_room_occupant_presence_is_not_a_contact() -> None:
    """Presence relayed by a group chat room (it carries muc#user) gets no
    last items, even with the caps of a client that wants them, and leaves
    nothing waiting for caps: an occupant JID is no contact, and a room of
    N occupants would otherwise leave N x N entries (one per occupant per
    local occupant)."""
    from tests.unit.fakes import stanza
    from tests.unit.pephelpers import disco_query
    from chatbx_server.features.caps import caps_hash
    from chatbx_server.xmpp import ns
    server = pep_server()
    alice = online(server, f"{A}/a")
    iq(alice, publish(NODE, PAYLOAD, "last", options={"pubsub#access_model": "open"}))
    ver = caps_hash("sha-1", disco_query([NODE + "+notify", ns.DISCO_INFO]))
    sent = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    for nick in ("one", "two"):
        server.router.route(stanza(
            f"<presence from='room@conference.remote.example/{nick}' to='{A}/a'>"
            f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{ver}'/>"
            "<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' "
            "role='participant'/></x></presence>"))
    pep = server.modules.get("pep")
    assert not pep._remote_waiting  # type: ignore[union-attr]
    server.stores.caps.put(f"sha-1:{ver}", [NODE + "+notify", ns.DISCO_INFO])
    server.router.route(stanza(
        f"<presence from='room@conference.remote.example/three' to='{A}/a'>"
        f"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='{ver}'/>"
        "<x xmlns='http://jabber.org/protocol/muc#user'/></presence>"))
    assert [m for m in sent if m.name == "message"] == []
