"""Typed options: how strings from the command line become dataclass configs.

Defenses (``--defense dp:epsilon=3,mode=paper``) and attacks (``--option max_victims=2000``) are
classes with a nested ``Config`` dataclass; both registries build it here.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


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


def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass and its bases (CleanRL-style field
    docstrings), for ``--help``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def parse_dataclass_args(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    *,
    quick: Mapping[str, Any] | None = None,
) -> T:
    """Command-line flags from a dataclass of script arguments: one ``--field-name`` per field,
    typed by its annotation (bools are switches, lists and tuples take several values, ``X | None``
    reads X or ``none``), help from the field's docstring.

    When the parsed ``quick`` field is true, the ``quick`` overrides replace the defaults of the
    fields not given on the command line.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    sequences: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kw: dict[str, Any] = {
            "dest": f.name, "default": argparse.SUPPRESS,
            "help": f"{docs.get(f.name, '')} (default: {default})",
        }
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        origin = typing.get_origin(hint)
        if origin in (list, tuple):
            sequences[f.name] = origin
            item = typing.get_args(hint)[0]
            kw["nargs"] = "+"
        else:
            item = hint
        parser.add_argument(
            flag, type=lambda s, t=item, k=f.name: convert(s, t, k, "argument"), **kw
        )
    given = vars(parser.parse_args(argv))
    for name, origin in sequences.items():
        if name in given:
            given[name] = origin(given[name])
    args = cls(**given)
    if quick and getattr(args, "quick", False):
        overrides = {k: v for k, v in quick.items() if k not in given}
        args = dataclasses.replace(args, **overrides)  # type: ignore[type-var]
    return args
