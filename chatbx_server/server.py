"""The server object: config, clock, database, stores, router, modules.

Built in dependency order with explicit attributes; tests build it with a
fake clock and an in-memory database and get the same object the process
runs.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from chatbx_server import _compat  # noqa: F401  (before any wokkel import)
from chatbx_server import __version__
from chatbx_server.events import EventBus
from chatbx_server.features import enabled_modules
from chatbx_server.modules import ModuleManager
from chatbx_server.router import Router
from chatbx_server.sessions import SessionManager
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)


class Server:
    """One chatbx process serving ``config.domains``."""

    version = __version__

    def __init__(self, config: Any, clock: Any = None, database: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        self.clock = clock
        self.hosts: frozenset[str] = frozenset(config.domains)
        self.events = EventBus()
        self.sessions = SessionManager()
        if database is None:
            from chatbx_server.storage.database import Database

            database = Database(config.database_url, clock, pool_size=config.database.pool_size)
        self.database = database
        from chatbx_server.storage import Stores

        self.stores = Stores(database, clock)
        #: per-process secret (decoy SCRAM credentials for unknown users)
        self.secret = os.urandom(32)
        self.router = Router(self)
        self.modules = ModuleManager(self)
        self.started_at: float = clock.seconds()
        self.running = False
        #: (AuthThrottle, connections per address), set by the c2s listeners
        self.c2s_shared: Optional[tuple[Any, dict[str, int]]] = None

    def start(self) -> None:
        """Start the database pool and load the enabled modules."""
        if self.running:
            return
        self.database.start()
        self.modules.load_all(enabled_modules(self.config))
        self.started_at = self.clock.seconds()
        self.running = True
        log.info("chatbx {version} serving {domains}", version=self.version,
                 domains=",".join(sorted(self.hosts)))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Close every session, unload modules, write the batched rows still
        queued (archive), stop the database."""
        if not self.running:
            return
        self.running = False
        for session in list(self.sessions):
            session.close("system-shutdown")
        self.modules.unload_all()
        yield self.stores.close()
        yield defer.maybeDeferred(self.database.stop)

    def is_local(self, host: Optional[str]) -> bool:
        return host in self.hosts

