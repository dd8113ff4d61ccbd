"""The s2s service: routing to remote domains, queues, connections, status.

``S2SManager.route`` is ``Router.remote``. A stanza for a remote domain
goes to the ready outgoing stream of its (local domain, remote domain)
pair, or waits in that pair's bounded queue while the stream is set up
(DNS, TCP, TLS, authentication); queued stanzas are sent in order once the
stream is ready. When the remote cannot be reached or refuses us, every
queued stanza that expects an answer bounces to its sender
(``remote-server-not-found``, or ``remote-server-timeout`` when it never
answered), and new stanzas bounce at once until the back-off delay has
passed (it doubles with each failure, up to ``max_retry_delay``).

The manager also keeps the dialback questions in flight (receiving role),
the incoming streams, the idle timer shared by all streams, and the
status file ``data_dir/s2s-status.json`` that ``chatbxctl s2s status``
prints (rewritten, at most once a second, when a stream changes state).
Every connection attempt, success and failure is one log line with the
remote domain and the reason.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer, task
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.s2s.certs import ClientCreator, Trust, client_context
from chatbx_server.s2s.dialback import DIALBACK_SECRET, NS_DIALBACK, new_secret
from chatbx_server.s2s.dns import Resolver, Target
from chatbx_server.s2s.stream import S2SStream, log
from chatbx_server.xmpp.stanzas import is_error_or_result

if TYPE_CHECKING:
    from chatbx_server.s2s.incoming import S2SInStream
    from chatbx_server.s2s.outgoing import S2SOutStream
    from chatbx_server.server import Server

STATUS_FILE = "s2s-status.json"
#: streams listed per direction in the status file
STATUS_LIMIT = 1000
STATUS_DELAY = 1.0
#: remote domains with outgoing state at once (each may hold a queue and a
#: connection attempt); beyond it stanzas to new domains bounce
MAX_ROUTES = 10000


class VerifyTimeout(Exception):
    """The authoritative server did not answer a db:verify in time."""


class Unreachable(Exception):
    """The remote server could not be reached or refused us."""


def expects_answer(stanza: domish.Element) -> bool:
    """Stanzas whose sender waits for something: bounced when undeliverable."""
    if is_error_or_result(stanza):
        return False
    if stanza.name == "presence":
        return stanza.getAttribute("type") == "subscribe"
    return True


class OutRoute:
    """Outgoing state of one (local domain, remote domain) pair."""

    __slots__ = ("local", "remote", "stream", "queue", "verifies", "connecting",
                 "failures", "retry_at", "last_error", "target", "bidi")

    def __init__(self, local: str, remote: str) -> None:
        self.local = local
        self.remote = remote
        self.stream: Optional["S2SOutStream"] = None
        self.queue: deque[domish.Element] = deque()
        self.verifies: list[domish.Element] = []
        self.connecting = False
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.target: Optional[Target] = None
        #: an incoming stream the remote made bidirectional (XEP-0288)
        self.bidi: Optional["S2SInStream"] = None

    def sender(self) -> Optional[S2SStream]:
        """The stream stanzas go out on now: our own ready stream, else the
        remote's bidirectional one (XEP-0288); None while there is neither."""
        stream = self.stream
        if stream is not None and stream.ready:
            return stream
        bidi = self.bidi
        if bidi is not None and not bidi.closed:
            return bidi
        return None


