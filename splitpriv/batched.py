"""K runs of one architecture trained together as one stacked model (torch.func + vmap).

A sweep over seeds trains many copies of the same small network; each step of one copy is mostly
per-operation overhead on a CPU. Stacking the K copies' parameters and mapping the forward pass
over them with :func:`torch.func.vmap` turns K small convolutions into one grouped convolution,
so K runs cost far less than K times one run.

Each run keeps its own initial weights, its own batch order (its own generator, drawn exactly as
:class:`~splitpriv.trainer.SplitTrainer` draws it) and, since Adam is elementwise, its own
optimizer state inside the stacked tensors: run k's numbers are those of training it alone, up to
floating-point summation order (tested).

The split is kept: the server's forward starts from detached activations and the client's
backward from the gradient the server returns. No transcript is recorded and defenses are not
applied here; runs that need either use :class:`~splitpriv.trainer.SplitTrainer`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from splitpriv.models import SplitModels
from splitpriv.trainer import Accumulator, EpochStats, adam, batches


class _Stacked:
    """K copies of one module as stacked parameters and a stateless template."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        params, buffers = stack_module_state(list(modules))
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        self.template = copy.deepcopy(modules[0]).to("meta")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        def one(params, buffers, *xs):
            return functional_call(self.template, (params, buffers), xs)

        return vmap(one)(self.params, self.buffers, *inputs)

    def unstack(self, k: int) -> dict[str, torch.Tensor]:
        return {name: p[k].detach().clone() for name, p in self.params.items()}

    def train(self, mode: bool) -> None:
        self.template.train(mode)


class BatchedSplitTrainer:
    """Train K vanilla split runs (same architecture and data, different seeds) in one process.

    Args:
        runs: the K runs' models (vanilla topology), e.g. ``build_models(cfg, seed=s)``.
        x_train: (N, 1, 128) inputs shared by the runs; y_train: (N,) labels.
        seeds: the K batch-order seeds (as ``SplitTrainer(seed=...)``).
    """

    def __init__(
        self,
        runs: Sequence[SplitModels],
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        *,
        seeds: Sequence[int],
        lr: float = 1e-3,
        batch_size: int = 32,
    ) -> None:
        if len(runs) != len(seeds):
            raise ValueError(f"got {len(runs)} runs but {len(seeds)} seeds")
        if any(r.head is not None for r in runs):
            raise ValueError("BatchedSplitTrainer supports the vanilla topology only")
        self.client = _Stacked([r.client for r in runs])
        self.server = _Stacked([r.server for r in runs])
        self.client_opt = adam(lr)(list(self.client.params.values()))
        self.server_opt = adam(lr)(list(self.server.params.values()))
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.x, self.y, self.batch_size = x_train, y_train, batch_size
        self.k = len(runs)

    def train_epoch(self) -> list[EpochStats]:
        self.client.train(True)
        self.server.train(True)
        n, device = len(self.y), self.x.device
        per_run = [batches(n, self.batch_size, g, device) for g in self.generators]
        accs = [Accumulator(device) for _ in range(self.k)]
        for step_ids in zip(*per_run, strict=True):
            ids = torch.stack(step_ids)  # (K, B)
            a = self.client(self.x[ids])  # (K, B, 1, 128) -> (K, B, 16, 32)
            received = a.detach().requires_grad_()  # what the server gets
            logits = self.server(received)  # (K, B, 5)
            y = self.y[ids]  # (K, B)
            losses = nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), reduction="none"
            ).view_as(y).mean(1)  # (K,) each run's mean loss
            self.server_opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # runs do not share parameters: each gets its own gradient
            self.server_opt.step()
            self.client_opt.zero_grad(set_to_none=True)
            a.backward(received.grad)
            self.client_opt.step()
            for k, acc in enumerate(accs):
                acc.add(losses[k].detach(), logits[k].detach(), y[k])
        return [acc.stats() for acc in accs]

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096
    ) -> list[EpochStats]:
        self.client.train(False)
        self.server.train(False)
        accs = [Accumulator(x.device) for _ in range(self.k)]
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            logits = self.server(self.client(xb.expand(self.k, *xb.shape)))  # (K, B, 5)
            for k, acc in enumerate(accs):
                acc.add(nn.functional.cross_entropy(logits[k], yb), logits[k], yb)
        return [acc.stats() for acc in accs]

    def run_state(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Run k's weights, as ``{"client": state_dict, "server": state_dict}``."""
        return {"client": self.client.unstack(k), "server": self.server.unstack(k)}
