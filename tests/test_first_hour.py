"""A researcher's first hour (issue 34): the CLI says what each plug-in takes (``list``, ``attack
NAME --help``), refuses a missing requirement at once, prints the privacy axis with its interval
and the whole wall time; saved runs read back as a table (``show``, ``compare``,
``splitpriv.results.load_runs``) and as a config to rerun (``train --config``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import runpy
import sys
import time
from pathlib import Path

import pytest

from splitpriv.cli import main
from splitpriv.options import format_value
from splitpriv.results import load_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(pool_dirs, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny runs (seeds 0 and 1), the first attacked by ridge through the CLI."""
    mitdb, cache = pool_dirs
    root = tmp_path_factory.mktemp("first_hour")
    for seed in (0, 1):
        assert main(["train", "--epochs", "1", "--train-subset", "400", "--test-subset", "200",
                     "--seed", str(seed), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
                     "--out", str(root / f"run-s{seed}"), "--no-progress"]) == 0
    return root / "run-s0", root / "run-s1"


def fields_with_defaults(cls) -> list[str]:
    """``name (type, default D)`` heads of a Config's fields, as ``list`` must print them."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(f"{f.name} (")
        out.append(f"default {format_value(default)})")
    return out


@pytest.mark.parametrize("what", ["attacks", "defenses", "servers", "datasets", "models"])
def test_list_prints_every_parameter_and_default_from_the_configs(what, capsys):
    assert main(["list", what]) == 0
    out = capsys.readouterr().out
    if what == "attacks":
        from attacks.registry import load_builtin

        configs = {name: cls.Config for name, cls in load_builtin().items()}
    elif what == "defenses":
        from defenses.registry import DEFENSES

        configs = {}
        for name, cls in DEFENSES.items():
            for value, v in (getattr(cls, "variants", None) or {None: cls}).items():
                configs[f"{name}{'' if value is None else ':' + value}"] = v.Config
    elif what == "servers":
        from splitpriv.servers import load_plugins

        configs = {name: cls.Config for name, cls in load_plugins().items()}
    elif what == "models":
        from splitpriv.models import ModelConfig

        configs = {"model": ModelConfig}
    else:
        from splitpriv.cli import DATA_FIELDS, PROTOCOLS
        from splitpriv.run import TrainConfig

        assert all(p in out for p in PROTOCOLS) and "--hdf5" in out
        configs = {}
        for f in dataclasses.fields(TrainConfig):
            if f.name in DATA_FIELDS:
                assert f"{f.name} (" in out and f"default {format_value(f.default)})" in out
    assert len(configs) >= (3 if what == "servers" else 1) or what == "datasets"
    for name, cls in configs.items():
        assert name.split(":")[0] in out
        for head in fields_with_defaults(cls):
            assert head in out, (name, head)


def test_attack_help_gives_options_knowledge_and_cost(capsys):
    from attacks.strongest import StrongestConfig

    assert main(["attack", "strongest", "--help"]) == 0
    out = capsys.readouterr().out
    for head in fields_with_defaults(StrongestConfig):
        assert head in out, head
    assert "aux (required)" in out and "depth (required)" in out
    assert "reference_epochs (int, default 5)" in out and "source (str, default auto)" in out
    assert re.search(r"cost: the attack itself took a median [\d.]+ s", out)
    assert "reference_epochs=0 skips it" in out
    assert main(["attack", "nope", "--help"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err


def test_requirements_are_refused_before_any_work(runs, tmp_path, capsys):
    run, _ = runs
    import splitpriv.cli  # noqa: F401  (imported: what is timed is the check, not Python's start)

    for argv, words in (
        (["attack", "strongest", "--run", str(run)], "needs the attacker's auxiliary beats"),
        (["attack", "ridge", "--run", str(tmp_path / "none"), "--aux", "train:0.1"],
         "not a finished run directory"),
        (["attack", "ridge", "--run", str(run), "--aux", "train:2x"], "--aux 'train:2x'"),
        (["attack", "ridge", "--run", str(run), "--aux", "train:0.1", "-o", "source=disk"],
         "source: must be one of"),
    ):
        t0 = time.perf_counter()
        assert main(argv) == 2
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
        assert seconds < 1.0, (argv, seconds)  # nothing loaded: no data, no reference model
    assert not (run / "attacks").exists()  # nothing was computed or written


def test_attack_printout_has_the_linkage_advantage_interval_and_wall_time(runs, capsys):
    run, _ = runs
    assert main(["attack", "ridge", "--run", str(run), "--aux", "train:0.2",
                 "-o", "max_victims=60", "-o", "reference_epochs=1"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((run / "attacks" / "ridge.json").read_text())
    k10 = doc["summary"]["linkage"]["k10"]
    # advantage = (accuracy - chance) / (1 - chance), its interval the accuracy's mapped the same
    adv = [(v - k10["chance"]) / (1 - k10["chance"])
           for v in (k10["accuracy"], k10["ci_low"], k10["ci_high"])]
    line = next(x for x in out.splitlines() if "linkage_k10_advantage" in x)
    assert f"{adv[0]:.3f} [{adv[1]:.3f}, {adv[2]:.3f}]" in line and "chance" in line
    wall, own = map(float, re.search(r"\(([\d.]+) s in all, the attack itself ([\d.]+) s\)",
                                     out).groups())
    # the whole command includes loading the run and the reference classifier
    assert wall > own > 0
    assert list(run.glob("attacks/reference-classifier-*-e1-s0.pt"))
    assert doc["headline"]["linkage_k10"] == [k10["accuracy"], k10["ci_low"], k10["ci_high"]]


def test_load_runs_one_row_per_run_with_flat_attack_columns(runs):
    run, other = runs
    if not (run / "attacks" / "ridge.json").exists():  # run alone (-k): attack it here
        assert main(["attack", "ridge", "--run", str(run), "--aux", "train:0.2",
                     "-o", "max_victims=60", "-o", "reference_epochs=0"]) == 0
    df = load_runs([run.parent])
    assert list(df["run"]) == ["run-s0", "run-s1"] and list(df["seed"]) == [0, 1]
    for _, row in df.iterrows():
        result = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert row["test_accuracy"] == result["test_accuracy"]
        assert row["defenses"] == "none" and row["claims"] == "none"
        assert math.isnan(row["accounted_epsilon"])
    ridge = json.loads((run / "attacks" / "ridge.json").read_text())
    first = df.iloc[0]
    low, high = ridge["headline"]["linkage_k10"][1:]
    assert first["ridge.linkage_k10_ci_low"] == low and first["ridge.linkage_k10_ci_high"] == high
    assert first["ridge.seconds"] == ridge["seconds"]
    assert math.isnan(df.iloc[1]["ridge.seconds"])  # the second run was not attacked
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        load_runs([run / "attacks"])


def test_show_and_compare(runs, capsys):
    run, other = runs
    assert main(["show", str(run), str(other)]) == 0
    shown = capsys.readouterr().out
    result = json.loads((run / "result.json").read_text())
    assert re.search(rf"test_accuracy\s+{result['test_accuracy']:.4g}\s", shown)
    assert re.search(r"\nprotocol\s+paper-unique\s+paper-unique", shown)
    assert main(["compare", str(run), str(other)]) == 0
    compared = capsys.readouterr().out
    assert re.search(r"\nseed\s+0\s+1", compared)
    assert "\nprotocol" not in compared and "\nepochs" not in compared  # the same in both
    assert main(["compare", str(run)]) == 2
    assert "two or more runs" in capsys.readouterr().err


def test_train_config_reruns_a_saved_config(runs, tmp_path, capsys):
    run, _ = runs
    saved = json.loads((run / "config.json").read_text())
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.json"), "--out", str(again),
                 "--no-progress"]) == 0
    assert json.loads((again / "config.json").read_text()) == saved
    first = json.loads((run / "result.json").read_text())
    second = json.loads((again / "result.json").read_text())
    assert second["test_accuracy"] == first["test_accuracy"]  # same config, same seed
    capsys.readouterr()
    # a flag given beside --config wins; a bad file is one line naming it
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**saved, "epochs": 0}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "epochs" in err
    assert main(["train", "--config", str(run / "config.json"), "--seed", "1",
                 "--out", str(tmp_path / "y"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "y" / "config.json").read_text()) == saved | {"seed": 1}


def test_the_example_script_runs(runs, monkeypatch, capsys):
    """examples/load_results.py, as docs/api.md shows it, on the runs above."""
    run, _ = runs
    monkeypatch.setattr(sys, "argv", ["load_results.py", str(run.parent)])
    runpy.run_path(str(REPO / "examples" / "load_results.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "run-s0" in out and "run-s1" in out and "test_accuracy" in out


def test_the_epoch_bar_counts_what_the_run_directories_hold(runs, tmp_path):
    from studies.common import EpochWatcher

    run, other = runs
    # two finished 1-epoch runs and one planned for 5 epochs that has not started
    watcher = EpochWatcher([(run, 1), (other, 1), (tmp_path / "later", 5)], "t", interval=0.05)
    assert watcher.counts() == (2, 2)
    with watcher:
        assert watcher.bar.total == 7 and watcher.bar.n == 2
        (tmp_path / "later").mkdir()  # an epoch of the third run lands: the bar follows it
        (tmp_path / "later" / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
        deadline = time.monotonic() + 5
        while watcher.bar.n < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.bar.n == 3
    assert watcher.bar.postfix == "runs 2/3"


def test_a_parallel_study_shows_epochs_and_runs_as_they_finish(pool_dirs, tmp_path, capsys):
    """Two workers: the task bar alone would sit at 0 until a whole task ended; the epoch bar
    counts every worker's epochs and the finished runs."""
    from studies import depth

    mitdb, cache = pool_dirs
    depth.main(["--quick", "--jobs", "2", "--train-subset", "300", "--test-subset", "200",
                "--epochs", "2", "--dcor-victims", "100", "--dtw-victims", "40",
                "--decoder-victims", "50", "--decoder-epochs", "2", "--depths", "2", "3",
                "--out", str(tmp_path), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert re.search(r"depth: epochs: 100%.*\b4/4 .*runs 2/2", err), err[-2000:]
    assert re.search(r"depth: tasks: 100%.*\b2/2\b", err), err[-2000:]
