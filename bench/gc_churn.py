#!/usr/bin/env python3
"""Throughput of a churned chatbx against a fresh one, with the cyclic garbage
collector's share of each window.

Why: `throughput_after_logins` in bench/compare fell ~11 % below the fresh figure, and an
independent harness that held 5,000 idle connections before measuring again saw ~30 %.
This starts two chatbx processes (A and B, both pinned to the server CPU, under
`xmppload.memprobe --gc-stats`: every collection timed with gc.callbacks in thread CPU
time, nothing added to chatbx), puts B through 3,000 logins and then holds 5,000 idle
connections on it, and measures throughput on A and B in alternating windows, while the
idle connections are held and after they closed. Per window: msgs/s, the server's CPU
share, msgs per server CPU second (the figure compared: robust when other jobs take CPU
time), collections per generation and the collector's share of the CPU. Alternating two
processes cancels the drift of a shared machine that a fresh-then-churned sequence on one
process measures as a slowdown.

    python3 bench/gc_churn.py                       # chatbx as it is
    python3 bench/gc_churn.py --what-if nofreeze    # without chatbx's gc.freeze()
    python3 bench/gc_churn.py --what-if 700,10,10   # other collector thresholds
    python3 bench/gc_churn.py --what-if freeze+10000,10,10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmppload import scenarios, servers  # noqa: E402
from xmppload.scenarios import Target  # noqa: E402


def start(workdir: str, users: int, cpus: list[int], what_if: str | None) -> servers.ServerHandle:
    port, tls_port = servers.free_port(), servers.free_port()
    cfg = servers.write_chatbx_config(workdir, "localhost", port, tls_port)
    if not os.path.exists(os.path.join(workdir, "users.txt")):
        servers.provision_chatbx(cfg, "localhost", [f"bench{n}" for n in range(users)], "secret", workdir)
    log_path = os.path.join(workdir, "chatbx.log")
    probe = os.path.join(workdir, "probe")
    opts = ["--gc-stats"] + ([f"--gc-what-if={what_if}"] if what_if and what_if != "none" else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "xmppload.memprobe", probe, *opts, "--",
         "-n", "--pidfile=", "--logfile", log_path, "chatbx", "--config", cfg],
        cwd=os.path.dirname(os.path.abspath(__file__)), stdout=open(log_path + ".out", "ab"),
        stderr=subprocess.STDOUT, preexec_fn=(lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None)
    handle = servers.ServerHandle("chatbx", proc, port, tls_port, "localhost", workdir, log_path, {"config": cfg})
    servers.wait_port(port, proc, 60)
    return handle


class Probe:
    """SIGUSR2 -> one line of gc.jsonl; the difference between two lines is a window."""

    def __init__(self, handle: servers.ServerHandle) -> None:
        self.handle = handle
        self.path = os.path.join(handle.workdir, "probe", "gc.jsonl")

    async def sample(self) -> dict:
        before = self._lines()
        self.handle.proc.send_signal(signal.SIGUSR2)
        for _ in range(200):  # the report needs a reactor turn (and a gc.get_objects())
            await asyncio.sleep(0.05)
            lines = self._lines()
            if len(lines) > len(before):
                return json.loads(lines[-1])
        raise RuntimeError("no gc report from the server")

    def _lines(self) -> list[str]:
        try:
            with open(self.path) as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []


async def settle(target: Target, idle_pct: float = 15.0, limit: float = 20.0) -> float:
    """Wait until the server is idle (what it was doing is not in the next window).

    Returns the CPU seconds it spent meanwhile.
    """
    assert target.server_pid is not None
    start = last = servers.cpu_seconds(target.server_pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = servers.cpu_seconds(target.server_pid)
        if now - last < idle_pct / 100 * 0.2:
            break
        last = now
    return servers.cpu_seconds(target.server_pid) - start


def window(name: str, res: dict, a: dict, b: dict) -> dict:
    cpu = max(1e-9, b["cpu"] - a["cpu"])
    gc_s = [b["seconds"][i] - a["seconds"][i] for i in range(3)]
    return {
        "phase": name, "msgs_per_s": res["value"], "server_cpu_pct": res.get("server_cpu_pct"),
        "msgs_per_cpu_s": round(res["value"] / max(1e-9, res.get("server_cpu_pct", 100) / 100)),
        "lost": res.get("lost"), "tracked_objects": b["tracked"], "frozen": b["frozen"],
        "collections": [b["count"][i] - a["count"][i] for i in range(3)],
        "gc_ms": [round(1000 * s) for s in gc_s],
        "gc_share_of_cpu_pct": round(100 * sum(gc_s) / cpu, 1),
        "full_collection_ms": round(1000 * gc_s[2] / max(1, b["count"][2] - a["count"][2]), 1),
    }


async def measure(target: Target, probe: Probe, name: str, duration: float) -> dict:
    a = await probe.sample()
    res = (await scenarios.throughput(target, duration=duration, name=name))[0]
    b = await probe.sample()
    return window(name, res, a, b)


async def run(fresh: tuple[Target, Probe], churned: tuple[Target, Probe], idle: int, logins: int,
              duration: float, rounds: int, churn_both: bool = False) -> list[dict]:
    """Churn server B (and A too with `churn_both`) and measure both alternately.

    Stages, each `rounds` times: `logins` logins, then a window on B and
    one on A (bench/compare's throughput_after_logins); with `idle`
    connections held, a window on each; right after the idle connections
    closed, a window on B and one on A. Alternating two processes that
    differ only in their history (or only in a collector setting, with
    `churn_both`) cancels the drift of a shared machine (other jobs come
    and go); a sequence on one process (fresh first, churned later) would
    not. Each window starts once the server is idle again.
    """
    out: list[dict] = []
    churn = [churned[0], fresh[0]] if churn_both else [churned[0]]
    a_name = "A churned" if churn_both else "A fresh"

    async def pair(stage: str, n: int) -> None:
        for side, (target, probe) in ((f"B {stage}", churned), (a_name, fresh)):
            w = await measure(target, probe, side, duration)
            w["round"], w["stage"] = n, stage
            out.append(w)
            print(json.dumps(w), flush=True)

    for n in range(rounds):
        for target in churn:
            await scenarios.login_rate(target, users=200, count=logins, duration=60.0)
            await settle(target)
        await pair(f"right after {logins} logins", n)
    held: list = []
    for target in churn:
        conns, errors = await scenarios.login_many(target, range(200, 200 + idle), 100, 300.0)
        if errors:
            print(f"# {len(errors)} idle logins failed: {errors[:3]}", file=sys.stderr)
        held.append(conns)
    for n in range(rounds):
        await pair(f"{len(held[0])} idle connections held", n)
    for target, conns in zip(churn, held):
        scenarios.close_all(conns)
        cpu = await settle(target)
        print(f"# {target.port}: {cpu:.2f} CPU seconds for {len(conns)} disconnects", file=sys.stderr)
    await pair("right after the idle connections closed", 0)
    return out


async def compare_configs(a: tuple[Target, Probe], b: tuple[Target, Probe], duration: float,
                          rounds: int) -> list[dict]:
    """A and B alternately, no churn: what a collector setting alone changes."""
    out: list[dict] = []
    for n in range(rounds):
        for side, (target, probe) in (("A", a), ("B", b)):
            w = await measure(target, probe, side, duration)
            w["round"], w["stage"] = n, "same history"
            out.append(w)
            print(json.dumps(w), flush=True)
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=5000, help="idle connections held on B (default 5000)")
    ap.add_argument("--logins", type=int, default=3000, help="logins of B's churn phase (default 3000)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per throughput window")
    ap.add_argument("--rounds", type=int, default=3, help="A/B window pairs per stage (default 3)")
    ap.add_argument("--what-if", help="memprobe --gc-what-if for both: nofreeze | freeze | A,B,C, joined with +")
    ap.add_argument("--what-if-b", help="a different --gc-what-if for B only ('none': chatbx as it is)")
    ap.add_argument("--churn-both", action="store_true",
                    help="A goes through the same churn as B (compare collector settings after churn)")
    ap.add_argument("--configs-only", action="store_true",
                    help="no churn: A and B differ only in their what-if (compare collector settings)")
    ap.add_argument("--json", help="also write every window to this file")
    args = ap.parse_args()
    servers.raise_nofile()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, gen_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else ([], [])
    root = tempfile.mkdtemp(prefix="chatbx-gc-")
    handles: list[servers.ServerHandle] = []
    try:
        for name, users, what_if in (("a", 200 + (args.idle if args.churn_both else 0), args.what_if),
                                     ("b", 200 + args.idle, args.what_if_b or args.what_if)):
            os.makedirs(os.path.join(root, name))
            handles.append(start(os.path.join(root, name), users, server_cpus, what_if))
        if gen_cpus:
            os.sched_setaffinity(0, set(gen_cpus))
        sides = tuple((Target("chatbx", "127.0.0.1", h.port, "localhost", server_pid=h.pid), Probe(h))
                      for h in handles)
        t0 = time.monotonic()
        if args.configs_only:
            windows = asyncio.run(compare_configs(sides[0], sides[1], args.duration, args.rounds))
        else:
            windows = asyncio.run(run(sides[0], sides[1], args.idle, args.logins, args.duration, args.rounds,
                                      args.churn_both))
        print(f"\n{'stage':44s} {'side':7s} {'msgs/cpu-s median [min-max]':>30s} {'B/A':>7s} "
              f"{'gc %cpu':>8s} {'full/window':>11s} {'full ms':>8s} {'tracked':>8s}")
        for stage in dict.fromkeys(w["stage"] for w in windows):
            meds = {}
            for side in ("A", "B"):
                ws = [w for w in windows if w["stage"] == stage and w["phase"].startswith(side)]
                vals = [w["msgs_per_cpu_s"] for w in ws]
                meds[side] = _median(vals)
                ratio = f"{100 * meds['B'] / meds['A'] - 100:+6.1f}%" if side == "B" else ""
                fulls = [w["collections"][2] for w in ws]
                full_ms = [w["full_collection_ms"] for w in ws if w["collections"][2]]
                print(f"{stage:44s} {side:7s} {meds[side]:10.0f} [{min(vals):6d}-{max(vals):6d}]"
                      f"        {ratio:>7s} {_median([w['gc_share_of_cpu_pct'] for w in ws]):8.1f} "
                      f"{sum(fulls) / len(fulls):11.1f} {_median(full_ms):8.1f} {ws[-1]['tracked_objects']:8d}")
        print(f"({time.monotonic() - t0:.0f} s; what-if: A {args.what_if or 'none'}, "
              f"B {args.what_if_b or args.what_if or 'none'})")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"what_if": args.what_if, "windows": windows}, fh, indent=1)
        return 0
    finally:
        for handle in handles:
            handle.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
