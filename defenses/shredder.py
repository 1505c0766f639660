"""Shredder: learned additive noise distributions at the cut."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from defenses.learned import LearnedDefense, check_positive, check_strength
from defenses.registry import register
from splitpriv.defense import PrivacyClaim


class NoiseDistribution(nn.Module):
    """Per-element Laplace noise of learned location (C, L) and log-scale (C, L): the noise
    ``loc + scale * exp(log_scale) * n``, n unit Laplace."""

    def __init__(self, shape: tuple[int, ...], scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.loc = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def sample(self, unit: torch.Tensor) -> torch.Tensor:
        """Noise (B, C, L) from unit Laplace noise ``unit`` (B, C, L) (a cut the attacks see
        flattened, (B, C, H * W) of (B, C, H, W), gets the same elements' noise)."""
        shape = unit.shape[1:]
        return self.loc.reshape(shape) + self.scale * self.log_scale.exp().reshape(shape) * unit

    def offset(self, a: torch.Tensor) -> torch.Tensor:
        """The learned location, shaped as one release of ``a`` (B, ...)."""
        return self.loc.reshape(a.shape[1:])


@register("shredder")
class Shredder(LearnedDefense):
    """Shredder (Mireshghallah et al., "Shredder: Learning Noise Distributions to Protect
    Inference Privacy", ASPLOS 2020, arXiv 1905.11814): additive noise at the cut whose
    distribution is learned to be as large as the task allows.

    Every element of the cut has a Laplace noise distribution of its own, location ``loc`` and
    scale ``scale * exp(log_scale)`` (C, L) each, initialised at 0 and ``scale``; every release
    (training and evaluation) adds a fresh sample, ``a + loc + scale * exp(log_scale) * n``,
    n unit Laplace from the defense's secret stream. The client trains the distribution with
    its layers, on the cross-entropy minus ``lam`` times the noise's magnitude (the mean
    absolute value of the batch's sampled noise), so that the noise grows wherever the task does
    not need the signal. Shredder trains the noise of a frozen, pretrained network and then
    fits distributions to the trained noise tensors; here the distribution's parameters are
    learned directly (reparameterised) while the split model trains.

    ``scale = 0`` is no noise and builds nothing: the run trains exactly as without the defense
    (``lam`` must then be 0).

    Shape:
        activations (B, C, L) -> (B, C, L).

    Adaptive attacker: the spec rebuilds and retrains the distribution (a shadow client trained
    with the run's recipe); querying the run's own client (``source=weights``) uses the trained
    distribution saved in checkpoint.pt. :meth:`release_map` is ``a + loc``, the release without
    its sampled part; the samples (the run's seed stream) are the client's secret.
    """

    learned = True

    @dataclass
    class Config:
        """Parameters of ``shredder``.

        Attributes:
            scale: initial Laplace scale of every element's noise (>= 0; 0: no noise, as without
                the defense); the default 0.1 is the order of the default client's activations
                (mean absolute value about 0.1 on MIT-BIH beats).
            lam: weight of the noise-magnitude term the client maximises (>= 0; needs scale > 0).
            lr: Adam learning rate of the noise parameters (> 0).
            seed: noise seed; None = the run's seed.
        """

        scale: float = 0.1
        lam: float = 0.1
        lr: float = 1e-3
        seed: int | None = None

        def __post_init__(self) -> None:
            check_strength("shredder", scale=self.scale, lam=self.lam)
            check_positive("shredder", lr=self.lr)
            if self.scale == 0 and self.lam > 0:
                raise ValueError(f"defense 'shredder': lam={self.lam} needs scale > 0 (scale=0 "
                                 "adds no noise to learn)")

    def active(self) -> bool:
        return self.config.scale > 0

    def build(self, shape: tuple[int, ...]) -> nn.Module:
        return NoiseDistribution(shape, self.config.scale)

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if not self.active():
            return a
        noise = self.module_for(a, training=training).sample(self.stream.laplace(a))
        if training:
            self.hold(noise.abs().mean())
        return a + noise

    def release_map(self, a: torch.Tensor) -> torch.Tensor:
        return a + self.module_for(a).offset(a) if self.active() else a

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        magnitude = self.take()
        if magnitude is None or self.config.lam == 0:
            return None
        return -self.config.lam * magnitude

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="learned laplace noise",
            scope="activations sent in training and evaluation (a fresh sample each)",
            conditions=["no formal guarantee: the noise's scale is learned for accuracy, not "
                        "calibrated to a sensitivity; its location is a fixed, removable shift"],
            details={"scale": c.scale, "lam": c.lam, "lr": c.lr,
                     "train_noise_magnitude_per_epoch": self.epoch_means},
        )


__all__ = ["NoiseDistribution", "Shredder"]
