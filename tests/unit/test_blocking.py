"""XEP-0191 Blocking Command (with XEP-0377 reports): the list, pushes, what a
block stops in each direction, presence at block/unblock, and the cache."""

from __future__ import annotations

from typing import Any, Optional

from twisted.words.xish import domish

from chatbx_server.features.blocking import NS_BLOCKING, NS_BLOCKING_ERRORS, NS_REPORTING, matches
from chatbx_server.features.carbons import NS_CARBONS
from chatbx_server.storage.roster import RosterItem
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID
from tests.unit.fakes import FakeSession, bind, create_user, make_server, stanza

ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"
MODULES = ["message", "roster", "presence", "offline", "disco", "ping", "carbons", "blocking"]


def setup(config: str = "", both: tuple[str, ...] = ()) -> Any:
    """A server with alice, bob, carol; ``both``: bob and carol are alice's
    mutual contacts when named there."""
    if config:
        server = make_server(config_text=f"[modules]\nenabled = {MODULES!r}\n".replace("'", '"')
                             + config)
    else:
        server = make_server(modules=MODULES)
    for user in (ALICE, BOB, CAROL):
        create_user(server, user)
    for contact in both:
        _result(server.stores.roster.set_item(ALICE, RosterItem(contact, subscription="both")))
        _result(server.stores.roster.set_item(contact, RosterItem(ALICE, subscription="both")))
    return server


def _result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def online(server: Any, jid: str, priority: int = 0) -> FakeSession:
    """Bound and available; what initial presence brought is forgotten."""
    session = bind(server, jid, available=True, priority=priority)
    session.take()
    return session


def send(server: Any, session: FakeSession, xml: str) -> Any:
    element = stanza(xml)
    element["from"] = session.jid.full
    return server.router.route(element, session)


def iq(server: Any, session: FakeSession, payload: str, type_: str = "set") -> domish.Element:
    """Send an IQ with no 'to'; return the reply (pushes stay in session.sent)."""
    before = len(session.sent)
    send(server, session, f"<iq type='{type_}' id='q1'>{payload}</iq>")
    replies = [s for s in session.sent[before:] if s.name == "iq" and s.getAttribute("id") == "q1"]
    assert len(replies) == 1, [s.toXml() for s in session.sent[before:]]
    session.sent.remove(replies[0])
    return replies[0]


def block(server: Any, session: FakeSession, *jids: str, extra: str = "") -> domish.Element:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return iq(server, session, f"<block xmlns='{NS_BLOCKING}'>{items}{extra}</block>")


def unblock(server: Any, session: FakeSession, *jids: str) -> domish.Element:
    items = "".join(f"<item jid='{j}'/>" for j in jids)
    return iq(server, session, f"<unblock xmlns='{NS_BLOCKING}'>{items}</unblock>")


def blocklist(server: Any, session: FakeSession) -> list[str]:
    reply = iq(server, session, f"<blocklist xmlns='{NS_BLOCKING}'/>", "get")
    assert reply["type"] == "result"
    return [i["jid"] for i in reply.firstChildElement().elements(NS_BLOCKING, "item")]


def condition(reply: domish.Element) -> str:
    error = next(c for c in reply.elements() if c.name == "error")
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def app_error(reply: domish.Element) -> Optional[str]:
    error = next(c for c in reply.elements() if c.name == "error")
    for c in error.elements():
        if c.uri != ns.STANZA_ERRORS:
            return f"{{{c.uri}}}{c.name}"
    return None


def of(session: FakeSession, name: str, sender: Optional[str] = None) -> list[domish.Element]:
    return [s for s in session.sent if s.name == name
            and (sender is None or s.getAttribute("from", "").startswith(sender))]


