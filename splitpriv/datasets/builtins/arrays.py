"""``arrays:path=FILE``: a user's own samples from an NPZ or HDF5 file.

Keys (the same in both formats): ``x`` (N, C, *spatial) numbers, ``y`` (N,) integer labels
0..K-1, and optionally ``groups`` (N,) integers (the patient or subject of each sample; absent:
every sample its own group), ``classes`` (K names; absent: K = max(y) + 1, named "0".."K-1")
and the split as index arrays ``train``, ``test`` and optionally ``val`` (absent: a seeded
stratified split, ``test_fraction`` of the samples test and the run's validation fraction of the
rest validate). Every malformed input is refused with one line naming the file and the key.
The paper's HDF5 pair (``--hdf5 TRAIN,TEST``) keeps its own reader
(:func:`splitpriv.data.paper_hdf5_split`) under ``--dataset mitdb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.data.records import DataError, sha256_file
from splitpriv.datasets import (
    DATASETS,
    Dataset,
    DatasetSplit,
    make_card,
    refuse_mitdb_options,
    stratified_parts,
)

KEYS = ("x", "y", "groups", "classes", "train", "val", "test")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays of :data:`KEYS` (NPZ by the ``.npz`` suffix, else HDF5).

    Raises:
        DataError: the file is missing or unreadable, or lacks ``x`` or ``y``.
    """
    if not path.is_file():
        raise DataError(f"dataset arrays: {path} is not a file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                out = {k: np.asarray(f[k]) for k in KEYS if k in f.files}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                out = {k: np.asarray(f[k][()]) for k in KEYS if k in f}
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset arrays: {path} could not be read as "
                        f"{'NPZ' if path.suffix == '.npz' else 'HDF5'}: {exc}") from None
    for key in ("x", "y"):
        if key not in out:
            raise DataError(f"dataset arrays: {path} has no key {key!r} (keys: {sorted(out)})")
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


def check_arrays(arrays: dict[str, np.ndarray], path: Path
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """x (N, C, *spatial) float32, y, groups and the class names, each checked.

    Raises:
        DataError: wrong rank, non-numeric or non-finite x, labels outside 0..K-1, lengths that
            disagree (one line naming the file and key).
    """
    x = arrays["x"]
    if x.ndim < 3 or 0 in x.shape:
        raise DataError(f"dataset arrays: {path}: key 'x' must be (N, C, *spatial) with no empty "
                        f"axis (rank >= 3), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"dataset arrays: {path}: key 'x' must hold real numbers, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"dataset arrays: {path}: key 'x' holds "
                        f"{int((~np.isfinite(x)).sum()):,} NaN or infinite values")
    n = len(x)
    y = _integers(arrays["y"], path, "y", n)
    names = arrays.get("classes")
    k = len(names) if names is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"dataset arrays: {path}: key 'y' holds labels outside 0..{k - 1} "
                        f"(min {y.min()}, max {y.max()})")
    if k < 2:
        raise DataError(f"dataset arrays: {path}: key 'y' holds one class; a classifier needs 2+")
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
    summary = "your own NPZ or HDF5 file: keys x (N, C, ...), y, [groups, classes, train/val/test]"

    @dataclass
    class Config:
        """Attributes:
        path: the NPZ (``.npz``) or HDF5 file.
        test_fraction: without split keys in the file, the share of samples that test.
        """

        path: str = ""
        test_fraction: float = 0.3

    def check(self, run: Any) -> None:
        refuse_mitdb_options("arrays", run)
        if not self.config.path:
            raise ValueError("dataset 'arrays' needs path=FILE (an NPZ or HDF5 file)")
        if not 0 < self.config.test_fraction < 1:
            raise ValueError(f"dataset 'arrays': test_fraction must be in (0, 1), got "
                             f"{self.config.test_fraction}")
        if not Path(self.config.path).is_file():
            raise ValueError(f"dataset arrays: {self.config.path} is not a file")

    def load(self, run: Any) -> DatasetSplit:
        self.check(run)
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
