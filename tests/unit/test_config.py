"""Tests for chatbx_server.config: TOML -> frozen dataclasses, errors naming key and file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from chatbx_server.config import (
    Config,
    ConfigError,
    Endpoint,
    FrozenDict,
    build_options,
    load_config,
    parse_endpoint,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "chatbx.example.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chatbx.toml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file() -> None:
    """No file gives the documented defaults: localhost, loopback c2s ports."""
    config = load_config(None)
    assert config.domains == ("localhost",)
    assert config.data_dir == "./chatbx-data"
    assert config.modules is None
    assert config.listen.c2s == Endpoint("127.0.0.1", 5222)
    assert config.listen.c2s_tls == Endpoint("127.0.0.1", 5223)
    assert config.limits.max_stanza_size == 262144
    assert config.database.url is None and config.database.pool_size == 5
    assert config.database_url.startswith("sqlite:///")
    assert config.database_url.endswith("chatbx-data/chatbx.sqlite")
    assert config.log.level == "info"


def test_example_file_loads_and_matches_defaults() -> None:
    """The shipped chatbx.example.toml is valid and documents the default values."""
    config = load_config(str(EXAMPLE))
    defaults = load_config(None)
    assert config.domains == defaults.domains
    assert config.listen == defaults.listen
    assert config.limits == defaults.limits
    assert config.s2s == defaults.s2s
    assert config.database == defaults.database
    assert config.log == defaults.log


def test_full_file_is_parsed_and_frozen(tmp_path: Path) -> None:
    """Every section parses into hashable, immutable values; paths are file-relative."""
    path = write(tmp_path, """
domains = ["Example.ORG", "chat.example.net."]
data_dir = "data"
admins = []

[modules]
enabled = ["ping", "offline"]

[modules.offline]
max_messages = 50

[database]
url = "postgresql://postgres@127.0.0.1:5432/test"
pool_size = 10

[listen]
c2s = "0.0.0.0:0"
c2s_tls = "[::1]:5223"
s2s = ""
http = ""

[tls]
certificate = "certs/all.pem"
key = "/etc/chatbx/all.key"

[tls.domains."Chat.Example.NET"]
certificate = "net.crt"
key = "net.key"

[limits]
max_stanza_size = 1000
auth_failure_delay = 2

