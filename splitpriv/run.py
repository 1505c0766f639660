"""One training run, written to a directory that a later session, attack or study can read.

DIR/config.json      everything needed to rerun it
DIR/metrics.jsonl    one line per epoch: train/val/test loss and accuracy, wall time
DIR/result.json      final numbers (written last: its presence means the run finished)
DIR/checkpoint.pt    weights, optimizer and RNG state after the last completed epoch (resume)
DIR/weights.pt       final weights; DIR/best.pt the weights at the best-validation epoch
DIR/transcript.npz   what crossed the channel, for the epochs and kinds recorded

Every file is written atomically; a run killed mid-way resumes from its last completed epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from splitpriv.channel import NOTHING, Kind, RecordPolicy, Transcript
from splitpriv.distributed import CountingChannel
from splitpriv.io import (
    read_json,
    resolve_device,
    torch_load,
    torch_save,
    torch_threads,
    write_json,
    write_text,
)
from splitpriv.models import ModelConfig, build_models
from splitpriv.trainer import SplitTrainer

TOPOLOGIES = ("vanilla", "ushape")


@dataclass
class TrainConfig:
    """A training run. Every field lands in config.json.

    Attributes:
        protocol: data protocol (``paper``, ``paper-unique``, ``inter-patient``).
        depth: client conv layers, 2..8.
        epochs: training epochs (the paper: 400).
        seed: model initialisation and batch order.
        batch_size: the paper's 32.
        lr: Adam learning rate (the paper's 1e-3).
        val_fraction: validation rows carved from the training half; None = 0 for ``paper``
            (which trained on all 13,245 rows) and 0.1 otherwise.
        topology: ``vanilla`` (labels cross) or ``ushape`` (labels and head stay on the client).
        paper_softmax: reproduce the original double softmax.
        data_seed: seed of the protocol's draws (the paper's 2019).
        train_subset, test_subset: use only the first n rows (quick runs, tests); None = all.
        record_epochs: transcript epochs: ``last``, ``none``, ``all`` or a list like ``1,100``.
        record_kinds: transcript kinds, comma list; empty = all.
        defenses: defense specs ``name[:key=value,...]`` (see ``defenses``).
        device: ``auto``, ``cpu``, ``cuda``...
        threads: torch CPU threads during the run (None: torch's default, one per core). One is
            fastest for this small model on a CPU (``benchmarks/speed.py --threads 2``).
        mitdb_dir, cache_dir: where the records and the beat-pool cache are (None: defaults).
    """

    protocol: str = "paper-unique"
    depth: int = 2
    epochs: int = 400
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    val_fraction: float | None = None
    topology: str = "vanilla"
    paper_softmax: bool = False
    data_seed: int = 2019
    train_subset: int | None = None
    test_subset: int | None = None
    record_epochs: str = "last"
    record_kinds: str = ""
    defenses: list[str] = field(default_factory=list)
    device: str = "auto"
    threads: int | None = 1
    mitdb_dir: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, got {self.topology!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        ModelConfig(self.depth)  # validates depth

    @property
    def resolved_val_fraction(self) -> float:
        if self.val_fraction is not None:
            return self.val_fraction
        return 0.0 if self.protocol == "paper" else 0.1

    def record_policy(self) -> RecordPolicy:
        spec = self.record_epochs.strip().lower()
        if spec == "none":
            return NOTHING
        epochs: frozenset[int] | None
        if spec == "all":
            epochs = None
        elif spec == "last":
            epochs = frozenset({self.epochs})
        else:
            try:
                epochs = frozenset(int(e) for e in spec.split(","))
            except ValueError:
                raise ValueError(
                    f"record_epochs: expected last|none|all|1,2,..., got {spec!r}"
                ) from None
        kinds = frozenset(Kind(k.strip()) for k in self.record_kinds.split(",") if k.strip())
        return RecordPolicy(epochs=epochs, kinds=kinds or None)

    def rerun_key(self) -> dict[str, Any]:
        """The fields that must match for a run directory to be resumed (not epochs, not paths)."""
        d = dataclasses.asdict(self)
        for k in ("epochs", "device", "threads", "mitdb_dir", "cache_dir", "record_epochs",
                  "record_kinds"):
            d.pop(k)
        return d


@dataclass
class Tensors:
    """A protocol's arrays as float32 tensors on the device."""

    x_train: torch.Tensor  # (N, 1, 128)
    y_train: torch.Tensor  # (N,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


PHASES = ("train", "val", "test")


def load_split(config: TrainConfig):
    """The beat pool and the protocol's split of it, as the run's config defines them."""
    from splitpriv.data import load_pool, make_split

    pool = load_pool(config.mitdb_dir, cache_dir=config.cache_dir)
    split = make_split(
        pool, config.protocol, val_fraction=config.resolved_val_fraction, seed=config.data_seed
    )
    return pool, split


def phase_rows(config: TrainConfig, split, phase: str) -> dict[str, Any]:
    """One phase's arrays as the run uses them (the first ``train_subset``/``test_subset`` rows):
    ``x`` (N, 1, 128) float32 tensor, ``y`` (N,) int64 tensor, ``record`` and ``pool_idx`` (N,)."""
    n = {"train": config.train_subset, "val": None, "test": config.test_subset}[phase]
    rows = slice(None, n)
    return {
        "x": torch.as_tensor(getattr(split, f"x_{phase}")[rows]).float().reshape(-1, 1, 128),
        "y": torch.as_tensor(getattr(split, f"y_{phase}")[rows]).long(),
        "record": getattr(split, f"record_{phase}")[rows],
        "pool_idx": getattr(split, f"pool_idx_{phase}")[rows],
    }


def load_tensors(config: TrainConfig, device: torch.device) -> tuple[Tensors, dict[str, Any]]:
    """Load the beat pool, split it by the protocol, and move it to the device."""
    from splitpriv.data import dataset_card

    pool, split = load_split(config)
    parts = {p: phase_rows(config, split, p) for p in PHASES}
    tensors = Tensors(**{
        f"{k}_{p}": parts[p][k].to(device) for p in PHASES for k in ("x", "y")
    })
    return tensors, dataset_card(pool, split)


def build_defenses(config: TrainConfig) -> list:
    """The run's defenses, each checked against the run's plan (bad parameters fail here)."""
    from defenses import build_defense

    built = [build_defense(spec) for spec in config.defenses]
    for d in built:
        d.configure(epochs=config.epochs, batch_size=config.batch_size)
    return built


def summarize(history: list[dict[str, Any]], has_val: bool) -> dict[str, Any]:
    """Model selection: the best-validation epoch when there is a validation set (else the last),
    and, beside it, the paper's "best test accuracy" (max over epochs, selected on the test set)."""
    if has_val:
        best = max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))
    else:
        best = history[-1]
    best_test = max(history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
    return {
        "test_accuracy": best["test_accuracy"],
        "val_accuracy": best.get("val_accuracy"),
        "best_epoch": best["epoch"],
        "selection": "best validation accuracy" if has_val else "last epoch (no validation set)",
        "best_test_accuracy": best_test["test_accuracy"],
        "best_test_epoch": best_test["epoch"],
        "final_test_accuracy": history[-1]["test_accuracy"],
    }


def finished_result(
    config: TrainConfig, out: Path, *, force: bool = False
) -> dict[str, Any] | None:
    """DIR/result.json when ``out`` holds this run finished (None when it has to be trained or
    resumed); a directory written for another run is an error, unless ``force``."""
    if not (out / "config.json").exists() or force:
        return None
    old = TrainConfig(**read_json(out / "config.json"))
    if old.rerun_key() != config.rerun_key():
        diff = {
            k: (old.rerun_key()[k], v)
            for k, v in config.rerun_key().items()
            if old.rerun_key().get(k) != v
        }
        raise ValueError(f"{out}/config.json was written for another run: {diff}; use --force")
    if (out / "result.json").exists() and old.epochs == config.epochs:
        return read_json(out / "result.json")
    return None


def epoch_row(epoch: int, train, test, val, train_seconds: float, seconds: float
              ) -> dict[str, Any]:
    """One line of metrics.jsonl (``val`` None when the protocol has no validation set)."""
    row: dict[str, Any] = {
        "epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
        "test_loss": test.loss, "test_accuracy": test.accuracy,
    }
    if val is not None:
        row |= {"val_loss": val.loss, "val_accuracy": val.accuracy}
    return row | {"train_seconds": train_seconds, "seconds": seconds}


def save_epoch(out: Path, history: list[dict[str, Any]], best_val: float,
               weights: Callable[[], dict], trainer_state: Callable[[], dict]) -> float:
    """After an epoch (its row last in ``history``): best.pt when validation improved, then
    metrics.jsonl and the checkpoint. Returns the best validation accuracy so far."""
    row = history[-1]
    if "val_accuracy" in row and row["val_accuracy"] > best_val:
        best_val = row["val_accuracy"]
        torch_save(weights(), out / "best.pt")
    write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    torch_save({"trainer": trainer_state(), "epoch": row["epoch"], "best_val": best_val},
               out / "checkpoint.pt")
    return best_val


def result_doc(config: TrainConfig, history: list[dict[str, Any]], data: Tensors,
               device: torch.device, card: dict[str, Any], *, topology: str,
               defenses: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The content of result.json."""
    return {
        "protocol": config.protocol, "depth": config.depth, "seed": config.seed,
        "topology": topology, "epochs": config.epochs,
        **summarize(history, len(data.y_val) > 0),
        "seconds": sum(h["seconds"] for h in history),
        "train_seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
        "n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test),
        "device": str(device),
        "defenses": defenses,
        **extra,
        "dataset": card,
    }


def run_training(
    config: TrainConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False
) -> dict[str, Any]:
    """Train one split model into ``out_dir``; resume it if it was interrupted.

    Returns the result dict (also DIR/result.json). A finished run is not retrained unless
    ``force``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_result(config, out, force=force)
    if done is not None:
        return done
    with torch_threads(config.threads):
        return _train(config, out, progress=progress, force=force)


def _train(config: TrainConfig, out: Path, *, progress: bool, force: bool) -> dict[str, Any]:
    defenses = build_defenses(config)  # bad defense parameters fail before anything is written
    device = resolve_device(config.device)
    write_json(out / "config.json", dataclasses.asdict(config))

    data, card = load_tensors(config, device)
    topology = next((d.topology for d in defenses if d.topology), config.topology)
    models = build_models(
        ModelConfig(config.depth, config.paper_softmax),
        ushape=topology == "ushape",
        seed=config.seed,
    ).to(device)
    transcript = Transcript(policy=config.record_policy())
    channel = CountingChannel(transcript)  # counts the bytes a two-process run would send
    trainer = SplitTrainer(
        models, data.x_train, data.y_train,
        lr=config.lr, batch_size=config.batch_size, seed=config.seed,
        channel=channel, defenses=defenses,
    )

    history: list[dict[str, Any]] = []
    best_val = -math.inf
    start_epoch = 1
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not force:
        state = torch_load(ckpt)
        trainer.load_state_dict(state["trainer"])
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        history = history[: state["epoch"]]
        best_val = state["best_val"]
        start_epoch = state["epoch"] + 1
    has_val = len(data.y_val) > 0

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start_epoch, config.epochs + 1), initial=start_epoch - 1, total=config.epochs,
        desc=f"train {out.name}", disable=not progress, unit="epoch",
    )
    for epoch in bar:
        t0 = time.perf_counter()
        tr = trainer.train_epoch(epoch)
        train_seconds = time.perf_counter() - t0
        te = trainer.evaluate(data.x_test, data.y_test, epoch=epoch, phase="test")
        va = trainer.evaluate(data.x_val, data.y_val, epoch=epoch, phase="val") if has_val else None
        history.append(epoch_row(epoch, tr, te, va, train_seconds, time.perf_counter() - t0))
        best_val = save_epoch(out, history, best_val, models.state_dicts, trainer.state_dict)
        bar.set_postfix(test=f"{te.accuracy:.2f}", val=f"{va.accuracy if va else math.nan:.2f}")

    torch_save(models.state_dicts(), out / "weights.pt")
    if transcript.chunks:
        transcript.save(out / "transcript.npz")
    result = result_doc(
        config, history, data, device, card, topology=topology,
        defenses=[d.report() for d in defenses],
        # per epoch run in this process (a resumed run: the epochs after the resume)
        wire=channel.wire.summary(),
    )
    write_json(out / "result.json", result)
    return result
