"""The training loop every learned attacker model shares: a regression by minibatch AdamW with
held-out early stopping (the decoders map activations to beats, the learned client of
``attacks.match`` beats to activations)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

#: a refit on every aux beat, from tuned weights with a fresh optimizer, runs at this fraction of
#: the tuned learning rate: at the full rate a few epochs moved a depth-8 client model's
#: re-identification of the victims from what the held-out beats measured (.99) to .85
REFIT_LR = 0.1


def fit_regression(net: nn.Module, in_fit: torch.Tensor, out_fit: torch.Tensor,
                   in_held: torch.Tensor, out_held: torch.Tensor, *, epochs: int, patience: int,
                   batch_size: int, lr: float, seed: int, weight_decay: float = 0.0,
                   head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   device: torch.device | str = "cpu") -> tuple[float, int]:
    """Train ``net`` in place (on ``device``) so that ``head(net(in))`` matches ``out`` in mean
    squared error: AdamW, minibatches in a seeded order, and held-out early stopping: the
    weights of the epoch (0 = as given) with the lowest held-out MSE are kept, training stops
    ``patience`` epochs after it. Without held-out pairs (``in_held`` empty) every epoch is run
    and the last weights are kept (a refit on everything). Returns (that MSE, that epoch).

    Shape:
        in_fit (M, ...), out_fit (M, ...); in_held (H, ...), out_held (H, ...).
    """
    head = head if head is not None else (lambda t: t)
    in_fit, out_fit, in_held, out_held = (t.to(device) for t in (in_fit, out_fit, in_held,
                                                                 out_held))
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    held = len(in_held) > 0

    @torch.no_grad()
    def held_mse() -> float:
        if not held:
            return float("nan")
        net.eval()
        pred = torch.cat([head(net(chunk)) for chunk in in_held.split(4096)])
        return float(nn.functional.mse_loss(pred, out_held))

    best, best_epoch, best_state = held_mse(), 0, copy.deepcopy(net.state_dict())
    for epoch in range(1, epochs + 1):
        net.train()
        for idx in torch.randperm(len(in_fit), generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = nn.functional.mse_loss(head(net(in_fit[idx])), out_fit[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not held:
            best_epoch = epoch
            continue
        mse = held_mse()
        if mse < best:
            best, best_epoch, best_state = mse, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if held:
        net.load_state_dict(best_state)
    net.eval()
    return best, best_epoch


__all__ = ["REFIT_LR", "fit_regression"]
