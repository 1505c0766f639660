r"""Attacking a saved run directory: its ground truth, transcript, the attacker's knowledge, and the
client as a query oracle.

A run directory (``splitpriv.run``) holds config.json, weights.pt and, when recorded,
transcript.npz. The private beats are rebuilt from the config exactly as training built them.

Auxiliary-set specs (``--aux``) are :class:`splitpriv.aux.AuxSpec`\ s; for an attack:

* ``own:F`` (0 < F < 1) or ``own:N`` (``train:F``, its older name): a seeded random fraction F
  (or N rows) of the training half, with their labels. The attacker knows which observed rows
  are its own, so it pairs them with what the transcript holds for them (activations,
  gradients); they are not victims.
* ``records:R1,R2,...``: other patients. Beats of those MIT-BIH records from the beat pool that
  the run used nowhere (not in train, validation or test). The attacker obtains their activations
  by querying the client (the run's final weights, with the run's defenses applied: an adaptive
  attacker). Victims from those records are excluded.
* ``public:F`` (0 < F < 1) or ``public:N``: public beats the client never released: F times the
  training rows (or N) of the pool beats the run uses nowhere (the beats a server behaviour's
  ``aux=public:F`` draws), with their labels and no releases (unpaired: the attacks that need no
  pairs, ``attacks.sdar``, ``attacks.fora``, ``attacks.adaptive``). No victim is excluded: none
  of them is a victim's beat.
* ``enrol:F`` (0 < F < 1): the first part of every patient's record. The beats of the attacked
  phase whose R-peak lies in the first F of their record (by the time of the record's pool beats)
  with their patients (records) and labels, paired with the transcript by id; the victims are
  the later beats, disjoint in time (identity inference: ``attacks.identity``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.base import AttackInputError, AuxData, GroundTruth, Knowledge
from attacks.shapes import as_signal, one_signal, signal_client, signal_input
from splitpriv.aux import AuxSpec
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.data import BeatPool
from splitpriv.defense import DefenseSpec
from splitpriv.io import read_file, read_json, torch_load
from splitpriv.models import ClientNet
from splitpriv.run import PHASES, RESULT, TrainConfig, build_run_data
from splitpriv.trainer import EVAL_BATCH


@dataclass
class RunData:
    """A run directory, loaded.

    Attributes:
        path: the directory.
        config: its TrainConfig.
        weights: {'client': state_dict, 'server': ..., ['head': ...]}.
        transcript: what crossed the channel (empty when nothing was recorded).
        x, y: per phase, (N, 1, 128) float32 beats and (N,) labels, as training used them
            (other inputs (N, C, *spatial) flattened to (N, 1, D): ``attacks.shapes``).
        records, pool_idx: per phase, (N,) record number and pool row of every beat.
        input_shape: the run's input shape (C, *spatial).
    """

    path: Path
    config: TrainConfig
    weights: dict
    transcript: Transcript
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    records: dict[str, np.ndarray]
    pool_idx: dict[str, np.ndarray]
    pool: BeatPool
    input_shape: tuple[int, ...] = (1, 128)

    def truth(self, phase: str, classifier: torch.nn.Module | None = None) -> GroundTruth:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        return GroundTruth(self.x[phase], self.y[phase], classifier=classifier,
                           groups=record_groups(self.records[phase]), times=self.times(phase),
                           input_shape=None if one_signal(self.input_shape)
                           else self.input_shape)

    def reference_net(self, seed: int) -> torch.nn.Module:
        """The evaluator's reference classifier, untrained: the paper's network at depth 2
        (MIT-BIH runs of the paper model), else the run's architecture, unsplit, taking the
        attacks' view of the inputs."""
        from splitpriv.models import ModelConfig, build_models

        if self.config.model == "paper":
            return build_models(ModelConfig(2), seed=seed).monolithic()
        from splitpriv.architectures import build_architecture

        torch.manual_seed(seed)
        models = build_architecture(self.config.model).assemble(
            self.input_shape, len(self.pool.classes), self.config, ushape=False)
        models.client = signal_input(models.client, self.input_shape)
        return models.monolithic()

    def client_net(self) -> torch.nn.Module:
        """A fresh (randomly initialised) client of the run's architecture taking the
        attacks' view of its inputs (:func:`attacks.shapes.signal_client`)."""
        if self.config.model == "paper":
            return ClientNet(self.config.depth, self.config.cut_channels)
        return signal_client(self._architecture_client(), self.input_shape)

    def _architecture_client(self) -> torch.nn.Module:
        """A fresh client of the run's (non-paper) architecture, as it takes its inputs."""
        from splitpriv.architectures import build_architecture

        return build_architecture(self.config.model).build(
            self.input_shape, len(self.pool.classes), self.config)[0]

    def cut_shape(self) -> tuple[int, ...] | None:
        """The shape of one cut as the client sends it (probed from a fresh client of the run's
        architecture); None for the paper's model, whose cut the attacks see as it is."""
        if self.config.model == "paper":
            return None
        from splitpriv.architectures import probe_shape

        with torch.random.fork_rng(devices=[]):  # torch's generator left as it was
            net = self._architecture_client()
        return probe_shape(net, self.input_shape)

    def times(self, phase: str) -> torch.Tensor | None:
        """(N,) the R-peak sample of each beat of ``phase`` in its record; None where a row has
        no pool row (the paper's HDF5 files)."""
        idx = self.pool_idx[phase]
        rpeak = getattr(self.pool, "rpeak", None)
        if rpeak is None or (idx < 0).any():
            return None
        return torch.as_tensor(rpeak[idx]).long()


