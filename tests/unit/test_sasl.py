"""SASL exchanges against the real user store (RFC 6120 §6, RFC 4422) and
the per-address failure throttle."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from chatbx_server.c2s.sasl import (AuthThrottle, SASLExchange, SASLFailure, decode_payload,
                                    features_element, mechanisms_for)
from chatbx_server.xmpp import ns
from tests.unit.fakes import create_user, make_server, stanza
from tests.unit.test_scram import client_final

ALL = mechanisms_for({"tls-exporter": b"x" * 32})
NO_PLUS = mechanisms_for({})


def outcome(d) -> Any:
    """The result of an already-fired Deferred, or its Failure."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def condition_of(d) -> str:
    result = outcome(d)
    assert isinstance(result, Failure), f"expected a failure, got {result!r}"
    result.trap(SASLFailure)
    return result.value.condition


@pytest.fixture
def server():
    srv = make_server(modules=[], domains=("localhost", "other.example"))
    create_user(srv, "alice@localhost", "pencil")
    create_user(srv, "alice@other.example", "other")
    return srv


def scram_login(server, user: str, password: str, mechanism: str = "SCRAM-SHA-256",
                offered=NO_PLUS, bindings=None, gs2: str = "n,,", cb: bytes = b""):
    """Run a whole SCRAM exchange; return (challenge data, final Deferred)."""
    exchange = SASLExchange(server, "localhost", mechanism, offered, bindings or {})
    bare = f"n={user},r=clientnonce"
    kind, first = outcome(exchange.start((gs2 + bare).encode()))
    assert kind == "challenge"
    hash_name = "SHA-1" if "SHA-1" in mechanism else "SHA-256"
    return first, exchange.step(client_final(hash_name, password, bare, first, gs2, cb))


def test_mechanisms_offer_plus_only_with_bindings():
    """-PLUS comes first when the TLS layer has bindings, and not at all without."""
    assert NO_PLUS == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert ALL[:2] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"] and ALL[2:] == NO_PLUS
    elements = features_element(ALL, {"tls-exporter": b"x", "tls-server-end-point": b"y"})
    assert [str(m) for m in elements[0].elements()] == ALL
    assert elements[1].uri == ns.SASL_CB
    assert [c["type"] for c in elements[1].elements()] == ["tls-exporter", "tls-server-end-point"]
    assert len(features_element(NO_PLUS, {})) == 1


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_success(server, mechanism):
    """A correct SCRAM exchange ends in success with the bare JID and a v= signature."""
    _, d = scram_login(server, "alice", "pencil", mechanism)
    kind, (jid, additional) = outcome(d)
    assert kind == "success"
    assert jid.bare == "alice@localhost" and jid.resource is None
    assert additional.startswith(b"v=")


def test_scram_plus_success(server):
    """SCRAM-SHA-256-PLUS with the connection's binding succeeds."""
    cb = b"\x07" * 32
    _, d = scram_login(server, "alice", "pencil", "SCRAM-SHA-256-PLUS", ALL,
                       {"tls-exporter": cb}, "p=tls-exporter,,", cb)
    assert outcome(d)[0] == "success"


def test_scram_y_downgrade_when_plus_offered(server):
    """A 'y' client under a server that offered -PLUS is refused (stripped offer)."""
    exchange = SASLExchange(server, "localhost", "SCRAM-SHA-256", ALL, {"tls-exporter": b"x"})
    assert condition_of(exchange.start(b"y,,n=alice,r=abc")) == "not-authorized"


def test_scram_wrong_password(server):
    """A wrong password fails at the final step with not-authorized."""
    _, d = scram_login(server, "alice", "wrong")
    assert condition_of(d) == "not-authorized"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_unknown_user_fails_like_wrong_password(server, mechanism):
    """An unknown account gets a challenge of the same shape as a real one and
    fails at the same step with the same condition: no account enumeration."""
    real_first, real = scram_login(server, "alice", "wrong", mechanism)
    fake_first, fake = scram_login(server, "nobody", "wrong", mechanism)

    def shape(first: bytes):
        attrs = dict(p.split("=", 1) for p in first.decode().split(","))
        return len(base64.b64decode(attrs["s"])), attrs["i"]

    assert shape(real_first) == shape(fake_first)
    assert condition_of(real) == condition_of(fake) == "not-authorized"
    # Stable decoy salt: asking twice does not reveal the account is fake.
    again, _ = scram_login(server, "nobody", "wrong", mechanism)
    assert again.decode().split(",")[1] == fake_first.decode().split(",")[1]


