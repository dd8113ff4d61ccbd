"""Group chat fan-out (XEP-0045) over the network: one room, many occupants.

``occupants`` users log in and join ``room@conference.DOMAIN`` one after
another (no history); the first creates it and accepts the default
configuration (an instant room, §10.1.2), as a client does. The join of the
last occupant is timed: from its presence until its own presence (status
110) comes back, after every other occupant's. Then the occupants take turns
sending groupchat messages, at most ``window`` in flight (a message is in
flight until every occupant has its copy); figures: copies delivered per
second, and p50/p99 of the time from sending a message until the last
occupant has it. Senders rotate, so per-occupant rate limits (chatbx's
``stanza_rate``/``stanza_burst``) are not what is measured.
"""

from __future__ import annotations

import asyncio
import os
import time

from .client import T_IQ, T_MESSAGE, T_PRESENCE, El, LoginError, XmppConnection
from .scenarios import CpuMeter, Target, close_all, login_many, percentile, result

NS_MUC = "http://jabber.org/protocol/muc"
T_STATUS = NS_MUC + "#user x"
T_BODY = "jabber:client body"


def _self_presence(el: El) -> bool:
    x = el.find(T_STATUS)
    return x is not None and any(c.tag.endswith(" status") and c.attrs.get("code") == "110"
                                 for c in x.children)


def _ignore(conn: XmppConnection, el: El) -> None:
    if el.tag == T_IQ and el.get("type") in ("get", "set"):
        conn.send(f"<iq type='result' id='{el.get('id')}' to='{el.get('from')}'/>".encode())


async def _join(conn: XmppConnection, room: str, nick: str, timeout: float) -> float:
    """Join; seconds until the own presence (110) arrives."""
    t0 = time.monotonic()
    conn.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x>"
              "</presence>".encode())
    await conn.recv_until(lambda el: el.tag == T_PRESENCE and el.get("from") == f"{room}/{nick}"
                          and (el.get("type") == "error" or _self_presence(el)), timeout)
    return time.monotonic() - t0


