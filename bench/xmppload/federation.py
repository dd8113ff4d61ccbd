"""Federation benchmark: pairs of users across two servers (RFC 6120 s2s).

Four servers on loopback, every one with a static route to the others (no
DNS): chatbx on ``ca.localhost`` and ``cb.localhost``, Prosody on
``pa.localhost`` and ``pb.localhost``. Systems, one after the other on the
same cores: chatbx<->chatbx, prosody<->prosody, chatbx<->prosody. Each user
``benchN`` on the first server of a system chats with ``benchN`` on the
second, both directions, as ``throughput`` does locally: a closed loop with
``window`` messages in flight per direction (msgs/s, p50/p99 end-to-end
latency), then an open loop at one fixed rate for every system (p50/p99).

CPU: each server's CPU time (/proc) over the measured window, divided by
the messages delivered (in both directions: each server sends half of them
over s2s and receives the other half), and both together; beside it, the
cost of a local message (``throughput`` on one server of the system, same
run, same pinning). A local message is parsed once and serialized once; a
message across servers is parsed and serialized on each, so per server the
two should cost about the same and in all about twice. The streams authenticate with dialback over TLS (self-signed
certificates); chatbx's are bidirectional (XEP-0288) between chatbx
servers, Prosody's are not (mod_s2s_bidi is off by default).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from . import client, report, run, scenarios, servers
from .scenarios import CpuMeter, Flow, MessageRun, Target, login_many, close_all, percentile, result

DOMAINS = {"ca": "ca.localhost", "cb": "cb.localhost", "pa": "pa.localhost", "pb": "pb.localhost"}
KIND = {"ca": "chatbx", "cb": "chatbx", "pa": "prosody", "pb": "prosody"}
#: (system name, first server, second server)
SYSTEMS = (("chatbx-chatbx", "ca", "cb"), ("prosody-prosody", "pa", "pb"), ("chatbx-prosody", "ca", "pa"))


@dataclass
class Node:
    key: str
    handle: servers.ServerHandle
    target: Target


def start_nodes(root: str, params: run.Params, cpus: list[int], password: str,
                keys: tuple[str, ...] = ("ca", "cb", "pa", "pb")) -> dict[str, Node]:
    """Start the servers with users bench0..2*pairs-1 each, routes to one another."""
    s2s_ports = {key: servers.free_port() for key in keys}
    routes = {DOMAINS[k]: s2s_ports[k] for k in keys}
    users = [f"bench{n}" for n in range(2 * params.pairs)]
    nodes: dict[str, Node] = {}
    try:
        for key in keys:
            domain, workdir = DOMAINS[key], os.path.join(root, key)
            os.makedirs(workdir, exist_ok=True)
            others = {d: p for d, p in routes.items() if d != domain}
            t0 = time.monotonic()
            if KIND[key] == "prosody":
                servers.provision_prosody(os.path.join(workdir, "data"), domain, users, password)
                handle = servers.start_prosody(workdir, domain, cpus=cpus, s2s_port=s2s_ports[key], routes=others)
            else:
                port, tls_port = servers.free_port(), servers.free_port()
                cfg = servers.write_chatbx_config(workdir, domain, port, tls_port, s2s_port=s2s_ports[key],
                                                  routes=others)
                servers.provision_chatbx(cfg, domain, users, password, workdir)
                handle = servers.start_chatbx(workdir, domain, cpus=cpus, cfg=cfg, port=port, tls_port=tls_port)
                servers.wait_port(s2s_ports[key], handle.proc, 30)
            nodes[key] = Node(key, handle, Target(key, "127.0.0.1", handle.port, domain, "bench{n}", password,
                                                  server_pid=handle.pid))
            print(f"# {key} ({KIND[key]} {domain}): pid {handle.pid}, c2s {handle.port}, s2s {s2s_ports[key]}, "
                  f"ready in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        node.handle.stop()


class PairCpu:
    """CPU of the two servers of a system over the measured window."""

    def __init__(self, a: Target, b: Target) -> None:
        self.a, self.b = CpuMeter(a.server_pid), CpuMeter(b.server_pid)

    def stop(self) -> dict:
        a, b = self.a.stop(), self.b.stop()
        return {"loadgen_cpu_pct": a["loadgen_cpu_pct"], "server_a_cpu_pct": a.get("server_cpu_pct", 0.0),
                "server_b_cpu_pct": b.get("server_cpu_pct", 0.0)}


async def _cross_pairs(a: Target, b: Target, pairs: int, run_: MessageRun,
                       concurrency: int = 50) -> tuple[list[client.XmppConnection], list[Flow], list[str]]:
    """User N on `a` and user N on `b` log in; a flow each way between them."""
    conns_a, err_a = await login_many(a, range(pairs), concurrency, 120.0)
    conns_b, err_b = await login_many(b, range(pairs), concurrency, 120.0)
    by_a = {c.jid.split("@")[0]: c for c in conns_a}
    by_b = {c.jid.split("@")[0]: c for c in conns_b}
    flows: list[Flow] = []
    for n in range(pairs):
        ca, cb = by_a.get(a.user(n)), by_b.get(b.user(n))
        if ca is None or cb is None:
            continue
        ab, ba = Flow(ca, b.bare(n), f"{n}a"), Flow(cb, a.bare(n), f"{n}b")
        cb.user_data, ca.user_data = ab, ba
        flows += [ab, ba]
    conns = conns_a + conns_b
    for conn in conns:
        conn.on_stanza = run_.on_stanza
        conn.inbox.clear()
    return conns, flows, err_a + err_b


async def _prime(flows: list[Flow], run_: MessageRun, timeout: float = 30.0) -> None:
    """One message per direction, all delivered: the s2s streams are up (dialback done)."""
    sending, run_.sending = run_.sending, False
    for flow in flows:
        flow.send_one()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(f.received >= f.sent for f in flows):
        await asyncio.sleep(0.05)
    run_.sending = sending
    if not all(f.received >= f.sent for f in flows):
        raise client.LoginError("the s2s streams did not come up: a priming message was not delivered")


def _fed_result(name: str, system: str, run_: MessageRun, flows: list[Flow], seconds: float,
                errors: list[str], cpu: dict, **extra) -> dict:
    sent = sum(f.sent for f in flows)
    received = sum(f.received for f in flows)
    lat_ms = [v / 1e6 for v in run_.latencies]
    rate = run_.in_window / seconds if seconds > 0 else 0.0
    out = {"scenario": name, "server": system, "value": round(rate, 3), "unit": "msgs/s",
           "p50_ms": round(percentile(lat_ms, 50), 3), "p99_ms": round(percentile(lat_ms, 99), 3),
           "sent": sent, "received": received, "lost": sent - received,
           "error_replies": sum(f.errors for f in flows), "misrouted": sum(f.misrouted for f in flows),
           "login_failures": len(errors), "connections": len(flows), **cpu, **extra}
    if run_.in_window:
        # µs of server CPU per delivered message: on each server and both together
        per = 1e4 * seconds / run_.in_window  # pct -> µs/msg
        out["cpu_us_a"] = round(cpu["server_a_cpu_pct"] * per, 2)
        out["cpu_us_b"] = round(cpu["server_b_cpu_pct"] * per, 2)
        out["cpu_us_total"] = round(out["cpu_us_a"] + out["cpu_us_b"], 2)
    return out


async def s2s_throughput(system: str, a: Target, b: Target, pairs: int, window: int, duration: float,
                         warmup: float) -> dict:
    """Closed loop across servers: delivered msgs/s, latency, CPU per message."""
    run_ = MessageRun(closed_loop=True)
    conns, flows, errors = await _cross_pairs(a, b, pairs, run_)
    try:
        if not flows:
            raise client.LoginError(f"no pair logged in: {errors[:1]}")
        await _prime(flows, run_)
        run_.window_start = time.monotonic_ns() + int(warmup * 1e9)
        run_.window_end = run_.window_start + int(duration * 1e9)
        gc.disable()
        for flow in flows:
            for _ in range(window):
                flow.send_one()
        await asyncio.sleep(warmup)
        meter = PairCpu(a, b)
        await asyncio.sleep(duration)
        cpu = meter.stop()
        run_.sending = False
        await scenarios._drain(flows, 15.0)
        return _fed_result("s2s_throughput", system, run_, flows, duration, errors, cpu,
                           pairs=len(flows) // 2, window=window)
    finally:
        gc.enable()
        close_all(conns)
        await asyncio.sleep(0.3)


async def s2s_latency(system: str, a: Target, b: Target, rate: float, pairs: int, duration: float,
                      warmup: float) -> dict:
    """Open loop at `rate` msgs/s in all, across servers: p50/p99 latency."""
    run_ = MessageRun(closed_loop=False)
    conns, flows, errors = await _cross_pairs(a, b, pairs, run_)
    try:
        if not flows:
            raise client.LoginError(f"no pair logged in: {errors[:1]}")
        await _prime(flows, run_)
        t0 = time.monotonic()
        run_.window_start = time.monotonic_ns() + int(warmup * 1e9)
        run_.window_end = run_.window_start + int(duration * 1e9)
        total, idx, n = 0, 0, len(flows)
        end = t0 + warmup + duration
        meter: Optional[PairCpu] = None
        gc.disable()
        while True:
            now = time.monotonic()
            if meter is None and now >= t0 + warmup:
                meter = PairCpu(a, b)
            if now >= end:
                break
            due = int(rate * (now - t0)) - total
            for _ in range(due):
                flows[idx].send_one()
                idx = (idx + 1) % n
            total += max(0, due)
            await asyncio.sleep(0.002)
        cpu = meter.stop() if meter else {"server_a_cpu_pct": 0.0, "server_b_cpu_pct": 0.0}
        await scenarios._drain(flows, 15.0)
        res = _fed_result("s2s_latency", system, run_, flows, duration, errors, cpu,
                          target_rate=round(rate, 1), pairs=len(flows) // 2)
        res["achieved_rate"], res["value"], res["unit"] = res["value"], res["p99_ms"], "ms p99"
        return res
    finally:
        gc.enable()
        close_all(conns)
        await asyncio.sleep(0.3)


async def local_throughput(node: Node, params: run.Params) -> dict:
    """`throughput` on one server (c2s only), with its CPU per message."""
    res = (await run.run_one("throughput", node.target, params, None))[0]
    res["scenario"], res["server"] = "local_throughput", KIND[node.key]
    if not res.get("error") and res["value"]:
        res["cpu_us"] = round(res["server_cpu_pct"] * 1e4 / res["value"], 2)
    return res


async def run_all(nodes: dict[str, Node], params: run.Params, systems: list[str],
                  rate: Optional[float] = None) -> list[dict]:
    """Local baselines, then each system's closed loop, then the open loop at one common rate."""
    results: list[dict] = []

    def emit(res: dict) -> None:
        report.emit(res)
        results.append(res)

    for kind, key in (("chatbx", "ca"), ("prosody", "pa")):
        if key in nodes and any(kind in s for s in systems):
            emit(await local_throughput(nodes[key], params))
    chosen = [s for s in SYSTEMS if s[0] in systems and s[1] in nodes and s[2] in nodes]
    for name, ka, kb in chosen:
        try:
            emit(await asyncio.wait_for(s2s_throughput(name, nodes[ka].target, nodes[kb].target, params.pairs,
                                                       params.window, params.duration, params.warmup),
                                        params.scenario_timeout))
        except Exception as exc:  # one broken system must not stop the others
            emit({"scenario": "s2s_throughput", "server": name, "value": 0.0, "unit": "",
                  "error": f"{type(exc).__name__}: {exc}"})
    if rate is None:
        ok = [r["value"] for r in results if r["scenario"] == "s2s_throughput" and not r.get("error")]
        rate = round(max(10.0, 0.3 * min(ok)), 1) if ok else 100.0
    print(f"# s2s latency rate: {rate} msgs/s", file=sys.stderr, flush=True)
    for name, ka, kb in chosen:
        try:
            emit(await asyncio.wait_for(s2s_latency(name, nodes[ka].target, nodes[kb].target, rate,
                                                    params.pairs, params.duration, params.warmup / 2),
                                        params.scenario_timeout))
        except Exception as exc:
            emit({"scenario": "s2s_latency", "server": name, "value": 0.0, "unit": "",
                  "error": f"{type(exc).__name__}: {exc}"})
    return results


