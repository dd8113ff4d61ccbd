"""Stanza and stream errors and replies (RFC 6120 §4.9, §8.3)."""

from __future__ import annotations

import pytest
from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import (StanzaError, StreamError, error_reply, is_error_or_result,
                                        result_reply)
from tests.unit.fakes import stanza


def conditions(err: domish.Element) -> list[str]:
    return [c.name for c in err.elements() if c.uri == ns.STANZA_ERRORS and c.name != "text"]


def test_stanza_error_default_types():
    """Each condition carries its usual type unless given one (RFC 6120 §8.3.3)."""
    assert StanzaError("bad-request").type == "modify"
    assert StanzaError("forbidden").type == "auth"
    assert StanzaError("resource-constraint").type == "wait"
    assert StanzaError("item-not-found").type == "cancel"
    assert StanzaError("x-unknown").type == "cancel"
    assert StanzaError("bad-request", type="cancel").type == "cancel"


def test_stanza_error_element():
    """The <error/> holds the condition, an English text and an application element."""
    app = domish.Element(("urn:example", "detail"))
    err = StanzaError("not-allowed", text="nope", app_element=app).element()
    assert err.name == "error" and err["type"] == "cancel"
    assert conditions(err) == ["not-allowed"]
    text = [c for c in err.elements() if c.name == "text"][0]
    assert str(text) == "nope" and text.uri == ns.STANZA_ERRORS
    assert text[("http://www.w3.org/XML/1998/namespace", "lang")] == "en"
    assert err.firstChildElement().name == "not-allowed"
    assert list(err.elements())[-1].uri == "urn:example"


def test_stream_error_element():
    """Stream errors use the streams namespace and the stream-error conditions."""
    err = StreamError("host-unknown", "who?").element()
    assert (err.uri, err.name) == (ns.STREAMS, "error")
    children = list(err.elements())
    assert [(c.uri, c.name) for c in children] == [(ns.STREAM_ERRORS, "host-unknown"),
                                                   (ns.STREAM_ERRORS, "text")]


def test_result_reply_swaps_addresses():
    """A result goes back to the sender, from the target, with the same id."""
    iq = stanza("<iq type='get' id='q1' from='a@x/r' to='x'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = result_reply(iq)
    assert (reply["type"], reply["id"], reply["to"], reply["from"]) == ("result", "q1", "a@x/r", "x")
    assert list(reply.elements()) == []
    assert reply.uri == ns.CLIENT


def test_error_reply_for_iq_keeps_first_child_only():
    """IQ errors carry the request's payload (first child) and the error."""
    iq = stanza("<iq type='set' id='q' from='a@x/r' to='b@x'><a xmlns='urn:a'/><b xmlns='urn:b'/></iq>")
    reply = error_reply(iq, "bad-request", text="why")
    assert reply["type"] == "error" and reply["to"] == "a@x/r" and reply["from"] == "b@x"
    assert [c.name for c in reply.elements()] == ["a", "error"]
    assert conditions(reply.error) == ["bad-request"]
    assert reply.error["type"] == "modify"


def test_error_reply_for_message_keeps_payload():
    """Message errors echo the whole payload, but not a previous <error/>."""
    msg = stanza("<message from='a@x/r' to='b@x' id='m'><body>hi</body><thread>t</thread>"
                 "<error type='cancel'/></message>")
    reply = error_reply(msg, StanzaError("service-unavailable"))
    assert [c.name for c in reply.elements()] == ["body", "thread", "error"]
    assert reply["id"] == "m"
    assert conditions(list(reply.elements())[-1]) == ["service-unavailable"]


def test_error_reply_without_original():
    """include_original=False gives a bare error."""
    msg = stanza("<message from='a@x/r' to='b@x'><body>hi</body></message>")
    assert [c.name for c in error_reply(msg, "gone", include_original=False).elements()] == ["error"]


def test_error_reply_without_addresses():
    """A stanza without from/to gives a reply without them (the router fills in)."""
    reply = error_reply(stanza("<message><body/></message>"), "bad-request")
    assert reply.getAttribute("to") is None and reply.getAttribute("from") is None


def test_is_error_or_result():
    """Errors of any kind and IQ results must never be answered with an error."""
    assert is_error_or_result(stanza("<message type='error'/>"))
    assert is_error_or_result(stanza("<presence type='error'/>"))
    assert is_error_or_result(stanza("<iq type='result'/>"))
    assert is_error_or_result(stanza("<iq type='error'/>"))
    assert not is_error_or_result(stanza("<iq type='get'/>"))
    assert not is_error_or_result(stanza("<message type='result'/>"))
    assert not is_error_or_result(stanza("<message/>"))


def test_parse_stanza_reuses_one_parser_and_recovers_from_bad_input() -> None:
    """parse_stanza keeps one parser open between calls (making one cost
    more than the parse); every call still yields exactly one complete,
    parentless element in jabber:client, and input that is not one spoils
    nothing for the next call."""
    from chatbx_server.xmpp import stanzas
    first = stanzas.parse_stanza("<message to='a@b'><body>one</body></message>")
    parser = stanzas._parsers.parser
    second = stanzas.parse_stanza("<iq xmlns='jabber:client' type='get' id='x'><q xmlns='urn:x'/></iq>")
    assert stanzas._parsers.parser is parser
    assert (first.uri, first.name, first.parent, str(first.body)) == ("jabber:client", "message", None, "one")
    assert (second.name, second.firstChildElement().uri) == ("iq", "urn:x")
    for bad in ("<a/><b/>", "<a>", "", "just text", "</stored><a/>"):
        with pytest.raises(Exception):
            stanzas.parse_stanza(bad)
        again = stanzas.parse_stanza("<presence from='c@d/e'/>")
        assert again.name == "presence" and again["from"] == "c@d/e" and again.parent is None
