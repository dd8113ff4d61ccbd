"""XEP-0484 FAST on the client stream: tokens asked for in SASL2, used with
HT-SHA-256-* in one exchange (with Bind2, or resuming an SM session
inline), bound to their mechanism and device, rotated, expiring,
invalidated by the client and revoked per device; the database holds
nonces, not tokens."""

from __future__ import annotations

import base64
import os
from typing import Any, Optional

import pytest
import sqlalchemy as sa

from chatbx_server.c2s import stream as c2s
from chatbx_server.c2s.fast import (NS as FAST, derive_token, initiator_hash, load_key,
                                    mechanisms_for, parse_initial, responder_hash)
from chatbx_server.c2s.sasl import SASLFailure
from chatbx_server.c2s.sasl2 import BIND2, NS
from chatbx_server.storage import schema
from chatbx_server.xmpp import ns
from tests.unit.fakes import create_user, make_server
from tests.unit.test_c2s_stream import BINDINGS, Client, FakeTLS  # noqa: F401
from chatbx_server.c2s.stream import C2SFactory

SM = "urn:xmpp:sm:3"
UA = "d4565fa7-4d72-4749-b3d3-740edbf87770"
DAY = 86400.0
CB = BINDINGS["tls-exporter"]


@pytest.fixture
def server(tmp_path):
    srv = make_server(config_text=f'data_dir = "{tmp_path}"\n'
                                  "[limits]\nauth_failure_delay = 2.0\n"
                                  "[modules]\nenabled = [\"message\", \"roster\", \"presence\", "
                                  "\"offline\", \"smacks\", \"csi\", \"fast\"]\n"
                                  "[modules.fast]\ntoken_lifetime = 864000.0\n"
                                  "rotate_before = 86400.0\n")
    create_user(srv, "alice@localhost", "pencil")
    create_user(srv, "bob@localhost", "pw")
    return srv


@pytest.fixture
def factory(server, monkeypatch):
    f = C2SFactory(server, FakeTLS(), direct_tls=True)
    monkeypatch.setattr(f, "channel_bindings", lambda transport: dict(BINDINGS))
    return f


_peers = iter(range(1, 250))


def connect(factory) -> Client:
    c = Client(factory, peer=f"10.1.0.{next(_peers)}")
    c.header()
    c.features()
    return c


def child(el, uri: str, name: str) -> Optional[Any]:
    for c in el.elements():
        if c.uri == uri and c.name == name:
            return c
    return None


def plain() -> str:
    return base64.b64encode(b"\0alice\0pencil").decode()


def authenticate(client: Client, mechanism: str, initial: str, inner: str = "",
                 ua: Optional[str] = UA) -> None:
    agent = f"<user-agent id='{ua}'><software>Test</software><device>Phone</device></user-agent>" if ua else ""
    client.send(f"<authenticate xmlns='{NS}' mechanism='{mechanism}'>"
                f"<initial-response>{initial}</initial-response>{agent}{inner}</authenticate>")


def ht(token: str, cb: bytes = b"", user: str = "alice") -> str:
    return base64.b64encode(user.encode() + b"\0" + initiator_hash(token, cb)).decode()


def get_token(factory, mechanism: str = "HT-SHA-256-NONE", inner: str = "") -> tuple[str, Any]:
    """A password login asking for a token; returns it and the <success/>."""
    c = connect(factory)
    authenticate(c, "PLAIN", plain(), f"<request-token xmlns='{FAST}' mechanism='{mechanism}'/>" + inner)
    success = [e for e in c.received() if e.name == "success"][0]
    token = child(success, FAST, "token")
    assert token is not None, success.toXml()
    return token["token"], success


def answer(c: Client) -> Any:
    """The SASL2 answer (a <success/> without Bind2 is followed by bind features)."""
    return c.received()[0]


def rows(server) -> list[Any]:
    def q(conn):
        return [tuple(r) for r in conn.execute(sa.select(schema.fast_tokens))]
    out: list = []
    server.database.run("t", q).addCallback(out.extend)
    return out


# -- pure ----------------------------------------------------------------------------

def test_mechanisms_follow_the_channel_bindings():
    """-EXPR needs tls-exporter, -ENDP tls-server-end-point; -NONE always."""
    assert mechanisms_for({}) == ["HT-SHA-256-NONE"]
    assert mechanisms_for({"tls-exporter": b"x"}) == ["HT-SHA-256-EXPR", "HT-SHA-256-NONE"]
    assert len(mechanisms_for({"tls-exporter": b"x", "tls-server-end-point": b"y"})) == 3