def test_matching_order_of_xep_0016() -> None:
    """§2: full JID matches that resource only, bare any resource, domain/resource
    that resource of the domain, domain everything at it and its subdomains."""
    def m(items: set[str], jid: str) -> bool:
        return matches(frozenset(items), JID.parse(jid))

    assert m({"eve@evil.example/phone"}, "eve@evil.example/phone")
    assert not m({"eve@evil.example/phone"}, "eve@evil.example/desk")
    assert not m({"eve@evil.example/phone"}, "eve@evil.example")
    assert m({"eve@evil.example"}, "eve@evil.example/any") and m({"eve@evil.example"}, "eve@evil.example")
    assert not m({"eve@evil.example"}, "adam@evil.example")
    assert m({"evil.example/bot"}, "evil.example/bot") and m({"evil.example/bot"}, "x@evil.example/bot")
    assert not m({"evil.example/bot"}, "x@evil.example/other")
    assert m({"evil.example"}, "evil.example") and m({"evil.example"}, "x@evil.example/r")
    assert m({"evil.example"}, "room@muc.evil.example/nick")
    assert not m({"evil.example"}, "x@notevil.example") and not m(set(), "x@evil.example")


def test_list_block_unblock_with_pushes_to_interested_resources() -> None:
    """§3.2-§3.5: the list starts empty; block/unblock/unblock-all answer a result
    and are pushed to every resource that fetched the list (and only those)."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    phone = bind(server, f"{ALICE}/phone")
    quiet = bind(server, f"{ALICE}/quiet")
    assert blocklist(server, desk) == [] and blocklist(server, phone) == []
    assert block(server, desk, "Eve@Evil.example", "spam.example")["type"] == "result"
    assert blocklist(server, desk) == ["eve@evil.example", "spam.example"]  # prepared
    for session in (desk, phone):
        [push] = of(session, "iq")
        assert push["type"] == "set" and push["to"] == session.jid.full
        query = push.firstChildElement()
        assert query.name == "block" and query.uri == NS_BLOCKING
        assert [i["jid"] for i in query.elements(NS_BLOCKING, "item")] == ["eve@evil.example", "spam.example"]
        session.take()
    assert quiet.sent == []
    assert unblock(server, phone, "spam.example")["type"] == "result"
    assert blocklist(server, desk) == ["eve@evil.example"]
    [push] = of(desk, "iq")
    assert push.firstChildElement().name == "unblock"
    desk.take(), phone.take()
    assert unblock(server, desk)["type"] == "result"  # unblock all
    assert blocklist(server, desk) == []
    [push] = of(phone, "iq")
    assert push.firstChildElement().name == "unblock" and push.firstChildElement().firstChildElement() is None


def test_bad_requests() -> None:
    """§3.3: a block without items is bad-request; a bad JID is jid-malformed, a
    missing one bad-request; another account's list is not reachable."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    assert condition(iq(server, desk, f"<block xmlns='{NS_BLOCKING}'/>")) == "bad-request"
    assert condition(block(server, desk, "a@b@c")) == "jid-malformed"
    assert condition(iq(server, desk, f"<block xmlns='{NS_BLOCKING}'><item/></block>")) == "bad-request"
    send(server, desk, f"<iq type='get' id='x' to='{BOB}'><blocklist xmlns='{NS_BLOCKING}'/></iq>")
    assert condition(desk.take()[-1]) == "service-unavailable"
    assert blocklist(server, desk) == []


def test_max_items() -> None:
    """[modules.blocking] max_items bounds each list: a block past it is
    not-allowed and changes nothing."""
    server = setup(config="[modules.blocking]\nmax_items = 2\n")
    desk = bind(server, f"{ALICE}/desk")
    assert block(server, desk, "a.example", "b.example")["type"] == "result"
    assert condition(block(server, desk, "c.example")) == "not-allowed"
    assert condition(block(server, desk, "c.example", "d.example", "e.example")) == "not-allowed"
    assert blocklist(server, desk) == ["a.example", "b.example"]


