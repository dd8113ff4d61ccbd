"""Real XMPP clients, as packaged by Debian, against the real server.

Each class is one scenario on its own server (``class_server``) whose tests
are its steps, in order, each building on the one before (a failed step
skips the rest, see ``steps``): mcabber (loudmouth) driven through its
command FIFO, go-sendxmpp (STARTTLS, direct TLS, listen mode) and profanity
(libstrophe) typed into through tmux; go-sendxmpp ``-h`` and profanity
``/sendfile`` share a photo and a voice message over HTTP File Upload
(XEP-0363) that slixmpp's side downloads intact. The other side of every exchange is a
slixmpp client, so each step asserts what the server delivered as well as
what the real client shows or logs. Everything is on loopback, bounded, and
stopped by PID. Later features add their steps beside these.

The clients come from Debian (``.ci/run`` installs them): without them
these tests are skipped, except under CI / CHATBX_REQUIRE_CLIENTS=1.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from conftest import ChatbxServer, Inbox, manual_subscriptions, roster_items, slix_close, slix_login
from media import download, ogg_opus, png
from realclients import Program, Tmux, client_env, read, require, run_steps, tail, until, write_fifo

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"


@dataclass
class Slix:
    """A slixmpp client that is online, with Inboxes of what it received."""

    client: Any
    presences: Inbox
    messages: Inbox

    async def wait_presence(self, ptype: str, sender: str) -> Any:
        """A presence of ``ptype`` ('available' for none) from a bare or full JID."""
        def match(p: Any) -> bool:
            return p["type"] == ptype and sender in (p["from"].bare, p["from"].full)
        return await self.presences.wait(match, what=f"presence {ptype} from {sender}")

    async def wait_available_from_resource_of(self, bare: str, prefix: str) -> Any:
        """For clients that pick a random resource: 'profanity.XXXX'."""
        def match(p: Any) -> bool:
            return (p["type"] == "available" and p["from"].bare == bare
                    and p["from"].resource.startswith(prefix))
        return await self.presences.wait(match, what=f"available presence from {bare}/{prefix}...")

    async def wait_body(self, body: str) -> Any:
        return await self.messages.wait(lambda m: m["body"] == body, what=f"message {body!r}")

    def subscription(self, to: str, ptype: str) -> None:
        self.client.send_presence_subscription(pto=to, ptype=ptype)


#: the photo and the voice message each client shares: (file name, bytes, Content-Type)
PHOTO = ("photo.png", png(), "image/png")
VOICE = ("voice.ogg", ogg_opus(), "audio/ogg")


async def receives_file(server: ChatbxServer, receiver: Slix, sender: str, name: str, data: bytes,
                        content_type: str) -> Any:
    """The receiver gets a message from ``sender`` whose body is the file's
    HTTPS URL, also as jabber:x:oob (XEP-0066) when the client adds it,
    and downloads the same bytes with the right Content-Type, inline."""
    def match(m: Any) -> bool:
        return m["from"].bare == sender and m["body"].startswith("https://") and m["body"].endswith("/" + name)

    got = await receiver.messages.wait(match, what=f"a message with the URL of {name} from {sender}")
    url = got["body"]
    oob = got.xml.find("{jabber:x:oob}x/{jabber:x:oob}url")
    if oob is not None:
        assert oob.text == url, got
    status, headers, body = download(url, server.certificate)
    assert status == 200 and body == data, (status, len(body), len(data))
    assert headers["content-type"] == content_type, headers
    assert headers["content-disposition"].startswith(f'inline; filename="{name}"'), headers
    return got


async def online(server: ChatbxServer, jid: str) -> Slix:
    """Log in, answer subscriptions only when the test says so, get the
    roster and send initial presence."""
    client = await slix_login(server, jid)
    manual_subscriptions(client)
    slix = Slix(client, Inbox(client, "presence"), Inbox(client, "message"))
    await client.get_roster()
    client.send_presence()
    return slix


MUC = "http://jabber.org/protocol/muc"


async def open_room(slix: Slix, room: str, nick: str) -> None:
    """Create ``room`` as ``slix`` and accept the instant configuration
    (XEP-0045 §10.1.2), so a real client can join an unlocked room."""
    import xml.etree.ElementTree as ET

    client = slix.client
    pres = client.make_presence(pto=f"{room}/{nick}")
    pres.append(ET.fromstring(f"<x xmlns='{MUC}'/>"))
    pres.send()
    iq = client.Iq()
    iq["to"] = room
    iq["type"] = "set"
    iq.append(ET.fromstring(f"<query xmlns='{MUC}#owner'><x xmlns='jabber:x:data' type='submit'/>"
                            "</query>"))
    await iq.send(timeout=10)


def groupchat_from(room: str, body: str) -> Callable[[Any], bool]:
    return lambda m: m["type"] == "groupchat" and m["from"].bare == room and m["body"] == body


async def _cancel_the_rest() -> None:
    """End what slixmpp left running here, not in __del__ on a closed loop."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class Scenario:
    """One class's server, asyncio loop (for its slixmpp clients, kept
    across steps), folder and the things to stop at the end."""

    server: ChatbxServer
    root: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    slix: list[Any] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, coro: Any) -> Any:
        return run_steps(self.loop, coro)

    def online(self, jid: str) -> Slix:
        slix = self.run(online(self.server, jid))
        self.slix.append(slix.client)
        return slix

    def close(self) -> None:
        try:
            for cleanup in reversed(self.cleanups):
                cleanup()
        finally:
            for client in self.slix:
                self.loop.run_until_complete(slix_close(client))
            self.loop.run_until_complete(_cancel_the_rest())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


