"""Label inference by model completion: the server completes its part of the model with a head
trained on a few labelled auxiliary beats."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks.base import AttackInputError, Knowledge
from attacks.labels import (
    LabelAttack,
    LabelConfig,
    Prediction,
    labels_cross,
    rows_of,
)
from attacks.registry import register
from splitpriv.channel import Kind, Transcript
from splitpriv.models import N_CLASSES


@dataclass
class CompletionConfig(LabelConfig):
    """Attributes:
        hidden: width of the completion head's hidden layer (0: a linear head).
        epochs: full-batch Adam steps training the head on the aux rows.
        lr: the head's learning rate.
        weight_decay: the head's L2 weight decay (few aux rows: keep the head small).
        use_labels: vanilla topology: combine the head with the labels as they crossed, through
            the label channel estimated on the aux rows (their true labels beside the crossed
            ones); False ignores the crossed labels.
        shrink: pseudo-counts pulling each row of the estimated label channel towards its
            symmetric (keep rate, uniform flips) estimate.
    """

    hidden: int = 64
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    use_labels: bool = True
    shrink: float = 2.0

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "shrink"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ValueError(f"attack 'label-completion': {name} must be finite and "
                                 f"{'> 0' if name == 'lr' else '>= 0'}, got {v}")
        if self.hidden < 0 or self.epochs < 1:
            raise ValueError("attack 'label-completion': hidden must be >= 0 and epochs >= 1, "
                             f"got {self.hidden} and {self.epochs}")


def train_head(features: torch.Tensor, y: torch.Tensor, cfg: CompletionConfig,
               n_classes: int = N_CLASSES) -> nn.Module:
    """A head (features (M, D) -> logits (M, K)) trained on the labelled rows, standardised by
    their own mean and sd (part of the returned module)."""
    mean, sd = features.mean(0), features.std(0).clamp(min=1e-6)
    d = features.shape[1]
    layers: list[nn.Module] = (
        [nn.Linear(d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_classes)]
        if cfg.hidden else [nn.Linear(d, n_classes)])
    head = nn.Sequential(Standardise(mean, sd), *layers)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(features), y).backward()
        opt.step()
    return head.eval()


class Standardise(nn.Module):
    """(x - mean) / sd with fixed statistics."""

    mean: torch.Tensor  # buffers
    sd: torch.Tensor

    def __init__(self, mean: torch.Tensor, sd: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("sd", sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.sd


def label_channel(true_y: np.ndarray, crossed: np.ndarray, shrink: float,
                  n_classes: int = N_CLASSES) -> np.ndarray:
    """P(crossed label | true label) (K, K) estimated on rows whose both are known: each row's
    counts plus ``shrink`` pseudo-counts of the symmetric channel (keep rate k from every row,
    (1 - k) / (K - 1) elsewhere; k itself with a half pseudo-count each way)."""
    k = (float((true_y == crossed).sum()) + 0.5) / (len(true_y) + 1.0)
    sym = np.full((n_classes, n_classes), (1 - k) / (n_classes - 1))
    np.fill_diagonal(sym, k)
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (true_y, crossed), 1)
    return (counts + shrink * sym) / (counts.sum(1, keepdims=True) + shrink)


@register("label-completion")
class CompletionLabelAttack(LabelAttack):
    """Passive model completion (Fu et al., "Label Inference Attacks Against Vertical Federated
    Learning", USENIX Security 2022): the server completes its bottom part of the model with a
    small head trained on a few labelled auxiliary beats, and labels the victims with it.

    Features (what the server holds for every beat, read from the transcript by id):

    * U-shape: its own output h (``server_output``, (N, 128)), which the client's head maps to
      the logits; the attacker's head replaces the client's.
    * vanilla: the cut activations it receives (``activations``, (N, 16, 32) flattened to 512).
      Here the labels cross too; against a label defense (``labeldp``) they cross randomised.
      With ``use_labels`` the attacker combines the two: class score log p_head(y | features) +
      log P(crossed | y), the label channel estimated on the aux rows (for which it holds both
      the true and the crossed label). It needs no knowledge of the defense; in the clear the
      channel is the identity and the attack reads the labels.

    Fu et al. train the completed model semi-supervised (MixMatch over the unlabelled rows);
    here the head is trained supervised on the aux rows only (a lower bound on their attack).

    Shape:
        transcript server_output (N, 128) or activations (N, C, L); aux: known-label rows
        (``own:F``: read by id; ``records:...``: their queried activations, vanilla only).

    Notes:
        The server's own weights are not part of the attacker's declared knowledge, so a
        U-shaped attack needs aux rows it observed (``--aux own:F``).
    """

    citation = ("Fu et al., Label Inference Attacks Against Vertical Federated Learning, "
                "USENIX Security 2022 (passive model completion)")
    Config = CompletionConfig
    requires = ("aux",)

    @staticmethod
    def feature_kind(transcript: Transcript) -> Kind:
        return Kind.ACTIVATIONS if labels_cross(transcript) else Kind.SERVER_OUTPUT

    def victim_kind(self, transcript: Transcript) -> Kind:
        return self.feature_kind(transcript)

    def features(self, transcript: Transcript, ids: torch.Tensor, what: str) -> torch.Tensor:
        f = rows_of(self, transcript, self.feature_kind(transcript), ids, what)
        return f.reshape(len(f), -1).float()

    def aux_features(self, transcript: Transcript, knowledge: Knowledge) -> torch.Tensor:
        aux = knowledge.aux
        assert aux is not None
        if aux.ids is not None:
            return self.features(transcript, aux.ids, "aux rows")
        if labels_cross(transcript) and aux.activations is not None:
            return aux.activations.reshape(len(aux.activations), -1).float()
        raise AttackInputError(
            f"attack {self.name!r}: U-shaped, the server's output for the aux beats is needed; "
            "pass aux rows it observed (--aux own:F)")

    def predict(self, transcript: Transcript, knowledge: Knowledge, ids: torch.Tensor,
                oracle_y: torch.Tensor) -> Prediction:
        cfg: CompletionConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        if aux is None:
            raise AttackInputError(f"attack {self.name!r} needs labelled aux beats (--aux)")
        head = train_head(self.aux_features(transcript, knowledge), aux.y.long(), cfg,
                          self.n_classes)
        with torch.no_grad():
            logits = torch.log_softmax(head(self.features(transcript, ids, "victims")), 1)
        scores = logits.double().numpy()
        extra: dict = {"features": self.feature_kind(transcript).value,
                       "aux_counts": np.bincount(aux.y.numpy(), minlength=self.n_classes).tolist()}
        if labels_cross(transcript) and cfg.use_labels and aux.ids is not None:
            crossed = rows_of(self, transcript, Kind.LABELS, ids, "victim labels").numpy()
            aux_crossed = rows_of(self, transcript, Kind.LABELS, aux.ids, "aux labels").numpy()
            channel = label_channel(aux.y.numpy(), aux_crossed, cfg.shrink,
                                    self.n_classes)  # (K, K)
            scores = scores + np.log(channel[:, crossed].T)
            extra["label_channel"] = channel.round(4).tolist()
        return Prediction(scores, None, extra)
