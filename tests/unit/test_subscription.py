"""The subscription state machine against RFC 6121 Appendix A, row by row."""

from __future__ import annotations

import pytest

from chatbx_server.features.subscription import SubState, inbound, outbound

# The nine states of Appendix A.1, by their RFC names.
STATES = {
    "None": SubState("none"),
    "None + Pending Out": SubState("none", ask=True),
    "None + Pending In": SubState("none", pending_in=True),
    "None + Pending Out+In": SubState("none", ask=True, pending_in=True),
    "To": SubState("to"),
    "To + Pending In": SubState("to", pending_in=True),
    "From": SubState("from"),
    "From + Pending Out": SubState("from", ask=True),
    "Both": SubState("both"),
}

# (existing state, forward?, new state or None for "no state change")
OUT_SUBSCRIBE = [  # A.2.1
    ("None", True, "None + Pending Out"),
    ("None + Pending Out", True, None),
    ("None + Pending In", True, "None + Pending Out+In"),
    ("None + Pending Out+In", True, None),
    ("To", True, None),
    ("To + Pending In", True, None),
    ("From", True, "From + Pending Out"),
    ("From + Pending Out", True, None),
    ("Both", True, None),
]
OUT_SUBSCRIBED = [  # A.2.2 (pre-approval rows checked separately)
    ("None + Pending In", True, "From"),
    ("None + Pending Out+In", True, "From + Pending Out"),
    ("To + Pending In", True, "Both"),
    ("From", False, None),
    ("From + Pending Out", False, None),
    ("Both", False, None),
]
OUT_UNSUBSCRIBE = [  # A.2.3
    ("None", True, None),
    ("None + Pending Out", True, "None"),
    ("None + Pending In", True, None),
    ("None + Pending Out+In", True, "None + Pending In"),
    ("To", True, "None"),
    ("To + Pending In", True, "None + Pending In"),
    ("From", True, None),
    ("From + Pending Out", True, "From"),
    ("Both", True, "From"),
]
OUT_UNSUBSCRIBED = [  # A.2.4
    ("None", False, None),
    ("None + Pending Out", False, None),
    ("None + Pending In", True, "None"),
    ("None + Pending Out+In", True, "None + Pending Out"),
    ("To", False, None),
    ("To + Pending In", True, "To"),
    ("From", True, "None"),
    ("From + Pending Out", True, "None + Pending Out"),
    ("Both", True, "To"),
]
IN_SUBSCRIBE = [  # A.3.1 (no pre-approval)
    ("None", True, "None + Pending In"),
    ("None + Pending Out", True, "None + Pending Out+In"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", False, None),
    ("To", True, "To + Pending In"),
    ("To + Pending In", False, None),
    ("From", False, None),
    ("From + Pending Out", False, None),
    ("Both", False, None),
]
IN_SUBSCRIBED = [  # A.3.2
    ("None", False, None),
    ("None + Pending Out", True, "To"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", True, "To + Pending In"),
    ("To", False, None),
    ("To + Pending In", False, None),
    ("From", False, None),
    ("From + Pending Out", True, "Both"),
    ("Both", False, None),
]
IN_UNSUBSCRIBE = [  # A.3.3
    ("None", False, None),
    ("None + Pending Out", False, None),
    ("None + Pending In", True, "None"),
    ("None + Pending Out+In", True, "None + Pending Out"),
    ("To", False, None),
    ("To + Pending In", True, "To"),
    ("From", True, "None"),
    ("From + Pending Out", True, "None + Pending Out"),
    ("Both", True, "To"),
]
IN_UNSUBSCRIBED = [  # A.3.4
    ("None", False, None),
    ("None + Pending Out", True, "None"),
    ("None + Pending In", False, None),
    ("None + Pending Out+In", True, "None + Pending In"),
    ("To", True, "None"),
    ("To + Pending In", True, "None + Pending In"),
    ("From", False, None),
    ("From + Pending Out", True, "From"),
    ("Both", True, "From"),
]


def _cases(direction, ptype, table):
    return [pytest.param(direction, ptype, old, fwd, new, id=f"{direction}-{ptype}-{old}")
            for old, fwd, new in table]


ALL = (
    _cases("out", "subscribe", OUT_SUBSCRIBE) + _cases("out", "subscribed", OUT_SUBSCRIBED)
    + _cases("out", "unsubscribe", OUT_UNSUBSCRIBE) + _cases("out", "unsubscribed", OUT_UNSUBSCRIBED)
    + _cases("in", "subscribe", IN_SUBSCRIBE) + _cases("in", "subscribed", IN_SUBSCRIBED)
    + _cases("in", "unsubscribe", IN_UNSUBSCRIBE) + _cases("in", "unsubscribed", IN_UNSUBSCRIBED)
)


@pytest.mark.parametrize("direction, ptype, old, forward, new", ALL)
def test_appendix_a_tables(direction, ptype, old, forward, new):
    """Each row of RFC 6121 Appendix A.2/A.3: route/deliver and the new state."""
    fn = outbound if direction == "out" else inbound
    outcome = fn(STATES[old], ptype)
    assert outcome.forward is forward
    assert outcome.state == STATES[new or old]


@pytest.mark.parametrize("old", ["None", "None + Pending Out", "To"])
def test_outbound_subscribed_without_request_pre_approves(old):
    """§3.4: 'subscribed' with no pending request records a pre-approval, not routed."""
    outcome = outbound(STATES[old], "subscribed")
    assert outcome.forward is False
    assert outcome.state.approved is True
    assert outcome.state.subscription == STATES[old].subscription


@pytest.mark.parametrize("old, new_sub", [("None", "from"), ("To", "both"),
                                          ("None + Pending Out", "from")])
def test_inbound_subscribe_pre_approved_is_auto_approved(old, new_sub):
    """§3.4: a pre-approved request is answered 'subscribed' and not shown to the user."""
    state = SubState(STATES[old].subscription, ask=STATES[old].ask, approved=True)
    outcome = inbound(state, "subscribe")
    assert outcome.forward is False
    assert outcome.auto_reply == "subscribed"
    assert outcome.send_presence is True
    assert outcome.state.subscription == new_sub
    assert outcome.state.approved is False
    assert outcome.state.ask == STATES[old].ask


@pytest.mark.parametrize("old", ["From", "From + Pending Out", "Both"])
def test_inbound_subscribe_when_already_subscribed_auto_replies(old):
    """§3.1.3: a request from a contact that already has 'from' gets 'subscribed' back."""
    outcome = inbound(STATES[old], "subscribe")
    assert outcome.auto_reply == "subscribed"
    assert outcome.state == STATES[old]


def test_new_inbound_request_has_no_auto_reply():
    """A request without pre-approval waits for the user: no automatic answer."""
    assert inbound(STATES["None"], "subscribe").auto_reply is None


def test_outbound_unsubscribed_cancels_pre_approval_without_routing():
    """§3.4: 'unsubscribed' clears the approved flag and is not routed."""
    outcome = outbound(SubState("none", approved=True), "unsubscribed")
    assert outcome.state == SubState("none")
    assert outcome.forward is False


def test_approving_sends_presence():
    """§3.1.5: after approving, the contact gets the user's current presence."""
    assert outbound(STATES["None + Pending In"], "subscribed").send_presence is True
    assert outbound(STATES["None + Pending Out"], "subscribe").send_presence is False


@pytest.mark.parametrize("fn, old, ptype, expected", [
    (outbound, "From", "unsubscribed", True),
    (outbound, "Both", "unsubscribed", True),
    (outbound, "None + Pending In", "unsubscribed", False),
    (inbound, "Both", "unsubscribe", True),
    (inbound, "None + Pending In", "unsubscribe", False),
    (inbound, "Both", "unsubscribed", False),
])
def test_losing_from_sends_unavailable(fn, old, ptype, expected):
    """§3.2.2/§3.3.3: when the contact loses 'from' it is sent unavailable presence."""
    assert fn(STATES[old], ptype).send_unavailable is expected


def test_unknown_type_raises():
    """Only the four subscription types are state machine input."""
    with pytest.raises(ValueError):
        outbound(STATES["None"], "probe")
    with pytest.raises(ValueError):
        inbound(STATES["None"], "available")
    with pytest.raises(ValueError):
        SubState("pending")
