"""What goes into an archive, and the stanza-ids that say where it went.

Pure functions over stanzas, run for every routed message (keep them lean):

- :func:`examine` decides whether a message is archived (XEP-0313 §5.1.1,
  XEP-0334 hints) and removes ``<stanza-id/>`` elements that claim to come
  from the archive when they did not (XEP-0359 §4, §7).
- :class:`StanzaId` is the ``<stanza-id/>`` this server adds; being a class
  of its own lets a later handler tell it from one that arrived in the
  stanza, so the same stanza is never archived twice for one account.
- :class:`OutgoingCopy` is what other handlers (carbons) see of a message a
  local client sent: the same stanza plus the sender's own stanza-id, which
  must not leave the server (XEP-0313 §3.5), as Prosody's mod_mam does.
- :func:`archiving_rule` applies the XEP-0441 preferences.
- :func:`archived_form` turns the stream's serialization of a message
  (``StreamSerializer.serialize``, made once per message and shared with
  the delivered copy) into the stored text, and :func:`with_stanza_id` the
  delivered copy's text with the recipient's ``<stanza-id/>``.
- :func:`serialize` is ``Element.toXml()`` for the common shape of a
  stanza, about twice as fast (for stanzas not in a client stream's form).
"""

from __future__ import annotations

import re
from typing import Optional

from twisted.words.xish import domish

from chatbx_server.storage.archive import ArchivePrefs
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import JID, parse_or_none

__all__ = ["OutgoingCopy", "StanzaId", "archived_form", "archiving_rule", "examine", "serialize",
           "with_stanza_id", "SID", "HINTS"]

SID = "urn:xmpp:sid:0"
HINTS = "urn:xmpp:hints"
OMEMO_LEGACY = "eu.siacs.conversations.axolotl"
OMEMO_2 = "urn:xmpp:omemo:2"

#: payloads (besides body, subject and OMEMO) that make a message worth
#: archiving, as in Prosody's mod_mam: receipts and markers (other devices
#: learn what was read), the explicit-encryption marker, invitations,
#: call signalling.
_STORE_NS = frozenset((
    "urn:xmpp:receipts",             # XEP-0184
    "urn:xmpp:chat-markers:0",       # XEP-0333
    "urn:xmpp:eme:0",                # XEP-0380
    "jabber:x:conference",           # XEP-0249
    "urn:xmpp:jingle-message:0",     # XEP-0353
    "urn:xmpp:jingle-message:1",
))
_STANZA_NS = frozenset((ns.CLIENT, ns.SERVER))
_ENCRYPTED_NS = frozenset((OMEMO_LEGACY, OMEMO_2))


class StanzaId(domish.Element):
    """``<stanza-id xmlns='urn:xmpp:sid:0' by=ARCHIVE id=UID/>`` added here."""

    def __init__(self, by: str, uid: str) -> None:
        # What domish.Element.__init__ sets, without its generality: one is
        # made for every archived message.
        self.localPrefixes = {}
        self.uri = self.defaultUri = SID
        self.name = "stanza-id"
        self.attributes = {"by": by, "id": uid}
        self.children = []
        self.parent = None
        self.by = by


class OutgoingCopy(domish.Element):
    """A shallow copy of ``original`` with the sender's stanza-id added.

    The children are shared, not copied (cheap; nothing re-parents them):
    handlers may wrap or serialize the copy, and the original, which is
    what leaves the server, stays without the id.
    """

    def __init__(self, original: domish.Element, stanza_id: StanzaId) -> None:
        super().__init__((original.uri, original.name), defaultUri=original.defaultUri,
                         attribs=dict(original.attributes),
                         localPrefixes=dict(original.localPrefixes))
        self.children = list(original.children)
        self.children.append(stanza_id)
        stanza_id.parent = self
        self.original = original


def _names_archive(value: Optional[str], owner: str) -> bool:
    """Whether a stanza-id 'by' value names the archive of ``owner``."""
    if value is None:
        return False
    if value == owner:
        return True
    jid = parse_or_none(value)  # "Alice@Example.org" is the same archive
    return jid is not None and jid.resource is None and jid.bare == owner


def examine(stanza: domish.Element, owner: str,
            other: Optional[str] = None) -> tuple[bool, Optional[str], bool]:
    """Look at a message once: (archive it?, its body text, already archived).

    Removes every ``<stanza-id/>`` naming ``owner``'s archive (or
    ``other``'s, when given: the local recipient of a local sender's
    message, so the stanza is walked once for both archives) that this
    server did not add (XEP-0359 §4: the archive's ids must not be forged
    by senders). "Already archived" means this server added one for
    ``owner`` before (``message/full`` falling back to ``message/bare``).

    Archived: chat and normal messages (XEP-0313 §5.1.1) with a body, a
    subject, an OMEMO ``<encrypted/>`` payload (no body: end-to-end
    encrypted) or one of the payloads in ``_STORE_NS``, or with a XEP-0334
    ``<store/>`` hint; never with ``<no-store/>`` or
    ``<no-permanent-store/>``, never groupchat, headline or error, never a
    chat-state notification alone.
    """
    store = False
    no_store = False
    body: Optional[str] = None
    archived = False
    forged: Optional[list[domish.Element]] = None
    for child in stanza.children:
        if isinstance(child, str):
            continue
        uri = child.uri
        if uri in _STANZA_NS:
            name = child.name
            if name == "body":
                store = True
                if body is None:
                    body = str(child)
            elif name == "subject":
                store = True
        elif uri == SID:
            if child.name == "stanza-id":
                if isinstance(child, StanzaId):
                    archived = archived or child.by == owner
                elif (_names_archive(child.attributes.get("by"), owner)
                      or (other is not None and _names_archive(child.attributes.get("by"), other))):
                    forged = forged or []
                    forged.append(child)
        elif uri == HINTS:
            if child.name in ("no-store", "no-permanent-store"):
                no_store = True
            elif child.name == "store":
                store = True
        elif uri in _ENCRYPTED_NS:
            if child.name == "encrypted":
                store = True
        elif uri in _STORE_NS:
            store = True
    if forged:
        for child in forged:
            stanza.children.remove(child)
    store = (store and not no_store
             and stanza.attributes.get("type", "normal") in ("chat", "normal"))
    return store, body, archived


