#!/usr/bin/env python3
"""In-process cost of stream management (XEP-0198) per delivered message.

The harness of ``bench/mam_overhead.py`` (its messages and report line) (unit-test server, threadless
in-memory SQLite, MemoryReactorClock): alice's stream is fed N chat
messages as bytes; they are routed, archived and delivered into bob's
stream. With ``--sm`` both sessions enable stream management; bob's
client answers every ``<r/>`` the server writes with an ``<a/>`` fed back
at once (as a client on loopback would), alice sends an ``<r/>`` every
``--client-r`` messages. Prints µs of CPU per message for each case.

    python bench/sm_overhead.py [--number 20000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from chatbx_server.features import DEFAULT_MODULES  # noqa: E402
from mam_overhead import chat_messages, report  # noqa: E402
from tests.unit.fakes import bind, create_user, make_server  # noqa: E402

SM = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"


def run(disable: list[str], sm: bool, number: int, batch: int, client_r: int,
        profile: bool) -> float:
    server = make_server(modules=[m for m in DEFAULT_MODULES if m not in disable])
    for user in ("alice@localhost", "bob@localhost"):
        create_user(server, user)
    alice = bind(server, "alice@localhost/a", available=True)
    bob = bind(server, "bob@localhost/b", available=True)
    if sm:
        alice.stream.dataReceived(SM)
        bob.stream.dataReceived(SM)
        server.clock.advance(0.05)
        assert alice.sm is not None and bob.sm is not None
    counts = {"bytes": 0, "r": 0}
    answers: list[bytes] = []

    def discard(data: bytes) -> None:
        counts["bytes"] += len(data)
        if sm and b"<r xmlns='urn:xmpp:sm:3'/>" in data:
            counts["r"] += 1
            answers.append(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % bob.sm.sent)

    bob.stream.transport.write = discard  # type: ignore[method-assign]
    alice.stream.transport.write = lambda data: None  # type: ignore[method-assign]
    feed_alice = alice.stream.dataReceived
    feed_bob = bob.stream.dataReceived
    data = chat_messages(number)
    request = b"<r xmlns='urn:xmpp:sm:3'/>"
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof:
        prof.enable()
    for i, chunk in enumerate(data):
        feed_alice(chunk)
        if sm and client_r and i % client_r == client_r - 1:
            feed_alice(request)
        while answers:
            feed_bob(answers.pop())
        if i % batch == batch - 1:
            server.clock.advance(0.05)  # the batch writer's delay
    server.clock.advance(0.05)
    if prof:
        prof.disable()
    elapsed = time.process_time() - start
    assert counts["bytes"] > 0
    if sm:
        assert bob.sm.sent == number, (bob.sm.sent, number)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    server.stop()
    return elapsed / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="messages between writer flushes")
    ap.add_argument("--client-r", type=int, default=10,
                    help="alice sends <r/> every N messages (0: never)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-mam", action="store_true", help="also run without the archive")
    args = ap.parse_args()
    cases = [("SM off", [], False), ("SM on", [], True)]
    if args.no_mam:
        cases += [("SM off, no archive", ["mam"], False), ("SM on, no archive", ["mam"], True)]
    for label, disable, sm in cases:
        figures = [run(disable, sm, args.number, args.batch, args.client_r, args.profile)
                   for _ in range(args.repeat)]
        report(label, figures)


if __name__ == "__main__":
    main()
