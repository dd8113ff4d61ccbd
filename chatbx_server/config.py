"""chatbx configuration: a TOML file (tomllib) read into frozen dataclasses.

Every error is a :class:`ConfigError` whose message names the file and the
dotted key (``chatbx.toml: listen.c2s: ...``), so an operator can fix a typo
without reading a traceback.  Unknown keys and wrong types are errors: a
misspelt security setting silently ignored is worse than a refusal to start.

Module options (``[modules.<name>]``) are kept raw here and validated by each
module's ``Options`` dataclass through :func:`build_options`, the same
validator the core sections use.

Because TOML cannot hold both ``modules = [...]`` and ``[modules.<name>]``
tables, the enabled list may be written either as the top-level array
``modules = [...]`` (when no module has options) or as ``enabled = [...]``
inside the ``[modules]`` table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, Union

from chatbx_server.xmpp.jid import InvalidJID, JID

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "Endpoint",
    "FrozenDict",
    "HTTPConfig",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "RegistrationConfig",
    "S2SConfig",
    "TLSCertConfig",
    "TLSConfig",
    "build_options",
    "load_config",
    "parse_endpoint",
    "prepare_domain",
]

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


class ConfigError(Exception):
    """A configuration problem; the message names the file and the dotted key."""

    def __init__(self, message: str, key: str | None = None, path: str | None = None):
        self.key = key
        self.path = path
        where = path if path is not None else "<configuration>"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping: keeps :class:`Config` hashable."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None):
        self._data: dict[str, Any] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def _freeze(value: Any) -> Any:
    """Turn TOML values (lists, tables) into hashable equivalents."""
    if isinstance(value, dict):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class Endpoint(NamedTuple):
    """A listening address; ``port`` 0 asks the OS for a free port."""

    host: str
    port: int


@dataclass(frozen=True)
class DatabaseConfig:
    url: str | None = None
    pool_size: int = 5


@dataclass(frozen=True)
class ListenConfig:
    """Listening addresses; None means that listener is disabled."""

    c2s: Endpoint | None = Endpoint("127.0.0.1", 5222)
    c2s_tls: Endpoint | None = Endpoint("127.0.0.1", 5223)
    #: server-to-server (federation, STARTTLS); off by default
    s2s: Endpoint | None = None
    #: server-to-server with direct TLS (XEP-0368)
    s2s_tls: Endpoint | None = None
    #: HTTPS (or plain HTTP behind a reverse proxy, ``[http] tls = false``):
    #: upload, WebSocket, BOSH, host-meta, metrics
    http: Endpoint | None = None
    #: SOCKS5 Bytestreams proxy (XEP-0065) of proxy.DOMAIN; off by default
    proxy: Endpoint | None = None


@dataclass(frozen=True)
class HTTPConfig:
    """The HTTP listener (``[http]``); see chatbx.example.toml for each key."""

    #: HTTPS with the c2s certificates (SNI); false = plain HTTP, only for
    #: requests from trusted_proxies (a reverse proxy terminates TLS)
    tls: bool = True
    #: public base URL of the listener; "{domain}" is replaced by the hosted
    #: domain; "" = https://DOMAIN:PORT of [listen] http
    external_url: str = ""
    #: addresses/networks of reverse proxies whose X-Forwarded-For and
    #: X-Forwarded-Proto are believed
    trusted_proxies: tuple[str, ...] = ()
    #: largest request body outside uploads (BOSH), bytes
    max_request_body: int = 1048576
    #: seconds an HTTP connection may stay idle (also bounds slow requests)
    idle_timeout: float = 60.0
    #: serve XMPP over WebSocket (RFC 7395) at /xmpp-websocket
    websocket: bool = True
    #: serve BOSH (XEP-0124/0206) at /http-bind
    bosh: bool = True
    #: longest 'wait' a BOSH client gets, seconds
    bosh_max_wait: int = 60
    #: most requests a BOSH session may hold waiting ('hold')
    bosh_max_hold: int = 1
    #: seconds a BOSH session lives without any request
    bosh_inactivity: int = 60
    #: open BOSH sessions per client address
    bosh_max_sessions_per_ip: int = 20
    #: addresses/networks that may read /metrics without a token
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    #: bearer token that lets anyone read /metrics ("" = none)
    metrics_token: str = ""


@dataclass(frozen=True)
class TLSCertConfig:
    certificate: str
    key: str


@dataclass(frozen=True)
class TLSConfig:
    """Default certificate (for every domain without its own) and per-domain ones."""

    certificate: str | None = None
    key: str | None = None
    domains: Mapping[str, TLSCertConfig] = field(default_factory=FrozenDict)


@dataclass(frozen=True)
class LimitsConfig:
    max_stanza_size: int = 262144
    max_depth: int = 64
    max_attributes: int = 64
    max_connections_per_ip: int = 100
    auth_failure_delay: float = 1.0
    auth_failure_max_delay: float = 10.0
    #: failed logins per address and per account before new attempts are
    #: refused (temporary-auth-failure) without checking the password
    auth_max_failures: int = 10
    #: seconds in which auth_max_failures failures leak away again
    auth_failure_window: float = 600.0
    #: addresses and accounts the failure counters remember (each)
    auth_failure_entries: int = 100000
    #: threads hashing passwords (PLAIN, account creation), apart from the database's
    hash_threads: int = 2
    #: seconds a connection may take from connecting to a bound resource
    negotiation_timeout: float = 60.0
    #: bytes queued for a client that stopped reading before it is dropped
    max_output_buffer: int = 4194304
    #: seconds without input on a bound client stream before it is pinged
    c2s_idle_timeout: float = 300.0
    #: seconds the pinged client has to send anything before it is dropped
    c2s_ping_timeout: float = 60.0
    #: a bound client stream silent for this long (up to twice) frees its
    #: XML parser until it speaks again (~12 KiB per idle connection); 0: never
    c2s_parser_idle: float = 10.0


@dataclass(frozen=True)
class S2SConfig:
    """Federation (RFC 6120 server-to-server, XEP-0220 dialback, XEP-0178)."""

    #: STARTTLS (or direct TLS) required on every s2s stream ...
    require_encryption: bool = True
    #: ... except with these remote domains (prepared names)
    plaintext_domains: tuple[str, ...] = ()
    #: a remote must present a certificate valid for its domain (no dialback
    #: without one) ...
    secure_auth: bool = False
    #: ... also when secure_auth is false, for these domains
    secure_domains: tuple[str, ...] = ()
    #: ... not for these domains, even when secure_auth is true
    insecure_domains: tuple[str, ...] = ()
    #: extra trusted CA certificates (PEM) besides the system's
    ca_file: str | None = None
    #: remote domain -> "HOST:PORT" (no DNS); "tls:HOST:PORT" for direct TLS
    static_routes: Mapping[str, str] = field(default_factory=FrozenDict)
    #: seconds to open a TCP connection to one target
    connect_timeout: float = 10.0
    #: seconds from connecting to an authenticated stream (both directions)
    auth_timeout: float = 30.0
    #: seconds without traffic after which a stream is closed
    idle_timeout: float = 600.0
    #: stanzas queued per remote domain while its stream is being set up
    max_queue: int = 1000
    #: first wait before reconnecting after a failure; doubles each failure
    retry_delay: float = 2.0
    #: longest wait between reconnection attempts
    max_retry_delay: float = 300.0
    #: DNS answers kept (each for its TTL)
    dns_cache_size: int = 1000
    #: simultaneous incoming s2s connections per address
    max_connections_per_ip: int = 20
    #: simultaneous incoming s2s connections in all
    max_incoming: int = 5000
    #: ... of which not authenticated yet (each costs a TLS handshake and
    #: may cost a dialback check)
    max_unauthenticated: int = 250
    #: bidirectional streams (XEP-0288): offered to peers, used when offered
    bidi: bool = True


REGISTRATION_MODES = ("closed", "invite", "captcha", "open")


@dataclass(frozen=True)
class RegistrationConfig:
    """Accounts: who may create them, and what new ones may do (``[registration]``)."""

    #: closed: only operators and invites; invite: in-band registration with
    #: an invite token; captcha: in-band with a CAPTCHA (XEP-0158); open: anyone
    mode: str = "invite"
    #: localparts nobody may register (compared after PRECIS preparation)
    reserved_names: tuple[str, ...] = (
        "admin", "administrator", "abuse", "postmaster", "hostmaster", "webmaster", "root",
        "security", "support", "info", "noc", "system", "xmpp", "www", "mail")
    min_username_length: int = 3
    min_password_length: int = 8
    #: accounts one address (IPv6: its /64) may create per ip_window seconds
    max_per_ip: int = 3
    ip_window: float = 3600.0
    #: seconds a deleted account's name stays reserved (0 = not at all)
    tombstone_period: float = 31536000.0
    #: seconds between a user's removal request and the data going; logging
    #: in before cancels it (0 = removed at once)
    deletion_grace: float = 0.0
    #: a password change closes the user's other sessions
    password_change_closes_sessions: bool = True
    #: seconds an invite is valid unless its creator says otherwise
    invite_lifetime: float = 604800.0
    #: users may create invites for their contacts (ad-hoc command)
    user_invites: bool = True
    #: ... and those invites may create accounts (in any mode but closed)
    user_invites_register: bool = True
    #: seconds a CAPTCHA may take to answer
    captcha_lifetime: float = 600.0
    #: seconds an account counts as new for the limits below (0 = no limits)
    new_account_period: float = 86400.0
    #: messages per minute a new account may send to JIDs not on its roster
    new_account_messages_per_minute: int = 5
    #: subscription requests per minute a new account may send
    new_account_subscriptions_per_minute: int = 3


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: this node shares PostgreSQL and Redis with other nodes.

    The section's absence means a single node that needs no Redis.
    """

    #: redis://[:password@]host[:port][/db] holding the session directory
    #: and the nodes' inboxes (chatbx_server/cluster)
    redis: str = "redis://127.0.0.1:6379/0"
    #: this node's name, unique in the cluster; "" = host name + pid
    node: str = ""
    #: processes ``twistd chatbx`` runs on this machine; above 1 the parent
    #: holds the listening sockets and runs N workers, each a node named
    #: ``<node>-w<i>`` (chatbx_server/cluster/workers.py)
    workers: int = 1
    #: stanzas for one account that may wait for a directory lookup in
    #: Redis (cluster/lookup.py) before more go on without it
    held_per_user: int = 100
    #: stanzas for all accounts that may wait for directory lookups
    held_stanzas: int = 10000


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``path`` is the file it came from (None: defaults)."""

    path: str | None = None
    domains: tuple[str, ...] = ("localhost",)
    data_dir: str = "./chatbx-data"
    modules: tuple[str, ...] | None = None
    database: DatabaseConfig = DatabaseConfig()
    listen: ListenConfig = ListenConfig()
    tls: TLSConfig = TLSConfig()
    limits: LimitsConfig = LimitsConfig()
    s2s: S2SConfig = S2SConfig()
    log: LogConfig = LogConfig()
    http: HTTPConfig = HTTPConfig()
    registration: RegistrationConfig = RegistrationConfig()
    #: bare JIDs allowed the admin commands (XEP-0133) of their own domain
    admins: tuple[str, ...] = ()
    #: None: a single node (no Redis)
    cluster: ClusterConfig | None = None
    module_options: Mapping[str, Mapping[str, Any]] = field(default_factory=FrozenDict)

    @property
    def database_url(self) -> str:
        """The effective database URL: ``[database] url`` or SQLite in data_dir."""
        if self.database.url:
            return self.database.url
        from chatbx_server.storage.database import default_sqlite_url

        return default_sqlite_url(self.data_dir)

    @property
    def certs_dir(self) -> str:
        """Where generated self-signed certificates live."""
        return os.path.join(self.data_dir, "certs")

    def options_for(self, name: str) -> Mapping[str, Any]:
        """The raw ``[modules.<name>]`` table (empty when absent)."""
        return self.module_options.get(name, FrozenDict())


# --- the generic validator -------------------------------------------------

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string",
             list: "array", tuple: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


def _type_name(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"an array of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin in (dict, Mapping):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, path: str | None) -> Any:
    """Check ``value`` against the annotation ``tp``; return its frozen form."""
    if tp is Any:
        return _freeze(value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for candidate in candidates:
            try:
                return _convert(value, candidate, key, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        wanted = " or ".join(_type_name(c) for c in candidates)
        raise ConfigError(f"expected {wanted}, got {_describe(value)}", key, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise TypeError(f"unsupported option type {tp!r} for {key}")
            item_type = args[0] if args else Any
            return tuple(_convert(v, item_type, f"{key}[{i}]", path)
                         for i, v in enumerate(value))
    elif origin in (dict, Mapping) or tp in (dict, Mapping):
        if isinstance(value, Mapping):
            value_type = args[1] if len(args) == 2 else Any
            return FrozenDict({k: _convert(v, value_type, _join(key, k), path)
                               for k, v in value.items()})
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, Mapping):
            return build_options(tp, value, key, path)
    else:
        raise TypeError(f"unsupported option type {tp!r} for {key}")
    raise ConfigError(f"expected {_type_name(tp)}, got {_describe(value)}", key, path)


def _join(section: str, key: str) -> str:
    """Dotted key; quotes a part that is not a bare TOML key (domains)."""
    part = key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'
    return f"{section}.{part}" if section else part


def build_options(cls: type[T], raw: Mapping[str, Any], section: str,
                  path: str | None = None) -> T:
    """Build the dataclass ``cls`` from a raw TOML table, checking every key.

    Supported field types: int, float, bool, str, list[str] / tuple[str, ...]
    (stored as tuples), dict[str, list[str]] (stored as FrozenDict of tuples),
    nested dataclasses, ``Any`` (frozen raw value) and Optional of these.
    A ``ValueError`` raised by the dataclass's ``__post_init__`` becomes a
    ConfigError naming the section.

    Args:
        cls: the Options dataclass (``from __future__ import annotations`` is fine).
        raw: the table read from TOML.
        section: its dotted name, e.g. ``modules.offline``.
        path: the configuration file, for the message.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a table, got {_describe(raw)}", section, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = _join(section, key)
        if key not in fields:
            raise ConfigError("unknown key", dotted, path)
        kwargs[key] = _convert(value, hints[key], dotted, path)
    for name, f in fields.items():
        if (name not in kwargs and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING):
            raise ConfigError("missing required key", _join(section, name), path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc), section or None, path) from None


