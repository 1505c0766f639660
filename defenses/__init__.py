"""Defense modules that plug into the split trainer at the cut (see ``splitpriv.defense``).

A defense is a class registered by name with a typed dataclass config; ``build_defense`` turns a
spec ``name[:key=value,...]`` into an instance, checking every parameter before training starts.

Built-in defenses (each documents its parameters in its ``Config``):

* ``dp`` (:mod:`defenses.dp`): noise on the activations; ``mode=paper`` reproduces Abuadbba et
  al. 2020 and claims no guarantee, ``mode=formal`` clips, calibrates and accounts.
* ``ushape`` (:mod:`defenses.ushape`): U-shaped topology, labels and head stay on the client.
* ``nopeek`` (:mod:`defenses.nopeek`): client loss ``alpha * dCor(inputs, activations)``.
* ``dpsgd`` (:mod:`defenses.dpsgd`): DP-SGD (Opacus) on the client's layers.

Accounting helpers shared by ``dp`` and ``dpsgd`` live in :mod:`defenses.accounting`.
"""

from defenses.registry import DEFENSES, build_defense, parse_spec, register

__all__ = ["DEFENSES", "build_defense", "parse_spec", "register"]
