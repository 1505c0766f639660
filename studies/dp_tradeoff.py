"""Activation DP at the cut: the whole accuracy curve of formal DP, and what it costs in leakage.

Formal activation DP (``dp:mode=formal``; Gaussian, replace adjacency, delta 1e-5) is swept over
its total training epsilon, accounted exactly (mu-GDP, Dong, Roth & Su 2022, with the analytic
conversion of Balle & Wang 2018; ``defenses.accounting``), far enough to see the accuracy
recover, along the levers that move the curve:

* the total epsilon: {1, 4, 16, 64, 256, 1024, 4096};
* the number of releases the budget is spent over (``releases=R``: each training beat's noisy
  activations are sent in the first R epochs, later epochs train the server on the releases it
  holds, the client frozen; Abadi et al.'s composition argument run backwards: fewer releases,
  less noise per release): 30 (every epoch), 10, 3 and 1;
* the cut: the paper's 512-value cut (16 x 32), clip 2, or a 1x1 bottleneck to 4 channels (128
  values) with per-row standardisation before the clip (``--cut-channels 4``,
  ``standardise=true``), clip 1.

Paper mode (Abuadbba et al. 2020's Laplace recipe, no formal guarantee) at per-release epsilon 3
and 10 and the undefended model are the reference lines. Every run is trained for ``--epochs``
epochs and attacked: dCor, DTW and the strongest attack (``attacks/strongest.py``), whose
re-identification advantage among 10 same-class beats (the larger of across and within patient,
from every release the server kept) is the privacy axis, and identity inference
(``attacks/identity.py``: which of the enrolled training patients sent a beat's activations).

How the clip is chosen, without looking at the protected data: it is a fixed number, never
tuned on the training beats. For the 512-value cut, C = 2, about the median L2 norm of an
untrained client's activations (2.4, a property of the initialisation, data-independent up to
the input's scale; the curve barely moves with C); with ``standardise=true`` every row has norm
sqrt(32 c) before clipping, so any C below it (C = 1 here) gives the same signal-to-noise ratio
and the choice carries no information at all.

Default budget: 30 epochs, paper-unique, all beats, ONE seed (``--formal-seeds``; the
references too), the study-wide attack budget; 29 runs: the undefended model, paper mode at 3
and 10, every epsilon at 30 releases for both cuts (14 runs), and 1, 3 and 10 releases at
epsilon 16 and 1024 (``--release-epsilons``) for both cuts (12 runs, cheap: a frozen epoch
trains the server only). ``--full-grid`` crosses every epsilon with every release count (56
formal runs). The default took 7 min 20 s on 2 idle cores with ``--jobs 2`` (2026-12-07; the
docs/results.md, "Measured speed"), about twice that on one core.

Writes OUT/results.csv (one row per run), OUT/summary.md and OUT/figures/ (accuracy and linkage
against total epsilon, one line per cut and release count, the references as horizontal lines;
accuracy against linkage). Run directories live in OUT/runs/; rerunning skips finished runs.

    python studies/dp_tradeoff.py                 # default budget (7-10 minutes on 2 cores)
    python studies/dp_tradeoff.py --quick         # smoke budget, under 2 minutes
    python studies/dp_tradeoff.py --full-grid --formal-seeds 3 --out studies/out/dp-full
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from splitpriv.io import read_json
from splitpriv.options import format_spec
from splitpriv.published import LAPLACE_DP
from splitpriv.run import TrainConfig
from studies.common import (
    ACCURACY_COLUMNS,
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
    epsilon_label,
    interval_sentence,
    markdown_table,
    measured_lines,
    paper_setup,
    parse_args,
    parse_epsilon,
    plot_tradeoff,
    reid_cells,
    run_study,
)

STUDY = "dp_tradeoff"

#: the attacks on every run (Planned's default: dcor, dtw, strongest, identity)
ATTACKS = Planned.attacks
COLUMNS = ["study", "mode", "design", "releases", "epsilon", "seed", "protocol", "depth",
           "epochs", "defenses", *ACCURACY_COLUMNS,
           *attack_column_names(ATTACKS), "accounted_epsilon", "noise_multiplier",
           "claim_scope", "train_seconds", "wall_seconds", "run_dir"]
METRICS = ["test_accuracy", "test_macro_f1", "best_test_accuracy", "dcor_max",
           "dcor_batch_unbiased", "dtw_min", *INVERSION_TABLE, "accounted_epsilon",
           "noise_multiplier", "releases_per_beat"]
DESIGNS = ("512", "bottleneck")
DESIGN_NAMES = {"512": "512-value cut", "bottleneck": "bottleneck"}
RELEASE_STYLES = {30: "-", 10: "--", 3: "-.", 1: ":"}


@dataclass
class Args(StudyArgs):
    formal_epsilons: list[float | None] = field(
        default_factory=lambda: [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, None])
    """formal mode: total training epsilons (delta 1e-5), spent over --epochs releases (none:
    the undefended baseline)"""
    release_counts: list[int] = field(default_factory=lambda: [1, 3, 10])
    """formal mode: the release budgets R < epochs tried besides one release per epoch"""
    release_epsilons: list[float] = field(default_factory=lambda: [16.0, 1024.0])
    """formal mode: the total epsilons the release budgets are tried at"""
    full_grid: bool = False
    """cross every formal epsilon with every release budget (instead of release_epsilons)"""
    formal_seeds: int | None = 1
    """seeds of every formal and reference setting (None: --seeds)"""
    paper_epsilons: list[float | None] = field(default_factory=lambda: [3.0, 10.0, None])
    """paper mode (reference lines): per-release epsilons of the Laplace noise (none: the
    undefended baseline)"""
    designs: list[str] = field(default_factory=lambda: list(DESIGNS))
    """the cuts of the formal grid: 512 (the paper's 16 x 32 cut) and/or bottleneck"""
    formal_clip: float = 2.0
    """512-value cut: the fixed clip bound on each beat's L2 norm (see the module docstring)"""
    cut_channels: int = 4
    """bottleneck: channels of the 1x1 convolution at the cut (32 values each)"""
    bottleneck_clip: float = 1.0
    """bottleneck: the clip after per-row standardisation (any value gives the same ratio)"""
    depth: int = 2
    """client conv layers"""

    def __post_init__(self) -> None:
        super().__post_init__()  # the checks every study's arguments get
        if any(e is not None and not 0 < e < math.inf
               for e in [*self.formal_epsilons, *self.release_epsilons, *self.paper_epsilons]):
            raise ValueError("epsilons must be finite numbers > 0 (or none)")
        if not self.designs or not set(self.designs) <= set(DESIGNS):
            raise ValueError(f"designs must be among {DESIGNS}, got {self.designs}")
        if any(r < 1 for r in self.release_counts):
            raise ValueError("release_counts must be >= 1")
        for name in ("formal_clip", "bottleneck_clip"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0")
        if self.formal_seeds is not None and self.formal_seeds < 1:
            raise ValueError("formal_seeds must be >= 1")

    def seeds_of_grid(self) -> list[int]:
        n = self.formal_seeds if self.formal_seeds is not None else self.seeds
        return list(range(self.seed, self.seed + n))


def formal_spec(args: Args, design: str, epsilon: float, releases: int) -> str:
    """The ``dp`` spec of one formal setting."""
    params: dict[str, Any] = {"mode": "formal", "mechanism": "gaussian",
                              "target_epsilon": epsilon, "epochs": args.epochs}
    if releases < args.epochs:
        params["releases"] = releases
    if design == "bottleneck":
        params |= {"clip": args.bottleneck_clip, "standardise": True}
    else:
        params["clip"] = args.formal_clip
    return format_spec("dp", params)


def formal_grid(args: Args) -> list[tuple[float, int]]:
    """(total epsilon, releases) of the formal settings: every epsilon at one release per epoch,
    and the release budgets at ``release_epsilons`` (every epsilon with ``full_grid``)."""
    formal = [e for e in args.formal_epsilons if e is not None]
    grid = [(e, args.epochs) for e in formal]
    at = formal if args.full_grid else args.release_epsilons
    grid += [(e, r) for r in sorted(set(args.release_counts)) if r < args.epochs for e in at]
    return list(dict.fromkeys(grid))


def plan(args: Args) -> list[Planned]:
    """The runs: the undefended baseline, paper mode at ``paper_epsilons`` and the formal grid,
    for both cuts, for every seed."""
    runs = []
    model = {design: args.architecture(f"the {design} design", depth=args.depth,
                                       cut_channels=args.cut_channels if design == "bottleneck"
                                       else None)
             for design in DESIGNS if design == "512" or design in args.designs}
    for seed in args.seeds_of_grid():
        def config(specs: list[str], design: str = "512", seed: int = seed) -> TrainConfig:
            return args.train_config(seed=seed, defenses=specs, **model[design] or {})

        none = {"mode": "none", "design": "512", "releases": None, "epsilon": None}
        if None in args.paper_epsilons or None in args.formal_epsilons:
            runs.append(Planned(f"none-s{seed}", config([]), none, attacks=ATTACKS))
        for eps in [e for e in args.paper_epsilons if e is not None]:
            spec = format_spec("dp", {"mode": "paper", "epsilon": eps})
            runs.append(Planned(f"paper-eps{eps:g}-s{seed}", config([spec]),
                                {**none, "mode": "paper", "epsilon": eps}, attacks=ATTACKS))
        for design in [d for d in DESIGNS if d in args.designs and model[d] is not None]:
            for eps, releases in formal_grid(args):
                name = f"formal-{design}-r{releases}-eps{eps:g}-s{seed}"
                labels = {"mode": "formal", "design": design, "releases": releases,
                          "epsilon": eps}
                spec = formal_spec(args, design, eps, releases)
                runs.append(Planned(name, config([spec], design), labels, attacks=ATTACKS))
    return runs


def _releases(value: Any) -> int | None:
    return None if parse_epsilon(value) is None else int(float(value))


def reported_releases(row: dict) -> float:
    """The training releases per beat the run's result.json reports (NaN where it is gone)."""
    path = Path(str(row.get("run_dir", ""))) / "result.json"
    if not path.is_file():
        return math.nan
    formal = [c for c in read_json(path).get("defenses", []) if c.get("formal_guarantee")]
    train = formal[-1].get("train", {}) if formal else {}
    return float(train.get("releases_per_beat", math.nan))


def formal_settings(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Per (design, releases), the aggregated formal settings by increasing epsilon (with the
    releases per beat each run's result.json reports)."""
    formal = [r | {"releases_per_beat": reported_releases(r)} for r in rows
              if r["mode"] == "formal"]
    agg = aggregate(formal, ["design", "releases", "epsilon"], METRICS, ATTACK_TEXTS)
    out: dict[tuple[str, int], list[dict]] = {}
    for s in agg:
        s["epsilon"], s["releases"], s["design"] = (parse_epsilon(s["epsilon"]),
                                                    _releases(s["releases"]), str(s["design"]))
        s["design"] = s["design"].removesuffix(".0")
        out.setdefault((s["design"], s["releases"]), []).append(s)
    for ss in out.values():
        ss.sort(key=lambda s: s["epsilon"])
    return dict(sorted(out.items(), key=lambda kv: (DESIGNS.index(kv[0][0]), -kv[0][1])))


def references(rows: list[dict]) -> dict[str, dict]:
    """The reference settings: ``none`` and ``paper eps E``."""
    out = {}
    for s in aggregate([r for r in rows if r["mode"] != "formal"], ["mode", "epsilon"], METRICS,
                       ATTACK_TEXTS):
        eps = parse_epsilon(s["epsilon"])
        out["none" if s["mode"] == "none" else f"paper eps {epsilon_label(eps)}"] = s
    return out


def reaching(rows: list[dict]) -> list[str]:
    """Sentences: the smallest total epsilon at which formal DP reaches each paper-mode
    reference's accuracy, by design and release count, and the leakage left there."""
    refs, grid = references(rows), formal_settings(rows)
    lines = []
    for name, ref in refs.items():
        if not name.startswith("paper"):
            continue
        target = ref["test_accuracy"].mean
        hits = []
        for (design, releases), ss in grid.items():
            hit = next((s for s in ss if s["test_accuracy"].mean >= target), None)
            if hit is not None:
                hits.append((hit["epsilon"], design, releases, hit))
        if not hits:
            lines.append(f"No formal setting reaches the accuracy of {name} ({target:.1f}%).")
            continue
        eps, design, releases, s = min(hits, key=lambda h: h[0])
        lines.append(
            f"Formal activation DP first reaches the accuracy of {name} ({target:.1f}%) at total "
            f"epsilon {eps:g} ({DESIGN_NAMES[design]}, {releases} release(s) per beat: "
            f"{s['test_accuracy']} %), where the strongest re-identification advantage is "
            f"{s[PRIVACY_AXIS]} (paper mode there: {ref[PRIVACY_AXIS]}).")
    return lines


def summary_markdown(rows: list[dict], title: str) -> str:
    """summary.md: the formal grid, the references and where the curve reaches them."""
    lines = [f"# {title}", "", "## Formal mode (Gaussian, replace adjacency, delta 1e-5, exact "
             "mu-GDP accounting of the training releases)", ""]
    header = ["cut", "releases / beat (planned, reported)", "total epsilon", "n",
              "accounted epsilon",
              "noise multiplier", "test acc (val-selected, %)", "best test acc (%)",
              *REID_HEADER, "dCor batch (unbiased)"]
    body = [[DESIGN_NAMES[d], f"{r}, {s['releases_per_beat']}", epsilon_label(s["epsilon"]),
             s["n"], s["accounted_epsilon"],
             s["noise_multiplier"], s["test_accuracy"], s["best_test_accuracy"],
             *reid_cells(s), s["dcor_batch_unbiased"]]
            for (d, r), ss in formal_settings(rows).items() for s in ss]
    lines += [markdown_table(header, body), "",
              "## Paper mode and no defense (the references; paper mode: Laplace, sensitivity = "
              "the batch's range, no formal guarantee)", "",
              "Paper column: Abuadbba et al. 2020's best test accuracy (paper protocol, 400 "
              "epochs)" + ("." if paper_setup(rows) else "; only beside MIT-BIH on the paper's "
                           "model."), ""]
    header = ["setting", "n", "test acc (val-selected, %)", "paper's best acc",
              *REID_HEADER, "dCor batch (unbiased)"]
    body = []
    for name, s in references(rows).items():
        p = LAPLACE_DP.get(parse_epsilon(s["epsilon"])) if paper_setup(rows) else None
        body.append([name, s["n"], s["test_accuracy"], p["acc"] if p else "-", *reid_cells(s),
                     s["dcor_batch_unbiased"]])
    lines += [markdown_table(header, body), "", *reaching(rows), "",
              interval_sentence(rows) + " Releases per beat: each training beat's noisy "
              "activations "
              "cross in that many epochs (the accounted epsilon composes them; the remaining "
              "epochs train the server on the releases it holds, the client frozen). dCor is "
              "measured on the defended activations recomputed from the final weights. "
              "Re-identification: the strongest attack (inversions and activation-space "
              "matching, chosen on the attacker's held-out aux beats) picks the victim's beat "
              "out among k = 10 / 100 other beats of its class, from every release of it the "
              "server holds (combined as the attacker chose: releases / beat), across patients "
              "and within the victim's own patient; advantage (accuracy - chance) / (1 - "
              "chance), 0 = chance (what the priors score), 1 = every victim. The inversion "
              "column is the strongest reconstruction's own linkage and median r. "
              + IDENTITY_TEXT, ""]
    return "\n".join(lines)


#: one encoding per quantity, in every figure: colour = the cut, marker and line style = the
#: releases per beat, the references their own colour and line (lines in the epsilon figures,
#: markers in the trade-off)
DESIGN_COLORS = {"512": OKABE_ITO[0], "bottleneck": OKABE_ITO[1]}
RELEASE_MARKERS = {30: "o", 10: "s", 3: "^", 1: "D"}
REFERENCE_STYLES = {"none": ("0.1", (0, (1, 1)), "*"),
                    "paper eps 3": (OKABE_ITO[3], (0, (4, 2)), "X"),
                    "paper eps 10": (OKABE_ITO[4], (0, (6, 2, 1, 2)), "P")}


def reference_label(name: str) -> str:
    return "no defense (undefended)" if name == "none" else f"{name} (no guarantee)"


def _reference_style(name: str) -> tuple[str, Any, str]:
    return REFERENCE_STYLES.get(name, ("0.5", (0, (2, 2)), "h"))


def _reference_lines(ax: plt.Axes, refs: dict[str, dict], key: str) -> None:
    for name, s in refs.items():
        value = s[key].mean
        if math.isfinite(value):
            color, dash, _ = _reference_style(name)
            ax.axhline(value, color=color, linestyle=dash, linewidth=0.9,
                       label=reference_label(name))


def _encoding_legend(fig: plt.Figure, grid: dict, extra: list[tuple[Any, str]]) -> None:
    """The legend outside the axes: the cuts (colour), the releases per beat (marker and
    line style), then ``extra`` (references, chance, front)."""
    from matplotlib.lines import Line2D

    designs = list(dict.fromkeys(d for d, _ in grid))
    releases = sorted({r for _, r in grid}, reverse=True)
    handles = [Line2D([], [], color=DESIGN_COLORS.get(d, "0.5"), linewidth=6) for d in designs]
    labels = [f"cut: {DESIGN_NAMES[d]}" for d in designs]
    handles += [Line2D([], [], color="0.3", marker=RELEASE_MARKERS.get(r, "v"),
                       linestyle=RELEASE_STYLES.get(r, "-")) for r in releases]
    labels += [f"{r} release(s) per beat" for r in releases]
    handles += [h for h, _ in extra]
    labels += [label for _, label in extra]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)


def draw_figures(rows: list[dict], figs: FigureSet, note: str = "") -> None:
    """Accuracy and re-identification against total epsilon (log axis, a marker at every
    measured setting, lines only between neighbouring measured epsilons), and accuracy
    against re-identification, one panel per cut."""
    apply_style()
    grid, refs = formal_settings(rows), references(rows)
    every_eps = sorted({s["epsilon"] for ss in grid.values() for s in ss})
    interval = interval_sentence(rows)
    for key, ylabel, name, what in (
        ("test_accuracy", "test accuracy, val-selected (%)", "accuracy_vs_epsilon",
         "Test accuracy"),
        (PRIVACY_AXIS, PRIVACY_AXIS_LABEL, "leakage_vs_epsilon",
         "Re-identification advantage of the strongest attack (the larger of across and "
         "within patient; 0 = chance)"),
    ):
        fig, ax = plt.subplots(figsize=(6.8, 3.4), layout="constrained")
        for (design, r), ss in grid.items():
            style = dict(color=DESIGN_COLORS.get(design, "0.5"),
                         linestyle=RELEASE_STYLES.get(r, "-"), linewidth=1.3)
            xs, ys = [s["epsilon"] for s in ss], [s[key].mean for s in ss]
            measured_lines(ax, xs, ys, every_eps, **style)
            ax.errorbar(xs, ys, yerr=[s[key].sd for s in ss], capsize=2, linestyle="none",
                        color=style["color"], marker=RELEASE_MARKERS.get(r, "v"),
                        markeredgecolor="0.15", markeredgewidth=0.4, zorder=3)
        _reference_lines(ax, refs, key)
        if key == "test_accuracy":
            chance_line(ax, rows)
            ax.set_ylim(0, 100)
        else:
            ax.set_ylim(-0.05, 1.05)
            ax.axhline(0, color="0.45", linewidth=0.8, linestyle=":",
                       label="chance (advantage 0)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(every_eps, [f"{e:g}" for e in every_eps])
        ax.minorticks_off()
        ax.set_xlabel("total training epsilon of formal DP (δ = 1e-5, exact accounting)")
        ax.set_ylabel(ylabel)
        _encoding_legend(fig, grid, list(zip(*ax.get_legend_handles_labels(), strict=True)))
        figs.save(fig, name,
                  f"{what} of the 2-conv split model under formal activation DP against the "
                  "total training epsilon: colour = the cut (the 512-value cut, clip 2; the 4x32 "
                  "bottleneck with per-row standardisation, clip 1), marker and line style = "
                  "releases per beat; a marker at every measured setting, lines only between "
                  "neighbouring measured epsilons. Horizontal lines: the undefended model, "
                  "paper mode (Abuadbba et al. 2020's recipe, no guarantee) at epsilon 3 and "
                  "10, and chance (accuracy: always guessing the test set's majority class; "
                  "re-identification: advantage 0). " + interval + " " + note)

    designs = list(dict.fromkeys(d for d, _ in grid)) or ["512"]
    fig, axes = plt.subplots(1, len(designs), figsize=(3.4 * len(designs) + 2.2, 3.6),
                             sharey=True, layout="constrained", squeeze=False)
    for ax, design in zip(axes[0], designs, strict=True):
        points = [dict(s, label=f"ε={epsilon_label(s['epsilon'])}",
                       group=f"{r} release(s) per beat")
                  for (d, r), ss in grid.items() if d == design for s in ss]
        points += [dict(s, label=reference_label(n).split(" (")[0], group=reference_label(n))
                   for n, s in refs.items()]
        markers = {f"{r} release(s) per beat": RELEASE_MARKERS.get(r, "v") for _, r in grid}
        colors = {f"{r} release(s) per beat": DESIGN_COLORS.get(design, "0.5")
                  for _, r in grid}
        for n in refs:
            colors[reference_label(n)], _, markers[reference_label(n)] = _reference_style(n)
        chance_line(ax, rows)
        plot_tradeoff(ax, points, x=PRIVACY_AXIS, y=figs.utility, group_key="group",
                      label_key="label", xlabel="",
                      ylabel=figs.utility_label if ax is axes[0][0] else "",
                      colors=colors, markers=markers)
        ax.set_title(f"cut: {DESIGN_NAMES[design]}")
    fig.supxlabel(PRIVACY_AXIS_LABEL, fontsize=9)
    extra = [(h, label) for h, label in zip(*axes[0][0].get_legend_handles_labels(), strict=True)
             if "release" not in label]
    _encoding_legend(fig, grid, extra)
    figs.save(fig, "tradeoff",
              "Accuracy against the strongest re-identification advantage, one panel per cut: "
              "each marker is one setting, labelled with its total epsilon (marker = releases "
              "per beat, as in the epsilon figures), the undefended model and paper mode "
              "labelled by name; a label moved away from a crowded point is joined to it by a "
              "thin line. The dashed line is the Pareto front. " + interval + " " + note)
    figs.write_captions()


#: --quick: two epochs on a subset, the 512-value cut and the bottleneck at two epsilons and
#: one release budget (QUICK's attack budget)
QUICK_DP: dict[str, Any] = QUICK | dict(epochs=3, train_subset=1500, test_subset=500,
                                        formal_epsilons=[16.0, 4096.0, None],
                                        release_counts=[1], release_epsilons=[4096.0],
                                        paper_epsilons=[3.0])


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(Args, argv, quick=QUICK_DP, description=__doc__)
    return run_study(
        args, study=STUDY, plan=plan(args), columns=COLUMNS,
        summarize=lambda rows, b: summary_markdown(
            rows, f"Activation DP: the whole curve (depth {args.depth}, {b})"),
        draw=draw_figures,
    )


if __name__ == "__main__":
    cli(main)
