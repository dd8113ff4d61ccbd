"""XEP-0313 message archives (with XEP-0359 ids, XEP-0441 prefs, XEP-0431 search)
through the router, on the fake server."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet import defer
from twisted.words.xish import domish

from chatbx_server.events import COPY
from chatbx_server.features.mam import MamFeature, parse_duration
from chatbx_server.features.mam.policy import StanzaId, archiving_rule, serialize
from chatbx_server.modules import Feature
from chatbx_server.storage.archive import ArchivePrefs, ArchiveQuery
from chatbx_server.storage.roster import RosterItem
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID
from chatbx_server.xmpp.serializer import CLIENT_STREAMS
from tests.unit.fakes import bind, create_user, make_server, stanza

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
MODULES = ["message", "roster", "presence", "offline", "mam", "disco"]
ALICE, BOB, CAROL = "alice@localhost", "bob@localhost", "carol@localhost"


def setup_server(options: str = "", modules: Optional[list[str]] = None) -> Any:
    enabled = ", ".join(f'"{m}"' for m in (modules or MODULES))
    server = make_server(config_text=f"[modules]\nenabled = [{enabled}]\n"
                                     + (f"[modules.mam]\n{options}\n" if options else ""))
    server.clock.advance(T0 - server.clock.seconds())
    for user in (ALICE, BOB, CAROL):
        create_user(server, user)
    return server


def send(server: Any, session: Any, xml: str) -> Any:
    """Route a stanza as the c2s session would (with 'from' stamped)."""
    element = stanza(xml)
    element["from"] = session.jid.full
    return server.router.route(element, session)


def chat(server: Any, session: Any, to: str, body: str, extra: str = "", mtype: str = "chat") -> Any:
    return send(server, session, f"<message to='{to}' type='{mtype}' id='{body}'>"
                                 f"<body>{body}</body>{extra}</message>")


def archive(server: Any, owner: str, **kw: Any) -> Any:
    """The owner's archive page straight from the store (after the writer's flush)."""
    kw.setdefault("limit", 250)
    server.stores.archive.flush()
    out: list[Any] = []
    server.stores.archive.query(owner, ArchiveQuery(**kw)).addBoth(out.append)
    return out[0]


def bodies(page: Any) -> list[str]:
    return [m.stanza.split("<body>")[1].split("</body>")[0] if "<body>" in m.stanza else ""
            for m in page.messages]


def stanza_ids(message: domish.Element) -> list[tuple[str, str]]:
    return [(s["by"], s["id"]) for s in message.elements(SID, "stanza-id")]


def mam_query(server: Any, session: Any, inner: str = "", to: Optional[str] = None,
              queryid: str = "q1", iq_type: str = "set", name: str = "query") -> tuple[list[Any], Any]:
    """Send a MAM IQ; returns (result messages, the IQ answer)."""
    to_attr = f" to='{to}'" if to else ""
    qid = f" queryid='{queryid}'" if queryid and name == "query" else ""
    send(server, session, f"<iq type='{iq_type}' id='iq1'{to_attr}>"
                          f"<{name} xmlns='{MAM}'{qid}>{inner}</{name}></iq>")
    out = session.take()
    assert out and out[-1].name == "iq", out
    return out[:-1], out[-1]


def form(*fields: tuple[str, str], form_type: str = MAM) -> str:
    xml = f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{form_type}</value></field>"
    for var, value in fields:
        xml += f"<field var='{var}'><value>{value}</value></field>"
    return xml + "</x>"


def rsm(inner: str) -> str:
    return f"<set xmlns='{RSM}'>{inner}</set>"


def condition(reply: Any) -> str:
    error = next(e for e in reply.elements() if e.name == "error")
    return next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)


def forwarded_body(result: Any) -> str:
    fwd = next(next(result.elements(MAM, "result")).elements(FORWARD, "forwarded"))
    # what the client parsed back: elements (the archive adds raw XML)
    return "".join(c.toXml() if hasattr(c, "toXml") else str(c) for c in fwd.children)


def result_bodies(results: list[Any]) -> list[str]:
    return [forwarded_body(r).split("<body>")[1].split("</body>")[0] for r in results]


def result_ids(results: list[Any]) -> list[str]:
    return [next(r.elements(MAM, "result"))["id"] for r in results]


def fin_set(iq: Any) -> tuple[Any, dict[str, Any]]:
    fin = next(iq.elements(MAM, "fin"))
    rset = next(fin.elements(RSM, "set"))
    values = {c.name: str(c) for c in rset.elements()}
    first = next(rset.elements(RSM, "first"), None)
    values["index"] = first.getAttribute("index") if first is not None else None
    return fin, values


@pytest.fixture
def pair() -> tuple[Any, Any, Any]:
    """A server with alice and bob online (available)."""
    server = setup_server()
    alice = bind(server, f"{ALICE}/desk", available=True)
    bob = bind(server, f"{BOB}/phone", available=True)
    alice.take(), bob.take()
    return server, alice, bob


# -- archiving and stanza-ids -------------------------------------------------------

def test_delivered_message_carries_the_recipients_archive_id(pair: Any) -> None:
    """Bob's copy is stamped <stanza-id by='bob@localhost'> with the id of the row in
    his archive (XEP-0313 §3.5); Alice's archive has the message too; Bob never
    sees an id of Alice's archive."""
    server, alice, bob = pair
    chat(server, alice, BOB, "hello")
    [got] = bob.take()
    [(by, uid)] = stanza_ids(got)
    assert by == BOB
    bobs = archive(server, BOB)
    assert [m.uid for m in bobs.messages] == [uid] and bodies(bobs) == ["hello"]
    alices = archive(server, ALICE)
    assert bodies(alices) == ["hello"] and alices.messages[0].uid != uid
    assert "stanza-id" not in alices.messages[0].stanza and "stanza-id" not in bobs.messages[0].stanza


