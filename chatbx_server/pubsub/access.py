"""Access models (XEP-0060 §4.5) and affiliations (§4.1).

Pure decisions on plain data: who may retrieve items, subscribe and be
notified; who may publish. The owner is always allowed; an outcast never.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

__all__ = ["may_access", "may_publish", "AFFILIATIONS"]

AFFILIATIONS = ("owner", "publisher", "publish-only", "member", "none", "outcast")


def may_access(config: Mapping[str, Any], is_owner: bool, affiliation: Optional[str],
               subscription: Optional[str], groups: Iterable[str] = ()) -> bool:
    """May an entity read the node (items, subscribe, notifications)?

    Args:
        is_owner: the entity is the node's owner (PEP: the account itself).
        affiliation: the entity's stored affiliation, if any.
        subscription: the owner's roster subscription to the entity
            ('none', 'to', 'from', 'both'), None when it is not on the roster.
        groups: the entity's roster groups in the owner's roster.
    """
    if is_owner or affiliation in ("owner", "publisher", "member"):
        return True
    if affiliation == "outcast":
        return False
    model = config.get("access_model", "presence")
    if model == "open":
        return True
    if model == "presence":
        # §4.5: subscribed to the owner's presence ('from' or 'both').
        return subscription in ("from", "both")
    if model == "roster":
        if subscription is None:
            return False
        allowed = set(config.get("roster_groups_allowed") or ())
        return bool(allowed & set(groups))
    return False  # whitelist (and anything unknown): affiliations only


def may_publish(config: Mapping[str, Any], is_owner: bool, affiliation: Optional[str],
                subscribed: bool) -> bool:
    """May an entity publish (and retract) items (§7.1.3.1, publish_model)?"""
    if is_owner or affiliation in ("owner", "publisher", "publish-only"):
        return True
    if affiliation == "outcast":
        return False
    model = config.get("publish_model", "publishers")
    if model == "open":
        return True
    if model == "subscribers":
        return subscribed
    return False
