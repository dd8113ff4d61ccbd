"""Where a remote XMPP domain listens: SRV (RFC 2782, RFC 6120 §3.2, XEP-0368).

``_xmpps-server._tcp`` (direct TLS) and ``_xmpp-server._tcp`` (STARTTLS)
are looked up together and merged by priority, direct TLS first at equal
priority; inside a priority the order is the weighted random pick of
RFC 2782. No record at all falls back to the domain itself on 5269; a
single record with target "." says the service is not offered
(RFC 2782, "decidedly not available"). ``[s2s] static_routes`` bypass DNS.
Answers are cached for their TTL in a bounded LRU.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)

DEFAULT_PORT = 5269
#: seconds a "no such record" answer is cached
NEGATIVE_TTL = 300
#: the longest TTL honoured (a record may say a week)
MAX_TTL = 86400


class Target(NamedTuple):
    """One place to try: host, port, and whether TLS starts at once (XEP-0368)."""

    host: str
    port: int
    direct_tls: bool = False


class SRV(NamedTuple):
    """The fields of an SRV record that ordering needs."""

    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Sequence[SRV], rand: Callable[[], float] = random.random) -> list[SRV]:
    """RFC 2782 order: ascending priority; weighted random inside a priority.

    Records of weight 0 come first in their group before the running sums
    are taken, as the RFC says, so they are picked only rarely.
    """
    out: list[SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            pick = rand() * total
            running = 0
            chosen = len(group) - 1
            for i, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    chosen = i
                    break
            out.append(group.pop(chosen))
    return out


def merge_targets(direct: Sequence[SRV], starttls: Sequence[SRV], domain: str,
                  rand: Callable[[], float] = random.random) -> list[Target]:
    """Both SRV answers in one try-list (XEP-0368 §3), or the fallback.

    Args:
        direct: ``_xmpps-server._tcp`` records.
        starttls: ``_xmpp-server._tcp`` records.
        domain: the remote domain, for the fallback.
    """
    if not direct and not starttls:
        return [Target(domain, DEFAULT_PORT, False)]
    tagged: list[tuple[int, Target]] = []
    for records, tls in ((direct, True), (starttls, False)):
        if len(records) == 1 and records[0].target in ("", "."):
            continue  # RFC 2782: this variant is not offered
        for r in order_srv(records, rand):
            tagged.append((r.priority, Target(r.target.rstrip("."), r.port, tls)))
    # Stable: at equal priority direct TLS (listed first) stays first.
    tagged.sort(key=lambda t: t[0])
    return [t for _, t in tagged]


def parse_static(text: str) -> Target:
    """``HOST:PORT`` or ``tls:HOST:PORT`` (direct TLS) from ``[s2s] static_routes``."""
    from chatbx_server.config import parse_endpoint

    direct = text.startswith("tls:")
    endpoint = parse_endpoint(text[4:] if direct else text)
    assert endpoint is not None  # checked when the config was read
    return Target(endpoint.host, endpoint.port, direct)


class Resolver:
    """Targets of a remote domain, with static routes and a TTL cache.

    Args:
        clock: for cache expiry.
        static_routes: domain -> "HOST:PORT" / "tls:HOST:PORT".
        cache_size: answers kept.
        lookup: ``name -> Deferred[(answers, authority, additional)]``,
            twisted.names' ``lookupService`` by default (non-blocking).
    """

    def __init__(self, clock: Any, static_routes: Any = None, cache_size: int = 1000,
                 lookup: Optional[Callable[[str], Any]] = None) -> None:
        self.clock = clock
        self.static = {domain: parse_static(text) for domain, text in (static_routes or {}).items()}
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, list[SRV]]] = OrderedDict()
        self._lookup = lookup

    def lookup_service(self, name: str) -> Any:
        if self._lookup is None:
            from twisted.names import client

            self._lookup = client.lookupService
        return self._lookup(name)

    @defer.inlineCallbacks
    def resolve(self, domain: str) -> Any:
        """The ordered targets for ``domain`` (a Deferred list of Target)."""
        static = self.static.get(domain)
        if static is not None:
            return [static]
        direct, starttls = yield defer.gatherResults([
            self._srv(f"_xmpps-server._tcp.{domain}"),
            self._srv(f"_xmpp-server._tcp.{domain}"),
        ])
        return merge_targets(direct, starttls, domain)

    @defer.inlineCallbacks
    def _srv(self, name: str) -> Any:
        now = self.clock.seconds()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(name)
            return cached[1]
        records: list[SRV] = []
        ttl = NEGATIVE_TTL
        try:
            answers, _authority, _additional = yield self.lookup_service(name)
        except Exception as exc:  # NXDOMAIN, timeouts, ...: no records
            log.debug("s2s: no SRV for {name}: {error}", name=name, error=type(exc).__name__)
        else:
            ttls = []
            for rr in answers:
                payload = rr.payload
                if getattr(payload, "TYPE", None) != 33:  # SRV; CNAMEs etc. are skipped
                    continue
                records.append(SRV(payload.priority, payload.weight, payload.port,
                                   str(payload.target)))
                ttls.append(rr.ttl)
            if ttls:
                ttl = min(ttls)
        self._remember(name, now + min(max(ttl, 1), MAX_TTL), records)
        return records

    def _remember(self, name: str, expires: float, records: list[SRV]) -> None:
        self._cache[name] = (expires, records)
        self._cache.move_to_end(name)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
