"""A real-time block list across two chatbx servers: B hosts the list on
its pubsub.b.localhost service, A subscribes to it over s2s
(``[modules.rtbl]``), fetches the items and then drops stanzas from the
listed JIDs; an item published later reaches A as a notification."""

from __future__ import annotations

import asyncio
import hashlib
import time
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from conftest import CLIENT_TIMEOUT, Inbox, free_port, manual_subscriptions, run, slix_close, slix_login

pytestmark = pytest.mark.integration

A, B = "a.localhost", "b.localhost"
NODE = "muc_bans_sha256"


def _hash(jid: str) -> str:
    return hashlib.sha256(jid.encode()).hexdigest()


async def _publish(client: Any, item_id: str) -> None:
    """Publish one xmppbl-style item (a XEP-0377 report as payload)."""
    payload = ET.Element("{urn:xmpp:reporting:1}report", reason="urn:xmpp:reporting:spam")
    await client.plugin["xep_0060"].publish(f"pubsub.{B}", NODE, id=item_id, payload=payload,
                                            timeout=CLIENT_TIMEOUT)


def _wait_log(server: Any, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log:\n{server.log_text()[-4000:]}")
        time.sleep(0.2)  # polling the log file, bounded by the deadline


def test_listed_remote_jids_are_dropped(chatbx_server):
    """Bob (B) publishes the hash of spammer@b.localhost on B's pubsub node;
    A (rtbl configured, retrying until the node exists) fetches it: the
    spammer's message and subscription request never reach Alice, Bob's
    message does. Bob then lists himself: the notification reaches A over
    s2s and his next message is dropped too."""
    ports = {A: free_port(), B: free_port()}
    b = chatbx_server(users={f"bob@{B}": "pw-bob", f"spammer@{B}": "pw-spammer"}, domains=[B],
                      s2s_port=ports[B],
                      extra_config=f'[s2s]\nstatic_routes = {{ "{A}" = "127.0.0.1:{ports[A]}" }}\n')
    a = chatbx_server(users={f"alice@{A}": "pw-alice"}, domains=[A], s2s_port=ports[A],
                      extra_config=(f'[s2s]\nstatic_routes = {{ "{B}" = "127.0.0.1:{ports[B]}", "pubsub.{B}" = "127.0.0.1:{ports[B]}" }}\n'
                                    f'[modules.rtbl]\nservice = "pubsub.{B}"\nnode = "{NODE}"\n'
                                    "retry = 1.0\ntimeout = 10.0\n"))

    async def main() -> None:
        bob = await slix_login(b, f"bob@{B}/x")
        bob.register_plugin("xep_0060")
        spammer = await slix_login(b, f"spammer@{B}/x")
        alice = await slix_login(a, f"alice@{A}/x")
        manual_subscriptions(alice)
        try:
            got, pres = Inbox(alice, "message"), Inbox(alice, "presence")
            alice.send_presence()
            await _publish(bob, _hash(f"spammer@{B}"))
            await asyncio.get_running_loop().run_in_executor(
                None, _wait_log, a, f"rtbl: 1 entries from {NODE} on pubsub.{B}")
            spammer.send_message(mto=f"alice@{A}", mbody="spam", mtype="chat")
            spammer.send_presence(pto=f"alice@{A}", ptype="subscribe")
            bob.send_message(mto=f"alice@{A}", mbody="hello", mtype="chat")
            await got.wait(lambda m: m["body"] == "hello", what="bob's message")
            await _publish(bob, _hash(f"bob@{B}"))
            await asyncio.get_running_loop().run_in_executor(  # the notification, B -> A
                None, _wait_log, a, f"rtbl: 1 added, 0 removed by pubsub.{B} (2 entries)")
            bob.send_message(mto=f"alice@{A}", mbody="after the listing", mtype="chat")
            spammer.send_message(mto=f"alice@{A}", mbody="spam again", mtype="chat")
            await got.none(lambda m: m["body"] in ("spam", "spam again", "after the listing"), 2.0)
            await pres.none(lambda p: p["type"] == "subscribe", 0.1)
        finally:
            for c in (bob, spammer, alice):
                await slix_close(c)

    run(main(), timeout=90)
