"""Name -> defense class registry; specs ``name[:key=value,...]`` are parsed by
:func:`splitpriv.options.parse_spec` (re-exported here)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from splitpriv.defense import Defense
from splitpriv.options import build_config, parse_spec

DEFENSES: dict[str, type[Defense]] = {}


def register(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: make a defense available to ``build_defense`` and ``--defense``.

    The class must define ``Config``, a dataclass of its parameters, and take it as its only
    constructor argument. A family of defenses under one name instead defines ``variant_field``
    (a spec key, e.g. ``mode``), ``default_variant`` and ``variants`` (value -> class, each with
    its own ``Config``); the spec's value of that key picks the class.
    """

    def deco(cls: type[Defense]) -> type[Defense]:
        if name in DEFENSES:
            raise ValueError(f"defense {name!r} registered twice")
        cls.name = name
        DEFENSES[name] = cls
        return cls

    return deco


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.Config)}  # type: ignore[attr-defined]


def resolve(name: str, raw: dict[str, str]) -> type[Defense]:
    """The class a spec builds: the registered one, or the variant of a family its
    ``variant_field`` picks (removed from ``raw``). Options of another variant are refused."""
    cls = DEFENSES[name]
    variants: dict[str, type[Defense]] | None = getattr(cls, "variants", None)
    if not variants:
        return cls
    key: str = cls.variant_field  # type: ignore[attr-defined]
    value = raw.pop(key, cls.default_variant)  # type: ignore[attr-defined]
    if value not in variants:
        raise ValueError(f"defense {name!r}: {key} must be one of {sorted(variants)}, "
                         f"got {value!r}")
    chosen = variants[value]
    stray = sorted(set(raw) - _fields(chosen))
    owners = sorted(v for v, c in variants.items() if set(stray) & _fields(c))
    if stray and owners:
        raise ValueError(f"defense {name!r}: {key}={value} does not take {stray} "
                         f"({key}={'/'.join(owners)} does); it takes {sorted(_fields(chosen))}")
    return chosen


def build_defense(spec: str) -> Defense:
    """Instantiate a defense from its spec; unknown names and bad parameters raise ValueError."""
    _load_builtin()
    name, raw = parse_spec(spec, "defense")
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    cls = resolve(name, raw)
    return cls(build_config(cls.Config, raw, f"defense {name!r}"))  # type: ignore[attr-defined]


def _load_builtin() -> None:
    """Import the modules that register the built-in defenses."""
    import importlib
    import pkgutil

    import defenses

    for mod in pkgutil.iter_modules(defenses.__path__):
        if mod.name not in ("registry",):
            importlib.import_module(f"defenses.{mod.name}")


__all__ = ["DEFENSES", "build_defense", "parse_spec", "register", "resolve"]
