"""Several chatbx nodes on one PostgreSQL and one Redis (DESIGN.md, "Cluster").

Each test starts its own ``redis-server`` on a free loopback port (never
the system one), stopped by PID, and two twistd chatbx nodes on the same
throwaway PostgreSQL database. Users on different nodes subscribe, see each
other's presence and chat; a node killed with SIGKILL: its users' contacts
see them go offline within the heartbeat bound, and messages to them (also
one already on its way to the dead node) go to offline storage. A client
(slixmpp, XEP-0198) resumes on another node the session that hibernates on
the first; when that node was killed, it binds anew and gets what was sent
meanwhile from offline storage.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import CLIENT_TIMEOUT, Inbox, free_port, manual_subscriptions, run, slix_close, slix_login, subscribe_mutually

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"
#: a dead node's sessions vanish within 10 s (cluster/node.py); a margin
#: for a loaded machine
OFFLINE_WITHIN = 15.0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port, stopped by PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") or os.environ.get("CHATBX_REQUIRE_CLIENTS") == "1":
            pytest.fail("redis-server is not installed (Debian package redis-server)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                     text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                out = ""
            if "PONG" in out:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)  # polling the port, bounded by the deadline
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# The fixtures are asked for as redis_url, postgres_url, chatbx_server: the
# nodes stop before the database and Redis they use.
def _nodes(chatbx_server: Any, postgres_url: str, redis_url: str, count: int = 2,
           limits: str = "") -> list[Any]:
    nodes = []
    for i in range(count):
        nodes.append(chatbx_server(
            db_url=postgres_url, users=None if i == 0 else {},
            extra_config=f'[cluster]\nredis = "{redis_url}"\nnode = "node{i}"\n{limits}'))
    for node in nodes[1:]:
        node.users = nodes[0].users
    return nodes


async def _online(server: Any, jid: str) -> tuple[Any, Inbox, Inbox]:
    client = await slix_login(server, jid)
    manual_subscriptions(client)
    presences, messages = Inbox(client, "presence"), Inbox(client, "message")
    await client.get_roster()
    client.send_presence()
    return client, presences, messages


def _available_from(full: str) -> Any:
    return lambda p: p["type"] in ("", "available", None) and p["from"].full == full


async def _friends(node0: Any, node1: Any) -> tuple[tuple[Any, Inbox, Inbox], tuple[Any, Inbox, Inbox]]:
    """Alice online on node0, Bob on node1, subscribed both ways, each
    having seen the other's presence."""
    alice, a_pres, a_msgs = await _online(node0, f"{ALICE}/desk")
    bob, b_pres, b_msgs = await _online(node1, f"{BOB}/phone")
    try:
        await subscribe_mutually(alice, a_pres, bob, b_pres)
        await a_pres.wait(_available_from(f"{BOB}/phone"), what="bob's presence at alice")
        await b_pres.wait(_available_from(f"{ALICE}/desk"), what="alice's presence at bob")
    except BaseException:
        await slix_close(alice)
        await slix_close(bob)
        raise
    return (alice, a_pres, a_msgs), (bob, b_pres, b_msgs)


def test_users_on_two_nodes_subscribe_see_presence_and_chat(redis_url, postgres_url, chatbx_server):
    """Alice on node0 and Bob on node1 add each other, each sees the
    other's presence (also after a fresh login on the other node), and chat
    messages go both ways, to the bare and to the full JID."""
    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        (alice, a_pres, a_msgs), (bob, b_pres, b_msgs) = await _friends(node0, node1)
        try:
            alice.send_message(mto=BOB, mbody="hi bob", mtype="chat")
            await b_msgs.wait(lambda m: m["body"] == "hi bob", what="alice's message")
            bob.send_message(mto=f"{ALICE}/desk", mbody="hi alice", mtype="chat")
            await a_msgs.wait(lambda m: m["body"] == "hi alice", what="bob's message")
            status = node0.ctl("cluster", "status").stdout
            assert "2 nodes, 2 live" in status, status
            assert "node0  live  sessions=1" in status and "node1  live  sessions=1" in status, status
            # A second resource of Bob's logs in on node1: node1 answers its
            # probe with the presence of Alice's session on node0, and Alice
            # sees it come online.
            bob2, b2_pres, _ = await _online(node1, f"{BOB}/laptop")
            try:
                await b2_pres.wait(_available_from(f"{ALICE}/desk"), what="alice's presence at bob/laptop")
                await a_pres.wait(_available_from(f"{BOB}/laptop"), what="bob/laptop's presence")
            finally:
                await slix_close(bob2)
        finally:
            await slix_close(alice)
            await slix_close(bob)

    run(main(), timeout=90)


