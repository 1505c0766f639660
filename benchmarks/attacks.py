"""Every attack on the undefended 2-conv model: what a curious server learns, and in how long.

Trains (or reuses) three run directories under OUT/runs:

* ``vanilla``: 2-conv, paper-unique protocol, vanilla topology (labels cross);
* ``ushape``: the same, U-shaped (labels stay on the client), for the label attacks;
* ``paper``: the paper's own setting (paper protocol, double softmax, no validation split), for
  the correlation leakage beside the published per-channel values at epoch 100
  (dCor max .8935 / min .3937, DTW min 2.70 / max 5.84); ``--paper-run DIR`` reuses a run.

then runs every registered attack through ``attacks.cli.run_attack`` (results in
RUN/attacks/NAME.json + .npz) and writes OUT/attacks.json and OUT/attacks.md
(the table in docs/results.md).

    python benchmarks/attacks.py                 # the full budget
    python benchmarks/attacks.py --paper-run DIR # ... reusing a paper-protocol run at epoch 100
    python benchmarks/attacks.py --quick         # a smoke run: small subsets, few steps (~20 s)
    python benchmarks/attacks.py --costs         # the study attacks' cost per phase on one run

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
    aux: str = "own:0.1"
    """the attacker's auxiliary set (decoder inversion, label references)"""
    seed: int = 0
    """seeds training, the aux draw, victims and attacks"""
    threads: int = 1
    """torch threads (small tensors: one thread is fastest on a busy host)"""
    quick: bool = False
    """tiny budget: 1,500 training beats, 2 epochs, few victims and steps"""
    out: str = "benchmarks/out/attacks"
    """output folder"""
    costs: bool = False
    """instead: the cost of the study attacks (dcor, dtw, strongest) on one run, per attack and
    per phase (OUT/costs.json, OUT/costs.md)"""
    costs_run: str | None = None
    """the run the costs are measured on (None: train a quick-study run under OUT/runs/costs)"""
    costs_budget: str = "quick"
    """the study attack budget of the costs: quick (the studies' --quick) or full"""
    costs_repeat: int = 2
    """times the three attacks run in one process (what a study does across runs is one; the
    second shows what stays cached)"""


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
    if args.costs:
        if args.costs_budget not in ("quick", "full"):
            raise SystemExit(f"--costs-budget must be quick or full, got {args.costs_budget!r}")
        main_costs(args, out)
        return
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


# ---------------------------------------------------------------------------------------------
# The cost of the study attacks on one run (--costs): wall seconds per attack and, inside each,
# per phase (a timer wrapped around the functions that do the work: no change to the attacks)
# ---------------------------------------------------------------------------------------------

