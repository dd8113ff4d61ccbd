"""Roster get/set/remove, pushes and versioning (RFC 6121 §2, XEP-0237)."""

from __future__ import annotations

from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, disconnect, make_server, stanza

MODULES = ["message", "roster", "presence"]


def setup(options: str = ""):
    if options:
        enabled = ", ".join(f'"{m}"' for m in MODULES)
        server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n[modules.roster]\n{options}")
    else:
        server = make_server(modules=MODULES)
    for user in ("a", "b", "c"):
        create_user(server, f"{user}@localhost")
    return server


def send(server, session, xml):
    server.router.route(stanza(xml), session)


def get_roster(server, session, ver=None):
    attr = "" if ver is None else f" ver='{ver}'"
    send(server, session, f"<iq type='get' id='g1'><query xmlns='jabber:iq:roster'{attr}/></iq>")
    return session.take()[-1]


def set_item(server, session, body, iq_id="s1"):
    send(server, session, f"<iq type='set' id='{iq_id}'><query xmlns='jabber:iq:roster'>{body}</query></iq>")


def result_of(session, iq_id):
    for el in session.sent:
        if el.name == "iq" and el.getAttribute("id") == iq_id:
            return el
    raise AssertionError(f"no reply {iq_id}: {[e.toXml() for e in session.sent]}")


def items(el):
    query = next(el.elements(ns.ROSTER, "query"), None)
    return [] if query is None else list(query.elements(ns.ROSTER, "item"))


def pushes(session):
    return [e for e in session.sent if e.name == "iq" and e.getAttribute("type") == "set"]


def error_condition(el):
    assert el.getAttribute("type") == "error", el.toXml()
    # live elements (what router.remote got) carry no stream namespace
    err = next(e for e in el.elements() if e.name == "error")
    return next(err.elements()).name


def test_empty_roster_get_marks_interested():
    """A roster get answers with an empty query and makes the resource interested."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    assert not a.roster_requested
    reply = get_roster(server, a)
    assert reply.getAttribute("type") == "result"
    assert items(reply) == []
    assert next(reply.elements(ns.ROSTER, "query")).getAttribute("ver") is None
    assert a.roster_requested


def test_set_pushes_to_interested_resources_only():
    """§2.3.2: a roster set is pushed to every interested resource, not to others."""
    server = setup()
    a1 = bind(server, "a@localhost/r1")
    a2 = bind(server, "a@localhost/r2")
    a3 = bind(server, "a@localhost/r3")
    get_roster(server, a1)
    get_roster(server, a2)
    set_item(server, a1, "<item jid='b@localhost' name='Bee'><group>Friends</group></item>")
    assert result_of(a1, "s1").getAttribute("type") == "result"
    for session in (a1, a2):
        (push,) = pushes(session)
        assert push["to"] == session.jid.full
        (item,) = items(push)
        assert item["jid"] == "b@localhost"
        assert item["name"] == "Bee"
        assert item["subscription"] == "none"
        assert [str(g) for g in item.elements(ns.ROSTER, "group")] == ["Friends"]
    assert a3.sent == []


def test_set_then_get_returns_item_and_store_keeps_it():
    """Items are stored: a later get (and the store) return name and groups."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    set_item(server, a, "<item jid='B@LOCALHOST' name='Bee'><group>x</group><group>y</group></item>")
    (item,) = items(get_roster(server, a))
    assert item["jid"] == "b@localhost"
    assert sorted(str(g) for g in item.elements(ns.ROSTER, "group")) == ["x", "y"]
    stored = server.stores.roster.get_item("a@localhost", "b@localhost").result
    assert stored.name == "Bee" and stored.groups == ("x", "y")


def test_client_cannot_set_subscription_ask_or_approved():
    """§2.3.2/§3.4: subscription (other than remove), ask and approved from a client are ignored."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    set_item(server, a, "<item jid='b@localhost' subscription='both' ask='subscribe' approved='true'/>")
    (item,) = items(get_roster(server, a))
    assert item["subscription"] == "none"
    assert item.getAttribute("ask") is None
    assert item.getAttribute("approved") is None


def test_update_keeps_subscription_state():
    """Renaming a contact does not change its subscription."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, a, "<presence to='b@localhost' type='subscribe'/>")
    send(server, b, "<presence to='a@localhost' type='subscribed'/>")
    set_item(server, a, "<item jid='b@localhost' name='New'/>")
    (item,) = items(get_roster(server, a))
    assert item["name"] == "New"
    assert item["subscription"] == "to"


