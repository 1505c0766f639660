"""SDAR: a passive server with public beats only trains a simulated client against its own model,
regularised to look like the received activations, and inverts them with a decoder.

Zhu, Yao, Xu, Ding & Luo, "Passive Inference Attacks on Split Learning via Adversarial
Regularization", NDSS 2025 (arXiv 2310.10483). The server holds its part of the model g (final
weights) and, in the vanilla topology, the labels; it never sees a victim's beat paired with its
release, nor the client's weights. It trains a simulated client f~ (the client's architecture,
random start) on its public beats so that its own model classifies them,
``CE(g(f~(x_pub)), y_pub)``, plus ``adv_weight`` (the paper's 0.02) times the adversarial term of
a discriminator telling f~'s activations from the received ones, which pulls f~'s activation
space onto the client's. A decoder (``attacks.decoder.InverseNet``) is trained on f~'s public
pairs and applied to the received activations.

U-shaped topology: the server holds the middle part g but no labels and not the client's head:
the attacker trains a simulated head h~ with f~ on its public beats' labels,
``CE(h~(g(f~(x_pub))), y_pub)`` (the paper's U-shaped variant).

Differences from the paper's code: the attack runs once after training against the server's
final g (the paper trains alongside, one step per training batch, against the current g); the
discriminator and the decoder are not conditioned on the label (they are in the paper's vanilla
code), and the decoder's own discriminator (weight 1e-5 there) is left out. Offline against the
final g, the discriminator alone did not pull f~'s activations onto the client's (it won: its
adversarial loss stayed at 4 to 13, and the victims' k = 10 linkage advantage was .06 on an
800-beat 4-epoch run, .30 to .50 on the default undefended run, r at or below the mean beat's),
so the multi-kernel MMD of FORA is added (``mmd_weight`` 1; 0 gives the paper's loss): .64 on the
small run. The reconstructions are clipped to the public beats' range (the paper's decoder ends
in a sigmoid).

Shape:
    public beats x (M, 1, L) with labels (M,); received activations (N, C, L') -> (N, 1, L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from attacks.base import AttackInputError, Knowledge
from attacks.inversion import InversionConfig
from attacks.registry import register
from attacks.simulator import (
    SimulatedInversion,
    SimulatorConfig,
    study_columns,
    train_simulator,
)


def server_model(knowledge: Knowledge) -> tuple[nn.Module, bool, int]:
    """The server's own network (its weights loaded, frozen), whether it is the U-shaped middle
    part (no head), and the classes."""
    from splitpriv.run import build_run_models

    recipe, state = knowledge.recipe, knowledge.server_state
    if recipe is None or state is None:
        raise AttackInputError("attack 'sdar' needs the server's own model (its weights and the "
                               "run's config.json)")
    needed = [spec.cls.topology for spec in recipe.defenses if spec.cls.topology]
    ushape = (needed[0] if needed else recipe.topology) == "ushape"
    models = build_run_models(recipe, "ushape" if ushape else "vanilla", torch.device("cpu"),
                              shape=(knowledge.input_shape, knowledge.n_classes))
    models.server.load_state_dict(state)
    models.server.eval().requires_grad_(False)
    last = [m for m in (models.head or models.server).modules() if isinstance(m, nn.Linear)][-1]
    return models.server, ushape, last.out_features


@dataclass
class SDARConfig(SimulatorConfig):
    """SimulatorConfig with SDAR's adversarial weight (0.02, the paper's) and the MK-MMD term
    (weight 1, not in the paper: module docstring)."""

    adv_weight: float = 0.02
    mmd_weight: float = 1.0


@register("sdar")
class SDAR(SimulatedInversion):
    """SDAR (Zhu et al., NDSS 2025), passive, public beats only: a simulated client trained
    through the server's own model (vanilla; U-shaped: with a simulated head) and pulled onto
    the received activations (a discriminator, plus the MK-MMD), then a decoder on its pairs.

    Shape:
        public beats (M, 1, L) with labels; received activations (N, C, L') -> (N, 1, L).
    """

    citation = ("Zhu, Yao, Xu, Ding & Luo, Passive Inference Attacks on Split Learning via "
                "Adversarial Regularization (SDAR), NDSS 2025")
    Config: ClassVar[type[InversionConfig]] = SDARConfig
    default_aux = "public:0.1"
    study_columns = study_columns("sdar")
    uses = ("aux", "depth", "server_state", "recipe")
    requires = ("aux", "depth", "server_state", "recipe")

    def simulator(self, x_pub, y_pub, acts, knowledge):
        g, ushape, n_classes = server_model(knowledge)
        if int(y_pub.max()) >= n_classes:
            raise AttackInputError(f"attack 'sdar': public labels up to {int(y_pub.max())}, the "
                                   f"server's model has {n_classes} classes")
        device = self.device
        g.to(device)
        sim = knowledge.client()
        head: nn.Module | None = None
        if ushape:
            from splitpriv.models import HeadNet

            head = HeadNet(n_classes=n_classes).to(device)
        y_dev = y_pub.to(device)
        cut = knowledge.cut_shape  # the server takes the cut as the client sends it

        def task(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            z = z if cut is None else z.reshape(len(z), *cut)
            out = g(z) if head is None else head(g(z))
            return F.cross_entropy(out, y_dev[rows])

        self.losses = train_simulator(sim, x_pub, acts, self.config, device=device, task=task,
                                      extra=head.parameters() if head is not None else ())
        self.topology = "ushape" if ushape else "vanilla"
        return sim, lambda a: a

    def notes(self, knowledge: Knowledge) -> list[str]:
        return [f"sdar ({self.topology}: "
                + ("a simulated head trained with the public labels" if self.topology == "ushape"
                   else "the server's model and the public labels") + ")",
                *super().notes(knowledge)]
