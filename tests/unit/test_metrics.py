"""The hot-path metrics (http/metrics.py): plain counters on the reactor
thread, exposed in Prometheus' text format like prometheus_client's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatbx_server.http.metrics import HotPathCollector, ReactorHistogram, ROUTE_SECONDS, STANZAS_IN


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(HotPathCollector())
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = ReactorHistogram((0.001, 0.01))
    for value in (0.001, 0.0005, 0.005, 3.0):
        h.observe(value)
    assert h.counts == [2, 1, 1] and h.sum == 3.0065


def test_counters_and_histogram_in_the_exposition() -> None:
    before = _samples()
    STANZAS_IN["message"].inc()
    ROUTE_SECONDS.observe(0.0001)  # on the 0.0001 bound: counted there
    after = _samples()
    key = ("chatbx_stanzas_total", (("direction", "in"), ("kind", "message")))
    assert after[key] == before[key] + 1
    for le in ("0.0001", "+Inf"):
        bucket = ("chatbx_route_seconds_bucket", (("le", le),))
        assert after[bucket] == before[bucket] + 1
    below = ("chatbx_route_seconds_bucket", (("le", "5e-05"),))
    assert after[below] == before[below]
    count = ("chatbx_route_seconds_count", ())
    assert after[count] == before[count] + 1
