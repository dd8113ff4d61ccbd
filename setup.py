"""Build hooks for chatbx; the metadata lives in setup.cfg.

Two things a plain setuptools build would not ship, added here:

- ``twisted/plugins/chatbx_plugin.py``: Twisted finds ``twistd chatbx`` by
  scanning every ``twisted/plugins/`` directory on ``sys.path`` that has no
  ``__init__.py``. Listing ``twisted.plugins`` as a package would make it a
  namespace package (and ship an ``__init__``-less copy of Twisted's own
  package), so the file is copied into the build tree instead; a wheel then
  installs it next to Twisted's own plugins.
- ``migrations/`` (Alembic ``env.py``, ``script.py.mako``,
  ``versions/*.py``) is copied into ``chatbx_server/migrations/`` so an
  installed chatbx can upgrade its schema. A checkout (and an editable
  install, whose static ``.pth`` puts the repo root on ``sys.path``) uses
  ``<repo>/migrations`` directly.
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join("twisted", "plugins", "chatbx_plugin.py")
MIGRATIONS = "migrations"
MIGRATION_SUFFIXES = (".py", ".mako", ".ini")


def _migration_files(root: str) -> list[str]:
    """Paths relative to ``root`` of the files a migration run needs."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(MIGRATION_SUFFIXES):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


class build_py_with_plugin(build_py):
    """build_py that also places the Twisted plugin and the migrations."""

    def run(self) -> None:
        super().run()
        # An editable install serves both straight from the checkout.
        if getattr(self, "editable_mode", False):
            return
        self._copy(os.path.join(HERE, PLUGIN), os.path.join(self.build_lib, PLUGIN))
        source = os.path.join(HERE, MIGRATIONS)
        if os.path.isdir(source):
            target = os.path.join(self.build_lib, "chatbx_server", MIGRATIONS)
            for rel in _migration_files(source):
                self._copy(os.path.join(source, rel), os.path.join(target, rel))

    def _copy(self, src: str, dst: str) -> None:
        self.mkpath(os.path.dirname(dst))
        self.copy_file(src, dst, preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if getattr(self, "editable_mode", False):
            return outputs
        outputs.append(os.path.join(self.build_lib, PLUGIN))
        source = os.path.join(HERE, MIGRATIONS)
        if os.path.isdir(source):
            target = os.path.join(self.build_lib, "chatbx_server", MIGRATIONS)
            outputs.extend(os.path.join(target, rel) for rel in _migration_files(source))
        return outputs


setup(cmdclass={"build_py": build_py_with_plugin})
