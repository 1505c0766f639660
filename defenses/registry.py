"""Name -> defense class registry, and the ``name[:key=value,...]`` spec parser."""

from __future__ import annotations

from collections.abc import Callable

from splitpriv.defense import Defense
from splitpriv.options import build_config, parse_pairs

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


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"dp:epsilon=3,mode=paper"`` -> ``("dp", {"epsilon": "3", "mode": "paper"})``."""
    name, _, rest = spec.partition(":")
    items = filter(None, (p.strip() for p in rest.split(",")))
    return name.strip(), parse_pairs(items, f"defense spec {spec!r}")


def build_defense(spec: str) -> Defense:
    """Instantiate a defense from its spec; unknown names and bad parameters raise ValueError."""
    _load_builtin()
    name, raw = parse_spec(spec)
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {sorted(DEFENSES)}")
    cls = DEFENSES[name]
    return cls(build_config(cls.Config, raw, f"defense {name!r}"))  # type: ignore[attr-defined]


def _load_builtin() -> None:
    """Import the modules that register the built-in defenses."""
    import importlib
    import pkgutil

    import defenses

    for mod in pkgutil.iter_modules(defenses.__path__):
        if mod.name not in ("registry",):
            importlib.import_module(f"defenses.{mod.name}")
