"""What the inversion attacks share: victims, scoring of reconstructions, a trivial baseline, the
diagnosis check, and the optimisation loop of the model-based attacks.

An inversion attack maps the victims' activations (N, C, L) to beats (N, 1, 128). Victims are the
observed beats that the attacker's auxiliary set does not contain. Each reconstruction is scored
against its true beat (MSE, Pearson r, PRD, PRDN, SNR, DTW; see ``attacks.metrics``), reported as
distributions, with their linkage (re-identification: is a reconstruction nearer its own true beat
than k = 10 or 100 random other true beats of its class? ``attacks.metrics.linkage``), beside
these references:

* ``baselines``: the priors, what an attacker who learned nothing per beat would get, each with
  the same metrics and its own linkage (chance by construction): ``mean_beat`` (the aux mean, else
  the victims' own) and ``class_mean`` (class means, the class read where the labels crossed, else
  predicted by the server; :func:`prior_reconstructions`). ``baseline_mean_beat`` is the mean
  beat's metrics in the older flat layout;
* ``diagnosis``: the accuracy of the evaluator's reference classifier (``GroundTruth.classifier``,
  trained on beats the victims are not among) on the true beats and on the reconstructions, and how
  often its two predictions agree: does the diagnosis survive the reconstruction?
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.base import (
    Attack,
    AttackInputError,
    AttackResult,
    AuxData,
    CommonConfig,
    GroundTruth,
    Knowledge,
    Observed,
    lookup,
    observe_victims,
    observed,
)
from attacks.metrics import (
    LinkageScorer,
    distribution,
    reconstruction_metrics,
    summarize_reconstruction,
)
from attacks.releases import Windowed, check_releases, pick, recorded, release_windows
from splitpriv.channel import Kind, Transcript


@dataclass
class InversionConfig(CommonConfig):
    """Attributes:
        max_victims: beats reconstructed (a seeded random subset of the victims).
        holdout: fraction of the aux beats an attack that tunes on them holds out to choose its
            hyperparameters (and ``strongest`` its attack): chosen on the attacker's own beats,
            never on the victims.
        releases: how each beat's releases are combined, where the run kept them
            (``attacks.releases``): ``auto`` (the window whose ridge inversion links the
            attacker's held-out aux beats best), ``last`` (the attacked epoch's activations
            only), ``all`` (every release kept) or a number of the log's latest blocks.
    """

    max_victims: int | None = 1000
    holdout: float = 0.2
    releases: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        self.releases = check_releases(self.releases)


@dataclass
class OptimConfig(InversionConfig):
    """Parameters of the model-based (optimisation) inversions.

    Attributes:
        lr: Adam learning rate of the beats.
        tv: weight of the smoothness prior, the total variation mean |x[t+1] - x[t]|.
        lower, upper: bounds of a beat (the public preprocessing min-max normalises every record to
            [0, 1]); None leaves that side unbounded.
        init: the constant value every beat starts from.
    """

    lr: float = 0.01
    tv: float = 0.01
    lower: float | None = 0.0
    upper: float | None = 1.0
    init: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.tv < 0:
            raise ValueError("lr must be > 0 and tv >= 0")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")


#: the priors reported beside every inversion (:func:`prior_reconstructions`)
PRIORS = ("mean_beat", "class_mean")

#: the results.csv columns every inversion result gives (``Attack.study_columns``): the attack's
#: median r / PRD / PRDN, its linkage, and the same for each prior
INVERSION_COLUMNS: dict[str, tuple[str, ...]] = {
    "inversion_pearson_r": ("metrics", "pearson", "median"),
    "inversion_prd": ("metrics", "prd", "median"),
    "inversion_prdn": ("metrics", "prdn", "median"),
    "linkage_k10": ("linkage", "k10", "accuracy"),
    "linkage_k10_ci_low": ("linkage", "k10", "ci_low"),
    "linkage_k10_ci_high": ("linkage", "k10", "ci_high"),
    "linkage_k10_chance": ("linkage", "k10", "chance"),
    "linkage_k10_advantage": ("linkage", "k10", "advantage"),
    "linkage_k100": ("linkage", "k100", "accuracy"),
    "linkage_k100_advantage": ("linkage", "k100", "advantage"),
    "linkage_znorm_k10_advantage": ("linkage_znorm", "k10", "advantage"),
    "linkage_znorm_k100_advantage": ("linkage_znorm", "k100", "advantage"),
    "linkage_within_k10_advantage": ("linkage_within", "k10", "advantage"),
    "linkage_within_k100_advantage": ("linkage_within", "k100", "advantage"),
    "inversion_releases": ("releases", "chosen", "releases_mean"),
    "baseline_pearson_r": ("baseline_mean_beat", "pearson", "median"),
    **{f"prior_{prior}_{col}": ("baselines", prior, *path)
       for prior in PRIORS
       for col, path in (("pearson_r", ("metrics", "pearson", "median")),
                         ("prdn", ("metrics", "prdn", "median")),
                         ("linkage_k10", ("linkage", "k10", "accuracy")),
                         ("linkage_k10_advantage", ("linkage", "k10", "advantage")))},
}


def split_aux(n: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (fit, held) of a seeded random split of ``n`` aux beats, ``holdout`` of them
    (at least 2, at most n - 2) held out for the attacker's own tuning and model choice.

    Raises:
        AttackInputError: fewer than 4 aux beats.
    """
    if n < 4:
        raise AttackInputError(f"{n} aux beats cannot be split for held-out tuning (need 4)")
    n_held = min(max(2, int(round(holdout * n))), n - 2)
    perm = torch.from_numpy(np.random.default_rng(seed + 7).permutation(n))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def aux_subset(aux: AuxData, rows: torch.Tensor, activations: torch.Tensor,
               what: str) -> AuxData:
    """The aux beats ``rows`` with their activations given explicitly."""
    return AuxData(x=aux.x[rows], y=aux.y[rows], activations=activations[rows],
                   source=f"{aux.source}; {what} ({len(rows)} beats)")


