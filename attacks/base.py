"""What every attack shares: the attacker's declared knowledge, the evaluator's ground truth, the
result object, and the base class whose ``__call__`` checks inputs and calls the subclass's ``run``.

The threat model is explicit in code. An attack sees

* the **transcript**: what crossed the channel, keyed by sample id (``splitpriv.channel``);
* its declared **knowledge** (:class:`Knowledge`): an auxiliary set of beats and where it comes
  from, the client architecture, the client weights (white box), the defenses it knows of. The
  base class hands an attack only the fields its class lists in ``uses``;
* never the private beats. Those are the **ground truth** (:class:`GroundTruth`) that the evaluator
  holds to score the attack, and they are given to ``run`` only to compute metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attacks.releases import observed_from_log
from attacks.shapes import as_cut
from splitpriv.channel import Kind, Transcript
from splitpriv.defense import DefenseSpec
from splitpriv.io import resolve_device, save_npz, torch_threads, write_json

#: Knowledge fields an attack may declare in ``uses``.
KNOWLEDGE_FIELDS = ("aux", "depth", "client_state", "defenses", "server_state", "recipe")


class AttackInputError(ValueError):
    """The transcript, knowledge or ground truth cannot serve this attack (the message says why)."""


@dataclass
class AuxData:
    """The attacker's auxiliary beats.

    Attributes:
        x: (M, 1, 128) beats.
        y: (M,) their labels.
        source: where they come from, in words (``"own:0.1 ..."``, ``"records:...``).
        ids: (M,) transcript sample ids when the beats are rows of the observed set (the attacker
            knows which observed rows are its own); None otherwise.
        activations: (M, C, L) their cut activations as the attacker obtained them (by querying the
            client); None when they are to be read from the transcript by ``ids``.
        exclude_ids: further observed sample ids that are not to be victims (e.g. the beats of
            the aux set's patients).
        groups: (M,) the patient (record) of each beat, where the attacker knows it (its own
            beats): the within-patient game on its held-out beats; None otherwise.
    """

    x: torch.Tensor
    y: torch.Tensor
    source: str
    ids: torch.Tensor | None = None
    activations: torch.Tensor | None = None
    exclude_ids: torch.Tensor | None = None
    groups: torch.Tensor | None = None

    @property
    def paired(self) -> bool:
        """Whether the beats come with their releases (given, or read from the transcript by id);
        False for public beats the client never released (``public:F``)."""
        return self.ids is not None or self.activations is not None

    def not_victims(self) -> torch.Tensor | None:
        """Observed sample ids excluded from the victims: the aux rows and ``exclude_ids``."""
        parts = [t.long() for t in (self.ids, self.exclude_ids) if t is not None]
        return torch.cat(parts) if parts else None

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.x.shape[1] != 1:
            raise AttackInputError(f"aux beats must be (M, 1, L), got {tuple(self.x.shape)}")
        n = len(self.x)
        for name in ("y", "ids", "activations", "groups"):
            t = getattr(self, name)
            if t is not None and len(t) != n:
                raise AttackInputError(
                    f"aux {name} has {len(t)} rows but aux x has {n}"
                )

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n": len(self.x),
            "class_counts": np.bincount(self.y.numpy(), minlength=5).tolist(),  # MIT-BIH's 5
            "paired_by_id": self.ids is not None and self.activations is None,
            "paired": self.paired,
        }


@dataclass
class Knowledge:
    """What the attacker declares it knows.

    Attributes:
        aux: auxiliary beats (and how their activations are obtained).
        depth: the client architecture, ``ClientNet(depth)``.
        client_state: the client's weights (white box), a state dict of that architecture.
        defenses: the defenses the attacker knows are applied, with their parameters (adaptive
            attacker; the run's config.json).
        build_client: the client architecture as a constructor of a fresh (randomly initialised)
            module, for clients other than ``ClientNet`` (tests use a linear convolution); it
            goes with ``depth`` (set ``depth`` to any int when giving it).
        server_state: the server's own part of the split model (its weights, a state dict of
            ``ServerNet``): what the server holds anyway (``attacks.sdar``).
        recipe: the run's training recipe (its ``splitpriv.run.TrainConfig``: architecture,
            optimiser, epochs, defenses and their parameters), from config.json; an adaptive
            attacker retrains a shadow split model with it (``attacks.adaptive``).
        defense_states: the trained state of the defenses that hold learned parameters of the
            client (``Defense.learned``: a bottleneck, learned noise) by checkpoint key
            (``defense.I.NAME``); part of the client's weights, it goes with ``client_state``
            and ``defenses``.
        n_classes: the task's class count (public: every attacker knows it; MIT-BIH's 5).
        input_shape: the shape (C, *spatial) of one input (public, as the class count;
            MIT-BIH's (1, 128)); the attacks see inputs flattened (``attacks.shapes``).
        cut_shape: the shape (C, *spatial) of one cut as the client sends it, or (D,) for a
            dense cut (public: the server receives it); the attacks see it with its spatial
            axes flattened (``attacks.shapes.as_cut``) and the decoders are built for it
            (``attacks.shapes.decoder_shapes``). None: the activations' own (C, L).
    """

    aux: AuxData | None = None
    depth: int | None = None
    client_state: Mapping[str, torch.Tensor] | None = None
    defenses: tuple[DefenseSpec, ...] = ()
    build_client: Callable[[], torch.nn.Module] | None = None
    not_victims: torch.Tensor | None = None
    server_state: Mapping[str, torch.Tensor] | None = None
    recipe: Any = None
    defense_states: Mapping[str, Any] | None = None
    n_classes: int = 5
    input_shape: tuple[int, ...] = (1, 128)
    cut_shape: tuple[int, ...] | None = None

    def restricted(self, uses: Sequence[str]) -> Knowledge:
        """A copy holding only the fields in ``uses`` (the rest are withheld).

        ``not_victims`` is kept: the observed ids of the declared aux set (and of its patients)
        are never victims, whether or not the attack uses the aux set, so that every attack of one
        setting is scored on the same victims.
        """
        return Knowledge(
            aux=self.aux if "aux" in uses else None,
            depth=self.depth if "depth" in uses else None,
            client_state=self.client_state if "client_state" in uses else None,
            defenses=self.defenses if "defenses" in uses else (),
            build_client=self.build_client if "depth" in uses else None,
            server_state=self.server_state if "server_state" in uses else None,
            recipe=self.recipe if "recipe" in uses else None,
            not_victims=self.aux.not_victims() if self.aux is not None else self.not_victims,
            defense_states=(self.defense_states if {"client_state", "defenses"} <= set(uses)
                            else None),
            n_classes=self.n_classes, input_shape=self.input_shape, cut_shape=self.cut_shape,
        )

    def client(self) -> torch.nn.Module:
        """A fresh module of the known architecture."""
        if self.build_client is not None:
            return self.build_client()
        if self.depth is None:
            raise AttackInputError("the client architecture is not known")
        from splitpriv.models import ClientNet

        return ClientNet(self.depth)

    def describe(self) -> dict[str, Any]:
        arch = None
        if self.build_client is not None:
            arch = repr(self.build_client()).replace("\n", " ")
        elif self.depth is not None:
            arch = f"ClientNet(depth={self.depth})"
        return {
            "aux": self.aux.describe() if self.aux is not None else None,
            "architecture": arch,
            "client_weights": self.client_state is not None,
            "defenses": [str(d) for d in self.defenses],
            "server_weights": self.server_state is not None,
            "recipe": self.recipe is not None,
        }


@dataclass
class GroundTruth:
    """The evaluator's private data of one phase: beats and labels indexed by sample id.

    Attributes:
        x: (N, 1, 128) beats; row i is sample id i of the phase.
        y: (N,) labels.
        classifier: the evaluator's reference classifier (beats -> logits), trained on beats
            the victims are not among; inversion attacks report its accuracy on their
            reconstructions. None skips that check.
        groups: (N,) the patient (record) of each row: re-identification is then also scored
            within patient (candidates from the victim's own record). None: across patients
            only.
        times: (N,) the R-peak sample of each row in its record (the time order of a patient's
            beats: identity's windows of consecutive beats); None where unknown.
        input_shape: the run's input shape where it is not one signal (C, *spatial): ``x`` is
            then its flattened view (``attacks.shapes``) and reconstructions are saved
            (N, *input_shape); None: MIT-BIH's beats, saved (N, 128).
    """

    x: torch.Tensor
    y: torch.Tensor
    classifier: torch.nn.Module | None = None
    groups: torch.Tensor | None = None
    times: torch.Tensor | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.x.shape[1] != 1:
            raise AttackInputError(
                f"ground-truth beats must be (N, 1, L), got {tuple(self.x.shape)}"
            )
        if len(self.y) != len(self.x):
            raise AttackInputError(
                f"ground truth: {len(self.x)} beats but {len(self.y)} labels"
            )
        if self.groups is not None and len(self.groups) != len(self.x):
            raise AttackInputError(
                f"ground truth: {len(self.x)} beats but {len(self.groups)} groups"
            )

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Beats and labels of sample ``ids``; a clear error when an id is out of range."""
        ids = ids.long()
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.x)):
            raise AttackInputError(
                f"transcript sample ids span {int(ids.min())}..{int(ids.max())} but the ground "
                f"truth holds {len(self.x)} rows: transcript and data do not belong together"
            )
        return self.x[ids], self.y[ids]


@dataclass
class CommonConfig:
    """Parameters every attack takes.

    Attributes:
        phase: transcript phase attacked (``train``, ``test``, ``val``).
        epoch: transcript epoch attacked; None = the last recorded.
        max_victims: attack at most this many victims (a seeded random subset); None = all.
        seed: seeds the victim subset and every random choice of the attack.
        threads: torch threads while the attack runs; the attacks loop over small tensors, where
            more threads mostly contend (one thread measured 5 to 20 times faster than two on a
            busy 2-core host). None leaves torch's setting.
        device: torch device of the attack's own training and optimisation (the inversions'
            decoders, ridge's SVD, the white-box and UnSplit optimisations; ``cuda`` or
            ``cuda:N`` where the host has one, ``auto`` picks it when present). What the attack
            reads and returns stays on the host, and its scoring runs there (numpy and C code);
            the leakage measures and label attacks compute on the host whatever is given.
    """

    phase: str = "train"
    epoch: int | None = None
    max_victims: int | None = None
    seed: int = 0
    threads: int | None = 1
    device: str = "cpu"


@dataclass
class AttackBudget:
    """How hard each attack works in a study; each attack class turns it into its options
    (:meth:`Attack.study_options`). Studies nest it in their arguments, so every field is a flag.

    The leakage measures read the activations recomputed from the final weights with the run's
    defenses applied (``source=weights``), on the training beats; the inversions and
    re-identification read what the server received and kept (the run's release log: every
    training release, combined as the attacker chooses), trained on an auxiliary fraction of the
    training beats (their releases paired with their beats) and attacking the others."""

    aux: str = "own:0.1"
    """the attacker's auxiliary set (decoder inversion, label attacks)"""
    dcor_victims: int = 2000
    """beats in the dCor measurement"""
    dcor_batches: int | None = None
    """random batches of the batch (NoPeek) dCor (None: 5 below 1,000 victims, else 20)"""
    dcor_batch_size: int | None = None
    """beats per batch of the batch dCor (None: half the victims, 4 to 500)"""
    dtw_victims: int = 1000
    """beats in the DTW measurement"""
    control_victims: int = 200
    """beats of the shuffled-pairs control of dCor and DTW (at most their victims)"""
    decoder_epochs: int = 30
    """training epochs (at most: held-out early stopping) of the inversion decoder, alone and as
    a candidate of the strongest inversion"""
    decoder_victims: int = 1000
    """beats the inversions reconstruct"""
    enrol_beats: int = 20
    """identity inference: beats every patient is enrolled with (a patient with fewer enrolment
    beats is not enrolled; where fewer than two are, identity is skipped)"""
    reference_epochs: int = 0
    """epochs of the reference classifier of the inversion's diagnosis check (0: skip)"""
    attack_device: str = "cpu"
    """torch device of the inversions' training (decoders, ridge, optimisations): cpu, cuda,
    cuda:N or auto; scoring stays on the host"""


def _summary_value(summary: Mapping[str, Any] | None, path: Sequence[str]) -> float | str:
    """The number (or name, e.g. ``strongest``'s ``winner``) at ``path`` in a summary; NaN when
    there is no summary or nothing there."""
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, str):
        return value
    return float(value) if isinstance(value, (int, float)) else math.nan


