"""Room configuration and its data forms (XEP-0045 §10.2, §15.5.3; XEP-0004).

``RoomConfig`` is what is stored (as JSON) and what the room consults;
``config_form`` renders it as the ``muc#roomconfig`` form an owner edits,
``apply_form`` reads a submitted form back (unknown fields are ignored, as
§10.2 allows; a bad value is ``not-acceptable``), and ``roominfo_form`` is
the XEP-0128 ``muc#roominfo`` extension of the room's disco#info.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError

MUC = "http://jabber.org/protocol/muc"
ROOMCONFIG = MUC + "#roomconfig"
ROOMINFO = MUC + "#roominfo"
REQUEST = MUC + "#request"

WHOIS = ("moderators", "anyone")
ALLOWPM = ("anyone", "participants", "moderators", "none")


@dataclass
class RoomConfig:
    """One room's settings (defaults: an open, public, temporary room)."""

    name: str = ""
    description: str = ""
    lang: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password: str = ""
    #: who sees real JIDs: "moderators" (semi-anonymous) or "anyone"
    whois: str = "moderators"
    #: 0: the service's limit
    max_users: int = 0
    change_subject: bool = False
    allow_invites: bool = False
    allow_pm: str = "anyone"
    archive: bool = True
    history_length: int = 20
    voice_requests: bool = True

    @property
    def non_anonymous(self) -> bool:
        return self.whois == "anyone"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RoomConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def copy(self) -> "RoomConfig":
        return dataclasses.replace(self)


# (form var, attribute, field type, label, options)
_FIELDS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("muc#roomconfig_roomname", "name", "text-single", "Name", ()),
    ("muc#roomconfig_roomdesc", "description", "text-single", "Description", ()),
    ("muc#roomconfig_lang", "lang", "text-single", "Language", ()),
    ("muc#roomconfig_persistentroom", "persistent", "boolean", "Persistent (kept when empty)", ()),
    ("muc#roomconfig_publicroom", "public", "boolean", "Listed in the room directory", ()),
    ("muc#roomconfig_membersonly", "members_only", "boolean", "Members only", ()),
    ("muc#roomconfig_moderatedroom", "moderated", "boolean",
     "Moderated (only participants with voice may talk)", ()),
    ("muc#roomconfig_passwordprotectedroom", "password", "boolean", "Password protected", ()),
    ("muc#roomconfig_roomsecret", "password", "text-private", "Password", ()),
    ("muc#roomconfig_whois", "whois", "list-single", "Who may see real JIDs", WHOIS),
    ("muc#roomconfig_maxusers", "max_users", "text-single", "Maximum occupants (0: no limit)", ()),
    ("muc#roomconfig_changesubject", "change_subject", "boolean",
     "Participants may change the subject", ()),
    ("muc#roomconfig_allowinvites", "allow_invites", "boolean", "Occupants may invite", ()),
    ("muc#roomconfig_allowpm", "allow_pm", "list-single", "Who may send private messages",
     ALLOWPM),
    ("muc#roomconfig_enablearchiving", "archive", "boolean", "Archive messages (MAM)", ()),
    ("muc#maxhistoryfetch", "history_length", "text-single", "Messages of history on join", ()),
    ("muc#roomconfig_allowvoicerequests", "voice_requests", "boolean",
     "Visitors may request voice", ()),
)


def _field(form: domish.Element, var: str, ftype: Optional[str], values: Iterable[str],
           label: Optional[str] = None, options: Iterable[str] = ()) -> domish.Element:
    field = form.addElement("field")
    field["var"] = var
    if ftype:
        field["type"] = ftype
    if label:
        field["label"] = label
    for opt in options:
        option = field.addElement("option")
        option["label"] = opt
        option.addElement("value", content=opt)
    for value in values:
        field.addElement("value", content=value)
    return field


def new_form(form_type: str, ftype: str = "form", title: Optional[str] = None) -> domish.Element:
    form = domish.Element((ns.DATA_FORMS, "x"))
    form["type"] = ftype
    if title:
        form.addElement("title", content=title)
    _field(form, "FORM_TYPE", "hidden", [form_type])
    return form


def add_field(form: domish.Element, var: str, value: Any, ftype: Optional[str] = None,
              label: Optional[str] = None) -> None:
    values = list(value) if isinstance(value, (list, tuple)) else [
        ("1" if value else "0") if isinstance(value, bool) else str(value)]
    _field(form, var, ftype, values, label)


