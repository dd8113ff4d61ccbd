"""Tests for chatbxctl (chatbx_server.cli): every command's success and error paths.

Each test runs ``main([...])`` against a config in tmp_path (SQLite in the
test's data_dir unless stated) and checks the exit code and the one-line
output; no reactor runs.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from chatbx_server import cli
from chatbx_server.config import ConfigError


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at head, migrated once and copied into each test (speed)."""
    from chatbx_server.storage import migrate

    path = tmp_path_factory.mktemp("template") / "chatbx.sqlite"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _write_config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "chatbx.toml"
    path.write_text(f'domains = ["localhost", "example.org"]\n'
                    f'data_dir = "{tmp_path / "data"}"\n{extra}')
    return str(path)


@pytest.fixture
def config(tmp_path: Path, migrated_sqlite: Path) -> str:
    """A config whose SQLite database is already at head."""
    (tmp_path / "data").mkdir()
    shutil.copy(migrated_sqlite, tmp_path / "data" / "chatbx.sqlite")
    return _write_config(tmp_path)


@pytest.fixture
def ctl(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run chatbxctl; returns (exit code, stdout, stderr) and checks no traceback leaked."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if code == 1:  # exactly one line, with the prefix
            assert err.startswith("chatbxctl: error: ") and err.count("\n") == 1, err
        return code, out, err

    return run


def _users(ctl: Callable[..., Any], config: str) -> list[str]:
    code, out, _ = ctl("--config", config, "user", "list")
    assert code == 0
    return out.split()


def _password_ok(config: str, jid: str, password: str) -> bool:
    from chatbx_server.config import load_config
    from chatbx_server.storage import Database, Stores

    db = Database(load_config(config).database_url, threadless=True)
    try:
        return cli._result(Stores(db).users.check_password(jid, password))
    finally:
        db.stop()


# --- user add / list / passwd / delete ------------------------------------------

def test_user_add_with_password_and_list(ctl, config: str) -> None:
    """user add creates a prepared JID; user list shows it, filtered by domain."""
    assert ctl("--config", config, "user", "add", "Alice@LocalHost", "--password", "s3cret") \
        == (0, "added alice@localhost\n", "")
    assert ctl("--config", config, "user", "add", "bob@example.org", "-p", "pw")[0] == 0
    assert _users(ctl, config) == ["alice@localhost", "bob@example.org"]
    code, out, _ = ctl("--config", config, "user", "list", "example.org")
    assert (code, out) == (0, "bob@example.org\n")
    assert _password_ok(config, "alice@localhost", "s3cret")


def test_user_add_prompts_twice(ctl, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --password the password is read twice with getpass."""
    answers = iter(["typed", "typed"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(answers))
    assert ctl("--config", config, "user", "add", "carol@localhost")[0] == 0
    assert _password_ok(config, "carol@localhost", "typed")


@pytest.mark.parametrize("answers, message", [
    (["one", "two"], "passwords do not match"),
    (["", ""], "empty password refused"),
])
def test_user_add_prompt_errors(ctl, config: str, monkeypatch: pytest.MonkeyPatch,
                                answers: list[str], message: str) -> None:
    """Mismatched or empty prompted passwords are refused and nothing is created."""
    it = iter(answers)
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(it))
    code, _, err = ctl("--config", config, "user", "add", "dave@localhost")
    assert (code, err) == (1, f"chatbxctl: error: {message}\n")
    assert _users(ctl, config) == []


def test_user_add_password_file(ctl, config: str, tmp_path: Path) -> None:
    """--password-file reads the first line of a file (spaces kept, the line
    ending not), so the password never appears in the process list."""
    secret = tmp_path / "pw.txt"
    secret.write_text(" two words \nsecond line ignored\n")
    assert ctl("--config", config, "user", "add", "kim@localhost", "--password-file",
               str(secret)) == (0, "added kim@localhost\n", "")
    assert _password_ok(config, "kim@localhost", " two words ")


@pytest.mark.parametrize("command", [["user", "add", "lee@localhost"],
                                     ["user", "passwd", "lee@localhost"]])
def test_password_stdin(ctl, config: str, monkeypatch: pytest.MonkeyPatch,
                        command: list[str]) -> None:
    """--password-stdin reads one line from standard input (add and passwd)."""
    if command[1] == "passwd":
        assert ctl("--config", config, "user", "add", "lee@localhost", "-p", "old")[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\nnot this\n"))
    assert ctl("--config", config, *command, "--password-stdin")[0] == 0
    assert _password_ok(config, "lee@localhost", "from stdin")


def test_passwd_password_file(ctl, config: str, tmp_path: Path) -> None:
    """passwd takes --password-file too."""
    assert ctl("--config", config, "user", "add", "mo@localhost", "-p", "old")[0] == 0
    secret = tmp_path / "pw.txt"
    secret.write_text("newer\r\n")
    assert ctl("--config", config, "user", "passwd", "mo@localhost", "--password-file",
               str(secret))[0] == 0
    assert _password_ok(config, "mo@localhost", "newer")


@pytest.mark.parametrize("argv, message", [
    (["--password-file", "MISSING"], "cannot read"),
    (["--password-file", "EMPTY"], "empty password refused"),
    (["--password-stdin"], "empty password refused"),
])
def test_password_source_errors(ctl, config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                argv: list[str], message: str) -> None:
    """A missing or empty password file, or nothing on stdin, is a one-line
    error and creates nothing."""
    (tmp_path / "EMPTY").write_text("")
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = ctl("--config", config, "user", "add", "nn@localhost", *argv)
    assert code == 1 and message in err
    assert _users(ctl, config) == []


def test_help_warns_password_is_visible(capsys: pytest.CaptureFixture[str]) -> None:
    """--help of user add and passwd says --password is visible to other users
    and offers the safe ways."""
    for command in ("add", "passwd"):
        assert cli.main(["user", command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--password-file FILE" in out and "--password-stdin" in out
        assert "other users of this machine see it" in out


@pytest.mark.parametrize("argv, message", [
    (["user", "add", "x@example.com", "-p", "pw"],
     "unknown domain example.com (configured: localhost, example.org)"),
    (["user", "add", "x@localhost/res", "-p", "pw"], "not a bare user JID"),
    (["user", "add", "localhost", "-p", "pw"], "not a bare user JID"),
    (["user", "add", "a b@localhost", "-p", "pw"], "invalid JID"),
    (["user", "add", "x@localhost", "-p", ""], "empty password refused"),
    (["user", "passwd", "nobody@localhost", "-p", "pw"], "unknown user nobody@localhost"),
    (["user", "delete", "nobody@localhost"], "unknown user nobody@localhost"),
    (["user", "list", "example.com"], "unknown domain example.com"),
])
def test_user_command_errors(ctl, config: str, argv: list[str], message: str) -> None:
    """Bad JIDs, foreign domains and unknown users are one-line errors, exit 1."""
    code, out, err = ctl("--config", config, *argv)
    assert code == 1 and out == ""
    assert message in err


def test_user_add_existing_is_error(ctl, config: str) -> None:
    """Adding an account twice fails the second time, naming the JID."""
    assert ctl("--config", config, "user", "add", "eve@localhost", "-p", "pw")[0] == 0
    code, _, err = ctl("--config", config, "user", "add", "eve@localhost", "-p", "pw2")
    assert (code, err) == (1, "chatbxctl: error: user already exists: eve@localhost\n")
    assert _password_ok(config, "eve@localhost", "pw")


def test_user_passwd_and_delete(ctl, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """passwd replaces the credentials (prompted); delete removes the account."""
    assert ctl("--config", config, "user", "add", "frank@localhost", "-p", "old")[0] == 0
    answers = iter(["new", "new"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt="": next(answers))
    assert ctl("--config", config, "user", "passwd", "frank@localhost") \
        == (0, "password changed for frank@localhost\n", "")
    assert _password_ok(config, "frank@localhost", "new")
    assert not _password_ok(config, "frank@localhost", "old")
    assert ctl("--config", config, "user", "delete", "frank@localhost") \
        == (0, "deleted frank@localhost\n", "")
    assert _users(ctl, config) == []


# --- bulk import -------------------------------------------------------------------

BULK = """# moved from the old server
alice@localhost  pass one

bob@example.org pw2
  # indented comment
Carol@localhost pw3
"""


def test_bulk_add_from_file(ctl, config: str, tmp_path: Path) -> None:
    """--from-file skips blanks and comments, keeps spaces inside passwords, counts."""
    users = tmp_path / "users.txt"
    users.write_text(BULK)
    assert ctl("--config", config, "user", "add", "--from-file", str(users)) \
        == (0, "added 3 users\n", "")
    assert _users(ctl, config) == ["alice@localhost", "bob@example.org", "carol@localhost"]
    assert _password_ok(config, "alice@localhost", "pass one")


def test_bulk_add_from_stdin(ctl, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """'-' reads the lines from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO("g@localhost pw\nh@localhost pw\n"))
    assert ctl("--config", config, "user", "add", "--from-file", "-")[:2] \
        == (0, "added 2 users\n")


@pytest.mark.parametrize("content, message", [
    ("a@localhost pw\nlonely@localhost\n", "users.txt:2: expected 'JID PASSWORD'"),
    ("# x\n\na@example.com pw\n", "users.txt:3: unknown domain example.com"),
    ("a@localhost pw\nb@x/y pw\n", "users.txt:2: not a bare user JID"),
    ("a@localhost pw\nA@localhost pw\n", "users.txt:2: duplicate JID a@localhost (first on line 1)"),
    ("# nothing\n", "users.txt: no users found"),
])
def test_bulk_add_bad_line_adds_nothing(ctl, config: str, tmp_path: Path,
                                        content: str, message: str) -> None:
    """A bad line is reported with its number and no account is created."""
    users = tmp_path / "users.txt"
    users.write_text(content)
    code, _, err = ctl("--config", config, "user", "add", "--from-file", str(users))
    assert code == 1 and message in err, err
    assert _users(ctl, config) == []


def test_bulk_add_existing_user_names_line(ctl, config: str, tmp_path: Path) -> None:
    """An account that already exists fails the whole import, naming its line."""
    assert ctl("--config", config, "user", "add", "bob@example.org", "-p", "pw")[0] == 0
    users = tmp_path / "users.txt"
    users.write_text(BULK)
    code, _, err = ctl("--config", config, "user", "add", "--from-file", str(users))
    assert code == 1
    assert "users.txt:4: user already exists: bob@example.org (no users added)" in err
    assert _users(ctl, config) == ["bob@example.org"]


def test_bulk_add_missing_file(ctl, config: str, tmp_path: Path) -> None:
    """An unreadable file is a one-line error."""
    code, _, err = ctl("--config", config, "user", "add", "--from-file",
                       str(tmp_path / "missing.txt"))
    assert code == 1 and "cannot read" in err and "missing.txt" in err


# --- usage ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [],
    ["user"],
    ["user", "frobnicate"],
    ["user", "add"],
    ["user", "add", "a@localhost", "--from-file", "x"],
    ["user", "add", "--from-file", "x", "--password-stdin"],
    ["user", "add", "a@localhost", "-p", "x", "--password-stdin"],
    ["user", "passwd", "a@localhost", "-p", "x", "--password-file", "f"],
])
def test_usage_errors_exit_2(ctl, config: str, argv: list[str]) -> None:
    """Missing or contradictory arguments exit with 2 and no traceback."""
    code, _, err = ctl("--config", config, *argv)
    assert code == 2 and "error" in err


