"""Privacy accounting shared by the defenses: exact composition at sample rate 1, privacy-loss
distributions, and Opacus's accountants.

Two mechanisms are accounted here, each given a noise multiplier (noise scale / sensitivity) and a
number of releases (``steps``):

* the Gaussian mechanism. At sample rate 1 (every beat released once per epoch: activation DP)
  the default accountant, ``exact``, composes it exactly: T releases of noise multiplier sigma are
  mu-GDP with ``mu = sqrt(T) / sigma`` (Dong, Roth & Su 2022, "Gaussian differential privacy",
  JRSS-B, Cor. 3.3), whose tight (epsilon, delta) curve is the analytic Gaussian one
  ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle & Wang 2018, ICML,
  Thm. 8; Dong et al. Cor. 2.13). Epsilon is its root in eps, the calibration its root in mu (no
  bound is involved: it is the mechanism's privacy profile). ``pld`` evaluates the same with
  Google's ``dp-accounting`` privacy-loss distributions (a pessimistic discretisation, Koskela et
  al. 2020; Doroshenko et al. 2022), ``rdp`` and ``prv`` with Opacus (RDP, Mironov 2017, loose by
  a few percent at sample rate 1; PRV, Gopi et al. 2021). Subsampled mechanisms (``dpsgd``) use
  Opacus's ``rdp`` or ``prv`` (:data:`ACCOUNTANTS`);
* the Laplace mechanism of noise multiplier ``lam`` (scale / L1 sensitivity, so one release is
  ``1/lam``-DP). ``exact`` and ``pld``: the smaller of basic composition (``releases / lam`` at
  delta 0, tight at delta 0: the privacy loss reaches ``1/lam`` with positive probability in
  every release) and the privacy-loss distribution of ``dp-accounting`` (pessimistic, so an upper
  bound within its discretisation, chosen here as 1e-4 of one release's epsilon). ``rdp``: the
  smaller of basic composition and RDP through zCDP (an eps0-DP mechanism is ``eps0**2 / 2``-zCDP,
  Bun & Steinke 2016, Prop. 3.3, i.e. ``(alpha, min(eps0, alpha eps0**2 / 2))``-RDP, composed and
  converted by Opacus, Balle et al. 2020, Thm. 21): valid, 7-20% looser.

An accountant that cannot answer in bounded time or memory refuses (:class:`AccountingError`)
instead of running for minutes: Opacus's PRV discretises the privacy loss on a mesh whose size
grows without bound as the noise falls (at sample rate 1 and epsilon 1024 it ran 10 minutes and
2.7 GB without finishing), so it refuses a domain above :data:`MAX_PRV_POINTS` points; the PLD
refuses a composition above :data:`MAX_PLD_RELEASES` releases.

Calibrations (the smallest noise multiplier within a target epsilon) are roots of the same
functions: closed form in mu for ``exact`` Gaussian, Opacus's ``get_noise_multiplier`` for
``rdp``, bisection (:func:`smallest_noise`) otherwise; they are cached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

#: Opacus's default RDP orders, extended upwards, used at sample_rate 1 (where the RDP is the closed
#: form alpha / (2 sigma^2)): with a large noise multiplier the optimal order lies far beyond
#: Opacus's largest (63), and the bound would be loose. Subsampled mechanisms keep Opacus's
#: default orders (large fractional orders are slow and numerically fragile there).
ALPHAS: list[float] = (
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [64 * 2 ** (k / 4) for k in range(0, 41)]
)
#: Opacus's accountants, valid at any sample rate (what ``dpsgd`` takes)
ACCOUNTANTS = ("rdp", "prv")
#: the accountants of the plain (sample rate 1) mechanisms of activation DP; ``exact`` first, the
#: default: analytic GDP for the Gaussian, the privacy-loss distribution for the Laplace
RELEASE_ACCOUNTANTS = ("exact", "pld", "rdp", "prv")
DEFAULT_ACCOUNTANT = "exact"
#: Opacus's PRV refuses a discretisation domain above this many points (about 0.5 GB and a
#: second here at 1e6; Gopi et al.'s mesh grows as the noise falls)
MAX_PRV_POINTS = 2_000_000
#: the PLD refuses compositions of more releases than this (each adds 2e4 points to the support)
MAX_PLD_RELEASES = 5_000
#: the Laplace PLD's discretisation interval, relative to one release's epsilon 1/lam
PLD_RELATIVE_INTERVAL = 1e-4


class AccountingError(ValueError):
    """An accountant refuses a question it cannot answer in bounded time or memory."""


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


# -- the Gaussian mechanism, exactly: mu-GDP --------------------------------------------------


def gdp_delta(epsilon: float, mu: float) -> float:
    """delta(epsilon) of mu-GDP: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle &
    Wang 2018, Thm. 8; Dong, Roth & Su 2022, Cor. 2.13); the second term in log space (e^eps
    overflows from eps 710)."""
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    second = math.exp(epsilon + float(log_ndtr(-epsilon / mu - mu / 2)))
    return max(0.0, float(ndtr(-epsilon / mu + mu / 2)) - second)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with ``gdp_delta(epsilon, mu) <= delta`` (root finding; 0 when even
    epsilon 0 holds)."""
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gdp_delta(hi, mu) > delta:
        hi *= 2
    return float(brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-12, rtol=1e-14))