def record_groups(records: np.ndarray) -> torch.Tensor | None:
    """The patient (MIT-BIH record) of each row as attack groups; None where a row's record is
    unknown (the paper's HDF5 files: -1)."""
    records = np.asarray(records)
    return None if (records < 0).any() else torch.as_tensor(records).long()


def load_run(
    run_dir: str | Path, *, cache_dir: str | Path | None = None,
    mitdb_dir: str | Path | None = None,
) -> RunData:
    """Load a run directory (its data rebuilt from config.json).

    The run may come from another machine: the pool cache goes to ``cache_dir`` (else the local
    default, ``$SPLITPRIV_CACHE`` or the user cache), never to the ``cache_dir`` its config.json
    names; the records are ``mitdb_dir``, else the config's ``mitdb_dir`` where it holds them
    here, else the local ones (``$SPLITPRIV_MITDB`` or the user cache), with a warning. The data
    rebuilt must have the sizes the run recorded in result.json (``dataset``).

    Raises:
        FileNotFoundError: config.json or weights.pt missing (an unfinished run).
        ValueError: a bad config.json or weights.pt, or local records that give another pool
            than the run trained on (named).
    """
    from splitpriv.data import missing_record_files

    path = check_run_dir(run_dir)
    config = TrainConfig.load(path / "config.json")
    _check_result_matches(path, config)
    records = None if mitdb_dir is None else str(mitdb_dir)
    if records is None and config.mitdb_dir is not None:
        if missing_record_files(config.mitdb_dir):
            warnings.warn(
                f"{path / 'config.json'} names mitdb_dir {config.mitdb_dir}, which does not hold "
                "the MIT-BIH records here; using the local records ($SPLITPRIV_MITDB, else the "
                "user cache)", stacklevel=2,
            )
        else:
            records = config.mitdb_dir
    local = dataclasses.replace(config, mitdb_dir=records,
                                cache_dir=None if cache_dir is None else str(cache_dir))
    weights = _checked_weights(path / "weights.pt", config)
    transcript = (read_file(path / "transcript.npz", Transcript.load, "a transcript (npz)")
                  if (path / "transcript.npz").exists()
                  else Transcript(policy=RecordPolicy(phases=None)))
    data = build_run_data(local, "cpu")
    _check_rebuilt_rows(path, data.card)
    return RunData(
        path, config, weights, transcript,
        **{field: {p: data.part(name, p) for p in PHASES}
           for field, name in (("y", "y"), ("records", "record"), ("pool_idx", "pool_idx"))},
        x={p: as_signal(data.part("x", p)) for p in PHASES},
        pool=data.pool, input_shape=data.input_shape,
    )


def check_run_dir(run_dir: str | Path) -> Path:
    """A finished run directory's path (config.json, weights.pt and result.json there).

    Raises:
        ValueError: not a directory.
        FileNotFoundError: naming the first file missing (an unfinished run).
    """
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--run {path}: not a directory")
    for name in ("config.json", "weights.pt", RESULT):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} not found: not a finished run directory (a "
                                    "run killed or being trained: rerun its train command)")
    return path