def test_help_exits_0(ctl) -> None:
    """--help prints usage and exits 0."""
    code, out, _ = ctl("--help")
    assert code == 0 and "usage: chatbxctl" in out


# --- database --------------------------------------------------------------------------

def test_sqlite_default_upgrades_itself(ctl, tmp_path: Path) -> None:
    """A new SQLite database gets its schema on the first user command."""
    config = _write_config(tmp_path)
    code, out, _ = ctl("--config", config, "db", "current")
    assert code == 0 and "current: none" in out and "status:  empty" in out
    assert ctl("--config", config, "user", "add", "a@localhost", "-p", "pw")[0] == 0
    code, out, _ = ctl("--config", config, "db", "current")
    assert "status:  up to date" in out


def test_db_upgrade_and_current(ctl, tmp_path: Path) -> None:
    """db upgrade applies the migrations once; db current then reports up to date."""
    from chatbx_server.storage import migrate

    config = _write_config(tmp_path)
    head = migrate.head()
    assert ctl("--config", config, "db", "upgrade") == (0, f"database upgraded to {head}\n", "")
    assert ctl("--config", config, "db", "upgrade") == (0, f"database already at {head}\n", "")
    code, out, _ = ctl("--config", config, "db", "current")
    assert out == f"current: {head}\nhead:    {head}\nstatus:  up to date\n"


