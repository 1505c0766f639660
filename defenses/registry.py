"""The defenses' registration: ``@register("NAME")`` puts a class into the core's registry
(:data:`splitpriv.defense.DEFENSES`); specs ``name[:key=value,...]`` are parsed by
:func:`splitpriv.options.parse_spec` (re-exported here).

The class must define ``Config``, a dataclass of its parameters, and take it as its only
constructor argument. A family of defenses under one name instead defines ``variant_field`` (a
spec key, e.g. ``mode``), ``default_variant`` and ``variants`` (value -> class, each with its own
``Config``); the spec's value of that key picks the class.
"""

from __future__ import annotations

import importlib
import pkgutil

from splitpriv.defense import DEFENSES, build_defense
from splitpriv.options import parse_spec

register = DEFENSES.register
resolve = DEFENSES.variant


def import_all() -> None:
    """Import every module of the package so that its defenses register (the package's entry
    point, ``splitpriv.defenses``)."""
    import defenses

    for mod in pkgutil.iter_modules(defenses.__path__):
        importlib.import_module(f"defenses.{mod.name}")


__all__ = ["DEFENSES", "build_defense", "import_all", "parse_spec", "register", "resolve"]
