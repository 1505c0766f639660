"""``splitpriv attack NAME --run DIR [--aux SPEC] [--option key=value ...]``: one attack on a saved
run; writes DIR/attacks/NAME.json (+ NAME.npz) and prints a summary.

Options are the attack's Config fields (``max_victims=2000``, ``phase=test``, ``steps=300``...)
plus those of :class:`Setup`, which set up the attack rather than parametrise it (``source``,
``reference_epochs``). ``splitpriv attack NAME --help`` lists them all with their defaults, the
knowledge the attack needs and what it costs (:func:`attack_help`). What the attack needs is
checked before anything is loaded (:func:`check_ready`): a missing ``--aux`` or run directory is
a one-line error at once, not after the run's data and the reference classifier are built.
"""

from __future__ import annotations

import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, AttackResult
from attacks.inversion import InversionAttack
from attacks.labels import LabelAttack
from attacks.registry import build_attack
from attacks.releases import observed_from_log, recorded
from attacks.runs import (
    SHARED,
    RunData,
    check_aux_spec,
    check_run_dir,
    config_summary,
    knowledge_for,
)
from splitpriv.channel import PHASES, Kind
from splitpriv.io import torch_load, torch_save
from splitpriv.options import build_config, describe_fields
from splitpriv.run.config import MAX_THREADS

SOURCES = ("auto", "transcript", "weights")


@dataclass
class Setup:
    """Options that set up an attack rather than parametrise it (``-o key=value`` like the
    attack's own)."""

    source: str = "auto"
    """where the victims' activations come from: ``transcript`` (DIR/transcript.npz, else for
    training beats the run's release log: every release the server kept), ``weights``
    (recomputed as the client sends them at inference, final weights, defenses in evaluation
    mode), ``auto``: the transcript when it holds activations of the attacked phase, else the
    weights"""
    reference_epochs: int = 5
    """inversions only: epochs of the evaluator's reference classifier (the paper's network,
    unsplit, trained on the other half; cached in DIR/attacks/), which reports whether the
    reconstructions keep the diagnosis; often most of the wall time; 0 skips the check"""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"--option source: must be one of {SOURCES}, got {self.source!r}")
        if self.reference_epochs < 0:
            raise ValueError("--option reference_epochs: must be >= 0 (0: no check), got "
                             f"{self.reference_epochs}")


#: the attacker's knowledge (``attacks.base.Knowledge`` fields), in words: where it comes from
KNOWLEDGE_WORDS = {
    "aux": "auxiliary beats and their releases (--aux own:F | own:N | records:R1,...), or public "
           "beats without releases (--aux public:F)",
    "depth": "the client architecture (from the run's config.json)",
    "client_state": "the client's weights, white box (from the run's weights.pt)",
    "defenses": "the defenses applied, an adaptive attacker (from the run's config.json)",
    "server_state": "the server's own part of the model (from the run's weights.pt)",
    "recipe": "the run's training recipe, defenses and their parameters included (from the "
              "run's config.json)",
}

#: the attack's own seconds (median, runs) at the studies' default budget, 2-core AMD EPYC host
#: (the ``seconds`` of every studies/out/{dp_tradeoff,depth,compare_defenses}/runs/*/attacks/
#: NAME.json of the 2026-12-07 runs); loading the run and the reference classifier come on top
MEASURED_SECONDS = {"dcor": (0.5, 107), "dtw": (0.6, 107), "strongest": (7.6, 107),
                    "label-direction": (0.0, 57), "label-kmeans": (0.4, 6), "label-norm": (0.1, 6)}


def split_options(options: dict[str, Any]) -> tuple[Setup, dict[str, Any]]:
    """The :class:`Setup` options out of ``options``; the attack's own are returned."""
    options = dict(options)
    setup: dict[str, Any] = {k: options.pop(k) for k in ("source", "reference_epochs")
                             if k in options}
    return build_config(Setup, setup, "--option"), options


def check_ready(name: str, run_dir: str | Path, aux: str | None,
                options: dict[str, Any]) -> tuple[Any, Setup, dict[str, Any]]:
    """Everything an attack needs that can be checked without loading the run (well under a
    second): the attack and its options, the knowledge it requires that the caller must give
    (``--aux``), the form of the aux spec, a finished run directory.

    Returns:
        the attack, the setup options and the attack's options.

    Raises:
        ValueError, FileNotFoundError: one line naming what is missing.
    """
    setup, own = split_options(options)
    attack = build_attack(name, own)
    check_common(attack.config)
    aux = aux if aux is not None else attack.default_aux
    if "aux" in attack.requires and aux is None:
        raise ValueError(f"attack {name!r} needs the attacker's auxiliary beats: pass --aux "
                         "SPEC (own:F | own:N | public:F | records:R1,...; the studies use --aux "
                         "own:0.1)")
    check_aux_spec(aux)
    check_run_dir(run_dir)
    return attack, setup, own


