"""Privacy audits of a study's runs: the empirical epsilon each run's attacks show beside the
epsilon it claims, and the robustness bound beside the measured re-identification.

For every run of the studies given (their results.csv), ``splitpriv audit`` (attacks/audit.py):
the empirical epsilon lower bound from the strongest attack's re-identification of training
beats (k = 10 and 100, 95% one-sided Clopper-Pearson; the largest value 1,000 victims can show is
8.1 at k = 10, 10.4 at k = 100), the optimal test-time re-identification of test beats from one
release with the client's weights known (where a formal claim's bound holds exactly: a success
above it is a bug), and for formal activation DP the reconstruction-robustness bounds and the
dFIL bound on MSE. Nothing is retrained or re-attacked: the runs are only read (they may be
read-only), the audits written under OUT.

Writes OUT/audits/STUDY/RUN.json (resumable: a run audited already is read), OUT/STUDY/results.csv
(the study's rows and the audit columns), OUT/summary.md and OUT/figures/ (claimed against
empirical epsilon, log axes with the diagonal; measured re-identification against the robustness
bound over epsilon).

    python studies/audit.py --studies studies/out/dp_tradeoff studies/out/compare_defenses \\
        --out studies/out/audit
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from attacks.audit import audit_run
from defenses.accounting import gdp_epsilon
from splitpriv.io import read_json, write_json, write_text
from studies.common import (
    FigureSet,
    aggregate,
    apply_style,
    cli,
    data_text,
    markdown_table,
    read_csv,
    write_csv,
)


def columns(doc: dict[str, Any]) -> dict[str, Any]:
    """A run's audit (``splitpriv audit``'s document) as flat columns (NaN where none)."""
    a, t = doc["audit"], doc["audit"]["test_time"]
    nan = math.nan

    def get(part: dict[str, Any] | None, *keys: str) -> Any:
        for key in keys:
            if not isinstance(part, dict) or part.get(key) is None:
                return nan
            part = part[key]
        return part

    claim = a["release_claim"]
    mu1 = claim["mu_per_release"] if claim and "mu_per_release" in claim else None
    return {
        "epsilon_lower_k10": get(a, "epsilon_lower", "k10", "epsilon"),
        "epsilon_lower_k100": get(a, "epsilon_lower", "k100", "epsilon"),
        "epsilon_lower_gdp_k10": get(a, "epsilon_lower", "k10", "epsilon_gdp"),
        "rero_bound_k10": get(a, "rero_bound_k10", "bound"),
        "rero_bound_k100": get(a, "rero_bound_k100", "bound"),
        "reid_success_k10": get(a, "epsilon_lower", "k10", "success"),
        "test_success_k10": get(t, "success", "k10"),
        "test_epsilon_lower_k10": get(t, "epsilon_lower", "k10", "epsilon"),
        "test_epsilon_lower_gdp_k10": get(t, "epsilon_lower", "k10", "epsilon_gdp"),
        "test_canary_success_k10": get(t, "canaries", "success", "k10"),
        "test_canary_epsilon_lower_k10": get(t, "canaries", "epsilon_lower", "k10", "epsilon"),
        "test_canary_epsilon_lower_gdp_k10": get(t, "canaries", "epsilon_lower", "k10",
                                                 "epsilon_gdp"),
        "test_rero_bound_k10": get(t, "rero_bound_k10", "bound"),
        "test_rero_bound_k100": get(t, "rero_bound_k100", "bound"),
        # one test release's own claim: mu = 2C / sigma, on the analytic Gaussian curve
        "test_claimed_epsilon": (gdp_epsilon(mu1, claim["delta"]) if mu1 and claim["test_noise"]
                                 else nan),
        "dfil_mse_bound": get(a, "dfil_mse_bound", "bound_median"),
        "dfil_measured_mse": get(a, "dfil_mse_bound", "measured_mse_median"),
        "audit_violation": "yes" if a["violation"] else "no",
    }


def audit_study(study_dir: Path, out: Path, *, victims: int, seed: int) -> list[dict[str, Any]]:
    """Every run of a study audited (or its audit read), its rows with the audit columns."""
    rows = read_csv(study_dir / "results.csv")
    for i, row in enumerate(rows):
        run_dir = Path(str(row["run_dir"]))
        if not run_dir.is_dir():  # a study moved since: its runs beside its results.csv
            run_dir = study_dir / "runs" / run_dir.name
        path = out / "audits" / study_dir.name / f"{run_dir.name}.json"
        doc = read_json(path) if path.exists() else None
        if doc is None or doc.get("run") != str(run_dir):
            doc = audit_run(run_dir, victims=victims, seed=seed)
            write_json(path, doc)
        row.update(columns(doc))
        print(f"{study_dir.name} {i + 1}/{len(rows)} {run_dir.name}: "
              f"epsilon_lower_k10 {row['epsilon_lower_k10']:.3g}, test "
              f"{row['test_epsilon_lower_k10']:.3g}", flush=True)
    write_csv(out / study_dir.name / "results.csv", rows, list(rows[0]) if rows else [])
    return rows


def setting(row: dict[str, Any]) -> str:
    """A run's setting: its directory name without the seed."""
    return re.sub(r"-s\d+$", "", Path(str(row["run_dir"])).name)


