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
backward from the gradient the server returns. Each run's transcript records what crossed its
channel in training (activations, labels, cut gradients; U-shaped, the server's output and its
gradient instead of labels: the messages of its own steps, as
:class:`~splitpriv.trainer.SplitTrainer` would send them); runs whose transcript asks for
evaluation messages train alone (:func:`records_in_training_only`). U-shaped runs stack with
U-shaped runs: the clients' heads are one more stacked module.

Defenses that act per run (``stacks``: paper or formal activation DP without a release budget,
NoPeek; ``ushape``, which names the topology and changes no tensor) are applied per run: each
run has its own instances, built from its own config and attached as
:class:`~splitpriv.trainer.SplitTrainer` attaches them, and the batched step calls run k's hooks
on run k's slice (B, C, L) of the stacked activations, in the order the client does
(transforms, then local losses); their noise comes from each instance's own generator, so run k
draws the noise it draws alone, and each run's accounting (``report()``) is its own.
Runs that need an evaluation transcript, a server behaviour or a defense that does not stack
(DP-SGD, label defenses, a release budget, SplitGuard) use SplitTrainer.

:func:`run_training_batched` trains the runs of one :func:`batch_key` this way (seeds and the
defenses' parameters may differ) and writes each run's directory as
:func:`splitpriv.run.run_training` does; a run killed mid-way resumes alone from its checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from splitpriv.channel import Kind, Message, RecordPolicy, Transcript
from splitpriv.defense import Defense
from splitpriv.io import resolve_device, torch_threads
from splitpriv.models import MaxPool2, SplitModels, same_conv, same_conv1d
from splitpriv.run import (
    RunDir,
    build_behaviour,
    build_defenses,
    build_run_data,
    build_run_models,
    check_distinct_beats,
    checkpoint_state,
    defense_reports,
    epoch_row,
    resolve_topology,
    result_doc,
    row_counts,
    run_training,
    stateful_plugins,
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
                if same_conv(layer):  # (B, K * Cin, L) -> (B, K * Cout, L)
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

    def unstack(self, k: int) -> dict[str, torch.Tensor]:
        return {name: p[k].detach().clone() for name, p in self.params.items()}

    def train(self, mode: bool) -> None:
        self.template.train(mode)


def stacks(defense: Defense) -> bool:
    """Whether K runs, each with its own instance of ``defense``, can train as one stacked model:
    the defense class's ``stacks(config)`` capability (``defenses.dp`` without a release budget,
    ``defenses.nopeek``, ``defenses.ushape``; a class without it does not stack).

    Such a defense acts on its own run only, through ``attach`` (reading the run's inputs, labels
    and defense list, never wrapping its model or optimizer), ``begin_phase``,
    ``transform_activations`` (of its run's (B, C, L) slice), ``client_loss``, ``end_epoch`` and
    ``report``; its other hooks keep the base class's behaviour (``replay`` returns None, labels
    and gradients pass unchanged), so the batched step does not call them.
    """
    return _class_stacks(type(defense), getattr(defense, "config", None))


def _class_stacks(cls: type, config: Any) -> bool:
    test = getattr(cls, "stacks", None)
    return callable(test) and bool(test(config))


def _spec_class(spec: str) -> tuple[type, Any]:
    """A defense spec's class and typed config, checked as ``build_defense`` checks them but not
    built: building calibrates formal DP's noise, which takes seconds to a minute."""
    from defenses import registry
    from splitpriv.options import build_config

    registry._load_builtin()  # noqa: SLF001  (what build_defense does first)
    name, raw = registry.parse_spec(spec, "defense")
    if name not in registry.DEFENSES:
        raise ValueError(f"unknown defense {name!r}")
    cls = registry.resolve(name, raw)
    return cls, build_config(cls.Config, raw, f"defense {name!r}")  # type: ignore[attr-defined]


@dataclass
class _RunClient:
    """What a stacking defense's ``attach`` reads of its run's client."""

    x: torch.Tensor
    y: torch.Tensor
    defenses: list[Defense]


class BatchedSplitTrainer:
    """Train K split runs (same architecture, topology and data; their own seeds and,
    optionally, defenses) in one process.

    U-shaped runs (each with a head, ``build_models(cfg, ushape=True, seed=s)``) step as
    :class:`~splitpriv.trainer.SplitTrainer` steps them: the server's output crosses detached,
    the stacked heads take the loss and their own Adam step, the gradient of the output goes
    back to the server, then the cut gradient to the client.

    Args:
        runs: the K runs' models, all vanilla or all U-shaped, e.g.
            ``build_models(cfg, seed=s)``.
        x_train: (N, 1, 128) inputs shared by the runs; y_train: (N,) labels.
        seeds: the K batch-order seeds (as ``SplitTrainer(seed=...)``).
        defenses: each run's defenses (default: none), its own instances, every one stacking
            (:func:`stacks`). They are attached here as :class:`~splitpriv.trainer.SplitTrainer`
            attaches them after ``build_models(cfg, seed=s)``: a noise seed left to the run
            (``dp``'s ``seed=None``) is the run's seed. In every step run k's transforms, then its
            local losses, act on its slice of the stacked activations; their phase hooks are
            called by :meth:`train_epoch` and :meth:`evaluate`.
        transcripts: each run's transcript (default: none): :meth:`train_epoch` records run k's
            training messages into its own, as its policy asks.
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
        refused = sorted({d.name for d in instances if not stacks(d)})
        if refused:
            raise ValueError(f"BatchedSplitTrainer: defense(s) {refused} do not stack (they need "
                             "the client's model, optimizer or a frozen step); use SplitTrainer")
        self.defended = bool(instances)
        self.transcripts = list(transcripts) if transcripts is not None else []
        if self.transcripts and len(self.transcripts) != len(runs):
            raise ValueError(f"got {len(runs)} runs but {len(self.transcripts)} transcripts")
        self.client = _Stacked([r.client for r in runs])
        self.server = _Stacked([r.server for r in runs])
        self.client_opt = adam(lr)(list(self.client.params.values()))
        self.server_opt = adam(lr)(list(self.server.params.values()))
        # the clients' heads, U-shaped (all runs have one: checked above)
        self.head = _Stacked([r.head for r in runs]) if runs[0].head is not None else None
        self.head_opt = (adam(lr)(list(self.head.params.values())) if self.head is not None
                         else None)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.x, self.y, self.batch_size = x_train, y_train, batch_size
        self.k = len(runs)
        self.epoch = 0  # the last training epoch begun
        for ds, seed in zip(self.defenses, seeds, strict=True):
            if not ds:
                continue
            view = _RunClient(x_train, y_train, ds)
            with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
                torch.default_generator.manual_seed(seed)  # torch.initial_seed(): the run's seed
                for d in ds:
                    d.attach(view)

    @property
    def ushape(self) -> bool:
        return self.head is not None

    def _plugins(self) -> list[Defense]:
        """Every run's defenses, each instance once."""
        return list({id(d): d for ds in self.defenses for d in ds}.values())

    def _defend(self, x: torch.Tensor | None, a: torch.Tensor, *, training: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each run's defenses on its own slice, in the client's order: transforms, then (in
        training) local losses on the inputs x[k] (B, 1, 128) and the activations as sent.

        Shape: a (K, B, C, L) -> (the activations sent (K, B, C, L), the sum of every run's local
        loss terms or None). Runs share no parameter, so the sum's gradient is each run's own.
        """
        sent, terms = [], []
        for k, ds in enumerate(self.defenses):
            ak = a[k]
            for d in ds:
                ak = d.transform_activations(ak, training=training)
            if training and x is not None:
                terms += [t for d in ds if (t := d.client_loss(x[k], ak)) is not None]
            sent.append(ak)
        return torch.stack(sent), (torch.stack(terms).sum() if terms else None)

    def train_epoch(self, epoch: int | None = None) -> list[EpochStats]:
        """One epoch of every run (``epoch``: announced to the defenses; default the next)."""
        self.epoch = self.epoch + 1 if epoch is None else epoch
        for d in self._plugins():
            d.begin_phase(self.epoch, "train")
        self.train(True)
        n, device = len(self.y), self.x.device
        per_run = [batches(n, self.batch_size, g, device) for g in self.generators]
        loss_sum = torch.zeros(self.k, device=device, dtype=torch.float64)
        correct = torch.zeros(self.k, device=device, dtype=torch.long)
        wanted = [kind for kind in TRAINING_KINDS[self.ushape]  # in the order they cross
                  if any(t.wants(kind, self.epoch, "train") for t in self.transcripts)]
        for step_ids in zip(*per_run, strict=True):
            ids = torch.stack(step_ids)  # (K, B)
            x = self.x[ids]  # (K, B, 1, 128)
            a = self.client(x)  # (K, B, 1, 128) -> (K, B, 16, 32)
            extra = None
            if self.defended:
                a, extra = self._defend(x, a, training=True)
            received = a.detach().requires_grad_()  # what the server gets
            out = self.server(received)  # (K, B, 5), or U-shaped (K, B, 128)
            h = out.detach().requires_grad_() if self.ushape else out  # what the heads get
            logits = self.head(h) if self.ushape else out  # (K, B, 5)
            y = self.y[ids]  # (K, B)
            losses = nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), reduction="none"
            ).view_as(y).mean(1)  # (K,) each run's mean loss
            loss_opt = self.head_opt if self.ushape else self.server_opt  # where the loss is
            loss_opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # runs do not share parameters: each gets its own gradient
            loss_opt.step()
            if self.ushape:  # the output's gradient crosses back to the server
                self.server_opt.zero_grad(set_to_none=True)
                out.backward(h.grad)
                self.server_opt.step()
            self.client_opt.zero_grad(set_to_none=True)
            if extra is None:
                a.backward(received.grad)
            else:
                torch.autograd.backward([a, extra], [received.grad, torch.ones_like(extra)])
            self.client_opt.step()
            if wanted:
                sent = {Kind.ACTIVATIONS: received, Kind.LABELS: y, Kind.ACT_GRAD: received.grad}
                if self.ushape:
                    sent |= {Kind.SERVER_OUTPUT: h, Kind.OUTPUT_GRAD: h.grad}
                self._record(wanted, ids, sent)
            loss_sum += losses.detach() * y.shape[1]
            correct += (logits.detach().argmax(-1) == y).sum(1)
        for d in self._plugins():
            d.end_epoch(self.epoch)
        return [EpochStats(loss / n, 100.0 * c / n)
                for loss, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]

    def _record(self, wanted: list[Kind], ids: torch.Tensor,
                sent: dict[Kind, torch.Tensor]) -> None:
        """Run k's slice of each message of one step (``sent[kind]``: (K, B, ...)), into run
        k's transcript (which keeps what its policy asks for)."""
        for kind in wanted:
            for k, t in enumerate(self.transcripts):
                t.record(Message(kind, sent[kind][k].detach(), ids[k], self.epoch, "train"))

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
        epoch = self.epoch if epoch is None else epoch
        for d in self._plugins():
            d.begin_phase(epoch, phase)
        piece = max(32, EVAL_BATCH // self.k)
        batch_size = batch_size or (EVAL_BATCH if self.defended else piece)
        piece = min(piece, batch_size)
        self.train(False)
        accs = [Accumulator(x.device) for _ in range(self.k)]
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            parts = [self.client(p.expand(self.k, *p.shape)) for p in xb.split(piece)]
            a = parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # (K, B, C, L)
            if self.defended:
                a, _ = self._defend(None, a, training=False)
            logits = self.server(a)  # (K, B, 5), or U-shaped (K, B, 128)
            if self.head is not None:
                logits = self.head(logits)  # (K, B, 128) -> (K, B, 5)
            for k, acc in enumerate(accs):
                acc.add(nn.functional.cross_entropy(logits[k], yb), logits[k], yb)
        return [acc.stats() for acc in accs]

    def train(self, mode: bool) -> None:
        for part in (self.client, self.server, self.head):
            if part is not None:
                part.train(mode)

    def run_state(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Run k's weights, as ``{"client": state_dict, "server": state_dict}`` (and ``"head"``
        when U-shaped), the layout of weights.pt."""
        state = {"client": self.client.unstack(k), "server": self.server.unstack(k)}
        if self.head is not None:
            state["head"] = self.head.unstack(k)
        return state

    def trainer_state(self, k: int) -> dict[str, Any]:
        """Run k's state in :meth:`splitpriv.trainer.SplitTrainer.state_dict`'s format, so that
        a SplitTrainer resumes it: weights, its slice of the Adam state, its batch generator."""

        def adam_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
            sd = opt.state_dict()
            state = {i: {"step": s["step"].clone(), "exp_avg": s["exp_avg"][k].clone(),
                         "exp_avg_sq": s["exp_avg_sq"][k].clone()} for i, s in sd["state"].items()}
            return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

        state = {f"model.{part}": w for part, w in self.run_state(k).items()}
        state |= {"opt.client": adam_state(self.client_opt),
                  "opt.server": adam_state(self.server_opt)}
        if self.head_opt is not None:
            state["opt.head"] = adam_state(self.head_opt)
        return state | {"generator": self.generators[k].get_state()}


#: the kinds crossing a run's channel in training, in order, vanilla ([False]) and U-shaped
#: ([True]) (evaluation sends activations and returns the server's output, which the batched
#: evaluation does not record)
TRAINING_KINDS = {
    False: (Kind.ACTIVATIONS, Kind.LABELS, Kind.ACT_GRAD),
    True: (Kind.ACTIVATIONS, Kind.SERVER_OUTPUT, Kind.OUTPUT_GRAD, Kind.ACT_GRAD),
}


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
    defense that does not stack (:func:`stacks`), or defense specs with bad parameters (training
    the run alone reports why). Cheap: the specs are resolved and checked, not built (building
    calibrates formal DP's noise).
    """
    if (not records_in_training_only(config.record_policy())
            or config.server.partition(":")[0].strip().lower() != "honest"):
        return None
    try:
        specs = [_spec_class(spec) for spec in config.defenses]
    except ValueError:
        return None
    if not all(_class_stacks(cls, cfg) for cls, cfg in specs):
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
            with torch_threads(configs[0].threads):
                trained = _train_together([configs[i] for i in pending],
                                          [run_dirs[i] for i in pending], progress)
        finally:
            for run_dir in run_dirs:
                run_dir.release()  # the writers' locks, whatever happened
        results.update(zip(pending, trained, strict=True))
    return [results[i] for i in range(len(configs))]


def _train_together(configs: Sequence, run_dirs: Sequence[RunDir], progress: bool
                    ) -> list[dict[str, Any]]:
    """The epoch loop of :func:`splitpriv.run.run_training`, for K fresh runs at once."""
    from tqdm.auto import tqdm

    defenses = [build_defenses(c) for c in configs]  # bad parameters fail before any write
    behaviours = [build_behaviour(c) for c in configs]  # honest (batch_key)
    transcripts = [Transcript(policy=c.record_policy()) for c in configs]
    device = resolve_device(configs[0].device)
    data = build_run_data(configs[0], device)  # what fails here writes nothing
    for c, ds in zip(configs, defenses, strict=True):
        check_distinct_beats(ds, data, c)
    for run_dir in run_dirs:
        run_dir.start(resumable=False)
    topology = resolve_topology(configs[0], defenses[0])  # one for all: the same batch_key
    trainer = BatchedSplitTrainer(
        [build_run_models(c, topology, device) for c in configs],
        data.x_train, data.y_train, seeds=[c.seed for c in configs],
        lr=configs[0].lr, batch_size=configs[0].batch_size, defenses=defenses,
        transcripts=transcripts,
    )
    k = len(configs)
    plugins = [stateful_plugins(ds, b, None) for ds, b in zip(defenses, behaviours, strict=True)]

    def checkpoint(j: int) -> dict[str, Any]:  # run_training's checkpoint, for resuming alone
        return checkpoint_state(trainer.trainer_state(j), plugins[j], None)

    has_val = len(data.y_val) > 0
    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    name = f"{run_dirs[0].path.name} (+{k - 1} runs batched)"
    bar = tqdm(range(1, configs[0].epochs + 1), desc=f"train {name}", disable=not progress,
               unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        train = trainer.train_epoch(epoch)
        for j, tr in enumerate(train):
            if not math.isfinite(tr.loss):  # as run_training: the run keeps its finite epochs
                raise ValueError(
                    f"{run_dirs[j].path}: the training loss of epoch {epoch} is {tr.loss}: "
                    f"diverged; lower --lr or check the defenses' parameters; the run keeps its "
                    f"epochs 1..{epoch - 1} (so do the {k - 1} runs trained with it, each to "
                    "resume alone)")
        train_seconds = (time.perf_counter() - t0) / k  # each run's share
        test = trainer.evaluate(data.x_test, data.y_test, epoch=epoch, phase="test")
        val = (trainer.evaluate(data.x_val, data.y_val, epoch=epoch, phase="val") if has_val
               else [None] * k)
        seconds = (time.perf_counter() - t0) / k
        for j in range(k):
            histories[j].append(epoch_row(epoch, train[j], test[j], val[j], train_seconds,
                                          seconds))
            run_dirs[j].save_epoch(histories[j], lambda j=j: trainer.run_state(j),
                                   lambda j=j: checkpoint(j), transcripts[j])
        bar.set_postfix(test=f"{test[0].accuracy:.2f}")
    results = []
    for j, (c, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
        run_dir.save_weights(trainer.run_state(j))
        run_dir.save_transcript(transcripts[j])
        results.append(run_dir.finish(result_doc(
            c, histories[j], rows=row_counts(data), device=device, card=data.card,
            topology=topology, defenses=defense_reports(defenses[j], data.part("record", "train")),
            batched=k)))
    return results
