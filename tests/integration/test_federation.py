"""Two chatbx processes federate over loopback (RFC 6120/6121 across servers).

Server A hosts ``a.localhost`` and server B ``b.localhost``; each reaches
the other through ``[s2s] static_routes`` (no DNS). Once with certificates
from a test CA both trust (``[s2s] ca_file``): the streams authenticate
with SASL EXTERNAL (XEP-0178). Once with the self-signed certificates
chatbx generates: the certificates prove nothing, so dialback (XEP-0220)
authenticates, in all three roles. Users on each side subscribe to each
other, see presence, chat both ways, and query the other server (disco,
ping, version). Streams are bidirectional (XEP-0288) unless turned off.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from testcerts import make_ca, make_leaf
from conftest import (CLIENT_TIMEOUT, ChatbxServer, Inbox, free_port, manual_subscriptions, run,
                      slix_close, slix_login, subscribe_mutually)

A, B = "a.localhost", "b.localhost"
ALICE, BOB = f"alice@{A}", f"bob@{B}"


def start_pair(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path,
               with_ca: bool, direct_tls: bool = False, extra_a: str = "",
               extra_s2s: str = "", services: tuple[str, ...] = ()
               ) -> tuple[ChatbxServer, ChatbxServer]:
    """Servers A and B, each with a static route to the other's s2s port
    (direct TLS ports, XEP-0368, when ``direct_tls``); ``extra_a``: more
    static routes for A; ``extra_s2s``: more [s2s] keys for both;
    ``services``: subdomains (``conference``) routed to the other's port too."""
    ports = {A: free_port(), B: free_port()}
    prefix = "tls:" if direct_tls else ""
    tls = {A: "", B: ""}
    ca_line = ""
    if with_ca:
        ca_key, ca_cert, ca_path = make_ca(tmp_path)
        for domain in (A, B):
            cert, key = make_leaf(tmp_path, domain, ca_key, ca_cert)
            tls[domain] = f'[tls.domains."{domain}"]\ncertificate = "{cert}"\nkey = "{key}"\n'
        ca_line = f'ca_file = "{ca_path}"\n'
    servers = []
    for domain, other, user in ((A, B, ALICE), (B, A, BOB)):
        route = f"{prefix}127.0.0.1:{ports[other]}"
        more = "".join(f", \"{service}.{other}\" = \"{route}\"" for service in services)
        more += f", {extra_a}" if extra_a and domain == A else ""
        extra = (f"[s2s]\n{ca_line}{extra_s2s}static_routes = {{ \"{other}\" = "
                 f"\"{route}\"{more} }}\n" + tls[domain])
        listen = {"s2s_tls_port": ports[domain]} if direct_tls else {"s2s_port": ports[domain]}
        servers.append(chatbx_server(users={user: "pw-" + user.split("@")[0]}, domains=[domain],
                                     extra_config=extra, **listen))
    return servers[0], servers[1]


async def _client(server: Any, jid: str) -> tuple[Any, Inbox, Inbox]:
    client = await slix_login(server, jid)
    manual_subscriptions(client)
    presences = Inbox(client, "presence")
    messages = Inbox(client, "message")
    await client.get_roster()
    client.send_presence()
    return client, presences, messages


async def scenario(a: Any, b: Any, ALICE: str = ALICE, BOB: str = BOB, offline: bool = False) -> None:
    """RFC 6121 across two servers: ``a``/``b`` need ``c2s_port`` and ``users``.
    ``offline``: also a message to the remote user while offline, stored by
    its server and delivered at its next login (XEP-0160)."""
    A, B = ALICE.split("@")[1], BOB.split("@")[1]
    alice, alice_pres, alice_msgs = await _client(a, ALICE)
    bob, bob_pres, bob_msgs = await _client(b, BOB)
    try:
        await subscribe_mutually(alice, alice_pres, bob, bob_pres)
        # Both see the other's presence once subscribed (RFC 6121 §3.1.5/§4.3).
        await alice_pres.wait(lambda p: p["from"].bare == BOB and p["type"] in ("available", ""),
                              what="bob's presence at alice")
        await bob_pres.wait(lambda p: p["from"].bare == ALICE and p["type"] in ("available", ""),
                            what="alice's presence at bob")
        alice.send_message(mto=BOB, mbody="hello from a", mtype="chat")
        got = await bob_msgs.wait(lambda m: m["body"] == "hello from a", what="alice's message")
        assert got["from"].bare == ALICE
        bob.send_message(mto=got["from"], mbody="hello from b", mtype="chat")
        back = await alice_msgs.wait(lambda m: m["body"] == "hello from b", what="bob's answer")
        assert back["from"].bare == BOB

        # IQs to the other server and to a remote user's resource.
        alice.register_plugin("xep_0030")
        alice.register_plugin("xep_0199")
        alice.register_plugin("xep_0092")
        info = await alice.plugin["xep_0030"].get_info(jid=B, timeout=CLIENT_TIMEOUT)
        assert "urn:xmpp:ping" in info["disco_info"]["features"]
        await alice.plugin["xep_0199"].ping(jid=B, timeout=CLIENT_TIMEOUT)
        version = await alice.plugin["xep_0092"].get_version(B, timeout=CLIENT_TIMEOUT)
        assert version["software_version"]["name"]
        bob.register_plugin("xep_0030")
        bob.register_plugin("xep_0199")
        info = await bob.plugin["xep_0030"].get_info(jid=A, timeout=CLIENT_TIMEOUT)
        assert "urn:xmpp:ping" in info["disco_info"]["features"]
        await bob.plugin["xep_0199"].ping(jid=A, timeout=CLIENT_TIMEOUT)

        # Unavailable at logout reaches the other side.
        await slix_close(bob)
        await alice_pres.wait(lambda p: p["from"].bare == BOB and p["type"] == "unavailable",
                              what="bob's unavailable presence")
        if offline:
            alice.send_message(mto=BOB, mbody="while you were away", mtype="chat")
            await asyncio.sleep(0.5)  # let it reach b and be stored before bob returns
            bob, bob_pres, bob_msgs = await _client(b, BOB)
            stored = await bob_msgs.wait(lambda m: m["body"] == "while you were away",
                                         what="the stored message")
            assert stored["from"].bare == ALICE and stored["delay"]["stamp"] is not None
            # The probe sent at bob's login is answered by a with alice's presence (RFC 6121 §4.3).
            await bob_pres.wait(lambda p: p["from"].bare == ALICE and p["type"] in ("available", ""),
                                what="alice's presence, answering bob's probe")
    finally:
        await slix_close(alice)
        await slix_close(bob)


