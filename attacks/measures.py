"""Dependence and distance measures, vectorised: distance correlation and DTW.

Distance correlation: :mod:`splitpriv.dcor` (re-exported here), the biased V-statistic estimator
that ``dcor.distance_correlation`` computes by default, and its bias-corrected square.

DTW: dtaidistance's C implementation (``dtw_cc.distance``) with its defaults: no window, no
penalty, squared-Euclidean local cost, the square root of the accumulated cost.
"""

from __future__ import annotations

import numpy as np
import torch

from splitpriv.dcor import (
    dcor_batches,
    dcor_from_distances,
    dcor_per_channel,
    dcor_samples,
    pairwise_euclidean,
    u_dcor_sqr_from_distances,
)

__all__ = [
    "dcor_batches", "dcor_from_distances", "dcor_per_channel", "dcor_samples", "dtw_pairs",
    "pairwise_euclidean", "paper_pool", "u_dcor_sqr_from_distances", "znorm",
]

def paper_pool(x: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
    """Average-pool beats to ``length`` samples, as the paper does before its dCor (128 -> 32).

    Shape:
        x: (B, L) or (B, 1, L) with L a multiple of ``length``. Returns (B, length) float64.
    """
    x = torch.as_tensor(x).to(torch.float64).reshape(len(x), -1)
    if x.shape[1] % length:
        raise ValueError(f"cannot average-pool {x.shape[1]} samples to {length}")
    return torch.nn.functional.avg_pool1d(x.unsqueeze(1), x.shape[1] // length).squeeze(1)


def znorm(x: np.ndarray) -> np.ndarray:
    """Z-normalise each series along the last axis (a constant series becomes zeros)."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(-1, keepdims=True)
    return (x - x.mean(-1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def dtw_pairs(
    x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, scale_free: bool = False
) -> np.ndarray:
    """DTW distance between ``x[b]`` and each ``y[b, c]`` (dtaidistance C, no window).

    Shape:
        x: (B, Lx), y: (B, C, Ly) or (B, Ly). Returns (B, C) or (B,) float64.

    Args:
        scale_free: z-normalise both series first.
    """
    x = np.ascontiguousarray(torch.as_tensor(x).double().numpy() if isinstance(x, torch.Tensor)
                             else np.asarray(x, dtype=np.float64))
    y = np.ascontiguousarray(torch.as_tensor(y).double().numpy() if isinstance(y, torch.Tensor)
                             else np.asarray(y, dtype=np.float64))
    squeeze = y.ndim == 2
    if squeeze:
        y = y[:, None, :]
    if x.ndim != 2 or y.ndim != 3 or len(x) != len(y):
        raise ValueError(
            f"dtw_pairs: expected x (B, Lx) and y (B, C, Ly), got {x.shape}, {y.shape}"
        )
    if scale_free:
        x, y = np.ascontiguousarray(znorm(x)), np.ascontiguousarray(znorm(y))
    out = np.empty(y.shape[:2])
    from dtaidistance import dtw_cc  # here: the registry imports fast

    distance = dtw_cc.distance
    for i in range(len(x)):
        xi = x[i]
        for c in range(y.shape[1]):
            out[i, c] = distance(xi, y[i, c])
    return out[:, 0] if squeeze else out