def gdp_mu(epsilon: float, delta: float) -> float:
    """The largest mu with ``gdp_delta(epsilon, mu) <= delta`` (delta grows with mu)."""
    hi = 1.0
    while gdp_delta(epsilon, hi) < delta:
        hi *= 2
    mu = float(brentq(lambda m: gdp_delta(epsilon, m) - delta, 0.0, hi, xtol=1e-14, rtol=1e-15))
    while gdp_delta(epsilon, mu) > delta:  # the root to the safe side
        mu = math.nextafter(mu, 0.0)
    return mu


# -- privacy-loss distributions (dp-accounting) ------------------------------------------------


def _pld_epsilon(make: Callable[..., Any], parameter: float, releases: int, delta: float,
                 interval: float) -> float:
    """Epsilon of ``releases`` compositions of one dp-accounting PLD (pessimistic estimate)."""
    if releases > MAX_PLD_RELEASES:
        raise AccountingError(
            f"accountant pld: {releases} releases exceed the {MAX_PLD_RELEASES} it composes in "
            "bounded memory; use accountant=exact (Gaussian) or rdp")
    pld = make(parameter, sensitivity=1.0, value_discretization_interval=interval)
    return float(pld.self_compose(releases).get_epsilon_for_delta(delta))


def _gaussian_pld(noise_multiplier: float, releases: int, delta: float) -> float:
    from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism

    return _pld_epsilon(from_gaussian_mechanism, noise_multiplier, releases, delta, 1e-4)


def prv_domain_points(*, noise_multiplier: float, sample_rate: float, steps: int,
                      delta: float) -> int:
    """Points of the mesh Opacus's PRV accountant would discretise on (its own domain rule,
    Gopi et al. 2021, Remark 5.6, with its default errors); cheap: RDP only."""
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

    with _quiet():
        domain = PRVAccountant()._get_domain(
            prvs=[PoissonSubsampledGaussianPRV(sample_rate, noise_multiplier)],
            num_self_compositions=[steps], eps_error=0.01, delta_error=delta / 1000)
    return int(domain.size)


def _check_prv(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    points = prv_domain_points(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                               steps=steps, delta=delta)
    if points > MAX_PRV_POINTS:
        raise AccountingError(
            f"accountant prv: noise multiplier {noise_multiplier:.4g} over {steps} steps at "
            f"sample rate {sample_rate:g} needs a {points:,}-point discretisation (limit "
            f"{MAX_PRV_POINTS:,}): it would not finish in bounded time or memory; use "
            "accountant=exact (sample rate 1) or rdp")


def _check_accountant(accountant: str, sample_rate: float) -> None:
    if accountant not in RELEASE_ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {RELEASE_ACCOUNTANTS}, got {accountant!r}")
    if accountant in ("exact", "pld") and sample_rate != 1.0:
        raise ValueError(f"accountant {accountant} composes the plain mechanism (sample rate 1) "
                         f"only, got sample rate {sample_rate}; use rdp or prv")


def gaussian_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon of ``steps`` compositions of the (sampled) Gaussian mechanism.

    ``exact`` (sample rate 1): mu-GDP, ``mu = sqrt(steps) / noise_multiplier``; ``pld``
    (sample rate 1): dp-accounting's PLD; ``rdp`` (orders :func:`rdp_orders`) and ``prv`` (its
    upper bound; refused past :data:`MAX_PRV_POINTS`): Opacus.
    """
    _check_accountant(accountant, sample_rate)
    if steps <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "exact":
        return gdp_epsilon(math.sqrt(steps) / noise_multiplier, delta)
    if accountant == "pld":
        return _gaussian_pld(noise_multiplier, steps, delta)
    if accountant == "prv":
        _check_prv(noise_multiplier, sample_rate, steps, delta)
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet():
        if accountant == "rdp":
            return float(acc.get_epsilon(delta=delta, alphas=rdp_orders(sample_rate)))
        return float(acc.get_epsilon(delta=delta))


def smallest_noise(epsilon_of: Callable[[float], float], target_epsilon: float, *,
                   lo: float = 0.0, hi: float = 1.0, rtol: float = 1e-4) -> float:
    """The smallest noise multiplier (to a relative ``rtol``, rounded up) whose epsilon,
    ``epsilon_of(noise)`` (non-increasing), is within ``target_epsilon``: bisection, from a
    bracket ``lo`` (too little noise, or 0) and ``hi`` (doubled until enough)."""
    while epsilon_of(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e9:
            raise ValueError(f"target epsilon {target_epsilon} is out of reach")
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        if epsilon_of(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=256)
def gaussian_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier giving ``target_epsilon``: exactly (the root in mu) for
    ``exact``; Opacus's search (tolerance 0.01 in epsilon) for ``rdp`` and subsampled ``prv``;
    else bisection from the exact multiplier, a lower bound on any valid accountant's."""
    _check_accountant(accountant, sample_rate)
    if accountant == "exact" or (accountant in ("pld", "prv") and sample_rate == 1.0):
        sigma = math.sqrt(steps) / gdp_mu(target_epsilon, delta)
        while gaussian_epsilon(noise_multiplier=sigma, sample_rate=1.0, steps=steps,
                               delta=delta, accountant="exact") > target_epsilon:
            sigma = math.nextafter(sigma, math.inf)
        if accountant == "exact":
            return sigma
        return smallest_noise(
            lambda s: gaussian_epsilon(noise_multiplier=s, sample_rate=1.0, steps=steps,
                                       delta=delta, accountant=accountant),
            target_epsilon, lo=sigma, hi=sigma * 1.05)
    kwargs = {"alphas": rdp_orders(sample_rate)} if accountant == "rdp" else {}
    with _quiet():
        return float(get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant, epsilon_tolerance=0.01, **kwargs,
        ))


