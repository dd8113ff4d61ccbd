"""A web client in a real browser: converse.js (from npm) in headless
Chromium logs in to chatbx over WebSocket (RFC 7395) and chats with a
slixmpp client over TCP, both ways; the screenshot path is printed.

Chromium comes from Debian (``.ci/run`` installs it) and converse.js from
npm at test time (``browser.fetch_converse``, cached outside the
repository); without them the test is skipped, except under CI /
CHATBX_REQUIRE_CLIENTS=1, where it fails saying which is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser import (ARTIFACTS_DIR, CACHE_DIR, Chromium, StaticSite, Unavailable, fetch_converse, spki_sha256,
                     wait_for)
from conftest import Inbox, slix_close, slix_login, subscribe_mutually
from realclients import clients_required

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@localhost", "bob@localhost"
TO_BOB = "hello bob, converse.js in chromium here"
TO_ALICE = "hello converse, slixmpp here"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>chatbx: converse.js over WebSocket</title>
<link rel="stylesheet" href="dist/converse.min.css"></head>
<body class="converse-fullscreen">
<script type="module">
import converse from './dist/converse.min.js';
const settings = SETTINGS;
const test = window.chatbxTest = {state: 'loading', received: [], errors: []};
window.addEventListener('error', (e) => test.errors.push(String(e.message)));
converse.plugins.add('chatbx-test', {
  initialize() {
    const api = this._converse.api;
    api.listen.on('connected', async () => {
      test.state = 'connected';
      try {
        const chat = await api.chats.open(settings.peer);
        await chat.sendMessage({body: settings.send});
        test.state = 'sent';
      } catch (e) {
        test.errors.push(String(e));
      }
    });
    api.listen.on('message', (data) => {
      const attrs = data.attrs || {};
      if (attrs.body) test.received.push({from: attrs.from, body: attrs.body});
    });
  }
});
converse.initialize({
  websocket_url: settings.websocket_url,
  jid: settings.jid, password: settings.password, auto_login: true,
  discover_connection_methods: false, auto_reconnect: false,
  view_mode: 'fullscreen', whitelisted_plugins: ['chatbx-test'],
  blacklisted_plugins: ['converse-omemo'],
  play_sounds: false, show_desktop_notifications: false, loglevel: 'debug',
}).catch((e) => test.errors.push(String(e)));
</script></body></html>
"""


async def _cancel_the_rest() -> None:
    """End what slixmpp left running, before its loop closes."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _unavailable(why: str) -> None:
    if clients_required():
        pytest.fail(f"browser test cannot run: {why} (required: CI or CHATBX_REQUIRE_CLIENTS=1)")
    pytest.skip(f"browser test cannot run: {why}")


@pytest.fixture
def converse_dist() -> Path:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    try:
        return fetch_converse(CACHE_DIR / "npm")
    except Unavailable as exc:
        _unavailable(str(exc))
        raise


@pytest.fixture
def chromium_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Chromium] = []

    def start(spki: str) -> Chromium:
        try:
            browser = Chromium(tmp_path / "chromium-profile", spki)
        except Unavailable as exc:
            _unavailable(str(exc))
            raise
        started.append(browser)
        return browser

    try:
        yield start
    finally:
        for browser in started:
            browser.stop()


def test_converse_chats_over_websocket(chatbx_server: Any, converse_dist: Path, chromium_factory: Any,
                                       tmp_path: Path, request: pytest.FixtureRequest,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """converse.js logs in as alice over wss://localhost/xmpp-websocket,
    sends bob (slixmpp, TCP) a chat message that bob receives from alice's
    converse.js resource; bob's answer reaches converse.js and shows in
    its chat window; a screenshot of the page is kept."""
    server = chatbx_server()
    site_root = tmp_path / "site"
    site_root.mkdir()
    os.symlink(converse_dist, site_root / "dist")
    settings = {"websocket_url": f"wss://localhost:{server.http_port}/xmpp-websocket",
                "jid": ALICE, "password": server.users[ALICE], "peer": BOB, "send": TO_BOB}
    (site_root / "index.html").write_text(PAGE.replace("SETTINGS", json.dumps(settings)))
    site = StaticSite(site_root)
    request.addfinalizer(site.stop)
    browser = chromium_factory(spki_sha256(server.certificate))
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()

    def tick() -> None:
        """Wait a little while the slixmpp client keeps working."""
        loop.run_until_complete(asyncio.sleep(0.1))

    def page_state() -> dict[str, Any]:
        state: dict[str, Any] = json.loads(browser.evaluate("JSON.stringify(window.chatbxTest || {})"))
        return state

    def details() -> str:
        console = "\n".join(browser.console[-80:])
        return (f"page: {page_state()}\n--- console ---\n{console}\n--- chromium ---\n{browser.log()[-1500:]}"
                f"\n--- server ---\n{server.log_text()[-6000:]}")

    async def contacts() -> Any:
        # alice and bob are contacts (converse.js 14 cannot open a chat with
        # a JID outside the roster on a server without XEP-0191 blocking:
        # it waits for a blocklist that is never fetched).
        alice = await slix_login(server, f"{ALICE}/setup")
        bob = await slix_login(server, f"{BOB}/slix")
        inboxes = Inbox(alice, "presence"), Inbox(bob, "presence")
        alice.send_presence()
        bob.send_presence()
        try:
            await subscribe_mutually(alice, inboxes[0], bob, inboxes[1])
        finally:
            await slix_close(alice)
        return bob

    bob: Any = None
    try:
        bob = loop.run_until_complete(contacts())
        messages = Inbox(bob, "message")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"http://127.0.0.1:{site.port}/index.html")
        wait_for(lambda: page_state().get("state") == "sent", "converse.js to log in and send", 45, details, tick)
        got = loop.run_until_complete(messages.wait(lambda m: m["body"] == TO_BOB, 15, "converse's message"))
        assert got["from"].bare == ALICE and got["from"].resource.startswith("converse.js"), got
        assert got["type"] == "chat", got
        bob.send_message(mto=got["from"].full, mbody=TO_ALICE, mtype="chat")
        wait_for(lambda: any(m["body"] == TO_ALICE for m in page_state().get("received", [])),
                 "converse.js to receive bob's answer", 15, details, tick)
        wait_for(lambda: browser.evaluate(f"document.body.innerText.includes({json.dumps(TO_ALICE)})"),
                 "bob's answer on the page", 15, details, tick)
        assert not page_state().get("errors"), details()
    finally:
        try:
            path = browser.screenshot(ARTIFACTS_DIR / "converse-websocket.png")
            with capsys.disabled():
                print(f"\nbrowser screenshot: {path}")
        finally:
            if bob is not None:
                loop.run_until_complete(slix_close(bob))
            loop.run_until_complete(_cancel_the_rest())
            loop.close()
