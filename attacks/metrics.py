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
    beats uses all of them, and the chance level is averaged accordingly.

    Shape:
        x, x_hat: (N, L) or (N, 1, L); y: (N,). pool_x: (M, L) or (M, 1, L), pool_y: (M,).

    Returns:
        ``accuracy`` (top-1 rate), ``ci_low``/``ci_high`` (Wilson 95%), ``chance`` (the mean of
        1 / (k_i + 1)), ``advantage`` = (accuracy - chance) / (1 - chance), ``k`` and ``n``.
    """
    x = np.asarray(torch.as_tensor(x).double().reshape(len(x), -1))
    x_hat = np.asarray(torch.as_tensor(x_hat).double().reshape(len(x_hat), -1))
    y = np.asarray(torch.as_tensor(y)).astype(np.int64)
    if x.shape != x_hat.shape or len(y) != len(x):
        raise ValueError(f"linkage: beats {x.shape}, reconstructions {x_hat.shape} and labels "
                         f"{y.shape} do not match")
    if k < 1:
        raise ValueError(f"linkage: k must be >= 1, got {k}")
    px = x if pool_x is None else np.asarray(torch.as_tensor(pool_x).double().reshape(
        len(pool_x), -1))
    py = y if pool_y is None else np.asarray(torch.as_tensor(pool_y)).astype(np.int64)
    if normalise:
        x, x_hat, px = znorm(x), znorm(x_hat), znorm(px)
    rng = np.random.default_rng(seed)
    by_class = {c: px[py == c] for c in np.unique(py)}  # class -> (M_c, L) beats
    empty = np.empty((0, px.shape[1]))
    hits, chance = np.zeros(len(x)), np.zeros(len(x))
    for i in range(len(x)):
        members = by_class.get(y[i], empty)
        same = members[:, 0] == x[i, 0]  # cheap first test; the whole row only where it holds
        same[same] = np.all(members[same] == x[i], axis=1)
        others = members[~same]  # not the victim's own beat
        cand = others if len(others) <= k else others[rng.choice(len(others), k, replace=False)]
        d_own = np.mean((x_hat[i] - x[i]) ** 2)
        d = np.mean((cand - x_hat[i]) ** 2, axis=1)  # (k_i,)
        closer, tied = int((d < d_own).sum()), int((d == d_own).sum())
        hits[i] = 0.0 if closer else 1.0 / (1 + tied)
        chance[i] = 1.0 / (len(cand) + 1)
    n = len(x)
    acc, ch = float(hits.mean()), float(chance.mean())
    lo, hi = wilson_interval(float(hits.sum()), n)
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi, "chance": ch,
            "advantage": (acc - ch) / (1 - ch) if ch < 1 else math.nan, "k": k, "n": n}


#: the candidate counts of the reported linkage
LINKAGE_KS = (10, 100)
LINKAGE_KEYS = ("accuracy", "ci_low", "ci_high", "chance", "advantage")


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
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, normalise in (("linkage", False), ("linkage_znorm", True)):
        out[key] = {}
        for k in ks:
            r = linkage(x, x_hat, y, k=k, pool_x=pool_x, pool_y=pool_y, normalise=normalise,
                        seed=seed)
            out[key][f"k{k}"] = {name: r[name] for name in LINKAGE_KEYS} | {"n": r["n"]}
    return out