def test_delivered_bytes_and_archived_text_match_a_fresh_serialization(pair: Any) -> None:
    """The delivered copy is written from the text serialized once for the
    archive: the bytes on Bob's stream are exactly what the stream
    serializer makes of the stamped stanza (escapes, xml:lang, payload
    namespaces, an empty message), and both archives hold the message as
    ``Element.toXml()`` writes it, in jabber:client."""
    server, alice, bob = pair
    delivered: list[Any] = []
    server.events.on("message/full", lambda event: delivered.append(event.stanza), COPY)
    for extra in ("<body>a &lt;b&gt; &amp; 'c' \"d\"</body>"
                  "<x xmlns='jabber:x:oob'><url>http://e/?a=1&amp;b=2</url></x>",
                  "<received xmlns='urn:xmpp:receipts' id='r&amp;1'/>"):
        bob.stream.transport.clear()
        send(server, alice, f"<message to='{BOB}/phone' type='chat' id='i&apos;1' "
                            f"xml:lang='de'>{extra}</message>")
        stanza_out = delivered[-1]
        assert any(isinstance(c, StanzaId) for c in stanza_out.children)
        assert bob.stream.transport.value() == CLIENT_STREAMS.serialize(stanza_out).encode()
        children = stanza_out.children
        stanza_out.children = [c for c in children if not isinstance(c, StanzaId)]
        expected = stanza_out.toXml()
        stanza_out.children = children
        assert expected.startswith(f"<message xmlns='{ns.CLIENT}'")
        for owner in (ALICE, BOB):
            [stored] = archive(server, owner).messages[-1:]
            assert stored.stanza == expected, owner
    bob.take()


def test_delivery_does_not_wait_for_the_archive(pair: Any) -> None:
    """The message is delivered while its rows are still queued: routing returns at
    once and nothing has been committed until the writer's delay passes."""
    server, alice, bob = pair
    result = chat(server, alice, BOB, "quick")
    assert not isinstance(result, defer.Deferred)
    assert len(bob.take()) == 1
    assert server.stores.archive.writer.pending == 2
    server.clock.advance(1)
    assert server.stores.archive.writer.pending == 0


class FakeCarbons(Feature):
    """Records what a carbons module would copy in pre-message at COPY."""

    name = "carbons"
    seen: list[domish.Element] = []
    #: whether another resource of the sender has carbons on
    others = True

    def setup(self) -> None:
        self.hook("pre-message/bare", lambda ev: FakeCarbons.seen.append(ev.stanza), COPY)

    def copies_sent(self, origin: Any) -> bool:
        return FakeCarbons.others


