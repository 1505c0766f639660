"""One training run, written to a directory that a later session, attack or study can read.

The pipeline every driver goes through (in-process :func:`run_training`, the batched seeds of
``splitpriv.batched`` and the distributed parties of ``splitpriv.distributed``):

* :class:`TrainConfig` (``config``): the run;
* :func:`build_defenses`, :func:`build_behaviour`, :func:`resolve_topology`,
  :func:`build_run_models` (``plugins``): what the config asks for, checked before anything is
  written; :func:`behaviour_aux` resolves the public beats a server behaviour asks for;
* :func:`build_run_data` (``data``): the run's rows as tensors;
* :func:`train_epochs` (``loop``): the epoch loop of every in-process driver, and
  :func:`run_training`, one run from its config to result.json;
* :class:`RunDir` (``rundir``): refuses a directory written for another run, skips a finished
  run, resumes a killed one, and writes config.json, metrics.jsonl, best.pt, checkpoint.pt,
  weights.pt, transcript.npz and result.json (layout in ``splitpriv.run.rundir``).

Drivers only train.
"""

from __future__ import annotations

from splitpriv.channel import PHASES
from splitpriv.run.config import TOPOLOGIES, TrainConfig
from splitpriv.run.data import Tensors, build_run_data, load_tensors
from splitpriv.run.loop import LoopRun, row_counts, run_training, train_epochs
from splitpriv.run.plugins import (
    Stateful,
    behaviour_aux,
    build_behaviour,
    build_defenses,
    build_run_models,
    check_distinct_beats,
    checkpoint_state,
    defense_reports,
    load_plugin_states,
    prepare_defenses,
    resolve_topology,
    stateful_plugins,
)
from splitpriv.run.rundir import (
    ATTACKS,
    BEST,
    CHECKPOINT,
    RESULT,
    TRANSCRIPT,
    TRANSCRIPT_PARTS,
    WEIGHTS,
    Resumed,
    RunDir,
    epoch_row,
    result_doc,
    summarize,
)

__all__ = [
    "ATTACKS", "BEST", "CHECKPOINT", "PHASES", "RESULT", "TOPOLOGIES", "TRANSCRIPT",
    "TRANSCRIPT_PARTS", "WEIGHTS",
    "LoopRun", "Resumed", "RunDir", "Stateful", "Tensors", "TrainConfig", "behaviour_aux",
    "build_behaviour", "build_defenses", "build_run_data", "build_run_models",
    "check_distinct_beats", "checkpoint_state", "defense_reports", "epoch_row",
    "load_plugin_states", "load_tensors", "prepare_defenses", "resolve_topology",
    "result_doc", "row_counts",
    "run_training", "stateful_plugins", "summarize", "train_epochs",
]
