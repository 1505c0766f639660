"""What a run's config asks for, built and checked before anything is written: its defenses,
the server's behaviour and the public beats it asks for, the topology and the split model; and
the state of the plug-ins a checkpoint keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from splitpriv.aux import SERVER_KINDS, AuxSpec
from splitpriv.defense import patient_level
from splitpriv.models import SplitModels
from splitpriv.run.config import TrainConfig
from splitpriv.run.data import Tensors
from splitpriv.servers import AuxBeats, Scorer, ServerBehaviour, build_server


class Stateful(Protocol):
    """A plug-in whose class declares ``stateful`` (a defense, the server behaviour, the
    evaluator of its reconstructions): a checkpoint keeps its state with the trainer's every
    epoch, restored on resume, so a killed-and-resumed run goes on as an uninterrupted one."""

    stateful: bool

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def build_defenses(config: TrainConfig) -> list:
    """The run's defenses, each checked against the run's plan (bad parameters fail here)."""
    built = [spec.build() for spec in config.defenses]
    for d in built:
        d.configure(epochs=config.epochs, batch_size=config.batch_size)
    return built


def check_distinct_beats(defenses: list, data: Tensors, config: TrainConfig) -> None:
    """Refuse a defense whose claim is per training beat (``per_beat_claim``: formal ``dp``,
    ``dpsgd``, ``labeldp``) on training rows that hold a beat more than once (the ``paper``
    protocol draws with replacement, and so did the paper's HDF5 files): each copy would be
    released, and counted, as a beat of its own, so the beat's real releases would exceed the
    claim's.

    Raises:
        ValueError: naming the defense, the copies and what to train on instead.
    """
    claiming = [d.name for d in defenses if d.per_beat_claim]
    if not claiming:
        return
    _, copies = np.unique(data.x_train.detach().cpu().flatten(1).numpy(), axis=0,
                          return_counts=True)
    repeated = int((copies > 1).sum())
    if repeated:
        source, instead = (
            (f"--hdf5 {config.hdf5}", "train on files without repeated beats")
            if config.hdf5 is not None else
            (f"--dataset {config.dataset}", "train on data without repeated samples")
            if config.dataset.partition(":")[0] != "mitdb" else
            (f"protocol {config.protocol!r}", "use --protocol paper-unique (the same class "
             "sizes, drawn without replacement)"))
        raise ValueError(
            f"defense {claiming[0]!r} claims a guarantee per training beat, but the training rows "
            f"of {source} hold {repeated:,} beats more than once (up to {copies.max()} copies), "
            f"each of which would be released as a beat of its own; {instead}")


def build_behaviour(config: TrainConfig) -> ServerBehaviour:
    """The server's behaviour from ``config.server``, checked against the run's plan."""
    behaviour = build_server(config.server)
    behaviour.configure(epochs=config.epochs, batch_size=config.batch_size)
    return behaviour


def behaviour_aux(spec: str | None, data: Tensors, *, seed: int) -> AuxBeats | None:
    """The public beats a server behaviour asks for (:meth:`ServerBehaviour.aux_spec`, an
    :class:`~splitpriv.aux.AuxSpec` of kind ``public:F`` / ``public:N`` or ``records:R1,...``):
    beats of the run's pool that the run uses nowhere, so same-domain data the client does not
    hold (Pasquini et al. 2021's threat model); ``public:F`` draws F times the training rows,
    seeded (the size the honest attacks' ``--aux own:F`` has).

    Raises:
        ValueError: a malformed spec, a kind a server cannot hold, or too few unused beats.
    """
    parsed = AuxSpec.parse(spec, "server aux", SERVER_KINDS)
    if parsed is None:
        return None
    used = np.concatenate([data.pool_idx_train, data.pool_idx_val, data.pool_idx_test])
    rows = parsed.public_rows(data.pool.record, used, len(data.y_train), seed=seed,
                              where="server aux")
    what = "pool beats the run uses nowhere" if parsed.kind == "public" else "unused pool beats"
    device = data.x_train.device
    return AuxBeats(x=torch.as_tensor(data.pool.x[rows]).float().to(device),
                    y=torch.as_tensor(data.pool.y[rows]).long().to(device),
                    source=f"{parsed} ({len(rows)} {what}, seed {seed})")


def stateful_plugins(defenses: list, behaviour: ServerBehaviour | None,
                     scorer: Scorer | None) -> dict[str, Stateful]:
    """The run's plug-ins that keep state (their class declares ``stateful``), by checkpoint
    key: defenses, the server's behaviour and the evaluator of its reconstructions."""
    named = {**{f"defense.{i}.{d.name}": d for i, d in enumerate(defenses)},
             **({f"server.{behaviour.name}": behaviour} if behaviour is not None else {}),
             "reconstruction_log": scorer}
    return {k: p for k, p in named.items() if p is not None and p.stateful}


def checkpoint_state(trainer_state: dict[str, Any], plugins: dict[str, Stateful],
                     stopped: dict[str, Any] | None) -> dict[str, Any]:
    """What checkpoint.pt keeps of a run besides its epoch: the trainer's state, every stateful
    plug-in's (:func:`stateful_plugins`, restored by :func:`load_plugin_states`) and the
    detector's stop, if one fired."""
    return trainer_state | {"plugins": {k: p.state_dict() for k, p in plugins.items()},
                            "stopped": stopped}


def load_plugin_states(plugins: dict[str, Stateful], states: dict[str, Any] | None,
                       where: Path) -> None:
    """Restore every stateful plug-in from a checkpoint (``states``: its ``plugins`` entry).

    Raises:
        ValueError: the checkpoint lacks one's state (written before it was checkpointed).
    """
    missing = sorted(set(plugins) - set(states or {}))
    if missing:
        raise ValueError(f"{where}: the checkpoint holds no state of {missing} (written by an "
                         "older version); a resumed run would restart them: use --force to "
                         "retrain from scratch")
    for key, plugin in plugins.items():
        plugin.load_state_dict((states or {})[key])


def defense_reports(defenses: list, records: np.ndarray | None = None) -> list[dict[str, Any]]:
    """What every defense claims (its :class:`~splitpriv.defense.PrivacyClaim`), for result.json;
    a formal per-beat claim also states its patient-level consequence (``patient_level``: group
    privacy over the training beats of the largest patient) where the training rows' records
    (``records``) are known."""
    beats = {}
    if records is not None and len(records) and (np.asarray(records) >= 0).all():
        recs, counts = np.unique(records, return_counts=True)
        beats = dict(zip(recs.tolist(), counts.tolist(), strict=True))
    out = []
    for d in defenses:
        claim = d.report()
        doc = claim.to_dict()
        consequence = patient_level(claim, beats)
        if consequence is not None:
            doc["patient_level"] = consequence
        out.append(doc)
    return out


def prepare_defenses(defenses: list, data: Tensors, config: TrainConfig) -> None:
    """What every driver does with the run's data before the defenses are attached: refuse a
    per-beat claim on repeated beats (:func:`check_distinct_beats`) and give each defense the
    run's class count (``provide_classes``) and the patient of every training row
    (``provide_patients``)."""
    check_distinct_beats(defenses, data, config)
    for d in defenses:
        d.provide_classes(data.n_classes)
        d.provide_patients(data.part("record", "train"))


def resolve_topology(config: TrainConfig, defenses: list) -> str:
    """The run's topology: the one a defense needs (``ushape``), else the config's."""
    return next((d.topology for d in defenses if d.topology), config.topology)


def build_run_models(config: TrainConfig, topology: str, device: torch.device,
                     shape: tuple[tuple[int, ...], int] | None = None) -> SplitModels:
    """The run's split model (``config.model`` for its dataset's input shape and class count,
    ``shape`` where the caller has them), initialised from its seed, on the device."""
    from splitpriv.architectures import build_architecture
    from splitpriv.datasets import run_dataset

    input_shape, n_classes = shape or run_dataset(config).describe(config)
    torch.manual_seed(config.seed)
    return build_architecture(config.model).assemble(
        input_shape, n_classes, config, ushape=topology == "ushape").to(device)


__all__ = ["Stateful", "behaviour_aux", "build_behaviour", "build_defenses", "build_run_models",
           "check_distinct_beats", "checkpoint_state", "defense_reports", "load_plugin_states",
           "prepare_defenses", "resolve_topology", "stateful_plugins"]
