"""Accounts against the real server, driven by slixmpp as a user's app.

In-band registration (XEP-0077) in each mode (open, captcha with the
answer read from the server's database, invite token XEP-0445), password
change, account removal (every store emptied, the contact notified),
invite links that put the inviter on the roster, the per-address
registration limit, the new-account message limit, and admin ad-hoc
commands (XEP-0050/XEP-0133) for admins only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import xml.etree.ElementTree as ET
from typing import Any, Optional

import pytest

from conftest import (CLIENT_TIMEOUT, Inbox, make_slix, manual_subscriptions, roster_items, run,
                      slix_close, slix_login)

pytestmark = pytest.mark.integration

NS_REGISTER = "jabber:iq:register"
NS_PARS = "urn:xmpp:pars:0"
NS_DATA = "jabber:x:data"


def registration_config(mode: str, **extra: Any) -> str:
    lines = ["[registration]", f'mode = "{mode}"']
    lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}"
              for k, v in extra.items()]
    return "\n".join(lines) + "\n"


async def register(server: Any, username: str, password: str, *, token: Optional[str] = None,
                   captcha: Optional[Any] = None, address_port: Optional[int] = None) -> str:
    """Register in-band the way slixmpp's xep_0077 does: connect, read the
    form, submit it; 'ok' or the error condition. ``captcha(form_xml)``
    returns the answer when the form holds a CAPTCHA."""
    client = make_slix(f"{username}@localhost", password)
    client.register_plugin("xep_0077")
    client.register_plugin("xep_0004")
    client.plugin["xep_0077"].force_registration = True
    client.enable_direct_tls = False
    client.enable_starttls = True
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future = loop.create_future()

    def done(value: str) -> None:
        if not outcome.done():
            outcome.set_result(value)

    async def on_register(form: Any) -> None:
        try:
            resp = client.Iq()
            resp["type"] = "set"
            query = form.xml.find(f"{{{NS_REGISTER}}}query")
            x = query.find(f"{{{NS_DATA}}}x") if query is not None else None
            if x is not None:
                answer = captcha(form) if captcha is not None else "000000"
                values = {f.get("var"): (f.findtext(f"{{{NS_DATA}}}value") or "")
                          for f in x.findall(f"{{{NS_DATA}}}field")}
                values.update(username=username, password=password, ocr=answer)
                reg = resp["register"].xml  # slixmpp sends only register IQs before login
                sub = ET.SubElement(reg, f"{{{NS_DATA}}}x", type="submit")
                for var, value in values.items():
                    field = ET.SubElement(sub, f"{{{NS_DATA}}}field", var=var)
                    ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
            else:
                resp["register"]["username"] = username
                resp["register"]["password"] = password
            if token is not None:
                # The invite token inside the registration (slixmpp sends no
                # other IQ before login; the XEP-0445 IQ is unit-tested).
                resp.xml.find(f"{{{NS_REGISTER}}}query").append(
                    ET.Element(f"{{{NS_PARS}}}preauth", token=token))
            await resp.send(timeout=CLIENT_TIMEOUT)
            done("ok")
        except Exception as exc:  # IqError: the condition is the outcome
            iq = getattr(exc, "iq", None)
            done(iq["error"]["condition"] if iq is not None else f"error: {exc!r}")
        client.disconnect()

    client.add_event_handler("register", on_register)
    client.add_event_handler("connection_failed", lambda e: done(f"connection_failed: {e}"))
    client.add_event_handler("session_start", lambda _: client.disconnect())
    client.add_event_handler("failed_all_auth", lambda _: None)
    client.connect("127.0.0.1", server.c2s_port)
    try:
        return await asyncio.wait_for(outcome, CLIENT_TIMEOUT * 2)
    finally:
        client.abort()


def db_rows(server: Any, sql: str, *args: Any) -> list[tuple]:
    conn = sqlite3.connect(server.data_dir / "chatbx.sqlite")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_open_registration_password_change_and_removal(chatbx_server):
    """Open mode: slixmpp registers 'newbie' in-band, logs in, adds Alice
    (who approves), changes the password (the old one stops working),
    then removes the account: Alice hears unsubscribe, and nothing of
    newbie is left in any table; the name is reserved (tombstone)."""
    server = chatbx_server(extra_config=registration_config("open"))

    async def main():
        assert await register(server, "newbie", "first-password") == "ok"
        assert await register(server, "newbie", "other-password") == "conflict"
        assert await register(server, "admin", "first-password") == "conflict"  # reserved
        assert await register(server, "ab", "first-password") == "not-acceptable"  # short
        assert await register(server, "shortpw", "1234") == "not-acceptable"
        newbie = await slix_login(server, "newbie@localhost/app", "first-password")
        alice = await slix_login(server, "alice@localhost/desk")
        manual_subscriptions(newbie)
        manual_subscriptions(alice)
        try:
            a_pres = Inbox(alice, "presence")
            await alice.get_roster()
            alice.send_presence()
            await newbie.get_roster()
            newbie.send_presence()
            newbie.send_presence(pto="alice@localhost", ptype="subscribe")
            await a_pres.wait(lambda p: p["type"] == "subscribe", what="subscribe")
            alice.send_presence(pto="newbie@localhost", ptype="subscribed")
            alice.send_presence(pto="newbie@localhost", ptype="subscribe")
            await asyncio.sleep(0.3)
            newbie.send_presence(pto="alice@localhost", ptype="subscribed")
            for _ in range(50):
                if (await roster_items(alice)).get("newbie@localhost", {}).get(
                        "subscription") == "both":
                    break
                await asyncio.sleep(0.1)
            newbie.register_plugin("xep_0077")
            await newbie.plugin["xep_0077"].change_password("second-password", timeout=CLIENT_TIMEOUT)
        finally:
            await slix_close(newbie)
        with pytest.raises(AssertionError):
            await slix_login(server, "newbie@localhost/app", "first-password")
        newbie = await slix_login(server, "newbie@localhost/app", "second-password")
        newbie.register_plugin("xep_0077")
        await newbie.plugin["xep_0077"].cancel_registration(timeout=CLIENT_TIMEOUT)
        await a_pres.wait(lambda p: p["type"] == "unsubscribe"
                          and p["from"].bare == "newbie@localhost", what="unsubscribe")
        await slix_close(newbie)
        for _ in range(50):
            if "newbie@localhost" not in await roster_items(alice):
                break
            await asyncio.sleep(0.1)
        assert "newbie@localhost" not in await roster_items(alice)
        await slix_close(alice)
        with pytest.raises(AssertionError):
            await slix_login(server, "newbie@localhost/app", "second-password")
        assert await register(server, "newbie", "third-password") == "conflict"

    run(main())
    assert db_rows(server, "SELECT count(*) FROM users WHERE username='newbie'") == [(0,)]
    for table, column in (("roster_items", "contact"), ("subscription_requests", "contact"),
                          ("uploads", "uploader")):
        assert db_rows(server, f"SELECT count(*) FROM {table} WHERE {column} LIKE 'newbie@%'") \
            == [(0,)]
    assert db_rows(server, "SELECT count(*) FROM scram_credentials") == [(6,)]  # 3 users x 2
    assert db_rows(server, "SELECT username FROM tombstones") == [("newbie",)]
    assert "account created: newbie@localhost via ibr" in server.log_text()


def _token(url: str) -> str:
    return url.strip().rsplit("/", 1)[1]


def test_invite_mode_token_and_inviter_in_roster(chatbx_server):
    """Invite mode: without a token registration is refused; with Alice's
    contact invite (chatbxctl invite create --contact) slixmpp registers
    with XEP-0445 <preauth/>, and the new account finds Alice on its
    roster ('both'), and Alice finds it on hers; the invite is used up."""
    server = chatbx_server(extra_config=registration_config("invite"))
    url = server.ctl("invite", "create", "--contact", "alice@localhost").stdout
    assert f"https://localhost:{server.http_port}/invite/" in url
    token = _token(url)

    async def main():
        assert await register(server, "juliet", "juliet-password") == "not-allowed"
        assert await register(server, "juliet", "juliet-password", token="bogus") \
            == "not-allowed"
        assert await register(server, "juliet", "juliet-password", token=token) == "ok"
        assert await register(server, "romeo", "romeo-password", token=token) == "not-allowed"
        juliet = await slix_login(server, "juliet@localhost/phone", "juliet-password")
        alice = await slix_login(server, "alice@localhost/desk")
        try:
            assert (await roster_items(juliet))["alice@localhost"]["subscription"] == "both"
            assert (await roster_items(alice))["juliet@localhost"]["subscription"] == "both"
        finally:
            await slix_close(juliet)
            await slix_close(alice)

    run(main())
    assert "account created: juliet@localhost via ibr" in server.log_text()
    assert "invited by alice@localhost" in server.log_text()


def test_captcha_mode(chatbx_server):
    """CAPTCHA mode: the form carries a XEP-0158 challenge with an inline
    PNG; a wrong answer is refused, the right one (read from the server's
    database, as a person reads the image) creates the account."""
    server = chatbx_server(extra_config=registration_config("captcha"))
    seen: list[Any] = []

    def wrong(form: Any) -> str:
        seen.append(form)
        return "not-it"

    def right(form: Any) -> str:
        x = form.xml.find(f"{{{NS_REGISTER}}}query/{{{NS_DATA}}}x")
        challenge = [f.findtext(f"{{{NS_DATA}}}value") for f in x.findall(f"{{{NS_DATA}}}field")
                     if f.get("var") == "challenge"][0]
        return db_rows(server, "SELECT answer FROM captcha_challenges WHERE id = ?",
                       challenge)[0][0]

    async def main():
        assert await register(server, "human", "human-password", captcha=wrong) \
            == "not-acceptable"
        query = seen[0].xml.find(f"{{{NS_REGISTER}}}query")
        data = query.find("{urn:xmpp:bob}data")
        assert data is not None and data.get("type") == "image/png" and len(data.text) > 1000
        assert await register(server, "human", "human-password", captcha=right) == "ok"
        client = await slix_login(server, "human@localhost/x", "human-password")
        await slix_close(client)

    run(main())


def test_registration_limit_per_address(chatbx_server):
    """Open mode with max_per_ip = 2: the third registration from 127.0.0.1
    within the hour is refused (resource-constraint)."""
    server = chatbx_server(extra_config=registration_config("open", max_per_ip=2))

    async def main():
        assert await register(server, "first", "password-1") == "ok"
        assert await register(server, "second", "password-2") == "ok"
        assert await register(server, "third", "password-3") == "resource-constraint"

    run(main())
    assert "too many accounts from there" in server.log_text()


def test_disabled_account_cannot_log_in(chatbx_server):
    """chatbxctl user disable: the running server closes Bob's session
    (within its poll) and refuses his logins; enable lets him in again."""
    server = chatbx_server()

    async def main():
        bob = await slix_login(server, "bob@localhost/x")
        ended = asyncio.get_running_loop().create_future()
        bob.add_event_handler("disconnected", lambda _: ended.done() or ended.set_result(1))
        server.ctl("user", "disable", "bob@localhost")
        await asyncio.wait_for(ended, 40)
        with pytest.raises(AssertionError):
            await slix_login(server, "bob@localhost/x")
        server.ctl("user", "enable", "bob@localhost")
        bob = await slix_login(server, "bob@localhost/x")
        await slix_close(bob)

    run(main(), timeout=90)


def test_admin_commands_for_admins_only(chatbx_server):
    """Alice (in 'admins') lists the commands (XEP-0050 disco), gets the
    online users and sessions (XEP-0133) and disables Bob, whose session
    closes; Carol, not an admin, sees no admin command and is refused
    one (forbidden), but may create a contact invite (XEP-0401)."""
    server = chatbx_server(started=False)
    server.config_path.write_text('admins = ["alice@localhost"]\n'
                                  + server.config_path.read_text())
    server.start()
    online = "http://jabber.org/protocol/admin#get-online-users-list"

    async def main():
        alice = await slix_login(server, "alice@localhost/desk")
        bob = await slix_login(server, "bob@localhost/phone")
        carol = await slix_login(server, "carol@localhost/laptop")
        for c in (alice, carol):
            c.register_plugin("xep_0050")
        try:
            items = await alice.plugin["xep_0050"].get_commands("localhost")
            nodes = {i[1] for i in items["disco_items"]["items"]}
            assert online in nodes and "urn:xmpp:invite#invite" in nodes
            result = await alice.plugin["xep_0050"].send_command("localhost", online)
            form = result["command"]["form"]
            assert set(form["values"]["onlineuserjids"]) == {
                "alice@localhost", "bob@localhost", "carol@localhost"}
            sessions = await alice.plugin["xep_0050"].send_command(
                "localhost", "http://jabber.org/protocol/admin#get-online-users")
            assert "bob@localhost/phone" in str(sessions["command"]["form"]["values"])
            items = await carol.plugin["xep_0050"].get_commands("localhost")
            assert {i[1] for i in items["disco_items"]["items"]} == {"urn:xmpp:invite#invite"}
            with pytest.raises(Exception) as info:
                await carol.plugin["xep_0050"].send_command("localhost", online)
            assert info.value.iq["error"]["condition"] == "forbidden"
            invite = await carol.plugin["xep_0050"].send_command("localhost",
                                                                 "urn:xmpp:invite#invite")
            assert invite["command"]["form"]["values"]["uri"].startswith(
                "xmpp:carol@localhost?roster;preauth=")
            # Disable Bob: a form first, then the submission.
            ended = asyncio.get_running_loop().create_future()
            bob.add_event_handler("disconnected", lambda _: ended.done() or ended.set_result(1))
            node = "http://jabber.org/protocol/admin#disable-user"
            first = await alice.plugin["xep_0050"].send_command("localhost", node)
            assert first["command"]["status"] == "executing"
            form = alice.plugin["xep_0004"].make_form(ftype="submit")
            form.add_field(var="accountjids", ftype="jid-multi", value=["bob@localhost"])
            done = await alice.plugin["xep_0050"].send_command(
                "localhost", node, sessionid=first["command"]["sessionid"], payload=form,
                action="complete")
            assert done["command"]["status"] == "completed"
            await asyncio.wait_for(ended, 10)
        finally:
            for c in (alice, bob, carol):
                await slix_close(c)

    run(main())


def test_new_account_message_limit(chatbx_server):
    """A freshly registered account floods Bob (not a contact): past
    new_account_messages_per_minute the messages bounce with
    policy-violation and Bob gets only the allowed ones."""
    server = chatbx_server(extra_config=registration_config(
        "open", new_account_messages_per_minute=3))

    async def main():
        assert await register(server, "spammer", "spammer-password") == "ok"
        spam = await slix_login(server, "spammer@localhost/x", "spammer-password")
        bob = await slix_login(server, "bob@localhost/b")
        try:
            got, errors = Inbox(bob, "message"), Inbox(spam, "message")
            bob.send_presence()
            for i in range(6):
                spam.send_message(mto="bob@localhost", mbody=f"spam {i}", mtype="chat")
            await errors.wait(lambda m: m["type"] == "error" and "policy-violation" in str(m),
                              what="policy-violation")
            await got.wait(lambda m: m["body"] == "spam 2", what="the third message")
            await asyncio.sleep(0.5)
            assert [m["body"] for m in got.items if m["body"]] == ["spam 0", "spam 1", "spam 2"]
            assert sum(1 for m in errors.items if m["type"] == "error") == 3
        finally:
            await slix_close(spam)
            await slix_close(bob)

    run(main())


def _http(server: Any, method: str, path: str, form: Optional[dict] = None,
          cookies: Optional[dict] = None) -> tuple[int, str, dict]:
    import http.client
    import ssl
    from urllib.parse import urlencode

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=ctx, timeout=15)
    headers = {"Host": f"localhost:{server.http_port}"}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    conn.request(method, path, body, headers)
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    jar = {}
    for value in resp.headers.get_all("Set-Cookie") or []:
        name, _, rest = value.partition("=")
        jar[name] = rest.split(";", 1)[0]
    conn.close()
    return resp.status, text, jar


def test_invite_page_and_web_signup(chatbx_server):
    """The invite link shows the xmpp: URI and a QR code; the web form
    refuses a POST without the CSRF cookie and a taken name, then creates
    the account, which logs in with slixmpp and finds the inviter."""
    import re

    server = chatbx_server(extra_config=registration_config("invite"))
    token = _token(server.ctl("invite", "create", "--contact", "alice@localhost").stdout)
    status, page, _ = _http(server, "GET", f"/invite/{token}")
    assert status == 200
    assert f"xmpp:alice@localhost?roster;preauth={token};ibr=y" in page
    assert 'src="data:image/svg+xml' in page and "Conversations" in page
    assert _http(server, "GET", "/invite/unknown-token")[0] == 404
    status, form_page, jar = _http(server, "GET", f"/invite/{token}/register")
    assert status == 200 and jar.get("chatbx_csrf")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form_page).group(1)
    fields = {"csrf": csrf, "username": "bob", "password": "web-password",
              "password2": "web-password"}
    assert _http(server, "POST", f"/invite/{token}/register", fields)[0] == 403  # no cookie
    status, page, _ = _http(server, "POST", f"/invite/{token}/register", fields, jar)
    assert status == 400 and "taken" in page
    fields["username"] = "webuser"
    status, page, _ = _http(server, "POST", f"/invite/{token}/register", fields, jar)
    assert status == 200 and "webuser@localhost" in page, page
    assert _http(server, "GET", f"/invite/{token}")[0] == 404  # used up

    async def main():
        client = await slix_login(server, "webuser@localhost/x", "web-password")
        try:
            assert (await roster_items(client))["alice@localhost"]["subscription"] == "both"
        finally:
            await slix_close(client)

    run(main())
    # The password page: a wrong password and an unknown account look the same.
    status, page, jar = _http(server, "GET", "/password")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    change = {"csrf": csrf, "jid": "webuser@localhost", "old": "wrong", "password": "new-password",
              "password2": "new-password"}
    wrong = _http(server, "POST", "/password", change, jar)
    unknown = _http(server, "POST", "/password", dict(change, jid="nobody@localhost"), jar)
    assert wrong[0] == unknown[0] == 400
    assert "Wrong address or password" in wrong[1] and "Wrong address or password" in unknown[1]
    status, page, _ = _http(server, "POST", "/password", dict(change, old="web-password"), jar)
    assert status == 200 and "Password changed" in page


def test_new_account_rooms_and_spam_reports_to_abuse(chatbx_server):
    """A fresh account may create two rooms (new_account_rooms = 2); its
    third bounces with policy-violation. Bob blocks it with a XEP-0377
    report; Alice, the configured abuse address (XEP-0157, contact_info),
    gets a message from the server naming reporter, reported JID, reason
    and Bob's text."""
    server = chatbx_server(extra_config=registration_config("open") + (
        "[modules.antispam]\nnew_account_rooms = 2\n"
        "[modules.contact_info]\naddresses = { abuse-addresses = ['xmpp:alice@localhost'] }\n"))

    async def main():
        assert await register(server, "roomer", "roomer-password") == "ok"
        roomer = await slix_login(server, "roomer@localhost/x", "roomer-password")
        alice = await slix_login(server, "alice@localhost/desk")
        bob = await slix_login(server, "bob@localhost/b")
        try:
            pres, notices = Inbox(roomer, "presence"), Inbox(alice, "message")
            alice.send_presence()
            for name in ("one", "two", "three"):
                roomer.send_raw(f"<presence to='{name}@conference.localhost/r'>"
                                        "<x xmlns='http://jabber.org/protocol/muc'/></presence>")
            for name in ("one", "two"):
                await pres.wait(lambda p, n=name: p["from"].bare == f"{n}@conference.localhost"
                                and p["type"] != "error", what=f"room {name}")
            refused = await pres.wait(lambda p: p["from"].bare == "three@conference.localhost",
                                      what="room three")
            assert refused["type"] == "error" and "<policy-violation" in str(refused), refused
            bob.send_raw("<iq type='set' id='rep1'><block xmlns='urn:xmpp:blocking'>"
                                 "<item jid='roomer@localhost'><report xmlns='urn:xmpp:reporting:1'"
                                 " reason='urn:xmpp:reporting:spam'><text>rooms full of ads</text>"
                                 "</report></item></block></iq>")
            notice = await notices.wait(lambda m: m["from"] == "localhost"
                                        and "reported" in m["body"], what="the report notice")
            assert "bob@localhost reported roomer@localhost as spam" in notice["body"]
            assert "The reporter wrote: rooms full of ads" in notice["body"]
        finally:
            for c in (roomer, alice, bob):
                await slix_close(c)

    run(main())
    assert "room creation by new account roomer@localhost refused" in server.log_text()
    assert "rooms full of ads" not in server.log_text()


