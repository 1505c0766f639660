"""Train/test protocols over a beat pool, and how validation rows are carved from training.

The paper's split (``protocol="paper"``, Abuadbba et al. 2020): 6000/6000/6000/2490/6000 draws
per class N, L, R, A, V *with replacement*, half to train and half to test. Two alternatives:
``paper-unique`` (same sizes, drawn without replacement, so no beat is in both halves) and
``inter-patient`` (de Chazal, O'Dwyer & Reilly, "Automatic classification of heartbeats using ECG
morphology and heartbeat interval features", IEEE TBME 51(7):1196-1206, 2004: DS1 records train,
DS2 records test). ``inter-patient`` has its own pool (:func:`protocol_prep`): de Chazal's 44
records (every record but the paced 102, 104, 107 and 217, so 114 is in), each read from its MLII
lead whichever channel holds it (channel 1 of record 114, channel 0 elsewhere), labelled by the
paper's five beat types or the AAMI classes (:data:`~splitpriv.data.beats.LABEL_SCHEMES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from splitpriv.data.beats import LABEL_SCHEMES, BeatPool, PrepConfig
from splitpriv.data.records import DS1_RECORDS, DS2_RECORDS, PACED_RECORDS, DataError

#: Per-class draw sizes of the paper's protocol (classes N, L, R, A, V); half go to each side.
PAPER_CLASS_DRAWS = (6000, 6000, 6000, 2490, 6000)


@dataclass
class Split:
    """A train/val/test split. Beats are shaped (n, 1, beat_length) like the paper's HDF5 files.

    Attributes:
        protocol: Name of the protocol that made it (``"hdf5"`` when read from files).
        x_train, x_val, x_test: (n, 1, L) float64 beats.
        y_train, y_val, y_test: (n,) int64 labels.
        pool_idx_train, pool_idx_val, pool_idx_test: (n,) int64 pool row of each row, -1 if unknown.
        record_train, record_val, record_test: (n,) int32 record number of each row, -1 if unknown.
        classes: Class symbols.
    """

    protocol: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pool_idx_train: np.ndarray
    pool_idx_val: np.ndarray
    pool_idx_test: np.ndarray
    record_train: np.ndarray
    record_val: np.ndarray
    record_test: np.ndarray
    classes: str = "NLRAV"

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return len(self.y_train)

    @property
    def n_val(self) -> int:
        """Number of validation rows."""
        return len(self.y_val)

    @property
    def n_test(self) -> int:
        """Number of test rows."""
        return len(self.y_test)

    @classmethod
    def from_pool(
        cls, pool: BeatPool, protocol: str, train: np.ndarray, val: np.ndarray, test: np.ndarray
    ) -> Split:
        """Build a split from pool row indices (each (n,) int64)."""

        def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            idx = np.asarray(idx, dtype=np.int64)
            x = pool.x[idx][:, None, :]  # (n, 1, L)
            return x, pool.y[idx].astype(np.int64), idx, pool.record[idx].astype(np.int32)

        xtr, ytr, itr, rtr = rows(train)
        xva, yva, iva, rva = rows(val)
        xte, yte, ite, rte = rows(test)
        return cls(
            protocol, xtr, ytr, xva, yva, xte, yte, itr, iva, ite, rtr, rva, rte, pool.classes
        )


#: A protocol maps (pool, seed) to (train, test) pool row indices; val is carved afterwards.
ProtocolFn = Callable[[BeatPool, int], tuple[np.ndarray, np.ndarray]]
#: A val carver maps (pool, train indices, val_fraction, rng) to (train, val) indices.
CarveFn = Callable[
    [BeatPool, np.ndarray, float, np.random.RandomState], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class _Protocol:
    split: ProtocolFn
    carve_val: CarveFn
    doc: str = field(default="")
    #: the protocol's pool for a label scheme (schemes it cannot take raise DataError)
    prep: Callable[[str], PrepConfig] | None = None


def _paper_prep(labels: str) -> PrepConfig:
    if labels != "paper":
        raise DataError(f"the paper's protocols take labels='paper' only, got {labels!r}")
    return PrepConfig()


def _inter_patient_prep(labels: str) -> PrepConfig:
    """de Chazal et al. 2004's records (all but the paced ones), each on its MLII lead."""
    if labels not in LABEL_SCHEMES:
        raise DataError(f"labels must be one of {LABEL_SCHEMES}, got {labels!r}")
    return PrepConfig(excluded_records=PACED_RECORDS, lead="MLII", labels=labels)


def _class_rows(pool: BeatPool) -> list[np.ndarray]:
    """Pool rows of each class, in pool order."""
    return [np.flatnonzero(pool.y == c) for c in range(len(pool.classes))]


def _require_paper_classes(pool: BeatPool, protocol: str) -> list[np.ndarray]:
    if pool.classes != "NLRAV":
        raise DataError(
            f"protocol {protocol!r} needs classes 'NLRAV', the pool has {pool.classes!r}"
        )
    rows = _class_rows(pool)
    return rows


