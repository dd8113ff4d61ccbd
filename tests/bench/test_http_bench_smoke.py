"""Smoke test of bench/http_compare: a tiny run of every HTTP scenario
against chatbx and the two baseline file servers. Not timed: it proves the
scenarios run end to end and that every upload and message arrived."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.integration
def test_quick_http_compare_runs_every_scenario(tmp_path: Path) -> None:
    """`bench/http_compare --quick`: transfers, concurrent uploads, memory and
    WebSocket/TCP messages all produce figures; nothing failed or was lost."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    _run_and_check(tmp_path)


def _run_and_check(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(BENCH / "http_compare"), "--quick", "--json", str(out),
                           "--time-limit", "120"], cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=180, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads(out.read_text())
    assert not [r for r in results if r.get("error")], proc.stdout[-4000:]
    servers = {(r["scenario"].split()[0], r["server"]) for r in results}
    for scenario in ("upload", "download", "20"):
        assert {(scenario, s) for s in ("chatbx", "stdlib", "twisted")} <= servers, servers
    assert ("message", "chatbx-tcp") in servers and ("message", "chatbx-websocket") in servers
    memory = [r for r in results if r["scenario"].startswith("RSS growth")]
    assert len(memory) == 2 and all(r["unit"] == "MiB" for r in memory)
    messages = [r for r in results if r["scenario"] == "message throughput"]
    assert all(r["lost"] == 0 and r["received"] > 0 for r in messages), messages
