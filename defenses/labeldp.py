"""Label differential privacy by randomised response on the labels the client sends."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from defenses.accounting import stream_seed
from defenses.registry import register
from splitpriv.data import PAPER_CLASS_DRAWS
from splitpriv.defense import ClientView, Defense, PrivacyClaim
from splitpriv.models import N_CLASSES

#: where RR-with-prior's prior comes from (see :class:`LabelDP`)
PRIOR_SOURCES = ("protocol", "uniform", "train")
#: the claim's condition of a data-dependent prior
PRIOR_CONDITION = {"train": "the prior is the training labels' class frequencies "
                            "(data-dependent: those counts are outside the claim)"}

#: the public prior: the class frequencies the protocol draws by design (the paper's per-class
#: draw sizes, N L R A V), known before any label is seen (never the client's own labels)
PUBLIC_PRIOR = PAPER_CLASS_DRAWS


def keep_probability(epsilon: float, k: int) -> float:
    """RR_epsilon over k labels keeps the true label with probability e^eps / (e^eps + k - 1)."""
    if k <= 1:
        return 1.0
    return 1.0 / (1.0 + (k - 1) * math.exp(-epsilon))  # stable for large epsilon


def rr_top_k(prior: np.ndarray, epsilon: float) -> int:
    """RRWithPrior's k (Ghazi et al. 2021, Alg. 2): the k maximising the chance of outputting the
    true label, (sum of the k largest prior probabilities) * e^eps / (e^eps + k - 1)."""
    top = np.sort(np.asarray(prior, dtype=np.float64) / np.sum(prior))[::-1]
    value = [top[:k].sum() * keep_probability(epsilon, k) for k in range(1, len(top) + 1)]
    return int(np.argmax(value)) + 1


def randomised_response(y: torch.Tensor, epsilon: float, *, prior: np.ndarray | None = None,
                        generator: torch.Generator | None = None,
                        n_classes: int = N_CLASSES) -> torch.Tensor:
    """epsilon-label-DP labels: RR_epsilon over all K classes, or RRWithPrior given a prior.

    Without a prior: keep y with probability e^eps / (e^eps + K - 1), else output one of the
    other K - 1 classes uniformly. With a prior (Ghazi et al. 2021, Alg. 2): restrict the output
    to the k = :func:`rr_top_k` classes of largest prior; a label among them goes through RR over
    those k, a label outside them is replaced by a uniform draw from them. Both are epsilon-DP
    for one label (any two inputs give any output with probability ratio <= e^eps).

    Shape:
        y: (N,) int64 in [0, K) -> (N,) int64.
    """
    k_all = n_classes
    classes = (torch.arange(k_all) if prior is None else
               torch.from_numpy(np.argsort(-np.asarray(prior), kind="stable")
                                [:rr_top_k(prior, epsilon)].copy()))
    k = len(classes)
    y = y.long()
    pos = torch.full((k_all,), -1, dtype=torch.long)
    pos[classes] = torch.arange(k)
    inside = pos[y] >= 0
    u = torch.rand(len(y), generator=generator)
    other = torch.randint(0, max(k - 1, 1), (len(y),), generator=generator)
    uniform = torch.randint(0, k, (len(y),), generator=generator)
    keep = u < keep_probability(epsilon, k)
    p_in = pos[y].clamp(min=0)
    flipped = other + (other >= p_in).long()  # one of the other k - 1, uniformly
    out_pos = torch.where(inside, torch.where(keep, p_in, flipped), uniform)
    return classes[out_pos.clamp(max=k - 1)]


@register("labeldp")
class LabelDP(Defense):
    """Label DP by randomised response (Ghazi et al., "Deep Learning with Label Differential
    Privacy", NeurIPS 2021): every label the client sends (vanilla topology) is an
    epsilon-label-DP release of the true one.

    Each training beat's label is randomised once, when the defense attaches (seeded), and that
    noisy label is what crosses in every epoch: the server sees one epsilon-DP release per beat,
    however many epochs it is sent (resending is post-processing). ``prior=true`` is RR-with-
    prior (their Alg. 2) with a prior over the classes: ``protocol`` (the class frequencies the
    data protocol draws by design, :data:`PUBLIC_PRIOR`, public, an estimate the attacker
    equally knows), ``uniform``, or ``train`` (the class frequencies of the client's own
    training labels: a dataset without a public prior; data-dependent, and these counts, which
    the run's dataset card also publishes, are outside the claim). Ghazi et al. take the prior
    from a model trained on an earlier stage's noisy labels (multi-stage training); one stage
    with a public prior is the simplest instance. A class-frequency prior concentrates the
    output on the frequent classes, which keeps more labels right at small epsilon at the cost
    of the rare ones (the protocol draws A beats at 0.4 times the others: at epsilon 1 the top-4
    classes are kept and A is never output).

    Notes:
        The claim covers the labels only (privacy unit: one beat's label, replace-one
        adjacency, as in Ghazi et al.); the activations the client also sends are not
        protected. The U-shaped topology sends no labels: the defense refuses it.
    """

    @dataclass
    class Config:
        """Parameters of ``labeldp``.

        Attributes:
            epsilon: label-DP epsilon of each beat's one label release (> 0, finite).
            prior: RR-with-prior (top-k classes of the prior) instead of RR over all classes.
            prior_source: the prior of ``prior=true``: ``protocol`` (the class frequencies the
                MIT-BIH protocol draws by design), ``uniform`` or ``train`` (the training
                labels' class frequencies, outside the claim).
            seed: seed of the draws; None = torch's initial seed when attached (the run's seed).
        """

        epsilon: float = 1.0
        prior: bool = False
        prior_source: str = "protocol"
        seed: int | None = None

        def __post_init__(self) -> None:
            if not (math.isfinite(self.epsilon) and self.epsilon > 0):
                raise ValueError(f"defense 'labeldp': epsilon must be finite and > 0, "
                                 f"got {self.epsilon}")
            if self.prior_source not in PRIOR_SOURCES:
                raise ValueError(f"defense 'labeldp': prior_source must be one of "
                                 f"{PRIOR_SOURCES}, got {self.prior_source!r}")

    per_beat_claim = True

    def __init__(self, config: Config) -> None:
        self.config = config
        self._noisy: torch.Tensor | None = None
        self._kept: float | None = None
        self._train_prior: np.ndarray | None = None

    def prior(self) -> np.ndarray | None:
        """The prior of RR-with-prior (None: plain RR)."""
        if not self.config.prior:
            return None
        if self.config.prior_source == "uniform":
            return np.full(self.n_classes, 1.0 / self.n_classes)
        if self.config.prior_source == "train":
            if self._train_prior is None:
                raise ValueError("defense 'labeldp': prior_source=train reads the training "
                                 "labels: attach the defense first")
            return self._train_prior
        p = np.asarray(PUBLIC_PRIOR, dtype=np.float64)
        if len(p) != self.n_classes:
            raise ValueError(f"defense 'labeldp': prior_source=protocol is MIT-BIH's prior over "
                             f"{len(p)} classes, the run has {self.n_classes}; use "
                             "prior_source=uniform or prior=false")
        return p / p.sum()

    def attach(self, client: ClientView) -> None:
        """Draw every training beat's noisy label once."""
        if client.ushape:
            raise ValueError("defense 'labeldp': the U-shaped topology sends no labels; "
                             "labeldp protects the labels of the vanilla topology")
        seed = self.config.seed if self.config.seed is not None else torch.initial_seed()
        gen = torch.Generator().manual_seed(stream_seed(seed, "labeldp"))
        y = client.y.cpu()
        if self.config.prior and self.config.prior_source == "train":
            counts = np.bincount(y.numpy(), minlength=self.n_classes).astype(np.float64)
            self._train_prior = counts / max(counts.sum(), 1.0)
        self._noisy = randomised_response(y, self.config.epsilon, prior=self.prior(),
                                          generator=gen, n_classes=self.n_classes
                                          ).to(client.y.device)
        self._kept = float((self._noisy.cpu() == y).float().mean()) if len(y) else None

    def transform_labels(self, y: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor:
        if self._noisy is not None:
            return self._noisy[ids]  # the same noisy label every epoch: one release per beat
        return randomised_response(y.cpu(), self.config.epsilon,  # a fresh release
                                   prior=self.prior(), n_classes=self.n_classes).to(y.device)

    def report(self) -> PrivacyClaim:
        c = self.config
        prior = self.prior()
        k = self.n_classes if prior is None else rr_top_k(prior, c.epsilon)
        return PrivacyClaim(
            name=self.name, formal=True,
            mechanism="randomised response with prior" if c.prior else "randomised response",
            privacy_unit="one beat's label", scope="the labels the client sends (vanilla "
            "topology), each training beat's drawn once and resent unchanged",
            epsilon=c.epsilon, delta=0.0, accountant="randomised response (pure epsilon-DP)",
            conditions=["labels only: the activations sent beside them are not covered",
                        "replace-one adjacency on one beat's label (Ghazi et al. 2021)"]
            + ([PRIOR_CONDITION.get(c.prior_source, "the prior is data-independent ("
                                    + c.prior_source + ")")] if c.prior else []),
            details={"prior": c.prior, "prior_source": c.prior_source if c.prior else None,
                     "output_classes": k, "keep_probability": keep_probability(c.epsilon, k),
                     "kept_fraction": self._kept},
        )


__all__ = ["PUBLIC_PRIOR", "LabelDP", "keep_probability", "randomised_response", "rr_top_k"]
