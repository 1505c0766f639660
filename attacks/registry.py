"""Name -> attack class registry, and typed parsing of ``key=value`` options into a Config."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from attacks.base import Attack
from splitpriv import registry
from splitpriv.options import build_config
from splitpriv.registry import Registry

#: every attack by name (the core's registry; the plug-ins loaded on first read)
ATTACKS: Registry[type[Attack]] = registry.ATTACKS
register = ATTACKS.register


def import_all() -> None:
    """Import every module of the package so that its attacks register: the package's entry
    point (``splitpriv.attacks``)."""
    import attacks

    for mod in pkgutil.iter_modules(attacks.__path__):
        importlib.import_module(f"attacks.{mod.name}")


def load_builtin() -> Registry[type[Attack]]:
    """The attack registry, every plug-in loaded."""
    ATTACKS.classes()
    return ATTACKS


def build_attack(name: str, options: Mapping[str, Any] | None = None) -> Attack:
    """Instantiate attack ``name`` with ``options`` (strings are converted to the field types).

    Raises:
        ValueError: unknown attack, unknown option or a value of the wrong type.
    """
    cls = ATTACKS.lookup(name)
    return cls(build_config(cls.Config, options, f"attack {name!r}"))
