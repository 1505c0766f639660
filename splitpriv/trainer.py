"""The split trainer: drives a client and a server through a channel, epoch by epoch.

Training follows the paper (Abuadbba et al. 2020): Adam, lr 1e-3, batch 32, cross-entropy, the
training rows reshuffled every epoch. Data sits in memory as tensors on the device; no DataLoader:
each epoch gathers its rows once, in the shuffled order, and every batch is a slice of them. The
batch order comes from a CPU generator, so a seed trains on the same batches on every device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from splitpriv.channel import Channel, InProcessChannel
from splitpriv.defense import Defense
from splitpriv.metrics import ConfusionAccumulator, summary
from splitpriv.models import SplitModels
from splitpriv.optim import adam
from splitpriv.parties import Client, Server, begin_phase_of, cross_entropy, end_epoch_of
from splitpriv.servers import ServerBehaviour

#: rows per evaluation chunk: (512, 16, 128) float32 activations are 4 MiB; 4,096-row chunks
#: (33 MiB) went to fresh pages from the OS every time and made evaluation 3x slower here.
EVAL_BATCH = 512


def shuffled(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Row ids 0..n-1 in one epoch's order, drawn from ``generator`` (a CPU generator, so that a
    seed gives the same order on every device), on ``device``."""
    return torch.randperm(n, generator=generator).to(device)


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Shuffled row ids for one epoch, in batches (the last may be short, as in the paper)."""
    return shuffled(n, generator, device).split(batch_size)


@dataclass
class EpochStats:
    """One pass over a phase: mean loss, accuracy (percent) and, when the pass counted them, the
    confusion matrix ``confusion[true][predicted]`` (:mod:`splitpriv.metrics`)."""

    loss: float
    accuracy: float
    confusion: list[list[int]] | None = None
    #: the first step (1-based) whose loss was NaN or infinite, None when every one was finite
    first_nonfinite_step: int | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """``macro_f1`` and ``balanced_accuracy`` (percent; empty without a confusion matrix)."""
        if self.confusion is None:
            return {}
        s = summary(self.confusion)
        return {"macro_f1": s["macro_f1"], "balanced_accuracy": s["balanced_accuracy"]}


class Accumulator:
    """Loss, accuracy and confusion matrix of a pass, reduced when read.

    :meth:`add` only keeps references to the batch's (detached) loss, logits and labels: no kernel
    and no host sync per batch. Reading (:meth:`stats`, :attr:`loss`, :attr:`correct`) reduces
    them in one pass: the summed loss in the order of the batches, in float32, as a running sum
    on the device adds it (the same number bit for bit), and the confusion matrix from one
    ``bincount``. The added tensors must not be modified afterwards.
    """

    def __init__(self, device: torch.device, n_classes: int | None = None) -> None:
        self.device = torch.device(device)
        self.n_classes = n_classes
        self.n = 0
        self.steps = 0
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._logits: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._reduced: tuple[float, int | None, ConfusionAccumulator] | None = None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self._losses.append(loss.detach())
        self._logits.append(logits.detach())
        self._y.append(y)
        self._sizes.append(len(y))
        self.n += len(y)
        self.steps += 1
        self._reduced = None

    def _reduce(self) -> tuple[float, int | None, ConfusionAccumulator]:
        """(summed loss, first non-finite step or None, confusion counts on the device)."""
        if self._reduced is None:
            losses = torch.stack(self._losses)  # (steps,)
            sizes = torch.tensor(self._sizes, device=losses.device)
            # loss * batch size per step, then summed in step order in float32: the former
            # running ``total += loss * len(y)`` on the device (torch's sum would pair them)
            weighted = (losses * sizes).to(torch.float32)
            bad = (~torch.isfinite(losses)).nonzero()
            weighted, bad = weighted.cpu().numpy(), bad.cpu()
            total = float(np.add.accumulate(weighted)[-1])
            first_bad = int(bad[0]) + 1 if len(bad) else None
            logits = torch.cat(self._logits)
            confusion = ConfusionAccumulator(self.device, self.n_classes or logits.shape[1])
            confusion.add_logits(logits, torch.cat(self._y))
            self._reduced = (total, first_bad, confusion)
        return self._reduced

    @property
    def loss(self) -> torch.Tensor:
        """The summed loss (each batch's mean times its rows), a 0-d float32 device tensor."""
        total = self._reduce()[0] if self.steps else 0.0
        return torch.tensor(total, dtype=torch.float32, device=self.device)

    @property
    def correct(self) -> torch.Tensor:
        """Correctly classified rows so far (a 0-d device tensor)."""
        if not self.steps:
            return torch.zeros((), dtype=torch.long, device=self.device)
        return self._reduce()[2].correct()

    def stats(self) -> EpochStats:
        if self.n == 0:
            return EpochStats(float("nan"), float("nan"))
        total, first_bad, confusion = self._reduce()
        cm = confusion.matrix()
        return EpochStats(total / self.n, 100.0 * int(np.trace(cm)) / self.n, cm.tolist(),
                          first_bad)


def begin_phase(channel: Channel, parties: Sequence[Any], epoch: int, phase: str) -> None:
    """Before every pass over a phase: stamp the channel (the transcript keys on it), then each
    distinct plug-in's of the parties (a defense both parties hold is called once)."""
    channel.begin_phase(epoch, phase)
    begin_phase_of(parties, epoch, phase)


def eval_chunks(n: int, device: torch.device, batch_size: int = EVAL_BATCH) -> tuple:
    """Row ids 0..n-1 in evaluation chunks of ``batch_size``."""
    return torch.arange(n, device=device).split(batch_size)


@torch.no_grad()
def evaluate_client(
    client: Client, x: torch.Tensor, y: torch.Tensor, chunks: Sequence[torch.Tensor],
    serve: Callable[[torch.Tensor], None] | None = None,
) -> EpochStats:
    """Split inference of (x, y) from the client's side, chunk by chunk: send the activations,
    (``serve``: let the server answer, when it runs in this process), receive its output.

    The in-process trainer and the distributed client runner both evaluate through this."""
    client.train(False)
    acc = Accumulator(x.device)
    for chunk in chunks:
        client.send_eval(x[chunk], chunk)
        if serve is not None:
            serve(chunk)
        logits = client.receive_eval()
        acc.add(cross_entropy(logits, y[chunk]), logits, y[chunk])
    return acc.stats()


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
        behaviour: ServerBehaviour | None = None,
    ) -> None:
        self.device = x_train.device
        self.channel = channel if channel is not None else InProcessChannel()
        self.client = Client(
            models.client, x_train, y_train, self.channel, adam(lr),
            head=models.head, defenses=defenses,
        )
        self.server = Server(models.server, self.channel, adam(lr), defenses=defenses,
                             behaviour=behaviour)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.models = models

    @property
    def ushape(self) -> bool:
        return self.client.ushape

    def begin_phase(self, epoch: int, phase: str) -> None:
        begin_phase(self.channel, (self.client, self.server), epoch, phase)

    def train_step(self, ids: torch.Tensor, *, x: torch.Tensor | None = None,
                   y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of both parties; returns (loss, logits) from whichever party holds the loss.

        ``x``, ``y``: the batch's rows when the caller has gathered them (default: the client
        takes rows ``ids`` of its data)."""
        self.client.send_activations(ids, x=x, y=y)
        if self.ushape:
            self.server.forward(ids)
            loss, logits = self.client.head_step(ids, y=y)
            self.server.backward(ids)
        else:
            loss, logits = self.server.step(ids)
        self.client.apply_gradient()
        return loss, logits

    def train_epoch(self, epoch: int) -> EpochStats:
        self.begin_phase(epoch, "train")
        self.client.train(True)
        self.server.train(True)
        acc = Accumulator(self.device)
        perm = shuffled(len(self.client.y), self.generator, self.device)  # as batches() draws it
        # the epoch's rows in batch order, gathered once: each batch is then a contiguous slice
        x, y = self.client.x.index_select(0, perm), self.client.y.index_select(0, perm)
        steps = perm.split(self.batch_size)
        start = 0
        for ids in steps:
            rows = slice(start, start + len(ids))
            start = rows.stop
            loss, logits = self.train_step(ids, x=x[rows], y=y[rows])
            acc.add(loss, logits, y[rows])
        end_epoch_of((self.client, self.server), epoch)
        return acc.stats()

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str,
        batch_size: int = EVAL_BATCH,
    ) -> EpochStats:
        """Split inference: the client sends activations, the server returns its output."""
        self.begin_phase(epoch, phase)
        self.server.train(False)
        return evaluate_client(self.client, x, y, eval_chunks(len(y), self.device, batch_size),
                               serve=self.server.eval_step)

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
           "EVAL_BATCH", "adam", "begin_phase", "eval_chunks", "evaluate_client", "shuffled"]
