"""Smoke test of bench/cluster.py (issue 14's cluster scenario): one tiny
round of one node and of two nodes with every pair split across them, on
PostgreSQL and a private redis-server. Not timed: it proves the scenario
runs end to end and that every message crossing the nodes was delivered
(none lost, none misrouted, none left in offline storage)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_quick_cluster_bench_delivers_everything_across_nodes(tmp_path: Path, postgres_url: str) -> None:
    """`bench/cluster.py --quick --rounds 1`: both modes deliver every message
    (postgres_url: PostgreSQL is there; the bench makes its own database)."""
    if shutil.which("redis-server") is None:
        # As tests/integration/test_cluster.py's redis_url: in CI a skip is a failure.
        if os.environ.get("CI") or os.environ.get("CHATBX_REQUIRE_CLIENTS") == "1":
            pytest.fail("redis-server is not installed (Debian package redis-server)")
        pytest.skip("redis-server is not installed")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster.py"), "--quick", "--rounds", "1",
                           "--duration", "1"],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log = proc.stdout.decode(errors="replace")
    results = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert sorted(r["nodes"] for r in results) == [1, 2], log
    for r in results:
        assert r["sent"] > 0 and r["received"] == r["sent"] and r["lost"] == 0, r
        assert r["misrouted"] == 0 and r["error_replies"] == 0 and r["offline_after"] == 0, r
        assert r["cpu_us_per_msg"] > 0, r
    assert proc.returncode == 0, log