@pytest.fixture(scope="class")
def scenario(_class_server: ChatbxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    sc = Scenario(_class_server, tmp_path_factory.mktemp("clients"))
    try:
        yield sc
    finally:
        sc.close()


@pytest.fixture(autouse=True)
def _step(steps: None, class_server: ChatbxServer) -> None:
    """Every test here is a step of its class's scenario on its server."""


def cert_sha256(server: ChatbxServer) -> str:
    """The SHA-256 fingerprint of the server's generated certificate, as
    mcabber writes it (lowercase hex, no colons)."""
    pem = (server.data_dir / "certs" / "localhost.crt").read_text()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


# -- mcabber ---------------------------------------------------------------------


class Mcabber:
    """mcabber logged in as alice, in tmux; commands go into its FIFO, its
    trace log and message history files show what it did and got."""

    def __init__(self, sc: Scenario) -> None:
        self.dir = sc.root / "mcabber"
        self.dir.mkdir()
        self.config = self.dir / "mcabberrc"
        self.fifo = self.dir / "fifo"
        self.trace = self.dir / "trace.log"
        self.histo = self.dir / "histo"
        self.tmux = Tmux()
        sc.cleanups.append(self.tmux.stop)
        # ssl_ignore_checks accepts the self-signed certificate but keeps the
        # fingerprint check: mcabber talks to this server's certificate only.
        self.config.write_text("\n".join([
            f"set jid = {ALICE}",
            "set resource = mcabber",
            "set disable_random_resource = 1",
            f"set password = {sc.server.users[ALICE]}",
            "set server = 127.0.0.1",
            f"set port = {sc.server.c2s_port}",
            "set tls = 1",
            "set ssl_ignore_checks = 1",
            f"set ssl_fingerprint = SHA256:{cert_sha256(sc.server)}",
            f"set fifo_name = {self.fifo}",
            "module load fifo",
            "set logging = 1",
            f"set logging_dir = {self.histo}",
            "set tracelog_level = 3",  # log window and XML both ways
            f"set tracelog_file = {self.trace}",
            "set hook-post-connect = echo connected",  # traced once the roster is in
            "",
        ]))
        self.config.chmod(0o600)  # it holds a password

    def start(self) -> None:
        self.tmux.start(["mcabber", "-f", str(self.config)], client_env(self.dir / "home"), self.dir)

    def command(self, line: str) -> None:
        write_fifo(self.fifo, line)

    def details(self) -> str:
        return f"{tail(self.trace)}\n--- screen ---\n{self.tmux.screen()}"

    async def traced(self, pattern: str, what: str) -> re.Match:
        """Wait until the trace log has a line matching ``pattern``."""
        regex = re.compile(pattern, re.M)
        return await until(lambda: regex.search(read(self.trace)), what, details=self.details)


@pytest.fixture(scope="class")
def mc(scenario: Scenario) -> Mcabber:
    """mcabber's setup (not started yet) and bob online on slixmpp."""
    require("mcabber", "tmux")
    scenario.state["bob"] = scenario.online(f"{BOB}/slix")
    return Mcabber(scenario)


class TestMcabber:
    """mcabber as alice, bob on slixmpp: log in, add a contact, accept the
    contact's request, chat both ways."""

    def test_logs_in(self, scenario: Scenario, mc: Mcabber) -> None:
        """mcabber negotiates STARTTLS (pinning the server's certificate),
        authenticates, binds resource 'mcabber' and gets its roster."""
        mc.start()

        async def step() -> None:
            await mc.traced(r"Running hook-post-connect", "mcabber to log in and get its roster")
            await until(lambda: mc.fifo.exists(), "mcabber's FIFO", details=mc.details)
            assert f"<jid>{ALICE}/mcabber</jid>" in read(mc.trace), mc.details()

        scenario.run(step())

    def test_adds_contact(self, scenario: Scenario, mc: Mcabber) -> None:
        """/add bob: bob gets a subscription request from alice's bare JID."""
        bob: Slix = scenario.state["bob"]
        mc.command(f"/add {BOB} Bob")
        scenario.run(bob.wait_presence("subscribe", ALICE))

    def test_accepts_subscription(self, scenario: Scenario, mc: Mcabber) -> None:
        """Bob approves and asks back; mcabber shows the request as an event,
        accepting it approves bob: both rosters say 'both' and bob sees
        alice online."""
        bob: Slix = scenario.state["bob"]

        async def step() -> None:
            bob.subscription(ALICE, "subscribed")
            bob.subscription(ALICE, "subscribe")
            await mc.traced(rf"<{re.escape(BOB)}> has allowed you to receive", "mcabber to see the approval")
            event = await mc.traced(r"Please use /event (\d+) accept", "mcabber's subscription event")
            mc.command(f"/event {event.group(1)} accept")
            await bob.wait_presence("subscribed", ALICE)
            await bob.wait_presence("available", f"{ALICE}/mcabber")
            assert (await roster_items(bob.client))[ALICE]["subscription"] == "both"

        scenario.run(step())

    def test_sends_message(self, scenario: Scenario, mc: Mcabber) -> None:
        """/say_to: bob gets a chat message from alice's mcabber resource."""
        bob: Slix = scenario.state["bob"]
        mc.command(f"/say_to {BOB} hello bob, mcabber here")
        got = scenario.run(bob.wait_body("hello bob, mcabber here"))
        assert got["from"].full == f"{ALICE}/mcabber"
        assert got["type"] == "chat"

    def test_receives_message(self, scenario: Scenario, mc: Mcabber) -> None:
        """Bob's message to alice's bare JID lands in mcabber's history for bob
        as a received message (MR)."""
        bob: Slix = scenario.state["bob"]
        bob.client.send_message(mto=ALICE, mbody="hello mcabber, bob here", mtype="chat")
        history = mc.histo / BOB
        scenario.run(until(lambda: re.search(r"^MR \S+ \d+ hello mcabber, bob here$", read(history), re.M),
                           "the message in mcabber's history", details=lambda: f"{tail(history)}\n{mc.details()}"))


    def test_joins_room_and_talks(self, scenario: Scenario, mc: Mcabber) -> None:
        """/room join: mcabber enters bob's room (bob sees alice's occupant
        presence), says something there, and gets bob's groupchat message."""
        bob: Slix = scenario.state["bob"]
        room = "mcroom@conference.localhost"

        async def step() -> None:
            await open_room(bob, room, "Bob")
            mc.command(f"/room join {room} alice")
            await bob.presences.wait(lambda p: p["from"].full == f"{room}/alice",
                                     what="alice's presence in the room")
            mc.command(f"/say_to {room} hello room, mcabber here")
            got = await bob.messages.wait(groupchat_from(room, "hello room, mcabber here"),
                                          what="mcabber's groupchat message")
            assert got["from"].full == f"{room}/alice"
            bob.client.send_message(mto=room, mbody="hello mcabber, from the room",
                                    mtype="groupchat")
            await mc.traced(r"hello mcabber, from the room", "mcabber to get the room message")

        scenario.run(step())


# -- go-sendxmpp -----------------------------------------------------------------


def sendxmpp(sc: Scenario, name: str, *args: str, stdin: Optional[str] = None,
             trust_certificate: bool = False) -> Program:
    """Start go-sendxmpp with its own HOME; -n accepts the self-signed
    certificate, or with ``trust_certificate`` Go trusts it through
    SSL_CERT_FILE and checks it (for XMPP and HTTPS alike; -n does not
    reach the HTTP upload). Stopped at the end of the scenario at the latest."""
    home = sc.root / "sendxmpp"
    env = client_env(home)
    if trust_certificate:
        env["SSL_CERT_FILE"] = str(sc.server.certificate)
    program = Program(["go-sendxmpp", *([] if trust_certificate else ["-n"]), *args], env, home, name,
                      stdin=stdin)
    sc.cleanups.append(program.stop)
    return program


@pytest.fixture(scope="class")
def bob(scenario: Scenario) -> Slix:
    """Bob online on slixmpp, for go-sendxmpp to send to."""
    require("go-sendxmpp")
    return scenario.online(f"{BOB}/slix")


class TestGoSendxmpp:
    """go-sendxmpp sends as alice over STARTTLS and over direct TLS to bob
    on slixmpp, and listens as bob for what alice on slixmpp sends."""

    def _send(self, scenario: Scenario, bob: Slix, name: str, body: str, *args: str) -> None:
        program = sendxmpp(scenario, name, "-u", ALICE, "-p", scenario.server.users[ALICE], *args, BOB,
                           stdin=body + "\n")

        async def step() -> None:
            got = await bob.wait_body(body)
            assert got["from"].bare == ALICE and got["from"].resource.startswith("go-sendxmpp"), got
            assert await program.exit_status("go-sendxmpp to exit") == 0, program.output()

        try:
            scenario.run(step())
        except AssertionError as e:
            raise AssertionError(f"{e}\n{program.output()}") from None

    def test_sends_over_starttls(self, scenario: Scenario, bob: Slix) -> None:
        """On the c2s port (STARTTLS required): bob gets the message and
        go-sendxmpp exits 0."""
        self._send(scenario, bob, "starttls", "hello bob over starttls",
                   "-j", f"127.0.0.1:{scenario.server.c2s_port}")

    def test_sends_over_direct_tls(self, scenario: Scenario, bob: Slix) -> None:
        """With --tls on the direct TLS port (XEP-0368): the same."""
        self._send(scenario, bob, "directtls", "hello bob over direct tls",
                   "-t", "-j", f"127.0.0.1:{scenario.server.c2s_tls_port}")

    def test_listens(self, scenario: Scenario, bob: Slix) -> None:
        """--listen as bob prints what alice sends it, as 'FROM: BODY'. (Sent
        to the listener's full JID: bob's slixmpp resource is online too.)"""
        program = sendxmpp(scenario, "listen", "-d", "-l", "-u", BOB, "-p", scenario.server.users[BOB],
                           "-j", f"127.0.0.1:{scenario.server.c2s_port}")

        async def step() -> None:
            bound = await until(lambda: re.search(r"<jid>(bob@localhost/[^<]+)</jid>", program.stderr),
                                "go-sendxmpp to bind", details=program.output)
            alice = await online(scenario.server, f"{ALICE}/slix")
            try:
                alice.client.send_message(mto=bound.group(1), mbody="hello listener", mtype="chat")
                await until(lambda: f"{ALICE}: hello listener" in program.stdout,
                            "go-sendxmpp to print the message", details=program.output)
            finally:
                await slix_close(alice.client)

        scenario.run(step())
        program.stop()

    def test_sends_to_room(self, scenario: Scenario, bob: Slix) -> None:
        """-c: go-sendxmpp joins bob's room and sends its message there as
        groupchat; it exits 0."""
        room = "sendroom@conference.localhost"
        scenario.run(open_room(bob, room, "Bob"))
        program = sendxmpp(scenario, "muc", "-u", ALICE, "-p", scenario.server.users[ALICE],
                           "-j", f"127.0.0.1:{scenario.server.c2s_port}", "-c", room,
                           stdin="hello room, go-sendxmpp here\n")

        async def step() -> None:
            got = await bob.messages.wait(groupchat_from(room, "hello room, go-sendxmpp here"),
                                          what="go-sendxmpp's groupchat message")
            assert got["from"].resource, got
            assert await program.exit_status("go-sendxmpp to exit") == 0, program.output()

        try:
            scenario.run(step())
        except AssertionError as e:
            raise AssertionError(f"{e}\n{program.output()}") from None

    def test_shares_photo_and_voice(self, scenario: Scenario, bob: Slix) -> None:
        """-h FILE (XEP-0363) with the server's certificate trusted: go-sendxmpp
        asks upload.localhost for a slot, PUTs a photo and then a voice
        message and sends bob their URLs; bob downloads both intact (same
        bytes, image/png and audio/ogg, inline)."""
        folder = scenario.root / "sendxmpp"
        for name, data, content_type in (PHOTO, VOICE):
            path = folder / name
            path.write_bytes(data)
            program = sendxmpp(scenario, f"upload-{name}", "-u", ALICE, "-p", scenario.server.users[ALICE],
                               "-j", f"127.0.0.1:{scenario.server.c2s_port}", "-h", str(path), BOB,
                               trust_certificate=True)

            async def step() -> None:
                await receives_file(scenario.server, bob, ALICE, name, data, content_type)
                assert await program.exit_status("go-sendxmpp to exit") == 0, program.output()

            try:
                scenario.run(step())
            except AssertionError as e:
                raise AssertionError(f"{e}\n{program.output()}") from None


# -- profanity -------------------------------------------------------------------


class Profanity:
    """profanity in tmux, typed into; its screen, debug log and chat log
    database show what it did and got."""

    def __init__(self, sc: Scenario) -> None:
        self.dir = sc.root / "profanity"
        self.home = self.dir / "home"
        self.log = self.dir / "profanity.log"
        self.tmux = Tmux()
        sc.cleanups.append(self.tmux.stop)

    def start(self) -> None:
        self.tmux.start(["profanity", "-l", "DEBUG", "-f", str(self.log)], client_env(self.home), self.dir)

    def details(self) -> str:
        return f"{tail(self.log, 40)}\n--- screen ---\n{self.tmux.screen()}"

    async def shows(self, text: str, what: str) -> None:
        await until(lambda: text in self.tmux.screen(), what, details=self.details)

    def chat_log(self) -> list[tuple[str, str, str]]:
        """(from, to, body) of the messages in profanity's chat log database."""
        db = self.home / ".local/share/profanity/database/alice_at_localhost/chatlog.db"
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT from_jid, to_jid, message FROM ChatLogs").fetchall()


@pytest.fixture(scope="class")
def prof(scenario: Scenario) -> Profanity:
    """profanity's setup (not started yet) and bob online on slixmpp."""
    require("profanity", "tmux")
    scenario.state["bob"] = scenario.online(f"{BOB}/slix")
    return Profanity(scenario)


class TestProfanity:
    """profanity as alice, bob on slixmpp: log in trusting the self-signed
    certificate, subscribe both ways, chat both ways."""

    def test_logs_in_with_tls_trust(self, scenario: Scenario, prof: Profanity) -> None:
        """/connect ... tls trust, then the password at its prompt: profanity
        logs in over STARTTLS and says so."""
        prof.start()

        async def step() -> None:
            await prof.shows("Logging to:", "profanity to start")
            prof.tmux.type(f"/connect {ALICE} server 127.0.0.1 port {scenario.server.c2s_port} tls trust")
            await prof.shows("Enter password", "the password prompt")
            prof.tmux.type(scenario.server.users[ALICE])
            await prof.shows("logged in successfully", "profanity to log in")

        scenario.run(step())

    def test_subscribes(self, scenario: Scenario, prof: Profanity) -> None:
        """/sub request bob: bob gets the request and approves; profanity
        shows the approval; bob's roster has alice as 'from'."""
        bob: Slix = scenario.state["bob"]

        async def step() -> None:
            prof.tmux.type(f"/sub request {BOB}")
            await bob.wait_presence("subscribe", ALICE)
            bob.subscription(ALICE, "subscribed")
            await prof.shows(f"Subscription received from {BOB}", "profanity to see the approval")
            assert (await roster_items(bob.client))[ALICE]["subscription"] == "from"

        scenario.run(step())

    def test_accepts_subscription(self, scenario: Scenario, prof: Profanity) -> None:
        """Bob asks; profanity shows the request; /sub allow approves it:
        bob's roster says 'both' and bob sees alice online."""
        bob: Slix = scenario.state["bob"]

        async def step() -> None:
            bob.subscription(ALICE, "subscribe")
            await prof.shows(f"Received authorization request from {BOB}", "profanity to show the request")
            prof.tmux.type(f"/sub allow {BOB}")
            await bob.wait_presence("subscribed", ALICE)
            await bob.wait_available_from_resource_of(ALICE, "profanity")
            assert (await roster_items(bob.client))[ALICE]["subscription"] == "both"

        scenario.run(step())

    def test_sends_message(self, scenario: Scenario, prof: Profanity) -> None:
        """/msg bob: bob gets a chat message from alice's profanity resource."""
        bob: Slix = scenario.state["bob"]
        prof.tmux.type(f"/msg {BOB} hello bob, profanity here")
        got = scenario.run(bob.wait_body("hello bob, profanity here"))
        assert got["from"].bare == ALICE and got["from"].resource.startswith("profanity"), got
        assert got["type"] == "chat"

    def test_receives_message(self, scenario: Scenario, prof: Profanity) -> None:
        """Bob's answer to alice's bare JID shows in profanity's chat window
        (open since /msg) and in its chat log."""
        bob: Slix = scenario.state["bob"]
        bob.client.send_message(mto=ALICE, mbody="hello profanity, bob here", mtype="chat")

        async def step() -> None:
            await prof.shows("hello profanity, bob here", "the message on profanity's screen")
            await until(lambda: (BOB, ALICE, "hello profanity, bob here") in prof.chat_log(),
                        "the message in profanity's chat log", details=lambda: repr(prof.chat_log()))

        scenario.run(step())

    def test_sends_files(self, scenario: Scenario, prof: Profanity) -> None:
        """/sendfile in the chat window with bob (XEP-0363 over libcurl): a
        photo and a voice message (announced by profanity as
        audio/x-opus+ogg, stored as audio/ogg); profanity shows each URL and
        bob downloads both intact, inline."""
        bob: Slix = scenario.state["bob"]
        for name, data, content_type in (PHOTO, VOICE):
            path = prof.dir / name
            path.write_bytes(data)
            prof.tmux.type(f"/sendfile {path}")

            async def step() -> None:
                got = await receives_file(scenario.server, bob, ALICE, name, data, content_type)
                assert got["from"].resource.startswith("profanity"), got
                await prof.shows(got["body"], "profanity to show the file's URL")

            scenario.run(step())

    def test_joins_room_and_talks(self, scenario: Scenario, prof: Profanity) -> None:
        """/join: profanity enters bob's room (bob sees its occupant
        presence); what is typed in the room window reaches bob as
        groupchat; bob's groupchat message shows on profanity's screen."""
        bob: Slix = scenario.state["bob"]
        room = "profroom@conference.localhost"

        async def step() -> None:
            await open_room(bob, room, "Bob")
            prof.tmux.type(f"/join {room} nick alice")
            await bob.presences.wait(lambda p: p["from"].full == f"{room}/alice",
                                     what="alice's presence in the room")
            await until(lambda: "Room self presence received" in read(prof.log),
                        "profanity to see itself in the room", details=prof.details)
            prof.tmux.type("hello room, profanity here")
            got = await bob.messages.wait(groupchat_from(room, "hello room, profanity here"),
                                          what="profanity's groupchat message")
            assert got["from"].full == f"{room}/alice"
            bob.client.send_message(mto=room, mbody="hello profanity, from the room",
                                    mtype="groupchat")
            await prof.shows("hello profanity, from the room", "the room message on screen")

        scenario.run(step())