def test_messages_from_blocked_jids_are_bounced_and_not_stored() -> None:
    """§3.3: chat/normal from a blocked JID get service-unavailable (the user looks
    offline), headline/groupchat/error are dropped; nothing is delivered, copied
    (carbons) or stored offline."""
    server = setup()
    alice = online(server, f"{ALICE}/desk", priority=1)
    phone = online(server, f"{ALICE}/phone")
    iq(server, phone, f"<enable xmlns='{NS_CARBONS}'/>")
    bob = online(server, f"{BOB}/home")
    carol = online(server, f"{CAROL}/home")
    block(server, alice, BOB)
    alice.take(), phone.take()
    for mtype in ("chat", "normal"):
        send(server, bob, f"<message to='{ALICE}' type='{mtype}' id='m'><body>hi</body></message>")
        [error] = of(bob, "message")
        assert error["type"] == "error" and condition(error) == "service-unavailable"
        assert error["from"] == ALICE
        bob.take()
    send(server, bob, f"<message to='{ALICE}/desk' type='headline'><body>h</body></message>")
    send(server, bob, f"<message to='{ALICE}' type='error'/>")
    assert bob.take() == [] and alice.sent == [] and phone.sent == []
    # Offline: the same, and nothing is kept for later.
    for session in (alice, phone):
        session.close()
        server.sessions.remove(session)
        server.events.fire_all("session/closed", session)
    send(server, bob, f"<message to='{ALICE}' type='chat'><body>later</body></message>")
    assert condition(of(bob, "message")[0]) == "service-unavailable"
    assert _result(server.stores.offline.count(ALICE)) == 0
    # Others still get through.
    _result(send(server, carol, f"<message to='{ALICE}' type='chat'><body>c</body></message>"))
    assert _result(server.stores.offline.count(ALICE)) == 1 and carol.take() == []


def test_each_form_of_item_blocks_what_it_matches() -> None:
    """A blocked full JID stops only that resource; a domain blocks its users."""
    server = setup()
    alice = online(server, f"{ALICE}/desk")
    bob_home = online(server, f"{BOB}/home")
    bob_work = online(server, f"{BOB}/work")
    block(server, alice, f"{BOB}/home")
    alice.take()
    send(server, bob_home, f"<message to='{ALICE}' type='chat'><body>1</body></message>")
    send(server, bob_work, f"<message to='{ALICE}' type='chat'><body>2</body></message>")
    assert [str(m.firstChildElement()) for m in of(alice, "message")] == ["2"]
    unblock(server, alice)
    block(server, alice, "localhost")
    alice.take()
    send(server, bob_work, f"<message to='{ALICE}' type='chat'><body>3</body></message>")
    assert of(alice, "message") == []
    assert condition(of(bob_work, "message")[-1]) == "service-unavailable"


def test_presence_and_iq_from_blocked_jids() -> None:
    """§3.3: presence from a blocked JID (also subscription requests) is dropped
    without an error; IQ get/set is answered service-unavailable, results dropped."""
    server = setup()
    alice = online(server, f"{ALICE}/desk")
    bob = online(server, f"{BOB}/home")
    block(server, alice, BOB)
    alice.take()
    send(server, bob, f"<presence to='{ALICE}'/>")
    send(server, bob, f"<presence to='{ALICE}' type='subscribe'/>")
    send(server, bob, f"<iq type='result' id='r' to='{ALICE}/desk'/>")
    assert alice.sent == [] and bob.sent == []
    assert _result(server.stores.roster.load(ALICE))[2] == []  # no stored request
    send(server, bob, f"<iq type='get' id='v' to='{ALICE}/desk'><query xmlns='jabber:iq:version'/></iq>")
    send(server, bob, f"<iq type='get' id='d' to='{ALICE}'>"
                      f"<query xmlns='{ns.DISCO_INFO}'/></iq>")
    assert [condition(r) for r in of(bob, "iq")] == ["service-unavailable", "service-unavailable"]
    assert alice.sent == []


