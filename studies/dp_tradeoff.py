"""Activation DP at the cut: what each epsilon costs in accuracy and buys in privacy.

Sweeps the ``dp`` defense in two modes, over seeds:

* paper mode (Abuadbba et al. 2020's Laplace recipe, no formal guarantee): per-release epsilon in
  {1, 3, 5, 7, 10, none};
* formal mode (clipped activations, Gaussian noise calibrated to a total training epsilon over
  all epochs, delta 1e-5): epsilon in {0.5, 1, 2, 4, 8, 16, none}.

``none`` is the undefended run, shared by both modes (one run directory per seed). For every run:
the test accuracy at the best-validation epoch and the paper's "best test accuracy" (max over
epochs); leakage of what the server really sees (the defended activations, recomputed from the
final weights with the run's defenses): dCor (paper per-channel and NoPeek batch definitions), DTW
(paper and scale-free); and a learned-decoder inversion trained on defended activations of an
auxiliary 10% of the training beats (median Pearson r and PRD of the reconstructed beats).

Writes OUT/results.csv (one row per run), OUT/summary.md (mean ± sd per setting beside the
paper's numbers, ``splitpriv.published.LAPLACE_DP``; how they were obtained: docs/reference.md)
and OUT/figures/ (accuracy vs epsilon, leakage vs epsilon, accuracy vs leakage).
Run directories live in OUT/runs/; rerunning skips finished runs and attacks.

    python studies/dp_tradeoff.py                 # default budget: 30 epochs, 3 seeds
    python studies/dp_tradeoff.py --quick         # smoke budget, under 5 minutes
    python studies/dp_tradeoff.py --epochs 100 --seeds 5 --out studies/out/dp-e100
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.pyplot as plt

from splitpriv.options import format_spec
from splitpriv.published import LAPLACE_DP
from splitpriv.run import TrainConfig
from studies.common import (
    MARKERS,
    OKABE_ITO,
    QUICK,
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    epsilon_axis,
    epsilon_label,
    markdown_table,
    parse_args,
    parse_epsilon,
    plot_tradeoff,
    run_study,
)

STUDY = "dp_tradeoff"

#: the attacks on every run (Planned's default)
ATTACKS = Planned.attacks
COLUMNS = ["study", "mode", "epsilon", "seed", "protocol", "depth", "epochs", "defenses",
           "test_accuracy", "best_test_accuracy", "final_test_accuracy",
           *attack_column_names(ATTACKS),
           "accounted_epsilon", "noise_multiplier", "train_seconds", "wall_seconds", "run_dir"]
METRICS = ["test_accuracy", "best_test_accuracy", "dcor_max", "dcor_min", "dcor_batch",
           "dtw_min", "dtw_max", "dtw_scale_free_min", "inversion_pearson_r", "inversion_prd",
           "accounted_epsilon", "noise_multiplier"]
MODES = ("paper", "formal")
MODE_COLORS = {"paper": OKABE_ITO[0], "formal": OKABE_ITO[1], "none": OKABE_ITO[7]}
MODE_NAMES = {"paper": "paper mode (no guarantee)", "formal": "formal mode", "none": "no defense"}


@dataclass
class Args(StudyArgs):
    paper_epsilons: list[float | None] = field(
        default_factory=lambda: [1.0, 3.0, 5.0, 7.0, 10.0, None])
    """paper mode: per-release epsilons of the Laplace noise (none: no noise)"""
    formal_epsilons: list[float | None] = field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None])
    """formal mode: total training epsilons (delta 1e-5) over all epochs (none: no noise)"""
    formal_mechanism: str = "gaussian"
    """formal mode: gaussian (L2 clip) or laplace (L1 clip)"""
    formal_clip: float = 2.0
    """formal mode: clip bound on each beat's activation vector (the untrained client's median
    L2 norm is about 2.4)"""
    depth: int = 2
    """client conv layers"""


def plan(args: Args) -> list[Planned]:
    """The runs: the undefended baseline and every (mode, epsilon), for every seed."""
    paper = [e for e in args.paper_epsilons if e is not None]
    formal = [e for e in args.formal_epsilons if e is not None]
    runs = []
    for seed in args.seed_list():
        def config(specs: list[str], seed: int = seed) -> TrainConfig:
            return args.train_config(seed=seed, depth=args.depth, defenses=specs)

        if None in args.paper_epsilons or None in args.formal_epsilons:
            runs.append(Planned(f"none-s{seed}", config([]), {"mode": "none", "epsilon": None}))
        for eps in paper:
            spec = format_spec("dp", {"mode": "paper", "epsilon": eps})
            runs.append(Planned(f"paper-eps{eps:g}-s{seed}", config([spec]),
                                {"mode": "paper", "epsilon": eps}))
        for eps in formal:
            spec = format_spec("dp", {"mode": "formal", "mechanism": args.formal_mechanism,
                                      "target_epsilon": eps, "epochs": args.epochs,
                                      "clip": args.formal_clip})
            runs.append(Planned(f"formal-{args.formal_mechanism}-eps{eps:g}-s{seed}",
                                config([spec]), {"mode": "formal", "epsilon": eps}))
    return runs


def settings(rows: list[dict]) -> dict[str, list[dict]]:
    """Per mode, one aggregated setting per epsilon (the undefended baseline as ``none`` in both
    modes), ordered by increasing epsilon with ``none`` last."""
    agg = aggregate(rows, ["mode", "epsilon"], METRICS)
    for s in agg:
        s["epsilon"] = parse_epsilon(s["epsilon"])
    out = {}
    for mode in MODES:
        mine = [dict(s) for s in agg if s["mode"] == mode]
        mine += [dict(s, mode=mode) for s in agg if s["mode"] == "none"]
        if any(s["mode"] == mode for s in agg):
            out[mode] = sorted(mine, key=lambda s: (s["epsilon"] is None, s["epsilon"] or 0))
    return out


def summary_markdown(rows: list[dict], title: str) -> str:
    """summary.md: mean ± sd over seeds per setting, the paper's numbers beside ours."""
    lines = [f"# {title}", ""]
    for mode, ss in settings(rows).items():
        if mode == "paper":
            lines += ["## Paper mode (Laplace, sensitivity = the batch's range; no formal "
                      "guarantee)", "",
                      "Paper columns: Abuadbba et al. 2020, paper protocol, 400 epochs, "
                      "leakage at epoch 100 with first-of-batch pairing.", ""]
            header = ["epsilon", "n", "test acc (val-selected, %)", "best test acc (%)",
                      "paper best acc", "dCor max / min", "paper dCor max / min",
                      "dCor batch", "DTW min / max", "paper DTW min / max",
                      "inversion r", "inversion PRD (%)"]
            body = []
            for s in ss:
                p = LAPLACE_DP.get(s["epsilon"])
                body.append([
                    epsilon_label(s["epsilon"]), s["n"], s["test_accuracy"],
                    s["best_test_accuracy"], p["acc"] if p else "-",
                    f"{s['dcor_max']} / {s['dcor_min']}",
                    f"{p['dcor_max']} / {p['dcor_min']}" if p else "-", s["dcor_batch"],
                    f"{s['dtw_min']} / {s['dtw_max']}",
                    f"{p['dtw_min']} / {p['dtw_max']}" if p else "-",
                    s["inversion_pearson_r"], s["inversion_prd"],
                ])
        else:
            lines += ["## Formal mode (clipped activations, calibrated noise, accounted over "
                      "every training epoch; delta 1e-5)", ""]
            header = ["target epsilon", "n", "accounted epsilon", "noise multiplier",
                      "test acc (val-selected, %)", "best test acc (%)", "dCor max",
                      "dCor batch", "DTW min", "inversion r", "inversion PRD (%)"]
            body = [[epsilon_label(s["epsilon"]), s["n"], s["accounted_epsilon"],
                     s["noise_multiplier"], s["test_accuracy"], s["best_test_accuracy"],
                     s["dcor_max"], s["dcor_batch"], s["dtw_min"], s["inversion_pearson_r"],
                     s["inversion_prd"]] for s in ss]
        lines += [markdown_table(header, body), ""]
    lines += ["Mean ± sd over seeds. Leakage is measured on the defended activations the server "
              "receives (recomputed from the final weights with the run's defenses, training "
              "beats, each activation paired with its own input). Inversion: a decoder trained "
              "on the defended activations of the attacker's auxiliary beats; median Pearson r "
              "and PRD over the other beats (r of the mean beat alone: "
              f"{aggregate(rows, ['study'], ['baseline_pearson_r'])[0]['baseline_pearson_r']}).",
              ""]
    return "\n".join(lines)


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    """Accuracy vs epsilon, leakage vs epsilon, and accuracy vs leakage, from results rows."""
    apply_style()
    by_mode = settings(rows)
    xlabels = {"paper": "per-release epsilon (paper mode, no guarantee)",
               "formal": "total training epsilon (formal mode, δ = 1e-5)"}

    # accuracy vs epsilon, one panel per mode
    fig, axes = plt.subplots(1, len(by_mode), figsize=(3.5 * len(by_mode), 3.0), squeeze=False,
                             layout="constrained")
    for ax, (mode, ss) in zip(axes[0], by_mode.items(), strict=True):
        pos = epsilon_axis(ax, [s["epsilon"] for s in ss])
        xs = [pos(s["epsilon"]) for s in ss]
        for i, (key, what) in enumerate((("test_accuracy", "test acc. (val-selected)"),
                                         ("best_test_accuracy", "best test acc. (max over "
                                                                "epochs)"))):
            ax.errorbar(xs, [s[key].mean for s in ss], yerr=[s[key].sd for s in ss],
                        marker=MARKERS[i], color=MODE_COLORS[mode], capsize=2,
                        linestyle="-" if i == 0 else "--", label=what)
        if mode == "paper":
            eps = [e for e in LAPLACE_DP if any(s["epsilon"] == e for s in ss)]
            ax.plot([pos(e) for e in eps], [LAPLACE_DP[e]["acc"] for e in eps], "x",
                    color=OKABE_ITO[7], label="Abuadbba et al. 2020")
        ax.axhline(100 / 5, color="0.5", linewidth=0.8, linestyle=":", label="uniform guess")
        ax.set_xlabel(xlabels[mode])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(loc="best", fontsize=6)
    figs.save(fig, "accuracy_vs_epsilon",
              "Test accuracy of the 2-conv split model against the epsilon of activation DP: "
              "paper mode (left; the paper's Laplace recipe, no formal guarantee) and formal mode "
              "(right; clipped, calibrated noise, total training epsilon). Mean ± sd over seeds; "
              "'none' is the undefended model; crosses are the paper's best test accuracy. "
              + note)

    # leakage vs epsilon
    panels = [("dcor_max", "dCor, paper def. (max over channels)", "dCor (unitless)"),
              ("dcor_batch", "dCor, batch def. (mean over batches)", "dCor (unitless)"),
              ("dtw_min", "DTW, paper def. (min over channels)",
               "DTW distance (normalised amplitude)"),
              ("inversion_pearson_r", "decoder inversion (median over beats)",
               "Pearson r (unitless)")]
    fig, axes = plt.subplots(2, 2, figsize=(7.0, 5.6), layout="constrained")
    every_eps = list({s["epsilon"] for ss in by_mode.values() for s in ss})
    for ax, (key, title, ylabel) in zip(axes.flat, panels, strict=True):
        pos = epsilon_axis(ax, every_eps)
        for i, (mode, ss) in enumerate(by_mode.items()):
            ax.errorbar([pos(s["epsilon"]) for s in ss], [s[key].mean for s in ss],
                        yerr=[s[key].sd for s in ss], marker=MARKERS[i], color=MODE_COLORS[mode],
                        capsize=2, label=MODE_NAMES[mode])
        if key in ("dcor_max", "dtw_min") and "paper" in by_mode:
            eps = [e for e in LAPLACE_DP if any(s["epsilon"] == e for s in by_mode["paper"])]
            ax.plot([pos(e) for e in eps], [LAPLACE_DP[e][key] for e in eps], "x",
                    color=OKABE_ITO[7], label="Abuadbba et al. 2020 (paper mode)")
        if key == "dtw_min":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epsilon (paper: per release; formal: total)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    figs.save(fig, "leakage_vs_epsilon",
              "Leakage of the defended activations the server receives, against epsilon: "
              "distance correlation with the input (paper per-channel and NoPeek batch "
              "definitions; higher = more leakage), DTW distance (lower = more similar) and the "
              "median Pearson r of a learned decoder's reconstructions (higher = better "
              "inversion). Mean ± sd over seeds; crosses: the paper's values, measured with a "
              "flawed pairing. " + note)

    # accuracy vs leakage
    flat = [s for ss in by_mode.values() for s in ss]
    seen, points = set(), []
    for s in flat:  # the baseline once, as its own group
        if s["epsilon"] is None:
            if None in seen:
                continue
            seen.add(None)
            s = dict(s, mode="none")
        points.append(dict(s, label=epsilon_label(s["epsilon"]), group=MODE_NAMES[s["mode"]]))
    colors = {MODE_NAMES[m]: c for m, c in MODE_COLORS.items()}
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), sharey=True, layout="constrained")
    plot_tradeoff(axes[0], points, x="dcor_max", y="test_accuracy", group_key="group",
                  label_key="label", xlabel="dCor, paper def., max over channels (unitless)",
                  ylabel="test accuracy, val-selected (%)", colors=colors)
    plot_tradeoff(axes[1], points, x="inversion_pearson_r", y="test_accuracy",
                  group_key="group", label_key="label", colors=colors,
                  xlabel="decoder inversion, median Pearson r (unitless)", ylabel="")
    axes[0].legend(loc="lower right")
    figs.save(fig, "tradeoff",
              "Accuracy against leakage for activation DP: each marker is one setting (mean ± sd "
              "over seeds), labelled with its epsilon (\"(+n)\": n more settings hidden under the "
              "label); the dashed line is the Pareto front "
              "(no other setting has lower leakage and higher accuracy). Left: distance "
              "correlation of the defended activations with the input; right: how well a learned "
              "decoder inverts them. " + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    return run_study(
        args, study=STUDY, plan=plan(args), columns=COLUMNS,
        summarize=lambda rows, b: summary_markdown(
            rows, f"Activation DP trade-off (depth {args.depth}, {b})"
        ),
        draw=draw_figures,
    )


if __name__ == "__main__":
    main()
