"""``digits``: scikit-learn's 8x8 handwritten digits (UCI optical recognition of handwritten
digits, Alpaydin & Kaynak 1998), shipped with scikit-learn, so offline: (1797, 1, 8, 8) float32
images scaled to [0, 1], ten classes. A set that is not ECG and not 1D.

``load_digits`` keeps no writer ids, so every image gets a deterministic pseudo-subject:
image i belongs to subject ``i % subjects`` (file order); patient-level claims and the linkage
game's within-group candidates then play over these subjects. The split is a seeded stratified
one (the run's ``data_seed``): ``test_fraction`` of the images test, the run's validation
fraction of the rest validate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpriv.datasets import (
    DATASETS,
    Dataset,
    DatasetSplit,
    make_card,
    refuse_mitdb_options,
    stratified_parts,
)


@DATASETS.register("digits")
class Digits(Dataset):
    summary = "scikit-learn's 8x8 digits (N, 1, 8, 8), ten classes, offline"

    @dataclass
    class Config:
        """Attributes:
        test_fraction: the share of images that test, in (0, 1).
        subjects: pseudo-subjects the images are dealt to in file order, >= 1.
        """

        test_fraction: float = 0.3
        subjects: int = 30

    def check(self, run: Any) -> None:
        refuse_mitdb_options("digits", run)
        if not 0 < self.config.test_fraction < 1:
            raise ValueError(f"dataset 'digits': test_fraction must be in (0, 1), got "
                             f"{self.config.test_fraction}")
        if self.config.subjects < 1:
            raise ValueError(f"dataset 'digits': subjects must be >= 1, got "
                             f"{self.config.subjects}")

    def describe(self, run: Any) -> tuple[tuple[int, ...], int]:
        return (1, 8, 8), 10

    def load(self, run: Any) -> DatasetSplit:
        from sklearn.datasets import load_digits

        self.check(run)
        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
        y = np.asarray(bunch.target, np.int64)
        train, val, test = stratified_parts(
            y, test_fraction=self.config.test_fraction, val_fraction=run.resolved_val_fraction,
            seed=run.data_seed)
        split = DatasetSplit(x=x, y=y, groups=np.arange(len(y)) % self.config.subjects,
                             train=train, val=val, test=test,
                             classes=tuple(str(c) for c in bunch.target_names))
        split.card = make_card(split, dataset="digits", source="sklearn.datasets.load_digits",
                               subjects=self.config.subjects, protocol="stratified")
        return split
