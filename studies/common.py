"""What every study shares: typed arguments, the sweep (train, then attack, each run resumable),
results.csv and summary.md, and one figure style.

A study is a list of :class:`Planned` runs. :func:`sweep` trains each one with
``splitpriv.run.run_training`` (a finished run directory is skipped, a killed one resumes from its
last completed epoch), runs the requested attacks through ``attacks.cli.run_attack`` (an attack
whose RUN/attacks/NAME.json already exists for the same run and options is read, not rerun) and
returns one flat row per run. Every file is written atomically (``splitpriv.io``).

Figures use the Okabe-Ito colour-blind-safe palette and are saved as vector PDF and PNG, each with
a caption file beside it (NAME.txt) and all captions collected in FIGURES/captions.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from attacks.audit import audit_columns
from attacks.base import AttackBudget, AttackInputError
from splitpriv.defense import PrivacyClaim
from splitpriv.executor import Executor, TaskFailed
from splitpriv.io import atomic_path, read_json, write_text
from splitpriv.options import format_spec, format_value, parse_dataclass_args, parse_spec
from splitpriv.run import TrainConfig, run_training

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Arguments: a dataclass whose fields carry a docstring becomes an argparse parser
# ---------------------------------------------------------------------------------------------


def parse_args(cls: type[T], argv: Sequence[str] | None = None, *,
               quick: dict[str, Any] | None = None, description: str | None = None) -> T:
    """A study's arguments from the command line (see ``splitpriv.options``)."""
    return parse_dataclass_args(cls, argv, description, quick=quick)


def seed_everything(seed: int, threads: int | None) -> None:
    """Seed Python, NumPy and torch; set torch's thread count (None: leave it)."""
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# The sweep: train, attack, flatten into a row
# ---------------------------------------------------------------------------------------------


def check_study_numbers(args: StudyArgs) -> None:
    """Refuse, before anything trains, the numbers of a study that would fail (or hang) later:
    torch threads beyond what a run takes, a non-positive attack budget, a malformed ``--aux``."""
    from attacks.runs import check_aux_spec
    from splitpriv.run.config import MAX_THREADS

    if not 1 <= args.threads <= MAX_THREADS:
        raise ValueError(f"threads must be in 1..{MAX_THREADS}, got {args.threads}")
    for f in dataclasses.fields(args.budget):
        value = getattr(args.budget, f.name)
        least = {"reference_epochs": 0, "enrol_beats": 2}.get(f.name, 1)
        if isinstance(value, int) and value < least:
            raise ValueError(f"{f.name} must be >= {least}, got {value}")
    check_aux_spec(args.budget.aux)


@dataclass
class StudyArgs:
    """Arguments every study takes (a study's own Args derive from it). The defaults are the
    full budget; ``--quick`` replaces those of :data:`QUICK` not given on the command line."""

    out: str = ""
    """output folder (default: studies/out/STUDY, or studies/out/STUDY-quick with --quick)"""
    quick: bool = False
    """smoke budget: 1 seed, 4 epochs, 3,000 training and 1,000 test beats, small attacks"""
    seeds: int = 3
    """seeds per setting"""
    seed: int = 0
    """first seed (runs use seed, seed+1, ...); also seeds the attacks"""
    epochs: int = 30
    """training epochs of every run (formal DP budgets cover exactly these epochs)"""
    protocol: str = "paper-unique"
    """data protocol (paper-unique: no train/test copies, validation-selected test accuracy)"""
    dataset: str = "mitdb"
    """the data, NAME[:key=value,...] (splitpriv.datasets: mitdb, mitdb:leads=2, digits,
    arrays:path=FILE); --protocol applies to mitdb only"""
    model: str = "paper"
    """the split network, NAME[:key=value,...] or MODULE:FUNCTION (splitpriv.architectures:
    paper, cnn1d, cnn2d); a setting of the paper model's depth uses the model's own depth
    option, one it has no option for is dropped (the summary says which)"""
    train_subset: int | None = None
    """use only the first N training beats (None: all)"""
    test_subset: int | None = None
    """use only the first N test beats (None: all)"""
    budget: AttackBudget = field(default_factory=AttackBudget)
    """how hard each attack works (its fields are flags of their own: --dcor-victims ...)"""
    execution: Executor = field(default_factory=Executor)
    """where the runs go (flags of their own: --executor local|ray, --jobs N (0: one per core,
    each worker one torch thread), --address for a Ray cluster)"""
    mitdb_dir: str | None = None
    """MIT-BIH records (None: $SPLITPRIV_MITDB or the user cache)"""
    cache_dir: str | None = None
    """beat-pool cache folder (None: the user cache)"""
    device: str = "cpu"
    """torch device of training"""
    threads: int = 1
    """torch threads (one is fastest for these small tensors on a busy host)"""
    progress: bool = True
    """progress bars over runs and epochs"""
    batched: bool = True
    """train the seeds of an undefended setting together as one stacked model
    (splitpriv.batched; equal to one-by-one runs up to float rounding, which grows over epochs)"""
    utility: str = "test_accuracy"
    """utility axis of the trade-off figures: test_accuracy, test_macro_f1 or
    test_balanced_accuracy (all at the validation-selected epoch)"""

    def __post_init__(self) -> None:
        self.dropped: dict[str, str] = {}
        """settings a plan dropped (name -> why): see :meth:`architecture`"""
        if self.seeds < 1:  # no run would be planned: an empty results.csv, or an IndexError
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        check_study_numbers(self)
        default = {f.name: f.default for f in dataclasses.fields(self)}["protocol"]
        if not self.on_mitdb and self.protocol != default:
            raise ValueError(f"--protocol applies to --dataset mitdb only; {self.dataset!r} "
                             f"splits itself (its options in --dataset), got {self.protocol!r}")
        if self.utility not in UTILITIES:
            raise ValueError(f"utility must be one of {sorted(UTILITIES)}, got {self.utility!r}")

    def out_dir(self, study: str) -> Path:
        """``--out``, else studies/out/STUDY[-quick], with the dataset and the model in the name
        where they are not the defaults (studies/out/depth-quick-digits-cnn2d): a run directory
        belongs to one configuration."""
        if self.out:
            return Path(self.out)
        name = f"{study}-quick" if self.quick else study
        if (self.dataset, self.model) != ("mitdb", "paper"):
            name += "-" + re.sub(r"[^A-Za-z0-9.=_]+", "-", f"{self.dataset}-{self.model}")
        return REPO_ROOT / "studies" / "out" / name

    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    @property
    def on_mitdb(self) -> bool:
        """Whether the study runs on MIT-BIH (``--protocol`` applies; other datasets split
        themselves, their options in ``--dataset``)."""
        return dataset_name(self.dataset) == "mitdb"

    def train_config(self, **kw: Any) -> TrainConfig:
        """A TrainConfig with the study's common fields: the labels that crossed in the last
        epoch and the release log (every training release, ``record_releases=windows``) are
        recorded, what the server holds for the attacks (a study asks for more itself). The
        protocol is passed on MIT-BIH only."""
        base = dict(protocol=self.protocol, epochs=self.epochs, train_subset=self.train_subset,
                    test_subset=self.test_subset, record_epochs="last", record_kinds="labels",
                    device=self.device, mitdb_dir=self.mitdb_dir, cache_dir=self.cache_dir,
                    dataset=self.dataset, model=self.model)
        if not self.on_mitdb:
            base.pop("protocol")
        return TrainConfig(**(base | kw))

    def architecture(self, setting: str, **options: Any) -> dict[str, Any] | None:
        """The TrainConfig fields that give setting ``setting`` the paper model's ``depth`` or
        ``cut_channels`` (None values: not set) on the study's ``--model``: the paper's run
        fields, else the model's own option of that name (``cnn1d:depth=4``); None where the
        model has no such option: the setting is dropped, and why is recorded in
        :attr:`dropped` for the summary and the captions (:func:`dropped_text`)."""
        options = {k: v for k, v in options.items() if v is not None}
        if self.model == "paper":
            return options
        cls, config = model_config(self.model)
        names = {f.name for f in dataclasses.fields(config)} if config is not None else set()
        paper = TrainConfig()  # the paper model's defaults mean "the model as given" elsewhere
        missing = sorted(k for k, v in options.items()
                         if k not in names and v != getattr(paper, k))
        if missing:
            what = "a user function" if cls is None else f"model {self.model!r}"
            self.dropped[setting] = (f"{', '.join(missing)} is the paper model's option and "
                                     f"{what} has no option of that name")
            return None
        name, given = parse_spec(self.model, "model")
        given |= {k: format_value(v) for k, v in options.items()
                  if k in names and (k in given or v != getattr(config, k))}  # defaults implicit
        return {"model": format_spec(name, given)}


