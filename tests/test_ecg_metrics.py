"""Per-class ECG metrics (Se, +P, F1, macro-F1, balanced accuracy) and where runs report them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from splitpriv.metrics import ConfusionAccumulator, per_class, report, summary
from splitpriv.run import TrainConfig, run_training, summarize
from splitpriv.trainer import Accumulator

#: rows true class, columns predicted class; classes A, B, C, D.
#:   A: 8 right, 2 called B            support 10
#:   B: 1 called A, 3 right            support 4
#:   C: 1 called A                     support 1
#:   D: no row, never predicted        support 0
#: predicted totals: A 10, B 5, C 0, D 0; 11 of 15 right.
CM = [[8, 2, 0, 0],
      [1, 3, 0, 0],
      [1, 0, 0, 0],
      [0, 0, 0, 0]]  # fmt: skip
#: Se = TP / support: A 8/10 = 0.8, B 3/4 = 0.75, C 0/1 = 0, D undefined.
#: +P = TP / predicted: A 8/10 = 0.8, B 3/5 = 0.6, C undefined (never predicted), D undefined.
#: F1 = 2 TP / (support + predicted): A 16/20 = 0.8, B 6/9 = 2/3, C 0/1 = 0, D undefined.
#: macro-F1 over the classes seen in labels or predictions (A, B, C): (0.8 + 2/3 + 0) / 3
#: = 22/45 = 48.888...%; balanced accuracy over the classes with support (A, B, C):
#: (0.8 + 0.75 + 0) / 3 = 31/60 = 51.666...%; accuracy 11/15 = 73.333...%.
EXPECTED = {
    "A": {"se": 0.8, "ppv": 0.8, "f1": 0.8, "support": 10, "predicted": 10},
    "B": {"se": 0.75, "ppv": 0.6, "f1": 2 / 3, "support": 4, "predicted": 5},
    "C": {"se": 0.0, "ppv": None, "f1": 0.0, "support": 1, "predicted": 0},
    "D": {"se": None, "ppv": None, "f1": None, "support": 0, "predicted": 0},
}


def _labels_and_predictions(cm) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(t, p) for t, row in enumerate(cm) for p, n in enumerate(row) for _ in range(n)]
    y, pred = np.array(pairs).T
    return y, pred


def test_per_class_metrics_of_a_hand_made_matrix() -> None:
    table = per_class(CM, "ABCD")
    for c, want in EXPECTED.items():
        for k, v in want.items():
            assert table[c][k] == (v if v is None else pytest.approx(v)), (c, k)
    s = summary(CM)
    assert s["accuracy"] == pytest.approx(100 * 11 / 15)
    assert s["macro_f1"] == pytest.approx(100 * 22 / 45)
    assert s["balanced_accuracy"] == pytest.approx(100 * 31 / 60)
    doc = report(CM, "ABCD")
    assert doc["confusion"] == CM and doc["classes"] == "ABCD"
    json.dumps(doc, allow_nan=False)  # undefined ratios are null, not NaN


def test_summary_agrees_with_scikit_learn() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    y, pred = _labels_and_predictions(CM)
    s = summary(CM)
    assert s["macro_f1"] == pytest.approx(100 * f1_score(y, pred, average="macro",
                                                         zero_division=0))
    assert s["balanced_accuracy"] == pytest.approx(100 * balanced_accuracy_score(y, pred))


def test_accumulators_count_the_confusion_matrix() -> None:
    y, pred = _labels_and_predictions(CM)
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 4).float()  # argmax = pred
    yt = torch.as_tensor(y)
    acc = Accumulator(torch.device("cpu"))
    for part in torch.arange(len(y)).split(4):  # in batches, as the trainer adds them
        acc.add(torch.tensor(0.5), logits[part], yt[part])
    stats = acc.stats()
    assert stats.confusion == CM
    assert stats.accuracy == pytest.approx(100 * 11 / 15) and stats.loss == pytest.approx(0.5)
    assert stats.metrics == {"macro_f1": pytest.approx(100 * 22 / 45),
                             "balanced_accuracy": pytest.approx(100 * 31 / 60)}
    assert int(acc.correct) == 11
    cm = ConfusionAccumulator("cpu", 4)
    cm.add(torch.as_tensor(pred), yt)
    assert cm.matrix().tolist() == CM


def test_selection_by_validation_macro_f1() -> None:
    def row(epoch, val_acc, val_f1):
        return {"epoch": epoch, "test_accuracy": 90.0 + epoch, "val_accuracy": val_acc,
                "val_macro_f1": val_f1, "test_macro_f1": 10.0 * epoch,
                "test_confusion": [[epoch, 0], [0, 1]]}

    history = [row(1, 95.0, 40.0), row(2, 90.0, 60.0), row(3, 93.0, 50.0)]
    assert summarize(history, True)["best_epoch"] == 1
    best = summarize(history, True, "macro_f1", "AB")
    assert best["best_epoch"] == 2 and best["selection"] == "best validation macro-f1"
    assert best["test_macro_f1"] == 20.0
    assert best["test_metrics"]["confusion"] == [[2, 0], [0, 1]]
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(select_by="loss")
    with pytest.raises(ValueError, match="labels"):
        TrainConfig(protocol="paper", labels="aami")


def test_inter_patient_aami_run_reports_per_class_metrics(pool_dirs, tmp_path) -> None:
    """A one-epoch inter-patient run with AAMI classes: metrics.jsonl and result.json carry the
    per-class numbers, the model has 5 outputs and the card lists the validation records."""
    mitdb, cache = pool_dirs
    cfg = TrainConfig(protocol="inter-patient", labels="aami", select_by="macro_f1", epochs=1,
                      train_subset=1500, test_subset=1500, record_epochs="none", device="cpu",
                      mitdb_dir=str(mitdb), cache_dir=str(cache))
    res = run_training(cfg, tmp_path / "run", progress=False)
    assert res["labels"] == "aami" and res["selection"] == "best validation macro-f1"
    tm = res["test_metrics"]
    assert tm["classes"] == "NSVFQ" and set(tm["per_class"]) == set("NSVFQ")
    assert np.asarray(tm["confusion"]).shape == (5, 5) and np.sum(tm["confusion"]) == 1500
    assert tm["macro_f1"] == pytest.approx(res["test_macro_f1"])
    assert res["val_metrics"]["per_class"]["S"]["support"] > 0  # validation sees class S
    card = res["dataset"]
    assert card["classes"] == "NSVFQ" and card["lead"] == "MLII" and card["records_val"]
    assert not set(card["records_val"]) & set(card["records_train"])
    assert 114 in card["records_train"] + card["records_val"]
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    row = json.loads(line)
    for phase in ("train", "val", "test"):
        assert {f"{phase}_macro_f1", f"{phase}_balanced_accuracy"} <= set(row)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["labels"] == "aami"
