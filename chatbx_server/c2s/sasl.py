"""SASL negotiation on a client stream (RFC 6120 §6, RFC 4422).

Mechanisms, in the order Prosody and ejabberd offer them:
SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN.
-PLUS only when the TLS layer gives channel-binding data (XEP-0440 lists
the types); PLAIN only over TLS (the stream never gets here without it).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.c2s.scram import ScramError, ScramServer, decoy_credentials
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

SCRAM_MECHANISMS = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}


class SASLFailure(Exception):
    def __init__(self, condition: str, text: Optional[str] = None):
        super().__init__(condition)
        self.condition = condition
        self.text = text


def mechanisms_for(bindings: dict[str, bytes]) -> list[str]:
    """The mechanisms to offer on a TLS stream with these bindings."""
    plain = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    if bindings:
        return ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"] + plain
    return plain


def features_element(mechanisms: list[str], bindings: dict[str, bytes]) -> list[domish.Element]:
    mechs = domish.Element((ns.SASL, "mechanisms"))
    for name in mechanisms:
        mechs.addElement("mechanism", content=name)
    out = [mechs]
    if bindings:
        cb = domish.Element((ns.SASL_CB, "sasl-channel-binding"))
        for cb_type in bindings:
            cb.addElement("channel-binding")["type"] = cb_type
        out.append(cb)
    return out


def decode_payload(element: domish.Element) -> bytes:
    """The base64 payload of a SASL element; '=' is empty (RFC 6120 §6.4.2)."""
    text = str(element).strip()
    if text == "=" or not text:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLFailure("incorrect-encoding") from None


class SASLExchange:
    """One authentication attempt; the stream owns it until it ends.

    ``on_success(jid, additional)`` / ``on_challenge(data)`` are called
    back; a SASLFailure (raised or in a Deferred) means failure.
    """

    def __init__(self, server: "Server", host: str, mechanism: str,
                 offered: list[str], bindings: dict[str, bytes]) -> None:
        if mechanism not in offered:
            raise SASLFailure("invalid-mechanism")
        self.server = server
        self.host = host
        self.mechanism = mechanism
        self.offered = offered
        self.bindings = bindings
        self.scram: Optional[ScramServer] = None
        self.jid: Optional[JID] = None

    def _user_jid(self, username: str, authzid: Optional[str]) -> JID:
        try:
            jid = JID.parse(f"{username}@{self.host}", cache=False)
        except InvalidJID:
            raise SASLFailure("not-authorized") from None
        if jid.user is None or jid.resource is not None or jid.host != self.host:
            # The username is a localpart: "alice@other.example/" must not
            # parse into another hosted domain's account.
            raise SASLFailure("not-authorized")
        if authzid:
            try:
                wanted = JID.parse(authzid, cache=False)
            except InvalidJID:
                raise SASLFailure("invalid-authzid") from None
            if wanted.bare != jid.bare:
                raise SASLFailure("invalid-authzid")
        return jid

    def start(self, initial: bytes) -> defer.Deferred:
        """Handle ``<auth>``; fires with ("challenge", data) or ("success", (jid, data))."""
        if self.mechanism == "PLAIN":
            return self._plain(initial)
        hash_name, plus = SCRAM_MECHANISMS[self.mechanism]
        self.scram = ScramServer(hash_name, plus, self.bindings,
                                 plus_offered=any(m.endswith("-PLUS") for m in self.offered))
        if not initial:
            # RFC 6120 §6.4.2: an empty initial response; SCRAM is client-first.
            return defer.succeed(("challenge", b""))
        return self._client_first(initial)

    def step(self, data: bytes) -> defer.Deferred:
        """Handle ``<response>``."""
        if self.scram is None:
            return defer.fail(SASLFailure("malformed-request"))
        if not self.scram.username:
            return self._client_first(data)
        try:
            final = self.scram.client_final(data)
        except ScramError as exc:
            return defer.fail(SASLFailure(exc.condition))
        assert self.jid is not None
        return defer.succeed(("success", (self.jid, final)))

    @defer.inlineCallbacks
    def _client_first(self, data: bytes) -> Any:
        assert self.scram is not None
        try:
            username = self.scram.client_first(data)
        except ScramError as exc:
            raise SASLFailure(exc.condition) from None
        self.jid = self._user_jid(username, self.scram.authzid)
        creds = yield self.server.stores.users.get_credentials(self.jid.bare, self.scram.hash_name)
        if creds is None:
            creds = decoy_credentials(self.server.secret, self.scram.hash_name, self.jid.bare,
                                      iterations=getattr(self.server.stores.users, "iterations", 4096))
        return ("challenge", self.scram.server_first(creds))

    @defer.inlineCallbacks
    def _plain(self, data: bytes) -> Any:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise SASLFailure("malformed-request")
        try:
            authzid, authcid, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise SASLFailure("malformed-request") from None
        if not authcid or not password:
            raise SASLFailure("not-authorized")
        jid = self._user_jid(authcid, authzid or None)
        ok = yield self.server.stores.users.check_password(jid.bare, password)
        if not ok:
            raise SASLFailure("not-authorized")
        return ("success", (jid, b""))


def failure_element(condition: str, text: Optional[str] = None) -> domish.Element:
    failure = domish.Element((ns.SASL, "failure"))
    failure.addElement(condition)
    if text:
        failure.addElement("text", content=text)
    return failure


class AuthThrottle:
    """Slows down repeated SASL failures from one address.

    Each failure adds ``step`` seconds (up to ``cap``) to the time the next
    failure answer from that address waits; success or ``forget_after``
    seconds of quiet clear it. Bounded: the oldest entries go first.
    """

    def __init__(self, clock: Any, step: float, cap: float,
                 forget_after: float = 600.0, max_entries: int = 100_000) -> None:
        self.clock = clock
        self.step = step
        self.cap = cap
        self.forget_after = forget_after
        self.max_entries = max_entries
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, address: str) -> float:
        """Record a failure; return how long to delay its answer."""
        now = self.clock.seconds()
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        if len(self._failures) > self.max_entries:
            del self._failures[next(iter(self._failures))]
        return min(self.step * (count - 1), self.cap)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def delay_call(self, address: str, fn: Callable[[], None]) -> None:
        delay = self.failed(address)
        if delay > 0:
            self.clock.callLater(delay, fn)
        else:
            fn()
