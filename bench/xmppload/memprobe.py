"""Run twistd with a memory probe: on SIGUSR1, write what the Python heap holds.

Why: idle_memory gives KiB per connection from RSS; this says which objects
they are, without any debug hook in chatbx itself. Usage:

    python -m xmppload.memprobe OUT_DIR [--tracemalloc] [--release-buffers] -- -n --pidfile= chatbx --config FILE
    kill -USR1 PID     # writes OUT_DIR/probe-<n>.txt

Each report lists object counts by type (gc), and with --tracemalloc the
Python-allocated bytes by source line (tracemalloc slows the server; OpenSSL
and expat buffers are C allocations it does not see: RSS minus the traced
total is their share).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter


def write_report(out_dir: str, seq: list[int]) -> None:
    seq[0] += 1
    path = os.path.join(out_dir, f"probe-{seq[0]}.txt")
    gc.collect()
    counts: Counter = Counter()
    for obj in gc.get_objects():
        cls = type(obj)
        mod = cls.__module__ if isinstance(cls.__module__, str) else "?"
        counts[f"{mod}.{cls.__qualname__}"] += 1
    with open(path, "w") as fh:
        fh.write(f"time {time.time():.0f} pid {os.getpid()}\n")
        with open(f"/proc/{os.getpid()}/status") as st:
            fh.write("".join(line for line in st if line.startswith(("VmRSS", "RssAnon"))))
        fh.write(f"gc objects: {sum(counts.values())}\n")
        for name, n in counts.most_common(60):
            fh.write(f"{n:10d}  {name}\n")
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            stats = snap.statistics("lineno")
            fh.write(f"\ntracemalloc total: {sum(s.size for s in stats) / 1024:.0f} KiB\n")
            for stat in stats[:50]:
                frame = stat.traceback[0]
                fh.write(f"{stat.size / 1024:10.0f} KiB {stat.count:9d}  {frame.filename}:{frame.lineno}\n")


def main() -> None:
    args = sys.argv[1:]
    out_dir = args.pop(0)
    use_tm = "--tracemalloc" in args[: args.index("--")]
    if "--release-buffers" in args[: args.index("--")]:
        # What-if experiment: OpenSSL frees a connection's 2 x ~17 KiB record buffers while idle.
        from OpenSSL import SSL
        original = SSL.Context.__init__

        def init(self, *a, **kw):
            original(self, *a, **kw)
            self.set_mode(SSL.MODE_RELEASE_BUFFERS)
        SSL.Context.__init__ = init
    twistd_args = args[args.index("--") + 1:]
    os.makedirs(out_dir, exist_ok=True)
    if use_tm:
        tracemalloc.start(1)
    seq = [0]
    signal.signal(signal.SIGUSR1, lambda *_: write_report(out_dir, seq))
    from twisted.scripts.twistd import run
    sys.argv = ["twistd"] + twistd_args
    run()


if __name__ == "__main__":
    main()
