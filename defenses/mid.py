"""MID: a variational information bottleneck at the cut, trained by the client."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from defenses.learned import LearnedDefense, check_positive, check_strength
from defenses.registry import register
from splitpriv.defense import PrivacyClaim


class Bottleneck(nn.Module):
    """Encoder (B, D) -> (mu, logvar) (B, dim) each, and decoder (B, dim) -> (B, D): both
    linear, D = C * L."""

    def __init__(self, d: int, dim: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(d, 2 * dim)
        self.decoder = nn.Linear(dim, d)

    def encode(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(a.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-20, 20)


@register("mid")
class MID(LearnedDefense):
    """MID, the mutual-information regularised defense (Zou et al., "Mutual Information
    Regularization for Vertical Federated Learning", 2023, arXiv 2301.01142; the ``MID`` of
    VFLAIR and of SecretFlow's split-learning defenses): a variational information bottleneck
    (Alemi et al., ICLR 2017) at the cut, with weight ``lam`` on its KL term.

    Both halves of the bottleneck belong to the client, before the cut, so the cut keeps its
    shape and the server model is unchanged: the client's activations a (B, C, L) are encoded to
    (mu, logvar) (B, dim); in training the client releases ``decoder(z)``,
    z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (a fresh sample per release, from the
    defense's secret stream); in evaluation it releases the decoder of the mean, ``decoder(mu)``
    (``sample_eval=true``: a sample, as in training). The client adds
    ``lam * mean_b KL(N(mu, diag exp(logvar)) || N(0, I))`` to its loss; the bottleneck's layers
    are trained by the client's gradient (its own Adam at ``lr``, as the client's layers).

    ``lam = 0`` builds no bottleneck: the run trains exactly as without the defense (a VIB of
    weight 0 is not the identity, so strength 0 is defined as off).

    Shape:
        activations (B, C, L) -> (B, dim) twice -> released (B, C, L).

    Adaptive attacker: the spec rebuilds and retrains the bottleneck (a shadow client trained
    with the run's recipe); querying the run's own client (``source=weights``) uses the trained
    bottleneck saved in checkpoint.pt. :meth:`release_map` is ``decoder(mu(a))``, the release
    without the sampling noise; the noise (the run's seed stream) is the client's secret.
    """

    learned = True

    @dataclass
    class Config:
        """Parameters of ``mid``.

        Attributes:
            lam: weight of the KL term (>= 0; 0: no bottleneck, as without the defense).
            dim: bottleneck width (>= 1).
            lr: Adam learning rate of the bottleneck's layers (> 0; the run's default 1e-3).
            sample_eval: release a sample in evaluation too (default: the mean's decoding).
            seed: noise and initialisation seed; None = the run's seed.
        """

        lam: float = 1e-3
        dim: int = 64
        lr: float = 1e-3
        sample_eval: bool = False
        seed: int | None = None

        def __post_init__(self) -> None:
            check_strength("mid", lam=self.lam)
            check_positive("mid", lr=self.lr)
            if not (isinstance(self.dim, int) and self.dim >= 1):
                raise ValueError(f"defense 'mid': dim must be an integer >= 1, got {self.dim}")

    def active(self) -> bool:
        return self.config.lam > 0

    def build(self, shape: tuple[int, ...]) -> nn.Module:
        return Bottleneck(math.prod(shape), self.config.dim)

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if not self.active():
            return a
        net = self.module_for(a, training=training)
        mu, logvar = net.encode(a)
        z = mu
        if training or self.config.sample_eval:
            z = mu + (logvar / 2).exp() * self.stream.normal(mu)
        if training:
            self.hold(0.5 * (mu ** 2 + logvar.exp() - logvar - 1).sum(1).mean())
        return net.decoder(z).view_as(a)

    def release_map(self, a: torch.Tensor) -> torch.Tensor:
        if not self.active():
            return a
        net = self.module_for(a)
        return net.decoder(net.encode(a)[0]).view_as(a)

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        kl = self.take()
        return None if kl is None else self.config.lam * kl

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="variational information bottleneck",
            scope="activations sent in training (a sample through the bottleneck) and in "
            "evaluation (" + ("a sample" if c.sample_eval else "the mean's decoding, no noise")
            + ")",
            conditions=["no formal guarantee: the KL term bounds the bottleneck's rate on "
                        "average over training batches, not what one beat's release reveals",
                        "the evaluation releases carry no noise unless sample_eval=true"],
            details={"lam": c.lam, "dim": c.dim, "lr": c.lr, "sample_eval": c.sample_eval,
                     "train_batch_kl_per_epoch": self.epoch_means},
        )


__all__ = ["MID", "Bottleneck"]