[log]
level = "DEBUG"
""")
    config = load_config(path)
    assert config.path == path
    assert config.domains == ("example.org", "chat.example.net")
    assert config.data_dir == str(tmp_path / "data")
    assert config.modules == ("ping", "offline")
    assert config.module_options["offline"] == {"max_messages": 50}
    assert config.database.pool_size == 10
    assert config.database_url.startswith("postgresql://")
    assert config.listen.c2s == ("0.0.0.0", 0)
    assert config.listen.c2s_tls == ("::1", 5223)
    assert config.tls.certificate == str(tmp_path / "certs" / "all.pem")
    assert config.tls.key == "/etc/chatbx/all.key"
    assert config.tls.domains["chat.example.net"].certificate == str(tmp_path / "net.crt")
    assert config.limits.auth_failure_delay == 2.0
    assert isinstance(config.limits.auth_failure_delay, float)
    assert config.log.level == "debug"
    hash(config)
    with pytest.raises(AttributeError):
        config.domains = ()  # type: ignore[misc]


def test_modules_array_form(tmp_path: Path) -> None:
    """The top-level array form enables modules without any options tables."""
    config = load_config(write(tmp_path, 'modules = ["ping"]\n'))
    assert config.modules == ("ping",)
    assert config.module_options == {}


@pytest.mark.parametrize("text, key, message", [
    ("domain = ['x']", "domain", "unknown key"),
    ("domains = 'localhost'", "domains", "expected an array of strings, got string"),
    ("domains = [1]", "domains[0]", "expected a string, got integer"),
    ("domains = []", "domains", "at least one domain"),
    ("domains = ['a b']", "domains[0]", "invalid domain"),
    ("domains = ['x.org', 'X.org']", "domains[1]", "duplicate domain"),
    ("admins = 'a@b'", "admins", "expected an array of strings"),
    ("modules = 'ping'", "modules", "expected an array of module names or a table"),
    ("modules = ['ping', 'ping']", "modules[1]", "duplicate"),
    ("[modules]\nping = 3", "modules.ping", "expected a table of module options"),
    ("[database]\npool_size = '5'", "database.pool_size", "expected an integer, got string"),
    ("[database]\npool_size = 0", "database.pool_size", "at least 1"),
    ("[database]\nuri = 'x'", "database.uri", "unknown key"),
    ("[listen]\nc2s = 5222", "listen.c2s", "expected a string, got integer"),
    ("[listen]\nc2s = 'localhost'", "listen.c2s", "invalid address"),
    ("[listen]\nc2s = 'localhost:99999'", "listen.c2s", "invalid port"),
    ("[listen]\nc2s = '[::zz]:5222'", "listen.c2s", "invalid IPv6"),
    ("[listen]\nbosh = ':1'", "listen.bosh", "unknown key"),
    ("[tls]\ncertificate = 'a.crt'", "tls.key", "must be given together"),
    ("[tls]\ncert = 'a.crt'", "tls.cert", "unknown key"),
    ("[tls.domains.'x.org']\ncertificate = 'a'", 'tls.domains."x.org".key', "missing required"),
    ("[tls.domains.'x.org']\ncertificate = 'a'\nkey = 'b'\nchain = 'c'",
     'tls.domains."x.org".chain', "unknown key"),
    ("[limits]\nmax_depth = true", "limits.max_depth", "expected an integer, got boolean"),
    ("[limits]\nmax_depth = 0", "limits.max_depth", "at least 1"),
    ("[limits]\nauth_failure_delay = 'slow'", "limits.auth_failure_delay", "expected a number"),
    ("[limits]\nauth_failure_delay = 5.0\nauth_failure_max_delay = 1.0",
     "limits.auth_failure_max_delay", "must not be smaller"),
    ("[limits]\nauth_failure_window = 0", "limits.auth_failure_window", "at least 1"),
    ("[limits]\nauth_max_failures = 0", "limits.auth_max_failures", "at least 1"),
    ("[limits]\nhash_threads = 0", "limits.hash_threads", "at least 1"),
    ("[log]\nlevel = 'loud'", "log.level", "unknown level"),
    ("log = 'info'", "log", "expected a table"),
])
def test_errors_name_key_and_file(tmp_path: Path, text: str, key: str, message: str) -> None:
    """Each bad value is refused with 'FILE: KEY: MESSAGE'."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert message in str(info.value)
    assert info.value.key == key and info.value.path == path


def test_admins_and_registration(tmp_path: Path) -> None:
    """admins are prepared bare JIDs; [registration] is read with its mode
    and reserved names prepared (PRECIS case mapping)."""
    config = load_config(write(tmp_path, "admins = ['Boss@Example.org']\n"
                                         "[registration]\nmode = 'open'\n"
                                         "reserved_names = ['Chef']\nmax_per_ip = 2\n"))
    assert config.admins == ("boss@example.org",)
    assert config.registration.mode == "open"
    assert config.registration.reserved_names == ("chef",)
    assert config.registration.max_per_ip == 2
    assert load_config(None).registration.mode == "invite"
    assert "abuse" in load_config(None).registration.reserved_names
    load_config(write(tmp_path, "admins = []\n[listen]\ns2s = ''\nhttp = ''\n"))


