#!/usr/bin/env python3
"""``[cluster] workers = 2`` against ``workers = 1``, interleaved (A, B, A, B).

Both runs use the same PostgreSQL database and a private redis-server (on a
free loopback port, stopped by PID), with the same ``[cluster]`` section:
the only difference is the number of worker processes behind the shared
sockets. Each round starts ``twistd -n chatbx``, waits until its workers
have joined Redis, runs ``bench/loadgen.py`` (default: throughput and
login_rate) against it, and stops the server by PID (SIGTERM to the
parent, which stops its workers). Server CPU is the sum over the parent
and its workers from /proc: over the whole round ("us/msg", logins
included, Redis added) and over the throughput scenario's measured window
alone ("win us": workers and Redis, passed to the load generator as
``--cpu-pids``). "cross" is the share of the throughput pairs whose two
users were on different workers (their messages go through Redis); the
kernel decides it, so it varies from round to round. The last lines give
workers = 2 against the workers = 1 round before it.

Nothing is pinned unless ``--server-cpus``/``--loadgen-cpus`` are given:
on a 2-core machine the load generator and the workers share both cores.

    python3 bench/workers.py --rounds 2
    python3 bench/workers.py --database postgresql://postgres@127.0.0.1/bench_workers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from xmppload import servers  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    port = servers.free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while redis_cli(port, "PING") != "PONG":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return proc, port


def redis_cli(port: int, *args: str) -> str:
    try:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def create_database() -> tuple[str, Any]:
    import sqlalchemy as sa

    name = f"chatbx_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL.replace("postgresql://", "postgresql+psycopg2://"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name, (admin, name)


def drop_database(handle: Any) -> None:
    import sqlalchemy as sa

    admin, name = handle
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM a chatbx we started (its workers stop with it), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def server_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += servers.cpu_seconds(pid)
        except OSError:
            pass
    return total


def offline_count(url: str) -> int:
    """Messages waiting in offline storage (the bench users are all online:
    any is a message that went there instead of to its recipient)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM offline_messages")).scalar() or 0)
    finally:
        engine.dispose()


def cross_pairs(where: dict[str, str], pairs: int) -> Optional[float]:
    """The share of the throughput pairs (bench2i, bench2i+1) whose two
    users were on different workers: their messages cross through Redis.
    The kernel decides it (whichever worker is in accept), so it varies
    from round to round, and with it the cost per message."""
    seen = [(where.get(f"bench{2 * i}@localhost"), where.get(f"bench{2 * i + 1}@localhost"))
            for i in range(pairs)]
    seen = [(a, b) for a, b in seen if a and b]
    return round(sum(a != b for a, b in seen) / len(seen), 2) if seen else None


def one_round(args: argparse.Namespace, workdir: str, cfg_base: str, redis_port: int, workers: int,
              index: int, redis_pid: int) -> list[dict[str, Any]]:
    cfg = os.path.join(workdir, f"chatbx-{index}.toml")
    node = f"b{index}"
    with open(cfg_base) as fh:
        text = fh.read()
    with open(cfg, "w") as fh:
        fh.write(text + f'\n[cluster]\nredis = "redis://127.0.0.1:{redis_port}/0"\nnode = "{node}"\n'
                 f"workers = {workers}\n")
    twistd, _ = servers.chatbx_commands()
    log_path = os.path.join(workdir, f"chatbx-{index}.log")
    out = open(log_path, "ab")
    pin = servers._preexec_pin(args.server_cpus)
    proc = subprocess.Popen(twistd + ["-n", "--pidfile=", "chatbx", "--config", cfg], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, preexec_fn=pin)
    try:
        deadline = time.monotonic() + 60
        while int(redis_cli(redis_port, "ZCARD", "chatbx:nodes") or 0) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chatbx workers={workers} did not start; see {log_path}")
            time.sleep(0.1)
        pids = [proc.pid] + children(proc.pid)
        cpu0, t0 = server_cpu(pids), time.monotonic()
        redis0 = server_cpu([redis_pid])
        cmd = [sys.executable, os.path.join(HERE, "loadgen.py"), "--port", str(args.port_of[cfg_base]),
               "--domain", "localhost", "--server-name", f"workers={workers}",
               "--scenarios", *args.scenarios]
        if args.loadgen_cpus:
            cmd += ["--cpu", *map(str, args.loadgen_cpus)]
        if args.quick:
            cmd.append("--quick")
        if args.pairs:
            cmd += ["--pairs", str(args.pairs)]
        if args.window:
            cmd += ["--window", str(args.window)]
        if args.duration:
            cmd += ["--duration", str(args.duration)]
        # CPU over the measured window: every server process and Redis
        cmd += ["--cpu-pids", *map(str, pids + [redis_pid])]
        peak: dict[str, int] = {}
        #: bare JID -> the worker its session was last seen on
        where: dict[str, str] = {}
        done = threading.Event()

        def sample() -> None:
            # the most sessions each worker held at once: how the kernel
            # spread the connections over the workers accepting on one socket
            while not done.wait(0.5):
                for name in redis_cli(redis_port, "ZRANGE", "chatbx:nodes", "0", "-1").split():
                    fulls = redis_cli(redis_port, "HKEYS", f"chatbx:sessions:{name}").split()
                    peak[name] = max(peak.get(name, 0), len(fulls))
                    for full in fulls:
                        where[full.split("/", 1)[0]] = name

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        finally:
            done.set()
            sampler.join(10)
        elapsed = time.monotonic() - t0
        cpu = server_cpu(pids) - cpu0
        offline = offline_count(args.database_url)
        redis_cpu = server_cpu([redis_pid]) - redis0
        results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        for r in results:
            r["workers"] = workers
            r["round"] = index
            r["server_cpu_pct_whole_run"] = round(100 * cpu / elapsed, 1)
            r["offline_after"] = offline
            r["redis_cpu_pct_whole_run"] = round(100 * redis_cpu / elapsed, 1)
            r["peak_sessions_per_worker"] = sorted(peak.values(), reverse=True)
            r["cross_pairs"] = cross_pairs(where, r.get("pairs") or 0)
            if r.get("scenario") == "throughput" and len(args.scenarios) == 1 and r.get("received"):
                # CPU of chatbx and Redis over the whole run (logins included) per message
                r["cpu_us_per_msg"] = round(1e6 * (cpu + redis_cpu) / r["received"], 1)
            if r.get("scenario") == "throughput" and r.get("value") and "server_cpu_pct" in r:
                # the same over the measured window alone (no logins): the figure
                # to compare, workers = 2 against workers = 1
                r["window_cpu_us_per_msg"] = round(1e4 * r["server_cpu_pct"] / r["value"], 1)
            print(json.dumps(r), flush=True)
        if res.returncode != 0:
            print(res.stdout[-2000:], res.stderr[-2000:], file=sys.stderr)
        return results
    finally:
        stop_server(proc)
        out.close()


