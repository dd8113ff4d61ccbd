"""XEP-0198 stream management: counters (pure), enable, acks both ways,
hibernation and resumption, and where unacknowledged stanzas go."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from chatbx_server.c2s import stream as c2s
from chatbx_server.c2s.smacks import (MOD, NS, HandledCountTooHigh, InboundCounter,
                                      StreamManagement, newly_acked, parse_h, wire)
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID
from tests.unit.fakes import FakeStream, bind, create_user, disconnect, make_server, stanza

MODULES = ("message", "roster", "presence", "offline", "smacks")


# -- pure counters -------------------------------------------------------------

def test_newly_acked_wraps_at_2_32():
    """'h' wraps to 0 after 2^32-1 (§4): an ack past the wrap counts right."""
    assert newly_acked(5, 7) == 2
    assert newly_acked(MOD - 1, 1) == 2
    assert wire(MOD + 3) == 3


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "x", str(MOD)])
def test_parse_h_rejects_what_is_not_uint32(value):
    """Only an unsigned 32-bit decimal is an 'h'."""
    assert parse_h(value) is None


def test_parse_h_accepts_uint32():
    """0 and 2^32-1 are valid 'h' values."""
    assert parse_h("0") == 0
    assert parse_h(str(MOD - 1)) == MOD - 1


def test_inbound_counter_advances_in_order_only():
    """A stanza finished early is not counted before the ones in flight before it."""
    counter = InboundCounter()
    first, second = defer.Deferred(), defer.Deferred()
    counter.track(first)
    counter.track(True)
    counter.track(second)
    assert (counter.received, counter.handled) == (3, 0)
    second.callback(True)
    assert counter.handled == 0
    first.callback(True)
    assert counter.handled == 3 and counter.pending == 0


def test_inbound_counter_counts_a_failed_stanza_as_handled():
    """A stanza whose handling failed was answered with an error: it is handled."""
    counter = InboundCounter()
    d: defer.Deferred = defer.Deferred()
    counter.track(d)
    d.errback(RuntimeError("boom"))
    assert counter.handled == 1


def test_queue_ack_drops_acknowledged_and_refuses_too_many():
    """An ack removes what it covers; acking more than was sent raises."""
    sm = StreamManagement(max_queue=10)
    for i in range(3):
        assert sm.push(f"<message id='{i}'/>".encode())
    assert sm.ack(2) == 2
    assert list(sm.queue) == [b"<message id='2'/>"]
    with pytest.raises(HandledCountTooHigh):
        sm.ack(4)
    assert sm.ack(2) == 0  # a repeated ack changes nothing


def test_queue_bound():
    """push() reports when the queue passes its bound."""
    sm = StreamManagement(max_queue=1)
    assert sm.push(b"<message/>")
    assert not sm.push(b"<message/>")


def test_the_queue_keeps_text_not_element_trees():
    """What waits for an ack is the bytes written (no element tree for the
    cyclic collector to walk); a resumption on a stream that writes stanzas
    differently gets them re-encoded, and the session's end parses them back."""
    from chatbx_server.http.websocket import FRAMING
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "one")
    queued = list(alice.sm.queue)
    assert len(queued) == 1 and isinstance(queued[0], bytes) and b"<body>one</body>" in queued[0]
    alice.sm.reencode(FRAMING)
    assert alice.sm.encoding is FRAMING
    assert list(alice.sm.queue) == [FRAMING.encode(stanza(queued[0].decode()))]
    [back] = alice.sm.take_unacked()
    assert back.name == "message" and str(back.body) == "one" and back["from"] == "bob@localhost/pc"


# -- helpers -------------------------------------------------------------------

def setup(options: str = "", modules: tuple[str, ...] = MODULES):
    enabled = ", ".join(f'"{m}"' for m in modules)
    server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n{options}")
    for user in ("alice", "bob", "carol"):
        create_user(server, f"{user}@localhost")
    return server


def send_raw(session_or_stream, xml: str) -> None:
    stream = getattr(session_or_stream, "stream", session_or_stream)
    stream.dataReceived(xml.encode())


def enable(server, jid: str, resume: bool = True, available: bool = True):
    session = bind(server, jid, available=available)
    attrs = " resume='true'" if resume else ""
    send_raw(session, f"<enable xmlns='{NS}'{attrs}/>")
    enabled = [e for e in session.sent if e.name == "enabled"]
    assert enabled and enabled[0].uri == NS
    session.take()
    return session, enabled[0].getAttribute("id")


