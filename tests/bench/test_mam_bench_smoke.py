"""Smoke test of bench/mam_queries.py: a tiny archive on each backend.

Not a timed test: it proves the bulk load (multi-row INSERT / COPY, indexes
built afterwards, FTS5 filled) gives a schema the server's own queries work
on, and that every kind of query returns pages. The figures are not checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "mam_queries.py"


def run_bench(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--messages", "3000", "--accounts", "6",
                           "--contacts", "3", "--queries", "10", "--json", str(out), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    log = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, log
    return json.loads(out.read_text())


def check(figures: list[dict], backend: str) -> None:
    kinds = {f["query"]: f for f in figures if f["backend"] == backend}
    assert set(kinds) == {"with", "time range", "before-id", "fulltext"}, figures
    for kind in ("with", "time range", "before-id"):
        assert kinds[kind]["mean_rows"] > 0 and kinds[kind]["p99_ms"] >= kinds[kind]["p50_ms"] > 0


def test_tiny_archive_on_sqlite(tmp_path: Path) -> None:
    """The bench builds a small SQLite archive and times every query kind."""
    check(run_bench(tmp_path, "--backends", "sqlite"), "sqlite")


def test_tiny_archive_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """The same on an empty PostgreSQL database (COPY, indexes after the load)."""
    check(run_bench(tmp_path, "--backends", "postgresql", "--postgresql", postgres_url), "postgresql")
