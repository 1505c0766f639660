"""The epoch loop, written once for every in-process driver: train, evaluate, save, stop.

:func:`train_epochs` runs K runs' epochs through a trainer (``SplitTrainer``: K = 1;
``BatchedSplitTrainer``: K stacked runs), each run saving its own directory after every epoch;
:func:`run_training` is one run from its config to result.json.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from splitpriv.channel import CountingChannel, Transcript
from splitpriv.defense import StopTraining
from splitpriv.fast import fast_kernels
from splitpriv.io import resolve_device, torch_threads
from splitpriv.run.config import TrainConfig
from splitpriv.run.data import Tensors, build_run_data
from splitpriv.run.plugins import (
    Stateful,
    behaviour_aux,
    build_behaviour,
    build_defenses,
    build_run_models,
    checkpoint_state,
    defense_reports,
    load_plugin_states,
    prepare_defenses,
    resolve_topology,
    stateful_plugins,
)
from splitpriv.run.rundir import CHECKPOINT, RunDir, epoch_row, result_doc
from splitpriv.trainer import EpochStats, SplitTrainer


class Trainer(Protocol):
    """What the loop drives (:class:`~splitpriv.trainer.SplitTrainer` and its stacked
    subclass): every run's epoch and evaluation, and each run's weights and resumable state."""

    def train_epochs(self, epoch: int) -> list[EpochStats]: ...

    def evaluate_runs(self, x: torch.Tensor, y: torch.Tensor, *, epoch: int, phase: str
                      ) -> list[EpochStats]: ...

    def run_weights(self, k: int) -> dict[str, dict[str, torch.Tensor]]: ...

    def run_checkpoint(self, k: int) -> dict[str, Any]: ...


@dataclass
class LoopRun:
    """One run of the loop: its directory, transcript, stateful plug-ins, the epochs it has
    (a resumed run: those before the resume) and the plug-in stop that ended it, if one did."""

    run_dir: RunDir
    transcript: Transcript
    plugins: dict[str, Stateful]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: dict[str, Any] | None = None


def train_epochs(trainer: Trainer, runs: Sequence[LoopRun], data: Tensors, *, first: int,
                 epochs: int, name: str, progress: bool) -> None:
    """Epochs ``first``..``epochs`` of every run: train, check the loss, evaluate on the test
    (and validation) rows, append each run's row and save its directory (weights, checkpoint
    with its plug-ins' state, transcript). A plug-in's :class:`~splitpriv.defense.StopTraining`
    ends the (single) run in that epoch, which is evaluated and recorded; a stopped run trains
    no further. Seconds are each run's share of the K runs' wall time.

    Raises:
        ValueError: a run's training loss is not finite (diverged; every run keeps its earlier
            epochs, each to resume alone).
    """
    from tqdm.auto import tqdm

    k = len(runs)
    has_val = len(data.y_val) > 0
    bar = tqdm(range(first, epochs + 1) if runs[0].stopped is None else range(0),
               initial=first - 1, total=epochs, desc=f"train {name}", disable=not progress,
               unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        try:
            train = trainer.train_epochs(epoch)
        except StopTraining as alarm:  # the client stops here: evaluate, record, finish
            if k > 1:
                raise  # stacked runs never stop (a plug-in that stops does not stack)
            runs[0].stopped = {"by": alarm.by, "epoch": epoch, "step": alarm.batch,
                               "score": alarm.score, "threshold": alarm.threshold}
            train = [EpochStats(math.nan, math.nan)]
        for run, tr in zip(runs, train, strict=True):
            if run.stopped is None and not math.isfinite(tr.loss):
                step = (f" (first non-finite at step {tr.first_nonfinite_step})"
                        if tr.first_nonfinite_step else "")
                others = (f" (so do the {k - 1} runs trained with it, each to resume alone)"
                          if k > 1 else "")
                raise ValueError(
                    f"{run.run_dir.path}: the training loss of epoch {epoch} is {tr.loss}{step}: "
                    f"diverged; lower --lr or check the defenses' parameters; the run keeps its "
                    f"epochs 1..{epoch - 1}{others}")
        train_seconds = (time.perf_counter() - t0) / k
        test = trainer.evaluate_runs(data.x_test, data.y_test, epoch=epoch, phase="test")
        val = (trainer.evaluate_runs(data.x_val, data.y_val, epoch=epoch, phase="val")
               if has_val else [None] * k)
        seconds = (time.perf_counter() - t0) / k
        for j, run in enumerate(runs):
            run.history.append(epoch_row(epoch, train[j], test[j], val[j], train_seconds,
                                         seconds))

            def weights(j: int = j) -> dict[str, dict[str, torch.Tensor]]:
                return trainer.run_weights(j)

            def state(j: int = j, run: LoopRun = run) -> dict[str, Any]:
                return checkpoint_state(trainer.run_checkpoint(j), run.plugins, run.stopped)

            run.run_dir.save_epoch(run.history, weights, state, run.transcript)
        bar.set_postfix(test=f"{test[0].accuracy:.2f}",
                        val=f"{val[0].accuracy if val[0] else float('nan'):.2f}")
        if runs[0].stopped is not None:
            break


def run_training(
    config: TrainConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Train one split model into ``out_dir``; resume it if it was interrupted.

    Returns the result dict (also DIR/result.json). A finished run is not retrained unless
    ``force``. A plug-in's :class:`~splitpriv.defense.StopTraining` (a detector with
    ``stop=true``) ends training in the epoch of its alarm: that epoch is evaluated (its row
    has no training numbers: NaN) and the run finishes with ``stopped`` = {by, epoch, step,
    score, threshold} in result.json. The stop is final: a resumed run that was stopped trains
    no further (even with more ``epochs``); ``force`` retrains from scratch.
    """
    with RunDir(out_dir, config, force=force) as run_dir:
        done = run_dir.finished()
        if done is not None:
            return done
        with torch_threads(config.threads), fast_kernels(config.fast):
            return _train(config, run_dir, progress=progress)


