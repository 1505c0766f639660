"""The ``splitpriv data prepare`` dataset card, as a person and a script read it."""

from __future__ import annotations

import json

from splitpriv.cli import main

CARD_KEYS = {
    "protocol", "pool_size", "pool_class_counts", "n_train", "n_val", "n_test",
    "class_counts_train", "class_counts_test", "test_rows_duplicating_train", "records_train",
    "records_test", "records_shared",
}


def test_data_prepare_json_card(pool_dirs, capsys):
    mitdb, cache = pool_dirs
    args = ["data", "prepare", "--mitdb-dir", str(mitdb), "--cache-dir", str(cache), "--json"]
    assert main([*args, "--protocol", "inter-patient"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert CARD_KEYS <= set(card)
    # de Chazal's DS1 + DS2 (44 records, 114 read from its MLII lead), not the paper's 43
    assert card["pool_size"] == 97915 and card["records_shared"] == 0
    assert set(card["records_train"]).isdisjoint(card["records_test"])
    assert set(card["records_val"]).isdisjoint(card["records_train"] + card["records_test"])
    assert card["n_train"] + card["n_val"] + card["n_test"] == 97915

    assert main([*args, "--protocol", "paper"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert (card["n_train"], card["n_val"], card["n_test"]) == (13245, 0, 13245)
    assert card["test_rows_duplicating_train"] > 0  # the paper's draws with replacement
    assert card["records_shared"] == 43


def test_data_prepare_text_card_and_hdf5_export(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    rc = main(["data", "prepare", "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
               "--protocol", "paper-unique", "--export-hdf5", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test rows duplicating a training row: 0" in out
    assert (tmp_path / "train_ecg.hdf5").exists() and (tmp_path / "test_ecg.hdf5").exists()


def test_data_prepare_names_a_missing_records_dir(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["data", "prepare", "--mitdb-dir", str(missing), "--cache-dir",
                 str(tmp_path / "c")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_attack_command_on_a_trained_run(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-subset", "300", "--test-subset", "200",
                 "--val-fraction", "0", "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["attack", "dcor", "--run", str(run), "-o", "batch_size=100",
                 "-o", "n_batches=2"]) == 0
    assert "attack dcor" in capsys.readouterr().out
    saved = json.loads((run / "attacks" / "dcor.json").read_text())
    assert 0.0 < saved["summary"]["paper"]["max"] <= 1.0
    assert main(["attack", "dcor", "--run", str(run), "-o", "batch_size"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["attack", "nope", "--run", str(run)]) == 2
    assert "unknown attack" in capsys.readouterr().err


def test_train_flags_are_derived_from_train_config():
    import argparse
    import dataclasses

    from splitpriv.cli import build_parser, train_config
    from splitpriv.run import TrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    dests = {a.dest for a in train._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= dests  # a new field: a new flag
    args = parser.parse_args([
        "train", "--out", "x", "--depth", "3", "--paper-softmax", "--defense", "ushape",
        "--defense", "dp:mode=paper,epsilon=3", "--val-fraction", "none", "--threads", "0",
        "--role", "server",
    ])
    config = train_config(args)
    assert (config.depth, config.paper_softmax, config.val_fraction) == (3, True, None)
    assert list(map(str, config.defenses)) == ["ushape", "dp:mode=paper,epsilon=3"]
    assert config.threads is None  # 0: torch's default
    assert config.epochs == TrainConfig().epochs and args.role == "server"
    if "server" in {f.name for f in dataclasses.fields(TrainConfig)}:
        spec = "honest"
        assert train_config(parser.parse_args(["train", "--out", "x", "--server", spec])
                            ).server == spec


def test_train_bad_values_are_one_line_errors_naming_the_flag(capsys):
    for bad, flag in ((["--depth", "x"], "--depth"), (["--depth", "9"], "--depth"),
                      (["--epochs", "0"], "--epochs"), (["--topology", "ring"], "--topology")):
        assert main(["train", "--out", "x", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err


def test_attack_help_lists_the_registry(capsys):
    from attacks.registry import load_builtin

    assert main(["attack", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in load_builtin())