class S2SManager:
    """Federation for every hosted domain of one server.

    Args:
        server: the Server (config, clock, router).
        certificates: domain -> (certificate, key) paths (tls.ensure_certificates).
        server_tls: context factory for incoming STARTTLS (peer certificates
            requested), or None to build one from ``certificates``.
        resolver: where remote domains listen (default: static routes + DNS).
        connect: ``(target, factory, route) -> Deferred`` opening a connection
            (default: TCP or direct TLS through endpoints).
        trust: the trust store (default: system CAs plus ``[s2s] ca_file``).
    """

    def __init__(self, server: "Server", certificates: dict[str, tuple[str, str]],
                 server_tls: Any = None, resolver: Optional[Resolver] = None,
                 connect: Optional[Callable[..., Any]] = None, trust: Optional[Trust] = None) -> None:
        self.server = server
        self.clock = server.clock
        self.config = server.config.s2s
        self.certificates = dict(certificates)
        self.default_host = server.config.domains[0]
        #: the dialback secret (server_secrets, read at start); None until read
        self.secret: Optional[bytes] = None
        self._secret_waiters: list[defer.Deferred] = []
        self.trust = trust or Trust(self.config.ca_file)
        self.resolver = resolver or Resolver(self.clock, self.config.static_routes,
                                             self.config.dns_cache_size)
        self._connect_fn = connect or self._open_connection
        self._server_tls = server_tls
        self._server_contexts: Any = None
        self._client_contexts: dict[str, Any] = {}
        self.routes: dict[tuple[str, str], OutRoute] = {}
        self.incoming: set["S2SInStream"] = set()
        self._per_ip: dict[str, int] = {}
        #: admitted incoming streams that have not authenticated a domain yet
        self.unauthenticated = 0
        self._verifies: dict[tuple[str, str, str], tuple[defer.Deferred, Any]] = {}
        self._idle_loop: Optional[task.LoopingCall] = None
        self._status_call: Any = None
        self.running = False

    # -- life cycle -------------------------------------------------------
    def start(self) -> None:
        self.running = True
        if self.secret is None:
            self.server.secrets.get(DIALBACK_SECRET).addCallbacks(self._set_secret, self._secret_failed)
        period = max(1.0, min(self.config.idle_timeout / 4, 60.0))
        loop = task.LoopingCall(self._sweep)
        loop.clock = self.clock
        loop.start(period, now=False)
        self._idle_loop = loop
        self.write_status()

    def dialback_secret(self) -> defer.Deferred:
        """The dialback secret, once it has been read from the database."""
        if self.secret is not None:
            return defer.succeed(self.secret)
        d: defer.Deferred = defer.Deferred()
        self._secret_waiters.append(d)
        return d

    def _set_secret(self, secret: bytes) -> None:
        self.secret = secret
        waiters, self._secret_waiters = self._secret_waiters, []
        for d in waiters:
            d.callback(secret)

    def _secret_failed(self, failure: Any) -> None:
        log.failure("s2s: cannot read the dialback secret from the database; using one for this "
                    "process only (its keys do not verify on other nodes or after a restart)", failure)
        self._set_secret(new_secret())

    def stop(self) -> None:
        self.running = False
        if self._idle_loop is not None and self._idle_loop.running:
            self._idle_loop.stop()
        self._idle_loop = None
        for route in list(self.routes.values()):
            if route.stream is not None:
                route.stream.close_stream("system-shutdown")
        for stream in list(self.incoming):
            stream.close_stream("system-shutdown")
        if self._status_call is not None and self._status_call.active():
            self._status_call.cancel()
        self._status_call = None
        self.write_status()

    # -- policy -------------------------------------------------------------
    def is_local_domain(self, domain: Optional[str]) -> bool:
        """A domain this server answers for: a host or one of its services."""
        return domain in self.server.hosts or domain in self.server.router.services

    def must_encrypt(self, domain: str) -> bool:
        return self.config.require_encryption and domain not in self.config.plaintext_domains

    def secure_required(self, domain: str) -> bool:
        """Whether only a valid certificate authenticates ``domain`` (no dialback)."""
        if domain in self.config.secure_domains:
            return True
        if domain in self.config.insecure_domains:
            return False
        return self.config.secure_auth

    # -- TLS ---------------------------------------------------------------
    def _pair_for(self, domain: str) -> tuple[str, str]:
        pair = self.certificates.get(domain)
        if pair is None:
            parent = domain.partition(".")[2]
            pair = self.certificates.get(parent) or self.certificates[self.default_host]
        return pair

    def server_tls(self) -> Any:
        if self._server_tls is None:
            from chatbx_server.tls import TLSContexts

            self._server_contexts = TLSContexts(self.certificates, verify_peer=True)
            self._server_tls = self._server_contexts.server_context_factory()
        return self._server_tls

    def reload_tls(self) -> None:
        """Re-read the certificates (SIGHUP): new s2s connections use them.

        Raises:
            CertificateError: a file is unreadable; the old contexts stay.
        """
        if self._server_contexts is not None:
            self._server_contexts.reload()
        self._client_contexts = {}

    def client_tls(self, local: str, remote: str, alpn: bool = False) -> ClientCreator:
        ctx = self._client_contexts.get(local)
        if ctx is None:
            ctx = self._client_contexts[local] = client_context(*self._pair_for(local))
        return ClientCreator(ctx, remote, alpn)

    # -- routing (Router.remote) ------------------------------------------------
    def route(self, event: StanzaEvent) -> Any:
        """Send a stanza to a remote domain, or queue it while connecting."""
        stanza = event.stanza
        remote = event.to.host
        sender = event.sender
        if sender is None:
            local = self.default_host
            stanza["from"] = local
        elif self.is_local_domain(sender.host):
            local = sender.host
        else:
            log.warn("s2s: not relaying a {name} from {sender} to {remote}", name=stanza.name,
                     sender=sender.host, remote=remote)
            return True
        route = self.routes.get((local, remote))
        if route is None:
            if len(self.routes) >= MAX_ROUTES:
                if expects_answer(stanza):
                    self.server.router.bounce(stanza, "resource-constraint", "too many remote domains")
                return True
            route = self._route(local, remote)
        sender = route.sender()
        if sender is not None:
            sender.send_element(stanza)
            return True
        if not route.connecting and self.clock.seconds() < route.retry_at:
            # Backing off after a failure: answer now rather than queue.
            if expects_answer(stanza):
                self.server.router.bounce(stanza, "remote-server-not-found", route.last_error or None)
            return True
        if len(route.queue) >= self.config.max_queue:
            if expects_answer(stanza):
                self.server.router.bounce(stanza, "resource-constraint", "too many stanzas queued for "
                                          f"{remote}")
            return True
        route.queue.append(stanza)
        if not route.connecting and route.stream is None:
            self._connect(route)
        return True

    def _route(self, local: str, remote: str) -> OutRoute:
        route = self.routes.get((local, remote))
        if route is None:
            route = self.routes[(local, remote)] = OutRoute(local, remote)
        return route

    # -- connecting --------------------------------------------------------------
    def _connect(self, route: OutRoute) -> None:
        route.connecting = True
        self._log("out", route.local, route.remote, "connecting", f"attempt {route.failures + 1}")
        d = self.resolver.resolve(route.remote)
        d.addCallback(self._try_targets, route, 0)
        d.addErrback(self._connect_crashed, route)

    def _connect_crashed(self, failure: Any, route: OutRoute) -> None:
        log.failure("s2s: connecting to {remote} failed", failure, remote=route.remote)
        self._route_failed(route, "internal error while connecting", False)

    def _try_targets(self, targets: list[Target], route: OutRoute, index: int) -> None:
        if not self.running:
            self._route_failed(route, "shutting down", False)
            return
        if index >= len(targets):
            self._route_failed(route, f"could not connect to any of {len(targets)} address(es)", False)
            return
        target = targets[index]
        route.target = target
        from chatbx_server.s2s.outgoing import S2SOutFactory

        self._log("out", route.local, route.remote, "attempt",
                  f"{target.host}:{target.port}{' (direct TLS)' if target.direct_tls else ''}")
        d = defer.maybeDeferred(self._connect_fn, target, S2SOutFactory(self, route, target), route)

        def failed(failure: Any) -> None:
            self._log("out", route.local, route.remote, "attempt-failed",
                      f"{target.host}:{target.port}: {failure.getErrorMessage()}", warn=True)
            self._try_targets(targets, route, index + 1)

        d.addErrback(failed)

    def _open_connection(self, target: Target, factory: Any, route: OutRoute) -> Any:
        from twisted.internet import endpoints

        endpoint: Any = endpoints.HostnameEndpoint(self.clock, target.host, target.port,
                                                   timeout=self.config.connect_timeout)
        if target.direct_tls:
            creator: Any = self.client_tls(route.local, route.remote, alpn=True)
            endpoint = endpoints.wrapClientTLS(creator, endpoint)
        return endpoint.connect(factory)

    def _route_failed(self, route: OutRoute, reason: str, timeout: bool) -> None:
        route.connecting = False
        route.stream = None
        route.failures += 1
        delay = min(self.config.retry_delay * 2 ** (route.failures - 1), self.config.max_retry_delay)
        route.retry_at = self.clock.seconds() + delay
        route.last_error = reason
        self._log("out", route.local, route.remote, "unreachable",
                  f"{reason}; retry after {delay:.0f}s", warn=True)
        condition = "remote-server-timeout" if timeout else "remote-server-not-found"
        queue, route.queue = route.queue, deque()
        for stanza in queue:
            if expects_answer(stanza):
                self.server.router.bounce(stanza, condition)
        verifies, route.verifies = route.verifies, []
        for element in verifies:
            self._verify_failed((route.local, route.remote, element.getAttribute("id") or ""),
                                Unreachable(reason))
        for key in [k for k in self._verifies if k[0] == route.local and k[1] == route.remote]:
            self._verify_failed(key, Unreachable(reason))
        self.status_changed()

    # -- outgoing stream events -----------------------------------------------------
    def outgoing_connected(self, stream: "S2SOutStream") -> None:
        route = stream.route
        route.stream = stream
        self._log("out", route.local, route.remote, "connected", stream.peer)
        self.status_changed()

    def outgoing_usable(self, stream: "S2SOutStream") -> None:
        """The stream is encrypted (or may stay plaintext): send our db:verify questions."""
        route = stream.route
        verifies, route.verifies = route.verifies, []
        for element in verifies:
            stream.send_element(element)

    def outgoing_ready(self, stream: "S2SOutStream") -> None:
        route = stream.route
        route.stream = stream
        route.connecting = False
        route.failures = 0
        route.retry_at = 0.0
        route.last_error = ""
        self._log("out", route.local, route.remote, "authenticated", stream.auth_method)
        while route.queue and stream.ready:
            stream.send_element(route.queue.popleft())
        self.status_changed()

    def outgoing_closed(self, stream: "S2SOutStream", why: tuple[str, bool]) -> None:
        route = stream.route
        if route.stream is stream:
            route.stream = None
        if stream.was_ready:
            self._log("out", route.local, route.remote, "closed", why[0])
            if (route.queue or route.verifies) and not route.connecting and route.stream is None:
                self._connect(route)
            self.status_changed()
            return
        if route.connecting and route.stream is None:
            self._route_failed(route, why[0], why[1])

    # -- dialback questions (receiving role) ------------------------------------------
    def request_verify(self, local: str, remote: str, stream_id: str, key: str) -> defer.Deferred:
        """Ask ``remote``'s authoritative server whether ``key`` is its key.

        Returns:
            a Deferred firing True/False, or failing with Unreachable or
            VerifyTimeout.
        """
        ident = (local, remote, stream_id)
        old = self._verifies.pop(ident, None)
        if old is not None:
            old[1].cancel()
            old[0].callback(False)  # a second key for the same stream: the first loses
        d: defer.Deferred = defer.Deferred()
        timer = self.clock.callLater(self.config.auth_timeout, self._verify_failed, ident,
                                     VerifyTimeout("no answer"))
        self._verifies[ident] = (d, timer)
        element = domish.Element((NS_DIALBACK, "verify"))
        element["from"] = local
        element["to"] = remote
        element["id"] = stream_id
        element.addContent(key)
        route = self._route(local, remote)
        stream = route.stream
        if stream is not None and stream.verify_ready and not stream.closed:
            stream.send_element(element)
        else:
            route.verifies.append(element)
            if not route.connecting and route.stream is None:
                self._connect(route)
        return d

    def verify_answered(self, local: str, remote: str, stream_id: str, valid: bool) -> None:
        entry = self._verifies.pop((local, remote, stream_id), None)
        if entry is None:
            return  # late, or not ours: nothing waits for it
        d, timer = entry
        if timer.active():
            timer.cancel()
        d.callback(valid)

    def _verify_failed(self, ident: tuple[str, str, str], exc: Exception) -> None:
        entry = self._verifies.pop(ident, None)
        if entry is None:
            return
        d, timer = entry
        if timer.active():
            timer.cancel()
        d.errback(exc)

    # -- incoming streams ------------------------------------------------------------
    def admit(self, stream: "S2SInStream") -> bool:
        """Whether a new incoming connection is accepted: at most
        ``max_incoming`` in all, ``max_unauthenticated`` of them not yet
        authenticated, ``max_connections_per_ip`` from one address."""
        host = stream.peer.rpartition(":")[0]
        config = self.config
        if len(self.incoming) >= config.max_incoming:
            self._log("in", None, host, "refused", "incoming connection limit reached", warn=True)
            return False
        if self.unauthenticated >= config.max_unauthenticated:
            self._log("in", None, host, "refused", "limit of unauthenticated connections reached", warn=True)
            return False
        count = self._per_ip.get(host, 0)
        if count >= config.max_connections_per_ip:
            self._log("in", None, host, "refused", "connection limit per address reached", warn=True)
            return False
        self._per_ip[host] = count + 1
        stream.admitted = True
        stream.counted_unauthenticated = True
        self.unauthenticated += 1
        return True

    def incoming_authenticated(self, stream: "S2SInStream") -> None:
        """An incoming stream authenticated its first domain."""
        if stream.counted_unauthenticated:
            stream.counted_unauthenticated = False
            self.unauthenticated -= 1

    def incoming_opened(self, stream: "S2SInStream") -> None:
        self.incoming.add(stream)
        self._log("in", None, stream.peer, "connected", "incoming connection")

    def bidi_ready(self, stream: "S2SInStream", local: str, remote: str) -> None:
        """An incoming stream may carry our stanzas for (local, remote) (XEP-0288).

        It is used when we have no ready stream of our own for the pair;
        stanzas queued while ours is being set up go out on it at once.
        """
        route = self.routes.get((local, remote))
        if route is None:
            if len(self.routes) >= MAX_ROUTES:
                return
            route = self._route(local, remote)
        if route.bidi is not None and not route.bidi.closed:
            return  # the first bidirectional stream for the pair stays in use
        route.bidi = stream
        stream.bidi_routes.add((local, remote))
        self._log("in", local, remote, "bidi", f"stanzas to {remote} may use this incoming stream")
        sender = route.sender()
        while route.queue and sender is not None and not sender.closed:
            sender.send_element(route.queue.popleft())
        self.status_changed()

    def incoming_closed(self, stream: "S2SInStream", reason: str) -> None:
        self.incoming.discard(stream)
        self.incoming_authenticated(stream)  # no longer counted either way
        for pair in stream.bidi_routes:
            route = self.routes.get(pair)
            if route is not None and route.bidi is stream:
                route.bidi = None
        stream.bidi_routes.clear()
        if stream.admitted:
            stream.admitted = False
            host = stream.peer.rpartition(":")[0]
            count = self._per_ip.get(host, 1) - 1
            if count <= 0:
                self._per_ip.pop(host, None)
            else:
                self._per_ip[host] = count
        self._log("in", stream.local, ",".join(sorted(stream.authenticated)) or stream.remote_hint
                  or stream.peer, "closed", reason)
        self.status_changed()

    # -- timers ----------------------------------------------------------------------
    def _sweep(self) -> None:
        """Close idle streams; forget pairs that hold nothing."""
        now = self.clock.seconds()
        idle = self.config.idle_timeout
        for key, route in list(self.routes.items()):
            stream = route.stream
            if stream is not None and stream.ready and now - stream.last_active >= idle:
                self._log("out", route.local, route.remote, "idle", f"no traffic for {idle:.0f}s")
                stream.close_stream()
            elif (stream is None and not route.connecting and not route.queue
                  and not route.verifies and now >= route.retry_at and route.bidi is None):
                del self.routes[key]
        for incoming in list(self.incoming):
            if incoming.authenticated and now - incoming.last_active >= idle:
                incoming.close_stream()

    # -- logs and status ------------------------------------------------------------------
    def _log(self, direction: str, local: Optional[str], remote: Optional[str], event: str,
             reason: str, warn: bool = False) -> None:
        emit = log.warn if warn else log.info
        emit("s2s {direction} {local}->{remote_domain} {s2s_event}: {reason}", direction=direction,
             local=local or "-", remote_domain=remote or "-", s2s_event=event, reason=reason)

    def log_event(self, stream: S2SStream, event: str, remote: Optional[str] = None,
                  reason: str = "", condition: Optional[str] = None) -> None:
        """One line about a stream (used by the streams themselves)."""
        warn = event in ("failed", "auth-failed", "stream-error", "invalid-from", "verify-invalid",
                         "verify-refused")
        self._log(stream.direction, stream.local, remote or stream.remote or stream.peer, event,
                  reason, warn=warn)

    def status_changed(self) -> None:
        """Rewrite the status file soon (coalesced)."""
        if self._status_call is None or not self._status_call.active():
            self._status_call = self.clock.callLater(STATUS_DELAY, self.write_status)

    def status(self) -> dict[str, Any]:
        """What ``chatbxctl s2s status`` shows."""
        now = self.clock.seconds()
        outgoing = []
        for route in list(self.routes.values())[:STATUS_LIMIT]:
            stream = route.stream
            entry: dict[str, Any] = {"local": route.local, "remote": route.remote,
                                     "queued": len(route.queue)}
            bidi = route.bidi
            if stream is not None and (stream.ready or bidi is None or bidi.closed):
                entry.update(state=stream.state_name, auth=stream.auth_method or None,
                             secure=stream.secure, peer=stream.peer,
                             since=round(stream.started_at, 3), bidi=stream.bidi)
            elif bidi is not None and not bidi.closed:
                # XEP-0288: the remote's incoming stream carries our stanzas.
                entry.update(state="ready", auth=bidi.auth_method or None, secure=bidi.secure,
                             peer=bidi.peer, since=round(bidi.started_at, 3), bidi=True, via="incoming")
            elif route.connecting:
                entry.update(state="connecting")
            else:
                entry.update(state="down", error=route.last_error or None,
                             retry_in=max(0, round(route.retry_at - now)) or None)
            outgoing.append(entry)
        incoming = []
        for ins in list(self.incoming)[:STATUS_LIMIT]:
            incoming.append({"local": ins.local, "remote": sorted(ins.authenticated)
                             or ([ins.remote_hint] if ins.remote_hint else []),
                             "auth": ins.auth_method or None, "secure": ins.secure,
                             "peer": ins.peer, "since": round(ins.started_at, 3), "bidi": ins.bidi})
        return {"running": self.running, "updated": round(now, 3), "unauthenticated": self.unauthenticated,
                "outgoing": outgoing, "incoming": incoming}

    def write_status(self) -> None:
        self._status_call = None
        path = os.path.join(self.server.config.data_dir, STATUS_FILE)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.status(), fh, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            log.warn("s2s: cannot write {path}: {error}", path=path, error=str(exc))