def test_what_the_user_sends_to_a_blocked_jid_is_refused() -> None:
    """§3.3: messages, IQs and presence the user sends to a blocked JID get
    not-acceptable with <blocked xmlns='urn:xmpp:blocking:errors'/>; errors are
    dropped; nothing reaches the blocked JID, and no carbon is made."""
    server = setup()
    alice = online(server, f"{ALICE}/desk")
    phone = online(server, f"{ALICE}/phone")
    iq(server, phone, f"<enable xmlns='{NS_CARBONS}'/>")
    bob = online(server, f"{BOB}/home")
    block(server, alice, BOB)
    alice.take(), phone.take(), bob.take()
    send(server, alice, f"<message to='{BOB}' type='chat' id='m1'><body>psst</body></message>")
    send(server, alice, f"<iq type='get' id='i1' to='{BOB}/home'><ping xmlns='urn:xmpp:ping'/></iq>")
    send(server, alice, f"<presence to='{BOB}/home'/>")
    send(server, alice, f"<message to='{BOB}' type='error' id='e1'/>")
    replies = alice.take()
    assert [(r.name, r["type"], condition(r), app_error(r)) for r in replies] == [
        (name, "error", "not-acceptable", f"{{{NS_BLOCKING_ERRORS}}}blocked")
        for name in ("message", "iq", "presence")]
    err = next(c for c in replies[0].elements() if c.name == "error")
    assert err["type"] == "cancel" and replies[0]["from"] == BOB
    assert bob.sent == [] and phone.sent == []


