"""``arrays:path=FILE``: a user's own samples from an NPZ or HDF5 file.

Keys (the same in both formats): ``x`` (N, C, *spatial) numbers, ``y`` (N,) integer labels
0..K-1, and optionally ``groups`` (N,) integers (the patient or subject of each sample; absent:
every sample its own group), ``classes`` (K names; absent: K = max(y) + 1, named "0".."K-1")
and the split as index arrays ``train``, ``test`` and optionally ``val`` (absent: a seeded
stratified split, ``test_fraction`` of the samples test and the run's validation fraction of the
rest validate). Labels may also be stored as (N, 1) or as whole floats (as Keras writes them).
Every malformed input is refused with one line naming the file and the key.

``layout=paper`` reads the paper's HDF5 pair (Abuadbba et al. 2020), which ``--hdf5 TRAIN,TEST``
is an alias of (:func:`splitpriv.datasets.run_dataset`): ``path`` holds ``x_train`` (N, 1, 128)
or (N, 128) beats and ``y_train`` labels N=0, L=1, R=2, A=3, V=4, ``test_path`` ``x_test`` and
``y_test``; the beats' records are unknown (groups -1); validation rows only with the run's
``val_fraction``, ``round(val_fraction * n_c)`` seeded training rows of each class c
(``RandomState(data_seed + 1)``, as the ``paper`` protocol carves them); the card names both
files and their SHA-256 (``hdf5``), protocol ``hdf5``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.data.beats import PrepConfig
from splitpriv.data.protocols import carve_by_class
from splitpriv.data.records import DataError, sha256_file
from splitpriv.datasets import (
    DATASETS,
    Dataset,
    DatasetSplit,
    make_card,
    refuse_mitdb_options,
    stratified_parts,
)
from splitpriv.models import BEAT_LENGTH

KEYS = ("x", "y", "groups", "classes", "train", "val", "test")
LAYOUTS = ("own", "paper")
#: the paper's beats (1 lead of 128 samples) and classes
PAPER_INPUT, PAPER_CLASSES = (1, BEAT_LENGTH), tuple(PrepConfig().classes)


def read_arrays(path: Path, keys: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The file's arrays (NPZ by the ``.npz`` suffix, else HDF5) by role: ``keys`` maps each
    role to the file's key (default: :data:`KEYS`, each its own).

    Raises:
        DataError: the file is missing or unreadable, or lacks the key of ``x`` or ``y``.
    """
    keys = dict(keys or zip(KEYS, KEYS, strict=True))
    if not path.is_file():
        raise DataError(f"dataset arrays: {path} is not a file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                held = list(f.files)
                out = {r: np.asarray(f[k]) for r, k in keys.items() if k in held}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                held = list(f.keys())
                out = {r: np.asarray(f[k][()]) for r, k in keys.items() if k in held}
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset arrays: {path} could not be read as "
                        f"{'NPZ' if path.suffix == '.npz' else 'HDF5'}: {exc}") from None
    for role in ("x", "y"):
        if role not in out:
            raise DataError(f"dataset arrays: {path} has no key {keys[role]!r} (keys: "
                            f"{sorted(held)})")
    return out


def _integers(a: np.ndarray, path: Path, key: str, n: int | None) -> np.ndarray:
    """``a`` as (n,) int64, refused unless 1-D integers (of length n where given)."""
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise DataError(f"dataset arrays: {path}: key {key!r} must be a 1-D integer array, got "
                        f"shape {a.shape} dtype {a.dtype}")
    if n is not None and len(a) != n:
        raise DataError(f"dataset arrays: {path}: key {key!r} has {len(a)} entries, 'x' has {n} "
                        "samples")
    return a.astype(np.int64)


