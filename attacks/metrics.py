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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from attacks.measures import dtw_pairs

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
