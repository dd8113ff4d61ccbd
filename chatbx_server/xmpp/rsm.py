"""Result Set Management (XEP-0059 1.0): parse a request, build a response.

Pure functions over elements; the protocol that pages (MAM) decides what
its UIDs are and fetches the rows. The rules kept here:

- ``<max/>`` is a non-negative integer; the responder may lower it (§2.1)
  and a using protocol applies its own default when it is absent.
- ``<after>UID</after>`` pages forwards, ``<before>UID</before>``
  backwards; an *empty* ``<before/>`` asks for the last page (§2.5).
- ``<index/>`` asks for a page by position (§2.6); a responder may refuse
  with feature-not-implemented, which the caller decides.
- The response carries ``<first/>`` and ``<last/>`` only when the page has
  items (§2.2), ``<first index='..'/>`` when the position is known, and
  ``<count/>`` when the size of the full set is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from twisted.words.xish import domish

__all__ = ["NS", "RSMError", "RSMRequest", "page_size", "parse_request", "response"]

NS = "http://jabber.org/protocol/rsm"


class RSMError(ValueError):
    """A malformed ``<set/>`` (maps to bad-request)."""


@dataclass(frozen=True)
class RSMRequest:
    """A parsed request ``<set/>``.

    Attributes:
        max: the requested page size, None when absent.
        after: UID to page forwards from.
        before: UID to page backwards from; ``""`` for the last page.
        index: the requested position of the page's first item.
    """

    max: Optional[int] = None
    after: Optional[str] = None
    before: Optional[str] = None
    index: Optional[int] = None

    @property
    def backward(self) -> bool:
        """Paging backwards (``<before/>``, empty or not)."""
        return self.before is not None


def _text(element: domish.Element) -> str:
    return "".join(str(c) for c in element.children if isinstance(c, str))


def _non_negative(name: str, text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        raise RSMError(f"<{name}/> must be a non-negative integer")
    return int(text)


def parse_request(parent: Optional[domish.Element]) -> RSMRequest:
    """The RSM request inside ``parent`` (e.g. MAM's ``<query/>``).

    Returns an empty request when ``parent`` holds no ``<set/>``.

    Raises:
        RSMError: more than one ``<set/>``, a repeated or malformed child,
            or both ``<after/>`` and ``<before/>`` (XEP-0313 §4.3.2 leaves
            that undefined; refusing is clearer than guessing).
    """
    if parent is None:
        return RSMRequest()
    sets = [c for c in parent.elements() if c.uri == NS and c.name == "set"]
    if not sets:
        return RSMRequest()
    if len(sets) > 1:
        raise RSMError("more than one <set/>")
    values: dict[str, str] = {}
    for child in sets[0].elements():
        if child.uri != NS or child.name not in ("max", "after", "before", "index"):
            continue
        if child.name in values:
            raise RSMError(f"more than one <{child.name}/>")
        values[child.name] = _text(child)
    after = values.get("after")
    before = values.get("before")
    if after is not None and not after:
        raise RSMError("<after/> must name an item")
    if after is not None and before is not None:
        raise RSMError("<after/> and <before/> together")
    return RSMRequest(
        max=_non_negative("max", values["max"]) if "max" in values else None,
        after=after,
        before=before,
        index=_non_negative("index", values["index"]) if "index" in values else None,
    )


def page_size(request: RSMRequest, default: int, maximum: int) -> int:
    """How many items to return: the request's max, else ``default``,
    never more than ``maximum`` (XEP-0059 §2.1: the responder may return
    fewer than asked)."""
    wanted = default if request.max is None else request.max
    return min(wanted, maximum)


def response(first: Optional[str] = None, last: Optional[str] = None,
             count: Optional[int] = None, first_index: Optional[int] = None) -> domish.Element:
    """The response ``<set/>`` for a page (§2.2: no first/last for an empty page)."""
    result = domish.Element((NS, "set"))
    if first is not None and last is not None:
        el = result.addElement("first", content=first)
        if first_index is not None:
            el["index"] = str(first_index)
        result.addElement("last", content=last)
    if count is not None:
        result.addElement("count", content=str(count))
    return result
