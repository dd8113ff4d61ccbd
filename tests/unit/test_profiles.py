"""vcard-temp (XEP-0054), vCard avatars (XEP-0153), the PEP avatar
conversion (XEP-0398), private storage (XEP-0049) and the bookmarks
conversion (XEP-0411) between XEP-0048 and XEP-0402."""

from __future__ import annotations

import base64
import hashlib

from twisted.words.xish import domish

from tests.unit.pephelpers import (NS_PUBSUB, befriend, error_of, events, got_items, items, iq, online,
                                   pep_server, publish, send)

A, B = "alice@localhost", "bob@localhost"
MODULES = ["message", "roster", "presence", "disco", "caps", "pep", "vcard", "private", "bookmarks"]
PNG = b"\x89PNG fake image bytes"
B64 = base64.b64encode(PNG).decode()
SHA = hashlib.sha1(PNG).hexdigest()


def vcard_set(body: str, iq_id: str = "v1") -> str:
    return f"<iq type='set' id='{iq_id}'><vCard xmlns='vcard-temp'>{body}</vCard></iq>"


def vcard_get(to: str, iq_id: str = "g1") -> str:
    return f"<iq type='get' id='{iq_id}' to='{to}'><vCard xmlns='vcard-temp'/></iq>"


def private(kind: str, body: str, iq_id: str = "p1") -> str:
    return f"<iq type='{kind}' id='{iq_id}'><query xmlns='jabber:iq:private'>{body}</query></iq>"


def test_vcard_set_get_readable_by_anyone_written_by_owner() -> None:
    """The owner stores a vCard; another account reads it; nobody else
    writes it; an unknown account is item-not-found."""
    server = pep_server(MODULES)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b")
    assert iq(alice, vcard_set("<FN>Alice</FN>"))["type"] == "result"
    reply = iq(bob, vcard_get(A))
    assert "<FN>Alice</FN>" in reply.toXml()
    assert error_of(iq(bob, f"<iq type='set' id='x' to='{A}'><vCard xmlns='vcard-temp'/></iq>"))[0] == "forbidden"
    assert error_of(iq(bob, vcard_get("nobody@localhost", "g2")))[0] == "item-not-found"
    empty = iq(bob, vcard_get(B, "g3"))
    assert empty["type"] == "result" and empty.firstChildElement().name == "vCard"


def test_vcard_size_limit() -> None:
    """A vCard over max_bytes is refused and the old one stays."""
    server = pep_server(MODULES, config_text="[modules.vcard]\nmax_bytes = 200\n")
    alice = online(server, f"{A}/a")
    iq(alice, vcard_set("<FN>Alice</FN>"))
    reply = iq(alice, vcard_set("<DESC>" + "x" * 300 + "</DESC>", "v2"))
    assert error_of(reply)[0] == "not-acceptable"
    assert "<FN>Alice</FN>" in iq(alice, vcard_get(A)).toXml()


