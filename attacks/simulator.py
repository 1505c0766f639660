"""What the unpaired inversions share (``attacks.sdar``, ``attacks.fora``, the unpaired branch of
``attacks.adaptive``): a simulated client trained on public beats so that its activations look
like the ones the server received (a discriminator, and/or the multi-kernel MMD), then an
inversion decoder trained on the simulated client's (public beat, activation) pairs and applied
to the received activations.

No pair of a victim's beat with its release is ever used: the received activations enter only
as a sample of their distribution.

Shape:
    public beats x (M, 1, L); received activations (N, C, L') -> reconstructions (N, 1, L).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import AttackInputError, Knowledge
from attacks.decoder import DecoderConfig, decode, train_decoder
from attacks.inversion import InversionAttack, InversionConfig, mean_beat_mse, split_aux


@dataclass
class SimulatorConfig(InversionConfig):
    """Attributes:
        steps: the simulated client's training steps (each a minibatch of public beats against
            one of received activations; the discriminator steps as often).
        batch_size: those minibatches' size.
        lr: Adam learning rate of the simulated client and the discriminator.
        adv_weight: weight of the adversarial term (the discriminator's cross-entropy of the
            simulated activations labelled as received ones).
        mmd_weight: weight of the multi-kernel MMD between the simulated and received
            activations of a minibatch (0: none).
        decoder_epochs: the inversion decoder's most epochs (held-out early stopping on
            ``holdout`` of the public beats).
        decoder_width: its width (``attacks.decoder.InverseNet``).
    """

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    adv_weight: float = 0.02
    mmd_weight: float = 0.0
    decoder_epochs: int = 30
    decoder_width: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.steps, self.batch_size, self.decoder_epochs, self.decoder_width) < 1:
            raise ValueError("steps, batch_size, decoder_epochs and decoder_width must be >= 1")
        if self.lr <= 0 or self.adv_weight < 0 or self.mmd_weight < 0:
            raise ValueError("lr must be > 0, adv_weight and mmd_weight >= 0")


class Discriminator(nn.Module):
    """Received (1) or simulated (0) activations: (B, C, L) -> (B,) logits; the inputs
    standardised per channel with the received activations' statistics."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, received: torch.Tensor, width: int = 32) -> None:
        super().__init__()
        c = received.shape[1]
        self.register_buffer("mean", received.mean((0, 2), keepdim=True))
        self.register_buffer("std", received.std((0, 2), keepdim=True).clamp(min=1e-6))
        self.layers = nn.Sequential(
            nn.Conv1d(c, width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv1d(width, 2 * width, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Dropout(0.4), nn.Linear(8 * width, 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.layers((a - self.mean) / self.std).squeeze(1)


def mk_mmd(a: torch.Tensor, b: torch.Tensor, scales: Iterable[float] = (0.25, 0.5, 1, 2, 4)
           ) -> torch.Tensor:
    """The squared maximum mean discrepancy between samples a (n, ...) and b (m, ...) under a
    sum of Gaussian kernels, bandwidths ``scales`` times the median pairwise squared distance
    (the multi-kernel MMD of Long et al., ICML 2015, that FORA matches; biased estimate)."""
    x, y = a.reshape(len(a), -1), b.reshape(len(b), -1)
    z = torch.cat([x, y])
    d = torch.cdist(z, z).pow(2)
    base = d.detach().median().clamp(min=1e-8)
    k = sum(torch.exp(-d / (s * base)) for s in scales)
    assert isinstance(k, torch.Tensor)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def train_simulator(sim: nn.Module, x_pub: torch.Tensor, received: torch.Tensor,
                    cfg: SimulatorConfig, *, device: torch.device,
                    task: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                    extra: Iterable[nn.Parameter] = (),
                    release: Callable[[torch.Tensor], torch.Tensor] = lambda a: a,
                    ) -> dict[str, float]:
    """Train ``sim`` (in place, on ``device``) so that ``release(sim(x_pub))`` is distributed as
    ``received``: ``cfg.steps`` alternating steps of the simulated client (``task`` loss of the
    public rows' activations and positions, plus ``adv_weight`` times the discriminator's
    verdict and ``mmd_weight`` times the MK-MMD) and of the discriminator (binary cross-entropy,
    received 1, simulated 0). ``extra``: further parameters trained with ``sim`` (a simulated
    head). Returns the last step's losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    received = received.float().to(device)
    x_pub = x_pub.float().to(device)
    sim.to(device).train()
    disc = Discriminator(received).to(device)
    opt_s = torch.optim.Adam([*sim.parameters(), *extra], lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr)
    out: dict[str, float] = {}
    for _ in range(cfg.steps):
        rows = torch.randint(len(x_pub), (min(cfg.batch_size, len(x_pub)),), generator=gen)
        real = received[torch.randint(len(received), (len(rows),), generator=gen)]
        z = release(sim(x_pub[rows.to(device)]))
        loss = torch.zeros((), device=device)
        if task is not None:
            out["task"] = float((t := task(z, rows.to(device))).detach())
            loss = loss + t
        if cfg.adv_weight > 0:
            fooled = F.binary_cross_entropy_with_logits(disc(z), torch.ones(len(z), device=device))
            out["adversarial"] = float(fooled.detach())
            loss = loss + cfg.adv_weight * fooled
        if cfg.mmd_weight > 0:
            out["mmd"] = float((m := mk_mmd(z, real)).detach())
            loss = loss + cfg.mmd_weight * m
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        d_loss = (F.binary_cross_entropy_with_logits(disc(real), torch.ones(len(real),
                                                                            device=device))
                  + F.binary_cross_entropy_with_logits(disc(z.detach()),
                                                       torch.zeros(len(z), device=device)))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        out["discriminator"] = float(d_loss.detach())
    sim.eval()
    return out


@torch.no_grad()
def simulate(sim: nn.Module, x: torch.Tensor, release: Callable[[torch.Tensor], torch.Tensor]
             = lambda a: a) -> torch.Tensor:
    """``release(sim(x))`` on the host, in chunks on the simulator's device."""
    sim.eval()
    dev = next(sim.parameters()).device
    return torch.cat([release(sim(c.to(dev).float())).cpu() for c in x.split(4096)])


def bounded_decode(net: nn.Module, acts: torch.Tensor, x_pub: torch.Tensor) -> torch.Tensor:
    """The decoder's reconstructions of ``acts`` on the host, clipped to the range of the public
    beats (SDAR's decoder ends in a sigmoid on [0, 1] images; our beats are min-max normalised per
    record): a decoder trained on simulated activations meets received ones it never saw, and
    unclipped its extrapolations reached PRDN 700 on an undefended run."""
    return decode(net, acts.float().cpu()).cpu().clamp(float(x_pub.min()), float(x_pub.max()))


def fit_inversion(a_pub: torch.Tensor, x_pub: torch.Tensor, cfg: SimulatorConfig,
                  device: torch.device, knowledge: Knowledge | None = None
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The inversion decoder (built for ``knowledge``'s input and cut shapes) trained on
    simulated pairs (a_pub (M, C, L), x_pub (M, 1, L)), early-stopped on ``holdout`` of them;
    returns it and its tuning (held-out MSE beside the mean beat's)."""
    fit, held = split_aux(len(x_pub), cfg.holdout, cfg.seed)
    dcfg = DecoderConfig(epochs=cfg.decoder_epochs, width=cfg.decoder_width, seed=cfg.seed,
                         device=cfg.device, holdout=cfg.holdout)
    torch.manual_seed(cfg.seed)
    net, mse, epoch = train_decoder(a_pub[fit], x_pub[fit], a_pub[held], x_pub[held], dcfg,
                                    lr=1e-3, weight_decay=0.0, device=device,
                                    knowledge=knowledge)
    return net, {"heldout_beats": len(held), "heldout_mse": mse, "best_epoch": epoch,
                 "heldout_mse_mean_beat": mean_beat_mse(x_pub, fit, held)}


def study_columns(prefix: str) -> dict[str, tuple[str, ...]]:
    """An unpaired or adaptive attack's own results.csv columns, ``PREFIX_k10_advantage`` etc.
    (not the shared inversion columns, where a study row would keep only the highest)."""
    return {f"{prefix}_{col}": path for col, path in (
        ("k10_advantage", ("linkage", "k10", "advantage")),
        ("k100_advantage", ("linkage", "k100", "advantage")),
        ("within_k10_advantage", ("linkage_within", "k10", "advantage")),
        ("pearson_r", ("metrics", "pearson", "median")),
        ("mse", ("metrics", "mse", "median")))}


class SimulatedInversion(InversionAttack):
    """Base of the inversions through a simulated client (module docstring): subclasses train
    the simulator (:meth:`simulator`); the decoder on its public pairs inverts the received
    activations. ``refit`` (``strongest``'s winner) reuses the decoder as fitted."""

    config: SimulatorConfig

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"decoder_epochs": budget.decoder_epochs,
                                                "steps": 50 * budget.decoder_epochs}

    @classmethod
    def needs_aux(cls) -> bool:
        """No: a study runs it on its own public beats (``default_aux``, ``public:0.1``), never
        on the study's paired aux set (``strongest`` hands it that, as a candidate)."""
        return False

    def public_beats(self, knowledge: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """The attacker's public beats (M, 1, L) float32 and labels (M,) (its aux beats; their
        releases, if any, are never read)."""
        aux = knowledge.aux
        if aux is None:
            raise AttackInputError(f"attack {self.name!r} needs public beats (--aux public:F)")
        if len(aux.x) < 8:
            raise AttackInputError(f"attack {self.name!r}: {len(aux.x)} public beats, need 8")
        return aux.x.float(), aux.y.long()

    def simulator(self, x_pub: torch.Tensor, y_pub: torch.Tensor, acts: torch.Tensor,
                  knowledge: Knowledge) -> tuple[nn.Module, Callable[[torch.Tensor],
                                                                      torch.Tensor]]:
        """The trained simulated client and the map after it (the known defenses' noiseless
        part, else the identity)."""
        raise NotImplementedError

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        x_pub, y_pub = self.public_beats(knowledge)
        if x_pub.shape[-1] != beat_length:
            raise AttackInputError(f"public beats of {x_pub.shape[-1]} samples, victims' of "
                                   f"{beat_length}")
        torch.manual_seed(self.config.seed)
        sim, release = self.simulator(x_pub, y_pub, acts.float(), knowledge)
        a_pub = simulate(sim, x_pub, release)
        if a_pub.shape[1:] != acts.shape[1:]:
            raise AttackInputError(f"the simulated client gives {tuple(a_pub.shape[1:])}, the "
                                   f"received activations are {tuple(acts.shape[1:])}")
        self.net, self.tuning = fit_inversion(a_pub, x_pub, self.config, self.device,
                                                 knowledge)
        self.tuning["public_beats"] = len(x_pub)
        self.tuning["simulator"] = getattr(self, "losses", {})
        self.x_pub = x_pub
        return bounded_decode(self.net, acts, x_pub)

    def refit(self, acts, knowledge, transcript, *, beat_length):
        return bounded_decode(self.net, acts, self.x_pub)

    def notes(self, knowledge: Knowledge) -> list[str]:
        t = self.tuning
        return [f"{self.name}: decoder on {t['public_beats']} public beats through the simulated "
                f"client; held-out (simulated) MSE {t['heldout_mse']:.3g} (mean beat "
                f"{t['heldout_mse_mean_beat']:.3g}); simulator's last losses {t['simulator']}"]


__all__ = ["Discriminator", "SimulatedInversion", "SimulatorConfig", "bounded_decode",
           "study_columns",
           "fit_inversion", "mk_mmd", "simulate", "train_simulator"]
