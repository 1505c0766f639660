"""``splitpriv attack NAME --run DIR [--aux SPEC] [--option key=value ...]``: one attack on a saved
run; writes DIR/attacks/NAME.json (+ NAME.npz) and prints a summary.

Options are the attack's Config fields (``max_victims=2000``, ``phase=test``, ``steps=300``...)
plus these, which set up the attack rather than parametrise it:

* ``source``: where the victims' activations come from. ``transcript``: DIR/transcript.npz (the
  recorded messages, else, for training beats, the run's release log: every release the server
  kept); ``weights``: recomputed as the client would send them at inference (final weights,
  defenses in evaluation mode), for runs that recorded neither; ``auto`` (default): the
  transcript when it holds activations of the attacked phase, else the weights.
* ``reference_epochs``: epochs of the evaluator's reference classifier (inversions; default 5;
  0 skips the diagnosis check). It is the paper's network, unsplit, trained on the other half
  (the test half when training beats are attacked) and cached in DIR/attacks/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attacks.base import AttackResult
from attacks.inversion import InversionAttack
from attacks.labels import LabelAttack
from attacks.registry import build_attack
from attacks.releases import observed_from_log, recorded
from attacks.runs import SHARED, RunData, config_summary, knowledge_for
from splitpriv.channel import PHASES, Kind
from splitpriv.io import torch_load, torch_save
from splitpriv.options import convert
from splitpriv.run.config import MAX_THREADS

SOURCES = ("auto", "transcript", "weights")


def reference_classifier(run: RunData, phase: str, epochs: int, seed: int = 0) -> torch.nn.Module:
    """The evaluator's reference classifier for victims of ``phase`` (cached under DIR/attacks)."""
    from attacks.reference import train_reference_classifier
    from splitpriv.models import ModelConfig, build_models

    other = "test" if phase == "train" else "train"
    path = run.path / "attacks" / f"reference-classifier-{other}-e{epochs}-s{seed}.pt"
    if path.exists():
        net = build_models(ModelConfig(2), seed=seed).monolithic()
        net.load_state_dict(torch_load(path))
        return net.eval()
    net = train_reference_classifier(run.x[other], run.y[other], epochs=epochs, seed=seed)
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
    options = dict(options or {})
    source = str(options.pop("source", "auto"))
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    ref_epochs = convert(str(options.pop("reference_epochs", 5)), int, "reference_epochs",
                         "--option")
    if ref_epochs < 0:
        raise ValueError(f"--option reference_epochs: must be >= 0 (0: no check), got {ref_epochs}")
    attack = build_attack(name, options)
    cfg = attack.config
    check_common(cfg)
    run = SHARED.load(run_dir)
    if hasattr(attack, "attack_run"):  # an attack of the whole run (membership), no transcript
        return _save(attack.attack_run(run), run, run_dir, name)

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
        aux = getattr(attack, "default_aux", None)
    aux_data = SHARED.parse_aux(aux, run, phase=cfg.phase, seed=cfg.seed)
    classifier = None
    if isinstance(attack, InversionAttack) and ref_epochs > 0:
        classifier = reference_classifier(run, cfg.phase, ref_epochs, seed=cfg.seed)
    result = attack(transcript, knowledge_for(run, aux_data), run.truth(cfg.phase, classifier))
    result.notes = notes + result.notes
    return _save(result, run, run_dir, name)


def _save(result: AttackResult, run: RunData, run_dir: str | Path, name: str
          ) -> tuple[AttackResult, Path]:
    """Write the result of attack ``name`` to DIR/attacks, once the run's files are checked to
    be those it attacked."""
    result.summary["run"] = {"dir": str(run.path), **config_summary(run)}
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
    result, path = run_attack(name, run_dir, aux, options)
    attack = build_attack(name, {})
    out = {
        "attack": name,
        "json": str(path),
        "npz": str(path.with_suffix(".npz")) if result.scores else None,
        "seconds": round(result.seconds, 3),
        "headline": attack.headline(result.summary),
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

    lines = [f"attack {out['attack']}  ({out['seconds']:.1f} s)  -> {out['json']}"]
    lines += [f"  {k:<28} {fmt(v)}" for k, v in out["headline"].items()]
    lines += [f"  note: {n}" for n in out["notes"]]
    return "\n".join(lines)
