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
            if token is not None:
                iq = client.Iq()
                iq["type"] = "set"
                iq.append(ET.Element(f"{{{NS_PARS}}}preauth", token=token))
                await iq.send(timeout=CLIENT_TIMEOUT)
                form = await client.plugin["xep_0077"].get_registration(timeout=CLIENT_TIMEOUT)
            resp = client.Iq()
            resp["type"] = "set"
            query = form.xml.find(f"{{{NS_REGISTER}}}query")
            x = query.find(f"{{{NS_DATA}}}x") if query is not None else None
            if x is not None:
                answer = captcha(form) if captcha is not None else "000000"
                values = {f.get("var"): (f.findtext(f"{{{NS_DATA}}}value") or "")
                          for f in x.findall(f"{{{NS_DATA}}}field")}
                values.update(username=username, password=password, ocr=answer)
                reg = ET.Element(f"{{{NS_REGISTER}}}query")
                sub = ET.SubElement(reg, f"{{{NS_DATA}}}x", type="submit")
                for var, value in values.items():
                    field = ET.SubElement(sub, f"{{{NS_DATA}}}field", var=var)
                    ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
                resp.append(reg)
            else:
                resp["register"]["username"] = username
                resp["register"]["password"] = password
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
