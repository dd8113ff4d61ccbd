"""The invite page and the web sign-up form in a real browser (headless
Chromium over the DevTools protocol, tests/integration/browser.py), tried
as a new user would: open the invite link, look at the QR code, follow
"Create your account on the web", pick a taken name (an error shows),
pick a free one (the account is made), then log in with an XMPP app
(slixmpp) and find the inviter on the roster.

Screenshots go to ``CHATBX_ARTIFACTS_DIR`` (``browser.ARTIFACTS_DIR``)
and their paths are printed. Without Chromium the test is skipped,
except under CI / CHATBX_REQUIRE_CLIENTS=1, where it fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser import ARTIFACTS_DIR, Chromium, Unavailable, spki_sha256, wait_for
from conftest import roster_items, run, slix_close, slix_login
from realclients import clients_required

pytestmark = pytest.mark.integration


def _unavailable(why: str) -> None:
    if clients_required():
        pytest.fail(f"browser test cannot run: {why} (required: CI or CHATBX_REQUIRE_CLIENTS=1)")
    pytest.skip(f"browser test cannot run: {why}")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A factory of one headless Chromium trusting the given SPKI; stopped at the end."""
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
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


def _load(browser: Chromium, url: str, marker: str, details: Any) -> None:
    """Navigate and wait until the page's element ``marker`` exists."""
    browser.call("Page.navigate", url=url)
    _wait_element(browser, marker, url, details)


def _wait_element(browser: Chromium, selector: str, what: str, details: Any) -> None:
    wait_for(lambda: browser.evaluate(
        f"document.readyState === 'complete' && !!document.querySelector({json.dumps(selector)})"),
        f"{selector} on {what}", 20, details)


def _fill_and_submit(browser: Chromium, values: dict[str, str]) -> None:
    """Type into the form's fields and press its button, as a person does
    (the browser's own form validation applies)."""
    browser.evaluate(
        "(() => {" + "".join(
            f"document.getElementById({json.dumps(k)}).value = {json.dumps(v)};" for k, v in values.items())
        + "document.getElementById('submit').click(); return true; })()")


def test_invite_link_signup_in_chromium(chatbx_server: Any, chromium: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Alice's contact invite opened in Chromium: the landing page renders
    its QR code (an image that decoded) and the xmpp: URI; the web form
    with the taken name 'bob' shows an error and keeps the page; with a
    free name the account is created; slixmpp logs in with it and finds
    alice@localhost on the roster (subscription both). Screenshots of the
    three pages are kept."""
    server = chatbx_server(extra_config='[registration]\nmode = "invite"\n')
    url = server.ctl("invite", "create", "--contact", "alice@localhost").stdout.strip()
    token = url.rsplit("/", 1)[1]
    assert url.startswith(f"https://localhost:{server.http_port}/invite/"), url
    browser = chromium(spki_sha256(server.certificate))
    browser.call("Page.enable")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    def details() -> str:
        try:
            text = browser.evaluate("document.body ? document.body.innerText : ''")
        except AssertionError as exc:
            text = str(exc)
        return (f"page: {str(text)[:1500]}\n--- chromium ---\n{browser.log()[-1500:]}"
                f"\n--- server ---\n{server.log_text()[-4000:]}")

    def shot(name: str) -> None:
        shots.append(browser.screenshot(ARTIFACTS_DIR / name))

    try:
        # 1. The landing page, with its QR code decoded by the browser.
        _load(browser, url, "#qr img", details)
        wait_for(lambda: browser.evaluate("document.querySelector('#qr img').complete"),
                 "the QR code to load", 10, details)
        qr = browser.evaluate("(() => { const i = document.querySelector('#qr img');"
                              " return {w: i.naturalWidth, h: i.naturalHeight, src: i.src.slice(0, 26)}; })()")
        assert qr["w"] > 100 and qr["w"] == qr["h"] and qr["src"] == "data:image/svg+xml;charset", qr
        uri = browser.evaluate("document.getElementById('uri').innerText")
        assert uri == f"xmpp:alice@localhost?roster;preauth={token};ibr=y"
        assert browser.evaluate("document.getElementById('open-uri').getAttribute('href')") == uri
        assert "alice@localhost invites you" in browser.evaluate("document.body.innerText")
        shot("invite-landing.png")

        # 2. Follow the link to the web form; a taken name shows an error.
        browser.evaluate("document.getElementById('web-signup').click(), true")
        _wait_element(browser, "#signup", "the sign-up form", details)
        assert browser.evaluate("location.pathname") == f"/invite/{token}/register"
        _fill_and_submit(browser, {"username": "bob", "password": "browser-password",
                                   "password2": "browser-password"})
        _wait_element(browser, "#error", "the error for a taken name", details)
        error = browser.evaluate("document.getElementById('error').innerText")
        assert "taken" in error.lower(), error
        assert browser.evaluate("document.getElementById('username').value") == "bob"
        shot("signup-taken.png")

        # 3. A free name: the account is created.
        _fill_and_submit(browser, {"username": "newcomer", "password": "browser-password",
                                   "password2": "browser-password"})
        _wait_element(browser, "#done", "the welcome page", details)
        assert browser.evaluate("document.getElementById('jid').innerText") == "newcomer@localhost"
        shot("signup-done.png")
    finally:
        with capsys.disabled():
            for path in shots:
                print(f"\nbrowser screenshot: {path}")

    # 4. The new user's app logs in and finds the inviter.
    async def main() -> None:
        client = await slix_login(server, "newcomer@localhost/phone", "browser-password")
        try:
            assert (await roster_items(client))["alice@localhost"]["subscription"] == "both"
        finally:
            await slix_close(client)

    run(main())
    assert "account created: newcomer@localhost via web" in server.log_text()