def test_initial_response_is_authcid_nul_32_bytes():
    """The HT message is 'authcid NUL HMAC'; anything else is malformed."""
    assert parse_initial(b"alice\0" + b"h" * 32) == ("alice", b"h" * 32)
    for bad in (b"alice" + b"h" * 32, b"\0" + b"h" * 32, b"alice\0short"):
        with pytest.raises(SASLFailure):
            parse_initial(bad)


def test_token_derivation_needs_the_key(tmp_path):
    """The same row gives the same token only with the same key; the key
    file is created once, private, and read back."""
    key = load_key(str(tmp_path / "k"))
    assert load_key(str(tmp_path / "k")) == key and len(key) == 32
    assert oct(os.stat(tmp_path / "k").st_mode & 0o777) == "0o600"
    token = derive_token(key, b"n" * 16, "a@x", "dev", "HT-SHA-256-NONE")
    assert token == derive_token(key, b"n" * 16, "a@x", "dev", "HT-SHA-256-NONE")
    assert token != derive_token(os.urandom(32), b"n" * 16, "a@x", "dev", "HT-SHA-256-NONE")
    assert token != derive_token(key, b"n" * 16, "a@x", "dev2", "HT-SHA-256-NONE")


def test_key_created_at_once_by_two_processes_is_one_key(tmp_path, monkeypatch):
    """Workers sharing data_dir may create the key at the same moment: the
    one that links its file first wins, the other reads that key (never a
    half-written file) and leaves no temporary file behind."""
    path = tmp_path / "k"
    other = os.urandom(32)
    link = os.link

    def racing_link(src, dst):
        path.write_bytes(other)  # the other process got there in between
        return link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    assert load_key(str(path)) == other
    assert os.listdir(tmp_path) == ["k"]


# -- the stream -----------------------------------------------------------------------

def test_fast_and_sm_are_advertised_inline(factory):
    """<authentication/><inline/> carries <fast/> with the HT mechanisms this
    connection allows (tls-exporter here: EXPR and NONE) and <sm/>."""
    c = Client(factory)
    c.header()
    auth = child(c.features(), NS, "authentication")
    inline = child(auth, NS, "inline")
    fast = child(inline, FAST, "fast")
    assert [str(m) for m in fast.elements()] == ["HT-SHA-256-EXPR", "HT-SHA-256-NONE"]
    assert child(inline, SM, "sm") is not None


def test_token_is_issued_stored_as_a_nonce_and_used_in_one_exchange(server, factory):
    """A password login with <request-token/> gets <token/> with the expiry;
    the database keeps a nonce, not the token. The next connection sends
    one <authenticate/> (HT-SHA-256-NONE, Bind2, SM) and gets one <success/>
    with the server's proof, bound, SM enabled; the token moved to 'current'."""
    token, success = get_token(factory)
    expiry = child(success, FAST, "token")["expiry"]
    assert expiry.endswith("Z")
    stored = rows(server)
    assert len(stored) == 1 and stored[0][2] == "new"
    assert all(token.encode() not in repr(v).encode() for v in stored[0])
    assert stored[0][5] == "Test on Phone"

    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/></bind>")
    got = c.received()
    assert len(got) == 1, [e.toXml() for e in got]
    success = got[0]
    assert (success.uri, success.name) == (NS, "success")
    data = base64.b64decode(str(child(success, NS, "additional-data")))
    assert data == responder_hash(token, b"")
    assert child(child(success, BIND2, "bound"), SM, "enabled") is not None
    assert child(success, FAST, "token") is None  # not due for rotation
    assert c.proto.state == c2s.BOUND
    assert [r[2] for r in rows(server)] == ["current"]


def test_channel_bound_token_works_only_with_its_mechanism(server, factory):
    """A token issued for HT-SHA-256-EXPR authenticates with the exporter
    data; the same token offered with -NONE is refused (no downgrade)."""
    token, _ = get_token(factory, "HT-SHA-256-EXPR")
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    server.clock.advance(10)
    failure = answer(c)
    assert failure.name == "failure" and failure.firstChildElement().name == "not-authorized"
    c = connect(factory)
    authenticate(c, "HT-SHA-256-EXPR", ht(token, CB), f"<fast xmlns='{FAST}'/>")
    success = answer(c)
    assert success.name == "success"
    assert base64.b64decode(str(child(success, NS, "additional-data"))) == responder_hash(token, CB)


