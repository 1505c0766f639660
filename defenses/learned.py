"""What the learned defenses at the cut share (``mid``, ``ressfl``, ``shredder``, and the noise
stream of ``mixup``): a noise stream reseeded for every (epoch, phase), and a module of the
client's that the defense trains with its own optimizer and keeps in the run's checkpoint.

A learned module is built at the first activations it sees (their shape (C, L) is the cut's),
initialised from a seed of its own (the global torch RNG, which draws the run's batches, is left
untouched), and stepped with Adam at the learning rate of its config. Its step is taken when the
next training batch begins (its gradient is the one the client's backward left on it) and at the
end of every epoch, so it moves exactly as if the client's optimizer stepped it with the client's
layers, without needing that optimizer: the defense stacks (each run's instance trains its own
module on its run's slice). Its state (the module, its optimizer and shape) is the defense's
checkpointed state, so a killed-and-resumed run equals an unkilled one, and an attack that
rebuilds the client from the run directory loads it (``learned``: ``attacks.runs.run_defenses``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from defenses.accounting import stream_seed
from splitpriv.defense import ClientView, Defense


def check_strength(name: str, **values: float) -> None:
    """One-line errors for parameters that must be finite and >= 0."""
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"defense {name!r}: {key} must be finite and >= 0, got {v}")


def check_positive(name: str, **values: float) -> None:
    """One-line errors for parameters that must be finite and > 0."""
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"defense {name!r}: {key} must be finite and > 0, got {v}")


class NoiseStream:
    """The defense's secret randomness: a generator reseeded for every (epoch, phase) that
    ``begin_phase`` announces, from the defense's ``seed`` (None: torch's initial seed when the
    defense is attached, the run's seed), so a resumed run draws what an uninterrupted one
    would. Draws are made on the CPU (the same numbers on every device)."""

    def __init__(self, name: str, seed: int | None) -> None:
        self.name, self.seed = name, seed
        self.key: tuple[int, str] = (0, "train")
        self._torch: torch.Generator | None = None
        self._numpy: np.random.Generator | None = None

    def fix_seed(self) -> None:
        """Take the run's seed now (``attach``: a stacked trainer sets each run's there)."""
        if self.seed is None:
            self.seed = torch.initial_seed()

    def begin(self, epoch: int, phase: str) -> None:
        self.key = (epoch, phase)
        self._torch = self._numpy = None

    def _seed(self) -> int:
        base = self.seed if self.seed is not None else torch.initial_seed()
        return stream_seed(base, self.name, *self.key)

    def torch_generator(self) -> torch.Generator:
        if self._torch is None:
            self._torch = torch.Generator().manual_seed(self._seed())
        return self._torch

    def numpy_generator(self) -> np.random.Generator:
        if self._numpy is None:
            self._numpy = np.random.default_rng(self._seed())
        return self._numpy

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``like``'s shape, dtype and device."""
        noise = torch.randn(like.shape, generator=self.torch_generator(), dtype=like.dtype)
        return noise.to(like.device)

    def laplace(self, like: torch.Tensor) -> torch.Tensor:
        """Unit Laplace noise (density e^-|n| / 2) of ``like``'s shape, dtype and device."""
        u = torch.rand(like.shape, generator=self.torch_generator(), dtype=torch.float64) - 0.5
        n = -u.sign() * torch.log1p(-2 * u.abs())
        return n.to(like.dtype).to(like.device)


class LearnedDefense(Defense):
    """Base of a defense that trains a module of its own on the client (see the module
    docstring). Subclasses give :meth:`build` (the module for activations of shape (C, L)) and
    say whether it is active (:meth:`active`: an inactive one, strength 0, builds nothing and
    draws nothing: it trains exactly as no defense)."""

    stateful = True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.stream = NoiseStream(self.name, getattr(config, "seed", None))
        self.module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.shape: tuple[int, ...] | None = None
        self._term: torch.Tensor | None = None
        self._sum, self._batches = 0.0, 0
        #: the mean of the training batches' logged term (:meth:`log`) in every epoch
        self.epoch_means: list[float] = []

    @classmethod
    def stacks(cls, config: Any) -> bool:
        """Whether K runs can train stacked: yes, each run's instance trains its own module on
        its run's slice with its own optimizer."""
        return True

    def active(self) -> bool:
        raise NotImplementedError

    def attach(self, client: ClientView) -> None:
        self.stream.fix_seed()

    def build(self, shape: tuple[int, ...]) -> nn.Module:
        """The module for activations (B, *shape)."""
        raise NotImplementedError

    def module_for(self, a: torch.Tensor, *, training: bool = False) -> Any:
        """The module for the activations ``a``, after its pending step for a training batch."""
        if training:
            self.step()
        return self.ensure(a)

    def hold(self, term: torch.Tensor) -> None:
        """Keep the batch's loss term, computed with its release, for :meth:`client_loss`."""
        self._term = term

    def take(self) -> torch.Tensor | None:
        """The term :meth:`hold` kept for this batch (None: none), logged."""
        term, self._term = self._term, None
        if term is not None:
            self.log(float(term.detach()))
        return term

    def log(self, value: float) -> None:
        """Add a training batch's value to the epoch's mean (``epoch_means``)."""
        self._sum += value
        self._batches += 1

    def ensure(self, a: torch.Tensor) -> nn.Module:
        """The module, built for the activations ``a`` (B, C, L) when first needed: initialised
        from the defense's own seed (the global RNG untouched), on ``a``'s device and dtype."""
        if self.module is None:
            self._make(tuple(a.shape[1:]))
        assert self.module is not None
        first = next(self.module.parameters())
        if (first.device, first.dtype) != (a.device, a.dtype):  # (an audit maps in float64)
            self.module.to(device=a.device, dtype=a.dtype)
            if self.optimizer is not None:  # its state (a resumed run's) follows the module
                self.optimizer.load_state_dict(self.optimizer.state_dict())
        return self.module

    def _make(self, shape: tuple[int, ...]) -> None:
        base = self.stream.seed if self.stream.seed is not None else torch.initial_seed()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(base, self.name, "init"))
            self.module = self.build(shape)
        self.shape = shape
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.config.lr)

    def step(self) -> None:
        """The module's pending step: its gradient from the last backward, if any."""
        if self.optimizer is None or self.module is None:
            return
        if any(p.grad is not None for p in self.module.parameters()):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def begin_phase(self, epoch: int, phase: str) -> None:
        self.step()
        self.stream.begin(epoch, phase)

    def end_epoch(self, epoch: int) -> None:
        self.step()
        if self._batches:
            self.epoch_means.append(self._sum / self._batches)
        self._sum, self._batches = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        if self.module is None or self.optimizer is None:
            return {}
        return {"shape": list(self.shape or ()), "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self._make(tuple(state["shape"]))
        assert self.module is not None and self.optimizer is not None
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def functional(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` with its parameters detached: a loss through it trains what feeds it, never
    the module itself (the client's term against a simulated attacker)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    return lambda t: torch.func.functional_call(module, params, (t,))


__all__ = ["LearnedDefense", "NoiseStream", "check_positive", "check_strength", "functional"]
