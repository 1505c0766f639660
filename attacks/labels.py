"""Label inference: what the server learns of the labels it is not meant to hold, and how every
label attack is scored.

In the U-shaped topology the client keeps the head Linear(128, 5) and the labels; the server
sends its output h (B, 128) and receives g = d loss / d h (the ``output_grad`` messages). With
cross-entropy, g = W^T (softmax(W h + b) - onehot(y)) / B: the gradient points along -W_y plus
the rows of the classes the head confuses y with, and its norm grows with the loss. Li et al.
(ICLR 2022) read binary labels from the norm and the direction of such cut-layer gradients; the
gradient subclasses generalise their attacks to the 5 classes (each says how). Model completion
(:mod:`attacks.label_completion`) reads the server's own features instead.

On the vanilla topology the labels themselves cross the channel: a gradient attack then reads
them as they crossed (accuracy 1.0 in the clear; the keep rate of a label defense such as
``labeldp`` otherwise).

Known-label references: the attacks use the attacker's auxiliary rows, training rows whose labels
it knows (``--aux own:F``), read from the transcript by id; they are never victims.

Scoring (:func:`label_scores`, every label attack): accuracy with its Wilson 95% interval, one-vs-
rest AUC per class with its Hanley-McNeil (1982) 95% interval and their mean, beside the prior:
always guessing the majority class, and guessing at the class frequencies (accuracy sum p_c^2;
any guess that ignores the transcript has AUC 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attacks.base import (
    Attack,
    AttackInputError,
    AttackResult,
    CommonConfig,
    GroundTruth,
    Knowledge,
    lookup,
    observe_victims,
    observed,
)
from attacks.metrics import label_metrics, wilson_interval
from splitpriv.channel import Kind, Transcript
from splitpriv.models import N_CLASSES

Z95 = 1.959963984540054


@dataclass
class LabelConfig(CommonConfig):
    """Attributes: see :class:`~attacks.base.CommonConfig` (gradients cross in the train phase)."""


@dataclass
class References:
    """The attacker's known-label gradients: (M, D) and (M,)."""

    grads: torch.Tensor
    y: torch.Tensor


@dataclass
class Prediction:
    """What a label attack infers for some sample ids.

    Attributes:
        scores: (N, K) class scores (higher: more likely).
        pred: (N,) predicted labels (None: the argmax of ``scores``).
        extra: further summary entries.
        arrays: further per-sample arrays for the ``.npz`` (e.g. ``grad_norm``).
        notes: caveats in words.
    """

    scores: np.ndarray
    pred: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        return np.asarray(self.pred if self.pred is not None else self.scores.argmax(1))


