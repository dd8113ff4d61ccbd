"""Presence and subscriptions between sessions (RFC 6121 §3, §4)."""

from __future__ import annotations

from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, disconnect, make_server, stanza

MODULES = ["message", "roster", "presence"]


def setup(users=("a", "b", "c")):
    server = make_server(modules=MODULES)
    for user in users:
        create_user(server, f"{user}@localhost")
    return server


def send(server, session, xml):
    server.router.route(stanza(xml), session)


def close(server, session):
    """The client's connection drops; the real stream ends the session."""
    disconnect(session)


def presences(session, ptype="any"):
    out = [e for e in session.sent if e.name == "presence"]
    if ptype != "any":
        out = [e for e in out if e.getAttribute("type") == ptype]
    return out


def child(el, name):
    return next(c for c in el.elements() if c.name == name)


def item(server, user, contact):
    return server.stores.roster.get_item(user, contact).result


def remote_recorder(server):
    """Stand in for s2s: record what the router sends to other domains."""
    sent = []
    server.router.remote = lambda event: sent.append(event.stanza) or True
    return sent


def subscribe(server, sub, pub):
    """``sub`` subscribes to ``pub``'s presence and ``pub`` approves."""
    send(server, sub, f"<presence to='{pub.bare}' type='subscribe'/>")
    send(server, pub, f"<presence to='{sub.bare}' type='subscribed'/>")


def test_full_handshake_ends_in_both_and_presence_flows():
    """Two local users subscribe to each other: both rosters say 'both' and presence flows both ways."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, a, "<presence to='b@localhost' type='subscribe'><status>hi</status></presence>")
    (req,) = presences(b, "subscribe")
    assert req["from"] == "a@localhost"  # §3.1.2: stamped with the bare JID
    assert str(child(req, "status")) == "hi"
    assert item(server, "a@localhost", "b@localhost").ask is True
    send(server, b, "<presence to='a@localhost' type='subscribed'/>")
    assert item(server, "a@localhost", "b@localhost").subscription == "to"
    assert item(server, "b@localhost", "a@localhost").subscription == "from"
    # §3.1.5: a gets b's current presence after the approval.
    assert [p["from"] for p in presences(a, None)][-1] == "b@localhost/r1"
    subscribe(server, b, a)
    assert item(server, "a@localhost", "b@localhost").subscription == "both"
    assert item(server, "b@localhost", "a@localhost").subscription == "both"
    a.take(), b.take()
    send(server, a, "<presence><show>away</show></presence>")
    (seen,) = presences(b)
    assert seen["from"] == "a@localhost/r1" and str(child(seen, "show")) == "away"
    send(server, b, "<presence><show>dnd</show></presence>")
    assert [p["from"] for p in presences(a) if p["from"].startswith("b@")] == ["b@localhost/r1"]


def test_handshake_pushes_roster_changes():
    """Every subscription state change is pushed to interested resources, with ask while pending."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, a, "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    a.take()
    subscribe(server, a, b)
    states = []
    for push in (e for e in a.sent if e.name == "iq"):
        (el,) = next(push.elements(ns.ROSTER, "query")).elements(ns.ROSTER, "item")
        states.append((el["subscription"], el.getAttribute("ask")))
    assert states == [("none", "subscribe"), ("to", None)]


def test_subscriber_without_approval_sees_nothing():
    """A pending request reveals no presence; only 'from' contacts get broadcasts."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, a, "<presence to='b@localhost' type='subscribe'/>")
    a.take()
    send(server, b, "<presence><show>chat</show></presence>")
    assert [p for p in presences(a) if p["from"].startswith("b@")] == []


def test_pre_approval_auto_approves():
    """§3.4: after b pre-approves a, a's request is answered at once and b's resources never see it."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, b, "<presence to='a@localhost' type='subscribed'/>")
    assert presences(a, "subscribed") == []  # not routed
    assert item(server, "b@localhost", "a@localhost").approved is True
    send(server, a, "<presence to='b@localhost' type='subscribe'/>")
    assert presences(b, "subscribe") == []
    assert [p["from"] for p in presences(a, "subscribed")] == ["b@localhost"]
    assert item(server, "a@localhost", "b@localhost").subscription == "to"
    b_item = item(server, "b@localhost", "a@localhost")
    assert b_item.subscription == "from" and b_item.approved is False