def _status(server: ChatbxServer) -> dict[str, Any]:
    return json.loads(server.ctl("s2s", "status", "--json").stdout)


def wait_status(server: ChatbxServer, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        for _ in range(40):
            status = _status(server)
            if check(status):
                return status
            await asyncio.sleep(0.25)  # the status file is rewritten within a second
        return status
    return run(poll(), 30)


def remote_shutdown_is_clean(server: ChatbxServer, remote: Any) -> None:
    """Stop ``remote`` (anything with stop()): its <stream:error><system-shutdown/>
    closes chatbx's streams to it quietly, without a stream error of chatbx's."""
    remote.stop()
    status = wait_status(server, lambda s: not s["incoming"]
                         and not any(o["state"] == "ready" for o in s["outgoing"]))
    assert not status["incoming"] and not any(o["state"] == "ready" for o in status["outgoing"]), status
    assert "stream-error" not in server.log_text()


@pytest.mark.parametrize("with_ca,method", [(True, "sasl-external"), (False, "dialback")],
                         ids=["trusted-ca-sasl-external", "self-signed-dialback"])
def test_two_servers_federate(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path,
                              with_ca: bool, method: str) -> None:
    """Users of two chatbx servers subscribe, see presence, chat both ways and query
    the other server; the streams authenticate with SASL EXTERNAL when a trusted
    CA signed the certificates, with dialback when they are self-signed. A's
    stream to B is bidirectional (XEP-0288): B answers on it."""
    a, b = start_pair(chatbx_server, tmp_path, with_ca)
    run(scenario(a, b, offline=True), 90)
    status = wait_status(a, lambda s: any(o["remote"] == B and o.get("auth") for o in s["outgoing"]))
    out = [o for o in status["outgoing"] if o["remote"] == B]
    assert out and out[0]["auth"] == method and out[0]["state"] == "ready", status
    assert out[0]["bidi"] and out[0].get("via") is None, status  # A's own stream
    text = a.ctl("s2s", "status").stdout
    assert f"{A} -> {B}  ready  {method}  bidi" in text
    b_status = wait_status(b, lambda s: any(o["remote"] == A and o.get("auth") for o in s["outgoing"]))
    b_out = [o for o in b_status["outgoing"] if o["remote"] == A]
    assert b_out[0]["state"] == "ready" and b_out[0]["auth"] == method, b_status
    if with_ca:
        # One TCP connection carries both directions: B opened none of its own.
        assert b_out[0]["via"] == "incoming" and not status["incoming"], (status, b_status)
    remote_shutdown_is_clean(a, b)


def test_two_servers_without_bidi(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path) -> None:
    """[s2s] bidi = false on both: each server sends on its own outgoing stream
    and receives on an incoming one (RFC 6120's two connections)."""
    a, b = start_pair(chatbx_server, tmp_path, True, extra_s2s="bidi = false\n")
    run(scenario(a, b), 90)
    status = wait_status(a, lambda s: any(o["remote"] == B and o.get("auth") for o in s["outgoing"])
                         and any(B in i["remote"] for i in s["incoming"]))
    out = [o for o in status["outgoing"] if o["remote"] == B]
    assert out[0]["auth"] == "sasl-external" and not out[0]["bidi"], status
    assert any(B in i["remote"] and i["auth"] == "sasl-external" and not i["bidi"]
               for i in status["incoming"]), status


def test_direct_tls_federation(chatbx_server: Callable[..., ChatbxServer], tmp_path: Path) -> None:
    """XEP-0368: with only direct-TLS s2s ports ([listen] s2s_tls, routes
    "tls:HOST:PORT") the servers federate the same way (SASL EXTERNAL)."""
    a, b = start_pair(chatbx_server, tmp_path, with_ca=True, direct_tls=True)
    run(scenario(a, b), 90)
    status = wait_status(a, lambda s: any(o["remote"] == B and o.get("auth") for o in s["outgoing"]))
    out = [o for o in status["outgoing"] if o["remote"] == B]
    assert out[0]["auth"] == "sasl-external" and out[0]["secure"], status
