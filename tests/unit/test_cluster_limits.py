"""Login limits shared by the nodes of a cluster (cluster/limits.py): the
throttle's score changes go to Redis once per reactor turn, and what Redis
answers is what every node's checks see."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from chatbx_server.cluster import limits
from tests.unit.fakes import make_server
from tests.unit.test_cluster import FakeRedis, cluster_server, install_redis


class Buckets(FakeRedis):
    """Answers the score script from a dict of bucket key -> score (no leak)."""

    def __init__(self) -> None:
        super().__init__()
        self.scores: dict[str, float] = {}
        self.calls: list[tuple[list[str], list[str]]] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        if script != limits._ADD_SCRIPT:
            return super().eval(script, keys, args)
        self.calls.append((keys, args))
        out = []
        for key, amount in zip(keys, args[3:]):
            self.scores[key] = max(0.0, self.scores.get(key, 0.0) + float(amount))
            out.append(repr(self.scores[key]))
        return defer.succeed(out)


@pytest.fixture
def buckets(monkeypatch: pytest.MonkeyPatch) -> Buckets:
    return install_redis(monkeypatch, Buckets())


def test_changes_of_one_turn_go_to_redis_in_one_call(buckets: Buckets) -> None:
    server = cluster_server()
    throttle = server.auth_throttle
    assert throttle.shared is not None
    throttle.failed("10.0.0.1", "alice@localhost")
    throttle.failed("10.0.0.1", "alice@localhost")
    assert throttle.charge("10.0.0.1", "bob@localhost")
    assert buckets.calls == []
    server.clock.advance(0)
    [(keys, args)] = buckets.calls
    assert sorted(zip(keys, args[3:])) == [("chatbx:auth:a:10.0.0.1", "3.0"),
                                           ("chatbx:auth:u:alice@localhost", "2.0"),
                                           ("chatbx:auth:u:bob@localhost", "1.0")]


def test_scores_from_other_nodes_refuse_here(buckets: Buckets) -> None:
    """Nine failures elsewhere: this node, which saw none, refuses the tenth
    attempt once it asked Redis (as the login paths do before a check)."""
    server = cluster_server()
    throttle = server.auth_throttle
    buckets.scores["chatbx:auth:u:alice@localhost"] = float(throttle.max_failures)
    assert throttle.allowed("10.0.0.2", "alice@localhost")
    done: list[Any] = []
    throttle.refresh("10.0.0.2", "alice@localhost").addCallback(done.append)
    assert done == [None]
    assert not throttle.allowed("10.0.0.2", "alice@localhost")
    assert throttle.allowed("10.0.0.2", "bob@localhost")
    # The shared score leaks away like a local one.
    server.clock.advance(throttle.window)
    assert throttle.allowed("10.0.0.2", "alice@localhost")


def test_redis_down_leaves_the_local_limits(buckets: Buckets) -> None:
    server = cluster_server()
    throttle = server.auth_throttle
    buckets.eval = lambda *a: defer.fail(ConnectionError("redis down"))  # type: ignore[method-assign]
    done: list[Any] = []
    throttle.refresh("10.0.0.3", "alice@localhost").addCallback(done.append)
    assert done == [None] and throttle.allowed("10.0.0.3", "alice@localhost")


def test_one_node_has_no_shared_scores() -> None:
    server = make_server()
    assert server.auth_throttle.shared is None
    done: list[Any] = []
    server.auth_throttle.refresh("10.0.0.4", "alice@localhost").addCallback(done.append)
    assert done == [None]


def test_a_charge_refunded_in_the_same_turn_sends_nothing(buckets: Buckets) -> None:
    """A right password: charged and refunded at once, no Redis call."""
    server = cluster_server()
    throttle = server.auth_throttle
    assert throttle.charge("10.0.0.5", "alice@localhost")
    throttle.refund("10.0.0.5", "alice@localhost")
    server.clock.advance(0)
    assert buckets.calls == []
