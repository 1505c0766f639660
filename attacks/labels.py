"""Label inference from the per-sample gradients the server receives (U-shaped topology).

In the U-shaped topology the client keeps the head Linear(128, 5) and the labels; the server
sends its output h (B, 128) and receives g = d loss / d h (the ``output_grad`` messages). With
cross-entropy, g = W^T (softmax(W h + b) - onehot(y)) / B: the gradient points along -W_y plus
the rows of the classes the head confuses y with, and its norm grows with the loss. Li et al.
(ICLR 2022) read binary labels from the norm and the direction of such cut-layer gradients; the
subclasses generalise their attacks to the 5 classes (each says how).

On the vanilla topology the labels themselves cross the channel: every label attack then reports
accuracy 1.0 (the labels are read, not inferred).

Known-label references: the direction and norm attacks (and the naming of k-means clusters) use
the attacker's auxiliary rows, training rows whose labels it knows (``--aux train:F``). Their
gradients are read from the transcript by id; they are not victims.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from attacks.metrics import label_metrics
from splitpriv.channel import Kind, Transcript
from splitpriv.models import N_CLASSES


@dataclass
class LabelConfig(CommonConfig):
    """Attributes: see :class:`~attacks.base.CommonConfig` (gradients cross in the train phase)."""


@dataclass
class References:
    """The attacker's known-label gradients: (M, D) and (M,)."""

    grads: torch.Tensor
    y: torch.Tensor


class LabelAttack(Attack):
    """Base of the label attacks: reads the gradients, handles the vanilla case, scores."""

    Config = LabelConfig
    uses = ("aux",)
    needs_references = True
    study_columns = {"label_attack_accuracy": ("accuracy",)}

    @classmethod
    def columns(cls, summary):
        """Accuracy in percent (the labels of the vanilla topology are read: 100)."""
        return {k: 100.0 * v for k, v in super().columns(summary).items()}

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth) -> AttackResult:
        cfg = self.config
        if Kind.LABELS.value in transcript.kinds():
            return self._read_labels(transcript, truth)
        aux = knowledge.aux
        obs = observe_victims(
            self, transcript, Kind.OUTPUT_GRAD, truth, exclude=knowledge.not_victims
        )
        grads = obs.values.reshape(len(obs.values), -1).double()  # (N, D)
        refs = None
        if aux is not None:
            if aux.ids is None:
                raise AttackInputError(
                    f"attack {self.name!r}: the aux beats must be observed training rows "
                    "(--aux train:F) so that their gradients can be read from the transcript"
                )
            all_ids, all_grads = observed(
                transcript, Kind.OUTPUT_GRAD, phase=cfg.phase, epoch=cfg.epoch, attack=self.name
            )
            ref = lookup(all_ids, all_grads, aux.ids, "aux gradients")
            refs = References(ref.reshape(len(ref), -1).double(), aux.y.long())
        if refs is None and self.needs_references:
            raise AttackInputError(
                f"attack {self.name!r} needs known-label reference gradients: pass --aux train:F"
            )
        scores, pred, extra = self.infer(grads, refs, obs.y)
        metrics = label_metrics(obs.y.numpy(), scores, pred, N_CLASSES)
        summary = {"topology": "ushape", **metrics, **extra}
        return AttackResult(
            attack=self.name, summary=summary,
            scores={"ids": obs.ids.numpy(), "y_true": obs.y.numpy(),
                    "y_pred": np.asarray(pred if pred is not None else scores.argmax(1)),
                    "class_scores": scores, "grad_norm": grads.norm(dim=1).numpy()},
        )

    def _read_labels(self, transcript: Transcript, truth: GroundTruth) -> AttackResult:
        obs = observe_victims(self, transcript, Kind.LABELS, truth)
        labels = obs.values.long()
        if not torch.equal(labels, obs.y.long()):
            raise AttackInputError("the transcript's labels disagree with the ground truth")
        onehot = np.eye(N_CLASSES)[labels.numpy()]
        summary = {"topology": "vanilla", **label_metrics(obs.y.numpy(), onehot, None, N_CLASSES)}
        return AttackResult(
            attack=self.name, summary=summary,
            scores={"ids": obs.ids.numpy(), "y_true": obs.y.numpy(), "y_pred": labels.numpy()},
            notes=["vanilla topology: the labels cross the channel in the clear; "
                   "read, not inferred"],
        )

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


def class_means(g: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Mean unit direction per class (K, D) and which classes the references hold."""
    u = unit_rows(g)
    means = torch.zeros(N_CLASSES, g.shape[1], dtype=g.dtype)
    present = np.zeros(N_CLASSES, dtype=bool)
    for c in range(N_CLASSES):
        rows = y == c
        if rows.any():
            means[c] = u[rows].mean(0)
            present[c] = True
    return means, present
