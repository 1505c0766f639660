"""Typed options: how strings from the command line become dataclass configs.

Defenses (``--defense dp:epsilon=3,mode=paper``) and attacks (``--option max_victims=2000``) are
classes with a nested ``Config`` dataclass; both registries build it here. Command lines come
from dataclasses too: :func:`add_dataclass_arguments` makes one flag per field (a field that is
itself a dataclass contributes its fields, flattened), :func:`dataclass_from_args` builds the
dataclass back from what was given, and :func:`parse_dataclass_args` does both for a script.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import re
import textwrap
import typing
from collections.abc import Iterable, Mapping, Sequence
from types import UnionType
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


def parse_pairs(items: Iterable[str], where: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``=``, or a key given
    twice (which value was meant?), raises ValueError."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"{where}: expected key=value, got {item!r}")
        if key.strip() in out:
            raise ValueError(f"{where}: {key.strip()} given twice ({out[key.strip()]!r} and "
                             f"{value.strip()!r})")
        out[key.strip()] = value.strip()
    return out


def format_value(value: Any) -> str:
    """A typed value as :func:`convert` reads it back: ``3.0`` -> ``3``, ``0.5`` -> ``0.5`` (the
    shortest form that reads back to the same float), ``None`` -> ``none``, a bool ``true`` or
    ``false``."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def format_spec(name: str, options: Mapping[str, Any] | None = None) -> str:
    """A ``name[:key=value,...]`` spec from typed options, e.g. ``format_spec("dp", {"mode":
    "paper", "epsilon": 3.0})`` -> ``"dp:mode=paper,epsilon=3"`` (values by :func:`format_value`).
    """
    for key, value in (options or {}).items():
        if any(c in format_value(value) + key for c in ",=:"):
            raise ValueError(f"spec {name!r}: {key}={value!r} cannot be written in a spec")
    pairs = ",".join(f"{k}={format_value(v)}" for k, v in (options or {}).items())
    return f"{name}:{pairs}" if pairs else name


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


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
            out = kind(value)
        except (TypeError, ValueError):
            continue
        if isinstance(out, float) and not math.isfinite(out):
            raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
        if isinstance(out, int) and not -(2**63) <= out < 2**63:  # what torch and numpy take
            raise ValueError(f"{where}: {key} must fit in 64 bits, got {value!r}")
        return out
    raise ValueError(f"{where}: cannot read {key}={value!r} as {_type_name(annotation)}")


def fraction_or_count(text: str, total: int, where: str) -> int:
    """A size given as ``F`` (0 < F < 1: that fraction of ``total``, rounded) or ``N`` (a whole
    count), e.g. the ``own:F`` / ``own:N`` of an auxiliary set.

    Raises:
        ValueError: not a finite number, or neither a fraction in (0, 1) nor a whole number.
    """
    value = convert(text, float, "size", where)
    if 0 < value < 1:
        return int(round(value * total))
    if value != int(value):
        raise ValueError(f"{where}: expected a fraction in (0, 1) or a whole count, got {text!r}")
    return int(value)


def check_field_types(cls: type, doc: Mapping[str, Any], where: str) -> None:
    """Refuse values of a JSON document (a config.json) whose type is not their dataclass
    field's: ``"record_epochs": 5`` where a string is meant, ``"epochs": "2"``, ``"defenses":
    "dp"``... (an int passes for a float; None only where the field takes it).

    Raises:
        ValueError: ``WHERE: FIELD must be TYPE, got VALUE``.
    """
    hints = typing.get_type_hints(cls)

    def fits(value: Any, hint: Any) -> bool:
        union = typing.get_origin(hint) in (typing.Union, UnionType)
        for kind in typing.get_args(hint) if union else (hint,):
            origin = typing.get_origin(kind) or kind
            if kind is type(None) and value is None:
                return True
            if origin in (list, tuple) and isinstance(value, list):
                item = (typing.get_args(kind) or (Any,))[0]
                return item is Any or all(fits(v, item) for v in value)
            if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
                return True
            if kind is int and isinstance(value, int) and not isinstance(value, bool):
                return True
            if kind in (str, bool) and type(value) is kind:
                return True
        return False

    for name, value in doc.items():
        if name in hints and not fits(value, hints[name]):
            raise ValueError(f"{where}: {name} must be {_type_name(hints[name])}, got "
                             f"{value!r}")


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


