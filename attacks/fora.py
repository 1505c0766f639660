"""FORA: a substitute client learned from public beats by matching the distribution of the
received activations, then an inversion decoder trained on the substitute's pairs.

Xu, Zhang, Chen, Li, Zhang & Yang, "A Stealthy Wrongdoer: Feature-Oriented Reconstruction Attack
against Split Learning", CVPR 2024. The server has public beats of the same domain, no pair of a
victim's beat with its release, no client weights, no labels used. It trains a substitute client
(the client's architecture, random start) on its public beats so that the distribution of its
activations matches that of the received ones: the multi-kernel MMD between minibatches
(``mmd_weight``) and a discriminator's adversarial term (``adv_weight``); a decoder
(``attacks.decoder.InverseNet``) learned on the substitute's (public beat, activation) pairs
inverts the received activations.

Shape:
    public beats x (M, 1, L); received activations (N, C, L') -> (N, 1, L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks.base import Knowledge
from attacks.inversion import InversionConfig
from attacks.registry import register
from attacks.simulator import (
    SimulatedInversion,
    SimulatorConfig,
    study_columns,
    train_simulator,
)


@dataclass
class FORAConfig(SimulatorConfig):
    """SimulatorConfig with FORA's losses: the MK-MMD (weight 1) and the discriminator's
    adversarial term (weight 0.1)."""

    adv_weight: float = 0.1
    mmd_weight: float = 1.0


@register("fora")
class FORA(SimulatedInversion):
    """FORA (Xu et al., CVPR 2024), public beats only, no labels: a substitute client matched
    in distribution to the received activations (MK-MMD and a discriminator), then a decoder
    on its public pairs.

    Shape:
        public beats (M, 1, L); received activations (N, C, L') -> (N, 1, L).
    """

    citation = ("Xu et al., A Stealthy Wrongdoer: Feature-Oriented Reconstruction Attack against "
                "Split Learning (FORA), CVPR 2024")
    Config: ClassVar[type[InversionConfig]] = FORAConfig
    default_aux = "public:0.1"
    study_columns = study_columns("fora")
    uses = ("aux", "depth")
    requires = ("aux", "depth")

    def simulator(self, x_pub, y_pub, acts, knowledge: Knowledge):
        sim = knowledge.client()
        self.losses = train_simulator(sim, x_pub, acts, self.config, device=self.device)
        return sim, lambda a: a
