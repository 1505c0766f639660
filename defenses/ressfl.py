"""Attacker-aware training: the client trains against a simulated inversion decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from defenses.learned import LearnedDefense, check_positive, check_strength, functional
from defenses.registry import register
from splitpriv.defense import ClientView, PrivacyClaim


def inversion_decoder(shape: tuple[int, ...], hidden: int = 256,
                      input_shape: tuple[int, ...] = (1, 128)) -> nn.Module:
    """The simulated attacker: activations (B, *shape) -> inputs (B, *input_shape) (beats
    (B, 1, 128)), an MLP."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), hidden), nn.LeakyReLU(),
                         nn.Linear(hidden, math.prod(input_shape)),
                         nn.Unflatten(1, tuple(input_shape)))


@register("ressfl")
class ResSFL(LearnedDefense):
    """Attacker-aware training, as ResSFL (Li et al., "ResSFL: A Resistance Transfer Framework
    for Defending Model Inversion Attack in Split Federated Learning", CVPR 2022) and
    DeepObfuscator (Li et al., arXiv 1909.04126): the client trains, on its own beats, a
    simulated inversion decoder G (activations -> beats) and trains its layers against it, a
    min-max game played alternately, one step each per training batch:

    * the decoder takes an Adam step (``lr``) on ``MSE(G(a), x)`` with the activations fixed;
    * the client adds ``-lam * MSE(G(a), x)`` (G fixed) to its cross-entropy, so that its
      activations keep the task and lose what the decoder reconstructs from.

    The optional bottleneck is noise (the paper narrows the cut to fewer channels, which would
    change the server's model here: a run that wants both sets ``cut_channels``): every release,
    training and evaluation, gets ``N(0, noise^2)`` per element, from the defense's secret
    stream.

    ``lam = 0`` and ``noise = 0`` train exactly as without the defense (no decoder is built).

    Shape:
        beats x (B, 1, 128) (any input (B, *input_shape)), activations a (B, C, L) -> G(a)
        shaped as x; releases (B, C, L).

    Adaptive attacker: the spec rebuilds the recipe (a shadow client trained against its own
    simulated decoder); the decoder is the client's and never crosses; nothing of it shapes the
    releases (:meth:`release_map` is the identity, the noise the client's secret).
    """

    @dataclass
    class Config:
        """Parameters of ``ressfl``.

        Attributes:
            lam: weight of the client's adversarial term (>= 0; 0: no decoder).
            noise: standard deviation of the Gaussian noise on every release (>= 0).
            lr: Adam learning rate of the simulated decoder (> 0).
            hidden: width of the decoder's hidden layer (>= 1).
            seed: noise and initialisation seed; None = the run's seed.
        """

        lam: float = 1.0
        noise: float = 0.0
        lr: float = 1e-3
        hidden: int = 256
        seed: int | None = None

        def __post_init__(self) -> None:
            check_strength("ressfl", lam=self.lam, noise=self.noise)
            check_positive("ressfl", lr=self.lr)
            if not (isinstance(self.hidden, int) and self.hidden >= 1):
                raise ValueError(f"defense 'ressfl': hidden must be an integer >= 1, got "
                                 f"{self.hidden}")

    def active(self) -> bool:
        return self.config.lam > 0

    #: the client's input shape (C, *spatial), read from its inputs when attached
    input_shape: tuple[int, ...] = (1, 128)

    def attach(self, client: ClientView) -> None:
        super().attach(client)
        self.input_shape = tuple(client.x.shape[1:])

    def build(self, shape: tuple[int, ...]) -> nn.Module:
        return inversion_decoder(shape, self.config.hidden, self.input_shape)

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if self.config.noise == 0:
            return a
        return a + self.config.noise * self.stream.normal(a)

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        if not self.active() or not torch.is_grad_enabled():  # (a client queried: no step)
            return None
        decoder = self.ensure(a)
        assert self.optimizer is not None
        mse = nn.functional.mse_loss(decoder(a.detach()), x)  # the decoder's move
        self.optimizer.zero_grad(set_to_none=True)
        mse.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.log(float(mse.detach()))
        return -self.config.lam * nn.functional.mse_loss(functional(decoder)(a), x)

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="adversarial training against a simulated "
            "inversion decoder" + (" and gaussian noise" if c.noise else ""),
            scope="activations sent in training and evaluation (the client's layers trained to "
            "resist the simulated decoder)",
            conditions=["no formal guarantee: resists the one decoder the client simulates, "
                        "not every inversion (a stronger or adaptive attacker may still invert)"],
            details={"lam": c.lam, "noise": c.noise, "lr": c.lr, "hidden": c.hidden,
                     "train_decoder_mse_per_epoch": self.epoch_means},
        )


__all__ = ["ResSFL", "inversion_decoder"]
