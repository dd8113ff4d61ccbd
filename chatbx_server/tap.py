"""The twistd entry point: ``twistd chatbx [--config FILE]``.

Start-up does the slow, fallible things before the reactor runs: read and
check the configuration, make the data folder and any missing self-signed
certificate, and bring the database schema up to date (SQLite) or refuse
to start on one that is behind or ahead (PostgreSQL). Each failure is one
line naming what to do.

With ``[cluster] workers`` above 1 this process becomes the parent of the
workers (chatbx_server/cluster/workers.py): it binds the listening sockets
and runs no XMPP; each worker is ``twistd chatbx`` again with
``--worker-node`` and ``--inherit`` and adopts those sockets (``Listeners``).
"""

from __future__ import annotations

import gc
import os
import signal
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

    optParameters = [
        ["config", "c", None, "Path to a TOML configuration file."],
        # Set by the parent of [cluster] workers (chatbx_server/cluster/workers.py).
        ["worker-node", None, None, "Internal: run as the worker node of this name."],
        ["inherit", None, None, "Internal: listener=fd,... sockets inherited from the parent."],
    ]

    def postOptions(self) -> None:
        if (self["worker-node"] is None) != (self["inherit"] is None):
            raise usage.UsageError("--worker-node and --inherit go together")


class ChatbxService(service.MultiService):
    """Starts the server before its listeners and stops it after them.

    While running, SIGHUP re-reads the TLS certificates (a renewed
    certificate needs no restart): new connections get the new ones,
    established connections keep theirs, and on an error the old ones stay.

    Args:
        server: the Server.
        tls: the TLSContexts the listeners use (None: nothing to reload).
        reactor: runs the reload on its thread (the global reactor when None).
    """

    def __init__(self, server: Any, tls: Any = None, reactor: Any = None) -> None:
        super().__init__()
        self.server = server
        self.tls = tls
        self.reactor = reactor
        self._previous_hup: Any = None
        self._hup_installed = False

    def startService(self) -> None:
        self.server.start()
        self._install_sighup()
        super().startService()

    def stopService(self) -> Any:
        self._remove_sighup()
        d = super().stopService()
        if d is None:
            return self.server.stop()
        return d.addCallback(lambda _: self.server.stop())

    def _install_sighup(self) -> None:
        if self.tls is None or not hasattr(signal, "SIGHUP"):
            return
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor

        def on_hup(signum: int, frame: Any) -> None:
            # A signal handler may interrupt anything: do the work in the
            # reactor's own turn (this also wakes it from its poll).
            reactor.callFromThread(self.reload_tls)

        self._previous_hup = signal.signal(signal.SIGHUP, on_hup)
        self._hup_installed = True

    def _remove_sighup(self) -> None:
        if self._hup_installed:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._hup_installed = False

    def reload_tls(self) -> bool:
        """Re-read every certificate and key; log one line; True on success."""
        from chatbx_server.tls import CertificateError

        try:
            self.tls.reload()
            s2s = getattr(self.server, "s2s", None)
            if s2s is not None:
                s2s.reload_tls()
        except CertificateError as exc:
            log.error("TLS certificates not reloaded, keeping the old ones: {error}",
                      error=str(exc))
            return False
        log.info("TLS certificates reloaded for {domains}", domains=",".join(self.tls.domains))
        return True


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


def _endpoint(reactor: Any, address: Any, tls_factory: Any = None, backlog: int = 50) -> Any:
    host, port = address.host, address.port
    if tls_factory is not None:
        return endpoints.SSL4ServerEndpoint(reactor, port, tls_factory, backlog=backlog,
                                            interface=host)
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


class Listeners:
    """Makes the service of each listener: on its configured address (one
    process), or on the socket a worker inherited from its parent.

    Args:
        reactor: the reactor.
        inherited: None for one process; a worker's listener name -> fd
            (a listener it was not given is served by another worker).
    """

    def __init__(self, reactor: Any, inherited: dict[str, int] | None = None) -> None:
        self.reactor = reactor
        self.inherited = inherited

    def add(self, parent: Any, name: str, address: Any, factory: Any, tls_factory: Any = None,
            backlog: int = 50) -> None:
        if self.inherited is None:
            internet.StreamServerEndpointService(
                _endpoint(self.reactor, address, tls_factory, backlog), factory
            ).setServiceParent(parent)
            return
        fd = self.inherited.get(name)
        if fd is None:
            return
        from chatbx_server.cluster.workers import AdoptedPortService

        if tls_factory is not None:
            # What SSL4ServerEndpoint does on a socket it binds itself.
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(tls_factory, False, factory)
        AdoptedPortService(self.reactor, name, fd, factory).setServiceParent(parent)


