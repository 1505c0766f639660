"""Re-identification in activation space: the server picks a beat out without reconstructing it.

The re-identification game (``attacks.metrics.LinkageScorer``) asks which of k + 1 candidate
beats a victim's release came from. A server that can map a candidate beat through the client
compares the release with each candidate's activation directly, with a distance that fits the
noise: the squared error for Gaussian noise, the absolute error for Laplace noise, each
coordinate weighted by the spread of the residuals on the attacker's own beats. When the client
is known exactly and the noise is Gaussian with a known scale, the weighted squared error is the
likelihood and no attack does better (the Neyman-Pearson test among the candidates); under noise
it beats every reconstruction attack, which must first rebuild the beat.

Two attackers, as the threat model grants:

* ``match``: the architecture is known, the weights are not: the server learns a client model
  from its aux pairs (beats and the releases it received of them), through the defense's known
  noiseless map (:meth:`splitpriv.defense.Defense.release_map`, e.g. formal DP's clipping);
  trained on a window's combined releases, it learns the client averaged over that window;
* ``match-weights``: the client's weights are known (white box).

Both combine each beat's releases (``releases``): the window, the distance and (learned) the
client model's epochs are chosen on held-out aux beats, never on the victims.

Shape:
    aux: x (M, 1, L) with releases (M, C, L'); victims (N, C, L') -> linkage of the victims.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
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
    GroundTruth,
    Knowledge,
    observe_victims,
)
from attacks.fitting import REFIT_LR, fit_regression
from attacks.inversion import (
    InversionConfig,
    observation_windows,
    split_aux,
    victims_scorer,
)
from attacks.metrics import LINKAGE_KEYS, LINKAGE_KS, LinkageScorer
from attacks.registry import register
from attacks.releases import Windowed, pick
from splitpriv.channel import Kind, Transcript

#: the distances tried: name -> (power, weighted by the residual spread per coordinate)
DISTANCES = {"l2": (2, False), "l1": (1, False), "l2w": (2, True), "l1w": (1, True)}


@dataclass
class MatchConfig(InversionConfig):
    """Attributes:
        distances: the distances tried, comma-separated: ``l2`` (squared error: Gaussian noise),
            ``l1`` (absolute error: Laplace noise), ``l2w``, ``l1w`` (each coordinate divided
            by its residual spread on held-out aux beats).
        epochs: the learned client's most epochs from scratch on the first window tried (the
            widest), early-stopped on held-out aux beats.
        window_epochs: its most epochs on each further window, started from the last one's.
        refit_epochs: its epochs on every aux beat after the choice (at a tenth of ``lr``:
            from the tuned weights, a fresh optimizer at the full rate moved a deep client's
            model away from what the held-out beats chose).
        lr: its Adam learning rate.
        batch_size: its minibatch.
        patience: its early stopping's patience.
    """

    distances: str = "l2,l1,l2w,l1w"
    epochs: int = 60
    window_epochs: int = 12
    refit_epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    patience: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [d for d in self.distance_names() if d not in DISTANCES]
        if bad or not self.distance_names():
            raise ValueError(f"distances must name some of {sorted(DISTANCES)}, got "
                             f"{self.distances!r}")
        if min(self.epochs, self.window_epochs, self.batch_size, self.patience) < 1 or \
                self.refit_epochs < 0:
            raise ValueError("epochs, window_epochs, batch_size and patience must be >= 1 and "
                             "refit_epochs >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def distance_names(self) -> list[str]:
        return [d.strip() for d in self.distances.split(",") if d.strip()]


def distance(name: str, spread: np.ndarray | None) -> Callable[[np.ndarray, np.ndarray],
                                                               np.ndarray]:
    """Distance ``name`` (:data:`DISTANCES`) between rows a (c, D) and b (c, k, D): (c, k);
    ``spread`` (D,): the per-coordinate scale of the weighted ones."""
    power, weighted = DISTANCES[name]
    w = 1.0 / np.maximum(spread, 1e-12) if weighted and spread is not None else None

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if w is not None:
            a, b = a * w, b * w
        if power == 2:  # |a|^2 + |b|^2 - 2 a.b: one batched product, no (c, k, D) difference
            return ((a * a).sum(-1)[:, None] + (b * b).sum(-1)
                    - 2 * np.einsum("cd,ckd->ck", a, b))
        return np.abs(b - a[:, None, :]).sum(-1)

    return dist


def residual_spread(name: str, resid: np.ndarray) -> np.ndarray | None:
    """The per-coordinate scale a weighted distance divides by, from residuals (H, D) of
    held-out releases about their modelled activations: the standard deviation (``l2w``,
    Gaussian noise) or the mean absolute residual (``l1w``, the Laplace scale); None for an
    unweighted distance."""
    power, weighted = DISTANCES[name]
    if not weighted:
        return None
    return resid.std(0) if power == 2 else np.abs(resid).mean(0)


def release_map(knowledge: Knowledge) -> Callable[[torch.Tensor], torch.Tensor]:
    """The known defenses' noiseless map of the activations (:meth:`Defense.release_map`, in
    the run's order); the identity when the attacker knows of none. A defense holding learned
    parameters of the client (``mid``'s bottleneck) maps with its trained state where the
    attacker knows it (``defense_states``, with the client's weights), else is left to the
    client the attack fits (its map is the run's trained module, unknown from the spec)."""
    if not knowledge.defenses:
        return lambda a: a
    from attacks.runs import defenses_with

    built = [d for d in defenses_with(knowledge.defenses, knowledge.defense_states)
             if d is not None]

    def apply(a: torch.Tensor) -> torch.Tensor:
        for d in built:
            a = d.release_map(a)
        return a

    return apply


@dataclass
class Matcher:
    """A fitted activation-space re-identifier: a window of releases, a client map and a
    distance.

    Attributes:
        window: the window of releases it reads (its name).
        net: the client as the attacker models it; ``rmap`` the known defenses' noiseless map
            after it. ``embed``: beats (n, 1, L) -> ``rmap(net(x))`` (n, D) float64.
        distance: the chosen distance's name.
        spread: (D,) the residual spread of each coordinate (weighted distances; else None).
        tuning: the held-out table of every window and distance tried, and the choice.
    """

    window: str
    net: nn.Module
    rmap: Callable[[torch.Tensor], torch.Tensor]
    distance: str
    spread: np.ndarray | None
    tuning: dict[str, Any]

    @property
    def embed(self) -> Callable[[torch.Tensor], np.ndarray]:
        return _embedder(self.net, self.rmap)

    def play(self, scorer: LinkageScorer, query: torch.Tensor, own: torch.Tensor,
             pool: torch.Tensor, *, ks: Sequence[int] = LINKAGE_KS,
             within: Sequence[bool] = (False, True)) -> dict[str, dict[str, dict[str, float]]]:
        """The victims' linkage in activation space: releases ``query`` (N, C, L) against their
        own beats ``own`` (N, 1, L) and the pool's ``pool`` (M, 1, L), the scorer's candidates,
        for every k and game (``linkage``: across patients, ``linkage_within``: within)."""
        q, e_own, e_pool = _flat(query), self.embed(own), self.embed(pool)
        dist = distance(self.distance, self.spread)
        out: dict[str, dict[str, dict[str, float]]] = {}
        for w in within:
            if w and not scorer.has_groups:
                continue
            key = "linkage_within" if w else "linkage"
            out[key] = {}
            for k in ks:
                r = scorer.match(q, e_own, e_pool, k=k, distance=dist, within=w)
                out[key][f"k{k}"] = {n: r[n] for n in LINKAGE_KEYS} | {"n": r["n"]}
        return out


def _flat(a: torch.Tensor) -> np.ndarray:
    return a.detach().double().cpu().reshape(len(a), -1).numpy()


def _embedder(net: nn.Module, rmap: Callable[[torch.Tensor], torch.Tensor]
              ) -> Callable[[torch.Tensor], np.ndarray]:
    """Beats -> the modelled releases (n, D) float64: a frozen copy of ``net``, then ``rmap``."""
    net = copy.deepcopy(net).eval()

    @torch.no_grad()
    def embed(x: torch.Tensor) -> np.ndarray:
        dev = next(net.parameters()).device
        out = [rmap(net(c.to(dev).float())).cpu() for c in x.split(4096)]
        return torch.cat(out).double().reshape(len(x), -1).numpy()

    return embed


def fit_client(net: nn.Module, x_fit: torch.Tensor, a_fit: torch.Tensor, x_held: torch.Tensor,
               a_held: torch.Tensor, rmap: Callable[[torch.Tensor], torch.Tensor], *,
               epochs: int, cfg: MatchConfig, device: torch.device, lr: float | None = None
               ) -> dict[str, float]:
    """Train ``net`` (in place, on ``device``) so that ``rmap(net(x))`` matches the releases
    ``a`` (mean squared error; the noise is zero-mean, so it learns their expectation), with
    early stopping on the held-out pairs (:func:`attacks.fitting.fit_regression`; none: every
    epoch, a refit). ``lr``: other than ``cfg.lr``. Returns ``{"heldout_mse", "epoch"}``.

    Shape:
        x_fit: (M, 1, L), a_fit: (M, C, L'), x_held: (H, 1, L), a_held: (H, C, L').
    """
    best, epoch = fit_regression(net, x_fit.float(), a_fit.float(), x_held.float(),
                                 a_held.float(), epochs=epochs, patience=cfg.patience,
                                 batch_size=cfg.batch_size, lr=lr or cfg.lr, seed=cfg.seed,
                                 head=rmap,
                                 device=device)
    return {"heldout_mse": best, "epoch": epoch}


class ActivationMatch(Attack):
    """Base of the activation-space re-identification attacks (module docstring): subclasses
    say how the attacker maps a beat to its activation (:meth:`client_maps`)."""

    Config = MatchConfig
    learned: bool = False

    @classmethod
    def study_options(cls, budget):
        return {"source": "auto", "max_victims": budget.decoder_victims,
                "device": budget.attack_device}

    def client_maps(self, windows: list[Windowed], aux: AuxData | None, fit: torch.Tensor,
                    held: torch.Tensor, knowledge: Knowledge
                    ) -> list[tuple[Windowed, nn.Module, dict[str, Any]]]:
        """For each window tried: the client (a module) as the attacker models it there, and
        how it was obtained."""
        raise NotImplementedError

    def refit(self, matcher: Matcher, window: Windowed, aux: AuxData, knowledge: Knowledge
              ) -> Matcher:
        """``matcher`` after the choice, on every beat of ``aux`` (learned: its client trained a
        few more epochs on them, window and distance kept); default: as it is."""
        return matcher

    def fit(self, windows: list[Windowed], aux: AuxData | None, knowledge: Knowledge, *,
            refit: bool = True) -> Matcher:
        """Choose the window, the client model and the distance on the aux beats (``holdout``
        of them held out: every window and distance is scored by the held-out beats' linkage
        among k = 10 same-class aux beats; ties to the lower held-out activation MSE), then the
        chosen client refitted on all of them (``refit``; without: as fitted on the fit part).

        Without aux beats (white box only): the ``releases`` window (``auto``: the attacked
        one) and the first distance, untuned."""
        cfg: MatchConfig = self.config  # type: ignore[assignment]
        rmap = release_map(knowledge)
        fixed = pick(windows, cfg.releases)
        tried_windows = [fixed] if fixed is not None else windows
        if aux is None or any(w.aux is None for w in tried_windows):
            if self.learned:
                raise AttackInputError(f"attack {self.name!r} learns the client from aux beats "
                                       "paired with their releases; none were given")
            window = fixed or windows[0]
            _, net, how = self.client_maps([window], None, torch.empty(0), torch.empty(0),
                                           knowledge)[0]
            name = cfg.distance_names()[0]
            return Matcher(window.name, net, rmap, name, None,
                           {"chosen": {"window": window.describe(), "distance": name,
                                       "client": how}, "table": []})
        m = len(aux.x)
        fit, held = split_aux(m, cfg.holdout, cfg.seed)
        scorer = LinkageScorer(aux.x[held], aux.y[held], pool_x=aux.x, pool_y=aux.y,
                               seed=cfg.seed)
        table, best, nets = [], None, {}
        for window, net, how in self.client_maps(tried_windows, aux, fit, held, knowledge):
            assert window.aux is not None
            embed = _embedder(net, rmap)
            own, pool = embed(aux.x[held]), embed(aux.x)
            query = _flat(window.aux[held])
            resid = query - own
            nets[window.name] = net
            for name in cfg.distance_names():
                spread = residual_spread(name, resid)
                r = scorer.match(query, own, pool, k=10, distance=distance(name, spread))
                row = {"window": window.name, "releases_mean": window.releases,
                       "distance": name, "heldout_activation_mse": float((resid ** 2).mean()),
                       "heldout_linkage_k10_advantage": r["advantage"], **how}
                table.append(row)
                rank = (r["advantage"], -row["heldout_activation_mse"])
                if best is None or rank > best[0]:
                    best = (rank, window, name, spread)
        assert best is not None
        _, window, name, spread_chosen = best
        chosen = {"window": window.describe(), "distance": name,
                  "heldout_linkage_k10_advantage": best[0][0]}
        fitted = Matcher(window.name, nets[window.name], rmap, name, spread_chosen,
                         {"heldout_beats": len(held), "chosen": chosen, "table": table})
        return self.refit(fitted, window, aux, knowledge) if refit else fitted

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth
            ) -> AttackResult:
        obs = observe_victims(self, transcript, Kind.ACTIVATIONS, truth,
                              exclude=knowledge.not_victims)
        if obs.values.ndim != 3:
            raise AttackInputError(f"activations must be (N, C, L), got {tuple(obs.values.shape)}")
        windows, note = observation_windows(self, transcript, knowledge, obs)
        matcher = self.fit(windows, knowledge.aux, knowledge)
        window = next(w for w in windows if w.name == matcher.window)
        scorer = victims_scorer(obs, truth, self.config.seed)
        summary = {"n_victims": len(obs.ids),
                   **matcher.play(scorer, window.victims, obs.x, truth.x),
                   "releases": {"chosen": window.describe(), "note": note},
                   "tuning": matcher.tuning}
        return AttackResult(attack=self.name, summary=summary,
                            scores={"ids": obs.ids.numpy(), "y": obs.y.numpy()},
                            notes=[f"chose {matcher.window} and the {matcher.distance} distance "
                                   "on held-out aux beats"])

    def headline(self, summary):
        out: dict[str, Any] = {"n_victims": summary["n_victims"]}
        for game in ("linkage", "linkage_within"):
            for k, r in summary.get(game, {}).items():
                out[f"{game}_{k}"] = [r["accuracy"], r["ci_low"], r["ci_high"]]
                out[f"{game}_{k}_advantage"] = r["advantage"]
        chosen = summary["tuning"]["chosen"]
        out |= {"window": chosen["window"]["name"], "distance": chosen["distance"]}
        return out


@register("match")
class LearnedClientMatch(ActivationMatch):
    """Re-identification in activation space with a client model the server learns from its aux
    pairs (the architecture known, the weights not): the activation-matching attack of the
    re-identification game (Erdogan et al., UnSplit, WPES 2022, also learn a surrogate client
    from the architecture; here it is fitted to the aux beats' releases by regression, through
    the known defense's noiseless map).

    The client model is trained on the widest window first (``epochs``, early-stopped on
    held-out aux beats), then on each narrower one from the last one's weights
    (``window_epochs``); the best window and distance on the held-out beats are refitted on all
    aux beats (``refit_epochs``).
    """

    citation = ("Erdogan, Kupcu & Cicek, UnSplit: Data-Oblivious Model Inversion, Model "
                "Stealing, and Label Inference Attacks against Split Learning, WPES 2022 "
                "(surrogate client); matching in activation space")
    uses = ("aux", "depth", "defenses")
    requires = ("aux", "depth")
    learned = True
    study_columns = {f"match_{g}_{k}_advantage": (g, k, "advantage")
                     for g in ("linkage", "linkage_within") for k in ("k10", "k100")}

    def client_maps(self, windows, aux, fit, held, knowledge):
        cfg: MatchConfig = self.config  # type: ignore[assignment]
        assert aux is not None
        rmap = release_map(knowledge)
        torch.manual_seed(cfg.seed)
        net = knowledge.client()
        out = []
        for i, window in enumerate(reversed(windows)):  # the widest (least noisy) first
            assert window.aux is not None
            got = fit_client(net, aux.x[fit], window.aux[fit], aux.x[held], window.aux[held],
                             rmap, epochs=cfg.epochs if i == 0 else cfg.window_epochs, cfg=cfg,
                             device=self.device)
            out.append((window, copy.deepcopy(net), {"client": "learned", **got}))
        return out[::-1]

    def refit(self, matcher, window, aux, knowledge):
        cfg: MatchConfig = self.config  # type: ignore[assignment]
        if not cfg.refit_epochs:
            return matcher
        assert window.aux is not None
        net = copy.deepcopy(matcher.net)
        fit_client(net, aux.x, window.aux, aux.x[:0], window.aux[:0], matcher.rmap,
                   epochs=cfg.refit_epochs, cfg=cfg, device=self.device,
                   lr=cfg.lr * REFIT_LR)
        return dataclasses.replace(matcher, net=net, tuning=matcher.tuning | {
            "refit": f"{cfg.refit_epochs} epochs on all {len(aux.x)} aux beats at "
                     f"{REFIT_LR:g} x the learning rate"})


@register("match-weights")
class WeightsMatch(ActivationMatch):
    """Re-identification in activation space with the client's weights known (white box): each
    candidate beat is mapped through the real client and the known defense's noiseless map."""

    citation = "matching in activation space with the client's weights (white box)"
    uses = ("aux", "depth", "client_state", "defenses")
    requires = ("client_state", "depth")
    study_columns = {f"match_weights_{g}_{k}_advantage": (g, k, "advantage")
                     for g in ("linkage", "linkage_within") for k in ("k10", "k100")}

    def client_maps(self, windows, aux, fit, held, knowledge):
        from attacks.whitebox import client_from_state

        net = client_from_state(knowledge).to(self.device)
        return [(w, net, {"client": "weights"}) for w in windows]


def fit_on(matcher_attack: ActivationMatch, windows: list[Windowed], aux: AuxData,
           rows: torch.Tensor, knowledge: Knowledge) -> Matcher:
    """``matcher_attack`` fitted on the aux rows ``rows`` only (their beats and releases; not
    refitted: the caller refits what it keeps)."""
    part = dataclasses.replace(aux, x=aux.x[rows], y=aux.y[rows],
                               ids=None if aux.ids is None else aux.ids[rows],
                               groups=None if aux.groups is None else aux.groups[rows],
                               activations=None, exclude_ids=None)
    sub = [dataclasses.replace(w, aux=None if w.aux is None else w.aux[rows]) for w in windows]
    return matcher_attack.fit(sub, part, knowledge, refit=False)


__all__ = ["ActivationMatch", "DISTANCES", "LearnedClientMatch", "MatchConfig", "Matcher",
           "WeightsMatch", "distance", "fit_client", "fit_on", "release_map"]