#: config fields that do not change what a run produced (where it ran, where its data was)
WHERE_FIELDS = ("device", "threads", "mitdb_dir", "cache_dir")


def _check_result_matches(path: Path, config: TrainConfig) -> None:
    """Refuse a run whose result.json was written for another config than config.json holds (a
    run retrained or extended over it and killed, files copied between runs): the attack would
    read one run's files labelled as another's. result.json keeps its run's config (``config``);
    an older one is compared on the fields it repeats (protocol, labels, depth, seed, epochs,
    the defenses' names)."""
    result = read_json(path / RESULT)
    mine = dataclasses.asdict(config)
    recorded = result.get("config")
    if recorded is not None and "defenses" in recorded:  # text specs in older runs
        recorded["defenses"] = [dataclasses.asdict(DefenseSpec.parse(d, f"{path / RESULT}"))
                                for d in recorded["defenses"]]
    if recorded is None:  # written before result.json kept its config
        recorded = {k: result[k] for k in ("protocol", "labels", "depth", "seed", "epochs")
                    if k in result}
        names = [s.name for s in config.defenses]
        if [d.get("name") for d in result.get("defenses") or []] != names:
            recorded["defenses"] = [d.get("name") for d in result.get("defenses") or []]
            mine["defenses"] = names
    differ = [k for k in mine if k in recorded and k not in WHERE_FIELDS and recorded[k] != mine[k]]
    if differ:
        k = differ[0]
        raise ValueError(
            f"{path}: {RESULT} was written for another run than config.json describes: {k} = "
            f"{recorded[k]!r} there, {mine[k]!r} in config.json (a run retrained over it and "
            "killed, or files mixed); rerun its train command to finish it, or --force")


def _checked_weights(path: Path, config: TrainConfig) -> dict:
    """weights.pt, once each network of the config's architecture loads it."""
    from splitpriv.run import build_defenses, build_run_models, resolve_topology

    weights = torch_load(path)
    models = build_run_models(config, resolve_topology(config, build_defenses(config)),
                              torch.device("cpu"))
    try:
        for name, net in models.modules().items():
            net.load_state_dict(weights[name])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ValueError(f"{path}: does not hold the weights of the run config.json describes "
                         f"(depth {config.depth}, cut_channels {config.cut_channels}): {reason}"
                         ) from None
    return weights


def _check_rebuilt_rows(path: Path, card: dict) -> None:
    """Refuse rebuilt data whose pool or split sizes, or whose files' SHA-256 (``arrays``' file,
    the paper's HDF5 pair), differ from the run's result.json. Class names compare as a list
    (older cards wrote MIT-BIH's as one string, "NLRAV")."""
    if not (path / "result.json").is_file():
        return
    recorded = read_json(path / "result.json").get("dataset") or {}

    def facts(c: dict) -> dict:
        keys = ("pool_size", "pool_class_counts", "n_train", "n_val", "n_test", "sha256")
        shas = {f"hdf5 {k}": v for k, v in (c.get("hdf5") or {}).items() if k.endswith("sha256")}
        names = {"classes": list(c["classes"])} if "classes" in c else {}
        return {k: c[k] for k in keys if k in c} | shas | names

    here, there = facts(card), facts(recorded)
    differ = [k for k in there if there[k] != here.get(k)]
    if differ:
        k = differ[0]
        raise ValueError(
            f"{path}: the data rebuilt here is not the run's: {k} = {here.get(k)!r} here, "
            f"{there[k]!r} in {path / 'result.json'} (other records or files? give the run's "
            "with mitdb_dir / $SPLITPRIV_MITDB, or its --hdf5 files unchanged)"
        )


def learned_states(run: RunData) -> dict[str, Any]:
    """The final state of the run's defenses that hold learned parameters of the client
    (:attr:`~splitpriv.defense.Defense.learned`: a bottleneck, learned noise), by checkpoint key
    (``defense.I.NAME``), from checkpoint.pt; empty where the run has none.

    Raises:
        ValueError: the run's checkpoint.pt is missing or holds no state of one of them.
    """
    from splitpriv.run.rundir import CHECKPOINT

    # the keys splitpriv.run.plugins.stateful_plugins gives them, from the classes alone
    # (building the defenses would calibrate formal DP's noise again)
    keys = [f"defense.{i}.{spec.cls.name}" for i, spec in enumerate(run.config.defenses)
            if spec.cls.learned and spec.cls.stateful]
    if not keys:
        return {}
    path = run.path / CHECKPOINT
    if not path.is_file():
        raise ValueError(f"{path} not found: the run's learned defense(s) {keys} keep their "
                         "trained parameters there")
    plugins = read_file(path, torch_load, "a checkpoint")["trainer"].get("plugins") or {}
    missing = [k for k in keys if k not in plugins]
    if missing:
        raise ValueError(f"{path}: holds no state of the learned defense(s) {missing}")
    return {k: plugins[k] for k in keys}


