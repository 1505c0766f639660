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

The split is kept, and so is the protocol: the parties are :class:`~splitpriv.parties.Client`
and :class:`~splitpriv.parties.Server` over the stacked modules, every batch goes through the one
:func:`~splitpriv.parties.train_step`, and the epoch, evaluation and epoch loop are those of every
in-process driver (:class:`~splitpriv.trainer.Driver`, :func:`splitpriv.run.train_epochs`). Each
run's transcript records what crossed its channel in training (a
:class:`~splitpriv.channel.StackedChannel` gives run k its slice of every message); runs whose
transcript asks for evaluation messages train alone (:func:`records_in_training_only`).

Defenses that declare they stack (:meth:`splitpriv.defense.Defense.stacks`: paper or formal
activation DP without a release budget, NoPeek, ``ushape``) act per run: each run has its own
instances, attached to a :class:`~splitpriv.parties.RunView` of its run, and every hook of run
k's acts on run k's slice (B, ...) of the stacked tensors, in the order one run's would; their
noise comes from each instance's own generator, so run k draws the noise it draws alone, and
each run's accounting (``report()``) is its own. Runs that need an evaluation transcript, a
server behaviour that does not stack or a defense that does not (DP-SGD, label defenses, a
release budget, SplitGuard) train alone.