# -- the Laplace mechanism --------------------------------------------------------------------


def _laplace_pld(noise_multiplier: float, releases: int, delta: float) -> float:
    from dp_accounting.pld.privacy_loss_distribution import from_laplace_mechanism

    interval = PLD_RELATIVE_INTERVAL / noise_multiplier
    return _pld_epsilon(from_laplace_mechanism, noise_multiplier, releases, delta, interval)


def laplace_guarantee(*, noise_multiplier: float, releases: int, delta: float,
                      accountant: str = DEFAULT_ACCOUNTANT) -> Guarantee:
    """``releases`` compositions of a Laplace mechanism with scale = noise_multiplier * L1 sens.

    The smaller of basic composition (at delta 0, which also holds at any larger delta) and, by
    ``accountant``: ``exact`` / ``pld``, dp-accounting's privacy-loss distribution; ``rdp``, the
    zCDP/RDP bound (see the module docstring). At delta 0 only basic composition holds (and is
    tight).
    """
    if accountant not in RELEASE_ACCOUNTANTS or accountant == "prv":
        raise ValueError(f"the Laplace mechanism's accountant must be exact, pld or rdp, got "
                         f"{accountant!r}")
    if releases <= 0:
        return Guarantee(0.0, 0.0, "none")
    if noise_multiplier == 0:
        return Guarantee(math.inf, delta, "no noise")
    eps0 = 1.0 / noise_multiplier
    basic = releases * eps0
    if delta == 0:
        return Guarantee(basic, 0.0, "basic composition")
    if accountant == "rdp":
        alphas = np.asarray(ALPHAS)
        rdp = releases * np.minimum(eps0, alphas * eps0**2 / 2)
        with _quiet():
            composed, _ = rdp_analysis.get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)
        method = "RDP via zCDP (Bun & Steinke 2016)"
    else:
        composed = _laplace_pld(noise_multiplier, releases, delta)
        method = "privacy-loss distribution (dp-accounting, pessimistic)"
    if basic <= composed:
        return Guarantee(basic, 0.0, "basic composition")
    return Guarantee(float(composed), delta, method)


@functools.lru_cache(maxsize=256)
def laplace_noise_multiplier(*, target_epsilon: float, delta: float, releases: int,
                             accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The smallest Laplace noise multiplier whose ``releases``-fold composition is within
    ``target_epsilon`` (bisection to a relative 1e-4; basic composition's ``releases /
    target_epsilon`` always suffices)."""
    def eps(lam: float) -> float:
        return laplace_guarantee(noise_multiplier=lam, releases=releases, delta=delta,
                                 accountant=accountant).epsilon

    return smallest_noise(eps, target_epsilon, hi=releases / target_epsilon)


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
    "ACCOUNTANTS", "ALPHAS", "AccountingError", "DEFAULT_ACCOUNTANT", "Guarantee",
    "MAX_PLD_RELEASES", "MAX_PRV_POINTS", "RELEASE_ACCOUNTANTS", "gaussian_epsilon",
    "gaussian_noise_multiplier", "gdp_delta", "gdp_epsilon", "gdp_mu", "laplace_guarantee",
    "laplace_noise_multiplier", "prv_domain_points", "rdp_orders", "smallest_noise",
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
    if noise_multiplier is not None and not 0 <= noise_multiplier < math.inf:
        raise bad(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    if target_epsilon is not None and not 0 < target_epsilon < math.inf:
        raise bad(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
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
