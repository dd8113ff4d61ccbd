#!/usr/bin/env python3
"""Python heap per hibernated XEP-0198 session (tracemalloc), in process.

Binds N sessions with resumable stream management on the unit-test fakes
(a real C2SStream over a StringTransport), drops every connection (the
sessions hibernate: they stay in server.sessions with their SM state and
one timer each), collects garbage, and prints one JSON line with the heap
growth per hibernated session. The connections' own cost (TLS, transport
buffers) is measured by ``compare``'s idle_memory on a real server; this
is what a session costs once its connection is gone.

    python3 bench/hibernated_memory.py --count 5000
    python3 bench/hibernated_memory.py --count 2000 --queued 5   # 5 chat messages wait in each
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.unit.fakes import bind, create_user, disconnect, make_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--queued", type=int, default=0,
                    help="chat messages sent to each session once it hibernates (they wait "
                         "in its XEP-0198 queue)")
    args = ap.parse_args()
    server = make_server(config_text='[modules]\nenabled = ["message", "roster", "presence", '
                                     '"offline", "smacks", "csi"]\n')
    create_user(server, "bench@localhost")
    create_user(server, "sender@localhost")
    sender = bind(server, "sender@localhost/s")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.count):
        session = bind(server, f"bench@localhost/r{i}")
        session.stream.dataReceived(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        disconnect(session)
        for n in range(args.queued):
            sender.stream.dataReceived(
                f"<message to='bench@localhost/r{i}' type='chat' id='q{i}-{n}'><body>Message {n} "
                f"waiting for a phone that lost its connection: about eighty bytes.</body>"
                f"</message>".encode())
    sender.stream.transport.clear()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    hibernating = sum(1 for s in server.sessions if s.sm is not None and s.sm.hibernated is not None)
    print(json.dumps({"scenario": "hibernated_memory", "value": round((after - before) / args.count / 1024, 2),
                      "unit": "KiB/session (Python heap)", "sessions": args.count,
                      "hibernating": hibernating,
                      "queued": sum(len(s.sm.queue) for s in server.sessions if s.sm is not None)}))
    return 0 if hibernating == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
