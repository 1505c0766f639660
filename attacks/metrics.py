"""Scores of an attack's output: reconstruction quality per beat, label-inference quality, and the
distribution summaries reported (median and quartiles, not only means).

Reconstruction metrics, for a beat x and its reconstruction x^ (each 128 samples):

* ``mse``: mean((x - x^)^2).
* ``pearson``: Pearson correlation of x and x^ (0 when either is constant).
* ``prd``: percentage root-mean-square difference, 100 sqrt(sum (x - x^)^2 / sum x^2), the ECG
  compression standard. It depends on the baseline offset of x (beats here are min-max
  normalised records, baseline well above 0), so ``prdn`` is also given:
* ``prdn``: the mean-removed PRD, 100 sqrt(sum (x - x^)^2 / sum (x - mean x)^2).
* ``snr_db``: 10 log10(sum (x - mean x)^2 / sum (x - x^)^2) = -20 log10(prdn / 100).
* ``dtw``: DTW distance between x and x^ (dtaidistance C, no window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from attacks.measures import dtw_pairs, znorm

RECONSTRUCTION_METRICS = ("mse", "pearson", "prd", "prdn", "snr_db", "dtw")


def distribution(values: np.ndarray | Sequence[float]) -> dict[str, float]:
    """Median, quartiles, mean, min and max of the finite values (and how many there were)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(v.mean()),
        "min": float(v.min()), "max": float(v.max()), "n": int(len(v)),
    }


def reconstruction_metrics(x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray,
                           *, dtw: bool = True):
    """Per-beat reconstruction metrics (``dtw=False``: all but the DTW distance, the costly one).

    Shape:
        x, x_hat: (N, L) or (N, 1, L). Returns {metric: (N,) float64}.
    """
    x = torch.as_tensor(x).to(torch.float64).reshape(len(x), -1)
    x_hat = torch.as_tensor(x_hat).to(torch.float64).reshape(len(x_hat), -1)
    if x.shape != x_hat.shape:
        raise ValueError(
            f"reconstruction {tuple(x_hat.shape)} does not match beats {tuple(x.shape)}"
        )
    err = ((x - x_hat) ** 2).sum(1)
    xc = x - x.mean(1, keepdim=True)
    hc = x_hat - x_hat.mean(1, keepdim=True)
    energy, var = (x**2).sum(1), (xc**2).sum(1)
    den = (xc.norm(dim=1) * hc.norm(dim=1))
    tiny = torch.finfo(torch.float64).tiny
    out = {
        "mse": err / x.shape[1],
        "pearson": torch.where(den > 0, (xc * hc).sum(1) / den.clamp(min=tiny), 0.0),
        "prd": 100 * (err / energy.clamp(min=tiny)).sqrt(),
        "prdn": 100 * (err / var.clamp(min=tiny)).sqrt(),
        "snr_db": 10 * torch.log10(var.clamp(min=tiny) / err.clamp(min=tiny)),
    }
    result = {k: v.numpy() for k, v in out.items()}
    if dtw:
        result["dtw"] = dtw_pairs(x.numpy(), x_hat.numpy())
    return result


def summarize_reconstruction(metrics: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {k: distribution(v) for k, v in metrics.items()}


def label_metrics(
    y: np.ndarray, scores: np.ndarray, pred: np.ndarray | None = None, n_classes: int = 5
) -> dict[str, Any]:
    """Label accuracy and per-class one-vs-rest AUC of class scores.

    Args:
        y: (N,) true labels.
        scores: (N, K) a score per class (higher: more likely that class).
        pred: (N,) predicted labels; default argmax of ``scores``.
    """
    from sklearn.metrics import roc_auc_score  # here: the registry imports fast

    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    pred = scores.argmax(1) if pred is None else np.asarray(pred)
    auc: dict[str, float | None] = {}
    for c in range(n_classes):
        positives = y == c
        if positives.all() or not positives.any() or not np.isfinite(scores[:, c]).all():
            auc[str(c)] = None
        else:
            auc[str(c)] = float(roc_auc_score(positives, scores[:, c]))
    counts = np.bincount(y, minlength=n_classes)
    valid = [v for v in auc.values() if v is not None]
    return {
        "accuracy": float((pred == y).mean()),
        "chance_accuracy": float(counts.max() / counts.sum()),  # always guessing the largest class
        "per_class_auc": auc,
        "mean_auc": float(np.mean(valid)) if valid else None,
        "per_class_recall": {
            str(c): float((pred[y == c] == c).mean()) if counts[c] else None
            for c in range(n_classes)
        },
        "n": int(len(y)),
    }


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default; Wilson 1927).

    ``successes`` may be fractional (ties counted as expected successes)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


