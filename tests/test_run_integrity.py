"""A run directory holds one run, written by one process, and what it claims is what its releases
compose to: extensions that would recalibrate the noise, per-beat claims on duplicated beats,
concurrent writers, stale files after --force, and attacks on runs whose files disagree are all
refused with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_run_kills import Killed, kill_in_epoch

from splitpriv.cli import main
from splitpriv.run import TrainConfig, run_training


def base(pool_dirs, out: Path, *extra: str) -> list[str]:
    mitdb, cache = pool_dirs
    return ["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
            "--train-subset", "300", "--test-subset", "100", "--no-progress", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitpriv: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("spec", [
    "dp:mode=formal,mechanism=gaussian,target_epsilon=4,clip=2",
    "dpsgd:target_epsilon=4",
])
def test_extending_a_run_whose_noise_was_calibrated_to_its_epochs_is_refused(
        pool_dirs, tmp_path, capsys, spec):
    out = tmp_path / "run"
    assert main(base(pool_dirs, out, "--epochs", "1", "--defense", spec)) == 0
    before = (out / "result.json").read_text()
    capsys.readouterr()
    assert main(base(pool_dirs, out, "--epochs", "2", "--defense", spec)) == 2
    err = one_line_error(capsys)
    assert "calibrated to target_epsilon=4" in err and "--force" in err
    assert (out / "result.json").read_text() == before
    # retrained for 2 epochs, the claim is the budget's: epsilon at most 4
    assert main(base(pool_dirs, out, "--epochs", "2", "--defense", spec, "--force")) == 0
    claim = json.loads((out / "result.json").read_text())["defenses"][0]
    assert claim["epsilon"] <= 4.0 + 1e-6


def test_extending_a_run_of_fixed_noise_composes_every_release(pool_dirs, tmp_path, capsys):
    from defenses.dp import GaussianMechanism

    out, spec = tmp_path / "run", "dp:mode=formal,mechanism=gaussian,noise_multiplier=2,clip=2"
    assert main(base(pool_dirs, out, "--epochs", "1", "--defense", spec)) == 0
    assert main(base(pool_dirs, out, "--epochs", "3", "--defense", spec)) == 0
    claim = json.loads((out / "result.json").read_text())["defenses"][0]
    assert claim["train"]["releases_per_beat"] == 3
    three = GaussianMechanism().guarantee(noise_multiplier=2.0, releases=3, delta=1e-5,
                                          accountant="exact")
    assert claim["epsilon"] == pytest.approx(three.epsilon)


@pytest.mark.parametrize("spec", ["dp:mode=formal,mechanism=gaussian,target_epsilon=4,clip=2",
                                  "labeldp:epsilon=1"])
def test_a_per_beat_claim_on_the_paper_protocol_s_duplicated_beats_is_refused(
        pool_dirs, tmp_path, capsys, spec):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    flags = ["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
             "--test-subset", "100", "--epochs", "1", "--no-progress", "--defense", spec]
    assert main([*flags, "--protocol", "paper", "--paper-softmax"]) == 2
    err = one_line_error(capsys)
    assert "more than once" in err and "paper-unique" in err
    assert not (out / "config.json").exists()
    # the corrected command needs no --force
    assert main([*flags, "--protocol", "paper-unique", "--train-subset", "300"]) == 0


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_one_s_lock_is_taken_over(
        pool_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / '.result.json.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for force in ([], ["--force"]):
            assert main(base(pool_dirs, out, "--epochs", "1", *force)) == 2
            err = one_line_error(capsys)
            assert f"being written by another process (PID {holder.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [".result.json.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main(base(pool_dirs, out, "--epochs", "1")) == 0  # the dead process's lock is free


def test_force_clears_what_it_replaces_and_the_attack_refuses_the_unfinished_run(
        pool_dirs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(base(pool_dirs, out, "--epochs", "1")) == 0
    (out / "attacks").mkdir()
    (out / "attacks" / "dcor.json").write_text("{}")
    (out / "client-2.json").write_text("{}")  # as a distributed run over it would have left
    kill_in_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        main(base(pool_dirs, out, "--epochs", "2", "--depth", "3", "--force"))
    left = {p.name for p in out.iterdir()}
    assert not left & {"weights.pt", "best.pt", "attacks", "transcript.npz", "result.json",
                       "checkpoint.pt", "metrics.jsonl", "client-2.json"}
    capsys.readouterr()
    assert main(["attack", "dcor", "--run", str(out)]) == 2
    assert "not found: not a finished run directory" in one_line_error(capsys)


def test_an_attack_refuses_files_of_another_run(pool_dirs, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(base(pool_dirs, a, "--epochs", "1")) == 0
    assert main(base(pool_dirs, b, "--epochs", "1", "--depth", "3", "--seed", "1")) == 0
    capsys.readouterr()
    shutil.copy(b / "config.json", a / "config.json")  # A's result and weights, B's config
    assert main(["attack", "dcor", "--run", str(a)]) == 2
    assert "result.json was written for another run than config.json describes: depth = 2" \
        in one_line_error(capsys)
    shutil.copy(b / "result.json", a / "result.json")  # B's config and result, A's weights
    assert main(["attack", "dcor", "--run", str(a)]) == 2
    assert "weights.pt: does not hold the weights of the run" in one_line_error(capsys)
    assert main(["attack", "dcor", "--run", str(a / "config.json")]) == 2
    assert "not a directory" in one_line_error(capsys)


def test_an_attack_refuses_hdf5_files_changed_since_the_run(pool, tmp_path, isolated_cache,
                                                            capsys):
    from attacks.runs import load_run
    from splitpriv.data import make_split, write_paper_hdf5

    train, test = write_paper_hdf5(make_split(pool, "inter-patient"), tmp_path / "files")
    config = TrainConfig(hdf5=f"{train},{test}", epochs=1, train_subset=64, test_subset=64)
    run_training(config, tmp_path / "run", progress=False)
    load_run(tmp_path / "run")  # unchanged: loads
    with h5py.File(train, "r+") as fh:  # the same shape, rows permuted
        fh["x_train"][...] = fh["x_train"][()][np.random.default_rng(0).permutation(
            len(fh["x_train"]))]
    with pytest.raises(ValueError, match="hdf5 train_sha256"):
        load_run(tmp_path / "run")


def test_a_checkpoint_that_disagrees_with_metrics_is_refused(pool_dirs, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "run"
    kill_in_epoch(monkeypatch, 3)
    with pytest.raises(Killed):
        main(base(pool_dirs, out, "--epochs", "4"))
    monkeypatch.undo()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    for edited in ("", lines[1] + "\n"):  # emptied; epoch 1 lost
        (out / "metrics.jsonl").write_text(edited)
        capsys.readouterr()
        assert main(base(pool_dirs, out, "--epochs", "4")) == 2
        assert "but " in (err := one_line_error(capsys)) and "checkpoint.pt is at epoch 2" in err
    assert main(base(pool_dirs, out, "--epochs", "4", "--force")) == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_a_truncated_transcript_part_is_refused_before_training(pool_dirs, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "run"
    kill_in_epoch(monkeypatch, 3)
    with pytest.raises(Killed):
        main(base(pool_dirs, out, "--epochs", "4", "--record-epochs", "all"))
    monkeypatch.undo()
    part = out / "transcript.parts" / "epoch-00001.npz"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    capsys.readouterr()
    assert main(base(pool_dirs, out, "--epochs", "4", "--record-epochs", "all")) == 2
    err = one_line_error(capsys)
    assert "epoch-00001.npz: cannot be read as a transcript part" in err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # nothing trained


def test_a_refused_run_leaves_nothing_that_blocks_the_corrected_command(pool_dirs, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    # refused once the client is built (labeldp has no labels to protect in the U-shape)
    assert main(base(pool_dirs, out, "--epochs", "1", "--topology", "ushape",
                     "--defense", "labeldp:epsilon=1")) == 2
    assert "U-shaped topology sends no labels" in one_line_error(capsys)
    assert main(base(pool_dirs, out, "--epochs", "1", "--defense", "labeldp:epsilon=1")) == 0
    assert os.path.exists(out / "result.json")


def test_an_attack_whose_run_changes_meanwhile_writes_no_result(pool_dirs, tmp_path, capsys,
                                                                monkeypatch):
    import attacks.cli

    out = tmp_path / "run"
    assert main(base(pool_dirs, out, "--epochs", "1")) == 0
    real = attacks.cli.knowledge_for

    def retrained_meanwhile(*args, **kw):  # another process rewrites the run mid-attack
        (out / "result.json").write_text((out / "result.json").read_text() + " ")
        return real(*args, **kw)

    monkeypatch.setattr(attacks.cli, "knowledge_for", retrained_meanwhile)
    capsys.readouterr()
    assert main(["attack", "dcor", "--run", str(out)]) == 2
    assert "the run's files changed while it was attacked" in one_line_error(capsys)
    assert not (out / "attacks" / "dcor.json").exists()