# --- field-specific parsing ------------------------------------------------

def parse_endpoint(text: str, key: str = "", path: str | None = None) -> Endpoint | None:
    """Parse ``HOST:PORT`` or ``[IPv6]:PORT``; an empty string means disabled."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"invalid address {text!r} (expected [IPV6]:PORT)", key, path)
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid IPv6 address {host!r}", key, path) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(
                f"invalid address {text!r} (expected HOST:PORT or [IPV6]:PORT)", key, path)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid port {port_text!r} in {text!r}", key, path)
    return Endpoint(host, int(port_text))


def prepare_localpart(name: str) -> str:
    """A localpart prepared as in JIDs (PRECIS UsernameCaseMapped, RFC 7622 §3.3).

    Raises:
        ValueError: not a valid localpart.
    """
    parsed = JID.parse(f"{name}@localhost", cache=False)
    if parsed.user is None or parsed.resource is not None or parsed.host != "localhost":
        raise ValueError(f"not a localpart: {name!r}")
    return parsed.user


def prepare_domain(domain: str) -> str:
    """Prepare a domain (RFC 7622 domainpart) exactly as JIDs in stanzas are.

    Raises:
        ValueError: the domain is not acceptable.
    """
    try:
        parsed = JID.parse(domain)
    except InvalidJID as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from None
    if parsed.user or parsed.resource:
        raise ValueError(f"invalid domain {domain!r}: not a bare domain")
    return parsed.host


# --- loading ----------------------------------------------------------------

_TOP_KEYS = ("domains", "data_dir", "modules", "admins", "database", "listen", "tls",
             "limits", "s2s", "log", "http", "registration", "cluster")
_LISTEN_KEYS = ("c2s", "c2s_tls", "s2s", "s2s_tls", "http", "proxy")

#: Keys accepted only empty: their feature is not built yet, and a key that
#: silently does nothing would mislead.
_NOT_IMPLEMENTED: dict[str, str] = {}


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a configuration file; ``None`` gives all defaults.

    Relative paths written in the file (``data_dir``, certificate and key
    files) are taken relative to the file's directory, so the server finds
    them whatever its working directory; the defaults (no file, or the key
    absent) are relative to the working directory.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key, wrong type or
            value; the message names the file and the dotted key.
    """
    if path is None:
        return Config()
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", None, path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", None, path) from None
    return _parse(raw, path)