def archiving_rule(prefs: Optional[ArchivePrefs], default: str, target: JID,
                   roster: Optional[bool]) -> Optional[bool]:
    """Whether to archive a message with ``target`` under XEP-0441 prefs.

    Args:
        prefs: the account's stored preferences, None when it set none.
        default: the server's default policy for accounts without prefs.
        target: 'to' of an outgoing message, 'from' of an incoming one
            (XEP-0441 §2.3.2, §2.3.3).
        roster: whether the target's bare JID is in the owner's roster, None
            when not known here.

    Returns:
        True or False; None when the answer depends on a roster that is not
        known here (the store checks it when writing).

    A listed full JID matches that full JID; a listed bare JID matches any
    resource (§2.3.1). A JID in both lists is not archived.
    """
    if prefs is not None:
        bare, full = target.bare, target.full
        if bare in prefs.never or full in prefs.never:
            return False
        if bare in prefs.always or full in prefs.always:
            return True
        default = prefs.default
    if default == "always":
        return True
    if default == "never":
        return False
    return roster


_XML_NS = "http://www.w3.org/XML/1998/namespace"
_TEXT_SPECIAL = re.compile(r"[&<>]")
_ATTR_SPECIAL = re.compile(r"[&<>'\"]")


def _serialize(element: domish.Element, parent_default: str, out: list[str]) -> bool:
    """Append ``element`` to ``out`` as domish would; False for a shape left
    to domish (namespace prefixes, raw XML, foreign attribute namespaces)."""
    if element.localPrefixes:
        return False
    default = element.defaultUri
    if default is None:
        default = parent_default
    uri = element.uri
    if uri is not None and uri != default:
        return False  # domish would invent a prefix
    name = element.name
    out.append("<" + name)
    if default != parent_default:
        out.append(f" xmlns='{default}'")
    for key, value in element.attributes.items():
        if value.__class__ is not str:
            return False
        if _ATTR_SPECIAL.search(value) is not None:
            value = domish.escapeToXml(value, 1)
        if key.__class__ is tuple:
            if key[0] != _XML_NS:
                return False
            out.append(f" xml:{key[1]}='{value}'")
        else:
            out.append(f" {key}='{value}'")
    children = element.children
    if not children:
        out.append("/>")
        return True
    out.append(">")
    for child in children:
        if child.__class__ is str:  # not SerializedXML, a str subclass
            out.append(domish.escapeToXml(child) if _TEXT_SPECIAL.search(child) else child)
        elif isinstance(child, domish.Element):
            if not _serialize(child, default, out):
                return False
        else:
            return False
    out.append(f"</{name}>")
    return True


def serialize(stanza: domish.Element) -> str:
    """The same text as ``stanza.toXml()``, faster for the common shape
    (default namespaces only, plain or xml:lang attributes); anything else
    is left to domish."""
    out: list[str] = []
    if _serialize(stanza, "", out):
        return "".join(out)
    return stanza.toXml()


_OPEN = "<message"
_CLOSE = "</message>"
_CLIENT_OPEN = f"<message xmlns='{ns.CLIENT}'"


def archived_form(stanza: domish.Element, wire: str) -> str:
    """The stored text of a message whose client-stream serialization is
    ``wire``.

    In a client stream the stanza carries no ``xmlns`` (the stream header
    declares ``jabber:client``); stored, it stands alone, so the namespace
    is added to the opening tag. What arrived over s2s is thereby kept as
    ``jabber:client`` too: results go to clients (RFC 6120 §4.8.3).
    """
    if wire.startswith(_OPEN) and wire[8:9] in (" ", ">", "/"):
        return _CLIENT_OPEN + wire[8:]
    xml = serialize(stanza)  # not reached for a message; kept correct anyway
    if stanza.uri == ns.SERVER:
        xml = xml.replace(f"xmlns='{ns.SERVER}'", f"xmlns='{ns.CLIENT}'", 1)
    return xml


def with_stanza_id(wire: str, stanza_id: StanzaId) -> Optional[str]:
    """``wire`` (a message in client-stream form) with ``stanza_id`` added
    as its last child, as the stream serializer would write it; None when
    ``wire`` does not end like a message."""
    by, uid = stanza_id.attributes["by"], stanza_id.attributes["id"]
    if _ATTR_SPECIAL.search(by) is not None:
        by = domish.escapeToXml(by, 1)
    tag = f"<stanza-id xmlns='{SID}' by='{by}' id='{uid}'/>"
    if wire.endswith(_CLOSE):
        return wire[:-10] + tag + _CLOSE
    if wire.endswith("/>") and wire.startswith(_OPEN) and wire.find(">") == len(wire) - 1:
        return wire[:-2] + ">" + tag + _CLOSE
    return None