def known_labels(transcript: Transcript, ids: torch.Tensor,
                 cfg: CommonConfig) -> torch.Tensor | None:
    """The victims' labels as they crossed the channel (vanilla topology: in the clear), or None
    when the transcript holds no label message of the attacked phase for every victim."""
    try:
        got_ids, labels = transcript.get(Kind.LABELS, phase=cfg.phase, epoch=cfg.epoch)
    except KeyError:
        return None
    where = {int(i): k for k, i in enumerate(got_ids.tolist())}
    if not all(int(i) in where for i in ids.tolist()):
        return None
    return labels[torch.tensor([where[int(i)] for i in ids.tolist()], dtype=torch.long)].long()


def predicted_labels(a_aux: torch.Tensor, y_aux: torch.Tensor, acts: torch.Tensor,
                     seed: int) -> torch.Tensor:
    """The server's own class predictions for the victims when no label crossed (U-shape): a
    multinomial logistic regression on the standardised flattened aux activations.

    Shape:
        a_aux: (M, C, L), y_aux: (M,), acts: (N, C, L) -> (N,).
    """
    from sklearn.linear_model import LogisticRegression

    a_aux, y_aux, acts = a_aux.detach().cpu(), y_aux.detach().cpu(), acts.detach().cpu()
    key = _digest(a_aux, y_aux, acts, seed)
    if _PREDICTED.get("key") == key:  # the same question as last time (a prior and a candidate)
        return _PREDICTED["labels"].clone()
    fa, fv = a_aux.reshape(len(a_aux), -1).double(), acts.reshape(len(acts), -1).double()
    mu, sd = fa.mean(0), fa.std(0).clamp(min=1e-6)
    y = y_aux.numpy()
    if len(np.unique(y)) < 2:
        return torch.full((len(acts),), int(y[0]), dtype=torch.long)
    clf = LogisticRegression(max_iter=300, C=1.0, random_state=seed)
    clf.fit(((fa - mu) / sd).numpy(), y)
    labels = torch.from_numpy(clf.predict(((fv - mu) / sd).numpy())).long()
    _PREDICTED.clear()
    _PREDICTED.update(key=key, labels=labels.clone())
    return labels


#: the last :func:`predicted_labels` (its inputs' digest and its labels): ``strongest`` asks the
#: same for its class-mean candidate and for the class-mean prior every inversion reports
_PREDICTED: dict = {}


