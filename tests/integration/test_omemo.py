"""OMEMO (XEP-0384) end to end with slixmpp-omemo against the real server.

Two accounts with two devices each: every device publishes its device
lists and bundles in both namespaces (``eu.siacs.conversations.axolotl``
and ``urn:xmpp:omemo:2``) through PEP with publish-options (open access,
max_items as the library asks), fetches the others', and they exchange
encrypted messages, also to a device that was offline when the message
was sent (offline storage).

slixmpp-omemo 2.2.0 encrypts chat messages with the legacy namespace only
(its omemo:2 path needs Stanza Content Encryption, which it does not have
yet); the omemo:2 exchange is driven through the library's session manager
directly (encrypt, serialize, send; parse, decrypt), so both namespaces'
device lists, bundles and messages go through the server.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest

from conftest import (CLIENT_TIMEOUT, Inbox, make_slix, manual_subscriptions, run, slix_close,
                      subscribe_mutually)

pytestmark = pytest.mark.integration

omemo = pytest.importorskip("omemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

import oldmemo  # noqa: E402
import twomemo  # noqa: E402
from omemo.storage import Just, Maybe, Nothing, Storage  # noqa: E402
from slixmpp.plugins import register_plugin  # noqa: E402
from slixmpp.stanza import Message  # noqa: E402

ALICE, BOB = "alice@localhost", "bob@localhost"
TWOMEMO, OLDMEMO = twomemo.twomemo.NAMESPACE, oldmemo.oldmemo.NAMESPACE


class MemoryStorage(Storage):
    """The OMEMO library's storage in a dict: one per device, kept across
    reconnections of that device."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}

    async def _load(self, key: str) -> Maybe[Any]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: Any) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class TestOMEMO(slixmpp_omemo.XEP_0384):
    """slixmpp-omemo with blind trust (BTBV) and per-client storage."""

    __test__ = False
    default_config = {"fallback_message": "This message is OMEMO encrypted.", "omemo_storage": None}

    @property
    def storage(self) -> Storage:
        return self.omemo_storage  # type: ignore[attr-defined]

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: Any, identifier: Optional[str]) -> None:
        return None

    async def _prompt_manual_trust(self, manually_trusted: Any, identifier: Optional[str]) -> None:
        raise AssertionError("BTBV trusts blindly; no manual decision expected")


register_plugin(TestOMEMO)


class Device:
    """One logged-in OMEMO client."""

    def __init__(self, client: Any, storage: MemoryStorage) -> None:
        self.client = client
        self.storage = storage
        self.messages = Inbox(client, "message")
        self.presences = Inbox(client, "presence")

    @property
    def omemo(self) -> Any:
        return self.client.plugin["xep_0384"]

    async def device_id(self) -> int:
        sm = await self.omemo.get_session_manager()
        return (await sm.get_own_device_information())[0].device_id


async def connect(server: Any, jid: str, storage: MemoryStorage) -> Device:
    """Log in the way an OMEMO app does: caps, PEP, pubsub, OMEMO; roster,
    initial presence; wait until the library has published its data."""
    client = make_slix(jid, server.users[jid.split("/")[0]])
    client.use_message_ids = True
    for plugin in ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0334"):
        client.register_plugin(plugin)
    client.register_plugin("xep_0384", {"omemo_storage": storage}, module=__name__)
    manual_subscriptions(client)
    device = Device(client, storage)
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()
    initialized: asyncio.Future = loop.create_future()
    client.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    client.add_event_handler("omemo_initialized",
                             lambda *_: initialized.done() or initialized.set_result(True))
    client.add_event_handler("failed_all_auth", lambda _: started.done() or started.set_exception(
        AssertionError(f"{jid}: login failed")))
    client.connect("127.0.0.1", server.c2s_port)
    await asyncio.wait_for(started, CLIENT_TIMEOUT)
    await client.get_roster()
    client.send_presence()
    await asyncio.wait_for(initialized, 30)
    return device


async def own_devices_published(device: Device, bare: str, count: int) -> None:
    """Wait until ``bare``'s device lists in both namespaces name ``count`` devices."""
    xep_0060 = device.client.plugin["xep_0060"]
    from slixmpp import JID

    for _ in range(100):
        counts = []
        for node, tag in (("urn:xmpp:omemo:2:devices", f"{{{TWOMEMO}}}device"),
                          ("eu.siacs.conversations.axolotl.devicelist", f"{{{OLDMEMO}}}device")):
            try:
                iq = await xep_0060.get_items(JID(bare), node, max_items=1)
            except Exception:  # noqa: BLE001 - not there yet
                counts.append(0)
                continue
            counts.append(len(list(iq.xml.iter(tag))))
        if all(c >= count for c in counts):
            return
        await asyncio.sleep(0.1)  # polling the server, bounded
    raise AssertionError(f"{bare} device lists never reached {count} devices: {counts}")


async def send_oldmemo(sender: Device, to: str, body: str) -> None:
    msg = sender.client.make_message(mto=to, mtype="chat")
    msg["body"] = body
    encrypted, errors = await sender.omemo.encrypt_message(msg, msg["to"])
    assert encrypted is not None, errors
    assert {el.tag for el in encrypted.xml} >= {f"{{{OLDMEMO}}}encrypted"}
    encrypted.send()


