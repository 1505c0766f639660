"""The strongest inversion of a run: every candidate inversion attack, the one that re-identifies
the attacker's own held-out beats best reported as the run's inversion result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attacks.base import AttackInputError, Knowledge
from attacks.inversion import (
    INVERSION_COLUMNS,
    InversionAttack,
    InversionConfig,
    aux_activations,
    aux_subset,
    class_mean_beats,
    known_labels,
    predicted_labels,
    split_aux,
)
from attacks.match import ActivationMatch, fit_on
from attacks.metrics import LinkageScorer, reconstruction_metrics
from attacks.registry import build_attack, register


@dataclass
class StrongestConfig(InversionConfig):
    """Attributes:
        candidates: the inversion attacks tried, comma-separated (``ridge``, ``decoder``,
            ``mlp``; ``whitebox`` and ``unsplit`` optional: they need the client's weights or
            architecture).
        matchers: the activation-space re-identification attacks tried, comma-separated
            (``match``: a client model learned from the aux pairs, the architecture known;
            ``match-weights``: the client's weights known; empty: none).
        decoder_epochs: the decoder candidates' epochs (held-out early stopping inside; the MLP
            decoder gets twice as many).
        decoder_lrs: the convolutional decoder's learning rates (its tuning grid; the standalone
            ``decoder`` tries 0.001 and 0.003, within 4% held-out MSE of each other on the
            studies' runs, and 0.001 was chosen on every run checked).
        decoder_width: the convolutional decoder's width (the standalone ``decoder``'s 64 costs
            twice the time for the same held-out linkage within .03 on the runs checked).
        whitebox_steps: the white-box candidate's Adam steps.
        unsplit_rounds: the UnSplit candidate's rounds.
        select_k: candidates of the held-out linkage the choice is made by.
        priors: also try the priors (``mean-beat``, ``class-mean``) as candidates, so that the
            reported reconstruction is never worse than a prior on the attacker's held-out beats.
        extra: further inversion candidates tried only where the knowledge they need is given
            and they can run, comma-separated: ``sdar`` (the server's own model and the run's
            config), ``fora`` (the client architecture), ``adaptive`` (the run's recipe, every
            defense simulable); they read the aux beats' pairs only as ``adaptive`` does
            (``attacks.sdar``, ``attacks.fora``, ``attacks.adaptive``). Empty: none.
        extra_steps: their simulated clients' training steps (None: 20 per decoder epoch, 600
            at the studies' 30).
        shadow_epochs: the adaptive candidate's shadow run's epochs (None: the run's).
    """

    candidates: str = "ridge,decoder,mlp"
    matchers: str = "match"
    decoder_epochs: int = 60
    decoder_lrs: str = "0.001"
    decoder_width: int = 32
    whitebox_steps: int = 300
    unsplit_rounds: int = 50
    select_k: int = 10
    priors: bool = True
    extra: str = "sdar,fora,adaptive"
    extra_steps: int | None = None
    shadow_epochs: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.names():
            raise ValueError("candidates must name at least one inversion attack")
        if min(self.decoder_epochs, self.whitebox_steps, self.unsplit_rounds, self.select_k) < 1:
            raise ValueError("decoder_epochs, whitebox_steps, unsplit_rounds and select_k must "
                             "be >= 1")

    def names(self) -> list[str]:
        return [n.strip() for n in self.candidates.split(",") if n.strip()]

    def steps(self) -> int:
        """The extra candidates' simulator steps."""
        return self.extra_steps if self.extra_steps is not None else 20 * self.decoder_epochs

    def extra_names(self) -> list[str]:
        return [n.strip() for n in self.extra.split(",") if n.strip()]

    def matcher_names(self) -> list[str]:
        return [n.strip() for n in self.matchers.split(",") if n.strip()]

    def options(self, name: str) -> dict[str, Any]:
        """The options of candidate ``name`` (seed, held-out fraction, the main window of
        releases, and its own budget)."""
        own: dict[str, dict[str, Any]] = {
            "decoder": {"epochs": self.decoder_epochs, "lrs": self.decoder_lrs,
                        "width": self.decoder_width},
            "mlp": {"epochs": 2 * self.decoder_epochs},
            "whitebox": {"steps": self.whitebox_steps},
            "unsplit": {"rounds": self.unsplit_rounds, "max_victims": None},
            **{name: {"steps": self.steps(), "decoder_epochs": self.decoder_epochs,
                      "decoder_width": self.decoder_width}
               for name in ("sdar", "fora")},
            "adaptive": {"steps": self.steps(), "decoder_epochs": self.decoder_epochs,
                         "decoder_width": self.decoder_width,
                         "shadow_epochs": self.shadow_epochs}}
        return {"seed": self.seed, "threads": self.threads, "holdout": self.holdout,
                "device": self.device, "releases": self.releases, **own.get(name, {})}


def candidate_attacks(cfg: StrongestConfig) -> tuple[dict[str, InversionAttack],
                                                     dict[str, ActivationMatch]]:
    """The candidate inversion attacks (``candidates``, then ``extra``) and activation matchers
    of ``cfg``, built."""
    inversions, matchers = {}, {}
    for name in [*cfg.names(), *cfg.extra_names()]:
        attack = build_attack(name, cfg.options(name))
        if not isinstance(attack, InversionAttack) or isinstance(attack, StrongestInversion):
            raise ValueError(f"strongest: {name!r} is not a candidate inversion attack")
        inversions[name] = attack
    for name in cfg.matcher_names():
        attack = build_attack(name, {"seed": cfg.seed, "threads": cfg.threads,
                                     "holdout": cfg.holdout, "device": cfg.device,
                                     "releases": cfg.releases})
        if not isinstance(attack, ActivationMatch):
            raise ValueError(f"strongest: {name!r} is not an activation-space matcher")
        matchers[name] = attack
    return inversions, matchers


#: the re-identification columns of a study row (``reidentification`` of the summary): the
#: across-patient and within-patient winners' linkage of the victims, the attacks chosen, the
#: releases the across winner combined, and the headline (the larger of the two games)
REID_COLUMNS: dict[str, tuple[str, ...]] = {
    **{f"reid{g}_{k}_advantage": ("reidentification", game, k, "advantage")
       for g, game in (("", "across"), ("_within", "within")) for k in ("k10", "k100")},
    "reid_k10_ci_low": ("reidentification", "across", "k10", "ci_low"),
    "reid_k10_ci_high": ("reidentification", "across", "k10", "ci_high"),
    "reid_attack": ("reidentification", "across", "attack"),
    "reid_within_attack": ("reidentification", "within", "attack"),
    "reid_releases": ("reidentification", "across", "releases_mean"),
    "privacy_k10_advantage": ("reidentification", "headline", "k10_advantage"),
    "privacy_k100_advantage": ("reidentification", "headline", "k100_advantage"),
}


@register("strongest")
class StrongestInversion(InversionAttack):
    """The strongest of several inversion and re-identification attacks, chosen by the attacker
    on its own beats.

    ``holdout`` of the aux beats are held out. Every inversion candidate (``ridge``, the
    decoder of He, Zhang & Lee, "Model Inversion Attacks against Collaborative Inference", ACSAC
    2019, its fully connected variant ``mlp``, and optionally its white-box attack and UnSplit)
    is fitted on the rest (each tunes its own hyperparameters on a further split of those) at
    the window of releases the ridge proxy chose (``releases``, :mod:`attacks.releases`), and
    reconstructs the held-out beats and the victims in one call; every activation-space matcher
    (``match``, :mod:`attacks.match`) chooses its own window, client model and distance on the
    same part. Each is scored by the held-out beats' linkage among ``select_k`` same-class aux
    beats, across patients and, where the aux beats' records are known, within patient.

    The ``extra`` candidates join where the knowledge they need is given (a run directory gives
    it all): ``sdar`` and ``fora`` (:mod:`attacks.sdar`, :mod:`attacks.fora`) read the fit
    part's beats as public beats (never their releases), ``adaptive`` (:mod:`attacks.adaptive`)
    trains a shadow run with the run's recipe and aligns it on the fit part's pairs; one that
    cannot run (a defense that is not simulable) is skipped and named in ``skipped``.

    Two results, each chosen on the held-out beats only (never the victims):

    * the strongest **inversion** (the reconstruction every result reports): the inversion
      candidate with the best held-out linkage among those whose linkage beats chance there
      (its Wilson interval above chance; ties to the lower held-out MSE), else the lowest
      held-out MSE, the priors among them (the fit part's mean beat, and its class means
      under the classes the server has: the labels that crossed, in the vanilla topology, else
      its own predictions from the activations), so that no reported inversion is worse than
      what the attacker gets for free;
    * the strongest **re-identification**, across patients and within patient: the candidate,
      inversions and matchers alike, with the best held-out linkage of that game above chance
      (else the inversion's). Its victims' linkage is the studies' privacy axis; the headline
      is the larger advantage of the two games.

    Each winner is then refitted on every aux beat (:meth:`InversionAttack.refit`): ridge
    tuned and refitted, the decoders and a matcher's client model trained a few epochs more
    from their tuned weights (a matcher's window and distance kept). The summary lists every
    candidate's held-out scores and, evaluator side, the inversion candidates' victims' scores.

    Shape:
        aux: x (M, 1, 128) with activations (M, C, L); victims (N, C, L) -> (N, 1, 128).
    """

    citation = ("He, Zhang & Lee, Model Inversion Attacks against Collaborative Inference, "
                "ACSAC 2019; matching in activation space; the strongest of the candidates on "
                "held-out aux beats")
    Config = StrongestConfig
    config: StrongestConfig
    uses = ("aux", "defenses")
    requires = ("aux",)
    study_columns = INVERSION_COLUMNS | {"strongest_attack": ("winner",)} | REID_COLUMNS

    def __init__(self, config: StrongestConfig | None = None) -> None:
        super().__init__(config)
        self.tried, self.matchers = candidate_attacks(self.config)  # type: ignore[arg-type]
        extra = self.config.extra_names()  # type: ignore[attr-defined]
        every = [*self.tried.values(), *self.matchers.values()]
        # the knowledge handed over: what the candidates use (an instance attribute)
        self.uses = tuple(dict.fromkeys(  # type: ignore[misc, assignment]
            u for a in every for u in ("aux", *a.uses)))
        self.requires = tuple(dict.fromkeys(  # type: ignore[misc, assignment]
            r for n, a in [*self.tried.items(), *self.matchers.items()] if n not in extra
            for r in ("aux", *a.requires)))
        self.candidates = dict(self.tried)

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"decoder_epochs": budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        assert aux is not None
        a_aux = aux_activations(self, transcript, knowledge, like=acts)  # the main window's
        fit, held = split_aux(len(a_aux), cfg.holdout, cfg.seed)
        k_fit = dataclasses.replace(knowledge, aux=aux_subset(aux, fit, a_aux, "fit part"))
        both = torch.cat([a_aux[held], acts])  # one fit reconstructs held-out beats and victims
        x_held, y_held = aux.x[held], aux.y[held]
        # every candidate's held-out linkage against the same candidates, drawn once
        self.heldout_scorer = LinkageScorer(
            x_held, y_held, pool_x=aux.x, pool_y=aux.y, seed=cfg.seed,
            groups=None if aux.groups is None else aux.groups[held], pool_groups=aux.groups)
        self.results: dict[str, dict[str, Any]] = {}
        self.skipped: dict[str, str] = {}
        self.candidates = {}
        for name, attack in self.tried.items():
            mine = k_fit.restricted(attack.uses)
            lacking = [r for r in attack.requires if not getattr(mine, r)]
            if lacking:  # an extra candidate whose knowledge is not given
                self.skipped[name] = f"not given: {', '.join(lacking)}"
                continue
            torch.manual_seed(cfg.seed)
            try:
                rec = attack.reconstruct(both, mine, transcript, beat_length=beat_length)
            except AttackInputError as exc:
                if name not in cfg.extra_names():
                    raise
                self.skipped[name] = str(exc)  # e.g. a defense that cannot be simulated
                continue
            self.candidates[name] = attack
            self._add(name, rec, x_held, y_held, aux, attack.notes(k_fit),
                      getattr(attack, "tuning", None))
        if cfg.priors:
            for name, rec in self.prior_candidates(a_aux, fit, held, acts, knowledge,
                                                   transcript).items():
                self._add(name, rec, x_held, y_held, aux, [], None)
        self.winner = self.choose()
        self.heldout_beats = len(held)
        self.matched: dict[str, Any] = {}
        for name, attack in self.matchers.items():
            torch.manual_seed(cfg.seed)
            self._match(name, attack, fit, held, knowledge)
        self.final = self._refit_winners(acts, knowledge, transcript, beat_length)
        return self.final[self.winner]

    def _add(self, name: str, rec: torch.Tensor, x_held: torch.Tensor, y_held: torch.Tensor,
             aux: Any, notes: list[str], tuning: Any) -> None:
        """Score candidate ``name``'s reconstructions (held-out aux beats first, then victims)."""
        rec = rec.detach().float().cpu()
        held_rec = rec[: len(x_held)]
        self.results[name] = {
            "kind": "inversion",
            "heldout": {"mse": float(((held_rec - x_held) ** 2).mean()),
                        **self._heldout_games(lambda within: self.heldout_scorer.linkage(
                            held_rec, k=self.config.select_k, within=within))},
            "victims_reconstruction": rec[len(x_held):],
            "notes": notes, "tuning": tuning,
        }

    def _heldout_games(self, play: Any) -> dict[str, Any]:
        """The held-out linkage of a candidate in each game the aux beats allow:
        ``linkage_kK`` across patients, ``linkage_within_kK`` within patient."""
        k = self.config.select_k  # type: ignore[attr-defined]
        out = {f"linkage_k{k}": play(False)}
        if self.heldout_scorer.has_groups:
            out[f"linkage_within_k{k}"] = play(True)
        return out

    def _match(self, name: str, attack: ActivationMatch, fit: torch.Tensor, held: torch.Tensor,
               knowledge: Knowledge) -> None:
        """Fit matcher ``name`` on the fit part of the aux beats (every window of releases) and
        score it on the held-out part."""
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        assert aux is not None
        mine = knowledge.restricted(attack.uses)
        matcher = fit_on(attack, self.windows, aux, fit, mine)
        window = next(w for w in self.windows if w.name == matcher.window)
        assert window.aux is not None
        games = matcher.play(self.heldout_scorer, window.aux[held], aux.x[held], aux.x,
                             ks=(cfg.select_k,))
        k = f"k{cfg.select_k}"
        self.matched[name] = (attack, matcher, window)
        self.results[name] = {
            "kind": "match",
            "heldout": {f"linkage_{k}": games["linkage"][k],
                        **({f"linkage_within_{k}": games["linkage_within"][k]}
                           if "linkage_within" in games else {})},
            "notes": [f"{name}: {window.name} ({window.releases:.3g} releases per beat), "
                      f"{matcher.distance} distance"],
            "tuning": matcher.tuning,
        }

    def choose(self) -> str:
        """Best held-out linkage among the inversion candidates that beat chance there, else
        the lowest held-out MSE (the priors included)."""
        inversions = [n for n, r in self.results.items() if r["kind"] == "inversion"]
        return self._best(inversions, "") or min(
            inversions, key=lambda n: self.results[n]["heldout"]["mse"])

    def _best(self, names: list[str], game: str) -> str | None:
        """The best of ``names`` by held-out linkage advantage in ``game`` (``""``: across
        patients, ``"_within"``) among those above chance there (ties to an inversion, then to
        the lower held-out MSE); None when none is."""
        key = f"linkage{game}_k{self.config.select_k}"  # type: ignore[attr-defined]
        linked = [n for n in names if key in self.results[n]["heldout"]
                  and self.results[n]["heldout"][key]["ci_low"]
                  > self.results[n]["heldout"][key]["chance"]]
        if not linked:
            return None
        return max(linked, key=lambda n: (self.results[n]["heldout"][key]["advantage"],
                                          self.results[n]["kind"] == "inversion",
                                          -self.results[n]["heldout"].get("mse", 0.0)))

    def reid_winners(self) -> dict[str, str]:
        """The re-identification winner of each game the held-out beats allow (inversions and
        matchers alike; the inversion's winner where none beats chance)."""
        every = list(self.results)
        games = {"across": ""}
        if self.heldout_scorer.has_groups:
            games["within"] = "_within"
        out = {g: self._best(every, suffix) or self.winner for g, suffix in games.items()}
        out.setdefault("within", out["across"])
        return out

    def _refit_winners(self, acts: torch.Tensor, knowledge: Knowledge, transcript: Any,
                       beat_length: int) -> dict[str, Any]:
        """The winners refitted on every aux beat: an inversion's victims' reconstruction, a
        matcher's fitted matcher (attacker side; the victims are scored in
        :meth:`describe_reconstruction`)."""
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        final: dict[str, Any] = {}
        for name in dict.fromkeys([self.winner, *self.reid_winners().values()]):
            if name in self.matched:
                attack, matcher, window = self.matched[name]
                final[name] = attack.refit(matcher, window, knowledge.aux,
                                           knowledge.restricted(attack.uses))
            elif name in self.candidates:
                torch.manual_seed(cfg.seed)
                attack = self.candidates[name]
                final[name] = attack.refit(acts, knowledge.restricted(attack.uses), transcript,
                                           beat_length=beat_length).detach().float().cpu()
            else:  # a prior: its victims' reconstruction is fitted on all aux beats already
                final[name] = self.results[name]["victims_reconstruction"]
        return final

    def prior_candidates(self, a_aux: torch.Tensor, fit: torch.Tensor, held: torch.Tensor,
                         acts: torch.Tensor, knowledge: Knowledge, transcript: Any
                         ) -> dict[str, torch.Tensor]:
        """The priors as candidates: reconstructions of the held-out aux beats (fitted on the fit
        part of the aux set), then of the victims (fitted on the whole aux set, as the priors
        reported beside every inversion are), ``(H + N, 1, L)`` each."""
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        assert aux is not None
        x_fit, y_fit = aux.x[fit], aux.y[fit]
        crossed = known_labels(transcript, self.victim_ids, cfg)
        if crossed is not None:  # vanilla: the victims' labels crossed; the aux labels are known
            c_held, c_victims = aux.y[held], crossed
        else:  # no label crossed: the server's own predictions from the activations
            c_held = predicted_labels(a_aux[fit], y_fit, a_aux[held], cfg.seed)
            c_victims = predicted_labels(a_aux, aux.y, acts, cfg.seed)

        def means(x_ref: torch.Tensor, n: int) -> torch.Tensor:
            return x_ref.double().mean(0, keepdim=True).expand(n, -1, -1)

        return {
            "mean-beat": torch.cat([means(x_fit, len(held)), means(aux.x, len(acts))]),
            "class-mean": torch.cat([class_mean_beats(x_fit, y_fit, c_held),
                                     class_mean_beats(aux.x, aux.y, c_victims)]),
        }

    def describe_reconstruction(self, obs, truth):
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        candidates = {}
        for name, r in self.results.items():
            entry = {"kind": r["kind"], "heldout": r["heldout"], "tuning": r["tuning"]}
            if r["kind"] == "inversion":  # evaluator side: its fit-part model's victims
                rec = r["victims_reconstruction"]
                m = reconstruction_metrics(obs.x, rec, dtw=False)
                scorer = self.victims_scorer(obs, truth)
                entry["victims"] = {
                    "pearson_median": float(np.median(m["pearson"])),
                    "prdn_median": float(np.median(m["prdn"])),
                    **{f"linkage{g}_k{cfg.select_k}": scorer.linkage(
                        rec, k=cfg.select_k, within=bool(g)) for g in ("", "_within")
                       if not g or scorer.has_groups}}
            candidates[name] = entry
        return {"winner": self.winner, "skipped": self.skipped,
                "reidentification": self.reidentification(obs, truth),
                "selection": {
                    "criterion": f"held-out aux linkage advantage, k = {cfg.select_k} same-class "
                                 "aux beats (ties: lower held-out MSE), among the candidates "
                                 "whose held-out linkage beats chance; else the lowest held-out "
                                 "MSE, priors included; victims never consulted",
                    "heldout_beats": self.heldout_beats, "candidates": candidates}}

    def reidentification(self, obs: Any, truth: Any) -> dict[str, Any]:
        """The victims' linkage by each game's winner (refitted on all aux beats), and the
        headline: the larger advantage of the two games, per k."""
        out: dict[str, Any] = {}
        played: dict[str, dict[str, Any]] = {}
        for game, name in self.reid_winners().items():
            if name not in played:
                final = self.final[name]
                if name in self.matched:
                    window = self.matched[name][2]
                    played[name] = final.play(self.victims_scorer(obs, truth), window.victims,
                                              obs.x, truth.x)
                    releases = window.releases
                else:
                    played[name] = self.score(final, obs, truth)[0]
                    releases = self.window.releases
                played[name]["releases_mean"] = releases
            games = played[name]
            key = "linkage_within" if game == "within" and "linkage_within" in games \
                else "linkage"
            out[game] = {"attack": name, "game": key, "releases_mean": games["releases_mean"],
                         **games[key]}
        out["headline"] = {f"{k}_advantage": max(out[g][k]["advantage"] for g in out)
                           for k in ("k10", "k100")}
        return out

    def headline(self, summary):
        r = summary["reidentification"]
        out = {"winner": summary["winner"], **super().headline(summary)}
        for game in ("across", "within"):
            g = r[game]
            out[f"reid_{game}_attack"] = g["attack"]
            for k in ("k10", "k100"):
                out[f"reid_{game}_{k}"] = [g[k]["accuracy"], g[k]["ci_low"], g[k]["ci_high"]]
                out[f"reid_{game}_{k}_advantage"] = g[k]["advantage"]
        out["reid_releases_mean"] = r["across"]["releases_mean"]
        return out

    def notes(self, knowledge: Knowledge) -> list[str]:
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        key = f"linkage_k{cfg.select_k}"
        tried = ", ".join(f"{n} (held-out {key} {r['heldout'][key]['accuracy']:.3f}"
                          + (f", MSE {r['heldout']['mse']:.3g})" if "mse" in r["heldout"]
                             else ")") for n, r in self.results.items())
        out = [f"winner {self.winner} (held-out linkage above chance, else the lowest held-out "
               f"MSE) of {tried}; re-identification: {self.reid_winners()}"]
        return out + [f"{n}: {note}" for n, r in self.results.items() for note in r["notes"]]
