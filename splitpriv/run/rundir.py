"""A run directory: the one writer of what a run leaves behind.

DIR/config.json      everything needed to rerun it
DIR/metrics.jsonl    one line per epoch: train/val/test loss, accuracy, macro-F1 and balanced
                     accuracy, the val/test confusion matrices, wall time
DIR/result.json      final numbers (written last: its presence means the run finished)
DIR/checkpoint.pt    weights, optimizer and RNG state after the last completed epoch (resume),
                     with the stateful plug-ins' (``splitpriv.run.Stateful``: a detector, an
                     adversary, its reconstruction log) and a detector's stop, if any
DIR/weights.pt       final weights; DIR/best.pt the weights at the best-validation epoch
DIR/transcript.npz   what crossed the channel, for the epochs and kinds recorded

A distributed run's parties add their own records (``server.json``, ``client-K.json``,
``weights-server.pt``, ``distributed.json``); each party's record marks that party finished, as
result.json marks the run. Every file is written atomically; a run killed mid-way resumes from its
last completed epoch.

DIR/.NAME.lock       held (``flock``, with the writer's PID in it) by the process writing the run
                     (NAME: its marker), from :meth:`RunDir.start` to :meth:`RunDir.finish`: a
                     second writer is refused, naming the first's PID; the lock of a process that
                     died is free again (the kernel drops it), so a rerun takes it over
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitpriv.channel import Transcript
from splitpriv.io import (
    load_npz,
    read_file,
    read_json,
    save_npz,
    torch_load,
    torch_save,
    write_json,
    write_text,
)
from splitpriv.metrics import report
from splitpriv.run.config import TrainConfig

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
TRANSCRIPT = "transcript.npz"
#: one npz per trained epoch (what that epoch recorded), merged into transcript.npz at the end
TRANSCRIPT_PARTS = "transcript.parts"
WEIGHTS = "weights.pt"
#: where ``splitpriv attack`` writes its results
ATTACKS = "attacks"
#: what a fresh start of a run (``--force`` included) removes (glob patterns): a later resume,
#: model selection or attack must not read what another attempt or another run left, a
#: distributed one's records included
STALE = (CHECKPOINT, BEST, TRANSCRIPT, TRANSCRIPT_PARTS, WEIGHTS, ATTACKS, "metrics.jsonl",
         "weights-server.pt", "distributed.json", "server.json", "client-*.json")


def summarize(history: list[dict[str, Any]], has_val: bool, select_by: str = "accuracy",
              classes: str | None = None) -> dict[str, Any]:
    """Model selection: the epoch of the best validation ``select_by`` (``accuracy``,
    ``macro_f1``, ``balanced_accuracy``) when there is a validation set (else the last), and,
    beside it, the paper's "best test accuracy" (max over epochs, selected on the test set).

    With ``classes`` and the selected row's confusion matrices, the selected epoch's per-class
    table (:func:`splitpriv.metrics.report`) is added as ``test_metrics`` / ``val_metrics``."""
    if has_val:
        key = f"val_{select_by}"
        if key not in history[-1]:
            raise ValueError(f"select_by={select_by!r}: the epoch rows have no {key!r}")
        best = max(history, key=lambda h: (h[key], -h["epoch"]))
        selection = f"best validation {select_by.replace('_', '-')}"
    else:
        best, selection = history[-1], "last epoch (no validation set)"
    best_test = max(history, key=lambda h: (h["test_accuracy"], -h["epoch"]))
    out = {
        "test_accuracy": best["test_accuracy"],
        "val_accuracy": best.get("val_accuracy"),
        "test_macro_f1": best.get("test_macro_f1"),
        "test_balanced_accuracy": best.get("test_balanced_accuracy"),
        "val_macro_f1": best.get("val_macro_f1"),
        "best_epoch": best["epoch"],
        "selection": selection,
        "best_test_accuracy": best_test["test_accuracy"],
        "best_test_epoch": best_test["epoch"],
        "final_test_accuracy": history[-1]["test_accuracy"],
    }
    for phase in ("test", "val"):
        if classes is not None and best.get(f"{phase}_confusion") is not None:
            out[f"{phase}_metrics"] = report(best[f"{phase}_confusion"], classes)
    return out


def phase_fields(phase: str, stats) -> dict[str, Any]:
    """One phase's numbers in an epoch row: ``{phase}_loss``, ``{phase}_accuracy`` and, when
    ``stats`` counted a confusion matrix, ``{phase}_macro_f1``, ``{phase}_balanced_accuracy``
    and (not for training) ``{phase}_confusion``. Every driver's rows are built with this."""
    row = {f"{phase}_loss": stats.loss, f"{phase}_accuracy": stats.accuracy}
    row |= {f"{phase}_{k}": v for k, v in stats.metrics.items()}
    if phase != "train" and stats.confusion is not None:
        row[f"{phase}_confusion"] = stats.confusion
    return row


