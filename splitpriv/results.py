"""Saved runs as one table: :func:`load_runs` reads run directories (or a study's output folder)
into a pandas DataFrame, one row per run, without training or attacking anything.

A row holds, as flat named columns:

* ``run`` (the directory's name) and ``run_dir``;
* every :class:`~splitpriv.run.TrainConfig` field of its config.json (``defenses`` joined with
  ``+``, ``none`` without one);
* the accuracies of result.json (``test_accuracy`` at the validation-selected epoch,
  ``test_macro_f1``, ``test_balanced_accuracy``, ``best_test_accuracy``, ``final_test_accuracy``,
  ``best_epoch``) and the training ``seconds``;
* the privacy claims: ``accounted_epsilon`` and ``delta`` of the last formal claim (NaN
  without one), ``claims`` (every defense's name with its epsilon, ``formal`` or ``no
  guarantee``);
* every attack of DIR/attacks/NAME.json as ``NAME.KEY`` columns of its headline (the numbers
  ``splitpriv attack`` prints: ``strongest.reid_across_k10_advantage``, ``dcor.dcor_max``...); an
  interval ``[value, low, high]`` becomes ``NAME.KEY``, ``NAME.KEY_ci_low``, ``NAME.KEY_ci_high``
  , a quartile pair (``..._iqr``) ``NAME.KEY_q1``, ``NAME.KEY_q3`` and another pair
  ``NAME.KEY_low``, ``NAME.KEY_high``; ``NAME.seconds`` is the attack's time.

    >>> from splitpriv.results import load_runs
    >>> df = load_runs(["studies/out/dp_tradeoff"])           # every run of the study
    >>> df[["run", "test_accuracy", "strongest.reid_across_k10_advantage"]]

docs/api.md has a worked example.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from splitpriv.defense import DefenseSpec, PrivacyClaim
from splitpriv.io import read_json
from splitpriv.registry import ATTACKS

#: result.json's numbers every row carries
RESULT_COLUMNS = ("test_accuracy", "test_macro_f1", "test_balanced_accuracy",
                  "best_test_accuracy", "final_test_accuracy", "best_epoch", "seconds")
#: how a headline list's entries are named: [value, low, high], a quartile pair, an interval
LIST_SUFFIXES = {3: ("", "_ci_low", "_ci_high"), "iqr": ("_q1", "_q3"), 2: ("_low", "_high")}


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories ``paths`` name: each a run directory (it holds config.json and
    result.json) or a folder holding some (a study's output folder: its runs/*), in order.

    Raises:
        FileNotFoundError: a path that does not exist or holds no finished run.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if (p / "result.json").is_file():
            out.append(p)
            continue
        found = sorted(r.parent for r in p.glob("**/result.json") if (r.parent / "config.json")
                       .is_file())
        if not found:
            raise FileNotFoundError(f"{p}: holds no finished run (no DIR/result.json beside a "
                                    "config.json)")
        out += found
    return list(dict.fromkeys(out))


def _flat_headline(name: str, headline: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in headline.items():
        if isinstance(value, list) and len(value) in LIST_SUFFIXES:
            kind = "iqr" if key.endswith("iqr") and len(value) == 2 else len(value)
            for suffix, v in zip(LIST_SUFFIXES[kind], value, strict=True):
                out[f"{name}.{key}{suffix}"] = _number(v)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{name}.{key}"] = _number(value)
    return out


def _number(v: Any) -> Any:
    return math.nan if v is None else v


def headline(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An attack JSON's headline: the one it saved, else (files written before it was saved)
    its attack class's ``headline`` of the summary, where the attack is installed."""
    if doc.get("headline"):
        return dict(doc["headline"])
    try:  # older files: the plug-in computes it (found through the registry)
        cls: Any = ATTACKS.lookup(doc["attack"])
        return cls(cls.Config()).headline(doc["summary"])
    except (ImportError, ValueError, KeyError, TypeError):
        return {}


def claim_columns(claims: list[dict[str, Any]]) -> dict[str, Any]:
    """``accounted_epsilon`` and ``delta`` of the last formal claim, and every claim in words."""
    typed = [PrivacyClaim.from_dict(c) for c in claims]
    formal = [c for c in typed if c.formal]
    words = [f"{c.name} (epsilon {c.epsilon:g}, formal)" if c.formal and c.epsilon is not None
             else f"{c.name} (no guarantee)" for c in typed]
    last = formal[-1] if formal else None
    return {"accounted_epsilon": math.nan if last is None or last.epsilon is None
            else float(last.epsilon),
            "delta": math.nan if last is None or last.delta is None else float(last.delta),
            "claims": "; ".join(words) or "none"}


def run_record(path: str | Path) -> dict[str, Any]:
    """One run directory as one flat row (see the module docstring).

    Raises:
        ValueError: an unreadable config.json, result.json or attack JSON (named).
    """
    path = Path(path)
    config = read_json(path / "config.json")
    result = read_json(path / "result.json")
    row: dict[str, Any] = {"run": path.name, "run_dir": str(path)}
    for key, value in config.items():
        if key == "defenses":  # text specs (older runs) or typed objects
            value = "+".join(str(DefenseSpec.parse(v, f"{path / 'config.json'}: defenses"))
                             for v in value) or "none"
        row[key] = _number(value)
    row |= {k: _number(result.get(k)) for k in RESULT_COLUMNS}
    row |= claim_columns(result.get("defenses", []))
    for file in sorted((path / "attacks").glob("*.json")):
        try:
            doc = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: unreadable attack result ({exc})") from None
        if not isinstance(doc, dict) or "attack" not in doc or "summary" not in doc:
            continue  # not an attack result (e.g. a cache beside them)
        name = file.stem
        row |= _flat_headline(name, headline(doc))
        row[f"{name}.seconds"] = _number(doc.get("seconds"))
    return row


def load_runs(paths: str | Path | Iterable[str | Path]):
    """The runs under ``paths`` (run directories or folders holding them, :func:`find_runs`) as
    a pandas DataFrame, one row per run, columns as the module docstring lists.

    Raises:
        FileNotFoundError: a path holds no finished run.
        ValueError: an unreadable file (named).
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    return pd.DataFrame([run_record(p) for p in find_runs(paths)])
