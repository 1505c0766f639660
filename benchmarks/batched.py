"""K defended runs trained one by one vs stacked (``splitpriv.batched``): wall-clock seconds.

For each defense kind asked (``none``: K undefended seeds, the reference; ``paper``:
dp:mode=paper at the given epsilons; ``formal``: dp:mode=formal Gaussian calibrated to the given
total epsilons; ``nopeek``: the given alphas), trains the K runs (run k: seed k, the k-th
parameter) with ``run_training`` one after the other, then with ``run_training_batched``, into
fresh directories, and prints the seconds of each, the speed-up and the largest difference of
the runs' final training losses (the two ways train the
same runs: equal up to float rounding).

    python benchmarks/batched.py                       # paper DP, K = 3, 3 epochs, 3,000 rows
    python benchmarks/batched.py --kinds none paper formal nopeek --epochs 3 --repeats 3

On a shared host the seconds vary from one try to the next: ``--repeats`` alternates the two
ways and keeps each one's fastest try.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _unshadow  # noqa: F401, I001  (first: keeps this file from shadowing the package)

from splitpriv.batched import batch_key, run_training_batched
from splitpriv.options import parse_dataclass_args
from splitpriv.run import TrainConfig, run_training


@dataclass
class Args:
    kinds: list[str] = field(default_factory=lambda: ["paper"])
    """defense kinds to time: none (K undefended seeds, the reference), paper, formal, nopeek"""
    epsilons: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0])
    """paper mode's per-release epsilons / formal mode's total epsilons (one run each)"""
    alphas: list[float] = field(default_factory=lambda: [0.5, 2.0, 5.0])
    """NoPeek's alphas (one run each)"""
    epochs: int = 3
    """training epochs of every run"""
    train_subset: int = 3000
    """training rows (first n of the protocol's training half)"""
    test_subset: int = 1000
    """test rows"""
    depth: int = 2
    """client conv layers"""
    repeats: int = 1
    """tries of each way (alternating; the fastest is kept)"""
    threads: int = 1
    """torch threads"""
    device: str = "cpu"
    """torch device"""
    mitdb_dir: str | None = None
    """MIT-BIH records (None: $SPLITPRIV_MITDB or the default)"""
    cache_dir: str | None = None
    """beat-pool cache (None: the default)"""


def specs(kind: str, args: Args) -> list[list[str]]:
    """Each run's defense list."""
    return [[s] for s in _specs(kind, args)] if kind != "none" else [[] for _ in args.epsilons]


def _specs(kind: str, args: Args) -> list[str]:
    if kind == "paper":
        return [f"dp:mode=paper,epsilon={e:g}" for e in args.epsilons]
    if kind == "formal":
        return [f"dp:mode=formal,mechanism=gaussian,target_epsilon={e:g},clip=2"
                for e in args.epsilons]
    if kind == "nopeek":
        return [f"nopeek:alpha={a:g}" for a in args.alphas]
    raise SystemExit(f"unknown kind {kind!r}: none, paper, formal or nopeek")


def epsilon(result: dict) -> float | None:
    """The accounted epsilon of a run's first defense (None: none, or no formal claim)."""
    return result["defenses"][0]["epsilon"] if result["defenses"] else None


def last_loss(run_dir: Path) -> float:
    """The training loss of a run's last epoch (its metrics.jsonl)."""
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]


def main(argv: list[str] | None = None) -> None:
    args = parse_dataclass_args(Args, argv, __doc__)
    for kind in args.kinds:
        configs = [TrainConfig(
            protocol="paper-unique", depth=args.depth, epochs=args.epochs, seed=k,
            train_subset=args.train_subset, test_subset=args.test_subset, record_epochs="none",
            defenses=spec, device=args.device, threads=args.threads, mitdb_dir=args.mitdb_dir,
            cache_dir=args.cache_dir) for k, spec in enumerate(specs(kind, args))]
        assert len({batch_key(c) for c in configs} - {None}) == 1, "the runs do not stack"
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            run_training(configs[0], root / "warm", progress=False)  # pool cache, imports
            t_alone = t_batched = float("inf")
            for r in range(args.repeats):
                t0 = time.perf_counter()
                alone = [run_training(c, root / f"alone-{r}-{k}", progress=False)
                         for k, c in enumerate(configs)]
                t_alone = min(t_alone, time.perf_counter() - t0)
                t0 = time.perf_counter()
                stacked = run_training_batched(configs, [root / f"batched-{r}-{k}"
                                                         for k in range(len(configs))],
                                               progress=False)
                t_batched = min(t_batched, time.perf_counter() - t0)
            loss_diff = max(abs(last_loss(root / f"alone-0-{k}")
                                - last_loss(root / f"batched-0-{k}")) for k in range(len(configs)))
        row = {"kind": kind, "k": len(configs), "epochs": args.epochs,
               "train_rows": alone[0]["n_train"], "repeats": args.repeats,
               "one_by_one_s": round(t_alone, 2),
               "batched_s": round(t_batched, 2), "speedup": round(t_alone / t_batched, 2),
               "train_s_per_epoch_alone": [round(r["train_seconds_per_epoch"], 3) for r in alone],
               "train_s_per_epoch_batched_share": round(stacked[0]["train_seconds_per_epoch"], 3),
               "test_accuracy_alone": [r.get("test_accuracy") for r in alone],
               "test_accuracy_batched": [r.get("test_accuracy") for r in stacked],
               "epsilon_alone": [epsilon(r) for r in alone],
               "epsilon_batched": [epsilon(r) for r in stacked],
               "max_final_train_loss_diff": loss_diff}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
