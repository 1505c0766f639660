"""Max-norm: Gaussian noise on the output gradients the client head returns (U-shape)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from defenses.accounting import stream_seed
from defenses.registry import register
from splitpriv.channel import Kind
from splitpriv.defense import Defense, PrivacyClaim


def max_norm_noise_std(g: torch.Tensor) -> torch.Tensor:
    """Per-example noise sd of max-norm: sigma_i^2 = (max_j ||g_j||^2 - ||g_i||^2) / D, so that
    E ||g_i + N(0, sigma_i^2 I_D)||^2 = ||g_i||^2 + D sigma_i^2 = max_j ||g_j||^2.

    Shape:
        g: (B, D) -> (B,).
    """
    sq = (g.double() ** 2).sum(1)
    return ((sq.max() - sq).clamp(min=0) / g.shape[1]).sqrt().to(g.dtype)


class GradientNoise(Defense):
    """Base of the defenses that add noise to the output gradient the client head returns in the
    U-shaped topology (``transform_gradient`` with ``Kind.OUTPUT_GRAD``; the cut gradient the
    server returns passes unchanged). The noise comes from a generator reseeded for every
    (phase, epoch) that ``begin_phase`` announces (a resumed run draws the noise an uninterrupted
    one would). Subclasses implement :meth:`noise`."""

    topology = "ushape"

    def __init__(self, config) -> None:
        self.config = config
        self._seed: int | None = getattr(config, "seed", None)
        self._generator = torch.Generator()
        self._stream: tuple[int, str] = (0, "train")
        self._reseed()
        self.batches = 0
        self.noise_to_signal: list[float] = []  # per batch: ||noise|| / ||g|| (Frobenius)

    def _reseed(self) -> None:
        base = self._seed if self._seed is not None else torch.initial_seed()
        self._generator.manual_seed(stream_seed(base, self.name, *self._stream))

    def begin_phase(self, epoch: int, phase: str) -> None:
        self._stream = (epoch, phase)
        self._reseed()

    def normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``shape`` from this defense's stream, on ``like``'s device."""
        return torch.randn(shape, generator=self._generator, dtype=like.dtype).to(like.device)

    def noise(self, g: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The noise (B, D) added to the output gradients g (B, D) of labels y (B,)."""
        raise NotImplementedError

    def transform_gradient(self, g: torch.Tensor, *, kind: Kind, y: torch.Tensor | None = None
                           ) -> torch.Tensor:
        if kind is not Kind.OUTPUT_GRAD:
            return g
        n = self.noise(g, y)
        self.batches += 1
        self.noise_to_signal.append(float(n.norm() / g.norm().clamp(min=1e-30)))
        return g + n

    def noise_details(self) -> dict:
        ratios = sorted(self.noise_to_signal)
        return {"batches": self.batches,
                "median_noise_to_signal": ratios[len(ratios) // 2] if ratios else None}


@register("maxnorm")
class MaxNorm(GradientNoise):
    """Max-norm (Li et al., "Label Leakage and Protection in Two-party Split Learning", ICLR
    2022, Sec. 4): every example's output gradient g_i (D = 128) gets Gaussian noise
    N(0, sigma_i^2 I_D), sigma_i^2 = (max_j ||g_j||^2 - ||g_i||^2) / D over the batch
    (:func:`max_norm_noise_std`), so that every example's expected squared norm is the batch's
    largest and the norm no longer tells the rare, hard classes apart. The example with the
    largest norm gets none. A heuristic: no formal guarantee, and the direction is left intact
    (the direction attack is not addressed).

    Shape:
        output gradient (B, D) -> (B, D).

    Notes:
        U-shaped topology only (``topology = "ushape"``: naming the defense makes the run
        U-shaped); the claim is reported with no epsilon.
    """

    @dataclass
    class Config:
        """Parameters of ``maxnorm``.

        Attributes:
            scale: multiplies every sigma_i (1: the paper's; 0: no noise), finite and >= 0.
            seed: noise seed; None = torch's initial seed when set up (the run's seed).
        """

        scale: float = 1.0
        seed: int | None = None

        def __post_init__(self) -> None:
            if not (math.isfinite(self.scale) and self.scale >= 0):
                raise ValueError(f"defense 'maxnorm': scale must be finite and >= 0, "
                                 f"got {self.scale}")

    def noise(self, g: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        sd = self.config.scale * max_norm_noise_std(g)  # (B,)
        return sd[:, None] * self.normal(tuple(g.shape), g)

    def report(self) -> PrivacyClaim:
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="gaussian (max-norm heuristic)",
            privacy_unit="one beat's label", scope="output gradients the client head returns "
            "(U-shape)",
            conditions=["no formal guarantee: equalises the expected gradient norm within a "
                        "batch; the gradient's direction still carries the label"],
            details={"scale": self.config.scale, **self.noise_details()},
        )


__all__ = ["GradientNoise", "MaxNorm", "max_norm_noise_std"]