def attack_help(name: str) -> str:
    """``splitpriv attack NAME --help``: what the attack is, the knowledge it needs, its cost
    and every option with its default (from its Config and :class:`Setup`).

    Raises:
        ValueError: unknown attack.
    """
    attack = build_attack(name, {})
    cls = type(attack)
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    needs = [f"  {k} ({'required' if k in attack.requires else 'used when given'}): "
             f"{KNOWLEDGE_WORDS.get(k, k)}" for k in attack.uses] or ["  none (an evaluator's "
                                                                     "measurement)"]
    seconds, runs = MEASURED_SECONDS.get(name, (None, 0))
    cost = (f"the attack itself took a median {seconds:g} s over {runs} runs of the studies "
            "(their attack budget, 2-core CPU host)" if seconds is not None
            else "not measured at the studies' budget")
    cost += "; loading the run rebuilds its beats (seconds)"
    if isinstance(attack, InversionAttack):
        cost += ("; an inversion also trains the reference classifier once per run "
                 "(reference_epochs, default 5, often most of the wall time; "
                 "-o reference_epochs=0 skips it)")
    def para(text: str) -> str:
        return textwrap.fill(" ".join(text.split()), 96, break_on_hyphens=False)

    return "\n".join([
        f"usage: splitpriv attack {name} --run DIR [--aux SPEC] [-o KEY=VALUE ...]", "",
        para(doc), "", para(f"paper: {cls.citation or '-'}"), "",
        "knowledge the attacker needs:", *needs, "", para(f"cost: {cost}"), "",
        f"options (-o KEY=VALUE), from {attack.Config.__name__}:",
        describe_fields(attack.Config, 94), "", "setup options (-o KEY=VALUE):",
        describe_fields(Setup, 94)])


def reference_classifier(run: RunData, phase: str, epochs: int, seed: int = 0) -> torch.nn.Module:
    """The evaluator's reference classifier for victims of ``phase`` (cached under DIR/attacks)."""
    from attacks.reference import train_reference_classifier

    other = "test" if phase == "train" else "train"
    path = run.path / "attacks" / f"reference-classifier-{other}-e{epochs}-s{seed}.pt"
    if path.exists():
        cached: nn.Module = run.reference_net(seed)
        cached.load_state_dict(torch_load(path))
        return cached.eval()
    net = train_reference_classifier(run.x[other], run.y[other], epochs=epochs, seed=seed,
                                     net=run.reference_net(seed))
    torch_save(net.state_dict(), path)
    return net


def check_common(cfg: Any) -> None:
    """Refuse values of the options every attack takes (``attacks.base.CommonConfig``) that
    would fail later, deep in the attack, without naming the option."""
    bad = [
        ("phase", cfg.phase not in PHASES, f"one of {PHASES}"),
        ("seed", not 0 <= cfg.seed < 2**32, "in 0..2**32-1"),
        ("max_victims", cfg.max_victims is not None and cfg.max_victims < 1, ">= 1 (none: all)"),
        ("epoch", cfg.epoch is not None and cfg.epoch < 0, ">= 0 (none: the last recorded)"),
        ("threads", cfg.threads is not None and not 0 <= cfg.threads <= MAX_THREADS,
         f"in 0..{MAX_THREADS} (none: torch's)"),
    ]
    for key, wrong, must in bad:
        if wrong:
            raise ValueError(f"--option {key}: must be {must}, got {getattr(cfg, key)!r}")


def run_attack(
    name: str, run_dir: str | Path, aux: str | None = None, options: dict[str, Any] | None = None
) -> tuple[AttackResult, Path]:
    """Run attack ``name`` on a run directory; save and return the result and its JSON path.

    The run's data, its client's activations and its aux sets are computed once in a process
    and shared by the attacks of the same run (``attacks.runs.SHARED``): the attacks a study
    runs on one run (dcor, dtw, strongest) rebuild and query nothing twice."""
    attack, setup, _ = check_ready(name, run_dir, aux, dict(options or {}))
    source, ref_epochs, cfg = setup.source, setup.reference_epochs, attack.config
    run = SHARED.load(run_dir)
    if hasattr(attack, "attack_run"):  # an attack of the whole run (membership), no transcript
        return _save(attack, attack.attack_run(run), run, run_dir, name)

    transcript, notes = run.transcript, []
    reads_activations = not isinstance(attack, LabelAttack)
    has_acts = (recorded(transcript, Kind.ACTIVATIONS, cfg.phase, None)
                or observed_from_log(transcript, Kind.ACTIVATIONS, cfg.phase, cfg.epoch)
                is not None)
    if reads_activations and (source == "weights" or (source == "auto" and not has_acts)):
        transcript = SHARED.weights_transcript(run, cfg.phase, seed=cfg.seed)
        notes.append(f"activations of phase {cfg.phase!r} recomputed from the final weights "
                     "(as the client sends them at inference), not read from a transcript")

    if aux is None:  # an attack's own default (identity: the first part of every record)
        aux = attack.default_aux
    aux_data = SHARED.parse_aux(aux, run, phase=cfg.phase, seed=cfg.seed)
    classifier = None
    if isinstance(attack, InversionAttack) and ref_epochs > 0:
        classifier = reference_classifier(run, cfg.phase, ref_epochs, seed=cfg.seed)
    result = attack(transcript, knowledge_for(run, aux_data), run.truth(cfg.phase, classifier))
    result.notes = notes + result.notes
    return _save(attack, result, run, run_dir, name)


