"""Multi-User Chat (chatbx_server/muc): XEP-0045 rules, one test per rule,
on a fake server; stanzas go in through the clients' real streams and come
out parsed from the wire."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.words.xish import domish

from chatbx_server.c2s import stream as c2s
from chatbx_server.server import Server
from chatbx_server.xmpp.stanzas import parse_stanza
from tests.unit.fakes import bind, create_user, disconnect, make_server

MUC = "http://jabber.org/protocol/muc"
USER = MUC + "#user"
ADMIN = MUC + "#admin"
OWNER = MUC + "#owner"
ROOM = "room@conference.localhost"


def send(session: Any, xml: str) -> None:
    """What the client writes on its stream (the stream stamps 'from')."""
    session.stream.dataReceived(c2s.CLIENT_STREAMS.serialize(parse_stanza(xml)).encode())


def join(session: Any, nick: str, room: str = ROOM, extra: str = "") -> list[domish.Element]:
    send(session, f"<presence to='{room}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>")
    return session.take()


def codes(stanza: domish.Element) -> set[int]:
    out = set()
    for x in stanza.elements(USER, "x"):
        for status in x.elements(USER, "status"):
            out.add(int(status["code"]))
    return out


def item(stanza: domish.Element) -> Optional[domish.Element]:
    for x in stanza.elements(USER, "x"):
        return next(x.elements(USER, "item"), None)
    return None


def child(stanza: domish.Element, name: str) -> Optional[domish.Element]:
    """The first child element called ``name``, whatever its namespace."""
    return next((c for c in stanza.elements() if c.name == name), None)


def condition(stanza: domish.Element) -> str:
    assert stanza.getAttribute("type") == "error", stanza.toXml()
    err = child(stanza, "error")
    assert err is not None
    return [c.name for c in err.elements() if c.name != "text"][0]


def iq(session: Any, xml: str) -> domish.Element:
    send(session, xml)
    replies = [e for e in session.take() if e.name == "iq"]
    assert len(replies) == 1, [e.toXml() for e in replies]
    return replies[0]


def configure(session: Any, fields: dict[str, str], room: str = ROOM) -> domish.Element:
    body = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return iq(session, f"<iq type='set' id='cfg' to='{room}'><query xmlns='{OWNER}'>"
                       f"<x xmlns='jabber:x:data' type='submit'>{body}</x></query></iq>")


def admin(session: Any, items: str, room: str = ROOM) -> domish.Element:
    return iq(session, f"<iq type='set' id='adm' to='{room}'><query xmlns='{ADMIN}'>{items}"
                       f"</query></iq>")


def groupchat(session: Any, body: str, room: str = ROOM, extra: str = "") -> None:
    send(session, f"<message type='groupchat' to='{room}' id='m{len(body)}'><body>{body}</body>"
                  f"{extra}</message>")


def bodies(stanzas: list[domish.Element]) -> list[str]:
    return [str(child(s, "body")) for s in stanzas
            if s.name == "message" and child(s, "body") is not None]


@pytest.fixture
def server() -> Server:
    srv = make_server()
    for user in ("alice", "bob", "carol"):
        create_user(srv, f"{user}@localhost")
    return srv


@pytest.fixture
def alice(server: Server) -> Any:
    return bind(server, "alice@localhost/a", available=True)


@pytest.fixture
def bob(server: Server) -> Any:
    return bind(server, "bob@localhost/b", available=True)


@pytest.fixture
def carol(server: Server) -> Any:
    return bind(server, "carol@localhost/c", available=True)


@pytest.fixture
def room(server: Server, alice: Any, bob: Any) -> str:
    """An open room owned by alice (instant configuration), bob joined."""
    alice.take()
    bob.take()
    join(alice, "Alice")
    assert configure(alice, {})["type"] == "result"
    join(bob, "Bob")
    alice.take()
    return ROOM


# -- entering -----------------------------------------------------------------------

def test_first_join_creates_a_locked_room(server: Server, alice: Any, bob: Any) -> None:
    """The creator becomes owner/moderator with 110+201; the room refuses
    others (item-not-found) until the owner accepts the instant configuration."""
    alice.take(); bob.take()
    out = join(alice, "Alice")
    pres = out[0]
    assert pres["from"] == f"{ROOM}/Alice" and codes(pres) >= {110, 201}
    assert item(pres)["affiliation"] == "owner" and item(pres)["role"] == "moderator"
    assert out[-1].name == "message" and child(out[-1], "subject") is not None
    assert condition(join(bob, "Bob")[0]) == "item-not-found"
    assert configure(alice, {})["type"] == "result"
    assert codes(join(bob, "Bob")[-2]) >= {110}


def test_join_order_and_visibility(room: str, alice: Any, bob: Any, carol: Any) -> None:
    """A newcomer gets the others' presence, then its own (110) last, then the
    subject; in a semi-anonymous room only moderators see real JIDs."""
    carol.take()
    out = join(carol, "Carol")
    pres = [e for e in out if e.name == "presence"]
    assert [p["from"] for p in pres][-1] == f"{ROOM}/Carol" and 110 in codes(pres[-1])
    assert {p["from"] for p in pres[:-1]} == {f"{ROOM}/Alice", f"{ROOM}/Bob"}
    assert all(item(p).getAttribute("jid") is None for p in pres[:-1])
    assert out[-1].name == "message"
    seen_by_alice = alice.take()[0]
    assert item(seen_by_alice)["jid"] == "carol@localhost/c"  # alice is moderator
    seen_by_bob = bob.take()[0]
    assert item(seen_by_bob).getAttribute("jid") is None


def test_nick_conflict_is_case_insensitive(room: str, carol: Any) -> None:
    """RFC 7700: 'bob' and 'BOB' are the same nick as 'Bob': conflict."""
    carol.take()
    assert condition(join(carol, "BOB")[0]) == "conflict"
    assert condition(join(carol, "bob")[0]) == "conflict"


def test_bad_nick_and_missing_nick(room: str, carol: Any) -> None:
    """A nick PRECIS refuses is jid-malformed; presence without nick too (§7.2.1)."""
    carol.take()
    assert condition(join(carol, "\u2028bell")[0]) == "jid-malformed"
    send(carol, f"<presence to='{ROOM}'><x xmlns='{MUC}'/></presence>")
    assert condition(carol.take()[0]) == "jid-malformed"


def test_presence_injection_is_stripped(room: str, alice: Any, carol: Any) -> None:
    """Items, status codes and occupant ids a client puts in its presence are
    removed; the room's own are added."""
    carol.take()
    send(carol, f"<presence to='{ROOM}/Carol'><x xmlns='{MUC}'/><x xmlns='{USER}'>"
                f"<item affiliation='owner' role='moderator'/><status code='201'/></x>"
                f"<occupant-id xmlns='urn:xmpp:occupant-id:0' id='fake'/>"
                f"<status>hi</status></presence>")
    pres = alice.take()[0]
    assert item(pres)["affiliation"] == "none" and item(pres)["role"] == "participant"
    assert len(list(pres.elements(USER, "x"))) == 1 and codes(pres) == set()
    oids = [e["id"] for e in pres.elements("urn:xmpp:occupant-id:0", "occupant-id")]
    assert len(oids) == 1 and oids != ["fake"]
    assert str(child(pres, "status")) == "hi"


