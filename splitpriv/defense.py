"""The plug-in contract of a defense, and the typed privacy claim every defense reports.

A defense acts at the cut, on either side, through the hooks below; every hook defaults to doing
nothing, so a defense overrides only what it changes. Defenses compose: the parties apply them in
the order of the run's ``--defense`` list. Concrete defenses live in ``defenses/``.

Hooks and who calls them (see docs/ARCHITECTURE.md for the picture):

========================  ======  =================================================================
hook                      party   when
========================  ======  =================================================================
``configure``             run     once, with the run's plan, before anything is written
``provide_classes``       run     once before ``attach``: the run's class count
``provide_patients``      run     once before ``attach``: the patient of every training row
``attach``                client  once before training (may wrap the client's model/optimizer)
``begin_phase``           both    before every pass: ``(epoch, "train" | "val" | "test")``
``replay``                client  before every training batch, with its sample ids: a release
                                  to send again instead of computing one (the client is then
                                  frozen for the batch)
``transform_activations`` client  activations about to be sent (training and evaluation)
``release_map``           attack  the noiseless part of ``transform_activations`` (an adaptive
                                  attacker's model of the defense)
``transform_labels``      client  labels about to be sent (vanilla topology, training)
``client_loss``           client  an extra loss term from inputs and activations
``transform_gradient``    sender  a gradient about to cross: the cut gradient the server returns
                                  (``Kind.ACT_GRAD``), or, U-shaped, the output gradient the
                                  client head returns (``Kind.OUTPUT_GRAD``)
``observe_gradient``      client  the cut gradient received for a training batch, before the
                                  client backpropagates it: returns it, or None to take no step
                                  on the batch (a detector's probe: SplitGuard's fake batches)
``end_epoch``             both    after every training epoch (accountants step here)
``report``                run     the :class:`PrivacyClaim` for result.json
========================  ======  =================================================================

In one process both parties hold the same defense instances; ``begin_phase`` and ``end_epoch``
still arrive once per pass (the trainer calls each distinct plug-in once,
:func:`splitpriv.parties.distinct_plugins`). In two processes each party's copy gets its own.
Defenses find each other by capability (:attr:`Defense.weights_private`,
:attr:`Defense.couples_rows`), never by name. :attr:`Defense.simulable` tells an adaptive attacker
(``attacks.adaptive``) whether it can rebuild the defense from the run's config and train a
shadow client with it. What the server itself does (honest or an
adversary) is not a defense: see :mod:`splitpriv.servers`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from splitpriv.options import format_spec, parse_spec
from splitpriv.registry import Registry

if TYPE_CHECKING:
    from splitpriv.channel import Kind


@dataclass
class PrivacyClaim:
    """What a defense claims, as one typed object: result.json serialises it (:meth:`to_dict`)
    and studies read its fields, never a defense's private report keys.

    Attributes:
        name: the defense's registered name.
        formal: whether the claim is a formal (epsilon, delta) guarantee from an accountant.
        mechanism: the noise or protection mechanism (``gaussian``, ``laplace``, ``topology``...).
        privacy_unit: what one unit of privacy is (e.g. "one beat's input signal").
        scope: what is released and covered (e.g. "activation releases of training beats").
        epsilon: the accounted epsilon of the training releases (None: no formal claim, or
            infinite).
        delta: its delta (None when there is no formal claim).
        accountant: how epsilon was obtained (None without a formal claim).
        conditions: the assumptions the claim rests on and what it does not cover.
        details: everything else the defense reports (parameters, per-phase accounting); merged
            flat into the JSON next to the typed fields.
        per_patient: the privacy unit is one patient (all of a patient's beats), not one beat;
            a per-beat claim gets its patient-level consequence (:func:`patient_level`).
    """

    name: str
    formal: bool = False
    mechanism: str | None = None
    privacy_unit: str | None = None
    scope: str | None = None
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    conditions: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    per_patient: bool = False

    def __post_init__(self) -> None:
        if self.epsilon is not None and not math.isfinite(self.epsilon):
            self.epsilon = None  # JSON has no infinity; an infinite epsilon claims nothing

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the typed fields (``formal`` also as ``formal_guarantee``), then
        ``details`` flat beside them."""
        typed = {
            "name": self.name, "formal_guarantee": self.formal, "mechanism": self.mechanism,
            "privacy_unit": self.privacy_unit, "scope": self.scope, "epsilon": self.epsilon,
            "delta": self.delta, "accountant": self.accountant, "conditions": list(self.conditions),
            "per_patient": self.per_patient,
        }
        clash = set(typed) & set(self.details)
        if clash:
            raise ValueError(f"PrivacyClaim {self.name!r}: details repeat typed fields {clash}")
        return typed | self.details

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PrivacyClaim:
        """Read a claim back from result.json (the inverse of :meth:`to_dict`)."""
        typed = {"name", "formal_guarantee", "mechanism", "privacy_unit", "scope", "epsilon",
                 "delta", "accountant", "conditions", "per_patient"}
        return cls(
            name=doc["name"], formal=bool(doc.get("formal_guarantee", False)),
            mechanism=doc.get("mechanism"), privacy_unit=doc.get("privacy_unit"),
            scope=doc.get("scope"), epsilon=doc.get("epsilon"), delta=doc.get("delta"),
            accountant=doc.get("accountant"), conditions=list(doc.get("conditions") or []),
            per_patient=bool(doc.get("per_patient", False)),
            details={k: v for k, v in doc.items() if k not in typed},
        )


class ClientView(Protocol):
    """What every defense's ``attach`` may read of its run's client: the inputs (N, 1, 128),
    labels (N,), the run's defenses and its topology. It is the
    :class:`~splitpriv.parties.Client` itself (which a defense that does not stack may also
    wrap: its ``net`` and ``optimizer``), or, in a stacked run, a
    :class:`~splitpriv.parties.RunView` of its own run."""

    x: torch.Tensor
    y: torch.Tensor
    defenses: list[Defense]
    ushape: bool


class StopTraining(RuntimeError):
    """A plug-in ends training in the current step (a detector's alarm with ``stop=true``,
    e.g. ``defenses.splitguard``): the run evaluates that epoch, records the stop in result.json
    (``stopped``: by, epoch, step, score, threshold) and trains no further.

    Attributes:
        by: the plug-in's name; batch: the training batch of the stop (counted from the run's
            first); score, threshold: what fired it.
    """

    def __init__(self, message: str, *, by: str, batch: int, score: float,
                 threshold: float) -> None:
        super().__init__(message)
        self.by, self.batch, self.score, self.threshold = by, batch, score, threshold


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """A group of ``k`` units under an (epsilon, delta) guarantee per unit: (k epsilon,
    k e^((k-1) epsilon) delta) (group privacy; Dwork & Roth, The Algorithmic Foundations of
    Differential Privacy, 2014, Thm 2.2 for delta = 0; Vadhan, The Complexity of Differential
    Privacy, 2017, Lemma 2.2). The generic bound: it holds for any mechanism; a delta of 1 or
    more (returned as inf) bounds nothing."""
    if k < 1:
        raise ValueError(f"group size must be >= 1, got {k}")
    log_delta = math.log(k) + (k - 1) * epsilon + math.log(delta) if delta > 0 else -math.inf
    return k * epsilon, (math.exp(log_delta) if log_delta < 0 else math.inf)


def patient_level(claim: PrivacyClaim, beats: dict[int, int]) -> dict[str, Any] | None:
    """The patient-level consequence of a formal per-beat claim: group privacy over the
    training beats of the patient with most of them (``beats``: patient (record) -> training
    beats). None for a claim that is not formal, or whose unit is already the patient."""
    if not claim.formal or claim.epsilon is None or claim.per_patient or not beats:
        return None
    patient = max(beats, key=lambda r: (beats[r], -r))
    eps, delta = group_privacy(claim.epsilon, claim.delta or 0.0, beats[patient])
    return {"unit": "one patient: group privacy over the patient's training beats",
            "largest_patient": int(patient), "beats": int(beats[patient]), "epsilon": eps,
            "delta": None if math.isinf(delta) else delta, "vacuous": math.isinf(delta),
            "patients": len(beats)}


class Defense:
    """Base class: the identity defense."""

    name: str = "none"
    #: a defense that needs a topology other than the vanilla one names it (``"ushape"``)
    topology: str | None = None
    #: the defense makes the client's weights (and all computed from them) differentially
    #: private; its :meth:`report` claim's epsilon and delta are theirs, add/remove adjacency
    weights_private: bool = False
    #: the defense's transform of a row depends on the other rows of its batch (a batch
    #: statistic), so nothing computed downstream is per-sample
    couples_rows: bool = False
    #: the defense's claim is per training beat and counts each training row as its own beat,
    #: so it holds only on training rows that hold no beat twice (a protocol drawing with
    #: replacement is refused: ``splitpriv.run.check_distinct_beats``)
    per_beat_claim: bool = False
    #: an attacker who knows the defense's spec (config.json) can build it and train a client of
    #: its own with it, drawing the defense's randomness itself (``attacks.adaptive``); a defense
    #: whose transform rests on something the attacker cannot rebuild (a secret shared out of
    #: band, the victims' own data) sets False
    simulable: ClassVar[bool] = True
    #: the defense holds learned parameters of the client that shape its releases (a
    #: bottleneck, learned noise): they are part of its checkpointed state (``stateful``), and a
    #: client rebuilt from the run directory (an attack querying it) loads them from there
    learned: bool = False

    #: the class of the defense's parameters (a dataclass), and an instance's
    Config: ClassVar[type[Any]]
    config: Any = None
    #: whether a checkpoint keeps the defense's state (:meth:`state_dict`)
    stateful: bool = False
    #: the run's class count (:meth:`provide_classes`; the paper's 5 until told)
    n_classes: int = 5
    #: a family of defenses under one registered name: value of the spec key
    #: ``variant_field`` -> class (each with its own ``Config``), ``default_variant`` when the
    #: spec leaves the key out; None: one class (``splitpriv.registry.Registry.variant``)
    variants: ClassVar[dict[str, type[Defense]] | None] = None
    variant_field: ClassVar[str] = ""
    default_variant: ClassVar[str] = ""

    @classmethod
    def stacks(cls, config: Any) -> bool:
        """Whether K runs, each with its own instance built from ``config``, can train as one
        stacked model (``splitpriv.batched``): every hook the defense overrides then acts on its
        own run's slice (B, ...) of the stacked tensors, ``attach`` reads only
        :class:`~splitpriv.parties.RunView` (the run's x, y and defenses, never its model or
        optimizer), and neither ``replay`` nor ``observe_gradient`` ever skips a step (stacked
        runs step together). Default False: a defense claims it."""
        return False

    def fixes_epochs(self) -> str | None:
        """Why a run's epochs cannot change once one is trained (e.g. "noise was calibrated to
        target_epsilon=4 over the planned epochs"): a resumed run with other epochs would
        recalibrate the rest of its releases. None (the default): they can change."""
        return None

    def configure(self, *, epochs: int, batch_size: int) -> None:
        """Called once with the run's plan (its training epochs and batch size), before anything
        is written; may refuse it with a ValueError naming the parameter."""

    def provide_classes(self, n_classes: int) -> None:
        """Called once before ``attach`` with the run's class count (its dataset's; a label
        defense draws among them). Default: kept as ``self.n_classes``."""
        self.n_classes = n_classes

    def provide_patients(self, records: np.ndarray) -> None:
        """Called once before ``attach`` with the patient (MIT-BIH record) of every training row
        (N,), where the run knows them (a defense whose privacy unit is the patient reads them;
        default: ignored)."""

    def attach(self, client: ClientView) -> None:
        """Called once before training; may wrap the client's model or optimizer, and read the
        run's inputs, labels and other defenses (``client.x``, ``client.y``,
        ``client.defenses``). A defense that :meth:`stacks` gets its run's
        :class:`~splitpriv.parties.RunView` when its run trains stacked."""

    def begin_phase(self, epoch: int, phase: str) -> None:
        """Called by each party before every pass over a phase (``train``, ``val``, ``test``);
        before the first call a defense is in ``(0, "train")``, the set-up."""

    def replay(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Called by the client before every training batch with its sample ids (B,): a defense
        that already released these beats may return the activations (B, C, L) the server holds
        for them (detached), to be sent again instead of new ones (post-processing of a past
        release). The client then sends them as they are, without a forward pass, the other
        defenses' transforms or local losses, and takes no step on that batch (frozen: it
        receives the cut gradient and discards it). None (the default): compute as usual. The
        first defense returning a tensor wins."""
        return None

    def transform_activations(self, a: torch.Tensor, *, training: bool) -> torch.Tensor:
        """Map the activations (B, C, L) the client is about to send. Keep the autograd graph."""
        return a

    def release_map(self, a: torch.Tensor) -> torch.Tensor:
        """The part of :meth:`transform_activations` that is a fixed function of the activations
        (B, C, L), without the defense's randomness: what an adaptive attacker who knows the
        defense and its parameters, but not its noise, computes for a beat it maps through a
        client (``attacks.match``). Default: the identity (a noise-only or no transform)."""
        return a

    def transform_labels(self, y: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor:
        """Map the labels (B,) of sample ``ids`` (B,) the client is about to send (vanilla
        topology, training only)."""
        return y

    def client_loss(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term on the client, from its inputs (B, 1, 128) and activations."""
        return None

    def transform_gradient(self, g: torch.Tensor, *, kind: Kind, y: torch.Tensor | None = None
                           ) -> torch.Tensor:
        """Map a gradient the sending party is about to return across the cut: ``Kind.ACT_GRAD``
        (server -> client, (B, C, L)) or ``Kind.OUTPUT_GRAD`` (client head -> server, (B, H)).
        ``y`` is the batch's labels where the sending party holds them (else None)."""
        return g

    def observe_gradient(self, g: torch.Tensor, *, ids: torch.Tensor) -> torch.Tensor | None:
        """Called by the client with the cut gradient (B, C, L) received for the training batch
        ``ids`` (B,), before it backpropagates it (a detector of a malicious server reads it
        here). Returns the gradient to backpropagate (default ``g``), or None: the client takes
        no step on this batch (e.g. a probe batch sent with fake labels). The first None wins;
        a replayed batch is not observed."""
        return g

    def end_epoch(self, epoch: int) -> None:
        """Called by each party after every training epoch (accountants step here)."""

    def state_dict(self) -> dict[str, Any]:
        """The defense's state, for a checkpoint (a class that declares ``stateful``)."""
        raise NotImplementedError(f"defense {self.name!r} keeps no state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        raise NotImplementedError(f"defense {self.name!r} keeps no state")

    def report(self) -> PrivacyClaim:
        """What the defense claims (privacy accounting, parameters), for result.json."""
        return PrivacyClaim(name=self.name)


#: every defense by name, filled by the plug-in packages (``defenses/``)
DEFENSES: Registry[type[Defense]] = Registry("defense", "splitpriv.defenses", families=True)


@dataclass(frozen=True)
class DefenseSpec:
    """One defense of a run as a typed object, parsed once (:meth:`parse`) when the run's
    :class:`~splitpriv.run.TrainConfig` is made and stored as such in config.json: its registered
    name and every option with its typed value, defaults filled in (a family's ``variant_field``
    among them), e.g. ``{"name": "dp", "options": {"mode": "formal", "epsilon": 4.0, ...}}``.

    Two specs that build the same defense are equal, however they were written (the order of the
    options, a default given or left out). ``str(spec)`` is the canonical text spec: the name, the
    family's variant and the options that differ from their defaults.

    Attributes:
        name: the registered name (``dp``, ``nopeek``...).
        options: every option of the defense's ``Config``, typed, and the variant field.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls, config = DEFENSES.resolve_options(self.name, self.options)  # checks every option
        object.__setattr__(self, "options", {**self._variant(cls), **dataclasses.asdict(config)})
        object.__setattr__(self, "_resolved", (cls, config))

    def _variant(self, cls: type) -> dict[str, Any]:
        """``{variant_field: value}`` of a family's member ``cls``; {} for a plain defense."""
        family = DEFENSES.lookup(self.name)
        variants = getattr(family, "variants", None) or {}
        return {family.variant_field: next(v for v, c in variants.items() if c is cls)
                } if variants else {}

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | DefenseSpec, where: str = "defense"
              ) -> DefenseSpec:
        """A spec from its text ``NAME[:key=value,...]``, its config.json object ``{"name": ...,
        "options": {...}}`` or a spec already parsed.

        Raises:
            ValueError: an unknown name or option, a bad value, or an object of another shape.
        """
        if isinstance(spec, DefenseSpec):
            return spec
        if isinstance(spec, str):
            return cls(*parse_spec(spec, "defense"))
        if (isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
                and isinstance(spec.get("options", {}), Mapping)
                and set(spec) <= {"name", "options"}):
            return cls(spec["name"], dict(spec.get("options", {})))
        raise ValueError(f"{where}: expected a spec NAME[:key=value,...] or an object "
                         f'{{"name": ..., "options": {{...}}}}, got {spec!r}')

    @property
    def cls(self) -> type[Defense]:
        """The class the spec builds (a family's variant)."""
        return self._resolved[0]  # type: ignore[attr-defined,no-any-return]

    @property
    def config(self) -> Any:
        """The class's typed ``Config``."""
        return self._resolved[1]  # type: ignore[attr-defined]

    def build(self) -> Defense:
        """A new instance (formal DP calibrates its noise here: seconds to a minute)."""
        return self.cls(self.config)  # type: ignore[call-arg]

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        defaults = {f.name: f.default for f in dataclasses.fields(self.config)
                    if f.default is not dataclasses.MISSING}
        variant = self._variant(self.cls)
        changed = {k: v for k, v in self.options.items()
                   if k in variant or defaults.get(k, v) != v or k not in defaults}
        return format_spec(self.name, changed)


def build_defense(spec: str | DefenseSpec) -> Defense:
    """A defense from its spec ``NAME[:key=value,...]``; unknown names and bad parameters raise
    ValueError."""
    return DefenseSpec.parse(spec).build()


def resolve_defense(spec: str | DefenseSpec) -> tuple[type[Defense], Any]:
    """A defense spec's class and typed config, checked but not built (building calibrates
    formal DP's noise, which takes seconds to a minute)."""
    parsed = DefenseSpec.parse(spec)
    return parsed.cls, parsed.config


__all__ = ["DEFENSES", "Defense", "DefenseSpec", "PrivacyClaim", "StopTraining",
           "build_defense", "group_privacy", "patient_level", "resolve_defense"]

