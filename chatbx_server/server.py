"""The server object: config, clock, database, stores, router, modules.

Built in dependency order with explicit attributes; tests build it with a
fake clock and an in-memory database and get the same object the process
runs.
"""

from __future__ import annotations

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
from chatbx_server.c2s.sasl import DECOY_SECRET, AuthThrottle
from chatbx_server.storage.secrets import ServerSecrets
from chatbx_server.storage.users import HashPool

log = Logger(observer=log_observer)

#: how long a stopping server waits for database calls still under way
STOP_DRAIN_TIMEOUT = 5.0


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
        #: this node in a cluster (chatbx_server.cluster), None on a single node
        self.cluster: Any = None
        if getattr(config, "cluster", None) is not None:
            from chatbx_server.cluster import Cluster

            self.cluster = Cluster(self, config.cluster)
            # Local sessions plus stubs of the other nodes' (one seam:
            # features read server.sessions as before).
            self.sessions = self.cluster.sessions
        if database is None:
            from chatbx_server.storage.database import Database

            database = Database(config.database_url, clock, pool_size=config.database.pool_size)
        self.database = database
        from chatbx_server.storage import Stores

        self.stores = Stores(database, clock)
        limits = config.limits
        # PBKDF2 on threads of its own, never on the database's (users.py).
        self.stores.users.hasher = HashPool(limits.hash_threads, database.reactor,
                                            threadless=database.threadless)
        #: secrets in the database, the same for every process and restart
        #: (decoy SCRAM credentials for unknown users)
        self.secrets = ServerSecrets(database)
        #: failed-login limits per address and account, for every c2s listener
        self.auth_throttle = AuthThrottle.from_limits(clock, limits)
        self.router = Router(self)
        from chatbx_server.accounts import Accounts

        #: account rules and life cycle (registration, removal, disabling)
        self.accounts = Accounts(self)
        self.modules = ModuleManager(self)
        self.started_at: float = clock.seconds()
        self.running = False
        #: (AuthThrottle, connections per address), shared by the c2s listeners
        self.c2s_shared: Optional[tuple[Any, dict[str, int]]] = (self.auth_throttle, {})
        #: federation (chatbx_server.s2s.manager.S2SManager) when an s2s port is on
        self.s2s: Any = None

    def start(self) -> None:
        """Start the database pool and load the enabled modules."""
        if self.running:
            return
        self.database.start()
        # Read (or create) the decoy secret now, so that the first unknown
        # account asked about is not answered slower than a real one.
        self.secrets.get(DECOY_SECRET).addErrback(
            lambda f: log.failure("cannot read the server secrets", f))
        self.modules.load_all(enabled_modules(self.config))
        self.accounts.start()
        if self.cluster is not None:
            self.cluster.start()
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
        self.accounts.stop()
        for session in list(self.sessions):
            session.close("system-shutdown")
        if self.cluster is not None:
            # While the modules still run: what is left in this node's
            # inbox goes to offline storage.
            yield self.cluster.stop()
        # Stanzas accepted before the stop may still be on their way to the
        # database (a lookup first, then the write): let them get there.
        idle = yield self.database.drain(self.clock, STOP_DRAIN_TIMEOUT)
        if not idle:
            log.warn("stopping with {count} database calls still running",
                     count=self.database.in_flight)
        self.modules.unload_all()
        self.stores.users.hasher.stop()
        yield self.stores.close()
        yield defer.maybeDeferred(self.database.stop)

    def is_local(self, host: Optional[str]) -> bool:
        return host in self.hosts