def sm_elements(sent, name):
    return [e for e in sent if e.uri == NS and e.name == name]


def messages(sent):
    return [e for e in sent if e.name == "message"]


def chat(server, sender, to: str, body: str):
    send_raw(sender, f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")


def offline_bodies(server, user="alice@localhost"):
    rows: list = []
    server.stores.offline.fetch(user, after=0, max_messages=100, max_bytes=10**6).addCallback(rows.extend)
    return [stanza(r.xml).body and str(stanza(r.xml).body) for r in rows]


def resume_stream(server, user: str, previd: str, h: int = 0) -> FakeStream:
    stream = FakeStream(server, JID.parse(user))
    stream.dataReceived(f"<resume xmlns='{NS}' previd='{previd}' h='{h}'/>".encode())
    return stream


# -- enabling ------------------------------------------------------------------

def test_sm_is_offered_after_authentication():
    """The post-SASL features include <sm xmlns='urn:xmpp:sm:3'/>."""
    server = setup()
    stream = FakeStream(server, JID.parse("alice@localhost"))
    features = stream.transport.value().decode()
    assert f"<sm xmlns='{NS}'/>" in features


def test_enable_gives_a_resumable_session_with_max():
    """<enable resume='true'/> answers <enabled id resume max=600/>; a
    second <enable/> fails with unexpected-request (§3)."""
    server = setup()
    session = bind(server, "alice@localhost/phone")
    send_raw(session, f"<enable xmlns='{NS}' resume='true'/>")
    enabled = sm_elements(session.take(), "enabled")[0]
    assert enabled["resume"] == "true" and enabled["max"] == "600"
    assert len(enabled["id"]) >= 32
    send_raw(session, f"<enable xmlns='{NS}'/>")
    failed = sm_elements(session.take(), "failed")[0]
    assert failed.firstChildElement().name == "unexpected-request"


def test_client_max_lowers_the_resumption_time():
    """The client's 'max' is honoured when it is lower than the server's."""
    server = setup()
    session = bind(server, "alice@localhost/phone")
    send_raw(session, f"<enable xmlns='{NS}' resume='true' max='60'/>")
    assert sm_elements(session.take(), "enabled")[0]["max"] == "60"


def test_enable_before_bind_fails():
    """§3: enabling before resource binding gets <failed><unexpected-request/>."""
    server = setup()
    stream = FakeStream(server, JID.parse("alice@localhost"))
    stream.dataReceived(f"<enable xmlns='{NS}'/>".encode())
    failed = sm_elements(stream.sent, "failed")[0]
    assert failed.firstChildElement().name == "unexpected-request"
    assert stream.state == c2s.BIND_NEEDED


def test_r_without_sm_is_a_stream_error():
    """<r/> on a stream without SM enabled is not understood."""
    server = setup()
    session = bind(server, "alice@localhost/phone")
    send_raw(session, f"<r xmlns='{NS}'/>")
    assert session.stream.closed_with[0] == "unsupported-stanza-type"


# -- acks ----------------------------------------------------------------------

def test_server_requests_acks_one_at_a_time():
    """The server sends <r/> once ``request_after`` stanzas are unacked, no
    second one until the ack, and the client's <a/> empties the queue."""
    server = setup("[modules.smacks]\nrequest_after = 2\n")
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "one")
    assert sm_elements(alice.take(), "r") == []  # below request_after: not yet
    chat(server, bob, "alice@localhost", "two")
    chat(server, bob, "alice@localhost", "three")
    sent = alice.take()
    assert [str(m.body) for m in messages(sent)] == ["two", "three"]
    assert len(sm_elements(sent, "r")) == 1
    assert len(alice.sm.queue) == 3
    send_raw(alice, f"<a xmlns='{NS}' h='3'/>")
    assert len(alice.sm.queue) == 0
    server.clock.advance(5)
    assert sm_elements(alice.take(), "r") == []  # nothing left to ask about


def test_a_stanza_below_request_after_is_asked_about_within_request_delay():
    """A quiet stream still gets its <r/>: one sweep (every request_delay
    seconds) asks every session with unacknowledged stanzas, once."""
    server = setup("[modules.smacks]\nrequest_after = 5\nrequest_delay = 2\n")
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "one")
    assert sm_elements(alice.take(), "r") == []
    server.clock.advance(1.9)
    assert sm_elements(alice.take(), "r") == []
    server.clock.advance(0.2)
    assert len(sm_elements(alice.take(), "r")) == 1
    chat(server, bob, "alice@localhost", "two")
    server.clock.advance(4)
    assert sm_elements(alice.take(), "r") == []  # the first request is still out
    send_raw(alice, f"<a xmlns='{NS}' h='1'/>")  # covers "one"; "two" is left
    assert sm_elements(alice.take(), "r") == []
    server.clock.advance(2)
    assert len(sm_elements(alice.take(), "r")) == 1