def test_sent_copy_carries_the_senders_id_but_the_message_does_not(monkeypatch: Any) -> None:
    """With carbons loaded, handlers at COPY see the outgoing message with the sender's
    own stanza-id (for the 'sent' carbon, as Prosody does); what reaches the recipient
    has no id of the sender's archive, and the copy is not changed afterwards."""
    from chatbx_server import features

    monkeypatch.setitem(features.REGISTRY, "carbons", f"{__name__}.FakeCarbons")
    FakeCarbons.seen = []
    FakeCarbons.others = True
    server = setup_server(modules=MODULES + ["carbons"])
    alice = bind(server, f"{ALICE}/desk", available=True)
    bob = bind(server, f"{BOB}/phone", available=True)
    bob.take()
    chat(server, alice, BOB, "carbon me")
    [copy] = FakeCarbons.seen
    [(by, uid)] = stanza_ids(copy)
    assert by == ALICE and [m.uid for m in archive(server, ALICE).messages] == [uid]
    [got] = bob.take()
    assert [b for b, _ in stanza_ids(got)] == [BOB]
    assert stanza_ids(copy) == [(ALICE, uid)]


def test_no_sender_id_is_stamped_when_no_carbon_will_be_sent(monkeypatch: Any) -> None:
    """With no other carbons-enabled resource, the sender's id is not put on a copy
    (nothing would read it), and the message is still in the sender's archive."""
    from chatbx_server import features

    monkeypatch.setitem(features.REGISTRY, "carbons", f"{__name__}.FakeCarbons")
    FakeCarbons.seen = []
    FakeCarbons.others = False
    try:
        server = setup_server(modules=MODULES + ["carbons"])
        alice = bind(server, f"{ALICE}/desk", available=True)
        bob = bind(server, f"{BOB}/phone", available=True)
        bob.take()
        chat(server, alice, BOB, "no carbon")
    finally:
        FakeCarbons.others = True
    [copy] = FakeCarbons.seen
    assert ALICE not in [by for by, _ in stanza_ids(copy)]
    [stored] = archive(server, ALICE).messages
    assert "no carbon" in stored.stanza


def test_forged_archive_ids_are_removed_others_kept(pair: Any) -> None:
    """A stanza-id claiming the recipient's archive that came from outside is removed
    (XEP-0359 §4), also spelt differently; others and <origin-id/> stay."""
    server, alice, bob = pair
    chat(server, alice, BOB, "forged",
         f"<stanza-id xmlns='{SID}' by='bob@localhost' id='fake'/>"
         f"<stanza-id xmlns='{SID}' by='BOB@LocalHost' id='fake2'/>"
         f"<stanza-id xmlns='{SID}' by='conference.example.org' id='keep'/>"
         f"<origin-id xmlns='{SID}' id='o1'/>")
    [got] = bob.take()
    ids = stanza_ids(got)
    assert ("conference.example.org", "keep") in ids
    assert [i for b, i in ids if b.lower() == BOB] == [archive(server, BOB).messages[0].uid]
    assert [o["id"] for o in got.elements(SID, "origin-id")] == ["o1"]


def test_sender_cannot_forge_an_id_of_its_own_archive(pair: Any) -> None:
    """A client's own stanza-id naming its archive is removed before archiving."""
    server, alice, bob = pair
    chat(server, alice, BOB, "mine", f"<stanza-id xmlns='{SID}' by='alice@localhost' id='x'/>")
    [got] = bob.take()
    assert [b for b, _ in stanza_ids(got)] == [BOB]
    assert "stanza-id" not in archive(server, ALICE).messages[0].stanza


def test_full_jid_fallback_to_bare_is_archived_once(pair: Any) -> None:
    """A message to a resource that is gone falls back to the bare JID (RFC 6121
    §8.5.3.2.1); it is archived and stamped once."""
    server, alice, bob = pair
    chat(server, alice, f"{BOB}/gone", "fallback")
    [got] = bob.take()
    assert len(stanza_ids(got)) == 1
    assert bodies(archive(server, BOB)) == ["fallback"]


