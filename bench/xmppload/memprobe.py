"""Run twistd with a memory probe: on SIGUSR1, write what the Python heap holds.

Why: idle_memory gives KiB per connection from RSS; this says which objects
they are, without any debug hook in chatbx itself. Usage:

    python -m xmppload.memprobe OUT_DIR [--tracemalloc] [--release-buffers] [--gc-stats]
        [--gc-what-if=freeze|nofreeze|A,B,C] -- -n --pidfile= chatbx --config FILE
    kill -USR1 PID     # writes OUT_DIR/probe-<n>.txt
    kill -USR2 PID     # --gc-stats: appends one JSON line to OUT_DIR/gc.jsonl

With --gc-stats every cyclic collection is timed (gc.callbacks): USR2 writes
the cumulative collections and seconds per generation, the objects the
collector tracks (and how many are frozen), and the process CPU time, so a
benchmark can say what share of a measured window the collector took.
--gc-what-if tries a change from outside: "nofreeze" undoes chatbx's own
gc.freeze() (gc.unfreeze() once the reactor runs), "freeze" freezes once the
reactor runs, "A,B,C" sets gc.set_threshold(A, B, C); "+" joins them
("freeze+10000,10,10").

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


#: also report glibc malloc's view (in use vs free-but-held) and the RSS a
#: malloc_trim(0) gives back: how much of RSS is allocator slack
MALLOC_STATS = False


def malloc_report() -> str:
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()

    def rss() -> int:
        with open(f"/proc/{os.getpid()}/status") as st:
            return int(next(line for line in st if line.startswith("VmRSS")).split()[1])

    before = rss()
    libc.malloc_trim(0)
    after = rss()
    return (f"malloc in use {info.uordblks // 1024} KiB, free held {info.fordblks // 1024} KiB, "
            f"mmapped {info.hblkhd // 1024} KiB\n"
            f"VmRSS after malloc_trim(0): {after} kB (was {before} kB)\n")


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
        # Timers by what they call: which feature keeps one per connection.
        from twisted.internet.base import DelayedCall
        timers: Counter = Counter()
        for obj in gc.get_objects():
            if isinstance(obj, DelayedCall):
                func = getattr(obj, "func", None)  # gone once called or cancelled
                timers[getattr(func, "__qualname__", repr(type(func))) if func else "(done)"] += 1
        for name, n in timers.most_common(10):
            fh.write(f"timer {n:10d}  {name}\n")
        done = [o for o in gc.get_objects() if isinstance(o, DelayedCall) and not hasattr(o, "func")]
        if done:
            for ref in gc.get_referrers(done[-1])[:5]:
                if isinstance(ref, dict):
                    owners = [type(o).__qualname__ for o in gc.get_referrers(ref) if hasattr(o, "__dict__") and o.__dict__ is ref]
                    keys = [k for k, v in ref.items() if v is done[-1]]
                    fh.write(f"timer done held by dict of {owners} key {keys}\n")
                else:
                    fh.write(f"timer done held by {type(ref).__qualname__}\n")
        if MALLOC_STATS:
            fh.write(malloc_report())
        if tracemalloc.is_tracing():
            snap = tracemalloc.take_snapshot()
            stats = snap.statistics("lineno")
            fh.write(f"\ntracemalloc total: {sum(s.size for s in stats) / 1024:.0f} KiB\n")
            for stat in stats[:50]:
                frame = stat.traceback[0]
                fh.write(f"{stat.size / 1024:10.0f} KiB {stat.count:9d}  {frame.filename}:{frame.lineno}\n")
            # Every line, for a before/after difference (profile_chatbx.py).
            with open(path + ".lines", "w") as lines:
                for stat in stats:
                    frame = stat.traceback[0]
                    lines.write(f"{stat.size} {stat.count} {frame.filename}:{frame.lineno}\n")


class GcStats:
    """Times every collection per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.thread_time()
            return
        gen = info["generation"]
        self.count[gen] += 1
        self.seconds[gen] += time.thread_time() - self._t0
        self.collected[gen] += info.get("collected", 0)

    def write(self, out_dir: str) -> None:
        import json

        t = os.times()
        line = {"time": time.time(), "cpu": t.user + t.system, "count": self.count,
                "seconds": [round(s, 6) for s in self.seconds], "collected": self.collected,
                "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count(),
                "threshold": gc.get_threshold(), "pending": gc.get_count()}
        with open(os.path.join(out_dir, "gc.jsonl"), "a") as fh:
            fh.write(json.dumps(line) + "\n")


def _what_if(specs: str) -> None:
    for spec in specs.split("+"):
        _one_what_if(spec)


def _one_what_if(spec: str) -> None:
    from twisted.internet import reactor

    if spec == "freeze":
        reactor.callWhenRunning(lambda: reactor.callLater(1.0, gc.freeze))
    elif spec == "nofreeze":
        reactor.callWhenRunning(lambda: reactor.callLater(1.0, gc.unfreeze))
    else:
        a, b, c = (int(x) for x in spec.split(","))
        reactor.callWhenRunning(lambda: gc.set_threshold(a, b, c))


def main() -> None:
    args = sys.argv[1:]
    out_dir = args.pop(0)
    use_tm = "--tracemalloc" in args[: args.index("--")]
    if "--gc-stats" in args[: args.index("--")]:
        stats = GcStats()
        signal.signal(signal.SIGUSR2, lambda *_: stats.write(out_dir))
    for opt in args[: args.index("--")]:
        if opt.startswith("--gc-what-if="):
            _what_if(opt.split("=", 1)[1])
    global MALLOC_STATS
    MALLOC_STATS = "--malloc-stats" in args[: args.index("--")]
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
