"""A run killed at any point resumes without losing a recorded epoch or leaving a temporary file;
a diverged run stops with an error instead of a result."""

from __future__ import annotations

import pytest

from splitpriv.channel import Transcript
from splitpriv.cli import main
from splitpriv.run import TrainConfig, run_training
from splitpriv.run.rundir import RunDir
from splitpriv.trainer import SplitTrainer


class Killed(BaseException):
    """Stands in for a kill: nothing after it runs (BaseException, like KeyboardInterrupt)."""


def kill_in_epoch(monkeypatch, epoch: int):
    """Every in-process trainer dies (:class:`Killed`) when it begins training ``epoch``; returns
    the real ``train_epochs``, to restore before resuming."""
    real = SplitTrainer.train_epochs

    def dies(self, e):
        if e == epoch:
            raise Killed
        return real(self, e)

    monkeypatch.setattr(SplitTrainer, "train_epochs", dies)
    return real


def config(pool_dirs, **kw) -> TrainConfig:
    mitdb, cache = pool_dirs
    base = dict(protocol="paper-unique", epochs=5, train_subset=300, test_subset=100,
                record_epochs="all", mitdb_dir=str(mitdb), cache_dir=str(cache))
    return TrainConfig(**(base | kw))


def train_epochs(tr: Transcript) -> list[int]:
    return tr.epochs("activations", "train")


def test_a_run_killed_in_epoch_3_keeps_epochs_1_and_2_of_its_transcript(pool_dirs, tmp_path,
                                                                       monkeypatch):
    cfg, out = config(pool_dirs), tmp_path / "run"
    real = kill_in_epoch(monkeypatch, 3)
    with pytest.raises(Killed):
        run_training(cfg, out, progress=False)
    assert not (out / "result.json").exists()
    monkeypatch.setattr(SplitTrainer, "train_epochs", real)
    result = run_training(cfg, out, progress=False)
    assert result["epochs"] == 5
    transcript = Transcript.load(out / "transcript.npz")
    assert train_epochs(transcript) == [1, 2, 3, 4, 5]
    assert transcript.epochs("activations", "test") == [1, 2, 3, 4, 5]
    assert not (out / "transcript.parts").exists()
    assert not list(out.glob(".*.tmp"))


def test_a_run_killed_while_writing_its_transcript_finishes_it_on_rerun(pool_dirs, tmp_path,
                                                                        monkeypatch):
    cfg, out = config(pool_dirs, epochs=2), tmp_path / "run"
    real = Transcript.save

    def dies_mid_write(self, path, keys=None):
        if str(path).endswith("transcript.npz"):
            (out / ".transcript.npz.deadbeef.tmp").write_bytes(b"half a file")
            raise Killed
        return real(self, path, keys)

    monkeypatch.setattr(Transcript, "save", dies_mid_write)
    with pytest.raises(Killed):
        run_training(cfg, out, progress=False)
    monkeypatch.setattr(Transcript, "save", real)
    run_training(cfg, out, progress=False)
    assert train_epochs(Transcript.load(out / "transcript.npz")) == [1, 2]
    assert not list(out.glob(".*.tmp"))


def test_a_fresh_start_removes_the_parts_of_another_attempt(pool_dirs, tmp_path):
    cfg, out = config(pool_dirs, epochs=1), tmp_path / "run"
    parts = out / "transcript.parts"
    parts.mkdir(parents=True)
    Transcript().save(parts / "epoch-00007.npz")
    RunDir(out, cfg).start()
    assert not parts.exists()


def test_a_diverging_run_stops_with_an_error_naming_the_epoch(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    rc = main(["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
               "--train-subset", "300", "--test-subset", "100", "--epochs", "3", "--lr", "1e30",
               "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "training loss of epoch" in err and "\n" not in err.strip()
    assert "first non-finite at step" in err
    assert not (out / "result.json").exists()