def test_members_only_and_password(server: Server, room: str, alice: Any, carol: Any) -> None:
    """Members-only refuses non-members (registration-required); a password
    room refuses a missing or wrong password (not-authorized)."""
    carol.take()
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    assert condition(join(carol, "Carol")[0]) == "registration-required"
    admin(alice, "<item affiliation='member' jid='carol@localhost'/>")
    configure(alice, {"muc#roomconfig_passwordprotectedroom": "1",
                      "muc#roomconfig_roomsecret": "s3cret"})
    carol.take()
    assert condition(join(carol, "Carol")[0]) == "not-authorized"
    assert condition(join(carol, "Carol", extra="<password>nope</password>")[0]) == \
        "not-authorized"
    out = join(carol, "Carol", extra="<password>s3cret</password>")
    assert any(110 in codes(e) for e in out)


def test_max_occupants(server: Server, room: str, alice: Any, carol: Any) -> None:
    """A full room refuses newcomers with service-unavailable (wait) (§7.2.10)."""
    configure(alice, {"muc#roomconfig_maxusers": "2"})
    carol.take()
    err = join(carol, "Carol")[0]
    assert condition(err) == "service-unavailable"
    assert child(err, "error")["type"] == "wait"


# -- talking ------------------------------------------------------------------------

def test_groupchat_reflected_with_ids(room: str, alice: Any, bob: Any) -> None:
    """A groupchat message reaches every occupant from room/nick with the
    room's stanza-id and occupant-id; forged ones are removed."""
    groupchat(bob, "hello", extra="<stanza-id xmlns='urn:xmpp:sid:0' id='x' by='"
                                   f"{ROOM}'/><occupant-id xmlns='urn:xmpp:occupant-id:0' "
                                   "id='forged'/>")
    for session in (alice, bob):
        [msg] = session.take()
        assert msg["from"] == f"{ROOM}/Bob" and msg["type"] == "groupchat"
        sids = list(msg.elements("urn:xmpp:sid:0", "stanza-id"))
        assert len(sids) == 1 and sids[0]["id"] != "x" and sids[0]["by"] == ROOM
        oids = [e["id"] for e in msg.elements("urn:xmpp:occupant-id:0", "occupant-id")]
        assert len(oids) == 1 and oids[0] != "forged"


