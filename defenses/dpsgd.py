"""DP-SGD on the client's layers only (Abadi et al. 2016), with Opacus."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from defenses.accounting import (
    ACCOUNTANTS,
    check_noise_plan,
    gaussian_epsilon,
    gaussian_noise_multiplier,
    needs_epochs,
    planned,
    stream_seed,
)
from defenses.registry import register
from splitpriv.defense import ClientView, Defense, PrivacyClaim
from splitpriv.parties import Client

#: the batch size assumed when no run configures one (the paper's)
DEFAULT_BATCH_SIZE = 32


def _bad(msg: str) -> ValueError:
    return ValueError(f"defense 'dpsgd': {msg}")


@register("dpsgd")
class ClientDPSGD(Defense):
    """DP-SGD on the client model, with its own optimizer: per-sample gradients clipped to
    ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` on their sum.

    The client's backward starts from the gradient the server returns, ``g = d mean_i l_i / d a``,
    whose row i is ``(1/B) d l_i / d a_i`` (the server's loss is a mean and its layers act on each
    row alone). Opacus's hooks capture each layer's input in the forward pass and its backprop in
    ``a.backward(g)``; with ``loss_reduction="mean"`` they multiply the backprops by B, so
    ``p.grad_sample[i]`` is the true gradient of l_i alone, which is what is clipped. The
    optimizer is the client's Adam, wrapped by Opacus's ``DPOptimizer`` (the noisy mean gradient
    is divided by ``batch_size``).

    Notes:
        Privacy unit: one training beat (its input; its gradient contribution), add/remove
        adjacency, as Opacus accounts. Labels are not protected: they cross in the clear in the
        vanilla topology. What is private is the client's weights (and everything computed from
        them): that is what lets activation DP (``dp`` formal mode) cover the other beats'
        activations too.
        Sampling: the accountant assumes Poisson sampling at rate ``batch_size / n_train``; the
        trainer draws a shuffled partition into fixed-size batches, which Opacus's bound does not
        strictly cover (a known gap, common in practice).
        Coupling: the per-sample gradients are per-sample only if nothing couples the rows of a
        batch: a batch-level client loss (``nopeek``) is refused; a defense that ``couples_rows``
        (paper-mode ``dp`` scales its noise by a batch statistic) is flagged in the report.
        Accounting: Opacus RDP (its default orders) or PRV, one step
        per optimizer step; a resumed run counts the earlier epochs as full epochs of steps.
    """

    @dataclass
    class Config:
        """Parameters of ``dpsgd``.

        Attributes:
            noise_multiplier: noise std / max_grad_norm (0 = clipping only, no guarantee).
            target_epsilon: total epsilon over ``epochs``; calibrates the noise multiplier.
            max_grad_norm: per-sample gradient clipping bound (L2, over all client parameters).
            delta: the delta of the reported (epsilon, delta).
            epochs: epochs the budget covers (None: the run's, from ``configure``).
            batch_size: the run's batch size (sampling rate and the mean's denominator; None:
                the run's, from ``configure``, else 32).
            accountant: ``rdp`` or ``prv``.
            seed: noise seed; None = torch's initial seed when attached (the run's seed).
        """

        noise_multiplier: float | None = None
        target_epsilon: float | None = None
        max_grad_norm: float = 1.0
        delta: float = 1e-5
        epochs: int | None = None
        batch_size: int | None = None
        accountant: str = "rdp"
        seed: int | None = None

        def __post_init__(self) -> None:
            check_noise_plan(self.noise_multiplier, self.target_epsilon, self.epochs, _bad)
            if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
                raise _bad(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm}")
            if not 0 < self.delta < 1:
                raise _bad(f"delta must be in (0, 1), got {self.delta}")
            if self.batch_size is not None and self.batch_size < 1:
                raise _bad(f"batch_size must be >= 1, got {self.batch_size}")
            if self.accountant not in ACCOUNTANTS:
                raise _bad(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")

    weights_private = True
    per_beat_claim = True
    #: the optimizer that clips and noises (a subclass of Opacus's; ``dpsgd-patient``'s groups
    #: the per-sample gradients by patient first)
    optimizer_class: type[DPOptimizer] = DPOptimizer

    def __init__(self, config: Config) -> None:
        self.config = config
        self.epochs = config.epochs
        self.batch_size = config.batch_size or DEFAULT_BATCH_SIZE
        self.noise_multiplier = config.noise_multiplier
        self.optimizer: DPOptimizer | None = None
        self.module: GradSampleModule | None = None
        self._client: Client | None = None
        self.n_train = 0
        self._steps = 0
        self._step_offset = 0
        self._seen_epoch = False
        self._base_seed = 0
        self._epoch = 0  # the set-up, until begin_phase
        self._noise_epoch: int | None = None

    def configure(self, *, epochs: int | None = None, batch_size: int | None = None,
                  **_: Any) -> None:
        """The run's epochs and batch size: the plan covers them unless given in the spec (then
        they must agree). The noise is calibrated when attached (it needs the training set)."""
        c = self.config
        self.epochs = planned("epochs", c.epochs, epochs, _bad)
        self.batch_size = planned("batch_size", c.batch_size, batch_size, _bad) or self.batch_size

    def fixes_epochs(self) -> str | None:
        """The noise, calibrated to ``target_epsilon`` over the planned epochs' steps."""
        if self.config.target_epsilon is None:
            return None
        return (f"noise was calibrated to target_epsilon={self.config.target_epsilon} over its "
                "epochs")

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.batch_size / self.n_train)

    @property
    def expected_batch_size(self) -> int:
        """The denominator of the noisy mean gradient."""
        return self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def steps(self) -> int:
        return self._step_offset + self._steps

    def attach(self, client: ClientView) -> None:
        coupled = [d.name for d in client.defenses
                   if type(d).client_loss is not Defense.client_loss]
        if coupled:
            raise _bad(f"{coupled} add a batch-level client loss, so the per-sample gradients "
                       "DP-SGD clips would not be per-sample")
        assert isinstance(client, Client)  # DP-SGD never stacks: it wraps the client's model
        c = self.config
        self._client = client
        self.n_train = len(client.y)
        if c.target_epsilon is not None:
            self.noise_multiplier = gaussian_noise_multiplier(
                target_epsilon=c.target_epsilon, delta=c.delta, sample_rate=self.sample_rate,
                steps=needs_epochs(self.epochs, _bad) * self.steps_per_epoch,
                accountant=c.accountant,
            )
        device = next(client.net.parameters()).device
        generator = torch.Generator(device=device)
        self._base_seed = c.seed if c.seed is not None else torch.initial_seed()
        generator.manual_seed(stream_seed(self._base_seed, "dpsgd", None))
        self.module = GradSampleModule(client.net, batch_first=True, loss_reduction="mean")
        client.net = self.module
        self.optimizer = self.optimizer_class(
            client.optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=c.max_grad_norm,
            expected_batch_size=self.expected_batch_size, loss_reduction="mean",
            generator=generator,
        )
        self.optimizer.attach_step_hook(self._count_step)
        client.optimizer = self.optimizer

    def _count_step(self, _: DPOptimizer) -> None:
        self._steps += 1

    def begin_phase(self, epoch: int, phase: str) -> None:
        if phase == "train":
            self._epoch = epoch

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if training and len(a) > self.batch_size:
            raise _bad(f"a batch of {len(a)} rows, but batch_size={self.batch_size}; pass the "
                       "run's batch size")
        if training and self._epoch != self._noise_epoch and self.optimizer:
            # a fresh noise stream per epoch: a resumed run never replays earlier noise
            epoch = self._epoch
            self.optimizer.generator.manual_seed(stream_seed(self._base_seed, "dpsgd", epoch))
            self._noise_epoch = epoch
        return a

    def end_epoch(self, epoch: int) -> None:
        if not self._seen_epoch and epoch > 1:
            self._step_offset = (epoch - 1) * self.steps_per_epoch
        self._seen_epoch = True

    def epsilon(self) -> float:
        assert self.noise_multiplier is not None
        return gaussian_epsilon(noise_multiplier=self.noise_multiplier,
                                sample_rate=self.sample_rate, steps=self.steps,
                                delta=self.config.delta, accountant=self.config.accountant)

    def report(self) -> PrivacyClaim:
        c = self.config
        eps = self.epsilon() if self.n_train else 0.0
        details: dict[str, Any] = {
            "protects": "the client's weights",
            "noise_multiplier": self.noise_multiplier, "max_grad_norm": c.max_grad_norm,
            "sample_rate": self.sample_rate if self.n_train else None, "steps": self.steps,
        }
        if c.target_epsilon is not None:
            details["planned"] = {"target_epsilon": c.target_epsilon, "epochs": self.epochs}
        conditions = ["labels cross in the clear in the vanilla topology",
                      "accountant assumes Poisson sampling; the trainer shuffles into "
                      "fixed-size batches"]
        others = self._client.defenses if self._client is not None else []
        conditions += [f"{d.name} ({getattr(d, 'mode', '') or d.name}) scales each row's "
                       "transform by a batch statistic, coupling the rows of a batch"
                       for d in others if d.couples_rows]
        return PrivacyClaim(
            name=self.name, formal=True, mechanism="gaussian",
            privacy_unit="one training beat (add/remove); labels not protected",
            scope="client weights (and what is computed from them)",
            epsilon=eps, delta=c.delta, accountant=c.accountant,
            conditions=conditions, details=details,
        )


__all__ = ["ClientDPSGD"]