def test_postgres_behind_refuses_user_commands(ctl, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL schema behind the code is not upgraded implicitly: one line names the fix."""
    from chatbx_server.storage import migrate

    monkeypatch.setattr(migrate, "check", lambda url: migrate.SchemaState.BEHIND)
    config = _write_config(tmp_path, '[database]\nurl = "postgresql://u@127.0.0.1:1/x"\n')
    code, _, err = ctl("--config", config, "user", "list")
    assert (code, err) == (1, "chatbxctl: error: database schema is behind; "
                              "run: chatbxctl db upgrade\n")


def test_schema_ahead_refuses(ctl, config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database written by a newer chatbx is left alone."""
    from chatbx_server.storage import migrate

    monkeypatch.setattr(migrate, "check", lambda url: migrate.SchemaState.AHEAD)
    for argv in (["user", "list"], ["db", "upgrade"]):
        code, _, err = ctl("--config", config, *argv)
        assert code == 1 and "newer than this chatbx" in err


def test_unreachable_database(ctl, tmp_path: Path) -> None:
    """A database that refuses connections is one line naming it (no password shown)."""
    config = _write_config(
        tmp_path, '[database]\nurl = "postgresql://u:hunter2@127.0.0.1:1/x"\n')
    for argv in (["user", "list"], ["db", "upgrade"], ["db", "current"]):
        code, _, err = ctl("--config", config, *argv)
        assert code == 1 and "cannot use database postgresql" in err and "127.0.0.1:1" in err
        assert "hunter2" not in err


def test_user_lifecycle_on_each_backend(ctl, tmp_path: Path, db_url: str) -> None:
    """On SQLite and PostgreSQL: a PostgreSQL database must be upgraded first,
    then accounts are added, listed and deleted."""
    config = _write_config(tmp_path, f'[database]\nurl = "{db_url}"\n')
    if db_url.startswith("postgresql"):
        code, _, err = ctl("--config", config, "user", "add", "a@localhost", "-p", "pw")
        assert code == 1 and "schema is behind; run: chatbxctl db upgrade" in err
        assert ctl("--config", config, "db", "upgrade")[0] == 0
    assert ctl("--config", config, "user", "add", "a@localhost", "-p", "pw")[0] == 0
    assert _users(ctl, config) == ["a@localhost"]
    assert ctl("--config", config, "user", "delete", "a@localhost")[0] == 0
    assert _users(ctl, config) == []


# --- cert and config ---------------------------------------------------------------------

def test_cert_generate_refuses_overwrite_without_force(ctl, config: str, tmp_path: Path) -> None:
    """cert generate writes data_dir/certs/DOMAIN.crt/.key once; --force replaces them."""
    code, out, _ = ctl("--config", config, "cert", "generate", "Example.ORG")
    crt = tmp_path / "data" / "certs" / "example.org.crt"
    assert code == 0 and str(crt) in out and "SHA-256:" in out
    first = crt.read_bytes()
    code, _, err = ctl("--config", config, "cert", "generate", "example.org")
    assert code == 1 and "exists; use --force" in err
    assert crt.read_bytes() == first
    assert ctl("--config", config, "cert", "generate", "example.org", "--force")[0] == 0
    assert crt.read_bytes() != first


def test_cert_generate_invalid_domain(ctl, config: str) -> None:
    """An invalid domain is refused."""
    code, _, err = ctl("--config", config, "cert", "generate", "bad domain")
    assert code == 1 and "invalid domain" in err


def test_config_check_ok_validates_modules(ctl, config: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """config check loads the file and hands it to the module validator."""
    from chatbx_server import features

    seen: list[Any] = []
    monkeypatch.setattr(features, "validate_module_options", seen.append, raising=False)
    code, out, _ = ctl("--config", config, "config", "check")
    assert code == 0 and out.startswith(f"configuration OK: {config}")
    assert seen and seen[0].domains == ("localhost", "example.org")


def test_config_check_reports_module_option_error(ctl, config: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A module option error from the validator is reported as one line."""
    from chatbx_server import features

    def bad(config: Any) -> None:
        raise ConfigError("unknown key", "modules.ping.intervall", config.path)

    monkeypatch.setattr(features, "validate_module_options", bad, raising=False)
    code, _, err = ctl("--config", config, "config", "check")
    assert (code, err) == (1, f"chatbxctl: error: {config}: modules.ping.intervall: unknown key\n")


def test_config_check_reports_config_errors(ctl, tmp_path: Path) -> None:
    """A bad key in the file is reported by any command, naming key and file."""
    path = tmp_path / "bad.toml"
    path.write_text('[listen]\nc2s = 5222\n')
    code, _, err = ctl("--config", str(path), "config", "check")
    assert code == 1 and f"{path}: listen.c2s: expected a string, got integer" in err


def test_config_check_missing_certificate(ctl, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator certificate that does not exist is reported with its key."""
    from chatbx_server import features

    monkeypatch.setattr(features, "validate_module_options", lambda c: None, raising=False)
    config = _write_config(tmp_path, '[tls.domains."example.org"]\n'
                                     'certificate = "nope.crt"\nkey = "nope.key"\n')
    code, _, err = ctl("--config", config, "config", "check")
    assert code == 1 and 'tls.domains."example.org".certificate: file not found' in err


def test_missing_config_file(ctl, tmp_path: Path) -> None:
    """A config path that does not exist is a one-line error."""
    code, _, err = ctl("--config", str(tmp_path / "none.toml"), "user", "list")
    assert code == 1 and "none.toml: cannot read" in err


def test_run_exits_with_main_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console entry point exits with main()'s return value."""
    monkeypatch.setattr(cli, "main", lambda argv=None: 3)
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 3


# --- upload usage / purge ---------------------------------------------------------

def _reserve(config: str, slot: str, uploader: str, size: int, created: float,
             expires: float | None, done: bool = True) -> str:
    """A stored upload row plus its file, as the upload service leaves them."""
    import os

    from chatbx_server.config import load_config
    from chatbx_server.storage import Database, Stores
    from chatbx_server.storage.upload import UploadFiles, UploadRecord

    loaded = load_config(config)
    slot = slot.ljust(32, "0")
    db = Database(loaded.database_url, threadless=True)
    try:
        store = Stores(db).upload
        cli._result(store.reserve(UploadRecord(slot, uploader, "f.txt", size, "text/plain",
                                               created, None, expires), 0, 0))
        if done:
            cli._result(store.complete(slot))
    finally:
        db.stop()
    files = UploadFiles(os.path.join(loaded.data_dir, "uploads"))
    path = files.path(slot)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(b"x" * size)
    return path


def test_upload_usage_and_purge(ctl, config: str) -> None:
    """usage lists bytes per uploader; purge deletes expired files (rows and
    files) and keeps the others; purge --user deletes all of one account's."""
    import time

    now = time.time()
    old = _reserve(config, "a1", "alice@localhost", 5, now - 100, now - 1)
    kept = _reserve(config, "a2", "alice@localhost", 7, now, now + 1000)
    bobs = _reserve(config, "b1", "bob@example.org", 3, now, None)
    code, out, _ = ctl("--config", config, "upload", "usage")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split() == ["alice@localhost", "2", "12", "12"]
    assert lines[2].split() == ["bob@example.org", "1", "3", "3"]
    assert ctl("--config", config, "upload", "purge") == (0, "deleted 1 expired uploads\n", "")
    assert not Path(old).exists() and Path(kept).exists()
    code, out, _ = ctl("--config", config, "upload", "usage", "alice@localhost")
    assert out.splitlines()[1].split() == ["alice@localhost", "1", "7", "7"]
    assert ctl("--config", config, "upload", "purge", "--user", "bob@example.org")[1] \
        == "deleted 1 of bob@example.org uploads\n"
    assert not Path(bobs).exists()
# --- room list / show / destroy ---------------------------------------------------

def test_room_list_show_destroy(ctl, config: str) -> None:
    """room list shows stored rooms with flags and counts, show prints the
    configuration (password hidden) and affiliations, destroy deletes it;
    unknown rooms and non-room JIDs are one-line errors."""
    from chatbx_server.config import load_config
    from chatbx_server.storage import Database, Stores

    db = Database(load_config(config).database_url, threadless=True)
    try:
        cli._result(Stores(db).muc.save_room(
            "team@conference.localhost",
            {"members_only": True, "whois": "anyone", "password": "pw", "public": False},
            "Plans", "Alice", "alice@localhost",
            {"alice@localhost": ("owner", None, None), "bob@localhost": ("member", None, None)}))
    finally:
        db.stop()
    code, out, _ = ctl("--config", config, "room", "list")
    assert code == 0
    assert out.split("\t")[:2] == ["team@conference.localhost",
                                   "hidden,members-only,password,non-anonymous"]
    code, out, _ = ctl("--config", config, "room", "show", "team@conference.localhost")
    assert code == 0 and "owner: alice@localhost" in out and "member: bob@localhost" in out
    assert "config.password: (set)" in out and "pw" not in out.replace("(set)", "")
    assert "subject:      Plans" in out
    assert ctl("--config", config, "room", "destroy", "team@conference.localhost")[0] == 0
    assert ctl("--config", config, "room", "list")[1] == ""
    code, _, err = ctl("--config", config, "room", "destroy", "team@conference.localhost")
    assert code == 1 and "unknown room" in err
    code, _, err = ctl("--config", config, "room", "show", "conference.localhost")
    assert code == 1 and "not a room JID" in err




# --- accounts: disable, invites, delete with tombstone ---------------------------

def test_user_disable_enable_and_delete_reserves_name(ctl, config: str) -> None:
    """disable/enable flip the account's login state; delete leaves a tombstone
    (the name cannot be registered again); unknown users are one-line errors."""
    from chatbx_server.config import load_config
    from chatbx_server.storage import Database, Stores

    assert ctl("--config", config, "user", "add", "gina@localhost", "-p", "pw")[0] == 0
    assert ctl("--config", config, "user", "disable", "gina@localhost") \
        == (0, "disabled gina@localhost\n", "")
    db = Database(load_config(config).database_url, threadless=True)
    try:
        stores = Stores(db)
        assert cli._result(stores.accounts.login("gina@localhost")) == "disabled"
        assert ctl("--config", config, "user", "enable", "gina@localhost")[0] == 0
        assert cli._result(stores.accounts.login("gina@localhost")) == "ok"
        assert ctl("--config", config, "user", "delete", "gina@localhost")[0] == 0
        from chatbx_server.storage.accounts import NameReserved

        with pytest.raises(NameReserved):
            cli._result(stores.accounts.check_registration("gina@localhost"))
    finally:
        db.stop()
    code, _, err = ctl("--config", config, "user", "disable", "nobody@localhost")
    assert code == 1 and "unknown user" in err


def test_invite_create_list_revoke(ctl, config: str) -> None:
    """invite create prints the landing page link; --contact needs an existing
    user; list shows the invites; revoke deletes one."""
    code, out, _ = ctl("--config", config, "invite", "create", "--username", "Newbie", "--admin")
    assert code == 0 and out.startswith("https://localhost/invite/")
    token = out.strip().rsplit("/", 1)[1]
    code, _, err = ctl("--config", config, "invite", "create", "--contact", "nobody@localhost")
    assert code == 1 and "unknown user" in err
    assert ctl("--config", config, "user", "add", "hugo@example.org", "-p", "pw")[0] == 0
    code, out, _ = ctl("--config", config, "invite", "create", "--contact", "hugo@example.org",
                       "--days", "1")
    assert code == 0 and out.startswith("https://example.org/invite/")
    code, out, _ = ctl("--config", config, "invite", "list")
    assert token in out and "admin name=newbie" in out and "contact of hugo@example.org" in out
    assert ctl("--config", config, "invite", "revoke", token) == (0, "revoked\n", "")
    assert ctl("--config", config, "invite", "revoke", token)[0] == 1
# -- fast (XEP-0484 tokens) ---------------------------------------------------------

def test_fast_list_and_revoke(ctl, config: str) -> None:
    """fast list shows each device's tokens (slot, mechanism, label) and never
    a token; revoke --device removes one device's, revoke all the rest; an
    unknown device or account is an error."""
    from chatbx_server.config import load_config
    from chatbx_server.storage import Database, Stores

    assert ctl("--config", config, "user", "add", "alice@localhost", "--password", "pw")[0] == 0
    db = Database(load_config(config).database_url, threadless=True)
    try:
        stores = Stores(db)
        for device in ("phone-id", "laptop-id"):
            stores.fast.issue("alice@localhost", device, "App on Phone", "HT-SHA-256-NONE",
                              b"n" * 16, 86400.0, 10)
    finally:
        db.stop()
    code, out, _ = ctl("--config", config, "fast", "list", "alice@localhost")
    assert code == 0
    lines = sorted(out.splitlines())
    assert [line.split("\t")[:3] for line in lines] == [
        ["laptop-id", "new", "HT-SHA-256-NONE"], ["phone-id", "new", "HT-SHA-256-NONE"]]
    assert lines[0].endswith("App on Phone")
    code, out, _ = ctl("--config", config, "fast", "revoke", "alice@localhost", "--device", "phone-id")
    assert code == 0 and "revoked 1" in out
    code, _, err = ctl("--config", config, "fast", "revoke", "alice@localhost", "--device", "phone-id")
    assert code == 1 and "no FAST tokens" in err
    code, out, _ = ctl("--config", config, "fast", "revoke", "alice@localhost")
    assert code == 0 and "revoked 1" in out
    assert ctl("--config", config, "fast", "list", "alice@localhost")[1] == ""
    code, _, err = ctl("--config", config, "fast", "list", "nobody@localhost")
    assert code == 1 and "unknown user" in err


def test_invite_tokens_never_look_like_an_option(monkeypatch: Any) -> None:
    """A token starting with "-" (1 in 64 of token_urlsafe's) was taken by
    argparse for an option: `chatbxctl invite revoke TOKEN` refused it."""
    import secrets

    from chatbx_server.storage import invites

    drawn = iter(["-leading-dash", "_fine_token"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert invites.new_token() == "_fine_token"
