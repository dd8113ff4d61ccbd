"""JIDs prepared with PRECIS (RFC 7622).

Parsing happens for every routed stanza, so prepared JIDs are cached: the
same few thousand addresses recur constantly on a busy server.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import idna
from precis_i18n import get_profile

_LOCAL = get_profile("UsernameCaseMapped")
_RESOURCE = get_profile("OpaqueString")
_MAX_PART = 1023  # RFC 7622 §3.2-3.4: each part is 1..1023 octets


class InvalidJID(ValueError):
    """The string is not a JID (RFC 7622); maps to ``jid-malformed``."""


def _prep_domain(domain: str) -> str:
    # RFC 7622 §3.2: a trailing dot is stripped; IDNA2008 U-labels, lower case.
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidJID("empty domainpart")
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # IPv6 literal
    try:
        if domain.isascii():
            prepared = domain.lower()
        else:
            # RFC 7622 §3.2 wants IDNA2008 (RFC 5891); Python's "idna"
            # codec is IDNA2003 and maps e.g. "ß" to "ss".
            prepared = idna.encode(domain, uts46=True).decode("ascii")
    except (UnicodeError, idna.IDNAError) as exc:
        raise InvalidJID(f"bad domainpart: {exc}") from None
    for label in prepared.split("."):
        if not label or len(label) > 63:
            raise InvalidJID("bad domain label")
        if any(c in " @/\"&'<>:" for c in label):
            raise InvalidJID("bad character in domainpart")
    if len(prepared.encode()) > _MAX_PART:
        raise InvalidJID("domainpart too long")
    return prepared


class JID:
    """An immutable, prepared JID. Compare and hash by its string form."""

    __slots__ = ("user", "host", "resource", "_full", "_bare")

    def __init__(self, user: Optional[str], host: str, resource: Optional[str] = None):
        self.user = user
        self.host = host
        self.resource = resource
        bare = f"{user}@{host}" if user else host
        self._bare = bare
        self._full = f"{bare}/{resource}" if resource else bare

    @staticmethod
    def parse(text: str) -> "JID":
        """Parse and prepare ``text``; raise :class:`InvalidJID`."""
        return _parse(text)

    @property
    def bare(self) -> str:
        return self._bare

    @property
    def full(self) -> str:
        return self._full

    def bare_jid(self) -> "JID":
        return self if self.resource is None else _parse(self._bare)

    def with_resource(self, resource: str) -> "JID":
        return _parse(f"{self._bare}/{resource}")

    def __str__(self) -> str:
        return self._full

    def __repr__(self) -> str:
        return f"JID({self._full!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JID):
            return self._full == other._full
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._full)


@lru_cache(maxsize=65536)
def _parse(text: str) -> JID:
    if not text or len(text) > 3071:
        raise InvalidJID("empty or too long")
    # RFC 7622 §3.1: the resource is everything after the first '/', the
    # localpart everything before the first '@' that precedes it.
    slash = text.find("/")
    if slash >= 0:
        rest, resource = text[:slash], text[slash + 1:]
        if not resource:
            raise InvalidJID("empty resourcepart")
    else:
        rest, resource = text, None
    at = rest.find("@")
    if at >= 0:
        local, domain = rest[:at], rest[at + 1:]
        if not local:
            raise InvalidJID("empty localpart")
    else:
        local, domain = None, rest
    try:
        if local is not None:
            local = local.lower() if local.isascii() and local.isalnum() else _LOCAL.enforce(local)
            if len(local.encode()) > _MAX_PART:
                raise InvalidJID("localpart too long")
            if any(c in "\"&'/:<>@" for c in local):
                raise InvalidJID("bad character in localpart")
        if resource is not None:
            resource = resource if resource.isascii() and resource.isprintable() else _RESOURCE.enforce(resource)
            if len(resource.encode()) > _MAX_PART:
                raise InvalidJID("resourcepart too long")
    except UnicodeError as exc:
        raise InvalidJID(str(exc)) from None
    return JID(local, _prep_domain(domain), resource)


def parse_or_none(text: Optional[str]) -> Optional[JID]:
    """Parse ``text``; None for a missing or malformed JID."""
    if text is None:
        return None
    try:
        return _parse(text)
    except InvalidJID:
        return None
