"""Defenses at the cut: what they cost in accuracy.

Three experiments, each a set of resumable run directories under OUT/runs:

1. Paper-mode activation noise (``dp:mode=paper``) on the ``paper`` protocol, run as the original
   code ran it (double softmax, no validation split, the paper's "best test accuracy": max over
   epochs, selected on the test set), for epsilon in {1, 3, 5, 7, 10} and no noise, mean +- sd
   over seeds, beside the paper's numbers. Paper mode claims no guarantee.
2. Formal-mode activation DP (``dp:mode=formal``) on ``paper-unique``: the noise calibrated to a
   total training epsilon in {1, 2, 4, 8, 16} (delta 1e-5, replace adjacency), every epoch
   accounted; the validation-selected test accuracy is reported.
3. U-shaped label hiding vs the vanilla split on ``paper-unique`` (validation-selected test
   accuracy; the issue asks for a gap within 0.5 points).

Writes OUT/defenses.json (every run's result, raw) and OUT/defenses.md (the tables).

    python benchmarks/defenses.py                 # the full budget (hours of CPU)
    python benchmarks/defenses.py --quick         # a smoke run: 1 seed, 1 epoch, small subsets
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _unshadow  # noqa: F401, I001  (first: keeps this file from shadowing the package)

from splitpriv.executor import Executor
from splitpriv.io import write_json, write_text
from splitpriv.options import parse_dataclass_args
from splitpriv.published import LAPLACE_DP
from splitpriv.run import TrainConfig, run_training

#: Abuadbba et al. 2020, best test accuracy of the 2-conv split with Laplace noise
#: (``docs/reference.md``; "none": no noise)
PAPER_DP = {"none" if eps is None else eps: row["acc"] for eps, row in LAPLACE_DP.items()}


@dataclass
class Args:
    seeds: int = 3
    """seeds per configuration (0..seeds-1)"""
    paper_epochs: int = 400
    """epochs of the paper-mode runs (the paper's 400)"""
    paper_epsilons: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0, 7.0, 10.0])
    """per-release epsilons of paper mode"""
    formal_epochs: int = 30
    """epochs of the formal-mode runs (each one more composed release of every beat)"""
    formal_epsilons: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    """total training epsilons of formal mode"""
    formal_mechanism: str = "gaussian"
    """formal-mode mechanism (gaussian or laplace)"""
    formal_clip: float = 2.0
    """formal-mode clip bound (L2 for Gaussian; the untrained client's median norm is ~2.4)"""
    ushape_epochs: int = 100
    """epochs of the U-shape and vanilla runs"""
    quick: bool = False
    """smoke run: 1 seed, 1 epoch each, 500 training and 500 test beats (OUT gets -quick)"""
    execution: Executor = field(default_factory=Executor)
    """where the runs go: --executor local|ray, --jobs N (0: one per core, one torch thread
    each), --address (splitpriv.executor)"""
    out: str = "benchmarks/out/defenses"
    """output folder (run directories under OUT/runs)"""


def parse_args(argv: list[str] | None = None) -> Args:
    args = parse_dataclass_args(Args, argv, __doc__)
    if args.quick:
        args.seeds, args.paper_epochs, args.formal_epochs, args.ushape_epochs = 1, 1, 1, 1
        if args.out == Args.out:  # never mix smoke runs into the full run's directories
            args.out += "-quick"
    return args


@dataclass
class Job:
    experiment: str
    label: str
    config: TrainConfig
    out: str