def test_non_occupant_cannot_talk(room: str, carol: Any) -> None:
    """§7.4: groupchat from someone not in the room is not-acceptable."""
    carol.take()
    groupchat(carol, "x")
    assert condition(carol.take()[0]) == "not-acceptable"


def test_rate_limit(server: Server, room: str, bob: Any) -> None:
    """More than the burst in no time gets resource-constraint; time refills it."""
    bob.take()
    for i in range(25):
        groupchat(bob, f"m{i}")
    errors = [e for e in bob.take() if e.getAttribute("type") == "error"]
    assert errors and condition(errors[0]) == "resource-constraint"
    server.clock.advance(10)
    groupchat(bob, "later")
    assert bodies(bob.take()) == ["later"]


def test_subject_rules(room: str, alice: Any, bob: Any, carol: Any) -> None:
    """Participants may not change the subject unless allowed; a moderator's
    subject is broadcast and sent to newcomers after the history."""
    send(bob, f"<message type='groupchat' to='{ROOM}'><subject>mine</subject></message>")
    assert condition(bob.take()[0]) == "forbidden"
    send(alice, f"<message type='groupchat' to='{ROOM}'><subject>Topic</subject></message>")
    assert str(child(bob.take()[0], "subject")) == "Topic"
    carol.take()
    out = join(carol, "Carol")
    assert out[-1]["from"] == f"{ROOM}/Alice"
    assert str(child(out[-1], "subject")) == "Topic"


def test_history_limits(server: Server, room: str, alice: Any, carol: Any) -> None:
    """History on join honours maxstanzas, seconds and maxchars, with delay stamps."""
    for i in range(5):
        groupchat(alice, f"h{i}")
        server.clock.advance(60)
    carol.take()
    assert bodies(join(carol, "Carol")) == ["h0", "h1", "h2", "h3", "h4"]
    send(carol, f"<presence to='{ROOM}/Carol' type='unavailable'/>")
    out = join(carol, "Carol", extra="<history maxstanzas='2'/>")
    assert bodies(out) == ["h3", "h4"]
    msg = [e for e in out if e.name == "message" and bodies([e])][0]
    assert next(msg.elements("urn:xmpp:delay", "delay"))["from"] == ROOM
    send(carol, f"<presence to='{ROOM}/Carol' type='unavailable'/>")
    assert bodies(join(carol, "Carol", extra="<history seconds='150'/>")) == ["h3", "h4"]
    send(carol, f"<presence to='{ROOM}/Carol' type='unavailable'/>")
    assert bodies(join(carol, "Carol", extra="<history maxchars='0'/>")) == []


def test_private_messages(room: str, alice: Any, bob: Any) -> None:
    """PMs go through the room from room/nick; allowpm=none forbids them;
    an unknown nick is item-not-found."""
    send(bob, f"<message type='chat' to='{ROOM}/Alice'><body>psst</body></message>")
    [pm] = alice.take()
    assert pm["from"] == f"{ROOM}/Bob" and bodies([pm]) == ["psst"]
    assert next(pm.elements(USER, "x"), None) is not None
    send(bob, f"<message type='chat' to='{ROOM}/Nobody'><body>x</body></message>")
    assert condition(bob.take()[0]) == "item-not-found"
    configure(alice, {"muc#roomconfig_allowpm": "none"})
    bob.take()
    send(bob, f"<message type='chat' to='{ROOM}/Alice'><body>x</body></message>")
    assert condition(bob.take()[0]) == "forbidden"


