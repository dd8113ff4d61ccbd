"""Restore the names wokkel 18.0.0 still imports from Twisted.

wokkel 18.0.0 (its latest release) imports ``_PY3``, ``iteritems``,
``itervalues``, ``unicode`` and ``StringType`` from
``twisted.python.compat`` and ``Values``/``ValueConstant`` from
``twisted.python.constants``, which current Twisted has removed (the
constants moved to the ``constantly`` package). This module puts exactly
those names back; it must be imported before the first wokkel import, which
``chatbx_server`` modules do by importing it first.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Iterator, Mapping

import constantly
import twisted.python.compat as _tw_compat


def _iteritems(d: Mapping[Any, Any]) -> Iterator[tuple[Any, Any]]:
    return iter(d.items())


def _itervalues(d: Mapping[Any, Any]) -> Iterator[Any]:
    return iter(d.values())


_RESTORED = {
    "_PY3": True,
    "iteritems": _iteritems,
    "itervalues": _itervalues,
    "unicode": str,
    "StringType": str,
}


# Twisted 26 still ships these two as @deprecated functions that warn on
# every call; wokkel calls them on presence and roster paths, so replace them
# (the warnings also break two of wokkel's own assertWarns tests).
_REPLACED = frozenset({"iteritems", "itervalues"})


def install() -> None:
    """Put the removed names back; idempotent."""
    for name, value in _RESTORED.items():
        # Twisted still ships some of them as deprecated aliases; reading
        # those through the module warns, so look in the module dict only.
        if name in _REPLACED or name not in vars(_tw_compat):
            setattr(_tw_compat, name, value)
    if "twisted.python.constants" not in sys.modules:
        try:
            import twisted.python.constants  # noqa: F401
        except ImportError:
            mod = types.ModuleType("twisted.python.constants")
            mod.__doc__ = "Alias of the constantly package (wokkel compat)."
            for attr in ("NamedConstant", "ValueConstant", "FlagConstant",
                         "Names", "Values", "Flags"):
                setattr(mod, attr, getattr(constantly, attr))
            sys.modules["twisted.python.constants"] = mod
            import twisted.python
            twisted.python.constants = mod


install()
