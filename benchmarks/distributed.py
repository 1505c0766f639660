"""Split learning across processes: epoch time and bytes per epoch.

Compares, on the paper-unique training rows (the first ``train_subset``), one thread per party:

1. in-process: both parties in one process (``SplitTrainer`` over an in-process channel that
   counts the bytes the wire would carry);
2. two processes on loopback (gloo over TCP, 127.0.0.1): a server and one client;
3. K clients on loopback, the training rows split across them by record: sequential split
   learning (weights handed client to client) and SplitFed (clients in parallel, averaged each
   round), for each K in ``clients``.

Epoch time is the training part of an epoch (for the distributed runs, measured on the server
from the first client's first step to the last client's last step). Bytes per epoch are those of
the training phase on every client-server link (headers, ids and payloads), plus, for sequential
learning, the client-to-client hand-over. Writes OUT/distributed.json and OUT/distributed.md.

    python benchmarks/distributed.py            # 4,000 rows, 3 epochs, K = 1, 2, 4
    python benchmarks/distributed.py --quick    # 512 rows, 1 epoch, K = 1, 2
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _unshadow  # noqa: F401, I001  (first: keeps benchmarks/defenses.py from shadowing)
import torch

from splitpriv.channel import CountingChannel
from splitpriv.distributed import ClientData, launch_local, partition_by_record
from splitpriv.io import write_json, write_text
from splitpriv.models import ModelConfig, build_models
from splitpriv.options import parse_dataclass_args
from splitpriv.run import TrainConfig
from splitpriv.trainer import SplitTrainer

_DEFAULT_MITDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "mitdb"


@dataclass
class Args:
    train_subset: int = 4000
    """training rows used (the first n of paper-unique's training half)"""
    epochs: int = 3
    """epochs per configuration (the first is reported apart: it includes warm-up)"""
    clients: list[int] = field(default_factory=lambda: [1, 2, 4])
    """numbers of clients K for the multi-client runs"""
    topology: str = "vanilla"
    """vanilla or ushape"""
    batch_size: int = 32
    """the paper's 32"""
    timeout: float = 120.0
    """seconds a party waits for a message before it gives up"""
    quick: bool = False
    """smoke run: 512 rows, 1 epoch, K = 1, 2 (OUT gets -quick)"""
    mitdb_dir: str = str(_DEFAULT_MITDB) if _DEFAULT_MITDB.exists() else ""
    """folder of the MIT-BIH records (empty: $SPLITPRIV_MITDB or the user cache)"""
    cache_dir: str = ""
    """beat-pool cache folder (empty: the user cache)"""
    out: str = "benchmarks/out/distributed"
    """output folder"""


def parse_args(argv: list[str] | None = None) -> Args:
    args = parse_dataclass_args(Args, argv, __doc__)
    if args.quick:
        args.train_subset, args.epochs, args.clients = 512, 1, [1, 2]
        if args.out == Args.out:
            args.out += "-quick"
    return args


def load_rows(args: Args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from splitpriv.data import load_pool, make_split

    pool = load_pool(args.mitdb_dir or None, cache_dir=args.cache_dir or None)
    split = make_split(pool, "paper-unique", val_fraction=0.0, seed=2019)
    n = args.train_subset
    x = torch.as_tensor(split.x_train[:n]).float().reshape(-1, 1, 128)
    y = torch.as_tensor(split.y_train[:n]).long()
    return x, y, torch.as_tensor(split.record_train[:n])


def in_process(config: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    torch.set_num_threads(1)
    channel = CountingChannel()
    models = build_models(ModelConfig(config.depth), ushape=config.topology == "ushape",
                          seed=config.seed)
    trainer = SplitTrainer(models, x, y, batch_size=config.batch_size, seed=config.seed,
                           channel=channel)
    seconds = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - t0)
    return {"setting": "in-process", "mode": "-", "clients": 1, "epoch_seconds": seconds,
            "train_bytes_per_epoch": channel.wire.total(epoch=1, phase="train"),
            "handover_bytes_per_epoch": 0}


def distributed(config: TrainConfig, x, y, records, k: int, mode: str, args: Args,
                workdir: Path) -> dict[str, Any]:
    if k == 1:
        datas = [ClientData(x, y)]
    else:
        datas = [ClientData(x[p], y[p], train_ids=p) for p in partition_by_record(records, k)]
    deadline = max(60.0, 30.0 * config.epochs * len(y) / 1000)
    results = launch_local(config, datas, mode=mode, workdir=workdir / f"{mode}-{k}",
                           timeout_s=args.timeout, deadline_s=deadline)
    server = results[0]
    handover = 0
    for r in results[1:]:  # each hand-over counted by its sender
        if "handover" in r["wire"]:
            handover += r["wire"]["handover"]["bytes_sent"]
    return {
        "setting": "2 processes" if k == 1 else f"{k} clients", "mode": mode, "clients": k,
        "epoch_seconds": [h["train_seconds"] for h in server["history"]],
        "train_bytes_per_epoch": server["wire"]["per_epoch"][0]["train_bytes"],
        "handover_bytes_per_epoch": handover / config.epochs,
        "rows_per_client": [len(d.y_train) for d in datas],
    }


def table(rows: list[dict[str, Any]], args: Args) -> str:
    lines = [f"## Split learning across processes ({args.topology}, {args.train_subset} rows, "
             f"batch {args.batch_size}, {args.epochs} epochs, loopback gloo, 1 thread per party)",
             "", "| setting | mode | epoch s (first) | epoch s (rest, mean) "
             "| MB/epoch client-server | MB/epoch hand-over |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["epoch_seconds"]
        rest = f"{statistics.mean(s[1:]):.3f}" if len(s) > 1 else "-"
        lines.append(f"| {r['setting']} | {r['mode']} | {s[0]:.3f} | {rest} | "
                     f"{r['train_bytes_per_epoch'] / 1e6:.3f} | "
                     f"{r['handover_bytes_per_epoch'] / 1e6:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    x, y, records = load_rows(args)
    config = TrainConfig(depth=2, epochs=args.epochs, seed=0, topology=args.topology,
                         batch_size=args.batch_size, record_epochs="none", device="cpu")
    rows = [in_process(config, x, y)]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(distributed(config, x, y, records, 1, "sequential", args, Path(tmp)))
        for k in args.clients:
            if k == 1:
                continue
            for mode in ("sequential", "splitfed"):
                rows.append(distributed(config, x, y, records, k, mode, args, Path(tmp)))
    text = table(rows, args)
    print(text)
    write_json(out / "distributed.json", {"args": dataclasses.asdict(args), "rows": rows})
    write_text(out / "distributed.md", text + "\n")


if __name__ == "__main__":
    main()
