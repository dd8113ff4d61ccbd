"""Unit tests of the admin ad-hoc commands (XEP-0050, XEP-0133) and the
invite commands (XEP-0401): only admins of the server's own domain."""

from __future__ import annotations

from typing import Any

from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, create_user, make_server

CMD = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin#"


def _server() -> Any:
    server = make_server(domains=("localhost", "other.org"),
                         config_text="")
    # admins is a top-level key: set it on the frozen config directly.
    import dataclasses

    server.config = dataclasses.replace(server.config, admins=("alice@localhost",))
    for jid in ("alice@localhost", "bob@localhost", "eve@other.org"):
        create_user(server, jid)
    return server


def _run(session: Any, node: str, to: str = "localhost", form: str = "") -> domish.Element:
    session.take()
    session.stream.dataReceived(
        f"<iq type='set' id='c1' to='{to}'><command xmlns='{CMD}' node='{node}' "
        f"action='execute'>{form}</command></iq>".encode())
    return session.take()[-1]


def _condition(iq: domish.Element) -> str:
    err = [c for c in iq.elements() if c.name == "error"][0]
    return [c.name for c in err.elements() if c.name != "text"][0]


def _values(iq: domish.Element) -> dict[str, list[str]]:
    command = iq.firstChildElement()
    x = next(command.elements(ns.DATA_FORMS, "x"))
    return {f["var"]: [str(v) for v in f.elements(ns.DATA_FORMS, "value")]
            for f in x.elements(ns.DATA_FORMS, "field")}


def test_admin_lists_online_users_and_others_are_refused() -> None:
    """The admin gets the online users of the domain; a user of the same
    domain and an admin of another domain are refused with forbidden."""
    server = _server()
    alice = bind(server, "alice@localhost/a")
    bob = bind(server, "bob@localhost/b")
    eve = bind(server, "eve@other.org/e")
    reply = _run(alice, ADMIN + "get-online-users-list")
    assert reply["type"] == "result"
    assert set(_values(reply)["onlineuserjids"]) == {"alice@localhost", "bob@localhost"}
    assert _condition(_run(bob, ADMIN + "get-online-users-list")) == "forbidden"
    assert _condition(_run(eve, ADMIN + "get-online-users-list", to="localhost")) == "forbidden"
    assert _condition(_run(alice, ADMIN + "no-such")) == "item-not-found"


def test_disco_lists_what_the_requester_may_run() -> None:
    """disco#items of the commands node: all commands for the admin, only
    the contact invite for a user; other nodes stay the disco feature's."""
    server = _server()
    alice = bind(server, "alice@localhost/a")
    bob = bind(server, "bob@localhost/b")

    def nodes(session: Any) -> set[str]:
        session.take()
        session.stream.dataReceived(
            f"<iq type='get' id='d' to='localhost'><query xmlns='{ns.DISCO_ITEMS}' "
            f"node='{CMD}'/></iq>".encode())
        query = session.take()[-1].firstChildElement()
        return {i["node"] for i in query.elements() if i.name == "item"}

    assert ADMIN + "delete-user" in nodes(alice)
    assert nodes(bob) == {"urn:xmpp:invite#invite"}


def test_two_step_delete_user() -> None:
    """delete-user answers with a form, then deletes the submitted account
    (its session closes); an account of another domain is refused."""
    server = _server()
    alice = bind(server, "alice@localhost/a")
    bob = bind(server, "bob@localhost/b")
    first = _run(alice, ADMIN + "delete-user")
    assert first.firstChildElement()["status"] == "executing"
    form = (f"<x xmlns='{ns.DATA_FORMS}' type='submit'><field var='accountjids'>"
            f"<value>eve@other.org</value></field></x>")
    assert _condition(_run(alice, ADMIN + "delete-user", form=form)) == "not-allowed"
    form = form.replace("eve@other.org", "bob@localhost")
    done = _run(alice, ADMIN + "delete-user", form=form)
    assert done.firstChildElement()["status"] == "completed"
    assert bob.stream.closed_with == ("not-authorized", "account deleted")
    box: list[Any] = []
    server.stores.users.exists("bob@localhost").addCallback(box.append)
    assert box == [False]


def test_contact_invite_command() -> None:
    """Any user gets an invite URI naming them, with a landing page link."""
    server = _server()
    bob = bind(server, "bob@localhost/b")
    values = _values(_run(bob, "urn:xmpp:invite#invite"))
    assert values["uri"][0].startswith("xmpp:bob@localhost?roster;preauth=")
    assert "/invite/" in values["landing-url"][0]
