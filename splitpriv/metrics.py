"""Per-class classification metrics as the arrhythmia literature reports them.

The ANSI/AAMI EC57 convention (AAMI, "Testing and reporting performance results of cardiac
rhythm and ST segment measurement algorithms", ANSI/AAMI EC57:1998/(R)2008), followed by de
Chazal, O'Dwyer & Reilly, "Automatic classification of heartbeats using ECG morphology and
heartbeat interval features", IEEE TBME 51(7):1196-1206, 2004, and the inter-patient literature
since, reports a confusion matrix and, for each class c:

* sensitivity ``Se_c = TP_c / (TP_c + FN_c)`` (recall),
* positive predictive value ``+P_c = TP_c / (TP_c + FP_c)`` (precision),

to which we add ``F1_c = 2 Se_c +P_c / (Se_c + +P_c)``, the macro-F1 (mean F1 over the classes
that occur in the labels or the predictions, scikit-learn's ``f1_score(average="macro",
zero_division=0)``) and the balanced accuracy (mean Se over the classes that occur in the labels,
scikit-learn's ``balanced_accuracy_score``). A ratio whose denominator is 0 is undefined: it is
``None`` in the per-class table, and counts as 0 inside the macro-F1 (as scikit-learn does).

:class:`ConfusionAccumulator` sums the confusion matrix on the device, one ``bincount`` per batch
and no host sync until it is read; the trainer's :class:`~splitpriv.trainer.Accumulator` (used by
in-process, batched and distributed runs alike) holds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: What a run can select its epoch by (a validation-set number, higher is better).
SELECT_BY = ("accuracy", "macro_f1", "balanced_accuracy")


class ConfusionAccumulator:
    """Confusion counts ``cm[true, predicted]`` summed on the device.

    Args:
        device: where the counts live.
        n_classes: number of classes; ``None`` takes it from the first logits seen.
    """

    def __init__(self, device: torch.device | str, n_classes: int | None = None) -> None:
        self.device = device
        self.n_classes = n_classes
        self.counts: torch.Tensor | None = None  # (K * K,) int64, row-major [true, predicted]

    def add(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        """Count a batch of predicted classes ``pred`` (B,) against labels ``y`` (B,)."""
        if self.counts is None:
            if self.n_classes is None:
                raise ValueError("ConfusionAccumulator: n_classes unknown; pass it or use "
                                 "add_logits first")
            self.counts = torch.zeros(self.n_classes**2, device=self.device, dtype=torch.long)
        k = self.n_classes
        assert k is not None
        self.counts += torch.bincount(y * k + pred, minlength=k * k)[: k * k]

    def add_logits(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Count ``logits.argmax(1)`` against ``y``; returns the predictions (B,)."""
        if self.n_classes is None:
            self.n_classes = int(logits.shape[1])
        pred = logits.argmax(1)
        self.add(pred, y)
        return pred

    def correct(self) -> torch.Tensor:
        """Correctly classified rows so far, as a 0-d device tensor (no sync)."""
        if self.counts is None:
            return torch.zeros((), dtype=torch.long, device=self.device)
        k = self.n_classes
        assert k is not None  # set with the counts
        return self.counts.view(k, k).diagonal().sum()

    def matrix(self) -> np.ndarray | None:
        """(K, K) int64 counts on the host (one sync), rows true, columns predicted."""
        if self.counts is None:
            return None
        k = self.n_classes
        assert k is not None  # set with the counts
        return self.counts.view(k, k).cpu().numpy().astype(np.int64)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


def per_class(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
    """``{class: {"se", "ppv", "f1", "support", "predicted"}}`` from a confusion matrix.

    Se, +P and F1 are fractions in [0, 1] or ``None`` when undefined (no true row of the class
    for Se, no predicted row for +P, neither defined or both 0 for F1).
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        se, ppv = _ratio(tp[c], support[c]), _ratio(tp[c], predicted[c])
        f1 = _ratio(2 * tp[c], support[c] + predicted[c])  # = 2 Se +P / (Se + +P)
        out[name] = {"se": se, "ppv": ppv, "f1": f1, "support": int(support[c]),
                     "predicted": int(predicted[c])}
    return out


def summary(cm: np.ndarray | Sequence[Sequence[int]]) -> dict[str, float]:
    """``accuracy`` (percent), ``macro_f1`` and ``balanced_accuracy`` (percent, like accuracy)
    of a confusion matrix; NaN when it counts no row."""
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.sum()
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"),
                "balanced_accuracy": float("nan")}
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    seen = (support + predicted) > 0  # classes in the labels or the predictions
    f1 = 2 * tp[seen] / (support[seen] + predicted[seen])
    recall = tp[support > 0] / support[support > 0]
    return {"accuracy": 100.0 * tp.sum() / n, "macro_f1": 100.0 * float(f1.mean()),
            "balanced_accuracy": 100.0 * float(recall.mean())}


def report(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str]) -> dict[str, Any]:
    """Everything for result.json: the summary numbers, the per-class table and the matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    return {**summary(cm), "classes": "".join(classes), "per_class": per_class(cm, classes),
            "confusion": cm.tolist()}


__all__ = ["SELECT_BY", "ConfusionAccumulator", "per_class", "report", "summary"]