def test_offline_message_is_archived_once_and_delivered_with_its_id() -> None:
    """A message stored offline is archived when it arrives; when it is delivered
    later it carries that archive id, and the archive still holds it once."""
    server = setup_server()
    alice = bind(server, f"{ALICE}/desk", available=True)
    chat(server, alice, BOB, "while you were out")
    server.clock.advance(10)
    bob = bind(server, f"{BOB}/phone", available=True)
    delivered = [m for m in bob.take() if m.name == "message"]
    assert [str(next(m.elements(ns.CLIENT, "body"))) for m in delivered] == ["while you were out"]
    [(by, uid)] = stanza_ids(delivered[0])
    bobs = archive(server, BOB)
    assert by == BOB and [m.uid for m in bobs.messages] == [uid]


def test_local_to_local_in_both_archives_and_to_oneself_once(pair: Any) -> None:
    """Each side of a local conversation has the message; a message to oneself is
    archived once."""
    server, alice, bob = pair
    chat(server, alice, BOB, "a to b")
    chat(server, bob, ALICE, "b to a")
    chat(server, alice, ALICE, "note to self")
    assert bodies(archive(server, ALICE)) == ["a to b", "b to a", "note to self"]
    assert bodies(archive(server, BOB)) == ["a to b", "b to a"]
    assert bodies(archive(server, ALICE, with_jid=ALICE)) == ["note to self"]


def test_message_from_a_remote_sender_is_archived_with_it(pair: Any) -> None:
    """A message without a local origin (another server) goes into the recipient's
    archive under the sender's bare JID; jabber:server becomes jabber:client."""
    server, _, bob = pair
    message = domish.Element((ns.SERVER, "message"))
    message["from"], message["to"], message["type"] = "romeo@remote.example/orchard", BOB, "chat"
    message.addElement("body", content="from afar")
    server.router.route(message)
    assert len(bob.take()) == 1
    page = archive(server, BOB, with_jid="romeo@remote.example", with_resource="orchard")
    assert bodies(page) == ["from afar"]
    assert page.messages[0].stanza.startswith(f"<message xmlns='{ns.CLIENT}'")


@pytest.mark.parametrize("xml,archived", [
    ("<message type='chat'><body>x</body></message>", True),
    ("<message><body>no type is normal</body></message>", True),
    ("<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'>"
     "<payload>x</payload></encrypted></message>", True),
    ("<message type='chat'><encrypted xmlns='urn:xmpp:omemo:2'><payload>x</payload>"
     "</encrypted></message>", True),
    ("<message type='chat'><received xmlns='urn:xmpp:receipts' id='r'/></message>", True),
    ("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
     "<store xmlns='urn:xmpp:hints'/></message>", True),
    ("<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", False),
    ("<message type='chat'><body>x</body><no-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><body>x</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='headline'><body>x</body></message>", False),
    ("<message type='groupchat'><body>x</body></message>", False),
    ("<message type='error'><body>x</body></message>", False),
])
def test_what_is_archived(pair: Any, xml: str, archived: bool) -> None:
    """Chat and normal messages with a body, an OMEMO payload, a receipt or a store
    hint are archived and stamped; chat states alone, no-store hints, headline,
    groupchat and error messages are not (XEP-0313 §5.1.1, XEP-0334)."""
    server, alice, bob = pair
    element = stanza(xml)
    element["to"] = f"{BOB}/phone"
    element["from"] = alice.jid.full
    server.router.route(element, alice)
    delivered = [m for m in bob.take() if m.name == "message"]
    assert len(archive(server, BOB).messages) == int(archived)
    assert len(archive(server, ALICE).messages) == int(archived)
    assert bool(delivered and stanza_ids(delivered[0])) == archived


# -- queries ------------------------------------------------------------------------

def test_query_sends_results_then_fin(pair: Any) -> None:
    """Results go to the querying resource from the account, each a <result/> with
    the queryid and archive id around the forwarded message and its delay stamp;
    then the IQ result with <fin complete='true'/> naming first and last
    (XEP-0313 §4.2)."""
    server, alice, bob = pair
    chat(server, alice, BOB, "one")
    server.clock.advance(5)
    chat(server, bob, ALICE, "two")
    alice.take()
    results, iq = mam_query(server, alice)
    assert [r["to"] for r in results] == [alice.jid.full] * 2
    assert {r["from"] for r in results} == {ALICE}
    res = [next(r.elements(MAM, "result")) for r in results]
    assert [r["queryid"] for r in res] == ["q1", "q1"]
    stamps = [next(next(r.elements(FORWARD, "forwarded")).elements(ns.DELAY, "delay"))["stamp"]
              for r in res]
    assert stamps == ["2023-11-14T22:13:20Z", "2023-11-14T22:13:25Z"]
    assert "<body>one</body>" in forwarded_body(results[0])
    assert "from='bob@localhost/phone'" in forwarded_body(results[1])
    assert iq["type"] == "result" and iq["id"] == "iq1"
    fin, values = fin_set(iq)
    assert fin["complete"] == "true"
    assert (values["first"], values["last"]) == tuple(result_ids(results))
    assert values["count"] == "2" and values["index"] == "0"