def defenses_with(specs: Sequence[DefenseSpec], states: Mapping[str, Any] | None) -> list:
    """Defenses built from ``specs`` (checked against no plan), each learned one with its state
    from ``states`` (:func:`learned_states`) where given; a learned one without is left out
    (None in its place): what it computes is the run's trained module, unknown here."""
    out: list = []
    for i, spec in enumerate(specs):
        d = spec.build()
        if d.learned:
            state = (states or {}).get(f"defense.{i}.{d.name}")
            if state is None:
                out.append(None)
                continue
            d.load_state_dict(state)
        out.append(d)
    return out


def run_defenses(run: RunData) -> list:
    """The run's defenses as its client ended training: built from config.json, learned ones
    with their final state from checkpoint.pt (:func:`learned_states`)."""
    from splitpriv.run import build_defenses

    defenses = build_defenses(run.config)
    states = learned_states(run)
    for i, d in enumerate(defenses):
        if d.learned:
            d.load_state_dict(states[f"defense.{i}.{d.name}"])
    return defenses


def _client(run: RunData, x: torch.Tensor, y: torch.Tensor):
    """The run's client (final weights, its defenses attached, learned ones trained) holding
    (x, y)."""
    from splitpriv.parties import Client
    from splitpriv.trainer import adam

    net = run.client_net()
    net.load_state_dict(run.weights["client"])
    transcript = Transcript(policy=RecordPolicy(phases=None, kinds=frozenset({Kind.ACTIVATIONS})))
    channel = InProcessChannel(transcript)
    client = Client(net, x, y, channel, adam(run.config.lr), defenses=run_defenses(run))
    return client, channel, transcript


def query_client(run: RunData, x: torch.Tensor, *, training: bool, seed: int = 0) -> torch.Tensor:
    """Activations (M, C, L) the run's client sends for beats x (M, 1, 128): final weights, the
    run's defenses applied, in training batches (``batch_size``) or evaluation batches."""
    torch.manual_seed(seed)
    y = torch.zeros(len(x), dtype=torch.long)
    client, channel, transcript = _client(run, x, y)
    ids = torch.arange(len(x))
    client.train(training)
    if training:
        for chunk in ids.split(run.config.batch_size):
            with torch.no_grad():
                client.send_activations(chunk)
    else:
        for chunk in ids.split(EVAL_BATCH):
            client.send_eval(x[chunk], chunk)
    got_ids, acts = transcript.get(Kind.ACTIVATIONS, phase="train", epoch=0)
    assert torch.equal(got_ids, ids)
    return acts


def weights_transcript(run: RunData, phase: str, *, seed: int = 0) -> Transcript:
    """A transcript holding the activations of every beat of ``phase`` as the client would send
    them at inference (final weights, defenses in evaluation mode), for runs that recorded none;
    in the vanilla topology, for the training phase, also the labels as they crossed in the clear
    (each defense's ``transform_labels`` applied), which the inversions' class-mean prior reads."""
    from splitpriv.run import build_defenses, resolve_topology

    acts = query_client(run, run.x[phase], training=False, seed=seed)
    t = Transcript(policy=RecordPolicy(phases=None))
    ids = torch.arange(len(acts))
    t.chunks[(Kind.ACTIVATIONS.value, phase, run.config.epochs)] = [(ids, acts)]
    defenses = build_defenses(run.config)
    if phase == "train" and resolve_topology(run.config, defenses) != "ushape":
        y = run.y[phase]
        for d in defenses:
            y = d.transform_labels(y, ids=ids)
        t.chunks[(Kind.LABELS.value, phase, run.config.epochs)] = [(ids, y)]
    return t


