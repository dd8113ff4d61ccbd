"""The presence subscription state machine (RFC 6121 §3, Appendix A).

Pure functions, no I/O: given the state a user's server holds about one
contact and a subscription stanza, they say what the new state is and what
the server has to do (route/deliver the stanza, answer it, send presence).
The roster and presence features do the I/O.

A state is the roster item's ``subscription`` ("none", "to", "from",
"both"), ``ask`` (Pending Out: the user asked to subscribe to the contact),
``approved`` (the user pre-approved the contact's request, §3.4) and
``pending_in`` (the contact asked to subscribe to the user and the user has
not answered; chatbx keeps it as a stored request, §3.1.3).

"Outbound" is what the user's client sends (Appendix A.2): the Route column
says whether the stanza goes on to the contact. "Inbound" is what arrives
for the user (Appendix A.3): the Deliver column says whether the user's
available resources see it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

__all__ = [
    "SUBSCRIPTION_TYPES", "SubState", "Outcome", "outbound", "inbound",
    "has_from", "has_to", "with_from", "without_from", "with_to", "without_to",
]

#: presence types handled by this state machine
SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))


def has_from(subscription: str) -> bool:
    """The contact receives the user's presence."""
    return subscription in ("from", "both")


def has_to(subscription: str) -> bool:
    """The user receives the contact's presence."""
    return subscription in ("to", "both")


def _compose(to: bool, frm: bool) -> str:
    if to and frm:
        return "both"
    if to:
        return "to"
    if frm:
        return "from"
    return "none"


def with_from(subscription: str) -> str:
    return _compose(has_to(subscription), True)


def without_from(subscription: str) -> str:
    return _compose(has_to(subscription), False)


def with_to(subscription: str) -> str:
    return _compose(True, has_from(subscription))


def without_to(subscription: str) -> str:
    return _compose(False, has_from(subscription))


@dataclass(frozen=True)
class SubState:
    """What the user's server knows about one contact."""

    subscription: str = "none"
    #: Pending Out (roster ask='subscribe')
    ask: bool = False
    #: the user pre-approved the contact (roster approved='true'), §3.4
    approved: bool = False
    #: Pending In: the contact's request awaits the user's answer
    pending_in: bool = False

    def __post_init__(self) -> None:
        if self.subscription not in ("none", "to", "from", "both"):
            raise ValueError(f"bad subscription state: {self.subscription!r}")


@dataclass(frozen=True)
class Outcome:
    """What to do with one subscription stanza.

    Attributes:
        state: the new state (equal to the old one when nothing changes).
        forward: route the stanza to the contact (outbound) or deliver it
            to the user's available resources (inbound).
        auto_reply: a presence type the user's server sends to the contact
            on the user's behalf ("subscribed"), or None.
        send_presence: send the user's current presence (each available
            resource) to the contact: the contact just gained a
            subscription to the user (§3.1.5).
        send_unavailable: send unavailable presence from each of the user's
            available resources to the contact: the contact just lost its
            subscription to the user (§3.2.2, §3.3.3).
    """

    state: SubState
    forward: bool
    auto_reply: Optional[str] = None
    send_presence: bool = False
    send_unavailable: bool = False


def outbound(state: SubState, ptype: str) -> Outcome:
    """The user's client sent ``ptype`` to the contact (Appendix A.2)."""
    sub = state.subscription
    if ptype == "subscribe":
        # A.2.1: always routed; "to"/"both" already subscribed: no change.
        if has_to(sub):
            return Outcome(state, forward=True)
        return Outcome(replace(state, ask=True), forward=True)
    if ptype == "subscribed":
        # A.2.2: approves a pending request, or pre-approves (§3.4).
        if state.pending_in and not has_from(sub):
            new = replace(state, subscription=with_from(sub), pending_in=False, approved=False)
            return Outcome(new, forward=True, send_presence=True)
        if has_from(sub):
            return Outcome(replace(state, pending_in=False), forward=False)
        return Outcome(replace(state, approved=True), forward=False)
    if ptype == "unsubscribe":
        # A.2.3: always routed; cancels "to" and Pending Out.
        return Outcome(replace(state, subscription=without_to(sub), ask=False), forward=True)
    if ptype == "unsubscribed":
        # A.2.4: denies Pending In or cancels "from"; also cancels a
        # pre-approval (§3.4), which is not routed.
        if state.pending_in or has_from(sub):
            new = replace(state, subscription=without_from(sub), pending_in=False, approved=False)
            return Outcome(new, forward=True, send_unavailable=has_from(sub))
        return Outcome(replace(state, approved=False), forward=False)
    raise ValueError(f"not a subscription type: {ptype!r}")


def inbound(state: SubState, ptype: str) -> Outcome:
    """The contact sent ``ptype`` to the user (Appendix A.3)."""
    sub = state.subscription
    if ptype == "subscribe":
        # A.3.1
        if has_from(sub):
            # Already subscribed: answer for the user (§3.1.3), not delivered.
            return Outcome(state, forward=False, auto_reply="subscribed")
        if state.approved:
            # Pre-approved (§3.4): approve for the user, not delivered.
            new = replace(state, subscription=with_from(sub), approved=False, pending_in=False)
            return Outcome(new, forward=False, auto_reply="subscribed", send_presence=True)
        if state.pending_in:
            return Outcome(state, forward=False)
        return Outcome(replace(state, pending_in=True), forward=True)
    if ptype == "subscribed":
        # A.3.2: only meaningful as the answer to Pending Out.
        if state.ask and not has_to(sub):
            return Outcome(replace(state, subscription=with_to(sub), ask=False), forward=True)
        return Outcome(state, forward=False)
    if ptype == "unsubscribe":
        # A.3.3: the contact cancels its subscription to the user (or
        # withdraws its request).
        if state.pending_in or has_from(sub):
            new = replace(state, subscription=without_from(sub), pending_in=False)
            return Outcome(new, forward=True, send_unavailable=has_from(sub))
        return Outcome(state, forward=False)
    if ptype == "unsubscribed":
        # A.3.4: the contact denies the request or cancels the user's
        # subscription.
        if state.ask or has_to(sub):
            return Outcome(replace(state, subscription=without_to(sub), ask=False), forward=True)
        return Outcome(state, forward=False)
    raise ValueError(f"not a subscription type: {ptype!r}")
