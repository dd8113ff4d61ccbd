"""Group chat benchmark, in process: the server's own cost of MUC fan-out.

Runs the real Server (router, MUC service, real C2SStreams serializing
every stanza) on a fake clock; client transports only count bytes, so the
figures are the server side alone (no sockets, no TLS, no client parsing):
an upper bound for what the network bench can show, and the number to
watch when changing the MUC code. One line per scenario:

- room_1000: one room, 1,000 occupants; time of the 1,000th join (it sends
  999 presences to the newcomer and its own to 999 others); a groupchat
  message fanned out to all 1,000 (deliveries/s, p50/p99 time until the
  last occupant's copy is written); memory per occupant (tracemalloc,
  sessions excluded);
- rooms_200x10: 200 rooms of 10 occupants, every occupant talking in turn
  (deliveries/s);
- persistent archived variants add the batched archive write (SQLite in memory).

Usage: python bench/muc.py [--occupants 1000] [--messages 200]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from chatbx_server.c2s import stream as c2s  # noqa: E402
from chatbx_server.config import load_config  # noqa: E402
from chatbx_server.server import Server  # noqa: E402
from chatbx_server.storage.database import Database  # noqa: E402
from chatbx_server.xmpp import ns  # noqa: E402
from chatbx_server.xmpp.jid import JID  # noqa: E402
from chatbx_server.xmpp.stanzas import parse_stanza  # noqa: E402


class CountingTransport(StringTransport):
    """Counts what the server writes; keeps nothing."""

    count = 0

    def __init__(self) -> None:
        # One address per client: the per-address connection limit applies.
        n = CountingTransport.count = CountingTransport.count + 1
        super().__init__(peerAddress=IPv4Address("TCP", f"10.{n >> 16 & 255}.{n >> 8 & 255}."
                                                 f"{n & 255}", 40000))
        self.writes = 0
        self.nbytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.nbytes += len(data)


def make_server(extra: str = "") -> Server:
    fd, path = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write('domains = ["localhost"]\n[log]\nlevel = "error"\n[modules.muc]\n'
                 "max_occupants = 100000\nstanza_rate = 1000000.0\nstanza_burst = 1000000.0\n"
                 + extra)
    try:
        config = load_config(path)
    finally:
        os.unlink(path)
    db = Database.for_tests("sqlite://")
    from chatbx_server.storage import schema

    with db.engine.begin() as conn:
        schema.metadata.create_all(conn)
    server = Server(config, clock=MemoryReactorClock(), database=db)
    server.start()
    return server


def connect(server: Server, jid: str) -> Any:
    full = JID.parse(jid)
    stream = c2s.C2SStream(c2s.C2SFactory(server, tls=None, direct_tls=True))
    stream.makeConnection(CountingTransport())
    stream.user = full.bare_jid()
    stream.dataReceived(f"<?xml version='1.0'?><stream:stream xmlns='{ns.CLIENT}' "
                        f"xmlns:stream='{ns.STREAMS}' to='localhost' version='1.0'>".encode())
    session = stream.bind_session(full)
    return session


def send(session: Any, xml: str) -> None:
    session.stream.dataReceived(c2s.CLIENT_STREAMS.serialize(parse_stanza(xml)).encode())


def written(sessions: list[Any]) -> int:
    return sum(s.stream.transport.writes for s in sessions)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def room_big(occupants: int, messages: int, persistent: bool) -> dict:
    server = make_server()
    room = "big@conference.localhost"
    sessions = [connect(server, f"u{i}@localhost/r") for i in range(occupants)]
    send(sessions[0], f"<presence to='{room}/u0'/>")  # groupchat 1.0 join: instant room
    if persistent:
        send(sessions[0], f"<iq type='set' id='c' to='{room}'><query xmlns='"
                          "http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' "
                          "type='submit'><field var='muc#roomconfig_persistentroom'><value>1"
                          "</value></field></x></query></iq>")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1, occupants - 1):
        send(sessions[i], f"<presence to='{room}/u{i}'><x xmlns='http://jabber.org/protocol/muc'>"
                          "<history maxstanzas='0'/></x></presence>")
    gc.collect()
    per_occupant = (tracemalloc.get_traced_memory()[0] - before) / max(1, occupants - 2)
    tracemalloc.stop()
    t0 = time.perf_counter()
    send(sessions[-1], f"<presence to='{room}/u{occupants - 1}'/>")
    last_join_ms = (time.perf_counter() - t0) * 1000
    times = []
    base = written(sessions)
    t_all = time.perf_counter()
    for m in range(messages):
        t0 = time.perf_counter()
        send(sessions[m % occupants], f"<message type='groupchat' to='{room}' id='m{m}'>"
                                      f"<body>message number {m} to everyone</body></message>")
        times.append((time.perf_counter() - t0) * 1000)
        server.clock.advance(0)  # the archive batch of this turn, when persistent
    elapsed = time.perf_counter() - t_all
    deliveries = written(sessions) - base
    assert deliveries >= messages * occupants, (deliveries, messages * occupants)
    return {"scenario": "room_%d%s" % (occupants, "_archived" if persistent else ""),
            "deliveries_per_s": round(deliveries / elapsed),
            "p50_ms_to_last": round(pct(times, 50), 2), "p99_ms_to_last": round(pct(times, 99), 2),
            "join_ms_of_last": round(last_join_ms, 2),
            "bytes_per_occupant": round(per_occupant), "occupants": occupants,
            "messages": messages}


def rooms_many(rooms: int, size: int, rounds: int) -> dict:
    server = make_server()
    sessions: list[list[Any]] = []
    for r in range(rooms):
        members = [connect(server, f"r{r}u{i}@localhost/r") for i in range(size)]
        for i, s in enumerate(members):
            send(s, f"<presence to='room{r}@conference.localhost/u{i}'/>")
        sessions.append(members)
    flat = [s for members in sessions for s in members]
    base = written(flat)
    t0 = time.perf_counter()
    for n in range(rounds):
        for r, members in enumerate(sessions):
            send(members[n % size], f"<message type='groupchat' to='room{r}@conference.localhost'>"
                                    f"<body>round {n}</body></message>")
    elapsed = time.perf_counter() - t0
    deliveries = written(flat) - base
    return {"scenario": f"rooms_{rooms}x{size}", "deliveries_per_s": round(deliveries / elapsed),
            "messages": rounds * rooms, "deliveries": deliveries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--occupants", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(room_big(args.occupants, args.messages, False)))
    print(json.dumps(room_big(args.occupants, max(10, args.messages // 4), True)))
    print(json.dumps(rooms_many(args.rooms, args.size, args.rounds)))


if __name__ == "__main__":
    main()
