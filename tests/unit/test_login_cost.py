"""What one password login costs the database (issue 9, login rate): the
transactions a SCRAM login with the default modules runs, and that the
account row read by the login serves the features at bind (antispam's
new-account limits) without a second read."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from chatbx_server.c2s.stream import C2SFactory
from chatbx_server.storage.users import derive_credentials
from chatbx_server.xmpp import ns
from tests.unit.fakes import create_user, make_server
from tests.unit.test_c2s_stream import BINDINGS, Client, FakeTLS

CONFIG = ("[registration]\nmode = 'open'\nnew_account_messages_per_minute = 2\n"
          "new_account_period = 3600\n")


def _count_transactions(server: Any, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Every transaction the server runs from now on, by name."""
    db = server.stores.users.db
    seen: Counter = Counter()
    run = db.run

    def counting(desc: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen[desc] += 1
        return run(desc, fn, *args, **kwargs)

    monkeypatch.setattr(db, "run", counting)
    return seen


def _client(server: Any, monkeypatch: pytest.MonkeyPatch, peer: str) -> Client:
    factory = C2SFactory(server, FakeTLS(), direct_tls=True)
    monkeypatch.setattr(factory, "channel_bindings", lambda transport: dict(BINDINGS))
    return Client(factory, peer=peer)


def _login_with_presence(client: Client, user: str, password: str) -> list[Any]:
    client.login(resource="r", user=user, password=password)
    client.send("<presence/>")
    client.send(f"<iq type='get' id='p' to='localhost'><ping xmlns='{ns.PING}'/></iq>")
    return client.received()


def test_a_scram_login_runs_three_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated login (SCRAM, bind, initial presence) with every default
    module: the credentials, the login (which reads the account row too)
    and the roster; the account is not read again at bind, and its offline
    messages are not asked for (the first login found none)."""
    server = make_server(config_text=CONFIG)
    create_user(server, "alice@localhost", "pencil")
    # The first login also fills caches that outlive sessions (vCard avatar hash).
    first = _client(server, monkeypatch, "10.9.0.1")
    _login_with_presence(first, "alice", "pencil")
    first.send("</stream:stream>")
    first.lose()
    seen = _count_transactions(server, monkeypatch)
    got = _login_with_presence(_client(server, monkeypatch, "10.9.0.1"), "alice", "pencil")
    assert any(e.name == "iq" and e.getAttribute("id") == "p" for e in got)
    assert seen == Counter({"users.get_credentials": 1, "accounts.login": 1,
                            "roster.load": 1}), seen


def test_new_account_limits_apply_after_a_password_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """A self-registered account that logs in with its password is still
    limited as new (the login's copy of its row says so); an operator-made
    one is not."""
    server = make_server(config_text=CONFIG)
    box: list[Any] = []
    server.stores.accounts.register("fresh@localhost",
                                    derive_credentials("pw-secret")).addBoth(box.append)
    assert not isinstance(box[0], Exception), box
    create_user(server, "oper@localhost", "pencil")
    create_user(server, "bob@localhost", "secret")
    for user, password, peer, expected in (("fresh", "pw-secret", "10.9.0.2", 1),
                                           ("oper", "pencil", "10.9.0.3", 0)):
        client = _client(server, monkeypatch, peer)
        _login_with_presence(client, user, password)
        for i in range(3):
            client.send(f"<message to='bob@localhost' type='chat' id='m{i}'><body>{i}</body>"
                        f"</message>")
        errors = [e for e in client.received()
                  if e.name == "message" and e.getAttribute("type") == "error"]
        assert len(errors) == expected, (user, [e.toXml() for e in errors])
    assert server.stores.accounts.info("fresh@localhost").result.last_login is not None
