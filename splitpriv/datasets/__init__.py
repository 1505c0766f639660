"""Datasets as plug-ins: a registry name -> class, and the typed split every run trains on.

A dataset turns a run's configuration into a :class:`DatasetSplit`: every sample's input ``x``
(N, C, *spatial) float32, its label ``y`` (N,), its group ``groups`` (N,) (the patient or
subject a sample came from: patient-level splits, patient-level claims and the linkage game use
it), the train/validation/test rows as index arrays into them, the class names and a card
(counts per class and part, provenance). ``--dataset NAME[:key=value,...]`` picks one
(:func:`splitpriv.options.parse_spec`; the options are the class's typed ``Config``).

The built-ins live in this package, one module each, and register when the registry is first
read (``builtin``): ``mitdb`` (the MIT-BIH beats of today's protocols, one or two leads),
``arrays`` (a user's NPZ or HDF5 file) and ``digits`` (scikit-learn's 8x8 digits, offline). A
user's package adds its own with ``@DATASETS.register("NAME")`` in a module that an entry point
of group ``splitpriv.datasets`` imports (as the defenses do), or by registering before the run
(the Python API).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitpriv.data.records import DataError
from splitpriv.registry import Registry, SpecPlugin

#: every dataset by name; the built-ins are ``splitpriv.datasets.builtins``' modules
DATASETS: Registry[type] = Registry("dataset", "splitpriv.datasets",
                                    builtin="splitpriv.datasets.builtins")

PARTS = ("train", "val", "test")


@dataclass
class DatasetSplit:
    """A dataset's samples and a run's split of them.

    Attributes:
        x: (N, C, *spatial) float32 inputs (MIT-BIH: (N, leads, 128) beats; digits (N, 1, 8, 8)).
        y: (N,) int64 labels, indices into ``classes``.
        groups: (N,) int64 group (patient, subject) of every sample; -1 where unknown.
        train, val, test: (n,) int64 rows of each part (a row may appear more than once: the
            ``paper`` protocol draws with replacement).
        classes: the class names, ``classes[y[i]]`` sample i's.
        card: counts per class and part and where the data came from (lands in result.json).
        rpeak: (N,) int64 position of every sample in its group's recording (MIT-BIH: the
            R-peak's sample), None where it has none.
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    classes: tuple[str, ...]
    card: dict[str, Any] = field(default_factory=dict)
    rpeak: np.ndarray | None = None

    @property
    def record(self) -> np.ndarray:
        """The groups under the name the MIT-BIH pool gives them (its records)."""
        return self.groups

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of one sample."""
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def rows(self, part: str) -> np.ndarray:
        """The rows of ``train``, ``val`` or ``test``."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return getattr(self, part)


class Dataset(SpecPlugin):
    """A dataset plug-in. Subclasses define ``Config`` (a dataclass of the spec's options),
    a one-line ``summary`` and :meth:`load`; :meth:`describe` and :meth:`check` have defaults.

    ``run`` is the run's :class:`~splitpriv.run.TrainConfig` (its ``data_seed``,
    ``resolved_val_fraction``, and for MIT-BIH its protocol, labels and directories).
    """

    def check(self, run: Any) -> None:
        """Refuse a run this dataset cannot serve, before anything is written (ValueError)."""

    def load(self, run: Any) -> DatasetSplit:
        raise NotImplementedError

    def describe(self, run: Any) -> tuple[tuple[int, ...], int]:
        """(input shape (C, *spatial), class count) of the run's samples."""
        split = self.load(run)
        return split.input_shape, split.n_classes


def build_dataset(spec: str) -> Dataset:
    """A dataset from its spec ``NAME[:key=value,...]`` (ValueError naming what is wrong)."""
    return DATASETS.build(spec)


def class_counts(y: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts, strict=True)}


