"""A training run's configuration: every field lands in DIR/config.json."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from splitpriv.channel import NOTHING, Kind, RecordPolicy
from splitpriv.data import check_hdf5_run, check_labels
from splitpriv.defense import DefenseSpec
from splitpriv.io import read_json
from splitpriv.metrics import SELECT_BY
from splitpriv.models import ModelConfig
from splitpriv.options import check_field_types
from splitpriv.releases import release_blocks

TOPOLOGIES = ("vanilla", "ushape")
#: device types a run can train on (``meta`` and the like hold no data)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
#: the most torch CPU threads a run may ask for (100,000 made torch segfault)
MAX_THREADS = 1024


@dataclass
class TrainConfig:
    """A training run. Every field lands in config.json.

    Attributes:
        protocol: data protocol (``paper``, ``paper-unique``, ``inter-patient``,
            ``records-holdout``).
        depth: client conv layers, 2..8.
        epochs: training epochs (the paper: 400).
        seed: model initialisation and batch order.
        batch_size: the paper's 32.
        lr: Adam learning rate (the paper's 1e-3).
        val_fraction: validation rows carved from the training half; None = 0 for ``paper``
            (which trained on all 13,245 rows) and 0.1 otherwise.
        topology: ``vanilla`` (labels cross) or ``ushape`` (labels and head stay on the client).
        paper_softmax: reproduce the original double softmax.
        cut_channels: a 1x1 bottleneck convolution to this many channels at the cut (None: the
            paper's 16 x 32 cut; see ``splitpriv.models``).
        data_seed: seed of the protocol's draws (the paper's 2019).
        labels: label scheme (``splitpriv.data.LABEL_SCHEMES``): ``paper``, the paper's five beat
            types N/L/R/A/V, or ``aami``, the ANSI/AAMI EC57 classes N/S/V/F/Q (inter-patient
            only); the model's output size follows it.
        select_by: the validation number that selects the reported epoch and best.pt
            (``accuracy``, ``macro_f1``, ``balanced_accuracy``).
        train_subset, test_subset: use only the first n rows (quick runs, tests); None = all.
        record_epochs: transcript epochs: ``last``, ``none``, ``all`` or a list like ``1,100``.
        record_kinds: transcript kinds, comma list; empty = all.
        record_releases: every training release kept per sample id, for attacks that combine a
            beat's releases (``splitpriv.releases``): ``windows`` (sums over the last 1, 2, 4, 8
            epochs and the rest: about 5 float16 copies of the activations), ``all`` (every
            epoch), ``none``. Independent of ``record_epochs`` and ``record_kinds``.
        defenses: the defenses, each a :class:`~splitpriv.defense.DefenseSpec` (given as a text
            spec ``name[:key=value,...]``, see ``defenses``, or its config.json object; parsed
            once, here).
        server: the server's behaviour, ``NAME[:key=value,...]`` (see ``splitpriv.servers``;
            ``honest``: the protocol as specified).
        device: ``auto``, ``cpu``, ``cuda``...
        threads: torch CPU threads during the run (0 or None: torch's default, one per core). One is
            fastest for this small model on a CPU (``benchmarks/speed.py --threads 2``).
        fast: the fast CPU kernels (``splitpriv.fast``); False, as ``SPLITPRIV_FAST=0``: torch's
            stock layers and Adam (the same weights to rounding; no private torch function).
        mitdb_dir, cache_dir: where the records and the beat-pool cache are (None: defaults).
        hdf5: ``TRAIN,TEST``: train and test on the paper's HDF5 files (``train_ecg.hdf5``,
            ``test_ecg.hdf5``) instead of the records (labels ``paper``; validation rows only
            with ``val_fraction``); None: the protocol's split of the records. An alias of
            ``dataset="arrays:layout=paper,path=TRAIN,test_path=TEST"``
            (:func:`splitpriv.datasets.run_dataset`), kept in config.json as given.
        dataset: the data, ``NAME[:key=value,...]`` (``splitpriv.datasets``): ``mitdb`` (the
            records under ``protocol``/``labels``/``hdf5``), ``mitdb:leads=2``, ``digits``,
            ``arrays:path=FILE``.
        model: the split architecture, ``NAME[:key=value,...]`` or ``MODULE:FUNCTION``
            (``splitpriv.architectures``): ``paper`` (``depth``, ``cut_channels``,
            ``paper_softmax``), ``cnn1d``, ``cnn2d``.
    """

    protocol: str = "paper-unique"
    depth: int = 2
    epochs: int = 400
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float | None = None
    topology: str = "vanilla"
    paper_softmax: bool = False
    cut_channels: int | None = None
    data_seed: int = 2019
    labels: str = "paper"
    select_by: str = "accuracy"
    train_subset: int | None = None
    test_subset: int | None = None
    record_epochs: str = "last"
    record_kinds: str = ""
    record_releases: str = "windows"
    defenses: list[DefenseSpec] = field(default_factory=list)
    server: str = "honest"
    device: str = "auto"
    threads: int | None = 1
    fast: bool = True
    mitdb_dir: str | None = None
    cache_dir: str | None = None
    hdf5: str | None = None
    dataset: str = "mitdb"
    model: str = "paper"

    def __post_init__(self) -> None:
        if isinstance(self.defenses, str | Mapping):
            raise ValueError(f"defenses must be list, got {self.defenses!r}")
        self.defenses = [DefenseSpec.parse(d, f"defenses[{i}]")
                         for i, d in enumerate(self.defenses)]
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        check_labels(self.protocol, self.labels)
        if self.hdf5 is not None:  # before anything is written; the files are read at run time
            check_hdf5_run(self.hdf5, protocol=self.protocol, labels=self.labels)
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        self._check_numbers()
        if self.threads == 0:
            self.threads = None
        if self.device != "auto":
            try:  # the name only: whether this machine has the device is checked at run time
                kind = torch.device(self.device).type
            except (RuntimeError, ValueError):
                kind = None
            if kind not in DEVICE_TYPES:
                raise ValueError(f"device: {self.device!r} is not a device a run can train on "
                                 "(auto, cpu, cuda, cuda:N, mps)")
        ModelConfig(self.depth, cut_channels=self.cut_channels)  # validates the architecture
        _check_plugins(self)
        self.record_policy()  # validates record_epochs and record_kinds

    def _check_numbers(self) -> None:
        """The numeric fields' ranges, each named when out of it."""
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) < 2**32:  # numpy's legacy seeding takes 32 bits
                raise ValueError(f"{name} must be in 0..2**32-1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (None: all rows), got "
                                 f"{getattr(self, name)}")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.threads is not None and not 0 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be in 0..{MAX_THREADS} (0 or None: torch's default), "
                             f"got {self.threads}")

    @property
    def resolved_val_fraction(self) -> float:
        if self.val_fraction is not None:
            return self.val_fraction
        return 0.0 if self.protocol == "paper" else 0.1

    def record_policy(self) -> RecordPolicy:
        releases = release_blocks(self.epochs, self.record_releases)
        spec = self.record_epochs.strip().lower()
        if spec == "none":
            return dataclasses.replace(NOTHING, releases=releases)
        epochs: frozenset[int] | None
        if spec == "all":
            epochs = None
        elif spec == "last":
            epochs = frozenset({self.epochs})
        else:
            try:
                epochs = frozenset(int(e) for e in spec.split(","))
            except ValueError:
                raise ValueError(
                    f"record_epochs: expected last|none|all|1,2,..., got {spec!r}"
                ) from None
            outside = sorted(e for e in epochs if not 1 <= e <= self.epochs)
            if outside:  # nothing would be recorded for them
                raise ValueError(f"record_epochs: epoch(s) {outside} outside the run's epochs "
                                 f"1..{self.epochs}")
        names = [k.strip() for k in self.record_kinds.split(",") if k.strip()]
        known = [k.value for k in Kind]
        bad = [k for k in names if k not in known]
        if bad:
            raise ValueError(f"record_kinds: unknown kind(s) {bad}; known: {known}")
        kinds = frozenset(Kind(k) for k in names)
        return RecordPolicy(epochs=epochs, kinds=kinds or None, releases=releases)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A run's config.json; fields it lacks take their defaults (older runs).

        Raises:
            ValueError: unreadable JSON, a key this version does not know, or a bad value (the
                file is named).
        """
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object of TrainConfig fields")
        unknown = sorted(set(doc) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown config field(s) {unknown} (written by another "
                             "version of splitpriv?)")
        check_field_types(cls, {k: v for k, v in doc.items() if k != "defenses"}, str(path))
        try:
            return cls(**doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def rerun_key(self) -> dict[str, Any]:
        """The fields that must match for a run directory to be resumed: everything that changes
        what the run produces (the transcript's epochs and kinds included), not the epochs (a run
        can be extended), the device, the threads, the kernels or where the records and caches are
        (the pool cache is keyed by the records' content)."""
        d = dataclasses.asdict(self)
        for k in ("epochs", "device", "threads", "fast", "mitdb_dir", "cache_dir"):
            d.pop(k)
        return d


def _check_plugins(config: TrainConfig) -> None:
    """The dataset's and the model's specs and their fit to the run (ValueError naming them)."""
    from splitpriv.architectures import build_architecture
    from splitpriv.datasets import run_dataset

    run_dataset(config).check(config)
    build_architecture(config.model).check(config)


__all__ = ["DEVICE_TYPES", "MAX_THREADS", "TOPOLOGIES", "TrainConfig"]