def test_query_sees_what_was_just_delivered(pair: Any) -> None:
    """A query waits for the writer: a stanza-id just received can be paged from."""
    server, alice, bob = pair
    chat(server, bob, ALICE, "just now")
    [got] = alice.take()
    [(_, uid)] = stanza_ids(got)
    assert server.stores.archive.writer.pending
    results, _ = mam_query(server, alice, form(("ids", uid)))
    assert result_ids(results) == [uid]


def test_paging_backwards_from_the_last_page_and_flipped(pair: Any) -> None:
    """An empty <before/> gives the last page in chronological order, not complete,
    with its index; <flip-page/> sends the same page newest first (XEP-0313 §4.3)."""
    server, alice, bob = pair
    for n in range(5):
        chat(server, alice, BOB, f"m{n}")
    results, iq = mam_query(server, alice, rsm("<max>2</max><before/>"))
    assert result_bodies(results) == ["m3", "m4"]
    fin, values = fin_set(iq)
    assert fin.getAttribute("complete") is None
    assert values["index"] == "3" and values["count"] == "5"
    flipped, iq2 = mam_query(server, alice, rsm("<max>2</max><before/>") + f"<flip-page xmlns='{MAM}'/>")
    assert result_ids(flipped) == result_ids(results)[::-1]
    assert fin_set(iq2)[1]["first"] == values["first"]
    earlier, iq3 = mam_query(server, alice, rsm(f"<max>10</max><before>{values['first']}</before>"))
    assert len(earlier) == 3 and fin_set(iq3)[0]["complete"] == "true"


def test_page_size_default_and_cap() -> None:
    """No <max/>: the configured default; a larger <max/> is lowered to max_page_size."""
    server = setup_server("default_page_size = 2\nmax_page_size = 3")
    alice = bind(server, f"{ALICE}/desk", available=True)
    alice.take()
    for n in range(5):
        chat(server, alice, BOB, f"m{n}")
    assert len(mam_query(server, alice)[0]) == 2
    results, iq = mam_query(server, alice, rsm("<max>100</max>"))
    assert len(results) == 3 and fin_set(iq)[0].getAttribute("complete") is None


def test_filters_with_time_ids_and_fulltext(pair: Any) -> None:
    """'with', 'start'/'end', 'after-id'/'before-id', 'ids' and the XEP-0431
    full-text field select the matching messages."""
    server, alice, bob = pair
    chat(server, alice, BOB, "apples")
    server.clock.advance(60)
    chat(server, alice, CAROL, "pears")
    server.clock.advance(60)
    chat(server, bob, ALICE, "apples again")
    alice.take()
    every = result_ids(mam_query(server, alice)[0])

    def ids(*fields: tuple[str, str]) -> list[str]:
        return result_ids(mam_query(server, alice, form(*fields))[0])

    assert ids(("with", BOB)) == [every[0], every[2]]
    assert ids(("with", f"{BOB}/phone")) == [every[2]]
    assert ids(("start", "2023-11-14T22:14:20Z")) == every[1:]
    assert ids(("end", "2023-11-14T23:14:20+01:00")) == every[:2]
    assert ids(("after-id", every[0]), ("before-id", every[2])) == [every[1]]
    assert ids(("ids", every[2])) == [every[2]]
    assert ids(("{urn:xmpp:fulltext:0}fulltext", "APPLES")) == [every[0], every[2]]


