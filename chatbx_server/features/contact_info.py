"""Contact addresses for the service (XEP-0157 1.1).

The addresses come from config and are published as a XEP-0128 data form
(FORM_TYPE ``http://jabber.org/network/serverinfo``) in the server's
disco#info::

    [modules.contact_info]
    addresses = { admin-addresses = ["xmpp:admin@example.org", "mailto:admin@example.org"] }

Keys are the field vars the XEP registers; values are lists of URIs
(``xmpp:``, ``mailto:``, ``https:`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from chatbx_server import _compat  # noqa: F401  (before any wokkel import)
from wokkel import data_form
from twisted.words.xish import domish

from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns

#: field vars registered for the serverinfo FORM_TYPE (XEP-0157 §5, 1.1.0)
ADDRESS_FIELDS = (
    "abuse-addresses", "admin-addresses", "feedback-addresses", "sales-addresses",
    "security-addresses", "status-addresses", "support-addresses",
)


class ContactInfoFeature(Feature):
    name = "contact_info"
    spec = "XEP-0157 1.1 (Contact Addresses for XMPP Services)"

    @dataclass(frozen=True)
    class Options:
        #: field var -> URIs, e.g. {"admin-addresses": ["xmpp:admin@example.org"]}
        addresses: dict[str, list[str]] = field(default_factory=dict)

        def __post_init__(self) -> None:
            for key, values in self.addresses.items():
                if key not in ADDRESS_FIELDS:
                    raise ValueError(f"addresses.{key}: unknown kind of address "
                                     f"(known: {', '.join(ADDRESS_FIELDS)})")
                if isinstance(values, str):
                    raise ValueError(f"addresses.{key} must be an array of URIs")
                for value in values:
                    if not isinstance(value, str) or ":" not in value:
                        raise ValueError(f"addresses.{key}: {value!r} is not a URI "
                                         "(use xmpp:, mailto: or https:)")

    def disco_extensions(self, target: Any, node: Optional[str]) -> Iterable[domish.Element]:
        if target.user is not None or node is not None or self.options is None:
            return ()
        addresses = self.options.addresses
        if not addresses:
            return ()
        form = data_form.Form("result", formNamespace=ns.SERVERINFO)
        for var in ADDRESS_FIELDS:  # registry order, stable for caps hashing
            values = list(addresses.get(var, ()))
            if values:
                form.addField(data_form.Field("list-multi", var=var, values=values))
        return (form.toElement(),)