def _split_paper(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's split, bit for bit (Abuadbba et al. 2020 preprocessing notebook).

    ``np.random.seed(2019)``; per class N, L, R, A, V draw 6000, 6000, 6000, 2490, 6000 row
    indices *with replacement*; the first half of each draw trains, the rest tests. Train and
    test are then shuffled by one permutation array that is shuffled once for train and again,
    in place, for test. Sampling with replacement puts exact copies of training beats in the
    test set (a known flaw of the protocol).
    """
    rows = _require_paper_classes(pool, "paper")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c, n in enumerate(PAPER_CLASS_DRAWS):
        idx = rng.choice(len(rows[c]), n)
        train.append(rows[c][idx[: n // 2]])
        test.append(rows[c][idx[n // 2 :]])
    tr, te = np.concatenate(train), np.concatenate(test)
    perm = np.arange(len(tr))
    rng.shuffle(perm)
    tr = tr[perm]
    rng.shuffle(perm)
    te = te[perm]
    return tr, te


def _split_paper_unique(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's class sizes (3000/3000/3000/1245/3000 per half) drawn without replacement.

    No pool row appears in both halves; both halves are shuffled. Patients still appear on both
    sides (intra-patient evaluation).
    """
    rows = _require_paper_classes(pool, "paper-unique")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c, n in enumerate(PAPER_CLASS_DRAWS):
        if n > len(rows[c]):
            raise DataError(
                f"protocol 'paper-unique' needs {n} beats of class "
                f"{pool.classes[c]!r}, the pool has {len(rows[c])}"
            )
        idx = rng.choice(len(rows[c]), n, replace=False)
        train.append(rows[c][idx[: n // 2]])
        test.append(rows[c][idx[n // 2 :]])
    tr, te = np.concatenate(train), np.concatenate(test)
    return tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]


def _split_inter_patient(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """de Chazal et al. 2004 inter-patient split: DS1 records train, DS2 records test.

    Every pool beat of a DS1 record trains and every beat of a DS2 record tests, in pool order,
    without class balancing, so class counts are imbalanced (mostly N). On the protocol's own
    pool (:func:`protocol_prep`) DS1 has its 22 records; on the paper's pool, which excludes
    114, 21. ``seed`` is unused.
    """
    del seed
    tr = np.flatnonzero(np.isin(pool.record, DS1_RECORDS))
    te = np.flatnonzero(np.isin(pool.record, DS2_RECORDS))
    if len(tr) == 0 or len(te) == 0:
        raise DataError("protocol 'inter-patient': the pool holds no DS1 or no DS2 record")
    return tr, te


def _split_records_holdout(pool: BeatPool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random half of the pool's records train (every beat of each, rows shuffled, so
    that a training subset spans every training record); the other records test: the patients
    held out at random of patient-level membership inference (``attacks.membership``), beside
    de Chazal's fixed DS1/DS2. On the ``inter-patient`` pool (44 records): 22 and 22."""
    rng = np.random.RandomState(seed)
    records = np.unique(pool.record)
    members = rng.permutation(records)[: len(records) // 2]
    inside = np.isin(pool.record, members)
    if inside.all() or not inside.any():
        raise DataError("protocol 'records-holdout': the pool needs two records or more")
    tr, te = np.flatnonzero(inside), np.flatnonzero(~inside)
    return tr[rng.permutation(len(tr))], te[rng.permutation(len(te))]


def carve_stratified(
    pool: BeatPool, train: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Move ``round(fraction * n_c)`` random training rows of each class c to validation.

    Rows are chosen by position, so under the paper protocol (which samples with replacement)
    the same pool row may still be in train and val.
    """
    return carve_by_class(pool.y, len(pool.classes), train, fraction, rng)


def carve_by_class(
    y: np.ndarray, n_classes: int, train: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`carve_stratified` on labels ``y`` (N,) of ``n_classes`` classes: ``(train, val)``
    rows, ``round(fraction * n_c)`` of each class c's training rows (in ``train``'s order) drawn
    by ``rng`` into ``val``."""
    labels = y[train]
    take = np.zeros(len(train), dtype=bool)
    for c in range(n_classes):
        pos = np.flatnonzero(labels == c)
        k = round(fraction * len(pos))
        if k:
            take[rng.choice(pos, k, replace=False)] = True
    return train[~take], train[take]


def _carve_records(
    pool: BeatPool, train: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Move whole training records to validation (validation patients are unseen).

    Records are taken in one seeded random order. First, for each class of the training rows,
    rarest first, of which the records chosen so far hold less than ``fraction`` of its
    training beats, one more record holding the class: the first (in the seeded order) holding
    between ``fraction`` and half of them, else the one holding most short of half, else the one
    holding most; never the class's last training record. So every class appears in validation
    where it can, without leaving training. Then further records until the validation rows reach
    ``fraction`` of the training rows, skipping any that would take the last training record of
    a class.
    """
    recs, labels = pool.record[train], pool.y[train]
    order = [int(r) for r in rng.permutation(np.unique(recs))]
    per_rec = {r: np.bincount(labels[recs == r], minlength=len(pool.classes)) for r in order}
    holds = {r: set(np.flatnonzero(per_rec[r]).tolist()) for r in order}
    size = {r: int(np.sum(recs == r)) for r in order}
    chosen: list[int] = []

    def keeps_every_class(r: int) -> bool:
        """Whether moving r leaves every class it holds in some other training record."""
        left = [q for q in order if q != r and q not in chosen]
        return all(any(c in holds[q] for q in left) for c in holds[r])

    counts = np.bincount(labels, minlength=len(pool.classes))
    for c in sorted(np.flatnonzero(counts).tolist(), key=lambda c: (counts[c], c)):
        if sum(per_rec[r][c] for r in chosen) >= fraction * counts[c]:
            continue
        cands = [r for r in order if c in holds[r] and r not in chosen and keeps_every_class(r)]
        share = {r: per_rec[r][c] / counts[c] for r in cands}
        fits = [r for r in cands if fraction <= share[r] <= 0.5]
        under = [r for r in cands if share[r] <= 0.5]
        if cands:
            chosen.append(fits[0] if fits else max(under or cands, key=share.__getitem__))
    target = fraction * len(train)
    for r in order:
        if sum(size[q] for q in chosen) >= target:
            break
        if r not in chosen and keeps_every_class(r):
            chosen.append(r)
    if len(chosen) == len(order):
        raise DataError(f"val_fraction={fraction} would move every training record to validation")
    take = np.isin(recs, chosen)
    return train[~take], train[take]


_PROTOCOL_REGISTRY: dict[str, _Protocol] = {
    "paper": _Protocol(_split_paper, carve_stratified, "Abuadbba et al. 2020, with replacement"),
    "paper-unique": _Protocol(
        _split_paper_unique, carve_stratified, "paper sizes, no replacement"
    ),
    "inter-patient": _Protocol(
        _split_inter_patient, _carve_records, "de Chazal et al. 2004", _inter_patient_prep
    ),
    "records-holdout": _Protocol(
        _split_records_holdout, _carve_records, "a random half of the records train",
        _inter_patient_prep
    ),
}
#: Names accepted by :func:`make_split`.
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOL_REGISTRY)


def protocol_prep(protocol: str, labels: str = "paper") -> PrepConfig:
    """The preprocessing of a protocol's pool under a label scheme.

    ``paper`` and ``paper-unique``: the paper's pool (:class:`PrepConfig` defaults; labels
    ``paper`` only). ``inter-patient``: de Chazal et al. 2004's 44 records (the paced 102, 104,
    107, 217 excluded), each read from its MLII lead, labelled by ``labels``.

    Raises:
        DataError: naming the protocol or the label scheme.
    """
    spec = _PROTOCOL_REGISTRY.get(protocol)
    if spec is None:
        raise DataError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    return spec.prep(labels) if spec.prep is not None else _paper_prep(labels)


def check_labels(protocol: str, labels: str) -> None:
    """Raise DataError unless ``labels`` is a scheme that ``protocol`` takes (an unknown protocol
    is left to :func:`make_split`)."""
    if protocol in _PROTOCOL_REGISTRY:
        protocol_prep(protocol, labels)
    elif labels not in LABEL_SCHEMES:
        raise DataError(f"labels must be one of {LABEL_SCHEMES}, got {labels!r}")


def make_split(
    pool: BeatPool, protocol: str = "paper-unique", *, val_fraction: float = 0.0, seed: int = 2019
) -> Split:
    """Split the pool into train/val/test by a named protocol.

    Protocols (see :data:`PROTOCOLS`):

    * ``paper``: Abuadbba et al. 2020's split, bit for bit (13,245 train / 13,245 test, drawn
      with replacement: test holds exact copies of training beats).
    * ``paper-unique``: same per-class sizes, drawn without replacement.
    * ``inter-patient``: de Chazal et al. 2004, DS1 records train, DS2 records test.
    * ``records-holdout``: the same pool; a random half of its records (drawn by ``seed``)
      train, the others test.

    Validation rows are carved from the training rows with ``RandomState(seed + 1)``: stratified
    by class for ``paper`` and ``paper-unique``, whole records for ``inter-patient`` and
    ``records-holdout``.

    Args:
        pool: The beat pool.
        protocol: Protocol name.
        val_fraction: Fraction of training rows moved to validation, in [0, 1).
        seed: Seed of the protocol's ``np.random.RandomState`` (paper: 2019).

    Returns:
        The split.

    Raises:
        DataError: naming ``protocol`` (with the valid names) or ``val_fraction``.
    """
    spec = _PROTOCOL_REGISTRY.get(protocol)
    if spec is None:
        raise DataError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    try:
        frac = float(val_fraction)
    except (TypeError, ValueError) as exc:
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from exc
    if not (0.0 <= frac < 1.0):
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    train, test = spec.split(pool, seed)
    if frac > 0:
        train, val = spec.carve_val(pool, train, frac, np.random.RandomState(seed + 1))
    else:
        val = np.zeros(0, dtype=np.int64)
    return Split.from_pool(pool, protocol, train, val, test)

