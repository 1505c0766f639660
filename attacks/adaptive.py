"""The adaptive attacker: it knows the run's defenses and their parameters (config.json), not the
client's secret randomness, and trains its inversion on releases of a client of its own trained
with the run's recipe and defended as the run's.

1. **Shadow run.** The attacker trains a split model of its own with the run's training recipe
   (``splitpriv.run.TrainConfig``: architecture, optimiser, batch size, epochs, topology, every
   defense with its parameters) on its own beats, from its own seed: the shadow client is
   shaped by the defense as the victims' was (a learned defense's regulariser, a bottleneck, the
   clipping and noise of DP). A defense's seed in the spec is dropped: the shadow draws every
   defense's randomness itself (the run's seed is never reused). A defense that cannot be
   rebuilt this way (:attr:`splitpriv.defense.Defense.simulable` False) is refused.
2. **Alignment.** A shadow client is a different function from the victims' client (another
   start, other data), so it is moved onto it: with aux beats paired with their releases
   (``--aux train:F``), regressed onto those releases through the defenses' noiseless map
   (:meth:`~splitpriv.defense.Defense.release_map`, as ``attacks.match``); with public beats
   only (``--aux public:F``), matched in distribution to the received activations with the
   defenses' transform in the loop (``attacks.simulator``: MK-MMD and a discriminator, as FORA).
3. **Inversion.** A decoder (``attacks.decoder.InverseNet``) is trained on the aligned shadow
   client's defended releases of the attacker's beats (``draws`` releases of each, every
   defense's ``transform_activations`` applied with the attacker's randomness; plus the real
   aux pairs where it has them), early-stopped on held-out real pairs (else simulated ones), and
   applied to the victims' releases.

It is a candidate of ``strongest`` wherever the run's config is known and its defenses are
simulable, so the reported strongest attack is never weaker on the attacker's held-out beats than
this one or the non-adaptive ones.

Shape:
    aux x (M, 1, L) (with releases (M, C, L') when paired); victims (N, C, L') -> (N, 1, L).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from attacks.base import AttackInputError, Knowledge
from attacks.decoder import DecoderConfig, train_decoder
from attacks.fitting import fit_regression
from attacks.inversion import InversionConfig, aux_activations, mean_beat_mse, split_aux
from attacks.registry import register
from attacks.shapes import signal_client
from attacks.simulator import (
    SimulatedInversion,
    SimulatorConfig,
    bounded_decode,
    study_columns,
    train_simulator,
)
from splitpriv.defense import DefenseSpec


@dataclass
class AdaptiveConfig(SimulatorConfig):
    """Attributes (besides the unpaired alignment's, :class:`~attacks.simulator.SimulatorConfig`):
        shadow_epochs: the shadow run's epochs (None: the recipe's; a defense that plans its
            budget over the run's epochs, formal DP and DP-SGD, refuses another number).
        draws: defended releases drawn of each of the attacker's beats for the decoder.
        align_epochs: the paired alignment's most epochs (held-out early stopping).
    """

    adv_weight: float = 0.1
    mmd_weight: float = 1.0
    shadow_epochs: int | None = None
    draws: int = 4
    align_epochs: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.draws, self.align_epochs) < 1 or (self.shadow_epochs or 1) < 1:
            raise ValueError("draws, align_epochs and shadow_epochs must be >= 1")


def shadow_specs(specs: Sequence[DefenseSpec]) -> list[DefenseSpec]:
    """The run's defense specs with any ``seed`` option back at its default, None (the attacker
    draws its own randomness).

    Raises:
        AttackInputError: a defense that declares itself not simulable.
    """
    out = []
    for spec in specs:
        if not spec.cls.simulable:
            raise AttackInputError(f"attack 'adaptive': defense {str(spec)!r} cannot be simulated "
                                   "(its class declares simulable = False)")
        seedless = {**spec.options, "seed": None} if "seed" in spec.options else spec.options
        out.append(DefenseSpec(spec.name, seedless))
    return out


def train_shadow(recipe: Any, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None, *,
                 shape: tuple[tuple[int, ...], int], seed: int, epochs: int | None,
                 device: torch.device) -> tuple[nn.Module, list[Any]]:
    """A split model trained with ``recipe`` (its defenses without their seeds, its epochs or
    ``epochs``) on inputs x (M, 1, D) (flattened, ``attacks.shapes``), labels y (M,) from a seed
    other than the run's; ``shape``: the run's input shape (C, *spatial) and class count (the
    attacker's ``Knowledge``). Returns the shadow client's network (taking flattened inputs) and
    its defenses (attached to it)."""
    from splitpriv.defense import StopTraining
    from splitpriv.run import build_defenses, build_run_models, resolve_topology
    from splitpriv.trainer import SplitTrainer

    own_seed = recipe.seed + 1 + seed  # never the run's own seed, hence never its noise
    cfg = dataclasses.replace(recipe, seed=own_seed, defenses=shadow_specs(recipe.defenses),
                              epochs=epochs or recipe.epochs)
    input_shape, n_classes = shape
    torch.manual_seed(own_seed)
    try:
        defenses = build_defenses(cfg)
        for d in defenses:
            d.provide_classes(n_classes)
            d.provide_patients(np.zeros(len(y), dtype=int) if groups is None
                               else groups.numpy())
        models = build_run_models(cfg, resolve_topology(cfg, defenses), device, shape=shape)
        trainer = SplitTrainer(models, x.reshape(len(x), *input_shape).to(device), y.to(device),
                               lr=cfg.lr,
                               batch_size=cfg.batch_size, seed=own_seed, defenses=defenses)
        for epoch in range(1, cfg.epochs + 1):
            trainer.train_epochs(epoch)
    except StopTraining:  # a detector's alarm ends the shadow run as it ends a run
        pass
    except ValueError as exc:  # a defense refusing the shadow's plan or data
        raise AttackInputError(f"attack 'adaptive': the shadow run failed: {exc}") from None
    net = trainer.client.net
    if hasattr(net, "to_standard_module"):  # DP-SGD's opacus wrapper: the plain network, which
        net = net.to_standard_module()  # (unlike the wrapper) survives copying and refitting
    net.eval()
    return signal_client(net, input_shape), defenses


def defended(defenses: list[Any], batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activations -> the release as the client sends them in training (every defense's
    ``transform_activations``, in order, its randomness the attacker's), in the run's training
    batches of ``batch_size`` (a defense scaled by its batch, paper-mode DP's range, or bounded
    by it, DP-SGD's, sees batches as in training)."""
    def one(a: torch.Tensor) -> torch.Tensor:
        for d in defenses:
            a = d.transform_activations(a, training=True)
        return a

    def release(a: torch.Tensor) -> torch.Tensor:
        return torch.cat([one(c) for c in a.split(batch_size)])
    return release


def noiseless(defenses: list[Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The defenses' :meth:`~splitpriv.defense.Defense.release_map`, in order."""
    def apply(a: torch.Tensor) -> torch.Tensor:
        for d in defenses:
            a = d.release_map(a)
        return a
    return apply


@torch.no_grad()
def draw_releases(net: nn.Module, release: Callable[[torch.Tensor], torch.Tensor],
                  x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` defended releases (draws M, C, L) of beats x (M, 1, L), with the beats
    repeated alike."""
    dev = next(net.parameters()).device
    reps = x.repeat(draws, 1, 1)
    acts = torch.cat([release(net(c.to(dev))).cpu() for c in reps.split(4096)])
    return acts.float(), reps


@register("adaptive")
class AdaptiveInversion(SimulatedInversion):
    """The adaptive attacker, who knows the defenses and their parameters (not their
    randomness): a shadow client trained with the run's recipe and defenses on its own beats,
    aligned on them (paired: regressed onto their releases; public: matched in distribution),
    and a decoder on its defended releases.

    Shape:
        aux x (M, 1, L) (paired: with releases (M, C, L')); victims (N, C, L') -> (N, 1, L).
    """

    citation = ("Adaptive attacker (knows the defense and its parameters, not its randomness): "
                "a shadow model trained with the run's recipe; decoder of He, Zhang & Lee, "
                "ACSAC 2019")
    Config: ClassVar[type[InversionConfig]] = AdaptiveConfig
    config: AdaptiveConfig
    default_aux = "public:0.1"
    study_columns = study_columns("adaptive")
    uses = ("aux", "defenses", "recipe")
    requires = ("aux", "recipe")

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg = self.config
        x_pub, y_pub = self.public_beats(knowledge)
        aux = knowledge.aux
        assert aux is not None
        device = self.device
        net, defenses = train_shadow(knowledge.recipe, x_pub, y_pub, aux.groups,
                                     shape=(knowledge.input_shape, knowledge.n_classes),
                                     seed=cfg.seed, epochs=cfg.shadow_epochs, device=device)
        release = defended(defenses, knowledge.recipe.batch_size)
        dcfg = DecoderConfig(epochs=cfg.decoder_epochs, width=cfg.decoder_width, seed=cfg.seed,
                             device=cfg.device, holdout=cfg.holdout)
        fit, held = split_aux(len(x_pub), cfg.holdout, cfg.seed)
        self.tuning: dict[str, Any] = {"public_beats": len(x_pub), "paired": aux.paired,
                                       "defenses": [str(d) for d in knowledge.recipe.defenses]}
        if aux.paired:
            a_aux = aux_activations(self, transcript, knowledge, like=acts)
            align = copy.deepcopy(net)
            mse, epoch = fit_regression(align, x_pub[fit], a_aux[fit], x_pub[held], a_aux[held],
                                        epochs=cfg.align_epochs, patience=10,
                                        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                                        head=noiseless(defenses), device=device)
            self.tuning["alignment"] = {"heldout_activation_mse": mse, "epoch": epoch}
            a_sim, x_sim = draw_releases(align, release, x_pub[fit], cfg.draws)
            a_fit, x_fit = torch.cat([a_sim, a_aux[fit]]), torch.cat([x_sim, x_pub[fit]])
            a_held, x_held = a_aux[held], x_pub[held]
        else:
            self.tuning["alignment"] = train_simulator(net, x_pub, acts.float(), cfg,
                                                       device=device, release=release)
            a_fit, x_fit = draw_releases(net, release, x_pub[fit], cfg.draws)
            a_held, x_held = draw_releases(net, release, x_pub[held], 1)
        if a_fit.shape[1:] != acts.shape[1:]:
            raise AttackInputError(f"the shadow client releases {tuple(a_fit.shape[1:])}, the "
                                   f"victims' are {tuple(acts.shape[1:])}")
        torch.manual_seed(cfg.seed)
        self.net, mse, epoch = train_decoder(a_fit, x_fit, a_held, x_held, dcfg, lr=1e-3,
                                             weight_decay=0.0, device=device,
                                             knowledge=knowledge)
        self.tuning |= {"heldout_beats": len(held), "heldout_mse": mse, "best_epoch": epoch,
                        "heldout_mse_mean_beat": mean_beat_mse(x_pub, fit, held),
                        "simulator": self.tuning["alignment"]}
        self.x_pub = x_pub
        return bounded_decode(self.net, acts, x_pub)

    def notes(self, knowledge: Knowledge) -> list[str]:
        t = self.tuning
        how = ("regressed onto the aux pairs" if t["paired"]
               else "matched in distribution to the received activations")
        return [f"adaptive: shadow run with the recipe's defenses {t['defenses']}, its client "
                f"{how}; decoder held-out MSE {t['heldout_mse']:.3g} (mean beat "
                f"{t['heldout_mse_mean_beat']:.3g})"]
