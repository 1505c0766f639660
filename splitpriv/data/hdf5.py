"""HDF5 files written atomically, and the paper's ``train_ecg.hdf5`` / ``test_ecg.hdf5``.

The paper's files hold x (N, 1, 128) float64 beats and y (N,) int64 labels N=0, L=1, R=2, A=3,
V=4, one file per side of its split (Abuadbba et al. 2020). Here they are written, and a run's
``hdf5`` option checked; they are read as the ``arrays`` dataset's paper layout
(:mod:`splitpriv.datasets.builtins.arrays`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.data.protocols import Split
from splitpriv.data.records import DataError
from splitpriv.io import atomic_path


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator[Any]:
    """Open a temporary HDF5 file next to ``path``; rename it to ``path`` only on success."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "x") as fh:
        yield fh


def write_paper_hdf5(split: Split, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``train_ecg.hdf5`` {x_train, y_train} and ``test_ecg.hdf5`` {x_test, y_test}.

    The layout is the paper's: x (N, 1, 128) float64, y (N,) int64. Each file is written to a
    temporary file and renamed into place. The paper format has no validation set: validation
    rows are not written (a warning says so).

    Returns:
        ``(train_path, test_path)``.
    """
    out = Path(out_dir)
    if split.n_val:
        warnings.warn(
            f"write_paper_hdf5: {split.n_val} validation rows are not written", stacklevel=2
        )
    paths = []
    for part in ("train", "test"):
        path = out / f"{part}_ecg.hdf5"
        with atomic_h5(path) as fh:
            fh.create_dataset(f"x_{part}", data=np.asarray(getattr(split, f"x_{part}"), np.float64))
            fh.create_dataset(f"y_{part}", data=np.asarray(getattr(split, f"y_{part}"), np.int64))
        paths.append(path)
    return paths[0], paths[1]


def parse_hdf5_pair(spec: str) -> tuple[Path, Path]:
    """``"TRAIN,TEST"`` -> the two paths (the ``hdf5`` run option).

    Raises:
        DataError: naming ``hdf5``, unless there are exactly two non-empty names.
    """
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(
            f"hdf5: expected TRAIN,TEST (the paper's train_ecg.hdf5 and test_ecg.hdf5, separated "
            f"by a comma), got {spec!r}"
        )
    return Path(parts[0]).expanduser(), Path(parts[1]).expanduser()


def check_hdf5_run(spec: str, *, protocol: str, labels: str) -> tuple[Path, Path]:
    """The two paths of a run's ``hdf5`` option, checked against the run's other options before
    anything is written.

    Raises:
        DataError: naming ``hdf5``: not ``TRAIN,TEST``, labels other than the paper's, or the
            ``inter-patient`` protocol (the files hold their own split).
    """
    pair = parse_hdf5_pair(spec)
    if labels != "paper":
        raise DataError(f"hdf5: the paper's files hold its five beat types N/L/R/A/V; labels "
                        f"must be 'paper', got {labels!r}")
    if protocol in ("inter-patient", "records-holdout"):
        raise DataError("hdf5: the files hold their own train/test split; protocol "
                        f"{protocol!r} cannot apply to them (leave --protocol out)")
    return pair
