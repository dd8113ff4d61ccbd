"""SCRAM server side (RFC 5802, RFC 7677), with channel binding.

Written here rather than taken from scramp because scramp refuses the
``tls-exporter`` binding (RFC 9266), which TLS 1.3 clients use. Pure
logic: the stream feeds it bytes and looks the credentials up itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Optional

HASHES = {"SHA-1": "sha1", "SHA-256": "sha256"}
#: bytes of salt for new credentials (and for decoys, which must look alike)
SALT_LENGTH = 32


class ScramError(Exception):
    """Authentication failed; ``condition`` is the SASL failure (RFC 6120 §6.5)."""

    def __init__(self, condition: str, reason: str = ""):
        super().__init__(reason or condition)
        self.condition = condition


@dataclass(frozen=True)
class Credentials:
    """What a SCRAM server keeps for one account and hash (RFC 5802 §3)."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i) of RFC 5802 §2.2.

    Normalize is SASLprep (RFC 4013), what SCRAM clients apply; a password
    SASLprep refuses raises ValueError.
    """
    from scramp.utils import saslprep

    try:
        prepared = saslprep(password)
    except Exception as exc:  # scramp raises its own error type
        raise ValueError("password not allowed (SASLprep)") from exc
    return hashlib.pbkdf2_hmac(HASHES[hash_name], prepared.encode("utf-8"), salt, iterations)


def derive_credentials(hash_name: str, password: str, salt: Optional[bytes] = None,
                       iterations: int = 4096) -> Credentials:
    """The stored form of a password: what the server keeps (RFC 5802 §3)."""
    salt = salt if salt is not None else os.urandom(SALT_LENGTH)
    salted = salted_password(hash_name, password, salt, iterations)
    algo = HASHES[hash_name]
    client_key = hmac.digest(salted, b"Client Key", algo)
    stored_key = hashlib.new(algo, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", algo)
    return Credentials(salt, iterations, stored_key, server_key)


def verify_password(credentials: Credentials, hash_name: str, password: str) -> bool:
    """Whether ``password`` matches stored credentials (for SASL PLAIN)."""
    try:
        derived = derive_credentials(hash_name, password, credentials.salt, credentials.iterations)
    except ValueError:
        return False
    return (hmac.compare_digest(derived.stored_key, credentials.stored_key)
            and hmac.compare_digest(derived.server_key, credentials.server_key))


def _unescape_saslname(value: str) -> str:
    # RFC 5802 §5.1: '=' only as '=2C' or '=3D'.
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "=":
            code = value[i:i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                raise ScramError("malformed-request", "bad saslname escape")
            i += 3
        else:
            if ch == ",":
                raise ScramError("malformed-request", "bad saslname")
            out.append(ch)
            i += 1
    return "".join(out)


def _attributes(message: str) -> list[tuple[str, str]]:
    out = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError("malformed-request", "bad attribute")
        out.append((part[0], part[2:]))
    return out


class ScramServer:
    """One SCRAM exchange.

    Args:
        hash_name: "SHA-1" or "SHA-256".
        plus: the client chose the -PLUS mechanism.
        bindings: channel-binding type -> data for this connection.
        plus_offered: whether -PLUS mechanisms were offered (for the
            downgrade check of RFC 5802 §6 on the 'y' flag).
    """

    def __init__(self, hash_name: str, plus: bool, bindings: dict[str, bytes],
                 plus_offered: bool, nonce: Optional[str] = None) -> None:
        self.hash_name = hash_name
        self.algo = HASHES[hash_name]
        self.plus = plus
        self.bindings = bindings
        self.plus_offered = plus_offered
        self.server_nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.username = ""
        self.authzid: Optional[str] = None
        self._gs2_header = ""
        self._cb_data = b""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._credentials: Optional[Credentials] = None

    def client_first(self, data: bytes) -> str:
        """Parse client-first-message; return the (unescaped) username."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed-request", "not UTF-8") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed-request", "no GS2 header")
        flag, authzid, bare = parts
        if flag.startswith("p="):
            cb_type = flag[2:]
            if not self.plus:
                raise ScramError("malformed-request", "channel binding needs a -PLUS mechanism")
            if cb_type not in self.bindings:
                raise ScramError("malformed-request", f"unsupported channel binding {cb_type}")
            self._cb_data = self.bindings[cb_type]
        elif flag in ("n", "y"):
            if self.plus:
                raise ScramError("malformed-request", "-PLUS mechanism without channel binding")
            if flag == "y" and self.plus_offered:
                # RFC 5802 §6: the client thinks we can't bind, but we
                # offered it: someone stripped the -PLUS mechanisms.
                raise ScramError("not-authorized", "channel binding downgrade")
        else:
            raise ScramError("malformed-request", "bad GS2 flag")
        if authzid:
            if not authzid.startswith("a="):
                raise ScramError("malformed-request", "bad authzid")
            self.authzid = _unescape_saslname(authzid[2:])
        self._gs2_header = f"{flag},{authzid},"
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            if attrs and attrs[0][0] == "m":
                raise ScramError("malformed-request", "mandatory extension not supported")
            raise ScramError("malformed-request", "bad client-first-message")
        self.username = _unescape_saslname(attrs[0][1])
        client_nonce = attrs[1][1]
        if not client_nonce or not client_nonce.isprintable() or "," in client_nonce:
            raise ScramError("malformed-request", "bad nonce")
        self._client_first_bare = bare
        self._nonce = client_nonce + self.server_nonce
        return self.username

    def server_first(self, credentials: Credentials) -> bytes:
        """The server-first-message for these stored credentials."""
        self._credentials = credentials
        salt = base64.b64encode(credentials.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={credentials.iterations}"
        return self._server_first.encode()

    def client_final(self, data: bytes) -> bytes:
        """Verify client-final-message; return server-final-message."""
        if self._credentials is None:
            raise ScramError("malformed-request", "out of order")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("malformed-request", "not UTF-8") from None
        head, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ScramError("malformed-request", "no proof")
        attrs = _attributes(head)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise ScramError("malformed-request", "bad client-final-message")
        expected_cb = base64.b64encode(self._gs2_header.encode() + self._cb_data).decode()
        if not hmac.compare_digest(attrs[0][1], expected_cb):
            raise ScramError("not-authorized", "channel binding mismatch")
        if attrs[1][1] != self._nonce:
            raise ScramError("not-authorized", "nonce mismatch")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("malformed-request", "bad proof encoding") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{head}".encode()
        creds = self._credentials
        signature = hmac.digest(creds.stored_key, auth_message, self.algo)
        if len(proof) != len(signature):
            raise ScramError("not-authorized", "bad proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.new(self.algo, client_key).digest(), creds.stored_key):
            raise ScramError("not-authorized", "wrong password")
        server_signature = hmac.digest(creds.server_key, auth_message, self.algo)
        return b"v=" + base64.b64encode(server_signature)


def decoy_credentials(secret: bytes, hash_name: str, username: str,
                      iterations: int = 4096, salt_length: int = SALT_LENGTH) -> Credentials:
    """Stable fake credentials for an unknown user.

    The exchange then fails at the proof, like a wrong password, so the
    answer does not reveal which accounts exist. Salt length and iteration
    count must match what the user store writes (scramp: 32-byte salts),
    or the server-first-message itself tells real accounts from fake ones.
    """
    algo = HASHES[hash_name]
    salt = hmac.digest(secret, b"salt:" + username.encode(), "sha512")[:salt_length]
    key = hmac.digest(secret, b"key:" + username.encode(), algo)
    return Credentials(salt, iterations, key, key)
