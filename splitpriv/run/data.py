"""A run's rows: the one place the beat pool is split and turned into tensors for a config.

In-process, batched and distributed runs train on :func:`build_run_data`'s tensors and the
attacks rebuild a run's private beats with it (``attacks.runs.load_run``), so every consumer sees
the rows training saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from splitpriv.channel import PHASES
from splitpriv.run.config import TrainConfig


@dataclass
class Tensors:
    """A protocol's rows as the run uses them (the first ``train_subset``/``test_subset`` rows of
    its split): beats and labels as tensors on the device, and where every row came from.

    Attributes:
        card: the dataset card of the pool and split (``splitpriv.data.dataset_card`` with the
            pool's preprocessing: it has ``classes``, ``labels`` and ``records_val``).
        pool: the dataset's samples the rows were drawn from
            (:class:`~splitpriv.datasets.DatasetSplit`).
    """

    x_train: torch.Tensor  # (N, C, *spatial) float32: MIT-BIH (N, leads, 128)
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    record_train: np.ndarray  # (N,) group (MIT-BIH record, subject) of every row
    record_val: np.ndarray
    record_test: np.ndarray
    pool_idx_train: np.ndarray  # (N,) row of the beat pool of every row
    pool_idx_val: np.ndarray
    pool_idx_test: np.ndarray
    card: dict[str, Any]
    pool: Any

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, *spatial) of one input."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return self.pool.n_classes

    def part(self, name: str, phase: str) -> Any:
        """One field of one phase: ``part("x", "test")`` is ``x_test``."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        return getattr(self, f"{name}_{phase}")


def load_split(
    config: TrainConfig, *, rebuild: bool = False, allow_unlisted: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """The protocol's beat pool under the config's label scheme
    (:func:`splitpriv.data.protocol_prep`), its split by the protocol, and the dataset card (the
    classes, the label scheme, the lead and the validation records, ``records_val``, with their
    class counts).

    ``config.hdf5`` (the paper's HDF5 pair) is not the records: :func:`build_run_data` reads it
    (``arrays``' paper layout, :func:`splitpriv.datasets.run_dataset`). ``rebuild`` rebuilds the
    pool cache; ``allow_unlisted`` accepts record files that ``SHA256SUMS.txt`` has no line for
    (:func:`splitpriv.data.load_pool`).

    Raises:
        DataError: naming the file, the directory or the option at fault.
    """
    from splitpriv.data import dataset_card, load_pool, make_split, protocol_prep

    if config.hdf5 is not None:
        raise ValueError(f"--hdf5 {config.hdf5} is the paper's HDF5 pair, not the MIT-BIH "
                         "records: its data is build_run_data's (dataset arrays, layout=paper)")
    prep = protocol_prep(config.protocol, config.labels)
    pool = load_pool(config.mitdb_dir, cache_dir=config.cache_dir, prep=prep, refresh=rebuild,
                     allow_unlisted=allow_unlisted)
    split = make_split(
        pool, config.protocol, val_fraction=config.resolved_val_fraction, seed=config.data_seed
    )
    return pool, split, dataset_card(pool, split, prep)


def build_run_data(config: TrainConfig, device: torch.device | str = "cpu") -> Tensors:
    """The run's rows (its dataset's split, :mod:`splitpriv.datasets`: the first
    ``train_subset``/``test_subset`` rows) with the inputs and labels on the device, and the
    dataset card. ``Tensors.pool`` is the dataset's :class:`~splitpriv.datasets.DatasetSplit`
    (its ``x``, ``y``, ``record`` and ``rpeak``, for the beats a run uses nowhere)."""
    from splitpriv.data import DataError
    from splitpriv.datasets import run_dataset

    ds = run_dataset(config).load(config)
    if len(ds.train) == 0:
        raise DataError(f"val_fraction {config.val_fraction} leaves no training row of the "
                        f"{len(ds.train) + len(ds.val):,} (all went to validation); lower "
                        "--val-fraction")
    fields: dict[str, Any] = {}
    for phase in PHASES:
        n = {"train": config.train_subset, "val": None, "test": config.test_subset}[phase]
        rows = ds.rows(phase)[:n]
        fields[f"x_{phase}"] = torch.as_tensor(ds.x[rows]).float().to(device)  # (n, C, ...)
        fields[f"y_{phase}"] = torch.as_tensor(ds.y[rows]).long().to(device)
        fields[f"record_{phase}"] = ds.groups[rows].astype(np.int32)
        fields[f"pool_idx_{phase}"] = rows
    return Tensors(**fields, card=ds.card, pool=ds)


def load_tensors(config: TrainConfig, device: torch.device) -> tuple[Tensors, dict[str, Any]]:
    """:func:`build_run_data` and its dataset card (the older two-value form)."""
    data = build_run_data(config, device)
    return data, data.card


__all__ = ["Tensors", "build_run_data", "load_split", "load_tensors"]
