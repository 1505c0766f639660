"""Identity inference (ECG biometrics): which enrolled patient sent these activations?

The server enrols N patients from beats it holds of each, labelled with their patient (the
``enrol:F`` aux set: the first part of every record, paired with what it received for them by
id; ``attacks.runs``), then names the patient of victim beats from the later part of the records,
disjoint in time: closed set, top-1 and top-5 among the N, from one beat and from a window of w
consecutive beats of one patient (the patient's victims in time order, cut into windows of w;
each window's scores summed over its beats).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from attacks.base import (
    Attack,
    AttackBudget,
    AttackInputError,
    AttackResult,
    CommonConfig,
    GroundTruth,
    Knowledge,
    observe_victims,
)
from attacks.inversion import InversionAttack, aux_activations, aux_subset, observation_windows
from attacks.metrics import wilson_interval
from attacks.registry import build_attack, register
from attacks.releases import Windowed, check_releases, pick
from splitpriv.channel import Kind, Transcript

#: the study's windows of consecutive beats (``identity_top1_w10`` ...)
STUDY_WINDOWS = (1, 10, 50)


@dataclass
class IdentityConfig(CommonConfig):
    """Attributes:
        windows: numbers of consecutive beats of one patient scored together, comma-separated.
        holdout: fraction of each patient's enrolment beats held out to choose the attacker
            (the ``strongest`` rule: best held-out top-1, never the victims).
        inversion: the inversion attack whose reconstructions the beat-space candidates match
            (``ridge``, what the studies use: closed form, seconds; ``decoder``, ``mlp``),
            fitted on the enrolment pairs; empty: activation-space candidates only.
        releases: how each beat's releases are combined (``auto``: the window of the run's
            release log best on the held-out enrolment beats; ``last``, ``all`` or a number of
            blocks).
        top: the k of top-k (besides top-1).
        enrol_beats: beats every patient is enrolled with (a seeded random choice among its
            enrolment beats); a patient with fewer is not enrolled. Equal enrolments make the
            game symmetric: an attacker who learns nothing names each patient alike, so chance
            is exactly 1/N (unequal ones tilt a nearest-centroid or LDA guess by their sizes).
    """

    windows: str = "1,10,50"
    holdout: float = 0.25
    inversion: str = "ridge"
    releases: str = "auto"
    top: int = 5
    enrol_beats: int = 20

    def __post_init__(self) -> None:
        if self.enrol_beats < 2:
            raise ValueError(f"enrol_beats must be >= 2, got {self.enrol_beats}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.top < 2:
            raise ValueError(f"top must be >= 2, got {self.top}")
        self.releases = check_releases(self.releases)
        self.window_sizes()

    def window_sizes(self) -> list[int]:
        try:
            sizes = sorted({int(w) for w in self.windows.split(",") if w.strip()})
        except ValueError:
            sizes = []
        if not sizes or sizes[0] < 1:
            raise ValueError(f"windows must be whole numbers >= 1, got {self.windows!r}")
        return sizes


class Enrolment:
    """A closed-set identifier fitted on enrolment features: ``lda`` (a shrinkage linear
    discriminant, Ledoit-Wolf, uniform priors; its log-posteriors) or ``centroid`` (nearest
    enrolment centroid of the standardised features; minus half the squared distance, so that
    a window's summed score ranks patients by its mean's distance).

    Shape:
        fit (M, D) features with (M,) patients; scores (n, D) -> (n, N) over ``patients``.
    """

    def __init__(self, kind: str, f: np.ndarray, g: np.ndarray) -> None:
        self.kind = kind
        self.patients = np.unique(g)
        self.mu, self.sd = f.mean(0), f.std(0) + 1e-8
        z = (f - self.mu) / self.sd
        if kind == "lda":  # uniform priors: the patients' sizes do not tilt the guess
            with warnings.catch_warnings():  # a patient of one beat: sklearn warns, and copes
                warnings.simplefilter("ignore", UserWarning)
                self.model = LinearDiscriminantAnalysis(
                    solver="lsqr", shrinkage="auto",
                    priors=np.full(len(self.patients), 1 / len(self.patients))).fit(z, g)
            assert np.array_equal(self.model.classes_, self.patients)
        else:
            self.centroids = np.stack([z[g == p].mean(0) for p in self.patients])

    def scores(self, f: np.ndarray) -> np.ndarray:
        z = (f - self.mu) / self.sd
        if self.kind == "lda":
            return self.model.predict_log_proba(z)
        d2 = (z ** 2).sum(1, keepdims=True) - 2 * z @ self.centroids.T \
            + (self.centroids ** 2).sum(1)[None]
        return -0.5 * d2 / z.shape[1]


def windows_of(groups: np.ndarray, order: np.ndarray, w: int) -> list[np.ndarray]:
    """Rows cut into windows of ``w`` consecutive beats of one patient: each patient's rows in
    ``order`` (time), non-overlapping, a remainder shorter than ``w`` dropped."""
    out = []
    for p in np.unique(groups):
        rows = np.flatnonzero(groups == p)
        rows = rows[np.argsort(order[rows], kind="stable")]
        out += [rows[i:i + w] for i in range(0, len(rows) - w + 1, w)]
    return out


def ranks(scores: np.ndarray, patients: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(n,) 0-based rank of each row's true patient among ``patients`` by its scores (n, N):
    the number of patients scored strictly higher."""
    col = np.searchsorted(patients, truth)
    own = scores[np.arange(len(scores)), col]
    return (scores > own[:, None]).sum(1)


