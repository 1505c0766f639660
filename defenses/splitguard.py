"""Client-side detectors of a training-hijacking server: SplitGuard (active) and a label-gap
statistic of the cut gradients (passive).

``splitguard``: Erdogan, Kupcu & Cicek, "SplitGuard: Detecting and Mitigating Training-Hijacking
Attacks in Split Learning", WPES 2022 (arXiv 2108.09052). After ``warmup`` batches the client
sends, with probability ``p_fake``, a *fake* batch: its labels shifted by a random non-zero
offset modulo the class count (every label wrong), through ``transform_labels``; it takes no step
on the gradient returned for it (``observe_gradient`` returns None). An honest server's gradient
for wrong labels differs from the regular ones in direction and size; a hijacking server (FSHA,
Pasquini et al. 2021), whose gradient does not depend on the labels, returns the same kind. With
F the fake batches' gradients and R1, R2 a random halving of the regular ones since the warm-up,
means and mean norms over each set, CR = (R1 + R2) / 2, the paper's score is

    x = angle(F, CR) |F| - |CR|| / m  -  angle(R1, R2) ||R1| - |R2|| / m,
    m = ||F| - |CR|| + ||R1| - |R2||,        SG = sigmoid(mult * (x - shift)) ** exp,

angles in degrees; SG near 1 for an honest server and near 0 for a label-independent one. The
alarm fires when the mean of the last ``window`` scores is below ``threshold``.

``labelgap`` (passive, no fake batch, no accuracy cost; a simple documented statistic in the
spirit of Gradients Scrutinizer, Fu et al., NDSS 2023): an honest server's cut gradient of a
beat is J^T (p - onehot(y)), so the gradients of beats of one class point alike and those of
different classes apart. Per batch, the mean cosine similarity of per-beat gradients of the same
class minus that of different classes (the *label gap*); the alarm fires when its mean over the
last ``window`` batches after ``warmup`` is below ``threshold``. A hijacker's gradient, from its
discriminator, follows the activations, not the labels.

Shape:
    cut gradients (B, C, L); labels (B,).

Notes:
    SplitGuard needs labels that cross (the vanilla topology); it adapts the paper's probe,
    which read the gradient of the client's first layer, to the cut gradient the client
    receives, summed over the batch (B, C, L) -> (C * L,). The server's model does train on the
    fake labels (an honest server cannot tell them): that and the skipped client steps are
    SplitGuard's accuracy cost. Neither detector's state is checkpointed: a resumed run starts
    them afresh. ``stop=true`` raises :class:`HijackDetected` when the alarm fires (the run then
    stops, unfinished); ``stop=false`` only reports when it would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from defenses.registry import register
from splitpriv.defense import Defense, PrivacyClaim

if TYPE_CHECKING:
    from splitpriv.parties import Client


class HijackDetected(RuntimeError):
    """A detector's alarm fired with ``stop=true``: training ends here."""


def _check(name: str, **values: float) -> None:
    for key, v in values.items():
        if not math.isfinite(v):
            raise ValueError(f"defense {name!r}: {key} must be finite, got {v}")


def angle_degrees(u: torch.Tensor, v: torch.Tensor) -> float:
    """The angle between two vectors, in degrees (90 when either is zero)."""
    den = float(u.norm() * v.norm())
    if den == 0:
        return 90.0
    return math.degrees(math.acos(max(-1.0, min(1.0, float(u @ v) / den))))