def test_scram_empty_initial_response_then_client_first(server):
    """An empty initial response gets an empty challenge; the client-first
    then comes in a <response/>."""
    exchange = SASLExchange(server, "localhost", "SCRAM-SHA-256", NO_PLUS, {})
    assert outcome(exchange.start(b"")) == ("challenge", b"")
    kind, first = outcome(exchange.step(b"n,,n=alice,r=abc"))
    assert kind == "challenge" and first.startswith(b"r=abc")
    kind, _ = outcome(exchange.step(client_final("SHA-256", "pencil", "n=alice,r=abc", first, "n,,")))
    assert kind == "success"


def test_plain_success_and_failure(server):
    """PLAIN checks the password against the store."""
    ok = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"\0alice\0pencil")
    kind, (jid, extra) = outcome(ok)
    assert kind == "success" and jid.bare == "alice@localhost" and extra is None
    bad = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"\0alice\0nope")
    assert condition_of(bad) == "not-authorized"
    unknown = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"\0ghost\0nope")
    assert condition_of(unknown) == "not-authorized"


@pytest.mark.parametrize("payload,condition", [
    (b"alice\0pencil", "malformed-request"),
    (b"\0\xff\0pencil", "malformed-request"),
    (b"\0alice\0", "not-authorized"),
    (b"\0\0pencil", "not-authorized"),
])
def test_plain_malformed(server, payload, condition):
    """Broken PLAIN messages fail without touching the store."""
    d = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(payload)
    assert condition_of(d) == condition


def test_plain_authzid(server):
    """An authzid equal to the account is fine; another account is invalid-authzid."""
    ok = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"alice@localhost\0alice\0pencil")
    assert outcome(ok)[0] == "success"
    bad = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"bob@localhost\0alice\0pencil")
    assert condition_of(bad) == "invalid-authzid"
    broken = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(b"@@\0alice\0pencil")
    assert condition_of(broken) == "invalid-authzid"


def test_scram_authzid_mismatch(server):
    """SCRAM's a= authzid naming another account is invalid-authzid."""
    exchange = SASLExchange(server, "localhost", "SCRAM-SHA-256", NO_PLUS, {})
    assert condition_of(exchange.start(b"n,a=bob@localhost,n=alice,r=abc")) == "invalid-authzid"


@pytest.mark.parametrize("username", ["alice@other.example/", "alice@other.example", "other.example/x"])
def test_username_cannot_reach_another_domain(server, username):
    """The authcid is a localpart of the stream's host: '@' or '/' tricks
    must not authenticate an account of another hosted domain."""
    d = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(
        b"\0" + username.encode() + b"\0other")
    assert condition_of(d) == "not-authorized"


def test_mechanism_not_offered(server):
    """Asking for a mechanism that was not offered is invalid-mechanism."""
    with pytest.raises(SASLFailure) as err:
        SASLExchange(server, "localhost", "SCRAM-SHA-256-PLUS", NO_PLUS, {})
    assert err.value.condition == "invalid-mechanism"
    with pytest.raises(SASLFailure) as err:
        SASLExchange(server, "localhost", "DIGEST-MD5", ALL, {})
    assert err.value.condition == "invalid-mechanism"


def test_step_for_plain_is_malformed(server):
    """A <response/> in a PLAIN exchange (no SCRAM state) is malformed-request."""
    exchange = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {})
    assert condition_of(exchange.step(b"x")) == "malformed-request"


def test_decode_payload():
    """'=' and empty are empty payloads; bad base64 is incorrect-encoding."""
    assert decode_payload(stanza(f"<auth xmlns='{ns.SASL}'>=</auth>")) == b""
    assert decode_payload(stanza(f"<auth xmlns='{ns.SASL}'/>")) == b""
    assert decode_payload(stanza(f"<auth xmlns='{ns.SASL}'>AGEAYg==</auth>")) == b"\0a\0b"
    with pytest.raises(SASLFailure) as err:
        decode_payload(stanza(f"<auth xmlns='{ns.SASL}'>*notb64*</auth>"))
    assert err.value.condition == "incorrect-encoding"


