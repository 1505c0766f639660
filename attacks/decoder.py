"""Black-box inversion: a decoder network trained on auxiliary beats and their activations."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
from torch import nn

from attacks.base import Knowledge
from attacks.inversion import InversionAttack, InversionConfig, aux_activations, split_aux
from attacks.registry import register


def parse_grid(text: str, name: str) -> tuple[float, ...]:
    """A comma-separated grid of numbers (``"0.001,0.003"``) as a tuple of floats."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must hold at least one number")
    return values


@dataclass
class DecoderConfig(InversionConfig):
    """Attributes:
        epochs: at most this many training epochs on the aux pairs (held-out early stopping).
        patience: stop after this many epochs without a better held-out MSE.
        batch_size: its minibatch.
        lrs: Adam learning rates of the tuning grid (comma-separated).
        weight_decays: Adam weight decays (L2) of the tuning grid (comma-separated).
        width: channels of its hidden layers.
    """

    epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    lrs: str = "0.001,0.003"
    weight_decays: str = "0,0.0001"
    width: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.epochs, self.patience, self.batch_size, self.width) < 1:
            raise ValueError("epochs, patience, batch_size and width must be >= 1")
        if min(parse_grid(self.lrs, "lrs")) <= 0 or min(parse_grid(self.weight_decays,
                                                                   "weight_decays")) < 0:
            raise ValueError("lrs must be > 0 and weight_decays >= 0")

    def grid(self) -> list[tuple[float, float]]:
        """(lr, weight_decay) pairs tried."""
        return list(itertools.product(parse_grid(self.lrs, "lrs"),
                                      parse_grid(self.weight_decays, "weight_decays")))


class InverseNet(nn.Module):
    """Activations (B, C, L) -> beats (B, 1, out_len): convolutions and two nearest upsamplings,
    the mirror image of the client (inputs standardised per channel with the aux statistics),
    added to the aux mean beat (a residual parameterisation: the last layer starts at zero, so the
    untrained decoder outputs the mean beat)."""

    def __init__(self, channels: int, length: int, out_len: int, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("std", torch.ones(1, channels, 1))
        self.register_buffer("mean_beat", torch.zeros(1, 1, out_len))
        mid = max(length, out_len // 2)
        self.layers = nn.Sequential(
            nn.Conv1d(channels, width, 3, padding=1), nn.LeakyReLU(),
            nn.Upsample(size=mid), nn.Conv1d(width, width // 2, 5, padding=2), nn.LeakyReLU(),
            nn.Upsample(size=out_len), nn.Conv1d(width // 2, width // 4, 5, padding=2),
            nn.LeakyReLU(), nn.Conv1d(width // 4, 1, 7, padding=3),
        )
        last = self.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # (B, C, L) -> (B, 1, out_len)
        return self.mean_beat + self.layers((a - self.mean) / self.std)


@torch.no_grad()
def decode(net: nn.Module, acts: torch.Tensor) -> torch.Tensor:
    net.eval()
    return torch.cat([net(chunk) for chunk in acts.split(4096)])


def train_decoder(a_fit: torch.Tensor, x_fit: torch.Tensor, a_held: torch.Tensor,
                  x_held: torch.Tensor, cfg: DecoderConfig, lr: float, weight_decay: float
                  ) -> tuple[InverseNet, float, int]:
    """A decoder trained on (a_fit, x_fit) with held-out early stopping: the weights of the epoch
    (0 = untrained, the mean beat) with the lowest MSE on (a_held, x_held). Returns the net, that
    MSE and that epoch.

    Shape:
        a_fit: (M, C, L), x_fit: (M, 1, 128), a_held: (H, C, L), x_held: (H, 1, 128).
    """
    net = InverseNet(a_fit.shape[1], a_fit.shape[2], x_fit.shape[-1], cfg.width)
    net.mean.copy_(a_fit.mean((0, 2), keepdim=True))
    net.std.copy_(a_fit.std((0, 2), keepdim=True).clamp(min=1e-6))
    net.mean_beat.copy_(x_fit.mean(0, keepdim=True))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)

    def held_mse() -> float:
        return float(nn.functional.mse_loss(decode(net, a_held), x_held))

    best, best_epoch, best_state = held_mse(), 0, copy.deepcopy(net.state_dict())
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        for idx in torch.randperm(len(a_fit), generator=gen).split(cfg.batch_size):
            loss = nn.functional.mse_loss(net(a_fit[idx]), x_fit[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        mse = held_mse()
        if mse < best:
            best, best_epoch, best_state = mse, epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    net.load_state_dict(best_state)
    return net, best, best_epoch


@register("decoder")
class DecoderInversion(InversionAttack):
    """The inverse-network attack of He, Zhang & Lee, "Model Inversion Attacks against
    Collaborative Inference", ACSAC 2019 (black box): the attacker trains a decoder from
    activations to inputs on auxiliary beats of the same distribution and applies it to the
    victims' activations.

    Tuned by the attacker on its own beats, never on the victims: ``holdout`` of the aux beats are
    held out; for every (lr, weight decay) of the grid a decoder (AdamW, residual on the aux mean
    beat) is trained on the rest, early-stopped at its best held-out MSE; the best on the held-out
    beats inverts the victims. Epoch 0 (the mean beat itself) is a candidate, so on the held-out
    aux beats the decoder is never worse than the mean-beat prior.

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

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"epochs": budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: DecoderConfig = self.config  # type: ignore[assignment]
        assert knowledge.aux is not None
        a_aux = aux_activations(self, transcript, knowledge, like=acts)  # (M, C, L)
        x_aux = knowledge.aux.x.float()  # (M, 1, 128)
        fit, held = split_aux(len(a_aux), cfg.holdout, cfg.seed)
        mean_mse = float(nn.functional.mse_loss(x_aux[fit].mean(0, keepdim=True).expand(
            len(held), -1, -1), x_aux[held]))
        self.tuning = {"heldout_beats": len(held), "heldout_mse_mean_beat": mean_mse,
                       "grid": []}
        best = None
        for lr, wd in cfg.grid():
            torch.manual_seed(cfg.seed)
            net, mse, epoch = train_decoder(a_aux[fit], x_aux[fit], a_aux[held], x_aux[held],
                                            cfg, lr, wd)
            self.tuning["grid"].append({"lr": lr, "weight_decay": wd, "heldout_mse": mse,
                                        "best_epoch": epoch})
            if best is None or mse < best[1]:
                best = (net, mse, lr, wd, epoch)
        net, mse, lr, wd, epoch = best
        self.tuning |= {"chosen": {"lr": lr, "weight_decay": wd, "best_epoch": epoch},
                        "heldout_mse": mse}
        return decode(net, acts)

    def notes(self, knowledge: Knowledge) -> list[str]:
        t = self.tuning
        return [f"decoder tuned on {t['heldout_beats']} held-out aux beats: lr "
                f"{t['chosen']['lr']:g}, weight decay {t['chosen']['weight_decay']:g}, epoch "
                f"{t['chosen']['best_epoch']}; held-out MSE {t['heldout_mse']:.3g} (mean beat "
                f"{t['heldout_mse_mean_beat']:.3g})"]

