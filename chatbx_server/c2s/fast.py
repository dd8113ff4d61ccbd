"""FAST: token authentication in one round trip (XEP-0484 0.2.0).

A client that authenticated with SASL2 (XEP-0388) by any mechanism may
ask for a token (``<request-token mechanism='HT-SHA-256-...'/>``); the
token comes in ``<success/>`` and authenticates the next connections with
one of the Hashed Token mechanisms (draft-schmaus-kitten-sasl-ht):

- the client's initial response is ``authcid NUL HMAC-SHA-256(token,
  "Initiator" || cb-data)``, the server's additional data
  ``HMAC-SHA-256(token, "Responder" || cb-data)`` (mutual authentication);
- HT-SHA-256-EXPR binds to ``tls-exporter`` (RFC 9266, TLS 1.3),
  HT-SHA-256-ENDP to ``tls-server-end-point`` (RFC 5929), HT-SHA-256-NONE
  to nothing. -UNIQ (``tls-unique``) is not offered: TLS 1.3 has no
  tls-unique (RFC 8446 §C.5) and chatbx's TLS layer exposes neither it
  nor SCRAM-*-PLUS with it. A token works only with the mechanism it was
  issued for (XEP-0484 §3.4), so a channel-bound token cannot be
  downgraded to -NONE.

Tokens are per account and device (the XEP-0388 user-agent id, which
FAST requires), kept in two slots (storage/fast.py, XEP-0484 §5.1),
expire after ``token_lifetime``, are rotated (a new one in ``<success/>``)
when less than ``rotate_before`` is left, are invalidated by the client
(``<fast invalidate='true'/>``) or by the operator (``chatbxctl fast
revoke JID [--device ID]``), and die with the account.

Storage: the HT mechanisms use the token itself as the HMAC key, so the
server must be able to produce it: it cannot keep only a one-way hash of
it as it does for passwords. chatbx keeps a random nonce per token in the
database and derives the token as ``HMAC-SHA-256(K, nonce, account,
device, mechanism)`` with a 256-bit key K in a file outside the database
(``data_dir/fast-token.key``, mode 0600, created at first start; the
``key_file`` option names another path). A dump of the database alone
yields no usable token, and the key file alone yields none either;
losing the key file invalidates every token (clients fall back to their
password, XEP-0484 §4.1). Nodes of a cluster must share the key file.
Revocation is read at every FAST login, so it takes effect at once for
new logins and resumptions; connections already open stay up. A token
login is a login like a password one: a disabled account is refused, and
the login is recorded (``last_login``; a pending removal is cancelled).

Not supported: TLS 0-RTT (no ``tls-0rtt`` is advertised), so the replay
counter (``count``) is not needed and is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.c2s.sasl import SASLFailure
from chatbx_server.c2s.sasl2 import Authenticate, Outcome
from chatbx_server.features.time import xep0082_datetime
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.storage.fast import NEW, FastToken
from chatbx_server.xmpp.jid import JID, InvalidJID

log = Logger(observer=log_observer)

NS = "urn:xmpp:fast:0"
#: HT mechanisms, best first, with the channel binding each needs
MECHANISMS: dict[str, Optional[str]] = {
    "HT-SHA-256-EXPR": "tls-exporter",
    "HT-SHA-256-ENDP": "tls-server-end-point",
    "HT-SHA-256-NONE": None,
}
KEY_FILE = "fast-token.key"
KEY_LENGTH = 32
NONCE_LENGTH = 16


# -- the mechanism (pure) ---------------------------------------------------------------

def mechanisms_for(bindings: dict[str, bytes]) -> list[str]:
    """The HT mechanisms usable on a stream with these channel bindings."""
    return [m for m, cb in MECHANISMS.items() if cb is None or cb in bindings]


def initiator_hash(token: str, cb_data: bytes) -> bytes:
    """What the client proves (draft-schmaus-kitten-sasl-ht §3.1)."""
    return hmac.digest(token.encode(), b"Initiator" + cb_data, "sha256")


def responder_hash(token: str, cb_data: bytes) -> bytes:
    """The server's answer: it knows the token too (mutual authentication)."""
    return hmac.digest(token.encode(), b"Responder" + cb_data, "sha256")


def parse_initial(data: bytes) -> tuple[str, bytes]:
    """``authcid NUL initiator-hashed-token``; SASLFailure when malformed."""
    authcid, sep, proof = data.partition(b"\0")
    if not sep or not authcid or len(proof) != hashlib.sha256().digest_size:
        raise SASLFailure("malformed-request")
    try:
        return authcid.decode("utf-8"), proof
    except UnicodeDecodeError:
        raise SASLFailure("malformed-request") from None