def test_throttle_delays_grow_and_are_capped():
    """Each failure from one address adds a step, up to the cap; other addresses are unaffected."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=3.0)
    assert [throttle.failed("1.2.3.4") for _ in range(6)] == [0, 1, 2, 3, 3, 3]
    assert throttle.failed("5.6.7.8") == 0


def test_throttle_success_erases_nothing():
    """A success (of any account) leaves the address's failures counted:
    one valid account must not reset the count of an address guessing others."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0)
    throttle.failed("a")
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.failed("a") == 2


def test_throttle_failures_leak_away_with_time():
    """max_failures failures per window: at the limit attempts are refused; each
    window/max_failures seconds one failure leaks away, after a window all have."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, max_failures=3, window=60.0)
    for _ in range(3):
        assert throttle.allowed("a")
        throttle.failed("a")
    assert not throttle.allowed("a")
    clock.advance(19.9)
    assert not throttle.allowed("a")
    clock.advance(0.1)          # 20 s: one of the three has leaked away
    assert throttle.allowed("a")
    throttle.failed("a")
    assert not throttle.allowed("a")
    clock.advance(60)
    assert throttle.failures("a") == 0 and throttle.failed("a") == 0


def test_throttle_accounts_counted_across_addresses():
    """Password failures count for the account whichever address they come
    from: many addresses against one account are refused like one."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=0.0, cap=0.0, max_failures=3)
    for n in range(3):
        assert throttle.charge(f"10.0.0.{n}", "alice@localhost")
    assert not throttle.charge("10.0.0.99", "alice@localhost")
    assert not throttle.allowed("10.0.0.99", "alice@localhost")
    assert throttle.allowed("10.0.0.99", "bob@localhost")
    assert throttle.allowed("10.0.0.99")


def test_throttle_refund_takes_back_only_its_charge():
    """A right password refunds its own charge; earlier failures stay."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0)
    throttle.charge("a", "x@h")           # wrong password: stays charged
    assert throttle.charge("a", "x@h")
    throttle.refund("a", "x@h")           # right password
    assert throttle.failures("a") == 1 and throttle.failures(None, "x@h") == 1


def test_throttle_ipv6_counted_per_64():
    """IPv6 addresses of one /64 (one host's usual allocation) share a counter."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, max_failures=2)
    throttle.failed("2001:db8:1:2::1")
    throttle.failed("2001:db8:1:2:ffff::7")
    assert not throttle.allowed("2001:db8:1:2::abcd")
    assert throttle.allowed("2001:db8:1:3::1")


def test_throttle_is_bounded():
    """Each table holds at most max_entries keys (least recently failed go first)."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, max_entries=2)
    throttle.failed("a", "u1@h")
    throttle.failed("a", "u1@h")
    throttle.failed("b", "u2@h")
    throttle.failed("c", "u3@h")
    assert throttle.failed("a") == 0  # evicted
    assert len(throttle._addresses) <= 2 and len(throttle._accounts) <= 2


def test_throttle_drops_leaked_entries():
    """Entries whose failures have all leaked away are dropped as new ones come."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, max_failures=10, window=10.0)
    for n in range(50):
        throttle.failed(f"10.0.0.{n}")
    clock.advance(2)
    throttle.failed("10.0.1.1")
    assert list(throttle._addresses) == ["10.0.1.1"]


def test_throttle_delay_call_uses_clock():
    """delay_call runs at once for the first failure and later ones after their delay."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=2.0, cap=10.0)
    calls: list[int] = []
    throttle.delay_call("a", lambda: calls.append(1))
    assert calls == [1]
    throttle.delay_call("a", lambda: calls.append(2))
    assert calls == [1]
    clock.advance(1.9)
    assert calls == [1]
    clock.advance(0.1)
    assert calls == [1, 2]


def test_throttle_delay_call_does_not_count_twice():
    """A failure the exchange already counted (charged password, refusal) is
    only delayed by delay_call, not counted again."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0)
    throttle.charge("a", "x@h")
    throttle.delay_call("a", lambda: None, SASLFailure("not-authorized", account="x@h",
                                                       counted=True))
    assert throttle.failures("a") == 1
    throttle.delay_call("a", lambda: None, SASLFailure("malformed-request"))
    assert throttle.failures("a") == 2


# -- limits through the exchange ------------------------------------------------

@pytest.fixture
def limited():
    """A server refusing logins after 3 failures per address or account."""
    srv = make_server(modules=[], config_text="[limits]\nauth_max_failures = 3\n"
                                              "auth_failure_window = 60\n")
    create_user(srv, "alice@localhost", "pencil")
    create_user(srv, "mallory@localhost", "mine")
    return srv


def plain(server, user: str, password: str, address: str = "10.0.0.1"):
    exchange = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}, address)
    return exchange.start(f"\0{user}\0{password}".encode())


