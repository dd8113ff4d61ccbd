"""``/metrics`` for Prometheus (prometheus_client text format).

Readable only from ``[http] metrics_allow`` addresses (the peer, or the
client behind a trusted proxy) or with ``Authorization: Bearer TOKEN``
(``[http] metrics_token``): metrics tell an outsider how busy the server
is and who is online when.

Counters live in one registry per process (not prometheus_client's global
one, so tests may build many servers); gauges that describe the server's
state (connections, database queue) are read when scraped, by a collector
bound to the running server.
"""

from __future__ import annotations

import hmac
import math
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import resource, server

from chatbx_server.config import parse_networks

if TYPE_CHECKING:
    from chatbx_server.server import Server

REGISTRY = CollectorRegistry(auto_describe=True)


class ReactorCounter:
    """A counter bumped on the reactor thread only: a plain number.
    prometheus_client's values take a lock per change, which was 3 % of the
    CPU of a delivered message (two changes per stanza)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class ReactorHistogram:
    """A histogram observed on the reactor thread only (see ReactorCounter)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds + (math.inf,)
        #: observations per bucket, not cumulative: counts[i] for bounds[i - 1] < x <= bounds[i]
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1


#: per stanza kind, counted on the c2s hot path (see HotPathCollector)
STANZAS_IN = {name: ReactorCounter() for name in ("message", "presence", "iq")}
STANZAS_OUT = {name: ReactorCounter() for name in ("message", "presence", "iq")}
ROUTE_SECONDS = ReactorHistogram((.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .05))


class HotPathCollector:
    """Exposes the reactor-thread counters in prometheus_client's format."""

    def collect(self) -> Iterator[Any]:
        stanzas = CounterMetricFamily("chatbx_stanzas", "Stanzas by kind and direction",
                                      labels=["kind", "direction"])
        for direction, table in (("in", STANZAS_IN), ("out", STANZAS_OUT)):
            for kind, counter in table.items():
                stanzas.add_metric([kind, direction], counter.value)
        yield stanzas
        route = ROUTE_SECONDS
        buckets = []
        total = 0
        for bound, count in zip(route.bounds, route.counts):
            total += count
            buckets.append(("+Inf" if bound == math.inf else floatToGoString(bound), total))
        yield HistogramMetricFamily(
            "chatbx_route_seconds", "Time to route a stanza from a local client (synchronous part)",
            buckets=buckets, sum_value=route.sum)


REGISTRY.register(HotPathCollector())

AUTH = Counter("chatbx_auth", "SASL authentication outcomes", ["outcome"], registry=REGISTRY)
UPLOAD_BYTES = Counter("chatbx_upload_bytes", "Bytes stored by HTTP File Upload",
                       registry=REGISTRY)
HTTP_REQUESTS = Counter("chatbx_http_requests", "HTTP requests by service", ["service"],
                        registry=REGISTRY)

AUTH_SUCCESS = AUTH.labels("success")
AUTH_FAILURE = AUTH.labels("failure")


class ServerCollector:
    """Gauges read from the running server at scrape time."""

    def __init__(self, chatbx: "Server") -> None:
        self.chatbx = chatbx

    def collect(self) -> Iterator[Any]:
        sessions = GaugeMetricFamily("chatbx_sessions", "Bound client sessions by transport",
                                     labels=["kind"])
        counts: dict[str, int] = {}
        for session in self.chatbx.sessions:
            kind = getattr(session.stream, "transport_kind", "tcp")
            counts[kind] = counts.get(kind, 0) + 1
        for kind in ("tcp", "websocket", "bosh"):
            sessions.add_metric([kind], counts.get(kind, 0))
        yield sessions
        shared = self.chatbx.c2s_shared
        connections = GaugeMetricFamily("chatbx_c2s_connections",
                                        "Open client connections (all transports)")
        connections.add_metric([], sum(shared[1].values()) if shared else 0)
        yield connections
        s2s = GaugeMetricFamily("chatbx_s2s_streams", "Server-to-server streams")
        s2s.add_metric([], len(getattr(self.chatbx, "s2s_streams", ()) or ()))
        yield s2s
        db = self.chatbx.database
        pool = getattr(db, "_threadpool", None)
        queue = GaugeMetricFamily("chatbx_db_queue", "Database jobs waiting for a thread")
        waiting = getattr(getattr(pool, "q", None), "qsize", None)
        queue.add_metric([], waiting() if callable(waiting) else 0)
        yield queue
        workers = GaugeMetricFamily("chatbx_db_threads", "Database threads")
        workers.add_metric([], len(getattr(pool, "threads", ()) or ()))
        yield workers


def own_metrics(chatbx: "Server") -> bytes:
    """This process's metrics as exposition text (what one node reports)."""
    registry = getattr(chatbx, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(ServerCollector(chatbx))
        chatbx.metrics_registry = registry  # type: ignore[attr-defined]
    return generate_latest(REGISTRY) + generate_latest(registry)


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, chatbx: "Server") -> None:
        super().__init__()
        config = chatbx.config.http
        self.allowed = parse_networks(config.metrics_allow, "http.metrics_allow")
        self.token = config.metrics_token.encode("utf-8")
        self.chatbx = chatbx

    def _permitted(self, request: Any) -> bool:
        from chatbx_server.http.server import in_networks

        if self.token:
            auth = request.getHeader(b"authorization") or b""
            if auth.startswith(b"Bearer ") and hmac.compare_digest(auth[7:].strip(), self.token):
                return True
        return in_networks(request.client_ip(), self.allowed)

    def render_GET(self, request: Any) -> Any:
        HTTP_REQUESTS.labels("metrics").inc()
        if not self._permitted(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"forbidden\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        cluster = self.chatbx.cluster
        if cluster is None or not cluster.running:
            return own_metrics(self.chatbx)
        # Every node's, labelled by node (cluster/metrics.py).
        finished: list[bool] = []
        request.notifyFinish().addBoth(finished.append)

        def write(body: bytes) -> None:
            if not finished:
                request.write(body)
                request.finish()

        cluster.metrics.gather().addCallback(write)
        return server.NOT_DONE_YET