#: (module, attribute, label) of what the cost profile times; a ``Class.method`` attribute times
#: a method. A missing one is skipped (the table reads the code it runs on).
TIMED: tuple[tuple[str, str, str], ...] = (
    ("attacks.runs", "load_run", "load run (data rebuilt)"),
    ("attacks.runs", "weights_transcript", "victim activations (client on every beat)"),
    ("attacks.runs", "parse_aux", "aux set"),
    ("attacks.runs", "query_client", "client queries"),
    ("attacks.cli", "reference_classifier", "reference classifier"),
    ("attacks.base", "Attack.__call__", "attack"),
    ("attacks.base", "AttackResult.save", "save json + npz"),
    ("attacks.base", "observe_victims", "victims' observed rows"),
    ("attacks.inversion", "aux_activations", "aux activations"),
    ("attacks.strongest", "StrongestInversion.reconstruct", "candidates"),
    ("attacks.ridge", "RidgeInversion.reconstruct", "ridge"),
    ("attacks.ridge", "RidgeMap.__init__", "ridge fit (SVD)"),
    ("attacks.decoder", "DecoderInversion.reconstruct", "decoder"),
    ("attacks.decoder", "train_decoder", "grid point"),
    ("attacks.decoder", "train_decoders", "grid, trained together"),
    ("attacks.decoder", "decode", "decode"),
    ("attacks.inversion", "InversionAttack.release_choice", "release windows"),
    ("attacks.ridge", "choose_window_by_ridge", "ridge proxy over the windows"),
    ("attacks.mlp", "MLPInversion.reconstruct", "mlp decoder"),
    ("attacks.strongest", "StrongestInversion._match", "matchers"),
    ("attacks.match", "ActivationMatch.fit", "matcher fit"),
    ("attacks.match", "fit_client", "client model"),
    ("attacks.match", "Matcher.play", "matching game"),
    ("attacks.strongest", "StrongestInversion._refit_winners", "winners refitted"),
    ("attacks.strongest", "StrongestInversion.reidentification", "victims re-identified"),
    ("attacks.strongest", "StrongestInversion.prior_candidates", "priors"),
    ("attacks.inversion", "predicted_labels", "class prediction (logistic regression)"),
    ("attacks.strongest", "StrongestInversion._add", "held-out scoring"),
    ("attacks.strongest", "StrongestInversion.describe_reconstruction",
     "candidates' victims scored"),
    ("attacks.inversion", "prior_reconstructions", "priors of the victims"),
    ("attacks.inversion", "InversionAttack.score", "score (shared scorer)"),
    ("attacks.inversion", "score_reconstructions", "score"),
    ("attacks.metrics", "reconstruction_metrics", "metrics"),
    ("attacks.metrics", "linkage_report", "linkage report"),
    ("attacks.metrics", "linkage", "linkage"),
    ("attacks.metrics", "LinkageScorer.report", "linkage report"),
    ("attacks.metrics", "LinkageScorer.draws", "candidates drawn"),
    ("attacks.metrics", "LinkageScorer.linkage", "linkage"),
    ("attacks.inversion", "diagnosis", "diagnosis"),
    ("attacks.measures", "dtw_pairs", "dtw pairs"),
    ("splitpriv.dcor", "dcor_per_channel", "dcor per channel"),
    ("splitpriv.dcor", "u_dcor_sqr_per_channel", "unbiased dcor per channel"),
    ("splitpriv.dcor", "dcor_batches", "dcor batches"),
)


class CostProfile:
    """Inclusive wall and CPU seconds and calls of the timed functions, by the path of timed
    calls they were made in (``attack > candidates > decoder > grid point lr=0.001 wd=0``).
    CPU seconds (the process's) are the steadier on a busy host."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.rows: dict[tuple[str, ...], list[float]] = {}  # path -> [calls, wall s, cpu s]
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, fn: Any, label: str) -> Any:
        import functools

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label
            if label == "grid point" and len(args) >= 7:
                name = f"grid point lr={args[5]:g} wd={args[6]:g}"
            self.stack.append(name)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                row = self.rows.setdefault(tuple(self.stack), [0, 0.0, 0.0])
                row[0] += 1
                row[1] += time.perf_counter() - t0
                row[2] += time.process_time() - c0
                self.stack.pop()
        return timed

    def install(self) -> None:
        """Wrap every :data:`TIMED` function, wherever the attacks' modules hold it by name."""
        import importlib
        import sys

        load_builtin()
        for module, attr, label in TIMED:
            try:
                mod = importlib.import_module(module)
            except ImportError:
                continue
            owner_name, _, name = attr.rpartition(".")
            owner = getattr(mod, owner_name, None) if owner_name else mod
            fn = (getattr(owner, "__dict__", {}).get(name) if owner_name
                  else getattr(mod, name, None))
            if fn is None:
                continue
            wrapped = self.wrap(fn, label)
            holders = [owner] if owner_name else [
                m for key, m in list(sys.modules.items())
                if (key == module or key.startswith(("attacks.", "splitpriv.")))
                and getattr(m, name, None) is fn]
            for holder in holders:
                self._undo.append((holder, name, fn))
                setattr(holder, name, wrapped)

    def uninstall(self) -> None:
        for holder, name, fn in reversed(self._undo):
            setattr(holder, name, fn)
        self._undo.clear()

    def table(self, prefix: tuple[str, ...]) -> list[dict[str, Any]]:
        """Rows under ``prefix`` (depth first, in first-call order), with the self time of
        each row (its seconds minus its timed children's)."""
        out = []
        for path, (calls, seconds, cpu) in self.rows.items():
            if len(path) == len(prefix) or path[:len(prefix)] != prefix:
                continue
            children = [r for p, r in self.rows.items()
                        if len(p) == len(path) + 1 and p[:len(path)] == path]
            out.append({"path": list(path[len(prefix):]), "calls": int(calls),
                        "seconds": seconds, "cpu_seconds": cpu,
                        "self_seconds": seconds - sum(r[1] for r in children),
                        "self_cpu_seconds": cpu - sum(r[2] for r in children)})
        order = {p: i for i, p in enumerate(self.rows)}

        def key(r: dict[str, Any]) -> list[int]:
            path = (*prefix, *r["path"])
            return [order.get(path[:i + 1], 0) for i in range(len(path))]
        return sorted(out, key=key)


