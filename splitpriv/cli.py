"""The ``splitpriv`` command line: ``data prepare``, ``train``, ``attack``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from splitpriv.distributed import ChannelError
from splitpriv.io import torch_threads
from splitpriv.run import TOPOLOGIES, TrainConfig

PROTOCOLS = ("paper", "paper-unique", "inter-patient")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mitdb-dir", help="folder of the MIT-BIH records (else $SPLITPRIV_MITDB, "
                   "else the user cache, downloading from PhysioNet if empty)")
    p.add_argument("--cache-dir", help="where the beat-pool cache goes (else the user cache)")
    p.add_argument("--protocol", default="paper-unique", choices=PROTOCOLS)
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation fraction of the training half (default 0 for paper, else 0.1)")
    p.add_argument("--data-seed", type=int, default=2019)


def _print_card(card: dict) -> None:
    print(f"protocol               {card['protocol']}")
    print(f"pool                   {card['pool_size']:,} beats  {card['pool_class_counts']}")
    for part in ("train", "val", "test"):
        counts = card.get(f"class_counts_{part}", "")
        print(f"{part:<22} {card[f'n_{part}']:>6,}  {counts}")
    print(f"test rows duplicating a training row: {card['test_rows_duplicating_train']:,}")
    print(f"records train ({len(card['records_train'])}): {card['records_train']}")
    print(f"records test  ({len(card['records_test'])}): {card['records_test']}")
    print(f"records in both halves: {card['records_shared']}")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from splitpriv.data import dataset_card, load_pool, make_split, write_paper_hdf5

    cfg = TrainConfig(protocol=args.protocol, val_fraction=args.val_fraction)
    pool = load_pool(args.mitdb_dir, cache_dir=args.cache_dir)
    split = make_split(
        pool, args.protocol, val_fraction=cfg.resolved_val_fraction, seed=args.data_seed
    )
    card = dataset_card(pool, split)
    if args.export_hdf5:
        write_paper_hdf5(split, args.export_hdf5)
    if args.json:
        print(json.dumps(card, indent=2))
    else:
        _print_card(card)
        if args.export_hdf5:
            print(f"wrote {args.export_hdf5}/train_ecg.hdf5 and test_ecg.hdf5")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = TrainConfig(
        protocol=args.protocol, depth=args.depth, epochs=args.epochs, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
        topology=args.topology, paper_softmax=args.paper_softmax, data_seed=args.data_seed,
        train_subset=args.train_subset, test_subset=args.test_subset,
        record_epochs=args.record_epochs, record_kinds=args.record_kinds,
        defenses=list(args.defense), device=args.device, threads=args.threads or None,
        mitdb_dir=args.mitdb_dir, cache_dir=args.cache_dir,
    )
    with torch_threads(config.threads):
        return _train(args, config)


def _train(args: argparse.Namespace, config: TrainConfig) -> int:
    from splitpriv.run import run_training

    if args.role is not None:
        from splitpriv.distributed import run_distributed, spec_from_cli

        spec = spec_from_cli(
            args.role, rank=args.rank, world_size=args.world_size, master_addr=args.master_addr,
            master_port=args.master_port, backend=args.backend, timeout_s=args.timeout,
        )
        result = run_distributed(config, args.out, spec, mode=args.clients_mode,
                                 progress=not args.no_progress)
        if spec.rank != 1:  # the server and clients 2..K: what crossed their links
            print(json.dumps({"role": spec.role, "rank": spec.rank,
                              "bytes_total": result["wire"]["bytes_total"]}, indent=2))
            return 0
    else:
        result = run_training(config, args.out, progress=not args.no_progress, force=args.force)
    keys = ("test_accuracy", "best_epoch", "best_test_accuracy", "final_test_accuracy", "seconds")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from attacks.cli import run_attack_cli
    from splitpriv.options import parse_pairs

    run_attack_cli(args.name, args.run, args.aux, parse_pairs(args.option, "--option"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitpriv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the MIT-BIH beat pool and protocols")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser(
        "prepare", help="build (or load) the beat pool; print a dataset card"
    )
    _data_args(prep)
    prep.add_argument("--json", action="store_true", help="print the card as JSON")
    prep.add_argument("--export-hdf5", metavar="DIR",
                      help="also write the paper's train_ecg.hdf5 / test_ecg.hdf5 to DIR")
    prep.set_defaults(func=cmd_data_prepare)

    train = sub.add_parser("train", help="train one split model into a run directory")
    _data_args(train)
    train.add_argument("--depth", type=int, default=2, help="client conv layers, 2..8")
    train.add_argument("--epochs", type=int, default=400)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--topology", default="vanilla", choices=TOPOLOGIES)
    train.add_argument("--paper-softmax", action="store_true",
                       help="reproduce the original code's softmax before cross-entropy")
    train.add_argument("--train-subset", type=int, default=None)
    train.add_argument("--test-subset", type=int, default=None)
    train.add_argument("--record-epochs", default="last",
                       help="transcript epochs: last|none|all|1,100,...")
    train.add_argument("--record-kinds", default="", help="transcript kinds, comma list (all)")
    train.add_argument("--defense", action="append", default=[],
                       metavar="NAME[:key=value,...]", help="repeatable")
    train.add_argument("--device", default="auto")
    train.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1, the fastest for this model on a "
                            "CPU; 0: torch's default)")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--force", action="store_true", help="retrain even if DIR holds a run")
    train.add_argument("--no-progress", action="store_true")
    dist = train.add_argument_group(
        "distributed", "run one party as its own process over torch.distributed (rank 0 is the "
        "server, ranks 1..K the clients); a missing value is read from torchrun's RANK, "
        "WORLD_SIZE, MASTER_ADDR, MASTER_PORT")
    dist.add_argument("--role", choices=("server", "client", "auto"), default=None,
                      help="auto: server if the rank is 0, else client (torchrun)")
    dist.add_argument("--rank", type=int, default=None)
    dist.add_argument("--world-size", type=int, default=None, help="K clients + 1")
    dist.add_argument("--master-addr", default=None, help="rendezvous host (127.0.0.1)")
    dist.add_argument("--master-port", type=int, default=None, help="rendezvous port (29500)")
    dist.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    dist.add_argument("--clients-mode", default="sequential", choices=("sequential", "splitfed"),
                      help="with K > 1 clients: weights handed client to client, or SplitFed")
    dist.add_argument("--timeout", type=float, default=120.0,
                      help="seconds a party waits for a message before it stops")
    train.set_defaults(func=cmd_train)

    att = sub.add_parser(
        "attack", help="run an attack on a saved run; writes DIR/attacks/NAME.json"
    )
    att.add_argument("name", help="dcor, dtw, label-norm, label-direction, label-kmeans, decoder, "
                     "whitebox, unsplit")
    att.add_argument("--run", required=True, help="run directory")
    att.add_argument("--aux", default=None, help="attacker's auxiliary beats: train:F | train:N | "
                     "records:R1,R2,...")
    att.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="attack option, repeatable (max_victims=2000, phase=test, ...)")
    att.set_defaults(func=cmd_attack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, ChannelError) as exc:  # DataError: ValueError
        print(f"splitpriv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
