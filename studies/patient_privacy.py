"""Patient-level privacy: can the server name the patient, or tell that a patient trained the
model, and what does a guarantee for a person cost?

Protocol ``records-holdout``: a random half of the 44 de Chazal records trains (validation
records carved whole from them, never trained on), the others do not. Settings (each over
seeds): no defense; paper-mode activation DP; formal activation DP; NoPeek; client DP-SGD at the
beat level (``dpsgd``) and at the patient level (``dpsgd-patient``: per-patient clipping,
patients Poisson-sampled per step); U-shape; a deeper client.

Metrics per run: test accuracy (validation-selected) and macro-F1; identity inference
(``attacks.identity``: the server enrols every training patient from the first 30% of its
record, then names the patient of the later beats: top-1 and top-5 from one beat and from
windows of 10 and 50 consecutive beats, chance 1/N); patient-level membership
(``attacks.membership``: offline LiRA with reference models trained on the attacker's own
records, AUC per patient and per beat, TPR at 1% and 0.1% FPR where the sample supports them);
the formal claim's epsilon per beat and its patient-level consequence (group privacy over the
largest patient's training beats; for ``dpsgd-patient`` the claim itself).

Writes OUT/results.csv, OUT/summary.md and OUT/figures/{identity,membership} with captions.

    python studies/patient_privacy.py              # the default budget
    python studies/patient_privacy.py --quick      # smoke budget
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt

from splitpriv.options import format_spec, parse_spec
from studies.common import (
    FigureSet,
    Planned,
    StudyArgs,
    aggregate,
    apply_style,
    attack_column_names,
    cli,
    legend_outside,
    markdown_table,
    only_settings,
    parse_args,
    plot_tradeoff,
    run_study,
)

STUDY = "patient_privacy"
ATTACKS = ("identity", "membership")
COLUMNS = ["study", "setting", "family", "seed", "protocol", "depth", "topology", "epochs",
           "defenses", "test_accuracy", "test_macro_f1", "accounted_epsilon", "patient_epsilon",
           "patient_delta", "largest_patient", *attack_column_names(ATTACKS), "train_seconds",
           "wall_seconds", "run_dir"]
METRICS = ["test_accuracy", "test_macro_f1", "identity_top1", "identity_top5",
           "identity_top1_w10", "identity_top1_w50", "identity_chance", "identity_patients",
           "membership_auc", "membership_auc_se", "membership_beat_auc",
           "membership_tpr_at_1pct_fpr", "membership_tpr_at_01pct_fpr",
           "membership_patient_tpr_at_0_fpr", "membership_non_members", "accounted_epsilon",
           "patient_epsilon"]

#: the smoke budget: 1 seed, 3 epochs, a random 6,000 of the training beats (records-holdout
#: shuffles its rows, so a subset spans every training record), 2,000 test beats
QUICK: dict[str, Any] = dict(seeds=1, epochs=3, train_subset=6000, test_subset=2000)


@dataclass
class Args(StudyArgs):
    epochs: int = 8
    """training epochs of every run (formal DP budgets cover exactly these epochs)"""
    seeds: int = 2
    """seeds per setting"""
    train_subset: int | None = 16000
    """a random N of the training beats (records-holdout shuffles its rows; None: all ~44,000)"""
    test_subset: int | None = 8000
    """a random N of the test beats (None: all)"""
    protocol: str = "records-holdout"
    """data protocol: one that holds patients out of training (records-holdout, inter-patient)"""
    paper_epsilon: float = 3.0
    """paper-mode DP: per-release epsilon"""
    formal_epsilon: float = 4.0
    """formal-mode DP (Gaussian, clip 2): total training epsilon per beat"""
    dpsgd_epsilon: float = 4.0
    """client DP-SGD (max_grad_norm 1): total epsilon, per beat (dpsgd) and per patient
    (dpsgd-patient)"""
    patient_rate: float = 0.5
    """dpsgd-patient: probability that a patient is sampled at a step"""
    nopeek_alpha: float = 1.0
    """NoPeek: weight of the dCor loss"""
    depth: int = 6
    """the deeper client, no other defense"""
    only: list[str] = field(default_factory=list)
    """run only these settings (names as in the table)"""


@dataclass
class Setting:
    name: str
    family: str
    defenses: list[str]
    depth: int | None = None


def settings(args: Args) -> list[Setting]:
    e = args.epochs
    out = [
        Setting("none", "none", []),
        Setting(f"dp-paper-e{args.paper_epsilon:g}", "paper DP",
                [format_spec("dp", {"mode": "paper", "epsilon": args.paper_epsilon})]),
        Setting(f"dp-formal-e{args.formal_epsilon:g}", "formal DP",
                [format_spec("dp", {"mode": "formal", "mechanism": "gaussian", "clip": 2,
                                    "target_epsilon": args.formal_epsilon, "epochs": e})]),
        Setting(f"nopeek-a{args.nopeek_alpha:g}", "NoPeek",
                [format_spec("nopeek", {"alpha": args.nopeek_alpha})]),
        Setting(f"dpsgd-e{args.dpsgd_epsilon:g}", "DP-SGD, beat",
                [format_spec("dpsgd", {"target_epsilon": args.dpsgd_epsilon, "epochs": e,
                                       "max_grad_norm": 1})]),
        Setting(f"dpsgd-patient-e{args.dpsgd_epsilon:g}", "DP-SGD, patient",
                [format_spec("dpsgd-patient", {"target_epsilon": args.dpsgd_epsilon,
                                               "epochs": e, "max_grad_norm": 1,
                                               "patient_rate": args.patient_rate})]),
        Setting("ushape", "U-shape", ["ushape"]),
        Setting(f"depth{args.depth}", "depth", [], depth=args.depth),
    ]
    return only_settings(out, args.only)


def holdout_dataset(args: Args) -> str:
    """The study's dataset with patients held out of training: MIT-BIH as given (``--protocol``
    holds them out), another dataset with ``split=groups`` where it has that option (its groups
    held out as ``records-holdout`` holds records out; ``digits``), else as given (a file's own
    train/test arrays may hold its groups out; the membership attack says so in one line where
    none is)."""
    if args.on_mitdb:
        return args.dataset
    from splitpriv.datasets import DATASETS

    _, config = DATASETS.resolve(args.dataset)
    if "split" not in {f.name for f in dataclasses.fields(config)}:
        return args.dataset
    name, options = parse_spec(args.dataset, "dataset")
    return format_spec(name, options | {"split": "groups"})


def plan(args: Args) -> list[Planned]:
    runs = []
    dataset = holdout_dataset(args)
    for seed in args.seed_list():
        for s in settings(args):
            model = args.architecture(s.name, depth=s.depth)
            if model is None:
                continue
            config = args.train_config(seed=seed, defenses=s.defenses, dataset=dataset, **model)
            runs.append(Planned(f"{s.name}-s{seed}", config,
                                {"setting": s.name, "family": s.family}, attacks=ATTACKS))
    return runs


def _eps(s: dict[str, Any], key: str) -> str:
    st = s[key]
    return "-" if not st.n or math.isnan(st.mean) else str(st)


def vacuous_text(rows: list[dict]) -> str:
    """What the per-beat claims' patient-level deltas say, counted from the rows."""
    per_beat = [r for r in rows if isinstance(r.get("patient_delta"), float)
                and not math.isnan(r["patient_delta"]) and r.get("family") != "DP-SGD, patient"]
    if not per_beat:
        return "no per-beat formal claim in these runs."
    vacuous = sum(math.isinf(r["patient_delta"]) for r in per_beat)
    sizes = sorted({int(r["largest_patient"]) for r in per_beat
                    if isinstance(r.get("largest_patient"), float)})
    return (f"its delta k e^((k-1) epsilon) delta is 1 or more (vacuous: nothing bounded) in "
            f"{vacuous} of the {len(per_beat)} runs with a per-beat claim (largest patient: "
            f"record {', '.join(map(str, sizes))}).")