METRICS = ("test_accuracy", "accounted_epsilon", "reid_success_k10", "epsilon_lower_k10",
           "epsilon_lower_k100", "epsilon_lower_gdp_k10", "rero_bound_k10", "test_success_k10",
           "test_canary_success_k10", "test_canary_epsilon_lower_k10",
           "test_canary_epsilon_lower_gdp_k10", "test_claimed_epsilon", "test_rero_bound_k10",
           "dfil_mse_bound", "dfil_measured_mse")
HEADER = ("setting", "runs", "test acc (%)", "claimed epsilon (training)",
          "re-id success k10, training", "empirical epsilon k10 / k100 (Gaussian curve)",
          "robustness bound k10, training",
          "test release: success k10, same class / canaries / bound",
          "test release, canaries: empirical epsilon (Gaussian curve) / claimed per release",
          "dFIL MSE bound / measured MSE", "violation")


def summary(studies: dict[str, list[dict[str, Any]]], victims: int) -> str:
    """The audit tables, one per study, a row per setting (mean ± sd over seeds)."""
    parts = [f"# Privacy audits\n\n{victims} victims per game; every lower bound at 95% "
             "one-sided confidence (Clopper-Pearson); the largest epsilon 1,000 victims can show: "
             "8.11 (k = 10), 10.41 (k = 100) in the m-ary game, 25.1 (k = 10) on the Gaussian "
             "curve. Training: the strongest attack's re-identification of training beats "
             "through the releases the server kept (client weights trained on the victims: the "
             "claim's bound is conditional on them). Test release: the optimal attack on one "
             "test-time release, the client's weights known (the bound holds exactly).\n"]
    for name, rows in studies.items():
        for r in rows:
            r["setting"] = setting(r)
        table = []
        for s in aggregate(rows, ["setting"], METRICS, texts=("audit_violation",)):
            table.append([
                s["setting"], s["n"], s["test_accuracy"], s["accounted_epsilon"],
                s["reid_success_k10"],
                f"{s['epsilon_lower_k10']} / {s['epsilon_lower_k100']} "
                f"({s['epsilon_lower_gdp_k10']})",
                s["rero_bound_k10"],
                f"{s['test_success_k10']} / {s['test_canary_success_k10']} / "
                f"{s['test_rero_bound_k10']}",
                f"{s['test_canary_epsilon_lower_k10']} "
                f"({s['test_canary_epsilon_lower_gdp_k10']}) / {s['test_claimed_epsilon']}",
                f"{s['dfil_mse_bound']} / {s['dfil_measured_mse']}", s["audit_violation"]])
        parts.append(f"## {name} ({data_text(rows)})\n\n" + markdown_table(HEADER, table) + "\n")
    return "\n".join(parts)


def audit_table(rows: Sequence[dict[str, Any]]) -> str:
    """The audit section every study's summary.md ends with: per setting, the empirical epsilon
    lower bound of the strongest attack's re-identification (k = 10 / 100) beside the claimed
    epsilon and, for formal activation DP, the robustness bound (``attacks.audit.audit_columns``;
    ``python studies/audit.py`` adds the test-time audits)."""
    for r in rows:
        r["setting"] = setting(r)
    keys = ("accounted_epsilon", "epsilon_lower_k10", "epsilon_lower_k100", "rero_bound_k10",
            "rero_bound_k100")
    if not rows or "epsilon_lower_k10" not in rows[0]:
        return ""
    table = [[s["setting"], s["n"], s["accounted_epsilon"],
              f"{s['epsilon_lower_k10']} / {s['epsilon_lower_k100']}",
              f"{s['rero_bound_k10']} / {s['rero_bound_k100']}"]
             for s in aggregate(rows, ["setting"], keys)]
    return ("\n\n## Audit (attacks/audit.py)\n\nThe empirical epsilon lower bound of the "
            "strongest re-identification of training beats among k + 1 same-class candidates "
            "(95% one-sided Clopper-Pearson; at most 8.11 / 10.41 with 1,000 victims), and the "
            "claim's reconstruction-robustness bound on that success (formal activation DP; "
            "conditional on the client's weights, trained on the victims).\n\n"
            + markdown_table(("setting", "runs", "claimed epsilon", "empirical epsilon k10 / "
                              "k100", "robustness bound k10 / k100"), table) + "\n")


