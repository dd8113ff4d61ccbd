"""chatbx's log events pass one level filter set from ``[log] level``.

twistd installs its own observer before our service starts, so the level
is applied where chatbx's events enter the system: every chatbx module
logs through ``Logger(observer=log_observer)``. Twisted's own events are
left as twistd shows them.
"""

from __future__ import annotations

from typing import cast

from twisted.logger import (FilteringLogObserver, ILogFilterPredicate, ILogObserver, LogLevel,
                            LogLevelFilterPredicate, globalLogPublisher)

_LEVELS = {
    "debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
    "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: the observer every chatbx Logger writes to. The casts are for mypy only:
#: zope.interface's ``@implementer`` (and a plain callable observer) are not
#: visible to it, so providers of ILogObserver/ILogFilterPredicate look
#: incompatible with the interface types Twisted annotates.
log_observer: ILogObserver = cast(ILogObserver, FilteringLogObserver(
    cast(ILogObserver, lambda event: globalLogPublisher(event)),
    [cast(ILogFilterPredicate, _predicate)]))


def set_level(level: str) -> None:
    """Apply ``[log] level`` (already validated by the config loader)."""
    # "" is the default namespace (Twisted treats any falsy namespace so).
    _predicate.setLogLevelForNamespace("", _LEVELS[level.lower()])