def test_subscribe_when_already_from_is_auto_answered():
    """§3.1.3: a repeated request from a subscribed contact is answered 'subscribed' by the server."""
    server = setup()
    remote = remote_recorder(server)
    b = bind(server, "b@localhost/r1", available=True)
    server.router.route(stanza("<presence from='x@remote.example' to='b@localhost' type='subscribe'/>"))
    send(server, b, "<presence to='x@remote.example' type='subscribed'/>")
    remote.clear(), b.take()
    server.router.route(stanza("<presence from='x@remote.example' to='b@localhost' type='subscribe'/>"))
    assert presences(b, "subscribe") == []
    assert [(s["from"], s["type"]) for s in remote] == [("b@localhost", "subscribed")]


def test_unsubscribe_cancels_and_sends_unavailable():
    """§3.3: a unsubscribes from b: a 'none', b 'none', and a sees b go unavailable."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, a, b)
    a.take(), b.take()
    send(server, a, "<presence to='b@localhost' type='unsubscribe'/>")
    assert item(server, "a@localhost", "b@localhost").subscription == "none"
    assert item(server, "b@localhost", "a@localhost").subscription == "none"
    assert [p["from"] for p in presences(b, "unsubscribe")] == ["a@localhost"]
    assert [p["from"] for p in presences(a, "unavailable")] == ["b@localhost/r1"]
    a.take()
    send(server, b, "<presence><show>away</show></presence>")
    assert [p for p in presences(a) if p["from"].startswith("b@")] == []


def test_unsubscribed_cancels_contacts_subscription():
    """§3.2: b cancels a's subscription: a loses 'to' and sees b unavailable."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, a, b)
    a.take()
    send(server, b, "<presence to='a@localhost' type='unsubscribed'/>")
    assert item(server, "a@localhost", "b@localhost").subscription == "none"
    assert item(server, "b@localhost", "a@localhost").subscription == "none"
    types = [p.getAttribute("type") for p in presences(a) if p["from"].startswith("b@")]
    assert "unavailable" in types and "unsubscribed" in types


def test_denied_request_clears_pending():
    """§3.2.1: 'unsubscribed' in answer to a request denies it: a's ask is cleared, b stores nothing."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    send(server, a, "<presence to='b@localhost' type='subscribe'/>")
    send(server, b, "<presence to='a@localhost' type='unsubscribed'/>")
    a_item = item(server, "a@localhost", "b@localhost")
    assert a_item.subscription == "none" and a_item.ask is False
    assert server.stores.roster.list_requests("b@localhost").result == []


def test_request_to_offline_user_is_delivered_at_login_until_answered():
    """§3.1.3: a request to an offline account is stored, shown at each login, gone once answered."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    send(server, a, "<presence to='b@localhost' type='subscribe'><status>me</status></presence>")
    b = bind(server, "b@localhost/r1", available=True)
    (req,) = presences(b, "subscribe")
    assert req["from"] == "a@localhost"
    assert str(child(req, "status")) == "me"
    close(server, b)
    b = bind(server, "b@localhost/r2", available=True)
    assert len(presences(b, "subscribe")) == 1
    send(server, b, "<presence to='a@localhost' type='subscribed'/>")
    close(server, b)
    b = bind(server, "b@localhost/r3", available=True)
    assert presences(b, "subscribe") == []
    assert item(server, "a@localhost", "b@localhost").subscription == "to"


def test_subscription_to_unknown_local_account_is_ignored():
    """§8.5.1: subscription presence to a non-existent local account: no error, nothing stored."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    a.take()
    send(server, a, "<presence to='nobody@localhost' type='subscribe'/>")
    assert presences(a, "error") == []
    assert item(server, "a@localhost", "nobody@localhost").ask is True


def test_initial_presence_goes_to_own_resources_and_back():
    """§4.2.2: initial presence reaches every available resource, including the sender."""
    server = setup()
    a1 = bind(server, "a@localhost/r1", available=True)
    a2 = bind(server, "a@localhost/r2")
    a1.take()
    send(server, a2, "<presence/>")
    assert [p["to"] for p in presences(a1)] == ["a@localhost/r1"]
    froms = sorted(p["from"] for p in presences(a2))
    assert froms == ["a@localhost/r1", "a@localhost/r2"]  # own echo + the other resource


def test_probe_answered_with_contacts_presence_at_login():
    """§4.3: at initial presence the user gets the presence of each available 'to' contact's resource."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b1 = bind(server, "b@localhost/r1", available=True)
    b2 = bind(server, "b@localhost/r2", priority=-1, available=True)
    subscribe(server, a, b1)
    close(server, a)
    a = bind(server, "a@localhost/r9", available=True)
    froms = sorted(p["from"] for p in presences(a, None) if p["from"].startswith("b@"))
    assert froms == ["b@localhost/r1", "b@localhost/r2"]
    assert all(p["to"] == "a@localhost/r9" for p in presences(a, None))
    assert b2.priority == -1