def _parse(raw: Mapping[str, Any], path: str | None) -> Config:
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()

    def resolve(value: str) -> str:
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))

    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError("unknown key", _join("", key), path)
    kwargs: dict[str, Any] = {"path": path}

    if "domains" in raw:
        domains = _convert(raw["domains"], tuple[str, ...], "domains", path)
        if not domains:
            raise ConfigError("at least one domain is required", "domains", path)
        prepared: list[str] = []
        for i, domain in enumerate(domains):
            try:
                name = prepare_domain(domain)
            except ValueError as exc:
                raise ConfigError(str(exc), f"domains[{i}]", path) from None
            if name in prepared:
                raise ConfigError(f"duplicate domain {name!r}", f"domains[{i}]", path)
            prepared.append(name)
        kwargs["domains"] = tuple(prepared)

    if "data_dir" in raw:
        data_dir = _convert(raw["data_dir"], str, "data_dir", path)
        if not data_dir.strip():
            raise ConfigError("must not be empty", "data_dir", path)
        kwargs["data_dir"] = resolve(data_dir)

    if "admins" in raw:
        admins = []
        for i, text in enumerate(_convert(raw["admins"], tuple[str, ...], "admins", path)):
            try:
                jid = JID.parse(text.strip())
            except InvalidJID as exc:
                raise ConfigError(f"invalid JID {text!r}: {exc}", f"admins[{i}]", path) from None
            if not jid.user or jid.resource:
                raise ConfigError(f"not a bare user JID: {text!r}", f"admins[{i}]", path)
            admins.append(jid.bare)
        kwargs["admins"] = tuple(admins)

    if "registration" in raw:
        kwargs["registration"] = _parse_registration(raw["registration"], path)

    if "modules" in raw:
        kwargs["modules"], kwargs["module_options"] = _parse_modules(raw["modules"], path)

    if "database" in raw:
        database = build_options(DatabaseConfig, raw["database"], "database", path)
        if database.pool_size < 1:
            raise ConfigError("must be at least 1", "database.pool_size", path)
        if database.url is not None and not database.url.strip():
            database = dataclasses.replace(database, url=None)
        kwargs["database"] = database

    if "listen" in raw:
        kwargs["listen"] = _parse_listen(raw["listen"], path)

    if "tls" in raw:
        kwargs["tls"] = _parse_tls(raw["tls"], path, resolve)

    if "limits" in raw:
        limits = build_options(LimitsConfig, raw["limits"], "limits", path)
        for f in dataclasses.fields(LimitsConfig):
            value = getattr(limits, f.name)
            minimum = 0 if f.name in ("auth_failure_delay", "auth_failure_max_delay",
                                      "c2s_parser_idle") else 1
            if value < minimum:
                raise ConfigError(f"must be at least {minimum}", f"limits.{f.name}", path)
        if limits.auth_failure_max_delay < limits.auth_failure_delay:
            raise ConfigError("must not be smaller than limits.auth_failure_delay",
                              "limits.auth_failure_max_delay", path)
        kwargs["limits"] = limits

    if "s2s" in raw:
        kwargs["s2s"] = _parse_s2s(raw["s2s"], path, resolve)

    if "log" in raw:
        log = build_options(LogConfig, raw["log"], "log", path)
        level = log.level.lower()
        if level == "warning":
            level = "warn"
        if level not in LOG_LEVELS:
            raise ConfigError(f"unknown level {log.level!r} (one of {', '.join(LOG_LEVELS)})",
                              "log.level", path)
        kwargs["log"] = LogConfig(level=level)

    if "http" in raw:
        kwargs["http"] = _parse_http(raw["http"], path)

    if "cluster" in raw:
        kwargs["cluster"] = _parse_cluster(raw["cluster"], path)
        _check_workers(kwargs, raw["cluster"], path)

    return Config(**kwargs)


