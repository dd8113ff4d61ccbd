"""Smoke test of the benchmark (bench/compare, bench/xmppload): a tiny run against chatbx.

This is not a timed test: it proves every scenario still runs end to end
against the real server (twistd -n chatbx on free loopback ports, users via
chatbxctl) and that every message and presence the load generator sent was
delivered, from the right sender. The figures themselves are not checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from xmppload import report, scram  # noqa: E402


def test_scram_client_matches_a_scramp_server() -> None:
    """Our SCRAM-SHA-256 client proof is accepted by scramp's server side, and we verify its signature."""
    import scramp
    mech = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored_key, server_key, iterations = mech.make_auth_info("pencil", iteration_count=4096)

    def auth_fn(username: str):
        assert username == "user"
        return salt, stored_key, server_key, iterations

    server = mech.make_server(auth_fn)
    client = scram.ScramClient("SCRAM-SHA-256", "user", "pencil")
    server.set_client_first(client.first().decode())
    final = client.final(server.get_server_first().encode())
    server.set_client_final(final.decode())  # raises if our proof is wrong
    assert client.verify(server.get_server_final().encode())
    assert not client.verify(b"v=" + b"AAAA" * 11)


def test_table_prints_ratio_of_first_to_second_server() -> None:
    """The comparison table shows both figures and the ratio chatbx/prosody."""
    results = [{"scenario": "login_rate", "server": "chatbx", "value": 100.0, "unit": "logins/s"},
               {"scenario": "login_rate", "server": "prosody", "value": 400.0, "unit": "logins/s"}]
    text = report.table(results, ["chatbx", "prosody"])
    row = next(line for line in text.splitlines() if line.startswith("login rate"))
    assert row.split()[-3:] == ["100.00", "400.00", "0.25"]


@pytest.mark.integration
def test_quick_compare_against_chatbx_delivers_everything(tmp_path: Path) -> None:
    """`bench/compare --quick --only chatbx` runs every scenario and loses nothing it sent."""
    # Error replies here were once antispam refusing an operator-made account's
    # first burst while its age was still being read (fixed in antispam.py);
    # the result line names the first error replies.
    _quick_compare(tmp_path)


def _compare_chatbx(tmp_path: Path, *args: str, time_limit: int = 60,
                    timeout: int = 120) -> tuple[str, list[dict], int]:
    """`bench/compare --quick --only chatbx ARGS`: its output, its JSON results
    and its exit code."""
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(BENCH / "compare"), "--quick", "--only", "chatbx",
                           *args, "--json", str(out), "--time-limit", str(time_limit)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.stdout.decode(errors="replace"), json.loads(out.read_text()), proc.returncode


def _quick_compare(tmp_path: Path) -> None:
    log, results, returncode = _compare_chatbx(tmp_path, time_limit=90, timeout=150)
    assert [r for r in results if r.get("error")] == [], log
    by_name = {r["scenario"]: r for r in results}
    assert {"login_rate", "login_rate_fast", "throughput", "latency", "presence_fanout",
            "throughput_after_logins"} <= set(by_name), log
    assert any(name.startswith("idle_memory_") for name in by_name), log
    assert by_name["login_rate"]["completed"] > 0 and by_name["login_rate"]["failures"] == 0
    for name in ("throughput", "latency", "presence_fanout", "throughput_after_logins",
                 "pep_fanout_avatar", "pep_fanout_bundle"):
        res = by_name[name]
        assert res["sent"] > 0 and res["received"] == res["sent"] and res["lost"] == 0, res
        assert res.get("misrouted", 0) == 0 and res.get("error_replies", 0) == 0, res
        assert res.get("duplicates", 0) == 0 and res.get("publish_errors", 0) == 0, res
    for name, res in by_name.items():
        if name.startswith("idle_memory_"):
            assert res["connections"] > 0 and res["login_failures"] == 0, res
    assert returncode == 0, log


def test_table_shows_a_skipped_scenario_as_a_dash() -> None:
    """login_rate_fast is chatbx only: Prosody's skipped result is "-", no ratio."""
    results = [{"scenario": "login_rate_fast", "server": "chatbx", "value": 300.0, "unit": "logins/s"},
               {"scenario": "login_rate_fast", "server": "prosody", "value": 0.0, "unit": "",
                "skipped": "no FAST"}]
    row = next(line for line in report.table(results, ["chatbx", "prosody"]).splitlines()
               if line.startswith("login rate with FAST"))
    assert row.split()[-3:] == ["300.00", "-", "-"]


