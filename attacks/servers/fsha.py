"""Feature-space hijacking: a malicious server that steers the client into its own feature space.

Pasquini, Ateniese & Bernaschi, "Unleashing the Tiger: Inference Attacks on Split Learning", CCS
2021 (arXiv 2012.02670). The server holds public beats of the same domain (``aux``) and trains
three networks of its own:

* a pilot encoder f~ (beats -> the cut's shape) and its inverse, the decoder f~^-1, as an
  autoencoder on the public beats: min ||f~^-1(f~(x_pub)) - x_pub||^2;
* a critic D (a WGAN-GP discriminator, Gulrajani et al. 2017, as in the paper) that tells the
  client's activations a = f(x_priv) from the pilot's f~(x_pub):
  min D(f~(x_pub)) - D(a) + gp_weight * (||grad D(a^)|| - 1)^2 on interpolates a^.

Instead of the task gradient it returns to the client d mean D(a) / d a: descending it makes the
client's layers f map private beats where the pilot maps public ones, so that f~^-1(a) inverts
the client. The server's own task network still trains on what it receives (its loss is
honest); the client's task accuracy collapses because its layers no longer learn the task.

Every ``record_every`` training steps (and at step 1) the decoder's reconstructions of the batch
that crossed are handed to the run's ``record`` sink (its ``scorer``,
``attacks.servers.scoring.ReconstructionLog``), which scores them against the true beats: the
behaviour itself never sees a client input.

Shape:
    received a: (B, C, L) (any client depth or bottleneck: the pilot is built from the first
    activations received); public beats (M, 1, 128); returned gradient (B, C, L). Other inputs
    and cuts: the nets are built for their shapes (:func:`fsha_shapes`: 2D nets for images (B,
    C_in, H, W) and 2D cuts, C_in output channels for C leads); the log scores the
    reconstructions flattened (``attacks.shapes``).

Notes:
    The public beats are pool beats the run uses nowhere (``splitpriv.run.behaviour_aux``):
    same domain and patients, disjoint from the client's beats, the paper's threat model.
    ``aux=public:0.1`` sizes them like the honest attacks' ``--aux own:0.1`` (a tenth of the
    training rows); ``aux=records:R1;R2`` takes the unused beats of those records
    (:class:`splitpriv.aux.AuxSpec`). The
    adversary's networks, their optimizers, its step count and its generator are checkpointed
    with the run (:meth:`FeatureSpaceHijacking.state_dict`, as is the run's log of its
    reconstructions): a killed-and-resumed run goes on as an uninterrupted one. It works in the
    vanilla and U-shaped topologies alike (it ignores the labels).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attacks.servers.scoring import ReconstructionLog
from attacks.shapes import as_signal, decoder_shapes, numel
from splitpriv.aux import SERVER_KINDS, AuxSpec
from splitpriv.servers import AuxBeats, RecordSink, ServerBehaviour, register_server

if TYPE_CHECKING:
    from splitpriv.parties import Server

BEAT = 128


def _pools(length: int, beat: int = BEAT) -> int:
    """How many halvings take a beat (128 samples) to about ``length`` samples."""
    return max(0, round(math.log2(beat / max(1, length))))


def _layers(dims: int) -> tuple[type[nn.Module], ...]:
    """(convolution, max pool, adaptive average pool) of one or two spatial axes."""
    return ((nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d) if dims == 1
            else (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d))


def _size(shape: tuple[int, ...]) -> int | tuple[int, ...]:
    """An upsampling's or adaptive pool's size: an int on one axis (as MIT-BIH's nets were)."""
    return shape[0] if len(shape) == 1 else tuple(shape)


class Pilot(nn.Module):
    """The pilot encoder f~; with ``leaky`` its output goes through the LeakyReLU the client's
    cut ends in (``splitpriv.models``), so that its features are ones the client's layers can
    produce. Shape: (B, 1, 128) -> (B, C, L); built for the input's shape (``inputs``: (C_in,
    *spatial), one or two axes) and the cut's (``cut``: (C, *spatial), as many axes): 3 x 3
    kernels on images."""

    def __init__(self, channels: int, length: int, width: int, leaky: bool = False,
                 beat: int = BEAT, *, cut: tuple[int, ...] | None = None,
                 inputs: tuple[int, ...] | None = None) -> None:
        super().__init__()
        cut, inputs = cut or (channels, length), inputs or (1, beat)
        conv, pool, adaptive = _layers(len(inputs) - 1)
        k = (7, 5, 3) if len(inputs) == 2 else (3, 3, 3)
        layers: list[nn.Module] = [conv(inputs[0], width, k[0], padding=k[0] // 2),
                                   nn.LeakyReLU()]
        for _ in range(_pools(cut[1], inputs[1])):
            layers += [pool(2), conv(width, width, k[1], padding=k[1] // 2), nn.LeakyReLU()]
        layers += [adaptive(_size(cut[1:])), conv(width, channels, k[2], padding=k[2] // 2)]
        if leaky:
            layers.append(nn.LeakyReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """The pilot's inverse f~^-1. Shape: (B, C, L) -> (B, 1, 128); (B, C, *cut spatial) ->
    (B, *inputs) for the shapes of :class:`Pilot`."""

    def __init__(self, channels: int, length: int, width: int, beat: int = BEAT, *,
                 cut: tuple[int, ...] | None = None, inputs: tuple[int, ...] | None = None
                 ) -> None:
        super().__init__()
        cut, inputs = cut or (channels, length), inputs or (1, beat)
        conv = _layers(len(inputs) - 1)[0]
        k = (3, 5, 7) if len(inputs) == 2 else (3, 3, 3)
        layers: list[nn.Module] = [conv(channels, width, k[0], padding=k[0] // 2),
                                   nn.LeakyReLU()]
        for _ in range(_pools(cut[1], inputs[1])):
            layers += [nn.Upsample(scale_factor=2), conv(width, width, k[1], padding=k[1] // 2),
                       nn.LeakyReLU()]
        layers += [nn.Upsample(size=_size(inputs[1:])),
                   conv(width, inputs[0], k[2], padding=k[2] // 2)]
        self.layers = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.layers(a)


class Critic(nn.Module):
    """The WGAN-GP discriminator D (no normalisation layers, as the gradient penalty requires).
    Shape: (B, C, L) -> (B,); (B, C, *spatial) -> (B,) for a ``cut`` (C, *spatial) of two
    axes."""

    def __init__(self, channels: int, length: int, width: int, *,
                 cut: tuple[int, ...] | None = None) -> None:
        super().__init__()
        cut = cut or (channels, length)
        conv = _layers(len(cut) - 1)[0]
        self.layers = nn.Sequential(
            conv(channels, 2 * width, 3, padding=1), nn.LeakyReLU(0.2),
            conv(2 * width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * math.prod((n + 1) // 2 for n in cut[1:]), 1))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.layers(a).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """Gulrajani et al. 2017: mean (||d D / d a^|| - 1)^2 on random interpolates a^ of ``real``
    and ``fake``. Shape: real, fake: (B, C, *spatial) -> ()."""
    eps = torch.rand(len(real), *[1] * (real.ndim - 1), generator=generator).to(real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_()
    (grad,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def fsha_shapes(cut: tuple[int, ...], x_shape: tuple[int, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (cut, input) shapes FSHA's nets work in, for a cut (C, *spatial) or (D,) as the client
    sends it and inputs (C_in, *spatial): as they are where both have one or two spatial axes,
    as many (:func:`attacks.shapes.decoder_shapes`); else the attacks' flattened view, the cut
    (C, L) (a dense one (D, 1)) and the input (1, D_in) (``attacks.shapes``)."""
    flat = (cut[0], numel(cut[1:]))  # as the attacks see it (attacks.shapes.as_cut)
    view, inputs = decoder_shapes(flat, numel(x_shape), x_shape, cut)
    if len(view) != len(inputs):  # a dense cut of images: 1D nets over the flattened view
        inputs = (1, numel(x_shape))
    return view, inputs


@register_server("fsha")
class FeatureSpaceHijacking(ServerBehaviour):
    """FSHA (Pasquini et al., CCS 2021): returns d(adversarial loss)/d a instead of the task
    gradient, and logs the decoder's reconstructions of what crossed (module docstring).

    Shape:
        a, g: (B, C, L) -> (B, C, L).
    """

    follows_protocol = False
    stateful = True
    scorer = ReconstructionLog

    @dataclass
    class Config:
        """Parameters of ``fsha``.

        Attributes:
            aux: the public beats (``public:F``, ``public:N`` or ``records:R1;R2``: see the module
                notes; ``;`` separates records inside a ``--server`` spec).
            lr_pilot: Adam learning rate of the pilot encoder and decoder.
            lr_critic: Adam learning rate of the discriminator.
            gp_weight: the WGAN-GP gradient-penalty weight (Gulrajani et al. 2017: 10; the
                paper's code uses larger ones).
            critic_steps: discriminator updates per training step (WGAN-GP's n_critic).
            width: channels of the pilot, decoder and discriminator (twice for D).
            pilot_leaky: end the pilot in the LeakyReLU the client's cut ends in (the
                adversary knows the architecture; a raw convolution's negative features are
                ones the client's layers can reach only 100-fold compressed).
            pilot_warmup: autoencoder steps on public batches before the first gradient is
                returned (the adversary holds its public beats before training starts).
            record_every: log reconstructions every N training steps (and at step 1).
            seed: seeds the adversary's networks and its draws of public batches.

        Tuning (the adversary's side only: a simulated client trained from scratch on pool
        beats that no run uses, with another such set as its public beats, the sizes of the
        malicious-server study; never a run's private beats): median Pearson r and linkage
        advantage k10 of the decoded client features of 300 simulated-client beats. At 2,700
        client and 270 public beats, 425 steps (the study's default budget), the former
        defaults of the study (``lr_critic=1e-3,critic_steps=3``, no warm-up, linear pilot
        output) reached r 0.79, advantage 0.36 (seed 0); the autoencoder itself was the
        bottleneck early on (r 0.56 through the pilot at step 50), hence ``pilot_warmup``
        (500: r 0.93 at step 425), and the raw pilot output the client cannot reach, hence
        ``pilot_leaky`` (together: r 0.98 / 0.98 / 0.97, advantage 0.89 / 0.52 / 0.58 at step
        425, seeds 0-2, passing r >= 0.9 by steps 200-250). More critic steps (5), a lower or
        higher gradient penalty (1, 100), width 16 or 64 and a 3x pilot learning rate did no
        better in 125-step trials; none reached the quality within the quick study's 87 steps
        (900 client, 90 public beats: r 0.87 / 0.64 at step 100, seeds 0 and 1).
        """

        aux: str = "public:0.1"
        lr_pilot: float = 1e-3
        lr_critic: float = 1e-3
        gp_weight: float = 10.0
        critic_steps: int = 3
        width: int = 32
        pilot_leaky: bool = True
        pilot_warmup: int = 500
        record_every: int = 25
        seed: int = 0

        def __post_init__(self) -> None:
            for name in ("lr_pilot", "lr_critic", "gp_weight"):
                v = getattr(self, name)
                if not math.isfinite(v) or v < 0 or (v == 0 and name != "gp_weight"):
                    raise ValueError(f"server 'fsha': {name} must be finite and > 0"
                                     f"{' (or 0)' if name == 'gp_weight' else ''}, got {v}")
            if self.pilot_warmup < 0:
                raise ValueError(f"server 'fsha': pilot_warmup must be >= 0, "
                                 f"got {self.pilot_warmup}")
            for name in ("critic_steps", "width", "record_every"):
                if getattr(self, name) < 1:
                    raise ValueError(f"server 'fsha': {name} must be >= 1, "
                                     f"got {getattr(self, name)}")
            AuxSpec.parse(self.aux, "server 'fsha': aux", SERVER_KINDS)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.aux: AuxBeats | None = None
        self.record: RecordSink | None = None
        self.nets: nn.ModuleDict | None = None
        self.step = 0
        self.losses: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.device = torch.device("cpu")

    def attach(self, server: Server) -> None:
        self.device = next(server.net.parameters()).device

    def aux_spec(self) -> str | None:
        return self.config.aux

    def provide(self, *, aux: AuxBeats | None, record: RecordSink | None) -> None:
        self.aux, self.record = aux, record

    def _build(self, cut: tuple[int, ...], device: torch.device) -> nn.ModuleDict:
        """The pilot, decoder and critic for a cut (C, *spatial) as the client sends it and the
        public inputs' shape (:func:`fsha_shapes`: 2D nets for images, C_in channels for C
        leads; 128 samples of one channel for one-lead beats)."""
        self.cut = tuple(cut)
        x_shape = tuple(self.aux.x.shape[1:]) if self.aux is not None else (1, BEAT)
        self.shapes = fsha_shapes(self.cut, x_shape)
        view, inputs = self.shapes
        c, w = view[0], self.config.width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            nets = nn.ModuleDict({
                "pilot": Pilot(c, 1, w, self.config.pilot_leaky, cut=view, inputs=inputs),
                "decoder": Decoder(c, 1, w, cut=view, inputs=inputs),
                "critic": Critic(c, 1, w, cut=view)}).to(device)
        betas = (0.5, 0.9)  # the usual WGAN-GP Adam betas
        self.opt_ae = torch.optim.Adam([*nets["pilot"].parameters(),
                                        *nets["decoder"].parameters()],
                                       lr=self.config.lr_pilot, betas=betas)
        self.opt_d = torch.optim.Adam(nets["critic"].parameters(), lr=self.config.lr_critic,
                                      betas=betas)
        return nets

    def _public_batch(self, n: int) -> torch.Tensor:
        assert self.aux is not None
        rows = torch.randint(len(self.aux.x), (n,), generator=self.generator)
        return self.aux.x[rows.to(self.aux.x.device)].reshape(n, *self.shapes[1])

    def _autoencoder_step(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the pilot autoencoder on ``n`` public beats: their features (before the
        step) and the loss."""
        assert self.nets is not None
        x_pub = self._public_batch(n)
        z_pub = self.nets["pilot"](x_pub)
        ae_loss = nn.functional.mse_loss(self.nets["decoder"](z_pub), x_pub)
        self.opt_ae.zero_grad(set_to_none=True)
        ae_loss.backward()
        self.opt_ae.step()
        return z_pub, ae_loss

    def cut_gradient(self, a: torch.Tensor, g: torch.Tensor, ids: torch.Tensor, *,
                     y: torch.Tensor | None) -> torch.Tensor:
        shape = a.shape
        if self.aux is None:
            raise ValueError("server 'fsha' has no public beats: the run provides them "
                             "(splitpriv.run), a bare trainer must call provide(aux=...)")
        if self.nets is None:
            self.nets = self._build(tuple(shape[1:]), a.device)
            with torch.enable_grad():
                for _ in range(self.config.pilot_warmup):
                    self._autoencoder_step(len(a))
        a = a.reshape(len(a), *self.shapes[0])  # the cut as the nets take it
        decoder, critic = self.nets["decoder"], self.nets["critic"]
        self.step += 1
        with torch.enable_grad():
            z_pub, ae_loss = self._autoencoder_step(len(a))
            # the gradient returned: the client should look public to the current critic
            a_in = a.detach().requires_grad_()
            f_loss = critic(a_in).mean()
            (grad,) = torch.autograd.grad(f_loss, a_in)
            # the critic: public features low, the client's high
            z = z_pub.detach()
            for _ in range(self.config.critic_steps):
                d_loss = critic(z).mean() - critic(a.detach()).mean()
                if self.config.gp_weight:
                    d_loss = d_loss + self.config.gp_weight * gradient_penalty(
                        critic, a.detach(), z, self.generator)
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
        self.losses = {"autoencoder": ae_loss.item(), "critic": d_loss.item(),
                       "client_adv": f_loss.item()}
        if self.record is not None and (self.step == 1 or
                                        self.step % self.config.record_every == 0):
            with torch.no_grad():
                self.record(self.step, ids, as_signal(decoder(a.detach())))
        return grad.to(g.dtype).reshape(shape)

    def state_dict(self) -> dict[str, Any]:
        """The adversary's state for the run's checkpoint: its networks and optimizers (once
        built), its step count, last losses and generator."""
        state: dict[str, Any] = {"step": self.step, "losses": dict(self.losses),
                                 "generator": self.generator.get_state()}
        if self.nets is not None:
            state |= {"cut": list(self.cut), "nets": self.nets.state_dict(),
                      "opt_ae": self.opt_ae.state_dict(), "opt_d": self.opt_d.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the networks built at the recorded cut, on the server's
        device)."""
        self.step, self.losses = int(state["step"]), dict(state["losses"])
        self.generator.set_state(state["generator"])
        if "nets" in state:
            self.nets = self._build(tuple(state["cut"]), self.device)
            self.nets.load_state_dict(state["nets"])
            self.opt_ae.load_state_dict(state["opt_ae"])
            self.opt_d.load_state_dict(state["opt_d"])

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "follows_protocol": self.follows_protocol,
                **dataclasses.asdict(self.config), "steps": self.step,
                "aux_source": None if self.aux is None else self.aux.source,
                "last_losses": self.losses}


__all__ = ["Critic", "Decoder", "FeatureSpaceHijacking", "Pilot", "gradient_penalty"]
