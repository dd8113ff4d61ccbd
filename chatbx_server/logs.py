"""chatbx's log events pass one level filter set from ``[log] level``.

twistd installs its own observer before our service starts, so the level
is applied where chatbx's events enter the system: every chatbx module
logs through ``Logger(observer=log_observer)``. Twisted's own events are
left as twistd shows them.
"""

from __future__ import annotations

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate,
                            globalLogPublisher)

_LEVELS = {
    "debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
    "warning": LogLevel.warn, "error": LogLevel.error, "critical": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: the observer every chatbx Logger writes to
log_observer = FilteringLogObserver(lambda event: globalLogPublisher(event), [_predicate])


def set_level(level: str) -> None:
    """Apply ``[log] level`` (already validated by the config loader)."""
    _predicate.setLogLevelForNamespace(None, _LEVELS[level.lower()])