def accuracy(hits: np.ndarray) -> dict[str, float]:
    n = len(hits)
    lo, hi = wilson_interval(float(hits.sum()), n) if n else (float("nan"), float("nan"))
    return {"accuracy": float(hits.mean()) if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "n": n}


def enrol(groups: np.ndarray, beats: int, holdout: float, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(enrolled, fit, held) rows of the enrolment set: ``beats`` seeded random rows of every
    patient that has as many (``enrolled``), and of each, ``holdout`` held out (at least one
    kept for fitting)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for p in np.unique(groups):
        rows = np.flatnonzero(groups == p)
        if len(rows) < beats:
            continue
        rows = rng.permutation(rows)[:beats]
        k = min(max(round(holdout * beats), 1), beats - 1)
        held += rows[:k].tolist()
        fit += rows[k:].tolist()
    return (np.sort(np.array(fit + held, dtype=np.int64)), np.sort(np.array(fit, dtype=np.int64)),
            np.sort(np.array(held, dtype=np.int64)))


@register("identity")
class IdentityAttack(Attack):
    """Closed-set identity inference from the cut activations (ECG biometrics; cf. Odinaka et
    al., "ECG Biometric Recognition: A Comparative Analysis", IEEE TIFS 2012, and arXiv
    2508.15850, about 85% of 109 people identified from their ECG).

    Candidates, each fitted on part of the enrolment beats and scored on the rest (top-1, one
    beat): a shrinkage LDA (``act-lda``) and the nearest centroid (``act-centroid``) on the
    received activations, at every way of combining each beat's releases the run allows
    (:mod:`attacks.releases`); and the same in beat space (``rec-lda``, ``rec-centroid``):
    enrolled on the attacker's true enrolment beats, matching the ``inversion`` attack's
    reconstructions (fitted on the enrolment pairs). The best held-out top-1 wins (ties to the
    earlier), is refitted on every enrolment beat and names the victims' patients.

    Shape:
        enrolment: aux x (M, 1, 128), groups (M,), activations (M, C, L) by id; victims
        (N, C, L) -> scores (N, n_patients).
    """

    citation = ("Odinaka et al., ECG Biometric Recognition: A Comparative Analysis, IEEE TIFS "
                "2012; arXiv 2508.15850; closed-set identification, top-k with Wilson intervals")
    Config = IdentityConfig
    uses = ("aux", "defenses")
    requires = ("aux",)
    #: the enrolment set when none is given: the first 30% of every record
    default_aux = "enrol:0.3"
    study_columns = {
        **{f"identity_top{k}{'' if w == 1 else f'_w{w}'}": ("windows", f"w{w}", f"top{k}",
                                                         "accuracy")
           for w in STUDY_WINDOWS for k in (1, 5)},
        "identity_top1_ci_low": ("windows", "w1", "top1", "ci_low"),
        "identity_top1_ci_high": ("windows", "w1", "top1", "ci_high"),
        "identity_chance": ("chance_top1",),
        "identity_patients": ("n_patients",),
        "identity_attack": ("winner",),
    }

    @classmethod
    def needs_aux(cls) -> bool:
        return False  # its own enrolment set (``default_aux``), not the study's aux set

    @classmethod
    def study_options(cls, budget: AttackBudget) -> dict[str, Any]:
        return {"source": "auto", "enrol_beats": budget.enrol_beats}

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth
            ) -> AttackResult:
        cfg: IdentityConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        assert aux is not None
        if aux.groups is None:
            raise AttackInputError("identity: the enrolment beats carry no patients (use "
                                   "--aux enrol:F)")
        if truth.groups is None:
            raise AttackInputError("identity: the victims' patients are unknown (HDF5 files)")
        obs = observe_victims(self, transcript, Kind.ACTIVATIONS, truth,
                              exclude=knowledge.not_victims)
        g_aux = aux.groups.numpy()
        rows, fit, held = enrol(g_aux, cfg.enrol_beats, cfg.holdout, cfg.seed)
        patients = np.unique(g_aux[rows])
        if len(patients) < 2:
            raise AttackInputError(f"identity: {len(patients)} patients have enrol_beats="
                                   f"{cfg.enrol_beats} enrolment beats; lower enrol_beats")
        if obs.groups is None:
            raise AttackInputError("identity: the victims' patients are unknown (a run on files "
                                   "without records)")
        groups = obs.groups.numpy()
        enrolled = np.isin(groups, patients)
        notes = [f"enrolment: {aux.source}; {len(patients)} of {len(np.unique(g_aux))} patients "
                 f"enrolled with {cfg.enrol_beats} beats each"]
        if not enrolled.all():
            notes.append(f"{int((~enrolled).sum())} victims of patients not enrolled left out")
        windows, note = observation_windows(self, transcript, knowledge, obs)
        notes += [note] if note else []
        fixed = pick(windows, cfg.releases)
        tried = [fixed] if fixed is not None else [w for w in windows if w.aux is not None] \
            or windows[:1]

        def flat(t: torch.Tensor) -> np.ndarray:
            return t.reshape(len(t), -1).double().numpy()

        heldout: dict[str, dict[str, Any]] = {}
        best: dict[str, Any] = {}
        for window in tried:  # activation space, every way of combining the releases
            a = flat(window.aux if window.aux is not None else aux_activations(
                self, transcript, knowledge))
            for kind in ("lda", "centroid"):
                s = Enrolment(kind, a[fit], g_aux[fit]).scores(a[held])
                name = f"act-{kind}" + ("" if len(tried) == 1 else f" ({window.name})")
                heldout[name] = self._heldout(s, patients, g_aux[held])
                if not best or heldout[name]["top1"] > heldout[best["name"]]["top1"]:
                    best = {"name": name, "kind": kind, "space": "act", "window": window}
        chosen: Windowed = best["window"]
        x_aux = flat(aux.x)
        if cfg.inversion:  # beat space: the inversion's reconstructions at the chosen window
            rec_held = self._invert(chosen, aux, fit, held, transcript, knowledge)
            for kind in ("lda", "centroid"):
                s = Enrolment(kind, x_aux[fit], g_aux[fit]).scores(flat(rec_held))
                heldout[f"rec-{kind}"] = self._heldout(s, patients, g_aux[held])
                if heldout[f"rec-{kind}"]["top1"] > heldout[best["name"]]["top1"]:
                    best = {"name": f"rec-{kind}", "kind": kind, "space": "rec",
                            "window": chosen}
        # the winner refitted on every enrolment beat, scoring the enrolled patients' victims
        victims = chosen.victims[torch.from_numpy(enrolled)]
        if best["space"] == "act":
            a_all = flat(chosen.aux if chosen.aux is not None else aux_activations(
                self, transcript, knowledge))
            scores = Enrolment(best["kind"], a_all[rows], g_aux[rows]).scores(flat(victims))
        else:
            rec = self._invert(chosen, aux, rows, None, transcript, knowledge, victims=victims)
            scores = Enrolment(best["kind"], x_aux[rows], g_aux[rows]).scores(flat(rec))
        g_v = groups[enrolled]
        y_v = obs.y.numpy()[enrolled]
        order = (truth.times[obs.ids].numpy() if truth.times is not None
                 else obs.ids.numpy())[enrolled]
        summary = self._score(scores, patients, g_v, y_v, order)
        summary.update({
            "winner": best["name"], "n_patients": len(patients),
            "chance_top1": 1 / len(patients),
            f"chance_top{cfg.top}": min(cfg.top, len(patients)) / len(patients),
            "enrolment_beats": len(rows), "heldout_beats": len(held),
            "releases": window.describe(), "inversion": cfg.inversion or None,
            "selection": {"criterion": "held-out enrolment top-1 (one beat); victims never "
                                       "consulted", "candidates": heldout},
        })
        rank1 = ranks(scores, patients, g_v)
        tried_text = ", ".join(f"{n} (held-out top-1 {r['top1']:.3f})" for n, r in heldout.items())
        return AttackResult(
            attack=self.name, summary=summary,
            scores={"ids": obs.ids.numpy()[enrolled], "patient": g_v, "rank": rank1,
                    "predicted": patients[scores.argmax(1)]},
            notes=notes + [f"winner {best['name']} of {tried_text}"])

    def _heldout(self, scores: np.ndarray, patients: np.ndarray, g: np.ndarray
                 ) -> dict[str, float]:
        r, k = ranks(scores, patients, g), self.config.top  # type: ignore[attr-defined]
        return {"top1": float((r == 0).mean()), f"top{k}": float((r < k).mean())}

    def _invert(self, window: Windowed, aux: Any, fit: np.ndarray, held: np.ndarray | None,
                transcript: Transcript, knowledge: Knowledge, *,
                victims: torch.Tensor | None = None) -> torch.Tensor:
        """The inversion fitted on the enrolment pairs ``fit`` (the window's activations) and
        applied to the ``held`` ones (or to ``victims``): (n, 1, 128) reconstructions."""
        cfg: IdentityConfig = self.config  # type: ignore[assignment]
        attack = build_attack(cfg.inversion, {"seed": cfg.seed, "threads": cfg.threads,
                                              "device": cfg.device, "releases": "last"})
        if not isinstance(attack, InversionAttack):
            raise ValueError(f"identity: inversion {cfg.inversion!r} is not an inversion attack")
        a_aux = (window.aux if window.aux is not None
                 else aux_activations(self, transcript, knowledge)).float()
        rows = torch.from_numpy(fit)
        k_fit = dataclasses.replace(knowledge, aux=aux_subset(aux, rows, a_aux, "enrolment"))
        acts = a_aux[torch.from_numpy(held)] if held is not None else victims
        assert acts is not None
        torch.manual_seed(cfg.seed)
        return attack.reconstruct(acts.float(), k_fit.restricted(attack.uses), transcript,
                                  beat_length=aux.x.shape[-1]).detach().float()

    def _score(self, scores: np.ndarray, patients: np.ndarray, g: np.ndarray, y: np.ndarray,
               order: np.ndarray) -> dict[str, Any]:
        """Top-1 and top-k of the victims per window size (each window's scores summed) and,
        for one beat, per class."""
        k = self.config.top  # type: ignore[attr-defined]
        out: dict[str, Any] = {"windows": {}, "per_class": {}}
        for w in self.config.window_sizes():  # type: ignore[attr-defined]
            wins = windows_of(g, order, w)
            if not wins:
                continue
            s = np.stack([scores[rows].sum(0) for rows in wins])
            r = ranks(s, patients, np.array([g[rows[0]] for rows in wins]))
            out["windows"][f"w{w}"] = {"top1": accuracy(r == 0), f"top{k}": accuracy(r < k),
                                       "patients": len({int(g[rows[0]]) for rows in wins})}
        r1 = ranks(scores, patients, g)
        for c in np.unique(y):
            out["per_class"][str(int(c))] = {"top1": accuracy(r1[y == c] == 0),
                                             f"top{k}": accuracy(r1[y == c] < k)}
        return out

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"winner": summary["winner"], "n_patients": summary["n_patients"],
                               "chance_top1": summary["chance_top1"]}
        for w, r in summary["windows"].items():
            for key, acc in r.items():
                if isinstance(acc, dict):
                    out[f"{key}_{w}"] = [acc["accuracy"], acc["ci_low"], acc["ci_high"]]
        return out