@pytest.mark.parametrize("text, key, message", [
    ("admins = ['example.org']", "admins[0]", "not a bare user JID"),
    ("admins = ['a@b/c']", "admins[0]", "not a bare user JID"),
    ("admins = ['@@']", "admins[0]", "invalid JID"),
    ("[registration]\nmode = 'wide'", "registration.mode", "unknown mode"),
    ("[registration]\nmax_per_ip = 0", "registration.max_per_ip", "at least 1"),
    ("[registration]\ndeletion_grace = -1", "registration.deletion_grace", "negative"),
    ("[registration]\nreserved_names = ['a@b']", "registration.reserved_names[0]",
     "invalid name"),
    ("[registration]\ncolour = 1", "registration.colour", "unknown key"),
])
def test_admins_and_registration_errors(tmp_path: Path, text: str, key: str,
                                        message: str) -> None:
    """Bad admins and [registration] values are refused naming the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert message in str(info.value)


def test_s2s_keys(tmp_path: Path) -> None:
    """[listen] s2s/s2s_tls and the [s2s] table are read: domains prepared,
    static routes checked, ca_file resolved relative to the file."""
    (tmp_path / "ca.pem").write_text("x")
    config = load_config(write(tmp_path, "[listen]\ns2s = '0.0.0.0:5269'\ns2s_tls = '[::]:5270'\n"
                                         "[s2s]\nrequire_encryption = false\nplaintext_domains = ['Old.Example']\n"
                                         "secure_auth = true\ninsecure_domains = ['x.example']\n"
                                         "ca_file = 'ca.pem'\nidle_timeout = 30\nmax_queue = 5\n"
                                         "static_routes = { 'B.example' = 'tls:127.0.0.1:5999' }\n"))
    assert config.listen.s2s == ("0.0.0.0", 5269) and config.listen.s2s_tls == ("::", 5270)
    s2s = config.s2s
    assert s2s.plaintext_domains == ("old.example",) and s2s.insecure_domains == ("x.example",)
    assert s2s.secure_auth and not s2s.require_encryption
    assert s2s.ca_file == str(tmp_path / "ca.pem")
    assert dict(s2s.static_routes) == {"b.example": "tls:127.0.0.1:5999"}
    assert (s2s.idle_timeout, s2s.max_queue) == (30.0, 5)


@pytest.mark.parametrize("text, key", [
    ("[s2s]\nstatic_routes = { 'b.example' = 'nope' }", 's2s.static_routes."b.example"'),
    ("[s2s]\nca_file = 'missing.pem'", "s2s.ca_file"),
    ("[s2s]\nmax_queue = 0", "s2s.max_queue"),
    ("[s2s]\nretry_delay = 10.0\nmax_retry_delay = 5.0", "s2s.max_retry_delay"),
    ("[s2s]\nsecure_domains = ['a@b']", "s2s.secure_domains[0]"),
    ("[s2s]\nbogus = 1", "s2s.bogus"),
])
def test_s2s_bad_values(tmp_path: Path, text: str, key: str) -> None:
    """Bad [s2s] values are refused, naming the key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key


def test_http_listener_and_section(tmp_path: Path) -> None:
    """[listen] http is a real listener now and [http] is read with its checks."""
    config = load_config(write(tmp_path, "[listen]\nhttp = '127.0.0.1:5443'\n[http]\n"
                                         "external_url = 'https://{domain}/x/'\n"
                                         "trusted_proxies = ['10.0.0.0/8']\n"))
    assert config.listen.http == Endpoint("127.0.0.1", 5443)
    assert config.http.external_url == "https://{domain}/x"
    assert config.http.trusted_proxies == ("10.0.0.0/8",)
    assert load_config(None).listen.http is None


