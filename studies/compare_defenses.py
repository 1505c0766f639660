"""Every defense on the same runs and the same attacks: which buys the most privacy per point of
accuracy?

Settings (each over seeds): no defense; paper-mode activation DP (a few epsilons); formal
activation DP (a few total training epsilons); U-shape (labels stay on the client); NoPeek
(an alpha grid); client DP-SGD; deeper clients (depth 3..8, no other defense); the obfuscation
defenses the peer toolkits carry, two strengths each (MID, attacker-aware training as ResSFL,
Shredder, mixup at the cut); and combinations (U-shape + DP, NoPeek + DP).

Metrics per run: test accuracy (validation-selected) and the paper's best test accuracy; dCor
(V-statistic and bias-corrected) and DTW of the defended activations; the strongest attack
(``attacks.strongest``: the inversions and matching in activation space, whichever
re-identifies the attacker's held-out aux beats best, from every release the server kept): its
re-identification advantage across and within patient, the larger the privacy axis (0 =
chance); identity inference (``attacks/identity.py``: which enrolled patient sent a beat's
activations, top-1 against chance 1/N); the strongest inversion's median Pearson r and PRDN
beside the mean-beat and class-mean priors'; the scope of the formal claim; label inference:
in the vanilla topology the labels cross in the clear (100%), in the U-shaped one the best of
the norm, direction and k-means attacks on the output gradients.

Writes OUT/results.csv (one row per run: dp_tradeoff's columns plus ``defense``, ``family`` and
``label_attack_accuracy``), OUT/summary.md (one table, mean ± sd, Pareto-front members marked)
and OUT/figures/tradeoff (accuracy vs leakage with the Pareto front).

    python studies/compare_defenses.py                  # 30 epochs, 3 seeds
    python studies/compare_defenses.py --quick          # smoke budget
    python studies/compare_defenses.py --only none ushape nopeek-a1   # a subset of settings
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt

from splitpriv.options import format_spec
from studies.common import (
    ATTACK_TEXTS,
    IDENTITY_TEXT,
    INVERSION_TABLE,
    OKABE_ITO,
    PRIVACY_AXIS,
    PRIVACY_AXIS_LABEL,
    QUICK,
    REID_HEADER,
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    chance_line,
    cli,
    interval_sentence,
    interval_text,
    legend_outside,
    markdown_table,
    only_settings,
    pareto_front,
    parse_args,
    plot_tradeoff,
    reid_cells,
    run_study,
)
from studies.dp_tradeoff import COLUMNS as DP_COLUMNS

STUDY = "compare_defenses"
LEAKAGE = ("dcor", "dtw", "strongest", "identity")
LABELS_CLEAR = ("label-direction",)  # vanilla topology: the labels cross, read not inferred
LABELS_USHAPE = ("label-norm", "label-direction", "label-kmeans")
COLUMNS = ["study", "defense", "family", *DP_COLUMNS[1:-1], *attack_column_names(LEAKAGE),
           "claim_scope", *attack_column_names(LABELS_USHAPE), "run_dir"]
METRICS = ["test_accuracy", "test_macro_f1", "best_test_accuracy", "dcor_max", "dcor_batch",
           "dcor_batch_unbiased", "dtw_min", *INVERSION_TABLE, "inversion_prd",
           "label_attack_accuracy", "accounted_epsilon"]
TEXTS = [*ATTACK_TEXTS, "claim_scope"]


@dataclass
class Args(StudyArgs):
    paper_epsilons: list[float] = field(default_factory=lambda: [3.0, 10.0])
    """paper-mode DP: per-release epsilons"""
    formal_epsilons: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0])
    """formal-mode DP (Gaussian, clip 2): total training epsilons"""
    nopeek_alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 3.0])
    """NoPeek: weights of the dCor loss"""
    dpsgd_epsilons: list[float] = field(default_factory=lambda: [4.0])
    """client DP-SGD (max_grad_norm 1): total epsilons"""
    depths: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    """deeper clients, no other defense"""
    mid_lams: list[float] = field(default_factory=lambda: [0.001, 0.1])
    """MID (variational bottleneck at the cut): KL weights"""
    ressfl_lams: list[float] = field(default_factory=lambda: [1.0, 10.0])
    """attacker-aware training (ResSFL): weights of the simulated decoder's error"""
    shredder_scales: list[float] = field(default_factory=lambda: [0.1, 0.3])
    """Shredder (learned Laplace noise at the cut): initial noise scales (lam = scale / 3)"""
    mixup_alphas: list[float] = field(default_factory=lambda: [0.2, 1.0])
    """mixup at the cut (two beats per release): Beta(alpha, alpha) concentrations"""
    combo_epsilon: float = 5.0
    """paper-mode DP epsilon of the combinations (U-shape + DP, NoPeek alpha 1 + DP)"""
    only: list[str] = field(default_factory=list)
    """run only these settings (names as in the table, e.g. none ushape nopeek-a1)"""