def test_contact_invite_for_an_existing_account(chatbx_server):
    """XEP-0379: Bob, who already has an account, opens Alice's contact
    invite: his app sends a subscription request with the token; the
    server approves it for Alice and subscribes back, Bob's app approves,
    and both rosters say 'both' without Alice doing anything."""
    server = chatbx_server()
    token = _token(server.ctl("invite", "create", "--contact", "alice@localhost").stdout)

    async def main():
        bob = await slix_login(server, "bob@localhost/phone")
        alice = await slix_login(server, "alice@localhost/desk")
        try:
            await bob.get_roster()
            bob.send_presence()
            presence = bob.make_presence(pto="alice@localhost", ptype="subscribe")
            presence.xml.append(ET.Element(f"{{{NS_PARS}}}preauth", token=token))
            presence.send()
            for _ in range(50):
                if (await roster_items(alice)).get("bob@localhost", {}).get("subscription") == "both":
                    break
                await asyncio.sleep(0.1)
            assert (await roster_items(alice))["bob@localhost"]["subscription"] == "both"
            assert (await roster_items(bob))["alice@localhost"]["subscription"] == "both"
        finally:
            await slix_close(bob)
            await slix_close(alice)

    run(main())
    assert "alice@localhost approved bob@localhost with a contact invite" in server.log_text()
