#!/usr/bin/env python3
"""Cross-node delivery: two chatbx nodes with every chatting pair split
across them, against one node, interleaved (one, two, one, two ...).

Issue 14's cluster scenario. "two": two ``twistd -n chatbx`` processes
(nodes ``c0`` and ``c1``, each its own port) sharing one PostgreSQL
database and a private redis-server (free loopback port, stopped by PID);
the ``throughput`` scenario of bench/xmppload logs user 2i in on node c0
and user 2i+1 on c1, so every message crosses Redis. "one": one chatbx
process on the same database without ``[cluster]`` (a single node needs
no Redis), every user on it. Same users, same sizes, same cores.

Reported per round: delivered msgs/s (the scenario's measured window),
lost messages, offline-stored messages afterwards (every user is online,
so any is a misdelivery), and server CPU per delivered message: utime +
stime of every chatbx process and of redis-server (two nodes only) from
/proc, over the whole round (logins included), divided by the messages
delivered in it; and the same over the measured window alone ("win us":
no logins in it). The load generator runs in this process.

Nothing is pinned unless ``--server-cpus``/``--loadgen-cpus`` are given.

    python3 bench/cluster.py --rounds 3
    python3 bench/cluster.py --quick --rounds 1      # smoke sizes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workers import (create_database, drop_database, offline_count, redis_cli,  # noqa: E402
                     server_cpu, start_redis, stop_server)
from xmppload import client, run, scenarios, servers  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "secret"


@dataclass
class SplitTarget(scenarios.Target):
    """Logs user n in on ``ports[n % len(ports)]``: the two users of a
    throughput pair (2i, 2i+1) end up on different nodes."""

    ports: tuple[int, ...] = ()
    #: log both users of a pair in on the same node instead (no message
    #: crosses Redis: what two processes cost without the crossing)
    together: bool = False

    async def login(self, n: int, **kw: Any) -> Any:
        slot = n // 2 if self.together else n
        port = self.ports[slot % len(self.ports)] if self.ports else self.port
        return await client.login(self.host, port, self.domain, self.user(n), self.password,
                                  starttls=self.starttls, direct_tls=self.direct_tls, **kw)


def node_config(workdir: str, name: str, url: str, redis_port: Optional[int]) -> tuple[str, int]:
    """A node's own directory and config (its ports, the shared database)."""
    home = os.path.join(workdir, name)
    port, tls_port = servers.free_port(), servers.free_port()
    cfg = servers.write_chatbx_config(home, DOMAIN, port, tls_port, database_url=url)
    if redis_port is not None:
        with open(cfg, "a") as fh:
            fh.write(f'\n[cluster]\nredis = "redis://127.0.0.1:{redis_port}/0"\nnode = "{name}"\n')
    return cfg, port


def start_node(cfg: str, args: argparse.Namespace) -> subprocess.Popen:
    twistd, _ = servers.chatbx_commands()
    home = os.path.dirname(cfg)
    out = open(os.path.join(home, "chatbx.log"), "ab")
    try:
        return subprocess.Popen(twistd + ["-n", "--pidfile=", "chatbx", "--config", cfg], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
                                preexec_fn=servers._preexec_pin(args.server_cpus))
    finally:
        out.close()