def test_remote_contacts_are_probed_and_broadcast_via_router():
    """Remote contacts go through router.route: probes from the bare JID, broadcasts to subscribers."""
    server = setup()
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    send(server, a, "<presence to='x@remote.example' type='subscribe'/>")
    assert [(s["to"], s["from"], s["type"]) for s in remote] == [
        ("x@remote.example", "a@localhost", "subscribe")]
    server.router.route(stanza("<presence from='x@remote.example' to='a@localhost' type='subscribed'/>"))
    server.router.route(stanza("<presence from='x@remote.example' to='a@localhost' type='subscribe'/>"))
    send(server, a, "<presence to='x@remote.example' type='subscribed'/>")
    assert item(server, "a@localhost", "x@remote.example").subscription == "both"
    close(server, a)
    remote.clear()
    a = bind(server, "a@localhost/r2", available=True)
    kinds = sorted((s["to"], s["from"], s.getAttribute("type")) for s in remote)
    assert kinds == [("x@remote.example", "a@localhost", "probe"),
                     ("x@remote.example", "a@localhost/r2", None)]


def test_inbound_probe_answered_for_subscribers_only():
    """§4.3.2: a subscribed remote contact's probe gets each resource's presence; others 'unsubscribed'."""
    server = setup()
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    server.router.route(stanza("<presence from='x@remote.example' to='a@localhost' type='subscribe'/>"))
    send(server, a, "<presence to='x@remote.example' type='subscribed'/>")
    remote.clear()
    server.router.route(stanza("<presence from='x@remote.example/home' to='a@localhost' type='probe'/>"))
    assert [(s["to"], s["from"], s.getAttribute("type")) for s in remote] == [
        ("x@remote.example/home", "a@localhost/r1", None)]
    remote.clear()
    server.router.route(stanza("<presence from='y@remote.example' to='a@localhost' type='probe'/>"))
    assert [(s["to"], s.getAttribute("type")) for s in remote] == [("y@remote.example", "unsubscribed")]


def test_client_probes_are_ignored():
    """§4.3: a probe sent by a client goes nowhere."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, b, a)
    b.take()
    send(server, b, "<presence to='a@localhost' type='probe'/>")
    assert b.sent == [] and presences(a, "probe") == []


def test_unavailable_on_session_closed():
    """A session that ends without unavailable presence is announced unavailable to contacts."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    a2 = bind(server, "a@localhost/r2", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, b, a)
    b.take(), a2.take()
    close(server, a)
    assert [p["from"] for p in presences(b, "unavailable")] == ["a@localhost/r1"]
    assert [p["from"] for p in presences(a2, "unavailable")] == ["a@localhost/r1"]


def test_client_unavailable_is_broadcast_once():
    """§4.5: explicit unavailable is broadcast; the later stream close adds nothing."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, b, a)
    b.take()
    send(server, a, "<presence type='unavailable'><status>bye</status></presence>")
    (gone,) = presences(b, "unavailable")
    assert str(child(gone, "status")) == "bye"
    assert a.presence is None
    close(server, a)
    assert len(presences(b, "unavailable")) == 1


def test_directed_presence_delivered_and_revoked_at_logoff():
    """§4.6: directed presence reaches a non-contact, which hears unavailable when the sender leaves."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    c = bind(server, "c@localhost/r1", available=True)
    c.take()
    send(server, a, "<presence to='c@localhost/r1'><show>xa</show></presence>")
    assert [p["from"] for p in presences(c, None)] == ["a@localhost/r1"]
    assert a.directed == {"c@localhost/r1"}
    close(server, a)
    assert [p["from"] for p in presences(c, "unavailable")] == ["a@localhost/r1"]