class GradientSet:
    """Running sums of gradient vectors: their mean and mean norm."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.norms, self.n = 0.0, 0

    def add(self, v: torch.Tensor) -> None:
        self.total = v.clone() if self.total is None else self.total + v
        self.norms += float(v.norm())
        self.n += 1

    @property
    def mean(self) -> torch.Tensor:
        assert self.total is not None
        return self.total / self.n

    @property
    def magnitude(self) -> float:
        return self.norms / self.n


def splitguard_score(fakes: GradientSet, r1: GradientSet, r2: GradientSet, *, mult: float,
                     exp: float, shift: float = 0.0) -> float:
    """The SplitGuard score (module docstring) of fake and regular gradient sets, in [0, 1]."""
    cr = (r1.mean + r2.mean) / 2
    cr_mag = (r1.magnitude + r2.magnitude) / 2
    d_fake, d_reg = abs(fakes.magnitude - cr_mag), abs(r1.magnitude - r2.magnitude)
    m = d_fake + d_reg
    if m == 0:
        return 0.0
    x = (angle_degrees(fakes.mean, cr) * d_fake - angle_degrees(r1.mean, r2.mean) * d_reg) / m
    return float(1 / (1 + math.exp(-max(-50.0, min(50.0, mult * (x - shift)))))) ** exp


class Detector(Defense):
    """Base of the detectors: a score per probe, an alarm on the mean of the last ``window``
    scores below ``threshold`` (after the warm-up), and its report."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.batches = 0  # training batches observed
        self.scores: list[tuple[int, float]] = []  # (training batch, score)
        self.detected_at: int | None = None

    def attach(self, client: Client) -> None:
        self.labels = client.y

    def _score(self, batch: int, score: float) -> None:
        self.scores.append((batch, score))
        recent = [s for _, s in self.scores[-self.config.window:]]
        if (self.detected_at is None and len(recent) == self.config.window
                and float(np.mean(recent)) < self.config.threshold):
            self.detected_at = batch
            if self.config.stop:
                raise HijackDetected(
                    f"defense {self.name!r}: the server is hijacking training (mean score "
                    f"{np.mean(recent):.3f} < {self.config.threshold} over the last "
                    f"{self.config.window} probes, training batch {batch}); stopping")

    def report(self) -> PrivacyClaim:
        return PrivacyClaim(
            name=self.name, mechanism="detector",
            scope="the cut gradients the server returns (training)",
            conditions=["detects a label-independent (hijacking) server; protects nothing by "
                        "itself unless stop=true ends training"],
            details={"config": dict(vars(self.config)), "batches": self.batches,
                     "detected": self.detected_at is not None,
                     "detected_at_batch": self.detected_at,
                     "scores": [[b, s] for b, s in self.scores]})