@pytest.mark.parametrize("text, key", [
    ("[http]\ntls = false\nexternal_url = 'https://x'", "http.tls"),
    ("[http]\ntls = false\ntrusted_proxies = ['127.0.0.1']", "http.external_url"),
    ("[http]\ntrusted_proxies = ['nope']", "http.trusted_proxies[0]"),
    ("[http]\nexternal_url = 'ftp://x'", "http.external_url"),
    ("[http]\nbosh_max_wait = 0", "http.bosh_max_wait"),
])
def test_http_errors(tmp_path: Path, text: str, key: str) -> None:
    """Plain HTTP without a proxy, bad networks/URLs and zero bounds are refused by key."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key


def test_auth_limits_parse(tmp_path: Path) -> None:
    """The login-throttle and hashing keys are read from [limits]."""
    config = load_config(write(tmp_path, "[limits]\nauth_max_failures = 3\n"
                                         "auth_failure_window = 60\n"
                                         "auth_failure_entries = 10\nhash_threads = 4\n"))
    limits = config.limits
    assert (limits.auth_max_failures, limits.auth_failure_window) == (3, 60.0)
    assert (limits.auth_failure_entries, limits.hash_threads) == (10, 4)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    """Syntax errors and unreadable files are ConfigErrors naming the file."""
    path = write(tmp_path, "domains = [")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid TOML"):
        load_config(path)
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=rf"^{missing}: cannot read"):
        load_config(missing)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5222", ("127.0.0.1", 5222)),
    ("localhost:0", ("localhost", 0)),
    ("[::]:5269", ("::", 5269)),
    ("", None),
    ("  ", None),
])
def test_parse_endpoint(text: str, expected) -> None:
    """HOST:PORT and [IPv6]:PORT parse; empty means disabled."""
    assert parse_endpoint(text) == expected


@dataclass(frozen=True)
class _Options:
    limit: int = 10
    ratio: float = 0.5
    enabled: bool = True
    name: str = "x"
    hosts: tuple[str, ...] = ()
    groups: dict[str, list[str]] = field(default_factory=dict)
    maybe: Optional[int] = None

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError("limit must not be negative")


def test_build_options_converts_and_freezes() -> None:
    """Module options are checked against field types; lists become tuples."""
    options = build_options(_Options, {
        "limit": 3, "ratio": 1, "enabled": False, "name": "n",
        "hosts": ["a", "b"], "groups": {"g": ["u1", "u2"]}, "maybe": 4,
    }, "modules.demo", "f.toml")
    assert options.limit == 3 and options.ratio == 1.0 and options.enabled is False
    assert options.hosts == ("a", "b")
    assert options.groups == {"g": ("u1", "u2")}
    assert isinstance(options.groups, FrozenDict)
    hash(options)
    assert build_options(_Options, {}, "modules.demo") == _Options()


@pytest.mark.parametrize("raw, key, message", [
    ({"limt": 1}, "modules.demo.limt", "unknown key"),
    ({"limit": "1"}, "modules.demo.limit", "expected an integer, got string"),
    ({"enabled": 1}, "modules.demo.enabled", "expected a boolean, got integer"),
    ({"hosts": "a"}, "modules.demo.hosts", "expected an array of strings"),
    ({"hosts": ["a", 2]}, "modules.demo.hosts[1]", "expected a string"),
    ({"groups": {"g": "u"}}, "modules.demo.groups.g", "expected an array of strings"),
    ({"maybe": "x"}, "modules.demo.maybe", "expected an integer"),
    ({"limit": -1}, "modules.demo", "limit must not be negative"),
])
def test_build_options_errors(raw, key: str, message: str) -> None:
    """build_options names modules.<name>.<key> and the file for each bad option."""
    with pytest.raises(ConfigError) as info:
        build_options(_Options, raw, "modules.demo", "f.toml")
    assert str(info.value).startswith(f"f.toml: {key}: ")
    assert message in str(info.value)


def test_config_options_for_returns_raw_table(tmp_path: Path) -> None:
    """options_for gives the raw [modules.<name>] table, empty when absent."""
    config = load_config(write(tmp_path, "[modules.ping]\ninterval = 5\n"))
    assert config.modules is None
    assert config.options_for("ping") == {"interval": 5}
    assert config.options_for("mam") == {}
    assert Config().options_for("ping") == {}