def test_wrong_token_other_device_or_no_user_agent_fail(server, factory):
    """A wrong token, the right token from another device id, or no
    user-agent id: not-authorized (after the failed-login delay)."""
    token, _ = get_token(factory)
    for initial, ua in ((ht("wrong"), UA), (ht(token), "other-device"), (ht(token), None)):
        c = connect(factory)
        authenticate(c, "HT-SHA-256-NONE", initial, f"<fast xmlns='{FAST}'/>", ua=ua)
        server.clock.advance(30)
        failure = answer(c)
        assert failure.name == "failure" and failure.firstChildElement().name == "not-authorized"
        assert c.proto.state == c2s.AUTH_NEEDED


def test_expired_token_is_refused_with_credentials_expired(server, factory):
    """XEP-0484 §4.2: past its expiry the token gets credentials-expired."""
    token, _ = get_token(factory)
    server.clock.advance(10 * DAY + 1)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    server.clock.advance(10)
    assert answer(c).firstChildElement().name == "credentials-expired"


def test_rotation_keeps_the_old_token_until_the_new_one_is_used(server, factory):
    """Close to expiry a FAST login gets a new token unasked (§3.5); the
    old one still works until the new one has been used, then it does not."""
    old, _ = get_token(factory)
    server.clock.advance(9.5 * DAY)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(old), f"<fast xmlns='{FAST}'/>")
    new = child(answer(c), FAST, "token")["token"]
    assert new != old
    c = connect(factory)  # the client missed the new token: the old one still works
    authenticate(c, "HT-SHA-256-NONE", ht(old), f"<fast xmlns='{FAST}'/>")
    newer = child(answer(c), FAST, "token")["token"]  # rotated again (still due)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(newer), f"<fast xmlns='{FAST}'/>")
    assert answer(c).name == "success"
    for stale in (old, new):
        c = connect(factory)
        authenticate(c, "HT-SHA-256-NONE", ht(stale), f"<fast xmlns='{FAST}'/>")
        server.clock.advance(30)
        assert answer(c).name == "failure"


def test_client_invalidates_its_token(server, factory):
    """<fast invalidate='true'/>: the login succeeds, no new token is given,
    and the token works no more (a 'log out')."""
    token, _ = get_token(factory)
    server.clock.advance(9.5 * DAY)  # due for rotation, but invalidation wins
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}' invalidate='true'/>")
    success = answer(c)
    assert success.name == "success" and child(success, FAST, "token") is None
    assert rows(server) == []
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    server.clock.advance(30)
    assert answer(c).name == "failure"


def test_revoked_device_cannot_log_in(server, factory):
    """The operator's revoke (the store chatbxctl calls) ends the device's FAST logins."""
    token, _ = get_token(factory)
    server.stores.fast.revoke("alice@localhost", UA)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    server.clock.advance(30)
    assert answer(c).name == "failure"


def test_token_login_is_a_login_a_disabled_account_is_refused(server, factory):
    """A token login records the login (last_login, a pending removal
    cancelled) as a password login does; once the account is disabled its
    token gets account-disabled (RFC 6120 §6.5.1), and works again when it
    is enabled."""
    token, _ = get_token(factory)
    accounts = server.stores.accounts
    accounts.schedule_deletion("alice@localhost", server.clock.seconds() + DAY)
    server.clock.advance(60)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    assert answer(c).name == "success"
    info = accounts.info("alice@localhost").result
    assert info.delete_at is None and info.last_login == server.clock.seconds()
    accounts.set_disabled("alice@localhost", True)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    server.clock.advance(30)
    failure = answer(c)
    assert failure.name == "failure" and failure.firstChildElement().name == "account-disabled"
    accounts.set_disabled("alice@localhost", False)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
    assert answer(c).name == "success"


