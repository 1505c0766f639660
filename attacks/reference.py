"""The evaluator's reference classifier: does a diagnosis survive the reconstruction?"""

from __future__ import annotations

import torch
from torch import nn

from splitpriv.models import ModelConfig, build_models
from splitpriv.trainer import train_monolithic


def train_reference_classifier(
    x: torch.Tensor, y: torch.Tensor, *, epochs: int = 5, seed: int = 0, depth: int = 2,
    net: nn.Module | None = None,
) -> nn.Module:
    """The paper's network (or ``net``, another run's architecture, freshly initialised),
    unsplit, trained on (x, y): beats the victims are not among.

    Shape:
        x: (N, 1, 128), y: (N,). The returned module maps (B, 1, 128) to logits (B, 5).
    """
    if net is None:
        net = build_models(ModelConfig(depth), seed=seed).monolithic()
    train_monolithic(net, x.float(), y.long(), epochs=epochs, seed=seed)
    net.eval()
    return net