def test_remove_pushes_remove_and_forgets_item():
    """§2.5: removal is pushed with subscription='remove' and the item is gone."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    get_roster(server, a)
    set_item(server, a, "<item jid='b@localhost'/>")
    a.take()
    set_item(server, a, "<item jid='b@localhost' subscription='remove'/>", "s2")
    assert result_of(a, "s2").getAttribute("type") == "result"
    (push,) = pushes(a)
    (item,) = items(push)
    assert item["subscription"] == "remove"
    assert items(get_roster(server, a)) == []


def test_remove_unknown_item_is_item_not_found():
    """§2.5.3: removing an item that is not there is item-not-found."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    set_item(server, a, "<item jid='b@localhost' subscription='remove'/>")
    assert error_condition(result_of(a, "s1")) == "item-not-found"


def test_remove_with_subscription_cancels_both_ways():
    """§2.5.2: removing a 'both' contact unsubscribes and cancels; the contact ends at 'none'."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    for s1, s2 in ((a, b), (b, a)):
        send(server, s1, f"<presence to='{s2.bare}' type='subscribe'/>")
        send(server, s2, f"<presence to='{s1.bare}' type='subscribed'/>")
    get_roster(server, b)
    b.take()
    set_item(server, a, "<item jid='b@localhost' subscription='remove'/>")
    received = {(e.name, e.getAttribute("type")) for e in b.sent}
    assert ("presence", "unsubscribe") in received
    assert ("presence", "unsubscribed") in received
    assert ("presence", "unavailable") in received
    assert server.stores.roster.get_item("b@localhost", "a@localhost").result.subscription == "none"
    assert server.stores.roster.get_item("a@localhost", "b@localhost").result is None


def test_versioning_current_ver_gets_empty_result():
    """XEP-0237: the current ver gets an empty result; a stale one the full roster and new ver."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    reply = get_roster(server, a, ver="")
    ver0 = next(reply.elements(ns.ROSTER, "query"))["ver"]
    set_item(server, a, "<item jid='b@localhost'/>")
    (push,) = pushes(a)
    ver1 = next(push.elements(ns.ROSTER, "query"))["ver"]
    assert ver1 != ver0
    current = get_roster(server, a, ver=ver1)
    assert current.getAttribute("type") == "result"
    assert list(current.elements()) == []
    stale = get_roster(server, a, ver=ver0)
    query = next(stale.elements(ns.ROSTER, "query"))
    assert query["ver"] == ver1
    assert [i["jid"] for i in items(stale)] == ["b@localhost"]


def test_pushes_carry_increasing_versions():
    """Every change bumps the version carried by the push."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    get_roster(server, a, ver="")
    set_item(server, a, "<item jid='b@localhost'/>")
    set_item(server, a, "<item jid='c@localhost'/>", "s2")
    vers = [int(next(p.elements(ns.ROSTER, "query"))["ver"]) for p in pushes(a)]
    assert vers == sorted(vers) and len(set(vers)) == 2


def test_other_account_is_forbidden():
    """§2.1.5: only the account itself may read or change its roster."""
    server = setup()
    b = bind(server, "b@localhost/r1")
    send(server, b, "<iq type='get' id='x' to='a@localhost'><query xmlns='jabber:iq:roster'/></iq>")
    assert error_condition(result_of(b, "x")) == "forbidden"
    send(server, b, "<iq type='set' id='y' to='a@localhost'><query xmlns='jabber:iq:roster'>"
                    "<item jid='c@localhost'/></query></iq>")
    assert error_condition(result_of(b, "y")) == "forbidden"


def test_validation_errors():
    """§2.3.3: bad item counts, JIDs, names and groups get the errors the RFC names."""
    server = setup("max_name_length = 5\nmax_group_length = 4\n")
    a = bind(server, "a@localhost/r1")
    cases = [
        ("<item jid='b@localhost'/><item jid='c@localhost'/>", "bad-request"),
        ("", "bad-request"),
        ("<item name='x'/>", "bad-request"),
        ("<item jid='b@localhost/res'/>", "bad-request"),
        ("<item jid='@@bad'/>", "jid-malformed"),
        ("<item jid='b@localhost' name='toolong'/>", "not-acceptable"),
        ("<item jid='b@localhost'><group></group></item>", "not-acceptable"),
        ("<item jid='b@localhost'><group>12345</group></item>", "not-acceptable"),
        ("<item jid='b@localhost'><group>g</group><group>g</group></item>", "bad-request"),
    ]
    for n, (body, condition) in enumerate(cases):
        set_item(server, a, body, f"v{n}")
        assert error_condition(result_of(a, f"v{n}")) == condition, body
    assert items(get_roster(server, a)) == []


def test_roster_size_limit():
    """A full roster refuses new items and still accepts updates."""
    server = setup("max_items = 1\n")
    a = bind(server, "a@localhost/r1")
    set_item(server, a, "<item jid='b@localhost'/>", "s1")
    set_item(server, a, "<item jid='c@localhost'/>", "s2")
    set_item(server, a, "<item jid='b@localhost' name='ok'/>", "s3")
    assert result_of(a, "s1")["type"] == "result"
    assert error_condition(result_of(a, "s2")) == "not-allowed"
    assert result_of(a, "s3")["type"] == "result"


def test_stream_features():
    """The roster advertises versioning and pre-approval stream features."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    names = {(el.uri, el.name) for el in server.modules.stream_features(a)}
    assert (ns.ROSTER_VER, "ver") in names
    assert (ns.PRE_APPROVAL, "sub") in names


