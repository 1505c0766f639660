"""Bad command-line input gets one line naming the argument, exit code 2, and nothing written."""

from __future__ import annotations

import pytest

from splitpriv.cli import main
from splitpriv.options import convert


@pytest.mark.parametrize(("flags", "named"), [
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--train-subset", "0"], "--train-subset"),
    (["--train-subset", "-5"], "--train-subset"),
    (["--test-subset", "0"], "--test-subset"),
    (["--seed", str(2**70)], "--seed"),
    (["--device", "bogus"], "--device"),
    (["--threads", "-1"], "--threads"),
    (["--record-kinds", "bogus"], "record_kinds"),
    (["--record-epochs", "x,y"], "record_epochs"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--defense", "dp:mode=paper,epsilon=inf"], "epsilon"),
    (["--defense", "dp:mode=formal,noise_multiplier=inf"], "noise_multiplier"),
    (["--defense", "dp:mode=formal,target_epsilon=nan"], "target_epsilon"),
    (["--server", "scaled:factor=nan"], "factor"),
])
def test_bad_train_flags_get_one_line_and_write_nothing(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--epochs", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert named in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "NaN", "1e999"])
def test_typed_options_refuse_non_finite_floats(text):
    with pytest.raises(ValueError, match="finite"):
        convert(text, float, "epsilon", "defense 'dp'")
    with pytest.raises(ValueError, match="finite"):
        convert(text, float | None, "epsilon", "defense 'dp'")
    assert convert("none", float | None, "epsilon", "defense 'dp'") is None


def test_a_received_config_with_an_unknown_key_is_named(tmp_path):
    import json

    from splitpriv.run import TrainConfig

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"protocol": "paper", "epochs": 3, "colour": "blue"}))
    with pytest.raises(ValueError, match=r"config\.json: unknown config field\(s\) \['colour'\]"):
        TrainConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        TrainConfig.load(path)
    path.write_text(json.dumps({"epochs": 0}))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig.load(path)


def test_a_truncated_weights_file_is_named(tmp_path):
    import torch

    from splitpriv.io import torch_load, torch_save

    path = tmp_path / "weights.pt"
    torch_save({"w": torch.arange(1000.0)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"weights\.pt: cannot be read as a torch file"):
        torch_load(path)
    with pytest.raises(ValueError, match="no such file"):
        torch_load(tmp_path / "missing.pt")


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["train", "--out", str(target), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a directory" in err and "\n" not in err
    assert target.read_text() == "mine"


def test_a_finished_run_rerun_with_fewer_epochs_is_refused(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
            "--train-subset", "200", "--test-subset", "100", "--no-progress"]
    assert main([*base, "--epochs", "2"]) == 0
    before = (out / "result.json").read_text()
    capsys.readouterr()
    assert main([*base, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 trained epochs, more than the 1 asked for" in err
    assert (out / "result.json").read_text() == before


def test_a_changed_record_policy_on_an_existing_run_is_named(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
            "--train-subset", "200", "--test-subset", "100", "--no-progress", "--epochs", "1"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--record-epochs", "all"]) == 2
    assert "record_epochs" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "named"), [
    ("only-one.hdf5", "expected TRAIN,TEST"),
    ("a.hdf5,b.hdf5 --protocol inter-patient", "cannot apply to them"),
])
def test_a_bad_hdf5_pair_is_refused_before_anything_is_written(tmp_path, capsys, value, named):
    out = tmp_path / "run"
    hdf5, *rest = value.split(" ")
    assert main(["train", "--out", str(out), "--epochs", "1", "--hdf5", hdf5, *rest]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_a_run_that_fails_on_its_data_writes_nothing_and_does_not_block_the_rerun(
        pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    base = ["train", "--out", str(out), "--cache-dir", str(cache), "--train-subset", "200",
            "--test-subset", "100", "--no-progress", "--epochs", "1"]
    # records that are not there: refused before config.json is written
    assert main([*base, "--mitdb-dir", str(tmp_path / "no-records"), "--depth", "3"]) == 2
    assert not (out / "config.json").exists()
    capsys.readouterr()
    assert main([*base, "--mitdb-dir", str(mitdb)]) == 0  # another depth, no --force needed
    assert (out / "result.json").exists()