def test_ack_requests_every_few_stanzas_under_load():
    """A busy stream is asked once per ``request_after`` stanzas, not once
    per stanza: the <a/> it answers with is work for both sides."""
    server = setup("[modules.smacks]\nrequest_after = 5\n")
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    requests = 0
    for i in range(50):
        chat(server, bob, "alice@localhost", f"m{i}")
        if sm_elements(alice.take(), "r"):
            requests += 1
            send_raw(alice, f"<a xmlns='{NS}' h='{alice.sm.sent}'/>")
    assert requests == 10
    assert len(alice.sm.queue) == 0


def test_ack_with_too_high_h_closes_the_stream():
    """§4: acknowledging more than was sent is undefined-condition with
    <handled-count-too-high/>."""
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    send_raw(alice, f"<a xmlns='{NS}' h='5'/>")
    raw = alice.stream.transport.value().decode()
    assert "<undefined-condition" in raw and "send-count='0'" in raw
    assert "handled-count-too-high" in raw and alice.stream.closed_with is not None


def test_r_counts_handled_stanzas():
    """<r/> is answered with the number of stanzas received since <enable/>."""
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    chat(server, alice, "bob@localhost", "x")
    send_raw(alice, f"<iq type='get' id='p'><ping xmlns='{ns.PING}'/></iq>")
    send_raw(alice, f"<r xmlns='{NS}'/>")
    assert sm_elements(alice.take(), "a")[-1]["h"] == "2"


def test_ack_waits_for_the_offline_commit():
    """A message stored offline is counted only once the store's Deferred
    fired: the immediate answer to <r/> does not cover it, a later <a/> does."""
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    held: list[defer.Deferred] = []

    def store(*args):
        d: defer.Deferred = defer.Deferred()
        held.append(d)
        return d

    server.stores.offline.store = store
    chat(server, alice, "bob@localhost", "for bob")  # bob is offline
    send_raw(alice, f"<r xmlns='{NS}'/>")
    assert [a["h"] for a in sm_elements(alice.take(), "a")] == ["0"]
    held[0].callback(True)
    assert [a["h"] for a in sm_elements(alice.take(), "a")] == ["1"]


def test_ack_waits_for_the_archive_batch_commit():
    """With the archive on, a message to an online contact is delivered at
    once, but the sender's <a/> covers it only after the archive batch that
    holds its rows (sender's and recipient's) committed; without SM nothing
    waits (the row is only submitted)."""
    server = setup(modules=MODULES + ("mam",))
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    bob.take()
    chat(server, alice, "bob@localhost", "archived")
    assert [str(m.body) for m in messages(bob.take())] == ["archived"]  # delivery did not wait
    send_raw(alice, f"<r xmlns='{NS}'/>")
    assert [a["h"] for a in sm_elements(alice.take(), "a")] == ["0"]
    server.clock.advance(1)  # the batch writer's delay: the batch commits
    assert [a["h"] for a in sm_elements(alice.take(), "a")] == ["1"]
    rows: list = []
    server.stores.archive.flush()
    for owner in ("alice@localhost", "bob@localhost"):
        server.database.run("t", lambda conn, o=owner: conn.exec_driver_sql(
            "SELECT count(*) FROM archive_messages JOIN users ON users.id = user_id "
            "WHERE username = ?", (o.split("@")[0],)).scalar()).addCallback(rows.append)
    assert rows == [1, 1]


# -- hibernation and resumption -------------------------------------------------

