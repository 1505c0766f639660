"""UnSplit: invert activations knowing the client's architecture but not its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.inversion import (
    InversionAttack,
    OptimConfig,
    activation_loss,
    clamp_,
    start_beats,
)
from attacks.registry import register


@dataclass
class UnsplitConfig(OptimConfig):
    """Attributes:
        max_victims: victims attacked together (they share one surrogate client).
        rounds: alternations between the beats and the surrogate.
        input_steps: Adam steps on the beats per round.
        model_steps: Adam steps on the surrogate's weights per round.
        model_lr: Adam learning rate of the surrogate.
    """

    max_victims: int | None = 256
    rounds: int = 100
    input_steps: int = 10
    model_steps: int = 10
    model_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.rounds, self.input_steps, self.model_steps) < 1 or self.model_lr <= 0:
            raise ValueError("rounds, input_steps and model_steps must be >= 1, model_lr > 0")


@register("unsplit")
class UnSplit(InversionAttack):
    """UnSplit of Erdogan, Küpçü & Çiçek, "UnSplit: Data-Oblivious Model Inversion, Model Stealing,
    and Label Inference Attacks Against Split Learning", WPES 2022: the attacker knows the client
    architecture, not its weights. It optimises the victims' beats and a randomly initialised
    surrogate client together, alternating ``input_steps`` on the beats (activation mismatch plus
    a TV prior, projected onto the bounds) with ``model_steps`` on the surrogate (mismatch only).

    Shape:
        victims (N, C, L) -> (N, 1, 128).

    Notes:
        All victims share one surrogate (they went through one client), which constrains it more
        than a single beat would. No auxiliary data is used.
    """

    citation = ("Erdogan, Küpçü & Çiçek, UnSplit: Data-Oblivious Model Inversion, Model Stealing, "
                "and Label Inference Attacks Against Split Learning, WPES 2022")
    Config = UnsplitConfig
    uses = ("depth", "defenses")
    requires = ("depth",)

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: UnsplitConfig = self.config  # type: ignore[assignment]
        torch.manual_seed(cfg.seed)
        device = self.device
        surrogate = knowledge.client().to(device)  # initialised on the host: the same weights
        acts = acts.to(device)
        x = start_beats(len(acts), beat_length, cfg, device)
        opt_x = torch.optim.Adam([x], lr=cfg.lr)
        opt_m = torch.optim.Adam(surrogate.parameters(), lr=cfg.model_lr)
        for _ in range(cfg.rounds):
            surrogate.requires_grad_(False)
            for _ in range(cfg.input_steps):
                loss = activation_loss(surrogate, x, acts, cfg.tv)
                opt_x.zero_grad(set_to_none=True)
                loss.backward()
                opt_x.step()
                with torch.no_grad():
                    clamp_(x, cfg.lower, cfg.upper)
            surrogate.requires_grad_(True)
            xd = x.detach()
            for _ in range(cfg.model_steps):
                loss = ((surrogate(xd) - acts) ** 2).mean()
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
        with torch.no_grad():
            self.final_mismatch = float(((surrogate(x) - acts) ** 2).mean())
        return x.detach().cpu()

    def notes(self, knowledge):
        return [f"final activation mismatch of the surrogate (MSE): {self.final_mismatch:.3g}"]
