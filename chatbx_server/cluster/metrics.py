"""Metrics of every node in one ``/metrics`` answer.

Each node puts the text of its own metrics in Redis (``metrics:<node>``)
every ``PERIOD`` seconds, expiring after a few periods, so a dead node's
figures go away with it. A scrape of any node's ``/metrics`` answers with
its own figures (read now) and the latest of every other live node, each
sample labelled ``node``. With ``[cluster] workers`` this is how the
workers that serve no HTTP are seen at all; on separate machines a single
scrape target covers the cluster (each node's own endpoint answers the
same).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.logger import Logger

from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.cluster.node import Cluster

log = Logger(observer=log_observer)

#: seconds between snapshots of a node's metrics in Redis
PERIOD = 5.0
#: how long a snapshot outlives its node's last one
EXPIRE_MS = str(int(PERIOD * 3 * 1000))
#: a scrape waits this long for the other nodes' snapshots
FETCH_TIMEOUT = 2.0


def metrics_key(prefix: str, node: str) -> str:
    return f"{prefix}metrics:{node}"


class MergedCollector:
    """The families of several nodes' exposition texts, one family per name,
    every sample labelled with its node."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for node in sorted(self.texts):
            try:
                parsed = list(text_string_to_metric_families(self.texts[node]))
            except Exception:
                log.warn("cluster: unreadable metrics from node {node}", node=node)
                continue
            for family in parsed:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "node": node},
                                      sample.value, sample.timestamp, sample.exemplar)
        yield from families.values()


def merged_text(texts: dict[str, str]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedCollector(texts))
    return generate_latest(registry)


class NodeMetrics:
    """Publishes this node's snapshot; gathers everyone's for a scrape."""

    def __init__(self, cluster: "Cluster", prefix: str, own_text: Callable[[], bytes]) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.own_text = own_text
        self._loop: Optional[task.LoopingCall] = None

    def start(self) -> None:
        self._loop = task.LoopingCall(self.publish)
        self._loop.clock = self.cluster.clock
        self._loop.start(PERIOD, now=True).addErrback(
            lambda f: log.failure("cluster: metrics snapshots stopped", f))

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def publish(self) -> Any:
        cluster = self.cluster
        if not cluster.running:
            return None
        d = cluster.redis.execute_command("SET", metrics_key(self.prefix, cluster.node),
                                          self.own_text().decode("utf-8"), "PX", EXPIRE_MS)
        d.addErrback(lambda f: log.failure("cluster: publishing metrics failed", f))
        return None

    def gather(self) -> defer.Deferred:
        """Fires with the text of every live node's metrics, labelled by
        node (this node's read now; the others' from their last snapshot)."""
        cluster = self.cluster
        me = cluster.node
        texts = {me: self.own_text().decode("utf-8")}
        others = sorted(n for n in cluster.live if n != me)
        if not others or not cluster.running:
            return defer.succeed(merged_text(texts))
        d = cluster.redis.execute_command("MGET", *(metrics_key(self.prefix, n) for n in others))
        d.addTimeout(FETCH_TIMEOUT, cluster.clock)

        def add(values: Any) -> bytes:
            for node, text in zip(others, values or ()):
                if text:
                    texts[node] = text
            return merged_text(texts)

        def own_only(failure: Any) -> bytes:
            log.failure("cluster: reading the other nodes' metrics failed", failure)
            return merged_text(texts)

        return d.addCallbacks(add, own_only)
