"""Occupants, roles and affiliations: the rules of XEP-0045 §5 as plain functions.

Roles (§5.1) live as long as a visit: moderator > participant > visitor >
none. Affiliations (§5.2) are stored: owner > admin > member > none >
outcast. Who may change what is the table of §5.1.3 / §5.2.2 and the
rules of §8 (moderator use cases), §9 (admin) and §10 (owner):

- roles are changed by moderators; granting or revoking moderator needs
  admin or owner; no role change may touch an occupant whose affiliation
  is higher than the actor's (a moderator cannot kick an admin, §8.2);
- affiliations are changed by admins and owners; an admin cannot touch an
  admin or owner, nor make anybody admin or owner (§9); owners may change
  anyone's, but the last owner cannot go (§10.6-§10.7, 'conflict').

Nicknames are prepared per RFC 7700 (PRECIS Nickname profile): what the
room shows is the case-preserved enforcement, and two nicks are the same
when their case-mapped forms are (no "Alice" beside "alice").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Optional

from precis_i18n import get_profile
from twisted.words.xish import domish

ROLES = ("none", "visitor", "participant", "moderator")
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")
ROLE_RANK = {r: i for i, r in enumerate(ROLES)}
AFF_RANK = {a: i for i, a in enumerate(AFFILIATIONS)}

_NICK = get_profile("NicknameCasePreserved")
_NICK_KEY = get_profile("NicknameCaseMapped")


class NickError(ValueError):
    """Not a nickname under RFC 7700."""


def prepare_nick(nick: str, max_length: int = 64) -> tuple[str, str]:
    """(the nick as shown, its comparison key), RFC 7700 §2.

    Raises:
        NickError: empty after enforcement, too long or disallowed code points.
    """
    try:
        shown = _NICK.enforce(nick)
        key = _NICK_KEY.enforce(nick)
    except UnicodeError as exc:
        raise NickError(str(exc)) from None
    if not shown or len(shown) > max_length:
        raise NickError("empty or too long")
    return shown, key


def default_role(affiliation: str, moderated: bool) -> str:
    """§5.1.2: the role an occupant gets on entry."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if affiliation == "outcast":
        return "none"
    if moderated and affiliation == "none":
        return "visitor"
    return "participant"


def can_set_role(actor_role: str, actor_aff: str, target_role: str, target_aff: str,
                 new_role: str) -> Optional[str]:
    """None when the change is allowed, else the error condition (§8, §9.6-§9.7)."""
    if actor_role != "moderator":
        return "forbidden"
    if AFF_RANK[target_aff] > AFF_RANK[actor_aff]:
        return "not-allowed"
    if new_role == "moderator" or target_role == "moderator":
        # Granting or revoking moderator: admins and owners only (§9.6, §9.7),
        # and a moderator by affiliation keeps the role (§9.7).
        if actor_aff not in ("admin", "owner"):
            return "not-allowed"
        if target_aff in ("admin", "owner") and new_role != "moderator":
            return "not-allowed"
    return None


def can_set_affiliation(actor_aff: str, target_aff: str, new_aff: str) -> Optional[str]:
    """None when the change is allowed, else the error condition (§9, §10)."""
    if actor_aff == "owner":
        return None
    if actor_aff != "admin":
        return "forbidden"
    if AFF_RANK[target_aff] >= AFF_RANK["admin"] or AFF_RANK[new_aff] >= AFF_RANK["admin"]:
        return "not-allowed"
    return None


def occupant_id(secret: bytes, room: str, bare: str) -> str:
    """XEP-0421 §3: stable per (room, real bare JID), opaque to everyone else."""
    digest = hmac.new(secret, f"{room}\0{bare}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


class Occupant:
    """One nick in a room, with the sessions (full JIDs) joined under it.

    Several sessions of the same bare JID may share a nick (multi-session
    nicks, as Prosody allows): they are one occupant to everyone else.
    """

    __slots__ = ("nick", "key", "bare", "role", "sessions", "presence", "oid",
                 "tokens", "stamp")

    def __init__(self, nick: str, key: str, bare: str, role: str, oid: str) -> None:
        self.nick = nick
        self.key = key
        self.bare = bare
        self.role = role
        #: full JID -> the last presence that session sent to the room
        self.sessions: dict[str, domish.Element] = {}
        #: what the others see: the last presence of any session
        self.presence: Optional[domish.Element] = None
        self.oid = oid
        #: token bucket of the stanza rate limit
        self.tokens = 0.0
        self.stamp = 0.0

    def allow(self, now: float, rate: float, burst: float) -> bool:
        """Take one token; False when the occupant sends faster than ``rate``/s."""
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
