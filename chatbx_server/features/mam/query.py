"""The XEP-0313 query protocol: form, filters, paging, results; XEP-0441 prefs.

Parsing turns a ``<query/>`` into an :class:`~chatbx_server.storage.archive.ArchiveQuery`
or raises the :class:`StanzaError` the XEP names; building makes the result
messages, the ``<fin/>``, the form, the metadata and the preferences
elements. Pure functions: the feature module does the I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from twisted.words.xish import domish

from chatbx_server.features.time import xep0082_datetime
from chatbx_server.storage.archive import ArchivedMessage, ArchivePage, ArchivePrefs, ArchiveQuery
from chatbx_server.xmpp import ns, rsm
from chatbx_server.xmpp.jid import JID, InvalidJID
from chatbx_server.xmpp.stanzas import StanzaError

__all__ = ["MAM", "MAM_EXTENDED", "FULLTEXT", "FULLTEXT_FIELD", "POLICIES", "fin", "flip_page", "form",
           "metadata", "parse_datetime", "parse_prefs", "parse_query", "prefs_element",
           "result_message"]

MAM = "urn:xmpp:mam:2"
MAM_EXTENDED = "urn:xmpp:mam:2#extended"
FULLTEXT = "urn:xmpp:fulltext:0"
#: XEP-0431 §4.1: the field, in XEP-0068 Clark notation
FULLTEXT_FIELD = "{urn:xmpp:fulltext:0}fulltext"
FORWARD = "urn:xmpp:forward:0"
XDATA_VALIDATE = "http://jabber.org/protocol/xdata-validate"
POLICIES = ("always", "never", "roster")
#: JIDs per preference list (XEP-0441): bounds what an account stores
MAX_PREF_JIDS = 1000

_FIELDS = frozenset(("FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids",
                     FULLTEXT_FIELD))


def _text(element: domish.Element) -> str:
    return "".join(str(c) for c in element.children if isinstance(c, str))


def parse_datetime(text: str) -> float:
    """Unix time of a XEP-0082 DateTime (``2010-07-10T23:08:25Z``, optional
    fraction, ``Z`` or a ``±hh:mm`` offset, which is mandatory).

    Raises:
        ValueError: not that profile.
    """
    text = text.strip()
    if "T" not in text:
        raise ValueError("not a XEP-0082 DateTime")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("XEP-0082 DateTime without a time zone")
    return parsed.timestamp()


def _form_fields(x: domish.Element) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for field in x.elements(ns.DATA_FORMS, "field"):
        var = field.getAttribute("var")
        if var is None:
            raise StanzaError("bad-request", text="form field without 'var'")
        if var in fields:
            raise StanzaError("bad-request", text=f"field {var!r} given twice")
        fields[var] = [_text(v) for v in field.elements(ns.DATA_FORMS, "value")]
    return fields


def _single(fields: dict[str, list[str]], var: str) -> Optional[str]:
    values = fields.get(var)
    if not values:
        return None
    if len(values) > 1:
        raise StanzaError("bad-request", text=f"field {var!r} takes one value")
    return values[0].strip() or None


def parse_query(query: domish.Element, default_page: int, max_page: int,
                count: bool) -> ArchiveQuery:
    """The :class:`ArchiveQuery` of a ``<query xmlns='urn:xmpp:mam:2'/>``.

    Args:
        default_page: page size when the client gives no ``<max/>``.
        max_page: the largest page (a larger ``<max/>`` is lowered, as
            XEP-0313 §4.3.1 allows); also the most ids in an 'ids' field.
        count: include the size of the result set (RSM ``<count/>``).

    Raises:
        StanzaError: bad-request (malformed form, value or ``<set/>``),
            feature-not-implemented (a field this server does not know,
            XEP-0313 §4.1.5; RSM ``<index/>``, XEP-0059 §2.6; a pubsub
            'node', XEP-0442).
    """
    if query.getAttribute("node") is not None:
        raise StanzaError("feature-not-implemented", text="no pubsub node archives here")
    forms = list(query.elements(ns.DATA_FORMS, "x"))
    if len(forms) > 1:
        raise StanzaError("bad-request", text="more than one form")
    fields: dict[str, list[str]] = {}
    if forms:
        if forms[0].getAttribute("type", "submit") != "submit":
            raise StanzaError("bad-request", text="the form must be of type 'submit'")
        fields = _form_fields(forms[0])
        if _single(fields, "FORM_TYPE") != MAM:
            raise StanzaError("bad-request", text=f"FORM_TYPE must be {MAM}")
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise StanzaError("feature-not-implemented", text=f"unknown field {unknown[0]!r}")
    try:
        request = rsm.parse_request(query)
    except rsm.RSMError as exc:
        raise StanzaError("bad-request", text=str(exc)) from None
    if request.index is not None:
        raise StanzaError("feature-not-implemented", text="paging by <index/> is not supported")

    with_jid = with_resource = None
    with_text = _single(fields, "with")
    if with_text is not None:
        try:
            jid = JID.parse(with_text)
        except InvalidJID:
            raise StanzaError("bad-request", text="'with' is not a JID") from None
        with_jid, with_resource = jid.bare, jid.resource
    times: dict[str, Optional[float]] = {}
    for var in ("start", "end"):
        value = _single(fields, var)
        try:
            times[var] = None if value is None else parse_datetime(value)
        except ValueError:
            raise StanzaError("bad-request", text=f"'{var}' is not a XEP-0082 DateTime") from None
    ids = tuple(v.strip() for v in fields.get("ids", ()) if v.strip())
    if len(ids) > max_page:
        raise StanzaError("bad-request", text=f"at most {max_page} ids per query")
    fulltext = _single(fields, FULLTEXT_FIELD)
    return ArchiveQuery(
        limit=rsm.page_size(request, default_page, max_page),
        with_jid=with_jid,
        with_resource=with_resource,
        start=times["start"],
        end=times["end"],
        after_id=_single(fields, "after-id"),
        before_id=_single(fields, "before-id"),
        ids=ids,
        after=request.after,
        before=request.before,
        fulltext=fulltext,
        count=count,
    )


def flip_page(query: domish.Element) -> bool:
    """XEP-0313 §4.3.4: send the page newest first."""
    return any(True for _ in query.elements(MAM, "flip-page"))


def result_message(owner: str, to: str, queryid: Optional[str],
                   message: ArchivedMessage) -> domish.Element:
    """One result (XEP-0313 §4.2): the archived stanza, as stored, forwarded
    (XEP-0297) with the time the server handled it (XEP-0203)."""
    out = domish.Element((ns.CLIENT, "message"))
    out["to"] = to
    out["from"] = owner
    result = out.addElement((MAM, "result"))
    if queryid is not None:
        result["queryid"] = queryid
    result["id"] = message.uid
    forwarded = result.addElement((FORWARD, "forwarded"))
    delay = forwarded.addElement((ns.DELAY, "delay"))
    delay["stamp"] = xep0082_datetime(message.timestamp)
    # Stored by this server from a parsed stanza (well-formed, with its
    # xmlns): sent as it is, without parsing it again.
    forwarded.addRawXml(message.stanza)
    return out


def fin(page: ArchivePage) -> domish.Element:
    """The ``<fin/>`` of the IQ result (XEP-0313 §4.3): complete='true' only
    when the page reaches the end of the result set in the paging direction."""
    out = domish.Element((MAM, "fin"))
    if page.complete:
        out["complete"] = "true"
    first = last = None
    if page.messages:
        first, last = page.messages[0].uid, page.messages[-1].uid
    out.addChild(rsm.response(first, last, page.count, page.first_index))
    return out


def form() -> domish.Element:
    """The query form (XEP-0313 §4.1.5): every field this server supports."""
    query = domish.Element((MAM, "query"))
    x = query.addElement((ns.DATA_FORMS, "x"))
    x["type"] = "form"
    form_type = x.addElement("field")
    form_type["type"], form_type["var"] = "hidden", "FORM_TYPE"
    form_type.addElement("value", content=MAM)
    for var, ftype in (("with", "jid-single"), ("start", "text-single"),
                       ("end", "text-single"), ("before-id", "text-single"),
                       ("after-id", "text-single"), ("ids", "list-multi"),
                       (FULLTEXT_FIELD, "text-single")):
        field = x.addElement("field")
        field["type"], field["var"] = ftype, var
        if var == "ids":
            # The list of ids is open: any value may be given (XEP-0122).
            validate = field.addElement((XDATA_VALIDATE, "validate"))
            validate["datatype"] = "xs:string"
            validate.addElement("open")
    return query


def metadata(first: Optional[tuple[str, float]], last: Optional[tuple[str, float]]
             ) -> domish.Element:
    """XEP-0313 §5 archive metadata: first and last message (empty archive:
    an empty element)."""
    out = domish.Element((MAM, "metadata"))
    for name, end in (("start", first), ("end", last)):
        if end is not None:
            el = out.addElement(name)
            el["id"], el["timestamp"] = end[0], xep0082_datetime(end[1])
    return out


def parse_prefs(prefs: domish.Element, default: str) -> ArchivePrefs:
    """XEP-0441 ``<prefs/>`` of a set; a missing 'default' keeps ``default``.

    Raises:
        StanzaError: bad-request (unknown policy), jid-malformed (a listed
            JID), policy-violation (more than MAX_PREF_JIDS in a list).
    """
    policy = prefs.getAttribute("default", default)
    if policy not in POLICIES:
        raise StanzaError("bad-request", text=f"default must be one of {', '.join(POLICIES)}")
    lists: dict[str, list[str]] = {"always": [], "never": []}
    for name, jids in lists.items():
        for holder in prefs.elements(MAM, name):
            for item in holder.elements(MAM, "jid"):
                try:
                    jid = JID.parse(_text(item).strip())
                except InvalidJID:
                    raise StanzaError("jid-malformed") from None
                if jid.full not in jids:
                    jids.append(jid.full)
        if len(jids) > MAX_PREF_JIDS:
            raise StanzaError("policy-violation",
                              text=f"at most {MAX_PREF_JIDS} JIDs per list")
    return ArchivePrefs(policy, tuple(lists["always"]), tuple(lists["never"]))


def prefs_element(prefs: ArchivePrefs) -> domish.Element:
    """``<prefs/>`` with both lists present, even empty (XEP-0441 §2.1)."""
    out = domish.Element((MAM, "prefs"))
    out["default"] = prefs.default
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        holder = out.addElement(name)
        for jid in jids:
            holder.addElement("jid", content=jid)
    return out
