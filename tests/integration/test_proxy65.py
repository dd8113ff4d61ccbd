"""SOCKS5 Bytestreams proxy (XEP-0065) against the real server on
127.0.0.1: slixmpp's xep_0065 sends a file from alice to bob through
proxy.localhost; two raw SOCKS5 clients relay a megabyte at the configured
bandwidth."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import pytest

from conftest import run, slix_close, slix_login

pytestmark = pytest.mark.integration

NS = "http://jabber.org/protocol/bytestreams"


async def streamhost(client: Any) -> tuple[str, str, int]:
    """Find the proxy in the server's disco#items and ask its address."""
    items = await client.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
    for jid, _, _ in items["disco_items"]["items"]:
        info = await client.plugin["xep_0030"].get_info(jid=jid, timeout=10)
        if ("proxy", "bytestreams") in [i[:2] for i in info["disco_info"]["identities"]]:
            result = await client.plugin["xep_0065"].get_network_address(jid, timeout=10)
            host = result["socks"]["streamhost"]
            return str(host["jid"]), host["host"], int(host["port"])
    raise AssertionError(f"no bytestreams proxy in {items}")


def test_slixmpp_sends_file_through_proxy(chatbx_server: Any) -> None:
    """alice's xep_0065 discovers proxy.localhost, offers it to bob, bob's
    client connects and answers streamhost-used, alice connects and
    activates; 200 KB go from alice to bob unchanged."""
    server = chatbx_server(proxy_port=0)
    data = os.urandom(200000)

    async def scenario() -> None:
        alice = await slix_login(server, "alice@localhost/sender")
        bob = await slix_login(server, "bob@localhost/receiver")
        try:
            for client in (alice, bob):
                client.register_plugin("xep_0030")
                client.register_plugin("xep_0065", {"auto_accept": True})
            assert (await streamhost(alice))[1:] == ("127.0.0.1", server.proxy_port)
            got = bytearray()
            done = asyncio.get_running_loop().create_future()

            def on_data(chunk: bytes) -> None:
                got.extend(chunk)
                if len(got) >= len(data) and not done.done():
                    done.set_result(None)

            bob.add_event_handler("socks5_data", on_data)
            sock = await alice.plugin["xep_0065"].handshake(bob.boundjid.full, timeout=10)
            assert sock is not None, "handshake failed"
            for i in range(0, len(data), 16384):
                await sock.write(data[i:i + 16384])
            await asyncio.wait_for(done, 20)
            assert bytes(got) == data
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(scenario())


async def socks5_connect(port: int, dst: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw XEP-0065 SOCKS5 client: no auth, CONNECT DST.ADDR:0."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x05\x01\x00")
    assert await reader.readexactly(2) == b"\x05\x00"
    writer.write(b"\x05\x01\x00\x03\x28" + dst.encode() + b"\x00\x00")
    assert await reader.readexactly(47) == b"\x05\x00\x00\x03\x28" + dst.encode() + b"\x00\x00"
    return reader, writer


def test_raw_socks5_clients_relay_at_bounded_bandwidth(chatbx_server: Any) -> None:
    """Two raw SOCKS5 clients with the same DST.ADDR: nothing passes before
    alice activates; then 1 MB arrives intact, no faster than the 400 KB/s
    configured; a client of another account cannot activate it."""
    server = chatbx_server(proxy_port=0, extra_config="[modules.proxy65]\nbandwidth = 400000\n")
    data = os.urandom(1_000_000)

    async def scenario() -> None:
        alice = await slix_login(server, "alice@localhost/sender")
        carol = await slix_login(server, "carol@localhost/x")
        target_jid = "bob@localhost/receiver"
        sid = "raw-1"
        dst = hashlib.sha1((sid + alice.boundjid.full + target_jid).encode()).hexdigest()
        try:
            t_reader, t_writer = await socks5_connect(server.proxy_port, dst)
            r_reader, r_writer = await socks5_connect(server.proxy_port, dst)
            r_writer.write(b"before")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(t_reader.read(1), 0.3)

            async def activate(client: Any) -> Any:
                from slixmpp.xmlstream import ET

                iq = client.Iq()
                iq["type"], iq["to"] = "set", "proxy.localhost"
                query = ET.fromstring(f"<query xmlns='{NS}' sid='{sid}'><activate>{target_jid}</activate></query>")
                iq.append(query)
                return await iq.send(timeout=10)

            from slixmpp.exceptions import IqError

            with pytest.raises(IqError) as refused:
                await activate(carol)
            assert refused.value.condition == "item-not-found"
            await activate(alice)
            assert await asyncio.wait_for(t_reader.readexactly(6), 5) == b"before"
            started = time.monotonic()
            r_writer.write(data)
            got = await asyncio.wait_for(t_reader.readexactly(len(data)), 30)
            elapsed = time.monotonic() - started
            assert got == data
            # 1 MB at 400 KB/s after a 400 KB burst: at least ~1.5 s.
            assert elapsed >= 1.3, elapsed
            t_writer.write(b"thanks")
            assert await asyncio.wait_for(r_reader.readexactly(6), 5) == b"thanks"
            r_writer.close()
            assert await asyncio.wait_for(t_reader.read(), 5) == b""  # the other side is closed too
            t_writer.close()
        finally:
            await slix_close(alice)
            await slix_close(carol)

    run(scenario())