def test_own_resources_and_own_server_are_never_blocked() -> None:
    """Blocking one's own domain does not stop messages between one's own
    resources nor IQs to one's own server (the client keeps working)."""
    server = setup()
    desk = online(server, f"{ALICE}/desk")
    phone = online(server, f"{ALICE}/phone")
    block(server, desk, "localhost")
    desk.take(), phone.take()
    send(server, desk, f"<message to='{ALICE}/phone' type='chat'><body>self</body></message>")
    assert len(of(phone, "message")) == 1
    send(server, desk, "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert desk.take()[-1]["type"] == "result"


def test_block_sends_unavailable_and_hides_later_presence() -> None:
    """§3.3: at the block, each available resource of the user sends unavailable
    to a subscribed contact; after it, the user's presence broadcasts and probe
    answers never reach that contact; another contact is unaffected."""
    server = setup(both=(BOB, CAROL))
    bob = online(server, f"{BOB}/home")
    carol = online(server, f"{CAROL}/home")
    desk = online(server, f"{ALICE}/desk")
    phone = online(server, f"{ALICE}/phone")
    assert of(bob, "presence", ALICE) and of(carol, "presence", ALICE)
    bob.take(), carol.take()
    block(server, desk, BOB)
    gone = of(bob, "presence", ALICE)
    assert sorted((p["from"], p["type"]) for p in gone) == [
        (f"{ALICE}/desk", "unavailable"), (f"{ALICE}/phone", "unavailable")]
    assert carol.sent == []
    bob.take()
    send(server, desk, "<presence><show>away</show></presence>")
    assert of(bob, "presence", ALICE) == [] and len(of(carol, "presence", ALICE)) == 1
    # Bob logs in again: his probe gets no answer from alice's resources.
    bob2 = bind(server, f"{BOB}/phone", available=True)
    assert of(bob2, "presence", BOB)  # the probe answers came (from bob/home)
    assert of(bob2, "presence", ALICE) == []
    # And presence from bob does not reach alice either.
    assert of(desk, "presence", BOB) == []


def test_unblock_sends_current_presence_again() -> None:
    """§3.4: after unblocking, a subscribed contact gets the user's current
    presence, and later broadcasts reach it again."""
    server = setup(both=(BOB,))
    bob = online(server, f"{BOB}/home")
    desk = online(server, f"{ALICE}/desk")
    block(server, desk, BOB)
    bob.take()
    unblock(server, desk, BOB)
    [back] = of(bob, "presence", ALICE)
    assert back["from"] == f"{ALICE}/desk" and back.getAttribute("type") is None
    bob.take()
    send(server, desk, "<presence><show>dnd</show></presence>")
    assert len(of(bob, "presence", ALICE)) == 1


def test_block_drops_pending_subscription_request() -> None:
    """A pending subscription request from a newly blocked JID is forgotten (the
    user could not answer it any more)."""
    server = setup()
    desk = online(server, f"{ALICE}/desk")
    bob = online(server, f"{BOB}/home")
    send(server, bob, f"<presence to='{ALICE}' type='subscribe'/>")
    assert [c for c, _ in _result(server.stores.roster.load(ALICE))[2]] == [BOB]
    block(server, desk, BOB)
    assert _result(server.stores.roster.load(ALICE))[2] == []


def test_spam_report_is_stored_with_the_block() -> None:
    """XEP-0377: a report inside a block item is stored (reason, text, stanza-ids)
    and the JID is blocked; a report without a reason is ignored, the block stands."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    report = (f"<report xmlns='{NS_REPORTING}' reason='urn:xmpp:reporting:spam'>"
              "<stanza-id xmlns='urn:xmpp:sid:0' by='spam@evil.example' id='s1'/>"
              "<text xml:lang='en'> buy now </text></report>")
    reply = iq(server, desk, f"<block xmlns='{NS_BLOCKING}'><item jid='spam@evil.example'>{report}"
                             f"</item><item jid='other@evil.example'><report xmlns='{NS_REPORTING}'/>"
                             "</item></block>")
    assert reply["type"] == "result"
    assert blocklist(server, desk) == ["other@evil.example", "spam@evil.example"]
    [stored] = _result(server.stores.blocking.list_reports())
    assert (stored.reporter, stored.jid, stored.reason, stored.text, stored.stanza_ids) == (
        ALICE, "spam@evil.example", "urn:xmpp:reporting:spam", "buy now", (("spam@evil.example", "s1"),))


def test_lists_come_from_the_database_once_and_are_cached() -> None:
    """A list not in memory is read from the store (the stanza waits for it), once;
    later stanzas use the cache: no database read per stanza."""
    server = setup()
    desk = online(server, f"{ALICE}/desk")
    block(server, desk, BOB)
    feature = server.modules.get("blocking")
    feature._online.clear()
    feature._recent.clear()
    store = server.stores.blocking
    reads: list[str] = []
    real_load = store.load
    store.load = lambda user: (reads.append(user), real_load(user))[1]
    bob = online(server, f"{BOB}/home")
    carol = online(server, f"{CAROL}/home")
    desk.take()
    for n in range(5):
        send(server, bob, f"<message to='{ALICE}' type='chat'><body>{n}</body></message>")
        send(server, carol, f"<message to='{ALICE}' type='chat'><body>{n}</body></message>")
    assert len(of(bob, "message")) == 5 and all(condition(m) == "service-unavailable" for m in of(bob, "message"))
    assert len(of(desk, "message")) == 5
    assert sorted(reads) == [ALICE, BOB, CAROL]  # each once: alice's for the inbound checks,
    # bob's and carol's for their outbound ones


def test_disco_advertises_blocking_and_reporting() -> None:
    """XEP-0191 §3.1 and XEP-0377 §3: both features in the server's disco#info."""
    server = setup()
    desk = bind(server, f"{ALICE}/desk")
    send(server, desk, f"<iq type='get' id='d1' to='localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    [reply] = desk.take()
    features = {f["var"] for f in reply.firstChildElement().elements(ns.DISCO_INFO, "feature")}
    assert {NS_BLOCKING, NS_REPORTING} <= features


def test_unavailable_at_block_arrives_when_the_contacts_list_loads_late() -> None:
    """The unavailable sent at the block waits for the contact's list like any
    stanza; it is delivered when that list arrives, although the block is in
    force by then."""
    from twisted.internet import defer

    server = setup(both=(BOB,))
    bob = online(server, f"{BOB}/home")
    desk = online(server, f"{ALICE}/desk")
    bob.take()
    server.modules.get("blocking")._online.pop(BOB)
    store = server.stores.blocking
    pending: defer.Deferred = defer.Deferred()
    real_load = store.load
    store.load = lambda user: pending if user == BOB else real_load(user)
    assert block(server, desk, BOB)["type"] == "result"
    assert bob.sent == []
    pending.callback([])
    assert [(p["from"], p["type"]) for p in of(bob, "presence", ALICE)] == [(f"{ALICE}/desk", "unavailable")]
    send(server, desk, "<presence><show>away</show></presence>")
    assert len(of(bob, "presence", ALICE)) == 1


def test_chatbxctl_reports_list(tmp_path: Any, capsys: Any) -> None:
    """`chatbxctl reports list` prints the stored reports newest first, one
    tab-separated line each, bounded by --limit and narrowed by --reporter."""
    from chatbx_server import cli
    from chatbx_server.storage import Stores, migrate
    from chatbx_server.storage.blocking import SpamReport
    from chatbx_server.storage.database import Database
    from twisted.internet.task import Clock

    (tmp_path / "data").mkdir()
    url = f"sqlite:///{tmp_path / 'data' / 'chatbx.sqlite'}"
    migrate.upgrade(url)
    config = tmp_path / "chatbx.toml"
    config.write_text(f'domains = ["localhost"]\ndata_dir = "{tmp_path / "data"}"\n')
    db = Database(url, threadless=True)
    db.start()
    clock = Clock()
    clock.advance(1_700_000_000)
    stores = Stores(db, clock)
    _result(stores.users.create_many([(ALICE, "p"), (BOB, "p")]))
    _result(stores.blocking.block(ALICE, ["spam@evil.example"], [SpamReport(
        ALICE, "spam@evil.example", "urn:xmpp:reporting:spam", "buy\tnow",
        (("spam@evil.example", "s1"),))]))
    clock.advance(60)
    _result(stores.blocking.block(BOB, ["evil.example"], [SpamReport(
        BOB, "evil.example", "urn:xmpp:reporting:abuse")]))
    db.stop()

    assert cli.main(["--config", str(config), "reports", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"2023-11-14T22:14:20Z\t{BOB}\tevil.example\turn:xmpp:reporting:abuse\t-\t-",
        f'2023-11-14T22:13:20Z\t{ALICE}\tspam@evil.example\turn:xmpp:reporting:spam\t"buy\\tnow"'
        "\tspam@evil.example#s1"]
    assert cli.main(["--config", str(config), "reports", "list", "-n", "1"]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == [BOB]
    assert cli.main(["--config", str(config), "reports", "list", "--reporter", ALICE]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == [ALICE]


def test_max_reports_bounds_what_one_account_stores() -> None:
    """[modules.blocking] max_reports: reports past it are not stored, the block still applies."""
    server = setup(config="[modules.blocking]\nmax_reports = 1\n")
    desk = bind(server, f"{ALICE}/desk")
    report = f"<report xmlns='{NS_REPORTING}' reason='urn:xmpp:reporting:spam'/>"
    for jid in ("a@spam.example", "b@spam.example"):
        reply = iq(server, desk, f"<block xmlns='{NS_BLOCKING}'><item jid='{jid}'>{report}</item></block>")
        assert reply["type"] == "result"
    assert blocklist(server, desk) == ["a@spam.example", "b@spam.example"]
    assert [r.jid for r in _result(server.stores.blocking.list_reports())] == ["a@spam.example"]


def test_login_traffic_to_self_and_server_reads_no_list() -> None:
    """Roster get, initial presence and a ping to the server (what a login sends)
    need no block list: none is read from the database for them."""
    server = setup()
    store = server.stores.blocking
    reads: list[str] = []
    real_load = store.load
    store.load = lambda user: (reads.append(user), real_load(user))[1]
    desk = bind(server, f"{ALICE}/desk")
    send(server, desk, "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    send(server, desk, "<presence/>")
    send(server, desk, "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert [s["type"] for s in desk.sent if s.name == "iq"] == ["result", "result"]
    assert reads == []