@pytest.mark.parametrize("inner,error", [
    (form(("unknown-field", "x")), "feature-not-implemented"),
    (form(("with", BOB), form_type="urn:xmpp:mam:1"), "bad-request"),
    (form(("start", "yesterday")), "bad-request"),
    (form(("start", "2023-11-14T22:13:20")), "bad-request"),
    (form(("after-id", "AAAAAAAAAAAAAAAA")), "item-not-found"),
    (rsm("<after>nope</after>"), "item-not-found"),
    (rsm("<index>3</index>"), "feature-not-implemented"),
    (rsm("<after>a</after><before>b</before>"), "bad-request"),
    (rsm("<max>many</max>"), "bad-request"),
])
def test_query_errors(pair: Any, inner: str, error: str) -> None:
    """Unknown fields, bad forms, values and sets, and ids not in the archive get the
    errors XEP-0313 §4.1.5, §4.3.2 and XEP-0059 name; no result is sent."""
    server, alice, bob = pair
    chat(server, alice, BOB, "x")
    results, iq = mam_query(server, alice, inner)
    assert results == [] and iq["type"] == "error" and condition(iq) == error


@pytest.mark.parametrize("name,iq_type", [("query", "set"), ("query", "get"), ("metadata", "get"),
                                          ("prefs", "get"), ("prefs", "set")])
def test_another_accounts_archive_is_forbidden(pair: Any, name: str, iq_type: str) -> None:
    """Every MAM request to another account's archive is refused with forbidden and
    reveals nothing (XEP-0313 §7.1)."""
    server, alice, bob = pair
    chat(server, bob, ALICE, "private")
    alice.take()
    inner = "<always/><never/>" if name == "prefs" else ""
    results, iq = mam_query(server, alice, inner, to=BOB, iq_type=iq_type, name=name)
    assert results == [] and iq["type"] == "error" and condition(iq) == "forbidden"


def test_query_from_another_server_is_forbidden(pair: Any) -> None:
    """A query arriving from elsewhere (no local session) is refused."""
    server, alice, bob = pair
    iq = stanza(f"<iq type='set' id='r1' from='eve@remote.example/x' to='{ALICE}'>"
                f"<query xmlns='{MAM}'/></iq>")
    replies: list[Any] = []
    server.router.remote = lambda event: replies.append(event.stanza)
    server.router.route(iq)
    assert [condition(r) for r in replies] == ["forbidden"]


def test_form_lists_the_supported_fields(pair: Any) -> None:
    """The query form has every field the server accepts, ids as an open list-multi
    (XEP-0313 §4.1.5), and the XEP-0431 full-text field."""
    server, alice, _ = pair
    _, iq = mam_query(server, alice, iq_type="get", queryid="")
    x = next(next(iq.elements(MAM, "query")).elements("jabber:x:data", "x"))
    fields = {f["var"]: f.getAttribute("type") for f in x.elements("jabber:x:data", "field")}
    assert fields == {"FORM_TYPE": "hidden", "with": "jid-single", "start": "text-single",
                      "end": "text-single", "before-id": "text-single", "after-id": "text-single",
                      "ids": "list-multi", "{urn:xmpp:fulltext:0}fulltext": "text-single"}
    ids = next(f for f in x.elements("jabber:x:data", "field") if f["var"] == "ids")
    assert list(next(ids.elements()).elements())[0].name == "open"


def test_metadata_of_empty_and_filled_archive(pair: Any) -> None:
    """#extended metadata: empty element for an empty archive, else the first and last
    message ids and times (XEP-0313 §5)."""
    server, alice, bob = pair
    _, iq = mam_query(server, alice, iq_type="get", name="metadata")
    assert list(next(iq.elements(MAM, "metadata")).elements()) == []
    chat(server, alice, BOB, "first")
    server.clock.advance(3)
    chat(server, alice, BOB, "last")
    every = result_ids(mam_query(server, alice)[0])
    _, iq = mam_query(server, alice, iq_type="get", name="metadata")
    meta = next(iq.elements(MAM, "metadata"))
    start, end = next(meta.elements(MAM, "start")), next(meta.elements(MAM, "end"))
    assert (start["id"], end["id"]) == (every[0], every[-1])
    assert (start["timestamp"], end["timestamp"]) == ("2023-11-14T22:13:20Z", "2023-11-14T22:13:23Z")


