"""Interop fixtures: the integration tests' chatbx_server factory (and their
failure-log hook), reused here. tests/integration is put on sys.path so that
``conftest`` below, and ``testcerts``/``test_federation`` in the test
modules, are the integration ones."""

from __future__ import annotations

import sys
from pathlib import Path

INTEGRATION = Path(__file__).parent.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

from conftest import chatbx_server, pytest_runtest_makereport  # noqa: E402,F401  (tests/integration)
