"""Node configuration (XEP-0060 §8.2, §16.4.4) and publish-options (XEP-0223).

A configuration is a plain dict of canonical values (what the store keeps
as JSON): ``access_model`` (str), ``max_items`` (int or ``"max"``, the
server's limit), booleans, ``send_last_published_item`` (str),
``roster_groups_allowed`` (list of str), ``title`` (str).

Forms are parsed and rendered here; values from a form are checked and
made canonical, so that a publish-options precondition compares equal to
the stored value exactly when it means the same (``"1"`` and ``"true"`` are
the same boolean; XEP-0223 §3 "the precondition is met").
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from twisted.words.xish import domish

from chatbx_server.xmpp import ns

__all__ = ["ACCESS_MODELS", "FIELDS", "ConfigError", "default_config", "parse_form",
           "form_values", "apply_options", "config_form", "NODE_CONFIG", "PUBLISH_OPTIONS"]

NODE_CONFIG = "http://jabber.org/protocol/pubsub#node_config"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

#: supported access models (XEP-0060 §4.5); "authorize" is not offered
ACCESS_MODELS = ("open", "presence", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
PUBLISH_MODELS = ("publishers", "subscribers", "open")


class ConfigError(ValueError):
    """A form field has a value the service does not accept; ``field`` names it."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(f"{field}: {text}")
        self.field = field
        self.text = text


def _bool(field: str, values: list[str]) -> bool:
    value = values[0].strip().lower() if values else ""
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise ConfigError(field, "not a boolean")


def _choice(options: tuple[str, ...]) -> Any:
    def parse(field: str, values: list[str]) -> str:
        value = values[0].strip() if values else ""
        if value not in options:
            raise ConfigError(field, f"not one of {', '.join(options)}")
        return value
    return parse


def _max_items(field: str, values: list[str]) -> Any:
    value = values[0].strip() if values else ""
    if value == "max":  # XEP-0060 §16.4.4 (1.15.6): the service's maximum
        return "max"
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(field, "not a number or 'max'") from None
    if number < 1:
        raise ConfigError(field, "must be at least 1")
    return number


def _text(field: str, values: list[str]) -> str:
    return values[0] if values else ""


def _list(field: str, values: list[str]) -> list[str]:
    return [v for v in values if v]


#: form var -> (config key, parser, form field type, label)
FIELDS: dict[str, tuple[str, Any, str, str]] = {
    "pubsub#access_model": ("access_model", _choice(ACCESS_MODELS), "list-single",
                            "Who may subscribe and retrieve items"),
    "pubsub#max_items": ("max_items", _max_items, "text-single", "Max # of items to persist"),
    "pubsub#persist_items": ("persist_items", _bool, "boolean", "Persist items to storage"),
    "pubsub#notify_retract": ("notify_retract", _bool, "boolean",
                              "Notify subscribers when items are removed"),
    "pubsub#notify_delete": ("notify_delete", _bool, "boolean",
                             "Notify subscribers when the node is deleted"),
    "pubsub#deliver_payloads": ("deliver_payloads", _bool, "boolean",
                                "Deliver payloads with event notifications"),
    "pubsub#send_last_published_item": ("send_last_published_item", _choice(SEND_LAST),
                                         "list-single", "When to send the last published item"),
    "pubsub#publish_model": ("publish_model", _choice(PUBLISH_MODELS), "list-single",
                             "Who may publish"),
    "pubsub#roster_groups_allowed": ("roster_groups_allowed", _list, "list-multi",
                                     "Roster groups allowed to subscribe"),
    "pubsub#title": ("title", _text, "text-single", "A friendly name for the node"),
}
_CHOICES = {"pubsub#access_model": ACCESS_MODELS, "pubsub#send_last_published_item": SEND_LAST,
            "pubsub#publish_model": PUBLISH_MODELS}


def default_config(pep: bool) -> dict[str, Any]:
    """The configuration of a new node (XEP-0163 §4.1 defaults for PEP:
    presence access, last item sent on subscription and presence)."""
    return {
        "access_model": "presence" if pep else "open",
        "max_items": 1 if pep else 10,
        "persist_items": True,
        "notify_retract": True,
        "notify_delete": True,
        "deliver_payloads": True,
        "send_last_published_item": "on_sub_and_presence" if pep else "on_sub",
        "publish_model": "publishers",
        "roster_groups_allowed": [],
        "title": "",
    }


def form_values(x: domish.Element) -> tuple[Optional[str], str, dict[str, list[str]]]:
    """(FORM_TYPE, form type, var -> values) of a jabber:x:data element."""
    values: dict[str, list[str]] = {}
    form_type: Optional[str] = None
    for field in x.elements(ns.DATA_FORMS, "field"):
        var = field.getAttribute("var")
        if not var:
            continue
        vals = [str(v) for v in field.elements(ns.DATA_FORMS, "value")]
        if var == "FORM_TYPE":
            form_type = vals[0].strip() if vals else None
        else:
            values[var] = vals
    return form_type, x.getAttribute("type", "form"), values


def find_form(parent: Optional[domish.Element]) -> Optional[domish.Element]:
    if parent is None:
        return None
    for child in parent.elements(ns.DATA_FORMS, "x"):
        return child
    return None


def parse_form(x: domish.Element, expected_type: str, strict: bool) -> dict[str, Any]:
    """Canonical values of a submitted configuration or publish-options form.

    Args:
        expected_type: the FORM_TYPE it must carry (when it carries one).
        strict: refuse unknown fields (configuration); publish-options
            ignore unknown ones, which changes nothing (XEP-0223 §3).

    Raises:
        ConfigError: a bad value, a wrong FORM_TYPE or (strict) an unknown field.
    """
    form_type, _, values = form_values(x)
    if form_type is not None and form_type != expected_type:
        raise ConfigError("FORM_TYPE", f"expected {expected_type}")
    out: dict[str, Any] = {}
    for var, vals in values.items():
        spec = FIELDS.get(var)
        if spec is None:
            if strict and var.startswith("pubsub#"):
                raise ConfigError(var, "not supported")
            continue
        key, parse, _, _ = spec
        out[key] = parse(var, vals)
    return out


def apply_options(config: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """A new configuration: ``config`` with ``options`` applied."""
    new = dict(config)
    new.update(options)
    return new


def check_limits(config: Mapping[str, Any], max_items_limit: int) -> None:
    """Raise ConfigError for a max_items above the server's limit."""
    value = config.get("max_items")
    if isinstance(value, int) and value > max_items_limit:
        raise ConfigError("pubsub#max_items", f"at most {max_items_limit} (or 'max')")


def _field(form: domish.Element, var: str, ftype: str, label: Optional[str],
           values: Iterable[str], options: Iterable[str] = ()) -> None:
    field = form.addElement("field")
    field["var"] = var
    field["type"] = ftype
    if label:
        field["label"] = label
    for option in options:
        opt = field.addElement("option")
        opt.addElement("value", content=option)
    for value in values:
        field.addElement("value", content=value)


def _render(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["1" if value else "0"]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def config_form(config: Mapping[str, Any], form_type: str = "form") -> domish.Element:
    """The node_config form of ``config`` (XEP-0060 §8.2.1 / §16.4.4)."""
    form = domish.Element((ns.DATA_FORMS, "x"))
    form["type"] = form_type
    _field(form, "FORM_TYPE", "hidden", None, [NODE_CONFIG])
    for var, (key, _, ftype, label) in FIELDS.items():
        _field(form, var, ftype, label, _render(config.get(key, "")), _CHOICES.get(var, ()))
    return form