def check_aux_spec(spec: str | None) -> AuxSpec | None:
    """The form of an aux spec (:class:`~splitpriv.aux.AuxSpec`), before any run exists to apply
    it to (a study checks its ``--aux`` before training).

    Raises:
        ValueError: naming the spec.
    """
    return AuxSpec.parse(spec, "--aux")


def parse_aux(spec: str | None, run: RunData, *, phase: str, seed: int = 0) -> AuxData | None:
    """The attacker's auxiliary set from a spec (module docstring)."""
    parsed = check_aux_spec(spec)
    if parsed is None:
        return None
    if parsed.kind == "own":
        n_train = len(run.y["train"])
        n = parsed.count(n_train)
        if not 1 <= n < n_train:
            raise ValueError(f"--aux {spec!r}: {n} rows of a training half of {n_train}")
        ids = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n_train, size=n,
                                                                           replace=False)))
        return AuxData(
            x=run.x["train"][ids], y=run.y["train"][ids], ids=ids,
            groups=record_groups(run.records["train"][ids.numpy()]),
            source=f"{spec} ({n} of the {n_train} training rows; paired with the transcript "
                   "by id)",
        )
    if parsed.kind == "enrol":
        return enrolment_aux(run, phase, parsed.size)
    return public_aux(parsed, run, phase=phase, seed=seed)


def public_aux(parsed: AuxSpec, run: RunData, *, phase: str, seed: int) -> AuxData:
    """A ``public`` or ``records`` aux set: pool beats the run used nowhere. ``records``: their
    activations by querying the client (the run's final weights, with the run's defenses applied:
    an adaptive attacker), victims of those records excluded (their patients are the
    attacker's); ``public``: no releases (unpaired), no victim excluded."""
    if run.config.hdf5 is not None:
        raise ValueError(f"--aux {parsed}: the run trained on HDF5 files ({run.config.hdf5}), "
                         "whose pool has no unused beats or record numbers")
    pool = run.pool
    used = np.concatenate([run.pool_idx[p] for p in PHASES])
    rows = parsed.public_rows(pool.record, used, len(run.y["train"]), seed=seed, where="--aux")
    x = as_signal(torch.as_tensor(pool.x[rows]).float())
    y = torch.as_tensor(pool.y[rows]).long()
    if parsed.kind == "public":
        return AuxData(x=x, y=y, source=f"{parsed} ({len(rows)} pool beats the run uses "
                       f"nowhere, seed {seed}; no releases: unpaired)")
    acts = query_client(run, x, training=phase == "train", seed=seed)
    victims_from = np.isin(run.records[phase], parsed.records)
    with_defenses = " with its defenses" if run.config.defenses else ""
    return AuxData(
        x=x, y=y, activations=acts, ids=None, groups=record_groups(pool.record[rows]),
        source=f"{parsed} ({len(rows)} unused pool beats; activations by querying the "
               f"client{with_defenses})",
        exclude_ids=torch.from_numpy(np.flatnonzero(victims_from)),
    )


def enrolment_aux(run: RunData, phase: str, fraction: float) -> AuxData:
    """The ``enrol:F`` aux set: the beats of ``phase`` in the first ``fraction`` of their
    record (the F-quantile of the R-peaks of the record's pool beats), paired by id.

    Raises:
        AttackInputError: a run without record times (HDF5 files), or no beat before the cut
            (or every beat): the set cannot be made of this run.
    """
    times = run.times(phase)
    if times is None or record_groups(run.records[phase]) is None:
        raise AttackInputError(f"--aux enrol:{fraction}: the run's beats have no records or "
                               "times (HDF5 files)")
    records = run.records[phase]
    cut = {int(r): np.quantile(run.pool.rpeak[run.pool.record == r], fraction)
           for r in np.unique(records)}
    early = times.numpy() <= np.array([cut[int(r)] for r in records])
    ids = torch.from_numpy(np.flatnonzero(early))
    if len(ids) == 0 or len(ids) == len(early):
        raise AttackInputError(f"--aux enrol:{fraction}: {len(ids)} of {len(early)} beats of "
                               f"phase {phase!r} fall before the cut; choose another fraction")
    return AuxData(
        x=run.x[phase][ids], y=run.y[phase][ids], ids=ids,
        groups=torch.as_tensor(records[ids.numpy()]).long(),
        source=f"enrol:{fraction} ({len(ids)} beats of phase {phase!r} from the first "
               f"{fraction:g} of each of {len(cut)} records; paired with the transcript by id)")


