"""Tests for chatbx_server._compat: wokkel 18.0.0 on current Twisted.

The shim restores names Twisted removed (``twisted.python.compat._PY3``,
``iteritems``, ... and ``twisted.python.constants``). The proof that it is
enough is wokkel's own test suite (``trial wokkel``) passing under it; both
checks run in a fresh interpreter so the shim really is imported before the
first wokkel import, as in the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chatbx_server._compat  # noqa: F401  (before wokkel.test imports below)

REPO = Path(__file__).resolve().parents[2]

#: wokkel 18.0.0 ships this many trial tests.
WOKKEL_TEST_COUNT = 657

#: Tests of wokkel that may fail for reasons unrelated to the shim, in
#: client-side code chatbx does not use. They are allowed to fail (or pass:
#: the second one is random); every other failure or error fails our test.
KNOWN_WOKKEL_FAILURES = {
    "wokkel.test.test_client.ClientCreatorTest.test_call": (
        "Twisted's SRVConnector now keeps the domain as IDNA bytes "
        "(twisted.names.dns.domainString), the test compares it with the str "
        "'example.org'. wokkel.client.clientCreator (client connections via "
        "SRV) is not used by chatbx."
    ),
    "wokkel.test.test_component.ComponentTest.test_stopServiceNoReconnect": (
        "Twisted's ReconnectingClientFactory now schedules the first retry "
        "after a jittered initialDelay (~1 s) instead of ~e s; the test "
        "advances its clock exactly 1 s, so about half the runs reconnect "
        "before stopService and the fake connector (no transport) trips "
        "Twisted's assert in stopConnecting. wokkel.component.Component (an "
        "external component connecting out) is not used by chatbx, whose "
        "service domains are InternalComponents."
    ),
}

WOKKEL_MODULES = (
    "subprotocols", "disco", "data_form", "pubsub", "muc", "server",
    "component", "xmppim", "ping", "generic",
)


def _run_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports chatbx from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def parse_trial_output(output: str) -> tuple[int, dict[str, str]]:
    """Return (tests run, {test or module id: outcome}) from trial's text report.

    Outcomes are FAIL, ERROR and UNEXPECTED SUCCESS: the ones that make a
    trial run fail. Each problem block in the report is a ``[OUTCOME]`` line,
    a traceback, and the ids it applies to, separated by a line of ``=``.
    """
    match = re.search(r"^Ran (\d+) tests? in ", output, re.MULTILINE)
    if match is None:
        raise AssertionError(f"no 'Ran N tests' line in trial output:\n{output[-3000:]}")
    problems: dict[str, str] = {}
    summary = output[: match.start()]
    for block in re.split(r"^={20,}$|^-{20,}$", summary, flags=re.MULTILINE):
        head = re.match(r"\s*\[(FAIL|ERROR|UNEXPECTED SUCCESS)\]", block)
        if head is None:
            continue
        # The ids are the last paragraph of the block, one per line.
        ids = block.strip().split("\n\n")[-1].split("\n")
        for test_id in ids:
            test_id = test_id.strip()
            if re.fullmatch(r"[\w.]+", test_id):
                problems[test_id] = head.group(1)
    return int(match.group(1)), problems


def test_parse_trial_output_finds_failures_and_errors() -> None:
    """The report parser finds every failing id and the run count, so the suite test can fail."""
    sample = textwrap.dedent("""\
        pkg.test_a
          T
            test_x ...                                                 [FAIL]

        ===============================================================================
        [FAIL]
        Traceback (most recent call last):
          File "x.py", line 1, in f
        twisted.trial.unittest.FailTest: 1 != 2

        pkg.test_a.T.test_x
        ===============================================================================
        [ERROR]
        Traceback (most recent call last):
        builtins.ImportError: boom

        pkg.test_b
        pkg.test_c.T.test_y
        -------------------------------------------------------------------------------
        Ran 3 tests in 0.010s

        FAILED (failures=1, errors=2)
        """)
    run, problems = parse_trial_output(sample)
    assert run == 3
    assert problems == {
        "pkg.test_a.T.test_x": "FAIL",
        "pkg.test_b": "ERROR",
        "pkg.test_c.T.test_y": "ERROR",
    }


def test_compat_restores_names_and_wokkel_imports(tmp_path: Path) -> None:
    """After importing the shim, wokkel's removed Twisted names and every wokkel module chatbx uses import.

    Also shows the restored iteritems/itervalues do not warn per call
    (Twisted 26 still has deprecated versions that do, on wokkel's presence
    and roster paths).
    """
    modules = ", ".join(f"wokkel.{name}" for name in WOKKEL_MODULES)
    result = _run_python(f"""
        import warnings
        import chatbx_server._compat
        from twisted.python.compat import _PY3, iteritems, itervalues, unicode, StringType
        from twisted.python.constants import Values, ValueConstant
        import {modules}
        assert _PY3 is True and unicode is str and StringType is str
        class Colour(Values):
            red = ValueConstant("r")
        assert Colour.lookupByValue("r") is Colour.red
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert list(iteritems({{1: 2}})) == [(1, 2)]
            assert list(itervalues({{1: 2}})) == [2]
        assert not caught, [str(w.message) for w in caught]
        print("compat-ok")
        """, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compat-ok" in result.stdout


def test_wokkel_test_suite_passes_under_compat(tmp_path: Path) -> None:
    """wokkel's own 657 trial tests pass under the shim, except the two named, shim-unrelated ones."""
    import wokkel

    result = _run_python(f"""
        import sys
        import chatbx_server._compat
        from twisted.scripts.trial import run
        sys.argv = ["trial", "--reporter=bwverbose",
                    "--temp-directory", {str(tmp_path / "_trial_temp")!r}, "wokkel"]
        run()
        """, cwd=tmp_path)
    output = result.stdout + result.stderr
    run, problems = parse_trial_output(output)
    if str(wokkel.__version__) == "18.0.0":
        assert run == WOKKEL_TEST_COUNT, output[-3000:]
    unexpected = {k: v for k, v in problems.items() if k not in KNOWN_WOKKEL_FAILURES}
    assert not unexpected, f"wokkel tests failing under the shim: {unexpected}\n{output[-5000:]}"
    if not problems:
        assert result.returncode == 0, output[-3000:]
    else:
        # Failures are exactly the known ones, so trial's exit code says failed.
        assert result.returncode != 0


@pytest.mark.parametrize("name", sorted(KNOWN_WOKKEL_FAILURES))
def test_known_wokkel_failures_are_documented(name: str) -> None:
    """Each tolerated wokkel failure names a real wokkel test and says why it may fail."""
    module, cls, method = name.rsplit(".", 2)
    mod = __import__(module, fromlist=[cls])
    assert callable(getattr(getattr(mod, cls), method))
    assert len(KNOWN_WOKKEL_FAILURES[name]) > 40
