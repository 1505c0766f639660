"""The hooks through which a defense acts at the cut. Concrete defenses live in ``defenses/``.

A defense may transform the activations before they leave the client, add a client-side loss
term, or replace the client's optimizer (``attach``). Every hook defaults to doing nothing, so a
defense overrides only what it changes. Defenses compose: the trainer applies them in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from splitpriv.parties import Client


class Defense:
    """Base class: the identity defense."""

    name: str = "none"
    #: a defense that needs a topology other than the vanilla one names it (``"ushape"``)
    topology: str | None = None

    def configure(self, *, epochs: int, batch_size: int) -> None:
        """Called once with the run's plan, before anything is written; may refuse it."""

    def attach(self, client: Client) -> None:
        """Called once before training; may wrap the client's model or optimizer."""

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        """Map the activations (B, C, L) the client is about to send. Keep the autograd graph."""
        return a

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term on the client, from its inputs (B, 1, 128) and activations."""
        return None

    def end_epoch(self, epoch: int) -> None:
        """Called after every training epoch (accountants step here)."""

    def report(self) -> dict[str, Any]:
        """What the defense claims, for result.json (privacy accounting, parameters)."""
        return {"name": self.name}
