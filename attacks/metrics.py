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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

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


def reconstruction_metrics(x: torch.Tensor | np.ndarray, x_hat: torch.Tensor | np.ndarray):
    """Per-beat reconstruction metrics.

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
    :func:`linkage_report`), their candidates drawn once.

    The candidates depend on the victims' beats, their classes, the pool, ``k``, the seed and
    whether beats are z-normalised, never on the reconstructions: each (k, normalise) is drawn
    once, with the same random stream as :func:`linkage` (a fresh ``default_rng(seed)`` per
    (k, normalise)), and every reconstruction scored against those draws in one vectorised
    pass. The results are those of one :func:`linkage` call per reconstruction, bit for bit.

    Shape:
        x: (N, L) or (N, 1, L); y: (N,); pool_x: (M, L) or (M, 1, L), pool_y: (M,).
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
    ) -> None:
        self.x = _rows(x)
        self.y = np.asarray(torch.as_tensor(y).cpu()).astype(np.int64)
        if len(self.y) != len(self.x):
            raise ValueError(f"linkage: beats {self.x.shape} and labels {self.y.shape} do not "
                             "match")
        self.px = self.x if pool_x is None else _rows(pool_x)
        self.py = (self.y if pool_y is None
                   else np.asarray(torch.as_tensor(pool_y).cpu()).astype(np.int64))
        self.seed = seed
        self._normalised: tuple[np.ndarray, np.ndarray] | None = None
        self._draws: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}

    def _beats(self, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
        """(victims' beats, pool), z-normalised with ``normalise``."""
        if not normalise:
            return self.x, self.px
        if self._normalised is None:
            self._normalised = (znorm(self.x), znorm(self.px))
        return self._normalised

    def draws(self, k: int, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows of the pool (N, k') (k' = min(k, the largest class), -1 where a
        victim's class has fewer) and their validity mask (N, k')."""
        if k < 1:
            raise ValueError(f"linkage: k must be >= 1, got {k}")
        key = (k, normalise)
        if key not in self._draws:
            x, px = self._beats(normalise)
            rng = np.random.default_rng(self.seed)
            members = {c: np.flatnonzero(self.py == c) for c in np.unique(self.py)}
            first = {c: px[rows, 0] for c, rows in members.items()}  # (M_c,) per class
            none, no_first = np.empty(0, dtype=np.int64), np.empty(0)
            width = min(k, max((len(m) for m in members.values()), default=0))
            cand = np.full((len(x), width), -1, dtype=np.int64)
            for i in range(len(x)):
                rows = members.get(self.y[i], none)
                same = first.get(self.y[i], no_first) == x[i, 0]  # cheap first test; whole
                if same.any():  # rows only where it holds
                    same[same] = np.all(px[rows[same]] == x[i], axis=1)
                others = rows[~same]  # not the victim's own beat
                pick = (others if len(others) <= k
                        else others[rng.choice(len(others), k, replace=False)])
                cand[i, :len(pick)] = pick
            self._draws[key] = (cand, cand >= 0)
        return self._draws[key]

    def linkage(self, x_hat: torch.Tensor | np.ndarray, *, k: int,
                normalise: bool = False) -> dict[str, float]:
        """:func:`linkage` of reconstructions ``x_hat`` (N, L) or (N, 1, L)."""
        x_hat = _rows(x_hat)
        if x_hat.shape != self.x.shape:
            raise ValueError(f"linkage: beats {self.x.shape}, reconstructions {x_hat.shape} and "
                             f"labels {self.y.shape} do not match")
        cand, valid = self.draws(k, normalise)
        x, px = self._beats(normalise)
        if normalise:
            x_hat = znorm(x_hat)
        n = len(x)
        hits = np.zeros(n)
        for lo in range(0, n, self.CHUNK):
            sl = slice(lo, lo + self.CHUNK)
            d_own = np.mean((x_hat[sl] - x[sl]) ** 2, axis=-1)  # (c,)
            d = np.mean((px[np.maximum(cand[sl], 0)] - x_hat[sl, None, :]) ** 2, axis=-1)
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
        for key, normalise in (("linkage", False), ("linkage_znorm", True)):
            out[key] = {}
            for k in ks:
                r = self.linkage(x_hat, k=k, normalise=normalise)
                out[key][f"k{k}"] = {name: r[name] for name in LINKAGE_KEYS} | {"n": r["n"]}
        return out


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
) -> dict[str, dict[str, dict[str, float]]]:
    """The linkage of one set of reconstructions as every result reports it: for k in ``ks``,
    ``{"k10": {accuracy, ci_low, ci_high, chance, advantage}, ...}`` by MSE (``linkage``) and
    after per-beat z-normalisation (``linkage_znorm``); the same seed (the same candidates) for
    every k and both distances, so that an attack and its priors are compared on equal draws.

    Shape:
        x, x_hat: (N, L) or (N, 1, L); y: (N,); pool_x: (M, L) or (M, 1, L), pool_y: (M,).
    """
    return LinkageScorer(x, y, pool_x=pool_x, pool_y=pool_y, seed=seed).report(x_hat, ks)