def _digest(*parts: torch.Tensor | int) -> tuple:
    """A key of exact tensor contents (dtype, shape and bytes) and ints."""
    out: list = []
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.contiguous()
            out += [str(t.dtype), tuple(t.shape),
                    hashlib.blake2b(t.numpy().tobytes(), digest_size=16).hexdigest()]
        else:
            out.append(p)
    return tuple(out)


def class_mean_beats(x_ref: torch.Tensor, y_ref: torch.Tensor, classes: torch.Tensor
                     ) -> torch.Tensor:
    """Each victim's class mean beat (the overall mean where the reference lacks its class).

    Shape:
        x_ref: (M, 1, L), y_ref: (M,), classes: (N,) -> (N, 1, L) float64.
    """
    x_ref = x_ref.double()
    overall = x_ref.mean(0)
    means = {int(c): x_ref[y_ref == c].mean(0) for c in torch.unique(y_ref)}
    return torch.stack([means.get(int(c), overall) for c in classes])


def prior_reconstructions(obs: Observed, knowledge: Knowledge, transcript: Transcript,
                          a_aux: torch.Tensor | None, cfg: CommonConfig
                          ) -> dict[str, tuple[torch.Tensor, str]]:
    """The priors' reconstructions of the victims, an attacker who learned nothing per beat:

    * ``mean_beat``: the aux mean beat (no aux set: the victims' own mean, an evaluator's
      reference);
    * ``class_mean``: the mean aux beat of each victim's class, the class known where the labels
      crossed (vanilla topology: read from the transcript's label messages), else predicted by the
      server from the activations (a logistic regression on the aux activations, U-shape), else
      (no aux set) the victims' own class means under their true labels (an evaluator's
      reference).

    Returns {name: ((N, 1, L) float64 reconstructions, their source in words)}.
    """
    aux = knowledge.aux
    ref_x, ref_y = (aux.x, aux.y) if aux is not None else (obs.x, obs.y)
    ref = "aux" if aux is not None else "victims' own (evaluator reference, no aux set)"
    mean = ref_x.double().mean(0, keepdim=True).expand(len(obs.x), -1, -1)
    classes, how = known_labels(transcript, obs.ids, cfg), "labels crossed in the clear"
    if classes is None and aux is not None and a_aux is not None:
        classes = predicted_labels(a_aux, aux.y, obs.values.float(), cfg.seed)
        how = "classes predicted by the server (logistic regression on the aux activations)"
    if classes is None:
        classes, how = obs.y, "true classes (evaluator reference)"
    return {
        "mean_beat": (mean, f"{ref} mean beat"),
        "class_mean": (class_mean_beats(ref_x, ref_y, classes), f"{ref} class means; {how}"),
    }


def victims_scorer(obs: Observed, truth: GroundTruth, seed: int) -> LinkageScorer:
    """The victims' linkage game: candidates from the phase's ground truth (same class; within
    patient too where the records are known)."""
    return LinkageScorer(obs.x, obs.y, pool_x=truth.x, pool_y=truth.y, seed=seed,
                         groups=obs.groups, pool_groups=truth.groups)


def score_reconstructions(x_hat: torch.Tensor, obs: Observed, truth: GroundTruth, seed: int,
                          *, scorer: LinkageScorer | None = None
                          ) -> tuple[dict, dict[str, np.ndarray]]:
    """Metric distributions and linkage of reconstructions (N, 1, L) of the victims ``obs``,
    candidates drawn from the phase's ground truth (same class, not the victim's own beat);
    returns the summary part and the per-beat metrics. ``scorer``: the victims' linkage
    candidates already drawn (a :class:`~attacks.metrics.LinkageScorer` of ``obs`` against the
    ground truth with ``seed``), for scoring several reconstructions of them."""
    metrics = reconstruction_metrics(obs.x, x_hat)
    link = (scorer or victims_scorer(obs, truth, seed)).report(x_hat)
    return {"metrics": summarize_reconstruction(metrics), **link}, metrics


