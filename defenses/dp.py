"""Noise on the activations at the cut: the paper's Laplace recipe, and a formal mechanism.

``dp:mode=paper,epsilon=3`` (:class:`PaperDP`) reproduces Abuadbba et al. (ASIACCS 2020, arXiv
2003.12365, code in ``diffpriv/ecg_train_2conv_diffpriv_ep*.ipynb``) and claims no guarantee;
``dp:mode=formal,mechanism=gaussian,target_epsilon=4`` (:class:`FormalDP`) clips every beat's
activation vector, adds noise calibrated over the run's epochs and accounts for every release.
Both share the noise plumbing of :class:`ActivationDP`, registered as ``dp``: the spec's ``mode``
picks the class, each with its own ``Config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from defenses.accounting import (
    DEFAULT_ACCOUNTANT,
    RELEASE_ACCOUNTANTS,
    Guarantee,
    check_noise_plan,
    gaussian_epsilon,
    gaussian_noise_multiplier,
    laplace_guarantee,
    laplace_noise_multiplier,
    needs_epochs,
    planned,
    stream_seed,
)
from defenses.registry import register
from splitpriv.defense import ClientView, Defense, PrivacyClaim

#: the paper code's floor: a coordinate whose batch range is below this gets the range + this
PAPER_MIN_RANGE = 1e-5
#: sensitivity of a beat's clipped activation vector, in units of the clip bound C
ADJACENCY = {
    "replace": 2.0,  # the beat's input replaced by any other: ||clip(a) - clip(a')|| <= 2C
    "zero_out": 1.0,  # the beat replaced by a null record contributing 0 (Kairouz et al. 2021)
}


class Mechanism:
    """An additive noise family: its unit noise, the norm its sensitivity is measured in, and its
    accounting. ``noise_multiplier`` is always the noise scale divided by the sensitivity."""

    name: str = ""
    norm_ord: int = 2

    def unit_noise(self, shape: torch.Size, generator: torch.Generator, like: torch.Tensor):
        raise NotImplementedError

    def guarantee(
        self, *, noise_multiplier: float, releases: int, delta: float, accountant: str
    ) -> Guarantee:
        raise NotImplementedError

    def calibrate(
        self, *, target_epsilon: float, releases: int, delta: float, accountant: str
    ) -> float:
        raise NotImplementedError


class LaplaceMechanism(Mechanism):
    """Laplace(0, 1) per coordinate; L1 sensitivity; one release is (1/noise_multiplier)-DP."""

    name, norm_ord = "laplace", 1

    def unit_noise(self, shape, generator, like):
        """Laplace(0, 1) by the inverse CDF of one uniform: u in [-1/2, 1/2),
        x = -sign(u) log(1 - 2|u|). One thread, a (32, 16, 32) batch: 105 us against 642 for
        the difference of two ``exponential_`` draws, which made paper-mode runs 1.6x slower than
        formal ones. ``1 - 2|u|`` is kept at least half the dtype's epsilon (the uniform's
        resolution), so |x| <= 16.6 in float32 (a tail of mass 6e-8 cut off) and never inf."""
        u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device).sub_(0.5)
        sign = u.sign()
        floor = torch.finfo(u.dtype).eps / 2
        return u.abs_().mul_(-2).clamp_(min=floor - 1).log1p_().mul_(sign).neg_()  # (shape)

    def guarantee(self, *, noise_multiplier, releases, delta, accountant):
        return laplace_guarantee(noise_multiplier=noise_multiplier, releases=releases, delta=delta,
                                 accountant=accountant)

    def calibrate(self, *, target_epsilon, releases, delta, accountant):
        return laplace_noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                        releases=releases, accountant=accountant)


class GaussianMechanism(Mechanism):
    """N(0, 1) per coordinate; L2 sensitivity; composed at sample rate 1 (exactly by default, see
    :mod:`defenses.accounting`)."""

    name, norm_ord = "gaussian", 2

    def unit_noise(self, shape, generator, like):
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)

    def guarantee(self, *, noise_multiplier, releases, delta, accountant):
        eps = gaussian_epsilon(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=releases,
                               delta=delta, accountant=accountant)
        methods = {"exact": "mu-GDP, analytic conversion (Dong et al. 2022; Balle & Wang 2018)",
                   "pld": "privacy-loss distribution (dp-accounting, pessimistic)"}
        method = methods.get(accountant, f"opacus {accountant}")
        return Guarantee(eps, delta if releases else 0.0, f"{method}, sample_rate=1")

    def calibrate(self, *, target_epsilon, releases, delta, accountant):
        return gaussian_noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                         sample_rate=1.0, steps=releases, accountant=accountant)


MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (LaplaceMechanism(), GaussianMechanism())}


def clip_rows(a: torch.Tensor, bound: float, norm_ord: int) -> torch.Tensor:
    """Scale each beat's activation vector to norm at most ``bound``; differentiable.

    Shape: (B, *) -> (B, *). Rows already within the bound are multiplied by exactly 1. Norms
    and factors are computed in float64, so a float32 row exceeds the bound by at most its own
    rounding (a relative 1e-7), not by the error of a float32 sum over 512 values.
    """
    norms = torch.linalg.vector_norm(a.flatten(1).double(), ord=norm_ord, dim=1)  # (B,)
    factor = (bound / norms.clamp_min(1e-300)).clamp(max=1.0).to(a.dtype)
    return a * factor.view(-1, *([1] * (a.dim() - 1)))


def standardise_rows(a: torch.Tensor) -> torch.Tensor:
    """Each beat's activation vector to zero mean and unit (population) standard deviation over
    its values; a function of the row alone, so clipping after it keeps the sensitivity 2C.

    Shape: (B, *) -> (B, *). A constant row becomes 0 (its variance is floored at 1e-12)."""
    flat = a.flatten(1)
    mean = flat.mean(1, keepdim=True)
    var = flat.var(1, unbiased=False, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + 1e-12)).view_as(a)


def paper_sensitivity(a: torch.Tensor) -> torch.Tensor:
    """Per-coordinate range over the batch, as the paper code computes it.

    Shape: (B, C, L) -> (C, L). A range below 1e-5 becomes range + 1e-5 (the code widens the
    interval by 5e-6 on each side), so the sensitivity is never below 1e-5.
    """
    rng = a.amax(0) - a.amin(0)
    return torch.where(rng < PAPER_MIN_RANGE, rng + PAPER_MIN_RANGE, rng)


def _bad(msg: str) -> ValueError:
    return ValueError(f"defense 'dp': {msg}")


@dataclass
class NoiseConfig:
    """Parameters both modes of ``dp`` take.

    Attributes:
        mechanism: ``laplace`` or ``gaussian`` (paper mode: laplace).
        test_noise: add noise at test time too (the paper does).
        seed: noise seed; None = torch's initial seed when attached (the run's seed).
    """

    mechanism: str = "laplace"
    test_noise: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise _bad(f"mechanism must be one of {sorted(MECHANISMS)}, got {self.mechanism!r}")


@register("dp")
class ActivationDP(Defense):
    """Additive noise on the activations the client sends: what both modes share.

    The noise comes from a generator reseeded for every (phase, epoch) that ``begin_phase``
    announces (a resumed run never replays earlier noise and draws what an uninterrupted run
    would); every release is counted: each training beat once per epoch, each held-out beat once
    per evaluation pass, per phase. Subclasses define ``mode``, ``Config`` and :meth:`_release`.

    Shape:
        activations (B, C, L) -> (B, C, L).
    """

    variant_field: ClassVar[str] = "mode"
    default_variant: ClassVar[str] = "paper"
    variants: ClassVar[dict[str, type[Defense]] | None] = {}
    mode: ClassVar[str] = ""

    @classmethod
    def stacks(cls, config: Any) -> bool:
        """Whether K runs of this defense can train as one stacked model (``splitpriv.batched``),
        each with its own instance from ``config`` on its own slice: yes, the noise, its
        generator and the release counts are the instance's own."""
        return True

    def __init__(self, config: Any) -> None:
        self.config = config
        self.mechanism = MECHANISMS[config.mechanism]
        self._generator: torch.Generator | None = None
        self._stream_key: tuple[Any, ...] | None = None
        self._seed = config.seed
        self._siblings: list[Defense] = []
        self._n_train: int | None = None
        self._train_rows = 0
        self._epoch_offset = 0  # epochs released before this process (a resumed run)
        self._seen_epoch = False
        self._last_epoch = 0
        self._epoch, self._phase = 0, "train"  # the set-up, until begin_phase
        self._eval_passes: dict[str, set[Any]] = {}

    # -- hooks --------------------------------------------------------------------------------

    def attach(self, client: ClientView) -> None:
        self._n_train = len(client.y)
        self._siblings = client.defenses
        if self._seed is None:
            self._seed = torch.initial_seed()

    def begin_phase(self, epoch: int, phase: str) -> None:
        self._epoch, self._phase = epoch, phase

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        if training:
            self._train_rows += len(a)
        else:
            self._count_eval_pass()
        return self._release(a, training)

    def end_epoch(self, epoch: int) -> None:
        if not self._seen_epoch and epoch > 1:
            self._epoch_offset = epoch - 1
        self._seen_epoch = True
        self._last_epoch = epoch

    def _release(self, a: torch.Tensor, training: bool) -> torch.Tensor:
        """The activations as sent: the mode's mechanism."""
        raise NotImplementedError

    def _noise(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """Unit noise from a generator reseeded for every (phase, epoch) begin_phase announces."""
        key = (self._phase, self._epoch, like.device)
        if self._generator is None or self._stream_key != key:
            base = self._seed if self._seed is not None else torch.initial_seed()
            self._generator = torch.Generator(device=like.device)
            self._generator.manual_seed(stream_seed(base, "dp", *key[:2]))
            self._stream_key = key
        return self.mechanism.unit_noise(shape, self._generator, like)

    # -- release counting ---------------------------------------------------------------------

    def _count_eval_pass(self) -> None:
        """One evaluation pass per (phase, epoch) begin_phase announces; evaluation outside an
        announced evaluation phase counts every call as a pass (an upper bound per beat)."""
        phase, epoch = self._phase, self._epoch
        if phase == "train":
            phase, epoch = "eval", object()  # type: ignore[assignment]  # a pass of its own
        self._eval_passes.setdefault(phase, set()).add(epoch)

    @property
    def train_releases(self) -> int:
        """Releases of each training beat so far: one per (possibly partial) epoch."""
        if not self._n_train:
            return self._epoch_offset
        return self._epoch_offset + math.ceil(self._train_rows / self._n_train)

    def eval_releases(self) -> dict[str, int]:
        """Releases of each held-out beat so far, per phase (earlier epochs of a resumed run are
        assumed to have evaluated every phase once each)."""
        return {p: len(e) + self._epoch_offset for p, e in sorted(self._eval_passes.items())}

    def _details(self) -> dict[str, Any]:
        return {"mode": self.mode, "test_noise": self.config.test_noise}


@dataclass
class PaperConfig(NoiseConfig):
    """Parameters of ``dp:mode=paper``.

    Attributes:
        epsilon: the per-release epsilon of each coordinate's noise (a finite number > 0).
        eval_batch: rows per sensitivity group at test time (the paper's test loader, 32).
    """

    epsilon: float | None = None
    eval_batch: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epsilon is None or not self.epsilon > 0:
            raise _bad(f"paper mode needs epsilon > 0, got {self.epsilon}")
        if self.mechanism != "laplace":
            raise _bad("paper mode uses the Laplace mechanism only")
        if self.eval_batch < 1:
            raise _bad(f"eval_batch must be >= 1, got {self.eval_batch}")


class PaperDP(ActivationDP):
    """``dp:mode=paper``: the recipe of Abuadbba et al. 2020, no formal guarantee.

    Per coordinate, Laplace noise of scale ``(max - min over the batch) / epsilon`` on every
    forward pass, training and test (test rows in groups of ``eval_batch``, the paper's test
    loader batch); the gradient passes straight through. The sensitivity is a statistic of the
    very data it protects and nothing is clipped or composed, so this mode gives **no formal
    guarantee**, whatever ``epsilon`` says.

    Notes:
        The noise scale of a row depends on the other rows of its batch (``couples_rows``), so
        client DP-SGD's per-sample gradients are not strictly per-sample beside it.

    Shape:
        activations (B, C, L) -> (B, C, L).
    """

    mode = "paper"
    couples_rows = True
    Config = PaperConfig

    def _release(self, a: torch.Tensor, training: bool) -> torch.Tensor:
        """Laplace(scale = batch range / epsilon) per coordinate, straight-through gradient."""
        groups = [a] if training else a.split(self.config.eval_batch)
        noise = []
        for g in groups:
            scale = paper_sensitivity(g.detach()) / self.config.epsilon  # (C, L)
            noise.append(scale * self._noise(g.shape, g))  # (b, C, L)
        return a + torch.cat(noise).detach()

    def report(self) -> PrivacyClaim:
        c = self.config
        return PrivacyClaim(
            name=self.name, formal=False, mechanism=c.mechanism,
            scope="activations sent in training and evaluation (noised, not accounted)",
            conditions=["no formal guarantee: the sensitivity is computed from the data it "
                        "protects and releases are not composed",
                        "labels cross in the clear in the vanilla topology"],
            details=self._details() | {
                "epsilon_per_release": c.epsilon if math.isfinite(c.epsilon) else None,
                "sensitivity": "per-coordinate max - min over the batch (floor 1e-5), "
                               f"test rows in groups of {c.eval_batch}",
                "note": "the paper's recipe (Abuadbba et al. 2020): the sensitivity is computed "
                        "from the data it protects, nothing is clipped or composed over "
                        "epochs: epsilon is a noise knob, not a privacy guarantee",
            },
        )


@dataclass
class FormalConfig(NoiseConfig):
    """Parameters of ``dp:mode=formal``.

    Attributes:
        noise_multiplier: noise scale / sensitivity (0 = no noise).
        target_epsilon: total epsilon over the training releases of each beat (``releases``,
            else one per epoch of ``epochs``); the noise multiplier is calibrated to it (so a run
            trained for its epochs is not extended to others: :meth:`FormalDP.fixes_epochs`).
        delta: the delta of the reported (epsilon, delta).
        clip: the bound C on each beat's activation norm. Chosen without looking at the protected
            data: a fixed value (the study's 2 for the 512-value cut; with ``standardise`` every
            row has norm sqrt(C * L) before clipping, so any C below it gives the same
            signal-to-noise ratio).
        epochs: training epochs the budget covers (None: the run's, from ``configure``).
        releases: the release budget R: each training beat's noisy activations are sent in the
            first R epochs only; later epochs train the server on the releases it already holds
            (post-processing, no privacy cost) with the client frozen. None: one release per
            epoch. The accounting composes R releases, whatever the epochs.
        standardise: standardise each beat's activation vector (zero mean, unit std over its
            values) before clipping.
        adjacency: ``replace`` or ``zero_out`` (see :class:`FormalDP`).
        accountant: ``exact`` (default: analytic mu-GDP for the Gaussian, the privacy-loss
            distribution for the Laplace), ``pld`` (dp-accounting for both), ``rdp`` (Opacus
            RDP; the Laplace's RDP-via-zCDP bound) or ``prv`` (Opacus PRV, Gaussian only;
            refused where it would not finish). See :mod:`defenses.accounting`.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    epochs: int | None = None
    releases: int | None = None
    standardise: bool = False
    adjacency: str = "replace"
    accountant: str = DEFAULT_ACCOUNTANT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adjacency not in ADJACENCY:
            raise _bad(f"adjacency must be one of {sorted(ADJACENCY)}, got {self.adjacency!r}")
        if self.accountant not in RELEASE_ACCOUNTANTS:
            raise _bad(f"accountant must be one of {RELEASE_ACCOUNTANTS}, got "
                       f"{self.accountant!r}")
        if self.releases is not None and self.releases < 1:
            raise _bad(f"releases must be >= 1, got {self.releases}")
        check_noise_plan(self.noise_multiplier, self.target_epsilon, self.epochs, _bad)
        if not 0 < self.delta < 1:
            raise _bad(f"delta must be in (0, 1), got {self.delta}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise _bad(f"clip must be a finite number > 0, got {self.clip}")
        if self.mechanism == "laplace" and self.accountant == "prv":
            raise _bad("the prv accountant applies to the Gaussian mechanism only")


class FormalDP(ActivationDP):
    """``dp:mode=formal``: clipped activations plus calibrated noise, every release accounted.

    Each beat's activation vector is clipped to norm ``clip`` (L1 for Laplace, L2 for Gaussian),
    then noise of scale ``noise_multiplier * sensitivity`` is added to every coordinate;
    ``noise_multiplier`` is given, or calibrated from ``target_epsilon`` over ``epochs`` training
    releases (the run's epochs unless given). The gradient flows through the clipping; the noise
    is detached, so d(sent)/d(clipped activations) is the identity.

    Notes:
        Privacy unit: one beat's input signal (its 128 samples). Its label and its sample id are
        not protected (labels cross in the clear in the vanilla topology).
        Adjacency: ``replace`` (default; the beat's input replaced by any other, sensitivity 2C)
        or ``zero_out`` (replaced by a null record sending pure noise, sensitivity C).
        Mechanism: Gaussian (L2) or Laplace (L1), one release per beat per pass over it; with
        ``standardise`` each row is standardised (a function of the row alone) before clipping.
        Composition: every release epoch releases every training beat once more (the whole set
        is processed each epoch: no subsampling amplification), so training is R-fold
        composition, R = ``releases`` (default: the epochs), Gaussian exactly (mu-GDP, Dong, Roth
        & Su 2022) by default, Laplace by its privacy-loss distribution (see
        ``defenses.accounting``; ``accountant=rdp`` keeps Opacus RDP).
        Release budget: with ``releases=R`` the client sends fresh noisy activations of its
        training beats in epochs 1..R and keeps them (per sample id); from epoch R + 1 the
        :meth:`replay` hook hands the client the release the server already holds for each
        batch: the client sends it again without a forward pass and takes no step (frozen),
        while the server trains on it. Re-sending a past release is post-processing and costs
        no privacy (Dwork & Roth 2014, Prop. 2.1). The kept releases are not checkpointed: a
        run resumed after its release epochs is refused. Test-time
        releases are accounted separately, per evaluated phase (``test``, ``val``), one release
        per held-out beat per evaluation pass; with ``test_noise=False`` they have no guarantee.
        Assumptions: (1) the guarantee covers what the beat's own releases reveal given the
        client's weights; the weights are trained on the beat, so another beat's activations can
        reveal it too unless the weights are private as well (a ``weights_private`` defense:
        ``dpsgd``); (2) noise comes from torch's PRNG in floating point, not a secure sampler
        (Mironov 2012); (3) a beat that is in both the training and a held-out set (the
        ``paper`` protocol's duplicates) has both guarantees composed; a beat twice in the
        training rows would be released as two beats, so such rows are refused
        (``per_beat_claim``); (4) a run killed
        mid-epoch and resumed released part of that epoch twice, which this process cannot see.

    Shape:
        activations (B, C, L) -> (B, C, L).
    """

    mode = "formal"
    Config = FormalConfig
    per_beat_claim = True

    @classmethod
    def stacks(cls, config: FormalConfig) -> bool:
        """Not with a release budget: replayed releases freeze the client for the batch, which a
        stacked model (one optimizer step for all K runs) cannot do for one run alone."""
        return config.releases is None

    def __init__(self, config: FormalConfig) -> None:
        super().__init__(config)
        self.epochs = config.epochs
        self.noise_multiplier = config.noise_multiplier
        self._kept: torch.Tensor | None = None  # (N, C, L) the training releases, per sample id
        self._kept_mask: torch.Tensor | None = None  # (N,) which ids have one
        self._batch_ids: torch.Tensor | None = None
        if config.epochs is not None or config.releases is not None:
            self._calibrate()

    @property
    def budget_releases(self) -> int:
        """R, the training releases of each beat the budget covers: ``releases``, else one per
        epoch."""
        if self.config.releases is not None:
            return self.config.releases
        return needs_epochs(self.epochs, _bad)

    def _calibrate(self) -> None:
        c = self.config
        if c.target_epsilon is not None:
            self.noise_multiplier = self.mechanism.calibrate(
                target_epsilon=c.target_epsilon, releases=self.budget_releases,
                delta=c.delta, accountant=c.accountant,
            )

    def fixes_epochs(self) -> str | None:
        """The noise, calibrated to ``target_epsilon`` over one release per planned epoch."""
        c = self.config
        if c.target_epsilon is None or c.releases is not None:
            return None
        return f"noise was calibrated to target_epsilon={c.target_epsilon} over its epochs"

    def configure(self, *, epochs: int | None = None, **_: Any) -> None:
        """The run's epochs: the budget covers them unless ``epochs`` was given (then they must
        agree); calibrates the noise to ``target_epsilon``."""
        self.epochs = planned("epochs", self.config.epochs, epochs, _bad)
        self._calibrate()

    def attach(self, client: ClientView) -> None:
        if self.noise_multiplier is None:
            needs_epochs(self.epochs, _bad)
        super().attach(client)

    def _releasing(self) -> bool:
        """Whether the current training epoch sends fresh releases (always without a budget)."""
        return self.config.releases is None or self._epoch <= self.config.releases

    def replay(self, ids: torch.Tensor) -> torch.Tensor | None:
        """After the release epochs, the kept release of the batch ``ids``; before, None (and the
        ids, to keep this batch's release under)."""
        if self.config.releases is None:
            return None
        if self._releasing():
            self._batch_ids = ids
            return None
        if self._kept is None or self._kept_mask is None or not bool(self._kept_mask[ids].all()):
            raise _bad(f"releases={self.config.releases}: epoch {self._epoch} would replay "
                       "releases this process does not hold (a run resumed after its release "
                       "epochs: they are not checkpointed); rerun it from the start")
        return self._kept[ids]

    def _keep(self, sent: torch.Tensor) -> None:
        """Keep the batch's training release under its sample ids (given by :meth:`replay`)."""
        ids, self._batch_ids = self._batch_ids, None
        if ids is None or self._n_train is None:
            return
        if self._kept is None or self._kept_mask is None:
            self._kept = sent.new_zeros((self._n_train, *sent.shape[1:]))
            self._kept_mask = torch.zeros(self._n_train, dtype=torch.bool, device=sent.device)
        self._kept[ids] = sent.detach()
        self._kept_mask[ids] = True

    def release_map(self, a: torch.Tensor) -> torch.Tensor:
        """The release without its noise: standardised (``standardise``), then clipped."""
        if self.config.standardise:
            a = standardise_rows(a)
        return clip_rows(a, self.config.clip, self.mechanism.norm_ord)

    def _release(self, a: torch.Tensor, training: bool) -> torch.Tensor:
        clipped = self.release_map(a)
        if not training and not self.config.test_noise:
            return clipped
        sent = clipped + (self.noise_scale * self._noise(a.shape, a)).detach()
        if training and self.config.releases is not None:
            self._keep(sent)
        return sent

    @property
    def sensitivity(self) -> float:
        """The sensitivity of one beat's clipped activation vector."""
        return ADJACENCY[self.config.adjacency] * self.config.clip

    @property
    def noise_scale(self) -> float:
        """The Laplace scale b or the Gaussian std, per coordinate."""
        assert self.noise_multiplier is not None
        return self.noise_multiplier * self.sensitivity

    def guarantee(self, releases: int, *, noisy: bool = True) -> Guarantee:
        if not noisy:
            return Guarantee(math.inf, self.config.delta, "no noise at test time")
        assert self.noise_multiplier is not None
        return self.mechanism.guarantee(
            noise_multiplier=self.noise_multiplier, releases=releases, delta=self.config.delta,
            accountant=self.config.accountant,
        )

    def report(self) -> PrivacyClaim:
        c = self.config
        train = self.guarantee(self.train_releases)
        details: dict[str, Any] = self._details() | {
            "adjacency": c.adjacency,
            "clip": c.clip,
            "clip_norm": f"L{self.mechanism.norm_ord}",
            "sensitivity": self.sensitivity,
            "noise_multiplier": self.noise_multiplier,
            "noise_scale": self.noise_scale,
            "standardise": c.standardise,
            "release_budget": c.releases,
            "train": {"releases_per_beat": self.train_releases, **train.as_dict()},
            "test": {
                phase: {"releases_per_beat": n, **self.guarantee(n, noisy=c.test_noise).as_dict()}
                for phase, n in self.eval_releases().items()
            },
        }
        if c.target_epsilon is not None:
            budget = self.budget_releases
            details["planned"] = {"target_epsilon": c.target_epsilon, "epochs": self.epochs,
                                  **({"releases": budget} if c.releases is not None else {}),
                                  "exceeded": self.train_releases > budget}
        weights = next((d for d in self._siblings if d.weights_private), None)
        if weights is not None:
            details[f"combined_with_{weights.name}"] = self._combined(train, weights.report())
        return PrivacyClaim(
            name=self.name, formal=True, mechanism=c.mechanism,
            privacy_unit="one beat's input signal; labels and sample ids not protected",
            scope="activation releases of each training beat",
            epsilon=train.epsilon, delta=train.delta,
            accountant=c.accountant,
            conditions=[
                "client weights treated as given: unless they are private too (dpsgd) they are "
                "trained on the beat and other beats' activations may reveal it",
                "labels cross in the clear in the vanilla topology; sample ids are not protected",
                "held-out releases are accounted separately (details: test)",
                "noise from a non-cryptographic PRNG in floating point",
            ],
            details=details,
        )

    def _combined(self, train: Guarantee, weights: PrivacyClaim) -> dict[str, Any]:
        """End-to-end guarantee of a training beat when the client's weights are private (DP-SGD):
        its own releases and the weights' updates compose (basic composition of the two)."""
        if self.config.adjacency != "zero_out":
            return {"epsilon": None, "note": "replace adjacency here, add/remove in dpsgd: set "
                    "adjacency=zero_out (equivalent to add/remove under Poisson sampling) to "
                    "compose them"}
        eps = train.epsilon + (weights.epsilon if weights.epsilon is not None else math.inf)
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": train.delta + (weights.delta or 0.0),
            "method": f"basic composition of activation DP and client {weights.name}",
            "privacy_unit": "one training beat's input (zero-out adjacency)",
        }


ActivationDP.variants = {cls.mode: cls for cls in (PaperDP, FormalDP)}


__all__ = ["ActivationDP", "ADJACENCY", "FormalDP", "MECHANISMS", "NoiseConfig", "PaperDP",
           "clip_rows", "paper_sensitivity", "standardise_rows"]
