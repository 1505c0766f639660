"""Every attack on the undefended 2-conv model: what a curious server learns, and in how long.

Trains (or reuses) three run directories under OUT/runs:

* ``vanilla``: 2-conv, paper-unique protocol, vanilla topology (labels cross);
* ``ushape``: the same, U-shaped (labels stay on the client), for the label attacks;
* ``paper``: the paper's own setting (paper protocol, double softmax, no validation split), for
  the correlation leakage beside the published per-channel values at epoch 100
  (dCor max .8935 / min .3937, DTW min 2.70 / max 5.84); ``--paper-run DIR`` reuses a run.

then runs every registered attack through ``attacks.cli.run_attack`` (results in
RUN/attacks/NAME.json + .npz) and writes OUT/attacks.json and OUT/attacks.md (the README table).

    python benchmarks/attacks.py                 # the full budget
    python benchmarks/attacks.py --paper-run DIR # ... reusing a paper-protocol run at epoch 100
    python benchmarks/attacks.py --quick         # a smoke run: small subsets, few steps (~20 s)

On one CPU thread an epoch of paper-unique training takes about 2.5 s, so the full budget is
about 15 minutes of training (3 runs x 100 epochs) and 2 minutes of attacks; ``--epochs 10
--paper-run DIR`` took 4 minutes on a busy 2-core host.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _unshadow  # noqa: F401, I001  (first: keeps this file from shadowing the package)
import torch

from attacks.cli import run_attack
from attacks.registry import ATTACKS, build_attack, load_builtin
from splitpriv.io import torch_threads, write_json, write_text
from splitpriv.options import parse_dataclass_args
from splitpriv.published import LEAKAGE_BY_DEPTH
from splitpriv.run import TrainConfig, run_training


@dataclass
class Args:
    epochs: int = 100
    """training epochs of the vanilla and U-shaped paper-unique runs"""
    paper_epochs: int = 100
    """training epochs of the paper-protocol run (the paper measured leakage at epoch 100)"""
    paper_run: str | None = None
    """reuse this run directory for the paper-protocol leakage instead of training one"""
    aux: str = "train:0.1"
    """the attacker's auxiliary set (decoder inversion, label references)"""
    seed: int = 0
    """seeds training, the aux draw, victims and attacks"""
    threads: int = 1
    """torch threads (small tensors: one thread is fastest on a busy host)"""
    quick: bool = False
    """tiny budget: 1,500 training beats, 2 epochs, few victims and steps"""
    out: str = "benchmarks/out/attacks"
    """output folder"""


def parse_args(argv: list[str] | None = None) -> Args:
    return parse_dataclass_args(Args, argv, __doc__)


#: per-attack options: (full budget, quick)
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dcor": ({}, {"max_victims": 1000, "n_batches": 5, "batch_size": 500}),
    "dtw": ({}, {"max_victims": 500, "control_victims": 200}),
    "decoder": ({}, {"epochs": 10, "max_victims": 200, "reference_epochs": 1}),
    "whitebox": ({}, {"steps": 100, "max_victims": 100, "reference_epochs": 1}),
    "unsplit": ({}, {"rounds": 10, "max_victims": 64, "reference_epochs": 1}),
    "label-norm": ({}, {}),
    "label-direction": ({}, {}),
    "label-kmeans": ({}, {}),
}
PAPER = LEAKAGE_BY_DEPTH[2]


def train(name: str, config: TrainConfig, out: Path) -> Path:
    run_dir = out / "runs" / name
    t0 = time.perf_counter()
    result = run_training(config, run_dir, progress=True)
    print(f"run {name}: test accuracy {result['test_accuracy']:.2f} "
          f"({time.perf_counter() - t0:.0f} s, {run_dir})")
    return run_dir


