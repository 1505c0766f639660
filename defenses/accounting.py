"""Privacy accounting shared by the defenses: Opacus accountants and the Laplace mechanism.

Two mechanisms are accounted here:

* the (sub)sampled Gaussian mechanism, through an Opacus accountant (``rdp`` or ``prv``), given a
  noise multiplier (noise std / sensitivity), a sampling rate and a number of steps. With
  ``sample_rate=1.0`` this is the plain Gaussian mechanism composed ``steps`` times;
* the Laplace mechanism of noise multiplier ``lam`` (scale / L1 sensitivity, so one release is
  ``1/lam``-DP), composed ``releases`` times, by the smaller of two valid bounds: basic
  composition, ``releases / lam`` at delta 0, and RDP through zCDP: an eps0-DP mechanism is
  ``eps0**2 / 2``-zCDP (Bun & Steinke 2016, Prop. 3.3), i.e. ``(alpha, alpha * eps0**2 / 2)``-RDP
  for every alpha, and is trivially ``(alpha, eps0)``-RDP; RDP adds up over releases and is turned
  into (epsilon, delta) by Opacus's conversion (Balle et al. 2020, Thm. 21).

Noise calibration inverts these by bisection (Opacus's ``get_noise_multiplier`` for the Gaussian).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

#: Opacus's default RDP orders, extended upwards, used at sample_rate 1 (where the RDP is the closed
#: form alpha / (2 sigma^2)): with a large noise multiplier the optimal order lies far beyond
#: Opacus's largest (63), and the bound would be loose. Subsampled mechanisms keep Opacus's
#: default orders (large fractional orders are slow and numerically fragile there).
ALPHAS: list[float] = (
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64 * 2 ** (k / 4) for k in range(0, 41)]
)
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class Guarantee:
    """An (epsilon, delta) guarantee and how it was obtained."""

    epsilon: float
    delta: float
    method: str

    def as_dict(self) -> dict[str, float | str | None]:
        eps = self.epsilon if math.isfinite(self.epsilon) else None  # JSON has no inf
        return {"epsilon": eps, "delta": self.delta, "method": self.method,
                "finite": math.isfinite(self.epsilon)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Opacus's numerical warnings (log of 0 in the PRV at sample_rate 1; optimal order at
    the end of the grid, which :data:`ALPHAS` makes rare)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def rdp_orders(sample_rate: float) -> list[float] | None:
    """The RDP orders used for a sampling rate: :data:`ALPHAS` at 1, else Opacus's default."""
    return ALPHAS if sample_rate == 1.0 else None


def gaussian_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon of ``steps`` compositions of the sampled Gaussian mechanism, by Opacus.

    ``rdp`` uses the orders :func:`rdp_orders`; ``prv`` returns the PRV accountant's upper bound.
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet():
        if accountant == "rdp":
            return float(acc.get_epsilon(delta=delta, alphas=rdp_orders(sample_rate)))
        return float(acc.get_epsilon(delta=delta))


def gaussian_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) giving ``target_epsilon``."""
    kwargs = {"alphas": rdp_orders(sample_rate)} if accountant == "rdp" else {}
    with _quiet():
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant, epsilon_tolerance=0.01, **kwargs,
        ))


def laplace_guarantee(*, noise_multiplier: float, releases: int, delta: float) -> Guarantee:
    """``releases`` compositions of a Laplace mechanism with scale = noise_multiplier * L1 sens.

    The smaller of basic composition (at delta 0, which also holds at any larger delta) and the
    zCDP/RDP bound described in the module docstring.
    """
    if releases <= 0:
        return Guarantee(0.0, 0.0, "none")
    if noise_multiplier == 0:
        return Guarantee(math.inf, delta, "no noise")
    eps0 = 1.0 / noise_multiplier
    basic = releases * eps0
    alphas = np.asarray(ALPHAS)
    rdp = releases * np.minimum(eps0, alphas * eps0**2 / 2)
    with _quiet():
        via_rdp, _ = rdp_analysis.get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)
    if basic <= via_rdp:
        return Guarantee(basic, 0.0, "basic composition")
    return Guarantee(float(via_rdp), delta, "RDP via zCDP (Bun & Steinke 2016)")


def laplace_noise_multiplier(*, target_epsilon: float, delta: float, releases: int) -> float:
    """The smallest Laplace noise multiplier whose ``releases``-fold composition is within
    ``target_epsilon`` (bisection to a relative 1e-4)."""
    lo, hi = 0.0, 1.0
    def eps(lam: float) -> float:
        return laplace_guarantee(noise_multiplier=lam, releases=releases, delta=delta).epsilon

    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e9:
            raise ValueError(f"target epsilon {target_epsilon} is out of reach")
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def stream_seed(base: int, *key: object) -> int:
    """A seed for the noise of one (phase, epoch) stream, derived from the run's seed.

    Reseeding per epoch keeps a resumed run's noise fresh (a generator restarted from the run's
    seed would replay epoch 1's noise: two releases with the same noise give away their
    difference) and makes it identical to an uninterrupted run's.
    """
    text = "|".join(str(k) for k in (base, *key)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


__all__ = [
    "stream_seed",
    "ACCOUNTANTS", "ALPHAS", "Guarantee", "gaussian_epsilon", "gaussian_noise_multiplier",
    "laplace_guarantee", "laplace_noise_multiplier", "rdp_orders",
    "check_noise_plan", "needs_epochs", "planned",
]


def check_noise_plan(
    noise_multiplier: float | None,
    target_epsilon: float | None,
    epochs: int | None,
    bad: Callable[[str], ValueError],
) -> None:
    """A noise plan gives exactly one of ``noise_multiplier`` (>= 0) and ``target_epsilon``
    (> 0); ``epochs``, the training epochs the budget covers, is >= 1 or None (the run's, given
    by ``configure``). ``bad(message)`` makes the error to raise."""
    if (noise_multiplier is None) == (target_epsilon is None):
        raise bad("needs exactly one of noise_multiplier and target_epsilon")
    if noise_multiplier is not None and not noise_multiplier >= 0:
        raise bad(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if target_epsilon is not None and not target_epsilon > 0:
        raise bad(f"target_epsilon must be > 0, got {target_epsilon}")
    if epochs is not None and epochs < 1:
        raise bad(f"epochs must be >= 1, got {epochs}")


def planned(name: str, given: int | None, run: int | None, bad: Callable[[str], ValueError]
            ) -> int | None:
    """A planning parameter (``epochs``, ``batch_size``): the spec's value, refused when the run
    uses another, else the run's (None when neither is known)."""
    if given is not None and run is not None and given != run:
        raise bad(f"budget planned for {name}={given}, but the run uses {name}={run}")
    return given if given is not None else run


def needs_epochs(epochs: int | None, bad: Callable[[str], ValueError]) -> int:
    """The epochs a ``target_epsilon`` covers, once known (the spec's or the run's)."""
    if epochs is None:
        raise bad("target_epsilon needs epochs (the number of training epochs it covers): give "
                  "epochs=, or let the run configure it")
    return epochs
