"""The ``splitpriv`` command line: ``data prepare``, ``train``, ``attack``, ``audit``, ``list``,
``show``, ``compare``.

``splitpriv list attacks|defenses|servers|datasets|models`` prints each one's parameters and
defaults from its Config; ``splitpriv attack NAME --help`` an attack's options, the knowledge it
needs and its cost; ``splitpriv show DIR...`` and ``splitpriv compare DIR...`` saved runs as one
table (``splitpriv.results``); ``splitpriv train --config DIR/config.json`` reruns a saved run's
config (flags given beside it win)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from splitpriv.distributed import ChannelError
from splitpriv.fast import fast_kernels
from splitpriv.io import torch_threads
from splitpriv.options import ArgumentParser, add_dataclass_arguments, dataclass_from_args
from splitpriv.registry import cli_extensions
from splitpriv.run import TOPOLOGIES, TrainConfig

PROTOCOLS = ("paper", "paper-unique", "inter-patient", "records-holdout")

#: argparse keywords that replace the derived ones of a few TrainConfig fields; every other field
#: is a flag derived from its type and documentation alone (a new field is a new flag)
TRAIN_FLAGS: dict[str, dict[str, object]] = {
    "protocol": {"choices": PROTOCOLS},
    "topology": {"choices": TOPOLOGIES},
    "defenses": {"flag": "--defense", "action": "append", "metavar": "NAME[:key=value,...]",
                 "type": str,
                 "help": "a defense and its parameters, repeatable, e.g. dp:mode=paper,epsilon=3 "
                         "(splitpriv list defenses: every defense, its parameters and defaults)"},
    "server": {"metavar": "NAME[:key=value,...]",
               "help": "the server's behaviour (default honest; splitpriv list servers: every "
                       "behaviour, its parameters and defaults)"},
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
    if "hdf5" in card:  # the paper's pair: records unknown
        print(f"files                  {card['hdf5']['train']}, {card['hdf5']['test']}")
        return
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
    from splitpriv.datasets import run_dataset
    from splitpriv.run.data import load_split

    config = dataclass_from_args(TrainConfig, args)
    if config.hdf5 is not None:  # the paper's pair: read as the run reads it
        if args.export_hdf5:
            raise ValueError("--export-hdf5: --hdf5 files are the paper's pair already")
        card = run_dataset(config).load(config).card
    else:
        _, split, card = load_split(config, rebuild=args.rebuild,
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
    """The run's TrainConfig from the ``train`` flags given, on top of ``--config`` (a saved
    config.json) when given, else of its defaults.

    Raises:
        ValueError: a value the config refuses, naming its flag; a bad ``--config`` file.
    """
    base = getattr(args, "config", None)
    if base is None:
        return dataclass_from_args(TrainConfig, args)
    saved = dataclasses.asdict(TrainConfig.load(base))
    return dataclass_from_args(TrainConfig, saved | {k: v for k, v in vars(args).items()
                                                     if k in saved})


def cmd_train(args: argparse.Namespace) -> int:
    config = train_config(args)
    if args.log is not None:
        from splitpriv.tracking import Tracker, check_backend

        check_backend(args.log)
        if args.role is not None:
            raise ValueError("--log is for a run trained in one process (not with --role)")
        with torch_threads(config.threads), fast_kernels(config.fast), Tracker(args.out, args.log):
            return _train(args, config)
    with torch_threads(config.threads), fast_kernels(config.fast):
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


#: what ``splitpriv list`` lists besides the plug-in packages' catalogs (e.g. attacks)
CATALOGS = ("defenses", "servers", "datasets", "models")


class _Extensions:
    """The plug-in packages' parts of the command line (:func:`splitpriv.registry.
    cli_extensions`: the attacks' ``attack``, ``audit``, ``list attacks``), loaded once."""

    _modules: list[Any] | None = None

    def modules(self) -> list[Any]:
        if self._modules is None:
            self._modules = cli_extensions()
        return self._modules

    def catalogs(self) -> dict[str, Callable[[], str]]:
        return {k: v for m in self.modules() for k, v in m.catalogs().items()}


extensions = _Extensions()
#: the protocols in words (their parameters are TrainConfig's data fields)
PROTOCOL_WORDS = {
    "paper": "the paper's split: 6000/6000/6000/2490/6000 draws per class with replacement, "
             "half to train and half to test (copies of a beat can land on both sides)",
    "paper-unique": "the paper's sizes drawn without replacement: no beat on both sides "
                    "(the default)",
    "inter-patient": "de Chazal et al. 2004: DS1 records train, DS2 records test (labels "
                     "paper or aami)",
}


def catalog(what: str) -> str:
    """``splitpriv list WHAT``: each registered plug-in (or the data protocols, the model) with
    its parameters and defaults, read from its Config."""
    from splitpriv.models import ModelConfig
    from splitpriv.options import describe_fields, first_paragraph

    out: list[str] = []
    if what in extensions.catalogs():
        out.append(extensions.catalogs()[what]())
    elif what == "defenses":
        from splitpriv.defense import DEFENSES

        for name, defense in sorted(DEFENSES.items()):
            out += [f"{name}  (--defense {name}[:key=value,...])", first_paragraph(defense)]
            variants = defense.variants or {}
            for value, v in variants.items():
                out += [f" {defense.variant_field}={value}:", describe_fields(v.Config)]
            if not variants:
                out.append(describe_fields(defense.Config))
            out.append("")
    elif what == "servers":
        from splitpriv.servers import load_plugins

        for name, cls in sorted(load_plugins().items()):
            out += [f"{name}  (--server {name}[:key=value,...])", first_paragraph(cls),
                    describe_fields(cls.Config), ""]
    elif what == "datasets":
        from splitpriv.datasets import DATASETS

        out += _registered(DATASETS, "--dataset")
        out += ["mitdb: the MIT-BIH Arrhythmia Database (PhysioNet mitdb 1.0.0; --mitdb-dir or "
                "$SPLITPRIV_MITDB, else downloaded to the user cache), protocols (--protocol):"]
        out += [f"  {k}: {v}" for k, v in PROTOCOL_WORDS.items()]
        out += ["", "own data: --dataset arrays:path=FILE; --hdf5 TRAIN,TEST (the paper's HDF5 "
                "pair) is arrays:layout=paper,path=TRAIN,test_path=TEST", "",
                "parameters (splitpriv train / data prepare):",
                describe_fields(TrainConfig, only=DATA_FIELDS)]
    else:
        from splitpriv.architectures import MODELS

        out += _registered(MODELS, "--model")
        out += ["or --model MODULE:FUNCTION, FUNCTION(input_shape, n_classes) returning "
                "(client, server) or (client, server, head) torch modules", "",
                "paper: the split 1D CNN (splitpriv.models; splitpriv train flags):",
                describe_fields(ModelConfig),
                describe_fields(TrainConfig, only=("topology", "batch_size", "lr"))]
    return "\n".join(out)


def _registered(registry, flag: str) -> list[str]:
    """Every class of a registry with its summary and its Config's options."""
    from splitpriv.options import describe_fields

    out = []
    for name, cls in sorted(registry.items()):
        out += [f"{name}  ({flag} {name}[:key=value,...]): {cls.summary}",
                describe_fields(cls.Config), ""]
    return out


def cmd_list(args: argparse.Namespace) -> int:
    print(catalog(args.what))
    return 0


def runs_table(paths: Sequence[str], differing: bool = False) -> str:
    """Saved runs as one table, a column per run and a row per field (config, accuracy,
    claims, every attack's headline; ``splitpriv.results.load_runs``); ``differing``: only the
    rows whose values differ between the runs."""
    import math

    from splitpriv.results import load_runs

    df = load_runs(paths)
    if differing and len(df) < 2:
        raise ValueError(f"compare needs two or more runs; {list(paths)} hold {len(df)}")
    table = df.drop(columns=["run_dir"]).set_index("run").T.dropna(how="all")
    if differing:
        same = table.apply(lambda r: len({str(v) for v in r}) == 1, axis=1)
        table = table[~same]

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    return table.map(cell).to_string()


def cmd_show(args: argparse.Namespace) -> int:
    print(runs_table(args.dirs))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    print(runs_table(args.dirs, differing=True))
    return 0
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
    train.add_argument("--config", metavar="CONFIG.json", default=None,
                       help="start from a saved run's config.json (flags given beside it win)")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--force", action="store_true", help="retrain even if DIR holds a run")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--log", choices=("tensorboard",), default=None,
                       help="also write each epoch's metrics and the privacy claims as "
                       "TensorBoard events to DIR/tensorboard/ (needs splitpriv[tracking])")
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

    lst = sub.add_parser("list", help="the registered plug-ins with their parameters and defaults")
    lst.add_argument("what", choices=(*extensions.catalogs(), *CATALOGS))
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="saved runs as one table: config, accuracy, claims, "
                          "every attack's headline")
    show.add_argument("dirs", nargs="+", metavar="DIR",
                      help="run directories, or folders holding runs (a study's output)")
    show.set_defaults(func=cmd_show)
    cmp = sub.add_parser("compare", help="saved runs side by side: only what differs")
    cmp.add_argument("dirs", nargs="+", metavar="DIR",
                     help="run directories, or folders holding runs (a study's output)")
    cmp.set_defaults(func=cmd_compare)
    for extension in extensions.modules():
        extension.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        text = next((t for e in extensions.modules() if (t := e.command_help(argv)) is not None),
                    None)
    except ValueError as exc:  # an unknown plug-in
        print(f"splitpriv: error: {exc}", file=sys.stderr)
        return 2
    if text is not None:
        print(text)
        return 0
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
