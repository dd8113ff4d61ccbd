"""SASL SCRAM client side (RFC 5802, RFC 7677) and PLAIN (RFC 4616) for the load generator.

Why our own: the load generator must not spend its single pinned core on a
heavyweight library, and it caches the derived keys per (hash, password, salt,
iterations) the way real clients do, so that a login-rate figure measures the
server, not PBKDF2 on the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Dict, Optional, Tuple

# (hash name, password, salt, iterations) -> (client_key, stored_key, server_key)
_KEY_CACHE: Dict[Tuple[str, str, bytes, int], Tuple[bytes, bytes, bytes]] = {}

MECHANISMS_PREFERRED = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")


def choose_mechanism(offered: list[str], allowed: tuple[str, ...] = MECHANISMS_PREFERRED) -> Optional[str]:
    """Pick the strongest mechanism both sides support (no channel binding: -PLUS is skipped)."""
    for mech in allowed:
        if mech in offered:
            return mech
    return None


def derive_keys(hash_name: str, password: str, salt: bytes, iterations: int) -> Tuple[bytes, bytes, bytes]:
    """Return (ClientKey, StoredKey, ServerKey), cached: PBKDF2 is the costly step."""
    key = (hash_name, password, salt, iterations)
    hit = _KEY_CACHE.get(key)
    if hit is not None:
        return hit
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", hash_name)
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", hash_name)
    _KEY_CACHE[key] = (client_key, stored_key, server_key)
    return _KEY_CACHE[key]


def seed_cache(hash_name: str, password: str, salt: bytes, iterations: int,
               keys: Tuple[bytes, bytes, bytes]) -> None:
    """Pre-fill the cache with keys a provisioner has already derived."""
    _KEY_CACHE[(hash_name, password, salt, iterations)] = keys


def cache_size() -> int:
    """How many derived key sets are cached (for reports)."""
    return len(_KEY_CACHE)


class ScramClient:
    """One SCRAM exchange; `first()`, `final(server_first)`, `verify(server_final)`."""

    def __init__(self, mechanism: str, username: str, password: str) -> None:
        self.hash_name = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}[mechanism]
        self.username = username.replace("=", "=3D").replace(",", "=2C")
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n={self.username},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        """The client-first-message, gs2 header 'n,,' (we do not do channel binding)."""
        return ("n,," + self.client_first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        """Answer the server-first-message with the client proof."""
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise ValueError("server nonce does not extend ours")
        client_key, stored_key, server_key = derive_keys(self.hash_name, self.password, salt, iterations)
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, self.hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = hmac.digest(server_key, auth_message, self.hash_name)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        """Check the server's signature: proves the server knows our credentials."""
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(",") if "=" in part)
        return hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self.server_signature)


def plain_message(username: str, password: str) -> bytes:
    """The PLAIN initial response (only ever sent over TLS)."""
    return b"\0" + username.encode() + b"\0" + password.encode()
