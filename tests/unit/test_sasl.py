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


def test_throttle_reset_on_success():
    """A successful login clears the address's record."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0)
    throttle.failed("a")
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.failed("a") == 0


def test_throttle_forgets_after_quiet_time():
    """After forget_after seconds without failures the count starts over."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, forget_after=60)
    throttle.failed("a")
    throttle.failed("a")
    clock.advance(30)
    assert throttle.failed("a") == 2  # still remembered
    clock.advance(61)
    assert throttle.failed("a") == 0


def test_throttle_is_bounded():
    """The table never holds more than max_entries addresses (oldest go first)."""
    clock = MemoryReactorClock()
    throttle = AuthThrottle(clock, step=1.0, cap=10.0, max_entries=2)
    throttle.failed("a")
    throttle.failed("a")
    throttle.failed("b")
    throttle.failed("c")
    assert throttle.failed("a") == 0  # evicted
    assert len(throttle._failures) <= 2


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
