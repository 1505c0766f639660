"""HDF5 files written atomically, and the paper's ``train_ecg.hdf5`` / ``test_ecg.hdf5``.

The paper's files hold x (N, 1, 128) float64 beats and y (N,) int64 labels N=0, L=1, R=2, A=3,
V=4, one file per side of its split (Abuadbba et al. 2020).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from splitpriv.data.beats import BeatPool
from splitpriv.data.protocols import Split, carve_stratified
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


def _checked_beats(x: np.ndarray, what: str) -> np.ndarray:
    """Beats (N, 1, 128) from an HDF5 dataset of (N, 1, 128) or (N, 128) finite floats."""
    if x.ndim == 2:
        x = x[:, None, :]  # (N, 128) -> (N, 1, 128)
    if x.ndim != 3 or x.shape[1] != 1 or x.shape[2] != 128:
        raise DataError(f"{what} has shape {x.shape}, expected (N, 1, 128) or (N, 128)")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} has dtype {x.dtype}, expected a float type")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what} holds NaN or inf values")
    return x


def _checked_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Labels (N,) from an HDF5 dataset of (N,) or (N, 1) integers (or integral floats)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}, expected (N,)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{what} holds non-integer labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what} has dtype {y.dtype}, expected integer labels")
    return y


def _read_xy(path: Path, part: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    if not path.is_file():
        raise DataError(f"HDF5 file {path} not found")
    xk, yk = f"x_{part}", f"y_{part}"
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in (xk, yk) if k not in fh]
            if missing:
                raise DataError(
                    f"{path}: dataset {missing[0]!r} missing (has {sorted(fh.keys())}, "
                    f"expected {xk!r} and {yk!r})"
                )
            x, y = fh[xk][()], fh[yk][()]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path} is not a readable HDF5 file: {exc}") from exc
    x, y = _checked_beats(x, f"{path}: {xk}"), _checked_labels(np.asarray(y), f"{path}: {yk}")
    if len(y) != len(x):
        raise DataError(f"{path}: {xk} has {len(x)} rows but {yk} has {len(y)}")
    if len(y) == 0:
        raise DataError(f"{path}: {xk} is empty")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"{path}: {yk} holds labels outside 0..{n_classes - 1}")
    return x.astype(np.float64), y.astype(np.int64)


def read_paper_hdf5(train_path: Path | str, test_path: Path | str) -> Split:
    """Read the paper's ``train_ecg.hdf5`` / ``test_ecg.hdf5`` into a :class:`Split`.

    The split has protocol ``"hdf5"``, no validation rows, and pool indices and records -1.

    Raises:
        DataError: naming the file and the problem: missing file, missing keys, shape not
            (N, 1, 128) or (N, 128), non-float beats, NaN/inf, labels outside 0..4, or x/y length
            mismatch.
    """
    classes = "NLRAV"
    xtr, ytr = _read_xy(Path(train_path), "train", len(classes))
    xte, yte = _read_xy(Path(test_path), "test", len(classes))

    def unknown(n: int, dtype: type) -> np.ndarray:
        return np.full(n, -1, dtype=dtype)

    empty_x = np.zeros((0, 1, xtr.shape[2]), dtype=np.float64)
    return Split(
        "hdf5", xtr, ytr, empty_x, np.zeros(0, np.int64), xte, yte,
        unknown(len(ytr), np.int64), unknown(0, np.int64), unknown(len(yte), np.int64),
        unknown(len(ytr), np.int32), unknown(0, np.int32), unknown(len(yte), np.int32),
        classes,
    )  # fmt: skip


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


def paper_hdf5_split(
    train_path: Path | str, test_path: Path | str, *, val_fraction: float = 0.0, seed: int = 2019
) -> tuple[BeatPool, Split]:
    """The paper's HDF5 files (:func:`read_paper_hdf5`, validated as it does) as a run's pool and
    split.

    The pool is the files' rows, the training file's first (records and R-peaks unknown: -1);
    the split (protocol ``"hdf5"``) trains on the training file's rows and tests on the test
    file's. With ``val_fraction`` > 0, ``round(val_fraction * n_c)`` seeded random training rows
    of each class c move to validation (``RandomState(seed + 1)``, as
    :func:`~splitpriv.data.protocols.make_split` carves the ``paper`` protocol's).

    Raises:
        DataError: naming the file (see :func:`read_paper_hdf5`) or ``val_fraction``.
    """
    files = read_paper_hdf5(train_path, test_path)
    frac = float(val_fraction)
    if not 0.0 <= frac < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n, m = files.n_train, files.n_test
    pool = BeatPool(np.concatenate([files.x_train, files.x_test])[:, 0, :],
                    np.concatenate([files.y_train, files.y_test]), np.full(n + m, -1, np.int32),
                    np.full(n + m, -1, np.int64), files.classes)
    train, val = np.arange(n), np.zeros(0, np.int64)
    if frac > 0:
        train, val = carve_stratified(pool, train, frac, np.random.RandomState(seed + 1))
    return pool, Split.from_pool(pool, "hdf5", train, val, np.arange(n, n + m))