def hanley_mcneil(auc: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Hanley & McNeil (Radiology 1982) interval of an AUC from its positives and negatives:
    se^2 = (A(1-A) + (n1-1)(Q1-A^2) + (n0-1)(Q2-A^2)) / (n1 n0), Q1 = A/(2-A), Q2 = 2A^2/(1+A)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return (max(0.0, auc - half), min(1.0, auc + half))


def label_scores(y: np.ndarray, scores: np.ndarray, pred: np.ndarray | None = None,
                 n_classes: int = N_CLASSES) -> dict[str, Any]:
    """:func:`~attacks.metrics.label_metrics` with intervals and the prior's baselines.

    Adds ``accuracy_ci`` (Wilson 95%), ``per_class_auc_ci`` (Hanley-McNeil 95%), ``mean_auc_ci``
    (the mean of the per-class bounds: as wide as if the classes' errors moved together, so
    conservative), ``prior_majority_accuracy`` (= ``chance_accuracy``), ``prior_frequency_accuracy``
    (sum p_c^2), ``prior_auc`` (0.5) and ``advantage`` (accuracy minus the majority guess).

    Shape:
        y: (N,); scores: (N, K); pred: (N,) or None.
    """
    y = np.asarray(y).astype(np.int64)
    m = label_metrics(y, scores, pred, n_classes)
    counts = np.bincount(y, minlength=n_classes)
    cis: dict[str, list[float] | None] = {}
    for c, auc in m["per_class_auc"].items():
        n_pos = int(counts[int(c)])
        cis[c] = None if auc is None else list(hanley_mcneil(auc, n_pos, len(y) - n_pos))
    valid = [v for v in cis.values() if v is not None]
    freq = counts / max(len(y), 1)
    return m | {
        "accuracy_ci": list(wilson_interval(m["accuracy"] * len(y), len(y))),
        "per_class_auc_ci": cis,
        "mean_auc_ci": [float(np.mean([v[0] for v in valid])),
                        float(np.mean([v[1] for v in valid]))] if valid else None,
        "prior_majority_accuracy": m["chance_accuracy"],
        "prior_frequency_accuracy": float((freq**2).sum()),
        "prior_auc": 0.5,
        "advantage": m["accuracy"] - m["chance_accuracy"],
    }


def rows_of(attack: Attack, transcript: Transcript, kind: Kind, ids: torch.Tensor,
            what: str) -> torch.Tensor:
    """The attacked phase's ``kind`` messages of sample ``ids``, in their order."""
    cfg = attack.config
    all_ids, values = observed(transcript, kind, phase=cfg.phase, epoch=cfg.epoch,
                               attack=attack.name)
    return lookup(all_ids, values, ids.long(), what)


def labels_cross(transcript: Transcript) -> bool:
    """Whether the labels crossed the channel (the vanilla topology)."""
    return Kind.LABELS.value in transcript.kinds()


class LabelAttack(Attack):
    """Base of the label attacks: picks the victims, calls :meth:`predict`, scores.

    Subclasses implement :meth:`predict` (the gradient attacks: :meth:`infer`); ``victim_kind``
    is the message kind whose ids the victims are drawn from (the same ids, in the same arrival
    order, for every kind of one recorded epoch, so every label attack of one run meets the same
    victims)."""

    Config = LabelConfig
    uses = ("aux",)
    needs_references = True
    study_columns = {"label_attack_accuracy": ("accuracy",), "label_attack_auc": ("mean_auc",)}

    @classmethod
    def columns(cls, summary):
        """Accuracy in percent (the labels of the vanilla topology are read: 100), AUC as is."""
        cols = super().columns(summary)
        return {k: 100.0 * v if k.endswith("accuracy") else v for k, v in cols.items()}

    def victim_kind(self, transcript: Transcript) -> Kind:
        return Kind.LABELS if labels_cross(transcript) else Kind.OUTPUT_GRAD

    #: the run's class count (``Knowledge.n_classes``), set when the attack runs
    n_classes: int = N_CLASSES

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth) -> AttackResult:
        self.n_classes = knowledge.n_classes
        obs = observe_victims(self, transcript, self.victim_kind(transcript), truth,
                              exclude=knowledge.not_victims)
        p = self.predict(transcript, knowledge, obs.ids, obs.y)
        topology = "vanilla" if labels_cross(transcript) else "ushape"
        summary = {"topology": topology, **label_scores(obs.y.numpy(), p.scores, p.pred,
                                                               self.n_classes),
                   **p.extra}
        return AttackResult(
            attack=self.name, summary=summary, notes=list(p.notes),
            scores={"ids": obs.ids.numpy(), "y_true": obs.y.numpy(), "y_pred": p.labels(),
                    "class_scores": p.scores, **p.arrays},
        )

    def predict(self, transcript: Transcript, knowledge: Knowledge, ids: torch.Tensor,
                oracle_y: torch.Tensor) -> Prediction:
        """The gradient attacks: read the labels where they cross, else :meth:`infer` from the
        output gradients of ``ids`` and the references of the aux rows."""
        if labels_cross(transcript):
            return self.read_labels(transcript, ids, oracle_y)
        grads = rows_of(self, transcript, Kind.OUTPUT_GRAD, ids, "victim gradients")
        grads = grads.reshape(len(grads), -1).double()  # (N, D)
        refs = self.references(transcript, knowledge)
        if refs is None and self.needs_references:
            raise AttackInputError(
                f"attack {self.name!r} needs known-label reference gradients: pass --aux own:F"
            )
        scores, pred, extra = self.infer(grads, refs, oracle_y)
        return Prediction(scores, pred, extra, {"grad_norm": grads.norm(dim=1).numpy()})

    def references(self, transcript: Transcript, knowledge: Knowledge) -> References | None:
        """The aux rows' output gradients and labels (None without an aux set)."""
        aux = knowledge.aux
        if aux is None:
            return None
        if aux.ids is None:
            raise AttackInputError(
                f"attack {self.name!r}: the aux beats must be observed training rows "
                "(--aux own:F) so that their gradients can be read from the transcript"
            )
        ref = rows_of(self, transcript, Kind.OUTPUT_GRAD, aux.ids, "aux gradients")
        return References(ref.reshape(len(ref), -1).double(), aux.y.long())

    def read_labels(self, transcript: Transcript, ids: torch.Tensor, y: torch.Tensor
                    ) -> Prediction:
        """The labels as they crossed (vanilla topology), one-hot as class scores."""
        labels = rows_of(self, transcript, Kind.LABELS, ids, "victim labels").long()
        onehot = np.eye(self.n_classes)[labels.numpy()]
        if torch.equal(labels, y.long()):
            note = "vanilla topology: the labels cross the channel in the clear; read, not inferred"
        else:
            note = ("vanilla topology: the labels crossed randomised (a label defense); read as "
                    f"they crossed, {float((labels == y.long()).float().mean()):.3f} of them true")
        return Prediction(onehot, labels.numpy(), notes=[note])

    def headline(self, summary):
        keys = ("topology", "accuracy", "chance_accuracy", "mean_auc", "n")
        return {k: summary.get(k) for k in keys}

    def infer(
        self, grads: torch.Tensor, refs: References | None, oracle_y: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Class scores (N, K) (higher: more likely), optional predictions (N,), extra summary.

        ``oracle_y`` are the victims' true labels, for the evaluator's optimistic naming of
        unsupervised clusters only (reported as such); an attack must not otherwise use them.
        """
        raise NotImplementedError


def unit_rows(g: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return g / g.norm(dim=1, keepdim=True).clamp(min=torch.finfo(g.dtype).tiny)


def class_means(g: torch.Tensor, y: torch.Tensor, n_classes: int = N_CLASSES
                ) -> tuple[torch.Tensor, np.ndarray]:
    """Mean unit direction per class (K, D) and which classes the references hold."""
    u = unit_rows(g)
    means = torch.zeros(n_classes, g.shape[1], dtype=g.dtype)
    present = np.zeros(n_classes, dtype=bool)
    for c in range(n_classes):
        rows = y == c
        if rows.any():
            means[c] = u[rows].mean(0)
            present[c] = True
    return means, present
