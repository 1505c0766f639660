"""Bad command-line input gets one line naming the argument, exit code 2, and nothing written."""

from __future__ import annotations

import re

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
    (["--threads", "100000"], "argument --threads: threads must be in 0..1024"),
    (["--device", "meta"], "argument --device: device: 'meta' is not a device a run can train"),
    (["--batch-size", "100000000000000000000"], "argument --batch-size: '1000"),
    (["--record-epochs", "999"], "record_epochs: epoch(s) [999] outside the run's epochs 1..1"),
    (["--defense", "dp:mode=paper,epsilon=3,epsilon=10"], "epsilon given twice ('3' and '10')"),
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


def test_a_validation_fraction_that_leaves_no_training_row_is_named(pool_dirs, tmp_path,
                                                                    capsys):
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
                 "--val-fraction", "0.99999999", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "val_fraction 0.99999999 leaves no training row of the 13,245" in err
    assert "\n" not in err and not out.exists()


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


@pytest.mark.parametrize("kind", ["under-a-file", "dangling-link"])
def test_an_out_path_that_cannot_be_a_directory_is_one_line(tmp_path, capsys, kind):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    if kind == "under-a-file":
        out, named = a_file / "sub", "is a file, not a directory"
    else:
        out, named = tmp_path / "link", "a symbolic link to"
        out.symlink_to(tmp_path / "nowhere")
    assert main(["train", "--out", str(out), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and "Traceback" not in err
    assert a_file.read_text() == "mine" and not (tmp_path / "nowhere").exists()


def test_a_config_json_value_of_the_wrong_type_is_named(tmp_path):
    import json

    from splitpriv.run import TrainConfig

    path = tmp_path / "config.json"
    for doc, named in (({"record_epochs": 5}, "record_epochs must be str, got 5"),
                       ({"epochs": "2"}, "epochs must be int, got '2'"),
                       ({"defenses": "dp"}, "defenses must be list, got 'dp'"),
                       ({"lr": True}, "lr must be float, got True")):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=re.escape(f"{path}: {named}")):
            TrainConfig.load(path)
    path.write_text(json.dumps({"lr": 1, "train_subset": None, "defenses": ["nopeek"]}))
    TrainConfig.load(path)  # an int for a float, None where allowed


@pytest.fixture(scope="module")
def finished_run(pool_dirs, tmp_path_factory):
    mitdb, cache = pool_dirs
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
                 "--train-subset", "300", "--test-subset", "100", "--epochs", "1",
                 "--no-progress"]) == 0
    return out


@pytest.mark.parametrize(("args", "named"), [
    (["decoder", "--aux", "train:inf"], "--aux 'train:inf': size must be a finite number"),
    (["decoder", "--aux", "train:nan"], "--aux 'train:nan': size must be a finite number"),
    (["decoder", "--aux", "train:2.5"], "expected a fraction in (0, 1) or a whole count"),
    (["dcor", "-o", "phase=bogus"], "--option phase: must be one of ('train', 'val', 'test')"),
    (["dcor", "-o", "seed=-1"], "--option seed: must be in 0..2**32-1, got -1"),
    (["dcor", "-o", "max_victims=5", "-o", "max_victims=9"], "max_victims given twice"),
    (["dcor", "-o", "threads=100000"], "--option threads: must be in 0..1024"),
    (["dcor", "-o", "reference_epochs=1e9"], "cannot read reference_epochs='1e9' as int"),
    (["dcor", "-o", "reference_epochs=-1"], "--option reference_epochs: must be >= 0"),
])
def test_bad_attack_arguments_get_one_line(finished_run, capsys, args, named):
    capsys.readouterr()
    assert main(["attack", args[0], "--run", str(finished_run), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err and "Traceback" not in err
    assert not (finished_run / "attacks" / f"{args[0]}.json").exists()


def test_a_truncated_transcript_is_named_by_the_attack(finished_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    npz = run / "transcript.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    capsys.readouterr()
    assert main(["attack", "dcor", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "transcript.npz: cannot be read as a transcript (npz)" in err and "\n" not in err


@pytest.mark.parametrize(("study", "flags", "named"), [
    ("compare_defenses", ["--seeds", "0"], "seeds must be >= 1, got 0"),
    ("label_privacy", ["--seeds", "0"], "seeds must be >= 1, got 0"),
    ("compare_defenses", ["--dcor-victims", "-5"], "dcor_victims must be >= 1, got -5"),
    ("compare_defenses", ["--threads", "100000"], "threads must be in 1..1024, got 100000"),
    ("dp_tradeoff", ["--aux", "train:inf"], "--aux 'train:inf': size must be a finite number"),
    ("depth", ["--aux", "train:0"], "expected a fraction in (0, 1) or a count >= 1"),
])
def test_a_study_s_bad_numbers_are_refused_before_it_trains(tmp_path, capsys, study, flags,
                                                            named):
    import importlib

    main_of = importlib.import_module(f"studies.{study}").main
    with pytest.raises(SystemExit):
        main_of(["--quick", *flags, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err
    assert not (tmp_path / "out").exists()