def knowledge_for(run: RunData, aux: AuxData | None) -> Knowledge:
    """Everything an attacker of this run could be granted; each attack keeps what it declares."""
    return Knowledge(
        aux=aux, depth=run.config.depth, client_state=run.weights["client"],
        defenses=tuple(run.config.defenses), defense_states=learned_states(run) or None,
        n_classes=len(run.pool.classes), input_shape=run.input_shape, cut_shape=run.cut_shape(),
        build_client=(run.client_net if run.config.model != "paper" else
                      functools.partial(ClientNet, run.config.depth, run.config.cut_channels)
                      if run.config.cut_channels is not None else None),
        server_state=run.weights["server"], recipe=run.config,
    )


class SharedRun:
    """The run last attacked in this process, loaded once for all its attacks: its data
    (:func:`load_run`), the activations its client sends for each phase (:func:`weights_transcript`,
    the victims' activations of every attack that recomputes them) and its aux sets
    (:func:`parse_aux`, the client queried once for a ``records:`` set).

    A run is kept while its files are the same (path, and size and modification time of
    config.json, weights.pt, transcript.npz and result.json) and the local data sources
    (``$SPLITPRIV_MITDB``, ``$SPLITPRIV_CACHE``) too; another run replaces it. Everything handed
    out is the object computed first (attacks read their inputs, never write them), so that an
    attack gets what it would have computed itself: the same tensors, bit for bit.
    """

    FILES = ("config.json", "weights.pt", "transcript.npz", "result.json")

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.run: RunData | None = None
        self.transcripts: dict[tuple[str, int], Transcript] = {}
        self.aux: dict[tuple[str, str, int], AuxData | None] = {}
        self.hits = 0

    def _key(self, run_dir: str | Path) -> tuple:
        path = Path(run_dir).resolve()
        stats: list[tuple[str, int | None, int | None]] = []
        for name in self.FILES:
            try:
                st = (path / name).stat()
                stats.append((name, st.st_size, st.st_mtime_ns))
            except OSError:  # missing, or the path is no directory: load_run names it
                stats.append((name, None, None))
        env = tuple(os.environ.get(v) for v in ("SPLITPRIV_MITDB", "SPLITPRIV_CACHE"))
        return (str(path), tuple(stats), env)

    def load(self, run_dir: str | Path) -> RunData:
        """:func:`load_run` of ``run_dir``, kept for its next attacks."""
        key = self._key(run_dir)
        if key != self.key or self.run is None:
            self.clear()
            self.run = load_run(run_dir)  # raises for an unfinished run: nothing is kept
            self.key = key
        else:
            self.hits += 1
        return self.run

    def unchanged(self, run_dir: str | Path) -> bool:
        """Whether the kept run's files are still those it was loaded from."""
        return self.key is not None and self._key(run_dir) == self.key

    def _kept(self, run: RunData, table: dict, key: tuple, compute):
        """``compute()`` for the kept run, once per ``key`` of ``table``; for another run,
        afresh."""
        if run is not self.run:
            return compute()
        if key in table:
            self.hits += 1
        else:
            table[key] = compute()
        return table[key]

    def weights_transcript(self, run: RunData, phase: str, *, seed: int = 0) -> Transcript:
        """:func:`weights_transcript` of the kept run, computed once per (phase, seed)."""
        return self._kept(run, self.transcripts, (phase, seed),
                          lambda: weights_transcript(run, phase, seed=seed))

    def parse_aux(self, spec: str | None, run: RunData, *, phase: str,
                  seed: int = 0) -> AuxData | None:
        """:func:`parse_aux` on the kept run, computed once per (spec, phase, seed)."""
        return self._kept(run, self.aux, (str(spec), phase, seed),
                          lambda: parse_aux(spec, run, phase=phase, seed=seed))

    def clear(self) -> None:
        self.key, self.run, self.hits = None, None, 0
        self.transcripts.clear()
        self.aux.clear()


#: the run the attacks of this process share (``attacks.cli.run_attack``)
SHARED = SharedRun()


def config_summary(run: RunData) -> dict:
    c = dataclasses.asdict(run.config)
    return {k: c[k] for k in ("protocol", "depth", "epochs", "seed", "topology", "defenses",
                              "paper_softmax", "train_subset", "test_subset")}