def table(results: list[dict]) -> str:
    """Systems side by side; the local (c2s) CPU per message beside the s2s one."""
    local = {r["server"]: r for r in results if r["scenario"] == "local_throughput" and not r.get("error")}
    thr = {r["server"]: r for r in results if r["scenario"] == "s2s_throughput" and not r.get("error")}
    lat = {r["server"]: r for r in results if r["scenario"] == "s2s_latency" and not r.get("error")}
    systems = [s for s, _, _ in SYSTEMS if s in thr or s in lat]

    def local_cpu(system: str) -> Optional[float]:
        kinds = {"chatbx-chatbx": "chatbx", "prosody-prosody": "prosody"}
        entry = local.get(kinds.get(system, ""))
        return entry.get("cpu_us") if entry else None

    rows: list[list[str]] = [["figure"] + systems]

    def row(label: str, get) -> None:
        cells = []
        for s in systems:
            try:
                value = get(s)
            except (KeyError, TypeError, ZeroDivisionError):
                value = None
            cells.append("-" if value is None else f"{value:,.2f}")
        rows.append([label] + cells)

    row("s2s throughput (msgs/s, higher is better)", lambda s: thr[s]["value"])
    row("s2s throughput p50 latency (ms)", lambda s: thr[s]["p50_ms"])
    row("s2s throughput p99 latency (ms)", lambda s: thr[s]["p99_ms"])
    row("s2s fixed-rate p50 latency (ms)", lambda s: lat[s]["p50_ms"])
    row("s2s fixed-rate p99 latency (ms)", lambda s: lat[s]["p99_ms"])
    row("CPU per s2s message, first server (µs)", lambda s: thr[s]["cpu_us_a"])
    row("CPU per s2s message, second server (µs)", lambda s: thr[s]["cpu_us_b"])
    row("CPU per s2s message, both servers (µs)", lambda s: thr[s]["cpu_us_total"])
    row("CPU per local message, one server (µs)", local_cpu)
    row("s2s/local CPU, per server", lambda s: thr[s]["cpu_us_total"] / 2 / local_cpu(s))
    row("s2s/local CPU, both servers", lambda s: thr[s]["cpu_us_total"] / local_cpu(s))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if "chatbx-chatbx" in thr and "prosody-prosody" in thr and thr["prosody-prosody"]["value"]:
        lines.append(f"chatbx-chatbx / prosody-prosody throughput: "
                     f"{thr['chatbx-chatbx']['value'] / thr['prosody-prosody']['value']:.2f}")
    if local:
        lines.append("local throughput (msgs/s): " + ", ".join(f"{k} {v['value']:,.0f}" for k, v in local.items()))
    return "\n".join(lines)


def result_ok(results: list[dict]) -> bool:
    return not any(r.get("error") or r.get("lost") or r.get("login_failures") or r.get("misrouted")
                   for r in results)


__all__ = ["SYSTEMS", "start_nodes", "stop_nodes", "run_all", "table", "result_ok", "result"]
