"""White-box inversion: optimise the input to reproduce the activations through the known client."""

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
class WhiteboxConfig(OptimConfig):
    """Attributes:
        steps: Adam steps on the beats.
    """

    steps: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError("steps must be >= 1")


@register("whitebox")
class WhiteboxInversion(InversionAttack):
    """The regularised maximum-likelihood attack of He, Zhang & Lee, "Model Inversion Attacks
    against Collaborative Inference", ACSAC 2019 (white box): with the client's weights known,
    find x minimising ||f(x) - a||^2 / n + tv * TV(x) for each victim's activations a, by Adam
    from a constant beat, projected onto the known bounds after every step.

    Shape:
        victims (N, C, L) -> (N, 1, 128).

    Notes:
        Uses the weights it is given (a run's final ones); activations recorded during a training
        epoch were made by weights that changed within that epoch, so the test-phase transcript of
        the last epoch matches them exactly. A defense that adds noise is not modelled: the
        attacker matches the noisy activations.
    """

    citation = ("He, Zhang & Lee, Model Inversion Attacks against Collaborative Inference, "
                "ACSAC 2019")
    Config = WhiteboxConfig
    uses = ("client_state", "depth", "defenses")
    requires = ("client_state", "depth")

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: WhiteboxConfig = self.config  # type: ignore[assignment]
        device = self.device
        net = client_from_state(knowledge).to(device)
        acts = acts.to(device)
        x = start_beats(len(acts), beat_length, cfg, device)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = activation_loss(net, x, acts, cfg.tv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                clamp_(x, cfg.lower, cfg.upper)
        return x.detach().cpu()


def client_from_state(knowledge) -> torch.nn.Module:
    """A frozen client of the known architecture holding the known weights."""
    net = knowledge.client()
    net.load_state_dict(knowledge.client_state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
