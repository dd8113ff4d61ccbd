"""The event bus: priority order, first non-None result, notifications."""

from __future__ import annotations

from twisted.internet import defer

from chatbx_server import events
from chatbx_server.events import EventBus


def test_priority_order_and_registration_order():
    """Handlers run from the highest priority down; equal priorities in registration order."""
    bus = EventBus()
    calls: list[str] = []
    bus.on("e", lambda ev: calls.append("deliver1"), events.DELIVER)
    bus.on("e", lambda ev: calls.append("fallback"), events.FALLBACK)
    bus.on("e", lambda ev: calls.append("filter"), events.FILTER)
    bus.on("e", lambda ev: calls.append("deliver2"), events.DELIVER)
    bus.on("e", lambda ev: calls.append("offline"), events.OFFLINE)
    bus.on("e", lambda ev: calls.append("check"), events.CHECK)
    assert bus.fire("e", None) is None
    assert calls == ["filter", "check", "deliver1", "deliver2", "offline", "fallback"]


def test_priorities_are_ordered():
    """The named priorities keep the documented order."""
    assert (events.FILTER > events.CHECK > events.ARCHIVE > events.COPY > events.DELIVER
            > events.OFFLINE > events.FALLBACK)


def test_first_non_none_wins():
    """The first handler returning something else than None stops the others."""
    bus = EventBus()
    calls: list[str] = []
    bus.on("e", lambda ev: calls.append("a"), 10)
    bus.on("e", lambda ev: False, 5)         # False is a result: handled
    bus.on("e", lambda ev: calls.append("c") or "c", 0)
    assert bus.fire("e", None) is False
    assert calls == ["a"]


def test_deferred_counts_as_result():
    """A Deferred is a result (the handler took the stanza asynchronously)."""
    bus = EventBus()
    d = defer.Deferred()
    bus.on("e", lambda ev: d, 1)
    bus.on("e", lambda ev: "late", 0)
    assert bus.fire("e", None) is d


def test_event_passed_and_unknown_name():
    """Handlers receive the event object; an unknown name returns None."""
    bus = EventBus()
    bus.on("e", lambda ev: ev * 2)
    assert bus.fire("e", 21) == 42
    assert bus.fire("nothing", 1) is None
    assert not bus.has("nothing") and bus.has("e")


def test_off():
    """off() unregisters a handler; the name disappears with its last handler."""
    bus = EventBus()
    a = lambda ev: "a"  # noqa: E731
    b = lambda ev: "b"  # noqa: E731
    bus.on("e", a, 10)
    bus.on("e", b, 0)
    bus.off("e", a)
    assert bus.fire("e", None) == "b"
    bus.off("e", b)
    assert not bus.has("e")
    bus.off("e", b)  # unknown: no error


def test_fire_all_continues_past_failures():
    """fire_all runs every handler, even after one raises or returns a value."""
    bus = EventBus()
    calls: list[str] = []

    def broken(ev):
        raise RuntimeError("boom")

    bus.on("n", lambda ev: calls.append("first") or "result", 10)
    bus.on("n", broken, 5)
    bus.on("n", lambda ev: calls.append("last"), 0)
    assert bus.fire_all("n", None) is None
    assert calls == ["first", "last"]


def test_handler_added_during_fire_waits_for_next_fire():
    """Registering a handler while firing does not change the running pass."""
    bus = EventBus()
    calls: list[str] = []

    def adder(ev):
        calls.append("adder")
        bus.on("e", lambda ev: calls.append("new"), 100)

    bus.on("e", adder, 0)
    bus.fire("e", None)
    assert calls == ["adder"]
    bus.fire("e", None)
    assert calls == ["adder", "new", "adder"]


def test_fire_from_skips_higher_priorities():
    """fire_from runs only the handlers at or below the given priority, in order, first result wins."""
    bus = EventBus()
    calls: list[str] = []
    bus.on("e", lambda ev: calls.append("filter"), events.FILTER)
    bus.on("e", lambda ev: calls.append("deliver"), events.DELIVER)
    bus.on("e", lambda ev: calls.append("offline") or "stored", events.OFFLINE)
    bus.on("e", lambda ev: calls.append("fallback"), events.FALLBACK)
    assert bus.fire_from("e", None, events.DELIVER) == "stored"
    assert calls == ["deliver", "offline"]
    assert bus.fire_from("nothing", None, events.DELIVER) is None
    bus.off("e", bus._sorted["e"][0])
    calls.clear()
    bus.fire_from("e", None, events.FILTER)
    assert calls == ["deliver", "offline"]
