"""One training run, written to a directory that a later session, attack or study can read.

The pipeline every driver goes through (in-process :func:`run_training`, the batched seeds of
``splitpriv.batched`` and the distributed parties of ``splitpriv.distributed``):

* :class:`TrainConfig` (``config``): the run;
* :func:`build_defenses`, :func:`build_behaviour`, :func:`resolve_topology`,
  :func:`build_run_models`: what the config asks for, checked before anything is written;
* :func:`build_run_data` (``data``): the run's rows as tensors;
* :class:`RunDir` (``rundir``): refuses a directory written for another run, skips a finished
  run, resumes a killed one, and writes config.json, metrics.jsonl, best.pt, checkpoint.pt,
  weights.pt, transcript.npz and result.json (layout in ``splitpriv.run.rundir``).

Drivers only train.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from splitpriv.channel import PHASES, CountingChannel, Transcript
from splitpriv.io import resolve_device, torch_threads
from splitpriv.models import ModelConfig, SplitModels, build_models
from splitpriv.run.config import TOPOLOGIES, TrainConfig
from splitpriv.run.data import Tensors, build_run_data, load_tensors
from splitpriv.run.rundir import (
    BEST,
    CHECKPOINT,
    RESULT,
    TRANSCRIPT,
    Resumed,
    RunDir,
    epoch_row,
    result_doc,
    summarize,
)
from splitpriv.servers import ServerBehaviour, build_server
from splitpriv.trainer import SplitTrainer


def build_defenses(config: TrainConfig) -> list:
    """The run's defenses, each checked against the run's plan (bad parameters fail here)."""
    from defenses import build_defense

    built = [build_defense(spec) for spec in config.defenses]
    for d in built:
        d.configure(epochs=config.epochs, batch_size=config.batch_size)
    return built


def build_behaviour(config: TrainConfig) -> ServerBehaviour:
    """The server's behaviour from ``config.server``, checked against the run's plan."""
    behaviour = build_server(config.server)
    behaviour.configure(epochs=config.epochs, batch_size=config.batch_size)
    return behaviour


def defense_reports(defenses: list) -> list[dict[str, Any]]:
    """What every defense claims (its :class:`~splitpriv.defense.PrivacyClaim`), for result.json."""
    return [d.report().to_dict() for d in defenses]


def resolve_topology(config: TrainConfig, defenses: list) -> str:
    """The run's topology: the one a defense needs (``ushape``), else the config's."""
    return next((d.topology for d in defenses if d.topology), config.topology)


def build_run_models(config: TrainConfig, topology: str, device: torch.device) -> SplitModels:
    """The run's split model, initialised from its seed, on the device."""
    from splitpriv.data import protocol_prep

    n_classes = len(protocol_prep(config.protocol, config.labels).classes)
    return build_models(ModelConfig(config.depth, config.paper_softmax,
                                    cut_channels=config.cut_channels, n_classes=n_classes),
                        ushape=topology == "ushape", seed=config.seed).to(device)


def run_training(
    config: TrainConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Train one split model into ``out_dir``; resume it if it was interrupted.

    Returns the result dict (also DIR/result.json). A finished run is not retrained unless
    ``force``.
    """
    run_dir = RunDir(out_dir, config, force=force)
    done = run_dir.finished()
    if done is not None:
        return done
    with torch_threads(config.threads):
        return _train(config, run_dir, progress=progress)


def _train(config: TrainConfig, run_dir: RunDir, *, progress: bool) -> dict[str, Any]:
    defenses = build_defenses(config)  # bad defense parameters fail before anything is written
    behaviour = build_behaviour(config)
    device = resolve_device(config.device)
    resumed = run_dir.start()

    data = build_run_data(config, device)
    topology = resolve_topology(config, defenses)
    models = build_run_models(config, topology, device)
    transcript = Transcript(policy=config.record_policy())
    channel = CountingChannel(transcript)  # counts the bytes a two-process run would send
    trainer = SplitTrainer(
        models, data.x_train, data.y_train,
        lr=config.lr, batch_size=config.batch_size, seed=config.seed,
        channel=channel, defenses=defenses, behaviour=behaviour,
    )

    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resumed is not None:
        trainer.load_state_dict(resumed.trainer)
        history, start_epoch = resumed.history, resumed.epoch + 1
    has_val = len(data.y_val) > 0

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start_epoch, config.epochs + 1), initial=start_epoch - 1, total=config.epochs,
        desc=f"train {run_dir.path.name}", disable=not progress, unit="epoch",
    )
    for epoch in bar:
        t0 = time.perf_counter()
        tr = trainer.train_epoch(epoch)
        if not math.isfinite(tr.loss):
            raise ValueError(f"{run_dir.path}: the training loss of epoch {epoch} is {tr.loss} "
                             "(diverged: lower --lr or check the defenses' parameters); the run "
                             f"keeps its epochs 1..{epoch - 1}")
        train_seconds = time.perf_counter() - t0
        te = trainer.evaluate(data.x_test, data.y_test, epoch=epoch, phase="test")
        va = trainer.evaluate(data.x_val, data.y_val, epoch=epoch, phase="val") if has_val else None
        history.append(epoch_row(epoch, tr, te, va, train_seconds, time.perf_counter() - t0))
        run_dir.save_epoch(history, models.state_dicts, trainer.state_dict, transcript)
        bar.set_postfix(test=f"{te.accuracy:.2f}", val=f"{va.accuracy if va else float('nan'):.2f}")

    run_dir.save_weights(models.state_dicts())
    run_dir.save_transcript(transcript)
    return run_dir.finish(result_doc(
        config, history, rows=row_counts(data), device=device, card=data.card,
        topology=topology, defenses=defense_reports(defenses),
        # per epoch run in this process (a resumed run: the epochs after the resume)
        server=trainer.server.behaviour.report(), wire=channel.wire.summary(),
    ))


def row_counts(data: Tensors) -> dict[str, int]:
    """``n_train``, ``n_val``, ``n_test`` for result.json."""
    return {f"n_{p}": len(data.part("y", p)) for p in ("train", "val", "test")}


__all__ = [
    "BEST", "CHECKPOINT", "PHASES", "RESULT", "TOPOLOGIES", "TRANSCRIPT", "Resumed", "RunDir",
    "Tensors", "TrainConfig", "build_behaviour", "build_defenses", "build_run_data",
    "build_run_models", "defense_reports", "epoch_row", "load_tensors", "resolve_topology",
    "result_doc", "row_counts", "run_training", "summarize",
]