@register("splitguard")
class SplitGuard(Detector):
    """SplitGuard (Erdogan et al., WPES 2022): fake-label probe batches and the score of their
    returned gradients against the regular ones (module docstring).

    Shape:
        y: (B,) labels sent; g: (B, C, L) cut gradient received.
    """

    @dataclass
    class Config:
        """Parameters of ``splitguard`` (the paper's defaults where it gives them).

        Attributes:
            p_fake: probability that a training batch after the warm-up is a fake one.
            warmup: training batches before the first fake one (the paper's N = 20).
            mult, exp, shift: the score's squashing sigmoid(mult (x - shift)) ** exp (the
                paper's code: 5, 2 and a shift it sets per task; 10 degrees here, calibrated on
                the cut gradient: a hijacker's x stays at a few degrees from sampling noise
                alone, an honest server's is tens).
            threshold: the alarm fires when the mean of the last ``window`` scores is below.
            window: scores averaged for the alarm.
            stop: raise :class:`HijackDetected` (end training) when the alarm fires.
            seed: seeds which batches are fake and their label offsets.
        """

        p_fake: float = 0.1
        warmup: int = 20
        mult: float = 5.0
        exp: float = 2.0
        shift: float = 10.0
        threshold: float = 0.5
        window: int = 3
        stop: bool = False
        seed: int = 0

        def __post_init__(self) -> None:
            _check("splitguard", p_fake=self.p_fake, mult=self.mult, exp=self.exp,
                   shift=self.shift, threshold=self.threshold)
            if not 0 < self.p_fake < 1:
                raise ValueError(f"defense 'splitguard': p_fake must be in (0, 1), "
                                 f"got {self.p_fake}")
            if self.warmup < 0 or self.window < 1:
                raise ValueError("defense 'splitguard': warmup must be >= 0 and window >= 1, "
                                 f"got {self.warmup}, {self.window}")
            if self.mult <= 0 or self.exp <= 0:
                raise ValueError("defense 'splitguard': mult and exp must be > 0")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.rng = np.random.default_rng(config.seed)
        self.fakes, self.r1, self.r2 = GradientSet(), GradientSet(), GradientSet()
        self._fake = False

    def attach(self, client: Client) -> None:
        if client.ushape:
            raise ValueError("defense 'splitguard' needs the labels to cross (the vanilla "
                             "topology); use labelgap in the U-shaped one")
        super().attach(client)
        self.n_classes = max(2, int(client.y.max()) + 1)

    def transform_labels(self, y: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        self._fake = bool(self.batches > self.config.warmup
                          and self.rng.random() < self.config.p_fake)
        if not self._fake:
            return y
        shift = int(self.rng.integers(1, self.n_classes))
        return (y + shift) % self.n_classes

    def observe_gradient(self, g: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor | None:
        v = g.detach().sum(0).flatten().double().cpu()
        if self._fake:
            self._fake = False
            self.fakes.add(v)
            if self.r1.n and self.r2.n:
                self._score(self.batches, splitguard_score(self.fakes, self.r1, self.r2,
                                                           mult=self.config.mult,
                                                           exp=self.config.exp,
                                                           shift=self.config.shift))
            return None  # the client takes no step on a fake batch
        if self.batches > self.config.warmup:
            (self.r1 if self.rng.random() < 0.5 else self.r2).add(v)
        return g

    def report(self) -> PrivacyClaim:
        claim = super().report()
        claim.details["fake_batches"] = self.fakes.n
        return claim


def label_gap(g: torch.Tensor, y: torch.Tensor) -> float | None:
    """Mean cosine similarity of per-beat gradients of the same class minus that of different
    classes (None when the batch lacks either kind of pair). Shape: g (B, C, L), y (B,) -> ()."""
    u = torch.nn.functional.normalize(g.detach().flatten(1).double(), dim=1)
    cos = u @ u.T
    same = y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    within, between = same & off, ~same
    if not within.any() or not between.any():
        return None
    return float(cos[within].mean() - cos[between].mean())


@register("labelgap")
class LabelGap(Detector):
    """The passive label-gap detector of the cut gradients (module docstring): it sends nothing
    extra and changes nothing.

    Shape:
        g: (B, C, L) cut gradient received; the batch's labels (B,) are the client's own.
    """

    @dataclass
    class Config:
        """Parameters of ``labelgap``.

        Attributes:
            warmup: training batches before the alarm may fire.
            threshold: the alarm fires when the mean label gap over ``window`` batches is below.
            window: batches averaged for the alarm.
            every: score one batch in ``every`` (1: all).
            stop: raise :class:`HijackDetected` (end training) when the alarm fires.
        """

        warmup: int = 20
        threshold: float = 0.2
        window: int = 10
        every: int = 1
        stop: bool = False

        def __post_init__(self) -> None:
            _check("labelgap", threshold=self.threshold)
            if self.warmup < 0 or self.window < 1 or self.every < 1:
                raise ValueError("defense 'labelgap': warmup must be >= 0, window and every "
                                 f">= 1, got {self.warmup}, {self.window}, {self.every}")

    def observe_gradient(self, g: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor | None:
        self.batches += 1
        if self.batches % self.config.every == 0:
            gap = label_gap(g, self.labels[ids])
            if gap is not None:
                if self.batches <= self.config.warmup:
                    self.scores.append((self.batches, gap))
                else:
                    self._score(self.batches, gap)
        return g


__all__ = ["GradientSet", "HijackDetected", "LabelGap", "SplitGuard", "angle_degrees",
           "label_gap", "splitguard_score"]