def runs(args: Args, out: Path) -> dict[str, Path]:
    small = {"train_subset": 1500, "test_subset": 1000} if args.quick else {}
    epochs = 2 if args.quick else args.epochs
    common = dict(protocol="paper-unique", depth=2, epochs=epochs, seed=args.seed,
                  record_epochs="last", device="cpu", **small)
    dirs = {
        "vanilla": train("vanilla", TrainConfig(**common), out),
        "ushape": train("ushape", TrainConfig(**common, topology="ushape"), out),
    }
    if args.paper_run:
        dirs["paper"] = Path(args.paper_run)
    else:
        paper = TrainConfig(protocol="paper", depth=2, seed=args.seed, paper_softmax=True,
                            epochs=2 if args.quick else args.paper_epochs,
                            record_epochs="none", device="cpu", **small)
        dirs["paper"] = train("paper", paper, out)
    return dirs


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    load_builtin()
    rows: list[dict[str, Any]] = []
    with torch_threads(args.threads):
        dirs = runs(args, out)
        plan = [("paper", "dcor", None), ("paper", "dtw", None)]
        plan += [("vanilla", name, None) for name in ("dcor", "dtw")]
        plan += [("vanilla", name, args.aux if name == "decoder" else None)
                 for name in ("decoder", "whitebox", "unsplit")]
        plan += [("vanilla", "label-direction", None)]
        plan += [("ushape", name, args.aux) for name in ("label-norm", "label-direction",
                                                         "label-kmeans")]
        for run_name, name, aux in plan:
            full, quick = OPTIONS[name]
            options = {**(quick if args.quick else full), "seed": args.seed,
                       "threads": args.threads}
            t0 = time.perf_counter()
            result, path = run_attack(name, dirs[run_name], aux, options)
            seconds = time.perf_counter() - t0
            headline = build_attack(name).headline(result.summary)
            rows.append({"run": run_name, "attack": name, "aux": aux, "seconds": seconds,
                         "attack_seconds": result.seconds, "headline": headline,
                         "json": str(path), "knowledge": result.knowledge})
            print(f"{run_name:<8} {name:<16} {seconds:7.1f} s  "
                  + "  ".join(f"{k}={fmt(v)}" for k, v in headline.items()))

    md = table(rows, args)
    write_json(out / "attacks.json", {"args": dataclasses.asdict(args), "rows": rows,
                                      "registered": sorted(ATTACKS), "paper": PAPER})
    write_text(out / "attacks.md", md)
    print()
    print(md)
    print(f"wrote {out / 'attacks.json'} and {out / 'attacks.md'}")


def table(rows: list[dict[str, Any]], args: Args) -> str:
    """Markdown: the paper comparison, then one line per attack with its headline numbers."""
    lines = []
    paper = {r["attack"]: r["headline"] for r in rows if r["run"] == "paper"}
    if "dcor" in paper and "dtw" in paper:
        lines += [
            "Correlation leakage of the paper's model (2 conv, paper protocol, own inputs):",
            "",
            "| measure | this run | Abuadbba et al. 2020 (epoch 100) |",
            "|---|---|---|",
            f"| dCor max / min (paper def.) | {paper['dcor']['paper_max']:.4f} / "
            f"{paper['dcor']['paper_min']:.4f} | {PAPER['dcor_max']} / {PAPER['dcor_min']} |",
            f"| DTW min / max (paper def.) | {paper['dtw']['paper_min']:.2f} / "
            f"{paper['dtw']['paper_max']:.2f} | {PAPER['dtw_min']} / {PAPER['dtw_max']} |",
            "",
        ]
    lines += [
        f"Every attack, 2-conv, paper-unique{' (QUICK smoke budget)' if args.quick else ''}, "
        f"aux {args.aux}:",
        "",
        "| run | attack | result | seconds |",
        "|---|---|---|---|",
    ]
    for r in rows:
        h = r["headline"]
        if r["attack"] == "dcor":
            text = (f"paper max {h['paper_max']:.3f} / min {h['paper_min']:.3f}; batch "
                    f"{h['batch_mean']:.3f} [{h['batch_ci'][0]:.3f}, {h['batch_ci'][1]:.3f}], "
                    f"bias-corrected dCor² {h['batch_u_dcor_sqr']:.3f}")
        elif r["attack"] == "dtw":
            text = (f"paper min {h['paper_min']:.2f} / max {h['paper_max']:.2f}; scale-free "
                    f"min {h['scale_free_min']:.2f} / max {h['scale_free_max']:.2f}")
        elif r["attack"].startswith("label"):
            auc = f", mean AUC {h['mean_auc']:.3f}" if h.get("mean_auc") is not None else ""
            text = (f"{h['topology']}: accuracy {h['accuracy']:.3f} (chance "
                    f"{h['chance_accuracy']:.3f}){auc}")
        else:
            text = (f"Pearson r {h['pearson_median']:.3f} [{h['pearson_iqr'][0]:.3f}, "
                    f"{h['pearson_iqr'][1]:.3f}], PRDN {h['prdn_median']:.1f}%, "
                    f"SNR {h['snr_db_median']:.1f} dB, DTW {h['dtw_median']:.3f} "
                    f"(mean beat: r {h['baseline_pearson_median']:.3f}, "
                    f"SNR {h['baseline_snr_db_median']:.1f} dB)")
            if "accuracy_on_reconstructions" in h:
                text += (f"; diagnosis {h['accuracy_on_reconstructions']:.3f} vs "
                         f"{h['accuracy_on_true_beats']:.3f} on true beats")
        lines.append(f"| {r['run']} | {r['attack']} | {text} | {r['seconds']:.1f} |")
    lines.append("")
    lines.append("Medians over victims, [quartiles]; victims exclude the aux rows.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