def test_directed_unavailable_forgets_target():
    """A directed unavailable removes the target, so logoff does not repeat it."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    c = bind(server, "c@localhost/r1", available=True)
    send(server, a, "<presence to='c@localhost'/>")
    send(server, a, "<presence to='c@localhost' type='unavailable'/>")
    c.take()
    close(server, a)
    assert presences(c, "unavailable") == []


def test_inbound_presence_to_bare_and_full():
    """§8.5.2.1.2/§8.5.3: bare JID -> every available resource; full JID -> that resource only."""
    server = setup()
    b1 = bind(server, "b@localhost/r1", available=True)
    b2 = bind(server, "b@localhost/r2", available=True)
    b3 = bind(server, "b@localhost/r3")  # bound, not available
    for s in (b1, b2, b3):
        s.take()
    server.router.route(stanza("<presence from='x@remote.example/z' to='b@localhost'/>"))
    assert (len(presences(b1)), len(presences(b2)), len(presences(b3))) == (1, 1, 0)
    server.router.route(stanza("<presence from='x@remote.example/z' to='b@localhost/r3'/>"))
    assert (len(presences(b1)), len(presences(b2)), len(presences(b3))) == (1, 1, 1)


def test_priority_parsed_and_validated():
    """§4.7.2.3: <priority/> sets the session priority; out of range is bad-request, not broadcast."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True, priority=5)
    assert a.priority == 5
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, b, a)
    a.take(), b.take()
    for bad in ("200", "high"):
        send(server, a, f"<presence><priority>{bad}</priority></presence>")
    errors = presences(a, "error")
    assert len(errors) == 2
    assert all(child(e, "error").firstChildElement().name == "bad-request" for e in errors)
    assert presences(b) == [] and a.priority == 5
    send(server, a, "<presence><priority>-3</priority></presence>")
    assert a.priority == -3 and len(presences(b)) == 1


def test_broadcast_uses_cached_roster():
    """The hot path: a presence change of an online user does no database work."""
    server = setup()
    a = bind(server, "a@localhost/r1", available=True)
    b = bind(server, "b@localhost/r1", available=True)
    subscribe(server, b, a)
    calls = []
    real_run = server.database.run
    server.database.run = lambda desc, *args, **kw: (calls.append(desc), real_run(desc, *args, **kw))[1]
    send(server, a, "<presence><show>away</show></presence>")
    server.router.route(stanza("<presence from='x@remote.example/z' to='a@localhost'/>"))
    assert calls == []
    assert len(presences(b)) >= 1


def test_inbound_probe_when_no_resource_is_available():
    """§4.3.2: a subscribed contact's probe to an account with no available resource gets
    unavailable from the bare JID, addressed to the probe's 'from'."""
    server = setup()
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    server.router.route(stanza("<presence from='x@remote.example' to='a@localhost' type='subscribe'/>"))
    send(server, a, "<presence to='x@remote.example' type='subscribed'/>")
    close(server, a)
    remote.clear()
    server.router.route(stanza("<presence from='x@remote.example/home' to='a@localhost' type='probe'/>"))
    assert [(s["from"], s["to"], s.getAttribute("type")) for s in remote] == [
        ("a@localhost", "x@remote.example/home", "unavailable")]
    # A bound but not available resource counts as none.
    bind(server, "a@localhost/r2")
    remote.clear()
    server.router.route(stanza("<presence from='x@remote.example' to='a@localhost/r2' type='probe'/>"))
    assert [(s["from"], s["to"], s.getAttribute("type")) for s in remote] == [
        ("a@localhost", "x@remote.example", "unavailable")]


def test_inbound_probe_from_non_subscribers_gets_unsubscribed():
    """§4.3.2 rule 1: 'none', 'to', Pending In, a missing account: 'unsubscribed' to the bare JID;
    a pre-approval is not cancelled by it."""
    server = setup()
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    send(server, a, "<presence to='to@remote.example' type='subscribe'/>")
    server.router.route(stanza("<presence from='to@remote.example' to='a@localhost' type='subscribed'/>"))
    server.router.route(stanza("<presence from='in@remote.example' to='a@localhost' type='subscribe'/>"))
    send(server, a, "<presence to='pre@remote.example' type='subscribed'/>")
    assert item(server, "a@localhost", "to@remote.example").subscription == "to"
    assert item(server, "a@localhost", "pre@remote.example").approved is True
    close(server, a)
    for prober, target in [("to@remote.example/r", "a@localhost"), ("in@remote.example", "a@localhost"),
                           ("pre@remote.example", "a@localhost"), ("z@remote.example/q", "nobody@localhost")]:
        remote.clear()
        server.router.route(stanza(f"<presence from='{prober}' to='{target}' type='probe'/>"))
        assert [(s["from"], s["to"], s.getAttribute("type")) for s in remote] == [
            (target, prober.partition("/")[0], "unsubscribed")], prober
    assert item(server, "a@localhost", "pre@remote.example").approved is True