def test_lost_connection_hibernates_and_resumes_with_what_was_missed():
    """The TCP connection drops: the session stays (still available to
    contacts), messages queue; <resume/> with the client's h gets <resumed/>
    with ours and what the client had not acknowledged, in order."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    bob.take()
    chat(server, bob, "alice@localhost", "before")
    send_raw(alice, f"<a xmlns='{NS}' h='1'/>")
    chat(server, bob, "alice@localhost", "unacked")
    chat(server, alice, "bob@localhost", "from alice")
    disconnect(alice)
    assert server.sessions.get("alice@localhost", "phone") is alice
    assert not alice.closed
    chat(server, bob, "alice@localhost", "while away")
    assert not [p for p in bob.take() if p.name == "presence"]

    stream = resume_stream(server, "alice@localhost", previd, h=1)
    resumed = sm_elements(stream.sent, "resumed")[0]
    assert resumed["previd"] == previd and resumed["h"] == "1"
    assert [str(m.body) for m in messages(stream.sent)] == ["unacked", "while away"]
    assert stream.state == c2s.BOUND and stream.session is alice and alice.stream is stream
    # The resumed stream works as before.
    chat(server, bob, "alice@localhost", "after")
    assert str(messages(stream.sent)[-1].body) == "after"


def test_resumption_waits_for_stanzas_still_being_committed():
    """The connection drops while a message of the client is still being
    stored: <resumed/> waits for the commit so its 'h' covers the message
    (the client does not send it twice); what the client pipelined after
    <resume/> is handled after it."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    held: list[defer.Deferred] = []

    def store(*args):
        d: defer.Deferred = defer.Deferred()
        held.append(d)
        return d

    server.stores.offline.store = store
    chat(server, alice, "bob@localhost", "for bob")  # bob is offline: stored
    disconnect(alice)
    stream = FakeStream(server, JID.parse("alice@localhost"))
    stream.dataReceived(f"<resume xmlns='{NS}' previd='{previd}' h='0'/><r xmlns='{NS}'/>".encode())
    assert sm_elements(stream.sent, "resumed") == []
    held[0].callback(True)
    resumed = sm_elements(stream.sent, "resumed")
    assert resumed and resumed[0]["h"] == "1"
    assert sm_elements(stream.sent, "a")[-1]["h"] == "1"  # the pipelined <r/>, after it
    assert stream.state == c2s.BOUND


def test_resume_by_another_account_fails_and_leaves_the_session():
    """A resumption id is bound to its account: bob cannot take alice's session."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    disconnect(alice)
    stream = resume_stream(server, "bob@localhost", previd)
    failed = sm_elements(stream.sent, "failed")[0]
    assert failed.firstChildElement().name == "item-not-found"
    assert failed.getAttribute("h") is None
    assert stream.state == c2s.BIND_NEEDED
    assert server.sessions.get("alice@localhost", "phone") is alice


def test_resume_replaces_an_old_connection_still_open():
    """A resume while the server still thinks the old connection is up
    closes that connection (conflict) and moves the session over, without
    ending it (no unavailable presence)."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    old = alice.stream
    stream = resume_stream(server, "alice@localhost", previd)
    assert sm_elements(stream.sent, "resumed")
    assert old.closed_with[0] == "conflict"
    assert alice.stream is stream and not alice.closed
    assert server.sessions.get("alice@localhost", "phone") is alice
    assert not [p for p in bob.sent if p.name == "presence" and p.getAttribute("type") == "unavailable"]


def test_clean_close_does_not_hibernate_and_reroutes_to_offline():
    """</stream:stream> ends a resumable session at once; its unacked
    message goes to offline storage, not into the void."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "unread")
    send_raw(alice, "</stream:stream>")
    assert server.sessions.get("alice@localhost", "phone") is None
    assert offline_bodies(server) == ["unread"]


def test_timeout_ends_the_session_and_unacked_go_where_undelivered_go():
    """After resume_timeout: unavailable presence, messages to offline
    storage, IQ requests answered with an error, and a late <resume/> gets
    <failed h=.../> with the old session's handled count."""
    server = setup("[modules.smacks]\nresume_timeout = 30\n")
    alice, previd = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    # Let bob see alice (presence to a full JID goes straight through).
    chat(server, alice, "bob@localhost/pc", "hello bob")
    chat(server, bob, "alice@localhost", "m1")
    send_raw(bob, f"<iq type='get' id='v1' to='alice@localhost/phone'><query xmlns='{ns.VERSION}'/></iq>")
    disconnect(alice)
    chat(server, bob, "alice@localhost", "m2")
    bob.take()
    server.clock.advance(29)
    assert server.sessions.get("alice@localhost", "phone") is alice
    server.clock.advance(2)
    assert server.sessions.get("alice@localhost", "phone") is None and alice.closed
    assert offline_bodies(server) == ["m1", "m2"]
    errors = [e for e in bob.take() if e.name == "iq" and e.getAttribute("type") == "error"]
    assert errors and errors[0]["id"] == "v1"

    stream = resume_stream(server, "alice@localhost", previd)
    failed = sm_elements(stream.sent, "failed")[0]
    assert failed["h"] == "1" and failed.firstChildElement().name == "item-not-found"