@dataclass
class Setting:
    """One row of the table: its name, family, the TrainConfig fields that differ and the typed
    activation-DP labels (``mode``: none, paper, formal or dpsgd; ``epsilon``: its epsilon)."""

    name: str
    family: str
    defenses: list[str]
    mode: str = "none"
    epsilon: float | None = None
    depth: int | None = None

    def fields(self, args: StudyArgs) -> dict[str, Any] | None:
        """The TrainConfig fields of this setting on the study's model (None: the model has no
        depth option, the setting is dropped)."""
        model = args.architecture(self.name, depth=self.depth)
        return None if model is None else {"defenses": self.defenses, **model}


def settings(args: Args) -> list[Setting]:
    """Every setting, in table order (``--only`` keeps those named)."""
    def dp_formal(eps: float) -> str:
        return format_spec("dp", {"mode": "formal", "mechanism": "gaussian",
                                  "target_epsilon": eps, "epochs": args.epochs, "clip": 2})

    def dp_paper(eps: float) -> str:
        return format_spec("dp", {"mode": "paper", "epsilon": eps})

    def dpsgd(eps: float) -> str:
        return format_spec("dpsgd", {"target_epsilon": eps, "epochs": args.epochs,
                                     "max_grad_norm": 1})

    ce = args.combo_epsilon
    out = [Setting("none", "none", [])]
    out += [Setting(f"dp-paper-e{e:g}", "paper DP", [dp_paper(e)], "paper", e)
            for e in args.paper_epsilons]
    out += [Setting(f"dp-formal-e{e:g}", "formal DP", [dp_formal(e)], "formal", e)
            for e in args.formal_epsilons]
    out += [Setting("ushape", "U-shape", ["ushape"])]
    out += [Setting(f"nopeek-a{a:g}", "NoPeek", [format_spec("nopeek", {"alpha": a})])
            for a in args.nopeek_alphas]
    out += [Setting(f"dpsgd-e{e:g}", "DP-SGD", [dpsgd(e)], "dpsgd", e)
            for e in args.dpsgd_epsilons]
    out += [Setting(f"depth{d}", "depth", [], depth=d) for d in args.depths]
    out += [Setting(f"mid-l{v:g}", "MID", [format_spec("mid", {"lam": v})]) for v in args.mid_lams]
    out += [Setting(f"ressfl-l{v:g}", "ResSFL", [format_spec("ressfl", {"lam": v})])
            for v in args.ressfl_lams]
    out += [Setting(f"shredder-s{v:g}", "Shredder",
                    [format_spec("shredder", {"scale": v, "lam": round(v / 3, 6)})])
            for v in args.shredder_scales]
    out += [Setting(f"mixup-a{v:g}", "mixup", [format_spec("mixup", {"alpha": v})])
            for v in args.mixup_alphas]
    out += [Setting(f"ushape+dp-paper-e{ce:g}", "combination", ["ushape", dp_paper(ce)],
                    "paper", ce),
            Setting(f"nopeek-a1+dp-paper-e{ce:g}", "combination",
                    [format_spec("nopeek", {"alpha": 1}), dp_paper(ce)], "paper", ce)]
    return only_settings(out, args.only)


def plan(args: Args) -> list[Planned]:
    runs = []
    for seed in args.seed_list():
        for s in settings(args):
            ushape, fields = "ushape" in s.defenses, s.fields(args)
            if fields is None:
                continue
            config = args.train_config(
                seed=seed, record_epochs="last",
                record_kinds="output_grad" if ushape else "labels", **fields,
            )
            labels = LABELS_USHAPE if ushape else LABELS_CLEAR
            runs.append(Planned(f"{s.name}-s{seed}", config,
                                {"defense": s.name, "family": s.family, "mode": s.mode,
                                 "epsilon": s.epsilon}, attacks=(*LEAKAGE, *labels)))
    return runs