FLOOR = 0.01  # where a lower bound of 0 is drawn on the log axes


def draw(rows: Sequence[dict[str, Any]], figs: FigureSet) -> None:
    """Claimed against empirical epsilon, and measured re-identification against its bound, for
    the runs with a formal activation-DP claim."""
    formal = [r for r in rows if math.isfinite(r["rero_bound_k10"])]
    if not formal:
        return
    apply_style()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    pairs = (("accounted_epsilon", "epsilon_lower_k10", "training releases (strongest attack)",
              "o"),
             ("accounted_epsilon", "epsilon_lower_gdp_k10", "... Gaussian curve assumed", "s"),
             ("test_claimed_epsilon", "test_canary_epsilon_lower_k10", "one test release "
              "(optimal attack, canaries)", "^"),
             ("test_claimed_epsilon", "test_canary_epsilon_lower_gdp_k10", "... Gaussian curve "
              "assumed", "v"))
    for x, y, label, marker in pairs:
        ax.scatter([r[x] for r in formal], [max(r[y], FLOOR) for r in formal], label=label,
                   marker=marker, s=18, alpha=0.8)
    claimed = [r[x] for r in formal for x in ("accounted_epsilon", "test_claimed_epsilon")]
    lo, hi = max(min(claimed), FLOOR) / 2, max(claimed) * 2
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="claimed = empirical")
    ax.axhline(8.11, color="0.3", lw=0.8, ls=":", label="largest 1,000 victims show (k = 10)")
    ax.set(xscale="log", yscale="log", xlabel="claimed epsilon", ylabel="empirical epsilon, "
           "lower bound (95%)")
    ax.legend(fontsize=6)
    figs.save(fig, "audit_epsilon", "Claimed epsilon of formal activation DP (training: total "
              "over the run's releases; test: one release) against the empirical lower bound "
              "from re-identification among 11 candidates, 95% Clopper-Pearson; 0 drawn at "
              f"{FLOOR}. Points below the diagonal are consistent with the claim.")
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    by_eps = sorted(formal, key=lambda r: r["accounted_epsilon"])
    for x, meas, bound, label in (
            ("accounted_epsilon", "reid_success_k10", "rero_bound_k10", "training"),
            ("test_claimed_epsilon", "test_canary_success_k10", "test_rero_bound_k10",
             "test release, canaries")):
        marks = ax.scatter([r[x] for r in by_eps], [r[bound] for r in by_eps], marker="_",
                           s=120, lw=1.5, label=f"bound, {label}")
        ax.scatter([r[x] for r in by_eps], [r[meas] for r in by_eps], s=16,
                   color=marks.get_facecolor()[0], label=f"measured, {label}")
    ax.axhline(1 / 11, color="0.5", lw=0.8, ls=":", label="chance (1/11)")
    ax.set(xscale="log", xlabel="claimed epsilon", ylabel="re-identification success, k = 10")
    ax.legend(fontsize=6)
    figs.save(fig, "audit_reidentification", "Measured re-identification success among 11 "
              "same-class candidates against the reconstruction-robustness bound of the claim "
              "(mu-GDP: Phi(Phi^-1(1/11) + mu)), over the claimed epsilon: training beats (the "
              "strongest attack; the bound at the releases it read, conditional on the client's "
              "weights) and one test release (the optimal attack on 11 test beats chosen far "
              "apart; the bound exact).")
    figs.write_captions()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", nargs="+", type=Path, required=True,
                   help="study output directories (each with results.csv and runs/)")
    p.add_argument("--out", type=Path, required=True, help="where the audits go")
    p.add_argument("--victims", type=int, default=1000, help="test beats per test-time audit")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for d in args.studies:
        if not (d / "results.csv").exists():
            raise ValueError(f"--studies: {d / 'results.csv'} not found")
    if args.victims < 1:
        raise ValueError(f"--victims: must be >= 1, got {args.victims}")
    studies = {d.name: audit_study(d, args.out, victims=args.victims, seed=args.seed)
               for d in args.studies}
    write_text(args.out / "summary.md", summary(studies, args.victims))
    draw([r for rows in studies.values() for r in rows], FigureSet(args.out / "figures"))
    print(f"wrote {args.out / 'summary.md'} and {args.out / 'figures'}/")


if __name__ == "__main__":
    cli(main)