def count_checks(server, monkeypatch) -> list[str]:
    """Record every password check that reaches the user store."""
    checked: list[str] = []
    real = server.stores.users.check_password

    def check(jid, password):
        checked.append(jid)
        return real(jid, password)

    monkeypatch.setattr(server.stores.users, "check_password", check)
    return checked


def test_valid_account_does_not_reset_address_limit(limited, monkeypatch):
    """An attacker with one valid account cannot reset its address's count by
    logging in with it: past the limit even its own login is refused, and no
    further password is checked."""
    checked = count_checks(limited, monkeypatch)
    assert condition_of(plain(limited, "alice", "guess1")) == "not-authorized"
    assert outcome(plain(limited, "mallory", "mine"))[0] == "success"
    assert condition_of(plain(limited, "alice", "guess2")) == "not-authorized"
    assert outcome(plain(limited, "mallory", "mine"))[0] == "success"
    assert condition_of(plain(limited, "bob", "guess3")) == "not-authorized"
    assert len(checked) == 5
    assert condition_of(plain(limited, "alice", "pencil")) == "temporary-auth-failure"
    assert condition_of(plain(limited, "mallory", "mine")) == "temporary-auth-failure"
    assert len(checked) == 5  # refused without checking any password
    assert outcome(plain(limited, "mallory", "mine", "10.0.0.2"))[0] == "success"


def test_account_limit_refuses_right_password_from_anywhere(limited, monkeypatch):
    """Past the limit of one account (guessed from many addresses), even its
    right password is refused with temporary-auth-failure, unchecked; other
    accounts log in from the same address; after the window it works again."""
    for n in range(3):
        assert condition_of(plain(limited, "alice", "guess", f"10.1.0.{n}")) == "not-authorized"
    checked = count_checks(limited, monkeypatch)
    assert condition_of(plain(limited, "alice", "pencil", "10.2.0.1")) == "temporary-auth-failure"
    assert checked == []
    assert outcome(plain(limited, "mallory", "mine", "10.2.0.1"))[0] == "success"
    limited.clock.advance(60)
    assert outcome(plain(limited, "alice", "pencil", "10.2.0.1"))[0] == "success"


def test_concurrent_checks_cannot_pass_the_limit(limited, monkeypatch):
    """Password checks in flight at once (many connections, a busy hash
    pool) are counted when they start: no more than the limit run."""
    from twisted.internet import defer

    pending: list = []
    monkeypatch.setattr(limited.stores.users, "check_password",
                        lambda jid, pw: pending.append(defer.Deferred()) or pending[-1])
    results = [plain(limited, "alice", f"guess{n}", f"10.3.0.{n}") for n in range(5)]
    assert len(pending) == 3
    assert [condition_of(d) for d in results[3:]] == ["temporary-auth-failure"] * 2
    for d in pending:
        d.callback(False)
    assert [condition_of(d) for d in results[:3]] == ["not-authorized"] * 3


def test_scram_refused_past_limit(limited):
    """SCRAM is refused at the client-first message once the account is at
    its limit, and a proof already under way is refused at the final step."""
    first, late = scram_login(limited, "alice", "wrong")
    assert condition_of(late) == "not-authorized"
    exchange = SASLExchange(limited, "localhost", "SCRAM-SHA-256", NO_PLUS, {}, "10.4.0.1")
    kind, server_first = outcome(exchange.start(b"n,,n=alice,r=abc"))
    assert kind == "challenge"          # 1 failure so far: allowed to start
    for _ in range(2):
        assert condition_of(plain(limited, "alice", "wrong", "10.4.0.2")) == "not-authorized"
    final = client_final("SHA-256", "pencil", "n=alice,r=abc", server_first, "n,,")
    assert condition_of(exchange.step(final)) == "temporary-auth-failure"
    again = SASLExchange(limited, "localhost", "SCRAM-SHA-256", NO_PLUS, {}, "10.4.0.3")
    assert condition_of(again.start(b"n,,n=alice,r=abc")) == "temporary-auth-failure"