class S2SService(service.Service):
    """Starts and stops federation (chatbx_server.s2s.manager)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def startService(self) -> None:
        super().startService()
        self.manager.start()

    def stopService(self) -> Any:
        self.manager.stop()
        return super().stopService()


def _federation(server: Any, certificates: dict[str, tuple[str, str]], listen: Any,
                listeners: Listeners) -> service.IService:
    """Federation is on when an s2s port is: dialback needs remotes to reach us."""
    from chatbx_server.s2s.incoming import S2SInFactory
    from chatbx_server.s2s.manager import S2SManager

    manager = S2SManager(server, certificates)
    server.s2s = manager
    server.router.remote = manager.route
    parent = service.MultiService()
    S2SService(manager).setServiceParent(parent)
    if listen.s2s is not None:
        listeners.add(parent, "s2s", listen.s2s, S2SInFactory(manager))
    if listen.s2s_tls is not None:
        # XEP-0368: TLS from the first byte; the peer's certificate is requested.
        listeners.add(parent, "s2s_tls", listen.s2s_tls, S2SInFactory(manager, direct_tls=True),
                      manager.server_tls())
    return cast(service.IService, parent)


def _supervisor(reactor: Any, config: Any, config_path: str) -> service.IService:
    """The parent of ``[cluster] workers``: binds the sockets now (before
    twistd drops privileges), runs no XMPP itself."""
    from chatbx_server.cluster.workers import bind_listeners, make_supervisor

    try:
        sockets = bind_listeners(config.listen)
    except OSError as exc:
        _fail(f"cannot listen on {exc.filename}: {exc.strerror or exc}")
    return cast(service.IService, make_supervisor(reactor, config, os.path.abspath(config_path), sockets))


def _as_worker(config: Any, node: str, spec: str) -> tuple[Any, dict[str, int]]:
    """A worker's config (its own node name) and the sockets it inherited."""
    import dataclasses

    from chatbx_server.cluster.workers import parse_inherit

    if config.cluster is None:
        _fail("--worker-node needs a [cluster] section")
    try:
        inherited = parse_inherit(spec)
    except ValueError as exc:
        _fail(str(exc))
    return dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, node=node)), inherited


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
    workers = config.cluster.workers if config.cluster is not None else 1
    if workers > 1 and options["worker-node"] is None:
        return _supervisor(reactor, config, options["config"])
    inherited = None
    if options["worker-node"] is not None:
        config, inherited = _as_worker(config, options["worker-node"], options["inherit"])
    listeners = Listeners(reactor, inherited)
    tls = TLSContexts(certificates)
    server = Server(config, reactor)
    top = ChatbxService(server, tls, reactor)
    if inherited is not None:
        from chatbx_server.cluster.workers import ParentWatch

        running = cast(Any, reactor)

        def stop() -> None:
            if running.running:
                running.stop()

        ParentWatch(reactor, stop).setServiceParent(top)
    listen = config.listen
    if listen.c2s is not None:
        listeners.add(top, "c2s", listen.c2s, C2SFactory(server, tls, direct_tls=False))
    if listen.c2s_tls is not None:
        # XEP-0368: TLS from the first byte on its own port.
        listeners.add(top, "c2s_tls", listen.c2s_tls, C2SFactory(server, tls, direct_tls=True),
                      tls.server_context_factory())
    if listen.s2s is not None or listen.s2s_tls is not None:
        cast(service.MultiService, _federation(server, certificates, listen, listeners)).setServiceParent(top)
    if listen.http is not None:
        from chatbx_server.http.server import LISTEN_BACKLOG, build_site

        # HTTPS with the c2s contexts (SNI picks the domain's certificate);
        # plain HTTP only behind a reverse proxy ([http] tls = false).
        site = build_site(server, reactor)
        context = tls.server_context_factory() if config.http.tls else None
        listeners.add(top, "http", listen.http, site, context, backlog=LISTEN_BACKLOG)
    if listen.proxy is not None:
        from chatbx_server.proxy.socks5 import Socks5Factory

        # XEP-0065 SOCKS5 relay; the proxy65 module answers for proxy.DOMAIN.
        listeners.add(top, "proxy", listen.proxy, Socks5Factory(server))

    # Once the reactor runs: the server is started and listening by then.
    reactor.callWhenRunning(freeze_heap)
    # MultiService provides IService through @implementer, which mypy cannot see.
    return cast(service.IService, top)
