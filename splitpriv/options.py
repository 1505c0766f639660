"""Typed options: how strings from the command line become dataclass configs.

Defenses (``--defense dp:epsilon=3,mode=paper``) and attacks (``--option max_victims=2000``) are
classes with a nested ``Config`` dataclass; both registries build it here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def parse_pairs(items: Iterable[str], where: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``=`` raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{where}: expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def convert(value: str, annotation: Any, key: str, where: str) -> Any:
    """Read ``value`` as the field's type (``int | None`` accepts ``none``; bools accept 1/0,
    true/false, yes/no)."""
    kinds = typing.get_args(annotation) or (annotation,)
    if value.strip().lower() == "none" and type(None) in kinds:
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
    raise ValueError(f"{where}: cannot read {key}={value!r} as {annotation}")


def build_config(config_cls: type, options: Mapping[str, Any] | None, where: str) -> Any:
    """Build ``config_cls`` from string (or already typed) options.

    Raises:
        ValueError: an unknown key (the known ones are listed) or a value of the wrong type; the
            dataclass's own ``__post_init__`` checks follow.
    """
    options = dict(options or {})
    hints = typing.get_type_hints(config_cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(
            f"{where}: unknown parameter(s) {sorted(unknown)}; known: {sorted(fields)}"
        )
    kwargs = {
        k: convert(v, hints[k], k, where) if isinstance(v, str) else v for k, v in options.items()
    }
    return config_cls(**kwargs)


def parse_dataclass_args(
    cls: type, argv: Sequence[str] | None = None, description: str | None = None
) -> Any:
    """Command-line flags from a dataclass of script arguments (``--field-name``), typed by its
    annotations: bools are switches, lists and tuples take several values, ``X | None`` reads X.
    """
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sequences: dict[str, type] = {}
    for f in dataclasses.fields(cls):
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif origin in (list, tuple):
            sequences[f.name] = origin
            parser.add_argument(flag, nargs="+", type=inner[0], default=default)
        else:
            kind = inner[0] if inner and type(None) in typing.get_args(hint) else hint
            parser.add_argument(flag, type=kind, default=default)
    values = vars(parser.parse_args(argv))
    for name, origin in sequences.items():
        values[name] = origin(values[name])
    return cls(**values)