def fpr_text(rows: list[dict]) -> str:
    """Why the per-patient TPR is given at FPR 0: the non-member patients, counted."""
    n = sorted({int(r["membership_non_members"]) for r in rows
                if isinstance(r.get("membership_non_members"), float)
                and math.isfinite(r["membership_non_members"])})
    if not n:
        return ""
    return (f"with {' or '.join(map(str, n))} non-member patients the smallest FPR per patient "
            f"is 1/{n[0]} = {1 / n[0]:.3f}, so a TPR at 1% or 0.1% FPR per patient is not "
            "estimable: the patient column is the TPR at FPR 0 (above every non-member).")


def summary_markdown(rows: list[dict], title: str) -> str:
    agg = aggregate(rows, ["setting", "family"], METRICS)
    header = ["setting", "family", "n", "test acc (%)", "macro-F1 (%)",
              "identity top-1, 1 beat", "top-5, 1 beat", "top-1, 10 beats", "top-1, 50 beats",
              "chance (1/N)", "membership AUC, patient", "AUC, beat", "TPR @1% FPR, beat",
              "TPR @0.1% FPR, beat", "TPR @0 FPR, patient", "epsilon per beat",
              "epsilon per patient"]
    body = [[s["setting"], s["family"], s["n"], s["test_accuracy"], s["test_macro_f1"],
             s["identity_top1"], s["identity_top5"], s["identity_top1_w10"],
             s["identity_top1_w50"], s["identity_chance"], s["membership_auc"],
             s["membership_beat_auc"], s["membership_tpr_at_1pct_fpr"],
             s["membership_tpr_at_01pct_fpr"], s["membership_patient_tpr_at_0_fpr"],
             _eps(s, "accounted_epsilon"), _eps(s, "patient_epsilon")] for s in agg]
    return "\n".join([
        f"# Patient-level privacy ({title})", "", markdown_table(header, body), "",
        "Mean ± sd over seeds. Identity: closed-set among the N enrolled training patients "
        "(enrolled from the first 30% of their records, 20 beats each; victims: their later "
        "training beats, every release the server kept, combined as the attacker chose on its "
        "held-out enrolment beats); top-k accuracy over victims, or over windows of 10 and 50 "
        "consecutive beats of one patient (scores summed); chance = 1/N. Membership: offline "
        "LiRA (Carlini et al. 2022) with 2 folds of reference models trained on the attacker's "
        f"own records; per patient the mean of its beats' scores; {fpr_text(rows)} Epsilon per "
        "patient: "
        "for a per-beat claim, group privacy over the largest patient's k training beats "
        f"(k epsilon; {vacuous_text(rows)}); for dpsgd-patient, the claim itself (delta "
        "1e-5).", ""])


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    apply_style()
    agg = aggregate(rows, ["setting", "family"], METRICS)
    panels = [("identity", "identity_top1", "identity top-1, one beat (chance 1/N dotted)",
               "Identity inference against accuracy: the server names the patient of one "
               "activation among the N training patients it enrolled (the first 30% of their "
               "records, 20 beats each); one marker per setting (mean ± sd over seeds); the "
               "dotted line is chance, 1/N, and the dashed one the Pareto front (no setting "
               "both less identifiable and more accurate)."),
              ("membership", "membership_auc", "membership AUC, per patient (0.5 dotted)",
               "Patient-level membership inference against accuracy: offline LiRA with "
               "reference models trained on the attacker's own records, each patient scored by "
               "the mean of its beats' scores; AUC over the member and non-member patients "
               "(mean ± sd over seeds); 0.5 (dotted) = chance, the dashed line the Pareto "
               "front.")]
    for name, x, label, caption in panels:
        fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
        plot_tradeoff(ax, agg, x=x, y=figs.utility, group_key="family", label_key="setting",
                      xlabel=label, ylabel=figs.utility_label)
        level = (agg[0]["identity_chance"].mean if name == "identity" and agg else 0.5)
        ax.axvline(level, color="0.5", linewidth=0.8, linestyle=":")
        legend_outside(fig, ax)
        figs.save(fig, name, caption + " " + note)
    figs.write_captions()


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK, description=__doc__)
    return run_study(args, study=STUDY, plan=plan(args), columns=COLUMNS,
                     summarize=summary_markdown, draw=draw_figures)


if __name__ == "__main__":
    cli(main)
