"""K runs of one architecture trained together as one stacked model.

A sweep over seeds trains many copies of the same small network. Stacking the K copies'
parameters (:func:`torch.func.stack_module_state`) turns K small convolutions into one grouped
convolution and K small matrix products into one batched product, so K runs cost less than K
times one run (``benchmarks/speed.py`` measures how much). Layers other than the split model's
fall back to :func:`torch.func.vmap`.

Each run keeps its own initial weights, its own batch order (its own generator, drawn exactly as
:class:`~splitpriv.trainer.SplitTrainer` draws it) and, since Adam is elementwise, its own
optimizer state inside the stacked tensors: run k's numbers are those of training it alone, up to
floating-point summation order (tested: equal to 1e-5 after a few steps; over hundreds of steps
the rounding grows, as it does between two machines, so long runs agree in distribution, not
bit for bit).

The split is kept: the server's forward starts from detached activations and the client's
backward from the gradient the server returns. No transcript is recorded and defenses are not
applied here; runs that need either use :class:`~splitpriv.trainer.SplitTrainer`.

:func:`run_training_batched` trains the seeds of one undefended configuration this way and
writes each run's directory as :func:`splitpriv.run.run_training` does (the studies use it for
their undefended settings); a run killed mid-way resumes alone from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from splitpriv.channel import NOTHING
from splitpriv.io import resolve_device, torch_threads
from splitpriv.models import MaxPool2, SplitModels
from splitpriv.run import (
    RunDir,
    build_run_data,
    build_run_models,
    epoch_row,
    result_doc,
    row_counts,
    run_training,
)
from splitpriv.trainer import EVAL_BATCH, Accumulator, EpochStats, adam, batches


class _Stacked:
    """K copies of one module as stacked parameters (each ``(K, *shape)``) and a stateless
    template.

    The client's and server's layers (Conv1d, LeakyReLU, MaxPool2, Flatten, Linear, Softmax) run
    as explicit stacked operations: the K runs' convolutions as one grouped convolution over a
    (B, K * C, L) layout, their linear layers as one batched matrix product. Any other layer
    falls back to :func:`torch.func.vmap` over :func:`torch.func.functional_call`, which gives
    the same numbers with more per-call overhead.
    """

    _EXPLICIT = (nn.Conv1d, nn.LeakyReLU, MaxPool2, nn.Flatten, nn.Linear, nn.Softmax)

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        params, buffers = stack_module_state(list(modules))
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        self.template = copy.deepcopy(modules[0]).to("meta")
        layers = getattr(self.template, "layers", None)
        self.layers = (
            list(layers) if isinstance(layers, nn.Sequential) and not buffers
            and all(isinstance(m, self._EXPLICIT) for m in layers)
            and all(m.stride == (1,) and m.dilation == (1,) and m.groups == 1
                    and m.padding_mode == "zeros" for m in layers if isinstance(m, nn.Conv1d))
            and all(m.dim in (-1, 1) for m in layers if isinstance(m, nn.Softmax))
            else None
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, ...) -> (K, B, ...): run k's module on x[k]."""
        if self.layers is None:
            def one(params, buffers, xs):
                return functional_call(self.template, (params, buffers), (xs,))

            return vmap(one)(self.params, self.buffers, x)
        k, b = x.shape[:2]
        grouped = False  # False: (K, B, ...) layout; True: (B, K * C, L)
        for i, layer in enumerate(self.layers):
            w, bias = self.params.get(f"layers.{i}.weight"), self.params.get(f"layers.{i}.bias")
            if isinstance(layer, nn.Conv1d):
                if not grouped:
                    x, grouped = x.transpose(0, 1).reshape(b, -1, x.shape[-1]), True
                x = nn.functional.conv1d(  # (B, K * Cin, L) -> (B, K * Cout, L')
                    x, w.flatten(0, 1), None if bias is None else bias.flatten(),
                    padding=layer.padding, groups=k,
                )
            elif isinstance(layer, nn.LeakyReLU) or (isinstance(layer, MaxPool2) and grouped):
                x = layer(x)  # elementwise, or pairs along L: either layout
            elif isinstance(layer, nn.Softmax) and not grouped:
                x = x.softmax(-1)  # (K, B, classes): the model's Softmax(dim=1) on (B, classes)
            else:
                if grouped:  # (B, K * C, L) -> (K, B, C, L)
                    x, grouped = x.view(b, k, -1, x.shape[-1]).transpose(0, 1), False
                if isinstance(layer, nn.Flatten):
                    x = x.flatten(2)  # (K, B, C, L) -> (K, B, C * L)
                elif isinstance(layer, nn.Linear):  # (K, B, in) -> (K, B, out)
                    x = (torch.bmm(x, w.transpose(1, 2)) if bias is None
                         else torch.baddbmm(bias.unsqueeze(1), x, w.transpose(1, 2)))
                elif isinstance(layer, MaxPool2):  # on (K, B, C, L)
                    x = layer(x.flatten(0, 1)).unflatten(0, (k, b))
                else:  # a Softmax on (K, B, C, L), over C (dim 1) or L (dim -1) of each run
                    x = x.softmax(2 if layer.dim == 1 else -1)
        if grouped:
            x = x.view(b, k, -1, x.shape[-1]).transpose(0, 1)  # -> (K, B, C, L)
        return x

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
        loss_sum = torch.zeros(self.k, device=device, dtype=torch.float64)
        correct = torch.zeros(self.k, device=device, dtype=torch.long)
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
            loss_sum += losses.detach() * y.shape[1]
            correct += (logits.detach().argmax(-1) == y).sum(1)
        return [EpochStats(loss / n, 100.0 * c / n)
                for loss, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
    ) -> list[EpochStats]:
        """Each run's loss and accuracy on (x, y), in chunks of ``batch_size`` rows (default:
        EVAL_BATCH / K, so that the K runs' activations together stay as small)."""
        batch_size = batch_size or max(32, EVAL_BATCH // self.k)
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

    def trainer_state(self, k: int) -> dict[str, Any]:
        """Run k's state in :meth:`splitpriv.trainer.SplitTrainer.state_dict`'s format, so that
        a SplitTrainer resumes it: weights, its slice of the Adam state, its batch generator."""

        def adam_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
            sd = opt.state_dict()
            state = {i: {"step": s["step"].clone(), "exp_avg": s["exp_avg"][k].clone(),
                         "exp_avg_sq": s["exp_avg_sq"][k].clone()} for i, s in sd["state"].items()}
            return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

        weights = self.run_state(k)
        return {
            "model.client": weights["client"], "model.server": weights["server"],
            "opt.client": adam_state(self.client_opt), "opt.server": adam_state(self.server_opt),
            "generator": self.generators[k].get_state(),
        }


def batchable(config) -> bool:
    """Whether a run can be trained in a batch of seeds: no defense, labels crossing (vanilla),
    no transcript, an honest server."""
    return (not config.defenses and config.topology == "vanilla"
            and config.record_policy() == NOTHING
            and config.server.partition(":")[0].strip().lower() == "honest")


def run_training_batched(configs: Sequence, out_dirs: Sequence[str | Path], *,
                         progress: bool = True) -> list[dict[str, Any]]:
    """Train runs that differ only in their seed together, each into its own directory.

    Each directory gets what :func:`splitpriv.run.run_training` writes (config.json,
    metrics.jsonl, best.pt, checkpoint.pt every epoch, weights.pt, result.json); a finished run
    is skipped, a run with a checkpoint resumes alone (``run_training``), and so does a single
    pending run. The numbers equal training each run alone up to floating-point summation order
    (tested); result.json says ``"batched": K`` and has no ``wire`` count (no channel is run).

    Args:
        configs: :class:`splitpriv.run.TrainConfig` s, all :func:`batchable`, equal but for seed.
        out_dirs: one run directory per config.
    """
    if len(configs) != len(out_dirs):
        raise ValueError(f"got {len(configs)} configs but {len(out_dirs)} run directories")
    for c in configs:
        if not batchable(c):
            raise ValueError(f"run_training_batched: {c} has defenses, a U-shape, a "
                             "transcript or a server behaviour")
        if dataclasses.replace(c, seed=0) != dataclasses.replace(configs[0], seed=0):
            raise ValueError("run_training_batched: the configs differ in more than the seed")
    run_dirs = [RunDir(d, c) for c, d in zip(configs, out_dirs, strict=True)]
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for i, (c, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
        done = run_dir.finished()
        if done is not None:
            results[i] = done
        elif run_dir.has_checkpoint:
            results[i] = run_training(c, run_dir.path, progress=progress)
        else:
            pending.append(i)
    if len(pending) == 1:
        results[pending[0]] = run_training(configs[pending[0]], run_dirs[pending[0]].path,
                                           progress=progress)
    elif pending:
        with torch_threads(configs[0].threads):
            trained = _train_together([configs[i] for i in pending],
                                      [run_dirs[i] for i in pending], progress)
        results.update(zip(pending, trained, strict=True))
    return [results[i] for i in range(len(configs))]


def _train_together(configs: Sequence, run_dirs: Sequence[RunDir], progress: bool
                    ) -> list[dict[str, Any]]:
    """The epoch loop of :func:`splitpriv.run.run_training`, for K fresh runs at once."""
    from tqdm.auto import tqdm

    device = resolve_device(configs[0].device)
    for run_dir in run_dirs:
        run_dir.start(resumable=False)
    data = build_run_data(configs[0], device)
    trainer = BatchedSplitTrainer(
        [build_run_models(c, "vanilla", device) for c in configs],
        data.x_train, data.y_train, seeds=[c.seed for c in configs],
        lr=configs[0].lr, batch_size=configs[0].batch_size,
    )
    k = len(configs)
    has_val = len(data.y_val) > 0
    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    name = f"{run_dirs[0].path.name} (+{k - 1} seeds batched)"
    bar = tqdm(range(1, configs[0].epochs + 1), desc=f"train {name}", disable=not progress,
               unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        train = trainer.train_epoch()
        train_seconds = (time.perf_counter() - t0) / k  # each run's share
        test = trainer.evaluate(data.x_test, data.y_test)
        val = trainer.evaluate(data.x_val, data.y_val) if has_val else [None] * k
        seconds = (time.perf_counter() - t0) / k
        for j in range(k):
            histories[j].append(epoch_row(epoch, train[j], test[j], val[j], train_seconds,
                                          seconds))
            run_dirs[j].save_epoch(histories[j], lambda j=j: trainer.run_state(j),
                                   lambda j=j: trainer.trainer_state(j))
        bar.set_postfix(test=f"{test[0].accuracy:.2f}")
    results = []
    for j, (c, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
        run_dir.save_weights(trainer.run_state(j))
        results.append(run_dir.finish(result_doc(
            c, histories[j], rows=row_counts(data), device=device, card=data.card,
            topology="vanilla", defenses=[], batched=k)))
    return results

