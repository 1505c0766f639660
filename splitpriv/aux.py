"""Auxiliary data: the beats an attacker or a server behaviour holds besides what crosses the cut,
as one spec type with explicit kinds (:class:`AuxSpec`), read by the run (a server behaviour's
``aux``), the attacks (``--aux``) and the studies (``--aux``).

Kinds (``KIND:ARG``):

``own:F`` / ``own:N``
    rows of the client's own training half: a seeded fraction F (0 < F < 1) or N rows, with their
    labels. The attacker knows which observed rows are its own and pairs them with what the
    transcript holds for them; they are not victims. ``train:F`` is the older name of ``own:F``
    and still reads as it (attacks and studies only: a server holds no client rows).
``public:F`` / ``public:N``
    public beats of the same domain: beats of the run's pool that the run uses nowhere (not a
    training, validation or test row), F times the training rows or N, a seeded choice (Pasquini
    et al. 2021's threat model for a server behaviour). An attacker that may query the client
    gets their activations that way; one that may not holds them unpaired.
``records:R1,R2,...``
    public beats of those MIT-BIH records (every pool beat of them the run uses nowhere): other
    patients. An attack excludes victims of those records.
``enrol:F``
    (attacks only) the first part of every patient's record: the beats of the attacked phase
    whose R-peak lies in the first F of their record, paired by id (identity inference).

Shapes: the rows picked are indices into the beat pool (public, records) or the training half
(own); :mod:`splitpriv.run.plugins` and :mod:`attacks.runs` turn them into (M, 1, 128) beats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from splitpriv.options import fraction_or_count

#: every kind, and the older name each still reads as
KINDS = ("own", "public", "records", "enrol")
ALIASES = {"train": "own"}
#: what a server behaviour may hold (it has no client rows and no phase to enrol from)
SERVER_KINDS = ("public", "records")


@dataclass(frozen=True)
class AuxSpec:
    """One auxiliary-data spec, parsed and checked once (module docstring).

    Attributes:
        kind: ``own``, ``public``, ``records`` or ``enrol``.
        size: a fraction in (0, 1) or a whole count >= 1 (``own``, ``public``), the record
            fraction in (0, 1) (``enrol``); 0 for ``records``.
        records: the MIT-BIH record numbers (``records``).
    """

    kind: str
    size: float = 0.0
    records: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str | None, where: str = "--aux",
              kinds: Sequence[str] = KINDS) -> AuxSpec | None:
        """A spec from its text; None for ``None``, ``""`` or ``none``.

        Raises:
            ValueError: naming ``where`` and the spec: an unknown kind, a kind not in ``kinds``,
                a bad size or record list.
        """
        if text is None or text.strip().lower() in ("", "none"):
            return None
        head, _, arg = text.partition(":")
        kind = ALIASES.get(head.strip().lower(), head.strip().lower())
        where = f"{where} {text!r}"
        expected = ", ".join(f"{k}:{_FORM[k]}" for k in kinds)
        if kind not in kinds:
            why = (" (a server holds no client rows: public:F takes unused pool beats)"
                   if kind == "own" and "own" not in kinds else "")
            raise ValueError(f"{where}: expected {expected}{why}")
        if kind == "records":
            parts = [r.strip() for r in arg.replace(";", ",").split(",") if r.strip()]
            if not parts or not all(r.isdigit() for r in parts):
                raise ValueError(f"{where}: expected records:R1,R2,...")
            return cls(kind, records=tuple(sorted({int(r) for r in parts})))
        if kind == "enrol":
            try:
                size = float(arg)
            except ValueError:
                size = 0.0
            if not 0 < size < 1:
                raise ValueError(f"{where}: expected enrol:F with F in (0, 1)")
            return cls(kind, size=size)
        fraction_or_count(arg, 1, where)  # a finite fraction in (0, 1), or a whole count
        size = float(arg)
        if size <= 0:
            raise ValueError(f"{where}: expected a fraction in (0, 1) or a count >= 1")
        return cls(kind, size=size)

    def count(self, total: int) -> int:
        """The number of beats ``size`` means beside ``total`` training rows."""
        return int(round(self.size * total)) if self.size < 1 else int(self.size)

    def public_rows(self, pool_records: np.ndarray, used: np.ndarray, n_train: int, *,
                    seed: int, where: str) -> np.ndarray:
        """The pool rows (sorted indices) of a ``public`` or ``records`` spec: beats of the pool
        the run uses nowhere (``used``: pool indices of its rows, -1 for rows without one).

        Raises:
            ValueError: too few unused beats, or none of the records.
        """
        free = np.ones(len(pool_records), dtype=bool)
        free[used[used >= 0]] = False
        if self.kind == "records":
            rows = np.flatnonzero(np.isin(pool_records, self.records) & free)
            if len(rows) == 0:
                raise ValueError(f"{where} {self}: the pool holds no unused beats of records "
                                 f"{list(self.records)}")
            return rows
        if self.kind != "public":
            raise ValueError(f"{where} {self}: not a spec of public beats")
        rows_free = np.flatnonzero(free)
        n = self.count(n_train)
        if not 1 <= n <= len(rows_free):
            raise ValueError(f"{where} {self}: {n} beats of {len(rows_free)} unused ones")
        return np.sort(np.random.default_rng(seed).choice(rows_free, size=n, replace=False))

    def __str__(self) -> str:
        if self.kind == "records":
            return "records:" + ",".join(map(str, self.records))
        return f"{self.kind}:{self.size:g}"


_FORM = {"own": "F|N", "public": "F|N", "records": "R1,R2,...", "enrol": "F"}

__all__ = ["ALIASES", "KINDS", "SERVER_KINDS", "AuxSpec"]