def test_roster_cache_dropped_when_last_session_closes():
    """The roster stays in memory only while the account has sessions."""
    server = setup()
    a = bind(server, "a@localhost/r1")
    get_roster(server, a)
    feature = server.modules.get("roster")
    assert feature.cached("a@localhost") is not None
    disconnect(a)
    assert feature.cached("a@localhost") is None


def presence_errors(session):
    return [error_condition(e) for e in session.sent
            if e.name == "presence" and e.getAttribute("type") == "error"]


def test_subscriptions_respect_max_items():
    """Subscribe, approval and pre-approval create items too: past max_items they are refused
    with not-allowed, nothing is stored or routed, and changes to existing items still work."""
    server = setup("max_items = 1\n")
    remote = []
    server.router.remote = lambda event: remote.append(event.stanza) or True
    a = bind(server, "a@localhost/r1")
    send(server, a, "<presence><priority>1</priority></presence>")
    b = bind(server, "b@localhost/r1")
    send(server, b, "<presence/>")
    send(server, a, "<presence to='b@localhost' type='subscribe'/>")   # the one item
    a.take(), b.take()
    send(server, a, "<presence to='c@localhost' type='subscribe'/>")
    send(server, a, "<presence to='x@remote.example' type='subscribed'/>")  # pre-approval
    server.router.route(stanza("<presence from='y@remote.example' to='a@localhost' type='subscribe'/>"))
    send(server, a, "<presence to='y@remote.example' type='subscribed'/>")  # approval
    assert presence_errors(a) == ["not-allowed"] * 3
    refused = [e for e in a.sent if e.getAttribute("type") == "error"]
    assert all(e["to"] == "a@localhost/r1" for e in refused)
    assert [s.getAttribute("type") for s in remote] == []
    roster = server.stores.roster.get_roster("a@localhost").result[1]
    assert [i.jid for i in roster] == ["b@localhost"]
    send(server, b, "<presence to='a@localhost' type='subscribed'/>")  # the existing item changes
    assert server.stores.roster.get_item("a@localhost", "b@localhost").result.subscription == "to"


def test_pending_requests_are_bounded():
    """Inbound requests past max_pending_requests bounce with resource-constraint and are not
    stored; a repeated request and answers still work."""
    server = setup("max_pending_requests = 2\n")
    remote = []
    server.router.remote = lambda event: remote.append(event.stanza) or True
    for n in range(3):
        server.router.route(stanza(f"<presence from='s{n}@remote.example' to='a@localhost' type='subscribe'/>"))
    server.router.route(stanza("<presence from='s0@remote.example' to='a@localhost' type='subscribe'/>"))
    assert [(e["to"], error_condition(e)) for e in remote] == [("s2@remote.example", "resource-constraint")]
    requests = server.stores.roster.list_requests("a@localhost").result
    assert [c for c, _ in requests] == ["s0@remote.example", "s1@remote.example"]
    a = bind(server, "a@localhost/r1")
    send(server, a, "<presence/>")
    assert sorted(p["from"] for p in a.sent if p.getAttribute("type") == "subscribe") == [
        "s0@remote.example", "s1@remote.example"]
    send(server, a, "<presence to='s1@remote.example' type='unsubscribed'/>")
    server.router.route(stanza("<presence from='s2@remote.example' to='a@localhost' type='subscribe'/>"))
    assert [p["from"] for p in a.sent if p.getAttribute("type") == "subscribe"][-1] == "s2@remote.example"


def test_store_enforces_max_items_behind_a_stale_cache():
    """Items added elsewhere (another node) that the cache has not seen still count:
    the store refuses past max_items, and the stale cached roster is dropped."""
    from chatbx_server.storage.roster import RosterItem
    server = setup("max_items = 1\n")
    a = bind(server, "a@localhost/r1")
    get_roster(server, a)  # cached: no items
    server.stores.roster.set_item("a@localhost", RosterItem("b@localhost"))  # behind its back
    set_item(server, a, "<item jid='c@localhost'/>", "s1")
    assert error_condition(result_of(a, "s1")) == "not-allowed"
    assert [el["jid"] for el in items(get_roster(server, a))] == ["b@localhost"]
