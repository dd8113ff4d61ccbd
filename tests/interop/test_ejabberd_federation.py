"""chatbx federates with a real ejabberd (Debian's 23.01 package) on loopback.

chatbx hosts ``a.localhost``, ejabberd ``e.localhost``. chatbx reaches
ejabberd through ``[s2s] static_routes``. ejabberd has no static routes:
it finds chatbx the way it finds any server, by the SRV record
``_xmpp-server._tcp.a.localhost`` (RFC 6120 §3.2.1), answered by a DNS
stub on loopback that is its only nameserver (ejabberd.py, dnsstub.py).
Once with certificates from a test CA both trust (SASL EXTERNAL,
XEP-0178) and once with self-signed ones (dialback, XEP-0220, both
directions). A slixmpp user on each side subscribes to the other, sees
presence, chats both ways, and queries the other server (disco#info,
ping, version), as in the Prosody test.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Callable, Iterator

import pytest

from chatbx_server.tls import generate_self_signed
from tests.interop.dnsstub import DNSStub
from tests.interop.ejabberd import Ejabberd, available
from tests.interop.prosody import free_port

from conftest import ChatbxServer, run  # tests/integration
from test_federation import remote_shutdown_is_clean, scenario, wait_status  # tests/integration
from testcerts import make_ca, make_leaf  # tests/integration

if not available() and os.environ.get("CHATBX_REQUIRE_INTEROP") == "1":
    raise RuntimeError("ejabberd is not installed and CHATBX_REQUIRE_INTEROP=1 (.ci/run installs it)")
pytestmark = pytest.mark.skipif(not available(), reason="ejabberd is not installed (.ci/run installs it)")

A, E = "a.localhost", "e.localhost"
ALICE, EVE = f"alice@{A}", f"eve@{E}"


@pytest.fixture
def ejabberds() -> Iterator[list[Ejabberd]]:
    started: list[Ejabberd] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def dns_stub() -> Iterator[Callable[..., DNSStub]]:
    stubs: list[DNSStub] = []

    def make(srv: dict[str, list[tuple[int, int, int, str]]]) -> DNSStub:
        stub = DNSStub(srv).start()
        stubs.append(stub)
        return stub
    try:
        yield make
    finally:
        for stub in stubs:
            stub.stop()


@pytest.mark.parametrize("with_ca,method", [(True, "sasl-external"), (False, "dialback")],
                         ids=["trusted-ca-sasl-external", "self-signed-dialback"])
def test_chatbx_and_ejabberd_federate(chatbx_server: Callable[..., ChatbxServer], ejabberds: list[Ejabberd],
                                      dns_stub: Callable[..., DNSStub], tmp_path: Path,
                                      with_ca: bool, method: str) -> None:
    """A chatbx user and an ejabberd user subscribe, see presence, chat both ways
    and query each other's server; chatbx's streams use SASL EXTERNAL with
    trusted certificates and dialback with self-signed ones; ejabberd finds
    chatbx through its SRV record."""
    chatbx_s2s = free_port()
    stub = dns_stub({f"_xmpp-server._tcp.{A}": [(0, 0, chatbx_s2s, "localhost")]})
    e_dir = tmp_path / "ejabberd"
    e_dir.mkdir()
    extra_tls = ca_line = ""
    ca_path = None
    if with_ca:
        ca_key, ca_cert, ca_path = make_ca(tmp_path)
        e_cert, e_key = make_leaf(e_dir, E, ca_key, ca_cert)
        a_cert, a_key = make_leaf(tmp_path, A, ca_key, ca_cert)
        extra_tls = f'[tls.domains."{A}"]\ncertificate = "{a_cert}"\nkey = "{a_key}"\n'
        ca_line = f'ca_file = "{ca_path}"\n'
    else:
        e_cert, e_key = e_dir / f"{E}.crt", e_dir / f"{E}.key"
        generate_self_signed(E, e_cert, e_key)
    ejabberd = Ejabberd(e_dir, E, e_cert, e_key, stub.port, ca_path)
    ejabberd.write_config()
    ejabberds.append(ejabberd)
    ejabberd.start()
    try:
        ejabberd.register("eve", "pw-eve")
        chatbx = chatbx_server(users={ALICE: "pw-alice"}, domains=[A], s2s_port=chatbx_s2s,
                               extra_config=f"[s2s]\n{ca_line}static_routes = {{ \"{E}\" = "
                                            f"\"127.0.0.1:{ejabberd.s2s_port}\" }}\n" + extra_tls)
        ejb = types.SimpleNamespace(c2s_port=ejabberd.c2s_port, c2s_tls_port=0, users={EVE: "pw-eve"})
        run(scenario(chatbx, ejb, ALICE, EVE), 120)
        status = wait_status(chatbx, lambda s: any(o["remote"] == E and o.get("auth") for o in s["outgoing"])
                             and any(E in i["remote"] for i in s["incoming"]))
        out = [o for o in status["outgoing"] if o["remote"] == E]
        assert out and out[0]["auth"] == method, status
        assert any(E in i["remote"] and i["auth"] == method for i in status["incoming"]), status
        # ejabberd found chatbx through the stub's SRV record, not elsewhere.
        assert (f"_xmpp-server._tcp.{A}", "SRV") in stub.queries, stub.queries
        remote_shutdown_is_clean(chatbx, ejabberd)
    except BaseException:
        print(ejabberd.log_text()[-20000:])
        raise
