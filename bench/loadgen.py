#!/usr/bin/env python3
"""Load generator CLI: run chatbx's benchmark scenarios against any XMPP server (RFC 6120/6121).

Example (users bench0..bench9999 and bench10000..bench10500 must exist, password 'secret'):

    python3 bench/loadgen.py --host 127.0.0.1 --port 5222 --domain localhost \\
        --server-pid $(pidof prosody) --scenarios login_rate throughput latency

Prints one JSON line per figure, then a table. Loopback only by design.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xmppload import client, report, run, scenarios  # noqa: E402
from xmppload.servers import raise_nofile  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5222)
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--user-pattern", default="bench{n}", help="localpart with {n} (default bench{n})")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--no-starttls", action="store_true", help="plain TCP (only if the server allows it)")
    ap.add_argument("--direct-tls", action="store_true", help="XEP-0368 direct TLS port")
    ap.add_argument("--server-pid", type=int, help="server PID, for idle_memory (reads /proc/PID/status)")
    ap.add_argument("--cpu-pids", type=int, nargs="+", default=[],
                    help="throughput: more PIDs whose CPU counts as the server's in the measured "
                    "window (workers, Redis)")
    ap.add_argument("--server-name", default="server")
    ap.add_argument("--scenarios", nargs="+", default=list(scenarios.SCENARIOS),
                    choices=scenarios.SCENARIOS + scenarios.EXTRA_SCENARIOS)
    ap.add_argument("--quick", action="store_true", help="tiny smoke sizes")
    ap.add_argument("--rate", type=float, help="msgs/s for latency (default 30%% of measured throughput)")
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--window", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--idle-counts", type=int, nargs="+")
    ap.add_argument("--fanout-contacts", type=int)
    ap.add_argument("--fanout-base", type=int)
    ap.add_argument("--login-count", type=int)
    ap.add_argument("--cpu", type=int, nargs="+", help="pin the load generator to these CPUs")
    ap.add_argument("--sm", action="store_true", help="enable XEP-0198 stream management on every client")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    client.SM_ENABLED = args.sm
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print("loadgen only targets loopback", file=sys.stderr)
        return 2
    if args.cpu:
        os.sched_setaffinity(0, set(args.cpu))
    raise_nofile()
    params = run.with_overrides(
        run.QUICK if args.quick else run.FULL, rate=args.rate, pairs=args.pairs, window=args.window,
        duration=args.duration, idle_counts=tuple(args.idle_counts) if args.idle_counts else None,
        fanout_contacts=args.fanout_contacts, fanout_base=args.fanout_base, login_count=args.login_count)
    target = scenarios.Target(args.server_name, args.host, args.port, args.domain, args.user_pattern,
                              args.password, starttls=not args.no_starttls, direct_tls=args.direct_tls,
                              server_pid=args.server_pid, cpu_pids=tuple(args.cpu_pids))
    results = asyncio.run(run.run_all(target, args.scenarios, params))
    print()
    print(report.table(results))
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