def test_nick_change(room: str, alice: Any, bob: Any) -> None:
    """§7.6: unavailable with 303 and the new nick, then presence from it."""
    send(bob, f"<presence to='{ROOM}/Robert'/>")
    first, second = alice.take()
    assert first["type"] == "unavailable" and 303 in codes(first)
    assert item(first)["nick"] == "Robert" and second["from"] == f"{ROOM}/Robert"
    own = bob.take()
    assert 110 in codes(own[0]) and 303 in codes(own[0])


def test_leave_and_temporary_room_vanishes(server: Server, room: str, alice: Any,
                                           bob: Any) -> None:
    """Leaving sends unavailable (110 to self); the temporary room goes with
    its last occupant; a dropped connection leaves too."""
    send(bob, f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    assert 110 in codes(bob.take()[0])
    assert alice.take()[0]["type"] == "unavailable"
    disconnect(alice)
    muc = server.modules.get("muc")
    assert ROOM not in muc.rooms  # type: ignore[union-attr]


# -- moderation -------------------------------------------------------------------------

def test_kick_and_ban(room: str, alice: Any, bob: Any, carol: Any) -> None:
    """A moderator kicks (307) and an admin bans (301, rejoin forbidden);
    a participant may not kick."""
    carol.take()
    join(carol, "Carol")
    alice.take(); bob.take()
    assert condition(admin(bob, "<item nick='Carol' role='none'/>")) == "forbidden"
    assert admin(alice, "<item nick='Carol' role='none'><reason>out</reason></item>")["type"] \
        == "result"
    kicked = [e for e in bob.take() if e.name == "presence"][0]
    assert kicked["type"] == "unavailable" and 307 in codes(kicked)
    assert {110, 307} <= codes(carol.take()[0])
    join(carol, "Carol")
    alice.take()
    admin(alice, "<item affiliation='outcast' jid='carol@localhost'/>")
    assert {110, 301} <= codes(carol.take()[0])
    assert condition(join(carol, "Carol")[0]) == "forbidden"


def test_moderator_cannot_kick_admin(room: str, alice: Any, bob: Any) -> None:
    """§8.2: a moderator without admin affiliation cannot kick an admin/owner."""
    admin(alice, "<item nick='Bob' role='moderator'/>")
    assert condition(admin(bob, "<item nick='Alice' role='none'/>")) == "not-allowed"


def test_last_owner_stays(room: str, alice: Any) -> None:
    """§10.7: the last owner cannot be removed (conflict)."""
    assert condition(admin(alice, "<item affiliation='none' jid='alice@localhost'/>")) == \
        "conflict"


def test_voice_in_moderated_room(room: str, alice: Any, bob: Any, carol: Any) -> None:
    """Visitors cannot talk; a voice request reaches moderators; approval or
    a role change grants voice."""
    configure(alice, {"muc#roomconfig_moderatedroom": "1"})
    carol.take()
    join(carol, "Carol")
    groupchat(carol, "x")
    assert condition(carol.take()[0]) == "forbidden"
    alice.take()
    send(carol, f"<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
                f"<field var='FORM_TYPE'><value>{MUC}#request</value></field>"
                f"<field var='muc#role'><value>participant</value></field></x></message>")
    [req] = alice.take()
    assert "Carol" in req.toXml() and "muc#request_allow" in req.toXml()
    send(alice, f"<message to='{ROOM}'><x xmlns='jabber:x:data' type='submit'>"
                f"<field var='FORM_TYPE'><value>{MUC}#request</value></field>"
                f"<field var='muc#roomnick'><value>Carol</value></field>"
                f"<field var='muc#request_allow'><value>true</value></field></x></message>")
    assert item(carol.take()[0])["role"] == "participant"
    groupchat(carol, "now")
    assert bodies(carol.take()) == ["now"]


def test_member_list_for_omemo(server: Server, room: str, alice: Any, bob: Any) -> None:
    """In a non-anonymous members-only room members may read the member,
    admin and owner lists; never the outcast list; semi-anonymous: forbidden."""
    configure(alice, {"muc#roomconfig_membersonly": "1", "muc#roomconfig_whois": "anyone"})
    admin(alice, "<item affiliation='member' jid='bob@localhost'/>")
    query = f"<iq type='get' id='l' to='{ROOM}'><query xmlns='{ADMIN}'><item affiliation='%s'/>" \
            "</query></iq>"
    bob.take()
    reply = iq(bob, query % "member")
    assert [i["jid"] for i in reply.firstChildElement().elements(ADMIN, "item")] == \
        ["bob@localhost"]
    assert [i["jid"] for i in iq(bob, query % "owner").firstChildElement().elements()] == \
        ["alice@localhost"]
    assert condition(iq(bob, query % "outcast")) == "forbidden"
    configure(alice, {"muc#roomconfig_whois": "moderators"})
    bob.take()
    assert condition(iq(bob, query % "member")) == "forbidden"


def test_affiliation_change_of_absent_user_announced(room: str, alice: Any, bob: Any) -> None:
    """§9.3: in a non-anonymous room, occupants learn of a member added who
    is not in the room (message with the item)."""
    configure(alice, {"muc#roomconfig_whois": "anyone"})
    bob.take()
    admin(alice, "<item affiliation='member' jid='dave@localhost'/>")
    [msg] = bob.take()
    assert item(msg)["jid"] == "dave@localhost" and item(msg)["affiliation"] == "member"


def test_invitation_to_members_only_room(room: str, alice: Any, carol: Any) -> None:
    """A mediated invitation reaches the invitee from the room with the
    inviter and reason; in a members-only room it makes the invitee a member."""
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    carol.take()
    send(alice, f"<message to='{ROOM}'><x xmlns='{USER}'><invite to='carol@localhost'>"
                f"<reason>join us</reason></invite></x></message>")
    [inv] = carol.take()
    assert inv["from"] == ROOM and "join us" in inv.toXml()
    assert any(110 in codes(e) for e in join(carol, "Carol"))


def test_config_change_codes_and_members_only_kick(room: str, alice: Any, bob: Any) -> None:
    """A configuration change is announced with 104 (+172 when it becomes
    non-anonymous); turning members-only on removes non-members with 322."""
    bob.take()
    configure(alice, {"muc#roomconfig_whois": "anyone"})
    assert codes(bob.take()[0]) == {104, 172}
    configure(alice, {"muc#roomconfig_membersonly": "1"})
    out = bob.take()
    assert any({110, 322} <= codes(e) for e in out if e.name == "presence")


def test_destroy_with_alternate_venue(server: Server, room: str, alice: Any, bob: Any) -> None:
    """§10.9: occupants get unavailable with <destroy jid=.../>; the room is gone."""
    bob.take()
    reply = iq(alice, f"<iq type='set' id='d' to='{ROOM}'><query xmlns='{OWNER}'>"
                      f"<destroy jid='new@conference.localhost'><reason>moved</reason>"
                      f"</destroy></query></iq>")
    assert reply["type"] == "result"
    [pres] = bob.take()
    destroy = next(next(pres.elements(USER, "x")).elements(USER, "destroy"))
    assert pres["type"] == "unavailable" and destroy["jid"] == "new@conference.localhost"
    assert ROOM not in server.modules.get("muc").rooms  # type: ignore[union-attr]


def test_occupant_error_bounce_removes_it(server: Server, room: str, alice: Any) -> None:
    """An occupant whose server bounces the room's messages is removed (333)."""
    send(alice, f"<message type='error' to='{ROOM}'><error type='cancel'>"
                "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
                "</message>")
    muc = server.modules.get("muc")
    assert "alice@localhost/a" not in muc.rooms[ROOM].by_jid  # type: ignore[union-attr]


# -- discovery, self-ping --------------------------------------------------------------

def test_disco(room: str, alice: Any, bob: Any) -> None:
    """The service lists public rooms; a room answers identity, features and
    muc#roominfo (occupants, subject); hidden rooms are not listed."""
    items = iq(bob, "<iq type='get' id='i' to='conference.localhost'>"
                    "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert [i["jid"] for i in items.firstChildElement().elements()] == [ROOM]
    info = iq(bob, f"<iq type='get' id='i' to='{ROOM}'>"
                   "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    xml = info.toXml()
    for feature in (MUC, "muc_open", "muc_semianonymous", "muc_temporary",
                    "urn:xmpp:occupant-id:0", "muc#roominfo_occupants"):
        assert feature in xml
    configure(alice, {"muc#roomconfig_publicroom": "0"})
    items = iq(bob, "<iq type='get' id='i' to='conference.localhost'>"
                    "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert list(items.firstChildElement().elements()) == []


def test_self_ping(room: str, bob: Any, carol: Any) -> None:
    """XEP-0410: an occupant pinging itself gets a result; a ghost (not
    joined) gets not-acceptable, so its client knows to rejoin."""
    ping = f"<iq type='get' id='p' to='{ROOM}/%s'><ping xmlns='urn:xmpp:ping'/></iq>"
    assert iq(bob, ping % "Bob")["type"] == "result"
    carol.take()
    assert condition(iq(carol, ping % "Carol")) == "not-acceptable"


def test_room_creation_limits(server: Server) -> None:
    """create='listed' refuses others; room names must match the pattern."""
    srv = make_server(config_text="[modules.muc]\ncreate = 'listed'\n"
                                  "creators = ['boss@localhost']\n"
                                  "room_name_pattern = '[a-z]+'\n")
    boss = bind(srv, "boss@localhost/x", available=True)
    other = bind(srv, "other@localhost/x", available=True)
    other.take(); boss.take()
    assert condition(join(other, "o", "r@conference.localhost")[0]) == "not-allowed"
    assert condition(join(boss, "b", "r1@conference.localhost")[0]) == "not-acceptable"
    assert 201 in codes(join(boss, "b", "r@conference.localhost")[0])


def test_service_renamed_or_restricted() -> None:
    """[modules.muc] names renames a host's service; domains restricts them."""
    srv = make_server(domains=("a.example", "b.example"),
                      config_text="[modules.muc]\ndomains = ['a.example']\n"
                                  "names = { 'a.example' = 'chat.a.example' }\n")
    assert "chat.a.example" in srv.router.services
    muc_services = srv.modules.get("muc").services  # other services (upload., pubsub.) aside
    assert set(muc_services) == {"chat.a.example"}
    assert not any(d.endswith("b.example") for d in muc_services)


# -- persistence, archive --------------------------------------------------------------

def _restart(server: Server) -> Server:
    """A second server process on the same database."""
    server.modules.unload_all()
    again = Server(server.config, clock=server.clock, database=server.database)
    again.start()
    return again


def test_persistent_room_survives_restart(server: Server, room: str, alice: Any,
                                          bob: Any) -> None:
    """Configuration, affiliations, subject and history of a persistent room
    come back after a restart; a temporary one does not."""
    configure(alice, {"muc#roomconfig_persistentroom": "1", "muc#roomconfig_membersonly": "1",
                      "muc#roomconfig_roomname": "Team"})
    admin(alice, "<item affiliation='member' jid='bob@localhost'/>")
    send(alice, f"<message type='groupchat' to='{ROOM}'><subject>Plans</subject></message>")
    groupchat(alice, "remember me")
    server.clock.advance(0)
    again = _restart(server)
    muc = again.modules.get("muc")
    restored = muc.rooms[ROOM]  # type: ignore[union-attr]
    assert restored.config.members_only and restored.config.name == "Team"
    assert restored.affiliation("bob@localhost") == "member"
    assert restored.subject == "Plans"
    bob2 = bind(again, "bob@localhost/b2", available=True)
    carol = bind(again, "carol@localhost/c2", available=True)
    bob2.take(); carol.take()
    out = join(bob2, "Bob")
    assert bodies(out) == ["remember me"]
    assert condition(join(carol, "Carol")[0]) == "registration-required"


def _persistent(server: Server, alice: Any) -> None:
    configure(alice, {"muc#roomconfig_persistentroom": "1"})
    for session in server.sessions:
        session.take()


def _mam(server: Server, session: Any, rsm: str = "", qid: str = "q") -> tuple[list[Any], Any]:
    send(session, f"<iq type='set' id='mam' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' "
                  f"queryid='{qid}'><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set>"
                  f"</query></iq>")
    server.clock.advance(0)
    out = session.take()
    results = [e for e in out if e.name == "message"
               and next(e.elements("urn:xmpp:mam:2", "result"), None) is not None]
    return results, [e for e in out if e.name == "iq"][0]


def _archived(msg: Any) -> Any:
    result = next(msg.elements("urn:xmpp:mam:2", "result"))
    return result, child(next(result.elements()), "message")


def test_archive_paging(server: Server, room: str, alice: Any, bob: Any) -> None:
    """MAM on the room JID pages with RSM (max, after, before) and says complete."""
    _persistent(server, alice)
    for i in range(5):
        groupchat(alice, f"a{i}")
    bob.take()
    page, fin = _mam(server, bob, "<max>2</max>")
    assert [bodies([_archived(m)[1]]) for m in page] == [["a0"], ["a1"]]
    last = str(child(next(fin.firstChildElement().elements()), "last"))
    assert fin.firstChildElement().getAttribute("complete") is None
    page, fin = _mam(server, bob, f"<max>10</max><after>{last}</after>")
    assert [bodies([_archived(m)[1]])[0] for m in page] == ["a2", "a3", "a4"]
    assert fin.firstChildElement()["complete"] == "true"
    page, _ = _mam(server, bob, "<max>1</max><before/>")
    assert bodies([_archived(page[0])[1]]) == ["a4"]


def test_retraction_leaves_tombstone(server: Server, room: str, alice: Any, bob: Any) -> None:
    """XEP-0424: the author retracts; others may not; the archive and history
    keep a tombstone without the text."""
    _persistent(server, alice)
    groupchat(bob, "oops")
    sid = next(bob.take()[0].elements("urn:xmpp:sid:0", "stanza-id"))["id"]
    alice.take()
    retract = f"<retract xmlns='urn:xmpp:message-retract:1' id='{sid}'/>"
    send(alice, f"<message type='groupchat' to='{ROOM}'>{retract}</message>")
    server.clock.advance(0)
    assert condition(alice.take()[0]) == "forbidden"
    send(bob, f"<message type='groupchat' to='{ROOM}'>{retract}<body>retracted</body></message>")
    server.clock.advance(0)
    assert "message-retract" in alice.take()[0].toXml()
    page, _ = _mam(server, bob)
    stored = _archived(page[0])[1]
    assert "oops" not in stored.toXml() and next(
        stored.elements("urn:xmpp:message-retract:1", "retracted"), None) is not None


def test_moderation_leaves_tombstone(server: Server, room: str, alice: Any, bob: Any,
                                     carol: Any) -> None:
    """XEP-0425: a moderator retracts another's message: broadcast with
    <moderated by=...>, tombstone in the archive; participants may not."""
    _persistent(server, alice)
    groupchat(bob, "spam")
    sid = next(bob.take()[0].elements("urn:xmpp:sid:0", "stanza-id"))["id"]
    alice.take()
    req = (f"<iq type='set' id='mod' to='{ROOM}'><moderate xmlns='urn:xmpp:message-moderate:1'"
           f" id='{sid}'><retract xmlns='urn:xmpp:message-retract:1'/><reason>no</reason>"
           f"</moderate></iq>")
    assert condition(iq(bob, req)) == "forbidden"
    send(alice, req)
    server.clock.advance(0)
    out = alice.take()
    assert any(e.name == "iq" and e["type"] == "result" for e in out)
    announce = [e for e in out if e.name == "message"][0]
    assert f"{ROOM}/Alice" in announce.toXml() and "moderated" in announce.toXml()
    carol.take()
    joined = join(carol, "Carol")
    assert "spam" not in "".join(e.toXml() for e in joined)
    page, _ = _mam(server, carol)
    assert "spam" not in page[0].toXml() and "moderated" in page[0].toXml()


def test_room_avatar(room: str, alice: Any, bob: Any) -> None:
    """Owners set the room's vCard; the photo's SHA-1 is announced in room
    presence and in muc#roominfo_avatarhash; others may not set it."""
    card = ("<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>aGVsbG8=</BINVAL>"
            "</PHOTO></vCard>")
    assert condition(iq(bob, f"<iq type='set' id='v' to='{ROOM}'>{card}</iq>")) == "forbidden"
    assert iq(alice, f"<iq type='set' id='v' to='{ROOM}'>{card}</iq>")["type"] == "result"
    digest = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"  # sha1(b"hello")
    assert any(digest in e.toXml() and e.name == "presence" for e in bob.take())
    info = iq(bob, f"<iq type='get' id='i' to='{ROOM}'>"
                   "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert "muc#roominfo_avatarhash" in info.toXml() and digest in info.toXml()
    got = iq(bob, f"<iq type='get' id='g' to='{ROOM}'><vCard xmlns='vcard-temp'/></iq>")
    assert "aGVsbG8=" in got.toXml()