def _jsonable(obj: Any) -> Any:
    """Numbers, arrays and tensors to plain JSON values; NaN and inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


@dataclass
class AttackResult:
    """What an attack returns: summary metrics, raw per-sample scores and the knowledge it used.

    Attributes:
        attack: registered name.
        summary: metrics (JSON values; distributions as median and quartiles).
        scores: raw per-sample arrays (saved to ``.npz``), e.g. ``ids``, ``mse``, ``label_scores``.
        knowledge: what the attacker knew (:meth:`Knowledge.describe`).
        config: the attack's parameters.
        citation: the paper the attack follows.
        seconds: wall time of the attack (including evaluation).
        notes: caveats in words.
        headline: the few numbers a report shows (:meth:`Attack.headline`; set by
            ``attacks.cli.run_attack``), saved so that a reader needs no attack class
            (``splitpriv.results``).
    """

    attack: str
    summary: dict[str, Any]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    knowledge: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    citation: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays (listed by name, dtype and shape) as JSON values."""
        return _jsonable({
            "attack": self.attack,
            "citation": self.citation,
            "summary": self.summary,
            "knowledge": self.knowledge,
            "config": self.config,
            "seconds": self.seconds,
            "notes": self.notes,
            "headline": self.headline,
            "scores": {
                k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in self.scores.items()
            },
        })

    def save(self, directory: str | Path, name: str | None = None) -> Path:
        """Write ``directory/NAME.json`` and, when there are scores, ``NAME.npz``; returns the
        JSON path."""
        directory = Path(directory)
        name = name or self.attack
        path = directory / f"{name}.json"
        doc = self.to_dict()
        if self.scores:
            npz = directory / f"{name}.npz"
            save_npz(npz, {k: np.asarray(v) for k, v in self.scores.items()})
            doc["scores_file"] = npz.name
        write_json(path, doc)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AttackResult:
        """Read a result written by :meth:`save` (the ``.npz`` beside it too)."""
        path = Path(path)
        doc = json.loads(path.read_text())
        scores: dict[str, np.ndarray] = {}
        if doc.get("scores_file"):
            with np.load(path.parent / doc["scores_file"], allow_pickle=False) as data:
                scores = {k: data[k] for k in data.files}
        return cls(
            attack=doc["attack"], summary=doc["summary"], scores=scores,
            knowledge=doc["knowledge"], config=doc["config"], citation=doc["citation"],
            seconds=doc["seconds"], notes=doc["notes"], headline=doc.get("headline", {}),
        )