def setup_options(options: str, users=("a", "b", "c")):
    enabled = ", ".join(f'"{m}"' for m in MODULES)
    server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n[modules.presence]\n{options}")
    for user in users:
        create_user(server, f"{user}@localhost")
    return server


def test_directed_presence_targets_are_bounded():
    """§4.6 targets are remembered up to max_directed_presence; presence to one more is refused
    (policy-violation, not routed); repeats are fine and a directed unavailable frees a place."""
    server = setup_options("max_directed_presence = 3\n")
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    for n in range(3):
        send(server, a, f"<presence to='room{n}@muc.remote.example/nick'/>")
    a.take()
    send(server, a, "<presence to='room3@muc.remote.example/nick'/>")
    (refused,) = presences(a, "error")
    assert child(refused, "error").firstChildElement().name == "policy-violation"
    assert refused["from"] == "room3@muc.remote.example/nick" and refused["to"] == "a@localhost/r1"
    assert [s["to"] for s in remote] == [f"room{n}@muc.remote.example/nick" for n in range(3)]
    send(server, a, "<presence to='room0@muc.remote.example/nick'><show>away</show></presence>")
    send(server, a, "<presence to='room1@muc.remote.example/nick' type='unavailable'/>")
    send(server, a, "<presence to='room3@muc.remote.example/nick'/>")
    assert len(presences(a, "error")) == 1
    assert a.directed == {f"room{n}@muc.remote.example/nick" for n in (0, 2, 3)}


def one_turn(clock):
    """Run the calls due now but not those they schedule, as one reactor iteration does
    (MemoryReactorClock.advance(0) would also run calls added while it runs)."""
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def test_unavailable_fan_out_is_sliced_across_reactor_turns():
    """At logoff, unavailable presence to subscribers and directed targets goes out
    UNAVAILABLE_SLICE per reactor turn, each target once."""
    from chatbx_server.features.presence import UNAVAILABLE_SLICE
    server = setup_options("max_directed_presence = 1000\n")
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    targets = [f"t{n}@remote.example/x" for n in range(2 * UNAVAILABLE_SLICE + 10)]
    for target in targets:
        send(server, a, f"<presence to='{target}'/>")
    remote.clear()
    close(server, a)
    assert len(remote) == UNAVAILABLE_SLICE
    one_turn(server.clock)
    assert len(remote) == 2 * UNAVAILABLE_SLICE
    one_turn(server.clock)
    assert sorted(s["to"] for s in remote) == sorted(targets)
    assert all(s["type"] == "unavailable" and s["from"] == "a@localhost/r1" for s in remote)
    # (the accounts maintenance loop runs on its own timer)
    assert [c for c in server.clock.getDelayedCalls() if "Accounts.poll" not in repr(c)] == []


def test_new_presence_waits_for_the_old_unavailable():
    """A resource that comes back while its old unavailable presence is still going out
    sends the rest first: no target sees the new presence before the old unavailable."""
    from chatbx_server.features.presence import UNAVAILABLE_SLICE
    server = setup_options("max_directed_presence = 1000\n")
    remote = remote_recorder(server)
    a = bind(server, "a@localhost/r1", available=True)
    targets = [f"t{n}@remote.example/x" for n in range(3 * UNAVAILABLE_SLICE)]
    for target in targets:
        send(server, a, f"<presence to='{target}'/>")
    remote.clear()
    close(server, a)
    again = bind(server, "a@localhost/r1", available=True)
    send(server, again, f"<presence to='{targets[-1]}'/>")
    kinds = [(s["to"], s.getAttribute("type")) for s in remote]
    assert sorted(kinds[:-1]) == sorted((t, "unavailable") for t in targets)
    assert kinds[-1] == (targets[-1], None)
    # nothing left to send twice (the streams' own keepalive timers aside)
    assert [c for c in server.clock.getDelayedCalls() if "keepalive" not in repr(c.func)
            and "Accounts.poll" not in repr(c)] == []