async def _carbon_after_retries(sender: Any, to: str, inbox: Inbox, kind: str) -> None:
    """Send chats from ``sender`` until one shows in ``inbox`` as a ``kind``
    carbon: the node that makes the copy learns that carbons are on for a
    resource on another node through the directory (within milliseconds)."""
    for attempt in range(50):
        body = f"{kind} {attempt}"
        sender.send_message(mto=to, mbody=body, mtype="chat")
        try:
            await inbox.wait(lambda m: m[f"carbon_{kind}"]["body"] == body, timeout=0.3,
                             what=f"a {kind} carbon")
            return
        except AssertionError:
            continue
    raise AssertionError(f"no {kind} carbon reached the other node")


def test_carbons_reach_a_resource_on_another_node(redis_url, postgres_url, chatbx_server):
    """Alice's desk on node0 and phone on node1, both with carbons on
    (slixmpp xep_0280), Bob on node1: what the desk sends to Bob reaches the
    phone as a sent carbon (XEP-0280 §8), made on node0; what Bob sends to
    the phone reaches the desk as a received carbon (§7), made on node1."""
    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        desk, _, _ = await _online(node0, f"{ALICE}/desk")
        phone, _, phone_msgs = await _online(node1, f"{ALICE}/phone")
        bob, _, bob_msgs = await _online(node1, f"{BOB}/pc")
        try:
            for client in (desk, phone):
                client.register_plugin("xep_0280")
                await client.plugin["xep_0280"].enable(timeout=CLIENT_TIMEOUT)
            phone_sent = Inbox(phone, "carbon_sent")
            desk_received = Inbox(desk, "carbon_received")
            await _carbon_after_retries(desk, f"{BOB}/pc", phone_sent, "sent")
            got = await bob_msgs.wait(lambda m: m["body"].startswith("sent "), what="the desk's chat")
            assert got["from"].full == f"{ALICE}/desk"
            carbon = (await phone_sent.wait(lambda m: True, what="the sent carbon"))
            assert carbon["carbon_sent"]["from"].full == f"{ALICE}/desk"
            assert carbon["carbon_sent"]["to"].full == f"{BOB}/pc"
            await _carbon_after_retries(bob, f"{ALICE}/phone", desk_received, "received")
            await phone_msgs.wait(lambda m: m["body"].startswith("received "), what="bob's chat")
            # Carbons off on the desk: Bob's next message to the phone is
            # not copied there once node1 knows it.
            await desk.plugin["xep_0280"].disable(timeout=CLIENT_TIMEOUT)
            for attempt in range(50):
                bob.send_message(mto=f"{ALICE}/phone", mbody=f"off {attempt}", mtype="chat")
                await phone_msgs.wait(lambda m, a=attempt: m["body"] == f"off {a}",
                                      what="bob's chat on the phone")
                try:
                    await desk_received.none(lambda m, a=attempt: m["carbon_received"]["body"]
                                             == f"off {a}", within=0.3)
                    break
                except AssertionError:
                    continue
            else:
                raise AssertionError("the desk kept getting carbons after disabling them")
        finally:
            for client in (desk, phone, bob):
                await slix_close(client)

    run(main(), timeout=90)


def _kill(node: Any) -> float:
    """SIGKILL a node's process group (no clean stop); returns when it was killed."""
    proc, node.proc = node.proc, None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return time.monotonic()


