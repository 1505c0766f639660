"""Name -> defense class registry, and the ``name[:key=value,...]`` spec parser."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from splitpriv.defense import Defense

DEFENSES: dict[str, type[Defense]] = {}


def register(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: make a defense available to ``build_defense`` and ``--defense``.

    The class must define ``Config``, a dataclass of its parameters, and take it as its only
    constructor argument.
    """

    def deco(cls: type[Defense]) -> type[Defense]:
        if name in DEFENSES:
            raise ValueError(f"defense {name!r} registered twice")
        cls.name = name
        DEFENSES[name] = cls
        return cls

    return deco


def _convert(value: str, annotation: Any, key: str, name: str) -> Any:
    kinds = typing.get_args(annotation) or (annotation,)
    if value.lower() == "none" and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is type(None):
            continue
        try:
            if kind is bool:
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError(value)
            return kind(value)
        except (TypeError, ValueError):
            continue
    raise ValueError(f"defense {name!r}: cannot read {key}={value!r} as {annotation}")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"dp:epsilon=3,mode=paper"`` -> ``("dp", {"epsilon": "3", "mode": "paper"})``."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"defense spec {spec!r}: expected key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return name.strip(), params


def build_defense(spec: str) -> Defense:
    """Instantiate a defense from its spec; unknown names and bad parameters raise ValueError."""
    _load_builtin()
    name, raw = parse_spec(spec)
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    cls = DEFENSES[name]
    config_cls = cls.Config  # type: ignore[attr-defined]
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"defense {name!r}: unknown parameter(s) {sorted(unknown)}; "
                         f"known: {sorted(fields)}")
    kwargs = {k: _convert(v, hints[k], k, name) for k, v in raw.items()}
    return cls(config_cls(**kwargs))  # type: ignore[call-arg]


def _load_builtin() -> None:
    """Import the modules that register the built-in defenses."""
    import importlib
    import pkgutil

    import defenses

    for mod in pkgutil.iter_modules(defenses.__path__):
        if mod.name not in ("registry",):
            importlib.import_module(f"defenses.{mod.name}")
