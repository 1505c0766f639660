"""What the correlation-leakage measurements (``dcor``, ``dtw``) share: their config, the pairing
of each activation with an input, and the shuffled-pairs control.

These are measurements by the evaluator, not attacks that need knowledge: they compare what
crossed the cut with the private beats it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import (
    Attack,
    AttackInputError,
    CommonConfig,
    GroundTruth,
    Observed,
    observe_victims,
)
from splitpriv.channel import Kind, Transcript

PAIRINGS = ("own", "first-of-batch")


@dataclass
class LeakageConfig(CommonConfig):
    """Attributes:
        max_victims: beats measured (the paper: 10,000).
        pairing: ``own`` compares each activation with its own input; ``first-of-batch``
            reproduces the original DP-leakage code, which compared every activation with the first
            beat of its batch (batches = consecutive rows of the transcript).
        pairing_batch: the batch size for ``first-of-batch`` (the paper's 32).
        control_victims: beats in the shuffled-pairs control (each activation against another
            beat's input); 0 skips it.
    """

    max_victims: int | None = 10_000
    pairing: str = "own"
    pairing_batch: int = 32
    control_victims: int = 1000

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.pairing_batch < 1 or self.control_victims < 0:
            raise ValueError("pairing_batch must be >= 1 and control_victims >= 0")


def paired_activations(
    attack: Attack, transcript: Transcript, truth: GroundTruth
) -> tuple[Observed, torch.Tensor]:
    """The victims' activations (N, C, L) and the input (N, 1, 128) each is compared with."""
    cfg: LeakageConfig = attack.config  # type: ignore[assignment]
    obs = observe_victims(attack, transcript, Kind.ACTIVATIONS, truth)
    if obs.values.ndim != 3:
        raise AttackInputError(
            f"activations must be (N, C, L), got {tuple(obs.values.shape)}"
        )
    if cfg.pairing == "own":
        return obs, obs.x
    ids, _ = transcript.get(Kind.ACTIVATIONS, phase=cfg.phase, epoch=cfg.epoch)
    first = (obs.positions // cfg.pairing_batch) * cfg.pairing_batch  # first row of each batch
    x, _ = truth.rows(ids.long()[first])
    return obs, x


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2): row i is paired with row perm[i] != i."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]


def control_rows(n: int, cfg: LeakageConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows (k,) and the other rows (k,) their activations are compared with in the control."""
    k = min(cfg.control_victims, n)
    if k < 2:
        return None
    rows = np.sort(np.random.default_rng(cfg.seed + 1).choice(n, size=k, replace=False))
    return rows, rows[derangement(k, cfg.seed + 2)]
