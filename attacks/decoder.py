"""Black-box inversion: a decoder network trained on auxiliary beats and their activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import AttackInputError, Knowledge, lookup, observed
from attacks.inversion import InversionAttack, InversionConfig
from attacks.registry import register
from splitpriv.channel import Kind, Transcript


@dataclass
class DecoderConfig(InversionConfig):
    """Attributes:
        epochs: training epochs of the decoder on the aux pairs.
        batch_size: its minibatch.
        lr: its Adam learning rate.
        width: channels of its hidden layers.
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 64

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.width) < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size and width must be >= 1 and lr > 0")


class InverseNet(nn.Module):
    """Activations (B, C, L) -> beats (B, 1, out_len): convolutions and two nearest upsamplings,
    the mirror image of the client (inputs standardised per channel with the aux statistics)."""

    def __init__(self, channels: int, length: int, out_len: int, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("std", torch.ones(1, channels, 1))
        mid = max(length, out_len // 2)
        self.layers = nn.Sequential(
            nn.Conv1d(channels, width, 3, padding=1), nn.LeakyReLU(),
            nn.Upsample(size=mid), nn.Conv1d(width, width // 2, 5, padding=2), nn.LeakyReLU(),
            nn.Upsample(size=out_len), nn.Conv1d(width // 2, width // 4, 5, padding=2),
            nn.LeakyReLU(), nn.Conv1d(width // 4, 1, 7, padding=3),
        )

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.layers((a - self.mean) / self.std)  # (B, C, L) -> (B, 1, out_len)


def aux_activations(attack, transcript: Transcript, knowledge: Knowledge) -> torch.Tensor:
    """The aux beats' activations: given (queried from the client), or read by id."""
    aux = knowledge.aux
    assert aux is not None
    if aux.activations is not None:
        return aux.activations.float()
    if aux.ids is None:
        raise AttackInputError(f"attack {attack.name!r}: the aux set has neither activations "
                               "nor transcript ids to read them by")
    cfg = attack.config
    ids, values = observed(transcript, Kind.ACTIVATIONS, phase=cfg.phase, epoch=cfg.epoch,
                           attack=attack.name)
    return lookup(ids, values, aux.ids, "aux activations").float()


@register("decoder")
class DecoderInversion(InversionAttack):
    """The inverse-network attack of He, Zhang & Lee, "Model Inversion Attacks against
    Collaborative Inference", ACSAC 2019 (black box): the attacker trains a decoder from
    activations to inputs on auxiliary beats of the same distribution and applies it to the
    victims' activations.

    Adaptive: the aux activations come from the same (possibly defended) channel, or from querying
    the defended client, so the decoder learns to invert the defense too.

    Shape:
        aux: x (M, 1, 128) with activations (M, C, L) or transcript ids; victims (N, C, L) ->
        (N, 1, 128).
    """

    citation = ("He, Zhang & Lee, Model Inversion Attacks against Collaborative Inference, "
                "ACSAC 2019")
    Config = DecoderConfig
    uses = ("aux", "defenses")
    requires = ("aux",)
    study_columns = {"inversion_pearson_r": ("metrics", "pearson", "median"),
                     "inversion_prd": ("metrics", "prd", "median"),
                     "inversion_prdn": ("metrics", "prdn", "median"),
                     "baseline_pearson_r": ("baseline_mean_beat", "pearson", "median")}

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"epochs": budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: DecoderConfig = self.config  # type: ignore[assignment]
        assert knowledge.aux is not None
        a_aux = aux_activations(self, transcript, knowledge)  # (M, C, L)
        x_aux = knowledge.aux.x.float()  # (M, 1, 128)
        if a_aux.shape[1:] != acts.shape[1:]:
            raise AttackInputError(f"aux activations {tuple(a_aux.shape[1:])} and victims' "
                                   f"{tuple(acts.shape[1:])} differ in shape")
        net = InverseNet(acts.shape[1], acts.shape[2], beat_length, cfg.width)
        net.mean.copy_(a_aux.mean((0, 2), keepdim=True))
        net.std.copy_(a_aux.std((0, 2), keepdim=True).clamp(min=1e-6))
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        net.train()
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(a_aux), generator=gen).split(cfg.batch_size):
                loss = nn.functional.mse_loss(net(a_aux[idx]), x_aux[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.final_train_loss = float(loss.detach())
        net.eval()
        with torch.no_grad():
            return torch.cat([net(chunk) for chunk in acts.split(4096)])

    def notes(self, knowledge):
        return [f"decoder final training MSE on the aux set: {self.final_train_loss:.3g}"]
