"""Patient-level membership inference: were patient P's beats used to train the split model?

Offline LiRA (Carlini, Chien, Nasr, Song, Terzis & Tramer, "Membership Inference Attacks From
First Principles", IEEE S&P 2022): each beat's logit-scaled confidence in its label under the
trained model, phi = log p_y - log(1 - p_y), compared with its distribution under reference
models that the attacker trains on its own records without the patient (OUT models): the score
is (phi - mu_out) / sigma_out, sigma_out pooled over beats (the paper's "global variance",
recommended with few references). A patient's score is the mean of its beats' scores.

The game needs patients held out of training: the ``inter-patient`` protocol (DS1 trains, DS2
does not) or ``records-holdout`` (a random half of the records trains). Members are the training
records; non-members the test and validation records (validation records are carved whole from
training ones and never trained on). The attacker's own records: the patients are dealt into
``folds``; the targets of a fold are attacked with references trained on random halves of the
other folds' patients (their beats, at most ``beats_per_patient`` each; the attacker holds
their records, whoever trained on them), never on the targets' records.

Any dataset plays it over its groups (the ``groups`` of :class:`~splitpriv.datasets.
DatasetSplit`: patients, subjects) and any input shape (the attacks' flattened view,
:mod:`attacks.shapes`). With ``unit=sample`` every sample is a "patient" of its own (its dataset
row): the per-example game of Carlini et al., members the training samples, non-members the
test and validation samples never trained on; the one to play where the split holds no group
out (scikit-learn's digits: every pseudo-subject trains) or the groups are unknown (the paper's
HDF5 pair).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from attacks.base import Attack, AttackInputError, AttackResult, CommonConfig
from attacks.registry import register
from attacks.runs import RunData, query_client
from splitpriv.io import torch_threads

#: the FPRs the field reports TPR at (Carlini et al. 2022)
FPRS = (0.01, 0.001)
#: what membership is inferred of (:class:`MembershipConfig`)
UNITS = ("group", "sample")


@dataclass
class MembershipConfig(CommonConfig):
    """Attributes:
        references: reference (OUT) models per fold.
        epochs_per_reference: epochs of each reference model (the paper's network, unsplit).
        beats_per_patient: beats of each patient scored, and at most used to train references
            (a seeded random choice).
        folds: folds the patients are dealt into (the attacker's own records of a fold's
            targets: the other folds').
        unit: what membership is inferred of: ``group`` (a patient, a subject: the run's
            groups) or ``sample`` (each sample its own, Carlini et al.'s per-example game).
    """

    references: int = 4
    epochs_per_reference: int = 3
    beats_per_patient: int = 200
    folds: int = 2
    unit: str = "group"

    def __post_init__(self) -> None:
        for key, low in (("references", 1), ("epochs_per_reference", 1), ("beats_per_patient", 2),
                         ("folds", 2)):
            if getattr(self, key) < low:
                raise ValueError(f"{key} must be >= {low}, got {getattr(self, key)}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")


def logit_confidence(logits: torch.Tensor, y: torch.Tensor, *, probabilities: bool = False
                     ) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) of every row, stably (Carlini et al.'s statistic).

    Shape: logits (N, K) (probabilities when ``probabilities``), y (N,) -> (N,)."""
    logp = torch.log(logits.double().clamp_min(1e-300)) if probabilities \
        else torch.log_softmax(logits.double(), dim=1)
    own = logp.gather(1, y[:, None].long())[:, 0]
    others = logp.clone()
    others.scatter_(1, y[:, None].long(), -math.inf)
    return (own - torch.logsumexp(others, dim=1)).numpy()


def roc_report(scores: np.ndarray, member: np.ndarray) -> dict[str, Any]:
    """AUC and TPR at each FPR of :data:`FPRS`, where the sample can estimate it: a FPR below
    1 / (non-members) is not estimable (None), and ``tpr_at_min_fpr`` gives the TPR at the
    smallest one it can (the threshold just above every non-member: FPR 0).

    Shape: scores (n,), member (n,) bool."""
    member = np.asarray(member, dtype=bool)
    n_out, n_in = int((~member).sum()), int(member.sum())
    if n_out == 0 or n_in == 0:
        raise AttackInputError(f"membership: {n_in} members and {n_out} non-members")
    fpr, tpr, _ = roc_curve(member, scores)
    out: dict[str, Any] = {"auc": float(roc_auc_score(member, scores)), "members": n_in,
                           "non_members": n_out, "auc_se": hanley_mcneil_se(
                               float(roc_auc_score(member, scores)), n_in, n_out)}
    for f in FPRS:
        key = f"tpr_at_{f * 100:g}pct_fpr".replace(".", "")
        out[key] = float(tpr[fpr <= f].max()) if 1 / n_out <= f else None
    out["tpr_at_min_fpr"] = float(tpr[fpr <= 0].max())
    out["min_fpr"] = 1 / n_out
    return out


def hanley_mcneil_se(auc: float, n_in: int, n_out: int) -> float:
    """The standard error of an AUC (Hanley & McNeil, Radiology 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    var = (auc * (1 - auc) + (n_in - 1) * (q1 - auc ** 2) + (n_out - 1) * (q2 - auc ** 2)) \
        / (n_in * n_out)
    return float(math.sqrt(max(var, 0.0)))


def per_patient(scores: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patients (P,), mean score of each (P,))."""
    ids, inverse = np.unique(patients, return_inverse=True)
    return ids, np.bincount(inverse, weights=scores) / np.bincount(inverse)


def target_confidence(run: RunData, x: torch.Tensor, y: torch.Tensor, seed: int) -> np.ndarray:
    """phi of inputs (N, 1, D) (the attacks' view, :mod:`attacks.shapes`) under the run's
    trained split model: the client's activations as it sends them at inference (its defenses
    applied), in the cut's own shape, then the server (and the U-shaped head)."""
    from splitpriv.architectures import probe_shape
    from splitpriv.run import build_defenses, build_run_models, resolve_topology

    models = build_run_models(run.config, resolve_topology(run.config, build_defenses(run.config)),
                              torch.device("cpu"))
    for name, net in models.modules().items():
        net.load_state_dict(run.weights[name])
        net.eval()
    acts = query_client(run, x, training=False, seed=seed)
    acts = acts.reshape(len(acts), *probe_shape(models.client, run.input_shape))
    with torch.no_grad():
        out = models.server(acts)
        if models.head is not None:
            out = models.head(out)
    return logit_confidence(out, y, probabilities=run.config.paper_softmax)


@dataclass
class Patients:
    """Every patient (group, or sample with ``unit=sample``) of the game: records (P,), member
    (P,) bool; and the inputs scored: x (N, 1, D), y (N,), patient (N,), member (N,) bool."""

    records: np.ndarray
    member: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    patient: np.ndarray

    @property
    def beat_member(self) -> np.ndarray:
        return np.isin(self.patient, self.records[self.member])


def game(run: RunData, per_patient_beats: int, seed: int, unit: str = "group") -> Patients:
    """Members (training records) and non-members (test and validation records not trained on),
    ``per_patient_beats`` seeded random beats of each (members' from the training rows).
    ``unit=sample``: the dataset's rows in place of the records (a row drawn twice into training,
    as the ``paper`` protocol does, is one member).

    Raises:
        AttackInputError: a split that holds no group out (every record trains), or groups
            unknown (the paper's HDF5 pair)."""
    rng = np.random.default_rng(seed)
    ids = run.records if unit == "group" else run.pool_idx
    train = set(np.unique(ids["train"]).tolist())
    held = sorted(set(np.unique(np.concatenate([ids["test"], ids["val"]])).tolist()) - train)
    if (np.asarray(ids["train"]) < 0).any() or not held:
        c = run.config
        where = (f"--hdf5 {c.hdf5}" if c.hdf5 is not None else
                 f"protocol {c.protocol!r}" if c.dataset == "mitdb" else f"dataset {c.dataset!r}")
        why = ("does not know its samples' groups (-1)" if (np.asarray(ids["train"]) < 0).any()
               else "holds no patient out of training (every group trains)")
        raise AttackInputError(
            f"membership: the run's split ({where}) {why}; use --protocol inter-patient or "
            "records-holdout (MIT-BIH), a split that holds groups out, or --option unit=sample "
            "(each sample its own unit)")
    rows = {p: _rows_by_id(ids[p]) for p in ("train", "test", "val")}
    none = np.zeros(0, np.int64)
    xs, ys, ps = [], [], []
    for r in sorted(train) + held:
        phases = ("train",) if r in train else ("test", "val")
        x = torch.cat([run.x[p][rows[p].get(r, none)] for p in phases])
        y = torch.cat([run.y[p][rows[p].get(r, none)] for p in phases])
        pick = torch.from_numpy(np.sort(rng.permutation(len(y))[:per_patient_beats]))
        xs.append(x[pick])
        ys.append(y[pick])
        ps.append(np.full(len(pick), r))
    records = np.array(sorted(train) + held)
    return Patients(records, np.isin(records, sorted(train)), torch.cat(xs), torch.cat(ys),
                    np.concatenate(ps))


def _rows_by_id(ids: np.ndarray) -> dict[int, np.ndarray]:
    """{id: its rows of ``ids`` (N,), ascending}: one sort, not a mask per id."""
    order = np.argsort(ids, kind="stable")
    values, starts = np.unique(ids[order], return_index=True)
    return dict(zip(values.tolist(), np.split(order, starts[1:]), strict=True))


def reference_confidences(run: RunData, g: Patients, cfg: MembershipConfig
                          ) -> tuple[np.ndarray, np.ndarray]:
    """phi of every scored beat under ``references`` OUT models of its fold, (N, R), and each
    patient's fold (P,)."""
    from splitpriv.models import ModelConfig, build_models
    from splitpriv.trainer import train_monolithic

    n_classes = len(run.pool.classes)
    rng = np.random.default_rng(cfg.seed)
    fold = np.empty(len(g.records), dtype=int)
    for m in (True, False):  # members and non-members dealt alike into the folds
        members = rng.permutation(np.flatnonzero(g.member == m))
        fold[members] = np.arange(len(members)) % cfg.folds
    phi = np.empty((len(g.y), cfg.references))
    for f in range(cfg.folds):
        own = g.records[fold != f]  # the attacker's records for this fold's targets
        targets = np.isin(g.patient, g.records[fold == f])
        for r in range(cfg.references):
            half = rng.permutation(own)[: max(len(own) // 2, 1)]
            rows = torch.from_numpy(np.isin(g.patient, half))
            seed = cfg.seed * 1000 + f * 100 + r
            net = (build_models(ModelConfig(run.config.depth, n_classes=n_classes), seed=seed
                                ).monolithic() if run.config.model == "paper"
                   else run.reference_net(seed))  # the run's architecture, unsplit
            train_monolithic(net, g.x[rows].float(), g.y[rows].long(),
                             epochs=cfg.epochs_per_reference, seed=seed)
            net.eval()
            with torch.no_grad():
                phi[targets, r] = logit_confidence(net(g.x[torch.from_numpy(targets)].float()),
                                                   g.y[torch.from_numpy(targets)])
    return phi, fold


@register("membership")
class MembershipAttack(Attack):
    """Offline LiRA at the patient level (module docstring). It attacks a whole run (its trained
    model and records), not its transcript: ``attacks.cli.run_attack`` calls :meth:`attack_run`.

    Shape: inputs (N, 1, D) (beats (N, 1, 128); any input flattened, :mod:`attacks.shapes`)
    of P patients (groups, or samples) -> scores (N,) per beat, (P,) per patient.
    """

    citation = ("Carlini, Chien, Nasr, Song, Terzis & Tramer, Membership Inference Attacks "
                "From First Principles, IEEE S&P 2022 (offline LiRA, global variance)")
    Config = MembershipConfig
    study_columns = {
        "membership_auc": ("patient", "auc"),
        "membership_auc_se": ("patient", "auc_se"),
        "membership_tpr_at_1pct_fpr": ("beat", "tpr_at_1pct_fpr"),
        "membership_tpr_at_01pct_fpr": ("beat", "tpr_at_01pct_fpr"),
        "membership_beat_auc": ("beat", "auc"),
        "membership_patient_tpr_at_0_fpr": ("patient", "tpr_at_min_fpr"),
        "membership_patients": ("patients",),
        "membership_non_members": ("patient", "non_members"),
    }

    @classmethod
    def study_options(cls, budget):
        return {}

    def run(self, transcript, knowledge, truth):
        raise AttackInputError("membership attacks a whole run (its model and records), not a "
                               "transcript: splitpriv attack membership --run DIR")

    def attack_run(self, run: RunData) -> AttackResult:
        """Attack ``run``; the result's summary holds ``beat`` and ``patient`` ROC reports."""
        cfg: MembershipConfig = self.config  # type: ignore[assignment]
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        with torch_threads(cfg.threads):
            g = game(run, cfg.beats_per_patient, cfg.seed, cfg.unit)
            phi = target_confidence(run, g.x, g.y, cfg.seed)
            t_ref = time.perf_counter()
            ref, fold = reference_confidences(run, g, cfg)
            ref_seconds = time.perf_counter() - t_ref
        sigma = float(np.sqrt(ref.var(axis=1, ddof=1).mean())) if cfg.references > 1 \
            else float(ref.std())
        scores = (phi - ref.mean(1)) / max(sigma, 1e-12)
        patients, p_scores = per_patient(scores, g.patient)
        assert np.array_equal(patients, np.unique(g.records))
        member_p = np.isin(patients, g.records[g.member])
        summary: dict[str, Any] = {
            "beat": roc_report(scores, g.beat_member),
            "patient": roc_report(p_scores, member_p),
            "patients": len(patients), "beats": len(scores), "sigma_out": sigma,
            "protocol": run.config.protocol, "unit": cfg.unit,
            "cost": {"reference_models": cfg.folds * cfg.references,
                     "epochs_per_reference": cfg.epochs_per_reference,
                     "reference_train_beats_mean": float(np.mean([
                         (np.isin(g.patient, g.records[fold != f])).sum() / 2
                         for f in range(cfg.folds)])),
                     "seconds": ref_seconds},
        }
        units = "patients" if cfg.unit == "group" else "samples"
        net = ("the paper's network" if run.config.model == "paper"
               else f"the run's {run.config.model!r}")
        notes = [
            f"{int(member_p.sum())} member and {int((~member_p).sum())} non-member {units}: "
            f"per patient, the smallest FPR the sample can show is 1/{int((~member_p).sum())}"
            f" = {1 / (~member_p).sum():.3g}; a TPR at a smaller FPR is not estimable (None)",
            "per-beat rates treat beats as independent; the beats of one patient are not, so "
            "their intervals would be too narrow (none is given)",
            f"{cfg.folds * cfg.references} reference models, {net} unsplit, "
            f"{cfg.epochs_per_reference} epochs on "
            f"~{summary['cost']['reference_train_beats_mean']:.0f} beats each, trained without "
            "the run's defenses",
        ]
        return AttackResult(
            attack=self.name, summary=summary,
            scores={"patient": g.patient, "member": g.beat_member, "score": scores, "phi": phi,
                    "phi_reference": ref},
            config=asdict(cfg), citation=self.citation,
            seconds=time.perf_counter() - t0, notes=notes)

    def headline(self, summary):
        out = {"patients": summary["patients"], "beats": summary["beats"]}
        for level in ("patient", "beat"):
            for k, v in summary[level].items():
                if k not in ("members", "non_members"):
                    out[f"{level}_{k}"] = v
        return out