async def receive_oldmemo(receiver: Device, body: str) -> Message:
    async def decrypts() -> Message:
        seen: set[int] = set()
        while True:
            for stanza in list(receiver.messages.items):
                if id(stanza) in seen or OLDMEMO not in receiver.omemo.is_encrypted(stanza):
                    continue
                seen.add(id(stanza))
                if stanza["body"] == "":
                    continue  # key exchange / heartbeat messages of the library
                try:
                    plain, _ = await receiver.omemo.decrypt_message(stanza)
                except Exception:  # noqa: BLE001 - a message not for this device
                    continue
                if plain["body"] == body:
                    return plain
            await asyncio.sleep(0.05)  # waiting for the next stanza, bounded below

    return await asyncio.wait_for(decrypts(), CLIENT_TIMEOUT * 2)


async def send_twomemo(sender: Device, to: str, text: str) -> None:
    sm = await sender.omemo.get_session_manager()
    await sender.omemo.refresh_device_lists({sender.client.boundjid.__class__(to)})
    messages, errors = await sm.encrypt(frozenset({to}), {TWOMEMO: text.encode()},
                                        backend_priority_order=[TWOMEMO])
    [message] = [m for m in messages if m.namespace == TWOMEMO]
    # A fallback body, as clients send (slixmpp fires "message" only with one).
    stanza = sender.client.make_message(mto=to, mtype="chat", mbody="[OMEMO:2 encrypted]")
    stanza.append(twomemo.etree.serialize_message(message))
    stanza.enable("store")
    stanza.send()


async def receive_twomemo(receiver: Device, sender: str, text: str) -> None:
    sm = await receiver.omemo.get_session_manager()

    problems: list[str] = []

    async def decrypts() -> None:
        seen: set[int] = set()
        while True:
            for stanza in list(receiver.messages.items):
                if id(stanza) in seen:
                    continue
                seen.add(id(stanza))
                el = stanza.xml.find(f"{{{TWOMEMO}}}encrypted")
                if el is None:
                    continue
                try:
                    message = twomemo.etree.parse_message(el, sender)
                    plain, _, _ = await sm.decrypt(message)
                except Exception as exc:  # noqa: BLE001 - not for this device
                    problems.append(repr(exc))
                    continue
                if plain == text.encode():
                    return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(decrypts(), CLIENT_TIMEOUT * 2)
    except asyncio.TimeoutError:
        raise AssertionError(f"no omemo:2 message {text!r}; {problems}; got "
                             f"{[str(m) for m in receiver.messages.items]}") from None


def test_omemo_two_accounts_two_devices_each(chatbx_server, backend) -> None:
    """Alice (a1, a2) and Bob (b1, b2), mutual contacts, exchange OMEMO
    messages in both namespaces; a message sent while every device of Bob
    was offline is decrypted by b2 when it comes online."""
    server = chatbx_server(db_url=backend)
    stores = {name: MemoryStorage() for name in ("a1", "a2", "b1", "b2")}

    async def main() -> None:
        devices: list[Device] = []
        try:
            a1 = await connect(server, f"{ALICE}/a1", stores["a1"])
            b1 = await connect(server, f"{BOB}/b1", stores["b1"])
            devices += [a1, b1]
            await subscribe_mutually(a1.client, a1.presences, b1.client, b1.presences)
            a2 = await connect(server, f"{ALICE}/a2", stores["a2"])
            b2 = await connect(server, f"{BOB}/b2", stores["b2"])
            devices += [a2, b2]
            # Each account's lists name both of its devices, in both namespaces.
            await own_devices_published(a1, ALICE, 2)
            await own_devices_published(a1, BOB, 2)

            # Legacy namespace through the library's message API: both of
            # Bob's devices decrypt, then Alice's devices decrypt the reply.
            await send_oldmemo(a1, BOB, "hello bob (axolotl)")
            await receive_oldmemo(b1, "hello bob (axolotl)")
            await receive_oldmemo(b2, "hello bob (axolotl)")
            await send_oldmemo(b2, ALICE, "hello alice (axolotl)")
            await receive_oldmemo(a1, "hello alice (axolotl)")
            await receive_oldmemo(a2, "hello alice (axolotl)")

            # omemo:2 through the session manager.
            await send_twomemo(b1, ALICE, "hello alice (omemo:2)")
            await receive_twomemo(a1, BOB, "hello alice (omemo:2)")
            await receive_twomemo(a2, BOB, "hello alice (omemo:2)")
            await send_twomemo(a2, BOB, "hello bob (omemo:2)")
            await receive_twomemo(b1, ALICE, "hello bob (omemo:2)")

            # Bob goes offline on both devices; Alice writes; b2 comes back.
            for dev in (b1, b2):
                await slix_close(dev.client)
                devices.remove(dev)
            await send_oldmemo(a1, BOB, "while you were away")
            await send_twomemo(a1, BOB, "while you were away (omemo:2)")
            await asyncio.sleep(0.5)  # let the server store them before b2 logs in
            b2 = await connect(server, f"{BOB}/b2", stores["b2"])
            devices.append(b2)
            await receive_oldmemo(b2, "while you were away")
            await receive_twomemo(b2, ALICE, "while you were away (omemo:2)")
        finally:
            for dev in devices:
                await slix_close(dev.client)

    run(main(), timeout=180)
