"""The split trainer: drives a client and a server through a channel, epoch by epoch.

Training follows the paper (Abuadbba et al. 2020): Adam, lr 1e-3, batch 32, cross-entropy, the
training rows reshuffled every epoch. Data sits in memory as tensors on the device; no DataLoader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from splitpriv.channel import Channel, InProcessChannel
from splitpriv.defense import Defense
from splitpriv.models import SplitModels
from splitpriv.optim import FlatAdam
from splitpriv.parties import Client, OptimizerFactory, Server, cross_entropy

#: rows per evaluation chunk: (512, 16, 128) float32 activations are 4 MiB; 4,096-row chunks
#: (33 MiB) went to fresh pages from the OS every time and made evaluation 3x slower here.
EVAL_BATCH = 512


def adam(lr: float) -> OptimizerFactory:
    """The paper's optimizer: Adam (torch defaults otherwise), as :class:`FlatAdam`."""
    return lambda params: FlatAdam(params, lr=lr)


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Shuffled row ids for one epoch, in batches (the last may be short, as in the paper)."""
    perm = torch.randperm(n, generator=generator).to(device)
    return perm.split(batch_size)


@dataclass
class EpochStats:
    loss: float
    accuracy: float


class Accumulator:
    """Sums loss and correct counts on the device; one host sync when read."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.n = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.n += len(y)

    def stats(self) -> EpochStats:
        if self.n == 0:
            return EpochStats(float("nan"), float("nan"))
        return EpochStats(self.loss.item() / self.n, 100.0 * self.correct.item() / self.n)


class SplitTrainer:
    """Both parties in one process, over an in-process channel (or any channel given)."""

    def __init__(
        self,
        models: SplitModels,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        *,
        lr: float = 1e-3,
        batch_size: int = 32,
        seed: int = 0,
        channel: Channel | None = None,
        defenses: Sequence[Defense] = (),
    ) -> None:
        self.device = x_train.device
        self.channel = channel if channel is not None else InProcessChannel()
        self.client = Client(
            models.client, x_train, y_train, self.channel, adam(lr),
            head=models.head, defenses=defenses,
        )
        self.server = Server(models.server, self.channel, adam(lr))
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.models = models

    @property
    def ushape(self) -> bool:
        return self.client.ushape

    def _set_phase(self, epoch: int, phase: str) -> None:
        if isinstance(self.channel, InProcessChannel):
            self.channel.epoch, self.channel.phase = epoch, phase

    def train_step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of both parties; returns (loss, logits) from whichever party holds the loss."""
        self.client.send_activations(ids)
        if self.ushape:
            self.server.forward(ids)
            loss, logits = self.client.head_step(ids)
            self.server.backward(ids)
        else:
            loss, logits = self.server.step(ids)
        self.client.apply_gradient()
        return loss, logits

    def train_epoch(self, epoch: int) -> EpochStats:
        self._set_phase(epoch, "train")
        self.client.train(True)
        self.server.train(True)
        acc = Accumulator(self.device)
        y = self.client.y
        for ids in batches(len(y), self.batch_size, self.generator, self.device):
            loss, logits = self.train_step(ids)
            acc.add(loss, logits, y[ids])
        for d in self.client.defenses:
            d.end_epoch(epoch)
        return acc.stats()

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str,
        batch_size: int = EVAL_BATCH,
    ) -> EpochStats:
        """Split inference: the client sends activations, the server returns its output."""
        self._set_phase(epoch, phase)
        self.client.train(False)
        self.server.train(False)
        acc = Accumulator(self.device)
        ids = torch.arange(len(y), device=self.device)
        for chunk in ids.split(batch_size):
            self.client.send_eval(x[chunk], chunk)
            self.server.eval_step(chunk)
            logits = self.client.receive_eval()
            acc.add(cross_entropy(logits, y[chunk]), logits, y[chunk])
        return acc.stats()

    def state_dict(self) -> dict:
        state = {f"model.{k}": v for k, v in self.models.state_dicts().items()}
        state["opt.client"] = self.client.optimizer.state_dict()
        state["opt.server"] = self.server.optimizer.state_dict()
        if self.client.head_optimizer is not None:
            state["opt.head"] = self.client.head_optimizer.state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.models.modules().items():
            m.load_state_dict(state[f"model.{k}"])
        self.client.optimizer.load_state_dict(state["opt.client"])
        self.server.optimizer.load_state_dict(state["opt.server"])
        if self.client.head_optimizer is not None:
            self.client.head_optimizer.load_state_dict(state["opt.head"])
        self.generator.set_state(state["generator"])


def train_monolithic(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    max_steps: int | None = None,
) -> EpochStats:
    """The same network trained unsplit, in the same batch order; the reference for split runs."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = adam(lr)(list(net.parameters()))
    net.train(True)
    acc = Accumulator(x.device)
    step = 0
    for _ in range(epochs):
        for ids in batches(len(y), batch_size, generator, x.device):
            if max_steps is not None and step >= max_steps:
                return acc.stats()
            logits = net(x[ids])
            loss = cross_entropy(logits, y[ids])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            acc.add(loss.detach(), logits.detach(), y[ids])
            step += 1
    return acc.stats()


__all__ = ["SplitTrainer", "train_monolithic", "Accumulator", "EpochStats", "batches",
           "EVAL_BATCH"]
