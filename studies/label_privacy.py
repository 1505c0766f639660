"""Label privacy: what each label defense costs in accuracy and leaves to the strongest label
attack.

Settings (each over seeds):

* vanilla topology, the labels cross: in the clear (``none``), or randomised by ``labeldp``
  (randomised response, epsilon grid) and by ``labeldp`` with a prior (RR-with-prior, the
  protocol's class frequencies);
* U-shaped topology, the labels stay on the client and the output gradient it returns crosses:
  undefended (``ushape``), ``maxnorm`` and ``marvell`` (a grid of its AUC bound).

Every run is attacked by ``label-strongest``: the label attack (gradient norm, direction,
k-means, model completion; in the vanilla topology: reading the crossed labels, or model
completion combined with them) that does best on the attacker's held-out auxiliary rows (10% of
the training beats, ``--aux``), run on the other training beats. Reported: test accuracy
(validation-selected) against that attack's accuracy and mean one-vs-rest AUC (its intervals
and the chosen attack are in RUN/attacks/label-strongest.json; summary.md names the chosen one).

Writes OUT/results.csv, OUT/summary.md and OUT/figures/label_tradeoff (accuracy vs the strongest
label attack's AUC, one marker per setting, Pareto front).

    python studies/label_privacy.py --quick    # smoke budget, under 2 minutes
    python studies/label_privacy.py            # default: 12 epochs, 3 seeds, all training beats
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from splitpriv.io import read_json
from splitpriv.options import format_spec
from studies.common import (
    ACCURACY_COLUMNS,
    QUICK,
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    chance_accuracy,
    cli,
    group,
    interval_sentence,
    interval_text,
    legend_outside,
    markdown_table,
    parse_args,
    plot_tradeoff,
    rows_on_mitdb,
    run_study,
)

STUDY = "label_privacy"
ATTACKS = ("label-strongest",)
COLUMNS = ["study", "setting", "family", "strength", "seed", "protocol", "depth", "topology",
           "epochs", "defenses", *ACCURACY_COLUMNS,
           *attack_column_names(ATTACKS), "train_seconds", "wall_seconds", "run_dir"]
METRICS = ["test_accuracy", "test_macro_f1", "best_test_accuracy", "label_attack_accuracy",
           "label_attack_auc"]


@dataclass
class Args(StudyArgs):
    epochs: int = 12
    """training epochs of every run"""
    labeldp_epsilons: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    """labeldp (randomised response): label epsilons"""
    prior_epsilons: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """labeldp prior=true (RR-with-prior, the protocol's class frequencies; on a dataset other
    than mitdb the training labels'): label epsilons"""
    maxnorm_scales: list[float] = field(default_factory=lambda: [1.0])
    """maxnorm: noise scales (1: Li et al.'s)"""
    marvell_bounds: list[float] = field(default_factory=lambda: [0.9, 0.75, 0.6])
    """marvell: one-vs-rest AUC bounds"""


@dataclass
class Setting:
    """One setting: its name, family, strength (None: undefended) and defense specs."""

    name: str
    family: str
    strength: float | None
    defenses: list[str]

    @property
    def ushape(self) -> bool:
        return self.family in ("U-shape", "maxnorm", "marvell")


def settings(args: Args) -> list[Setting]:
    # RR-with-prior's prior: the MIT-BIH protocol's public class frequencies (the defense's
    # default), elsewhere the training labels' class frequencies (defenses/labeldp.py)
    prior_source = {} if args.on_mitdb else {"prior_source": "train"}
    out = [Setting("none", "vanilla (labels in the clear)", None, [])]
    out += [Setting(f"labeldp-e{e:g}", "labeldp (RR)", e,
                    [format_spec("labeldp", {"epsilon": e})]) for e in args.labeldp_epsilons]
    out += [Setting(f"labeldp-prior-e{e:g}", "labeldp (RR-with-prior)", e,
                    [format_spec("labeldp", {"epsilon": e, "prior": True} | prior_source)])
            for e in args.prior_epsilons]
    out += [Setting("ushape", "U-shape", None, ["ushape"])]
    out += [Setting(f"maxnorm-s{s:g}", "maxnorm", s, [format_spec("maxnorm", {"scale": s})])
            for s in args.maxnorm_scales]
    out += [Setting(f"marvell-b{b:g}", "marvell", b,
                    [format_spec("marvell", {"auc_bound": b})]) for b in args.marvell_bounds]
    return out


def plan(args: Args) -> list[Planned]:
    runs = []
    for seed in args.seed_list():
        for s in settings(args):
            kinds = "server_output,output_grad" if s.ushape else "activations,labels"
            config = args.train_config(seed=seed, defenses=s.defenses, record_epochs="last",
                                       record_kinds=kinds, record_releases="none")
            runs.append(Planned(f"{s.name}-s{seed}", config,
                                {"setting": s.name, "family": s.family, "strength": s.strength},
                                attacks=ATTACKS))
    return runs


def chosen_attacks(rows: list[dict]) -> dict[str, str]:
    """Per setting, the attacks label-strongest chose over its seeds (``name xN``)."""
    out = {}
    for (setting,), rs in group(rows, "setting").items():
        names = [str(r.get("strongest_label_attack", "?")) for r in rs]
        out[setting] = ", ".join(f"{n} x{names.count(n)}" for n in dict.fromkeys(names))
    return out


def strongest_intervals(rows: list[dict]) -> dict[str, str]:
    """Per setting, the first seed's accuracy and mean AUC intervals (95%)."""
    out = {}
    for (setting,), rs in group(rows, "setting").items():
        path = Path(str(rs[0]["run_dir"])) / "attacks" / "label-strongest.json"
        if not path.exists():
            out[setting] = "-"
            continue
        s: dict[str, Any] = read_json(path)["summary"]
        acc, auc = s.get("accuracy_ci") or [None, None], s.get("mean_auc_ci") or [None, None]
        fmt = "{:.3f}".format
        out[setting] = (f"acc [{fmt(acc[0])}, {fmt(acc[1])}], AUC [{fmt(auc[0])}, {fmt(auc[1])}]"
                        if None not in (*acc, *auc) else "-")
    return out


def prior_text(rows: list[dict]) -> str:
    """What guessing without the transcript scores: MIT-BIH's measured figures, elsewhere the
    test set's majority class (computed from the rows)."""
    if rows_on_mitdb(rows):
        return ("guessing the majority class scores about 24% on this protocol (near-balanced "
                "classes), guessing at the class frequencies about 21%")
    return f"guessing the majority class scores {chance_accuracy(rows):.1f}% of the test set"


def summary_markdown(rows: list[dict], title: str) -> str:
    agg = aggregate(rows, ["setting", "family", "strength"], METRICS)
    chosen, cis = chosen_attacks(rows), strongest_intervals(rows)
    prior = aggregate(rows, ["study"], [])[0]["n"]
    header = ["setting", "family", "strength", "n", "test acc (val-selected, %)",
              "strongest attack acc (%)", "strongest attack mean AUC", "95% intervals (seed 1)",
              "chosen attack"]
    body = [[s["setting"], s["family"], s["strength"], s["n"], s["test_accuracy"],
             s["label_attack_accuracy"], s["label_attack_auc"], cis[s["setting"]],
             chosen[s["setting"]]] for s in agg]
    return "\n".join([
        f"# Label privacy ({title})", "", markdown_table(header, body), "",
        f"{interval_sentence(rows)} ({prior} runs.) Strength: labeldp's epsilon (one label release "
        "per beat), maxnorm's noise scale, marvell's one-vs-rest AUC bound. The strongest label "
        "attack is chosen per run by its accuracy on the attacker's held-out aux rows, never by "
        f"the victims'. The prior: {prior_text(rows)}, any "
        "guess ignoring the transcript AUC 0.5 (each run's JSON has its own). Intervals: "
        "Wilson for accuracy, Hanley-McNeil per class for the AUC (their mean: conservative).",
        ""])


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    apply_style()
    agg = aggregate(rows, ["setting", "family", "strength"], METRICS)
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    plot_tradeoff(ax, agg, x="label_attack_auc", y=figs.utility, group_key="family",
                  label_key="setting", xlabel="strongest label attack, mean one-vs-rest AUC",
                  ylabel=figs.utility_label)
    ax.axvline(0.5, color="0.5", linewidth=0.8, linestyle=":", label="prior (AUC 0.5)")
    legend_outside(fig, ax)
    figs.save(fig, "label_tradeoff",
              "Test accuracy against the label leakage left by each label defense: the mean "
              "one-vs-rest AUC of the strongest label attack of each run (chosen by the "
              "attacker's held-out aux accuracy among gradient norm, direction, k-means and "
              "model completion; in the vanilla topology reading the crossed labels or model "
              "completion combined with them). One marker per setting ("
              + interval_text(rows) + "), "
              "labelled with its name (epsilon of labeldp, scale of maxnorm, AUC bound of "
              "marvell); the dotted line is the prior (AUC 0.5), the dashed line the Pareto "
              "front. " + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    return run_study(args, study=STUDY, plan=plan(args), columns=COLUMNS,
                     summarize=summary_markdown, draw=draw_figures)


if __name__ == "__main__":
    cli(main)
