"""The dataset card: what a split holds (sizes, classes, records, duplicates), for logs and results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from splitpriv.data.beats import BeatPool, PrepConfig, class_counts
from splitpriv.data.protocols import Split
from splitpriv.data.records import MITDB_RECORDS


def _row_keys(x: np.ndarray) -> np.ndarray:
    """Hash each row's bytes to a uint64 (rows (n, ...) flattened; -0.0 counted as 0.0)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float64) + 0.0  # (n, L)
    words = flat.view(np.uint64)  # (n, L)
    drawn = np.random.RandomState(0).randint(1, 2**63 - 1, size=words.shape[1], dtype=np.int64)
    mult = drawn.astype(np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (words * mult).sum(axis=1, dtype=np.uint64)  # (n,)


def count_duplicate_rows(reference: np.ndarray, query: np.ndarray) -> int:
    """Count rows of ``query`` whose values equal some row of ``reference`` exactly.

    Rows are hashed to 64 bits, candidates found with ``np.isin`` and then compared exactly, so
    hash collisions cannot inflate the count.
    """
    if len(reference) == 0 or len(query) == 0:
        return 0
    ref = np.ascontiguousarray(reference.reshape(len(reference), -1), dtype=np.float64) + 0.0
    qry = np.ascontiguousarray(query.reshape(len(query), -1), dtype=np.float64) + 0.0
    hr, hq = _row_keys(ref), _row_keys(qry)
    cand = np.flatnonzero(np.isin(hq, hr))
    if len(cand) == 0:
        return 0
    lookup: dict[int, list[int]] = {}
    for i in np.flatnonzero(np.isin(hr, hq[cand])):
        lookup.setdefault(int(hr[i]), []).append(int(i))
    return sum(
        any(np.array_equal(qry[q], ref[r]) for r in lookup.get(int(hq[q]), ())) for q in cand
    )


def _records_of(rec: np.ndarray) -> list[int]:
    return sorted(int(r) for r in np.unique(rec) if r >= 0)


def dataset_card(
    pool: BeatPool | None, split: Split, prep: PrepConfig | None = None
) -> dict[str, Any]:
    """Summarise a split for logs and result files.

    Args:
        pool: The pool the split came from, or ``None`` (pool fields are then ``None``).
        split: The split.
        prep: The pool's preprocessing; when given, the card also has ``records_missing`` (the
            records of MIT-BIH 1.0.0 the preprocessing keeps that the pool holds no beat of:
            empty for the whole database), ``classes``, ``labels``,
            ``lead`` (``""``: channel ``channel``), ``channel``, ``excluded_records``,
            ``records_val`` and ``class_counts_by_val_record`` (``{record: {class: n}}``).

    Returns:
        Dict with keys protocol, pool_size, pool_class_counts, n_train, n_val, n_test,
        class_counts_train, class_counts_val, class_counts_test, test_rows_duplicating_train
        (test rows equal to some training row, value for value), records_train, records_test
        (sorted record numbers; empty when unknown) and records_shared (records on both sides).
    """
    rtr, rte = _records_of(split.record_train), _records_of(split.record_test)
    card: dict[str, Any] = {
        "protocol": split.protocol,
        "pool_size": None if pool is None else len(pool),
        "pool_class_counts": None if pool is None else pool.class_counts(),
        "n_train": split.n_train,
        "n_val": split.n_val,
        "n_test": split.n_test,
        "class_counts_train": class_counts(split.y_train, split.classes),
        "class_counts_val": class_counts(split.y_val, split.classes),
        "class_counts_test": class_counts(split.y_test, split.classes),
        "test_rows_duplicating_train": count_duplicate_rows(split.x_train, split.x_test),
        "records_train": rtr,
        "records_test": rte,
        "records_shared": len(set(rtr) & set(rte)),
    }
    if prep is not None:
        rva = _records_of(split.record_val)
        expected = set(MITDB_RECORDS) - set(prep.excluded_records)
        card |= {
            "records_missing": sorted(expected - set(_records_of(pool.record)))
            if pool is not None else None,
            "classes": split.classes, "labels": prep.labels, "lead": prep.lead,
            "channel": prep.channel, "excluded_records": list(prep.excluded_records),
            "records_val": rva,
            "class_counts_by_val_record": {
                str(r): class_counts(split.y_val[split.record_val == r], split.classes)
                for r in rva
            },
        }
    return card