class InversionAttack(Attack):
    """Base of the inversion attacks: subclasses implement :meth:`reconstruct`.

    Every result carries, besides the metrics of the reconstructions, their linkage
    (re-identification among k = 10 and 100 other true beats of the victim's class, by MSE and
    z-normalised; ``attacks.metrics.linkage_report``) and the same for each prior
    (``baselines``: ``mean_beat``, ``class_mean``; :func:`prior_reconstructions`).
    """

    Config = InversionConfig
    config: InversionConfig
    study_columns = INVERSION_COLUMNS
    #: the shared scoring of this run's victims (observations, truth, scorer), while it runs
    _scores: dict[str, Any] | None = None

    @classmethod
    def study_options(cls, budget):
        return {"source": "auto", "max_victims": budget.decoder_victims,
                "reference_epochs": budget.reference_epochs, "device": budget.attack_device}

    def _score_cache(self, obs: Observed, truth: GroundTruth) -> dict[str, Any]:
        cache = self._scores
        if cache is None or cache["obs"] is not obs or cache["truth"] is not truth:
            scorer = victims_scorer(obs, truth, self.config.seed)
            cache = self._scores = {"obs": obs, "truth": truth, "scorer": scorer, "done": []}
        return cache

    def victims_scorer(self, obs: Observed, truth: GroundTruth) -> LinkageScorer:
        """The victims' linkage game of this :meth:`run` (its candidates drawn once)."""
        return self._score_cache(obs, truth)["scorer"]

    def score(self, x_hat: torch.Tensor, obs: Observed, truth: GroundTruth
              ) -> tuple[dict, dict[str, np.ndarray]]:
        """:func:`score_reconstructions` of ``x_hat``, within one :meth:`run`: the victims'
        linkage candidates drawn once, and a reconstruction scored before (the same values and
        dtype) not scored again. The same numbers as scoring each afresh."""
        cache = self._score_cache(obs, truth)
        x_hat = x_hat.detach().cpu()
        for rec, out in cache["done"]:
            if rec.dtype == x_hat.dtype and rec.shape == x_hat.shape and torch.equal(rec, x_hat):
                return copy.deepcopy(out)
        out = score_reconstructions(x_hat, obs, truth, self.config.seed, scorer=cache["scorer"])
        cache["done"].append((x_hat.clone(), out))
        return copy.deepcopy(out)

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth) -> AttackResult:
        try:
            return self._run(transcript, knowledge, truth)
        finally:
            self._scores = None  # the shared scoring of this run's victims

    def _run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth
             ) -> AttackResult:
        cfg = self.config
        obs = observe_victims(
            self, transcript, Kind.ACTIVATIONS, truth, exclude=knowledge.not_victims
        )
        if obs.values.ndim != 3:
            raise AttackInputError(f"activations must be (N, C, L), got {tuple(obs.values.shape)}")
        #: the victims' sample ids, for an attack that uses what crossed with them (labels)
        self.victim_ids = obs.ids
        #: every way of combining the victims' releases, and the one this attack inverts
        self.windows, self.window, tried, note = self.release_choice(transcript, knowledge, obs)
        acts = self.window.victims.float()  # (N, C, L)
        knowledge = with_window(knowledge, self.window)
        x_hat = self.reconstruct(acts, knowledge, transcript, beat_length=truth.x.shape[-1])
        if x_hat.shape != obs.x.shape:
            raise RuntimeError(f"{self.name}: reconstructions {tuple(x_hat.shape)} for beats "
                               f"{tuple(obs.x.shape)}")
        x_hat = x_hat.detach().float().cpu()
        scored, metrics = self.score(x_hat, obs, truth)
        a_aux = (aux_activations(self, transcript, knowledge)
                 if knowledge.aux is not None and knowledge.aux.paired else None)
        baselines, flat = {}, {}
        obs = dataclasses.replace(obs, values=acts)  # what was inverted (the chosen window)
        for name, (rec, source) in prior_reconstructions(obs, knowledge, transcript, a_aux,
                                                         cfg).items():
            prior, per_beat = self.score(rec, obs, truth)
            baselines[name] = {"source": source, **prior}
            flat[name] = {"source": source, **{k: distribution(v) for k, v in per_beat.items()}}
        summary = {
            "n_victims": len(obs.ids),
            **scored,
            "baselines": baselines,
            "baseline_mean_beat": flat["mean_beat"],
            "releases": {"chosen": self.window.describe(), "tried": tried, "note": note},
            **self.describe_reconstruction(obs, truth),
        }
        scores = {"ids": obs.ids.numpy(), "y": obs.y.numpy(), **metrics,
                  "reconstructions": x_hat.reshape(len(x_hat), *(truth.input_shape or (-1,))
                                                   ).numpy()}
        if truth.classifier is not None:
            summary["diagnosis"], preds = diagnosis(truth.classifier, obs.x, x_hat, obs.y)
            scores.update(preds)
        return AttackResult(attack=self.name, summary=summary, scores=scores,
                            notes=self.notes(knowledge))

    def release_choice(self, transcript: Transcript, knowledge: Knowledge, obs: Observed
                       ) -> tuple[list[Windowed], Windowed, list[dict[str, Any]], str | None]:
        """Every way of combining the victims' releases (:func:`attacks.releases.
        release_windows`), the one ``releases`` picks (``auto``: the ridge proxy on the aux
        beats, :func:`attacks.ridge.choose_window_by_ridge`), the proxy's table and a note."""
        windows, note = observation_windows(self, transcript, knowledge, obs)
        fixed = pick(windows, self.config.releases)  # type: ignore[attr-defined]
        if fixed is not None:
            return windows, fixed, [], note
        if len(windows) == 1 or knowledge.aux is None or not knowledge.aux.paired:
            return windows, windows[0], [], note
        from attacks.ridge import choose_window_by_ridge

        best, tried = choose_window_by_ridge(windows, knowledge.aux, self.config, self.device)
        return windows, windows[best], tried, note

    def headline(self, summary):
        m, b = summary["metrics"], summary["baseline_mean_beat"]
        out = {"n_victims": summary["n_victims"]}
        for k in ("pearson", "prdn", "snr_db", "dtw"):
            out[f"{k}_median"] = m[k]["median"]
            out[f"{k}_iqr"] = [m[k]["q1"], m[k]["q3"]]
            out[f"baseline_{k}_median"] = b[k]["median"]
        for k in ("k10", "k100"):
            link = summary["linkage"][k]
            out[f"linkage_{k}"] = [link["accuracy"], link["ci_low"], link["ci_high"]]
            out[f"linkage_{k}_chance"] = link["chance"]
        for name, prior in summary["baselines"].items():
            out[f"prior_{name}_pearson_median"] = prior["metrics"]["pearson"]["median"]
            out[f"prior_{name}_linkage_k10"] = prior["linkage"]["k10"]["accuracy"]
        if "diagnosis" in summary:
            out.update(summary["diagnosis"])
        return out

    def notes(self, knowledge: Knowledge) -> list[str]:
        return []

    def refit(self, acts: torch.Tensor, knowledge: Knowledge, transcript: Transcript, *,
              beat_length: int) -> torch.Tensor:
        """The victims' reconstruction by this attack refitted on every aux beat of
        ``knowledge``, after a :meth:`reconstruct` that chose its settings (``strongest``'s
        winner). Default: :meth:`reconstruct` again (ridge tunes its penalty, then refits on
        every aux beat); the decoders train their tuned network a few epochs more on all of
        them."""
        return self.reconstruct(acts, knowledge, transcript, beat_length=beat_length)

    def describe_reconstruction(self, obs: Observed, truth: GroundTruth) -> dict:
        """Further summary entries of a subclass (after :meth:`reconstruct`); default: its
        attacker-side ``tuning`` (the grid and what the held-out aux beats chose), if any."""
        tuning = getattr(self, "tuning", None)
        return {"tuning": tuning} if tuning is not None else {}

    @abstractmethod
    def reconstruct(
        self, acts: torch.Tensor, knowledge: Knowledge, transcript: Transcript, *, beat_length: int
    ) -> torch.Tensor:
        """Beats (N, 1, beat_length) from the victims' activations (N, C, L)."""