def derive_token(key: bytes, nonce: bytes, account: str, device: str, mechanism: str) -> str:
    """The token a stored row stands for; only the holder of ``key`` can compute it."""
    message = b"\0".join((b"chatbx FAST token", nonce, account.encode(), device.encode(),
                          mechanism.encode()))
    return base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")).rstrip(b"=").decode()


def load_key(path: str) -> bytes:
    """Read the token key, creating it (mode 0600) if it does not exist.

    The key is written to a private temporary file and linked into place,
    so that processes sharing data_dir (``[cluster] workers``) creating it
    at once agree on one key and none reads a file still being written.
    """
    if not os.path.exists(path):
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(KEY_LENGTH))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process was first: its key is the key
        finally:
            os.unlink(tmp)
    with open(path, "rb") as fh:
        key = fh.read()
    if len(key) < KEY_LENGTH:
        raise ValueError(f"{path}: the FAST token key is shorter than {KEY_LENGTH} bytes")
    return key


def token_element(token: str, expires_at: float) -> domish.Element:
    """XEP-0484 §3.3: ``<token/>`` for ``<success/>``."""
    el = domish.Element((NS, "token"))
    el["expiry"] = xep0082_datetime(expires_at)
    el["token"] = token
    return el


# -- one authentication -----------------------------------------------------------------

class FastExchange:
    """An HT-* run on one stream: one message, one answer."""

    def __init__(self, feature: "FastFeature", stream: Any, request: Authenticate) -> None:
        self.feature = feature
        self.stream = stream
        self.request = request
        self.mechanism = request.mechanism
        #: the stored token that authenticated the client
        self.token: Optional[FastToken] = None
        #: the account as the login read it (storage.accounts.AccountInfo)
        self.account: Any = None

    def step(self, data: bytes) -> defer.Deferred:
        return defer.fail(SASLFailure("malformed-request"))  # one round trip only

    def start(self, initial: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._start(initial))

    def _jid(self, authcid: str) -> JID:
        host = self.stream.host
        try:
            jid = JID.parse(authcid if "@" in authcid else f"{authcid}@{host}", cache=False)
        except InvalidJID:
            raise SASLFailure("not-authorized") from None
        if jid.user is None or jid.resource is not None or jid.host != host:
            raise SASLFailure("not-authorized")
        return jid

    async def _start(self, initial: bytes) -> tuple[str, Any]:
        stream = self.stream
        server = self.feature.server
        throttle = server.auth_throttle
        address = stream.peer or None
        bindings = stream.channel_bindings()
        if self.mechanism not in mechanisms_for(bindings):
            raise SASLFailure("invalid-mechanism")
        if address is not None and not throttle.allowed(address):
            raise SASLFailure("temporary-auth-failure", counted=True)
        authcid, proof = parse_initial(initial)
        jid = self._jid(authcid)
        account = jid.bare
        device = self.request.user_agent
        if device is None:
            # XEP-0484 §4.1: tokens are bound to the user-agent id.
            raise SASLFailure("not-authorized", "FAST needs a user-agent id", account=account)
        await throttle.refresh(address, account)
        if not throttle.allowed(address, account):
            raise SASLFailure("temporary-auth-failure", account=account, counted=True)
        tokens = await server.stores.fast.tokens(account, device)
        # The guess is charged here, after the read: the check below runs
        # at once (no other attempt can be checked meanwhile, which is what
        # charging first is for), and concurrent logins from one address (a
        # NAT after an outage) do not hold charges across the read, which
        # refused right tokens with temporary-auth-failure.
        if not throttle.charge(address, account):
            raise SASLFailure("temporary-auth-failure", account=account, counted=True)
        cb_name = MECHANISMS[self.mechanism]
        cb_data = bindings[cb_name] if cb_name is not None else b""
        key = self.feature.key
        matched: Optional[tuple[FastToken, str]] = None
        for stored in tokens:
            if stored.mechanism != self.mechanism:
                continue  # XEP-0484 §3.4: bound to the mechanism it was issued for
            token = derive_token(key, stored.nonce, account, device, stored.mechanism)
            if hmac.compare_digest(initiator_hash(token, cb_data), proof):
                matched = (stored, token)
                break
        if matched is not None:
            stored, token = matched
            throttle.refund(address, account)  # the right token: not a guess
            if stored.expires_at <= server.clock.seconds():
                raise SASLFailure("credentials-expired", account=account, counted=True)
            # As after a password (c2s/sasl.py): a disabled account is
            # refused (RFC 6120 §6.5.1), the login is recorded (which also
            # cancels a pending removal), and the row read serves the
            # session/bound handlers.
            state, self.account = await server.stores.accounts.login_info(account)
            if state == "disabled":
                raise SASLFailure("account-disabled", account=account, counted=True)
            if state != "ok":
                raise SASLFailure("not-authorized", account=account, counted=True)
            if stored.slot == NEW:
                # §5.1: the new token is in use; the older one stops working.
                await server.stores.fast.promote(account, device, stored.nonce)
            self.token = stored
            return ("success", (jid, responder_hash(token, cb_data)))
        raise SASLFailure("not-authorized", account=account, counted=True)


