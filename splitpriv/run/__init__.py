"""One training run, written to a directory that a later session, attack or study can read.

The pipeline every driver goes through (in-process :func:`run_training`, the batched seeds of
``splitpriv.batched`` and the distributed parties of ``splitpriv.distributed``):

* :class:`TrainConfig` (``config``): the run;
* :func:`build_defenses`, :func:`build_behaviour`, :func:`resolve_topology`,
  :func:`build_run_models`: what the config asks for, checked before anything is written;
* :func:`build_run_data` (``data``): the run's rows as tensors; :func:`behaviour_aux` resolves the
  public beats a server behaviour asks for and :class:`ReconstructionLog` is the evaluator that
  scores what a behaviour reconstructs (into ``NAME.jsonl`` of the run, e.g. ``fsha.jsonl``);
* :class:`RunDir` (``rundir``): refuses a directory written for another run, skips a finished
  run, resumes a killed one, and writes config.json, metrics.jsonl, best.pt, checkpoint.pt,
  weights.pt, transcript.npz and result.json (layout in ``splitpriv.run.rundir``).

Drivers only train.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from splitpriv.channel import PHASES, CountingChannel, Transcript
from splitpriv.io import resolve_device, torch_threads
from splitpriv.models import ModelConfig, SplitModels, build_models
from splitpriv.options import fraction_or_count
from splitpriv.run.config import TOPOLOGIES, TrainConfig
from splitpriv.run.data import Tensors, build_run_data, load_tensors
from splitpriv.run.rundir import (
    ATTACKS,
    BEST,
    CHECKPOINT,
    RESULT,
    TRANSCRIPT,
    WEIGHTS,
    Resumed,
    RunDir,
    epoch_row,
    result_doc,
    summarize,
)
from splitpriv.servers import AuxBeats, ServerBehaviour, build_server
from splitpriv.trainer import EpochStats, SplitTrainer


def build_defenses(config: TrainConfig) -> list:
    """The run's defenses, each checked against the run's plan (bad parameters fail here)."""
    from defenses import build_defense

    built = [build_defense(spec) for spec in config.defenses]
    for d in built:
        d.configure(epochs=config.epochs, batch_size=config.batch_size)
    return built


def check_distinct_beats(defenses: list, data: Tensors, config: TrainConfig) -> None:
    """Refuse a defense whose claim is per training beat (``per_beat_claim``: formal ``dp``,
    ``dpsgd``, ``labeldp``) on training rows that hold a beat more than once (the ``paper``
    protocol draws with replacement, and so did the paper's HDF5 files): each copy would be
    released, and counted, as a beat of its own, so the beat's real releases would exceed the
    claim's.

    Raises:
        ValueError: naming the defense, the copies and what to train on instead.
    """
    claiming = [d.name for d in defenses if d.per_beat_claim]
    if not claiming:
        return
    _, copies = np.unique(data.x_train.detach().cpu().flatten(1).numpy(), axis=0,
                          return_counts=True)
    repeated = int((copies > 1).sum())
    if repeated:
        source, instead = (
            (f"--hdf5 {config.hdf5}", "train on files without repeated beats")
            if config.hdf5 is not None else
            (f"protocol {config.protocol!r}", "use --protocol paper-unique (the same class "
             "sizes, drawn without replacement)"))
        raise ValueError(
            f"defense {claiming[0]!r} claims a guarantee per training beat, but the training rows "
            f"of {source} hold {repeated:,} beats more than once (up to {copies.max()} copies), "
            f"each of which would be released as a beat of its own; {instead}")


def build_behaviour(config: TrainConfig) -> ServerBehaviour:
    """The server's behaviour from ``config.server``, checked against the run's plan."""
    behaviour = build_server(config.server)
    behaviour.configure(epochs=config.epochs, batch_size=config.batch_size)
    return behaviour


def behaviour_aux(spec: str | None, data: Tensors, *, seed: int) -> AuxBeats | None:
    """The public auxiliary beats a server behaviour asks for (:meth:`ServerBehaviour.aux_spec`):
    beats of the run's pool that the run uses nowhere (not a train, validation or test row), so
    same-domain data the client does not hold (Pasquini et al. 2021's threat model):

    * ``train:F`` (0 < F < 1) or ``train:N``: F times the training rows (or N) of those beats, a
      seeded choice (the size the honest attacks' ``--aux train:F`` has, disjoint from the
      client's beats);
    * ``records:R1,R2,...``: all of them from those MIT-BIH records.

    Raises:
        ValueError: a malformed spec, or too few unused beats.
    """
    if spec is None:
        return None
    kind, _, arg = spec.partition(":")
    pool = data.pool
    used = np.concatenate([data.pool_idx_train, data.pool_idx_val, data.pool_idx_test])
    free = np.ones(len(pool.y), dtype=bool)
    free[used[used >= 0]] = False
    if kind == "train":
        n = fraction_or_count(arg, len(data.y_train), f"server aux {spec!r}")
        rows_free = np.flatnonzero(free)
        if not 1 <= n <= len(rows_free):
            raise ValueError(f"server aux {spec!r}: {n} beats of {len(rows_free)} unused ones")
        rows = np.sort(np.random.default_rng(seed).choice(rows_free, size=n, replace=False))
        source = f"train:{arg} ({n} pool beats the run uses nowhere, seed {seed})"
    elif kind == "records":
        wanted = sorted({int(r) for r in arg.replace(";", ",").split(",") if r.strip()})
        rows = np.flatnonzero(np.isin(pool.record, wanted) & free)
        if len(rows) == 0:
            raise ValueError(f"server aux {spec!r}: no unused beats of records {wanted}")
        source = f"records:{','.join(map(str, wanted))} ({len(rows)} unused pool beats)"
    else:
        raise ValueError(f"server aux {spec!r}: expected train:F, train:N or records:R1,...")
    device = data.x_train.device
    return AuxBeats(x=torch.as_tensor(pool.x[rows]).float().reshape(-1, 1, 128).to(device),
                    y=torch.as_tensor(pool.y[rows]).long().to(device), source=source)


class ReconstructionLog:
    """The evaluator of a server behaviour's reconstructions (its ``record`` sink): scores each
    recorded batch against the true training beats the behaviour never sees, with the inversion
    attacks' metrics (``attacks.metrics``: r, PRDN, SNR... and linkage among k = 10, 100 training
    beats of the victim's class), beside the mean aux beat's prior, and appends a line to
    ``path`` (JSON lines, one per record, with the first :data:`EXAMPLES` true beats and their
    reconstructions for figures); given the beats' records (``groups``), the linkage within
    patient too.

    Shape:
        x_train: (N, 1, 128), y_train: (N,); a record: step, ids (B,), x_hat (B, 1, 128).
    """

    #: the reconstruction quality whose first step :meth:`summary` reports
    THRESHOLDS = {"linkage_k10_advantage": 0.5, "pearson_median": 0.9}
    #: beats of every record whose true and reconstructed samples the log keeps
    EXAMPLES = 3

    def __init__(self, path: Path, x_train: torch.Tensor, y_train: torch.Tensor,
                 prior: torch.Tensor | None, *, seed: int,
                 groups: np.ndarray | None = None) -> None:
        self.path, self.seed = path, seed
        self.x, self.y = x_train.detach().cpu(), y_train.detach().cpu()
        # each beat's record, for linkage within patient (none where a record is unknown)
        self.groups = (None if groups is None or (np.asarray(groups) < 0).any()
                       else torch.as_tensor(np.asarray(groups)).long())
        self.prior = None if prior is None else prior.detach().cpu().reshape(1, 1, -1)
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []  # the file's lines (rows with their examples)
        path.unlink(missing_ok=True)  # a (re)started behaviour starts its log afresh

    def __call__(self, step: int, ids: torch.Tensor, x_hat: torch.Tensor) -> None:
        from attacks.metrics import linkage_report, reconstruction_metrics

        ids = ids.detach().cpu().long()
        x, y, x_hat = self.x[ids], self.y[ids], x_hat.detach().cpu().float()
        row: dict[str, Any] = {"step": int(step), "n": len(ids)}
        for name, rec in (("", x_hat), ("prior_mean_beat_", self.prior)):
            if rec is None:
                continue
            rec = rec.expand_as(x) if rec.shape[0] == 1 else rec
            m = reconstruction_metrics(x, rec)
            row |= {f"{name}{k}_median": float(np.median(m[k]))
                    for k in ("pearson", "prdn", "snr_db", "mse")}
            g = self.groups
            link = linkage_report(x, rec, y, pool_x=self.x, pool_y=self.y, seed=self.seed,
                                  groups=None if g is None else g[ids], pool_groups=g)
            row |= {f"{name}{game}_{k}_advantage": link[game][k]["advantage"]
                    for game in ("linkage", "linkage_within") if game in link
                    for k in ("k10", "k100")}
        self.rows.append(row)
        keep = slice(0, self.EXAMPLES)  # a few true beats and their reconstructions, for figures
        examples = {"ids": ids[keep].tolist(), "x": x[keep, 0].round(decimals=4).tolist(),
                    "x_hat": x_hat[keep, 0].round(decimals=4).tolist()}
        self.lines.append(json.dumps(row | {"examples": examples}) + "\n")
        with self.path.open("a") as f:
            f.write(self.lines[-1])

    def state_dict(self) -> dict[str, Any]:
        """The records so far (a resumed run's log goes on from them, not afresh)."""
        return {"lines": list(self.lines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the file holds exactly those records again (a killed
        epoch's later ones are dropped)."""
        self.lines = list(state["lines"])
        self.rows = [{k: v for k, v in json.loads(line).items() if k != "examples"}
                     for line in self.lines]
        self.path.write_text("".join(self.lines))

    def summary(self) -> dict[str, Any]:
        """The first and last record and the first step passing each of :data:`THRESHOLDS`."""
        if not self.rows:
            return {"records": 0}
        first_pass = {f"steps_to_{k}_{v}": next((r["step"] for r in self.rows if r[k] >= v), None)
                      for k, v in self.THRESHOLDS.items()}
        return {"records": len(self.rows), "log": self.path.name, **first_pass,
                "first": self.rows[0], "final": self.rows[-1]}


@runtime_checkable
class Stateful(Protocol):
    """A plug-in whose state a checkpoint keeps (a defense, the server behaviour, the
    reconstruction log): :func:`run_training` saves it with the trainer's every epoch and
    restores it on resume, so a killed-and-resumed run goes on as an uninterrupted one."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def stateful_plugins(defenses: list, behaviour: ServerBehaviour,
                     log: ReconstructionLog | None) -> dict[str, Stateful]:
    """The run's plug-ins that keep state, by checkpoint key."""
    named = {**{f"defense.{i}.{d.name}": d for i, d in enumerate(defenses)},
             f"server.{behaviour.name}": behaviour, "reconstruction_log": log}
    return {k: p for k, p in named.items() if isinstance(p, Stateful)}


def checkpoint_state(trainer_state: dict[str, Any], plugins: dict[str, Stateful],
                     stopped: dict[str, Any] | None) -> dict[str, Any]:
    """What checkpoint.pt keeps of a run besides its epoch: the trainer's state, every stateful
    plug-in's (:func:`stateful_plugins`, restored by :func:`load_plugin_states`) and the
    detector's stop, if one fired."""
    return trainer_state | {"plugins": {k: p.state_dict() for k, p in plugins.items()},
                            "stopped": stopped}


def load_plugin_states(plugins: dict[str, Stateful], states: dict[str, Any] | None,
                       where: Path) -> None:
    """Restore every stateful plug-in from a checkpoint (``states``: its ``plugins`` entry).

    Raises:
        ValueError: the checkpoint lacks one's state (written before it was checkpointed).
    """
    missing = sorted(set(plugins) - set(states or {}))
    if missing:
        raise ValueError(f"{where}: the checkpoint holds no state of {missing} (written by an "
                         "older version); a resumed run would restart them: use --force to "
                         "retrain from scratch")
    for key, plugin in plugins.items():
        plugin.load_state_dict(states[key])


def defense_reports(defenses: list, records: np.ndarray | None = None) -> list[dict[str, Any]]:
    """What every defense claims (its :class:`~splitpriv.defense.PrivacyClaim`), for result.json;
    a formal per-beat claim also states its patient-level consequence (``patient_level``: group
    privacy over the training beats of the largest patient) where the training rows' records
    (``records``) are known."""
    from splitpriv.defense import patient_level

    beats = {}
    if records is not None and len(records) and (np.asarray(records) >= 0).all():
        recs, counts = np.unique(records, return_counts=True)
        beats = dict(zip(recs.tolist(), counts.tolist(), strict=True))
    out = []
    for d in defenses:
        claim = d.report()
        doc = claim.to_dict()
        consequence = patient_level(claim, beats)
        if consequence is not None:
            doc["patient_level"] = consequence
        out.append(doc)
    return out


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
    ``force``. A detector with ``stop=true`` (``defenses.splitguard.HijackDetected``) ends
    training in the epoch of its alarm: that epoch is evaluated (its row has no training
    numbers: NaN) and the run finishes with ``stopped`` = {by, epoch, step, score, threshold}
    in result.json. The stop is final: a resumed run that was stopped trains no further (even
    with more ``epochs``); ``force`` retrains from scratch.
    """
    with RunDir(out_dir, config, force=force) as run_dir:
        done = run_dir.finished()
        if done is not None:
            return done
        with torch_threads(config.threads):
            return _train(config, run_dir, progress=progress)


def _train(config: TrainConfig, run_dir: RunDir, *, progress: bool) -> dict[str, Any]:
    defenses = build_defenses(config)  # bad defense parameters fail before anything is written
    behaviour = build_behaviour(config)
    device = resolve_device(config.device)
    # the data, models and the adversary's beats first: what fails here writes nothing
    data = build_run_data(config, device)
    check_distinct_beats(defenses, data, config)
    for d in defenses:
        d.provide_patients(data.part("record", "train"))
    topology = resolve_topology(config, defenses)
    models = build_run_models(config, topology, device)
    aux = behaviour_aux(behaviour.aux_spec(), data, seed=config.seed)
    resumed = run_dir.start()
    log = ReconstructionLog(run_dir.path / f"{behaviour.name}.jsonl", data.x_train, data.y_train,
                            None if aux is None else aux.x.mean(0), seed=config.seed,
                            groups=data.record_train) if not behaviour.follows_protocol else None
    behaviour.provide(aux=aux, record=log)
    transcript = Transcript(policy=config.record_policy())
    channel = CountingChannel(transcript)  # counts the bytes a two-process run would send
    trainer = SplitTrainer(
        models, data.x_train, data.y_train,
        lr=config.lr, batch_size=config.batch_size, seed=config.seed,
        channel=channel, defenses=defenses, behaviour=behaviour,
    )

    from defenses.splitguard import HijackDetected

    plugins = stateful_plugins(defenses, behaviour, log)
    stopped: dict[str, Any] | None = None

    def state() -> dict[str, Any]:
        return checkpoint_state(trainer.state_dict(), plugins, stopped)

    history: list[dict[str, Any]] = []
    start_epoch = 1
    if resumed is not None:
        trainer.load_state_dict(resumed.trainer)
        run_dir.restore_releases(transcript, resumed.epoch)
        load_plugin_states(plugins, resumed.trainer.get("plugins"), run_dir.file(CHECKPOINT))
        stopped = resumed.trainer.get("stopped")
        history, start_epoch = resumed.history, resumed.epoch + 1
    has_val = len(data.y_val) > 0

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start_epoch, config.epochs + 1) if stopped is None else range(0),
        initial=start_epoch - 1, total=config.epochs,
        desc=f"train {run_dir.path.name}", disable=not progress, unit="epoch",
    )
    for epoch in bar:
        t0 = time.perf_counter()
        try:
            tr = trainer.train_epoch(epoch)
        except HijackDetected as alarm:  # the client stops here: evaluate, record, finish
            stopped = {"by": alarm.by, "epoch": epoch, "step": alarm.batch,
                       "score": alarm.score, "threshold": alarm.threshold}
            tr = EpochStats(math.nan, math.nan)
        if stopped is None and not math.isfinite(tr.loss):
            step = (f" (first non-finite at step {tr.first_nonfinite_step})"
                    if tr.first_nonfinite_step else "")
            raise ValueError(f"{run_dir.path}: the training loss of epoch {epoch} is {tr.loss}"
                             f"{step}: diverged; lower --lr or check the defenses' parameters; "
                             f"the run keeps its epochs 1..{epoch - 1}")
        train_seconds = time.perf_counter() - t0
        te = trainer.evaluate(data.x_test, data.y_test, epoch=epoch, phase="test")
        va = trainer.evaluate(data.x_val, data.y_val, epoch=epoch, phase="val") if has_val else None
        history.append(epoch_row(epoch, tr, te, va, train_seconds, time.perf_counter() - t0))
        run_dir.save_epoch(history, models.state_dicts, state, transcript)
        bar.set_postfix(test=f"{te.accuracy:.2f}", val=f"{va.accuracy if va else float('nan'):.2f}")
        if stopped is not None:
            break

    run_dir.save_weights(models.state_dicts())
    run_dir.save_transcript(transcript)
    return run_dir.finish(result_doc(
        config, history, rows=row_counts(data), device=device, card=data.card,
        topology=topology, defenses=defense_reports(defenses, data.part("record", "train")),
        # per epoch run in this process (a resumed run: the epochs after the resume)
        server=trainer.server.behaviour.report() | (
            {"reconstructions": log.summary()} if log is not None and log.rows else {}),
        wire=channel.wire.summary(), **({"stopped": stopped} if stopped is not None else {}),
    ))


def row_counts(data: Tensors) -> dict[str, int]:
    """``n_train``, ``n_val``, ``n_test`` for result.json."""
    return {f"n_{p}": len(data.part("y", p)) for p in ("train", "val", "test")}


__all__ = [
    "ATTACKS", "BEST", "CHECKPOINT", "PHASES", "RESULT", "TOPOLOGIES", "TRANSCRIPT", "WEIGHTS",
    "Resumed", "RunDir",
    "ReconstructionLog", "Stateful", "Tensors", "TrainConfig", "behaviour_aux",
    "build_behaviour", "checkpoint_state", "load_plugin_states", "stateful_plugins",
    "build_defenses", "build_run_data", "check_distinct_beats",
    "build_run_models", "defense_reports", "epoch_row", "load_tensors", "resolve_topology",
    "result_doc", "row_counts", "run_training", "summarize",
]
