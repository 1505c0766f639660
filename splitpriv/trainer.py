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
from splitpriv.parties import (
    Client,
    Server,
    begin_phase_of,
    cross_entropy,
    end_epoch_of,
    train_step,
)
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
            total = float(np.add.accumulate(weighted.cpu().numpy())[-1])
            bad = bad.cpu()
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
        assert cm is not None  # a pass with rows has counts
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
) -> list[EpochStats]:
    """Split inference of (x, y) from the client's side, chunk by chunk: send the activations,
    (``serve``: let the server answer, when it runs in this process), receive its output.
    Returns each run's stats (one, or K for a stacked client).

    The in-process and stacked trainers and the distributed client runner all evaluate through
    this."""
    client.train(False)
    accs = [Accumulator(x.device) for _ in range(len(client.runs or [None]))]
    for chunk in chunks:
        client.send_eval(x[chunk], chunk)
        if serve is not None:
            serve(chunk)
        logits = client.receive_eval()  # (B, 5), stacked (K, B, 5)
        yc = y[chunk]
        for acc, lk in zip(accs, logits if client.stacked else [logits], strict=True):
            acc.add(cross_entropy(lk, yc), lk, yc)
    return [acc.stats() for acc in accs]


class Driver:
    """What every in-process driver shares: the epoch (:meth:`train_epochs`: each run's rows in
    its own shuffled order, the :func:`~splitpriv.parties.train_step` of every batch, the
    plug-ins' epoch hooks) and the evaluation (:meth:`evaluate_runs`) of its runs, one
    (:class:`SplitTrainer`) or K stacked (:class:`splitpriv.batched.BatchedSplitTrainer`), over
    its :attr:`parties` and channel. The epoch loop over it is :func:`splitpriv.run.train_epochs`.
    """

    device: torch.device
    channel: Channel
    batch_size: int
    generators: list[torch.Generator]

    @property
    def parties(self) -> tuple[Client, Server]:
        """The client and server parties (stacked or not) the driver steps."""
        raise NotImplementedError

    @property
    def ushape(self) -> bool:
        return self.parties[0].ushape

    def begin_phase(self, epoch: int, phase: str) -> None:
        begin_phase(self.channel, self.parties, epoch, phase)

    def train_step(self, ids: torch.Tensor, *, x: torch.Tensor | None = None,
                   y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of both parties; returns (loss, logits) from whichever party holds the loss.

        ``x``, ``y``: the batch's rows when the caller has gathered them (default: the client
        takes rows ``ids`` of its data)."""
        client, server = self.parties
        out = train_step(ids, ushape=self.ushape, client=client, server=server, x=x, y=y)
        assert out is not None
        return out

    def train_epochs(self, epoch: int) -> list[EpochStats]:
        """One training epoch of every run: each run's rows in its own shuffled order (its
        generator, drawn as :func:`batches` draws it), batch by batch through
        :meth:`train_step`. Returns each run's stats."""
        client, server = self.parties
        self.begin_phase(epoch, "train")
        client.train(True)
        server.train(True)
        n = len(client.y)
        order = [shuffled(n, g, self.device) for g in self.generators]
        accs = [Accumulator(self.device) for _ in order]
        if not client.stacked:
            # the epoch's rows in batch order, gathered once: each batch is then a slice of them
            perm = order[0]
            x, y = client.x.index_select(0, perm), client.y.index_select(0, perm)
            steps = [(ids, slice(i, i + len(ids)))
                     for i, ids in zip(range(0, n, self.batch_size),
                                       perm.split(self.batch_size), strict=True)]
            for ids, rows in steps:
                loss, logits = self.train_step(ids, x=x[rows], y=y[rows])
                accs[0].add(loss, logits, y[rows])
        else:  # (K, B) ids a step: each run's batch gathered as the step comes (K copies of
            # an epoch's rows at once would be K times the data)
            for ids in torch.stack(order).split(self.batch_size, dim=1):
                x, y = client.x[ids], client.y[ids]  # (K, B, 1, 128), (K, B)
                loss, logits = self.train_step(ids, x=x, y=y)
                for k, acc in enumerate(accs):
                    acc.add(loss[k], logits[k], y[k])
        end_epoch_of(self.parties, epoch)
        return [acc.stats() for acc in accs]

    @torch.no_grad()
    def evaluate_runs(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str,
                      batch_size: int = EVAL_BATCH) -> list[EpochStats]:
        """Split inference of every run: the client sends activations, the server returns its
        output, in chunks of ``batch_size`` rows."""
        client, server = self.parties
        self.begin_phase(epoch, phase)
        server.train(False)
        return evaluate_client(client, x, y, eval_chunks(len(y), self.device, batch_size),
                               serve=server.eval_step)



class SplitTrainer(Driver):
    """Both parties of one run in one process, over an in-process channel (or any channel
    given)."""

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
        self.generators = [torch.Generator().manual_seed(seed)]
        self.models = models

    @property
    def generator(self) -> torch.Generator:
        return self.generators[0]

    @property
    def parties(self) -> tuple[Client, Server]:
        return self.client, self.server

    def train_epoch(self, epoch: int) -> EpochStats:
        """One training epoch (:meth:`train_epochs` of the one run)."""
        return self.train_epochs(epoch)[0]

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str,
        batch_size: int = EVAL_BATCH,
    ) -> EpochStats:
        """Split inference: the client sends activations, the server returns its output."""
        return self.evaluate_runs(x, y, epoch=epoch, phase=phase, batch_size=batch_size)[0]

    def run_weights(self, k: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        """Run k's weights in weights.pt's layout."""
        return self.models.state_dicts()

    def run_checkpoint(self, k: int = 0) -> dict[str, Any]:
        """Run k's resumable state (:meth:`state_dict`'s format)."""
        return self.state_dict()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {f"model.{k}": v for k, v in self.models.state_dicts().items()}
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


__all__ = ["Driver", "SplitTrainer", "train_monolithic", "Accumulator", "EpochStats", "batches",
           "EVAL_BATCH", "adam", "begin_phase", "eval_chunks", "evaluate_client", "shuffled"]
