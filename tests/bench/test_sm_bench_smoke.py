"""Smoke test of bench/sm_overhead.py: every case runs and delivers.

Not a timed test: the script asserts that every message reached bob's
queue (``sm.sent``) and prints one line per case; the figures are not
checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "sm_overhead.py"


def test_sm_overhead_prints_every_case() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--number", "300", "--repeat", "1",
                           "--no-mam"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300, cwd=ROOT)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out
    cases = re.findall(r"^(SM (?:on|off)(?:, no archive)?): ([0-9.]+) µs/message", out, re.M)
    assert [c[0] for c in cases] == ["SM off", "SM on", "SM off, no archive", "SM on, no archive"], out
    assert all(float(c[1]) > 0 for c in cases)