def dataset_name(spec: str) -> str:
    """The registry name of a ``--dataset`` spec (``mitdb:leads=2`` -> ``mitdb``)."""
    return spec.partition(":")[0]


def model_config(spec: str) -> tuple[type | None, Any]:
    """A ``--model`` spec's registered class and typed config; (None, None) for a user's
    ``MODULE:FUNCTION`` (its options are its own)."""
    from splitpriv.architectures import MODELS, user_function

    if user_function(spec):
        return None, None
    return MODELS.resolve(spec)


def client_depth(config: TrainConfig) -> int | None:
    """The client's conv layers: the paper model's ``depth``, else the model's own ``depth``
    option (None for a model without one)."""
    if config.model == "paper":
        return config.depth
    _, options = model_config(config.model)
    return getattr(options, "depth", None)


def dropped_text(dropped: Mapping[str, str]) -> str:
    """One sentence naming the settings a plan dropped for the model and why ('' for none)."""
    if not dropped:
        return ""
    why: dict[str, list[str]] = {}
    for name, reason in dropped.items():
        why.setdefault(reason, []).append(name)
    return "Settings dropped: " + "; ".join(
        f"{', '.join(names)} ({reason})" for reason, names in why.items()) + "."


# ---------------------------------------------------------------------------------------------
# What the runs are: budget, seeds and what an interval is over, read from the rows themselves
# ---------------------------------------------------------------------------------------------


def setting_of(row: Mapping[str, Any]) -> str:
    """The setting a row belongs to: its run directory's name without the seed suffix
    (``paper-eps3-s0`` -> ``paper-eps3``; every study names its runs ``SETTING-sSEED``)."""
    return re.sub(r"-s\d+$", "", Path(str(row.get("run_dir", ""))).name)


def seeds_per_setting(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Per setting (:func:`setting_of`), the distinct seeds its runs were trained with."""
    out: dict[str, set[int]] = {}
    for r in rows:
        out.setdefault(setting_of(r), set()).add(int(float(r["seed"])))
    return {k: sorted(v) for k, v in out.items()}


def _seed_list(seeds: Iterable[int]) -> str:
    seeds = sorted(set(seeds))
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def seeds_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """How many seeds each setting has, counted from the runs: "3 seeds per setting (seeds 0,
    1, 2)", "1 seed per setting (seed 0)", "1 to 3 seeds per setting (seeds 0, 1, 2)"."""
    per = seeds_per_setting(rows)
    counts = sorted({len(s) for s in per.values()})
    every = _seed_list(s for ss in per.values() for s in ss)
    if not counts:
        return "no runs"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return f"{n} seed{'' if n == '1' else 's'} per setting ({every})"


def interval_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """What a cell's "±" and a figure's error bar are over, counted from the runs: "mean ± sd
    over 3 seeds per setting (seeds 0, 1, 2)", or "1 seed per setting (seed 0): single runs, no
    interval", or, when settings differ, how many each has."""
    per = seeds_per_setting(rows)
    if not per:
        return "no runs"
    counts = sorted({len(s) for s in per.values()})
    if counts == [1]:
        return f"{seeds_text(rows)}: single runs, no interval"
    if len(counts) == 1:
        return f"mean ± sd over {seeds_text(rows)}"
    single = sum(len(s) == 1 for s in per.values())
    return (f"mean ± sd over each setting's seeds ({seeds_text(rows)}; the {single} "
            "setting(s) with 1 seed: single runs, no interval)")


