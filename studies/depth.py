"""More hidden layers on the client: does depth hide the input? The paper's depth table, redone.

Abuadbba et al. 2020 trained clients of 2 to 8 conv layers and reported the best test accuracy
by depth (98.52 at 2 down to 95.07 at 8) and, at 2 and 8 layers, the leakage at the cut (dCor
max/min, DTW min/max per channel). This study trains every depth over seeds, measures the same
leakage on the activations the server receives (each activation against its own input) and
prints both beside the paper's numbers (``splitpriv.published``; how they were obtained:
docs/reference.md), with the floor of dCor (bias-corrected dCor², about 0 on independent data) and
the privacy axis of the other studies: the re-identification advantage of the strongest attack
(inversions and matching in activation space, chosen on the attacker's held-out aux beats; across
and within patient; 0 = chance), with the strongest inversion's median Pearson r beside the
priors', and identity inference (``attacks/identity.py``: which enrolled patient sent a beat's
activations).

Writes OUT/results.csv (one row per run), OUT/summary.md and OUT/figures/depth (accuracy, dCor,
DTW and the re-identification advantage against depth).

    python studies/depth.py                # 30 epochs, 3 seeds, depths 2..8
    python studies/depth.py --quick        # smoke budget
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import matplotlib.pyplot as plt

from splitpriv.published import ACCURACY_BY_DEPTH, LEAKAGE_BY_DEPTH
from studies.common import (
    ACCURACY_COLUMNS,
    ATTACK_TEXTS,
    IDENTITY_TEXT,
    INVERSION_TABLE,
    OKABE_ITO,
    QUICK,
    REID_HEADER,
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    chance_accuracy,
    cli,
    interval_sentence,
    markdown_table,
    paper_setup,
    parse_args,
    reid_cells,
    run_study,
)

STUDY = "depth"
ATTACKS = Planned.attacks  # dcor, dtw, strongest, identity
COLUMNS = ["study", "seed", "protocol", "depth", "epochs", "defenses", *ACCURACY_COLUMNS,
           *attack_column_names(ATTACKS),
           "train_seconds", "wall_seconds", "run_dir"]
METRICS = ["test_accuracy", "test_macro_f1", "best_test_accuracy", "dcor_max", "dcor_min",
           "dcor_batch", "dcor_batch_unbiased", "dtw_min", "dtw_max", *INVERSION_TABLE]


@dataclass
class Args(StudyArgs):
    depths: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    """client conv layers"""


def plan(args: Args) -> list[Planned]:
    models = {d: args.architecture(f"depth{d}", depth=d) for d in args.depths}
    return [Planned(f"depth{d}-s{seed}", args.train_config(seed=seed, **model), {},
                    attacks=ATTACKS)
            for seed in args.seed_list() for d, model in models.items() if model is not None]


def published(rows: list[dict]) -> tuple[dict, dict]:
    """The paper's accuracy and leakage by depth, beside runs on MIT-BIH with its model only
    (other data or models: nothing to compare with)."""
    return (ACCURACY_BY_DEPTH, LEAKAGE_BY_DEPTH) if paper_setup(rows) else ({}, {})


def summary_markdown(rows: list[dict], title: str) -> str:
    accuracy_by_depth, leakage_by_depth = published(rows)
    body = []
    for s in sorted(aggregate(rows, ["depth"], METRICS, ATTACK_TEXTS),
                    key=lambda s: s["depth"]):
        d = int(s["depth"])
        p = leakage_by_depth.get(d)
        body.append([d, s["n"], s["test_accuracy"], s["test_macro_f1"], s["best_test_accuracy"],
                     accuracy_by_depth.get(d, "-"), f"{s['dcor_max']} / {s['dcor_min']}",
                     f"{p['dcor_max']} / {p['dcor_min']}" if p else "-",
                     f"{s['dcor_batch']} / {s['dcor_batch_unbiased']}",
                     f"{s['dtw_min']} / {s['dtw_max']}",
                     f"{p['dtw_min']} / {p['dtw_max']}" if p else "-",
                     *reid_cells(s)[:-1],
                     f"{s['inversion_pearson_r']} ({s['prior_mean_beat_pearson_r']} / "
                     f"{s['prior_class_mean_pearson_r']})", s["inversion_prdn"]])
    header = ["depth", "n", "test acc (val-selected, %)", "test macro-F1 (%)", "best test acc (%)",
              "paper best acc", "dCor max / min", "paper dCor max / min",
              "dCor batch (V / unbiased dCor²)", "DTW min / max", "paper DTW min / max",
              *REID_HEADER[:-1], "inversion r (mean beat / class mean)",
              "inversion PRDN (%)"]
    return "\n".join([
        f"# Client depth ({title})", "", markdown_table(header, body), "",
        interval_sentence(rows) + " dCor and DTW per channel (paper definitions), max/min over the "
        "16 channels, training beats, each activation paired with its own input; dCor batch: "
        "V-statistic / bias-corrected dCor². Re-identification advantage of the strongest "
        "attack (inversions and activation-space matching, chosen on the attacker's held-out "
        "beats; every release the server holds), across patients and within patient (0 = "
        "chance, what the priors score); the strongest inversion's own linkage, its median r "
        "with the mean-beat and class-mean priors' in brackets. "
        + ("Paper: Abuadbba et al. 2020, 10 runs, 400 epochs, paper protocol, leakage at epoch "
           "100. " if accuracy_by_depth else "Paper columns: only for MIT-BIH on the paper's "
           "model. ") + IDENTITY_TEXT, ""])


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    apply_style()
    ss = sorted(aggregate(rows, ["depth"], METRICS), key=lambda s: s["depth"])
    depths = [int(s["depth"]) for s in ss]
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.6), layout="constrained")
    accuracy_by_depth, leakage_by_depth = published(rows)
    panels = [(("test_accuracy", "best_test_accuracy"), "test accuracy (%)", accuracy_by_depth),
              (("dcor_max", "dcor_min"), "dCor, paper def. (unitless)", None),
              (("dtw_min", "dtw_max"), "DTW distance (normalised amplitude)", None),
              (("privacy_k10_advantage", "privacy_k100_advantage"),
               "re-identification advantage\n(strongest attack; 0 = chance)", {})]
    names = {"test_accuracy": "test accuracy (val-selected)",
             "best_test_accuracy": "best test accuracy (max over epochs)",
             "dcor_max": "dCor max over channels", "dcor_min": "dCor min over channels",
             "dtw_min": "DTW min over channels", "dtw_max": "DTW max over channels",
             "privacy_k10_advantage": "among 10 beats", "privacy_k100_advantage": "among 100 beats"}
    for ax, (keys, ylabel, paper) in zip(axes, panels, strict=True):
        for i, key in enumerate(keys):
            ax.errorbar(depths, [s[key].mean for s in ss], yerr=[s[key].sd for s in ss],
                        marker="os"[i], color=OKABE_ITO[i], capsize=2,
                        linestyle="-" if i == 0 else "--", label=names[key])
            if paper is None and key in leakage_by_depth.get(2, {}):
                pd = [d for d in depths if d in leakage_by_depth]
                ax.plot(pd, [leakage_by_depth[d][key] for d in pd], "x", color=OKABE_ITO[i],
                        markersize=7, label=f"{names[key]}, Abuadbba et al. 2020")
        if paper:
            pd = [d for d in depths if d in paper]
            ax.plot(pd, [paper[d] for d in pd], "x", color=OKABE_ITO[7],
                    label="best accuracy, Abuadbba et al. 2020")
        if keys[0] == "dtw_min":
            ax.set_yscale("log")
        if keys[0] == "privacy_k10_advantage":
            ax.set_ylim(-0.05, 1.05)  # the whole range: 0 = chance, 1 = every victim
            ax.axhline(0, color="0.45", linewidth=0.8, linestyle=":",
                       label="chance (advantage 0)")
        ax.set_xlabel("client conv layers")
        ax.set_ylabel(ylabel)
        ax.set_xticks(depths)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, frameon=False)
    chance = chance_accuracy(rows)
    chance_text = (f" Chance accuracy (always guessing the test set's majority class): "
                   f"{chance:.1f}%, below the accuracy axis." if math.isfinite(chance) else "")
    figs.save(fig, "depth",
              "Client depth against accuracy (left), distance correlation (second; max and min "
              "over the 16 channels, higher = more leakage), DTW distance (third; lower = "
              "more similar) of the cut activations, and the re-identification advantage of the "
              "strongest attack (right; the larger of across and within patient, among 10 and "
              "100 beats of the victim's class, 0 = chance, 1 = every victim picked out). "
              + interval_sentence(rows)
              + (" Crosses: Abuadbba et al. 2020." if accuracy_by_depth else "") + chance_text + " "
              + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    return run_study(
        args, study=STUDY, plan=plan(args), columns=COLUMNS,
        summarize=summary_markdown, draw=draw_figures,
    )


if __name__ == "__main__":
    cli(main)