_ENTRY = re.compile(r"^(\s*)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*):\s+(.*)$")


def attribute_docs(cls: type) -> dict[str, str]:
    """The Google-style ``Attributes:`` block of a class's own docstring, one entry per name
    (``a, b: text`` documents both), continuation lines joined."""
    lines = (cls.__dict__.get("__doc__") or "").expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return {}
    docs: dict[str, str] = {}
    indent, names = None, []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        match = _ENTRY.match(line)
        if match and (indent is None or depth == indent):
            indent = depth
            names = [n.strip() for n in match.group(2).split(",")]
            for n in names:
                docs[n] = match.group(3).strip()
        elif indent is not None and depth > indent:
            for n in names:
                docs[n] += " " + line.strip()
        else:
            break
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation, for ``--help``: the string literal under the field
    (CleanRL-style field docstrings), else its entry in the class docstring's ``Attributes:``
    block; of the dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        docs.update(attribute_docs(klass))
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error, ``PROG: error: MESSAGE``, instead of the usage dump (its
    subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


@dataclasses.dataclass
class _Leaf:
    """One flag of a (possibly nested) dataclass: the field, its type and where it sits."""

    path: tuple[str, ...]  # names from the outer dataclass down to the field's owner
    field: dataclasses.Field
    hint: Any
    doc: str

    @property
    def flag(self) -> str:
        return "--" + self.field.name.replace("_", "-")

    def default(self) -> Any:
        f = self.field
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return f.default


def _leaves(cls: type, path: tuple[str, ...] = ()) -> list[_Leaf]:
    """The flag-bearing fields of ``cls``, a dataclass-typed field replaced by its own fields."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    out: list[_Leaf] = []
    for f in dataclasses.fields(cls):
        if not f.init:  # internal state, not an option
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out += _leaves(hint, (*path, f.name))
        else:
            out.append(_Leaf(path, f, hint, docs.get(f.name, "")))
    names = [leaf.field.name for leaf in out]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{cls.__name__}: nested dataclass fields repeat the names {clash}")
    return out


def first_paragraph(cls: type, width: int = 96) -> str:
    """A class's docstring's first paragraph on indented lines (``splitpriv list``)."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return textwrap.fill(" ".join(doc.split()), width, initial_indent="  ",
                         subsequent_indent="  ")


def describe_fields(cls: type, width: int = 100, only: Iterable[str] | None = None) -> str:
    """The parameters of a Config dataclass as text, one per line: name, type, default and its
    documentation (wrapped under it), read from the class itself (``splitpriv list``,
    ``splitpriv attack NAME --help``); ``only``: these fields."""
    lines = []
    for leaf in _leaves(cls):
        if only is not None and leaf.field.name not in only:
            continue
        head = (f"  {leaf.field.name} ({_type_name(leaf.hint).replace('typing.', '')}, "
                f"default {format_value(leaf.default())})")
        lines.append(head)
        lines += textwrap.wrap(leaf.doc, width, initial_indent=" " * 6,
                               subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines) if lines else "  (no parameters)"


