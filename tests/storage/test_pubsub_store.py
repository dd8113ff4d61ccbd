"""The pubsub, caps, vCard and private stores on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from chatbx_server.storage.pubsub import NodeNotFound, PreconditionNotMet, TooManyNodes

A = "alice@localhost"
CONFIG = {"access_model": "presence", "max_items": 2, "persist_items": True}


def _user(stores, result_of, jid=A):
    result_of(stores.users.create(jid, "pw"))


def test_publish_autocreate_trim_and_last_items(stores, result_of) -> None:
    """Publishing auto-creates the node, keeps max_items newest items, and
    last_items returns the newest item of each node in one call."""
    _user(stores, result_of)
    ps = stores.pubsub
    r = result_of(ps.publish(A, "n", A, [("1", "<a xmlns='x'/>"), ("2", "<b xmlns='x'/>")], A,
                             CONFIG, {}, 10, 100))
    assert r.created
    r = result_of(ps.publish(A, "n", A, [("3", "<c xmlns='x'/>")], A, CONFIG, {}, 10, 100))
    assert not r.created and r.trimmed == ["1"]
    node, items = result_of(ps.items(A, "n"))
    assert [i.item_id for i in items] == ["2", "3"]
    [(last_node, last)] = result_of(ps.last_items([A]))
    assert last_node.name == "n" and last.item_id == "3"


def test_precondition_and_limits_change_nothing(stores, result_of) -> None:
    """A failed precondition and a node past the per-service bound store nothing."""
    _user(stores, result_of)
    ps = stores.pubsub
    result_of(ps.publish(A, "n", A, [("1", "")], A, CONFIG, {}, 1, 100))
    with pytest.raises(PreconditionNotMet):
        result_of(ps.publish(A, "n", A, [("2", "")], A, CONFIG, {"access_model": "open"}, 1, 100))
    with pytest.raises(TooManyNodes):
        result_of(ps.publish(A, "m", A, [("1", "")], A, CONFIG, {}, 1, 100))
    assert [i.item_id for i in result_of(ps.items(A, "n"))[1]] == ["1"]
    assert result_of(ps.node(A, "m")) is None
    with pytest.raises(NodeNotFound):
        result_of(ps.publish(A, "m", A, [("1", "")], A, None, {}, 5, 100))


def test_subscriptions_affiliations_and_account_deletion(stores, result_of) -> None:
    """Subscriptions and affiliations are stored per node; deleting the
    account deletes its nodes with everything in them."""
    _user(stores, result_of)
    ps = stores.pubsub
    result_of(ps.create(A, "n", A, CONFIG, 5))
    assert result_of(ps.subscribe(A, "n", "bob@localhost/x", "s1")) == "s1"
    assert result_of(ps.subscribe(A, "n", "bob@localhost/x", "s2")) == "s1"
    result_of(ps.set_affiliations(A, "n", {"bob@localhost": "member"}))
    assert result_of(ps.affiliations(A, "n")) == {"bob@localhost": "member"}
    assert result_of(ps.user_subscriptions(A, "bob@localhost")) == [("n", "bob@localhost/x", "s1")]
    result_of(stores.users.delete(A))
    assert result_of(ps.node(A, "n")) is None


def test_caps_vcard_private(stores, result_of) -> None:
    """Caps by ver, one vCard per account, private storage bounded in bytes."""
    _user(stores, result_of)
    result_of(stores.caps.put("sha-1:abc", ["b", "a"]))
    assert sorted(result_of(stores.caps.get("sha-1:abc"))) == ["a", "b"]
    assert result_of(stores.caps.get("sha-1:zzz")) is None
    result_of(stores.vcard.set(A, "<vCard xmlns='vcard-temp'/>"))
    assert result_of(stores.vcard.get(A)) == "<vCard xmlns='vcard-temp'/>"
    assert result_of(stores.private.set(A, "{x}y", "<y xmlns='x'/>", 100))
    assert not result_of(stores.private.set(A, "{x}z", "<z xmlns='x'>" + "a" * 200 + "</z>", 100))
    assert result_of(stores.private.get(A, "{x}z")) is None
    assert result_of(stores.private.get(A, "{x}y")) == "<y xmlns='x'/>"