def _labels(y: np.ndarray, path: Path, key: str, n: int) -> np.ndarray:
    """Labels (n,) from (n,) or (n, 1) integers or whole floats, else :func:`_integers`' one
    line."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all()
            and np.array_equal(y, np.round(y))):
        y = y.astype(np.int64)
    return _integers(y, path, key, n)


def check_arrays(arrays: dict[str, np.ndarray], path: Path, *,
                 keys: Mapping[str, str] | None = None, classes: tuple[str, ...] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """x (N, C, *spatial) float32, y, groups and the class names, each checked. ``keys`` names
    the file's key of each role in the messages (default the role's own); ``classes`` are the
    class names where the file holds none (default ``arrays['classes']``, else "0".."K-1" for
    K = max(y) + 1).

    Raises:
        DataError: wrong rank, non-numeric or non-finite x, labels outside 0..K-1, lengths that
            disagree (one line naming the file and key).
    """
    keys = keys or {}
    xk, yk = keys.get("x", "x"), keys.get("y", "y")
    x = arrays["x"]
    if x.ndim < 3 or 0 in x.shape:
        raise DataError(f"dataset arrays: {path}: key {xk!r} must be (N, C, *spatial) with no "
                        f"empty axis (rank >= 3), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"dataset arrays: {path}: key {xk!r} must hold real numbers, got "
                        f"{x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"dataset arrays: {path}: key {xk!r} holds "
                        f"{int((~np.isfinite(x)).sum()):,} NaN or infinite values")
    n = len(x)
    y = _labels(arrays["y"], path, yk, n)
    names = arrays.get("classes") if classes is None else classes
    k = len(names) if names is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"dataset arrays: {path}: key {yk!r} holds labels outside 0..{k - 1} "
                        f"(min {y.min()}, max {y.max()})")
    if k < 2:
        raise DataError(f"dataset arrays: {path}: key {yk!r} holds one class; a classifier "
                        "needs 2+")
    groups = (_integers(arrays["groups"], path, "groups", n) if "groups" in arrays
              else np.arange(n, dtype=np.int64))
    classes = tuple(str(c) for c in names) if names is not None else tuple(map(str, range(k)))
    return x, y, groups, classes


def check_parts(arrays: dict[str, np.ndarray], path: Path, n: int) -> list[np.ndarray] | None:
    """The file's train/val/test rows (val empty when absent), or None when it has none.

    Raises:
        DataError: one of train/test without the other, rows outside 0..N-1, an empty train or
            test part.
    """
    given = [k for k in ("train", "val", "test") if k in arrays]
    if not given:
        return None
    if not {"train", "test"} <= set(given):
        raise DataError(f"dataset arrays: {path}: has {given} but a split needs keys 'train' and "
                        "'test' (and optionally 'val')")
    parts = []
    for key in ("train", "val", "test"):
        rows = _integers(arrays.get(key, np.zeros(0, np.int64)), path, key, None)
        if key != "val" and len(rows) == 0:
            raise DataError(f"dataset arrays: {path}: key {key!r} is empty")
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise DataError(f"dataset arrays: {path}: key {key!r} holds rows outside 0..{n - 1}")
        parts.append(rows)
    return parts


@DATASETS.register("arrays")
class Arrays(Dataset):
    summary = ("your own NPZ or HDF5 file: keys x (N, C, ...), y, [groups, classes, "
               "train/val/test]; layout=paper: the paper's HDF5 pair (--hdf5)")

    @dataclass
    class Config:
        """Attributes:
        path: the NPZ (``.npz``) or HDF5 file (``layout=paper``: the training file).
        test_fraction: without split keys in the file, the share of samples that test.
        layout: ``own`` (the keys above) or ``paper`` (the paper's pair, ``--hdf5``).
        test_path: ``layout=paper``: the test file.
        """

        path: str = ""
        test_fraction: float = 0.3
        layout: str = "own"
        test_path: str = ""

    def check(self, run: Any) -> None:
        """The options; with ``layout=paper`` the files are read only when the run's data is
        built (a run's config.json loads where they are not, as ``--hdf5``'s always did)."""
        if run.hdf5 is None:  # else this is --hdf5's dataset (run_dataset), checked there
            refuse_mitdb_options("arrays", run)
        c = self.config
        if c.layout not in LAYOUTS:
            raise ValueError(f"dataset 'arrays': layout must be one of {LAYOUTS}, got "
                             f"{c.layout!r}")
        if not c.path:
            raise ValueError("dataset 'arrays' needs path=FILE (an NPZ or HDF5 file)")
        if (c.layout == "paper") != bool(c.test_path):
            raise ValueError("dataset 'arrays': test_path=FILE (the test file) goes with "
                             f"layout=paper, and only with it; got layout={c.layout!r}, "
                             f"test_path={c.test_path!r}")
        if c.layout == "paper":
            return
        if not 0 < c.test_fraction < 1:
            raise ValueError(f"dataset 'arrays': test_fraction must be in (0, 1), got "
                             f"{c.test_fraction}")
        if not Path(c.path).is_file():
            raise ValueError(f"dataset arrays: {c.path} is not a file")

    def describe(self, run: Any) -> tuple[tuple[int, ...], int]:
        if self.config.layout == "paper":  # the paper's layout fixes both: no file read
            return PAPER_INPUT, len(PAPER_CLASSES)
        return super().describe(run)

    def load(self, run: Any) -> DatasetSplit:
        self.check(run)
        if self.config.layout == "paper":
            return self._paper_pair(run)
        path = Path(self.config.path)
        arrays = read_arrays(path)
        x, y, groups, classes = check_arrays(arrays, path)
        parts = check_parts(arrays, path, len(x))
        if parts is None:
            parts = list(stratified_parts(y, test_fraction=self.config.test_fraction,
                                          val_fraction=run.resolved_val_fraction,
                                          seed=run.data_seed))
        train, val, test = parts
        split = DatasetSplit(x=x, y=y, groups=groups, train=train, val=val, test=test,
                             classes=classes)
        split.card = make_card(split, dataset="arrays", path=str(path),
                               sha256=sha256_file(path),
                               protocol="file" if "train" in arrays else "stratified")
        return split

    def _paper_pair(self, run: Any) -> DatasetSplit:
        """The paper's pair: the training file's rows, then the test file's (module docstring).
        """
        files = {"train": Path(self.config.path), "test": Path(self.config.test_path)}
        xs, ys = [], []
        for part, path in files.items():
            keys = {"x": f"x_{part}", "y": f"y_{part}"}
            arrays = read_arrays(path, keys)
            if arrays["x"].ndim == 2:  # (N, 128) beats: one lead
                arrays["x"] = arrays["x"][:, None, :]
            x, y, _, _ = check_arrays(arrays, path, keys=keys, classes=PAPER_CLASSES)
            if x.shape[1:] != PAPER_INPUT:
                raise DataError(f"dataset arrays: {path}: key {keys['x']!r} has shape "
                                f"{arrays['x'].shape}, the paper's layout holds (N, 1, "
                                f"{BEAT_LENGTH}) or (N, {BEAT_LENGTH}) beats")
            xs.append(x)
            ys.append(y)
        n, m = len(ys[0]), len(ys[1])
        train, val = np.arange(n), np.zeros(0, np.int64)
        if run.val_fraction:
            train, val = carve_by_class(ys[0], len(PAPER_CLASSES), train, run.val_fraction,
                                        np.random.RandomState(run.data_seed + 1))
        split = DatasetSplit(x=np.concatenate(xs), y=np.concatenate(ys),
                             groups=np.full(n + m, -1, np.int64), train=train, val=val,
                             test=np.arange(n, n + m), classes=PAPER_CLASSES)
        split.card = make_card(
            split, dataset="arrays", layout="paper", protocol="hdf5", labels="paper",
            hdf5={"train": str(files["train"]), "test": str(files["test"]),
                  "train_sha256": sha256_file(files["train"]),
                  "test_sha256": sha256_file(files["test"])})
        return split
