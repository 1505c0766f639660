"""NoPeek: a client-side loss that decorrelates the activations from the raw input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from defenses.registry import register
from splitpriv.defense import Defense

_TINY = 1e-24  # inside the square root: distance 0 gets gradient 0, not NaN


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, differentiable everywhere. Shape: (n, d) -> (n, n)."""
    diff = x[:, None, :] - x[None, :, :]  # (n, n, d)
    return torch.sqrt(diff.pow(2).sum(-1) + _TINY)


def _double_centre(d: torch.Tensor) -> torch.Tensor:
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (Szekely et al. 2007; the V-statistic ``dcor`` computes).

    Differentiable in both arguments. Rows are samples; every other dimension is flattened.

    Shape:
        x: (n, ...), z: (n, ...) -> scalar in [0, 1].

    Example (worked by hand): z = 2 x + 1 for any non-constant x gives exactly 1.
    """
    if len(x) != len(z):
        raise ValueError(f"x and z need the same number of rows, got {len(x)} and {len(z)}")
    a = _double_centre(pairwise_distances(x.flatten(1)))  # (n, n)
    b = _double_centre(pairwise_distances(z.flatten(1)))
    dcov2_xz = (a * b).mean()
    denom = torch.sqrt((a * a).mean() * (b * b).mean()).clamp_min(1e-30)
    return torch.sqrt((dcov2_xz / denom).clamp_min(0.0) + _TINY)


@register("nopeek")
class NoPeek(Defense):
    """NoPeek (Vepakomma et al., ICDMW 2020, arXiv 2008.09161): the client adds
    ``alpha * dCor(batch inputs, batch activations)`` to the cross-entropy it trains on, so its
    layers learn activations that keep the task's information but less of the input's.

    The distance correlation is computed over the minibatch (inputs (B, 128) against activations
    (B, 512), as sent, after earlier defenses in the list); its gradient is backpropagated
    together with the server's gradient. No formal guarantee is claimed.

    Shape:
        inputs (B, 1, 128), activations (B, C, L) -> scalar loss.
    """

    @dataclass
    class Config:
        """Parameters of ``nopeek``.

        Attributes:
            alpha: weight of the distance-correlation term (>= 0; 0 trains as without NoPeek).
        """

        alpha: float = 1.0

        def __post_init__(self) -> None:
            if not self.alpha >= 0:
                raise ValueError(f"defense 'nopeek': alpha must be >= 0, got {self.alpha}")

    def __init__(self, config: Config) -> None:
        self.config = config
        self._sum = torch.zeros(())
        self._batches = 0
        self.epoch_dcor: list[float] = []

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        if len(x) < 2:  # one beat has no distance correlation
            return None
        dcor = distance_correlation(x, a)
        self._sum = self._sum.to(dcor.device) + dcor.detach()
        self._batches += 1
        return self.config.alpha * dcor

    def end_epoch(self, epoch: int) -> None:
        if self._batches:
            self.epoch_dcor.append(self._sum.item() / self._batches)
        self._sum, self._batches = torch.zeros(()), 0

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.config.alpha, "formal_guarantee": False,
                "train_batch_dcor_per_epoch": self.epoch_dcor}


__all__ = ["NoPeek", "distance_correlation", "pairwise_distances"]
