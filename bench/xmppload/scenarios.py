"""Benchmark scenarios over raw c2s streams (RFC 6120 login, RFC 6121 messages and presence).

Each scenario is an async function returning a list of result dicts (one per
figure) shaped `{"scenario", "server", "value", "unit", ...}`, with `sent`,
`received` and `lost` where messages are involved, so a smoke test can assert
that every message it sent was delivered. Every loop is bounded in count and
in time.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from . import client, scram
from .client import T_IQ, T_MESSAGE, T_PRESENCE, El, LoginError, XmppConnection

T_STATUS = client.NS_CLIENT + " status"
T_ROSTER_QUERY = client.NS_ROSTER + " query"
T_ROSTER_ITEM = client.NS_ROSTER + " item"


@dataclass
class Target:
    """Where the load goes: any XMPP server reachable on loopback."""

    name: str
    host: str
    port: int
    domain: str
    user_pattern: str = "bench{n}"
    password: str = "secret"
    starttls: bool = True
    direct_tls: bool = False
    server_pid: Optional[int] = None
    #: more processes whose CPU counts as the server's over a measured
    #: window (a multi-process server's workers, its Redis)
    cpu_pids: tuple[int, ...] = ()

    def user(self, n: int) -> str:
        return self.user_pattern.format(n=n)

    def bare(self, n: int) -> str:
        return f"{self.user(n)}@{self.domain}"

    async def login(self, n: int, **kw) -> XmppConnection:
        return await client.login(self.host, self.port, self.domain, self.user(n), self.password,
                                  starttls=self.starttls, direct_tls=self.direct_tls, **kw)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[idx]


def result(scenario: str, target: Target, value: float, unit: str, **extra) -> dict:
    """One machine-readable figure."""
    out = {"scenario": scenario, "server": target.name, "value": round(value, 3), "unit": unit}
    out.update(extra)
    return out


async def login_many(target: Target, indices: Iterable[int], concurrency: int, timeout: float,
                     kwargs_for: Optional[Callable[[int], dict]] = None,
                     **kw) -> tuple[list[XmppConnection], list[str]]:
    """Log in many users, at most `concurrency` handshakes at a time, all within `timeout`
    (`kwargs_for(n)`: login options of user n on top of `kw`, e.g. its FAST credentials)."""
    sem = asyncio.Semaphore(concurrency)
    conns: list[XmppConnection] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout

    async def one(n: int) -> None:
        async with sem:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors.append("deadline")
                return
            try:
                extra = kwargs_for(n) if kwargs_for is not None else {}
                conns.append(await target.login(n, timeout=min(30.0, remaining), **kw, **extra))
            except (LoginError, OSError, asyncio.TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(n) for n in indices))
    return conns, errors


def close_all(conns: Iterable[XmppConnection]) -> None:
    for conn in conns:
        conn.close()


class CpuMeter:
    """CPU used by the server and by this load generator over the measured window.

    Tells which side was the bottleneck: near 100 % of one core on the load
    generator means the figure is a floor for the server, not its limit.
    """

    def __init__(self, server_pid: Optional[int], more_pids: tuple[int, ...] = ()) -> None:
        self.pids = ((server_pid,) if server_pid else ()) + tuple(more_pids)
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        from .servers import cpu_seconds
        t = os.times()
        server = 0.0
        for pid in self.pids:
            try:
                server += cpu_seconds(pid)
            except OSError:
                pass
        return time.monotonic(), t.user + t.system, server

    def stop(self) -> dict:
        end = self._sample()
        wall = max(1e-9, end[0] - self.start[0])
        out = {"loadgen_cpu_pct": round(100 * (end[1] - self.start[1]) / wall, 1)}
        if self.pids:
            out["server_cpu_pct"] = round(100 * (end[2] - self.start[2]) / wall, 1)
        return out


# ------------------------------------------------------------------ login rate
async def login_rate(target: Target, users: int = 200, count: int = 2000, concurrency: int = 50,
                     duration: float = 8.0, base: int = 0, fast: bool = False) -> list[dict]:
    """Connections/s completing TLS + SCRAM + bind + initial presence (+ a ping round trip).

    A first unmeasured pass logs every user in once, so the client's SCRAM key
    cache is warm (as a real client's is) and PBKDF2 on our side does not cap
    the figure. Each measured login opens a new connection and closes it.

    With `fast` (scenario login_rate_fast): SASL2 + Bind2, and the first
    pass asks for a FAST token per user (SCRAM), which every measured login
    then uses instead of the password (XEP-0484: one round trip).
    """
    creds: dict[int, client.FastCredentials] = {}
    if fast:
        creds = {n: client.FastCredentials() for n in range(base, base + users)}
        warm, errs = await login_many(target, creds, concurrency, 60.0,
                                      kwargs_for=lambda n: {"fast": creds[n]})
        unsupported = [e for e in errs if "no SASL2" in e or "no usable FAST" in e]
        if not warm and errs and len(unsupported) == len(errs):
            # A server without SASL2/FAST (Prosody 0.12): nothing to measure.
            return [result("login_rate_fast", target, 0.0, "", skipped=unsupported[0])]
    else:
        warm, errs = await login_many(target, range(base, base + users), concurrency, 60.0)
    close_all(warm)
    await asyncio.sleep(0.5)
    latencies: list[float] = []
    failures: list[str] = []
    counter = iter(range(count))
    t0 = time.monotonic()
    deadline = t0 + duration
    meter = CpuMeter(target.server_pid)

    async def worker() -> None:
        for i in counter:
            if time.monotonic() >= deadline:
                return
            start = time.monotonic()
            n = base + i % users
            kw = {"fast": creds[n]} if fast else {}
            if fast and creds[n].token is None:
                continue  # its first login failed (counted there)
            try:
                conn = await target.login(n, timeout=max(1.0, deadline + 10 - start), **kw)
            except (LoginError, OSError, asyncio.TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.monotonic() - start)
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - t0
    cpu = meter.stop()
    extra: dict = {}
    if fast:
        extra = {"mechanism": next((c.mechanism for c in creds.values() if c.mechanism), None),
                 "scram_logins": sum(c.scram_logins for c in creds.values()),
                 "token_logins": sum(c.token_logins for c in creds.values())}
    if "server_cpu_pct" in cpu and latencies:
        cpu["server_cpu_us_per_login"] = round(cpu["server_cpu_pct"] / 100 * elapsed / len(latencies) * 1e6)
    return [result("login_rate_fast" if fast else "login_rate", target, len(latencies) / elapsed,
                   "logins/s", **extra,
                   completed=len(latencies), failures=len(failures) + len(errs),
                   p50_ms=round(percentile(latencies, 50) * 1000, 2),
                   p99_ms=round(percentile(latencies, 99) * 1000, 2),
                   concurrency=concurrency, seconds=round(elapsed, 2),
                   first_failure=(failures + errs)[0] if failures or errs else None, **cpu)]


# ------------------------------------------------------------------ messages
BODY = "The quick brown fox jumps over the lazy dog"  # a typical short chat line


class Flow:
    """One direction of a pair: sender -> receiver, counting what left and what arrived."""

    __slots__ = ("sender", "src", "head", "sent", "received", "errors", "misrouted")

    def __init__(self, sender: XmppConnection, to: str, tag: str) -> None:
        self.sender = sender
        self.src = sender.jid.split("/")[0] + "/"
        self.misrouted = 0
        self.head = f"<message to='{to}' type='chat' id='{tag}-"
        self.sent = 0
        self.received = 0
        self.errors = 0

    def send_one(self) -> None:
        self.sent += 1
        self.sender.send(f"{self.head}{time.monotonic_ns()}'><body>{BODY}</body></message>".encode())


class MessageRun:
    """Shared state of a message scenario: flows, latencies inside the measured window."""

    def __init__(self, closed_loop: bool) -> None:
        self.closed_loop = closed_loop
        self.sending = True
        self.window_start = 0
        self.window_end = 1 << 62
        self.latencies: list[int] = []
        self.in_window = 0
        self.stray = 0
        #: the first error replies, described (condition, text, to whom)
        self.error_samples: list[str] = []

    def on_stanza(self, conn: XmppConnection, el: El) -> None:
        if el.tag != T_MESSAGE:
            if el.tag == T_IQ and el.attrs.get("type") in ("get", "set"):
                _reply_iq(conn, el)
            return
        flow: Flow = conn.user_data  # type: ignore[assignment]
        if el.attrs.get("type") == "error":
            flow.errors += 1
            if len(self.error_samples) < 3:
                self.error_samples.append(_describe_error(el))
            return
        mid = el.attrs.get("id", "")
        try:
            sent_ns = int(mid.rpartition("-")[2])
        except ValueError:
            self.stray += 1
            return
        if not el.attrs.get("from", "").startswith(flow.src):
            flow.misrouted += 1  # not from the partner: a server bug, never counted as delivered
            return
        flow.received += 1
        now = time.monotonic_ns()
        if self.window_start <= now < self.window_end:
            self.in_window += 1
            self.latencies.append(now - sent_ns)
        if self.closed_loop and self.sending:
            flow.send_one()


def _describe_error(el: El) -> str:
    """'condition: text (from -> to)' of an error stanza, for the result line."""
    error = next((c for c in el.children if c.tag.endswith(" error")), None)
    parts = [c for c in (error.children if error else []) if not c.tag.endswith(" text")]
    text = next((c.text for c in (error.children if error else []) if c.tag.endswith(" text")), "")
    condition = parts[0].tag.rpartition(" ")[2] if parts else "?"
    return f"{condition}: {text} ({el.attrs.get('from')} -> {el.attrs.get('to')})"


def _reply_iq(conn: XmppConnection, el: El) -> None:
    """Acknowledge a server push (roster push) so the server is not left waiting."""
    iq_id = client.xml_escape(el.attrs.get("id", ""))
    frm = el.attrs.get("from")
    to_attr = f" to='{client.xml_escape(frm)}'" if frm else ""
    conn.send(f"<iq type='result' id='{iq_id}'{to_attr}/>".encode())


async def _pairs(target: Target, pairs: int, base: int, run: MessageRun,
                 concurrency: int) -> tuple[list[XmppConnection], list[Flow], list[str]]:
    conns, errors = await login_many(target, range(base, base + 2 * pairs), concurrency, 120.0)
    by_jid = {c.jid.split("/")[0]: c for c in conns}
    flows: list[Flow] = []
    for i in range(pairs):
        a, b = by_jid.get(target.bare(base + 2 * i)), by_jid.get(target.bare(base + 2 * i + 1))
        if a is None or b is None:
            continue
        ab, ba = Flow(a, target.bare(base + 2 * i + 1), f"{i}a"), Flow(b, target.bare(base + 2 * i), f"{i}b")
        b.user_data, a.user_data = ab, ba  # each side knows the flow it receives
        flows += [ab, ba]
    for conn in conns:
        conn.on_stanza = run.on_stanza
        while conn.inbox:  # presence that arrived during login
            conn.inbox.popleft()
    return conns, flows, errors


async def _drain(flows: list[Flow], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(f.received + f.errors >= f.sent for f in flows):
            return
        await asyncio.sleep(0.05)


def _message_result(name: str, target: Target, run: MessageRun, flows: list[Flow], seconds: float,
                    errors: list[str], **extra) -> dict:
    sent = sum(f.sent for f in flows)
    received = sum(f.received for f in flows)
    lat_ms = [v / 1e6 for v in run.latencies]
    return result(name, target, run.in_window / seconds if seconds > 0 else 0.0, "msgs/s",
                  p50_ms=round(percentile(lat_ms, 50), 3), p99_ms=round(percentile(lat_ms, 99), 3),
                  sent=sent, received=received, lost=sent - received,
                  error_replies=sum(f.errors for f in flows), misrouted=sum(f.misrouted for f in flows),
                  error_samples=run.error_samples,
                  login_failures=len(errors),
                  connections=len(flows), **extra)


async def throughput(target: Target, pairs: int = 50, window: int = 10, duration: float = 5.0,
                     warmup: float = 1.0, base: int = 0, concurrency: int = 50,
                     name: str = "throughput") -> list[dict]:
    """Closed loop: each direction of each pair keeps `window` messages in flight.

    Delivered msgs/s over the measured window (after `warmup`), and the
    end-to-end latency of those messages (a timestamp rides in the message id).
    """
    run = MessageRun(closed_loop=True)
    conns, flows, errors = await _pairs(target, pairs, base, run, concurrency)
    try:
        now = time.monotonic_ns()
        run.window_start = now + int(warmup * 1e9)
        run.window_end = run.window_start + int(duration * 1e9)
        gc.disable()  # parsed elements hold no cycles; a gen-2 pass would show up as latency
        for flow in flows:
            for _ in range(window):
                flow.send_one()
        await asyncio.sleep(warmup)
        meter = CpuMeter(target.server_pid, target.cpu_pids)
        await asyncio.sleep(duration)
        cpu = meter.stop()
        run.sending = False
        await _drain(flows, 15.0)
        return [_message_result(name, target, run, flows, duration, errors,
                                pairs=len(flows) // 2, window=window, **cpu)]
    finally:
        gc.enable()
        close_all(conns)
        await asyncio.sleep(0.3)


async def latency(target: Target, rate: float, pairs: int = 50, duration: float = 5.0,
                  warmup: float = 0.5, base: int = 0, concurrency: int = 50) -> list[dict]:
    """Open loop at a fixed total rate (msgs/s) spread over all flows: p50/p99 latency."""
    run = MessageRun(closed_loop=False)
    conns, flows, errors = await _pairs(target, pairs, base, run, concurrency)
    try:
        if not flows:
            raise LoginError(f"no pair logged in: {errors[:1]}")
        t0 = time.monotonic()
        run.window_start = time.monotonic_ns() + int(warmup * 1e9)
        run.window_end = run.window_start + int(duration * 1e9)
        total, idx, n = 0, 0, len(flows)
        end = t0 + warmup + duration
        gc.disable()
        meter = None
        last, max_gap = time.monotonic(), 0.0
        while True:
            now = time.monotonic()
            max_gap, last = max(max_gap, now - last), now  # a stall on our side would show here
            if meter is None and now >= t0 + warmup:
                meter = CpuMeter(target.server_pid)
            if now >= end:
                break
            due = int(rate * (now - t0)) - total
            for _ in range(due):
                flows[idx].send_one()
                idx = (idx + 1) % n
            total += max(0, due)
            await asyncio.sleep(0.002)
        cpu = meter.stop() if meter else {}
        await _drain(flows, 15.0)
        res = _message_result("latency", target, run, flows, duration, errors,
                              target_rate=round(rate, 1), pairs=len(flows) // 2, **cpu)
        res["value"], res["unit"] = res["p99_ms"], "ms p99"
        res["achieved_rate"] = round(run.in_window / duration, 1)
        res["loadgen_max_tick_gap_ms"] = round(max_gap * 1000, 2)
        return [res]
    finally:
        gc.enable()
        close_all(conns)
        await asyncio.sleep(0.3)


# ------------------------------------------------------------------ idle memory
async def idle_memory(target: Target, counts: tuple[int, ...] = (1000, 10000), concurrency: int = 100,
                      settle: float = 3.0, base: int = 0, timeout: float = 240.0) -> list[dict]:
    """Server RSS before and after C idle authenticated connections; KiB per connection.

    Connections accumulate: the 10,000 figure includes the first 1,000.
    """
    if target.server_pid is None:
        raise LoginError("idle_memory needs the server's PID (--server-pid)")
    from .servers import raise_nofile, rss_kib
    limit = raise_nofile()
    out: list[dict] = []
    conns: list[XmppConnection] = []
    t_start = time.monotonic()
    try:
        await asyncio.sleep(settle)
        rss0 = rss_kib(target.server_pid)
        done = 0
        for count in counts:
            if count + 50 > limit:
                out.append(result(f"idle_memory_{count}", target, 0.0, "KiB/conn", skipped=f"ulimit -n {limit}"))
                continue
            left = timeout - (time.monotonic() - t_start)
            t0 = time.monotonic()
            new, errors = await login_many(target, range(base + done, base + count), concurrency, max(1.0, left))
            conns += new
            done = count
            for conn in new:  # idle: drop whatever the server pushes
                conn.on_stanza = _ignore
                conn.inbox.clear()
            login_s = time.monotonic() - t0
            await asyncio.sleep(settle)
            rss = rss_kib(target.server_pid)
            alive = sum(1 for c in conns if not c.lost)
            extra = {}
            if alive < 0.95 * count:  # a per-connection figure over too few connections misleads
                extra["error"] = f"only {alive} of {count} connections up: {errors[0] if errors else '?'}"
            out.append(result(f"idle_memory_{count}", target, (rss - rss0) / max(1, alive), "KiB/conn", **extra,
                              connections=alive, rss_before_kib=rss0, rss_after_kib=rss,
                              login_failures=len(errors), login_seconds=round(login_s, 2),
                              first_failure=errors[0] if errors else None))
        return out
    finally:
        close_all(conns)
        await asyncio.sleep(1.0 + len(conns) / 5000)


def _ignore(conn: XmppConnection, el: El) -> None:
    if el.tag == T_IQ and el.attrs.get("type") in ("get", "set"):
        _reply_iq(conn, el)


# ------------------------------------------------------------------ presence fan-out
async def presence_fanout(target: Target, contacts: int = 500, base: int = 10000, rounds: int = 5,
                          concurrency: int = 100, setup_timeout: float = 120.0) -> list[dict]:
    """One user with `contacts` online mutual ('both') contacts changes presence.

    The rosters are built through the protocol (subscribe/subscribed both ways),
    so this works on any server; already-complete rosters are reused. Time is
    from sending the presence until the last contact has it.
    """
    hub_bare = target.bare(base)
    contact_bares = {target.bare(base + 1 + i) for i in range(contacts)}
    conns, errors = await login_many(target, range(base + 1, base + 1 + contacts), concurrency, setup_timeout,
                                     roster=True)
    hub = None
    try:
        hub = await target.login(base, roster=True, timeout=60.0)
        roster: El = hub.user_data  # type: ignore[assignment]
        both: set[str] = set()
        query = roster.find(T_ROSTER_QUERY) if roster is not None else None
        for item in (query.children if query is not None else []):
            if item.attrs.get("subscription") == "both":
                both.add(item.attrs.get("jid", ""))
        missing = contact_bares - both
        setup_s = 0.0
        if missing:
            setup_s = await _subscribe_all(hub, conns, hub_bare, missing, both, setup_timeout)
        if not contact_bares <= both:
            raise LoginError(f"roster setup incomplete: {len(contact_bares - both)} of {contacts} not 'both'")
        await asyncio.sleep(0.5)

        state = {"token": "", "arrived": [], "t0": 0}

        def contact_handler(conn: XmppConnection, el: El) -> None:
            if el.tag == T_PRESENCE and el.attrs.get("from", "").startswith(hub_bare + "/"):
                status = el.find(T_STATUS)
                if status is not None and status.text == state["token"] and conn.user_data != state["token"]:
                    conn.user_data = state["token"]
                    state["arrived"].append(time.monotonic_ns() - state["t0"])
            elif el.tag == T_IQ and el.attrs.get("type") in ("get", "set"):
                _reply_iq(conn, el)

        for conn in conns:
            conn.on_stanza = contact_handler
            conn.inbox.clear()
        hub.on_stanza = _ignore
        hub.inbox.clear()
        times_ms: list[float] = []
        arrivals_ms: list[float] = []
        incomplete = 0
        for r in range(rounds):
            state["token"] = f"fanout-{r}-{os.urandom(3).hex()}"
            state["arrived"] = []
            state["t0"] = time.monotonic_ns()
            hub.send(f"<presence><status>{state['token']}</status></presence>".encode())
            deadline = time.monotonic() + 10.0
            while len(state["arrived"]) < len(conns) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            if len(state["arrived"]) < len(conns):
                incomplete += 1
            if state["arrived"]:
                times_ms.append(max(state["arrived"]) / 1e6)
                arrivals_ms += [v / 1e6 for v in state["arrived"]]
            await asyncio.sleep(0.3)
        sent = rounds * len(conns)
        received = len(arrivals_ms)
        return [result("presence_fanout", target, statistics.median(times_ms) if times_ms else 0.0,
                       "ms to all", contacts=len(conns), rounds=rounds, sent=sent, received=received,
                       lost=sent - received, incomplete_rounds=incomplete,
                       p50_arrival_ms=round(percentile(arrivals_ms, 50), 3),
                       max_ms=round(max(times_ms), 3) if times_ms else None,
                       roster_setup_seconds=round(setup_s, 2), login_failures=len(errors))]
    finally:
        close_all(conns)
        if hub is not None:
            hub.close()
        await asyncio.sleep(0.5)


async def _subscribe_all(hub: XmppConnection, conns: list[XmppConnection], hub_bare: str,
                         missing: set[str], both: set[str], timeout: float) -> float:
    """Make every missing contact a mutual ('both') subscription, via RFC 6121 §3 stanzas."""
    t0 = time.monotonic()

    def contact_handler(conn: XmppConnection, el: El) -> None:
        if el.tag == T_PRESENCE and el.attrs.get("type") == "subscribe" \
                and el.attrs.get("from", "").split("/")[0] == hub_bare:
            conn.send(f"<presence to='{hub_bare}' type='subscribed'/><presence to='{hub_bare}' type='subscribe'/>"
                      .encode())
        elif el.tag == T_IQ and el.attrs.get("type") in ("get", "set"):
            _reply_iq(conn, el)

    def hub_handler(conn: XmppConnection, el: El) -> None:
        if el.tag == T_PRESENCE and el.attrs.get("type") == "subscribe":
            frm = client.xml_escape(el.attrs.get("from", "").split("/")[0])
            conn.send(f"<presence to='{frm}' type='subscribed'/>".encode())
        elif el.tag == T_IQ and el.attrs.get("type") == "set":
            query = el.find(T_ROSTER_QUERY)
            for item in (query.children if query is not None else []):
                jid = item.attrs.get("jid", "")
                if item.attrs.get("subscription") == "both":
                    both.add(jid)
                else:
                    both.discard(jid)
            _reply_iq(conn, el)

    for conn in conns:
        conn.on_stanza = contact_handler
        conn.inbox.clear()
    hub.on_stanza = hub_handler
    hub.inbox.clear()
    for jid in sorted(missing):
        hub.send(f"<presence to='{jid}' type='subscribe'/>".encode())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not missing <= both:
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


# In this order: login churn slows Prosody 0.12 for minutes (25,000 -> 8,400 msgs/s after 3,000
# logins), and 10,000 connections leave both heaps large; throughput_after_logins shows the former.
SCENARIOS = ("throughput", "latency", "presence_fanout", "pep_fanout", "login_rate", "login_rate_fast",
             "throughput_after_logins", "idle_memory")
#: run only when named (--scenarios): muc_room (one room of 1,000 occupants) and muc_rooms (200
#: rooms of 10) take a minute or more per server, which the default run's time budget does not have
EXTRA_SCENARIOS = ("muc_room", "muc_rooms")


def key_cache_size() -> int:
    return scram.cache_size()