async def _bob_receives(node: Any, full: str, *bodies: str) -> None:
    """Bob logs in on ``node`` as ``full`` and gets these messages (stored offline)."""
    bob = await slix_login(node, full)
    msgs = Inbox(bob, "message")
    bob.send_presence()
    try:
        for body in bodies:
            await msgs.wait(lambda m, body=body: m["body"] == body, what=f"the message {body!r}")
    finally:
        await slix_close(bob)


def test_killed_node_users_go_offline_and_messages_are_stored(redis_url, postgres_url, chatbx_server):
    """node1 (Bob's) is killed with SIGKILL: Alice sees Bob go unavailable
    within the bound; a message sent to Bob's full JID right after the kill
    (on its way to the dead node) and one sent after he went offline both
    wait in offline storage and reach Bob when he logs in on node0."""
    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        (alice, a_pres, _), (bob, _, _) = await _friends(node0, node1)
        try:
            killed = _kill(node1)
            alice.send_message(mto=f"{BOB}/phone", mbody="in flight", mtype="chat")
            await a_pres.wait(lambda p: p["type"] == "unavailable" and p["from"].full == f"{BOB}/phone",
                              timeout=OFFLINE_WITHIN, what="bob's unavailable presence")
            took = time.monotonic() - killed
            print(f"bob unavailable at alice {took:.1f}s after node1 was killed")
            assert took < OFFLINE_WITHIN
            alice.send_message(mto=BOB, mbody="while offline", mtype="chat")
        finally:
            bob.abort()
        try:
            await _bob_receives(node0, f"{BOB}/phone", "in flight", "while offline")
        finally:
            await slix_close(alice)

    run(main(), timeout=120)


def test_node_restarted_under_its_name_ends_its_old_sessions(redis_url, postgres_url, chatbx_server):
    """node1 (Bob's) is killed with SIGKILL and started again at once under
    the same name, so its heartbeat never looks stale: Alice still sees Bob's
    old session go unavailable, and a message to it waits offline."""
    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        (alice, a_pres, _), (bob, _, _) = await _friends(node0, node1)
        try:
            killed = _kill(node1)
            node1.start()
            print(f"node1 listening again {time.monotonic() - killed:.1f}s after the kill")
            await a_pres.wait(lambda p: p["type"] == "unavailable" and p["from"].full == f"{BOB}/phone",
                              timeout=OFFLINE_WITHIN, what="bob's unavailable presence")
            alice.send_message(mto=f"{BOB}/phone", mbody="after the restart", mtype="chat")
        finally:
            bob.abort()
        try:
            await _bob_receives(node1, f"{BOB}/laptop", "after the restart")
        finally:
            await slix_close(alice)

    run(main(), timeout=120)


def _sasl_condition(element: Any) -> str:
    from rawclient import NS_SASL, q
    if element.tag == q(NS_SASL, "success"):
        return "success"
    return [c.tag.split("}")[1] for c in element if c.tag != q(NS_SASL, "text")][0]


def _plain(port: int, user: str, password: str) -> str:
    from rawclient import RawClient
    client = RawClient(port)
    try:
        client.open_stream()
        client.starttls()
        return _sasl_condition(client.plain(user, password))
    finally:
        client.close()


