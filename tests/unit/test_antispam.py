"""Unit tests of the new-account limits (features/antispam.py)."""

from __future__ import annotations

from typing import Any

from chatbx_server.storage.users import derive_credentials
from tests.unit.fakes import bind, create_user, make_server

CONFIG = ("[registration]\nmode = 'open'\nnew_account_messages_per_minute = 2\n"
          "new_account_subscriptions_per_minute = 1\nnew_account_period = 3600\n")


def _self_registered(server: Any, jid: str) -> None:
    box: list[Any] = []
    server.stores.accounts.register(jid, derive_credentials("pw-secret")).addBoth(box.append)
    assert not isinstance(box[0], Exception), box


def _send(session: Any, xml: str) -> None:
    session.stream.dataReceived(xml.encode())


def _errors(session: Any) -> list[str]:
    out = []
    for el in session.take():
        if el.getAttribute("type") == "error":
            err = [c for c in el.elements() if c.name == "error"][0]
            out.append([c.name for c in err.elements() if c.name != "text"][0])
    return out


def test_new_account_messages_to_strangers_are_limited() -> None:
    """A self-registered account sends 2 messages a minute to strangers; the
    third bounces with policy-violation and is not delivered; a minute
    later it may again; an operator-made account is not limited."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "spammer@localhost")
    create_user(server, "bob@localhost")
    create_user(server, "oper@localhost")
    spam = bind(server, "spammer@localhost/x")
    bob = bind(server, "bob@localhost/b", available=True)
    bob.take()
    for i in range(3):
        _send(spam, f"<message to='bob@localhost' type='chat' id='m{i}'><body>buy {i}</body>"
                    f"</message>")
    assert _errors(spam) == ["policy-violation"]
    assert [str([c for c in m.elements() if c.name == "body"][0]) for m in bob.take()
            if m.name == "message"] \
        == ["buy 0", "buy 1"]
    server.clock.advance(61)
    _send(spam, "<message to='bob@localhost' type='chat'><body>again</body></message>")
    assert _errors(spam) == []
    oper = bind(server, "oper@localhost/o")
    for i in range(5):
        _send(oper, f"<message to='bob@localhost' type='chat'><body>{i}</body></message>")
    assert _errors(oper) == []


def test_old_accounts_and_chat_states_are_not_limited() -> None:
    """Past new_account_period, or messages without a body, are not counted."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "fresh@localhost")
    create_user(server, "bob@localhost")
    fresh = bind(server, "fresh@localhost/x")
    for _ in range(5):
        _send(fresh, "<message to='bob@localhost'><active xmlns='http://jabber.org/protocol/"
                     "chatstates'/></message>")
    assert _errors(fresh) == []
    server.clock.advance(3601)
    for _ in range(5):
        _send(fresh, "<message to='bob@localhost'><body>hi</body></message>")
    assert "policy-violation" not in _errors(fresh)


def test_subscription_requests_are_limited() -> None:
    """The second subscription request within a minute bounces."""
    server = make_server(config_text=CONFIG)
    _self_registered(server, "fresh@localhost")
    fresh = bind(server, "fresh@localhost/x")
    _send(fresh, "<presence to='a@localhost' type='subscribe'/>")
    _send(fresh, "<presence to='b@localhost' type='subscribe'/>")
    assert _errors(fresh) == ["policy-violation"]


