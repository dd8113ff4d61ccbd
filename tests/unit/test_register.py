"""Unit tests of in-band registration (XEP-0077) with invite tokens
(XEP-0445) and CAPTCHAs (XEP-0158) on a real c2s stream before
authentication, and of the account rules in chatbx_server/accounts.py."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.words.xish import domish

from chatbx_server.accounts import RegistrationError, RegistrationThrottle
from chatbx_server.c2s.stream import C2SFactory
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server
from tests.unit.test_c2s_stream import Client, FakeTLS

REG = "jabber:iq:register"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def _server(mode: str, extra: str = "") -> Any:
    return make_server(config_text=f"[registration]\nmode = '{mode}'\n{extra}")


def _client(server: Any, peer: str = "10.0.0.1") -> Client:
    client = Client(C2SFactory(server, FakeTLS(), direct_tls=True), peer)
    client.header()
    return client


def _condition(iq: domish.Element) -> str | None:
    if iq.getAttribute("type") != "error":
        return None
    err = [c for c in iq.elements() if c.name == "error"][0]
    return [c.name for c in err.elements() if c.uri == STANZAS and c.name != "text"][0]


def _submit(client: Client, username: str, password: str, extra: str = "") -> domish.Element:
    client.send(f"<iq type='set' id='r1'><query xmlns='{REG}'><username>{username}</username>"
                f"<password>{password}</password>{extra}</query></iq>")
    return client.one()


def test_features_advertise_registration_by_mode() -> None:
    """Before auth the features carry iq-register (not in closed mode) and
    the XEP-0445 invite feature."""
    for mode, has_ibr in (("open", True), ("invite", True), ("closed", False)):
        feats = _client(_server(mode)).features()
        names = {(c.uri, c.name) for c in feats.elements()}
        assert (("http://jabber.org/features/iq-register", "register") in names) is has_ibr
        assert ("urn:xmpp:invite", "register") in names


def test_open_mode_registers_and_logs_in() -> None:
    """Open mode: the form asks username and password; the submission
    creates the account, and SASL on the same stream then succeeds."""
    server = _server("open")
    client = _client(server)
    client.features()
    client.send(f"<iq type='get' id='g1'><query xmlns='{REG}'/></iq>")
    form = client.one()
    query = form.firstChildElement()
    assert {c.name for c in query.elements()} >= {"username", "password", "instructions"}
    assert _condition(_submit(client, "Newbie", "long-password")) is None
    assert client.scram("newbie", "long-password").name == "success"


@pytest.mark.parametrize("username, password, condition", [
    ("ab", "long-password", "not-acceptable"),        # too short
    ("admin", "long-password", "conflict"),          # reserved
    ("Postmaster", "long-password", "conflict"),      # reserved after case mapping
    ("good", "short", "not-acceptable"),              # password too short
    ("bad name", "long-password", "jid-malformed"),   # not a localpart
    ("alice", "long-password", "conflict"),           # taken
])
def test_refusals(username: str, password: str, condition: str) -> None:
    """Each rule refuses with its condition and creates nothing."""
    server = _server("open")
    create_user(server, "alice@localhost")
    client = _client(server)
    client.features()
    assert _condition(_submit(client, username, password)) == condition


def test_invite_mode_needs_a_token() -> None:
    """Invite mode: without a token not-allowed; a bad XEP-0445 token is
    item-not-found; a valid one lets the registration through, once."""
    server = _server("invite")
    invites = server.stores.invites
    box: list[Any] = []
    invites.create("localhost", "account", 100.0).addCallback(box.append)
    token = box[0].token
    client = _client(server)
    client.features()
    assert _condition(_submit(client, "juliet", "long-password")) == "not-allowed"
    client.send("<iq type='set' id='p0'><preauth xmlns='urn:xmpp:pars:0' token='nope'/></iq>")
    assert _condition(client.one()) == "item-not-found"
    client.send(f"<iq type='set' id='p1'><preauth xmlns='urn:xmpp:pars:0' token='{token}'/></iq>")
    assert client.one().getAttribute("type") == "result"
    assert _condition(_submit(client, "juliet", "long-password")) is None
    other = _client(server, "10.0.0.2")
    other.features()
    inline = f"<preauth xmlns='urn:xmpp:pars:0' token='{token}'/>"
    assert _condition(_submit(other, "romeo", "long-password", inline)) == "not-allowed"


def test_captcha_mode_form_and_answer() -> None:
    """CAPTCHA mode: the form is a XEP-0158 data form with an inline PNG;
    a wrong answer is refused and uses the challenge up; a new form's right
    answer (read from the database) registers."""
    server = _server("captcha")
    client = _client(server)
    client.features()

    def form() -> tuple[str, str]:
        client.send(f"<iq type='get' id='g'><query xmlns='{REG}'/></iq>")
        query = client.one().firstChildElement()
        x = next(query.elements(ns.DATA_FORMS, "x"))
        data = next(query.elements("urn:xmpp:bob", "data"))
        assert data["type"] == "image/png"
        values = {f["var"]: str(next(f.elements(ns.DATA_FORMS, "value"), "") or "")
                  for f in x.elements(ns.DATA_FORMS, "field")}
        assert values["FORM_TYPE"] == "urn:xmpp:captcha"
        box: list[Any] = []
        server.stores.invites.challenge_answer(values["challenge"]).addCallback(box.append)
        return values["challenge"], box[0]

    def submit(challenge: str, answer: str) -> domish.Element:
        fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in (
            ("FORM_TYPE", "urn:xmpp:captcha"), ("challenge", challenge), ("username", "human"),
            ("password", "long-password"), ("ocr", answer)))
        client.send(f"<iq type='set' id='s'><query xmlns='{REG}'><x xmlns='{ns.DATA_FORMS}' "
                    f"type='submit'>{fields}</x></query></iq>")
        return client.one()

    challenge, answer = form()
    assert _condition(submit(challenge, "999999" if answer != "999999" else "111111")) \
        == "not-acceptable"
    assert _condition(submit(challenge, answer)) == "not-acceptable"  # used up
    challenge, answer = form()
    assert _condition(submit(challenge, answer)) is None


def test_preauth_iqs_are_bounded() -> None:
    """More than 10 IQs before authentication close the stream."""
    server = _server("open")
    client = _client(server)
    client.features()
    for _ in range(11):
        client.send(f"<iq type='get' id='g'><query xmlns='{REG}'/></iq>")
    assert client.stream_error() == "policy-violation"


def test_throttle_per_address_and_ipv6_prefix() -> None:
    """The limit counts per address (IPv6: per /64) in a sliding window."""
    clock = Clock()
    throttle = RegistrationThrottle(clock, 2, 3600.0)
    for _ in range(2):
        assert throttle.allowed("2001:db8::1")
        throttle.record("2001:db8::1")
    assert not throttle.allowed("2001:db8::2")  # same /64
    assert throttle.allowed("10.0.0.1")
    clock.advance(3601)
    assert throttle.allowed("2001:db8::2")


def test_password_change_and_remove_after_login() -> None:
    """A logged-in user changes the password (the other session closes with
    'reset', the asking one stays) and removes the account: the result
    comes first, then the sessions close and the account is gone."""
    server = _server("open")
    create_user(server, "alice@localhost", "old-password")
    one = bind(server, "alice@localhost/one")
    two = bind(server, "alice@localhost/two")
    one.stream.dataReceived(
        f"<iq type='set' id='pw'><query xmlns='{REG}'><username>alice</username>"
        f"<password>new-password</password></query></iq>".encode())
    assert one.take()[-1].getAttribute("type") == "result"
    assert two.stream.closed_with == ("reset", "password changed")
    assert one.stream.closed_with is None
    box: list[Any] = []
    server.stores.users.check_password("alice@localhost", "new-password").addCallback(box.append)
    assert box == [True]
    one.stream.dataReceived(f"<iq type='set' id='rm'><query xmlns='{REG}'><remove/></query>"
                            f"</iq>".encode())
    assert one.take()[-1].getAttribute("type") == "result"
    server.clock.advance(0)
    assert one.stream.closed_with == ("not-authorized", "account deleted")
    server.stores.users.exists("alice@localhost").addCallback(box.append)
    assert box[-1] is False


def test_prepare_username_rules() -> None:
    """Names are PRECIS-prepared; reserved, short or foreign-domain ones refused."""
    server = _server("open")
    accounts = server.accounts
    assert accounts.prepare_username("Juliet", "localhost") == "juliet@localhost"
    for name, domain in (("abuse", "localhost"), ("jo", "localhost"), ("juliet", "other.org")):
        with pytest.raises(RegistrationError):
            accounts.prepare_username(name, domain)


def test_removal_grace_period_cancelled_by_login() -> None:
    """With deletion_grace, <remove/> only schedules: the sessions close, a
    login before the time cancels; without a login the maintenance loop
    deletes the account once the time has come."""
    server = _server("open", "deletion_grace = 100.0\n")
    for jid in ("alice@localhost", "bob@localhost"):
        create_user(server, jid, "old-password")
    box: list[Any] = []
    for user in ("alice", "bob"):
        session = bind(server, f"{user}@localhost/x")
        session.stream.dataReceived(f"<iq type='set' id='rm'><query xmlns='{REG}'><remove/>"
                                    f"</query></iq>".encode())
        server.clock.advance(0)
        assert session.stream.closed_with == ("not-authorized", "account removal requested")
    server.stores.accounts.login("alice@localhost").addCallback(box.append)
    assert box == ["ok"]
    server.clock.advance(130)  # past the grace time and a maintenance poll
    server.stores.users.list_users().addCallback(box.append)
    assert box[-1] == ["alice@localhost"]


def _roster(server: Any, user: str) -> dict[str, str]:
    box: list[Any] = []
    server.stores.roster.load(user).addBoth(box.append)
    return {item.jid: item.subscription for item in box[0][1]}


def test_contact_invite_preauth_subscription_for_an_existing_account() -> None:
    """XEP-0379 §4: Juliet (an existing account) sends Alice a subscription
    request with the token of Alice's contact invite; the server approves
    it for Alice and subscribes back: both rosters say 'both' once Juliet's
    client approves; the invite is used up, so the same token a second time
    (from Romeo) gives a plain pending request; a token of another user's
    invite approves nothing."""
    server = make_server()
    for user in ("alice", "juliet", "romeo", "carol"):
        create_user(server, f"{user}@localhost")
    box: list[Any] = []
    server.stores.invites.create("localhost", "contact", 100.0, creator="alice@localhost",
                                 register=False).addCallback(box.append)
    server.stores.invites.create("localhost", "contact", 100.0, creator="carol@localhost",
                                 register=False).addCallback(box.append)
    token, carols = box[0].token, box[1].token
    juliet = bind(server, "juliet@localhost/phone", available=True)
    romeo = bind(server, "romeo@localhost/r", available=True)
    juliet.take()

    def subscribe(session: Any, tok: str) -> None:
        session.stream.dataReceived(
            f"<presence to='alice@localhost' type='subscribe'><preauth xmlns='urn:xmpp:pars:0' "
            f"token='{tok}'/></presence>".encode())

    subscribe(juliet, token)
    got = [(s.getAttribute("from"), s.getAttribute("type")) for s in juliet.take() if s.name == "presence"]
    assert ("alice@localhost", "subscribed") in got and ("alice@localhost", "subscribe") in got
    juliet.stream.dataReceived(b"<presence to='alice@localhost' type='subscribed'/>")
    assert _roster(server, "alice@localhost")["juliet@localhost"] == "both"
    assert _roster(server, "juliet@localhost")["alice@localhost"] == "both"
    box.clear()
    server.stores.invites.get(token).addCallback(box.append)
    assert box == [None]
    subscribe(romeo, token)
    subscribe(romeo, carols)
    assert _roster(server, "alice@localhost").get("romeo@localhost", "none") == "none"
    assert _roster(server, "romeo@localhost")["alice@localhost"] == "none"