def summary_markdown(rows: list[dict], title: str) -> tuple[str, list[dict]]:
    agg = aggregate(rows, ["defense", "family"], METRICS, TEXTS)
    front = set(pareto_front([s[PRIVACY_AXIS].mean for s in agg],
                             [s["test_accuracy"].mean for s in agg]))
    header = ["defense", "family", "n", "test acc (val-selected, %)", "test macro-F1 (%)",
              "best test acc (%)",
              "dCor max", "dCor batch (V / unbiased dCor²)", "DTW min",
              *REID_HEADER[:-1], "inversion r (mean beat / class mean)",
              "inversion PRDN (%)", "label attack acc (%)", "accounted epsilon", "claim scope",
              "Pareto"]
    body = [[s["defense"], s["family"], s["n"], s["test_accuracy"], s["test_macro_f1"],
             s["best_test_accuracy"],
             s["dcor_max"], f"{s['dcor_batch']} / {s['dcor_batch_unbiased']}", s["dtw_min"],
             *reid_cells(s)[:-1],
             f"{s['inversion_pearson_r']} ({s['prior_mean_beat_pearson_r']} / "
             f"{s['prior_class_mean_pearson_r']})", s["inversion_prdn"],
             s["label_attack_accuracy"], s["accounted_epsilon"],
             s["claim_scope"] if s["accounted_epsilon"].n else "-",
             "*" if i in front else ""] for i, s in enumerate(agg)]
    md = "\n".join([
        f"# Defenses compared ({title})", "", markdown_table(header, body), "",
        interval_sentence(rows) + " dCor and DTW: the defended activations recomputed from the "
        "final weights with the run's defenses, training beats. "
        "Privacy axis: the strongest re-identification (inversions: ridge, the convolutional "
        "and the MLP decoders; activation-space matching with a client model learned from the "
        "aux pairs; chosen on the attacker's held-out aux beats, its auxiliary 10% of the "
        "training beats), from every release of a beat the server holds, combined as the "
        "attacker chose (releases / beat): how often the victim's beat is picked out among k "
        "random other beats of its class, across patients and within the victim's own "
        "patient, (accuracy - chance) / (1 - chance); 0 = chance, which the priors (mean beat, "
        "class mean) score by construction. The inversion columns are the strongest "
        "reconstruction's own linkage and median r, the priors' r in "
        "brackets: an inversion r near them has learned little per beat. dCor batch: the "
        "V-statistic (floor about .3 on independent data at these sizes) / the bias-corrected "
        "dCor² (about 0 on independent data). "
        "Label attack: vanilla topology = labels read in the clear (100%); U-shape = best of "
        "the norm, direction and k-means attacks on the output gradients. Pareto (*): no "
        "other setting has both a lower re-identification advantage (the larger of the two "
        "games, k = 10) and a higher test accuracy. Only "
        "formal DP and DP-SGD carry a formal guarantee (accounted epsilon, delta 1e-5), and "
        "only over what the claim scope says. " + IDENTITY_TEXT, ""])
    return md, agg


#: one colour and marker per family, the same in every figure (black star: no defense)
FAMILY_COLORS = {"no defense": "0.1", "paper DP": OKABE_ITO[3], "formal DP": OKABE_ITO[0],
                 "U-shape": OKABE_ITO[2], "NoPeek": OKABE_ITO[4], "DP-SGD": OKABE_ITO[5],
                 "depth": OKABE_ITO[1], "combination": "0.55", "MID": OKABE_ITO[6],
                 "ResSFL": "#882255", "Shredder": "#117733", "mixup": "#44AA99"}
FAMILY_MARKERS = {"no defense": "*", "paper DP": "X", "formal DP": "o", "U-shape": "D",
                  "NoPeek": "v", "DP-SGD": "s", "depth": "^", "combination": "P", "MID": "h",
                  "ResSFL": "<", "Shredder": ">", "mixup": "p"}


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    """The trade-off: accuracy against re-identification and against dCor, Pareto fronts."""
    apply_style()
    agg = aggregate(rows, ["defense", "family"], METRICS)
    for s in agg:  # the undefended reference says what it is
        s["label"] = "no defense" if s["defense"] == "none" else s["defense"]
        s["family"] = "no defense" if s["family"] == "none" else s["family"]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.6), sharey=True, layout="constrained")
    for ax, x, xlabel in ((axes[0], PRIVACY_AXIS, PRIVACY_AXIS_LABEL),
                          (axes[1], "dcor_max", "dCor, paper def., max over channels "
                                                "(unitless)")):
        chance_line(ax, rows)
        if x == PRIVACY_AXIS:
            ax.axvline(0, color="0.45", linewidth=0.8, linestyle=":")
        plot_tradeoff(ax, agg, x=x, y=figs.utility, group_key="family", label_key="label",
                      xlabel=xlabel, ylabel=figs.utility_label if ax is axes[0] else "",
                      colors=FAMILY_COLORS, markers=FAMILY_MARKERS)
    legend_outside(fig, axes)
    figs.save(fig, "tradeoff",
              "Accuracy against leakage for every defense: one marker per setting ("
              + interval_text(rows) + "), one colour and marker per family; the dashed line is "
              "the Pareto "
              "front (no other setting has lower leakage and higher accuracy). Left: "
              "re-identification advantage of the strongest attack (inversions and "
              "activation-space matching, chosen on the attacker's held-out beats; every "
              "release the server holds; the larger of across and within patient): 0 "
              "(dotted) = chance, what the mean-beat and class-mean priors score; 1 = every "
              "victim picked out among 10 beats of its class. Right: distance correlation of "
              "those activations with the input. Every setting is labelled; a label moved away "
              "from a crowded point is joined to it by a thin line. Dotted horizontal line: "
              "chance accuracy (always guessing the test set's majority class). " + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    return run_study(
        args, study=STUDY, plan=plan(args), columns=COLUMNS,
        summarize=lambda rows, budget: summary_markdown(rows, budget)[0], draw=draw_figures,
    )


if __name__ == "__main__":
    cli(main)
