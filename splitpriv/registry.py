"""One registry for every kind of plug-in: name -> class, filled by the plug-in packages.

The core (``splitpriv/``) never imports its plug-ins. Each plug-in package (``defenses``,
``attacks``, ``attacks.servers``, or a user's own) registers its classes with a
:class:`Registry`'s decorator when it is imported, and is found through the installed package's
entry points (one group per kind in pyproject.toml, ``splitpriv.defenses``, ``splitpriv.attacks``,
``splitpriv.servers``: each entry a function that imports the package's modules). A registry
loads its group's entry points the first time it is asked for a name, so the CLI, the studies,
the Python API and spawned worker processes all see the same plug-ins, and a process pays only
for the kinds it uses. The pattern
is Opacus's accountant registry, with discovery through entry points instead of a fixed import
list.

A spec ``NAME[:key=value,...]`` resolves to the registered class (or, for a family under one
name, the variant its ``variant_field`` picks) and its typed ``Config``
(:func:`splitpriv.options.build_config`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from splitpriv.options import build_config, parse_spec

T = TypeVar("T", bound=type)

_loaded: set[str] = set()


def load_plugins(group: str, *, required: bool = True) -> None:
    """Import the plug-in packages that the installed entry points of ``group`` name (once per
    process and group).

    Raises:
        RuntimeError: ``required`` and no entry point of the group is installed (the project was
            not installed with pip, so no plug-in can be found), naming the fix.
    """
    if group in _loaded:
        return
    points = importlib.metadata.entry_points(group=group)
    if not points and required:
        raise RuntimeError(f"no splitpriv plug-ins are installed (entry-point group {group!r}); "
                           "install the project: pip install -e .")
    _loaded.add(group)
    try:
        for point in sorted(points, key=lambda p: p.name):
            point.load()()
    except BaseException:
        _loaded.discard(group)
        raise


#: the entry-point group of the plug-in packages' parts of the command line (a module each,
#: with ``add_commands(subparsers)``, ``catalogs() -> {name: text()}`` and
#: ``command_help(argv) -> str | None``; e.g. ``attacks/commands.py``)
CLI_GROUP = "splitpriv.cli"


def cli_extensions() -> list[Any]:
    """The plug-in packages' command-line modules (entry points of :data:`CLI_GROUP`), in name
    order; none where no package declares one."""
    points = importlib.metadata.entry_points(group=CLI_GROUP)
    return [p.load() for p in sorted(points, key=lambda p: p.name)]


class Registry(Mapping[str, T], Generic[T]):
    """Name -> plug-in class for one kind (``defense``, ``attack``, ``server behaviour``); a
    read-only mapping whose every read loads the plug-ins first.

    With ``builtin`` (a module of the core that registers the kind's built-in classes when
    imported: datasets, split models), that module is imported first and the group's entry
    points are optional (a user's package may still add its own).

    With ``families``, the kind's base class declares ``variants`` (None, or value -> class,
    each with its own ``Config``), ``variant_field`` (a spec key, e.g. ``mode``) and
    ``default_variant``: a family of classes under one name, the spec's value of that key picking
    the class.
    """

    def __init__(self, kind: str, group: str, *, families: bool = False,
                 builtin: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self.families = families
        self.builtin = builtin
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class available by ``name``; sets ``cls.name``."""

        def deco(cls: T) -> T:
            if self._classes.get(name, cls) is not cls:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return deco

    def classes(self) -> dict[str, T]:
        """Every registered class by name (the plug-ins of the kind's group loaded first)."""
        if self.builtin is not None:
            importlib.import_module(self.builtin)
        load_plugins(self.group, required=self.builtin is None)
        return dict(self._classes)

    def __getitem__(self, name: str) -> T:
        return self.classes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.classes()))

    def __len__(self) -> int:
        return len(self.classes())

    def lookup(self, name: str) -> T:
        """The class registered as ``name``.

        Raises:
            ValueError: an unknown name, listing the known ones.
        """
        classes = self.classes()
        if name not in classes:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(classes)}")
        return classes[name]

    def resolve(self, spec: str) -> tuple[T, Any]:
        """A spec's class and its typed config, checked but not instantiated.

        Raises:
            ValueError: unknown name, unknown or mistyped option, an option of another variant.
        """
        return self.resolve_options(*parse_spec(spec, self.kind))

    def resolve_options(self, name: str, options: Mapping[str, Any]) -> tuple[T, Any]:
        """:meth:`resolve` from a name and its options, as strings (a spec) or typed values (a
        config.json's typed spec; the family's ``variant_field`` among them)."""
        raw = dict(options)
        cls = self.variant(name, raw)
        return cls, build_config(cls.Config, raw, f"{self.kind} {name!r}")  # type: ignore[attr-defined]

    def build(self, spec: str) -> Any:
        """An instance from its spec (the class's only constructor argument is its Config)."""
        cls, config = self.resolve(spec)
        return cls(config)

    def variant(self, name: str, raw: dict[str, Any]) -> T:
        """The class a spec builds: the registered one, or the variant of a family its
        ``variant_field`` picks (removed from ``raw``). Options of another variant are refused."""
        cls = self.lookup(name)
        variants: dict[str, T] | None = cls.variants if self.families else None  # type: ignore[attr-defined]
        if not variants:
            return cls
        key: str = cls.variant_field  # type: ignore[attr-defined]
        value = raw.pop(key, cls.default_variant)  # type: ignore[attr-defined]
        if value not in variants:
            raise ValueError(f"{self.kind} {name!r}: {key} must be one of {sorted(variants)}, "
                             f"got {value!r}")
        chosen = variants[value]
        stray = sorted(set(raw) - _fields(chosen))
        owners = sorted(v for v, c in variants.items() if set(stray) & _fields(c))
        if stray and owners:
            raise ValueError(f"{self.kind} {name!r}: {key}={value} does not take {stray} "
                             f"({key}={'/'.join(owners)} does); it takes "
                             f"{sorted(_fields(chosen))}")
        return chosen


class SpecPlugin:
    """Base of a plug-in built from a spec ``NAME[:key=value,...]`` whose only constructor
    argument is its typed ``Config`` (datasets, split architectures): ``name`` (set by the
    registry), a one-line ``summary`` for ``splitpriv list``."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(self, config: Any) -> None:
        self.config = config


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.Config)}  # type: ignore[attr-defined]


#: every attack by name, filled by the plug-in packages (``attacks/``: ``attacks.registry``
#: registers into it; the attack base class is the package's own)
ATTACKS: Registry[type] = Registry("attack", "splitpriv.attacks")


__all__ = ["ATTACKS", "CLI_GROUP", "Registry", "SpecPlugin", "cli_extensions", "load_plugins"]