def test_timeout_reroutes_to_another_resource():
    """An unacked message goes to another available resource of the account."""
    server = setup("[modules.smacks]\nresume_timeout = 5\n")
    alice, _ = enable(server, "alice@localhost/phone")
    desk = bind(server, "alice@localhost/desk", available=True, priority=-1)
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "hi")
    disconnect(alice)
    desk.take()
    desk.presence["priority"] = "0"
    desk.priority = 0
    server.clock.advance(6)
    assert [str(m.body) for m in messages(desk.take())] == ["hi"]
    assert offline_bodies(server) == []


def test_a_client_that_never_acks_is_dropped():
    """Past max_unacked the stream closes with policy-violation and the
    queued messages go to offline storage."""
    server = setup("[modules.smacks]\nmax_unacked = 3\n")
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    for i in range(4):
        chat(server, bob, "alice@localhost", f"n{i}")
    server.clock.advance(0)  # closed on the next turn, not inside delivery
    assert alice.stream.closed_with[0] == "policy-violation"
    assert server.sessions.get("alice@localhost", "phone") is None
    assert offline_bodies(server) == ["n0", "n1", "n2", "n3"]


def test_keepalive_timeout_hibernates():
    """A peer that stops answering the keepalive ping (half-open TCP) is
    closed with connection-timeout and its session can still be resumed."""
    server = setup()
    alice, previd = enable(server, "alice@localhost/phone")
    old = alice.stream
    limits = server.config.limits
    server.clock.advance(limits.c2s_idle_timeout)
    server.clock.advance(limits.c2s_ping_timeout)
    assert old.closed_with[0] == "connection-timeout"
    assert server.sessions.get("alice@localhost", "phone") is alice
    stream = resume_stream(server, "alice@localhost", previd)
    assert sm_elements(stream.sent, "resumed")


def test_new_bind_on_the_same_resource_replaces_a_hibernated_session():
    """Binding the hibernating session's resource again ends it; its unacked
    message goes to the new session."""
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost/phone", "to the phone")
    disconnect(alice)
    fresh = bind(server, "alice@localhost/phone", available=True)
    assert alice.closed
    assert "to the phone" in [str(m.body) for m in messages(fresh.sent)]


def test_overflow_during_a_presence_broadcast_does_not_break_it():
    """A hibernated session whose queue overflows while a broadcast loops
    over the account's sessions is closed on the next turn: the broadcast
    completes (no error), then the session ends."""
    server = setup("[modules.smacks]\nmax_unacked = 1\n")
    alice, _ = enable(server, "alice@localhost/phone")
    disconnect(alice)
    desk = bind(server, "alice@localhost/desk", available=True)
    laptop = bind(server, "alice@localhost/laptop", available=True)
    got = laptop.take()
    assert [p for p in got if p.name == "presence"]
    assert not [e for e in got if e.getAttribute("type") == "error"], [e.toXml() for e in got]
    server.clock.advance(0)
    assert alice.closed and server.sessions.get("alice@localhost", "phone") is None
    assert desk.presence is not None


def test_server_shutdown_ends_hibernated_sessions():
    """Stopping the server ends hibernating sessions (their unacked messages are stored)."""
    server = setup()
    alice, _ = enable(server, "alice@localhost/phone")
    bob = bind(server, "bob@localhost/pc", available=True)
    chat(server, bob, "alice@localhost", "late")
    disconnect(alice)
    for session in list(server.sessions):
        if session is alice:
            session.close("system-shutdown")
    assert alice.closed
    assert offline_bodies(server) == ["late"]


def test_hold_ack_from_an_asynchronous_continuation_is_waited_for() -> None:
    """A stanza whose handling goes on asynchronously (a block list loaded
    first) and holds its ack from that continuation (the archive row) is
    counted only once the held write fired too."""
    from twisted.internet import defer as _defer

    from chatbx_server.c2s.smacks import InboundCounter

    counter = InboundCounter()
    route: _defer.Deferred = _defer.Deferred()
    archive_row: _defer.Deferred = _defer.Deferred()
    route.addCallback(lambda _: counter.also_wait(archive_row))  # the continuation holds the ack
    counter.track(route)
    route.callback(None)
    assert counter.handled == 0  # the archive row is not committed yet
    archive_row.callback(True)
    assert counter.handled == 1
