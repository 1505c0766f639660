"""Black-box inversion in closed form: ridge regression from the flattened activations to beats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attacks.base import AuxData
from attacks.decoder import parse_grid
from attacks.inversion import (
    InversionAttack,
    InversionConfig,
    aux_pairs,
    mean_beat_mse,
    split_aux,
)
from attacks.metrics import LinkageScorer
from attacks.registry import register
from attacks.releases import Windowed


@dataclass
class RidgeConfig(InversionConfig):
    """Attributes:
        lambdas: ridge penalties tried, relative to the largest squared singular value of the
            standardised aux activations (comma-separated); the best on the held-out aux beats
            is refitted on all of them.
    """

    lambdas: str = "1e-8,1e-7,1e-6,1e-5,1e-4,1e-3,1e-2,1e-1,1"

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(parse_grid(self.lambdas, "lambdas")) <= 0:
            raise ValueError("lambdas must be > 0")


class RidgeMap:
    """x^ = mean_x + W (a - mean_a) / sd_a on flattened rows, W the ridge solution for every
    penalty of a grid from one eigendecomposition of the standardised activations' Gram matrix
    Z^T Z = V S^2 V^T: W = V (S^2 + lam s_max^2)^-1 V^T Z^T (x - mean_x), the SVD solution
    without dividing by a singular value (a third of an SVD's time at 1,000 x 512).

    Shape:
        a: (M, D) activations, x: (M, P) beats; predict (N, D) -> (N, P), on ``device``.
    """

    def __init__(self, a: torch.Tensor, x: torch.Tensor,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        a, x = a.to(self.device, torch.float64), x.to(self.device, torch.float64)
        self.mu_a, self.sd_a = a.mean(0), a.std(0).clamp(min=1e-8)
        self.mu_x = x.mean(0)
        z = (a - self.mu_a) / self.sd_a
        s2, self.v = torch.linalg.eigh(z.T @ z)  # ascending eigenvalues: S^2 and V (D, D)
        self.s2 = s2.clamp(min=0.0)
        self.vtzty = self.v.T @ (z.T @ (x - self.mu_x))  # (D, P)

    def weights(self, lam: float) -> torch.Tensor:
        """(D, P) ridge weights for penalty ``lam`` times the largest squared singular value."""
        shrink = 1.0 / (self.s2 + lam * float(self.s2.max()))
        return self.v @ (shrink[:, None] * self.vtzty)

    def predict(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.mu_x + ((a.to(self.device, torch.float64) - self.mu_a) / self.sd_a) @ w

    def tune(self, a_held: torch.Tensor, x_held: torch.Tensor, lambdas: str
             ) -> tuple[dict[str, float], list[dict[str, float]]]:
        """The penalty of ``lambdas`` (comma-separated) with the lowest MSE on held-out pairs
        (a_held (H, D), x_held (H, P)), and the grid: ``({"lambda", "heldout_mse"}, grid)``."""
        x_held = x_held.to(self.device, torch.float64)
        grid = []
        for lam in parse_grid(lambdas, "lambdas"):
            pred = self.predict(a_held, self.weights(lam))
            grid.append({"lambda": lam, "heldout_mse": float(((pred - x_held) ** 2).mean())})
        return min(grid, key=lambda g: g["heldout_mse"]), grid


def choose_window_by_ridge(windows: list[Windowed], aux: AuxData, cfg: InversionConfig,
                           device: torch.device | str = "cpu"
                           ) -> tuple[int, list[dict[str, Any]]]:
    """The release window an attacker picks on its own beats: for each window, ridge (penalty
    tuned on the held-out part) fitted on the fit part of the aux beats, and its linkage of the
    held-out aux beats (k = 10 same-class aux beats as candidates); the best advantage wins,
    ties to the lower held-out MSE. Cheap (one SVD per window): the proxy every inversion uses
    to combine releases (``releases=auto``). Returns the window's index and the table."""
    m = len(aux.x)
    fit, held = split_aux(m, cfg.holdout, cfg.seed)
    x = aux.x.reshape(m, -1)
    scorer = LinkageScorer(aux.x[held], aux.y[held], pool_x=aux.x, pool_y=aux.y, seed=cfg.seed)
    rows: list[dict[str, Any]] = []
    for w in windows:
        assert w.aux is not None
        a = w.aux.reshape(m, -1)
        part = RidgeMap(a[fit], x[fit], device)
        chosen, _ = part.tune(a[held], x[held], RidgeConfig.lambdas)
        pred = part.predict(a[held], part.weights(chosen["lambda"])).cpu()
        link = scorer.linkage(pred, k=10)
        rows.append({"window": w.name, "releases_mean": w.releases, "lambda": chosen["lambda"],
                     "heldout_mse": chosen["heldout_mse"],
                     "heldout_linkage_k10_advantage": link["advantage"]})
    best = max(range(len(rows)), key=lambda i: (rows[i]["heldout_linkage_k10_advantage"],
                                                -rows[i]["heldout_mse"]))
    return best, rows


@register("ridge")
class RidgeInversion(InversionAttack):
    """A linear inverse network in closed form: the black-box setting of He, Zhang & Lee, "Model
    Inversion Attacks against Collaborative Inference", ACSAC 2019 (an inverse mapping learned from
    auxiliary pairs of inputs and activations), with the inverse restricted to a linear map and
    fitted by ridge regression (Hoerl & Kennard, Technometrics 1970) instead of SGD: no epochs,
    no learning rate, one penalty chosen on held-out aux beats (never on the victims), then refitted
    on every aux beat.

    A strong baseline where a client is nearly linear in its input (a shallow client, or noise
    that a linear map averages out).

    Shape:
        aux: x (M, 1, 128) with activations (M, C, L); victims (N, C, L) -> (N, 1, 128).
    """

    citation = ("He, Zhang & Lee, Model Inversion Attacks against Collaborative Inference, "
                "ACSAC 2019; Hoerl & Kennard, Ridge Regression, Technometrics 1970")
    Config = RidgeConfig
    uses = ("aux", "defenses")
    requires = ("aux",)

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: RidgeConfig = self.config  # type: ignore[assignment]
        assert knowledge.aux is not None
        a_aux, x_aux, fit, held = aux_pairs(self, acts, knowledge, transcript)
        a, x = a_aux.reshape(len(a_aux), -1), x_aux.reshape(len(a_aux), -1)
        device = self.device
        part = RidgeMap(a[fit], x[fit], device)
        chosen, grid = part.tune(a[held], x[held], cfg.lambdas)
        self.tuning = {"heldout_beats": len(held), "grid": grid, "chosen": chosen,
                       "heldout_mse": chosen["heldout_mse"],
                       "heldout_mse_mean_beat": mean_beat_mse(x, fit, held)}
        full = RidgeMap(a, x, device)
        out = full.predict(acts.reshape(len(acts), -1), full.weights(chosen["lambda"]))
        return out.float().cpu().reshape(len(acts), 1, beat_length)

    def notes(self, knowledge):
        t = self.tuning
        return [f"ridge lambda {t['chosen']['lambda']:g} (relative) chosen on {t['heldout_beats']} "
                f"held-out aux beats: MSE {t['heldout_mse']:.3g} (mean beat "
                f"{t['heldout_mse_mean_beat']:.3g})"]