#: at most this many worker processes (a sanity bound: one per core)
MAX_WORKERS = 64


def _check_workers(kwargs: dict[str, Any], raw: Mapping[str, Any], path: str | None) -> None:
    """Several workers are several writers and several nodes: they need a
    Redis named on purpose (not the default) and PostgreSQL (SQLite takes
    one writing process at a time)."""
    workers = kwargs["cluster"].workers
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"must be between 1 and {MAX_WORKERS}", "cluster.workers", path)
    if workers == 1:
        return
    if "redis" not in raw:
        raise ConfigError("several workers share a Redis: set cluster.redis as well",
                          "cluster.workers", path)
    if kwargs.get("listen", ListenConfig()).proxy is not None:
        raise ConfigError("the SOCKS5 proxy (listen.proxy) runs in one process: not with several workers",
                          "cluster.workers", path)
    database = kwargs.get("database")
    url = database.url if database is not None else None
    if not url or url.split(":", 1)[0].split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ConfigError("several workers need PostgreSQL ([database] url = \"postgresql://...\"); "
                          "SQLite takes one writing process", "cluster.workers", path)


def _parse_cluster(value: Any, path: str | None) -> ClusterConfig:
    cluster = build_options(ClusterConfig, value, "cluster", path)
    from chatbx_server.cluster.redis import parse_redis_url

    try:
        parse_redis_url(cluster.redis)
    except ValueError as exc:
        raise ConfigError(str(exc), "cluster.redis", path) from None
    node = cluster.node.strip()
    if node and not all(c.isalnum() or c in "-_." for c in node):
        raise ConfigError("letters, digits, '-', '_' and '.' only", "cluster.node", path)
    for key in ("held_per_user", "held_stanzas"):
        if getattr(cluster, key) < 1:
            raise ConfigError("must be at least 1", f"cluster.{key}", path)
    # "" stays "": the node computes host name + pid when it starts (after
    # twistd has forked, so that the pid is the running process's).
    return dataclasses.replace(cluster, node=node)