def _train(config: TrainConfig, run_dir: RunDir, *, progress: bool) -> dict[str, Any]:
    defenses = build_defenses(config)  # bad defense parameters fail before anything is written
    behaviour = build_behaviour(config)
    device = resolve_device(config.device)
    # the data, models and the adversary's beats first: what fails here writes nothing
    data = build_run_data(config, device)
    prepare_defenses(defenses, data, config)
    topology = resolve_topology(config, defenses)
    models = build_run_models(config, topology, device)
    aux = behaviour_aux(behaviour.aux_spec(), data, seed=config.seed)
    resumed = run_dir.start()
    scorer = (behaviour.scorer(run_dir.path / f"{behaviour.name}.jsonl", data.x_train,
                               data.y_train, None if aux is None else aux.x.mean(0),
                               seed=config.seed, groups=data.record_train)
              if behaviour.scorer is not None else None)
    behaviour.provide(aux=aux, record=scorer)
    transcript = Transcript(policy=config.record_policy())
    channel = CountingChannel(transcript)  # counts the bytes a two-process run would send
    trainer = SplitTrainer(
        models, data.x_train, data.y_train,
        lr=config.lr, batch_size=config.batch_size, seed=config.seed,
        channel=channel, defenses=defenses, behaviour=behaviour,
    )
    run = LoopRun(run_dir, transcript, stateful_plugins(defenses, behaviour, scorer))
    first = 1
    if resumed is not None:
        trainer.load_state_dict(resumed.trainer)
        run_dir.restore_releases(transcript, resumed.epoch)
        load_plugin_states(run.plugins, resumed.trainer.get("plugins"), run_dir.file(CHECKPOINT))
        run.stopped = resumed.trainer.get("stopped")
        run.history, first = resumed.history, resumed.epoch + 1
    train_epochs(trainer, [run], data, first=first, epochs=config.epochs,
                 name=run_dir.path.name, progress=progress)
    run_dir.save_weights(models.state_dicts())
    run_dir.save_transcript(transcript)
    return run_dir.finish(result_doc(
        config, run.history, rows=row_counts(data), device=device, card=data.card,
        topology=topology, defenses=defense_reports(defenses, data.part("record", "train")),
        # per epoch run in this process (a resumed run: the epochs after the resume)
        server=behaviour.report() | (
            {"reconstructions": scorer.summary()} if scorer is not None and scorer.rows else {}),
        wire=channel.wire.summary(),
        **({"stopped": run.stopped} if run.stopped is not None else {}),
    ))


def row_counts(data: Tensors) -> dict[str, int]:
    """``n_train``, ``n_val``, ``n_test`` for result.json."""
    return {f"n_{p}": len(data.part("y", p)) for p in ("train", "val", "test")}


__all__ = ["LoopRun", "Trainer", "row_counts", "run_training", "train_epochs"]