:func:`run_training_batched` trains the runs of one :func:`batch_key` this way (seeds and the
defenses' parameters may differ) and writes each run's directory as
:func:`splitpriv.run.run_training` does; a run killed mid-way resumes alone from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from splitpriv.channel import Kind, RecordPolicy, StackedChannel, Transcript
from splitpriv.defense import Defense
from splitpriv.fast import fast_kernels
from splitpriv.io import resolve_device, torch_threads
from splitpriv.models import MaxPool2, SplitModels, same_conv, same_conv1d
from splitpriv.parties import Client, RunView, Server
from splitpriv.run import (
    LoopRun,
    RunDir,
    build_behaviour,
    build_defenses,
    build_run_data,
    build_run_models,
    defense_reports,
    prepare_defenses,
    resolve_topology,
    result_doc,
    row_counts,
    run_training,
    stateful_plugins,
    train_epochs,
)
from splitpriv.trainer import EVAL_BATCH, Driver, EpochStats, adam


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
            # the layer's stacked weight (K, *shape) and bias, for the layers that have them
            w = self.params.get(f"layers.{i}.weight", torch.empty(0))
            bias = self.params.get(f"layers.{i}.bias")
            if isinstance(layer, nn.Conv1d):
                if not grouped:
                    x, grouped = x.transpose(0, 1).reshape(b, -1, x.shape[-1]), True
                if same_conv(layer):  # (B, K * Cin, L) -> (B, K * Cout, L)
                    assert bias is not None  # same_conv: a bias
                    x = same_conv1d(x, w.flatten(0, 1), bias.flatten(), groups=k)
                else:
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
                    # as (w x^T)^T: the weight's gradient then comes out of its bmm as
                    # (K, out, in), contiguous; x w^T gave it transposed, and accumulating it
                    # copied it (3.5 ms of a 17 ms step for 10 runs here)
                    x = (torch.bmm(w, x.transpose(1, 2)) if bias is None
                         else torch.baddbmm(bias.unsqueeze(2), w, x.transpose(1, 2))
                         ).transpose(1, 2)
                elif isinstance(layer, MaxPool2):  # on (K, B, C, L)
                    x = layer(x.flatten(0, 1)).unflatten(0, (k, b))
                else:  # a Softmax on (K, B, C, L), over C (dim 1) or L (dim -1) of each run
                    x = x.softmax(2 if layer.dim == 1 else -1)
        if grouped:
            x = x.view(b, k, -1, x.shape[-1]).transpose(0, 1)  # -> (K, B, C, L)
        return x

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters (K, *shape), for the party's optimizer."""
        return list(self.params.values())

    def unstack(self, k: int) -> dict[str, torch.Tensor]:
        return {name: p[k].detach().clone() for name, p in self.params.items()}

    def train(self, mode: bool) -> None:
        self.template.train(mode)


class BatchedSplitTrainer(Driver):
    """Train K split runs (same architecture, topology and data; their own seeds and,
    optionally, defenses) in one process.

    The parties are :class:`~splitpriv.parties.Client` and :class:`~splitpriv.parties.Server`
    over the stacked modules (``runs=``: run k's defenses act on its slice), the channel a
    :class:`~splitpriv.channel.StackedChannel` recording each run's messages into its own
    transcript, and the epoch and evaluation are :class:`~splitpriv.trainer.SplitTrainer`'s: the
    same :func:`~splitpriv.parties.train_step` for every batch. U-shaped runs (each with a head,
    ``build_models(cfg, ushape=True, seed=s)``) stack their heads too.

    Args:
        runs: the K runs' models, all vanilla or all U-shaped, e.g.
            ``build_models(cfg, seed=s)``.
        x_train: (N, 1, 128) inputs shared by the runs; y_train: (N,) labels.
        seeds: the K batch-order seeds (as ``SplitTrainer(seed=...)``).
        defenses: each run's defenses (default: none), its own instances, every one stacking
            (``Defense.stacks``). They are attached here as :class:`~splitpriv.trainer.SplitTrainer`
            attaches them after ``build_models(cfg, seed=s)``, to a
            :class:`~splitpriv.parties.RunView` of their run: a noise seed left to the run
            (``dp``'s ``seed=None``) is the run's seed.
        transcripts: each run's transcript (default: none).
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
        defenses: Sequence[Sequence[Defense]] | None = None,
        transcripts: Sequence[Transcript] | None = None,
    ) -> None:
        if len(runs) != len(seeds):
            raise ValueError(f"got {len(runs)} runs but {len(seeds)} seeds")
        if len({r.head is None for r in runs}) > 1:
            raise ValueError("BatchedSplitTrainer: the runs mix the vanilla and U-shaped "
                             "topologies")
        self.defenses = ([list(ds) for ds in defenses] if defenses is not None
                         else [[] for _ in runs])
        if len(self.defenses) != len(runs):
            raise ValueError(f"got {len(runs)} runs but {len(self.defenses)} defense lists")
        instances = [d for ds in self.defenses for d in ds]
        if len({id(d) for d in instances}) != len(instances):
            raise ValueError("BatchedSplitTrainer: every run needs its own defense instances")
        self.defended = bool(instances)
        self.transcripts = list(transcripts) if transcripts is not None else []
        if self.transcripts and len(self.transcripts) != len(runs):
            raise ValueError(f"got {len(runs)} runs but {len(self.transcripts)} transcripts")
        self.device = x_train.device
        self.k = len(runs)
        self.client = _Stacked([r.client for r in runs])
        self.server = _Stacked([r.server for r in runs])
        heads = [r.head for r in runs if r.head is not None]
        self.head = _Stacked(heads) if heads else None
        self.channel = StackedChannel(self.transcripts)
        self._parties = (  # they refuse a defense that does not stack, before any is attached
            Client(self.client, x_train, y_train, self.channel, adam(lr), head=self.head,
                   runs=self.defenses),
            Server(self.server, self.channel, adam(lr), runs=self.defenses),
        )
        for ds, seed in zip(self.defenses, seeds, strict=True):
            with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
                torch.default_generator.manual_seed(seed)  # torch.initial_seed(): the run's seed
                for d in ds:
                    d.attach(RunView(x_train, y_train, ds, runs[0].head is not None))
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.x, self.y, self.batch_size = x_train, y_train, batch_size
        self.epoch = 0  # the last training epoch begun

    @property
    def parties(self) -> tuple[Client, Server]:
        return self._parties

    @property
    def client_opt(self) -> torch.optim.Optimizer:
        return self._parties[0].optimizer

    @property
    def server_opt(self) -> torch.optim.Optimizer:
        return self._parties[1].optimizer

    @property
    def head_opt(self) -> torch.optim.Optimizer | None:
        return self._parties[0].head_optimizer

    def train_epoch(self, epoch: int | None = None) -> list[EpochStats]:
        """One epoch of every run (``epoch``: announced to the defenses; default the next)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        return self.train_epochs(self.epoch)

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, *,
        epoch: int | None = None, phase: str = "test",
    ) -> list[EpochStats]:
        """Each run's loss and accuracy on (x, y), in chunks of ``batch_size`` rows.

        Undefended, the default chunk is EVAL_BATCH / K rows, so that the K runs' activations
        together stay as small. With defenses it is EVAL_BATCH, the chunks of
        :meth:`SplitTrainer.evaluate <splitpriv.trainer.SplitTrainer.evaluate>` (paper DP groups
        its sensitivity and draws its noise per chunk), the client computing it in pieces of
        EVAL_BATCH / K rows; the pass is announced to the defenses as (``epoch``, ``phase``),
        ``epoch`` defaulting to the last trained one.
        """
        return self.evaluate_runs(x, y, epoch=self.epoch if epoch is None else epoch,
                                  phase=phase, batch_size=batch_size)

    def evaluate_runs(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str,
                      batch_size: int | None = None) -> list[EpochStats]:
        """:meth:`evaluate`'s chunks, through the shared evaluation."""
        piece = max(32, EVAL_BATCH // self.k)
        batch_size = batch_size or (EVAL_BATCH if self.defended else piece)
        self._parties[0].eval_piece = min(piece, batch_size)
        return super().evaluate_runs(x, y, epoch=epoch, phase=phase, batch_size=batch_size)

    def run_weights(self, k: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        """Run k's weights, as ``{"client": state_dict, "server": state_dict}`` (and ``"head"``
        when U-shaped), the layout of weights.pt."""
        state = {"client": self.client.unstack(k), "server": self.server.unstack(k)}
        if self.head is not None:
            state["head"] = self.head.unstack(k)
        return state

    def run_state(self, k: int = 0) -> dict[str, Any]:
        """Run k's weights (:meth:`run_weights`)."""
        return self.run_weights(k)

    def run_checkpoint(self, k: int = 0) -> dict[str, Any]:
        """Run k's resumable state (:meth:`trainer_state`)."""
        return self.trainer_state(k)

    def trainer_state(self, k: int) -> dict[str, Any]:
        """Run k's state in :meth:`splitpriv.trainer.SplitTrainer.state_dict`'s format, so that
        a SplitTrainer resumes it: weights, its slice of the Adam state, its batch generator."""

        def adam_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
            sd = opt.state_dict()
            state = {i: {"step": s["step"].clone(), "exp_avg": s["exp_avg"][k].clone(),
                         "exp_avg_sq": s["exp_avg_sq"][k].clone()} for i, s in sd["state"].items()}
            return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

        state = {f"model.{part}": w for part, w in self.run_weights(k).items()}
        state |= {"opt.client": adam_state(self.client_opt),
                  "opt.server": adam_state(self.server_opt)}
        if self.head_opt is not None:
            state["opt.head"] = adam_state(self.head_opt)
        return state | {"generator": self.generators[k].get_state()}


def records_in_training_only(policy: RecordPolicy) -> bool:
    """Whether ``policy`` asks for nothing that crosses in evaluation (activations or the
    server's output in the test or val phase): the batched trainer records all it asks for."""
    evaluation = {Kind.ACTIVATIONS, Kind.SERVER_OUTPUT}
    return (policy.epochs == frozenset()
            or (policy.phases is not None and not policy.phases & {"test", "val"})
            or (policy.kinds is not None and not policy.kinds & evaluation))


def batch_key(config) -> str | None:
    """The key of the runs ``config`` trains together with, or None when it trains alone.

    Runs with equal keys go to one :func:`run_training_batched`: they agree on everything but
    the seed and their defenses' parameters, and their defenses are of the same kinds in the
    same order (each defense's class: ``dp`` paper mode, ``dp`` formal mode, ``nopeek``,
    ``ushape``; e.g. ``dp:mode=paper,epsilon=1`` and ``dp:mode=paper,epsilon=10`` at any seeds
    stack, not with ``nopeek``, the undefended runs or ``ushape`` + ``dp:mode=paper``). None: a
    transcript of evaluation messages (:func:`records_in_training_only`), a server behaviour, a
    defense that does not stack (``Defense.stacks``). Cheap: the config's specs were parsed when
    it was made (:class:`~splitpriv.defense.DefenseSpec`), not built (building calibrates formal
    DP's noise).
    """
    if (not records_in_training_only(config.record_policy())
            or config.server.partition(":")[0].strip().lower() != "honest"):
        return None
    specs = [(spec.cls, spec.config) for spec in config.defenses]
    if not all(cls.stacks(cfg) for cls, cfg in specs):
        return None
    kinds = [f"{cls.__module__}.{cls.__qualname__}" for cls, _ in specs]
    rest = dataclasses.asdict(dataclasses.replace(config, seed=0, defenses=[]))
    return json.dumps({"config": rest, "defense_kinds": kinds}, sort_keys=True)


def batchable(config) -> bool:
    """Whether a run can be trained stacked with others (:func:`batch_key` is not None): no
    transcript of evaluation messages, an honest server, only defenses that stack."""
    return batch_key(config) is not None


def run_training_batched(configs: Sequence, out_dirs: Sequence[str | Path], *,
                         progress: bool = True) -> list[dict[str, Any]]:
    """Train runs of one :func:`batch_key` together, each into its own directory.

    Each directory gets what :func:`splitpriv.run.run_training` writes (config.json,
    metrics.jsonl, best.pt, checkpoint.pt every epoch, weights.pt, result.json with each run's
    own defense claims); a finished run is skipped, a run with a checkpoint resumes alone
    (``run_training``), and so does a single pending run. The numbers equal training each run
    alone up to floating-point summation order (tested); result.json says ``"batched": K`` and
    has no ``wire`` count or ``server`` report (no channel is run, the server is honest).

    Args:
        configs: :class:`splitpriv.run.TrainConfig` s, all with one :func:`batch_key`.
        out_dirs: one run directory per config.
    """
    if len(configs) != len(out_dirs):
        raise ValueError(f"got {len(configs)} configs but {len(out_dirs)} run directories")
    keys = [batch_key(c) for c in configs]
    for c, key in zip(configs, keys, strict=True):
        if key is None:
            raise ValueError(f"run_training_batched: {c} has defenses that do not stack, a "
                             "transcript of evaluation messages or a server behaviour")
    if len(set(keys)) > 1:
        raise ValueError("run_training_batched: the configs differ in more than the seed and "
                         "their defenses' parameters (batch_key)")
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
        try:
            with torch_threads(configs[0].threads), fast_kernels(configs[0].fast):
                trained = _train_together([configs[i] for i in pending],
                                          [run_dirs[i] for i in pending], progress)
        finally:
            for run_dir in run_dirs:
                run_dir.release()  # the writers' locks, whatever happened
        results.update(zip(pending, trained, strict=True))
    return [results[i] for i in range(len(configs))]


def _train_together(configs: Sequence, run_dirs: Sequence[RunDir], progress: bool
                    ) -> list[dict[str, Any]]:
    """:func:`splitpriv.run.run_training` for K fresh runs at once: the same pipeline and the
    same epoch loop (:func:`splitpriv.run.train_epochs`) over a :class:`BatchedSplitTrainer`."""
    defenses = [build_defenses(c) for c in configs]  # bad parameters fail before any write
    behaviours = [build_behaviour(c) for c in configs]  # honest (batch_key)
    device = resolve_device(configs[0].device)
    data = build_run_data(configs[0], device)  # what fails here writes nothing
    for c, ds in zip(configs, defenses, strict=True):
        prepare_defenses(ds, data, c)
    for run_dir in run_dirs:
        run_dir.start(resumable=False)
    topology = resolve_topology(configs[0], defenses[0])  # one for all: the same batch_key
    runs = [LoopRun(run_dir, Transcript(policy=c.record_policy()), stateful_plugins(ds, b, None))
            for c, run_dir, ds, b in zip(configs, run_dirs, defenses, behaviours, strict=True)]
    trainer = BatchedSplitTrainer(
        [build_run_models(c, topology, device) for c in configs],
        data.x_train, data.y_train, seeds=[c.seed for c in configs],
        lr=configs[0].lr, batch_size=configs[0].batch_size, defenses=defenses,
        transcripts=[run.transcript for run in runs],
    )
    k = len(configs)
    train_epochs(trainer, runs, data, first=1, epochs=configs[0].epochs,
                 name=f"{run_dirs[0].path.name} (+{k - 1} runs batched)", progress=progress)
    results = []
    for j, (c, run) in enumerate(zip(configs, runs, strict=True)):
        run.run_dir.save_weights(trainer.run_weights(j))
        run.run_dir.save_transcript(run.transcript)
        results.append(run.run_dir.finish(result_doc(
            c, run.history, rows=row_counts(data), device=device, card=data.card,
            topology=topology, defenses=defense_reports(defenses[j], data.part("record", "train")),
            batched=k)))
    return results