def clear_offline(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM offline_messages"))
    finally:
        engine.dispose()


def one_round(args: argparse.Namespace, mode: str, index: int) -> list[dict[str, Any]]:
    """Start the node(s) of ``mode`` ("one" or "two"), run throughput
    ``--repeat`` times against them (the users log in anew each time), stop
    them."""
    cfgs = args.two if mode == "two" else args.one
    clear_offline(args.url)
    procs = [start_node(cfg, args) for cfg, _ in cfgs]
    out: list[dict[str, Any]] = []
    try:
        for proc, (_, port) in zip(procs, cfgs):
            servers.wait_port(port, proc, 60)
        if mode == "two":
            deadline = time.monotonic() + 60
            while int(redis_cli(args.redis_port, "ZCARD", "chatbx:nodes") or 0) < 2:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"the two nodes did not join Redis; see {args.workdir}")
                time.sleep(0.1)
        pids = [p.pid for p in procs] + ([args.redis_pid] if mode == "two" else [])
        ports = tuple(port for _, port in cfgs)
        target = SplitTarget(f"{mode} node{'s' if mode == 'two' else ''}", "127.0.0.1", ports[0],
                             DOMAIN, "bench{n}", PASSWORD, ports=ports, cpu_pids=tuple(pids),
                             together=args.together)
        p = args.params
        offline = 0
        for repeat in range(args.repeat):
            cpu0, t0 = server_cpu(pids), time.monotonic()
            redis0 = server_cpu([args.redis_pid])
            results = asyncio.run(scenarios.throughput(target, pairs=p.pairs, window=p.window,
                                                       duration=p.duration, warmup=p.warmup))
            elapsed = time.monotonic() - t0
            cpu = server_cpu(pids) - cpu0
            r = results[0]
            stored = offline_count(args.url)
            r.update(mode=mode, round=index, repeat=repeat, nodes=len(procs), offline_after=stored - offline,
                     server_cpu_pct_whole_run=round(100 * cpu / elapsed, 1),
                     cpu_us_per_msg=round(1e6 * cpu / r["received"], 1) if r.get("received") else None)
            offline = stored
            if r.get("value") and "server_cpu_pct" in r:
                # over the measured window alone (no logins)
                r["window_cpu_us_per_msg"] = round(1e4 * r["server_cpu_pct"] / r["value"], 1)
            if mode == "two":
                r["redis_cpu_s"] = round(server_cpu([args.redis_pid]) - redis0, 3)
            print(json.dumps(r), flush=True)
            out.append(r)
        return out
    finally:
        for proc in procs:
            stop_server(proc)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="(one, two) pairs (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke sizes")
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--server-cpus", type=int, nargs="+")
    ap.add_argument("--loadgen-cpus", type=int, nargs="+")
    ap.add_argument("--repeat", type=int, default=1,
                    help="throughput runs per round against the same node(s), each with new logins")
    ap.add_argument("--modes", nargs="+", choices=("one", "two"), default=["one", "two"],
                    help="what each round runs (default: one node, then two)")
    ap.add_argument("--together", action="store_true",
                    help="two nodes: both users of a pair on the same node (nothing crosses Redis)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    if args.loadgen_cpus:
        os.sched_setaffinity(0, set(args.loadgen_cpus))
    args.params = run.with_overrides(run.QUICK if args.quick else run.FULL, pairs=args.pairs,
                                     duration=args.duration)
    servers.raise_nofile()
    args.workdir = workdir = tempfile.mkdtemp(prefix="chatbx-cluster-bench-")
    redis, args.redis_port = start_redis(workdir)
    args.redis_pid = redis.pid
    results: list[dict[str, Any]] = []
    db = None
    try:
        # In here: a failure to make the database must still stop redis-server.
        args.url, db = create_database()
        args.one = [node_config(workdir, "single", args.url, None)]
        args.two = [node_config(workdir, f"c{i}", args.url, args.redis_port) for i in range(2)]
        servers.upgrade_chatbx_database(args.one[0][0])
        users = [f"bench{n}" for n in range(2 * args.params.pairs)]
        servers.provision_chatbx(args.one[0][0], DOMAIN, users, PASSWORD, workdir)
        for i in range(args.rounds):
            for mode in args.modes:
                results += one_round(args, mode, 2 * i + (mode == "two"))
    finally:
        redis.terminate()
        redis.wait(10)
        if db is not None:
            drop_database(db)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{'round':>5} {'nodes':>5} {'msgs/s':>9} {'lost':>5} {'errors':>6} {'offline':>7} "
          f"{'srv cpu%':>8} {'us/msg':>7} {'win us':>7} {'redis s':>7}")
    for r in results:
        print(f"{r['round']:>5} {r['nodes']:>5} {r.get('value', 0):>9} {r.get('lost', ''):>5} "
              f"{r.get('error_replies', ''):>6} {r['offline_after']:>7} {r['server_cpu_pct_whole_run']:>8} "
              f"{r.get('cpu_us_per_msg') or '':>7} {r.get('window_cpu_us_per_msg', ''):>7} "
              f"{r.get('redis_cpu_s', ''):>7}")
    one = [r["value"] for r in results if r["mode"] == "one" and r["repeat"] == 0]
    two = [r["value"] for r in results if r["mode"] == "two" and r["repeat"] == 0]
    if one and two and all(one):
        ratios = [round(b / a, 2) for a, b in zip(one, two)]
        print(f"two nodes / preceding one node (msgs/s): {ratios}")
    return 1 if any(r.get("lost") or r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