async def muc_room(target: Target, occupants: int = 1000, messages: int = 300, window: int = 10,
                   base: int = 0, concurrency: int = 100, timeout: float = 30.0) -> list[dict]:
    room = f"bench{os.urandom(3).hex()}@conference.{target.domain}"
    conns, errors = await login_many(target, range(base, base + occupants), concurrency, 120.0)
    if len(conns) < occupants:
        close_all(conns)
        raise LoginError(f"{len(conns)} of {occupants} logged in: {errors[:3]}")
    try:
        owner = conns[0]
        await _join(owner, room, "n0", timeout)
        await owner.iq("set", f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' "
                              "type='submit'/></query>", to=room, timeout=timeout)
        owner.on_stanza = _ignore
        t_joins = time.monotonic()
        for i, conn in enumerate(conns[1:-1], 1):
            await _join(conn, room, f"n{i}", timeout)
            conn.on_stanza = _ignore  # later joins' presences: not kept
            conn.inbox.clear()
        joins_s = time.monotonic() - t_joins
        last_join_ms = await _join(conns[-1], room, f"n{occupants - 1}", timeout) * 1000

        sent_at: dict[str, int] = {}
        got: dict[str, int] = {}
        done_ms: list[float] = []
        finished = asyncio.Event()
        state = {"outstanding": 0}

        def on_stanza(conn: XmppConnection, el: El) -> None:
            if el.tag != T_MESSAGE or el.get("type") != "groupchat":
                _ignore(conn, el)
                return
            mid = el.get("id") or ""
            if mid not in sent_at:
                return
            n = got[mid] = got[mid] + 1
            if n == occupants:
                done_ms.append((time.monotonic_ns() - sent_at[mid]) / 1e6)
                state["outstanding"] -= 1
                finished.set()

        for conn in conns:
            conn.inbox.clear()
            conn.on_stanza = on_stanza
        meter = CpuMeter(target.server_pid)
        t0 = time.monotonic()
        deadline = t0 + timeout * 4
        for m in range(messages):
            while state["outstanding"] >= window and time.monotonic() < deadline:
                finished.clear()
                try:
                    await asyncio.wait_for(finished.wait(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            mid = f"b{m}-{os.urandom(2).hex()}"
            got[mid] = 0
            sent_at[mid] = time.monotonic_ns()
            state["outstanding"] += 1
            conns[m % occupants].send(f"<message type='groupchat' to='{room}' id='{mid}'>"
                                      f"<body>message {m} to the whole room</body></message>".encode())
        while state["outstanding"] > 0 and time.monotonic() < deadline:
            finished.clear()
            try:
                await asyncio.wait_for(finished.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        elapsed = time.monotonic() - t0
        cpu = meter.stop()
        delivered = sum(got.values())
        return [result(f"muc_room_{occupants}", target, delivered / elapsed, "deliveries/s",
                       occupants=occupants, messages=messages, window=window,
                       lost=messages * occupants - delivered,
                       p50_ms_to_last=round(percentile(done_ms, 50), 2),
                       p99_ms_to_last=round(percentile(done_ms, 99), 2),
                       join_ms_of_last=round(last_join_ms, 2),
                       joins_per_s=round((occupants - 2) / max(joins_s, 1e-9), 1), **cpu)]
    finally:
        close_all(conns)
        await asyncio.sleep(0.5)


async def muc_rooms(target: Target, rooms: int = 200, size: int = 10, messages: int = 30,
                    window: int = 2, base: int = 0, concurrency: int = 100,
                    timeout: float = 30.0) -> list[dict]:
    """Many small busy rooms: ``rooms`` rooms of ``size`` occupants each
    (users base.. in blocks), joined room by room (20 rooms at a time), then
    every room chats at once, ``messages`` per room from rotating senders
    with at most ``window`` in flight per room. Figures: copies delivered
    per second over all rooms, p50/p99 until a room's last occupant has a
    message."""
    total = rooms * size
    conns, errors = await login_many(target, range(base, base + total), concurrency, 180.0)
    if len(conns) < total:
        close_all(conns)
        raise LoginError(f"{len(conns)} of {total} logged in: {errors[:3]}")
    tag = os.urandom(3).hex()
    groups = [conns[r * size:(r + 1) * size] for r in range(rooms)]
    names = [f"bench{tag}r{r}@conference.{target.domain}" for r in range(rooms)]
    try:
        gate = asyncio.Semaphore(20)

        async def setup(r: int) -> None:
            async with gate:
                members = groups[r]
                await _join(members[0], names[r], "n0", timeout)
                await members[0].iq("set", f"<query xmlns='{NS_MUC}#owner'><x xmlns='jabber:x:data' "
                                           "type='submit'/></query>", to=names[r], timeout=timeout)
                for i, conn in enumerate(members[1:], 1):
                    await _join(conn, names[r], f"n{i}", timeout)

        t_joins = time.monotonic()
        await asyncio.gather(*(setup(r) for r in range(rooms)))
        joins_s = time.monotonic() - t_joins

        sent_at: dict[str, int] = {}
        got: dict[str, int] = {}
        room_of: dict[str, int] = {}
        outstanding = [0] * rooms
        wakeups = [asyncio.Event() for _ in range(rooms)]
        done_ms: list[float] = []

        def on_stanza(conn: XmppConnection, el: El) -> None:
            if el.tag != T_MESSAGE or el.get("type") != "groupchat":
                _ignore(conn, el)
                return
            mid = el.get("id") or ""
            if mid not in sent_at:
                return
            n = got[mid] = got[mid] + 1
            if n == size:
                done_ms.append((time.monotonic_ns() - sent_at[mid]) / 1e6)
                r = room_of[mid]
                outstanding[r] -= 1
                wakeups[r].set()

        for conn in conns:
            conn.inbox.clear()
            conn.on_stanza = on_stanza
        meter = CpuMeter(target.server_pid)
        t0 = time.monotonic()
        deadline = t0 + timeout * 4

        async def chat(r: int) -> None:
            members = groups[r]
            for m in range(messages):
                while outstanding[r] >= window and time.monotonic() < deadline:
                    wakeups[r].clear()
                    try:
                        await asyncio.wait_for(wakeups[r].wait(),
                                               max(0.01, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        return
                mid = f"r{r}m{m}-{tag}"
                got[mid], room_of[mid] = 0, r
                sent_at[mid] = time.monotonic_ns()
                outstanding[r] += 1
                members[m % size].send(f"<message type='groupchat' to='{names[r]}' id='{mid}'>"
                                       f"<body>message {m} to room {r}</body></message>".encode())
            while outstanding[r] > 0 and time.monotonic() < deadline:
                wakeups[r].clear()
                try:
                    await asyncio.wait_for(wakeups[r].wait(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    return

        await asyncio.gather(*(chat(r) for r in range(rooms)))
        elapsed = time.monotonic() - t0
        cpu = meter.stop()
        delivered = sum(got.values())
        return [result(f"muc_rooms_{rooms}x{size}", target, delivered / elapsed, "deliveries/s",
                       rooms=rooms, size=size, messages=messages * rooms, window=window,
                       lost=messages * rooms * size - delivered,
                       p50_ms_to_last=round(percentile(done_ms, 50), 2),
                       p99_ms_to_last=round(percentile(done_ms, 99), 2),
                       joins_per_s=round(total / max(joins_s, 1e-9), 1), **cpu)]
    finally:
        close_all(conns)
        await asyncio.sleep(0.5)
