"""Black-box inversion by a fully connected decoder: the flattened activations to the beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.decoder import DecoderInversion, decode, parse_grid, train_decoder
from attacks.inversion import InversionConfig, aux_pairs, mean_beat_mse
from attacks.registry import register


@dataclass
class MLPConfig(InversionConfig):
    """Attributes:
        epochs: at most this many training epochs on the aux pairs (held-out early stopping).
        patience: stop after this many epochs without a better held-out MSE.
        batch_size: its minibatch.
        lrs: Adam learning rates of the tuning grid (comma-separated).
        hidden: units of each of its two hidden layers.
        dropout: dropout before each linear layer but the last (training only): the decoder
            regresses onto noisy activations, where it curbs fitting the noise.
        refit_epochs: epochs of the chosen decoder on every aux beat when it is refitted after a
            choice (``strongest``), from its tuned weights.
    """

    epochs: int = 100
    patience: int = 6
    batch_size: int = 128
    lrs: str = "0.001"
    hidden: int = 256
    dropout: float = 0.2
    refit_epochs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.epochs, self.patience, self.batch_size, self.hidden) < 1:
            raise ValueError("epochs, patience, batch_size and hidden must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if min(parse_grid(self.lrs, "lrs")) <= 0:
            raise ValueError("lrs must be > 0")


class MLPInverse(nn.Module):
    """Activations (B, C, L) -> beats (B, 1, out_len): standardised per coordinate (the aux
    statistics), two hidden LeakyReLU layers, added to the aux mean beat (the last layer starts
    at zero: the untrained decoder outputs the mean beat)."""

    mean: torch.Tensor  # (C*L,) buffers: the aux activations' standardisation
    std: torch.Tensor
    mean_beat: torch.Tensor  # (1, 1, out_len)

    def __init__(self, a_fit: torch.Tensor, x_fit: torch.Tensor, hidden: int, dropout: float
                 ) -> None:
        super().__init__()
        d, out_len = a_fit[0].numel(), x_fit.shape[-1]
        flat = a_fit.reshape(len(a_fit), -1)
        self.register_buffer("mean", flat.mean(0))
        self.register_buffer("std", flat.std(0).clamp(min=1e-6))
        self.register_buffer("mean_beat", x_fit.mean(0, keepdim=True))
        self.layers = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d, hidden), nn.LeakyReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_len))
        last = self.layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        z = (a.reshape(len(a), -1) - self.mean) / self.std  # (B, C*L)
        return self.mean_beat + self.layers(z).unsqueeze(1)  # (B, 1, out_len)


@register("mlp")
class MLPInversion(DecoderInversion):
    """The inverse-network attack of He, Zhang & Lee, "Model Inversion Attacks against
    Collaborative Inference", ACSAC 2019 (black box), with a fully connected decoder: trained on
    auxiliary beats and their (possibly defended, possibly combined) activations, tuned and
    early-stopped on held-out aux beats (never the victims); epoch 0, the mean beat, is a
    candidate. Under activation noise it fits where the convolutional decoder (``decoder``)
    stops early, and is the candidate of ``strongest`` that does not underfit there.

    Shape:
        aux: x (M, 1, 128) with activations (M, C, L); victims (N, C, L) -> (N, 1, 128).
    """

    Config = MLPConfig  # its citation, knowledge and refit: the decoder's

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"epochs": 2 * budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: MLPConfig = self.config  # type: ignore[assignment]
        assert knowledge.aux is not None
        a_aux, x_aux, fit, held = aux_pairs(self, acts, knowledge, transcript)
        grid, best = [], None
        for lr in parse_grid(cfg.lrs, "lrs"):
            torch.manual_seed(cfg.seed)
            net = MLPInverse(a_aux[fit], x_aux[fit], cfg.hidden, cfg.dropout)
            net, mse, epoch = train_decoder(a_aux[fit], x_aux[fit], a_aux[held], x_aux[held],
                                            cfg, lr, 0.0, self.device, net=net)  # type: ignore
            grid.append({"lr": lr, "heldout_mse": mse, "best_epoch": epoch})
            if best is None or mse < best[1]:
                best = (net, mse, lr, epoch)
        net, mse, lr, epoch = best
        self.net = net
        self.tuning = {"heldout_beats": len(held), "grid": grid, "heldout_mse": mse,
                       "heldout_mse_mean_beat": mean_beat_mse(x_aux, fit, held),
                       "chosen": {"lr": lr, "best_epoch": epoch}}
        return decode(net, acts.cpu()).cpu()

    def notes(self, knowledge):
        t = self.tuning
        return [f"MLP decoder tuned on {t['heldout_beats']} held-out aux beats: lr "
                f"{t['chosen']['lr']:g}, epoch {t['chosen']['best_epoch']}; held-out MSE "
                f"{t['heldout_mse']:.3g} (mean beat {t['heldout_mse_mean_beat']:.3g})"]
