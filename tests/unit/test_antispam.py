"""Unit tests of the new-account limits (features/antispam.py)."""

from __future__ import annotations

from typing import Any

from chatbx_server.storage.users import derive_credentials
from tests.unit.fakes import bind, create_user, make_server

CONFIG = ("[registration]\nmode = 'open'\nnew_account_messages_per_minute = 2\n"
          "new_account_subscriptions_per_minute = 1\nnew_account_period = 3600\n")


def _self_registered(server: Any, jid: str) -> None:
    box: list[Any] = []
    server.stores.accounts.register(jid, derive_credentials("pw-secret")).addBoth(box.append)
    assert not isinstance(box[0], Exception), box


def _send(session: Any, xml: str) -> None:
    session.stream.dataReceived(xml.encode())


def _errors(session: Any) -> list[str]:
    out = []
    for el in session.take():
        if el.getAttribute("type") == "error":
            err = [c for c in el.elements() if c.name == "error"][0]
            out.append([c.name for c in err.elements() if c.name != "text"][0])
    return out


def test_new_account_messages_to_strangers_are_limited() -> None:
    """A self-registered account sends 2 messages a minute to strangers; the
    third bounces with policy-violation and is not delivered; a minute
    later it may again; an operator-made account is not limited."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "spammer@localhost")
    create_user(server, "bob@localhost")
    create_user(server, "oper@localhost")
    spam = bind(server, "spammer@localhost/x")
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    for i in range(3):
        _send(spam, f"<message to='bob@localhost' type='chat' id='m{i}'><body>buy {i}</body>"
                    f"</message>")
    assert _errors(spam) == ["policy-violation"]
    assert [str([c for c in m.elements() if c.name == "body"][0]) for m in bob.take()
            if m.name == "message"] \
        == ["buy 0", "buy 1"]
    server.clock.advance(61)
    _send(spam, "<message to='bob@localhost' type='chat'><body>again</body></message>")
    assert _errors(spam) == []
    oper = bind(server, "oper@localhost/o")
    for i in range(5):
        _send(oper, f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    assert _errors(oper) == []


def test_old_accounts_and_chat_states_are_not_limited() -> None:
    """Past new_account_period, or messages without a body, are not counted."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "fresh@localhost")
    create_user(server, "bob@localhost")
    fresh = bind(server, "fresh@localhost/x")
    for _ in range(5):
        _send(fresh, "<message to='bob@localhost'><active xmlns='http://jabber.org/protocol/"
                     "chatstates'/></message>")
    assert _errors(fresh) == []
    server.clock.advance(3601)
    for _ in range(5):
        _send(fresh, "<message to='bob@localhost'><body>hi</body></message>")
    assert "policy-violation" not in _errors(fresh)


