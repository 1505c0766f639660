"""``splitpriv train --log tensorboard``: every epoch's metrics and the privacy claim, read back
from the TensorBoard events the run wrote, equal what the run directory holds."""

from __future__ import annotations

import json
import sys

import pytest

from splitpriv.cli import main


def test_a_missing_tensorboard_is_one_line_before_anything_trains(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    assert main(["train", "--epochs", "1", "--log", "tensorboard", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("splitpriv: error: --log tensorboard needs the tensorboard package: pip "
                   "install 'splitpriv[tracking]'")
    assert not (tmp_path / "run").exists()


def test_train_log_tensorboard_writes_each_epoch_and_the_claim(pool_dirs, tmp_path):
    # installed by scripts/setup.sh (the tracking extra), so CI runs this
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    mitdb, cache = pool_dirs
    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--train-subset", "400", "--test-subset", "200",
                 "--defense", "dp:mode=formal,mechanism=gaussian,target_epsilon=8,clip=2",
                 "--mitdb-dir", str(mitdb), "--cache-dir", str(cache), "--out", str(run),
                 "--no-progress", "--log", "tensorboard"]) == 0
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for phase in ("train", "val", "test"):
        for measure in ("loss", "accuracy", "macro_f1"):
            got = [(e.step, e.value) for e in events.Scalars(f"{phase}/{measure}")]
            want = [(m["epoch"], m[f"{phase}_{measure}"]) for m in metrics]
            assert [s for s, _ in got] == [1, 2]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    result = json.loads((run / "result.json").read_text())
    (eps,) = events.Scalars("privacy/epsilon")
    assert eps.value == pytest.approx(result["defenses"][0]["epsilon"], rel=1e-6)
    assert eps.value == pytest.approx(8, rel=0.01)  # calibrated to the target
    (acc,) = events.Scalars("result/test_accuracy")
    assert acc.value == pytest.approx(result["test_accuracy"], rel=1e-6)
    text = events.Tensors("privacy/claims/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "**dp**: epsilon 8" in text and "formal (exact)" in text
    # retrained with --force: the events are rewritten, not repeated
    assert main(["train", "--epochs", "2", "--train-subset", "400", "--test-subset", "200",
                 "--defense", "dp:mode=formal,mechanism=gaussian,target_epsilon=8,clip=2",
                 "--mitdb-dir", str(mitdb), "--cache-dir", str(cache), "--out", str(run),
                 "--no-progress", "--log", "tensorboard", "--force"]) == 0
    again = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    again.Reload()
    assert [e.step for e in again.Scalars("test/accuracy")] == [1, 2]
