"""JIDs prepared with PRECIS (RFC 7622).

Parsing happens for every routed stanza, so prepared JIDs are cached: the
same few thousand addresses recur constantly on a busy server. The cache
holds what peers chose, so it is bounded in memory, not only in entries:
texts longer than :data:`CACHE_MAX_TEXT` characters (real addresses are far
shorter; the RFC allows 3071) are prepared every time and never kept, and
the cache keeps at most :data:`CACHE_SIZE` of them (a few MiB at worst, see
``bench/jid_parse.py``). What unauthenticated peers send (stream headers,
SASL usernames) is parsed with ``cache=False``: it must not be able to push
the server's working set out, or fill the cache before login.

Domainparts (RFC 7622 §3.2) are an IPv6 literal in brackets, an IPv4
address, or a DNS name whose labels are LDH labels (letters, digits,
hyphens; RFC 5890 §2.3.1, RFC 1123 §2.1) once U-labels are converted with
IDNA2008 (RFC 5891) and mapped to lower case (UTS #46, as RFC 7622 §3.2.2
asks); anything else (``!``, ``=``, ``%``, ``_``, white space ...) is
``jid-malformed``. The canonical form keeps IDNs as A-labels.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Optional

import idna
from precis_i18n import get_profile

__all__ = ["CACHE_MAX_TEXT", "CACHE_SIZE", "InvalidJID", "JID", "clear_cache", "parse_or_none"]

_LOCAL = get_profile("UsernameCaseMapped")
_RESOURCE = get_profile("OpaqueString")
_MAX_PART = 1023  # RFC 7622 §3.2-3.4: each part is 1..1023 octets
_MAX_TEXT = 3071  # three parts and two separators

#: longest text (in characters) the parse cache keeps
CACHE_MAX_TEXT = 256
#: most entries in the parse cache
CACHE_SIZE = 8192

# RFC 5890 §2.3.1 / RFC 1123 §2.1: dot-separated LDH labels of 1..63
# characters, already in lower case. The bounded repeats keep a failing
# match linear in the length.
_LDH_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LDH_DOMAIN = re.compile(rf"(?:{_LDH_LABEL}\.)*{_LDH_LABEL}\Z")


class InvalidJID(ValueError):
    """The string is not a JID (RFC 7622); maps to ``jid-malformed``."""


def _ip_literal(domain: str) -> str:
    # RFC 7622 §3.2 and RFC 3986 §3.2.2: "[" IPv6address "]"; no zone
    # identifier, no IPvFuture. Canonical text form (RFC 5952), so that
    # "[::1]" and "[0:0::1]" are the same JID.
    inner = domain[1:-1]
    if "%" in inner:
        raise InvalidJID("bad IPv6 literal")
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        raise InvalidJID("bad IPv6 literal") from None


def _check_alabel(label: str) -> None:
    # An ASCII label with the ACE prefix must be a valid A-label: it decodes
    # to a valid U-label that encodes back to the same string (RFC 5891 §5.4).
    try:
        if idna.alabel(idna.ulabel(label)).decode("ascii") != label:
            raise InvalidJID("bad A-label")
    except (UnicodeError, idna.IDNAError):
        raise InvalidJID("bad A-label") from None


def _prep_domain(domain: str) -> str:
    # RFC 7622 §3.2: a trailing dot is stripped.
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidJID("empty domainpart")
    if domain[0] == "[" or domain[-1] == "]":
        if domain[0] != "[" or domain[-1] != "]":
            raise InvalidJID("bad IPv6 literal")
        return _ip_literal(domain)
    ascii_input = domain.isascii()
    try:
        if ascii_input:
            prepared = domain.lower()
        else:
            # RFC 7622 §3.2 wants IDNA2008 (RFC 5891); Python's "idna"
            # codec is IDNA2003 and maps e.g. "ß" to "ss".
            prepared = idna.encode(domain, uts46=True).decode("ascii")
    except (UnicodeError, idna.IDNAError) as exc:
        raise InvalidJID(f"bad domainpart: {exc}") from None
    if len(prepared) > _MAX_PART:
        raise InvalidJID("domainpart too long")
    if _LDH_DOMAIN.match(prepared) is None:
        raise InvalidJID("bad domain label")
    if ascii_input and "xn--" in prepared:
        # What IDNA2008 encoded above is valid; A-labels as received are checked.
        for label in prepared.split("."):
            if label.startswith("xn--"):
                _check_alabel(label)
    if prepared.rpartition(".")[2].isdigit():
        # All-numeric: only a dotted-quad IPv4 address (RFC 3986 §3.2.2,
        # no leading zeros); a DNS name's top label is never all digits
        # (RFC 3696 §2).
        try:
            ipaddress.IPv4Address(prepared)
        except ValueError:
            raise InvalidJID("bad IPv4 address") from None
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
    def parse(text: str, cache: bool = True) -> "JID":
        """Parse and prepare ``text``; raise :class:`InvalidJID`.

        Args:
            text: the JID as received.
            cache: False for text from peers that have not authenticated
                (stream headers, SASL): it is prepared and not remembered.
        """
        if cache and len(text) <= CACHE_MAX_TEXT:
            return _cached(text)
        return _prepare(text)

    @property
    def bare(self) -> str:
        return self._bare

    @property
    def full(self) -> str:
        return self._full

    def bare_jid(self) -> "JID":
        return self if self.resource is None else JID.parse(self._bare)

    def with_resource(self, resource: str) -> "JID":
        return JID.parse(f"{self._bare}/{resource}")

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


def _prepare(text: str) -> JID:
    if not text or len(text) > _MAX_TEXT:
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


# Failures are not cached (lru_cache keeps only results), so malformed
# input costs preparation every time but no memory.
_cached = lru_cache(maxsize=CACHE_SIZE)(_prepare)


def clear_cache() -> None:
    """Forget every cached JID (tests, benchmarks)."""
    _cached.cache_clear()


def parse_or_none(text: Optional[str], cache: bool = True) -> Optional[JID]:
    """Parse ``text``; None for a missing or malformed JID."""
    if text is None:
        return None
    try:
        return JID.parse(text, cache)
    except InvalidJID:
        return None
