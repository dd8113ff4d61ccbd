#!/usr/bin/env python3
"""In-process cost of the message archive per delivered message.

Two sessions on the unit-test server (MemoryReactorClock, threadless
in-memory SQLite, so the database work runs on this thread too): alice's
stream is fed N chat messages as bytes (parsed, routed, archived, delivered
and serialized into bob's stream, whose transport discards the bytes), the
archive writer flushed every ``--batch`` messages as its timer would (the
fake clock advancing by the writer's 50 ms delay: 10,000 messages/s). Prints
µs per message with the default modules, with and without ``mam``.

    python bench/mam_overhead.py [--number 20000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chatbx_server.features import DEFAULT_MODULES  # noqa: E402
from tests.unit.fakes import bind, create_user, make_server  # noqa: E402


def chat_messages(number: int) -> list[bytes]:
    """alice's chat messages to bob, as her client sends them."""
    return [(f"<message to='bob@localhost' type='chat' id='m{i:08d}'>"
             f"<body>Hi Bob, message number {i} of the benchmark, about sixty bytes.</body>"
             f"<active xmlns='http://jabber.org/protocol/chatstates'/></message>").encode()
            for i in range(number)]


def report(label: str, figures: list[float]) -> None:
    """One line per case: the best run and every run."""
    print(f"{label}: {min(figures):.1f} µs/message (min of {len(figures)}: "
          + ", ".join(f"{f:.1f}" for f in figures) + ")", flush=True)


def run(disable: list[str], number: int, batch: int, profile: bool, no_writes: bool = False) -> float:
    server = make_server(modules=[m for m in DEFAULT_MODULES if m not in disable])
    for user in ("alice@localhost", "bob@localhost"):
        create_user(server, user)
    alice = bind(server, "alice@localhost/a", available=True)
    bob = bind(server, "bob@localhost/b", available=True)
    written = [0]

    def discard(data: bytes) -> None:
        written[0] += len(data)

    bob.stream.transport.write = discard  # type: ignore[method-assign]
    feed = alice.stream.dataReceived
    data = chat_messages(number)
    archive = getattr(server.stores, "archive", None)
    if no_writes:
        archive.writer.submit = lambda row: None
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof:
        prof.enable()
    for i, chunk in enumerate(data):
        feed(chunk)
        if i % batch == batch - 1:
            server.clock.advance(0.05)  # the writer's delay: 10,000 msgs/s by default
    server.clock.advance(0.05)
    if prof:
        prof.disable()
    elapsed = time.process_time() - start
    if archive is not None and "mam" not in disable and not no_writes:
        archive.flush()
        assert archive.writer.rows_written >= 2 * number, archive.writer.rows_written
    assert written[0] > 0
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    server.stop()
    return elapsed / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="messages between writer flushes")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--split", action="store_true",
                    help="also run with the rows dropped before the writer (reactor-side cost only)")
    args = ap.parse_args()
    cases = [("archive off", ["mam"], False), ("archive on", [], False)]
    if args.split:
        cases.append(("archive on, rows not written", [], True))
    for label, disable, no_writes in cases:
        figures = [run(disable, args.number, args.batch, args.profile, no_writes)
                   for _ in range(args.repeat)]
        report(label, figures)


if __name__ == "__main__":
    main()