def epoch_row(epoch: int, train, test, val, train_seconds: float, seconds: float
              ) -> dict[str, Any]:
    """One line of metrics.jsonl (``val`` None when the protocol has no validation set)."""
    row: dict[str, Any] = {"epoch": epoch, **phase_fields("train", train),
                           **phase_fields("test", test)}
    if val is not None:
        row |= phase_fields("val", val)
    return row | {"train_seconds": train_seconds, "seconds": seconds}


def result_doc(config: TrainConfig, history: list[dict[str, Any]], *, rows: dict[str, int],
               device: torch.device, card: dict[str, Any], topology: str,
               defenses: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The content of result.json. ``rows``: the row counts (``n_train``, ``n_val``,
    ``n_test``); the validation set is used for selection when ``n_val`` > 0."""
    return {
        "config": asdict(config),  # what the run was: an attack compares it with config.json
        "protocol": config.protocol, "labels": config.labels, "depth": config.depth,
        "seed": config.seed, "topology": topology, "epochs": config.epochs,
        **summarize(history, rows.get("n_val", 0) > 0, config.select_by, card.get("classes")),
        "seconds": sum(h["seconds"] for h in history),
        "train_seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
        **rows,
        "device": str(device),
        "defenses": defenses,
        **extra,
        "dataset": card,
    }


@dataclass
class Resumed:
    """What a checkpoint restores: the trainer's state, the epochs done and their rows."""

    trainer: dict[str, Any]
    history: list[dict[str, Any]]
    epoch: int


class RunDir:
    """One run's directory, for one config: check it, (re)start or resume the run, save every
    epoch, finish. Use it as a context manager (``with RunDir(...) as run_dir:``): the writer's
    lock, taken by :meth:`start`, is released at :meth:`finish` or when the block ends.

    Args:
        path: the directory.
        config: the run.
        force: retrain even if the directory holds this run finished, or another run.
        marker: the file whose presence means finished: ``result.json`` for the run (and the
            distributed party that writes it); another party's own record (``server.json``).
    """

    def __init__(self, path: str | Path, config: TrainConfig, *, force: bool = False,
                 marker: str = RESULT) -> None:
        self.path, self.config, self.force, self.marker = Path(path), config, force, marker
        check_out_dir(self.path)
        self.best_val = -math.inf
        self._saved_keys: set[tuple[str, str, int]] = set()
        self._lock_fd: int | None = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def trained_epochs(self) -> int:
        """The epochs metrics.jsonl records (0: nothing trained here yet)."""
        metrics = self.file("metrics.jsonl")
        if not metrics.exists():
            return 0
        return len(read_file(metrics, lambda p: p.read_text(), "text").splitlines())

    def finished(self) -> dict[str, Any] | None:
        """The marker's content when the directory holds this run finished (None when it has to
        be trained or resumed). A config.json with nothing trained beside it (a run refused or
        killed before its first epoch) belongs to no run: any config may start there.

        Raises:
            ValueError: config.json was written for another run, or the run's epochs changed
                while a defense's noise was calibrated to them (unless ``force``).
        """
        if not self.file("config.json").exists() or self.force:
            return None
        done = self.trained_epochs()
        if not (done or self.has_checkpoint or self.file(self.marker).exists()):
            return None
        old = TrainConfig.load(self.file("config.json"))
        old_key, key = old.rerun_key(), self.config.rerun_key()
        if old_key != key:
            diff = {k: (old_key.get(k), v) for k, v in key.items() if old_key.get(k) != v}
            raise ValueError(
                f"{self.file('config.json')} was written for another run: {diff}; use --force")
        if done > self.config.epochs:
            raise ValueError(f"{self.path} holds {done} trained epochs, more than the "
                             f"{self.config.epochs} asked for; use --force to retrain it, or "
                             "another --out")
        if old.epochs != self.config.epochs:
            self._check_extension(old.epochs)
        if self.file(self.marker).exists() and old.epochs == self.config.epochs:
            return read_json(self.file(self.marker))
        return None

    def _check_extension(self, planned: int) -> None:
        """Refuse to train on to other epochs than the ``planned`` ones when a defense calibrated
        its noise to them (:meth:`splitpriv.defense.Defense.fixes_epochs`): the epochs trained
        were released at that noise, and recalibrating the rest would claim a budget the releases
        exceed."""
        for spec in self.config.defenses:
            why = spec.build().fixes_epochs()
            if why:
                raise ValueError(
                    f"{self.path} holds a run planned for {planned} epochs with defense "
                    f"{spec!r}, whose {why}: training it to {self.config.epochs} epochs would "
                    "recalibrate the noise of the epochs to come, and its claim would not be "
                    "what its releases compose to; use --force to retrain it for "
                    f"{self.config.epochs} epochs, or another --out")

    def start(self, *, resumable: bool = True, stale: Sequence[str] = STALE) -> Resumed | None:
        """Take the writer's lock, write config.json and begin: the checkpoint's state when there
        is one to resume (``resumable`` and not ``force``), else None after removing the ``stale``
        files (glob patterns) another attempt or run left (a fresh start must not be resumed,
        selected from or attacked later). The marker goes first either way: the directory is
        finished only once :meth:`finish` writes it again.

        Raises:
            ValueError: another process writes the directory (its PID named), or the checkpoint
                disagrees with metrics.jsonl or the transcript parts (unless ``force``).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        for orphan in [*self.path.glob(".*.tmp"), *self.path.glob(f"{TRANSCRIPT_PARTS}/.*.tmp")]:
            orphan.unlink(missing_ok=True)  # a temporary file of a killed attempt
        if resumable and not self.force and self.has_checkpoint:
            resumed = self._resume()
            self.file(self.marker).unlink(missing_ok=True)
            write_json(self.file("config.json"), asdict(self.config))
            return resumed
        self.file(self.marker).unlink(missing_ok=True)
        for path in (p for pattern in stale for p in self.path.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        write_json(self.file("config.json"), asdict(self.config))
        return None

    def _resume(self) -> Resumed:
        """The checkpoint's state, once checked against metrics.jsonl (which must hold its epochs
        1..E, in order; rows of a later epoch are those of an epoch killed before its checkpoint)
        and the transcript's epoch parts (each must read)."""
        state = torch_load(self.file(CHECKPOINT))
        epoch, metrics = state["epoch"], self.file("metrics.jsonl")
        rows = read_file(metrics, lambda p: [json.loads(r) for r in p.read_text().splitlines()],
                         "JSON lines")[:epoch] if metrics.exists() else []
        if [r.get("epoch") for r in rows] != list(range(1, epoch + 1)):
            raise ValueError(
                f"{metrics} holds epochs {[r.get('epoch') for r in rows]}, "
                f"but {self.file(CHECKPOINT)} is at epoch {epoch}: they disagree (edited, or left "
                "by another attempt), so the run cannot be resumed; use --force to retrain it")
        for part in sorted(self.file(TRANSCRIPT_PARTS).glob("epoch-*.npz")):
            read_file(part, lambda p: zipfile.ZipFile(p).testzip(), "a transcript part (npz)")
        self.best_val = state["best_val"]
        return Resumed(state["trainer"], rows, epoch)

    def _lock(self) -> None:
        """Hold ``DIR/.MARKER.lock`` until :meth:`release` (or this process ends)."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.file(f".{self.marker}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"{self.path} is being written by another process (PID {holder}); wait for it "
                "to finish or stop it first (--force does not override a live run)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Release the writer's lock (nothing when not held)."""
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)

    def save_epoch(self, history: list[dict[str, Any]], weights: Callable[[], dict],
                   trainer_state: Callable[[], dict] | None = None,
                   transcript: Transcript | None = None) -> None:
        """After an epoch (its row last in ``history``): what ``transcript`` recorded up to this
        epoch and has not saved yet (one part file per epoch, so that a resumed run loses no
        recorded epoch), best.pt when the validation number the run selects by
        (``config.select_by``) improved, then metrics.jsonl and (given the trainer's state) the
        checkpoint."""
        row = history[-1]
        if transcript is not None:
            self.save_part(transcript, row["epoch"])
        key = f"val_{self.config.select_by}"
        if key in row and row[key] > self.best_val:
            self.best_val = row[key]
            torch_save(weights(), self.file(BEST))
        write_text(self.file("metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in history))
        if trainer_state is not None:
            torch_save({"trainer": trainer_state(), "epoch": row["epoch"],
                        "best_val": self.best_val}, self.file(CHECKPOINT))

    def resume_selection(self, history: list[dict[str, Any]]) -> None:
        """The best validation number of the epochs a resumed run keeps (``history``), so that
        best.pt is replaced only by a better epoch, as in a run never killed."""
        key = f"val_{self.config.select_by}"
        self.best_val = max((h[key] for h in history if key in h), default=-math.inf)

    def save_weights(self, state: dict, name: str = "weights.pt") -> None:
        torch_save(state, self.file(name))

    def save_part(self, transcript: Transcript, epoch: int, *, releases: bool = True) -> None:
        """What ``transcript`` recorded up to ``epoch`` and has not saved yet, as one part file
        (and, with ``releases``, :meth:`save_releases`)."""
        keys = [k for k in transcript.keys() if k[2] <= epoch and k not in self._saved_keys]
        if keys:
            transcript.save(self.file(TRANSCRIPT_PARTS) / f"epoch-{epoch:05d}.npz", keys)
            self._saved_keys.update(keys)
        if releases:
            self.save_releases(transcript, epoch)

    def save_releases(self, transcript: Transcript, epoch: int) -> None:
        """The release log's blocks that ended with ``epoch`` (one part each) and its state after
        ``epoch`` (the block in progress, exact; the state before it is kept, since a kill before
        this epoch's checkpoint resumes from it, and older ones are removed)."""
        log = transcript.releases
        if log is None:
            return
        parts = self.file(TRANSCRIPT_PARTS)
        for b, (lo, hi) in enumerate(log.blocks):
            if hi == epoch and b in log.held():
                save_npz(parts / f"releases-{lo:05d}-{hi:05d}.npz", log.block_arrays(b))
        save_npz(parts / f"releases-state-{epoch:05d}.npz", log.state_arrays(epoch))
        for old in parts.glob("releases-state-*.npz"):  # the previous one stays until the
            if int(old.stem.rsplit("-", 1)[1]) < epoch - 1:  # checkpoint of this epoch is in
                old.unlink(missing_ok=True)

    def restore_releases(self, transcript: Transcript, epoch: int) -> bool:
        """Give a resumed run's release log what it had kept after ``epoch`` (its finished blocks
        and its state then). Returns False, keeping nothing of before, where the parts do not
        hold that state (an older run, or one extended beyond its planned epochs, whose blocks
        were other): the log then holds the releases from the resume on, and says so in the
        epochs it spans."""
        log = transcript.releases
        if log is None:
            return True
        parts = self.file(TRANSCRIPT_PARTS)
        state = parts / f"releases-state-{epoch:05d}.npz"
        if not state.exists():
            return False
        finished: dict[str, np.ndarray] = {}
        for lo, hi in log.blocks:
            path = parts / f"releases-{lo:05d}-{hi:05d}.npz"
            if hi <= epoch and path.exists():
                finished |= load_npz(path)
        log.restore(finished, load_npz(state))
        return True

    def save_transcript(self, transcript: Transcript | None) -> None:
        """DIR/transcript.npz: the epoch parts on disk (earlier attempts of a resumed run
        included) and what ``transcript`` holds, when anything was recorded; then the parts go."""
        merged = Transcript()
        parts = sorted(self.file(TRANSCRIPT_PARTS).glob("epoch-*.npz"))
        for part in parts:
            merged.update(Transcript.load(part))
        if transcript is not None:
            merged.update(transcript)
        if merged.chunks or (merged.releases is not None and merged.releases.held()):
            merged.save(self.file(TRANSCRIPT))
        if self.file(TRANSCRIPT_PARTS).exists():
            shutil.rmtree(self.file(TRANSCRIPT_PARTS))

    def write_record(self, name: str, doc: dict[str, Any]) -> None:
        """A JSON record beside the run's files (``distributed.json``)."""
        write_json(self.file(name), doc)

    def finish(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Write the marker (result.json, or the party's record): the run is done; the lock is
        released."""
        write_json(self.file(self.marker), doc)
        self.release()
        return doc


def check_out_dir(path: Path) -> None:
    """Refuse a run directory that cannot be one: an existing file, a dangling symbolic link, a
    path through a file (``--out FILE/sub``), before anything is built or written."""
    if path.is_symlink() and not path.exists():
        raise ValueError(f"--out {path}: a symbolic link to {os.readlink(path)}, which does not "
                         "exist")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: exists and is not a directory")
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"--out {path}: {above} is a file, not a directory")


__all__ = ["ATTACKS", "BEST", "CHECKPOINT", "RESULT", "STALE", "TRANSCRIPT", "TRANSCRIPT_PARTS",
           "WEIGHTS", "Resumed", "RunDir", "check_out_dir", "epoch_row", "phase_fields",
           "result_doc", "summarize"]
