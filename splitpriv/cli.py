"""The ``splitpriv`` command line: ``data prepare``, ``train``, ``attack``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence

from splitpriv.distributed import ChannelError
from splitpriv.io import torch_threads
from splitpriv.options import ArgumentParser, add_dataclass_arguments, dataclass_from_args
from splitpriv.run import TOPOLOGIES, TrainConfig

PROTOCOLS = ("paper", "paper-unique", "inter-patient", "records-holdout")

#: argparse keywords that replace the derived ones of a few TrainConfig fields; every other field
#: is a flag derived from its type and documentation alone (a new field is a new flag)
TRAIN_FLAGS: dict[str, dict[str, object]] = {
    "protocol": {"choices": PROTOCOLS},
    "topology": {"choices": TOPOLOGIES},
    "defenses": {"flag": "--defense", "action": "append", "metavar": "NAME[:key=value,...]",
                 "help": "a defense and its parameters, repeatable (see defenses/)"},
    "threads": {"help": "torch CPU threads (default 1, the fastest for this model on a CPU; "
                        "0 or none: torch's default)"},
    "mitdb_dir": {"help": "folder of the MIT-BIH records (else $SPLITPRIV_MITDB, else the user "
                          "cache, downloading from PhysioNet if empty)"},
    "cache_dir": {"help": "where the beat-pool cache goes (else the user cache)"},
}
#: the TrainConfig fields ``data prepare`` takes
DATA_FIELDS = ("mitdb_dir", "cache_dir", "protocol", "labels", "val_fraction", "data_seed", "hdf5")


def _print_card(card: dict) -> None:
    print(f"protocol               {card['protocol']}")
    print(f"pool                   {card['pool_size']:,} beats  {card['pool_class_counts']}")
    for part in ("train", "val", "test"):
        counts = card.get(f"class_counts_{part}", "")
        print(f"{part:<22} {card[f'n_{part}']:>6,}  {counts}")
    print(f"test rows duplicating a training row: {card['test_rows_duplicating_train']:,}")
    print(f"records train ({len(card['records_train'])}): {card['records_train']}")
    if card.get("records_val"):
        print(f"records val   ({len(card['records_val'])}): {card['records_val']}")
    print(f"records test  ({len(card['records_test'])}): {card['records_test']}")
    print(f"records in both halves: {card['records_shared']}")
    if card.get("records_missing"):
        print(f"NOT the whole database: the pool holds no beat of MIT-BIH record(s) "
              f"{card['records_missing']}")


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from splitpriv.data import write_paper_hdf5
    from splitpriv.run.data import load_split

    _, split, card = load_split(dataclass_from_args(TrainConfig, args), rebuild=args.rebuild,
                                allow_unlisted=args.allow_unlisted)
    if args.export_hdf5:
        write_paper_hdf5(split, args.export_hdf5)
    if args.json:
        print(json.dumps(card, indent=2))
    else:
        _print_card(card)
        if args.export_hdf5:
            print(f"wrote {args.export_hdf5}/train_ecg.hdf5 and test_ecg.hdf5")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig from the ``train`` flags given (its defaults for the rest).

    Raises:
        ValueError: a value the config refuses, naming its flag.
    """
    return dataclass_from_args(TrainConfig, args)


def cmd_train(args: argparse.Namespace) -> int:
    config = train_config(args)
    with torch_threads(config.threads):
        return _train(args, config)


def _train(args: argparse.Namespace, config: TrainConfig) -> int:
    from splitpriv.run import run_training

    if args.role is not None:
        from splitpriv.distributed import run_distributed, spec_from_cli

        spec = spec_from_cli(
            args.role, rank=args.rank, world_size=args.world_size, master_addr=args.master_addr,
            master_port=args.master_port, backend=args.backend, timeout_s=args.timeout,
            turn_timeout_s=args.turn_timeout, secret=args.secret,
            max_message_mb=args.max_message_mb,
        )
        result = run_distributed(config, args.out, spec, mode=args.clients_mode,
                                 progress=not args.no_progress, force=args.force)
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


class _AttackHelp(argparse.HelpFormatter):
    """Lists the registered attacks in ``splitpriv attack --help`` (the registry is imported only
    when the help is shown)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "name":
            from attacks.registry import load_builtin

            return "the attack: " + ", ".join(sorted(load_builtin()))
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never break a hyphenated attack name (label-strongest) across lines
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="splitpriv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="the MIT-BIH beat pool and protocols")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser(
        "prepare", help="build (or load) the beat pool; print a dataset card"
    )
    add_dataclass_arguments(prep, TrainConfig, only=DATA_FIELDS, flags=TRAIN_FLAGS)
    prep.add_argument("--json", action="store_true", help="print the card as JSON")
    prep.add_argument("--rebuild", action="store_true",
                      help="rebuild the beat-pool cache from the records even if it is valid")
    prep.add_argument("--allow-unlisted", action="store_true",
                      help="accept record files SHA256SUMS.txt has no line for (their WFDB header "
                      "checksums are still checked); runs then use the pool cached here")
    prep.add_argument("--export-hdf5", metavar="DIR",
                      help="also write the paper's train_ecg.hdf5 / test_ecg.hdf5 to DIR")
    prep.set_defaults(func=cmd_data_prepare)

    train = sub.add_parser("train", help="train one split model into a run directory")
    config = train.add_argument_group("the run (splitpriv.run.TrainConfig, saved in config.json)")
    add_dataclass_arguments(config, TrainConfig, flags=TRAIN_FLAGS)
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
                      help="seconds a party waits for the rendezvous or a message before it stops")
    dist.add_argument("--turn-timeout", type=float, default=None,
                      help="seconds a party waits for its turn (another client's epoch, a "
                      "SplitFed round); default: --timeout")
    dist.add_argument("--secret", default=None,
                      help="shared secret every party must hold (else $SPLITPRIV_SECRET, which "
                      "keeps it out of the process list); without one any process that reaches "
                      "the port can join")
    dist.add_argument("--max-message-mb", type=float, default=None,
                      help="the longest message a peer may declare (default: twice the run's "
                      "longest)")
    train.set_defaults(func=cmd_train)

    att = sub.add_parser(
        "attack", help="run an attack on a saved run; writes DIR/attacks/NAME.json",
        formatter_class=_AttackHelp,
    )
    att.add_argument("name", help="the attack (the registered names)")
    att.add_argument("--run", required=True, help="run directory")
    att.add_argument("--aux", default=None, help="attacker's auxiliary beats: train:F | train:N | "
                     "records:R1,R2,... | enrol:F (identity's default: enrol:0.3)")
    att.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                     help="attack option, repeatable (max_victims=2000, phase=test, ...)")
    att.set_defaults(func=cmd_attack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line on stderr) or --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError, ChannelError) as exc:  # DataError: ValueError
        print(f"splitpriv: error: {exc}", file=sys.stderr)  # an OSError names its file
        return 2


if __name__ == "__main__":
    sys.exit(main())