def make_card(split: DatasetSplit, **provenance: Any) -> dict[str, Any]:
    """The card of a split: the classes, the input shape, the sample and group counts of the
    whole set and of each part, the test rows equal to some training row value for value
    (``test_rows_duplicating_train``), and ``provenance``."""
    from splitpriv.data.card import count_duplicate_rows

    card: dict[str, Any] = {"classes": list(split.classes), "input_shape": list(split.input_shape),
                            "pool_size": len(split.y),
                            "pool_class_counts": class_counts(split.y, split.classes)}
    for part in PARTS:
        rows = split.rows(part)
        card[f"n_{part}"] = len(rows)
        card[f"class_counts_{part}"] = class_counts(split.y[rows], split.classes)
        card[f"groups_{part}"] = len(np.unique(split.groups[rows]))
    card["test_rows_duplicating_train"] = count_duplicate_rows(split.x[split.train],
                                                               split.x[split.test])
    return card | provenance


def run_dataset(run: Any) -> Dataset:
    """The dataset a run's configuration names: ``run.dataset``'s, or with ``run.hdf5`` (the
    paper's HDF5 pair ``TRAIN,TEST``, an alias) ``arrays:layout=paper,path=TRAIN,test_path=TEST``.

    Raises:
        ValueError: a bad spec; ``hdf5`` beside a dataset other than the default ``mitdb``.
    """
    from splitpriv.data.hdf5 import parse_hdf5_pair

    dataset = build_dataset(run.dataset)
    if run.hdf5 is None:
        return dataset
    if dataset.name != "mitdb" or dataset.config != type(dataset.config)():
        raise ValueError(f"--hdf5 is the paper's one-lead HDF5 pair (dataset arrays, "
                         f"layout=paper); it takes the default --dataset mitdb, not "
                         f"{run.dataset!r}")
    train, test = parse_hdf5_pair(run.hdf5)
    cls, config = DATASETS.resolve_options("arrays", {"layout": "paper", "path": str(train),
                                                      "test_path": str(test)})
    return cls(config)


def stratified_parts(y: np.ndarray, *, test_fraction: float, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified train/val/test rows of ``y`` (scikit-learn's ``train_test_split``):
    ``test_fraction`` of the rows test, ``val_fraction`` of the rest validate."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    rest, test = train_test_split(rows, test_size=test_fraction, stratify=y, random_state=seed)
    if val_fraction > 0:
        train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest],
                                      random_state=seed + 1)
    else:
        train, val = rest, rows[:0]
    return np.sort(train), np.sort(val), np.sort(test)


def group_holdout_parts(y: np.ndarray, groups: np.ndarray, *, val_fraction: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MIT-BIH's ``records-holdout`` protocol over any groups (:mod:`splitpriv.data.protocols`,
    the same code): a seeded random half of the groups train (their rows shuffled, so that a
    training subset spans every training group), the others test; validation groups carved whole
    from the training ones (``RandomState(seed + 1)``, every class kept in training). Groups
    held out of training whole: what patient-level membership needs.

    Raises:
        DataError: fewer than two groups, or validation would take every training group.
    """
    from types import SimpleNamespace

    from splitpriv.data.protocols import _carve_records, _split_records_holdout

    pool: Any = SimpleNamespace(record=groups, y=y, classes=range(int(y.max()) + 1))
    train, test = _split_records_holdout(pool, seed)
    val = train[:0]
    if val_fraction > 0:
        train, val = _carve_records(pool, train, val_fraction, np.random.RandomState(seed + 1))
    return train, val, test


def refuse_mitdb_options(name: str, run: Any) -> None:
    """A dataset other than MIT-BIH takes no protocol, label scheme or ``--hdf5`` (which is
    ``arrays``' paper layout, :func:`run_dataset`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(type(run))}
    for key in ("protocol", "labels", "hdf5"):
        if getattr(run, key) != defaults[key]:
            raise ValueError(f"dataset {name!r}: --{key} applies to the mitdb dataset only, "
                             f"got {getattr(run, key)!r}")


__all__ = ["DATASETS", "PARTS", "DataError", "Dataset", "DatasetSplit", "build_dataset",
           "class_counts", "group_holdout_parts", "make_card", "refuse_mitdb_options",
           "run_dataset", "stratified_parts"]