def _save(attack: Attack, result: AttackResult, run: RunData, run_dir: str | Path, name: str
          ) -> tuple[AttackResult, Path]:
    """Write the result of attack ``name`` to DIR/attacks, once the run's files are checked to
    be those it attacked."""
    result.summary["run"] = {"dir": str(run.path), **config_summary(run)}
    result.headline = attack.headline(result.summary)
    if not SHARED.unchanged(run_dir):  # retrained or extended meanwhile: not this run's result
        raise ValueError(f"{run.path}: the run's files changed while it was attacked (retrained "
                         "or extended?); attack it again once it has finished")
    path = result.save(run.path / "attacks", name)
    return result, path


def run_attack_cli(
    name: str,
    run_dir: str,
    aux: str | None,
    options: dict[str, str],
    *,
    echo: bool = True,
) -> dict[str, Any]:
    """The ``splitpriv attack`` command: run, write DIR/attacks/NAME.json (+ .npz), print and
    return a summary ``{"attack", "json", "npz", "seconds", "headline", "notes"}``.

    Raises:
        ValueError: unknown attack or option, a bad aux spec, an attack that cannot use this run
            (``AttackInputError``, e.g. no gradients in a vanilla transcript).
        FileNotFoundError: not a finished run directory.
    """
    t0 = time.perf_counter()
    result, path = run_attack(name, run_dir, aux, options)
    out = {
        "attack": name,
        "json": str(path),
        "npz": str(path.with_suffix(".npz")) if result.scores else None,
        "seconds": round(result.seconds, 3),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "advantages": advantages(result.summary),
        "headline": result.headline,
        "notes": result.notes,
    }
    if echo:
        print(format_summary(out))
    return out


def format_summary(out: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, dict) else str(v)

    lines = [f"attack {out['attack']}  ({out['wall_seconds']:.1f} s in all, the attack itself "
             f"{out['seconds']:.1f} s)  -> {out['json']}"]
    lines += [f"  {k:<28} {a:.3f} [{lo:.3f}, {hi:.3f}]  (95% interval; 0 = chance {c:.3f})"
              for k, (a, lo, hi, c) in out["advantages"].items()]
    lines += [f"  {k:<28} {fmt(v)}" for k, v in out["headline"].items()]
    lines += [f"  note: {n}" for n in out["notes"]]
    return "\n".join(lines)


def _advantage(game: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """(advantage, its interval low and high, chance) of one linkage game's summary: the
    accuracy's 95% interval mapped through (accuracy - chance) / (1 - chance)."""
    if not all(isinstance(game.get(k), (int, float)) for k in ("accuracy", "ci_low", "ci_high",
                                                                  "chance")):
        return None
    c = game["chance"]
    if c >= 1:  # one candidate (every sample its own group): no game to win
        return None
    return tuple((v - c) / (1 - c) for v in (game["accuracy"], game["ci_low"],
                                             game["ci_high"])) + (c,)


def advantages(summary: dict[str, Any]) -> dict[str, tuple[float, float, float, float]]:
    """The linkage advantages of a summary with their intervals: the reconstructions' linkage
    (``linkage_k10`` ...) and, for ``strongest``, its re-identification across and within
    patient (``reid_across_k10`` ...), the studies' privacy axis."""
    out = {}
    games = {f"linkage_{k}": g for k, g in (summary.get("linkage") or {}).items()}
    for game, ks in (summary.get("reidentification") or {}).items():
        games |= {f"reid_{game}_{k}": g for k, g in ks.items() if isinstance(g, dict)}
    for key, game in games.items():
        adv = _advantage(game) if isinstance(game, dict) else None
        if adv is not None:
            out[f"{key}_advantage"] = adv
    return out