def parse_networks(values: typing.Iterable[str], key: str, path: str | None = None
                   ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses or CIDR networks ("10.0.0.0/8", "::1")."""
    out = []
    for i, text in enumerate(values):
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"invalid address or network {text!r}", f"{key}[{i}]",
                              path) from None
    return tuple(out)


def _parse_registration(value: Any, path: str | None) -> RegistrationConfig:
    reg = build_options(RegistrationConfig, value, "registration", path)
    if reg.mode not in REGISTRATION_MODES:
        raise ConfigError(f"unknown mode {reg.mode!r} (one of {', '.join(REGISTRATION_MODES)})",
                          "registration.mode", path)
    for name in ("min_username_length", "min_password_length", "max_per_ip", "ip_window",
                 "invite_lifetime", "captcha_lifetime", "new_account_messages_per_minute",
                 "new_account_subscriptions_per_minute"):
        if getattr(reg, name) < 1:
            raise ConfigError("must be at least 1", f"registration.{name}", path)
    for name in ("tombstone_period", "deletion_grace", "new_account_period"):
        if getattr(reg, name) < 0:
            raise ConfigError("must not be negative", f"registration.{name}", path)
    names = []
    for i, name in enumerate(reg.reserved_names):
        try:
            names.append(prepare_localpart(name))
        except ValueError as exc:
            raise ConfigError(f"invalid name {name!r}: {exc}",
                              f"registration.reserved_names[{i}]", path) from None
    return dataclasses.replace(reg, reserved_names=tuple(names))


def _parse_http(value: Any, path: str | None) -> HTTPConfig:
    http = build_options(HTTPConfig, value, "http", path)
    parse_networks(http.trusted_proxies, "http.trusted_proxies", path)
    parse_networks(http.metrics_allow, "http.metrics_allow", path)
    url = http.external_url.strip()
    if url and not (url.startswith("https://") or url.startswith("http://")):
        raise ConfigError("must start with https:// (or http://)", "http.external_url", path)
    if not http.tls and not http.trusted_proxies:
        raise ConfigError("plain HTTP is served only behind a reverse proxy: "
                          "list its address in http.trusted_proxies", "http.tls", path)
    if not http.tls and not url:
        raise ConfigError("with tls = false the public https:// URL of the reverse proxy is "
                          "required", "http.external_url", path)
    for name in ("max_request_body", "idle_timeout", "bosh_max_wait", "bosh_max_hold",
                 "bosh_inactivity", "bosh_max_sessions_per_ip"):
        if getattr(http, name) < 1:
            raise ConfigError("must be at least 1", f"http.{name}", path)
    return dataclasses.replace(http, external_url=url.rstrip("/"))


def _parse_modules(value: Any, path: str | None
                   ) -> tuple[tuple[str, ...] | None, FrozenDict]:
    """``modules = [...]`` or ``[modules] enabled = [...]`` plus option tables."""
    if isinstance(value, list):
        enabled: tuple[str, ...] | None = _convert(value, tuple[str, ...], "modules", path)
        options: dict[str, Any] = {}
        key = "modules"
    elif isinstance(value, dict):
        enabled = None
        options = {}
        key = "modules.enabled"
        for name, table in value.items():
            if name == "enabled":
                enabled = _convert(table, tuple[str, ...], key, path)
            elif isinstance(table, dict):
                options[name] = _freeze(table)
            else:
                raise ConfigError(f"expected a table of module options, got {_describe(table)}",
                                  _join("modules", name), path)
    else:
        raise ConfigError(f"expected an array of module names or a table, got "
                          f"{_describe(value)}", "modules", path)
    if enabled is not None:
        seen = set()
        for i, name in enumerate(enabled):
            if not name or name in seen:
                raise ConfigError(f"empty or duplicate module name {name!r}",
                                  f"{key}[{i}]", path)
            seen.add(name)
    return enabled, FrozenDict(options)


def _parse_listen(value: Any, path: str | None) -> ListenConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table, got {_describe(value)}", "listen", path)
    kwargs = {}
    for key, text in value.items():
        dotted = _join("listen", key)
        if key not in _LISTEN_KEYS:
            raise ConfigError("unknown key", dotted, path)
        text = _convert(text, str, dotted, path)
        endpoint = parse_endpoint(text, dotted, path)
        if key in _NOT_IMPLEMENTED:
            if endpoint is not None:
                raise ConfigError(_NOT_IMPLEMENTED[key], dotted, path)
            continue
        kwargs[key] = endpoint
    return ListenConfig(**kwargs)


def _parse_s2s(value: Any, path: str | None, resolve: typing.Callable[[str], str]) -> S2SConfig:
    s2s = build_options(S2SConfig, value, "s2s", path)
    changes: dict[str, Any] = {}
    for name in ("plaintext_domains", "secure_domains", "insecure_domains"):
        prepared = []
        for i, domain in enumerate(getattr(s2s, name)):
            try:
                prepared.append(prepare_domain(domain))
            except ValueError as exc:
                raise ConfigError(str(exc), f"s2s.{name}[{i}]", path) from None
        changes[name] = tuple(prepared)
    routes = {}
    for domain, target in s2s.static_routes.items():
        key = _join("s2s.static_routes", domain)
        try:
            name = prepare_domain(domain)
        except ValueError as exc:
            raise ConfigError(str(exc), key, path) from None
        text = target[4:] if target.startswith("tls:") else target
        if parse_endpoint(text, key, path) is None:
            raise ConfigError("must not be empty", key, path)
        routes[name] = target
    changes["static_routes"] = FrozenDict(routes)
    if s2s.ca_file is not None:
        if not s2s.ca_file.strip():
            changes["ca_file"] = None
        else:
            ca_file = resolve(s2s.ca_file)
            if not os.path.isfile(ca_file):
                raise ConfigError(f"file not found: {ca_file}", "s2s.ca_file", path)
            changes["ca_file"] = ca_file
    for name in ("connect_timeout", "auth_timeout", "idle_timeout", "retry_delay",
                 "max_retry_delay"):
        if getattr(s2s, name) <= 0:
            raise ConfigError("must be greater than 0", f"s2s.{name}", path)
    for name in ("max_queue", "dns_cache_size", "max_connections_per_ip", "max_incoming",
                 "max_unauthenticated"):
        if getattr(s2s, name) < 1:
            raise ConfigError("must be at least 1", f"s2s.{name}", path)
    if s2s.max_retry_delay < s2s.retry_delay:
        raise ConfigError("must not be smaller than s2s.retry_delay", "s2s.max_retry_delay", path)
    return dataclasses.replace(s2s, **changes)


def _parse_tls(value: Any, path: str | None, resolve: typing.Callable[[str], str]) -> TLSConfig:
    raw = dict(value) if isinstance(value, Mapping) else value
    domains_raw = raw.pop("domains", {}) if isinstance(raw, dict) else {}
    tls = build_options(TLSConfig, raw, "tls", path)
    if (tls.certificate is None) != (tls.key is None):
        missing = "tls.key" if tls.key is None else "tls.certificate"
        raise ConfigError("tls.certificate and tls.key must be given together", missing, path)
    if not isinstance(domains_raw, Mapping):
        raise ConfigError(f"expected a table, got {_describe(domains_raw)}", "tls.domains", path)
    domains: dict[str, TLSCertConfig] = {}
    for name, table in domains_raw.items():
        section = _join("tls.domains", name)
        try:
            domain = prepare_domain(name)
        except ValueError as exc:
            raise ConfigError(str(exc), section, path) from None
        entry = build_options(TLSCertConfig, table, section, path)
        domains[domain] = TLSCertConfig(resolve(entry.certificate), resolve(entry.key))
    return TLSConfig(
        certificate=resolve(tls.certificate) if tls.certificate else None,
        key=resolve(tls.key) if tls.key else None,
        domains=FrozenDict(domains),
    )
