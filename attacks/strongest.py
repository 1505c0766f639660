"""The strongest inversion of a run: every candidate inversion attack, the one that re-identifies
the attacker's own held-out beats best reported as the run's inversion result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from attacks.base import Knowledge
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
from attacks.metrics import LinkageScorer
from attacks.registry import build_attack, register


@dataclass
class StrongestConfig(InversionConfig):
    """Attributes:
        candidates: the inversion attacks tried, comma-separated (``ridge``, ``decoder``;
            ``whitebox`` and ``unsplit`` optional: they need the client's weights or
            architecture).
        decoder_epochs: the decoder candidate's epochs (held-out early stopping inside).
        whitebox_steps: the white-box candidate's Adam steps.
        unsplit_rounds: the UnSplit candidate's rounds.
        select_k: candidates of the held-out linkage the choice is made by.
        priors: also try the priors (``mean-beat``, ``class-mean``) as candidates, so that the
            reported reconstruction is never worse than a prior on the attacker's held-out beats.
    """

    candidates: str = "ridge,decoder"
    decoder_epochs: int = 60
    whitebox_steps: int = 300
    unsplit_rounds: int = 50
    select_k: int = 10
    priors: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.names():
            raise ValueError("candidates must name at least one inversion attack")
        if min(self.decoder_epochs, self.whitebox_steps, self.unsplit_rounds, self.select_k) < 1:
            raise ValueError("decoder_epochs, whitebox_steps, unsplit_rounds and select_k must "
                             "be >= 1")

    def names(self) -> list[str]:
        return [n.strip() for n in self.candidates.split(",") if n.strip()]

    def options(self, name: str) -> dict[str, Any]:
        """The options of candidate ``name`` (seed, held-out fraction and its own budget)."""
        own = {"decoder": {"epochs": self.decoder_epochs},
               "whitebox": {"steps": self.whitebox_steps},
               "unsplit": {"rounds": self.unsplit_rounds, "max_victims": None}}
        return {"seed": self.seed, "threads": self.threads, "holdout": self.holdout,
                "device": self.device, **own.get(name, {})}


def candidate_attacks(cfg: StrongestConfig) -> dict[str, InversionAttack]:
    """The candidate attacks of ``cfg``, built; every one must be an inversion attack."""
    out = {}
    for name in cfg.names():
        attack = build_attack(name, cfg.options(name))
        if not isinstance(attack, InversionAttack) or isinstance(attack, StrongestInversion):
            raise ValueError(f"strongest: {name!r} is not a candidate inversion attack")
        out[name] = attack
    return out


@register("strongest")
class StrongestInversion(InversionAttack):
    """The strongest of several inversion attacks, chosen by the attacker on its own beats.

    ``holdout`` of the aux beats are held out; every candidate (``ridge``, the decoder of He,
    Zhang & Lee, "Model Inversion Attacks against Collaborative Inference", ACSAC 2019, and
    optionally its white-box attack and UnSplit) is fitted on the rest (each tunes its own
    hyperparameters on a further split of those) and reconstructs the held-out beats and the
    victims in one call. The winner is the candidate with the highest held-out linkage advantage
    (``select_k`` same-class aux beats as candidates; ties broken by the lower held-out MSE); its
    victims' reconstructions are the result. A candidate is chosen by linkage only when its
    held-out linkage beats chance (its Wilson interval above the chance level); otherwise the one
    with the lowest held-out MSE is, the priors among them (``priors``: the fit part's mean beat,
    and its class means under the classes the server has: the labels that crossed, in the vanilla
    topology, else its own predictions from the activations), so that no reported inversion is
    worse than what the attacker gets for free. The victims are never looked at for the choice;
    the summary lists every candidate's held-out and (evaluator-side) victims' scores.

    Shape:
        aux: x (M, 1, 128) with activations (M, C, L); victims (N, C, L) -> (N, 1, 128).
    """

    citation = ("He, Zhang & Lee, Model Inversion Attacks against Collaborative Inference, "
                "ACSAC 2019; the strongest of the candidates on held-out aux beats")
    Config = StrongestConfig
    uses = ("aux", "defenses")
    requires = ("aux",)
    study_columns = INVERSION_COLUMNS | {"strongest_attack": ("winner",)}

    def __init__(self, config: StrongestConfig | None = None) -> None:
        super().__init__(config)
        self.candidates = candidate_attacks(self.config)  # type: ignore[arg-type]
        # the knowledge handed over: what the candidates use (an instance attribute)
        self.uses = tuple(dict.fromkeys(u for a in self.candidates.values()
                                        for u in ("aux", *a.uses)))
        self.requires = tuple(dict.fromkeys(r for a in self.candidates.values()
                                            for r in ("aux", *a.requires)))

    @classmethod
    def study_options(cls, budget):
        return super().study_options(budget) | {"decoder_epochs": budget.decoder_epochs}

    def reconstruct(self, acts, knowledge, transcript, *, beat_length):
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        assert aux is not None
        a_aux = aux_activations(self, transcript, knowledge, like=acts)
        fit, held = split_aux(len(a_aux), cfg.holdout, cfg.seed)
        k_fit = dataclasses.replace(knowledge, aux=aux_subset(aux, fit, a_aux, "fit part"))
        both = torch.cat([a_aux[held], acts])  # one fit reconstructs held-out beats and victims
        x_held, y_held = aux.x[held], aux.y[held]
        # every candidate's held-out linkage against the same candidates, drawn once
        self.heldout_scorer = LinkageScorer(x_held, y_held, pool_x=aux.x, pool_y=aux.y,
                                            seed=cfg.seed)
        self.results: dict[str, dict[str, Any]] = {}
        for name, attack in self.candidates.items():
            torch.manual_seed(cfg.seed)
            rec = attack.reconstruct(both, k_fit.restricted(attack.uses), transcript,
                                     beat_length=beat_length)
            self._add(name, rec, x_held, y_held, aux, attack.notes(k_fit),
                      getattr(attack, "tuning", None))
        if cfg.priors:
            for name, rec in self.prior_candidates(a_aux, fit, held, acts, knowledge,
                                                   transcript).items():
                self._add(name, rec, x_held, y_held, aux, [], None)
        self.winner = self.choose()
        self.heldout_beats = len(held)
        return self.results[self.winner]["victims_reconstruction"]

    def _add(self, name: str, rec: torch.Tensor, x_held: torch.Tensor, y_held: torch.Tensor,
             aux: Any, notes: list[str], tuning: Any) -> None:
        """Score candidate ``name``'s reconstructions (held-out aux beats first, then victims)."""
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        rec = rec.detach().float().cpu()
        held_rec = rec[: len(x_held)]
        link = self.heldout_scorer.linkage(held_rec, k=cfg.select_k)
        self.results[name] = {
            "heldout": {"mse": float(((held_rec - x_held) ** 2).mean()),
                        f"linkage_k{cfg.select_k}": link},
            "victims_reconstruction": rec[len(x_held):],
            "notes": notes, "tuning": tuning,
        }

    def choose(self) -> str:
        """Best held-out linkage among the candidates that beat chance there, else the lowest
        held-out MSE (the priors included)."""
        key = f"linkage_k{self.config.select_k}"  # type: ignore[attr-defined]
        linked = [n for n, r in self.results.items()
                  if r["heldout"][key]["ci_low"] > r["heldout"][key]["chance"]]
        if linked:
            return max(linked, key=lambda n: (self.results[n]["heldout"][key]["advantage"],
                                              -self.results[n]["heldout"]["mse"]))
        return min(self.results, key=lambda n: self.results[n]["heldout"]["mse"])

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
            scored, _ = self.score(r["victims_reconstruction"], obs, truth)
            candidates[name] = {
                "heldout": r["heldout"], "tuning": r["tuning"],
                "victims": {"pearson_median": scored["metrics"]["pearson"]["median"],
                            "prdn_median": scored["metrics"]["prdn"]["median"],
                            "linkage": scored["linkage"]},
            }
        return {"winner": self.winner,
                "selection": {
                    "criterion": f"held-out aux linkage advantage, k = {cfg.select_k} same-class "
                                 "aux beats (ties: lower held-out MSE), among the candidates "
                                 "whose held-out linkage beats chance; else the lowest held-out "
                                 "MSE, priors included; victims never consulted",
                    "heldout_beats": self.heldout_beats, "candidates": candidates}}

    def headline(self, summary):
        return {"winner": summary["winner"], **super().headline(summary)}

    def notes(self, knowledge: Knowledge) -> list[str]:
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        key = f"linkage_k{cfg.select_k}"
        tried = ", ".join(f"{n} (held-out {key} {r['heldout'][key]['accuracy']:.3f}, MSE "
                          f"{r['heldout']['mse']:.3g})" for n, r in self.results.items())
        out = [f"winner {self.winner} (held-out linkage above chance, else the lowest held-out "
               f"MSE) of {tried}"]
        return out + [f"{n}: {note}" for n, r in self.results.items() for note in r["notes"]]

