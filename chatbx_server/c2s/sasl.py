"""SASL negotiation on a client stream (RFC 6120 §6, RFC 4422).

Mechanisms, in the order Prosody and ejabberd offer them:
SCRAM-SHA-256-PLUS, SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN.
-PLUS only when the TLS layer gives channel-binding data (XEP-0440 lists
the types); PLAIN only over TLS (the stream never gets here without it).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
from collections import OrderedDict
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

#: name of the database secret that decoy SCRAM credentials derive from
DECOY_SECRET = "scram-decoy"

SCRAM_MECHANISMS = {
    "SCRAM-SHA-256-PLUS": ("SHA-256", True),
    "SCRAM-SHA-1-PLUS": ("SHA-1", True),
    "SCRAM-SHA-256": ("SHA-256", False),
    "SCRAM-SHA-1": ("SHA-1", False),
}


class SASLFailure(Exception):
    """A SASL failure (RFC 6120 §6.5) to answer with ``<failure/>``.

    ``account`` is the bare JID the attempt was for, when known, and
    ``counted`` says the exchange already told the throttle about it.
    """

    def __init__(self, condition: str, text: Optional[str] = None, *,
                 account: Optional[str] = None, counted: bool = False):
        super().__init__(condition)
        self.condition = condition
        self.text = text
        self.account = account
        self.counted = counted


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
                 offered: list[str], bindings: dict[str, bytes],
                 address: Optional[str] = None) -> None:
        if mechanism not in offered:
            raise SASLFailure("invalid-mechanism")
        self.server = server
        self.host = host
        self.mechanism = mechanism
        self.offered = offered
        self.bindings = bindings
        #: the client's IP address, for the failure limits (None: account only)
        self.address = address
        self.throttle: AuthThrottle = server.auth_throttle
        self.scram: Optional[ScramServer] = None
        self.jid: Optional[JID] = None
        #: the account as the login read it (storage.accounts.AccountInfo)
        self.account: Any = None

    def _refused(self, account: Optional[str]) -> SASLFailure:
        """Too many recent failures: RFC 6120 §6.5.12, try again later."""
        return SASLFailure("temporary-auth-failure", account=account, counted=True)

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
        """Handle ``<auth>``; fires with ("challenge", data) or ("success", (jid, data)).

        ``data`` of a success is None when the mechanism has no additional data.
        """
        if self.address is not None and not self.throttle.allowed(self.address):
            return defer.fail(self._refused(None))
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
        assert self.jid is not None
        account = self.jid.bare
        # The proof is the guess: charged here, where it is checked.
        if not self.throttle.charge(self.address, account):
            return defer.fail(self._refused(account))
        try:
            final = self.scram.client_final(data)
        except ScramError as exc:
            return defer.fail(SASLFailure(exc.condition, account=account, counted=True))
        self.throttle.refund(self.address, account)
        return self._admit(self.jid, final)

    def _admit(self, jid: JID, additional: Optional[bytes]) -> defer.Deferred:
        """The password was right: refuse a disabled account (RFC 6120
        §6.5.1 account-disabled, told only to who knows the password), else
        record the login, which also cancels a pending removal."""
        d = self.server.stores.accounts.login_info(jid.bare)

        def decide(result: tuple[str, Any]) -> tuple[str, Any]:
            state, self.account = result
            if state == "disabled":
                raise SASLFailure("account-disabled", account=jid.bare, counted=True)
            if state != "ok":
                raise SASLFailure("not-authorized", account=jid.bare, counted=True)
            return ("success", (jid, additional))

        return d.addCallback(decide)

    @defer.inlineCallbacks
    def _client_first(self, data: bytes) -> Any:
        assert self.scram is not None
        try:
            username = self.scram.client_first(data)
        except ScramError as exc:
            raise SASLFailure(exc.condition) from None
        self.jid = self._user_jid(username, self.scram.authzid)
        account = self.jid.bare
        yield self.throttle.refresh(self.address, account)
        if not self.throttle.allowed(self.address, account):
            raise self._refused(account)  # before any database work
        users = self.server.stores.users
        creds = yield users.get_credentials(account, self.scram.hash_name)
        if creds is None:
            # The secret is the database's, shared by every process and
            # restart, so an unknown account's salt is as stable as a real one's.
            secret = yield self.server.secrets.get(DECOY_SECRET)
            creds = decoy_credentials(secret, self.scram.hash_name, account,
                                      iterations=users.iterations)
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
        account = jid.bare
        yield self.throttle.refresh(self.address, account)
        if not self.throttle.charge(self.address, account):
            raise self._refused(account)  # without hashing the password
        try:
            ok = yield self.server.stores.users.check_password(account, password)
        except Exception:
            self.throttle.refund(self.address, account)  # our fault, not a guess
            raise
        if not ok:
            raise SASLFailure("not-authorized", account=account, counted=True)
        self.throttle.refund(self.address, account)
        # No additional data with PLAIN's success (RFC 6120 §6.4.6).
        return (yield self._admit(jid, None))


def failure_element(condition: str, text: Optional[str] = None) -> domish.Element:
    failure = domish.Element((ns.SASL, "failure"))
    failure.addElement(condition)
    if text:
        failure.addElement("text", content=text)
    return failure


class AuthThrottle:
    """Counts failed logins per address and per account; slows and refuses them.

    Every failure adds 1 to its address's score (IPv6: its /64, which one
    host usually owns whole) and, for a wrong password, to its account's.
    Scores leak away at ``max_failures / window`` per second: a burst of
    ``max_failures`` failures, then about one attempt per
    ``window / max_failures`` seconds. At ``max_failures`` a new attempt is
    refused with temporary-auth-failure (RFC 6120 §6.5.12) before any
    password is checked, so neither many connections from one address nor
    many addresses against one account guess faster than that.

    A success erases nothing: one valid account must not reset the count
    of the address it guesses other accounts' passwords from. Each failure
    answer also waits ``step * (failures - 1)`` seconds, up to ``cap``.

    Both tables are bounded (``max_entries`` each, the least recently
    failed go first, and fully leaked entries are dropped as new ones come).
    """

    def __init__(self, clock: Any, step: float, cap: float, *, max_failures: int = 10,
                 window: float = 600.0, max_entries: int = 100_000) -> None:
        self.clock = clock
        self.step = step
        self.cap = cap
        self.max_failures = max_failures
        self.window = window
        self.max_entries = max_entries
        self._leak = max_failures / window  # score units per second
        #: key -> (score, time of the score); oldest first
        self._addresses: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._accounts: OrderedDict[str, tuple[float, float]] = OrderedDict()
        #: in a cluster, the scores every node sees (cluster/limits.py
        #: SharedAuthScores): changes go there too, checks take the larger
        self.shared: Any = None

    @classmethod
    def from_limits(cls, clock: Any, limits: Any) -> "AuthThrottle":
        """The throttle a server's ``[limits]`` describe."""
        return cls(clock, limits.auth_failure_delay, limits.auth_failure_max_delay,
                   max_failures=limits.auth_max_failures, window=limits.auth_failure_window,
                   max_entries=limits.auth_failure_entries)

    # -- scores --------------------------------------------------------------

    def _score(self, table: OrderedDict[str, tuple[float, float]], key: Optional[str],
               now: float) -> float:
        if key is None:
            return 0.0
        entry = table.get(key)
        shared = self.shared
        if entry is None:
            local = 0.0
        else:
            score, then = entry
            local = max(0.0, score - (now - then) * self._leak)
        if shared is None:
            return local
        return max(local, shared.score("a" if table is self._addresses else "u", key, now))

    def _add(self, table: OrderedDict[str, tuple[float, float]], key: Optional[str],
             amount: float) -> None:
        if key is None:
            return
        now = self.clock.seconds()
        before = self._score(table, key, now)
        score = max(0.0, before + amount)
        limit = self.max_failures - 1
        if before <= limit < score:
            log.warn("too many failed logins for {kind} {key}: refusing new attempts for now",
                     kind="address" if table is self._addresses else "account", key=key)
        table.pop(key, None)
        if score > 0:
            table[key] = (score, now)
        if self.shared is not None:
            self.shared.add("a" if table is self._addresses else "u", key, amount)
        # Drop leaked-out entries from the old end, then enforce the cap.
        while table:
            oldest = next(iter(table))
            if self._score(table, oldest, now) > 0 and len(table) <= self.max_entries:
                break
            del table[oldest]

    @staticmethod
    def address_key(address: Optional[str]) -> Optional[str]:
        """The counter key of an address: itself, or its /64 for IPv6."""
        if not address:
            return None
        if ":" in address:
            try:
                net = ipaddress.IPv6Network(f"{address.split('%')[0]}/64", strict=False)
            except ValueError:
                return address
            return str(net)
        return address

    def failures(self, address: Optional[str], account: Optional[str] = None) -> float:
        """The larger of the address's and the account's current scores."""
        now = self.clock.seconds()
        return max(self._score(self._addresses, self.address_key(address), now),
                   self._score(self._accounts, account, now))

    def refresh(self, address: Optional[str], account: Optional[str] = None) -> defer.Deferred:
        """In a cluster, learn the scores other nodes gave ``address`` and
        ``account`` before a password or token is checked; at once on one node."""
        if self.shared is None:
            return defer.succeed(None)
        return self.shared.refresh([("a", self.address_key(address)), ("u", account)])

    def allowed(self, address: Optional[str], account: Optional[str] = None) -> bool:
        """Whether a new attempt may be checked (neither limit reached)."""
        return self.failures(address, account) <= self.max_failures - 1

    # -- recording -------------------------------------------------------------

    def charge(self, address: Optional[str], account: Optional[str]) -> bool:
        """Count a password check as failed before it runs; False when refused.

        Charging first means attempts checked at the same time (many
        connections, the hash pool busy) cannot all slip under the limit;
        :meth:`refund` takes the charge back when the password was right.
        """
        if not self.allowed(address, account):
            return False
        self._add(self._addresses, self.address_key(address), 1)
        self._add(self._accounts, account, 1)
        return True

    def refund(self, address: Optional[str], account: Optional[str]) -> None:
        """Take back one :meth:`charge` (a right password); earlier failures stay."""
        self._add(self._addresses, self.address_key(address), -1)
        self._add(self._accounts, account, -1)

    def failed(self, address: Optional[str], account: Optional[str] = None) -> float:
        """Record a failure; return how long to delay its answer."""
        self._add(self._addresses, self.address_key(address), 1)
        self._add(self._accounts, account, 1)
        return self.delay(address, account)

    def succeeded(self, address: Optional[str]) -> None:
        """A login succeeded: nothing is forgotten (see the class docs)."""

    def delay(self, address: Optional[str], account: Optional[str] = None) -> float:
        """How long an answer to a failure waits now."""
        count = math.ceil(self.failures(address, account) - 1e-9)
        return min(self.step * max(count - 1, 0), self.cap)

    def delay_call(self, address: str, fn: Callable[[], None],
                   failure: Optional[SASLFailure] = None) -> None:
        """Run ``fn`` (the failure answer) after the delay due.

        ``failure`` is what failed: one the exchange has already counted
        (a charged password check, a refusal) is not counted again; any
        other (bad mechanism, malformed data) counts for the address.
        """
        account = failure.account if failure is not None else None
        if failure is None or not failure.counted:
            delay = self.failed(address)
        else:
            delay = self.delay(address, account)
        if delay > 0:
            self.clock.callLater(delay, fn)
        else:
            fn()
