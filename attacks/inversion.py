"""What the inversion attacks share: victims, scoring of reconstructions, a trivial baseline, the
diagnosis check, and the optimisation loop of the model-based attacks.

An inversion attack maps the victims' activations (N, C, L) to beats (N, 1, 128). Victims are the
observed beats that the attacker's auxiliary set does not contain. Each reconstruction is scored
against its true beat (MSE, Pearson r, PRD, PRDN, SNR, DTW; see ``attacks.metrics``), reported as
distributions, beside two references:

* ``baseline``: the same metrics for the mean beat (the aux mean when there is an aux set, else
  the victims' own mean), what an attacker who learned nothing per beat would get;
* ``diagnosis``: the accuracy of the evaluator's reference classifier (``GroundTruth.classifier``,
  trained on beats the victims are not among) on the true beats and on the reconstructions, and how
  often its two predictions agree: does the diagnosis survive the reconstruction?
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attacks.base import (
    Attack,
    AttackInputError,
    AttackResult,
    CommonConfig,
    GroundTruth,
    Knowledge,
    observe_victims,
)
from attacks.metrics import distribution, reconstruction_metrics, summarize_reconstruction
from splitpriv.channel import Kind, Transcript


@dataclass
class InversionConfig(CommonConfig):
    """Attributes:
        max_victims: beats reconstructed (a seeded random subset of the victims).
    """

    max_victims: int | None = 1000


@dataclass
class OptimConfig(InversionConfig):
    """Parameters of the model-based (optimisation) inversions.

    Attributes:
        lr: Adam learning rate of the beats.
        tv: weight of the smoothness prior, the total variation mean |x[t+1] - x[t]|.
        lower, upper: bounds of a beat (the public preprocessing min-max normalises every record to
            [0, 1]); None leaves that side unbounded.
        init: the constant value every beat starts from.
    """

    lr: float = 0.01
    tv: float = 0.01
    lower: float | None = 0.0
    upper: float | None = 1.0
    init: float = 0.5

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.tv < 0:
            raise ValueError("lr must be > 0 and tv >= 0")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")


class InversionAttack(Attack):
    """Base of the inversion attacks: subclasses implement :meth:`reconstruct`."""

    Config = InversionConfig

    @classmethod
    def study_options(cls, budget):
        return {"source": "weights", "max_victims": budget.decoder_victims,
                "reference_epochs": budget.reference_epochs}

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth) -> AttackResult:
        aux = knowledge.aux
        obs = observe_victims(
            self, transcript, Kind.ACTIVATIONS, truth, exclude=knowledge.not_victims
        )
        if obs.values.ndim != 3:
            raise AttackInputError(f"activations must be (N, C, L), got {tuple(obs.values.shape)}")
        acts = obs.values.float()  # (N, C, L)
        x_hat = self.reconstruct(acts, knowledge, transcript, beat_length=truth.x.shape[-1])
        if x_hat.shape != obs.x.shape:
            raise RuntimeError(f"{self.name}: reconstructions {tuple(x_hat.shape)} for beats "
                               f"{tuple(obs.x.shape)}")
        x_hat = x_hat.detach().float()
        metrics = reconstruction_metrics(obs.x, x_hat)
        mean_beat = (aux.x if aux is not None else obs.x).double().mean(0, keepdim=True)
        baseline = reconstruction_metrics(obs.x, mean_beat.expand_as(obs.x))
        summary = {
            "n_victims": len(obs.ids),
            "metrics": summarize_reconstruction(metrics),
            "baseline_mean_beat": {
                "source": "aux mean beat" if aux is not None else "victims' mean beat",
                **{k: distribution(v) for k, v in baseline.items()},
            },
        }
        scores = {"ids": obs.ids.numpy(), "y": obs.y.numpy(), **metrics,
                  "reconstructions": x_hat.reshape(len(x_hat), -1).numpy()}
        if truth.classifier is not None:
            summary["diagnosis"], preds = diagnosis(truth.classifier, obs.x, x_hat, obs.y)
            scores.update(preds)
        return AttackResult(attack=self.name, summary=summary, scores=scores,
                            notes=self.notes(knowledge))

    def headline(self, summary):
        m, b = summary["metrics"], summary["baseline_mean_beat"]
        out = {"n_victims": summary["n_victims"]}
        for k in ("pearson", "prdn", "snr_db", "dtw"):
            out[f"{k}_median"] = m[k]["median"]
            out[f"{k}_iqr"] = [m[k]["q1"], m[k]["q3"]]
            out[f"baseline_{k}_median"] = b[k]["median"]
        if "diagnosis" in summary:
            out.update(summary["diagnosis"])
        return out

    def notes(self, knowledge: Knowledge) -> list[str]:
        return []

    @abstractmethod
    def reconstruct(
        self, acts: torch.Tensor, knowledge: Knowledge, transcript: Transcript, *, beat_length: int
    ) -> torch.Tensor:
        """Beats (N, 1, beat_length) from the victims' activations (N, C, L)."""


@torch.no_grad()
def diagnosis(
    classifier: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Reference-classifier accuracy on the true beats and on the reconstructions."""
    classifier.eval()
    p_true = classifier(x.float()).argmax(1)
    p_rec = classifier(x_hat.float()).argmax(1)
    return (
        {
            "accuracy_on_true_beats": float((p_true == y).float().mean()),
            "accuracy_on_reconstructions": float((p_rec == y).float().mean()),
            "agreement": float((p_true == p_rec).float().mean()),
        },
        {"pred_true": p_true.numpy(), "pred_reconstruction": p_rec.numpy()},
    )


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, L) -> (N,): mean |x[t+1] - x[t]| of each beat."""
    return (x[..., 1:] - x[..., :-1]).abs().mean((-1, -2))


def clamp_(x: torch.Tensor, lower: float | None, upper: float | None) -> None:
    if lower is not None or upper is not None:
        x.clamp_(min=lower, max=upper)


def activation_loss(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, acts: torch.Tensor, tv: float
) -> torch.Tensor:
    """Sum over beats of (mean squared activation mismatch + tv * total variation): each beat's
    optimisation is independent of the others (the sum, not the mean, keeps its scale)."""
    mismatch = ((net(x) - acts) ** 2).mean((-1, -2))  # (N,)
    return (mismatch + tv * total_variation(x)).sum()


def start_beats(n: int, length: int, cfg: OptimConfig) -> torch.Tensor:
    return torch.full((n, 1, length), float(cfg.init), requires_grad=True)