def test_vcard_photo_goes_to_pep_and_presence() -> None:
    """XEP-0398: a vCard photo is published as User Avatar data and
    metadata (contacts with +notify hear of it); XEP-0153: the account's
    next presence carries the photo hash."""
    server = pep_server(MODULES)
    befriend(server, A, B)
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b", ["urn:xmpp:avatar:metadata+notify"])
    iq(alice, vcard_set(f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{B64}</BINVAL></PHOTO>"))
    [ev] = events(bob, "urn:xmpp:avatar:metadata")
    assert f"id='{SHA}'" in ev.toXml().replace('"', "'")
    [(item_id, data)] = got_items(iq(bob, items(A, "urn:xmpp:avatar:data")))
    assert item_id == SHA and str(data) == B64
    bob.take()
    send(alice, domish.Element(("jabber:client", "presence")))
    pres = [e for e in bob.sent if e.name == "presence"]
    assert pres and f"<photo>{SHA}</photo>" in pres[-1].toXml()


def test_pep_avatar_becomes_vcard_photo() -> None:
    """XEP-0398: an avatar a client publishes with PEP (data, then
    metadata) becomes the vCard's PHOTO."""
    server = pep_server(MODULES)
    alice = online(server, f"{A}/a")
    iq(alice, vcard_set("<FN>Alice</FN>"))
    iq(alice, publish("urn:xmpp:avatar:data", f"<data xmlns='urn:xmpp:avatar:data'>{B64}</data>", SHA,
                      iq_id="d"))
    iq(alice, publish("urn:xmpp:avatar:metadata",
                      f"<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{SHA}' bytes='{len(PNG)}' "
                      "type='image/png'/></metadata>", SHA, iq_id="m"))
    xml = iq(alice, vcard_get(A)).toXml()
    assert f"<BINVAL>{B64}</BINVAL>" in xml and "<FN>Alice</FN>" in xml


def test_private_storage_own_only_and_bounded() -> None:
    """XEP-0049: an element is stored per namespace and read back; another
    account may not read it; reserved namespaces and oversize writes are
    refused."""
    server = pep_server(MODULES, config_text="[modules.private]\nmax_bytes = 200\n")
    alice = online(server, f"{A}/a")
    bob = online(server, f"{B}/b")
    assert iq(alice, private("set", "<prefs xmlns='urn:x'><a>1</a></prefs>"))["type"] == "result"
    assert "<a>1</a>" in iq(alice, private("get", "<prefs xmlns='urn:x'/>", "p2")).toXml()
    other = f"<iq type='get' id='o' to='{A}'><query xmlns='jabber:iq:private'><prefs xmlns='urn:x'/></query></iq>"
    assert error_of(iq(bob, other))[0] == "forbidden"
    assert error_of(iq(alice, private("set", "<q xmlns='jabber:client'/>", "p3")))[0] == "not-acceptable"
    big = "<big xmlns='urn:y'>" + "z" * 300 + "</big>"
    assert error_of(iq(alice, private("set", big, "p4")))[0] == "not-acceptable"
    empty = iq(alice, private("get", "<none xmlns='urn:none'/>", "p5"))
    assert "urn:none" in empty.toXml()


def test_bookmarks_old_client_to_new_client_and_back() -> None:
    """XEP-0411: rooms an old client stores in private storage appear as
    XEP-0402 items (and notifications); a room a new client adds, or
    retracts, shows in what the old client reads."""
    server = pep_server(MODULES)
    old = online(server, f"{A}/old")
    new = online(server, f"{A}/new", ["urn:xmpp:bookmarks:1+notify"])
    iq(old, private("set", "<storage xmlns='storage:bookmarks'><conference jid='room@conf.localhost' "
                           "name='Room' autojoin='true'><nick>al</nick></conference>"
                           "<url name='site' url='https://example.org'/></storage>"))
    [ev] = events(new, "urn:xmpp:bookmarks:1")
    [(item_id, conf)] = got_items(iq(new, items(A, "urn:xmpp:bookmarks:1")))
    assert item_id == "room@conf.localhost"
    assert conf["name"] == "Room" and conf["autojoin"] == "true"
    # The new client adds a room with the XEP-0402 publish-options.
    opts = {"pubsub#persist_items": "true", "pubsub#max_items": "max",
            "pubsub#send_last_published_item": "never", "pubsub#access_model": "whitelist"}
    assert iq(new, publish("urn:xmpp:bookmarks:1", "<conference xmlns='urn:xmpp:bookmarks:1' "
                           "name='Other' autojoin='false'/>", "other@conf.localhost", opts, "n1"))["type"] == "result"
    xml = iq(old, private("get", "<storage xmlns='storage:bookmarks'/>", "g")).toXml().replace('"', "'")
    assert "jid='room@conf.localhost'" in xml and "jid='other@conf.localhost'" in xml
    assert "https://example.org" in xml
    # The new client removes the first room; the old client no longer sees it.
    iq(new, f"<iq type='set' id='r'><pubsub xmlns='{NS_PUBSUB}'><retract node='urn:xmpp:bookmarks:1' "
            "notify='true'><item id='room@conf.localhost'/></retract></pubsub></iq>")
    xml = iq(old, private("get", "<storage xmlns='storage:bookmarks'/>", "g2")).toXml()
    assert "room@conf.localhost" not in xml and "other@conf.localhost" in xml
    # The old client writes only one room: the other is retracted from PEP.
    iq(old, private("set", "<storage xmlns='storage:bookmarks'><conference jid='third@conf.localhost' "
                           "autojoin='1'/></storage>", "s2"))
    assert [i for i, _ in got_items(iq(new, items(A, "urn:xmpp:bookmarks:1", iq_id="i2")))] == [
        "third@conf.localhost"]
