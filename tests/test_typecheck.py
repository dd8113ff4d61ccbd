"""chatbx_server type-checks clean under mypy (DESIGN.md, Style).

The hints on public functions are only worth something while they are
checked, so the suite runs mypy with the repository's ``setup.cfg``
(``[mypy]`` and its per-module sections) over the package.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_mypy_reports_no_errors() -> None:
    """``python -m mypy chatbx_server`` exits 0; mypy's report is shown if not.

    mypy is in the ``test`` extra, so a missing mypy fails the test rather
    than skipping it: a skip would let CI pass without the check.
    """
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed; install the test extra: pip install -e '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "setup.cfg"), "chatbx_server"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (
        f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
