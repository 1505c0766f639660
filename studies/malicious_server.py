"""A malicious server: feature-space hijacking (FSHA) against the input defenses, and its detection.

FSHA (Pasquini, Ateniese & Bernaschi, CCS 2021, arXiv 2012.02670; ``attacks/servers/fsha.py``)
returns, instead of the task gradient, the gradient that moves the client's activations into its
pilot encoder's feature space, and decodes them. This study runs it against no defense, paper
DP, formal DP, NoPeek, client DP-SGD, a deeper client and the U-shaped topology, and reports the
first training step at which the decoder's reconstructions of the batch that crossed pass a
stated quality (the re-identification advantage among 10 same-class beats >= 0.5, or median
Pearson r >= 0.9: ``attacks.servers.scoring.ReconstructionLog.THRESHOLDS``), the final quality
and the client's test accuracy (which FSHA ruins). It then runs the client-side detectors
(``defenses/splitguard.py``: SplitGuard, Erdogan et al. WPES 2022, and the passive label gap)
under an honest server and under FSHA over seeds: detection rate, training batch of detection,
false alarms, and what SplitGuard's fake batches cost in accuracy (honest runs with and without
it). Identity inference (``attacks/identity.py``: which enrolled patient sent these activations)
runs on the FSHA runs and the honest reference.

Writes OUT/results.csv (one row per run), OUT/summary.md and OUT/figures (detection scores over
training, honest vs FSHA; true beats beside FSHA's reconstructions at a few steps).

    python studies/malicious_server.py           # 5 epochs, 3,000 beats, 3 seeds (~11 min, 1 job)
    python studies/malicious_server.py --quick   # 1 seed, 3 epochs of 1,000 beats (~3 min)

The quick budget is a smoke test: its 87 training steps are too few for FSHA to reach the stated
quality (measured: median r 0.78, advantage 0.18 at the last record, no defense); the default
budget's 425 are enough (no defense: median r >= 0.9 by step 167 ± 38, 3 seeds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from attacks.servers.scoring import ReconstructionLog
from splitpriv.io import read_json
from splitpriv.options import format_spec
from studies.common import (
    IDENTITY_TEXT,
    OKABE_ITO,
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    cli,
    identity_cell,
    interval_sentence,
    legend_outside,
    markdown_table,
    parse_args,
    run_study,
    write_csv,
)

STUDY = "malicious_server"
DETECTORS = ("splitguard", "labelgap")
QUALITY = [f"steps_to_{k}_{v}" for k, v in ReconstructionLog.THRESHOLDS.items()]
FINAL = ["final_linkage_k10_advantage", "final_linkage_within_k10_advantage",
         "final_pearson_median", "final_prdn_median",
         "final_snr_db_median", "prior_linkage_k10_advantage", "prior_pearson_median"]
DETECTION = [f"{d}_{k}" for d in DETECTORS for k in ("detected", "detected_at_batch",
                                                      "mean_score")]
#: the attacks on the FSHA runs and the honest reference: identity inference (which patient)
ATTACKS = ("identity",)
COLUMNS = ["study", "setting", "server", "detector", "seed", "depth", "topology", "epochs",
           "defenses", "test_accuracy", "final_test_accuracy", "first_test_accuracy",
           *QUALITY, *FINAL, *DETECTION, *attack_column_names(ATTACKS), "train_seconds",
           "run_dir"]
QUICK = dict(seeds=1, epochs=3, train_subset=1000, test_subset=500)


@dataclass
class Args(StudyArgs):
    epochs: int = 5
    """training epochs of every run"""
    train_subset: int | None = 3000
    """training beats (FSHA's cost grows with its steps; 3,000 beats = 94 steps an epoch)"""
    test_subset: int | None = 1000
    """test beats"""
    fsha: str = "fsha:aux=public:0.1,record_every=25"
    """the malicious server's spec"""
    settings: list[str] = field(default_factory=lambda: [
        "none", "dp-paper", "dp-formal", "nopeek", "dpsgd", "depth8", "ushape"])
    """the defenses FSHA runs against"""
    epsilon: float = 8.0
    """epsilon of paper DP, formal DP and DP-SGD (a usable one)"""


def setting_fields(name: str, args: Args) -> dict[str, Any] | None:
    """The TrainConfig fields of a defense setting (None: dropped, the model has no depth)."""
    specs = {
        "none": [], "depth8": [], "ushape": ["ushape"],
        "dp-paper": [format_spec("dp", {"mode": "paper", "epsilon": args.epsilon})],
        "dp-formal": [format_spec("dp", {"mode": "formal", "mechanism": "gaussian",
                                         "target_epsilon": args.epsilon, "epochs": args.epochs,
                                         "clip": 2})],
        "nopeek": [format_spec("nopeek", {"alpha": 1})],
        "dpsgd": [format_spec("dpsgd", {"target_epsilon": args.epsilon, "epochs": args.epochs,
                                        "max_grad_norm": 1})],
    }
    if name not in specs:
        raise ValueError(f"unknown setting {name!r}; known: {sorted(specs)}")
    model = args.architecture(name, depth=8 if name == "depth8" else None)
    return None if model is None else {"defenses": specs[name], **model}


def detector_specs(seed: int) -> list[str]:
    """The detectors' specs of a run: default parameters, SplitGuard's probe draws seeded by the
    run's seed (so that its fake batches differ between seeds, not between servers)."""
    return [format_spec("splitguard", {"seed": seed}), "labelgap"]


def plan(args: Args) -> list[Planned]:
    out = []
    for seed in args.seed_list():
        for s in args.settings:
            fields = setting_fields(s, args)
            if fields is not None:
                out.append(Planned(f"fsha-{s}-s{seed}", args.train_config(
                    seed=seed, server=args.fsha, **fields),
                    {"setting": s, "server": "fsha", "detector": "none"}, attacks=ATTACKS))
        for server, spec in (("honest", "honest"), ("fsha", args.fsha)):
            out.append(Planned(f"detect-{server}-s{seed}", args.train_config(
                seed=seed, server=spec, defenses=detector_specs(seed)),
                {"setting": "none", "server": server, "detector": "+".join(DETECTORS)},
                attacks=()))
        out.append(Planned(f"honest-none-s{seed}", args.train_config(seed=seed),
                           {"setting": "none", "server": "honest", "detector": "none"},
                           attacks=ATTACKS))
    return out


def log_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's FSHA log (``fsha.jsonl``), one dict per record (empty when there is none)."""
    path = Path(run_dir) / "fsha.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def enrich(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its run's FSHA quality, detection and first-epoch accuracy columns, read
    from the run directory (result.json, fsha.jsonl, metrics.jsonl)."""
    out = []
    for row in rows:
        result = read_json(Path(row["run_dir"]) / "result.json")
        extra: dict[str, Any] = dict.fromkeys([*QUALITY, *FINAL, *DETECTION], math.nan)
        rec = result.get("server", {}).get("reconstructions")
        if rec and rec.get("records"):
            fin = rec["final"]
            extra |= {k: math.nan if rec.get(k) is None else rec[k] for k in QUALITY}
            extra |= {"final_linkage_k10_advantage": fin["linkage_k10_advantage"],
                      "final_linkage_within_k10_advantage": fin.get(
                          "linkage_within_k10_advantage", math.nan),
                      "final_pearson_median": fin["pearson_median"],
                      "final_prdn_median": fin["prdn_median"],
                      "final_snr_db_median": fin["snr_db_median"],
                      "prior_linkage_k10_advantage": fin["prior_mean_beat_linkage_k10_advantage"],
                      "prior_pearson_median": fin["prior_mean_beat_pearson_median"]}
        for claim in result.get("defenses", []):
            if claim["name"] in DETECTORS:
                scores = [s for _, s in claim["scores"]]
                at = claim["detected_at_batch"]
                extra |= {f"{claim['name']}_detected": float(claim["detected"]),
                          f"{claim['name']}_detected_at_batch": math.nan if at is None else at,
                          f"{claim['name']}_mean_score": float(np.mean(scores)) if scores
                          else math.nan}
        metrics = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        extra["first_test_accuracy"] = json.loads(metrics[0])["test_accuracy"]
        out.append(row | extra)
    return out


def honest_identity(rows: list[dict]) -> str:
    """Identity's top-1 (chance) on the honest server's undefended runs, in words."""
    honest = [r for r in rows if r["server"] == "honest" and r["detector"] == "none"]
    s = aggregate(honest, ["server"], ["identity_top1", "identity_chance"])
    if not s or not s[0]["identity_top1"].n:
        return "identity not computed."
    return f"identity top-1 {s[0]['identity_top1']} (chance {s[0]['identity_chance']})."


def summary_markdown(rows: list[dict], title: str) -> str:
    rows = enrich(rows)
    fsha = [r for r in rows if r["server"] == "fsha" and r["detector"] == "none"]
    body = []
    for s in aggregate(fsha, ["setting"], ["test_accuracy", "first_test_accuracy", *QUALITY,
                                           *FINAL, "identity_top1", "identity_chance"]):
        body.append([s["setting"], s["n"], s["first_test_accuracy"], s["test_accuracy"],
                     s[QUALITY[0]], s[QUALITY[1]],
                     f"{s['final_linkage_k10_advantage']} ({s['prior_linkage_k10_advantage']})",
                     s["final_linkage_within_k10_advantage"],
                     f"{s['final_pearson_median']} ({s['prior_pearson_median']})",
                     s["final_prdn_median"], s["final_snr_db_median"], identity_cell(s)])
    header = ["defense", "n", "test acc. epoch 1 (%)", "test acc. (%)",
              "steps to linkage k10 >= 0.5", "steps to median r >= 0.9",
              "final linkage k10 (prior)", "final linkage k10 within patient",
              "final median r (prior)", "final PRDN (%)",
              "final SNR (dB)", "identity top-1, 1 beat (chance 1/N)"]
    det = []
    for s in aggregate([r for r in rows if r["detector"] != "none" or r["server"] == "honest"],
                       ["server", "detector"], ["test_accuracy", *DETECTION]):
        det.append([s["server"], s["detector"], s["n"], s["test_accuracy"],
                    *(s[c] for c in DETECTION)])
    det_header = ["server", "detectors", "n", "test acc. (%)",
                  *(c.replace("_", " ") for c in DETECTION)]
    return "\n".join([
        f"# FSHA, a malicious server ({title})", "", markdown_table(header, body), "",
        "Reconstructions of the training batch that crossed, every record_every steps, scored "
        "by the run (never by the server) against the true beats; steps: first record passing "
        "the quality (NaN: never within the run). Prior: the public mean beat. "
        + interval_sentence(rows) + " The U-shaped row equals the undefended one by "
        "construction, not by a missing "
        "topology: FSHA replaces the cut gradient, so the client's layers never see the head's "
        "loss, and splitting the server's two dense layers into server + client head trains the "
        "same function with the same updates (the runs' client weights and test accuracy are "
        "bit-identical: tests/test_fsha.py). " + IDENTITY_TEXT + " Under an honest server "
        "(honest-none, results.csv): " + honest_identity(rows), "",
        "## Detection on the client", "",
        markdown_table(det_header, det), "",
        "detected: fraction of runs whose alarm fired (under an honest server: false alarms); "
        "detected at batch: the training batch of the alarm; mean score: SplitGuard's score "
        "(1 = honest-looking) or the label gap (mean same-class minus other-class cosine of "
        "per-beat cut gradients). SplitGuard's cost: the honest rows' accuracy with and without "
        "detectors.", ""])


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    apply_style()
    rows = enrich(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), layout="constrained")
    for ax, name in zip(axes, DETECTORS, strict=True):
        for row in (r for r in rows if r["detector"] != "none"):
            result = read_json(Path(row["run_dir"]) / "result.json")
            claim = next(c for c in result["defenses"] if c["name"] == name)
            if claim["scores"]:
                b, s = np.array(claim["scores"]).T
                ax.plot(b, s, color=OKABE_ITO[0 if row["server"] == "honest" else 3],
                        linewidth=0.8, label=row["server"])
        ax.set_xlabel("training batch")
        ax.set_ylabel("SplitGuard score" if name == "splitguard" else "label gap (cosine)")
    legend_outside(fig, axes, title="server")
    figs.save(fig, "detection", "Detector scores over training under an honest server (blue) "
              "and FSHA (orange): SplitGuard's score of its fake-label batches (left, 1 = "
              "honest-looking; alarm below 0.5) and the passive label gap of the cut gradients "
              "(right; alarm below 0.2). " + note)
    run = next((r for r in rows if r["setting"] == "none" and r["server"] == "fsha"
                and r["detector"] == "none"), None)
    log = log_rows(run["run_dir"]) if run else []
    if log:
        picks = [log[i] for i in sorted({0, len(log) // 3, 2 * len(log) // 3, len(log) - 1})]
        fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 3.6),
                                 layout="constrained", squeeze=False)
        for j, rec in enumerate(picks):
            for i in range(2):
                ax = axes[i, j]
                ax.plot(rec["examples"]["x"][i], color="0.3", linewidth=1, label="true")
                ax.plot(rec["examples"]["x_hat"][i], color=OKABE_ITO[3], linewidth=1,
                        label="FSHA")
                ax.set_xticks([])
                if i == 0:
                    ax.set_title(f"step {rec['step']}", fontsize=8)
        legend_outside(fig, axes[0, 0])
        figs.save(fig, "reconstructions", "True training beats (grey) beside FSHA's decoder "
                  "output for the activations that crossed (orange), at a few training steps, "
                  "no defense, first seed. " + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    rows = enrich(run_study(args, study=STUDY, plan=plan(args), columns=COLUMNS,
                            summarize=summary_markdown, draw=draw_figures))
    write_csv(args.out_dir(STUDY) / "results.csv", rows, COLUMNS)  # with the enriched columns
    return rows


if __name__ == "__main__":
    cli(main)
