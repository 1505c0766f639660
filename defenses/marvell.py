"""Marvell: label-leakage-bounded Gaussian noise on the output gradients (U-shape)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defenses.maxnorm import GradientNoise
from defenses.registry import register
from splitpriv.defense import PrivacyClaim
from splitpriv.models import N_CLASSES


def tv_for_auc(auc_bound: float) -> float:
    """The total variation t with 1/2 + t - t^2/2 = ``auc_bound``: t = 1 - sqrt(2 - 2 b).

    If TV(P1, P0) <= t, every detector's ROC curve lies below TPR = FPR + t, and its AUC below
    integral_0^1 min(1, f + t) df = 1/2 + t - t^2/2 (Li et al. 2022, Theorem 1, in TV form)."""
    return 1.0 - math.sqrt(2.0 - 2.0 * auc_bound)


def auc_bound_of_kl(kl: float) -> float:
    """The AUC bound that a KL divergence guarantees (Pinsker: TV <= sqrt(KL / 2))."""
    t = min(1.0, math.sqrt(kl / 2.0))
    return 0.5 + t - t * t / 2.0


@register("marvell")
class Marvell(GradientNoise):
    """Marvell (Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR 2022),
    simplified: Gaussian noise on the output gradient the client head returns, scaled so that
    the leakage bound ``auc_bound`` holds for the paper's Gaussian model of the gradients.

    The paper (binary labels) models each class's gradients as Gaussians, adds class-dependent
    Gaussian noise whose covariances minimise the KL divergence between the noisy classes under a
    power constraint, and bounds every detector's AUC through it (1/2 + TV - TV^2/2, TV <=
    sqrt(KL / 2)). Here, per batch:

    * five classes, applied **one-vs-rest**: for every class c present with some other class, the
      mean difference d_c = mean(g | y = c) - mean(g | y != c) and noise z_c beta_c d_c/||d_c||,
      z_c ~ N(0, 1), with beta_c^2 = ||d_c||^2 / (4 t^2), t = :func:`tv_for_auc`. Under the
      paper's model with a covariance S shared by the classes, KL = d^T (S + noise)^-1 d / 2 <=
      ||d||^2 / (2 beta^2) = 2 t^2, so TV <= t and every one-vs-rest AUC <= ``auc_bound``.
      One-vs-rest, not (majority vs rest): the protocol draws the classes near-balanced, there
      is no rare positive class as in the paper, and the label attacks are scored per class
      one-vs-rest; this bounds each of those AUCs. This noise is the same for every label.
    * with ``equalise_norms``, label-dependent isotropic noise N(0, s_c^2 I),
      s_c^2 = (max_k m_k - m_c) / D, m_c the class's mean squared norm: every class then has the
      same expected squared norm (the first-order norm signal, as max-norm removes per example).

    The paper optimises the noise covariances (their power constraint is its parameter); here the
    noise's shape is fixed and its scale solved in closed form from the bound, so the bound is
    the parameter and the power is what it costs (reported). Faithful in spirit, simpler.

    Shape:
        output gradient (B, D), labels (B,) -> (B, D).

    Notes:
        The bound is the paper's: it holds under its Gaussian model (shared covariance, batch
        means as the class means), not for every detector on the real gradients; the isotropic
        part makes the classes' covariances differ slightly, outside that model. Reported as
        no formal guarantee. U-shaped topology only.
    """

    @dataclass
    class Config:
        """Parameters of ``marvell``.

        Attributes:
            auc_bound: the leakage bound: every one-vs-rest AUC of any detector under the
                paper's Gaussian model, in (0.5, 1) (smaller: more noise).
            equalise_norms: add the class-dependent isotropic noise equalising the classes'
                expected squared norms.
            seed: noise seed; None = torch's initial seed when set up (the run's seed).
        """

        auc_bound: float = 0.75
        equalise_norms: bool = True
        seed: int | None = None

        def __post_init__(self) -> None:
            if not 0.5 < self.auc_bound < 1.0:  # also refuses NaN
                raise ValueError(f"defense 'marvell': auc_bound must be in (0.5, 1), "
                                 f"got {self.auc_bound}")

    def noise(self, g: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("defense 'marvell': the sender must hold the labels")
        b, d = g.shape
        t = tv_for_auc(self.config.auc_bound)
        k_all = max(N_CLASSES, self.n_classes)  # the paper's 5 columns drawn for MIT-BIH, as ever
        z = self.normal((b, k_all), g)
        iso = self.normal((b, d), g)
        out = torch.zeros_like(g)
        present = [c for c in range(k_all) if (y == c).any()]
        for k, c in enumerate(present):
            mine = y == c
            if mine.all():
                continue
            diff = g[mine].mean(0) - g[~mine].mean(0)  # (D,), beta_c * unit(d_c) = d_c / (2t)
            out += z[:, k:k + 1] * (diff / (2 * t))[None, :]
        if self.config.equalise_norms and len(present) > 1:
            sq = (g ** 2).sum(1)
            m = torch.stack([sq[y == c].mean() for c in present])
            s = ((m.max() - m).clamp(min=0) / d).sqrt()
            sd = torch.zeros(b, dtype=g.dtype, device=g.device)
            for c, s_c in zip(present, s, strict=True):
                sd[y == c] = s_c
            out += sd[:, None] * iso
        return out

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="gaussian (Marvell, one-vs-rest)",
            privacy_unit="one beat's label", scope="output gradients the client head returns "
            "(U-shape)",
            conditions=[f"leakage bound: every one-vs-rest AUC <= {c.auc_bound} under the "
                        "paper's Gaussian model of the gradients (shared class covariance, "
                        "batch means), not a differential-privacy guarantee"],
            details={"auc_bound": c.auc_bound, "tv_bound": tv_for_auc(c.auc_bound),
                     "equalise_norms": c.equalise_norms, **self.noise_details()},
        )


__all__ = ["Marvell", "auc_bound_of_kl", "tv_for_auc"]