def test_subscription_requests_are_limited() -> None:
    """The second subscription request within a minute bounces."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "fresh@localhost")
    fresh = bind(server, "fresh@localhost/x")
    _send(fresh, "<presence to='a@localhost' type='subscribe'/>")
    _send(fresh, "<presence to='b@localhost' type='subscribe'/>")
    assert _errors(fresh) == ["policy-violation"]




MUC = "http://jabber.org/protocol/muc"
NS_BLOCKING = "urn:xmpp:blocking"
NS_REPORTING = "urn:xmpp:reporting:1"


def _join(session: Any, room: str) -> list[Any]:
    _send(session, f"<presence to='{room}@conference.localhost/nick'><x xmlns='{MUC}'/></presence>")
    return session.take()


def _created(stanzas: list[Any]) -> bool:
    """The join answer carries status 201 (a new room, XEP-0045 §10.1.1)."""
    return any(s.name == "presence" and s.getAttribute("type") is None and "201" in s.toXml()
               for s in stanzas)


def test_new_accounts_create_a_limited_number_of_rooms() -> None:
    """With new_account_rooms = 2 a self-registered account creates two rooms;
    the third join that would create one bounces with policy-violation and
    no room exists; it may still join an existing room; an operator-made
    account creates rooms freely, and so does the new account once it is
    past new_account_period."""
    server = make_server(config_text=CONFIG + "[modules.antispam]\nnew_account_rooms = 2\n")
    _self_registered(server, "fresh@localhost")
    create_user(server, "oper@localhost")
    fresh = bind(server, "fresh@localhost/x", available=True)
    oper = bind(server, "oper@localhost/o", available=True)
    fresh.take()
    oper.take()
    assert _created(_join(fresh, "one")) and _created(_join(fresh, "two"))
    assert _errors(_FakeTake(_join(fresh, "three"))) == ["policy-violation"]
    muc: Any = server.modules.get("muc")
    assert "three@conference.localhost" not in muc.rooms and "one@conference.localhost" in muc.rooms
    for i in range(4):
        assert _created(_join(oper, f"oper{i}"))
    assert not _created(_join(fresh, "oper0")) and _errors(_FakeTake(fresh.take())) == []
    server.clock.advance(3601)
    assert _created(_join(fresh, "four"))


class _FakeTake:
    """Wraps a list of stanzas so _errors() can read it like a session."""

    def __init__(self, stanzas: list[Any]) -> None:
        self.stanzas = stanzas

    def take(self) -> list[Any]:
        return self.stanzas


def _report(session: Any, jid: str, text: str = "", reason: str = "urn:xmpp:reporting:spam") -> None:
    body = f"<text xml:lang='en'>{text}</text>" if text else ""
    _send(session, f"<iq type='set' id='b1'><block xmlns='{NS_BLOCKING}'><item jid='{jid}'>"
                   f"<report xmlns='{NS_REPORTING}' reason='{reason}'>{body}</report></item></block></iq>")


def _notices(session: Any) -> list[str]:
    return [str(next(c for c in s.elements() if c.name == "body")) for s in session.take()
            if s.name == "message" and any(c.name == "body" for c in s.elements())]


def test_spam_reports_go_to_the_abuse_addresses_rate_limited() -> None:
    """A XEP-0377 report is stored and summarised in a message from the
    server to the xmpp: abuse-addresses of contact_info (XEP-0157): the
    reporter, the reported JID, the reason and the reporter's own text;
    past report_notices_per_hour reports are stored but not forwarded
    until the hour has passed."""
    server = make_server(config_text=(
        "[modules.contact_info]\naddresses = { abuse-addresses = "
        "['xmpp:abuse@localhost', 'mailto:abuse@example.org'] }\n"
        "[modules.antispam]\nreport_notices_per_hour = 2\n"))
    create_user(server, "abuse@localhost")
    create_user(server, "alice@localhost")
    abuse = bind(server, "abuse@localhost/desk", available=True)
    alice = bind(server, "alice@localhost/a")
    abuse.take()
    _report(alice, "spam@evil.example", "sold me pills")
    [notice] = _notices(abuse)
    assert "alice@localhost reported spam@evil.example as spam" in notice
    assert "The reporter wrote: sold me pills" in notice
    _report(alice, "other@evil.example", reason="urn:xmpp:reporting:abuse")
    [notice] = _notices(abuse)
    assert "other@evil.example as abuse" in notice and "wrote" not in notice
    _report(alice, "third@evil.example")
    assert _notices(abuse) == []
    reports: list[Any] = []
    server.stores.blocking.list_reports().addBoth(reports.append)
    assert len(reports[0]) == 3
    server.clock.advance(3601)
    _report(alice, "fourth@evil.example")
    assert len(_notices(abuse)) == 1


def test_report_to_overrides_contact_info_and_none_configured_sends_nothing() -> None:
    """[modules.antispam] report_to names the receivers instead of the
    contact addresses; with neither, a report is only stored."""
    server = make_server(config_text=(
        "[modules.contact_info]\naddresses = { abuse-addresses = ['xmpp:abuse@localhost'] }\n"
        "[modules.antispam]\nreport_to = ['mod@localhost']\n"))
    for user in ("abuse", "mod", "alice"):
        create_user(server, f"{user}@localhost")
    abuse = bind(server, "abuse@localhost/d", available=True)
    mod = bind(server, "mod@localhost/d", available=True)
    alice = bind(server, "alice@localhost/a")
    abuse.take()
    mod.take()
    _report(alice, "spam@evil.example")
    assert _notices(abuse) == [] and len(_notices(mod)) == 1

    plain = make_server()
    create_user(plain, "alice@localhost")
    alice = bind(plain, "alice@localhost/a")
    _report(alice, "spam@evil.example")
    assert [s.getAttribute("type") for s in alice.take() if s.name == "iq"] == ["result"]


def test_messages_sent_while_the_account_age_is_read_wait_for_it() -> None:
    """The account's age is read at bind; messages to strangers sent before
    it is known wait for it and are then judged and routed in order: an old
    account's burst is delivered whole (not refused as a new account's), a
    new account's is still limited."""
    from twisted.internet import defer

    server = make_server(config_text=CONFIG)
    _self_registered(server, "spammer@localhost")
    create_user(server, "bob@localhost")
    create_user(server, "oper@localhost")
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    real_info = server.stores.accounts.info
    reads: dict[str, Any] = {}

    def slow_info(user: str) -> Any:
        reads[user] = (defer.Deferred(), real_info(user))
        return reads[user][0]

    server.stores.accounts.info = slow_info
    for user in ("oper", "spammer"):
        session = bind(server, f"{user}@localhost/x")
        for i in range(4):
            _send(session, f"<message to='bob@localhost' type='chat'><body>{user} {i}</body>"
                           "</message>")
        assert _errors(session) == []
        assert [m for m in bob.take() if m.name == "message"] == []
        pending, result = reads[f"{user}@localhost"]
        result.chainDeferred(pending)
        bodies = [str([c for c in m.elements() if c.name == "body"][0]) for m in bob.take()
                  if m.name == "message"]
        if user == "oper":
            assert bodies == [f"oper {i}" for i in range(4)] and _errors(session) == []
        else:
            assert bodies == ["spammer 0", "spammer 1"]
            assert _errors(session) == ["policy-violation", "policy-violation"]
