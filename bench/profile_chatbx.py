#!/usr/bin/env python3
"""Profile chatbx under a benchmark scenario with py-spy, and say where the time goes.

Starts chatbx (pinned to the first CPU, load generator on the others), runs
one scenario from bench/xmppload while `py-spy record --format raw` samples the
server, then attributes every sample to the first category found walking from
the innermost frame outwards: TLS, expat parse, domish building, serialization,
writes, routing/delivery, c2s stream, storage, reactor, other. Divided by the
messages the scenario delivered, that is microseconds per message per stage.

    python3 bench/profile_chatbx.py --scenario throughput [--keep]
    python3 bench/profile_chatbx.py --scenario idle --idle-count 2000 [--sm] [--tracemalloc]   # per connection
    python3 bench/profile_chatbx.py --scenario s2s    # two chatbx servers, users chatting across them
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmppload import federation, run, scenarios, servers  # noqa: E402
from xmppload.scenarios import Target  # noqa: E402

# (category, regex on "function (file:line)"), tried in order on each frame from the leaf outwards
CATEGORIES = [
    ("socket I/O (send/recv syscalls)", re.compile(r"untilConcludes|\.(writeSomeData|_dataReceived|doRead) \("
                                                   r"(twisted/internet/tcp)")),
    ("TLS (pyOpenSSL/OpenSSL)", re.compile(r"OpenSSL/|twisted/protocols/tls\.py|_sslverify|cffi")),
    ("serialization (toXml)", re.compile(r"(^|\.)(toXml|serialize|escapeToXml|_escape) \(|Serializer|xmpp/serializer\.py")),
    ("expat parse (C)", re.compile(r"(^|\.)parse \(.*(domish|parser)\.py")),
    ("domish building", re.compile(r"domish\.py|chatbx_server/c2s/parser\.py")),
    ("writes (transport buffering)", re.compile(r"twisted/internet/(abstract|tcp|_newtls)\.py")),
    ("routing / delivery / features", re.compile(r"chatbx_server/(router|events|sessions|modules|features/)")),
    ("s2s stream + manager", re.compile(r"chatbx_server/s2s/")),
    ("c2s stream + session", re.compile(r"chatbx_server/c2s/")),
    ("storage (DB thread handoff)", re.compile(r"chatbx_server/storage|sqlalchemy")),
    ("xmlstream dispatch (xish)", re.compile(r"twisted/words/")),
    ("reactor / event loop", re.compile(r"twisted/internet/|twisted/python/")),
]


def categorize(raw_path: str) -> tuple[Counter, int, Counter]:
    """Samples per category, total samples, and the hottest frames (category | frame)."""
    cats: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    with open(raw_path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            # py-spy puts the thread name first; idle reactor time is the epoll wait
            total += n
            for frame in reversed(frames):
                hit = next((name for name, rx in CATEGORIES if rx.search(frame)), None)
                if hit:
                    cats[hit] += n
                    leaves[f"{hit[:12]} | {frame}"] += n
                    break
            else:
                cats["other"] += n
                leaves[f"other | {frames[-1]}"] += n
    return cats, total, leaves


def start(workdir: str, users: int, fan: bool, cpus: list[int], memprobe: bool,
          trace: bool = False, release_buffers: bool = False,
          malloc_stats: bool = False, heaptrack: str = "",
          database_url: str = "") -> servers.ServerHandle:
    os.makedirs(workdir, exist_ok=True)
    port, tls_port = servers.free_port(), servers.free_port()
    cfg = servers.write_chatbx_config(workdir, "localhost", port, tls_port, database_url=database_url or None)
    if database_url:
        servers.upgrade_chatbx_database(cfg)
    if not os.path.exists(os.path.join(workdir, "users.txt")):
        names = [f"bench{n}" for n in range(users)]
        servers.provision_chatbx(cfg, "localhost", names, "secret", workdir)
    if not memprobe:
        return servers.start_chatbx(workdir, "localhost", cpus=cpus, cfg=cfg, port=port, tls_port=tls_port)
    log_path = os.path.join(workdir, "chatbx.log")
    twistd_args = ["-n", "--pidfile=", "--logfile", log_path, "chatbx", "--config", cfg]
    wrap = ["heaptrack", "-o", heaptrack] if heaptrack else []
    proc = subprocess.Popen([*wrap, sys.executable, "-m", "xmppload.memprobe", os.path.join(workdir, "probe"),
                             *(["--tracemalloc"] if trace else []),
                             *(["--release-buffers"] if release_buffers else []),
                             *(["--malloc-stats"] if malloc_stats else []), "--", *twistd_args], cwd=os.path.dirname(os.path.abspath(__file__)),
                            stdout=open(log_path + ".out", "ab"), stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None)
    handle = servers.ServerHandle("chatbx", proc, port, tls_port, "localhost", workdir, log_path, {"config": cfg})
    servers.wait_port(port, proc, 60)
    return handle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("throughput", "latency", "login_rate", "login_rate_fast",
                                           "idle", "s2s"),
                    default="throughput")
    ap.add_argument("--workdir", help="reuse a chatbx workdir (users already added)")
    ap.add_argument("--idle-count", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rate", type=float, default=10000.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--tracemalloc", action="store_true", help="idle: also Python bytes by source line (slow)")
    ap.add_argument("--release-buffers", action="store_true",
                    help="idle what-if: patch pyOpenSSL contexts with SSL_MODE_RELEASE_BUFFERS")
    ap.add_argument("--malloc-stats", action="store_true",
                    help="idle: glibc malloc in use / free-but-held, and RSS after malloc_trim(0)")
    ap.add_argument("--heaptrack", metavar="OUT", default="",
                    help="idle: run the server under heaptrack (C allocations by call stack) and "
                         "kill it with the connections still open: `heaptrack_print --print-leaks 1 "
                         "OUT.zst` lists what they hold")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="idle: seconds between the last login and the second report (25: after "
                         "chatbx freed the parsers of quiet connections)")
    ap.add_argument("--database", metavar="URL", default="",
                    help="an empty PostgreSQL database for chatbx instead of SQLite in its workdir")
    ap.add_argument("--sm", action="store_true",
                    help="clients enable XEP-0198 stream management (resumable) after bind")
    args = ap.parse_args()
    from xmppload import client as xmpp_client
    xmpp_client.SM_ENABLED = args.sm
    py_spy = shutil.which("py-spy")
    if not py_spy and args.scenario != "idle":
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    servers.raise_nofile()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, gen_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else ([], [])
    if args.scenario == "s2s":
        assert py_spy is not None
        return profile_s2s(py_spy, args.duration, server_cpus, gen_cpus, args.keep)
    workdir = args.workdir or tempfile.mkdtemp(prefix="chatbx-profile-")
    handle = start(workdir, max(200, args.idle_count), False, server_cpus, memprobe=args.scenario == "idle",
                   trace=args.tracemalloc, release_buffers=args.release_buffers,
                   malloc_stats=args.malloc_stats, heaptrack=args.heaptrack, database_url=args.database)
    if gen_cpus:
        os.sched_setaffinity(0, set(gen_cpus))
    target = Target("chatbx", "127.0.0.1", handle.port, "localhost", server_pid=handle.pid)
    try:
        if args.scenario == "idle":
            return profile_idle(handle, target, args.idle_count, bool(args.heaptrack), args.settle)
        raw = os.path.join(workdir, f"pyspy-{args.scenario}.txt")
        spy = subprocess.Popen([py_spy, "record", "--pid", str(handle.pid), "--format", "raw", "--output", raw,
                                "--rate", "250", "--nonblocking", "--duration", str(int(args.duration + 4))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if args.scenario == "throughput":
            coro = scenarios.throughput(target, duration=args.duration)
        elif args.scenario == "latency":
            coro = scenarios.latency(target, rate=args.rate, duration=args.duration)
        else:
            coro = scenarios.login_rate(target, duration=args.duration,
                                        fast=args.scenario == "login_rate_fast")
        res = asyncio.run(coro)[0]
        spy.wait(60)
        print(res)
        # CPU per message from the scenario's own measurement (server CPU % over the measured
        # window / rate), split by the sampled shares: robust to py-spy's missed samples.
        rate = res["value"] if args.scenario != "latency" else res.get("achieved_rate", 0)
        per_item = (res.get("server_cpu_pct", 100) / 100 * 1e6 / rate) if rate else 0.0
        unit = "us/login" if args.scenario.startswith("login_rate") else "us/msg"
        print_profile(raw, per_item, unit, f"server CPU {res.get('server_cpu_pct')}% at {rate:.0f}/s")
        return 0
    finally:
        handle.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def print_profile(raw: str, per_item: float, unit: str, what: str) -> None:
    """The categories of one py-spy raw profile, in shares and in time per item."""
    cats, total, leaves = categorize(raw)
    print(f"\n{total} py-spy samples; {what} = {per_item:.1f} {unit}")
    print(f"{'category':40s} {'share':>7s} {unit:>8s}")
    for name, n in cats.most_common():
        print(f"{name:40s} {100 * n / max(1, total):6.1f}% {per_item * n / max(1, total):8.2f}")
    print("hottest frames (the frame that decided the category):")
    for frame, n in leaves.most_common(25):
        print(f"  {100 * n / max(1, total):5.1f}%  {frame}")
    print(f"raw profile: {raw}")


def profile_s2s(py_spy: str, duration: float, server_cpus: list[int], gen_cpus: list[int], keep: bool) -> int:
    """Two chatbx servers (bench/xmppload/federation.py), 50 pairs chatting across them; each
    server profiled: its CPU per delivered message (it sends half of them over s2s and
    receives the other half), by stage."""
    root = tempfile.mkdtemp(prefix="chatbx-profile-s2s-")
    params = run.with_overrides(run.FULL, duration=duration)
    nodes = federation.start_nodes(root, params, server_cpus, "secret", ("ca", "cb"))
    try:
        if gen_cpus:
            os.sched_setaffinity(0, set(gen_cpus))
        raws, spies = {}, []
        for key, node in nodes.items():
            raws[key] = os.path.join(root, f"pyspy-s2s-{key}.txt")
            spies.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(node.handle.pid), "--format", "raw", "--output", raws[key],
                 "--rate", "250", "--nonblocking", "--duration", str(int(duration + 8))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        res = asyncio.run(federation.s2s_throughput("chatbx-chatbx", nodes["ca"].target, nodes["cb"].target,
                                                    params.pairs, params.window, duration, params.warmup))
        for spy in spies:
            spy.wait(60)
        print(res)
        for key in ("ca", "cb"):
            pct = res[f"server_{'a' if key == 'ca' else 'b'}_cpu_pct"]
            print_profile(raws[key], pct / 100 * 1e6 / res["value"] if res["value"] else 0.0, "us/msg",
                          f"{key}: CPU {pct}% at {res['value']:.0f} msgs/s")
        return 0
    finally:
        federation.stop_nodes(nodes)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def profile_idle(handle: servers.ServerHandle, target: Target, count: int,
                 kill_first: bool = False, settle: float = 2.0) -> int:
    """Object counts before and after `count` idle connections (memprobe reports, SIGUSR1)."""
    probe_dir = os.path.join(handle.workdir, "probe")

    def probe_pid() -> int:
        """The memprobe process (under heaptrack a child of its wrapper script)."""
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
                except OSError:
                    continue
                if cmdline[1:4] == [b"-m", b"xmppload.memprobe", probe_dir.encode()]:
                    return int(entry)
        return handle.proc.pid

    async def go() -> None:
        await asyncio.sleep(1.0)
        pid = probe_pid()
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(2.0)
        conns, errors = await scenarios.login_many(target, range(count), 100, 120.0)
        await asyncio.sleep(settle)
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(3.0)
        # A tracemalloc snapshot of a big heap takes a while: wait for the
        # report to be complete (bounded).
        second = os.path.join(probe_dir, "probe-2.txt")
        for _ in range(120):
            if os.path.exists(second) and "gc objects" in open(second).read():
                if "tracemalloc total" in open(second).read() or "--tracemalloc" not in sys.argv:
                    break
            await asyncio.sleep(1.0)
        print(f"{len(conns)} idle connections, {len(errors)} failures")
        if kill_first:
            # Under heaptrack: what the open connections hold must still be
            # allocated when the trace ends.
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(1.0)
        scenarios.close_all(conns)

    asyncio.run(go())
    before, after = (parse_probe(os.path.join(probe_dir, f"probe-{i}.txt")) for i in (1, 2))
    rss = after["_rss"] - before["_rss"]
    print(f"RSS +{rss} KiB = {rss / count:.1f} KiB per connection")
    print(f"{'type':60s} {'per conn':>9s}")
    diffs = {k: after.get(k, 0) - before.get(k, 0) for k in after if not k.startswith("_")}
    for name, d in sorted(diffs.items(), key=lambda kv: -kv[1])[:30]:
        print(f"{name:60s} {d / count:9.2f}")
    print(f"gc-tracked objects per connection: {(after['_gc'] - before['_gc']) / count:.1f}")
    for i in (1, 2):
        for line in open(os.path.join(probe_dir, f"probe-{i}.txt")):
            if line.startswith(("malloc in use", "VmRSS after", "timer ")):
                print(f"probe {i}: {line.rstrip()}")
    if "_traced" in after:
        traced = after["_traced"] - before["_traced"]
        print(f"Python heap (tracemalloc) +{traced / count:.1f} KiB per connection; the rest of RSS "
              f"({(rss - traced) / count:.1f} KiB) is C: OpenSSL, expat, allocator slack")
        grown = tracemalloc_growth(os.path.join(probe_dir, "probe-1.txt.lines"),
                                   os.path.join(probe_dir, "probe-2.txt.lines"))
        print(f"{'bytes/conn':>10s} {'allocs/conn':>11s}  where (growth between the two reports)")
        for where, size, allocs in grown[:40]:
            print(f"{size / count:10.0f} {allocs / count:11.2f}  {where}")
    return 0


def tracemalloc_growth(before_path: str, after_path: str) -> list[tuple[str, int, int]]:
    """(source line, bytes, allocations) that grew between two reports, largest first."""
    def read(path: str) -> dict[str, tuple[int, int]]:
        out = {}
        for line in open(path):
            size, allocs, where = line.rstrip("\n").split(" ", 2)
            out[where] = (int(size), int(allocs))
        return out
    before, after = read(before_path), read(after_path)
    grown = [(where, size - before.get(where, (0, 0))[0], allocs - before.get(where, (0, 0))[1])
             for where, (size, allocs) in after.items()]
    return sorted((g for g in grown if g[1] > 0), key=lambda g: -g[1])


def parse_probe(path: str) -> dict:
    out: dict = {}
    for line in open(path):
        if line.startswith("tracemalloc total"):
            out["_traced"] = float(line.split()[2])
        elif line.startswith("VmRSS:"):
            out["_rss"] = int(line.split()[1])
        elif line.startswith("gc objects"):
            out["_gc"] = int(line.split()[-1])
        else:
            m = re.match(r"\s*(\d+)\s{2}(\S+)$", line)
            if m:
                out[m.group(2)] = int(m.group(1))
    return out


if __name__ == "__main__":
    sys.exit(main())
