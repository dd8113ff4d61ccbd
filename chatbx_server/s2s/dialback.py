"""Server Dialback keys (XEP-0220 with the key generation of XEP-0185).

The originating server makes the key; the authoritative server makes it
again from the same inputs to verify it. The secret is a row of the
database's ``server_secrets`` (``DIALBACK_SECRET``), so every node of a
cluster and every restart makes and verifies the same keys (XEP-0185 §3:
a key made before a restart, or by another node answering for the domain,
still verifies). Only this installation knows it, so a key proves that
whoever asks for it was given it by us on a stream we opened.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, InvalidJID

NS_DIALBACK = "jabber:server:dialback"
#: XEP-0220 §2.6 stream feature (we understand dialback errors)
NS_DIALBACK_FEATURE = "urn:xmpp:features:dialback"


#: the server_secrets row the dialback keys are made with
DIALBACK_SECRET = "s2s-dialback"


def new_secret() -> bytes:
    """A fresh secret for this process only: the fallback when the database
    cannot be read (keys then do not verify on other nodes or after a restart)."""
    return os.urandom(32)


def make_key(secret: bytes, receiving: str, originating: str, stream_id: str) -> str:
    """XEP-0185 §3: HMAC-SHA256(SHA256(secret), "receiving originating id"), in hex.

    For ASCII names and secret this is ``wokkel.server.generateKey``; here
    the secret is bytes and the names may be internationalised (UTF-8).
    """
    hashed = hashlib.sha256(secret).hexdigest().encode("ascii")
    message = " ".join((receiving, originating, stream_id)).encode("utf-8")
    return hmac.new(hashed, message, hashlib.sha256).hexdigest()


def check_key(secret: bytes, receiving: str, originating: str, stream_id: str, key: str) -> bool:
    """Whether ``key`` is the one we made; constant-time (XEP-0185 §4)."""
    expected = make_key(secret, receiving, originating, stream_id)
    return hmac.compare_digest(expected.encode("ascii"), key.strip().encode("utf-8", "replace"))


def domain_or_none(text: str | None) -> str | None:
    """A prepared bare domain from a dialback/stream attribute, or None."""
    if not text:
        return None
    try:
        jid = JID.parse(text, cache=False)  # unauthenticated peers
    except InvalidJID:
        return None
    if jid.user is not None or jid.resource is not None:
        return None
    return jid.host


def dialback_error(name: str, local: str, remote: str, condition: str, etype: str,
                   stream_id: Optional[str] = None) -> domish.Element:
    """``<db:result|verify type='error'>`` (XEP-0220 §2.4)."""
    el = domish.Element((NS_DIALBACK, name))
    el["from"] = local
    el["to"] = remote
    if stream_id is not None:
        el["id"] = stream_id
    el["type"] = "error"
    err = el.addElement((None, "error"))
    err["type"] = etype
    err.addElement((ns.STANZA_ERRORS, condition))
    return el
