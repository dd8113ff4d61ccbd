"""One /metrics answer for every node of a cluster (cluster/metrics.py)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chatbx_server.cluster import metrics as cluster_metrics
from tests.unit.test_cluster import FakeRedis, cluster_server, fake_redis  # noqa: F401 (fixture)

OTHER = """# HELP chatbx_stanzas_total Stanzas by kind and direction
# TYPE chatbx_stanzas_total counter
chatbx_stanzas_total{direction="in",kind="message"} 7.0
# HELP chatbx_sessions Bound client sessions by transport
# TYPE chatbx_sessions gauge
chatbx_sessions{kind="tcp"} 3.0
"""


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_families_of_several_nodes_merge_with_a_node_label() -> None:
    text = cluster_metrics.merged_text({"n1": OTHER.replace("7.0", "2.0"), "n2": OTHER})
    assert text.count(b"# TYPE chatbx_stanzas_total counter") == 1
    samples = _samples(text)
    key = ("chatbx_stanzas_total", (("direction", "in"), ("kind", "message"), ("node", "n2")))
    assert samples[key] == 7.0
    assert samples[("chatbx_sessions", (("kind", "tcp"), ("node", "n1")))] == 3.0


def test_a_scrape_has_this_nodes_figures_and_the_others_snapshots(fake_redis: FakeRedis) -> None:
    server = cluster_server()
    cluster = server.cluster
    [published] = [c for c in fake_redis.named("SET") if c[1] == "chatbx:metrics:n1"]
    assert published[3:] == ("PX", cluster_metrics.EXPIRE_MS)
    cluster.live = {"n1", "n2", "n3"}
    fake_redis.replies["MGET"] = [OTHER, None]  # n3 has no snapshot (yet)
    got: list[Any] = []
    cluster.metrics.gather().addCallback(got.append)
    assert ("MGET", "chatbx:metrics:n2", "chatbx:metrics:n3") in fake_redis.commands
    samples = _samples(got[0])
    nodes = {dict(labels).get("node") for _, labels in samples}
    assert nodes == {"n1", "n2"}
    assert samples[("chatbx_stanzas_total",
                    (("direction", "in"), ("kind", "message"), ("node", "n2")))] == 7.0
    # The next snapshot after PERIOD seconds.
    before = len(fake_redis.named("SET"))
    server.clock.advance(cluster_metrics.PERIOD)
    assert len([c for c in fake_redis.named("SET")[before:] if c[1] == "chatbx:metrics:n1"]) == 1


def test_redis_failing_leaves_this_nodes_figures(fake_redis: FakeRedis) -> None:
    from twisted.internet import defer

    server = cluster_server()
    server.cluster.live = {"n1", "n2"}
    fake_redis.replies["MGET"] = lambda: defer.fail(ConnectionError("down"))
    got: list[Any] = []
    server.cluster.metrics.gather().addCallback(got.append)
    assert {dict(labels).get("node") for _, labels in _samples(got[0])} == {"n1"}
