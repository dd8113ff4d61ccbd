"""Packaging: a wheel and an editable install both give ``twistd chatbx``.

DESIGN.md "Packaging traps": Twisted finds plugins by scanning ``sys.path``
for ``twisted/plugins`` directories, so the wheel must carry
``twisted/plugins/chatbx_plugin.py`` and an editable install must put the
repo root on ``sys.path`` (a static ``.pth``, not an import hook). The wheel
must also carry the Alembic migrations as ``chatbx_server/migrations``.

Each test installs into a fresh virtualenv in a temporary directory. The
virtualenv sees the system's installed dependencies through a plain path
entry in a ``.pth`` file (so nothing is downloaded), which, unlike
``--system-site-packages``, does not run the system's own ``.pth`` files: a
developer's editable chatbx install there cannot make these tests pass.
The source tree is copied first, so building leaves no build/ or egg-info
behind in the checkout.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
    "_trial_temp", "chatbx-data", "dropin.cache", ".helper-notes", "bench",
)
TWISTD_HELP = (
    "import sys; sys.argv[0] = 'twistd'; "
    "from twisted.scripts.twistd import run; run()"
)
PLUGIN_LINE = re.compile(r"^\s+chatbx\s+A federated XMPP server\s*$", re.MULTILINE)
WHERE = (
    "import os, chatbx_server, twisted.plugins; "
    "print(os.path.dirname(chatbx_server.__file__)); "
    "print('\\n'.join(p for p in twisted.plugins.__path__ "
    "if os.path.exists(os.path.join(p, 'chatbx_plugin.py'))))"
)


def _run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run outside the checkout: ``python -c`` puts the cwd first on sys.path."""
    if cwd is None:
        cwd = Path(args[0]).parent if os.path.isabs(args[0]) else Path("/")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _local_build_ok() -> bool:
    """True when this interpreter can build wheels without build isolation.

    setuptools < 70.1 needs the separate ``wheel`` package for bdist_wheel;
    without it pip builds in an isolated environment (fetching setuptools
    from the configured index).
    """
    import setuptools

    try:
        import wheel  # noqa: F401
        return True
    except ImportError:
        major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
        return (major, minor) >= (70, 1)


def _build_flags() -> list[str]:
    return ["--no-build-isolation", "--no-index"] if _local_build_ok() else []


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout to build from."""
    dest = tmp_path_factory.mktemp("src") / "chatbx"
    shutil.copytree(REPO, dest, ignore=IGNORED)
    return dest


def _make_venv(path: Path) -> tuple[Path, Path]:
    """A fresh venv seeing the system's packages by path only; returns (python, site-packages)."""
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(path)]))
    python = path / "bin" / "python"
    site = Path(_check(_run([str(python), "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"])).strip())
    system = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_chatbx_test_system_packages.pth").write_text("\n".join(sorted(system)) + "\n")
    return python, site


def _where(python: Path) -> tuple[Path, list[Path]]:
    """(chatbx_server package dir, twisted/plugins dirs holding chatbx_plugin.py) in a venv."""
    lines = _check(_run([str(python), "-c", WHERE])).strip().splitlines()
    return Path(lines[0]), [Path(line) for line in lines[1:]]


@pytest.fixture(scope="module")
def wheel_venv(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A venv with chatbx installed from a freshly built wheel; (python, site-packages)."""
    base = tmp_path_factory.mktemp("wheel")
    _check(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", *_build_flags(),
                 "-w", str(base / "dist"), "."], cwd=source))
    wheels = list((base / "dist").glob("chatbx-*.whl"))
    assert len(wheels) == 1, wheels
    python, site = _make_venv(base / "venv")
    _check(_run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])]))
    return python, site


def test_wheel_install_lists_chatbx_plugin(wheel_venv: tuple[Path, Path]) -> None:
    """After installing the wheel, `twistd --help` lists chatbx, found in the venv's own site-packages."""
    python, site = wheel_venv
    package, plugin_dirs = _where(python)
    assert package == site / "chatbx_server"
    assert plugin_dirs == [site / "twisted" / "plugins"]
    assert not (site / "twisted" / "plugins" / "__init__.py").exists()
    assert PLUGIN_LINE.search(_check(_run([str(python), "-c", TWISTD_HELP, "--help"])))


def test_wheel_stale_plugin_cache_cannot_hide_chatbx(wheel_venv: tuple[Path, Path]) -> None:
    """A dropin.cache newer than the plugin but written before it existed still lets twistd find chatbx.

    Twisted imports any plugin module missing from the cache regardless of
    the cache's age, and survives a cache it cannot write.
    """
    python, site = wheel_venv
    plugins = site / "twisted" / "plugins"
    cache = plugins / "dropin.cache"
    cache.write_bytes(pickle.dumps({}))
    future = time.time() + 3600
    os.utime(cache, (future, future))
    cache.chmod(0o444)
    plugins.chmod(0o555)
    try:
        assert PLUGIN_LINE.search(_check(_run([str(python), "-c", TWISTD_HELP, "--help"])))
    finally:
        plugins.chmod(0o755)
        cache.chmod(0o644)
        cache.unlink()


def test_wheel_installs_chatbxctl(wheel_venv: tuple[Path, Path]) -> None:
    """The wheel installs the chatbxctl console script and `chatbxctl --help` exits 0."""
    python, site = wheel_venv
    script = python.parent / "chatbxctl"
    assert script.exists()
    assert (site / "chatbx_server" / "cli.py").exists()
    _check(_run([str(script), "--help"]))


def test_wheel_carries_migrations(source: Path, wheel_venv: tuple[Path, Path]) -> None:
    """The installed package holds every Alembic file of migrations/ under chatbx_server/migrations."""
    _, site = wheel_venv
    src = source / "migrations"
    installed = site / "chatbx_server" / "migrations"

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and p.suffix in (".py", ".mako", ".ini")
                and "__pycache__" not in p.parts}

    assert (src / "env.py").exists(), "migrations/env.py missing in the checkout"
    assert files(installed) == files(src)
    assert (installed / "env.py").exists()
    assert list((installed / "versions").glob("*.py")), "no migration revisions installed"


def test_editable_install_lists_chatbx_plugin(source: Path, tmp_path: Path) -> None:
    """`pip install -e` writes a static .pth with the source root, so twistd finds the checkout's plugin."""
    python, site = _make_venv(tmp_path / "venv")
    _check(_run([str(python), "-m", "pip", "install", "--no-deps", *_build_flags(),
                 "-e", str(source)]))
    pths = list(site.glob("__editable__*chatbx*.pth"))
    assert len(pths) == 1, list(site.iterdir())
    entries = pths[0].read_text().split()
    assert [Path(e).resolve() for e in entries] == [source.resolve()], entries
    package, plugin_dirs = _where(python)
    assert package.resolve() == (source / "chatbx_server").resolve()
    assert [p.resolve() for p in plugin_dirs] == [(source / "twisted" / "plugins").resolve()]
    assert PLUGIN_LINE.search(_check(_run([str(python), "-c", TWISTD_HELP, "--help"])))


def test_wheel_carries_templates(source: Path, wheel_venv: tuple[Path, Path]) -> None:
    """The web pages' Jinja2 templates (invite landing page, sign-up form) are installed."""
    _, site = wheel_venv
    src = source / "chatbx_server" / "http" / "templates"
    installed = site / "chatbx_server" / "http" / "templates"
    assert {p.name for p in src.glob("*.html")} == {p.name for p in installed.glob("*.html")}
    assert (installed / "invite.html").is_file()