def print_ratios(results: list[dict[str, Any]]) -> None:
    """workers = 2 against the workers = 1 round before it: msgs/s, and CPU
    per message over the measured window (workers and Redis). 1.7x the
    msgs/s on two cores of its own needs at most 2 / 1.7 = 1.18x the CPU
    per message."""
    one: dict[str, dict[str, Any]] = {}
    for r in results:
        name = r.get("scenario", "?")
        if r["workers"] == 1:
            one[name] = r
        elif name in one and one[name].get("value") and r.get("value"):
            base = one[name]
            line = f"{name}: workers = 2 / workers = 1: {r['value'] / base['value']:.2f}x {base.get('unit', '')}"
            if base.get("window_cpu_us_per_msg") and r.get("window_cpu_us_per_msg"):
                line += (f", {r['window_cpu_us_per_msg'] / base['window_cpu_us_per_msg']:.2f}x CPU per message"
                         f" ({r.get('cross_pairs')} of the pairs across workers)")
            print(line)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="A,B pairs (default 2)")
    ap.add_argument("--scenarios", nargs="+", default=["throughput", "login_rate"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs", type=int, help="throughput: chatting pairs (at most 150; "
                    "default the loadgen's 50)")
    ap.add_argument("--window", type=int, help="throughput: messages in flight per direction "
                    "(default the loadgen's 10); more pairs and a larger window load the "
                    "workers until they, not the round trip, bound the rate")
    ap.add_argument("--duration", type=float, help="throughput: measured seconds (default the loadgen's 5)")
    ap.add_argument("--server-cpus", type=int, nargs="+")
    ap.add_argument("--loadgen-cpus", type=int, nargs="+")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    servers.raise_nofile()
    workdir = tempfile.mkdtemp(prefix="chatbx-workers-bench-")
    redis, redis_port = start_redis(workdir)
    db = None
    try:
        # In here: a failure to make the database must still stop redis-server.
        url, db = create_database()
        port, tls_port = servers.free_port(), servers.free_port()
        cfg = servers.write_chatbx_config(workdir, "localhost", port, tls_port, database_url=url)
        args.port_of = {cfg: port}
        args.database_url = url
        servers.upgrade_chatbx_database(cfg)
        users = [f"bench{n}" for n in range(300)]
        servers.provision_chatbx(cfg, "localhost", users, "secret", workdir)
        results: list[dict[str, Any]] = []
        for i in range(args.rounds):
            for j, workers in enumerate((1, 2)):
                results += one_round(args, workdir, cfg, redis_port, workers, 2 * i + j, redis.pid)
        print()
        print(f"{'scenario':28} {'workers':>7} {'value':>10} {'unit':10} {'p50_ms':>8} {'p99_ms':>8} "
              f"{'lost':>5} {'srv cpu%':>8} {'redis%':>6} {'us/msg':>7} {'win us':>7} {'cross':>5}  "
              "peak sessions per worker")
        for r in results:
            print(f"{r.get('scenario', '?'):28} {r['workers']:>7} {r.get('value', 0):>10} "
                  f"{r.get('unit', ''):10} {r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8} "
                  f"{r.get('lost', ''):>5} {r['server_cpu_pct_whole_run']:>8} {r['redis_cpu_pct_whole_run']:>6} "
                  f"{r.get('cpu_us_per_msg', ''):>7} {r.get('window_cpu_us_per_msg', ''):>7} "
                  f"{r.get('cross_pairs', ''):>5}  {r['peak_sessions_per_worker']}")
        print_ratios(results)
    finally:
        redis.terminate()
        redis.wait(10)
        if db is not None:
            drop_database(db)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
