"""``digits``: scikit-learn's 8x8 handwritten digits (UCI optical recognition of handwritten
digits, Alpaydin & Kaynak 1998), shipped with scikit-learn, so offline: (1797, 1, 8, 8) float32
images scaled to [0, 1], ten classes. A set that is not ECG and not 1D.

``load_digits`` keeps no writer ids, so every image gets a deterministic pseudo-subject:
image i belongs to subject ``i % subjects`` (file order); patient-level claims and the linkage
game's within-group candidates then play over these subjects, and an image's place in its
subject's sequence (``rpeak``: i // subjects) stands in for its time (identity inference enrols
a subject from its first images). The split (the run's
``data_seed``): ``split=stratified`` (the default), ``test_fraction`` of the images test, the
run's validation fraction of the rest validate; ``split=groups``, MIT-BIH's ``records-holdout``
over the subjects (:func:`splitpriv.datasets.group_holdout_parts`: a random half of them train,
validation subjects carved whole from those), the subjects held out that patient-level
membership needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpriv.datasets import (
    DATASETS,
    Dataset,
    DatasetSplit,
    group_holdout_parts,
    make_card,
    refuse_mitdb_options,
    stratified_parts,
)

SPLITS = ("stratified", "groups")


@DATASETS.register("digits")
class Digits(Dataset):
    summary = "scikit-learn's 8x8 digits (N, 1, 8, 8), ten classes, offline"

    @dataclass
    class Config:
        """Attributes:
        test_fraction: the share of images that test, in (0, 1).
        subjects: pseudo-subjects the images are dealt to in file order, >= 1.
        split: ``stratified`` (by class) or ``groups`` (whole subjects held out).
        """

        test_fraction: float = 0.3
        subjects: int = 30
        split: str = "stratified"

    def check(self, run: Any) -> None:
        refuse_mitdb_options("digits", run)
        if not 0 < self.config.test_fraction < 1:
            raise ValueError(f"dataset 'digits': test_fraction must be in (0, 1), got "
                             f"{self.config.test_fraction}")
        if self.config.subjects < 1:
            raise ValueError(f"dataset 'digits': subjects must be >= 1, got "
                             f"{self.config.subjects}")
        if self.config.split not in SPLITS:
            raise ValueError(f"dataset 'digits': split must be one of {SPLITS}, got "
                             f"{self.config.split!r}")
        if self.config.split == "groups" and self.config.subjects < 2:
            raise ValueError("dataset 'digits': split=groups holds subjects out: it needs "
                             "subjects >= 2")

    def describe(self, run: Any) -> tuple[tuple[int, ...], int]:
        return (1, 8, 8), 10

    def load(self, run: Any) -> DatasetSplit:
        from sklearn.datasets import load_digits

        self.check(run)
        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
        y = np.asarray(bunch.target, np.int64)
        groups = np.arange(len(y)) % self.config.subjects
        if self.config.split == "groups":
            train, val, test = group_holdout_parts(
                y, groups, val_fraction=run.resolved_val_fraction, seed=run.data_seed)
        else:
            train, val, test = stratified_parts(
                y, test_fraction=self.config.test_fraction,
                val_fraction=run.resolved_val_fraction, seed=run.data_seed)
        split = DatasetSplit(x=x, y=y, groups=groups, train=train, val=val, test=test,
                             classes=tuple(str(c) for c in bunch.target_names),
                             rpeak=np.arange(len(y)) // self.config.subjects)
        split.card = make_card(split, dataset="digits", source="sklearn.datasets.load_digits",
                               subjects=self.config.subjects, protocol=self.config.split)
        return split
