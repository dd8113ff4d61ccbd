"""Group chat across chatbx and a real Prosody (Debian's package).

chatbx hosts ``a.localhost`` with its MUC service ``conference.a.localhost``,
Prosody ``p.localhost`` with ``conference.p.localhost`` (mod_muc); both
reach the other's domains through static routes, dialback authenticating
the self-signed servers. A Prosody user joins a room on chatbx and a chatbx
user joins a room on Prosody's service: history, presence, groupchat and
private messages both ways, self-ping, IQs to occupants, leaving.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Callable

import pytest

from chatbx_server.tls import generate_self_signed
from tests.interop.prosody import Prosody, available, free_port

from conftest import ChatbxServer, run, slix_close  # tests/integration
from test_muc_federation import _client, _talk  # tests/integration

if not available() and os.environ.get("CHATBX_REQUIRE_INTEROP") == "1":
    raise RuntimeError("prosody is not installed and CHATBX_REQUIRE_INTEROP=1 (.ci/run installs it)")
pytestmark = pytest.mark.skipif(not available(), reason="prosody is not installed (.ci/run installs it)")

A, P = "a.localhost", "p.localhost"
ALICE, PAT = f"alice@{A}", f"pat@{P}"


def test_rooms_across_chatbx_and_prosody(chatbx_server: Callable[..., ChatbxServer],
                                         tmp_path: Path) -> None:
    """pat@p.localhost joins and talks in a room on chatbx; alice@a.localhost
    in a room on Prosody's MUC."""
    chatbx_s2s = free_port()
    prosody_dir = tmp_path / "prosody"
    prosody_dir.mkdir()
    p_cert, p_key = prosody_dir / f"{P}.crt", prosody_dir / f"{P}.key"
    generate_self_signed(P, p_cert, p_key)
    prosody = Prosody(prosody_dir, P, p_cert, p_key,
                      {A: chatbx_s2s, f"conference.{A}": chatbx_s2s}, muc=True)
    prosody.write_config()
    prosody.register("pat", "pw-pat")
    prosody.start()
    try:
        route = f"127.0.0.1:{prosody.s2s_port}"
        chatbx = chatbx_server(users={ALICE: "pw-alice"}, domains=[A], s2s_port=chatbx_s2s,
                               extra_config=f"[s2s]\nstatic_routes = {{ \"{P}\" = \"{route}\", "
                                            f"\"conference.{P}\" = \"{route}\" }}\n")
        pro = types.SimpleNamespace(c2s_port=prosody.c2s_port, c2s_tls_port=0, users={PAT: "pw-pat"})

        async def main() -> None:
            alice, a_pres, a_msgs = await _client(chatbx, ALICE + "/desk")
            pat, p_pres, p_msgs = await _client(pro, PAT + "/phone")
            try:
                await _talk(alice, a_pres, a_msgs, pat, p_pres, p_msgs, f"lobby@conference.{A}")
                await _talk(pat, p_pres, p_msgs, alice, a_pres, a_msgs, f"yard@conference.{P}")
            finally:
                await slix_close(alice)
                await slix_close(pat)

        try:
            run(main(), 120)
        except BaseException:
            print(prosody.log_text()[-6000:])
            raise
    finally:
        prosody.stop()