def _reader(leaf: _Leaf, item: Any):
    def read(text: str) -> Any:
        try:
            return convert(text, item, leaf.field.name, "value")
        except ValueError as e:
            why = next((w for k, w in (("finite", "is not a finite number"),
                                       ("64 bits", "does not fit in 64 bits")) if k in str(e)),
                       f"cannot be read as {_type_name(item)}")
            raise argparse.ArgumentTypeError(f"{text!r} {why}") from None

    return read


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One ``--field-name`` per field of ``cls`` (fields of a nested dataclass flattened under
    their own names), typed by its annotation: bools are ``--x/--no-x`` switches, lists and tuples
    take several values, ``X | None`` reads X or ``none``; help from the field's documentation.
    Only what is given lands in the namespace (:func:`dataclass_from_args` fills the defaults).

    Args:
        only: restrict to these field names.
        flags: per field name, argparse keywords that replace the derived ones (``choices``,
            ``metavar``, ``help``; ``flag`` renames the flag; ``action="append"`` makes a list
            field a repeatable flag taking one value each time).
    """
    keep = set(only) if only is not None else None
    for leaf in _leaves(cls):
        if keep is not None and leaf.field.name not in keep:
            continue
        extra = dict((flags or {}).get(leaf.field.name, {}))
        flag = extra.pop("flag", leaf.flag)
        kw: dict[str, Any] = {
            "dest": leaf.field.name, "default": argparse.SUPPRESS,
            "help": f"{leaf.doc} (default: {leaf.default()})".lstrip(),
        }
        if leaf.hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            item = leaf.hint
            if typing.get_origin(leaf.hint) in (list, tuple):
                item = typing.get_args(leaf.hint)[0]
                if extra.get("action") != "append":
                    kw["nargs"] = "+"
            kw["type"] = _reader(leaf, item)
        parser.add_argument(flag, **(kw | extra))


def dataclass_from_args(
    cls: type[T], given: argparse.Namespace | Mapping[str, Any], *,
    quick: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (and its nested dataclasses) from the flags given (a namespace of
    :func:`add_dataclass_arguments`; other entries are ignored), the fields' defaults for the rest.

    When the parsed ``quick`` field is true, the ``quick`` overrides (flat field names, nested
    ones included) replace the defaults of the fields not given.

    Raises:
        ValueError: the dataclass refused a value (``__post_init__``); the message names the flag
            when one given value alone is refused.
    """
    values = dict(vars(given) if isinstance(given, argparse.Namespace) else given)
    leaves = {leaf.field.name: leaf for leaf in _leaves(cls)}
    chosen = {k: v for k, v in values.items() if k in leaves}
    is_quick = chosen["quick"] if "quick" in chosen else (
        "quick" in leaves and leaves["quick"].default())
    if quick and is_quick:
        chosen = {**{k: v for k, v in quick.items() if k not in chosen}, **chosen}
    for name, value in chosen.items():
        if typing.get_origin(leaves[name].hint) is tuple and isinstance(value, list):
            chosen[name] = tuple(value)
    try:
        return _build(cls, (), chosen, leaves)
    except ValueError as exc:
        culprit = next((k for k in chosen if _refused(cls, k, chosen[k], leaves)), None)
        if culprit is None:
            raise
        raise ValueError(f"argument {leaves[culprit].flag}: {exc}") from None


def _build(cls: type[T], path: tuple[str, ...], values: Mapping[str, Any],
           leaves: Mapping[str, _Leaf]) -> T:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, (*path, f.name), values, leaves)
        elif f.name in values and leaves[f.name].path == path:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def _refused(cls: type, name: str, value: Any, leaves: Mapping[str, _Leaf]) -> bool:
    try:
        _build(cls, (), {name: value}, leaves)
    except ValueError:
        return True
    return False


def parse_dataclass_args(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str | None = None,
    *,
    quick: Mapping[str, Any] | None = None,
) -> T:
    """A script's arguments: flags from the dataclass ``cls`` (:func:`add_dataclass_arguments`),
    parsed and built back (:func:`dataclass_from_args`; a refused value is a one-line error
    naming its flag).

    When the parsed ``quick`` field is true, the ``quick`` overrides replace the defaults of the
    fields not given on the command line.
    """
    parser = ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_arguments(parser, cls)
    given = parser.parse_args(argv)
    try:
        return dataclass_from_args(cls, given, quick=quick)
    except ValueError as exc:
        parser.error(str(exc))


def parse_spec(spec: str, what: str = "defense") -> tuple[str, dict[str, str]]:
    """A plug-in spec ``NAME[:key=value,...]``, e.g. ``"dp:epsilon=3,mode=paper"`` ->
    ``("dp", {"epsilon": "3", "mode": "paper"})``; ``what`` names the plug-in kind in errors."""
    name, _, rest = spec.partition(":")
    items = filter(None, (p.strip() for p in rest.split(",")))
    return name.strip(), parse_pairs(items, f"{what} spec {spec!r}")
