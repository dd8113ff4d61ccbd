"""External Service Discovery (XEP-0215 1.0.0) for STUN and TURN.

Clients that place audio/video calls (Conversations, Dino, Movim) ask their
server which STUN/TURN servers to use (§3.1, §3.2) and, for TURN, get
credentials with them. The services are configured in
``[modules.extdisco]``; a TURN service with a ``secret`` gets time-limited
credentials in the "TURN REST API" scheme (draft-uberti-behave-turn-rest-00
§2.2) that coturn checks with ``use-auth-secret`` / ``static-auth-secret``:

    username = "<expiry unix time>:<user bare JID>"
    password = base64(HMAC-SHA1(secret, username))

so the TURN server needs no account database and a leaked password stops
working at ``expires``. The credentials come inline in the services list
(what Conversations and Dino read) and on request (§3.3, ``<credentials/>``).

Only local users are answered (§2 allows ``forbidden``): credentials let
anyone relay traffic through the operator's TURN server. Service pushes
(§3.2, ``action``) are not sent: the list changes only with the config,
and clients re-ask before ``expires``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp.stanzas import StanzaError

log = Logger(observer=log_observer)

NS_EXTDISCO = "urn:xmpp:extdisco:2"
_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,31}$")
_HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")
#: longest credential lifetime an operator may configure (a week)
MAX_LIFETIME = 7 * 86400.0


@dataclass(frozen=True)
class ExternalService:
    """One ``services = [{...}]`` entry of ``[modules.extdisco]``."""

    #: XEP-0215 registry type: "stun", "turn", "stuns", "turns"
    type: str
    #: FQDN or IP address
    host: str
    #: 0 = not announced (XEP-0215 recommends a port)
    port: int = 0
    #: "udp", "tcp" or "" (not announced)
    transport: str = ""
    #: human-readable label
    name: str = ""
    #: TURN REST API shared secret (coturn static-auth-secret): time-limited
    #: credentials per user
    secret: str = ""
    #: fixed credentials instead (all users share them; not recommended)
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        if not _TYPE.match(self.type):
            raise ValueError(f"service type {self.type!r} is not a registry name such as 'turn'")
        if not _HOST.match(self.host):
            raise ValueError(f"service host {self.host!r} is not a domain name or IP address")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"service port {self.port} is out of range")
        if self.transport not in ("", "udp", "tcp"):
            raise ValueError(f"service transport {self.transport!r} is not 'udp' or 'tcp'")
        if self.secret and (self.username or self.password):
            raise ValueError(f"service {self.host}: give either secret or username/password")
        if bool(self.username) != bool(self.password):
            raise ValueError(f"service {self.host}: username and password go together")

    @property
    def restricted(self) -> bool:
        """Credentials are needed to use it (XEP-0215 §2 'restricted')."""
        return bool(self.secret or self.username)


@dataclass(frozen=True)
class ExtdiscoOptions:
    """``[modules.extdisco]``."""

    services: tuple[ExternalService, ...] = ()
    #: seconds TURN REST credentials stay valid (the 'expires' attribute)
    credentials_lifetime: float = 86400.0

    def __post_init__(self) -> None:
        if not 60 <= self.credentials_lifetime <= MAX_LIFETIME:
            raise ValueError(f"credentials_lifetime must be between 60 and {MAX_LIFETIME:.0f} seconds")
        if len(self.services) > 64:
            raise ValueError("at most 64 services")


def turn_rest_credentials(secret: str, user: str, expires: int) -> tuple[str, str]:
    """(username, password) of the TURN REST API for ``user`` until ``expires``."""
    username = f"{expires}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def datetime_utc(seconds: float) -> str:
    """XEP-0082 DateTime in UTC, as 'expires' must be (XEP-0215 §2)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class ExtdiscoFeature(Feature):
    name = "extdisco"
    spec = "XEP-0215 1.0.0 (External Service Discovery)"
    disco_features: tuple[str, ...] = (NS_EXTDISCO,)  # emptied in setup() when none configured
    Options = ExtdiscoOptions

    def setup(self) -> None:
        options: ExtdiscoOptions = self.options
        if not options.services:
            # Nothing to offer: not advertised, and asked anyway the router
            # answers service-unavailable, as without the module.
            self.disco_features = ()
            return
        log.info("extdisco: announcing {services}", services=", ".join(service_summary(options)))
        self.iq("get", "host", NS_EXTDISCO, "services", self.on_services)
        self.iq("get", "host", NS_EXTDISCO, "credentials", self.on_credentials)

    def _user(self, event: StanzaEvent) -> str:
        sender = event.sender
        if sender is None or sender.user is None or sender.host not in self.server.hosts:
            raise StanzaError("forbidden", text="external services are for local users")
        return str(sender.bare)

    def on_services(self, event: StanzaEvent) -> domish.Element:
        """§3.1 all services, §3.2 those of one type, credentials inline."""
        user = self._user(event)
        wanted = event.stanza.firstChildElement().getAttribute("type")
        out = domish.Element((NS_EXTDISCO, "services"))
        if wanted:
            out["type"] = wanted
        services = [s for s in self.options.services if not wanted or s.type == wanted]
        for element in self._elements(services, user):
            out.addChild(element)
        return out

    def on_credentials(self, event: StanzaEvent) -> domish.Element:
        """§3.3: credentials for the service named by host and type (and port)."""
        user = self._user(event)
        request = next((c for c in event.stanza.firstChildElement().elements()
                        if c.name == "service"), None)
        if request is None or not request.getAttribute("host") or not request.getAttribute("type"):
            raise StanzaError("bad-request", text="a <service/> with host and type is required")
        port = request.getAttribute("port")
        matches = [s for s in self.options.services
                   if s.host == request["host"] and s.type == request["type"]
                   and (not port or str(s.port) == port)]
        if not matches:
            raise StanzaError("item-not-found", text="no such service")
        out = domish.Element((NS_EXTDISCO, "credentials"))
        for element in self._elements(matches, user):
            out.addChild(element)
        return out

    def _elements(self, services: Iterable[ExternalService], user: str) -> list[domish.Element]:
        now = self.server.clock.seconds()
        expires = int(now + self.options.credentials_lifetime)
        out = []
        for service in services:
            element = domish.Element((NS_EXTDISCO, "service"))
            element["type"], element["host"] = service.type, service.host
            if service.port:
                element["port"] = str(service.port)
            if service.transport:
                element["transport"] = service.transport
            if service.name:
                element["name"] = service.name
            credentials: Optional[tuple[str, str]] = None
            if service.secret:
                credentials = turn_rest_credentials(service.secret, user, expires)
                element["expires"] = datetime_utc(expires)
            elif service.username:
                credentials = (service.username, service.password)
            if credentials is not None:
                element["username"], element["password"] = credentials
                element["restricted"] = "1"
            out.append(element)
        return out


def service_summary(options: ExtdiscoOptions) -> list[str]:
    """One line per configured service for logs (never the secret)."""
    return [f"{s.type}:{s.host}:{s.port}/{s.transport or '-'}" for s in options.services]
