"""Run a list of scenarios against one target with bounded time; full and quick presets."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

from . import muc_scenario, pep_scenario, report, scenarios
from .scenarios import Target


@dataclass(frozen=True)
class Params:
    """Sizes of every scenario; `QUICK` is the smoke-test preset."""

    login_users: int = 200
    login_count: int = 3000
    login_concurrency: int = 50
    login_duration: float = 8.0
    pairs: int = 50
    window: int = 10
    duration: float = 5.0
    warmup: float = 1.0
    rate: Optional[float] = None          # msgs/s for `latency`; None: 30 % of measured throughput
    idle_counts: tuple[int, ...] = (1000, 10000)
    idle_settle: float = 3.0
    fanout_contacts: int = 500
    fanout_rounds: int = 5
    fanout_base: int = 10000             # fan-out users live apart from the rest (they have rosters)
    pep_contacts: int = 100              # pep_fanout: online contacts of the publisher (fan-out block)
    pep_items: int = 200                 # pep_fanout: items published per payload size
    muc_occupants: int = 1000            # muc_room: occupants of the one room (users bench0..)
    muc_messages: int = 300              # muc_room: groupchat messages, senders rotating
    muc_window: int = 10                 # muc_room: messages in flight at most
    muc_rooms: int = 200                 # muc_rooms: rooms ...
    muc_room_size: int = 10              # ... of this many occupants (users bench0.. in blocks)
    muc_room_messages: int = 30          # muc_rooms: groupchat messages per room, 2 in flight per room
    scenario_timeout: float = 300.0

    def users_needed(self) -> int:
        """Users bench{0..N-1} the run needs (plus the fan-out block at fanout_base)."""
        return max(self.login_users, 2 * self.pairs, max(self.idle_counts or (0,)), self.muc_occupants,
                   self.muc_rooms * self.muc_room_size)

    def fanout_users(self) -> range:
        return range(self.fanout_base, self.fanout_base + self.fanout_contacts + 1)


FULL = Params()
QUICK = Params(login_users=10, login_count=40, login_concurrency=5, login_duration=2.0, pairs=3, window=3,
               duration=1.0, warmup=0.3, idle_counts=(20,), idle_settle=0.3, fanout_contacts=10,
               fanout_rounds=2, fanout_base=100, pep_contacts=10, pep_items=10, muc_occupants=10,
               muc_messages=20, muc_window=3, muc_rooms=3, muc_room_size=3, muc_room_messages=5,
               scenario_timeout=60.0)


async def run_one(name: str, target: Target, params: Params, rate: Optional[float]) -> list[dict]:
    """One scenario, bounded by `params.scenario_timeout`; failures become an error result."""
    t0 = time.monotonic()
    try:
        coro = {
            "login_rate": lambda: scenarios.login_rate(
                target, users=params.login_users, count=params.login_count,
                concurrency=params.login_concurrency, duration=params.login_duration),
            "login_rate_fast": lambda: scenarios.login_rate(
                target, users=params.login_users, count=params.login_count,
                concurrency=params.login_concurrency, duration=params.login_duration, fast=True),
            "throughput": lambda: scenarios.throughput(
                target, pairs=params.pairs, window=params.window, duration=params.duration,
                warmup=params.warmup),
            "throughput_after_logins": lambda: scenarios.throughput(
                target, pairs=params.pairs, window=params.window, duration=params.duration,
                warmup=params.warmup, name="throughput_after_logins"),
            "latency": lambda: scenarios.latency(
                target, rate=rate or 1000.0, pairs=params.pairs, duration=params.duration,
                warmup=params.warmup / 2),
            "idle_memory": lambda: scenarios.idle_memory(
                target, counts=params.idle_counts, settle=params.idle_settle,
                timeout=params.scenario_timeout - 20),
            "presence_fanout": lambda: scenarios.presence_fanout(
                target, contacts=params.fanout_contacts, base=params.fanout_base,
                rounds=params.fanout_rounds),
            "pep_fanout": lambda: pep_scenario.pep_fanout(
                target, contacts=min(params.pep_contacts, params.fanout_contacts),
                base=params.fanout_base, items=params.pep_items),
            "muc_room": lambda: muc_scenario.muc_room(
                target, occupants=params.muc_occupants, messages=params.muc_messages,
                window=params.muc_window),
            "muc_rooms": lambda: muc_scenario.muc_rooms(
                target, rooms=params.muc_rooms, size=params.muc_room_size,
                messages=params.muc_room_messages),
        }[name]()
        res = await asyncio.wait_for(coro, params.scenario_timeout)
    except Exception as exc:  # a broken scenario must not stop the others
        res = [{"scenario": name, "server": target.name, "value": 0.0, "unit": "",
                "error": f"{type(exc).__name__}: {exc}"}]
    for r in res:
        r["wall_seconds"] = round(time.monotonic() - t0, 2)
    return res


async def run_all(target: Target, names: list[str], params: Params,
                  emit: Callable[[dict], None] = report.emit) -> list[dict]:
    """Scenarios in order; `latency` uses params.rate or 30 % of this run's throughput."""
    out: list[dict] = []
    rate = params.rate
    for name in names:
        res = await run_one(name, target, params, rate)
        for r in res:
            emit(r)
        out += res
        if name == "throughput" and rate is None and res and not res[0].get("error"):
            rate = max(10.0, 0.3 * res[0]["value"])
    return out


def with_overrides(params: Params, **kw) -> Params:
    """Params with the given (non-None) fields replaced."""
    return replace(params, **{k: v for k, v in kw.items() if v is not None})
