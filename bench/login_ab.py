#!/usr/bin/env python3
"""Login cost before/after a change: two chatbx processes side by side.

One runs another checkout of chatbx (``--base``, e.g. ``git archive main |
tar -x -C /tmp/base``: imported first through PYTHONPATH), the other this
checkout; both pinned to the first CPU, the load generator on the others.
login_rate (SCRAM) and login_rate_fast (SASL2 + Bind2 + FAST token) run
against each in turn, the order swapped every round, so both see the same
machine (a shared VM's load changes by the minute). The figure to compare
is the server's CPU per login (utime + stime from /proc over the measured
window, divided by the logins): logins/s depends on how much of a core the
server got.

    python3 bench/login_ab.py --base /tmp/base [--rounds 3] [--duration 8] [--users 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmppload import scenarios, servers  # noqa: E402
from xmppload.scenarios import Target  # noqa: E402


def start(root: str, name: str, pythonpath: str | None, users: int, cpus: list[int]) -> servers.ServerHandle:
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    port, tls_port = servers.free_port(), servers.free_port()
    cfg = servers.write_chatbx_config(workdir, "localhost", port, tls_port)
    servers.provision_chatbx(cfg, "localhost", [f"bench{n}" for n in range(users)], "secret", workdir)
    saved = os.environ.pop("PYTHONPATH", None)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        return servers.start_chatbx(workdir, "localhost", cpus=cpus, cfg=cfg, port=port, tls_port=tls_port)
    finally:
        os.environ.pop("PYTHONPATH", None)
        if saved is not None:
            os.environ["PYTHONPATH"] = saved


async def alternate(targets: dict[str, Target], rounds: int, duration: float) -> list[dict]:
    out: list[dict] = []
    names = list(targets)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for fast in (False, True):
            for name in order:
                res = (await scenarios.login_rate(targets[name], users=200, count=3000,
                                                  concurrency=50, duration=duration, fast=fast))[0]
                res.update(round=r, server=name)
                print(json.dumps(res), flush=True)
                out.append(res)
                await asyncio.sleep(1.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a directory holding the base chatbx_server package")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--users", type=int, default=2000, help="accounts provisioned (200 of them log in)")
    args = ap.parse_args()
    servers.raise_nofile()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, gen_cpus = (cpus[:1], cpus[1:]) if len(cpus) > 1 else ([], [])
    root = tempfile.mkdtemp(prefix="chatbx-login-ab-")
    handles: dict[str, servers.ServerHandle] = {}
    try:
        handles["base"] = start(root, "base", os.path.abspath(args.base), args.users, server_cpus)
        handles["new"] = start(root, "new", None, args.users, server_cpus)
        if gen_cpus:
            os.sched_setaffinity(0, set(gen_cpus))
        targets = {n: Target(n, "127.0.0.1", h.port, "localhost", server_pid=h.pid) for n, h in handles.items()}
        results = asyncio.run(alternate(targets, args.rounds, args.duration))
    finally:
        for handle in handles.values():
            handle.stop()
        shutil.rmtree(root, ignore_errors=True)
    print()
    for scenario in ("login_rate", "login_rate_fast"):
        for name in handles:
            rs = [r for r in results if r["scenario"] == scenario and r["server"] == name]
            per = [r.get("server_cpu_us_per_login") or 0 for r in rs]
            rates = " ".join(str(round(r["value"])) for r in rs)
            failures = " ".join(str(r["failures"]) for r in rs)
            print(f"{scenario:16s} {name:5s} server CPU us/login {' '.join(map(str, per))} "
                  f"(median {statistics.median(per) if per else 0:.0f}) | logins/s {rates} "
                  f"| failures {failures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