def test_address_limit_refuses_at_auth(limited):
    """An address at its limit is refused at <auth/>, before any payload is read."""
    for n in range(3):
        assert condition_of(plain(limited, f"user{n}", "x", "10.5.0.1")) == "not-authorized"
    exchange = SASLExchange(limited, "localhost", "SCRAM-SHA-256", NO_PLUS, {}, "10.5.0.1")
    assert condition_of(exchange.start(b"")) == "temporary-auth-failure"


def test_stream_answers_temporary_auth_failure():
    """Over the wire: connection after connection from one address, each
    guessing a password and then logging in to the attacker's own account,
    still reaches the limit; then even the own account gets
    <failure><temporary-auth-failure/></failure>."""
    from chatbx_server.c2s.stream import C2SFactory
    from tests.unit.test_c2s_stream import Client, FakeTLS

    limited = make_server(modules=[], config_text="[limits]\nauth_max_failures = 3\n")
    create_user(limited, "alice@localhost", "pencil")
    create_user(limited, "mallory@localhost", "mine")
    factory = C2SFactory(limited, FakeTLS(), direct_tls=True)
    answers = []
    for _ in range(3):
        client = Client(factory, "10.6.0.1")
        client.header()
        client.features()
        client.plain("alice", "guess")
        limited.clock.advance(5)  # past the answer's delay
        assert client.one().firstChildElement().name == "not-authorized"
        client.plain("mallory", "mine")
        limited.clock.advance(5)
        answers.append(client.one())
        client.lose()
    assert [a.name for a in answers] == ["success", "success", "failure"]
    assert answers[2].firstChildElement().name == "temporary-auth-failure"


# -- decoy credentials for unknown accounts ---------------------------------------

def _server_on(url: str):
    """A started Server on its own threadless Database at ``url``."""
    from chatbx_server.config import Config
    from chatbx_server.server import Server
    from chatbx_server.storage.database import Database

    srv = Server(Config(), clock=MemoryReactorClock(), database=Database.for_tests(url))
    srv.start()
    return srv


def _salt(server, user: str) -> bytes:
    exchange = SASLExchange(server, "localhost", "SCRAM-SHA-256", NO_PLUS, {})
    kind, first = outcome(exchange.start(f"n,,n={user},r=abc".encode()))
    assert kind == "challenge"
    attrs = dict(p.split("=", 1) for p in first.decode().split(","))
    return base64.b64decode(attrs["s"])


def test_decoy_salt_same_across_servers_and_restarts(tmp_path):
    """Two Server instances on one database (two nodes, or before and after a
    restart) give an unknown account the same salt, as a real account's stays
    the same: the salt does not tell which accounts exist."""
    from chatbx_server.storage import migrate

    url = f"sqlite:///{tmp_path / 'chatbx.sqlite'}"
    migrate.upgrade(url)
    first = _server_on(url)
    salt = _salt(first, "nobody")
    second = _server_on(url)
    assert _salt(second, "nobody") == salt
    assert _salt(second, "someone") != salt
    first.database.stop()
    third = _server_on(url)   # a restart
    assert _salt(third, "nobody") == salt


def test_decoy_iterations_match_real_accounts(server, monkeypatch):
    """An unknown account's SCRAM challenge and PLAIN check use the iteration
    count real accounts get, so neither the i= value nor the time spent
    tells them apart."""
    import hashlib

    server.stores.users.iterations = 5000
    create_user(server, "carol@localhost", "pw")
    real_first, _ = scram_login(server, "carol", "x")
    fake_first, _ = scram_login(server, "nobody", "x")
    assert real_first.decode().split(",")[2] == fake_first.decode().split(",")[2] == "i=5000"

    rounds: list[int] = []
    real_pbkdf2 = hashlib.pbkdf2_hmac

    def pbkdf2(name, password, salt, iterations, *args):
        rounds.append(iterations)
        return real_pbkdf2(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", pbkdf2)
    for user in ("carol", "nobody"):
        d = SASLExchange(server, "localhost", "PLAIN", NO_PLUS, {}).start(f"\0{user}\0x".encode())
        assert condition_of(d) == "not-authorized"
    assert rounds == [5000, 5000]