#: the candidate counts of the reported linkage
LINKAGE_KS = (10, 100)
LINKAGE_KEYS = ("accuracy", "ci_low", "ci_high", "chance", "advantage")


def _rows(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, ...) tensor or array -> (N, D) float64 array on the host."""
    t = torch.as_tensor(t).detach()
    return np.asarray(t.double().cpu().reshape(len(t), -1))


class LinkageScorer:
    """The linkage of any number of reconstructions of the same victims (:func:`linkage`,
    :func:`linkage_report`), their candidates drawn once; and the same game played in
    activation space (:meth:`match`).

    The candidates depend on the victims' beats, their classes (and patients, ``within``), the
    pool, ``k``, the seed and whether beats are z-normalised, never on the reconstructions: each
    (k, normalise, within) is drawn once, with the same random stream as :func:`linkage` (a
    fresh ``default_rng(seed)`` per draw), and every reconstruction scored against those draws in
    one vectorised pass. The results are those of one :func:`linkage` call per reconstruction,
    bit for bit.

    Two games: ``within=False`` (across patients), candidates are other beats of the victim's
    class from the whole pool; ``within=True`` (within patient), only from the victim's own
    group (its record: the same patient), so that telling a beat from its own patient's other
    beats of the class is measured apart from telling the patient (both are privacy losses).

    Shape:
        x: (N, L) or (N, 1, L); y: (N,); pool_x: (M, L) or (M, 1, L), pool_y: (M,); groups:
        (N,), pool_groups: (M,) (needed for ``within``).
    """

    #: victims per chunk of the vectorised distances ((chunk, k, L) float64 at once)
    CHUNK = 128

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        *,
        pool_x: torch.Tensor | np.ndarray | None = None,
        pool_y: torch.Tensor | np.ndarray | None = None,
        seed: int = 0,
        groups: torch.Tensor | np.ndarray | None = None,
        pool_groups: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        self.x = _rows(x)
        self.y = _ints(y)
        if len(self.y) != len(self.x):
            raise ValueError(f"linkage: beats {self.x.shape} and labels {self.y.shape} do not "
                             "match")
        self.px = self.x if pool_x is None else _rows(pool_x)
        self.py = self.y if pool_y is None else _ints(pool_y)
        self.g = None if groups is None else _ints(groups)
        self.pg = self.g if pool_groups is None and pool_x is None else (
            None if pool_groups is None else _ints(pool_groups))
        for name, a, n in (("groups", self.g, len(self.x)), ("pool_groups", self.pg,
                                                              len(self.px))):
            if a is not None and len(a) != n:
                raise ValueError(f"linkage: {name} has {len(a)} rows for {n} beats")
        self.seed = seed
        self._normalised: tuple[np.ndarray, np.ndarray] | None = None
        self._draws: dict[tuple[int, bool, bool], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def has_groups(self) -> bool:
        """Whether the victims' and the pool's groups are known (the within-patient game)."""
        return self.g is not None and self.pg is not None

    def _beats(self, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
        """(victims' beats, pool), z-normalised with ``normalise``."""
        if not normalise:
            return self.x, self.px
        if self._normalised is None:
            self._normalised = (znorm(self.x), znorm(self.px))
        return self._normalised

    def draws(self, k: int, normalise: bool, within: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows of the pool (N, k') (k' = min(k, the largest class, or class within a
        group)), -1 where a victim has fewer) and their validity mask (N, k')."""
        if k < 1:
            raise ValueError(f"linkage: k must be >= 1, got {k}")
        if within and not self.has_groups:
            raise ValueError("linkage within patient: the victims' and the pool's groups "
                             "(records) are not known")
        key = (k, normalise, within)
        if key not in self._draws:
            x, px = self._beats(normalise)
            rng = np.random.default_rng(self.seed)
            if within:
                assert self.g is not None and self.pg is not None
                who = [(int(c), int(g)) for c, g in zip(self.y, self.g, strict=True)]
                of_pool = zip(self.py.tolist(), self.pg.tolist(), strict=True)
            else:
                who = self.y.tolist()
                of_pool = iter(self.py.tolist())
            members: dict = {}
            for row, m in enumerate(of_pool):
                members.setdefault(m, []).append(row)
            members = {m: np.asarray(rows, dtype=np.int64) for m, rows in members.items()}
            first = {m: px[rows, 0] for m, rows in members.items()}  # (M_c,) per class
            none, no_first = np.empty(0, dtype=np.int64), np.empty(0)
            width = min(k, max((len(m) for m in members.values()), default=0))
            cand = np.full((len(x), width), -1, dtype=np.int64)
            for i in range(len(x)):
                rows = members.get(who[i], none)
                same = first.get(who[i], no_first) == x[i, 0]  # cheap first test; whole
                if same.any():  # rows only where it holds
                    same[same] = np.all(px[rows[same]] == x[i], axis=1)
                others = rows[~same]  # not the victim's own beat
                pick = (others if len(others) <= k
                        else others[rng.choice(len(others), k, replace=False)])
                cand[i, :len(pick)] = pick
            self._draws[key] = (cand, cand >= 0)
        return self._draws[key]

    def linkage(self, x_hat: torch.Tensor | np.ndarray, *, k: int,
                normalise: bool = False, within: bool = False) -> dict[str, float]:
        """:func:`linkage` of reconstructions ``x_hat`` (N, L) or (N, 1, L); ``within``: the
        candidates from the victim's own group only."""
        x_hat = _rows(x_hat)
        if x_hat.shape != self.x.shape:
            raise ValueError(f"linkage: beats {self.x.shape}, reconstructions {x_hat.shape} and "
                             f"labels {self.y.shape} do not match")
        x, px = self._beats(normalise)
        if normalise:
            x_hat = znorm(x_hat)
        return self._game(x_hat, x, px, k=k, normalise=normalise, within=within,
                          distance=_mean_square)

    def match(self, query: torch.Tensor | np.ndarray, own: torch.Tensor | np.ndarray,
              pool: torch.Tensor | np.ndarray, *, k: int, distance: Callable, within: bool = False
              ) -> dict[str, float]:
        """The linkage game played in another space (activation space): victim i is picked out
        when ``distance(query[i], own[i])`` is below that to every candidate's ``pool`` row,
        the candidates those of :meth:`linkage` (the same draws). ``own`` and ``pool`` are the
        victims' and the pool's beats mapped by the attacker (e.g. through a client model).

        Shape:
            query, own: (N, D); pool: (M, D); ``distance(a (c, D), b (c, k, D)) -> (c, k)``.
        """
        query, own, pool = _rows(query), _rows(own), _rows(pool)
        if own.shape[0] != len(self.x) or pool.shape[0] != len(self.px) or \
                query.shape != own.shape or pool.shape[1] != own.shape[1]:
            raise ValueError(f"linkage: queries {query.shape}, victims {own.shape} and pool "
                             f"{pool.shape} do not match {len(self.x)} victims and "
                             f"{len(self.px)} pool beats")
        return self._game(query, own, pool, k=k, normalise=False, within=within,
                          distance=distance)

    def _game(self, query: np.ndarray, own: np.ndarray, pool: np.ndarray, *, k: int,
              normalise: bool, within: bool, distance: Callable) -> dict[str, float]:
        cand, valid = self.draws(k, normalise, within)
        n = len(query)
        hits = np.zeros(n)
        for lo in range(0, n, self.CHUNK):
            sl = slice(lo, lo + self.CHUNK)
            d_own = distance(query[sl], own[sl, None, :])[:, 0]  # (c,)
            d = distance(query[sl], pool[np.maximum(cand[sl], 0)])  # (c, k')
            closer = ((d < d_own[:, None]) & valid[sl]).sum(1)  # (c,)
            tied = ((d == d_own[:, None]) & valid[sl]).sum(1)
            hits[sl] = np.where(closer > 0, 0.0, 1.0 / (1 + tied))
        chance = 1.0 / (valid.sum(1) + 1)
        acc, ch = float(hits.mean()), float(chance.mean())
        lo_ci, hi_ci = wilson_interval(float(hits.sum()), n)
        return {"accuracy": acc, "ci_low": lo_ci, "ci_high": hi_ci, "chance": ch,
                "advantage": (acc - ch) / (1 - ch) if ch < 1 else math.nan, "k": k, "n": n}

    def report(self, x_hat: torch.Tensor | np.ndarray, ks: tuple[int, ...] = LINKAGE_KS
               ) -> dict[str, dict[str, dict[str, float]]]:
        """:func:`linkage_report` of reconstructions ``x_hat``."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        games = [("linkage", False, False), ("linkage_znorm", True, False)]
        if self.has_groups:
            games.append(("linkage_within", False, True))
        for key, normalise, within in games:
            out[key] = {}
            for k in ks:
                r = self.linkage(x_hat, k=k, normalise=normalise, within=within)
                out[key][f"k{k}"] = {name: r[name] for name in LINKAGE_KEYS} | {"n": r["n"]}
        return out


def _ints(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(torch.as_tensor(a).cpu()).astype(np.int64)


def _mean_square(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared difference of rows a (c, D) and b (c, k, D): (c, k)."""
    return np.mean((b - a[:, None, :]) ** 2, axis=-1)


def linkage(
    x: torch.Tensor | np.ndarray,
    x_hat: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    k: int,
    pool_x: torch.Tensor | np.ndarray | None = None,
    pool_y: torch.Tensor | np.ndarray | None = None,
    normalise: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Re-identification: does a reconstruction pick out its own beat among ``k`` others of its
    class?

    For each victim i, ``k`` candidates are drawn without replacement from the pool's beats of
    class ``y[i]`` that differ from ``x[i]`` (the pool defaults to the victims' own beats). The
    victim is re-identified when its reconstruction is nearer (MSE; with ``normalise``, after
    per-beat z-normalisation) to ``x[i]`` than to every candidate; a tie at the minimum counts as
    the expected success of a random choice among the tied. A class with fewer than ``k`` other
    beats uses all of them, and the chance level is averaged accordingly. (Several
    reconstructions of the same victims: :class:`LinkageScorer` draws the candidates once.)

    Shape:
        x, x_hat: (N, L) or (N, 1, L); y: (N,). pool_x: (M, L) or (M, 1, L), pool_y: (M,).

    Returns:
        ``accuracy`` (top-1 rate), ``ci_low``/``ci_high`` (Wilson 95%), ``chance`` (the mean of
        1 / (k_i + 1)), ``advantage`` = (accuracy - chance) / (1 - chance), ``k`` and ``n``.
    """
    scorer = LinkageScorer(x, y, pool_x=pool_x, pool_y=pool_y, seed=seed)  # checks the shapes
    return scorer.linkage(x_hat, k=k, normalise=normalise)


def linkage_report(
    x: torch.Tensor | np.ndarray,
    x_hat: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    *,
    pool_x: torch.Tensor | np.ndarray | None = None,
    pool_y: torch.Tensor | np.ndarray | None = None,
    seed: int = 0,
    ks: tuple[int, ...] = LINKAGE_KS,
    groups: torch.Tensor | np.ndarray | None = None,
    pool_groups: torch.Tensor | np.ndarray | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """The linkage of one set of reconstructions as every result reports it: for k in ``ks``,
    ``{"k10": {accuracy, ci_low, ci_high, chance, advantage}, ...}`` by MSE (``linkage``), after
    per-beat z-normalisation (``linkage_znorm``) and, where the groups (records) are given,
    within patient (``linkage_within``); the same seed (the same candidates) for every k and
    distance, so that an attack and its priors are compared on equal draws.

    Shape:
        x, x_hat: (N, L) or (N, 1, L); y: (N,); pool_x: (M, L) or (M, 1, L), pool_y: (M,).
    """
    return LinkageScorer(x, y, pool_x=pool_x, pool_y=pool_y, seed=seed, groups=groups,
                         pool_groups=pool_groups).report(x_hat, ks)
