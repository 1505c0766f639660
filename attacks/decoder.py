"""Black-box inversion: a decoder network trained on auxiliary beats and their activations."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.base import Knowledge
from attacks.fitting import REFIT_LR, fit_regression
from attacks.inversion import (
    InversionAttack,
    InversionConfig,
    aux_activations,
    aux_pairs,
    mean_beat_mse,
)
from attacks.registry import register
from attacks.shapes import decoder_shapes


def parse_grid(text: str, name: str) -> tuple[float, ...]:
    """A comma-separated grid of numbers (``"0.001,0.003"``) as a tuple of floats."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must hold at least one number")
    return values


STACK_GRID = ("auto", "on", "off")


@dataclass
class DecoderConfig(InversionConfig):
    """Attributes:
        epochs: at most this many training epochs on the aux pairs (held-out early stopping).
        patience: stop after this many epochs without a better held-out MSE.
        batch_size: its minibatch.
        lrs: Adam learning rates of the tuning grid (comma-separated).
        weight_decays: AdamW weight decays of the tuning grid (comma-separated). The default
            tries none: the former grid point 1e-4 shrinks the weights by lr x 1e-4 per step,
            about 1e-4 in all over a study's decoder training, and its held-out MSE matched
            the unregularised decoder's to within 5% (run-to-run noise) on every one of six
            runs measured (undefended, NoPeek, paper DP, DP-SGD, depth 8, formal DP), so it
            doubled the decoder's cost for nothing.
        width: channels of its hidden layers.
        refit_epochs: epochs of the chosen decoder on every aux beat when it is refitted after
            a choice (``strongest``: :meth:`~attacks.inversion.InversionAttack.refit`), from its
            tuned weights.
        stack_grid: train the grid's decoders together as one network of grouped convolutions
            (:class:`StackedInverseNets`: every grid point starts from the same weights and sees
            the same minibatches, so one forward pass serves all) instead of one after another;
            ``auto``: together on CUDA, where the small kernels are launch-bound, one after
            another on the CPU, where they are compute-bound and grouped convolutions measured
            slower. The same decoders up to float rounding (``on`` / ``off`` force it). Only
            the 1D decoder of one output channel (MIT-BIH's) stacks; others train one after
            another.
    """

    epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    lrs: str = "0.001,0.003"
    weight_decays: str = "0"
    width: int = 64
    refit_epochs: int = 5
    stack_grid: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.epochs, self.patience, self.batch_size, self.width) < 1:
            raise ValueError("epochs, patience, batch_size and width must be >= 1")
        if self.stack_grid not in STACK_GRID:
            raise ValueError(f"stack_grid must be one of {STACK_GRID}, got {self.stack_grid!r}")
        if min(parse_grid(self.lrs, "lrs")) <= 0 or min(parse_grid(self.weight_decays,
                                                                   "weight_decays")) < 0:
            raise ValueError("lrs must be > 0 and weight_decays >= 0")

    def grid(self) -> list[tuple[float, float]]:
        """(lr, weight_decay) pairs tried."""
        return list(itertools.product(parse_grid(self.lrs, "lrs"),
                                      parse_grid(self.weight_decays, "weight_decays")))


def stackable(cut: tuple[int, ...], out: tuple[int, ...]) -> bool:
    """Whether decoders of these shapes can train as one :class:`StackedInverseNets`: the 1D
    convolutional decoder of one output channel (MIT-BIH's)."""
    return len(out) == 2 and out[0] == 1 and math.prod(cut[1:]) > 1


