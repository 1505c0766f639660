"""Name -> attack class registry, and typed parsing of ``key=value`` options into a Config."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from attacks.base import Attack
from splitpriv.options import build_config

ATTACKS: dict[str, type[Attack]] = {}

#: modules of the package that hold no attack
_NOT_ATTACKS = {"base", "registry", "measures", "metrics", "inversion", "labels", "runs", "cli",
                "releases",
                "leakage", "servers",
                "reference"}


def register(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: make an attack available by ``name`` (to ``build_attack`` and the CLI)."""

    def deco(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS and ATTACKS[name] is not cls:
            raise ValueError(f"attack {name!r} registered twice")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


def load_builtin() -> dict[str, type[Attack]]:
    """Import every module of the package so that its attacks register; return the registry."""
    import attacks

    for mod in pkgutil.iter_modules(attacks.__path__):
        if mod.name not in _NOT_ATTACKS:
            importlib.import_module(f"attacks.{mod.name}")
    return ATTACKS


def build_attack(name: str, options: Mapping[str, Any] | None = None) -> Attack:
    """Instantiate attack ``name`` with ``options`` (strings are converted to the field types).

    Raises:
        ValueError: unknown attack, unknown option or a value of the wrong type.
    """
    load_builtin()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    return cls(build_config(cls.Config, options, f"attack {name!r}"))
