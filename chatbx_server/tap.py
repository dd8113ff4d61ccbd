"""The twistd entry point: ``twistd chatbx [--config FILE]``.

Start-up does the slow, fallible things before the reactor runs: read and
check the configuration, make the data folder and any missing self-signed
certificate, and bring the database schema up to date (SQLite) or refuse
to start on one that is behind or ahead (PostgreSQL). Each failure is one
line naming what to do.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any, cast

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from chatbx_server import _compat  # noqa: F401  (before any wokkel import)
from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)


class Options(usage.Options):
    """Command-line options of ``twistd chatbx``."""

    optParameters = [["config", "c", None, "Path to a TOML configuration file."]]


class ChatbxService(service.MultiService):
    """Starts the server before its listeners and stops it after them."""

    def __init__(self, server: Any) -> None:
        super().__init__()
        self.server = server

    def startService(self) -> None:
        self.server.start()
        super().startService()

    def stopService(self) -> Any:
        d = super().stopService()
        if d is None:
            return self.server.stop()
        return d.addCallback(lambda _: self.server.stop())


def freeze_heap() -> None:
    """Move what start-up built into the collector's permanent generation.

    Modules, classes and the server's own objects (~100k) live as long as
    the process; unfrozen, every full collection walks them again (~30 ms
    each, several a minute under message load: bench/gc_churn.py). Garbage
    is collected first so that none of it is kept for good.
    """
    gc.collect()
    gc.freeze()


def _fail(message: str) -> "None":
    sys.stderr.write(f"chatbx: error: {message}\n")
    raise SystemExit(1)


def prepare_database(url: str) -> None:
    """Upgrade the SQLite default; refuse a PostgreSQL schema that is off."""
    from sqlalchemy.exc import SQLAlchemyError

    from chatbx_server.storage import migrate

    try:
        state = migrate.check(url)
        if state == migrate.SchemaState.AHEAD:
            _fail(f"the database schema ({migrate.current(url)}) is newer than this chatbx "
                  f"knows (head {migrate.head()}); upgrade chatbx")
        if state in (migrate.SchemaState.EMPTY, migrate.SchemaState.BEHIND):
            if url.startswith("sqlite"):
                migrate.upgrade(url)
            elif state == migrate.SchemaState.EMPTY:
                _fail("the database has no chatbx schema; run: chatbxctl db upgrade")
            else:
                _fail("the database schema is behind; run: chatbxctl db upgrade")
    except SQLAlchemyError as exc:
        _fail(f"cannot use the database: {str(exc).splitlines()[0]}")


def _endpoint(reactor: Any, address: Any, tls_factory: Any = None) -> Any:
    host, port = address.host, address.port
    if tls_factory is not None:
        return endpoints.SSL4ServerEndpoint(reactor, port, tls_factory, interface=host)
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=host)


def makeService(options: Options) -> service.IService:
    """Build the chatbx service tree from ``options``."""
    from twisted.internet import reactor

    from chatbx_server.c2s.stream import C2SFactory
    from chatbx_server.config import ConfigError, load_config
    from chatbx_server.features import validate_module_options
    from chatbx_server.server import Server
    from chatbx_server.tls import TLSContexts, ensure_certificates

    try:
        config = load_config(options["config"])
        validate_module_options(config)
        os.makedirs(config.data_dir, exist_ok=True)
        certificates = ensure_certificates(config)
    except (ConfigError, OSError) as exc:
        _fail(str(exc))
    from chatbx_server.logs import set_level

    set_level(config.log.level)
    url = config.database_url
    prepare_database(url)
    tls = TLSContexts(certificates)
    server = Server(config, reactor)
    top = ChatbxService(server)
    listen = config.listen
    if listen.c2s is not None:
        factory = C2SFactory(server, tls, direct_tls=False)
        internet.StreamServerEndpointService(_endpoint(reactor, listen.c2s), factory).setServiceParent(top)
    if listen.c2s_tls is not None:
        # XEP-0368: TLS from the first byte on its own port.
        factory = C2SFactory(server, tls, direct_tls=True)
        endpoint = _endpoint(reactor, listen.c2s_tls, tls.server_context_factory())
        internet.StreamServerEndpointService(endpoint, factory).setServiceParent(top)
    # Once the reactor runs: the server is started and listening by then.
    reactor.callWhenRunning(freeze_heap)
    # MultiService provides IService through @implementer, which mypy cannot see.
    return cast(service.IService, top)