def interval_sentence(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`interval_text` as a sentence of a summary or caption."""
    text = interval_text(rows)
    return text[0].upper() + text[1:] + "."


def _run_value(row: Mapping[str, Any], key: str) -> Any:
    """``key`` of a row's run: its column, else the run's config.json (older results.csv)."""
    if key in row and row[key] != "":
        return row[key]
    path = Path(str(row.get("run_dir", ""))) / "config.json"
    return read_json(path).get(key) if path.is_file() else None


def budget_text(rows: Sequence[Mapping[str, Any]], quick: bool = False) -> str:
    """The training budget of the runs in words, for summaries and captions, every part read
    from the rows (and their runs' config.json): protocol, epochs, beats, seeds per setting
    (:func:`interval_text` says what an interval is over)."""
    def values(key: str) -> str:
        seen = dict.fromkeys(format_value(_num(_run_value(r, key))) for r in rows)
        return " or ".join("all" if v in ("none", "nan") else v for v in seen)

    tag = " (QUICK smoke budget)" if quick else ""
    return (f"{data_text(rows)}, {values('epochs')} epochs, train subset "
            f"{values('train_subset')}, test subset {values('test_subset')}, {len(rows)} runs, "
            f"{seeds_text(rows)}{tag}")


def data_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The dataset (with its protocol on MIT-BIH) and the model of the rows' runs, read from
    their config.json (runs written before the fields existed: MIT-BIH, the paper's model)."""
    def data(row: Mapping[str, Any]) -> str:
        dataset = _run_value(row, "dataset") or "mitdb"
        protocol = f" {_run_value(row, 'protocol')}" if dataset_name(dataset) == "mitdb" else ""
        return dataset + protocol

    def model(row: Mapping[str, Any]) -> str:
        """The model spec without its depth (the settings' depth is a column of its own)."""
        spec = _run_value(row, "model") or "paper"
        if model_config(spec)[0] is None:
            return spec
        name, options = parse_spec(spec, "model")
        options.pop("depth", None)
        return format_spec(name, options)

    return (f"data {' or '.join(dict.fromkeys(map(data, rows)))}, "
            f"model {' or '.join(dict.fromkeys(map(model, rows)))}")


def rows_on_mitdb(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every run of the rows trained on MIT-BIH (runs before ``dataset`` existed did)."""
    return all(dataset_name(_run_value(r, "dataset") or "mitdb") == "mitdb" for r in rows)


def paper_setup(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every run of the rows is MIT-BIH on the paper's model: where the published
    numbers (``splitpriv.published``) compare."""
    return rows_on_mitdb(rows) and all((_run_value(r, "model") or "paper") == "paper"
                                       for r in rows)


def _num(v: Any) -> Any:
    """A CSV number back to an int where it is one (``30.0`` -> 30), else as it is."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


#: what --quick changes (fields given on the command line win)
QUICK: dict[str, Any] = dict(seeds=1, epochs=4, train_subset=3000, test_subset=1000,
                             dcor_victims=500, dtw_victims=200, decoder_epochs=10,
                             decoder_victims=300, reference_epochs=0, enrol_beats=10)


@dataclass
class Planned:
    """One run of a study: its directory name (with the seed), its config, the study's own
    columns (mode, epsilon, defense...) and the attacks to run on it."""

    name: str
    config: TrainConfig
    labels: dict[str, Any]
    """the study's own columns, typed (an epsilon is a float, None for no defense)"""
    attacks: tuple[str, ...] = ("dcor", "dtw", "strongest", "identity")
    """the attacks run on it: the leakage measures, the strongest attack (its
    re-identification is the studies' privacy axis) and identity inference (which patient)"""


def only_settings(settings: list[Any], only: Sequence[str] | None) -> list[Any]:
    """The settings ``--only`` names (each with a ``name``), all when it names none.

    Raises:
        ValueError: ``--only`` names a setting the study does not have, listing those it has.
    """
    if not only:
        return settings
    known = [s.name for s in settings]
    unknown = set(only) - set(known)
    if unknown:
        raise ValueError(f"--only: unknown settings {sorted(unknown)}; known: {known}")
    return [s for s in settings if s.name in only]


def attack_done(path: Path, epochs: int, options: dict[str, Any]) -> bool:
    """Whether RUN/attacks/NAME.json holds this attack on these weights with these options."""
    if not path.exists():
        return False
    doc = read_json(path)
    if doc.get("summary", {}).get("run", {}).get("epochs") != epochs:
        return False  # the run was trained further since
    config = doc.get("config", {})
    return all(config[k] == v for k, v in options.items() if k in config)


def run_attacks(run_dir: Path, names: Iterable[str], budget: AttackBudget, epochs: int, *,
                seed: int = 0, threads: int | None = 1) -> dict[str, dict[str, Any]]:
    """Each attack's summary on one run, with the options its class derives from ``budget``
    (``Attack.study_options``) and the aux set when it uses one; an attack whose JSON is already
    there for these options is read, not rerun. An attack that cannot apply to the run (an
    ``AttackInputError``: identity where too few patients have enrolment beats) says so in one
    line and is left out (its columns NaN)."""
    from attacks.cli import run_attack
    from attacks.registry import ATTACKS, load_builtin

    load_builtin()
    out = {}
    for name in names:
        cls = ATTACKS[name]
        path = run_dir / "attacks" / f"{name}.json"
        options = {"seed": seed, "threads": threads, **cls.study_options(budget)}
        if not attack_done(path, epochs, options):
            try:
                run_attack(name, run_dir, budget.aux if cls.needs_aux() else None, dict(options))
            except AttackInputError as exc:  # it cannot apply to this run: NaN columns
                print(f"{run_dir.name}: {name} skipped: {exc}", file=sys.stderr)
                continue
        out[name] = read_json(path)["summary"]
    return out


def privacy_columns(result: dict[str, Any]) -> dict[str, float]:
    """The run's formal privacy claim, from result.json's defenses read as
    :class:`~splitpriv.defense.PrivacyClaim`: its accounted epsilon and noise multiplier (the last
    formal claim; NaN without one)."""
    formal = [c for c in map(PrivacyClaim.from_dict, result.get("defenses", [])) if c.formal]
    if not formal:
        return {"accounted_epsilon": math.nan, "noise_multiplier": math.nan,
                "patient_epsilon": math.nan, "patient_delta": math.nan,
                "largest_patient": math.nan}
    claim = formal[-1]
    sigma = claim.details.get("noise_multiplier")
    # its patient-level consequence (group privacy over the largest patient's beats), or the
    # claim itself where its unit is the patient (splitpriv.defense.patient_level)
    level = claim.details.get("patient_level") or {}
    patient_eps = claim.epsilon if claim.per_patient else level.get("epsilon")
    patient_delta = claim.delta if claim.per_patient else (
        math.inf if level.get("vacuous") else level.get("delta"))
    return {"accounted_epsilon": math.nan if claim.epsilon is None else float(claim.epsilon),
            "noise_multiplier": math.nan if sigma is None else float(sigma),
            "patient_epsilon": math.nan if patient_eps is None else float(patient_eps),
            "patient_delta": math.nan if patient_delta is None else float(patient_delta),
            "largest_patient": level.get("largest_patient", math.nan)}


def claim_scope(result: dict[str, Any]) -> str:
    """What the run's formal privacy claims cover, in words, from result.json's
    :class:`~splitpriv.defense.PrivacyClaim` scopes and the topology: e.g. "activation releases
    of each training beat; client weights not private; labels in the clear" (formal activation DP
    alone), "end-to-end: ..." where a claim composes the activation releases with private client
    weights (DP + DP-SGD), "no formal claim" without one."""
    claims = [PrivacyClaim.from_dict(c) for c in result.get("defenses", [])]
    formal = [c for c in claims if c.formal]
    if not formal:
        return "no formal claim"
    scopes = [c.scope or c.name for c in formal]
    combined = any(isinstance(v, dict) and v.get("epsilon") is not None
                   for c in formal for k, v in c.details.items() if k.startswith("combined_with"))
    parts = [("end-to-end: " if combined else "") + " + ".join(scopes)]
    if not any(s.startswith("client weights") for s in scopes):
        parts.append("client weights not private")
    if not any("activation" in s for s in scopes):
        parts.append("a beat's own activation releases not covered")
    parts.append("labels stay on the client (no formal guarantee)"
                 if result.get("topology") == "ushape" else "labels in the clear")
    return "; ".join(parts)


def attack_columns(summaries: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """The flat leakage columns of a row: each attack's ``columns`` of its summary (None: not run,
    NaN columns); a numeric column several attacks report keeps the highest finite value, a
    named one (``strongest_attack``) the first name."""
    from attacks.registry import ATTACKS, load_builtin

    load_builtin()
    cols: dict[str, Any] = {}
    for name, summary in summaries.items():
        for col, value in ATTACKS[name].columns(summary).items():
            old = cols.get(col, math.nan)
            if isinstance(old, str) or isinstance(value, str):
                cols[col] = old if isinstance(old, str) else value
                continue
            finite = [v for v in (old, value) if not math.isnan(v)]
            cols[col] = max(finite, default=math.nan)
    return cols


def attack_column_names(names: Iterable[str]) -> list[str]:
    """The results.csv columns the attacks ``names`` report (``Attack.columns``), in order."""
    from attacks.registry import ATTACKS, load_builtin

    load_builtin()
    return list(dict.fromkeys(col for name in names for col in ATTACKS[name].columns(None)))


def batch_groups(plan: Sequence[Planned]) -> list[list[Planned]]:
    """The runs of ``plan`` that train together as one stacked model (``splitpriv.batched``):
    groups of two or more with the same ``batch_key`` (the same architecture and defense kinds;
    seeds and defense parameters such as epsilon or alpha may differ)."""
    from splitpriv.batched import batch_key

    groups: dict[str, list[Planned]] = {}
    for p in plan:
        key = batch_key(p.config)
        if key is not None:
            groups.setdefault(key, []).append(p)
    return [ps for ps in groups.values() if len(ps) > 1]


@dataclass
class RunTask:
    """One unit of a sweep's work, picklable for a worker: train the run (or find it finished)
    and attack it; :func:`run_task` returns its row."""

    planned: Planned
    out: Path
    budget: AttackBudget
    study: str
    every_attack: tuple[str, ...]
    seed: int = 0
    threads: int | None = 1
    progress: bool = True


def train_group(task: tuple[Sequence[TrainConfig], Sequence[Path], bool]) -> None:
    """Train one stacked group; what is finished is skipped and a killed run resumes alone
    (see ``run_training_batched``)."""
    from splitpriv.batched import run_training_batched

    configs, dirs, progress = task
    run_training_batched(list(configs), list(dirs), progress=progress)


def run_group(tasks: Sequence[RunTask]) -> list[dict[str, Any]]:
    """One unit of a sweep: a stacked group trained together (or a single run), then each of its
    runs attacked; their rows, in order."""
    if len(tasks) > 1:
        t = tasks[0]
        train_group(([r.planned.config for r in tasks],
                     [r.out / "runs" / r.planned.name for r in tasks], t.progress))
    return [run_task(t) for t in tasks]


#: run-epochs of training that one run's attacks cost at the study budget, about (for ordering)
ATTACK_EPOCHS = 15
#: a stacked group of K runs costs about this times K separate runs (benchmarks/speed.py)
STACKED_SHARE = 0.65


def estimated_cost(configs: Sequence[TrainConfig]) -> float:
    """A rough cost of training (stacked when more than one) and attacking ``configs``, in
    undefended run-epochs on all rows: only to start the longest work first, so that the last
    tasks of a sweep are short and no core waits long for the others (the measured epoch
    costs: a depth-d client about 1 + 0.35 (d - 2) times the 2-conv one, client DP-SGD 2.5x,
    NoPeek 1.3x)."""
    def one(c: TrainConfig) -> float:
        factor = 1 + 0.35 * (c.depth - 2)
        for spec in c.defenses:
            factor *= {"dpsgd": 2.5, "nopeek": 1.3}.get(spec.name, 1.0)
        rows = min(c.train_subset or 12_000, 12_000) / 12_000
        return c.epochs * rows * factor

    share = STACKED_SHARE if len(configs) > 1 else 1.0
    return share * sum(one(c) for c in configs) + ATTACK_EPOCHS * len(configs)


def run_task(task: RunTask) -> dict[str, Any]:
    """Train and attack one planned run (each resumable); its flat row."""
    p, run_dir = task.planned, task.out / "runs" / task.planned.name
    t0 = time.perf_counter()
    result = run_training(p.config, run_dir, progress=task.progress)
    summaries = run_attacks(run_dir, p.attacks, task.budget, p.config.epochs, seed=task.seed,
                            threads=task.threads)
    return {
        "study": task.study, **p.labels, "seed": p.config.seed, "protocol": p.config.protocol,
        "depth": client_depth(p.config), "topology": result["topology"], "epochs": p.config.epochs,
        "defenses": "+".join(map(str, p.config.defenses)) or "none",
        "test_accuracy": result["test_accuracy"],
        # per-class measures at the selected epoch (NaN for runs written before they existed)
        "test_macro_f1": result.get("test_macro_f1", math.nan),
        "test_balanced_accuracy": result.get("test_balanced_accuracy", math.nan),
        "best_test_accuracy": result["best_test_accuracy"],
        "final_test_accuracy": result["final_test_accuracy"],
        **attack_columns({a: summaries.get(a) for a in task.every_attack}),
        **privacy_columns(result), "claim_scope": claim_scope(result),
        "majority_class_accuracy": majority_class_accuracy(result),
        "train_subset": p.config.train_subset, "test_subset": p.config.test_subset,
        **audit_columns(summaries.get("strongest"), result),  # attacks/audit.py
        "train_seconds": result["seconds"], "wall_seconds": time.perf_counter() - t0,
        "run_dir": str(run_dir),
    }


def sweep(plan: Sequence[Planned], out: Path, budget: AttackBudget, *, study: str,
          seed: int = 0, threads: int | None = 1, progress: bool = True,
          batched: bool = True, executor: Executor | None = None) -> list[dict[str, Any]]:
    """Train and attack every planned run (resumable); one flat row per run, in plan order, with
    the columns of every attack of the plan (NaN where a run skipped one). The attacks are seeded
    by ``seed``. ``executor`` says where the work runs (default: here); each task is a stacked
    group (trained together, then each run attacked) or a single run (trained, attacked; a
    finished one is read), the longest first (:func:`estimated_cost`)."""
    if len({p.name for p in plan}) != len(plan):
        raise ValueError(f"{study}: two planned runs share a name")
    with executor or Executor(jobs=1) as run:
        return _sweep(plan, out, budget, study, seed, threads, progress, batched, run)


def _sweep(plan, out, budget, study, seed, threads, progress, batched, executor):
    groups = batch_groups(plan) if batched else []
    stacked = {p.name for ps in groups for p in ps}
    units = groups + [[p] for p in plan if p.name not in stacked]
    units.sort(key=lambda ps: -estimated_cost([p.config for p in ps]))  # longest first
    parallel = executor.parallel(len(units))
    inner = progress and not parallel
    every_attack = tuple(dict.fromkeys(a for p in plan for a in p.attacks))
    work = [[RunTask(p, out, budget, study, every_attack, seed, threads, inner) for p in ps]
            for ps in units]
    names = [ps[0].name if len(ps) == 1 else f"{ps[0].name} (+{len(ps) - 1} stacked)"
             for ps in units]
    prepare_pools(plan, progress)
    runs = [(out / "runs" / p.name, p.config.epochs) for p in plan]
    with EpochWatcher(runs, f"{study}: epochs", enabled=progress and parallel):
        done = executor.map(run_group, work, names=names, threads=threads,
                            desc=f"{study}: tasks", progress=progress)
    rows = {row["run_dir"]: row for rows in done for row in rows}
    return [rows[str(out / "runs" / p.name)] for p in plan]


def prepare_pools(plan: Sequence[Planned], progress: bool) -> None:
    """Build (or find cached) the beat pool of every protocol and label scheme the plan uses,
    here and once, with a bar over the records while building: the workers then read the cache
    instead of each building it in silence."""
    from splitpriv.data import load_pool, protocol_prep

    seen = set()
    for p in plan:
        c = p.config
        key = (c.protocol, c.labels, c.mitdb_dir, c.cache_dir)
        if c.hdf5 is None and dataset_name(c.dataset) == "mitdb" and key not in seen:
            seen.add(key)
            load_pool(c.mitdb_dir, cache_dir=c.cache_dir, prep=protocol_prep(c.protocol, c.labels),
                      progress=progress)


class EpochWatcher:
    """A bar over the training epochs of a sweep's runs while workers train them (their own bars
    are off): every ``interval`` seconds it counts the epochs each run directory's metrics.jsonl
    holds (one line per finished epoch, written by every run, stacked or not) and the runs
    finished (result.json), so the bar moves with every epoch of every worker: runs done, epochs
    done, tqdm's rate and ETA. Epochs finished before the sweep started count from the start,
    not in the rate."""

    def __init__(self, runs: Sequence[tuple[Path, int]], desc: str, *, enabled: bool = True,
                 interval: float = 2.0) -> None:
        self.runs, self.desc, self.enabled, self.interval = list(runs), desc, enabled, interval
        self.bar: Any = None
        self._stop: Any = None
        self._thread: Any = None

    def counts(self) -> tuple[int, int]:
        """(epochs done, runs finished) over the runs, read from their directories."""
        epochs = finished = 0
        for path, planned in self.runs:
            try:
                lines = (path / "metrics.jsonl").read_text().splitlines()
            except OSError:  # not started yet (or being replaced)
                lines = []
            epochs += min(sum(1 for ln in lines if ln.strip()), planned)
            finished += (path / "result.json").is_file()
        return epochs, finished

    def poll(self) -> None:
        """Move the bar to what the run directories hold now."""
        epochs, finished = self.counts()
        self.bar.update(epochs - self.bar.n)
        self.bar.set_postfix_str(f"runs {finished}/{len(self.runs)}", refresh=False)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> EpochWatcher:
        if not self.enabled:
            return self
        import threading

        from tqdm.auto import tqdm

        epochs, _ = self.counts()
        self.bar = tqdm(total=sum(e for _, e in self.runs), initial=epochs, desc=self.desc,
                        unit="epoch", position=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is None:
            return
        self._stop.set()
        self._thread.join()
        self.poll()
        self.bar.close()


#: the studies' privacy axis: the strongest re-identification's advantage among 10 same-class
#: candidates, (accuracy - chance) / (1 - chance), the larger of the two games (across patients:
#: candidates from every patient; within patient: from the victim's own record); 0 = chance
#: (nothing re-identified), 1 = every victim picked out. The strongest attack is chosen on the
#: attacker's held-out beats among the inversions and the activation-space matchers, each
#: combining a beat's releases as it chooses (``attacks.strongest``)
PRIVACY_AXIS = "privacy_k10_advantage"
PRIVACY_AXIS_LABEL = ("re-identification advantage, k = 10\n(strongest attack, larger of "
                      "across/within patient; 0 = chance)")
#: the re-identification and inversion columns a study table shows beside the privacy axis
INVERSION_TABLE = ("privacy_k10_advantage", "privacy_k100_advantage", "reid_k10_advantage",
                   "reid_k100_advantage", "reid_within_k10_advantage",
                   "reid_within_k100_advantage", "reid_releases", "linkage_k10_advantage",
                   "linkage_k100_advantage", "inversion_pearson_r", "inversion_prdn",
                   "prior_mean_beat_pearson_r", "prior_class_mean_pearson_r", "identity_top1",
                   "identity_chance")
#: the text columns naming the winners (re-identification, then inversion)
ATTACK_TEXTS = ("reid_attack", "reid_within_attack", "strongest_attack")
#: a study table's re-identification and inversion header cells (:func:`reid_cells`)
REID_HEADER = ("re-id adv. k10 / k100, across patients", "within patient",
               "re-id attack (releases / beat)", "identity top-1, 1 beat (chance 1/N)",
               "inversion adv. k10 (attack)", "inversion r")
#: what the identity cell is, for a study's summary text
IDENTITY_TEXT = ("Identity (attacks/identity.py): the server names the patient of one beat's "
                 "activations among the N training patients it enrolled from the first 30% of "
                 "their records (closed set, top-1; chance 1/N in brackets; - where fewer than "
                 "two patients had enough enrolment beats, --enrol-beats).")


def identity_cell(s: dict[str, Any]) -> str:
    """An aggregated setting's identity top-1 from one beat with its chance in brackets; "-"
    where identity was not computed."""
    return f"{s['identity_top1']} ({s['identity_chance']})" if s["identity_top1"].n else "-"


def reid_cells(s: dict[str, Any]) -> list[str]:
    """An aggregated setting's cells under :data:`REID_HEADER`: the strongest
    re-identification across patients and within patient (k = 10 / 100), its attacks and the
    releases per beat the across winner combined, identity's top-1 from one beat (chance), the
    strongest inversion's own linkage and its median r."""
    attacks = s["reid_attack"] + (f" / within: {s['reid_within_attack']}"
                                  if s["reid_within_attack"] != s["reid_attack"] else "")
    return [f"{s['reid_k10_advantage']} / {s['reid_k100_advantage']}",
            f"{s['reid_within_k10_advantage']} / {s['reid_within_k100_advantage']}",
            f"{attacks} ({s['reid_releases']})",
            identity_cell(s),
            f"{s['linkage_k10_advantage']} ({s['strongest_attack']})",
            str(s["inversion_pearson_r"])]

# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as CSV with ``columns`` first, then any other key; values as
    :func:`~splitpriv.options.format_value` writes them (floats in full precision, ``3.0`` as
    ``3``, None as ``none``), NaN as ``nan``."""
    columns = list(dict.fromkeys(columns))
    extra = [k for r in rows for k in r if k not in columns]
    header = columns + list(dict.fromkeys(extra))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else format_value(v))
                    for k, v in r.items()})
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.csv, numbers parsed back into floats where they parse."""
    def value(s: str) -> Any:
        try:
            return float(s)
        except ValueError:
            return s

    with open(path, newline="") as fh:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(fh)]


@dataclass
class Stat:
    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "-"
        digits = 2 if abs(self.mean) >= 10 else 3 if abs(self.mean) >= 1 else 4
        return f"{self.mean:.{digits}f}" + (f" ± {self.sd:.{digits}f}" if self.n > 1 else "")


def stat(values: Iterable[float]) -> Stat:
    """Mean and sample standard deviation of the finite values."""
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))


def group(rows: Sequence[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by the values of ``keys``, in first-seen order."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def aggregate(rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str],
              texts: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One dict per setting (the values of ``keys``): those values, ``n``, a :class:`Stat`
    (mean, sd over seeds) per metric and, per text column (``strongest_attack``,
    ``claim_scope``), its distinct values over the seeds joined by " or "."""
    out = []
    for k, rs in group(rows, *keys).items():
        stats = {m: stat(r.get(m) for r in rs) for m in metrics}
        words = {t: " or ".join(dict.fromkeys(str(r[t]) for r in rs
                                             if isinstance(r.get(t), str) and r[t])) or "-"
                 for t in texts}
        out.append({**dict(zip(keys, k, strict=True)), "n": len(rs), **stats, **words})
    return out


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pareto_front(leakage: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower leakage and higher accuracy), by
    increasing leakage."""
    pts = [(x, y, i) for i, (x, y) in enumerate(zip(leakage, accuracy, strict=True))
           if math.isfinite(x) and math.isfinite(y)]
    front, best = [], -math.inf
    for _x, y, i in sorted(pts, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append(i)
            best = y
    return front


def epsilon_label(eps: float | None) -> str:
    return "none" if eps is None else f"{eps:g}"


def parse_epsilon(s: Any) -> float | None:
    """An epsilon from an argument or a CSV cell: a number, or ``none`` (no defense)."""
    if s is None or (isinstance(s, str) and s.strip().lower() in ("none", "inf", "")):
        return None
    v = float(s)
    return None if math.isinf(v) else v


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

#: Okabe & Ito (2008), colour-blind-safe; black last
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
             "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]
#: the colour of a group past the palette (a ninth group would otherwise repeat the first)
OVERFLOW_COLOR = "0.55"
STYLE = {
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 9,
    "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.title_fontsize": 8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "lines.linewidth": 1.4, "lines.markersize": 5,
    "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight",
}


def apply_style() -> None:
    """The studies' matplotlib style: Okabe-Ito colour cycle, small fonts, light grid."""
    from cycler import cycler

    plt.rcParams.update(STYLE)
    plt.rcParams["axes.prop_cycle"] = cycler(color=OKABE_ITO)


#: the accuracy columns of every study's results.csv (test numbers at the validation-selected
#: epoch, then the paper's max over epochs and the last epoch's)
ACCURACY_COLUMNS = ["test_accuracy", "test_macro_f1", "test_balanced_accuracy",
                    "best_test_accuracy", "final_test_accuracy"]

#: the trade-off figures' utility axis: a results.csv column and its label (``--utility``)
UTILITIES = {
    "test_accuracy": "test accuracy, val-selected (%)",
    "test_macro_f1": "test macro-F1, val-selected epoch (%)",
    "test_balanced_accuracy": "test balanced accuracy, val-selected epoch (%)",
}


@dataclass
class FigureSet:
    """A folder of figures: each saved as NAME.pdf (vector), NAME.png and NAME.txt (its caption);
    :meth:`write_captions` collects the captions in captions.md."""

    folder: Path
    captions: dict[str, str] = field(default_factory=dict)
    prefix: str = ""
    """prepended to every name (one folder can hold several studies' figures)"""
    utility: str = "test_accuracy"
    """the utility axis of the trade-off figures (a key of :data:`UTILITIES`)"""

    @property
    def utility_label(self) -> str:
        return UTILITIES[self.utility]

    def save(self, fig: plt.Figure, name: str, caption: str) -> Path:
        name = self.prefix + name
        self.folder.mkdir(parents=True, exist_ok=True)
        for ext in ("pdf", "png"):
            with atomic_path(self.folder / f"{name}.{ext}") as tmp:
                fig.savefig(tmp, format=ext)
        plt.close(fig)
        caption = " ".join(caption.split())
        write_text(self.folder / f"{name}.txt", caption + "\n")
        self.captions[name] = caption
        return self.folder / f"{name}.png"

    def write_captions(self) -> None:
        text = "# Figures\n\n" + "".join(
            f"**{name}** (`{name}.pdf`, `{name}.png`): {c}\n\n" for name, c in self.captions.items()
        )
        write_text(self.folder / "captions.md", text)


def epsilon_axis(ax: plt.Axes, epsilons: Sequence[float | None]) -> Callable[[float | None], float]:
    """Put epsilons on a log x axis with ``none`` (no noise) at the right end; returns the
    position function."""
    finite = sorted(e for e in epsilons if e is not None)
    none_at = (finite[-1] * 2.5) if finite else 1.0

    def pos(e: float | None) -> float:
        return none_at if e is None else e

    ax.set_xscale("log")
    ticks = finite + ([none_at] if None in epsilons else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{e:g}" for e in finite] + (["none"] if None in epsilons else []))
    ax.minorticks_off()
    return pos


def plot_tradeoff(ax: plt.Axes, settings: Sequence[dict[str, Any]], *, x: str, y: str,
                  group_key: str, label_key: str, xlabel: str, ylabel: str,
                  annotate: bool = True, colors: Mapping[str, str] | None = None,
                  markers: Mapping[str, str] | None = None) -> list[int]:
    """Accuracy (y) against leakage (x), one marker per setting (its error bars: sd over seeds,
    none for a single run), one colour and marker per group (``colors``, ``markers`` fix them
    so that a quantity keeps its encoding across figures), every setting labelled
    (:func:`annotate_points`) and the Pareto front (lower leakage, higher accuracy) as a dashed
    step line. Returns the indices of the settings on the front."""
    groups = list(dict.fromkeys(s[group_key] for s in settings))
    for gi, g in enumerate(groups):
        pts = [s for s in settings if s[group_key] == g]
        ax.errorbar([p[x].mean for p in pts], [p[y].mean for p in pts],
                    xerr=[p[x].sd for p in pts], yerr=[p[y].sd for p in pts],
                    fmt=(markers or {}).get(g, MARKERS[gi % len(MARKERS)]),
                    color=(colors or {}).get(g, OKABE_ITO[gi] if gi < len(OKABE_ITO)
                                             else OVERFLOW_COLOR),
                    label=str(g), capsize=2, elinewidth=0.8, alpha=0.9,
                    markeredgecolor="0.15", markeredgewidth=0.4,
                    zorder=3 + (len(groups) - gi) / 100)  # the first group (a reference) on top
    front = pareto_front([s[x].mean for s in settings], [s[y].mean for s in settings])
    if front:
        fx = [settings[i][x].mean for i in front]
        fy = [settings[i][y].mean for i in front]
        ax.step(fx, fy, where="post", color="0.4", linestyle="--", linewidth=1,
                label="Pareto front", zorder=1)
    if annotate:
        annotate_points(ax, [s[x].mean for s in settings], [s[y].mean for s in settings],
                        [str(s[label_key]) for s in settings])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return front


#: label offsets tried around a point, in points (nearest first; the far ones get a leader line)
_OFFSETS = [(4, 3), (4, -10), (-4, 3), (-4, -10), (0, 9), (0, -15)] + [
    (round(r * math.cos(a)), round(r * math.sin(a)))
    for r in (18, 30, 44, 60) for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)]


def annotate_points(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float],
                    labels: Sequence[str], fontsize: float = 7) -> None:
    """Label every point, none hidden: each label goes to the first offset (:data:`_OFFSETS`)
    where its box stays inside the axes and overlaps no label already placed and no point, a
    thin leader line joining a label moved away to its point. Labels are placed in order of x
    (ties by y); call after everything else is drawn (the axis limits are fixed here)."""
    fig = ax.figure
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    to_px = fig.dpi / 72
    pts = [(px, py, lab) for px, py, lab in zip(xs, ys, labels, strict=True)
           if math.isfinite(px) and math.isfinite(py)]
    centres = [ax.transData.transform((px, py)) for px, py, _ in pts]
    boxes: list[tuple[float, float, float, float]] = [
        (cx - 3 * to_px, cy - 3 * to_px, cx + 3 * to_px, cy + 3 * to_px) for cx, cy in centres]

    frame = ax.get_window_extent()

    def free(b: tuple[float, float, float, float]) -> bool:
        inside = (b[0] >= frame.x0 and b[2] <= frame.x1 and b[1] >= frame.y0
                  and b[3] <= frame.y1)
        return inside and all(b[2] <= o[0] or b[0] >= o[2] or b[3] <= o[1] or b[1] >= o[3]
                              for o in boxes)

    order = sorted(range(len(pts)), key=lambda i: (centres[i][0], centres[i][1]))
    for i in order:
        px, py, text = pts[i]
        cx, cy = centres[i]
        w, h = 0.62 * fontsize * len(text) * to_px, 1.25 * fontsize * to_px
        for dx, dy in _OFFSETS:
            x0 = cx + dx * to_px - (w if dx < 0 else 0 if dx > 0 else w / 2)
            y0 = cy + dy * to_px
            box = (x0, y0, x0 + w, y0 + h)
            if free(box):
                break
        else:  # nowhere free inside the axes: the nearest offset
            dx, dy = _OFFSETS[0]
            box = (cx + dx * to_px, cy + dy * to_px, cx + dx * to_px + w, cy + dy * to_px + h)
        boxes.append(box)
        far = abs(dx) > 8 or abs(dy) > 15
        ha = "right" if dx < 0 else "left" if dx > 0 else "center"
        ax.annotate(text, (px, py), xytext=(dx, dy), textcoords="offset points",
                    fontsize=fontsize, ha=ha, va="bottom", zorder=4,
                    arrowprops=dict(arrowstyle="-", color="0.5", linewidth=0.5,
                                    shrinkA=0, shrinkB=2) if far else None)


def legend_outside(fig: plt.Figure, axes: Sequence[plt.Axes] | plt.Axes,
                   title: str | None = None, ncols: int = 1) -> None:
    """One legend for ``axes`` outside them, on the right of the figure (constrained layout),
    at a readable size, each label once."""
    seen: dict[str, Any] = {}
    for ax in np.atleast_1d(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside right upper", fontsize=8,
               title=title, title_fontsize=8, ncols=ncols, frameon=False)


def chance_accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    """The accuracy of always guessing the test set's majority class (%), from the rows'
    ``majority_class_accuracy`` (else the runs' result.json); NaN when neither tells."""
    values = set()
    for r in rows:
        v = r.get("majority_class_accuracy")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            path = Path(str(r.get("run_dir", ""))) / "result.json"
            v = majority_class_accuracy(read_json(path)) if path.is_file() else math.nan
        if math.isfinite(v):
            values.add(round(float(v), 6))
    return values.pop() if len(values) == 1 else math.nan


def majority_class_accuracy(result: Mapping[str, Any]) -> float:
    """A run's chance accuracy (%): its test set's largest class over its size (result.json's
    per-class support); NaN for a result without it."""
    per = (result.get("test_metrics") or {}).get("per_class") or {}
    support = [c.get("support", 0) for c in per.values()]
    return 100 * max(support) / sum(support) if support and sum(support) else math.nan


def chance_line(ax: plt.Axes, rows: Sequence[Mapping[str, Any]], vertical: bool = False
                ) -> None:
    """The majority-class guess as a labelled dotted line (nothing where the runs differ)."""
    chance = chance_accuracy(rows)
    if math.isfinite(chance):
        draw = ax.axvline if vertical else ax.axhline
        draw(chance, color="0.45", linewidth=0.8, linestyle=":",
             label=f"chance: majority class ({chance:.1f}%)")


def measured_lines(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float],
                   grid: Sequence[float], **style: Any) -> None:
    """A series as markers at its measured points, joined by a line only between neighbours
    of the measured ``grid`` (no line across a value it was not measured at)."""
    pos = {v: i for i, v in enumerate(sorted(set(grid)))}
    run: list[tuple[float, float]] = []
    line_style = {k: v for k, v in style.items() if k in ("color", "linestyle", "linewidth")}
    for x, y in sorted(zip(xs, ys, strict=True)):
        if run and pos[x] != pos[run[-1][0]] + 1:
            if len(run) > 1:
                ax.plot(*zip(*run, strict=True), **line_style)
            run = []
        run.append((x, y))
    if len(run) > 1:
        ax.plot(*zip(*run, strict=True), **line_style)


def print_table(text: str) -> None:
    sys.stdout.write("\n" + text + "\n")
    sys.stdout.flush()


def run_study(
    args: StudyArgs,
    *,
    study: str,
    plan: Sequence[Planned],
    columns: Sequence[str],
    summarize: Callable[[list[dict[str, Any]], str], str],
    draw: Callable[[list[dict[str, Any]], FigureSet, str], None],
) -> list[dict[str, Any]]:
    """The body every study shares: train and attack each planned run (skipping what is done),
    write results.csv, summary.md and the figures, print the summary table."""
    seed_everything(args.seed, args.threads)
    out = args.out_dir(study)
    rows = sweep(plan, out, args.budget, study=study, seed=args.seed, threads=args.threads,
                 progress=args.progress, batched=args.batched, executor=args.execution)
    write_csv(out / "results.csv", rows, columns)
    rows = read_csv(out / "results.csv")
    budget = budget_text(rows, args.quick)
    from studies.audit import audit_table

    dropped = dropped_text(args.dropped)
    md = summarize(rows, budget) + (f"\n{dropped}\n" if dropped else "") + audit_table(rows)
    write_text(out / "summary.md", md)
    draw(rows, FigureSet(out / "figures", utility=args.utility),
         f"Budget: {budget}." + (f" {dropped}" if dropped else ""))
    print_table(md)
    print(f"wrote {out / 'results.csv'}, {out / 'summary.md'} and {out / 'figures'}/")
    return rows


def cli(main: Callable[[], Any]) -> None:
    """A study's ``__main__``: run ``main``; bad input or a failed run ends in one line on stderr
    (``error: ...``, exit status 2) instead of a traceback (set SPLITPRIV_TRACEBACK=1 for it)."""
    import os

    try:
        main()
    except (TaskFailed, ValueError, FileNotFoundError, KeyError) as exc:
        if os.environ.get("SPLITPRIV_TRACEBACK"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2) from None