def cost_run(args: Args, out: Path) -> Path:
    """The run the costs are measured on: ``--costs-run``, else a quick-study run (2-conv,
    paper-unique, 4 epochs of 3,000 training beats, vanilla)."""
    if args.costs_run:
        return Path(args.costs_run)
    return train("costs", TrainConfig(protocol="paper-unique", depth=2, epochs=4, seed=args.seed,
                                      train_subset=3000, test_subset=1000, record_epochs="none",
                                      device="cpu"), out)


def costs(args: Args, out: Path) -> dict[str, Any]:
    """Each study attack's cost on one run, as ``studies.common.run_attacks`` runs them (its
    options from the study budget: ``--costs-budget quick``, the studies' ``--quick``, or
    ``full``), ``--costs-repeat`` times in one process (later repeats show what is shared)."""
    from attacks.base import AttackBudget

    quick = dict(dcor_victims=500, dtw_victims=200, decoder_epochs=10, decoder_victims=300,
                 reference_epochs=0)
    budget = AttackBudget(**(quick if args.costs_budget == "quick" else {}))
    run_dir = cost_run(args, out)
    profile = CostProfile()
    attacks_rows, summaries = [], {}
    profile.install()
    try:
        for rep in range(args.costs_repeat):
            for name in ("dcor", "dtw", "strongest"):
                cls = ATTACKS[name]
                options = {"seed": args.seed, "threads": args.threads,
                           **cls.study_options(budget)}
                tag = f"{name} #{rep + 1}"
                profile.stack.append(tag)
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    result, _ = run_attack(name, run_dir, budget.aux if cls.needs_aux() else None,
                                           dict(options))
                finally:
                    profile.stack.pop()
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                profile.rows[(tag,)] = [1, seconds, cpu]
                attacks_rows.append({"attack": name, "repeat": rep + 1, "seconds": seconds,
                                     "cpu_seconds": cpu, "phases": profile.table((tag,))})
                summaries[tag] = build_attack(name).headline(result.summary)
                if name == "strongest":
                    summaries[tag]["selection"] = {
                        n: c["heldout"] for n, c in
                        result.summary["selection"]["candidates"].items()}
    finally:
        profile.uninstall()
    return {"run": str(run_dir), "budget": dataclasses.asdict(budget), "rows": attacks_rows,
            "headlines": summaries}


def costs_table(doc: dict[str, Any]) -> str:
    lines = [f"Attack costs on {doc['run']} (budget {doc['budget']}); seconds are inclusive "
             "(self: less the timed calls inside), CPU seconds the process's:", "",
             "| attack | phase | calls | wall s | CPU s | self CPU s |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| **{r['attack']} #{r['repeat']}** | (total, run_attack) | 1 | "
                     f"{r['seconds']:.2f} | {r['cpu_seconds']:.2f} | |")
        for p in r["phases"]:
            indent = "· " * (len(p["path"]) - 1)
            lines.append(f"| | {indent}{p['path'][-1]} | {p['calls']} | {p['seconds']:.3f} | "
                         f"{p['cpu_seconds']:.3f} | {p['self_cpu_seconds']:.3f} |")
    total: dict[int, list[float]] = {}
    for r in doc["rows"]:
        t = total.setdefault(r["repeat"], [0.0, 0.0])
        t[0] += r["seconds"]
        t[1] += r["cpu_seconds"]
    lines += ["", "Per repeat, the three attacks together: "
              + ", ".join(f"#{k} {w:.2f} s wall, {c:.2f} s CPU" for k, (w, c) in total.items()),
              ""]
    return "\n".join(lines)


def main_costs(args: Args, out: Path) -> None:
    load_builtin()
    with torch_threads(args.threads):
        doc = costs(args, out)
    md = costs_table(doc)
    write_json(out / "costs.json", {"args": dataclasses.asdict(args), **doc})
    write_text(out / "costs.md", md)
    print(md)
    print(f"wrote {out / 'costs.json'} and {out / 'costs.md'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