# -- the feature ------------------------------------------------------------------------

class FastFeature(Feature):
    name = "fast"
    spec = "XEP-0484 0.2.0 (FAST) with HT-SHA-256-EXPR/ENDP/NONE (draft-schmaus-kitten-sasl-ht)"

    @dataclass(frozen=True)
    class Options:
        #: seconds a token is valid (Prosody: 21 days)
        token_lifetime: float = 21 * 86400.0
        #: a login with a token that has less than this left gets a new one
        rotate_before: float = 7 * 86400.0
        #: devices with tokens per account (the least recently issued go)
        max_devices: int = 32
        #: the token key file ("": data_dir/fast-token.key; relative: in data_dir)
        key_file: str = ""

        def __post_init__(self) -> None:
            if self.token_lifetime <= 0:
                raise ValueError("token_lifetime must be positive")
            if not 0 <= self.rotate_before < self.token_lifetime:
                raise ValueError("rotate_before must be at least 0 and below token_lifetime")
            if self.max_devices < 1:
                raise ValueError("max_devices must be at least 1")

    def setup(self) -> None:
        self._key: Optional[bytes] = None
        self.hook("sasl2-features", self.on_features)
        for mechanism in MECHANISMS:
            self.hook(f"sasl2-mechanism/{mechanism}", self.on_mechanism)
        self.hook("sasl2-authenticated", self.on_authenticated)

    @property
    def key(self) -> bytes:
        """The token key, read (or created) at first use: a server that
        never sees a FAST client never touches the file."""
        if self._key is None:
            path = os.path.join(self.server.config.data_dir, self.options.key_file or KEY_FILE)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._key = load_key(path)
        return self._key

    def on_features(self, item: tuple[Any, list[domish.Element]]) -> None:
        """XEP-0484 §3.1: ``<fast/>`` with the mechanisms this stream allows."""
        stream, extra = item
        fast = domish.Element((NS, "fast"))
        for mechanism in mechanisms_for(stream.channel_bindings()):
            fast.addElement("mechanism", content=mechanism)
        extra.append(fast)

    def on_mechanism(self, item: tuple[Any, Authenticate]) -> FastExchange:
        stream, request = item
        return FastExchange(self, stream, request)

    def on_authenticated(self, outcome: Outcome) -> None:
        """Issue, rotate or invalidate tokens before ``<success/>`` goes out."""
        request = outcome.request
        exchange = outcome.exchange
        used = exchange.token if isinstance(exchange, FastExchange) else None
        fast = request.extension(NS, "fast")
        invalidate = (used is not None and fast is not None
                      and fast.getAttribute("invalidate") in ("1", "true"))
        mechanism: Optional[str] = None
        asked = request.extension(NS, "request-token")
        if asked is not None:
            wanted = asked.getAttribute("mechanism")
            if wanted in mechanisms_for(outcome.stream.channel_bindings()):
                mechanism = wanted
            else:
                log.info("c2s {peer}: FAST token asked for an unavailable mechanism",
                         peer=outcome.stream.peer)
        elif (used is not None and not invalidate
              and used.expires_at - self.server.clock.seconds() <= self.options.rotate_before):
            mechanism = used.mechanism  # §3.5: rotation, unasked
        device = request.user_agent
        if device is None:
            if mechanism is not None:
                log.info("c2s {peer}: FAST token asked without a user-agent id",
                         peer=outcome.stream.peer)
            return
        if not invalidate and mechanism is None:
            return
        outcome.wait(defer.ensureDeferred(
            self._tokens(outcome, device, invalidate, mechanism)))

    async def _tokens(self, outcome: Outcome, device: str, invalidate: bool,
                      mechanism: Optional[str]) -> None:
        account = outcome.jid.bare
        store = self.server.stores.fast
        try:
            if invalidate:
                await store.revoke(account, device)  # §3.6
                log.info("c2s {user}: FAST tokens of a device invalidated by the client",
                         user=account)
            if mechanism is not None:
                nonce = os.urandom(NONCE_LENGTH)
                stored = await store.issue(account, device, outcome.request.user_agent_label,
                                           mechanism, nonce, self.options.token_lifetime,
                                           self.options.max_devices)
                token = derive_token(self.key, nonce, account, device, mechanism)
                outcome.add(token_element(token, stored.expires_at))
        except Exception:
            # The login itself succeeded: it goes on without a new token.
            log.failure("c2s {user}: storing a FAST token failed", user=account)


__all__ = ["NS", "MECHANISMS", "FastExchange", "FastFeature", "derive_token",
           "initiator_hash", "responder_hash", "mechanisms_for", "parse_initial",
           "token_element", "load_key"]
