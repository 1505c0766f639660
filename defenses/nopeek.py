"""NoPeek: a client-side loss that decorrelates the activations from the raw input."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from defenses.registry import register
from splitpriv.dcor import distance_correlation, pairwise_distances
from splitpriv.defense import Defense, PrivacyClaim


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

    @classmethod
    def stacks(cls, config: Config) -> bool:
        """Whether K runs of NoPeek can train as one stacked model (``splitpriv.batched``), each
        with its own instance and alpha: yes, the loss is of its own run's inputs and
        activations."""
        return True

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

    def report(self) -> PrivacyClaim:
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="distance-correlation loss",
            scope="activations sent (decorrelated from the inputs in training)",
            conditions=["no formal guarantee: dCor is lowered on average over training "
                        "batches, not bounded per beat"],
            details={"alpha": self.config.alpha, "train_batch_dcor_per_epoch": self.epoch_dcor},
        )


__all__ = ["NoPeek", "distance_correlation", "pairwise_distances"]
