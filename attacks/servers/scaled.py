"""The smallest malicious server: it returns a multiple of the honest cut gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splitpriv.servers import ServerBehaviour, register_server


@register_server("scaled")
class ScaledGradient(ServerBehaviour):
    """Returns ``factor * g`` for the honest d loss / d activations ``g``.

    ``factor=1`` is the honest server; ``factor=0`` freezes the client's layers (they receive no
    signal) while the server's own layers keep training; a negative factor makes the client
    ascend the loss. The plumbing test of the server-behaviour hooks, and a template for real
    adversaries (feature-space hijacking, Pasquini et al., CCS 2021).

    Shape:
        a, g: (B, C, L) -> (B, C, L).
    """

    follows_protocol = False

    @dataclass
    class Config:
        """Parameters of ``scaled``.

        Attributes:
            factor: the multiple of the honest gradient returned (finite).
        """

        factor: float = 1.0

        def __post_init__(self) -> None:
            if not math.isfinite(self.factor):
                raise ValueError(f"server 'scaled': factor must be finite, got {self.factor}")

    def cut_gradient(self, a: torch.Tensor, g: torch.Tensor, ids: torch.Tensor, *,
                     y: torch.Tensor | None) -> torch.Tensor:
        return self.config.factor * g


__all__ = ["ScaledGradient"]
