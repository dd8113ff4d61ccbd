"""chatbx federates with a real Prosody (Debian's package) on loopback.

chatbx hosts ``a.localhost``, Prosody ``p.localhost``; each reaches the
other through a static route (chatbx: ``[s2s] static_routes``; Prosody: the
test module mod_chatbx_test_routes). Once with certificates from a test CA
both trust (SASL EXTERNAL, XEP-0178) and once with self-signed ones
(dialback, XEP-0220, in both directions). A user on each side subscribes
to the other, sees presence, chats both ways, and queries the other
server (disco#info, ping, version).
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from chatbx_server.tls import generate_self_signed
from tests.interop.prosody import Prosody, available, free_port

from conftest import ChatbxServer, run  # tests/integration
from test_federation import remote_shutdown_is_clean, scenario, wait_status  # tests/integration
from testcerts import make_ca, make_leaf  # tests/integration

if not available() and os.environ.get("CHATBX_REQUIRE_INTEROP") == "1":
    raise RuntimeError("prosody is not installed and CHATBX_REQUIRE_INTEROP=1 (.ci/run installs it)")
pytestmark = pytest.mark.skipif(not available(), reason="prosody is not installed (.ci/run installs it)")

A, P = "a.localhost", "p.localhost"
ALICE, PAT = f"alice@{A}", f"pat@{P}"


@pytest.fixture
def prosodies() -> Iterator[list[Prosody]]:
    started: list[Prosody] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.mark.parametrize("bidi", [False, True], ids=["two-streams", "bidi"])
@pytest.mark.parametrize("with_ca,method", [(True, "sasl-external"), (False, "dialback")],
                         ids=["trusted-ca-sasl-external", "self-signed-dialback"])
def test_chatbx_and_prosody_federate(chatbx_server: Callable[..., ChatbxServer], prosodies: list[Prosody],
                                     tmp_path: Path, with_ca: bool, method: str, bidi: bool) -> None:
    """A chatbx user and a Prosody user subscribe, see presence, chat both ways
    and query each other's server; chatbx's streams use SASL EXTERNAL with
    trusted certificates and dialback with self-signed ones. With Prosody's
    mod_s2s_bidi loaded, chatbx's stream to Prosody is bidirectional
    (XEP-0288) and Prosody's stanzas come back on it."""
    chatbx_s2s = free_port()
    prosody_dir = tmp_path / "prosody"
    prosody_dir.mkdir()
    extra_tls = ca_line = ""
    ca_path = None
    if with_ca:
        ca_key, ca_cert, ca_path = make_ca(tmp_path)
        p_cert, p_key = make_leaf(prosody_dir, P, ca_key, ca_cert)
        a_cert, a_key = make_leaf(tmp_path, A, ca_key, ca_cert)
        extra_tls = f'[tls.domains."{A}"]\ncertificate = "{a_cert}"\nkey = "{a_key}"\n'
        ca_line = f'ca_file = "{ca_path}"\n'
    else:
        p_cert, p_key = prosody_dir / f"{P}.crt", prosody_dir / f"{P}.key"
        generate_self_signed(P, p_cert, p_key)
    prosody = Prosody(prosody_dir, P, p_cert, p_key, {A: chatbx_s2s}, ca_path, bidi=bidi)
    prosody.write_config()
    prosody.register("pat", "pw-pat")
    prosodies.append(prosody)
    prosody.start()
    try:
        chatbx = chatbx_server(users={ALICE: "pw-alice"}, domains=[A], s2s_port=chatbx_s2s,
                               extra_config=f"[s2s]\n{ca_line}static_routes = {{ \"{P}\" = "
                                            f"\"127.0.0.1:{prosody.s2s_port}\" }}\n" + extra_tls)
        pro = types.SimpleNamespace(c2s_port=prosody.c2s_port, c2s_tls_port=0, users={PAT: "pw-pat"})
        run(scenario(chatbx, pro, ALICE, PAT), 120)
        if bidi:
            status = wait_status(chatbx, lambda s: any(o["remote"] == P and o.get("auth")
                                                       for o in s["outgoing"]))
            out = [o for o in status["outgoing"] if o["remote"] == P]
            assert out and out[0]["auth"] == method and out[0]["bidi"], status
            if with_ca:
                # Prosody sent everything on chatbx's stream: no connection of its own.
                assert not status["incoming"], status
            assert "Requested bidirectional stream" in prosody.log_text()
        else:
            status = wait_status(chatbx, lambda s: any(o["remote"] == P and o.get("auth")
                                                       for o in s["outgoing"])
                                 and any(P in i["remote"] for i in s["incoming"]))
            out = [o for o in status["outgoing"] if o["remote"] == P]
            assert out and out[0]["auth"] == method and not out[0]["bidi"], status
            assert any(P in i["remote"] and i["auth"] == method for i in status["incoming"]), status
        remote_shutdown_is_clean(chatbx, prosody)
    except BaseException:
        print(prosody.log_text()[-15000:])
        raise