@pytest.mark.integration
def test_quick_login_rates_with_scram_and_with_fast(tmp_path: Path) -> None:
    """`compare --quick --only chatbx --scenarios login_rate login_rate_fast`: SCRAM
    logins, and FAST logins (SASL2 + Bind2): one SCRAM login per user asks for a
    token, every measured login uses it; none fails."""
    log, found, returncode = _compare_chatbx(tmp_path, "--scenarios", "login_rate",
                                             "login_rate_fast")
    results = {r["scenario"]: r for r in found}
    assert set(results) == {"login_rate", "login_rate_fast"}, log
    for res in results.values():
        assert not res.get("error") and res["failures"] == 0 and res["completed"] > 0, res
        assert res["server_cpu_us_per_login"] > 0, res
    fast = results["login_rate_fast"]
    assert fast["mechanism"] in ("HT-SHA-256-ENDP", "HT-SHA-256-NONE"), fast
    assert fast["scram_logins"] == 10 and fast["token_logins"] >= fast["completed"], fast
    assert returncode == 0, log


@pytest.mark.integration
def test_fast_login_rate_is_skipped_by_a_server_without_fast(tmp_path: Path) -> None:
    """Against a server that offers no FAST (chatbx without its fast module,
    as Prosody 0.12 through loadgen.py), login_rate_fast says skipped, not failed."""
    log, [res], returncode = _compare_chatbx(tmp_path, "--chatbx-disable", "fast",
                                             "--scenarios", "login_rate_fast")
    assert "FAST" in res.get("skipped", "") and not res.get("error"), res
    assert returncode == 0, log


@pytest.mark.integration
def test_quick_group_chat_scenarios_deliver_every_copy(tmp_path: Path) -> None:
    """`compare --quick --scenarios muc_room muc_rooms` against chatbx: one
    room and several small rooms, every occupant gets every message."""
    log, found, returncode = _compare_chatbx(tmp_path, "--scenarios", "muc_room", "muc_rooms",
                                             time_limit=90, timeout=150)
    results = {r["scenario"]: r for r in found}
    assert set(results) == {"muc_room_10", "muc_rooms_3x3"}, log
    for res in results.values():
        assert not res.get("error") and res["value"] > 0 and res["lost"] == 0, res
    assert results["muc_rooms_3x3"]["messages"] == 15
    assert returncode == 0, log


def test_muc_bench_runs() -> None:
    """bench/muc.py runs its three scenarios at a tiny size and every
    occupant got every message (the script asserts the delivery count)."""
    out = subprocess.run([sys.executable, str(BENCH / "muc.py"), "--occupants", "20", "--messages",
                          "10", "--rooms", "3", "--size", "3", "--rounds", "2"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["scenario"] for r in lines] == ["room_20", "room_20_archived", "rooms_3x3"]
    assert all(r["deliveries_per_s"] > 0 for r in lines)
@pytest.mark.integration
def test_quick_federation_between_two_chatbx_delivers_everything(tmp_path: Path) -> None:
    """`bench/compare --federation --quick --systems chatbx-chatbx`: users on two chatbx
    servers chat across s2s; nothing is lost and the CPU per message is reported."""
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(BENCH / "compare"), "--federation", "--quick", "--systems",
                           "chatbx-chatbx", "--json", str(out), "--time-limit", "90"],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=150,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log = proc.stdout.decode(errors="replace")
    results = json.loads(out.read_text())
    assert [r for r in results if r.get("error")] == [], log
    by_name = {r["scenario"]: r for r in results}
    assert {"local_throughput", "s2s_throughput", "s2s_latency"} <= set(by_name), log
    for name in ("s2s_throughput", "s2s_latency"):
        res = by_name[name]
        assert res["server"] == "chatbx-chatbx" and res["sent"] > 0 and res["lost"] == 0, res
        assert res["misrouted"] == 0 and res["error_replies"] == 0, res
    assert by_name["s2s_throughput"]["cpu_us_total"] > 0
    assert "CPU per s2s message" in log and proc.returncode == 0, log