def aux_activations(attack: Attack, transcript: Transcript, knowledge: Knowledge, *,
                    like: torch.Tensor | None = None) -> torch.Tensor:
    """The aux beats' activations: given (queried from the client), or read by id; checked to
    have the shape of the victims' activations ``like`` (N, C, L) when given."""
    aux = knowledge.aux
    assert aux is not None
    a_aux = aux.activations.float() if aux.activations is not None else None
    if a_aux is None:
        a_aux = _aux_from_transcript(attack, transcript, aux)
    if like is not None and a_aux.shape[1:] != like.shape[1:]:
        raise AttackInputError(f"aux activations {tuple(a_aux.shape[1:])} and victims' "
                               f"{tuple(like.shape[1:])} differ in shape")
    return a_aux


def aux_pairs(attack: Attack, acts: torch.Tensor, knowledge: Knowledge, transcript: Transcript
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What an attack that learns from the aux pairs starts from: their activations (M, C, L),
    checked against the victims' ``acts``; their beats (M, 1, L) float32; the attack's seeded
    (fit, held) split of them (:func:`split_aux`)."""
    assert knowledge.aux is not None
    a_aux = aux_activations(attack, transcript, knowledge, like=acts)
    cfg = attack.config
    fit, held = split_aux(len(a_aux), cfg.holdout, cfg.seed)  # type: ignore[attr-defined]
    return a_aux, knowledge.aux.x.float(), fit, held


def mean_beat_mse(x: torch.Tensor, fit: torch.Tensor, held: torch.Tensor) -> float:
    """The held-out MSE of the fit part's mean beat (the mean-beat prior on the aux beats)."""
    return float(((x[fit].double().mean(0) - x[held].double()) ** 2).mean())


def observation_windows(attack: Attack, transcript: Transcript, knowledge: Knowledge,
                        obs: Observed) -> tuple[list[Windowed], str | None]:
    """The victims' (and aux beats') releases combined every way the run allows
    (:func:`attacks.releases.release_windows`), the attacked activations first."""
    cfg = attack.config
    aux = knowledge.aux
    last_aux = (aux_activations(attack, transcript, knowledge)
                if aux is not None and aux.paired else None)
    paired = aux is not None and aux.ids is not None and aux.activations is None
    return release_windows(
        transcript, obs.ids, obs.values.float(),
        aux_ids=aux.ids if aux is not None and paired else None, last_aux=last_aux, phase=cfg.phase,
        epoch=cfg.epoch, recorded=recorded(transcript, Kind.ACTIVATIONS, cfg.phase, cfg.epoch))


def with_window(knowledge: Knowledge, window: Windowed) -> Knowledge:
    """``knowledge`` whose aux beats carry the window's combined activations."""
    if knowledge.aux is None or window.aux is None:
        return knowledge
    return dataclasses.replace(knowledge, aux=dataclasses.replace(
        knowledge.aux, activations=window.aux,
        source=f"{knowledge.aux.source}; releases: {window.name}"))


def _aux_from_transcript(attack: Attack, transcript: Transcript, aux: AuxData) -> torch.Tensor:
    if aux.ids is None:
        raise AttackInputError(f"attack {attack.name!r}: the aux set has neither activations "
                               "nor transcript ids to read them by")
    cfg = attack.config
    ids, values = observed(transcript, Kind.ACTIVATIONS, phase=cfg.phase, epoch=cfg.epoch,
                           attack=attack.name)
    return lookup(ids, values, aux.ids, "aux activations").float()


@torch.no_grad()
def diagnosis(
    classifier: nn.Module, x: torch.Tensor, x_hat: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Reference-classifier accuracy on the true beats and on the reconstructions."""
    classifier.eval()
    p_true = classifier(x.float()).argmax(1)
    p_rec = classifier(x_hat.float()).argmax(1)
    return (
        {
            "accuracy_on_true_beats": float((p_true == y).float().mean()),
            "accuracy_on_reconstructions": float((p_rec == y).float().mean()),
            "agreement": float((p_true == p_rec).float().mean()),
        },
        {"pred_true": p_true.numpy(), "pred_reconstruction": p_rec.numpy()},
    )


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, L) -> (N,): mean |x[t+1] - x[t]| of each beat."""
    return (x[..., 1:] - x[..., :-1]).abs().mean((-1, -2))


def clamp_(x: torch.Tensor, lower: float | None, upper: float | None) -> None:
    if lower is not None or upper is not None:
        x.clamp_(min=lower, max=upper)


def activation_loss(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, acts: torch.Tensor, tv: float
) -> torch.Tensor:
    """Sum over beats of (mean squared activation mismatch + tv * total variation): each beat's
    optimisation is independent of the others (the sum, not the mean, keeps its scale)."""
    mismatch = ((net(x) - acts) ** 2).mean((-1, -2))  # (N,)
    return (mismatch + tv * total_variation(x)).sum()


def start_beats(n: int, length: int, cfg: OptimConfig,
                device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((n, 1, length), float(cfg.init), requires_grad=True, device=device)