class InverseNet(nn.Module):
    """Activations (B, C, L) -> beats (B, 1, out_len): convolutions and two nearest upsamplings,
    the mirror image of the client (inputs standardised per channel with the aux statistics),
    added to the aux mean beat (a residual parameterisation: the last layer starts at zero, so the
    untrained decoder outputs the mean beat).

    Built for the input's shape (``cut`` and ``out``: :func:`decoder_shapes`): on MIT-BIH's
    one-lead beats a 1D decoder of one output channel; on C leads (C, L) the same with C output
    channels; on images (C, H, W) its 2D counterpart (3 x 3 kernels) from a 2D cut; from a cut
    without spatial extent (a dense cut (D,) seen as (D, 1)) a fully connected head (two linear
    layers onto a map of the input's size) before the last two convolutions, since convolving
    over the cut means nothing there. The output is flattened as the attacks see inputs.

    Shape:
        (B, C, prod(cut spatial)) -> (B, 1, prod(out)).
    """

    mean: torch.Tensor  # (1, C, 1) buffers: the aux activations' standardisation
    std: torch.Tensor
    mean_beat: torch.Tensor  # (1, 1, out_len)
    layers: nn.Sequential

    def __init__(self, channels: int, length: int, out_len: int, width: int = 64, *,
                 cut: tuple[int, ...] | None = None, out: tuple[int, ...] | None = None
                 ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("std", torch.ones(1, channels, 1))
        self.register_buffer("mean_beat", torch.zeros(1, 1, out_len))
        self.cut, self.out = cut or (channels, length), out or (1, out_len)
        dims, spatial = len(self.out) - 1, self.out[1:]
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        k = (3, 5, 5, 7) if dims == 1 else (3, 3, 3, 3)
        self.dense = math.prod(self.cut[1:]) == 1
        if self.dense:
            head: list[nn.Module] = [
                nn.Flatten(), nn.Linear(channels, 4 * width), nn.LeakyReLU(),
                nn.Linear(4 * width, width // 2 * math.prod(spatial)), nn.LeakyReLU(),
                nn.Unflatten(1, (width // 2, *spatial))]
        else:
            mid = tuple(max(a, b // 2) for a, b in zip(self.cut[1:], spatial, strict=True))
            head = [conv(channels, width, k[0], padding=k[0] // 2), nn.LeakyReLU(),
                    nn.Upsample(size=mid if dims > 1 else mid[0]),
                    conv(width, width // 2, k[1], padding=k[1] // 2), nn.LeakyReLU(),
                    nn.Upsample(size=spatial if dims > 1 else spatial[0])]
            self.mid = mid[0] if dims == 1 else mid  # the two upsamplings' sizes
        self.out_len = out_len
        self.layers = nn.Sequential(
            *head, conv(width // 2, width // 4, k[2], padding=k[2] // 2), nn.LeakyReLU(),
            conv(width // 4, self.out[0], k[3], padding=k[3] // 2))
        last = self.layers[-1]
        assert isinstance(last, (nn.Conv1d, nn.Conv2d)) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # (B, C, L) -> (B, C, *cut spatial) -> (B, C_in, *input spatial) -> (B, 1, out_len)
        h = ((a - self.mean) / self.std).reshape(len(a), *self.cut)
        return self.mean_beat + self.layers(h).reshape(len(a), 1, self.out_len)


@torch.no_grad()
def decode(net: nn.Module, acts: torch.Tensor) -> torch.Tensor:
    """``net`` applied to ``acts`` in chunks on the net's device; the result on ``acts``'s."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net(chunk.to(device)).to(acts.device) for chunk in acts.split(4096)])


def new_decoder(a_fit: torch.Tensor, x_fit: torch.Tensor, cfg: DecoderConfig,
                knowledge: Knowledge | None = None) -> InverseNet:
    """An untrained decoder (from torch's global generator) standardising with the fit part's
    statistics and starting at its mean beat; built for the input's and the cut's shapes where
    ``knowledge`` gives them (:func:`decoder_shapes`), else 1D over the attacks' view."""
    cut, out = decoder_shapes(a_fit.shape[1:], x_fit.shape[-1], *(
        (knowledge.input_shape, knowledge.cut_shape) if knowledge is not None else ()))
    net = InverseNet(a_fit.shape[1], a_fit.shape[2], x_fit.shape[-1], cfg.width, cut=cut,
                     out=out)
    with torch.no_grad():
        net.mean.copy_(a_fit.mean((0, 2), keepdim=True))
        net.std.copy_(a_fit.std((0, 2), keepdim=True).clamp(min=1e-6))
        net.mean_beat.copy_(x_fit.mean(0, keepdim=True))
    return net


def train_decoder(a_fit: torch.Tensor, x_fit: torch.Tensor, a_held: torch.Tensor,
                  x_held: torch.Tensor, cfg: DecoderConfig, lr: float, weight_decay: float,
                  device: torch.device | str = "cpu", net: nn.Module | None = None,
                  knowledge: Knowledge | None = None) -> tuple[nn.Module, float, int]:
    """A decoder trained on (a_fit, x_fit) with held-out early stopping: the weights of the epoch
    (0 = untrained, the mean beat) with the lowest MSE on (a_held, x_held). Returns the net (on
    ``device``), that MSE and that epoch. ``net``: another untrained decoder (activations ->
    beats) than :func:`new_decoder`'s (built for ``knowledge``'s shapes); ``cfg`` gives its
    epochs, patience, batch size and seed.

    Shape:
        a_fit: (M, C, L), x_fit: (M, 1, 128), a_held: (H, C, L), x_held: (H, 1, 128).
    """
    net = net if net is not None else new_decoder(a_fit, x_fit, cfg, knowledge)
    best, best_epoch = fit_regression(
        net, a_fit, x_fit, a_held, x_held, epochs=cfg.epochs, patience=cfg.patience,
        batch_size=cfg.batch_size, lr=lr, weight_decay=weight_decay, seed=cfg.seed,
        device=device)
    return net, best, best_epoch


def refit_decoder(attack: DecoderInversion, acts: torch.Tensor, knowledge: Knowledge,
                  transcript: Any) -> torch.Tensor:
    """The victims' reconstruction (N, 1, 128) by ``attack``'s decoder (``attack.net``, tuned by
    its last :meth:`reconstruct`) trained ``refit_epochs`` more on every aux beat of
    ``knowledge`` at :data:`~attacks.fitting.REFIT_LR` times its chosen learning rate."""
    cfg = attack.config
    net = copy.deepcopy(attack.net)
    a_aux = aux_activations(attack, transcript, knowledge, like=acts)
    x_aux = knowledge.aux.x.float()  # type: ignore[union-attr]
    fit_regression(net, a_aux, x_aux, a_aux[:0], x_aux[:0], epochs=cfg.refit_epochs,  # type: ignore[attr-defined]
                   patience=1, batch_size=cfg.batch_size,  # type: ignore[attr-defined]
                   lr=REFIT_LR * attack.tuning["chosen"]["lr"], seed=cfg.seed,
                   device=attack.device)
    return decode(net, acts.cpu()).cpu()


class StackedInverseNets(nn.Module):
    """G :class:`InverseNet` s of one architecture and one standardisation as one network: each
    convolution of the G members is one grouped convolution (member g's channels are group g),
    the members' weights kept as their own parameters (concatenated at every forward pass, so
    that each member keeps its own optimiser settings and its gradients only its own loss).

    Shape:
        (B, C, L) -> (B, G, out_len): member g's output is ``[:, g]``.
    """

    CONVS = (0, 3, 6, 8)  # the convolutions of ``InverseNet.layers``

    def __init__(self, members: list[InverseNet]) -> None:
        super().__init__()
        first = members[0]
        for m in members[1:]:
            if not all(torch.equal(getattr(m, b), getattr(first, b))
                       for b in ("mean", "std", "mean_beat")):
                raise ValueError("stacked decoders must share their standardisation")
        self.members = nn.ModuleList(members)
        self.nets = list(members)  # the same modules, typed
        self.first = first
        self.mid, self.out_len = first.mid, first.out_len

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        first, g = self.first, len(self.members)
        h = ((a - first.mean) / first.std).repeat(1, g, 1)  # (B, G*C, L)
        convs = [[m.layers[layer] for m in self.nets] for layer in self.CONVS]
        for i, members in enumerate(convs):
            conv = members[0]
            assert isinstance(conv, nn.Conv1d)
            w = torch.cat([c.weight for c in members])  # type: ignore[misc]
            b = torch.cat([c.bias for c in members])  # type: ignore[misc]
            h = nn.functional.conv1d(h, w, b, padding=conv.padding, groups=g)
            if i < 3:
                h = nn.functional.leaky_relu(h)
            if i == 0:
                h = nn.functional.interpolate(h, size=self.mid)
            elif i == 1:
                h = nn.functional.interpolate(h, size=self.out_len)
        return first.mean_beat + h  # (1, 1, out_len) + (B, G, out_len)


def train_decoders(a_fit: torch.Tensor, x_fit: torch.Tensor, a_held: torch.Tensor,
                   x_held: torch.Tensor, cfg: DecoderConfig, grid: list[tuple[float, float]],
                   device: torch.device | str = "cpu") -> list[tuple[InverseNet, float, int]]:
    """:func:`train_decoder` for every (lr, weight decay) of ``grid``, trained together.

    Sequentially, every grid point starts from the same weights (torch's generator seeded with
    ``cfg.seed``) and draws the same minibatches (its own generator, the same seed); here one
    :class:`StackedInverseNets` of the grid's members is trained on those minibatches, the loss
    the sum of the members' own MSEs (each member's gradient is its own), one AdamW parameter
    group per member. Each member keeps its own held-out early stopping: its best epoch's
    weights, and it is frozen once its patience runs out; training stops when every member has
    stopped. Returns (net, held-out MSE, epoch) per grid point, in grid order: the decoders of
    :func:`train_decoder` up to float rounding.
    """
    members = []
    for _ in grid:
        torch.manual_seed(cfg.seed)
        members.append(new_decoder(a_fit, x_fit, cfg))
    stacked = StackedInverseNets(members).to(device)
    a_fit, x_fit, a_held, x_held = (t.to(device) for t in (a_fit, x_fit, a_held, x_held))
    opt = torch.optim.AdamW([{"params": list(m.parameters()), "lr": lr, "weight_decay": wd}
                             for m, (lr, wd) in zip(stacked.members, grid, strict=True)])
    gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def held_mse() -> list[float]:
        stacked.eval()
        out = torch.cat([stacked(chunk) for chunk in a_held.split(4096)])  # (H, G, out_len)
        return ((out - x_held) ** 2).mean((0, 2)).tolist()

    best = held_mse()
    best_epoch = [0] * len(grid)
    best_state = [copy.deepcopy(m.state_dict()) for m in stacked.members]
    active = [True] * len(grid)
    for epoch in range(1, cfg.epochs + 1):
        stacked.train()
        for idx in torch.randperm(len(a_fit), generator=gen).split(cfg.batch_size):
            idx = idx.to(device)
            out = stacked(a_fit[idx])  # (B, G, out_len)
            loss = ((out - x_fit[idx]) ** 2).mean((0, 2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for m, on in zip(stacked.members, active, strict=True):
                if not on:  # stopped: AdamW skips parameters without a gradient
                    for p in m.parameters():
                        p.grad = None
            opt.step()
        mse = held_mse()
        for g, m in enumerate(stacked.members):
            if not active[g]:
                continue
            if mse[g] < best[g]:
                best[g], best_epoch[g], best_state[g] = mse[g], epoch, copy.deepcopy(
                    m.state_dict())
            elif epoch - best_epoch[g] >= cfg.patience:
                active[g] = False
        if not any(active):
            break
    out = []
    for g, m in enumerate(stacked.members):
        m.load_state_dict(best_state[g])
        out.append((m, best[g], best_epoch[g]))
    return out


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
    Config: ClassVar[type[InversionConfig]] = DecoderConfig
    uses = ("aux", "defenses")
    requires = ("aux",)

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"epochs": budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: DecoderConfig = self.config  # type: ignore[assignment]
        assert knowledge.aux is not None
        a_aux, x_aux, fit, held = aux_pairs(self, acts, knowledge, transcript)
        self.tuning = {"heldout_beats": len(held),
                       "heldout_mse_mean_beat": mean_beat_mse(x_aux, fit, held), "grid": []}
        grid, device = cfg.grid(), self.device
        parts = (a_aux[fit], x_aux[fit], a_aux[held], x_aux[held])
        cut, out = decoder_shapes(a_aux.shape[1:], x_aux.shape[-1], knowledge.input_shape,
                                  knowledge.cut_shape)
        self.tuning["shapes"] = {"cut": list(cut), "input": list(out)}  # what it is built for
        stack = len(grid) > 1 and stackable(cut, out) and (
            cfg.stack_grid == "on" or (cfg.stack_grid == "auto" and device.type == "cuda"))
        if stack:
            trained = train_decoders(*parts, cfg, grid, device)
        else:
            trained = []
            for lr, wd in grid:
                torch.manual_seed(cfg.seed)
                trained.append(train_decoder(*parts, cfg, lr, wd, device, knowledge=knowledge))
        best = None
        for (lr, wd), (net, mse, epoch) in zip(grid, trained, strict=True):
            self.tuning["grid"].append({"lr": lr, "weight_decay": wd, "heldout_mse": mse,
                                        "best_epoch": epoch})
            if best is None or mse < best[1]:
                best = (net, mse, lr, wd, epoch)
        net, mse, lr, wd, epoch = best
        self.net = net
        self.tuning |= {"chosen": {"lr": lr, "weight_decay": wd, "best_epoch": epoch},
                        "heldout_mse": mse, "grid_trained": "together" if stack
                        else "one after another"}
        return decode(net, acts.cpu()).cpu()

    def refit(self, acts, knowledge, transcript, *, beat_length):
        return refit_decoder(self, acts, knowledge, transcript)

    def notes(self, knowledge: Knowledge) -> list[str]:
        t = self.tuning
        return [f"decoder tuned on {t['heldout_beats']} held-out aux beats: lr "
                f"{t['chosen']['lr']:g}, weight decay {t['chosen']['weight_decay']:g}, epoch "
                f"{t['chosen']['best_epoch']}; held-out MSE {t['heldout_mse']:.3g} (mean beat "
                f"{t['heldout_mse_mean_beat']:.3g})"]