def jobs_for(args: Args) -> list[Job]:
    small = dict(train_subset=500, test_subset=500) if args.quick else {}
    common = dict(record_epochs="none", device="cpu", **small)
    out = Path(args.out) / "runs"
    jobs: list[Job] = []
    for seed in range(args.seeds):
        for eps in [None, *args.paper_epsilons]:
            label = "none" if eps is None else f"{eps:g}"
            specs = [] if eps is None else [f"dp:mode=paper,epsilon={eps:g}"]
            config = TrainConfig(protocol="paper", paper_softmax=True, epochs=args.paper_epochs,
                                 seed=seed, defenses=specs, **common)
            jobs.append(Job("paper", label, config, str(out / f"paper-eps{label}-s{seed}")))
        for eps in args.formal_epsilons:
            spec = (f"dp:mode=formal,mechanism={args.formal_mechanism},target_epsilon={eps:g},"
                    f"epochs={args.formal_epochs},clip={args.formal_clip:g}")
            config = TrainConfig(protocol="paper-unique", epochs=args.formal_epochs, seed=seed,
                                 defenses=[spec], **common)
            jobs.append(Job("formal", f"{eps:g}", config, str(out / f"formal-eps{eps:g}-s{seed}")))
        for label, specs in (("vanilla", []), ("ushape", ["ushape"])):
            config = TrainConfig(protocol="paper-unique", epochs=args.ushape_epochs, seed=seed,
                                 defenses=specs, **common)
            jobs.append(Job("ushape", label, config, str(out / f"{label}-s{seed}")))
    return jobs


def _run(job: Job) -> dict[str, Any]:
    result = run_training(job.config, job.out, progress=False)
    return {"experiment": job.experiment, "label": job.label, "out": job.out, **result}


def fmt(value: float | None) -> str:
    return "inf (no test noise)" if value is None else f"{value:.3f}"


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def tables(results: list[dict[str, Any]], args: Args) -> str:
    def group(experiment: str, label: str) -> list[dict[str, Any]]:
        return [r for r in results if r["experiment"] == experiment and r["label"] == label]

    lines = [f"## Paper-mode Laplace noise (paper protocol, {args.paper_epochs} epochs, "
             f"{args.seeds} seeds; no formal guarantee)", "",
             "| epsilon | best test acc (max over epochs) | paper |", "|---|---|---|"]
    for eps in ["none", *(f"{e:g}" for e in args.paper_epsilons)]:
        rs = group("paper", eps)
        paper = PAPER_DP.get("none" if eps == "none" else float(eps), "-")
        lines.append(f"| {eps} | {mean_sd([r['best_test_accuracy'] for r in rs])} | {paper} |")
    lines += ["", f"## Formal-mode activation DP ({args.formal_mechanism}, clip "
              f"{args.formal_clip:g}, {args.formal_epochs} epochs, paper-unique, delta 1e-5, "
              "replace adjacency)", "",
              "| total train epsilon | noise multiplier | accounted epsilon | test acc "
              "(val-selected) | per-beat test-time epsilon |", "|---|---|---|---|---|"]
    for eps in (f"{e:g}" for e in args.formal_epsilons):
        rs = group("formal", eps)
        dp = rs[0]["defenses"][0]
        test_eps = dp["test"].get("test", {}).get("epsilon")
        lines.append(f"| {eps} | {dp['noise_multiplier']:.3f} | {dp['train']['epsilon']:.3f} | "
                     f"{mean_sd([r['test_accuracy'] for r in rs])} | {fmt(test_eps)} |")
    lines += ["", f"## U-shape vs vanilla (paper-unique, {args.ushape_epochs} epochs)", "",
              "| topology | test acc (val-selected) | best test acc |", "|---|---|---|"]
    for label in ("vanilla", "ushape"):
        rs = group("ushape", label)
        lines.append(f"| {label} | {mean_sd([r['test_accuracy'] for r in rs])} | "
                     f"{mean_sd([r['best_test_accuracy'] for r in rs])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    jobs = jobs_for(args)
    with args.execution as ex:
        results = ex.map(_run, jobs, names=[Path(j.out).name for j in jobs], desc="runs")
    table = tables(results, args)
    print(table)
    write_json(out / "defenses.json", {"args": dataclasses.asdict(args), "paper": PAPER_DP,
                                       "runs": results})
    write_text(out / "defenses.md", table + "\n")


if __name__ == "__main__":
    main()
