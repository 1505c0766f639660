"""Mixup at the cut: the client releases mixtures of its batch's activations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from defenses.learned import NoiseStream
from defenses.registry import register
from splitpriv.defense import ClientView, Defense, PrivacyClaim


@register("mixup")
class Mixup(Defense):
    """Mixup at the cut (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018;
    applied to the released activations as in SecretFlow's split-learning defenses, and to k
    samples as in InstaHide, Huang et al., ICML 2020).

    In training, the release of row i of a batch is ``sum_m lam_im a[pi_m(i)]``: its own
    activations (pi_0 the identity) mixed with those of k - 1 partners (pi_1..pi_{k-1} random
    permutations of the batch), coefficients lam_i ~ Dirichlet(alpha, ..., alpha) (for k = 2,
    lam ~ Beta(alpha, alpha)), drawn afresh per row and release from the defense's secret stream.

    Labels: mixup trains on the mixed soft label ``sum_m lam_im onehot(y[pi_m(i)])``, whose
    cross-entropy is the convex combination ``sum_m lam_im CE(out_i, y[pi_m(i)])``. Soft labels
    cannot cross the wire (labels are one integer a row, also between processes), so the client
    sends one partner's label, drawn with probability lam_im: the server's unchanged
    cross-entropy is then, in expectation over that draw, exactly mixup's loss. A soft label
    would also tell the server the coefficients; the drawn label tells it one partner's class.

    Evaluation releases are not mixed (as mixup and SecretFlow: the server must predict each
    beat): they are the client's plain activations. ``alpha = 0`` is no mixing (mixup's
    convention: lam = 1), exactly as without the defense.

    What a server that knows the mixing can undo: one batch's releases are M a, M (B, B) the
    rows' coefficients on their partners; with the partners and coefficients (the secret here)
    it solves for all B plain activations exactly wherever M is invertible (almost surely for
    continuous coefficients). Without them it sees convex mixtures whose own coefficient is
    symmetric in distribution with each partner's, so no fixed map of one beat's activations
    separates its part (:meth:`release_map` is the identity: the mixing is all secret).

    Shape:
        activations (B, C, L) -> (B, C, L); labels (B,) -> (B,).

    Adaptive attacker: the spec rebuilds the mixing with the attacker's own randomness (a shadow
    client mixing its own aux beats); it lacks the partners and coefficients of the run's
    releases. The U-shaped topology is refused (the client's head would score a mixture against
    its own row's label: not mixup).
    """

    couples_rows = True

    @dataclass
    class Config:
        """Parameters of ``mixup``.

        Attributes:
            alpha: Dirichlet (k = 2: Beta(alpha, alpha)) concentration of the coefficients
                (finite, >= 0; 0: no mixing, as without the defense).
            k: beats in every mixture (>= 2).
            seed: mixing seed; None = the run's seed.
        """

        alpha: float = 1.0
        k: int = 2
        seed: int | None = None

        def __post_init__(self) -> None:
            if not (math.isfinite(self.alpha) and self.alpha >= 0):
                raise ValueError(f"defense 'mixup': alpha must be finite and >= 0, got "
                                 f"{self.alpha}")
            if not (isinstance(self.k, int) and self.k >= 2):
                raise ValueError(f"defense 'mixup': k must be an integer >= 2, got {self.k}")

    @classmethod
    def stacks(cls, config: Config) -> bool:
        """Whether K runs can train stacked: yes, each run's instance mixes its own slice and
        its labels (B,) stay integers."""
        return True

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stream = NoiseStream(self.name, config.seed)
        self._labels_from: torch.Tensor | None = None
        self.mixed_rows = 0

    def attach(self, client: ClientView) -> None:
        self.stream.fix_seed()
        if client.ushape and self.config.alpha > 0:
            raise ValueError("defense 'mixup': the U-shaped topology is not supported (the "
                             "client's head would score mixtures against unmixed labels)")

    def begin_phase(self, epoch: int, phase: str) -> None:
        self.stream.begin(epoch, phase)

    def mixing(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a batch of b rows: partners (k, b) (row 0 the identity), coefficients (b, k) and
        the partner whose label each row sends (b,)."""
        rng, k = self.stream.numpy_generator(), self.config.k
        partners = np.stack([np.arange(b)] + [rng.permutation(b) for _ in range(k - 1)])
        lam = rng.dirichlet(np.full(k, self.config.alpha), size=b)
        drawn = (rng.random((b, 1)) > lam.cumsum(1)).sum(1).clip(max=k - 1)
        return partners, lam, partners[drawn, np.arange(b)]

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if not training or self.config.alpha == 0:
            return a
        partners, lam, labels_from = self.mixing(len(a))
        coef = torch.as_tensor(lam.T, dtype=a.dtype, device=a.device)  # (k, b)
        rows = torch.as_tensor(partners, device=a.device)
        self._labels_from = torch.as_tensor(labels_from, device=a.device)
        self.mixed_rows += len(a)
        shape = (len(a),) + (1,) * (a.dim() - 1)
        return sum((coef[m].view(shape) * a[rows[m]] for m in range(self.config.k)),
                   torch.zeros_like(a))

    def transform_labels(self, y: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor:
        rows, self._labels_from = self._labels_from, None
        return y if rows is None else y[rows]

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="mixup of the batch's activations",
            scope="activations and labels sent in training (mixtures of k beats, one drawn "
            "partner's label); evaluation releases are not mixed",
            conditions=["no formal guarantee: a server that learns a batch's partners and "
                        "coefficients unmixes it exactly; evaluation releases are plain"],
            details={"alpha": c.alpha, "k": c.k, "mixed_rows": self.mixed_rows},
        )


__all__ = ["Mixup"]