def config_form(config: RoomConfig, title: str) -> domish.Element:
    """The muc#roomconfig form with the current values (§10.2 Example 163)."""
    form = new_form(ROOMCONFIG, title=title)
    for var, attr, ftype, label, options in _FIELDS:
        value = getattr(config, attr)
        if var == "muc#roomconfig_passwordprotectedroom":
            value = bool(value)
        if isinstance(value, bool):
            values = ["1" if value else "0"]
        else:
            values = [str(value)]
        _field(form, var, ftype, values, label, options)
    return form


def parse_form(form: domish.Element) -> dict[str, list[str]]:
    """A submitted form's fields: var -> values."""
    out: dict[str, list[str]] = {}
    for field in form.elements(ns.DATA_FORMS, "field"):
        var = field.getAttribute("var")
        if var:
            out[var] = [str(v) for v in field.elements(ns.DATA_FORMS, "value")]
    return out


def find_form(parent: domish.Element, form_type: Optional[str] = None) -> Optional[domish.Element]:
    for form in parent.elements(ns.DATA_FORMS, "x"):
        if form_type is None:
            return form
        fields = parse_form(form)
        if fields.get("FORM_TYPE", [None])[0] == form_type:
            return form
    return None


def _bool(value: str) -> bool:
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ValueError(value)


def apply_form(config: RoomConfig, fields: dict[str, list[str]], max_users: int) -> RoomConfig:
    """A new RoomConfig from ``config`` and a submitted form.

    Raises:
        StanzaError: not-acceptable for a value that does not fit its field.
    """
    new = config.copy()
    protected: Optional[bool] = None
    for var, attr, ftype, _, options in _FIELDS:
        if var not in fields:
            continue
        values = fields[var]
        value = values[0] if values else ""
        try:
            if var == "muc#roomconfig_passwordprotectedroom":
                protected = _bool(value) if value else False
                continue
            if ftype == "boolean":
                setattr(new, attr, _bool(value) if value else False)
            elif attr in ("max_users", "history_length"):
                number = int(value or 0)
                if number < 0 or (attr == "max_users" and number > max_users):
                    raise ValueError(value)
                setattr(new, attr, number)
            elif options:
                if value not in options:
                    raise ValueError(value)
                setattr(new, attr, value)
            else:
                setattr(new, attr, value[:1024])
        except ValueError:
            raise StanzaError("not-acceptable", text=f"bad value for {var}") from None
    if protected is False:
        new.password = ""
    elif protected and not new.password:
        raise StanzaError("not-acceptable", text="a password-protected room needs a password")
    return new


def disco_features(config: RoomConfig, archive: bool) -> list[str]:
    """The room's disco#info features (§6.4, §15.6)."""
    out = [MUC, MUC + "#stable_id", MUC + "#self-ping-optimization",
           "muc_public" if config.public else "muc_hidden",
           "muc_persistent" if config.persistent else "muc_temporary",
           "muc_membersonly" if config.members_only else "muc_open",
           "muc_moderated" if config.moderated else "muc_unmoderated",
           "muc_nonanonymous" if config.non_anonymous else "muc_semianonymous",
           "muc_passwordprotected" if config.password else "muc_unsecured",
           "urn:xmpp:occupant-id:0", "urn:xmpp:sid:0", "urn:xmpp:message-moderate:1",
           "urn:xmpp:message-retract:1", "vcard-temp",
           ns.DISCO_INFO, ns.DISCO_ITEMS]
    if archive:
        out.append("urn:xmpp:mam:2")
    return out


def roominfo_form(config: RoomConfig, occupants: int, subject: Optional[str],
                  avatar_hash: Optional[str]) -> domish.Element:
    """XEP-0045 §15.5.4 muc#roominfo, as an XEP-0128 extension."""
    form = new_form(ROOMINFO, "result")
    add_field(form, "muc#roominfo_description", config.description, label="Description")
    add_field(form, "muc#roominfo_occupants", occupants, label="Number of occupants")
    add_field(form, "muc#roominfo_subject", subject or "", label="Subject")
    add_field(form, "muc#roominfo_changesubject", config.change_subject,
              label="Occupants may change the subject")
    add_field(form, "muc#roomconfig_roomname", config.name, label="Name")
    if config.lang:
        add_field(form, "muc#roominfo_lang", config.lang, label="Language")
    add_field(form, "muc#maxhistoryfetch", config.history_length)
    if avatar_hash:
        add_field(form, "muc#roominfo_avatarhash", [avatar_hash], "text-multi")
    return form
