"""Output of the benchmark: one JSON line per figure, and a human table at the end."""

from __future__ import annotations

import json
import sys
from typing import Iterable, Optional, TextIO

# figure -> (column label, how to read it: "higher" or "lower" is better)
FIGURES = {
    "login_rate": ("login rate", "higher"),
    "login_rate_fast": ("login rate with FAST (SASL2 + Bind2, token)", "higher"),
    "throughput": ("throughput", "higher"),
    "throughput_p50": ("throughput p50 latency", "lower"),
    "throughput_p99": ("throughput p99 latency", "lower"),
    "throughput_after_logins": ("throughput after 3,000 logins", "higher"),
    "latency_p50": ("fixed-load p50 latency", "lower"),
    "latency_p99": ("fixed-load p99 latency", "lower"),
    "idle_memory_1000": ("idle memory, 1,000 conns", "lower"),
    "idle_memory_10000": ("idle memory, 10,000 conns", "lower"),
    "presence_fanout": ("presence fan-out to 500", "lower"),
    "pep_fanout_avatar": ("PEP 8 KiB items to 100 contacts (notifications/s)", "higher"),
    "pep_fanout_avatar_p99": ("PEP 8 KiB item p99 until the last contact", "lower"),
    "pep_fanout_bundle": ("PEP 4 KiB items to 100 contacts (notifications/s)", "higher"),
    "pep_fanout_bundle_p99": ("PEP 4 KiB item p99 until the last contact", "lower"),
}


def emit(res: dict, out: TextIO = sys.stdout) -> None:
    """Print one machine-readable line now (so a killed run still leaves its figures)."""
    out.write(json.dumps(res, sort_keys=False) + "\n")
    out.flush()


def figures(res: dict) -> list[tuple[str, float, str]]:
    """Split a scenario result into table figures (name, value, unit)."""
    name = res["scenario"]
    if res.get("error") or res.get("skipped"):
        return []
    if name == "throughput":
        return [("throughput", res["value"], "msgs/s"), ("throughput_p50", res["p50_ms"], "ms"),
                ("throughput_p99", res["p99_ms"], "ms")]
    if name.startswith("pep_fanout_"):
        return [(name, res["value"], res["unit"]), (name + "_p99", res["p99_ms"], "ms")]
    if name == "latency":
        return [("latency_p50", res["p50_ms"], "ms"), ("latency_p99", res["p99_ms"], "ms")]
    return [(name, res["value"], res["unit"])]


def table(results: Iterable[dict], servers: Optional[list[str]] = None) -> str:
    """A side-by-side table; with two servers a ratio column (first / second)."""
    by: dict[tuple[str, str], tuple[float, str]] = {}
    seen_servers: list[str] = []
    for res in results:
        if res["server"] not in seen_servers:
            seen_servers.append(res["server"])
        for fig, value, unit in figures(res):
            by[(fig, res["server"])] = (value, unit)
    servers = servers or seen_servers
    head = ["figure"] + servers + (["ratio " + "/".join(servers[:2])] if len(servers) == 2 else [])
    rows = [head]
    extra = {fig: (fig, "?") for fig, _ in by if fig not in FIGURES}
    for fig, (label, better) in {**FIGURES, **extra}.items():
        cells = [by.get((fig, s)) for s in servers]
        if not any(cells):
            continue
        unit = next(c[1] for c in cells if c)
        row = [f"{label} ({unit}, {better} is better)" if better != "?" else f"{label} ({unit})"]
        row += [f"{c[0]:.2f}" if c else "-" for c in cells]
        if len(servers) == 2:
            a, b = cells
            row.append(f"{a[0] / b[0]:.2f}" if a and b and b[0] else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