def test_disco_advertises_mam_on_the_account(pair: Any) -> None:
    """The account's disco#info lists mam:2, #extended, sid:0 and fulltext:0."""
    server, alice, _ = pair
    send(server, alice, f"<iq type='get' id='d1' to='{ALICE}'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    [reply] = alice.take()
    found = {f["var"] for f in reply.firstChildElement().elements(ns.DISCO_INFO, "feature")}
    assert {MAM, "urn:xmpp:mam:2#extended", SID, "urn:xmpp:fulltext:0"} <= found


# -- preferences (XEP-0441) ---------------------------------------------------------------

def prefs_of(iq: Any) -> tuple[str, list[str], list[str]]:
    prefs = next(iq.elements(MAM, "prefs"))
    lists = [[str(j) for j in next(prefs.elements(MAM, name)).elements(MAM, "jid")]
             for name in ("always", "never")]
    return prefs["default"], lists[0], lists[1]


def test_prefs_default_and_never_list(pair: Any) -> None:
    """Prefs start at the server default with both lists present; a JID on the never
    list is neither archived nor stamped; others still are; the prefs are stored."""
    server, alice, bob = pair
    carol = bind(server, f"{CAROL}/c", available=True)
    _, iq = mam_query(server, alice, iq_type="get", name="prefs")
    assert prefs_of(iq) == ("always", [], [])
    _, iq = mam_query(server, alice, f"<always/><never><jid>{CAROL}</jid></never>",
                      iq_type="set", name="prefs")
    assert prefs_of(iq) == ("always", [], [CAROL])
    chat(server, carol, ALICE, "not kept")
    chat(server, bob, ALICE, "kept")
    delivered = alice.take()
    assert [bool(stanza_ids(m)) for m in delivered] == [False, True]
    assert bodies(archive(server, ALICE)) == ["kept"]
    stored: list[Any] = []
    server.stores.archive.get_prefs(ALICE).addCallback(stored.append)
    assert stored == [ArchivePrefs("always", (), (CAROL,))]


def test_prefs_default_never_with_always_list(pair: Any) -> None:
    """default='never' archives only what the always list names, outgoing included."""
    server, alice, bob = pair
    mam_query(server, alice, f"<always><jid>{BOB}/phone</jid></always><never/>",
              iq_type="set", name="prefs")
    send(server, alice, "<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='never'>"
                        f"<always><jid>{BOB}</jid></always></prefs></iq>")
    alice.take()
    chat(server, alice, BOB, "to bob")
    chat(server, alice, CAROL, "to carol")
    assert bodies(archive(server, ALICE)) == ["to bob"]


def test_prefs_roster_default_online_and_offline() -> None:
    """default='roster': with the roster cached (user online) only contacts in it are
    archived; offline, the store checks the roster when writing."""
    server = setup_server("default_policy = \"roster\"")
    server.stores.roster.set_item(ALICE, RosterItem(BOB, None, "both", False, False, ()))
    bob = bind(server, f"{BOB}/phone", available=True)
    carol = bind(server, f"{CAROL}/c", available=True)
    chat(server, bob, ALICE, "offline from bob")
    chat(server, carol, ALICE, "offline from carol")
    assert bodies(archive(server, ALICE)) == ["offline from bob"]
    alice = bind(server, f"{ALICE}/desk", available=True)
    send(server, alice, "<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
    alice.take()
    chat(server, bob, ALICE, "online from bob")
    chat(server, carol, ALICE, "online from carol")
    got = alice.take()
    assert [bool(stanza_ids(m)) for m in got] == [True, False]
    assert bodies(archive(server, ALICE)) == ["offline from bob", "online from bob"]


def test_prefs_are_loaded_when_the_module_starts() -> None:
    """Stored preferences apply after a restart (the module loads them at setup)."""
    server = setup_server()
    server.stores.archive.set_prefs(ALICE, ArchivePrefs("never"))
    feature = server.modules.get("mam")
    assert isinstance(feature, MamFeature)
    feature.teardown()
    feature.setup()
    bob = bind(server, f"{BOB}/phone", available=True)
    chat(server, bob, ALICE, "dropped")
    assert bodies(archive(server, ALICE)) == []


@pytest.mark.parametrize("inner,error", [
    ("<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>", "bad-request"),
    ("<prefs xmlns='urn:xmpp:mam:2'><always><jid>@@</jid></always></prefs>", "jid-malformed"),
])
def test_bad_prefs_are_refused(pair: Any, inner: str, error: str) -> None:
    """An unknown default or a malformed JID is refused; nothing changes."""
    server, alice, _ = pair
    send(server, alice, f"<iq type='set' id='p'>{inner}</iq>")
    [iq] = alice.take()
    assert condition(iq) == error
    assert prefs_of(mam_query(server, alice, iq_type="get", name="prefs")[1])[0] == "always"


def test_archiving_rule() -> None:
    """XEP-0441 matching: never beats always, a bare entry matches any resource, a full
    entry only itself; the roster default needs the roster (None when unknown)."""
    bob_phone = JID.parse("bob@x/phone")
    assert archiving_rule(None, "always", bob_phone, None) is True
    assert archiving_rule(None, "never", bob_phone, None) is False
    assert archiving_rule(None, "roster", bob_phone, None) is None
    assert archiving_rule(None, "roster", bob_phone, True) is True
    both = ArchivePrefs("always", ("bob@x",), ("bob@x",))
    assert archiving_rule(both, "always", bob_phone, None) is False
    full = ArchivePrefs("never", ("bob@x/phone",), ())
    assert archiving_rule(full, "always", bob_phone, None) is True
    assert archiving_rule(full, "always", JID.parse("bob@x/desk"), None) is False


# -- expiry, life cycle, configuration ----------------------------------------------------

def test_expired_messages_are_deleted_by_the_periodic_task() -> None:
    """Messages older than expire_after are deleted by the periodic task driven by the
    injected clock; newer ones stay."""
    server = setup_server('expire_after = "1h"')
    # The first run came due while setup moved the clock to T0; the next is at T0+1h.
    alice = bind(server, f"{ALICE}/desk", available=True)
    server.clock.advance(10)
    chat(server, alice, BOB, "old")
    server.clock.advance(2990)
    chat(server, alice, BOB, "new")
    server.clock.advance(500)
    assert bodies(archive(server, ALICE)) == ["old", "new"]
    server.clock.advance(200)  # the hourly run at T0+1h: "old" is older than one hour
    assert bodies(archive(server, ALICE)) == ["new"]
    server.clock.advance(3600)  # the next run, an hour later
    assert bodies(archive(server, ALICE)) == []


def test_server_stop_writes_the_queued_rows_first() -> None:
    """Server.stop waits for the batch writer's final flush before the database stops."""
    server = setup_server()
    alice = bind(server, f"{ALICE}/desk", available=True)
    chat(server, alice, BOB, "last words")
    seen: list[int] = []
    real_stop = server.database.stop

    def stop() -> None:
        with server.database.engine.connect() as conn:
            seen.append(conn.exec_driver_sql("SELECT count(*) FROM archive_messages").scalar())
        real_stop()

    server.database.stop = stop
    server.stop()
    assert seen == [2]


def test_expire_after_values() -> None:
    """expire_after takes seconds or '90d'-style durations, or 'never'; 'm' is ambiguous."""
    assert parse_duration(3600) == 3600
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("1y") == 365 * 86400
    assert parse_duration("30min") == 1800
    assert parse_duration("12 h") == 43200
    assert parse_duration("never") is None
    for bad in ("1m", "soon", "0", 0, "-5s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bad_options_are_refused() -> None:
    """Invalid [modules.mam] values stop the server from starting with a config error."""
    from chatbx_server.config import ConfigError

    for options in ('default_policy = "sometimes"', "max_page_size = 10\ndefault_page_size = 20",
                    'expire_after = "1m"'):
        with pytest.raises(ConfigError):
            setup_server(options)


def test_serialize_matches_domish() -> None:
    """The fast serializer gives exactly domish's text, and leaves odd shapes to it."""
    cases = [
        "<message to='a@b' type='chat' id='1'><body>hi</body></message>",
        "<message xml:lang='en'><body xml:lang='de'>a &amp; &lt;b&gt; 'c' \"d\"</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        "<message id='a&apos;b&quot;c'><x xmlns='urn:a'><y xmlns='urn:b'/><z/></x>tail</message>",
        "<message><foo:bar xmlns:foo='urn:x'>prefixed</foo:bar></message>",
    ]
    for xml in cases:
        element = stanza(xml)
        assert serialize(element) == element.toXml()
    element = stanza(cases[0])
    element.addChild(StanzaId(BOB, "id1"))
    element.addRawXml("<raw/>")
    assert serialize(element) == element.toXml()