def test_many_token_logins_at_once_from_one_address_all_succeed(server, factory, monkeypatch):
    """More concurrent token logins from one address (a NAT) than the
    failure limit allows, all waiting on the token read at once: each is
    charged only while its token is checked, so none is refused with
    temporary-auth-failure."""
    from twisted.internet import defer
    token, _ = get_token(factory)
    reads: list[defer.Deferred] = []
    real = server.stores.fast.tokens

    def slow_tokens(account: str, device: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        real(account, device).addCallback(lambda rows: reads.append((d, rows)))
        return d

    monkeypatch.setattr(server.stores.fast, "tokens", slow_tokens)
    clients = []
    for _ in range(server.config.limits.auth_max_failures + 2):
        c = Client(factory, peer="10.2.0.1")
        c.header()
        c.features()
        authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>")
        clients.append(c)
    assert len(reads) == len(clients)
    for d, rows in reads:
        d.callback(rows)
    server.clock.advance(30)
    assert [answer(c).name for c in clients] == ["success"] * len(clients)


def test_no_token_without_user_agent_or_for_an_unoffered_mechanism(server, factory):
    """Tokens are per device: no user-agent id, no token; nor for
    HT-SHA-256-ENDP when this connection has no tls-server-end-point."""
    for mechanism, ua in (("HT-SHA-256-NONE", None), ("HT-SHA-256-ENDP", UA)):
        c = connect(factory)
        authenticate(c, "PLAIN", plain(),
                     f"<request-token xmlns='{FAST}' mechanism='{mechanism}'/>", ua=ua)
        success = [e for e in c.received() if e.name == "success"][0]
        assert child(success, FAST, "token") is None
    assert rows(server) == []


def _hibernated_session(factory, server, token: str) -> tuple[str, Any]:
    """A FAST login with Bind2 + resumable SM, one message received, connection lost."""
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/></bind>")
    success = c.one()
    previd = child(child(success, BIND2, "bound"), SM, "enabled")["id"]
    full = str(child(success, NS, "authorization-identifier"))
    c.send("<presence/>")
    from tests.unit.fakes import bind
    bob = bind(server, "bob@localhost/pc", available=True)
    bob.stream.dataReceived(f"<message to='{full}' type='chat'><body>missed</body></message>".encode())
    c.lose()
    assert server.sessions.get("alice@localhost", full.split("/")[1]) is not None
    return previd, full


def test_fast_login_resumes_a_hibernated_session_in_one_exchange(server, factory):
    """<authenticate/> with FAST and an inline <resume/>: <success/> names the
    resumed full JID and holds <resumed/>; no Bind2 is done; the missed
    message follows the <success/> on the same stream."""
    token, _ = get_token(factory)
    previd, full = _hibernated_session(factory, server, token)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"
                 f"<bind xmlns='{BIND2}'><tag>Phone</tag></bind>")
    got = c.received()
    success = got[0]
    assert success.name == "success", success.toXml()
    assert str(child(success, NS, "authorization-identifier")) == full
    assert child(success, SM, "resumed")["previd"] == previd
    assert child(success, BIND2, "bound") is None
    assert [str(e.body) for e in got[1:] if e.name == "message"] == ["missed"]
    assert c.proto.state == c2s.BOUND
    assert len(list(server.sessions.resources("alice@localhost"))) == 1


def test_failed_inline_resume_goes_on_to_bind(server, factory):
    """An unknown previd: <success/> holds <failed/> and the Bind2 result."""
    token, _ = get_token(factory)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<resume xmlns='{SM}' previd='nope' h='0'/>"
                 f"<bind xmlns='{BIND2}'><tag>Phone</tag></bind>")
    success = c.one()
    assert child(child(success, SM, "failed"), ns.STANZA_ERRORS, "item-not-found") is not None
    assert child(success, BIND2, "bound") is not None
    assert c.proto.state == c2s.BOUND


def test_inline_resume_waits_for_stanzas_still_being_committed(server, factory):
    """A message the phone sent just before losing its connection is still
    being stored: the <success/> with <resumed/> waits for the commit and
    its 'h' covers the message."""
    from twisted.internet import defer

    token, _ = get_token(factory)
    c = connect(factory)
    authenticate(c, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/></bind>")
    previd = child(child(c.one(), BIND2, "bound"), SM, "enabled")["id"]
    held: list = []

    def store(*args: Any) -> Any:
        d: Any = defer.Deferred()
        held.append(d)
        return d

    server.stores.offline.store = store
    c.send("<message to='bob@localhost' type='chat'><body>for bob</body></message>")
    c.lose()
    again = connect(factory)
    authenticate(again, "HT-SHA-256-NONE", ht(token), f"<fast xmlns='{FAST}'/>"
                 f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert again.received() == []
    held[0].callback(True)
    success = again.received()[0]
    assert child(success, SM, "resumed")["h"] == "1"
