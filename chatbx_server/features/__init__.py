"""The feature registry: module name -> dotted class path.

Only enabled modules are imported. Adding a protocol means one line here
and one module beside this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatbx_server.config import Config

REGISTRY: dict[str, str] = {
    "message": "chatbx_server.features.message.MessageFeature",
    "roster": "chatbx_server.features.roster.RosterFeature",
    "presence": "chatbx_server.features.presence.PresenceFeature",
    "offline": "chatbx_server.features.offline.OfflineFeature",
    "mam": "chatbx_server.features.mam.MamFeature",
    "disco": "chatbx_server.features.disco.DiscoFeature",
    "ping": "chatbx_server.features.ping.PingFeature",
    "version": "chatbx_server.features.version.VersionFeature",
    "time": "chatbx_server.features.time.TimeFeature",
    "last": "chatbx_server.features.last.LastActivityFeature",
    "contact_info": "chatbx_server.features.contact_info.ContactInfoFeature",
    "upload": "chatbx_server.features.upload.UploadFeature",
    "smacks": "chatbx_server.features.smacks.SmacksFeature",
    "csi": "chatbx_server.features.csi.CSIFeature",
    "fast": "chatbx_server.c2s.fast.FastFeature",
    "push": "chatbx_server.features.push.PushFeature",
    "muc": "chatbx_server.muc.service.MucFeature",
    "caps": "chatbx_server.features.caps.CapsFeature",
    "pep": "chatbx_server.pubsub.pep.PEPFeature",
    "vcard": "chatbx_server.features.vcard.VCardFeature",
    "private": "chatbx_server.features.private.PrivateFeature",
    "bookmarks": "chatbx_server.features.bookmarks.BookmarksFeature",
    "pubsub": "chatbx_server.pubsub.service.PubSubServiceFeature",
    "carbons": "chatbx_server.features.carbons.CarbonsFeature",
    "blocking": "chatbx_server.features.blocking.BlockingFeature",
    "register": "chatbx_server.features.register.RegisterFeature",
    "adhoc": "chatbx_server.features.adhoc.AdhocFeature",
    "antispam": "chatbx_server.features.antispam.AntispamFeature",
    "extdisco": "chatbx_server.features.extdisco.ExtdiscoFeature",
    "outage_status": "chatbx_server.features.outage_status.OutageStatusFeature",
    "proxy65": "chatbx_server.features.proxy65.Proxy65Feature",
    "rtbl": "chatbx_server.features.rtbl.RtblFeature",
}

#: what a modern public server runs when the config names no modules
DEFAULT_MODULES: tuple[str, ...] = (
    "message", "roster", "presence", "offline", "mam", "disco", "ping",
    "version", "time", "last", "contact_info", "upload", "smacks", "csi",
    "muc", "caps", "pep", "vcard", "private", "bookmarks", "pubsub",
    "carbons", "blocking", "register", "adhoc", "antispam", "extdisco",
    "outage_status", "proxy65", "rtbl", "fast", "push",
)


def load_class(name: str) -> Any:
    """Import the feature class registered as ``name``."""
    try:
        path = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown module {name!r} (known: {', '.join(sorted(REGISTRY))})") from None
    module_name, _, class_name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def enabled_modules(config: "Config") -> tuple[str, ...]:
    names = config.modules
    return tuple(names) if names is not None else DEFAULT_MODULES


def build_module_options(cls: Any, config: "Config") -> Any:
    """The feature's Options built from ``[modules.<name>]`` (validated)."""
    if cls.Options is None:
        return None
    raw = dict(config.module_options.get(cls.name, {}))
    from chatbx_server.config import build_options

    return build_options(cls.Options, raw, f"modules.{cls.name}", config.path)


def validate_module_options(config: "Config") -> None:
    """Raise ConfigError for an unknown module or bad module options."""
    from chatbx_server.config import ConfigError

    names = enabled_modules(config)
    for name in list(names) + list(config.module_options):
        try:
            cls = load_class(name)
        except ValueError as exc:
            raise ConfigError(str(exc), "modules", config.path) from None
        build_module_options(cls, config)


__all__ = ["REGISTRY", "DEFAULT_MODULES", "load_class", "enabled_modules",
           "build_module_options", "validate_module_options"]
