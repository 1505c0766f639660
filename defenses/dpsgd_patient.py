"""Patient-level DP-SGD on the client's layers: each patient is one privacy unit.

User-level DP-SGD (McMahan, Ramage, Talwar & Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018, where the unit is a user's data) in the split client: at every step
each patient is sampled independently with probability ``patient_rate`` (Poisson); the per-beat
gradients of the step's batch are summed per sampled patient, each patient's sum clipped to
``max_grad_norm`` (L2, over all client parameters), Gaussian noise of std
``noise_multiplier * max_grad_norm`` added to their total, divided by the expected number of
sampled patients. A patient then changes a step's noisy sum by at most ``max_grad_norm``, and
only when sampled: the subsampled Gaussian mechanism at rate ``patient_rate``, accounted by the
same accountants as ``dpsgd`` (``defenses.accounting``), one step per optimizer step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer

from defenses.accounting import stream_seed
from defenses.dpsgd import ClientDPSGD
from defenses.registry import register
from splitpriv.defense import ClientView, PrivacyClaim


def _bad(msg: str) -> ValueError:
    return ValueError(f"defense 'dpsgd-patient': {msg}")


class PatientDPOptimizer(DPOptimizer):
    """Opacus's DP optimizer whose per-sample gradients are first summed per sampled patient
    (``groups``: the sampled patient's index of every row of the step's batch, -1 for a row of
    a patient not sampled), so that it clips and noises one gradient per patient.

    Shape: ``p.grad_sample`` (B, ...) -> (G, ...), G the sampled patients in the batch (one zero
    row when none is: the step is noise alone)."""

    groups: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        groups = self.groups
        if groups is None:
            raise _bad("a step without its batch's patients (observe_gradient was not called)")
        keep = groups >= 0
        n = int(groups.max()) + 1 if keep.any() else 1
        for p in self.params:
            gs = self._get_flat_grad_sample(p)
            summed = torch.zeros((n, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
            summed.index_add_(0, groups[keep].to(gs.device), gs[keep.to(gs.device)])
            p.grad_sample = summed
        self.groups = None
        super().clip_and_accumulate()


@register("dpsgd-patient")
class PatientDPSGD(ClientDPSGD):
    """DP-SGD whose privacy unit is one patient (module docstring); the noise, the accountants
    and the client optimizer are ``dpsgd``'s.

    Notes:
        Privacy unit: one patient, all of its training beats (add/remove), as the accountant
        assumes Poisson sampling of patients at ``patient_rate``, which the defense draws itself.
        The trainer still forms its batches by shuffling beats; a patient's sampled beats in a
        step are those of the step's batch, and adding or removing a patient reshuffles the
        others' batches: the same gap as ``dpsgd``'s fixed-size batches, stated in the claim.
        It needs the patient of every training row (``provide_patients``, given by an
        in-process run; a run on the paper's HDF5 files, without records, is refused).
    """

    @dataclass
    class Config(ClientDPSGD.Config):
        """Parameters of ``dpsgd-patient`` (those of ``dpsgd``, and):

        Attributes:
            patient_rate: the probability that a patient is sampled at a step (Poisson), the
                accountant's sampling rate.
        """

        patient_rate: float = 0.5

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0 < self.patient_rate <= 1:
                raise _bad(f"patient_rate must be in (0, 1], got {self.patient_rate}")

    per_beat_claim = False  # a beat drawn twice is still one patient's
    optimizer_class = PatientDPOptimizer

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.patients: np.ndarray | None = None  # (N,) the patient of each training row
        self._coins: torch.Generator | None = None
        self._coin_epoch: int | None = None

    def provide_patients(self, records: np.ndarray) -> None:
        records = np.asarray(records)
        if len(records) == 0 or (records < 0).any():
            raise _bad("the training rows' patients are unknown (the paper's HDF5 files have no "
                       "record numbers)")
        self.patients = np.unique(records, return_inverse=True)[1]

    @property
    def n_patients(self) -> int:
        return 0 if self.patients is None else int(self.patients.max()) + 1

    @property
    def sample_rate(self) -> float:
        return self.config.patient_rate  # type: ignore[attr-defined]

    @property
    def expected_batch_size(self) -> int:
        """The expected number of sampled patients per step."""
        return max(1, round(self.sample_rate * self.n_patients))

    def attach(self, client: ClientView) -> None:
        """As ``dpsgd``'s; the patients are checked at the first training step (a client
        attached only to be queried, as the attacks do, trains none)."""
        if self.patients is not None and len(self.patients) != len(client.y):
            raise _bad(f"{len(self.patients)} patients given for {len(client.y)} training rows")
        super().attach(client)
        self._coins = torch.Generator().manual_seed(stream_seed(self._base_seed, "patients", None))

    def observe_gradient(self, g: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor | None:
        """Draw this step's patients and tell the optimizer each row's sampled patient."""
        if self.patients is None:
            raise _bad("needs the patient of every training row (provide_patients), which an "
                       "in-process run gives; a distributed client does not")
        assert self._coins is not None
        if self._epoch != self._coin_epoch:  # a fresh stream per epoch, as the noise's
            self._coins.manual_seed(stream_seed(self._base_seed, "patients", self._epoch))
            self._coin_epoch = self._epoch
        sampled = torch.rand(self.n_patients, generator=self._coins) < self.sample_rate
        rows = torch.as_tensor(self.patients[ids.cpu().numpy()])
        index = torch.full((self.n_patients,), -1, dtype=torch.long)
        chosen = torch.unique(rows[sampled[rows]])
        index[chosen] = torch.arange(len(chosen))
        assert isinstance(self.optimizer, PatientDPOptimizer)
        self.optimizer.groups = index[rows]
        return g

    def report(self) -> PrivacyClaim:
        claim = super().report()
        details: dict[str, Any] = claim.details | {
            "patient_rate": self.sample_rate, "patients": self.n_patients,
            "expected_patients_per_step": self.expected_batch_size}
        conditions = [c for c in claim.conditions if not c.startswith("accountant assumes")]
        conditions.append("patients Poisson-sampled per step by the defense; the trainer "
                          "shuffles beats into fixed-size batches, which adding or removing a "
                          "patient reshuffles")
        return dataclasses.replace(
            claim, privacy_unit="one patient: all of its training beats (add/remove); labels "
                                "not protected",
            per_patient=True, conditions=conditions, details=details)


__all__ = ["PatientDPSGD", "PatientDPOptimizer"]