def _closed_by_server(sock: Any, timeout: float) -> bool:
    """Whether the server ends the TCP connection within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:  # socket.timeout
        return False


def test_login_and_connection_limits_hold_across_nodes(redis_url, postgres_url, chatbx_server):
    """The failed-login limit and the connections per address are the
    cluster's, not each node's: three wrong passwords for Alice spread over
    two nodes refuse her right one on either; with three connections
    allowed per address, a fourth is closed even though each node has only
    two (cluster/limits.py)."""
    limits = ("[limits]\nauth_failure_delay = 0.01\nauth_max_failures = 3\n"
              "max_connections_per_ip = 3\n")
    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url, limits=limits)
    right = node0.users[ALICE]
    assert [_plain(node0.c2s_port, "alice", "guess"), _plain(node1.c2s_port, "alice", "guess"),
            _plain(node0.c2s_port, "alice", "guess")] == ["not-authorized"] * 3
    assert _plain(node1.c2s_port, "alice", right) == "temporary-auth-failure"

    # The logins' connections are closed; their counts leave Redis shortly.
    deadline = time.monotonic() + 10
    while any(_redis_cli(redis_url, "HLEN", f"chatbx:conns:{n}") != "0" for n in ("node0", "node1")):
        assert time.monotonic() < deadline, "connection counts stayed in Redis"
        time.sleep(0.05)  # polling Redis, bounded by the deadline
    import socket
    held = []
    try:
        for port in (node0.c2s_port, node1.c2s_port, node0.c2s_port):
            held.append(socket.create_connection(("127.0.0.1", port)))
        assert not any(_closed_by_server(s, 0.5) for s in held)
        fourth = socket.create_connection(("127.0.0.1", node1.c2s_port))
        held.append(fourth)
        assert _closed_by_server(fourth, 10)
        assert not any(_closed_by_server(s, 0.2) for s in held[:3])
        # A closed connection no longer counts.
        held.pop(0).close()
        deadline = time.monotonic() + 10
        while sum(int(_redis_cli(redis_url, "HGET", f"chatbx:conns:{n}", "127.0.0.1") or 0)
                  for n in ("node0", "node1")) != 2:
            assert time.monotonic() < deadline, "the closed connection stayed counted"
            time.sleep(0.05)  # polling Redis, bounded by the deadline
        again = socket.create_connection(("127.0.0.1", node1.c2s_port))
        held.append(again)
        assert not _closed_by_server(again, 1.0)
    finally:
        for sock in held:
            sock.close()


def test_federation_with_a_cluster(redis_url, postgres_url, chatbx_server):
    """Domain a.localhost is served by two nodes; b.localhost (one server)
    reaches it through node1's s2s port only, without bidirectional streams,
    while Alice is on node0: her stanzas leave on node0's own outgoing
    stream, Bob's arrive on node1 (dialback verified there with the key
    node0 made: the secret is the database's) and reach her through the
    cluster. Subscriptions, presence both ways, chat, IQs, unavailable."""
    from test_federation import A, ALICE, B, BOB, scenario, wait_status

    ports = {"a0": free_port(), "a1": free_port(), "b": free_port()}
    nodes = []
    for i in range(2):
        nodes.append(chatbx_server(
            db_url=postgres_url, users={ALICE: "pw-alice"} if i == 0 else {}, domains=[A],
            s2s_port=ports[f"a{i}"],
            extra_config=(f'[cluster]\nredis = "{redis_url}"\nnode = "node{i}"\n'
                          f'[s2s]\nbidi = false\nstatic_routes = {{ "{B}" = "127.0.0.1:{ports["b"]}" }}\n')))
    nodes[1].users = nodes[0].users
    remote = chatbx_server(users={BOB: "pw-bob"}, domains=[B], s2s_port=ports["b"],
                           extra_config=(f'[s2s]\nbidi = false\n'
                                         f'static_routes = {{ "{A}" = "127.0.0.1:{ports["a1"]}" }}\n'))
    run(scenario(nodes[0], remote), 120)
    in1 = wait_status(nodes[1], lambda s: any(B in i["remote"] for i in s["incoming"]))
    assert any(B in i["remote"] and i.get("auth") == "dialback" for i in in1["incoming"]), in1
    out0 = wait_status(nodes[0], lambda s: any(o["remote"] == B for o in s["outgoing"]))
    assert any(o["remote"] == B and o.get("auth") == "dialback" for o in out0["outgoing"]), out0


def test_room_with_occupants_on_three_nodes(redis_url, postgres_url, chatbx_server):
    """Alice, Bob and Carol, each on their own node, join one persistent
    room: every node sends the room's stanzas to the node that owns it, each
    sees the others join and gets every groupchat message once. The owning
    node is killed: another node takes the room over from the database and
    the two left rejoin it and chat."""
    nodes = _nodes(chatbx_server, postgres_url, redis_url, count=3)
    room = "team@conference.localhost"

    async def main() -> None:
        clients = []
        for node, jid in zip(nodes, (f"{ALICE}/desk", f"{BOB}/phone", "carol@localhost/web")):
            client = await slix_login(node, jid)
            client.register_plugin("xep_0045")
            clients.append((client, Inbox(client, "groupchat_presence"), Inbox(client, "message")))
            client.send_presence()
        (alice, a_pres, a_msgs), (bob, _, b_msgs), (carol, _, c_msgs) = clients
        try:
            await alice.plugin["xep_0045"].join_muc_wait(room, "Alice", timeout=10)
            await _iq_instant(alice, room, persistent=True)
            await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=10)
            await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", timeout=10)
            await a_pres.wait(lambda p: p["from"].full == f"{room}/Carol", what="carol joining, at alice")
            bob.send_message(mto=room, mbody="hello all", mtype="groupchat")
            for inbox in (a_msgs, b_msgs, c_msgs):
                got = await inbox.wait(lambda m: m["body"] == "hello all", what="bob's groupchat")
                assert got["from"].full == f"{room}/Bob"
            carol.send_message(mto=room, mbody="hi from carol", mtype="groupchat")
            await a_msgs.wait(lambda m: m["body"] == "hi from carol", what="carol's groupchat")
            assert sum(1 for m in a_msgs.items if m["body"] == "hello all") == 1

            # The owning node dies: the room is taken over from the database
            # by a surviving node; the others rejoin (no 201: not a new room).
            owner = _redis_cli(redis_url, "HGET", "chatbx:rooms", room)
            index = int(owner.removeprefix("node"))
            _kill(nodes[index])
            survivors = [c for i, c in enumerate(clients) if i != index]
            nicks = [n for i, n in enumerate(("Alice", "Bob", "Carol")) if i != index]
            # The owner's death is noticed: the reaper takes it off the node list.
            deadline = time.monotonic() + OFFLINE_WITHIN
            while _redis_cli(redis_url, "ZSCORE", "chatbx:nodes", owner):
                assert time.monotonic() < deadline, f"{owner} still listed"
                await asyncio.sleep(0.2)  # polling Redis, bounded by the deadline
            for (client, _, _), nick in zip(survivors, nicks):
                client.plugin["xep_0045"].leave_muc(room, nick)
            for (client, _, _), nick in zip(survivors, nicks):
                pres, _, _, _ = await client.plugin["xep_0045"].join_muc_wait(room, nick, timeout=15)
                codes = {int(x.get("code")) for x in pres.xml.iter(
                    "{http://jabber.org/protocol/muc#user}status")}
                assert 201 not in codes, "the room was created anew instead of taken over"
            survivors[0][0].send_message(mto=room, mbody="after takeover", mtype="groupchat")
            await survivors[1][2].wait(lambda m: m["body"] == "after takeover", what="message after takeover")
            assert _redis_cli(redis_url, "HGET", "chatbx:rooms", room) != owner
        finally:
            for client, _, _ in clients:
                await slix_close(client)

    run(main(), timeout=120)


async def _iq_instant(client: Any, room: str, persistent: bool = False) -> None:
    """XEP-0045 §10.1.2/§10.1.3: configure the new room (persistent: stored)."""
    import xml.etree.ElementTree as ET

    iq = client.Iq()
    iq["to"] = room
    iq["type"] = "set"
    field = ("<field var='muc#roomconfig_persistentroom'><value>1</value></field>"
             if persistent else "")
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/muc#owner'>"
                            f"<x xmlns='jabber:x:data' type='submit'>{field}</x></query>"))
    await iq.send(timeout=10)


def _wait_for_nodes(redis_url: str, nodes: list[str], server: Any, what: str) -> None:
    """Until Redis lists exactly ``nodes`` as the cluster (30 s at most)."""
    deadline = time.monotonic() + 30
    while set(_redis_cli(redis_url, "ZRANGE", "chatbx:nodes", "0", "-1").split()) != set(nodes):
        assert time.monotonic() < deadline, f"{what}:\n{server.log_text()[-3000:]}"
        time.sleep(0.1)  # polling Redis, bounded by the deadline


def _redis_cli(url: str, *args: str) -> str:
    port = url.rsplit(":", 1)[1].split("/")[0]
    return subprocess.run(["redis-cli", "-p", port, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()


async def _sm_client(node: Any, jid: str, password: str) -> tuple[Any, dict[str, Any]]:
    """slixmpp with XEP-0198 (resumable), logged in on ``node``, SM enabled;
    ``events`` counts session starts and signals resumption/disconnection."""
    from conftest import CLIENT_TIMEOUT, make_slix

    client = make_slix(jid, password)
    client.register_plugin("xep_0198")
    client.enable_starttls, client.enable_direct_tls = True, False
    manual_subscriptions(client)
    events: dict[str, Any] = {"starts": 0, "started": asyncio.Event(), "enabled": asyncio.Event(),
                              "resumed": asyncio.Event(), "disconnected": asyncio.Event(),
                              "failed": asyncio.Event()}

    def started(_: Any) -> None:
        events["starts"] += 1
        events["started"].set()

    client.add_event_handler("session_start", started)
    client.add_event_handler("sm_enabled", lambda _: events["enabled"].set())
    client.add_event_handler("session_resumed", lambda _: events["resumed"].set())
    client.add_event_handler("sm_failed", lambda _: events["failed"].set())
    client.add_event_handler("disconnected", lambda _: events["disconnected"].set())
    client.connect("127.0.0.1", node.c2s_port)
    await asyncio.wait_for(events["started"].wait(), CLIENT_TIMEOUT)
    await asyncio.wait_for(events["enabled"].wait(), CLIENT_TIMEOUT)
    return client, events


def test_session_resumes_on_another_node(redis_url, postgres_url, chatbx_server):
    """Alice (slixmpp, XEP-0198) is on node0, her contact Bob on node1. Her
    connection is cut; Bob writes to her; she reconnects to node1 and
    resumes (no new session): node0 hands her session over, she gets the
    message, and Bob never sees her go unavailable."""
    from conftest import CLIENT_TIMEOUT

    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        alice, events = await _sm_client(node0, f"{ALICE}/phone", node0.users[ALICE])
        a_pres, a_msgs = Inbox(alice, "presence"), Inbox(alice, "message")
        await alice.get_roster()
        alice.send_presence()
        bob, b_pres, b_msgs = await _online(node1, f"{BOB}/pc")
        try:
            await subscribe_mutually(alice, a_pres, bob, b_pres)
            await b_pres.wait(_available_from(f"{ALICE}/phone"), what="alice's presence at bob")
            alice.abort()
            await asyncio.wait_for(events["disconnected"].wait(), CLIENT_TIMEOUT)
            bob.send_message(mto=f"{ALICE}/phone", mbody="while away", mtype="chat")
            alice.connect("127.0.0.1", node1.c2s_port)
            await asyncio.wait_for(events["resumed"].wait(), CLIENT_TIMEOUT)
            await a_msgs.wait(lambda m: m["body"] == "while away", what="the message sent while away")
            assert events["starts"] == 1, "resumed, not a new session"
            # She goes on from node1; Bob (on node1) gets her reply, and never
            # saw an unavailable from her resource.
            alice.send_message(mto=f"{BOB}/pc", mbody="back", mtype="chat")
            await b_msgs.wait(lambda m: m["body"] == "back", what="alice's reply")
            flaps = [p for p in b_pres.items
                     if p["type"] == "unavailable" and p["from"].full == f"{ALICE}/phone"]
            assert not flaps, "bob saw alice go unavailable"
            status = node0.ctl("cluster", "status").stdout
            assert "node0  live  sessions=0" in status and "node1  live  sessions=2" in status, status
        finally:
            await slix_close(bob)
            await slix_close(alice)

    run(main(), timeout=90)


def test_resume_after_the_holder_was_killed_binds_anew_and_gets_offline(
        redis_url, postgres_url, chatbx_server):
    """Alice's session hibernates on node0, which is then killed (SIGKILL).
    Bob writes to her; she reconnects to node1: resumption fails with
    item-not-found, slixmpp binds a new session and she gets Bob's message
    from offline storage."""
    from conftest import CLIENT_TIMEOUT

    node0, node1 = _nodes(chatbx_server, postgres_url, redis_url)

    async def main() -> None:
        alice, events = await _sm_client(node0, f"{ALICE}/phone", node0.users[ALICE])
        a_msgs = Inbox(alice, "message")
        alice.send_presence()
        bob = await slix_login(node1, f"{BOB}/pc")
        try:
            alice.abort()
            await asyncio.wait_for(events["disconnected"].wait(), CLIENT_TIMEOUT)
            _kill(node0)
            bob.send_message(mto=f"{ALICE}/phone", mbody="to the dead node", mtype="chat")
            events["started"].clear()
            alice.connect("127.0.0.1", node1.c2s_port)
            # node1 may still count node0 as live: it waits handover_timeout
            # (5 s) for an answer first.
            await asyncio.wait_for(events["failed"].wait(), CLIENT_TIMEOUT + 10)
            await asyncio.wait_for(events["started"].wait(), CLIENT_TIMEOUT)
            assert events["starts"] == 2 and not events["resumed"].is_set()
            alice.send_presence()
            await a_msgs.wait(lambda m: m["body"] == "to the dead node", timeout=OFFLINE_WITHIN,
                              what="the message, from offline storage")
        finally:
            await slix_close(bob)
            await slix_close(alice)

    run(main(), timeout=90)


# -- [cluster] workers = N: one twistd, N worker processes ----------------------------------

def _children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _session_nodes(redis_url: str, nodes: list[str]) -> dict[str, str]:
    """full JID -> the worker node holding its session (Redis directory)."""
    held = {}
    for node in nodes:
        raw = _redis_cli(redis_url, "HKEYS", f"chatbx:sessions:{node}")
        held.update({full: node for full in raw.split()})
    return held


def test_workers_share_the_sockets_and_chat_across_them(redis_url, postgres_url, chatbx_server):
    """``[cluster] workers = 2``: one ``twistd chatbx`` binds the ports once
    and runs two worker processes (nodes ``wk-w0``, ``wk-w1``) that accept
    on them. Clients logging in land on both workers (``chatbxctl cluster
    status`` lists two nodes with sessions, the PIDs are the parent's
    children); two users on different workers chat. A worker killed with
    SIGKILL is replaced (``wk-w1-r1``) and the dead one reaped. SIGTERM to
    the parent stops both workers, which leave the cluster cleanly."""
    server = chatbx_server(db_url=postgres_url, extra_config=(
        f'[cluster]\nredis = "{redis_url}"\nnode = "wk"\nworkers = 2\n'))
    parent = server.proc.pid
    workers = ["wk-w0", "wk-w1"]
    _wait_for_nodes(redis_url, workers, server, "workers did not join")
    started = dict(re.findall(r"worker (wk-w\d) started, pid (\d+)", server.log_text()))
    pids = {int(started[w]) for w in workers}
    assert pids == _children(parent), (started, _children(parent))

    async def main() -> None:
        clients: dict[str, Any] = {}
        users = [ALICE, BOB, "carol@localhost"]
        try:
            pair = None
            for i in range(18):
                full = f"{users[i % 3]}/r{i}"
                clients[full] = await slix_login(server, full)
                clients[full].send_presence()
                held = _session_nodes(redis_url, workers)
                on = {w: {f.split("/")[0] for f, n in held.items() if n == w} for w in workers}
                pair = next(((a, b) for a in on["wk-w0"] for b in on["wk-w1"] if a != b), None)
                if pair is not None:
                    break
            assert pair is not None, f"sessions never on both workers: {held}"
            status = server.ctl("cluster", "status").stdout
            counts = dict(re.findall(r"(wk-w\d)\s+live\s+sessions=(\d+)", status))
            assert set(counts) == set(workers) and all(int(c) > 0 for c in counts.values()), status
            sender = next(c for f, c in clients.items() if held.get(f) == "wk-w0" and f.startswith(pair[0] + "/"))
            receiver = next(c for f, c in clients.items() if held.get(f) == "wk-w1" and f.startswith(pair[1] + "/"))
            s_msgs, r_msgs = Inbox(sender, "message"), Inbox(receiver, "message")
            # No waiting for each worker's directory cache to hear of the
            # other's new sessions: a stanza for a session the cache does
            # not know yet is looked up in Redis first (cluster/lookup.py).
            sender.send_message(mto=receiver.boundjid.full, mbody="across workers", mtype="chat")
            got = await r_msgs.wait(lambda m: m["body"] == "across workers", what="the message from w0")
            assert got["from"].full == sender.boundjid.full
            receiver.send_message(mto=sender.boundjid.full, mbody="and back", mtype="chat")
            await s_msgs.wait(lambda m: m["body"] == "and back", what="the answer from w1")
        finally:
            for client in clients.values():
                await slix_close(client)

    run(main(), timeout=90)

    # HTTP is worker 0's, and /metrics there has both workers' figures, by
    # node (w1's from its latest snapshot in Redis: cluster/metrics.py).
    from test_http_upload import fetch
    deadline = time.monotonic() + 20
    while True:
        code, _, body = fetch(server, "GET", "https://localhost/metrics")
        assert code == 200
        sent = {w: re.search(rb'chatbx_stanzas_total\{direction="in",kind="message",node="%s"\} (\d+)'
                             % w.encode(), body) for w in workers}
        if all(m and float(m.group(1)) >= 1 for m in sent.values()):
            break
        assert time.monotonic() < deadline, body.decode()[-3000:]
        time.sleep(0.5)  # the next snapshot, bounded by the deadline

    # A worker killed with SIGKILL is restarted under a new name; the dead
    # incarnation is reaped by the other worker like any dead node.
    os.kill(int(started["wk-w1"]), signal.SIGKILL)
    workers = ["wk-w0", "wk-w1-r1"]
    _wait_for_nodes(redis_url, workers, server, "w1 not replaced")
    restarted = dict(re.findall(r"worker (wk-w\d-r1) started, pid (\d+)", server.log_text()))
    pids = {int(started["wk-w0"]), int(restarted["wk-w1-r1"])}
    assert pids == _children(parent)

    proc, server.proc = server.proc, None
    proc.send_signal(signal.SIGTERM)
    # twistd ends by re-raising the signal that stopped it.
    assert proc.wait(40) in (0, -signal.SIGTERM), server.log_text()[-3000:]
    assert not [p for p in pids if _alive(p)], "a worker outlived its parent"
    assert _redis_cli(redis_url, "ZRANGE", "chatbx:nodes", "0", "-1") == "", "a worker did not leave"
    log = server.log_text()
    for worker in workers:
        assert re.search(rf"worker {worker} \(pid \d+\) exited", log), log[-3000:]


def test_workers_stop_when_the_parent_is_killed(redis_url, postgres_url, chatbx_server):
    """The parent killed with SIGKILL (it cannot stop its workers): each
    worker notices its parent is gone and stops by itself, leaving the
    cluster cleanly, instead of holding the ports unsupervised."""
    server = chatbx_server(db_url=postgres_url, users={}, extra_config=(
        f'[cluster]\nredis = "{redis_url}"\nnode = "wk"\nworkers = 2\n'))
    deadline = time.monotonic() + 30
    while len(_redis_cli(redis_url, "ZRANGE", "chatbx:nodes", "0", "-1").split()) != 2:
        assert time.monotonic() < deadline, f"workers did not join:\n{server.log_text()[-3000:]}"
        time.sleep(0.1)  # polling Redis, bounded by the deadline
    pids = _children(server.proc.pid)
    assert len(pids) == 2
    os.kill(server.proc.pid, signal.SIGKILL)  # the parent only, not its group
    server.proc.wait(10)
    server.proc = None
    deadline = time.monotonic() + 30
    while [p for p in pids if _alive(p)] or _redis_cli(redis_url, "ZRANGE", "chatbx:nodes", "0", "-1"):
        assert time.monotonic() < deadline, (
            f"workers outlived the parent: {[p for p in pids if _alive(p)]} "
            f"{_redis_cli(redis_url, 'ZRANGE', 'chatbx:nodes', '0', '-1')}\n{server.log_text()[-3000:]}")
        time.sleep(0.2)  # polling /proc and Redis, bounded by the deadline
    assert "parent" in server.log_text() and "is gone, stopping" in server.log_text()
