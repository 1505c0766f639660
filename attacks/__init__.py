"""Attacks by a curious server on what crossed the split-learning channel.

Each attack is a class registered by name (one file per attack) that takes the transcript, the
attacker's declared :class:`Knowledge` and the evaluator's :class:`GroundTruth`, and returns an
:class:`AttackResult` (summary, raw per-sample scores, the knowledge used; JSON + npz).

    from attacks import build_attack
    result = build_attack("dcor", {"max_victims": "2000"})(transcript, knowledge, truth)
    result.save("RUN/attacks")

Registered: ``dcor``, ``dtw`` (correlation leakage), ``label-norm``, ``label-direction``,
``label-kmeans`` (label inference, U-shaped topology), ``decoder``, ``ridge``, ``whitebox``,
``unsplit`` (reconstruction of the raw beats); ``sdar`` (Zhu et al., NDSS 2025) and ``fora`` (Xu
et al., CVPR 2024), passive inversions from public beats only (``--aux public:F``: a simulated
client pulled onto the received activations, then a decoder); ``adaptive`` (an attacker who knows
the defenses and their parameters: a shadow run with the run's recipe, aligned, then a decoder on
its defended releases); and ``strongest`` (the best of the inversions on the attacker's held-out
aux beats, ``sdar``, ``fora`` and ``adaptive`` among them where their knowledge is given; every
inversion result carries its linkage and the priors').
``attacks.cli.run_attack_cli`` runs one on a run directory.
"""

from attacks.base import (
    Attack,
    AttackInputError,
    AttackResult,
    AuxData,
    CommonConfig,
    GroundTruth,
    Knowledge,
)
from attacks.registry import ATTACKS, build_attack, load_builtin, register

__all__ = [
    "ATTACKS", "Attack", "AttackInputError", "AttackResult", "AuxData", "CommonConfig",
    "GroundTruth", "Knowledge", "build_attack", "load_builtin", "register",
]
