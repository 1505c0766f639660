"""The Python API, for notebooks and scripts: train a run, attack it, read runs as a table.

::

    import splitpriv

    run = splitpriv.train(dataset="digits", model="cnn2d", epochs=3, out="runs/digits")
    run.result["test_accuracy"]
    splitpriv.attack(run, "strongest", aux="train:0.2")["headline"]
    splitpriv.load_runs(["runs"])          # one row per run (pandas)

A user's own data and network without files or modules of their own:
:func:`register_arrays` (arrays in memory as a dataset) and :func:`register_model` (a function
``(input_shape, n_classes) -> (client, server[, head])`` as a split architecture) name them for
``TrainConfig.dataset`` / ``model``. These live in this process only: in-process training and
attacks see them, a two-process run or a study's worker processes do not (there, an NPZ file,
``arrays:path=FILE``, and an importable ``MODULE:FUNCTION``).

:func:`attack` runs the attacks plug-in package (found, as the CLI finds it, through the
entry points of group ``splitpriv.cli``): the core never imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.architectures import MODELS, Architecture
from splitpriv.datasets import DATASETS, Dataset, DatasetSplit, make_card, stratified_parts
from splitpriv.io import read_json
from splitpriv.registry import cli_extensions
from splitpriv.run import TrainConfig, run_training


@dataclass
class Run:
    """A finished run directory: its path, config and result.json."""

    path: Path
    config: TrainConfig
    result: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        return cls(path, TrainConfig.load(path / "config.json"), read_json(path / "result.json"))


def train(config: TrainConfig | None = None, *, out: str | Path, force: bool = False,
          progress: bool = False, **fields: Any) -> Run:
    """Train one run into ``out`` (a finished run there is read, not retrained, unless
    ``force``): ``config``, with ``fields`` (TrainConfig's) replacing its values, or the
    fields alone.

    Raises:
        ValueError: a bad field (named), or ``out`` written for another run.
    """
    config = dataclasses.replace(config or TrainConfig(), **fields) if fields else (
        config or TrainConfig())
    run_training(config, out, force=force, progress=progress)
    return Run.open(out)


def attack(run: Run | str | Path, name: str, *, aux: str | None = None,
           **options: Any) -> dict[str, Any]:
    """Attack ``name`` (``strongest``, ``label-strongest``, ``dcor``, ...) on a run; writes
    ``RUN/attacks/NAME.json`` (and ``.npz``) as ``splitpriv attack`` does and returns its
    summary ``{"attack", "json", "npz", "seconds", "headline", "notes"}``; ``options`` are the
    attack's (``max_victims=300``).

    Raises:
        RuntimeError: the attacks plug-in package is not installed.
    """
    path = run.path if isinstance(run, Run) else Path(run)
    for module in cli_extensions():
        if hasattr(module, "attack_run_dir"):
            return module.attack_run_dir(name, str(path), aux,
                                         {k: str(v) for k, v in options.items()})
    raise RuntimeError("no attacks plug-in package is installed (entry-point group "
                       "splitpriv.cli); install the project: pip install -e .")


def load_runs(paths: Any) -> Any:
    """Runs (directories, or folders holding them: a study's output) as a pandas DataFrame,
    one row per run (:func:`splitpriv.results.load_runs`)."""
    from splitpriv.results import load_runs as load

    return load(paths)


def register_arrays(name: str, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None,
                    train: np.ndarray | None = None, val: np.ndarray | None = None,
                    test: np.ndarray | None = None, classes: list[str] | None = None) -> str:
    """Arrays in memory as dataset ``name`` (this process only), checked as ``arrays`` checks a
    file (:func:`splitpriv.datasets.builtins.arrays.check_arrays`); without ``train``/``test``
    a seeded stratified split (30 % test, the run's validation fraction of the rest). Returns
    ``name``.
    """
    from splitpriv.datasets.builtins.arrays import check_arrays, check_parts

    given = {"x": np.asarray(x), "y": np.asarray(y)} | {
        k: np.asarray(v) for k, v in (("groups", groups), ("train", train), ("val", val),
                                      ("test", test), ("classes", classes)) if v is not None}
    where = Path(f"<arrays {name!r}>")
    xs, ys, gs, names = check_arrays(given, where)
    parts = check_parts(given, where, len(xs))

    class InMemory(Dataset):
        summary = f"arrays registered in this process ({len(xs)} samples)"

        @dataclass
        class Config:
            pass

        def load(self, run: Any) -> DatasetSplit:
            tr, va, te = parts if parts is not None else stratified_parts(
                ys, test_fraction=0.3, val_fraction=run.resolved_val_fraction,
                seed=run.data_seed)
            split = DatasetSplit(x=xs, y=ys, groups=gs, train=tr, val=va, test=te, classes=names)
            split.card = make_card(split, dataset=name, source="arrays in memory")
            return split

    _replace(DATASETS, name, InMemory)
    return name


def register_model(name: str, function: Callable[[tuple[int, ...], int], tuple]) -> str:
    """``function(input_shape, n_classes) -> (client, server)`` or ``(client, server, head)``
    torch modules as split architecture ``name`` (this process only). Returns ``name``."""
    from splitpriv.architectures import UserFunction

    class InProcess(Architecture):
        summary = f"{getattr(function, '__name__', 'function')}, registered in this process"

        @dataclass
        class Config:
            pass

        def build(self, input_shape, n_classes, run):
            user = UserFunction.__new__(UserFunction)
            user.function, user.name = function, name  # type: ignore[misc]
            return user.build(input_shape, n_classes, run)

    _replace(MODELS, name, InProcess)
    return name


def _replace(registry: Any, name: str, cls: type) -> None:
    """Register ``cls`` as ``name``, replacing what this API registered there before (a
    notebook cell run twice); a built-in name is refused."""
    registry.classes()  # the built-ins and plug-ins first
    old = registry._classes.get(name)
    if old is not None and not getattr(old, "api_registered", False):
        raise ValueError(f"{registry.kind} {name!r} is built in or a plug-in's; choose another "
                         "name")
    registry._classes.pop(name, None)
    cls.api_registered = True  # type: ignore[attr-defined]
    registry.register(name)(cls)


__all__ = ["Run", "attack", "load_runs", "register_arrays", "register_model", "train"]
