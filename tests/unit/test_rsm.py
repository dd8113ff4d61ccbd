"""XEP-0059 Result Set Management helpers (chatbx_server.xmpp.rsm): pure functions."""

from __future__ import annotations

import pytest

from chatbx_server.xmpp import rsm
from chatbx_server.xmpp.stanzas import parse_stanza

RSM = rsm.NS


def query(inner: str) -> object:
    return parse_stanza(f"<iq><query xmlns='urn:xmpp:mam:2'>{inner}</query></iq>").firstChildElement()


def test_no_set_is_an_empty_request() -> None:
    """A query without <set/> (or no element at all) asks for nothing in particular."""
    assert rsm.parse_request(query("")) == rsm.RSMRequest()
    assert rsm.parse_request(None) == rsm.RSMRequest()
    assert not rsm.RSMRequest().backward


def test_max_after_and_before() -> None:
    """<max/>, <after/> and <before/> are read; before means paging backwards."""
    req = rsm.parse_request(query(f"<set xmlns='{RSM}'><max>10</max><after>abc</after></set>"))
    assert req == rsm.RSMRequest(max=10, after="abc") and not req.backward
    req = rsm.parse_request(query(f"<set xmlns='{RSM}'><max> 5 </max><before>xyz</before></set>"))
    assert req.max == 5 and req.before == "xyz" and req.backward


def test_empty_before_asks_for_the_last_page() -> None:
    """§2.5: an empty <before/> is the last page, distinct from no <before/>."""
    req = rsm.parse_request(query(f"<set xmlns='{RSM}'><max>3</max><before/></set>"))
    assert req.before == "" and req.backward


def test_index_is_parsed() -> None:
    """§2.6: <index/> is read (the using protocol may refuse it)."""
    assert rsm.parse_request(query(f"<set xmlns='{RSM}'><index>7</index></set>")).index == 7


@pytest.mark.parametrize("inner", [
    "<max>-1</max>", "<max>ten</max>", "<max></max>", "<max>99999999999</max>",
    "<index>x</index>", "<max>1</max><max>2</max>", "<after/>",
    "<after>a</after><before>b</before>",
])
def test_malformed_sets_are_refused(inner: str) -> None:
    """Bad numbers, repeated children, an empty <after/> and after+before together raise RSMError."""
    with pytest.raises(rsm.RSMError):
        rsm.parse_request(query(f"<set xmlns='{RSM}'>{inner}</set>"))


def test_two_sets_are_refused() -> None:
    """More than one <set/> in the query is malformed."""
    with pytest.raises(rsm.RSMError):
        rsm.parse_request(query(f"<set xmlns='{RSM}'/><set xmlns='{RSM}'/>"))


def test_other_namespaces_are_ignored() -> None:
    """A <set/> in another namespace is not RSM."""
    assert rsm.parse_request(query("<set xmlns='urn:other'><max>1</max></set>")) == rsm.RSMRequest()


def test_page_size_defaults_and_caps() -> None:
    """The client's max is used, the default without one, never above the maximum (§2.1)."""
    assert rsm.page_size(rsm.RSMRequest(), 50, 250) == 50
    assert rsm.page_size(rsm.RSMRequest(max=10), 50, 250) == 10
    assert rsm.page_size(rsm.RSMRequest(max=1000), 50, 250) == 250
    assert rsm.page_size(rsm.RSMRequest(max=0), 50, 250) == 0


def test_response_for_a_page() -> None:
    """first (with index when known), last and count, in the RSM namespace."""
    el = rsm.response("a", "b", count=20, first_index=0)
    assert (el.uri, el.name) == (RSM, "set")
    first = next(el.elements(RSM, "first"))
    assert str(first) == "a" and first["index"] == "0"
    assert str(next(el.elements(RSM, "last"))) == "b"
    assert str(next(el.elements(RSM, "count"))) == "20"
    assert rsm.response("a", "a").firstChildElement().getAttribute("index") is None


def test_response_for_an_empty_page_has_no_first_or_last() -> None:
    """§2.2: no items, no <first/>/<last/>; the count may still be given."""
    el = rsm.response(count=5)
    assert [c.name for c in el.elements()] == ["count"]
    assert list(rsm.response().elements()) == []