def observed(
    transcript: Transcript, kind: Kind | str, *, phase: str, epoch: int | None, attack: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (N,) and tensors (N, ...) of one kind, first occurrence of each id kept; training
    activations the transcript did not record come from its release log (each id's latest
    release, :func:`attacks.releases.observed_from_log`) where it kept one.

    Raises:
        AttackInputError: the transcript lacks the messages (saying what it holds and how to get
            them), or ids and rows disagree.
    """
    kind = Kind(kind)
    try:
        ids, values = transcript.get(kind, phase=phase, epoch=epoch)
    except KeyError:
        from_log = observed_from_log(transcript, kind, phase, epoch)
        if from_log is not None:
            return from_log[0], as_cut(from_log[1])
        held = transcript.keys()
        hint = ""
        if kind in (Kind.OUTPUT_GRAD, Kind.ACT_GRAD) and phase != "train":
            hint = " (gradients cross only in the train phase)"
        elif kind is Kind.OUTPUT_GRAD:
            hint = (" (output gradients cross only in the U-shaped topology: "
                    "train --topology ushape)")
        raise AttackInputError(
            f"attack {attack!r} needs {kind.value!r} messages of phase {phase!r}"
            f"{'' if epoch is None else f', epoch {epoch}'}{hint}; the transcript holds "
            f"{held if held else 'nothing (was the run trained with --record-epochs none?)'}"
        ) from None
    if ids.ndim != 1 or len(ids) != len(values):
        raise AttackInputError(
            f"{kind.value!r}: {tuple(ids.shape)} ids for {tuple(values.shape)} values"
        )
    if kind in (Kind.ACTIVATIONS, Kind.ACT_GRAD):
        values = as_cut(values)  # a 2D cut (N, C, H, W) as (N, C, H W)
    ids = ids.long()
    uniq, first = np.unique(ids.numpy(), return_index=True)
    if len(uniq) < len(ids):
        order = np.sort(first)
        ids, values = ids[order], values[order]
    return ids, values


def lookup(
    ids: torch.Tensor, values: torch.Tensor, wanted: torch.Tensor, what: str
) -> torch.Tensor:
    """Rows of ``values`` whose id is in ``wanted``, in the order of ``wanted``."""
    pos = {int(i): k for k, i in enumerate(ids.tolist())}
    missing = [int(i) for i in wanted.tolist() if int(i) not in pos]
    if missing:
        raise AttackInputError(
            f"{what}: {len(missing)} of {len(wanted)} aux ids are not in the transcript "
            f"(first: {missing[:5]})"
        )
    return values[torch.tensor([pos[int(i)] for i in wanted.tolist()], dtype=torch.long)]


def pick_victims(
    ids: torch.Tensor, *, exclude: torch.Tensor | None, max_victims: int | None, seed: int
) -> torch.Tensor:
    """Positions into ``ids`` of the victims: ids not in ``exclude``, a seeded subset if capped."""
    keep = np.ones(len(ids), dtype=bool)
    if exclude is not None and len(exclude):
        keep = ~np.isin(ids.numpy(), exclude.numpy())
    pos = np.flatnonzero(keep)
    if len(pos) == 0:
        raise AttackInputError("no victims left: every observed sample is in the aux set")
    if max_victims is not None and len(pos) > max_victims:
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(pos, size=max_victims, replace=False))
    return torch.from_numpy(pos)


class Attack(ABC):
    """Base class. Subclasses set ``name`` (by ``@register``), ``citation``, ``Config`` (a dataclass
    deriving from :class:`CommonConfig`), ``uses`` (knowledge fields handed over) and ``requires``
    (those that must be present), and implement :meth:`run`.

    ``__call__`` validates the inputs, withholds undeclared knowledge, seeds torch and numpy, times
    the run and fills the bookkeeping fields of the result.
    """

    name: ClassVar[str] = "attack"
    citation: ClassVar[str] = ""
    Config: ClassVar[type[CommonConfig]] = CommonConfig
    #: the aux spec the attack uses when the caller gives none (identity: its enrolment set)
    default_aux: ClassVar[str | None] = None
    uses: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    #: the attack's headline columns in a study's results.csv: column -> keys into the summary
    study_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def study_options(cls, budget: AttackBudget) -> dict[str, Any]:
        """The options (``Config`` fields, plus ``source`` and ``reference_epochs`` of
        ``attacks.cli.run_attack``) a study runs this attack with under ``budget``; the study adds
        ``seed`` and ``threads``. Default: none (the Config's defaults)."""
        return {}

    @classmethod
    def needs_aux(cls) -> bool:
        """Whether a study hands this attack the attacker's auxiliary set (it uses ``aux``)."""
        return "aux" in cls.uses

    @classmethod
    def columns(cls, summary: Mapping[str, Any] | None) -> dict[str, float | str]:
        """The attack's columns of a study row from its summary (NaN when it was not run; a
        column may hold a name, e.g. ``strongest_attack``). Several attacks may report one
        numeric column (the label attacks' ``label_attack_accuracy``): a row keeps the highest, so
        such a column must grow with the attack's success."""
        return {col: _summary_value(summary, path) for col, path in cls.study_columns.items()}

    def __init__(self, config: CommonConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} takes a {self.Config.__name__}")
        if self.config.max_victims is not None and self.config.max_victims < 1:
            raise ValueError(f"max_victims must be >= 1, got {self.config.max_victims}")
        if self.config.device != "auto":
            try:
                torch.device(self.config.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"device: unknown device {self.config.device!r} (auto, cpu, "
                                 "cuda, cuda:N)") from None

    @property
    def device(self) -> torch.device:
        """The device of the attack's own computations (``config.device``), checked to be here.

        Raises:
            ValueError: a CUDA device this machine does not have.
        """
        return resolve_device(self.config.device)

    def __call__(
        self,
        transcript: Transcript,
        knowledge: Knowledge | None = None,
        truth: GroundTruth | None = None,
    ) -> AttackResult:
        knowledge = (knowledge or Knowledge()).restricted(self.uses)
        for need in self.requires:
            if not getattr(knowledge, need):
                raise AttackInputError(
                    f"attack {self.name!r} needs the attacker's {need!r} knowledge "
                    f"({'--aux' if need == 'aux' else 'from the run'}); none was given"
                )
        if truth is None:
            raise AttackInputError(f"attack {self.name!r}: no ground truth to score it against")
        torch.manual_seed(self.config.seed)
        t0 = time.perf_counter()
        with torch.enable_grad(), torch_threads(self.config.threads):
            result = self.run(transcript, knowledge, truth)
        result.seconds = time.perf_counter() - t0
        result.attack = self.name
        result.citation = self.citation
        result.knowledge = knowledge.describe()
        result.config = dataclasses.asdict(self.config)
        return result

    def headline(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The few numbers a one-line report shows (default: the scalar entries of the summary)."""
        return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}

    @abstractmethod
    def run(
        self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth
    ) -> AttackResult:
        """Attack, then score against ``truth``; fill ``summary``, ``scores`` and ``notes``."""


@dataclass
class Observed:
    """Victims' observed tensors beside their (evaluator-only) ground truth.

    Attributes:
        ids: (N,) sample ids, in transcript arrival order.
        values: (N, ...) what the server observed of them.
        x: (N, 1, 128) their beats.  y: (N,) their labels.
        positions: (N,) positions of the victims among all observed rows (arrival order).
        groups: (N,) their patients (records), where the ground truth has them.
    """

    ids: torch.Tensor
    values: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    positions: torch.Tensor
    groups: torch.Tensor | None = None


def observe_victims(
    attack: Attack,
    transcript: Transcript,
    kind: Kind | str,
    truth: GroundTruth,
    *,
    exclude: torch.Tensor | None = None,
) -> Observed:
    """The attacked messages of the victims (observed ids minus ``exclude``, capped and seeded by
    the attack's config), with their ground truth."""
    cfg = attack.config
    ids, values = observed(transcript, kind, phase=cfg.phase, epoch=cfg.epoch, attack=attack.name)
    pos = pick_victims(ids, exclude=exclude, max_victims=cfg.max_victims, seed=cfg.seed)
    x, y = truth.rows(ids[pos])
    groups = None if truth.groups is None else truth.groups[ids[pos].long()]
    return Observed(ids=ids[pos], values=values[pos], x=x, y=y, positions=pos, groups=groups)
